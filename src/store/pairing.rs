//! The SQL of pairing: windows, attempts, phone secrets, nonces and rate events. The rules
//! themselves are `crate::codec::pairing`'s pure functions; here they run inside one IMMEDIATE
//! transaction per request, so two instances sharing the database cannot both redeem a code
//! or both accept a nonce.
//!
//! Phone secrets are stored as they are, not hashed: HMAC is symmetric, the verifier needs
//! the key itself, and a hash used as the key would be the key. The database file is the
//! gateway's crown jewel either way (whoever can write it can add a phone directly).

use super::{Result, Store, StoreError};
use crate::codec::pairing::wire::{Action, ErrorCode, PairRequest, Refusal, SignedRequest};
use crate::codec::pairing::{self, Code, Limits, RateLimit, Redeem, VerifyError, Window};
use crate::domain::Environment;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

/// How long used, locked and expired windows are kept (for `diag` and the curious).
const WINDOW_KEEP_MS: i64 = 24 * 3600 * 1000;
/// The longest rate-limit period; older events are pruned.
const RATE_KEEP_MS: i64 = 3600 * 1000;

/// A freshly opened window: the code is shown once and stored only as a hash.
pub struct Opened {
    pub window_id: i64,
    pub code: Code,
    pub expires_at: i64,
    pub user: String,
}

/// A successful pairing.
pub struct Paired {
    pub phone_id: i64,
    pub user: String,
    /// `(id, name)` of every doorbell the phone rings for.
    pub doorbells: Vec<(String, String)>,
    pub secret: [u8; pairing::SECRET_BYTES],
    pub token: String,
    pub window_id: i64,
}

/// What an authenticated phone request did.
pub enum PhoneDone {
    Token { old_token: String, new_token: String },
    Unpaired,
    ShareCode(Opened),
}

/// Who opened a window: recorded, and the button's windows are limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opener {
    Cli,
    Button,
    Phone(i64),
}

impl Opener {
    fn as_string(&self) -> String {
        match self {
            Opener::Cli => "cli".into(),
            Opener::Button => "button".into(),
            Opener::Phone(id) => format!("phone:{id}"),
        }
    }
}

fn rate_count(tx: &Transaction, scope: &str, limit: RateLimit, now: i64) -> Result<u32> {
    Ok(tx.query_row(
        "SELECT COUNT(*) FROM rate_events WHERE scope = ?1 AND at > ?2",
        params![scope, now - limit.per_ms],
        |r| r.get(0),
    )?)
}

fn rate_record(tx: &Transaction, scope: &str, now: i64) -> Result<()> {
    tx.execute("DELETE FROM rate_events WHERE at < ?1", [now - RATE_KEEP_MS])?;
    tx.execute("INSERT INTO rate_events (scope, at) VALUES (?1, ?2)", params![scope, now])?;
    Ok(())
}

