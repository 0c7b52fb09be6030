//! The I/O of one lane: carries out what the pure [`Lane`] state decides (send a request, get
//! a connection, follow the provider token) and feeds it what happened (answers, refusals, the
//! stall timer). The rules live in `codec::apns_http2::lane`; this loop only does the I/O.

use super::pool::Conn;
use super::request::{answer, start, Prepared, ReqError};
use super::Http2Client;
use crate::codec::apns_http2::lane::{Lane, Queue, Stall, Step};
use crate::codec::apns_http2::Effect;
use crate::domain::timing::SendTiming;
use crate::domain::{now_us, Environment, Message, Outcome, Target};
use crate::net::apns::auth::JwtMinter;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use h2::client::SendRequest;
use http::HeaderValue;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A lane gives the other tasks a turn after this many requests handed over in a row.
const YIELD_EVERY: usize = 64;

/// One environment's share of a batch, shared by its lanes.
pub(super) struct Batch {
    pub env: Environment,
    pub msg: Arc<Message>,
    pub targets: Arc<Vec<Target>>,
    pub queue: Queue,
    pub out: mpsc::UnboundedSender<(usize, Outcome)>,
    pub stop: CancellationToken,
    /// How many lanes carry the batch.
    pub lanes: usize,
    pub stamps: Stamps,
    /// Why a lane could not get a connection (the first reason), for what is left unsent.
    pub failure: std::sync::Mutex<Option<String>>,
}

/// When a batch sent its first request and had every lane's window open (µs since the
/// epoch; 0 until then), for the ring's timing.
#[derive(Default)]
pub(super) struct Stamps {
    first_request: AtomicI64,
    wide: AtomicUsize,
    full_width: AtomicI64,
}

impl Stamps {
    pub fn timing(&self) -> SendTiming {
        let at = |a: &AtomicI64| Some(a.load(Ordering::Acquire)).filter(|&t| t > 0);
        SendTiming { first_request: at(&self.first_request), full_width: at(&self.full_width), lanes: 0 }
    }
}

impl Batch {
    fn report(&self, phone: usize, outcome: Outcome) {
        let _ = self.out.send((phone, outcome));
    }

