//! The VMBus ring buffer, one implementation for both sides (fact sheet §6).
//!
//! A ring is a 4 KiB control page ([`RingControl`]: write index, read index, interrupt mask,
//! pending-send size, feature bits) followed by the data area. The producer of a ring uses a
//! [`RingSender`], the consumer a [`RingReceiver`]; the guest sends on its outbound ring and
//! receives on its inbound one, the host the other way round.
//!
//! Memory is reached only through the small [`RingMemory`] trait, so the ring works over memory
//! that is not one contiguous slice: the guest implements it over its pages ([`PageRefRing`]),
//! the host over the guest pages a GPADL names.
//!
//! Both sides validate what the other side wrote: an index outside the data area or not a
//! multiple of 8, a descriptor whose length is shorter than itself or longer than the bytes
//! available, all give a [`RingError`]; nothing here panics on ring contents or reads or writes
//! outside the ring. Each side keeps its own index in a private copy, so the peer overwriting it
//! cannot move our cursor. Each side also remembers how much the peer's index allowed when it
//! last loaded it (free space for the producer, unread bytes for the consumer) and loads it again
//! only when that is not enough for the next packet, as an SPSC queue caches its peer's index;
//! every load is validated as before, and the signalling decisions always load fresh values.
//!
//! Signalling (fact sheet §6.5): [`RingSender::commit`] says to signal only when the ring went
//! from empty to non-empty and the reader has not masked interrupts; [`RingReceiver::commit`]
//! says to signal when the reader freed enough space for a producer waiting with
//! pending_send_sz.
//!
//! ```
//! use hypercall::page::{Page, PageRef};
//! use vmbus_guest::ring::{init_control, OutgoingPacket, PageRefRing, RingReceiver, RingSender};
//!
//! // A ring of one control page and one data page (a real guest takes its pages from the ring
//! // GPADL; these are test pages at made-up GPAs).
//! let pages = [Page::new(), Page::new()];
//! let refs = [
//!     PageRef::new(pages[0].words(), 0x1000).unwrap(),
//!     PageRef::new(pages[1].words(), 0x2000).unwrap(),
//! ];
//! let ring = PageRefRing::new(&refs).unwrap();
//! init_control(&ring).unwrap();
//! let (mut tx, mut rx) = (RingSender::new(&ring).unwrap(), RingReceiver::new(&ring).unwrap());
//!
//! let signal = tx.try_write(&OutgoingPacket::inband(7, true, &[b"hello"])).unwrap();
//! assert!(signal.needed()); // the ring went from empty to non-empty
//!
//! let mut buf = [0u8; 64];
//! let packet = rx.try_read_packet(&mut buf).unwrap().unwrap();
//! assert_eq!((packet.transaction_id(), &packet.payload()[..5]), (7, &b"hello"[..]));
//! assert!(!rx.commit().unwrap().needed()); // nobody waits for space
//! ```
#![forbid(unsafe_code)]

use crate::packet::{
    trailer, PacketDescriptor, PacketFlags, PacketType, PacketView, DESCRIPTOR_SIZE,
    MAX_PACKET_SIZE, TRAILER_SIZE,
};
use core::mem::{offset_of, size_of};
use core::sync::atomic::{fence, Ordering};
use hypercall::page::{PageRef, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the control page that starts every ring.
pub const CONTROL_SIZE: usize = 4096;

/// Control page offsets (fact sheet §6.1).
pub mod control {
    /// write_index: where the producer writes next (producer-owned).
    pub const WRITE_INDEX: usize = 0;
    /// read_index: the next unread byte (consumer-owned).
    pub const READ_INDEX: usize = 4;
    /// interrupt_mask: non-zero = the consumer is draining, don't interrupt (consumer-owned).
    pub const INTERRUPT_MASK: usize = 8;
    /// pending_send_sz: the producer waits for this many free bytes (producer-owned).
    pub const PENDING_SEND_SIZE: usize = 12;
    /// feature_bits: bit 0 = pending_send_sz flow control supported.
    pub const FEATURE_BITS: usize = 64;
}

/// feature_bits bit 0: pending_send_sz flow control (Linux sets it in both rings).
pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;

/// The control page as a plain layout (for documentation, tests and hosts that copy it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RingControl {
    /// Offset 0.
    pub write_index: u32,
    /// Offset 4.
    pub read_index: u32,
    /// Offset 8.
    pub interrupt_mask: u32,
    /// Offset 12.
    pub pending_send_size: u32,
    /// Offset 16: reserved.
    pub reserved: [u32; 12],
    /// Offset 64.
    pub feature_bits: u32,
    /// Offset 68: padding to 4096.
    pub padding: [u8; 4028],
}

