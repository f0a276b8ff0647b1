//! The remote-store seam: what the engine asks of the shared tier, in the engine's own terms
//! (entries, conditional writes, tag marks and sets, load locks, region generations, key
//! walks, and the sending half of the bus), never in a transport's.
//!
//! Three implementations: Redis (`l2.rs`, one server through fred, its Lua scripts run by
//! hash), Redis Cluster (`l2/cluster.rs`: the same scripts on keys placed so that what a write
//! is checked against shares its slot) and an in-memory store (`memory.rs`, behind the `memory`
//! feature) that keeps the same rules in a process, for tests without a redis-server. The engine
//! holds a [`Remote`] and nothing else of it.
//!
//! Why the sending half of the backplane lives here: a write and its announcement must reach
//! the store in one step, in the sender's sequence order, so that a receiver drops its copy only
//! once the new state is there (Redis pipelines the script and the `PUBLISH` on one
//! connection; a cluster, where the two go to different nodes, publishes when the script has
//! answered; the in-memory store does both under one lock). The receiving half is the
//! backplane seam ([`crate::backplane`]).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{
    error::Result,
    rate::{RateCall, RateReply},
    sequencer::Sequencer,
};

/// A boxed future, as the seam's methods return them (the seam is used as a trait object).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What became of each entry of a batch write, in order: its outcome, or why it is not known (the
/// command that carried it failed: on a cluster, its node did not answer — the other nodes'
/// entries stand). An error of the whole call (nothing sent) is the outer `Result`'s.
pub(crate) type BatchFilled = Vec<Result<Filled>>;

/// Every entry's outcome known: [`BatchFilled`] of a batch written in one step.
pub(crate) fn each_filled(filled: Vec<Filled>) -> BatchFilled {
    filled.into_iter().map(Ok).collect()
}

/// The values of a load's tag marks as its fill will compare them (`None`: no mark), or why
/// they could not be read.
pub(crate) type MarkValues = Result<Vec<Option<Vec<u8>>>>;

/// What a batch read found at one key: its bytes, nothing, or why it could not be read.
pub(crate) type Read = Result<Option<Vec<u8>>>;

/// The answers of a batch read of `n` keys when one command carried them all: each key
/// answered from `values`, or every key failed with the command's error.
pub(crate) fn each_read(n: usize, values: Result<Vec<Option<Vec<u8>>>>) -> Vec<Read> {
    match values {
        Ok(values) => values.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); n],
    }
}

