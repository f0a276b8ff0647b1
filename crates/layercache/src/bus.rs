//! The invalidation bus: keeps the in-process tiers of every instance coherent through Redis
//! pub/sub.
//!
//! Every write or invalidation is announced on one channel per cache (`{cache}:m2:bus`) as a
//! small message — sender id, per-sender sequence number, and what changed (a key, a region's
//! new generation, a tag, or everything), never a value. Each instance drops its own copy on
//! receipt and ignores its own messages.
//!
//! Pub/sub is at-most-once, so the bus treats every sign of loss as lost coherence and flushes
//! the in-process tier (policy: [`CoherenceLossPolicy`]):
//!
//! | event | how it is seen | reason counted |
//! |---|---|---|
//! | the subscriber connection failed | fred's error stream | [`FlushReason::Disconnect`] |
//! | it reconnected (after re-subscribing) | fred's reconnect stream | [`FlushReason::Reconnect`] |
//! | the listener fell behind the message buffer | the buffer reports `Lagged` | [`FlushReason::Lag`] |
//! | a sender's sequence number skipped | per-sender sequence tracking | [`FlushReason::Gap`] |
//! | our own heartbeat did not come back in time | self-echo watchdog | [`FlushReason::HeartbeatMissed`] |
//! | it came back after being missed | self-echo watchdog | [`FlushReason::Recovered`] |
//! | someone called `clear()` | an `all` message | [`FlushReason::Clear`] |
//! | with tracking: the tracked connection failed, reconnected, or its tracking was found off | its error and reconnect streams, `CLIENT TRACKINGINFO` each tick | [`FlushReason::TrackingLost`] |
//! | with tracking: Redis emptied its database (`FLUSHALL`) | a null invalidation | [`FlushReason::ServerFlush`] |
//!
//! Every instance publishes a heartbeat (an empty message) each
//! [`bus_heartbeat_interval`](crate::LayerCacheBuilder::bus_heartbeat_interval).
//!
//! An `insert` or `invalidate` carries its own announcement: the write script's `EVALSHA` and the
//! message's `PUBLISH` are pipelined on the data connection, so both reach Redis in one round
//! trip and Redis runs the `PUBLISH` right after the write (a receiver never drops its copy
//! before the new state is in Redis). Other announcements (region generations, tags, clear)
//! and heartbeats go through one publisher task, which batches whatever is queued into one
//! message. Either way a message's sequence number is taken, and its command handed to the
//! connection, under one lock, so one sender's messages reach Redis in sequence
//! order and receivers' gap detection holds.
//! With [`server_assisted_tracking`](crate::LayerCacheBuilder::server_assisted_tracking), Redis
//! reports the writes of data keys itself (on the subscriber's connection, in order with the
//! bus's messages), and plain writes publish nothing.
//! The listener applies a message with in-memory work only (it never waits on Redis per
//! message). It runs as a task on the runtime that built the cache, or, with
//! [`bus_thread`](crate::LayerCacheBuilder::bus_thread), on a thread of its own together with
//! its subscriber connection.

pub(crate) mod listener;
pub(crate) mod message;
pub(crate) mod publisher;
mod wire;

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, ErrorKind, Result};

pub(crate) use message::Entry;

pub use crate::coherence::{CoherenceLossPolicy, FlushReason, InstanceId};
pub(crate) use crate::sequencer::Sequencer;
pub use wire::{channel, read_message, NotAMessage, WireEntry, WireMessage};

/// What the bus delivers to, and asks of, the cache it serves (the engine implements it). The
/// bus knows nothing else of the cache: this is the seam a second backplane plugs into from
/// the other side.
pub(crate) trait Receiver: Send + Sync + 'static {
    /// The cache's name, for logs.
    fn name(&self) -> &str;
    /// The cache's counters (messages received and dropped).
    fn counters(&self) -> &crate::stats::Counters;
    /// Applies what another instance announced (in-memory work only).
    fn apply<'a>(
        &'a self,
        entries: &'a [Entry],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
    /// Drops the in-process tier for `reason` (subject to the coherence-loss policy).
    fn flush(&self, reason: FlushReason);
    /// Coherence may have been lost: flushes for `reason` and re-reads every region's
    /// generation in the background (a lost message may have been a generation move).
    fn lost(self: Arc<Self>, reason: FlushReason);
    /// Forgets every region's generation (after a reconnection: Redis may have restarted
    /// empty); they are re-read before Redis is used for the region again.
    fn forget_generations(&self);
    /// Re-reads region generations in the background: all of them, or only the unknown ones.
    fn refresh_generations(self: Arc<Self>, all: bool);
    /// Runs the pending write repairs in the background, if Redis answers.
    fn repair(self: Arc<Self>);
    /// Queues an acknowledgement of message `seq` to instance `to` (never waits).
    fn acknowledge(&self, to: [u8; 16], seq: u64);
    /// Writes this instance's presence record in the background (see
    /// [`LayerCache::instances_in_redis`](crate::LayerCache::instances_in_redis)).
    fn report_presence(self: Arc<Self>);
}

