//! Pairing v2 messages (`dingdong::codec::pairing::pake`): every parser never panics, what it accepts
//! is within bounds and encodes back to itself, refusals are JSON that echo nothing but a
//! checked request id; and fed to a real exchange, no input pairs without the real tag or
//! makes the phone trust a gateway that did not prove the code.
#![no_main]
use dingdong::codec::pairing::pake::gateway::{offer, OfferWindow, OpenWindow};
use dingdong::codec::pairing::pake::phone::{self, AwaitingDone, AwaitingOffer};
use dingdong::codec::pairing::pake::registration::{
    encode_grant, encode_registration, parse_grant, parse_registration, Push, Registration,
};
use dingdong::codec::pairing::pake::wire::{self, Reply, MAX_FINISH, MAX_OFFERS, MAX_REQUEST, REF_MAX};
use dingdong::codec::pairing::pake::{budget, Code, PakeError};
use dingdong::codec::pairing::share;
use dingdong::codec::pairing::wire::{parse_phone_reply, valid_request_id, PhoneReply, Refusal};
use dingdong::domain::{check_name, check_text, Environment};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::OnceLock;

const P: &str = "dingdong/gw-fuzz";

fn refusal_ok(e: &Refusal) {
    serde_json::from_str::<serde_json::Value>(&e.reply()).expect("reply is JSON");
    if let Some(id) = &e.request_id {
        assert!(valid_request_id(id));
    }
}

/// A phone that has sent its request, and the same phone after a real offer, built once.
struct Phone {
    awaiting_offer: AwaitingOffer,
    awaiting_done: AwaitingDone,
    request: wire::Request,
}

fn phone() -> &'static Phone {
    static PHONE: OnceLock<Phone> = OnceLock::new();
    PHONE.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(1);
        let reg = Registration {
            push: Push::Apns { token: "ab".repeat(32), environment: Environment::Sandbox, topic: "a.b".into() },
            name: None,
        };
        let code = Code::parse("40721356").unwrap();
        let (awaiting_offer, request) = phone::start(&code, P, &reg, &mut rng).unwrap();
        let request = wire::parse_request(request.as_bytes()).unwrap();
        let (_, reply) = offer(P, &request, &[OfferWindow { id: 1, code: &code }], 0, &mut rng).unwrap();
        let (awaiting_done, _) = awaiting_offer.on_offer(reply.as_bytes()).unwrap();
        Phone { awaiting_offer, awaiting_done, request }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else { return };
    match sel % 10 {
        0 => match wire::parse_request(payload) {
            Ok(r) => {
                assert!(payload.len() <= MAX_REQUEST && valid_request_id(&r.request_id) && r.pake[0] == b'A');
                assert_eq!(wire::parse_request(wire::encode_request(&r).as_bytes()).unwrap(), r);
            }
            Err(e) => refusal_ok(&e),
        },
        1 => match wire::parse_finish(payload) {
            Ok(f) => {
                assert!(payload.len() <= MAX_FINISH && (1..=MAX_OFFERS).contains(&f.proofs.len()));
                for (i, p) in f.proofs.iter().enumerate() {
                    assert!(wire::valid_ref(&p.reference) && p.reference.len() <= REF_MAX);
                    assert!(f.proofs[..i].iter().all(|q| q.reference != p.reference));
                }
                assert_eq!(wire::parse_finish(wire::encode_finish(&f).as_bytes()).unwrap(), f);
            }
            Err(e) => refusal_ok(&e),
        },
        2 => match wire::parse_reply(payload) {
            Ok(Reply::Offer(o)) => {
                assert!((1..=MAX_OFFERS).contains(&o.offers.len()) && o.offers.iter().all(|i| i.pake[0] == b'B'));
                assert_eq!(wire::parse_reply(wire::encode_offer(&o).as_bytes()).unwrap(), Reply::Offer(o));
            }
            Ok(Reply::Done(d)) => {
                assert_eq!(wire::parse_reply(wire::encode_done(&d).as_bytes()).unwrap(), Reply::Done(d));
            }
            Ok(Reply::Refused { request_id, detail, .. }) => {
                assert!(valid_request_id(&request_id) && check_text(&detail).is_ok());
            }
            Err(_) => {}
        },
        3 => {
            if let Ok(r) = parse_registration(payload) {
                assert!(r.name.as_deref().is_none_or(|n| check_name(n).is_ok()));
                let again = encode_registration(&r).expect("an accepted registration encodes");
                assert_eq!(parse_registration(again.as_bytes()).unwrap(), r);
            }
        }
        4 => {
            if let Ok(g) = parse_grant(payload) {
                assert_eq!(parse_grant(encode_grant(&g).unwrap().as_bytes()).unwrap(), g);
            }
        }
        5 => {
            // A finish for a real exchange whose code the input does not know: never pairs.
            let Ok(f) = wire::parse_finish(payload) else { return };
            let mut rng = StdRng::seed_from_u64(2);
            let code = Code::parse("40721356").unwrap();
            let mut request = phone().request.clone();
            request.request_id = f.request_id.clone();
            let windows = [OfferWindow { id: 1, code: &code }];
            let Ok((pending, _)) = offer(P, &request, &windows, 0, &mut rng) else { return };
            let open = [OpenWindow { id: 1, attempts: 0 }];
            match pending.judge(&f, &open, budget::room(0)) {
                Ok(_) => panic!("a finish paired without the phone's keys"),
                Err(r) => {
                    refusal_ok(&r.refusal);
                    assert!(r.wrong.len() <= 1 && r.lock.is_empty());
                }
            }
        }
        6 => {
            // Any offer: the phone answers or refuses, never panics; its finish parses.
            if let Ok((_, finish)) = phone().awaiting_offer.on_offer(payload) {
                assert!(wire::parse_finish(finish.as_bytes()).is_ok());
            }
        }
        8 => {
            // A reply to a signed request, as the phone reads it.
            if let Ok(PhoneReply::Refused { request_id, detail, .. }) = parse_phone_reply(payload) {
                assert!(request_id.is_none_or(|r| valid_request_id(&r)) && check_text(&detail).is_ok());
            }
        }
        9 => {
            // A sealed share code opens only under the phone's key: never from the input alone.
            let text = String::from_utf8_lossy(payload);
            assert!(share::open_code(&[0x5a; 32], 1, "r", &text).is_err());
        }
        _ => {
            // Any done reply: nothing the input can say makes the phone trust it.
            match phone().awaiting_done.on_done(payload) {
                Ok(_) => panic!("the phone trusted a gateway that did not prove the code"),
                Err(PakeError::Refused { .. } | PakeError::Unexpected | PakeError::GatewayUnverified) => {}
                Err(PakeError::BadMessage(_)) => {}
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
    }
});
