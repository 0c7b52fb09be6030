//! A big doorbell's ring over HTTP/2, end to end in this process: real SQLite, the built-in
//! simulator on 127.0.0.1:0, the daemon's own intake path (the ringer records the press, the
//! outbox reads the phones while it sends the first ones). Every phone is reached once, the
//! timing stages come in order, and the next ring reuses the list it read.
#![cfg(feature = "sim")]

#[path = "util/mod.rs"]
mod util;

use dingdong::domain::{ButtonPress, Environment, RingTiming, Source};
use dingdong::net::apns::auth::JwtMinter;
use dingdong::net::apns::http2::{Credentials, Http2Client, Http2Settings};
use dingdong::service::outbox::{Outbox, OutboxSettings, RetryPolicy, Transport};
use dingdong::service::ringer::{IntakeStats, PressResult, Ringer};
use dingdong::store::import::ImportFormat;
use dingdong::store::recipients::EARLY;
use dingdong::store::{Store, StoreHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use util::*;

/// More than the early parts, so that the rest is read while they are sent.
const PHONES: u32 = EARLY[1] as u32 + 7_000;

fn client(sim: &dingdong::app::sim::Sim) -> Http2Client {
    let c = &sim.credentials;
    let addr = sim.http2_addr.expect("HTTP/2 listening");
    Http2Client::new(
        Credentials::Token(Arc::new(JwtMinter::from_p8_file(&c.key_file, &c.key_id, &c.team_id).unwrap())),
        Http2Settings {
            endpoint: Some((addr.ip().to_string(), addr.port())),
            ca_file: Some(c.ca_file.clone()),
            max_streams: 1000,
            max_connections: 4,
            request_timeout: Duration::from_secs(10),
            topic: TOPIC.into(),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_doorbell_is_sent_while_its_phones_are_read_each_phone_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sim = start_sim(d).await;
    let mut s = Store::open(&d.join("d.db")).unwrap();
    s.add_user("owner").unwrap();
    s.add_user("concierge").unwrap();
    s.add_doorbell("building", None, "owner").unwrap();
    s.share("building", "concierge").unwrap();
    let tokens: String = (0..PHONES).map(|i| token(i) + "\n").collect();
    s.import_phones(ImportFormat::Tokens { user: "owner" }, tokens.as_bytes(), Environment::Production).unwrap();
    // The concierge's phones: one the owner has too (it rings once), one of their own.
    s.add_phone("concierge", &token(5), Environment::Production, None, None).unwrap();
    s.add_phone("concierge", &token(PHONES), Environment::Production, None, None).unwrap();
    let store = StoreHandle::spawn(s);
    let outbox = Outbox::new(
        store.clone(),
        Transport::Http2(client(&sim)),
        None,
        OutboxSettings {
            topic: TOPIC.into(),
            environment: Environment::Production,
            sound: "default".into(),
            retry: RetryPolicy::default(),
            timezone: jiff::tz::TimeZone::UTC,
        },
    );
    let ringer = Ringer::new(store, Duration::from_secs(300), Duration::ZERO, Arc::new(IntakeStats::default()));
    let reached = PHONES as i64 + 1;

    for round in 0..2 {
        let at = dingdong::domain::now_ms() + round;
        let press = ButtonPress { source: Source::Native, key: "building".into(), at: Some(at) };
        let PressResult::Ring(job) = ringer.press(press, "dingdong/test/button/building/press", at).await.unwrap()
        else {
            panic!("no ring")
        };
        // The first ring is recorded before its phones are read; the second finds them kept.
        assert_eq!(job.unread, round == 0, "round {round}");
        let report = outbox.deliver(job, RingTiming::received_at(at * 1000), CancellationToken::new()).await.unwrap();
        let sum = &report.summary;
        assert_eq!((sum.phones, sum.delivered, sum.pending), (reached, reached, 0), "round {round}: {sum:?}");
        let t = report.timing_us;
        let (first, read, last) = (t.first_request.unwrap(), t.recipients.unwrap(), t.last_answer.unwrap());
        assert!(first <= last && read <= last, "round {round}: {t:?}");
        if round == 0 {
            assert!(first < read, "the first requests went out before every phone was read: {t:?}");
        }
    }
    // Each phone got each ring once.
    let counts = sim.state.counts();
    assert_eq!(counts.len(), reached as usize);
    assert!(counts.values().all(|&n| n == 2), "every phone twice in two rings");
}
