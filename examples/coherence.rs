//! Two cache instances in one program, as two replicas of a service would be: a write on one
//! is seen by the other, whose in-process copy is dropped over the invalidation bus.
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example coherence
//! ```
//!
//! Needs a Redis server (the bus is Redis pub/sub).
#![expect(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::{Duration, Instant};

use layercache::LayerCache;

/// Waits until `b` has applied every bus message `a` had published (5 s at most), and says
/// how long that took.
async fn applied(a: &LayerCache, b: &LayerCache) -> Duration {
    let start = Instant::now();
    let published = a.bus_status().map_or(0, |s| s.published_seq);
    let a_id = a.instance_id();
    loop {
        let seen = b
            .bus_status()
            .and_then(|s| a_id.and_then(|id| s.peer_seq(id)))
            .unwrap_or(0);
        if seen >= published || start.elapsed() > Duration::from_secs(5) {
            return start.elapsed();
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("set REDIS_URL (for example redis://127.0.0.1:6379): the bus needs Redis");
        return Ok(());
    };
    let a = LayerCache::builder("coherence-demo")
        .redis_url(url.clone())
        .build()
        .await?;
    let b = LayerCache::builder("coherence-demo")
        .redis_url(url)
        .build()
        .await?;
    let prices_a = a.region::<str, u32>("price").build().await?;
    let prices_b = b.region::<str, u32>("price").build().await?;

    prices_a.insert("apple", 100).await?;
    println!("B reads apple = {:?}", prices_b.get("apple").await?); // from Redis
    println!("B reads apple = {:?}", prices_b.get("apple").await?); // from B's L1

    // A changes the price. B's L1 still holds 100 until the invalidation arrives.
    prices_a.insert("apple", 120).await?;
    let delay = applied(&a, &b).await;
    println!("B applied A's invalidation {delay:?} after A's insert returned");
    println!("B reads apple = {:?}", prices_b.get("apple").await?);

    // A region-wide invalidation is one command in Redis, seen by both.
    prices_a.invalidate_all().await?;
    applied(&a, &b).await;
    println!(
        "after invalidate_all, B reads apple = {:?}",
        prices_b.get("apple").await?
    );
    println!("A stats: {:?}", a.stats());
    println!("B stats: {:?}", b.stats());
    Ok(())
}
