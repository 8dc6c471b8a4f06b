//! The storage checks: `vsc-storage`'s guest driver over a VMBus channel to
//! host-test-vmm's synthetic SCSI controller (storvsp), with the two disks
//! `demo` attaches: LUN 0 8 MiB read-write, LUN 1 1 MiB read-only, every
//! 512-byte block starting "HVKITDSK" + LUN (u32 LE) + LBA (u64 LE), zeros
//! after.
//!
//! Waits are interrupt-driven: the host signals the channel, SINT2's handler
//! counts it, and the checks sleep (`sti; hlt`, bounded by watchdog ticks)
//! until the count moves, then drain the ring. Initialization and the probe
//! use the driver's blocking helpers with a bounded number of polls. Data
//! sizes stay small (the guest is emulated): at most 12 KiB per request.

use core::fmt;

use hypercall::page::{Page, PageRef, PAGE_SIZE};
use hypercall::platform::Platform;
use vmbus_guest::guid;
use vsc_storage::client::{ClientConfig, DeviceInfo, Event, IoDone, IoError, Lun, Tag};
use vsc_storage::device::{DeviceError, Disk, DmaBuf, HostSignal, StorvscDevice};
use vsc_storage::scsi::vpd;
use vsc_storage::sense::{AdditionalSense, SenseKey};
use vsc_storage::Cdb;

use crate::irq;
use crate::pages::RING_PAGES;
use crate::vmbus::{chan_irqs, open_channel, Failure, Ring, Shared};

static RING: [Page; RING_PAGES] = [const { Page::new() }; RING_PAGES];
/// Data buffers: 16 pages (qd32 uses 32 KiB of them).
const DATA_PAGES: usize = 16;
static DATA: [Page; DATA_PAGES] = [const { Page::new() }; DATA_PAGES];
/// Scratch page for INQUIRY / capacity data and the UNMAP list.
static SCRATCH: [Page; 1] = [const { Page::new() }];

const BLOCK: usize = 512;
const LUN0_BLOCKS: u64 = 16384;
const LUN1_BLOCKS: u64 = 2048;
const MAGIC: &[u8; 8] = b"HVKITDSK";
/// Polls the driver's blocking helpers may spin (init, probe, VPD, UNMAP).
const MAX_POLLS: u64 = 200_000;
/// Watchdog ticks (10 ms) for a request's completion.
const IO_TICKS: u64 = 300;
/// Pages per request the client supports: requests of up to 32 KiB keep the
/// worst-case packet small, so 64 fit the 12 KiB outbound ring.
const REQ_PAGES: usize = 9;
/// The outbound ring's data area (4 pages, the first a control page).
const OUT_DATA_BYTES: usize = (RING_PAGES / 2 - 1) * PAGE_SIZE;
/// Requests in flight at once in `storage-qd32`.
const QD: usize = 32;

/// Signals the host through the bus.
struct Sig<'s, 'a, P: Platform>(&'s Shared<'a, P>);

impl<P: Platform> HostSignal for Sig<'_, '_, P> {
    fn signal(&mut self, connection_id: u32) -> bool {
        self.0.with(|b| b.signal(connection_id).is_ok())
    }
}

type Dev<'s, 'a, 'p, P> = StorvscDevice<Ring<'p>, Sig<'s, 'a, P>, 64, REQ_PAGES>;

