//! Ring packets: the 16-byte descriptor, packet types, the type-specific header extensions
//! (transfer-page ranges, GPA-direct ranges), and the 8-byte trailer (fact sheet §6.3, §6.4).
//!
//! A packet in the ring is `[descriptor (16)] [extension] [payload] [pad to 8] [trailer (8)]`.
//! [`PacketView`] interprets the bytes of one packet (descriptor through padding, without the
//! trailer) as the ring hands them over, validating every offset and count against the packet's
//! own length: the bytes come from the other side.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the packet descriptor.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the trailer that follows every packet.
pub const TRAILER_SIZE: usize = 8;
/// The largest packet a descriptor can describe (len8 is 16 bits).
pub const MAX_PACKET_SIZE: usize = u16::MAX as usize * 8;

/// The trailer written after a packet that starts at data offset `start` (fact sheet §6.3): the
/// start offset in the upper 32 bits, zero below.
pub const fn trailer(start: u32) -> u64 {
    (start as u64) << 32
}

/// The packet start offset a trailer records.
pub const fn trailer_start(trailer: u64) -> u32 {
    (trailer >> 32) as u32
}

/// Packet type (descriptor offset 0): an open set.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
#[repr(transparent)]
pub struct PacketType(pub u16);

impl PacketType {
    /// Invalid.
    pub const INVALID: Self = Self(0);
    /// SYNCH.
    pub const SYNCH: Self = Self(1);
    /// ADD_XFER_PAGESET ([`XferPageSetPacket`] extension).
    pub const ADD_XFER_PAGESET: Self = Self(2);
    /// RM_XFER_PAGESET ([`XferPageSetPacket`] extension).
    pub const RM_XFER_PAGESET: Self = Self(3);
    /// ESTABLISH_GPADL (unused).
    pub const ESTABLISH_GPADL: Self = Self(4);
    /// TEARDOWN_GPADL (unused).
    pub const TEARDOWN_GPADL: Self = Self(5);
    /// DATA_INBAND: payload right after the descriptor.
    pub const DATA_INBAND: Self = Self(6);
    /// DATA_USING_XFER_PAGES ([`XferPageHeader`] + ranges).
    pub const DATA_USING_XFER_PAGES: Self = Self(7);
    /// DATA_USING_GPADL ([`GpadlPacketHeader`]).
    pub const DATA_USING_GPADL: Self = Self(8);
    /// DATA_USING_GPA_DIRECT ([`GpaDirectHeader`] + variable ranges).
    pub const DATA_USING_GPA_DIRECT: Self = Self(9);
    /// CANCEL_REQUEST.
    pub const CANCEL_REQUEST: Self = Self(0xA);
    /// COMP: completion; the transaction id echoes the request.
    pub const COMPLETION: Self = Self(0xB);
    /// DATA_USING_ADDITIONAL_PKT (unused).
    pub const DATA_USING_ADDITIONAL_PACKET: Self = Self(0xC);
    /// ADDITIONAL_DATA (unused).
    pub const ADDITIONAL_DATA: Self = Self(0xD);

    /// The name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "INVALID",
            1 => "SYNCH",
            2 => "ADD_XFER_PAGESET",
            3 => "RM_XFER_PAGESET",
            4 => "ESTABLISH_GPADL",
            5 => "TEARDOWN_GPADL",
            6 => "DATA_INBAND",
            7 => "DATA_USING_XFER_PAGES",
            8 => "DATA_USING_GPADL",
            9 => "DATA_USING_GPA_DIRECT",
            0xA => "CANCEL_REQUEST",
            0xB => "COMPLETION",
            0xC => "DATA_USING_ADDITIONAL_PACKET",
            0xD => "ADDITIONAL_DATA",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for PacketType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "PacketType({:#x})", self.0),
        }
    }
}

/// Descriptor flags (offset 6).
#[bitfield(u16)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PacketFlags {
    /// Bit 0: the sender wants a completion packet.
    pub completion_requested: bool,
    /// Bits 15:1: reserved.
    #[bits(15)]
    pub reserved: u16,
}