    fn sent_first(&self) {
        let _ = self.stamps.first_request.compare_exchange(0, now_us(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// One more lane has its window open.
    fn lane_wide(&self) {
        if self.stamps.wide.fetch_add(1, Ordering::AcqRel) + 1 == self.lanes {
            self.stamps.full_width.store(now_us(), Ordering::Release);
        }
    }
}

/// A lane's copy of the provider token. Requests clone the lane's own header, so the lanes of
/// a big ring do not all bump one shared refcount per request; the copy follows the minter's
/// current token when the lane state asks ([`Step::Bearer`]).
struct LaneBearer {
    /// The minter's token this copies (compared by pointer).
    source: Arc<str>,
    header: HeaderValue,
}

impl LaneBearer {
    /// The minter's current token; `true` if it differs from `previous`.
    fn follow(minter: &JwtMinter, previous: Option<LaneBearer>) -> (LaneBearer, bool) {
        let (current, header) = minter.bearer_header();
        match previous {
            Some(p) if Arc::ptr_eq(&p.source, &current) => (p, false),
            _ => (
                LaneBearer {
                    header: HeaderValue::from_bytes(header.as_bytes()).expect("a header value is a header value"),
                    source: current,
                },
                true,
            ),
        }
    }
}

/// The lane's connection and its request handle (cloning `SendRequest` takes h2's lock, so a
/// lane keeps its own).
struct Wire {
    conn: Arc<Conn>,
    send: SendRequest<Bytes>,
}

impl Http2Client {
    /// One connection's share of a batch: keeps its window of streams full until the shared
    /// queue runs out, on slot `k` of the environment's pool.
    pub(super) async fn lane(&self, batch: Arc<Batch>, k: usize) {
        let mut prep = match Prepared::new(batch.env, &batch.msg) {
            Ok(p) => p,
            Err(why) => {
                warn!(error = %why, "cannot build the request headers");
                // Nothing is claimed yet: the queue's rest goes back from `send_env`.
                return;
            }
        };
        let settings = &self.inner.settings;
        let mut lane = Lane::new(
            batch.targets.len(),
            self.inner.minter.is_some(),
            settings.max_streams as usize,
            settings.request_timeout,
        );
        let mut wire: Option<Wire> = None;
        let mut inflight = FuturesUnordered::new();
        let mut bearer: Option<LaneBearer> = None;
        let stall = tokio::time::sleep(settings.request_timeout);
        tokio::pin!(stall);
        // For the ring's timing: this lane sent its first request, had its window open.
        let (mut sent, mut wide) = (false, false);
        let mut since_yield = 0;
        loop {
            if batch.stop.is_cancelled() {
                lane.stop();
            }
            // Carry out decisions until the lane has to wait for answers.
            loop {
                if let Some(w) = &wire {
                    if w.conn.alive() {
                        lane.set_limit(self.window(&w.conn));
                    } else {
                        lane.on_closed();
                    }
                }
                match lane.next(&batch.queue) {
                    Step::Send(i) => {
                        let w = wire.as_mut().expect("the lane sends only on a connection");
                        match start(&mut w.send, &prep, batch.targets[i].token()).await {
                            Ok(resp) => {
                                let gen = lane.bearer_gen();
                                inflight.push(async move { (i, answer(resp).await, gen) });
                                if !sent {
                                    sent = true;
                                    batch.sent_first();
                                }
                                // Handing over a request never waits while the window has
                                // room: let the connection's driver write what is queued, and
                                // the other lanes start, every run of requests.
                                since_yield += 1;
                                if since_yield >= YIELD_EVERY {
                                    since_yield = 0;
                                    tokio::task::yield_now().await;
                                }
                            }
                            Err(ReqError::Refused) => {
                                w.conn.closed.store(true, Ordering::Release);
                                lane.on_refused(i);
                            }
                            Err(ReqError::Failed(why)) => batch.report(i, lane.on_failed(i, why)),
                        }
                    }
                    Step::Bearer => {
                        let minter = self.inner.minter.as_ref().expect("only token auth follows a token");
                        let (b, changed) = LaneBearer::follow(minter, bearer.take());
                        prep.set_bearer(Some(&b.header));
                        bearer = Some(b);
                        lane.on_bearer(changed);
                    }
                    Step::Connect => match self.slot(batch.env, k).await {
                        Ok(c) => {
                            if let Some(old) = &wire {
                                debug!(old = old.conn.id, new = c.id, "lane moved to a fresh connection");
                            }
                            lane.on_connected(c.confirmed.load(Ordering::Acquire));
                            wire = Some(Wire { send: c.send.clone(), conn: c });
                            if !wide && lane.confirmed() {
                                wide = true;
                                batch.lane_wide();
                            }
                        }
                        Err(why) => {
                            let mut failure = batch.failure.lock().expect("failure lock");
                            if failure.is_none() {
                                warn!(environment = %batch.env, error = %why, "cannot connect to APNs");
                                *failure = Some(why.clone());
                            }
                            lane.on_connect_failed(why);
                        }
                    },
                    Step::Wait => break,
                    Step::Finish => {
                        // Claimed but not sent: back to the outbox (pending when stopping).
                        for (i, outcome) in lane.leftovers(&batch.queue) {
                            batch.report(i, outcome);
                        }
                        return;
                    }
                }
            }
            if lane.clock_stopped() {
                lane.start_clock(Instant::now().into_std());
            }
            tokio::select! {
                biased;
                // cancel-safe: FuturesUnordered::next keeps the other futures
                Some(first) = inflight.next() => {
                    // Every answer that is ready now, then one look at the clock for all.
                    let mut next = Some(first);
                    while let Some((i, answered, gen)) = next {
                        match answered {
                            Ok((status, _, body)) => {
                                let judged = lane.on_answer(i, status, &body, gen);
                                if let Some(effect) = judged.effect {
                                    self.carry_out(effect, bearer.as_ref());
                                }
                                if judged.outcome != Outcome::Delivered {
                                    if let Some(r) = judged.outcome.reason() {
                                        debug!(token = %batch.targets[i].token().short(), status, reason = %r, "APNs refused a notification");
                                    }
                                }
                                batch.report(i, judged.outcome);
                            }
                            Err(ReqError::Refused) => {
                                if let Some(w) = &wire {
                                    w.conn.closed.store(true, Ordering::Release);
                                }
                                lane.on_refused(i);
                            }
                            Err(ReqError::Failed(why)) => {
                                debug!(error = %why, "request failed");
                                batch.report(i, lane.on_failed(i, why));
                            }
                        }
                        next = inflight.next().now_or_never().flatten();
                    }
                    if lane.end_batch(Instant::now().into_std()) {
                        if let Some(w) = &wire {
                            w.conn.confirmed.store(true, Ordering::Release);
                            w.conn.last_used.store(crate::domain::now_ms(), Ordering::Relaxed);
                        }
                        if !wide {
                            wide = true;
                            batch.lane_wide();
                        }
                    }
                },
                // cancel-safe: the timer is only re-armed or acted on here
                () = &mut stall, if lane.in_flight() > 0 => match lane.on_stall(Instant::now().into_std()) {
                    Stall::Rearm(due) => stall.as_mut().reset(Instant::from_std(due)),
                    Stall::TimedOut(lost) => {
                        if let Some(w) = &wire {
                            warn!(conn = w.conn.id, requests = lost.len(), "no answer from APNs within the request timeout: replacing the connection");
                            w.conn.closed.store(true, Ordering::Release);
                        }
                        inflight = FuturesUnordered::new();
                        for (i, outcome) in lost {
                            batch.report(i, outcome);
                        }
                    }
                },
            }
        }
    }

    /// What an answer asks of the client besides its outcome.
    fn carry_out(&self, effect: Effect, bearer: Option<&LaneBearer>) {
        match effect {
            Effect::RefreshToken => {
                if let (Some(m), Some(b)) = (&self.inner.minter, bearer) {
                    if !m.refresh_after_rejection(&b.source) {
                        warn!("Apple says the provider token expired although it is young: check the gateway's clock");
                    }
                }
            }
            Effect::Stop(reason) => {
                let mut stopped = self.inner.stopped.lock().expect("stopped lock");
                if stopped.is_none() {
                    warn!(reason = %reason, "APNs refused our credentials: the HTTP/2 transport stops until restart");
                    *stopped = Some(reason);
                }
            }
        }
    }
}
