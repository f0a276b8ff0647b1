//! The shared tier: Redis through a fred client.
//!
//! Every call is bounded by the command timeout (fred's default has none), the client has a
//! reconnect policy (fred's default has none) and a bounded command buffer. This module knows
//! nothing of values or codecs: it moves bytes under string keys.
//!
//! Here: the client and its bounded calls (timeouts, the breaker), reads and writes of entries.
//! Beside it: [`connect`] (settings, URLs, TLS), [`scripts`] (the Lua scripts, called by hash),
//! [`pipeline`] (a write and its bus announcement in one round trip) and [`keyspace`] (tags,
//! locks, generations, scans).

use crate::rate::{RateCall, RateReply};
use crate::remote::FencedLock;
use std::time::Duration;

use fred::{
    prelude::{ClientLike, KeysInterface},
    types::Value,
};
use std::sync::{
    atomic::{AtomicBool, AtomicUsize},
    Arc,
};

use tracing::Instrument;

use crate::{
    breaker::Breaker,
    error::{Error, ErrorKind, Result},
    remote::{Announcement, BatchWrite, BoxFuture, Filled, RemoteStore, Write, WriteMode},
    stats::Counters,
};

mod bounded;
mod cluster;
mod coalesce;
mod command;
mod connect;
mod fenced_set;
mod keyspace;
mod pipeline;
mod pool;
mod primitives;
mod scripts;
mod sliding;
mod spans;
mod subscriber;
mod tracking;

use connect::end_task;
pub(crate) use connect::{connect_store, redact_url, L2Settings};
use pipeline::pipeline_outcome;
use pool::{Conn, Lane};
use scripts::{evalsha, fill_batch_command, fill_command, filled, is_noscript, Script, SCRIPTS};
use spans::{fill_span, set_many_span, set_span};
pub(crate) use subscriber::RedisSubscriber;

/// How much later than fred's own command timeout our backstop timeout fires.
const BACKSTOP_GRACE: Duration = Duration::from_millis(50);

/// A connected Redis client: `l2_pool_size` connections. The first (*main*) one carries the
/// bus: its messages and heartbeats, and the writes pipelined with their announcement (one
/// connection keeps a sender's messages in sequence order). With a pool of one it carries
/// everything; with more, the others carry every other command, in turn, so a large value
/// read never holds a bus message or a heartbeat behind it.
#[derive(Clone)]
pub(crate) struct RedisStore {
    main: Arc<Conn>,
    /// The command connections besides the main one (empty with a pool of one).
    pool: Arc<[Conn]>,
    /// Round-robin position over `pool`.
    turn: Arc<AtomicUsize>,
    timeout: Duration,
    suspect_timeout: Duration,
    /// The last call failed with an outage error, and none has succeeded since.
    suspect: Arc<AtomicBool>,
    breaker: Arc<Breaker>,
    counters: Arc<Counters>,
    /// On a cluster: publish with `SPUBLISH` (the bus on sharded pub/sub).
    sharded_bus: bool,
    /// Concurrent reads coalesced into `MGET`s (one server, `l2_read_coalescing` above 0).
    coalescer: Option<Arc<coalesce::Coalescer>>,
    /// The cache's name (in events, and a label of the round-trip histogram of the `metrics`
    /// feature).
    cache_name: Arc<str>,
    /// Single writes in flight (see [`command::Writing`]).
    writes: Arc<AtomicUsize>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connected", &self.is_connected())
            .field("pool", &(1 + self.pool.len()))
            .field("timeout", &self.timeout)
            .field("suspect_timeout", &self.suspect_timeout)
            .finish()
    }
}

/// Whether a fred error means Redis is unreachable or overloaded (as opposed to an error
/// reply, which proves it is there). On a cluster, a topology error (`CLUSTERDOWN`, no node for
/// a slot, a failed sync) is an outage too, and so is a call whose connection was dropped under
/// it (fred answers "channel closed"): counting either as proof that Redis answers would close
/// the breaker in the middle of an outage, and every call would pay its timeout again.
fn is_outage(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    match e.kind() {
        K::IO | K::Timeout | K::Canceled | K::Routing | K::Protocol | K::Backpressure => true,
        K::Cluster => !e.details().starts_with("MOVED") && !e.details().starts_with("ASK"),
        K::Unknown => e.details().contains("channel closed"),
        _ => false,
    }
}

/// Whether a Redis error is a `NOSCRIPT` reply: the server does not have the script.
fn is_noscript_reply(e: &Error) -> bool {
    e.to_string().contains("NOSCRIPT")
}

