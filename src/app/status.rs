//! The line `systemctl status dingdong` shows (sd_notify `STATUS=`): ready with how many
//! doorbells and phones and the last ring, or what stopped the transport or troubles the
//! store, and why. Composed by [`line`] (pure) from the store's counts, the last ring and the
//! publisher's [`Status`]; sent by the daemon's status task only when it changes.

use crate::service::publisher::{Publisher, Status};
use crate::store::rings::RingSummary;
use crate::store::StoreHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the line is composed again.
pub const EVERY: Duration = Duration::from_secs(5);

/// What the line is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub doorbells: i64,
    pub phones: i64,
    pub last_ring: Option<RingSummary>,
    pub status: Status,
}

/// The status line: problems first (they are what an operator looks for), then the counts.
pub fn line(f: &Facts) -> String {
    let mut parts = Vec::new();
    if let Some(reason) = &f.status.transport {
        parts.push(format!("APNs stopped: {reason} (fix the push credentials, then systemctl reload dingdong)"));
    }
    for (platform, reason) in &f.status.push_stopped {
        let name = match platform.as_str() {
            "fcm" => "FCM",
            "webpush" => "Web Push",
            other => other,
        };
        parts.push(format!("{name} stopped: {reason} (fix [{platform}] credentials, then systemctl reload dingdong)"));
    }
    if let Some((problem, since)) = &f.status.store {
        parts.push(format!("store failing since {}: {problem} (presses are kept and retried)", clock(*since)));
    }
    if parts.is_empty() {
        parts.push("ready".into());
    }
    let mut s = format!("{}; {} doorbells, {} phones", parts.join("; "), f.doorbells, f.phones);
    match &f.last_ring {
        None => s.push_str("; no ring yet"),
        Some(r) => s.push_str(&format!(
            "; last ring {} {}: {} ({}/{} delivered{}{}{})",
            clock(r.pressed_at),
            r.doorbell,
            r.state,
            r.delivered,
            r.phones,
            nonzero(r.failed, "failed"),
            nonzero(r.pruned, "pruned"),
            nonzero(r.expired, "expired"),
        )),
    }
    s
}

fn nonzero(n: i64, what: &str) -> String {
    if n > 0 {
        format!(", {n} {what}")
    } else {
        String::new()
    }
}

/// UNIX ms as `2026-11-23 11:14:14 UTC`.
fn clock(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}

/// The daemon's status task: sends `STATUS=` when the line changes, until `stop`.
pub async fn run(store: StoreHandle, publisher: Publisher, stop: CancellationToken) {
    let mut sent = String::new();
    loop {
        let read = store.run(|s| {
            let (_, doorbells, phones) = s.counts()?;
            Ok((doorbells, phones, s.recent_rings(1)?.pop()))
        });
        // A store that cannot answer is in the publisher's status already.
        let facts = match read.await {
            Ok((doorbells, phones, last_ring)) => Facts { doorbells, phones, last_ring, status: publisher.status() },
            Err(_) => Facts { status: publisher.status(), ..Default::default() },
        };
        let now = line(&facts);
        if now != sent {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&now)]);
            sent = now;
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
    use crate::domain::RingState;

    fn ring() -> RingSummary {
        RingSummary {
            ring_id: "r1".into(),
            doorbell: "front".into(),
            state: RingState::Done,
            pressed_at: 1_795_000_000_000,
            presses: 1,
            phones: 4,
            delivered: 3,
            failed: 0,
            pruned: 1,
            pending: 0,
            expired: 0,
            muted: 0,
            silenced: 0,
            answered_by: None,
            answered_at: None,
        }
    }

    #[test]
    fn ready_with_counts_and_the_last_ring() {
        let f = Facts { doorbells: 2, phones: 5, ..Default::default() };
        assert_eq!(line(&f), "ready; 2 doorbells, 5 phones; no ring yet");
        let f = Facts { last_ring: Some(ring()), ..f };
        assert_eq!(
            line(&f),
            "ready; 2 doorbells, 5 phones; last ring 2026-11-18 11:06:40 UTC front: done (3/4 delivered, 1 pruned)"
        );
    }

    #[test]
    fn problems_come_first_and_say_why() {
        let status = Status {
            transport: Some("InvalidProviderToken".into()),
            push_stopped: vec![("fcm".into(), "Credentials(403 PERMISSION_DENIED)".into())],
            store: Some(("database is locked".into(), 1_795_000_000_000)),
        };
        let l = line(&Facts { doorbells: 1, phones: 1, last_ring: None, status });
        assert!(l.starts_with("APNs stopped: InvalidProviderToken (fix the push credentials"), "{l}");
        assert!(l.contains("; FCM stopped: Credentials(403 PERMISSION_DENIED) (fix [fcm] credentials"), "{l}");
        assert!(l.contains("; store failing since 2026-11-18 11:06:40 UTC: database is locked"), "{l}");
        assert!(!l.contains("ready") && !l.contains('\n'), "{l}");
    }
}
