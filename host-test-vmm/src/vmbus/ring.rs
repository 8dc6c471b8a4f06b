//! The host's side of a channel's rings: `vmbus_guest`'s ring over the guest
//! pages a GPADL names (fact sheet §6.1, §6.2).
//!
//! The GPADL's pages were checked to be guest RAM when it was created; here
//! each page is resolved once, at construction, to its vm-memory region and
//! the offset in it, so an access is a bounds-checked slice of that region
//! (no search of the guest's regions per access). The ring code only asks for
//! offsets inside the ring, so every access lands in the ring's own pages; a
//! page that is not wholly inside one region of guest RAM reads as zeros and
//! ignores writes (a corrupt ring, reported by the ring's own checks) rather
//! than panicking.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmbus_guest::ring::{RingError, RingMemory, RingReceiver, RingSender};

use super::gpadl::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

/// Where one ring page lives: the index of its region in the (immutable)
/// `GuestMemoryMmap` and its offset in that region.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    region: usize,
    offset: u64,
}

/// One ring (control page + data pages) in guest memory.
#[derive(Debug, Clone)]
pub struct GuestRingMemory {
    mem: GuestMemoryMmap,
    /// Page 0 is the control page. `None`: not wholly inside one region of
    /// guest RAM.
    pages: Arc<[Option<Resolved>]>,
}

impl GuestRingMemory {
    /// A ring over `pfns` (control page first); at least 2 pages.
    pub fn new(mem: GuestMemoryMmap, pfns: &[u64]) -> Result<Self, RingError> {
        if pfns.len() < 2 || pfns.len().saturating_mul(PAGE) > u32::MAX as usize {
            return Err(RingError::BadSize {
                len: pfns.len().saturating_mul(PAGE),
            });
        }
        let pages = pfns.iter().map(|&pfn| resolve(&mem, pfn)).collect();
        Ok(Self { mem, pages })
    }

    /// `f` on the bytes `offset..offset + len` of the ring, which the caller
    /// keeps within one page; `None` if that page is not guest RAM.
    fn with_slice<T>(
        &self,
        offset: usize,
        len: usize,
        f: impl FnOnce(vm_memory::VolatileSlice<'_, ()>) -> T,
    ) -> Option<T> {
        let page = (*self.pages.get(offset / PAGE)?)?;
        // The collection is never modified (we own this clone), so the
        // index found at construction still names the same region.
        let region = self.mem.iter().nth(page.region)?;
        let at = MemoryRegionAddress(page.offset + (offset % PAGE) as u64);
        region.get_slice(at, len).ok().map(f)
    }
}

/// The region index and in-region offset of guest page `pfn`, if the whole
/// page lies in one region.
fn resolve(mem: &GuestMemoryMmap, pfn: u64) -> Option<Resolved> {
    let gpa = GuestAddress(pfn.checked_mul(PAGE_SIZE)?);
    let (region, offset) = mem.iter().enumerate().find_map(|(i, r)| {
        let off = gpa.checked_offset_from(r.start_addr())?;
        (off.checked_add(PAGE_SIZE)? <= r.len()).then_some((i, off))
    })?;
    Some(Resolved { region, offset })
}

impl RingMemory for GuestRingMemory {
    fn len(&self) -> usize {
        self.pages.len() * PAGE
    }

    fn read(&self, mut offset: usize, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let n = (PAGE - offset % PAGE).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            if self.with_slice(offset, n, |s| s.copy_to(now)) != Some(n) {
                now.fill(0);
            }
            buf = rest;
            offset += n;
        }
    }

    fn write(&self, mut offset: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (PAGE - offset % PAGE).min(data.len());
            let (now, rest) = data.split_at(n);
            if self.with_slice(offset, n, |s| s.copy_from(now)).is_none() {
                tracing::warn!(offset, "VMBus ring write outside guest RAM dropped");
            }
            data = rest;
            offset += n;
        }
    }

    fn load_u32(&self, offset: usize) -> u32 {
        self.with_slice(offset, 4, |s| s.load::<u32>(0, Ordering::Acquire).ok())
            .flatten()
            .unwrap_or(0)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        // A 4-byte atomic store: never touches the peer's neighbouring field.
        let stored = self.with_slice(offset, 4, |s| s.store(value, 0, Ordering::Release).is_ok());
        if stored != Some(true) {
            tracing::warn!(offset, "VMBus ring control store dropped");
        }
    }
}

/// The two rings of an open channel, from the host's point of view: it
/// receives on the guest's outbound (upstream) ring and sends on the
/// downstream one (fact sheet §6.2: upstream pages first).
#[derive(Debug)]
pub struct HostRings {
    /// Guest -> host.
    pub incoming: RingReceiver<GuestRingMemory>,
    /// Host -> guest.
    pub outgoing: RingSender<GuestRingMemory>,
}

