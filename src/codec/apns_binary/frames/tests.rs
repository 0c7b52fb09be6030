//! Unit tests of the codec: every command, item and status, and random bytes that must
//! never make it panic.

use super::*;
use rand::{Rng, SeedableRng};

fn note<'a>(token: &'a [u8], payload: &'a [u8]) -> Notification<'a> {
    Notification { token, payload, identifier: 0x0102_0304, expiry: 0x0a0b_0c0d, priority: 10 }
}

#[test]
fn simple_command_layout() {
    let token = [0xab; 32];
    let mut out = Vec::new();
    encode(Format::Simple, &note(&token, b"{}"), &mut out).unwrap();
    let mut want = vec![0, 0, 32];
    want.extend_from_slice(&token);
    want.extend_from_slice(&[0, 2, b'{', b'}']);
    assert_eq!(out, want);
    let (d, used) = parse(&out).unwrap().unwrap();
    assert_eq!(used, out.len());
    assert_eq!((d.command, d.token, d.payload, d.identifier), (0, Some(&token[..]), Some(&b"{}"[..]), None));
}

#[test]
fn enhanced_command_layout() {
    let token = [0x11; 32];
    let mut out = Vec::new();
    encode(Format::Enhanced, &note(&token, b"hi"), &mut out).unwrap();
    assert_eq!(&out[..11], &[1, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 0, 32]);
    assert_eq!(&out[43..], &[0, 2, b'h', b'i']);
    let (d, used) = parse(&out).unwrap().unwrap();
    assert_eq!(used, out.len());
    assert_eq!((d.identifier, d.expiry, d.priority), (Some(0x0102_0304), Some(0x0a0b_0c0d), None));
}

#[test]
fn frame_command_has_every_item() {
    let token = [0x22; 32];
    let mut out = Vec::new();
    let n = Notification { priority: 5, ..note(&token, b"abc") };
    encode(Format::Frame, &n, &mut out).unwrap();
    assert_eq!(out[0], 2);
    let len = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
    assert_eq!(len, out.len() - 5);
    // item 1 token, 2 payload, 3 identifier, 4 expiry, 5 priority
    assert_eq!(&out[5..8], &[item::TOKEN, 0, 32]);
    let p = 8 + 32;
    assert_eq!(&out[p..p + 6], &[item::PAYLOAD, 0, 3, b'a', b'b', b'c']);
    assert_eq!(&out[p + 6..p + 13], &[item::IDENTIFIER, 0, 4, 1, 2, 3, 4]);
    assert_eq!(&out[p + 13..p + 20], &[item::EXPIRY, 0, 4, 0x0a, 0x0b, 0x0c, 0x0d]);
    assert_eq!(&out[p + 20..], &[item::PRIORITY, 0, 1, 5]);
    let (d, used) = parse(&out).unwrap().unwrap();
    assert_eq!(used, out.len());
    assert_eq!(d.token, Some(&token[..]));
    assert_eq!(d.payload, Some(&b"abc"[..]));
    assert_eq!((d.identifier, d.expiry, d.priority), (Some(0x0102_0304), Some(0x0a0b_0c0d), Some(5)));
    assert_eq!(check(&d), Ok(()));
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let big = vec![b'x'; MAX_PAYLOAD + 1];
    let mut out = Vec::new();
    assert_eq!(encode(Format::Frame, &note(&[1; 32], &big), &mut out), Err(CodecError::PayloadTooLarge(2049)));
    let long = vec![1u8; 70_000];
    assert_eq!(encode(Format::Simple, &note(&long, b"{}"), &mut out), Err(CodecError::TokenTooLong(70_000)));
    assert!(out.is_empty());
    assert_eq!(CodecError::PayloadTooLarge(1).status(), Status::InvalidPayloadSize);
}

#[test]
fn partial_input_waits_for_more() {
    for format in [Format::Simple, Format::Enhanced, Format::Frame] {
        let mut out = Vec::new();
        encode(format, &note(&[7; 32], b"{\"aps\":{}}"), &mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(parse(&out[..cut]), Ok(None), "{format:?} cut at {cut}");
        }
        // Two back to back: the first reports its own length.
        let mut two = out.clone();
        two.extend_from_slice(&out);
        let (_, used) = parse(&two).unwrap().unwrap();
        assert_eq!(used, out.len());
    }
}

fn frame(items: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, data) in items {
        body.push(*id);
        body.extend_from_slice(&(data.len() as u16).to_be_bytes());
        body.extend_from_slice(data);
    }
    let mut out = vec![2];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn malformed_frames_are_named() {
    assert_eq!(parse(&[9, 0, 0]), Err(CodecError::UnknownCommand(9)));
    assert_eq!(parse(&[2, 0, 1, 0, 0]), Err(CodecError::FrameTooLarge(65536)));
    let t = [1u8; 32];
    assert_eq!(parse(&frame(&[(1, &t), (1, &t)])), Err(CodecError::DuplicateItem(1)));
    assert_eq!(parse(&frame(&[(9, b"x")])), Err(CodecError::UnknownItem(9)));
    assert_eq!(parse(&frame(&[(3, b"abc")])), Err(CodecError::ItemLength { id: 3, len: 3, expected: 4 }));
    assert_eq!(parse(&frame(&[(4, b"a")])), Err(CodecError::ItemLength { id: 4, len: 1, expected: 4 }));
    assert_eq!(parse(&frame(&[(5, b"ab")])), Err(CodecError::ItemLength { id: 5, len: 2, expected: 1 }));
    // An item whose length runs past the frame.
    assert_eq!(parse(&[2, 0, 0, 0, 3, 1, 0, 9]), Err(CodecError::TruncatedItem));
    assert_eq!(parse(&[2, 0, 0, 0, 2, 1, 0]), Err(CodecError::TruncatedItem));
}

