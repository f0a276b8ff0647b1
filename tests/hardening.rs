//! Hardening against a real redis-server: every option at its limits (no panic, no hang, a
//! `Config` error naming the option), a circuit breaker whose probe is cancelled, a loader that
//! never finishes, values read back as another type, calls while Redis is known to be down,
//! and `shutdown()` ending every task the cache started.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Once,
    },
    time::Duration,
};

use fred::prelude::KeysInterface;
use layercache::{EntryOptions, ErrorKind, LayerCache, LayerCacheBuilder, MAX_LIFETIME, MAX_WAIT};
use layercache_testkit::RedisServer;
use rand::{rngs::StdRng, Rng, SeedableRng};
use support::{builder, raw_client, redis, signal, wait_until};

/// Panics seen anywhere in this test binary (background tasks included: tokio catches a task's
/// panic, but the hook still sees it).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// The value of one option in a limits case.
#[derive(Debug, Clone, Copy)]
enum Level {
    Zero,
    One,
    Max,
    Random(u64),
}

impl Level {
    fn duration(self) -> Duration {
        match self {
            Self::Zero => Duration::ZERO,
            Self::One => Duration::from_nanos(1),
            Self::Max => Duration::MAX,
            // Nanoseconds up to ~584 years: most land above the bounds, some below.
            Self::Random(r) if r % 2 == 0 => Duration::from_nanos(r),
            Self::Random(r) => Duration::from_millis(r % 10_000),
        }
    }

    fn usize(self) -> usize {
        match self {
            Self::Zero => 0,
            Self::One => 1,
            Self::Max => usize::MAX,
            Self::Random(r) if r % 2 == 0 => usize::try_from(r).unwrap_or(usize::MAX),
            Self::Random(r) => usize::try_from(r % 100_000).unwrap(),
        }
    }

    fn u64(self) -> u64 {
        match self {
            Self::Zero => 0,
            Self::One => 1,
            Self::Max => u64::MAX,
            Self::Random(r) if r % 2 == 0 => r,
            Self::Random(r) => r % 100_000,
        }
    }

    fn f64(self) -> f64 {
        match self {
            Self::Zero => 0.0,
            Self::One => 1.0,
            Self::Max => f64::MAX,
            Self::Random(r) => (r % 1000) as f64 / 100.0,
        }
    }
}

