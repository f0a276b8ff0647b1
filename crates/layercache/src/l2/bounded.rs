//! Every Redis call bounded: a timeout (fred's own, with ours as a backstop), the circuit
//! breaker, and the shorter suspect timeout after an outage.

use std::sync::atomic::Ordering;

use fred::{clients::WithOptions, prelude::ClientLike};

use super::{is_outage, map_err, Lane, RedisStore, BACKSTOP_GRACE};
use crate::{
    breaker::Verdict,
    error::{Error, ErrorKind, Result},
};

impl RedisStore {
    /// Runs one command, bounded by a timeout, through the circuit breaker. While the
    /// connection is known to be down (fred is reconnecting) the command is not sent at all: it
    /// fails at once, costing the caller nothing, and without counting against the breaker
    /// (which is for a Redis that is connected but does not answer). After an outage error,
    /// and until a call succeeds, commands are bounded by the shorter suspect timeout, so the
    /// calls between the first failure and the breaker opening do not each pay the full one.
    pub(super) async fn bounded<'s, T, F, Fut>(
        &'s self,
        what: &'static str,
        command: F,
    ) -> Result<T>
    where
        F: FnOnce(&'s WithOptions<fred::prelude::Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        self.bounded_on(Lane::Commands, what, command).await
    }

    /// [`bounded`](Self::bounded) on the connection of `lane`.
    pub(super) async fn bounded_on<'s, T, F, Fut>(
        &'s self,
        lane: Lane,
        what: &'static str,
        command: F,
    ) -> Result<T>
    where
        F: FnOnce(&'s WithOptions<fred::prelude::Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        self.bounded_judged(lane, what, command, |_| false).await
    }

    /// [`bounded_on`](Self::bounded_on), for an answer that may still carry an outage
    /// (`outage_in`: the replies of several commands, one of which timed out). Such an answer
    /// is returned, and counted against the breaker as the failure it also is.
    pub(super) async fn bounded_judged<'s, T, F, Fut>(
        &'s self,
        lane: Lane,
        what: &'static str,
        command: F,
        outage_in: impl FnOnce(&T) -> bool,
    ) -> Result<T>
    where
        F: FnOnce(&'s WithOptions<fred::prelude::Client>) -> Fut,
        Fut: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        let conn = self.conn(lane);
        if !conn.client.is_connected() {
            self.counters.l2_disconnected_skips.incr();
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{what} skipped: redis is not connected (reconnecting)"),
            ));
        }
        let permit = self.breaker.permit();
        if permit.verdict() == Verdict::Reject {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{what} skipped: the redis circuit breaker is open"),
            ));
        }
        let (client, timeout) = if self.suspect.load(Ordering::Acquire) {
            (&conn.wary, self.suspect_timeout)
        } else {
            (&conn.normal, self.timeout)
        };
        // fred's own timeout (the same duration) must fire first: only then does fred mark the
        // command timed out and drop it from its reconnect queue. Dropping the future from out
        // here would leave it queued, to be sent after a reconnect — a write landing long after
        // its caller was told it failed. Ours is a backstop, a little later.
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(timeout + BACKSTOP_GRACE, command(client)).await;
        #[cfg(feature = "metrics")]
        crate::metrics::record_redis(&self.cache_name, what, started.elapsed());
        let result = match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let outage = is_outage(&e);
                self.suspect.store(outage, Ordering::Release);
                permit.record(outage);
                if e.kind() == &fred::error::ErrorKind::Timeout {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("{what} took longer than {timeout:?}"),
                    )
                    .with_source(e));
                }
                return Err(map_err(what, e));
            }
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what} took longer than {timeout:?}"),
            )),
        };
        let failed = result.as_ref().map_or(true, outage_in);
        self.suspect.store(failed, Ordering::Release);
        permit.record(failed);
        result
    }
}