#[test]
fn apples_checks_in_order() {
    let t = [1u8; 32];
    let d = |items: &[(u8, &[u8])]| {
        let f = frame(items);
        let (d, _) = parse(&f).unwrap().unwrap();
        check(&d)
    };
    assert_eq!(d(&[(2, b"{}")]), Err(Status::MissingToken));
    assert_eq!(d(&[(1, b""), (2, b"{}")]), Err(Status::MissingToken));
    assert_eq!(d(&[(1, &t[..31]), (2, b"{}")]), Err(Status::InvalidTokenSize));
    assert_eq!(d(&[(1, &t)]), Err(Status::MissingPayload));
    assert_eq!(d(&[(1, &t), (2, b"")]), Err(Status::MissingPayload));
    assert_eq!(d(&[(1, &t), (2, &[b'x'; 2049])]), Err(Status::InvalidPayloadSize));
    assert_eq!(d(&[(1, &t), (2, b"{}"), (5, &[7])]), Err(Status::ProcessingError));
    assert_eq!(d(&[(1, &t), (2, b"{}"), (5, &[5])]), Ok(()));
}

#[test]
fn error_response_round_trip() {
    let e = ErrorResponse { status: Status::InvalidToken, identifier: 0xdead_beef };
    let b = e.encode();
    assert_eq!(b, [8, 8, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(ErrorResponse::parse(&b), Ok(Some(e)));
    for cut in 0..6 {
        assert_eq!(ErrorResponse::parse(&b[..cut]), Ok(None));
    }
    assert_eq!(ErrorResponse::parse(&[7, 8, 0, 0, 0, 1]), Err(CodecError::UnknownCommand(7)));
}

#[test]
fn every_status_maps() {
    use crate::domain::Reason;
    let table: &[(u8, Status, Reason, &str)] = &[
        (0, Status::NoError, Reason::Other("NoError".into()), "pending"),
        (1, Status::ProcessingError, Reason::InternalServerError, "pending"),
        (2, Status::MissingToken, Reason::MissingDeviceToken, "failed"),
        (3, Status::MissingTopic, Reason::MissingTopic, "failed"),
        (4, Status::MissingPayload, Reason::PayloadEmpty, "failed"),
        (5, Status::InvalidTokenSize, Reason::BadDeviceToken, "failed"),
        (6, Status::InvalidTopicSize, Reason::BadTopic, "failed"),
        (7, Status::InvalidPayloadSize, Reason::PayloadTooLarge, "failed"),
        (8, Status::InvalidToken, Reason::BadDeviceToken, "pruned"),
        (10, Status::Shutdown, Reason::Shutdown, "pending"),
        (128, Status::ProtocolError, Reason::Other("ProtocolError".into()), "failed"),
        (255, Status::Unknown, Reason::Other("Unknown".into()), "pending"),
        (42, Status::Other(42), Reason::Other("status 42".into()), "pending"),
    ];
    for (code, status, reason, state) in table {
        assert_eq!(Status::from_code(*code), *status);
        assert_eq!(status.code(), *code);
        assert_eq!(&status.reason(), reason);
        assert_eq!(status.outcome().state().as_str(), *state, "status {code}");
    }
    assert_eq!(Status::InvalidToken.outcome(), Outcome::Prune { reason: Reason::BadDeviceToken, since: None });
    assert!(matches!(Status::InvalidPayloadSize.outcome(), Outcome::Failed { status: 7, .. }));
    for code in 0..=255u8 {
        assert_eq!(Status::from_code(code).code(), code);
    }
}

#[test]
fn feedback_tuples_survive_any_read_boundary() {
    let mut wire = Vec::new();
    let tuples: Vec<FeedbackTuple> =
        (0..5u8).map(|i| FeedbackTuple { timestamp: 1_600_000_000 + i as u32, token: vec![i; 32] }).collect();
    for t in &tuples {
        encode_feedback(t.timestamp, &t.token, &mut wire).unwrap();
    }
    assert_eq!(wire.len(), 5 * 38);
    for chunk in 1..=wire.len() {
        let mut p = FeedbackParser::default();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            p.push(piece);
            while let Some(t) = p.next_tuple() {
                got.push(t);
            }
        }
        assert_eq!(got, tuples, "chunk {chunk}");
        assert_eq!(p.pending(), 0);
    }
    let mut p = FeedbackParser::default();
    p.push(&wire[..40]);
    assert!(p.next_tuple().is_some());
    assert_eq!(p.next_tuple(), None);
    assert_eq!(p.pending(), 2);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..20_000 {
        let len = rng.gen_range(0..64);
        let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Bias towards real commands so deeper paths run too.
        if let Some(b) = buf.first_mut() {
            *b %= 4;
        }
        if let Ok(Some((d, used))) = parse(&buf) {
            assert!(used <= buf.len());
            let _ = check(&d);
        }
        let _ = ErrorResponse::parse(&buf);
        let mut p = FeedbackParser::default();
        p.push(&buf);
        while p.next_tuple().is_some() {}
        assert!(p.pending() <= buf.len());
    }
    // Well-formed frames with random item bodies.
    for _ in 0..5_000 {
        let mut items = Vec::new();
        for _ in 0..rng.gen_range(0..6) {
            let len = rng.gen_range(0..40);
            items.push((rng.gen_range(0..7u8), (0..len).map(|_| rng.gen()).collect::<Vec<u8>>()));
        }
        let refs: Vec<(u8, &[u8])> = items.iter().map(|(i, d)| (*i, &d[..])).collect();
        if let Ok(Some((d, _))) = parse(&frame(&refs)) {
            let _ = check(&d);
        }
    }
}
