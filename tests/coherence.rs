//! Coherent L1s across instances: the invalidation bus against a real redis-server.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;
#[macro_use]
mod topologies;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use fred::{
    prelude::{KeysInterface, LuaInterface},
    types::{Expiration, Value},
};
use layercache::{FlushReason, InstanceId, LayerCache, Region};
use support::{caught_up, cluster, cmd, fast_bus, instance, redis, region, wait_until, Shared};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

// One suite, two topologies: each scenario below runs on a redis-server and on a Redis Cluster.
// Single-server only: a restart of the one server (a cluster's node restarts and failovers are
// tests/failover.rs), and the randomized checkers, listed per tier at their definitions.
on_redis_and_cluster!(
    writes_and_invalidations_reach_every_instance,
    a_remote_write_during_a_slow_load_never_leaves_the_old_value,
    a_read_after_a_remote_region_invalidation_does_not_join_an_older_load,
    client_kill_pubsub_resubscribes_flushes_and_recovers,
    a_flood_beyond_the_buffer_is_detected_flushed_and_survived,
    garbage_on_the_channel_is_counted_and_ignored,
    region_invalidate_all_is_one_command_and_reaches_every_instance,
    clear_removes_every_entry_on_every_instance,
    invalidate_tag_removes_10000_members_everywhere_in_bounded_batches,
    a_tag_invalidated_during_a_load_is_never_filled_afterwards,
    a_write_from_an_instance_behind_a_region_invalidation_lands_in_the_new_generation,
    a_load_fills_redis_when_what_it_saw_expired_meanwhile,
    a_load_slower_than_the_ttl_does_not_fill_redis,
    a_load_that_began_before_a_remote_delete_never_refills_redis,
    a_load_that_began_before_a_remote_tag_invalidation_never_refills_redis,
    a_load_that_began_before_a_remote_clear_never_refills_redis,
    after_flushall_a_running_and_a_new_instance_share_one_generation,
    a_key_another_instance_wrote_is_read_from_redis_during_the_cooldown,
    a_plain_insert_runs_no_script_and_a_lost_generation_does_not_lose_it,
);

/// A completed write: (writer instance, its published sequence number after the write, version).
type Write = (usize, u64, u64);

/// A load held open by the test: its loader has read the source (`value`) and waits.
struct SlowLoad {
    task: tokio::task::JoinHandle<layercache::Result<Arc<u64>>>,
    release: Arc<Notify>,
}

impl SlowLoad {
    /// Starts `get_or_load_tagged(key)` on `r` and returns once its loader runs.
    async fn start(
        r: &Region<str, u64>,
        key: &'static str,
        tags: &'static [&'static str],
        value: u64,
    ) -> Self {
        Self::with(r, key, layercache::EntryOptions::new(), tags, value).await
    }

    /// [`start`](Self::start) with entry options.
    async fn with(
        r: &Region<str, u64>,
        key: &'static str,
        options: layercache::EntryOptions,
        tags: &'static [&'static str],
        value: u64,
    ) -> Self {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let task = {
            let (r, started, release) = (r.clone(), started.clone(), release.clone());
            tokio::spawn(async move {
                r.entry(key)
                    .options(&options)
                    .tags(tags)
                    .or_load(move |_| async move {
                        started.notify_one();
                        release.notified().await;
                        Ok::<_, std::io::Error>(value)
                    })
                    .await
            })
        };
        started.notified().await;
        Self { task, release }
    }

    /// Lets the loader return; the value the caller got.
    async fn finish(self) -> u64 {
        self.release.notify_one();
        *self.task.await.unwrap().unwrap()
    }
}

async fn writes_and_invalidations_reach_every_instance(shared: &Shared) {
    let caches = [
        shared.instance("co").await,
        shared.instance("co").await,
        shared.instance("co").await,
    ];
    let mut regions = Vec::new();
    for c in &caches {
        regions.push(region(c).await);
    }
    let mut delays = Vec::new();
    for round in 1..=20u64 {
        // Everyone holds the current value in L1.
        regions[0].insert("k", round).await.unwrap();
        for (i, r) in regions.iter().enumerate().skip(1) {
            delays.push(caught_up(&caches[i], &caches[0]).await);
            assert_eq!(*r.get("k").await.unwrap().unwrap(), round);
            assert_eq!(
                *r.get("k").await.unwrap().unwrap(),
                round,
                "second read from L1"
            );
        }
        // A write on another instance replaces it everywhere.
        let writer = (round as usize % 2) + 1;
        regions[writer].insert("k", round * 100).await.unwrap();
        for (i, r) in regions.iter().enumerate() {
            if i != writer {
                delays.push(caught_up(&caches[i], &caches[writer]).await);
            }
            assert_eq!(
                *r.get("k").await.unwrap().unwrap(),
                round * 100,
                "instance {i}"
            );
            assert_eq!(
                *r.get("k").await.unwrap().unwrap(),
                round * 100,
                "instance {i}"
            );
        }
    }
    // An invalidation removes it everywhere.
    regions[2].invalidate("k").await.unwrap();
    for (i, r) in regions.iter().enumerate() {
        if i != 2 {
            caught_up(&caches[i], &caches[2]).await;
        }
        assert!(r.get("k").await.unwrap().is_none(), "instance {i}");
    }
    delays.sort();
    eprintln!(
        "invalidation delay after insert returned: p50 {:?}, max {:?} over {} deliveries",
        delays[delays.len() / 2],
        delays[delays.len() - 1],
        delays.len()
    );
    for c in &caches {
        let s = c.stats();
        assert!(s.l1_hits > 0 && s.bus_received > 0, "{s:?}");
        assert_eq!(s.l1_flushes, 0, "no coherence loss expected: {s:?}");
    }
}

