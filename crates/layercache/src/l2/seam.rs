//! Redis as the engine's remote store: each method of the seam is one of the bounded calls
//! beside this file.

use std::time::Duration;

use super::RedisStore;
use crate::{
    error::Result,
    remote::{Announcement, BoxFuture, Filled, RemoteStore, Write},
};

impl RemoteStore for RedisStore {
    fn is_connected(&self) -> bool {
        RedisStore::is_connected(self)
    }

    fn breaker_open(&self) -> bool {
        RedisStore::breaker_open(self)
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(RedisStore::get(self, key))
    }

    fn get_and_touch<'a>(
        &'a self,
        key: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(self.getex(key, ttl_ms))
    }

    fn touch<'a>(&'a self, key: &'a str, ttl_ms: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.pexpire(key, ttl_ms))
    }

    fn fill<'a>(&'a self, write: Write<'a>) -> BoxFuture<'a, Result<Filled>> {
        Box::pin(RedisStore::fill(self, write))
    }

    fn fill_announced<'a>(
        &'a self,
        write: Write<'a>,
        announcement: Announcement<'a>,
    ) -> BoxFuture<'a, Result<(Filled, Result<u64>)>> {
        Box::pin(RedisStore::fill_announced(self, write, announcement))
    }

    fn publish<'a>(&'a self, announcement: Announcement<'a>) -> BoxFuture<'a, (u64, Result<()>)> {
        Box::pin(self.publish_sequenced(announcement))
    }

    fn marks<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>>> {
        Box::pin(RedisStore::marks(self, keys))
    }

    fn set_mark<'a>(
        &'a self,
        key: &'a str,
        token: String,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RedisStore::set_mark(self, key, token, ttl_ms))
    }

    fn tag_members_page<'a>(
        &'a self,
        set: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        Box::pin(self.sscan_page(set, cursor, count))
    }

    fn drop_tag_page<'a>(
        &'a self,
        set: &'a str,
        members: Vec<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(RedisStore::drop_tag_page(self, set, members))
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RedisStore::try_lock(self, key, token, ttl_ms))
    }

    fn renew_lock<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(RedisStore::renew_lock(self, key, token, ttl_ms))
    }

    fn release_lock<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(RedisStore::release_lock(self, key, token))
    }

    fn load_generation<'a>(
        &'a self,
        key: &'a str,
        initial: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(RedisStore::load_generation(self, key, initial, ttl))
    }

    fn bump_generation<'a>(
        &'a self,
        key: &'a str,
        floor: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(RedisStore::bump_generation(self, key, floor, ttl))
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &'a str,
        cursor: &'a str,
        count: u32,
    ) -> BoxFuture<'a, Result<(String, Vec<String>)>> {
        Box::pin(RedisStore::scan_prefix(self, prefix, cursor, count))
    }

    fn delete_many<'a>(&'a self, keys: Vec<String>) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.unlink_many(keys))
    }

    fn quit<'a>(&'a self) -> BoxFuture<'a, ()> {
        Box::pin(RedisStore::quit(self))
    }
}
