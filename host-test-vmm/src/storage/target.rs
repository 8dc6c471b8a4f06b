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
use vsc_storage::vstor::SrbStatus;

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

/// SCSI operation codes this target knows (SPC-4 / SBC-3).
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2A;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is service action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// READ CAPACITY(16) service action.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;

    /// A name for the trace.
    pub fn name(op: u8) -> &'static str {
        match op {
            TEST_UNIT_READY => "TEST_UNIT_READY",
            REQUEST_SENSE => "REQUEST_SENSE",
            READ_6 => "READ_6",
            WRITE_6 => "WRITE_6",
            INQUIRY => "INQUIRY",
            MODE_SENSE_6 => "MODE_SENSE_6",
            START_STOP_UNIT => "START_STOP_UNIT",
            READ_CAPACITY_10 => "READ_CAPACITY_10",
            READ_10 => "READ_10",
            WRITE_10 => "WRITE_10",
            SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE_CACHE_10",
            UNMAP => "UNMAP",
            MODE_SENSE_10 => "MODE_SENSE_10",
            READ_16 => "READ_16",
            WRITE_16 => "WRITE_16",
            SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE_CACHE_16",
            SERVICE_ACTION_IN_16 => "SERVICE_ACTION_IN_16",
            REPORT_LUNS => "REPORT_LUNS",
            0x41 => "WRITE_SAME_10",
            0x93 => "WRITE_SAME_16",
            0xA3 => "MAINTENANCE_IN",
            0x5E => "PERSISTENT_RESERVE_IN",
            0x5F => "PERSISTENT_RESERVE_OUT",
            _ => "UNKNOWN",
        }
    }
}

/// SAM status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;

/// Sense keys, ASC/ASCQ this target reports (SPC-4 4.5.6, annex D).
pub mod sense {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// WRITE ERROR (MEDIUM ERROR).
    pub const ASC_WRITE_ERROR: (u8, u8) = (0x0C, 0x00);
    /// UNRECOVERED READ ERROR (MEDIUM ERROR).
    pub const ASC_UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const ASC_PARAMETER_LIST_LENGTH: (u8, u8) = (0x1A, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const ASC_INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const ASC_LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const ASC_INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const ASC_INVALID_FIELD_IN_PARAMETER_LIST: (u8, u8) = (0x26, 0x00);
    /// WRITE PROTECTED.
    pub const ASC_WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
}

/// Fixed-format sense data (SPC-4 4.5.3), 18 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Qualifier.
    pub ascq: u8,
}

impl Sense {
    /// A sense from a key and an (ASC, ASCQ) pair.
    pub const fn new(key: u8, code: (u8, u8)) -> Self {
        Self {
            key,
            asc: code.0,
            ascq: code.1,
        }
    }

