//! Quick start: a read-through cache in a few lines.
//!
//! ```sh
//! cargo run --example quickstart                                   # L1 only, no Redis needed
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart  # both tiers
//! ```
//!
//! It prints which tier served each read: the loader (the "database"), L1 (in process) or
//! L2 (Redis, read by a second cache instance, as another replica of a service would), and
//! layercache's own log lines (through a `tracing` subscriber).
#![expect(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::Duration;

use layercache::{EntryOptions, LayerCache, Stats};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// Stands in for a database query.
async fn load_user(id: u64) -> Result<User, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(User {
        id,
        name: format!("user-{id}"),
    })
}

fn tier(before: &Stats, after: &Stats) -> &'static str {
    if after.loads > before.loads {
        "loader (cache miss)"
    } else if after.l2_hits > before.l2_hits {
        "L2 (Redis)"
    } else if after.l1_hits > before.l1_hits {
        "L1 (in process)"
    } else {
        "?"
    }
}

async fn build_cache(redis_url: Option<&str>) -> layercache::Result<LayerCache> {
    let mut builder = LayerCache::builder("quickstart")
        .max_capacity(10_000)
        .default_entry_options(EntryOptions::new().ttl(Duration::from_secs(60)));
    if let Some(url) = redis_url {
        builder = builder.redis_url(url);
    }
    builder.build().await
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    // layercache logs through `tracing`: without a subscriber nothing shows. `info` prints its
    // start and shutdown, and any warning (Redis unreachable, a corrupt entry, a flush); `debug`
    // adds a span per Redis call and per load.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    let redis_url = std::env::var("REDIS_URL").ok();
    match &redis_url {
        Some(url) => println!("two tiers: moka in front of Redis at {url}"),
        None => println!("L1 only (set REDIS_URL=redis://127.0.0.1:6379 to add Redis)"),
    }
    let cache = build_cache(redis_url.as_deref()).await?;
    let users = cache.region::<u64, User>("user").build().await?;
    users.invalidate(&42).await?; // start cold, whatever an earlier run left in Redis

    for round in 1..=3 {
        let before = cache.stats();
        let user = users.get_or_load(&42, load_user).await?;
        println!(
            "read {round}: {user:?} from {}",
            tier(&before, &cache.stats())
        );
    }

    if redis_url.is_some() {
        // Another instance (another replica of the service) shares the L2 tier.
        let replica = build_cache(redis_url.as_deref()).await?;
        let replica_users = replica.region::<u64, User>("user").build().await?;
        for round in 1..=2 {
            let before = replica.stats();
            let user = replica_users.get_or_load(&42, load_user).await?;
            println!(
                "replica read {round}: {user:?} from {}",
                tier(&before, &replica.stats())
            );
        }
    }
    println!("stats:\n{}", cache.stats());
    Ok(())
}
