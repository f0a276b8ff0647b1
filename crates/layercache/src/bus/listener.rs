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
        if !self.subscribed && self.subscriber.is_connected() {
            // Connected between the degraded start and the reconnect stream above: join now
            // (a later connection shows on that stream).
            if let Some(inner) = self.inner.upgrade() {
                self.join(&inner).await;
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
                    BusEvent::Lagged(missed) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), missed, "bus listener lagged; messages lost");
                        self.lost(&inner, FlushReason::Lag);
                    }
                    BusEvent::Reconnected => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        self.join(&inner).await;
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

    /// After a (re)connection: subscribes, then — messages published while we were away are
    /// lost — forgets the generations we knew (Redis may even have restarted empty), re-reads
    /// them, and flushes.
    async fn join(&self, inner: &Arc<dyn Receiver>) {
        self.resubscribe(&**inner).await;
        inner.forget_generations();
        self.lost(inner, FlushReason::Reconnect);
        self.shared().healthy = true;
        inner.clone().repair();
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
