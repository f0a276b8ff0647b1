//! The listener task: reads the subscriber's message stream in our own loop, applies
//! invalidations with in-memory work only, and turns every sign of lost messages into a flush.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::{broadcast::error::RecvError, watch};

use super::{
    message::{self, Rejected},
    BusState, FlushReason, InstanceId, Receiver,
};

/// Peers not heard from for this many heartbeat timeouts are forgotten.
const PEER_EXPIRY_FACTOR: u32 = 10;
/// Every this many heartbeat ticks, every region's generation is re-read (which also renews
/// its TTL in Redis).
const GENERATION_REFRESH_TICKS: u64 = 30;

/// The subscriber's event streams. Taken before the channel is subscribed (`Events::of`), so
/// that no message published after the subscription is missed while the listener starts: a
/// broadcast receiver sees only what is sent after it exists, and a message lost before the
/// first one heard from its sender is not detectable as a gap.
pub(crate) struct Events {
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    errors:
        tokio::sync::broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
}

impl Events {
    /// The subscriber's streams from now on.
    pub(crate) fn of(subscriber: &fred::prelude::Client) -> Self {
        Self {
            messages: subscriber.message_rx(),
            reconnects: subscriber.reconnect_rx(),
            errors: subscriber.error_rx(),
        }
    }
}

pub(crate) struct Listener {
    /// The cache it serves.
    pub(crate) inner: Weak<dyn Receiver>,
    /// The subscriber's streams, taken before it subscribed.
    pub(crate) events: Option<Events>,
    pub(crate) subscriber: fred::prelude::Client,
    pub(crate) channel: String,
    pub(crate) id: InstanceId,
    pub(crate) shared: Arc<Mutex<BusState>>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) shutdown: watch::Receiver<()>,
    /// Whether the subscription was made before the listener started (not so after a degraded
    /// start: then it is made when the subscriber connects).
    pub(crate) subscribed: bool,
    /// The subscriber's connection task, awaited when the listener stops.
    pub(crate) subscriber_task: Option<fred::types::ConnectHandle>,
    /// Woken when a peer acknowledges one of our messages.
    pub(crate) acked: Arc<tokio::sync::Notify>,
}

impl Listener {
    fn shared(&self) -> std::sync::MutexGuard<'_, BusState> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) async fn run(mut self) {
        let Events {
            mut messages,
            mut reconnects,
            mut errors,
        } = self
            .events
            .take()
            .unwrap_or_else(|| Events::of(&self.subscriber));
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
                m = messages.recv() => match m {
                    Ok(msg) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        self.handle(&inner, &msg.value, &mut last_echo).await;
                    }
                    Err(RecvError::Lagged(missed)) => {
                        let Some(inner) = self.inner.upgrade() else { break };
                        tracing::warn!(cache.name = %inner.name(), missed, "bus listener lagged; messages lost");
                        self.lost(&inner, FlushReason::Lag);
                    }
                    Err(RecvError::Closed) => break,
                },
                r = reconnects.recv() => {
                    if matches!(r, Err(RecvError::Closed)) { break }
                    let Some(inner) = self.inner.upgrade() else { break };
                    self.join(&inner).await;
                    last_echo = Instant::now();
                    connected = true;
                }
                e = errors.recv() => {
                    match e {
                        Err(RecvError::Closed) => break,
                        Err(RecvError::Lagged(_)) => {}
                        Ok((error, _server)) => {
                            let Some(inner) = self.inner.upgrade() else { break };
                            tracing::warn!(cache.name = %inner.name(), error = %error, "bus subscriber connection error");
                            if connected {
                                connected = false;
                                inner.flush(FlushReason::Disconnect);
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    ticks += 1;
                    let Some(inner) = self.inner.upgrade() else { break };
                    self.on_tick(&inner, last_echo, ticks);
                }
            }
        }
        let within = self.command_timeout.max(Duration::from_secs(1));
        let _ = tokio::time::timeout(within, self.subscriber.quit()).await;
        if let Some(task) = self.subscriber_task.take() {
            crate::l2::end_task(task, within).await;
        }
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
            let attempt = tokio::time::timeout(
                self.command_timeout,
                self.subscriber.subscribe(self.channel.as_str()),
            )
            .await;
            match attempt {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!(cache.name = %inner.name(), error = %e, "bus re-subscribe failed; retrying");
                }
                Err(_) => {
                    tracing::warn!(cache.name = %inner.name(), "bus re-subscribe timed out; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    fn on_tick(&self, inner: &Arc<dyn Receiver>, last_echo: Instant, ticks: u64) {
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
        inner.clone().repair();
    }

    async fn handle(
        &self,
        inner: &Arc<dyn Receiver>,
        value: &fred::types::Value,
        last_echo: &mut Instant,
    ) {
        let counters = inner.counters();
        counters.bus_received.incr();
        let decoded = match value.as_bytes() {
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
            let recovered = {
                let mut shared = self.shared();
                let was = shared.healthy;
                shared.healthy = true;
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
