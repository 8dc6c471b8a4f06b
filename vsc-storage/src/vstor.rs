//! The VSTOR wire protocol (fact sheet §8.1–§8.4): the 64-byte `vstor_packet`, its operations
//! and status, the protocol versions with their per-version sizes, the SCSI request block
//! (`vm_srb`), channel properties, SRB status and flags.
//!
//! The packet's 52-byte body is a union on the wire; here it is raw bytes with typed accessors
//! ([`VstorPacket::srb`], [`VstorPacket::properties`], ...), so every view is a plain zerocopy
//! read and no union is needed.
//!
//! **Size delta.** Hosts before protocol 5.1 (Win7 and older) know a 36-byte SRB without the
//! 16-byte "Win8 extension" (offsets 36..52), so their packet is 48 bytes and their sense buffer
//! 18 bytes. [`ProtocolVersion::packet_size`], [`ProtocolVersion::srb_size`] and
//! [`ProtocolVersion::sense_size`] give the numbers for a negotiated version; a sender sends
//! only the first `packet_size` bytes of a [`VstorPacket`], a receiver zero-fills the rest.
#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Size of a `vstor_packet` with the Win8 layout (fact sheet §8.1).
pub const VSTOR_PACKET_SIZE: usize = 64;
/// The Win8 extension of the SRB missing on hosts before 5.1 (fact sheet §8.1).
pub const SIZE_DELTA: usize = 16;
/// Size of a `vstor_packet` before 5.1.
pub const VSTOR_PACKET_SIZE_PRE_WIN8: usize = VSTOR_PACKET_SIZE - SIZE_DELTA;
/// Size of `vm_srb` from 5.1 on (openvmm `SCSI_REQUEST_LEN_V2`).
pub const SRB_SIZE: usize = 0x34;
/// Size of `vm_srb` before 5.1 (openvmm `SCSI_REQUEST_LEN_V1`).
pub const SRB_SIZE_PRE_WIN8: usize = SRB_SIZE - SIZE_DELTA;
/// Sense buffer in the SRB from 5.1 on.
pub const SENSE_SIZE: usize = 0x14;
/// Sense buffer before 5.1.
pub const SENSE_SIZE_PRE_WIN8: usize = 0x12;
/// Longest CDB the SRB carries.
pub const MAX_CDB_SIZE: usize = 16;
/// Ring size Linux uses for each direction of a storvsc channel (fact sheet §8.1).
pub const RING_SIZE: usize = 128 * 1024;
/// Largest packet the host may send to a storvsc guest: descriptor + packet (fact sheet §6.3).
pub const MAX_INBOUND_PACKET_SIZE: usize = 16 + VSTOR_PACKET_SIZE;
/// Transaction id of the initialization requests (fact sheet §8.2).
pub const INIT_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FFFD;
/// Transaction id of RESET_BUS (fact sheet §8.2).
pub const RESET_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FFFC;
/// Transaction id of unsolicited host packets (fact sheet §8.1).
pub const UNSOLICITED_TRANSACTION_ID: u64 = 0;

/// A VSTOR operation (packet offset 0): an open set.
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
pub struct Operation(pub u32);

impl Operation {
    /// The host's answer to every request.
    pub const COMPLETE_IO: Self = Self(1);
    /// Unsolicited: a device went away.
    pub const REMOVE_DEVICE: Self = Self(2);
    /// A SCSI request ([`VmSrb`]).
    pub const EXECUTE_SRB: Self = Self(3);
    /// Reset one LUN.
    pub const RESET_LUN: Self = Self(4);
    /// Reset the adapter.
    pub const RESET_ADAPTER: Self = Self(5);
    /// Reset a bus (path id in the SRB).
    pub const RESET_BUS: Self = Self(6);
    /// First init step.
    pub const BEGIN_INITIALIZATION: Self = Self(7);
    /// Last init step.
    pub const END_INITIALIZATION: Self = Self(8);
    /// Version probe ([`ProtocolVersionBody`]).
    pub const QUERY_PROTOCOL_VERSION: Self = Self(9);
    /// Properties query ([`ChannelProperties`] in the reply).
    pub const QUERY_PROPERTIES: Self = Self(10);
    /// Unsolicited: rescan the bus.
    pub const ENUMERATE_BUS: Self = Self(11);
    /// Fibre Channel WWNs ([`FcWwnBody`]).
    pub const FCHBA_DATA: Self = Self(12);
    /// Ask for sub-channels (count u16 in the body).
    pub const CREATE_SUB_CHANNELS: Self = Self(13);
    /// openvmm only.
    pub const EVENT_NOTIFICATION: Self = Self(14);

