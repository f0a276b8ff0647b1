//! Concurrent single-key reads coalesced into `MGET`s (one server only).
//!
//! Each `GET` costs the client several microseconds of CPU of its own (fred's command, its
//! channel, its reply) and Redis one command's dispatch; under load, when many reads are in
//! flight at once, most of that is per command, not per key. So at most `max_in_flight` reads
//! go to Redis on their own; a read that arrives while that many are in flight waits in a
//! queue, and the queue goes out as one `MGET` as soon as one of them comes back.
//!
//! - **Sparse reads pay nothing**: while fewer than `max_in_flight` are in flight, a read is a
//!   plain `GET` from the caller's task, as without coalescing (two uncontended lock
//!   operations more).
//! - **No batching delay**: a queued read waits only for a read already in flight to come
//!   back, never for a batch to fill; and never longer than the command timeout (the suspect
//!   timeout while Redis is suspect), as a `GET` of its own would.
//! - **Cancellation-safe**: the read that frees a slot hands the queue to a task of its own
//!   (spawned once per `MGET`, not per key), which runs to the end whoever waits; a waiter
//!   whose batch was lost (its task gone without an answer) reads on its own.
//! - **Same answers**: an `MGET` reads each key as a `GET` at the same moment would, with one
//!   difference: a key holding another Redis type reads as nothing (`GET` fails with
//!   `WRONGTYPE`, and the load that follows overwrites it), so a load's fill over it is
//!   refused (`SET … NX`); the refused fill then deletes it, checked and deleted in one step
//!   ([`RedisStore::fill_past_foreign`]), and the next load fills it.
//! - **Bounded in bytes**: an `MGET` carries at most about [`MAX_COALESCED_BYTES`], going by
//!   the sizes of the values read lately (a running average), so a batch of large values
//!   neither holds Redis nor outlasts the command timeout; when values are that large on their
//!   own, reads go alone (pipelined by fred, as without coalescing).
//!
//! Hot-path note: the queue is a `std::sync::Mutex` held for a push or a swap, never across an
//! await; the size average is one relaxed atomic.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex, PoisonError,
};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::{scripts::SCRIPTS, RedisStore};
use crate::breaker::Verdict;
use crate::error::{Error, ErrorKind, Result};
use crate::remote::{Filled, WriteMode};

/// The most keys one coalesced `MGET` carries.
const MAX_COALESCED: usize = 128;

/// About the most bytes of values one coalesced `MGET` is expected to carry (by the running
/// average of value sizes): 128 values of 4 KiB, 8 of 64 KiB, one of 512 KiB or more.
const MAX_COALESCED_BYTES: usize = 512 << 10;

/// The answer a queued read waits for.
type Answer = Result<Option<Vec<u8>>>;

/// A read waiting in the queue.
pub(super) struct Waiting {
    pub(super) key: String,
    pub(super) answer: oneshot::Sender<Answer>,
}

/// The queue and the count of reads in flight.
#[derive(Default)]
struct State {
    in_flight: usize,
    queue: Vec<Waiting>,
}

/// Coalesces concurrent reads: see the module's documentation.
pub(super) struct Coalescer {
    state: Mutex<State>,
    max_in_flight: usize,
    /// A running average of the sizes of values read (0: none read yet).
    typical: AtomicUsize,
}

/// Whether a read goes out now, or waits for a coalesced one.
pub(super) enum Turn {
    /// Go to Redis now; the slot is released (or handed to the queue) with [`Coalescer::release`].
    Go,
    /// Wait for this answer (an error on the channel: read alone).
    Wait(oneshot::Receiver<Answer>),
}

impl Coalescer {
    /// A coalescer letting `max_in_flight` reads (at least 1) go to Redis at once.
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_in_flight: max_in_flight.max(1),
            typical: AtomicUsize::new(0),
        }
    }

    /// Counts the size of a value read into the running average (weight 1/8; races between
    /// readers lose an update, which an average can afford).
    pub(super) fn observe(&self, len: usize) {
        let old = self.typical.load(Ordering::Relaxed);
        let new = if old == 0 {
            len.max(1)
        } else {
            old - old / 8 + len / 8
        };
        // Hot-path note: a steady size leaves the average as it is; skipping the store then
        // keeps every read from writing one shared cache line.
        if new != old {
            self.typical.store(new, Ordering::Relaxed);
        }
    }

    /// Whether values are so large that each would fill an `MGET` on its own: reads go alone.
    pub(super) fn bypassed(&self) -> bool {
        self.typical.load(Ordering::Relaxed) >= MAX_COALESCED_BYTES
    }

    /// How many keys the next `MGET` may carry.
    fn batch_keys(&self) -> usize {
        (MAX_COALESCED_BYTES / self.typical.load(Ordering::Relaxed).max(1)).clamp(1, MAX_COALESCED)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot, or queues `key`.
    pub(super) fn enter(&self, key: &str) -> Turn {
        let mut state = self.lock();
        if state.in_flight < self.max_in_flight {
            state.in_flight += 1;
            return Turn::Go;
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push(Waiting {
            key: key.to_owned(),
            answer: tx,
        });
        Turn::Wait(rx)
    }

    /// Gives back a slot: when reads are queued, the slot stays taken and their batch (at most
    /// [`MAX_COALESCED`] keys, fewer for large values) is returned, for the caller to send;
    /// else the slot is freed.
    pub(super) fn release(&self) -> Option<Vec<Waiting>> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            state.in_flight = state.in_flight.saturating_sub(1);
            return None;
        }
        let keys = self.batch_keys();
        if state.queue.len() <= keys {
            return Some(std::mem::take(&mut state.queue));
        }
        let rest = state.queue.split_off(keys);
        Some(std::mem::replace(&mut state.queue, rest))
    }

    /// Frees a slot whose holder cannot send the queue (no runtime, or its task was dropped):
    /// the queued reads are let go, and each reads alone.
    pub(super) fn free(&self) {
        let queue = {
            let mut state = self.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            std::mem::take(&mut state.queue)
        };
        drop(queue);
    }
}