type BuilderOption = (
    &'static str,
    fn(LayerCacheBuilder, Level) -> LayerCacheBuilder,
);
type EntryOption = (&'static str, fn(EntryOptions, Level) -> EntryOptions);

/// Every cache-wide option with a value.
const BUILDER_OPTIONS: &[BuilderOption] = &[
    ("max_capacity", |b, l| b.max_capacity(l.u64())),
    ("max_capacity_bytes", |b, l| b.max_capacity_bytes(l.u64())),
    ("time_to_live", |b, l| b.time_to_live(l.duration())),
    ("time_to_idle", |b, l| b.time_to_idle(l.duration())),
    ("l1_write_cooldown", |b, l| {
        b.l1_write_cooldown(l.duration())
    }),
    ("compression_threshold", |b, l| {
        b.compression_threshold(l.usize())
    }),
    ("max_value_bytes", |b, l| b.max_value_bytes(l.usize())),
    ("l2_command_timeout", |b, l| {
        b.l2_command_timeout(l.duration())
    }),
    ("l2_suspect_timeout", |b, l| {
        b.l2_suspect_timeout(l.duration())
    }),
    ("l2_connect_timeout", |b, l| {
        b.l2_connect_timeout(l.duration())
    }),
    ("l2_max_command_buffer", |b, l| {
        b.l2_max_command_buffer(l.usize())
    }),
    ("l2_repair_capacity", |b, l| b.l2_repair_capacity(l.usize())),
    ("ack_writes", |b, l| b.ack_writes(l.duration())),
    ("bus_thread", |b, l| b.bus_thread(l.u64() % 2 == 1)),
    ("l2_reconnect_backoff", |b, l| {
        b.l2_reconnect_backoff(l.duration(), l.duration())
    }),
    ("l2_reconnect_backoff (max)", |b, l| {
        b.l2_reconnect_backoff(Duration::from_millis(1), l.duration())
    }),
    ("bus_heartbeat_interval", |b, l| {
        b.bus_heartbeat_interval(l.duration())
            .bus_heartbeat_timeout(l.duration().saturating_mul(2))
    }),
    ("bus_heartbeat_timeout", |b, l| {
        b.bus_heartbeat_timeout(l.duration())
    }),
    ("bus_buffer", |b, l| b.bus_buffer(l.usize())),
    ("lock_ttl", |b, l| b.lock_ttl(l.duration())),
    ("lock_wait", |b, l| b.lock_wait(l.duration())),
    ("l2_breaker_threshold", |b, l| {
        b.l2_breaker_threshold(u32::try_from(l.u64() % (1 << 32)).unwrap())
    }),
    ("l2_breaker_cooldown", |b, l| {
        b.l2_breaker_cooldown(l.duration())
    }),
    ("max_key_bytes", |b, l| b.max_key_bytes(l.usize())),
];

/// Every entry option with a value (`distributed_lock` is a flag: the cases turn it on).
const ENTRY_OPTIONS: &[EntryOption] = &[
    ("ttl", |o, l| o.ttl(l.duration())),
    ("l1_ttl", |o, l| o.l1_ttl(l.duration())),
    ("jitter", |o, l| o.jitter(l.duration())),
    ("soft_ttl", |o, l| o.soft_ttl(l.duration())),
    ("xfetch_beta", |o, l| o.xfetch_beta(l.f64())),
    ("fail_safe_max_age", |o, l| {
        o.fail_safe_max_age(l.duration())
    }),
    ("fail_safe_throttle", |o, l| {
        o.fail_safe_throttle(l.duration())
    }),
    ("loader_soft_timeout", |o, l| {
        o.loader_soft_timeout(l.duration())
            .fail_safe_max_age(Duration::from_secs(1))
    }),
    ("loader_hard_timeout", |o, l| {
        o.loader_hard_timeout(l.duration())
    }),
    ("negative_ttl", |o, l| o.negative_ttl(l.duration())),
    ("sliding", |o, l| o.sliding(l.duration())),
    ("distributed_lock", |o, l| {
        o.distributed_lock(l.u64() % 2 == 1)
    }),
];

/// What one case did: a `Config` error (from `build()` or a call), or it worked.
#[derive(Debug, PartialEq)]
enum Verdict {
    Worked,
    Config(String),
}

/// Builds the cache and a region, then reads, loads and writes once. Every step must succeed
/// or fail with `ErrorKind::Config` (or `KeyTooLarge` under a tiny `max_key_bytes`); a loader error is accepted only from a tiny hard timeout
/// (the loader could not finish in a nanosecond), a connect timeout only from a tiny
/// `l2_connect_timeout`.
async fn one_case(b: LayerCacheBuilder, entry: EntryOptions, what: &str) -> Verdict {
    let cache = match b.build().await {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::Config => return Verdict::Config(e.to_string()),
        Err(e) if e.kind() == ErrorKind::Timeout && what.contains("connect") => {
            return Verdict::Worked
        }
        Err(e) => panic!("{what}: build() failed with {e} ({:?})", e.kind()),
    };
    let region = cache.region::<str, u64>("r").build().await.unwrap();
    // A key of its own: the cases share a server and a cache name.
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let k = format!("k{}", CASE.fetch_add(1, Ordering::Relaxed));
    let k = k.as_str();
    let mut verdict = Verdict::Worked;
    let loaded = region
        .entry(k)
        .options(&entry)
        .or_load(|_| async { Ok::<_, std::io::Error>(5) })
        .await;
    match loaded {
        Ok(v) => assert_eq!(*v, 5, "{what}"),
        Err(e) if e.kind() == ErrorKind::Config => verdict = Verdict::Config(e.to_string()),
        // A tiny max_key_bytes: the key is refused, clearly.
        Err(e) if e.kind() == ErrorKind::KeyTooLarge => {}
        Err(e)
            if e.kind() == ErrorKind::Loader
                && entry
                    .get_loader_hard_timeout()
                    .is_some_and(|h| h < Duration::from_millis(1)) => {}
        Err(e) => panic!("{what}: get_or_load failed with {e}"),
    }
    match region.entry(k).options(&entry).insert(6).await {
        Ok(()) => {
            let got = region.get(k).await;
            assert!(got.is_ok(), "{what}: get failed with {got:?}");
        }
        Err(e) if e.kind() == ErrorKind::Config => verdict = Verdict::Config(e.to_string()),
        Err(e) if e.kind() == ErrorKind::KeyTooLarge => {}
        Err(e) => panic!("{what}: insert failed with {e}"),
    }
    cache.shutdown().await;
    verdict
}

/// Runs a case with a deadline (a hang fails the test) and checks that no task panicked.
async fn run_case(b: LayerCacheBuilder, entry: EntryOptions, what: &str) -> Verdict {
    let before = PANICS.load(Ordering::SeqCst);
    let verdict = tokio::time::timeout(Duration::from_secs(30), one_case(b, entry, what))
        .await
        .unwrap_or_else(|_| panic!("{what}: hung for 30 s"));
    // No wait needed before reading the hook: the case ends with `shutdown()`, which returns
    // once the cache's background tasks have ended (a panic in them has happened by then).
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        before,
        "{what}: a panic happened (see the output)"
    );
    verdict
}

