//! The cluster's long operations: tag marks and walks, generation moves, scans and deletes
//! over every primary.

use std::{collections::BTreeMap, time::Duration};

use fred::{
    prelude::ClusterInterface,
    types::{config::Server, Value},
};

use super::{
    placement::{place, Bucket},
    script_command, unexpected, ClusterStore, TAG_PAGE,
};
use crate::{
    error::Result,
    l2::{command::Cmd, SCRIPTS},
};

impl ClusterStore {
    /// Replaces a tag group's mark in every bucket.
    pub(super) async fn set_mark(&self, key: &str, token: String, ttl_ms: u64) -> Result<()> {
        // fred's own `SET`s (routed by the mark's key, which carries its bucket's tag): a
        // node's share leaves in a few socket writes, not one per bucket.
        let commands = Bucket::all()
            .map(|b| Cmd::Set {
                key: b.mark(key),
                value: token.clone().into(),
                ttl_ms,
                nx: false,
                first: false,
            })
            .collect();
        for r in self.pipelined("redis SET (tag marks)", commands).await? {
            r?;
        }
        Ok(())
    }

    /// Empties a tag's member set in every bucket, deleting the members; `progress` gets the
    /// number dropped so far after every round (one script per bucket with members left).
    pub(super) async fn drop_tag_members(
        &self,
        set: &str,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<()> {
        let mut done = 0u64;
        let mut left: Vec<Bucket> = Bucket::all().collect();
        while !left.is_empty() {
            let commands = left
                .iter()
                .map(|b| {
                    script_command(
                        &SCRIPTS.drop_tag_bucket,
                        b.slot(),
                        vec![b.tag_set(set)],
                        vec![Value::from(TAG_PAGE.to_string())],
                    )
                })
                .collect();
            let replies = self
                .pipelined("redis EVALSHA (drop tag bucket)", commands)
                .await?;
            let mut next = Vec::new();
            for (b, r) in left.into_iter().zip(replies) {
                let (dropped, remaining) = match r? {
                    Value::Array(v) if v.len() == 2 => (v[0].as_i64(), v[1].as_i64()),
                    _ => (None, None),
                };
                let (Some(dropped), Some(remaining)) = (dropped, remaining) else {
                    return Err(unexpected("drop tag bucket"));
                };
                done += u64::try_from(dropped).unwrap_or(0);
                if remaining > 0 {
                    next.push(b);
                }
            }
            progress(done);
            left = next;
        }
        Ok(())
    }

    /// Moves a region's generation: every bucket's copy first, then the region's key.
    pub(super) async fn bump_generation(
        &self,
        key: &str,
        floor: u64,
        ttl: Duration,
    ) -> Result<u64> {
        let current = self
            .inner
            .get(key)
            .await?
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let target = floor.max(current.saturating_add(1));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.raise(Bucket::all().map(|b| (b, key)).collect(), target, ttl_ms)
            .await?;
        self.inner.bump_generation(key, target, ttl).await
    }

    /// The primaries, in a stable order.
    pub(super) fn primaries(&self) -> Vec<Server> {
        let mut nodes = self
            .inner
            .main_client()
            .cached_cluster_state()
            .map(|s| s.unique_primary_nodes())
            .unwrap_or_default();
        nodes.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        nodes
    }

    /// One page of a scan over every primary: the cursor is `{primary index}:{its cursor}`.
    pub(super) async fn scan_prefix(
        &self,
        prefix: &str,
        cursor: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        let nodes = self.primaries();
        let (index, inner) = match cursor.split_once(':') {
            Some((i, c)) => (i.parse::<usize>().unwrap_or(usize::MAX), c.to_owned()),
            None => (0, "0".to_owned()),
        };
        let Some(node) = nodes.get(index) else {
            return Ok(("0".to_owned(), Vec::new()));
        };
        let client = self.on_node(node.clone());
        let pattern = crate::l2::keyspace::glob_prefix(prefix);
        let reply: Value = self
            .inner
            .bounded("redis SCAN (cluster node)", |_| {
                fred::prelude::KeysInterface::scan_page(&client, inner, pattern, Some(count), None)
            })
            .await?;
        let (next, keys) = crate::l2::keyspace::parse_scan_reply(reply, "SCAN")?;
        let next = match (next.as_str(), index + 1 < nodes.len()) {
            ("0", true) => format!("{}:0", index + 1),
            ("0", false) => "0".to_owned(),
            (c, _) => format!("{index}:{c}"),
        };
        Ok((next, keys))
    }

    /// `UNLINK` per slot, pipelined.
    pub(super) async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for k in keys {
            let (_, placed) = place(&k);
            groups
                .entry(fred::util::redis_keyslot(placed.as_bytes()))
                .or_default()
                .push(placed);
        }
        // fred's own `UNLINK`, routed by the first key (all of one slot).
        let commands = groups.into_values().map(Cmd::Unlink).collect();
        for r in self.pipelined("redis UNLINK", commands).await? {
            r?;
        }
        Ok(())
    }
}
