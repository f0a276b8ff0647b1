//! Distributed locks with fencing tokens: [`LayerCache::lock`], [`LockRequest`], [`Lock`].
//!
//! A lock is one Redis key, `{cache}:l{format}:{<escaped name>}` (literal braces), holding its
//! holder's random token with a TTL (`SET NX PX`, in a script that also hands out the fencing
//! token). The holder renews it in the background every third of its TTL (only while it still
//! holds the token), and releases it (again only if it still holds the token) on
//! [`Lock::release`] or when the [`Lock`] is dropped.
//!
//! **Fencing tokens.** A lock held past its TTL (a paused process, a partition) can be taken by
//! someone else while the first holder still believes it holds it; no lock can prevent that. What
//! makes it safe is the [fencing token](Lock::fence): every acquisition of a name gets a larger
//! one, so the resource the lock protects can refuse a write that carries a token lower than
//! one it has seen. Tokens come from a counter beside the lock (`…:fence`, in the same
//! hash slot), and are at least Redis's clock in microseconds, so they keep rising when the
//! counter is lost (expired after a day unused, `FLUSHALL`, a restart without persistence) as
//! long as Redis's clock does not go back.
//!
//! **Redis down is an error, never a lock.** Acquiring asks Redis and nothing else: when it
//! cannot be asked (down, slow, the breaker open) `acquire` returns the error. A held lock whose
//! renewals fail stays [held](Lock::is_held) only until its last confirmed lifetime runs out
//! (counted from when that renewal was *sent*, so it ends no later than the key in Redis), then
//! reports itself [lost](Lock::lost).
//!
//! On a Redis Cluster both keys carry the escaped name as their hash tag: a lock lives on the
//! primary owning its name's slot, and fails over with it (Redis replication is asynchronous: a
//! lock acquired just before a failover can be lost with it; the fencing token is the guard).

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    cache::LayerCache,
    engine::Engine,
    error::{Error, Result},
    freshness::token,
    key::{escape_into, shortened, space},
    options::{millis_ceil, MAX_LIFETIME, MAX_WAIT},
    remote::{FencedLock, Remote},
};

/// The longest lock name, in bytes.
pub const MAX_LOCK_NAME_BYTES: usize = 512;

/// How long a name's fencing counter lives after its last acquisition.
const FENCE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A lock to acquire, from [`LayerCache::lock`]: set its [`ttl`](Self::ttl) and how long to
/// [`wait`](Self::wait), then [`acquire`](Self::acquire) it.
#[derive(Debug)]
#[must_use = "a lock request does nothing until acquired"]
pub struct LockRequest<'c> {
    cache: &'c LayerCache,
    name: String,
    ttl: Duration,
    wait: Duration,
}

impl LayerCache {
    /// A distributed lock named `name` (1 to [`MAX_LOCK_NAME_BYTES`] bytes, any characters),
    /// shared by every instance of this cache (same cache name, same Redis): see [`Lock`].
    ///
    /// ```no_run
    /// # async fn run(cache: layercache::LayerCache) -> layercache::Result<()> {
    /// use std::time::Duration;
    ///
    /// if let Some(lock) = cache
    ///     .lock("invoice:42")
    ///     .ttl(Duration::from_secs(10))
    ///     .wait(Duration::from_secs(2))
    ///     .acquire()
    ///     .await?
    /// {
    ///     // Hand `lock.fence()` to the store the lock protects, so it can refuse the writes
    ///     // of a holder whose lock has run out meanwhile.
    ///     let fence = lock.fence();
    ///     # let _ = fence;
    ///     lock.release().await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock(&self, name: impl Into<String>) -> LockRequest<'_> {
        LockRequest {
            cache: self,
            name: name.into(),
            ttl: Duration::from_secs(10),
            wait: Duration::ZERO,
        }
    }
}

