//! `P/pair/request` parsing: never panics; what it accepts is within bounds; refusals echo
//! nothing of the payload but the (checked) request id.
#![no_main]
use dingdong::codec::pairing::wire::{parse_pair_request, valid_request_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_pair_request(data) {
        Ok(r) => {
            assert!(valid_request_id(&r.request_id));
            assert!(dingdong::codec::pairing::Code::well_formed(&r.code));
            assert!(r.token.len() >= 64 && r.token.len() <= 200);
            assert!(r.token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(r.name.as_ref().is_none_or(|n| n.chars().count() <= 64));
            assert!(data.len() <= dingdong::codec::pairing::wire::MAX_PAYLOAD);
        }
        Err(e) => {
            let reply = e.reply();
            serde_json::from_str::<serde_json::Value>(&reply).expect("reply is JSON");
            if let Some(id) = &e.request_id {
                assert!(valid_request_id(id));
            }
        }
    }
});
