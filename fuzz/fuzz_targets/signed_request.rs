//! Signed phone requests: parsing under each action, the signing string (exactly one line
//! per part, so no field can smuggle a newline), and verification (never accepts a
//! signature it did not make; a signature it made verifies once fresh).
#![no_main]
use dingdong::codec::pairing::wire::parse_signed;
use dingdong::codec::pairing::{sign, verify, VerifyError};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else { return };
    let action = ["token", "unpair", "share-code", "reboot"][(sel % 4) as usize];
    let phone_id = 1 + (sel as i64 >> 2);
    let Ok(req) = parse_signed(phone_id, action, payload) else { return };
    let msg = req.signing_string();
    assert_eq!(msg.split('\n').count(), 6 + req.action.signed_args().len());
    let now = req.ts;
    let made = sign(&SECRET, &msg);
    if req.sig != made {
        assert_eq!(verify(Some(&SECRET), &msg, &req.sig, req.ts, now, false), Err(VerifyError::Unauthorized));
    }
    assert_eq!(verify(Some(&SECRET), &msg, &made, req.ts, now, false), Ok(()));
    assert_eq!(verify(Some(&SECRET), &msg, &made, req.ts, now, true), Err(VerifyError::Replayed));
    assert_eq!(verify(None, &msg, &made, req.ts, now, false), Err(VerifyError::Unauthorized));
    // What the reference phone encodes, the gateway parses back to the same request.
    assert_eq!(parse_signed(phone_id, action, req.encode().as_bytes()).unwrap(), req);
});
