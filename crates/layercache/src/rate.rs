//! The rate-limit algorithms as pure functions of the stored state and the time: what
//! `rate_limit.lua` does in Redis, for the in-memory store (and the unit tests that pin the
//! arithmetic both share). The facade is [`crate::ratelimit`].
//!
//! Times are microseconds on the store's clock; each algorithm keeps its state under one or two
//! keys that share a hash slot (the limiter's base key, and `…:1` for the sliding window's odd
//! windows).

/// Which algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    /// GCRA (a token bucket without a refill task): the key holds the theoretical arrival
    /// time of the next request.
    TokenBucket,
    /// A counter per window, the window starting at its first request.
    FixedWindow,
    /// Two windows' counters, the previous one weighted by how much of it still overlaps the
    /// sliding window.
    SlidingWindow,
}

impl Algorithm {
    /// The letter `rate_limit.lua` takes.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::TokenBucket => "g",
            Self::FixedWindow => "f",
            Self::SlidingWindow => "s",
        }
    }
}

/// One check: `n` requests against a limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateCall<'a> {
    /// The limiter's base key for the caller's key (its odd sliding windows at `{key}:1`).
    pub(crate) key: &'a str,
    pub(crate) odd_key: &'a str,
    pub(crate) algorithm: Algorithm,
    /// Requests per window.
    pub(crate) limit: u64,
    pub(crate) window_us: u64,
    /// The token bucket's capacity.
    pub(crate) burst: u64,
    pub(crate) n: u64,
}

/// What a check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateReply {
    pub(crate) allowed: bool,
    /// Requests that would still be allowed right now.
    pub(crate) remaining: u64,
    /// For a refused check: how long until the same check would be allowed.
    pub(crate) retry_after_us: u64,
}

/// A value to store: key, value, lifetime in ms.
#[cfg(any(test, feature = "memory"))]
pub(crate) type Store = (String, String, u64);

#[cfg(any(test, feature = "memory"))]
fn ms(us: f64) -> u64 {
    (us / 1000.0).ceil().max(1.0) as u64
}

#[cfg(any(test, feature = "memory"))]
fn floor0(x: f64) -> u64 {
    x.floor().max(0.0) as u64
}