const _: () = {
    // fact sheet §6.1.
    assert!(size_of::<RingControl>() == CONTROL_SIZE);
    assert!(offset_of!(RingControl, write_index) == control::WRITE_INDEX);
    assert!(offset_of!(RingControl, read_index) == control::READ_INDEX);
    assert!(offset_of!(RingControl, interrupt_mask) == control::INTERRUPT_MASK);
    assert!(offset_of!(RingControl, pending_send_size) == control::PENDING_SEND_SIZE);
    assert!(offset_of!(RingControl, feature_bits) == control::FEATURE_BITS);
};

/// Access to one ring's memory: the control page at offset 0, the data area from offset 4096.
///
/// The ring calls `read`/`write` only for ranges inside `0..len()` (it splits at the wrap), and
/// `load_u32`/`store_u32` only for 4-aligned control-page offsets. An implementation over memory
/// the other side can see must make `load_u32` an acquire load and `store_u32` a release store
/// of exactly those 4 bytes (never a wider read-modify-write that could undo the peer's store to
/// the neighbouring field), and `fence` a full (sequentially consistent) barrier.
pub trait RingMemory {
    /// Total bytes: the control page plus the data area.
    fn len(&self) -> usize;

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: usize, buf: &mut [u8]);

    /// Copies `data` to `offset`.
    fn write(&self, offset: usize, data: &[u8]);

    /// Acquire load of the u32 at `offset`.
    fn load_u32(&self, offset: usize) -> u32;

    /// Release store of the u32 at `offset`.
    fn store_u32(&self, offset: usize, value: u32);

    /// Full memory barrier.
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }

    /// Whether the memory is empty (never a valid ring).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<M: RingMemory + ?Sized> RingMemory for &M {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        (**self).read(offset, buf)
    }
    fn write(&self, offset: usize, data: &[u8]) {
        (**self).write(offset, data)
    }
    fn load_u32(&self, offset: usize) -> u32 {
        (**self).load_u32(offset)
    }
    fn store_u32(&self, offset: usize, value: u32) {
        (**self).store_u32(offset, value)
    }
    fn fence(&self) {
        (**self).fence()
    }
}

/// A ring over guest pages, each a [`PageRef`] (they need not be contiguous in memory). Page 0
/// is the control page.
#[derive(Debug, Clone, Copy)]
pub struct PageRefRing<'p, 'a> {
    pages: &'p [PageRef<'a>],
}

impl<'p, 'a> PageRefRing<'p, 'a> {
    /// A ring over `pages` (at least 2: control page and one data page).
    pub fn new(pages: &'p [PageRef<'a>]) -> Result<Self, RingError> {
        if pages.len() < 2 || pages.len() * PAGE_SIZE > u32::MAX as usize {
            return Err(RingError::BadSize {
                len: pages.len() * PAGE_SIZE,
            });
        }
        Ok(Self { pages })
    }

    /// The pages.
    pub fn pages(&self) -> &'p [PageRef<'a>] {
        self.pages
    }
}

