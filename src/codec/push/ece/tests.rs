use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// RFC 8291 Appendix A ("Intermediate Values for Encryption"), the example of its §5.
mod rfc8291 {
    pub const PLAINTEXT: &str = "V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24";
    pub const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    pub const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    pub const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    pub const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    pub const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    pub const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    pub const ECDH_SECRET: &str = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs";
    pub const PRK_KEY: &str = "Snr3JMxaHVDXHWJn5wdC52WjpCtd2EIEGBykDcZW32k";
    pub const KEY_INFO: &str = concat!(
        "V2ViUHVzaDogaW5mbwAEJXGyvs3942BVGq8e0PTNNmwR",
        "zr5VX4m8t7GGpTM5FzFo7OLr4BhZe9MEebhuPI-OztV3",
        "ylkYfpJGmQ22ggCLDgT-M_SrDepxkU21WCP3O1SUj0Ew",
        "bZIHMtu5pZpTKGSCIA5Zent7wmC6HCJ5mFgJkuk5cwAv",
        "MBKiiujwa7t45ewP"
    );
    pub const IKM: &str = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg";
    pub const PRK: &str = "09_eUZGrsvxChDCGRCdkLiDXrReGOEVeSCdCcPBSJSc";
    pub const CEK_INFO: &str = "Q29udGVudC1FbmNvZGluZzogYWVzMTI4Z2NtAA";
    pub const CEK: &str = "oIhVW04MRdy2XN9CiKLxTg";
    pub const NONCE_INFO: &str = "Q29udGVudC1FbmNvZGluZzogbm9uY2UA";
    pub const NONCE: &str = "4h_95klXJ5E_qnoN";
    pub const HEADER: &str = concat!(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z",
        "9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
        "mlMoZIIgDll6e3vCYLocInmYWAmS6Tlz",
        "AC8wEqKK6PBru3jl7A8"
    );
    pub const PADDED: &str = "V2hlbiBJIGdyb3cgdXAsIEkgd2FudCB0byBiZSBhIHdhdGVybWVsb24C";
    pub const CIPHERTEXT: &str = "8pfeW0KbunFT06SuDKoJH9Ql87S1QUrdirN6GcG7sFz1y1sqLgVi1VhjVkHsUoEsbI_0LpXMuGvnzQ";
    /// §5's message body.
    pub const BODY: &str = concat!(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
        "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
        "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
    );
}

struct Example {
    as_secret: SecretKey,
    ua_secret: SecretKey,
    ua_public: PublicKey,
    salt: [u8; 16],
    auth: [u8; 16],
}

fn example() -> Example {
    use rfc8291::*;
    let as_secret = SecretKey::from_slice(&b64(AS_PRIVATE)).unwrap();
    let ua_secret = SecretKey::from_slice(&b64(UA_PRIVATE)).unwrap();
    let ua_public = parse_public_key(&b64(UA_PUBLIC)).unwrap();
    Example {
        as_secret,
        ua_secret,
        ua_public,
        salt: b64(SALT).try_into().unwrap(),
        auth: b64(AUTH).try_into().unwrap(),
    }
}

#[test]
fn rfc8291_appendix_a_every_intermediate_value() {
    use rfc8291::*;
    let ex = example();
    // The key pairs are consistent with the public keys the RFC prints.
    assert_eq!(public_key_bytes(&ex.as_secret.public_key()).to_vec(), b64(AS_PUBLIC));
    assert_eq!(public_key_bytes(&ex.ua_public).to_vec(), b64(UA_PUBLIC));
    assert_eq!(public_key_bytes(&ex.ua_secret.public_key()).to_vec(), b64(UA_PUBLIC));

    // ECDH from both sides.
    let secret = ecdh(&ex.as_secret, &ex.ua_public);
    assert_eq!(secret.to_vec(), b64(ECDH_SECRET));
    let as_public = parse_public_key(&b64(AS_PUBLIC)).unwrap();
    assert_eq!(ecdh(&ex.ua_secret, &as_public), secret);

    // key_info is "WebPush: info" 0x00 ua_public as_public, the components combine() expands.
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(&b64(UA_PUBLIC));
    key_info.extend_from_slice(&b64(AS_PUBLIC));
    assert_eq!(key_info, b64(KEY_INFO));

    let ua: [u8; 65] = b64(UA_PUBLIC).try_into().unwrap();
    let asp: [u8; 65] = b64(AS_PUBLIC).try_into().unwrap();
    let (prk_key, ikm) = combine(&ex.auth, &secret, &ua, &asp);
    assert_eq!(prk_key.to_vec(), b64(PRK_KEY));
    assert_eq!(ikm.to_vec(), b64(IKM));

    assert_eq!(b"Content-Encoding: aes128gcm\0".to_vec(), b64(CEK_INFO));
    assert_eq!(b"Content-Encoding: nonce\0".to_vec(), b64(NONCE_INFO));
    let (prk, keys) = ContentKeys::derive_with_prk(&ex.salt, &ikm);
    assert_eq!(prk.to_vec(), b64(PRK));
    assert_eq!(keys.cek.to_vec(), b64(CEK));
    assert_eq!(keys.nonce.to_vec(), b64(NONCE));
}

