//! Freshness maths: probabilistic early recomputation (XFetch), TTL jitter, and the small
//! random source they use. Pure functions, no clock of their own.

use std::{cell::Cell, time::Duration};

/// Whether XFetch says to recompute now.
///
/// XFetch (Vattani, Chierichetti, Lowenstein, *Optimal Probabilistic Cache Stampede
/// Prevention*, VLDB 2015) recomputes a value early when
///
/// ```text
/// now - delta * beta * ln(rand) >= expiry
/// ```
///
/// where `delta` is how long the last recomputation took, `beta >= 0` scales how early
/// (1 is the paper's optimum; 0 turns it off) and `rand` is uniform in (0, 1]. Since
/// `ln(rand) <= 0`, the term `-delta * beta * ln(rand)` is a non-negative *head start*: the
/// closer `now` is to `expiry`, and the longer recomputation takes, the likelier an early
/// refresh. (Getting that sign wrong — adding `delta * beta * ln(rand)` — would make refreshes
/// start only *after* expiry, which is the bug this function's tests pin down.)
///
/// `until_expiry` is `expiry - now` (zero when already expired).
pub(crate) fn xfetch(until_expiry: Duration, delta: Duration, beta: f64, rand: f64) -> bool {
    if until_expiry.is_zero() {
        return true;
    }
    if beta <= 0.0 || delta.is_zero() {
        return false;
    }
    // rand in (0, 1]: clamp away from 0 so ln stays finite.
    let r = rand.clamp(f64::MIN_POSITIVE, 1.0);
    let head_start = -delta.as_secs_f64() * beta * r.ln();
    head_start >= until_expiry.as_secs_f64()
}

/// The probability that [`xfetch`] fires, for given inputs (for tests and docs):
/// `P(-delta * beta * ln(U) >= t) = P(U <= exp(-t / (delta * beta)))`.
/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) fn xfetch_probability(until_expiry: Duration, delta: Duration, beta: f64) -> f64 {
    if until_expiry.is_zero() {
        return 1.0;
    }
    if beta <= 0.0 || delta.is_zero() {
        return 0.0;
    }
    (-until_expiry.as_secs_f64() / (delta.as_secs_f64() * beta)).exp()
}

/// `ttl` plus a uniformly random part of `jitter`.
pub(crate) fn jittered(ttl: Duration, jitter: Duration, rand: f64) -> Duration {
    if jitter.is_zero() {
        return ttl;
    }
    ttl + jitter.mul_f64(rand.clamp(0.0, 1.0))
}

/// A uniform random number in (0, 1] from a per-thread xorshift64* generator, seeded from the
/// standard library's randomly keyed hasher. Not cryptographic; it spreads expiries.
pub(crate) fn rand01() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 bits
        (v as f64 + 1.0) / (1u64 << 53) as f64
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish() | 1
}

/// A random lock token: 128 bits as hex.
pub(crate) fn token() -> String {
    let a = (rand01() * (1u64 << 53) as f64) as u64;
    let b = (rand01() * (1u64 << 53) as f64) as u64;
    let c = seed();
    format!("{a:014x}{b:014x}{c:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(100);

    /// A seeded sequence of uniforms in (0, 1] for repeatable tests.
    fn seeded(n: usize) -> Vec<f64> {
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                ((x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0) / (1u64 << 53) as f64
            })
            .collect()
    }

    fn fired(until: Duration, rands: &[f64]) -> usize {
        rands.iter().filter(|r| xfetch(until, D, 1.0, **r)).count()
    }

    #[test]
    fn far_from_expiry_never_fires() {
        let rands = seeded(10_000);
        // 60 s away with a 100 ms recomputation: probability e^-600.
        assert_eq!(fired(Duration::from_secs(60), &rands), 0);
        assert!(xfetch_probability(Duration::from_secs(60), D, 1.0) < 1e-200);
    }

    #[test]
    fn probability_rises_as_expiry_approaches() {
        let rands = seeded(20_000);
        let at = |ms: u64| fired(Duration::from_millis(ms), &rands);
        let counts = [at(1000), at(500), at(200), at(100), at(50), at(10), at(1)];
        for pair in counts.windows(2) {
            assert!(pair[0] <= pair[1], "not monotonic: {counts:?}");
        }
        assert_eq!(counts[0], fired(Duration::from_secs(1), &rands));
        assert!(counts[0] < 20, "{counts:?}"); // e^-10 * 20000 ≈ 1
        assert!(counts[6] > 19_000, "{counts:?}"); // e^-0.01 ≈ 0.99
                                                   // Matches the closed form within sampling error.
        for (ms, count) in [(100u64, counts[3]), (50, counts[4])] {
            let p = xfetch_probability(Duration::from_millis(ms), D, 1.0);
            let observed = count as f64 / rands.len() as f64;
            assert!((observed - p).abs() < 0.02, "{ms} ms: {observed} vs {p}");
        }
    }

    #[test]
    fn the_sign_is_a_head_start_not_a_delay() {
        // With the sign wrong, nothing would ever fire before expiry. Just before expiry,
        // nearly every draw must fire.
        let rands = seeded(1000);
        assert!(fired(Duration::from_millis(1), &rands) > 950);
        // And at or past expiry it always fires.
        assert!(xfetch(Duration::ZERO, D, 1.0, 0.999));
    }

    #[test]
    fn beta_scales_and_zero_turns_it_off() {
        let rands = seeded(10_000);
        let t = Duration::from_millis(200);
        let low = rands.iter().filter(|r| xfetch(t, D, 0.5, **r)).count();
        let high = rands.iter().filter(|r| xfetch(t, D, 2.0, **r)).count();
        assert!(low < high, "{low} {high}");
        assert!(!rands.iter().any(|r| xfetch(t, D, 0.0, *r)));
        assert!(!rands.iter().any(|r| xfetch(t, Duration::ZERO, 1.0, *r)));
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        let ttl = Duration::from_secs(60);
        let j = Duration::from_secs(10);
        let values: Vec<Duration> = seeded(1000)
            .into_iter()
            .map(|r| jittered(ttl, j, r))
            .collect();
        assert!(values.iter().all(|v| *v >= ttl && *v <= ttl + j));
        let min = values.iter().min().unwrap();
        let max = values.iter().max().unwrap();
        assert!(*max - *min > Duration::from_secs(9));
        assert_eq!(jittered(ttl, Duration::ZERO, 0.7), ttl);
    }

    #[test]
    fn rand01_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|_| rand01()).collect();
        assert!(draws.iter().all(|d| *d > 0.0 && *d <= 1.0));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
        assert_ne!(token(), token());
    }
}
