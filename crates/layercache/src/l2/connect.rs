//! Connecting to Redis: settings, URLs (and their redaction), TLS roots, the fred client with
//! its timeouts, reconnect policy and command buffer.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize},
        Arc, Mutex,
    },
    time::Duration,
};

use fred::{
    prelude::{ClientLike, Config, ReconnectPolicy},
    types::{config::Options, Builder, ConnectHandle},
};

use super::map_err;
use crate::{
    breaker::Breaker,
    error::{Error, ErrorKind, Result},
    options::L2Startup,
    stats::Counters,
};

/// Connection settings for the Redis tier, filled by the builder.
#[derive(Clone)]
pub(crate) struct L2Settings {
    pub(crate) url: String,
    pub(crate) command_timeout: Duration,
    /// The bound on commands while Redis is suspect (see [`L2::bounded`]).
    pub(crate) suspect_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_command_buffer: usize,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// PEM of the CA roots to trust for TLS (instead of the system's).
    pub(crate) tls_ca_pem: Option<Vec<u8>>,
    /// Whether `build()` may return before the first connection.
    pub(crate) startup: L2Startup,
    /// On a cluster: the bus on sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`).
    pub(crate) sharded_bus: bool,
    /// The cache's name (a label of the Redis round-trip histogram).
    pub(crate) cache_name: Arc<str>,
    /// How many connections carry commands (`l2_pool_size`, at least 1).
    pub(crate) pool_size: usize,
    /// How many reads go to one server at once before the rest are coalesced into `MGET`s
    /// (`l2_read_coalescing`; 0: never).
    pub(crate) read_coalescing: usize,
}

impl std::fmt::Debug for L2Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Settings")
            .field("url", &redact_url(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_command_buffer", &self.max_command_buffer)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("tls_ca_pem", &self.tls_ca_pem.is_some())
            .field("sharded_bus", &self.sharded_bus)
            .field("pool_size", &self.pool_size)
            .field("read_coalescing", &self.read_coalescing)
            .finish()
    }
}

/// The URL with any password replaced by `***`, for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Builds and connects a fred client with our settings. `broadcast_capacity` sizes the
/// client's pub/sub message buffer (for the bus's subscriber). Returns the client and the task
/// that runs its connection (it ends after `quit`).
pub(crate) async fn connect_client(
    s: &L2Settings,
    broadcast_capacity: Option<usize>,
) -> Result<(fred::prelude::Client, ConnectHandle)> {
    let mut config = Config::from_url(&s.url).map_err(|e| {
        Error::config(format!("redis_url {:?} is invalid", redact_url(&s.url))).with_source(e)
    })?;
    #[cfg(feature = "tls")]
    if let Some(pem) = &s.tls_ca_pem {
        config.tls = Some(tls_with_roots(pem)?);
    }
    #[cfg(not(feature = "tls"))]
    if s.tls_ca_pem.is_some() {
        return Err(Error::config("l2_tls_ca_pem needs the `tls` feature"));
    }
    // Degraded start: the first connection goes through the reconnect policy too.
    config.fail_fast = s.startup == L2Startup::FailFast;
    let clustered = config.server.is_clustered();
    let mut b = Builder::from_config(config);
    b.with_connection_config(|c| {
        c.connection_timeout = s.connect_timeout;
        c.internal_command_timeout = s.command_timeout.max(Duration::from_secs(1));
        c.max_command_buffer_len = s.max_command_buffer;
        if clustered {
            // fred counts every write of a command, redirected ones included, against
            // `max_command_attempts` (3 by default), so a command that meets `ASK`, then
            // `MOVED`, then a retried `TRYAGAIN` while its slot migrates failed with "too many
            // failed write attempts" long before its redirection budget (5) ran out: a few
            // errors per resharding (tests/failover.rs). One write plus one per redirection.
            c.max_redirections = c.max_redirections.max(10);
            c.max_command_attempts = c.max_command_attempts.max(c.max_redirections + 1);
        }
    })
    .with_performance_config(|p| {
        p.default_command_timeout = s.command_timeout;
        if let Some(capacity) = broadcast_capacity {
            p.broadcast_channel_capacity = capacity;
        }
    })
    .set_policy(ReconnectPolicy::new_exponential(
        0,
        millis_u32(s.reconnect_min),
        millis_u32(s.reconnect_max),
        2,
    ));
    let client = b
        .build()
        .map_err(|e| Error::config("redis client configuration").with_source(e))?;
    if s.startup == L2Startup::Degraded {
        // The first connection is retried like any reconnect; wait for it up to the connect
        // timeout, then go on without it.
        let handle = client.connect();
        match tokio::time::timeout(s.connect_timeout, client.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis unreachable at start; running degraded until it answers");
            }
            Err(_) => {
                tracing::warn!(timeout = ?s.connect_timeout, "redis unreachable at start; running degraded until it answers");
            }
        }
        return Ok((client, handle));
    }
    let connect = async {
        client
            .init()
            .await
            .map_err(|e| map_err("connecting to redis", e))
    };
    match tokio::time::timeout(s.connect_timeout, connect).await {
        Ok(Ok(handle)) => Ok((client, handle)),
        Ok(Err(e)) => {
            let _ = client.quit().await;
            Err(e)
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "connecting to redis took longer than {:?}",
                    s.connect_timeout
                ),
            ))
        }
    }
}

