//! Codecs: how a value becomes bytes and back.
//!
//! A [`Codec`] turns a serde value into bytes and back. Every value in Redis is stored with the
//! id of the codec that wrote it (see [`crate::envelope`]); a reader whose region uses another
//! codec treats the entry as a miss rather than decoding it with the wrong format.
//!
//! - [`Bincode`] (id 1, the default): bincode 2 through its serde support, with an allocation
//!   limit. bincode is not self-describing, which is why keys and envelopes carry versions.
//! - `Postcard` (id 2, feature `postcard`): postcard 1, compact and maintained.
//!
//! Own codecs must use an id from 128 to 255; ids below 128 are reserved for this crate.

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::BoxError;

/// Serializes values to bytes and back.
///
/// Implementations must be deterministic in the sense that `decode(encode(v)) == v`, must not
/// panic on any input to `decode`, and must bound the memory a hostile input can make them
/// allocate.
pub trait Codec: Clone + Debug + Send + Sync + 'static {
    /// The id stored in every envelope this codec writes. 1 to 127 are reserved for the
    /// crate's codecs; use 128 to 255 for your own.
    const ID: u8;

    /// A short name for logs and metrics.
    const NAME: &'static str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    ///
    /// When the value cannot be represented (for example a map with non-string keys in a
    /// format that needs them).
    fn encode<V: Serialize + ?Sized>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError>;

    /// Decodes a value from exactly `bytes` (trailing bytes are an error).
    ///
    /// # Errors
    ///
    /// When the bytes are not a valid encoding of `V`.
    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

/// The most bincode may allocate while decoding one value.
const BINCODE_LIMIT: usize = 256 << 20;

/// The default codec: bincode 2 (standard configuration: little-endian, variable-length
/// integers) with a 256 MiB allocation limit.
///
/// Byte buffers in values: serde hands a `Vec<u8>` field to the codec as a sequence of
/// numbers, which bincode encodes and decodes one element at a time (~10 ns a byte on the
/// development machine; encoding 1 KiB bodies alone was 3 % of the service workload's CPU in
/// `docs/BENCHMARKS.md`). Marking the field `#[serde(with = "serde_bytes")]` (the
/// `serde_bytes` crate) hands it over as bytes, which bincode copies whole.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

impl Codec for Bincode {
    const ID: u8 = 1;
    const NAME: &'static str = "bincode";

    fn encode<V: Serialize + ?Sized>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
        Ok(())
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, BoxError> {
        let config = bincode::config::standard().with_limit::<BINCODE_LIMIT>();
        let (value, read) = bincode::serde::decode_from_slice(bytes, config)?;
        if read != bytes.len() {
            return Err(format!("{} trailing bytes after the value", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// postcard 1 (feature `postcard`).
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const ID: u8 = 2;
    const NAME: &'static str = "postcard";

    fn encode<V: Serialize + ?Sized>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), BoxError> {
        let taken = std::mem::take(out);
        *out = postcard::to_extend(value, taken)?;
        Ok(())
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, BoxError> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes after the value", rest.len()).into());
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn roundtrip<C: Codec>(c: C) {
        let u = User {
            id: 7,
            name: "Ada".into(),
            tags: vec!["a".into(), "b".into()],
        };
        let mut out = vec![9u8];
        c.encode(&u, &mut out).unwrap();
        assert_eq!(out[0], 9, "encode appends");
        let back: User = c.decode(&out[1..]).unwrap();
        assert_eq!(back, u);
        // Trailing garbage and truncation are errors, never panics.
        let mut longer = out[1..].to_vec();
        longer.push(0);
        assert!(c.decode::<User>(&longer).is_err());
        for cut in 0..out.len() - 1 {
            assert!(c.decode::<User>(&out[1..1 + cut]).is_err());
        }
    }

    #[test]
    fn bincode_roundtrip() {
        roundtrip(Bincode);
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_roundtrip() {
        roundtrip(Postcard);
    }

    #[test]
    fn bincode_rejects_a_huge_claimed_length_without_allocating_it() {
        // A Vec<u8> whose varint length claims u64::MAX elements.
        let bytes = [253u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(Bincode.decode::<Vec<u8>>(&bytes).is_err());
    }
}
