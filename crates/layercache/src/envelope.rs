//! The envelope: the bytes layercache stores in Redis for one value.
//!
//! Format version 2, all integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LCAC` |
//! | 4 | 1 | format version (`2`) |
//! | 5 | 1 | codec id ([`Codec::ID`](crate::Codec::ID)) |
//! | 6 | 1 | flags: bit 0 = payload is LZ4 (block format); bit 1 = a tag block follows the header; bit 2 = negative entry ("not found", empty payload); bit 3 = tombstone left by `invalidate` (empty payload); bit 4 = a source version follows the header; other bits must be 0 |
//! | 7 | 1 | reserved, 0 |
//! | 8 | 8 | created at, Unix milliseconds |
//! | 16 | 8 | expires at (logical: past it the value is stale, kept only as a fail-safe fallback), Unix milliseconds |
//! | 24 | 8 | refresh at (soft expiry; equals "expires at" when there is none), Unix milliseconds; in a tombstone, a random nonce instead |
//! | 32 | 4 | load time: how long the loader took, microseconds (0 for inserted values) |
//! | 36 | 4 | raw length: the codec's bytes, before compression |
//! | 40 | 4 | stored length: the payload bytes (after the tag block, if any) |
//! | 44 | 8 | key check: FNV-1a (64-bit) of the Redis key the value was written under |
//! | 52 | 8 | type check: the [fingerprint](crate::Region::type_fingerprint) of the value type's serde shape (0 in a tombstone) |
//! | 60 | 4 | CRC-32 (IEEE) of bytes 0..60 followed by every byte after the header |
//! | 64 | 8 | with flag bit 4: the *source version* of the value (big-endian u64, so the write script can compare two as byte strings): see [`Region::insert_versioned`](crate::Region::insert_versioned) |
//! | … | … | with flag bit 1: tag block — u16 length, then that many bytes of tags, each a u8 length and UTF-8 |
//! | … | … | payload |
//!
//! Decoding trusts nothing in the bytes: the magic, version, codec id, flags and both lengths
//! are checked against the actual input and against the configured cap before anything is
//! allocated, the checksum is verified before decompressing, and a decompressed length must
//! match the header exactly. Every failure is a [`Corruption`] reason, which the cache counts
//! and treats as a miss. The key check makes bytes found under another key than the one they
//! were written for (copied, renamed, or delivered for another command) a miss too
//! ([`Corruption::WrongKey`]), never another key's value; the type check makes bytes written as
//! another value type (a deploy that changed the type but not the region's `schema_version`) a
//! miss ([`Corruption::TypeMismatch`]), never a wrong value that happens to decode.
//!
//! Version 1 (56-byte header, no type check) is not read: it lives under other keys (`f1`).

use std::fmt;

mod inspect;
pub use inspect::{inspect, Inspection};

/// The four bytes every envelope starts with.
pub const MAGIC: [u8; 4] = *b"LCAC";
/// The envelope format this build writes (and the only one it reads). It is also part of every
/// Redis key (`f2`), so a format change reads as a miss.
pub const FORMAT_VERSION: u8 = 2;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// Bytes of the header covered by the checksum (all but the checksum itself).
pub const CHECKED: usize = 60;

