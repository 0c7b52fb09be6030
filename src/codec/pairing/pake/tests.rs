//! Whole exchanges, phone and gateway together: the worked example of `docs/pairing.md`, the
//! eavesdropper and the man in the middle, and the counting rules.

use super::budget::{room, WINDOW_ATTEMPTS};
use super::gateway::{no_exchange, offer, Busy, OfferWindow, OpenWindow, Pending, PendingTable};
use super::gateway::{MAX_PENDING, PENDING_TTL_MS};
use super::phone::{self, AwaitingDone, Paired};
use super::registration::{Doorbell, Grant, Push, Registration};
use super::wire::{self, parse_finish, parse_reply, parse_request, Finish, Reply};
use super::*;
use crate::codec::pairing::wire::ErrorCode;
use crate::domain::Environment;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use spake2::{Ed25519Group, Identity, Spake2};

const P: &str = "dingdong/gw-0001";

fn code(s: &str) -> Code {
    Code::parse(s).unwrap()
}

fn apns() -> Registration {
    Registration {
        push: Push::Apns {
            token: "a1".repeat(32),
            environment: Environment::Production,
            topic: "com.example.doorbell".into(),
        },
        name: Some("Ann's iPhone".into()),
    }
}

fn grant() -> Grant {
    Grant {
        phone_id: 12,
        user: "alice".into(),
        doorbells: vec![Doorbell { id: "front".into(), name: "Front door".into() }],
    }
}

fn open(ids: &[i64]) -> Vec<OpenWindow> {
    ids.iter().map(|&id| OpenWindow { id, attempts: 0 }).collect()
}

/// Runs request and offer: the phone typed `typed`; `windows` are the gateway's open windows.
fn to_finish(typed: &str, windows: &[(i64, &str)]) -> (Pending, AwaitingDone, Vec<u8>) {
    let codes: Vec<(i64, Code)> = windows.iter().map(|(id, c)| (*id, code(c))).collect();
    let offered: Vec<OfferWindow> = codes.iter().map(|(id, c)| OfferWindow { id: *id, code: c }).collect();
    let (awaiting, request) = phone::start(&code(typed), P, &apns(), &mut OsRng).unwrap();
    let request = parse_request(request.as_bytes()).unwrap();
    let (pending, reply) = offer(P, &request, &offered, 0, &mut OsRng).unwrap();
    let (done, finish) = awaiting.on_offer(reply.as_bytes()).unwrap();
    (pending, done, finish.into_bytes())
}

fn judge(pending: Pending, finish: &[u8], open: &[OpenWindow]) -> Result<gateway::Accepted, gateway::Rejected> {
    pending.judge(&parse_finish(finish).unwrap(), open, room(0))
}

#[test]
fn the_phone_pairs_with_the_window_whose_code_it_typed() {
    let windows = [(1, "11111111"), (2, "40721356"), (3, "33333333")];
    let (pending, done, finish) = to_finish("4072-1356", &windows);
    assert_eq!(pending.windows(), vec![1, 2, 3]);
    let accepted = judge(pending, &finish, &open(&[1, 2, 3])).unwrap();
    assert_eq!((accepted.window, &accepted.registration), (2, &apns()));
    let paired: Paired = done.on_done(accepted.done_reply(&grant()).unwrap().as_bytes()).unwrap();
    assert_eq!((paired.phone_id, paired.user.as_str(), paired.doorbells.clone()), (12, "alice", grant().doorbells));
    assert_eq!(paired.secret.expose(), accepted.secret().expose(), "both sides derive the same secret");
    for dbg in [format!("{paired:?}"), format!("{accepted:?}")] {
        assert!(!dbg.contains(&hex::encode(paired.secret.expose())) && !dbg.contains(&"a1".repeat(32)), "{dbg}");
    }
}

