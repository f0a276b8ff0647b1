//! The in-memory server's keys: byte strings and sets with expiry, and the writes the engine
//! asks for, each rule as `l2/scripts/*.lua` states it for Redis.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    time::{Duration, Instant},
};

use crate::{
    error::{Error, ErrorKind, Result},
    remote::{source_version, BatchWrite, Filled, Write, WriteCondition, WriteMode},
};

/// What a key holds.
#[derive(Debug)]
enum Value {
    Bytes(Vec<u8>),
    Set(BTreeSet<String>),
}

#[derive(Debug)]
struct Item {
    value: Value,
    expires: Option<Instant>,
}

/// The keys, ordered (so a prefix scan is a range).
#[derive(Debug, Default)]
pub(super) struct Keyspace {
    items: BTreeMap<String, Item>,
}

fn wrong_type() -> Error {
    Error::new(
        ErrorKind::Redis,
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    )
}

fn deadline(ttl_ms: u64) -> Option<Instant> {
    Instant::now().checked_add(Duration::from_millis(ttl_ms))
}

/// A page of `items` after `cursor` (`"0"`: from the start; else `>` + the last one seen).
fn page<'a>(items: impl Iterator<Item = &'a String>, count: u32) -> (String, Vec<String>) {
    let page: Vec<String> = items.take(count.max(1) as usize).cloned().collect();
    let next = match page.last() {
        Some(last) if page.len() == count.max(1) as usize => format!(">{last}"),
        _ => "0".to_owned(),
    };
    (next, page)
}

/// Where a page starts: after the key a cursor names, or at `from`.
fn start<'a>(cursor: &'a str, from: &'a str) -> Bound<&'a str> {
    match cursor.strip_prefix('>') {
        Some(last) => Bound::Excluded(last),
        None => Bound::Included(from),
    }
}

impl Keyspace {
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    pub(super) fn clear(&mut self) {
        self.items.clear();
    }

    pub(super) fn live_keys(&mut self) -> Vec<String> {
        self.purge();
        self.items.keys().cloned().collect()
    }

    /// Drops every expired key.
    fn purge(&mut self) {
        let now = Instant::now();
        self.items.retain(|_, i| i.expires.is_none_or(|e| e > now));
    }

    /// The live item at `key` (an expired one is dropped).
    fn live(&mut self, key: &str) -> Option<&mut Item> {
        let expired = self
            .items
            .get(key)
            .is_some_and(|i| i.expires.is_some_and(|e| e <= Instant::now()));
        if expired {
            self.items.remove(key);
        }
        self.items.get_mut(key)
    }

