//! The data buffer of a request: the GPA-direct page list of a
//! DATA_USING_GPA_DIRECT packet (fact sheet §6.4, §8.4), validated against
//! guest RAM before any I/O.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmbus_guest::packet::{PacketError, PacketView};

const PAGE: u64 = 4096;

/// Why a page list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    /// The range list is malformed (fact sheet §6.4).
    #[error("malformed GPA-direct ranges: {0}")]
    Ranges(String),
    /// More bytes than the controller allows per request.
    #[error("data buffer of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Bytes described.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A page is not guest RAM (or its address overflows).
    #[error("page {pfn:#x} is not guest RAM")]
    NotRam {
        /// The offending PFN.
        pfn: u64,
    },
}

/// One contiguous piece of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub gpa: u64,
    /// Bytes (at most one page).
    pub len: u32,
}

/// A request's data buffer: the concatenation of its GPA ranges, split into
/// per-page segments, every one checked to be guest RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataBuffer {
    segments: Vec<Segment>,
    len: u64,
}

impl DataBuffer {
    /// No buffer (in-band requests).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The buffer of a GPA-direct packet: every range (Linux sends one) in
    /// order, at most `max_len` bytes in total, every page in `mem`.
    pub fn from_packet(
        packet: &PacketView<'_>,
        mem: &GuestMemoryMmap,
        max_len: u64,
    ) -> Result<Self, BufferError> {
        let ranges = packet
            .gpa_direct_ranges()
            .map_err(|e: PacketError| BufferError::Ranges(e.to_string()))?;
        let mut buf = Self::default();
        for r in ranges {
            let r = r.map_err(|e| BufferError::Ranges(e.to_string()))?;
            let total = buf.len + u64::from(r.byte_count);
            if total > max_len {
                return Err(BufferError::TooLarge {
                    len: total,
                    max: max_len,
                });
            }
            let mut off = u64::from(r.byte_offset);
            let mut left = u64::from(r.byte_count);
            for pfn in r.pfns.iter() {
                // The parser gave exactly ceil((offset + count) / 4096) PFNs.
                let n = (PAGE - off).min(left);
                let gpa = pfn
                    .checked_mul(PAGE)
                    .and_then(|a| a.checked_add(off))
                    .ok_or(BufferError::NotRam { pfn })?;
                buf.push(mem, gpa, n as u32, pfn)?;
                left -= n;
                off = 0;
            }
            buf.len = total;
        }
        Ok(buf)
    }

    /// A buffer over explicit segments (tests, in-process clients).
    pub fn from_segments(
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        max_len: u64,
    ) -> Result<Self, BufferError> {
        let mut buf = Self::default();
        for s in segments {
            buf.len += u64::from(s.len);
            if buf.len > max_len {
                return Err(BufferError::TooLarge {
                    len: buf.len,
                    max: max_len,
                });
            }
            buf.push(mem, s.gpa, s.len, s.gpa / PAGE)?;
        }
        Ok(buf)
    }