fn map_err(what: &'static str, e: fred::error::Error) -> Error {
    let kind = match e.kind() {
        fred::error::ErrorKind::Timeout => ErrorKind::Timeout,
        fred::error::ErrorKind::Canceled => ErrorKind::Closed,
        _ => ErrorKind::Redis,
    };
    Error::new(kind, what).with_source(e)
}

impl RedisStore {
    /// Whether the circuit breaker is open.
    pub(crate) fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs `script` with `EVALSHA`, bounded like every call; when the server does not have it
    /// (`NOSCRIPT`), loads it and runs it again.
    async fn script<R: fred::types::FromValue>(
        &self,
        what: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<R> {
        let first_key = keys.first().cloned();
        let (command, all) = evalsha(script, keys, args);
        let first = self
            .bounded(what, |c| c.custom::<R, _>(command.clone(), all.clone()))
            .await;
        match first {
            Err(e) if is_noscript_reply(&e) => {
                self.load_script(script, first_key.as_deref()).await?;
                self.bounded(what, |c| c.custom::<R, _>(command, all)).await
            }
            other => other,
        }
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let span = tracing::debug_span!(
            "layercache.l2.get",
            db.system = "redis",
            db.operation.name = "GET",
            otel.kind = "client",
            hit = tracing::field::Empty,
            bytes = tracing::field::Empty
        );
        async {
            let r: Option<Vec<u8>> = self.bounded("redis GET", |c| c.get(key)).await?;
            let span = tracing::Span::current();
            span.record("hit", r.is_some());
            if let Some(b) = &r {
                span.record("bytes", b.len());
            }
            Ok(r)
        }
        .instrument(span)
        .await
    }

    /// Writes as its [`WriteCondition`] says: a plain `SET` (`NX`) when nothing else is asked
    /// of it (with a fence: pipelined with a `GET` of the generation, see [`fenced_set`]), else
    /// the fill script — conditional on what the key holds, for a load on its tags' marks being
    /// what it read before it ran, and with a fence on the region's generation; with tag
    /// bookkeeping.
    pub(crate) async fn fill(&self, write: Write<'_>) -> Result<Filled> {
        let condition = write.condition;
        if fenced_set::plain(&write) {
            let Some(fence) = condition.fence else {
                let nx = *condition.mode == WriteMode::Nx;
                let written = self.set(write.key, write.value, write.ttl_ms, nx).await?;
                return Ok(if written {
                    Filled::Written
                } else {
                    Filled::Refused
                });
            };
            return self.fenced_set(write, fence).await;
        }
        let (keys, args) = fill_command(write);
        let span = fill_span(&condition, false);
        let written: i64 = self
            .script("redis EVALSHA (fill)", &SCRIPTS.fill, keys, args)
            .instrument(span)
            .await?;
        Ok(filled(written))
    }
}

/// Redis as the engine's remote store: each method is one of the bounded calls here or beside
/// this file.
impl RemoteStore for RedisStore {
    fn is_connected(&self) -> bool {
        RedisStore::is_connected(self)
    }

    fn breaker_open(&self) -> bool {
        RedisStore::breaker_open(self)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.coalesced_get(key))
    }