async fn a_remote_write_during_a_slow_load_never_leaves_the_old_value(shared: &Shared) {
    let a = shared.instance("slow").await;
    let b = shared.instance("slow").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let slow = SlowLoad::start(&ra, "k", &[], 1).await;
    rb.insert("k", 2).await.unwrap();
    caught_up(&a, &b).await;
    // A's caller read before the write and may see 1; A must hold 2 or nothing from now on.
    assert_eq!(slow.finish().await, 1);
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 2);
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 2);
}

/// A's slow load began before B invalidated the whole region. Once A has applied that, a new
/// read on A must not join the old load (whose value belongs to the old generation): it starts
/// a fetch of its own, which finds the new value.
async fn a_read_after_a_remote_region_invalidation_does_not_join_an_older_load(shared: &Shared) {
    let a = shared.instance("slowgen").await;
    let b = shared.instance("slowgen").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let slow = SlowLoad::start(&ra, "k", &[], 1).await;
    rb.invalidate_all().await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(ra.generation(), rb.generation());
    let fresh = ra.get_or_load("k", |_| async { Ok::<_, std::io::Error>(2) });
    let fresh = tokio::time::timeout(WAIT, fresh).await;
    assert_eq!(
        *fresh
            .expect("the new read waited for the old load")
            .unwrap(),
        2,
        "a read after the invalidation joined the old load"
    );
    assert_eq!(slow.finish().await, 1);
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 2);
}

/// Writers `insert` new versions, `invalidate` a key, or invalidate everything at once (the tag
/// every value carries, the region, or the whole cache); after an invalidation the loader
/// supplies the new version, and loads are slow enough for writes to land between their source
/// read and their fill. Readers check that once an instance has applied a writer's
/// invalidation, it never returns an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_finds_no_stale_read_after_an_invalidation_was_received() {
    let shared = Shared::Redis(redis());
    randomized_checker(&shared, "check", layercache::EntryOptions::new()).await;
}

/// The same checker on the in-memory seams (store and backplane): no redis-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_on_the_in_memory_server() {
    let shared = Shared::Memory(layercache::memory::MemoryServer::new());
    randomized_checker(&shared, "check", layercache::EntryOptions::new()).await;
}

/// The same checker with short lifetimes, early refresh (soft TTL and XFetch: background
/// refreshes run all the time and fill both tiers) and the cross-instance load lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_with_early_refresh_and_the_load_lock() {
    randomized_checker(&Shared::Redis(redis()), "fresh", early_refresh()).await;
}

/// The same on the in-memory seams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_with_early_refresh_and_the_load_lock_in_memory() {
    let shared = Shared::Memory(layercache::memory::MemoryServer::new());
    randomized_checker(&shared, "fresh", early_refresh()).await;
}

/// The checker on a Redis Cluster (six local nodes): the fills, fences, marks and bus kept per
/// slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_on_a_cluster() {
    let shared = Shared::Cluster(cluster());
    randomized_checker(&shared, "check", layercache::EntryOptions::new()).await;
}

/// The early-refresh checker on a Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_checker_with_early_refresh_and_the_load_lock_on_a_cluster() {
    let shared = Shared::Cluster(cluster());
    randomized_checker(&shared, "fresh", early_refresh()).await;
}

/// Short lifetimes, early refresh all the time, and the load lock.
fn early_refresh() -> layercache::EntryOptions {
    layercache::EntryOptions::new()
        .ttl(Duration::from_millis(60))
        .soft_ttl(Duration::from_millis(3))
        .xfetch_beta(1.0)
        .distributed_lock(true)
}

