//! The SCSI target: one LUN per disk, the commands Linux's sd and scsi scan
//! send (fact sheet §8.5), answered from a [`DiskBackend`] with data moved
//! straight between the backend and the request's guest pages.
//!
//! Supported: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard, VPD 0x00,
//! 0x80, 0x83, 0xB0, 0xB1, 0xB2), READ CAPACITY(10/16), READ/WRITE(6/10/16),
//! SYNCHRONIZE CACHE(10/16) (fdatasync), UNMAP (hole punching), MODE
//! SENSE(6/10) (caching page; unknown pages give an empty, well-formed
//! reply because Linux ignores the status of MODE SENSE), REPORT LUNS, START
//! STOP UNIT. Anything else is CHECK CONDITION / ILLEGAL REQUEST / INVALID
//! COMMAND OPERATION CODE. Writes and UNMAP on a read-only disk get DATA
//! PROTECT; a host I/O error becomes MEDIUM ERROR (unrecovered read error /
//! write error), never a crash or a silent success.

use super::backend::DiskBackend;
use super::buffer::DataBuffer;
use std::sync::Arc;
use vm_memory::GuestMemoryMmap;
use vsc_storage::scsi::{
    self, encode_lun, opcode, BlockLimitsVpd, Cdb, CdbError, LogicalBlockProvisioningVpd,
    ModeParameterHeader10, ModeParameterHeader6, ReadCapacity10Data, ReadCapacity16Data, ReadWrite,
    ReportLunsHeader, ScsiStatus, StandardInquiryData, UnmapList, VpdPageHeader,
};
use vsc_storage::sense::{AdditionalSense, Sense, SenseKey};
use vsc_storage::vstor::SrbStatus;
use zerocopy::IntoBytes;

/// Logical block size of every disk.
pub const BLOCK_SIZE: u32 = 512;
/// INQUIRY vendor (8 bytes). Not "Msft": Linux would then enable WRITE SAME,
/// which this target does not implement (fact sheet §8.5).
pub const VENDOR: &[u8; 8] = b"hvkit   ";
/// INQUIRY product (16 bytes).
pub const PRODUCT: &[u8; 16] = b"storvsp disk    ";
/// INQUIRY revision (4 bytes).
pub const REVISION: &[u8; 4] = b"0001";
/// Most blocks one UNMAP descriptor may name (VPD 0xB0).
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 22;
/// Most descriptors one UNMAP may carry (VPD 0xB0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// VPD pages this target answers, in page 0x00 order.
pub const VPD_PAGES: [u8; 6] = [
    scsi::vpd::SUPPORTED_PAGES,
    scsi::vpd::UNIT_SERIAL_NUMBER,
    scsi::vpd::DEVICE_IDENTIFICATION,
    scsi::vpd::BLOCK_LIMITS,
    scsi::vpd::BLOCK_DEVICE_CHARACTERISTICS,
    scsi::vpd::LOGICAL_BLOCK_PROVISIONING,
];

/// A name for an opcode in the trace.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        opcode::TEST_UNIT_READY => "TEST_UNIT_READY",
        opcode::REQUEST_SENSE => "REQUEST_SENSE",
        opcode::READ_6 => "READ_6",
        opcode::WRITE_6 => "WRITE_6",
        opcode::INQUIRY => "INQUIRY",
        opcode::MODE_SELECT_6 => "MODE_SELECT_6",
        opcode::MODE_SENSE_6 => "MODE_SENSE_6",
        opcode::START_STOP_UNIT => "START_STOP_UNIT",
        opcode::PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT_ALLOW_MEDIUM_REMOVAL",
        opcode::READ_CAPACITY_10 => "READ_CAPACITY_10",
        opcode::READ_10 => "READ_10",
        opcode::WRITE_10 => "WRITE_10",
        opcode::VERIFY_10 => "VERIFY_10",
        opcode::SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE_CACHE_10",
        opcode::WRITE_SAME_10 => "WRITE_SAME_10",
        opcode::UNMAP => "UNMAP",
        opcode::MODE_SELECT_10 => "MODE_SELECT_10",
        opcode::MODE_SENSE_10 => "MODE_SENSE_10",
        opcode::PERSISTENT_RESERVE_IN => "PERSISTENT_RESERVE_IN",
        opcode::PERSISTENT_RESERVE_OUT => "PERSISTENT_RESERVE_OUT",
        opcode::ATA_16 => "ATA_16",
        opcode::READ_16 => "READ_16",
        opcode::WRITE_16 => "WRITE_16",
        opcode::SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE_CACHE_16",
        opcode::WRITE_SAME_16 => "WRITE_SAME_16",
        opcode::SERVICE_ACTION_IN_16 => "SERVICE_ACTION_IN_16",
        opcode::REPORT_LUNS => "REPORT_LUNS",
        opcode::ATA_12 => "ATA_12",
        opcode::MAINTENANCE_IN => "MAINTENANCE_IN",
        _ => "UNKNOWN",
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResult {
    /// SRB status (with AUTOSENSE_VALID when `sense` is set).
    pub srb_status: SrbStatus,
    /// SAM status.
    pub scsi_status: ScsiStatus,
    /// Sense data (CHECK CONDITION), sent in fixed format.
    pub sense: Option<Sense>,
    /// Bytes moved.
    pub transferred: u32,
}