/// Why a step failed.
#[derive(Debug, Clone, Copy)]
enum Error {
    Open(Failure),
    /// A DMA buffer could not be laid out (a bug here, not the host's).
    Buffer,
    /// Fewer than 32 requests were in flight at once.
    Depth,
    Dev(&'static str, DeviceError),
    Timeout(&'static str),
    Io(&'static str, IoError),
    Mismatch {
        what: &'static str,
        lba: u64,
        at: usize,
        got: u8,
        want: u8,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(e) => write!(f, "open: {e}"),
            Self::Buffer => f.write_str("buffer layout"),
            Self::Depth => f.write_str("not all 32 requests were in flight at once"),
            Self::Dev(what, e) => write!(f, "{what}: {e:?}"),
            Self::Timeout(what) => write!(f, "{what}: no completion within {IO_TICKS} ticks"),
            Self::Io(what, e) => write!(f, "{what}: {e:?}"),
            Self::Mismatch {
                what,
                lba,
                at,
                got,
                want,
            } => write!(
                f,
                "{what}: LBA {lba} byte {at}: got {got:#04x}, expected {want:#04x}"
            ),
        }
    }
}

/// The original content of block `lba` of demo LUN `lun`, byte `i`.
fn original(lun: u8, lba: u64, i: usize) -> u8 {
    match i {
        0..8 => MAGIC[i],
        8..12 => u32::from(lun).to_le_bytes()[i - 8],
        12..20 => lba.to_le_bytes()[i - 12],
        _ => 0,
    }
}

/// The pattern the checks write: differs in every byte from the original and
/// from block to block (`seed` tells runs apart).
fn written(seed: u8, lba: u64, i: usize) -> u8 {
    (i as u8)
        .wrapping_mul(7)
        .wrapping_add(lba as u8)
        .wrapping_add(seed)
        ^ 0xA5
}

struct Store<'s, 'a, 'p, P: Platform> {
    relid: u32,
    dev: Dev<'s, 'a, 'p, P>,
}

impl<P: Platform> Store<'_, '_, '_, P> {
    /// Drains the ring until every tag in `tags` has completed (bounded,
    /// sleeping between channel interrupts).
    fn wait(
        &mut self,
        what: &'static str,
        tags: &[Tag],
        out: &mut [Option<Result<IoDone, IoError>>],
    ) -> Result<(), Error> {
        let start = irq::ticks();
        loop {
            let seen = chan_irqs(self.relid);
            self.dev
                .poll(|e| {
                    if let Event::Completed { tag, result } = e {
                        if let Some(i) = tags.iter().position(|t| *t == tag) {
                            out[i] = Some(result);
                        }
                    }
                })
                .map_err(|e| Error::Dev(what, e))?;
            if out[..tags.len()].iter().all(Option::is_some) {
                return Ok(());
            }
            if irq::ticks().wrapping_sub(start) > IO_TICKS {
                return Err(Error::Timeout(what));
            }
            let relid = self.relid;
            irq::wait_until(10, || chan_irqs(relid) != seen);
        }
    }

    /// One request to completion.
    fn one(&mut self, what: &'static str, tag: Tag) -> Result<IoDone, Error> {
        let mut out = [None];
        self.wait(what, &[tag], &mut out)?;
        match out[0] {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(Error::Io(what, e)),
            None => Err(Error::Timeout(what)),
        }
    }

    fn read(
        &mut self,
        what: &'static str,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
    ) -> Result<(), Error> {
        let tag = self
            .dev
            .submit_read(disk, lba, blocks, buf)
            .map_err(|e| Error::Dev(what, e))?;
        self.one(what, tag).map(|_| ())
    }

    fn write(
        &mut self,
        what: &'static str,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
    ) -> Result<(), Error> {
        let tag = self
            .dev
            .submit_write(disk, lba, blocks, buf)
            .map_err(|e| Error::Dev(what, e))?;
        self.one(what, tag).map(|_| ())
    }
}

/// Compares `blocks` blocks of `buf` (from `lba`) with `expect(lba, i)`.
fn verify(
    what: &'static str,
    buf: &DmaBuf<'_, '_>,
    lba: u64,
    blocks: u32,
    expect: impl Fn(u64, usize) -> u8,
) -> Result<(), Error> {
    let mut b = [0u8; BLOCK];
    for k in 0..blocks as usize {
        buf.read(k * BLOCK, &mut b);
        let l = lba + k as u64;
        if let Some(at) = (0..BLOCK).find(|&i| b[i] != expect(l, i)) {
            return Err(Error::Mismatch {
                what,
                lba: l,
                at,
                got: b[at],
                want: expect(l, at),
            });
        }
    }
    Ok(())
}

