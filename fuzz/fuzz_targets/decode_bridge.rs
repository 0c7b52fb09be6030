//! Everything the daemon decodes from the broker: `codec::bridge::decode` over a topic under
//! the prefix and a payload. Input: `topic-suffix NUL payload` (no NUL: a native press topic).
#![no_main]
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "dingdong/gw";

fuzz_target!(|data: &[u8]| {
    let (suffix, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("button/front/press".to_string(), data),
    };
    let topic = format!("{PREFIX}/{suffix}");
    if let Ok(Some(inbound)) = dingdong::codec::bridge::decode(&dingdong::codec::bridge::Routes::new(PREFIX), &topic, payload) {
        use dingdong::codec::bridge::Inbound;
        match inbound {
            Inbound::PairRequest(Err(r)) | Inbound::PhoneRequest { request: Err(r), .. } => {
                // Every refusal's reply is JSON and its request id cannot widen a topic.
                let v: serde_json::Value = serde_json::from_str(&r.reply()).expect("reply is JSON");
                assert_eq!(v["ok"], false);
                if let Some(id) = &r.request_id {
                    assert!(dingdong::codec::pairing::wire::valid_request_id(id));
                }
            }
            Inbound::PhoneRequest { phone_id, .. } => assert!(phone_id > 0),
            _ => {}
        }
    }
});
