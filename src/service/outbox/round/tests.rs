//! A round's accounting and the retry decisions, with plain values.

use super::*;
use crate::domain::{Environment, Reason, Token};

fn targets(n: usize) -> Arc<Vec<Target>> {
    Arc::new(
        (0..n).map(|i| Target::apns(100 + i as i64, Token::Inline([i as u8; 32]), Environment::Production)).collect(),
    )
}

fn retry(after: Option<Duration>) -> Outcome {
    Outcome::Retry { reason: Reason::TooManyRequests, after }
}

fn ids(v: &[Target]) -> Vec<i64> {
    v.iter().map(|t| t.phone_id).collect()
}

#[test]
fn a_first_round_needs_no_list_of_places() {
    let mut r = Round::new(targets(3), 1, Seqs::Run(41));
    r.on_outcome(2, Outcome::Delivered);
    assert_eq!(r.take_rows()[0].seq, 42);
    let end = r.end();
    assert_eq!((ids(&end.retry), end.seqs), (vec![101], vec![41]));
}

#[test]
fn a_round_can_start_inside_its_targets() {
    // The phones after the first two (sent earlier, in a round of their own).
    let mut r = Round::new(targets(5), 2, vec![2, 3, 4]);
    r.on_outcome(3, Outcome::Delivered);
    r.on_outcome(4, retry(None));
    assert_eq!(r.take_rows().iter().map(|row| (row.seq, row.phone_id)).collect::<Vec<_>>(), vec![(3, 103)]);
    let end = r.end();
    assert_eq!(ids(&end.retry), vec![104, 102]);
    assert_eq!(end.seqs, vec![4, 2]);
    assert_eq!(end.unheard, 1);
}

#[test]
fn final_outcomes_are_recorded_with_their_place_in_the_job() {
    let mut r = Round::new(targets(3), 0, vec![10, 11, 12]);
    assert!(!r.answered());
    r.on_outcome(2, Outcome::Delivered);
    r.on_outcome(0, Outcome::Prune { reason: Reason::Unregistered, since: Some(5) });
    assert!(r.answered());
    let rows = r.take_rows();
    assert_eq!(rows.iter().map(|row| (row.seq, row.phone_id)).collect::<Vec<_>>(), vec![(12, 102), (10, 100)]);
    assert_eq!(rows[1].address, Target::apns(0, Token::Inline([0; 32]), Environment::Production).address);
    assert_eq!(r.unwritten(), 0);
}

