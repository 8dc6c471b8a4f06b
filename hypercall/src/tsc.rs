//! The reference TSC page and the partition reference time (fact sheet §2.2, §10.5).
//!
//! Reference time is in 100 ns units: `((tsc * scale) >> 64) + offset`, with the high 64 bits of
//! the 128-bit product. The host picks `scale = floor(2^64 * 10^7 / tsc_hz)`
//! ([`scale_for_frequency`]) and bumps the sequence (never to 0) on every change; a sequence of 0
//! means the page is unusable and the guest reads TIME_REF_COUNT instead.
#![forbid(unsafe_code)]

use crate::page::PageRef;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Reference time ticks per second (10 MHz).
pub const REFERENCE_TIME_HZ: u64 = 10_000_000;
/// Sequence value meaning "the page is not valid; use TIME_REF_COUNT".
pub const SEQUENCE_INVALID: u32 = 0;
/// How many times [`reference_time`] re-reads a page whose sequence keeps changing before it gives
/// up (and the caller falls back to the MSR). Bounds the loop against a misbehaving host.
pub const MAX_SEQUENCE_RETRIES: u32 = 1000;

/// Byte offset of `tsc_sequence`.
pub const OFFSET_SEQUENCE: usize = 0;
/// Byte offset of `tsc_scale`.
pub const OFFSET_SCALE: usize = 8;
/// Byte offset of `tsc_offset`.
pub const OFFSET_OFFSET: usize = 16;

/// The reference TSC page (fact sheet §2.2).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReferenceTscPage {
    /// Offset 0: sequence; 0 = invalid.
    pub tsc_sequence: u32,
    /// Offset 4: reserved.
    pub reserved1: u32,
    /// Offset 8: scale (a 64.64 fixed-point multiplier giving 100 ns units).
    pub tsc_scale: u64,
    /// Offset 16: offset in 100 ns units (signed).
    pub tsc_offset: i64,
    /// Offset 24: reserved (509 qwords).
    pub reserved2: [u64; 509],
}

impl core::fmt::Debug for ReferenceTscPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReferenceTscPage")
            .field("tsc_sequence", &self.tsc_sequence)
            .field("tsc_scale", &self.tsc_scale)
            .field("tsc_offset", &self.tsc_offset)
            .finish_non_exhaustive()
    }
}

