//! Redis Cluster as the remote store: the same rules as one server, kept per slot.
//!
//! [`placement`] says where keys live (buckets, each with its own copy of what a write must be
//! checked against). Here, each call of the seam becomes calls that stay within one slot:
//!
//! - **Reads** go to the data key's bucket; a batch read is one `MGET` per bucket, all of them
//!   pipelined (fred sends each node its share at once).
//! - **Fills** run the same scripts as on one server, on keys of one bucket: the data key, its
//!   tags' member sets and mark copies in that bucket, and the bucket's copy of the region's
//!   generation as the fence.
//! - **A generation move** raises every bucket's copy first, then the region's generation
//!   itself: a writer that read the old generation is fenced in any bucket once the move is
//!   visible anywhere. A copy found missing or behind the fence (expired, lost with a node,
//!   or a move that failed half way) is brought up to the region's generation when that is the
//!   fence, then the write is tried again (`catch_up`).
//! - **A tag invalidation** replaces its group's mark in every bucket, then walks the buckets'
//!   member sets (`drop_tag_bucket.lua`, pipelined).
//! - **The bus** stays plain `PUBLISH` (the cluster forwards it to every node), always sent to
//!   the node that owns the channel's slot so that one sender's messages keep their order; a
//!   write's announcement is sent after its script answered (two round trips), since the two
//!   go to different nodes.
//! - **Scans** visit every primary in turn.

use std::collections::BTreeMap;

use fred::{
    prelude::ClientLike,
    types::{config::Server, ClusterHash, CustomCommand, Value},
};
use tracing::Instrument;

use super::{fill_batch_command, fill_command, map_err, RedisStore, Script, SCRIPTS};
use crate::{
    error::{Error, ErrorKind, Result},
    remote::{BatchFilled, BatchWrite, Filled, Write},
};

mod keyspace;
pub(crate) mod placement;
mod plain_batch;
mod reads;
mod seam;

use placement::{place, Bucket};

/// How many members of a tag's bucket one script run removes.
const TAG_PAGE: usize = 500;

/// A Redis Cluster, through one clustered fred client.
#[derive(Debug, Clone)]
pub(crate) struct ClusterStore {
    inner: RedisStore,
}

/// One command of a pipeline: a script, a plain command routed by its slot, or a write's
/// `SET`s and fence.
type Command = super::command::Cmd;

fn script_command(script: &Script, slot: u16, keys: Vec<String>, args: Vec<Value>) -> Command {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(Value::from(script.sha1.as_str()));
    all.push(Value::from(keys.len().to_string()));
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    Command::by_slot("EVALSHA", slot, all)
}

fn unexpected(what: &'static str) -> Error {
    Error::new(ErrorKind::Redis, format!("unexpected {what} reply"))
}

impl ClusterStore {
    /// Wraps a connected clustered client, loading every script on every primary.
    pub(crate) async fn new(inner: RedisStore) -> Result<Self> {
        let store = Self { inner };
        if store.inner.is_connected() {
            // Best effort: a script missing later is loaded then (`NOSCRIPT`).
            let _ = store.load_scripts().await;
        }
        Ok(store)
    }