/// The key check stored in every envelope: FNV-1a, 64-bit, over the Redis key's bytes.
pub fn key_check(redis_key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in redis_key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
/// Flag bit: the payload is LZ4-compressed (block format, no size prefix).
pub const FLAG_LZ4: u8 = 0b0000_0001;
/// Flag bit: a tag block follows the header.
pub const FLAG_TAGS: u8 = 0b0000_0010;
/// Flag bit: a negative entry (the loader found nothing); the payload is empty.
pub const FLAG_NEGATIVE: u8 = 0b0000_0100;
/// Flag bit: a tombstone left by `invalidate` (a miss; the payload is empty). Loads replace it
/// only if it is still the one they saw, so a load that began before the invalidation cannot
/// put the old value back.
pub const FLAG_TOMBSTONE: u8 = 0b0000_1000;

/// Flag bit: an 8-byte big-endian source version follows the header (before any tag block).
/// Added within format 2: a release that predates it reads such an entry as
/// [`Corruption::UnknownFlags`] (a miss), never as a wrong value.
pub const FLAG_VERSION: u8 = 0b0001_0000;

/// Why bytes read from Redis were not accepted as a value.
///
/// Each reason has its own counter in [`Stats`](crate::Stats).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Corruption {
    /// Shorter than a header, or the magic is wrong: not written by layercache.
    NotAnEnvelope,
    /// Written by another envelope format version (for example a newer release).
    UnknownVersion,
    /// Written by a different codec than the region's.
    CodecMismatch,
    /// Flag bits this build does not know.
    UnknownFlags,
    /// A length field disagrees with the bytes, or the raw length is above the cap.
    BadLength,
    /// The checksum does not match.
    Checksum,
    /// The LZ4 payload is invalid or does not decompress to the stated length.
    Decompress,
    /// The codec rejected the payload (for example a schema change the version missed).
    Deserialize,
    /// Another Redis type (a list, a hash, …) sits at our key.
    WrongType,
    /// The envelope was written for another key.
    WrongKey,
    /// The envelope holds another value type (its type fingerprint differs from the region's):
    /// the type changed without a `schema_version` bump.
    TypeMismatch,
}

impl Corruption {
    /// Every reason, in counter order.
    pub const ALL: [Corruption; 11] = [
        Self::NotAnEnvelope,
        Self::UnknownVersion,
        Self::CodecMismatch,
        Self::UnknownFlags,
        Self::BadLength,
        Self::Checksum,
        Self::Decompress,
        Self::Deserialize,
        Self::WrongType,
        Self::WrongKey,
        Self::TypeMismatch,
    ];

    /// A stable lowercase name, used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAnEnvelope => "not_an_envelope",
            Self::UnknownVersion => "unknown_version",
            Self::CodecMismatch => "codec_mismatch",
            Self::UnknownFlags => "unknown_flags",
            Self::BadLength => "bad_length",
            Self::Checksum => "checksum",
            Self::Decompress => "decompress",
            Self::Deserialize => "deserialize",
            Self::WrongType => "wrong_type",
            Self::WrongKey => "wrong_key",
            Self::TypeMismatch => "type_mismatch",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the cache may overwrite such an entry with a freshly loaded value. Entries of an
    /// unknown format version may belong to a newer release running beside this one, so they
    /// are left alone.
    pub(crate) fn may_overwrite(self) -> bool {
        !matches!(self, Self::UnknownVersion)
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The header fields of a decoded envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) created_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    pub(crate) refresh_at_ms: u64,
    pub(crate) load_us: u32,
    pub(crate) negative: bool,
    /// A tombstone (see [`FLAG_TOMBSTONE`]).
    pub(crate) tombstone: bool,
    /// [`key_check`] of the Redis key the value was written under.
    pub(crate) key_check: u64,
    /// The fingerprint of the value type that wrote it (0 in a tombstone).
    pub(crate) type_check: u64,
    /// The source version it was written with, if any (see [`FLAG_VERSION`]).
    pub(crate) version: Option<u64>,
}

/// The result of [`encode`].
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    /// Length of the codec's output.
    pub(crate) raw_len: usize,
    /// Length of the (maybe compressed) payload.
    pub(crate) stored_len: usize,
    pub(crate) compressed: bool,
}

/// The compressed form is kept only when it saves at least `1 / MIN_SAVING_DIVISOR` of the raw
/// bytes (12.5 %). LZ4
/// finds a few repeats in most random-looking data (80 % of random 1 KiB values "compressed" by
/// 0.3 % before this rule): keeping those costs a decompression on every read for nothing.
pub(crate) const MIN_SAVING_DIVISOR: usize = 8;

