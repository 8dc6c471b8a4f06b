//! `host-test-vmm bench storage`: reads through the whole storage stack
//! against reading the backing file directly, side by side in one process.
//!
//! **Whole stack.** The guest is vsc-storage's storvsc client
//! (`StorvscDevice`) over vmbus-guest's VMBus driver, hypercalls and SynIC of
//! an in-process partition ([`InProcess`]): its rings and data buffers are
//! guest RAM, every request travels as a GPA-direct VSTOR packet through the
//! real [`VmbusServer`] to the real storvsp ([`StorageController`]), whose
//! I/O pool `preadv`s from a [`FileBackend`] straight into the guest pages,
//! and completions come back through the host->guest ring. The guest does not
//! spin: when a poll finds nothing it blocks until the SINT interrupt the
//! hypervisor raises for the channel (recorded by the partition's
//! [`crate::hv::inprocess::RecordingSink`]), clearing the channel's event
//! flag first as an interrupt handler would, so host->guest signals are real
//! interrupts of this guest, and a lost wakeup stalls the run (an error).
//!
//! **Direct.** The same access pattern with `pread` on the same file from
//! host threads, as many threads as the queue depth.
//!
//! **Patterns.** 4 KiB random reads (IOPS) and 1 MiB sequential reads
//! (MB/s). A 1 MiB read goes to the host as four 256 KiB requests
//! (the controller's max_transfer_bytes, as Linux's block layer would split
//! it); the queue depth counts 1 MiB reads, and "per I/O" means per 1 MiB
//! read (per request figures are in the JSON).
//!
//! **Page cache.** The benchmark writes the file itself and reads it once
//! before measuring, so both sides read the same warm file from the page
//! cache: this measures the stack's overhead, not the disk.
//!
//! **Checks.** Every completed 4 KiB page is checked for its tag (the first
//! 8 bytes name the page), on both sides, so a broken stack fails instead of
//! producing a fast number; with [`StorageBenchConfig::verify_all`] every byte
//! is compared with the file.
//!
//! **Notifications.** Guest->host: HvSignalEvent calls on the channel
//! (`VmbusServer` stats); host->guest: event flags the server set (its
//! stats), and the interrupts those raised. Both per completed I/O.
//!
//! Rounds alternate which side runs first at each point; we report medians
//! over rounds, min/max, the ratio of medians and the median of per-round
//! ratios, and the goal verdicts (at most 0.05 notifications per I/O at
//! queue depth 32; sequential read at least 0.5 of the direct read).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercall::hv::{Hypervisor as GuestHypervisor, SintConfig, SynIc};
use hypercall::msr::GuestOsId;
use vmbus_guest::channel::Channel;
use vmbus_guest::client::ClientConfig as BusConfig;
use vmbus_guest::driver::VmBus;
use vmbus_guest::ring::{PageRefRing, RingMemory};
use vmbus_guest::version::VMBUS_SINT;
use vsc_storage::client::{ClientConfig, Event, Lun, Tag};
use vsc_storage::device::{Disk, DmaBuf, HostSignal, StorvscDevice};

use crate::hv::inprocess::{GuestVp, InProcess};
use crate::storage::{
    ControllerConfig, FileBackend, StorageController, MAX_TRANSFER_BYTES, SCSI_CLASS_ID,
};
use crate::vmbus::{VmbusOptions, VmbusServer};

/// Queue depths of the default run.
pub const DEFAULT_QUEUE_DEPTHS: [u32; 4] = [1, 8, 32, 64];
/// Largest queue depth (the guest has buffers and request slots for it).
pub const MAX_QUEUE_DEPTH: u32 = 64;
/// Goal: notifications (both directions) per completed I/O at queue depth 32.
pub const GOAL_NOTIFICATIONS_PER_IO: f64 = 0.05;
/// Queue depth the notification goal applies to.
pub const GOAL_NOTIFICATIONS_QD: u32 = 32;
/// Goal: sequential read through the stack / direct read.
pub const GOAL_SEQ_RATIO: f64 = 0.5;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const PAGE: usize = 4096;
/// One request of a sequential read (the controller's transfer limit).
const SEQ_REQUEST: u64 = MAX_TRANSFER_BYTES as u64;
/// Requests per 1 MiB read.
const SEQ_PARTS: usize = (MIB / SEQ_REQUEST) as usize;
/// Guest request slots: every 1 MiB read of the deepest queue in flight.
const SLOTS: usize = MAX_QUEUE_DEPTH as usize * SEQ_PARTS;
/// Pages per request the client accepts (a 256 KiB buffer at offset 0 needs 64).
const PAGES_PER_REQUEST: usize = 65;
/// Pages of one slot's buffer.
const SLOT_PAGES: usize = SEQ_REQUEST as usize / PAGE;

// Guest physical layout of the in-process partition.
const VECTOR: u8 = 0xF3;
const HYPERCALL_GPA: u64 = 0x1000;
const SIMP_GPA: u64 = 0x2000;
const SIEFP_GPA: u64 = 0x3000;
const INPUT_GPA: u64 = 0x6000;
const MONITOR1_GPA: u64 = 0x7000;
const MONITOR2_GPA: u64 = 0x8000;
const RING_GPA: u64 = 0x10_0000;
/// Pages of the guest->host ring, control page included: 256 KiB of data,
/// so the client's queue depth (bounded by worst-case packets in the ring)
/// covers every request of the deepest queue.
const OUT_RING_PAGES: usize = 65;
/// Pages of the host->guest ring (128 KiB of data, Linux's storvsc default).
const IN_RING_PAGES: usize = 33;
const DATA_GPA: u64 = 0x20_0000;
const RAM_BYTES: usize = DATA_GPA as usize + SLOTS * SLOT_PAGES * PAGE + (2 << 20);
/// Blocking helpers' poll bound during setup.
const POLLS: u64 = 2_000_000;
/// A side without progress for this long fails the run.
const STALL: Duration = Duration::from_secs(10);

