//! One suite, two topologies, for scenarios that break the servers: the macro that runs a
//! binary's scenarios on a redis-server and on a Redis Cluster of their own. Included
//! (`#[macro_use] mod own_topologies;`) by the binaries that use it.

/// Runs each listed scenario — an `async fn(&mut Shared)` of the test binary — on a topology
/// of its own, for scenarios that pause, stop, kill or cut it: a private redis-server
/// (`on_own_redis::NAME`) and a private, proxied Redis Cluster (`on_own_cluster::NAME`; one
/// cluster at a time in the binary).
macro_rules! on_own_redis_and_cluster {
    ($($name:ident),* $(,)?) => {
        mod on_own_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let mut shared = crate::support::Shared::Redis(crate::support::redis());
                    super::$name(&mut shared).await;
                }
            )*
        }
        mod on_own_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (mut shared, _one) = crate::support::own_cluster().await;
                    super::$name(&mut shared).await;
                }
            )*
        }
    };
}
