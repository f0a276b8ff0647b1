//! Large values are encoded and decoded on tokio's blocking pool, small ones on the calling
//! worker (`LayerCacheBuilder::offload_threshold`), against a real redis-server.
//!
//! Each test runs on a current-thread runtime: the test's own thread is its only worker, so a
//! value serialized or deserialized on any other thread was handed to the blocking pool. The
//! value type records the thread of every serialization and deserialization (a binary of its
//! own: those records are process-wide).

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::{
    sync::Mutex,
    thread::{self, ThreadId},
    time::Duration,
};

use fred::prelude::KeysInterface;
use layercache::{EntryOptions, ErrorKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::{builder, raw_client, redis};

/// Where each serialization (`true`) and deserialization (`false`) ran.
static SEEN: Mutex<Vec<(bool, ThreadId)>> = Mutex::new(Vec::new());

/// The tests run one at a time (they share `SEEN`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn take_seen() -> Vec<(bool, ThreadId)> {
    std::mem::take(&mut *SEEN.lock().unwrap())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner(Vec<u8>);

/// Bytes that record where they were encoded and decoded.
#[derive(Debug, Clone, PartialEq)]
struct Blob(Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SEEN.lock().unwrap().push((true, thread::current().id()));
        Inner(self.0.clone()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SEEN.lock().unwrap().push((false, thread::current().id()));
        Inner::deserialize(d).map(|i| Blob(i.0))
    }
}

/// Random bytes (LZ4 leaves them as they are, so the stored size is the encoded size).
fn blob(len: usize, seed: u64) -> Blob {
    let mut rng = StdRng::seed_from_u64(seed);
    Blob((0..len).map(|_| rng.gen()).collect())
}

const THRESHOLD: usize = 16 << 10;

#[tokio::test]
async fn large_values_are_encoded_and_decoded_off_the_worker_small_ones_on_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = redis();
    let me = thread::current().id();
    let writer = builder(&server, "off")
        .offload_threshold(THRESHOLD)
        .build()
        .await
        .unwrap();
    let w = writer.region::<str, Blob>("b").build().await.unwrap();
    take_seen();

    // Small: on this thread. The region's first large value: still on this thread (a write
    // cannot know the size before encoding); from then on, off it.
    let small = blob(100, 1);
    let large = blob(64 << 10, 2);
    w.insert("small", small.clone()).await.unwrap();
    w.insert("large", large.clone()).await.unwrap();
    assert_eq!(take_seen(), [(true, me), (true, me)]);
    w.insert("large", large.clone()).await.unwrap();
    let seen = take_seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].0 && seen[0].1 != me, "{seen:?}");
    // The next small value goes off too (the last one was large); the one after it, on.
    w.insert("small", small.clone()).await.unwrap();
    w.insert("small", small.clone()).await.unwrap();
    let seen = take_seen();
    assert!(seen[0].1 != me && seen[1].1 == me, "{seen:?}");

    // A reader with an empty L1: large bytes from Redis are decoded off this thread, small
    // ones on it, and both come back whole.
    let reader = builder(&server, "off")
        .offload_threshold(THRESHOLD)
        .build()
        .await
        .unwrap();
    let r = reader.region::<str, Blob>("b").build().await.unwrap();
    // (Building a region traces the type's `Deserialize` for its fingerprint.)
    take_seen();
    assert_eq!(r.get("large").await.unwrap().as_deref(), Some(&large));
    let seen = take_seen();
    assert!(seen == [(false, seen[0].1)] && seen[0].1 != me, "{seen:?}");
    assert_eq!(r.get("small").await.unwrap().as_deref(), Some(&small));
    assert_eq!(take_seen(), [(false, me)]);

    // Loads: the reader's region has encoded nothing yet, so its first large load is encoded
    // on this thread; the next one off it. Both are filled into Redis (the writer reads the
    // second back from there, decoding it off this thread).
    for (key, seed, off) in [("loaded", 3, false), ("loaded2", 4, true)] {
        let loaded = blob(32 << 10, seed);
        let from_loader = loaded.clone();
        let got = r
            .get_or_load(
                key,
                move |_| async move { Ok::<_, std::io::Error>(from_loader) },
            )
            .await
            .unwrap();
        assert_eq!(*got, loaded);
        let seen = take_seen();
        assert!(
            seen.len() == 1 && seen[0].0 && (seen[0].1 != me) == off,
            "{key}: {seen:?}"
        );
        if off {
            writer.clear_l1();
            assert_eq!(w.get(key).await.unwrap().as_deref(), Some(&loaded));
            let seen = take_seen();
            assert!(seen.len() == 1 && !seen[0].0 && seen[0].1 != me, "{seen:?}");
        }
    }
    assert_eq!(reader.stats().decode_errors, 0);
    writer.shutdown().await;
    reader.shutdown().await;
}

