//! The in-memory server as the engine's remote store.

use crate::rate::{decide, RateCall, RateReply};
use crate::remote::FencedLock;
use std::time::Duration;

use super::MemoryServer;
use crate::{
    error::Result,
    options::millis_ceil,
    remote::{
        each_filled, each_read, Announcement, BatchFilled, BatchWrite, BoxFuture, Filled, Read,
        RemoteStore, Write,
    },
};

/// A cache's handle on a [`MemoryServer`].
#[derive(Debug)]
pub(crate) struct MemoryStore {
    pub(super) server: MemoryServer,
}

impl MemoryStore {
    /// Sends an announcement numbered under its sequencer's lock, after running `before` (a
    /// write) under the same lock: receivers see the write before the message, and one sender's
    /// messages in sequence order.
    fn announce<T>(
        &self,
        announcement: Announcement<'_>,
        before: impl FnOnce() -> T,
    ) -> (u64, T, Result<()>) {
        let Announcement { sequencer, message } = announcement;
        let sender = self.server.sender(&sequencer.channel);
        let (seq, done, sent) = sequencer.next(|seq| {
            let done = before();
            let sent = self.server.check("publish").map(|()| {
                // No subscriber is not an error (as `PUBLISH` to nobody).
                let _ = sender.send(message(seq));
            });
            (seq, done, sent)
        });
        sequencer.sent(seq);
        (seq, done, sent)
    }
}

