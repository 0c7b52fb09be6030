//! The SQL of pairing: windows (with their code while open, their attempts, and what they
//! grant), the guessing budget's events, phone secrets, nonces and rate events. Each request
//! is one IMMEDIATE transaction, so two instances sharing the database cannot both redeem a
//! code, both accept a nonce, or judge more guesses together than the budget allows.
//!
//! The rules are pure and live elsewhere: the exchange and its judgement in
//! `codec::pairing::pake` (this module hands the caller's judgement the windows still open and
//! the day's wrong guesses, then writes what it decided), the signature recipe in
//! `codec::pairing`. What this module takes and returns are plain values; the service turns
//! them into replies.
//!
//! While a window is open the database keeps its code as it is (SPAKE2 needs the password
//! itself); the code is dropped when the window is used, locked, revoked or found expired.
//! Phone secrets are stored as they are too: HMAC is symmetric, the verifier needs the key.
//! The database file is the gateway's crown jewel either way (whoever can write it can add a
//! phone directly).

mod signed;
#[cfg(test)]
mod tests;

pub use signed::{PhoneAction, PhoneCall, PhoneDenied, PhoneDone};

use super::{Result, Store, StoreError};
use crate::codec::pairing::pake::budget::{DAY_MS, MAX_OPEN_WINDOWS, WINDOW_ATTEMPTS};
use crate::codec::pairing::{Code, RateLimit, MAX_MINUTES};
use crate::domain::{Environment, Platform};
use rand::rngs::OsRng;
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};
use zeroize::Zeroizing;

/// How long used, locked, revoked and expired windows are kept (for `diag` and the curious).
const WINDOW_KEEP_MS: i64 = 24 * 3600 * 1000;
/// The longest period of the request rate limits; their older events are pruned.
const RATE_KEEP_MS: i64 = 3600 * 1000;
/// The scope of the budget's events: one per wrong judged guess, kept a day.
const GUESS: &str = "guess";
/// The scope of pair requests (the offers' rate limit).
const PAIR: &str = "pair";

/// A freshly opened window: the code is shown once (CLI, code file, sealed share reply).
pub struct Opened {
    pub window_id: i64,
    pub code: Code,
    pub expires_at: i64,
    pub user: String,
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

/// An open window and its code, for an offer.
pub struct OfferWindow {
    pub id: i64,
    pub code: Code,
}

/// What a pair request may be offered.
pub enum Offer {
    /// The open windows (at most [`MAX_OPEN_WINDOWS`]; none is possible).
    Windows(Vec<OfferWindow>),
    /// Too many pair requests lately: nothing is offered.
    RateLimited,
}

/// An offered window as it is when the finish arrives: still open, with its wrong attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub id: i64,
    pub attempts: u32,
}

/// A phone to register, as its (verified) registration says.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPhone {
    pub platform: Platform,
    /// The APNs or FCM token, or a Web Push endpoint: what identifies it at its service.
    pub address: String,
    /// APNs' environment; `Production` for the other platforms.
    pub environment: Environment,
    /// The app's bundle id (APNs).
    pub topic: Option<String>,
    /// A Web Push subscription's JSON.
    pub subscription: Option<String>,
    pub name: Option<String>,
}

impl std::fmt::Debug for NewPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPhone")
            .field("platform", &self.platform)
            .field("address", &crate::domain::short_key(self.platform, &self.address))
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the caller of [`Store::pair_finish`] decided.
pub enum Judgement<T> {
    /// The phone proved the code of `window`: register it with `secret`.
    Pair { window: i64, phone: NewPhone, secret: Zeroizing<[u8; 32]>, keep: T },
    /// These windows refused the code: one attempt each, one budget event each; `lock` those
    /// that close for good.
    Wrong { wrong: Vec<i64>, lock: Vec<i64>, keep: T },
    /// Nothing to write (malformed, nothing left to judge, over the budget).
    Refuse(T),
}

/// A registered phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairedPhone {
    pub phone_id: i64,
    pub user: String,
    /// `(id, name)` of every doorbell the phone rings for.
    pub doorbells: Vec<(String, String)>,
    pub window_id: i64,
}