impl RingMemory for PageRefRing<'_, '_> {
    #[inline]
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    fn read(&self, mut offset: usize, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let (page, at) = (offset / PAGE_SIZE, offset % PAGE_SIZE);
            let n = (PAGE_SIZE - at).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            self.pages[page].read_bytes(at, now);
            buf = rest;
            offset += n;
        }
    }

    fn write(&self, mut offset: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let (page, at) = (offset / PAGE_SIZE, offset % PAGE_SIZE);
            let n = (PAGE_SIZE - at).min(data.len());
            self.pages[page].write_bytes(at, &data[..n]);
            data = &data[n..];
            offset += n;
        }
    }

    #[inline]
    fn load_u32(&self, offset: usize) -> u32 {
        self.pages[0].load_u32(offset)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        // The neighbouring u32 in the same qword belongs to the other side: replace only our half
        // with a compare-exchange loop so a concurrent store of theirs is never undone.
        let page = &self.pages[0];
        let word = offset & !7;
        let shift = (offset & 4) * 8;
        let mask = 0xFFFF_FFFFu64 << shift;
        let mut cur = page.load_u64(word);
        loop {
            let new = (cur & !mask) | (u64::from(value) << shift);
            match page.compare_exchange_u64(word, cur, new) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// [`PageRef`]s for a run of identity-mapped pages (bare-metal guests where guest-physical equals
/// virtual addresses), e.g. to build a [`PageRefRing`] or a GPADL from a `static [Page; N]`.
pub fn identity_mapped_refs<const N: usize>(
    pages: &[hypercall::page::Page; N],
) -> [PageRef<'_>; N] {
    core::array::from_fn(|i| PageRef::identity_mapped(&pages[i]))
}

/// Zeroes the control page and sets feature_bits = 1, as the guest does before opening a
/// channel (fact sheet §5.6 step 3). Leaves the data area alone.
pub fn init_control<M: RingMemory>(mem: &M) -> Result<(), RingError> {
    data_len(mem)?;
    mem.write(0, &[0; CONTROL_SIZE]);
    mem.store_u32(control::FEATURE_BITS, FEATURE_PENDING_SEND_SIZE);
    mem.fence();
    Ok(())
}

/// Which index was bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Index {
    /// write_index.
    Write,
    /// read_index.
    Read,
}

/// What can go wrong on a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The memory is not a control page plus a non-empty data area that is a multiple of 8 and
    /// below 4 GiB.
    BadSize {
        /// The memory's length.
        len: usize,
    },
    /// An index is outside the data area or not a multiple of 8.
    CorruptIndex {
        /// Which one.
        index: Index,
        /// Its value.
        value: u32,
    },
    /// A packet in the ring is inconsistent: its descriptor's length is below 16 or exceeds the
    /// bytes available, or its data offset lies outside it.
    CorruptPacket {
        /// Data-area offset of the packet.
        offset: u32,
    },
    /// Not enough free space for this packet now (the ring is full for it).
    NotEnoughSpace {
        /// Bytes the packet needs, trailer included.
        needed: usize,
        /// Bytes free.
        free: usize,
    },
    /// The packet can never fit: longer than the 16-bit len8 allows or than the ring.
    PacketTooLarge {
        /// Its size in bytes, trailer included.
        len: usize,
    },
    /// The header extension is not a multiple of 8 bytes.
    BadExtension {
        /// Its length.
        len: usize,
    },
    /// The caller's buffer cannot hold the next packet (nothing was consumed).
    BufferTooSmall {
        /// The packet's size in bytes (trailer excluded).
        needed: usize,
    },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadSize { len } => write!(f, "ring memory of {len} bytes is unusable"),
            Self::CorruptIndex { index, value } => {
                write!(f, "corrupt ring {index:?} index {value:#x}")
            }
            Self::CorruptPacket { offset } => {
                write!(f, "corrupt packet at ring offset {offset:#x}")
            }
            Self::NotEnoughSpace { needed, free } => {
                write!(f, "ring full: need {needed} bytes, {free} free")
            }
            Self::PacketTooLarge { len } => write!(f, "packet of {len} bytes can never fit"),
            Self::BadExtension { len } => {
                write!(f, "header extension of {len} bytes is not a multiple of 8")
            }
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small for a {needed}-byte packet")
            }
        }
    }
}

/// Whether the other side must be signalled (HvSignalEvent / SIEF bit). Ignoring it loses a
/// wakeup, hence `must_use`.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SignalNeeded(pub bool);