async fn randomized_checker(shared: &Shared, name: &str, options: layercache::EntryOptions) {
    const INSTANCES: usize = 3;
    const KEYS: usize = 4;
    const WRITES_PER_WRITER: usize = 500;
    const TAG: &str = "every";
    let mut caches = Vec::new();
    let mut regions = Vec::new();
    for i in 0..INSTANCES {
        // The first instance keeps keys other instances wrote out of L1 for the default
        // cooldown; the others have none, so every read that can be served from L1 is (with
        // four keys written all the time, the cooldown keeps them in Redis nearly always).
        let cooldown = if i == 0 {
            layercache::DEFAULT_L1_WRITE_COOLDOWN
        } else {
            Duration::ZERO
        };
        let c = shared
            .builder(name)
            .bus_heartbeat_interval(Duration::from_millis(100))
            .bus_heartbeat_timeout(Duration::from_millis(1000))
            .l2_error_policy(layercache::L2ErrorPolicy::Propagate)
            .l1_write_cooldown(cooldown)
            .build()
            .await
            .unwrap();
        let r = c
            .region::<str, u64>("item")
            .entry_options(options)
            .build()
            .await
            .unwrap();
        regions.push(r);
        caches.push(c);
    }
    let ids: Vec<InstanceId> = caches.iter().map(|c| c.instance_id().unwrap()).collect();
    // The source of truth: one version counter per key, written under a per-key lock.
    let truth: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let row_locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect());
    // Completed writes per key: (writer instance, its published seq after the insert, version).
    let writes: Arc<Vec<Mutex<Vec<Write>>>> =
        Arc::new((0..KEYS).map(|_| Mutex::new(Vec::new())).collect());
    let done = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for w in 0..2usize {
        let (caches, regions, truth, row_locks, writes, done) = (
            caches.clone(),
            regions.clone(),
            truth.clone(),
            row_locks.clone(),
            writes.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9u64 + w as u64;
            for _ in 0..WRITES_PER_WRITER {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let inst = ((x >> 8) % INSTANCES as u64) as usize;
                let op = (x >> 16) % 40;
                if op < 3 {
                    // A bulk invalidation (1 in 40 each: the tag every value carries, the
                    // region, the whole cache): every key gets a new version at the source,
                    // then the caches are told. Rows are locked in order (no deadlock).
                    let mut rows = Vec::new();
                    for lock in row_locks.iter() {
                        rows.push(lock.lock().await);
                    }
                    let versions: Vec<u64> = (0..KEYS)
                        .map(|k| truth[k].fetch_add(1, Ordering::SeqCst) + 1)
                        .collect();
                    // To isolate a failure: CHECK_BULK=tag|region|clear forces one kind.
                    let op = match std::env::var("CHECK_BULK").as_deref() {
                        Ok("tag") => 0,
                        Ok("region") => 1,
                        Ok("clear") => 2,
                        _ => op,
                    };
                    let done = match op {
                        0 => caches[inst].invalidate_tag(TAG).await,
                        1 => regions[inst].invalidate_all().await,
                        _ => caches[inst].clear().await,
                    };
                    if done.is_ok() {
                        let seq = caches[inst].bus_status().unwrap().published_seq;
                        for (k, v) in versions.into_iter().enumerate() {
                            writes[k].lock().unwrap().push((inst, seq, v));
                        }
                    }
                    continue;
                }
                let key = (x % KEYS as u64) as usize;
                let _row = row_locks[key].lock().await;
                let v = truth[key].fetch_add(1, Ordering::SeqCst) + 1;
                // Only acknowledged writes count (Propagate: a failed SET or PUBLISH is an
                // error here, and such a write may or may not be visible). About one in five is
                // a delete: after it, the loader supplies the version.
                let written = if op < 11 {
                    regions[inst].invalidate(&key.to_string()).await
                } else {
                    regions[inst]
                        .entry(&key.to_string())
                        .options(&options)
                        .tags(&[TAG])
                        .insert(v)
                        .await
                };
                if written.is_err() {
                    continue;
                }
                let seq = caches[inst].bus_status().unwrap().published_seq;
                writes[key].lock().unwrap().push((inst, seq, v));
                drop(_row);
                // Paced (about a millisecond, the timer's grain), so that readers get their
                // turns between writes even when the store answers at once (in memory).
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            done.fetch_add(1, Ordering::SeqCst);
        }));
    }
    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    for r in 0..4usize {
        let (caches, regions, truth, writes, done, stale, reads, ids) = (
            caches.clone(),
            regions.clone(),
            truth.clone(),
            writes.clone(),
            done.clone(),
            stale.clone(),
            reads.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = r as u64;
            while done.load(Ordering::SeqCst) < 2 {
                n += 1;
                let key = (n as usize * 7 + r) % KEYS;
                let inst = (n as usize + r) % INSTANCES;
                // What this instance had applied when the read began.
                let status = caches[inst].bus_status().unwrap();
                let applied: HashMap<usize, u64> = (0..INSTANCES)
                    .map(|i| {
                        let seq = if i == inst {
                            status.published_seq
                        } else {
                            status.peer_seq(ids[i]).unwrap_or(0)
                        };
                        (i, seq)
                    })
                    .collect();
                let must_see = writes[key]
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(w, seq, _)| applied[w] >= *seq)
                    .map(|(_, _, v)| *v)
                    .max()
                    .unwrap_or(0);
                let truth = truth.clone();
                // The load reads the source, then takes a while (0 to 1 ms) to come back:
                // writes and deletes land in between. One in 50 takes 100 ms: longer than
                // the short-lived variant's values (and the tombstones of their deletes).
                let pause = if n.is_multiple_of(50) {
                    Duration::from_millis(100)
                } else {
                    Duration::from_micros((n % 3) * 500)
                };
                let read = regions[inst]
                    .entry(&key.to_string())
                    .options(&options)
                    .tags(&[TAG])
                    .or_load(move |_| async move {
                        let v = truth[key].load(Ordering::SeqCst);
                        tokio::time::sleep(pause).await;
                        Ok::<_, std::io::Error>(v)
                    })
                    .await;
                // A Redis error (Propagate) is not a stale read; a busy machine may cause one.
                let Ok(got) = read.map(|v| *v) else { continue };
                reads.fetch_add(1, Ordering::Relaxed);
                if got < must_see {
                    stale.fetch_add(1, Ordering::Relaxed);
                    eprintln!("STALE: instance {inst} key {key} read {got}, must see {must_see}");
                    // CHECK_EXPLAIN=1: what the instance holds, and the last writes of the key.
                    if std::env::var("CHECK_EXPLAIN").is_ok() {
                        let last: Vec<Write> = {
                            let w = writes[key].lock().unwrap();
                            w[w.len().saturating_sub(4)..].to_vec()
                        };
                        eprintln!("  applied {applied:?}; last writes {last:?}");
                        eprintln!("{:?}", regions[inst].explain(&key.to_string()).await);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hits: u64 = caches.iter().map(|c| c.stats().l1_hits).sum();
    eprintln!(
        "checker: {} reads ({hits} L1 hits), {} writes, stale {}",
        reads.load(Ordering::Relaxed),
        2 * WRITES_PER_WRITER,
        stale.load(Ordering::Relaxed)
    );
    assert!(reads.load(Ordering::Relaxed) > 100);
    assert!(hits > 0, "the checker never exercised L1");
    let total =
        |f: fn(&layercache::Stats) -> u64| -> u64 { caches.iter().map(|c| f(&c.stats())).sum() };
    if options.get_soft_ttl().is_some() {
        assert!(total(|s| s.refreshes) > 0, "no early refresh ran");
    }
    if options.get_distributed_lock() {
        assert!(
            total(|s| s.locks_acquired) > 0,
            "the load lock was never taken"
        );
    }
    assert_eq!(stale.load(Ordering::Relaxed), 0);
}

async fn client_kill_pubsub_resubscribes_flushes_and_recovers(shared: &Shared) {
    let a = shared.instance("kill").await;
    let b = shared.instance("kill").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    rb.insert("k", 1).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 1); // now in A's L1

    shared.kill_subscribers().await;
    // Published while the subscribers are gone: lost for them.
    rb.insert("k", 2).await.unwrap();
    // Both instances lost their subscription: wait for both to re-subscribe.
    for (name, c) in [("A", &a), ("B", &b)] {
        wait_until(&format!("{name} to re-subscribe and flush"), WAIT, || {
            let c = c.clone();
            async move { c.flushes(FlushReason::Reconnect) >= 1 }
        })
        .await;
    }
    wait_until("A's generation to be read again", WAIT, || {
        let ra = ra.clone();
        async move { ra.generation().is_some() }
    })
    .await;
    assert_eq!(
        *ra.get("k").await.unwrap().unwrap(),
        2,
        "served stale after the gap"
    );

    // And the bus works again.
    rb.insert("k", 3).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_without_user_action() {
    let mut server = redis();
    let a = instance(&server, "restart").await;
    let b = instance(&server, "restart").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    rb.insert("k", 1).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 1);
    let gen_before = ra.generation().unwrap();

    server.restart().unwrap(); // same port, empty: persistence is off
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        wait_until("a reconnect flush", WAIT, || {
            let c = c.clone();
            async move { c.flushes(FlushReason::Reconnect) >= 1 }
        })
        .await;
        wait_until("the generation to be known again", WAIT, || {
            let r = r.clone();
            async move { r.generation().is_some() }
        })
        .await;
    }
    // A's L1 was flushed: the value Redis lost is not served from it.
    assert!(ra.get("k").await.unwrap().is_none());
    assert!(ra.generation().unwrap() > gen_before);
    assert_eq!(ra.generation(), rb.generation());

    rb.insert("k", 2).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 2);
    rb.insert("k", 3).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 3);
}

