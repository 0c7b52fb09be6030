//! Carries out decoded pairing messages against the store and says what to answer. It does
//! no MQTT I/O: the daemon publishes the [`Reply`] it returns. Logs say why a request was
//! refused, never with a code, a secret or a whole token.

use crate::codec::pairing::wire::{ErrorCode, PairRequest, Refusal, SignedRequest};
use crate::codec::pairing::Limits;
use crate::domain::short_token;
use crate::store::pairing::PhoneDone;
use crate::store::StoreHandle;
use std::path::PathBuf;
use tracing::{info, warn};

/// Something to publish: `P/<suffix>`, not retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub suffix: String,
    pub payload: String,
}

impl Reply {
    /// The reply to `P/pair/request` with id `request_id`.
    pub fn pair(request_id: &str, payload: String) -> Reply {
        Reply { suffix: format!("pair/response/{request_id}"), payload }
    }

    /// The reply to a signed request of phone `phone_id`.
    pub fn phone(phone_id: i64, payload: String) -> Reply {
        Reply { suffix: format!("phone-response/{phone_id}"), payload }
    }
}

/// What the service needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `apns.topic`: a pair request must name this bundle id.
    pub bundle_id: String,
    /// `pairing.button_user`: the user a pair-button window pairs phones to.
    pub button_user: String,
    /// `pairing.code_file`: where a pair-button window's code is written for the gateway's
    /// display (mode 0600), as `{"code","user","expires_at"}`.
    pub code_file: PathBuf,
    pub limits: Limits,
}

pub struct Pairing {
    store: StoreHandle,
    settings: Settings,
}

impl Pairing {
    pub fn new(store: StoreHandle, settings: Settings) -> Pairing {
        Pairing { store, settings }
    }

    /// `P/pair/request`; `None` when there is nowhere to answer (no readable request id).
    pub async fn pair_request(&self, parsed: Result<PairRequest, Refusal>) -> Option<Reply> {
        let req = match parsed {
            Ok(r) => r,
            Err(refusal) => return self.refused_pair(refusal),
        };
        if req.topic != self.settings.bundle_id {
            return self.refused_pair(Refusal::new(
                Some(&req.request_id),
                ErrorCode::BadRequest,
                "topic: not this gateway's app",
            ));
        }
        let limits = self.settings.limits;
        let rid = req.request_id.clone();
        let now = crate::domain::now_ms();
        let r = {
            let req = req.clone();
            self.store.run(move |s| s.redeem_pair(&req, &limits, now)).await
        };
        match r {
            Ok(Ok(p)) => {
                info!(request = %rid, user = %p.user, phone = p.phone_id, token = short_token(&p.token), "phone paired");
                let doorbells: Vec<_> =
                    p.doorbells.iter().map(|(id, name)| serde_json::json!({"id": id, "name": name})).collect();
                let body = serde_json::json!({
                    "ok": true, "request_id": rid, "phone_id": p.phone_id, "user": p.user,
                    "doorbells": doorbells, "secret": hex::encode(p.secret), "algorithm": "HMAC-SHA256",
                });
                Some(Reply::pair(&rid, body.to_string()))
            }
            Ok(Err(code)) => {
                let detail = match code {
                    ErrorCode::RateLimited => "too many pair requests; wait a minute",
                    _ => "wrong or expired code",
                };
                self.refused_pair(Refusal::new(Some(&rid), code, detail))
            }
            Err(e) => {
                warn!(request = %rid, error = %e, "pair request failed in the store");
                self.refused_pair(Refusal::new(Some(&rid), ErrorCode::Internal, "try again"))
            }
        }
    }

    fn refused_pair(&self, r: Refusal) -> Option<Reply> {
        warn!(request = r.request_id.as_deref().unwrap_or("-"), error = r.error.as_str(), reason = %r.detail, "pair request refused");
        r.request_id.as_deref().map(|id| Reply::pair(id, r.reply()))
    }

    /// `P/phone/<phone_id>/<action>`.
    pub async fn phone_request(&self, phone_id: i64, parsed: Result<SignedRequest, Refusal>) -> Option<Reply> {
        let req = match parsed {
            Ok(r) => r,
            Err(refusal) => return Some(self.refused_phone(phone_id, refusal)),
        };
        let limits = self.settings.limits;
        let now = crate::domain::now_ms();
        let (rid, action) = (req.request_id.clone(), req.action.name());
        let r = {
            let req = req.clone();
            self.store.run(move |s| s.phone_request(&req, &limits, now)).await
        };
        let body = match r {
            Ok(Ok(PhoneDone::Token { old_token, new_token })) => {
                info!(phone = phone_id, request = %rid, old = short_token(&old_token), new = short_token(&new_token), "phone token replaced");
                serde_json::json!({"ok": true, "request_id": rid, "phone_id": phone_id, "action": action})
            }
            Ok(Ok(PhoneDone::Unpaired)) => {
                info!(phone = phone_id, request = %rid, "phone unpaired itself");
                serde_json::json!({"ok": true, "request_id": rid, "phone_id": phone_id, "action": action})
            }
            Ok(Ok(PhoneDone::ShareCode(w))) => {
                info!(phone = phone_id, request = %rid, user = %w.user, window = w.window_id, "share code issued");
                serde_json::json!({"ok": true, "request_id": rid, "phone_id": phone_id, "action": action,
                    "code": w.code.reveal(), "user": w.user, "expires_at": w.expires_at})
            }
            Ok(Err(refusal)) => return Some(self.refused_phone(phone_id, refusal)),
            Err(e) => {
                warn!(phone = phone_id, request = %rid, error = %e, "phone request failed in the store");
                return Some(self.refused_phone(phone_id, Refusal::new(Some(&rid), ErrorCode::Internal, "try again")));
            }
        };
        Some(Reply::phone(phone_id, body.to_string()))
    }

    fn refused_phone(&self, phone_id: i64, r: Refusal) -> Reply {
        warn!(phone = phone_id, request = r.request_id.as_deref().unwrap_or("-"), error = r.error.as_str(), reason = %r.detail, "phone request refused");
        Reply::phone(phone_id, r.reply())
    }

    /// `P/gateway/pair-button`: opens a window for `pairing.button_user` and writes its code
    /// to `pairing.code_file`. No reply topic.
    pub async fn pair_button(&self, parsed: Result<(), String>) {
        if let Err(why) = parsed {
            warn!(reason = %why, "pair button message refused");
            return;
        }
        let (user, limit) = (self.settings.button_user.clone(), self.settings.limits.button_windows);
        let now = crate::domain::now_ms();
        let opened = self
            .store
            .run(move |s| s.open_button_window(&user, crate::codec::pairing::DEFAULT_MINUTES, limit, now))
            .await;
        let w = match opened {
            Ok(Ok(w)) => w,
            Ok(Err(why)) => return warn!(reason = why, "pair button: no new window"),
            Err(e) => return warn!(error = %e, "pair button: cannot open a window"),
        };
        let body = serde_json::json!({"code": w.code.reveal(), "user": w.user, "expires_at": w.expires_at});
        match write_private(&self.settings.code_file, body.to_string().as_bytes()) {
            Ok(()) => {
                info!(user = %w.user, window = w.window_id, expires_at = w.expires_at, file = %self.settings.code_file.display(), "pair button: window open, code written")
            }
            Err(e) => {
                warn!(file = %self.settings.code_file.display(), error = %e, "pair button: window open but its code cannot be written")
            }
        }
    }
}

/// Writes `bytes` to `path` readable by the owner only, replacing it atomically.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
