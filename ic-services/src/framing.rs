//! The IC framing every IC packet carries (fact sheet §7.2): the 8-byte pipe header, the 20-byte
//! IC message header (`icmsg_hdr`), message types, flags and HRESULT status codes.
//!
//! An IC packet is a VMBus DATA_INBAND packet whose payload is
//! `[PipeHeader (8)] [IcHeader (20)] [body (icmsgsize)]`; the body starts at [`BODY_OFFSET`] (28,
//! Linux's `ICMSG_HDR`). All IC wire structs use zerocopy's little-endian integer types, so they
//! have alignment 1, no padding, and can be viewed at any offset of a receive buffer.
//!
//! [`parse`] validates a message from the other side (lengths, sizes); it never panics.
//! [`encode`] writes a complete message.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the pipe header.
pub const PIPE_HEADER_SIZE: usize = 8;
/// Size of the IC message header that follows the pipe header.
pub const IC_HEADER_SIZE: usize = 20;
/// Where the message body starts in the packet payload (Linux `ICMSG_HDR`, fact sheet §7.2).
pub const BODY_OFFSET: usize = PIPE_HEADER_SIZE + IC_HEADER_SIZE;
/// The largest IC message accepted or built: Linux's KVP read limit, 16 KiB (fact sheet §7.2;
/// openvmm caps at 13312, and the largest real message, KVP's IP-info exchange, is smaller).
pub const MAX_MESSAGE_SIZE: usize = 16384;

/// The named-pipe header in front of every IC message (fact sheet §7.2, payload offsets 0..8).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct PipeHeader {
    /// Offset 0: pipe packet type; [`PipeHeader::DATA`] for IC messages.
    pub flags: U32,
    /// Offset 4: number of bytes that follow this header.
    pub msg_size: U32,
}

impl PipeHeader {
    /// Pipe packet type 1 = data (openvmm's `packet_type`).
    pub const DATA: u32 = 1;
}

/// An IC version {major, minor} as it appears in headers and negotiation lists.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct IcVersion {
    /// Offset 0.
    pub major: U16,
    /// Offset 2.
    pub minor: U16,
}

impl IcVersion {
    /// Version `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self {
            major: U16::new(major),
            minor: U16::new(minor),
        }
    }

    /// The major number.
    pub const fn major(self) -> u16 {
        self.major.get()
    }

    /// The minor number.
    pub const fn minor(self) -> u16 {
        self.minor.get()
    }

    /// Version 1.0.
    pub const V1_0: Self = Self::new(1, 0);
    /// Version 3.0.
    pub const V3_0: Self = Self::new(3, 0);
}

impl PartialOrd for IcVersion {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IcVersion {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        (self.major(), self.minor()).cmp(&(other.major(), other.minor()))
    }
}

impl core::fmt::Debug for IcVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl core::fmt::Display for IcVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// IC message type (`icmsgtype`, fact sheet §7.2): an open set, unknown values survive.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(transparent)]
pub struct IcMessageType(pub U16);

impl IcMessageType {
    /// 0: version negotiation.
    pub const NEGOTIATE: Self = Self::new(0);
    /// 1: heartbeat.
    pub const HEARTBEAT: Self = Self::new(1);
    /// 2: key-value pair exchange.
    pub const KVP_EXCHANGE: Self = Self::new(2);
    /// 3: shutdown.
    pub const SHUTDOWN: Self = Self::new(3);
    /// 4: time synchronisation.
    pub const TIMESYNC: Self = Self::new(4);
    /// 5: volume shadow copy (backup).
    pub const VSS: Self = Self::new(5);
    /// 6: RDV (openvmm).
    pub const RDV: Self = Self::new(6);
    /// 7: guest file copy (openvmm: GUEST_INTERFACE).
    pub const FCOPY: Self = Self::new(7);
    /// 8: VM session (openvmm).
    pub const VM_SESSION: Self = Self::new(8);