impl ScsiResult {
    /// GOOD with `transferred` bytes.
    pub fn good(transferred: u64) -> Self {
        Self {
            srb_status: SrbStatus::SUCCESS,
            scsi_status: ScsiStatus::GOOD,
            sense: None,
            transferred: u32::try_from(transferred).unwrap_or(u32::MAX),
        }
    }

    /// CHECK CONDITION with autosense.
    pub fn check(s: Sense) -> Self {
        Self {
            srb_status: SrbStatus::ERROR.with_autosense(),
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense: Some(s),
            transferred: 0,
        }
    }

    /// CHECK CONDITION with `key` and `additional`.
    pub fn check_with(key: SenseKey, additional: AdditionalSense) -> Self {
        Self::check(Sense::new(key, additional))
    }

    /// A non-SCSI failure of the request itself (no sense).
    pub fn srb(status: SrbStatus) -> Self {
        Self {
            srb_status: status,
            scsi_status: ScsiStatus::GOOD,
            sense: None,
            transferred: 0,
        }
    }
}

fn illegal(a: AdditionalSense) -> ScsiResult {
    ScsiResult::check_with(SenseKey::ILLEGAL_REQUEST, a)
}

fn medium_error(write: bool) -> ScsiResult {
    ScsiResult::check_with(
        SenseKey::MEDIUM_ERROR,
        if write {
            AdditionalSense::WRITE_ERROR
        } else {
            AdditionalSense::UNRECOVERED_READ_ERROR
        },
    )
}

fn write_protected() -> ScsiResult {
    ScsiResult::check_with(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED)
}

/// The answer to a CDB [`Cdb::parse`] refused.
fn cdb_error(e: CdbError) -> ScsiResult {
    match e {
        CdbError::Unsupported(_) | CdbError::Empty => {
            illegal(AdditionalSense::INVALID_COMMAND_OPERATION_CODE)
        }
        CdbError::InvalidField { byte } => {
            ScsiResult::check(Sense::invalid_field_in_cdb(u16::from(byte), None))
        }
        CdbError::TooShort { .. } => illegal(AdditionalSense::INVALID_FIELD_IN_CDB),
    }
}

/// The request as the target sees it.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    /// The CDB (1..=16 bytes).
    pub cdb: &'a [u8],
    /// Bytes the guest allows to move (`data_transfer_length` clamped to the
    /// buffer).
    pub transfer_len: u64,
}

/// Copy `data` (cut to `alloc` and to what the guest allows) into the
/// request's buffer.
fn reply(
    cmd: Command<'_>,
    buf: &DataBuffer,
    mem: &GuestMemoryMmap,
    data: &[u8],
    alloc: u64,
) -> ScsiResult {
    let n = (data.len() as u64).min(alloc).min(cmd.transfer_len);
    match buf.write_from(mem, &data[..n as usize]) {
        Some(n) => ScsiResult::good(n),
        None => ScsiResult::srb(SrbStatus::INVALID_REQUEST),
    }
}

fn report_luns(luns: &[u8]) -> Vec<u8> {
    let mut d = ReportLunsHeader {
        lun_list_length: ((8 * luns.len()) as u32).into(),
        reserved: 0.into(),
    }
    .as_bytes()
    .to_vec();
    for l in luns {
        d.extend_from_slice(&encode_lun(u16::from(*l)));
    }
    d
}

/// One LUN.
pub struct Disk {
    backend: Arc<dyn DiskBackend>,
    lun: u8,
    serial: String,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("lun", &self.lun)
            .field("backend", &self.backend.describe())
            .field("blocks", &self.blocks())
            .finish()
    }
}

impl Disk {
    /// LUN `lun` over `backend`; `serial` names it in VPD 0x80/0x83.
    pub fn new(lun: u8, backend: Arc<dyn DiskBackend>, serial: String) -> Self {
        Self {
            backend,
            lun,
            serial,
        }
    }

