//! Rate limits shared by every instance of a cache: [`LayerCache::rate_limiter`],
//! [`RateLimit`], [`RateLimiter`], [`Decision`].
//!
//! Three algorithms, each one atomic script run per check on Redis's clock (so instances whose
//! clocks differ still agree):
//!
//! - [`RateLimit::token_bucket`] (GCRA): `limit` requests per `window`, spread evenly, with
//!   bursts of up to [`burst`](RateLimit::burst) requests after a quiet spell. One key per
//!   limited key, holding one timestamp. The usual choice for APIs.
//! - [`RateLimit::fixed_window`]: at most `limit` requests in a window that starts at the first
//!   request and lasts `window`; then a new window. Simple and exact per window, but up to
//!   `2 × limit` requests can pass in a `window` straddling two windows.
//! - [`RateLimit::sliding_window`]: the approximation of a sliding window from two windows'
//!   counts (windows aligned on the clock), the previous one weighted by how much of it the
//!   sliding window still covers — smooth at window edges, two small keys per limited key.
//!   Exact when requests in the previous window were evenly spread.
//!
//! Refused requests are not counted. Each [`Decision`] says how many requests would still pass
//! and, when refused, how long until the same check would pass.
//!
//! **When Redis fails** (down, slow, the breaker open), a check answers as
//! [`WhenRedisFails`] says — by default [allowed](WhenRedisFails::Allow), so a Redis outage does
//! not turn into refusing every request — marked [`degraded`](Decision::degraded), and counted
//! in the Redis error counters like every failed call.
//!
//! Keys: `{cache}:r{format}:{<limiter name>:<escaped key>}` (literal braces: a hash tag, so a
//! sliding window's second key, `…:1`, shares the slot on a Redis Cluster), each living no
//! longer than its state matters (a window, two for the sliding one, or the time a token
//! bucket takes to fill up again).

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use crate::{
    cache::LayerCache,
    engine::Engine,
    error::{Error, ErrorKind, Result},
    key::{escape_into, space, validate_name, CacheKey},
    rate::{Algorithm, RateCall},
    remote::Remote,
};

/// A rate limit: an algorithm, how many requests, per how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    algorithm: Algorithm,
    limit: u64,
    window: Duration,
    burst: Option<u64>,
}

impl RateLimit {
    /// `limit` requests per `window`, one every `window / limit`, with bursts of up to
    /// [`burst`](Self::burst) (GCRA: a token bucket refilled continuously). For every
    /// algorithm: a limit of 1 to 2^53, a window of 1 ms to a year.
    pub fn token_bucket(limit: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::TokenBucket,
            limit,
            window,
            burst: None,
        }
    }

    /// At most `limit` requests per `window`, the window starting at its first request.
    pub fn fixed_window(limit: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::FixedWindow,
            limit,
            window,
            burst: None,
        }
    }

    /// At most about `limit` requests in any `window` (two windows' counts, weighted).
    pub fn sliding_window(limit: u64, window: Duration) -> Self {
        Self {
            algorithm: Algorithm::SlidingWindow,
            limit,
            window,
            burst: None,
        }
    }

    /// For a [token bucket](Self::token_bucket): how many requests may pass at once after a
    /// quiet spell (the bucket's capacity). Not for the window algorithms.
    ///
    /// Default: `limit`.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::config(format!("rate limit: {what}")));
        // Counts are doubles in the script: exact up to 2^53.
        const MAX_COUNT: u64 = 1 << 53;
        if self.limit == 0 || self.limit > MAX_COUNT || self.burst.is_some_and(|b| b > MAX_COUNT) {
            return bad("the limit and the burst must be between 1 and 2^53".to_owned());
        }
        if self.window < Duration::from_millis(1) || self.window > Duration::from_secs(366 * 86_400)
        {
            return bad(format!(
                "window {:?} must be between 1 ms and a year",
                self.window
            ));
        }
        match (self.algorithm, self.burst) {
            (Algorithm::TokenBucket, Some(0)) => bad("the burst must be at least 1".to_owned()),
            (Algorithm::TokenBucket, _) | (_, None) => Ok(()),
            (_, Some(_)) => bad("burst is for token buckets only".to_owned()),
        }
    }

    /// The most requests one check may ask for.
    fn capacity(&self) -> u64 {
        self.burst.unwrap_or(self.limit)
    }
}