const LEVELS: [Level; 3] = [Level::Zero, Level::One, Level::Max];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_at_zero_one_and_max_works_or_is_a_config_error_naming_it() {
    count_panics();
    let server = redis();
    let mut rng = StdRng::seed_from_u64(0x1a7e_cace);
    for (name, set) in BUILDER_OPTIONS {
        for level in LEVELS.into_iter().chain([Level::Random(rng.gen())]) {
            let what = format!("{name} = {level:?}");
            let b = set(builder(&server, "lim"), level);
            if let Verdict::Config(msg) = run_case(b, EntryOptions::new(), &what).await {
                let named = name.split(' ').next().unwrap();
                assert!(msg.contains(named), "{what}: error does not name it: {msg}");
            }
        }
    }
    for (name, set) in ENTRY_OPTIONS {
        for level in LEVELS.into_iter().chain([Level::Random(rng.gen())]) {
            let what = format!("EntryOptions::{name} = {level:?}");
            let entry = set(EntryOptions::new(), level);
            // As the cache's default (checked by build()) and per call (checked by the call).
            let as_default = builder(&server, "lim").default_entry_options(entry);
            let v = run_case(as_default, EntryOptions::new(), &what).await;
            let per_call = run_case(builder(&server, "lim"), entry, &what).await;
            for verdict in [v, per_call] {
                if let Verdict::Config(msg) = verdict {
                    assert!(msg.contains(name), "{what}: error does not name it: {msg}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_combinations_of_every_option_never_panic_or_hang() {
    count_panics();
    let server = redis();
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let level = |rng: &mut StdRng| match rng.gen_range(0..6) {
        0 => Level::Zero,
        1 => Level::One,
        2 => Level::Max,
        _ => Level::Random(rng.gen()),
    };
    let mut worked = 0;
    for case in 0..40 {
        let mut b = builder(&server, "mix");
        let mut entry = EntryOptions::new();
        let mut names = Vec::new();
        for (name, set) in BUILDER_OPTIONS {
            if rng.gen_bool(0.3) {
                let l = level(&mut rng);
                names.push(format!("{name}={l:?}"));
                b = set(b, l);
            }
        }
        for (name, set) in ENTRY_OPTIONS {
            if rng.gen_bool(0.3) {
                let l = level(&mut rng);
                names.push(format!("{name}={l:?}"));
                entry = set(entry, l);
            }
        }
        let what = format!("case {case} (seed {seed}): {}", names.join(", "));
        if run_case(b, entry, &what).await == Verdict::Worked {
            worked += 1;
        }
    }
    eprintln!("{worked} of 40 combinations were valid");
}

#[tokio::test]
async fn the_bounds_are_inclusive_and_named() {
    // At the bound: accepted (L1-only, so nothing needs a server).
    let at = LayerCache::builder("b")
        .time_to_live(MAX_LIFETIME)
        .time_to_idle(MAX_LIFETIME)
        .lock_wait(MAX_WAIT)
        .default_entry_options(
            EntryOptions::new()
                .ttl(MAX_LIFETIME)
                .fail_safe_max_age(MAX_LIFETIME)
                .jitter(MAX_LIFETIME)
                .loader_hard_timeout(MAX_WAIT),
        )
        .build()
        .await
        .unwrap();
    let r = at.region::<str, u64>("r").build().await.unwrap();
    r.insert("k", 1).await.unwrap();
    assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&1));
    // One past it: a Config error that names the option and the bound.
    let past = Duration::from_nanos(1);
    let e = LayerCache::builder("b")
        .time_to_idle(MAX_LIFETIME + past)
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("time_to_idle") && e.to_string().contains("10 years"));
    let e = LayerCache::builder("b")
        .bus_heartbeat_interval(Duration::MAX)
        .bus_heartbeat_timeout(Duration::MAX)
        .build()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bus_heartbeat_interval"), "{e}");
    let e = r
        .entry("k")
        .options(&EntryOptions::new().fail_safe_max_age(Duration::MAX))
        .insert(2)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("fail_safe_max_age"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_does_not_leave_the_breaker_stuck() {
    let server = redis();
    let raw = raw_client(&server).await;
    let cache = builder(&server, "probe")
        .l2_command_timeout(Duration::from_millis(200))
        .l2_breaker_threshold(2)
        .l2_breaker_cooldown(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    // Written only after the outage (the cancelled writes may still land: they were sent).
    let key = r.redis_key("after").unwrap();
    let pid = server.pid().unwrap();
    signal(pid, "STOP");
    wait_until("the breaker to open", Duration::from_secs(10), || {
        let (r, cache) = (r.clone(), cache.clone());
        async move {
            let _ = r.insert("x", 1).await;
            cache.l2_breaker_open()
        }
    })
    .await;
    // Past the cool-down, every write is cancelled 2 ms in: the first of them is the probe.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..20 {
        let _ = tokio::time::timeout(Duration::from_millis(2), r.insert("k", i)).await;
    }
    signal(pid, "CONT");
    let mut n = 100;
    wait_until(
        "a write to reach redis after the outage",
        Duration::from_secs(10),
        || {
            n += 1;
            let (r, raw, key) = (r.clone(), raw.clone(), key.clone());
            async move {
                let _ = r.insert("after", n).await;
                let stored: Option<Vec<u8>> = raw.get(&key).await.unwrap();
                stored.is_some()
            }
        },
    )
    .await;
    assert!(!cache.l2_breaker_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_that_never_finishes_does_not_pin_its_key_by_default() {
    let server = redis();
    let cache = builder(&server, "hung").build().await.unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    assert_eq!(
        EntryOptions::new().get_loader_hard_timeout(),
        Some(layercache::DEFAULT_LOADER_HARD_TIMEOUT)
    );
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    // Ten keys, each with a load that never finishes...
    let mut hung = Vec::new();
    for k in 0..10 {
        let r = r.clone();
        hung.push(tokio::spawn(async move {
            r.get_or_load(&format!("k{k}"), |_| {
                std::future::pending::<Result<u64, std::io::Error>>()
            })
            .await
        }));
    }
    wait_until("the hung loads to start", Duration::from_secs(5), || {
        let cache = cache.clone();
        async move { cache.stats().loads >= 10 }
    })
    .await;
    // ...then 1,000 callers with a working loader. They join the hung loads.
    let loads = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for i in 0..1000 {
        let (r, loads) = (r.clone(), loads.clone());
        callers.push(tokio::spawn(async move {
            r.get_or_load(&format!("k{}", i % 10), move |_| async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(7)
            })
            .await
        }));
    }
    // Every call ends (the hard timeout cuts the hung loads): with the value, or with the
    // loader error of the load it joined.
    let mut errors = 0;
    for h in hung.into_iter().chain(callers) {
        let outcome = tokio::time::timeout(Duration::from_secs(60), h)
            .await
            .expect("a caller is still waiting 60 s later: the key is pinned")
            .unwrap();
        match outcome {
            Ok(v) => assert_eq!(*v, 7),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Loader, "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors >= 10, "the hung loads themselves fail");
    assert!(cache.stats().hard_timeouts >= 10, "{:?}", cache.stats());
    // The keys are free again: a working loader serves every one.
    for k in 0..10 {
        let v = r
            .get_or_load(&format!("k{k}"), |_| async { Ok::<_, std::io::Error>(8) })
            .await
            .unwrap();
        assert!(*v == 7 || *v == 8);
    }
    // And nothing piles up: the tasks are back to what they were before.
    wait_until(
        "the live tasks to return to the baseline",
        Duration::from_secs(10),
        || {
            let m = metrics.clone();
            async move { m.num_alive_tasks() <= baseline }
        },
    )
    .await;
}

mod deploy_a {
    //! The value types of one deployment.
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Fields {
        pub(crate) a: u64,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Order {
        pub(crate) x: u32,
        pub(crate) y: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Kind {
        One,
        Two(u8),
    }
}

mod deploy_b {
    //! The same names in a later deployment that forgot to bump `schema_version`.
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename = "Fields")]
    pub(crate) struct Fields {
        pub(crate) b: String,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) struct Order {
        pub(crate) y: u32,
        pub(crate) x: u32,
    }
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub(crate) enum Kind {
        One,
        Two(u8),
        Three,
    }
}

/// Instance `a` writes values of `A`; instance `b` reads the same region and schema version as
/// `B`, and the other way round: both read misses (counted as type mismatches), never each
/// other's bytes as a value, even though bincode would decode them.
async fn another_type_is_a_miss<A, B>(server: &RedisServer, region: &str, a_value: A, b_value: B)
where
    A: serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + PartialEq
        + std::fmt::Debug
        + 'static,
    B: serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + PartialEq
        + std::fmt::Debug
        + 'static,
{
    let a = builder(server, "deploy").build().await.unwrap();
    let b = builder(server, "deploy").build().await.unwrap();
    let ra = a.region::<str, A>(region).build().await.unwrap();
    let rb = b.region::<str, B>(region).build().await.unwrap();
    assert_ne!(ra.type_fingerprint(), rb.type_fingerprint(), "{region}");
    ra.insert("k", a_value).await.unwrap();
    let before = b
        .stats()
        .decode_errors_for(layercache::Corruption::TypeMismatch);
    assert_eq!(
        rb.get("k").await.unwrap(),
        None,
        "{region}: b read a's value"
    );
    assert_eq!(
        b.stats()
            .decode_errors_for(layercache::Corruption::TypeMismatch),
        before + 1,
        "{region}"
    );
    rb.insert("j", b_value).await.unwrap();
    assert_eq!(
        ra.get("j").await.unwrap(),
        None,
        "{region}: a read b's value"
    );
    // Control: the same type on another instance reads the value.
    let c = builder(server, "deploy").build().await.unwrap();
    let rc = c.region::<str, A>(region).build().await.unwrap();
    assert!(
        rc.get("k").await.unwrap().is_some(),
        "{region}: same type must hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_written_as_another_type_is_a_miss_on_every_instance() {
    let server = redis();
    another_type_is_a_miss(
        &server,
        "fields",
        deploy_a::Fields { a: 0 },
        deploy_b::Fields { b: String::new() },
    )
    .await;
    another_type_is_a_miss(
        &server,
        "order",
        deploy_a::Order { x: 1, y: 2 },
        deploy_b::Order { y: 1, x: 2 },
    )
    .await;
    another_type_is_a_miss(&server, "shape", 7u64, (true, 7u32)).await;
    another_type_is_a_miss(
        &server,
        "variant",
        deploy_a::Kind::Two(1),
        deploy_b::Kind::Two(1),
    )
    .await;
}

/// Times one read (`get_or_load` of a cold key) and one write (`insert`), returning both
/// durations and both results' errors (if any).
async fn read_and_write(
    r: &layercache::Region<str, u64>,
    key: &str,
) -> (
    Duration,
    Duration,
    Option<layercache::Error>,
    Option<layercache::Error>,
) {
    let start = std::time::Instant::now();
    let read = r
        .get_or_load(key, |_| async { Ok::<_, std::io::Error>(1) })
        .await;
    let read_took = start.elapsed();
    let start = std::time::Instant::now();
    let write = r.insert(key, 2).await;
    (read_took, start.elapsed(), read.err(), write.err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_known_to_be_down_costs_nothing_per_call() {
    let mut server = redis();
    // Quiet bus: its heartbeats would share the breaker with the calls measured here.
    let cache = builder(&server, "down")
        .l2_command_timeout(Duration::from_millis(500))
        .bus_heartbeat_interval(Duration::from_secs(10))
        .bus_heartbeat_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    server.kill();
    wait_until(
        "the client to see the connection go",
        Duration::from_secs(10),
        || {
            let cache = cache.clone();
            async move { !cache.l2_connected() }
        },
    )
    .await;
    let before = cache.stats();
    let mut worst = (Duration::ZERO, Duration::ZERO);
    for i in 0..20 {
        let (read, write, read_err, write_err) = read_and_write(&r, &format!("k{i}")).await;
        assert!(
            read_err.is_none() && write_err.is_none(),
            "Fallback: no error"
        );
        worst = (worst.0.max(read), worst.1.max(write));
    }
    let after = cache.stats();
    eprintln!(
        "redis killed (connection refused): worst read {:?}, worst write {:?}",
        worst.0, worst.1
    );
    // Every call skipped Redis without sending anything, and none counted as a breaker
    // failure: the breaker is for a Redis that is connected but silent.
    assert!(
        after.l2_disconnected_skips >= before.l2_disconnected_skips + 40,
        "{after:?}"
    );
    assert_eq!(
        after.l2_timeouts, before.l2_timeouts,
        "no call waited for a timeout"
    );
    assert_eq!(after.breaker_opens, before.breaker_opens);
    // Back up: the next calls reach Redis again.
    server.restart().unwrap();
    wait_until("the client to reconnect", Duration::from_secs(10), || {
        let cache = cache.clone();
        async move { cache.l2_connected() }
    })
    .await;
    let other = builder(&server, "down").build().await.unwrap();
    let r2 = other.region::<str, u64>("r").build().await.unwrap();
    wait_until(
        "a write to reach redis again",
        Duration::from_secs(10),
        || {
            let (r, r2) = (r.clone(), r2.clone());
            async move {
                let _ = r.insert("back", 9).await;
                r2.get("back").await.ok().flatten().as_deref() == Some(&9)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_costs_one_full_timeout_then_short_ones_then_nothing() {
    let server = redis();
    let cache = builder(&server, "silent")
        .l2_error_policy(layercache::L2ErrorPolicy::Propagate)
        .l2_command_timeout(Duration::from_millis(500))
        .l2_suspect_timeout(Duration::from_millis(100))
        .l2_breaker_threshold(5)
        .l2_breaker_cooldown(Duration::from_millis(300))
        .bus_heartbeat_interval(Duration::from_secs(10))
        .bus_heartbeat_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let pid = server.pid().unwrap();
    signal(pid, "STOP");
    let timed_out_after = |e: &Option<layercache::Error>| {
        let e = e.as_ref().expect("Propagate: the failure is returned");
        assert!(e.is_timeout(), "{e}");
        e.context().to_owned()
    };
    // Before the breaker opens: the first call pays the full timeout, the next ones the short
    // (a write is one call: the write script and its announcement pipelined).
    let (read, _, read_err, write_err) = read_and_write(&r, "a").await;
    eprintln!("silent redis, first call: read {read:?}");
    assert!(timed_out_after(&read_err).contains("500ms"), "{read_err:?}");
    assert!(
        timed_out_after(&write_err).contains("100ms"),
        "{write_err:?}"
    );
    let (read, write, read_err, write_err) = read_and_write(&r, "b").await;
    eprintln!("silent redis, suspect: read {read:?}, write {write:?}");
    assert!(timed_out_after(&read_err).contains("100ms"), "{read_err:?}");
    // The write is the fourth call: it times out short (or finds the breaker open, if a
    // background call — a heartbeat, a generation read, a repair — failed too); a fifth call
    // opens the breaker.
    let write_err = write_err.expect("Propagate: the failure is returned");
    assert!(
        write_err.is_skipped() || write_err.context().contains("100ms"),
        "{write_err}"
    );
    if !cache.l2_breaker_open() {
        let fifth = r
            .get("b2")
            .await
            .expect_err("Propagate: the failure is returned");
        assert!(fifth.context().contains("100ms"), "{fifth}");
    }
    assert!(cache.l2_breaker_open(), "five failures open it");
    // Open: nothing is sent.
    let rejected = cache.stats().breaker_rejections;
    let (read, write, read_err, write_err) = read_and_write(&r, "c").await;
    eprintln!("silent redis, breaker open: read {read:?}, write {write:?}");
    let (read_err, write_err) = (read_err.unwrap(), write_err.unwrap());
    assert!(read_err.is_skipped() && write_err.is_skipped());
    assert_eq!(
        (read_err.kind(), write_err.kind()),
        (ErrorKind::Unavailable, ErrorKind::Unavailable)
    );
    assert!(cache.stats().breaker_rejections >= rejected + 2);
    // Probing (still silent): the probe pays the short timeout and the breaker reopens.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (read, _, read_err, _) = read_and_write(&r, "d").await;
    eprintln!("silent redis, probe: read {read:?}");
    assert!(timed_out_after(&read_err).contains("100ms"), "{read_err:?}");
    assert!(cache.l2_breaker_open());
    // Recovered: a probe succeeds, the breaker closes, the full timeout is back.
    signal(pid, "CONT");
    wait_until("the breaker to close", Duration::from_secs(10), || {
        let (r, cache) = (r.clone(), cache.clone());
        async move {
            let _ = r.get("probe").await;
            !cache.l2_breaker_open()
        }
    })
    .await;
    let (read, write, read_err, write_err) = read_and_write(&r, "e").await;
    eprintln!("recovered: read {read:?}, write {write:?}");
    assert!(
        read_err.is_none() && write_err.is_none(),
        "{read_err:?} {write_err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_task_the_cache_started() {
    let server = redis();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let cache = builder(&server, "bye")
        .bus_heartbeat_interval(Duration::from_millis(50))
        .bus_heartbeat_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    r.insert("k", 1).await.unwrap();
    let v = r
        .get_or_load("j", |_| async { Ok::<_, std::io::Error>(2) })
        .await
        .unwrap();
    assert_eq!(*v, 2);
    assert!(metrics.num_alive_tasks() > baseline, "the bus runs tasks");
    cache.shutdown().await;
    // Every task has returned when shutdown() does; tokio's count of alive tasks drops a moment
    // later (a finished task is released by its worker — or, for the bus thread's join, by the
    // blocking pool — after its JoinHandle is woken), so the count is awaited, briefly.
    let settled = async {
        while metrics.num_alive_tasks() != baseline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(2), settled)
            .await
            .is_ok(),
        "tasks still running after shutdown() returned: {} alive, {baseline} before",
        metrics.num_alive_tasks()
    );
    // Afterwards the cache works as while Redis is down: L1 and the loader, no waiting.
    assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&1));
    let v = r
        .get_or_load("fresh", |_| async { Ok::<_, std::io::Error>(3) })
        .await
        .unwrap();
    assert_eq!(*v, 3);
    assert!(cache.stats().l2_disconnected_skips >= 1);
}
