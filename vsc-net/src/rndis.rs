//! RNDIS as carried inside NVSP (fact sheet §9.3–§9.5): the message header, every message
//! body, status codes, OIDs, the data packet with its per-packet info (PPI), and validating
//! parse/build helpers.
//!
//! Every RNDIS message is `{msg_type u32, msg_len u32}` followed by a body; `msg_len` covers the
//! whole message. **All offsets inside a body count from the start of the body** (byte 8 of the
//! message). [`parse`] checks `msg_len` against the bytes it was given and every
//! offset/length pair (information buffers, packet data, the PPI area and each PPI element)
//! against `msg_len`, so a lying length is an error, never an out-of-bounds slice. Builders
//! write into a caller's buffer and return the bytes written.
#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the message header.
pub const HEADER_SIZE: usize = 8;
/// RNDIS major version a guest announces.
pub const MAJOR_VERSION: u32 = 1;
/// RNDIS minor version a guest announces.
pub const MINOR_VERSION: u32 = 0;
/// `max_xfer_size` Linux puts in INITIALIZE.
pub const DEFAULT_MAX_TRANSFER_SIZE: u32 = 0x4000;
/// INITIALIZE_COMPLETE `dev_flags`: connectionless.
pub const DF_CONNECTIONLESS: u32 = 1;
/// INITIALIZE_COMPLETE `medium`: 802.3.
pub const MEDIUM_802_3: u32 = 0;
/// Offset of the information buffer in QUERY/SET as Linux builds them (the body size).
pub const REQUEST_INFO_OFFSET: u32 = size_of::<QueryRequest>() as u32;
/// Offset of the information buffer in QUERY_COMPLETE as hosts build it (the body size).
pub const QUERY_COMPLETE_INFO_OFFSET: u32 = size_of::<QueryComplete>() as u32;