/// The 16-byte packet descriptor (fact sheet §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketDescriptor {
    /// Offset 0.
    pub packet_type: PacketType,
    /// Offset 2: where the payload starts, in qwords from the packet start.
    pub data_offset8: u16,
    /// Offset 4: total packet length in qwords, without the trailer.
    pub len8: u16,
    /// Offset 6.
    pub flags: PacketFlags,
    /// Offset 8: transaction id, echoed by the completion.
    pub transaction_id: u64,
}

impl PacketDescriptor {
    /// Payload offset in bytes.
    pub const fn data_offset(&self) -> usize {
        self.data_offset8 as usize * 8
    }

    /// Packet length in bytes (without the trailer).
    pub const fn len(&self) -> usize {
        self.len8 as usize * 8
    }

    /// Whether the length is zero (never valid).
    pub const fn is_empty(&self) -> bool {
        self.len8 == 0
    }

    /// Whether the sender asked for a completion.
    pub const fn completion_requested(&self) -> bool {
        self.flags.completion_requested()
    }
}

/// DATA_USING_XFER_PAGES extension at offset 16 (fact sheet §6.4); [`TransferPageRange`]s follow
/// at offset 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XferPageHeader {
    /// Offset 16.
    pub xfer_pageset_id: u16,
    /// Offset 18.
    pub sender_owns_set: u8,
    /// Offset 19.
    pub reserved: u8,
    /// Offset 20.
    pub range_count: u32,
}

/// One transfer-page range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TransferPageRange {
    /// Bytes.
    pub byte_count: u32,
    /// Offset into the transfer page set.
    pub byte_offset: u32,
}

/// DATA_USING_GPA_DIRECT extension at offset 16; variable [`GpaRange`]s follow at offset 24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaDirectHeader {
    /// Offset 16.
    pub reserved: u32,
    /// Offset 20.
    pub range_count: u32,
}

/// DATA_USING_GPADL extension at offset 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlPacketHeader {
    /// Offset 16.
    pub gpadl: u32,
    /// Offset 20.
    pub reserved: u32,
}

/// ADD_XFER_PAGESET / RM_XFER_PAGESET extension at offset 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct XferPageSetPacket {
    /// Offset 16.
    pub gpadl: u32,
    /// Offset 20.
    pub xfer_pageset_id: u16,
    /// Offset 22.
    pub reserved: u16,
}

/// The fixed head of a GPA range: `{byte_count u32, byte_offset u32}`, followed by
/// ceil((byte_offset + byte_count) / 4096) PFNs (fact sheet §5.3, §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaRangeHeader {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
}

impl GpaRangeHeader {
    /// The number of PFNs this range has: ceil((byte_offset + byte_count) / 4096).
    pub const fn pfn_count(&self) -> usize {
        (self.byte_offset as usize + self.byte_count as usize).div_ceil(4096)
    }
}

const _: () = {
    // fact sheet §6.3 / §6.4.
    assert!(size_of::<PacketDescriptor>() == DESCRIPTOR_SIZE);
    assert!(offset_of!(PacketDescriptor, data_offset8) == 2);
    assert!(offset_of!(PacketDescriptor, len8) == 4);
    assert!(offset_of!(PacketDescriptor, flags) == 6);
    assert!(offset_of!(PacketDescriptor, transaction_id) == 8);
    assert!(size_of::<XferPageHeader>() == 8);
    assert!(offset_of!(XferPageHeader, sender_owns_set) == 2);
    assert!(offset_of!(XferPageHeader, range_count) == 4);
    assert!(size_of::<TransferPageRange>() == 8);
    assert!(size_of::<GpaDirectHeader>() == 8);
    assert!(offset_of!(GpaDirectHeader, range_count) == 4);
    assert!(size_of::<GpadlPacketHeader>() == 8);
    assert!(size_of::<XferPageSetPacket>() == 8);
    assert!(size_of::<GpaRangeHeader>() == 8);
};

/// A list of little-endian u64 PFNs in untrusted bytes (any alignment).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PfnList<'a>(&'a [u8]);

impl<'a> PfnList<'a> {
    /// A list over `bytes`; `None` unless the length is a multiple of 8.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(8).then_some(Self(bytes))
    }

    /// The number of PFNs.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// PFN `i`.
    pub fn get(&self, i: usize) -> Option<u64> {
        let b = self.0.get(i.checked_mul(8)?..i.checked_mul(8)? + 8)?;
        let mut w = [0; 8];
        w.copy_from_slice(b);
        Some(u64::from_le_bytes(w))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The PFNs in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + 'a {
        self.0.chunks_exact(8).map(|c| {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        })
    }
}