impl SignalNeeded {
    /// Whether to signal.
    pub const fn needed(self) -> bool {
        self.0
    }
}

fn data_len<M: RingMemory>(mem: &M) -> Result<u32, RingError> {
    let len = mem.len();
    if len <= CONTROL_SIZE || !len.is_multiple_of(8) || len - CONTROL_SIZE > u32::MAX as usize {
        return Err(RingError::BadSize { len });
    }
    Ok((len - CONTROL_SIZE) as u32)
}

fn check_index(index: Index, value: u32, size: u32) -> Result<u32, RingError> {
    if value >= size || !value.is_multiple_of(8) {
        return Err(RingError::CorruptIndex { index, value });
    }
    Ok(value)
}

/// Bytes in use between `read` and `write` in a ring of `size` bytes.
#[inline]
const fn used(read: u32, write: u32, size: u32) -> u32 {
    if write >= read {
        write - read
    } else {
        size - read + write
    }
}

fn copy_out<M: RingMemory>(mem: &M, size: u32, pos: u32, buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    let pos = pos as usize;
    let first = (size as usize - pos).min(buf.len());
    let (a, b) = buf.split_at_mut(first);
    mem.read(CONTROL_SIZE + pos, a);
    if !b.is_empty() {
        mem.read(CONTROL_SIZE, b);
    }
}

fn copy_in<M: RingMemory>(mem: &M, size: u32, pos: u32, data: &[u8]) -> u32 {
    let p = pos as usize;
    let first = (size as usize - p).min(data.len());
    mem.write(CONTROL_SIZE + p, &data[..first]);
    if first < data.len() {
        mem.write(CONTROL_SIZE, &data[first..]);
    }
    advance(pos, data.len(), size)
}

/// `pos + by` modulo the data size; callers pass `pos < size` and `by <= size`, so this is one
/// compare instead of a division (a general remainder stays as the never-taken fallback).
#[inline]
fn advance(pos: u32, by: usize, size: u32) -> u32 {
    let (p, s) = (pos as usize + by, size as usize);
    (if p < s {
        p
    } else if p - s < s {
        p - s
    } else {
        p % s
    }) as u32
}

/// Pieces of a packet up to this size are gathered on the stack and copied into the ring
/// together, so a small packet costs one [`RingMemory::write`] instead of one per piece.
const GATHER: usize = 256;

/// Writes a packet's pieces one after another from a ring position, gathering small pieces.
struct Gather<'m, M: RingMemory> {
    mem: &'m M,
    size: u32,
    /// Ring position where `buf` goes.
    pos: u32,
    buf: [u8; GATHER],
    fill: usize,
}

impl<'m, M: RingMemory> Gather<'m, M> {
    fn new(mem: &'m M, size: u32, pos: u32) -> Self {
        Self {
            mem,
            size,
            pos,
            buf: [0; GATHER],
            fill: 0,
        }
    }

    fn put(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len() > GATHER - self.fill {
            self.flush();
            if data.len() > GATHER {
                self.pos = copy_in(self.mem, self.size, self.pos, data);
                return;
            }
        }
        self.buf[self.fill..self.fill + data.len()].copy_from_slice(data);
        self.fill += data.len();
    }

    /// Copies what is gathered into the ring; returns the position after everything put.
    fn flush(&mut self) -> u32 {
        if self.fill > 0 {
            self.pos = copy_in(self.mem, self.size, self.pos, &self.buf[..self.fill]);
            self.fill = 0;
        }
        self.pos
    }
}

/// One packet to send.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPacket<'a> {
    /// The type.
    pub packet_type: PacketType,
    /// Descriptor flags (completion requested).
    pub flags: PacketFlags,
    /// The transaction id.
    pub transaction_id: u64,
    /// The header extension between descriptor and payload (GPA-direct or transfer-page ranges);
    /// a multiple of 8 bytes.
    pub extension: &'a [u8],
    /// The payload, as parts that are concatenated.
    pub payload: &'a [&'a [u8]],
}

