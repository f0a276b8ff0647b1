//! An instance's bus sequence numbers, taken under one lock with the command that carries
//! them. A leaf beside the bus, so the Redis tier can number the announcements it pipelines
//! without depending on the bus.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Instant,
};

use crate::coherence::InstanceId;

/// Hands out this instance's bus sequence numbers so that its messages reach Redis in
/// sequence order, whichever task sends them (the publisher's heartbeats and batches, or a
/// write that carries its own announcement in the same round trip).
///
/// The number is taken and the command handed to the client (whose single connection keeps
/// the order) under one lock, held for a synchronous step only: the caller builds and
/// *primes* its command there (see `L2::primed`), then awaits the reply outside.
/// How many recent messages' send times are kept (for the echo delay).
const REMEMBERED: usize = 64;

/// The last number handed out, and when the recent ones were.
#[derive(Debug)]
struct Numbers {
    last: u64,
    /// `(seq, when)` by `seq % REMEMBERED`.
    sent: [(u64, Option<Instant>); REMEMBERED],
}

#[derive(Debug)]
pub(crate) struct Sequencer {
    pub(crate) id: InstanceId,
    pub(crate) channel: String,
    last: Mutex<Numbers>,
    /// The highest sequence number whose message was sent (or failed), for `bus_status`.
    pub(crate) published: Arc<AtomicU64>,
}

impl Sequencer {
    pub(crate) fn new(id: InstanceId, channel: String, published: Arc<AtomicU64>) -> Self {
        Self {
            id,
            channel,
            last: Mutex::new(Numbers {
                last: 0,
                sent: [(0, None); REMEMBERED],
            }),
            published,
        }
    }

    /// Runs `send` with the next sequence number, under the lock. `send` must hand its
    /// command to the client before it returns.
    pub(crate) fn next<T>(&self, send: impl FnOnce(u64) -> T) -> T {
        let mut numbers = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        numbers.last += 1;
        let seq = numbers.last;
        numbers.sent[slot(seq)] = (seq, Some(Instant::now()));
        send(seq)
    }

    /// When message `seq` was handed to the client, if it is recent.
    pub(crate) fn sent_at(&self, seq: u64) -> Option<Instant> {
        let numbers = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match numbers.sent[slot(seq)] {
            (s, when) if s == seq => when,
            _ => None,
        }
    }

    /// Records that message `seq` has been sent (or failed: receivers will see the gap).
    pub(crate) fn sent(&self, seq: u64) {
        self.published.fetch_max(seq, Ordering::AcqRel);
    }
}

fn slot(seq: u64) -> usize {
    usize::try_from(seq % REMEMBERED as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_send_times_are_remembered() {
        let s = Sequencer::new(
            InstanceId([1; 16]),
            "c".to_owned(),
            Arc::new(AtomicU64::new(0)),
        );
        for _ in 0..100 {
            s.next(|_| ());
        }
        assert!(s.sent_at(100).is_some());
        assert!(s.sent_at(37).is_some());
        assert!(s.sent_at(36).is_none(), "forgotten: 64 remembered");
        assert!(s.sent_at(101).is_none());
    }
}
