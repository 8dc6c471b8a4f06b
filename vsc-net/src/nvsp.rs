//! The NVSP wire protocol (fact sheet §9.1, §9.2): the message types of protocol versions 1, 2,
//! 4, 5, 6 and 6.1, their bodies, status codes, and a validating parser.
//!
//! Every NVSP message is a `msg_type u32` followed by a type-specific body. On the wire the C
//! structures are `__packed`; here each body is a `repr(C)` struct whose trailing padding is an
//! explicit `reserved` field, so it is `IntoBytes` and its size is the packed size rounded up
//! (never read past the 40-byte message). Linux always sends the full 40-byte message
//! ([`NVSP_MESSAGE_SIZE`]); [`NvspMessage`] is that buffer, built by typed constructors.
//! [`parse`] checks that the bytes hold the body its type needs, and that any table the body
//! points at (receive-buffer sections, the indirection table) lies inside the message: the
//! other side is untrusted.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the `nvsp_message` Linux sends and expects (fact sheet §9.1; openvmm
/// `PACKET_SIZE_V61`).
pub const NVSP_MESSAGE_SIZE: usize = 40;
/// The v1 message size (openvmm `PACKET_SIZE_V1`): header + receive-buffer completion with one
/// section.
pub const NVSP_MESSAGE_SIZE_V1: usize = 28;
/// The body bytes of an [`NvspMessage`].
pub const NVSP_BODY_SIZE: usize = NVSP_MESSAGE_SIZE - 4;
/// The transfer-page set id the guest gives its receive buffer (Linux `NETVSC_RECEIVE_BUFFER_ID`).
pub const RECEIVE_BUFFER_ID: u16 = 0xCAFE;
/// The id of the send buffer (Linux `NETVSC_SEND_BUFFER_ID`).
pub const SEND_BUFFER_ID: u16 = 0;
/// `send_buf_section_index` when the packet does not use the send buffer.
pub const NO_SECTION: u32 = 0xFFFF_FFFF;
/// Smallest receive sub-allocation / send section the guest accepts (fact sheet §9.2: ≥ 68,
/// i.e. room for an RNDIS packet header and a minimal frame).
pub const MIN_SECTION_SIZE: u32 = 68;
/// The send section size Hyper-V and openvmm use.
pub const DEFAULT_SEND_SECTION_SIZE: u32 = 6144;
/// Ring size Linux uses for each direction of a netvsc channel (fact sheet §6.2).
pub const RING_SIZE: usize = 512 * 1024;
/// Largest packet a host may send a netvsc guest (fact sheet §6.3).
pub const MAX_INBOUND_PACKET_SIZE: usize = 4624;
/// Most transfer-page ranges in one packet without RSC (fact sheet §9.3).
pub const MAX_XFER_RANGES: usize = 375;
/// Most transfer-page ranges with RSC.
pub const MAX_XFER_RANGES_RSC: usize = 562;
/// Transaction id of packets that want no reply (Linux `VMBUS_RQST_ID_NO_RESPONSE`).
pub const NO_RESPONSE_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FFFD;
/// Entries in the send indirection table (Linux `VRSS_SEND_TAB_SIZE`).
pub const SEND_TABLE_SIZE: usize = 16;
/// Where Linux assumes the indirection table starts for NVSP ≤ v6 (a host bug workaround).
pub const LEGACY_INDIRECTION_TABLE_OFFSET: usize = 40;

/// An NVSP message type (offset 0): an open set.
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
pub struct MessageType(pub u32);

impl MessageType {
    /// None.
    pub const NONE: Self = Self(0);
    /// Guest → host: version probe ([`Init`]).
    pub const INIT: Self = Self(1);
    /// Host → guest: version answer ([`InitComplete`]).
    pub const INIT_COMPLETE: Self = Self(2);
    /// v1: the guest's NDIS version ([`SendNdisVersion`]).
    pub const SEND_NDIS_VERSION: Self = Self(100);
    /// v1: the receive buffer's GPADL ([`SendReceiveBuffer`]).
    pub const SEND_RECEIVE_BUFFER: Self = Self(101);
    /// v1: answer with its sections ([`SendReceiveBufferComplete`] + [`ReceiveBufferSection`]s).
    pub const SEND_RECEIVE_BUFFER_COMPLETE: Self = Self(102);
    /// v1: revoke the receive buffer ([`RevokeBuffer`]).
    pub const REVOKE_RECEIVE_BUFFER: Self = Self(103);
    /// v1: the send buffer's GPADL ([`SendSendBuffer`]).
    pub const SEND_SEND_BUFFER: Self = Self(104);
    /// v1: answer with the section size ([`SendSendBufferComplete`]).
    pub const SEND_SEND_BUFFER_COMPLETE: Self = Self(105);
    /// v1: revoke the send buffer ([`RevokeBuffer`]).
    pub const REVOKE_SEND_BUFFER: Self = Self(106);
    /// v1: an RNDIS message follows ([`SendRndisPacket`]).
    pub const SEND_RNDIS_PACKET: Self = Self(107);
    /// v1: its completion ([`SendRndisPacketComplete`]).
    pub const SEND_RNDIS_PACKET_COMPLETE: Self = Self(108);
    /// v2: chimney (deprecated).
    pub const SEND_CHIMNEY_DELEGATED_BUFFER: Self = Self(109);
    /// v2: receive-buffer allocation (deprecated).
    pub const ALLOC_RXBUF: Self = Self(120);
    /// v2: its completion.
    pub const ALLOC_RXBUF_COMPLETE: Self = Self(121);
    /// v2: free a receive buffer.
    pub const FREE_RXBUF: Self = Self(122);
    /// v2: VMQ RNDIS packet (deprecated).
    pub const SEND_VMQ_RNDIS_PACKET: Self = Self(123);
    /// v2: its completion.
    pub const SEND_VMQ_RNDIS_PACKET_COMPLETE: Self = Self(124);
    /// v2: MTU and capabilities ([`SendNdisConfig`]).
    pub const SEND_NDIS_CONFIG: Self = Self(125);
    /// v2: chimney handle.
    pub const ALLOC_CHIMNEY_HANDLE: Self = Self(126);
    /// v2: its completion.
    pub const ALLOC_CHIMNEY_HANDLE_COMPLETE: Self = Self(127);
    /// v4: a VF is associated ([`SendVfAssociation`]).
    pub const SEND_VF_ASSOCIATION: Self = Self(128);
    /// v4: switch the data path ([`SwitchDataPath`]).
    pub const SWITCH_DATA_PATH: Self = Self(129);
    /// v4: deprecated uplink state.
    pub const UPLINK_CONNECT_STATE_DEPRECATED: Self = Self(130);
    /// v5: extended OID query.
    pub const OID_QUERY_EX: Self = Self(131);
    /// v5: its completion.
    pub const OID_QUERY_EX_COMPLETE: Self = Self(132);
    /// v5: sub-channels ([`SubchannelRequest`] / [`SubchannelComplete`]).
    pub const SUBCHANNEL: Self = Self(133);
    /// v5: the host's send indirection table ([`SendIndirectionTable`]).
    pub const SEND_INDIRECTION_TABLE: Self = Self(134);
    /// v6: PacketDirect API.
    pub const PD_API: Self = Self(135);
    /// v6: PacketDirect batch.
    pub const PD_POST_BATCH: Self = Self(136);

