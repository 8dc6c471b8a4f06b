//! Filling the reference TSC page (fact sheet §2.2), laid out by
//! `hypercall::tsc::ReferenceTscPage`.

use super::clock::RefClock;
use super::gmem::{GpaError, GuestMem};
use hypercall::tsc::{OFFSET_OFFSET, OFFSET_SCALE, OFFSET_SEQUENCE, SEQUENCE_INVALID};

/// The sequence after `prev`: never 0 (0 tells the guest the page is
/// invalid) and, for old guests, never 0xFFFFFFFF either.
pub(crate) fn next_sequence(prev: u32) -> u32 {
    let mut s = prev.wrapping_add(1);
    while s == SEQUENCE_INVALID || s == u32::MAX {
        s = s.wrapping_add(1);
    }
    s
}

/// Publish scale and offset at `gpa` with the sequence protocol: mark the
/// page invalid, write the values, then store the new (non-zero) sequence
/// with release ordering, so a reader that sees `sequence` sees the values.
pub(crate) fn write(
    mem: &GuestMem,
    gpa: u64,
    sequence: u32,
    clock: &RefClock,
) -> Result<(), GpaError> {
    mem.store_u32(gpa + OFFSET_SEQUENCE as u64, SEQUENCE_INVALID)?;
    // The invalid marker must be visible before any of the new values.
    GuestMem::full_fence();
    mem.write(gpa + OFFSET_SCALE as u64, &clock.scale().to_le_bytes())?;
    mem.write(gpa + OFFSET_OFFSET as u64, &clock.offset().to_le_bytes())?;
    mem.store_u32(gpa + OFFSET_SEQUENCE as u64, sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_skips_invalid_values() {
        assert_eq!(next_sequence(0), 1);
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(u32::MAX - 1), 1);
        assert_eq!(next_sequence(u32::MAX), 1);
    }
}
