//! [`LayerCacheBuilder`]: every cache-wide option, validated by `build()` (in `build.rs`,
//! which also connects and wires the cache).

mod build;
mod bus_options;
mod l1_options;
#[cfg(feature = "metrics")]
mod metrics_options;

pub use bus_options::ClusterBus;

use std::time::Duration;

use crate::{
    coherence::CoherenceLossPolicy,
    l2::redact_url,
    options::{
        EntryOptions, L2ErrorPolicy, L2Startup, DEFAULT_L1_WRITE_COOLDOWN,
        DEFAULT_L2_READ_COALESCING, DEFAULT_OFFLOAD_THRESHOLD,
    },
};

/// The longest `max_key_bytes` accepted (1 MiB).
const MAX_KEY_BYTES: usize = 1 << 20;

/// The largest value Redis accepts as a string (512 MiB).
const REDIS_MAX_STRING: usize = 512 << 20;

/// Builds a [`LayerCache`](crate::LayerCache). Created by
/// [`LayerCache::builder`](crate::LayerCache::builder).
///
/// Options that concern the in-process tier reuse moka's names (`max_capacity`,
/// `time_to_live`, `time_to_idle`); options that concern Redis start with `l2_`. Every
/// option's documentation ends with its default. [`build`](Self::build) checks every option
/// and names the one that is wrong.
#[must_use = "a builder does nothing until build() is awaited"]
#[derive(Clone)]
pub struct LayerCacheBuilder {
    name: String,
    redis_url: Option<String>,
    #[cfg(feature = "memory")]
    memory_server: Option<crate::memory::MemoryServer>,
    max_capacity: Option<u64>,
    max_capacity_bytes: Option<u64>,
    time_to_live: Duration,
    time_to_idle: Option<Duration>,
    l1_write_cooldown: Duration,
    l1_doorkeeper: bool,
    entry_options: EntryOptions,
    compression_threshold: usize,
    max_value_bytes: usize,
    offload_threshold: usize,
    l2_command_timeout: Duration,
    l2_suspect_timeout: Duration,
    l2_connect_timeout: Duration,
    l2_max_command_buffer: usize,
    l2_pool_size: usize,
    l2_read_coalescing: usize,
    l2_repair_capacity: usize,
    ack_writes: Option<Duration>,
    l2_reconnect_min: Duration,
    l2_reconnect_max: Duration,
    l2_error_policy: L2ErrorPolicy,
    bus_heartbeat_interval: Duration,
    bus_heartbeat_timeout: Duration,
    bus_buffer: usize,
    bus_thread: bool,
    server_assisted_tracking: bool,
    cluster_bus: bus_options::ClusterBus,
    coherence_loss_policy: CoherenceLossPolicy,
    lock_ttl: Duration,
    lock_wait: Duration,
    l2_breaker_threshold: u32,
    l2_breaker_cooldown: Duration,
    max_key_bytes: usize,
    l2_tls_ca_pem: Option<Vec<u8>>,
    l2_startup: L2Startup,
    #[cfg(feature = "metrics")]
    metrics_interval: Duration,
}

impl std::fmt::Debug for LayerCacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerCacheBuilder")
            .field("name", &self.name)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("max_capacity", &self.max_capacity)
            .field("max_capacity_bytes", &self.max_capacity_bytes)
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .field("l1_write_cooldown", &self.l1_write_cooldown)
            .field("l1_doorkeeper", &self.l1_doorkeeper)
            .field("entry_options", &self.entry_options)
            .field("compression_threshold", &self.compression_threshold)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("offload_threshold", &self.offload_threshold)
            .field("l2_command_timeout", &self.l2_command_timeout)
            .field("l2_suspect_timeout", &self.l2_suspect_timeout)
            .field("l2_connect_timeout", &self.l2_connect_timeout)
            .field("l2_max_command_buffer", &self.l2_max_command_buffer)
            .field("l2_pool_size", &self.l2_pool_size)
            .field("l2_read_coalescing", &self.l2_read_coalescing)
            .field("l2_repair_capacity", &self.l2_repair_capacity)
            .field("ack_writes", &self.ack_writes)
            .field("l2_reconnect_min", &self.l2_reconnect_min)
            .field("l2_reconnect_max", &self.l2_reconnect_max)
            .field("l2_error_policy", &self.l2_error_policy)
            .field("bus_heartbeat_interval", &self.bus_heartbeat_interval)
            .field("bus_heartbeat_timeout", &self.bus_heartbeat_timeout)
            .field("bus_buffer", &self.bus_buffer)
            .field("bus_thread", &self.bus_thread)
            .field("server_assisted_tracking", &self.server_assisted_tracking)
            .field("cluster_bus", &self.cluster_bus)
            .field("coherence_loss_policy", &self.coherence_loss_policy)
            .field("lock_ttl", &self.lock_ttl)
            .field("lock_wait", &self.lock_wait)
            .field("l2_breaker_threshold", &self.l2_breaker_threshold)
            .field("l2_breaker_cooldown", &self.l2_breaker_cooldown)
            .field("max_key_bytes", &self.max_key_bytes)
            .field("l2_tls_ca_pem", &self.l2_tls_ca_pem.is_some())
            .field("l2_startup", &self.l2_startup)
            .finish()
    }
}