macro_rules! open_enum {
    ($(#[$m:meta])* $t:ident, $fmt:literal, { $($(#[$cm:meta])* $c:ident = $v:expr,)* }) => {
        $(#[$m])*
        #[derive(
            Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            FromBytes, IntoBytes, Immutable, KnownLayout,
        )]
        #[repr(transparent)]
        pub struct $t(pub u32);

        impl $t {
            $($(#[$cm])* pub const $c: Self = Self($v);)*

            /// The name of a known value.
            pub const fn name(self) -> Option<&'static str> {
                $(if self.0 == $v { return Some(stringify!($c)); })*
                None
            }
        }

        open_enum_debug!($t, $fmt);
    };
}

open_enum!(
    /// RNDIS message type (offset 0): an open set.
    MessageType, "MessageType({:#x})", {
    /// A data packet ([`PacketMessage`]).
    PACKET = 0x0000_0001,
    /// INITIALIZE ([`InitializeRequest`]).
    INITIALIZE = 0x0000_0002,
    /// INITIALIZE_COMPLETE ([`InitializeComplete`]).
    INITIALIZE_COMPLETE = 0x8000_0002,
    /// HALT ([`HaltRequest`]).
    HALT = 0x0000_0003,
    /// QUERY ([`QueryRequest`]).
    QUERY = 0x0000_0004,
    /// QUERY_COMPLETE ([`QueryComplete`]).
    QUERY_COMPLETE = 0x8000_0004,
    /// SET ([`SetRequest`]).
    SET = 0x0000_0005,
    /// SET_COMPLETE ([`SetComplete`]).
    SET_COMPLETE = 0x8000_0005,
    /// RESET ([`ResetRequest`]).
    RESET = 0x0000_0006,
    /// RESET_COMPLETE ([`ResetComplete`]).
    RESET_COMPLETE = 0x8000_0006,
    /// INDICATE_STATUS ([`IndicateStatus`]).
    INDICATE_STATUS = 0x0000_0007,
    /// KEEPALIVE ([`KeepaliveRequest`]).
    KEEPALIVE = 0x0000_0008,
    /// KEEPALIVE_COMPLETE ([`KeepaliveComplete`]).
    KEEPALIVE_COMPLETE = 0x8000_0008,
});

open_enum!(
    /// RNDIS (NDIS) status: 0 is success.
    RndisStatus, "RndisStatus({:#x})", {
    /// Success.
    SUCCESS = 0,
    /// Pending.
    PENDING = 0x0000_0103,
    /// Not recognized.
    NOT_RECOGNIZED = 0x0001_0001,
    /// Indication: media connected (link up).
    MEDIA_CONNECT = 0x4001_000B,
    /// Indication: media disconnected (link down).
    MEDIA_DISCONNECT = 0x4001_000C,
    /// Indication: link speed changed.
    LINK_SPEED_CHANGE = 0x4001_0013,
    /// Indication: network changed (Linux bounces the link).
    NETWORK_CHANGE = 0x4001_0018,
    /// Buffer overflow.
    BUFFER_OVERFLOW = 0x8000_0005,
    /// Failure.
    FAILURE = 0xC000_0001,
    /// Out of resources.
    RESOURCES = 0xC000_009A,
    /// Not supported.
    NOT_SUPPORTED = 0xC000_00BB,
    /// Bad version.
    BAD_VERSION = 0xC001_0004,
    /// Invalid packet.
    INVALID_PACKET = 0xC001_000F,
    /// Invalid length.
    INVALID_LENGTH = 0xC001_0014,
    /// Invalid data.
    INVALID_DATA = 0xC001_0015,
    /// Buffer too short.
    BUFFER_TOO_SHORT = 0xC001_0016,
    /// Invalid OID.
    INVALID_OID = 0xC001_0017,
});

impl RndisStatus {
    /// Whether this is success.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
}

open_enum!(
    /// An NDIS object identifier: an open set.
    Oid, "Oid({:#010x})", {
    /// Supported OIDs.
    GEN_SUPPORTED_LIST = 0x0001_0101,
    /// Hardware status.
    GEN_HARDWARE_STATUS = 0x0001_0102,
    /// Media supported.
    GEN_MEDIA_SUPPORTED = 0x0001_0103,
    /// Media in use.
    GEN_MEDIA_IN_USE = 0x0001_0104,
    /// Maximum lookahead.
    GEN_MAXIMUM_LOOKAHEAD = 0x0001_0105,
    /// u32: largest frame without the Ethernet header (the MTU).
    GEN_MAXIMUM_FRAME_SIZE = 0x0001_0106,
    /// u32: link speed in 100 bps.
    GEN_LINK_SPEED = 0x0001_0107,
    /// Transmit buffer space.
    GEN_TRANSMIT_BUFFER_SPACE = 0x0001_0108,
    /// Receive buffer space.
    GEN_RECEIVE_BUFFER_SPACE = 0x0001_0109,
    /// Vendor id.
    GEN_VENDOR_ID = 0x0001_010C,
    /// Vendor description.
    GEN_VENDOR_DESCRIPTION = 0x0001_010D,
    /// u32 packet filter ([`packet_filter`]).
    GEN_CURRENT_PACKET_FILTER = 0x0001_010E,
    /// Current lookahead.
    GEN_CURRENT_LOOKAHEAD = 0x0001_010F,
    /// Driver version.
    GEN_DRIVER_VERSION = 0x0001_0110,
    /// u32: largest frame including the header.
    GEN_MAXIMUM_TOTAL_SIZE = 0x0001_0111,
    /// MAC options.
    GEN_MAC_OPTIONS = 0x0001_0113,
    /// u32: 0 connected, 1 disconnected ([`media_state`]).
    GEN_MEDIA_CONNECT_STATUS = 0x0001_0114,
    /// Maximum send packets.
    GEN_MAXIMUM_SEND_PACKETS = 0x0001_0115,
    /// Vendor driver version.
    GEN_VENDOR_DRIVER_VERSION = 0x0001_0116,
    /// RSS capabilities (`ndis_recv_scale_cap`).
    GEN_RECEIVE_SCALE_CAPABILITIES = 0x0001_0203,
    /// RSS parameters.
    GEN_RECEIVE_SCALE_PARAMETERS = 0x0001_0204,
    /// A named configuration parameter ([`ConfigParameterInfo`]), e.g. "NetworkAddress".
    GEN_RNDIS_CONFIG_PARAMETER = 0x0001_021B,
    /// UCS-2 friendly name.
    GEN_FRIENDLY_NAME = 0x0002_0216,
    /// 6 bytes: the permanent MAC.
    ETH_802_3_PERMANENT_ADDRESS = 0x0101_0101,
    /// 6 bytes: the current MAC.
    ETH_802_3_CURRENT_ADDRESS = 0x0101_0102,
    /// Multicast list (6 bytes per address).
    ETH_802_3_MULTICAST_LIST = 0x0101_0103,
    /// Maximum multicast list size.
    ETH_802_3_MAXIMUM_LIST_SIZE = 0x0101_0104,
    /// Encapsulation offload.
    OFFLOAD_ENCAPSULATION = 0x0101_010A,
    /// Current offload configuration.
    TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01_020B,
    /// Set: [`crate::offload::NdisOffloadParameters`].
    TCP_OFFLOAD_PARAMETERS = 0xFC01_020C,
    /// Query: [`crate::offload::NdisOffload`].
    TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01_020D,
});

/// Values of OID_GEN_CURRENT_PACKET_FILTER.
pub mod packet_filter {
    /// Frames to our MAC.
    pub const DIRECTED: u32 = 0x1;
    /// Listed multicast.
    pub const MULTICAST: u32 = 0x2;
    /// All multicast.
    pub const ALL_MULTICAST: u32 = 0x4;
    /// Broadcast.
    pub const BROADCAST: u32 = 0x8;
    /// Everything.
    pub const PROMISCUOUS: u32 = 0x20;
    /// What Linux sets on interface up (fact sheet §9.4).
    pub const LINUX_DEFAULT: u32 = DIRECTED | ALL_MULTICAST | BROADCAST;
}

/// Values of OID_GEN_MEDIA_CONNECT_STATUS.
pub mod media_state {
    /// Link up.
    pub const CONNECTED: u32 = 0;
    /// Link down.
    pub const DISCONNECTED: u32 = 1;
}

/// `parameter_type` of [`ConfigParameterInfo`].
pub mod config_param_type {
    /// Integer.
    pub const INTEGER: u32 = 0;
    /// UCS-2 string.
    pub const STRING: u32 = 2;
}

/// The 8-byte header of every RNDIS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RndisHeader {
    /// Offset 0.
    pub msg_type: MessageType,
    /// Offset 4: the whole message, header included.
    pub msg_len: u32,
}

/// INITIALIZE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitializeRequest {
    /// Body offset 0.
    pub request_id: u32,
    /// 4.
    pub major_version: u32,
    /// 8.
    pub minor_version: u32,
    /// 12.
    pub max_transfer_size: u32,
}

/// INITIALIZE_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitializeComplete {
    /// 0.
    pub request_id: u32,
    /// 4.
    pub status: RndisStatus,
    /// 8.
    pub major_version: u32,
    /// 12.
    pub minor_version: u32,
    /// 16: [`DF_CONNECTIONLESS`].
    pub device_flags: u32,
    /// 20: [`MEDIUM_802_3`].
    pub medium: u32,
    /// 24: RNDIS packets the host takes in one message.
    pub max_packets_per_message: u32,
    /// 28.
    pub max_transfer_size: u32,
    /// 32: log2 of the packet alignment (3 → 8 bytes).
    pub packet_alignment_factor: u32,
    /// 36.
    pub af_list_offset: u32,
    /// 40.
    pub af_list_size: u32,
}

/// HALT body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HaltRequest {
    /// 0.
    pub request_id: u32,
}

/// QUERY body; the information buffer follows at `info_buffer_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryRequest {
    /// 0.
    pub request_id: u32,
    /// 4.
    pub oid: Oid,
    /// 8.
    pub info_buffer_length: u32,
    /// 12: from the body start (Linux: 20).
    pub info_buffer_offset: u32,
    /// 16: 0.
    pub device_vc_handle: u32,
}

/// SET body: same layout as QUERY.
pub type SetRequest = QueryRequest;

