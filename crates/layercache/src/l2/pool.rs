//! The store's connections (`l2_pool_size`): which one a call goes on, and closing them.

use std::{
    sync::{atomic::Ordering, PoisonError},
    time::Duration,
};

use fred::{clients::WithOptions, prelude::ClientLike, types::ConnectHandle};

use super::{end_task, RedisStore};

/// With `l2_pool_size` of 2 or more, a write whose stored bytes reach this goes on a command
/// connection and its announcement after it, instead of both together on the bus connection:
/// heartbeats and other announcements do not queue behind its transfer. (Smaller writes keep
/// the one round trip.)
pub(crate) const LARGE_WRITE_BYTES: usize = 64 * 1024;

/// One connection to Redis (a fred client and its connection task).
pub(crate) struct Conn {
    pub(super) client: fred::prelude::Client,
    /// The client with the command timeout, failing at once while disconnected (instead of
    /// queueing for the reconnect: a write queued there would land long after its caller was
    /// told it failed).
    pub(super) normal: WithOptions<fred::prelude::Client>,
    /// The same with the suspect timeout, for calls made while Redis is suspect.
    pub(super) wary: WithOptions<fred::prelude::Client>,
    /// The client's connection task, awaited by [`RedisStore::quit`].
    pub(super) task: std::sync::Mutex<Option<ConnectHandle>>,
}

/// Which of the store's connections a call goes on (see [`RedisStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Reads and writes that announce nothing: any command connection, in turn.
    Commands,
    /// Bus messages, heartbeats, and writes pipelined with their announcement: always the main
    /// connection, so one sender's messages reach Redis in sequence order.
    Bus,
}

impl RedisStore {
    /// Whether every connection is up right now.
    pub(crate) fn is_connected(&self) -> bool {
        self.main.client.is_connected() && self.pool.iter().all(|c| c.client.is_connected())
    }

    /// The connection for a call on `lane`.
    pub(super) fn conn(&self, lane: Lane) -> &Conn {
        if lane == Lane::Commands && !self.pool.is_empty() {
            let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.pool.len();
            if let Some(c) = self.pool.get(i) {
                return c;
            }
        }
        &self.main
    }

    /// Whether commands have connections of their own (`l2_pool_size` of 2 or more).
    pub(super) fn has_command_lanes(&self) -> bool {
        !self.pool.is_empty()
    }

    /// The main connection's client (for what all connections share: the topology).
    pub(super) fn main_client(&self) -> &fred::prelude::Client {
        &self.main.client
    }

    /// A command connection's client, in turn.
    pub(super) fn command_client(&self) -> &fred::prelude::Client {
        &self.conn(Lane::Commands).client
    }

    /// Closes the connection and waits (at most the command timeout, and a second at least)
    /// for the client's connection task to end.
    pub(crate) async fn quit(&self) {
        let within = self.timeout.max(Duration::from_secs(1));
        for conn in std::iter::once(&*self.main).chain(self.pool.iter()) {
            let _ = tokio::time::timeout(within, conn.client.quit()).await;
            let task = conn
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                end_task(task, within).await;
            }
        }
    }
}
