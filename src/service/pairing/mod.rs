//! Pairing and signed phone requests as the daemon runs them: a decoded message in, the reply
//! to publish out (the intake hands it to the publisher; nothing here touches MQTT).
//!
//! Pairing v2 is two round trips. A request (`P/pair/request`) is counted against the pair
//! request rate, offered every open window (the store reads them with their codes), and its
//! exchange is kept in memory for a minute ([`PendingTable`]). The finish (`P/pair/finish`)
//! takes that exchange once and is judged inside one store transaction, which hands the
//! judgement the windows still open and the day's guessing budget and writes what it decides:
//! wrong guesses counted, or the phone registered after the store checked what the window
//! grants and that the phone's address is nobody else's. Only then is the done reply sealed.
//!
//! Exchanges between offer and finish live in this process's memory only. With several
//! instances on one broker (`$share/...` subscriptions), `P/pair/request` and `P/pair/finish`
//! must reach the same instance: subscribe to them without a shared subscription on one
//! instance only (every other limit is counted in the database and holds across instances).
//!
//! Logs say why a request was refused, never with a code, a secret, key material or a whole
//! token.

#[cfg(test)]
mod tests;

use crate::codec::pairing::pake::budget;
use crate::codec::pairing::pake::gateway::{self, no_exchange, Accepted, OpenWindow, Pending, PendingTable};
use crate::codec::pairing::pake::registration::{Doorbell, Grant, Push, Registration, MAX_DOORBELLS};
use crate::codec::pairing::pake::wire::{Finish, Request};
use crate::codec::pairing::share;
use crate::codec::pairing::wire::{Action, ErrorCode, Refusal, SignedRequest};
use crate::codec::pairing::{Limits, DEFAULT_MINUTES};
use crate::domain::household::{self, Change, Days, Level, Profile, Quiet, Rules, Snooze};
use crate::domain::ids::DOORBELL_NAME_MAX;
use crate::domain::short_key;
use crate::domain::{check_name_within, short_token, valid_id, Environment};
use crate::store::household::Answered;
use crate::store::pairing::{Finished, Judgement, NewPhone, Offer, PhoneAction, PhoneCall, PhoneDenied, PhoneDone};
use crate::store::pairing::{PairedPhone, WindowState};
use crate::store::StoreHandle;
use rand::rngs::OsRng;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

/// Something to publish: `P/<suffix>`, not retained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub suffix: String,
    pub payload: String,
}

impl Reply {
    /// A reply on `P/pair/response/<request_id>`.
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
    /// `mqtt.topic_prefix`: part of the gateway's SPAKE2 identity.
    pub topic_prefix: String,
    /// `apns.topic`: an APNs registration must name this bundle id.
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
    /// Exchanges between offer and finish (bounded, expiring); never held across an await.
    pending: Mutex<PendingTable>,
    /// Where an accepted "I'm coming" goes, for its replacement wave and outcome.
    answers: Option<mpsc::UnboundedSender<Answered>>,
}

/// What a finish's judgement keeps for the reply.
enum Verdict {
    Accepted(Box<Accepted>),
    Refused(Refusal),
}

impl Pairing {
    pub fn new(store: StoreHandle, settings: Settings) -> Pairing {
        Pairing { store, settings, pending: Mutex::new(PendingTable::new()), answers: None }
    }

