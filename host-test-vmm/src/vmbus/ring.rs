//! The host's side of a channel's rings: `vmbus_guest`'s ring over the guest
//! pages a GPADL names (fact sheet §6.1, §6.2).
//!
//! The GPADL's pages were checked to be guest RAM when it was created, and
//! the ring code only asks for offsets inside the ring, so every access here
//! lands in guest RAM; an access vm-memory still refuses reads as zeros (a
//! corrupt ring, reported by the ring's own checks) rather than panicking.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::ring::{RingError, RingMemory, RingReceiver, RingSender};

use super::gpadl::PAGE_SIZE;

const PAGE: usize = PAGE_SIZE as usize;

/// One ring (control page + data pages) in guest memory.
#[derive(Debug, Clone)]
pub struct GuestRingMemory {
    mem: GuestMemoryMmap,
    /// Page 0 is the control page.
    pfns: Arc<[u64]>,
}

impl GuestRingMemory {
    /// A ring over `pfns` (control page first); at least 2 pages.
    pub fn new(mem: GuestMemoryMmap, pfns: &[u64]) -> Result<Self, RingError> {
        if pfns.len() < 2 || pfns.len().saturating_mul(PAGE) > u32::MAX as usize {
            return Err(RingError::BadSize {
                len: pfns.len().saturating_mul(PAGE),
            });
        }
        Ok(Self {
            mem,
            pfns: pfns.into(),
        })
    }

    fn gpa(&self, offset: usize) -> Option<GuestAddress> {
        let pfn = *self.pfns.get(offset / PAGE)?;
        Some(GuestAddress(pfn * PAGE_SIZE + (offset % PAGE) as u64))
    }
}

impl RingMemory for GuestRingMemory {
    fn len(&self) -> usize {
        self.pfns.len() * PAGE
    }

    fn read(&self, mut offset: usize, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let n = (PAGE - offset % PAGE).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            let ok = self
                .gpa(offset)
                .is_some_and(|g| self.mem.read_slice(now, g).is_ok());
            if !ok {
                now.fill(0);
            }
            buf = rest;
            offset += n;
        }
    }

    fn write(&self, mut offset: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (PAGE - offset % PAGE).min(data.len());
            if let Some(g) = self.gpa(offset) {
                if self.mem.write_slice(&data[..n], g).is_err() {
                    tracing::warn!(gpa = g.0, "VMBus ring write outside guest RAM dropped");
                }
            }
            data = &data[n..];
            offset += n;
        }
    }

    fn load_u32(&self, offset: usize) -> u32 {
        self.gpa(offset)
            .and_then(|g| self.mem.load::<u32>(g, Ordering::Acquire).ok())
            .unwrap_or(0)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        // A 4-byte atomic store: never touches the peer's neighbouring field.
        if let Some(g) = self.gpa(offset) {
            if self.mem.store(value, g, Ordering::Release).is_err() {
                tracing::warn!(gpa = g.0, "VMBus ring control store dropped");
            }
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
    use vmbus_guest::ring::{control, init_control, OutgoingPacket};

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
