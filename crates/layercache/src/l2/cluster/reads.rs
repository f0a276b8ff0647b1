//! Batch reads on a cluster: an `MGET` per bucket, and with sliding expiration a `PEXPIRE` per
//! key after it, all sent at once; a node that does not answer fails only the keys it holds.
//! Also a tagged batch load's marks: one `MGET` of the marks' copies per bucket.

use std::collections::BTreeMap;

use fred::types::Value;

use super::{
    placement::{bucket_of, place, Bucket},
    unexpected, ClusterStore, Command,
};
use crate::remote::{each_read, MarkValues, Read};

impl ClusterStore {
    /// The marks `keys` as the fill of each of `data_keys` will compare them: the copies in its
    /// bucket, read as a batch read is (an `MGET` per bucket the data keys fall in, all sent
    /// at once); a bucket whose read failed fails its data keys only.
    pub(super) async fn marks_by_bucket(
        &self,
        data_keys: &[String],
        keys: Vec<String>,
    ) -> Vec<MarkValues> {
        let buckets: Vec<Bucket> = data_keys.iter().map(|k| bucket_of(k)).collect();
        let mut distinct = buckets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // Every bucket's copies, bucket after bucket (already placed: read where they are).
        let copies: Vec<String> = distinct
            .iter()
            .flat_map(|b| keys.iter().map(move |k| b.mark(k)))
            .collect();
        let mut reads = self.read_many(&copies, None).await.into_iter();
        let mut by_bucket: BTreeMap<Bucket, MarkValues> = BTreeMap::new();
        for b in distinct {
            let values: MarkValues = reads.by_ref().take(keys.len()).collect();
            by_bucket.insert(b, values);
        }
        buckets
            .iter()
            .map(|b| {
                by_bucket
                    .get(b)
                    .cloned()
                    .unwrap_or_else(|| Err(unexpected("tag marks")))
            })
            .collect()
    }

    /// `MGET` per bucket (and per [`MAX_BATCH`] keys), pipelined; values in the keys' order.
    /// A bucket whose `MGET` failed (its node did not answer) fails its own keys only.
    ///
    /// [`MAX_BATCH`]: crate::remote::MAX_BATCH
    pub(super) async fn get_many(&self, keys: &[String]) -> Vec<Read> {
        self.read_many(keys, None).await
    }

    /// [`get_many`](Self::get_many), each key found given `ttl_ms` more to live: a `PEXPIRE`
    /// per key after its bucket's `MGET`, on the same node (fred routes both by the key), so
    /// Redis runs it after the read (see [`RedisStore::mget_and_touch`]).
    ///
    /// [`RedisStore::mget_and_touch`]: super::RedisStore::mget_and_touch
    pub(super) async fn get_and_touch_many(&self, keys: &[String], ttl_ms: u64) -> Vec<Read> {
        self.read_many(keys, Some(ttl_ms)).await
    }

    /// The `MGET`s of [`get_many`](Self::get_many), with a `PEXPIRE` of every key after them
    /// when `touch` is given; a key whose `MGET` or `PEXPIRE` failed is answered with the error.
    async fn read_many(&self, keys: &[String], touch: Option<u64>) -> Vec<Read> {
        let mut groups: BTreeMap<Bucket, (Vec<usize>, Vec<String>)> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            let (b, placed) = place(k);
            let g = groups.entry(b).or_default();
            g.0.push(i);
            g.1.push(placed);
        }
        let mut positions = Vec::new();
        let mut commands = Vec::new();
        // fred's own `MGET`, routed by the first key (every key of a group carries its
        // bucket's tag): the groups for one node leave in one socket write, where as custom
        // commands each was flushed alone (see `l2/command.rs`).
        for (at, ks) in groups.into_values() {
            for (at, ks) in at
                .chunks(crate::remote::MAX_BATCH)
                .zip(ks.chunks(crate::remote::MAX_BATCH))
            {
                positions.push(at.to_vec());
                commands.push(Command::Mget(ks.to_vec()));
            }
        }
        let reads = commands.len();
        if let Some(ttl_ms) = touch {
            let touches = keys.iter().map(|k| Command::Pexpire {
                key: place(k).1,
                ttl_ms,
            });
            commands.extend(touches);
        }
        let what = "redis MGET (+ PEXPIRE × n when sliding)";
        let mut replies = match self.pipelined_each(what, commands).await {
            Ok(replies) if replies.len() == reads + touch.map_or(0, |_| keys.len()) => replies,
            Ok(_) => return each_read(keys.len(), Err(unexpected("MGET"))),
            Err(e) => return each_read(keys.len(), Err(e)),
        };
        let touched = replies.split_off(reads);
        let mut out: Vec<Read> = keys.iter().map(|_| Ok(None)).collect();
        for (at, reply) in positions.into_iter().zip(replies) {
            let values = match reply {
                Ok(Value::Array(v)) if v.len() == at.len() => v,
                Ok(other) if at.len() == 1 && !matches!(other, Value::Array(_)) => vec![other],
                Ok(_) => {
                    for i in at {
                        out[i] = Err(unexpected("MGET"));
                    }
                    continue;
                }
                Err(e) => {
                    for i in at {
                        out[i] = Err(e.clone());
                    }
                    continue;
                }
            };
            for (i, v) in at.into_iter().zip(values) {
                out[i] = Ok(match v {
                    Value::Null => None,
                    v => v.as_bytes().map(<[u8]>::to_vec),
                });
            }
        }
        // An extension that failed fails its key's read, as a `GETEX` that failed would.
        for (read, touch) in out.iter_mut().zip(touched) {
            if let (Ok(_), Err(e)) = (&read, touch) {
                *read = Err(e);
            }
        }
        out
    }
}