/// A rustls TLS configuration trusting exactly the CA certificates in `pem`.
#[cfg(feature = "tls")]
fn tls_with_roots(pem: &[u8]) -> Result<fred::types::config::TlsConfig> {
    use fred::rustls::{
        pki_types::{pem::PemObject, CertificateDer},
        ClientConfig, RootCertStore,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| {
            Error::config("l2_tls_ca_pem holds an unreadable certificate")
                .with_source(e.to_string())
        })?;
        roots.add(cert).map_err(|e| {
            Error::config("l2_tls_ca_pem holds an unusable certificate").with_source(e)
        })?;
    }
    if roots.is_empty() {
        return Err(Error::config("l2_tls_ca_pem holds no certificate"));
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(fred::types::config::TlsConfig::from(config))
}

/// Waits for a client's connection task to end, aborting it after `within`.
pub(crate) async fn end_task(mut task: ConnectHandle, within: Duration) {
    if tokio::time::timeout(within, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

impl super::RedisStore {
    /// Connects, failing if the first connection cannot be made within `connect_timeout`
    /// (unless the start is degraded: then it keeps trying in the background).
    pub(crate) async fn connect(
        s: &L2Settings,
        breaker: Breaker,
        counters: Arc<Counters>,
    ) -> Result<Self> {
        let suspect_timeout = s.suspect_timeout.min(s.command_timeout);
        let conn = |(client, task): (fred::prelude::Client, ConnectHandle)| {
            let options = |timeout| Options {
                timeout: Some(timeout),
                fail_fast: true,
                ..Default::default()
            };
            super::Conn {
                normal: client.with_options(&options(s.command_timeout)),
                wary: client.with_options(&options(suspect_timeout)),
                client,
                task: Mutex::new(Some(task)),
            }
        };
        // The main connection first (a configuration error shows there), then the others side
        // by side, so a degraded start waits one connect timeout, not one per connection.
        let main = conn(connect_client(s, None).await?);
        let mut others = tokio::task::JoinSet::new();
        for i in 1..s.pool_size.max(1) {
            let s = s.clone();
            others.spawn(async move { (i, connect_client(&s, None).await) });
        }
        let mut pool = Vec::with_capacity(s.pool_size.saturating_sub(1));
        let mut failed = None;
        while let Some(joined) = others.join_next().await {
            match joined {
                Ok((i, Ok(c))) => pool.push((i, conn(c))),
                Ok((_, Err(e))) => failed = Some(e),
                Err(e) => {
                    failed =
                        Some(Error::new(ErrorKind::Closed, "connecting to redis").with_source(e))
                }
            }
        }
        pool.sort_by_key(|(i, _)| *i);
        let store = Self {
            main: Arc::new(main),
            pool: pool.into_iter().map(|(_, c)| c).collect(),
            turn: Arc::new(AtomicUsize::new(0)),
            timeout: s.command_timeout,
            suspect_timeout,
            suspect: Arc::new(AtomicBool::new(false)),
            breaker: Arc::new(breaker),
            counters,
            sharded_bus: s.sharded_bus,
            // Coalescing bounds the reads in flight per store: with a pool, per connection.
            coalescer: (s.read_coalescing > 0).then(|| {
                Arc::new(super::coalesce::Coalescer::new(
                    s.read_coalescing.saturating_mul(s.pool_size.max(1)),
                ))
            }),
            cache_name: s.cache_name.clone(),
            writes: Arc::new(AtomicUsize::new(0)),
        };
        if let Some(e) = failed {
            store.quit().await;
            return Err(e);
        }
        Ok(store)
    }
}

/// Whether `url` names a Redis Cluster (`redis-cluster://`, `rediss-cluster://`).
pub(crate) fn is_cluster_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.ends_with("-cluster"))
}

/// Connects the remote store the URL names: one server (or a Sentinel-managed primary) or a
/// Redis Cluster.
pub(crate) async fn connect_store(
    s: &L2Settings,
    breaker: Breaker,
    counters: Arc<Counters>,
) -> Result<crate::remote::Remote> {
    let clustered_url = is_cluster_url(&s.url);
    let store = super::RedisStore::connect(s, breaker, counters).await.map_err(|e| {
        if clustered_url && e.to_string().contains("cluster state") {
            Error::new(
                ErrorKind::Redis,
                format!(
                    "the Redis Cluster at {} is not ready: it has no slot map (is cluster_state ok?)",
                    redact_url(&s.url)
                ),
            )
            .with_source(e)
        } else {
            e
        }
    })?;
    if store.main_client().is_clustered() {
        // An `MGET` must stay within one slot: reads are not coalesced on a cluster.
        let mut store = store;
        store.coalescer = None;
        return Ok(Arc::new(super::cluster::ClusterStore::new(store).await?));
    }
    // A node of a cluster named by a plain URL would answer every other key with `MOVED`: say
    // so now rather than fail (or journal) every write.
    if store.is_connected() {
        let info: Result<String> = store
            .bounded("redis INFO cluster", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static(
                        "INFO",
                        fred::types::ClusterHash::Random,
                        false,
                    ),
                    vec![fred::types::Value::from("cluster")],
                )
            })
            .await;
        if info.is_ok_and(|i| i.contains("cluster_enabled:1")) {
            store.quit().await;
            return Err(Error::config(format!(
                "redis_url {} names a node of a Redis Cluster: use redis-cluster://host:port",
                redact_url(&s.url)
            )));
        }
    }
    Ok(Arc::new(store))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert!(!redact_url("rediss://a:b@c/d@e").contains(":b@"));
    }
}