    /// The name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NONE",
            1 => "INIT",
            2 => "INIT_COMPLETE",
            100 => "SEND_NDIS_VERSION",
            101 => "SEND_RECEIVE_BUFFER",
            102 => "SEND_RECEIVE_BUFFER_COMPLETE",
            103 => "REVOKE_RECEIVE_BUFFER",
            104 => "SEND_SEND_BUFFER",
            105 => "SEND_SEND_BUFFER_COMPLETE",
            106 => "REVOKE_SEND_BUFFER",
            107 => "SEND_RNDIS_PACKET",
            108 => "SEND_RNDIS_PACKET_COMPLETE",
            109..=119 => "V2_CHIMNEY",
            120 => "ALLOC_RXBUF",
            121 => "ALLOC_RXBUF_COMPLETE",
            122 => "FREE_RXBUF",
            123 => "SEND_VMQ_RNDIS_PACKET",
            124 => "SEND_VMQ_RNDIS_PACKET_COMPLETE",
            125 => "SEND_NDIS_CONFIG",
            126 => "ALLOC_CHIMNEY_HANDLE",
            127 => "ALLOC_CHIMNEY_HANDLE_COMPLETE",
            128 => "SEND_VF_ASSOCIATION",
            129 => "SWITCH_DATA_PATH",
            130 => "UPLINK_CONNECT_STATE_DEPRECATED",
            131 => "OID_QUERY_EX",
            132 => "OID_QUERY_EX_COMPLETE",
            133 => "SUBCHANNEL",
            134 => "SEND_INDIRECTION_TABLE",
            135 => "PD_API",
            136 => "PD_POST_BATCH",
            _ => return None,
        })
    }

    /// The body size a message of this type must carry after the 4-byte type (the packed C
    /// size), or `None` for a type this module does not interpret.
    pub const fn body_len(self) -> Option<usize> {
        Some(match self.0 {
            1 => size_of::<Init>(),
            2 => size_of::<InitComplete>(),
            100 => size_of::<SendNdisVersion>(),
            101 | 104 => 6,
            102 => size_of::<SendReceiveBufferComplete>(),
            103 | 106 => 2,
            105 => size_of::<SendSendBufferComplete>(),
            107 => size_of::<SendRndisPacket>(),
            108 => size_of::<SendRndisPacketComplete>(),
            125 => size_of::<SendNdisConfig>(),
            128 => size_of::<SendVfAssociation>(),
            129 => size_of::<SwitchDataPath>(),
            // Request and completion share the type; both are 8 bytes.
            133 => size_of::<SubchannelRequest>(),
            134 => size_of::<SendIndirectionTable>(),
            _ => return None,
        })
    }
}
open_enum_debug!(MessageType, "MessageType({})");

/// An NVSP status (fact sheet §9.1). Success is **1**.
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
pub struct Status(pub u32);

impl Status {
    /// No status.
    pub const NONE: Self = Self(0);
    /// Success.
    pub const SUCCESS: Self = Self(1);
    /// Failure (also: the version is not supported).
    pub const FAIL: Self = Self(2);
    /// The version is too new for the host.
    pub const PROTOCOL_TOO_NEW: Self = Self(3);
    /// The version is too old for the host.
    pub const PROTOCOL_TOO_OLD: Self = Self(4);
    /// A malformed RNDIS packet.
    pub const INVALID_RNDIS_PACKET: Self = Self(5);
    /// Busy.
    pub const BUSY: Self = Self(6);
    /// Unsupported protocol.
    pub const PROTOCOL_UNSUPPORTED: Self = Self(7);

    /// Whether this is success.
    pub const fn is_success(self) -> bool {
        self.0 == 1
    }

    /// The name of a known status.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NONE",
            1 => "SUCCESS",
            2 => "FAIL",
            3 => "PROTOCOL_TOO_NEW",
            4 => "PROTOCOL_TOO_OLD",
            5 => "INVALID_RNDIS_PACKET",
            6 => "BUSY",
            7 => "PROTOCOL_UNSUPPORTED",
            _ => return None,
        })
    }
}
open_enum_debug!(Status, "Status({})");

/// An NVSP protocol version (fact sheet §9.1).
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
pub struct ProtocolVersion(pub u32);