/// Why the storage benchmark could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum StorageBenchError {
    /// The parameters make no sense.
    #[error("invalid benchmark parameters: {0}")]
    Invalid(String),
    /// A host file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The partition, VMBus or storage controller could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The guest's storvsc device failed a request.
    #[error("{0}")]
    Device(String),
    /// Data read was not what the file holds.
    #[error("{side}: data at byte {offset} of the file is wrong: {detail}")]
    Corrupt {
        /// `stack` or `direct`.
        side: &'static str,
        /// File offset of the bad page or request.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// No completion and no interrupt for [`STALL`].
    #[error("stack: no completion for {0:?} with requests in flight (a lost wakeup?)")]
    Stalled(Duration),
    /// A direct-read thread panicked.
    #[error("direct: a reader thread panicked")]
    Panicked,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageBenchError {
    let what = what.into();
    move |source| StorageBenchError::Io { what, source }
}

/// How long each point runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Issue I/Os for this many seconds (then let those in flight finish).
    Seconds(f64),
    /// Issue exactly this many I/Os.
    Ios(u64),
}

/// The access pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// 4 KiB reads at random 4 KiB-aligned offsets.
    Random4k,
    /// 1 MiB reads one after the other (wrapping at the end of the file).
    Sequential1m,
}

impl Pattern {
    /// Both, in table order.
    pub const ALL: [Pattern; 2] = [Pattern::Random4k, Pattern::Sequential1m];

    /// Bytes per I/O.
    pub fn io_bytes(self) -> u64 {
        match self {
            Pattern::Random4k => 4 * KIB,
            Pattern::Sequential1m => MIB,
        }
    }

    /// Requests the guest sends per I/O.
    fn parts(self) -> usize {
        match self {
            Pattern::Random4k => 1,
            Pattern::Sequential1m => SEQ_PARTS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pattern::Random4k => "4k-random",
            Pattern::Sequential1m => "1m-sequential",
        }
    }
}

/// Parameters of [`storage_throughput`].
#[derive(Debug, Clone)]
pub struct StorageBenchConfig {
    /// Size of the backing file (a multiple of 1 MiB, at least 1 MiB).
    pub size: u64,
    /// Per point and side.
    pub budget: Budget,
    /// Rounds (each runs every point on both sides, alternating which side
    /// goes first).
    pub rounds: u32,
    /// Queue depths (1..=[`MAX_QUEUE_DEPTH`]).
    pub queue_depths: Vec<u32>,
    /// Where the temporary backing file goes.
    pub dir: PathBuf,
    /// Compare every byte read (both sides) with the file, not only the
    /// page tags (slow: for tests).
    pub verify_all: bool,
}

impl Default for StorageBenchConfig {
    fn default() -> Self {
        Self {
            size: 64 * MIB,
            budget: Budget::Seconds(0.5),
            rounds: 3,
            queue_depths: DEFAULT_QUEUE_DEPTHS.to_vec(),
            dir: std::env::temp_dir(),
            verify_all: false,
        }
    }
}

/// One side at one point.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SideResult {
    /// Median over rounds, I/Os per second.
    pub median_iops: f64,
    /// Slowest round.
    pub min_iops: f64,
    /// Fastest round.
    pub max_iops: f64,
    /// Median MB/s (10^6 bytes).
    pub median_mb_s: f64,
    /// I/Os per second, per round in run order.
    pub samples_iops: Vec<f64>,
    /// I/Os completed over all rounds.
    pub ios: u64,
}

/// One pattern at one queue depth.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoragePoint {
    /// The access pattern.
    pub pattern: Pattern,
    /// Bytes per I/O.
    pub io_bytes: u64,
    /// Requests the guest sends per I/O.
    pub requests_per_io: usize,
    /// I/Os in flight.
    pub queue_depth: u32,
    /// Through the whole stack.
    pub stack: SideResult,
    /// pread on the file.
    pub direct: SideResult,
    /// `stack.median_iops / direct.median_iops`.
    pub ratio: f64,
    /// Median of the per-round ratios.
    pub paired_median_ratio: f64,
    /// Guest->host HvSignalEvent calls per completed I/O (all rounds).
    pub guest_to_host_per_io: f64,
    /// Host->guest channel signals (event flags set) per completed I/O.
    pub host_to_guest_per_io: f64,
    /// Both directions per completed I/O.
    pub notifications_per_io: f64,
    /// Guest interrupts raised per completed I/O.
    pub interrupts_per_io: f64,
    /// Both directions per request (a 1 MiB read is four requests).
    pub notifications_per_request: f64,
}

/// One goal with its verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageGoal {
    /// What is measured.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The goal.
    pub goal: f64,
    /// `"at most"` or `"at least"`.
    pub kind: &'static str,
    /// Whether it is met.
    pub met: bool,
}