async fn a_flood_beyond_the_buffer_is_detected_flushed_and_survived(shared: &Shared) {
    let raw = shared.raw().await;
    let a = shared.build(shared.builder("flood").bus_buffer(16)).await;
    let b = shared.instance("flood").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    rb.insert("k", 1).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 1);

    // 20,000 messages in one server-side burst: far more than A's 16-message buffer.
    // (`SPUBLISH` on a cluster, whose default bus is sharded: a script may publish on a shard
    // channel it names as a key.)
    let publish = match shared {
        Shared::Cluster(_) => "SPUBLISH",
        _ => "PUBLISH",
    };
    let flood =
        format!("for i = 1, 20000 do redis.call('{publish}', KEYS[1], ARGV[1]) end return 1");
    let _: Value = raw
        .eval(flood, "flood:m2:bus", "not a bus message")
        .await
        .unwrap();
    wait_until("A to notice the lag", WAIT, || {
        let a = a.clone();
        async move { a.flushes(FlushReason::Lag) >= 1 }
    })
    .await;
    // The buffer reports the lag before the messages still in it, which are then counted as
    // not ours (on a loaded machine the listener may not have counted any before the lag).
    wait_until("A to count the flood's messages as not ours", WAIT, || {
        let a = a.clone();
        async move { a.stats().bus_dropped > 0 }
    })
    .await;

    // The listener keeps working for later messages.
    rb.insert("k", 2).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 2);
}

async fn garbage_on_the_channel_is_counted_and_ignored(shared: &Shared) {
    let a = shared.instance("junk").await;
    let b = shared.instance("junk").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let garbage: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"hello".to_vec(),
        b"LCBM".to_vec(),
        b"LCBM\x09rest".to_vec(),
        [
            b"LCBM\x01".as_slice(),
            &[0u8; 16],
            &1u64.to_le_bytes(),
            &u32::MAX.to_le_bytes(),
        ]
        .concat(),
        vec![0xff; 4096],
    ];
    let before = a.stats().bus_dropped;
    for g in &garbage {
        shared.publish_raw("junk", g.clone()).await;
    }
    wait_until("the garbage to be counted", WAIT, || {
        let a = a.clone();
        let want = before + garbage.len() as u64;
        async move { a.stats().bus_dropped >= want }
    })
    .await;
    assert_eq!(
        a.stats().l1_flushes,
        0,
        "garbage must not look like lost messages"
    );
    rb.insert("k", 5).await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(*ra.get("k").await.unwrap().unwrap(), 5);
}