/// Fills `blocks` blocks of `buf` with `f(lba, i)`.
fn fill(buf: &DmaBuf<'_, '_>, lba: u64, blocks: u32, f: impl Fn(u64, usize) -> u8) {
    let mut b = [0u8; BLOCK];
    for k in 0..blocks as usize {
        let l = lba + k as u64;
        for (i, x) in b.iter_mut().enumerate() {
            *x = f(l, i);
        }
        buf.write(k * BLOCK, &b);
    }
}

fn ok_or_fail(name: &str, r: Result<(), Error>, detail: fmt::Arguments<'_>) {
    match r {
        Ok(()) => crate::report::check(name, true, detail),
        Err(e) => crate::report::check(
            name,
            false,
            format_args!("failed: {e} | what the check does: {detail}"),
        ),
    }
}

/// Runs the storage checks (after the VMBus checks, on the same connection).
pub fn run<P: Platform>(sh: &Shared<'_, P>) {
    if sh.client(|c| c.version().is_none()) {
        return;
    }
    let Some(relid) = sh.client(|c| c.find_channel(&guid::class::SCSI).map(|e| e.relid())) else {
        check!(
            "storage-init",
            false,
            "no SCSI controller offered (class {}); demo attaches one unless --no-demo-disks",
            guid::class::SCSI
        );
        return;
    };
    let ring = vmbus_guest::ring::identity_mapped_refs(&RING);
    let data = vmbus_guest::ring::identity_mapped_refs(&DATA);
    let scratch_page = vmbus_guest::ring::identity_mapped_refs(&SCRATCH);
    let Some(scratch) = DmaBuf::new(&scratch_page, 0, PAGE_SIZE) else {
        return;
    };

    // storage-init
    let config = ClientConfig {
        ring_data_bytes: OUT_DATA_BYTES,
        ..ClientConfig::default()
    };
    let opened = open_channel::<P, 1>(sh, relid, &ring).map_err(Error::Open);
    let (chan, _gpadl) = match opened {
        Ok(c) => c,
        Err(e) => return check!("storage-init", false, "relid={relid} {e}"),
    };
    let mut st = Store {
        relid,
        dev: StorvscDevice::new(chan, Sig(sh), config),
    };
    let info: DeviceInfo = match st.dev.init(MAX_POLLS) {
        Ok(i) => i,
        Err(e) => return check!("storage-init", false, "relid={relid} init: {e:?}"),
    };
    let known = vsc_storage::ProtocolVersion::ALL.contains(&info.version);
    let ok = known
        && info.properties.max_transfer_bytes > 0
        && info.max_transfer_bytes >= 12 * 1024
        && usize::from(info.queue_depth) >= QD;
    check!(
        "storage-init",
        ok,
        "relid={relid} vstor_version={:#06x} (offered newest first: {} versions) max_channel_count={} multi_channel={} host_max_transfer={} client_max_transfer={} queue_depth={}",
        info.version.0,
        vsc_storage::ProtocolVersion::ALL.len(),
        info.properties.max_channel_count,
        info.multi_channel(),
        info.properties.max_transfer_bytes,
        info.max_transfer_bytes,
        info.queue_depth
    );
    if !ok {
        return;
    }

    inquiry_check(&mut st, &scratch);
    let Some((d0, d1)) = capacity_check(&mut st, &scratch) else {
        return;
    };
    rw_check(&mut st, &d0, &data);
    flush_check(&mut st, &d0);
    unmap_check(&mut st, &d0, &data, &scratch);
    readonly_check(&mut st, &d1, &data);
    qd32_check(&mut st, &d0, &data);
}

