//! Large values encoded and decoded off the async workers (see
//! [`LayerCacheBuilder::offload_threshold`](crate::LayerCacheBuilder::offload_threshold)).

use std::sync::{atomic::Ordering, Arc};

use serde::{de::DeserializeOwned, Serialize};

use super::{store::Decoded, Region, WritePlan};
use crate::{
    codec::Codec,
    envelope::{Corruption, Encoded},
    error::{Error, ErrorKind, Result},
    key::CacheKey,
};

impl<K, V, C> Region<K, V, C>
where
    K: CacheKey + ?Sized + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// [`encode`](Self::encode) for a value being written or filled: on tokio's blocking pool
    /// while the region's values are large (its last one reached `offload_threshold`), on the
    /// calling worker otherwise. Remembers the size for the next one.
    pub(super) async fn encode_value(
        &self,
        value: Option<&Arc<V>>,
        plan: &WritePlan,
        tags: Option<&[String]>,
        rk: &str,
    ) -> Result<Encoded> {
        let large = self.shared.last_raw_len.load(Ordering::Relaxed)
            >= self.cache.settings.offload_threshold;
        let encoded = match tokio::runtime::Handle::try_current() {
            Ok(rt) if large => {
                let (region, value, plan) = (self.clone(), value.cloned(), *plan);
                let (tags, rk) = (tags.map(<[String]>::to_vec), rk.to_owned());
                rt.spawn_blocking(move || {
                    region.encode(value.as_deref(), &plan, tags.as_deref(), &rk)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(Error::new(
                        ErrorKind::Codec,
                        "encoding on the blocking pool did not finish",
                    )
                    .with_source(e))
                })
            }
            _ => self.encode(value.map(|v| &**v), plan, tags, rk),
        };
        if let Ok(enc) = &encoded {
            self.shared
                .last_raw_len
                .store(enc.raw_len, Ordering::Relaxed);
        }
        encoded
    }

    /// [`decode`](Self::decode) of bytes read from Redis: on tokio's blocking pool when they
    /// are at least `offload_threshold` long. Hands the bytes back (empty if the decoding
    /// panicked: the entry is then unusable, and a fill conditioned on it is refused).
    pub(super) async fn decode_read(
        &self,
        bytes: Vec<u8>,
        rk: &str,
    ) -> (std::result::Result<Decoded<V>, Corruption>, Vec<u8>) {
        let rt = match tokio::runtime::Handle::try_current() {
            Ok(rt) if bytes.len() >= self.cache.settings.offload_threshold => rt,
            _ => return (self.decode(&bytes, rk), bytes),
        };
        let (region, rk) = (self.clone(), rk.to_owned());
        rt.spawn_blocking(move || (region.decode(&bytes, &rk), bytes))
            .await
            .unwrap_or_else(|_| (Err(Corruption::Deserialize), Vec::new()))
    }
}
