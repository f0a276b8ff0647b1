//! The bus options of [`LayerCacheBuilder`]: heartbeats, buffer, the listener's thread, and
//! what a loss of coherence costs.

use std::time::Duration;

use super::LayerCacheBuilder;
use crate::coherence::CoherenceLossPolicy;

/// Which pub/sub carries the invalidation bus on a Redis Cluster
/// ([`LayerCacheBuilder::cluster_bus`]). On one server there is only one.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterBus {
    /// `PUBLISH`/`SUBSCRIBE`: the cluster forwards every message to every node, so each
    /// message costs every node some work, and a subscriber may sit on any node.
    Plain,
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis 7): the message stays on the shard that owns the
    /// channel's slot (one channel per cache, so one shard carries the cache's bus), and the
    /// subscriber connects there.
    #[default]
    Sharded,
}

impl LayerCacheBuilder {
    /// On a Redis Cluster, which pub/sub carries the invalidation bus (see [`ClusterBus`] and
    /// `docs/SCALING.md` for the measured delivery latency of each). Ignored on one server.
    ///
    /// Default: [`ClusterBus::Sharded`] (on this machine's six-node cluster: delivery p99
    /// 0.3–0.8 ms, against 2.5–4.1 ms on plain pub/sub, which each message crosses the cluster
    /// bus to reach the subscriber's node).
    pub fn cluster_bus(mut self, bus: ClusterBus) -> Self {
        self.cluster_bus = bus;
        self
    }