/// What [`Store::pair_finish`] did; `T` is what the judgement kept, handed back.
pub enum Finished<T> {
    Paired(PairedPhone, T),
    /// The wrong guesses are counted.
    Counted(T),
    /// Nothing was written.
    Refused(T),
    /// The phone's address is registered to another user: nothing was written.
    Conflict(T),
    /// What the window granted is gone (its user, or the doorbell it shares): the window is
    /// revoked and nothing was registered.
    Revoked(T),
}

pub(super) fn immediate(store: &mut Store) -> Result<Transaction<'_>> {
    Ok(store.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

pub(super) fn rate_count(tx: &Transaction, scope: &str, per_ms: i64, now: i64) -> Result<u32> {
    Ok(tx.query_row(
        "SELECT COUNT(*) FROM rate_events WHERE scope = ?1 AND at > ?2",
        params![scope, now - per_ms],
        |r| r.get(0),
    )?)
}

pub(super) fn rate_record(tx: &Transaction, scope: &str, now: i64) -> Result<()> {
    tx.execute("DELETE FROM rate_events WHERE at < ?1 AND scope != ?2", params![now - RATE_KEEP_MS, GUESS])?;
    tx.execute("DELETE FROM rate_events WHERE at < ?1 AND scope = ?2", params![now - DAY_MS, GUESS])?;
    tx.execute("INSERT INTO rate_events (scope, at) VALUES (?1, ?2)", params![scope, now])?;
    Ok(())
}

/// Closes windows whose time is up (their codes go) and forgets old closed ones.
fn sweep(tx: &Transaction, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE pair_windows SET state = 'expired', code = NULL WHERE state = 'open' AND expires_at <= ?1",
        [now],
    )?;
    tx.execute("DELETE FROM pair_windows WHERE state != 'open' AND expires_at < ?1", [now - WINDOW_KEEP_MS])?;
    Ok(())
}