    /// The type with this number.
    pub const fn new(value: u16) -> Self {
        Self(U16::new(value))
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.get() {
            0 => "NEGOTIATE",
            1 => "HEARTBEAT",
            2 => "KVP_EXCHANGE",
            3 => "SHUTDOWN",
            4 => "TIMESYNC",
            5 => "VSS",
            6 => "RDV",
            7 => "FCOPY",
            8 => "VM_SESSION",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for IcMessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "IcMessageType({})", self.get()),
        }
    }
}

/// An HRESULT in the header's status field (fact sheet §7.2): an open set.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(transparent)]
pub struct Status(pub U32);

impl Status {
    /// S_OK.
    pub const OK: Self = Self::new(0);
    /// E_FAIL (HV_E_FAIL).
    pub const E_FAIL: Self = Self::new(0x8000_4005);
    /// "No more items" (HV_S_CONT): ends a KVP enumeration.
    pub const NO_MORE_ITEMS: Self = Self::new(0x8007_0103);
    /// Not supported.
    pub const NOT_SUPPORTED: Self = Self::new(0x8007_0032);
    /// Machine locked.
    pub const MACHINE_LOCKED: Self = Self::new(0x8007_04F7);
    /// Device not connected.
    pub const DEVICE_NOT_CONNECTED: Self = Self::new(0x8007_048F);
    /// Invalid argument.
    pub const INVALID_ARG: Self = Self::new(0x8007_0057);
    /// Not found (GUID_NOTFOUND).
    pub const NOT_FOUND: Self = Self::new(0x8004_1002);
    /// Already exists.
    pub const ALREADY_EXISTS: Self = Self::new(0x8007_0050);
    /// Disk full.
    pub const DISK_FULL: Self = Self::new(0x8007_0070);

    /// The status with this value.
    pub const fn new(value: u32) -> Self {
        Self(U32::new(value))
    }

    /// The value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Whether this is S_OK.
    pub const fn is_ok(self) -> bool {
        self.get() == 0
    }

    /// The name of a known status.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.get() {
            0 => "S_OK",
            0x8000_4005 => "E_FAIL",
            0x8007_0103 => "NO_MORE_ITEMS",
            0x8007_0032 => "NOT_SUPPORTED",
            0x8007_04F7 => "MACHINE_LOCKED",
            0x8007_048F => "DEVICE_NOT_CONNECTED",
            0x8007_0057 => "INVALID_ARG",
            0x8004_1002 => "NOT_FOUND",
            0x8007_0050 => "ALREADY_EXISTS",
            0x8007_0070 => "DISK_FULL",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Status({:#010x})", self.get()),
        }
    }
}

/// Header flags (`icflags`, fact sheet §7.2).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
pub struct IcFlags {
    /// Bit 0: TRANSACTION.
    pub transaction: bool,
    /// Bit 1: REQUEST (host to guest).
    pub request: bool,
    /// Bit 2: RESPONSE (guest to host).
    pub response: bool,
    /// Bits 7:3: reserved.
    #[bits(5)]
    pub reserved: u8,
}

impl IcFlags {
    /// What the host sends: TRANSACTION | REQUEST (0x3).
    pub const HOST_REQUEST: Self = Self::from_bits(0x3);
    /// What the guest answers: TRANSACTION | RESPONSE (0x5).
    pub const GUEST_RESPONSE: Self = Self::from_bits(0x5);
}

/// The IC message header (`icmsg_hdr`, fact sheet §7.2: payload offsets 8..28).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct IcHeader {
    /// Offset 0 (payload 8): framework version.
    pub framework_version: IcVersion,
    /// Offset 4 (payload 12): message type.
    pub message_type: IcMessageType,
    /// Offset 6 (payload 14): message (service) version.
    pub message_version: IcVersion,
    /// Offset 10 (payload 18): body size after this header.
    pub message_size: U16,
    /// Offset 12 (payload 20): status (HRESULT).
    pub status: Status,
    /// Offset 16 (payload 24): transaction id.
    pub transaction_id: u8,
    /// Offset 17 (payload 25): flags.
    pub flags: IcFlags,
    /// Offset 18 (payload 26): reserved.
    pub reserved: [u8; 2],
}