/// Result of [`storage_throughput`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct StorageBenchReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// The temporary backing file (deleted after the run).
    pub file: String,
    /// Its size in bytes.
    pub size: u64,
    /// How the page cache was treated.
    pub cache: &'static str,
    /// Rounds.
    pub rounds: u32,
    /// Per point and side.
    pub budget: Budget,
    /// I/O threads of the storage controller.
    pub host_io_threads: usize,
    /// Bytes compared with the file, besides the page tags (verify_all).
    pub verified_bytes: u64,
    /// Every point.
    pub points: Vec<StoragePoint>,
    /// The goal verdicts.
    pub goals: Vec<StorageGoal>,
}

/// One measurement of one side.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    ios: u64,
    secs: f64,
    g2h: u64,
    h2g: u64,
    interrupts: u64,
}

impl Sample {
    fn iops(&self) -> f64 {
        self.ios as f64 / self.secs
    }
}

/// Tag in the first 8 bytes of every 4 KiB page of the file.
fn page_tag(page: u64) -> u64 {
    page ^ 0x4856_4b49_5453_544f
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Writes the backing file: each 4 KiB page its tag, then pseudo-random
/// bytes, and reads it back once so it is in the page cache.
fn create_file(path: &Path, size: u64) -> Result<(), StorageBenchError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(format!("create {}", path.display())))?;
    let mut chunk = vec![0u8; MIB as usize];
    for mb in 0..size / MIB {
        for (i, page) in chunk.chunks_exact_mut(PAGE).enumerate() {
            let p = mb * (MIB / PAGE as u64) + i as u64;
            page[..8].copy_from_slice(&page_tag(p).to_le_bytes());
            let mut s = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for w in page[8..].chunks_exact_mut(8) {
                w.copy_from_slice(&xorshift(&mut s).to_le_bytes());
            }
        }
        f.write_all(&chunk)
            .map_err(io_err(format!("write {}", path.display())))?;
    }
    drop(f);
    let f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    for mb in 0..size / MIB {
        f.read_exact_at(&mut chunk, mb * MIB)
            .map_err(io_err("warm the page cache"))?;
    }
    Ok(())
}

/// Deletes the backing file when the run ends, whatever happened.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the benchmark file");
        }
    }
}

/// Offsets of successive I/Os for one point (the same sequence on both
/// sides for the same seed).
#[derive(Debug, Clone)]
struct Offsets {
    pattern: Pattern,
    size: u64,
    rng: u64,
    next_seq: u64,
}

impl Offsets {
    fn new(pattern: Pattern, size: u64, seed: u64) -> Self {
        Self {
            pattern,
            size,
            rng: seed | 1,
            next_seq: 0,
        }
    }

    fn next(&mut self) -> u64 {
        match self.pattern {
            Pattern::Random4k => (xorshift(&mut self.rng) % (self.size / 4096)) * 4096,
            Pattern::Sequential1m => {
                let o = self.next_seq;
                self.next_seq = (o + MIB) % self.size;
                o
            }
        }
    }
}

/// Copies a whole buffer out (for the full comparison); false if it cannot.
type ReadAll<'a> = &'a dyn Fn(&mut [u8]) -> bool;

/// Checks the page tags of `len` bytes read from file offset `offset`
/// (`read8(at)` gives the 8 bytes at byte `at` of the buffer), and with
/// `full` compares every byte with the file.
fn check_data(
    side: &'static str,
    offset: u64,
    len: usize,
    read8: impl Fn(usize) -> Option<[u8; 8]>,
    full: Option<(&File, ReadAll<'_>)>,
) -> Result<u64, StorageBenchError> {
    for at in (0..len).step_by(PAGE) {
        let want = page_tag((offset + at as u64) / PAGE as u64);
        let got = read8(at).map(u64::from_le_bytes);
        if got != Some(want) {
            return Err(StorageBenchError::Corrupt {
                side,
                offset: offset + at as u64,
                detail: format!("page tag {got:x?}, expected {want:#x}"),
            });
        }
    }
    let Some((file, read_all)) = full else {
        return Ok(0);
    };
    let mut want = vec![0u8; len];
    file.read_exact_at(&mut want, offset)
        .map_err(io_err("read the file to verify"))?;
    let mut got = vec![0u8; len];
    if !read_all(&mut got) || got != want {
        return Err(StorageBenchError::Corrupt {
            side,
            offset,
            detail: format!("{len} bytes differ from the file"),
        });
    }
    Ok(len as u64)
}

/// What the guest's wait loop needs from the partition and the host.
struct StackEnv<'a, 'b> {
    part: &'a InProcess,
    bus: &'b VmBus<'a, GuestVp<'a>>,
    server: &'a VmbusServer,
    relid: u32,
}

impl StackEnv<'_, '_> {
    /// Interrupts of our vector raised since the last call.
    fn take_interrupts(&self) -> u64 {
        self.part
            .interrupts()
            .take()
            .iter()
            .filter(|&&(vp, v)| vp == 0 && v == VECTOR)
            .count() as u64
    }

    /// (guest->host signals, host->guest signals) of the channel so far.
    fn notifications(&self) -> (u64, u64) {
        let s = self.server.stats();
        s.channels
            .get(&self.relid)
            .map_or((0, 0), |c| (c.signals_from_guest, c.signals_to_guest))
    }

    /// The interrupt handler's first step: clear the channels' event flags,
    /// so the next host signal raises a new interrupt.
    fn ack_events(&self) -> Result<(), StorageBenchError> {
        self.bus
            .take_channel_interrupts(|_| {})
            .map(|_| ())
            .map_err(|e| StorageBenchError::Device(format!("event flags: {e:?}")))
    }
}

/// One in-flight I/O of the guest.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    offset: u64,
    remaining: usize,
}