impl<'a> OutgoingPacket<'a> {
    /// An in-band data packet.
    #[inline]
    pub const fn inband(transaction_id: u64, completion: bool, payload: &'a [&'a [u8]]) -> Self {
        Self {
            packet_type: PacketType::DATA_INBAND,
            flags: PacketFlags::new().with_completion_requested(completion),
            transaction_id,
            extension: &[],
            payload,
        }
    }

    /// A completion for `transaction_id`.
    #[inline]
    pub const fn completion(transaction_id: u64, payload: &'a [&'a [u8]]) -> Self {
        Self {
            packet_type: PacketType::COMPLETION,
            flags: PacketFlags::new(),
            transaction_id,
            extension: &[],
            payload,
        }
    }

    /// Payload bytes.
    #[inline]
    pub fn payload_len(&self) -> usize {
        self.payload.iter().map(|p| p.len()).sum()
    }

    /// The packet's length in the ring without the trailer (padded to 8).
    #[inline]
    pub fn padded_len(&self) -> usize {
        (DESCRIPTOR_SIZE + self.extension.len() + self.payload_len()).next_multiple_of(8)
    }

    /// The bytes it occupies in the ring, trailer included.
    #[inline]
    pub fn ring_bytes(&self) -> usize {
        self.padded_len() + TRAILER_SIZE
    }
}

/// The producer side of a ring.
#[derive(Debug)]
pub struct RingSender<M: RingMemory> {
    mem: M,
    size: u32,
    /// The write index as last published.
    published: u32,
    /// Where the next staged packet goes (== `published` when nothing is staged).
    cursor: u32,
    pending_send_set: bool,
    /// Free bytes after `cursor` when the read index was last loaded, minus what was staged
    /// since. The reader only ever frees space, so this is a lower bound and `stage` loads (and
    /// validates) the read index only when a packet does not fit in it.
    known_free: u32,
    /// Where a small packet is put together before its one copy into the ring (kept here so it
    /// need not be zeroed for every packet).
    scratch: [u8; GATHER],
}

impl<M: RingMemory> RingSender<M> {
    /// The producer over `mem`, starting at the write index found there (0 on a fresh ring).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_len(&mem)?;
        let w = check_index(Index::Write, mem.load_u32(control::WRITE_INDEX), size)?;
        Ok(Self {
            mem,
            size,
            published: w,
            cursor: w,
            pending_send_set: false,
            known_free: 0,
            scratch: [0; GATHER],
        })
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The data area size in bytes.
    pub fn data_size(&self) -> u32 {
        self.size
    }

    fn read_index(&self) -> Result<u32, RingError> {
        check_index(
            Index::Read,
            self.mem.load_u32(control::READ_INDEX),
            self.size,
        )
    }

    /// Free bytes now (counting staged, unpublished packets as used).
    pub fn free(&self) -> Result<usize, RingError> {
        let r = self.read_index()?;
        Ok((self.size - used(r, self.cursor, self.size)) as usize)
    }

