//! The lane's transitions one by one, with plain values.

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn queue(n: usize) -> Queue {
    Queue::new((0..n).collect())
}

/// A token-auth lane with `limit` streams, connected on a fresh connection.
fn connected(q: &Queue, limit: usize) -> Lane {
    let mut lane = Lane::new(q.len(), true, limit, TIMEOUT);
    assert_eq!(lane.next(q), Step::Bearer, "the provider token is looked up first");
    lane.on_bearer(true);
    assert_eq!(lane.next(q), Step::Connect, "then a connection");
    lane.on_connected(false);
    lane
}

/// Steps until the lane waits or finishes: the phones it sends.
fn sends(lane: &mut Lane, q: &Queue) -> (Vec<usize>, Step) {
    let mut sent = Vec::new();
    loop {
        match lane.next(q) {
            Step::Send(i) => sent.push(i),
            Step::Bearer => lane.on_bearer(false),
            other => return (sent, other),
        }
    }
}

fn retry(why: &str) -> Outcome {
    Outcome::Retry { reason: Reason::Connection(why.into()), after: None }
}

#[test]
fn the_queue_hands_out_runs_once() {
    let q = Queue::new(vec![7, 8, 9, 10, 11]);
    assert_eq!(q.claim(2), 0..2);
    assert_eq!(q.phone(1), 8);
    assert_eq!(q.claim(2), 2..4);
    assert!(!q.drained());
    assert_eq!(q.claim(2), 4..5);
    assert!(q.drained());
    assert_eq!(q.claim(2), 5..5);
    assert_eq!(q.take_rest().count(), 0);
    let q = Queue::new(vec![7, 8, 9]);
    q.claim(1);
    assert_eq!(q.take_rest().collect::<Vec<_>>(), vec![8, 9]);
    assert!(q.drained());
    // Consecutive phones need no list.
    let q = Queue::run(100..105);
    assert_eq!((q.len(), q.claim(2)), (5, 0..2));
    assert_eq!(q.phone(1), 101);
    assert_eq!(q.take_rest().collect::<Vec<_>>(), vec![102, 103, 104]);
}

#[test]
fn token_auth_sends_one_stream_until_the_first_answer() {
    let q = queue(10);
    let mut lane = connected(&q, 4);
    assert_eq!(lane.window(), 1);
    assert_eq!(sends(&mut lane, &q), (vec![0], Step::Wait));
    let now = Instant::now();
    assert_eq!(lane.on_answer(0, 200, b"", lane.bearer_gen()), Judged { outcome: Outcome::Delivered, effect: None });
    assert!(lane.end_batch(now));
    assert!(lane.confirmed());
    assert_eq!(lane.window(), 4);
    assert_eq!(sends(&mut lane, &q), (vec![1, 2, 3, 4], Step::Wait));
}

#[test]
fn certificate_auth_and_pooled_connections_open_the_window_at_once() {
    let q = queue(10);
    let mut lane = Lane::new(q.len(), false, 3, TIMEOUT);
    assert_eq!(lane.next(&q), Step::Connect, "no provider token to look up");
    lane.on_connected(false);
    assert_eq!(sends(&mut lane, &q), (vec![0, 1, 2], Step::Wait));

    let mut lane = Lane::new(q.len(), true, 3, TIMEOUT);
    lane.next(&q);
    lane.on_bearer(true);
    lane.next(&q);
    lane.on_connected(true); // a pooled connection that answered before
    assert_eq!(lane.window(), 3);
}