/// What a check answers when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenRedisFails {
    /// Allow the request ([`Decision::degraded`] set): a Redis outage does not refuse traffic.
    #[default]
    Allow,
    /// Refuse the request ([`Decision::degraded`] set, no `retry_after`).
    Deny,
    /// Return the error.
    Error,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the requests may go ahead (they were counted).
    pub allowed: bool,
    /// How many more requests would be allowed right now (0 when degraded).
    pub remaining: u64,
    /// For a refused check: how long until the same check would be allowed.
    pub retry_after: Option<Duration>,
    /// Redis could not be asked: this is [`WhenRedisFails`]'s answer, not the limit's.
    pub degraded: bool,
}

/// A named rate limit shared by every instance of the cache, from
/// [`LayerCache::rate_limiter`]; cheap to clone. See the [module docs](crate::ratelimit).
#[derive(Debug, Clone)]
pub struct RateLimiter {
    l2: Remote,
    /// `{cache}:r{format}:{<name>:` — the key's escaped bytes and `}` follow.
    prefix: String,
    limit: RateLimit,
    when_redis_fails: WhenRedisFails,
    max_key_bytes: usize,
    cache_name: String,
    /// For the counters (a limiter does not keep the cache alive).
    engine: Weak<Engine>,
}

impl LayerCache {
    /// A rate limiter named `name` (1 to 64 characters of `[A-Za-z0-9_.-]`) applying `limit`
    /// to each key it checks, shared by every instance of this cache. Limiters of different
    /// names (or limits) count apart; two limiters of the same name share their counts, so
    /// give them the same limit.
    ///
    /// Errors ([`ErrorKind::Config`]): an invalid name or limit, or a cache without a Redis
    /// tier.
    ///
    /// ```no_run
    /// # async fn run(cache: layercache::LayerCache) -> layercache::Result<()> {
    /// use std::time::Duration;
    /// use layercache::RateLimit;
    ///
    /// let per_user = cache.rate_limiter("api", RateLimit::token_bucket(100, Duration::from_secs(60)).burst(20))?;
    /// let decision = per_user.check("user:42").await?;
    /// if !decision.allowed {
    ///     // 429, with `Retry-After: decision.retry_after`
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn rate_limiter(&self, name: &str, limit: RateLimit) -> Result<RateLimiter> {
        validate_name("rate limiter name", name)?;
        limit.validate()?;
        let Some(l2) = self.inner.l2.clone() else {
            return Err(Error::config(
                "rate limiters need a Redis tier: this cache has none (set redis_url)",
            ));
        };
        let prefix = format!(
            "{}:{}{}:{{{name}:",
            self.inner.name,
            space::RATE_LIMIT,
            crate::envelope::FORMAT_VERSION
        );
        Ok(RateLimiter {
            l2,
            prefix,
            limit,
            when_redis_fails: WhenRedisFails::default(),
            max_key_bytes: self.inner.settings.max_key_bytes,
            cache_name: self.inner.name.clone(),
            engine: Arc::downgrade(&self.inner),
        })
    }
}

impl RateLimiter {
    /// What a check answers when Redis cannot be asked.
    ///
    /// Default: [`WhenRedisFails::Allow`].
    #[must_use]
    pub fn when_redis_fails(mut self, answer: WhenRedisFails) -> Self {
        self.when_redis_fails = answer;
        self
    }

