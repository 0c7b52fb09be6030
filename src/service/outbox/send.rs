//! One delivery, from the ring's phones to its published outcome: the phones go out part by
//! part (a big doorbell's first phones while the rest is read), each part split by platform
//! and, for iPhones, app topic ([`Share`]), every share through its transport ([`Route`]) at
//! the same time; outcomes are recorded in batches; retries follow [`Retries`].

use super::round::{Next, Retries, Round, Seqs};
use super::{
    Latency, Outbox, OutboxSettings, RingReport, Transport, Transports, DETAIL_LIMIT, FLUSH_EVERY, STORE_RETRY_MAX,
    STORE_RETRY_MIN, TRIM_AFTER,
};
use crate::domain::household::{Delivery, Level, Profile};
use crate::domain::timing::SendTiming;
use crate::domain::{Message, Notice, Outcome, PhoneState, Platform, Reason, RingTiming, Target};
use crate::net::fcm::FcmClient;
use crate::net::webpush::WebPushClient;
use crate::service::metrics::Metrics;
use crate::store::household::House;
use crate::store::recipients::{Recipients, Topics};
use crate::store::rings::OutcomeRow;
use crate::store::rings::RingJob;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What one delivery's rounds share: the transports and settings it started with.
struct Sending<'a> {
    transports: &'a Transports,
    settings: &'a OutboxSettings,
    notice: Arc<Notice>,
    payload: Bytes,
    stop: &'a CancellationToken,
    pending: &'a Pending,
    /// What the household's rules say for this ring, per phone (`None`: nobody has rules).
    rules: Option<Rulebook>,
    /// The APNs payload of each other profile of this ring, built once.
    payloads: std::sync::Mutex<HashMap<Profile, Bytes>>,
}

/// The household's decisions for one ring, made once per person: each distinct way of
/// alerting gets a small index (0: as usual), so that sorting a ring's phones by rule costs
/// one look-up per phone and no copy of any profile.
pub(super) struct Rulebook {
    house: Arc<House>,
    /// Index -> how those phones are alerted; `None`: not at all (muted). `ways[0]` is the usual.
    ways: Vec<Option<Tone>>,
    /// The people whose phones are not alerted as usual, and their way's index.
    person_way: HashMap<i64, u8>,
}

impl Rulebook {
    pub(super) fn new(house: Arc<House>, decisions: HashMap<i64, Delivery>) -> Rulebook {
        let mut ways = vec![Some(Tone::default())];
        let mut person_way = HashMap::new();
        for (user, d) in decisions {
            let way = match d {
                Delivery::Send(profile) => Some(Tone { profile, silenced: false }),
                Delivery::Silent => Some(Tone { profile: Profile::silent(), silenced: true }),
                Delivery::Skip => None,
            };
            let i = match ways.iter().position(|w| *w == way) {
                Some(i) => i,
                None => {
                    ways.push(way);
                    ways.len() - 1
                }
            };
            if i != 0 {
                // At most one way per person, and few people: the index fits.
                person_way.insert(user, u8::try_from(i).unwrap_or(u8::MAX));
            }
        }
        Rulebook { house, ways, person_way }
    }

    /// The index of the way each of `targets` is alerted. A ring's phones are in phone-id
    /// order, as the house's list is: one pass over both (any other order still works, by
    /// searching).
    fn ways(&self, targets: &[Target]) -> Vec<u8> {
        let pu = &self.house.phone_user;
        let mut j = 0;
        let mut last = i64::MIN;
        targets
            .iter()
            .map(|t| {
                if t.phone_id < last {
                    j = pu.partition_point(|(p, _)| *p < t.phone_id);
                }
                last = t.phone_id;
                while j < pu.len() && pu[j].0 < t.phone_id {
                    j += 1;
                }
                match pu.get(j) {
                    Some((p, user)) if *p == t.phone_id => self.person_way.get(user).copied().unwrap_or(0),
                    _ => 0,
                }
            })
            .collect()
    }
}

/// How a share of phones is alerted: the profile its payload is built for, and whether a
/// delivery is recorded `silenced` (quiet hours or a mute in `silent` mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(super) struct Tone {
    profile: Profile,
    silenced: bool,
}

/// A delivery's phones in the metrics' pending gauge: what is not settled by the end (the
/// ring expired, or the daemon stopped) is taken off when it ends, whichever way it ends.
struct Pending {
    metrics: Option<Arc<Metrics>>,
    left: AtomicUsize,
}

