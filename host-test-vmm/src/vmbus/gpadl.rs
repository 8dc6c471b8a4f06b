//! GPADL assembly (fact sheet §5.3 GpadlHeader/GpadlBody, §6.2).
//!
//! A guest describes a buffer as a list of ranges of guest pages. The header
//! message carries the first bytes of the range list; body messages append
//! more PFNs until `range_buflen` bytes have arrived. Everything here is
//! guest-controlled, so every count is checked against what was announced,
//! and every PFN must name a whole 4 KiB page of guest RAM before the GPADL
//! is accepted.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmbus_guest::packet::GpaRanges;

/// Size of a page in a GPADL (fact sheet conventions: always 4 KiB).
pub const PAGE_SIZE: u64 = 4096;
/// Size of a range's fixed part: byte_count u32 + byte_offset u32.
const RANGE_HEADER_BYTES: usize = 8;
/// GPADLs one connection may hold (created or being assembled); bounds the
/// host memory a guest can make us keep (each list is < 64 KiB).
pub const MAX_GPADLS: usize = 1024;
/// GPADLs that may be half-assembled at the same time.
pub const MAX_PENDING_GPADLS: usize = 64;
/// PFNs all created GPADLs of a connection may hold together (4 GiB of
/// guest memory described, 8 MiB of host memory for the lists).
pub const MAX_TOTAL_PFNS: usize = 1 << 20;

/// Why a GPADL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpadlError {
    /// The handle is already in use (created or being assembled).
    #[error("GPADL handle {0:#x} is already in use")]
    DuplicateHandle(u32),
    /// Handle 0 is never valid.
    #[error("GPADL handle 0 is invalid")]
    ZeroHandle,
    /// A body message for a GPADL that is not being assembled.
    #[error("no GPADL {0:#x} is being assembled")]
    UnknownPending(u32),
    /// No such GPADL.
    #[error("no GPADL {0:#x}")]
    Unknown(u32),
    /// The range list is malformed.
    #[error("GPADL {handle:#x}: {why}")]
    Malformed {
        /// The GPADL handle.
        handle: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// More PFN bytes arrived than `range_buflen` announced.
    #[error("GPADL {0:#x}: body exceeds the announced range_buflen")]
    TooLong(u32),
    /// A PFN is not a page of guest RAM.
    #[error("GPADL {handle:#x}: PFN {pfn:#x} is not guest RAM")]
    PfnOutsideRam {
        /// The GPADL handle.
        handle: u32,
        /// The offending PFN.
        pfn: u64,
    },
    /// Too many GPADLs.
    #[error("too many GPADLs")]
    TooMany,
}

/// One range of a GPADL: `byte_count` bytes starting `byte_offset` bytes
/// into the first page of `pfns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpadlRange {
    /// Length of the range in bytes.
    pub byte_count: u32,
    /// Offset of the range's first byte within its first page (< 4096).
    pub byte_offset: u32,
    /// The pages, each checked to be guest RAM.
    pub pfns: Vec<u64>,
}

/// A created GPADL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpadl {
    /// The guest's handle.
    pub handle: u32,
    /// The channel it was created for.
    pub relid: u32,
    /// Its ranges, in order.
    pub ranges: Vec<GpadlRange>,
}

impl Gpadl {
    /// The GPADL as a flat list of whole pages, if every range is made of
    /// whole pages (offset 0, byte_count a page multiple): the shape ring
    /// buffers need (fact sheet §6.2).
    pub fn whole_pages(&self) -> Option<Vec<u64>> {
        let mut out = Vec::new();
        for r in &self.ranges {
            if r.byte_offset != 0 || !u64::from(r.byte_count).is_multiple_of(PAGE_SIZE) {
                return None;
            }
            out.extend_from_slice(&r.pfns);
        }
        Some(out)
    }

    /// Total bytes described by all ranges.
    pub fn byte_len(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.byte_count)).sum()
    }

    /// Guest physical address of byte `offset` of the GPADL's concatenated
    /// ranges, and how many bytes from there stay in the same page.
    pub fn translate(&self, mut offset: u64) -> Option<(u64, u64)> {
        for r in &self.ranges {
            let count = u64::from(r.byte_count);
            if offset < count {
                let abs = u64::from(r.byte_offset) + offset;
                let pfn = *r.pfns.get(usize::try_from(abs / PAGE_SIZE).ok()?)?;
                let in_page = abs % PAGE_SIZE;
                let left_in_range = count - offset;
                return Some((
                    pfn * PAGE_SIZE + in_page,
                    (PAGE_SIZE - in_page).min(left_in_range),
                ));
            }
            offset -= count;
        }
        None
    }
}