    /// The limit this limiter applies.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Forgets what was counted for `key` (on every instance): the next check starts afresh —
    /// a failed-login limit after a successful login, say.
    ///
    /// # Errors
    ///
    /// A key above the cache's `max_key_bytes` ([`ErrorKind::KeyTooLarge`]); a Redis failure
    /// (whatever [`WhenRedisFails`] says: nothing was forgotten).
    pub async fn reset<Q: CacheKey + ?Sized>(&self, key: &Q) -> Result<()> {
        let (redis_key, odd_key) = self.redis_keys(key)?;
        self.l2.delete_many(vec![redis_key, odd_key]).await
    }

    /// The Redis keys of `key`'s state: `{cache}:r{format}:{<name>:<escaped key>}` and its `:1`.
    fn redis_keys<Q: CacheKey + ?Sized>(&self, key: &Q) -> Result<(String, String)> {
        let mut bytes = Vec::new();
        let bytes = match key.key_bytes() {
            Some(b) => b,
            None => {
                key.write_key(&mut bytes);
                &bytes
            }
        };
        if bytes.len() > self.max_key_bytes {
            return Err(Error::new(
                ErrorKind::KeyTooLarge,
                format!(
                    "rate limit key of {} bytes exceeds max_key_bytes ({})",
                    bytes.len(),
                    self.max_key_bytes
                ),
            ));
        }
        let mut redis_key = self.prefix.clone();
        escape_into(bytes, &mut redis_key);
        redis_key.push('}');
        let odd_key = format!("{redis_key}:1");
        Ok((redis_key, odd_key))
    }

    /// Checks one request for `key`: [`check_n`](Self::check_n) with `n = 1`.
    pub async fn check<Q: CacheKey + ?Sized>(&self, key: &Q) -> Result<Decision> {
        self.check_n(key, 1).await
    }

    /// Checks `n` requests for `key` at once (all or none pass). Errors: `n` of 0 or above the
    /// limit (the burst for a token bucket) ([`ErrorKind::Config`]: it could never pass), a key
    /// above the cache's `max_key_bytes` ([`ErrorKind::KeyTooLarge`]), and a Redis failure
    /// only with [`WhenRedisFails::Error`].
    pub async fn check_n<Q: CacheKey + ?Sized>(&self, key: &Q, n: u64) -> Result<Decision> {
        if n == 0 || n > self.limit.capacity() {
            return Err(Error::config(format!(
                "rate limit: {n} requests at once can never pass a limit of {}",
                self.limit.capacity()
            )));
        }
        let (redis_key, odd_key) = self.redis_keys(key)?;
        let call = RateCall {
            key: &redis_key,
            odd_key: &odd_key,
            algorithm: self.limit.algorithm,
            limit: self.limit.limit,
            window_us: u64::try_from(self.limit.window.as_micros()).unwrap_or(u64::MAX),
            burst: self.limit.capacity(),
            n,
        };
        let answer = self.l2.rate_limit(call).await;
        if let Some(engine) = self.engine.upgrade() {
            let counters = &engine.counters;
            match &answer {
                Ok(reply) if reply.allowed => counters.rate_allowed.incr(),
                Ok(_) => counters.rate_refused.incr(),
                Err(_) => counters.rate_degraded.incr(),
            }
        }
        match answer {
            Ok(reply) => Ok(Decision {
                allowed: reply.allowed,
                remaining: reply.remaining,
                retry_after: (!reply.allowed).then(|| Duration::from_micros(reply.retry_after_us)),
                degraded: false,
            }),
            Err(e) => {
                let allowed = match self.when_redis_fails {
                    WhenRedisFails::Allow => true,
                    WhenRedisFails::Deny => false,
                    WhenRedisFails::Error => return Err(e),
                };
                tracing::debug!(cache.name = %self.cache_name, error = %e, allowed, "rate limit not checked: redis failed");
                Ok(Decision {
                    allowed,
                    remaining: 0,
                    retry_after: None,
                    degraded: true,
                })
            }
        }
    }
}