#[tokio::test]
async fn damaged_large_entries_are_misses_off_the_worker_too() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = redis();
    let cache = builder(&server, "dmg")
        .offload_threshold(THRESHOLD)
        .build()
        .await
        .unwrap();
    let region = cache
        .region::<str, Blob>("b")
        .entry_options(EntryOptions::new())
        .build()
        .await
        .unwrap();
    let large = blob(64 << 10, 4);
    region.insert("k", large.clone()).await.unwrap();
    // Flip a byte in the middle of the stored payload: the checksum fails (decoded off the
    // worker), the read is a miss, counted, and a load replaces the entry.
    let raw = raw_client(&server).await;
    let rk = region.redis_key("k").unwrap();
    let mut bytes: Vec<u8> = raw.get(rk.as_str()).await.unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let _: () = raw
        .set(rk.as_str(), bytes, None, None, false)
        .await
        .unwrap();
    cache.clear_l1();
    assert_eq!(region.get("k").await.unwrap(), None);
    assert_eq!(cache.stats().decode_errors, 1);
    let fresh = blob(64 << 10, 5);
    let from_loader = fresh.clone();
    let got = region
        .get_or_load(
            "k",
            move |_| async move { Ok::<_, std::io::Error>(from_loader) },
        )
        .await
        .unwrap();
    assert_eq!(*got, fresh);
    // Too large for `max_value_bytes` is still refused before anything is written.
    let small_max = builder(&server, "dmg2")
        .offload_threshold(1)
        .max_value_bytes(1 << 10)
        .build()
        .await
        .unwrap();
    let tiny = small_max.region::<str, Blob>("b").build().await.unwrap();
    tiny.insert("a", blob(10, 6)).await.unwrap();
    let err = tiny.insert("b", blob(4 << 10, 7)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge);
    cache.shutdown().await;
    small_max.shutdown().await;
}

/// The connections of `CLIENT LIST` opened since `before` (their ids), as `(id, cmd, is a
/// subscriber)`.
async fn new_connections(raw: &fred::prelude::Client, before: &[u64]) -> Vec<(u64, String, bool)> {
    let list = support::cmd(raw, "CLIENT", &["LIST"]).await;
    let list = list.as_string().unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |name: &str| {
                line.split(' ')
                    .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
                    .unwrap_or("")
                    .to_owned()
            };
            let id: u64 = field("id").parse().ok()?;
            let subscriber = field("flags").contains('P');
            (!before.contains(&id)).then(|| (id, field("cmd"), subscriber))
        })
        .collect()
}

/// [`new_connections`], once the instance's bus subscriber has subscribed (it does so in the
/// background).
async fn instance_connections(
    raw: &fred::prelude::Client,
    before: &[u64],
) -> Vec<(u64, String, bool)> {
    support::wait_until(
        "the bus subscriber to subscribe",
        Duration::from_secs(10),
        || async {
            new_connections(raw, before)
                .await
                .iter()
                .filter(|c| c.2)
                .count()
                == 1
        },
    )
    .await;
    new_connections(raw, before).await
}

