//! The primitives beside the cache, against a real redis-server, a real Redis Cluster and the
//! in-memory server: distributed locks with fencing tokens (`LayerCache::lock`: one holder at
//! a time, rising fences, renewal, loss, release, and Redis faults — an error, never a lock) and
//! rate limiters (`LayerCache::rate_limiter`: the three algorithms shared by instances, their
//! refill and retry times, and what a check answers when Redis fails) and sessions
//! (`LayerCache::sessions`: shared, updated, destroyed for good, revoked per owner, and their
//! idle and absolute timeouts).

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;
#[macro_use]
mod topologies;

on_redis_and_cluster!(
    one_holder_at_a_time_with_rising_fences,
    a_held_lock_is_renewed_and_a_lost_one_says_so,
    a_dropped_lock_is_released_and_fences_outlive_their_counter,
    a_token_bucket_is_shared_by_instances_and_refills,
    windows_count_and_reopen,
    sessions_are_shared_updated_and_destroyed,
    signing_out_everywhere_ends_an_owners_sessions_only,
);

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::types::Value;
use layercache::{
    memory::MemoryServer, Decision, ErrorKind, LayerCache, Lock, RateLimit, RateLimiter,
    SessionStore, WhenRedisFails,
};
use layercache_testkit::Proxy;
use support::{cmd, redis, wait_until, Shared};

const WAIT: Duration = Duration::from_secs(10);

/// Fences are at least the store's clock in microseconds: after 2020-01-01.
const CLOCK_2020_US: u64 = 1_577_836_800_000_000;

async fn take(c: &LayerCache, name: &str) -> Option<Lock> {
    c.lock(name).acquire().await.unwrap()
}

/// A key's `PTTL` in Redis (-2: no such key).
async fn pttl(shared: &Shared, key: &str) -> i64 {
    cmd(&shared.raw().await, "PTTL", &[key])
        .await
        .as_i64()
        .unwrap()
}

async fn get(shared: &Shared, key: &str) -> Option<String> {
    match cmd(&shared.raw().await, "GET", &[key]).await {
        Value::Null => None,
        v => Some(v.as_string().unwrap()),
    }
}

async fn del(shared: &Shared, key: &str) {
    cmd(&shared.raw().await, "DEL", &[key]).await;
}