    /// The name of a known operation.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "COMPLETE_IO",
            2 => "REMOVE_DEVICE",
            3 => "EXECUTE_SRB",
            4 => "RESET_LUN",
            5 => "RESET_ADAPTER",
            6 => "RESET_BUS",
            7 => "BEGIN_INITIALIZATION",
            8 => "END_INITIALIZATION",
            9 => "QUERY_PROTOCOL_VERSION",
            10 => "QUERY_PROPERTIES",
            11 => "ENUMERATE_BUS",
            12 => "FCHBA_DATA",
            13 => "CREATE_SUB_CHANNELS",
            14 => "EVENT_NOTIFICATION",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for Operation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Operation({})", self.0),
        }
    }
}

/// Packet flags (offset 4).
pub mod flags {
    /// The sender wants a COMPLETE_IO (Linux always sets it).
    pub const REQUEST_COMPLETION: u32 = 0x1;
}

/// The NTSTATUS-like status of a packet (offset 8): 0 is success.
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
pub struct VstorStatus(pub u32);

impl VstorStatus {
    /// Success.
    pub const SUCCESS: Self = Self(0);
    /// STATUS_UNSUCCESSFUL.
    pub const UNSUCCESSFUL: Self = Self(0xC000_0001);
    /// STATUS_INVALID_PARAMETER.
    pub const INVALID_PARAMETER: Self = Self(0xC000_000D);
    /// STATUS_REVISION_MISMATCH: the version probe failed.
    pub const REVISION_MISMATCH: Self = Self(0xC000_0059);
    /// STATUS_DEVICE_DOES_NOT_EXIST.
    pub const DEVICE_DOES_NOT_EXIST: Self = Self(0xC000_00C0);
    /// STATUS_INVALID_DEVICE_STATE: a request out of order.
    pub const INVALID_DEVICE_STATE: Self = Self(0xC000_0184);

    /// Whether this is success.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
}

impl core::fmt::Debug for VstorStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "VstorStatus({:#x})", self.0)
    }
}

/// A VSTOR protocol version, `major << 8 | minor` (fact sheet §8.1).
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
pub struct ProtocolVersion(pub u16);

impl ProtocolVersion {
    /// 2.0, "WIN6" (Vista / WS2008).
    pub const WIN6: Self = Self(0x0200);
    /// 4.2, Windows 7 / WS2008R2.
    pub const WIN7: Self = Self(0x0402);
    /// 5.1, Windows 8 / WS2012: the Win8 SRB extension, 20-byte sense, multi-channel.
    pub const WIN8: Self = Self(0x0501);
    /// 6.0, Windows 8.1 ("Blue").
    pub const WIN8_1: Self = Self(0x0600);
    /// 6.2, Windows 10 ("Threshold").
    pub const WIN10: Self = Self(0x0602);
    /// Every known version, newest first (the probe order).
    pub const ALL: [Self; 5] = [
        Self::WIN10,
        Self::WIN8_1,
        Self::WIN8,
        Self::WIN7,
        Self::WIN6,
    ];
    /// What Linux offers, newest first.
    pub const LINUX: [Self; 3] = [Self::WIN10, Self::WIN8_1, Self::WIN8];

    /// `major.minor`.
    pub const fn new(major: u8, minor: u8) -> Self {
        Self(((major as u16) << 8) | minor as u16)
    }

    /// Major number.
    pub const fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Minor number.
    pub const fn minor(self) -> u8 {
        self.0 as u8
    }

    /// Whether the host knows the Win8 SRB extension (5.1 and newer).
    pub const fn has_win8_extension(self) -> bool {
        self.0 >= Self::WIN8.0
    }

    /// The packet size on the wire for this version (64, or 48 before 5.1).
    pub const fn packet_size(self) -> usize {
        if self.has_win8_extension() {
            VSTOR_PACKET_SIZE
        } else {
            VSTOR_PACKET_SIZE_PRE_WIN8
        }
    }

