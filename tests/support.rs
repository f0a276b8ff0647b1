//! Helpers shared by the integration tests: a real redis-server per test, a plain fred client
//! for looking at what the cache wrote, and waiting on conditions with a deadline.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use fred::{
    prelude::{Builder, Client, ClientLike, Config},
    types::{ClusterHash, CustomCommand, Value},
};
use layercache::{LayerCache, LayerCacheBuilder, Region};
use layercache_testkit::{RedisCluster, RedisServer};

/// Starts a private redis-server for one test.
pub(crate) fn redis() -> RedisServer {
    RedisServer::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A plain fred client on the server: what the tests use to look at (or plant) raw bytes.
pub(crate) async fn raw_client(server: &RedisServer) -> Client {
    let client = Builder::from_config(Config::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// A cache builder pointed at the server. Timeouts are generous enough that a test machine
/// busy with other tests does not trip them, and a breaker opened by a burst of slowness
/// heals quickly (fault tests set their own).
pub(crate) fn builder(server: &RedisServer, name: &str) -> LayerCacheBuilder {
    LayerCache::builder(name)
        .redis_url(server.url())
        .l2_command_timeout(Duration::from_secs(1))
        .l2_connect_timeout(Duration::from_secs(2))
        .l2_breaker_cooldown(Duration::from_millis(500))
}

/// The shared tier a test runs on: a real redis-server, a real Redis Cluster (shared by the
/// tests of one binary that run at the same time: give each test its own cache name), or the
/// in-memory server (no redis-server at all).
pub(crate) enum Shared {
    Redis(RedisServer),
    Cluster(std::sync::Arc<RedisCluster>),
    Memory(layercache::memory::MemoryServer),
}

impl Shared {
    /// A cache builder on this shared tier (for Redis, as [`builder`]).
    pub(crate) fn builder(&self, name: &str) -> LayerCacheBuilder {
        match self {
            Self::Redis(server) => builder(server, name),
            Self::Cluster(cluster) => cluster_builder(cluster, name),
            Self::Memory(server) => LayerCache::builder(name).memory_server(server),
        }
    }
}

impl Shared {
    /// A plain fred client on this tier (clustered on a cluster), for looking at what the
    /// cache wrote.
    pub(crate) async fn raw(&self) -> Client {
        let client = Builder::from_config(Config::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        client
    }

    /// The data keys of cache `name` (on every primary of a cluster, which other tests share).
    pub(crate) async fn data_keys(&self, name: &str) -> Vec<String> {
        let prefix = format!("{name}:f2:");
        let keys = match self {
            Self::Redis(server) => {
                let raw = raw_client(server).await;
                all_keys(&raw).await
            }
            Self::Cluster(cluster) => cluster_keys(cluster),
            Self::Memory(_) => panic!("the in-memory server has no redis keys"),
        };
        keys.into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect()
    }
}

/// Serializes building instances on a shared cluster with marking one instance's connections
/// (`Shared::slow_link`): an instance built meanwhile would be slowed too.
static BUILDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serializes the tests that slow one instance's links on a shared cluster (the marked latency
/// is the proxies').
static SLOW_LINKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Shared {
    /// Builds an instance (on a cluster, never while another test marks the connections of the
    /// instance it slows).
    pub(crate) async fn build(&self, builder: LayerCacheBuilder) -> LayerCache {
        let _serial = BUILDS.lock().await;
        builder.build().await.unwrap()
    }

    /// An instance with a fast bus, as [`instance`] on a redis-server.
    pub(crate) async fn instance(&self, name: &str) -> LayerCache {
        self.build(fast_bus(self.builder(name))).await
    }

    /// A way to slow one instance's every link to this tier (commands and bus): a proxy in
    /// front of a redis-server, or the connections it opens through a proxied cluster's
    /// proxies (marked while it is built). Tests holding one run one at a time.
    pub(crate) async fn slow_link(&self) -> SlowLink<'_> {
        let serial = SLOW_LINKS.lock().await;
        let kind = match self {
            Self::Redis(server) => {
                SlowKind::Proxy(layercache_testkit::Proxy::start(server.port()).unwrap())
            }
            Self::Cluster(cluster) => SlowKind::Cluster(cluster),
            Self::Memory(_) => panic!("the in-memory server has no network link"),
        };
        SlowLink {
            kind,
            _serial: serial,
        }
    }

    /// `FLUSHALL` (on every primary of a cluster).
    pub(crate) async fn flush_all(&self) {
        match self {
            Self::Redis(server) => {
                cmd(&raw_client(server).await, "FLUSHALL", &[]).await;
            }
            Self::Cluster(cluster) => {
                for i in cluster.primaries() {
                    cluster.command(i, &["FLUSHALL"]).unwrap();
                }
            }
            Self::Memory(server) => server.flush_all(),
        }
    }

    /// Closes every subscriber connection (`CLIENT KILL TYPE pubsub`, on every node of a
    /// cluster).
    pub(crate) async fn kill_subscribers(&self) {
        for client in self.node_clients().await {
            cmd(&client, "CLIENT", &["KILL", "TYPE", "pubsub"]).await;
        }
    }

    /// One plain client per server that holds data: the server, or each primary of a cluster
    /// (for per-server commands: `CONFIG`, `SLOWLOG`, `CLIENT`).
    pub(crate) async fn node_clients(&self) -> Vec<Client> {
        let ports = match self {
            Self::Redis(server) => vec![server.port()],
            Self::Cluster(cluster) => {
                let ports = cluster.ports();
                cluster.primaries().into_iter().map(|i| ports[i]).collect()
            }
            Self::Memory(_) => panic!("the in-memory server has no redis client"),
        };
        let mut clients = Vec::new();
        for port in ports {
            let url = format!("redis://127.0.0.1:{port}");
            let client = Builder::from_config(Config::from_url(&url).unwrap())
                .build()
                .unwrap();
            client.init().await.unwrap();
            clients.push(client);
        }
        clients
    }

    /// Logs every command from now on in each server's slow log (threshold 0, emptied).
    pub(crate) async fn log_every_command(&self) {
        for client in self.node_clients().await {
            cmd(&client, "CONFIG", &["SET", "slowlog-log-slower-than", "0"]).await;
            cmd(&client, "CONFIG", &["SET", "slowlog-max-len", "100000"]).await;
            cmd(&client, "SLOWLOG", &["RESET"]).await;
        }
    }

    /// The commands (upper-case names, newest first per server) in the servers' slow logs that
    /// name something containing `fragment` — a cache's name: its keys and its bus channel —
    /// leaving out the bus's own (`PUBLISH`, `SPUBLISH`, subscriptions). Other tests sharing a
    /// cluster do not show up; run [`log_every_command`](Self::log_every_command) first.
    pub(crate) async fn commands_naming(&self, fragment: &str) -> Vec<String> {
        let mut names = Vec::new();
        for client in self.node_clients().await {
            let Value::Array(entries) = cmd(&client, "SLOWLOG", &["GET", "100000"]).await else {
                panic!("unexpected SLOWLOG reply")
            };
            for entry in entries {
                let Value::Array(fields) = entry else {
                    continue;
                };
                let Some(Value::Array(args)) = fields.get(3) else {
                    continue;
                };
                let args: Vec<String> = args.iter().filter_map(Value::as_string).collect();
                let Some(name) = args.first().map(|n| n.to_uppercase()) else {
                    continue;
                };
                let bus = name.ends_with("PUBLISH") || name.ends_with("SUBSCRIBE");
                // Presence records (`{cache}:m2:i:{id}`) are the instance's, not the calls'.
                let presence = args.iter().any(|a| a.contains(":m2:i:"));
                if !bus && !presence && args.iter().skip(1).any(|a| a.contains(fragment)) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// The longest command in the servers' slow logs, with its name.
    pub(crate) async fn longest_logged_command(&self) -> (Duration, String) {
        let mut longest = (Duration::ZERO, String::new());
        for client in self.node_clients().await {
            longest = longest.max(longest_command(&client).await);
        }
        longest
    }

    /// The bus channel's name for cache `name`, and publishes `message` on it as a stranger
    /// would (`PUBLISH`; `SPUBLISH` on a cluster, whose default bus is sharded).
    pub(crate) async fn publish_raw(&self, name: &str, message: Vec<u8>) {
        use fred::prelude::PubsubInterface;
        let channel = format!("{name}:m2:bus");
        let raw = self.raw().await;
        let _: i64 = match self {
            Self::Cluster(_) => raw.spublish(channel, message).await.unwrap(),
            _ => raw.publish(channel, message).await.unwrap(),
        };
    }

    /// The members of a tag's member sets (one set on a server, one per bucket on a cluster)
    /// and the shortest remaining lifetime among those sets (ms; `None` if there is none).
    pub(crate) async fn tag_members(&self, cache: &str, tag: &str) -> (i64, Option<i64>) {
        let pattern = match self {
            Self::Cluster(_) => format!("{cache}:t2:*{tag}"),
            _ => format!("{cache}:t2:{tag}"),
        };
        let (mut members, mut pttl) = (0, None::<i64>);
        for client in self.node_clients().await {
            let Value::Array(keys) = cmd(&client, "KEYS", &[pattern.as_str()]).await else {
                panic!("KEYS")
            };
            for key in keys {
                let key = key.as_string().unwrap();
                members += cmd(&client, "SCARD", &[key.as_str()])
                    .await
                    .as_i64()
                    .unwrap();
                let ttl = cmd(&client, "PTTL", &[key.as_str()])
                    .await
                    .as_i64()
                    .unwrap();
                pttl = Some(pttl.map_or(ttl, |p| p.min(ttl)));
            }
        }
        (members, pttl)
    }
}

/// One private cluster at a time in a test binary.
static OWN_CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The guard a test holds while it runs a private cluster (see [`own_cluster`]).
pub(crate) async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    OWN_CLUSTERS.lock().await
}

/// A private, proxied Redis Cluster for a test that breaks it, and the guard that keeps other
/// tests of the binary from starting theirs meanwhile.
pub(crate) async fn own_cluster() -> (Shared, tokio::sync::MutexGuard<'static, ()>) {
    let guard = one_cluster_at_a_time().await;
    let cluster = RedisCluster::start_proxied().unwrap_or_else(|e| panic!("{e}"));
    (Shared::Cluster(std::sync::Arc::new(cluster)), guard)
}

/// The network between the caches and a private tier, which a test slows, stalls or cuts: a
/// proxy in front of a redis-server, or every proxy of a proxied cluster.
pub(crate) enum Network<'a> {
    Proxy(layercache_testkit::Proxy),
    Cluster(&'a RedisCluster),
}

impl Network<'_> {
    /// The URL that reaches the tier through the network.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Proxy(p) => p.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    fn each(&self, f: impl Fn(&layercache_testkit::Proxy)) {
        match self {
            Self::Proxy(p) => f(p),
            Self::Cluster(c) => c.proxies().iter().for_each(f),
        }
    }

    /// Delays every chunk of data both ways (zero: none).
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.each(|p| p.set_latency(latency));
    }

    /// Stalls every connection until [`pass`](Self::pass).
    pub(crate) fn blackhole(&self) {
        self.each(layercache_testkit::Proxy::blackhole);
    }

    /// Heals the network.
    pub(crate) fn pass(&self) {
        self.each(layercache_testkit::Proxy::pass);
    }
}

impl Shared {
    /// The network in front of this (private) tier.
    pub(crate) fn network(&self) -> Network<'_> {
        match self {
            Self::Redis(server) => {
                Network::Proxy(layercache_testkit::Proxy::start(server.port()).unwrap())
            }
            Self::Cluster(cluster) => {
                assert!(!cluster.proxies().is_empty(), "not a proxied cluster");
                Network::Cluster(cluster)
            }
            Self::Memory(_) => panic!("the in-memory server has no network"),
        }
    }

    /// The URL of this tier.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Redis(server) => server.url(),
            Self::Cluster(cluster) => cluster.url(),
            Self::Memory(_) => panic!("the in-memory server has no url"),
        }
    }

    /// The process ids of every server of this tier.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self {
            Self::Redis(server) => server.pid().into_iter().collect(),
            Self::Cluster(cluster) => (0..6).filter_map(|i| cluster.node(i).pid()).collect(),
            Self::Memory(_) => panic!("the in-memory server has no process"),
        }
    }

    /// Pauses every client of every server (`CLIENT PAUSE ms ALL`).
    pub(crate) async fn pause(&self, ms: u64) {
        for client in self.node_clients().await {
            cmd(&client, "CLIENT", &["PAUSE", &ms.to_string(), "ALL"]).await;
        }
    }

    /// Ends a [`pause`](Self::pause).
    pub(crate) async fn unpause(&self) {
        for client in self.node_clients().await {
            cmd(&client, "CLIENT", &["UNPAUSE"]).await;
        }
    }

    /// The calls served for one command, summed over the servers (`INFO commandstats`).
    pub(crate) async fn command_calls(&self, command: &str) -> u64 {
        let mut calls = 0;
        for client in self.node_clients().await {
            calls += command_calls(&client, command).await;
        }
        calls
    }

    /// Empties every server's script cache (`SCRIPT FLUSH`), as a restart or a failover to a
    /// replica that never ran the scripts does.
    pub(crate) async fn flush_scripts(&self) {
        for client in self.node_clients().await {
            cmd(&client, "SCRIPT", &["FLUSH"]).await;
        }
    }

    /// Makes every server of this (private) tier require `password` (`masterauth` first, so
    /// a cluster's replicas keep replicating).
    pub(crate) fn require_password(&self, password: &str) {
        let nodes: Vec<&RedisServer> = match self {
            Self::Redis(server) => vec![server],
            Self::Cluster(cluster) => (0..6).map(|i| cluster.node(i)).collect(),
            Self::Memory(_) => panic!("the in-memory server has no password"),
        };
        for setting in ["masterauth", "requirepass"] {
            for node in &nodes {
                node.command(&["CONFIG", "SET", setting, password]).unwrap();
            }
        }
    }

    /// The URL of this tier with `userinfo` (`user:password`, or `:password`).
    pub(crate) fn url_with(&self, userinfo: &str) -> String {
        self.url().replacen("://", &format!("://{userinfo}@"), 1)
    }

    /// Kills every server of this (private) tier.
    pub(crate) fn kill_all(&mut self) {
        match self {
            Self::Redis(server) => server.kill(),
            Self::Cluster(cluster) => {
                let cluster = std::sync::Arc::get_mut(cluster).expect("a private cluster");
                (0..6).for_each(|i| cluster.kill(i));
            }
            Self::Memory(server) => server.set_available(false),
        }
    }

    /// Starts every server of this (private) tier again, empty, and waits until it serves.
    pub(crate) fn restart_all(&mut self) {
        match self {
            Self::Redis(server) => server.restart().unwrap(),
            Self::Cluster(cluster) => {
                let cluster = std::sync::Arc::get_mut(cluster).expect("a private cluster");
                for i in 0..6 {
                    cluster.restart(i).unwrap();
                }
                cluster.wait_ok(Duration::from_secs(30)).unwrap();
            }
            Self::Memory(server) => {
                server.flush_all();
                server.set_available(true);
            }
        }
    }
}