#[test]
fn a_wrong_code_counts_once_against_each_open_window_and_locks_at_the_limit() {
    let (pending, done, finish) = to_finish("99999999", &[(1, "11111111"), (2, "22222222")]);
    let mut ws = open(&[1, 2]);
    ws[1].attempts = WINDOW_ATTEMPTS - 1;
    let r = judge(pending, &finish, &ws).unwrap_err();
    assert_eq!(r.refusal.error, ErrorCode::InvalidCode);
    assert_eq!((r.wrong, r.lock), (vec![1, 2], vec![2]));
    // The phone reads the refusal as such.
    assert!(
        matches!(done.on_done(r.refusal.reply().as_bytes()), Err(PakeError::Refused { error, .. }) if error == "invalid_code")
    );
}

#[test]
fn windows_closed_since_the_offer_are_not_judged() {
    // Window 2 (the right one) was used or locked in between: the code reads as wrong, and only
    // window 1 is counted.
    let (pending, _, finish) = to_finish("22222222", &[(1, "11111111"), (2, "22222222")]);
    let r = judge(pending, &finish, &open(&[1])).unwrap_err();
    assert_eq!((r.refusal.error, r.wrong), (ErrorCode::InvalidCode, vec![1]));
    let (pending, _, finish) = to_finish("22222222", &[(1, "11111111"), (2, "22222222")]);
    let locked = [OpenWindow { id: 2, attempts: WINDOW_ATTEMPTS }];
    let r = judge(pending, &finish, &locked).unwrap_err();
    assert_eq!((r.refusal.error, r.wrong), (ErrorCode::InvalidCode, vec![]), "nothing left to judge");
}

#[test]
fn the_budget_refuses_to_judge_beyond_its_room() {
    let ws = [(1, "11111111"), (2, "22222222")];
    let (pending, _, finish) = to_finish("11111111", &ws);
    let r = pending.judge(&parse_finish(&finish).unwrap(), &open(&[1, 2]), 1).unwrap_err();
    assert_eq!((r.refusal.error, r.wrong.len(), r.lock.len()), (ErrorCode::RateLimited, 0, 0));
    // Exactly enough room: judged, and the right code pairs without spending any.
    let (pending, _, finish) = to_finish("11111111", &ws);
    assert!(pending.judge(&parse_finish(&finish).unwrap(), &open(&[1, 2]), 2).is_ok());
    let (pending, _, finish) = to_finish("12345678", &ws);
    assert_eq!(pending.judge(&parse_finish(&finish).unwrap(), &open(&[1, 2]), 2).unwrap_err().wrong, vec![1, 2]);
}

#[test]
fn no_open_window_is_refused_before_any_guess() {
    let (_, request) = phone::start(&code("12345678"), P, &apns(), &mut OsRng).unwrap();
    let request = parse_request(request.as_bytes()).unwrap();
    let e = offer(P, &request, &[], 0, &mut OsRng).unwrap_err();
    assert_eq!(e.error, ErrorCode::InvalidCode);
    // At most MAX_OFFERS windows are offered, each once.
    let c = code("12345678");
    let many: Vec<OfferWindow> = [1, 1, 2, 3, 4, 5].iter().map(|&id| OfferWindow { id, code: &c }).collect();
    let (pending, reply) = offer(P, &request, &many, 0, &mut OsRng).unwrap();
    assert_eq!(pending.windows(), vec![1, 2, 3, 4]);
    assert!(matches!(parse_reply(reply.as_bytes()).unwrap(), Reply::Offer(o) if o.offers.len() == 4));
}

/// A phone built by hand from the key schedule, sealing `plain` whatever it is; returns the
/// finish for `offer` and the keys of each offer.
fn hand_finish(typed: &str, seed: &[u8; 32], request_id: &str, pake: &[u8], reply: &str, plain: &[u8]) -> Finish {
    let Reply::Offer(o) = parse_reply(reply.as_bytes()).unwrap() else { panic!("an offer") };
    let gw = gateway_identity(P);
    let listed: Vec<(&str, &[u8])> = o.offers.iter().map(|i| (i.reference.as_str(), &i.pake[..])).collect();
    let th = transcript_hash(&gw, request_id, pake, &listed);
    let proofs = o
        .offers
        .iter()
        .map(|i| {
            let (state, _) = phone::spake_a(&code(typed), &gw, seed);
            let keys = Keys::derive(&state.finish(&i.pake).unwrap(), th);
            wire::Proof {
                reference: i.reference.clone(),
                confirm: keys.phone_tag(),
                sealed: Keys::seal(&keys.seal_phone, &th, plain),
            }
        })
        .collect();
    Finish { request_id: request_id.into(), proofs }
}

