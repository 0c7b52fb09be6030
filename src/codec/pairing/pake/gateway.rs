//! The gateway's side of pairing v2. [`offer`] answers a request with one SPAKE2 offer per
//! open window and returns the [`Pending`] exchange, which the service keeps in memory in a
//! [`PendingTable`] (short expiry, bounded count, single use). [`Pending::judge`] checks the
//! phone's proofs against the windows still open and the day's guessing budget, and says what
//! to count and what to answer. Only an [`Accepted`] exchange — the phone has proved the code,
//! its registration is valid — may write anything to the household; its done reply proves the
//! code back to the phone and carries the grant sealed. No I/O, no clock, no store.

use super::budget::{locks, WINDOW_ATTEMPTS};
use super::registration::{encode_grant, parse_registration, Grant, Registration};
use super::wire::{self, Done, Finish, Offer, OfferItem, Request, MAX_OFFERS, PAKE_BYTES};
use super::{gateway_identity, random_id, transcript_hash, Code, Keys, PhoneSecret, PHONE_IDENTITY};
use crate::codec::pairing::wire::{ErrorCode, Refusal};
use rand::{CryptoRng, RngCore};
use spake2::{Ed25519Group, Identity, Spake2};
use std::collections::HashMap;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// How long the gateway waits for `P/pair/finish` after its offer.
pub const PENDING_TTL_MS: i64 = 60_000;
/// Exchanges waiting for their finish at once; more are refused (`rate_limited`) rather than
/// pushing out someone else's.
pub const MAX_PENDING: usize = 16;
/// Random bytes of an offer's `ref` (8 base64url characters).
const REF_BYTES: usize = 6;

/// A window to offer: open (not used, not expired, under its attempt limit) and its code.
pub struct OfferWindow<'a> {
    pub id: i64,
    pub code: &'a Code,
}

/// A window as the store reads it when a finish arrives (the service passes only the open
/// ones; one at its attempt limit is treated as closed anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenWindow {
    pub id: i64,
    pub attempts: u32,
}

struct PendingOffer {
    reference: String,
    window: i64,
    keys: Keys,
}

/// An exchange between the offer and the finish: the keys of every offer. In memory only.
pub struct Pending {
    request_id: String,
    expires_at: i64,
    offers: Vec<PendingOffer>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("request_id", &self.request_id)
            .field("expires_at", &self.expires_at)
            .field("windows", &self.windows())
            .finish_non_exhaustive()
    }
}

