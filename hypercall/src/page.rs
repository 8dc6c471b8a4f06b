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
    #[inline]
    pub const fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The page's guest-physical page number (`gpa >> 12`).
    #[inline]
    pub const fn gpn(&self) -> u64 {
        self.gpa >> 12
    }

    /// The page's virtual address (for the bare-metal platform's `call` into the hypercall page).
    pub fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    /// The qwords of the page.
    #[inline]
    pub const fn words(&self) -> &'a [AtomicU64; PAGE_WORDS] {
        self.words
    }

    #[inline]
    fn word(&self, offset: usize) -> &'a AtomicU64 {
        assert!(offset.is_multiple_of(8), "unaligned qword offset");
        &self.words[offset / 8]
    }

    /// Atomic (acquire) load of the qword at `offset` (8-aligned).
    #[inline]
    pub fn load_u64(&self, offset: usize) -> u64 {
        self.word(offset).load(Ordering::Acquire)
    }

    /// Atomic (release) store of the qword at `offset` (8-aligned).
    #[inline]
    pub fn store_u64(&self, offset: usize, value: u64) {
        self.word(offset).store(value, Ordering::Release)
    }

    /// Atomic (acquire) load of the dword at `offset` (4-aligned).
    #[inline]
    pub fn load_u32(&self, offset: usize) -> u32 {
        assert!(offset.is_multiple_of(4), "unaligned dword offset");
        (self.load_u64(offset & !7) >> ((offset & 4) * 8)) as u32
    }

    /// Atomic load of the byte at `offset`.
    #[inline]
    pub fn load_u8(&self, offset: usize) -> u8 {
        (self.load_u64(offset & !7) >> ((offset & 7) * 8)) as u8
    }

    /// Atomically swaps the qword at `offset` (8-aligned), returning the old value.
    #[inline]
    pub fn swap_u64(&self, offset: usize, value: u64) -> u64 {
        self.word(offset).swap(value, Ordering::AcqRel)
    }

    /// Atomically ANDs the qword at `offset` (8-aligned) with `mask`, returning the old value.
    #[inline]
    pub fn fetch_and_u64(&self, offset: usize, mask: u64) -> u64 {
        self.word(offset).fetch_and(mask, Ordering::AcqRel)
    }

    /// Atomically ORs the qword at `offset` (8-aligned) with `bits`, returning the old value.
    #[inline]
    pub fn fetch_or_u64(&self, offset: usize, bits: u64) -> u64 {
        self.word(offset).fetch_or(bits, Ordering::AcqRel)
    }

    /// Atomic compare-exchange of the qword at `offset` (8-aligned).
    #[inline]
    pub fn compare_exchange_u64(&self, offset: usize, current: u64, new: u64) -> Result<u64, u64> {
        self.word(offset)
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the page.
    ///
    /// Whole qwords are read with one relaxed atomic load each, a partial qword at either end with
    /// one load of its qword; an acquire fence follows, so nothing after the copy is reordered
    /// before it. Callers that need the bytes to be consistent with a flag the other side
    /// publishes load that flag (acquire) first, as the ring does with its indices.
    pub fn read_bytes(&self, offset: usize, buf: &mut [u8]) {
        assert!(offset + buf.len() <= PAGE_SIZE, "read beyond the page");
        if buf.is_empty() {
            return;
        }
        let mut word = offset / 8;
        // Leading partial qword.
        let start = offset % 8;
        let rest = if start != 0 {
            let n = (8 - start).min(buf.len());
            let (head, rest) = buf.split_at_mut(n);
            let w = self.words[word].load(Ordering::Relaxed).to_le_bytes();
            head.copy_from_slice(&w[start..start + n]);
            word += 1;
            rest
        } else {
            buf
        };
        // Whole qwords, then the trailing partial one.
        let mut chunks = rest.chunks_exact_mut(8);
        let whole = chunks.len();
        for (chunk, w) in (&mut chunks).zip(&self.words[word..word + whole]) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let w = self.words[word + whole]
                .load(Ordering::Relaxed)
                .to_le_bytes();
            let n = tail.len();
            tail.copy_from_slice(&w[..n]);
        }
        core::sync::atomic::fence(Ordering::Acquire);
    }

    /// Copies `data` into the page starting at `offset`.
    ///
    /// A release fence comes first, so nothing before the copy is reordered after it; then whole
    /// qwords are written with one relaxed atomic store each (not ordered among themselves: the
    /// other side learns that the bytes are complete from a flag or index stored after them). Partial qwords at the ends are read,
    /// merged and written back, so use this only on memory the hypervisor does not write at the
    /// same time (hypercall input pages, crash message pages, the producer's part of a ring).
    pub fn write_bytes(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE_SIZE, "write beyond the page");
        if data.is_empty() {
            return;
        }
        core::sync::atomic::fence(Ordering::Release);
        let mut word = offset / 8;
        let merge = |w: &AtomicU64, at: usize, bytes: &[u8]| {
            let mut v = w.load(Ordering::Relaxed).to_le_bytes();
            v[at..at + bytes.len()].copy_from_slice(bytes);
            w.store(u64::from_le_bytes(v), Ordering::Relaxed);
        };
        // Leading partial qword.
        let start = offset % 8;
        let rest = if start != 0 {
            let n = (8 - start).min(data.len());
            let (head, rest) = data.split_at(n);
            merge(&self.words[word], start, head);
            word += 1;
            rest
        } else {
            data
        };
        // Whole qwords, then the trailing partial one.
        let chunks = rest.chunks_exact(8);
        let tail = chunks.remainder();
        let whole = chunks.len();
        for (chunk, w) in chunks.zip(&self.words[word..word + whole]) {
            let mut v = [0u8; 8];
            v.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(v), Ordering::Relaxed);
        }
        if !tail.is_empty() {
            merge(&self.words[word + whole], 0, tail);
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
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

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

    /// A byte-for-byte model of the page to check the qword-wise copies against.
    fn model_page(p: &Page) -> Vec<u8> {
        let r = PageRef::identity_mapped(p);
        (0..PAGE_SIZE).map(|i| r.load_u8(i)).collect()
    }

    fn fill_pattern(p: &Page, seed: u8) {
        for (i, w) in p.words().iter().enumerate() {
            let b: [u8; 8] =
                core::array::from_fn(|k| ((i * 8 + k) as u8).wrapping_mul(13).wrapping_add(seed));
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    // Every start offset within a qword, every length up to three qwords, at the start and at the
    // very end of the page: write_bytes changes exactly the target bytes, read_bytes returns them.
    #[test]
    fn partial_qword_edges_match_a_byte_model() {
        let p = Page::new();
        let r = PageRef::identity_mapped(&p);
        for base in [0, 64, PAGE_SIZE - 32] {
            for start in 0..8 {
                for len in 0..=24 {
                    let offset = base + start;
                    if offset + len > PAGE_SIZE {
                        continue;
                    }
                    fill_pattern(&p, (start * 31 + len) as u8);
                    let mut model = model_page(&p);
                    let data: Vec<u8> = (0..len).map(|i| 0xA0 ^ (i as u8)).collect();
                    model[offset..offset + len].copy_from_slice(&data);
                    r.write_bytes(offset, &data);
                    assert_eq!(model_page(&p), model, "write at {offset}, {len} bytes");
                    let mut got = vec![0x5Au8; len + 2];
                    r.read_bytes(offset, &mut got[1..=len]);
                    assert_eq!(&got[1..=len], &data[..], "read at {offset}, {len} bytes");
                    assert_eq!(
                        (got[0], got[len + 1]),
                        (0x5A, 0x5A),
                        "read outside the buffer"
                    );
                    // A read of untouched bytes next to the write returns the pattern.
                    let before = offset.saturating_sub(9);
                    let mut around = vec![0u8; offset - before];
                    r.read_bytes(before, &mut around);
                    assert_eq!(&around[..], &model[before..offset]);
                }
            }
        }
    }

    #[test]
    fn whole_page_round_trip() {
        let p = Page::new();
        let r = PageRef::identity_mapped(&p);
        let data: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
        r.write_bytes(0, &data);
        assert_eq!(model_page(&p), data);
        let mut got = vec![0u8; PAGE_SIZE];
        r.read_bytes(0, &mut got);
        assert_eq!(got, data);
        // Empty accesses are allowed anywhere up to the end, including at PAGE_SIZE.
        r.write_bytes(PAGE_SIZE, &[]);
        r.read_bytes(PAGE_SIZE, &mut []);
        assert_eq!(model_page(&p), data);
    }

    proptest::proptest! {
        #[test]
        fn random_copies_match_a_byte_model(
            ops in proptest::collection::vec((0usize..PAGE_SIZE, 0usize..300, proptest::prelude::any::<u8>()), 1..40)
        ) {
            let p = Page::new();
            let r = PageRef::identity_mapped(&p);
            let mut model = vec![0u8; PAGE_SIZE];
            for (offset, len, seed) in ops {
                let len = len.min(PAGE_SIZE - offset);
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                r.write_bytes(offset, &data);
                model[offset..offset + len].copy_from_slice(&data);
                let mut got = vec![0u8; len];
                r.read_bytes(offset, &mut got);
                proptest::prop_assert_eq!(&got, &data);
            }
            proptest::prop_assert_eq!(model_page(&p), model);
        }
    }

    #[test]
    #[should_panic]
    fn write_out_of_page() {
        let p = Page::new();
        PageRef::identity_mapped(&p).write_bytes(4095, &[0; 2]);
    }

    #[test]
    #[should_panic]
    fn out_of_page() {
        let p = Page::new();
        PageRef::identity_mapped(&p).read_bytes(4090, &mut [0; 8]);
    }
}
