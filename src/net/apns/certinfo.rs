//! What a push certificate says about itself: its subject, when it expires, and which APNs
//! environment Apple issued it for (read from the subject's common name, as Apple names them:
//! "Apple Push Services: <bundle>" works in both, "Apple Development IOS Push Services:
//! <bundle>" only in the sandbox, "Apple Production IOS Push Services: <bundle>" only in
//! production). Pure: DER in, facts out. Used by diag and by the simulator.

use super::Environment;
use x509_cert::der::Decode;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    pub subject: String,
    /// notAfter, UNIX seconds.
    pub not_after: i64,
    /// `None`: valid for both environments.
    pub environment: Option<Environment>,
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not an X.509 certificate: {0}")]
pub struct CertError(String);

/// Parses one DER certificate.
pub fn parse(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| CertError(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let not_after = tbs.validity.not_after.to_unix_duration().as_secs() as i64;
    let subject = tbs.subject.to_string();
    let cn = common_name(&tbs.subject).unwrap_or_default();
    Ok(CertInfo { environment: environment_of(&cn), subject, not_after })
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    const CN: x509_cert::der::asn1::ObjectIdentifier = x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == CN {
                if let Ok(s) = atv.value.decode_as::<Utf8StringRef>() {
                    return Some(s.as_str().to_string());
                }
                if let Ok(s) = atv.value.decode_as::<PrintableStringRef>() {
                    return Some(s.as_str().to_string());
                }
            }
        }
    }
    None
}

/// The environment a certificate with this common name may push to.
pub fn environment_of(common_name: &str) -> Option<Environment> {
    if common_name.starts_with("Apple Development IOS Push Services") {
        Some(Environment::Sandbox)
    } else if common_name.starts_with("Apple Production IOS Push Services") {
        Some(Environment::Production)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_expiry_and_environment() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "Apple Development IOS Push Services: com.example.x");
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = p.self_signed(&key).unwrap();
        let info = parse(cert.der()).unwrap();
        assert_eq!(info.not_after, 1_609_459_200);
        assert_eq!(info.environment, Some(Environment::Sandbox));
        assert!(info.subject.contains("Apple Development"), "{}", info.subject);
        assert_eq!(environment_of("Apple Push Services: com.example.x"), None);
        assert!(parse(b"junk").is_err());
    }
}