/// `storage-inquiry`: standard INQUIRY of LUN 0 (a disk, SPC response format
/// 2, printable vendor/product) and the VPD pages: the supported list (which
/// must name B0 and B2), block limits, logical block provisioning.
fn inquiry_check<P: Platform>(st: &mut Store<'_, '_, '_, P>, scratch: &DmaBuf<'_, '_>) {
    let lun = Lun::new(0);
    let mut inq = [0u8; 36];
    let r: Result<u32, Error> = (|| {
        let buf = scratch.prefix(36).ok_or(Error::Buffer)?;
        let cdb = Cdb::Inquiry {
            evpd: false,
            page_code: 0,
            allocation_length: 36,
        };
        let done = st
            .dev
            .execute(lun, &cdb, Some(&buf), MAX_POLLS)
            .map_err(|e| Error::Dev("INQUIRY", e))?;
        buf.read(0, &mut inq);
        Ok(done.transferred)
    })();
    let std_n = match r {
        Ok(n) => n,
        Err(e) => return check!("storage-inquiry", false, "standard INQUIRY: {e}"),
    };
    let printable = |b: &[u8]| b.iter().all(|c| (0x20..0x7F).contains(c));
    let std_ok = std_n >= 36
        && inq[0] == 0
        && inq[3] & 0x0F == 2
        && printable(&inq[8..32])
        && inq[8..16] != [b' '; 8];
    let mut pages = [0u8; 64];
    let n0 = st
        .dev
        .inquiry_vpd(lun, vpd::SUPPORTED_PAGES, scratch, &mut pages, MAX_POLLS);
    let mut b0 = [0u8; 64];
    let nb0 = st
        .dev
        .inquiry_vpd(lun, vpd::BLOCK_LIMITS, scratch, &mut b0, MAX_POLLS);
    let mut b2 = [0u8; 8];
    let nb2 = st.dev.inquiry_vpd(
        lun,
        vpd::LOGICAL_BLOCK_PROVISIONING,
        scratch,
        &mut b2,
        MAX_POLLS,
    );
    let listed: &[u8] = match n0 {
        Ok(n) if n >= 4 => {
            let len = usize::from(u16::from_be_bytes([pages[2], pages[3]]));
            &pages[4..n.min(4 + len)]
        }
        _ => &[],
    };
    let list_ok = pages[1] == vpd::SUPPORTED_PAGES
        && listed.contains(&vpd::SUPPORTED_PAGES)
        && listed.contains(&vpd::BLOCK_LIMITS)
        && listed.contains(&vpd::LOGICAL_BLOCK_PROVISIONING);
    let max_unmap = u32::from_be_bytes([b0[20], b0[21], b0[22], b0[23]]);
    let b0_ok = matches!(nb0, Ok(n) if n >= 24) && b0[1] == vpd::BLOCK_LIMITS;
    let lbpu = b2[5] & 0x80 != 0;
    let b2_ok = matches!(nb2, Ok(n) if n >= 8) && b2[1] == vpd::LOGICAL_BLOCK_PROVISIONING && lbpu;
    let ok = std_ok && list_ok && b0_ok && b2_ok;
    check!(
        "storage-inquiry",
        ok,
        "standard: {std_n} bytes type={:#x} format={} vendor={:?} product={:?} | VPD 00: {} pages {:02x?} | B0: {:?} max_unmap_lba_count={max_unmap} | B2: {:?} lbpu={lbpu}",
        inq[0] & 0x1F,
        inq[3] & 0x0F,
        core::str::from_utf8(&inq[8..16]).unwrap_or("?"),
        core::str::from_utf8(&inq[16..32]).unwrap_or("?"),
        listed.len(),
        listed,
        nb0,
        nb2
    );
}

/// READ CAPACITY(16) of LUN `lun`: (blocks, block size).
fn read_capacity<P: Platform>(
    st: &mut Store<'_, '_, '_, P>,
    scratch: &DmaBuf<'_, '_>,
    lun: u8,
) -> Result<(u64, u32), Error> {
    let buf = scratch.prefix(32).ok_or(Error::Buffer)?;
    buf.write(0, &[0xFF; 32]);
    let cdb = Cdb::ReadCapacity16 {
        allocation_length: 32,
    };
    st.dev
        .execute(Lun::new(lun), &cdb, Some(&buf), MAX_POLLS)
        .map_err(|e| Error::Dev("READ CAPACITY(16)", e))?;
    let mut rc = [0u8; 12];
    buf.read(0, &mut rc);
    let last = u64::from_be_bytes(rc[..8].try_into().unwrap_or([0xFF; 8]));
    let bs = u32::from_be_bytes([rc[8], rc[9], rc[10], rc[11]]);
    Ok((last.wrapping_add(1), bs))
}

