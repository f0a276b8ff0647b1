//! Tagged batch loads (`Region::many().tags(…).get_or_load(…)`): each key's fill goes as a
//! single tagged load's does — the tags' marks read before the loader runs, then the fill
//! script that compares them and records the key in the tags' sets — the keys' commands sent
//! together. (An untagged batch writes its fills in one batch command instead.)

use serde::{de::DeserializeOwned, Serialize};

use super::{batch::ToLoad, RedisHeld};
use crate::{
    codec::Codec,
    envelope::Encoded,
    error::Result,
    flight::Outcome,
    key::{tag_key, tag_mark_key, CacheKey},
    region::Region,
    remote::{Filled, Write, WriteCondition, WriteMode},
    together::together,
};

/// A tag's mark key and its value before the load (`None`: no mark).
pub(super) type Marks = Vec<(String, Option<Vec<u8>>)>;

/// One tagged fill to write: the key, the entry, its lifetime, its mode, the generation its
/// read was made under, and which of the batch's marks it compares.
pub(super) struct TaggedFill {
    pub(super) slot: usize,
    pub(super) rkey: String,
    pub(super) enc: Encoded,
    pub(super) ttl_ms: u64,
    pub(super) mode: WriteMode,
    pub(super) fence: Option<u64>,
    pub(super) marks: usize,
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads the marks of `tags` for every key of `to_load` that may be filled (all keys'
    /// reads sent together), in `to_load`'s order. A key whose read failed is not filled
    /// (`RedisHeld::Down`), or, under the `Propagate` policy, fails with the error (its flight
    /// finished in `outcomes`, and the key taken out of `to_load`).
    pub(super) async fn read_marks(
        &self,
        to_load: &mut Vec<ToLoad<V>>,
        tags: &[String],
        outcomes: &mut [Option<Outcome<V>>],
    ) -> Vec<Marks> {
        let Some(l2) = &self.cache.l2 else {
            return to_load.iter().map(|_| Vec::new()).collect();
        };
        let keys: Vec<String> = tags
            .iter()
            .map(|t| tag_mark_key(&self.cache.name, t))
            .collect();
        let reads = together(
            to_load
                .iter()
                .map(|(_, _, (held, rkey, _))| {
                    let fillable = held.fill().is_some() && !rkey.is_empty();
                    let keys = keys.clone();
                    async move {
                        match fillable {
                            true => Some(l2.marks(rkey, keys).await),
                            false => None,
                        }
                    }
                })
                .collect(),
        )
        .await;
        let mut marks = Vec::with_capacity(to_load.len());
        let mut kept = Vec::with_capacity(to_load.len());
        for ((at, leader, (mut held, rkey, fence)), read) in to_load.drain(..).zip(reads) {
            match read {
                Some(Ok(values)) => marks.push(keys.iter().cloned().zip(values).collect()),
                Some(Err(e)) => {
                    if let Err(e) = self.l2_failed("get tag marks", e) {
                        outcomes[at] = Some(leader.finish(Err(e)));
                        continue;
                    }
                    held = RedisHeld::Down;
                    marks.push(Vec::new());
                }
                None => marks.push(Vec::new()),
            }
            kept.push((at, leader, (held, rkey, fence)));
        }
        *to_load = kept;
        marks
    }

    /// Writes `fills` as single tagged loads' fills, all sent together: for each, its outcome.
    pub(super) async fn fill_tagged(
        &self,
        fills: Vec<TaggedFill>,
        tags: &[String],
        marks: &[Marks],
    ) -> Vec<(usize, Result<Filled>)> {
        let Some(l2) = &self.cache.l2 else {
            return Vec::new();
        };
        let tag_sets: Vec<String> = tags.iter().map(|t| tag_key(&self.cache.name, t)).collect();
        let generation_key = &self.shared.state.generation_key;
        let slots: Vec<usize> = fills.iter().map(|f| f.slot).collect();
        let written = together(
            fills
                .into_iter()
                .map(|f| {
                    let tag_sets = tag_sets.clone();
                    let marks = marks.get(f.marks).map_or(&[][..], Vec::as_slice);
                    self.count_write(&f.enc);
                    async move {
                        l2.fill(Write {
                            key: &f.rkey,
                            value: f.enc.bytes,
                            ttl_ms: f.ttl_ms,
                            tags: tag_sets,
                            condition: WriteCondition {
                                mode: &f.mode,
                                marks,
                                fence: f.fence,
                                version: None,
                            },
                            generation_key,
                        })
                        .await
                    }
                })
                .collect(),
        )
        .await;
        slots.into_iter().zip(written).collect()
    }
}