/// Reads `keys` at most [`MAX_BATCH`] at a time with `read`, one answer per key. Once a chunk
/// has failed, the chunks after it are not sent and fail with the same error (on one server the
/// store is in trouble, and each would wait for its own timeout); the chunks before it keep
/// their answers.
pub(crate) async fn read_chunks<'k, F, Fut>(keys: &'k [String], mut read: F) -> Vec<Read>
where
    F: FnMut(&'k [String]) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Vec<u8>>>>>,
{
    let mut values = Vec::with_capacity(keys.len());
    let mut failed: Option<crate::error::Error> = None;
    for chunk in keys.chunks(MAX_BATCH) {
        let answer = match &failed {
            Some(e) => Err(e.clone()),
            None => read(chunk).await,
        };
        if let Err(e) = &answer {
            failed.get_or_insert_with(|| e.clone());
        }
        values.extend(each_read(chunk.len(), answer));
    }
    values
}

/// The most keys one batch read carries (an `MGET` of 1,000 small values holds Redis for about
/// 0.7 ms here: median of 100 under the slow log, longest 1.1 ms).
pub(crate) const MAX_BATCH: usize = 1000;

/// The most entries one batch write carries in one round trip (the write script takes 3–6 µs per
/// entry: 200 hold Redis for about 0.7 ms here, median of 500 under the slow log, longest
/// 2.5 ms; 1,000 held it for up to 8.6 ms). A batch of plain entries, sent as a `SET` each,
/// never holds Redis that long; the bound keeps its commands in flight few.
pub(crate) const MAX_BATCH_WRITE: usize = 200;

/// The shared tier, as the engine holds it.
pub(crate) type Remote = Arc<dyn RemoteStore>;

/// What the engine asks of the shared tier. Every call is bounded in time by the
/// implementation (a timeout, a breaker) and fails with a typed [`Error`](crate::Error);
/// a call that fails may or may not have happened (the engine's write journal repairs that).
pub(crate) trait RemoteStore: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the store is reachable right now (calls made while it is not fail at once).
    fn is_connected(&self) -> bool;
    /// Whether calls are being refused to give the store time to recover (a circuit breaker).
    fn breaker_open(&self) -> bool;
    /// The name a data or lock key has in the store (on a cluster, with its bucket's hash tag:
    /// what an operator finds with `redis-cli`). By default, the key itself.
    fn locate(&self, key: &str) -> String {
        key.to_owned()
    }
    /// The bytes at `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// The bytes at a meta key (outside the data space: a generation, a presence record),
    /// named as is: never placed in a bucket.
    fn get_meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        self.get(key)
    }
    /// Sets a meta key, named as is, for `ttl_ms`.
    fn set_meta<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>>;
    /// The bytes at each of `keys`, in their order (`None`: nothing, or another type), in as
    /// few round trips as the store allows — bounded commands of at most [`MAX_BATCH`] keys
    /// each, so no single one blocks the store for long. One answer per key: a command that
    /// failed fails only the keys it carried (a cluster node that does not answer fails the
    /// keys it holds, not the batch).
    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<Read>>;
    /// [`get_many`](Self::get_many) for sliding expiration: the bytes at each of `keys`, every
    /// key found given `ttl_ms` more to live, in as few round trips as the store allows.
    fn get_and_touch_many<'a>(
        &'a self,
        keys: &'a [String],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Read>>;
    /// The bytes at `key`, if any, giving the key `ttl_ms` more to live in the same step
    /// (sliding expiration).
    fn get_and_touch<'a>(
        &'a self,
        key: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Gives `key` `ttl_ms` more to live, if it exists.
    fn touch<'a>(&'a self, key: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<()>>;
    /// Writes an entry if its [`WriteCondition`] holds, and records the key in its tags' sets
    /// (raising a set's lifetime to its longest member's), atomically.
    fn fill<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Filled>>;
    /// Several writes of one region (no tags, no marks), each with its own mode and source
    /// version, under one generation fence: in as few round trips as the store allows (Redis:
    /// one round trip per [`MAX_BATCH_WRITE`] entries — a `SET` each and the fence's `GET` when
    /// every entry is plain, else one script run). One result per entry, in order.
    fn fill_many<'a>(&'a self, batch: BatchWrite<'a>) -> BoxFuture<'a, Result<BatchFilled>>;
    /// [`fill`](Self::fill) and its announcement on the bus in one step: the announcement
    /// takes the sender's next sequence number and reaches receivers right after the write.
    /// Returns what became of the write and of the announcement (its sequence number; an
    /// error there is the announcement's alone: the write stands).
    fn fill_announced<'a>(
        &'a self,
        write: Write<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(Filled, Result<u64>)>>;
    /// [`fill_many`](Self::fill_many) of at most [`MAX_BATCH_WRITE`] entries and one announcement
    /// for all of them, in one step (as [`fill_announced`](Self::fill_announced)).
    fn fill_many_announced<'a>(
        &'a self,
        batch: BatchWrite<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(BatchFilled, Result<u64>)>>;
    /// Publishes a bus message numbered by the announcement's sequencer. Returns the number
    /// (0 when the call was skipped before one was taken) and the outcome.
    fn publish<'a>(&'a self, announcement: Announcement<'a>) -> BoxFuture<'a, (u64, Result<()>)>;
    /// Reads the marks of a load's tags (their mark keys, `keys`) as its fill for `data_key`
    /// will compare them: for each, its value, or `None`. (On a cluster the marks compared
    /// are the copies in the data key's slot.)
    fn marks<'a>(
        &'a self,
        data_key: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>>>;
    /// [`marks`](Self::marks) for the fills of many data keys (a tagged batch load), in as few
    /// round trips as the store allows: for each data key, the marks its fill will compare. By
    /// default read once for all of them (one server, memory: a mark is one key whatever the
    /// data key); a cluster reads each bucket's copies.
    fn marks_many<'a>(
        &'a self,
        data_keys: &'a [String],
        keys: Vec<String>,
    ) -> BoxFuture<'a, Vec<MarkValues>> {
        Box::pin(async move {
            let Some(first) = data_keys.first() else {
                return Vec::new();
            };
            let read = self.marks(first, keys).await;
            vec![read; data_keys.len()]
        })
    }
    /// Sets a tag's mark to `token` for `ttl_ms`.
    fn set_mark<'a>(
        &'a self,
        key: &'a str,
        token: String,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>>;
    /// One page of a tag set's members, from `cursor` (`"0"` to start): the next cursor
    /// (`"0"` when done) and up to about `count` members.
    fn tag_members_page<'a>(
        &'a self,
        set: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>>;
    /// Deletes the `members` and takes them out of the tag set, atomically (a member written
    /// again meanwhile keeps its membership).
    fn drop_tag_page<'a>(&'a self, set: &'a str, members: Vec<String>)
        -> BoxFuture<'a, Result<()>>;
    /// Deletes every member of a tag set and takes it out of the set, page by page (a member
    /// written again meanwhile keeps its membership), calling `progress` with the number of
    /// members dropped so far after every page. By default, pages of
    /// [`tag_members_page`](Self::tag_members_page) and [`drop_tag_page`](Self::drop_tag_page).
    fn drop_tag_members<'a>(
        &'a self,
        set: &'a str,
        progress: &'a mut (dyn FnMut(u64) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (mut cursor, mut done) = ("0".to_owned(), 0u64);
            loop {
                let (next, members) = self.tag_members_page(set, &cursor, 500).await?;
                done += members.len() as u64;
                self.drop_tag_page(set, members).await?;
                progress(done);
                if next == "0" {
                    return Ok(());
                }
                cursor = next;
            }
        })
    }
    /// Reads `key` and, when it holds nothing, takes the load lock `lock` for `ttl_ms` in the
    /// same step: `Ok((Some(bytes), false))`, or `Ok((None, taken))`.
    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        lock: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<(Option<Vec<u8>>, bool)>>;
    /// Takes a load lock for `ttl_ms` if nobody holds it; returns whether it was taken.
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// [`try_lock`](Self::try_lock) of every lock in `keys` at once (one round trip): for each,
    /// whether it was taken, or why that is not known.
    fn try_lock_many<'a>(
        &'a self,
        keys: &'a [String],
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Result<bool>>>;
    /// Extends a lock if it still holds `token`; returns whether it did.
    fn renew_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Releases a lock if it still holds `token`; returns whether it did.
    fn release_lock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Takes a user's lock for `ttl_ms` if nobody holds it, with the next fencing token of its
    /// name: `Ok(Some(fence))`, or `Ok(None)` when it is held.
    fn acquire_fenced<'a>(
        &'a self,
        lock: FencedLock<'a>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>>>;
    /// One check of a rate limit (`rate.rs`'s arithmetic, on the store's clock, atomic).
    fn rate_limit<'a>(&'a self, call: RateCall<'a>) -> BoxFuture<'a, Result<RateReply>>;
    /// Reads a region's generation, creating it as `initial` when missing, and gives it `ttl`
    /// more to live.
    fn load_generation<'a>(
        &'a self,
        key: &'a str,
        initial: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>>;
    /// Moves a region's generation past its current value and to at least `floor`.
    fn bump_generation<'a>(
        &'a self,
        key: &'a str,
        floor: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>>;
    /// One page of the keys starting with `prefix`, from `cursor` (`"0"` to start): the next
    /// cursor (`"0"` when done) and the keys (a key may be seen twice, as with `SCAN`).
    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>>;
    /// Deletes `keys`.
    fn delete_many<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<()>>;
    /// Closes the connection (bounded in time).
    fn quit<'a>(&'a self) -> BoxFuture<'a, ()>;
    /// The connection whose writes server-assisted tracking leaves out (`NOLOOP`): every
    /// write of a data key goes through it. `None` where tracking is not supported.
    ///
    /// Default: `None`.
    fn tracking_client(&self) -> Option<fred::prelude::Client> {
        None
    }
}