/// A builder for an instance linked to Redis through `proxy` (which the test cuts): commands
/// time out after `timeout`, and the breaker and the reconnection try again quickly.
pub(crate) fn proxied(
    proxy: &layercache_testkit::Proxy,
    name: &str,
    timeout: Duration,
) -> LayerCacheBuilder {
    LayerCache::builder(name)
        .redis_url(proxy.url())
        .l2_command_timeout(timeout)
        .l2_breaker_cooldown(Duration::from_millis(200))
        .l2_reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

/// Heartbeats every 100 ms, presumed broken after 1 s, no L1 cooldown (see [`instance`]).
pub(crate) fn fast_bus(builder: LayerCacheBuilder) -> LayerCacheBuilder {
    builder
        .bus_heartbeat_interval(Duration::from_millis(100))
        .bus_heartbeat_timeout(Duration::from_millis(1000))
        .l1_write_cooldown(Duration::ZERO)
}

/// One instance's slowed link (see [`Shared::slow_link`]).
pub(crate) struct SlowLink<'a> {
    kind: SlowKind<'a>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

enum SlowKind<'a> {
    Proxy(layercache_testkit::Proxy),
    Cluster(&'a RedisCluster),
}

impl SlowLink<'_> {
    /// An instance whose every link goes through the slowed path (generous timeouts, a fast
    /// bus whose heartbeats tolerate the latency the tests add).
    pub(crate) async fn instance(&self, name: &str) -> LayerCache {
        self.instance_with(name, |b| b).await
    }

    /// [`instance`](Self::instance), its builder changed by `configure` first.
    pub(crate) async fn instance_with(
        &self,
        name: &str,
        configure: impl Fn(LayerCacheBuilder) -> LayerCacheBuilder,
    ) -> LayerCache {
        let builder = |url: String| {
            configure(
                LayerCache::builder(name)
                    .redis_url(url)
                    .l2_command_timeout(Duration::from_secs(5))
                    .l2_connect_timeout(Duration::from_secs(5))
                    .bus_heartbeat_interval(Duration::from_millis(100))
                    .bus_heartbeat_timeout(Duration::from_secs(10)),
            )
        };
        match &self.kind {
            SlowKind::Proxy(proxy) => builder(proxy.url()).build().await.unwrap(),
            SlowKind::Cluster(cluster) => {
                let _serial = BUILDS.lock().await;
                let before: u64 = cluster
                    .proxies()
                    .iter()
                    .map(|p| p.marked_connections())
                    .sum();
                for p in cluster.proxies() {
                    p.mark_new_connections(true);
                }
                let built = builder(cluster.url()).build().await;
                for p in cluster.proxies() {
                    p.mark_new_connections(false);
                }
                let after: u64 = cluster
                    .proxies()
                    .iter()
                    .map(|p| p.marked_connections())
                    .sum();
                assert!(
                    after >= before + 4,
                    "the instance opened {} connections",
                    after - before
                );
                built.unwrap()
            }
        }
    }

    /// Delays every chunk of data on the slowed links to node `index` of a cluster, both ways
    /// (zero: none).
    pub(crate) fn set_node_latency(&self, index: usize, latency: Duration) {
        match &self.kind {
            SlowKind::Cluster(cluster) => cluster.proxies()[index].set_marked_latency(latency),
            SlowKind::Proxy(_) => panic!("one server has no nodes"),
        }
    }

    /// Delays every chunk of data on the slowed links, both ways (zero: none).
    pub(crate) fn set_latency(&self, latency: Duration) {
        match &self.kind {
            SlowKind::Proxy(proxy) => proxy.set_latency(latency),
            SlowKind::Cluster(cluster) => {
                for p in cluster.proxies() {
                    p.set_marked_latency(latency);
                }
            }
        }
    }
}