impl Default for ReferenceTscPage {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl ReferenceTscPage {
    /// The reference time at `tsc`, or `None` if the sequence says the page is invalid.
    pub fn reference_time(&self, tsc: u64) -> Option<u64> {
        (self.tsc_sequence != SEQUENCE_INVALID)
            .then(|| compute(tsc, self.tsc_scale, self.tsc_offset))
    }
}

const _: () = {
    assert!(size_of::<ReferenceTscPage>() == 4096);
    assert!(offset_of!(ReferenceTscPage, tsc_sequence) == OFFSET_SEQUENCE);
    assert!(offset_of!(ReferenceTscPage, reserved1) == 4);
    assert!(offset_of!(ReferenceTscPage, tsc_scale) == OFFSET_SCALE);
    assert!(offset_of!(ReferenceTscPage, tsc_offset) == OFFSET_OFFSET);
    assert!(offset_of!(ReferenceTscPage, reserved2) == 24);
};

/// `((tsc * scale) >> 64) + offset` (wrapping), in 100 ns units.
pub const fn compute(tsc: u64, scale: u64, offset: i64) -> u64 {
    (((tsc as u128 * scale as u128) >> 64) as u64).wrapping_add(offset as u64)
}

/// `floor(2^64 * 10^7 / tsc_hz)`: the scale a host writes for a TSC running at `tsc_hz`.
///
/// Saturates at `u64::MAX` for `tsc_hz <= 10 MHz` (including 0), where the exact value does not
/// fit.
pub const fn scale_for_frequency(tsc_hz: u64) -> u64 {
    if tsc_hz <= REFERENCE_TIME_HZ {
        return u64::MAX;
    }
    #[cfg(not(feature = "kernel"))]
    {
        (((1u128 << 64) * REFERENCE_TIME_HZ as u128) / tsc_hz as u128) as u64
    }
    #[cfg(feature = "kernel")]
    {
        scale_by_long_division(tsc_hz)
    }
}

/// [`scale_for_frequency`] without a 128-bit division, for `tsc_hz > 10^7` (feature `kernel`:
/// Linux's Rust `compiler_builtins` panics in `__udivti3`): `(10^7 << 64) / tsc_hz` by shifting
/// and subtracting, one quotient bit per step. The remainder stays below `tsc_hz`, so doubling
/// it overflows at most into a carry bit.
#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
const fn scale_by_long_division(tsc_hz: u64) -> u64 {
    let mut rem = REFERENCE_TIME_HZ; // the high word of the dividend; its low word is 0
    let mut quotient = 0u64;
    let mut i = 0;
    while i < 64 {
        let carry = rem >> 63;
        rem <<= 1;
        quotient <<= 1;
        if carry != 0 || rem >= tsc_hz {
            rem = rem.wrapping_sub(tsc_hz);
            quotient |= 1;
        }
        i += 1;
    }
    quotient
}

/// The offset that makes the reference time `ref_time` at TSC value `tsc` with `scale`
/// (e.g. `ref_time = 0` at partition creation).
pub const fn offset_for(tsc: u64, scale: u64, ref_time: u64) -> i64 {
    ref_time.wrapping_sub(compute(tsc, scale, 0)) as i64
}

/// Reads the reference time from a live reference TSC page (which the hypervisor may update at
/// any time), following the sequence protocol: read the sequence (0 means invalid), then scale and
/// offset, then the TSC, then re-read the sequence and retry if it changed.
///
/// Returns `None` when the page is invalid (or kept changing for [`MAX_SEQUENCE_RETRIES`] reads);
/// the caller then reads TIME_REF_COUNT.
pub fn reference_time(page: &PageRef<'_>, mut rdtsc: impl FnMut() -> u64) -> Option<u64> {
    for _ in 0..MAX_SEQUENCE_RETRIES {
        let seq = page.load_u32(OFFSET_SEQUENCE);
        if seq == SEQUENCE_INVALID {
            return None;
        }
        let scale = page.load_u64(OFFSET_SCALE);
        let offset = page.load_u64(OFFSET_OFFSET) as i64;
        let tsc = rdtsc();
        if page.load_u32(OFFSET_SEQUENCE) == seq {
            return Some(compute(tsc, scale, offset));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::Page;
    use proptest::prelude::*;
    use zerocopy::IntoBytes;

    // The kernel build's plain division agrees with the 128-bit one.
    #[test]
    fn long_division_matches_u128() {
        for hz in [
            REFERENCE_TIME_HZ + 1,
            REFERENCE_TIME_HZ * 2,
            1_000_000_000,
            2_500_000_000,
            3_000_000_000,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let wide = (((1u128 << 64) * REFERENCE_TIME_HZ as u128) / hz as u128) as u64;
            assert_eq!(scale_by_long_division(hz), wide, "{hz}");
        }
    }

    proptest! {
        #[test]
        fn long_division_matches_u128_any(hz in (REFERENCE_TIME_HZ + 1)..=u64::MAX) {
            let wide = (((1u128 << 64) * REFERENCE_TIME_HZ as u128) / hz as u128) as u64;
            prop_assert_eq!(scale_by_long_division(hz), wide);
        }
    }

    // Known answers (fact sheet §2.2: scale = floor(2^64 * 10^7 / tsc_hz)).
    #[test]
    fn known_answers() {
        let s = scale_for_frequency(2_500_000_000);
        assert_eq!(s, 73_786_976_294_838_206);
        assert_eq!(compute(0, s, 0), 0);
        // One second of TSC is 10^7 - 1 ticks: the floor of the scale loses a fraction.
        assert_eq!(compute(2_500_000_000, s, 0), 9_999_999);
        assert_eq!(compute(25_000_000_000, s, 0), 99_999_999);
        assert_eq!(compute(1_234_567_890_123, s, 0), 4_938_271_560);
        assert_eq!(compute(1 << 63, s, 0), 36_893_488_147_419_103);
        assert_eq!(compute(u64::MAX, s, 0), 73_786_976_294_838_205);
        assert_eq!(compute(2_500_000_000, s, 1000), 10_000_999);
        assert_eq!(compute(2_500_000_000, s, -9_999_999), 0);
        assert_eq!(scale_for_frequency(3_000_000_000), 61_489_146_912_365_172);
        assert_eq!(compute(3_000_000_000, 61_489_146_912_365_172, 0), 9_999_999);
        assert_eq!(scale_for_frequency(1_000_000_000), 184_467_440_737_095_516);
        assert_eq!(scale_for_frequency(10_000_000), u64::MAX);
        assert_eq!(scale_for_frequency(0), u64::MAX);
        assert_eq!(scale_for_frequency(10_000_001), 18_446_742_229_035_328_712);
        // Offset for "zero at partition creation".
        let off = offset_for(5_000_000_000, s, 0);
        assert_eq!(off, -19_999_999);
        assert_eq!(compute(5_000_000_000, s, off), 0);
        assert_eq!(compute(7_500_000_000, s, off), 10_000_000);
    }

    // fact sheet §2.2 layout.
    #[test]
    fn page_layout() {
        let p = ReferenceTscPage {
            tsc_sequence: 3,
            tsc_scale: 0x1122_3344_5566_7788,
            tsc_offset: -2,
            ..Default::default()
        };
        let b = p.as_bytes();
        assert_eq!(&b[0..4], &3u32.to_le_bytes());
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..24], &(-2i64).to_le_bytes());
        assert_eq!(p.reference_time(0), Some(u64::MAX - 1));
        let invalid = ReferenceTscPage {
            tsc_sequence: 0,
            ..p
        };
        assert_eq!(invalid.reference_time(0), None);
    }

    #[test]
    fn live_page_protocol() {
        let page = Page::new();
        let r = PageRef::identity_mapped(&page);
        // Sequence 0: invalid, no TSC read.
        let mut reads = 0;
        assert_eq!(
            reference_time(&r, || {
                reads += 1;
                0
            }),
            None
        );
        assert_eq!(reads, 0);
        let s = scale_for_frequency(2_500_000_000);
        r.write_bytes(
            0,
            ReferenceTscPage {
                tsc_sequence: 1,
                tsc_scale: s,
                tsc_offset: 5,
                ..Default::default()
            }
            .as_bytes(),
        );
        assert_eq!(reference_time(&r, || 2_500_000_000), Some(10_000_004));
        // The host updates the page between the first and second sequence read: one retry.
        let mut calls = 0;
        let t = reference_time(&r, || {
            calls += 1;
            if calls == 1 {
                r.store_u64(OFFSET_OFFSET, 100);
                r.store_u64(OFFSET_SEQUENCE, 2);
            }
            2_500_000_000
        });
        assert_eq!(calls, 2);
        assert_eq!(t, Some(10_000_099));
        // A page that changes on every read gives up after MAX_SEQUENCE_RETRIES.
        let mut seq = 2u64;
        let mut n = 0;
        let t = reference_time(&r, || {
            n += 1;
            seq += 1;
            r.store_u64(OFFSET_SEQUENCE, seq);
            0
        });
        assert_eq!(t, None);
        assert_eq!(n, MAX_SEQUENCE_RETRIES);
    }

    proptest! {
        // The reference time of one second of TSC is within one tick of 10^7 for any frequency.
        #[test]
        fn one_second_is_ten_million_ticks(hz in 10_000_001u64..=10_000_000_000_000) {
            let s = scale_for_frequency(hz);
            let t = compute(hz, s, 0);
            prop_assert!(t == REFERENCE_TIME_HZ || t == REFERENCE_TIME_HZ - 1, "{} {}", hz, t);
        }

        #[test]
        fn offset_for_inverts(tsc in any::<u64>(), hz in 10_000_001u64..=10_000_000_000_000, r in any::<u64>()) {
            let s = scale_for_frequency(hz);
            prop_assert_eq!(compute(tsc, s, offset_for(tsc, s, r)), r);
        }
    }
}
