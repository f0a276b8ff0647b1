//! The Lua scripts layercache runs in Redis (the `.lua` files beside this one), called by
//! their SHA-1 with `EVALSHA` — loaded into a server once, with `SCRIPT LOAD`, the first time
//! one is missing there (`NOSCRIPT`: a new or restarted server, or `SCRIPT FLUSH`) — and the
//! arguments of the fill script (`fill.lua`), which every conditional write goes through.

use std::sync::LazyLock;

use fred::types::{ClusterHash, CustomCommand, Value};

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
    /// Releases a load lock if it still holds our token.
    pub(crate) release_lock: Script,
    /// Extends a load lock if it still holds our token.
    pub(crate) renew_lock: Script,
    /// Deletes a page of a tag's members and takes them out of its set, atomically.
    pub(crate) drop_tag_page: Script,
}

/// The scripts.
pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    fill: Script::new(include_str!("scripts/fill.lua")),
    load_generation: Script::new(include_str!("scripts/load_generation.lua")),
    bump_generation: Script::new(include_str!("scripts/bump_generation.lua")),
    release_lock: Script::new(include_str!("scripts/release_lock.lua")),
    renew_lock: Script::new(include_str!("scripts/renew_lock.lua")),
    drop_tag_page: Script::new(include_str!("scripts/drop_tag_page.lua")),
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

/// How a write treats what is already at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Overwrite (an explicit `insert`, or a foreign Redis type).
    Set,
    /// Only if absent.
    Nx,
    /// Only if the key still holds what was seen.
    Cas(SeenEntry),
}

/// What a write must find in Redis to land (see `fill.lua`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteCondition<'a> {
    /// How it treats what the key holds.
    pub(crate) mode: &'a WriteMode,
    /// A load's tags' marks as read before it ran (none for a write).
    pub(crate) marks: &'a [(String, Option<Vec<u8>>)],
    /// The region's generation the key was made for (writes), or none (loads).
    pub(crate) fence: Option<u64>,
    /// The source version of a versioned write: refused if the key holds a higher one.
    pub(crate) version: Option<u64>,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    /// It landed.
    Written,
    /// Its condition failed (the key or one of its tags' marks changed): the newer state wins.
    Refused,
    /// The region's generation is no longer the one its key was made for.
    Fenced,
    /// The key holds a value with a higher source version.
    Older,
}

/// What a read saw at a key, enough to tell whether it is still there: its length and its
/// first [`HEADER_LEN`](crate::envelope::HEADER_LEN) bytes (for an envelope, the header, which
/// carries a CRC of the whole entry). The whole value need not travel back to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeenEntry {
    prefix: Vec<u8>,
    len: usize,
}

impl SeenEntry {
    /// Remembers `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let n = bytes.len().min(crate::envelope::HEADER_LEN);
        Self {
            prefix: bytes[..n].to_vec(),
            len: bytes.len(),
        }
    }
}

impl WriteMode {
    /// The mode's name in the fill script (and in spans).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Nx => "nx",
            Self::Cas(_) => "cas",
        }
    }
}

/// The fill script's reply.
pub(crate) fn filled(reply: i64) -> Filled {
    match reply {
        1 => Filled::Written,
        -1 => Filled::Fenced,
        -2 => Filled::Older,
        _ => Filled::Refused,
    }
}

/// The keys and arguments of a fill script call (see `fill.lua` for their order).
pub(crate) fn fill_command(
    key: &str,
    value: Vec<u8>,
    ttl_ms: u64,
    tags: Vec<String>,
    guard: WriteCondition<'_>,
    generation_key: &str,
) -> (Vec<String>, Vec<Value>) {
    let WriteCondition {
        mode,
        marks,
        fence,
        version,
    } = guard;
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
