//! The bus as an operator's tool sees it: the channel of a cache, and its messages decoded
//! into public types.

use super::message::{decode, Entry, Rejected};
use crate::{coherence::InstanceId, envelope::FORMAT_VERSION, key::space};

/// The pub/sub channel of a cache's bus: `{cache}:m{format}:bus`. On a Redis Cluster it is a
/// sharded channel (`SSUBSCRIBE`) unless the cache was built with
/// [`ClusterBus::Plain`](crate::ClusterBus::Plain).
pub fn channel(cache: &str) -> String {
    format!("{cache}:{}{FORMAT_VERSION}:bus", space::META)
}

/// One bus message ([`read_message`]).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// The instance that sent it.
    pub sender: InstanceId,
    /// Its sequence number: +1 per message of one sender (a jump is a lost message).
    pub seq: u64,
    /// What it announces; none in a heartbeat.
    pub entries: Vec<WireEntry>,
}

/// One announcement in a [`WireMessage`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireEntry {
    /// One key of a region changed or was removed (the key's [`CacheKey`](crate::CacheKey)
    /// bytes).
    Key {
        /// The region.
        region: String,
        /// The key's bytes.
        key: Vec<u8>,
    },
    /// A region moved to a new generation.
    Region {
        /// The region.
        region: String,
        /// Its schema version.
        schema: u32,
        /// The new generation.
        generation: u64,
    },
    /// Every entry carrying this tag was invalidated.
    Tag(String),
    /// The whole cache was cleared.
    All,
    /// An acknowledgement, for an acknowledged write of instance `to`.
    Ack {
        /// The instance whose message is acknowledged.
        to: InstanceId,
        /// The sequence number acknowledged.
        seq: u64,
    },
    /// The sender waits for every live instance to acknowledge this message.
    AckRequested,
}

/// Why bytes on the bus channel are not a message ([`read_message`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAMessage {
    /// Not a bus message at all.
    Foreign,
    /// A bus message of another format version.
    Version,
    /// A bus message whose body does not parse.
    Malformed,
}

impl std::fmt::Display for NotAMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Foreign => "not a bus message",
            Self::Version => "a bus message of another format version",
            Self::Malformed => "a malformed bus message",
        })
    }
}

/// Decodes bytes received on a bus channel, trusting no length in them (the same decoder the
/// listener uses).
///
/// # Errors
///
/// [`NotAMessage`] says why the bytes are not a message.
pub fn read_message(bytes: &[u8]) -> Result<WireMessage, NotAMessage> {
    let m = decode(bytes).map_err(|r| match r {
        Rejected::Foreign => NotAMessage::Foreign,
        Rejected::Version => NotAMessage::Version,
        Rejected::Malformed => NotAMessage::Malformed,
    })?;
    Ok(WireMessage {
        sender: InstanceId(m.sender),
        seq: m.seq,
        entries: m
            .entries
            .into_iter()
            .map(|e| match e {
                Entry::Key { region, key } => WireEntry::Key { region, key },
                Entry::Region {
                    region,
                    schema,
                    generation,
                } => WireEntry::Region {
                    region,
                    schema,
                    generation,
                },
                Entry::Tag(t) => WireEntry::Tag(t),
                Entry::All => WireEntry::All,
                Entry::Ack { to, seq } => WireEntry::Ack {
                    to: InstanceId(to),
                    seq,
                },
                Entry::AckPlease => WireEntry::AckRequested,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::message::encode;

    #[test]
    fn messages_read_back_as_sent() {
        let id = [7u8; 16];
        let bytes = encode(
            &id,
            42,
            &[
                Entry::Key {
                    region: "users".into(),
                    key: b"1".to_vec(),
                },
                Entry::Tag("t".into()),
                Entry::All,
            ],
        );
        let m = read_message(&bytes).unwrap();
        assert_eq!(m.sender, InstanceId(id));
        assert_eq!(m.seq, 42);
        assert_eq!(
            m.entries,
            vec![
                WireEntry::Key {
                    region: "users".into(),
                    key: b"1".to_vec()
                },
                WireEntry::Tag("t".into()),
                WireEntry::All
            ]
        );
        assert_eq!(read_message(b"hello"), Err(NotAMessage::Foreign));
        assert_eq!(
            read_message(&bytes[..bytes.len() - 1]),
            Err(NotAMessage::Malformed)
        );
        assert_eq!(channel("shop"), "shop:m2:bus");
    }
}