#[test]
fn rfc8291_appendix_a_encrypts_to_the_exact_body() {
    use rfc8291::*;
    let ex = example();
    let plaintext = b64(PLAINTEXT);
    assert_eq!(plaintext, b"When I grow up, I want to be a watermelon");
    let mut padded = plaintext.clone();
    padded.push(0x02);
    assert_eq!(padded, b64(PADDED));

    let body = encrypt_with(&plaintext, &ex.ua_public, &ex.auth, &ex.as_secret, ex.salt).unwrap();
    assert_eq!(body.len(), 144, "86 header + 41 plaintext + 1 delimiter + 16 tag");
    assert_eq!(body[..HEADER_LEN].to_vec(), b64(HEADER));
    assert_eq!(body[HEADER_LEN..].to_vec(), b64(CIPHERTEXT));
    assert_eq!(URL_SAFE_NO_PAD.encode(&body), BODY);
}

#[test]
fn rfc8291_example_body_decrypts_with_the_receiver_keys() {
    use rfc8291::*;
    let ex = example();
    let plain = decrypt(&b64(BODY), &ex.ua_secret, &ex.auth).unwrap();
    assert_eq!(plain, b"When I grow up, I want to be a watermelon");
    let r = Receiver::from_parts(&b64(UA_PRIVATE), ex.auth).unwrap();
    assert_eq!(r.public_bytes().to_vec(), b64(UA_PUBLIC));
    assert_eq!(r.decrypt(&b64(BODY)).unwrap(), plain);
}

#[test]
fn round_trip_with_fresh_randomness_and_every_body_differs() {
    let mut rng = StdRng::seed_from_u64(7);
    let r = Receiver::generate(&mut rng);
    let msg = br#"{"doorbell":"front","ring":"r1"}"#;
    let a = encrypt(msg, &r.public_key(), r.auth(), &mut rng).unwrap();
    let b = encrypt(msg, &r.public_key(), r.auth(), &mut rng).unwrap();
    assert_ne!(a, b, "a new salt and ephemeral key per message");
    assert_eq!(r.decrypt(&a).unwrap(), msg);
    assert_eq!(r.decrypt(&b).unwrap(), msg);
    assert_eq!(r.decrypt(&encrypt(b"", &r.public_key(), r.auth(), &mut rng).unwrap()).unwrap(), b"");
}

#[test]
fn the_largest_payload_fills_exactly_4096_bytes_and_one_more_is_refused() {
    let mut rng = StdRng::seed_from_u64(8);
    let r = Receiver::generate(&mut rng);
    let big = vec![b'x'; MAX_PLAINTEXT];
    assert_eq!(MAX_PLAINTEXT, 3993);
    let body = encrypt(&big, &r.public_key(), r.auth(), &mut rng).unwrap();
    assert_eq!(body.len(), 4096);
    assert_eq!(r.decrypt(&body).unwrap(), big);
    let err = encrypt(&[0u8; MAX_PLAINTEXT + 1], &r.public_key(), r.auth(), &mut rng).unwrap_err();
    assert_eq!(err, EceError::PlaintextTooLarge(3994));
}

#[test]
fn wrong_keys_or_tampering_fail_to_decrypt() {
    let mut rng = StdRng::seed_from_u64(9);
    let r = Receiver::generate(&mut rng);
    let other = Receiver::generate(&mut rng);
    let body = encrypt(b"hello", &r.public_key(), r.auth(), &mut rng).unwrap();
    assert_eq!(other.decrypt(&body), Err(EceError::Decrypt));
    let wrong_auth = Receiver::from_parts(&r.secret_bytes(), [0u8; 16]).unwrap();
    assert_eq!(wrong_auth.decrypt(&body), Err(EceError::Decrypt));
    let mut flipped = body.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(r.decrypt(&flipped), Err(EceError::Decrypt));
    let mut salted = body.clone();
    salted[0] ^= 1;
    assert_eq!(r.decrypt(&salted), Err(EceError::Decrypt));
}

