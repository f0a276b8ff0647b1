//! Keys: how a user's key becomes an L1 key and a Redis key.
//!
//! A Redis key has the shape
//!
//! ```text
//! {cache name}:f{envelope format}:{region}:s{schema version}:g{generation}:{escaped user key}
//! ```
//!
//! for example `shop:f2:user:s3:g1700000000000:42`. The generation is the region's: bumping it
//! ([`Region::invalidate_all`](crate::Region::invalidate_all)) moves the whole region to a new
//! key space in O(1), and old keys die by their TTL. It lives at
//! `{cache}:m{format}:{region}:s{schema}:gen`. Cache and region names are restricted to
//! `[A-Za-z0-9_.-]`, so the fixed part never contains a `:` of its own and the user key, which
//! comes last, is always unambiguous. The user key is percent-escaped: every byte outside
//! `[A-Za-z0-9]` and `-_.:/@+=,!~#$&()'` becomes `%XX`. The escaping is injective, so distinct
//! user keys (empty, binary, Unicode, or holding `*?[]{}`) always give distinct Redis keys;
//! and since `{`, `}`, `*`, `?`, `[` and `]` are always escaped, a user key can neither form a
//! Redis Cluster hash tag nor widen a pattern.

use std::borrow::Cow;

use crate::{
    envelope::FORMAT_VERSION,
    error::{Error, Result},
};

/// A type usable as a cache key.
///
/// The bytes written by [`write_key`](CacheKey::write_key) identify the entry: two keys are the
/// same entry exactly when they write the same bytes. Implementations are provided for strings,
/// byte strings, integers, `char` and `bool`; implement it for your own key types (for
/// example by writing the fields separated by a byte that cannot occur in them).
///
/// Like `Hash` and `Borrow` for `HashMap`, a type and the types it borrows as must write the
/// same bytes (`String` and `str` both write their UTF-8 bytes).
///
/// # Examples
///
/// ```
/// use layercache::CacheKey;
///
/// struct OrderKey { tenant: u32, order: u64 }
///
/// impl CacheKey for OrderKey {
///     fn write_key(&self, out: &mut Vec<u8>) {
///         self.tenant.write_key(out);
///         out.push(b'/');
///         self.order.write_key(out);
///     }
/// }
///
/// let mut bytes = Vec::new();
/// OrderKey { tenant: 7, order: 42 }.write_key(&mut bytes);
/// assert_eq!(bytes, b"7/42");
/// ```
pub trait CacheKey {
    /// Appends the key's identifying bytes to `out`.
    fn write_key(&self, out: &mut Vec<u8>);

    /// The key's identifying bytes, when the key already holds them contiguously (strings and
    /// byte strings do). An optional fast path: when it returns `Some`, it must equal what
    /// [`write_key`](Self::write_key) writes.
    ///
    /// Default: `None`.
    fn key_bytes(&self) -> Option<&[u8]> {
        None
    }
}

macro_rules! byte_keys {
    ($($t:ty => |$s:ident| $bytes:expr),* $(,)?) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                let $s = self;
                out.extend_from_slice($bytes);
            }

            fn key_bytes(&self) -> Option<&[u8]> {
                let $s = self;
                Some($bytes)
            }
        }
    )*};
}

byte_keys! {
    str => |s| s.as_bytes(),
    String => |s| s.as_bytes(),
    [u8] => |s| s,
    Vec<u8> => |s| s.as_slice(),
    Cow<'_, str> => |s| s.as_bytes(),
}

impl<const N: usize> CacheKey for [u8; N] {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn key_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

macro_rules! forward_keys {
    ($($t:ty),*) => {$(
        impl<T: CacheKey + ?Sized> CacheKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                (**self).write_key(out);
            }

            fn key_bytes(&self) -> Option<&[u8]> {
                (**self).key_bytes()
            }
        }
    )*};
}

forward_keys!(&T, Box<T>, std::sync::Arc<T>);

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                use std::io::Write as _;
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

display_keys!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char, bool);

/// Checks a cache or region name: 1 to 64 bytes of `[A-Za-z0-9_.-]`.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "{what} {:?} is invalid: use 1 to 64 characters of [A-Za-z0-9_.-]",
            shortened(name)
        )))
    }
}

/// `s` for an error message: whole when short, else its first 64 characters and its length,
/// so a 10,000-character mistake does not fill the log.
pub(crate) fn shortened(s: &str) -> String {
    const SHOWN: usize = 64;
    match s.char_indices().nth(SHOWN) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
    }
}