    /// The LUN.
    pub fn lun(&self) -> u8 {
        self.lun
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn DiskBackend> {
        &self.backend
    }

    /// Number of 512-byte blocks (a partial last block is not addressable).
    pub fn blocks(&self) -> u64 {
        self.backend.len() / u64::from(BLOCK_SIZE)
    }

    /// Unit serial number (VPD 0x80).
    pub fn serial(&self) -> &str {
        &self.serial
    }

    fn readonly(&self) -> bool {
        self.backend.readonly()
    }

    /// Run one command. `buf` is the request's data buffer, `cmd.transfer_len`
    /// how much of it the guest allows; `luns` answers REPORT LUNS.
    pub fn execute(
        &self,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
        luns: &[u8],
    ) -> ScsiResult {
        let c = match Cdb::parse(cmd.cdb) {
            Ok(c) => c,
            Err(e) => return cdb_error(e),
        };
        match c {
            Cdb::TestUnitReady | Cdb::StartStopUnit(_) => ScsiResult::good(0),
            Cdb::RequestSense {
                allocation_length, ..
            } => {
                // Sense goes back with the failing command (autosense), so
                // nothing is ever pending here.
                let s = Sense::new(SenseKey::NO_SENSE, AdditionalSense::NO_ADDITIONAL_SENSE);
                reply(cmd, buf, mem, &s.to_fixed(), u64::from(allocation_length))
            }
            Cdb::Inquiry {
                evpd,
                page_code,
                allocation_length,
            } => {
                let data = if evpd {
                    self.vpd(page_code)
                } else {
                    Some(standard_inquiry(scsi::peripheral::DISK))
                };
                match data {
                    Some(d) => reply(cmd, buf, mem, &d, u64::from(allocation_length)),
                    None => ScsiResult::check(Sense::invalid_field_in_cdb(2, None)),
                }
            }
            Cdb::ReadCapacity10 => {
                let d = ReadCapacity10Data {
                    last_lba: (self.blocks().saturating_sub(1).min(u64::from(u32::MAX)) as u32)
                        .into(),
                    block_length: BLOCK_SIZE.into(),
                };
                reply(cmd, buf, mem, d.as_bytes(), 8)
            }
            Cdb::ReadCapacity16 { allocation_length } => {
                let d = ReadCapacity16Data {
                    last_lba: self.blocks().saturating_sub(1).into(),
                    block_length: BLOCK_SIZE.into(),
                    protection: 0,
                    exponents: 0,
                    // UNMAP works and unmapped blocks read as zeros.
                    provisioning: if self.readonly() {
                        0
                    } else {
                        ReadCapacity16Data::LBPME | ReadCapacity16Data::LBPRZ
                    }
                    .into(),
                    reserved: [0; 16],
                };
                reply(cmd, buf, mem, d.as_bytes(), u64::from(allocation_length))
            }
            Cdb::ModeSense(m) => self.mode_sense(m, cmd, buf, mem),
            Cdb::ReportLuns {
                allocation_length, ..
            } => reply(
                cmd,
                buf,
                mem,
                &report_luns(luns),
                u64::from(allocation_length),
            ),
            Cdb::Read(rw) => self.rw(false, rw, cmd, buf, mem),
            Cdb::Write(rw) => self.rw(true, rw, cmd, buf, mem),
            Cdb::SynchronizeCache(_) => match self.backend.flush() {
                // The whole image is synced whatever range was named.
                Ok(()) => ScsiResult::good(0),
                Err(e) => {
                    tracing::warn!(lun = self.lun, error = %e, "flush failed: MEDIUM ERROR");
                    medium_error(true)
                }
            },
            Cdb::Unmap {
                parameter_list_length,
                ..
            } => self.unmap(u64::from(parameter_list_length), cmd, buf, mem),
        }
    }

    fn check_range(&self, lba: u64, blocks: u32) -> Option<ScsiResult> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.blocks() => None,
            _ => Some(illegal(AdditionalSense::LBA_OUT_OF_RANGE)),
        }
    }

    fn rw(
        &self,
        write: bool,
        rw: ReadWrite,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
    ) -> ScsiResult {
        if write && self.readonly() {
            return write_protected();
        }
        if let Some(r) = self.check_range(rw.lba, rw.blocks) {
            return r;
        }
        let bytes = u64::from(rw.blocks) * u64::from(BLOCK_SIZE);
        if bytes == 0 {
            return ScsiResult::good(0);
        }
        if cmd.transfer_len < bytes {
            // The guest's buffer cannot hold what the CDB asks for.
            return illegal(AdditionalSense::INVALID_FIELD_IN_CDB);
        }
        let Some(slices) = buf.slices(mem, 0, bytes) else {
            return ScsiResult::srb(SrbStatus::INVALID_REQUEST);
        };
        let offset = rw.lba * u64::from(BLOCK_SIZE);
        let r = if write {
            self.backend.write_at(offset, &slices).and_then(|()| {
                if rw.fua {
                    self.backend.flush()
                } else {
                    Ok(())
                }
            })
        } else {
            self.backend.read_at(offset, &slices)
        };
        match r {
            Ok(()) => ScsiResult::good(bytes),
            Err(e) => {
                tracing::warn!(lun = self.lun, lba = rw.lba, blocks = rw.blocks, write, error = %e,
                    "host I/O error: MEDIUM ERROR");
                medium_error(write)
            }
        }
    }

    fn unmap(
        &self,
        plen: u64,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
    ) -> ScsiResult {
        if self.readonly() {
            return write_protected();
        }
        if plen == 0 {
            return ScsiResult::good(0);
        }
        if plen < 8 || plen > cmd.transfer_len {
            return illegal(AdditionalSense::PARAMETER_LIST_LENGTH_ERROR);
        }
        let Some(p) = buf.read_to_vec(mem, plen) else {
            return ScsiResult::srb(SrbStatus::INVALID_REQUEST);
        };
        let Ok(list) = UnmapList::parse(&p) else {
            return illegal(AdditionalSense::PARAMETER_LIST_LENGTH_ERROR);
        };
        if list.len() > MAX_UNMAP_DESCRIPTORS as usize {
            return illegal(AdditionalSense::INVALID_FIELD_IN_PARAMETER_LIST);
        }
        for (lba, n) in list.iter() {
            if n > MAX_UNMAP_BLOCKS {
                return illegal(AdditionalSense::INVALID_FIELD_IN_PARAMETER_LIST);
            }
            if let Some(r) = self.check_range(lba, n) {
                return r;
            }
        }
        // Every descriptor is valid: only now touch the image.
        let bs = u64::from(BLOCK_SIZE);
        for (lba, n) in list.iter() {
            if let Err(e) = self.backend.discard(lba * bs, u64::from(n) * bs) {
                tracing::warn!(lun = self.lun, lba, n, error = %e, "discard failed: MEDIUM ERROR");
                return medium_error(true);
            }
        }
        ScsiResult::good(0)
    }

    /// A VPD page, header included; `None` for a page this target lacks.
    fn vpd(&self, page: u8) -> Option<Vec<u8>> {
        let body: Vec<u8> = match page {
            scsi::vpd::SUPPORTED_PAGES => VPD_PAGES.to_vec(),
            scsi::vpd::UNIT_SERIAL_NUMBER => self.serial.as_bytes().to_vec(),
            scsi::vpd::DEVICE_IDENTIFICATION => {
                // One T10 vendor-id designator: code set ASCII (2), type 1,
                // associated with the logical unit.
                let mut id = VENDOR.to_vec();
                id.extend_from_slice(self.serial.as_bytes());
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                d.extend_from_slice(&id);
                d
            }
            scsi::vpd::BLOCK_LIMITS => {
                let max_blocks = super::MAX_TRANSFER_BYTES / BLOCK_SIZE;
                let (unmap_blocks, unmap_descs, granularity) = if self.readonly() {
                    (0, 0, 0)
                } else {
                    // Optimal unmap granularity: 4 KiB.
                    (MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, 8)
                };
                let p = BlockLimitsVpd {
                    header: vpd_header(page, 0x3C),
                    wsnz: 0,
                    max_compare_and_write_length: 0,
                    optimal_transfer_length_granularity: 0.into(),
                    max_transfer_length: max_blocks.into(),
                    optimal_transfer_length: max_blocks.into(),
                    max_prefetch_length: 0.into(),
                    max_unmap_lba_count: unmap_blocks.into(),
                    max_unmap_block_descriptor_count: unmap_descs.into(),
                    optimal_unmap_granularity: granularity.into(),
                    unmap_granularity_alignment: 0.into(),
                    max_write_same_length: 0.into(),
                    reserved: [0; 20],
                };
                return Some(p.as_bytes().to_vec());
            }
            scsi::vpd::BLOCK_DEVICE_CHARACTERISTICS => {
                let mut d = vec![0u8; 0x3C];
                // Medium rotation rate 1: non-rotating (solid state).
                d[0..2].copy_from_slice(&1u16.to_be_bytes());
                d
            }
            scsi::vpd::LOGICAL_BLOCK_PROVISIONING => {
                let (flags, kind) = if self.readonly() {
                    (0, 0)
                } else {
                    // LBPU, LBPRZ = 1 (bits 4:2); thin provisioned (2).
                    (LogicalBlockProvisioningVpd::LBPU | 0x04, 2)
                };
                let p = LogicalBlockProvisioningVpd {
                    header: vpd_header(page, 4),
                    threshold_exponent: 0,
                    flags,
                    provisioning_type: kind,
                    reserved: 0,
                };
                return Some(p.as_bytes().to_vec());
            }
            _ => return None,
        };
        let mut out = vpd_header(page, body.len() as u16).as_bytes().to_vec();
        out.extend_from_slice(&body);
        Some(out)
    }

    fn mode_sense(
        &self,
        m: scsi::ModeSense,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
    ) -> ScsiResult {
        if m.page_control == 3 {
            // Saved values are not supported (SPC-4 6.11).
            return illegal(AdditionalSense::SAVING_PARAMETERS_NOT_SUPPORTED);
        }
        let mut pages = Vec::new();
        if (m.page_code == scsi::mode_page::CACHING || m.page_code == scsi::mode_page::ALL)
            && (m.subpage == 0 || m.subpage == 0xFF)
        {
            // Caching mode page: WCE = 1 (writes reach the host page cache;
            // SYNCHRONIZE CACHE makes them durable). Nothing is changeable.
            let mut p = [0u8; scsi::CACHING_PAGE_LEN];
            p[0] = scsi::mode_page::CACHING;
            p[1] = (scsi::CACHING_PAGE_LEN - 2) as u8;
            if m.page_control != 1 {
                p[2] = scsi::CACHING_WCE;
            }
            pages.extend_from_slice(&p);
        }
        // Pages this target lacks give a header with no page (not an
        // error: Linux ignores the status of MODE SENSE, fact sheet §8.3).
        let dsp = if self.readonly() { scsi::MODE_WP } else { 0 };
        let mut data = match m.size {
            scsi::CdbSize::Ten => ModeParameterHeader10 {
                mode_data_length: ((6 + pages.len()) as u16).into(),
                medium_type: 0,
                device_specific: dsp,
                flags: 0,
                reserved: 0,
                block_descriptor_length: 0.into(),
            }
            .as_bytes()
            .to_vec(),
            _ => ModeParameterHeader6 {
                mode_data_length: (3 + pages.len()) as u8,
                medium_type: 0,
                device_specific: dsp,
                block_descriptor_length: 0,
            }
            .as_bytes()
            .to_vec(),
        };
        data.extend_from_slice(&pages);
        reply(cmd, buf, mem, &data, u64::from(m.allocation_length))
    }
}

