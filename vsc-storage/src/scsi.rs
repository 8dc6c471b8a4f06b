//! SCSI commands as the storvsc guest sends them and the host's SCSI target decodes them
//! (SPC/SBC; the set Linux uses on a Hyper-V disk, fact sheet §8.5): opcodes, SAM status, the
//! wire layout of each CDB and of the data the commands return, and [`Cdb`], a decoded command
//! with [`Cdb::parse`] and [`Cdb::encode`].
//!
//! All multi-byte SCSI fields are big-endian: the wire structs use zerocopy's big-endian
//! integers, which are unaligned, so every struct here is `repr(C)` with alignment 1 and no
//! padding.
#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};
use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Operation codes (byte 0 of a CDB).
pub mod opcode {
    /// TEST UNIT READY (6).
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE (6).
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY (6).
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT (6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE (6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT (6).
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL (6).
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY (10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10).
    pub const WRITE_10: u8 = 0x2A;
    /// VERIFY (10).
    pub const VERIFY_10: u8 = 0x2F;
    /// SYNCHRONIZE CACHE (10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME (10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP (10).
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT (10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE (10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// ATA PASS-THROUGH (16).
    pub const ATA_16: u8 = 0x85;
    /// READ (16).
    pub const READ_16: u8 = 0x88;
    /// WRITE (16).
    pub const WRITE_16: u8 = 0x8A;
    /// SYNCHRONIZE CACHE (16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME (16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN (16); READ CAPACITY (16) is its service action 0x10.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS (12).
    pub const REPORT_LUNS: u8 = 0xA0;
    /// ATA PASS-THROUGH (12).
    pub const ATA_12: u8 = 0xA1;
    /// MAINTENANCE IN (12).
    pub const MAINTENANCE_IN: u8 = 0xA3;

    /// The service action of READ CAPACITY (16) under SERVICE ACTION IN (16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;

    /// The CDB length implied by the opcode's group code (bits 7:5), `None` for the reserved
    /// and vendor groups.
    pub const fn cdb_len(opcode: u8) -> Option<usize> {
        match opcode >> 5 {
            0 => Some(6),
            1 | 2 => Some(10),
            4 => Some(16),
            5 => Some(12),
            _ => None,
        }
    }
}

/// SAM status (the SRB's `scsi_status`).
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
    Unaligned,
)]
#[repr(transparent)]
pub struct ScsiStatus(pub u8);

impl ScsiStatus {
    /// GOOD.
    pub const GOOD: Self = Self(0x00);
    /// CHECK CONDITION: sense data describes the error.
    pub const CHECK_CONDITION: Self = Self(0x02);
    /// CONDITION MET.
    pub const CONDITION_MET: Self = Self(0x04);
    /// BUSY.
    pub const BUSY: Self = Self(0x08);
    /// RESERVATION CONFLICT.
    pub const RESERVATION_CONFLICT: Self = Self(0x18);
    /// TASK SET FULL.
    pub const TASK_SET_FULL: Self = Self(0x28);
    /// ACA ACTIVE.
    pub const ACA_ACTIVE: Self = Self(0x30);
    /// TASK ABORTED.
    pub const TASK_ABORTED: Self = Self(0x40);
}

impl core::fmt::Debug for ScsiStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let n = match self.0 {
            0x00 => "GOOD",
            0x02 => "CHECK_CONDITION",
            0x04 => "CONDITION_MET",
            0x08 => "BUSY",
            0x18 => "RESERVATION_CONFLICT",
            0x28 => "TASK_SET_FULL",
            0x30 => "ACA_ACTIVE",
            0x40 => "TASK_ABORTED",
            s => return write!(f, "ScsiStatus({s:#04x})"),
        };
        f.write_str(n)
    }
}

/// VPD page codes (INQUIRY with EVPD = 1) Linux asks for (fact sheet §8.5).
pub mod vpd {
    /// Supported VPD pages.
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number.
    pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_IDENTIFICATION: u8 = 0x83;
    /// ATA information.
    pub const ATA_INFORMATION: u8 = 0x89;
    /// Block limits ([`super::BlockLimitsVpd`]).
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block device characteristics (rotation rate).
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical block provisioning ([`super::LogicalBlockProvisioningVpd`]).
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
    /// Block limits extension.
    pub const BLOCK_LIMITS_EXTENSION: u8 = 0xB7;
}

/// Mode page codes.
pub mod mode_page {
    /// Caching ([`super::CACHING_WCE`]).
    pub const CACHING: u8 = 0x08;
    /// Control.
    pub const CONTROL: u8 = 0x0A;
    /// Subpage of CONTROL: I/O advice hints grouping.
    pub const IO_ADVICE_HINTS_SUBPAGE: u8 = 0x05;
    /// All pages.
    pub const ALL: u8 = 0x3F;
}

// ----- CDB wire layouts -----------------------------------------------------------------------

/// TEST UNIT READY (6 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct TestUnitReadyCdb {
    /// 0.
    pub opcode: u8,
    /// 1..5.
    pub reserved: [u8; 4],
    /// 5.
    pub control: u8,
}

/// REQUEST SENSE (6 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct RequestSenseCdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 0 DESC (descriptor-format sense wanted).
    pub flags: u8,
    /// 2..4.
    pub reserved: [u8; 2],
    /// 4.
    pub allocation_length: u8,
    /// 5.
    pub control: u8,
}

/// INQUIRY (6 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct InquiryCdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 0 EVPD.
    pub flags: u8,
    /// 2: VPD page code (0 unless EVPD).
    pub page_code: u8,
    /// 3..5.
    pub allocation_length: U16,
    /// 5.
    pub control: u8,
}

