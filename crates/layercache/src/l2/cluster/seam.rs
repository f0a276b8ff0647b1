//! The cluster store as the engine's remote store: each method maps its keys to their buckets
//! and calls the cluster's own operations or the one-server ones on the placed keys.

use crate::rate::{RateCall, RateReply};
use crate::remote::FencedLock;
use std::time::Duration;

use tracing::Instrument;

use super::{
    placement::{bucket_of, place},
    ClusterStore,
};
use crate::{
    error::Result,
    remote::{Announcement, BatchWrite, BoxFuture, Filled, RemoteStore, Write},
};

impl RemoteStore for ClusterStore {
    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    fn breaker_open(&self) -> bool {
        self.inner.breaker_open()
    }

    fn locate(&self, key: &str) -> String {
        place(key).1
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { self.inner.get(&place(key).1).await })
    }

    fn get_meta<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.inner.get(key))
    }

    fn set_meta<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.inner.set(key, value, ttl_ms, false).await.map(|_| ()) })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Vec<crate::remote::Read>> {
        let span = crate::l2::spans::get_many_span(keys.len(), false);
        Box::pin(ClusterStore::get_many(self, keys).instrument(span))
    }

    fn get_and_touch_many<'a>(
        &'a self,
        keys: &'a [String],
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<crate::remote::Read>> {
        let span = crate::l2::spans::get_many_span(keys.len(), true);
        Box::pin(ClusterStore::get_and_touch_many(self, keys, ttl_ms).instrument(span))
    }

    fn get_and_touch<'a>(
        &'a self,
        key: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move { self.inner.getex(&place(key).1, ttl_ms).await })
    }

    fn touch<'a>(&'a self, key: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.inner.pexpire(&place(key).1, ttl_ms).await })
    }

    fn fill<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Filled>> {
        Box::pin(ClusterStore::fill(self, write))
    }

    fn fill_many<'a>(
        &'a self,
        batch: BatchWrite<'a>,
    ) -> BoxFuture<'a, Result<crate::remote::BatchFilled>> {
        Box::pin(ClusterStore::fill_many(self, batch))
    }

    fn fill_announced<'a>(
        &'a self,
        write: Write<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(Filled, Result<u64>)>> {
        Box::pin(async move {
            let filled = ClusterStore::fill(self, write).await?;
            let (seq, published) = self.inner.publish_sequenced(announcement).await;
            Ok((filled, published.map(|()| seq)))
        })
    }

    fn fill_many_announced<'a>(
        &'a self,
        batch: BatchWrite<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(crate::remote::BatchFilled, Result<u64>)>> {
        Box::pin(async move {
            let filled = ClusterStore::fill_many(self, batch).await?;
            let (seq, published) = self.inner.publish_sequenced(announcement).await;
            Ok((filled, published.map(|()| seq)))
        })
    }

    fn publish<'a>(&'a self, announcement: Announcement<'a>) -> BoxFuture<'a, (u64, Result<()>)> {
        Box::pin(self.inner.publish_sequenced(announcement))
    }

    fn marks<'a>(
        &'a self,
        data_key: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>>> {
        let b = bucket_of(data_key);
        let copies = keys.iter().map(|k| b.mark(k)).collect();
        Box::pin(self.inner.mget("redis MGET (tag marks)", copies))
    }

    fn marks_many<'a>(
        &'a self,
        data_keys: &'a [String],
        keys: Vec<String>,
    ) -> BoxFuture<'a, Vec<crate::remote::MarkValues>> {
        Box::pin(self.marks_by_bucket(data_keys, keys))
    }

    fn set_mark<'a>(
        &'a self,
        key: &'a str,
        token: String,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ClusterStore::set_mark(self, key, token, ttl_ms))
    }

    fn tag_members_page<'a>(
        &'a self,
        _set: &'a str,
        _cursor: &'a str,
        _count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        // Tags are walked bucket by bucket (`drop_tag_members`), never by one set's pages.
        Box::pin(async { Ok(("0".to_owned(), Vec::new())) })
    }

    fn drop_tag_page<'a>(
        &'a self,
        _set: &'a str,
        _members: Vec<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn drop_tag_members<'a>(
        &'a self,
        set: &'a str,
        progress: &'a mut (dyn FnMut(u64) + Send),
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(ClusterStore::drop_tag_members(self, set, progress))
    }

    fn get_or_lock<'a>(
        &'a self,
        key: &'a str,
        lock: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<(Option<Vec<u8>>, bool)>> {
        Box::pin(async move {
            let (_, key) = place(key);
            let (_, lock) = place(lock);
            self.inner.get_or_lock(&key, &lock, token, ttl_ms).await
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.inner.try_lock(&place(key).1, token, ttl_ms).await })
    }

    fn tracking_client(&self) -> Option<fred::prelude::Client> {
        // The clustered client: one connection per primary, each tracked (see `l2/tracking.rs`).
        RemoteStore::tracking_client(&self.inner)
    }

    fn try_lock_many<'a>(
        &'a self,
        keys: &'a [String],
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Vec<Result<bool>>> {
        Box::pin(async move {
            let placed: Vec<String> = keys.iter().map(|k| place(k).1).collect();
            self.inner.try_lock_many(&placed, token, ttl_ms).await
        })
    }

    fn renew_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.inner.renew_lock(&place(key).1, token, ttl_ms).await })
    }

    fn release_lock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.inner.release_lock(&place(key).1, token).await })
    }

    fn acquire_fenced<'a>(
        &'a self,
        lock: FencedLock<'a>,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        // A user lock's keys carry their own hash tag (see `crate::lock`): placed as they are.
        RemoteStore::acquire_fenced(&self.inner, lock, ttl_ms)
    }

    fn rate_limit<'a>(&'a self, call: RateCall<'a>) -> BoxFuture<'a, Result<RateReply>> {
        // A limiter's keys carry their own hash tag (see `crate::ratelimit`).
        RemoteStore::rate_limit(&self.inner, call)
    }

    fn load_generation<'a>(
        &'a self,
        key: &'a str,
        initial: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(self.inner.load_generation(key, initial, ttl))
    }

    fn bump_generation<'a>(
        &'a self,
        key: &'a str,
        floor: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(ClusterStore::bump_generation(self, key, floor, ttl))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        Box::pin(ClusterStore::scan_prefix(self, prefix, cursor, count))
    }

    fn delete_many<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(ClusterStore::delete_many(self, keys))
    }

    fn quit<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(self.inner.quit())
    }
}