/// Answers a request: one offer per window (the first [`MAX_OFFERS`] of `windows`; the store
/// never keeps more open), the pending exchange to keep, and the reply to publish on
/// `P/pair/response/<request_id>`. No window: `invalid_code` (nothing was guessed). A phone
/// message that is not a valid point: `bad_request`.
pub fn offer<R: RngCore + CryptoRng + ?Sized>(
    topic_prefix: &str,
    request: &Request,
    windows: &[OfferWindow<'_>],
    now: i64,
    rng: &mut R,
) -> Result<(Pending, String), Refusal> {
    let rid = request.request_id.as_str();
    if windows.is_empty() {
        return Err(Refusal::new(Some(rid), ErrorCode::InvalidCode, "no pairing window is open"));
    }
    let gateway_id = gateway_identity(topic_prefix);
    let (id_a, id_b) = (Identity::new(PHONE_IDENTITY.as_bytes()), Identity::new(gateway_id.as_bytes()));
    /// One offer in the making: ref, window, the gateway's SPAKE2 message, the key K.
    type Made = (String, i64, [u8; PAKE_BYTES], Zeroizing<Vec<u8>>);
    let mut made: Vec<Made> = Vec::new();
    for w in windows {
        if made.len() == MAX_OFFERS || made.iter().any(|m| m.1 == w.id) {
            continue;
        }
        let (state, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(&w.code.password(), &id_a, &id_b, &mut *rng);
        let k = state
            .finish(&request.pake)
            .map_err(|_| Refusal::new(Some(rid), ErrorCode::BadRequest, "pake: not a valid SPAKE2 message"))?;
        let mut reference = random_id(rng, REF_BYTES);
        while made.iter().any(|m| m.0 == reference) {
            reference = random_id(rng, REF_BYTES);
        }
        made.push((reference, w.id, msg_b.try_into().expect("SPAKE2 messages are 33 bytes"), Zeroizing::new(k)));
    }
    let listed: Vec<(&str, &[u8])> = made.iter().map(|m| (m.0.as_str(), &m.2[..])).collect();
    let th = transcript_hash(&gateway_id, rid, &request.pake, &listed);
    let reply = wire::encode_offer(&Offer {
        request_id: rid.to_string(),
        offers: made.iter().map(|m| OfferItem { reference: m.0.clone(), pake: m.2 }).collect(),
    });
    let offers = made
        .into_iter()
        .map(|(reference, window, _, k)| PendingOffer { reference, window, keys: Keys::derive(&k, th) })
        .collect();
    Ok((Pending { request_id: rid.to_string(), expires_at: now + PENDING_TTL_MS, offers }, reply))
}

/// A finish that pairs: the window to mark used, what to register, and the done reply.
pub struct Accepted {
    pub window: i64,
    pub registration: Registration,
    request_id: String,
    reference: String,
    keys: Keys,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("window", &self.window)
            .field("registration", &self.registration)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The phone's secret, as the phone derives it too: store it with the phone.
    pub fn secret(&self) -> PhoneSecret {
        self.keys.phone_secret()
    }

    /// The done reply, once the phone is stored: the gateway's confirmation tag and `grant`
    /// sealed. Fails (`internal`) only if the grant exceeds its bounds.
    pub fn done_reply(&self, grant: &Grant) -> Result<String, Refusal> {
        let plain = encode_grant(grant)
            .map_err(|e| Refusal::new(Some(&self.request_id), ErrorCode::Internal, format!("grant: {e}")))?;
        Ok(wire::encode_done(&Done {
            request_id: self.request_id.clone(),
            reference: self.reference.clone(),
            confirm: self.keys.gateway_tag(),
            sealed: Keys::seal(&self.keys.seal_gateway, &self.keys.th, plain.as_bytes()),
        }))
    }
}

/// A finish that does not pair: what to answer, and what to count. `wrong` lists the windows
/// that were judged and refused the code (one attempt each, and one budget event each); `lock`
/// those of them that reach [`super::budget::WINDOW_ATTEMPTS`] and close for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub refusal: Refusal,
    pub wrong: Vec<i64>,
    pub lock: Vec<i64>,
}

impl Pending {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The windows offered, for the service to re-read their state before judging.
    pub fn windows(&self) -> Vec<i64> {
        self.offers.iter().map(|o| o.window).collect()
    }

    /// Judges a finish. Only proofs for windows in `open` (re-read now) are judged; if that is
    /// more than `budget_room` ([`super::budget::room`]) nothing is judged (`rate_limited`).
    /// Every judged tag is compared in constant time, all of them whatever the outcome. The
    /// first match pairs if its registration opens and parses (else `bad_request`, nothing
    /// counted: the phone did prove the code); the other proofs of a matching finish are not
    /// counted. No match: `invalid_code`, each judged window one wrong attempt.
    pub fn judge(self, finish: &Finish, open: &[OpenWindow], budget_room: u32) -> Result<Accepted, Rejected> {
        let rid = self.request_id.clone();
        let refuse = |error, detail: &str| Rejected {
            refusal: Refusal::new(Some(&rid), error, detail),
            wrong: Vec::new(),
            lock: Vec::new(),
        };
        if finish.request_id != self.request_id {
            return Err(refuse(ErrorCode::BadRequest, "request_id: not this exchange"));
        }
        let mut judged: Vec<(usize, &super::wire::Proof, OpenWindow)> = Vec::new();
        for p in &finish.proofs {
            let Some(i) = self.offers.iter().position(|o| o.reference == p.reference) else {
                return Err(refuse(ErrorCode::BadRequest, "proofs: ref: not one of the offers"));
            };
            let window = open.iter().find(|w| w.id == self.offers[i].window && w.attempts < WINDOW_ATTEMPTS);
            if let Some(w) = window {
                judged.push((i, p, *w));
            }
        }
        if judged.is_empty() {
            return Err(refuse(ErrorCode::InvalidCode, "wrong or expired code"));
        }
        if judged.len() > budget_room as usize {
            return Err(refuse(ErrorCode::RateLimited, "too many wrong codes today; pairing is paused"));
        }
        let mut matched = None;
        for (i, p, _) in &judged {
            let ok = bool::from(self.offers[*i].keys.phone_tag().ct_eq(&p.confirm));
            if ok && matched.is_none() {
                matched = Some((*i, *p));
            }
        }
        let Some((i, proof)) = matched else {
            return Err(Rejected {
                refusal: Refusal::new(Some(&rid), ErrorCode::InvalidCode, "wrong or expired code"),
                wrong: judged.iter().map(|j| j.2.id).collect(),
                lock: judged.iter().filter(|j| locks(j.2.attempts)).map(|j| j.2.id).collect(),
            });
        };
        let offer = &self.offers[i];
        let Some(plain) = Keys::open(&offer.keys.seal_phone, &offer.keys.th, &proof.sealed) else {
            return Err(refuse(ErrorCode::BadRequest, "proofs: sealed: cannot be opened"));
        };
        let registration = match parse_registration(&plain) {
            Ok(r) => r,
            Err(e) => return Err(refuse(ErrorCode::BadRequest, &format!("registration: {e}"))),
        };
        let window = offer.window;
        let mut offers = self.offers;
        let offer = offers.swap_remove(i);
        Ok(Accepted { window, registration, request_id: rid, reference: offer.reference, keys: offer.keys })
    }
}

/// Why an exchange cannot be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// An exchange with this request id is in progress: do not answer (the reply topic is the
    /// first request's, and a refusal there would spoil it).
    Duplicate,
    /// [`MAX_PENDING`] exchanges are waiting: answer [`Busy::refusal`].
    Full,
}

