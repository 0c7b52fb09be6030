//! The legacy binary codec on untrusted bytes: what the simulator's gateway parses (commands
//! 0, 1, 2 and their checks), the 6-byte error-response, and feedback tuples split anywhere.
//! None of it may panic; whatever parses as a notification must re-encode and parse again.
#![no_main]
use dingdong::codec::apns_binary::frames::{self, ErrorResponse, FeedbackParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = codec::parse(rest) {
        let _ = codec::check(&frame);
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
    let _ = ErrorResponse::parse(data);
    // Feedback: the same bytes fed whole and in two pieces give the same tuples.
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let (mut whole, mut halves) = (FeedbackParser::default(), FeedbackParser::default());
    whole.push(data);
    halves.push(&data[..split]);
    let mut a = Vec::new();
    while let Some(t) = whole.next_tuple() {
        a.push(t);
    }
    let mut b = Vec::new();
    while let Some(t) = halves.next_tuple() {
        b.push(t);
    }
    halves.push(&data[split..]);
    while let Some(t) = halves.next_tuple() {
        b.push(t);
    }
    assert_eq!(a, b);
});