/// A request made by hand with a known seed.
fn hand_request(typed: &str, seed: &[u8; 32], request_id: &str) -> wire::Request {
    let (_, pake) = phone::spake_a(&code(typed), &gateway_identity(P), seed);
    wire::Request { request_id: request_id.into(), pake: pake.try_into().unwrap() }
}

#[test]
fn a_right_code_with_a_bad_registration_pairs_nothing_and_counts_nothing() {
    let c = code("11111111");
    let windows = [OfferWindow { id: 1, code: &c }];
    for (plain, says) in [
        (&br#"{"platform":"apns","token":"00","environment":"production","topic":"a"}"#[..], "registration: token"),
        (b"not json", "registration: payload is not JSON"),
    ] {
        let request = hand_request("11111111", &[5; 32], "r-1");
        let (pending, reply) = offer(P, &request, &windows, 0, &mut OsRng).unwrap();
        let finish = hand_finish("11111111", &[5; 32], "r-1", &request.pake, &reply, plain);
        let r = pending.judge(&finish, &open(&[1]), room(0)).unwrap_err();
        assert_eq!((r.refusal.error, r.wrong.len()), (ErrorCode::BadRequest, 0));
        assert!(r.refusal.detail.starts_with(says), "{}", r.refusal.detail);
    }
    // A sealed registration that does not open (tampered on the way) is refused the same way.
    let (pending, _, finish) = to_finish("11111111", &[(1, "11111111")]);
    let mut f = parse_finish(&finish).unwrap();
    f.proofs[0].sealed[0] ^= 1;
    let r = pending.judge(&f, &open(&[1]), room(0)).unwrap_err();
    assert_eq!((r.refusal.error, r.wrong.len()), (ErrorCode::BadRequest, 0));
    assert!(r.refusal.detail.contains("sealed"));
}

#[test]
fn a_finish_is_judged_once_and_exchanges_expire_and_are_bounded() {
    let mut table = PendingTable::new();
    let (pending, _, finish) = to_finish("11111111", &[(1, "11111111")]);
    let rid = pending.request_id().to_string();
    table.insert(pending, 0).unwrap();
    assert!(table.contains(&rid, PENDING_TTL_MS - 1));
    let taken = table.take(&rid, 10).unwrap();
    assert!(table.take(&rid, 10).is_none(), "a replayed finish finds nothing");
    assert_eq!(no_exchange(&rid).error, ErrorCode::BadRequest);
    assert!(judge(taken, &finish, &open(&[1])).is_ok());
    // Expiry.
    let (pending, _, _) = to_finish("11111111", &[(1, "11111111")]);
    let rid = pending.request_id().to_string();
    table.insert(pending, 0).unwrap();
    assert!(!table.contains(&rid, PENDING_TTL_MS));
    assert!(table.take(&rid, PENDING_TTL_MS).is_none());
    // Bound and duplicates: refused, nobody else's exchange pushed out.
    for i in 0..MAX_PENDING as i64 {
        let (pending, _, _) = to_finish("11111111", &[(i, "11111111")]);
        table.insert(pending, 100).unwrap();
    }
    let (pending, _, _) = to_finish("11111111", &[(99, "11111111")]);
    assert_eq!(table.insert(pending, 100).unwrap_err(), Busy::Full);
    assert_eq!(Busy::Full.refusal("r").unwrap().error, ErrorCode::RateLimited);
    assert_eq!(table.len(), MAX_PENDING);
    assert!(table.take("nope", 100 + PENDING_TTL_MS).is_none());
    assert!(table.is_empty(), "all expired by then");
    let request = hand_request("11111111", &[5; 32], "same-id");
    let c = code("11111111");
    let (first, _) = offer(P, &request, &[OfferWindow { id: 1, code: &c }], 0, &mut OsRng).unwrap();
    let (second, _) = offer(P, &request, &[OfferWindow { id: 1, code: &c }], 0, &mut OsRng).unwrap();
    table.insert(first, 0).unwrap();
    assert_eq!(table.insert(second, 1).unwrap_err(), Busy::Duplicate);
    assert_eq!(Busy::Duplicate.refusal("same-id"), None, "a duplicate is not answered");
}

/// The values of the worked example, made with seeded ChaCha20 generators in place of `OsRng`.
struct Example {
    request: String,
    offer: String,
    finish: String,
    done: String,
    request_id: String,
    phone_seed: [u8; 32],
    x_wide: [u8; 64],
    y_wide: [[u8; 64]; 2],
    th: [u8; 32],
    k: Vec<u8>,
    secret_phone: [u8; 32],
    secret_gateway: [u8; 32],
}

fn worked_example_values() -> Example {
    let mut phone_rng = ChaCha20Rng::from_seed([1; 32]);
    let mut gateway_rng = ChaCha20Rng::from_seed([2; 32]);
    let now = 1_700_000_000_000;
    let (right, other) = (code("40721356"), code("93518804"));
    let windows = [OfferWindow { id: 7, code: &right }, OfferWindow { id: 8, code: &other }];
    let (awaiting, request) = phone::start(&code("4072 1356"), P, &apns(), &mut phone_rng).unwrap();
    let parsed = parse_request(request.as_bytes()).unwrap();
    let (pending, offer_reply) = offer(P, &parsed, &windows, now, &mut gateway_rng).unwrap();
    let (done_state, finish) = awaiting.on_offer(offer_reply.as_bytes()).unwrap();
    let accepted = pending.judge(&parse_finish(finish.as_bytes()).unwrap(), &open(&[7, 8]), room(0)).unwrap();
    assert_eq!(accepted.window, 7);
    let done = accepted.done_reply(&grant()).unwrap();
    let paired = done_state.on_done(done.as_bytes()).unwrap();

    // The draws, replayed from the same seeds, in the order the code makes them.
    let mut replay = ChaCha20Rng::from_seed([1; 32]);
    let mut rid = [0u8; 16];
    replay.fill_bytes(&mut rid);
    let mut phone_seed = [0u8; 32];
    replay.fill_bytes(&mut phone_seed);
    let mut x_wide = [0u8; 64];
    ChaCha20Rng::from_seed(phone_seed).fill_bytes(&mut x_wide);
    let mut replay = ChaCha20Rng::from_seed([2; 32]);
    let mut y_wide = [[0u8; 64]; 2];
    let mut refs = Vec::new();
    for y in &mut y_wide {
        replay.fill_bytes(y);
        let mut r = [0u8; 6];
        replay.fill_bytes(&mut r);
        refs.push(URL_SAFE_NO_PAD.encode(r));
    }
    let Reply::Offer(o) = parse_reply(offer_reply.as_bytes()).unwrap() else { panic!() };
    assert_eq!(refs, o.offers.iter().map(|i| i.reference.clone()).collect::<Vec<_>>());
    let gw = gateway_identity(P);
    let listed: Vec<(&str, &[u8])> = o.offers.iter().map(|i| (i.reference.as_str(), &i.pake[..])).collect();
    let th = transcript_hash(&gw, &parsed.request_id, &parsed.pake, &listed);
    let (state, _) = phone::spake_a(&right, &gw, &phone_seed);
    let k = state.finish(&o.offers[0].pake).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.encode(rid), parsed.request_id);
    Example {
        request,
        offer: offer_reply,
        finish,
        done,
        request_id: parsed.request_id,
        phone_seed,
        x_wide,
        y_wide,
        th,
        k,
        secret_phone: *paired.secret.expose(),
        secret_gateway: *accepted.secret().expose(),
    }
}