    /// The SRB size (and `vm_srb.length`) for this version (52, or 36 before 5.1).
    pub const fn srb_size(self) -> usize {
        if self.has_win8_extension() {
            SRB_SIZE
        } else {
            SRB_SIZE_PRE_WIN8
        }
    }

    /// The sense buffer size for this version (20, or 18 before 5.1).
    pub const fn sense_size(self) -> usize {
        if self.has_win8_extension() {
            SENSE_SIZE
        } else {
            SENSE_SIZE_PRE_WIN8
        }
    }
}

impl core::fmt::Debug for ProtocolVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// QUERY_PROTOCOL_VERSION body at packet offset 12.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ProtocolVersionBody {
    /// Offset 12: the version.
    pub major_minor: ProtocolVersion,
    /// Offset 14: revision, 0.
    pub revision: u16,
}

/// `vmstorage_channel_properties` at packet offset 12 (QUERY_PROPERTIES reply) and as the
/// 24-byte user data of the channel open (zeroed) (fact sheet §8.1, §8.2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ChannelProperties {
    /// Offset 12.
    pub reserved: u32,
    /// Offset 16: the most sub-channels the host will create.
    pub max_channel_count: u16,
    /// Offset 18.
    pub reserved1: u16,
    /// Offset 20: [`ChannelProperties::FLAG_MULTI_CHANNEL`].
    pub flags: u32,
    /// Offset 24: the largest transfer of one request.
    pub max_transfer_bytes: u32,
    /// Offset 28: a u64 on the wire (unaligned there), kept as two u32 so the struct packs.
    pub reserved2: [u32; 2],
}

impl ChannelProperties {
    /// Flags bit 0: the host supports sub-channels (5.1+).
    pub const FLAG_MULTI_CHANNEL: u32 = 0x1;

    /// Whether sub-channels are supported.
    pub const fn multi_channel(&self) -> bool {
        self.flags & Self::FLAG_MULTI_CHANNEL != 0
    }
}

/// FCHBA_DATA body at packet offset 12: Fibre Channel world-wide names (fact sheet §8.2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FcWwnBody {
    /// Offset 12.
    pub primary_active: u8,
    /// Offset 13.
    pub reserved: [u8; 3],
    /// Offset 16.
    pub primary_port_wwn: [u8; 8],
    /// Offset 24.
    pub primary_node_wwn: [u8; 8],
    /// Offset 32.
    pub secondary_port_wwn: [u8; 8],
    /// Offset 40.
    pub secondary_node_wwn: [u8; 8],
}

/// CREATE_SUB_CHANNELS body at packet offset 12.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SubChannelCountBody {
    /// Offset 12: how many sub-channels.
    pub count: u16,
}

/// The SRB's `data_in` byte (SRB offset 10).
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
pub struct DataDirection(pub u8);

impl DataDirection {
    /// To the device.
    pub const WRITE: Self = Self(0);
    /// From the device.
    pub const READ: Self = Self(1);
    /// No data / unknown.
    pub const NONE: Self = Self(2);
}

impl core::fmt::Debug for DataDirection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            0 => f.write_str("WRITE"),
            1 => f.write_str("READ"),
            2 => f.write_str("NONE"),
            n => write!(f, "DataDirection({n})"),
        }
    }
}

/// The SRB status byte (SRB offset 2): bits 5:0 the code, bit 6 queue frozen, bit 7 autosense
/// valid (fact sheet §8.3).
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
pub struct SrbStatus(pub u8);

impl SrbStatus {
    /// Bit 6.
    pub const QUEUE_FROZEN: u8 = 0x40;
    /// Bit 7: the sense data in the SRB is valid.
    pub const AUTOSENSE_VALID: u8 = 0x80;
    /// Bits 5:0.
    pub const CODE_MASK: u8 = 0x3F;