impl Pending {
    fn new(metrics: Option<Arc<Metrics>>, phones: usize) -> Pending {
        if let Some(m) = &metrics {
            m.delivery_started(phones);
        }
        Pending { metrics, left: AtomicUsize::new(phones) }
    }

    /// `phones` more to deliver (a big doorbell's part, read while the first were sent).
    fn more(&self, phones: usize) {
        self.left.fetch_add(phones, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.more_pending(phones);
        }
    }

    fn settled(&self, n: usize) {
        let before = self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(l - n.min(l)));
        let n = n.min(before.unwrap_or(0));
        if let Some(m) = &self.metrics {
            m.settled(n);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.settled(*self.left.get_mut());
            m.delivery_ended();
        }
    }
}

/// What one delivery (or one chunk of it) measures of itself as it goes.
#[derive(Debug, Default)]
struct Progress {
    latency: Latency,
    timing: RingTiming,
    /// The widest batch's lanes, for "full width".
    lanes: usize,
}

impl Progress {
    /// Adds what a chunk measured.
    fn merge(&mut self, other: Progress) {
        let (l, o) = (&mut self.latency, other.latency);
        l.first = RingTiming::earliest(l.first, o.first);
        l.all = RingTiming::latest(l.all, o.all);
        let (t, o_t) = (&mut self.timing, other.timing);
        t.first_request = RingTiming::earliest(t.first_request, o_t.first_request);
        t.last_answer = RingTiming::latest(t.last_answer, o_t.last_answer);
        // The pool is at full width when the widest batch had all its lanes open.
        if other.lanes > self.lanes || (other.lanes == self.lanes && t.full_width.is_none()) {
            self.lanes = other.lanes;
            t.full_width = o_t.full_width;
        } else if other.lanes == self.lanes {
            t.full_width = RingTiming::earliest(t.full_width, o_t.full_width);
        }
    }

    /// Adds what a round's send told.
    fn sent(&mut self, sent: SendTiming) {
        let t = &mut self.timing;
        t.first_request = RingTiming::earliest(t.first_request, sent.first_request);
        if self.lanes == 0 {
            // The first round's: retries do not widen anything.
            self.lanes = sent.lanes;
            t.full_width = sent.full_width;
        }
    }
}

/// The phones of a part that share a [`Share`]: their targets (a range of a list) and their
/// places in the job.
pub(super) type Group = (Share, Arc<Vec<Target>>, std::ops::Range<usize>, Seqs);

/// A part whose iPhones fall into at most this many runs of one way each is sent as runs of
/// its shared list (people's phones are mostly consecutive: a user's phones are added
/// together); more runs than that, and each way gets a list of its own.
const MAX_RUNS: usize = 64;

/// Which kind of phones a [`Group`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Share {
    /// iPhones of one app topic (`None`: `apns.topic`).
    Apns(Option<String>, Tone),
    Fcm(Tone),
    WebPush(Tone),
    /// Phones whose person's rules say not to send (of any platform).
    Muted(Platform),
}

/// One share of a ring and the transport that sends it.
pub(super) enum Route {
    Apns(Transport, Arc<Message>),
    Fcm(FcmClient, Arc<Notice>),
    WebPush(WebPushClient, Arc<Notice>),
    /// Phones of a platform this configuration has no transport for: each fails at once.
    Unconfigured(Platform),
    /// Phones not sent by their person's choice: each is `muted` at once.
    Muted(Platform),
}

impl Route {
    /// iPhones' route: one message for all of them, under the doorbell's collapse id (a newer
    /// ring, or an answer's replacement, takes the place of the older one on the phone);
    /// passive ones at priority 5, as Apple asks for notifications that need not wake.
    pub(super) fn apns(
        t: &Transports,
        topic: Arc<str>,
        payload: Bytes,
        expires_at: i64,
        doorbell: &str,
        passive: bool,
    ) -> Route {
        let msg = Message {
            topic,
            payload,
            expiration: (expires_at / 1000).max(0) as u64,
            collapse_id: doorbell.into(),
            priority: if passive { 5 } else { 10 },
        };
        Route::Apns(t.apns.clone(), Arc::new(msg))
    }

