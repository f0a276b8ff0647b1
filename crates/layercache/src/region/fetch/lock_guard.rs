//! The load lock a fetch holds: renewed in the background until released, and released in
//! the background if dropped without release.

use std::time::Duration;

use crate::{options::millis_ceil, remote::Remote};

/// A held distributed lock: renewed in the background until released or dropped.
pub(super) struct LockGuard {
    l2: Remote,
    key: String,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl LockGuard {
    pub(super) fn new(l2: &Remote, key: String, token: String, ttl: Duration) -> Self {
        let renewal = {
            let (l2, key, token) = (l2.clone(), key.clone(), token.clone());
            tokio::spawn(async move {
                let ttl_ms = millis_ceil(ttl);
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if matches!(l2.renew_lock(&key, &token, ttl_ms).await, Ok(false)) {
                        return; // lost it (expired and taken): nothing left to renew
                    }
                }
            })
        };
        Self {
            l2: l2.clone(),
            key,
            token,
            renewal,
            released: false,
        }
    }

    pub(super) async fn release(mut self) {
        self.renewal.abort();
        self.released = true;
        let _ = self.l2.release_lock(&self.key, &self.token).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // Dropped without release (the fetch failed or was cancelled on its way): release it
        // in the background rather than make other instances wait for it to expire.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (l2, key, token) = (
                self.l2.clone(),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            drop(rt.spawn(async move {
                let _ = l2.release_lock(&key, &token).await;
            }));
        }
    }
}
