//! Pages shared with the hypervisor, with their guest-physical addresses.
//!
//! The hypervisor writes the SynIC message and event-flags pages and the reference TSC page while
//! the guest reads them, and it reads hypercall input pages and writes output pages. Every access
//! here therefore goes through atomics ([`AtomicU64`]), which keeps the drivers in safe code and
//! correct against a concurrent writer. A page is viewed as 512 little-endian qwords.
//!
//! Two ways to get a [`PageRef`]:
//! - from a [`Page`] the caller owns (e.g. a `static`), with [`PageRef::new`] and its GPA, or
//!   [`PageRef::identity_mapped`] where virtual and guest-physical addresses are equal;
//! - from memory the platform maps, via a `&[AtomicU64; 512]` view (the bare-metal platform does
//!   that in its one `unsafe` module).
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};

/// Page size in bytes (HV_HYP_PAGE_SIZE).
pub const PAGE_SIZE: usize = 4096;
/// Qwords per page.
pub const PAGE_WORDS: usize = PAGE_SIZE / 8;

/// A 4 KiB, 4 KiB-aligned page of guest memory that can be shared with the hypervisor.
#[repr(C, align(4096))]
pub struct Page(pub [AtomicU64; PAGE_WORDS]);

impl Page {
    /// A zeroed page (usable in a `static`).
    pub const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; PAGE_WORDS])
    }

    /// The qwords of the page.
    pub const fn words(&self) -> &[AtomicU64; PAGE_WORDS] {
        &self.0
    }
}

impl Default for Page {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Page {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Page@{:p}", self)
    }
}

/// The GPA given to [`PageRef::new`] is not 4 KiB aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnalignedGpa(pub u64);

/// A handle to a shared page: its memory and its guest-physical address.
///
/// Offsets are byte offsets into the page. Methods panic if an access would leave the page or,
/// for the sized loads and stores, is not naturally aligned: offsets come from this crate's layout
/// constants, never from the other side.
#[derive(Clone, Copy)]
pub struct PageRef<'a> {
    words: &'a [AtomicU64; PAGE_WORDS],
    gpa: u64,
}

impl core::fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "PageRef {{ va: {:p}, gpa: {:#x} }}",
            self.words, self.gpa
        )
    }
}

impl<'a> PageRef<'a> {
    /// A handle to `words` at guest-physical address `gpa` (must be 4 KiB aligned).
    pub fn new(words: &'a [AtomicU64; PAGE_WORDS], gpa: u64) -> Result<Self, UnalignedGpa> {
        if !gpa.is_multiple_of(PAGE_SIZE as u64) {
            return Err(UnalignedGpa(gpa));
        }
        Ok(Self { words, gpa })
    }

    /// A handle to `page` where guest-physical equals virtual addresses (identity-mapped
    /// bare-metal guests).
    pub fn identity_mapped(page: &'a Page) -> Self {
        let gpa = core::ptr::from_ref(page).addr() as u64;
        Self {
            words: &page.0,
            gpa,
        }
    }

    /// The page's guest-physical address.
    pub const fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The page's guest-physical page number (`gpa >> 12`).
    pub const fn gpn(&self) -> u64 {
        self.gpa >> 12
    }

