//! Presses recorded in batches: every press that arrived together is resolved to its doorbell
//! and turned into a ring (or folded into one, or found a duplicate, or too old) in one
//! write transaction. A burst of presses costs one commit per batch, not one per press.

use super::fieldkit::Unbound;
use super::rings::{Press, RingStart};
use super::{Result, Store};
use crate::domain::ButtonPress;

/// A press to record.
#[derive(Debug, Clone)]
pub struct NewPress {
    pub press: ButtonPress,
    pub topic: String,
    pub received_at: i64,
}

/// What recording one press did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No doorbell has this button (recorded for diag).
    Unknown,
    /// The press reached a doorbell; `learned` when `doorbell learn` bound the button just now.
    Doorbell { doorbell_id: String, learned: bool, start: RingStart },
}

impl Store {
    /// Records `presses` in one transaction, in order. The expiry and debounce rules apply
    /// as of `now` (a press kept while the store was failing is judged when recorded).
    pub fn record_presses(
        &mut self,
        presses: &[NewPress],
        expiry_ms: i64,
        debounce_ms: i64,
        now: i64,
    ) -> Result<Vec<Recorded>> {
        // IMMEDIATE: the write lock is taken (or waited for, up to the busy timeout) first, so a
        // brief lock held by a CLI command delays the batch instead of failing it.
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.record_all(presses, expiry_ms, debounce_ms, now) {
            Ok(v) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn record_all(
        &mut self,
        presses: &[NewPress],
        expiry_ms: i64,
        debounce_ms: i64,
        now: i64,
    ) -> Result<Vec<Recorded>> {
        let mut out = Vec::with_capacity(presses.len());
        for p in presses {
            let source = p.press.source.as_str();
            let (doorbell_id, doorbell_name, learned) = match self.resolve_button(source, &p.press.key)? {
                Some((id, name)) => (id, name, false),
                None => match self.unbound_press(source, &p.press.key, &p.topic, p.received_at)? {
                    Unbound::Learned(id, name) => (id, name, true),
                    Unbound::Recorded => {
                        out.push(Recorded::Unknown);
                        continue;
                    }
                },
            };
            let ring_id = crate::domain::press::ring_id(&doorbell_id, p.press.at);
            // A bridge clock ahead of ours must not stretch the ring's life.
            let pressed_at = p.press.at.map_or(p.received_at, |at| at.min(p.received_at));
            let start = self.create_ring(&Press {
                ring_id: &ring_id,
                doorbell_id: &doorbell_id,
                doorbell_name: &doorbell_name,
                pressed_at,
                received_at: p.received_at,
                recorded_at: now.max(p.received_at),
                expiry_ms,
                debounce_ms,
                read_later: true,
            })?;
            out.push(Recorded::Doorbell { doorbell_id, learned, start });
        }
        Ok(out)
    }
}
