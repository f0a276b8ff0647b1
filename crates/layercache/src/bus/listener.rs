//! The listener task: reads the subscriber's message stream in our own loop, applies
//! invalidations with in-memory work only, and turns every sign of lost messages into a flush.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{
    message::{self, Rejected},
    BusState, FlushReason, InstanceId, Receiver,
};
use crate::backplane::{BusEvent, Subscriber};

/// Peers not heard from for this many heartbeat timeouts are forgotten.
const PEER_EXPIRY_FACTOR: u32 = 10;
/// Every this many heartbeat ticks, every region's generation is re-read (which also renews
/// its TTL in Redis).
const GENERATION_REFRESH_TICKS: u64 = 30;

/// Every how many heartbeat ticks the instance writes its presence record (at the first).
const PRESENCE_TICKS: u64 = 5;

pub(crate) struct Listener {
    /// The cache it serves.
    pub(crate) inner: Weak<dyn Receiver>,
    /// The subscription, made before the channel was subscribed.
    pub(crate) subscriber: Box<dyn Subscriber>,
    pub(crate) id: InstanceId,
    pub(crate) shared: Arc<Mutex<BusState>>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) shutdown: watch::Receiver<()>,
    /// Whether the subscription was made before the listener started (not so after a degraded
    /// start: then it is made when the subscriber connects).
    pub(crate) subscribed: bool,
    /// Woken when a peer acknowledges one of our messages.
    pub(crate) acked: Arc<tokio::sync::Notify>,
    /// Our sequence numbers and when each recent message was sent (for the echo delay).
    pub(crate) sequencer: Arc<crate::sequencer::Sequencer>,
}