impl ProtocolVersion {
    /// v1.
    pub const V1: Self = Self(0x0000_0002);
    /// v2: NDIS config (MTU, capabilities).
    pub const V2: Self = Self(0x0003_0002);
    /// v4: VF association, data path switch.
    pub const V4: Self = Self(0x0004_0000);
    /// v5: sub-channels, indirection table, NDIS 6.30.
    pub const V5: Self = Self(0x0005_0000);
    /// v6: PacketDirect.
    pub const V6: Self = Self(0x0006_0000);
    /// v6.1: RSC.
    pub const V61: Self = Self(0x0006_0001);
    /// The versions in the order a guest tries them (Linux: newest first).
    pub const DESCENDING: [Self; 6] = [Self::V61, Self::V6, Self::V5, Self::V4, Self::V2, Self::V1];

    /// Whether this is one of the six known versions.
    pub const fn is_known(self) -> bool {
        matches!(
            self.0,
            0x2 | 0x3_0002 | 0x4_0000 | 0x5_0000 | 0x6_0000 | 0x6_0001
        )
    }

    /// The NDIS version a guest announces with this NVSP version (fact sheet §9.2 step 2):
    /// 6.1 up to v4, 6.30 from v5.
    pub const fn ndis_version(self) -> (u32, u32) {
        if self.0 >= Self::V5.0 {
            (6, 30)
        } else {
            (6, 1)
        }
    }

    /// The name of a known version.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x2 => "v1",
            0x3_0002 => "v2",
            0x4_0000 => "v4",
            0x5_0000 => "v5",
            0x6_0000 => "v6",
            0x6_0001 => "v6.1",
            _ => return None,
        })
    }
}
open_enum_debug!(ProtocolVersion, "ProtocolVersion({:#x})");

/// `channel_type` of SEND_RNDIS_PACKET.
pub mod channel_type {
    /// Data (RNDIS PACKET).
    pub const DATA: u32 = 0;
    /// Control (every other RNDIS message).
    pub const CONTROL: u32 = 1;
}

/// `active_datapath` of SWITCH_DATA_PATH.
pub mod datapath {
    /// The synthetic path (this channel).
    pub const SYNTHETIC: u32 = 0;
    /// The SR-IOV virtual function.
    pub const VF: u32 = 1;
}

/// `op` of a SUBCHANNEL request.
pub mod subchannel_op {
    /// None.
    pub const NONE: u32 = 0;
    /// Allocate sub-channels.
    pub const ALLOCATE: u32 = 1;
}

/// The 4-byte header of every NVSP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NvspHeader {
    /// Offset 0.
    pub msg_type: MessageType,
}

/// INIT body (offset 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Init {
    /// Offset 4.
    pub min_protocol_version: ProtocolVersion,
    /// Offset 8.
    pub max_protocol_version: ProtocolVersion,
}

/// INIT_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitComplete {
    /// Offset 4.
    pub negotiated_protocol_version: ProtocolVersion,
    /// Offset 8.
    pub max_mdl_chain_length: u32,
    /// Offset 12.
    pub status: Status,
}

/// SEND_NDIS_VERSION body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendNdisVersion {
    /// Offset 4.
    pub ndis_major: u32,
    /// Offset 8.
    pub ndis_minor: u32,
}

/// SEND_RECEIVE_BUFFER body (packed size 6; `reserved` is the padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendReceiveBuffer {
    /// Offset 4.
    pub gpadl_handle: u32,
    /// Offset 8: the transfer-page set id ([`RECEIVE_BUFFER_ID`]).
    pub id: u16,
    /// Offset 10: not on the wire in C (packed); zero.
    pub reserved: u16,
}

/// SEND_SEND_BUFFER body: same layout as [`SendReceiveBuffer`].
pub type SendSendBuffer = SendReceiveBuffer;

/// One receive-buffer section in SEND_RECEIVE_BUFFER_COMPLETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ReceiveBufferSection {
    /// Byte offset of the section in the buffer.
    pub offset: u32,
    /// Size of each sub-allocation.
    pub sub_alloc_size: u32,
    /// Number of sub-allocations.
    pub num_sub_allocs: u32,
    /// End of the section (offset + size).
    pub end_offset: u32,
}

/// SEND_RECEIVE_BUFFER_COMPLETE body head; `num_sections` [`ReceiveBufferSection`]s follow at
/// offset 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendReceiveBufferComplete {
    /// Offset 4.
    pub status: Status,
    /// Offset 8.
    pub num_sections: u32,
}

/// REVOKE_RECEIVE_BUFFER / REVOKE_SEND_BUFFER body (packed size 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RevokeBuffer {
    /// Offset 4.
    pub id: u16,
    /// Offset 6: padding, zero.
    pub reserved: u16,
}

/// SEND_SEND_BUFFER_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendSendBufferComplete {
    /// Offset 4.
    pub status: Status,
    /// Offset 8: every send section has this size.
    pub section_size: u32,
}

/// SEND_RNDIS_PACKET body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendRndisPacket {
    /// Offset 4: [`channel_type`].
    pub channel_type: u32,
    /// Offset 8: send-buffer section, or [`NO_SECTION`].
    pub send_buffer_section_index: u32,
    /// Offset 12: bytes used in the section (0 without one).
    pub send_buffer_section_size: u32,
}

/// SEND_RNDIS_PACKET_COMPLETE body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendRndisPacketComplete {
    /// Offset 4.
    pub status: Status,
}

/// The capability bits of SEND_NDIS_CONFIG (fact sheet §9.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VscCapability {
    /// Bit 0.
    pub vmq: bool,
    /// Bit 1.
    pub chimney: bool,
    /// Bit 2.
    pub sriov: bool,
    /// Bit 3: 802.1Q tags (Linux always sets it).
    pub ieee8021q: bool,
    /// Bit 4.
    pub correlation_id: bool,
    /// Bit 5.
    pub teaming: bool,
    /// Bit 6.
    pub vsubnetid: bool,
    /// Bit 7: receive segment coalescing.
    pub rsc: bool,
    /// Bits 63:8.
    #[bits(56)]
    pub reserved: u64,
}