    pub(super) fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.live(key) {
            None => Ok(None),
            Some(Item {
                value: Value::Bytes(b),
                ..
            }) => Ok(Some(b.clone())),
            Some(_) => Err(wrong_type()),
        }
    }

    /// The bytes at `key`, or `None` for nothing or another type (as `MGET`).
    pub(super) fn get_lenient(&mut self, key: &str) -> Option<Vec<u8>> {
        self.get(key).ok().flatten()
    }

    pub(super) fn set(&mut self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) {
        let item = Item {
            value: Value::Bytes(value),
            expires: ttl_ms.and_then(deadline),
        };
        self.items.insert(key.to_owned(), item);
    }

    /// `SET … NX`: whether it was written.
    pub(super) fn set_nx(&mut self, key: &str, value: Vec<u8>, ttl_ms: u64) -> bool {
        if self.live(key).is_some() {
            return false;
        }
        self.set(key, value, Some(ttl_ms));
        true
    }

    /// `PEXPIRE`: whether the key exists.
    pub(super) fn expire(&mut self, key: &str, ttl_ms: u64) -> bool {
        match self.live(key) {
            Some(item) => {
                item.expires = deadline(ttl_ms);
                true
            }
            None => false,
        }
    }

    pub(super) fn delete(&mut self, key: &str) -> bool {
        self.items.remove(key).is_some()
    }

    /// `fill.lua`, rule by rule.
    pub(super) fn fill(&mut self, write: Write<'_>) -> Result<Filled> {
        let WriteCondition {
            mode,
            marks,
            fence,
            version,
        } = write.condition;
        if let Some(fence) = fence {
            if self.get(write.generation_key)? != Some(fence.to_string().into_bytes()) {
                return Ok(Filled::Fenced);
            }
        }
        for (key, expected) in marks {
            let current = self.get(key)?.unwrap_or_default();
            if current != expected.clone().unwrap_or_default() {
                return Ok(Filled::Refused);
            }
        }
        if let Some(version) = version {
            let current = match self.live(write.key) {
                Some(Item {
                    value: Value::Bytes(b),
                    ..
                }) => source_version(b),
                _ => None,
            };
            if current.is_some_and(|c| version < c) {
                return Ok(Filled::Older);
            }
        }
        let writes = match mode {
            WriteMode::Set => true,
            WriteMode::Nx => self.live(write.key).is_none(),
            WriteMode::Cas(seen) => match self.get(write.key)? {
                None => true,
                Some(current) => current.is_empty() || seen.matches(&current),
            },
        };
        if !writes {
            return Ok(Filled::Refused);
        }
        self.set(write.key, write.value, Some(write.ttl_ms));
        for tag in &write.tags {
            let item = self.items.entry(tag.clone()).or_insert_with(|| Item {
                value: Value::Set(BTreeSet::new()),
                expires: None,
            });
            let Value::Set(members) = &mut item.value else {
                return Err(wrong_type());
            };
            members.insert(write.key.to_owned());
            let at_least = deadline(write.ttl_ms);
            if item.expires.is_some_and(|e| Some(e) < at_least) || item.expires.is_none() {
                item.expires = at_least;
            }
        }
        Ok(Filled::Written)
    }

    /// `fill_batch.lua`: each entry as `fill` would write it without tags or marks, under the
    /// batch's fence.
    pub(super) fn fill_many(&mut self, batch: BatchWrite<'_>) -> Result<Vec<Filled>> {
        batch
            .entries
            .into_iter()
            .map(|entry| {
                let mut expected = entry.marks.into_iter();
                let marks: Vec<(String, Option<Vec<u8>>)> = batch
                    .marks
                    .iter()
                    .map(|k| (k.clone(), expected.next().flatten()))
                    .collect();
                self.fill(Write {
                    key: &entry.key,
                    value: entry.value,
                    ttl_ms: entry.ttl_ms,
                    tags: batch.tags.clone(),
                    condition: WriteCondition {
                        mode: &entry.mode,
                        marks: &marks,
                        fence: batch.fence,
                        version: entry.version,
                    },
                    generation_key: batch.generation_key,
                })
            })
            .collect()
    }

    /// `load_generation.lua`.
    pub(super) fn load_generation(&mut self, key: &str, initial: u64, ttl_ms: u64) -> Result<u64> {
        let current = match self.get(key)? {
            Some(bytes) => parse_generation(&bytes)?,
            None => initial,
        };
        self.set(key, current.to_string().into_bytes(), Some(ttl_ms));
        Ok(current)
    }

    /// `bump_generation.lua`.
    pub(super) fn bump_generation(&mut self, key: &str, floor: u64, ttl_ms: u64) -> Result<u64> {
        let current = match self.get(key)? {
            Some(bytes) => parse_generation(&bytes)?,
            None => 0,
        };
        let next = current.saturating_add(1).max(floor);
        self.set(key, next.to_string().into_bytes(), Some(ttl_ms));
        Ok(next)
    }

    /// A page of a set's members (`SSCAN`).
    pub(super) fn members_page(
        &mut self,
        set: &str,
        cursor: &str,
        count: u32,
    ) -> Result<(String, Vec<String>)> {
        match self.live(set) {
            None => Ok(("0".to_owned(), Vec::new())),
            Some(Item {
                value: Value::Set(members),
                ..
            }) => {
                let range = members.range::<str, _>((start(cursor, ""), Bound::Unbounded));
                Ok(page(range, count))
            }
            Some(_) => Err(wrong_type()),
        }
    }

    /// `drop_tag_page.lua`: deletes the members and takes them out of the set.
    pub(super) fn drop_members(&mut self, set: &str, members: &[String]) -> Result<()> {
        if let Some(item) = self.live(set) {
            let Value::Set(in_set) = &mut item.value else {
                return Err(wrong_type());
            };
            for m in members {
                in_set.remove(m);
            }
            if in_set.is_empty() {
                self.items.remove(set);
            }
        }
        for m in members {
            self.items.remove(m);
        }
        Ok(())
    }

    /// A page of the keys starting with `prefix` (`SCAN … MATCH prefix*`).
    pub(super) fn scan_prefix(
        &mut self,
        prefix: &str,
        cursor: &str,
        count: u32,
    ) -> (String, Vec<String>) {
        self.purge();
        let range = self
            .items
            .range::<str, _>((start(cursor, prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix));
        page(range, count)
    }
}