/// Bytes a user key may keep unescaped in a Redis key.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b':'
                | b'/'
                | b'@'
                | b'+'
                | b'='
                | b','
                | b'!'
                | b'~'
                | b'#'
                | b'$'
                | b'&'
                | b'('
                | b')'
                | b'\''
        )
}

/// Appends the percent-escaped form of `key` to `out`.
pub(crate) fn escape_into(key: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(key.len());
    for &b in key {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// The key spaces under a cache's name: one letter each, followed by the envelope format
/// version (`{cache}:{space}{format}:…`), so each kind of key can be scanned or listed apart.
pub(crate) mod space {
    /// Data entries (values, tombstones): `{cache}:f{format}:{region}:s{schema}:g{gen}:{key}`.
    pub(crate) const DATA: char = 'f';
    /// Load locks, laid out like the data keys.
    pub(crate) const LOCK: char = 'k';
    /// Metadata: region generations (`…:{region}:s{schema}:gen`) and the bus channel (`…:bus`).
    pub(crate) const META: char = 'm';
    /// Tag sets (the data keys that carry a tag).
    pub(crate) const TAG_SET: char = 't';
    /// Tag marks (a token replaced by every invalidation of the tag).
    pub(crate) const TAG_MARK: char = 'v';
    /// Users' locks and their fencing counters: `{cache}:l{format}:{<escaped name>}[:fence]`
    /// (see [`crate::lock`]).
    pub(crate) const USER_LOCK: char = 'l';
    /// Rate limiters' state: `{cache}:r{format}:{<limiter>:<escaped key>}[:1]` (see
    /// [`crate::ratelimit`]).
    pub(crate) const RATE_LIMIT: char = 'r';
}

/// Where an instance's presence record lives: `{cache}:m{format}:i:{instance id}` (a meta key:
/// never taken for a generation key, which ends in `:gen`).
pub(crate) fn presence_prefix(cache: &str) -> String {
    format!(
        "{cache}:{}{}:i:",
        space::META,
        crate::envelope::FORMAT_VERSION
    )
}

/// An instance's presence record key: [`presence_prefix`] and its id (hex).
pub(crate) fn presence_key(cache: &str, id: impl std::fmt::Display) -> String {
    format!("{}{id}", presence_prefix(cache))
}

/// The fixed part of a region's Redis keys, up to and including the last `:`.
pub(crate) fn region_prefix(
    cache: &str,
    space: char,
    format: u8,
    region: &str,
    schema: u32,
) -> String {
    format!("{cache}:{space}{format}:{region}:s{schema}:")
}

/// Where a region's generation counter lives: `{cache}:m{format}:{region}:s{schema}:gen`. The
/// `m` keeps it out of the data keys' `{cache}:f…` space, so a pattern over data keys never
/// matches it.
pub(crate) fn generation_key(cache: &str, region: &str, schema: u32) -> String {
    format!(
        "{cache}:{}{}:{region}:s{schema}:gen",
        space::META,
        crate::envelope::FORMAT_VERSION
    )
}

/// The Redis set listing the data keys that carry `tag`: `{cache}:t{format}:{escaped tag}`.
pub(crate) fn tag_key(cache: &str, tag: &str) -> String {
    redis_key(
        &format!(
            "{cache}:{}{}:",
            space::TAG_SET,
            crate::envelope::FORMAT_VERSION
        ),
        tag.as_bytes(),
    )
}

/// A tag's mark: `{cache}:v{format}:{escaped tag}`, a random token replaced by every
/// `invalidate_tag`. A load reads the marks of its tags before it runs and fills Redis only if
/// they are unchanged, so a load that began before a tag invalidation cannot put its value back.
pub(crate) fn tag_mark_key(cache: &str, tag: &str) -> String {
    redis_key(
        &format!(
            "{cache}:{}{}:",
            space::TAG_MARK,
            crate::envelope::FORMAT_VERSION
        ),
        tag.as_bytes(),
    )
}

/// Checks entry tags: at most 32, each 1 to 128 bytes.
pub(crate) fn validate_tags(tags: &[&str]) -> Result<Option<std::sync::Arc<[String]>>> {
    if tags.is_empty() {
        return Ok(None);
    }
    if tags.len() > 32 {
        return Err(Error::config("an entry may carry at most 32 tags"));
    }
    if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.len() > 128) {
        return Err(Error::config(format!("tag {bad:?} must be 1 to 128 bytes")));
    }
    let mut owned: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    owned.sort();
    owned.dedup();
    Ok(Some(owned.into()))
}

/// The full Redis key for a user key (given as its [`CacheKey`] bytes).
pub(crate) fn redis_key(prefix: &str, key: &[u8]) -> String {
    let mut out = String::with_capacity(prefix.len() + key.len() + 8);
    out.push_str(prefix);
    escape_into(key, &mut out);
    out
}

/// `{base}g{generation}:{key}`: a data or lock key of a region at a generation.
pub(crate) fn keyed(base: &str, generation: u64, key: &[u8]) -> String {
    let mut prefix = String::with_capacity(base.len() + 24 + key.len());
    prefix.push_str(base);
    prefix.push('g');
    prefix.push_str(&generation.to_string());
    prefix.push(':');
    redis_key(&prefix, key)
}

/// The region (name, schema) a generation key belongs to:
/// `{cache}:m{format}:{region}:s{schema}:gen`.
pub(crate) fn parse_generation_key(cache: &str, key: &str) -> Option<(String, u32)> {
    let rest = key
        .strip_prefix(cache)?
        .strip_prefix(&format!(":{}{FORMAT_VERSION}:", space::META))?
        .strip_suffix(":gen")?;
    let (region, schema) = rest.rsplit_once(":s")?;
    if validate_name("region name", region).is_err() {
        return None;
    }
    Some((region.to_owned(), schema.parse().ok()?))
}

/// The region (name, schema) and generation of a data key:
/// `{cache}:f{format}:{region}:s{schema}:g{generation}:{key}`.
pub(crate) fn parse_data_key<'a>(cache: &str, key: &'a str) -> Option<(&'a str, u32, u64)> {
    let rest = key
        .strip_prefix(cache)?
        .strip_prefix(&format!(":{}{FORMAT_VERSION}:", space::DATA))?;
    let mut parts = rest.splitn(4, ':');
    let region = parts.next()?;
    let schema = parts.next()?.strip_prefix('s')?.parse().ok()?;
    let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
    parts.next()?;
    Some((region, schema, generation))
}