impl LayerCache {
    /// Deletes the lock `name` whoever holds it: an operator's tool for a lock whose holder is
    /// known to be gone (its TTL would end it anyway). A holder that is still alive finds the
    /// lock lost at its next renewal, and the next acquisition's fence is larger than its: the
    /// resource the lock protects refuses its late writes.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an invalid name or a cache without a
    /// Redis tier; a Redis failure (nothing was deleted).
    pub async fn break_lock(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let Some(l2) = &self.inner.l2 else {
            return Err(no_redis());
        };
        let (key, _) = lock_keys(&self.inner.name, name);
        l2.delete_many(vec![key]).await
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME_BYTES {
        return Err(Error::config(format!(
            "lock name {:?} is invalid: use 1 to {MAX_LOCK_NAME_BYTES} bytes",
            shortened(name)
        )));
    }
    Ok(())
}

fn no_redis() -> Error {
    Error::config("locks need a Redis tier: this cache has none (set redis_url)")
}

impl LockRequest<'_> {
    /// How long the lock lives in Redis without a renewal: the longest a crashed holder keeps
    /// others out. The holder renews it every third of this while it is held. At least 10 ms,
    /// at most [`MAX_LIFETIME`].
    ///
    /// Default: 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long [`acquire`](Self::acquire) keeps trying while someone else holds the lock
    /// (retrying after 5 ms, doubling up to 100 ms). At most [`MAX_WAIT`].
    ///
    /// Default: zero (one attempt).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Takes the lock: `Ok(Some(lock))` once taken, `Ok(None)` when someone else held it for
    /// the whole wait. An error when Redis could not be asked (down, timed out, the breaker
    /// open: the kind says which) — never a lock Redis did not grant — or for an invalid name or
    /// TTL ([`ErrorKind::Config`](crate::ErrorKind::Config)), or a cache without a Redis tier
    /// (also `Config`).
    ///
    /// Cancelling this call right after Redis granted the lock leaves it held until its TTL.
    pub async fn acquire(self) -> Result<Option<Lock>> {
        let Self {
            cache,
            name,
            ttl,
            wait,
        } = self;
        check_name(&name)?;
        if ttl < Duration::from_millis(10) || ttl > MAX_LIFETIME {
            return Err(Error::config(format!(
                "lock ttl {ttl:?} is out of bounds: at least 10 ms, at most MAX_LIFETIME (10 years)"
            )));
        }
        if wait > MAX_WAIT {
            return Err(Error::config(format!(
                "lock wait {wait:?} is out of bounds: at most MAX_WAIT (1 day)"
            )));
        }
        let Some(l2) = cache.inner.l2.clone() else {
            return Err(no_redis());
        };
        let (key, fence_key) = lock_keys(&cache.inner.name, &name);
        let token = token();
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let sent = Instant::now();
            let lock = FencedLock {
                key: &key,
                fence_key: &fence_key,
                fence_ttl_ms: millis_ceil(FENCE_TTL),
                token: &token,
            };
            if let Some(fence) = l2.acquire_fenced(lock, millis_ceil(ttl)).await? {
                cache.inner.counters.lock_grants.incr();
                let held = Arc::new(Held {
                    l2,
                    key,
                    token,
                    ttl,
                    valid_until: Mutex::new(valid_until(sent, ttl)),
                    lost: watch::Sender::new(false),
                    cache: cache.inner.name.clone(),
                    engine: Arc::downgrade(&cache.inner),
                });
                let renewal = tokio::spawn(renew(held.clone()));
                return Ok(Some(Lock {
                    name,
                    fence,
                    held,
                    renewal,
                    released: false,
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                cache.inner.counters.lock_refusals.incr();
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// A held distributed lock, from [`LockRequest::acquire`]. Renewed in the background while held;
/// [`release`](Self::release) it when done (dropping it releases it in the background).
///
/// Check [`is_held`](Self::is_held) before each step that needs it, or race the work against
/// [`lost`](Self::lost), and pass the [`fence`](Self::fence) to what the lock protects.
#[derive(Debug)]
pub struct Lock {
    name: String,
    fence: u64,
    held: Arc<Held>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

/// What a lock and its renewal task share.
#[derive(Debug)]
struct Held {
    l2: Remote,
    key: String,
    token: String,
    ttl: Duration,
    /// Until when the lock is ours for sure: the last confirmed (re)newal's sending time plus
    /// the TTL, less a margin for the two clocks' rates.
    valid_until: Mutex<Instant>,
    /// Set once the lock is known lost (or released).
    lost: watch::Sender<bool>,
    cache: String,
    /// For the counters (the lock does not keep the cache alive).
    engine: Weak<Engine>,
}

impl Held {
    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn confirmed(&self, sent: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = valid_until(sent, self.ttl);
    }

    /// Marks the lock lost (found by the renewal task) and counts it.
    /// Marks the lock lost, counting it the first time (whoever sees it first: the renewal
    /// task, a check of its lifetime, or a release that found it gone).
    fn lose(&self) {
        let first = self
            .lost
            .send_if_modified(|lost| !std::mem::replace(lost, true));
        if first {
            if let Some(engine) = self.engine.upgrade() {
                engine.counters.lock_losses.incr();
            }
        }
    }

    /// Whether the lock is still ours for sure; marks it lost once its lifetime has run out.
    fn is_held(&self) -> bool {
        if *self.lost.borrow() {
            return false;
        }
        if Instant::now() < self.valid_until() {
            return true;
        }
        self.lose();
        false
    }
}

/// `ttl` after `sent`, less 1 % (and 1 ms) for the difference between this clock's rate and
/// Redis's.
fn valid_until(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl.saturating_sub(ttl / 100 + Duration::from_millis(1))
}

/// The lock's key and its fencing counter's: `{cache}:l{format}:{escaped name}` with the
/// escaped name as the hash tag (the escaping leaves no `{`/`}` in it), and `…:fence`.
fn lock_keys(cache: &str, name: &str) -> (String, String) {
    let mut key = format!(
        "{cache}:{}{}:{{",
        space::USER_LOCK,
        crate::envelope::FORMAT_VERSION
    );
    escape_into(name.as_bytes(), &mut key);
    key.push('}');
    let fence = format!("{key}:fence");
    (key, fence)
}

/// The renewal task: every third of the TTL, extends the lock if it still holds our token;
/// stops once it does not, or once the last confirmed lifetime has run out.
async fn renew(held: Arc<Held>) {
    let ttl_ms = millis_ceil(held.ttl);
    loop {
        tokio::time::sleep(held.ttl / 3).await;
        let sent = Instant::now();
        match held.l2.renew_lock(&held.key, &held.token, ttl_ms).await {
            Ok(true) => held.confirmed(sent),
            Ok(false) => {
                tracing::warn!(cache.name = %held.cache, "lock lost: its key expired or was taken over");
                held.lose();
                return;
            }
            Err(e) => {
                if Instant::now() >= held.valid_until() {
                    tracing::warn!(cache.name = %held.cache, error = %e, "lock lost: redis did not confirm a renewal within its ttl");
                    held.lose();
                    return;
                }
            }
        }
    }
}

impl Lock {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition: larger than that of every earlier acquisition of
    /// the same name (see the [module docs](crate::lock)).
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// Whether the lock is still ours for sure: not released, no renewal found it gone, and its
    /// last confirmed lifetime has not run out.
    pub fn is_held(&self) -> bool {
        !self.released && self.held.is_held()
    }

    /// Resolves once the lock is no longer ours for sure (see [`is_held`](Self::is_held)): a
    /// renewal found it expired or taken over, or Redis did not confirm one before its
    /// lifetime ran out. Race the protected work against it.
    pub async fn lost(&self) {
        let mut changes = self.held.lost.subscribe();
        loop {
            if !self.is_held() {
                return;
            }
            let until = self.held.valid_until();
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Releases the lock: deletes it if it still holds this holder's token. `Ok(true)` when it
    /// did, `Ok(false)` when the lock had already expired or been taken over (whatever was
    /// done under it since it was lost was not protected); an error when Redis could not be
    /// asked (the lock then expires after its TTL).
    pub async fn release(mut self) -> Result<bool> {
        self.renewal.abort();
        let was_held = self.is_held();
        self.released = true;
        let released = self
            .held
            .l2
            .release_lock(&self.held.key, &self.held.token)
            .await;
        if was_held && matches!(released, Ok(false)) {
            // Gone although no renewal had seen it yet: lost all the same.
            self.held.lose();
        }
        self.held.lost.send_replace(true);
        released
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        self.held.lost.send_replace(true);
        // Dropped without release: release it in the background rather than keep others out
        // until it expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let held = self.held.clone();
            drop(rt.spawn(async move {
                let _ = held.l2.release_lock(&held.key, &held.token).await;
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_and_its_fence_share_a_hash_tag_that_no_name_can_break() {
        let (key, fence) = lock_keys("shop", "a{b}:c d");
        assert_eq!(key, "shop:l2:{a%7Bb%7D:c%20d}");
        assert_eq!(fence, "shop:l2:{a%7Bb%7D:c%20d}:fence");
        assert_eq!(
            fred::util::redis_keyslot(key.as_bytes()),
            fred::util::redis_keyslot(fence.as_bytes())
        );
    }

    #[test]
    fn a_lock_is_ours_until_its_ttl_less_a_margin() {
        let sent = Instant::now();
        let until = valid_until(sent, Duration::from_secs(10));
        assert_eq!(until - sent, Duration::from_millis(9899));
        let short = valid_until(sent, Duration::from_millis(10));
        assert_eq!(short - sent, Duration::from_micros(8900));
    }
}
