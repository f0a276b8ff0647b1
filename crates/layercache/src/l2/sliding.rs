//! Reads with sliding expiration: each key read is given more time to live in the same round
//! trip — `GETEX` for one key, an `MGET` and a `PEXPIRE` per key for a batch.

use fred::{
    prelude::{ClientLike, KeysInterface},
    types::Value,
};
use tracing::Instrument;

use super::{
    command::Cmd,
    keyspace::mget_values,
    pipeline::{pipeline_outcome, replies, send_each},
    RedisStore,
};
use crate::error::{Error, ErrorKind, Result};

impl RedisStore {
    /// `GETEX key PX ttl`: reads and extends in one command (sliding expiration).
    pub(crate) async fn getex(&self, key: &str, ttl_ms: u64) -> Result<Option<Vec<u8>>> {
        let span = tracing::debug_span!(
            "layercache.l2.get",
            db.system = "redis",
            db.operation.name = "GETEX",
            otel.kind = "client",
            hit = tracing::field::Empty,
            sliding = true
        );
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from_static_str("PX"),
            Value::from(ttl_ms.to_string()),
        ];
        let r: Option<Vec<u8>> = self
            .bounded("redis GETEX", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static(
                        "GETEX",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    args,
                )
            })
            .instrument(span.clone())
            .await?;
        span.record("hit", r.is_some());
        Ok(r)
    }

    /// `PEXPIRE key ttl`.
    pub(crate) async fn pexpire(&self, key: &str, ttl_ms: u64) -> Result<()> {
        let ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let _: i64 = self
            .bounded("redis PEXPIRE", |c| c.pexpire(key, ms, None))
            .await?;
        Ok(())
    }

    /// [`mget_and_touch`](Self::mget_and_touch) of every [`MAX_BATCH`] keys in turn.
    ///
    /// [`MAX_BATCH`]: crate::remote::MAX_BATCH
    pub(crate) async fn get_and_touch_chunks(
        &self,
        keys: &[String],
        ttl_ms: u64,
    ) -> Vec<crate::remote::Read> {
        let span = super::spans::get_many_span(keys.len(), true);
        async { crate::remote::read_chunks(keys, |chunk| self.mget_and_touch(chunk, ttl_ms)).await }
            .instrument(span)
            .await
    }

    /// A sliding batch read: for each of `keys` (at most [`MAX_BATCH`]), its value, each key
    /// found given `ttl_ms` more to live. One `MGET` and a `PEXPIRE` per key, sent back to back
    /// as fred's own commands, so they leave in a few socket writes and take one round trip
    /// (`GETEX`, the single read's command, has no batch form, and fred 10.1 sends it as a custom
    /// command, flushed alone: a socket write and a read per key). Redis runs them in order on
    /// the one connection, so every `PEXPIRE` follows the read; a key the `MGET` did not find
    /// is not extended (`PEXPIRE` of nothing does nothing), and a key written by another client
    /// between the two gets the sliding lifetime a read would have given it a moment later.
    ///
    /// [`MAX_BATCH`]: crate::remote::MAX_BATCH
    pub(crate) async fn mget_and_touch(
        &self,
        keys: &[String],
        ttl_ms: u64,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let what = "redis MGET + PEXPIRE × n";
        let n = keys.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut commands: super::fenced_set::Commands = Vec::with_capacity(n + 1);
        commands.push(Cmd::Mget(keys.to_vec()));
        commands.extend(keys.iter().map(|key| Cmd::Pexpire {
            key: key.clone(),
            ttl_ms,
        }));
        let replies = self
            .bounded(what, |c| {
                let sent = send_each(c, commands);
                async move { pipeline_outcome(replies(sent).await, n + 1, what) }
            })
            .await?;
        let mut replies = replies.into_iter();
        let read = match replies.next() {
            Some(Ok(reply)) => mget_values(reply, n)?,
            Some(Err(e)) => return Err(super::map_err("redis MGET", e)),
            None => return Err(Error::new(ErrorKind::Redis, "unexpected MGET reply")),
        };
        // An extension that failed (the connection broke after the read) fails the read, as a
        // `GETEX` that failed would.
        if let Some(Err(e)) = replies.find(Result::is_err) {
            return Err(super::map_err("redis PEXPIRE", e));
        }
        Ok(read)
    }
}
