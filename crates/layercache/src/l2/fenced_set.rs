//! A fenced write without a script: `SET` (`NX`) and a `GET` of the region's generation key,
//! pipelined, for writes that ask nothing else of the key (no compare-and-set, no tags, no
//! marks, no source version) — every plain `insert` and `invalidate`.
//!
//! Why it keeps the fill script's promise: the script checks the generation, then sets, in one
//! atomic step, so a writer that has not heard of an `invalidate_all` never writes into the
//! abandoned key space *and reports success*. Here the `SET` runs first and the `GET` right
//! after it on the same connection. Generations only rise (a lost one comes back as the current
//! Unix time in ms, above any counter before it), and the writer's fence was read from Redis
//! before the `SET` left, so when the `GET` answers the fence the generation was the fence all
//! the way from the `SET` to the `GET`: the value landed in the live key space. Any other answer
//! (higher: moved; lower or missing: lost or behind) is reported as fenced, as the script
//! reports it, and the caller writes again under the current generation; the copy left in the
//! abandoned key space is never read and expires with its TTL.
//!
//! A batch of plain writes (`insert_many`, `get_or_load_many`'s fills over nothing) goes the
//! same way: a `SET` per entry, then one `GET` of the generation key (on a cluster, per bucket,
//! of the bucket's copy), so the `GET` answering the fence shows every `SET` before it landed in
//! the live key space. Hot-path note: Redis's time per entry falls from ~5.6 µs in the batch
//! script to ~2.5 µs, for ~5 µs of fred's client CPU per extra command (docs/BENCHMARKS.md,
//! "Batch writes without a script").
//!
//! Hot-path note: Redis 7.0 charged ~29 µs for the fill script against ~5 µs for a `SET` on this
//! machine (`INFO commandstats`); the `GET` of a short key adds ~1 µs. See docs/BENCHMARKS.md.

use fred::types::Value;

use super::command::Cmd;
use crate::remote::{BatchWrite, Filled, Write, WriteMode};

/// The commands of a write with a plain condition, or `None` when the condition needs the fill
/// script. The generation key's `GET` comes last when there is a fence.
pub(super) type Commands = Vec<Cmd>;

/// Whether `write` asks nothing of the key beyond "set" or "set if absent" and the fence.
pub(super) fn plain(write: &Write<'_>) -> bool {
    let c = &write.condition;
    matches!(c.mode, WriteMode::Set | WriteMode::Nx)
        && c.version.is_none()
        && c.marks.is_empty()
        && write.tags.is_empty()
}

/// The `SET … PX ttl [NX]` of a plain write and, with a fence, the `GET` of the generation key.
pub(super) fn commands(write: Write<'_>, alone: bool) -> Commands {
    let mut commands = vec![set(
        write.key.to_owned(),
        write.value,
        write.ttl_ms,
        write.condition.mode,
        alone,
    )];
    if write.condition.fence.is_some() {
        commands.push(generation_get(write.generation_key));
    }
    commands
}

/// `SET key value PX ttl`, with `NX` for "set if absent".
fn set(key: String, value: Vec<u8>, ttl_ms: u64, mode: &WriteMode, first: bool) -> Cmd {
    Cmd::Set {
        first,
        key,
        value: value.into(),
        ttl_ms,
        nx: *mode == WriteMode::Nx,
    }
}

/// The fence's read: `GET` of the generation key.
fn generation_get(key: &str) -> Cmd {
    Cmd::Get(key.to_owned())
}

/// Whether every entry of `batch` is plain: "set" or "set if absent", no source version (a
/// batch carries no tags or marks).
pub(super) fn plain_batch(batch: &BatchWrite<'_>) -> bool {
    batch.tags.is_empty() && batch.marks.is_empty() && batch.entries.iter().all(plain_entry)
}

/// Whether one entry of a batch is plain (see [`plain_batch`]).
pub(super) fn plain_entry(entry: &crate::remote::BatchEntry) -> bool {
    matches!(entry.mode, WriteMode::Set | WriteMode::Nx) && entry.version.is_none()
}

/// The `SET … PX ttl [NX]` of every entry of a plain batch, in order, and, with a fence, the
/// `GET` of the generation key after them.
pub(super) fn batch_commands(batch: BatchWrite<'_>) -> Commands {
    let mut commands: Commands = batch
        .entries
        .into_iter()
        .map(|e| set(e.key, e.value, e.ttl_ms, &e.mode, false))
        .collect();
    if batch.fence.is_some() {
        commands.push(generation_get(batch.generation_key));
    }
    commands
}

/// What the replies of [`commands`] say: written when the `SET` landed and the generation read
/// after it is the fence; fenced when the generation is anything else; refused when a `SET NX`
/// found the key taken.
pub(super) fn outcome(set: &Value, generation: Option<&Value>, fence: Option<u64>) -> Filled {
    if let Some(fence) = fence {
        if !generation.is_some_and(|g| at_fence(g, fence)) {
            return Filled::Fenced;
        }
    }
    if set.is_null() {
        Filled::Refused
    } else {
        Filled::Written
    }
}

/// Whether the generation read after the write is the fence itself.
pub(super) fn at_fence(generation: &Value, fence: u64) -> bool {
    generation
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|g| g == fence)
}

