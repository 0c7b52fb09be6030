//! The store's side of pairing with judgements made by hand: what is written, what is
//! counted, what is revoked. Whole exchanges (with SPAKE2) are `service::pairing`'s tests and
//! `tests/pairing.rs`.

use super::*;
use crate::codec::pairing::pake::budget::WRONG_GUESSES_PER_DAY;
use crate::codec::pairing::{sign, Limits};

const T0: i64 = 1_700_000_000_000;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("d.db")).unwrap();
    (dir, s)
}

fn tok(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn household(s: &mut Store) {
    s.add_user("alice").unwrap();
    s.add_user("bob").unwrap();
    s.add_doorbell("front", Some("Front door"), "alice").unwrap();
    s.add_doorbell("back", None, "bob").unwrap();
}

fn apns(token: &str) -> NewPhone {
    NewPhone {
        platform: Platform::Apns,
        address: token.to_string(),
        environment: Environment::Production,
        topic: Some("com.example.doorbell".into()),
        subscription: None,
        name: Some("phone".into()),
    }
}

fn secret(n: u8) -> Zeroizing<[u8; 32]> {
    Zeroizing::new([n; 32])
}

/// Finishes a pairing of `phone` for `window` as if the phone proved its code.
fn pair(s: &mut Store, window: i64, phone: NewPhone, now: i64) -> Finished<()> {
    s.pair_finish(&[window], now, |_, _| Judgement::Pair { window, phone, secret: secret(1), keep: () }).unwrap()
}

fn paired(f: Finished<()>) -> PairedPhone {
    match f {
        Finished::Paired(p, ()) => p,
        _ => panic!("not paired"),
    }
}

fn is_revoked(f: &Finished<()>) -> bool {
    matches!(f, Finished::Revoked(()))
}

fn window_row(s: &Store, id: i64) -> (String, Option<String>, u32) {
    s.conn()
        .query_row("SELECT state, code, attempts FROM pair_windows WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap()
}

fn offered(s: &mut Store, now: i64) -> Vec<i64> {
    match s.pair_offer(Limits::default().pair_requests, now).unwrap() {
        Offer::Windows(w) => w.iter().map(|w| w.id).collect(),
        Offer::RateLimited => panic!("rate limited"),
    }
}

#[test]
fn a_window_keeps_its_eight_digit_code_while_open_and_drops_it_when_used() {
    let (_d, mut s) = store();
    household(&mut s);
    let w = s.open_pair_window("carol", Some("front"), 5, Opener::Cli, T0).unwrap();
    assert_eq!((w.code.reveal().len(), w.expires_at), (8, T0 + 300_000));
    let Offer::Windows(ws) = s.pair_offer(Limits::default().pair_requests, T0 + 1).unwrap() else { panic!() };
    assert_eq!((ws.len(), ws[0].code.reveal()), (1, w.code.reveal()));
    let p = paired(pair(&mut s, w.window_id, apns(&tok(1)), T0 + 2));
    assert_eq!((p.user.as_str(), p.doorbells.clone()), ("carol", vec![("front".into(), "Front door".into())]));
    assert!(s.has_secret(p.phone_id).unwrap());
    assert_eq!(window_row(&s, w.window_id), ("used".into(), None, 0));
    assert_eq!(s.recipients("front").unwrap().len(), 1);
    // Used once: not offered again, and a second finish for it is refused.
    assert!(offered(&mut s, T0 + 3).is_empty());
    assert!(is_revoked(&pair(&mut s, w.window_id, apns(&tok(2)), T0 + 4)));
    assert_eq!(s.counts().unwrap().2, 1);
}

#[test]
fn at_most_four_windows_are_open_at_once_and_expired_ones_lose_their_code() {
    let (_d, mut s) = store();
    let ids: Vec<i64> = (0..MAX_OPEN_WINDOWS)
        .map(|i| s.open_pair_window(&format!("u{i}"), None, 1, Opener::Cli, T0).unwrap().window_id)
        .collect();
    let e = s.open_pair_window("u9", None, 5, Opener::Cli, T0).err().unwrap();
    assert!(matches!(e, StoreError::WindowsFull(4)), "{e}");
    assert!(e.to_string().contains("4 pairing windows are open already"));
    assert!(s.open_button_window("household", 5, Limits::default().button_windows, T0).unwrap().is_err());
    assert_eq!(offered(&mut s, T0 + 1), ids);
    // A minute later they have expired: their codes are gone and new windows open.
    assert!(offered(&mut s, T0 + 60_000).is_empty());
    assert_eq!(window_row(&s, ids[0]), ("expired".into(), None, 0));
    assert!(s.open_pair_window("u9", None, 5, Opener::Cli, T0 + 60_000).is_ok());
}

#[test]
fn wrong_guesses_count_per_window_and_in_the_budget_and_lock_at_five() {
    let (_d, mut s) = store();
    let w = s.open_pair_window("alice", None, 60, Opener::Cli, T0).unwrap();
    for i in 0..WINDOW_ATTEMPTS {
        let f = s
            .pair_finish(&[w.window_id], T0 + i as i64, |open, wrong| {
                assert_eq!((open.len(), open[0].attempts, wrong), (1, i, i));
                let lock = if i + 1 == WINDOW_ATTEMPTS { vec![w.window_id] } else { vec![] };
                Judgement::Wrong { wrong: vec![w.window_id], lock, keep: () }
            })
            .unwrap();
        assert!(matches!(f, Finished::Counted(())));
    }
    assert_eq!(window_row(&s, w.window_id), ("locked".into(), None, WINDOW_ATTEMPTS));
    // Locked: nothing left to judge, even with the right code.
    s.pair_finish(&[w.window_id], T0 + 10, |open, wrong| {
        assert_eq!((open.len(), wrong), (0, WINDOW_ATTEMPTS));
        Judgement::Refuse(())
    })
    .unwrap();
    assert!(is_revoked(&pair(&mut s, w.window_id, apns(&tok(1)), T0 + 11)));
    assert_eq!(s.counts().unwrap().2, 0);
}

#[test]
fn the_budget_remembers_a_day_of_wrong_guesses() {
    let (_d, mut s) = store();
    let mut now = T0;
    let mut counted = 0;
    // Spread over fresh windows, as an attacker opening button windows would.
    while counted < WRONG_GUESSES_PER_DAY {
        let w = s.open_pair_window("u", None, 1, Opener::Cli, now).unwrap().window_id;
        for _ in 0..WINDOW_ATTEMPTS - 1 {
            s.pair_finish(&[w], now, |_, _| Judgement::Wrong { wrong: vec![w], lock: vec![], keep: () }).unwrap();
            counted += 1;
        }
        now += 60_001;
    }
    let wrong_at = |s: &mut Store, t: i64| s.pair_finish(&[], t, |_, wrong| Judgement::Refuse(wrong)).unwrap();
    let last = now - 60_001;
    assert!(matches!(wrong_at(&mut s, last), Finished::Refused(n) if n == WRONG_GUESSES_PER_DAY));
    // The first hour's guesses leave the budget exactly a day after they were made.
    assert!(matches!(wrong_at(&mut s, T0 + DAY_MS - 1), Finished::Refused(n) if n == WRONG_GUESSES_PER_DAY));
    assert!(
        matches!(wrong_at(&mut s, T0 + DAY_MS), Finished::Refused(n) if n == WRONG_GUESSES_PER_DAY - (WINDOW_ATTEMPTS - 1))
    );
    // Other rate events are pruned after an hour; the budget's are not.
    s.pair_offer(Limits::default().pair_requests, T0 + DAY_MS - 10).unwrap();
    let kept: u32 =
        s.conn().query_row("SELECT COUNT(*) FROM rate_events WHERE scope = 'guess'", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, WRONG_GUESSES_PER_DAY);
}

#[test]
fn unshare_and_user_rm_revoke_open_windows_and_nothing_is_restored() {
    let (_d, mut s) = store();
    household(&mut s);
    // pair open --user carol --share front, then unshare front carol.
    let w = s.open_pair_window("carol", Some("front"), 5, Opener::Cli, T0).unwrap();
    s.unshare("front", "carol").unwrap();
    assert_eq!(window_row(&s, w.window_id), ("revoked".into(), None, 0));
    assert!(offered(&mut s, T0 + 1).is_empty());
    assert!(is_revoked(&pair(&mut s, w.window_id, apns(&tok(1)), T0 + 2)));
    assert!(s.recipients("front").unwrap().is_empty(), "carol's share is not restored");
    assert_eq!(s.list_doorbells().unwrap()[1].shared_with, Vec::<String>::new());
    // A window for a user, then user rm.
    let w = s.open_pair_window("dave", None, 5, Opener::Cli, T0).unwrap();
    s.remove_user("dave").unwrap();
    assert_eq!(window_row(&s, w.window_id).0, "revoked");
    assert!(is_revoked(&pair(&mut s, w.window_id, apns(&tok(2)), T0 + 3)));
    assert!(s.list_users().unwrap().iter().all(|u| u.name != "dave"), "dave is not recreated");
    // A window sharing a doorbell that is then removed.
    let w = s.open_pair_window("erin", Some("back"), 5, Opener::Cli, T0).unwrap();
    s.remove_doorbell("back").unwrap();
    assert_eq!(window_row(&s, w.window_id).0, "revoked");
    // Only the windows of that user and that share go.
    let kept = s.open_pair_window("frank", Some("front"), 5, Opener::Cli, T0).unwrap();
    let gone = s.open_pair_window("grace", Some("front"), 5, Opener::Cli, T0).unwrap();
    s.unshare("front", "grace").unwrap();
    assert_eq!((window_row(&s, kept.window_id).0, window_row(&s, gone.window_id).0), ("open".into(), "revoked".into()));
    assert_eq!(s.counts().unwrap().2, 0);
}

#[test]
fn a_grant_checked_at_redemption_refuses_a_share_gone_without_the_trigger() {
    // As if another version removed the share without revoking: the check at redemption holds.
    let (_d, mut s) = store();
    household(&mut s);
    let w = s.open_pair_window("carol", Some("front"), 5, Opener::Cli, T0).unwrap();
    s.conn().execute_batch("DROP TRIGGER pair_windows_share_removed").unwrap();
    s.unshare("front", "carol").unwrap();
    assert_eq!(window_row(&s, w.window_id).0, "open");
    assert!(is_revoked(&pair(&mut s, w.window_id, apns(&tok(1)), T0 + 1)));
    assert_eq!(window_row(&s, w.window_id), ("revoked".into(), None, 0));
    assert!(s.recipients("front").unwrap().is_empty());
}

#[test]
fn a_token_of_another_user_is_a_conflict_and_the_same_user_keeps_its_phone_id() {
    let (_d, mut s) = store();
    household(&mut s);
    s.add_phone("bob", &tok(7), Environment::Production, None, None).unwrap();
    let w = s.open_pair_window("alice", None, 5, Opener::Cli, T0).unwrap();
    assert!(matches!(pair(&mut s, w.window_id, apns(&tok(7)), T0), Finished::Conflict(())));
    assert_eq!(window_row(&s, w.window_id).0, "open", "the window stays for a phone with its own token");
    let first = paired(pair(&mut s, w.window_id, apns(&tok(8)), T0));
    let w = s.open_pair_window("alice", None, 5, Opener::Cli, T0).unwrap();
    let again = paired(pair(&mut s, w.window_id, apns(&tok(8)), T0 + 1));
    assert_eq!(again.phone_id, first.phone_id, "pairing again keeps the phone id");
    assert_eq!(s.counts().unwrap().2, 2);
}

#[test]
fn fcm_and_web_push_phones_are_kept_with_their_platform_and_rung() {
    let (_d, mut s) = store();
    household(&mut s);
    let fcm = NewPhone { platform: Platform::Fcm, address: "fcm-token-0123456789".into(), topic: None, ..apns("") };
    let sub = r#"{"endpoint":"https://push.example.net/x","keys":{"p256dh":"BP","auth":"AA"}}"#;
    let web = NewPhone {
        platform: Platform::Webpush,
        address: "https://push.example.net/x".into(),
        topic: None,
        subscription: Some(sub.into()),
        ..apns("")
    };
    for phone in [fcm, web, apns(&tok(3))] {
        let w = s.open_pair_window("alice", None, 5, Opener::Cli, T0).unwrap();
        paired(pair(&mut s, w.window_id, phone, T0));
    }
    let list = s.list_phones().unwrap();
    let platforms: Vec<&str> = list.iter().map(|p| p.platform.as_str()).collect();
    assert_eq!(platforms, ["fcm", "webpush", "apns"]);
    let stored: String =
        s.conn().query_row("SELECT subscription FROM phones WHERE platform = 'webpush'", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, sub);
    let r = s.recipients("front").unwrap();
    let reached: Vec<(Platform, String)> = r.iter().map(|p| (p.address.platform(), p.address.key())).collect();
    assert_eq!(
        reached,
        [
            (Platform::Fcm, "fcm-token-0123456789".to_string()),
            (Platform::Webpush, "https://push.example.net/x".to_string()),
            (Platform::Apns, tok(3)),
        ]
    );
    let crate::domain::Address::WebPush(keys) = &r[1].address else { panic!("{:?}", r[1]) };
    assert_eq!((keys.p256dh.as_str(), keys.auth.as_str()), ("BP", "AA"), "read from the stored subscription");
}

#[test]
fn the_button_counts_a_locked_window_until_it_expires() {
    let (_d, mut s) = store();
    let limit = Limits::default().button_windows;
    let w = s.open_button_window("household", 5, limit, T0).unwrap().unwrap();
    assert_eq!((w.user.as_str(), w.code.reveal().len()), ("household", 8));
    assert!(s.open_button_window("household", 5, limit, T0 + 1).unwrap().is_err());
    // Five wrong guesses lock it; pressing again still opens nothing until it would expire.
    s.pair_finish(&[w.window_id], T0 + 2, |_, _| Judgement::Wrong {
        wrong: vec![w.window_id],
        lock: vec![w.window_id],
        keep: (),
    })
    .unwrap();
    assert_eq!(window_row(&s, w.window_id).0, "locked");
    assert!(s.open_button_window("household", 5, limit, T0 + 3).unwrap().is_err(), "locked still counts");
    assert!(s.open_button_window("household", 5, limit, T0 + 300_000).unwrap().is_ok());
    let mut t = T0 + 300_000;
    for _ in 2..limit.limit {
        t += 300_000;
        assert!(s.open_button_window("household", 5, limit, t).unwrap().is_ok());
    }
    t += 300_000;
    assert!(s.open_button_window("household", 5, limit, t).unwrap().is_err(), "hourly limit");
}

fn call<'a>(phone: i64, msg: &'a str, sig: &'a [u8], ts: i64, nonce: &'a str, a: &'a PhoneAction) -> PhoneCall<'a> {
    PhoneCall { phone_id: phone, message: msg, sig, ts, nonce, action: a }
}

/// Signs `action` for `phone` with `key` and runs it.
fn signed(
    s: &mut Store,
    phone: i64,
    key: &[u8],
    action: PhoneAction,
    ts: i64,
    nonce: &str,
    now: i64,
) -> std::result::Result<PhoneDone, PhoneDenied> {
    let msg = format!("{phone}\n{nonce}\n{ts}");
    let sig = sign(key, &msg);
    s.phone_request(&call(phone, &msg, &sig, ts, nonce, &action), Limits::default().phone_requests, now).unwrap()
}

fn pair_with(s: &mut Store, user: &str, token: &str, key: u8) -> i64 {
    let w = s.open_pair_window(user, None, 5, Opener::Cli, T0).unwrap();
    let id = paired(pair(s, w.window_id, apns(token), T0)).phone_id;
    s.conn().execute("UPDATE phone_secrets SET secret = ?2 WHERE phone_id = ?1", params![id, &[key; 32][..]]).unwrap();
    id
}

#[test]
fn signed_requests_verify_then_act_and_refusals_change_nothing() {
    let (_d, mut s) = store();
    household(&mut s);
    let a = pair_with(&mut s, "alice", &tok(1), 0xa);
    let b = pair_with(&mut s, "bob", &tok(2), 0xb);
    let now = T0 + 10_000;
    let replace = |t: &str| PhoneAction::ReplaceToken { token: t.into(), environment: Environment::Sandbox };
    assert!(matches!(signed(&mut s, a, &[0xa; 32], replace(&tok(3)), now, "n-0001", now), Ok(PhoneDone::Token { .. })));
    assert_eq!(signed(&mut s, a, &[0xa; 32], replace(&tok(4)), now, "n-0001", now).err(), Some(PhoneDenied::Replayed));
    let stale = now - 301_000;
    assert_eq!(signed(&mut s, a, &[0xa; 32], replace(&tok(4)), stale, "n-0002", now).err(), Some(PhoneDenied::Stale));
    assert_eq!(
        signed(&mut s, a, &[0xb; 32], replace(&tok(4)), now, "n-0003", now).err(),
        Some(PhoneDenied::Unauthorized)
    );
    assert_eq!(
        signed(&mut s, 999, &[0xa; 32], PhoneAction::Unpair, now, "n-0004", now).err(),
        Some(PhoneDenied::Unauthorized)
    );
    let taken = signed(&mut s, a, &[0xa; 32], replace(&tok(2)), now, "n-0005", now).err();
    assert_eq!(taken, Some(PhoneDenied::Conflict("token: registered to another phone")));
    assert_eq!(s.recipients("back").unwrap()[0].address.key(), tok(2));
    assert_eq!(s.recipients("front").unwrap()[0].address.key(), tok(3));
    assert!(matches!(signed(&mut s, b, &[0xb; 32], PhoneAction::Unpair, now, "n-0006", now), Ok(PhoneDone::Unpaired)));
    assert!(!s.has_secret(b).unwrap());
}

#[test]
fn share_codes_for_new_users_of_owned_doorbells_carry_the_phone_secret_to_seal_with() {
    let (_d, mut s) = store();
    household(&mut s);
    let a = pair_with(&mut s, "alice", &tok(1), 0xa);
    let share = |u: &str, d: &str| PhoneAction::ShareCode { user: u.into(), doorbell: d.into(), minutes: 10 };
    let r = signed(&mut s, a, &[0xa; 32], share("guest", "back"), T0, "n-1001", T0);
    assert_eq!(r.err(), Some(PhoneDenied::Forbidden("doorbell: not one this phone's user owns")));
    let r = signed(&mut s, a, &[0xa; 32], share("bob", "front"), T0, "n-1002", T0);
    assert!(matches!(r, Err(PhoneDenied::Conflict(_))), "an existing user's phones are not alice's to add to");
    let Ok(PhoneDone::ShareCode { opened, secret }) =
        signed(&mut s, a, &[0xa; 32], share("guest", "front"), T0, "n-1003", T0)
    else {
        panic!()
    };
    assert_eq!((opened.expires_at, &secret[..]), (T0 + 600_000, &[0xa; 32][..]));
    // The owner's phone unshares nothing, but the operator does: the guest's window dies.
    s.unshare("front", "guest").unwrap();
    assert_eq!(window_row(&s, opened.window_id).0, "revoked");
    s.remove_user("guest").unwrap();
    assert!(is_revoked(&pair(&mut s, opened.window_id, apns(&tok(9)), T0 + 5)));
    assert!(s.list_users().unwrap().iter().all(|u| u.name != "guest"), "guest is not recreated");
    // Three more windows fill the table: the next share code is refused, nothing written.
    for u in ["x1", "x2", "x3", "x4"] {
        s.open_pair_window(u, None, 5, Opener::Cli, T0).unwrap();
    }
    let r = signed(&mut s, a, &[0xa; 32], share("late", "front"), T0, "n-1004", T0);
    assert_eq!(r.err(), Some(PhoneDenied::WindowsFull));
    assert!(s.list_users().unwrap().iter().all(|u| u.name != "late"));
}

#[test]
fn an_fcm_phone_cannot_turn_into_an_apns_token_and_rates_count_authentic_requests_only() {
    let (_d, mut s) = store();
    household(&mut s);
    let w = s.open_pair_window("alice", None, 5, Opener::Cli, T0).unwrap();
    let fcm = NewPhone { platform: Platform::Fcm, address: "fcm-token-0123456789".into(), ..apns("") };
    let f = paired(pair(&mut s, w.window_id, fcm, T0)).phone_id;
    let key = [1u8; 32];
    let replace = PhoneAction::ReplaceToken { token: tok(5), environment: Environment::Production };
    assert!(matches!(signed(&mut s, f, &key, replace, T0, "n-2000", T0), Err(PhoneDenied::Forbidden(_))));
    for i in 0..Limits::default().phone_requests.limit {
        let r = signed(&mut s, f, &[9; 32], PhoneAction::Unpair, T0, &format!("n-3{i:03}"), T0);
        assert_eq!(r.err(), Some(PhoneDenied::Unauthorized));
    }
    let r = signed(&mut s, f, &key, PhoneAction::Unpair, T0, "n-4000", T0);
    assert!(matches!(r, Ok(PhoneDone::Unpaired)), "forgeries did not use up the phone's rate");
}
