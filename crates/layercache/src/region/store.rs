//! Turning values into stored bytes and L1 entries, with their lifetimes.

use std::{
    any::Any,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};

use super::{Region, Tags, WritePlan};
use crate::{
    codec::Codec,
    envelope::{self, Corruption, Encoded, Meta, HEADER_LEN},
    error::{Error, ErrorKind, Result},
    freshness::unix_millis,
    key::{tag_key, CacheKey},
    l1::{clock, EntryExtras, Freshness, L1Entry, SlidingState},
    options::{millis_ceil, EntryOptions},
    remote::{Announcement, Filled, Write, WriteCondition, WriteMode},
};

/// A value read from Redis.
pub(crate) struct Decoded<V> {
    /// `None` for a cached "not found" or a tombstone.
    pub(crate) value: Option<V>,
    pub(crate) meta: Meta,
    pub(crate) raw_len: usize,
    pub(crate) tags: Tags,
}

impl<V> Decoded<V> {
    /// Logical lifetime left, zero when stale.
    pub(crate) fn left(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.meta.expires_at_ms.saturating_sub(now_ms))
    }
}

/// What an L1 fill records besides the value.
#[derive(Debug, Clone)]
pub(crate) struct L1Life {
    /// Logical L1 lifetime from now (zero: already stale).
    pub(crate) logical: Duration,
    pub(crate) refresh_in: Option<Duration>,
    pub(crate) delta: Duration,
    pub(crate) fail_safe_keep: Duration,
    pub(crate) generation: u64,
    pub(crate) tag_epoch: u64,
    pub(crate) tags: Tags,
    pub(crate) raw_len: usize,
    pub(crate) negative: bool,
    /// When the value was created (Unix ms).
    pub(crate) created_ms: u64,
    /// For a stale value re-served by fail-safe: when it first went stale.
    pub(crate) stale_since: Option<Instant>,
    /// The value's source version, if it was written with one.
    pub(crate) version: Option<u64>,
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Encodes a value (or a negative entry, for `None`) into an envelope.
    pub(crate) fn encode(
        &self,
        value: Option<&V>,
        plan: &WritePlan,
        tags: Option<&[String]>,
        rk: &str,
    ) -> Result<Encoded> {
        let mut buf = vec![0u8; HEADER_LEN];
        if let Some(value) = value {
            if let Err(e) = self.shared.codec.encode(value, &mut buf) {
                self.counters().codec_errors.incr();
                return Err(Error::new(
                    ErrorKind::Codec,
                    format!("{} could not encode the value", C::NAME),
                )
                .with_source(e));
            }
        }
        let raw_len = buf.len() - HEADER_LEN;
        let max = self.cache.settings.max_value_bytes;
        if raw_len > max {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!("the encoded value has {raw_len} bytes; max_value_bytes is {max}"),
            ));
        }
        Ok(envelope::seal(
            buf,
            C::ID,
            plan.meta(
                unix_millis(),
                envelope::key_check(rk.as_bytes()),
                self.shared.fingerprint,
            ),
            self.cache.settings.compression_threshold,
            tags.unwrap_or(&[]),
        ))
    }

    /// Opens and decodes what Redis held under `rk`.
    pub(crate) fn decode(
        &self,
        bytes: &[u8],
        rk: &str,
    ) -> std::result::Result<Decoded<V>, Corruption> {
        let opened = envelope::open(bytes, C::ID, self.cache.settings.max_value_bytes)?;
        if opened.meta.key_check != envelope::key_check(rk.as_bytes()) {
            return Err(Corruption::WrongKey);
        }
        if !opened.meta.tombstone && opened.meta.type_check != self.shared.fingerprint {
            return Err(Corruption::TypeMismatch);
        }
        let value = if opened.meta.negative || opened.meta.tombstone {
            None
        } else {
            Some(
                self.shared
                    .codec
                    .decode(&opened.raw)
                    .map_err(|_| Corruption::Deserialize)?,
            )
        };
        let tags = (!opened.tags.is_empty()).then(|| Arc::from(opened.tags));
        Ok(Decoded {
            value,
            meta: opened.meta,
            raw_len: opened.raw.len(),
            tags,
        })
    }

    /// Writes an envelope (and its tag bookkeeping) to Redis with its plan's expiry, if what
    /// Redis holds passes the [`WriteCondition`]; counts it.
    pub(crate) async fn write_l2(
        &self,
        rk: &str,
        enc: Encoded,
        plan: &WritePlan,
        tags: Option<&[String]>,
        guard: WriteCondition<'_>,
    ) -> Result<Filled> {
        let Some(l2) = &self.cache.l2 else {
            return Ok(Filled::Refused);
        };
        self.count_write(&enc);
        let px = plan.physical_ms();
        let tag_keys: Vec<String> = tags
            .unwrap_or(&[])
            .iter()
            .map(|t| tag_key(&self.cache.name, t))
            .collect();
        l2.fill(Write {
            key: rk,
            value: enc.bytes,
            ttl_ms: px,
            tags: tag_keys,
            condition: guard,
            generation_key: &self.shared.state.generation_key,
        })
        .await
    }

    /// An `insert` or `invalidate`: writes `first` (encoded for the key at the generation this
    /// instance knows) with a fence on that generation, and announces the change on the bus in
    /// the same round trip. If the region has moved on (an `invalidate_all` or `clear` this
    /// instance has not heard of yet), learns the current generation and writes again under it
    /// (`encode` makes the entry for a key), a few times at most. Returns the generation written
    /// under, whether it was written (or refused as older: a versioned write) and what became
    /// of the announcement (the write stands either way).
    pub(crate) async fn write_fenced(
        &self,
        k: &[u8],
        first: (u64, String, Encoded),
        plan: &WritePlan,
        tags: Option<&[String]>,
        encode: impl Fn(&str) -> Result<Encoded>,
    ) -> Result<(u64, Filled, Result<u64>)> {
        const ATTEMPTS: usize = 3;
        let (mut generation, mut rk, mut enc) = first;
        let entry = crate::bus::Entry::Key {
            region: self.shared.state.name.clone(),
            key: k[4..].to_vec(),
        };
        for attempt in 1..=ATTEMPTS {
            let (filled, announced) = self
                .write_announced(&rk, enc, plan, tags, generation, &entry)
                .await?;
            if filled != Filled::Fenced {
                return Ok((generation, filled, announced));
            }
            tracing::debug!(cache.name = %self.cache.name, region = %self.shared.state.name, generation, "the region's generation moved; writing again under the current one");
            self.cache.refresh_generation(&self.shared.state).await;
            if attempt == ATTEMPTS {
                break;
            }
            generation = self.l2_generation()?;
            rk = self.shared.state.data_key(generation, &k[4..]);
            enc = encode(&rk)?;
        }
        Err(Error::new(
            ErrorKind::Redis,
            "the region's generation kept moving during the write",
        ))
    }

    /// One fenced write and its announcement: pipelined in one round trip when there is a bus.
    async fn write_announced(
        &self,
        rk: &str,
        enc: Encoded,
        plan: &WritePlan,
        tags: Option<&[String]>,
        generation: u64,
        entry: &crate::bus::Entry,
    ) -> Result<(Filled, Result<u64>)> {
        let guard = WriteCondition {
            mode: &WriteMode::Set,
            marks: &[],
            fence: Some(generation),
            version: plan.version,
        };
        let (Some(l2), Some(bus)) = (&self.cache.l2, self.cache.key_bus()) else {
            let filled = self.write_l2(rk, enc, plan, tags, guard).await?;
            return Ok((filled, Ok(0)));
        };
        self.count_write(&enc);
        let tag_keys: Vec<String> = tags
            .unwrap_or(&[])
            .iter()
            .map(|t| tag_key(&self.cache.name, t))
            .collect();
        let sequencer = &bus.sequencer;
        let id = sequencer.id;
        // Acknowledged writes ask every instance to acknowledge this message.
        let ack = self
            .cache
            .settings
            .ack_timeout
            .map(|_| crate::bus::Entry::AckPlease);
        let entries: Vec<&crate::bus::Entry> = std::iter::once(entry).chain(ack.as_ref()).collect();
        let message = |seq| crate::bus::message::encode_refs(&id.0, seq, &entries);
        let write = Write {
            key: rk,
            value: enc.bytes,
            ttl_ms: plan.physical_ms(),
            tags: tag_keys,
            condition: guard,
            generation_key: &self.shared.state.generation_key,
        };
        let announcement = Announcement {
            sequencer,
            message: &message,
        };
        l2.fill_announced(write, announcement).await
    }

    pub(super) fn count_write(&self, enc: &Encoded) {
        let c = self.counters();
        c.l2_writes.incr();
        c.bytes_raw.add(enc.raw_len as u64);
        c.bytes_stored.add(enc.stored_len as u64);
        if enc.compressed {
            c.compressed_writes.incr();
        }
    }

    /// The L1 lifetime of a value written here with `plan`.
    pub(crate) fn life_of_plan(
        &self,
        options: &EntryOptions,
        plan: &WritePlan,
    ) -> (Duration, Option<Duration>) {
        let logical = options
            .l1_lifetime(self.cache.settings.time_to_live)
            .min(plan.ttl);
        (logical, plan.soft.filter(|s| *s < logical))
    }

    /// The L1 lifetime of a value read from Redis.
    pub(crate) fn life_of_meta(
        &self,
        options: &EntryOptions,
        meta: &Meta,
        now_ms: u64,
    ) -> (Duration, Option<Duration>) {
        let left = Duration::from_millis(meta.expires_at_ms.saturating_sub(now_ms));
        let logical = options
            .l1_lifetime(self.cache.settings.time_to_live)
            .min(left);
        let refresh_in = (meta.refresh_at_ms < meta.expires_at_ms)
            .then(|| Duration::from_millis(meta.refresh_at_ms.saturating_sub(now_ms)))
            .filter(|r| *r < logical);
        (logical, refresh_in)
    }

    /// Builds an L1 entry. `None` when there is nothing to keep (stale and no fail-safe).
    pub(crate) fn l1_entry(
        &self,
        key_len: usize,
        value: Arc<dyn Any + Send + Sync>,
        options: &EntryOptions,
        life: L1Life,
    ) -> Option<L1Entry> {
        let now = Instant::now();
        let physical = match life.stale_since {
            // A re-served stale value lives until its fail-safe age runs out, no longer.
            Some(since) => (since + life.fail_safe_keep).saturating_duration_since(now),
            None => life.logical + life.fail_safe_keep,
        };
        if physical.is_zero() {
            return None;
        }
        let beta = options.get_xfetch_beta();
        let needs_clock = !life.fail_safe_keep.is_zero()
            || life.refresh_in.is_some()
            || (beta > 0.0 && !life.delta.is_zero());
        let fresh = needs_clock.then(|| Freshness {
            expires: now + life.logical.min(physical),
            refresh_at: life.refresh_in.map(|r| now + r),
            delta: life.delta,
            beta,
            created_ms: life.created_ms,
            stale_since: life.stale_since,
        });
        let slide = options.get_sliding().map(|interval| SlidingState {
            interval,
            ttl_ms: millis_ceil(options.get_ttl() + options.keep_after_expiry()),
            last: Mutex::new(now),
            life: physical,
            until: AtomicU64::new(clock::deadline(physical)),
        });
        // Shorter than the cache-wide bound: a deadline of its own (sliding state keeps its own).
        let expires = if slide.is_none() && physical < self.cache.l1.max_lifetime() {
            clock::deadline(physical)
        } else {
            clock::NEVER
        };
        let extra = (life.tags.is_some() || fresh.is_some() || slide.is_some()).then(|| {
            Arc::new(EntryExtras {
                tags: life.tags,
                fresh,
                slide,
            })
        });
        Some(L1Entry {
            value,
            ttl: physical,
            expires,
            generation: life.generation,
            tag_epoch: life.tag_epoch,
            weight: self.cache.l1.weight(key_len, life.raw_len),
            negative: life.negative,
            version: life.version,
            extra,
            guard: None,
        })
    }
}
