//! An in-memory shared tier: a stand-in for Redis that lives in the process, for testing a
//! service (or layercache itself) without a redis-server.
//!
//! A [`MemoryServer`] plays one Redis: build several caches on the same server
//! ([`LayerCacheBuilder::memory_server`](crate::LayerCacheBuilder::memory_server)) and they
//! behave as instances of a service sharing a Redis — entries written by one are read by the
//! others, and their in-process tiers are kept coherent through the server's bus — with the
//! same rules as on Redis: conditional fills, tombstones, tag marks and sets, region
//! generations, load locks, sequence-numbered announcements delivered right after their write.
//! It can be taken down and brought back ([`MemoryServer::set_available`]) and emptied
//! ([`MemoryServer::flush_all`]) to test how a service behaves when its Redis fails.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> layercache::Result<()> {
//! use layercache::{memory::MemoryServer, LayerCache};
//!
//! let server = MemoryServer::new();
//! let a = LayerCache::builder("app").memory_server(&server).build().await?;
//! let b = LayerCache::builder("app").memory_server(&server).build().await?;
//! let users_a = a.region::<u64, String>("users").build().await?;
//! let users_b = b.region::<u64, String>("users").build().await?;
//!
//! users_a.insert(&1, "Ada".to_owned()).await?;
//! assert_eq!(users_b.get(&1).await?.as_deref().map(String::as_str), Some("Ada"));
//! # a.shutdown().await;
//! # b.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What it does not model: network latency and partial failures (a command either runs or
//! fails before running), memory limits and eviction, persistence.

mod keyspace;
mod store;
mod subscriber;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::{broadcast, watch};

use crate::error::{Error, ErrorKind, Result};

use keyspace::Keyspace;
pub(crate) use store::MemoryStore;
pub(crate) use subscriber::MemorySubscriber;

/// How many messages a subscriber may fall behind before it is told it lagged (and flushes).
const CHANNEL_CAPACITY: usize = 16 * 1024;

/// An in-process stand-in for one Redis server: its keys and its pub/sub channels. Cheap to
/// clone (clones share the server).
#[derive(Clone)]
pub struct MemoryServer {
    shared: Arc<Shared>,
}

struct Shared {
    keys: Mutex<Keyspace>,
    channels: Mutex<HashMap<String, broadcast::Sender<Vec<u8>>>>,
    up: watch::Sender<bool>,
}

impl std::fmt::Debug for MemoryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryServer")
            .field("available", &self.is_available())
            .field("keys", &self.keyspace().len())
            .finish()
    }
}

impl Default for MemoryServer {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryServer {
    /// An empty server, available.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                keys: Mutex::new(Keyspace::default()),
                channels: Mutex::new(HashMap::new()),
                up: watch::Sender::new(true),
            }),
        }
    }

    /// Takes the server down (`false`: every call fails with
    /// [`ErrorKind::Unavailable`] and subscribers see their
    /// connection fail, as when Redis is unreachable) or brings it back (`true`: subscribers
    /// see a reconnection). The keys are kept; [`flush_all`](Self::flush_all) drops them.
    pub fn set_available(&self, available: bool) {
        self.shared.up.send_if_modified(|up| {
            let changed = *up != available;
            *up = available;
            changed
        });
    }

    /// Whether the server is available.
    pub fn is_available(&self) -> bool {
        *self.shared.up.borrow()
    }

    /// Drops every key (as `FLUSHALL`, or a restart without persistence).
    pub fn flush_all(&self) {
        self.keyspace().clear();
    }

    /// Every live key, sorted (as `KEYS *`: for tests, never used by the cache).
    pub fn keys(&self) -> Vec<String> {
        self.keyspace().live_keys()
    }

    /// The bytes at `key`, if it holds bytes (as `GET`: for tests).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.keyspace().get(key).ok().flatten()
    }

    /// The store a cache built on this server uses.
    pub(crate) fn store(&self) -> MemoryStore {
        MemoryStore {
            server: self.clone(),
        }
    }

    /// A subscription to `channel` (receiving from now on).
    pub(crate) fn subscriber(&self, channel: &str) -> MemorySubscriber {
        MemorySubscriber::new(self.clone(), self.sender(channel).subscribe(), channel)
    }

    fn keyspace(&self) -> MutexGuard<'_, Keyspace> {
        self.shared
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn sender(&self, channel: &str) -> broadcast::Sender<Vec<u8>> {
        let mut channels = self
            .shared
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        channels
            .entry(channel.to_owned())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone()
    }

    /// Runs `command` on the keyspace, or fails if the server is down.
    fn run<T>(&self, what: &str, command: impl FnOnce(&mut Keyspace) -> Result<T>) -> Result<T> {
        self.check(what)?;
        command(&mut self.keyspace())
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.is_available() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Unavailable,
                format!("{what} skipped: the memory server is unavailable"),
            ))
        }
    }

    fn up(&self) -> watch::Receiver<bool> {
        self.shared.up.subscribe()
    }
}
