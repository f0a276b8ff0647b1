//! The vocabulary of coherence every layer shares: why an instance flushes its in-process tier,
//! what it does when coherence may be lost, and who an instance is on the bus. A leaf: it
//! imports nothing of the crate.

use std::fmt;

/// Why an instance flushed its in-process tier.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlushReason {
    /// The subscriber connection reported an error.
    Disconnect,
    /// The subscriber reconnected and re-subscribed: messages sent meanwhile may be lost.
    Reconnect,
    /// The listener fell behind its buffer and messages were dropped.
    Lag,
    /// A sender's sequence numbers skipped: a message from it was lost.
    Gap,
    /// This instance's own heartbeat did not come back within the timeout.
    HeartbeatMissed,
    /// This instance's heartbeat came back after it had been missed.
    Recovered,
    /// `clear()` was called on some instance.
    Clear,
    /// With [`server_assisted_tracking`](crate::LayerCacheBuilder::server_assisted_tracking):
    /// the connection whose writes Redis tracks reconnected, or its tracking was found off or
    /// pointing at an old subscriber connection. Writes made meanwhile were not reported; the
    /// flush follows turning tracking on again.
    TrackingLost,
    /// With [`server_assisted_tracking`](crate::LayerCacheBuilder::server_assisted_tracking):
    /// Redis reported that its database was emptied (`FLUSHALL`, `FLUSHDB`). Always flushes,
    /// whatever the [`CoherenceLossPolicy`]: every entry is gone from Redis.
    ServerFlush,
}

impl FlushReason {
    /// Every reason, in counter order.
    pub const ALL: [FlushReason; 9] = [
        Self::Disconnect,
        Self::Reconnect,
        Self::Lag,
        Self::Gap,
        Self::HeartbeatMissed,
        Self::Recovered,
        Self::Clear,
        Self::TrackingLost,
        Self::ServerFlush,
    ];

    /// A stable lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disconnect => "disconnect",
            Self::Reconnect => "reconnect",
            Self::Lag => "lag",
            Self::Gap => "gap",
            Self::HeartbeatMissed => "heartbeat_missed",
            Self::Recovered => "recovered",
            Self::Clear => "clear",
            Self::TrackingLost => "tracking_lost",
            Self::ServerFlush => "server_flush",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the flush follows a loss of coherence (and so obeys the loss policy).
    pub(crate) fn is_loss(self) -> bool {
        !matches!(self, Self::Clear | Self::ServerFlush)
    }
}

impl fmt::Display for FlushReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an instance does with its in-process tier when coherence may have been lost.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoherenceLossPolicy {
    /// Drop every L1 entry (and keep running fetches from filling it): nothing that might have
    /// been invalidated meanwhile is served. The default.
    #[default]
    FlushAll,
    /// Keep the entries: each one still expires within its L1 lifetime (at most
    /// [`time_to_live`](crate::LayerCacheBuilder::time_to_live)). Only the count is kept.
    KeepUntilTtl,
}

/// An instance's id on the bus: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub(crate) [u8; 16]);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({self})")
    }
}

impl InstanceId {
    pub(crate) fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // Two independently seeded SipHash states, mixed with the time and the process id: no
        // extra dependency, and collisions between instances are as unlikely as 128 random
        // bits make them.
        let mut out = [0u8; 16];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        Self(out)
    }
}