/// Two instances; one holder at a time; every acquisition's fence above the one before; a
/// waiter gets the lock once it is released; names are independent and any characters work
/// (on a cluster too: the lock and its fence share a slot whatever the name).
async fn one_holder_at_a_time_with_rising_fences(shared: &Shared) {
    let (a, b) = (shared.instance("lk1").await, shared.instance("lk1").await);
    let la = take(&a, "job").await.expect("free lock");
    assert!(la.is_held());
    assert_eq!(la.name(), "job");
    assert!(la.fence() > CLOCK_2020_US, "{}", la.fence());
    assert!(take(&b, "job").await.is_none(), "B took a held lock");
    assert!(
        take(&a, "job").await.is_none(),
        "A took its own held lock again"
    );
    let key = "lk1:l2:{job}";
    let left = pttl(shared, key).await;
    assert!(left > 0 && left <= 10_000, "PTTL {left}");
    assert_eq!(
        get(shared, "lk1:l2:{job}:fence").await,
        Some(la.fence().to_string())
    );

    // Another name, with every awkward character, is a lock of its own.
    let odd = take(&b, "a{b}:c d*").await.expect("another name is free");
    assert!(pttl(shared, "lk1:l2:{a%7Bb%7D:c%20d%2A}").await > 0);
    assert!(odd.release().await.unwrap());

    // B waits for the lock; A releases it; B gets it with a larger fence.
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("job").wait(WAIT).acquire().await })
    };
    let fa = la.fence();
    assert!(la.release().await.unwrap(), "A still held it");
    let lb = waiter.await.unwrap().unwrap().expect("B got it after A");
    assert!(lb.fence() > fa, "{} after {fa}", lb.fence());
    assert!(take(&a, "job").await.is_none());
    assert!(lb.release().await.unwrap());
    assert_eq!(pttl(shared, key).await, -2, "released: the key is gone");
    let again = take(&a, "job").await.expect("free again");
    assert!(again.fence() > fa + 1);
    assert!(again.release().await.unwrap());
    // A: granted "job" twice; refused it twice (once as B's waiter held it). B: granted "job"
    // and the odd name, refused once, nothing lost.
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.lock_grants, sa.lock_refusals, sa.lock_losses),
        (2, 2, 0)
    );
    assert_eq!(
        (sb.lock_grants, sb.lock_refusals, sb.lock_losses),
        (2, 1, 0)
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A lock held past its TTL stays held (renewed), and others stay out; once its key is gone
/// and someone else takes it, the renewal finds out: `lost()` resolves, `is_held` is false,
/// and `release` says it was not held and leaves the new holder's lock alone.
async fn a_held_lock_is_renewed_and_a_lost_one_says_so(shared: &Shared) {
    let (a, b) = (shared.instance("lk2").await, shared.instance("lk2").await);
    let ttl = Duration::from_millis(1200);
    let la = a.lock("renewed").ttl(ttl).acquire().await.unwrap().unwrap();
    // Renewed again and again: four renewals seen in Redis (its PTTL rising back), the last a
    // lifetime and more after it was taken — only renewals keep it.
    let raw = shared.raw().await;
    let seen = Arc::new(Mutex::new((i64::MAX, 0u32)));
    wait_until("four renewals of the held lock", WAIT, || {
        let (raw, seen) = (raw.clone(), seen.clone());
        async move {
            let left = cmd(&raw, "PTTL", &["lk2:l2:{renewed}"])
                .await
                .as_i64()
                .unwrap();
            assert!(left > 0, "the held lock expired in Redis");
            let mut seen = seen.lock().unwrap();
            if left > seen.0 {
                seen.1 += 1;
            }
            seen.0 = left;
            seen.1 >= 4
        }
    })
    .await;
    assert!(la.is_held());
    let left = pttl(shared, "lk2:l2:{renewed}").await;
    assert!(left > 0 && left <= 1200, "PTTL {left}");
    assert!(take(&b, "renewed").await.is_none());

    // Its key vanishes (as after an expiry) and B takes the lock.
    del(shared, "lk2:l2:{renewed}").await;
    let lb = take(&b, "renewed")
        .await
        .expect("B takes the vanished lock");
    assert!(lb.fence() > la.fence());
    tokio::time::timeout(WAIT, la.lost())
        .await
        .expect("A's renewal finds the lock taken over");
    assert!(!la.is_held());
    assert!(!la.release().await.unwrap(), "A's release says it was lost");
    assert_eq!(a.stats().lock_losses, 1);
    assert!(lb.is_held());
    assert!(pttl(shared, "lk2:l2:{renewed}").await > 0, "B's lock kept");
    assert!(lb.release().await.unwrap());
    a.shutdown().await;
    b.shutdown().await;
}

/// A lock dropped without release is released in the background; fences keep rising when
/// their counter is lost (deleted, as by `FLUSHALL` or a restart).
async fn a_dropped_lock_is_released_and_fences_outlive_their_counter(shared: &Shared) {
    let (a, b) = (shared.instance("lk3").await, shared.instance("lk3").await);
    let la = take(&a, "dropped").await.unwrap();
    let first = la.fence();
    drop(la);
    wait_until("the dropped lock to be released", WAIT, || {
        let b = b.clone();
        async move {
            match b.lock("dropped").acquire().await.unwrap() {
                Some(l) => l.release().await.unwrap(),
                None => false,
            }
        }
    })
    .await;
    del(shared, "lk3:l2:{dropped}:fence").await;
    assert_eq!(get(shared, "lk3:l2:{dropped}:fence").await, None);
    let lc = take(&a, "dropped").await.unwrap();
    assert!(
        lc.fence() > first,
        "fence {} after the counter's loss, {first} before",
        lc.fence()
    );
    assert!(lc.release().await.unwrap());
    a.shutdown().await;
    b.shutdown().await;
}

/// The same rules on the in-memory server, including a flush of everything and an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_on_the_in_memory_server() {
    let server = MemoryServer::new();
    let shared = Shared::Memory(server.clone());
    let (a, b) = (shared.instance("lkm").await, shared.instance("lkm").await);
    let la = take(&a, "m").await.unwrap();
    assert!(take(&b, "m").await.is_none());
    assert!(server.get("lkm:l2:{m}").is_some());
    server.flush_all();
    let lb = take(&b, "m").await.expect("taken after the flush");
    assert!(lb.fence() > la.fence(), "fences rise past a flush");
    tokio::time::timeout(WAIT, la.lost()).await.unwrap();
    assert!(!la.release().await.unwrap());
    server.set_available(false);
    let e = b.lock("other").acquire().await.unwrap_err();
    assert!(e.is_redis(), "{e}");
    server.set_available(true);
    assert!(lb.release().await.unwrap());
}