/// SEND_NDIS_CONFIG body (v2+). The capability sits at message offset 12 (unaligned on the
/// wire; zerocopy reads copy, so that is fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendNdisConfig {
    /// Offset 4: MTU + 14 (the Ethernet header), normally 1514.
    pub mtu: u32,
    /// Offset 8.
    pub reserved: u32,
    /// Offset 12.
    pub capability: VscCapability,
}

/// SEND_VF_ASSOCIATION body (v4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendVfAssociation {
    /// Offset 4: non-zero if a VF is allocated.
    pub allocated: u32,
    /// Offset 8: the VF's serial number.
    pub serial: u32,
}

/// SWITCH_DATA_PATH body (v4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SwitchDataPath {
    /// Offset 4: [`datapath`].
    pub active_datapath: u32,
}

/// SUBCHANNEL request body (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SubchannelRequest {
    /// Offset 4: [`subchannel_op`].
    pub op: u32,
    /// Offset 8: sub-channels wanted.
    pub num_subchannels: u32,
}

/// SUBCHANNEL completion body (v5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SubchannelComplete {
    /// Offset 4.
    pub status: Status,
    /// Offset 8: sub-channels the host will offer.
    pub num_subchannels: u32,
}

/// SEND_INDIRECTION_TABLE body (v5): `count` u32 channel indices at `offset` bytes from the
/// start of the NVSP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct SendIndirectionTable {
    /// Offset 4.
    pub count: u32,
    /// Offset 8: from the start of the message (12 when the table follows directly).
    pub offset: u32,
}

const _: () = {
    // fact sheet §9.1 body layouts (offsets from the message start = 4 + body offset).
    assert!(size_of::<NvspHeader>() == 4);
    assert!(size_of::<Init>() == 8);
    assert!(size_of::<InitComplete>() == 12);
    assert!(offset_of!(InitComplete, status) == 8);
    assert!(size_of::<SendNdisVersion>() == 8);
    assert!(size_of::<SendReceiveBuffer>() == 8);
    assert!(offset_of!(SendReceiveBuffer, id) == 4);
    assert!(size_of::<ReceiveBufferSection>() == 16);
    assert!(size_of::<SendReceiveBufferComplete>() == 8);
    assert!(size_of::<RevokeBuffer>() == 4);
    assert!(size_of::<SendSendBufferComplete>() == 8);
    assert!(size_of::<SendRndisPacket>() == 12);
    assert!(offset_of!(SendRndisPacket, send_buffer_section_index) == 4);
    assert!(offset_of!(SendRndisPacket, send_buffer_section_size) == 8);
    assert!(size_of::<SendRndisPacketComplete>() == 4);
    assert!(size_of::<SendNdisConfig>() == 16);
    assert!(offset_of!(SendNdisConfig, capability) == 8);
    assert!(size_of::<SendVfAssociation>() == 8);
    assert!(size_of::<SwitchDataPath>() == 4);
    assert!(size_of::<SubchannelRequest>() == 8);
    assert!(size_of::<SubchannelComplete>() == 8);
    assert!(size_of::<SendIndirectionTable>() == 8);
    // v1 size = header + receive-buffer completion with one section.
    assert!(
        4 + size_of::<SendReceiveBufferComplete>() + size_of::<ReceiveBufferSection>()
            == NVSP_MESSAGE_SIZE_V1
    );
    assert!(size_of::<NvspMessage>() == NVSP_MESSAGE_SIZE);
};

/// A whole 40-byte NVSP message as Linux sends it: the type and a zero-padded body.
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NvspMessage {
    /// Offset 0.
    pub msg_type: MessageType,
    /// Offset 4: the body, zero-padded.
    pub body: [u8; NVSP_BODY_SIZE],
}

impl core::fmt::Debug for NvspMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NvspMessage")
            .field("msg_type", &self.msg_type)
            .field("body", &&self.body[..])
            .finish()
    }
}

impl NvspMessage {
    /// A message of `msg_type` whose body starts with `body` (at most 36 bytes are used; every
    /// body type in this module fits).
    pub fn new<T: IntoBytes + Immutable>(msg_type: MessageType, body: &T) -> Self {
        Self::with_body_bytes(msg_type, body.as_bytes())
    }

    /// A message of `msg_type` with raw body bytes (truncated to 36).
    pub fn with_body_bytes(msg_type: MessageType, body: &[u8]) -> Self {
        let mut m = Self {
            msg_type,
            body: [0; NVSP_BODY_SIZE],
        };
        let n = body.len().min(NVSP_BODY_SIZE);
        m.body[..n].copy_from_slice(&body[..n]);
        m
    }

    /// INIT {min = max = `version`} (Linux probes one version at a time).
    pub fn init(version: ProtocolVersion) -> Self {
        Self::new(
            MessageType::INIT,
            &Init {
                min_protocol_version: version,
                max_protocol_version: version,
            },
        )
    }

    /// INIT_COMPLETE.
    pub fn init_complete(version: ProtocolVersion, status: Status) -> Self {
        Self::new(
            MessageType::INIT_COMPLETE,
            &InitComplete {
                negotiated_protocol_version: version,
                max_mdl_chain_length: 0,
                status,
            },
        )
    }

    /// SEND_NDIS_VERSION.
    pub fn send_ndis_version(major: u32, minor: u32) -> Self {
        Self::new(
            MessageType::SEND_NDIS_VERSION,
            &SendNdisVersion {
                ndis_major: major,
                ndis_minor: minor,
            },
        )
    }

    /// SEND_NDIS_CONFIG: `mtu` includes the 14-byte Ethernet header.
    pub fn send_ndis_config(mtu: u32, capability: VscCapability) -> Self {
        Self::new(
            MessageType::SEND_NDIS_CONFIG,
            &SendNdisConfig {
                mtu,
                reserved: 0,
                capability,
            },
        )
    }

