//! An instance's bus sequence numbers, taken under one lock with the command that carries
//! them. A leaf beside the bus, so the Redis tier can number the announcements it pipelines
//! without depending on the bus.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, PoisonError,
};

use crate::coherence::InstanceId;

/// Hands out this instance's bus sequence numbers so that its messages reach Redis in
/// sequence order, whichever task sends them (the publisher's heartbeats and batches, or a
/// write that carries its own announcement in the same round trip).
///
/// The number is taken and the command handed to the client (whose single connection keeps
/// the order) under one lock, held for a synchronous step only: the caller builds and
/// *primes* its command there (see `L2::primed`), then awaits the reply outside.
#[derive(Debug)]
pub(crate) struct Sequencer {
    pub(crate) id: InstanceId,
    pub(crate) channel: String,
    last: Mutex<u64>,
    /// The highest sequence number whose message was sent (or failed), for `bus_status`.
    pub(crate) published: Arc<AtomicU64>,
}

impl Sequencer {
    pub(crate) fn new(id: InstanceId, channel: String, published: Arc<AtomicU64>) -> Self {
        Self {
            id,
            channel,
            last: Mutex::new(0),
            published,
        }
    }

    /// Runs `send` with the next sequence number, under the lock. `send` must hand its
    /// command to the client before it returns.
    pub(crate) fn next<T>(&self, send: impl FnOnce(u64) -> T) -> T {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        *last += 1;
        send(*last)
    }

    /// Records that message `seq` has been sent (or failed: receivers will see the gap).
    pub(crate) fn sent(&self, seq: u64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
    }
}