/// An instance linked to Redis through `proxy` (which the test cuts), quick to notice.
async fn through(proxy: &Proxy, name: &str) -> LayerCache {
    support::proxied(proxy, name, Duration::from_millis(300))
        .build()
        .await
        .unwrap()
}

/// Redis cut off: acquiring is an error, never a lock; a held lock whose renewals fail is lost
/// once its lifetime runs out; once Redis answers again its key has expired and another
/// instance takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_does_not_answer_grants_no_lock() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = through(&proxy, "lkcut").await;
    let b = support::instance(&server, "lkcut").await;
    let la = a
        .lock("cut")
        .ttl(Duration::from_millis(600))
        .acquire()
        .await
        .unwrap()
        .unwrap();
    proxy.cut();
    let e = a
        .lock("other")
        .wait(Duration::from_millis(100))
        .acquire()
        .await
        .unwrap_err();
    assert!(e.is_redis(), "{e}");
    tokio::time::timeout(WAIT, la.lost())
        .await
        .expect("the held lock is lost once its lifetime runs out");
    assert!(!la.is_held());
    let lb = b
        .lock("cut")
        .wait(WAIT)
        .acquire()
        .await
        .unwrap()
        .expect("the cut-off holder's lock expired");
    assert!(lb.fence() > la.fence());
    proxy.pass();
    assert!(lb.release().await.unwrap());
    drop(la);
    a.shutdown().await;
    b.shutdown().await;
}

