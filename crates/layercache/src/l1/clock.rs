//! The clock of L1 deadlines: cheap enough to read on every hit.
//!
//! Hot-path note: `Instant::now()` (`clock_gettime(CLOCK_MONOTONIC)`) cost ~37 ns on the
//! benchmark machine, a tenth of an L1 hit; the coarse monotonic clock (the kernel's last
//! tick, `CLOCK_MONOTONIC_COARSE` on Linux, through `coarsetime`) costs ~9 ns. It lags the
//! precise clock by up to one tick (1–10 ms on Linux, ~16 ms on Windows), so a deadline is
//! set [`SLACK`] early: an entry may leave L1 up to twice the slack before its lifetime ends
//! (a read from Redis then), never after it.

use std::time::Duration;

/// A point on the coarse clock, in its ticks (2^-32 s).
pub(crate) type Ticks = u64;

/// "No deadline of its own".
pub(crate) const NEVER: Ticks = Ticks::MAX;

/// How far the coarse clock may lag the precise one (at least one kernel tick everywhere we
/// run): deadlines are set this much early.
pub(crate) const SLACK: Duration = Duration::from_millis(16);

/// Now, on the coarse clock.
#[inline]
pub(crate) fn now() -> Ticks {
    coarsetime::Instant::now_without_cache_update().as_ticks()
}

/// `d` in ticks (saturating).
pub(crate) fn ticks(d: Duration) -> Ticks {
    // 2^32 ticks per second; lifetimes are at most 10 years, far from overflowing.
    let secs = d.as_secs().saturating_mul(1 << 32);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    secs.saturating_add(frac)
}

/// The deadline of something that lives `life` from now: [`SLACK`] early, so that it has
/// passed on the coarse clock before `life` has passed on the precise one.
pub(crate) fn deadline(life: Duration) -> Ticks {
    now().saturating_add(ticks(life.saturating_sub(SLACK)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_two_to_the_thirty_second_per_second() {
        assert_eq!(ticks(Duration::from_secs(1)), 1 << 32);
        assert_eq!(ticks(Duration::from_millis(500)), 1 << 31);
        assert_eq!(ticks(Duration::ZERO), 0);
        // Ten years does not overflow.
        assert!(ticks(Duration::from_secs(10 * 365 * 24 * 3600)) < u64::MAX / 2);
    }

    #[test]
    fn a_deadline_has_passed_once_its_lifetime_has() {
        let d = deadline(Duration::from_millis(100));
        let set = std::time::Instant::now();
        // Not over early by more than the slack (twice it, with the clock's lag).
        assert!(now() < d || set.elapsed() >= Duration::from_millis(100) - 2 * SLACK);
        while set.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // 100 ms have passed on the precise clock: the coarse one says the deadline has too.
        assert!(now() >= d);
        // A lifetime shorter than the slack is over at once.
        assert!(deadline(Duration::from_millis(5)) <= now());
        // A long one is not.
        assert!(deadline(Duration::from_secs(10)) > now());
    }
}