/// READ (6) / WRITE (6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Rw6Cdb {
    /// 0.
    pub opcode: u8,
    /// 1..4: LBA bits 20:0 (bits 7:5 of byte 1 are reserved).
    pub lba: [u8; 3],
    /// 4: blocks; 0 means 256.
    pub transfer_length: u8,
    /// 5.
    pub control: u8,
}

/// The 10-byte LBA layout shared by READ (10), WRITE (10) and SYNCHRONIZE CACHE (10).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Lba10Cdb {
    /// 0.
    pub opcode: u8,
    /// 1: [`rw_flags`] (READ/WRITE) or bit 1 IMMED (SYNCHRONIZE CACHE).
    pub flags: u8,
    /// 2..6.
    pub lba: U32,
    /// 6: group number.
    pub group: u8,
    /// 7..9: blocks.
    pub length: U16,
    /// 9.
    pub control: u8,
}

/// The 16-byte LBA layout shared by READ (16), WRITE (16) and SYNCHRONIZE CACHE (16).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Lba16Cdb {
    /// 0.
    pub opcode: u8,
    /// 1: [`rw_flags`] or bit 1 IMMED.
    pub flags: u8,
    /// 2..10.
    pub lba: U64,
    /// 10..14: blocks.
    pub length: U32,
    /// 14: group number.
    pub group: u8,
    /// 15.
    pub control: u8,
}

/// Byte 1 bits of READ/WRITE (10/16).
pub mod rw_flags {
    /// Bits 7:5: RDPROTECT / WRPROTECT (protection information; unsupported here).
    pub const PROTECT_MASK: u8 = 0xE0;
    /// Bit 4: disable page out.
    pub const DPO: u8 = 0x10;
    /// Bit 3: force unit access.
    pub const FUA: u8 = 0x08;
    /// Bit 1 of SYNCHRONIZE CACHE: return before the flush completes.
    pub const IMMED: u8 = 0x02;
}

/// READ CAPACITY (10).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ReadCapacity10Cdb {
    /// 0.
    pub opcode: u8,
    /// 1.
    pub reserved1: u8,
    /// 2..6: obsolete LBA.
    pub lba: U32,
    /// 6..8.
    pub reserved2: [u8; 2],
    /// 8: bit 0 PMI (obsolete).
    pub pmi: u8,
    /// 9.
    pub control: u8,
}

/// SERVICE ACTION IN (16), used for READ CAPACITY (16).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ServiceActionIn16Cdb {
    /// 0.
    pub opcode: u8,
    /// 1: bits 4:0 service action.
    pub service_action: u8,
    /// 2..10: obsolete LBA.
    pub lba: U64,
    /// 10..14.
    pub allocation_length: U32,
    /// 14: bit 0 PMI (obsolete).
    pub pmi: u8,
    /// 15.
    pub control: u8,
}

/// UNMAP (10).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct UnmapCdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 0 ANCHOR.
    pub flags: u8,
    /// 2..6.
    pub reserved: [u8; 4],
    /// 6: group number.
    pub group: u8,
    /// 7..9: bytes of the parameter list (data out).
    pub parameter_list_length: U16,
    /// 9.
    pub control: u8,
}

/// MODE SENSE (6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ModeSense6Cdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 3 DBD.
    pub flags: u8,
    /// 2: bits 7:6 page control, 5:0 page code.
    pub page: u8,
    /// 3.
    pub subpage: u8,
    /// 4.
    pub allocation_length: u8,
    /// 5.
    pub control: u8,
}

/// MODE SENSE (10).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ModeSense10Cdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 4 LLBAA, bit 3 DBD.
    pub flags: u8,
    /// 2: bits 7:6 page control, 5:0 page code.
    pub page: u8,
    /// 3.
    pub subpage: u8,
    /// 4..7.
    pub reserved: [u8; 3],
    /// 7..9.
    pub allocation_length: U16,
    /// 9.
    pub control: u8,
}

/// REPORT LUNS (12).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ReportLunsCdb {
    /// 0.
    pub opcode: u8,
    /// 1.
    pub reserved1: u8,
    /// 2.
    pub select_report: u8,
    /// 3..6.
    pub reserved2: [u8; 3],
    /// 6..10.
    pub allocation_length: U32,
    /// 10.
    pub reserved3: u8,
    /// 11.
    pub control: u8,
}

/// START STOP UNIT (6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct StartStopUnitCdb {
    /// 0.
    pub opcode: u8,
    /// 1: bit 0 IMMED.
    pub immed: u8,
    /// 2.
    pub reserved: u8,
    /// 3: bits 3:0 power condition modifier.
    pub power_condition_modifier: u8,
    /// 4: bits 7:4 power condition, bit 2 NO_FLUSH, bit 1 LOEJ, bit 0 START.
    pub flags: u8,
    /// 5.
    pub control: u8,
}

// ----- returned data --------------------------------------------------------------------------

/// READ CAPACITY (10) data.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ReadCapacity10Data {
    /// 0..4: last LBA; 0xFFFFFFFF means "use READ CAPACITY (16)".
    pub last_lba: U32,
    /// 4..8: bytes per block.
    pub block_length: U32,
}

/// READ CAPACITY (16) data (32 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ReadCapacity16Data {
    /// 0..8: last LBA.
    pub last_lba: U64,
    /// 8..12: bytes per block.
    pub block_length: U32,
    /// 12: bits 3:1 P_TYPE, bit 0 PROT_EN.
    pub protection: u8,
    /// 13: bits 7:4 P_I_EXPONENT, bits 3:0 logical blocks per physical block exponent.
    pub exponents: u8,
    /// 14..16: bit 15 LBPME (thin provisioning / UNMAP), bit 14 LBPRZ, bits 13:0 lowest
    /// aligned LBA.
    pub provisioning: U16,
    /// 16..32.
    pub reserved: [u8; 16],
}

