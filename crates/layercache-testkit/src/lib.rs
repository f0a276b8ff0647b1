//! Test support for layercache: real `redis-server` processes on free loopback ports.
//!
//! [`RedisServer::start`] picks a free port on 127.0.0.1, starts `redis-server` with no
//! persistence (`--save "" --appendonly no`) and its log in a private temporary directory,
//! waits until it answers `PING`, and kills it when dropped. Each test starts its own server,
//! so tests run in parallel with no shared state and no `FLUSHALL`. [`Proxy`] sits between a
//! client and such a server to add latency or blackhole the connection. [`RedisCluster::start`]
//! runs a six-node Redis Cluster the same way, [`RedisSentinel::start`] a primary, its replica
//! and three sentinels.
//!
//! ```no_run
//! let server = layercache_testkit::RedisServer::start().expect("redis-server");
//! println!("{}", server.url()); // redis://127.0.0.1:PORT
//! ```

mod cluster;
mod proxy;
mod resp;
mod sentinel;
mod server;
mod tls;

pub use cluster::RedisCluster;
pub use proxy::Proxy;
pub use sentinel::RedisSentinel;
pub use server::{RedisServer, RedisServerBuilder, StartError};