fn parse_generation(bytes: &[u8]) -> Result<u64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::Redis, "not a generation"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::SeenEntry;

    fn write<'a>(key: &'a str, value: &[u8], condition: WriteCondition<'a>) -> Write<'a> {
        Write {
            key,
            value: value.to_vec(),
            ttl_ms: 60_000,
            tags: Vec::new(),
            condition,
            generation_key: "gen",
        }
    }

    fn plain(mode: &WriteMode) -> WriteCondition<'_> {
        WriteCondition {
            mode,
            marks: &[],
            fence: None,
            version: None,
        }
    }

    /// An envelope header with a source version (as `fill.lua` reads it).
    fn versioned(v: u64) -> Vec<u8> {
        let mut e = vec![0u8; crate::envelope::HEADER_LEN];
        e[..4].copy_from_slice(&crate::envelope::MAGIC);
        e[6] = crate::envelope::FLAG_VERSION;
        e.extend_from_slice(&v.to_be_bytes());
        e
    }

    #[test]
    fn modes_write_as_the_fill_script_does() {
        let mut k = Keyspace::default();
        let nx = WriteMode::Nx;
        assert_eq!(
            k.fill(write("a", b"1", plain(&nx))).unwrap(),
            Filled::Written
        );
        assert_eq!(
            k.fill(write("a", b"2", plain(&nx))).unwrap(),
            Filled::Refused
        );
        assert_eq!(k.get("a").unwrap(), Some(b"1".to_vec()));
        // Compare-and-set: only over what was seen, or nothing.
        let seen = WriteMode::Cas(SeenEntry::of(b"1"));
        let other = WriteMode::Cas(SeenEntry::of(b"9"));
        assert_eq!(
            k.fill(write("a", b"3", plain(&other))).unwrap(),
            Filled::Refused
        );
        assert_eq!(
            k.fill(write("a", b"3", plain(&seen))).unwrap(),
            Filled::Written
        );
        assert_eq!(
            k.fill(write("b", b"4", plain(&other))).unwrap(),
            Filled::Written
        );
        let set = WriteMode::Set;
        assert_eq!(
            k.fill(write("a", b"5", plain(&set))).unwrap(),
            Filled::Written
        );
        assert_eq!(k.get("a").unwrap(), Some(b"5".to_vec()));
    }

    #[test]
    fn a_fence_marks_and_versions_refuse_as_the_fill_script_does() {
        let mut k = Keyspace::default();
        let set = WriteMode::Set;
        assert_eq!(k.load_generation("gen", 7, 60_000).unwrap(), 7);
        let fenced = |g| WriteCondition {
            fence: Some(g),
            ..plain(&set)
        };
        assert_eq!(k.fill(write("a", b"1", fenced(6))).unwrap(), Filled::Fenced);
        assert_eq!(
            k.fill(write("a", b"1", fenced(7))).unwrap(),
            Filled::Written
        );
        assert_eq!(k.bump_generation("gen", 0, 60_000).unwrap(), 8);
        assert_eq!(k.bump_generation("gen", 100, 60_000).unwrap(), 100);
        assert_eq!(k.fill(write("a", b"2", fenced(7))).unwrap(), Filled::Fenced);

        // A load's marks must still be what it read.
        let marks = [("mark".to_owned(), None)];
        let load = WriteCondition {
            marks: &marks,
            ..plain(&set)
        };
        assert_eq!(k.fill(write("b", b"1", load)).unwrap(), Filled::Written);
        k.set("mark", b"t".to_vec(), None);
        assert_eq!(k.fill(write("b", b"2", load)).unwrap(), Filled::Refused);

        // An older source version never replaces a newer one.
        let v = |n| WriteCondition {
            version: Some(n),
            ..plain(&set)
        };
        assert_eq!(
            k.fill(write("c", &versioned(5), v(5))).unwrap(),
            Filled::Written
        );
        assert_eq!(
            k.fill(write("c", &versioned(4), v(4))).unwrap(),
            Filled::Older
        );
        assert_eq!(
            k.fill(write("c", &versioned(6), v(6))).unwrap(),
            Filled::Written
        );
        assert_eq!(k.get("c").unwrap(), Some(versioned(6)));
    }

    #[test]
    fn tags_pages_and_scans_visit_every_key_once() {
        let mut k = Keyspace::default();
        let set = WriteMode::Set;
        for i in 0..25 {
            let key = format!("app:d2:{i:02}");
            let mut w = write(&key, b"v", plain(&set));
            w.tags = vec!["app:t:red".to_owned()];
            k.fill(w).unwrap();
        }
        k.set("app:m2:x", b"1".to_vec(), None);
        k.set("other:d2:1", b"1".to_vec(), None);
        // A set at a data key is another type: a typed error, as `WRONGTYPE`.
        assert!(k.get("app:t:red").unwrap_err().is_wrong_type());

        let mut seen = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, keys) = k.scan_prefix("app:d2:", &cursor, 10);
            seen.extend(keys);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.iter().all(|s| s.starts_with("app:d2:")));

        let (next, page) = k.members_page("app:t:red", "0", 20).unwrap();
        assert_eq!(page.len(), 20);
        k.drop_members("app:t:red", &page).unwrap();
        let (last, rest) = k.members_page("app:t:red", &next, 20).unwrap();
        assert_eq!((last.as_str(), rest.len()), ("0", 5));
        k.drop_members("app:t:red", &rest).unwrap();
        assert_eq!(k.live_keys(), ["app:m2:x", "other:d2:1"]);
    }

    #[test]
    fn expired_keys_are_gone() {
        let mut k = Keyspace::default();
        k.set("a", b"1".to_vec(), Some(0));
        k.set("b", b"1".to_vec(), Some(60_000));
        assert_eq!(k.get("a").unwrap(), None);
        assert!(k.set_nx("a", b"2".to_vec(), 60_000));
        assert!(!k.set_nx("b", b"2".to_vec(), 60_000));
        assert_eq!(k.live_keys(), ["a", "b"]);
    }
}