impl core::fmt::Debug for PfnList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// One parsed GPA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpaRange<'a> {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset into the first page.
    pub byte_offset: u32,
    /// The pages.
    pub pfns: PfnList<'a>,
}

/// Why packet bytes or ranges did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a descriptor.
    TooShort,
    /// The descriptor's len8 disagrees with the bytes, or its data offset is before the end of
    /// the descriptor or past the end of the packet.
    BadDescriptor,
    /// Not the packet type the caller asked to interpret.
    WrongType(PacketType),
    /// A range list runs past its bytes, or a range is empty or starts at page offset >= 4096.
    BadRange,
}

impl core::fmt::Display for PacketError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("packet shorter than its descriptor"),
            Self::BadDescriptor => f.write_str("packet descriptor inconsistent with its length"),
            Self::WrongType(t) => write!(f, "unexpected packet type {t:?}"),
            Self::BadRange => f.write_str("malformed packet ranges"),
        }
    }
}

/// An iterator over `count` variable-size GPA ranges in `bytes` (GPADL_HEADER ranges, GPA-direct
/// packets). Each item is checked: the header and its PFNs must lie inside the bytes, the byte
/// count must be non-zero and the byte offset below 4096. After the first error it stops.
#[derive(Debug, Clone)]
pub struct GpaRanges<'a> {
    bytes: &'a [u8],
    remaining: usize,
}

impl<'a> GpaRanges<'a> {
    /// `count` ranges packed in `bytes`.
    pub fn new(bytes: &'a [u8], count: usize) -> Self {
        Self {
            bytes,
            remaining: count,
        }
    }

    /// The bytes after the ranges consumed so far.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<'a> Iterator for GpaRanges<'a> {
    type Item = Result<GpaRange<'a>, PacketError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let fail = |s: &mut Self| {
            s.remaining = 0;
            Some(Err(PacketError::BadRange))
        };
        let Ok((h, rest)) = GpaRangeHeader::read_from_prefix(self.bytes) else {
            return fail(self);
        };
        if h.byte_count == 0 || h.byte_offset >= 4096 {
            return fail(self);
        }
        let n = h.pfn_count() * 8;
        if rest.len() < n {
            return fail(self);
        }
        let (pfns, rest) = rest.split_at(n);
        self.bytes = rest;
        Some(Ok(GpaRange {
            byte_count: h.byte_count,
            byte_offset: h.byte_offset,
            pfns: PfnList(pfns),
        }))
    }
}

/// The bytes of one packet (descriptor through padding, trailer excluded), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketView<'a> {
    bytes: &'a [u8],
    desc: PacketDescriptor,
}

impl<'a> PacketView<'a> {
    /// Interprets `bytes` as one packet: it must hold the descriptor, exactly `len8 * 8` bytes,
    /// and a data offset between 16 and the length.
    pub fn new(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let Ok((desc, _)) = PacketDescriptor::read_from_prefix(bytes) else {
            return Err(PacketError::TooShort);
        };
        let len = desc.len();
        let off = desc.data_offset();
        if len != bytes.len() || off < DESCRIPTOR_SIZE || off > len {
            return Err(PacketError::BadDescriptor);
        }
        Ok(Self { bytes, desc })
    }

    /// The descriptor.
    pub fn descriptor(&self) -> &PacketDescriptor {
        &self.desc
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        self.desc.packet_type
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> u64 {
        self.desc.transaction_id
    }

    /// All bytes of the packet (descriptor included, trailer excluded).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The header extension between the descriptor and the payload.
    pub fn extension(&self) -> &'a [u8] {
        &self.bytes[DESCRIPTOR_SIZE..self.desc.data_offset()]
    }

