//! The two sides of the write comparisons (`compare`, `allocs`).

use fred::prelude::KeysInterface;

use crate::support::{profile, L2Setup, L2_KEYS};

/// What hand-written cache-aside does to store a value: a bincode encode and a `SET … PX`.
pub(crate) async fn raw_write(setup: &L2Setup, key: &str) {
    let bytes =
        bincode::serde::encode_to_vec(profile(), bincode::config::standard()).expect("encode");
    let _: () = setup
        .raw
        .set(
            key,
            bytes,
            Some(fred::types::Expiration::PX(60_000)),
            None,
            false,
        )
        .await
        .expect("set");
}

/// Our side of the write comparisons: `Region::insert` of the profile value under key `i`.
pub(crate) async fn insert(setup: &L2Setup, i: usize) {
    let key = setup.keys[i % L2_KEYS].as_str();
    setup.region.insert(key, profile()).await.expect("insert");
}
