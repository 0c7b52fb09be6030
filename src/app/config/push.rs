//! The `[fcm]` and `[webpush]` tables: Android phones through FCM HTTP v1, browsers through
//! Web Push. Both optional; without them, phones of that platform fail with a reason that
//! names the missing table.

use super::{default_request_timeout, parse_https_endpoint, Config, ConfigError, Span};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[fcm]`: Firebase Cloud Messaging HTTP v1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fcm {
    /// The JSON key of a service account with the Firebase Cloud Messaging API role, as the
    /// Google Cloud console downloads it.
    pub service_account_file: PathBuf,
    /// The Firebase project; the key file's `project_id` unless set.
    pub project_id: Option<String>,
    /// Replaces `https://fcm.googleapis.com` (the simulator); `https://host:port`.
    pub endpoint: Option<String>,
    /// An extra CA trusted for the send API and the token endpoint (the simulator's).
    pub ca_file: Option<PathBuf>,
    /// The Android app's notification channel for rings.
    #[serde(default = "default_channel")]
    pub channel_id: String,
    /// How long one request may wait for its answer before it is retried.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// HTTP/2 connections to FCM a big ring spreads over.
    #[serde(default = "default_connections")]
    pub max_connections: u32,
}

/// `[webpush]`: RFC 8030 Web Push with VAPID.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPush {
    /// The application server's P-256 private key, PEM (`dingdong webpush key` makes one).
    pub vapid_key_file: PathBuf,
    /// Who runs this gateway, for the push services: `mailto:you@example.com` or `https://...`.
    pub subject: String,
    /// An extra CA trusted for push services (the simulator's).
    pub ca_file: Option<PathBuf>,
    /// How long one request may wait for its answer before it is retried.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// Connections per push service that speaks only HTTP/1.1 (one request each at a time).
    #[serde(default = "default_h1_connections")]
    pub max_connections: u32,
}

fn default_channel() -> String {
    "doorbell".into()
}
fn default_connections() -> u32 {
    2
}
fn default_h1_connections() -> u32 {
    32
}

impl Config {
    pub(super) fn resolve_push_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(f) = &mut self.fcm {
            fix(&mut f.service_account_file);
            f.ca_file.iter_mut().for_each(fix);
        }
        if let Some(w) = &mut self.webpush {
            fix(&mut w.vapid_key_file);
            w.ca_file.iter_mut().for_each(fix);
        }
    }

    pub(super) fn validate_push(&self) -> Result<(), ConfigError> {
        if let Some(f) = &self.fcm {
            if let Some(id) = &f.project_id {
                let ok = !id.is_empty()
                    && id.len() <= 100
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'));
                if !ok {
                    return Err(self.err(
                        "fcm.project_id",
                        format!("'{id}' is not a Firebase project id"),
                        "copy the Project ID from the Firebase console, or remove it to use the key file's",
                    ));
                }
            }
            if let Some(ep) = &f.endpoint {
                if parse_https_endpoint(ep).is_none() {
                    return Err(self.err(
                        "fcm.endpoint",
                        format!("'{ep}' is not https://HOST:PORT"),
                        "remove it for Google's FCM, or write it like \"https://127.0.0.1:8444\"",
                    ));
                }
            }
            if f.channel_id.is_empty() || f.channel_id.len() > 100 || f.channel_id.chars().any(char::is_control) {
                return Err(self.err("fcm.channel_id", "must be 1 to 100 characters", "use the app's channel id"));
            }
            if f.max_connections == 0 || f.max_connections > 16 {
                return Err(self.err("fcm.max_connections", "must be 1 to 16", "remove it to use 2"));
            }
        }
        if let Some(w) = &self.webpush {
            if let Err(e) = crate::codec::push::vapid::Subject::parse(&w.subject) {
                return Err(self.err(
                    "webpush.subject",
                    e.to_string(),
                    "write a contact like \"mailto:ops@example.com\" (push services refuse others)",
                ));
            }
            if w.max_connections == 0 || w.max_connections > 256 {
                return Err(self.err("webpush.max_connections", "must be 1 to 256", "remove it to use 32"));
            }
        }
        Ok(())
    }

    /// The FCM and Web Push files that must be readable: `(key, path, fix)`.
    pub fn push_files(&self) -> Vec<(&'static str, &Path, &'static str)> {
        let mut v: Vec<(&'static str, &Path, &'static str)> = Vec::new();
        if let Some(f) = &self.fcm {
            v.push((
                "fcm.service_account_file",
                &f.service_account_file,
                "point it at the service account's JSON key (Google Cloud console, IAM, Service accounts, Keys)",
            ));
            if let Some(ca) = &f.ca_file {
                v.push(("fcm.ca_file", ca, "point it at a PEM CA file, or remove it"));
            }
        }
        if let Some(w) = &self.webpush {
            v.push((
                "webpush.vapid_key_file",
                &w.vapid_key_file,
                "run `dingdong webpush key`, which writes a new key there and prints its public half",
            ));
            if let Some(ca) = &w.ca_file {
                v.push(("webpush.ca_file", ca, "point it at a PEM CA file, or remove it"));
            }
        }
        v
    }

    /// The FCM and Web Push files that hold secrets.
    pub(super) fn push_secret_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut v = Vec::new();
        if let Some(f) = &self.fcm {
            v.push(("fcm.service_account_file", f.service_account_file.clone()));
        }
        if let Some(w) = &self.webpush {
            v.push(("webpush.vapid_key_file", w.vapid_key_file.clone()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use std::path::PathBuf;

    #[test]
    fn fcm_and_webpush_tables_parse_resolve_and_are_checked() {
        let c = parse(&format!(
            "{GOOD}[fcm]\nservice_account_file = \"sa.json\"\n[webpush]\nvapid_key_file = \"vapid.pem\"\nsubject = \"mailto:ops@example.com\"\n"
        ))
        .unwrap();
        let f = c.fcm.as_ref().unwrap();
        assert_eq!(f.service_account_file, PathBuf::from("/etc/dd/sa.json"));
        assert_eq!((f.channel_id.as_str(), f.max_connections), ("doorbell", 2));
        assert_eq!(c.webpush.as_ref().unwrap().vapid_key_file, PathBuf::from("/etc/dd/vapid.pem"));
        let e = c.check_files().unwrap_err().to_string();
        assert!(e.contains("apns.token.key_file") || e.contains("fcm.service_account_file"), "{e}");

        let e = parse(&format!("{GOOD}[webpush]\nvapid_key_file = \"v.pem\"\nsubject = \"mailto: me\"\n")).unwrap_err();
        assert!(e.contains("webpush.subject") && !e.contains('\n'), "{e}");
        let e = parse(&format!("{GOOD}[fcm]\nservice_account_file = \"a\"\nendpoint = \"http://x\"\n")).unwrap_err();
        assert!(e.contains("fcm.endpoint"), "{e}");
        let e = parse(&format!("{GOOD}[fcm]\nservice_account_file = \"a\"\nproject_id = \"a b\"\n")).unwrap_err();
        assert!(e.contains("fcm.project_id"), "{e}");
        let e = parse(&format!("{GOOD}[fcm]\nservice_account = \"a\"\n")).unwrap_err();
        assert!(e.contains("fcm.service_account"), "{e}");
    }
}
