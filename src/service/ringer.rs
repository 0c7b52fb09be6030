//! Press -> ring: binding lookup, stable ring ids, debounce and expiry (decided in the store,
//! so a second instance sharing the database decides the same), and the job for the outbox.
//! Sends nothing itself.

use crate::domain::ButtonPress;
use crate::store::presses::{NewPress, Recorded};
use crate::store::rings::{RingJob, RingStart};
use crate::store::{StoreError, StoreHandle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Counters of what the intake saw, for logs, diag and tests.
#[derive(Debug, Default, Serialize)]
pub struct IntakeStats {
    pub presses: AtomicU64,
    pub rings: AtomicU64,
    pub folded: AtomicU64,
    pub duplicates: AtomicU64,
    pub expired: AtomicU64,
    pub unknown_buttons: AtomicU64,
    pub malformed: AtomicU64,
    /// Messages above `net::mqtt::MAX_MESSAGE`: acknowledged and refused.
    pub oversize: AtomicU64,
    /// Presses flagged retained (sent again because we subscribed): acknowledged, not rung.
    pub retained: AtomicU64,
    /// Presses the store could not record at once: kept and retried.
    pub kept: AtomicU64,
    /// Failed attempts to record a kept press.
    pub store_faults: AtomicU64,
}

pub use crate::domain::press::ring_id;

/// What became of a press.
#[derive(Debug)]
pub enum PressResult {
    Ring(RingJob),
    Folded(String),
    Duplicate(String),
    Expired(String),
    UnknownButton,
}

/// How long a ring lives and which presses fold into one (`[ring]`); a reload changes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingRules {
    pub expiry: Duration,
    pub debounce: Duration,
}

pub struct Ringer {
    store: StoreHandle,
    rules: std::sync::RwLock<RingRules>,
    pub stats: Arc<IntakeStats>,
}

impl Ringer {
    pub fn new(store: StoreHandle, expiry: Duration, debounce: Duration, stats: Arc<IntakeStats>) -> Ringer {
        Ringer { store, rules: std::sync::RwLock::new(RingRules { expiry, debounce }), stats }
    }

    /// Applies new rules to the presses that come from now on.
    pub fn set_rules(&self, rules: RingRules) {
        *self.rules.write().expect("rules lock") = rules;
    }

    pub fn rules(&self) -> RingRules {
        *self.rules.read().expect("rules lock")
    }

    /// Turns a press into a ring, durably, before the press is acknowledged.
    pub async fn press(&self, press: ButtonPress, topic: &str, received_at: i64) -> Result<PressResult, StoreError> {
        let one = NewPress { press, topic: topic.to_string(), received_at };
        Ok(self.presses(vec![one]).await?.pop().expect("one result per press"))
    }

    /// Turns presses into rings in one store transaction, in order: one result per press.
    /// On a store fault none of them is recorded.
    pub async fn presses(&self, presses: Vec<NewPress>) -> Result<Vec<PressResult>, StoreError> {
        let rules = self.rules();
        let (expiry_ms, debounce_ms) = (rules.expiry.as_millis() as i64, rules.debounce.as_millis() as i64);
        let now = crate::domain::now_ms();
        let (presses, recorded) = self
            .store
            .run(move |s| {
                let r = s.record_presses(&presses, expiry_ms, debounce_ms, now)?;
                Ok((presses, r))
            })
            .await?;
        Ok(presses.iter().zip(recorded).map(|(p, r)| self.result(p, r)).collect())
    }

    fn result(&self, p: &NewPress, r: Recorded) -> PressResult {
        let (source, key, topic) = (p.press.source.as_str(), &p.press.key, &p.topic);
        let (doorbell_id, start) = match r {
            Recorded::Unknown => {
                self.stats.unknown_buttons.fetch_add(1, Ordering::Relaxed);
                warn!(topic, source, key = %key, "press of a button bound to no doorbell: ignored");
                return PressResult::UnknownButton;
            }
            Recorded::Doorbell { doorbell_id, learned, start } => {
                if learned {
                    info!(source, key = %key, doorbell = %doorbell_id, "learnt: button bound to the doorbell");
                }
                (doorbell_id, start)
            }
        };
        match start {
            RingStart::Created(job) => {
                self.stats.rings.fetch_add(1, Ordering::Relaxed);
                info!(ring = %job.ring_id, doorbell = %job.doorbell_id, phones = job.phones.len(), "ring");
                PressResult::Ring(job)
            }
            RingStart::Folded { ring_id, presses } => {
                self.stats.folded.fetch_add(1, Ordering::Relaxed);
                debug!(ring = %ring_id, presses, "press folded into the ring in progress");
                PressResult::Folded(ring_id)
            }
            RingStart::Duplicate { ring_id } => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                debug!(ring = %ring_id, "press delivered again: already rung");
                PressResult::Duplicate(ring_id)
            }
            RingStart::Expired { ring_id } => {
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                warn!(ring = %ring_id, doorbell = %doorbell_id, "press arrived after the ring's expiry: not sent");
                PressResult::Expired(ring_id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_ids_are_stable_per_press() {
        assert_eq!(ring_id("front", Some(1)), ring_id("front", Some(1)));
        assert_ne!(ring_id("front", Some(1)), ring_id("front", Some(2)));
        assert_ne!(ring_id("front", Some(1)), ring_id("back", Some(1)));
        assert_ne!(ring_id("front", None), ring_id("front", None));
        assert_eq!(ring_id("front", Some(1)).len(), 16);
    }

    /// Radio bridges repeat a code several times per press, with no time or with slightly
    /// different times: every repeat inside the debounce window folds into one ring.
    #[tokio::test]
    async fn bridge_repeats_fold_with_or_without_at() {
        use crate::domain::Source;
        let dir = tempfile::tempdir().unwrap();
        let mut s = crate::store::Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("o").unwrap();
        s.add_doorbell("front", None, "o").unwrap();
        s.bind("front", "rtl_433", "Generic-Remote/1234/42").unwrap();
        let ringer = Ringer::new(
            StoreHandle::spawn(s),
            Duration::from_secs(300),
            Duration::from_secs(3),
            Arc::new(IntakeStats::default()),
        );
        let press = |at: Option<i64>| ButtonPress { source: Source::Rtl433, key: "Generic-Remote/1234/42".into(), at };
        let now = crate::domain::now_ms();
        let mut results = vec![];
        for (at, received) in [(None, now), (None, now + 40), (Some(now + 90), now + 100), (Some(now + 150), now + 160)]
        {
            results.push(ringer.press(press(at), "rtl_433/gw/events", received).await.unwrap());
        }
        assert!(matches!(results[0], PressResult::Ring(_)), "{results:?}");
        assert!(results[1..].iter().all(|r| matches!(r, PressResult::Folded(_))), "{results:?}");
        // After the window, the button rings again.
        let later = ringer.press(press(None), "rtl_433/gw/events", now + 3_500).await.unwrap();
        assert!(matches!(later, PressResult::Ring(_)), "{later:?}");
        // An unbound code rings nothing.
        let other = ButtonPress { source: Source::Rtl433, key: "Quhwa/1".into(), at: None };
        assert!(matches!(ringer.press(other, "rtl_433/gw/events", now).await.unwrap(), PressResult::UnknownButton));
    }
}
