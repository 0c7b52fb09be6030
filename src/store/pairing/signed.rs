//! Signed phone requests against the database, all or nothing: the phone's secret, the
//! signature, freshness, the nonce, the phone's rate, then the action. A refusal leaves the
//! database as it was (nonce included).

use super::{ensure_user_tx, immediate, insert_window, rate_count, rate_record, share_tx, Opened, Opener};
use crate::codec::pairing::{nonce_keep_until, verify, RateLimit, VerifyError};
use crate::domain::household::{Change, Rules};
use crate::domain::Environment;
use crate::store::household::{answer_tx, rules_tx, write_rules, AnswerDenied, Answered};
use crate::store::{Result, Store, StoreError};
use rusqlite::{params, OptionalExtension, Transaction};
use zeroize::Zeroizing;

/// What a signed request asks for, checked for shape.
#[derive(Clone, PartialEq, Eq)]
pub enum PhoneAction {
    ReplaceToken {
        token: String,
        environment: Environment,
    },
    Unpair,
    /// A window for a new user `user`, sharing `doorbell` (which the phone's user must own).
    ShareCode {
        user: String,
        doorbell: String,
        minutes: u32,
    },
    /// A change to the rules of the phone's own user, for every doorbell or one they see.
    Rules {
        doorbell: Option<String>,
        change: Change,
    },
    /// "I'm coming" for a ring.
    Answer {
        ring_id: String,
    },
}

/// A signed request: what was signed, the signature, and what it asks.
pub struct PhoneCall<'a> {
    pub phone_id: i64,
    /// The string the phone signed.
    pub message: &'a str,
    pub sig: &'a [u8],
    pub ts: i64,
    pub nonce: &'a str,
    pub action: &'a PhoneAction,
}

/// What an authenticated phone request did.
pub enum PhoneDone {
    Token {
        old_token: String,
        new_token: String,
    },
    Unpaired,
    /// The window opened, and the secret of the phone that asked, to seal its code with.
    ShareCode {
        opened: Opened,
        secret: Zeroizing<Vec<u8>>,
    },
    /// The user's rules for the scope, as written.
    Rules(Rules),
    Answered(Answered),
}

