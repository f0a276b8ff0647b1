//! Reading an envelope for a person: every header field, whatever the reader's region, with
//! a verdict instead of a failure.

use super::{
    key_check, open, parse_tags, u32_at, u64_at, Corruption, FLAG_LZ4, FLAG_NEGATIVE, FLAG_TAGS,
    FLAG_TOMBSTONE, FLAG_VERSION, HEADER_LEN, MAGIC,
};

/// What an envelope's bytes say ([`inspect`]): the header as written, and whether the whole
/// passes the checks a cache makes before using it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The envelope format version (byte 4).
    pub format: u8,
    /// The codec id ([`Codec::ID`](crate::Codec::ID): 1 bincode, 2 postcard).
    pub codec_id: u8,
    /// The flag byte.
    pub flags: u8,
    /// The payload is LZ4-compressed.
    pub compressed: bool,
    /// A cached "not found".
    pub negative: bool,
    /// A tombstone left by an invalidation.
    pub tombstone: bool,
    /// When it was written, Unix milliseconds.
    pub created_at_ms: u64,
    /// When it goes stale (kept past it only as a fail-safe fallback), Unix milliseconds.
    pub expires_at_ms: u64,
    /// When an early refresh is due (soft expiry), Unix milliseconds; a nonce in a tombstone.
    pub refresh_at_ms: u64,
    /// How long the loader took, microseconds (0 for an inserted value).
    pub load_us: u32,
    /// The codec's bytes before compression.
    pub raw_len: u32,
    /// The payload's bytes as stored.
    pub stored_len: u32,
    /// Whether the bytes were written for the Redis key given to [`inspect`] (`None` when no
    /// key was given).
    pub key_matches: Option<bool>,
    /// The fingerprint of the value type that wrote it (0 in a tombstone).
    pub type_fingerprint: u64,
    /// The source version it was written with, if any.
    pub version: Option<u64>,
    /// Its tags (empty when the tag block is unreadable: see `verdict`).
    pub tags: Vec<String>,
    /// `Ok` when the envelope passes every check a reader with the same codec makes (lengths,
    /// flags, checksum, decompression, and the key when given); else the first that fails.
    pub verdict: Result<(), Corruption>,
    /// The codec's bytes (decompressed), when the verdict is `Ok`.
    pub payload: Vec<u8>,
}

/// Reads an envelope's header and checks the whole, as a cache would before using it, for an
/// operator's tool: `redis_key` (the key the bytes were read from) adds the key check, and
/// `max_raw` caps the decompressed size (nothing larger is allocated).
///
/// # Errors
///
/// [`Corruption::NotAnEnvelope`] when the bytes are too short for a header or do not start
/// with [`MAGIC`]; anything after that is reported in [`Inspection::verdict`].
pub fn inspect(
    bytes: &[u8],
    redis_key: Option<&[u8]>,
    max_raw: usize,
) -> Result<Inspection, Corruption> {
    if bytes.len() < HEADER_LEN || bytes[0..4] != MAGIC {
        return Err(Corruption::NotAnEnvelope);
    }
    let flags = bytes[6];
    let written_for = u64_at(bytes, 44);
    let key_matches = redis_key.map(|k| key_check(k) == written_for);
    let (verdict, tags, payload) = match open(bytes, bytes[5], max_raw) {
        Ok(opened) if key_matches == Some(false) => {
            (Err(Corruption::WrongKey), opened.tags, Vec::new())
        }
        Ok(opened) => (Ok(()), opened.tags, opened.raw.into_owned()),
        Err(e) => (Err(e), best_effort_tags(bytes, flags), Vec::new()),
    };
    let version = (flags & FLAG_VERSION != 0)
        .then(|| bytes.get(HEADER_LEN..HEADER_LEN + 8))
        .flatten()
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    Ok(Inspection {
        format: bytes[4],
        codec_id: bytes[5],
        flags,
        compressed: flags & FLAG_LZ4 != 0,
        negative: flags & FLAG_NEGATIVE != 0,
        tombstone: flags & FLAG_TOMBSTONE != 0,
        created_at_ms: u64_at(bytes, 8),
        expires_at_ms: u64_at(bytes, 16),
        refresh_at_ms: u64_at(bytes, 24),
        load_us: u32_at(bytes, 32),
        raw_len: u32_at(bytes, 36),
        stored_len: u32_at(bytes, 40),
        key_matches,
        type_fingerprint: u64_at(bytes, 52),
        version,
        tags,
        verdict,
        payload,
    })
}

/// The tags of an envelope that failed a check, when its tag block still reads.
fn best_effort_tags(bytes: &[u8], flags: u8) -> Vec<String> {
    if flags & FLAG_TAGS == 0 {
        return Vec::new();
    }
    let start = HEADER_LEN + if flags & FLAG_VERSION != 0 { 8 } else { 0 };
    let Some(len) = bytes
        .get(start..start + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map(|b| usize::from(u16::from_le_bytes(b)))
    else {
        return Vec::new();
    };
    bytes
        .get(start + 2..start + 2 + len)
        .and_then(|block| parse_tags(block).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{seal, Meta};

    fn sealed(raw: &[u8], tags: &[String], key: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(raw);
        let meta = Meta {
            created_at_ms: 1,
            expires_at_ms: 2,
            refresh_at_ms: 2,
            load_us: 5,
            negative: false,
            tombstone: false,
            key_check: key_check(key),
            type_check: 9,
            version: Some(7),
        };
        seal(buf, 1, meta, 64, tags).bytes
    }

    #[test]
    fn a_sound_envelope_reads_whole() {
        let raw = vec![b'x'; 4000];
        let bytes = sealed(&raw, &["t1".to_owned()], b"k");
        let i = inspect(&bytes, Some(b"k"), 1 << 20).unwrap();
        assert!(i.compressed);
        assert_eq!(i.raw_len, 4000);
        assert!(i.stored_len < 4000);
        assert_eq!(i.tags, vec!["t1".to_owned()]);
        assert_eq!(i.version, Some(7));
        assert_eq!(i.type_fingerprint, 9);
        assert_eq!(i.key_matches, Some(true));
        assert_eq!(i.verdict, Ok(()));
        assert_eq!(i.payload, raw);
    }

    #[test]
    fn a_damaged_envelope_still_shows_its_header_and_says_what_is_wrong() {
        let mut bytes = sealed(b"hello", &["t1".to_owned()], b"k");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let i = inspect(&bytes, None, 1 << 20).unwrap();
        assert_eq!(i.verdict, Err(Corruption::Checksum));
        assert_eq!(i.tags, vec!["t1".to_owned()]);
        assert!(i.payload.is_empty());
        let i = inspect(&sealed(b"hello", &[], b"k"), Some(b"other"), 1 << 20).unwrap();
        assert_eq!(i.verdict, Err(Corruption::WrongKey));
        assert_eq!(i.key_matches, Some(false));
        assert_eq!(inspect(b"short", None, 10), Err(Corruption::NotAnEnvelope));
        assert_eq!(
            inspect(&[0u8; 80], None, 10),
            Err(Corruption::NotAnEnvelope)
        );
    }

    #[test]
    fn truncated_bytes_never_panic() {
        let bytes = sealed(&[b'y'; 300], &["a".to_owned(), "b".to_owned()], b"k");
        for n in 0..bytes.len() {
            let _ = inspect(&bytes[..n], Some(b"k"), 1 << 20);
        }
    }
}