    /// The payload: from the data offset to the end of the packet (including any padding the
    /// sender added to reach a multiple of 8; protocols carry their own lengths).
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.desc.data_offset()..]
    }

    /// The ranges of a DATA_USING_GPA_DIRECT packet.
    pub fn gpa_direct_ranges(&self) -> Result<GpaRanges<'a>, PacketError> {
        if self.desc.packet_type != PacketType::DATA_USING_GPA_DIRECT {
            return Err(PacketError::WrongType(self.desc.packet_type));
        }
        let ext = self.extension();
        let Ok((h, rest)) = GpaDirectHeader::read_from_prefix(ext) else {
            return Err(PacketError::BadRange);
        };
        // Each range needs at least 16 bytes: reject absurd counts up front.
        if h.range_count as usize > rest.len() / 16 {
            return Err(PacketError::BadRange);
        }
        Ok(GpaRanges::new(rest, h.range_count as usize))
    }

    /// The header and ranges of a DATA_USING_XFER_PAGES packet.
    pub fn xfer_page_ranges(
        &self,
    ) -> Result<(XferPageHeader, impl Iterator<Item = TransferPageRange> + 'a), PacketError> {
        if self.desc.packet_type != PacketType::DATA_USING_XFER_PAGES {
            return Err(PacketError::WrongType(self.desc.packet_type));
        }
        let ext = self.extension();
        let Ok((h, rest)) = XferPageHeader::read_from_prefix(ext) else {
            return Err(PacketError::BadRange);
        };
        let n = h.range_count as usize;
        if n > rest.len() / 8 {
            return Err(PacketError::BadRange);
        }
        let ranges = rest[..n * 8]
            .chunks_exact(8)
            .filter_map(|c| TransferPageRange::read_from_bytes(c).ok());
        Ok((h, ranges))
    }
}