#[test]
fn rows_the_store_refused_go_first_in_the_next_write() {
    let mut r = Round::new(targets(3), 0, vec![0, 1, 2]);
    r.on_outcome(0, Outcome::Delivered);
    let refused = r.take_rows();
    r.on_outcome(1, Outcome::Delivered);
    r.keep_rows(refused);
    assert_eq!(r.take_rows().iter().map(|row| row.seq).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn a_batch_is_full_at_batch_size() {
    let mut r = Round::new(targets(BATCH + 1), 0, Seqs::Run(0));
    for i in 0..BATCH - 1 {
        r.on_outcome(i, Outcome::Delivered);
    }
    assert!(!r.batch_full());
    r.on_outcome(BATCH - 1, Outcome::Delivered);
    assert!(r.batch_full());
}

#[test]
fn retries_and_unheard_phones_go_to_the_next_round_with_the_longest_hint() {
    let mut r = Round::new(targets(4), 0, vec![20, 21, 22, 23]);
    r.on_outcome(0, Outcome::Delivered);
    r.on_outcome(1, retry(Some(Duration::from_secs(2))));
    r.on_outcome(3, retry(Some(Duration::from_secs(1))));
    // Phone 2 never got an outcome.
    r.take_rows();
    let end = r.end();
    assert_eq!(ids(&end.retry), vec![101, 103, 102]);
    assert_eq!(end.seqs, vec![21, 23, 22]);
    assert_eq!(end.hint, Some(Duration::from_secs(2)));
    assert_eq!(end.unheard, 1);
    assert!(end.progressed);
}

#[test]
fn a_round_where_nothing_settled_did_not_progress() {
    let mut r = Round::new(targets(2), 0, vec![0, 1]);
    r.on_outcome(0, retry(None));
    let end = r.end();
    assert!(!end.progressed);
    assert_eq!(end.unheard, 1);
    assert_eq!(end.hint, None);
}

#[test]
fn a_round_with_nothing_to_retry_is_done() {
    let mut r = Round::new(targets(2), 0, vec![0, 1]);
    r.on_outcome(0, Outcome::Delivered);
    r.on_outcome(1, Outcome::Failed { reason: Reason::BadTopic, status: 400 });
    let end = r.end();
    assert!(end.retry.is_empty());
    assert_eq!(Retries::new(RetryPolicy::default()).after(&end, Duration::from_secs(60), 0.0), Next::Done);
}

#[test]
fn backoff_grows_while_nothing_settles_and_starts_over_after_progress() {
    let minute = Duration::from_secs(60);
    let stuck = || {
        let mut r = Round::new(targets(2), 0, vec![0, 1]);
        r.on_outcome(0, retry(None));
        r.on_outcome(1, retry(None));
        r.end()
    };
    let mut retries = Retries::new(RetryPolicy::default());
    let ms = |n| Next::Retry { wait: Duration::from_millis(n), attempt: 0 };
    let wait = |n: Next| match n {
        Next::Retry { wait, .. } => Next::Retry { wait, attempt: 0 },
        other => other,
    };
    assert_eq!(wait(retries.after(&stuck(), minute, 0.0)), ms(100));
    assert_eq!(wait(retries.after(&stuck(), minute, 0.0)), ms(200));
    assert_eq!(retries.after(&stuck(), minute, 0.0), Next::Retry { wait: Duration::from_millis(400), attempt: 3 });
    let mut r = Round::new(targets(2), 0, vec![0, 1]);
    r.on_outcome(0, Outcome::Delivered);
    r.on_outcome(1, retry(None));
    assert_eq!(retries.after(&r.end(), minute, 0.0), Next::Retry { wait: Duration::from_millis(100), attempt: 1 });
}

#[test]
fn apples_hint_wins_and_expiry_ends_the_retries() {
    let mut retries = Retries::new(RetryPolicy::default());
    let mut r = Round::new(targets(1), 0, vec![0]);
    r.on_outcome(0, retry(Some(Duration::from_secs(5))));
    let end = r.end();
    assert_eq!(
        retries.after(&end, Duration::from_secs(60), 0.0),
        Next::Retry { wait: Duration::from_secs(5), attempt: 1 }
    );
    assert_eq!(retries.after(&end, Duration::from_secs(4), 0.0), Next::GiveUp);
}

#[test]
fn backoff_grows_is_jittered_and_respects_expiry() {
    let p = RetryPolicy::default();
    let minute = Duration::from_secs(60);
    assert_eq!(p.delay(1, minute, 0.0, None), Some(Duration::from_millis(100)));
    assert_eq!(p.delay(2, minute, 0.0, None), Some(Duration::from_millis(200)));
    assert_eq!(p.delay(4, minute, 0.0, None), Some(Duration::from_millis(800)));
    assert_eq!(p.delay(4, minute, 1.0, None), Some(Duration::from_millis(400)));
    assert_eq!(p.delay(30, 10 * minute, 0.0, None), Some(Duration::from_secs(30)));
    // Apple's hint wins when longer.
    assert_eq!(p.delay(1, minute, 0.0, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
    // Never past expiry.
    assert_eq!(p.delay(10, Duration::from_secs(1), 0.0, None), None);
}

/// A round over a run inside a shared list: only that run is its, retried or recorded.
#[test]
fn a_round_can_be_a_run_inside_its_targets() {
    let mut r = Round::over(targets(6), 2..4, Seqs::Run(20));
    assert_eq!(r.range(), 2..4);
    r.on_outcome(2, Outcome::Delivered);
    let rows = r.take_rows();
    assert_eq!((rows.len(), rows[0].seq), (1, 20));
    let end = r.end();
    assert_eq!((end.retry.len(), end.seqs.clone(), end.unheard), (1, vec![21], 1));
}
