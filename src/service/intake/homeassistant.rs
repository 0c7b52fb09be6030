//! The intake's Home Assistant side: each doorbell announced as an event entity (retained
//! discovery config), announced again under its new name, removed with an empty retained
//! config when the doorbell goes, and a ring event per ring. Changes made by another process
//! (the CLI) are seen through the store's doorbells version, read on the intake's 1 s tick;
//! entities of doorbells removed while dingdong was stopped are found among the retained
//! configs the broker sends at subscription. The payloads come from `codec::homeassistant`;
//! the publisher sends them.

use super::{Intake, Memory};
use crate::codec::homeassistant as ha;
use crate::store::rings::RingJob;
use std::collections::HashMap;
use tracing::{debug, info, warn};

/// What Home Assistant was told.
#[derive(Debug, Default)]
pub(super) struct Announced {
    /// Doorbell id -> the name it was announced with.
    bells: HashMap<String, String>,
    /// The store's doorbells version `bells` reflects; `None` until the first announcement.
    version: Option<i64>,
}

impl Intake {
    /// Brings Home Assistant's entities in line with the doorbells: announces new and renamed
    /// ones (every one when `all`: at start and when Home Assistant comes online) and removes
    /// the entities of doorbells that went. Without `all`, does nothing unless the doorbells
    /// changed since the last time (one read of a counter).
    pub(super) async fn sync_doorbells(&self, mem: &mut Memory, all: bool) {
        let Some(h) = &self.ha else { return };
        if !all && mem.ha.version.is_some() {
            match self.store.run(|s| s.doorbells_version()).await {
                Ok(v) if Some(v) == mem.ha.version => return,
                Ok(_) => {}
                Err(e) => return debug!(error = %e, "cannot read the doorbells' version"),
            }
        }
        let (version, bells) = match self.store.run(|s| Ok((s.doorbells_version()?, s.list_doorbells()?))).await {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "cannot list doorbells for Home Assistant discovery"),
        };
        let now: HashMap<String, String> = bells.into_iter().map(|d| (d.id, d.name)).collect();
        for (id, name) in &now {
            let before = mem.ha.bells.get(id);
            if all || before != Some(name) {
                if mem.ha.version.is_some() && !all {
                    match before {
                        Some(old) => info!(doorbell = %id, from = %old, to = %name, "Home Assistant: doorbell renamed"),
                        None => info!(doorbell = %id, "Home Assistant: new doorbell announced"),
                    }
                }
                self.announce(id, name);
            }
        }
        for id in mem.ha.bells.keys().filter(|id| !now.contains_key(*id)) {
            let (topic, empty) = ha::removal(&h.discovery_prefix, &h.gateway, id);
            info!(doorbell = %id, "Home Assistant: entity of the removed doorbell deleted");
            self.publisher.state(topic, empty);
        }
        debug!(doorbells = now.len(), "Home Assistant discovery in line with the doorbells");
        mem.ha = Announced { bells: now, version: Some(version) };
    }

    fn announce(&self, id: &str, name: &str) {
        let Some(h) = &self.ha else { return };
        let (topic, payload) = ha::discovery(&h.discovery_prefix, &self.prefix, &h.gateway, id, name);
        self.publisher.state(topic, payload);
    }

    /// A discovery config the broker holds (sent because we subscribed, or the echo of our
    /// own): one of ours for a doorbell that no longer exists is removed.
    pub(super) fn on_discovery_config(&self, topic: &str, payload: &[u8], mem: &mut Memory) {
        let Some(h) = &self.ha else { return };
        if payload.is_empty() || mem.ha.version.is_none() || !ha::is_ours(&h.gateway, payload) {
            return;
        }
        let current = mem.ha.bells.keys().any(|id| ha::config_topic(&h.discovery_prefix, &h.gateway, id) == topic);
        if !current {
            info!(%topic, "Home Assistant: entity of a doorbell removed while dingdong was stopped deleted");
            self.publisher.state(topic.to_string(), "");
        }
    }

    /// Publishes the ring event on the doorbell's entity, announcing the entity first if it
    /// is new (rung before the tick saw it).
    pub(super) fn ring_event(&self, job: &RingJob, mem: &mut Memory) {
        if self.ha.is_none() {
            return;
        }
        if !mem.ha.bells.contains_key(&job.doorbell_id) {
            self.announce(&job.doorbell_id, &job.doorbell_name);
            mem.ha.bells.insert(job.doorbell_id.clone(), job.doorbell_name.clone());
        }
        let payload = ha::ring_event(&job.ring_id, &job.doorbell_id, job.pressed_at);
        self.publisher.event(ha::event_topic(&self.prefix, &job.doorbell_id), payload);
    }
}