    /// The page's virtual address (for the bare-metal platform's `call` into the hypercall page).
    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    /// The qwords of the page.
    pub const fn words(&self) -> &'a [AtomicU64; PAGE_WORDS] {
        self.words
    }

    fn word(&self, offset: usize) -> &'a AtomicU64 {
        assert!(offset.is_multiple_of(8), "unaligned qword offset");
        &self.words[offset / 8]
    }

    /// Atomic (acquire) load of the qword at `offset` (8-aligned).
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Atomic (release) store of the qword at `offset` (8-aligned).
    pub fn store_u64(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Release)
    }

    /// Atomic (acquire) load of the dword at `offset` (4-aligned).
    pub fn load_u32(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4), "unaligned dword offset");
        (self.load_u64(offset & !7) >> ((offset & 4) * 8)) as u32
    }

    /// Atomic load of the byte at `offset`.
    pub fn load_u8(&self, offset: usize) -> u8 {
        (self.load_u64(offset & !7) >> ((offset & 7) * 8)) as u8
    }

    /// Atomically swaps the qword at `offset` (8-aligned), returning the old value.
    pub fn swap_u64(&self, offset: usize, value: u64) -> u64 {
        self.word(offset).swap(value, Ordering::AcqRel)
    }

    /// Atomically ANDs the qword at `offset` (8-aligned) with `mask`, returning the old value.
    pub fn fetch_and_u64(&self, offset: usize, mask: u64) -> u64 {
        self.word(offset).fetch_and(mask, Ordering::AcqRel)
    }

    /// Atomically ORs the qword at `offset` (8-aligned) with `bits`, returning the old value.
    pub fn fetch_or_u64(&self, offset: usize, bits: u64) -> u64 {
        self.word(offset).fetch_or(bits, Ordering::AcqRel)
    }

    /// Atomic compare-exchange of the qword at `offset` (8-aligned).
    pub fn compare_exchange_u64(&self, offset: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.word(offset)
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the page, a qword at a time.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE, "read beyond the page");
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i;
            let word = self.load_u64(at & !7).to_le_bytes();
            let start = at & 7;
            let n = (8 - start).min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&word[start..start + n]);
            i += n;
        }
    }

    /// Copies `data` into the page starting at `offset`, a qword at a time. Partial qwords at the
    /// ends are read, merged and written back, so use this only on memory the hypervisor does not
    /// write at the same time (hypercall input pages, crash message pages).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE, "write beyond the page");
        let mut i = 0;
        while i < data.len() {
            let at = offset + i;
            let start = at & 7;
            let n = (8 - start).min(data.len() - i);
            let mut word = if n == 8 {
                [0; 8]
            } else {
                self.load_u64(at & !7).to_le_bytes()
            };
            word[start..start + n].copy_from_slice(&data[i..i + n]);
            self.store_u64(at & !7, u64::from_le_bytes(word));
            i += n;
        }
    }

    /// Zeroes the whole page.
    pub fn zero(&self) {
        for w in self.words {
            w.store(0, Ordering::Relaxed);
        }
        core::sync::atomic::fence(Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<Page>(), 4096);
        assert_eq!(core::mem::align_of::<Page>(), 4096);
    }

    #[test]
    fn bytes_and_words() {
        let p = Page::new();
        let r = PageRef::new(p.words(), 0x5000).unwrap();
        assert_eq!(r.gpa(), 0x5000);
        assert_eq!(r.gpn(), 5);
        assert_eq!(
            PageRef::new(p.words(), 0x5008).unwrap_err(),
            UnalignedGpa(0x5008)
        );
        r.write_bytes(3, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(r.load_u64(0), 0x0504_0302_0100_0000);
        assert_eq!(r.load_u64(8), 0x0000_0B0A_0908_0706);
        assert_eq!(r.load_u32(4), 0x0504_0302);
        assert_eq!(r.load_u8(3), 1);
        let mut buf = [0u8; 11];
        r.read_bytes(3, &mut buf);
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(r.fetch_and_u64(0, 0xFF), 0x0504_0302_0100_0000);
        assert_eq!(r.load_u64(0), 0);
        assert_eq!(r.compare_exchange_u64(8, 1, 2), Err(0x0000_0B0A_0908_0706));
        assert_eq!(r.swap_u64(8, 7), 0x0000_0B0A_0908_0706);
        assert_eq!(r.fetch_or_u64(8, 8), 7);
        r.zero();
        assert_eq!(r.load_u64(8), 0);
        let id = PageRef::identity_mapped(&p);
        assert_eq!(id.gpa() % 4096, 0);
        assert_eq!(id.as_ptr() as u64, id.gpa());
    }

    #[test]
    #[should_panic]
    fn out_of_page() {
        let p = Page::new();
        PageRef::identity_mapped(&p).read_bytes(4090, &mut [0; 8]);
    }
}
