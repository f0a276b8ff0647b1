//! The Lua scripts layercache runs in Redis (the `.lua` files beside this one), called by
//! their SHA-1 with `EVALSHA` — loaded into a server once, with `SCRIPT LOAD`, the first time
//! one is missing there (`NOSCRIPT`: a new or restarted server, or `SCRIPT FLUSH`) — and the
//! arguments of the fill script (`fill.lua`), which every conditional write goes through.

use std::sync::LazyLock;

use fred::types::{ClusterHash, CustomCommand, Value};

use crate::remote::{BatchWrite, Filled, Write, WriteCondition, WriteMode};

/// One script: its text, and the SHA-1 Redis knows it by.
#[derive(Debug)]
pub(crate) struct Script {
    /// The Lua source.
    pub(crate) lua: &'static str,
    /// Its SHA-1, in lowercase hex (what `EVALSHA` takes and `SCRIPT LOAD` returns).
    pub(crate) sha1: String,
}

impl Script {
    fn new(lua: &'static str) -> Self {
        Self {
            lua,
            sha1: sha1_smol::Sha1::from(lua).digest().to_string(),
        }
    }
}

/// Every script, hashed once per process.
#[derive(Debug)]
pub(crate) struct Scripts {
    /// Conditional writes of entries (see `fill.lua` and [`WriteCondition`]).
    pub(crate) fill: Script,
    /// Reads (or creates) a region's generation and refreshes its TTL.
    pub(crate) load_generation: Script,
    /// Moves a region's generation forward.
    pub(crate) bump_generation: Script,
    /// Releases a lock if it still holds our token.
    pub(crate) release_lock: Script,
    /// Takes a lock with the next fencing token of its name ([`crate::Lock`]).
    pub(crate) acquire_lock: Script,
    /// One check of a rate limit ([`crate::ratelimit`]).
    pub(crate) rate_limit: Script,
    /// Extends a load lock if it still holds our token.
    pub(crate) renew_lock: Script,
    /// Deletes a page of a tag's members and takes them out of its set, atomically.
    pub(crate) drop_tag_page: Script,
    /// Several writes of one region, with the tags they share (see `fill_batch.lua`).
    pub(crate) fill_batch: Script,
    /// A read that takes the load lock when it finds nothing.
    pub(crate) get_or_lock: Script,
    pub(crate) raise_generation: Script,
    pub(crate) drop_tag_bucket: Script,
    /// Deletes a key holding another Redis type (see `drop_foreign.lua`).
    pub(crate) drop_foreign: Script,
}

impl Scripts {
    /// Every script (to load them all on a cluster's primaries).
    pub(crate) fn all(&self) -> [&Script; 13] {
        [
            &self.acquire_lock,
            &self.rate_limit,
            &self.fill,
            &self.load_generation,
            &self.bump_generation,
            &self.release_lock,
            &self.renew_lock,
            &self.drop_tag_page,
            &self.fill_batch,
            &self.get_or_lock,
            &self.raise_generation,
            &self.drop_tag_bucket,
            &self.drop_foreign,
        ]
    }
}

/// The scripts.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    fill: Script::new(include_str!("scripts/fill.lua")),
    load_generation: Script::new(include_str!("scripts/load_generation.lua")),
    bump_generation: Script::new(include_str!("scripts/bump_generation.lua")),
    release_lock: Script::new(include_str!("scripts/release_lock.lua")),
    acquire_lock: Script::new(include_str!("scripts/acquire_lock.lua")),
    rate_limit: Script::new(include_str!("scripts/rate_limit.lua")),
    renew_lock: Script::new(include_str!("scripts/renew_lock.lua")),
    drop_tag_page: Script::new(include_str!("scripts/drop_tag_page.lua")),
    fill_batch: Script::new(include_str!("scripts/fill_batch.lua")),
    get_or_lock: Script::new(include_str!("scripts/get_or_lock.lua")),
    raise_generation: Script::new(include_str!("scripts/raise_generation.lua")),
    drop_tag_bucket: Script::new(include_str!("scripts/drop_tag_bucket.lua")),
    drop_foreign: Script::new(include_str!("scripts/drop_foreign.lua")),
});

/// `EVALSHA` of `script` as a custom command (so it carries the client's options: timeout,
/// fail-fast), routed by the first key's hash slot, with its arguments: the hash, the key
/// count, the keys, the arguments.
pub(crate) fn evalsha(
    script: &Script,
    keys: Vec<String>,
    args: Vec<Value>,
) -> (CustomCommand, Vec<Value>) {
    let slot = keys.first().map_or(ClusterHash::Random, |k| {
        ClusterHash::Custom(fred::util::redis_keyslot(k.as_bytes()))
    });
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(Value::from(script.sha1.as_str()));
    all.push(Value::from(keys.len().to_string()));
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    (CustomCommand::new_static("EVALSHA", slot, false), all)
}

/// Whether a Redis error is `NOSCRIPT`: the server does not have the script (yet).
pub(crate) fn is_noscript(e: &fred::error::Error) -> bool {
    e.details().contains("NOSCRIPT")
}