impl ReadCapacity16Data {
    /// Bit of `provisioning`: logical block provisioning management enabled.
    pub const LBPME: u16 = 0x8000;
    /// Bit of `provisioning`: unmapped blocks read as zeros.
    pub const LBPRZ: u16 = 0x4000;
}

/// Standard INQUIRY data, the first 36 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct StandardInquiryData {
    /// 0: bits 7:5 peripheral qualifier, 4:0 device type. 0x7F = no LUN here.
    pub peripheral: u8,
    /// 1: bit 7 RMB (removable).
    pub rmb: u8,
    /// 2: version (5 = SPC-3, 6 = SPC-4).
    pub version: u8,
    /// 3: bit 5 NormACA, bit 4 HiSup, bits 3:0 response data format (2).
    pub response_format: u8,
    /// 4: additional length (total length − 5).
    pub additional_length: u8,
    /// 5: SCCS, ACC, TPGS, 3PC, PROTECT.
    pub flags5: u8,
    /// 6: ENCSERV, MULTIP...
    pub flags6: u8,
    /// 7: bit 1 CMDQUE.
    pub flags7: u8,
    /// 8..16: ASCII, space padded.
    pub vendor: [u8; 8],
    /// 16..32.
    pub product: [u8; 16],
    /// 32..36.
    pub revision: [u8; 4],
}

/// Peripheral device types and qualifiers (INQUIRY byte 0).
pub mod peripheral {
    /// Direct-access block device (disk).
    pub const DISK: u8 = 0x00;
    /// CD/DVD.
    pub const CDROM: u8 = 0x05;
    /// Byte 0 of a LUN that is not present (qualifier 3, type 0x1F).
    pub const NO_LUN: u8 = 0x7F;
}

/// The 4-byte header of every VPD page.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct VpdPageHeader {
    /// 0: peripheral qualifier and device type.
    pub peripheral: u8,
    /// 1.
    pub page_code: u8,
    /// 2..4: bytes after the header.
    pub page_length: U16,
}

/// Block limits VPD page (0xB0), 64 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct BlockLimitsVpd {
    /// 0..4 (page length 0x3C).
    pub header: VpdPageHeader,
    /// 4: bit 0 WSNZ.
    pub wsnz: u8,
    /// 5.
    pub max_compare_and_write_length: u8,
    /// 6..8.
    pub optimal_transfer_length_granularity: U16,
    /// 8..12: blocks.
    pub max_transfer_length: U32,
    /// 12..16: blocks.
    pub optimal_transfer_length: U32,
    /// 16..20.
    pub max_prefetch_length: U32,
    /// 20..24: the most blocks one UNMAP may name.
    pub max_unmap_lba_count: U32,
    /// 24..28: the most descriptors one UNMAP may carry.
    pub max_unmap_block_descriptor_count: U32,
    /// 28..32.
    pub optimal_unmap_granularity: U32,
    /// 32..36: bit 31 UGAVALID, 30:0 alignment.
    pub unmap_granularity_alignment: U32,
    /// 36..44.
    pub max_write_same_length: U64,
    /// 44..64.
    pub reserved: [u8; 20],
}

/// Logical block provisioning VPD page (0xB2), 8 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct LogicalBlockProvisioningVpd {
    /// 0..4 (page length 4).
    pub header: VpdPageHeader,
    /// 4.
    pub threshold_exponent: u8,
    /// 5: bit 7 LBPU (UNMAP supported), 6 LBPWS, 5 LBPWS10, 4:2 LBPRZ, 1 ANC_SUP, 0 DP.
    pub flags: u8,
    /// 6: bits 2:0 provisioning type.
    pub provisioning_type: u8,
    /// 7.
    pub reserved: u8,
}

impl LogicalBlockProvisioningVpd {
    /// `flags` bit: UNMAP supported.
    pub const LBPU: u8 = 0x80;
    /// `flags` bit: WRITE SAME (16) with UNMAP supported.
    pub const LBPWS: u8 = 0x40;
}

/// MODE SENSE (6) parameter header.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ModeParameterHeader6 {
    /// 0: bytes after this field.
    pub mode_data_length: u8,
    /// 1.
    pub medium_type: u8,
    /// 2: bit 7 WP (write protected), bit 4 DPOFUA.
    pub device_specific: u8,
    /// 3.
    pub block_descriptor_length: u8,
}

/// MODE SENSE (10) parameter header.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ModeParameterHeader10 {
    /// 0..2: bytes after this field.
    pub mode_data_length: U16,
    /// 2.
    pub medium_type: u8,
    /// 3: bit 7 WP, bit 4 DPOFUA.
    pub device_specific: u8,
    /// 4: bit 0 LONGLBA.
    pub flags: u8,
    /// 5.
    pub reserved: u8,
    /// 6..8.
    pub block_descriptor_length: U16,
}

/// `device_specific` bit: write protected.
pub const MODE_WP: u8 = 0x80;
/// `device_specific` bit: DPO and FUA supported.
pub const MODE_DPOFUA: u8 = 0x10;
/// Caching mode page (0x08) byte 2 bit 2: write cache enabled (flushes needed).
pub const CACHING_WCE: u8 = 0x04;
/// Length of the caching mode page including its 2-byte header.
pub const CACHING_PAGE_LEN: usize = 20;

/// REPORT LUNS data header; 8-byte LUN entries follow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ReportLunsHeader {
    /// 0..4: bytes of LUN entries (8 per LUN).
    pub lun_list_length: U32,
    /// 4..8.
    pub reserved: U32,
}