impl HostRings {
    /// Split the ring GPADL's `pages` at `downstream_offset` (in pages).
    /// Each ring needs its control page and at least one data page.
    pub fn new(
        mem: &GuestMemoryMmap,
        pages: &[u64],
        downstream_offset: u32,
    ) -> Result<Self, RingError> {
        let off = downstream_offset as usize;
        if off < 2 || pages.len() < off + 2 {
            return Err(RingError::BadSize {
                len: off.saturating_mul(PAGE),
            });
        }
        let up = GuestRingMemory::new(mem.clone(), &pages[..off])?;
        let down = GuestRingMemory::new(mem.clone(), &pages[off..])?;
        Ok(Self {
            incoming: RingReceiver::new(up)?,
            outgoing: RingSender::new(down)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmbus_guest::ring::{control, init_control, OutgoingPacket, CONTROL_SIZE};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    #[test]
    fn scattered_pages_round_trip_with_wrap() {
        let m = mem();
        // Deliberately non-contiguous, descending pages.
        let pages = [40u64, 37, 35, 33, 50, 48];
        let r = GuestRingMemory::new(m.clone(), &pages[..3]).unwrap();
        init_control(&r).unwrap();
        let r2 = GuestRingMemory::new(m.clone(), &pages[3..]).unwrap();
        init_control(&r2).unwrap();
        let mut rings = HostRings::new(&m, &pages, 3).unwrap();
        // Guest side: a sender over the upstream ring.
        let mut guest_tx = RingSender::new(r.clone()).unwrap();
        let mut buf = vec![0u8; 9000];
        for i in 0..50u64 {
            let payload = vec![i as u8; 1000 + i as usize * 37];
            let parts = [&payload[..]];
            let sig = guest_tx
                .try_write(&OutgoingPacket::inband(i, false, &parts))
                .unwrap();
            assert!(sig.needed());
            let v = rings.incoming.try_read_packet(&mut buf).unwrap().unwrap();
            assert_eq!(v.transaction_id(), i);
            assert_eq!(&v.payload()[..payload.len()], &payload[..]);
            let _ = rings.incoming.commit().unwrap();
        }
        // The data crossed the page boundaries of the scattered pages.
        assert_eq!(
            r.load_u32(control::WRITE_INDEX),
            r.load_u32(control::READ_INDEX)
        );
        assert_ne!(r.load_u32(control::WRITE_INDEX), 0);
    }

    // Pages resolved once at construction: pages in two RAM regions work
    // (a ring wrapping across both), a page outside RAM reads as zeros and
    // drops writes, and nothing panics.
    #[test]
    fn pages_in_two_regions_and_outside_ram() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x20_0000), 0x10_0000),
        ])
        .unwrap();
        // Control page in region 0, data pages alternating between regions.
        let pfns = [0x10u64, 0x205, 0x11, 0x2FF, 0x0];
        let r = GuestRingMemory::new(m.clone(), &pfns).unwrap();
        init_control(&r).unwrap();
        let mut tx = RingSender::new(r.clone()).unwrap();
        let mut rx = RingReceiver::new(r.clone()).unwrap();
        let mut buf = vec![0u8; 9000];
        for i in 0..40u64 {
            let payload: Vec<u8> = (0..(700 + i as usize * 97))
                .map(|k| (k as u64 * 3 + i) as u8)
                .collect();
            let parts = [&payload[..]];
            let _ = tx
                .try_write(&OutgoingPacket::inband(i, false, &parts))
                .unwrap();
            let v = rx.try_read_packet(&mut buf).unwrap().unwrap();
            assert_eq!(v.transaction_id(), i);
            assert_eq!(&v.payload()[..payload.len()], &payload[..]);
            let _ = rx.commit().unwrap();
        }
        // The bytes really are in the named guest pages.
        let mut page = [0u8; 8];
        m.read_slice(&mut page, GuestAddress(0x10 * PAGE_SIZE))
            .unwrap();
        assert_eq!(
            u32::from_le_bytes(page[..4].try_into().unwrap()),
            r.load_u32(control::WRITE_INDEX)
        );

        // 0x150 is in the hole between the regions; u64::MAX / 4096 overflows.
        for bad in [0x150u64, u64::MAX / 4096, u64::MAX] {
            let r = GuestRingMemory::new(m.clone(), &[0x12, bad]).unwrap();
            r.write(CONTROL_SIZE, &[0xAB; 64]);
            let mut back = [0x55u8; 64];
            r.read(CONTROL_SIZE, &mut back);
            assert_eq!(back, [0; 64]);
        }
        let r = GuestRingMemory::new(m, &[0x150, 0x12]).unwrap();
        r.store_u32(control::WRITE_INDEX, 8);
        assert_eq!(r.load_u32(control::WRITE_INDEX), 0);
        assert!(RingSender::new(r).is_ok());
    }

    #[test]
    fn bad_split_rejected() {
        let m = mem();
        let pages = [1u64, 2, 3, 4];
        assert!(HostRings::new(&m, &pages, 1).is_err());
        assert!(HostRings::new(&m, &pages, 3).is_err());
        assert!(HostRings::new(&m, &pages, 0).is_err());
        assert!(HostRings::new(&m, &pages, 2).is_ok());
    }

    #[test]
    fn corrupt_index_is_an_error() {
        let m = mem();
        let pages = [1u64, 2, 3, 4];
        let r = GuestRingMemory::new(m.clone(), &pages[..2]).unwrap();
        r.store_u32(control::READ_INDEX, 4097);
        assert!(matches!(
            HostRings::new(&m, &pages, 2),
            Err(RingError::CorruptIndex { .. })
        ));
    }
}