/// The clock in µs since the Unix epoch (what Redis's `TIME` gives the scripts).
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A future that is ready at once (the in-memory store never waits).
fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl RemoteStore for MemoryStore {
    fn is_connected(&self) -> bool {
        self.server.is_available()
    }

    fn breaker_open(&self) -> bool {
        false
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(self.server.run("get", |k| k.get(key)))
    }

    fn set_meta<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        ready(self.server.run("set meta", |k| {
            k.set(key, value, Some(ttl_ms));
            Ok(())
        }))
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<Read>> {
        let read = self.server.run("get many", |k| {
            Ok(keys.iter().map(|key| k.get_lenient(key)).collect())
        });
        ready(each_read(keys.len(), read))
    }

    fn get_and_touch_many<'a>(
        &'a self,
        keys: &'a [String],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Read>> {
        let read = self.server.run("get and touch many", |k| {
            Ok(keys
                .iter()
                .map(|key| {
                    let value = k.get_lenient(key);
                    if value.is_some() {
                        k.expire(key, ttl_ms);
                    }
                    value
                })
                .collect())
        });
        ready(each_read(keys.len(), read))
    }

    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        lock: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<(Option<Vec<u8>>, bool)>> {
        ready(self.server.run("get or lock", |k| match k.get(key)? {
            Some(value) => Ok((Some(value), false)),
            None => Ok((None, k.set_nx(lock, token.as_bytes().to_vec(), ttl_ms))),
        }))
    }

    fn get_and_touch<'a>(
        &'a self,
        key: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        ready(self.server.run("get", |k| {
            let value = k.get(key)?;
            k.expire(key, ttl_ms);
            Ok(value)
        }))
    }

    fn touch<'a>(&'a self, key: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<()>> {
        ready(self.server.run("touch", |k| {
            k.expire(key, ttl_ms);
            Ok(())
        }))
    }

    fn fill<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Filled>> {
        ready(self.server.run("fill", |k| k.fill(write)))
    }

    fn fill_many<'a>(&'a self, batch: BatchWrite<'a>) -> BoxFuture<'a, Result<BatchFilled>> {
        ready(
            self.server
                .run("fill many", |k| k.fill_many(batch))
                .map(each_filled),
        )
    }

    fn fill_many_announced<'a>(
        &'a self,
        batch: BatchWrite<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(BatchFilled, Result<u64>)>> {
        if let Err(e) = self.server.check("fill many") {
            return ready(Err(e));
        }
        let (seq, filled, sent) = self.announce(announcement, || {
            self.server.run("fill many", |k| k.fill_many(batch))
        });
        ready(filled.map(|f| (each_filled(f), sent.map(|()| seq))))
    }

    fn fill_announced<'a>(
        &'a self,
        write: Write<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(Filled, Result<u64>)>> {
        if let Err(e) = self.server.check("fill") {
            return ready(Err(e));
        }
        let (seq, filled, sent) =
            self.announce(announcement, || self.server.run("fill", |k| k.fill(write)));
        ready(filled.map(|f| (f, sent.map(|()| seq))))
    }

    fn publish<'a>(&'a self, announcement: Announcement<'a>) -> BoxFuture<'a, (u64, Result<()>)> {
        if let Err(e) = self.server.check("publish") {
            return ready((0, Err(e)));
        }
        let (seq, (), sent) = self.announce(announcement, || ());
        ready((seq, sent))
    }

    fn marks<'a>(
        &'a self,
        _data_key: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>>> {
        ready(self.server.run("marks", |k| {
            Ok(keys.iter().map(|key| k.get_lenient(key)).collect())
        }))
    }

    fn set_mark<'a>(
        &'a self,
        key: &'a str,
        token: String,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        ready(self.server.run("set mark", |k| {
            k.set(key, token.into_bytes(), Some(ttl_ms));
            Ok(())
        }))
    }

    fn tag_members_page<'a>(
        &'a self,
        set: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        ready(
            self.server
                .run("tag members", |k| k.members_page(set, cursor, count)),
        )
    }

    fn drop_tag_page<'a>(
        &'a self,
        set: &'a str,
        members: Vec<String>,
    ) -> BoxFuture<'a, Result<()>> {
        ready(
            self.server
                .run("drop tag page", |k| k.drop_members(set, &members)),
        )
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        ready(self.server.run("lock", |k| {
            Ok(k.set_nx(key, token.as_bytes().to_vec(), ttl_ms))
        }))
    }

    fn try_lock_many<'a>(
        &'a self,
        keys: &'a [String],
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Result<bool>>> {
        let taken = self.server.run("lock many", |k| {
            Ok(keys
                .iter()
                .map(|key| k.set_nx(key, token.as_bytes().to_vec(), ttl_ms))
                .collect::<Vec<bool>>())
        });
        ready(match taken {
            Ok(taken) => taken.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e); keys.len()],
        })
    }

    fn renew_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        ready(self.server.run("renew lock", |k| {
            let held = k.get(key)?.is_some_and(|t| t == token.as_bytes());
            Ok(held && k.expire(key, ttl_ms))
        }))
    }

    fn release_lock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        ready(self.server.run("release lock", |k| {
            let ours = k.get(key)?.is_some_and(|t| t == token.as_bytes());
            if ours {
                k.delete(key);
            }
            Ok(ours)
        }))
    }

    fn acquire_fenced<'a>(
        &'a self,
        lock: FencedLock<'a>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        ready(self.server.run("acquire lock", |k| {
            if !k.set_nx(lock.key, lock.token.as_bytes().to_vec(), ttl_ms) {
                return Ok(None);
            }
            // As `acquire_lock.lua`: above the last token, and at least the clock in µs.
            let now = now_micros();
            let last = k
                .get(lock.fence_key)?
                .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            let fence = last.saturating_add(1).max(now);
            k.set(
                lock.fence_key,
                fence.to_string().into_bytes(),
                Some(lock.fence_ttl_ms),
            );
            Ok(Some(fence))
        }))
    }

    fn rate_limit<'a>(&'a self, call: RateCall<'a>) -> BoxFuture<'a, Result<RateReply>> {
        ready(self.server.run("rate limit", |k| {
            let now = now_micros();
            let stored = |key: &str| {
                let bytes = k.get(key).ok().flatten()?;
                String::from_utf8(bytes).ok()
            };
            let (reply, store) = decide(&call, now, stored);
            if let Some((key, value, ttl_ms)) = store {
                k.set(&key, value.into_bytes(), Some(ttl_ms));
            }
            Ok(reply)
        }))
    }

    fn load_generation<'a>(
        &'a self,
        key: &'a str,
        initial: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        ready(self.server.run("load generation", |k| {
            k.load_generation(key, initial, millis_ceil(ttl))
        }))
    }

    fn bump_generation<'a>(
        &'a self,
        key: &'a str,
        floor: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        ready(self.server.run("bump generation", |k| {
            k.bump_generation(key, floor, millis_ceil(ttl))
        }))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        ready(
            self.server
                .run("scan", |k| Ok(k.scan_prefix(prefix, cursor, count))),
        )
    }

    fn delete_many<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<()>> {
        ready(self.server.run("delete", |k| {
            for key in &keys {
                k.delete(key);
            }
            Ok(())
        }))
    }

    fn quit<'a>(&'a self) -> BoxFuture<'a, ()> {
        ready(())
    }
}