    fn push(
        &mut self,
        mem: &GuestMemoryMmap,
        gpa: u64,
        len: u32,
        pfn: u64,
    ) -> Result<(), BufferError> {
        if len == 0 {
            return Ok(());
        }
        // One region must hold the whole segment.
        if mem.get_slice(GuestAddress(gpa), len as usize).is_err() {
            return Err(BufferError::NotRam { pfn });
        }
        self.segments.push(Segment { gpa, len });
        Ok(())
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there is no buffer.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Volatile slices over bytes `start..start + len` of the buffer, for
    /// direct I/O. `None` if the window leaves the buffer or memory changed.
    pub fn slices<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        start: u64,
        len: u64,
    ) -> Option<Vec<VolatileSlice<'m>>> {
        if start.checked_add(len)? > self.len {
            return None;
        }
        let mut out = Vec::new();
        let (mut skip, mut left) = (start, len);
        for s in &self.segments {
            if left == 0 {
                break;
            }
            let sl = u64::from(s.len);
            if skip >= sl {
                skip -= sl;
                continue;
            }
            let n = (sl - skip).min(left);
            out.push(mem.get_slice(GuestAddress(s.gpa + skip), n as usize).ok()?);
            left -= n;
            skip = 0;
        }
        (left == 0).then_some(out)
    }

    /// Copy `data` to the start of the buffer (truncated to the buffer);
    /// returns the bytes copied.
    pub fn write_from(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Option<u64> {
        let n = (data.len() as u64).min(self.len);
        let slices = self.slices(mem, 0, n)?;
        let mut at = 0usize;
        for s in slices {
            s.copy_from(&data[at..at + s.len()]);
            at += s.len();
        }
        Some(n)
    }

    /// Read the first `len` bytes of the buffer (clamped to the buffer).
    pub fn read_to_vec(&self, mem: &GuestMemoryMmap, len: u64) -> Option<Vec<u8>> {
        let n = len.min(self.len);
        let slices = self.slices(mem, 0, n)?;
        let mut out = vec![0u8; n as usize];
        let mut at = 0usize;
        for s in slices {
            let l = s.len();
            s.copy_to(&mut out[at..at + l]);
            at += l;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmbus_guest::packet::{encode_gpa_direct_single, PacketType};
    use vmbus_guest::ring::OutgoingPacket;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// The bytes of a GPA-direct packet with `ext` and a 64-byte payload.
    fn packet(ext: &[u8]) -> Vec<u8> {
        let payload = [0u8; 64];
        let parts = [&payload[..]];
        let p = OutgoingPacket {
            packet_type: PacketType::DATA_USING_GPA_DIRECT,
            flags: Default::default(),
            transaction_id: 9,
            extension: ext,
            payload: &parts,
        };
        let mut b = vec![0u8; p.padded_len()];
        b[0..2].copy_from_slice(&9u16.to_le_bytes());
        b[2..4].copy_from_slice(&(((16 + ext.len()) / 8) as u16).to_le_bytes());
        b[4..6].copy_from_slice(&((p.padded_len() / 8) as u16).to_le_bytes());
        b[8..16].copy_from_slice(&9u64.to_le_bytes());
        b[16..16 + ext.len()].copy_from_slice(ext);
        b
    }

    fn ext(off: u32, count: u32, pfns: &[u64]) -> Vec<u8> {
        let mut e = vec![0u8; 16 + 8 * pfns.len()];
        let n = encode_gpa_direct_single(&mut e, off, count, pfns).unwrap();
        e.truncate(n);
        e
    }

    #[test]
    fn pages_split_and_windows() {
        let m = mem();
        let bytes = packet(&ext(0x100, 8192, &[0x20, 0x10, 0x30]));
        let v = PacketView::new(&bytes).unwrap();
        let b = DataBuffer::from_packet(&v, &m, 1 << 20).unwrap();
        assert_eq!(b.len(), 8192);
        assert_eq!(
            b.segments(),
            &[
                Segment {
                    gpa: 0x20100,
                    len: 0xF00
                },
                Segment {
                    gpa: 0x10000,
                    len: 4096
                },
                Segment {
                    gpa: 0x30000,
                    len: 0x100
                },
            ]
        );
        let w = b.slices(&m, 0xE00, 0x300).unwrap();
        let lens: Vec<usize> = w.iter().map(|s| s.len()).collect();
        assert_eq!(lens, vec![0x100, 0x200]);
        assert!(b.slices(&m, 8000, 193).is_none());
        let data: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        assert_eq!(b.write_from(&m, &data), Some(8192));
        assert_eq!(b.read_to_vec(&m, 9000).unwrap(), data[..8192].to_vec());
    }

    #[test]
    fn bad_lists_refused() {
        let m = mem();
        // Outside RAM.
        let bytes = packet(&ext(0, 4096, &[0x100]));
        let v = PacketView::new(&bytes).unwrap();
        assert_eq!(
            DataBuffer::from_packet(&v, &m, 1 << 20),
            Err(BufferError::NotRam { pfn: 0x100 })
        );
        // PFN whose address overflows.
        let bytes = packet(&ext(0, 4096, &[u64::MAX / 2]));
        let v = PacketView::new(&bytes).unwrap();
        assert!(DataBuffer::from_packet(&v, &m, 1 << 20).is_err());
        // Over the limit.
        let bytes = packet(&ext(0, 8192, &[1, 2]));
        let v = PacketView::new(&bytes).unwrap();
        assert!(matches!(
            DataBuffer::from_packet(&v, &m, 4096),
            Err(BufferError::TooLarge { .. })
        ));
        // Range count larger than the bytes.
        let mut e = ext(0, 4096, &[1]);
        e[4] = 5;
        let bytes = packet(&e);
        let v = PacketView::new(&bytes).unwrap();
        assert!(matches!(
            DataBuffer::from_packet(&v, &m, 1 << 20),
            Err(BufferError::Ranges(_))
        ));
    }
}
