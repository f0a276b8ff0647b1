//! Where keys live on a Redis Cluster.
//!
//! A region must spread over the whole cluster, so its keys cannot share one hash tag; but what
//! must be atomic with a data write has to sit in the data key's slot. The answer is *buckets*:
//! every data key (and its load lock) falls in one of [`BUCKETS`] buckets by a hash of the user
//! key, and carries that bucket's hash tag; a bucket's tag is a short string chosen so that the
//! buckets' slots are evenly spaced over the 16,384 (bucket `b` lives in slot `16 b`), so a
//! region's keys spread over every primary in proportion to the slots it owns. Beside the data in
//! the same slot, each bucket holds:
//!
//! - a copy of each region's generation (the fence a write is checked against, see
//!   `ClusterStore::bump_generation`);
//! - each tag's member set for that bucket (a tag invalidation walks the buckets);
//! - [`MARK_GROUPS`] tag marks, one per group of tags (a tag's group is a hash of its name): a
//!   load reads its tags' group marks in its bucket before it runs, its fill compares them, and
//!   a tag invalidation replaces its group's mark in every bucket.
//!
//! The user's key is escaped before it gets here (`{` and `}` are always `%7B`/`%7D`), so it never
//! forms a hash tag of its own: the bucket's tag is always the first `{…}` of the key.

use std::sync::LazyLock;

use fred::util::redis_keyslot;

/// How many buckets a region's keys spread over (slots `0, 16, 32, …, 16368`). Every primary
/// that owns at least 16 consecutive slots holds a share; a generation move or a tag
/// invalidation touches one key per bucket.
pub(crate) const BUCKETS: u16 = 1024;

/// How many mark groups tags fall into. A tag invalidation also refuses the in-flight fills of
/// the other tags of its group (they are loaded again on the next miss): 1/16 of them.
pub(crate) const MARK_GROUPS: u16 = 16;

/// The hash tag of each bucket: the shortest base-36 string whose slot is `16 × bucket` (found
/// once, deterministically: every instance and release agrees).
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let step = 16384 / BUCKETS;
    let mut tags: Vec<Option<String>> = vec![None; usize::from(BUCKETS)];
    let mut left = usize::from(BUCKETS);
    let mut n: u64 = 0;
    while left > 0 {
        let candidate = base36(n);
        n += 1;
        let slot = redis_keyslot(candidate.as_bytes());
        if slot % step == 0 {
            let b = usize::from(slot / step);
            if tags[b].is_none() {
                tags[b] = Some(candidate);
                left -= 1;
            }
        }
    }
    tags.into_iter().map(Option::unwrap_or_default).collect()
});

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[usize::try_from(n % 36).unwrap_or(0)]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The hash tag (without braces) of bucket `b`.
fn tag(b: u16) -> &'static str {
    TAGS.get(usize::from(b)).map_or("", String::as_str)
}

/// A bucket, by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Bucket(pub(crate) u16);

impl Bucket {
    /// Every bucket, in order.
    pub(crate) fn all() -> impl Iterator<Item = Self> {
        (0..BUCKETS).map(Bucket)
    }

    /// The bucket's hash slot.
    pub(crate) fn slot(self) -> u16 {
        self.0 * (16384 / BUCKETS)
    }

    /// A copy of the generation at `generation_key`, in this bucket.
    pub(crate) fn generation_copy(self, generation_key: &str) -> String {
        format!("{generation_key}:{{{}}}", tag(self.0))
    }

    /// The member set of the tag whose (logical) set key is `set`, in this bucket.
    pub(crate) fn tag_set(self, set: &str) -> String {
        insert_tag(set, 2, self)
    }

    /// The mark of the group of the tag whose (logical) mark key is `mark`, in this bucket.
    pub(crate) fn mark(self, mark: &str) -> String {
        let group = redis_keyslot(mark.as_bytes()) % MARK_GROUPS;
        // `cache:v2:` + `{tag}` + `:g{group}`.
        let head = nth_colon(mark, 2).map_or(mark, |at| &mark[..=at]);
        format!("{head}{{{}}}g{group}", tag(self.0))
    }
}

/// The byte index of the `n`th `:` (1-based) of `key`.
fn nth_colon(key: &str, n: usize) -> Option<usize> {
    key.match_indices(':').nth(n - 1).map(|(i, _)| i)
}