fn open_windows(tx: &Transaction, now: i64) -> Result<Vec<Window>> {
    let mut st = tx.prepare_cached(
        "SELECT id, salt, code_hash, expires_at, attempts FROM pair_windows WHERE state = 'open' AND expires_at > ?1",
    )?;
    let rows = st.query_map([now], |r| {
        Ok(Window {
            id: r.get(0)?,
            salt: r.get(1)?,
            code_hash: r.get(2)?,
            expires_at: r.get(3)?,
            attempts: r.get(4)?,
            used: false,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts a window with a code no other open window has.
fn insert_window(
    tx: &Transaction,
    user: &str,
    share: Option<&str>,
    minutes: u32,
    opener: &Opener,
    now: i64,
) -> Result<Opened> {
    if !(1..=pairing::MAX_MINUTES).contains(&minutes) {
        return Err(StoreError::Invalid(format!("minutes must be 1 to {}", pairing::MAX_MINUTES)));
    }
    tx.execute("DELETE FROM pair_windows WHERE expires_at < ?1", [now - WINDOW_KEEP_MS])?;
    let open = open_windows(tx, now)?;
    let code = loop {
        let c = Code::generate();
        if !matches!(pairing::redeem(&open, c.reveal(), now), Redeem::Pair { .. }) {
            break c;
        }
    };
    let salt = pairing::new_salt();
    let expires_at = now + minutes as i64 * 60_000;
    tx.execute(
        "INSERT INTO pair_windows (salt, code_hash, user_name, share_doorbell, opened_by, opened_at, expires_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open')",
        params![
            &salt[..],
            &pairing::code_hash(&salt, code.reveal())[..],
            user,
            share,
            opener.as_string(),
            now,
            expires_at
        ],
    )?;
    Ok(Opened { window_id: tx.last_insert_rowid(), code, expires_at, user: user.to_string() })
}

fn ensure_user_tx(tx: &Transaction, name: &str, now: i64) -> Result<i64> {
    crate::domain::check_id("user", name).map_err(StoreError::Invalid)?;
    if let Some(id) = tx.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()? {
        return Ok(id);
    }
    tx.execute("INSERT INTO users (name, created_at) VALUES (?1, ?2)", params![name, now])?;
    Ok(tx.last_insert_rowid())
}

fn share_tx(tx: &Transaction, doorbell: &str, user_id: i64) -> Result<()> {
    let owner: Option<i64> =
        tx.query_row("SELECT owner_id FROM doorbells WHERE id = ?1", [doorbell], |r| r.get(0)).optional()?;
    match owner {
        None => Err(StoreError::NotFound { kind: "doorbell", id: doorbell.into() }),
        Some(o) if o == user_id => Ok(()),
        Some(_) => {
            tx.execute(
                "INSERT OR IGNORE INTO shares (doorbell_id, user_id) VALUES (?1, ?2)",
                params![doorbell, user_id],
            )?;
            Ok(())
        }
    }
}

fn doorbells_of(tx: &Transaction, user_id: i64) -> Result<Vec<(String, String)>> {
    let mut st = tx.prepare_cached(
        "SELECT id, name FROM doorbells WHERE owner_id = ?1
         UNION SELECT d.id, d.name FROM doorbells d JOIN shares s ON s.doorbell_id = d.id WHERE s.user_id = ?1
         ORDER BY 1",
    )?;
    let rows = st.query_map([user_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    fn immediate(&mut self) -> Result<Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Opens a pairing window for `user` (created if new), sharing `share` with them if given.
    pub fn open_pair_window(
        &mut self,
        user: &str,
        share: Option<&str>,
        minutes: u32,
        opener: Opener,
        now: i64,
    ) -> Result<Opened> {
        let tx = self.immediate()?;
        let uid = ensure_user_tx(&tx, user, now)?;
        if let Some(d) = share {
            share_tx(&tx, d, uid)?;
        }
        let opened = insert_window(&tx, user, share, minutes, &opener, now)?;
        tx.commit()?;
        Ok(opened)
    }

    /// The pair button's window, unless one of its windows is still open or the button has
    /// opened `limit.limit` windows lately (`Ok(None)` then).
    pub fn open_button_window(
        &mut self,
        user: &str,
        minutes: u32,
        limit: RateLimit,
        now: i64,
    ) -> Result<std::result::Result<Opened, &'static str>> {
        let tx = self.immediate()?;
        let open: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pair_windows WHERE opened_by = 'button' AND state = 'open' AND expires_at > ?1",
            [now],
            |r| r.get(0),
        )?;
        if open > 0 {
            return Ok(Err("a window opened by the button is still open"));
        }
        if !limit.allows(rate_count(&tx, "button", limit, now)?) {
            return Ok(Err("the button opened too many windows lately"));
        }
        rate_record(&tx, "button", now)?;
        ensure_user_tx(&tx, user, now)?;
        let opened = insert_window(&tx, user, None, minutes, &Opener::Button, now)?;
        tx.commit()?;
        Ok(Ok(opened))
    }

    /// Redeems a pair request's code. `Err(InvalidCode)` for wrong, expired, used or locked
    /// codes alike (each counting one attempt against every open window); `Err(RateLimited)`
    /// when the global limit is reached (nothing is judged, nothing written).
    pub fn redeem_pair(
        &mut self,
        req: &PairRequest,
        limits: &Limits,
        now: i64,
    ) -> Result<std::result::Result<Paired, ErrorCode>> {
        let tx = self.immediate()?;
        if !limits.pair_requests.allows(rate_count(&tx, "pair", limits.pair_requests, now)?) {
            return Ok(Err(ErrorCode::RateLimited));
        }
        rate_record(&tx, "pair", now)?;
        let windows = open_windows(&tx, now)?;
        let window = match pairing::redeem(&windows, &req.code, now) {
            Redeem::Wrong { bump, lock } => {
                for id in bump {
                    tx.execute("UPDATE pair_windows SET attempts = attempts + 1 WHERE id = ?1", [id])?;
                }
                for id in lock {
                    tx.execute("UPDATE pair_windows SET state = 'locked' WHERE id = ?1", [id])?;
                }
                tx.commit()?;
                return Ok(Err(ErrorCode::InvalidCode));
            }
            Redeem::Pair { window } => window,
        };
        let (user, share): (String, Option<String>) =
            tx.query_row("SELECT user_name, share_doorbell FROM pair_windows WHERE id = ?1", [window], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let uid = ensure_user_tx(&tx, &user, now)?;
        if let Some(d) = &share {
            // The doorbell may have gone since the window opened: pair anyway, without it.
            match share_tx(&tx, d, uid) {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let reg = super::phones::Registration::Apns { token: req.token.clone(), environment: req.environment };
        let phone_id = match super::phones::upsert(&tx, uid, &reg, Some(&req.topic), req.name.as_deref(), now)? {
            super::Upsert::Added(id) | super::Upsert::Updated(id) => id,
        };
        let secret = pairing::new_secret();
        tx.execute(
            "INSERT OR REPLACE INTO phone_secrets (phone_id, secret, created_at) VALUES (?1, ?2, ?3)",
            params![phone_id, &secret[..], now],
        )?;
        tx.execute("DELETE FROM pair_nonces WHERE phone_id = ?1", [phone_id])?;
        tx.execute("UPDATE pair_windows SET state = 'used', phone_id = ?2 WHERE id = ?1", params![window, phone_id])?;
        let doorbells = doorbells_of(&tx, uid)?;
        tx.commit()?;
        Ok(Ok(Paired { phone_id, user, doorbells, secret, token: req.token.clone(), window_id: window }))
    }

    /// Verifies and carries out a signed phone request, all or nothing: a refusal leaves the
    /// database as it was (nonce included).
    pub fn phone_request(
        &mut self,
        req: &SignedRequest,
        limits: &Limits,
        now: i64,
    ) -> Result<std::result::Result<PhoneDone, Refusal>> {
        let refuse = |e: ErrorCode, d: &str| Ok(Err(Refusal::new(Some(&req.request_id), e, d)));
        let tx = self.immediate()?;
        let found: Option<(i64, Option<Vec<u8>>, String)> = tx
            .query_row(
                "SELECT p.user_id, s.secret, p.token FROM phones p LEFT JOIN phone_secrets s ON s.phone_id = p.id WHERE p.id = ?1",
                [req.phone_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (user_id, secret, old_token) = match found {
            Some((u, s, t)) => (u, s, t),
            None => (0, None, String::new()),
        };
        let nonce_seen: bool = tx
            .query_row(
                "SELECT 1 FROM pair_nonces WHERE phone_id = ?1 AND nonce = ?2 AND keep_until >= ?3",
                params![req.phone_id, req.nonce, now],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        match pairing::verify(secret.as_deref(), &req.signing_string(), &req.sig, req.ts, now, nonce_seen) {
            Ok(()) => {}
            Err(VerifyError::Unauthorized) => return refuse(ErrorCode::Unauthorized, "unknown phone or bad signature"),
            Err(VerifyError::Stale) => {
                return refuse(ErrorCode::Stale, "ts: more than 5 minutes from the gateway clock")
            }
            Err(VerifyError::Replayed) => return refuse(ErrorCode::Replayed, "nonce: used before"),
        }
        let scope = format!("phone:{}", req.phone_id);
        if !limits.phone_requests.allows(rate_count(&tx, &scope, limits.phone_requests, now)?) {
            return refuse(ErrorCode::RateLimited, "too many requests from this phone; wait a minute");
        }
        let done = match &req.action {
            Action::ReplaceToken { token, environment } => {
                match self::replace_token(&tx, req.phone_id, token, *environment, now)? {
                    Ok(()) => PhoneDone::Token { old_token, new_token: token.clone() },
                    Err(e) => return Ok(Err(Refusal { request_id: Some(req.request_id.clone()), ..e })),
                }
            }
            Action::Unpair => {
                tx.execute("DELETE FROM phones WHERE id = ?1", [req.phone_id])?;
                PhoneDone::Unpaired
            }
            Action::ShareCode { user, doorbell, minutes } => {
                let owner: Option<i64> = tx
                    .query_row("SELECT owner_id FROM doorbells WHERE id = ?1", [doorbell], |r| r.get(0))
                    .optional()?;
                if owner != Some(user_id) {
                    return refuse(ErrorCode::Forbidden, "doorbell: not one this phone's user owns");
                }
                let exists = tx.query_row("SELECT 1 FROM users WHERE name = ?1", [user], |_| Ok(())).optional()?;
                if exists.is_some() {
                    return refuse(ErrorCode::Conflict, "user: exists already; share codes are for new users");
                }
                let uid = ensure_user_tx(&tx, user, now)?;
                share_tx(&tx, doorbell, uid)?;
                PhoneDone::ShareCode(insert_window(
                    &tx,
                    user,
                    Some(doorbell),
                    *minutes,
                    &Opener::Phone(req.phone_id),
                    now,
                )?)
            }
        };
        rate_record(&tx, &scope, now)?;
        tx.execute("DELETE FROM pair_nonces WHERE keep_until < ?1", [now])?;
        if !matches!(done, PhoneDone::Unpaired) {
            tx.execute(
                "INSERT INTO pair_nonces (phone_id, nonce, keep_until) VALUES (?1, ?2, ?3)",
                params![req.phone_id, req.nonce, pairing::nonce_keep_until(req.ts)],
            )?;
        } else {
            tx.execute("DELETE FROM pair_nonces WHERE phone_id = ?1", [req.phone_id])?;
        }
        tx.commit()?;
        Ok(Ok(done))
    }

    /// Whether a phone has a pairing secret (for `phone list` and tests).
    pub fn has_secret(&self, phone_id: i64) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM phone_secrets WHERE phone_id = ?1", [phone_id], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

/// Points phone `phone_id` at `token`; refused if another registration holds that token.
fn replace_token(
    tx: &Transaction,
    phone_id: i64,
    token: &str,
    env: Environment,
    now: i64,
) -> Result<std::result::Result<(), Refusal>> {
    let other: Option<i64> = tx
        .query_row("SELECT id FROM phones WHERE token = ?1 AND id != ?2 LIMIT 1", params![token, phone_id], |r| {
            r.get(0)
        })
        .optional()?;
    if other.is_some() {
        return Ok(Err(Refusal::new(None, ErrorCode::Conflict, "token: registered to another phone")));
    }
    tx.execute(
        "UPDATE phones SET token = ?2, environment = ?3, registered_at = ?4, last_outcome = NULL, last_outcome_at = NULL WHERE id = ?1",
        params![phone_id, token, env.as_str(), now],
    )?;
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::pairing::wire::{parse_pair_request, parse_signed};

    const T0: i64 = 1_700_000_000_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("d.db")).unwrap();
        (dir, s)
    }

    fn tok(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn pair_req(code: &str, token: &str) -> PairRequest {
        let v = serde_json::json!({"request_id": "r", "code": code, "token": token, "environment": "production",
            "topic": "com.example.doorbell", "name": "phone"});
        parse_pair_request(v.to_string().as_bytes()).unwrap()
    }

    fn signed(phone: i64, secret: &[u8], action: &str, args: serde_json::Value, ts: i64, nonce: &str) -> SignedRequest {
        let mut v = serde_json::json!({"request_id": "q", "ts": ts, "nonce": nonce, "sig": "00".repeat(32)});
        for (k, x) in args.as_object().unwrap() {
            v[k] = x.clone();
        }
        let mut r = parse_signed(phone, action, v.to_string().as_bytes()).unwrap();
        r.sig = pairing::sign(secret, &r.signing_string()).to_vec();
        r
    }

    fn household(s: &mut Store) {
        s.add_user("alice").unwrap();
        s.add_user("bob").unwrap();
        s.add_doorbell("front", Some("Front door"), "alice").unwrap();
        s.add_doorbell("back", None, "bob").unwrap();
    }

    fn counts(s: &Store) -> (i64, i64, i64) {
        s.counts().unwrap()
    }

    #[test]
    fn pairing_with_the_right_code_registers_the_phone_once() {
        let (_d, mut s) = store();
        household(&mut s);
        let w = s.open_pair_window("carol", Some("front"), 5, Opener::Cli, T0).unwrap();
        assert_eq!(w.expires_at, T0 + 300_000);
        let p = s.redeem_pair(&pair_req(w.code.reveal(), &tok(1)), &Limits::default(), T0 + 1000).unwrap().unwrap();
        assert_eq!(p.user, "carol");
        assert_eq!(p.doorbells, vec![("front".to_string(), "Front door".to_string())]);
        assert!(s.has_secret(p.phone_id).unwrap());
        assert_eq!(s.recipients("front").unwrap().len(), 1);
        // Valid once.
        let again = s.redeem_pair(&pair_req(w.code.reveal(), &tok(2)), &Limits::default(), T0 + 2000).unwrap();
        assert!(matches!(again, Err(ErrorCode::InvalidCode)));
        assert_eq!(counts(&s).2, 1);
    }

    #[test]
    fn expired_and_wrong_codes_read_the_same_and_lock_after_five() {
        let (_d, mut s) = store();
        household(&mut s);
        let w = s.open_pair_window("alice", None, 1, Opener::Cli, T0).unwrap();
        let late = s.redeem_pair(&pair_req(w.code.reveal(), &tok(1)), &Limits::default(), T0 + 60_000).unwrap();
        assert!(matches!(late, Err(ErrorCode::InvalidCode)));
        let w = s.open_pair_window("alice", None, 5, Opener::Cli, T0).unwrap();
        let wrong = if w.code.reveal() == "000000" { "000001" } else { "000000" };
        for _ in 0..pairing::MAX_ATTEMPTS {
            let r = s.redeem_pair(&pair_req(wrong, &tok(1)), &Limits::default(), T0 + 1).unwrap();
            assert!(matches!(r, Err(ErrorCode::InvalidCode)));
        }
        let right = s.redeem_pair(&pair_req(w.code.reveal(), &tok(1)), &Limits::default(), T0 + 2).unwrap();
        assert!(matches!(right, Err(ErrorCode::InvalidCode)), "locked after five wrong codes");
        assert_eq!(counts(&s).2, 0);
    }

    #[test]
    fn the_global_rate_limit_stops_guessing_and_lapses() {
        let (_d, mut s) = store();
        household(&mut s);
        let limits = Limits::default();
        let n = limits.pair_requests.limit;
        for i in 0..n {
            let r = s.redeem_pair(&pair_req("999999", &tok(1)), &limits, T0 + i as i64).unwrap();
            assert!(matches!(r, Err(ErrorCode::InvalidCode)));
        }
        let r = s.redeem_pair(&pair_req("999999", &tok(1)), &limits, T0 + 100).unwrap();
        assert!(matches!(r, Err(ErrorCode::RateLimited)));
        // A minute later the budget is back, and a fresh window pairs.
        let later = T0 + limits.pair_requests.per_ms + 100;
        let w = s.open_pair_window("alice", None, 5, Opener::Cli, later).unwrap();
        assert!(s.redeem_pair(&pair_req(w.code.reveal(), &tok(1)), &limits, later).unwrap().is_ok());
    }

    #[test]
    fn the_button_opens_one_window_at_a_time_and_few_per_hour() {
        let (_d, mut s) = store();
        let limit = Limits::default().button_windows;
        let w = s.open_button_window("household", 5, limit, T0).unwrap().unwrap();
        assert_eq!(w.user, "household");
        assert!(s.open_button_window("household", 5, limit, T0 + 1).unwrap().is_err());
        let mut t = T0;
        for _ in 1..limit.limit {
            t += 300_000;
            assert!(s.open_button_window("household", 5, limit, t).unwrap().is_ok());
        }
        t += 300_000;
        assert!(s.open_button_window("household", 5, limit, t).unwrap().is_err(), "hourly limit");
    }

    fn paired(s: &mut Store, user: &str, token: &str) -> Paired {
        let w = s.open_pair_window(user, None, 5, Opener::Cli, T0).unwrap();
        s.redeem_pair(&pair_req(w.code.reveal(), token), &Limits::default(), T0).unwrap().unwrap()
    }

    #[test]
    fn signed_token_replacement_unpair_and_their_refusals() {
        let (_d, mut s) = store();
        household(&mut s);
        let a = paired(&mut s, "alice", &tok(1));
        let b = paired(&mut s, "bob", &tok(2));
        let lim = Limits::default();
        let now = T0 + 10_000;
        let replace = |secret: &[u8], phone, token: &str, nonce: &str, ts| {
            signed(phone, secret, "token", serde_json::json!({"token": token, "environment": "sandbox"}), ts, nonce)
        };
        let r = replace(&a.secret, a.phone_id, &tok(3), "nonce-000000000001", now);
        assert!(matches!(s.phone_request(&r, &lim, now).unwrap(), Ok(PhoneDone::Token { .. })));
        assert_eq!(s.recipients("front").unwrap()[0].address.key(), tok(3).as_str());
        // Replayed.
        let e = s.phone_request(&r, &lim, now + 1).unwrap().err().unwrap();
        assert_eq!(e.error, ErrorCode::Replayed);
        // Stale.
        let r = replace(&a.secret, a.phone_id, &tok(4), "nonce-000000000002", now - 301_000);
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Stale);
        // Forged: signed with bob's secret on alice's phone, and alice's request on bob's phone.
        let r = replace(&b.secret, a.phone_id, &tok(4), "nonce-000000000003", now);
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Unauthorized);
        let r = replace(&a.secret, b.phone_id, &tok(4), "nonce-000000000004", now);
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Unauthorized);
        let r = signed(b.phone_id, &a.secret, "unpair", serde_json::json!({}), now, "nonce-000000000005");
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Unauthorized);
        // Taking over bob's token.
        let r = replace(&a.secret, a.phone_id, &tok(2), "nonce-000000000006", now);
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Conflict);
        // Nothing of that changed anything.
        assert_eq!(s.recipients("back").unwrap()[0].address.key(), tok(2).as_str());
        assert_eq!(s.recipients("front").unwrap()[0].address.key(), tok(3).as_str());
        // Unknown phone.
        let r = signed(999, &a.secret, "unpair", serde_json::json!({}), now, "nonce-000000000007");
        assert_eq!(s.phone_request(&r, &lim, now).unwrap().err().unwrap().error, ErrorCode::Unauthorized);
        // Unpair removes the phone and its secret.
        let r = signed(a.phone_id, &a.secret, "unpair", serde_json::json!({}), now, "nonce-000000000008");
        assert!(matches!(s.phone_request(&r, &lim, now).unwrap(), Ok(PhoneDone::Unpaired)));
        assert!(s.recipients("front").unwrap().is_empty());
        assert!(!s.has_secret(a.phone_id).unwrap());
        assert_eq!(counts(&s).2, 1);
    }

    #[test]
    fn share_codes_only_for_owned_doorbells_and_new_users() {
        let (_d, mut s) = store();
        household(&mut s);
        let a = paired(&mut s, "alice", &tok(1));
        let lim = Limits::default();
        let ask = |user: &str, doorbell: &str, nonce: &str| {
            signed(
                a.phone_id,
                &a.secret,
                "share-code",
                serde_json::json!({"user": user, "doorbell": doorbell, "minutes": 10}),
                T0,
                nonce,
            )
        };
        let e = s.phone_request(&ask("guest", "back", "nonce-100000000001"), &lim, T0).unwrap().err().unwrap();
        assert_eq!(e.error, ErrorCode::Forbidden);
        let e = s.phone_request(&ask("bob", "front", "nonce-100000000002"), &lim, T0).unwrap().err().unwrap();
        assert_eq!(e.error, ErrorCode::Conflict, "an existing user's phones are not alice's to add to");
        let Ok(PhoneDone::ShareCode(w)) =
            s.phone_request(&ask("guest", "front", "nonce-100000000003"), &lim, T0).unwrap()
        else {
            panic!()
        };
        assert_eq!(w.expires_at, T0 + 600_000);
        let g = s.redeem_pair(&pair_req(w.code.reveal(), &tok(9)), &lim, T0 + 5).unwrap().unwrap();
        assert_eq!((g.user.as_str(), g.doorbells.len()), ("guest", 1));
    }

    #[test]
    fn the_per_phone_rate_limit_counts_only_authentic_requests() {
        let (_d, mut s) = store();
        household(&mut s);
        let a = paired(&mut s, "alice", &tok(1));
        let lim = Limits::default();
        for i in 0..lim.phone_requests.limit {
            let t = tok(10 + i as u8);
            let r = signed(
                a.phone_id,
                &a.secret,
                "token",
                serde_json::json!({"token": t, "environment": "production"}),
                T0,
                &format!("nonce-20000000000{i:02}"),
            );
            assert!(s.phone_request(&r, &lim, T0).unwrap().is_ok());
        }
        let r = signed(a.phone_id, &a.secret, "unpair", serde_json::json!({}), T0, "nonce-2999999999999");
        assert_eq!(s.phone_request(&r, &lim, T0).unwrap().err().unwrap().error, ErrorCode::RateLimited);
        assert!(s.phone_request(&r, &lim, T0 + 60_001).unwrap().is_ok());
    }
}