/// Builds the extension of a DATA_USING_GPA_DIRECT packet for one range into `out`; returns the
/// bytes written (8 + 8 + 8 × PFNs), or `None` if `out` is too small or the range is invalid.
pub fn encode_gpa_direct_single(
    out: &mut [u8],
    byte_offset: u32,
    byte_count: u32,
    pfns: &[u64],
) -> Option<usize> {
    let h = GpaRangeHeader {
        byte_count,
        byte_offset,
    };
    if byte_count == 0 || byte_offset >= 4096 || h.pfn_count() != pfns.len() {
        return None;
    }
    let len = 16 + 8 * pfns.len();
    let out = out.get_mut(..len)?;
    out[..8].copy_from_slice(
        GpaDirectHeader {
            reserved: 0,
            range_count: 1,
        }
        .as_bytes(),
    );
    out[8..16].copy_from_slice(h.as_bytes());
    for (c, pfn) in out[16..].chunks_exact_mut(8).zip(pfns) {
        c.copy_from_slice(&pfn.to_le_bytes());
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    // fact sheet §6.3 / §6.4: type values, descriptor layout, trailer.
    #[test]
    fn layout_and_values() {
        assert_eq!(PacketType::DATA_INBAND.0, 6);
        assert_eq!(PacketType::DATA_USING_XFER_PAGES.0, 7);
        assert_eq!(PacketType::DATA_USING_GPADL.0, 8);
        assert_eq!(PacketType::DATA_USING_GPA_DIRECT.0, 9);
        assert_eq!(PacketType::COMPLETION.0, 11);
        assert_eq!(trailer(0x1238), 0x1238_0000_0000);
        assert_eq!(trailer_start(trailer(0x40)), 0x40);
        let d = PacketDescriptor {
            packet_type: PacketType::DATA_INBAND,
            data_offset8: 2,
            len8: 5,
            flags: PacketFlags::new().with_completion_requested(true),
            transaction_id: 0x1122_3344_5566_7788,
        };
        assert_eq!(
            d.as_bytes(),
            &[6, 0, 2, 0, 5, 0, 1, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
        assert_eq!(d.len(), 40);
        assert_eq!(d.data_offset(), 16);
        assert!(d.completion_requested());
    }

    fn packet(ty: PacketType, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let off = 16 + ext.len();
        let len = (off + payload.len()).next_multiple_of(8);
        let mut v = Vec::new();
        v.extend_from_slice(
            PacketDescriptor {
                packet_type: ty,
                data_offset8: (off / 8) as u16,
                len8: (len / 8) as u16,
                flags: PacketFlags::new(),
                transaction_id: 7,
            }
            .as_bytes(),
        );
        v.extend_from_slice(ext);
        v.extend_from_slice(payload);
        v.resize(len, 0);
        v
    }

    // fact sheet §6.4: GPA direct ranges, each range right after the previous one.
    #[test]
    fn gpa_direct() {
        let mut ext = [0u8; 64];
        let n = encode_gpa_direct_single(&mut ext, 0x100, 0x2000, &[5, 6, 7]).unwrap();
        assert_eq!(n, 40);
        let p = packet(PacketType::DATA_USING_GPA_DIRECT, &ext[..n], b"req");
        let v = PacketView::new(&p).unwrap();
        assert_eq!(&v.payload()[..3], b"req");
        let ranges: Vec<_> = v.gpa_direct_ranges().unwrap().collect();
        assert_eq!(ranges.len(), 1);
        let r = ranges[0].unwrap();
        assert_eq!((r.byte_count, r.byte_offset), (0x2000, 0x100));
        assert_eq!(r.pfns.iter().collect::<Vec<_>>(), [5, 6, 7]);
        assert!(encode_gpa_direct_single(&mut ext, 0, 0x2000, &[5]).is_none());
        // A range count larger than the bytes is refused.
        let mut bad = ext;
        bad[4] = 9;
        let p = packet(PacketType::DATA_USING_GPA_DIRECT, &bad[..n], b"");
        assert_eq!(
            PacketView::new(&p).unwrap().gpa_direct_ranges().err(),
            Some(PacketError::BadRange)
        );
        // Two ranges claimed, PFNs for one: the second item is an error.
        bad[4] = 2;
        let p = packet(PacketType::DATA_USING_GPA_DIRECT, &bad[..n], &[0; 16]);
        let v = PacketView::new(&p).unwrap();
        let items: Vec<_> = v.gpa_direct_ranges().unwrap().collect();
        assert!(items[0].is_ok());
        assert_eq!(items[1], Err(PacketError::BadRange));
    }

    // fact sheet §6.4: xfer page header at 16, ranges at 24.
    #[test]
    fn xfer_pages() {
        let mut ext = Vec::new();
        ext.extend_from_slice(
            XferPageHeader {
                xfer_pageset_id: 0xCAFE,
                sender_owns_set: 0,
                reserved: 0,
                range_count: 2,
            }
            .as_bytes(),
        );
        ext.extend_from_slice(&[10, 0, 0, 0, 0, 1, 0, 0, 20, 0, 0, 0, 0, 2, 0, 0]);
        let p = packet(PacketType::DATA_USING_XFER_PAGES, &ext, b"x");
        let v = PacketView::new(&p).unwrap();
        let (h, r) = v.xfer_page_ranges().unwrap();
        assert_eq!(h.xfer_pageset_id, 0xCAFE);
        let r: Vec<_> = r.map(|r| (r.byte_count, r.byte_offset)).collect();
        assert_eq!(r, [(10, 0x100), (20, 0x200)]);
        assert_eq!(
            v.gpa_direct_ranges().err(),
            Some(PacketError::WrongType(PacketType::DATA_USING_XFER_PAGES))
        );
    }

    #[test]
    fn bad_descriptors() {
        assert_eq!(PacketView::new(&[0; 8]), Err(PacketError::TooShort));
        let mut p = packet(PacketType::DATA_INBAND, &[], b"abcdefgh");
        assert!(PacketView::new(&p).is_ok());
        p[2] = 1; // data offset inside the descriptor
        assert_eq!(PacketView::new(&p), Err(PacketError::BadDescriptor));
        p[2] = 4; // past the end
        assert_eq!(PacketView::new(&p), Err(PacketError::BadDescriptor));
        p[2] = 2;
        p[4] = 9; // len8 disagrees
        assert_eq!(PacketView::new(&p), Err(PacketError::BadDescriptor));
    }

    proptest! {
        #[test]
        fn views_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = PacketView::new(&bytes) {
                let _ = v.payload();
                let _ = v.extension();
                if let Ok(r) = v.gpa_direct_ranges() {
                    for x in r { let _ = x; }
                }
                if let Ok((_, r)) = v.xfer_page_ranges() {
                    for x in r { let _ = x; }
                }
            }
            for x in GpaRanges::new(&bytes, 5) { let _ = x; }
        }
    }
}
