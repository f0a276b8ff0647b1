//! A write and its bus announcement in one round trip: the command and the `PUBLISH` pipelined
//! on the data connection, numbered under the bus sequencer's lock.

use fred::{
    interfaces::{KeysInterface, PubsubInterface},
    prelude::ClientLike,
    types::Value,
};
use tracing::Instrument;

use super::{
    command::{Cmd, Sent, Writing},
    evalsha, fenced_set, fill_batch_command, fill_command, fill_span, filled, is_noscript,
    is_outage, map_err, Lane, RedisStore, Script, SCRIPTS,
};
use crate::{
    error::Result,
    remote::{Announcement, BatchWrite, Filled, Write},
    sequencer::Sequencer,
};

/// What a pipeline's replies (`try_all`) say as a whole: the replies, one per command, when
/// Redis answered them; an error when the pipeline failed as a whole (a reply count other than
/// `expected`) or when any command met an outage (a timeout, a dropped connection). A pipeline
/// whose commands timed out must not count as an answer from Redis: the circuit breaker would
/// take it for a successful probe and close in the middle of an outage.
pub(super) fn pipeline_outcome(
    mut replies: Vec<Result<Value, fred::error::Error>>,
    expected: usize,
    what: &'static str,
) -> Result<Vec<Result<Value, fred::error::Error>>, fred::error::Error> {
    if replies.len() != expected {
        return Err(replies
            .pop()
            .and_then(Result::err)
            .unwrap_or_else(|| unexpected(what)));
    }
    match replies
        .iter()
        .position(|r| r.as_ref().is_err_and(is_outage))
    {
        Some(i) => Err(replies
            .swap_remove(i)
            .err()
            .unwrap_or_else(|| unexpected(what))),
        None => Ok(replies),
    }
}

/// Polls a future once, so that a command it sends is handed to the client's connection now
/// (fred hands a command to its router on the first poll, synchronously), and returns it to be
/// awaited later. Used under the bus sequencer's lock: the order in which commands reach the
/// connection is then the order of their sequence numbers.
fn primed<F: std::future::Future + Unpin>(mut future: F) -> Primed<F> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut future).poll(&mut cx) {
        std::task::Poll::Ready(v) => Primed::Done(Some(v)),
        std::task::Poll::Pending => Primed::Running(future),
    }
}

/// Hands `commands` to `c`'s connection back to back, each as a command of its own, in order
/// (each is polled once: fred hands a command to its router on its first poll), and returns
/// them to be awaited with [`replies`].
///
/// Not a fred `Pipeline`, for two reasons found here. fred 10.1 does not mark a pipeline's
/// commands timed out when the pipeline times out, so after a reconnect it sends them anyway:
/// a write its caller was told had failed would land after the outage (the fill script hid this
/// after a restart, where the replayed `EVALSHA` met an empty script cache; a plain `SET` does
/// not — `tests/faults.rs`). Each command of its own carries its own timeout and is dropped
/// once it passed. And fred flushes the socket after every command of a pipeline, while its
/// own commands handed over back to back usually leave in one write (custom ones do not: see
/// [`Cmd`]).
pub(super) fn send_each<'c, C>(c: &'c C, commands: fenced_set::Commands) -> Vec<Primed<Sent<'c>>>
where
    C: ClientLike + KeysInterface + PubsubInterface + Sync,
{
    commands
        .into_iter()
        .map(|command| primed(command.send(c)))
        .collect()
}

impl RedisStore {
    /// [`send_each`] of `commands`, bounded as one call, each command with its own outcome: an
    /// outage among them (on a cluster, a node that did not answer) counts against the breaker,
    /// and the other commands' replies stand.
    pub(super) async fn send_each_judged(
        &self,
        what: &'static str,
        commands: fenced_set::Commands,
    ) -> Result<Vec<Result<Value, fred::error::Error>>> {
        self.bounded_judged(
            Lane::Commands,
            what,
            |c| {
                let sent = send_each(c, commands);
                async move { Ok::<_, fred::error::Error>(replies(sent).await) }
            },
            |replies| replies.iter().any(|r| r.as_ref().is_err_and(is_outage)),
        )
        .await
    }
}

/// The replies of [`send_each`]'s commands, in order.
pub(super) async fn replies<F>(sent: Vec<Primed<F>>) -> Vec<Result<Value, fred::error::Error>>
where
    F: std::future::Future<Output = Result<Value, fred::error::Error>> + Unpin,
{
    let mut replies = Vec::with_capacity(sent.len());
    for reply in sent {
        replies.push(reply.await);
    }
    replies
}