/// Pipe header plus IC header: the first [`BODY_OFFSET`] bytes of every IC packet payload.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct IcMessageHeader {
    /// Offset 0.
    pub pipe: PipeHeader,
    /// Offset 8.
    pub ic: IcHeader,
}

const _: () = {
    // Fact sheet §7.2.
    assert!(size_of::<PipeHeader>() == PIPE_HEADER_SIZE);
    assert!(offset_of!(PipeHeader, msg_size) == 4);
    assert!(size_of::<IcVersion>() == 4);
    assert!(size_of::<IcHeader>() == IC_HEADER_SIZE);
    assert!(offset_of!(IcHeader, message_type) == 4);
    assert!(offset_of!(IcHeader, message_version) == 6);
    assert!(offset_of!(IcHeader, message_size) == 10);
    assert!(offset_of!(IcHeader, status) == 12);
    assert!(offset_of!(IcHeader, transaction_id) == 16);
    assert!(offset_of!(IcHeader, flags) == 17);
    assert!(offset_of!(IcHeader, reserved) == 18);
    assert!(size_of::<IcMessageHeader>() == BODY_OFFSET);
    assert!(offset_of!(IcMessageHeader, ic) == 8);
};

/// What can go wrong handling or building an IC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcError {
    /// Shorter than the 28-byte pipe + IC header.
    TooShort {
        /// The length.
        len: usize,
    },
    /// Longer than [`MAX_MESSAGE_SIZE`].
    TooLong {
        /// The length.
        len: usize,
    },
    /// The pipe header's msg_size does not match the bytes that follow it.
    BadPipeSize {
        /// msg_size.
        msg_size: u32,
        /// Bytes after the pipe header.
        available: usize,
    },
    /// The IC header's icmsgsize exceeds the bytes after the header.
    BadMessageSize {
        /// icmsgsize.
        message_size: u16,
        /// Bytes after the IC header.
        available: usize,
    },
    /// An output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// A response was expected but the RESPONSE flag is clear.
    NotAResponse,
    /// A message of another type than expected.
    UnexpectedType(IcMessageType),
    /// A body too short for its message type.
    BodyTooShort {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        len: usize,
    },
    /// A field out of range (version count, key size, fragment size...).
    BadField,
    /// The packet is not DATA_INBAND.
    NotInband,
}

impl core::fmt::Display for IcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "IC message of {len} bytes is too short"),
            Self::TooLong { len } => write!(f, "IC message of {len} bytes is too long"),
            Self::BadPipeSize {
                msg_size,
                available,
            } => write!(f, "pipe msg_size {msg_size} but {available} bytes follow"),
            Self::BadMessageSize {
                message_size,
                available,
            } => write!(f, "icmsgsize {message_size} but {available} body bytes"),
            Self::BufferTooSmall { needed } => write!(f, "buffer too small, {needed} bytes needed"),
            Self::NotAResponse => f.write_str("not an IC response"),
            Self::UnexpectedType(t) => write!(f, "unexpected IC message type {t:?}"),
            Self::BodyTooShort { needed, len } => {
                write!(f, "IC body of {len} bytes, {needed} needed")
            }
            Self::BadField => f.write_str("IC message field out of range"),
            Self::NotInband => f.write_str("IC packet is not DATA_INBAND"),
        }
    }
}

/// A validated IC message: its headers and its body (`icmsgsize` bytes after the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The pipe and IC headers.
    pub header: IcMessageHeader,
    /// The body.
    pub body: &'a [u8],
}