/// Why a signed request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneDenied {
    /// Unknown phone, no secret, or a wrong signature.
    Unauthorized,
    Stale,
    Replayed,
    /// The phone's own rate limit.
    RateLimited,
    /// As many windows are open as a phone can be offered: try later.
    WindowsFull,
    /// Correctly signed but not allowed; says why.
    Forbidden(&'static str),
    /// The token or the user belongs to someone else already; says which.
    Conflict(&'static str),
}

impl Store {
    /// Verifies and carries out a signed phone request, all or nothing.
    pub fn phone_request(
        &mut self,
        call: &PhoneCall<'_>,
        limit: RateLimit,
        now: i64,
    ) -> Result<std::result::Result<PhoneDone, PhoneDenied>> {
        let tx = immediate(self)?;
        let found: Option<(i64, Option<Vec<u8>>, String, String)> = tx
            .query_row(
                "SELECT p.user_id, s.secret, p.token, p.platform FROM phones p
                 LEFT JOIN phone_secrets s ON s.phone_id = p.id WHERE p.id = ?1",
                [call.phone_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (user_id, secret, old_token, platform) = match found {
            Some((u, s, t, p)) => (u, s.map(Zeroizing::new), t, p),
            None => (0, None, String::new(), String::new()),
        };
        let nonce_seen: bool = tx
            .query_row(
                "SELECT 1 FROM pair_nonces WHERE phone_id = ?1 AND nonce = ?2 AND keep_until >= ?3",
                params![call.phone_id, call.nonce, now],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        match verify(secret.as_deref().map(|s| &s[..]), call.message, call.sig, call.ts, now, nonce_seen) {
            Ok(()) => {}
            Err(VerifyError::Unauthorized) => return Ok(Err(PhoneDenied::Unauthorized)),
            Err(VerifyError::Stale) => return Ok(Err(PhoneDenied::Stale)),
            Err(VerifyError::Replayed) => return Ok(Err(PhoneDenied::Replayed)),
        }
        let scope = format!("phone:{}", call.phone_id);
        if !limit.allows(rate_count(&tx, &scope, limit.per_ms, now)?) {
            return Ok(Err(PhoneDenied::RateLimited));
        }
        let done = match call.action {
            PhoneAction::ReplaceToken { token, environment } => {
                if platform != "apns" {
                    return Ok(Err(PhoneDenied::Forbidden("token: only an APNs phone replaces its token this way")));
                }
                if let Err(d) = replace_token(&tx, call.phone_id, token, *environment, now)? {
                    return Ok(Err(d));
                }
                PhoneDone::Token { old_token, new_token: token.clone() }
            }
            PhoneAction::Unpair => {
                tx.execute("DELETE FROM phones WHERE id = ?1", [call.phone_id])?;
                PhoneDone::Unpaired
            }
            PhoneAction::ShareCode { user, doorbell, minutes } => {
                let owner: Option<i64> = tx
                    .query_row("SELECT owner_id FROM doorbells WHERE id = ?1", [doorbell], |r| r.get(0))
                    .optional()?;
                if owner != Some(user_id) {
                    return Ok(Err(PhoneDenied::Forbidden("doorbell: not one this phone's user owns")));
                }
                let exists = tx.query_row("SELECT 1 FROM users WHERE name = ?1", [user], |_| Ok(())).optional()?;
                if exists.is_some() {
                    return Ok(Err(PhoneDenied::Conflict("user: exists already; share codes are for new users")));
                }
                let uid = ensure_user_tx(&tx, user, now)?;
                share_tx(&tx, doorbell, uid)?;
                let opened =
                    match insert_window(&tx, user, Some(doorbell), *minutes, &Opener::Phone(call.phone_id), now) {
                        Ok(o) => o,
                        Err(StoreError::WindowsFull(_)) => return Ok(Err(PhoneDenied::WindowsFull)),
                        Err(e) => return Err(e),
                    };
                PhoneDone::ShareCode { opened, secret: secret.expect("verified, so the phone has a secret") }
            }
            PhoneAction::Rules { doorbell, change } => {
                if let Some(d) = doorbell {
                    if !sees(&tx, user_id, d)? {
                        return Ok(Err(PhoneDenied::Forbidden("doorbell: not one this phone's user sees")));
                    }
                }
                let mut rules = rules_tx(&tx, user_id, doorbell.as_deref())?;
                if change.apply(&mut rules).is_err() {
                    return Ok(Err(PhoneDenied::Forbidden("quiet: too many windows; remove some first")));
                }
                write_rules(&tx, user_id, doorbell.as_deref(), &rules)?;
                PhoneDone::Rules(rules)
            }
            PhoneAction::Answer { ring_id } => match answer_tx(&tx, user_id, call.phone_id, ring_id, now)? {
                Ok(a) => PhoneDone::Answered(a),
                Err(AnswerDenied::Unknown) => {
                    return Ok(Err(PhoneDenied::Forbidden("ring_id: not a ring of a doorbell this phone's user sees")))
                }
                Err(AnswerDenied::Expired) => return Ok(Err(PhoneDenied::Forbidden("ring_id: the ring is over"))),
                Err(AnswerDenied::Taken) => return Ok(Err(PhoneDenied::Conflict("ring_id: answered already"))),
            },
        };
        rate_record(&tx, &scope, now)?;
        tx.execute("DELETE FROM pair_nonces WHERE keep_until < ?1", [now])?;
        if !matches!(done, PhoneDone::Unpaired) {
            tx.execute(
                "INSERT INTO pair_nonces (phone_id, nonce, keep_until) VALUES (?1, ?2, ?3)",
                params![call.phone_id, call.nonce, nonce_keep_until(call.ts)],
            )?;
        } else {
            tx.execute("DELETE FROM pair_nonces WHERE phone_id = ?1", [call.phone_id])?;
        }
        tx.commit()?;
        Ok(Ok(done))
    }
}

/// Whether user `uid` sees `doorbell` (owns it, or it is shared with them).
fn sees(tx: &Transaction, uid: i64, doorbell: &str) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM doorbells WHERE id = ?1 AND owner_id = ?2
             UNION SELECT 1 FROM shares WHERE doorbell_id = ?1 AND user_id = ?2",
            params![doorbell, uid],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Points phone `phone_id` at `token`; refused if another registration (another phone of
/// this user, or anyone else's) holds that token.
fn replace_token(
    tx: &Transaction,
    phone_id: i64,
    token: &str,
    env: Environment,
    now: i64,
) -> Result<std::result::Result<(), PhoneDenied>> {
    let other: Option<i64> = tx
        .query_row("SELECT id FROM phones WHERE token = ?1 AND id != ?2 LIMIT 1", params![token, phone_id], |r| {
            r.get(0)
        })
        .optional()?;
    if other.is_some() {
        return Ok(Err(PhoneDenied::Conflict("token: registered to another phone")));
    }
    tx.execute(
        "UPDATE phones SET token = ?2, environment = ?3, registered_at = ?4, last_outcome = NULL, last_outcome_at = NULL WHERE id = ?1",
        params![phone_id, token, env.as_str(), now],
    )?;
    Ok(Ok(()))
}