/// A snapshot of the bus as one instance sees it, from
/// [`LayerCache::bus_status`](crate::LayerCache::bus_status).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusStatus {
    /// This instance's id.
    pub instance_id: InstanceId,
    /// Whether this instance's own heartbeats are coming back (its subscription works).
    pub healthy: bool,
    /// The sequence number of the last message this instance published (heartbeats
    /// included).
    pub published_seq: u64,
    /// For every other instance heard from recently: the sequence number of its last message
    /// whose invalidations this instance has applied.
    pub peers: Vec<(InstanceId, u64)>,
    /// How long this instance's most recent message it heard back took to come back through
    /// Redis (the bus's round trip: peers hear a message about as soon); `None` before the
    /// first.
    pub echo: Option<Duration>,
    /// With [`server_assisted_tracking`](crate::LayerCacheBuilder::server_assisted_tracking):
    /// whether Redis is tracking this instance's connection now (`false` while it is being
    /// turned on again after a reconnection); `None` without it.
    pub tracking: Option<bool>,
}

impl BusStatus {
    /// The last applied sequence number from `peer`, if it has been heard from.
    pub fn peer_seq(&self, peer: InstanceId) -> Option<u64> {
        self.peers
            .iter()
            .find(|(id, _)| *id == peer)
            .map(|(_, s)| *s)
    }
}

/// Bus settings from the builder.
#[derive(Debug, Clone)]
pub(crate) struct BusSettings {
    pub(crate) loss_policy: CoherenceLossPolicy,
    /// A peer heard from within this long is live (acknowledged writes wait for it).
    pub(crate) heartbeat_timeout: Duration,
}

/// State the listener updates and `bus_status` reads.
#[derive(Debug, Default)]
pub(crate) struct BusState {
    pub(crate) healthy: bool,
    pub(crate) peers: HashMap<[u8; 16], (u64, std::time::Instant)>,
    /// For each peer: the highest sequence number of ours it has acknowledged.
    pub(crate) acks: HashMap<[u8; 16], u64>,
    /// The round trip of the last own message heard back.
    pub(crate) echo: Option<Duration>,
    /// Whether server-assisted tracking is on (`None`: not configured).
    pub(crate) tracking: Option<bool>,
}

/// One queued announcement.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) entry: Entry,
    pub(crate) ack: oneshot::Sender<Result<u64>>,
}

/// The cache's side of the bus: the queue to the publisher and the shared status.
#[derive(Debug)]
pub(crate) struct BusHandle {
    pub(crate) id: InstanceId,
    /// Sequence numbers, shared with the publisher (and the last one published).
    pub(crate) sequencer: Arc<Sequencer>,
    pub(crate) tx: mpsc::Sender<Outgoing>,
    pub(crate) shared: Arc<Mutex<BusState>>,
    pub(crate) settings: BusSettings,
    /// Signalled by `shutdown()`, or dropped with the cache: the bus tasks see it and stop.
    pub(crate) shutdown: watch::Sender<()>,
    /// Woken when an acknowledgement arrives.
    pub(crate) acked: Arc<tokio::sync::Notify>,
}

impl BusHandle {
    /// Queues an announcement and waits until it was published (or failed), at most `within`.
    pub(crate) async fn announce(&self, entry: Entry, within: Duration) -> Result<u64> {
        let (ack, done) = oneshot::channel();
        let queued = tokio::time::timeout(within, self.tx.send(Outgoing { entry, ack })).await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::new(ErrorKind::Closed, "the bus publisher stopped")),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the bus publish queue stayed full",
                ))
            }
        }
        match tokio::time::timeout(within, done).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::new(ErrorKind::Closed, "the bus publisher stopped")),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                "publishing the invalidation took too long",
            )),
        }
    }

    /// Waits until every live peer (heard from within the heartbeat timeout) has acknowledged
    /// our message `seq`, at most `within`; else names the peers that have not.
    pub(crate) async fn wait_for_acks(&self, seq: u64, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let missing: Vec<InstanceId> = {
                let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                self.live(&shared)
                    .filter(|id| shared.acks.get(&id.0).is_none_or(|a| *a < seq))
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut missing = missing;
                missing.sort();
                return Err(Error::unacknowledged_by(missing, within));
            }
        }
    }

    /// The live peers (heard from within the heartbeat timeout).
    pub(crate) fn live_peers(&self) -> Vec<InstanceId> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live: Vec<InstanceId> = self.live(&shared).collect();
        live.sort();
        live
    }

    fn live<'s>(&self, shared: &'s BusState) -> impl Iterator<Item = InstanceId> + 's {
        let timeout = self.settings.heartbeat_timeout;
        shared
            .peers
            .iter()
            .filter(move |(_, (_, seen))| seen.elapsed() < timeout)
            .map(|(id, _)| InstanceId(*id))
    }

    /// Tells the bus tasks to stop.
    pub(crate) fn stop(&self) {
        self.shutdown.send_replace(());
    }

    pub(crate) fn status(&self) -> BusStatus {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut peers: Vec<(InstanceId, u64)> = shared
            .peers
            .iter()
            .map(|(id, (seq, _))| (InstanceId(*id), *seq))
            .collect();
        peers.sort();
        BusStatus {
            instance_id: self.id,
            healthy: shared.healthy,
            published_seq: self.sequencer.published.load(Ordering::Acquire),
            peers,
            echo: shared.echo,
            tracking: shared.tracking,
        }
    }
}