/// The 8-byte LUN of a single-level LUN < 16384 (peripheral addressing below 256, flat above).
pub const fn encode_lun(lun: u16) -> [u8; 8] {
    if lun < 256 {
        [0, lun as u8, 0, 0, 0, 0, 0, 0]
    } else {
        [
            0x40 | ((lun >> 8) as u8 & 0x3F),
            lun as u8,
            0,
            0,
            0,
            0,
            0,
            0,
        ]
    }
}

/// Decodes a single-level LUN (peripheral or flat addressing); `None` for other forms.
pub fn decode_lun(b: [u8; 8]) -> Option<u16> {
    if b[2..] != [0; 6] {
        return None;
    }
    match b[0] >> 6 {
        // Peripheral addressing, bus 0.
        0 if b[0] == 0 => Some(b[1] as u16),
        // Flat addressing.
        1 => Some(((b[0] as u16 & 0x3F) << 8) | b[1] as u16),
        _ => None,
    }
}

/// UNMAP parameter list header; [`UnmapBlockDescriptor`]s follow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct UnmapParameterHeader {
    /// 0..2: bytes after this field (list length − 2).
    pub data_length: U16,
    /// 2..4: bytes of descriptors (list length − 8).
    pub block_descriptor_data_length: U16,
    /// 4..8.
    pub reserved: U32,
}

/// One UNMAP block descriptor.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct UnmapBlockDescriptor {
    /// 0..8.
    pub lba: U64,
    /// 8..12.
    pub blocks: U32,
    /// 12..16.
    pub reserved: U32,
}

const _: () = {
    // SPC-4 / SBC-3 layouts (fact sheet §8.5 lists the commands).
    assert!(size_of::<TestUnitReadyCdb>() == 6);
    assert!(size_of::<RequestSenseCdb>() == 6);
    assert!(offset_of!(RequestSenseCdb, allocation_length) == 4);
    assert!(size_of::<InquiryCdb>() == 6);
    assert!(offset_of!(InquiryCdb, allocation_length) == 3);
    assert!(size_of::<Rw6Cdb>() == 6);
    assert!(offset_of!(Rw6Cdb, transfer_length) == 4);
    assert!(size_of::<Lba10Cdb>() == 10);
    assert!(offset_of!(Lba10Cdb, lba) == 2);
    assert!(offset_of!(Lba10Cdb, length) == 7);
    assert!(size_of::<Lba16Cdb>() == 16);
    assert!(offset_of!(Lba16Cdb, length) == 10);
    assert!(offset_of!(Lba16Cdb, group) == 14);
    assert!(size_of::<ReadCapacity10Cdb>() == 10);
    assert!(offset_of!(ReadCapacity10Cdb, pmi) == 8);
    assert!(size_of::<ServiceActionIn16Cdb>() == 16);
    assert!(offset_of!(ServiceActionIn16Cdb, allocation_length) == 10);
    assert!(size_of::<UnmapCdb>() == 10);
    assert!(offset_of!(UnmapCdb, parameter_list_length) == 7);
    assert!(size_of::<ModeSense6Cdb>() == 6);
    assert!(size_of::<ModeSense10Cdb>() == 10);
    assert!(offset_of!(ModeSense10Cdb, allocation_length) == 7);
    assert!(size_of::<ReportLunsCdb>() == 12);
    assert!(offset_of!(ReportLunsCdb, allocation_length) == 6);
    assert!(size_of::<StartStopUnitCdb>() == 6);
    assert!(offset_of!(StartStopUnitCdb, flags) == 4);
    assert!(size_of::<ReadCapacity10Data>() == 8);
    assert!(size_of::<ReadCapacity16Data>() == 32);
    assert!(offset_of!(ReadCapacity16Data, provisioning) == 14);
    assert!(size_of::<StandardInquiryData>() == 36);
    assert!(offset_of!(StandardInquiryData, vendor) == 8);
    assert!(offset_of!(StandardInquiryData, product) == 16);
    assert!(offset_of!(StandardInquiryData, revision) == 32);
    assert!(size_of::<VpdPageHeader>() == 4);
    assert!(size_of::<BlockLimitsVpd>() == 64);
    assert!(offset_of!(BlockLimitsVpd, max_transfer_length) == 8);
    assert!(offset_of!(BlockLimitsVpd, max_unmap_lba_count) == 20);
    assert!(offset_of!(BlockLimitsVpd, max_write_same_length) == 36);
    assert!(size_of::<LogicalBlockProvisioningVpd>() == 8);
    assert!(size_of::<ModeParameterHeader6>() == 4);
    assert!(size_of::<ModeParameterHeader10>() == 8);
    assert!(offset_of!(ModeParameterHeader10, block_descriptor_length) == 6);
    assert!(size_of::<ReportLunsHeader>() == 8);
    assert!(size_of::<UnmapParameterHeader>() == 8);
    assert!(size_of::<UnmapBlockDescriptor>() == 16);
};

// ----- decoded commands -----------------------------------------------------------------------

/// The CDB size of a command that exists in several sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdbSize {
    /// 6-byte form.
    Six,
    /// 10-byte form.
    Ten,
    /// 16-byte form.
    Sixteen,
}

/// READ / WRITE parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadWrite {
    /// CDB form.
    pub size: CdbSize,
    /// First block.
    pub lba: u64,
    /// Blocks (the 6-byte form's 0 is decoded as 256).
    pub blocks: u32,
    /// Force unit access (10/16 only).
    pub fua: bool,
    /// Disable page out (10/16 only).
    pub dpo: bool,
}