#[test]
fn malformed_bodies_get_a_precise_error() {
    let ex = example();
    let body = b64(rfc8291::BODY);
    let dec = |b: &[u8]| decrypt(b, &ex.ua_secret, &ex.auth);
    assert_eq!(dec(&[]), Err(EceError::Truncated(0)));
    assert_eq!(dec(&body[..20]), Err(EceError::Truncated(20)));
    assert_eq!(dec(&body[..HEADER_LEN]), Err(EceError::Truncated(86)));
    assert_eq!(dec(&body[..HEADER_LEN + 16]), Err(EceError::Truncated(102)));
    // A body cut inside the ciphertext fails authentication.
    assert_eq!(dec(&body[..body.len() - 1]), Err(EceError::Decrypt));

    let mut rs0 = body.clone();
    rs0[16..20].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(dec(&rs0), Err(EceError::RecordSize(0)));
    let mut rs_small = body.clone();
    rs_small[16..20].copy_from_slice(&40u32.to_be_bytes());
    assert_eq!(dec(&rs_small), Err(EceError::MultipleRecords));

    let mut idlen = body.clone();
    idlen[20] = 33;
    assert_eq!(dec(&idlen), Err(EceError::KeyIdLength(33)));
    let mut compressed = body.clone();
    compressed[21] = 0x02;
    assert_eq!(dec(&compressed), Err(EceError::PublicKeyLength(65)));
    let mut off_curve = body.clone();
    off_curve[22] ^= 0x55;
    assert_eq!(dec(&off_curve), Err(EceError::PublicKeyNotOnCurve));
}

#[test]
fn a_record_without_the_last_record_delimiter_is_refused() {
    // Encrypt by hand with delimiter 0x01 (a non-final record) and with no delimiter at all.
    let ex = example();
    for tail in [&[0x01u8][..], &[0x00, 0x00][..]] {
        let ua = public_key_bytes(&ex.ua_public);
        let asp = public_key_bytes(&ex.as_secret.public_key());
        let (_, ikm) = combine(&ex.auth, &ecdh(&ex.as_secret, &ex.ua_public), &ua, &asp);
        let keys = ContentKeys::derive(&ex.salt, &ikm);
        let mut body = b64(rfc8291::HEADER);
        body.extend_from_slice(b"hi");
        body.extend_from_slice(tail);
        let tag =
            keys.cipher().encrypt_in_place_detached(Nonce::from_slice(&keys.nonce), b"", &mut body[86..]).unwrap();
        body.extend_from_slice(&tag);
        assert_eq!(decrypt(&body, &ex.ua_secret, &ex.auth), Err(EceError::Padding));
    }
}

#[test]
fn public_keys_must_be_65_uncompressed_bytes_on_the_curve() {
    let good = b64(rfc8291::UA_PUBLIC);
    assert!(parse_public_key(&good).is_ok());
    assert_eq!(parse_public_key(&good[..64]).unwrap_err(), EceError::PublicKeyLength(64));
    assert_eq!(parse_public_key(&[]).unwrap_err(), EceError::PublicKeyLength(0));
    let compressed = parse_public_key(&good).unwrap().to_encoded_point(true);
    assert_eq!(parse_public_key(compressed.as_bytes()).unwrap_err(), EceError::PublicKeyLength(33));
    let mut off = good.clone();
    off[64] ^= 1;
    assert_eq!(parse_public_key(&off).unwrap_err(), EceError::PublicKeyNotOnCurve);
    assert_eq!(Receiver::from_parts(&[0u8; 32], [0; 16]).unwrap_err(), EceError::PrivateKey);
    assert_eq!(Receiver::from_parts(&[1u8; 31], [0; 16]).unwrap_err(), EceError::PrivateKey);
    let err = EceError::PublicKeyLength(64).to_string();
    assert!(!err.contains('\n'));
}

#[test]
fn debug_output_holds_no_secret() {
    let ex = example();
    let r = Receiver::from_parts(&ex.ua_secret.to_bytes(), ex.auth).unwrap();
    let dbg = format!("{r:?}");
    assert!(dbg.contains("redacted"));
    let secret_hex: String = ex.ua_secret.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&secret_hex[..8]));
    assert_eq!(format!("{:?}", ContentKeys::derive(&ex.salt, &[0u8; 32])), "ContentKeys(<redacted>)");
}