async fn region_invalidate_all_is_one_command_and_reaches_every_instance(shared: &Shared) {
    let a = shared.instance("gen").await;
    let b = shared.instance("gen").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let other_a = a.region::<str, u64>("other").build().await.unwrap();
    fill(&ra, 10_000).await;
    other_a.insert("keep", 7).await.unwrap();
    for i in 0..100u64 {
        assert_eq!(*rb.get(&i.to_string()).await.unwrap().unwrap(), i);
    }
    assert_eq!(
        shared.data_keys("gen").await.len(),
        10_001,
        "{:?}",
        a.stats()
    );

    shared.log_every_command().await;
    let gen_before = rb.generation().unwrap();
    ra.invalidate_all().await.unwrap();
    let longest = shared.longest_logged_command().await;
    eprintln!("invalidate_all over 10,000 keys: longest command {longest:?}");
    caught_up(&b, &a).await;
    assert!(rb.generation().unwrap() > gen_before);
    assert_eq!(ra.generation(), rb.generation());
    assert!(b
        .generations()
        .contains(&("item".to_owned(), rb.generation())));
    for i in 0..100u64 {
        assert!(
            rb.get(&i.to_string()).await.unwrap().is_none(),
            "B still serves {i}"
        );
        assert!(
            ra.get(&i.to_string()).await.unwrap().is_none(),
            "A still serves {i}"
        );
    }
    assert_eq!(
        *other_a.get("keep").await.unwrap().unwrap(),
        7,
        "other regions untouched"
    );
    // Old keys stay until their TTL: nothing was scanned or deleted.
    assert_eq!(
        shared.data_keys("gen").await.len(),
        10_001,
        "{:?}",
        a.stats()
    );
    // New writes land in the new key space and are read back.
    ra.insert("0", 42).await.unwrap();
    caught_up(&b, &a).await;
    assert_eq!(*rb.get("0").await.unwrap().unwrap(), 42);
}

async fn clear_removes_every_entry_on_every_instance(shared: &Shared) {
    let a = shared.instance("clr").await;
    let b = shared.instance("clr").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    fill(&ra, 3000).await;
    for i in 0..50u64 {
        assert_eq!(*rb.get(&i.to_string()).await.unwrap().unwrap(), i);
    }
    a.clear().await.unwrap();
    caught_up(&b, &a).await;
    assert!(shared.data_keys("clr").await.is_empty());
    for i in 0..50u64 {
        assert!(rb.get(&i.to_string()).await.unwrap().is_none());
    }
    assert!(b.flushes(FlushReason::Clear) >= 1);
}

