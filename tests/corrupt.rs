//! Corrupt and foreign bytes planted under a cache key read as misses, are counted by reason,
//! are replaced by a fresh load, and never make the cache allocate anything large.
//!
//! This binary holds a single test because it caps the whole process's heap: a tracking
//! allocator refuses (and so aborts the process on) any allocation that would take the heap
//! 64 MiB above where it stood, so a decoder that trusted a forged 4 GiB length could not pass.

#[expect(
    dead_code,
    reason = "helpers shared by all test binaries; this one uses some"
)]
mod support;

use std::alloc::System;

use cap::Cap;
use fred::prelude::{Client, KeysInterface};
use layercache::{envelope, Corruption, LayerCache, Region};
use support::{builder, raw_client, redis};

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const HEADROOM: usize = 64 << 20;

/// A header + payload with a correct checksum, key check for `key` and type check `fp`, so
/// only the deeper checks can reject it.
fn forged(flags: u8, raw_len: u32, payload: &[u8], (key, fp): (&str, u64)) -> Vec<u8> {
    let mut b = Vec::with_capacity(envelope::HEADER_LEN + payload.len());
    b.extend_from_slice(&envelope::MAGIC);
    b.push(envelope::FORMAT_VERSION);
    b.push(1); // bincode
    b.push(flags);
    b.push(0);
    b.extend_from_slice(&0u64.to_le_bytes()); // created
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // expires
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // refresh at
    b.extend_from_slice(&0u32.to_le_bytes()); // load time
    b.extend_from_slice(&raw_len.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&envelope::key_check(key.as_bytes()).to_le_bytes());
    b.extend_from_slice(&fp.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..envelope::CHECKED]);
    h.update(payload);
    b.extend_from_slice(&h.finalize().to_le_bytes());
    b.extend_from_slice(payload);
    b
}

async fn plant(raw: &Client, region: &Region<str, String>, key: &str, bytes: Vec<u8>) {
    let _: () = raw
        .set(region.redis_key(key).unwrap(), bytes, None, None, false)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_misses_counted_by_reason_and_reloaded() {
    let server = redis();
    let raw = raw_client(&server).await;
    let cache: LayerCache = builder(&server, "bad").build().await.unwrap();
    let region = cache.region::<str, String>("r").build().await.unwrap();

    // A genuine entry to mutate.
    let good_value = "a perfectly fine value ".repeat(100);
    region.insert("good", good_value.clone()).await.unwrap();
    let good: Vec<u8> = raw.get(region.redis_key("good").unwrap()).await.unwrap();
    assert_ne!(
        good[6] & envelope::FLAG_LZ4,
        0,
        "the sample must be compressed"
    );

    let fp = region.type_fingerprint();
    let key_of = |k: &str| region.redis_key(k).unwrap();
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let mut newer = good.clone();
    newer[4] = envelope::FORMAT_VERSION + 1;
    let mut other_codec = good.clone();
    other_codec[5] = 2;
    // bincode for a String whose length varint claims u64::MAX bytes.
    let huge_string_claim = [253u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

    let cases: Vec<(&str, Vec<u8>, Corruption)> = vec![
        ("empty", Vec::new(), Corruption::NotAnEnvelope),
        ("random", random(300), Corruption::NotAnEnvelope),
        (
            "truncated",
            good[..good.len() - 7].to_vec(),
            Corruption::BadLength,
        ),
        (
            "header_only",
            good[..envelope::HEADER_LEN].to_vec(),
            Corruption::BadLength,
        ),
        ("bit_flipped", flipped, Corruption::Checksum),
        ("newer_format", newer, Corruption::UnknownVersion),
        ("other_codec", other_codec, Corruption::CodecMismatch),
        (
            "forged_lz4_4gib",
            forged(
                envelope::FLAG_LZ4,
                u32::MAX,
                &random(64),
                (&key_of("forged_lz4_4gib"), fp),
            ),
            Corruption::BadLength,
        ),
        (
            "forged_lz4_garbage",
            forged(
                envelope::FLAG_LZ4,
                10_000,
                &[0xff; 64],
                (&key_of("forged_lz4_garbage"), fp),
            ),
            Corruption::Decompress,
        ),
        (
            "huge_bincode_claim",
            forged(
                0,
                9,
                &huge_string_claim,
                (&key_of("huge_bincode_claim"), fp),
            ),
            Corruption::Deserialize,
        ),
        // A valid envelope of another key, copied here: never served as this key's value.
        ("copied_from_good", good.clone(), Corruption::WrongKey),
        // Written by another value type under this key: a miss, never a wrong value.
        (
            "another_type",
            forged(0, 1, &[0], (&key_of("another_type"), fp ^ 1)),
            Corruption::TypeMismatch,
        ),
    ];

    let base = ALLOC.allocated();
    ALLOC.set_limit(base + HEADROOM).unwrap();

    for (key, bytes, reason) in &cases {
        plant(&raw, &region, key, bytes.clone()).await;
        let before = cache.stats();
        assert!(
            region.get(*key).await.unwrap().is_none(),
            "{key} read as a value"
        );
        let after = cache.stats();
        assert_eq!(
            after.decode_errors_for(*reason),
            before.decode_errors_for(*reason) + 1,
            "{key}: expected reason {reason}"
        );
        assert_eq!(after.decode_errors, before.decode_errors + 1, "{key}");

        // The loader replaces it, except an entry of a newer format, which is left alone.
        let fresh = format!("fresh {key}");
        let fresh2 = fresh.clone();
        let v = region
            .get_or_load(
                *key,
                move |_| async move { Ok::<_, std::io::Error>(fresh2) },
            )
            .await
            .unwrap();
        assert_eq!(*v, fresh);
        let stored: Vec<u8> = raw.get(region.redis_key(*key).unwrap()).await.unwrap();
        if *reason == Corruption::UnknownVersion {
            assert_eq!(
                &stored, bytes,
                "{key}: an entry of a newer format was overwritten"
            );
        } else {
            assert!(stored.ends_with(fresh.as_bytes()), "{key}: not replaced");
        }
    }

    // Another Redis type at our key (a list): a miss counted by its reason, then replaced.
    let list_key = region.redis_key("list").unwrap();
    support::cmd(&raw, "RPUSH", &[&list_key, "x"]).await;
    assert!(region.get("list").await.unwrap().is_none());
    assert_eq!(cache.stats().decode_errors_for(Corruption::WrongType), 1);
    let v = region
        .get_or_load("list", |_| async {
            Ok::<_, std::io::Error>("fresh list".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(&*v, "fresh list");
    let stored: Vec<u8> = raw.get(list_key.as_str()).await.unwrap();
    assert!(stored.ends_with(b"fresh list"), "the list was not replaced");
    assert_eq!(
        cache.stats().l2_errors,
        0,
        "a wrong type is not a Redis failure"
    );

    ALLOC.set_limit(usize::MAX).unwrap();
    assert!(
        ALLOC.max_allocated() < base + HEADROOM,
        "peak heap {} bytes",
        ALLOC.max_allocated()
    );
    // The good entry is untouched.
    assert_eq!(*region.get("good").await.unwrap().unwrap(), good_value);
}
