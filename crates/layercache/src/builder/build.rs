//! `LayerCacheBuilder::build`: validates every option, connects to Redis, starts the bus, and
//! wires the engine.

use std::{
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    backplane::{ListenerHome, Subscriber},
    breaker::{Breaker, BreakerSettings},
    bus::{self, listener::Listener, publisher::Publisher, BusHandle, BusSettings, InstanceId},
    cache::LayerCache,
    engine::{Engine, Settings},
    error::{Error, Result},
    key::validate_name,
    l1::{Capacity, L1},
    l2::{redact_url, L2Settings, RedisSubscriber},
    options::{check_max, L2Startup, MAX_LIFETIME, MAX_QUEUE, MAX_WAIT},
    remote::Remote,
    stats::Counters,
};

use super::{l1_options::MAX_L2_POOL_SIZE, LayerCacheBuilder, MAX_KEY_BYTES, REDIS_MAX_STRING};

impl LayerCacheBuilder {
    fn capacity(&self) -> Capacity {
        match self.max_capacity_bytes {
            Some(bytes) => Capacity::Bytes(bytes),
            None => Capacity::Entries(self.max_capacity.unwrap_or(10_000)),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_name("cache name", &self.name)?;
        #[cfg(feature = "memory")]
        if self.memory_server.is_some() && self.redis_url.is_some() {
            return Err(Error::config(
                "memory_server and redis_url are both set; a cache has one shared tier",
            ));
        }
        if let Some(url) = &self.redis_url {
            let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
            match scheme {
                "redis" | "redis-cluster" | "redis-sentinel" => {}
                "rediss" | "rediss-cluster" | "rediss-sentinel" if cfg!(feature = "tls") => {}
                "rediss" | "rediss-cluster" | "rediss-sentinel" => {
                    return Err(Error::config(format!(
                        "redis_url: {scheme}:// (TLS) needs the `tls` feature of layercache"
                    )))
                }
                _ => {
                    return Err(Error::config(format!(
                        "redis_url {:?} is invalid: use redis://host[:port][/db], rediss:// \
                         (TLS), redis-cluster://host:port[?node=host:port&…] (a Redis \
                         Cluster) or redis-sentinel://host:port?sentinelServiceName=name\
                         [&node=host:port…] (a primary found through Sentinel); with TLS, \
                         rediss-cluster:// and rediss-sentinel://",
                        crate::key::shortened(&redact_url(url))
                    )))
                }
            }
        }
        if self.max_capacity.is_some() && self.max_capacity_bytes.is_some() {
            return Err(Error::config(
                "max_capacity and max_capacity_bytes exclude each other: set one",
            ));
        }
        if self.max_capacity == Some(0) {
            return Err(Error::config("max_capacity must be at least 1"));
        }
        if self.max_capacity_bytes == Some(0) {
            return Err(Error::config("max_capacity_bytes must be at least 1"));
        }
        if self.time_to_live.is_zero() {
            return Err(Error::config("time_to_live must be greater than zero"));
        }
        if self.time_to_idle.is_some_and(|d| d.is_zero()) {
            return Err(Error::config("time_to_idle must be greater than zero"));
        }
        self.entry_options
            .validate()
            .map_err(|e| Error::config(format!("default_entry_options: {}", e.context())))?;
        if self.max_value_bytes == 0 || self.max_value_bytes > REDIS_MAX_STRING {
            return Err(Error::config(
                "max_value_bytes must be between 1 and 536870912 (512 MiB)",
            ));
        }
        if self.l2_command_timeout.is_zero() {
            return Err(Error::config(
                "l2_command_timeout must be greater than zero",
            ));
        }
        if self.l2_suspect_timeout.is_zero() {
            return Err(Error::config(
                "l2_suspect_timeout must be greater than zero",
            ));
        }
        if self.l2_connect_timeout.is_zero() {
            return Err(Error::config(
                "l2_connect_timeout must be greater than zero",
            ));
        }
        if self.l2_max_command_buffer == 0 {
            return Err(Error::config("l2_max_command_buffer must be at least 1"));
        }
        if !(1..=MAX_L2_POOL_SIZE).contains(&self.l2_pool_size) {
            return Err(Error::config(format!(
                "l2_pool_size is {}; it must be between 1 and {MAX_L2_POOL_SIZE}",
                self.l2_pool_size
            )));
        }
        if self.bus_heartbeat_interval.is_zero() {
            return Err(Error::config(
                "bus_heartbeat_interval must be greater than zero",
            ));
        }
        if self.bus_heartbeat_timeout < self.bus_heartbeat_interval.saturating_mul(2) {
            return Err(Error::config(
                "bus_heartbeat_timeout must be at least twice bus_heartbeat_interval",
            ));
        }
        if self.max_key_bytes == 0 {
            return Err(Error::config("max_key_bytes must be at least 1"));
        }
        if self.lock_ttl < Duration::from_millis(3) {
            return Err(Error::config("lock_ttl must be at least 3 ms"));
        }
        if self.lock_wait.is_zero() {
            return Err(Error::config("lock_wait must be greater than zero"));
        }
        if self.bus_buffer == 0 {
            return Err(Error::config("bus_buffer must be at least 1"));
        }
        if self.l2_reconnect_min.is_zero() || self.l2_reconnect_min > self.l2_reconnect_max {
            return Err(Error::config("l2_reconnect_backoff needs 0 < min <= max"));
        }
        self.validate_upper_bounds()
    }

    /// Every option's upper bound: lifetimes up to [`MAX_LIFETIME`], timeouts, waits and
    /// intervals up to [`MAX_WAIT`], queues up to [`MAX_QUEUE`]. With these, no sum or
    /// product of options anywhere in the crate can overflow.
    fn validate_upper_bounds(&self) -> Result<()> {
        check_max("time_to_live", Some(self.time_to_live), MAX_LIFETIME)?;
        check_max("time_to_idle", self.time_to_idle, MAX_LIFETIME)?;
        for (what, value) in [
            ("l1_write_cooldown", self.l1_write_cooldown),
            ("l2_command_timeout", self.l2_command_timeout),
            ("l2_suspect_timeout", self.l2_suspect_timeout),
            ("l2_connect_timeout", self.l2_connect_timeout),
            ("l2_reconnect_backoff (max)", self.l2_reconnect_max),
            ("l2_breaker_cooldown", self.l2_breaker_cooldown),
            ("bus_heartbeat_interval", self.bus_heartbeat_interval),
            ("bus_heartbeat_timeout", self.bus_heartbeat_timeout),
            ("lock_ttl", self.lock_ttl),
            ("lock_wait", self.lock_wait),
        ] {
            check_max(what, Some(value), MAX_WAIT)?;
        }
        check_max("ack_writes", self.ack_writes, MAX_WAIT)?;
        for (what, value) in [
            ("l2_max_command_buffer", self.l2_max_command_buffer),
            ("l2_repair_capacity", self.l2_repair_capacity),
            ("bus_buffer", self.bus_buffer),
        ] {
            if value > MAX_QUEUE {
                return Err(Error::config(format!(
                    "{what} is {value}; it must be at most {MAX_QUEUE}"
                )));
            }
        }
        if self.server_assisted_tracking {
            self.validate_tracking()?;
        }
        if self.max_key_bytes > MAX_KEY_BYTES {
            return Err(Error::config(format!(
                "max_key_bytes is {}; it must be at most {MAX_KEY_BYTES} (1 MiB)",
                self.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Where server-assisted tracking works: Redis (one server, Sentinel or a cluster), one
    /// connection (per node).
    fn validate_tracking(&self) -> Result<()> {
        #[cfg(feature = "memory")]
        if self.memory_server.is_some() {
            return Err(Error::config(
                "server_assisted_tracking needs Redis (redis_url), not a memory server",
            ));
        }
        if self.l2_pool_size != 1 {
            return Err(Error::config(format!(
                "server_assisted_tracking needs l2_pool_size 1 (it is {}): writes from the \
                 other connections would be reported back to the writer",
                self.l2_pool_size
            )));
        }
        Ok(())
    }

    /// Checks every option, connects to Redis if one is configured, and returns the cache.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) naming the first invalid option;
    /// [`ErrorKind::Redis`](crate::ErrorKind::Redis) or
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when Redis is configured but the first
    /// connection fails within `l2_connect_timeout` (with the default
    /// [`L2Startup::FailFast`]; with [`L2Startup::Degraded`] the cache starts anyway).
    pub async fn build(self) -> Result<LayerCache> {
        self.validate()?;
        let counters = Arc::new(Counters::default());
        let settings = Settings {
            time_to_live: self.time_to_live,
            entry_options: self.entry_options,
            compression_threshold: self.compression_threshold,
            max_value_bytes: self.max_value_bytes,
            offload_threshold: self.offload_threshold,
            error_policy: self.l2_error_policy,
            command_timeout: self.l2_command_timeout,
            lock_ttl: self.lock_ttl,
            lock_wait: self.lock_wait,
            max_key_bytes: self.max_key_bytes,
            repair_capacity: self.l2_repair_capacity,
            ack_timeout: self.ack_writes,
            tracking: self.server_assisted_tracking,
        };
        let l1 = L1::new(
            self.capacity(),
            self.time_to_idle,
            self.time_to_live,
            self.l1_write_cooldown,
            self.l1_doorkeeper,
        );
        let channel = bus::channel(&self.name);
        let connected = match self.remote(&counters, &channel).await? {
            Some(connected) => connected,
            None => {
                let inner = Arc::new(Engine::new(self.name, l1, None, settings, counters, None));
                #[cfg(feature = "metrics")]
                start_metrics(&inner, self.metrics_interval);
                tracing::info!(cache.name = %inner.name, l2 = false, "layercache started");
                return Ok(LayerCache { inner });
            }
        };
        let Connected {
            store: l2,
            subscriber,
            home,
        } = connected;
        // Degraded start without a connection: the listener subscribes once it connects.
        let subscribed = if subscriber.is_connected() {
            // Part of connecting: bounded by the connect timeout.
            let subscribed = match subscriber.subscribe(self.l2_connect_timeout).await {
                Ok(()) => subscriber.track(self.l2_connect_timeout).await,
                Err(e) => Err(e),
            };
            match subscribed {
                Ok(()) => true,
                Err(_) if self.l2_startup == L2Startup::Degraded => false,
                Err(e) => {
                    let mut subscriber = subscriber;
                    subscriber.close(self.l2_connect_timeout).await;
                    l2.quit().await;
                    return Err(e);
                }
            }
        } else {
            false
        };

        let id = InstanceId::random();
        let (tx, rx) = mpsc::channel(self.bus_buffer.max(1024));
        let (shutdown, shutdown_rx) = watch::channel(());
        let published = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Mutex::new(bus::BusState {
            healthy: subscribed,
            tracking: subscriber.tracks().then_some(subscribed),
            ..Default::default()
        }));
        let bus_settings = BusSettings {
            loss_policy: self.coherence_loss_policy,
            heartbeat_timeout: self.bus_heartbeat_timeout,
        };
        let acked = Arc::new(tokio::sync::Notify::new());
        let sequencer = Arc::new(bus::Sequencer::new(id, channel.clone(), published));
        let handle = BusHandle {
            id,
            sequencer: sequencer.clone(),
            tx,
            shared: shared.clone(),
            settings: bus_settings,
            shutdown,
            acked: acked.clone(),
        };
        let publisher = Publisher {
            store: l2.clone(),
            sequencer: sequencer.clone(),
            rx,
            counters: counters.clone(),
            heartbeat: self.bus_heartbeat_interval,
            shutdown: shutdown_rx.clone(),
            cache_name: self.name.clone(),
        };
        let inner = Arc::new(Engine::new(
            self.name,
            l1,
            Some(l2),
            settings,
            counters,
            Some(handle),
        ));
        let receiver: Arc<dyn bus::Receiver> = inner.clone();
        let listener = Listener {
            inner: Arc::downgrade(&receiver),
            subscriber,
            id,
            shared,
            heartbeat_interval: self.bus_heartbeat_interval,
            heartbeat_timeout: self.bus_heartbeat_timeout,
            command_timeout: self.l2_command_timeout,
            shutdown: shutdown_rx,
            subscribed,
            acked,
            sequencer: sequencer.clone(),
        };
        inner.adopt_task(tokio::spawn(publisher.run()));
        inner.adopt_task(home.run(Box::pin(listener.run())));
        #[cfg(feature = "metrics")]
        start_metrics(&inner, self.metrics_interval);
        tracing::info!(cache.name = %inner.name, l2 = true, l2.connected = subscribed, instance.id = %id, "layercache started");
        Ok(LayerCache { inner })
    }
}

/// Exports the cache's metrics every `every` while the cache lives (not at all for zero). The
/// task holds only a weak reference: it ends when the cache is dropped or shut down.
#[cfg(feature = "metrics")]
fn start_metrics(inner: &Arc<Engine>, every: std::time::Duration) {
    if every.is_zero() {
        return;
    }
    let engine = Arc::downgrade(inner);
    let mut closing = inner.closing.subscribe();
    inner.adopt_task(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // `shutdown()` exports once more itself.
                _ = closing.changed() => break,
            }
            let Some(engine) = engine.upgrade() else {
                break;
            };
            crate::cache::metrics_export::export(&engine);
        }
    }));
}

/// A connected shared tier: the store, the bus subscription (not yet subscribed) and where its
/// listener runs.
struct Connected {
    store: Remote,
    subscriber: Box<dyn Subscriber>,
    home: Box<dyn ListenerHome>,
}

impl LayerCacheBuilder {
    /// Connects the configured shared tier, if any.
    async fn remote(&self, counters: &Arc<Counters>, channel: &str) -> Result<Option<Connected>> {
        #[cfg(feature = "memory")]
        if let Some(server) = &self.memory_server {
            return Ok(Some(Connected {
                store: Arc::new(server.store()),
                subscriber: Box::new(server.subscriber(channel)),
                home: Box::new(crate::backplane::OnRuntime),
            }));
        }
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let settings = L2Settings {
            url: url.clone(),
            command_timeout: self.l2_command_timeout,
            suspect_timeout: self.l2_suspect_timeout,
            connect_timeout: self.l2_connect_timeout,
            max_command_buffer: self.l2_max_command_buffer,
            reconnect_min: self.l2_reconnect_min,
            reconnect_max: self.l2_reconnect_max,
            tls_ca_pem: self.l2_tls_ca_pem.clone(),
            startup: self.l2_startup,
            sharded_bus: self.cluster_bus == crate::ClusterBus::Sharded,
            cache_name: self.name.as_str().into(),
            pool_size: self.l2_pool_size,
            read_coalescing: self.l2_read_coalescing,
        };
        let breaker = Breaker::new(
            BreakerSettings {
                threshold: self.l2_breaker_threshold,
                cooldown: self.l2_breaker_cooldown,
            },
            counters.clone(),
            self.name.clone(),
        );
        // Both connections at once: a degraded start waits `l2_connect_timeout` once, not twice.
        let (store, subscriber) = tokio::join!(
            crate::l2::connect_store(&settings, breaker, counters.clone()),
            RedisSubscriber::connect(
                &settings,
                self.bus_buffer,
                self.bus_thread,
                channel.to_owned()
            ),
        );
        match (store, subscriber) {
            (Ok(store), Ok((mut subscriber, home))) if self.server_assisted_tracking => {
                let Some(client) = store.tracking_client() else {
                    subscriber.close(self.l2_command_timeout).await;
                    store.quit().await;
                    return Err(Error::config(
                        "server_assisted_tracking needs the store's writes on one connection",
                    ));
                };
                subscriber.track_writes_of(client, crate::key::data_space_prefix(&self.name));
                Ok(Some(Connected {
                    store,
                    subscriber: Box::new(subscriber),
                    home,
                }))
            }
            (Ok(store), Ok((subscriber, home))) => Ok(Some(Connected {
                store,
                subscriber: Box::new(subscriber),
                home,
            })),
            (Ok(store), Err(e)) => {
                store.quit().await;
                Err(e)
            }
            (Err(e), Ok((mut subscriber, _))) => {
                subscriber.close(self.l2_command_timeout).await;
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }
}
