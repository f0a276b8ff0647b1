//! The service workload: two service instances on one Redis, readers and writers on Zipf-hot
//! keys, a source of truth with versions, and stale reads counted. Compares, in one run and
//! interleaved, layercache with `insert` writes, with `insert_versioned` writes (the source
//! version passed along), with `invalidate` writes, and hand-written cache-aside on fred
//! (`GET`, then `SET … EX`).
//!
//! ```text
//! cargo bench -p layercache-benches --bench loadgen                 # 3 rounds of 3 s per variant
//! cargo bench -p layercache-benches --bench loadgen -- --secs 10 --rounds 5
//! cargo bench -p layercache-benches --bench loadgen -- --no-bus-thread   # listener on the runtime
//! cargo bench -p layercache-benches --bench loadgen -- --cooldown-ms 0    # no L1 write cooldown
//! cargo bench -p layercache-benches --bench loadgen -- --read-coalescing 0   # a GET per read
//! cargo bench -p layercache-benches --bench loadgen -- --variants versioned,invalidate
//! cargo bench -p layercache-benches --bench loadgen -- --variants invalidate --lock
//! ```
//!
//! `--cluster` runs everything on a local six-node Redis Cluster instead of one server (CPU
//! per operation then counts all six redis-server processes).
//!
//! `--charts DIR` writes `loadgen-latency.svg` (read-latency CDF per system) and
//! `loadgen-throughput-cpu.svg` (throughput beside CPU per operation) into `DIR`, relative to
//! the workspace root (`--charts docs/img` regenerates the ones docs/BENCHMARKS.md shows).
//!
//! `--no-doorkeeper` turns off the L1 doorkeeper (`LayerCacheBuilder::l1_doorkeeper`);
//! `--bus-buffer N` sets `LayerCacheBuilder::bus_buffer`; `--tracking` turns on
//! `LayerCacheBuilder::server_assisted_tracking`.
//!
//! `LOADGEN_STATS=1` makes a layercache child print each instance's `Stats` when the measured
//! window begins (`STATS0 …`) and as it ends (`STATS …`): their difference is the window's own
//! (L1 hits, Redis reads, why values were kept out of L1).
//!
//! Other flags: `--keys`, `--tasks`, `--write-pct`, `--l1` (entries), `--value-bytes`,
//! `--bus-thread`. Cache-aside, the baseline, always runs.
//!
//! Each slice (one variant for `--secs`) runs in a child process of its own (so its peak RSS
//! and CPU are its own), after a warm-up of half its length, against a redis-server started by
//! the test kit and emptied between slices. Variants alternate within each round. Before the
//! warm-up every key is read once through the system's own read path, so Redis holds the whole
//! key space, as in a service that has been running a while (`--cold` skips it: then the
//! slice is a cold start, where most reads of Redis are loads of keys never seen before —
//! how this harness ran before 2026-12-03).
//!
//! - A **write** commits a new version of the key to the source (an atomic counter per key),
//!   then `insert`s the value carrying it (or `invalidate`s the key; cache-aside `SET`s it).
//! - A **read** notes the version committed before it began, then reads through the cache
//!   (`get_or_load`: the loader reads the source); it is **stale** if it returns an older
//!   version.
//! - For stale reads, how long after the newest commit they began (p50/p99, per slice): the
//!   stale window as readers meet it.
//! - After the measured period writes stop; after a quiet second every key written is read
//!   again on both instances (`get`, no load): a value older than the source is a key **still
//!   stale after writes stop**.
//! - CPU per operation: the child's user+system time (`/proc/self/stat`) and redis-server's
//!   (`/proc/PID/stat`) over the measured period, divided by the operations; peak RSS is the
//!   child's `VmHWM`.

