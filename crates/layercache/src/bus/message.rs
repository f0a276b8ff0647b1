//! The bus's wire format: one message is a batch of invalidations from one sender.
//!
//! Version 1, integers little-endian:
//!
//! | field | size |
//! |---|---|
//! | magic `LCBM` | 4 |
//! | version (`1`) | 1 |
//! | sender instance id | 16 |
//! | sequence number (per sender, +1 per message) | 8 |
//! | entry count | 4 |
//! | entries | … |
//!
//! Each entry is a kind byte and its payload (`str8` = u8 length + UTF-8, `bytes32` = u32
//! length + bytes):
//!
//! | kind | payload |
//! |---|---|
//! | 1 key | region `str8`, key `bytes32` |
//! | 2 region generation | region `str8`, schema u32, generation u64 |
//! | 3 tag | tag `bytes32` (UTF-8) |
//! | 4 all | — |
//! | 5 acknowledgement | the instance id it is for (16 bytes), the sequence number of that instance's message it acknowledges (u64) |
//! | 6 acknowledgement requested | — (the sender waits for every live instance to acknowledge this message) |
//!
//! Kinds 5 and 6 are sent only by caches built with
//! [`ack_writes`](crate::LayerCacheBuilder::ack_writes); a release that predates them rejects
//! such a message as malformed.
//!
//! A message with no entries is a heartbeat. Messages never carry values. Parsing checks every
//! length against the bytes actually present and fails on anything unknown or left over.

/// The first bytes of every bus message.
pub(crate) const MAGIC: [u8; 4] = *b"LCBM";
/// The message format this build writes and reads.
pub(crate) const VERSION: u8 = 1;

const HEADER: usize = 4 + 1 + 16 + 8 + 4;

/// An instance's random id.
pub(crate) type InstanceId = [u8; 16];

/// One invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// One key of a region changed or was removed.
    Key { region: String, key: Vec<u8> },
    /// A region moved to a new generation.
    Region {
        region: String,
        schema: u32,
        generation: u64,
    },
    /// Every entry carrying this tag was invalidated.
    Tag(String),
    /// The whole cache was cleared.
    All,
    /// "I have applied your message `seq`": for the instance `to`.
    Ack { to: InstanceId, seq: u64 },
    /// The sender asks every instance to acknowledge this message.
    AckPlease,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) sender: InstanceId,
    pub(crate) seq: u64,
    pub(crate) entries: Vec<Entry>,
}

/// Why a message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Not a bus message (wrong magic or too short).
    Foreign,
    /// A bus message of another format version.
    Version,
    /// A bus message whose body does not parse.
    Malformed,
}

/// The encoded size of an entry, for batching.
pub(crate) fn entry_len(e: &Entry) -> usize {
    1 + match e {
        Entry::Key { region, key } => 1 + region.len() + 4 + key.len(),
        Entry::Region { region, .. } => 1 + region.len() + 12,
        Entry::Tag(tag) => 4 + tag.len(),
        Entry::All | Entry::AckPlease => 0,
        Entry::Ack { .. } => 16 + 8,
    }
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    // Region names are validated to at most 64 bytes.
    let len = u8::try_from(s.len()).unwrap_or(u8::MAX);
    out.push(len);
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&b[..len as usize]);
}

/// Encodes a message.
pub(crate) fn encode(sender: &InstanceId, seq: u64, entries: &[Entry]) -> Vec<u8> {
    let refs: Vec<&Entry> = entries.iter().collect();
    encode_refs(sender, seq, &refs)
}