impl crate::LayerCache {
    /// Starts building a cache. The name is part of every Redis key the cache writes, so two
    /// services that should share entries use the same name, and two that should not, different
    /// ones. It must be 1 to 64 characters of `[A-Za-z0-9_.-]`.
    pub fn builder(name: impl Into<String>) -> LayerCacheBuilder {
        LayerCacheBuilder::new(name)
    }
}

impl LayerCacheBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            redis_url: None,
            #[cfg(feature = "memory")]
            memory_server: None,
            max_capacity: None,
            max_capacity_bytes: None,
            time_to_live: Duration::from_secs(60),
            time_to_idle: None,
            l1_write_cooldown: DEFAULT_L1_WRITE_COOLDOWN,
            l1_doorkeeper: true,
            entry_options: EntryOptions::new(),
            compression_threshold: 1024,
            max_value_bytes: 16 << 20,
            offload_threshold: DEFAULT_OFFLOAD_THRESHOLD,
            l2_command_timeout: Duration::from_millis(500),
            l2_suspect_timeout: Duration::from_millis(100),
            l2_connect_timeout: Duration::from_secs(5),
            l2_max_command_buffer: 10_000,
            l2_pool_size: 1,
            l2_read_coalescing: DEFAULT_L2_READ_COALESCING,
            l2_repair_capacity: 10_000,
            ack_writes: None,
            l2_reconnect_min: Duration::from_millis(100),
            l2_reconnect_max: Duration::from_secs(5),
            l2_error_policy: L2ErrorPolicy::Fallback,
            bus_heartbeat_interval: Duration::from_secs(1),
            bus_heartbeat_timeout: Duration::from_secs(3),
            bus_buffer: crate::DEFAULT_BUS_BUFFER,
            bus_thread: true,
            server_assisted_tracking: false,
            cluster_bus: bus_options::ClusterBus::Sharded,
            coherence_loss_policy: CoherenceLossPolicy::FlushAll,
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
            l2_breaker_threshold: 5,
            l2_breaker_cooldown: Duration::from_secs(5),
            max_key_bytes: 1024,
            l2_tls_ca_pem: None,
            l2_startup: L2Startup::FailFast,
            #[cfg(feature = "metrics")]
            metrics_interval: Duration::from_secs(1),
        }
    }

    /// The Redis server to use as the shared tier, as a URL
    /// (`redis://[user[:password]@]host[:port][/db]`; `rediss://` for TLS with the `tls`
    /// feature), or a Redis Cluster (`redis-cluster://host:port[?node=host:port&…]`, any nodes
    /// as seeds; `rediss-cluster://` with TLS): see `docs/SCALING.md` for where keys go on a
    /// cluster and what it costs; or a primary watched by Sentinel
    /// (`redis-sentinel://sentinel:port?sentinelServiceName=name&node=sentinel2:port…`: the
    /// primary the sentinels name, followed across failovers). Without it the cache runs
    /// L1-only with the same API.
    ///
    /// Default: none (L1-only).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// An in-memory server to use as the shared tier instead of Redis (the `memory`
    /// feature): caches built on the same [`MemoryServer`](crate::memory::MemoryServer) share
    /// it as instances of a service share a Redis, bus included. For tests without a
    /// redis-server; see [`memory`](crate::memory). Cannot be combined with
    /// [`redis_url`](Self::redis_url).
    ///
    /// Default: none.
    #[cfg(feature = "memory")]
    pub fn memory_server(mut self, server: &crate::memory::MemoryServer) -> Self {
        self.memory_server = Some(server.clone());
        self
    }

    /// The most entries the in-process tier holds. Excludes
    /// [`max_capacity_bytes`](Self::max_capacity_bytes).
    ///
    /// Default: 10,000 entries.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.max_capacity = Some(entries);
        self
    }

    /// Bounds the in-process tier by bytes instead of entries: each entry weighs its key, its
    /// encoded value (before compression) and 64 bytes of overhead. In L1-only mode this costs
    /// one encode per insert, to measure the value. Excludes
    /// [`max_capacity`](Self::max_capacity).
    ///
    /// Default: unset (capacity counted in entries).
    pub fn max_capacity_bytes(mut self, bytes: u64) -> Self {
        self.max_capacity_bytes = Some(bytes);
        self
    }

    /// The longest any entry stays in the in-process tier, whatever its own options say. This
    /// bounds how long an instance can serve a value after another instance changed it, should
    /// every other mechanism fail. (A value kept for fail-safe,
    /// [`EntryOptions::fail_safe_max_age`](crate::EntryOptions::fail_safe_max_age), stays
    /// longer as a copy that is only ever served stale, as the fallback of a failed load.)
    ///
    /// It is also the one lifetime of the table that serves L1 hits: an entry that must go
    /// sooner carries a deadline of its own on a coarse clock, set 16 ms early (so it may leave
    /// up to ~32 ms before its lifetime ends, never after).
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: 60 seconds.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = ttl;
        self
    }

    /// Drops an in-process entry that has not been read for this long.
    ///
    /// At most [`MAX_LIFETIME`](crate::MAX_LIFETIME) (10 years).
    ///
    /// Default: none.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// After this instance applies another instance's write or invalidation of a key, the key
    /// is kept out of the in-process tier for this long: reads in that time take it from Redis
    /// (and do not put it in L1). A key that other instances write more often than this lives
    /// in Redis only, where each write lands in the same round trip as its announcement; a key
    /// written less often is back in L1 one cooldown after each write.
    ///
    /// Why: another instance's write reaches this instance one trip through Redis after the
    /// source commit, and until then L1 serves the old value at memory speed. For a key
    /// written often that trip is most of its stale time (see `docs/CONSISTENCY.md`); for the
    /// rest the cooldown costs a few Redis reads per write. On the service workload of
    /// `benches/loadgen` (see `docs/BENCHMARKS.md`) the default cut stale reads by a third or
    /// more at no measurable cost in throughput. `Duration::ZERO` turns it off.
    ///
    /// Applies to single-key writes and invalidations (`insert`, `invalidate`), not to tag,
    /// region or whole-cache invalidations. At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: [`DEFAULT_L1_WRITE_COOLDOWN`].
    pub fn l1_write_cooldown(mut self, cooldown: Duration) -> Self {
        self.l1_write_cooldown = cooldown;
        self
    }

    /// Entry options for regions that do not set their own.
    ///
    /// Default: [`EntryOptions::new()`] (5 minutes in Redis; L1 follows, capped by
    /// `time_to_live`).
    pub fn default_entry_options(mut self, options: EntryOptions) -> Self {
        self.entry_options = options;
        self
    }

    /// Values whose encoding is at least this many bytes are LZ4-compressed before they go to
    /// Redis; the compressed form is kept only when it saves at least an eighth of the bytes
    /// (less is not worth a decompression on every read). `usize::MAX` turns
    /// compression off.
    ///
    /// Default: 1024 bytes.
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.compression_threshold = bytes;
        self
    }

    /// The largest encoded value (before compression) the cache writes to or accepts from
    /// Redis. `insert` of a larger value fails with
    /// [`ErrorKind::ValueTooLarge`](crate::ErrorKind::ValueTooLarge); a larger loaded value is
    /// returned and kept in L1 but not written to Redis; a Redis entry claiming a larger size is
    /// a miss, rejected before anything is allocated. At most 512 MiB (Redis's limit).
    ///
    /// Default: 16 MiB.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The longest one Redis command may take, queueing while reconnecting included. On expiry
    /// the call fails with a timeout, handled by the
    /// [`l2_error_policy`](Self::l2_error_policy).
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 500 ms.
    pub fn l2_command_timeout(mut self, timeout: Duration) -> Self {
        self.l2_command_timeout = timeout;
        self
    }

    /// The bound on a Redis command made while Redis is *suspect*: the last command failed with
    /// a timeout or a connection error and none has succeeded since. The calls between a first
    /// failure and the circuit breaker opening (and the breaker's probes) then cost this much
    /// each instead of the full [`l2_command_timeout`](Self::l2_command_timeout); the first
    /// success restores the full timeout. Capped by `l2_command_timeout`. (While the connection
    /// is known to be down — refused, reset, reconnecting — commands are not sent at all and
    /// fail at once, counted in [`Stats::l2_disconnected_skips`](crate::Stats).)
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 100 ms.
    pub fn l2_suspect_timeout(mut self, timeout: Duration) -> Self {
        self.l2_suspect_timeout = timeout;
        self
    }

    /// The longest `build()` waits for the first connection to Redis.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 5 seconds.
    pub fn l2_connect_timeout(mut self, timeout: Duration) -> Self {
        self.l2_connect_timeout = timeout;
        self
    }

    /// The most commands queued while the connection is down; further commands fail at once
    /// instead of piling up.
    ///
    /// At most [`MAX_QUEUE`](crate::MAX_QUEUE) (2^20).
    ///
    /// Default: 10,000.
    pub fn l2_max_command_buffer(mut self, commands: usize) -> Self {
        self.l2_max_command_buffer = commands;
        self
    }

    /// How many keys the write journal remembers one by one. A write or invalidation that Redis
    /// did not confirm (it failed, timed out — it may have landed — or was skipped while Redis
    /// was unreachable) is journaled and repaired as soon as this instance reaches Redis again:
    /// a tombstone over the key (never the value: another instance may have written a newer
    /// one meanwhile) and an announcement on the bus. Until then this instance serves nothing
    /// from Redis for that key. When more keys than this are pending, further keys are repaired
    /// by moving their whole region's generation instead (every key of the region becomes a
    /// miss once, on every instance). Each pending key costs its key bytes and ~100 bytes.
    ///
    /// At most [`MAX_QUEUE`](crate::MAX_QUEUE) (2^20); 0 turns every unconfirmed write into a
    /// region repair.
    ///
    /// Default: 10,000.
    pub fn l2_repair_capacity(mut self, keys: usize) -> Self {
        self.l2_repair_capacity = keys;
        self
    }

    /// The reconnect back-off: the first retry waits `min`, each further one twice as long,
    /// up to `max`, with no limit on attempts.
    ///
    /// `max` at most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 100 ms to 5 seconds.
    pub fn l2_reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.l2_reconnect_min = min;
        self.l2_reconnect_max = max;
        self
    }

    /// What reads and writes do when Redis fails.
    ///
    /// Default: [`L2ErrorPolicy::Fallback`] (log, count, carry on without Redis).
    pub fn l2_error_policy(mut self, policy: L2ErrorPolicy) -> Self {
        self.l2_error_policy = policy;
        self
    }

    /// The lifetime of a distributed load lock
    /// ([`EntryOptions::distributed_lock`](crate::EntryOptions::distributed_lock)). The holder
    /// renews it every third of this while its load runs, so it only lapses when the holder
    /// dies (or its load passes its hard timeout).
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 10 seconds.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long an instance waits for another instance's locked load (re-reading Redis with
    /// back-off from 1 ms to 100 ms, and retrying the lock) before it loads itself. A wait
    /// that Redis stops answering (a re-read or a lock retry fails) ends at once: the waiter
    /// loads without the lock.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 5 seconds.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Trust exactly these CA certificates (PEM) for TLS to Redis, instead of the system's
    /// roots; use with a `rediss://` URL. Needs the `tls` feature (rustls).
    ///
    /// Default: none (a `rediss://` URL uses the system's roots).
    #[cfg(feature = "tls")]
    pub fn l2_tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.l2_tls_ca_pem = Some(pem.into());
        self
    }

    /// The longest user key (its [`CacheKey`](crate::CacheKey) bytes) the cache accepts; a
    /// longer one is an [`ErrorKind::KeyTooLarge`](crate::ErrorKind::KeyTooLarge) error on
    /// every operation, before anything is read or written.
    ///
    /// At most 1 MiB.
    ///
    /// Default: 1024 bytes.
    pub fn max_key_bytes(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// The Redis circuit breaker: after this many consecutive Redis failures (timeouts and
    /// connection errors; error replies do not count), calls skip Redis for
    /// [`l2_breaker_cooldown`](Self::l2_breaker_cooldown), as if it had failed, without paying
    /// the timeout; then one probe call decides whether it closes. 0 turns it off.
    ///
    /// Default: 5.
    pub fn l2_breaker_threshold(mut self, failures: u32) -> Self {
        self.l2_breaker_threshold = failures;
        self
    }

    /// How long the Redis circuit breaker stays open before it lets a probe through.
    ///
    /// At most [`MAX_WAIT`](crate::MAX_WAIT) (1 day).
    ///
    /// Default: 5 seconds.
    pub fn l2_breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.l2_breaker_cooldown = cooldown;
        self
    }

    /// What [`build`](Self::build) does when Redis cannot be reached within
    /// [`l2_connect_timeout`](Self::l2_connect_timeout): fail, or start degraded and join Redis
    /// when it answers (see [`L2Startup`]).
    ///
    /// Default: [`L2Startup::FailFast`].
    pub fn l2_startup(mut self, startup: L2Startup) -> Self {
        self.l2_startup = startup;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::LayerCache;

    async fn config_error(b: LayerCacheBuilder) -> String {
        let e = b.build().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        e.to_string()
    }

    #[tokio::test]
    async fn invalid_options_are_named() {
        let b = || LayerCache::builder("t");
        assert!(config_error(LayerCache::builder("a:b"))
            .await
            .contains("cache name"));
        assert!(config_error(b().max_capacity(0))
            .await
            .contains("max_capacity"));
        assert!(config_error(b().max_capacity(5).max_capacity_bytes(9))
            .await
            .contains("exclude"));
        assert!(config_error(b().time_to_live(Duration::ZERO))
            .await
            .contains("time_to_live"));
        assert!(config_error(b().time_to_idle(Duration::ZERO))
            .await
            .contains("time_to_idle"));
        assert!(config_error(b().max_value_bytes(0))
            .await
            .contains("max_value_bytes"));
        assert!(config_error(b().max_value_bytes(600 << 20))
            .await
            .contains("max_value_bytes"));
        assert!(config_error(b().l2_command_timeout(Duration::ZERO))
            .await
            .contains("l2_command_timeout"));
        assert!(
            config_error(b().default_entry_options(EntryOptions::new().ttl(Duration::ZERO)))
                .await
                .contains("default_entry_options")
        );
        assert!(config_error(
            b().l2_reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1))
        )
        .await
        .contains("l2_reconnect_backoff"));
        assert!(config_error(b().redis_url("not a url"))
            .await
            .contains("redis_url"));
        let http = config_error(b().redis_url("http://u:pw@localhost:80")).await;
        assert!(
            http.contains("redis_url") && !http.contains("pw@"),
            "{http}"
        );
        let long = config_error(LayerCache::builder("x".repeat(10_000))).await;
        assert!(
            long.contains("cache name") && long.contains("10000 bytes"),
            "{long}"
        );
        assert!(long.len() < 300, "the name is not repeated whole: {long}");
        assert!(config_error(b().l2_suspect_timeout(Duration::ZERO))
            .await
            .contains("l2_suspect_timeout"));
        assert!(config_error(b().l2_pool_size(0))
            .await
            .contains("l2_pool_size"));
        assert!(config_error(b().l2_pool_size(65))
            .await
            .contains("l2_pool_size"));
    }

    #[tokio::test]
    async fn debug_output_hides_the_password() {
        let b = LayerCache::builder("t").redis_url("redis://u:hunter2@localhost:1");
        let s = format!("{b:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("u:***@localhost"), "{s}");
    }
}