    /// How often each instance publishes a heartbeat on the invalidation bus (and checks that
    /// its own came back). The bus exists whenever Redis is configured.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 1 second.
    pub fn bus_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.bus_heartbeat_interval = interval;
        self
    }

    /// How long an instance's own heartbeat may take to come back before it presumes its
    /// subscription broken and flushes L1 (see [`CoherenceLossPolicy`]). At least twice the
    /// interval.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 3 seconds.
    pub fn bus_heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.bus_heartbeat_timeout = timeout;
        self
    }

    /// How many received bus messages may wait for the listener. A listener that falls
    /// further behind loses messages, notices (`Lagged`) and flushes L1.
    ///
    /// The room is allocated up front (its cost and how the default was sized:
    /// [`DEFAULT_BUS_BUFFER`](crate::DEFAULT_BUS_BUFFER)): raise it only if
    /// [`LayerCache::flushes`](crate::LayerCache::flushes) counts any for
    /// [`FlushReason::Lag`](crate::FlushReason::Lag).
    ///
    /// At most [`MAX_QUEUE`](crate::MAX_QUEUE) (2^20).
    ///
    /// Default: [`DEFAULT_BUS_BUFFER`](crate::DEFAULT_BUS_BUFFER), 512 messages (each carries
    /// up to 1024 invalidations).
    pub fn bus_buffer(mut self, messages: usize) -> Self {
        self.bus_buffer = messages;
        self
    }

    /// Runs the bus listener (and its subscriber connection) on a thread of its own, with a
    /// runtime of its own, instead of as a task on the runtime that calls `build()`. On a busy
    /// runtime an arriving invalidation then does not wait its turn behind the service's tasks:
    /// on the service workload of `benches/loadgen` (2 cores, saturated) it cut stale reads by
    /// 15–30 % in every run, with throughput and CPU per operation within the runs' spread; see
    /// `docs/BENCHMARKS.md`. Costs one thread per cache (mostly asleep). `false` runs the
    /// listener as a task on the caller's runtime.
    ///
    /// Default: `true`.
    pub fn bus_thread(mut self, enabled: bool) -> Self {
        self.bus_thread = enabled;
        self
    }

    /// Server-assisted tracking: Redis itself tells every instance of each write of the cache's
    /// data keys (`CLIENT TRACKING … BCAST PREFIX {cache}:f{format}: NOLOOP`, reported to the
    /// bus subscriber's connection), instead of the writer publishing a bus message per
    /// written key. What it changes:
    ///
    /// - A plain `insert`, `invalidate` or batch write sends no `PUBLISH`, and the writer's own
    ///   listener is not woken by its own write (`NOLOOP`): on this project's machine a lone
    ///   `insert` went from ~2.15× to ~1.6× a bare `SET` (`docs/BENCHMARKS.md`).
    /// - Writes by **any** Redis client are reported: a `DEL` or `SET` of a data key by
    ///   another program, a key's expiry or eviction, and `FLUSHALL`/`FLUSHDB` (every instance
    ///   flushes L1: [`FlushReason::ServerFlush`](crate::FlushReason::ServerFlush)).
    /// - Tracking is a connection's state. When the writing connection reconnects, or tracking
    ///   is found off or pointed at an old subscriber connection (checked every
    ///   [`bus_heartbeat_interval`](Self::bus_heartbeat_interval)), it is turned on again and
    ///   L1 is flushed ([`FlushReason::TrackingLost`](crate::FlushReason::TrackingLost));
    ///   when the subscriber reconnects, tracking is pointed at its new connection before the
    ///   usual flush.
    /// - Loads' fills and sliding reads' expiry updates are writes too: other instances drop
    ///   their copy of such a key (it costs them a read of Redis, never a stale value). And on
    ///   Redis 7.0 `NOLOOP` does not cover writes made inside a script — the writes with tags,
    ///   a source version or a compare-and-set — so the writer drops its own copy of those and
    ///   reads it from Redis once more.
    ///
    /// It is not a throughput option: on the service workload of `benches/loadgen` plain
    /// `insert`s gained ~4 % in alternating pairs and nothing in a full run, and a workload
    /// that invalidates and reloads often lost a quarter of its throughput (every load's fill
    /// reaches the other instances, which drop their copy); stale reads fell throughout.
    /// - Region invalidations, tags, `clear`, heartbeats, and writes acknowledged with
    ///   [`ack_writes`](Self::ack_writes) still travel on the bus.
    ///
    /// Every instance of the cache should use the same setting: an instance without tracking
    /// still announces its writes on the bus (instances with tracking apply them too), but
    /// does not hear of writes made by instances with tracking.
    ///
    /// Works on one Redis server, Sentinel and a Redis Cluster (there each primary tracks the
    /// store's connection to it, reported to the subscriber's connection on the same primary;
    /// a primary that appears — a failover, a new node — is found untracked at the next
    /// heartbeat tick and tracked, then L1 is flushed). Needs
    /// [`l2_pool_size`](Self::l2_pool_size) 1 (with a pool, the writes of the other
    /// connections would be reported back to the writer); `build()` says so otherwise.
    ///
    /// Default: `false` (every write is announced on the bus).
    pub fn server_assisted_tracking(mut self, enabled: bool) -> Self {
        self.server_assisted_tracking = enabled;
        self
    }

    /// What to do with L1 when invalidations may have been missed (disconnect, reconnect,
    /// lag, sequence gap, missed heartbeat).
    ///
    /// Default: [`CoherenceLossPolicy::FlushAll`].
    pub fn coherence_loss_policy(mut self, policy: CoherenceLossPolicy) -> Self {
        self.coherence_loss_policy = policy;
        self
    }

    /// Acknowledged writes: `insert`, `insert_versioned` and `invalidate` return only once
    /// every live instance (one whose bus heartbeat was heard within
    /// [`bus_heartbeat_timeout`](Self::bus_heartbeat_timeout)) has applied their announcement —
    /// so a read on any instance right after the call returns sees the write — or after
    /// `timeout`, with [`ErrorKind::Unacknowledged`](crate::ErrorKind::Unacknowledged) naming
    /// the instances that did not ([`Error::unacknowledged`](crate::Error::unacknowledged));
    /// the write itself stands. This error is returned whatever the
    /// [`l2_error_policy`](Self::l2_error_policy): it is what the mode is for. A write that
    /// Redis did not confirm cannot be acknowledged: it returns the same error naming every
    /// live instance (and is journaled for repair).
    ///
    /// Each such write costs one more bus round trip (every instance publishes an
    /// acknowledgement, batched with its other messages). Every instance must run a release
    /// that knows acknowledgements: older ones reject such messages as malformed.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: off (writes return once Redis has them; other instances apply them within a
    /// bus round trip).
    pub fn ack_writes(mut self, timeout: Duration) -> Self {
        self.ack_writes = Some(timeout);
        self
    }
}