#[test]
fn the_server_limit_narrows_the_window() {
    let q = queue(10);
    let mut lane = Lane::new(q.len(), false, 8, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    lane.set_limit(2);
    assert_eq!(sends(&mut lane, &q), (vec![0, 1], Step::Wait));
    lane.set_limit(0);
    assert_eq!(lane.window(), 1, "never below one");
}

#[test]
fn lanes_claim_runs_of_the_shared_queue_and_finish_when_it_is_drained() {
    let q = queue(CLAIM + 10);
    // b's first run, claimed before a's window is full.
    let mut early = Lane::new(q.len(), false, 5, TIMEOUT);
    early.next(&q);
    early.on_connected(false);
    assert_eq!(sends(&mut early, &q).0, vec![0, 1, 2, 3, 4]);
    let q = queue(CLAIM + 10);
    let (mut a, mut b) = (Lane::new(q.len(), false, 1000, TIMEOUT), Lane::new(q.len(), false, 1000, TIMEOUT));
    for l in [&mut a, &mut b] {
        assert_eq!(l.next(&q), Step::Connect);
        l.on_connected(false);
    }
    let (sent_a, _) = sends(&mut a, &q);
    let (sent_b, _) = sends(&mut b, &q);
    assert_eq!(sent_a, (0..CLAIM + 10).collect::<Vec<_>>(), "a run of CLAIM, then the rest");
    assert_eq!(sent_b, Vec::<usize>::new(), "a took everything: b has nothing to send");
    assert_eq!(b.next(&q), Step::Finish);
    let now = Instant::now();
    for i in sent_a {
        a.on_answer(i, 200, b"", 0);
    }
    a.end_batch(now);
    assert_eq!(a.next(&q), Step::Finish);
    assert!(a.leftovers(&q).is_empty());
}

#[test]
fn refused_requests_go_again_first_on_a_fresh_connection() {
    let q = queue(10);
    let mut lane = Lane::new(q.len(), false, 3, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    assert_eq!(sends(&mut lane, &q).0, vec![0, 1, 2]);
    // GOAWAY: 1 and 2 were above its last stream id; 0 was answered.
    lane.on_refused(2);
    assert_eq!(lane.next(&q), Step::Wait, "1 is still in flight on the closed connection");
    lane.on_refused(1);
    lane.on_answer(0, 200, b"", 0);
    lane.end_batch(Instant::now());
    assert_eq!(lane.next(&q), Step::Connect);
    lane.on_connected(false);
    assert_eq!(sends(&mut lane, &q).0, vec![1, 2, 3], "the refused ones first");
}

#[test]
fn a_refused_send_closes_the_connection_and_other_failures_are_retries() {
    let q = queue(4);
    let mut lane = Lane::new(q.len(), false, 4, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    assert_eq!(lane.next(&q), Step::Send(0));
    assert_eq!(lane.on_failed(0, "stream reset".into()), retry("stream reset"));
    assert_eq!(lane.in_flight(), 0);
    assert_eq!(lane.next(&q), Step::Send(1));
    lane.on_refused(1); // poll_ready failed: the connection is gone
    assert_eq!(lane.next(&q), Step::Connect);
}

#[test]
fn the_stall_timer_counts_from_the_first_request_and_the_last_answer() {
    let q = queue(10);
    let mut lane = Lane::new(q.len(), false, 2, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    let t0 = Instant::now();
    assert_eq!(lane.on_stall(t0), Stall::Rearm(t0 + TIMEOUT), "nothing in flight: nothing to time out");
    sends(&mut lane, &q);
    assert!(lane.clock_stopped());
    lane.start_clock(t0);
    assert!(!lane.clock_stopped());
    assert_eq!(lane.on_stall(t0 + Duration::from_secs(3)), Stall::Rearm(t0 + TIMEOUT));
    // An answer at 5 s moves the deadline to 15 s.
    lane.on_answer(0, 200, b"", 0);
    lane.end_batch(t0 + Duration::from_secs(5));
    sends(&mut lane, &q);
    assert_eq!(lane.on_stall(t0 + TIMEOUT), Stall::Rearm(t0 + Duration::from_secs(15)));
    // Nothing by 15 s: both in flight go back, the connection is given up.
    let Stall::TimedOut(lost) = lane.on_stall(t0 + Duration::from_secs(15)) else { panic!("stalled") };
    assert_eq!(lost, vec![(1, retry("request timed out")), (2, retry("request timed out"))]);
    assert_eq!(lane.in_flight(), 0);
    assert_eq!(lane.next(&q), Step::Connect);
}

#[test]
fn fresh_connections_without_an_answer_are_given_up_after_a_few() {
    let q = queue(200);
    let mut lane = Lane::new(q.len(), false, 1, TIMEOUT);
    assert_eq!(lane.next(&q), Step::Connect);
    lane.on_connected(false);
    for _ in 0..MAX_REPLACEMENTS {
        assert_eq!(lane.next(&q), Step::Send(0));
        lane.on_refused(0);
        assert_eq!(lane.next(&q), Step::Connect);
        lane.on_connected(false);
    }
    assert_eq!(lane.next(&q), Step::Send(0));
    lane.on_refused(0);
    assert_eq!(lane.next(&q), Step::Finish);
    let left = lane.leftovers(&q);
    assert_eq!(left.len(), CLAIM, "the refused phone and the rest of its run");
    assert_eq!(left[0], (0, retry("the server keeps closing connections")));
    assert!(!q.drained(), "what it never claimed stays for the other lanes");
}

#[test]
fn an_answer_resets_the_replacement_count() {
    let q = queue(200);
    let mut lane = Lane::new(q.len(), false, 1, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    for round in 0..2 * MAX_REPLACEMENTS {
        let Step::Send(i) = lane.next(&q) else { panic!("round {round}") };
        lane.on_answer(i, 200, b"", 0);
        lane.end_batch(Instant::now());
        lane.on_closed();
        assert_eq!(lane.next(&q), Step::Connect, "round {round}");
        lane.on_connected(false);
    }
}

#[test]
fn a_failed_connect_hands_the_claimed_work_back() {
    let q = queue(100);
    let mut lane = Lane::new(q.len(), false, 2, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    sends(&mut lane, &q);
    lane.on_refused(0);
    lane.on_refused(1);
    assert_eq!(lane.next(&q), Step::Connect);
    lane.on_connect_failed("connect 127.0.0.1:1: refused".into());
    assert_eq!(lane.next(&q), Step::Finish);
    let left = lane.leftovers(&q);
    assert_eq!(left.len(), CLAIM);
    assert!(left.iter().all(|(_, o)| *o == retry("connect 127.0.0.1:1: refused")));
}

#[test]
fn a_closed_connection_with_nothing_left_finishes_instead_of_reconnecting() {
    let q = queue(2);
    let mut lane = Lane::new(q.len(), false, 2, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    sends(&mut lane, &q);
    lane.on_answer(0, 200, b"", 0);
    lane.on_answer(1, 200, b"", 0);
    lane.end_batch(Instant::now());
    lane.on_closed();
    assert_eq!(lane.next(&q), Step::Finish);
}

#[test]
fn stopping_takes_the_answers_in_flight_and_hands_the_rest_back() {
    let q = queue(100);
    let mut lane = Lane::new(q.len(), false, 2, TIMEOUT);
    lane.next(&q);
    lane.on_connected(false);
    assert_eq!(sends(&mut lane, &q).0, vec![0, 1]);
    lane.stop();
    assert_eq!(lane.next(&q), Step::Wait);
    lane.on_answer(0, 200, b"", 0);
    lane.on_answer(1, 200, b"", 0);
    lane.end_batch(Instant::now());
    assert_eq!(lane.next(&q), Step::Finish);
    let left = lane.leftovers(&q);
    assert_eq!(left.len(), CLAIM - 2);
    assert_eq!(left[0], (2, retry("not sent")));
}

#[test]
fn the_provider_token_is_looked_up_every_so_many_requests() {
    let q = queue(3 * BEARER_CHECK_EVERY);
    let mut lane = Lane::new(q.len(), true, usize::MAX, TIMEOUT);
    assert_eq!(lane.next(&q), Step::Bearer);
    lane.on_bearer(true);
    lane.next(&q);
    lane.on_connected(true);
    let mut sent = 0;
    while let Step::Send(_) = lane.next(&q) {
        sent += 1;
    }
    assert_eq!(sent, BEARER_CHECK_EVERY);
    lane.on_bearer(false);
    assert_eq!(lane.bearer_gen(), 1, "unchanged: same copy");
    assert!(matches!(lane.next(&q), Step::Send(_)));
}

#[test]
fn an_expired_provider_token_is_replaced_once() {
    let q = queue(10);
    let mut lane = connected(&q, 4);
    lane.on_connected(true);
    let (sent, _) = sends(&mut lane, &q);
    let old = lane.bearer_gen();
    let expired = br#"{"reason":"ExpiredProviderToken"}"#;
    let j = lane.on_answer(sent[0], 403, expired, old);
    assert_eq!(j.outcome, Outcome::Retry { reason: Reason::ExpiredProviderToken, after: None });
    assert_eq!(j.effect, Some(Effect::RefreshToken), "the copy in use expired: mint anew");
    assert_eq!(lane.next(&q), Step::Bearer, "and follow it at once");
    lane.on_bearer(true);
    // The other requests sent with the old copy say the same: nothing more to mint.
    let j = lane.on_answer(sent[1], 403, expired, old);
    assert_eq!(j.effect, None);
    assert_eq!(lane.next(&q), Step::Bearer);
}

#[test]
fn a_credentials_refusal_asks_the_client_to_stop() {
    let q = queue(10);
    let mut lane = connected(&q, 4);
    let (sent, _) = sends(&mut lane, &q);
    let j = lane.on_answer(sent[0], 403, br#"{"reason":"InvalidProviderToken"}"#, 1);
    assert_eq!(j.effect, Some(Effect::Stop(Reason::InvalidProviderToken)));
    assert!(matches!(j.outcome, Outcome::Failed { status: 403, .. }));
    let j = lane.on_answer(sent[0], 410, br#"{"reason":"Unregistered","timestamp":12}"#, 1);
    assert_eq!(j, Judged { outcome: Outcome::Prune { reason: Reason::Unregistered, since: Some(12) }, effect: None });
}