/// With `l2_pool_size(3)`, an instance opens three command connections besides its bus
/// subscriber; reads go round-robin over two of them, and the bus (every `PUBLISH`: the
/// announcements pipelined with writes, the heartbeats) stays on the third, so a large value
/// being read never holds a bus message behind it.
#[tokio::test]
async fn a_pool_spreads_reads_and_keeps_the_bus_on_its_own_connection() {
    let server = redis();
    let raw = raw_client(&server).await;
    let ids = |c: &[(u64, String, bool)]| c.iter().map(|(id, _, _)| *id).collect::<Vec<_>>();
    let before = ids(&new_connections(&raw, &[]).await);

    let writer = builder(&server, "pool")
        .l2_pool_size(3)
        .build()
        .await
        .unwrap();
    let mine = instance_connections(&raw, &before).await;
    assert_eq!(mine.iter().filter(|c| c.2).count(), 1, "{mine:?}");
    assert_eq!(mine.iter().filter(|c| !c.2).count(), 3, "{mine:?}");
    let w = writer.region::<str, String>("r").build().await.unwrap();
    for i in 0..20 {
        w.insert(&format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let writers = instance_connections(&raw, &before).await;
    let publishing: Vec<_> = writers
        .iter()
        .filter(|c| !c.2 && c.1 == "publish")
        .collect();
    assert_eq!(
        publishing.len(),
        1,
        "every announcement leaves from the main connection: {writers:?}"
    );

    let before = ids(&new_connections(&raw, &[]).await);
    let reader = builder(&server, "pool")
        .l2_pool_size(3)
        .build()
        .await
        .unwrap();
    let r = reader.region::<str, String>("r").build().await.unwrap();
    for i in 0..20 {
        assert_eq!(
            r.get(&format!("k{i}")).await.unwrap().as_deref(),
            Some(&format!("v{i}"))
        );
    }
    let readers = instance_connections(&raw, &before).await;
    let reading = readers.iter().filter(|c| !c.2 && c.1 == "get").count();
    assert_eq!(
        reading, 2,
        "reads take the two command connections in turn: {readers:?}"
    );

    // A pool of one: everything on the one connection, as before.
    let before = ids(&new_connections(&raw, &[]).await);
    let single = builder(&server, "pool").build().await.unwrap();
    let s = single.region::<str, String>("r").build().await.unwrap();
    assert_eq!(
        s.get("k1").await.unwrap().as_deref().map(String::as_str),
        Some("v1")
    );
    let one = instance_connections(&raw, &before).await;
    assert_eq!(one.iter().filter(|c| !c.2).count(), 1, "{one:?}");
    writer.shutdown().await;
    reader.shutdown().await;
    single.shutdown().await;
}

/// With a pool, a large write does not hold the bus behind its transfer: it goes on a command
/// connection, and its announcement on the bus connection after Redis answered it, so other
/// instances still drop their copy only once the new value is there. (Small writes stay
/// together with their announcement on the bus connection: the test above.)
#[tokio::test]
async fn with_a_pool_a_large_write_leaves_the_bus_connection_to_the_bus() {
    let server = redis();
    let raw = raw_client(&server).await;
    let before: Vec<u64> = new_connections(&raw, &[])
        .await
        .iter()
        .map(|c| c.0)
        .collect();
    let writer = builder(&server, "large")
        .l2_pool_size(3)
        .build()
        .await
        .unwrap();
    let mine = instance_connections(&raw, &before).await;
    let reader = builder(&server, "large").build().await.unwrap();
    let (w, r) = (
        writer.region::<str, String>("r").build().await.unwrap(),
        reader.region::<str, String>("r").build().await.unwrap(),
    );
    w.insert("k", "small".to_owned()).await.unwrap();
    support::caught_up(&reader, &writer).await;
    assert_eq!(
        r.get("k").await.unwrap().as_deref().map(String::as_str),
        Some("small")
    );
    let commands_before: Vec<(u64, String)> = new_connections(&raw, &before)
        .await
        .into_iter()
        .filter(|c| !c.2 && mine.iter().any(|m| m.0 == c.0))
        .map(|c| (c.0, c.1))
        .collect();

    // Random letters: LZ4 cannot shrink them below the threshold.
    let mut rng = StdRng::seed_from_u64(7);
    let large: String = (0..256 * 1024)
        .map(|_| char::from(rng.gen_range(b'a'..=b'z')))
        .collect();
    w.insert("k", large.clone()).await.unwrap();
    let after = new_connections(&raw, &before).await;
    let changed: Vec<&(u64, String, bool)> = after
        .iter()
        .filter(|c| !c.2 && !commands_before.iter().any(|b| b.0 == c.0 && b.1 == c.1))
        .filter(|c| mine.iter().any(|m| m.0 == c.0))
        .collect();
    assert!(
        changed.iter().any(|c| c.1 == "get"),
        "the write (its SET, then its fence's GET) went on a command connection: {after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|c| !c.2 && mine.iter().any(|m| m.0 == c.0) && c.1 == "publish")
            .count(),
        1,
        "its announcement left from the bus connection: {after:?}"
    );
    support::caught_up(&reader, &writer).await;
    assert_eq!(r.get("k").await.unwrap().as_deref(), Some(&large));
    writer.shutdown().await;
    reader.shutdown().await;
}
