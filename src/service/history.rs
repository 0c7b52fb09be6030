//! Keeping the ring history to `[history] retention`: a task of the daemon that removes old
//! rings and their per-phone rows at start and then every hour, one small step at a time.
//! Each step is one job on the store thread, so presses and outcomes queued meanwhile go
//! between steps: the store is never held for long, however much there is to prune.

use crate::store::history::Pruned;
use crate::store::StoreHandle;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often old rings are looked for.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Rings taken by one step at most (fewer when they have many rows).
pub const STEP_RINGS: usize = 500;

/// What one pruning pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub rings: usize,
    pub rows: usize,
    pub steps: usize,
    /// The longest step: how long the store thread was busy with pruning at once.
    pub longest: Duration,
}

/// Prunes every ring that arrived more than `retention` ago, step by step, until none is
/// left or `stop`. A step the store refuses (busy, full) ends the pass; the next one retries.
pub async fn prune(store: &StoreHandle, retention: Duration, stop: &CancellationToken) -> Pass {
    let before = crate::domain::now_ms() - retention.as_millis() as i64;
    let mut pass = Pass::default();
    while !stop.is_cancelled() {
        let t0 = Instant::now();
        match store.run(move |s| s.prune_rings(before, STEP_RINGS)).await {
            Ok(Pruned { rings: 0, rows: 0 }) => break,
            Ok(step) => {
                pass.longest = pass.longest.max(t0.elapsed());
                pass.rings += step.rings;
                pass.rows += step.rows;
                pass.steps += 1;
            }
            Err(e) => {
                warn!(error = %e, "cannot prune the ring history now: trying again later");
                break;
            }
        }
        // Let whatever waits for the store (and this runtime) go first.
        tokio::task::yield_now().await;
    }
    pass
}

/// The daemon's history task: a pass now, then one every [`EVERY`], until `stop`.
pub async fn run(store: StoreHandle, retention: Duration, stop: CancellationToken) {
    loop {
        let t0 = Instant::now();
        let pass = prune(&store, retention, &stop).await;
        if pass.rings > 0 {
            info!(
                rings = pass.rings,
                rows = pass.rows,
                steps = pass.steps,
                ms = t0.elapsed().as_millis() as u64,
                longest_step_ms = pass.longest.as_millis() as u64,
                retention = %humantime::format_duration(retention),
                "ring history pruned"
            );
        } else {
            debug!("ring history: nothing to prune");
        }
        tokio::select! {
            // cancel-safe: only a timer
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Environment;
    use crate::store::rings::{Latency, Press, RingStart};
    use crate::store::Store;

    /// Old rings go in steps; new ones stay; a stopped daemon prunes nothing.
    #[tokio::test]
    async fn a_pass_prunes_old_rings_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("o").unwrap();
        s.add_doorbell("front", None, "o").unwrap();
        s.add_phone("o", &"ab".repeat(32), Environment::Production, None, None).unwrap();
        let now = crate::domain::now_ms();
        let day = 86_400_000;
        let n = STEP_RINGS as i64 * 2 + 7;
        for i in 0..n {
            let at = now - 40 * day + i * 10_000;
            let id = format!("old{i}");
            let press = Press {
                ring_id: &id,
                doorbell_id: "front",
                doorbell_name: "front",
                pressed_at: at,
                received_at: at,
                recorded_at: at,
                expiry_ms: 300_000,
                debounce_ms: 0,
                read_later: false,
            };
            assert!(matches!(s.create_ring(&press).unwrap(), RingStart::Created(_)));
            s.finish_ring(&id, Latency::default()).unwrap();
        }
        let fresh = Press {
            ring_id: "fresh",
            doorbell_id: "front",
            doorbell_name: "front",
            pressed_at: now,
            received_at: now,
            recorded_at: now,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: false,
        };
        s.create_ring(&fresh).unwrap();
        let store = StoreHandle::spawn(s);
        let pass = prune(&store, Duration::from_secs(30 * 86_400), &CancellationToken::new()).await;
        assert_eq!((pass.rings as i64, pass.steps), (n, 3));
        let left = store.run(|s| s.list_rings(&Default::default())).await.unwrap();
        assert!(left.is_empty(), "limit 0 lists nothing");
        let left = store
            .run(|s| s.list_rings(&crate::store::history::RingFilter { limit: 10, ..Default::default() }))
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].summary.ring_id, "fresh");
        // Stopped: nothing is done.
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert_eq!(prune(&store, Duration::ZERO, &stopped).await, Pass::default());
    }
}