/// A user's lock as [`RemoteStore::acquire_fenced`] takes it: its key, the counter of its
/// fencing tokens (in the same hash slot) and how long that lives, and the holder's token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FencedLock<'a> {
    pub(crate) key: &'a str,
    pub(crate) fence_key: &'a str,
    pub(crate) fence_ttl_ms: u64,
    pub(crate) token: &'a str,
}

/// One conditional write of an entry ([`RemoteStore::fill`]).
#[derive(Debug)]
pub(crate) struct Write<'a> {
    /// The data key.
    pub(crate) key: &'a str,
    /// The encoded entry.
    pub(crate) value: Vec<u8>,
    /// How long it lives, in milliseconds.
    pub(crate) ttl_ms: u64,
    /// The keys of its tags' sets.
    pub(crate) tags: Vec<String>,
    /// What it must find to land.
    pub(crate) condition: WriteCondition<'a>,
    /// The region's generation key (checked when the condition carries a fence).
    pub(crate) generation_key: &'a str,
}

/// Several writes of one region ([`RemoteStore::fill_many`]).
#[derive(Debug)]
pub(crate) struct BatchWrite<'a> {
    /// The entries.
    pub(crate) entries: Vec<BatchEntry>,
    /// The region's generation the keys were made for (`None`: no fence).
    pub(crate) fence: Option<u64>,
    /// The region's generation key.
    pub(crate) generation_key: &'a str,
    /// The keys of the sets of the tags every entry carries (a tagged batch), which record
    /// each entry written; none for most batches.
    pub(crate) tags: Vec<String>,
    /// The keys of those tags' marks, for a tagged batch load: each entry lands only if every
    /// mark still holds the value in its [`BatchEntry::marks`] (none for writes).
    pub(crate) marks: Vec<String>,
}