/// SYNCHRONIZE CACHE parameters (blocks 0 = to the end of the medium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SyncCache {
    /// 10 or 16 (`Six` is refused by [`Cdb::encode`]).
    pub size: CdbSize,
    /// First block.
    pub lba: u64,
    /// Blocks; 0 = all from `lba`.
    pub blocks: u32,
    /// Return before the flush completes.
    pub immed: bool,
}

/// MODE SENSE parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeSense {
    /// 6 or 10 (`Sixteen` is refused by [`Cdb::encode`]).
    pub size: CdbSize,
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptors accepted (10 only).
    pub llbaa: bool,
    /// Page control (0 current, 1 changeable, 2 default, 3 saved).
    pub page_control: u8,
    /// Page code (0..=0x3F).
    pub page_code: u8,
    /// Subpage code.
    pub subpage: u8,
    /// Allocation length (at most 255 in the 6-byte form).
    pub allocation_length: u16,
}

/// START STOP UNIT parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartStop {
    /// Return at once.
    pub immed: bool,
    /// Power condition (bits 7:4 of byte 4); 0 = use START/LOEJ.
    pub power_condition: u8,
    /// Power condition modifier (bits 3:0 of byte 3).
    pub modifier: u8,
    /// Do not flush before stopping.
    pub no_flush: bool,
    /// Load / eject.
    pub loej: bool,
    /// Start (true) or stop.
    pub start: bool,
}

/// A decoded SCSI command of the supported set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cdb {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor-format sense wanted.
        descriptor: bool,
        /// Allocation length.
        allocation_length: u8,
    },
    /// INQUIRY, standard (`evpd` false, page 0) or a VPD page.
    Inquiry {
        /// VPD page requested.
        evpd: bool,
        /// VPD page code.
        page_code: u8,
        /// Allocation length.
        allocation_length: u16,
    },
    /// READ CAPACITY (10).
    ReadCapacity10,
    /// READ CAPACITY (16).
    ReadCapacity16 {
        /// Allocation length (32 for the whole data).
        allocation_length: u32,
    },
    /// READ (6/10/16).
    Read(ReadWrite),
    /// WRITE (6/10/16).
    Write(ReadWrite),
    /// SYNCHRONIZE CACHE (10/16).
    SynchronizeCache(SyncCache),
    /// UNMAP; the parameter list ([`UnmapList`]) is the data out.
    Unmap {
        /// ANCHOR.
        anchor: bool,
        /// Parameter list length.
        parameter_list_length: u16,
    },
    /// MODE SENSE (6/10).
    ModeSense(ModeSense),
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select_report: u8,
        /// Allocation length.
        allocation_length: u32,
    },
    /// START STOP UNIT.
    StartStopUnit(StartStop),
}

/// Why a CDB was not decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CdbError {
    /// No bytes at all.
    Empty,
    /// Fewer bytes than the opcode's CDB length.
    TooShort {
        /// The opcode.
        opcode: u8,
        /// Bytes needed.
        need: usize,
    },
    /// Not in the supported set (answer ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE).
    Unsupported(u8),
    /// A field holds a value this decoder refuses (answer INVALID FIELD IN CDB, pointing at
    /// `byte`), or a value cannot be encoded in the chosen CDB size.
    InvalidField {
        /// Byte offset of the field in the CDB.
        byte: u8,
    },
}

impl core::fmt::Display for CdbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty => f.write_str("empty CDB"),
            Self::TooShort { opcode, need } => {
                write!(f, "CDB for opcode {opcode:#04x} shorter than {need} bytes")
            }
            Self::Unsupported(op) => write!(f, "unsupported opcode {op:#04x}"),
            Self::InvalidField { byte } => write!(f, "invalid field in CDB byte {byte}"),
        }
    }
}

/// An encoded CDB: up to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CdbBytes {
    bytes: [u8; 16],
    len: u8,
}

impl CdbBytes {
    /// From raw bytes (at most 16).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        if b.len() > 16 {
            return None;
        }
        let mut bytes = [0; 16];
        bytes[..b.len()].copy_from_slice(b);
        Some(Self {
            bytes,
            len: b.len() as u8,
        })
    }

    fn of<T: IntoBytes + Immutable>(t: &T) -> Self {
        // Every CDB struct is at most 16 bytes (asserted above).
        Self::from_slice(t.as_bytes()).unwrap_or_default()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The length.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The opcode (0 if empty).
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }
}

impl core::fmt::Debug for CdbBytes {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Cdb{:02x?}", self.as_slice())
    }
}

fn read<T: FromBytes>(b: &[u8], opcode: u8) -> Result<T, CdbError> {
    T::read_from_prefix(b)
        .map(|(t, _)| t)
        .map_err(|_| CdbError::TooShort {
            opcode,
            need: size_of::<T>(),
        })
}

const fn bit(v: u8, mask: u8) -> bool {
    v & mask != 0
}

const fn flag(b: bool, mask: u8) -> u8 {
    if b {
        mask
    } else {
        0
    }
}

impl Cdb {
    /// The direction of the data the command moves: `Some(true)` from the device (data in),
    /// `Some(false)` to it, `None` for no data. READ/WRITE need the block size to know the
    /// length: see [`Cdb::data_length`].
    pub fn data_in(&self) -> Option<bool> {
        match self {
            Self::TestUnitReady | Self::SynchronizeCache(_) | Self::StartStopUnit(_) => None,
            Self::Write(_) | Self::Unmap { .. } => Some(false),
            _ => Some(true),
        }
    }