/// The open windows (unexpired, under their attempt limit), oldest first, with their codes.
fn open_windows(tx: &Transaction, now: i64) -> Result<Vec<(i64, String, u32)>> {
    let mut st = tx.prepare_cached(
        "SELECT id, code, attempts FROM pair_windows WHERE state = 'open' AND expires_at > ?1 AND attempts < ?2 ORDER BY id",
    )?;
    let rows = st.query_map(params![now, WINDOW_ATTEMPTS], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Inserts a window with a code no other open window has; refused when [`MAX_OPEN_WINDOWS`] are
/// open already (a phone is offered every open window, and no more than that).
pub(super) fn insert_window(
    tx: &Transaction,
    user: &str,
    share: Option<&str>,
    minutes: u32,
    opener: &Opener,
    now: i64,
) -> Result<Opened> {
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(StoreError::Invalid(format!("minutes must be 1 to {MAX_MINUTES}")));
    }
    sweep(tx, now)?;
    let open = open_windows(tx, now)?;
    if open.len() >= MAX_OPEN_WINDOWS {
        return Err(StoreError::WindowsFull(MAX_OPEN_WINDOWS));
    }
    let code = loop {
        let c = Code::generate(&mut OsRng);
        if !open.iter().any(|(_, other, _)| other == c.reveal()) {
            break c;
        }
    };
    let expires_at = now + minutes as i64 * 60_000;
    tx.execute(
        "INSERT INTO pair_windows (code, user_name, share_doorbell, opened_by, opened_at, expires_at, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open')",
        params![code.reveal(), user, share, opener.as_string(), now, expires_at],
    )?;
    Ok(Opened { window_id: tx.last_insert_rowid(), code, expires_at, user: user.to_string() })
}

pub(super) fn ensure_user_tx(tx: &Transaction, name: &str, now: i64) -> Result<i64> {
    crate::domain::check_id("user", name).map_err(StoreError::Invalid)?;
    if let Some(id) = tx.query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()? {
        return Ok(id);
    }
    tx.execute("INSERT INTO users (name, created_at) VALUES (?1, ?2)", params![name, now])?;
    Ok(tx.last_insert_rowid())
}

pub(super) fn share_tx(tx: &Transaction, doorbell: &str, user_id: i64) -> Result<()> {
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

/// The user a window grants, if they still exist and still have what the window shares.
fn granted_user(tx: &Transaction, window: i64) -> Result<Option<(i64, String)>> {
    let (user, share): (String, Option<String>) =
        tx.query_row("SELECT user_name, share_doorbell FROM pair_windows WHERE id = ?1", [window], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let Some(uid) = tx.query_row("SELECT id FROM users WHERE name = ?1", [&user], |r| r.get::<_, i64>(0)).optional()?
    else {
        return Ok(None);
    };
    if let Some(d) = share {
        let still: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM doorbells WHERE id = ?1 AND (owner_id = ?2
                 OR EXISTS (SELECT 1 FROM shares WHERE doorbell_id = ?1 AND user_id = ?2))",
                params![d, uid],
                |r| r.get(0),
            )
            .optional()?;
        if still.is_none() {
            return Ok(None);
        }
    }
    Ok(Some((uid, user)))
}

/// Registers `phone` for `user_id` (again, if that user has it already: same id, new
/// details); the phone's problem, if any, is forgotten.
fn upsert_paired_phone(tx: &Transaction, user_id: i64, phone: &NewPhone, now: i64) -> Result<i64> {
    let existing: Option<i64> = tx
        .query_row("SELECT id FROM phones WHERE user_id = ?1 AND token = ?2", params![user_id, phone.address], |r| {
            r.get(0)
        })
        .optional()?;
    let values = params![
        user_id,
        phone.address,
        phone.environment.as_str(),
        phone.topic,
        phone.name,
        now,
        phone.platform.as_str(),
        phone.subscription
    ];
    match existing {
        Some(id) => {
            tx.execute(
                "UPDATE phones SET environment = ?3, topic = ?4, name = COALESCE(?5, name), registered_at = ?6,
                 platform = ?7, subscription = ?8, last_outcome = NULL, last_outcome_at = NULL
                 WHERE user_id = ?1 AND token = ?2",
                values,
            )?;
            Ok(id)
        }
        None => {
            tx.execute(
                "INSERT INTO phones (user_id, token, environment, topic, name, registered_at, platform, subscription)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                values,
            )?;
            Ok(tx.last_insert_rowid())
        }
    }
}

impl Store {
    /// Opens a pairing window for `user` (created if new), sharing `share` with them if given
    /// (it must exist). Refused while [`MAX_OPEN_WINDOWS`] windows are open.
    pub fn open_pair_window(
        &mut self,
        user: &str,
        share: Option<&str>,
        minutes: u32,
        opener: Opener,
        now: i64,
    ) -> Result<Opened> {
        let tx = immediate(self)?;
        let uid = ensure_user_tx(&tx, user, now)?;
        if let Some(d) = share {
            share_tx(&tx, d, uid)?;
        }
        let opened = insert_window(&tx, user, share, minutes, &opener, now)?;
        tx.commit()?;
        Ok(opened)
    }

    /// The pair button's window, unless a window the button opened is still open or locked and
    /// unexpired (a locked one still counts, so pressing again cannot widen guessing), or the
    /// button opened `limit.limit` windows lately, or [`MAX_OPEN_WINDOWS`] windows are open.
    pub fn open_button_window(
        &mut self,
        user: &str,
        minutes: u32,
        limit: RateLimit,
        now: i64,
    ) -> Result<std::result::Result<Opened, &'static str>> {
        let tx = immediate(self)?;
        sweep(&tx, now)?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM pair_windows WHERE opened_by = 'button' AND state IN ('open', 'locked') AND expires_at > ?1",
            [now],
            |r| r.get(0),
        )?;
        if live > 0 {
            return Ok(Err("a window opened by the button is still open (or locked) and unexpired"));
        }
        if !limit.allows(rate_count(&tx, "button", limit.per_ms, now)?) {
            return Ok(Err("the button opened too many windows lately"));
        }
        if open_windows(&tx, now)?.len() >= MAX_OPEN_WINDOWS {
            return Ok(Err("the most pairing windows are open already"));
        }
        rate_record(&tx, "button", now)?;
        ensure_user_tx(&tx, user, now)?;
        let opened = insert_window(&tx, user, None, minutes, &Opener::Button, now)?;
        tx.commit()?;
        Ok(Ok(opened))
    }

    /// A pair request: counted against `limit` (all phones together), then the open windows
    /// with their codes, at most [`MAX_OPEN_WINDOWS`].
    pub fn pair_offer(&mut self, limit: RateLimit, now: i64) -> Result<Offer> {
        let tx = immediate(self)?;
        if !limit.allows(rate_count(&tx, PAIR, limit.per_ms, now)?) {
            return Ok(Offer::RateLimited);
        }
        rate_record(&tx, PAIR, now)?;
        sweep(&tx, now)?;
        let mut windows = Vec::new();
        for (id, code, _) in open_windows(&tx, now)?.into_iter().take(MAX_OPEN_WINDOWS) {
            let code = Zeroizing::new(code);
            // Codes are written by `insert_window` only; one that does not read is skipped.
            if let Ok(code) = Code::parse(&code) {
                windows.push(OfferWindow { id, code });
            }
        }
        tx.commit()?;
        Ok(Offer::Windows(windows))
    }

    /// A pair finish, in one transaction: hands `judge` the windows of `offered` that are still
    /// open and the wrong guesses of the last day (the budget), then carries out its
    /// judgement: counts wrong guesses, or registers the phone after checking what the window
    /// grants (its user still exists, the doorbell it shares is still shared with them) and
    /// that no other user has the phone's address.
    pub fn pair_finish<T>(
        &mut self,
        offered: &[i64],
        now: i64,
        judge: impl FnOnce(&[WindowState], u32) -> Judgement<T>,
    ) -> Result<Finished<T>> {
        let tx = immediate(self)?;
        sweep(&tx, now)?;
        let open: Vec<WindowState> = open_windows(&tx, now)?
            .into_iter()
            .filter(|(id, _, _)| offered.contains(id))
            .map(|(id, _, attempts)| WindowState { id, attempts })
            .collect();
        let wrong_today = rate_count(&tx, GUESS, DAY_MS, now)?;
        match judge(&open, wrong_today) {
            Judgement::Refuse(keep) => {
                tx.commit()?;
                Ok(Finished::Refused(keep))
            }
            Judgement::Wrong { wrong, lock, keep } => {
                for id in wrong.iter().filter(|id| open.iter().any(|w| w.id == **id)) {
                    tx.execute("UPDATE pair_windows SET attempts = attempts + 1 WHERE id = ?1", [id])?;
                    rate_record(&tx, GUESS, now)?;
                }
                for id in lock.iter().filter(|id| open.iter().any(|w| w.id == **id)) {
                    tx.execute("UPDATE pair_windows SET state = 'locked', code = NULL WHERE id = ?1", [id])?;
                }
                tx.commit()?;
                Ok(Finished::Counted(keep))
            }
            Judgement::Pair { window, phone, secret, keep } => {
                if !open.iter().any(|w| w.id == window) {
                    return Ok(Finished::Revoked(keep));
                }
                let Some((uid, user)) = granted_user(&tx, window)? else {
                    tx.execute("UPDATE pair_windows SET state = 'revoked', code = NULL WHERE id = ?1", [window])?;
                    tx.commit()?;
                    return Ok(Finished::Revoked(keep));
                };
                let taken: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM phones WHERE token = ?1 AND user_id != ?2 LIMIT 1",
                        params![phone.address, uid],
                        |r| r.get(0),
                    )
                    .optional()?;
                if taken.is_some() {
                    return Ok(Finished::Conflict(keep));
                }
                let phone_id = upsert_paired_phone(&tx, uid, &phone, now)?;
                tx.execute(
                    "INSERT OR REPLACE INTO phone_secrets (phone_id, secret, created_at) VALUES (?1, ?2, ?3)",
                    params![phone_id, &secret[..], now],
                )?;
                tx.execute("DELETE FROM pair_nonces WHERE phone_id = ?1", [phone_id])?;
                tx.execute(
                    "UPDATE pair_windows SET state = 'used', code = NULL, phone_id = ?2 WHERE id = ?1",
                    params![window, phone_id],
                )?;
                let doorbells = doorbells_of(&tx, uid)?;
                tx.commit()?;
                Ok(Finished::Paired(PairedPhone { phone_id, user, doorbells, window_id: window }, keep))
            }
        }
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