    /// 0x00.
    pub const PENDING: Self = Self(0x00);
    /// 0x01.
    pub const SUCCESS: Self = Self(0x01);
    /// 0x02.
    pub const ABORTED: Self = Self(0x02);
    /// 0x03.
    pub const ABORT_FAILED: Self = Self(0x03);
    /// 0x04.
    pub const ERROR: Self = Self(0x04);
    /// 0x05.
    pub const BUSY: Self = Self(0x05);
    /// 0x06.
    pub const INVALID_REQUEST: Self = Self(0x06);
    /// 0x07.
    pub const INVALID_PATH_ID: Self = Self(0x07);
    /// 0x08.
    pub const NO_DEVICE: Self = Self(0x08);
    /// 0x09.
    pub const TIMEOUT: Self = Self(0x09);
    /// 0x0A.
    pub const SELECTION_TIMEOUT: Self = Self(0x0A);
    /// 0x0B.
    pub const COMMAND_TIMEOUT: Self = Self(0x0B);
    /// 0x0D.
    pub const MESSAGE_REJECTED: Self = Self(0x0D);
    /// 0x0E.
    pub const BUS_RESET: Self = Self(0x0E);
    /// 0x0F.
    pub const PARITY_ERROR: Self = Self(0x0F);
    /// 0x10.
    pub const REQUEST_SENSE_FAILED: Self = Self(0x10);
    /// 0x11.
    pub const NO_HBA: Self = Self(0x11);
    /// 0x12.
    pub const DATA_OVERRUN: Self = Self(0x12);
    /// 0x13.
    pub const UNEXPECTED_BUS_FREE: Self = Self(0x13);
    /// 0x14.
    pub const PHASE_SEQUENCE_FAILURE: Self = Self(0x14);
    /// 0x15.
    pub const BAD_SRB_BLOCK_LENGTH: Self = Self(0x15);
    /// 0x16.
    pub const REQUEST_FLUSHED: Self = Self(0x16);
    /// 0x20: the LUN does not exist.
    pub const INVALID_LUN: Self = Self(0x20);
    /// 0x21.
    pub const INVALID_TARGET_ID: Self = Self(0x21);
    /// 0x22.
    pub const BAD_FUNCTION: Self = Self(0x22);
    /// 0x23.
    pub const ERROR_RECOVERY: Self = Self(0x23);
    /// 0x24.
    pub const NOT_POWERED: Self = Self(0x24);
    /// 0x25.
    pub const LINK_DOWN: Self = Self(0x25);
    /// 0x30: a Linux define.
    pub const INTERNAL_ERROR: Self = Self(0x30);

    /// The status code without the flag bits.
    pub const fn code(self) -> Self {
        Self(self.0 & Self::CODE_MASK)
    }

    /// Bit 7: the SRB carries valid sense data.
    pub const fn autosense_valid(self) -> bool {
        self.0 & Self::AUTOSENSE_VALID != 0
    }

    /// Bit 6.
    pub const fn queue_frozen(self) -> bool {
        self.0 & Self::QUEUE_FROZEN != 0
    }

    /// This status with the autosense bit set.
    pub const fn with_autosense(self) -> Self {
        Self(self.0 | Self::AUTOSENSE_VALID)
    }

    /// Whether the code is SUCCESS.
    pub const fn is_success(self) -> bool {
        self.code().0 == Self::SUCCESS.0
    }
}

impl core::fmt::Debug for SrbStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SrbStatus({:#04x}", self.code().0)?;
        if self.autosense_valid() {
            f.write_str(" +autosense")?;
        }
        if self.queue_frozen() {
            f.write_str(" +frozen")?;
        }
        f.write_str(")")
    }
}

/// SRB flags (SRB offset 40) (fact sheet §8.1).
pub mod srb_flags {
    /// Queue action (tag) is valid.
    pub const QUEUE_ACTION_ENABLE: u32 = 0x2;
    /// Disable disconnect.
    pub const DISABLE_DISCONNECT: u32 = 0x4;
    /// Disable synchronous transfer; Linux always sets it.
    pub const DISABLE_SYNCH_TRANSFER: u32 = 0x8;
    /// Bypass a frozen queue.
    pub const BYPASS_FROZEN_QUEUE: u32 = 0x10;
    /// No autosense.
    pub const DISABLE_AUTOSENSE: u32 = 0x20;
    /// Data from the device.
    pub const DATA_IN: u32 = 0x40;
    /// Data to the device.
    pub const DATA_OUT: u32 = 0x80;
    /// Do not freeze the queue on error.
    pub const NO_QUEUE_FREEZE: u32 = 0x100;
    /// Adapter cache enable.
    pub const ADAPTER_CACHE_ENABLE: u32 = 0x200;
    /// Free sense buffer.
    pub const FREE_SENSE_BUFFER: u32 = 0x400;
    /// D3 processing.
    pub const D3_PROCESSING: u32 = 0x800;
}