/// One entry of a [`BatchWrite`].
#[derive(Debug)]
pub(crate) struct BatchEntry {
    /// The data key.
    pub(crate) key: String,
    /// The encoded entry.
    pub(crate) value: Vec<u8>,
    /// How long it lives, in milliseconds.
    pub(crate) ttl_ms: u64,
    /// How it treats what the key holds.
    pub(crate) mode: WriteMode,
    /// Its source version, if any.
    pub(crate) version: Option<u64>,
    /// The values of the batch's marks its load read before it ran (`None`: no mark), one per
    /// [`BatchWrite::marks`].
    pub(crate) marks: Vec<Option<Vec<u8>>>,
}

/// A bus message to publish: numbered by `sequencer` when it is sent, built by `message` from
/// that number.
#[derive(Clone, Copy)]
pub(crate) struct Announcement<'a> {
    /// The sender's sequence numbers and channel.
    pub(crate) sequencer: &'a Sequencer,
    /// The message's bytes for a sequence number.
    pub(crate) message: &'a (dyn Fn(u64) -> Vec<u8> + Send + Sync),
}

impl std::fmt::Debug for Announcement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcement")
            .field("channel", &self.sequencer.channel)
            .finish_non_exhaustive()
    }
}

/// How a write treats what is already at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Overwrite (an explicit `insert`, or a foreign Redis type).
    Set,
    /// Only if absent.
    Nx,
    /// Only if the key still holds what was seen.
    Cas(SeenEntry),
}

impl WriteMode {
    /// The mode's name (in the fill script and in spans).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Nx => "nx",
            Self::Cas(_) => "cas",
        }
    }
}

