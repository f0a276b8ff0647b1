//! Redis calls of the primitives beside the cache: users' locks ([`crate::lock`]) and rate
//! limits ([`crate::ratelimit`]), one script run each.

use fred::types::Value;

use super::{RedisStore, SCRIPTS};
use crate::{
    error::{Error, ErrorKind, Result},
    rate::{RateCall, RateReply},
};

impl RedisStore {
    /// `acquire_lock.lua`: the lock `key` and its next fencing token, where nobody holds it.
    pub(crate) async fn acquire_fenced(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        ttl_ms: u64,
        fence_ttl_ms: u64,
    ) -> Result<Option<u64>> {
        let args = vec![
            Value::from(token),
            Value::from(ttl_ms.to_string()),
            Value::from(fence_ttl_ms.to_string()),
        ];
        let fence: i64 = self
            .script(
                "redis EVALSHA (acquire lock)",
                &SCRIPTS.acquire_lock,
                vec![key.to_owned(), fence_key.to_owned()],
                args,
            )
            .await?;
        Ok(u64::try_from(fence).ok().filter(|&f| f > 0))
    }

    /// `rate_limit.lua`: one check of a rate limit, on the server's clock.
    pub(crate) async fn rate_limit(&self, call: RateCall<'_>) -> Result<RateReply> {
        let args = vec![
            Value::from(call.algorithm.code()),
            Value::from(call.limit.to_string()),
            Value::from(call.window_us.to_string()),
            Value::from(call.burst.to_string()),
            Value::from(call.n.to_string()),
        ];
        let reply: Vec<i64> = self
            .script(
                "redis EVALSHA (rate limit)",
                &SCRIPTS.rate_limit,
                vec![call.key.to_owned(), call.odd_key.to_owned()],
                args,
            )
            .await?;
        let bad = || Error::new(ErrorKind::Redis, "unexpected rate limit reply");
        let [allowed, remaining, retry] = <[i64; 3]>::try_from(reply).map_err(|_| bad())?;
        Ok(RateReply {
            allowed: allowed == 1,
            remaining: u64::try_from(remaining).map_err(|_| bad())?,
            retry_after_us: u64::try_from(retry).map_err(|_| bad())?,
        })
    }
}