    /// Writes `packet` after any staged ones without publishing it; [`Self::commit`] publishes.
    pub fn stage(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), RingError> {
        if !packet.extension.len().is_multiple_of(8) {
            return Err(RingError::BadExtension {
                len: packet.extension.len(),
            });
        }
        let len = packet.padded_len();
        let total = len + TRAILER_SIZE;
        // A writer always leaves at least 8 bytes free, so a packet needs total < size.
        if len > MAX_PACKET_SIZE || total >= self.size as usize {
            return Err(RingError::PacketTooLarge { len: total });
        }
        if total >= self.known_free as usize {
            let free = self.free()?;
            self.known_free = free as u32;
            if total >= free {
                return Err(RingError::NotEnoughSpace {
                    needed: total,
                    free,
                });
            }
        }
        let start = self.cursor;
        let desc = PacketDescriptor {
            packet_type: packet.packet_type,
            data_offset8: ((DESCRIPTOR_SIZE + packet.extension.len()) / 8) as u16,
            len8: (len / 8) as u16,
            flags: packet.flags,
            transaction_id: packet.transaction_id,
        };
        if total <= GATHER {
            // A small packet: put together in the scratch buffer and copied into the ring at
            // once.
            let b = &mut self.scratch;
            b[..DESCRIPTOR_SIZE].copy_from_slice(desc.as_bytes());
            let mut at = DESCRIPTOR_SIZE;
            for piece in core::iter::once(&packet.extension).chain(packet.payload) {
                b[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
            b[at..len].fill(0);
            b[len..total].copy_from_slice(&trailer(start).to_le_bytes());
            self.cursor = copy_in(&self.mem, self.size, start, &b[..total]);
            self.known_free -= total as u32;
            return Ok(());
        }
        let mut out = Gather::new(&self.mem, self.size, start);
        out.put(desc.as_bytes());
        out.put(packet.extension);
        let mut unpadded = DESCRIPTOR_SIZE + packet.extension.len();
        for part in packet.payload {
            out.put(part);
            unpadded += part.len();
        }
        out.put(&[0; 8][..len - unpadded]);
        out.put(&trailer(start).to_le_bytes());
        self.cursor = out.flush();
        self.known_free -= total as u32;
        Ok(())
    }

    /// Whether packets are staged and not yet published.
    pub fn has_staged(&self) -> bool {
        self.cursor != self.published
    }

    /// Publishes the staged packets (full barrier, then the write index) and says whether the
    /// reader must be signalled: only if the ring was empty before this batch and the reader's
    /// interrupt mask is clear (fact sheet §6.5).
    pub fn commit(&mut self) -> Result<SignalNeeded, RingError> {
        if self.cursor == self.published {
            return Ok(SignalNeeded(false));
        }
        let old = self.published;
        self.mem.fence();
        self.mem.store_u32(control::WRITE_INDEX, self.cursor);
        self.published = self.cursor;
        if self.pending_send_set {
            self.pending_send_set = false;
            self.mem.store_u32(control::PENDING_SEND_SIZE, 0);
        }
        self.mem.fence();
        if self.mem.load_u32(control::INTERRUPT_MASK) != 0 {
            return Ok(SignalNeeded(false));
        }
        Ok(SignalNeeded(self.mem.load_u32(control::READ_INDEX) == old))
    }

    /// [`Self::stage`] then [`Self::commit`].
    pub fn try_write(&mut self, packet: &OutgoingPacket<'_>) -> Result<SignalNeeded, RingError> {
        self.stage(packet)?;
        self.commit()
    }

    /// Flow control, producer side: asks the reader to signal once `bytes` are free (writes
    /// pending_send_sz, full barrier) and returns whether they are free already (then don't
    /// wait). Only meaningful if the ring has feature bit 0; the next commit clears the request.
    pub fn request_space(&mut self, bytes: u32) -> Result<bool, RingError> {
        self.mem.store_u32(control::PENDING_SEND_SIZE, bytes);
        self.pending_send_set = bytes != 0;
        self.mem.fence();
        let free = self.free()?;
        self.known_free = free as u32;
        Ok(free > bytes as usize)
    }

    /// Whether the reader advertises pending_send_sz flow control (feature bit 0).
    pub fn supports_pending_send_size(&self) -> bool {
        self.mem.load_u32(control::FEATURE_BITS) & FEATURE_PENDING_SEND_SIZE != 0
    }
}

/// What [`RingReceiver::try_read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// The descriptor.
    pub descriptor: PacketDescriptor,
    /// Bytes copied into the caller's buffer (the packet without its trailer).
    pub len: usize,
}

impl PacketInfo {
    /// The packet in `buf` (the buffer given to `try_read`).
    pub fn view<'b>(&self, buf: &'b [u8]) -> Option<PacketView<'b>> {
        PacketView::new(buf.get(..self.len)?).ok()
    }
}

/// Bytes [`RingReceiver::try_read`] copies with the descriptor, so a packet up to this size is one
/// read of the ring memory.
const READ_AHEAD: usize = 128;