impl Busy {
    /// The reply for [`Busy::Full`]; none for a duplicate.
    pub fn refusal(self, request_id: &str) -> Option<Refusal> {
        match self {
            Busy::Duplicate => None,
            Busy::Full => Some(Refusal::new(
                Some(request_id),
                ErrorCode::RateLimited,
                "too many pairings in progress; try again in a minute",
            )),
        }
    }
}

/// The refusal of a finish that has no exchange (expired, already finished, or never offered).
pub fn no_exchange(request_id: &str) -> Refusal {
    Refusal::new(Some(request_id), ErrorCode::BadRequest, "request_id: no pairing in progress (expired or finished)")
}

/// The service's exchanges between offer and finish, by request id. Each is taken once.
#[derive(Debug, Default)]
pub struct PendingTable {
    map: HashMap<String, Pending>,
}

impl PendingTable {
    pub fn new() -> PendingTable {
        PendingTable::default()
    }

    /// Forgets expired exchanges.
    pub fn prune(&mut self, now: i64) {
        self.map.retain(|_, p| now < p.expires_at);
    }

    /// Whether a live exchange has this request id (check before the work of an offer).
    pub fn contains(&self, request_id: &str, now: i64) -> bool {
        self.map.get(request_id).is_some_and(|p| now < p.expires_at)
    }

    pub fn insert(&mut self, pending: Pending, now: i64) -> Result<(), Busy> {
        self.prune(now);
        if self.map.contains_key(&pending.request_id) {
            return Err(Busy::Duplicate);
        }
        if self.map.len() >= MAX_PENDING {
            return Err(Busy::Full);
        }
        self.map.insert(pending.request_id.clone(), pending);
        Ok(())
    }

    /// Removes and returns the live exchange of `request_id`: a finish is judged once, and a
    /// second finish (a replay, a retry) finds nothing.
    pub fn take(&mut self, request_id: &str, now: i64) -> Option<Pending> {
        self.prune(now);
        self.map.remove(request_id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