/// QUERY_COMPLETE body; the data follows at `info_buffer_offset` (≥ 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryComplete {
    /// 0.
    pub request_id: u32,
    /// 4.
    pub status: RndisStatus,
    /// 8.
    pub info_buffer_length: u32,
    /// 12.
    pub info_buffer_offset: u32,
}

/// SET_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SetComplete {
    /// 0.
    pub request_id: u32,
    /// 4.
    pub status: RndisStatus,
}

/// RESET body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ResetRequest {
    /// 0.
    pub reserved: u32,
}

/// RESET_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ResetComplete {
    /// 0.
    pub status: RndisStatus,
    /// 4.
    pub addressing_reset: u32,
}

/// INDICATE_STATUS body; the status buffer follows at `status_buffer_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IndicateStatus {
    /// 0: e.g. [`RndisStatus::MEDIA_CONNECT`].
    pub status: RndisStatus,
    /// 4.
    pub status_buffer_length: u32,
    /// 8.
    pub status_buffer_offset: u32,
}

/// KEEPALIVE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct KeepaliveRequest {
    /// 0.
    pub request_id: u32,
}

/// KEEPALIVE_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct KeepaliveComplete {
    /// 0.
    pub request_id: u32,
    /// 4.
    pub status: RndisStatus,
}

/// PACKET body (fact sheet §9.5); offsets from the body start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PacketMessage {
    /// 0: where the Ethernet frame starts.
    pub data_offset: u32,
    /// 4: frame length (no FCS).
    pub data_length: u32,
    /// 8.
    pub oob_data_offset: u32,
    /// 12.
    pub oob_data_length: u32,
    /// 16.
    pub num_oob_data_elements: u32,
    /// 20: where the PPIs start (Linux TX: 36).
    pub per_packet_info_offset: u32,
    /// 24: total PPI bytes.
    pub per_packet_info_length: u32,
    /// 28.
    pub vc_handle: u32,
    /// 32.
    pub reserved: u32,
}

/// A per-packet-info type: bits 30:0 the type, bit 31 the `internal` flag (so the internal
/// RNDIS_PKTINFO_ID is `0x8000_0001`).
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
pub struct PpiType(pub u32);

impl PpiType {
    /// u32 checksum info ([`crate::offload::ChecksumTxInfo`] / [`crate::offload::ChecksumRxInfo`]).
    pub const TCPIP_CHECKSUM: Self = Self(0);
    /// IPsec.
    pub const IPSEC: Self = Self(1);
    /// u32 LSO info ([`crate::offload::LsoV2TxInfo`]).
    pub const TCP_LARGESEND: Self = Self(2);
    /// Classification handle.
    pub const CLASSIFICATION_HANDLE: Self = Self(3);
    /// Scatter-gather list.
    pub const SG_LIST: Self = Self(5);
    /// u32 802.1Q info ([`crate::offload::VlanInfo`]).
    pub const IEEE_8021Q: Self = Self(6);
    /// Original packet info.
    pub const ORIGINAL: Self = Self(7);
    /// u32 hash value (same number as PACKET_CANCEL_ID).
    pub const NBL_HASH_VALUE: Self = Self(8);
    /// Internal: [`PktInfoId`] (RSC fragments).
    pub const PKTINFO_ID: Self = Self(0x8000_0001);

    /// Bits 30:0.
    pub const fn kind(self) -> u32 {
        self.0 & 0x7FFF_FFFF
    }

    /// Bit 31.
    pub const fn internal(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }
}

impl core::fmt::Debug for PpiType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PpiType({:#x})", self.0)
    }
}

/// The 12-byte header of one PPI element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PpiHeader {
    /// The whole element, header included.
    pub size: u32,
    /// The type.
    pub ppi_type: PpiType,
    /// Where the value starts, from the element start (12).
    pub ppi_offset: u32,
}

/// Size of a PPI element header.
pub const PPI_HEADER_SIZE: usize = size_of::<PpiHeader>();

/// Value of the internal RNDIS_PKTINFO_ID PPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PktInfoId {
    /// 1.
    pub version: u8,
    /// [`pktinfo_flags`].
    pub flags: u8,
    /// Packet id.
    pub packet_id: u16,
}

/// Flags of [`PktInfoId`].
pub mod pktinfo_flags {
    /// Sub-allocation.
    pub const SUBALLOC: u8 = 0x1;
    /// First fragment.
    pub const FIRST_FRAGMENT: u8 = 0x2;
    /// Last fragment.
    pub const LAST_FRAGMENT: u8 = 0x4;
}

/// Information buffer of OID_GEN_RNDIS_CONFIG_PARAMETER; offsets from its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ConfigParameterInfo {
    /// Offset of the UCS-2 name.
    pub name_offset: u32,
    /// Name bytes.
    pub name_length: u32,
    /// [`config_param_type`].
    pub parameter_type: u32,
    /// Offset of the value.
    pub value_offset: u32,
    /// Value bytes.
    pub value_length: u32,
}

const _: () = {
    // fact sheet §9.3 bodies, §9.5 packet and PPI.
    assert!(size_of::<RndisHeader>() == HEADER_SIZE);
    assert!(size_of::<InitializeRequest>() == 16);
    assert!(size_of::<InitializeComplete>() == 44);
    assert!(offset_of!(InitializeComplete, max_packets_per_message) == 24);
    assert!(offset_of!(InitializeComplete, packet_alignment_factor) == 32);
    assert!(size_of::<HaltRequest>() == 4);
    assert!(size_of::<QueryRequest>() == 20);
    assert!(offset_of!(QueryRequest, info_buffer_offset) == 12);
    assert!(size_of::<QueryComplete>() == 16);
    assert!(size_of::<SetComplete>() == 8);
    assert!(size_of::<ResetRequest>() == 4);
    assert!(size_of::<ResetComplete>() == 8);
    assert!(size_of::<IndicateStatus>() == 12);
    assert!(size_of::<KeepaliveRequest>() == 4);
    assert!(size_of::<KeepaliveComplete>() == 8);
    assert!(size_of::<PacketMessage>() == 36);
    assert!(offset_of!(PacketMessage, per_packet_info_offset) == 20);
    assert!(offset_of!(PacketMessage, vc_handle) == 28);
    assert!(size_of::<PpiHeader>() == 12);
    assert!(size_of::<PktInfoId>() == 4);
    assert!(size_of::<ConfigParameterInfo>() == 20);
};

