//! The Redis read of a batch: one round trip for every key it leads.

use serde::{de::DeserializeOwned, Serialize};

use super::{
    batch::{After, Led},
    Mode, RedisHeld,
};
use crate::{
    codec::Codec,
    error::{Error, ErrorKind},
    flight::Leader,
    key::CacheKey,
    options::millis_ceil,
    options::EntryOptions,
    region::{Region, Stale},
};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Reads the keys this batch leads from Redis in one round trip (with sliding expiration,
    /// each key found extended in the same round trip), and serves what is fresh. `Err`: the error
    /// every flight ends with (the `Propagate` policy).
    pub(super) async fn read_many(
        &self,
        led: Vec<(usize, Leader<V>)>,
        options: &EntryOptions,
        epoch: (u64, u64),
        fallbacks: &mut [Option<Stale<V>>],
    ) -> Result<Vec<Led<V>>, (Vec<(usize, Leader<V>)>, Error)> {
        let cache = &self.cache;
        let load = |held: fn() -> RedisHeld, fence| {
            move |(at, leader): (usize, Leader<V>)| {
                (at, leader, After::Load(held(), String::new(), fence))
            }
        };
        let Some(l2) = &cache.l2 else {
            return Ok(led.into_iter().map(load(|| RedisHeld::Off, None)).collect());
        };
        let g = match self.l2_generation() {
            Ok(g) => g,
            Err(e) => {
                return match self.l2_failed("get_many", e) {
                    Err(e) => Err((led, e)),
                    Ok(()) => Ok(led
                        .into_iter()
                        .map(load(|| RedisHeld::Down, None))
                        .collect()),
                }
            }
        };
        let mut out = Vec::with_capacity(led.len());
        let mut reads = Vec::with_capacity(led.len());
        let mut rkeys = Vec::with_capacity(led.len());
        for (at, leader) in led {
            // A write of this key that Redis did not confirm waits for its repair.
            if cache.journal.blocks(leader.key()) {
                self.counters().l2_repair_bypasses.incr();
                out.push(load(|| RedisHeld::Down, None)((at, leader)));
                continue;
            }
            rkeys.push(self.shared.state.data_key(g, &leader.key()[4..]));
            reads.push((at, leader));
        }
        let values = match options.get_sliding() {
            None => l2.get_many(&rkeys).await,
            Some(_) => {
                let ttl = millis_ceil(options.get_ttl() + options.keep_after_expiry());
                self.counters().l2_extends.add(rkeys.len() as u64);
                l2.get_and_touch_many(&rkeys, ttl).await
            }
        };
        let n = reads.len();
        let values = if values.len() == n {
            values
        } else {
            let e = Error::new(ErrorKind::Internal, "a batch read answered too few keys");
            vec![Err(e); n]
        };
        // A key the store could not read (its command failed: on a cluster, its node did not
        // answer) is that key's failure alone; the others are served. The failure is counted and
        // logged once per batch, and the error policy decides for every such key.
        let mut policy: Option<Result<(), Error>> = None;
        for (((at, leader), rkey), read) in reads.into_iter().zip(rkeys).zip(values) {
            let after = match read {
                Ok(Some(bytes)) => {
                    let found = self
                        .found_in_redis(
                            &leader,
                            options,
                            Mode::Caller,
                            epoch,
                            bytes,
                            &rkey,
                            &mut fallbacks[at],
                        )
                        .await;
                    match found {
                        Ok(value) => After::Served(value),
                        Err(held) => After::Load(held, rkey, Some(g)),
                    }
                }
                Ok(None) => After::Load(RedisHeld::Nothing, rkey, Some(g)),
                Err(e) => {
                    let verdict =
                        policy.get_or_insert_with(|| self.l2_failed("get_many", e.clone()));
                    match verdict {
                        Err(_) => After::Failed(e),
                        Ok(()) => After::Load(RedisHeld::Down, String::new(), Some(g)),
                    }
                }
            };
            out.push((at, leader, after));
        }
        Ok(out)
    }
}