/// The fill script's reply.
pub(crate) fn filled(reply: i64) -> Filled {
    match reply {
        1 => Filled::Written,
        // -3: the generation key is missing or behind the fence (see fill.lua).
        -1 | -3 => Filled::Fenced,
        -2 => Filled::Older,
        _ => Filled::Refused,
    }
}

/// The keys and arguments of a batch fill (see `fill_batch.lua` for their order): writes of
/// one region under one fence, recorded in the batch's tag sets, each compared with the
/// batch's marks.
pub(crate) fn fill_batch_command(batch: &mut BatchWrite<'_>) -> (Vec<String>, Vec<Value>) {
    let m = batch.marks.len();
    let mut keys = Vec::with_capacity(1 + batch.entries.len() + batch.tags.len() + m);
    let mut args = Vec::with_capacity(3 + (6 + m) * batch.entries.len());
    keys.push(batch.generation_key.to_owned());
    args.push(Value::from(
        batch.fence.map_or_else(String::new, |g| g.to_string()),
    ));
    for entry in &mut batch.entries {
        keys.push(entry.key.clone());
        let (expected, len) = match &entry.mode {
            WriteMode::Set | WriteMode::Nx => (Vec::new(), 0),
            WriteMode::Cas(seen) => (seen.prefix.clone(), seen.len),
        };
        args.extend([
            Value::Bytes(std::mem::take(&mut entry.value).into()),
            Value::from(entry.ttl_ms.to_string()),
            Value::from(entry.mode.name()),
            Value::Bytes(expected.into()),
            Value::from(len.to_string()),
            Value::Bytes(
                entry
                    .version
                    .map_or_else(Vec::new, |v| v.to_be_bytes().to_vec())
                    .into(),
            ),
        ]);
        // The marks' values this entry's load read (empty for none, as for a missing one).
        let mut expected = std::mem::take(&mut entry.marks).into_iter();
        args.extend(
            (0..m).map(|_| Value::Bytes(expected.next().flatten().unwrap_or_default().into())),
        );
    }
    keys.extend(batch.tags.iter().cloned());
    keys.extend(batch.marks.iter().cloned());
    args.push(Value::from(batch.tags.len().to_string()));
    args.push(Value::from(m.to_string()));
    (keys, args)
}

/// The keys and arguments of a fill script call (see `fill.lua` for their order).
pub(crate) fn fill_command(write: Write<'_>) -> (Vec<String>, Vec<Value>) {
    let Write {
        key,
        value,
        ttl_ms,
        tags,
        condition,
        generation_key,
    } = write;
    let WriteCondition {
        mode,
        marks,
        fence,
        version,
    } = condition;
    let n = tags.len();
    let mut keys = Vec::with_capacity(2 + n + marks.len());
    keys.push(key.to_owned());
    keys.extend(tags);
    keys.extend(marks.iter().map(|(k, _)| k.clone()));
    if fence.is_some() {
        keys.push(generation_key.to_owned());
    }
    let (expected, len) = match mode {
        WriteMode::Set | WriteMode::Nx => (Vec::new(), 0),
        WriteMode::Cas(seen) => (seen.prefix.clone(), seen.len),
    };
    let mut args: Vec<Value> = vec![
        Value::Bytes(value.into()),
        Value::from(ttl_ms.to_string()),
        Value::from(mode.name()),
        Value::Bytes(expected.into()),
        Value::from(len.to_string()),
        Value::from(n.to_string()),
        Value::from(marks.len().to_string()),
        Value::from(fence.map_or_else(String::new, |g| g.to_string())),
        Value::Bytes(
            version
                .map_or_else(Vec::new, |v| v.to_be_bytes().to_vec())
                .into(),
        ),
    ];
    args.extend(
        marks
            .iter()
            .map(|(_, m)| Value::Bytes(m.clone().unwrap_or_default().into())),
    );
    (keys, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_hashed_as_redis_hashes_it() {
        // SHA-1 of "return 1", as `SCRIPT LOAD "return 1"` answers.
        assert_eq!(
            Script::new("return 1").sha1,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        let all = [
            &SCRIPTS.fill,
            &SCRIPTS.load_generation,
            &SCRIPTS.bump_generation,
            &SCRIPTS.release_lock,
            &SCRIPTS.renew_lock,
            &SCRIPTS.drop_tag_page,
            &SCRIPTS.fill_batch,
            &SCRIPTS.get_or_lock,
        ];
        for s in all {
            assert_eq!(s.sha1.len(), 40);
            assert!(!s.lua.is_empty());
        }
    }

    #[test]
    fn evalsha_carries_the_hash_the_keys_and_the_arguments_in_order() {
        let (_, all) = evalsha(
            &SCRIPTS.renew_lock,
            vec!["k".to_owned()],
            vec![Value::from("t"), Value::from("5")],
        );
        let all: Vec<String> = all.into_iter().map(|v| v.as_string().unwrap()).collect();
        assert_eq!(all, [SCRIPTS.renew_lock.sha1.as_str(), "1", "k", "t", "5"]);
    }
}