/// Linux's queue tag when tagged (SP_UNTAGGED).
pub const QUEUE_TAG_UNTAGGED: u8 = 0xFF;
/// Simple queue action.
pub const QUEUE_ACTION_SIMPLE: u8 = 0x20;
/// Linux's SRB time-out in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 60;

/// `vm_srb` (`vmscsi_request`) at packet offset 12, 52 bytes with the Win8 extension
/// (fact sheet §8.1). Offsets below are within the SRB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VmSrb {
    /// 0: the SRB size for the negotiated version ([`ProtocolVersion::srb_size`]).
    pub length: u16,
    /// 2.
    pub srb_status: SrbStatus,
    /// 3: SAM status ([`crate::scsi::ScsiStatus`]).
    pub scsi_status: u8,
    /// 4.
    pub port_number: u8,
    /// 5: SCSI channel (0..=7).
    pub path_id: u8,
    /// 6: target (0..=1).
    pub target_id: u8,
    /// 7: LUN (0..=254).
    pub lun: u8,
    /// 8: CDB bytes used (<= 16).
    pub cdb_length: u8,
    /// 9: sense buffer size in the request; valid sense bytes in the reply.
    pub sense_info_length: u8,
    /// 10.
    pub data_in: DataDirection,
    /// 11.
    pub reserved: u8,
    /// 12: requested bytes; in the reply, bytes moved.
    pub data_transfer_length: u32,
    /// 16: the CDB in the request, the sense data in the reply (20 bytes; 18 used before 5.1).
    pub cdb_or_sense: [u8; SENSE_SIZE],
    /// 36: Win8 extension from here on.
    pub reserve: u16,
    /// 38.
    pub queue_tag: u8,
    /// 39.
    pub queue_action: u8,
    /// 40: [`srb_flags`].
    pub srb_flags: u32,
    /// 44: seconds.
    pub time_out_value: u32,
    /// 48.
    pub queue_sort_key: u32,
}

impl Default for VmSrb {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl VmSrb {
    /// The CDB bytes (`cdb_length`, clamped to 16).
    pub fn cdb(&self) -> &[u8] {
        &self.cdb_or_sense[..(self.cdb_length as usize).min(MAX_CDB_SIZE)]
    }

    /// Stores `cdb` (at most 16 bytes; longer is cut) and its length.
    pub fn set_cdb(&mut self, cdb: &[u8]) {
        let n = cdb.len().min(MAX_CDB_SIZE);
        self.cdb_or_sense = [0; SENSE_SIZE];
        self.cdb_or_sense[..n].copy_from_slice(&cdb[..n]);
        self.cdb_length = n as u8;
    }

    /// The sense bytes of a reply: `sense_info_length` clamped to the version's sense size.
    pub fn sense(&self, version: ProtocolVersion) -> &[u8] {
        &self.cdb_or_sense[..(self.sense_info_length as usize).min(version.sense_size())]
    }

    /// Stores reply sense bytes (cut to the version's sense size) and their length.
    pub fn set_sense(&mut self, sense: &[u8], version: ProtocolVersion) {
        let n = sense.len().min(version.sense_size());
        self.cdb_or_sense = [0; SENSE_SIZE];
        self.cdb_or_sense[..n].copy_from_slice(&sense[..n]);
        self.sense_info_length = n as u8;
    }
}

/// Size of the packet header before the body.
pub const VSTOR_HEADER_SIZE: usize = 12;
/// Size of the body union.
pub const VSTOR_BODY_SIZE: usize = VSTOR_PACKET_SIZE - VSTOR_HEADER_SIZE;

/// One `vstor_packet` (fact sheet §8.1), always held at its full 64-byte Win8 size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VstorPacket {
    /// Offset 0.
    pub operation: Operation,
    /// Offset 4: [`flags`].
    pub flags: u32,
    /// Offset 8.
    pub status: VstorStatus,
    /// Offset 12: the union (SRB, properties, version, WWNs, sub-channel count).
    pub body: [u8; VSTOR_BODY_SIZE],
}