impl Gpadl {
    /// Copy `buf.len()` bytes from byte `offset` of the GPADL (its ranges
    /// concatenated) out of guest memory. False if the span leaves the GPADL
    /// (nothing useful is copied then).
    pub fn read(&self, mem: &GuestMemoryMmap, offset: u64, buf: &mut [u8]) -> bool {
        let mut done = 0usize;
        while done < buf.len() {
            let Some((gpa, n)) = self.translate(offset + done as u64) else {
                return false;
            };
            let n = (n as usize).min(buf.len() - done);
            if mem
                .read_slice(&mut buf[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }

    /// Copy `data` into the GPADL at byte `offset`. False if the span leaves
    /// the GPADL (a prefix may have been written).
    pub fn write(&self, mem: &GuestMemoryMmap, offset: u64, data: &[u8]) -> bool {
        let mut done = 0usize;
        while done < data.len() {
            let Some((gpa, n)) = self.translate(offset + done as u64) else {
                return false;
            };
            let n = (n as usize).min(data.len() - done);
            if mem
                .write_slice(&data[done..done + n], GuestAddress(gpa))
                .is_err()
            {
                return false;
            }
            done += n;
        }
        true
    }
}

/// Whether the 4 KiB page `pfn` is entirely guest RAM.
pub fn pfn_in_ram(mem: &GuestMemoryMmap, pfn: u64) -> bool {
    let Some(gpa) = pfn.checked_mul(PAGE_SIZE) else {
        return false;
    };
    if gpa.checked_add(PAGE_SIZE).is_none() {
        return false;
    }
    GuestMemoryBackend::get_slice(mem, GuestAddress(gpa), PAGE_SIZE as usize)
        .is_ok_and(|s| s.len() == PAGE_SIZE as usize)
}

/// Whether a GPADL is still established, shared by every holder of a copy
/// (a device keeping a receive or send buffer). Teardown revokes it under
/// the write lock before GpadlTorndown goes out, and users touch the pages
/// only inside [`GpadlLease::with`] (under the read lock), so no host write
/// can land in pages the guest got back and may have reused.
#[derive(Debug, Clone)]
pub struct GpadlLease(Arc<RwLock<bool>>);

impl GpadlLease {
    /// A lease that is never revoked (GPADLs made up by tests and fuzzers).
    pub fn unrevocable() -> Self {
        Self(Arc::new(RwLock::new(true)))
    }

    /// Runs `f` if the GPADL is still established (teardown waits for it);
    /// `None` once it was torn down.
    pub fn with<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let live = self.0.read().unwrap_or_else(|e| e.into_inner());
        (*live).then(f)
    }

    /// Whether the GPADL is still established.
    pub fn is_live(&self) -> bool {
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn revoke(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// A GPADL whose range list has not fully arrived.
#[derive(Debug)]
struct Pending {
    relid: u32,
    range_count: u16,
    expected: usize,
    buf: Vec<u8>,
}

/// The GPADLs of one connection.
#[derive(Debug, Default)]
pub struct GpadlTable {
    pending: HashMap<u32, Pending>,
    created: HashMap<u32, Gpadl>,
    /// One per created GPADL; revoked when it goes.
    leases: HashMap<u32, GpadlLease>,
    /// PFNs held by `created`.
    total_pfns: usize,
}

/// What a GPADL message led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More body messages are needed.
    NeedMore,
    /// The GPADL is complete and created (answer GpadlCreated with success).
    Created {
        /// Its channel.
        relid: u32,
    },
}

impl GpadlTable {
    /// Number of created GPADLs.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.created.len()
    }

    /// Whether there are no GPADLs (created or pending).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.pending.is_empty()
    }

    /// A created GPADL.
    pub fn get(&self, handle: u32) -> Option<&Gpadl> {
        self.created.get(&handle)
    }

    /// A created GPADL with its lease (revoked when the GPADL goes).
    pub fn get_leased(&self, handle: u32) -> Option<(Gpadl, GpadlLease)> {
        let g = self.created.get(&handle)?.clone();
        let l = self.leases.get(&handle)?.clone();
        Some((g, l))
    }

    /// The relid a pending GPADL was announced for.
    pub fn pending_relid(&self, handle: u32) -> Option<u32> {
        self.pending.get(&handle).map(|p| p.relid)
    }

    /// A GpadlHeader: `ranges` are the range-list bytes carried by the
    /// header message (anything beyond `range_buflen` is ignored).
    pub fn header(
        &mut self,
        mem: &GuestMemoryMmap,
        relid: u32,
        handle: u32,
        range_buflen: u16,
        range_count: u16,
        ranges: &[u8],
    ) -> Result<Progress, GpadlError> {
        if handle == 0 {
            return Err(GpadlError::ZeroHandle);
        }
        if self.pending.contains_key(&handle) || self.created.contains_key(&handle) {
            return Err(GpadlError::DuplicateHandle(handle));
        }
        if self.pending.len() + self.created.len() >= MAX_GPADLS
            || self.pending.len() >= MAX_PENDING_GPADLS
        {
            return Err(GpadlError::TooMany);
        }
        let expected = usize::from(range_buflen);
        if range_count == 0 {
            return Err(malformed(handle, "rangecount is 0"));
        }
        // Each range needs at least its 8-byte header and one PFN.
        if expected < usize::from(range_count) * (RANGE_HEADER_BYTES + 8) {
            return Err(malformed(handle, "range_buflen too small for rangecount"));
        }
        if !expected.is_multiple_of(8) {
            return Err(malformed(handle, "range_buflen is not a multiple of 8"));
        }
        let take = ranges.len().min(expected);
        let p = Pending {
            relid,
            range_count,
            expected,
            buf: ranges[..take].to_vec(),
        };
        self.finish_or_park(mem, handle, p)
    }

    /// A GpadlBody: `pfn_bytes` are the PFN bytes after its 16-byte fixed
    /// part. On error the pending GPADL is dropped and its relid returned
    /// with the error (so the caller can answer GpadlCreated with a failure).
    pub fn body(
        &mut self,
        mem: &GuestMemoryMmap,
        handle: u32,
        pfn_bytes: &[u8],
    ) -> Result<Progress, (Option<u32>, GpadlError)> {
        let Some(mut p) = self.pending.remove(&handle) else {
            return Err((None, GpadlError::UnknownPending(handle)));
        };
        let relid = p.relid;
        if !pfn_bytes.len().is_multiple_of(8) {
            return Err((
                Some(relid),
                malformed(handle, "body length is not a multiple of 8"),
            ));
        }
        if p.buf.len() + pfn_bytes.len() > p.expected {
            return Err((Some(relid), GpadlError::TooLong(handle)));
        }
        p.buf.extend_from_slice(pfn_bytes);
        self.finish_or_park(mem, handle, p)
            .map_err(|e| (Some(relid), e))
    }

    fn finish_or_park(
        &mut self,
        mem: &GuestMemoryMmap,
        handle: u32,
        p: Pending,
    ) -> Result<Progress, GpadlError> {
        if p.buf.len() < p.expected {
            self.pending.insert(handle, p);
            return Ok(Progress::NeedMore);
        }
        let ranges = parse_ranges(handle, &p.buf, p.range_count)?;
        let pfns: usize = ranges.iter().map(|r| r.pfns.len()).sum();
        if self.total_pfns + pfns > MAX_TOTAL_PFNS {
            return Err(GpadlError::TooMany);
        }
        for r in &ranges {
            if let Some(&pfn) = r.pfns.iter().find(|&&pfn| !pfn_in_ram(mem, pfn)) {
                return Err(GpadlError::PfnOutsideRam { handle, pfn });
            }
        }
        self.total_pfns += pfns;
        self.leases.insert(handle, GpadlLease::unrevocable());
        self.created.insert(
            handle,
            Gpadl {
                handle,
                relid: p.relid,
                ranges,
            },
        );
        Ok(Progress::Created { relid: p.relid })
    }

    /// Remove a created GPADL (GpadlTeardown).
    pub fn remove(&mut self, handle: u32) -> Result<Gpadl, GpadlError> {
        let g = self
            .created
            .remove(&handle)
            .ok_or(GpadlError::Unknown(handle))?;
        if let Some(l) = self.leases.remove(&handle) {
            l.revoke();
        }
        self.total_pfns -= pfn_count(&g);
        Ok(g)
    }

    /// Drop a half-assembled GPADL; whether there was one.
    pub fn remove_pending(&mut self, handle: u32) -> bool {
        self.pending.remove(&handle).is_some()
    }

    /// Drop every GPADL (created and pending) of channel `relid`.
    pub fn remove_channel(&mut self, relid: u32) {
        let mut freed = 0;
        let leases = &mut self.leases;
        self.created.retain(|h, g| {
            let keep = g.relid != relid;
            if !keep {
                freed += pfn_count(g);
                if let Some(l) = leases.remove(h) {
                    l.revoke();
                }
            }
            keep
        });
        self.total_pfns -= freed;
        self.pending.retain(|_, p| p.relid != relid);
    }

    /// Drop everything (unload, reset).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.created.clear();
        for (_, l) in self.leases.drain() {
            l.revoke();
        }
        self.total_pfns = 0;
    }
}

fn pfn_count(g: &Gpadl) -> usize {
    g.ranges.iter().map(|r| r.pfns.len()).sum()
}

fn malformed(handle: u32, why: &'static str) -> GpadlError {
    GpadlError::Malformed { handle, why }
}

/// Parse `count` ranges {byte_count u32, byte_offset u32, pfn[] u64} (fact
/// sheet §5.3) with the wire crate's range parser; they must use up `buf`
/// exactly.
fn parse_ranges(handle: u32, buf: &[u8], count: u16) -> Result<Vec<GpadlRange>, GpadlError> {
    let mut out = Vec::with_capacity(usize::from(count));
    let mut it = GpaRanges::new(buf, usize::from(count));
    for r in it.by_ref() {
        let r = r.map_err(|_| malformed(handle, "malformed range (empty, offset, or short)"))?;
        out.push(GpadlRange {
            byte_count: r.byte_count,
            byte_offset: r.byte_offset,
            pfns: r.pfns.iter().collect(),
        });
    }
    if out.len() != usize::from(count) || !it.rest().is_empty() {
        return Err(malformed(handle, "range_buflen does not match the ranges"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn range(byte_count: u32, byte_offset: u32, pfns: &[u64]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&byte_count.to_le_bytes());
        v.extend_from_slice(&byte_offset.to_le_bytes());
        for p in pfns {
            v.extend_from_slice(&p.to_le_bytes());
        }
        v
    }

    fn pfn_bytes(pfns: impl IntoIterator<Item = u64>) -> Vec<u8> {
        pfns.into_iter().flat_map(u64::to_le_bytes).collect()
    }

    #[test]
    fn single_message_gpadl() {
        let m = mem();
        let mut t = GpadlTable::default();
        let r = range(3 * 4096, 0, &[5, 6, 7]);
        let p = t.header(&m, 3, 0xE1E10, r.len() as u16, 1, &r).unwrap();
        assert_eq!(p, Progress::Created { relid: 3 });
        let g = t.get(0xE1E10).unwrap();
        assert_eq!(g.whole_pages(), Some(vec![5, 6, 7]));
        assert_eq!(g.translate(4096 + 10), Some((6 * 4096 + 10, 4086)));
        assert_eq!(g.translate(3 * 4096), None);
        assert_eq!(
            t.header(&m, 3, 0xE1E10, r.len() as u16, 1, &r),
            Err(GpadlError::DuplicateHandle(0xE1E10))
        );
    }

    #[test]
    fn header_plus_bodies() {
        let m = mem();
        let mut t = GpadlTable::default();
        // 26 PFNs in the header, 28 + 6 in two bodies (fact sheet §5.3).
        let pfns: Vec<u64> = (16..76).collect();
        let full = range(60 * 4096, 0, &pfns);
        let buflen = full.len() as u16;
        let head = &full[..8 + 26 * 8];
        assert_eq!(
            t.header(&m, 1, 9, buflen, 1, head).unwrap(),
            Progress::NeedMore
        );
        assert_eq!(t.pending_relid(9), Some(1));
        let b1 = pfn_bytes(pfns[26..54].iter().copied());
        assert_eq!(t.body(&m, 9, &b1).unwrap(), Progress::NeedMore);
        let b2 = pfn_bytes(pfns[54..].iter().copied());
        assert_eq!(t.body(&m, 9, &b2).unwrap(), Progress::Created { relid: 1 });
        assert_eq!(t.get(9).unwrap().whole_pages().unwrap(), pfns);
        assert_eq!(
            t.body(&m, 9, &b2),
            Err((None, GpadlError::UnknownPending(9)))
        );
    }

    #[test]
    fn multi_range_and_offsets() {
        let m = mem();
        let mut t = GpadlTable::default();
        let mut r = range(100, 4000, &[1, 2]);
        r.extend(range(4096, 0, &[9]));
        t.header(&m, 2, 7, r.len() as u16, 2, &r).unwrap();
        let g = t.get(7).unwrap();
        assert_eq!(g.whole_pages(), None);
        assert_eq!(g.byte_len(), 4196);
        assert_eq!(g.translate(0), Some((4096 + 4000, 96)));
        assert_eq!(g.translate(96), Some((2 * 4096, 4)));
        assert_eq!(g.translate(100), Some((9 * 4096, 4096)));
        // Copies follow the ranges across pages.
        let data: Vec<u8> = (0..200u8).collect();
        assert!(g.write(&m, 50, &data));
        let mut back = vec![0u8; 200];
        assert!(g.read(&m, 50, &mut back));
        assert_eq!(back, data);
        let mut b = [0u8; 1];
        m.read_slice(&mut b, GuestAddress(2 * 4096 + 3)).unwrap();
        assert_eq!(b[0], 49); // GPADL byte 99 (data[49]): 4th byte of page 2
        m.read_slice(&mut b, GuestAddress(9 * 4096)).unwrap();
        assert_eq!(b[0], 50); // GPADL byte 100: first byte of the second range
        assert!(!g.read(&m, 4100, &mut back));
        assert!(!g.write(&m, 4196, &[1]));
        assert!(g.read(&m, 4195, &mut back[..1]));
    }

    #[test]
    fn pfn_beyond_ram_rejected() {
        let m = mem();
        let mut t = GpadlTable::default();
        for bad in [0x100, u64::MAX, 1 << 52] {
            let r = range(2 * 4096, 0, &[1, bad]);
            assert_eq!(
                t.header(&m, 1, 5, r.len() as u16, 1, &r),
                Err(GpadlError::PfnOutsideRam {
                    handle: 5,
                    pfn: bad
                })
            );
        }
        assert!(t.is_empty());
    }

    #[test]
    fn malformed_lists_rejected() {
        let m = mem();
        let mut t = GpadlTable::default();
        // buflen disagrees with the range's page count.
        let r = range(3 * 4096, 0, &[1, 2]);
        assert!(matches!(
            t.header(&m, 1, 5, r.len() as u16, 1, &r),
            Err(GpadlError::Malformed { .. })
        ));
        let r = range(4096, 0, &[1, 2]);
        assert!(matches!(
            t.header(&m, 1, 5, r.len() as u16, 1, &r),
            Err(GpadlError::Malformed { .. })
        ));
        let r = range(0, 0, &[1]);
        assert!(t.header(&m, 1, 5, r.len() as u16, 1, &r).is_err());
        let r = range(10, 4096, &[1, 2]);
        assert!(t.header(&m, 1, 5, r.len() as u16, 1, &r).is_err());
        let r = range(u32::MAX, 0, &[1]);
        assert!(t.header(&m, 1, 5, r.len() as u16, 1, &r).is_err());
        assert!(t.header(&m, 1, 5, 16, 0, &r).is_err());
        assert_eq!(t.header(&m, 1, 0, 16, 1, &r), Err(GpadlError::ZeroHandle));
        // Body that overshoots.
        let r = range(2 * 4096, 0, &[1, 2]);
        t.header(&m, 4, 6, r.len() as u16, 1, &r[..16]).unwrap();
        assert_eq!(
            t.body(&m, 6, &pfn_bytes([2, 3])),
            Err((Some(4), GpadlError::TooLong(6)))
        );
        assert!(t.is_empty());
    }

    #[test]
    fn limits_and_channel_removal() {
        let m = mem();
        let mut t = GpadlTable::default();
        let r = range(4096, 0, &[1]);
        for h in 1..=MAX_PENDING_GPADLS as u32 {
            t.header(&m, 1, h, 24, 1, &r[..8]).unwrap();
        }
        assert_eq!(
            t.header(&m, 1, 1000, 24, 1, &r[..8]),
            Err(GpadlError::TooMany)
        );
        t.remove_channel(1);
        assert!(t.is_empty());
        t.header(&m, 2, 1, 16, 1, &r).unwrap();
        t.header(&m, 3, 2, 16, 1, &r).unwrap();
        assert_eq!(t.remove(1).unwrap().relid, 2);
        assert_eq!(t.remove(1), Err(GpadlError::Unknown(1)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn total_pfn_budget() {
        // 1 GiB of RAM; GPADLs of 8190 pages (the u16 range_buflen limit)
        // over the same pages until the budget is spent.
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 30)]).unwrap();
        let mut t = GpadlTable::default();
        let pfns: Vec<u64> = (0..8190).collect();
        let r = range(8190 * 4096, 0, &pfns);
        let fit = MAX_TOTAL_PFNS / 8190;
        for h in 1..=fit as u32 {
            assert!(t.header(&m, 1, h, r.len() as u16, 1, &r).is_ok());
        }
        let h = fit as u32 + 1;
        assert_eq!(
            t.header(&m, 1, h, r.len() as u16, 1, &r),
            Err(GpadlError::TooMany)
        );
        t.remove(1).unwrap();
        assert!(t.header(&m, 1, h, r.len() as u16, 1, &r).is_ok());
        t.remove_channel(1);
        assert_eq!(t.total_pfns, 0);
    }
}