    /// Android phones' route: FCM, or each fails at once without `[fcm]`.
    pub(super) fn fcm(t: &Transports, notice: Arc<Notice>) -> Route {
        t.fcm.as_ref().map_or(Route::Unconfigured(Platform::Fcm), |c| Route::Fcm(c.clone(), notice))
    }

    /// Browsers' route: Web Push, or each fails at once without `[webpush]`.
    pub(super) fn webpush(t: &Transports, notice: Arc<Notice>) -> Route {
        t.webpush.as_ref().map_or(Route::Unconfigured(Platform::Webpush), |c| Route::WebPush(c.clone(), notice))
    }

    /// The platform of the phones it sends to (the metrics' `platform` label).
    fn platform(&self) -> Platform {
        match self {
            Route::Apns(..) => Platform::Apns,
            Route::Fcm(..) => Platform::Fcm,
            Route::WebPush(..) => Platform::Webpush,
            Route::Unconfigured(p) | Route::Muted(p) => *p,
        }
    }

    /// Sends to `targets[range]`. Only iPhones come as a part of a list (see [`split`]); the
    /// others' lists are their own, whole.
    pub(super) async fn send(
        &self,
        targets: Arc<Vec<Target>>,
        range: std::ops::Range<usize>,
        out: mpsc::UnboundedSender<(usize, Outcome)>,
        stop: &CancellationToken,
    ) -> SendTiming {
        match self {
            Route::Apns(t, msg) => return t.send(msg.clone(), targets, range, out, stop).await,
            Route::Fcm(c, notice) => c.send(notice.clone(), targets, out, stop).await,
            Route::WebPush(c, notice) => c.send(notice.clone(), targets, out, stop).await,
            Route::Unconfigured(p) => {
                for i in range {
                    let _ = out.send((i, Outcome::Failed { reason: Reason::Unconfigured(*p), status: 0 }));
                }
            }
            Route::Muted(_) => {
                for i in range {
                    let _ = out.send((i, Outcome::Muted));
                }
            }
        }
        SendTiming::default()
    }
}

/// What the metrics count outcomes by.
type Alike<'a> = (Platform, crate::domain::Environment, PhoneState, Option<&'a Reason>);

/// A part of a ring's phones: `phones[from..]`, the first of them at place `first_seq` in
/// the job (the places of the others follow).
pub(super) struct Part {
    pub(super) phones: Recipients,
    pub(super) from: usize,
    pub(super) first_seq: usize,
}

/// A part's phones by share: one group per platform, and per app topic for iPhones (nearly
/// always one group). A part of one share of iPhones hands its targets over as they are,
/// shared, not copied: a 120,000-phone ring holds each token once. Every other group is a
/// list of its own, from its start.
pub(super) fn split(part: Part, rules: Option<&Rulebook>) -> Vec<Group> {
    let Part { phones, from, first_seq } = part;
    let topic_of = |k: usize| match &phones.topics {
        Topics::Same(t) => t.clone(),
        Topics::PerPhone(ts) => ts[k].clone(),
    };
    let usual = [Some(Tone::default())];
    let ways: &[Option<Tone>] = rules.map_or(&usual, |r| &r.ways);
    let share = |platform: Platform, topic: Option<String>, way: usize| match (&ways[way], platform) {
        (None, p) => Share::Muted(p),
        (Some(tone), Platform::Apns) => Share::Apns(topic, tone.clone()),
        (Some(tone), Platform::Fcm) => Share::Fcm(tone.clone()),
        (Some(tone), Platform::Webpush) => Share::WebPush(tone.clone()),
    };
    let mine = &phones.targets[from.min(phones.len())..];
    let Some(first) = mine.first() else { return Vec::new() };
    // Each phone's way, once (one look-up in a small map when someone has rules).
    let way: Vec<u8> = match rules {
        Some(r) if ways.len() > 1 => r.ways(mine),
        _ => Vec::new(),
    };
    let way_at = |k: usize| way.get(k).map_or(0, |w| usize::from(*w));
    let iphones_of_one_app = first.platform() == Platform::Apns
        && matches!(phones.topics, Topics::Same(_))
        && mine.iter().all(|t| t.platform() == Platform::Apns);
    if iphones_of_one_app {
        // Runs of one way each, over the shared list: nearly always one run, the whole part.
        let mut runs: Vec<(usize, usize)> = vec![(0, 0)];
        for k in 1..way.len() {
            if way[k] != way[k - 1] {
                runs.push((k, k));
                if runs.len() > MAX_RUNS {
                    break;
                }
            }
        }
        if runs.len() <= MAX_RUNS {
            let ends: Vec<usize> = runs.iter().skip(1).map(|r| r.0).chain([mine.len()]).collect();
            return runs
                .iter()
                .zip(ends)
                .map(|(&(start, _), end)| {
                    let s = share(Platform::Apns, topic_of(from), way_at(start));
                    (s, phones.targets.clone(), from + start..from + end, Seqs::Run((first_seq + start) as i64))
                })
                .collect();
        }
    }
    // Grouped by platform, app topic and way; each group sized once before it is filled.
    type Key = (Platform, Option<String>, usize);
    let key = |k: usize, t: &Target| {
        let topic = if t.platform() == Platform::Apns { topic_of(from + k) } else { None };
        (t.platform(), topic, way_at(k))
    };
    let mut sizes: HashMap<Key, usize> = HashMap::new();
    for (k, t) in mine.iter().enumerate() {
        *sizes.entry(key(k, t)).or_default() += 1;
    }
    let mut by_share: HashMap<Key, (Vec<Target>, Vec<i64>)> =
        sizes.into_iter().map(|(k, n)| (k, (Vec::with_capacity(n), Vec::with_capacity(n)))).collect();
    for (k, t) in mine.iter().enumerate() {
        let (targets, seqs) = by_share.get_mut(&key(k, t)).expect("sized above");
        targets.push(t.clone());
        seqs.push((first_seq + k) as i64);
    }
    by_share
        .into_iter()
        .map(|((platform, topic, way), (targets, seqs))| {
            let all = 0..targets.len();
            (share(platform, topic, way), Arc::new(targets), all, Seqs::List(seqs))
        })
        .collect()
}

