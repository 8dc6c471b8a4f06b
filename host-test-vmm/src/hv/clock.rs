//! The partition reference clock (fact sheet §2.2, "Reference TSC page").
//!
//! Reference time is in 100 ns units and is computed from the guest-visible
//! TSC with exactly the formula the guest uses on the reference TSC page:
//! `((tsc * scale) >> 64) + offset`. TIME_REF_COUNT, the page contents and the
//! synthetic timers all go through [`RefClock::ref_from_tsc`], so the MSR and
//! the page can never disagree.

use hypercall::tsc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Reference time ticks per second (10 MHz, 100 ns per tick).
pub const REF_TICKS_PER_SEC: u64 = tsc::REFERENCE_TIME_HZ;

/// Nanoseconds per reference tick.
pub const NS_PER_REF_TICK: u64 = 100;

/// `floor(2^64 * 10^7 / tsc_hz)`, the reference TSC page scale.
///
/// Returns `None` when the frequency is at or below 10 MHz: the scale would
/// not fit in 64 bits (the page format cannot express a TSC slower than the
/// reference clock).
pub fn scale_for_tsc_hz(tsc_hz: u64) -> Option<u64> {
    (tsc_hz > REF_TICKS_PER_SEC).then(|| tsc::scale_for_frequency(tsc_hz))
}

/// Reference clock state: fixed scale, offset chosen at partition creation
/// (and again at reset) so that reference time starts near 0.
#[derive(Debug)]
pub struct RefClock {
    tsc_hz: u64,
    scale: u64,
    offset: AtomicI64,
}

impl RefClock {
    /// A clock for a guest TSC running at `tsc_hz`, with reference time 0 at
    /// guest TSC value `tsc_now`. `None` if `tsc_hz` is unusable (see
    /// [`scale_for_tsc_hz`]).
    pub fn new(tsc_hz: u64, tsc_now: u64) -> Option<Self> {
        let scale = scale_for_tsc_hz(tsc_hz)?;
        let clock = Self {
            tsc_hz,
            scale,
            offset: AtomicI64::new(0),
        };
        clock.restart_at(tsc_now);
        Some(clock)
    }

    /// Make reference time 0 at guest TSC value `tsc_now`.
    pub fn restart_at(&self, tsc_now: u64) {
        let offset = tsc::offset_for(tsc_now, self.scale, 0);
        self.offset.store(offset, Ordering::SeqCst);
    }

    /// TSC frequency in Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// The page's TscScale.
    pub fn scale(&self) -> u64 {
        self.scale
    }

    /// The page's TscOffset.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::SeqCst)
    }

    /// Reference time for a guest TSC value: the page formula.
    pub fn ref_from_tsc(&self, tsc: u64) -> u64 {
        tsc::compute(tsc, self.scale, self.offset())
    }

    /// Host wall-clock time for a span of reference time. Reference time
    /// advances at 10 MHz whenever the guest TSC advances at `tsc_hz`.
    pub fn ref_to_duration(ref_ticks: u64) -> Duration {
        Duration::from_nanos(ref_ticks.saturating_mul(NS_PER_REF_TICK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scale_matches_the_fact_sheet_formula() {
        // 1 GHz: 2^64 * 10^7 / 10^9 = 2^64 / 100.
        assert_eq!(
            scale_for_tsc_hz(1_000_000_000),
            Some(184_467_440_737_095_516)
        );
        // 2.5 GHz: exact floor.
        let expect = ((10_000_000u128 << 64) / 2_500_000_000u128) as u64;
        assert_eq!(scale_for_tsc_hz(2_500_000_000), Some(expect));
        assert_eq!(scale_for_tsc_hz(10_000_000), None);
        assert_eq!(scale_for_tsc_hz(0), None);
        assert!(scale_for_tsc_hz(10_000_001).is_some());
    }

    #[test]
    fn starts_near_zero_and_counts_100ns() {
        let hz = 2_000_000_000;
        let start = 123_456_789_012;
        let c = RefClock::new(hz, start).unwrap();
        assert_eq!(c.ref_from_tsc(start), 0);
        // One second of TSC = 10^7 reference ticks (floor of the scale can
        // lose at most one tick).
        let one_sec = c.ref_from_tsc(start + hz);
        assert!((9_999_999..=10_000_000).contains(&one_sec), "{one_sec}");
        assert!(c.offset() < 0);
    }

    #[test]
    fn restart_resets_to_zero() {
        let c = RefClock::new(3_000_000_000, 0).unwrap();
        assert_eq!(c.ref_from_tsc(0), 0);
        c.restart_at(9_000_000_000);
        assert_eq!(c.ref_from_tsc(9_000_000_000), 0);
        assert!(c.ref_from_tsc(12_000_000_000) >= 9_999_999);
    }

    #[test]
    fn duration_conversion() {
        assert_eq!(
            RefClock::ref_to_duration(10_000_000),
            Duration::from_secs(1)
        );
        assert_eq!(
            RefClock::ref_to_duration(u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
    }

    proptest! {
        #[test]
        fn monotonic_in_tsc(hz in 10_000_001u64..10_000_000_000, start: u64, a: u64, b: u64) {
            let c = RefClock::new(hz, start).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            // Monotonic as long as the TSC does not wrap relative to start.
            if lo >= start {
                prop_assert!(c.ref_from_tsc(lo) <= c.ref_from_tsc(hi));
            }
        }
    }
}
