//! The cache-aside write the write comparisons measure against (`compare`, `allocs`).

use fred::prelude::KeysInterface;

use crate::support::{profile, L2Setup};

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