/// Builds an envelope around a codec's `raw` bytes, compressing when `raw` is at least
/// `compression_threshold` bytes long and compression saves at least an eighth of them
/// ([`MIN_SAVING_DIVISOR`]).
///
/// `raw` must already hold `HEADER_LEN` placeholder bytes followed by the codec output; this
/// lets the codec write straight into the final buffer when no compression happens.
pub(crate) fn seal(
    mut buf: Vec<u8>,
    codec_id: u8,
    meta: Meta,
    compression_threshold: usize,
    tags: &[String],
) -> Encoded {
    let raw_len = buf.len().saturating_sub(HEADER_LEN);
    let mut flags = if meta.negative { FLAG_NEGATIVE } else { 0 }
        | if meta.tombstone { FLAG_TOMBSTONE } else { 0 };
    if raw_len >= compression_threshold {
        let raw = &buf[HEADER_LEN..];
        let mut out = vec![0u8; HEADER_LEN + lz4_flex::block::get_maximum_output_size(raw_len)];
        if let Ok(n) = lz4_flex::block::compress_into(raw, &mut out[HEADER_LEN..]) {
            if n <= raw_len - raw_len / MIN_SAVING_DIVISOR && n < raw_len {
                out.truncate(HEADER_LEN + n);
                buf = out;
                flags |= FLAG_LZ4;
            }
        }
    }
    let stored_len = buf.len() - HEADER_LEN;
    if !tags.is_empty() {
        let mut block = Vec::with_capacity(2 + tags.iter().map(|t| 1 + t.len()).sum::<usize>());
        block.extend_from_slice(&[0, 0]);
        for t in tags {
            // Tags are validated to 1..=128 bytes by the caller.
            let len = u8::try_from(t.len()).unwrap_or(u8::MAX);
            block.push(len);
            block.extend_from_slice(&t.as_bytes()[..usize::from(len)]);
        }
        let block_len = u16::try_from(block.len() - 2).unwrap_or(u16::MAX);
        block[..2].copy_from_slice(&block_len.to_le_bytes());
        buf.splice(HEADER_LEN..HEADER_LEN, block);
        flags |= FLAG_TAGS;
    }
    if let Some(version) = meta.version {
        buf.splice(HEADER_LEN..HEADER_LEN, version.to_be_bytes());
        flags |= FLAG_VERSION;
    }
    let header = &mut buf[..HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = FORMAT_VERSION;
    header[5] = codec_id;
    header[6] = flags;
    header[7] = 0;
    header[8..16].copy_from_slice(&meta.created_at_ms.to_le_bytes());
    header[16..24].copy_from_slice(&meta.expires_at_ms.to_le_bytes());
    header[24..32].copy_from_slice(&meta.refresh_at_ms.to_le_bytes());
    header[32..36].copy_from_slice(&meta.load_us.to_le_bytes());
    header[36..40].copy_from_slice(&len_u32(raw_len).to_le_bytes());
    header[40..44].copy_from_slice(&len_u32(stored_len).to_le_bytes());
    header[44..52].copy_from_slice(&meta.key_check.to_le_bytes());
    header[52..60].copy_from_slice(&meta.type_check.to_le_bytes());
    let crc = checksum(&buf[..CHECKED], &buf[HEADER_LEN..]);
    buf[CHECKED..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    Encoded {
        stored_len,
        bytes: buf,
        raw_len,
        compressed: flags & FLAG_LZ4 != 0,
    }
}

fn len_u32(n: usize) -> u32 {
    // Callers cap values far below 4 GiB (`max_value_bytes`); saturate rather than wrap.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// CRC-32 of the first 60 header bytes followed by everything after the header.
pub(crate) fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// An opened envelope: header fields and the codec's bytes (decompressed if needed).
#[derive(Debug)]
pub(crate) struct Opened<'a> {
    pub(crate) meta: Meta,
    pub(crate) raw: std::borrow::Cow<'a, [u8]>,
    pub(crate) tags: Vec<String>,
}

fn parse_tags(block: &[u8]) -> Result<Vec<String>, Corruption> {
    let mut tags = Vec::new();
    let mut rest = block;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || tail.len() < len {
            return Err(Corruption::BadLength);
        }
        let tag = std::str::from_utf8(&tail[..len]).map_err(|_| Corruption::BadLength)?;
        tags.push(tag.to_owned());
        rest = &tail[len..];
    }
    Ok(tags)
}

/// Checks and opens an envelope. `max_raw` caps the raw (decompressed) length.
pub(crate) fn open(bytes: &[u8], codec_id: u8, max_raw: usize) -> Result<Opened<'_>, Corruption> {
    if bytes.len() < HEADER_LEN || bytes[0..4] != MAGIC {
        return Err(Corruption::NotAnEnvelope);
    }
    if bytes[4] != FORMAT_VERSION {
        return Err(Corruption::UnknownVersion);
    }
    if bytes[5] != codec_id {
        return Err(Corruption::CodecMismatch);
    }
    let flags = bytes[6];
    if flags & !(FLAG_LZ4 | FLAG_TAGS | FLAG_NEGATIVE | FLAG_TOMBSTONE | FLAG_VERSION) != 0
        || bytes[7] != 0
    {
        return Err(Corruption::UnknownFlags);
    }
    let raw_len = usize::try_from(u32_at(bytes, 36)).map_err(|_| Corruption::BadLength)?;
    let stored_len = usize::try_from(u32_at(bytes, 40)).map_err(|_| Corruption::BadLength)?;
    let body = &bytes[HEADER_LEN..];
    let (version, after) = if flags & FLAG_VERSION != 0 {
        let Some((v, rest)) = body.split_first_chunk::<8>() else {
            return Err(Corruption::BadLength);
        };
        (Some(u64::from_be_bytes(*v)), rest)
    } else {
        (None, body)
    };
    let (tag_block, payload) = if flags & FLAG_TAGS != 0 {
        let body = after;
        if body.len() < 2 {
            return Err(Corruption::BadLength);
        }
        let block_len = usize::from(u16::from_le_bytes([body[0], body[1]]));
        if body.len() < 2 + block_len {
            return Err(Corruption::BadLength);
        }
        (&body[2..2 + block_len], &body[2 + block_len..])
    } else {
        (&after[..0], after)
    };
    let compressed = flags & FLAG_LZ4 != 0;
    let negative = flags & FLAG_NEGATIVE != 0;
    let tombstone = flags & FLAG_TOMBSTONE != 0;
    if stored_len != payload.len()
        || raw_len > max_raw
        || (!compressed && raw_len != stored_len)
        || (compressed && (stored_len >= raw_len || stored_len == 0))
        || ((negative || tombstone) && (raw_len != 0 || compressed))
    {
        return Err(Corruption::BadLength);
    }
    if checksum(&bytes[..CHECKED], body) != u32_at(bytes, CHECKED) {
        return Err(Corruption::Checksum);
    }
    let tags = parse_tags(tag_block)?;
    let meta = Meta {
        created_at_ms: u64_at(bytes, 8),
        expires_at_ms: u64_at(bytes, 16),
        refresh_at_ms: u64_at(bytes, 24),
        load_us: u32_at(bytes, 32),
        negative,
        tombstone,
        key_check: u64_at(bytes, 44),
        type_check: u64_at(bytes, 52),
        version,
    };
    if !compressed {
        return Ok(Opened {
            meta,
            raw: std::borrow::Cow::Borrowed(payload),
            tags,
        });
    }
    // raw_len is checked against the cap above, so this allocation is bounded.
    let mut out = vec![0u8; raw_len];
    match lz4_flex::block::decompress_into(payload, &mut out) {
        Ok(n) if n == raw_len => Ok(Opened {
            meta,
            raw: std::borrow::Cow::Owned(out),
            tags,
        }),
        _ => Err(Corruption::Decompress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: Meta = Meta {
        created_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_700_000_060_000,
        refresh_at_ms: 1_700_000_030_000,
        load_us: 1234,
        negative: false,
        tombstone: false,
        key_check: 0x0123_4567_89ab_cdef,
        type_check: 0xfedc_ba98_7654_3210,
        version: None,
    };

    fn envelope(raw: &[u8], threshold: usize) -> Encoded {
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(raw);
        seal(buf, 1, META, threshold, &[])
    }

    #[test]
    fn tags_round_trip_and_are_checksummed() {
        let tags = vec!["team:7".to_owned(), "ünï".to_owned()];
        for raw in [b"small".to_vec(), vec![b'x'; 5000]] {
            let mut buf = vec![0u8; HEADER_LEN];
            buf.extend_from_slice(&raw);
            let e = seal(buf, 1, META, 1024, &tags);
            assert_ne!(e.bytes[6] & FLAG_TAGS, 0);
            let o = open(&e.bytes, 1, 1 << 20).unwrap();
            assert_eq!(o.tags, tags);
            assert_eq!(&*o.raw, &raw[..]);
            let mut flipped = e.bytes.clone();
            flipped[HEADER_LEN + 3] ^= 1; // inside the tag block
            assert!(open(&flipped, 1, 1 << 20).is_err());
            for cut in 0..e.bytes.len() {
                assert!(open(&e.bytes[..cut], 1, 1 << 20).is_err());
            }
        }
    }

    #[test]
    fn small_values_are_stored_plain() {
        let e = envelope(b"hello", 1024);
        assert!(!e.compressed);
        assert_eq!(e.bytes.len(), HEADER_LEN + 5);
        let o = open(&e.bytes, 1, 1 << 20).unwrap();
        assert_eq!(&*o.raw, b"hello");
        assert_eq!(o.meta, META);
    }

    #[test]
    fn large_compressible_values_are_compressed_and_round_trip() {
        let raw = vec![b'a'; 10_000];
        let e = envelope(&raw, 1024);
        assert!(e.compressed);
        assert!(e.bytes.len() < 1000);
        assert_eq!(e.raw_len, 10_000);
        assert_eq!(&*open(&e.bytes, 1, 1 << 20).unwrap().raw, &raw[..]);
    }

    #[test]
    fn values_compression_barely_shrinks_stay_plain() {
        let noise = |n: usize| {
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>()
        };
        // 5 % of the value compresses away: not worth a decompression on every read.
        let mut raw = noise(3900);
        raw.resize(4096, 0);
        let e = envelope(&raw, 1024);
        assert!(!e.compressed);
        assert_eq!(e.bytes.len(), HEADER_LEN + raw.len());
        // Half of it does: compressed.
        let mut raw = noise(2048);
        raw.resize(4096, 0);
        let e = envelope(&raw, 1024);
        assert!(e.compressed);
        assert!(e.bytes.len() < HEADER_LEN + 4096 - 4096 / MIN_SAVING_DIVISOR);
        assert_eq!(&*open(&e.bytes, 1, 1 << 20).unwrap().raw, &raw[..]);
    }

    #[test]
    fn incompressible_values_stay_plain() {
        // A simple xorshift stream: no repeats for LZ4 to find.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let raw: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = envelope(&raw, 1024);
        assert!(!e.compressed);
        assert_eq!(&*open(&e.bytes, 1, 1 << 20).unwrap().raw, &raw[..]);
    }

    #[test]
    fn every_check_has_its_reason() {
        let good = envelope(&[b'z'; 2000], 1024).bytes;
        assert!(open(&good, 1, 1 << 20).is_ok());

        assert_eq!(
            open(b"", 1, 1 << 20).unwrap_err(),
            Corruption::NotAnEnvelope
        );
        assert_eq!(
            open(&good[..10], 1, 1 << 20).unwrap_err(),
            Corruption::NotAnEnvelope
        );

        let mut v = good.clone();
        v[4] = FORMAT_VERSION + 1;
        assert_eq!(
            open(&v, 1, 1 << 20).unwrap_err(),
            Corruption::UnknownVersion
        );
        assert_eq!(
            open(&good, 2, 1 << 20).unwrap_err(),
            Corruption::CodecMismatch
        );
        let mut f = good.clone();
        f[6] |= 0x80;
        assert_eq!(open(&f, 1, 1 << 20).unwrap_err(), Corruption::UnknownFlags);
        assert_eq!(
            open(&good[..good.len() - 1], 1, 1 << 20).unwrap_err(),
            Corruption::BadLength
        );
        assert_eq!(open(&good, 1, 100).unwrap_err(), Corruption::BadLength);

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert_eq!(
            open(&flipped, 1, 1 << 20).unwrap_err(),
            Corruption::Checksum
        );
    }

    /// Re-seals a header after editing it, so only the later checks can catch the edit.
    fn reseal(mut b: Vec<u8>) -> Vec<u8> {
        let crc = checksum(&b[..CHECKED], &b[HEADER_LEN..]);
        b[CHECKED..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Seals an entry without payload (negative or tombstone), checks it opens with the same
    /// flags, and that the same flags with a payload are corrupt. Returns the sealed bytes.
    fn empty_entry_round_trips(meta: Meta) -> Vec<u8> {
        let e = seal(vec![0u8; HEADER_LEN], 1, meta, 1024, &[]);
        assert_eq!(e.bytes.len(), HEADER_LEN);
        let o = open(&e.bytes, 1, 1 << 20).unwrap();
        assert_eq!(
            (o.meta.negative, o.meta.tombstone),
            (meta.negative, meta.tombstone)
        );
        assert!(o.raw.is_empty());
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(b"x");
        let bad = seal(buf, 1, meta, 1024, &[]);
        assert_eq!(
            open(&bad.bytes, 1, 1 << 20).unwrap_err(),
            Corruption::BadLength
        );
        e.bytes
    }

    #[test]
    fn negative_entries_round_trip_and_must_be_empty() {
        let bytes = empty_entry_round_trips(Meta {
            negative: true,
            ..META
        });
        assert_eq!(bytes[6], FLAG_NEGATIVE);
    }

    #[test]
    fn tombstones_round_trip_must_be_empty_and_differ_by_nonce() {
        let meta = Meta {
            tombstone: true,
            ..META
        };
        let bytes = empty_entry_round_trips(meta);
        assert_eq!(bytes[6], FLAG_TOMBSTONE);
        // Another nonce (refresh-at field), another header: a load that saw one tombstone
        // does not mistake the next for it.
        let other = Meta {
            refresh_at_ms: META.refresh_at_ms + 1,
            ..meta
        };
        let e2 = seal(vec![0u8; HEADER_LEN], 1, other, 1024, &[]);
        assert_ne!(bytes[..HEADER_LEN], e2.bytes[..HEADER_LEN]);
    }

    #[test]
    fn a_source_version_round_trips_before_the_tags_and_is_length_checked() {
        let meta = Meta {
            version: Some(0x0102_0304_0506_0708),
            ..META
        };
        let tags = vec!["t".to_owned()];
        let e = seal(
            [vec![0u8; HEADER_LEN], b"payload".to_vec()].concat(),
            1,
            meta,
            1024,
            &tags,
        );
        assert_eq!(e.bytes[6], FLAG_VERSION | FLAG_TAGS);
        assert_eq!(
            e.bytes[HEADER_LEN..HEADER_LEN + 8],
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        let opened = open(&e.bytes, 1, 1 << 20).unwrap();
        assert_eq!(opened.meta, meta);
        assert_eq!(opened.tags, tags);
        assert_eq!(&*opened.raw, b"payload");
        // Cut inside the version: a length error, not a panic.
        let short = reseal(e.bytes[..HEADER_LEN + 4].to_vec());
        assert_eq!(open(&short, 1, 1 << 20).unwrap_err(), Corruption::BadLength);
    }

    #[test]
    fn forged_raw_length_with_valid_checksum_is_rejected_before_allocating() {
        let mut b = envelope(&[b'q'; 5000], 1024).bytes;
        b[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
        let b = reseal(b);
        assert_eq!(open(&b, 1, 64 << 20).unwrap_err(), Corruption::BadLength);
    }

    #[test]
    fn wrong_raw_length_within_cap_fails_decompression() {
        let mut b = envelope(&[b'q'; 5000], 1024).bytes;
        b[36..40].copy_from_slice(&6000u32.to_le_bytes());
        let b = reseal(b);
        assert_eq!(open(&b, 1, 64 << 20).unwrap_err(), Corruption::Decompress);
    }

    #[test]
    fn garbage_lz4_payload_with_valid_checksum_is_a_decompress_error() {
        let mut b = envelope(&[b'q'; 5000], 1024).bytes;
        for x in &mut b[HEADER_LEN..] {
            *x = 0xff;
        }
        let b = reseal(b);
        assert_eq!(open(&b, 1, 64 << 20).unwrap_err(), Corruption::Decompress);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn meta() -> impl Strategy<Value = Meta> {
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<(u64, u64, Option<u64>)>(),
            )
                .prop_map(
                    |(
                        created_at_ms,
                        expires_at_ms,
                        refresh_at_ms,
                        load_us,
                        (key_check, type_check, version),
                    )| Meta {
                        created_at_ms,
                        expires_at_ms,
                        refresh_at_ms,
                        load_us,
                        negative: false,
                        tombstone: false,
                        key_check,
                        type_check,
                        version,
                    },
                )
        }

        proptest! {
            #[test]
            fn any_value_round_trips(
                raw in proptest::collection::vec(any::<u8>(), 0..4096),
                repeat in 1usize..8,
                meta in meta(),
                threshold in 0usize..2048,
                tags in proptest::collection::vec("[a-z:0-9]{1,20}", 0..4),
            ) {
                // Repeating makes some inputs compressible.
                let raw: Vec<u8> = raw.iter().copied().cycle().take(raw.len() * repeat).collect();
                let mut buf = vec![0u8; HEADER_LEN];
                buf.extend_from_slice(&raw);
                let e = seal(buf, 7, meta, threshold, &tags);
                let o = open(&e.bytes, 7, 1 << 20).unwrap();
                prop_assert_eq!(&*o.raw, &raw[..]);
                prop_assert_eq!(o.meta, meta);
                prop_assert_eq!(o.tags, tags);
            }

            #[test]
            fn any_bytes_open_or_are_rejected_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let _ = open(&bytes, 1, 1 << 16);
            }

            #[test]
            fn any_mutation_of_a_valid_envelope_is_caught_or_harmless(
                raw in proptest::collection::vec(any::<u8>(), 1..2048),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let mut buf = vec![0u8; HEADER_LEN];
                buf.extend_from_slice(&raw);
                let mut bytes = seal(buf, 1, META, 64, &[]).bytes;
                let i = at.index(bytes.len());
                bytes[i] ^= flip;
                // The checksum covers everything but itself: any single-byte change is
                // rejected (a change to the checksum bytes is a checksum mismatch too).
                prop_assert!(open(&bytes, 1, 1 << 20).is_err());
            }
        }
    }

    #[test]
    fn no_prefix_of_an_envelope_opens() {
        let good = envelope(&[b'k'; 3000], 1024).bytes;
        for cut in 0..good.len() {
            assert!(open(&good[..cut], 1, 1 << 20).is_err(), "cut at {cut}");
        }
    }
}