/// Size of a PACKET message's header and body, before PPIs and data.
pub const PACKET_HEADER_SIZE: usize = HEADER_SIZE + size_of::<PacketMessage>();
/// Size of a PPI element carrying a u32.
pub const PPI_U32_SIZE: usize = PPI_HEADER_SIZE + 4;

/// Why RNDIS bytes did not parse or build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RndisError {
    /// Fewer bytes than the 8-byte header.
    TooShort,
    /// `msg_len` is below the header and body size of its type, or beyond the bytes given.
    BadLength {
        /// The type.
        msg_type: MessageType,
        /// `msg_len` claimed.
        msg_len: u32,
        /// Bytes available.
        available: usize,
    },
    /// An information/status buffer, packet data or the PPI area lies outside the message.
    BadOffset {
        /// The type.
        msg_type: MessageType,
        /// The offset claimed.
        offset: u32,
        /// The length claimed.
        length: u32,
    },
    /// A PPI element is shorter than its header, runs past the PPI area, or its value offset
    /// is outside it.
    BadPpi,
    /// The output buffer is too small for the message.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl core::fmt::Display for RndisError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("RNDIS message shorter than its 8-byte header"),
            Self::BadLength {
                msg_type,
                msg_len,
                available,
            } => write!(
                f,
                "RNDIS {msg_type:?} msg_len {msg_len} invalid ({available} bytes available)"
            ),
            Self::BadOffset {
                msg_type,
                offset,
                length,
            } => write!(
                f,
                "RNDIS {msg_type:?} buffer at offset {offset} length {length} outside the message"
            ),
            Self::BadPpi => f.write_str("RNDIS per-packet info element malformed"),
            Self::BufferTooSmall { needed } => {
                write!(f, "RNDIS output buffer too small ({needed} bytes needed)")
            }
        }
    }
}

/// One PPI element: its type and value bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ppi<'a> {
    /// The type (with the internal bit).
    pub ppi_type: PpiType,
    /// The value (from `ppi_offset` to the element's end).
    pub value: &'a [u8],
}

impl Ppi<'_> {
    /// The value as a u32, if it has at least 4 bytes.
    pub fn value_u32(&self) -> Option<u32> {
        let b = self.value.get(..4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// An iterator over the PPI elements of a packet. Each item is checked; after the first error
/// it stops.
#[derive(Debug, Clone)]
pub struct Ppis<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Ppis<'a> {
    type Item = Result<Ppi<'a>, RndisError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let Ok((h, _)) = PpiHeader::read_from_prefix(self.bytes) else {
            self.bytes = &[];
            return Some(Err(RndisError::BadPpi));
        };
        let size = h.size as usize;
        let off = h.ppi_offset as usize;
        if size < PPI_HEADER_SIZE || size > self.bytes.len() || off < PPI_HEADER_SIZE || off > size
        {
            self.bytes = &[];
            return Some(Err(RndisError::BadPpi));
        }
        let value = &self.bytes[off..size];
        self.bytes = &self.bytes[size..];
        Some(Ok(Ppi {
            ppi_type: h.ppi_type,
            value,
        }))
    }
}

/// A parsed data packet: the frame and the PPI area, both checked to lie inside the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The body.
    pub header: PacketMessage,
    /// The Ethernet frame.
    pub data: &'a [u8],
    /// The raw PPI area.
    pub ppi_bytes: &'a [u8],
}

impl<'a> Packet<'a> {
    /// The PPI elements.
    pub fn ppis(&self) -> Ppis<'a> {
        Ppis {
            bytes: self.ppi_bytes,
        }
    }

    /// The u32 value of the first well-formed PPI of `ppi_type`, if any. Malformed elements
    /// end the search (and yield `None` for later ones).
    pub fn ppi_u32(&self, ppi_type: PpiType) -> Option<u32> {
        self.ppis()
            .map_while(Result::ok)
            .find(|p| p.ppi_type == ppi_type)
            .and_then(|p| p.value_u32())
    }

    /// Whether every PPI element is well-formed.
    pub fn ppis_valid(&self) -> bool {
        self.ppis().all(|p| p.is_ok())
    }
}