    /// The 18 bytes: current error, fixed format.
    pub fn to_bytes(self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0xF;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResult {
    /// SRB status (with AUTOSENSE_VALID when `sense` is set).
    pub srb_status: SrbStatus,
    /// SAM status.
    pub scsi_status: u8,
    /// Sense data (CHECK CONDITION).
    pub sense: Option<Sense>,
    /// Bytes moved.
    pub transferred: u32,
}

impl ScsiResult {
    /// GOOD with `transferred` bytes.
    pub fn good(transferred: u64) -> Self {
        Self {
            srb_status: SrbStatus::SUCCESS,
            scsi_status: 0,
            sense: None,
            transferred: u32::try_from(transferred).unwrap_or(u32::MAX),
        }
    }

    /// CHECK CONDITION with autosense.
    pub fn check(s: Sense) -> Self {
        Self {
            srb_status: SrbStatus::ERROR.with_autosense(),
            scsi_status: CHECK_CONDITION,
            sense: Some(s),
            transferred: 0,
        }
    }

    /// A non-SCSI failure of the request itself (no sense).
    pub fn srb(status: SrbStatus) -> Self {
        Self {
            srb_status: status,
            scsi_status: 0,
            sense: None,
            transferred: 0,
        }
    }
}

fn illegal(code: (u8, u8)) -> ScsiResult {
    ScsiResult::check(Sense::new(sense::ILLEGAL_REQUEST, code))
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

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
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
    /// how much of it the guest allows.
    pub fn execute(
        &self,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
        luns: &[u8],
    ) -> ScsiResult {
        let cdb = cmd.cdb;
        let Some(&opcode) = cdb.first() else {
            return illegal(sense::ASC_INVALID_OPCODE);
        };
        // A CDB shorter than its group's size is malformed.
        let need = match opcode >> 5 {
            0 => 6,
            1 | 2 => 10,
            4 => 16,
            5 => 12,
            _ => 1,
        };
        if cdb.len() < need {
            return illegal(sense::ASC_INVALID_FIELD_IN_CDB);
        }
        let reply = |data: &[u8], alloc: u64| -> ScsiResult {
            let n = (data.len() as u64).min(alloc).min(cmd.transfer_len);
            match buf.write_from(mem, &data[..n as usize]) {
                Some(n) => ScsiResult::good(n),
                None => ScsiResult::srb(SrbStatus::INVALID_REQUEST),
            }
        };
        match opcode {
            op::TEST_UNIT_READY | op::START_STOP_UNIT => ScsiResult::good(0),
            op::REQUEST_SENSE => {
                // Sense is always returned with the failing command
                // (autosense), so there is never anything pending.
                reply(
                    &Sense::new(sense::NO_SENSE, (0, 0)).to_bytes(),
                    u64::from(cdb[4]),
                )
            }
            op::INQUIRY => {
                let alloc = u64::from(be16(cdb, 3));
                match self.inquiry(cdb) {
                    Some(d) => reply(&d, alloc),
                    None => illegal(sense::ASC_INVALID_FIELD_IN_CDB),
                }
            }
            op::READ_CAPACITY_10 => {
                let last = self.blocks().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
                let mut d = [0u8; 8];
                d[..4].copy_from_slice(&last.to_be_bytes());
                d[4..].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
                reply(&d, 8)
            }
            op::SERVICE_ACTION_IN_16 if cdb[1] & 0x1F == op::SA_READ_CAPACITY_16 => {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&BLOCK_SIZE.to_be_bytes());
                if !self.readonly() {
                    // LBPME | LBPRZ: UNMAP works, unmapped blocks read zero.
                    d[14] = 0xC0;
                }
                reply(&d, u64::from(be32(cdb, 10)))
            }
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(cdb, &reply),
            op::REPORT_LUNS => {
                let mut d = vec![0u8; 8 + 8 * luns.len()];
                d[..4].copy_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
                for (i, l) in luns.iter().enumerate() {
                    // Single-level peripheral device addressing.
                    d[8 + 8 * i + 1] = *l;
                }
                reply(&d, u64::from(be32(cdb, 6)))
            }
            op::READ_6 | op::WRITE_6 => {
                let lba = u64::from(be32(cdb, 0) & 0x1F_FFFF);
                let n = match cdb[4] {
                    0 => 256,
                    n => u32::from(n),
                };
                self.rw(opcode == op::WRITE_6, lba, n, false, cmd, buf, mem)
            }
            op::READ_10 | op::WRITE_10 => {
                let fua = cdb[1] & 0x08 != 0;
                let (lba, n) = (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)));
                self.rw(opcode == op::WRITE_10, lba, n, fua, cmd, buf, mem)
            }
            op::READ_16 | op::WRITE_16 => {
                let fua = cdb[1] & 0x08 != 0;
                let (lba, n) = (be64(cdb, 2), be32(cdb, 10));
                self.rw(opcode == op::WRITE_16, lba, n, fua, cmd, buf, mem)
            }
            op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => match self.backend.flush() {
                Ok(()) => ScsiResult::good(0),
                Err(e) => {
                    tracing::warn!(lun = self.lun, error = %e, "flush failed: MEDIUM ERROR");
                    ScsiResult::check(Sense::new(sense::MEDIUM_ERROR, sense::ASC_WRITE_ERROR))
                }
            },
            op::UNMAP => self.unmap(cdb, cmd, buf, mem),
            _ => illegal(sense::ASC_INVALID_OPCODE),
        }
    }

    fn check_range(&self, lba: u64, blocks: u32) -> Option<ScsiResult> {
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= self.blocks() => None,
            _ => Some(illegal(sense::ASC_LBA_OUT_OF_RANGE)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rw(
        &self,
        write: bool,
        lba: u64,
        blocks: u32,
        fua: bool,
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
    ) -> ScsiResult {
        if write && self.readonly() {
            return ScsiResult::check(Sense::new(sense::DATA_PROTECT, sense::ASC_WRITE_PROTECTED));
        }
        if let Some(r) = self.check_range(lba, blocks) {
            return r;
        }
        let bytes = u64::from(blocks) * u64::from(BLOCK_SIZE);
        if bytes == 0 {
            return ScsiResult::good(0);
        }
        if cmd.transfer_len < bytes {
            // The guest's buffer cannot hold what the CDB asks for.
            return illegal(sense::ASC_INVALID_FIELD_IN_CDB);
        }
        let Some(slices) = buf.slices(mem, 0, bytes) else {
            return ScsiResult::srb(SrbStatus::INVALID_REQUEST);
        };
        let offset = lba * u64::from(BLOCK_SIZE);
        let r = if write {
            self.backend.write_at(offset, &slices).and_then(|()| {
                if fua {
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
                tracing::warn!(lun = self.lun, lba, blocks, write, error = %e,
                    "host I/O error: MEDIUM ERROR");
                let code = if write {
                    sense::ASC_WRITE_ERROR
                } else {
                    sense::ASC_UNRECOVERED_READ_ERROR
                };
                ScsiResult::check(Sense::new(sense::MEDIUM_ERROR, code))
            }
        }
    }

    fn unmap(
        &self,
        cdb: &[u8],
        cmd: Command<'_>,
        buf: &DataBuffer,
        mem: &GuestMemoryMmap,
    ) -> ScsiResult {
        if self.readonly() {
            return ScsiResult::check(Sense::new(sense::DATA_PROTECT, sense::ASC_WRITE_PROTECTED));
        }
        let plen = u64::from(be16(cdb, 7));
        if plen == 0 {
            return ScsiResult::good(0);
        }
        if plen < 8 || plen > cmd.transfer_len {
            return illegal(sense::ASC_PARAMETER_LIST_LENGTH);
        }
        let Some(p) = buf.read_to_vec(mem, plen) else {
            return ScsiResult::srb(SrbStatus::INVALID_REQUEST);
        };
        // Header: data length u16, descriptor data length u16, 4 reserved;
        // then 16-byte descriptors {lba u64, blocks u32, reserved u32}.
        let dlen = usize::from(be16(&p, 2));
        if dlen % 16 != 0 || 8 + dlen > p.len() {
            return illegal(sense::ASC_PARAMETER_LIST_LENGTH);
        }
        let count = dlen / 16;
        if count as u32 > MAX_UNMAP_DESCRIPTORS {
            return illegal(sense::ASC_INVALID_FIELD_IN_PARAMETER_LIST);
        }
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let d = &p[8 + 16 * i..8 + 16 * (i + 1)];
            let (lba, n) = (be64(d, 0), be32(d, 8));
            if n > MAX_UNMAP_BLOCKS {
                return illegal(sense::ASC_INVALID_FIELD_IN_PARAMETER_LIST);
            }
            if let Some(r) = self.check_range(lba, n) {
                return r;
            }
            ranges.push((lba, n));
        }
        // All descriptors are valid: only now touch the image.
        for (lba, n) in ranges {
            let bs = u64::from(BLOCK_SIZE);
            if let Err(e) = self.backend.discard(lba * bs, u64::from(n) * bs) {
                tracing::warn!(lun = self.lun, lba, n, error = %e, "discard failed: MEDIUM ERROR");
                return ScsiResult::check(Sense::new(sense::MEDIUM_ERROR, sense::ASC_WRITE_ERROR));
            }
        }
        ScsiResult::good(0)
    }

    fn inquiry(&self, cdb: &[u8]) -> Option<Vec<u8>> {
        let evpd = cdb[1] & 1 != 0;
        if !evpd {
            if cdb[2] != 0 {
                return None;
            }
            return Some(standard_inquiry(0x00));
        }
        let page = cdb[2];
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2],
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => {
                // One T10 vendor-id designator (ASCII, associated with the LU).
                let mut id = VENDOR.to_vec();
                id.extend_from_slice(self.serial.as_bytes());
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                d.extend_from_slice(&id);
                d
            }
            0xB0 => {
                let mut d = vec![0u8; 0x3C];
                let max_blocks = super::MAX_TRANSFER_BYTES / BLOCK_SIZE;
                // Offsets below are page offsets minus the 4-byte header.
                d[4..8].copy_from_slice(&max_blocks.to_be_bytes());
                d[8..12].copy_from_slice(&max_blocks.to_be_bytes());
                if !self.readonly() {
                    d[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                    d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                    // Optimal unmap granularity: 4 KiB.
                    d[24..28].copy_from_slice(&8u32.to_be_bytes());
                }
                d
            }
            0xB1 => {
                let mut d = vec![0u8; 0x3C];
                // Medium rotation rate 1: non-rotating (solid state).
                d[0..2].copy_from_slice(&1u16.to_be_bytes());
                d
            }
            0xB2 => {
                let mut d = vec![0u8; 4];
                if !self.readonly() {
                    // LBPU (UNMAP supported), LBPRZ = 1 (reads zeros); thin provisioned.
                    d[1] = 0x80 | 0x04;
                    d[2] = 0x02;
                }
                d
            }
            _ => return None,
        };
        let mut out = vec![0x00, page];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }

    fn mode_sense(&self, cdb: &[u8], reply: &dyn Fn(&[u8], u64) -> ScsiResult) -> ScsiResult {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3F;
        let subpage = cdb[3];
        let alloc = if ten {
            u64::from(be16(cdb, 7))
        } else {
            u64::from(cdb[4])
        };
        if pc == 3 {
            // Saved values are not supported (SPC-4 6.11).
            return illegal((0x39, 0x00));
        }
        let mut pages = Vec::new();
        if (page == 0x08 || page == 0x3F) && (subpage == 0 || subpage == 0xFF) {
            // Caching mode page: WCE = 1 (writes go to the host page cache;
            // SYNCHRONIZE CACHE makes them durable). Changeable values: none.
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 18;
            if pc != 1 {
                p[2] = 0x04;
            }
            pages.extend_from_slice(&p);
        }
        // Device-specific parameter: WP for a read-only disk.
        let dsp = if self.readonly() { 0x80 } else { 0x00 };
        let data = if ten {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&((6 + pages.len()) as u16).to_be_bytes());
            h[3] = dsp;
            h.extend_from_slice(&pages);
            h
        } else {
            let mut h = vec![(3 + pages.len()) as u8, 0, dsp, 0];
            h.extend_from_slice(&pages);
            h
        };
        reply(&data, alloc)
    }
}

