//! Tagged batch loads (`Region::many().tags(…)`): the tags' marks each key's fill must still
//! find, read before the loader runs (one `MGET` on one server, one per bucket on a cluster),
//! and the keys of the tags' sets and marks the batch command records and compares.

use serde::{de::DeserializeOwned, Serialize};

use super::{batch::ToLoad, RedisHeld};
use crate::{
    codec::Codec,
    flight::Outcome,
    key::{tag_key, tag_mark_key, CacheKey},
    region::Region,
};

/// What a tagged batch load's fills need of its tags: their sets' keys, their marks' keys,
/// and for each key to load (in order) the marks' values before the loader ran. All empty for
/// an untagged batch.
#[derive(Default)]
pub(super) struct BatchMarks {
    pub(super) tag_sets: Vec<String>,
    pub(super) keys: Vec<String>,
    pub(super) expected: Vec<Vec<Option<Vec<u8>>>>,
}

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads the marks of `tags` for every key of `to_load` that may be filled, in as few round
    /// trips as the store allows. A key whose read failed is not filled (`RedisHeld::Down`),
    /// or, under the `Propagate` policy, fails with the error (its flight finished in
    /// `outcomes`, and the key taken out of `to_load`).
    pub(super) async fn read_marks(
        &self,
        to_load: &mut Vec<ToLoad<V>>,
        tags: &[String],
        outcomes: &mut [Option<Outcome<V>>],
    ) -> BatchMarks {
        let Some(l2) = &self.cache.l2 else {
            return BatchMarks::default();
        };
        if tags.is_empty() {
            return BatchMarks::default();
        }
        let name = &self.cache.name;
        let keys: Vec<String> = tags.iter().map(|t| tag_mark_key(name, t)).collect();
        let fillable: Vec<String> = to_load
            .iter()
            .filter(|(_, _, (held, rkey, _))| held.fill().is_some() && !rkey.is_empty())
            .map(|(_, _, (_, rkey, _))| rkey.clone())
            .collect();
        let mut reads = l2.marks_many(&fillable, keys.clone()).await.into_iter();
        let mut expected = Vec::with_capacity(to_load.len());
        let mut kept = Vec::with_capacity(to_load.len());
        for (at, leader, (mut held, rkey, fence)) in to_load.drain(..) {
            let read = match held.fill().is_some() && !rkey.is_empty() {
                true => reads.next(),
                false => None,
            };
            match read {
                Some(Ok(values)) => expected.push(values),
                Some(Err(e)) => {
                    if let Err(e) = self.l2_failed("get tag marks", e) {
                        outcomes[at] = Some(leader.finish(Err(e)));
                        continue;
                    }
                    held = RedisHeld::Down;
                    expected.push(Vec::new());
                }
                None => expected.push(Vec::new()),
            }
            kept.push((at, leader, (held, rkey, fence)));
        }
        *to_load = kept;
        BatchMarks {
            tag_sets: tags.iter().map(|t| tag_key(name, t)).collect(),
            keys,
            expected,
        }
    }
}