impl Default for VstorPacket {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Why bytes are not a VSTOR packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VstorParseError {
    /// Fewer bytes than the version's packet size.
    TooShort {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
}

impl core::fmt::Display for VstorParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort { len, need } => {
                write!(f, "VSTOR packet of {len} bytes, need {need}")
            }
        }
    }
}

impl VstorPacket {
    /// A request with the completion flag set and an empty body.
    pub fn request(operation: Operation) -> Self {
        Self {
            operation,
            flags: flags::REQUEST_COMPLETION,
            ..Self::default()
        }
    }

    /// A COMPLETE_IO with `status` and an empty body.
    pub fn completion(status: VstorStatus) -> Self {
        Self {
            operation: Operation::COMPLETE_IO,
            status,
            ..Self::default()
        }
    }

    /// QUERY_PROTOCOL_VERSION for `version`.
    pub fn query_version(version: ProtocolVersion) -> Self {
        let mut p = Self::request(Operation::QUERY_PROTOCOL_VERSION);
        p.set_body(&ProtocolVersionBody {
            major_minor: version,
            revision: 0,
        });
        p
    }

    /// CREATE_SUB_CHANNELS for `count`.
    pub fn create_sub_channels(count: u16) -> Self {
        let mut p = Self::request(Operation::CREATE_SUB_CHANNELS);
        p.set_body(&SubChannelCountBody { count });
        p
    }

    /// EXECUTE_SRB carrying `srb`.
    pub fn execute_srb(srb: &VmSrb) -> Self {
        let mut p = Self::request(Operation::EXECUTE_SRB);
        p.set_body(srb);
        p
    }

