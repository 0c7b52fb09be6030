//! The simulator's credentials: a CA, a server certificate for loopback, a client push
//! certificate (PEM and `.p12`) and an ES256 AuthKey `.p8`, written into the out dir so a
//! dingdong config can point at them. Files already there are reused, so a restarted
//! simulator keeps trusting a daemon configured against its earlier run.

use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand::Rng;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Paths and ids of everything the simulator wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimCredentials {
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_p12: PathBuf,
    pub client_p12_password_file: PathBuf,
    pub key_file: PathBuf,
    pub key_id: String,
    pub team_id: String,
}

/// Creation options: the bundle id named in the client certificate, and faults for diag
/// tests: an already expired certificate, or a development (sandbox-only) certificate.
#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    pub topic: String,
    pub expired_client_cert: bool,
    /// Name the client certificate "Apple Development IOS Push Services: <topic>", which the
    /// simulator (like Apple) refuses on the production host with BadCertificateEnvironment.
    pub sandbox_client_cert: bool,
}

fn random_id(rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..10).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// Writes one of the simulator's secrets (keys, passwords), readable by its owner only.
fn write(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_mode(path, data, 0o600)
}

/// Writes one of the simulators' secrets (test keys), readable by its owner only.
pub(crate) fn write_secret(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    write(path, data)
}

/// Writes a certificate: no secret, readable by all (the daemon's user reads the CA).
fn write_public(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    write_mode(path, data, 0o644)
}

fn write_mode(path: &Path, data: impl AsRef<[u8]>, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(data.as_ref())
}

impl SimCredentials {
    /// Loads the credentials in `dir`, creating whatever is missing.
    pub fn ensure(dir: &Path, opts: &CertOptions) -> Result<SimCredentials, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let ids_file = dir.join("key-ids.json");
        if let Ok(text) = std::fs::read_to_string(&ids_file) {
            if let Ok(c) = serde_json::from_str::<serde_json::Value>(&text) {
                let (kid, tid) = (c["key_id"].as_str().unwrap_or(""), c["team_id"].as_str().unwrap_or(""));
                let creds = Self::paths(dir, kid, tid);
                if creds.all_exist() {
                    return Ok(creds);
                }
            }
        }
        Self::create(dir, opts).map_err(|e| format!("cannot write simulator credentials into {}: {e}", dir.display()))
    }

    fn paths(dir: &Path, key_id: &str, team_id: &str) -> SimCredentials {
        SimCredentials {
            ca_file: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            client_p12: dir.join("client.p12"),
            client_p12_password_file: dir.join("client.p12.pass"),
            key_file: dir.join(format!("AuthKey_{key_id}.p8")),
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
        }
    }

    fn all_exist(&self) -> bool {
        [
            &self.ca_file,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
            &self.client_p12,
            &self.client_p12_password_file,
            &self.key_file,
        ]
        .iter()
        .all(|p| p.exists())
    }

    fn create(dir: &Path, opts: &CertOptions) -> Result<SimCredentials, Box<dyn std::error::Error>> {
        let mut rng = rand::thread_rng();
        let creds = Self::paths(dir, &random_id(&mut rng), &random_id(&mut rng));

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "dingdong APNs simulator CA");
        let ca = ca_params.self_signed(&ca_key)?;

        let server_key = KeyPair::generate()?;
        let names = ["localhost", "127.0.0.1", "::1", "api.push.apple.com", "api.sandbox.push.apple.com"];
        let mut server_params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        server_params.distinguished_name.push(DnType::CommonName, "dingdong APNs simulator");
        let server = server_params.signed_by(&server_key, &ca, &ca_key)?;

        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        let topic = if opts.topic.is_empty() { "com.example.doorbell" } else { &opts.topic };
        let kind = if opts.sandbox_client_cert { "Apple Development IOS Push Services" } else { "Apple Push Services" };
        client_params.distinguished_name.push(DnType::CommonName, format!("{kind}: {topic}"));
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if opts.expired_client_cert {
            client_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            client_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        } else {
            client_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            client_params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        }
        let client = client_params.signed_by(&client_key, &ca, &ca_key)?;

        write_public(&creds.ca_file, ca.pem())?;
        write_public(&creds.server_cert, server.pem())?;
        write(&creds.server_key, server_key.serialize_pem())?;
        write_public(&creds.client_cert, client.pem())?;
        write(&creds.client_key, client_key.serialize_pem())?;

        let password: String = random_id(&mut rng);
        let mut ks = p12_keystore::KeyStore::new();
        let chain =
            vec![p12_keystore::Certificate::from_der(client.der())?, p12_keystore::Certificate::from_der(ca.der())?];
        let local_id: [u8; 8] = rng.gen();
        ks.add_entry(
            "dingdong-push",
            p12_keystore::KeyStoreEntry::PrivateKeyChain(p12_keystore::PrivateKeyChain::new(
                client_key.serialize_der(),
                local_id,
                chain,
            )),
        );
        write(&creds.client_p12, ks.writer(&password).write()?)?;
        write(&creds.client_p12_password_file, format!("{password}\n"))?;

        let auth_key = p256::ecdsa::SigningKey::random(&mut rng);
        let p8 = auth_key.to_pkcs8_pem(LineEnding::LF)?;
        write(&creds.key_file, p8.as_bytes())?;
        write(
            &dir.join("key-ids.json"),
            serde_json::json!({"key_id": creds.key_id, "team_id": creds.team_id}).to_string(),
        )?;
        Ok(creds)
    }

    /// The simulator's TLS server config: its loopback certificate, client certificates from
    /// its CA verified (and required, for the legacy ports: Apple's binary API had no other
    /// auth), and the given ALPN protocols.
    pub fn server_config(&self, require_client_cert: bool, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        let provider = crate::net::tls::provider();
        let chain = crate::net::tls::read_pem_certs(&self.server_cert).map_err(|e| e.to_string())?;
        let key_pem = std::fs::read(&self.server_key).map_err(|e| e.to_string())?;
        let key: PrivateKeyDer =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| "simulator server key unreadable")?;
        let mut roots = RootCertStore::empty();
        for c in crate::net::tls::read_pem_certs(&self.ca_file).map_err(|e| e.to_string())? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(cfg))
    }

    /// The public half of the AuthKey, which the simulator checks JWTs against.
    pub fn verifying_key(&self) -> Result<p256::ecdsa::VerifyingKey, String> {
        use p256::pkcs8::DecodePrivateKey;
        let pem = std::fs::read_to_string(&self.key_file).map_err(|e| format!("{}: {e}", self.key_file.display()))?;
        let key =
            p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).map_err(|e| format!("{}: {e}", self.key_file.display()))?;
        Ok(*key.verifying_key())
    }
}
