//! Press -> ring: binding lookup, stable ring ids, debounce and expiry (decided in the store,
//! so a second instance sharing the database decides the same), and the job for the outbox.
//! Sends nothing itself.

use crate::domain::ButtonPress;
use crate::store::fieldkit::Unbound;
use crate::store::rings::{Press, RingJob, RingStart};
use crate::store::{StoreError, StoreHandle};
use serde::Serialize;
use sha2::{Digest, Sha256};
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

/// A ring id that is the same every time the same press is delivered: derived from the
/// doorbell and the press time the bridge stamped. Presses without a time get a random id
/// (the debounce window still folds their redeliveries).
pub fn ring_id(doorbell: &str, at: Option<i64>) -> String {
    match at {
        Some(at) => {
            let digest = Sha256::digest(format!("{doorbell}\n{at}").as_bytes());
            hex::encode(&digest[..8])
        }
        None => uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
    }
}

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
        let (source, key) = (press.source.as_str(), press.key.clone());
        let found = self.store.run(move |s| s.resolve_button(source, &key)).await?;
        let (doorbell_id, doorbell_name) = match found {
            Some(found) => found,
            None => {
                let (key, t) = (press.key.clone(), topic.to_string());
                match self.store.run(move |s| s.unbound_press(source, &key, &t, received_at)).await? {
                    Unbound::Learned(id, name) => {
                        info!(source, key = %press.key, doorbell = %id, "learnt: button bound to the doorbell");
                        (id, name)
                    }
                    Unbound::Recorded => {
                        self.stats.unknown_buttons.fetch_add(1, Ordering::Relaxed);
                        warn!(topic, source, key = %press.key, "press of a button bound to no doorbell: ignored");
                        return Ok(PressResult::UnknownButton);
                    }
                }
            }
        };
        let id = ring_id(&doorbell_id, press.at);
        let rules = self.rules();
        let (expiry_ms, debounce_ms) = (rules.expiry.as_millis() as i64, rules.debounce.as_millis() as i64);
        // A press kept while the store was failing is judged against the time it is recorded.
        let recorded_at = crate::domain::now_ms().max(received_at);
        // A bridge clock ahead of ours must not stretch the ring's life.
        let pressed_at = press.at.map_or(received_at, |at| at.min(received_at));
        let start = {
            let (id, doorbell_id) = (id.clone(), doorbell_id.clone());
            self.store
                .run(move |s| {
                    s.create_ring(&Press {
                        ring_id: &id,
                        doorbell_id: &doorbell_id,
                        doorbell_name: &doorbell_name,
                        pressed_at,
                        received_at,
                        recorded_at,
                        expiry_ms,
                        debounce_ms,
                    })
                })
                .await?
        };
        Ok(match start {
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
        })
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