/// Runs one point through the stack: `qd` I/Os in flight until the budget
/// is spent, then lets them finish.
#[allow(clippy::too_many_arguments)]
fn stack_point<M: RingMemory, S: HostSignal>(
    dev: &mut StorvscDevice<M, S, SLOTS, PAGES_PER_REQUEST>,
    disk: &Disk,
    slots: &[DmaBuf<'_, '_>],
    env: &StackEnv<'_, '_>,
    file: &File,
    cfg: &StorageBenchConfig,
    pattern: Pattern,
    qd: usize,
    seed: u64,
    verified: &mut u64,
) -> Result<Sample, StorageBenchError> {
    let dev_err = |what: &str, e: vsc_storage::device::DeviceError| {
        StorageBenchError::Device(format!("stack: {what}: {e:?}"))
    };
    let mut offsets = Offsets::new(pattern, cfg.size, seed);
    let parts = pattern.parts();
    let req_bytes = (pattern.io_bytes() / parts as u64) as usize;
    let blocks = (req_bytes / disk.block_size as usize) as u32;
    let mut ios: Vec<InFlight> = vec![
        InFlight {
            offset: 0,
            remaining: 0
        };
        qd
    ];
    let mut tags: HashMap<Tag, (usize, usize)> = HashMap::with_capacity(qd * parts);
    let submit = |dev: &mut StorvscDevice<M, S, SLOTS, PAGES_PER_REQUEST>,
                  tags: &mut HashMap<Tag, (usize, usize)>,
                  i: usize,
                  offset: u64|
     -> Result<InFlight, StorageBenchError> {
        for k in 0..parts {
            let buf = slots[i * SEQ_PARTS + k]
                .prefix(req_bytes)
                .ok_or_else(|| StorageBenchError::Setup("slot buffer too small".into()))?;
            let lba = (offset + (k * req_bytes) as u64) / u64::from(disk.block_size);
            let tag = dev
                .submit_read(disk, lba, blocks, &buf)
                .map_err(|e| dev_err("submit", e))?;

            tags.insert(tag, (i, k));
        }
        Ok(InFlight {
            offset,
            remaining: parts,
        })
    };

    env.take_interrupts();
    env.ack_events()?;
    let (g0, h0) = env.notifications();
    let mut interrupts = 0;
    let start = Instant::now();
    let over = |issued: u64| match cfg.budget {
        Budget::Seconds(s) => start.elapsed().as_secs_f64() >= s,
        Budget::Ios(n) => issued >= n,
    };
    let (mut issued, mut completed, mut outstanding) = (0u64, 0u64, 0usize);
    for (i, io) in ios.iter_mut().enumerate() {
        if over(issued) {
            break;
        }
        *io = submit(dev, &mut tags, i, offsets.next())?;
        issued += 1;
        outstanding += 1;
    }
    let mut done: Vec<(Tag, Result<u32, String>)> = Vec::with_capacity(qd * parts);
    let mut finished: Vec<usize> = Vec::with_capacity(qd);
    while outstanding > 0 {
        interrupts += env.take_interrupts();
        env.ack_events()?;
        done.clear();
        dev.poll(|e| {
            if let Event::Completed { tag, result } = e {
                done.push((
                    tag,
                    result.map(|d| d.transferred).map_err(|e| format!("{e:?}")),
                ));
            }
        })
        .map_err(|e| dev_err("poll", e))?;
        if done.is_empty() {
            // Nothing yet: sleep until the channel's interrupt (the flag
            // was cleared before the poll, so a completion written after
            // the poll raises one).
            if !env.part.interrupts().wait_for(0, VECTOR, 1, STALL) {
                return Err(StorageBenchError::Stalled(STALL));
            }
            continue;
        }
        for (tag, r) in done.drain(..) {
            let (i, k) = tags.remove(&tag).ok_or_else(|| {
                StorageBenchError::Device(format!("stack: completion for unknown {tag:?}"))
            })?;
            let transferred =
                r.map_err(|e| StorageBenchError::Device(format!("stack: read failed: {e}")))?;
            let at = ios[i].offset + (k * req_bytes) as u64;
            if transferred as usize != req_bytes {
                return Err(StorageBenchError::Corrupt {
                    side: "stack",
                    offset: at,
                    detail: format!("{transferred} bytes transferred, {req_bytes} asked"),
                });
            }
            let buf = &slots[i * SEQ_PARTS + k];
            let read_all = |out: &mut [u8]| buf.read(0, out);
            *verified += check_data(
                "stack",
                at,
                req_bytes,
                |o| {
                    let mut b = [0u8; 8];
                    buf.read(o, &mut b).then_some(b)
                },
                cfg.verify_all.then_some((file, &read_all as ReadAll<'_>)),
            )?;
            ios[i].remaining -= 1;
            if ios[i].remaining == 0 {
                completed += 1;
                outstanding -= 1;
                finished.push(i);
            }
        }
        // Only now reuse the slots: the client frees a tag when it reports
        // it, so a new request may get a tag still waiting in `done`.
        for i in finished.drain(..) {
            if !over(issued) {
                ios[i] = submit(dev, &mut tags, i, offsets.next())?;
                issued += 1;
                outstanding += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    interrupts += env.take_interrupts();
    let (g1, h1) = env.notifications();
    Ok(Sample {
        ios: completed,
        secs,
        g2h: g1 - g0,
        h2g: h1 - h0,
        interrupts,
    })
}

/// Runs one point with pread: `qd` threads, each reading until the budget
/// is spent.
fn direct_point(
    file: &File,
    cfg: &StorageBenchConfig,
    pattern: Pattern,
    qd: usize,
    seed: u64,
    verified: &mut u64,
) -> Result<Sample, StorageBenchError> {
    let len = pattern.io_bytes() as usize;
    // One shared offset sequence, so both sides read the same offsets.
    let offsets = std::sync::Mutex::new(Offsets::new(pattern, cfg.size, seed));
    let issued = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<Result<(u64, u64), StorageBenchError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..qd)
            .map(|_| {
                s.spawn(|| {
                    let mut buf = vec![0u8; len];
                    let (mut ios, mut checked) = (0u64, 0u64);
                    loop {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        let over = match cfg.budget {
                            Budget::Seconds(secs) => start.elapsed().as_secs_f64() >= secs,
                            Budget::Ios(max) => n >= max,
                        };
                        if over || failed.load(Ordering::Relaxed) {
                            return Ok((ios, checked));
                        }
                        let offset = offsets.lock().unwrap_or_else(|e| e.into_inner()).next();
                        let r = file
                            .read_exact_at(&mut buf, offset)
                            .map_err(io_err("direct: pread"))
                            .and_then(|()| {
                                let copy = |out: &mut [u8]| {
                                    out.copy_from_slice(&buf);
                                    true
                                };
                                check_data(
                                    "direct",
                                    offset,
                                    len,
                                    |o| buf[o..o + 8].try_into().ok(),
                                    cfg.verify_all.then_some((file, &copy as ReadAll<'_>)),
                                )
                            });
                        match r {
                            Ok(c) => checked += c,
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                        ios += 1;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(Err(StorageBenchError::Panicked)))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut ios = 0;
    for r in results {
        let (n, c) = r?;
        ios += n;
        *verified += c;
    }
    Ok(Sample {
        ios,
        secs,
        ..Sample::default()
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn side_result(samples: &[Sample], io_bytes: u64) -> SideResult {
    let iops: Vec<f64> = samples.iter().map(Sample::iops).collect();
    let m = median(&iops);
    SideResult {
        median_iops: m,
        min_iops: iops.iter().copied().fold(f64::INFINITY, f64::min),
        max_iops: iops.iter().copied().fold(0.0, f64::max),
        median_mb_s: m * io_bytes as f64 / 1e6,
        samples_iops: iops,
        ios: samples.iter().map(|s| s.ios).sum(),
    }
}

fn validate(cfg: &StorageBenchConfig) -> Result<(), StorageBenchError> {
    let bad = |m: &str| Err(StorageBenchError::Invalid(m.to_owned()));
    if cfg.size < MIB || !cfg.size.is_multiple_of(MIB) {
        return bad("the file size must be a multiple of 1 MiB, at least 1 MiB");
    }
    if cfg.rounds == 0 {
        return bad("rounds must be at least 1");
    }
    match cfg.budget {
        Budget::Seconds(s) if !(s > 0.0 && s <= 600.0) => {
            return bad("seconds per point must be in (0, 600]")
        }
        Budget::Ios(0) => return bad("I/Os per point must be at least 1"),
        _ => {}
    }
    if cfg.queue_depths.is_empty()
        || cfg
            .queue_depths
            .iter()
            .any(|&q| q == 0 || q > MAX_QUEUE_DEPTH)
    {
        return Err(StorageBenchError::Invalid(format!(
            "queue depths must be 1..={MAX_QUEUE_DEPTH}"
        )));
    }
    Ok(())
}

/// Runs the storage benchmark: creates and fills the backing file, sets up
/// the in-process guest, VMBus server and storvsp, measures every point, and
/// deletes the file.
pub fn storage_throughput(
    cfg: &StorageBenchConfig,
) -> Result<StorageBenchReport, StorageBenchError> {
    validate(cfg)?;
    let path = cfg.dir.join(format!(
        "hvkit-storage-bench-{}-{:x}.img",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    create_file(&path, cfg.size)?;
    let _cleanup = TempFile(path.clone());
    let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;

    // The host: partition, VMBus server, storvsp with the file as LUN 0.
    let setup = |what: &str| {
        let what = what.to_owned();
        move |e: &dyn std::fmt::Debug| StorageBenchError::Setup(format!("{what}: {e:?}"))
    };
    let part = InProcess::new(1, RAM_BYTES).map_err(|e| setup("partition")(&e))?;
    let ctrl_cfg = ControllerConfig::default();
    let host_io_threads = ctrl_cfg.io_threads;
    let ctrl = StorageController::new(ctrl_cfg).map_err(|e| setup("controller")(&e))?;
    let backend =
        FileBackend::open(&path, true).map_err(io_err(format!("open {}", path.display())))?;
    ctrl.add_disk(0, Arc::new(backend))
        .map_err(|e| setup("add disk")(&e))?;
    let server = VmbusServer::new(Arc::clone(part.hv()), VmbusOptions::default())
        .map_err(|e| setup("VMBus server")(&e))?;
    server
        .add_device(ctrl.vsp())
        .map_err(|e| setup("offer")(&e))?;

    // The guest: hypercalls, SynIC, VMBus connection, the SCSI channel.
    let page = |gpa: u64| part.page(gpa).map_err(|e| setup("guest page")(&e));
    let vp0 = part.vp(0);
    let hc = GuestHypervisor::init(&vp0, GuestOsId::linux(6, 12, 0), page(HYPERCALL_GPA)?)
        .map_err(|e| setup("hypercall page")(&e))?;
    let synic = SynIc::enable(
        &vp0,
        page(SIMP_GPA)?,
        page(SIEFP_GPA)?,
        &[(VMBUS_SINT, SintConfig::interrupt(VECTOR))],
    )
    .map_err(|e| setup("SynIC")(&e))?;
    let bus_cfg = BusConfig {
        monitor_page1: MONITOR1_GPA,
        monitor_page2: MONITOR2_GPA,
        ..BusConfig::default()
    };
    let mut bus: VmBus<'_, _> = VmBus::new(&hc, &synic, page(INPUT_GPA)?, bus_cfg);
    bus.connect(POLLS).map_err(|e| setup("connect")(&e))?;
    bus.wait_offers(POLLS).map_err(|e| setup("offers")(&e))?;
    let relid = bus
        .client()
        .find_channel(&SCSI_CLASS_ID)
        .ok_or_else(|| StorageBenchError::Setup("no SCSI controller offered".into()))?
        .relid();
    let ring_pages = (0..(OUT_RING_PAGES + IN_RING_PAGES) as u64)
        .map(|i| page(RING_GPA + i * PAGE as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let (ch, _gpadl) = bus
        .open_channel(relid, &ring_pages, OUT_RING_PAGES, 0, [0; 120], POLLS)
        .map_err(|e| setup("open channel")(&e))?;
    let conn = ch.connection_id();
    drop(ch);
    // The device wants a one-slot channel over the same rings (their
    // indices are kept in the control pages).
    let ring = |pages| PageRefRing::new(pages).map_err(|e| setup("ring")(&e));
    let ch1: Channel<_, 1> = Channel::new(
        ring(&ring_pages[..OUT_RING_PAGES])?,
        ring(&ring_pages[OUT_RING_PAGES..])?,
        conn,
    )
    .map_err(|e| setup("channel")(&e))?;
    let client_cfg = ClientConfig {
        ring_data_bytes: (OUT_RING_PAGES - 1) * PAGE,
        ..ClientConfig::default()
    };
    let mut dev: Box<StorvscDevice<_, _, SLOTS, PAGES_PER_REQUEST>> =
        Box::new(StorvscDevice::new(ch1, &bus, client_cfg));
    let info = dev.init(POLLS).map_err(|e| setup("storvsc init")(&e))?;
    if usize::from(info.queue_depth) < SLOTS {
        return Err(StorageBenchError::Setup(format!(
            "the client allows {} requests in flight, the deepest queue needs {SLOTS}",
            info.queue_depth
        )));
    }
    let data_pages = (0..(SLOTS * SLOT_PAGES) as u64)
        .map(|i| page(DATA_GPA + i * PAGE as u64))
        .collect::<Result<Vec<_>, _>>()?;
    let slots = data_pages
        .chunks_exact(SLOT_PAGES)
        .map(|p| DmaBuf::new(p, 0, SLOT_PAGES * PAGE))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StorageBenchError::Setup("data buffers".into()))?;
    let disk = dev
        .probe_disk(Lun::new(0), &slots[0], POLLS)
        .map_err(|e| setup("probe disk")(&e))?;
    if disk.capacity_bytes() != cfg.size || disk.block_size != 512 {
        return Err(StorageBenchError::Setup(format!(
            "the guest sees {} blocks of {} bytes, the file has {} bytes",
            disk.blocks, disk.block_size, cfg.size
        )));
    }
    let env = StackEnv {
        part: &part,
        bus: &bus,
        server: &server,
        relid,
    };

    // Measure: per round, every point on both sides, alternating the order.
    let n_points = Pattern::ALL.len() * cfg.queue_depths.len();
    let mut stack: Vec<Vec<Sample>> = vec![Vec::new(); n_points];
    let mut direct: Vec<Vec<Sample>> = vec![Vec::new(); n_points];
    let mut verified = 0u64;
    for round in 0..cfg.rounds {
        for (pi, &pattern) in Pattern::ALL.iter().enumerate() {
            for (qi, &qd) in cfg.queue_depths.iter().enumerate() {
                let idx = pi * cfg.queue_depths.len() + qi;
                let seed = 0x5EED_0000 + u64::from(round) * 1000 + idx as u64;
                let stack_first = (round as usize + idx).is_multiple_of(2);
                for side in 0..2 {
                    if (side == 0) == stack_first {
                        let s = stack_point(
                            &mut dev,
                            &disk,
                            &slots,
                            &env,
                            &file,
                            cfg,
                            pattern,
                            qd as usize,
                            seed,
                            &mut verified,
                        )?;
                        stack[idx].push(s);
                    } else {
                        let s =
                            direct_point(&file, cfg, pattern, qd as usize, seed, &mut verified)?;
                        direct[idx].push(s);
                    }
                }
            }
        }
    }

    let mut points = Vec::with_capacity(n_points);
    for (pi, &pattern) in Pattern::ALL.iter().enumerate() {
        for (qi, &qd) in cfg.queue_depths.iter().enumerate() {
            let idx = pi * cfg.queue_depths.len() + qi;
            let (st, di) = (&stack[idx], &direct[idx]);
            let s = side_result(st, pattern.io_bytes());
            let d = side_result(di, pattern.io_bytes());
            let paired: Vec<f64> = st
                .iter()
                .zip(di)
                .map(|(a, b)| a.iops() / b.iops())
                .collect();
            let ios = s.ios.max(1) as f64;
            let g2h: u64 = st.iter().map(|x| x.g2h).sum();
            let h2g: u64 = st.iter().map(|x| x.h2g).sum();
            let irq: u64 = st.iter().map(|x| x.interrupts).sum();
            points.push(StoragePoint {
                pattern,
                io_bytes: pattern.io_bytes(),
                requests_per_io: pattern.parts(),
                queue_depth: qd,
                ratio: s.median_iops / d.median_iops,
                paired_median_ratio: median(&paired),
                guest_to_host_per_io: g2h as f64 / ios,
                host_to_guest_per_io: h2g as f64 / ios,
                notifications_per_io: (g2h + h2g) as f64 / ios,
                interrupts_per_io: irq as f64 / ios,
                notifications_per_request: (g2h + h2g) as f64 / (ios * pattern.parts() as f64),
                stack: s,
                direct: d,
            });
        }
    }
    let goals = goals(&points);
    Ok(StorageBenchReport {
        bench: "storage",
        file: path.display().to_string(),
        size: cfg.size,
        cache: "warm: the benchmark writes the file and reads it once before measuring; \
                both sides read it from the page cache",
        rounds: cfg.rounds,
        budget: cfg.budget,
        host_io_threads,
        verified_bytes: verified,
        points,
        goals,
    })
}

fn goals(points: &[StoragePoint]) -> Vec<StorageGoal> {
    let mut g = Vec::new();
    for p in points
        .iter()
        .filter(|p| p.queue_depth == GOAL_NOTIFICATIONS_QD)
    {
        g.push(StorageGoal {
            name: format!(
                "notifications (both ways) per I/O, {} QD{}",
                p.pattern.name(),
                p.queue_depth
            ),
            value: p.notifications_per_io,
            goal: GOAL_NOTIFICATIONS_PER_IO,
            kind: "at most",
            met: p.notifications_per_io <= GOAL_NOTIFICATIONS_PER_IO,
        });
    }
    for p in points.iter().filter(|p| p.pattern == Pattern::Sequential1m) {
        g.push(StorageGoal {
            name: format!("sequential read stack / direct, QD{}", p.queue_depth),
            value: p.ratio,
            goal: GOAL_SEQ_RATIO,
            kind: "at least",
            met: p.ratio >= GOAL_SEQ_RATIO,
        });
    }
    g
}

impl StorageBenchReport {
    /// A table per pattern, then the goal verdicts.
    pub fn to_table(&self) -> String {
        let budget = match self.budget {
            Budget::Seconds(s) => format!("{s} s per point"),
            Budget::Ios(n) => format!("{n} I/Os per point"),
        };
        let mut s = format!(
            "storage reads: whole stack (storvsc -> VMBus -> storvsp -> preadv, in-process guest) \
             vs pread on the file\n{} MiB file, warm page cache on both sides, {} rounds x {budget}, \
             {} host I/O threads; medians over rounds\n",
            self.size / MIB,
            self.rounds,
            self.host_io_threads
        );
        for pattern in Pattern::ALL {
            let seq = pattern == Pattern::Sequential1m;
            s.push_str(&format!(
                "\n{:<14} {:>3} {:>11} {:>11} {:>9} {:>9} {:>6} {:>6} {:>7} {:>7} {:>7}\n",
                pattern.name(),
                "QD",
                "stack IOPS",
                "direct IOPS",
                "stack MB/s",
                "dir MB/s",
                "ratio",
                "paired",
                "g2h/IO",
                "h2g/IO",
                "irq/IO"
            ));
            for p in self.points.iter().filter(|p| p.pattern == pattern) {
                s.push_str(&format!(
                    "{:<14} {:>3} {:>11.0} {:>11.0} {:>9.1} {:>9.1} {:>6.3} {:>6.3} {:>7.3} {:>7.3} {:>7.3}\n",
                    "",
                    p.queue_depth,
                    p.stack.median_iops,
                    p.direct.median_iops,
                    p.stack.median_mb_s,
                    p.direct.median_mb_s,
                    p.ratio,
                    p.paired_median_ratio,
                    p.guest_to_host_per_io,
                    p.host_to_guest_per_io,
                    p.interrupts_per_io
                ));
            }
            if seq {
                s.push_str(
                    "(a 1 MiB read is 4 requests of 256 KiB; per-IO counts are per 1 MiB read)\n",
                );
            }
        }
        s.push('\n');
        for g in &self.goals {
            s.push_str(&format!(
                "goal {}: {:.3} ({} {}) -> {}\n",
                g.name,
                g.value,
                g.kind,
                g.goal,
                if g.met { "MET" } else { "MISSED" }
            ));
        }
        s
    }

    /// A small line plot: stack / direct ratio against queue depth, one line
    /// per pattern, with the sequential goal as a dashed line.
    pub fn to_svg(&self) -> String {
        let (w, h) = (560.0, 340.0);
        let (left, right, top, bottom) = (60.0, 150.0, 30.0, 50.0);
        let qds: Vec<u32> = {
            let mut v: Vec<u32> = self.points.iter().map(|p| p.queue_depth).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let ymax = self
            .points
            .iter()
            .map(|p| p.ratio)
            .filter(|r| r.is_finite())
            .fold(1.0f64, f64::max)
            .ceil();
        let pw = w - left - right;
        let ph = h - top - bottom;
        let x = |i: usize| left + pw * (i as f64 + 0.5) / qds.len().max(1) as f64;
        let y = |r: f64| top + ph * (1.0 - (r / ymax).clamp(0.0, 1.0));
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">\
             storage: whole stack / direct pread ({} MiB warm file)</text>\n",
            w / 2.0,
            self.size / MIB
        );
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
             <line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/>\n",
            top + ph,
            left + pw
        ));
        let ticks = 4;
        for t in 0..=ticks {
            let r = ymax * f64::from(t) / f64::from(ticks);
            s.push_str(&format!(
                "<line x1=\"{}\" y1=\"{1:.1}\" x2=\"{left}\" y2=\"{1:.1}\" stroke=\"black\"/>\
                 <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{r:.2}</text>\n",
                left - 4.0,
                y(r),
                left - 6.0,
                y(r) + 4.0
            ));
        }
        for (i, q) in qds.iter().enumerate() {
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{q}</text>\n",
                x(i),
                top + ph + 16.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">queue depth</text>\n\
             <text x=\"14\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {2:.1})\">\
             stack / direct</text>\n",
            left + pw / 2.0,
            h - 12.0,
            top + ph / 2.0
        ));
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"gray\" \
             stroke-dasharray=\"5,4\"/><text x=\"{2}\" y=\"{3:.1}\" fill=\"gray\">seq goal {GOAL_SEQ_RATIO}</text>\n",
            y(GOAL_SEQ_RATIO),
            left + pw,
            left + pw + 6.0,
            y(GOAL_SEQ_RATIO) + 4.0
        ));
        for (k, (pattern, colour)) in Pattern::ALL.iter().zip(["#1f77b4", "#d62728"]).enumerate() {
            let pts: Vec<String> = qds
                .iter()
                .enumerate()
                .filter_map(|(i, q)| {
                    self.points
                        .iter()
                        .find(|p| p.pattern == *pattern && p.queue_depth == *q)
                        .filter(|p| p.ratio.is_finite())
                        .map(|p| format!("{:.1},{:.1}", x(i), y(p.ratio)))
                })
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n",
                pts.join(" ")
            ));
            for p in &pts {
                let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
                s.push_str(&format!(
                    "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>\n"
                ));
            }
            let ly = top + 20.0 + 18.0 * k as f64;
            s.push_str(&format!(
                "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
                 <text x=\"{2}\" y=\"{3}\">{4}</text>\n",
                left + pw + 10.0,
                left + pw + 30.0,
                left + pw + 34.0,
                ly + 4.0,
                pattern.name()
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny run of the whole machinery with every byte compared with the
    /// file on both sides: data read through the stack is the file's.
    #[test]
    fn tiny_run_reads_the_file_through_the_stack() {
        let cfg = StorageBenchConfig {
            size: 2 * MIB,
            budget: Budget::Ios(24),
            rounds: 1,
            queue_depths: vec![1, 8],
            verify_all: true,
            ..StorageBenchConfig::default()
        };
        let r = storage_throughput(&cfg).unwrap();
        assert_eq!(r.points.len(), 4);
        let mut want = 0;
        for p in &r.points {
            assert_eq!(p.stack.ios, 24, "{p:?}");
            assert_eq!(p.direct.ios, 24, "{p:?}");
            want += 2 * 24 * p.io_bytes;
            // Every I/O needed the guest to tell the host at least once
            // per burst, and the host to answer with an interrupt.
            assert!(p.guest_to_host_per_io > 0.0 && p.host_to_guest_per_io > 0.0);
        }
        assert_eq!(r.verified_bytes, want);
        assert!(!r.to_table().is_empty());
        assert!(r.to_svg().contains("<polyline"));
        assert!(!r.file.is_empty() && !Path::new(&r.file).exists());
    }

    #[test]
    fn offsets_stay_inside_and_sequential_wraps() {
        let mut o = Offsets::new(Pattern::Random4k, 2 * MIB, 7);
        for _ in 0..1000 {
            let v = o.next();
            assert!(v < 2 * MIB && v.is_multiple_of(4096));
        }
        let mut o = Offsets::new(Pattern::Sequential1m, 2 * MIB, 7);
        let v: Vec<u64> = (0..3).map(|_| o.next()).collect();
        assert_eq!(v, [0, MIB, 0]);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for cfg in [
            StorageBenchConfig {
                size: MIB + 512,
                ..StorageBenchConfig::default()
            },
            StorageBenchConfig {
                queue_depths: vec![65],
                ..StorageBenchConfig::default()
            },
            StorageBenchConfig {
                budget: Budget::Ios(0),
                ..StorageBenchConfig::default()
            },
        ] {
            assert!(matches!(
                storage_throughput(&cfg),
                Err(StorageBenchError::Invalid(_))
            ));
        }
    }
}