/// `key` with bucket `b`'s hash tag inserted after its `after`th `:`.
fn insert_tag(key: &str, after: usize, b: Bucket) -> String {
    let t = tag(b.0);
    match nth_colon(key, after) {
        Some(at) => {
            let mut out = String::with_capacity(key.len() + t.len() + 2);
            out.push_str(&key[..=at]);
            out.push('{');
            out.push_str(t);
            out.push('}');
            out.push_str(&key[at + 1..]);
            out
        }
        None => format!("{{{t}}}{key}"),
    }
}

/// Whether `key` was already placed (holds a hash tag): logical keys never do.
fn is_placed(key: &str) -> bool {
    key.contains('{')
}

/// The bucket of a data or lock key (`cache:space:region:schema:generation:user key`): a hash of
/// the escaped user key, so a key's data and lock share a bucket, in every generation. An
/// already placed key: the bucket of its tag's slot.
pub(crate) fn bucket_of(key: &str) -> Bucket {
    if is_placed(key) {
        return Bucket(redis_keyslot(key.as_bytes()) / (16384 / BUCKETS));
    }
    let user = nth_colon(key, 5).map_or(key, |at| &key[at + 1..]);
    Bucket(redis_keyslot(user.as_bytes()) % BUCKETS)
}

/// Where a data or lock key lives: with its bucket's hash tag before the user key. Already placed
/// keys (from a scan or a tag set) are returned as they are.
pub(crate) fn place(key: &str) -> (Bucket, String) {
    let b = bucket_of(key);
    if is_placed(key) {
        return (b, key.to_owned());
    }
    (b, insert_tag(key, 5, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_bucket_has_a_tag_in_its_slot() {
        let tags: HashSet<&str> = (0..BUCKETS).map(tag).collect();
        assert_eq!(tags.len(), usize::from(BUCKETS));
        for b in Bucket::all() {
            assert_eq!(redis_keyslot(tag(b.0).as_bytes()), b.slot());
            assert!(tag(b.0).len() <= 4, "{}", tag(b.0));
        }
        // Part of the key format: these must never change.
        assert_eq!(tag(0), "1bz");
        assert_eq!(tag(1), "8yr");
    }

    #[test]
    fn a_key_its_lock_and_its_metadata_share_a_slot() {
        let data = "shop:f2:user:s3:g17:42";
        let lock = "shop:k2:user:s3:g17:42";
        let (b, placed) = place(data);
        assert_eq!(placed, format!("shop:f2:user:s3:g17:{{{}}}42", tag(b.0)));
        let (b2, placed_lock) = place(lock);
        assert_eq!(b, b2);
        let slot = redis_keyslot(placed.as_bytes());
        assert_eq!(slot, b.slot());
        assert_eq!(redis_keyslot(placed_lock.as_bytes()), slot);
        for other in [
            b.generation_copy("shop:m2:user:s3:gen"),
            b.tag_set("shop:t2:red"),
            b.mark("shop:v2:red"),
        ] {
            assert_eq!(redis_keyslot(other.as_bytes()), slot, "{other}");
        }
        // Another generation, the same bucket.
        assert_eq!(place("shop:f2:user:s3:g18:42").0, b);
        // Placing twice changes nothing.
        assert_eq!(place(&placed), (b, placed.clone()));
        assert_eq!(bucket_of(&placed), b);
        // A user key with `:` in it still hashes on the whole user key.
        assert_eq!(
            place("shop:f2:user:s3:g17:a:b").1,
            format!(
                "shop:f2:user:s3:g17:{{{}}}a:b",
                tag(bucket_of("shop:f2:user:s3:g17:a:b").0)
            )
        );
    }

    #[test]
    fn keys_spread_evenly_over_the_buckets() {
        let mut counts = vec![0u32; usize::from(BUCKETS)];
        for i in 0..102_400 {
            counts[usize::from(bucket_of(&format!("c:f2:r:s1:g1:{i}")).0)] += 1;
        }
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(min >= Some(&50) && max <= Some(&160), "{min:?}..{max:?}");
    }

    #[test]
    fn marks_group_tags() {
        let b = Bucket(7);
        let m = b.mark("shop:v2:red");
        assert!(m.starts_with(&format!("shop:v2:{{{}}}g", tag(7))), "{m}");
        let groups: HashSet<String> = (0..200).map(|i| b.mark(&format!("shop:v2:t{i}"))).collect();
        assert_eq!(groups.len(), usize::from(MARK_GROUPS));
    }
}