/// What the replies of a plain write's [`fenced_set::commands`] (its `SET`, and with a fence
/// the generation's `GET`) say.
fn plain_outcome(
    replies: Vec<Result<Value, fred::error::Error>>,
    fence: Option<u64>,
    what: &'static str,
) -> Result<Filled> {
    let mut replies = replies.into_iter();
    let (Some(set), generation, None) = (replies.next(), replies.next(), replies.next()) else {
        return Err(map_err(what, unexpected(what)));
    };
    if fence.is_some() != generation.is_some() {
        return Err(map_err(what, unexpected(what)));
    }
    let set = set.map_err(|e| map_err("redis SET", e))?;
    let generation = generation
        .transpose()
        .map_err(|e| map_err("redis GET (generation)", e))?;
    Ok(fenced_set::outcome(&set, generation.as_ref(), fence))
}

/// A future polled once by [`primed`].
pub(super) enum Primed<F: std::future::Future> {
    Done(Option<F::Output>),
    Running(F),
}

impl<F: std::future::Future + Unpin> std::future::Future for Primed<F>
where
    F::Output: Unpin,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.get_mut() {
            Self::Done(v) => match v.take() {
                Some(v) => std::task::Poll::Ready(v),
                None => std::task::Poll::Pending,
            },
            Self::Running(f) => std::pin::Pin::new(f).poll(cx),
        }
    }
}

pub(super) fn unexpected(what: &str) -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Protocol,
        format!("unexpected pipeline reply to {what}"),
    )
}

/// What the replies of a plain batch's [`fenced_set::batch_commands`] say, one per entry: every
/// `SET`'s reply (`nil`: a `SET NX` found the key taken), then with a fence the generation's
/// `GET`. An error reply to any `SET` fails the batch (as an error inside the batch script did).
fn plain_batch_outcome(
    mut replies: Vec<Result<Value, fred::error::Error>>,
    n: usize,
    fence: Option<u64>,
    what: &'static str,
) -> Result<Vec<Filled>> {
    if replies.len() != n + usize::from(fence.is_some()) {
        return Err(map_err(what, unexpected(what)));
    }
    let generation = match fence {
        Some(_) => Some(
            replies
                .pop()
                .transpose()
                .map_err(|e| map_err("redis GET (generation)", e))?
                .unwrap_or(Value::Null),
        ),
        None => None,
    };
    replies
        .into_iter()
        .map(|set| {
            let set = set.map_err(|e| map_err("redis SET", e))?;
            Ok(fenced_set::outcome(&set, generation.as_ref(), fence))
        })
        .collect()
}

impl RedisStore {
    /// A plain batch (see [`fenced_set::plain_batch`]) without a script: a `SET` per entry and
    /// the fence's `GET`, handed to the connection back to back.
    pub(super) async fn fill_batch_plain(&self, batch: BatchWrite<'_>) -> Result<Vec<Filled>> {
        let what = "redis SET × n + GET (generation)";
        let (n, fence) = (batch.entries.len(), batch.fence);
        let commands = fenced_set::batch_commands(batch);
        let expected = commands.len();
        let replies = self
            .bounded(what, |c| {
                let sent = send_each(c, commands);
                async move { pipeline_outcome(replies(sent).await, expected, what) }
            })
            .await?;
        plain_batch_outcome(replies, n, fence, what)
    }

