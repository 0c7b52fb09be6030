//! The legacy feedback service's use: one poll and its pruning with the re-registration rule
//! (which phones to delete is the store's decision, `Store::prune_feedback`), and the daemon's
//! periodic poller (`apns.binary.feedback_interval`).

use crate::net::apns::binary::feedback::FeedbackClient;
use crate::net::apns::binary::BinaryError;
use crate::store::{StoreError, StoreHandle};
use serde::Serialize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Service(#[from] BinaryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one poll did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeedbackReport {
    /// Tuples read.
    pub read: usize,
    /// Phones removed: registered before Apple's timestamp.
    pub pruned: usize,
    /// Phones kept: registered again after Apple's timestamp.
    pub kept: usize,
    /// Tuples naming no phone we know.
    pub unknown: usize,
    /// Tuples whose token is not a device token.
    pub malformed: usize,
}

/// One poll and its pruning, logged.
pub async fn poll_and_prune(client: &FeedbackClient, store: &StoreHandle) -> Result<FeedbackReport, FeedbackError> {
    let tuples = client.poll().await?;
    let mut report = FeedbackReport { read: tuples.len(), ..Default::default() };
    let mut items = Vec::with_capacity(tuples.len());
    for t in tuples {
        match crate::domain::normalize_token(&hex::encode(&t.token)) {
            Ok(token) => items.push((token, t.timestamp)),
            Err(_) => report.malformed += 1,
        }
    }
    let r = store.run(move |s| s.prune_feedback(&items)).await?;
    report.pruned = r.pruned;
    report.kept = r.kept;
    report.unknown = r.unknown;
    info!(
        read = report.read,
        pruned = report.pruned,
        kept_reregistered = report.kept,
        unknown = report.unknown,
        malformed = report.malformed,
        "feedback service polled"
    );
    Ok(report)
}

/// The daemon's task: a poll at start, then one every `interval`, until `stop`.
pub async fn run_poller(client: FeedbackClient, store: StoreHandle, interval: Duration, stop: CancellationToken) {
    loop {
        if let Err(e) = poll_and_prune(&client, &store).await {
            warn!(error = %e, "feedback poll failed; trying again at the next interval");
        }
        tokio::select! {
            // cancel-safe: only a timer
            _ = tokio::time::sleep(interval) => {}
            // cancel-safe: stopping between polls loses nothing
            _ = stop.cancelled() => return,
        }
    }
}