impl Outbox {
    /// Delivers one ring until every phone has a final answer, the ring expires, or `stop`
    /// (then the unanswered phones stay pending in the database for the next start).
    /// `timing` holds when its press was received and recorded (a resumed ring: neither).
    pub async fn deliver(&self, mut job: RingJob, timing: RingTiming, stop: CancellationToken) -> Option<RingReport> {
        let (transports, settings) = self.current.read().expect("outbox lock").clone();
        let payload = match crate::codec::apns_payload::profile_payload(
            &job.doorbell_id,
            &job.doorbell_name,
            &job.ring_id,
            &Profile::default(),
            &settings.sound,
        ) {
            Ok(p) => p,
            Err(e) => {
                warn!(ring = %job.ring_id, error = %e, "payload too large: ring not sent");
                return None;
            }
        };
        let mut progress = Progress { timing, ..Default::default() };
        progress.timing.recipients = job.read_at_us;
        let pending = Pending::new(self.metrics.clone(), job.phones.len());
        let notice = Arc::new(Notice {
            ring_id: job.ring_id.as_str().into(),
            doorbell_id: job.doorbell_id.as_str().into(),
            doorbell_name: job.doorbell_name.as_str().into(),
            pressed_at: job.pressed_at,
            expires_at: job.expires_at,
            profile: Profile::default(),
            answered_by: None,
        });
        let rules = job.house.clone().map(|house| {
            let decisions = house.decisions(&job.doorbell_id, job.pressed_at.max(job.received_at), &settings.timezone);
            Rulebook::new(house, decisions)
        });
        let sending = Sending {
            transports: &transports,
            settings: &settings,
            notice,
            payload,
            stop: &stop,
            pending: &pending,
            rules,
            payloads: Default::default(),
        };
        // The phones read with the ring; or (a big doorbell) the first ones as soon as the store
        // has read them, then the rest: each part is sent as it comes. A part is the phones of
        // a list from a place in it (the place of each is its seq).
        let (tx, mut chunks) = mpsc::unbounded_channel::<Part>();
        if !job.unread {
            let _ = tx.send(Part { phones: std::mem::take(&mut job.phones), from: 0, first_seq: 0 });
        }
        let reader = job.unread.then(|| (job.ring_id.clone(), job.doorbell_id.clone(), tx.clone()));
        drop(tx);
        let store = self.store.clone();
        let read = async move {
            let (ring, doorbell, tx) = reader?;
            let shown = ring.clone();
            let early = tx.clone();
            // An early part (the list's phones from `at`) is sent as a list of its own.
            let read = store.run(move |s| {
                s.read_recipients(&ring, &doorbell, &mut |phones, at| {
                    let _ = early.send(Part { phones, from: 0, first_seq: at });
                })
            });
            match read.await {
                Ok((all, sent)) => {
                    let _ = tx.send(Part { phones: all, from: sent, first_seq: sent });
                    Some(crate::domain::now_us())
                }
                Err(e) => {
                    warn!(ring = %shown, error = %e, "cannot read the ring's phones: it stays pending for the next start");
                    None
                }
            }
        };
        let send = async {
            let mut running = FuturesUnordered::new();
            let (mut all_sent, mut read_done) = (true, false);
            let mut merged = Progress::default();
            while !read_done || !running.is_empty() {
                tokio::select! {
                    // cancel-safe: recv() loses no chunk
                    c = chunks.recv(), if !read_done => match c {
                        Some(part) if part.phones.len() > part.from => {
                            if job.unread {
                                pending.more(part.phones.len() - part.from);
                            }
                            running.push(self.send_part(&job, part, &sending));
                        }
                        Some(_) => {}
                        None => read_done = true,
                    },
                    // cancel-safe: FuturesUnordered::next keeps the other futures
                    Some((sent, p)) = running.next() => {
                        all_sent &= sent;
                        merged.merge(p);
                    }
                }
            }
            (all_sent, merged)
        };
        let (read_at, (all_sent, merged)) = tokio::join!(read, send);
        let read_ok = !job.unread || read_at.is_some();
        progress.timing.recipients = RingTiming::earliest(progress.timing.recipients, read_at);
        progress.merge(merged);
        if !(read_ok && all_sent) {
            return None; // stopping (or the phones could not be read): the rest stays pending
        }
        self.finish(&job, progress, &stop).await
    }