/// `storage-capacity`: READ CAPACITY(16) of both LUNs and the driver's probe
/// (write protect from MODE SENSE). Returns the probed disks.
fn capacity_check<P: Platform>(
    st: &mut Store<'_, '_, '_, P>,
    scratch: &DmaBuf<'_, '_>,
) -> Option<(Disk, Disk)> {
    let c0 = read_capacity(st, scratch, 0);
    let c1 = read_capacity(st, scratch, 1);
    let d0 = st.dev.probe_disk(Lun::new(0), scratch, MAX_POLLS);
    let d1 = st.dev.probe_disk(Lun::new(1), scratch, MAX_POLLS);
    let ok = matches!(c0, Ok((LUN0_BLOCKS, 512)))
        && matches!(c1, Ok((LUN1_BLOCKS, 512)))
        && d0.is_ok_and(|d| d.blocks == LUN0_BLOCKS && !d.read_only && d.device_type == 0)
        && d1.is_ok_and(|d| d.blocks == LUN1_BLOCKS && d.read_only);
    let show = |r: &Result<(u64, u32), Error>| match r {
        Ok((b, s)) => (*b, *s),
        Err(_) => (0, 0),
    };
    let (b0, s0) = show(&c0);
    let (b1, s1) = show(&c1);
    let err = c0.err().or(c1.err());
    check!(
        "storage-capacity",
        ok,
        "LUN 0: {b0} blocks of {s0} (expected {LUN0_BLOCKS} of 512) read_only={:?} discard={:?} write_cache={:?} | LUN 1: {b1} blocks of {s1} (expected {LUN1_BLOCKS} of 512) read_only={:?} | error={}",
        d0.map(|d| d.read_only),
        d0.map(|d| d.discard),
        d0.map(|d| d.write_cache),
        d1.map(|d| d.read_only),
        ShowErr(err)
    );
    match (d0, d1) {
        (Ok(a), Ok(b)) if ok => Some((a, b)),
        _ => None,
    }
}

struct ShowErr(Option<Error>);

impl fmt::Display for ShowErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// Blocks of the read/write range and where it starts.
const RW_LBA: u64 = 100;
const RW_BLOCKS: u32 = 24;
/// Byte offsets of the two 12 KiB buffers in their first page: not block
/// aligned, so each spans 4 pages.
const RW_READ_OFFSET: usize = 0x2C8;
const RW_WRITE_OFFSET: usize = 0x7F0;

/// `storage-rw-verify`: read the generated blocks, write a new pattern over
/// them from another buffer, read it back into the first, and check the
/// neighbours on both sides are untouched. Both buffers are unaligned and
/// span four pages.
fn rw_check<P: Platform>(st: &mut Store<'_, '_, '_, P>, d0: &Disk, data: &[PageRef<'static>]) {
    let len = RW_BLOCKS as usize * BLOCK;
    let r = (|| {
        let rbuf = DmaBuf::new(&data[0..4], RW_READ_OFFSET, len).ok_or(Error::Buffer)?;
        let wbuf = DmaBuf::new(&data[4..8], RW_WRITE_OFFSET, len).ok_or(Error::Buffer)?;
        rbuf.write(0, &[0xEE; BLOCK]);
        st.read("read original", d0, RW_LBA, RW_BLOCKS, &rbuf)?;
        verify("original", &rbuf, RW_LBA, RW_BLOCKS, |l, i| {
            original(0, l, i)
        })?;
        fill(&wbuf, RW_LBA, RW_BLOCKS, |l, i| written(1, l, i));
        st.write("write", d0, RW_LBA, RW_BLOCKS, &wbuf)?;
        fill(&rbuf, RW_LBA, RW_BLOCKS, |_, _| 0xEE);
        st.read("read back", d0, RW_LBA, RW_BLOCKS, &rbuf)?;
        verify("read back", &rbuf, RW_LBA, RW_BLOCKS, |l, i| {
            written(1, l, i)
        })?;
        // The blocks just outside the range keep their content.
        let one = rbuf.prefix(BLOCK).ok_or(Error::Buffer)?;
        for lba in [RW_LBA - 1, RW_LBA + u64::from(RW_BLOCKS)] {
            st.read("read neighbour", d0, lba, 1, &one)?;
            verify("neighbour", &one, lba, 1, |l, i| original(0, l, i))?;
        }
        Ok(())
    })();
    ok_or_fail(
        "storage-rw-verify",
        r,
        format_args!(
            "LUN 0 LBA {RW_LBA}..{}: read {len} bytes (buffer at page offset {RW_READ_OFFSET:#x}, 4 pages) = generated pattern, wrote a new pattern (buffer at {RW_WRITE_OFFSET:#x}, 4 pages), read back equal; LBA {} and {} untouched",
            RW_LBA + u64::from(RW_BLOCKS),
            RW_LBA - 1,
            RW_LBA + u64::from(RW_BLOCKS)
        ),
    );
}