/// What a write must find in the store to land (see `l2/scripts/fill.lua`, which is the
/// reference; the in-memory store follows it rule by rule):
/// - the mode: unconditional, only if absent, or only if the key still holds what a read saw
///   (or nothing: what it saw expired meanwhile);
/// - a load's tags' marks must still be what it read before it ran;
/// - with a fence, the region's generation must still be the one the key was made for;
/// - with a source version, the key must not hold an entry with a higher one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCondition<'a> {
    /// How it treats what the key holds.
    pub(crate) mode: &'a WriteMode,
    /// A load's tags' marks as read before it ran (none for a write).
    pub(crate) marks: &'a [(String, Option<Vec<u8>>)],
    /// The region's generation the key was made for (writes), or none (loads).
    pub(crate) fence: Option<u64>,
    /// The source version of a versioned write: refused if the key holds a higher one.
    pub(crate) version: Option<u64>,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// It landed.
    Written,
    /// Its condition failed (the key or one of its tags' marks changed): the newer state wins.
    Refused,
    /// The region's generation is no longer the one its key was made for.
    Fenced,
    /// The key holds a value with a higher source version.
    Older,
}

/// What a read saw at a key, enough to tell whether it is still there: its length and its
/// first [`HEADER_LEN`](crate::envelope::HEADER_LEN) bytes (for an envelope, the header, which
/// carries a CRC of the whole entry). The whole value need not travel back to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenEntry {
    pub(crate) prefix: Vec<u8>,
    pub(crate) len: usize,
}

impl SeenEntry {
    /// Remembers `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let n = bytes.len().min(crate::envelope::HEADER_LEN);
        Self {
            prefix: bytes[..n].to_vec(),
            len: bytes.len(),
        }
    }

    /// Whether `current` (what the key holds now) is still what was seen.
    #[cfg(feature = "memory")]
    pub(crate) fn matches(&self, current: &[u8]) -> bool {
        current.len() == self.len && current.starts_with(&self.prefix)
    }
}

/// The source version an entry carries, if it is an envelope with one (flag bit 4, the
/// big-endian version right after the 64-byte header: what `fill.lua` compares).
#[cfg(feature = "memory")]
pub(crate) fn source_version(entry: &[u8]) -> Option<u64> {
    use crate::envelope::{FLAG_VERSION, HEADER_LEN, MAGIC};
    let head = entry.get(..HEADER_LEN + 8)?;
    if head[..4] != MAGIC || head[6] & FLAG_VERSION == 0 {
        return None;
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&head[HEADER_LEN..]);
    Some(u64::from_be_bytes(v))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::{read_chunks, MAX_BATCH};
    use crate::error::{Error, ErrorKind};

    /// A chunk that fails fails its own keys and every later chunk's, which are not sent; the
    /// chunks before it keep their answers.
    #[tokio::test(flavor = "current_thread")]
    async fn chunks_after_a_failed_one_are_not_sent() {
        let keys: Vec<String> = (0..MAX_BATCH * 2 + 5).map(|i| format!("k{i}")).collect();
        let sent = Cell::new(0);
        let answers = read_chunks(&keys, |chunk| {
            sent.set(sent.get() + 1);
            let n = sent.get();
            let answer = if n == 1 {
                Ok(chunk.iter().map(|k| Some(k.as_bytes().to_vec())).collect())
            } else {
                Err(Error::new(ErrorKind::Timeout, "chunk 2"))
            };
            std::future::ready(answer)
        })
        .await;
        assert_eq!(sent.get(), 2, "chunks sent");
        assert_eq!(answers.len(), keys.len());
        assert_eq!(answers[0].as_ref().unwrap().as_deref(), Some(&b"k0"[..]));
        assert!(answers[..MAX_BATCH].iter().all(Result::is_ok));
        assert!(answers[MAX_BATCH..]
            .iter()
            .all(|a| a.as_ref().is_err_and(|e| e.kind() == ErrorKind::Timeout)));
    }
}