fn vpd_header(page: u8, len: u16) -> VpdPageHeader {
    VpdPageHeader {
        peripheral: scsi::peripheral::DISK,
        page_code: page,
        page_length: len.into(),
    }
}

/// Standard INQUIRY data with peripheral byte `peripheral`
/// ([`scsi::peripheral::DISK`], or [`scsi::peripheral::NO_LUN`]).
pub fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    StandardInquiryData {
        peripheral,
        rmb: 0,
        // SPC-4: Linux then asks READ CAPACITY(16) first.
        version: 6,
        // HiSup, response data format 2.
        response_format: 0x12,
        additional_length: 31,
        flags5: 0,
        flags6: 0,
        // CmdQue.
        flags7: 0x02,
        vendor: *VENDOR,
        product: *PRODUCT,
        revision: *REVISION,
    }
    .as_bytes()
    .to_vec()
}

/// The answer for an address with no disk: INQUIRY says "no LUN here"
/// (peripheral qualifier 3, as Linux expects; fact sheet §8.5), REPORT LUNS
/// lists `luns` (the LUNs of target 0; empty elsewhere), anything else is
/// SRB_STATUS_INVALID_LUN.
pub fn execute_no_lun(
    cmd: Command<'_>,
    buf: &DataBuffer,
    mem: &GuestMemoryMmap,
    luns: &[u8],
) -> ScsiResult {
    match Cdb::parse(cmd.cdb) {
        Ok(Cdb::Inquiry {
            evpd: false,
            allocation_length,
            ..
        }) => reply(
            cmd,
            buf,
            mem,
            &standard_inquiry(scsi::peripheral::NO_LUN),
            u64::from(allocation_length),
        ),
        Ok(Cdb::ReportLuns {
            allocation_length, ..
        }) => reply(
            cmd,
            buf,
            mem,
            &report_luns(luns),
            u64::from(allocation_length),
        ),
        _ => ScsiResult::srb(SrbStatus::INVALID_LUN),
    }
}