/// `storage-flush`: SYNCHRONIZE CACHE on LUN 0, sent whatever the caching
/// page says.
fn flush_check<P: Platform>(st: &mut Store<'_, '_, '_, P>, d0: &Disk) {
    let r = st
        .dev
        .client_mut()
        .submit_flush(d0.lun)
        .map_err(|e| Error::Dev("SYNCHRONIZE CACHE", DeviceError::Submit(e)))
        .and_then(|tag| {
            st.dev
                .flush()
                .map_err(|e| Error::Dev("SYNCHRONIZE CACHE", e))?;
            st.one("SYNCHRONIZE CACHE", tag)
        });
    let status = r.map(|d| d.scsi_status);
    ok_or_fail(
        "storage-flush",
        r.map(|_| ()),
        format_args!(
            "SYNCHRONIZE CACHE(10) on LUN 0: {status:?} write_cache={}",
            d0.write_cache
        ),
    );
}

const UNMAP_LBA: u64 = 200;
const UNMAP_BLOCKS: u32 = 8;

/// `storage-unmap`: UNMAP a range of LUN 0 (it was generated, so not zero),
/// read it back as zeros, the block after it untouched.
fn unmap_check<P: Platform>(
    st: &mut Store<'_, '_, '_, P>,
    d0: &Disk,
    data: &[PageRef<'static>],
    scratch: &DmaBuf<'_, '_>,
) {
    let len = UNMAP_BLOCKS as usize * BLOCK;
    let r = (|| {
        let buf = DmaBuf::new(&data[0..1], 0, len).ok_or(Error::Buffer)?;
        st.read("read before", d0, UNMAP_LBA, UNMAP_BLOCKS, &buf)?;
        verify("before", &buf, UNMAP_LBA, UNMAP_BLOCKS, |l, i| {
            original(0, l, i)
        })?;
        st.dev
            .discard(d0, UNMAP_LBA, u64::from(UNMAP_BLOCKS), scratch, MAX_POLLS)
            .map_err(|e| Error::Dev("UNMAP", e))?;
        fill(&buf, UNMAP_LBA, UNMAP_BLOCKS, |_, _| 0xEE);
        st.read("read after", d0, UNMAP_LBA, UNMAP_BLOCKS, &buf)?;
        verify("after UNMAP", &buf, UNMAP_LBA, UNMAP_BLOCKS, |_, _| 0)?;
        let one = buf.prefix(BLOCK).ok_or(Error::Buffer)?;
        let next = UNMAP_LBA + u64::from(UNMAP_BLOCKS);
        st.read("read next", d0, next, 1, &one)?;
        verify("block after the range", &one, next, 1, |l, i| {
            original(0, l, i)
        })
    })();
    ok_or_fail(
        "storage-unmap",
        r,
        format_args!(
            "LUN 0 discard={} max_unmap_blocks={}: UNMAP LBA {UNMAP_LBA}+{UNMAP_BLOCKS}, read back zeros, LBA {} untouched",
            d0.discard,
            d0.max_unmap_blocks,
            UNMAP_LBA + u64::from(UNMAP_BLOCKS)
        ),
    );
}

/// `storage-readonly`: a WRITE to LUN 1 must fail with DATA PROTECT / WRITE
/// PROTECTED, and the block keep its content.
fn readonly_check<P: Platform>(
    st: &mut Store<'_, '_, '_, P>,
    d1: &Disk,
    data: &[PageRef<'static>],
) {
    const LBA: u64 = 5;
    let Some(buf) = DmaBuf::new(&data[0..1], 0, BLOCK) else {
        return;
    };
    fill(&buf, LBA, 1, |l, i| written(9, l, i));
    let w = st.write("write to LUN 1", d1, LBA, 1, &buf);
    let typed = match w {
        Err(Error::Io(_, IoError::DataProtect(s))) => {
            s.key == SenseKey::DATA_PROTECT && s.additional == AdditionalSense::WRITE_PROTECTED
        }
        _ => false,
    };
    fill(&buf, LBA, 1, |_, _| 0xEE);
    let after = st.read("read back", d1, LBA, 1, &buf).and_then(|()| {
        verify("LUN 1 after the refused write", &buf, LBA, 1, |l, i| {
            original(1, l, i)
        })
    });
    let ok = typed && after.is_ok();
    check!(
        "storage-readonly",
        ok,
        "LUN 1 (read_only={}): WRITE LBA {LBA} -> {} (DATA PROTECT/WRITE PROTECTED: {typed}); block unchanged: {}",
        d1.read_only,
        match w {
            Ok(()) => "accepted",
            Err(_) => "refused",
        },
        ShowErr(after.err())
    );
    if let Err(e) = w {
        if !typed {
            println!("hvkit-test-guest: storage-readonly: {e}");
        }
    }
}

/// `storage-qd32`: 32 WRITEs of 2 blocks (distinct LBAs and patterns, 1 KiB
/// buffers spread over 8 pages) in flight at once, then 32 READs of them at
/// once, every one completed and verified.
fn qd32_check<P: Platform>(st: &mut Store<'_, '_, '_, P>, d0: &Disk, data: &[PageRef<'static>]) {
    const BASE: u64 = 1000;
    const N: u32 = 2;
    let lba = |k: usize| BASE + 3 * k as u64;
    let mut max_in_flight = [0usize; 2];
    let r = (|| {
        let mut bufs: [Option<DmaBuf<'_, 'static>>; QD] = [None; QD];
        for (k, b) in bufs.iter_mut().enumerate() {
            *b = DmaBuf::new(&data[k / 4..k / 4 + 1], (k % 4) * 1024, N as usize * BLOCK);
        }
        for (phase, what) in ["qd32 writes", "qd32 reads"].into_iter().enumerate() {
            let mut tags = [Tag(0); QD];
            for (k, b) in bufs.iter().enumerate() {
                let b = b.as_ref().ok_or(Error::Buffer)?;
                let seed = 0x40 + k as u8;
                let t = if phase == 0 {
                    fill(b, lba(k), N, |l, i| written(seed, l, i));
                    st.dev.submit_write(d0, lba(k), N, b)
                } else {
                    fill(b, lba(k), N, |_, _| 0xEE);
                    st.dev.submit_read(d0, lba(k), N, b)
                };
                tags[k] = t.map_err(|e| Error::Dev(what, e))?;
            }
            max_in_flight[phase] = st.dev.client().outstanding();
            let mut out = [None; QD];
            st.wait(what, &tags, &mut out)?;
            for r in out {
                match r {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(Error::Io(what, e)),
                    None => return Err(Error::Timeout(what)),
                }
            }
        }
        for (k, b) in bufs.iter().enumerate() {
            let b = b.as_ref().ok_or(Error::Buffer)?;
            let seed = 0x40 + k as u8;
            verify("qd32 read back", b, lba(k), N, |l, i| written(seed, l, i))?;
        }
        if max_in_flight != [QD; 2] {
            return Err(Error::Depth);
        }
        Ok(())
    })();
    ok_or_fail(
        "storage-qd32",
        r,
        format_args!(
            "LUN 0: {QD} WRITEs then {QD} READs of {N} blocks at LBA {BASE}+3k, in flight at once: {}/{}, all completed and verified",
            max_in_flight[0], max_in_flight[1]
        ),
    );
}