    /// The bytes of data the command moves (allocation / parameter list length, or blocks ×
    /// `block_size`).
    pub fn data_length(&self, block_size: u32) -> u64 {
        match *self {
            Self::TestUnitReady | Self::SynchronizeCache(_) | Self::StartStopUnit(_) => 0,
            Self::ReadCapacity10 => size_of::<ReadCapacity10Data>() as u64,
            Self::RequestSense {
                allocation_length, ..
            } => allocation_length.into(),
            Self::Inquiry {
                allocation_length, ..
            } => allocation_length.into(),
            Self::ReadCapacity16 { allocation_length } => allocation_length.into(),
            Self::Read(rw) | Self::Write(rw) => u64::from(rw.blocks) * u64::from(block_size),
            Self::Unmap {
                parameter_list_length,
                ..
            } => parameter_list_length.into(),
            Self::ModeSense(m) => m.allocation_length.into(),
            Self::ReportLuns {
                allocation_length, ..
            } => allocation_length.into(),
        }
    }

    /// Decodes a CDB. Reserved bits are ignored; fields this set cannot honour (protection
    /// information, unknown service actions) are [`CdbError::InvalidField`].
    pub fn parse(b: &[u8]) -> Result<Self, CdbError> {
        let &op = b.first().ok_or(CdbError::Empty)?;
        Ok(match op {
            opcode::TEST_UNIT_READY => {
                read::<TestUnitReadyCdb>(b, op)?;
                Self::TestUnitReady
            }
            opcode::REQUEST_SENSE => {
                let c: RequestSenseCdb = read(b, op)?;
                Self::RequestSense {
                    descriptor: bit(c.flags, 1),
                    allocation_length: c.allocation_length,
                }
            }
            opcode::INQUIRY => {
                let c: InquiryCdb = read(b, op)?;
                let evpd = bit(c.flags, 1);
                if !evpd && c.page_code != 0 {
                    return Err(CdbError::InvalidField { byte: 2 });
                }
                Self::Inquiry {
                    evpd,
                    page_code: c.page_code,
                    allocation_length: c.allocation_length.get(),
                }
            }
            opcode::READ_CAPACITY_10 => {
                read::<ReadCapacity10Cdb>(b, op)?;
                Self::ReadCapacity10
            }
            opcode::SERVICE_ACTION_IN_16 => {
                let c: ServiceActionIn16Cdb = read(b, op)?;
                if c.service_action & 0x1F != opcode::SA_READ_CAPACITY_16 {
                    return Err(CdbError::InvalidField { byte: 1 });
                }
                Self::ReadCapacity16 {
                    allocation_length: c.allocation_length.get(),
                }
            }
            opcode::READ_6 | opcode::WRITE_6 => {
                let c: Rw6Cdb = read(b, op)?;
                let lba = u32::from_be_bytes([0, c.lba[0] & 0x1F, c.lba[1], c.lba[2]]);
                let blocks = if c.transfer_length == 0 {
                    256
                } else {
                    c.transfer_length.into()
                };
                let rw = ReadWrite {
                    size: CdbSize::Six,
                    lba: lba.into(),
                    blocks,
                    fua: false,
                    dpo: false,
                };
                if op == opcode::READ_6 {
                    Self::Read(rw)
                } else {
                    Self::Write(rw)
                }
            }
            opcode::READ_10 | opcode::WRITE_10 | opcode::READ_16 | opcode::WRITE_16 => {
                let (flags, lba, blocks, size) = if op == opcode::READ_10 || op == opcode::WRITE_10
                {
                    let c: Lba10Cdb = read(b, op)?;
                    (
                        c.flags,
                        c.lba.get().into(),
                        c.length.get().into(),
                        CdbSize::Ten,
                    )
                } else {
                    let c: Lba16Cdb = read(b, op)?;
                    (c.flags, c.lba.get(), c.length.get(), CdbSize::Sixteen)
                };
                if flags & rw_flags::PROTECT_MASK != 0 {
                    return Err(CdbError::InvalidField { byte: 1 });
                }
                let rw = ReadWrite {
                    size,
                    lba,
                    blocks,
                    fua: bit(flags, rw_flags::FUA),
                    dpo: bit(flags, rw_flags::DPO),
                };
                if op == opcode::READ_10 || op == opcode::READ_16 {
                    Self::Read(rw)
                } else {
                    Self::Write(rw)
                }
            }
            opcode::SYNCHRONIZE_CACHE_10 => {
                let c: Lba10Cdb = read(b, op)?;
                Self::SynchronizeCache(SyncCache {
                    size: CdbSize::Ten,
                    lba: c.lba.get().into(),
                    blocks: c.length.get().into(),
                    immed: bit(c.flags, rw_flags::IMMED),
                })
            }
            opcode::SYNCHRONIZE_CACHE_16 => {
                let c: Lba16Cdb = read(b, op)?;
                Self::SynchronizeCache(SyncCache {
                    size: CdbSize::Sixteen,
                    lba: c.lba.get(),
                    blocks: c.length.get(),
                    immed: bit(c.flags, rw_flags::IMMED),
                })
            }
            opcode::UNMAP => {
                let c: UnmapCdb = read(b, op)?;
                Self::Unmap {
                    anchor: bit(c.flags, 1),
                    parameter_list_length: c.parameter_list_length.get(),
                }
            }
            opcode::MODE_SENSE_6 => {
                let c: ModeSense6Cdb = read(b, op)?;
                Self::ModeSense(ModeSense {
                    size: CdbSize::Six,
                    dbd: bit(c.flags, 0x08),
                    llbaa: false,
                    page_control: c.page >> 6,
                    page_code: c.page & 0x3F,
                    subpage: c.subpage,
                    allocation_length: c.allocation_length.into(),
                })
            }
            opcode::MODE_SENSE_10 => {
                let c: ModeSense10Cdb = read(b, op)?;
                Self::ModeSense(ModeSense {
                    size: CdbSize::Ten,
                    dbd: bit(c.flags, 0x08),
                    llbaa: bit(c.flags, 0x10),
                    page_control: c.page >> 6,
                    page_code: c.page & 0x3F,
                    subpage: c.subpage,
                    allocation_length: c.allocation_length.get(),
                })
            }
            opcode::REPORT_LUNS => {
                let c: ReportLunsCdb = read(b, op)?;
                Self::ReportLuns {
                    select_report: c.select_report,
                    allocation_length: c.allocation_length.get(),
                }
            }
            opcode::START_STOP_UNIT => {
                let c: StartStopUnitCdb = read(b, op)?;
                Self::StartStopUnit(StartStop {
                    immed: bit(c.immed, 1),
                    power_condition: c.flags >> 4,
                    modifier: c.power_condition_modifier & 0xF,
                    no_flush: bit(c.flags, 0x04),
                    loej: bit(c.flags, 0x02),
                    start: bit(c.flags, 0x01),
                })
            }
            other => return Err(CdbError::Unsupported(other)),
        })
    }