    /// SEND_RECEIVE_BUFFER.
    pub fn send_receive_buffer(gpadl_handle: u32, id: u16) -> Self {
        Self::new(
            MessageType::SEND_RECEIVE_BUFFER,
            &SendReceiveBuffer {
                gpadl_handle,
                id,
                reserved: 0,
            },
        )
    }

    /// SEND_RECEIVE_BUFFER_COMPLETE with up to one section (all that fits the 40-byte message;
    /// hosts send one). More sections than fit are dropped from the body but still counted in
    /// `num_sections` only as far as they were written.
    pub fn send_receive_buffer_complete(
        status: Status,
        section: Option<ReceiveBufferSection>,
    ) -> Self {
        let mut m = Self::new(
            MessageType::SEND_RECEIVE_BUFFER_COMPLETE,
            &SendReceiveBufferComplete {
                status,
                num_sections: section.is_some() as u32,
            },
        );
        if let Some(s) = section {
            m.body[8..24].copy_from_slice(s.as_bytes());
        }
        m
    }

    /// REVOKE_RECEIVE_BUFFER.
    pub fn revoke_receive_buffer(id: u16) -> Self {
        Self::new(
            MessageType::REVOKE_RECEIVE_BUFFER,
            &RevokeBuffer { id, reserved: 0 },
        )
    }

    /// SEND_SEND_BUFFER.
    pub fn send_send_buffer(gpadl_handle: u32, id: u16) -> Self {
        Self::new(
            MessageType::SEND_SEND_BUFFER,
            &SendSendBuffer {
                gpadl_handle,
                id,
                reserved: 0,
            },
        )
    }

    /// SEND_SEND_BUFFER_COMPLETE.
    pub fn send_send_buffer_complete(status: Status, section_size: u32) -> Self {
        Self::new(
            MessageType::SEND_SEND_BUFFER_COMPLETE,
            &SendSendBufferComplete {
                status,
                section_size,
            },
        )
    }

    /// REVOKE_SEND_BUFFER.
    pub fn revoke_send_buffer(id: u16) -> Self {
        Self::new(
            MessageType::REVOKE_SEND_BUFFER,
            &RevokeBuffer { id, reserved: 0 },
        )
    }

    /// SEND_RNDIS_PACKET: `channel_type` from [`channel_type`]; `section` = (index, bytes) in
    /// the send buffer, or `None` for GPA-direct data.
    pub fn send_rndis_packet(channel_type: u32, section: Option<(u32, u32)>) -> Self {
        let (idx, size) = section.unwrap_or((NO_SECTION, 0));
        Self::new(
            MessageType::SEND_RNDIS_PACKET,
            &SendRndisPacket {
                channel_type,
                send_buffer_section_index: idx,
                send_buffer_section_size: size,
            },
        )
    }

    /// SEND_RNDIS_PACKET_COMPLETE.
    pub fn send_rndis_packet_complete(status: Status) -> Self {
        Self::new(
            MessageType::SEND_RNDIS_PACKET_COMPLETE,
            &SendRndisPacketComplete { status },
        )
    }

    /// SUBCHANNEL request (allocate `n`).
    pub fn subchannel_request(n: u32) -> Self {
        Self::new(
            MessageType::SUBCHANNEL,
            &SubchannelRequest {
                op: subchannel_op::ALLOCATE,
                num_subchannels: n,
            },
        )
    }

    /// SUBCHANNEL completion.
    pub fn subchannel_complete(status: Status, n: u32) -> Self {
        Self::new(
            MessageType::SUBCHANNEL,
            &SubchannelComplete {
                status,
                num_subchannels: n,
            },
        )
    }

    /// SWITCH_DATA_PATH.
    pub fn switch_data_path(active_datapath: u32) -> Self {
        Self::new(
            MessageType::SWITCH_DATA_PATH,
            &SwitchDataPath { active_datapath },
        )
    }

    /// SEND_VF_ASSOCIATION.
    pub fn send_vf_association(allocated: bool, serial: u32) -> Self {
        Self::new(
            MessageType::SEND_VF_ASSOCIATION,
            &SendVfAssociation {
                allocated: allocated as u32,
                serial,
            },
        )
    }
}

/// Builds SEND_INDIRECTION_TABLE with the table right after the body (offset 12) into `out`;
/// returns the bytes written (12 + 4 × entries), or `None` if `out` is too small.
pub fn build_indirection_table(out: &mut [u8], table: &[u32]) -> Option<usize> {
    let len = 12usize.checked_add(table.len().checked_mul(4)?)?;
    let out = out.get_mut(..len)?;
    out[..4].copy_from_slice(MessageType::SEND_INDIRECTION_TABLE.as_bytes());
    out[4..12].copy_from_slice(
        SendIndirectionTable {
            count: table.len() as u32,
            offset: 12,
        }
        .as_bytes(),
    );
    for (c, v) in out[12..].chunks_exact_mut(4).zip(table) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    Some(len)
}

/// Why NVSP bytes did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvspError {
    /// Fewer bytes than the 4-byte type.
    TooShort,
    /// The message is shorter than its type's body.
    Truncated {
        /// The type.
        msg_type: MessageType,
        /// Bytes present.
        len: usize,
    },
    /// SEND_RECEIVE_BUFFER_COMPLETE claims more sections than the message holds.
    BadSections {
        /// Sections claimed.
        num_sections: u32,
    },
    /// SEND_INDIRECTION_TABLE points outside the message.
    BadIndirectionTable {
        /// Entries claimed.
        count: u32,
        /// Offset claimed.
        offset: u32,
    },
}

impl core::fmt::Display for NvspError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("NVSP message shorter than its 4-byte type"),
            Self::Truncated { msg_type, len } => {
                write!(f, "NVSP {msg_type:?} message truncated to {len} bytes")
            }
            Self::BadSections { num_sections } => write!(
                f,
                "NVSP receive-buffer completion claims {num_sections} sections beyond the message"
            ),
            Self::BadIndirectionTable { count, offset } => write!(
                f,
                "NVSP indirection table ({count} entries at offset {offset}) outside the message"
            ),
        }
    }
}