/// Bad input: a clear error before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lock_input_is_a_config_error() {
    let shared = Shared::Memory(MemoryServer::new());
    let c = shared.instance("lkbad").await;
    for name in [
        String::new(),
        "x".repeat(layercache::MAX_LOCK_NAME_BYTES + 1),
    ] {
        let e = c.lock(name).acquire().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    let longest = "x".repeat(layercache::MAX_LOCK_NAME_BYTES);
    let held = c.lock(longest).acquire().await.unwrap().unwrap();
    assert!(held.release().await.unwrap());
    for (ttl, wait) in [
        (Duration::from_millis(9), Duration::ZERO),
        (Duration::MAX, Duration::ZERO),
        (Duration::from_secs(1), Duration::MAX),
    ] {
        let e = c.lock("t").ttl(ttl).wait(wait).acquire().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    let l1_only = LayerCache::builder("lkbad").build().await.unwrap();
    let e = l1_only.lock("t").acquire().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("Redis tier"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Rate limiters.

async fn allowed(l: &RateLimiter, key: &str) -> Decision {
    let d = l.check(key).await.unwrap();
    assert!(d.allowed && !d.degraded, "{key}: {d:?}");
    d
}

async fn refused(l: &RateLimiter, key: &str) -> Duration {
    let d = l.check(key).await.unwrap();
    assert!(!d.allowed && !d.degraded, "{key}: {d:?}");
    d.retry_after.expect("a refusal says when to retry")
}

/// Refused now, told to retry after at most `longest`; then polled (refusals are not counted)
/// until allowed, which must not come before the retry time it was told.
async fn allowed_again_after_retry(l: &RateLimiter, key: &str, longest: Duration) {
    let sent = Instant::now();
    let retry = refused(l, key).await;
    let answered = Instant::now();
    assert!(retry <= longest, "{key}: {retry:?}");
    let allowed_at = Arc::new(Mutex::new(None));
    wait_until("allowed again after the retry time", WAIT, || {
        let (l, key, allowed_at) = (l.clone(), key.to_owned(), allowed_at.clone());
        async move {
            let asked = Instant::now();
            let d = l.check(key.as_str()).await.unwrap();
            if d.allowed {
                *allowed_at.lock().unwrap() = Some(Instant::now());
            } else {
                // Asked once the retry time had passed: it must have been allowed.
                assert!(
                    asked < answered + retry,
                    "{key}: refused {:?} after the refusal, told {retry:?}",
                    asked - sent
                );
            }
            d.allowed
        }
    })
    .await;
    let at = allowed_at.lock().unwrap().unwrap();
    assert!(
        at >= sent + retry,
        "{key}: allowed {:?} after the refusal, told {retry:?}",
        at - sent
    );
}

/// A token bucket's budget is one for every instance; keys count apart; a burst passes at once,
/// then one request per interval; `check_n` takes all or nothing.
async fn a_token_bucket_is_shared_by_instances_and_refills(shared: &Shared) {
    let (a, b) = (shared.instance("rl1").await, shared.instance("rl1").await);
    // Five at once, then one every 12 s: nothing refills during the test.
    let slow = RateLimit::token_bucket(5, Duration::from_secs(60));
    let (la, lb) = (
        a.rate_limiter("api", slow).unwrap(),
        b.rate_limiter("api", slow).unwrap(),
    );
    let mut left = Vec::new();
    for l in [&la, &lb, &la, &lb, &la] {
        left.push(allowed(l, "u").await.remaining);
    }
    assert_eq!(left, [4, 3, 2, 1, 0]);
    let retry = refused(&lb, "u").await;
    // 12 s after the first of the five (less the time the test took since).
    assert!(
        retry > Duration::from_secs(6) && retry <= Duration::from_secs(12),
        "{retry:?}"
    );
    // A refusal is not counted: the next one is told to wait no longer.
    let again = refused(&la, "u").await;
    assert!(again <= retry, "{again:?} after {retry:?}");
    assert_eq!(allowed(&la, "v").await.remaining, 4, "another key");
    let d = la.check_n("v", 5).await.unwrap();
    assert!(!d.allowed, "5 more than the 4 left: {d:?}");
    assert_eq!(la.check_n("v", 4).await.unwrap().remaining, 0);
    let e = la.check_n("v", 6).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    if !matches!(shared, Shared::Memory(_)) {
        let left = pttl(shared, "rl1:r2:{api:u}").await;
        assert!(left > 50_000 && left <= 60_000, "PTTL {left}");
    }

    // A: 3 + 1 + 1 ("v" for 4) allowed, "u" and "v" (for 5) refused. B: 2 and 1.
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.rate_allowed, sa.rate_refused, sa.rate_degraded),
        (5, 2, 0)
    );
    assert_eq!((sb.rate_allowed, sb.rate_refused), (2, 1));

    // One every 500 ms, bursts of one: refused, then allowed once the retry time has passed.
    let fast = a
        .rate_limiter(
            "fast",
            RateLimit::token_bucket(2, Duration::from_secs(1)).burst(1),
        )
        .unwrap();
    allowed(&fast, "k").await;
    allowed_again_after_retry(&fast, "k", Duration::from_millis(500)).await;
    // A reset forgets the key's count, for every instance.
    la.reset("u").await.unwrap();
    if !matches!(shared, Shared::Memory(_)) {
        assert_eq!(pttl(shared, "rl1:r2:{api:u}").await, -2);
    }
    assert_eq!(allowed(&lb, "u").await.remaining, 4);
    a.shutdown().await;
    b.shutdown().await;
}

/// Fixed and sliding windows: `limit` per window across instances, refusals not counted, and
/// the window reopens once the retry time has passed.
async fn windows_count_and_reopen(shared: &Shared) {
    let (a, b) = (shared.instance("rl2").await, shared.instance("rl2").await);
    for (name, limit) in [
        ("fixed", RateLimit::fixed_window(3, Duration::from_secs(60))),
        (
            "sliding",
            RateLimit::sliding_window(3, Duration::from_secs(60)),
        ),
    ] {
        let (la, lb) = (
            a.rate_limiter(name, limit).unwrap(),
            b.rate_limiter(name, limit).unwrap(),
        );
        assert_eq!(allowed(&la, "u").await.remaining, 2, "{name}");
        assert_eq!(allowed(&lb, "u").await.remaining, 1, "{name}");
        assert_eq!(allowed(&la, "u").await.remaining, 0, "{name}");
        // Refusals are not counted: each is told to wait no longer than the one before.
        let mut last = Duration::from_secs(120);
        for _ in 0..3 {
            let retry = refused(&lb, "u").await;
            assert!(
                retry > Duration::ZERO && retry <= last,
                "{name}: {retry:?} after {last:?}"
            );
            last = retry;
        }
        if name == "fixed" && !matches!(shared, Shared::Memory(_)) {
            let held = get(shared, "rl2:r2:{fixed:u}").await.unwrap();
            assert!(held.ends_with(":3"), "{held}");
        }
        assert_eq!(allowed(&la, "other").await.remaining, 2, "{name}");
    }
    // Short windows: refused, then allowed again after the retry time (the sliding window
    // waits for enough of the full window to slide out).
    for (name, limit) in [
        (
            "fixed-short",
            RateLimit::fixed_window(2, Duration::from_secs(1)),
        ),
        (
            "sliding-short",
            RateLimit::sliding_window(2, Duration::from_secs(1)),
        ),
    ] {
        let l = a.rate_limiter(name, limit).unwrap();
        let d = l.check_n("k", 2).await.unwrap();
        assert!(d.allowed, "{name}: {d:?}");
        allowed_again_after_retry(&l, "k", Duration::from_millis(1500)).await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis cut off: each limiter answers as its `when_redis_fails` says, marked degraded; once
/// Redis answers again, the limit applies (and counted what it had counted before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limiter_answers_by_its_policy_when_redis_fails() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = through(&proxy, "rlcut").await;
    let limit = RateLimit::fixed_window(1, Duration::from_secs(60));
    let open = a.rate_limiter("l", limit).unwrap();
    assert_eq!(open.limit(), limit);
    let closed = a
        .rate_limiter("l", limit)
        .unwrap()
        .when_redis_fails(WhenRedisFails::Deny);
    let strict = a
        .rate_limiter("l", limit)
        .unwrap()
        .when_redis_fails(WhenRedisFails::Error);
    allowed(&open, "k").await;
    refused(&closed, "k").await;
    proxy.cut();
    let d = open.check("k").await.unwrap();
    assert!(d.allowed && d.degraded, "{d:?}");
    let d = closed.check("k").await.unwrap();
    assert!(!d.allowed && d.degraded && d.retry_after.is_none(), "{d:?}");
    let e = strict.check("k").await.unwrap_err();
    assert!(e.is_redis(), "{e}");
    assert_eq!(a.stats().rate_degraded, 3);
    proxy.pass();
    wait_until("the limiter to reach redis again", WAIT, || {
        let strict = strict.clone();
        async move {
            strict
                .check("k")
                .await
                .is_ok_and(|d| !d.allowed && !d.degraded)
        }
    })
    .await;
    a.shutdown().await;
}

/// Bad input: a clear error before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rate_limit_input_is_an_error() {
    let shared = Shared::Memory(MemoryServer::new());
    let c = shared.instance("rlbad").await;
    let ok = RateLimit::token_bucket(10, Duration::from_secs(1));
    let bad = [
        ("", ok),
        ("a:b", ok),
        ("l", RateLimit::token_bucket(0, Duration::from_secs(1))),
        (
            "l",
            RateLimit::fixed_window(u64::MAX, Duration::from_secs(1)),
        ),
        ("l", ok.burst(u64::MAX)),
        ("l", RateLimit::sliding_window(10, Duration::ZERO)),
        (
            "l",
            RateLimit::fixed_window(10, Duration::from_secs(400 * 86_400)),
        ),
        ("l", ok.burst(0)),
        (
            "l",
            RateLimit::fixed_window(10, Duration::from_secs(1)).burst(5),
        ),
    ];
    for (name, limit) in bad {
        let e = c.rate_limiter(name, limit).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{name} {limit:?}: {e}");
    }
    let l = c.rate_limiter("l", ok).unwrap();
    assert_eq!(
        l.check_n("k", 0).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    let long = "k".repeat(2000);
    assert_eq!(
        l.check(long.as_str()).await.unwrap_err().kind(),
        ErrorKind::KeyTooLarge
    );
    let l1_only = LayerCache::builder("rlbad").build().await.unwrap();
    let e = l1_only.rate_limiter("l", ok).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

// ---------------------------------------------------------------------------------------------
// Sessions.

async fn store(c: &LayerCache) -> SessionStore<String> {
    c.sessions::<String>("web").build().await.unwrap()
}

/// Waits until `store` answers `expected` for session `id` (another instance's change arrives
/// through the bus).
async fn session_is(store: &SessionStore<String>, id: &str, expected: Option<&str>) {
    wait_until(&format!("session data {expected:?}"), WAIT, || {
        let (store, id) = (store.clone(), id.to_owned());
        async move {
            let found = store.get(&id).await.unwrap();
            found.as_ref().map(|s| s.data().as_str()) == expected
        }
    })
    .await;
}

/// A session made on one instance is read on another; updates reach both; a destroyed one is
/// gone on both and cannot be updated back.
async fn sessions_are_shared_updated_and_destroyed(shared: &Shared) {
    let (a, b) = (shared.instance("ss1").await, shared.instance("ss1").await);
    let (sa, sb) = (store(&a).await, store(&b).await);
    let id = sa.create("cart: 1".to_owned()).await.unwrap();
    let other = sa.create("other".to_owned()).await.unwrap();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_ne!(id, other);
    let s = sb.get(&id).await.unwrap().expect("B reads A's session");
    assert_eq!(
        (s.id(), s.data().as_str(), s.owner()),
        (id.as_str(), "cart: 1", None)
    );
    let created = s.created_at().elapsed().unwrap();
    assert!(created < Duration::from_secs(60), "{created:?}");
    let absolute = s.expires_at().duration_since(s.created_at()).unwrap();
    assert!(
        absolute > Duration::from_secs(86_399) && absolute <= Duration::from_secs(86_400),
        "{absolute:?}"
    );
    assert!(
        !format!("{s:?}").contains(&id),
        "the id is kept out of Debug"
    );
    assert!(sb
        .get("0123456789abcdef0123456789abcdef")
        .await
        .unwrap()
        .is_none());
    // Garbage a client may present is no session, and not an error (nor a Redis call: a key
    // this long would be refused by `max_key_bytes`).
    for junk in ["", "x", &"a".repeat(5000), &id.to_uppercase()] {
        assert!(sb.get(junk).await.unwrap().is_none(), "{junk:.40}");
        assert!(!sb.update(junk, "x".to_owned()).await.unwrap());
        sb.destroy(junk).await.unwrap();
    }

    assert!(sb.update(&id, "cart: 2".to_owned()).await.unwrap());
    session_is(&sa, &id, Some("cart: 2")).await;
    // A new id for the same session (after a sign-in): the old one is gone everywhere.
    let old = id;
    let id = sa.renew_id(&old).await.unwrap().expect("a live session");
    assert_ne!(id, old);
    session_is(&sb, &old, None).await;
    session_is(&sb, &id, Some("cart: 2")).await;
    assert_eq!(sa.renew_id(&old).await.unwrap(), None);
    sa.destroy(&id).await.unwrap();
    session_is(&sb, &id, None).await;
    assert!(sa.get(&id).await.unwrap().is_none());
    assert!(
        !sb.update(&id, "cart: 3".to_owned()).await.unwrap(),
        "updated back"
    );
    assert!(sa.get(&id).await.unwrap().is_none());
    assert!(!sa.update("no-such-session", "x".to_owned()).await.unwrap());
    sa.destroy("no-such-session").await.unwrap();
    session_is(&sb, &other, Some("other")).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// `destroy_all_of(owner)` ends every session of the owner made before it, on every instance,
/// and no one else's; the owner's later sessions live.
async fn signing_out_everywhere_ends_an_owners_sessions_only(shared: &Shared) {
    let (a, b) = (shared.instance("ss2").await, shared.instance("ss2").await);
    let (sa, sb) = (store(&a).await, store(&b).await);
    let on_a = sa.create_for("u1", "a".to_owned()).await.unwrap();
    let on_b = sb.create_for("u1", "b".to_owned()).await.unwrap();
    let theirs = sb.create_for("u2", "c".to_owned()).await.unwrap();
    for (store, id, data) in [(&sa, &on_b, "b"), (&sb, &on_a, "a"), (&sa, &theirs, "c")] {
        session_is(store, id, Some(data)).await;
    }
    assert_eq!(sa.get(&on_a).await.unwrap().unwrap().owner(), Some("u1"));
    sa.destroy_all_of("u1").await.unwrap();
    for store in [&sa, &sb] {
        session_is(store, &on_a, None).await;
        session_is(store, &on_b, None).await;
        session_is(store, &theirs, Some("c")).await;
    }
    assert!(!sa.update(&on_b, "back".to_owned()).await.unwrap());
    let later = sb.create_for("u1", "d".to_owned()).await.unwrap();
    session_is(&sa, &later, Some("d")).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The rate-limit and session scenarios on the in-memory server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_sessions_on_the_in_memory_server() {
    let shared = Shared::Memory(MemoryServer::new());
    a_token_bucket_is_shared_by_instances_and_refills(&shared).await;
    windows_count_and_reopen(&shared).await;
    sessions_are_shared_updated_and_destroyed(&shared).await;
    signing_out_everywhere_ends_an_owners_sessions_only(&shared).await;
}

/// Reads keep a session past its idle timeout, never past its absolute one; unread, it ends
/// after its idle timeout (in Redis too: another instance does not find it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_their_idle_and_absolute_timeouts() {
    let server = redis();
    let (a, b) = (
        support::instance(&server, "ss3").await,
        support::instance(&server, "ss3").await,
    );
    let idle = Duration::from_secs(2);
    async fn build(c: &LayerCache, idle: Duration, absolute: Duration) -> SessionStore<String> {
        c.sessions::<String>("t")
            .idle_timeout(idle)
            .absolute_timeout(absolute)
            .build()
            .await
            .unwrap()
    }
    let sa = build(&a, idle, Duration::from_secs(3600)).await;
    let sb = build(&b, idle, Duration::from_secs(3600)).await;
    let id = sa.create("x".to_owned()).await.unwrap();
    // Read on A until it has extended the session in Redis 15 times (at most once per tenth of
    // the idle timeout: longer than the idle timeout): still there, on B too.
    let extends = a.stats().l2_extends;
    wait_until("A's reads to extend the session 15 times", WAIT, || {
        let (a, sa, id) = (a.clone(), sa.clone(), id.clone());
        async move {
            assert!(sa.get(&id).await.unwrap().is_some(), "ended while read");
            a.stats().l2_extends >= extends + 15
        }
    })
    .await;
    assert!(
        sb.get(&id).await.unwrap().is_some(),
        "ended in Redis while read on A"
    );
    // Unread (a read would extend it), it ends in Redis, then on both instances.
    let raw = support::raw_client(&server).await;
    wait_until("the unread session to end in redis", WAIT, || {
        let raw = raw.clone();
        async move { support::data_keys(&raw).await.is_empty() }
    })
    .await;
    assert!(sa.get(&id).await.unwrap().is_none());
    assert!(sb.get(&id).await.unwrap().is_none());

    // Absolute timeout: read all the time, still ends.
    let short = build(&a, idle, Duration::from_millis(500)).await;
    let id = short.create("y".to_owned()).await.unwrap();
    let made = tokio::time::Instant::now();
    wait_until("the session to reach its absolute timeout", WAIT, || {
        let (short, id) = (short.clone(), id.clone());
        async move { short.get(&id).await.unwrap().is_none() }
    })
    .await;
    assert!(
        made.elapsed() >= Duration::from_millis(490),
        "{:?}",
        made.elapsed()
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_store_input_is_a_config_error() {
    let c = LayerCache::builder("ssbad").build().await.unwrap();
    let e = c.sessions::<u8>("x".repeat(58)).build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let e = c.sessions::<u8>("bad name").build().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let ms = Duration::from_millis;
    for (idle, absolute) in [
        (ms(9), ms(10_000)),
        (ms(10_000), ms(9)),
        (Duration::MAX, ms(10_000)),
        (ms(10_000), Duration::MAX),
    ] {
        let e = c
            .sessions::<u8>("s")
            .idle_timeout(idle)
            .absolute_timeout(absolute)
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    }
    // Without Redis, sessions live in this instance.
    let s = c.sessions::<u8>("s").build().await.unwrap();
    let id = s.create(7).await.unwrap();
    assert_eq!(s.get(&id).await.unwrap().map(|s| *s.data()), Some(7));
}

/// With acknowledged writes, a sign-out is seen on every instance when the call returns: no
/// request on another replica finds the session afterwards, not even from its L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acknowledged_writes_a_sign_out_is_everywhere_when_it_returns() {
    let server = redis();
    let acked = |name: &str| {
        support::fast_bus(support::builder(&server, name))
            .ack_writes(WAIT)
            .build()
    };
    let (a, b) = (acked("ss4").await.unwrap(), acked("ss4").await.unwrap());
    let (sa, sb) = (store(&a).await, store(&b).await);
    let one = sa.create_for("u1", "one".to_owned()).await.unwrap();
    let two = sa.create_for("u1", "two".to_owned()).await.unwrap();
    wait_until("B to see both instances", WAIT, || {
        let b = b.clone();
        async move { !b.bus_status().unwrap().peers.is_empty() }
    })
    .await;
    for id in [&one, &two] {
        // In A's L1, with the owner's "not revoked" too.
        assert!(sa.get(id).await.unwrap().is_some());
        assert!(sa.get(id).await.unwrap().is_some());
    }
    sb.destroy(&one).await.unwrap();
    assert!(
        sa.get(&one).await.unwrap().is_none(),
        "A served a destroyed session"
    );
    assert!(sa.get(&two).await.unwrap().is_some());
    sb.destroy_all_of("u1").await.unwrap();
    assert!(
        sa.get(&two).await.unwrap().is_none(),
        "A served a signed-out session"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Cut off from Redis, A destroys a session B made and creates one: both calls return `Ok`
/// (journaled). Once the link heals and A's repairs land, the destroyed session is gone for
/// every instance and cannot be updated back, and the one made while cut off is gone too (a
/// repair is an invalidation): neither outlives the outage as the old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_destroyed_while_cut_off_stays_destroyed() {
    let server = redis();
    let proxy = Proxy::start(server.port()).unwrap();
    let a = support::fast_bus(support::proxied(
        &proxy,
        "sscut",
        Duration::from_millis(300),
    ))
    .build()
    .await
    .unwrap();
    let b = support::instance(&server, "sscut").await;
    let (sa, sb) = (store(&a).await, store(&b).await);
    let id = sb.create("made on B".to_owned()).await.unwrap();
    session_is(&sa, &id, Some("made on B")).await;

    proxy.cut();
    sa.destroy(&id).await.unwrap();
    assert!(
        sa.get(&id).await.unwrap().is_none(),
        "A serves what it destroyed"
    );
    let during = sa.create("made while cut off".to_owned()).await.unwrap();
    assert!(a.pending_repairs() >= 2, "{}", a.pending_repairs());

    proxy.pass();
    wait_until("A's repairs to land", WAIT, || {
        let a = a.clone();
        async move { a.pending_repairs() == 0 && a.l2_connected() }
    })
    .await;
    session_is(&sb, &id, None).await;
    assert!(
        !sb.update(&id, "back".to_owned()).await.unwrap(),
        "updated back"
    );
    session_is(&sb, &during, None).await;
    assert!(sa.get(&id).await.unwrap().is_none());
    a.shutdown().await;
    b.shutdown().await;
}