    /// Encodes the command. Values that do not fit the chosen size (an LBA ≥ 2^21 or more
    /// than 256 blocks in READ(6), a 6-byte SYNCHRONIZE CACHE, ...) are
    /// [`CdbError::InvalidField`].
    pub fn encode(&self) -> Result<CdbBytes, CdbError> {
        let bad = |byte| Err(CdbError::InvalidField { byte });
        Ok(match *self {
            Self::TestUnitReady => CdbBytes::of(&TestUnitReadyCdb {
                opcode: opcode::TEST_UNIT_READY,
                reserved: [0; 4],
                control: 0,
            }),
            Self::RequestSense {
                descriptor,
                allocation_length,
            } => CdbBytes::of(&RequestSenseCdb {
                opcode: opcode::REQUEST_SENSE,
                flags: flag(descriptor, 1),
                reserved: [0; 2],
                allocation_length,
                control: 0,
            }),
            Self::Inquiry {
                evpd,
                page_code,
                allocation_length,
            } => {
                if !evpd && page_code != 0 {
                    return bad(2);
                }
                CdbBytes::of(&InquiryCdb {
                    opcode: opcode::INQUIRY,
                    flags: flag(evpd, 1),
                    page_code,
                    allocation_length: allocation_length.into(),
                    control: 0,
                })
            }
            Self::ReadCapacity10 => CdbBytes::of(&ReadCapacity10Cdb {
                opcode: opcode::READ_CAPACITY_10,
                reserved1: 0,
                lba: 0.into(),
                reserved2: [0; 2],
                pmi: 0,
                control: 0,
            }),
            Self::ReadCapacity16 { allocation_length } => CdbBytes::of(&ServiceActionIn16Cdb {
                opcode: opcode::SERVICE_ACTION_IN_16,
                service_action: opcode::SA_READ_CAPACITY_16,
                lba: 0.into(),
                allocation_length: allocation_length.into(),
                pmi: 0,
                control: 0,
            }),
            Self::Read(rw) | Self::Write(rw) => {
                let read = matches!(self, Self::Read(_));
                let flags = flag(rw.fua, rw_flags::FUA) | flag(rw.dpo, rw_flags::DPO);
                match rw.size {
                    CdbSize::Six => {
                        if rw.lba >= 1 << 21 {
                            return bad(1);
                        }
                        if rw.blocks == 0 || rw.blocks > 256 || flags != 0 {
                            return bad(4);
                        }
                        let l = (rw.lba as u32).to_be_bytes();
                        CdbBytes::of(&Rw6Cdb {
                            opcode: if read {
                                opcode::READ_6
                            } else {
                                opcode::WRITE_6
                            },
                            lba: [l[1], l[2], l[3]],
                            transfer_length: rw.blocks as u8, // 256 wraps to 0, as defined
                            control: 0,
                        })
                    }
                    CdbSize::Ten => {
                        let Ok(lba) = u32::try_from(rw.lba) else {
                            return bad(2);
                        };
                        let Ok(blocks) = u16::try_from(rw.blocks) else {
                            return bad(7);
                        };
                        CdbBytes::of(&Lba10Cdb {
                            opcode: if read {
                                opcode::READ_10
                            } else {
                                opcode::WRITE_10
                            },
                            flags,
                            lba: lba.into(),
                            group: 0,
                            length: blocks.into(),
                            control: 0,
                        })
                    }
                    CdbSize::Sixteen => CdbBytes::of(&Lba16Cdb {
                        opcode: if read {
                            opcode::READ_16
                        } else {
                            opcode::WRITE_16
                        },
                        flags,
                        lba: rw.lba.into(),
                        length: rw.blocks.into(),
                        group: 0,
                        control: 0,
                    }),
                }
            }
            Self::SynchronizeCache(s) => {
                let flags = flag(s.immed, rw_flags::IMMED);
                match s.size {
                    CdbSize::Six => return bad(0),
                    CdbSize::Ten => {
                        let Ok(lba) = u32::try_from(s.lba) else {
                            return bad(2);
                        };
                        let Ok(blocks) = u16::try_from(s.blocks) else {
                            return bad(7);
                        };
                        CdbBytes::of(&Lba10Cdb {
                            opcode: opcode::SYNCHRONIZE_CACHE_10,
                            flags,
                            lba: lba.into(),
                            group: 0,
                            length: blocks.into(),
                            control: 0,
                        })
                    }
                    CdbSize::Sixteen => CdbBytes::of(&Lba16Cdb {
                        opcode: opcode::SYNCHRONIZE_CACHE_16,
                        flags,
                        lba: s.lba.into(),
                        length: s.blocks.into(),
                        group: 0,
                        control: 0,
                    }),
                }
            }
            Self::Unmap {
                anchor,
                parameter_list_length,
            } => CdbBytes::of(&UnmapCdb {
                opcode: opcode::UNMAP,
                flags: flag(anchor, 1),
                reserved: [0; 4],
                group: 0,
                parameter_list_length: parameter_list_length.into(),
                control: 0,
            }),
            Self::ModeSense(m) => {
                if m.page_control > 3 || m.page_code > 0x3F {
                    return bad(2);
                }
                let page = (m.page_control << 6) | m.page_code;
                match m.size {
                    CdbSize::Six => {
                        let Ok(len) = u8::try_from(m.allocation_length) else {
                            return bad(4);
                        };
                        if m.llbaa {
                            return bad(1);
                        }
                        CdbBytes::of(&ModeSense6Cdb {
                            opcode: opcode::MODE_SENSE_6,
                            flags: flag(m.dbd, 0x08),
                            page,
                            subpage: m.subpage,
                            allocation_length: len,
                            control: 0,
                        })
                    }
                    CdbSize::Ten => CdbBytes::of(&ModeSense10Cdb {
                        opcode: opcode::MODE_SENSE_10,
                        flags: flag(m.dbd, 0x08) | flag(m.llbaa, 0x10),
                        page,
                        subpage: m.subpage,
                        reserved: [0; 3],
                        allocation_length: m.allocation_length.into(),
                        control: 0,
                    }),
                    CdbSize::Sixteen => return bad(0),
                }
            }
            Self::ReportLuns {
                select_report,
                allocation_length,
            } => CdbBytes::of(&ReportLunsCdb {
                opcode: opcode::REPORT_LUNS,
                reserved1: 0,
                select_report,
                reserved2: [0; 3],
                allocation_length: allocation_length.into(),
                reserved3: 0,
                control: 0,
            }),
            Self::StartStopUnit(s) => {
                if s.power_condition > 0xF {
                    return bad(4);
                }
                if s.modifier > 0xF {
                    return bad(3);
                }
                CdbBytes::of(&StartStopUnitCdb {
                    opcode: opcode::START_STOP_UNIT,
                    immed: flag(s.immed, 1),
                    reserved: 0,
                    power_condition_modifier: s.modifier,
                    flags: (s.power_condition << 4)
                        | flag(s.no_flush, 0x04)
                        | flag(s.loej, 0x02)
                        | flag(s.start, 0x01),
                    control: 0,
                })
            }
        })
    }
}