/// A list of little-endian u32 in untrusted bytes (any alignment).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct U32List<'a>(&'a [u8]);

impl<'a> U32List<'a> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.len() < 4
    }

    /// Entry `i`.
    pub fn get(&self, i: usize) -> Option<u32> {
        let b = self
            .0
            .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The entries.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl core::fmt::Debug for U32List<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The receive-buffer sections of a SEND_RECEIVE_BUFFER_COMPLETE, checked to lie inside the
/// message.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Sections<'a>(&'a [u8]);

impl<'a> Sections<'a> {
    /// Number of sections.
    pub fn len(&self) -> usize {
        self.0.len() / size_of::<ReceiveBufferSection>()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Section `i`.
    pub fn get(&self, i: usize) -> Option<ReceiveBufferSection> {
        self.iter().nth(i)
    }

    /// The sections.
    pub fn iter(&self) -> impl Iterator<Item = ReceiveBufferSection> + 'a {
        self.0
            .chunks_exact(size_of::<ReceiveBufferSection>())
            .filter_map(|c| ReceiveBufferSection::read_from_bytes(c).ok())
    }
}

impl core::fmt::Debug for Sections<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A parsed NVSP message. SUBCHANNEL is one type for both directions; the parser returns
/// [`Message::Subchannel`] with the raw 8 bytes interpreted either way by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// INIT.
    Init(Init),
    /// INIT_COMPLETE.
    InitComplete(InitComplete),
    /// SEND_NDIS_VERSION.
    SendNdisVersion(SendNdisVersion),
    /// SEND_RECEIVE_BUFFER.
    SendReceiveBuffer(SendReceiveBuffer),
    /// SEND_RECEIVE_BUFFER_COMPLETE with its sections.
    SendReceiveBufferComplete(SendReceiveBufferComplete, Sections<'a>),
    /// REVOKE_RECEIVE_BUFFER.
    RevokeReceiveBuffer(RevokeBuffer),
    /// SEND_SEND_BUFFER.
    SendSendBuffer(SendSendBuffer),
    /// SEND_SEND_BUFFER_COMPLETE.
    SendSendBufferComplete(SendSendBufferComplete),
    /// REVOKE_SEND_BUFFER.
    RevokeSendBuffer(RevokeBuffer),
    /// SEND_RNDIS_PACKET.
    SendRndisPacket(SendRndisPacket),
    /// SEND_RNDIS_PACKET_COMPLETE.
    SendRndisPacketComplete(SendRndisPacketComplete),
    /// SEND_NDIS_CONFIG.
    SendNdisConfig(SendNdisConfig),
    /// SEND_VF_ASSOCIATION.
    SendVfAssociation(SendVfAssociation),
    /// SWITCH_DATA_PATH.
    SwitchDataPath(SwitchDataPath),
    /// SUBCHANNEL as a request ({op, n}); the same bytes read as a completion are
    /// [`Message::subchannel_complete`].
    Subchannel(SubchannelRequest),
    /// SEND_INDIRECTION_TABLE with its entries (at the message's own `offset`).
    SendIndirectionTable(SendIndirectionTable, U32List<'a>),
    /// Any other type, with its body bytes.
    Other(MessageType, &'a [u8]),
}

impl Message<'_> {
    /// The type of the message.
    pub fn msg_type(&self) -> MessageType {
        match self {
            Self::Init(_) => MessageType::INIT,
            Self::InitComplete(_) => MessageType::INIT_COMPLETE,
            Self::SendNdisVersion(_) => MessageType::SEND_NDIS_VERSION,
            Self::SendReceiveBuffer(_) => MessageType::SEND_RECEIVE_BUFFER,
            Self::SendReceiveBufferComplete(..) => MessageType::SEND_RECEIVE_BUFFER_COMPLETE,
            Self::RevokeReceiveBuffer(_) => MessageType::REVOKE_RECEIVE_BUFFER,
            Self::SendSendBuffer(_) => MessageType::SEND_SEND_BUFFER,
            Self::SendSendBufferComplete(_) => MessageType::SEND_SEND_BUFFER_COMPLETE,
            Self::RevokeSendBuffer(_) => MessageType::REVOKE_SEND_BUFFER,
            Self::SendRndisPacket(_) => MessageType::SEND_RNDIS_PACKET,
            Self::SendRndisPacketComplete(_) => MessageType::SEND_RNDIS_PACKET_COMPLETE,
            Self::SendNdisConfig(_) => MessageType::SEND_NDIS_CONFIG,
            Self::SendVfAssociation(_) => MessageType::SEND_VF_ASSOCIATION,
            Self::SwitchDataPath(_) => MessageType::SWITCH_DATA_PATH,
            Self::Subchannel(_) => MessageType::SUBCHANNEL,
            Self::SendIndirectionTable(..) => MessageType::SEND_INDIRECTION_TABLE,
            Self::Other(t, _) => *t,
        }
    }

    /// A SUBCHANNEL message read as the host's completion {status, n}.
    pub fn subchannel_complete(&self) -> Option<SubchannelComplete> {
        match self {
            Self::Subchannel(r) => Some(SubchannelComplete {
                status: Status(r.op),
                num_subchannels: r.num_subchannels,
            }),
            _ => None,
        }
    }
}

/// Reads a `T` from the start of `body`; the message is already checked to be long enough.
fn body<T: FromBytes>(msg_type: MessageType, b: &[u8]) -> Result<T, NvspError> {
    T::read_from_prefix(b)
        .map(|(v, _)| v)
        .map_err(|_| NvspError::Truncated {
            msg_type,
            len: b.len() + 4,
        })
}

/// Parses one NVSP message (e.g. the payload of a VMBus packet, which may carry trailing
/// padding). Bodies shorter than their packed C size are errors; receive-buffer sections and
/// the indirection table must lie inside `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, NvspError> {
    let Ok((h, b)) = NvspHeader::read_from_prefix(bytes) else {
        return Err(NvspError::TooShort);
    };
    let t = h.msg_type;
    if let Some(need) = t.body_len() {
        if b.len() < need {
            return Err(NvspError::Truncated {
                msg_type: t,
                len: bytes.len(),
            });
        }
    }
    // Packed bodies (6 or 2 bytes) are shorter than their padded Rust types: read through a
    // zero-extended copy.
    let mut padded = [0u8; 16];
    let n = b.len().min(16);
    padded[..n].copy_from_slice(&b[..n]);
    Ok(match t {
        MessageType::INIT => Message::Init(body(t, b)?),
        MessageType::INIT_COMPLETE => Message::InitComplete(body(t, b)?),
        MessageType::SEND_NDIS_VERSION => Message::SendNdisVersion(body(t, b)?),
        MessageType::SEND_RECEIVE_BUFFER => Message::SendReceiveBuffer(body(t, &padded)?),
        MessageType::SEND_RECEIVE_BUFFER_COMPLETE => {
            let head: SendReceiveBufferComplete = body(t, b)?;
            let rest = &b[size_of::<SendReceiveBufferComplete>()..];
            let need = (head.num_sections as usize)
                .checked_mul(size_of::<ReceiveBufferSection>())
                .filter(|&n| n <= rest.len())
                .ok_or(NvspError::BadSections {
                    num_sections: head.num_sections,
                })?;
            Message::SendReceiveBufferComplete(head, Sections(&rest[..need]))
        }
        MessageType::REVOKE_RECEIVE_BUFFER => Message::RevokeReceiveBuffer(body(t, &padded)?),
        MessageType::SEND_SEND_BUFFER => Message::SendSendBuffer(body(t, &padded)?),
        MessageType::SEND_SEND_BUFFER_COMPLETE => Message::SendSendBufferComplete(body(t, b)?),
        MessageType::REVOKE_SEND_BUFFER => Message::RevokeSendBuffer(body(t, &padded)?),
        MessageType::SEND_RNDIS_PACKET => Message::SendRndisPacket(body(t, b)?),
        MessageType::SEND_RNDIS_PACKET_COMPLETE => Message::SendRndisPacketComplete(body(t, b)?),
        MessageType::SEND_NDIS_CONFIG => Message::SendNdisConfig(body(t, b)?),
        MessageType::SEND_VF_ASSOCIATION => Message::SendVfAssociation(body(t, b)?),
        MessageType::SWITCH_DATA_PATH => Message::SwitchDataPath(body(t, b)?),
        MessageType::SUBCHANNEL => Message::Subchannel(body(t, b)?),
        MessageType::SEND_INDIRECTION_TABLE => {
            let head: SendIndirectionTable = body(t, b)?;
            let table = indirection_table(bytes, head.offset as usize, head.count)?;
            Message::SendIndirectionTable(head, table)
        }
        _ => Message::Other(t, b),
    })
}

/// The `count` u32 entries at `offset` from the start of `message`, if they lie inside it.
/// (For NVSP ≤ v6 Linux ignores the host's offset and uses
/// [`LEGACY_INDIRECTION_TABLE_OFFSET`]; a guest may call this with that offset.)
pub fn indirection_table(
    message: &[u8],
    offset: usize,
    count: u32,
) -> Result<U32List<'_>, NvspError> {
    let err = NvspError::BadIndirectionTable {
        count,
        offset: offset as u32,
    };
    let len = (count as usize).checked_mul(4).ok_or(err)?;
    let end = offset.checked_add(len).ok_or(err)?;
    if offset < 12 || end > message.len() {
        return Err(err);
    }
    Ok(U32List(&message[offset..end]))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    // fact sheet §9.1: versions, types, status values.
    #[test]
    fn values() {
        assert_eq!(ProtocolVersion::V1.0, 2);
        assert_eq!(ProtocolVersion::V2.0, 0x30002);
        assert_eq!(ProtocolVersion::V4.0, 0x40000);
        assert_eq!(ProtocolVersion::V5.0, 0x50000);
        assert_eq!(ProtocolVersion::V6.0, 0x60000);
        assert_eq!(ProtocolVersion::V61.0, 0x60001);
        assert!(ProtocolVersion::DESCENDING.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(ProtocolVersion::V4.ndis_version(), (6, 1));
        assert_eq!(ProtocolVersion::V5.ndis_version(), (6, 30));
        assert_eq!(MessageType::SEND_NDIS_VERSION.0, 100);
        assert_eq!(MessageType::SEND_RNDIS_PACKET_COMPLETE.0, 108);
        assert_eq!(MessageType::SEND_NDIS_CONFIG.0, 125);
        assert_eq!(MessageType::SEND_VF_ASSOCIATION.0, 128);
        assert_eq!(MessageType::SWITCH_DATA_PATH.0, 129);
        assert_eq!(MessageType::SUBCHANNEL.0, 133);
        assert_eq!(MessageType::SEND_INDIRECTION_TABLE.0, 134);
        assert_eq!(MessageType::PD_POST_BATCH.0, 136);
        assert_eq!(Status::SUCCESS.0, 1);
        assert_eq!(Status::PROTOCOL_UNSUPPORTED.0, 7);
        assert!(!Status::NONE.is_success());
        assert_eq!(std::format!("{:?}", MessageType(999)), "MessageType(999)");
    }

    // fact sheet §9.1: byte offsets in the 40-byte message.
    #[test]
    fn message_bytes() {
        let m = NvspMessage::init(ProtocolVersion::V61);
        let b = m.as_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[..12], &[1, 0, 0, 0, 1, 0, 6, 0, 1, 0, 6, 0]);
        let m = NvspMessage::send_receive_buffer(0x1234, RECEIVE_BUFFER_ID);
        assert_eq!(
            &m.as_bytes()[..10],
            &[101, 0, 0, 0, 0x34, 0x12, 0, 0, 0xFE, 0xCA]
        );
        let m = NvspMessage::send_rndis_packet(channel_type::CONTROL, None);
        assert_eq!(
            &m.as_bytes()[..16],
            &[107, 0, 0, 0, 1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
        );
        let caps = VscCapability::new().with_ieee8021q(true).with_rsc(true);
        let m = NvspMessage::send_ndis_config(1514, caps);
        assert_eq!(&m.as_bytes()[4..8], &1514u32.to_le_bytes());
        assert_eq!(&m.as_bytes()[12..20], &0x88u64.to_le_bytes());
    }

    #[test]
    fn round_trips() {
        let sec = ReceiveBufferSection {
            offset: 0,
            sub_alloc_size: 1728,
            num_sub_allocs: 100,
            end_offset: 172800,
        };
        let m = NvspMessage::send_receive_buffer_complete(Status::SUCCESS, Some(sec));
        // A v1-sized message holds the one section.
        match parse(&m.as_bytes()[..NVSP_MESSAGE_SIZE_V1]).unwrap() {
            Message::SendReceiveBufferComplete(h, s) => {
                assert_eq!(h.status, Status::SUCCESS);
                assert_eq!(s.len(), 1);
                assert_eq!(s.get(0), Some(sec));
            }
            other => panic!("{other:?}"),
        }
        let cases = [
            NvspMessage::init(ProtocolVersion::V5),
            NvspMessage::init_complete(ProtocolVersion::V5, Status::SUCCESS),
            NvspMessage::send_ndis_version(6, 30),
            NvspMessage::send_receive_buffer(7, RECEIVE_BUFFER_ID),
            NvspMessage::revoke_receive_buffer(RECEIVE_BUFFER_ID),
            NvspMessage::send_send_buffer(8, SEND_BUFFER_ID),
            NvspMessage::send_send_buffer_complete(Status::SUCCESS, 6144),
            NvspMessage::revoke_send_buffer(0),
            NvspMessage::send_rndis_packet(channel_type::DATA, Some((3, 100))),
            NvspMessage::send_rndis_packet_complete(Status::SUCCESS),
            NvspMessage::send_ndis_config(1514, VscCapability::new()),
            NvspMessage::send_vf_association(true, 9),
            NvspMessage::switch_data_path(datapath::VF),
            NvspMessage::subchannel_request(3),
        ];
        for m in cases {
            let p = parse(m.as_bytes()).unwrap();
            assert_eq!(p.msg_type(), m.msg_type);
        }
        match parse(NvspMessage::init_complete(ProtocolVersion::V2, Status::FAIL).as_bytes()) {
            Ok(Message::InitComplete(c)) => {
                assert_eq!(c.negotiated_protocol_version, ProtocolVersion::V2);
                assert_eq!(c.status, Status::FAIL);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(NvspMessage::subchannel_complete(Status::SUCCESS, 2).as_bytes())
            .unwrap()
            .subchannel_complete()
            .unwrap();
        assert_eq!((c.status, c.num_subchannels), (Status::SUCCESS, 2));
        // Packed 6-byte body parses.
        let m = NvspMessage::send_receive_buffer(0xAABB, 0xCAFE);
        assert_eq!(
            parse(&m.as_bytes()[..10]).unwrap(),
            Message::SendReceiveBuffer(SendReceiveBuffer {
                gpadl_handle: 0xAABB,
                id: 0xCAFE,
                reserved: 0
            })
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse(&[1, 0]), Err(NvspError::TooShort));
        let m = NvspMessage::init_complete(ProtocolVersion::V1, Status::SUCCESS);
        assert_eq!(
            parse(&m.as_bytes()[..12]),
            Err(NvspError::Truncated {
                msg_type: MessageType::INIT_COMPLETE,
                len: 12
            })
        );
        let mut m = NvspMessage::send_receive_buffer_complete(Status::SUCCESS, None);
        m.body[4] = 3; // 3 sections, room for 1
        assert_eq!(
            parse(m.as_bytes()),
            Err(NvspError::BadSections { num_sections: 3 })
        );
        m.body[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(m.as_bytes()).is_err());
        // Unknown types are kept.
        assert_eq!(
            parse(&[200, 0, 0, 0, 9]),
            Ok(Message::Other(MessageType(200), &[9][..]))
        );
    }

    #[test]
    fn indirection() {
        let mut buf = [0u8; 12 + 64];
        let table: std::vec::Vec<u32> = (0..16).map(|i| i % 3).collect();
        let n = build_indirection_table(&mut buf, &table).unwrap();
        assert_eq!(n, 76);
        match parse(&buf[..n]).unwrap() {
            Message::SendIndirectionTable(h, t) => {
                assert_eq!((h.count, h.offset), (16, 12));
                assert_eq!(t.iter().collect::<std::vec::Vec<_>>(), table);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&buf[..n - 1]).is_err());
        buf[8] = 200; // offset past the end
        assert!(parse(&buf[..n]).is_err());
        assert!(build_indirection_table(&mut buf[..20], &table).is_none());
        assert!(indirection_table(&buf, LEGACY_INDIRECTION_TABLE_OFFSET, 9).is_ok());
        assert!(indirection_table(&buf, LEGACY_INDIRECTION_TABLE_OFFSET, 10).is_err());
        assert!(indirection_table(&buf, usize::MAX, 1).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
            let mut b = bytes.clone();
            if b.len() >= 4 {
                // Bias towards known types.
                b[0] = [1u8, 2, 102, 105, 108, 133, 134][b[1] as usize % 7];
                b[1] = 0; b[2] = 0; b[3] = 0;
                if let Ok(m) = parse(&b) {
                    if let Message::SendReceiveBufferComplete(_, s) = m { for x in s.iter() { let _ = x; } }
                    if let Message::SendIndirectionTable(_, t) = m { for x in t.iter() { let _ = x; } }
                }
            }
        }
    }
}