/// Whether the generation read after the write is missing or below the fence (a lost
/// generation; on a cluster, a bucket's copy not caught up yet), rather than moved past it.
pub(super) fn behind(generation: &Value, fence: u64) -> bool {
    generation
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .is_none_or(|g| g < fence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::WriteCondition;

    fn write<'a>(mode: &'a WriteMode, fence: Option<u64>) -> Write<'a> {
        Write {
            key: "lc:r:7:k",
            value: b"v".to_vec(),
            ttl_ms: 500,
            tags: Vec::new(),
            condition: WriteCondition {
                mode,
                marks: &[],
                fence,
                version: None,
            },
            generation_key: "lc:r:gen",
        }
    }

    #[test]
    fn only_writes_that_ask_nothing_else_are_plain() {
        assert!(plain(&write(&WriteMode::Set, Some(7))));
        assert!(plain(&write(&WriteMode::Nx, None)));
        let cas = WriteMode::Cas(crate::remote::SeenEntry::of(b"x"));
        assert!(!plain(&write(&cas, Some(7))));
        let mut versioned = write(&WriteMode::Set, Some(7));
        versioned.condition.version = Some(3);
        assert!(!plain(&versioned));
        let mut tagged = write(&WriteMode::Set, Some(7));
        tagged.tags = vec!["t".into()];
        assert!(!plain(&tagged));
        let marks = [("m".to_owned(), None)];
        let mut marked = write(&WriteMode::Set, Some(7));
        marked.condition.marks = &marks;
        assert!(!plain(&marked));
    }

    #[test]
    fn the_fence_adds_a_get_of_the_generation_key_and_nx_its_flag() {
        let c = commands(write(&WriteMode::Nx, Some(7)), true);
        assert_eq!(c.len(), 2);
        assert!(
            matches!(&c[0], Cmd::Set { key, ttl_ms: 500, nx: true, first: true, .. } if key == "lc:r:7:k"),
            "{c:?}"
        );
        assert!(matches!(&c[1], Cmd::Get(k) if k == "lc:r:gen"), "{c:?}");
        assert!(
            matches!(
                &commands(write(&WriteMode::Set, Some(7)), false)[0],
                Cmd::Set {
                    nx: false,
                    first: false,
                    ..
                }
            ),
            "SET without NX; among other writes, not sent alone first"
        );
        assert_eq!(commands(write(&WriteMode::Set, None), true).len(), 1);
    }

    #[test]
    fn only_the_fence_itself_after_the_set_counts_as_written() {
        let ok = Value::from("OK");
        let g = |s: &str| Value::from(s);
        assert_eq!(outcome(&ok, Some(&g("7")), Some(7)), Filled::Written);
        assert_eq!(outcome(&ok, Some(&g("8")), Some(7)), Filled::Fenced);
        assert_eq!(outcome(&ok, Some(&g("6")), Some(7)), Filled::Fenced);
        assert_eq!(outcome(&ok, Some(&Value::Null), Some(7)), Filled::Fenced);
        assert_eq!(outcome(&ok, Some(&g("x")), Some(7)), Filled::Fenced);
        assert_eq!(outcome(&ok, None, Some(7)), Filled::Fenced);
        assert_eq!(
            outcome(&Value::Null, Some(&g("7")), Some(7)),
            Filled::Refused
        );
        assert_eq!(
            outcome(&Value::Null, Some(&g("8")), Some(7)),
            Filled::Fenced
        );
        assert_eq!(outcome(&ok, None, None), Filled::Written);
    }

    fn batch(modes: Vec<WriteMode>, fence: Option<u64>) -> BatchWrite<'static> {
        BatchWrite {
            entries: modes
                .into_iter()
                .enumerate()
                .map(|(i, mode)| crate::remote::BatchEntry {
                    key: format!("lc:r:7:k{i}"),
                    value: b"v".to_vec(),
                    ttl_ms: 500,
                    mode,
                    version: None,
                    marks: Vec::new(),
                })
                .collect(),
            fence,
            generation_key: "lc:r:gen",
            tags: Vec::new(),
            marks: Vec::new(),
        }
    }

    #[test]
    fn a_plain_batch_is_a_set_per_entry_then_the_fence() {
        let b = batch(vec![WriteMode::Nx, WriteMode::Set, WriteMode::Nx], Some(7));
        assert!(plain_batch(&b));
        let c = batch_commands(b);
        assert_eq!(c.len(), 4);
        let shape: Vec<(&str, bool)> = c
            .iter()
            .map(|c| (c.name(), matches!(c, Cmd::Set { nx: true, .. })))
            .collect();
        assert_eq!(
            shape,
            [("SET", true), ("SET", false), ("SET", true), ("GET", false)],
            "SET … NX, SET, SET … NX, GET"
        );
        assert!(
            matches!(&c[1], Cmd::Set { key, .. } if key == "lc:r:7:k1"),
            "{c:?}"
        );
        // A batch's `SET`s leave together (none is sent alone first).
        assert!(
            !c.iter().any(|c| matches!(c, Cmd::Set { first: true, .. })),
            "{c:?}"
        );
        assert!(matches!(&c[3], Cmd::Get(k) if k == "lc:r:gen"), "{c:?}");
        assert_eq!(batch_commands(batch(vec![WriteMode::Set], None)).len(), 1);
        let cas = WriteMode::Cas(crate::remote::SeenEntry::of(b"x"));
        assert!(!plain_batch(&batch(vec![WriteMode::Nx, cas], Some(7))));
        let mut versioned = batch(vec![WriteMode::Set], Some(7));
        versioned.entries[0].version = Some(3);
        assert!(!plain_batch(&versioned));
    }

    #[test]
    fn a_missing_or_lower_generation_is_behind_a_higher_one_moved() {
        assert!(behind(&Value::Null, 7));
        assert!(behind(&Value::from("6"), 7));
        assert!(!behind(&Value::from("7"), 7));
        assert!(!behind(&Value::from("8"), 7));
    }
}
