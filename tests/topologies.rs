//! One suite, two topologies: the macro that runs a binary's scenarios on a redis-server and
//! on a Redis Cluster. Included (`#[macro_use] mod topologies;`) by the binaries that use it.

/// Runs each listed scenario — an `async fn(&Shared)` of the test binary — as two tests: on a
/// redis-server of its own (`on_redis::NAME`) and on the binary's shared Redis Cluster
/// (`on_cluster::NAME`). One suite, two topologies.
macro_rules! on_redis_and_cluster {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&crate::support::Shared::Redis(crate::support::redis())).await;
                }
            )*
        }
        mod on_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(&crate::support::Shared::Cluster(crate::support::cluster()))
                        .await;
                }
            )*
        }
    };
}
