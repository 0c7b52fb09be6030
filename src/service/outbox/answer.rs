//! "I'm coming": once someone answered a ring (the store recorded it, first wins), every
//! other phone the ring reached gets a replacement under the same collapse id (APNs
//! `apns-collapse-id`, FCM `collapse_key` and tag, Web Push `Topic`), passive and silent,
//! naming who is getting the door, so the lock screens stop ringing. Home Assistant gets an
//! `answered` event, and the ring's outcome is published again with `answered_by` and what
//! the replacement wave did. One attempt per phone: a replacement that fails leaves only a
//! ring on a lock screen, and is logged.

use super::send::{split, Part, Route, Share};
use super::{Outbox, RingReport, DETAIL_LIMIT};
use crate::domain::{Notice, Outcome, RingTiming};
use crate::store::household::Answered;
use crate::store::recipients::Recipients;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What an answer's replacement wave did, published with the ring's outcome.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Wave {
    /// Phones that got a replacement (every phone the ring reached but the one that answered).
    pub phones: usize,
    /// Of them, accepted by their push service.
    pub delivered: usize,
    /// Answer accepted -> the last replacement answered by its push service.
    pub ms: u64,
}

impl Outbox {
    /// Quiets a ring's other phones after `a`, tells Home Assistant (when `ha_events`), and
    /// publishes the ring's outcome again.
    pub async fn answered(&self, a: &Answered, ha_events: bool, stop: &CancellationToken) -> Option<Wave> {
        let started = Instant::now();
        if let (true, Some(p)) = (ha_events, &self.publisher) {
            let event = crate::codec::homeassistant::answered_event(&a.ring_id, &a.doorbell_id, &a.by, a.at);
            p.event(p.topic(&format!("doorbell/{}/event", a.doorbell_id)), event);
        }
        let (ring, except) = (a.ring_id.clone(), a.phone_id);
        let phones = match self.store.run(move |s| s.answer_targets(&ring, except)).await {
            Ok(p) => p,
            Err(e) => {
                warn!(ring = %a.ring_id, error = %e, "cannot read the ring's phones: no replacement sent");
                return None;
            }
        };
        let wave = self.quiet_others(a, Recipients::from_phones(phones), stop).await;
        let wave = Wave { ms: started.elapsed().as_millis() as u64, ..wave };
        info!(ring = %a.ring_id, by = %a.by, phones = wave.phones, delivered = wave.delivered, ms = wave.ms, "answered: the other phones quieted");
        self.republish(&a.ring_id, wave).await;
        Some(wave)
    }

    /// Sends the replacement to `phones`, every share at once, one attempt each.
    async fn quiet_others(&self, a: &Answered, phones: Recipients, stop: &CancellationToken) -> Wave {
        let (transports, settings) = self.current.read().expect("outbox lock").clone();
        let total = phones.len();
        let payload =
            match crate::codec::apns_payload::answered_payload(&a.doorbell_id, &a.doorbell_name, &a.ring_id, &a.by) {
                Ok(p) => p,
                Err(e) => {
                    warn!(ring = %a.ring_id, error = %e, "answered payload too large: no replacement sent");
                    return Wave { phones: total, ..Wave::default() };
                }
            };
        let notice = Arc::new(Notice {
            ring_id: a.ring_id.as_str().into(),
            doorbell_id: a.doorbell_id.as_str().into(),
            doorbell_name: a.doorbell_name.as_str().into(),
            pressed_at: a.at,
            expires_at: a.expires_at,
            profile: crate::domain::household::Profile::silent(),
            answered_by: Some(a.by.as_str().into()),
        });
        let groups = split(Part { phones, from: 0, first_seq: 0 }, None);
        let sends = groups.into_iter().map(|(share, targets, range, _)| {
            let route = match share {
                Share::Apns(topic, _) => {
                    let topic = topic.map(Arc::from).unwrap_or_else(|| settings.topic.clone());
                    Route::apns(&transports, topic, payload.clone(), a.expires_at, &a.doorbell_id, true)
                }
                Share::Fcm(_) => Route::fcm(&transports, notice.clone()),
                Share::WebPush(_) => Route::webpush(&transports, notice.clone()),
                Share::Muted(p) => Route::Muted(p),
            };
            async move {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let n = range.len();
                let send = route.send(targets, range, tx, stop);
                let count = async {
                    let mut delivered = 0;
                    while let Some((_, outcome)) = rx.recv().await {
                        delivered += usize::from(outcome == Outcome::Delivered);
                    }
                    delivered
                };
                let (_, delivered) = tokio::join!(send, count);
                (n, delivered)
            }
        });
        let mut wave = Wave::default();
        for (n, delivered) in futures_util::future::join_all(sends).await {
            wave.phones += n;
            wave.delivered += delivered;
        }
        wave
    }

    /// Publishes `ring_id`'s outcome again, now with who answered and the wave.
    async fn republish(&self, ring_id: &str, wave: Wave) {
        let ring = ring_id.to_string();
        let read = self
            .store
            .run(move |s| {
                let summary = s.ring_summary(&ring)?;
                let latency = s.ring_latency(&ring)?;
                let results = (summary.phones as usize <= DETAIL_LIMIT)
                    .then(|| s.ring_phones(&ring, DETAIL_LIMIT))
                    .transpose()?;
                Ok((summary, latency, results))
            })
            .await;
        match read {
            Ok((summary, latency_ms, results)) => self.publish(&RingReport {
                summary,
                latency_ms,
                timing_us: RingTiming::default().report(),
                results,
                answer: Some(wave),
            }),
            Err(e) => warn!(ring = %ring_id, error = %e, "cannot read the answered ring"),
        }
    }
}