/// The consumer side of a ring.
#[derive(Debug)]
pub struct RingReceiver<M: RingMemory> {
    mem: M,
    size: u32,
    /// The read index as last published.
    published: u32,
    /// The next packet to read (ahead of `published` within a batch).
    cursor: u32,
    /// Unread bytes after `cursor` when the write index was last loaded, minus what was read
    /// since. The writer only ever adds packets, so this is a lower bound and `try_read` loads
    /// (and validates) the write index only when the next packet does not lie within it.
    known_avail: u32,
}

impl<M: RingMemory> RingReceiver<M> {
    /// The consumer over `mem`, starting at the read index found there (0 on a fresh ring).
    pub fn new(mem: M) -> Result<Self, RingError> {
        let size = data_len(&mem)?;
        let r = check_index(Index::Read, mem.load_u32(control::READ_INDEX), size)?;
        Ok(Self {
            mem,
            size,
            published: r,
            cursor: r,
            known_avail: 0,
        })
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The data area size in bytes.
    pub fn data_size(&self) -> u32 {
        self.size
    }

    fn write_index(&self) -> Result<u32, RingError> {
        check_index(
            Index::Write,
            self.mem.load_u32(control::WRITE_INDEX),
            self.size,
        )
    }

    /// Unread bytes (packets and trailers) after the read cursor.
    pub fn available(&self) -> Result<usize, RingError> {
        Ok(used(self.cursor, self.write_index()?, self.size) as usize)
    }

    /// Whether there is nothing to read.
    pub fn is_empty(&self) -> Result<bool, RingError> {
        Ok(self.available()? == 0)
    }

    /// The descriptor of the next packet, validated, without consuming it.
    pub fn peek(&self) -> Result<Option<PacketDescriptor>, RingError> {
        let avail = self.available()?;
        if avail == 0 {
            return Ok(None);
        }
        let corrupt = RingError::CorruptPacket {
            offset: self.cursor,
        };
        if avail < DESCRIPTOR_SIZE + TRAILER_SIZE {
            return Err(corrupt);
        }
        let desc = self.descriptor()?;
        if desc.len() + TRAILER_SIZE > avail {
            return Err(corrupt);
        }
        Ok(Some(desc))
    }

    /// Reads the descriptor at the cursor (the caller made sure its bytes are available) and
    /// checks it on its own.
    fn descriptor(&self) -> Result<PacketDescriptor, RingError> {
        let mut d = [0u8; DESCRIPTOR_SIZE];
        copy_out(&self.mem, self.size, self.cursor, &mut d);
        self.check_descriptor(&d)
    }

    /// Parses the descriptor bytes of the packet at the cursor: length and data offset at least
    /// 16, data offset within the packet.
    fn check_descriptor(&self, d: &[u8]) -> Result<PacketDescriptor, RingError> {
        let corrupt = RingError::CorruptPacket {
            offset: self.cursor,
        };
        let desc = PacketDescriptor::read_from_bytes(d).map_err(|_| corrupt)?;
        let (len, off) = (desc.len(), desc.data_offset());
        if len < DESCRIPTOR_SIZE || off < DESCRIPTOR_SIZE || off > len {
            return Err(corrupt);
        }
        Ok(desc)
    }

    /// Copies the next packet (descriptor through padding) into `buf` and moves the read cursor
    /// past it and its trailer, without publishing the read index ([`Self::commit`] does). `None`
    /// when the ring is empty. On [`RingError::BufferTooSmall`] nothing is consumed.
    ///
    /// The descriptor is read together with up to 128 bytes after it (never past the published
    /// write index nor the end of `buf`), so a small packet is one copy out of the ring; bytes of
    /// `buf` after the packet may therefore be overwritten, also when an error is returned.
    pub fn try_read(&mut self, buf: &mut [u8]) -> Result<Option<PacketInfo>, RingError> {
        // The same checks as `peek`, but the write index is loaded only when the bytes known to
        // be available do not cover the descriptor, then the whole packet.
        let corrupt = RingError::CorruptPacket {
            offset: self.cursor,
        };
        let mut avail = self.known_avail as usize;
        if avail < DESCRIPTOR_SIZE + TRAILER_SIZE {
            avail = self.available()?;
            self.known_avail = avail as u32;
            if avail == 0 {
                return Ok(None);
            }
            if avail < DESCRIPTOR_SIZE + TRAILER_SIZE {
                return Err(corrupt);
            }
        }
        // Read ahead: the descriptor and what follows it, within the published bytes.
        let ahead = (avail - TRAILER_SIZE).min(buf.len()).min(READ_AHEAD);
        let descriptor = if ahead >= DESCRIPTOR_SIZE {
            copy_out(&self.mem, self.size, self.cursor, &mut buf[..ahead]);
            self.check_descriptor(&buf[..DESCRIPTOR_SIZE])?
        } else {
            self.descriptor()?
        };
        let len = descriptor.len();
        if len + TRAILER_SIZE > avail {
            avail = self.available()?;
            self.known_avail = avail as u32;
            if len + TRAILER_SIZE > avail {
                return Err(corrupt);
            }
        }
        let Some(dst) = buf.get_mut(..len) else {
            return Err(RingError::BufferTooSmall { needed: len });
        };
        // Copy only what the read-ahead did not (the descriptor is never read twice).
        let done = if ahead >= DESCRIPTOR_SIZE {
            ahead.min(len)
        } else {
            dst[..DESCRIPTOR_SIZE].copy_from_slice(descriptor.as_bytes());
            DESCRIPTOR_SIZE
        };
        copy_out(
            &self.mem,
            self.size,
            advance(self.cursor, done, self.size),
            &mut dst[done..],
        );
        self.cursor = advance(self.cursor, len + TRAILER_SIZE, self.size);
        self.known_avail -= (len + TRAILER_SIZE) as u32;
        Ok(Some(PacketInfo { descriptor, len }))
    }

    /// [`Self::try_read`] returning a validated view of the packet in `buf`.
    pub fn try_read_packet<'b>(
        &mut self,
        buf: &'b mut [u8],
    ) -> Result<Option<PacketView<'b>>, RingError> {
        let cursor = self.cursor;
        match self.try_read(buf)? {
            None => Ok(None),
            Some(info) => PacketView::new(&buf[..info.len])
                .map(Some)
                .map_err(|_| RingError::CorruptPacket { offset: cursor }),
        }
    }

    /// Publishes the read index after a batch of reads (barrier, store, barrier) and says whether
    /// to signal a producer waiting for space: when pending_send_sz is set (and the ring has
    /// feature bit 0) and the free space went from at most pending_send_sz to more than it
    /// during this batch (fact sheet §6.5).
    pub fn commit(&mut self) -> Result<SignalNeeded, RingError> {
        if self.cursor == self.published {
            return Ok(SignalNeeded(false));
        }
        let freed = used(self.published, self.cursor, self.size);
        self.mem.fence();
        self.mem.store_u32(control::READ_INDEX, self.cursor);
        self.published = self.cursor;
        self.mem.fence();
        if self.mem.load_u32(control::FEATURE_BITS) & FEATURE_PENDING_SEND_SIZE == 0 {
            return Ok(SignalNeeded(false));
        }
        let pending = self.mem.load_u32(control::PENDING_SEND_SIZE);
        if pending == 0 {
            return Ok(SignalNeeded(false));
        }
        let w = self.write_index()?;
        let free_now = self.size - used(self.cursor, w, self.size);
        let free_before = free_now.saturating_sub(freed);
        Ok(SignalNeeded(free_before <= pending && free_now > pending))
    }

    /// Sets the interrupt mask ("I am draining, don't interrupt me"), then a full barrier.
    pub fn begin_read(&mut self) {
        self.mem.store_u32(control::INTERRUPT_MASK, 1);
        self.mem.fence();
    }

    /// Clears the interrupt mask, full barrier, and says whether data arrived meanwhile (then
    /// drain again: the producer saw the mask and did not signal).
    pub fn end_read(&mut self) -> Result<bool, RingError> {
        self.mem.store_u32(control::INTERRUPT_MASK, 0);
        self.mem.fence();
        Ok(!self.is_empty()?)
    }
}

#[cfg(test)]
mod tests;
