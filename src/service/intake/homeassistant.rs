//! The intake's Home Assistant side: each doorbell announced as an event entity (retained
//! discovery config), announced again under its new name, removed with an empty retained
//! config when the doorbell goes, and a ring event per ring. Changes made by another process
//! (the CLI) are seen through the store's doorbells version, read on the intake's 1 s tick;
//! entities of doorbells removed while dingdong was stopped are found among the retained
//! configs the broker sends at subscription. The payloads come from `codec::homeassistant`;
//! the publisher sends them.

use super::{Intake, Memory};
use crate::codec::homeassistant::{self as ha, Control};
use crate::domain::household::{self, Change, Level, Profile, Snooze};
use crate::store::rings::RingJob;
use std::collections::HashMap;
use tracing::{debug, info, warn};

/// What Home Assistant was told about each person's controls.
#[derive(Debug, Default)]
pub(super) struct People {
    /// User -> (do not disturb, alert level) as last published.
    shown: HashMap<String, (bool, Level)>,
    /// The store's people version `shown` reflects.
    version: Option<(i64, i64, i64)>,
    /// When the next mute ends by itself (the switch then turns off).
    next_end: Option<i64>,
}

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

    /// Brings each person's "do not disturb" switch and alert-level select in line with their
    /// rules (for every doorbell): announced, states retained, removed with the person. Cheap
    /// unless something changed (a counter) or a mute just ended.
    pub(super) async fn sync_people(&self, mem: &mut Memory, all: bool) {
        let Some(h) = &self.ha else { return };
        let now = crate::domain::now_ms();
        let due = mem.people.next_end.is_some_and(|e| e <= now);
        if !all && !due && mem.people.version.is_some() {
            match self.store.run(|s| s.people_version()).await {
                Ok(v) if Some(v) == mem.people.version => return,
                Ok(_) => {}
                Err(e) => return debug!(error = %e, "cannot read the people's version"),
            }
        }
        let read = self.store.run(|s| Ok((s.people_version()?, s.list_users()?, s.list_rules()?))).await;
        let (version, users, rules) = match read {
            Ok(v) => v,
            Err(e) => return warn!(error = %e, "cannot read people for Home Assistant"),
        };
        let everywhere: HashMap<&str, &household::Rules> =
            rules.iter().filter(|r| r.doorbell.is_none()).map(|r| (r.user.as_str(), &r.rules)).collect();
        let mut shown = HashMap::new();
        let mut next_end: Option<i64> = None;
        for u in &users {
            let r = everywhere.get(u.name.as_str());
            let dnd = r.is_some_and(|r| r.muted_at(now));
            let level = r.and_then(|r| r.profile.as_ref()).map_or(Level::default(), |p| p.level);
            if let Some(end) =
                r.and_then(|r| r.snooze).map(|s| s.until).filter(|u| *u > now && *u != household::FOREVER)
            {
                next_end = Some(next_end.map_or(end, |n| n.min(end)));
            }
            let before = mem.people.shown.get(&u.name);
            if all || before.is_none() {
                for c in Control::ALL {
                    let (topic, config) =
                        ha::control_discovery(&h.discovery_prefix, &self.prefix, &h.gateway, &u.name, c);
                    self.publisher.state(topic, config);
                }
            }
            if all || before != Some(&(dnd, level)) {
                let on = if dnd { "ON" } else { "OFF" };
                self.publisher.state(ha::control_state_topic(&self.prefix, &u.name, Control::Dnd), on);
                self.publisher.state(ha::control_state_topic(&self.prefix, &u.name, Control::Alert), level.as_str());
            }
            shown.insert(u.name.clone(), (dnd, level));
        }
        for gone in mem.people.shown.keys().filter(|u| !shown.contains_key(*u)) {
            info!(user = %gone, "Home Assistant: controls of the removed user deleted");
            for c in Control::ALL {
                self.publisher.state(ha::control_config_topic(&h.discovery_prefix, &h.gateway, gone, c), "");
                self.publisher.state(ha::control_state_topic(&self.prefix, gone, c), "");
            }
        }
        mem.people = People { shown, version: Some(version), next_end };
    }

    /// A command from a person's switch or select: their rules change as `dingdong mute` or
    /// `dingdong alert` would change them. `None` when the topic is not a control's.
    pub(super) async fn on_control(&self, topic: &str, payload: &[u8], mem: &mut Memory) -> Option<()> {
        self.ha.as_ref()?;
        let parsed = ha::parse_command(&self.prefix, topic, payload)?;
        let (user, command) = match parsed {
            Ok(v) => v,
            Err(why) => {
                warn!(%topic, reason = %why, "Home Assistant command refused");
                return Some(());
            }
        };
        let change = match command {
            ha::Command::Dnd(true) => Change::Mute(Snooze { until: household::FOREVER, mode: household::Mode::Skip }),
            ha::Command::Dnd(false) => Change::Unmute,
            ha::Command::Alert(level) => {
                Change::Alert(Some(Profile { level: Level::parse(level)?, sound: None, volume_milli: None }))
            }
        };
        let who = user.to_string();
        let done = self
            .store
            .run(move |s| {
                s.update_rules(&who, None, |r| {
                    if let Change::Alert(Some(p)) = &change {
                        // The level changes; a sound chosen elsewhere stays.
                        let mut keep = r.profile.clone().unwrap_or_default();
                        keep.level = p.level;
                        if p.level != Level::Critical {
                            keep.volume_milli = None;
                        }
                        r.profile = (keep != Profile::default()).then_some(keep);
                    } else {
                        let _ = change.apply(r);
                    }
                })
            })
            .await;
        match done {
            Ok(_) => info!(%user, command = ?command, "Home Assistant changed a person's controls"),
            Err(e) => warn!(%user, error = %e, "Home Assistant command not applied"),
        }
        self.sync_people(mem, false).await;
        Some(())
    }
}