/// Decides `call` at `now` (µs) given `read` (a key's stored value): the reply and the value
/// to store, if any. The same arithmetic as `rate_limit.lua`.
#[cfg(any(test, feature = "memory"))]
pub(crate) fn decide(
    call: &RateCall<'_>,
    now: u64,
    mut read: impl FnMut(&str) -> Option<String>,
) -> (RateReply, Option<Store>) {
    let now_f = now as f64;
    let (limit, window, n) = (call.limit as f64, call.window_us as f64, call.n as f64);
    let denied = |remaining: f64, retry: f64| RateReply {
        allowed: false,
        remaining: floor0(remaining),
        retry_after_us: retry.ceil().max(1.0) as u64,
    };
    match call.algorithm {
        Algorithm::TokenBucket => {
            let t = window / limit;
            let burst = call.burst as f64;
            let stored = read(call.key)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            let tat = stored.max(now_f);
            let new_tat = tat + n * t;
            let allow_at = new_tat - burst * t;
            if allow_at > now_f {
                return (
                    denied((now_f + burst * t - tat) / t, allow_at - now_f),
                    None,
                );
            }
            let reply = RateReply {
                allowed: true,
                remaining: floor0((now_f + burst * t - new_tat) / t),
                retry_after_us: 0,
            };
            let store = (
                call.key.to_owned(),
                format!("{new_tat:.0}"),
                ms(new_tat - now_f),
            );
            (reply, Some(store))
        }
        Algorithm::FixedWindow => {
            // The key holds `{window start}:{count}`; a window ends `window` after its start.
            let (start, count) = read(call.key)
                .and_then(|v| {
                    let (s, c) = v.split_once(':')?;
                    Some((s.parse::<f64>().ok()?, c.parse::<f64>().ok()?))
                })
                .filter(|(s, _)| now_f < s + window)
                .unwrap_or((now_f, 0.0));
            if count + n > limit {
                return (denied(limit - count, start + window - now_f), None);
            }
            let reply = RateReply {
                allowed: true,
                remaining: floor0(limit - count - n),
                retry_after_us: 0,
            };
            let value = format!("{start:.0}:{:.0}", count + n);
            let store = (call.key.to_owned(), value, ms(start + window - now_f));
            (reply, Some(store))
        }
        Algorithm::SlidingWindow => {
            let idx = (now_f / window).floor();
            let odd = idx % 2.0 == 1.0;
            let (cur_key, prev_key) = if odd {
                (call.odd_key, call.key)
            } else {
                (call.key, call.odd_key)
            };
            // Each key holds `{window index}:{count}`.
            let mut count = |key: &str, want: f64| {
                read(key)
                    .and_then(|v| {
                        let (i, c) = v.split_once(':')?;
                        (i.parse::<f64>().ok()? == want).then_some(c.parse::<f64>().ok()?)
                    })
                    .unwrap_or(0.0)
            };
            let cur = count(cur_key, idx);
            let prev = count(prev_key, idx - 1.0);
            let into = now_f - idx * window;
            let estimate = prev * (window - into) / window + cur;
            if estimate + n > limit {
                let retry = if cur + n <= limit && prev > 0.0 {
                    // Within this window, once enough of the previous one has slid out.
                    (window - into) - (limit - n - cur) * window / prev
                } else {
                    // In the next window, once enough of this one has slid out.
                    (window - into) + (window * (1.0 - (limit - n) / cur)).max(0.0)
                };
                return (denied(limit - estimate, retry), None);
            }
            let reply = RateReply {
                allowed: true,
                remaining: floor0(limit - estimate - n),
                retry_after_us: 0,
            };
            let value = format!("{idx:.0}:{:.0}", cur + n);
            (reply, Some((cur_key.to_owned(), value, ms(2.0 * window))))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;

    /// Runs checks against a map, as the memory store does.
    struct Bench {
        state: RefCell<HashMap<String, String>>,
        algorithm: Algorithm,
        limit: u64,
        window_us: u64,
        burst: u64,
    }

    impl Bench {
        fn new(algorithm: Algorithm, limit: u64, window_us: u64, burst: u64) -> Self {
            Self {
                state: RefCell::default(),
                algorithm,
                limit,
                window_us,
                burst,
            }
        }

        fn check(&self, now: u64, n: u64) -> RateReply {
            let call = RateCall {
                key: "k",
                odd_key: "k:1",
                algorithm: self.algorithm,
                limit: self.limit,
                window_us: self.window_us,
                burst: self.burst,
                n,
            };
            let (reply, store) = decide(&call, now, |k| self.state.borrow().get(k).cloned());
            if let Some((k, v, _)) = store {
                self.state.borrow_mut().insert(k, v);
            }
            reply
        }
    }

    const S: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000 * S;

    #[test]
    fn a_token_bucket_allows_its_burst_then_one_request_per_interval() {
        // 10 per second (one per 100 ms), bursts of 5.
        let b = Bench::new(Algorithm::TokenBucket, 10, S, 5);
        for left in (0..5).rev() {
            let r = b.check(T0, 1);
            assert!(r.allowed);
            assert_eq!(r.remaining, left);
        }
        let r = b.check(T0, 1);
        assert!(!r.allowed);
        assert_eq!(r.retry_after_us, 100_000);
        assert!(!b.check(T0 + 99_999, 1).allowed);
        assert!(b.check(T0 + 100_000, 1).allowed);
        assert!(!b.check(T0 + 100_000, 1).allowed);
        // Idle long enough, the bucket is full again, never fuller.
        let r = b.check(T0 + 10 * S, 1);
        assert!(r.allowed);
        assert_eq!(r.remaining, 4);
        assert!(!b.check(T0 + 10 * S, 5).allowed, "5 more than the 4 left");
        assert!(b.check(T0 + 10 * S, 4).allowed);
    }

    #[test]
    fn a_fixed_window_counts_from_its_first_request() {
        let b = Bench::new(Algorithm::FixedWindow, 3, S, 0);
        assert!(b.check(T0 + 500, 2).allowed);
        let r = b.check(T0 + 600, 1);
        assert!(r.allowed);
        assert_eq!(r.remaining, 0);
        let r = b.check(T0 + S / 2, 1);
        assert!(!r.allowed);
        assert_eq!(r.retry_after_us, S / 2 + 500);
        assert!(!b.check(T0 + S + 499, 1).allowed);
        let r = b.check(T0 + S + 500, 3);
        assert!(r.allowed, "a new window");
        assert_eq!(r.remaining, 0);
    }

    #[test]
    fn a_sliding_window_weighs_the_previous_window_by_its_overlap() {
        let b = Bench::new(Algorithm::SlidingWindow, 10, S, 0);
        // Window 0 (aligned on the clock): 10 requests.
        assert!(b.check(T0, 10).allowed);
        let r = b.check(T0 + S / 2, 1);
        assert!(!r.allowed);
        // Next window starts at T0 + S; there 10 × (1 - d/S) + 1 <= 10 once d >= S/10.
        assert_eq!(r.retry_after_us, S / 2 + S / 10);
        assert!(!b.check(T0 + S + S / 10 - 1, 1).allowed);
        let r = b.check(T0 + S + S / 10, 1);
        assert!(r.allowed);
        assert_eq!(r.remaining, 0);
        // Halfway through window 1: 10 × 0.5 + 1 = 6 counted, 4 left.
        let r = b.check(T0 + S + S / 2, 4);
        assert!(r.allowed, "{r:?}");
        assert!(!b.check(T0 + S + S / 2, 1).allowed);
        // Two windows later nothing is left of either.
        let r = b.check(T0 + 3 * S, 10);
        assert!(r.allowed);
    }
}