impl Drop for SlowLink<'_> {
    fn drop(&mut self) {
        self.set_latency(Duration::ZERO);
    }
}

/// The Redis Cluster of this test binary: started by the first test that asks, shared by the
/// tests running meanwhile, stopped when the last of them lets go of it (a later test starts
/// another). One cluster at a time: six processes are enough for two cores.
pub(crate) fn cluster() -> std::sync::Arc<RedisCluster> {
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut slot = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(c) = slot.upgrade() {
        return c;
    }
    // Proxied: a test can slow one instance's every link (see `Shared::slow_link`).
    let c = Arc::new(RedisCluster::start_proxied().unwrap_or_else(|e| panic!("{e}")));
    *slot = Arc::downgrade(&c);
    c
}

/// A cache builder pointed at a cluster (as [`builder`]).
pub(crate) fn cluster_builder(cluster: &RedisCluster, name: &str) -> LayerCacheBuilder {
    LayerCache::builder(name)
        .redis_url(cluster.url())
        .l2_command_timeout(Duration::from_secs(1))
        .l2_connect_timeout(Duration::from_secs(5))
        .l2_breaker_cooldown(Duration::from_millis(500))
}

/// Every key of the cluster (`KEYS *` on each primary).
pub(crate) fn cluster_keys(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .primaries()
        .into_iter()
        .flat_map(|i| {
            let keys = cluster.command(i, &["KEYS", "*"]).unwrap();
            keys.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|k| !k.is_empty())
        .collect()
}

/// Runs a raw command with string arguments.
pub(crate) async fn cmd(client: &Client, name: &'static str, args: &[&str]) -> Value {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    client
        .custom(
            CustomCommand::new_static(name, ClusterHash::Random, false),
            args,
        )
        .await
        .unwrap()
}

/// Every key in the server (tests hold few keys; the library itself never uses KEYS).
pub(crate) async fn all_keys(client: &Client) -> Vec<String> {
    match cmd(client, "KEYS", &["*"]).await {
        Value::Array(items) => items.into_iter().map(|v| v.as_string().unwrap()).collect(),
        other => panic!("unexpected KEYS reply {other:?}"),
    }
}

/// The cache's data keys (leaving out region generations and other bookkeeping).
pub(crate) async fn data_keys(client: &Client) -> Vec<String> {
    all_keys(client)
        .await
        .into_iter()
        .filter(|k| k.contains(":f2:"))
        .collect()
}

/// The number of calls Redis has served for one command (`INFO commandstats`).
pub(crate) async fn command_calls(client: &Client, command: &str) -> u64 {
    let info = cmd(client, "INFO", &["commandstats"])
        .await
        .as_string()
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// Polls `cond` until it holds, failing the test after `within`.
pub(crate) async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `reader` has applied every bus message `writer` had published when called.
pub(crate) async fn caught_up(reader: &LayerCache, writer: &LayerCache) -> Duration {
    let start = Instant::now();
    let id = writer.instance_id().unwrap();
    let target = writer.bus_status().unwrap().published_seq;
    wait_until(
        "the reader to apply the writer's messages",
        Duration::from_secs(10),
        || {
            let r = reader.clone();
            async move { r.bus_status().unwrap().peer_seq(id) >= Some(target) }
        },
    )
    .await;
    start.elapsed()
}

/// Sends a signal (`STOP`, `CONT`) to a process.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// An instance on the server with a fast bus (heartbeats every 100 ms, presumed broken after
/// 1 s), as the coherence and recovery tests use; with no L1 cooldown after other instances'
/// writes, so every read that can be served from L1 is (the strictest test of L1 coherence).
pub(crate) async fn instance(server: &RedisServer, name: &str) -> LayerCache {
    fast_bus(builder(server, name)).build().await.unwrap()
}

/// The tests' region: `item`, string keys, `u64` values.
pub(crate) async fn region(c: &LayerCache) -> Region<str, u64> {
    c.region::<str, u64>("item").build().await.unwrap()
}

/// The longest command in the slow log (which logs every command at threshold 0), with its
/// name.
pub(crate) async fn longest_command(raw: &Client) -> (Duration, String) {
    slow_log(raw).await.into_iter().max().unwrap_or_default()
}

/// Every command in the slow log: its duration and name.
pub(crate) async fn slow_log(raw: &Client) -> Vec<(Duration, String)> {
    let Value::Array(entries) = cmd(raw, "SLOWLOG", &["GET", "100000"]).await else {
        panic!("unexpected SLOWLOG reply")
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(fields) => {
                let micros = fields.get(2).and_then(|d| d.as_i64())?;
                let name = match fields.get(3) {
                    Some(Value::Array(args)) => args.first().and_then(|a| a.as_string()),
                    _ => None,
                }
                .unwrap_or_default();
                Some((Duration::from_micros(micros as u64), name))
            }
            _ => None,
        })
        .collect()
}

/// Kills the Sentinel setup's primary (server 0, which must be the one at `old`) and waits (at
/// most 30 s) until the sentinels have promoted another; returns the setup and the new
/// primary's port.
pub(crate) async fn fail_over(
    mut sentinel: layercache_testkit::RedisSentinel,
    old: u16,
) -> (layercache_testkit::RedisSentinel, u16) {
    sentinel.kill(0);
    tokio::task::spawn_blocking(move || {
        let new = sentinel
            .wait_failover(old, Duration::from_secs(30))
            .unwrap();
        (sentinel, new)
    })
    .await
    .unwrap()
}
