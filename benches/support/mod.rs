//! What the tier benches share: the value, the L1 and L2 setups and the baselines' reads.

use std::sync::Arc;

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface};
use layercache::{LayerCache, Region};
use layercache_testkit::RedisServer;
use serde::{Deserialize, Serialize};

/// The benchmarked value: 68 bytes of bincode, stored uncompressed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    id: u64,
    name: String,
    email: String,
    roles: Vec<String>,
    score: f64,
}

/// One value, the same every time.
pub(crate) fn profile() -> Profile {
    Profile {
        id: 42,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        roles: vec!["admin".into(), "analyst".into(), "engineer".into()],
        score: 99.5,
    }
}

/// An L1-only cache holding `user:42`, and raw moka caches (the async one and the
/// synchronous one) holding the same value.
pub(crate) async fn l1_setup() -> (
    LayerCache,
    Region<str, Profile>,
    moka::future::Cache<String, Arc<Profile>>,
    moka::sync::Cache<String, Arc<Profile>>,
) {
    let cache = LayerCache::builder("bench").build().await.expect("cache");
    let region = cache
        .region::<str, Profile>("p")
        .build()
        .await
        .expect("region");
    region.insert("user:42", profile()).await.expect("insert");
    let moka_cache: moka::future::Cache<String, Arc<Profile>> = moka::future::Cache::new(10_000);
    moka_cache
        .insert("user:42".to_owned(), Arc::new(profile()))
        .await;
    let moka_sync: moka::sync::Cache<String, Arc<Profile>> = moka::sync::Cache::new(10_000);
    moka_sync.insert("user:42".to_owned(), Arc::new(profile()));
    (cache, region, moka_cache, moka_sync)
}

/// Keys the L2 comparisons cycle through: far more than their L1 holds, so reads miss L1.
pub(crate) const L2_KEYS: usize = 5000;

/// The L2 comparison's two sides: a cache whose L1 holds 50 entries, with [`L2_KEYS`] values
/// in Redis (`user:{i}`), and a raw fred client with the plain bincode bytes of the same
/// value under `raw:user:{i}`. L1 starts empty.
pub(crate) struct L2Setup {
    /// The cache (for its stats).
    pub(crate) cache: LayerCache,
    /// The region read by the layercache side.
    pub(crate) region: Region<str, Profile>,
    /// The baseline's client.
    pub(crate) raw: Client,
    /// The layercache side's keys.
    pub(crate) keys: Vec<String>,
    /// The baseline's keys.
    pub(crate) raw_keys: Vec<String>,
}

impl L2Setup {
    /// Fills Redis for both sides.
    pub(crate) async fn new(server: &RedisServer, tracking: bool) -> Self {
        let cache = LayerCache::builder("bench")
            .redis_url(server.url())
            .max_capacity(50)
            .server_assisted_tracking(tracking)
            .build()
            .await
            .expect("cache");
        let region = cache
            .region::<str, Profile>("p")
            .build()
            .await
            .expect("region");
        let raw = Builder::from_config(Config::from_url(&server.url()).expect("url"))
            .build()
            .expect("client");
        raw.init().await.expect("connect");
        let bytes =
            bincode::serde::encode_to_vec(profile(), bincode::config::standard()).expect("encode");
        let keys: Vec<String> = (0..L2_KEYS).map(|i| format!("user:{i}")).collect();
        let raw_keys: Vec<String> = keys.iter().map(|k| format!("raw:{k}")).collect();
        for (k, rk) in keys.iter().zip(&raw_keys) {
            region.insert(k, profile()).await.expect("insert");
            let _: () = raw
                .set(rk.as_str(), bytes.clone(), None, None, false)
                .await
                .expect("set");
        }
        cache.clear_l1();
        Self {
            cache,
            region,
            raw,
            keys,
            raw_keys,
        }
    }

    /// The baseline's read: a plain `GET` and a bincode decode into an `Arc`.
    pub(crate) async fn raw_read(&self, i: usize) -> Arc<Profile> {
        let bytes: Vec<u8> = self
            .raw
            .get(self.raw_keys[i % L2_KEYS].as_str())
            .await
            .expect("get");
        let (v, _): (Profile, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).expect("decode");
        Arc::new(v)
    }

    /// The layercache side's read.
    pub(crate) async fn read(&self, i: usize) -> Option<Arc<Profile>> {
        self.region
            .get(self.keys[i % L2_KEYS].as_str())
            .await
            .expect("get")
    }

    /// Checks the reads were what they claim: decoded fine, and (nearly) all served by Redis.
    pub(crate) fn check(&self) {
        let stats = self.cache.stats();
        assert_eq!(stats.decode_errors, 0, "{stats:?}");
        // Fewer than 2% of the reads may have been L1 hits, if any reads ran at all.
        assert!(
            stats.l1_hits * 50 <= stats.l2_hits.max(1),
            "the L2 comparison was served by L1: {stats:?}"
        );
    }
}