    /// Hands every accepted answer to `tx` (the daemon's answer task).
    pub fn with_answers(mut self, tx: mpsc::UnboundedSender<Answered>) -> Pairing {
        self.answers = Some(tx);
        self
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingTable> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `P/pair/request`: the offer, or a refusal; `None` when there is nowhere to answer (no
    /// readable request id) or nothing to say (a request id already in progress).
    pub async fn pair_request(&self, parsed: Result<Request, Refusal>) -> Option<Reply> {
        let req = match parsed {
            Ok(r) => r,
            Err(refusal) => return self.refused_pair(refusal),
        };
        let now = crate::domain::now_ms();
        let rid = req.request_id.clone();
        if self.pending().contains(&rid, now) {
            debug!(request = %rid, "pair request with an id already in progress: not answered");
            return None;
        }
        let limit = self.settings.limits.pair_requests;
        let windows = match self.store.run(move |s| s.pair_offer(limit, now)).await {
            Ok(Offer::Windows(w)) => w,
            Ok(Offer::RateLimited) => {
                let r = Refusal::new(Some(&rid), ErrorCode::RateLimited, "too many pair requests; wait a minute");
                return self.refused_pair(r);
            }
            Err(e) => {
                warn!(request = %rid, error = %e, "pair request failed in the store");
                return self.refused_pair(Refusal::new(Some(&rid), ErrorCode::Internal, "try again"));
            }
        };
        let offered: Vec<gateway::OfferWindow> =
            windows.iter().map(|w| gateway::OfferWindow { id: w.id, code: &w.code }).collect();
        let (pending, reply) = match gateway::offer(&self.settings.topic_prefix, &req, &offered, now, &mut OsRng) {
            Ok(made) => made,
            Err(refusal) => return self.refused_pair(refusal),
        };
        let n = pending.windows().len();
        if let Err(busy) = self.pending().insert(pending, now) {
            return busy.refusal(&rid).and_then(|r| self.refused_pair(r));
        }
        info!(request = %rid, windows = n, "pair request: offer sent");
        Some(Reply::pair(&rid, reply))
    }

    /// `P/pair/finish`: the done reply of a phone that proved a code, or a refusal.
    pub async fn pair_finish(&self, parsed: Result<Finish, Refusal>) -> Option<Reply> {
        let finish = match parsed {
            Ok(f) => f,
            Err(refusal) => return self.refused_pair(refusal),
        };
        let now = crate::domain::now_ms();
        let rid = finish.request_id.clone();
        let Some(pending) = self.pending().take(&rid, now) else {
            return self.refused_pair(no_exchange(&rid));
        };
        let offered = pending.windows();
        let bundle_id = self.settings.bundle_id.clone();
        let judged = self
            .store
            .run(move |s| s.pair_finish(&offered, now, |open, wrong| judge(pending, &finish, open, wrong, &bundle_id)))
            .await;
        let accepted = match judged {
            Ok(Finished::Paired(phone, Verdict::Accepted(a))) => return self.paired(phone, a),
            Ok(Finished::Counted(Verdict::Refused(r)) | Finished::Refused(Verdict::Refused(r))) => {
                return self.refused_pair(r)
            }
            Ok(Finished::Conflict(Verdict::Accepted(a))) => {
                let r = Refusal::new(Some(&rid), ErrorCode::Conflict, "token: registered to another user");
                warn!(request = %rid, window = a.window, "pairing refused: the phone's address belongs to another user");
                return self.refused_pair(r);
            }
            Ok(Finished::Revoked(Verdict::Accepted(a))) => a,
            Ok(_) => return self.refused_pair(Refusal::new(Some(&rid), ErrorCode::Internal, "try again")),
            Err(e) => {
                warn!(request = %rid, error = %e, "pair finish failed in the store");
                return self.refused_pair(Refusal::new(Some(&rid), ErrorCode::Internal, "try again"));
            }
        };
        info!(request = %rid, window = accepted.window, "pairing refused: the window closed or what it granted was revoked");
        self.refused_pair(Refusal::new(
            Some(&rid),
            ErrorCode::InvalidCode,
            "the code's window was closed, or what it granted was revoked; ask for a new code",
        ))
    }

    /// The done reply of a stored phone: the grant, sealed under the exchange's key.
    fn paired(&self, phone: PairedPhone, accepted: Box<Accepted>) -> Option<Reply> {
        let doorbells = phone
            .doorbells
            .iter()
            .filter(|(id, _)| valid_id(id))
            .take(MAX_DOORBELLS)
            .map(|(id, name)| Doorbell {
                id: id.clone(),
                // A name an older version stored unchecked is left out rather than refused.
                name: if check_name_within(name, DOORBELL_NAME_MAX).is_ok() { name.clone() } else { String::new() },
            })
            .collect();
        let grant = Grant { phone_id: phone.phone_id, user: phone.user.clone(), doorbells };
        let rid = accepted.request_id().to_string();
        let r = &accepted.registration;
        info!(request = %rid, user = %phone.user, phone = phone.phone_id, window = phone.window_id,
            platform = %r.push.platform(), address = %short_key(r.push.platform(), r.push.address()), "phone paired");
        match accepted.done_reply(&grant) {
            Ok(reply) => Some(Reply::pair(&rid, reply)),
            Err(refusal) => {
                warn!(request = %rid, reason = %refusal.detail, "phone paired but its grant cannot be sealed");
                self.refused_pair(refusal)
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
        let limit = self.settings.limits.phone_requests;
        let now = crate::domain::now_ms();
        let (rid, action) = (req.request_id.clone(), req.action.name());
        if let Action::Mute { until, .. } = &req.action {
            if *until > now + household::MAX_MUTE_MS {
                let r = Refusal::new(Some(&rid), ErrorCode::BadRequest, "until: at most a year from now");
                return Some(self.refused_phone(phone_id, r));
            }
        }
        let r = self
            .store
            .run(move |s| {
                let message = req.signing_string();
                let action = store_action(&req.action);
                let call = PhoneCall {
                    phone_id: req.phone_id,
                    message: &message,
                    sig: &req.sig,
                    ts: req.ts,
                    nonce: &req.nonce,
                    action: &action,
                };
                s.phone_request(&call, limit, now)
            })
            .await;
        let ok = serde_json::json!({"ok": true, "request_id": rid, "phone_id": phone_id, "action": action});
        let body = match r {
            Ok(Ok(PhoneDone::Token { old_token, new_token })) => {
                info!(phone = phone_id, request = %rid, old = short_token(&old_token), new = short_token(&new_token), "phone token replaced");
                ok
            }
            Ok(Ok(PhoneDone::Unpaired)) => {
                info!(phone = phone_id, request = %rid, "phone unpaired itself");
                ok
            }
            Ok(Ok(PhoneDone::ShareCode { opened, secret })) => {
                info!(phone = phone_id, request = %rid, user = %opened.user, window = opened.window_id, "share code issued, sealed to the phone");
                let sealed = share::seal_code(&secret[..], phone_id, &rid, &opened.code, &mut OsRng);
                let mut body = ok;
                body["sealed_code"] = sealed.into();
                body["user"] = opened.user.into();
                body["expires_at"] = opened.expires_at.into();
                body
            }
            Ok(Ok(PhoneDone::Rules(rules))) => {
                info!(phone = phone_id, request = %rid, action, "household rules changed by a phone");
                let mut body = ok;
                body["rules"] = rules_json(&rules);
                body
            }
            Ok(Ok(PhoneDone::Answered(a))) => {
                info!(phone = phone_id, request = %rid, ring = %a.ring_id, by = %a.by, "ring answered: coming");
                let mut body = ok;
                body["ring_id"] = a.ring_id.as_str().into();
                body["answered_by"] = a.by.as_str().into();
                body["answered_at"] = a.at.into();
                if let Some(tx) = &self.answers {
                    let _ = tx.send(a);
                }
                body
            }
            Ok(Err(denied)) => return Some(self.refused_phone(phone_id, denial(&rid, denied))),
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
        let opened = self.store.run(move |s| s.open_button_window(&user, DEFAULT_MINUTES, limit, now)).await;
        let w = match opened {
            Ok(Ok(w)) => w,
            Ok(Err(why)) => return warn!(reason = why, "pair button: no new window"),
            Err(e) => return warn!(error = %e, "pair button: cannot open a window"),
        };
        let body = Zeroizing::new(
            serde_json::json!({"code": w.code.reveal(), "user": w.user, "expires_at": w.expires_at}).to_string(),
        );
        match write_private(&self.settings.code_file, body.as_bytes()) {
            Ok(()) => {
                info!(user = %w.user, window = w.window_id, expires_at = w.expires_at, file = %self.settings.code_file.display(), "pair button: window open, code written")
            }
            Err(e) => {
                warn!(file = %self.settings.code_file.display(), error = %e, "pair button: window open but its code cannot be written")
            }
        }
    }
}

/// The judgement of a finish, run inside the store's transaction: the exchange's own
/// judgement against the windows still open and the budget's room, then the gateway's rule
/// that an APNs phone names this gateway's app.
fn judge(
    pending: Pending,
    finish: &Finish,
    open: &[WindowState],
    wrong_today: u32,
    bundle_id: &str,
) -> Judgement<Verdict> {
    let open: Vec<OpenWindow> = open.iter().map(|w| OpenWindow { id: w.id, attempts: w.attempts }).collect();
    match pending.judge(finish, &open, budget::room(wrong_today)) {
        Ok(accepted) => {
            if let Push::Apns { topic, .. } = &accepted.registration.push {
                if topic != bundle_id {
                    let detail = "registration: topic: not this gateway's app";
                    let r = Refusal::new(Some(accepted.request_id()), ErrorCode::BadRequest, detail);
                    return Judgement::Refuse(Verdict::Refused(r));
                }
            }
            let phone = new_phone(&accepted.registration);
            let secret = Zeroizing::new(*accepted.secret().expose());
            Judgement::Pair { window: accepted.window, phone, secret, keep: Verdict::Accepted(Box::new(accepted)) }
        }
        Err(rejected) if rejected.wrong.is_empty() => Judgement::Refuse(Verdict::Refused(rejected.refusal)),
        Err(rejected) => {
            Judgement::Wrong { wrong: rejected.wrong, lock: rejected.lock, keep: Verdict::Refused(rejected.refusal) }
        }
    }
}

/// A verified registration as the phones table keeps it.
fn new_phone(r: &Registration) -> NewPhone {
    let (environment, topic) = match &r.push {
        Push::Apns { environment, topic, .. } => (*environment, Some(topic.clone())),
        _ => (Environment::Production, None),
    };
    NewPhone {
        platform: r.push.platform(),
        address: r.push.address().to_string(),
        environment,
        topic,
        subscription: r.push.subscription_json(),
        name: r.name.clone(),
    }
}

fn store_action(a: &Action) -> PhoneAction {
    match a {
        Action::ReplaceToken { token, environment } => {
            PhoneAction::ReplaceToken { token: token.clone(), environment: *environment }
        }
        Action::Unpair => PhoneAction::Unpair,
        Action::ShareCode { user, doorbell, minutes } => {
            PhoneAction::ShareCode { user: user.clone(), doorbell: doorbell.clone(), minutes: *minutes }
        }
        Action::Alert { doorbell, level, sound, volume_milli } => {
            // Checked by the wire already; a profile it let through is always valid.
            let volume = volume_milli.map(|v| f64::from(v) / 1000.0);
            let p = Profile::new(*level, sound.as_deref(), volume).unwrap_or_default();
            let change = Change::Alert((p != Profile::default()).then_some(p));
            PhoneAction::Rules { doorbell: doorbell.clone(), change }
        }
        Action::Quiet { doorbell, window, days, mode } => {
            let change = match window {
                Some((from, to)) => Change::QuietSet(Quiet {
                    from: household::parse_hhmm(from).unwrap_or(0),
                    to: household::parse_hhmm(to).unwrap_or(0),
                    days: Days::parse(days).unwrap_or(Days::ALL),
                    mode: *mode,
                }),
                None => Change::QuietClear,
            };
            PhoneAction::Rules { doorbell: doorbell.clone(), change }
        }
        Action::Mute { doorbell, until, mode } => {
            let change = if *until == 0 { Change::Unmute } else { Change::Mute(Snooze { until: *until, mode: *mode }) };
            PhoneAction::Rules { doorbell: doorbell.clone(), change }
        }
        Action::Answer { ring_id } => PhoneAction::Answer { ring_id: ring_id.clone() },
    }
}

/// A person's rules as a reply shows them (times as `HH:MM`, days as written).
pub fn rules_json(r: &Rules) -> serde_json::Value {
    let quiet: Vec<serde_json::Value> = r.quiet.iter().map(Quiet::describe).collect();
    serde_json::json!({
        "level": r.profile.as_ref().map_or(Level::default(), |p| p.level).as_str(),
        "sound": r.profile.as_ref().and_then(|p| p.sound.clone()),
        "volume": r.profile.as_ref().and_then(Profile::volume),
        "quiet": quiet,
        "muted_until": r.snooze.map(|s| s.until),
        "mute_mode": r.snooze.map(|s| s.mode.as_str()),
    })
}

/// The reply to a refused signed request.
fn denial(rid: &str, d: PhoneDenied) -> Refusal {
    let (error, detail) = match d {
        PhoneDenied::Unauthorized => (ErrorCode::Unauthorized, "unknown phone or bad signature"),
        PhoneDenied::Stale => (ErrorCode::Stale, "ts: more than 5 minutes from the gateway clock"),
        PhoneDenied::Replayed => (ErrorCode::Replayed, "nonce: used before"),
        PhoneDenied::RateLimited => (ErrorCode::RateLimited, "too many requests from this phone; wait a minute"),
        PhoneDenied::WindowsFull => {
            (ErrorCode::RateLimited, "the most pairing windows are open already; try again when one is used or expires")
        }
        PhoneDenied::Forbidden(why) => (ErrorCode::Forbidden, why),
        PhoneDenied::Conflict(why) => (ErrorCode::Conflict, why),
    };
    Refusal::new(Some(rid), error, detail)
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