    fn set_meta<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.set(key, value, ttl_ms, false).await.map(|_| ()) })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<crate::remote::Read>> {
        let span = spans::get_many_span(keys.len(), false);
        Box::pin(
            async move {
                crate::remote::read_chunks(keys, |chunk| self.mget("redis MGET", chunk.to_vec()))
                    .await
            }
            .instrument(span),
        )
    }

    fn get_and_touch_many<'a>(
        &'a self,
        keys: &'a [String],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<crate::remote::Read>> {
        Box::pin(self.get_and_touch_chunks(keys, ttl_ms))
    }

    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        lock: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<(Option<Vec<u8>>, bool)>> {
        Box::pin(RedisStore::get_or_lock(self, key, lock, token, ttl_ms))
    }

    fn get_and_touch<'a>(
        &'a self,
        key: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.getex(key, ttl_ms))
    }

    fn touch<'a>(&'a self, key: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.pexpire(key, ttl_ms))
    }

    fn fill<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Filled>> {
        Box::pin(self.fill_past_foreign(write))
    }

    fn fill_many<'a>(
        &'a self,
        batch: BatchWrite<'a>,
    ) -> BoxFuture<'a, Result<crate::remote::BatchFilled>> {
        Box::pin(async move { self.fill_batch(batch).await.map(crate::remote::each_filled) })
    }

    fn fill_many_announced<'a>(
        &'a self,
        batch: BatchWrite<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(crate::remote::BatchFilled, Result<u64>)>> {
        Box::pin(async move {
            let (filled, published) = self.fill_batch_announced(batch, announcement).await?;
            Ok((crate::remote::each_filled(filled), published))
        })
    }

    fn fill_announced<'a>(
        &'a self,
        write: Write<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(Filled, Result<u64>)>> {
        Box::pin(RedisStore::fill_announced(self, write, announcement))
    }

    fn publish<'a>(&'a self, announcement: Announcement<'a>) -> BoxFuture<'a, (u64, Result<()>)> {
        Box::pin(self.publish_sequenced(announcement))
    }

    fn marks<'a>(
        &'a self,
        _data_key: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>>> {
        Box::pin(self.mget("redis MGET (tag marks)", keys))
    }

    fn set_mark<'a>(
        &'a self,
        key: &'a str,
        token: String,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RedisStore::set_mark(self, key, token, ttl_ms))
    }

    fn tag_members_page<'a>(
        &'a self,
        set: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        Box::pin(self.sscan_page(set, cursor, count))
    }

    fn drop_tag_page<'a>(
        &'a self,
        set: &'a str,
        members: Vec<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RedisStore::drop_tag_page(self, set, members))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RedisStore::try_lock(self, key, token, ttl_ms))
    }

    fn try_lock_many<'a>(
        &'a self,
        keys: &'a [String],
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(RedisStore::try_lock_many(self, keys, token, ttl_ms))
    }

    fn renew_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RedisStore::renew_lock(self, key, token, ttl_ms))
    }

    fn release_lock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RedisStore::release_lock(self, key, token))
    }

    fn acquire_fenced<'a>(
        &'a self,
        lock: FencedLock<'a>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(RedisStore::acquire_fenced(
            self,
            lock.key,
            lock.fence_key,
            lock.token,
            ttl_ms,
            lock.fence_ttl_ms,
        ))
    }

    fn rate_limit<'a>(&'a self, call: RateCall<'a>) -> BoxFuture<'a, Result<RateReply>> {
        Box::pin(RedisStore::rate_limit(self, call))
    }

    fn load_generation<'a>(
        &'a self,
        key: &'a str,
        initial: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(RedisStore::load_generation(self, key, initial, ttl))
    }

    fn bump_generation<'a>(
        &'a self,
        key: &'a str,
        floor: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(RedisStore::bump_generation(self, key, floor, ttl))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        Box::pin(RedisStore::scan_prefix(self, prefix, cursor, count))
    }

    fn delete_many<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.unlink_many(keys))
    }

    fn quit<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(RedisStore::quit(self))
    }

    fn tracking_client(&self) -> Option<fred::prelude::Client> {
        // With one connection every command goes through the main one.
        (!self.has_command_lanes()).then(|| self.main_client().clone())
    }
}

#[cfg(test)]
mod tests {
    use fred::error::{Error as FredError, ErrorKind as K};

    use super::{is_outage, pipeline_outcome};
    use fred::types::Value;

    #[test]
    fn a_pipeline_with_a_timed_out_command_failed_as_a_whole() {
        let answered = || Ok(Value::Integer(1));
        let noscript = || Err(FredError::new(K::Unknown, "NOSCRIPT No matching script"));
        let timed_out = || Err(FredError::new(K::Timeout, "Request timed out."));
        let ok = pipeline_outcome(vec![answered(), noscript()], 2, "t").unwrap();
        assert_eq!(ok.len(), 2, "an error reply is an answer");
        let err = pipeline_outcome(vec![answered(), timed_out()], 2, "t").unwrap_err();
        assert_eq!(err.kind(), &K::Timeout);
        let err = pipeline_outcome(vec![timed_out()], 2, "t").unwrap_err();
        assert_eq!(
            err.kind(),
            &K::Timeout,
            "one reply for all: the pipeline failed"
        );
    }

    #[test]
    fn outages_are_told_from_error_replies() {
        for (kind, details) in [
            (K::Timeout, "timed out"),
            (K::IO, "connection reset"),
            (K::Cluster, "CLUSTERDOWN The cluster is down"),
            (K::Cluster, "Failed to find cluster node for slot"),
            (K::Unknown, "channel closed"),
        ] {
            assert!(is_outage(&FredError::new(kind, details)), "{details}");
        }
        for (kind, details) in [
            (K::Unknown, "ERR wrong number of arguments"),
            (K::InvalidArgument, "WRONGTYPE Operation against a key"),
            (K::Cluster, "MOVED 12182 127.0.0.1:7001"),
            (K::Auth, "NOAUTH Authentication required"),
        ] {
            assert!(!is_outage(&FredError::new(kind, details)), "{details}");
        }
    }
}