/// A parsed RNDIS message. Buffers are the bytes the message's offset/length pair names,
/// checked to lie inside `msg_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// PACKET.
    Packet(Packet<'a>),
    /// INITIALIZE.
    Initialize(InitializeRequest),
    /// INITIALIZE_COMPLETE.
    InitializeComplete(InitializeComplete),
    /// HALT.
    Halt(HaltRequest),
    /// QUERY with its information buffer.
    Query(QueryRequest, &'a [u8]),
    /// QUERY_COMPLETE with its data.
    QueryComplete(QueryComplete, &'a [u8]),
    /// SET with its data.
    Set(SetRequest, &'a [u8]),
    /// SET_COMPLETE.
    SetComplete(SetComplete),
    /// RESET.
    Reset(ResetRequest),
    /// RESET_COMPLETE.
    ResetComplete(ResetComplete),
    /// INDICATE_STATUS with its status buffer.
    IndicateStatus(IndicateStatus, &'a [u8]),
    /// KEEPALIVE.
    Keepalive(KeepaliveRequest),
    /// KEEPALIVE_COMPLETE.
    KeepaliveComplete(KeepaliveComplete),
    /// Any other type, with its body.
    Other(MessageType, &'a [u8]),
}

/// The body size a message type needs, or `None` for an unknown type.
pub const fn body_len(t: MessageType) -> Option<usize> {
    Some(match t {
        MessageType::PACKET => size_of::<PacketMessage>(),
        MessageType::INITIALIZE => size_of::<InitializeRequest>(),
        MessageType::INITIALIZE_COMPLETE => size_of::<InitializeComplete>(),
        MessageType::HALT => size_of::<HaltRequest>(),
        MessageType::QUERY | MessageType::SET => size_of::<QueryRequest>(),
        MessageType::QUERY_COMPLETE => size_of::<QueryComplete>(),
        MessageType::SET_COMPLETE => size_of::<SetComplete>(),
        MessageType::RESET => size_of::<ResetRequest>(),
        MessageType::RESET_COMPLETE => size_of::<ResetComplete>(),
        MessageType::INDICATE_STATUS => size_of::<IndicateStatus>(),
        MessageType::KEEPALIVE => size_of::<KeepaliveRequest>(),
        MessageType::KEEPALIVE_COMPLETE => size_of::<KeepaliveComplete>(),
        _ => return None,
    })
}

/// Splits the first message off `bytes`: returns its `msg_len` bytes and the rest (batched
/// packets follow each other). `msg_len` must be at least the header and within `bytes`.
pub fn split_message(bytes: &[u8]) -> Result<(&[u8], &[u8]), RndisError> {
    let Ok((h, _)) = RndisHeader::read_from_prefix(bytes) else {
        return Err(RndisError::TooShort);
    };
    let len = h.msg_len as usize;
    if len < HEADER_SIZE || len > bytes.len() {
        return Err(RndisError::BadLength {
            msg_type: h.msg_type,
            msg_len: h.msg_len,
            available: bytes.len(),
        });
    }
    Ok(bytes.split_at(len))
}

/// The `length` bytes at body offset `offset` of a message whose body is `body`, if they lie
/// inside it and do not start before `min_offset` (the fixed body). A zero length is always an
/// empty buffer (hosts leave the offset 0 then).
fn sub_buffer(
    msg_type: MessageType,
    body: &[u8],
    offset: u32,
    length: u32,
    min_offset: usize,
) -> Result<&[u8], RndisError> {
    if length == 0 {
        return Ok(&[]);
    }
    let err = RndisError::BadOffset {
        msg_type,
        offset,
        length,
    };
    let start = offset as usize;
    let end = start.checked_add(length as usize).ok_or(err)?;
    if start < min_offset || end > body.len() {
        return Err(err);
    }
    Ok(&body[start..end])
}

fn read<T: FromBytes>(b: &[u8]) -> T {
    // The caller checked the body length against `body_len`.
    match T::read_from_prefix(b) {
        Ok((v, _)) => v,
        Err(_) => T::new_zeroed(),
    }
}

/// Parses the first RNDIS message in `bytes` (which may hold more after `msg_len`). Checks
/// `msg_len` against the bytes and the type's body, and every buffer against `msg_len`.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, RndisError> {
    let (msg, _) = split_message(bytes)?;
    let Ok((h, body)) = RndisHeader::read_from_prefix(msg) else {
        return Err(RndisError::TooShort);
    };
    let t = h.msg_type;
    let Some(need) = body_len(t) else {
        return Ok(Message::Other(t, body));
    };
    if body.len() < need {
        return Err(RndisError::BadLength {
            msg_type: t,
            msg_len: h.msg_len,
            available: bytes.len(),
        });
    }
    Ok(match t {
        MessageType::PACKET => {
            let p: PacketMessage = read(body);
            let data = sub_buffer(t, body, p.data_offset, p.data_length, need)?;
            let ppi_bytes = sub_buffer(
                t,
                body,
                p.per_packet_info_offset,
                p.per_packet_info_length,
                need,
            )?;
            Message::Packet(Packet {
                header: p,
                data,
                ppi_bytes,
            })
        }
        MessageType::INITIALIZE => Message::Initialize(read(body)),
        MessageType::INITIALIZE_COMPLETE => Message::InitializeComplete(read(body)),
        MessageType::HALT => Message::Halt(read(body)),
        MessageType::QUERY | MessageType::SET => {
            let q: QueryRequest = read(body);
            let info = sub_buffer(t, body, q.info_buffer_offset, q.info_buffer_length, need)?;
            if t == MessageType::QUERY {
                Message::Query(q, info)
            } else {
                Message::Set(q, info)
            }
        }
        MessageType::QUERY_COMPLETE => {
            let q: QueryComplete = read(body);
            let info = sub_buffer(t, body, q.info_buffer_offset, q.info_buffer_length, need)?;
            Message::QueryComplete(q, info)
        }
        MessageType::SET_COMPLETE => Message::SetComplete(read(body)),
        MessageType::RESET => Message::Reset(read(body)),
        MessageType::RESET_COMPLETE => Message::ResetComplete(read(body)),
        MessageType::INDICATE_STATUS => {
            let s: IndicateStatus = read(body);
            let buf = sub_buffer(
                t,
                body,
                s.status_buffer_offset,
                s.status_buffer_length,
                need,
            )?;
            Message::IndicateStatus(s, buf)
        }
        MessageType::KEEPALIVE => Message::Keepalive(read(body)),
        MessageType::KEEPALIVE_COMPLETE => Message::KeepaliveComplete(read(body)),
        _ => Message::Other(t, body),
    })
}

/// Writes header + `body` + `tail` into `out`; returns the length.
fn build(out: &mut [u8], t: MessageType, body: &[u8], tail: &[u8]) -> Result<usize, RndisError> {
    let len = HEADER_SIZE + body.len() + tail.len();
    let out = out
        .get_mut(..len)
        .ok_or(RndisError::BufferTooSmall { needed: len })?;
    out[..HEADER_SIZE].copy_from_slice(
        RndisHeader {
            msg_type: t,
            msg_len: len as u32,
        }
        .as_bytes(),
    );
    out[HEADER_SIZE..HEADER_SIZE + body.len()].copy_from_slice(body);
    out[HEADER_SIZE + body.len()..].copy_from_slice(tail);
    Ok(len)
}

/// Builds INITIALIZE (version 1.0).
pub fn build_initialize(
    out: &mut [u8],
    request_id: u32,
    max_transfer_size: u32,
) -> Result<usize, RndisError> {
    let b = InitializeRequest {
        request_id,
        major_version: MAJOR_VERSION,
        minor_version: MINOR_VERSION,
        max_transfer_size,
    };
    build(out, MessageType::INITIALIZE, b.as_bytes(), &[])
}

/// Builds INITIALIZE_COMPLETE.
pub fn build_initialize_complete(
    out: &mut [u8],
    body: &InitializeComplete,
) -> Result<usize, RndisError> {
    build(out, MessageType::INITIALIZE_COMPLETE, body.as_bytes(), &[])
}

fn build_request(
    out: &mut [u8],
    t: MessageType,
    request_id: u32,
    oid: Oid,
    info: &[u8],
) -> Result<usize, RndisError> {
    let b = QueryRequest {
        request_id,
        oid,
        info_buffer_length: info.len() as u32,
        info_buffer_offset: REQUEST_INFO_OFFSET,
        device_vc_handle: 0,
    };
    build(out, t, b.as_bytes(), info)
}

/// Builds QUERY with `info` as the information buffer (Linux pre-fills it for some OIDs, e.g.
/// the offload capabilities header).
pub fn build_query(
    out: &mut [u8],
    request_id: u32,
    oid: Oid,
    info: &[u8],
) -> Result<usize, RndisError> {
    build_request(out, MessageType::QUERY, request_id, oid, info)
}

/// Builds SET with `info` as the data.
pub fn build_set(
    out: &mut [u8],
    request_id: u32,
    oid: Oid,
    info: &[u8],
) -> Result<usize, RndisError> {
    build_request(out, MessageType::SET, request_id, oid, info)
}

/// Builds QUERY_COMPLETE with `info` right after the body (offset 16).
pub fn build_query_complete(
    out: &mut [u8],
    request_id: u32,
    status: RndisStatus,
    info: &[u8],
) -> Result<usize, RndisError> {
    let b = QueryComplete {
        request_id,
        status,
        info_buffer_length: info.len() as u32,
        info_buffer_offset: if info.is_empty() {
            0
        } else {
            QUERY_COMPLETE_INFO_OFFSET
        },
    };
    build(out, MessageType::QUERY_COMPLETE, b.as_bytes(), info)
}

/// Builds SET_COMPLETE.
pub fn build_set_complete(
    out: &mut [u8],
    request_id: u32,
    status: RndisStatus,
) -> Result<usize, RndisError> {
    let b = SetComplete { request_id, status };
    build(out, MessageType::SET_COMPLETE, b.as_bytes(), &[])
}

/// Builds HALT.
pub fn build_halt(out: &mut [u8], request_id: u32) -> Result<usize, RndisError> {
    build(
        out,
        MessageType::HALT,
        HaltRequest { request_id }.as_bytes(),
        &[],
    )
}

/// Builds RESET.
pub fn build_reset(out: &mut [u8]) -> Result<usize, RndisError> {
    build(
        out,
        MessageType::RESET,
        ResetRequest { reserved: 0 }.as_bytes(),
        &[],
    )
}

/// Builds RESET_COMPLETE.
pub fn build_reset_complete(
    out: &mut [u8],
    status: RndisStatus,
    addressing_reset: bool,
) -> Result<usize, RndisError> {
    let b = ResetComplete {
        status,
        addressing_reset: addressing_reset as u32,
    };
    build(out, MessageType::RESET_COMPLETE, b.as_bytes(), &[])
}

/// Builds INDICATE_STATUS with `buffer` right after the body (offset 12).
pub fn build_indicate_status(
    out: &mut [u8],
    status: RndisStatus,
    buffer: &[u8],
) -> Result<usize, RndisError> {
    let b = IndicateStatus {
        status,
        status_buffer_length: buffer.len() as u32,
        status_buffer_offset: if buffer.is_empty() {
            0
        } else {
            size_of::<IndicateStatus>() as u32
        },
    };
    build(out, MessageType::INDICATE_STATUS, b.as_bytes(), buffer)
}

/// Builds KEEPALIVE.
pub fn build_keepalive(out: &mut [u8], request_id: u32) -> Result<usize, RndisError> {
    build(
        out,
        MessageType::KEEPALIVE,
        KeepaliveRequest { request_id }.as_bytes(),
        &[],
    )
}

/// Builds KEEPALIVE_COMPLETE.
pub fn build_keepalive_complete(
    out: &mut [u8],
    request_id: u32,
    status: RndisStatus,
) -> Result<usize, RndisError> {
    let b = KeepaliveComplete { request_id, status };
    build(out, MessageType::KEEPALIVE_COMPLETE, b.as_bytes(), &[])
}

/// The bytes of a PACKET's header, body and `ppis` (u32 values), i.e. everything before the
/// frame: 44 + 16 per PPI.
pub const fn packet_header_len(ppi_count: usize) -> usize {
    PACKET_HEADER_SIZE + ppi_count * PPI_U32_SIZE
}

/// Writes a PACKET's header, body and PPIs for a `frame_len`-byte frame that the caller places
/// right after (at [`packet_header_len`]). `msg_len` covers the frame. Linux's layout: PPIs at
/// body offset 36, data right after them.
pub fn build_packet_header(
    out: &mut [u8],
    ppis: &[(PpiType, u32)],
    frame_len: usize,
) -> Result<usize, RndisError> {
    let head = packet_header_len(ppis.len());
    let total = head
        .checked_add(frame_len)
        .filter(|&t| t <= u32::MAX as usize)
        .ok_or(RndisError::BufferTooSmall { needed: usize::MAX })?;
    let out = out
        .get_mut(..head)
        .ok_or(RndisError::BufferTooSmall { needed: head })?;
    let ppi_len = ppis.len() * PPI_U32_SIZE;
    let body = PacketMessage {
        data_offset: (size_of::<PacketMessage>() + ppi_len) as u32,
        data_length: frame_len as u32,
        oob_data_offset: 0,
        oob_data_length: 0,
        num_oob_data_elements: 0,
        per_packet_info_offset: if ppis.is_empty() {
            0
        } else {
            size_of::<PacketMessage>() as u32
        },
        per_packet_info_length: ppi_len as u32,
        vc_handle: 0,
        reserved: 0,
    };
    out[..HEADER_SIZE].copy_from_slice(
        RndisHeader {
            msg_type: MessageType::PACKET,
            msg_len: total as u32,
        }
        .as_bytes(),
    );
    out[HEADER_SIZE..PACKET_HEADER_SIZE].copy_from_slice(body.as_bytes());
    for (c, (t, v)) in out[PACKET_HEADER_SIZE..]
        .chunks_exact_mut(PPI_U32_SIZE)
        .zip(ppis)
    {
        c[..PPI_HEADER_SIZE].copy_from_slice(
            PpiHeader {
                size: PPI_U32_SIZE as u32,
                ppi_type: *t,
                ppi_offset: PPI_HEADER_SIZE as u32,
            }
            .as_bytes(),
        );
        c[PPI_HEADER_SIZE..].copy_from_slice(&v.to_le_bytes());
    }
    Ok(head)
}

/// Builds a whole PACKET carrying `frame` with `ppis` into `out`; returns its length.
pub fn build_packet(
    out: &mut [u8],
    ppis: &[(PpiType, u32)],
    frame: &[u8],
) -> Result<usize, RndisError> {
    let head = packet_header_len(ppis.len());
    let total = head + frame.len();
    if out.len() < total {
        return Err(RndisError::BufferTooSmall { needed: total });
    }
    build_packet_header(out, ppis, frame.len())?;
    out[head..total].copy_from_slice(frame);
    Ok(total)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    // fact sheet §9.3 / §9.4 numbers.
    #[test]
    fn values() {
        assert_eq!(MessageType::INITIALIZE_COMPLETE.0, 0x8000_0002);
        assert_eq!(MessageType::INDICATE_STATUS.0, 7);
        assert_eq!(RndisStatus::MEDIA_CONNECT.0, 0x4001_000B);
        assert_eq!(RndisStatus::MEDIA_DISCONNECT.0, 0x4001_000C);
        assert_eq!(RndisStatus::NETWORK_CHANGE.0, 0x4001_0018);
        assert_eq!(Oid::GEN_MAXIMUM_FRAME_SIZE.0, 0x0001_0106);
        assert_eq!(Oid::ETH_802_3_PERMANENT_ADDRESS.0, 0x0101_0101);
        assert_eq!(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES.0, 0xFC01_020D);
        assert_eq!(Oid::TCP_OFFLOAD_PARAMETERS.0, 0xFC01_020C);
        assert_eq!(Oid::GEN_MEDIA_CONNECT_STATUS.0, 0x0001_0114);
        assert_eq!(Oid::GEN_LINK_SPEED.0, 0x0001_0107);
        assert_eq!(Oid::GEN_CURRENT_PACKET_FILTER.0, 0x0001_010E);
        assert_eq!(Oid::GEN_RNDIS_CONFIG_PARAMETER.0, 0x0001_021B);
        assert_eq!(packet_filter::LINUX_DEFAULT, 0x0D);
        assert_eq!(PpiType::PKTINFO_ID.kind(), 1);
        assert!(PpiType::PKTINFO_ID.internal());
        assert_eq!(std::format!("{:?}", Oid(0x1234)), "Oid(0x00001234)");
        assert_eq!(std::format!("{:?}", Oid::GEN_LINK_SPEED), "GEN_LINK_SPEED");
        assert_eq!(REQUEST_INFO_OFFSET, 20);
        assert_eq!(QUERY_COMPLETE_INFO_OFFSET, 16);
    }

    #[test]
    fn query_round_trip() {
        let mut buf = [0u8; 128];
        let n = build_query(&mut buf, 7, Oid::ETH_802_3_PERMANENT_ADDRESS, &[]).unwrap();
        assert_eq!(n, 28);
        assert_eq!(&buf[..8], &[4, 0, 0, 0, 28, 0, 0, 0]);
        assert_eq!(&buf[20..24], &20u32.to_le_bytes());
        match parse(&buf[..n]).unwrap() {
            Message::Query(q, info) => {
                assert_eq!((q.request_id, q.oid), (7, Oid::ETH_802_3_PERMANENT_ADDRESS));
                assert!(info.is_empty());
            }
            m => panic!("{m:?}"),
        }
        let mac = [0, 0x15, 0x5d, 1, 2, 3];
        let n = build_query_complete(&mut buf, 7, RndisStatus::SUCCESS, &mac).unwrap();
        assert_eq!(n, 30);
        match parse(&buf[..n]).unwrap() {
            Message::QueryComplete(q, info) => {
                assert_eq!(q.info_buffer_offset, 16);
                assert_eq!(info, &mac);
            }
            m => panic!("{m:?}"),
        }
        let n = build_set(
            &mut buf,
            9,
            Oid::GEN_CURRENT_PACKET_FILTER,
            &13u32.to_le_bytes(),
        )
        .unwrap();
        match parse(&buf[..n]).unwrap() {
            Message::Set(s, info) => {
                assert_eq!(s.oid, Oid::GEN_CURRENT_PACKET_FILTER);
                assert_eq!(info, &13u32.to_le_bytes());
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            build_query(&mut buf[..10], 1, Oid::GEN_LINK_SPEED, &[]),
            Err(RndisError::BufferTooSmall { needed: 28 })
        );
    }

    #[test]
    fn other_round_trips() {
        let mut buf = [0u8; 128];
        let ic = InitializeComplete {
            request_id: 1,
            status: RndisStatus::SUCCESS,
            major_version: 1,
            minor_version: 0,
            device_flags: DF_CONNECTIONLESS,
            medium: MEDIUM_802_3,
            max_packets_per_message: 8,
            max_transfer_size: 0xEFFF_FFFF,
            packet_alignment_factor: 3,
            af_list_offset: 0,
            af_list_size: 0,
        };
        let n = build_initialize_complete(&mut buf, &ic).unwrap();
        assert_eq!(n, 52);
        assert_eq!(parse(&buf[..n]), Ok(Message::InitializeComplete(ic)));
        let n = build_initialize(&mut buf, 1, DEFAULT_MAX_TRANSFER_SIZE).unwrap();
        assert_eq!(n, 24);
        assert!(matches!(parse(&buf[..n]), Ok(Message::Initialize(_))));
        let n = build_indicate_status(&mut buf, RndisStatus::MEDIA_CONNECT, &[]).unwrap();
        assert_eq!(
            parse(&buf[..n]),
            Ok(Message::IndicateStatus(
                IndicateStatus {
                    status: RndisStatus::MEDIA_CONNECT,
                    status_buffer_length: 0,
                    status_buffer_offset: 0
                },
                &[][..]
            ))
        );
        let n =
            build_indicate_status(&mut buf, RndisStatus::LINK_SPEED_CHANGE, &[1, 2, 3, 4]).unwrap();
        assert!(matches!(parse(&buf[..n]), Ok(Message::IndicateStatus(_, b)) if b == [1, 2, 3, 4]));
        type B = fn(&mut [u8]) -> Result<usize, RndisError>;
        let builders: [B; 6] = [
            |b| build_set_complete(b, 3, RndisStatus::FAILURE),
            |b| build_halt(b, 3),
            build_reset,
            |b| build_reset_complete(b, RndisStatus::SUCCESS, true),
            |b| build_keepalive(b, 3),
            |b| build_keepalive_complete(b, 3, RndisStatus::SUCCESS),
        ];
        for f in builders {
            let n = f(&mut buf).unwrap();
            let m = parse(&buf[..n]).unwrap();
            assert!(!matches!(m, Message::Other(..)), "{m:?}");
        }
    }

    #[test]
    fn packet_round_trip() {
        let frame: Vec<u8> = (0..60u8).collect();
        let mut buf = [0u8; 256];
        let ppis = [(PpiType::TCPIP_CHECKSUM, 0x5), (PpiType::IEEE_8021Q, 0x123)];
        let n = build_packet(&mut buf, &ppis, &frame).unwrap();
        assert_eq!(n, 44 + 32 + 60);
        // fact sheet §9.5: PPIs at body offset 36, data after them, PPI offset 12.
        assert_eq!(&buf[8..12], &(36u32 + 32).to_le_bytes());
        assert_eq!(&buf[28..32], &36u32.to_le_bytes());
        assert_eq!(&buf[44..56], &[16, 0, 0, 0, 0, 0, 0, 0, 12, 0, 0, 0]);
        match parse(&buf[..n]).unwrap() {
            Message::Packet(p) => {
                assert_eq!(p.data, &frame[..]);
                assert_eq!(p.ppi_u32(PpiType::TCPIP_CHECKSUM), Some(5));
                assert_eq!(p.ppi_u32(PpiType::IEEE_8021Q), Some(0x123));
                assert_eq!(p.ppi_u32(PpiType::NBL_HASH_VALUE), None);
                assert!(p.ppis_valid());
            }
            m => panic!("{m:?}"),
        }
        // No PPIs.
        let n = build_packet(&mut buf, &[], &frame).unwrap();
        match parse(&buf[..n]).unwrap() {
            Message::Packet(p) => {
                assert_eq!(p.data, &frame[..]);
                assert_eq!(p.ppis().count(), 0);
            }
            m => panic!("{m:?}"),
        }
        // Batched: two messages back to back.
        let mut two = Vec::new();
        two.extend_from_slice(&buf[..n]);
        two.extend_from_slice(&buf[..n]);
        let (a, rest) = split_message(&two).unwrap();
        assert_eq!((a.len(), rest.len()), (n, n));
    }

    #[test]
    fn lies_are_errors() {
        let frame = [0xAAu8; 20];
        let mut buf = [0u8; 128];
        let n = build_packet(&mut buf, &[(PpiType::TCPIP_CHECKSUM, 1)], &frame).unwrap();
        // msg_len beyond the bytes.
        assert!(matches!(
            parse(&buf[..n - 1]),
            Err(RndisError::BadLength { .. })
        ));
        // msg_len below the header.
        let mut b = buf;
        b[4] = 4;
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadLength { .. })));
        // data_length past msg_len.
        let mut b = buf;
        b[12] = 21;
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadOffset { .. })));
        // data_offset inside the fixed body.
        let mut b = buf;
        b[8] = 4;
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadOffset { .. })));
        // offset + length overflow.
        let mut b = buf;
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadOffset { .. })));
        // PPI element size lies.
        let mut b = buf;
        b[44] = 40;
        match parse(&b[..n]).unwrap() {
            Message::Packet(p) => {
                assert!(!p.ppis_valid());
                assert_eq!(p.ppi_u32(PpiType::TCPIP_CHECKSUM), None);
            }
            m => panic!("{m:?}"),
        }
        // PPI value offset past its element.
        let mut b = buf;
        b[52] = 17;
        match parse(&b[..n]).unwrap() {
            Message::Packet(p) => assert!(!p.ppis_valid()),
            m => panic!("{m:?}"),
        }
        // PPI size below its header: no infinite loop.
        let mut b = buf;
        b[44] = 0;
        match parse(&b[..n]).unwrap() {
            Message::Packet(p) => assert_eq!(p.ppis().count(), 1),
            m => panic!("{m:?}"),
        }
        // Query complete info outside the message.
        let n = build_query_complete(&mut buf, 1, RndisStatus::SUCCESS, &[1, 2, 3, 4]).unwrap();
        let mut b = buf;
        b[16] = 5;
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadOffset { .. })));
        // ...or overlapping the fixed body.
        let mut b = buf;
        b[20] = 8;
        assert!(matches!(parse(&b[..n]), Err(RndisError::BadOffset { .. })));
        // A short body for a known type.
        assert!(matches!(
            parse(&[0x02, 0, 0, 0x80, 12, 0, 0, 0, 0, 0, 0, 0]),
            Err(RndisError::BadLength { .. })
        ));
        assert_eq!(parse(&[1, 2, 3]), Err(RndisError::TooShort));
        // Unknown types keep their body.
        assert_eq!(
            parse(&[9, 0, 0, 0, 9, 0, 0, 0, 7]),
            Ok(Message::Other(MessageType(9), &[7][..]))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..160), ty in 0usize..14) {
            let _ = parse(&bytes);
            if bytes.len() >= 8 {
                let types = [1u32, 2, 0x8000_0002, 3, 4, 0x8000_0004, 5, 0x8000_0005, 6, 0x8000_0006, 7, 8, 0x8000_0008, 9];
                bytes[..4].copy_from_slice(&types[ty].to_le_bytes());
                let len = bytes.len() as u32;
                bytes[4..8].copy_from_slice(&len.to_le_bytes());
                if let Ok(Message::Packet(p)) = parse(&bytes) {
                    for x in p.ppis() { let _ = x; }
                    let _ = p.ppi_u32(PpiType::TCPIP_CHECKSUM);
                }
            }
        }
    }
}