    /// `PUBLISH` of a bus message numbered by `sequencer`: the number is taken and the command
    /// handed to the connection under the sequencer's lock, so messages reach Redis in number
    /// order. Returns the number (0 when the call was skipped before one was taken) and the
    /// outcome.
    pub(crate) async fn publish_sequenced(
        &self,
        announcement: Announcement<'_>,
    ) -> (u64, Result<()>) {
        let (taken, replies) = self
            .sequenced(
                "redis PUBLISH",
                Vec::new(),
                announcement.sequencer,
                announcement.message,
            )
            .await;
        let result = replies.and_then(|mut r| match r.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(map_err("redis PUBLISH", e)),
            None => Err(map_err("redis PUBLISH", unexpected("PUBLISH"))),
        });
        (taken, result)
    }

    /// A plain write with a fence and no announcement: `SET` and the generation's `GET`
    /// pipelined (see [`fenced_set`]).
    pub(super) async fn fenced_set(&self, write: Write<'_>, fence: u64) -> Result<Filled> {
        let what = "redis SET + GET (generation)";
        let span = super::set_span(&write.condition, false);
        let (_writing, alone) = Writing::enter(&self.writes);
        let commands = fenced_set::commands(write, alone);
        let replies = self
            .bounded(what, |c| {
                let sent = send_each(c, commands);
                async move { pipeline_outcome(replies(sent).await, 2, what) }
            })
            .instrument(span)
            .await?;
        plain_outcome(replies, Some(fence), what)
    }

    /// A write (the fill script, as [`fill`](Self::fill)) and its announcement on the bus in
    /// one round trip: `EVALSHA` and `PUBLISH` pipelined on the one connection, the message
    /// numbered under the sequencer's lock so the sender's messages still reach Redis in order
    /// (receivers detect gaps as before). Redis runs the `PUBLISH` right after the script, so a
    /// receiver drops its copy only once the write is visible; an announcement of a write that
    /// was fenced is spurious and harmless (it only drops a copy). Returns what became of the
    /// write and of the announcement (its sequence number; an error there is the
    /// announcement's alone: the write stands).
    pub(crate) async fn fill_announced(
        &self,
        write: Write<'_>,
        announcement: Announcement<'_>,
    ) -> Result<(Filled, Result<u64>)> {
        // Hot-path note: the rarer paths are boxed, so that the common one (a plain write) is
        // a small future — this one is itself boxed behind the remote store's trait, and a
        // future of several KiB (a fred command's, held inline) costs every write an
        // allocation past the allocator's per-thread cache and its copy.
        if self.has_command_lanes() && write.value.len() >= super::pool::LARGE_WRITE_BYTES {
            // A large write must not hold the bus (heartbeats, other writes' announcements)
            // behind its transfer: it goes on a command connection, and its announcement on the
            // bus connection once Redis answered (two round trips; the announcement still
            // follows the write).
            return Box::pin(async move {
                let filled = self.fill(write).await?;
                let (taken, published) = self.publish_sequenced(announcement).await;
                Ok((filled, published.map(|()| taken)))
            })
            .await;
        }
        if !fenced_set::plain(&write) {
            return Box::pin(self.fill_script_announced(write, announcement)).await;
        }
        // No script: `SET` (and the fence's `GET`) and the `PUBLISH`, pipelined.
        let condition = write.condition;
        let what = "redis SET + PUBLISH";
        let (_writing, alone) = Writing::enter(&self.writes);
        let (replies, published) = self
            .plain_announced(what, fenced_set::commands(write, alone), announcement)
            .instrument(super::set_span(&condition, true))
            .await?;
        let filled = plain_outcome(replies, condition.fence, what)?;
        Ok((filled, published))
    }

    /// [`fill_announced`](Self::fill_announced) of a write that needs the fill script.
    async fn fill_script_announced(
        &self,
        write: Write<'_>,
        announcement: Announcement<'_>,
    ) -> Result<(Filled, Result<u64>)> {
        let condition = write.condition;
        let (keys, args) = fill_command(write);
        let span = fill_span(&condition, true);
        let what = "redis EVALSHA (fill) + PUBLISH";
        let (reply, published) = self
            .script_announced(what, &SCRIPTS.fill, keys, args, announcement)
            .instrument(span)
            .await?;
        let written = reply
            .convert::<i64>()
            .map_err(|e| map_err("redis EVALSHA (fill)", e))?;
        Ok((filled(written), published))
    }

    /// [`fill_batch`](Self::fill_batch) of at most [`MAX_BATCH_WRITE`] entries and one
    /// announcement for all of them, in one round trip (as
    /// [`fill_announced`](Self::fill_announced)).
    ///
    /// [`MAX_BATCH_WRITE`]: crate::remote::MAX_BATCH_WRITE
    pub(crate) async fn fill_batch_announced(
        &self,
        mut batch: BatchWrite<'_>,
        announcement: Announcement<'_>,
    ) -> Result<(Vec<Filled>, Result<u64>)> {
        let n = batch.entries.len();
        if fenced_set::plain_batch(&batch) {
            // No script: a `SET` per entry, the fence's `GET` and the `PUBLISH`, back to back.
            let what = "redis SET × n + PUBLISH";
            let fence = batch.fence;
            let (replies, published) = self
                .plain_announced(what, fenced_set::batch_commands(batch), announcement)
                .instrument(super::set_many_span("SET", n))
                .await?;
            return Ok((plain_batch_outcome(replies, n, fence, what)?, published));
        }
        let (keys, args) = fill_batch_command(&mut batch);
        let span = super::set_many_span("EVALSHA", n);
        let what = "redis EVALSHA (fill batch) + PUBLISH";
        let (reply, published) = self
            .script_announced(what, &SCRIPTS.fill_batch, keys, args, announcement)
            .instrument(span)
            .await?;
        let written = reply
            .convert::<Vec<i64>>()
            .map_err(|e| map_err("redis EVALSHA (fill batch)", e))?;
        if written.len() != n {
            return Err(map_err(
                "redis EVALSHA (fill batch)",
                unexpected("a fill batch"),
            ));
        }
        Ok((written.into_iter().map(filled).collect(), published))
    }

    /// Plain commands (a write's `SET`s and fence) and their announcement, back to back on the
    /// bus connection: the commands' replies, and what became of the announcement (its
    /// sequence number; an error there is the announcement's alone).
    async fn plain_announced(
        &self,
        what: &'static str,
        commands: fenced_set::Commands,
        announcement: Announcement<'_>,
    ) -> Result<(Vec<Result<Value, fred::error::Error>>, Result<u64>)> {
        let Announcement { sequencer, message } = announcement;
        let (taken, replies) = self.sequenced(what, commands, sequencer, message).await;
        let mut replies = replies?;
        let published = replies
            .pop()
            .ok_or_else(|| map_err(what, unexpected(what)))?
            .map(|_| taken)
            .map_err(|e| map_err("redis PUBLISH", e));
        Ok((replies, published))
    }

    /// A script and its announcement on the bus in one round trip: `EVALSHA` and `PUBLISH`
    /// pipelined on the one connection, the message numbered under the sequencer's lock so the
    /// sender's messages still reach Redis in order (receivers detect gaps as before). Redis
    /// runs the `PUBLISH` right after the script, so a receiver drops its copy only once the
    /// write is visible; an announcement of a write that was refused is spurious and harmless
    /// (it only drops a copy). Returns the script's reply and what became of the announcement
    /// (its sequence number; an error there is the announcement's alone: the write stands).
    async fn script_announced(
        &self,
        what: &'static str,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
        announcement: Announcement<'_>,
    ) -> Result<(Value, Result<u64>)> {
        let Announcement { sequencer, message } = announcement;
        let first_key = keys.first().cloned();
        let (name, all) = evalsha(script, keys, args);
        let command = Cmd::Custom(name, all);
        let (mut taken, mut replies) = self
            .sequenced(what, vec![command.clone()], sequencer, message)
            .await;
        if let Ok([Err(e), _]) = replies.as_deref() {
            if is_noscript(e) {
                // The server lacks the script (new, restarted, or flushed): load it and send
                // both again. The first announcement went out for a write that did not happen:
                // it only made other instances drop a copy.
                self.load_script(script, first_key.as_deref()).await?;
                (taken, replies) = self
                    .sequenced(what, vec![command], sequencer, message)
                    .await;
            }
        }
        let [written, published] = <[_; 2]>::try_from(replies?)
            .map_err(|_| map_err(what, unexpected("EVALSHA + PUBLISH")))?;
        let written = written.map_err(|e| map_err(what, e))?;
        let published = published
            .map(|_| taken)
            .map_err(|e| map_err("redis PUBLISH", e));
        Ok((written, published))
    }

    /// Sends `commands` (none, a script, or a write's `SET` and fence) and a bus message in one
    /// pipeline, bounded like every call: the message's sequence number is taken, and the
    /// pipeline handed to the connection, under the sequencer's lock. Returns the number taken
    /// (0 when the call was skipped) and every reply, the message's last, or the error that
    /// stood for all of them (a timeout, a lost connection).
    async fn sequenced(
        &self,
        what: &'static str,
        mut commands: fenced_set::Commands,
        sequencer: &Sequencer,
        message: &(dyn Fn(u64) -> Vec<u8> + Send + Sync),
    ) -> (u64, Result<Vec<Result<Value, fred::error::Error>>>) {
        let expected = 1 + commands.len();
        let clustered = self.main_client().is_clustered();
        let mut taken = 0;
        let replies = self
            .bounded_on(Lane::Bus, what, |c| {
                sequencer.next(|seq| {
                    taken = seq;
                    commands.push(announce(
                        clustered,
                        self.sharded_bus,
                        &sequencer.channel,
                        message(seq),
                    ));
                    let sent = send_each(c, commands);
                    async move { pipeline_outcome(replies(sent).await, expected, what) }
                })
            })
            .await;
        if taken > 0 {
            sequencer.sent(taken);
        }
        (taken, replies)
    }
}

/// The command that sends a bus message. On a cluster, always through the node owning the
/// channel's slot (one sender's messages leave from one connection, in sequence order):
/// `SPUBLISH` is routed so by fred, a plain `PUBLISH` only as a custom command (fred sends its
/// own to a random node).
fn announce(clustered: bool, sharded: bool, channel: &str, message: Vec<u8>) -> Cmd {
    match (clustered, sharded) {
        (true, true) => Cmd::Spublish {
            channel: channel.to_owned(),
            message: message.into(),
        },
        (true, false) => Cmd::by_slot(
            "PUBLISH",
            fred::util::redis_keyslot(channel.as_bytes()),
            vec![Value::from(channel), Value::Bytes(message.into())],
        ),
        (false, _) => Cmd::Publish {
            channel: channel.to_owned(),
            message: message.into(),
        },
    }
}