#![expect(clippy::print_stdout, reason = "a bench binary reports on stdout")]
#![expect(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a bench binary: failures abort the run, and its arithmetic is on reports"
)]

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface};
use fred::types::Expiration;
use layercache::{LayerCache, Region};
use layercache_testkit::{RedisCluster, RedisServer};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[path = "loadgen/chart.rs"]
mod chart;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Insert,
    Versioned,
    Invalidate,
    Aside,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Insert,
        Variant::Versioned,
        Variant::Invalidate,
        Variant::Aside,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Insert => "layercache-insert",
            Self::Versioned => "layercache-versioned",
            Self::Invalidate => "layercache-invalidate",
            Self::Aside => "cache-aside",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }
}

#[derive(Debug, Clone)]
struct Args {
    secs: f64,
    rounds: usize,
    keys: usize,
    tasks: usize,
    write_pct: f64,
    l1: u64,
    value_bytes: usize,
    child: Option<Variant>,
    /// The URL the child connects to (given by the parent).
    url: Option<String>,
    /// Run on a local Redis Cluster of six nodes instead of one server (`--cluster`).
    cluster: bool,
    /// `LayerCacheBuilder::bus_thread` for the layercache variants (`--bus-thread` /
    /// `--no-bus-thread`; the library's default when absent).
    bus_thread: Option<bool>,
    /// `LayerCacheBuilder::l1_write_cooldown` in ms (the library's default when absent).
    cooldown_ms: Option<u64>,
    /// `LayerCacheBuilder::l2_read_coalescing` (the library's default when absent).
    read_coalescing: Option<usize>,
    /// `LayerCacheBuilder::bus_buffer` (`--bus-buffer N`; the library's default when absent).
    bus_buffer: Option<usize>,
    /// Loads under the distributed load lock (`--lock`).
    lock: bool,
    /// The variants to run (`--variants a,b`; cache-aside, the baseline, always runs).
    variants: Vec<Variant>,
    /// Where to write the SVG charts (`--charts DIR`; relative to the workspace root).
    charts: Option<String>,
    /// Start with Redis empty (`--cold`) instead of every key read through once.
    cold: bool,
    /// `LayerCacheBuilder::l1_doorkeeper(false)` (`--no-doorkeeper`).
    no_doorkeeper: bool,
    /// `LayerCacheBuilder::server_assisted_tracking(true)` (`--tracking`).
    tracking: bool,
}