/// Answers every read of a batch with its value, or each with the batch's error.
pub(super) fn answer(batch: Vec<Waiting>, outcome: Result<Vec<Option<Vec<u8>>>>) {
    match outcome {
        Ok(values) => {
            for (w, v) in batch.into_iter().zip(values) {
                // A waiter that went away (its caller cancelled) needs no answer.
                let _ = w.answer.send(Ok(v));
            }
        }
        Err(e) => {
            for w in batch {
                let _ = w.answer.send(Err(Error::new(e.kind(), e.to_string())));
            }
        }
    }
}

impl RedisStore {
    /// A `GET` of `key`, coalesced with the reads in flight beside it when the store has a
    /// [`Coalescer`] (see the module's documentation).
    pub(super) async fn coalesced_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let Some(coalescer) = &self.coalescer else {
            return self.get(key).await;
        };
        if coalescer.bypassed() {
            return self.get_alone(coalescer, key).await;
        }
        match coalescer.enter(key) {
            Turn::Go => {
                let _slot = Slot {
                    store: self,
                    coalescer,
                };
                self.get_alone(coalescer, key).await
            }
            Turn::Wait(answer) => {
                // A queued read waits no longer than a `GET` of its own would have: behind a
                // Redis that hangs, the read in flight and then the queue's `MGET` would each
                // take their timeout.
                let bound = if self.suspect.load(Ordering::Acquire) {
                    self.suspect_timeout
                } else {
                    self.timeout
                };
                match tokio::time::timeout(bound, answer).await {
                    Ok(Ok(answer)) => {
                        self.counters.l2_reads_coalesced.incr();
                        answer
                    }
                    // The batch was lost (its task ended without answering): read alone.
                    Ok(Err(_)) => self.get(key).await,
                    Err(_) => {
                        // As a `GET` of its own that timed out: evidence of an outage, for the
                        // suspect bound and the breaker (never taking a half-open probe).
                        self.suspect.store(true, Ordering::Release);
                        let permit = self.breaker.permit();
                        if permit.verdict() == Verdict::Call {
                            permit.record(true);
                        }
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!("redis GET (coalesced) took longer than {bound:?}"),
                        ))
                    }
                }
            }
        }
    }

    /// A `GET` of its own, its value's size counted in the running average.
    async fn get_alone(&self, coalescer: &Coalescer, key: &str) -> Result<Option<Vec<u8>>> {
        let read = self.get(key).await;
        if let Ok(Some(value)) = &read {
            coalescer.observe(value.len());
        }
        read
    }

    /// Sends queued reads as `MGET`s, one batch after another, until the queue is empty; then
    /// frees the slot it holds.
    async fn send_coalesced(self, coalescer: Arc<Coalescer>, mut batch: Vec<Waiting>) {
        // Frees the slot (and lets the queue read alone) if this task is dropped midway.
        let mut held = TaskSlot(Some(coalescer));
        loop {
            let keys: Vec<String> = batch
                .iter_mut()
                .map(|w| std::mem::take(&mut w.key))
                .collect();
            let span = tracing::debug_span!(
                "layercache.l2.get_coalesced",
                db.system = "redis",
                db.operation.name = "MGET",
                otel.kind = "client",
                keys = keys.len(),
            );
            let outcome = self
                .mget("redis MGET (coalesced)", keys)
                .instrument(span)
                .await;
            let Some(c) = &held.0 else { return };
            if let Ok(values) = &outcome {
                for v in values.iter().flatten() {
                    c.observe(v.len());
                }
            }
            answer(batch, outcome);
            match c.release() {
                Some(next) => batch = next,
                None => {
                    held.0 = None;
                    return;
                }
            }
        }
    }

    /// [`fill`](RedisStore::fill), and after a fill "if absent" that was refused while reads
    /// are coalesced: if the key holds another Redis type — which an `MGET` reads as nothing,
    /// where a `GET` would have failed and the load overwritten it — deletes it (checked and
    /// deleted in one step), so the next load fills it. One more round trip, on refused fills
    /// only (a race with another writer, or this).
    pub(super) async fn fill_past_foreign(
        &self,
        write: crate::remote::Write<'_>,
    ) -> Result<Filled> {
        let key = write.key;
        let nx = *write.condition.mode == WriteMode::Nx;
        let filled = self.fill(write).await?;
        if filled == Filled::Refused && nx && self.coalescer.is_some() {
            let dropped: Result<i64> = self
                .script(
                    "redis EVALSHA (drop foreign)",
                    &SCRIPTS.drop_foreign,
                    vec![key.to_owned()],
                    Vec::new(),
                )
                .await;
            match dropped {
                Ok(n) if n > 0 => {
                    let reason = crate::envelope::Corruption::WrongType;
                    self.counters.decode_errors[reason.index()].incr();
                    tracing::warn!(
                        cache.name = %self.cache_name,
                        reason = %reason,
                        "another redis type at a data key; deleted"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "checking a refused fill's key failed")
                }
            }
        }
        Ok(filled)
    }
}