/// Standard INQUIRY data with peripheral byte `peripheral` (0x00: direct
/// access, present; 0x7F: no LUN here).
pub fn standard_inquiry(peripheral: u8) -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = peripheral;
    // SPC-4 (Linux then uses READ CAPACITY(16) first).
    d[2] = 0x06;
    // Response data format 2, HiSup.
    d[3] = 0x12;
    d[4] = 31;
    // CmdQue.
    d[7] = 0x02;
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(REVISION);
    d
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
    let cdb = cmd.cdb;
    match cdb.first() {
        Some(&op::INQUIRY) if cdb.len() >= 6 => {
            let d = standard_inquiry(0x7F);
            let n = (d.len() as u64)
                .min(u64::from(be16(cdb, 3)))
                .min(cmd.transfer_len);
            match buf.write_from(mem, &d[..n as usize]) {
                Some(n) => ScsiResult::good(n),
                None => ScsiResult::srb(SrbStatus::INVALID_REQUEST),
            }
        }
        Some(&op::REPORT_LUNS) if cdb.len() >= 12 => {
            let mut d = vec![0u8; 8 + 8 * luns.len()];
            d[..4].copy_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
            for (i, l) in luns.iter().enumerate() {
                d[8 + 8 * i + 1] = *l;
            }
            let n = (d.len() as u64)
                .min(u64::from(be32(cdb, 6)))
                .min(cmd.transfer_len);
            match buf.write_from(mem, &d[..n as usize]) {
                Some(n) => ScsiResult::good(n),
                None => ScsiResult::srb(SrbStatus::INVALID_REQUEST),
            }
        }
        _ => ScsiResult::srb(SrbStatus::INVALID_LUN),
    }
}