fn args() -> Args {
    let mut a = Args {
        secs: 3.0,
        rounds: 3,
        keys: 100_000,
        tasks: 64,
        write_pct: 5.0,
        l1: 10_000,
        value_bytes: 1024,
        child: None,
        url: None,
        cluster: false,
        bus_thread: None,
        cooldown_ms: None,
        read_coalescing: None,
        bus_buffer: None,
        lock: false,
        variants: Variant::ALL.to_vec(),
        charts: None,
        cold: false,
        no_doorkeeper: false,
        tracking: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--secs" => a.secs = v.parse().unwrap(),
            "--rounds" => a.rounds = v.parse().unwrap(),
            "--keys" => a.keys = v.parse().unwrap(),
            "--tasks" => a.tasks = v.parse().unwrap(),
            "--write-pct" => a.write_pct = v.parse().unwrap(),
            "--l1" => a.l1 = v.parse().unwrap(),
            "--value-bytes" => a.value_bytes = v.parse().unwrap(),
            "--child" => a.child = Some(Variant::parse(&v).unwrap()),
            "--url" => a.url = Some(v.clone()),
            "--cooldown-ms" => a.cooldown_ms = Some(v.parse().unwrap()),
            "--read-coalescing" => a.read_coalescing = Some(v.parse().unwrap()),
            "--bus-buffer" => a.bus_buffer = Some(v.parse().unwrap()),
            "--charts" => a.charts = Some(v.clone()),
            "--cluster" => {
                a.cluster = true;
                i += 1;
                continue;
            }
            "--lock" => {
                a.lock = true;
                i += 1;
                continue;
            }
            "--cold" => {
                a.cold = true;
                i += 1;
                continue;
            }
            "--no-doorkeeper" => {
                a.no_doorkeeper = true;
                i += 1;
                continue;
            }
            "--tracking" => {
                a.tracking = true;
                i += 1;
                continue;
            }
            "--variants" => {
                a.variants = Variant::ALL
                    .into_iter()
                    .filter(|x| x == &Variant::Aside || v.split(',').any(|n| x.name().ends_with(n)))
                    .collect();
            }
            "--bus-thread" => {
                a.bus_thread = Some(true);
                i += 1;
                continue;
            }
            "--no-bus-thread" => {
                a.bus_thread = Some(false);
                i += 1;
                continue;
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored too.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// The cached value: the source version it carries, and a body of `value_bytes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Val {
    version: u64,
    body: Vec<u8>,
}

/// The source of truth: a version per key, and a count of loads.
struct Source {
    versions: Vec<AtomicU64>,
    /// The instance that wrote each key last.
    writer: Vec<AtomicU64>,
    written: Vec<AtomicBool>,
    /// When each key's newest version was committed (ns since `epoch`).
    committed_at: Vec<AtomicU64>,
    epoch: Instant,
    loads: AtomicU64,
    body: Vec<u8>,
}

impl Source {
    fn new(keys: usize, value_bytes: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(7);
        Self {
            versions: (0..keys).map(|_| AtomicU64::new(1)).collect(),
            writer: (0..keys).map(|_| AtomicU64::new(u64::MAX)).collect(),
            written: (0..keys).map(|_| AtomicBool::new(false)).collect(),
            committed_at: (0..keys).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            loads: AtomicU64::new(0),
            body: (0..value_bytes).map(|_| rng.gen()).collect(),
        }
    }

    fn load(&self, k: usize) -> Val {
        self.loads.fetch_add(1, Ordering::Relaxed);
        Val {
            version: self.versions[k].load(Ordering::SeqCst),
            body: self.body.clone(),
        }
    }

    /// Commits a new version (written by instance `by`); returns the value carrying it.
    fn commit(&self, k: usize, by: u64) -> Val {
        self.written[k].store(true, Ordering::Relaxed);
        self.writer[k].store(by, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.committed_at[k].store(now, Ordering::SeqCst);
        Val {
            version: self.versions[k].fetch_add(1, Ordering::SeqCst) + 1,
            body: self.body.clone(),
        }
    }
}

/// Zipf(0.99) over `n` keys: a cumulative table searched with a uniform draw.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for i in 0..n {
            sum += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Self(cdf)
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.gen();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

/// One service instance as the workload sees it.
#[derive(Clone)]
enum Instance {
    Layer(Region<str, Val>, Variant),
    Aside(Client),
}

impl Instance {
    async fn read(&self, key: &str, k: usize, source: &Arc<Source>) -> u64 {
        match self {
            Self::Layer(r, _) => {
                let s = source.clone();
                r.get_or_load(
                    key,
                    move |_| async move { Ok::<_, std::io::Error>(s.load(k)) },
                )
                .await
                .unwrap()
                .version
            }
            Self::Aside(c) => {
                let got: Option<Vec<u8>> = c.get(key).await.unwrap();
                if let Some(bytes) = got {
                    return decode(&bytes).version;
                }
                let v = source.load(k);
                let _: () = c
                    .set(key, encode(&v), Some(Expiration::EX(300)), None, false)
                    .await
                    .unwrap();
                v.version
            }
        }
    }

    async fn write(&self, key: &str, k: usize, source: &Source, by: u64) {
        let v = source.commit(k, by);
        match self {
            Self::Layer(r, Variant::Invalidate) => r.invalidate(key).await.unwrap(),
            Self::Layer(r, Variant::Versioned) => {
                let version = v.version;
                r.insert_versioned(key, v, version).await.unwrap();
            }
            Self::Layer(r, _) => r.insert(key, v).await.unwrap(),
            Self::Aside(c) => {
                let _: () = c
                    .set(key, encode(&v), Some(Expiration::EX(300)), None, false)
                    .await
                    .unwrap();
            }
        }
    }

    /// What a read finds without loading: `None` when nothing is cached.
    async fn peek(&self, key: &str) -> Option<u64> {
        match self {
            Self::Layer(r, _) => r.get(key).await.unwrap().map(|v| v.version),
            Self::Aside(c) => {
                let got: Option<Vec<u8>> = c.get(key).await.unwrap();
                got.map(|b| decode(&b).version)
            }
        }
    }
}

fn encode(v: &Val) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
}

fn decode(b: &[u8]) -> Val {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .unwrap()
        .0
}

/// User + system CPU time of a process, from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One slice's results, as the child prints them.
#[derive(Debug, Clone, Default)]
struct Slice {
    ops: f64,
    reads: f64,
    stale: f64,
    /// Stale reads on the instance that wrote the key last.
    stale_own: f64,
    still_stale: f64,
    loads: f64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
    /// How long after the newest commit stale reads began (median, 99th percentile).
    age_p50_us: f64,
    age_p99_us: f64,
    cpu_us: f64,
    redis_cpu_us: f64,
    rss_mib: f64,
    /// Read latency (µs) at each of `chart::cdf_points()` (its own `CDF` line).
    cdf: Vec<f64>,
}

impl Slice {
    fn line(&self) -> String {
        format!(
            "RESULT {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            self.ops,
            self.reads,
            self.stale,
            self.stale_own,
            self.still_stale,
            self.loads,
            self.secs,
            self.p50_us,
            self.p99_us,
            self.age_p50_us,
            self.age_p99_us,
            self.cpu_us,
            self.redis_cpu_us,
            self.rss_mib
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<f64> = line
            .strip_prefix("RESULT ")?
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        (f.len() == 14).then(|| Self {
            ops: f[0],
            reads: f[1],
            stale: f[2],
            stale_own: f[3],
            still_stale: f[4],
            loads: f[5],
            secs: f[6],
            p50_us: f[7],
            p99_us: f[8],
            age_p50_us: f[9],
            age_p99_us: f[10],
            cpu_us: f[11],
            redis_cpu_us: f[12],
            rss_mib: f[13],
            cdf: Vec::new(),
        })
    }
}

async fn instances(a: &Args, variant: Variant, url: &str) -> (Vec<Instance>, Vec<LayerCache>) {
    let mut out = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..2 {
        match variant {
            Variant::Aside => {
                let c = Builder::from_config(Config::from_url(url).unwrap())
                    .build()
                    .unwrap();
                c.init().await.unwrap();
                out.push(Instance::Aside(c));
            }
            _ => {
                let mut b = LayerCache::builder("lg")
                    .redis_url(url)
                    .max_capacity(a.l1)
                    .l2_command_timeout(Duration::from_secs(2));
                if let Some(on) = a.bus_thread {
                    b = b.bus_thread(on);
                }
                if let Some(ms) = a.cooldown_ms {
                    b = b.l1_write_cooldown(Duration::from_millis(ms));
                }
                if let Some(n) = a.read_coalescing {
                    b = b.l2_read_coalescing(n);
                }
                if a.no_doorkeeper {
                    b = b.l1_doorkeeper(false);
                }
                if let Some(n) = a.bus_buffer {
                    b = b.bus_buffer(n);
                }
                if a.tracking {
                    b = b.server_assisted_tracking(true);
                }
                let cache = b.build().await.unwrap();
                let r = cache
                    .region::<str, Val>("v")
                    .entry_options(layercache::EntryOptions::new().distributed_lock(a.lock))
                    .build()
                    .await
                    .unwrap();
                out.push(Instance::Layer(r, variant));
                caches.push(cache);
            }
        }
    }
    (out, caches)
}

/// Reads every key once through the system's own read path (64 tasks, alternating
/// instances), so Redis holds the whole key space: the state of a service that has been
/// running a while, rather than its first seconds, when nearly every read of a new key is a
/// load.
async fn prefill(inst: &[Instance], source: &Arc<Source>, keys: usize) {
    let mut fills = Vec::new();
    for t in 0..64 {
        let (inst, source) = (inst.to_vec(), source.clone());
        fills.push(tokio::spawn(async move {
            for k in (t..keys).step_by(64) {
                inst[k % inst.len()]
                    .read(&format!("k{k}"), k, &source)
                    .await;
            }
        }));
    }
    for f in fills {
        f.await.unwrap();
    }
}

async fn child(a: Args, variant: Variant) {
    let url = a.url.clone().unwrap();
    let redis_pids = std::env::var("LOADGEN_REDIS_PID").unwrap_or_default();
    let redis_cpu = || -> Duration { redis_pids.split(',').map(cpu_time).sum() };
    let source = Arc::new(Source::new(a.keys, a.value_bytes));
    let zipf = Arc::new(Zipf::new(a.keys, 0.99));
    let (inst, caches) = instances(&a, variant, &url).await;
    if !a.cold {
        prefill(&inst, &source, a.keys).await;
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..a.tasks {
        let me = (t % inst.len()) as u64;
        let (inst, source, zipf) = (inst[t % inst.len()].clone(), source.clone(), zipf.clone());
        let (measuring, stop) = (measuring.clone(), stop.clone());
        let write_p = a.write_pct / 100.0;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(t as u64 + 1);
            let (mut ops, mut reads, mut stale, mut own) = (0u64, 0u64, 0u64, 0u64);
            let mut lat: Vec<u32> = Vec::new();
            let mut ages: Vec<u32> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let k = zipf.sample(&mut rng);
                let key = format!("k{k}");
                let counted = measuring.load(Ordering::Relaxed);
                if rng.gen::<f64>() < write_p {
                    inst.write(&key, k, &source, me).await;
                } else {
                    let before = source.versions[k].load(Ordering::SeqCst);
                    let committed = source.committed_at[k].load(Ordering::SeqCst);
                    let start = Instant::now();
                    let started = source.epoch.elapsed().as_nanos() as u64;
                    let got = inst.read(&key, k, &source).await;
                    if counted {
                        lat.push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        reads += 1;
                        if got < before {
                            stale += 1;
                            if source.writer[k].load(Ordering::Relaxed) == me {
                                own += 1;
                            }
                            // How long after the newest commit the stale read began (the
                            // commit read may be a newer one: an underestimate then).
                            ages.push((started.saturating_sub(committed) / 1000) as u32);
                        }
                    }
                }
                if counted {
                    ops += 1;
                }
            }
            (ops, reads, stale, own, lat, ages)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.secs / 2.0)).await;
    let loads0 = source.loads.load(Ordering::Relaxed);
    let cpu0 = cpu_time("self");
    let rcpu0 = redis_cpu();
    if std::env::var_os("LOADGEN_STATS").is_some() {
        for c in &caches {
            println!("STATS0 {}", c.stats());
        }
    }
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let window_stats: Vec<layercache::Stats> = caches.iter().map(LayerCache::stats).collect();
    let cpu = cpu_time("self").saturating_sub(cpu0);
    let rcpu = redis_cpu().saturating_sub(rcpu0);
    let loads = source.loads.load(Ordering::Relaxed) - loads0;
    stop.store(true, Ordering::Relaxed);
    let (mut ops, mut reads, mut stale, mut own) = (0u64, 0u64, 0u64, 0u64);
    let (mut lat, mut ages) = (Vec::new(), Vec::new());
    for t in tasks {
        let (o, r, s, w, l, g) = t.await.unwrap();
        ops += o;
        reads += r;
        stale += s;
        own += w;
        lat.extend(l);
        ages.extend(g);
    }
    lat.sort_unstable();
    ages.sort_unstable();
    let pct = |v: &[u32], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    // Writes have stopped: after a quiet second, a key any instance still serves older than
    // the source is stale for good (until its TTL).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut still = 0u64;
    for k in 0..a.keys {
        if !source.written[k].load(Ordering::Relaxed) {
            continue;
        }
        let key = format!("k{k}");
        let now = source.versions[k].load(Ordering::SeqCst);
        for (n, i) in inst.iter().enumerate() {
            if let Some(v) = i.peek(&key).await.filter(|v| *v < now) {
                still += 1;
                // What the parent prints, so a still-stale key can be looked into.
                let since = source.epoch.elapsed().as_nanos() as u64
                    - source.committed_at[k].load(Ordering::SeqCst);
                println!(
                    "STILL {key} on instance {n}: serves v{v}, source v{now}, written last by {} {} ms ago",
                    source.writer[k].load(Ordering::Relaxed),
                    since / 1_000_000
                );
                for (m, j) in inst.iter().enumerate() {
                    if let Instance::Layer(r, _) = j {
                        let l1 = j.peek(&key).await;
                        let x = r.explain(key.as_str()).await;
                        println!("STILL   instance {m}: serves {l1:?}: {x:?}");
                    }
                }
                // Redis, read by an instance with an empty L1.
                let (cold, cold_caches) = instances(&a, variant, &url).await;
                println!("STILL   Redis holds {:?}", cold[0].peek(&key).await);
                for c in cold_caches {
                    c.shutdown().await;
                }
                break;
            }
        }
    }
    let slice = Slice {
        ops: ops as f64,
        reads: reads as f64,
        stale: stale as f64,
        stale_own: own as f64,
        still_stale: still as f64,
        loads: loads as f64,
        secs,
        p50_us: f64::from(pct(&lat, 0.50)),
        p99_us: f64::from(pct(&lat, 0.99)),
        age_p50_us: f64::from(pct(&ages, 0.50)),
        age_p99_us: f64::from(pct(&ages, 0.99)),
        cpu_us: cpu.as_secs_f64() * 1e6,
        redis_cpu_us: rcpu.as_secs_f64() * 1e6,
        rss_mib: peak_rss_kib() as f64 / 1024.0,
        cdf: chart::cdf_points()
            .into_iter()
            .map(|p| f64::from(pct(&lat, p)))
            .collect(),
    };
    if std::env::var_os("LOADGEN_STATS").is_some() {
        for stats in &window_stats {
            println!("STATS {stats}");
        }
    }
    for c in caches {
        c.shutdown().await;
    }
    println!("{}", slice.line());
    let cdf: Vec<String> = slice.cdf.iter().map(ToString::to_string).collect();
    println!("CDF {}", cdf.join(" "));
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// What the run is against: one server, or a cluster.
enum Target {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Target {
    fn url(&self) -> String {
        match self {
            Self::Server(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    /// The redis-server processes, comma-separated (their CPU time is counted).
    fn pids(&self) -> String {
        let pids: Vec<String> = match self {
            Self::Server(s) => vec![s.pid().unwrap().to_string()],
            Self::Cluster(c) => (0..6)
                .filter_map(|i| c.node(i).pid())
                .map(|p| p.to_string())
                .collect(),
        };
        pids.join(",")
    }

    fn flush(&self) {
        match self {
            Self::Server(s) => {
                s.command(&["FLUSHALL"]).unwrap();
            }
            Self::Cluster(c) => {
                for i in c.primaries() {
                    c.command(i, &["FLUSHALL"]).unwrap();
                }
            }
        }
    }
}

async fn parent(a: Args) {
    let target = if a.cluster {
        Target::Cluster(RedisCluster::start().unwrap_or_else(|e| panic!("{e}")))
    } else {
        Target::Server(RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
    };
    let exe = std::env::current_exe().unwrap();
    let mut results: Vec<(Variant, Vec<Slice>)> =
        a.variants.iter().map(|v| (*v, Vec::new())).collect();
    println!(
        "loadgen: {} keys (Zipf 0.99), {} B values, {} % writes, {} tasks over 2 instances, L1 {} entries, {} s per slice (+{} s warm-up{}), {} rounds{}",
        a.keys, a.value_bytes, a.write_pct, a.tasks, a.l1, a.secs, a.secs / 2.0,
        if a.cold { ", Redis empty at the start" } else { ", every key read once before" },
        a.rounds,
        match a.bus_thread {
            Some(true) => ", bus listener on its own thread",
            Some(false) => ", bus listener on the service's runtime",
            None => "",
        }
    );
    if let Some(ms) = a.cooldown_ms {
        println!("l1_write_cooldown: {ms} ms");
    }
    if let Some(n) = a.read_coalescing {
        println!("l2_read_coalescing: {n}");
    }
    if let Some(n) = a.bus_buffer {
        println!("bus_buffer: {n}");
    }
    if a.tracking {
        println!("server-assisted tracking");
    }
    if a.lock {
        println!("loads under the distributed load lock");
    }
    for round in 0..a.rounds {
        for (variant, slices) in &mut results {
            target.flush();
            let out = Command::new(&exe)
                .args([
                    "--child",
                    variant.name(),
                    "--url",
                    &target.url(),
                    "--secs",
                    &a.secs.to_string(),
                    "--keys",
                    &a.keys.to_string(),
                    "--tasks",
                    &a.tasks.to_string(),
                    "--write-pct",
                    &a.write_pct.to_string(),
                    "--l1",
                    &a.l1.to_string(),
                    "--value-bytes",
                    &a.value_bytes.to_string(),
                ])
                .args(a.bus_thread.map(|on| {
                    if on {
                        "--bus-thread"
                    } else {
                        "--no-bus-thread"
                    }
                }))
                .args(
                    a.cooldown_ms
                        .map(|ms| ["--cooldown-ms".to_owned(), ms.to_string()])
                        .into_iter()
                        .flatten(),
                )
                .args(
                    a.read_coalescing
                        .map(|n| ["--read-coalescing".to_owned(), n.to_string()])
                        .into_iter()
                        .flatten(),
                )
                .args(
                    a.bus_buffer
                        .map(|n| ["--bus-buffer".to_owned(), n.to_string()])
                        .into_iter()
                        .flatten(),
                )
                .args(a.lock.then_some("--lock"))
                .args(a.cold.then_some("--cold"))
                .args(a.no_doorkeeper.then_some("--no-doorkeeper"))
                .args(a.tracking.then_some("--tracking"))
                .env("LOADGEN_REDIS_PID", target.pids())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(mut slice) = stdout.lines().find_map(Slice::parse) else {
                panic!(
                    "{} failed: {}\n{}",
                    variant.name(),
                    stdout,
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            println!(
                "round {round} {:<22} {:>9.0} ops/s  stale {:.3} % (on the writer's instance {:.3} %, {:.0}/{:.0} µs after the commit at p50/p99)  still stale {}",
                variant.name(),
                slice.ops / slice.secs,
                100.0 * slice.stale / slice.reads.max(1.0),
                100.0 * slice.stale_own / slice.reads.max(1.0),
                slice.age_p50_us,
                slice.age_p99_us,
                slice.still_stale
            );
            slice.cdf = stdout
                .lines()
                .find_map(|l| l.strip_prefix("CDF "))
                .map(|l| {
                    l.split_whitespace()
                        .map(|x| x.parse().unwrap_or(0.0))
                        .collect()
                })
                .unwrap_or_default();
            for l in stdout.lines().filter(|l| l.starts_with("STILL")) {
                println!("  {l}");
            }
            slices.push(slice);
        }
    }
    let base = &results[results.len() - 1].1;
    let base_ops = median(base.iter().map(|s| s.ops / s.secs).collect());
    let base_cpu = median(
        base.iter()
            .map(|s| (s.cpu_us + s.redis_cpu_us) / s.ops)
            .collect(),
    );
    let base_stale = median(
        base.iter()
            .map(|s| 100.0 * s.stale / s.reads.max(1.0))
            .collect(),
    );
    println!();
    println!("| variant | ops/s | × aside | read p50 µs | read p99 µs | stale reads % | × aside | still stale | loads/s | CPU µs/op (proc + redis) | × aside | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (variant, slices) in &results {
        let ops = median(slices.iter().map(|s| s.ops / s.secs).collect());
        let stale = median(
            slices
                .iter()
                .map(|s| 100.0 * s.stale / s.reads.max(1.0))
                .collect(),
        );
        let cpu_p = median(slices.iter().map(|s| s.cpu_us / s.ops).collect());
        let cpu_r = median(slices.iter().map(|s| s.redis_cpu_us / s.ops).collect());
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.3} | {:.2} | {} | {:.0} | {:.1} + {:.1} | {:.2} | {:.0} |",
            variant.name(),
            ops,
            ops / base_ops,
            median(slices.iter().map(|s| s.p50_us).collect()),
            median(slices.iter().map(|s| s.p99_us).collect()),
            stale,
            if base_stale > 0.0 { stale / base_stale } else { f64::NAN },
            slices.iter().map(|s| s.still_stale as u64).max().unwrap_or(0),
            median(slices.iter().map(|s| s.loads / s.secs).collect()),
            cpu_p,
            cpu_r,
            (cpu_p + cpu_r) / base_cpu,
            median(slices.iter().map(|s| s.rss_mib).collect()),
        );
    }
    println!("(medians over rounds; \"still stale\" is the worst round)");
    if let Some(dir) = &a.charts {
        write_charts(&a, dir, &results);
    }
}

/// Writes the run's SVG charts into `dir` (relative to the workspace root): the read-latency
/// CDF of each system (medians over rounds, point by point), and throughput beside CPU per
/// operation.
fn write_charts(a: &Args, dir: &str, results: &[(Variant, Vec<Slice>)]) {
    let series: Vec<chart::Series> = results
        .iter()
        .map(|(variant, slices)| chart::Series {
            name: variant.name().to_owned(),
            cdf: (0..chart::cdf_points().len())
                .map(|i| {
                    median(
                        slices
                            .iter()
                            .filter_map(|s| s.cdf.get(i).copied())
                            .collect(),
                    )
                })
                .collect(),
            ops: median(slices.iter().map(|s| s.ops / s.secs).collect()),
            cpu: (
                median(slices.iter().map(|s| s.cpu_us / s.ops).collect()),
                median(slices.iter().map(|s| s.redis_cpu_us / s.ops).collect()),
            ),
        })
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let workload = format!(
        "{} tasks on 2 instances, {} % writes, Zipf 0.99 over {} keys, {} B values, L1 {} entries, medians of {} rounds{}{}",
        a.tasks,
        a.write_pct,
        a.keys,
        a.value_bytes,
        a.l1,
        a.rounds,
        if a.cold { ", cold start" } else { "" },
        if a.cluster { ", Redis Cluster" } else { "" }
    );
    for (file, svg) in [
        (
            "loadgen-latency.svg",
            chart::latency_cdf(&series, &workload),
        ),
        (
            "loadgen-throughput-cpu.svg",
            chart::throughput_and_cpu(&series, &workload),
        ),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, svg).unwrap();
        println!("wrote {}", path.display());
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match a.child {
        Some(v) => rt.block_on(child(a.clone(), v)),
        None => rt.block_on(parent(a)),
    }
}