/// A read's slot, given back when the read ends (or is cancelled): the queue it leaves goes
/// out as an `MGET` on a task of its own.
struct Slot<'a> {
    store: &'a RedisStore,
    coalescer: &'a Arc<Coalescer>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let Some(batch) = self.coalescer.release() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let store = self.store.clone();
                let coalescer = Arc::clone(self.coalescer);
                runtime.spawn(store.send_coalesced(coalescer, batch));
            }
            // No runtime to send them on: the batch is dropped, and its reads go alone.
            Err(_) => {
                drop(batch);
                self.coalescer.free();
            }
        }
    }
}

/// The slot a batch task holds; freed on drop unless the task gave it back.
struct TaskSlot(Option<Arc<Coalescer>>);

impl Drop for TaskSlot {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.free();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_alone_until_the_slots_are_taken_then_queue() {
        let c = Coalescer::new(2);
        assert!(matches!(c.enter("a"), Turn::Go));
        assert!(matches!(c.enter("b"), Turn::Go));
        let Turn::Wait(_rx) = c.enter("c") else {
            panic!("a third read must wait")
        };
        let Turn::Wait(_rx2) = c.enter("d") else {
            panic!("a fourth read must wait")
        };
        // The first read back takes the queue with its slot.
        let batch = c.release().expect("the queue");
        let keys: Vec<_> = batch.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, ["c", "d"]);
        // The batch's sender and the second read give their slots back.
        assert!(c.release().is_none());
        assert!(c.release().is_none());
        assert!(matches!(c.enter("e"), Turn::Go));
        assert!(matches!(c.enter("f"), Turn::Go));
    }

    #[test]
    fn a_long_queue_goes_out_in_bounded_batches() {
        let c = Coalescer::new(1);
        assert!(matches!(c.enter("lead"), Turn::Go));
        let waits: Vec<_> = (0..MAX_COALESCED + 5)
            .map(|i| c.enter(&format!("k{i}")))
            .collect();
        assert!(waits.iter().all(|t| matches!(t, Turn::Wait(_))));
        assert_eq!(c.release().map(|b| b.len()), Some(MAX_COALESCED));
        assert_eq!(c.release().map(|b| b.len()), Some(5));
        assert!(c.release().is_none());
        assert!(matches!(c.enter("again"), Turn::Go));
    }

    #[test]
    fn large_values_make_smaller_batches_then_go_alone() {
        let c = Coalescer::new(1);
        assert_eq!(c.batch_keys(), MAX_COALESCED, "nothing read yet");
        c.observe(1024);
        assert_eq!(c.batch_keys(), MAX_COALESCED);
        assert!(!c.bypassed());
        for _ in 0..64 {
            c.observe(64 << 10);
        }
        assert!((8..=9).contains(&c.batch_keys()), "{}", c.batch_keys());
        assert!(!c.bypassed());
        for _ in 0..64 {
            c.observe(1 << 20);
        }
        assert_eq!(c.batch_keys(), 1);
        assert!(c.bypassed());
        for _ in 0..64 {
            c.observe(100);
        }
        assert!(!c.bypassed(), "small values again");
        assert_eq!(c.batch_keys(), MAX_COALESCED);
    }

    #[tokio::test]
    async fn a_batch_answers_each_waiter_or_each_with_the_error() {
        let c = Coalescer::new(1);
        assert!(matches!(c.enter("lead"), Turn::Go));
        let (Turn::Wait(a), Turn::Wait(b)) = (c.enter("a"), c.enter("b")) else {
            panic!("both must wait")
        };
        let batch = c.release().expect("the queue");
        answer(batch, Ok(vec![Some(b"1".to_vec()), None]));
        assert_eq!(a.await.expect("answered").expect("ok"), Some(b"1".to_vec()));
        assert_eq!(b.await.expect("answered").expect("ok"), None);

        let Turn::Wait(c1) = c.enter("c") else {
            panic!("must wait")
        };
        let batch = c.release().expect("the queue");
        answer(
            batch,
            Err(Error::new(
                crate::ErrorKind::Timeout,
                "redis MGET took too long",
            )),
        );
        let e = c1.await.expect("answered").expect_err("the batch's error");
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
    }
}
