//! Redis calls around the entries: tag marks and sets, load locks, region generations, and
//! scans.

use std::time::Duration;

use fred::{
    prelude::{ClientLike, KeysInterface},
    types::{Expiration, SetOptions, Value},
};

use tracing::Instrument;

use super::{fill_batch_command, filled, RedisStore, Script, SCRIPTS};
use crate::error::{Error, ErrorKind, Result};
use crate::remote::{BatchWrite, Filled};

/// The values of an `MGET` of `n` keys: for each, its bytes, or `None` (nothing, or another
/// type).
pub(super) fn mget_values(reply: Value, n: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let values = match reply {
        Value::Array(values) => values,
        // One key: fred may hand back the single value itself.
        other if n == 1 => vec![other],
        _ => return Err(Error::new(ErrorKind::Redis, "unexpected MGET reply")),
    };
    if values.len() != n {
        return Err(Error::new(ErrorKind::Redis, "unexpected MGET reply length"));
    }
    Ok(values
        .into_iter()
        .map(|v| match v {
            Value::Null => None,
            v => v.as_bytes().map(<[u8]>::to_vec),
        })
        .collect())
}

impl RedisStore {
    /// `SCRIPT LOAD` of one script (after a `NOSCRIPT`), on the node that answered it: the one
    /// owning `key`'s slot on a cluster (a promoted replica starts without the scripts its
    /// primary had), the server otherwise.
    pub(super) async fn load_script(&self, script: &Script, key: Option<&str>) -> Result<()> {
        let node = key.map_or(fred::types::ClusterHash::Random, |k| {
            fred::types::ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes()))
        });
        let sha1: String = self
            .bounded("redis SCRIPT LOAD", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static("SCRIPT", node, false),
                    vec![Value::from_static_str("LOAD"), Value::from(script.lua)],
                )
            })
            .await?;
        if sha1 != script.sha1 {
            return Err(Error::new(
                ErrorKind::Redis,
                format!("SCRIPT LOAD answered {sha1}, not {}", script.sha1),
            ));
        }
        Ok(())
    }

    /// `MGET`: for each key, its value, or `None` (nothing, or another type).
    pub(crate) async fn mget(
        &self,
        what: &'static str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let n = keys.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let reply: Value = self.bounded(what, |c| c.mget(keys)).await?;
        mget_values(reply, n)
    }

    /// `SET key value PX ttl [NX]`; returns whether the value was written.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
        nx: bool,
    ) -> Result<bool> {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let span = tracing::debug_span!(
            "layercache.l2.set",
            db.system = "redis",
            db.operation.name = "SET",
            otel.kind = "client",
            bytes = value.len(),
            nx
        );
        let reply: Value = self
            .bounded("redis SET", |c| {
                c.set(
                    key,
                    value,
                    Some(Expiration::PX(px)),
                    nx.then_some(SetOptions::NX),
                    false,
                )
            })
            .instrument(span)
            .await?;
        Ok(!reply.is_null())
    }

    /// Sets a tag's mark to a new random token (`SET … PX`).
    pub(crate) async fn set_mark(&self, key: &str, token: String, ttl_ms: u64) -> Result<()> {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let _: Value = self
            .bounded("redis SET (tag mark)", |c| {
                c.set(key, token, Some(Expiration::PX(px)), None, false)
            })
            .await?;
        Ok(())
    }

    /// Deletes a page of a tag's members and removes them from its set, atomically (see
    /// `drop_tag_page.lua`).
    pub(crate) async fn drop_tag_page(&self, set: &str, members: Vec<String>) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(1 + members.len());
        keys.push(set.to_owned());
        keys.extend(members);
        let _: i64 = self
            .script(
                "redis EVALSHA (drop tag page)",
                &SCRIPTS.drop_tag_page,
                keys,
                Vec::new(),
            )
            .await?;
        Ok(())
    }

    /// One page of `SSCAN key cursor COUNT count`: the next cursor and the members.
    pub(crate) async fn sscan_page(
        &self,
        key: &str,
        cursor: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        let args: Vec<Value> = vec![
            Value::from(key),
            Value::from(cursor),
            Value::from_static_str("COUNT"),
            Value::from(count.to_string()),
        ];
        let reply: Value = self
            .bounded("redis SSCAN", |c| {
                c.custom(
                    fred::types::CustomCommand::new_static(
                        "SSCAN",
                        fred::types::ClusterHash::FirstKey,
                        false,
                    ),
                    args,
                )
            })
            .await?;
        parse_scan_reply(reply, "SSCAN")
    }

    /// Several writes of one region, one round trip per [`MAX_BATCH_WRITE`] entries: a `SET` per
    /// entry and the fence's `GET` when every entry is plain (see `fenced_set`), else one
    /// `fill_batch.lua` run.
    ///
    /// [`MAX_BATCH_WRITE`]: crate::remote::MAX_BATCH_WRITE
    pub(crate) async fn fill_batch(&self, batch: BatchWrite<'_>) -> Result<Vec<Filled>> {
        let BatchWrite {
            mut entries,
            fence,
            generation_key,
            tags,
            marks,
        } = batch;
        let mut results = Vec::with_capacity(entries.len());
        let operation = if tags.is_empty()
            && marks.is_empty()
            && entries.iter().all(super::fenced_set::plain_entry)
        {
            "SET"
        } else {
            "EVALSHA"
        };
        let span = super::set_many_span(operation, entries.len());
        async {
            while !entries.is_empty() {
                let rest = entries.split_off(entries.len().min(crate::remote::MAX_BATCH_WRITE));
                let mut chunk = BatchWrite {
                    entries,
                    fence,
                    generation_key,
                    tags: tags.clone(),
                    marks: marks.clone(),
                };
                if super::fenced_set::plain_batch(&chunk) {
                    // No script (see `fenced_set`): a `SET` per entry, then the fence's `GET`.
                    results.extend(self.fill_batch_plain(chunk).await?);
                    entries = rest;
                    continue;
                }
                let (keys, args) = fill_batch_command(&mut chunk);
                let replies: Vec<i64> = self
                    .script(
                        "redis EVALSHA (fill batch)",
                        &SCRIPTS.fill_batch,
                        keys,
                        args,
                    )
                    .await?;
                if replies.len() != chunk.entries.len() {
                    return Err(Error::new(ErrorKind::Redis, "unexpected fill batch reply"));
                }
                results.extend(replies.into_iter().map(filled));
                entries = rest;
            }
            Ok(results)
        }
        .instrument(span)
        .await
    }

    /// Takes a lock: `SET key token NX PX ttl`; returns whether it was taken.
    pub(crate) async fn try_lock(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        self.set(key, token.as_bytes().to_vec(), ttl_ms, true).await
    }

    /// Takes the load locks `keys` for `ttl_ms` where nobody holds them: a `SET key token NX PX
    /// ttl` each, sent together (one round trip; on a cluster fred routes each by its key). For
    /// each, whether it was taken, or why that is not known.
    pub(crate) async fn try_lock_many(
        &self,
        keys: &[String],
        token: &str,
        ttl_ms: u64,
    ) -> Vec<Result<bool>> {
        let what = "redis SET NX × n (load locks)";
        let n = keys.len();
        if n == 0 {
            return Vec::new();
        }
        let value = bytes::Bytes::copy_from_slice(token.as_bytes());
        let commands: super::fenced_set::Commands = keys
            .iter()
            .map(|key| super::command::Cmd::Set {
                key: key.clone(),
                value: value.clone(),
                ttl_ms,
                nx: true,
                first: false,
            })
            .collect();
        let replies = self.send_each_judged(what, commands).await;
        match replies {
            Ok(replies) if replies.len() == n => replies
                .into_iter()
                .map(|r| r.map(|v| !v.is_null()).map_err(|e| super::map_err(what, e)))
                .collect(),
            Ok(_) => vec![Err(Error::new(ErrorKind::Redis, "unexpected SET NX replies")); n],
            Err(e) => vec![Err(e); n],
        }
    }

    /// `get_or_lock.lua`: the entry, or the load lock when there is none.
    pub(crate) async fn get_or_lock(
        &self,
        key: &str,
        lock: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        let span = tracing::debug_span!(
            "layercache.l2.get",
            db.system = "redis",
            db.operation.name = "EVALSHA",
            otel.kind = "client",
            hit = tracing::field::Empty,
            locked = tracing::field::Empty
        );
        let reply: Value = self
            .script(
                "redis EVALSHA (get or lock)",
                &SCRIPTS.get_or_lock,
                vec![key.to_owned(), lock.to_owned()],
                vec![Value::from(token), Value::from(ttl_ms.to_string())],
            )
            .instrument(span.clone())
            .await?;
        let bad = || Error::new(ErrorKind::Redis, "unexpected get-or-lock reply");
        let Value::Array(parts) = reply else {
            return Err(bad());
        };
        let [found, second] = <[Value; 2]>::try_from(parts).map_err(|_| bad())?;
        let got = match (found.as_i64(), second) {
            (Some(1), value) => (Some(value.as_bytes().ok_or_else(bad)?.to_vec()), false),
            (Some(0), locked) => (None, locked.as_i64() == Some(1)),
            _ => return Err(bad()),
        };
        span.record("hit", got.0.is_some());
        span.record("locked", got.1);
        Ok(got)
    }

    /// Extends a lock we hold; returns whether we still held it.
    pub(crate) async fn renew_lock(&self, key: &str, token: &str, ttl_ms: u64) -> Result<bool> {
        let args = vec![Value::from(token), Value::from(ttl_ms.to_string())];
        let n: i64 = self
            .script(
                "redis EVALSHA (renew lock)",
                &SCRIPTS.renew_lock,
                vec![key.to_owned()],
                args,
            )
            .await?;
        Ok(n == 1)
    }

    /// Releases a lock if we still hold it; returns whether we did.
    pub(crate) async fn release_lock(&self, key: &str, token: &str) -> Result<bool> {
        let n: i64 = self
            .script(
                "redis EVALSHA (release lock)",
                &SCRIPTS.release_lock,
                vec![key.to_owned()],
                vec![Value::from(token)],
            )
            .await?;
        Ok(n == 1)
    }

    async fn eval_u64(
        &self,
        what: &'static str,
        script: &Script,
        key: &str,
        args: Vec<String>,
    ) -> Result<u64> {
        let args = args.into_iter().map(Value::from).collect();
        let reply: String = self
            .script(what, script, vec![key.to_owned()], args)
            .await?;
        reply.parse::<u64>().map_err(|e| {
            Error::new(
                ErrorKind::Redis,
                format!("{what}: not a generation: {reply:?}"),
            )
            .with_source(e)
        })
    }

    /// Reads (or creates) a region's generation and refreshes its TTL.
    pub(crate) async fn load_generation(
        &self,
        key: &str,
        initial: u64,
        ttl: Duration,
    ) -> Result<u64> {
        self.eval_u64(
            "loading a region generation",
            &SCRIPTS.load_generation,
            key,
            vec![initial.to_string(), ttl.as_millis().to_string()],
        )
        .await
    }

    /// Moves a region's generation past its current value and to at least `floor`.
    pub(crate) async fn bump_generation(
        &self,
        key: &str,
        floor: u64,
        ttl: Duration,
    ) -> Result<u64> {
        self.eval_u64(
            "bumping a region generation",
            &SCRIPTS.bump_generation,
            key,
            vec![floor.to_string(), ttl.as_millis().to_string()],
        )
        .await
    }

    /// One page of `SCAN cursor MATCH prefix* COUNT count` (the prefix's glob characters
    /// escaped): the next cursor and the keys.
    pub(crate) async fn scan_prefix(
        &self,
        prefix: &str,
        cursor: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        let pattern = glob_prefix(prefix);
        let reply: Value = self
            .bounded("redis SCAN", |c| {
                c.scan_page(cursor.to_owned(), pattern, Some(count), None)
            })
            .await?;
        parse_scan_reply(reply, "SCAN")
    }

    /// `UNLINK` of several keys in one command.
    pub(crate) async fn unlink_many(&self, keys: Vec<String>) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let _: i64 = self.bounded("redis UNLINK", |c| c.unlink(keys)).await?;
        Ok(())
    }
}

/// Parses a `SCAN`-family reply: `[cursor, [items]]`.
pub(super) fn parse_scan_reply(reply: Value, what: &'static str) -> Result<(String, Vec<String>)> {
    let bad = || Error::new(ErrorKind::Redis, format!("unexpected {what} reply"));
    let Value::Array(mut parts) = reply else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let items = match parts.pop() {
        Some(Value::Array(items)) => items.into_iter().filter_map(|k| k.into_string()).collect(),
        _ => return Err(bad()),
    };
    let next = parts.pop().and_then(|c| c.into_string()).ok_or_else(bad)?;
    Ok((next, items))
}

/// A `MATCH` pattern for the keys starting with `prefix`: its glob characters escaped, then `*`.
pub(super) fn glob_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scan_prefix_matches_its_glob_characters_literally() {
        assert_eq!(super::glob_prefix("app:d2:"), "app:d2:*");
        assert_eq!(super::glob_prefix(r"a*b?[c]\\"), r"a\*b\?\[c\]\\\\*");
    }
}
