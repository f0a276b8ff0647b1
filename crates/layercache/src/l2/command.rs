//! The commands a write hands to the connection back to back ([`send_each`]): its `SET`s, the
//! fence's `GET`, its announcement, or a script.
//!
//! Hot-path note: fred 10.1 flushes the socket after every *custom* command
//! (`CommandKind::_Custom` is in its `should_flush` list), but after one of its own commands
//! only when nothing else is queued behind it. Sent as custom commands, a write's `SET`, its
//! fence's `GET` and its `PUBLISH` left in three socket writes and came back in three reads
//! (13.8 system calls per `insert` against 6.8 for a fred `SET`, `strace -c`), and a batch of
//! 100 `SET`s in 100 writes. So `GET`, `PUBLISH`/`SPUBLISH` and a batch's `SET`s go as fred's
//! own commands, and leave together. A single write's `SET` goes first and alone when no
//! other single write is in flight ([`Cmd::Set`] with `first`, decided by [`Writing`]): Redis
//! starts on it while the client encodes the rest, and a lone write measured ~20 % slower when
//! all three left in one write (`compare` `write`, two cores on loopback). Among concurrent
//! writes that early flush is one more socket write each, so there it is not made (100
//! concurrent `insert`s: 4–13 % less CPU); the fence and the announcement follow in one write
//! either way. On a cluster, the commands sent per bucket (`MGET`, a tag mark's `SET`,
//! `UNLINK`) go as fred's own too: fred routes them by their first key, which carries the
//! bucket's tag. Scripts stay custom (fred flushes after an `EVALSHA` anyway), and so do commands
//! that must reach a node chosen by hash slot where fred's own would not (a `PUBLISH` on a
//! cluster: fred sends its own to a random node). See docs/BENCHMARKS.md, "Commands that leave
//! together".
//!
//! [`send_each`]: super::pipeline::send_each

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use fred::{
    interfaces::{KeysInterface, PubsubInterface},
    prelude::ClientLike,
    types::{ClusterHash, CustomCommand, Expiration, SetOptions, Value},
};

/// One command of a write, sent on its own (see the module's note).
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    /// `SET key value PX ttl_ms`, with `NX` when `nx`.
    Set {
        /// The data key.
        key: String,
        /// The stored bytes.
        value: Bytes,
        /// The time to live in milliseconds.
        ttl_ms: u64,
        /// Set only if absent.
        nx: bool,
        /// Sent at once, alone, as a custom command (a single write's `SET` while no other is in
        /// flight: see the module's note); otherwise as fred's own `SET`, which leaves with what
        /// is queued behind it.
        first: bool,
    },
    /// `GET key` (the fence's read of a generation key).
    Get(String),
    /// `PUBLISH channel message` on one server (fred routes its own `PUBLISH` to a random node
    /// of a cluster: there it goes as [`Cmd::Custom`], by the channel's slot).
    Publish {
        /// The bus channel.
        channel: String,
        /// The message.
        message: Bytes,
    },
    /// `SPUBLISH channel message` (sharded pub/sub: routed by the channel's slot).
    Spublish {
        /// The bus channel.
        channel: String,
        /// The message.
        message: Bytes,
    },
    /// `MGET keys…` (on a cluster: keys of one slot, which fred routes by the first).
    Mget(Vec<String>),
    /// `UNLINK keys…` (on a cluster: keys of one slot, which fred routes by the first).
    Unlink(Vec<String>),
    /// `PEXPIRE key ttl_ms` (a sliding batch read's extension of a key it read).
    Pexpire {
        /// The data key.
        key: String,
        /// The new time to live in milliseconds.
        ttl_ms: u64,
    },
    /// Any other command, as fred's custom command (which fred flushes at once).
    Custom(CustomCommand, Vec<Value>),
}

/// A command handed to the client, to be awaited.
pub(super) type Sent<'c> =
    Pin<Box<dyn Future<Output = Result<Value, fred::error::Error>> + Send + 'c>>;

impl Cmd {
    /// `name args…` as a custom command sent to the node owning `slot` (on one server: the
    /// server), flushed at once.
    pub(super) fn by_slot(name: &'static str, slot: u16, args: Vec<Value>) -> Self {
        Self::Custom(
            CustomCommand::new_static(name, ClusterHash::Custom(slot), false),
            args,
        )
    }

    /// Sends the command through `c` (fred hands it to its router on the first poll).
    pub(super) fn send<'c, C>(self, c: &'c C) -> Sent<'c>
    where
        C: ClientLike + KeysInterface + PubsubInterface + Sync,
    {
        match self {
            Self::Set {
                key,
                value,
                ttl_ms,
                nx,
                first: true,
            } => {
                let slot = fred::util::redis_keyslot(key.as_bytes());
                let mut args = Vec::with_capacity(5);
                args.push(Value::from(key));
                args.push(Value::Bytes(value));
                args.push(Value::from_static_str("PX"));
                args.push(Value::from(ttl_ms.to_string()));
                if nx {
                    args.push(Value::from_static_str("NX"));
                }
                Self::by_slot("SET", slot, args).send(c)
            }
            Self::Set {
                key,
                value,
                ttl_ms,
                nx,
                first: false,
            } => Box::pin(c.set::<Value, _, _>(
                key,
                value,
                Some(Expiration::PX(i64::try_from(ttl_ms).unwrap_or(i64::MAX))),
                nx.then_some(SetOptions::NX),
                false,
            )),
            Self::Get(key) => Box::pin(c.get::<Value, _>(key)),
            Self::Mget(keys) => Box::pin(c.mget::<Value, _>(keys)),
            Self::Unlink(keys) => Box::pin(c.unlink::<Value, _>(keys)),
            Self::Pexpire { key, ttl_ms } => Box::pin(c.pexpire::<Value, _>(
                key,
                i64::try_from(ttl_ms).unwrap_or(i64::MAX),
                None,
            )),
            Self::Publish { channel, message } => {
                Box::pin(c.publish::<Value, _, _>(channel, message))
            }
            Self::Spublish { channel, message } => {
                Box::pin(c.spublish::<Value, _, _>(channel, message))
            }
            Self::Custom(cmd, args) => Box::pin(c.custom::<Value, _>(cmd, args)),
        }
    }

    /// The command's name (for the tests).
    #[cfg(test)]
    pub(super) fn name(&self) -> &str {
        match self {
            Self::Set { .. } => "SET",
            Self::Get(_) => "GET",
            Self::Mget(_) => "MGET",
            Self::Unlink(_) => "UNLINK",
            Self::Pexpire { .. } => "PEXPIRE",
            Self::Publish { .. } => "PUBLISH",
            Self::Spublish { .. } => "SPUBLISH",
            Self::Custom(cmd, _) => &cmd.cmd,
        }
    }
}

/// A single write in flight, counted while it lasts: whether its `SET` leaves alone first
/// ([`Cmd::Set`] `first`) depends on whether it is alone. A lone write gains from Redis starting
/// on its `SET` early; among concurrent writes, the early flush is one more socket write each,
/// and their commands leave together better.
pub(super) struct Writing<'a>(&'a AtomicUsize);

impl<'a> Writing<'a> {
    /// Counts a write in; the flag says whether no other single write was in flight.
    pub(super) fn enter(writes: &'a AtomicUsize) -> (Self, bool) {
        let before = writes.fetch_add(1, Ordering::AcqRel);
        (Self(writes), before == 0)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