    /// Closes a delivered ring and publishes its outcome.
    async fn finish(&self, job: &RingJob, mut progress: Progress, stop: &CancellationToken) -> Option<RingReport> {
        let ring = job.ring_id.clone();
        let latency = progress.latency;
        let summary = self.persist(&job.ring_id, "close the ring", stop, move || {
            let ring = ring.clone();
            move |s: &mut crate::store::Store| s.finish_ring(&ring, latency)
        });
        let summary = summary.await?;
        self.expect(summary.phones.max(0) as usize);
        let results = if summary.phones as usize <= DETAIL_LIMIT {
            let ring = job.ring_id.clone();
            self.store.run(move |s| s.ring_phones(&ring, DETAIL_LIMIT)).await.ok()
        } else {
            None
        };
        progress.timing.finished = Some(crate::domain::now_us());
        let report =
            RingReport { summary, latency_ms: latency, timing_us: progress.timing.report(), results, answer: None };
        if let Some(m) = &self.metrics {
            if let Some(first) = progress.timing.first_request {
                m.first_request((first - progress.timing.received) / 1000);
            }
            m.answers(latency.first, latency.all);
            m.ring_finished(report.summary.state);
        }
        info!(
            ring = %job.ring_id, doorbell = %job.doorbell_id, phones = report.summary.phones, delivered = report.summary.delivered,
            failed = report.summary.failed, pruned = report.summary.pruned, expired = report.summary.expired,
            first_ms = latency.first, all_ms = latency.all, "ring done"
        );
        self.publish(&report);
        if report.summary.phones as usize >= TRIM_AFTER {
            crate::domain::mem::release_free_memory();
        }
        Some(report)
    }

    /// Sends a part of a ring's phones, every share at once, each until settled. False if
    /// stopped.
    async fn send_part(&self, job: &RingJob, part: Part, sending: &Sending<'_>) -> (bool, Progress) {
        let shares = split(part, sending.rules.as_ref()).into_iter().map(|(share, targets, range, seqs)| {
            let silenced = matches!(&share, Share::Apns(_, t) | Share::Fcm(t) | Share::WebPush(t) if t.silenced);
            let route = self.route(job, share, sending);
            async move {
                let mut progress = Progress::default();
                let round = Round::over(targets, range, seqs);
                let settled = self.send_until_settled(job, (&route, silenced), round, sending, &mut progress).await;
                (settled, progress)
            }
        });
        let mut progress = Progress::default();
        let mut settled = true;
        for (ok, p) in futures_util::future::join_all(shares).await {
            settled &= ok;
            progress.merge(p);
        }
        (settled, progress)
    }