    /// Parses a received packet payload for the negotiated `version` (`None` before the
    /// version is known: the pre-Win8 size is then the minimum, since init packets carry no
    /// extension). Bytes past 64 (sender padding) are ignored; a short pre-Win8 packet has its
    /// extension zero-filled.
    pub fn parse(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Self, VstorParseError> {
        let need = version.map_or(VSTOR_PACKET_SIZE_PRE_WIN8, ProtocolVersion::packet_size);
        if bytes.len() < need {
            return Err(VstorParseError::TooShort {
                len: bytes.len(),
                need,
            });
        }
        let mut p = Self::default();
        let n = bytes.len().min(VSTOR_PACKET_SIZE);
        p.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
        Ok(p)
    }

    /// The bytes to send for `version`: 64, or the first 48 before 5.1.
    pub fn wire_bytes(&self, version: ProtocolVersion) -> &[u8] {
        &self.as_bytes()[..version.packet_size()]
    }

    /// Copies a body struct to offset 12 (the rest of the body is zeroed).
    pub fn set_body<T: IntoBytes + Immutable>(&mut self, body: &T) {
        let b = body.as_bytes();
        let n = b.len().min(VSTOR_BODY_SIZE);
        self.body = [0; VSTOR_BODY_SIZE];
        self.body[..n].copy_from_slice(&b[..n]);
    }

    /// Reads a body struct from offset 12.
    pub fn body_as<T: FromBytes>(&self) -> T {
        // Every body type is at most 52 bytes (asserted below), so this cannot fail.
        T::read_from_prefix(&self.body).map_or_else(|_| T::new_zeroed(), |(t, _)| t)
    }

    /// The SRB (EXECUTE_SRB and its completion).
    pub fn srb(&self) -> VmSrb {
        self.body_as()
    }

    /// The channel properties (QUERY_PROPERTIES reply).
    pub fn properties(&self) -> ChannelProperties {
        self.body_as()
    }

    /// The version body (QUERY_PROTOCOL_VERSION).
    pub fn version(&self) -> ProtocolVersionBody {
        self.body_as()
    }

    /// The WWN body (FCHBA_DATA).
    pub fn fc_wwn(&self) -> FcWwnBody {
        self.body_as()
    }

    /// The sub-channel count (CREATE_SUB_CHANNELS).
    pub fn sub_channel_count(&self) -> u16 {
        self.body_as::<SubChannelCountBody>().count
    }
}

const _: () = {
    // fact sheet §8.1: vstor_packet.
    assert!(size_of::<VstorPacket>() == VSTOR_PACKET_SIZE);
    assert!(offset_of!(VstorPacket, flags) == 4);
    assert!(offset_of!(VstorPacket, status) == 8);
    assert!(offset_of!(VstorPacket, body) == 12);
    // fact sheet §8.1: vm_srb, 0x34 bytes; the Win8 extension starts at 36 (0x24).
    assert!(size_of::<VmSrb>() == SRB_SIZE);
    assert!(SRB_SIZE == VSTOR_BODY_SIZE);
    assert!(offset_of!(VmSrb, srb_status) == 2);
    assert!(offset_of!(VmSrb, scsi_status) == 3);
    assert!(offset_of!(VmSrb, port_number) == 4);
    assert!(offset_of!(VmSrb, path_id) == 5);
    assert!(offset_of!(VmSrb, target_id) == 6);
    assert!(offset_of!(VmSrb, lun) == 7);
    assert!(offset_of!(VmSrb, cdb_length) == 8);
    assert!(offset_of!(VmSrb, sense_info_length) == 9);
    assert!(offset_of!(VmSrb, data_in) == 10);
    assert!(offset_of!(VmSrb, data_transfer_length) == 12);
    assert!(offset_of!(VmSrb, cdb_or_sense) == 16);
    assert!(offset_of!(VmSrb, reserve) == SRB_SIZE_PRE_WIN8);
    assert!(offset_of!(VmSrb, queue_tag) == 38);
    assert!(offset_of!(VmSrb, queue_action) == 39);
    assert!(offset_of!(VmSrb, srb_flags) == 40);
    assert!(offset_of!(VmSrb, time_out_value) == 44);
    assert!(offset_of!(VmSrb, queue_sort_key) == 48);
    // fact sheet §8.2: channel properties at packet offsets 12..36.
    assert!(size_of::<ChannelProperties>() == 24);
    assert!(offset_of!(ChannelProperties, max_channel_count) == 16 - 12);
    assert!(offset_of!(ChannelProperties, flags) == 20 - 12);
    assert!(offset_of!(ChannelProperties, max_transfer_bytes) == 24 - 12);
    assert!(offset_of!(ChannelProperties, reserved2) == 28 - 12);
    assert!(size_of::<ProtocolVersionBody>() == 4);
    assert!(offset_of!(ProtocolVersionBody, revision) == 2);
    // fact sheet §8.2: WWN packet.
    assert!(size_of::<FcWwnBody>() == 36);
    assert!(offset_of!(FcWwnBody, primary_port_wwn) == 4);
    assert!(offset_of!(FcWwnBody, secondary_node_wwn) == 28);
    assert!(size_of::<SubChannelCountBody>() == 2);
    assert!(size_of::<FcWwnBody>() <= VSTOR_BODY_SIZE);
};

#[cfg(test)]
mod tests {
    use super::*;

    // fact sheet §8.1: operation codes, versions, sizes.
    #[test]
    fn values() {
        assert_eq!(Operation::COMPLETE_IO.0, 1);
        assert_eq!(Operation::EXECUTE_SRB.0, 3);
        assert_eq!(Operation::BEGIN_INITIALIZATION.0, 7);
        assert_eq!(Operation::END_INITIALIZATION.0, 8);
        assert_eq!(Operation::QUERY_PROTOCOL_VERSION.0, 9);
        assert_eq!(Operation::QUERY_PROPERTIES.0, 10);
        assert_eq!(Operation::ENUMERATE_BUS.0, 11);
        assert_eq!(Operation::CREATE_SUB_CHANNELS.0, 13);
        assert_eq!(ProtocolVersion::WIN10.0, 0x0602);
        assert_eq!(ProtocolVersion::WIN8_1.0, 0x0600);
        assert_eq!(ProtocolVersion::WIN8.0, 0x0501);
        assert_eq!(ProtocolVersion::WIN7.0, 0x0402);
        assert_eq!(ProtocolVersion::WIN6.0, 0x0200);
        assert_eq!(ProtocolVersion::new(4, 2), ProtocolVersion::WIN7);
        for v in [
            ProtocolVersion::WIN8,
            ProtocolVersion::WIN8_1,
            ProtocolVersion::WIN10,
        ] {
            assert_eq!(
                (v.packet_size(), v.srb_size(), v.sense_size()),
                (64, 0x34, 0x14)
            );
        }
        for v in [ProtocolVersion::WIN6, ProtocolVersion::WIN7] {
            assert_eq!(
                (v.packet_size(), v.srb_size(), v.sense_size()),
                (48, 0x24, 0x12)
            );
        }
        assert_eq!(SrbStatus(0x84).code(), SrbStatus::ERROR);
        assert!(SrbStatus(0x84).autosense_valid());
        assert!(SrbStatus(0x41).is_success());
        assert!(SrbStatus(0x41).queue_frozen());
    }

