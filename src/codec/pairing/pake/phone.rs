//! The phone's side of pairing v2, as a state machine for the reference phone (`dingdong
//! phone-sim pair`) and as the model an app follows: [`start`] gives the request to publish;
//! [`AwaitingOffer::on_offer`] the finish; [`AwaitingDone::on_done`] the verified result. It
//! trusts nothing the gateway sends before the gateway's confirmation tag checks out. The
//! caller publishes, subscribes and keeps time; on [`PakeError::Unexpected`] it keeps waiting
//! in the same state (the methods borrow, so the state survives a stray message).
//!
//! SPAKE2 state is single-use, yet the phone answers up to [`MAX_OFFERS`] offers with the same
//! secret scalar: it keeps a 32-byte seed and rebuilds the same state from it for each offer.

use super::registration::{encode_registration, parse_grant, Doorbell, Registration};
use super::wire::{self, Finish, Proof, Reply, Request, MAX_OFFERS, PAKE_BYTES};
use super::{gateway_identity, random_id, transcript_hash, Code, Keys, PakeError, PhoneSecret, PHONE_IDENTITY};
use rand::{CryptoRng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use spake2::{Ed25519Group, Identity, Spake2};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Random bytes of a request id (22 base64url characters).
const REQUEST_ID_BYTES: usize = 16;

/// After [`start`]: the request is published, the offer awaited.
pub struct AwaitingOffer {
    request_id: String,
    gateway_id: String,
    code: Code,
    /// Seeds the RNG that draws the phone's SPAKE2 scalar, so the state can be rebuilt.
    seed: Zeroizing<[u8; 32]>,
    pake: [u8; PAKE_BYTES],
    registration: Zeroizing<String>,
}

/// After the finish is published: the done reply awaited, with the keys of every offer.
pub struct AwaitingDone {
    request_id: String,
    offers: Vec<(String, Keys)>,
}

/// A verified pairing: keep `phone_id` and `secret` (the secret in the platform's keystore).
pub struct Paired {
    pub phone_id: i64,
    pub user: String,
    pub doorbells: Vec<Doorbell>,
    pub secret: PhoneSecret,
}

impl std::fmt::Debug for Paired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Paired")
            .field("phone_id", &self.phone_id)
            .field("user", &self.user)
            .field("doorbells", &self.doorbells)
            .finish_non_exhaustive()
    }
}

pub(super) fn spake_a(code: &Code, gateway_id: &str, seed: &[u8; 32]) -> (Spake2<Ed25519Group>, Vec<u8>) {
    Spake2::<Ed25519Group>::start_a_with_rng(
        &code.password(),
        &Identity::new(PHONE_IDENTITY.as_bytes()),
        &Identity::new(gateway_id.as_bytes()),
        ChaCha20Rng::from_seed(*seed),
    )
}

/// Starts pairing with the gateway whose topic prefix is `topic_prefix`: returns the state and
/// the payload to publish on `P/pair/request` (after subscribing to
/// `P/pair/response/<request_id>`). The registration is checked now and sealed later.
pub fn start<R: RngCore + CryptoRng + ?Sized>(
    code: &Code,
    topic_prefix: &str,
    registration: &Registration,
    rng: &mut R,
) -> Result<(AwaitingOffer, String), PakeError> {
    let registration = Zeroizing::new(encode_registration(registration).map_err(PakeError::BadRegistration)?);
    let request_id = random_id(rng, REQUEST_ID_BYTES);
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut seed[..]);
    let gateway_id = gateway_identity(topic_prefix);
    let (_, pake) = spake_a(code, &gateway_id, &seed);
    let pake: [u8; PAKE_BYTES] = pake.try_into().expect("SPAKE2 messages are 33 bytes");
    let message = wire::encode_request(&Request { request_id: request_id.clone(), pake });
    Ok((AwaitingOffer { request_id, gateway_id, code: code.clone(), seed, pake, registration }, message))
}

/// Reads a reply meant for `request_id`: another request's is [`PakeError::Unexpected`], a
/// refusal is [`PakeError::Refused`].
fn reply_for(request_id: &str, payload: &[u8]) -> Result<Reply, PakeError> {
    let reply = wire::parse_reply(payload)?;
    let rid = match &reply {
        Reply::Offer(o) => &o.request_id,
        Reply::Done(d) => &d.request_id,
        Reply::Refused { request_id, .. } => request_id,
    };
    if rid != request_id {
        return Err(PakeError::Unexpected);
    }
    match reply {
        Reply::Refused { error, detail, .. } => Err(PakeError::Refused { error: error.as_str().into(), detail }),
        r => Ok(r),
    }
}

impl AwaitingOffer {
    /// The id to subscribe under: `P/pair/response/<request_id>`.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// On the offer: derives each offer's keys with the code, and returns the state and the
    /// payload to publish on `P/pair/finish` (one proof per offer: tag and sealed registration).
    pub fn on_offer(&self, payload: &[u8]) -> Result<(AwaitingDone, String), PakeError> {
        let Reply::Offer(offer) = reply_for(&self.request_id, payload)? else {
            return Err(PakeError::Unexpected);
        };
        let listed: Vec<(&str, &[u8])> = offer.offers.iter().map(|o| (o.reference.as_str(), &o.pake[..])).collect();
        let th = transcript_hash(&self.gateway_id, &self.request_id, &self.pake, &listed);
        let mut offers = Vec::with_capacity(offer.offers.len());
        let mut proofs = Vec::with_capacity(offer.offers.len());
        for item in &offer.offers {
            let (state, _) = spake_a(&self.code, &self.gateway_id, &self.seed);
            let k = Zeroizing::new(
                state
                    .finish(&item.pake)
                    .map_err(|_| PakeError::BadMessage("offers: pake: not a valid SPAKE2 message".into()))?,
            );
            let keys = Keys::derive(&k, th);
            proofs.push(Proof {
                reference: item.reference.clone(),
                confirm: keys.phone_tag(),
                sealed: Keys::seal(&keys.seal_phone, &th, self.registration.as_bytes()),
            });
            offers.push((item.reference.clone(), keys));
        }
        debug_assert!(offers.len() <= MAX_OFFERS);
        let message = wire::encode_finish(&Finish { request_id: self.request_id.clone(), proofs });
        Ok((AwaitingDone { request_id: self.request_id.clone(), offers }, message))
    }
}

impl AwaitingDone {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// On the done reply: checks the gateway's tag first (in constant time); only then opens
    /// and reads the grant, and returns it with the secret.
    pub fn on_done(&self, payload: &[u8]) -> Result<Paired, PakeError> {
        let Reply::Done(done) = reply_for(&self.request_id, payload)? else {
            return Err(PakeError::Unexpected);
        };
        let Some((_, keys)) = self.offers.iter().find(|(r, _)| *r == done.reference) else {
            return Err(PakeError::GatewayUnverified);
        };
        if !bool::from(keys.gateway_tag().ct_eq(&done.confirm)) {
            return Err(PakeError::GatewayUnverified);
        }
        let plain = Keys::open(&keys.seal_gateway, &keys.th, &done.sealed)
            .ok_or_else(|| PakeError::BadMessage("sealed: cannot be opened".into()))?;
        let grant = parse_grant(&plain).map_err(|e| PakeError::BadMessage(format!("grant: {e}")))?;
        Ok(Paired {
            phone_id: grant.phone_id,
            user: grant.user,
            doorbells: grant.doorbells,
            secret: keys.phone_secret(),
        })
    }
}