/// `{cache}:f{format}:`: the start of every data key of a cache (what server-assisted tracking
/// watches).
pub(crate) fn data_space_prefix(cache: &str) -> String {
    format!("{cache}:{}{FORMAT_VERSION}:", space::DATA)
}

/// The region and the user key's bytes of a data key
/// (`{cache}:f{format}:{region}:s{schema}:g{generation}:{escaped key}`, on a Redis Cluster with
/// its bucket's hash tag before the escaped key: `…:g{generation}:{{tag}}{escaped key}`): what an
/// invalidation Redis reports for a data key (server-assisted tracking) is applied as. `None`
/// for any other key, or an escaped key that is not one [`escape_into`] writes (escaping never
/// leaves a `{`, so a hash tag is never part of a key).
pub(crate) fn parse_data_key_entry<'a>(cache: &str, key: &'a str) -> Option<(&'a str, Vec<u8>)> {
    let (region, _, _) = parse_data_key(cache, key)?;
    let escaped = key.splitn(6, ':').nth(5)?;
    let escaped = match escaped.strip_prefix('{') {
        Some(tagged) => tagged.split_once('}')?.1,
        None => escaped,
    };
    Some((region, unescape(escaped)?))
}

/// The bytes [`escape_into`] escaped into `escaped`; `None` if it holds a byte escaping never
/// leaves plain or a `%` not followed by two upper-case hex digits.
pub(crate) fn unescape(escaped: &str) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            let byte = (hi << 4) | lo;
            if is_plain(byte) {
                return None;
            }
            out.push(byte);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn bytes_of<K: CacheKey + ?Sized>(k: &K) -> Vec<u8> {
        let mut v = Vec::new();
        k.write_key(&mut v);
        v
    }

    #[test]
    fn key_bytes_agree_with_write_key() {
        fn check<K: CacheKey + ?Sized>(k: &K) {
            if let Some(b) = k.key_bytes() {
                assert_eq!(b, bytes_of(k).as_slice());
            }
        }
        check("héllo");
        check(&String::from("x"));
        check(b"ab".as_slice());
        check(&vec![1u8, 2]);
        check(&[9u8; 3]);
        check(&Cow::Borrowed("c"));
        check(&&"d");
        check(&Box::new(String::from("e")));
        assert!(42u64.key_bytes().is_none());
    }

    #[test]
    fn string_and_str_write_the_same_bytes() {
        assert_eq!(bytes_of("héllo"), bytes_of(&String::from("héllo")));
        assert_eq!(bytes_of(&42u64), b"42");
        assert_eq!(bytes_of(&-7i32), b"-7");
    }

    #[test]
    fn escaping_is_injective_on_tricky_keys() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"*",
            b"%2A",
            b"%",
            b"a:b",
            b"a%3Ab",
            b"{tag}",
            b"{tag}1",
            b"[abc]",
            b"?",
            b"\x00",
            b"\xff\xfe",
            "ключ".as_bytes(),
            b" ",
            b"a b",
            b"a%20b",
        ];
        let escaped: HashSet<String> = keys.iter().map(|k| redis_key("c:f2:r:s1:", k)).collect();
        assert_eq!(escaped.len(), keys.len());
        for e in &escaped {
            let user = &e["c:f2:r:s1:".len()..];
            assert!(!user.contains(['{', '}', '*', '?', '[', ']', ' ']), "{e}");
            assert!(e.is_ascii());
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn distinct_keys_give_distinct_redis_keys(
                a in proptest::collection::vec(any::<u8>(), 0..40),
                b in proptest::collection::vec(any::<u8>(), 0..40),
            ) {
                let (ka, kb) = (redis_key("c:f2:r:s1:g0:", &a), redis_key("c:f2:r:s1:g0:", &b));
                prop_assert_eq!(a == b, ka == kb);
                let user = &ka["c:f2:r:s1:g0:".len()..];
                let special = user.contains(['{', '}', '*', '?', '[', ']']);
                prop_assert!(!special, "{}", user);
                prop_assert!(ka.is_ascii());
            }
        }
    }

    #[test]
    fn escape_examples() {
        assert_eq!(redis_key("p:", b"user:42"), "p:user:42");
        assert_eq!(redis_key("p:", b"{x}*"), "p:%7Bx%7D%2A");
        assert_eq!(redis_key("p:", b""), "p:");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("region", "user.v2-x_y").is_ok());
        for bad in ["", "a:b", "a b", "{x}", &"x".repeat(65)] {
            let err = validate_name("region", bad).unwrap_err();
            assert!(err.to_string().contains("region"), "{err}");
        }
    }

    #[test]
    fn generation_keys_parse_back_to_their_region() {
        let key = generation_key("shop", "user.v2", 7);
        assert_eq!(
            parse_generation_key("shop", &key),
            Some(("user.v2".to_owned(), 7))
        );
        assert_eq!(parse_generation_key("sho", &key), None, "another cache");
        assert_eq!(parse_generation_key("shop", "shop:m2:user:sX:gen"), None);
        assert_eq!(parse_generation_key("shop", "shop:m2:us%er:s1:gen"), None);
        assert_eq!(parse_generation_key("shop", "shop:f2:user:s1:gen"), None);
    }

    #[test]
    fn data_keys_parse_back_to_region_schema_and_generation() {
        let state_base = region_prefix("shop", space::DATA, FORMAT_VERSION, "user", 3);
        let key = keyed(&state_base, 1_700_000_000_000, b"a:b:c");
        assert_eq!(
            parse_data_key("shop", &key),
            Some(("user", 3, 1_700_000_000_000))
        );
        assert_eq!(
            parse_data_key("shop", "shop:f2:user:s3:g12"),
            None,
            "no key"
        );
        assert_eq!(parse_data_key("shop", "shop:f2:user:s3:x12:k"), None);
        assert_eq!(parse_data_key("shop", "shop:t2:user:s3:g12:k"), None);
        assert_eq!(parse_data_key("shopx", &key), None);
    }

    #[test]
    fn data_keys_parse_back_to_their_region_and_user_key() {
        let base = region_prefix("shop", space::DATA, FORMAT_VERSION, "user", 3);
        let users: [&[u8]; 7] = [
            b"",
            b"a:b:c",
            b"{x}*",
            b"%41",
            b"\x00\xff",
            "ключ".as_bytes(),
            b"42",
        ];
        for user in users {
            let key = keyed(&base, 1_700_000_000_000, user);
            assert_eq!(
                parse_data_key_entry("shop", &key),
                Some(("user", user.to_vec())),
                "{key}"
            );
            // On a cluster, with the bucket's hash tag before the escaped key.
            let (head, escaped) = key.rsplit_once(":g1700000000000:").unwrap();
            let placed = format!("{head}:g1700000000000:{{1bz}}{escaped}");
            assert_eq!(
                parse_data_key_entry("shop", &placed),
                Some(("user", user.to_vec())),
                "{placed}"
            );
        }
        for other in [
            "shop:f2:user:s3:g12:{1bz",
            "shop:f2:user:s3:g12",
            "shop:m2:user:s3:gen",
            "shop:f2:user:s3:g12:%4",
            "shop:f2:user:s3:g12:%41",
            "shop:f2:user:s3:g12:%2a",
            "shop:f2:user:s3:g12:a b",
            "other:f2:user:s3:g12:k",
        ] {
            assert_eq!(parse_data_key_entry("shop", other), None, "{other}");
        }
    }
}