    // fact sheet §8.1: the bytes of a QUERY_PROTOCOL_VERSION and of an EXECUTE_SRB.
    #[test]
    fn bytes() {
        let p = VstorPacket::query_version(ProtocolVersion::WIN10);
        assert_eq!(
            &p.as_bytes()[..16],
            &[9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 6, 0, 0]
        );
        let mut srb = VmSrb {
            length: SRB_SIZE as u16,
            target_id: 1,
            lun: 3,
            sense_info_length: SENSE_SIZE as u8,
            data_in: DataDirection::READ,
            data_transfer_length: 0x1000,
            srb_flags: srb_flags::DATA_IN | srb_flags::DISABLE_SYNCH_TRANSFER,
            time_out_value: 60,
            ..VmSrb::default()
        };
        srb.set_cdb(&[0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]);
        let p = VstorPacket::execute_srb(&srb);
        let b = p.as_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..8], &[3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[12..14], &[0x34, 0]);
        assert_eq!(b[12 + 6], 1);
        assert_eq!(b[12 + 7], 3);
        assert_eq!(b[12 + 8], 10);
        assert_eq!(b[12 + 9], 20);
        assert_eq!(b[12 + 10], 1);
        assert_eq!(&b[24..28], &[0, 0x10, 0, 0]);
        assert_eq!(b[28], 0x28);
        assert_eq!(&b[52..56], &[0x48, 0, 0, 0]);
        assert_eq!(&b[56..60], &[60, 0, 0, 0]);
        assert_eq!(p.srb().cdb(), &[0x28, 0, 0, 0, 0, 1, 0, 0, 8, 0]);
        // Pre-Win8: 48 bytes on the wire; parsing zero-fills the extension.
        let w = p.wire_bytes(ProtocolVersion::WIN7);
        assert_eq!(w.len(), 48);
        let q = VstorPacket::parse(w, Some(ProtocolVersion::WIN7)).unwrap();
        assert_eq!(q.srb().srb_flags, 0);
        assert_eq!(q.srb().cdb(), p.srb().cdb());
        assert_eq!(
            VstorPacket::parse(w, Some(ProtocolVersion::WIN10)),
            Err(VstorParseError::TooShort { len: 48, need: 64 })
        );
        assert_eq!(VstorPacket::parse(p.as_bytes(), None), Ok(p));
    }

    // fact sheet §8.2: properties at packet offsets 16 (max channels), 20 (flags), 24 (max
    // transfer).
    #[test]
    fn properties() {
        let mut b = [0u8; 64];
        b[0] = 1;
        b[16] = 7;
        b[20] = 1;
        b[24..28].copy_from_slice(&0x40000u32.to_le_bytes());
        let p = VstorPacket::parse(&b, None).unwrap();
        let props = p.properties();
        assert_eq!(props.max_channel_count, 7);
        assert!(props.multi_channel());
        assert_eq!(props.max_transfer_bytes, 0x40000);
        assert_eq!(
            VstorPacket::create_sub_channels(3).as_bytes()[12..14],
            [3, 0]
        );
    }

    #[test]
    fn sense_sizes() {
        let mut srb = VmSrb::default();
        srb.set_sense(&[0x70; 30], ProtocolVersion::WIN7);
        assert_eq!(srb.sense_info_length, 18);
        srb.sense_info_length = 200;
        assert_eq!(srb.sense(ProtocolVersion::WIN10).len(), 20);
        assert_eq!(srb.sense(ProtocolVersion::WIN7).len(), 18);
    }
}