impl Listener {
    fn shared(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_echo = Instant::now();
        let mut ticks = 0u64;
        // Errors repeat while the server is down (every reconnect attempt): flush on the
        // first one only, and again once reconnected.
        let mut connected = self.subscribed;
        // Whether the tracked connection's tracking is known to be on (the build turned it on
        // when it subscribed; a failure there is repaired by the first tick).
        let mut tracking = self.subscribed;
        if !self.subscribed && self.subscriber.is_connected() {
            // Connected between the degraded start and the reconnect stream above: join now
            // (a later connection shows on that stream).
            if let Some(inner) = self.inner.upgrade() {
                tracking = self.publish_tracking(self.join(&inner).await);
                last_echo = Instant::now();
                connected = true;
            }
        }
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                event = self.subscriber.next_event() => match event {
                    BusEvent::Message(bytes) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        self.handle(&inner, Some(&bytes), &mut last_echo).await;
                    }
                    BusEvent::Foreign => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        self.handle(&inner, None, &mut last_echo).await;
                    }
                    BusEvent::Invalidated(keys) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracked_writes(&*inner, &keys).await;
                    }
                    BusEvent::ServerFlushed => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), "Redis reports its database emptied");
                        inner.forget_generations();
                        self.lost(&inner, FlushReason::ServerFlush);
                    }
                    BusEvent::TrackerReconnected => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracking = self.publish_tracking(self.retrack(&inner).await);
                    }
                    BusEvent::TrackerFailed(error) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), error = %error, "tracked connection error");
                        if tracking {
                            tracking = self.publish_tracking(false);
                            inner.flush(FlushReason::TrackingLost);
                        }
                    }
                    BusEvent::Lagged(missed) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), missed, "bus listener lagged; messages lost");
                        self.lost(&inner, FlushReason::Lag);
                    }
                    BusEvent::Reconnected => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracking = self.publish_tracking(self.join(&inner).await);
                        last_echo = Instant::now();
                        connected = true;
                    }
                    BusEvent::Failed(error) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), error = %error, "bus subscriber connection error");
                        if connected {
                            connected = false;
                            inner.flush(FlushReason::Disconnect);
                        }
                    }
                    BusEvent::Closed => break,
                },
                _ = tick.tick() => {
                    ticks += 1;
                    let Some(inner) = self.inner.upgrade() else { break };
                    if self.subscriber.tracks() && connected {
                        tracking = self.publish_tracking(self.check_tracking(&inner, tracking).await);
                    }
                    let broken = self.on_tick(&inner, last_echo, ticks);
                    if broken && connected {
                        // Connected, yet our own heartbeats do not come back: the server may
                        // have dropped the subscription without dropping the connection (a
                        // cluster moving the channel's slot ends its sharded subscribers).
                        // Subscribe again, once per tick until they do.
                        if let Err(e) = self.subscriber.subscribe(self.command_timeout).await {
                            tracing::debug!(cache.name = %inner.name(), error = %e, "bus re-subscribe failed");
                        }
                    }
                }
            }
        }
        let within = self.command_timeout.max(Duration::from_secs(1));
        self.subscriber.close(within).await;
    }

    /// After a (re)connection: subscribes, points tracking (if any) at the new connection,
    /// then — messages published while we were away are lost — forgets the generations we
    /// knew (Redis may even have restarted empty), re-reads them, and flushes. Returns whether
    /// tracking is on.
    async fn join(&self, inner: &Arc<dyn Receiver>) -> bool {
        self.resubscribe(&**inner).await;
        let tracking = self.track(&**inner).await;
        inner.forget_generations();
        self.lost(inner, FlushReason::Reconnect);
        self.shared().healthy = true;
        inner.clone().repair();
        tracking
    }

    /// Shows whether tracking is on in [`BusStatus`](super::BusStatus) (with tracking only);
    /// returns `on`.
    fn publish_tracking(&self, on: bool) -> bool {
        if self.subscriber.tracks() {
            self.shared().tracking = Some(on);
        }
        on
    }

    /// Turns tracking on (again): true when it is. Writes of other instances made while it
    /// was off were not reported, so every caller flushes afterwards (never before: a value
    /// read between the flush and tracking's return would not hear of a write).
    async fn track(&self, inner: &dyn Receiver) -> bool {
        match self.subscriber.track(self.command_timeout).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(cache.name = %inner.name(), error = %e, "turning on server-assisted tracking failed; retried at the next heartbeat tick");
                false
            }
        }
    }

    /// The tracked connection came back, or its tracking was found off: turns it on, then
    /// flushes. Returns whether tracking is on.
    async fn retrack(&self, inner: &Arc<dyn Receiver>) -> bool {
        let on = self.track(&**inner).await;
        self.lost(inner, FlushReason::TrackingLost);
        on
    }

    /// Once per tick with tracking: whether the tracked connection's tracking is still on and
    /// pointed here (a reconnection whose event was missed, a `CLIENT TRACKING OFF` by someone
    /// else, a subscriber connection replaced); if not, turns it on again and flushes. When
    /// Redis does not answer, flushes once (as for a failed connection). Returns whether
    /// tracking is on.
    async fn check_tracking(&self, inner: &Arc<dyn Receiver>, on: bool) -> bool {
        match self.subscriber.tracking_intact(self.command_timeout).await {
            Ok(true) => true,
            Ok(false) => {
                if on {
                    tracing::warn!(cache.name = %inner.name(), "server-assisted tracking found off; turning it on again");
                }
                self.retrack(inner).await
            }
            Err(e) => {
                tracing::debug!(cache.name = %inner.name(), error = %e, "reading the tracking state failed");
                if on {
                    inner.flush(FlushReason::TrackingLost);
                }
                false
            }
        }
    }

    /// Flushes for a loss of coherence and re-reads every region's generation in the
    /// background (a lost message may have been a generation bump).
    fn lost(&self, inner: &Arc<dyn Receiver>, reason: FlushReason) {
        inner.clone().lost(reason);
    }

    async fn resubscribe(&self, inner: &dyn Receiver) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.subscriber.subscribe(self.command_timeout).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(cache.name = %inner.name(), error = %e, "bus re-subscribe failed; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The tick's housekeeping; returns whether the subscription is presumed broken (our own
    /// heartbeats have not come back for the heartbeat timeout).
    fn on_tick(&self, inner: &Arc<dyn Receiver>, last_echo: Instant, ticks: u64) -> bool {
        let broken = last_echo.elapsed() > self.heartbeat_timeout;
        let missed = {
            let mut shared = self.shared();
            let expiry = self.heartbeat_timeout * PEER_EXPIRY_FACTOR;
            shared.peers.retain(|_, (_, seen)| seen.elapsed() < expiry);
            if shared.healthy && last_echo.elapsed() > self.heartbeat_timeout {
                shared.healthy = false;
                true
            } else {
                false
            }
        };
        if missed {
            tracing::warn!(cache.name = %inner.name(), "own bus heartbeat missed; subscription presumed broken");
            inner.flush(FlushReason::HeartbeatMissed);
        }
        let all = ticks % GENERATION_REFRESH_TICKS == 0;
        inner.clone().refresh_generations(all);
        if ticks % PRESENCE_TICKS == 0 {
            inner.clone().report_presence();
        }
        inner.clone().repair();
        broken
    }

    async fn handle(
        &self,
        inner: &Arc<dyn Receiver>,
        bytes: Option<&[u8]>,
        last_echo: &mut Instant,
    ) {
        let counters = inner.counters();
        counters.bus_received.incr();
        let decoded = match bytes {
            Some(bytes) => message::decode(bytes),
            None => Err(Rejected::Foreign),
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(reason) => {
                counters.bus_dropped.incr();
                tracing::debug!(cache.name = %inner.name(), ?reason, "dropped a message that is not ours on the bus channel");
                return;
            }
        };
        if msg.sender == self.id.0 {
            *last_echo = Instant::now();
            let echo = self.sequencer.sent_at(msg.seq).map(|t| t.elapsed());
            #[cfg(feature = "metrics")]
            if let Some(echo) = echo {
                crate::metrics::record_echo(inner.name(), echo);
            }
            let recovered = {
                let mut shared = self.shared();
                let was = shared.healthy;
                shared.healthy = true;
                shared.echo = echo.or(shared.echo);
                !was
            };
            if recovered {
                tracing::info!(cache.name = %inner.name(), "own bus heartbeat is back");
                self.lost(inner, FlushReason::Recovered);
            }
            return;
        }
        let gap = {
            let shared = self.shared();
            match shared.peers.get(&msg.sender) {
                Some((last, _)) => msg.seq > last.saturating_add(1),
                None => false,
            }
        };
        if gap {
            tracing::warn!(cache.name = %inner.name(), sender = %InstanceId(msg.sender), seq = msg.seq, "bus sequence gap; messages lost");
            self.lost(inner, FlushReason::Gap);
        }
        inner.apply(&msg.entries).await;
        let mut acked = false;
        {
            let mut shared = self.shared();
            let entry = shared
                .peers
                .entry(msg.sender)
                .or_insert((0, Instant::now()));
            entry.0 = entry.0.max(msg.seq);
            entry.1 = Instant::now();
            for e in &msg.entries {
                if let message::Entry::Ack { to, seq } = e {
                    if *to == self.id.0 {
                        let a = shared.acks.entry(msg.sender).or_insert(0);
                        *a = (*a).max(*seq);
                        acked = true;
                    }
                }
            }
        }
        if acked {
            self.acked.notify_waiters();
        }
        // Applied: acknowledge it if asked (queued to the publisher, never awaited here; if
        // the queue is full the sender times out and names this instance).
        if msg.entries.contains(&message::Entry::AckPlease) {
            inner.acknowledge(msg.sender, msg.seq);
        }
    }
}

/// Applies the data keys Redis reports written (server-assisted tracking) as key
/// invalidations; other keys under the prefix are ignored.
async fn tracked_writes(inner: &dyn Receiver, keys: &[String]) {
    let counters = inner.counters();
    counters.bus_received.incr();
    let entries: Vec<message::Entry> = keys
        .iter()
        .filter_map(|k| {
            let (region, key) = crate::key::parse_data_key_entry(inner.name(), k)?;
            Some(message::Entry::Key {
                region: region.to_owned(),
                key,
            })
        })
        .collect();
    if !entries.is_empty() {
        inner.apply(&entries).await;
    }
}
