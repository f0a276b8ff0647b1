//! The backplane seam, receiving half: how the bus listener hears what other instances
//! announce, whatever carries it (Redis pub/sub in `l2/subscriber.rs`, an in-process channel in
//! `memory.rs`). The sending half is on the remote store
//! ([`RemoteStore::publish`](crate::remote::RemoteStore::publish)), so that a write and its
//! announcement can travel together; the protocol on top (sequence numbers, gaps, heartbeats,
//! acknowledgements, flushes) is the bus's and knows no transport.

use std::time::Duration;

use crate::{error::Result, remote::BoxFuture};

/// What a subscription delivers to the listener.
#[derive(Debug)]
pub(crate) enum BusEvent {
    /// A message on the channel (not necessarily ours: the listener checks).
    Message(Vec<u8>),
    /// A message that was not bytes (not ours).
    Foreign,
    /// The listener fell behind: this many messages were lost.
    Lagged(u64),
    /// The connection came back (re-subscribing is the listener's job).
    Reconnected,
    /// The connection failed (repeats while it stays down).
    Failed(String),
    /// The transport is gone for good.
    Closed,
    /// Server-assisted tracking: Redis reports these keys modified (by any client but this
    /// instance's tracked connection).
    Invalidated(Vec<String>),
    /// Server-assisted tracking: Redis reports its database emptied (`FLUSHALL`, `FLUSHDB`).
    ServerFlushed,
    /// Server-assisted tracking: the tracked connection came back (its tracking is off until
    /// turned on again).
    TrackerReconnected,
    /// Server-assisted tracking: the tracked connection failed (repeats while it stays down).
    TrackerFailed(String),
}

/// One subscription to the cache's bus channel. Made before the channel is subscribed, so
/// that nothing published after [`subscribe`](Self::subscribe) is missed while the listener
/// starts.
pub(crate) trait Subscriber: Send + Sync + 'static {
    /// The next event. Cancel-safe: dropping the future loses nothing.
    fn next_event(&mut self) -> BoxFuture<'_, BusEvent>;
    /// Subscribes to the channel (again, after a reconnection), waiting at most `within`.
    fn subscribe(&self, within: Duration) -> BoxFuture<'_, Result<()>>;
    /// Whether the subscription's connection is up.
    fn is_connected(&self) -> bool;
    /// Closes the subscription (bounded in time).
    fn close(&mut self, within: Duration) -> BoxFuture<'_, ()>;
    /// Whether the transport also reports writes through server-assisted tracking (then
    /// [`track`](Self::track) and [`tracking_intact`](Self::tracking_intact) do something).
    ///
    /// Default: `false`.
    fn tracks(&self) -> bool {
        false
    }
    /// Turns tracking on (again) for the tracked connection, pointed at this subscription's
    /// current connection, waiting at most `within` for each command.
    fn track(&self, _within: Duration) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Whether the tracked connection's tracking is on and pointed at this subscription's
    /// current connection (an error when Redis did not answer).
    fn tracking_intact(&self, _within: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
}

/// Where the listener runs, chosen by the transport (Redis: a task, or a thread of its own
/// that also runs the subscriber's connection; in memory: a task).
pub(crate) trait ListenerHome: Send {
    /// Runs `listener` there; the returned task ends when it does.
    fn run(self: Box<Self>, listener: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()>;
}

/// Runs the listener as a task on the current runtime.
#[cfg(feature = "memory")]
#[derive(Debug)]
pub(crate) struct OnRuntime;

#[cfg(feature = "memory")]
impl ListenerHome for OnRuntime {
    fn run(self: Box<Self>, listener: BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(listener)
    }
}