/// Checks the framing of an IC packet payload and returns the header and the body. The pipe
/// header's msg_size must match the bytes after it (a trailing padding of up to 7 bytes, as a ring
/// packet may carry, is allowed); icmsgsize must fit in what follows the IC header.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, IcError> {
    let (header, body_len) = check(bytes)?;
    Ok(Message {
        header,
        body: &bytes[BODY_OFFSET..BODY_OFFSET + body_len],
    })
}

/// [`parse`] for a mutable payload: the header, and the body to rewrite in place.
pub fn parse_mut(bytes: &mut [u8]) -> Result<(IcMessageHeader, &mut [u8]), IcError> {
    let (header, body_len) = check(bytes)?;
    Ok((header, &mut bytes[BODY_OFFSET..BODY_OFFSET + body_len]))
}

/// The framing checks; returns the header and the body length.
fn check(bytes: &[u8]) -> Result<(IcMessageHeader, usize), IcError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(IcError::TooLong { len: bytes.len() });
    }
    let Ok((header, _)) = IcMessageHeader::read_from_prefix(bytes) else {
        return Err(IcError::TooShort { len: bytes.len() });
    };
    let msg_size = header.pipe.msg_size.get();
    let available = bytes.len() - PIPE_HEADER_SIZE;
    let msg = msg_size as usize;
    if msg < IC_HEADER_SIZE || msg > available || available - msg >= 8 {
        return Err(IcError::BadPipeSize {
            msg_size,
            available,
        });
    }
    let body_available = msg - IC_HEADER_SIZE;
    let message_size = header.ic.message_size.get();
    if usize::from(message_size) > body_available {
        return Err(IcError::BadMessageSize {
            message_size,
            available: body_available,
        });
    }
    Ok((header, usize::from(message_size)))
}

/// Writes a complete IC message (pipe header with msg_size, `ic` with icmsgsize = `body.len()`,
/// then `body`) to `buf`; returns its length.
pub fn encode(buf: &mut [u8], ic: &IcHeader, body: &[u8]) -> Result<usize, IcError> {
    let len = BODY_OFFSET + body.len();
    if len > MAX_MESSAGE_SIZE {
        return Err(IcError::TooLong { len });
    }
    if buf.len() < len {
        return Err(IcError::BufferTooSmall { needed: len });
    }
    buf[..BODY_OFFSET].copy_from_slice(message_header(ic, body.len()).as_bytes());
    buf[BODY_OFFSET..len].copy_from_slice(body);
    Ok(len)
}

/// The pipe and IC headers of a message with `ic` and a body of `body_len` bytes (at most
/// [`MAX_MESSAGE_SIZE`] - [`BODY_OFFSET`]): pipe type data, msg_size and icmsgsize filled in.
pub fn message_header(ic: &IcHeader, body_len: usize) -> IcMessageHeader {
    let mut header = IcMessageHeader {
        pipe: PipeHeader {
            flags: U32::new(PipeHeader::DATA),
            msg_size: U32::new((IC_HEADER_SIZE + body_len) as u32),
        },
        ic: *ic,
    };
    header.ic.message_size = U16::new(body_len as u16);
    header
}

/// Copies a body struct out of `body`, which must hold at least `min` bytes; bytes the body
/// lacks beyond `min` read as zero (hosts differ in the reserved tail they send).
pub(crate) fn read_body<T: FromBytes + IntoBytes>(body: &[u8], min: usize) -> Result<T, IcError> {
    if body.len() < min {
        return Err(IcError::BodyTooShort {
            needed: min,
            len: body.len(),
        });
    }
    let mut value = T::new_zeroed();
    let n = body.len().min(size_of::<T>());
    value.as_mut_bytes()[..n].copy_from_slice(&body[..n]);
    Ok(value)
}

/// Writes a body struct back over `body`, as far as the body reaches.
pub(crate) fn write_body<T: IntoBytes + Immutable>(value: &T, body: &mut [u8]) {
    let bytes = value.as_bytes();
    let n = body.len().min(bytes.len());
    body[..n].copy_from_slice(&bytes[..n]);
}