/// Encodes a message of borrowed entries.
pub(crate) fn encode_refs(sender: &InstanceId, seq: u64, entries: &[&Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.iter().map(|e| entry_len(e)).sum::<usize>());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(sender);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for e in entries {
        match e {
            Entry::Key { region, key } => {
                out.push(1);
                put_str8(&mut out, region);
                put_bytes32(&mut out, key);
            }
            Entry::Region {
                region,
                schema,
                generation,
            } => {
                out.push(2);
                put_str8(&mut out, region);
                out.extend_from_slice(&schema.to_le_bytes());
                out.extend_from_slice(&generation.to_le_bytes());
            }
            Entry::Tag(tag) => {
                out.push(3);
                put_bytes32(&mut out, tag.as_bytes());
            }
            Entry::All => out.push(4),
            Entry::Ack { to, seq } => {
                out.push(5);
                out.extend_from_slice(to);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Entry::AckPlease => out.push(6),
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Rejected> {
        if self.0.len() < n {
            return Err(Rejected::Malformed);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Rejected> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Rejected> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, Rejected> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn str8(&mut self) -> Result<String, Rejected> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Rejected::Malformed)
    }

    fn bytes32(&mut self) -> Result<&'a [u8], Rejected> {
        let n = usize::try_from(self.u32()?).map_err(|_| Rejected::Malformed)?;
        self.take(n)
    }
}

/// Decodes a message, trusting no length in it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Message, Rejected> {
    if bytes.len() < 5 || bytes[..4] != MAGIC {
        return Err(Rejected::Foreign);
    }
    if bytes[4] != VERSION {
        return Err(Rejected::Version);
    }
    let mut r = Reader(&bytes[5..]);
    let mut sender = [0u8; 16];
    sender.copy_from_slice(r.take(16)?);
    let seq = r.u64()?;
    let count = r.u32()?;
    // Every entry takes at least one byte: a count above the bytes left is a lie.
    if count as usize > r.0.len() {
        return Err(Rejected::Malformed);
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let e = match r.u8()? {
            1 => Entry::Key {
                region: r.str8()?,
                key: r.bytes32()?.to_vec(),
            },
            2 => Entry::Region {
                region: r.str8()?,
                schema: r.u32()?,
                generation: r.u64()?,
            },
            3 => Entry::Tag(
                String::from_utf8(r.bytes32()?.to_vec()).map_err(|_| Rejected::Malformed)?,
            ),
            4 => Entry::All,
            5 => {
                let mut to = [0u8; 16];
                to.copy_from_slice(r.take(16)?);
                Entry::Ack { to, seq: r.u64()? }
            }
            6 => Entry::AckPlease,
            _ => return Err(Rejected::Malformed),
        };
        entries.push(e);
    }
    if !r.0.is_empty() {
        return Err(Rejected::Malformed);
    }
    Ok(Message {
        sender,
        seq,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Key {
                region: "user".into(),
                key: b"\x00*{x}".to_vec(),
            },
            Entry::Key {
                region: "user".into(),
                key: Vec::new(),
            },
            Entry::Region {
                region: "item".into(),
                schema: 3,
                generation: 1_700_000_000_123,
            },
            Entry::Tag("team:7".into()),
            Entry::All,
            Entry::Ack {
                to: [9u8; 16],
                seq: u64::MAX,
            },
            Entry::AckPlease,
        ]
    }

    #[test]
    fn round_trip() {
        let id = [7u8; 16];
        let bytes = encode(&id, 42, &sample());
        assert_eq!(
            bytes.len(),
            HEADER + sample().iter().map(entry_len).sum::<usize>()
        );
        let m = decode(&bytes).unwrap();
        assert_eq!(m.sender, id);
        assert_eq!(m.seq, 42);
        assert_eq!(m.entries, sample());
    }

    #[test]
    fn heartbeat_is_an_empty_batch() {
        let m = decode(&encode(&[1; 16], 9, &[])).unwrap();
        assert!(m.entries.is_empty());
        assert_eq!(m.seq, 9);
    }

    #[test]
    fn garbage_is_rejected_never_panics() {
        assert_eq!(decode(b""), Err(Rejected::Foreign));
        assert_eq!(decode(b"hello world"), Err(Rejected::Foreign));
        let good = encode(&[3; 16], 1, &sample());
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2), Err(Rejected::Version));
        for cut in 5..good.len() {
            assert_eq!(decode(&good[..cut]), Err(Rejected::Malformed), "cut {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(Rejected::Malformed));
        // A count that claims billions of entries.
        let mut lie = encode(&[3; 16], 1, &[]);
        lie[29..33].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&lie), Err(Rejected::Malformed));
        // An unknown entry kind.
        let mut unknown = encode(&[3; 16], 1, &[Entry::All]);
        *unknown.last_mut().unwrap() = 99;
        assert_eq!(decode(&unknown), Err(Rejected::Malformed));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn entry() -> impl Strategy<Value = Entry> {
            prop_oneof![
                ("[a-z]{1,64}", proptest::collection::vec(any::<u8>(), 0..64))
                    .prop_map(|(region, key)| Entry::Key { region, key }),
                ("[a-z]{1,64}", any::<u32>(), any::<u64>()).prop_map(
                    |(region, schema, generation)| Entry::Region {
                        region,
                        schema,
                        generation
                    }
                ),
                "\\PC{1,32}".prop_map(Entry::Tag),
                Just(Entry::All),
            ]
        }

        proptest! {
            #[test]
            fn any_message_round_trips(
                sender in any::<[u8; 16]>(),
                seq in any::<u64>(),
                entries in proptest::collection::vec(entry(), 0..20),
            ) {
                let m = decode(&encode(&sender, seq, &entries)).unwrap();
                prop_assert_eq!(m.sender, sender);
                prop_assert_eq!(m.seq, seq);
                prop_assert_eq!(m.entries, entries);
            }

            #[test]
            fn any_bytes_decode_or_are_rejected_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
                magic in any::<bool>(),
            ) {
                let mut bytes = bytes;
                if magic {
                    // Make the deep parser run too.
                    let mut head = MAGIC.to_vec();
                    head.push(VERSION);
                    head.extend_from_slice(&bytes);
                    bytes = head;
                }
                let _ = decode(&bytes);
            }
        }
    }

    #[test]
    fn every_byte_flip_decodes_or_is_rejected() {
        let good = encode(&[5; 16], 77, &sample());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut b = good.clone();
                b[i] ^= 1 << bit;
                let _ = decode(&b);
            }
        }
    }
}