/// The worked example of `docs/pairing.md` ("Worked example"): if this changes, change the
/// doc. `--nocapture` prints every value.
#[test]
fn worked_example() {
    let e = worked_example_values();
    let keys = Keys::derive(&e.k, e.th);
    let values = [
        ("request_id", e.request_id.clone(), EX_REQUEST_ID),
        ("phone seed", hex::encode(e.phone_seed), EX_PHONE_SEED),
        ("x_wide", hex::encode(e.x_wide), EX_X_WIDE),
        ("y1_wide", hex::encode(e.y_wide[0]), EX_Y1_WIDE),
        ("y2_wide", hex::encode(e.y_wide[1]), EX_Y2_WIDE),
        ("request", e.request.clone(), EX_REQUEST),
        ("offer", e.offer.clone(), EX_OFFER),
        ("finish", e.finish.clone(), EX_FINISH),
        ("done", e.done.clone(), EX_DONE),
        ("TH", hex::encode(e.th), EX_TH),
        ("K", hex::encode(&e.k), EX_K),
        ("confirm-phone key", hex::encode(keys.confirm_phone), EX_CONFIRM_PHONE_KEY),
        ("confirm-gateway key", hex::encode(keys.confirm_gateway), EX_CONFIRM_GATEWAY_KEY),
        ("seal-phone key", hex::encode(keys.seal_phone), EX_SEAL_PHONE_KEY),
        ("seal-gateway key", hex::encode(keys.seal_gateway), EX_SEAL_GATEWAY_KEY),
        ("secret", hex::encode(e.secret_phone), EX_SECRET),
    ];
    for (name, got, want) in &values {
        println!("{name} {got}");
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(e.secret_phone, e.secret_gateway);
}

// The worked example's values, checked independently against python-spake2 0.9 and
// pyca/cryptography when they were written.
const EX_REQUEST_ID: &str = r#"Aj83IDokdsQlZqYcxVw8qA"#;
const EX_PHONE_SEED: &str = r#"75dbb4cc41c0deb789f8e7bf881836381ecc3686b60ee3b84b6c7d321d70d5c0"#;
const EX_X_WIDE: &str = r#"a3ea9735f0c9d5bde8fa592e03a41a2a3dce14627eb98be259a3673d77997e5e7feac47356c359b3614112a49e00cd11ac1e5803079a5b0a5cf3ac0e140820d2"#;
const EX_Y1_WIDE: &str = r#"f6a12ca8ffc30a66ca140ccc7276336115819361186d3f535dd99f8eaaca8fce7f82dd63f4f75c33da444b72372be3aa43c0027a076bf9675eb7932695d127a4"#;
const EX_Y2_WIDE: &str = r#"6e8a66e255e856aef7560b44a07d92cbc7ae12618b54d5ea8892e1b058c1a3cb354a58d2f337e7b9ff6647484b4dc18df86ed6d574f843815dd68ba200e0e0c2"#;
const EX_REQUEST: &str =
    r#"{"request_id":"Aj83IDokdsQlZqYcxVw8qA","v":2,"pake":"Qcja7ETFRsLUHsLPO_SkOKTohG1WK_D9LUvY4zQIvjF8"}"#;
const EX_OFFER: &str = r#"{"request_id":"Aj83IDokdsQlZqYcxVw8qA","ok":true,"step":"offer","offers":[{"ref":"SsozcU2U","pake":"QgAlQ6F06jQ4Qs8YeIooOrMqCGrn31PVveVa03fHbqT1"},{"ref":"bzxtxobT","pake":"QgWxRzgnCOfx56fdpFcTeQm1EHj-XF8sZpH_EddNn_Yv"}]}"#;
const EX_FINISH: &str = r#"{"request_id":"Aj83IDokdsQlZqYcxVw8qA","proofs":[{"ref":"SsozcU2U","confirm":"pEYVIdcWLERY8UVnQpUiJ47zbLkPhOIRqoRrIkSZe3g","sealed":"h4BmWYqgaKcFKktYOTpvtUo-eAol5mY24qLiCjBkMHUlFT8Xms0WDxzneT_uMOQHmlK3lt2ZYK34HruxY1gHuhd-5rIcrsbplW89Ir7LY1pSuOvJ2euZ-5XRCOkJXwK0RQYPBcgd9hVwKN5rmhuGFmhc-V3AXMN0Yw7Y_aHlfwgIw8RzqKrryadFl2IsJhCB4faKSNwRfFvoFk24vZfP5jrqRL2gJlYjjIDUCPuyC3Ss2sROuFlbo11lFiZTjg"},{"ref":"bzxtxobT","confirm":"yzZWDIkHcJsMNCIQ2Dhn756-7iy1Q3NpoekDrQmfo5A","sealed":"Gx2ow3j-b-oX6SOkhQx6HDvSmqKuWvHTdP-YpWGUTE6DY1OOdSaN94d0QvLe_X9agdef29GuY3fy6aewMQJnF6LT3u_a8j-C7kPmElBAg9iID8z7cxP56IjonPIDamkZGAqAuNcSFMgT5Q6Mi-5QCo18qwehcj9U-0GLWDuVUMOkPZVRQjcIk6aRRS7ikzK58C2BRcSLcKtx4Pg5GTt1_YFzrpPKz-pJi_pLRNsZiFw--p3TDWzcFaFbeOp49Q"}]}"#;
const EX_DONE: &str = r#"{"request_id":"Aj83IDokdsQlZqYcxVw8qA","ok":true,"step":"done","ref":"SsozcU2U","confirm":"czqw1suZ90UpUH8LWav-fHS4PGf_1jq5PKiS3IbP5Og","sealed":"MfMkx1hk-GMkwAWFhCWaIiWGCV9FNhXjSd8YB0O0Q58gbB9ifcB-Nb0So7LOmoXgvpPLTtz5iumEzVHnl4wb-X-w59kf4iORIUTGEua_mRsLE8DszRb2jrDToxwSF2M"}"#;
const EX_TH: &str = r#"b4637dc79bb66f07d683d8d2bca8719f7c3aa67707a4d003f091fd812aa578e8"#;
const EX_K: &str = r#"0baddd7962669b18e3c96baf5f3f45cf4179d8794c77fe8bdeb163a7e7e8c3e9"#;
const EX_CONFIRM_PHONE_KEY: &str = r#"4cfd4319d2aed1435a9716eb222e019e3a56dcd823ef58fec6e83cfe14816aad"#;
const EX_CONFIRM_GATEWAY_KEY: &str = r#"1b5bb49031b7546c94200f21be98f30a2cabff6e041a0d457f359260a81d8b81"#;
const EX_SEAL_PHONE_KEY: &str = r#"828f046d9b57e551500ada014f15f16c980999cc7a60ef5deab5dcf211a5dbd5"#;
const EX_SEAL_GATEWAY_KEY: &str = r#"7bf0af9fa97f7697c3d44d19d3a098bc08df0284fd435aecd5b823723ebd8d42"#;
const EX_SECRET: &str = r#"dfb698705c0f64992f30c28983defb262c5c91c1617f0667976b808e8cb5801e"#;

/// Every byte string an observer of the broker gets: the payloads and their decoded fields.
fn observed(e: &Example) -> Vec<Vec<u8>> {
    let mut seen: Vec<Vec<u8>> =
        [&e.request, &e.offer, &e.finish, &e.done].iter().map(|s| s.as_bytes().to_vec()).collect();
    seen.push(parse_request(e.request.as_bytes()).unwrap().pake.to_vec());
    let Reply::Offer(o) = parse_reply(e.offer.as_bytes()).unwrap() else { panic!() };
    seen.extend(o.offers.iter().map(|i| i.pake.to_vec()));
    for p in parse_finish(e.finish.as_bytes()).unwrap().proofs {
        seen.extend([p.confirm.to_vec(), p.sealed]);
    }
    let Reply::Done(d) = parse_reply(e.done.as_bytes()).unwrap() else { panic!() };
    seen.extend([d.confirm.to_vec(), d.sealed]);
    seen
}

#[test]
fn an_eavesdropper_learns_neither_code_nor_secret_nor_token() {
    let e = worked_example_values();
    let seen = observed(&e);
    let token = "a1".repeat(32);
    let needles: Vec<Vec<u8>> = vec![
        b"40721356".to_vec(),
        b"4072".to_vec(),
        e.secret_phone.to_vec(),
        hex::encode(e.secret_phone).into_bytes(),
        URL_SAFE_NO_PAD.encode(e.secret_phone).into_bytes(),
        e.k.clone(),
        token.clone().into_bytes(),
        hex::decode(&token).unwrap(),
        b"alice".to_vec(),
    ];
    for blob in &seen {
        for n in &needles {
            assert!(
                !blob.windows(n.len()).any(|w| w == &n[..]),
                "{} found in the transcript",
                String::from_utf8_lossy(n)
            );
        }
    }
    // No offline dictionary attack: holding the whole transcript, even the right code does not
    // reproduce the phone's tag or the secret, because the ephemeral scalars never travel. So a
    // guess cannot be tested against what was seen, and every code looks alike.
    let Reply::Offer(o) = parse_reply(e.offer.as_bytes()).unwrap() else { panic!() };
    let proof = &parse_finish(e.finish.as_bytes()).unwrap().proofs[0];
    let gw = gateway_identity(P);
    let mut candidates: Vec<Code> = (0..200).map(|_| Code::generate(&mut OsRng)).collect();
    candidates.extend([code("40721356"), code("93518804")]);
    for c in &candidates {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let (state, _) = phone::spake_a(c, &gw, &seed);
        let keys = Keys::derive(&state.finish(&o.offers[0].pake).unwrap(), e.th);
        assert_ne!(keys.phone_tag(), proof.confirm);
        assert_ne!(keys.secret, e.secret_phone);
        let opened = Keys::open(&keys.seal_phone, &e.th, &proof.sealed);
        assert!(opened.is_none(), "the sealed registration stays shut");
    }
    // Nor does the gateway's side: its scalar for the offer is needed too.
    let req = parse_request(e.request.as_bytes()).unwrap();
    let (state, _) = Spake2::<Ed25519Group>::start_b_with_rng(
        &code("40721356").password(),
        &Identity::new(PHONE_IDENTITY.as_bytes()),
        &Identity::new(gw.as_bytes()),
        OsRng,
    );
    assert_ne!(state.finish(&req.pake).unwrap(), e.k);
}

#[test]
fn keys_derived_with_a_wrong_code_differ() {
    let gw = gateway_identity(P);
    let (id_a, id_b) = (Identity::new(PHONE_IDENTITY.as_bytes()), Identity::new(gw.as_bytes()));
    let (a, msg_a) = phone::spake_a(&code("40721356"), &gw, &[3; 32]);
    let (b, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(&code("40721357").password(), &id_a, &id_b, OsRng);
    assert_ne!(a.finish(&msg_b).unwrap(), b.finish(&msg_a).unwrap());
    let (a, msg_a) = phone::spake_a(&code("40721356"), &gw, &[3; 32]);
    let (b, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(&code("40721356").password(), &id_a, &id_b, OsRng);
    assert_eq!(a.finish(&msg_b).unwrap(), b.finish(&msg_a).unwrap(), "and agree with the right one");
    // Another gateway's identity does not agree either.
    let (a, msg_a) = phone::spake_a(&code("40721356"), &gateway_identity("dingdong/gw-0002"), &[3; 32]);
    let (b, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(&code("40721356").password(), &id_a, &id_b, OsRng);
    assert_ne!(a.finish(&msg_b).unwrap(), b.finish(&msg_a).unwrap());
}

/// A fake gateway that guesses `guess`: its offer for the phone's request, and the best done
/// reply it can make after seeing the phone's finish (its own tag, a grant sealed its way).
fn fake_gateway(
    guess: &str,
    phone: &phone::AwaitingOffer,
    request: &wire::Request,
) -> (Result<AwaitingDone, PakeError>, String) {
    let gw = gateway_identity(P);
    let (state, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(
        &code(guess).password(),
        &Identity::new(PHONE_IDENTITY.as_bytes()),
        &Identity::new(gw.as_bytes()),
        OsRng,
    );
    let item = wire::OfferItem { reference: "w1".into(), pake: msg_b.try_into().unwrap() };
    let th = transcript_hash(&gw, &request.request_id, &request.pake, &[("w1", &item.pake[..])]);
    let keys = Keys::derive(&state.finish(&request.pake).unwrap(), th);
    let offer = wire::encode_offer(&wire::Offer { request_id: request.request_id.clone(), offers: vec![item] });
    let Ok((done_state, finish)) = phone.on_offer(offer.as_bytes()) else { panic!("the phone answers any offer") };
    let proof = &parse_finish(finish.as_bytes()).unwrap().proofs[0];
    let peeked = Keys::open(&keys.seal_phone, &th, &proof.sealed).is_some();
    let plain = super::registration::encode_grant(&grant()).unwrap();
    let forged = wire::encode_done(&wire::Done {
        request_id: request.request_id.clone(),
        reference: "w1".into(),
        confirm: keys.gateway_tag(),
        sealed: Keys::seal(&keys.seal_gateway, &th, plain.as_bytes()),
    });
    assert_eq!(peeked, guess == "40721356", "the registration opens only with the right code");
    (Ok(done_state), forged)
}

#[test]
fn a_man_in_the_middle_without_the_code_is_refused_by_the_phone() {
    let (phone, request) = phone::start(&code("40721356"), P, &apns(), &mut OsRng).unwrap();
    let request = parse_request(request.as_bytes()).unwrap();
    let (done_state, forged) = fake_gateway("12345678", &phone, &request);
    assert_eq!(done_state.unwrap().on_done(forged.as_bytes()).unwrap_err(), PakeError::GatewayUnverified);
    // The same forgery with the right code goes through: the check is the code, nothing else.
    let (done_state, forged) = fake_gateway("40721356", &phone, &request);
    assert!(done_state.unwrap().on_done(forged.as_bytes()).is_ok());
    // A done reply taken from another (real) pairing, a random tag, a ref never offered.
    let (done_state, _) = fake_gateway("12345678", &phone, &request);
    let done_state = done_state.unwrap();
    let real = worked_example_values().done.replace(&worked_example_values().request_id, &request.request_id);
    assert_eq!(done_state.on_done(real.as_bytes()).unwrap_err(), PakeError::GatewayUnverified);
    let mut d = wire::Done {
        request_id: request.request_id.clone(),
        reference: "w1".into(),
        confirm: [0; 32],
        sealed: vec![0; 40],
    };
    OsRng.fill_bytes(&mut d.confirm);
    assert_eq!(done_state.on_done(wire::encode_done(&d).as_bytes()).unwrap_err(), PakeError::GatewayUnverified);
    d.reference = "zz".into();
    assert_eq!(done_state.on_done(wire::encode_done(&d).as_bytes()).unwrap_err(), PakeError::GatewayUnverified);
    // Another request's reply is not for us; the phone keeps waiting.
    d.request_id = "someone-else".into();
    assert_eq!(done_state.on_done(wire::encode_done(&d).as_bytes()).unwrap_err(), PakeError::Unexpected);
}

#[test]
fn a_relay_that_drops_or_reorders_offers_breaks_both_confirmations() {
    let c1 = code("11111111");
    let c2 = code("22222222");
    let windows = [OfferWindow { id: 1, code: &c1 }, OfferWindow { id: 2, code: &c2 }];
    let (phone, request) = phone::start(&c1, P, &apns(), &mut OsRng).unwrap();
    let request = parse_request(request.as_bytes()).unwrap();
    let (pending, reply) = offer(P, &request, &windows, 0, &mut OsRng).unwrap();
    let Reply::Offer(mut o) = parse_reply(reply.as_bytes()).unwrap() else { panic!() };
    o.offers.pop();
    let (_, finish) = phone.on_offer(wire::encode_offer(&o).as_bytes()).unwrap();
    let r = judge(pending, finish.as_bytes(), &open(&[1, 2])).unwrap_err();
    assert_eq!((r.refusal.error, r.wrong), (ErrorCode::InvalidCode, vec![1]));
}