/// Inserts keys "0".."n" with value = index, 16 at a time.
async fn fill(r: &Region<str, u64>, n: u64) {
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                r.insert(&i.to_string(), i).await.unwrap();
                i += 16;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn invalidate_tag_removes_10000_members_everywhere_in_bounded_batches(shared: &Shared) {
    let a = shared.instance("tag").await;
    let b = shared.instance("tag").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let opts = layercache::EntryOptions::new();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let ra = ra.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < 10_000 {
                ra.entry(&i.to_string())
                    .options(&opts)
                    .tags(&["team:7", "all-items"])
                    .insert(i)
                    .await
                    .unwrap();
                i += 16;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ra.entry("other")
        .options(&opts)
        .tags(&["team:8"])
        .insert(1)
        .await
        .unwrap();
    ra.insert("untagged", 2).await.unwrap();
    caught_up(&b, &a).await;
    // B reads some tagged values through Redis: its L1 copies carry the tags from the envelope.
    for i in 0..100u64 {
        assert_eq!(*rb.get(&i.to_string()).await.unwrap().unwrap(), i);
    }
    assert_eq!(*rb.get("other").await.unwrap().unwrap(), 1);
    let (members, pttl) = shared.tag_members("tag", "team:7").await;
    assert_eq!(members, 10_000);
    let pttl = pttl.unwrap();
    assert!(pttl > 0, "tag bookkeeping must expire ({pttl})");

    shared.log_every_command().await;
    a.invalidate_tag("team:7").await.unwrap();
    let longest = shared.longest_logged_command().await;
    let most_args = most_arguments(shared).await;
    eprintln!(
        "invalidate_tag over 10,000 members: longest command {longest:?}, most arguments {most_args}"
    );
    // SSCAN's COUNT is a hint: a page can run a little over it, never near the set's size.
    assert!(most_args <= 1001, "one command touched {most_args} keys");
    caught_up(&b, &a).await;

    for i in (0..10_000u64).step_by(97).chain(0..100) {
        assert!(
            ra.get(&i.to_string()).await.unwrap().is_none(),
            "A still serves {i}"
        );
        assert!(
            rb.get(&i.to_string()).await.unwrap().is_none(),
            "B still serves {i}"
        );
    }
    assert_eq!(
        *rb.get("other").await.unwrap().unwrap(),
        1,
        "another tag was hit"
    );
    assert_eq!(*rb.get("untagged").await.unwrap().unwrap(), 2);
    assert_eq!(
        shared.data_keys("tag").await.len(),
        2,
        "tagged keys left in redis"
    );
    assert_eq!(
        shared.tag_members("tag", "team:7").await,
        (0, None),
        "member sets left"
    );
}

async fn a_tag_invalidated_during_a_load_is_never_filled_afterwards(shared: &Shared) {
    let a = shared.instance("tagrace").await;
    let b = shared.instance("tagrace").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let slow = SlowLoad::start(&ra, "k", &["t"], 1).await;
    b.invalidate_tag("t").await.unwrap();
    caught_up(&a, &b).await;
    assert_eq!(slow.finish().await, 1);
    // Neither tier holds the pre-invalidation value.
    assert!(
        ra.get("k").await.unwrap().is_none(),
        "A filled its L1 after the tag went"
    );
    assert!(
        rb.get("k").await.unwrap().is_none(),
        "the load filled Redis after the tag went"
    );
}

#[tokio::test]
async fn tags_work_without_redis() {
    let cache = LayerCache::builder("local").build().await.unwrap();
    let r = cache.region::<str, u64>("r").build().await.unwrap();
    let opts = layercache::EntryOptions::new();
    r.entry("a")
        .options(&opts)
        .tags(&["x"])
        .insert(1)
        .await
        .unwrap();
    r.entry("b")
        .options(&opts)
        .tags(&["y"])
        .insert(2)
        .await
        .unwrap();
    cache.invalidate_tag("x").await.unwrap();
    assert!(r.get("a").await.unwrap().is_none());
    assert_eq!(*r.get("b").await.unwrap().unwrap(), 2);
    // A tagged value written after the invalidation is served.
    r.entry("a")
        .options(&opts)
        .tags(&["x"])
        .insert(3)
        .await
        .unwrap();
    assert_eq!(*r.get("a").await.unwrap().unwrap(), 3);
    assert!(cache.invalidate_tag("").await.is_err());
}

/// The most arguments any command in the slow log had.
async fn most_arguments(shared: &Shared) -> usize {
    let mut entries = Vec::new();
    for raw in shared.node_clients().await {
        let Value::Array(more) = cmd(&raw, "SLOWLOG", &["GET", "100000"]).await else {
            panic!("unexpected SLOWLOG reply")
        };
        entries.extend(more);
    }
    entries
        .iter()
        .filter_map(|e| match e {
            Value::Array(fields) => match fields.get(3) {
                Some(Value::Array(args)) => {
                    // Redis shortens long argument lists to 32 entries, the last saying
                    // "... (N more arguments)".
                    let more = args
                        .last()
                        .and_then(|a| a.as_string())
                        .and_then(|s| {
                            s.strip_prefix("... (")
                                .and_then(|r| r.split(' ').next())
                                .and_then(|n| n.parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    Some(args.len() + more - usize::from(more > 0))
                }
                _ => None,
            },
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// What instance A does while B's load is running.
#[derive(Debug, Clone, Copy)]
enum Change {
    Delete,
    Tag,
    Clear,
}

/// The Redis-side race of cache-aside: instance B reads the source, A deletes the key
/// (`invalidate`, `invalidate_tag` of a tag the load carries, or `clear`), then B's fill reaches
/// Redis *before* B has heard of the change (B's link is slowed by a proxy, so its poison flag
/// is still clear). The fill must lose, whether B's read had found nothing (its fill is
/// `SET NX`) or an unusable entry (its fill replaces only what it saw), so a third instance
/// never finds the old value in Redis.
async fn a_slow_remote_fill_loses_to(shared: &Shared, change: Change) {
    let raw = shared.raw().await;
    let proxy = shared.slow_link().await;
    let name = format!("{change:?}");
    let a = shared.instance(&name).await;
    let b = proxy.instance(&name).await;
    let c = shared.instance(&name).await;
    let (ra, rb, rc) = (region(&a).await, region(&b).await, region(&c).await);
    for (key, before) in [("absent", None), ("corrupt", Some(&b"garbage"[..]))] {
        let rkey = ra.redis_key(key).unwrap();
        if let Some(bytes) = before {
            let _: () = raw
                .set(&rkey, bytes, Some(Expiration::EX(60)), None, false)
                .await
                .unwrap();
        }
        // Far longer than this test takes between the change and the check below, even on
        // a busy machine.
        proxy.set_latency(Duration::from_millis(500));
        let slow = SlowLoad::start(&rb, key, &["t"], 1).await;
        match change {
            Change::Delete => ra.invalidate(key).await.unwrap(),
            Change::Tag => a.invalidate_tag("t").await.unwrap(),
            Change::Clear => a.clear().await.unwrap(),
        }
        // B has not applied the change yet (else its poison flag, not Redis, would stop the
        // fill, and this test would prove nothing).
        let changed_at = a.bus_status().unwrap().published_seq;
        let applied = b.bus_status().unwrap().peer_seq(a.instance_id().unwrap());
        assert!(
            applied.is_none_or(|s| s < changed_at),
            "{key}: B already knew"
        );
        let lost = b.stats().l2_fills_lost;
        assert_eq!(slow.finish().await, 1, "{key}");
        proxy.set_latency(Duration::ZERO);
        if !matches!(change, Change::Clear) {
            // (After a clear, the fill lands under the outdated generation instead.)
            assert_eq!(b.stats().l2_fills_lost, lost + 1, "{key}: fill not refused");
        }
        caught_up(&c, &a).await;
        assert_eq!(rc.generation(), ra.generation(), "{key}");
        if let Change::Delete = change {
            let stored: Vec<u8> = raw.get(&rkey).await.unwrap();
            assert_ne!(
                stored[6] & layercache::envelope::FLAG_TOMBSTONE,
                0,
                "{key}: not a tombstone"
            );
        }
        assert!(
            rc.get(key).await.unwrap().is_none(),
            "{key}: the old value refilled redis"
        );
        let v = rc
            .get_or_load(key, |_| async { Ok::<_, std::io::Error>(2) })
            .await
            .unwrap();
        assert_eq!(*v, 2, "{key}: a load after the change fills redis");
        assert_eq!(*rc.get(key).await.unwrap().unwrap(), 2, "{key}");
    }
}

/// B writes before it has heard that A moved the region to a new generation. Its write must
/// not land in the abandoned key space (where nobody reads it) while the new one holds an
/// older value: the write is fenced on the generation, B learns the new one and writes there.
async fn a_write_from_an_instance_behind_a_region_invalidation_lands_in_the_new_generation(
    shared: &Shared,
) {
    let proxy = shared.slow_link().await;
    let a = shared.instance("fence").await;
    let b = proxy.instance("fence").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let before = rb.generation().unwrap();
    proxy.set_latency(Duration::from_millis(500));
    ra.invalidate_all().await.unwrap();
    // A reads the key under the new generation: the source says 1.
    let v = ra
        .get_or_load("k", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(*v, 1);
    // B, which has not heard of the new generation, writes 2 (and for "d", deletes).
    ra.get_or_load("d", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(
        rb.generation(),
        Some(before),
        "B already knew: the test proves nothing"
    );
    rb.insert("k", 2).await.unwrap();
    rb.invalidate("d").await.unwrap();
    proxy.set_latency(Duration::ZERO);
    assert_eq!(
        rb.generation(),
        ra.generation(),
        "B did not learn the generation"
    );
    caught_up(&a, &b).await;
    assert_eq!(
        *ra.get("k").await.unwrap().unwrap(),
        2,
        "B's write was lost"
    );
    assert!(ra.get("d").await.unwrap().is_none(), "B's delete was lost");
}

/// What a load saw in Redis (here a corrupt entry; in practice often a value just past its
/// expiry) can vanish by expiry while the load runs. The load must still fill, as a load that
/// found nothing would: refusing sends every other instance to its own load.
async fn a_load_fills_redis_when_what_it_saw_expired_meanwhile(shared: &Shared) {
    let raw = shared.raw().await;
    let a = shared.instance("vanish").await;
    let b = shared.instance("vanish").await;
    let (ra, rb) = (region(&a).await, region(&b).await);
    let rkey = ra.redis_key("k").unwrap();
    let _: () = raw
        .set(&rkey, "garbage", Some(Expiration::EX(60)), None, false)
        .await
        .unwrap();
    let slow = SlowLoad::start(&ra, "k", &[], 1).await;
    let _: i64 = raw.del(&rkey).await.unwrap();
    assert_eq!(slow.finish().await, 1);
    assert_eq!(a.stats().l2_fills_lost, 0);
    assert_eq!(*rb.get("k").await.unwrap().unwrap(), 1, "not filled");
    assert_eq!(b.stats().l2_hits, 1);
}

/// A conditional fill proves that nothing changed since the load's read only while what a
/// concurrent write left still lives. Here A's newer value expires from Redis before B's slow
/// load (which read the source before A's write, and has not heard of it) comes back: B must
/// not fill, or a third instance would read B's older value from Redis.
async fn a_load_slower_than_the_ttl_does_not_fill_redis(shared: &Shared) {
    let raw = shared.raw().await;
    let proxy = shared.slow_link().await;
    let opts = layercache::EntryOptions::new().ttl(Duration::from_millis(300));
    let a = shared.instance("slowfill").await;
    let b = proxy.instance("slowfill").await;
    let c = shared.instance("slowfill").await;
    let mut regions = Vec::new();
    for cache in [&a, &b, &c] {
        let r = cache
            .region::<str, u64>("item")
            .entry_options(opts)
            .build()
            .await
            .unwrap();
        regions.push(r);
    }
    let (ra, rb, rc) = (&regions[0], &regions[1], &regions[2]);
    let rkey = ra.redis_key("k").unwrap();
    proxy.set_latency(Duration::from_millis(500));
    let slow = SlowLoad::with(rb, "k", opts, &[], 1).await;
    ra.insert("k", 2).await.unwrap();
    let written_at = a.bus_status().unwrap().published_seq;
    wait_until("A's value to expire from redis", WAIT, || {
        let (raw, rkey) = (raw.clone(), rkey.clone());
        async move {
            let v: Option<Vec<u8>> = raw.get(&rkey).await.unwrap();
            v.is_none()
        }
    })
    .await;
    let applied = b.bus_status().unwrap().peer_seq(a.instance_id().unwrap());
    assert!(
        applied.is_none_or(|s| s < written_at),
        "B already knew: the test proves nothing"
    );
    let lost = b.stats().l2_fills_lost;
    assert_eq!(slow.finish().await, 1);
    proxy.set_latency(Duration::ZERO);
    let stored: Option<Vec<u8>> = raw.get(&rkey).await.unwrap();
    assert!(stored.is_none(), "B's older value reached redis");
    assert_eq!(b.stats().l2_fills_lost, lost + 1, "not counted");
    caught_up(&c, &a).await;
    assert!(rc.get("k").await.unwrap().is_none());
}

async fn a_load_that_began_before_a_remote_delete_never_refills_redis(shared: &Shared) {
    a_slow_remote_fill_loses_to(shared, Change::Delete).await;
}

async fn a_load_that_began_before_a_remote_tag_invalidation_never_refills_redis(shared: &Shared) {
    a_slow_remote_fill_loses_to(shared, Change::Tag).await;
}

async fn a_load_that_began_before_a_remote_clear_never_refills_redis(shared: &Shared) {
    a_slow_remote_fill_loses_to(shared, Change::Clear).await;
}

/// After `FLUSHALL` (the generation keys gone with everything else), an instance that was
/// running and one started afterwards must not go on using two generations: the running one's
/// next fill is fenced (its generation is no longer Redis's), so it re-reads the generation at
/// once, and a write from the new instance is seen by it as soon as it is announced — not at
/// the next renewal, ~30 s later.
async fn after_flushall_a_running_and_a_new_instance_share_one_generation(shared: &Shared) {
    let a = shared.instance("split").await;
    let ra = region(&a).await;
    ra.insert("warm", 0).await.unwrap();
    shared.flush_all().await;
    // The running instance loads x (the source says 1) under what it knows.
    let v = ra
        .get_or_load("x", |_| async { Ok::<_, std::io::Error>(1) })
        .await
        .unwrap();
    assert_eq!(*v, 1);
    // A new instance starts, and writes x = 2 (the source changed).
    let c = shared.instance("split").await;
    let rc = region(&c).await;
    rc.insert("x", 2).await.unwrap();
    caught_up(&a, &c).await;
    assert_eq!(
        ra.get("x").await.unwrap().as_deref(),
        Some(&2),
        "the running instance still serves its own fill from the abandoned generation"
    );
    assert_eq!(ra.generation(), rc.generation());
    assert!(a.stats().l2_fills_lost >= 1, "{:?}", a.stats());
}

/// After another instance writes a key, this instance keeps the key out of L1 for
/// `l1_write_cooldown`: its reads take it from Redis (where the writer's value is), every one
/// of them; once the cooldown is over the key goes back in L1. With no cooldown the first read
/// after the write puts it back in L1 at once.
async fn a_key_another_instance_wrote_is_read_from_redis_during_the_cooldown(shared: &Shared) {
    let with = |cooldown: Duration| {
        shared.build(fast_bus(shared.builder("cool")).l1_write_cooldown(cooldown))
    };
    let writer = with(layercache::DEFAULT_L1_WRITE_COOLDOWN).await;
    let long = with(Duration::from_secs(60)).await;
    let short = with(Duration::from_millis(300)).await;
    let none = with(Duration::ZERO).await;
    let rw = region(&writer).await;
    let readers = [
        (&long, region(&long).await),
        (&short, region(&short).await),
        (&none, region(&none).await),
    ];
    rw.insert("k", 1).await.unwrap();
    for (c, r) in &readers {
        caught_up(c, &writer).await;
        assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&1));
    }
    rw.insert("k", 2).await.unwrap();
    for (c, _) in &readers {
        caught_up(c, &writer).await;
    }
    // How each of five reads was served: (from L1, from Redis).
    let served = |c: &LayerCache, before: layercache::Stats| {
        let s = c.stats();
        (s.l1_hits - before.l1_hits, s.l2_hits - before.l2_hits)
    };
    let mut counts = Vec::new();
    for (c, r) in &readers {
        let before = c.stats();
        for _ in 0..5 {
            assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&2));
        }
        let skips = c.stats().l1_cooldown_skips - before.l1_cooldown_skips;
        counts.push((served(c, before), skips));
    }
    assert_eq!(counts[0], ((0, 5), 5), "cooling: every read from Redis");
    assert_eq!(counts[2], ((4, 1), 0), "no cooldown: back in L1 at once");
    // Past its cooldown the short one puts the key back in L1. The sleep is the duration under
    // test (300 ms of cooldown, and a margin), not a wait for something to happen: a slower
    // machine only makes it longer, which the assertion allows.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (c, r) = &readers[1];
    let before = c.stats();
    for _ in 0..5 {
        assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&2));
    }
    assert_eq!(served(c, before), (4, 1), "after the cooldown: back in L1");
    // A write of this instance's own does not cool the key here (its value went in its L1
    // with the write).
    rw.insert("own", 3).await.unwrap();
    let before = writer.stats();
    assert_eq!(rw.get("own").await.unwrap().as_deref(), Some(&3));
    assert_eq!(served(&writer, before), (1, 0));
}

/// A plain `insert` runs no script: its `SET` and the fence's `GET` of the region's generation
/// (on a cluster, of the bucket's copy) go together with its announcement. The fence holds
/// without the script's atomicity: on one server, when the generation key is gone (lost, as
/// after a `FLUSHALL` or a restart without persistence), the `GET` finds nothing, the write
/// counts as fenced and goes again under the generation read anew. It is not lost: a fresh
/// instance reads it.
async fn a_plain_insert_runs_no_script_and_a_lost_generation_does_not_lose_it(shared: &Shared) {
    // No heartbeats: every few, the bus renews the generation with a script.
    let quiet = || {
        shared.build(
            shared
                .builder("plain")
                .bus_heartbeat_interval(Duration::from_secs(3600))
                .bus_heartbeat_timeout(Duration::from_secs(7200)),
        )
    };
    let a = quiet().await;
    let ra = region(&a).await;
    // The first write in the key's bucket catches the bucket's copy of the generation up.
    ra.insert("k", 0).await.unwrap();
    let Shared::Redis(_) = shared else {
        // (Other tests share the cluster: its command counts are theirs too. The commands of a
        // plain fill on a cluster are checked in tests/stampede.rs.)
        ra.insert("k", 1).await.unwrap();
        let fresh = quiet().await;
        assert_eq!(
            region(&fresh).await.get("k").await.unwrap().as_deref(),
            Some(&1)
        );
        return;
    };
    let calls = |name: &'static str| shared.command_calls(name);
    let (evals, sets, gets) = (
        calls("evalsha").await,
        calls("set").await,
        calls("get").await,
    );
    ra.insert("k", 1).await.unwrap();
    assert_eq!(
        calls("evalsha").await - evals,
        0,
        "a plain insert runs no script"
    );
    assert_eq!(calls("set").await - sets, 1);
    assert_eq!(calls("get").await - gets, 1, "the fence's read");

    let raw = shared.raw().await;
    let generation_keys: Vec<String> = support::all_keys(&raw)
        .await
        .into_iter()
        .filter(|k| k.starts_with("plain:m") && k.ends_with(":gen"))
        .collect();
    assert_eq!(generation_keys.len(), 1, "{generation_keys:?}");
    let before = ra.generation().unwrap();
    cmd(&raw, "DEL", &[generation_keys[0].as_str()]).await;
    ra.insert("k", 2).await.unwrap();
    let after = ra.generation().unwrap();
    assert!(after > before, "the write did not read the generation anew");
    let fresh = quiet().await;
    let rf = region(&fresh).await;
    assert_eq!(
        rf.get("k").await.unwrap().as_deref(),
        Some(&2),
        "the write was lost"
    );
    assert_eq!(rf.generation(), Some(after));
}
