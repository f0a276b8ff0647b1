//! The primitives beside the cache, as two replicas of a service use them: a lock with its
//! fencing token, a login rate limit, and sessions.
//!
//! ```sh
//! cargo run --example primitives                                   # an in-memory Redis stand-in
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example primitives  # a real Redis
//! ```
#![expect(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::Duration;

use layercache::{memory::MemoryServer, LayerCache, RateLimit};

/// Two instances of one service's cache: on `REDIS_URL`, or on one in-memory server. Writes
/// are acknowledged (`ack_writes`): a session destroyed on one replica is gone on the other
/// when the call returns, not a bus round trip later.
async fn replicas() -> layercache::Result<(LayerCache, LayerCache)> {
    let memory = MemoryServer::new();
    let build = || {
        let builder = LayerCache::builder("primitives-example").ack_writes(Duration::from_secs(2));
        match std::env::var("REDIS_URL") {
            Ok(url) => builder.redis_url(url),
            Err(_) => builder.memory_server(&memory),
        }
        .build()
    };
    Ok((build().await?, build().await?))
}

#[tokio::main]
async fn main() -> layercache::Result<()> {
    let (a, b) = replicas().await?;

    // A lock: one holder at a time; each holder's fence is larger than the one before, so the
    // store it protects can refuse a holder whose lock ran out while it was paused.
    let held = a
        .lock("nightly-report")
        .ttl(Duration::from_secs(5))
        .acquire()
        .await?;
    if let Some(lock) = held {
        println!("A holds the lock with fence {}", lock.fence());
        let other = b.lock("nightly-report").acquire().await?;
        println!(
            "B's attempt while A holds it: {}",
            if other.is_some() {
                "taken (wrong!)"
            } else {
                "busy"
            }
        );
        lock.release().await?;
    }
    if let Some(lock) = b.lock("nightly-report").acquire().await? {
        println!("then B holds it with fence {}", lock.fence());
        lock.release().await?;
    }

    // A rate limit shared by both replicas: 3 login attempts per minute per user.
    let limit = RateLimit::fixed_window(3, Duration::from_secs(60));
    let (la, lb) = (
        a.rate_limiter("login", limit)?,
        b.rate_limiter("login", limit)?,
    );
    for (n, limiter) in [&la, &lb, &la, &lb].into_iter().enumerate() {
        let d = limiter.check("user:42").await?;
        match d.retry_after {
            None => println!("login attempt {}: allowed, {} left", n + 1, d.remaining),
            Some(wait) => println!("login attempt {}: refused, retry in {wait:?}", n + 1),
        }
    }
    la.reset("user:42").await?; // a successful login clears the count
    println!(
        "after a reset: allowed = {}",
        lb.check("user:42").await?.allowed
    );

    // Sessions: made on A, read on B; a new id at sign-in; "sign out everywhere".
    let (sa, sb) = (
        a.sessions::<String>("web").build().await?,
        b.sessions::<String>("web").build().await?,
    );
    let id = sa.create_for("user:42", "cart: 2 items".to_owned()).await?;
    let seen = sb.get(&id).await?;
    println!("B reads A's session: {:?}", seen.as_ref().map(|s| s.data()));
    let renewed = sa.renew_id(&id).await?.unwrap_or_default();
    println!(
        "after renew_id the old id is {}, the new one {}",
        if sa.get(&id).await?.is_some() {
            "live (wrong!)"
        } else {
            "gone"
        },
        if sb.get(&renewed).await?.is_some() {
            "live"
        } else {
            "gone (wrong!)"
        }
    );
    sb.destroy_all_of("user:42").await?;
    println!(
        "after signing out everywhere: {}",
        if sa.get(&renewed).await?.is_some() {
            "still signed in (wrong!)"
        } else {
            "signed out"
        }
    );
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