    /// The transport (and what it sends) for a share of `job`.
    fn route(&self, job: &RingJob, share: Share, sending: &Sending<'_>) -> Route {
        let t = sending.transports;
        let notice = |tone: &Tone| {
            if *tone == Tone::default() {
                sending.notice.clone()
            } else {
                Arc::new(Notice { profile: tone.profile.clone(), ..(*sending.notice).clone() })
            }
        };
        match share {
            Share::Apns(topic, tone) => {
                let payload = if tone == Tone::default() {
                    sending.payload.clone()
                } else {
                    // One payload per profile of the ring, however many runs share it.
                    let mut built = sending.payloads.lock().expect("payloads lock");
                    built
                        .entry(tone.profile.clone())
                        .or_insert_with(|| {
                            crate::codec::apns_payload::profile_payload(
                                &job.doorbell_id,
                                &job.doorbell_name,
                                &job.ring_id,
                                &tone.profile,
                                &sending.settings.sound,
                            )
                            .unwrap_or_else(|_| sending.payload.clone())
                        })
                        .clone()
                };
                let topic = topic.map(Arc::from).unwrap_or_else(|| sending.settings.topic.clone());
                Route::apns(t, topic, payload, job.expires_at, &job.doorbell_id, tone.profile.level == Level::Passive)
            }
            Share::Fcm(tone) => Route::fcm(t, notice(&tone)),
            Share::WebPush(tone) => Route::webpush(t, notice(&tone)),
            Share::Muted(p) => Route::Muted(p),
        }
    }

    /// Sends, records, and retries until nothing is left to retry. Returns false if stopped.
    /// The accounting is [`Round`]'s and the retry decisions [`Retries`]'; this only does the
    /// I/O: the transport, the store, the clock.
    async fn send_until_settled(
        &self,
        job: &RingJob,
        (route, silenced): (&Route, bool),
        mut round: Round,
        sending: &Sending<'_>,
        progress: &mut Progress,
    ) -> bool {
        let stop = sending.stop;
        let mut retries = Retries::new(sending.settings.retry);
        // The expiry on the runtime's clock, so waits and the deadline agree (and tests can
        // pause time).
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((job.expires_at - crate::domain::now_ms()).max(0) as u64);
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let send = route.send(round.targets().clone(), round.range(), tx, stop);
            let (sent, ()) =
                tokio::join!(send, self.record(job, &mut round, rx, (sending, route.platform(), silenced), progress));
            progress.sent(sent);
            let end = round.end();
            if end.unheard > 0 {
                warn!(ring = %job.ring_id, phones = end.unheard, "the transport gave no outcome for some phones: retrying them");
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let jitter = rand::thread_rng().gen::<f64>();
            match retries.after(&end, remaining, jitter) {
                Next::Done => return true,
                Next::GiveUp => {
                    warn!(ring = %job.ring_id, phones = end.retry.len(), "ring expires before another retry: giving up on the rest");
                    if let Some(m) = &self.metrics {
                        for t in end.retry.iter() {
                            m.notification(t.platform(), t.environment(), PhoneState::Expired, Some(&Reason::Expired));
                        }
                    }
                    sending.pending.settled(end.retry.len());
                    return true; // finish_ring marks them expired
                }
                Next::Retry { wait, attempt } => {
                    warn!(ring = %job.ring_id, phones = end.retry.len(), attempt, wait_ms = wait.as_millis() as u64, "retrying");
                    tokio::select! {
                        // cancel-safe: only a timer
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return false,
                    }
                }
            }
            round = Round::new(end.retry, 0, end.seqs);
        }
    }

