//! Guest-memory access for the emulation: every GPA the guest supplies is
//! checked here, and every access stays inside guest RAM. Shared pages (SIM,
//! SIEF, reference TSC page) are written with volatile/atomic accessors so
//! the guest, running concurrently on another thread, observes a consistent
//! order.

use std::sync::atomic::{fence, AtomicU32, AtomicU8, Ordering};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory, VolatileSlice,
};

/// The TLFS page size (fact sheet: always 4 KiB).
pub const PAGE_SIZE: u64 = 4096;

/// Why a guest-memory access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GpaError {
    /// The GPA is not aligned as required.
    #[error("GPA {0:#x} is misaligned")]
    Misaligned(u64),
    /// The range would cross a 4 KiB page boundary.
    #[error("GPA range {0:#x}+{1} crosses a page boundary")]
    CrossesPage(u64, usize),
    /// The range is not entirely inside one guest RAM region.
    #[error("GPA range {0:#x}+{1} is outside guest RAM")]
    OutsideRam(u64, usize),
}

/// Guest memory as the emulation uses it.
#[derive(Debug, Clone)]
pub struct GuestMem {
    mem: GuestMemoryMmap,
}

impl GuestMem {
    pub fn new(mem: GuestMemoryMmap) -> Self {
        Self { mem }
    }

    pub fn inner(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// A slice covering `[gpa, gpa + len)`; it must lie in one region.
    fn slice(&self, gpa: u64, len: usize) -> Result<VolatileSlice<'_, ()>, GpaError> {
        if len == 0 || gpa.checked_add(len as u64).is_none() {
            return Err(GpaError::OutsideRam(gpa, len));
        }
        GuestMemoryBackend::get_slice(&self.mem, GuestAddress(gpa), len)
            .ok()
            .filter(|s| s.len() == len)
            .ok_or(GpaError::OutsideRam(gpa, len))
    }

    /// Whether the whole 4 KiB page at page-aligned `gpa` is guest RAM.
    pub fn page_in_ram(&self, gpa: u64) -> bool {
        gpa.is_multiple_of(PAGE_SIZE) && self.slice(gpa, PAGE_SIZE as usize).is_ok()
    }

    /// Check a hypercall input/output block: `align`-aligned, not crossing a
    /// page, inside RAM (fact sheet §3.3).
    pub fn check_block(&self, gpa: u64, len: usize, align: u64) -> Result<(), GpaError> {
        if align > 1 && !gpa.is_multiple_of(align) {
            return Err(GpaError::Misaligned(gpa));
        }
        if len as u64 > PAGE_SIZE || (gpa % PAGE_SIZE) + len as u64 > PAGE_SIZE {
            return Err(GpaError::CrossesPage(gpa, len));
        }
        self.slice(gpa, len).map(|_| ())
    }

    /// Copy `buf.len()` bytes out of guest memory.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), GpaError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.slice(gpa, buf.len())?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| GpaError::OutsideRam(gpa, buf.len()))
    }

    /// Copy `buf` into guest memory (volatile copy).
    pub fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), GpaError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.slice(gpa, buf.len())?;
        self.mem
            .write_slice(buf, GuestAddress(gpa))
            .map_err(|_| GpaError::OutsideRam(gpa, buf.len()))
    }

    /// Atomic 32-bit load (Acquire); `gpa` must be 4-byte aligned.
    pub fn load_u32(&self, gpa: u64) -> Result<u32, GpaError> {
        let s = self.slice(gpa, 4)?;
        let a = s
            .get_atomic_ref::<AtomicU32>(0)
            .map_err(|_| GpaError::Misaligned(gpa))?;
        Ok(a.load(Ordering::Acquire))
    }

    /// Atomic 32-bit store (Release); `gpa` must be 4-byte aligned. Everything
    /// written before is visible to a guest that observes this value.
    pub fn store_u32(&self, gpa: u64, value: u32) -> Result<(), GpaError> {
        let s = self.slice(gpa, 4)?;
        let a = s
            .get_atomic_ref::<AtomicU32>(0)
            .map_err(|_| GpaError::Misaligned(gpa))?;
        a.store(value, Ordering::Release);
        Ok(())
    }

    /// Atomic byte OR; returns the previous byte. Sequentially consistent so
    /// it pairs with the guest's locked instructions.
    pub fn fetch_or_u8(&self, gpa: u64, bits: u8) -> Result<u8, GpaError> {
        let s = self.slice(gpa, 1)?;
        let a = s
            .get_atomic_ref::<AtomicU8>(0)
            .map_err(|_| GpaError::Misaligned(gpa))?;
        Ok(a.fetch_or(bits, Ordering::SeqCst))
    }

    /// Full fence between a host store and a following host load of shared
    /// guest memory (store-load ordering against the guest's locked ops).
    pub fn full_fence() {
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), 0x10000),
                (GuestAddress(0x20000), 0x1000),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn page_checks() {
        let m = mem();
        assert!(m.page_in_ram(0));
        assert!(m.page_in_ram(0xF000));
        assert!(!m.page_in_ram(0x10000)); // hole
        assert!(m.page_in_ram(0x20000));
        assert!(!m.page_in_ram(0x21000)); // end of RAM
        assert!(!m.page_in_ram(0x20800)); // unaligned
        assert!(!m.page_in_ram(!0xFFFu64));
    }

    #[test]
    fn block_checks() {
        let m = mem();
        assert_eq!(m.check_block(0x1000, 256, 8), Ok(()));
        assert_eq!(
            m.check_block(0x1004, 256, 8),
            Err(GpaError::Misaligned(0x1004))
        );
        assert_eq!(
            m.check_block(0x1F08, 256, 8),
            Err(GpaError::CrossesPage(0x1F08, 256))
        );
        assert_eq!(m.check_block(0x1F00, 256, 8), Ok(()));
        assert!(matches!(
            m.check_block(0x10000, 8, 8),
            Err(GpaError::OutsideRam(..))
        ));
        assert!(matches!(
            m.check_block(u64::MAX - 7, 8, 8),
            Err(GpaError::OutsideRam(..))
        ));
    }

    #[test]
    fn read_write_atomics() {
        let m = mem();
        m.write(0x20010, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 3];
        m.read(0x20010, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3]);
        m.store_u32(0x20020, 0xDEAD_BEEF).unwrap();
        assert_eq!(m.load_u32(0x20020).unwrap(), 0xDEAD_BEEF);
        assert!(m.load_u32(0x20021).is_err());
        assert_eq!(m.fetch_or_u8(0x20030, 4).unwrap(), 0);
        assert_eq!(m.fetch_or_u8(0x20030, 4).unwrap(), 4);
        assert!(m.write(0x20FFF, &[0, 0]).is_err());
        assert!(m.write(0xFFFF, &[0, 0]).is_err());
        assert!(m.read(0x30000, &mut b).is_err());
    }
}