    /// `SCRIPT LOAD` of every script on every primary.
    async fn load_scripts(&self) -> Result<()> {
        for node in self.primaries() {
            let client = self.on_node(node);
            for script in SCRIPTS.all() {
                let _: Value = self
                    .inner
                    .bounded("redis SCRIPT LOAD (cluster node)", |_| {
                        client.custom(
                            CustomCommand::new_static("SCRIPT", ClusterHash::Random, false),
                            vec![Value::from_static_str("LOAD"), Value::from(script.lua)],
                        )
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// The client, sending to one node.
    fn on_node(&self, node: Server) -> fred::clients::WithOptions<fred::prelude::Client> {
        self.inner
            .command_client()
            .with_options(&fred::types::config::Options {
                cluster_node: Some(node),
                timeout: Some(self.inner.timeout),
                fail_fast: true,
                ..Default::default()
            })
    }

    /// Sends `commands` at once (each to its slot's node) and returns their replies in order.
    /// Scripts a node did not have (`NOSCRIPT`: a new, restarted or promoted node) are loaded
    /// everywhere and those commands alone sent again: they did not run.
    async fn pipelined(
        &self,
        what: &'static str,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Value>>> {
        self.pipelined_with(what, commands, false).await
    }

    /// [`pipelined`](Self::pipelined) where each command has its own outcome: a node that did
    /// not answer fails its commands only (and counts against the breaker), where `pipelined`
    /// fails the call.
    async fn pipelined_each(
        &self,
        what: &'static str,
        commands: Vec<Command>,
    ) -> Result<Vec<Result<Value>>> {
        self.pipelined_with(what, commands, true).await
    }

    async fn pipelined_with(
        &self,
        what: &'static str,
        commands: Vec<Command>,
        each: bool,
    ) -> Result<Vec<Result<Value>>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut replies = self.send(what, &commands, each).await?;
        let missing: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if super::scripts::is_noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !missing.is_empty() {
            self.load_scripts().await?;
            let again: Vec<Command> = missing.iter().map(|&i| commands[i].clone()).collect();
            let answers = self.send(what, &again, each).await?;
            for (i, answer) in missing.into_iter().zip(answers) {
                replies[i] = answer;
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.map_err(|e| map_err(what, e)))
            .collect())
    }

    /// Sends `commands` at once; with `each`, every reply stands on its own (an outage among
    /// them still counts against the breaker), else an outage fails the call.
    async fn send(
        &self,
        what: &'static str,
        commands: &[Command],
        each: bool,
    ) -> Result<Vec<Result<Value, fred::error::Error>>> {
        let n = commands.len();
        if each {
            return self.inner.send_each_judged(what, commands.to_vec()).await;
        }
        // Each a command of its own, not a fred `Pipeline` (see `send_each`): a timed-out
        // pipeline's commands would be sent again after a reconnect.
        self.inner
            .bounded(what, |c| {
                let sent = super::pipeline::send_each(c, commands.to_vec());
                async move { super::pipeline_outcome(super::pipeline::replies(sent).await, n, what) }
            })
            .await
    }

    /// One command, through [`pipelined`](Self::pipelined).
    async fn one(&self, what: &'static str, c: Command) -> Result<Value> {
        self.pipelined(what, vec![c])
            .await?
            .pop()
            .ok_or_else(|| unexpected(what))?
    }

    /// Brings bucket `b`'s copy of the generation at `generation_key` up to `fence` when that
    /// is the region's generation now; returns whether it did (the write may be tried again).
    async fn catch_up(
        &self,
        b: Bucket,
        generation_key: &str,
        fence: u64,
        ttl: u64,
    ) -> Result<bool> {
        let current = self.inner.get(generation_key).await?;
        let current = current
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok());
        if current != Some(fence) {
            return Ok(false);
        }
        self.raise(vec![(b, generation_key)], fence, ttl).await?;
        Ok(true)
    }

    /// Raises the generation copies of the given buckets to at least `generation`.
    async fn raise(&self, copies: Vec<(Bucket, &str)>, generation: u64, ttl_ms: u64) -> Result<()> {
        let commands = copies
            .into_iter()
            .map(|(b, key)| {
                script_command(
                    &SCRIPTS.raise_generation,
                    b.slot(),
                    vec![b.generation_copy(key)],
                    vec![
                        Value::from(generation.to_string()),
                        Value::from(ttl_ms.to_string()),
                    ],
                )
            })
            .collect();
        for r in self
            .pipelined("redis EVALSHA (raise generation)", commands)
            .await?
        {
            r?;
        }
        Ok(())
    }

    /// A plain fenced write on bucket `b` without a script (see `fenced_set`): the `SET` and
    /// the `GET` of the bucket's generation copy, pipelined. A copy found behind the fence (the
    /// bucket's first write under this generation) is caught up; the write then stands as it
    /// landed, in the live key space (the catch-up checks the region's generation is the fence).
    async fn fenced_set(
        &self,
        b: Bucket,
        generation_key: &str,
        fence: u64,
        commands: super::fenced_set::Commands,
    ) -> Result<Filled> {
        let what = "redis SET + GET (generation)";
        let mut replies = self.pipelined(what, commands).await?.into_iter();
        let (Some(set), Some(copy), None) = (replies.next(), replies.next(), replies.next()) else {
            return Err(unexpected("SET + GET"));
        };
        let (set, copy) = (set?, copy?);
        let filled = super::fenced_set::outcome(&set, Some(&copy), Some(fence));
        if filled == Filled::Fenced
            && super::fenced_set::behind(&copy, fence)
            && self
                .catch_up(b, generation_key, fence, generation_ttl_ms())
                .await?
        {
            return Ok(super::fenced_set::outcome(&set, None, None));
        }
        Ok(filled)
    }

    /// The fill script on one bucket's keys; a fence found behind is caught up once.
    async fn fill(&self, write: Write<'_>) -> Result<Filled> {
        let (b, key) = place(write.key);
        let condition = write.condition;
        let copy = b.generation_copy(write.generation_key);
        if let (true, Some(fence)) = (super::fenced_set::plain(&write), condition.fence) {
            let commands = super::fenced_set::commands(
                Write {
                    key: &key,
                    value: write.value,
                    ttl_ms: write.ttl_ms,
                    tags: Vec::new(),
                    condition,
                    generation_key: &copy,
                },
                true,
            );
            return self
                .fenced_set(b, write.generation_key, fence, commands)
                .instrument(super::set_span(&condition, false))
                .await;
        }
        let marks: Vec<(String, Option<Vec<u8>>)> = condition
            .marks
            .iter()
            .map(|(k, v)| (b.mark(k), v.clone()))
            .collect();
        let tags: Vec<String> = write.tags.iter().map(|t| b.tag_set(t)).collect();
        let span = super::fill_span(&condition, false);
        let (keys, args) = fill_command(Write {
            key: &key,
            value: write.value,
            ttl_ms: write.ttl_ms,
            tags,
            condition: crate::remote::WriteCondition {
                marks: &marks,
                ..condition
            },
            generation_key: &copy,
        });
        // Sent again after a catch-up: cloning a command clones reference-counted bytes.
        let fill = script_command(&SCRIPTS.fill, b.slot(), keys, args);
        async {
            for attempt in 0..2 {
                let reply = self.one("redis EVALSHA (fill)", fill.clone()).await?;
                let code = reply.as_i64().ok_or_else(|| unexpected("fill"))?;
                match (code, condition.fence) {
                    (-3, Some(fence)) if attempt == 0 => {
                        let ttl = generation_ttl_ms();
                        if !self.catch_up(b, write.generation_key, fence, ttl).await? {
                            return Ok(Filled::Fenced);
                        }
                    }
                    _ => return Ok(super::filled(code)),
                }
            }
            Ok(Filled::Fenced)
        }
        .instrument(span)
        .await
    }

    /// Batch fills, per bucket (and per [`MAX_BATCH_WRITE`] entries), pipelined: plain entries
    /// under a fence as a `SET` each and the `GET` of the bucket's generation copy (see
    /// `plain_batch`), others as one script; a bucket whose fence was behind is caught up (and
    /// its script sent again once).
    ///
    /// [`MAX_BATCH_WRITE`]: crate::remote::MAX_BATCH_WRITE
    async fn fill_many(&self, batch: BatchWrite<'_>) -> Result<BatchFilled> {
        let BatchWrite {
            entries,
            fence,
            generation_key,
            tags,
            marks,
        } = batch;
        let n = entries.len();
        // Plain entries under a fence go without a script (see `fenced_set`).
        let plain = fence.is_some()
            && tags.is_empty()
            && marks.is_empty()
            && entries.iter().all(super::fenced_set::plain_entry);
        let span = super::set_many_span(if plain { "SET" } else { "EVALSHA" }, n);
        async {
            // Per bucket, the entries' positions and the entries (keys placed).
            let mut groups: BTreeMap<Bucket, (Vec<usize>, Vec<crate::remote::BatchEntry>)> =
                BTreeMap::new();
            for (i, mut e) in entries.into_iter().enumerate() {
                let (b, key) = place(&e.key);
                e.key = key;
                let g = groups.entry(b).or_default();
                g.0.push(i);
                g.1.push(e);
            }
            let mut chunks: Vec<plain_batch::Chunk> = Vec::new();
            for (b, (mut at, mut es)) in groups {
                while !es.is_empty() {
                    let k = es.len().min(crate::remote::MAX_BATCH_WRITE);
                    let rest_e = es.split_off(k);
                    let rest_at = at.split_off(k);
                    chunks.push((b, at, es));
                    es = rest_e;
                    at = rest_at;
                }
            }
            if let (true, Some(fence)) = (plain, fence) {
                return self
                    .fill_plain_chunks(chunks, n, fence, generation_key)
                    .await;
            }
            // Built once: sent again after a catch-up, a command clones reference-counted bytes.
            let mut pending: Vec<(Bucket, Vec<usize>, Command)> = chunks
                .into_iter()
                .map(|(b, at, entries)| {
                    let copy = b.generation_copy(generation_key);
                    // The tags' sets of this bucket (see `placement`).
                    let mut chunk = BatchWrite {
                        entries,
                        fence,
                        generation_key: &copy,
                        tags: tags.iter().map(|t| b.tag_set(t)).collect(),
                        marks: marks.iter().map(|m| b.mark(m)).collect(),
                    };
                    let (keys, args) = fill_batch_command(&mut chunk);
                    (
                        b,
                        at,
                        script_command(&SCRIPTS.fill_batch, b.slot(), keys, args),
                    )
                })
                .collect();
            // Each bucket's script is its entries' outcome: one that failed (its node did not
            // answer) fails its own entries only.
            let mut out: BatchFilled = vec![Ok(Filled::Refused); n];
            for attempt in 0..2 {
                let commands = pending.iter().map(|(_, _, c)| c.clone()).collect();
                let replies = self
                    .pipelined_each("redis EVALSHA (fill batch)", commands)
                    .await?;
                let mut behind = Vec::new();
                for ((b, at, c), reply) in pending.into_iter().zip(replies) {
                    let codes = reply.and_then(|r| {
                        r.convert::<Vec<i64>>()
                            .map_err(|e| map_err("redis EVALSHA (fill batch)", e))
                    });
                    let codes = match codes {
                        Ok(codes) if codes.len() == at.len() => codes,
                        Ok(_) => Err(unexpected("fill batch"))?,
                        Err(e) => {
                            fail(&mut out, &at, &e);
                            continue;
                        }
                    };
                    if attempt == 0 && fence.is_some() && codes.first() == Some(&-3) {
                        behind.push((b, at, c));
                        continue;
                    }
                    for (i, code) in at.into_iter().zip(codes) {
                        out[i] = Ok(super::filled(code));
                    }
                }
                let Some(fence) = fence else { break };
                pending = Vec::new();
                for (b, at, c) in behind {
                    let ttl = generation_ttl_ms();
                    match self.catch_up(b, generation_key, fence, ttl).await {
                        Ok(true) => pending.push((b, at, c)),
                        Ok(false) => {
                            for i in at {
                                out[i] = Ok(Filled::Fenced);
                            }
                        }
                        Err(e) => fail(&mut out, &at, &e),
                    }
                }
                if pending.is_empty() {
                    break;
                }
            }
            Ok(out)
        }
        .instrument(span)
        .await
    }
}

/// Fails the entries at positions `at` with `e`.
fn fail(out: &mut BatchFilled, at: &[usize], e: &Error) {
    for &i in at {
        if let Some(slot) = out.get_mut(i) {
            *slot = Err(e.clone());
        }
    }
}

/// The TTL a caught-up generation copy gets (the region generation's own).
fn generation_ttl_ms() -> u64 {
    u64::try_from(crate::engine::GENERATION_TTL.as_millis()).unwrap_or(u64::MAX)
}
