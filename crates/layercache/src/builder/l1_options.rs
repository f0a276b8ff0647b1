//! Options of [`LayerCacheBuilder`] for the hot path: the in-process tier's admission, where
//! large values are encoded, and how many connections carry commands to Redis.

use super::LayerCacheBuilder;

/// The most connections [`LayerCacheBuilder::l2_pool_size`] accepts.
pub(super) const MAX_L2_POOL_SIZE: usize = 64;

impl LayerCacheBuilder {
    /// While the in-process tier is full, a value read from Redis is put in it only at its
    /// key's second read from Redis within a short window (the last ~32,000 such reads):
    /// TinyLFU's *doorkeeper*. moka's admission policy would turn most first-time keys away
    /// anyway, but only after inserting, weighing and removing them, which on a long-tailed
    /// workload is a large share of the process's CPU (see `docs/BENCHMARKS.md`). Hot keys
    /// pay one more Redis read per window; while the tier has room, and for values this
    /// instance loaded or wrote, nothing changes. Counted in
    /// [`Stats::l1_door_skips`](crate::Stats::l1_door_skips). `false` puts every value read
    /// from Redis in the tier (and leaves admission to moka alone).
    ///
    /// Default: `true`.
    pub fn l1_doorkeeper(mut self, on: bool) -> Self {
        self.l1_doorkeeper = on;
        self
    }

    /// Values whose encoded form has at least this many bytes are encoded (serialized,
    /// compressed, checksummed) and decoded on tokio's blocking pool (`spawn_blocking`), so a
    /// large value never holds an async worker for long: at ~170 MiB/s a 64 KiB value takes
    /// ~0.4 ms, and every other task on that worker waits (see `docs/BENCHMARKS.md` for where
    /// it pays). A read knows the size from the bytes Redis returned; a write cannot know it
    /// before encoding, so a region encodes off the workers once one of its values reached the
    /// threshold (regions hold values of similar sizes), and on them again once one is below
    /// it. Applies to every read of Redis (`get_many` too), to loads and to single-key
    /// writes; `insert_many` encodes on the worker.
    /// `usize::MAX` keeps everything on the workers.
    ///
    /// Default: [`DEFAULT_OFFLOAD_THRESHOLD`](crate::DEFAULT_OFFLOAD_THRESHOLD) (64 KiB).
    pub fn offload_threshold(mut self, bytes: usize) -> Self {
        self.offload_threshold = bytes;
        self
    }

    /// How many connections to Redis carry commands (besides the bus's subscriber, which
    /// always has its own). With one, every command shares it: fred pipelines the commands of
    /// all tasks on it, and on this project's measurements one connection served small
    /// values as fast as several (see `docs/BENCHMARKS.md`). With two or more, the first
    /// carries only the invalidation bus — its messages and heartbeats, and each write
    /// pipelined with its announcement (one connection keeps a sender's messages in order) —
    /// and the others carry every other command in turn: a large value being read never
    /// holds a bus message or a heartbeat behind it, and reads of large values spread over
    /// several sockets. A write of 64 KiB or more (stored) goes on a command connection too,
    /// and its announcement on the bus connection once Redis answered it: two round trips
    /// instead of one, but no heartbeat waits behind its transfer. On a Redis Cluster each is a
    /// clustered client (one socket per node).
    ///
    /// Between 1 and 64.
    ///
    /// Default: 1.
    pub fn l2_pool_size(mut self, connections: usize) -> Self {
        self.l2_pool_size = connections;
        self
    }

    /// How many reads of single keys go to one Redis server at once (per connection of
    /// [`l2_pool_size`](Self::l2_pool_size)) before the others are coalesced: a read that
    /// arrives while this many are in flight waits in a queue, and the
    /// queue goes out as one `MGET` as soon as one of them comes back (at most 128 keys, and
    /// about 512 KiB of values by the sizes read lately: values that large on their own are
    /// read alone). Sparse reads are plain `GET`s as before and wait for no timer; under load, one
    /// command carries many keys, which saves client and Redis CPU per read (see
    /// `docs/BENCHMARKS.md`). Counted in [`Stats::l2_reads_coalesced`](crate::Stats).
    ///
    /// One difference a coalesced read has: a key holding another Redis type (not written by
    /// layercache) reads as nothing, where a `GET` would have failed with `WRONGTYPE` and a
    /// load replaced it; a load's fill over it is refused, and then deletes it (one more round
    /// trip, on refused fills only), so the next load fills it. Does nothing on a Redis Cluster (an `MGET` must stay within one slot).
    /// Sliding-expiration reads and reads under the load lock are never coalesced.
    ///
    /// `0` turns coalescing off.
    ///
    /// Default: [`DEFAULT_L2_READ_COALESCING`](crate::DEFAULT_L2_READ_COALESCING).
    pub fn l2_read_coalescing(mut self, max_in_flight: usize) -> Self {
        self.l2_read_coalescing = max_in_flight;
        self
    }
}