/// Why an UNMAP parameter list did not parse or build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmapListError {
    /// Shorter than its header, or the lengths disagree with the bytes.
    BadLength,
    /// More descriptors than the caller's buffer holds.
    TooManyDescriptors,
}

/// A parsed UNMAP parameter list: its block descriptors, validated against the list's bytes.
#[derive(Debug, Clone, Copy)]
pub struct UnmapList<'a> {
    descriptors: &'a [u8],
}

impl<'a> UnmapList<'a> {
    /// Parses the data-out bytes of UNMAP (`parameter_list_length` bytes). An empty list (no
    /// bytes, or a header with no descriptors) is valid and unmaps nothing. Descriptor bytes
    /// are cut to a whole number of descriptors and to what the bytes hold, as SBC allows a
    /// device to ignore a partial trailing descriptor; a header claiming more bytes than
    /// present is an error.
    pub fn parse(b: &'a [u8]) -> Result<Self, UnmapListError> {
        if b.is_empty() {
            return Ok(Self { descriptors: &[] });
        }
        let (h, rest) =
            UnmapParameterHeader::read_from_prefix(b).map_err(|_| UnmapListError::BadLength)?;
        let n = h.block_descriptor_data_length.get() as usize;
        if n > rest.len() || (h.data_length.get() as usize) < n + 6 {
            return Err(UnmapListError::BadLength);
        }
        let n = n - n % 16;
        Ok(Self {
            descriptors: &rest[..n],
        })
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.descriptors.len() / 16
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.descriptors.is_empty()
    }

    /// The `(lba, blocks)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + 'a {
        self.descriptors.chunks_exact(16).filter_map(|c| {
            UnmapBlockDescriptor::read_from_bytes(c)
                .ok()
                .map(|d| (d.lba.get(), d.blocks.get()))
        })
    }

    /// Builds a parameter list for `ranges` (`(lba, blocks)`) into `out`; returns its length
    /// (8 + 16 per range).
    pub fn build(out: &mut [u8], ranges: &[(u64, u32)]) -> Result<usize, UnmapListError> {
        let len = 8 + 16 * ranges.len();
        if len > u16::MAX as usize {
            return Err(UnmapListError::TooManyDescriptors);
        }
        let out = out
            .get_mut(..len)
            .ok_or(UnmapListError::TooManyDescriptors)?;
        out[..8].copy_from_slice(
            UnmapParameterHeader {
                data_length: ((len - 2) as u16).into(),
                block_descriptor_data_length: ((len - 8) as u16).into(),
                reserved: 0.into(),
            }
            .as_bytes(),
        );
        for (c, &(lba, blocks)) in out[8..].chunks_exact_mut(16).zip(ranges) {
            c.copy_from_slice(
                UnmapBlockDescriptor {
                    lba: lba.into(),
                    blocks: blocks.into(),
                    reserved: 0.into(),
                }
                .as_bytes(),
            );
        }
        Ok(len)
    }
}

#[cfg(test)]
mod tests;