    /// Takes one round's outcomes as the transport hands them over and records them in
    /// batches, until the transport is done; then writes what is left, however long the
    /// store needs (unless stopping).
    async fn record(
        &self,
        job: &RingJob,
        round: &mut Round,
        mut rx: mpsc::UnboundedReceiver<(usize, Outcome)>,
        (sending, platform, silenced): (&Sending<'_>, Platform, bool),
        progress: &mut Progress,
    ) {
        let stop = sending.stop;
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        // Answers are taken up to 256 at a time: one wake-up of this task per burst.
        let mut got = Vec::with_capacity(256);
        loop {
            tokio::select! {
                // cancel-safe: recv_many() loses no message when another arm wins
                n = rx.recv_many(&mut got, 256) => {
                    if n == 0 {
                        break;
                    }
                    if progress.latency.first.is_none() {
                        progress.latency.first = Some(crate::domain::now_ms() - job.received_at);
                    }
                    for (i, outcome) in got.drain(..) {
                        if let (Outcome::Retry { reason, .. }, Some(m)) = (&outcome, &self.metrics) {
                            m.retry(platform, Some(reason));
                        }
                        // Delivered quietly, by the person's own rules: recorded as such.
                        let outcome = if silenced && outcome == Outcome::Delivered { Outcome::Silenced } else { outcome };
                        round.on_outcome(i, outcome);
                    }
                    if round.batch_full() {
                        self.flush(&job.ring_id, round, sending.pending).await;
                    }
                },
                // cancel-safe: a missed tick only delays a flush
                _ = tick.tick() => {
                    self.flush(&job.ring_id, round, sending.pending).await;
                }
            }
        }
        // The channel closes as the last answer is handed over: that moment is "all".
        if round.answered() {
            progress.latency.all = Some(crate::domain::now_ms() - job.received_at);
            progress.timing.last_answer = Some(crate::domain::now_us());
        }
        let mut wait = STORE_RETRY_MIN;
        while !self.flush(&job.ring_id, round, sending.pending).await {
            tokio::select! {
                // cancel-safe: only a timer
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => break,
            }
            wait = (wait * 2).min(STORE_RETRY_MAX);
        }
    }

    /// Counts recorded outcomes in the metrics, each under its phone's platform.
    fn count(&self, rows: &[OutcomeRow], kept: &[i64]) {
        let Some(m) = &self.metrics else { return };
        // Alike outcomes counted together: a batch of 2,048 deliveries is one count.
        let mut alike: Vec<(Alike<'_>, u64)> = Vec::new();
        for row in rows {
            let state = match row.outcome.state() {
                PhoneState::Pruned if kept.contains(&row.phone_id) => PhoneState::Failed,
                s => s,
            };
            let key = (row.address.platform(), row.address.environment(), state, row.outcome.reason());
            match alike.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => alike.push((key, 1)),
            }
        }
        for ((platform, env, state, reason), n) in alike {
            m.notifications_n(platform, env, state, reason, n);
        }
    }

    /// Writes the round's unwritten outcomes; false if the store refused them (then the round
    /// keeps them for the next try).
    /// Writes the round's unwritten outcomes; false if the store refused them (then the round
    /// keeps them for the next try). What is written is counted: each phone's outcome as the
    /// store recorded it (a prune of a phone registered again is a failure).
    async fn flush(&self, ring_id: &str, round: &mut Round, pending: &Pending) -> bool {
        if round.unwritten() == 0 {
            return true;
        }
        let items = Arc::new(round.take_rows());
        let ring = ring_id.to_string();
        let n = items.len();
        let shared = items.clone();
        match self.store.run(move |s| s.record_outcomes(&ring, &shared)).await {
            Ok(r) => {
                if r.pruned + r.kept > 0 {
                    info!(ring = %ring_id, pruned = r.pruned, kept_reregistered = r.kept, "stale tokens handled");
                }
                self.count(&items, &r.kept_phones);
                pending.settled(n);
                true
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.outbox_store_fault();
                }
                warn!(ring = %ring_id, outcomes = n, error = %e, "cannot record outcomes yet: kept for the next try");
                round.keep_rows(Arc::try_unwrap(items).unwrap_or_else(|a| (*a).clone()));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::household::{Level, Profile};

    fn part(n: u32) -> Part {
        let targets: Vec<Target> = (1..=n)
            .map(|i| {
                let mut b = [0u8; 32];
                b[0] = i as u8;
                Target::apns(i64::from(i), crate::domain::Token::Inline(b), crate::domain::Environment::Production)
            })
            .collect();
        Part { phones: Recipients { targets: Arc::new(targets), topics: Topics::Same(None) }, from: 0, first_seq: 10 }
    }

    /// Phones 1..=5 of users 1..=5 (phone i belongs to user i); `d` decides for the listed people.
    fn rules(d: &[(i64, Delivery)]) -> Rulebook {
        let mut house = House::default();
        for (u, _) in d {
            house.people.insert(*u, Default::default());
            house.phone_user.push((*u, *u));
        }
        house.phone_user.sort_unstable();
        Rulebook::new(Arc::new(house), d.iter().cloned().collect())
    }

    fn seqs(s: &Seqs) -> Vec<i64> {
        match s {
            Seqs::Run(a) => vec![*a],
            Seqs::List(v) => v.clone(),
        }
    }

    #[test]
    fn without_rules_or_with_one_way_for_all_the_list_is_shared_not_copied() {
        let p = part(5);
        let list = p.phones.targets.clone();
        let groups = split(p, None);
        assert_eq!(groups.len(), 1);
        assert!(Arc::ptr_eq(&groups[0].1, &list) && matches!(groups[0].3, Seqs::Run(10)));
        // Everyone alerted `active`: still one share, the same list, with that profile.
        let active = Profile { level: Level::Active, ..Profile::default() };
        let everyone: Vec<(i64, Delivery)> = (1..=5).map(|u| (u, Delivery::Send(active.clone()))).collect();
        let p = part(5);
        let list = p.phones.targets.clone();
        let groups = split(p, Some(&rules(&everyone)));
        assert_eq!(groups.len(), 1);
        assert!(Arc::ptr_eq(&groups[0].1, &list));
        assert_eq!(groups[0].0, Share::Apns(None, Tone { profile: active, silenced: false }));
    }

    /// Phones out of phone-id order (not a ring's order, but possible) still find their way.
    #[test]
    fn ways_do_not_depend_on_the_order_of_the_phones() {
        let r = rules(&[(2, Delivery::Skip), (4, Delivery::Silent)]);
        let p = part(5);
        let mut shuffled: Vec<Target> = p.phones.targets.iter().rev().cloned().collect();
        shuffled.swap(0, 2);
        let ids: Vec<i64> = shuffled.iter().map(|t| t.phone_id).collect();
        let want: Vec<u8> = ids.iter().map(|id| r.ways(&p.phones.targets)[(*id - 1) as usize]).collect();
        assert_eq!(r.ways(&shuffled), want);
        assert_eq!(r.ways(&p.phones.targets).iter().filter(|w| **w != 0).count(), 2);
    }

    /// More runs than [`MAX_RUNS`]: each way a list of its own.
    #[test]
    fn interleaved_ways_get_lists_of_their_own() {
        let n = 2 * MAX_RUNS as u32 + 2;
        let muted: Vec<(i64, Delivery)> =
            (1..=i64::from(n)).filter(|u| u % 2 == 0).map(|u| (u, Delivery::Skip)).collect();
        let mut groups = split(part(n), Some(&rules(&muted)));
        groups.sort_by_key(|g| seqs(&g.3));
        assert_eq!(groups.len(), 2);
        let (usual, skipped) = (&groups[0], &groups[1]);
        assert_eq!(usual.0, Share::Apns(None, Tone::default()));
        assert_eq!(skipped.0, Share::Muted(Platform::Apns));
        assert_eq!(
            usual.1[usual.2.clone()].iter().map(|t| t.phone_id).collect::<Vec<_>>(),
            (1..=i64::from(n)).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&skipped.3), (11..10 + i64::from(n)).step_by(2).collect::<Vec<_>>());
    }

    #[test]
    fn phones_are_grouped_by_their_persons_way_with_their_places() {
        let r = rules(&[(2, Delivery::Skip), (4, Delivery::Silent), (5, Delivery::Send(Profile::default()))]);
        let mut groups = split(part(5), Some(&r));
        groups.sort_by_key(|g| seqs(&g.3));
        let got: Vec<(Share, Vec<i64>, Vec<i64>)> = groups
            .into_iter()
            .map(|(s, t, range, q)| (s, t[range].iter().map(|t| t.phone_id).collect(), seqs(&q)))
            .collect();
        // Runs of the shared list, each with the place of its first phone.
        let silent = Tone { profile: Profile::silent(), silenced: true };
        assert_eq!(
            got,
            vec![
                (Share::Apns(None, Tone::default()), vec![1], vec![10]),
                (Share::Muted(Platform::Apns), vec![2], vec![11]),
                (Share::Apns(None, Tone::default()), vec![3], vec![12]),
                (Share::Apns(None, silent), vec![4], vec![13]),
                (Share::Apns(None, Tone::default()), vec![5], vec![14]),
            ]
        );
    }
}
