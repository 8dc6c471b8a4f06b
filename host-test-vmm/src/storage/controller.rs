//! The storage controller and its VMBus device (storvsp).
//!
//! [`StorageController`] owns the disks (LUNs of target 0 on path 0), the
//! I/O pool and the protocol state; [`StorageController::vsp`] gives the
//! device to offer with `VmbusServer::add_device`. Sub-channels the guest
//! asks for (CREATE_SUB_CHANNELS) are served by the same controller.
//!
//! Threads: `on_packet` runs on the VMBus worker. Init requests are answered
//! there at once; EXECUTE_SRB is validated there (packet, page list against
//! guest RAM) and handed to the I/O pool, whose thread runs the command and
//! sends the completion with `ChannelHandle::send`. A completion that does
//! not fit the ring waits in the channel's queue and is retried when the
//! guest sends more, and every millisecond by the controller's retry thread.
//! At most [`QUEUE_DEPTH`] requests per channel are in flight; beyond that
//! `on_packet` answers `SendError::Full`, so the server holds the packet
//! until one completes (backpressure instead of unbounded memory).

use super::backend::{DiskBackend, FileBackend};
use super::buffer::DataBuffer;
use super::pool::IoPool;
use super::spec::{DiskSpec, MAX_LUN};
use super::target::{execute_no_lun, Command, Disk, ScsiResult};
use super::{StorageError, MAX_TRANSFER_BYTES};
use crate::vmbus::trace::{Dir, TraceWriter};
use crate::vmbus::{ChannelHandle, OutgoingPacket, SendError, Vsp};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;
use vm_memory::GuestMemoryMmap;
use vmbus_guest::guid::Guid;
use vmbus_guest::packet::{PacketType, PacketView};
use vsc_storage::scsi::Cdb;
use vsc_storage::sense::SenseKey;
use vsc_storage::vstor::{
    ChannelProperties, Operation, ProtocolVersion, SrbStatus, VstorPacket, VstorStatus,
};

/// Class GUID of the synthetic SCSI controller (fact sheet §7.1).
pub const SCSI_CLASS_ID: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
/// Instance GUID of controller 0; controller `n` replaces the last two
/// bytes with `n` (big-endian).
pub const STORAGE_INSTANCE_BASE: Guid =
    Guid::from_str_const("5f4c6b1e-6a39-4f0b-9d7c-68766b690000");
/// Requests in flight per channel before backpressure.
pub const QUEUE_DEPTH: usize = 256;
/// Protocol versions accepted, newest first (fact sheet §8.1).
pub const SUPPORTED_VERSIONS: [ProtocolVersion; 5] = ProtocolVersion::ALL;

/// Instance GUID of controller `n`.
pub const fn storage_instance_id(n: u16) -> Guid {
    let mut b = STORAGE_INSTANCE_BASE.0;
    let be = n.to_be_bytes();
    b[14] = be[0];
    b[15] = be[1];
    Guid(b)
}

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The offer's instance GUID.
    pub instance_id: Guid,
    /// I/O threads.
    pub io_threads: usize,
    /// Sub-channels offered at most (QUERY_PROPERTIES max_channel_cnt); 0
    /// disables multi-channel.
    pub max_subchannels: u16,
    /// Decoded VSTOR lines go here.
    pub trace: Option<Arc<TraceWriter>>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            instance_id: storage_instance_id(0),
            io_threads: 8,
            max_subchannels: 4,
            trace: None,
        }
    }
}

/// Counters (Serialize, for reports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StorageStats {
    /// EXECUTE_SRB requests accepted.
    pub srb_requests: u64,
    /// Completions sent for them.
    pub srb_completions: u64,
    /// Completions with CHECK CONDITION.
    pub check_conditions: u64,
    /// MEDIUM ERROR completions (host I/O failures).
    pub medium_errors: u64,
    /// Requests refused before execution (bad packet, bad page list, state).
    pub rejected: u64,
    /// Bytes read from disks into guest memory.
    pub bytes_read: u64,
    /// Bytes written from guest memory to disks.
    pub bytes_written: u64,
    /// SYNCHRONIZE CACHE commands.
    pub flushes: u64,
    /// Highest number of requests in flight on one channel.
    pub max_in_flight: u64,
    /// Times on_packet pushed back because a channel was at QUEUE_DEPTH.
    pub backpressure: u64,
    /// Completions that had to wait for ring space.
    pub deferred_sends: u64,
    /// ENUMERATE_BUS packets sent (hot add/remove).
    pub enumerate_bus_sent: u64,
    /// Sub-channels requested by the guest.
    pub subchannels: u64,
    /// The negotiated VSTOR version ("6.2", ...), if any.
    pub version: Option<String>,
}

#[derive(Default)]
struct Counters {
    srb_requests: AtomicU64,
    srb_completions: AtomicU64,
    check_conditions: AtomicU64,
    medium_errors: AtomicU64,
    rejected: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    flushes: AtomicU64,
    max_in_flight: AtomicU64,
    backpressure: AtomicU64,
    deferred_sends: AtomicU64,
    enumerate_bus_sent: AtomicU64,
    subchannels: AtomicU64,
}

/// A packet waiting for ring space.
enum Pending {
    /// A completion (counts against the channel's in-flight requests when
    /// `srb`).
    Completion { tid: u64, bytes: Vec<u8>, srb: bool },
    /// An unsolicited in-band packet (ENUMERATE_BUS).
    Inband { bytes: Vec<u8> },
}

/// One open channel (primary or sub-channel).
struct Chan {
    handle: ChannelHandle,
    in_flight: AtomicUsize,
    pending: Mutex<VecDeque<Pending>>,
    closed: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opened; waiting for BEGIN_INITIALIZATION.
    Closed,
    /// BEGIN_INITIALIZATION seen.
    Begun,
    /// A version was accepted.
    Versioned,
    /// END_INITIALIZATION seen: I/O allowed.
    Ready,
}

struct Shared {
    cfg: ControllerConfig,
    disks: RwLock<BTreeMap<u8, Arc<Disk>>>,
    pool: IoPool,
    version: Mutex<Option<ProtocolVersion>>,
    phase: Mutex<Phase>,
    /// Open channels, primary first.
    chans: Mutex<Vec<Arc<Chan>>>,
    primary: Mutex<Option<Arc<Chan>>>,
    counters: Counters,
    /// Retry thread wake-up (the thread holds it strongly and the
    /// controller weakly, so it ends when the last device is gone).
    retry: Arc<(Mutex<bool>, Condvar)>,
}

/// A storage controller: disks, I/O threads, protocol state. Its devices
/// (from [`StorageController::vsp`]) share the state, so the controller
/// handle may be dropped while they are offered.
pub struct StorageController {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StorageController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageController")
            .field("instance", &format!("{}", self.shared.cfg.instance_id))
            .field("luns", &self.luns())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StorageController {
    /// A controller with no disks.
    pub fn new(cfg: ControllerConfig) -> Result<Arc<Self>, StorageError> {
        let pool = IoPool::new("storvsp-io", cfg.io_threads).map_err(StorageError::Thread)?;
        let shared = Arc::new(Shared {
            cfg,
            disks: RwLock::new(BTreeMap::new()),
            pool,
            version: Mutex::new(None),
            phase: Mutex::new(Phase::Closed),
            chans: Mutex::new(Vec::new()),
            primary: Mutex::new(None),
            counters: Counters::default(),
            retry: Arc::new((Mutex::new(false), Condvar::new())),
        });
        let weak = Arc::downgrade(&shared);
        let signal = Arc::clone(&shared.retry);
        std::thread::Builder::new()
            .name("storvsp-retry".into())
            .spawn(move || retry_loop(&weak, &signal))
            .map_err(StorageError::Thread)?;
        Ok(Arc::new(Self { shared }))
    }

    /// A controller with the disks of `specs` (image files opened now).
    pub fn with_disks(
        cfg: ControllerConfig,
        specs: &[DiskSpec],
    ) -> Result<Arc<Self>, StorageError> {
        let c = Self::new(cfg)?;
        for (lun, spec) in super::spec::assign_luns(specs).map_err(StorageError::Spec)? {
            c.add_disk(lun, open_spec(&spec)?)?;
        }
        Ok(c)
    }

    /// The device to offer (`VmbusServer::add_device(controller.vsp())`).
    pub fn vsp(self: &Arc<Self>) -> Box<dyn Vsp> {
        Box::new(StorVsp {
            shared: Arc::clone(&self.shared),
            primary: true,
            name: "storvsp".into(),
            chan: None,
            mem: None,
        })
    }

    /// The offer's instance GUID.
    pub fn instance_id(&self) -> Guid {
        self.shared.cfg.instance_id
    }

    /// Attach `backend` as `lun` and tell a running guest to rescan
    /// (ENUMERATE_BUS on the primary channel).
    pub fn add_disk(&self, lun: u8, backend: Arc<dyn DiskBackend>) -> Result<(), StorageError> {
        if lun > MAX_LUN {
            return Err(StorageError::BadLun(lun));
        }
        if backend.len() < u64::from(super::target::BLOCK_SIZE) {
            return Err(StorageError::TooSmall(backend.describe()));
        }
        {
            let mut d = self.shared.disks.write().unwrap_or_else(|e| e.into_inner());
            if d.contains_key(&lun) {
                return Err(StorageError::LunInUse(lun));
            }
            let serial = format!(
                "hvkit-{:08x}-{lun:03}",
                u32::from_le_bytes(
                    self.shared.cfg.instance_id.0[0..4]
                        .try_into()
                        .unwrap_or([0; 4])
                )
            );
            tracing::info!(lun, backend = %backend.describe(), "storage: disk attached");
            d.insert(lun, Arc::new(Disk::new(lun, backend, serial)));
        }
        self.shared.enumerate_bus();
        Ok(())
    }

    /// Open `spec`'s image and attach it (LUN from the spec, else the lowest
    /// free one); returns the LUN.
    pub fn add_disk_spec(&self, spec: &DiskSpec) -> Result<u8, StorageError> {
        let lun = match spec.lun {
            Some(l) => l,
            None => {
                let d = self.shared.disks.read().unwrap_or_else(|e| e.into_inner());
                (0..=MAX_LUN)
                    .find(|l| !d.contains_key(l))
                    .ok_or(StorageError::BadLun(MAX_LUN))?
            }
        };
        self.add_disk(lun, open_spec(spec)?)?;
        Ok(lun)
    }

    /// Detach `lun` and tell a running guest to rescan. Requests already in
    /// flight on it finish normally; new ones get SRB_STATUS_INVALID_LUN.
    pub fn remove_disk(&self, lun: u8) -> Result<Arc<dyn DiskBackend>, StorageError> {
        let disk = self
            .shared
            .disks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lun)
            .ok_or(StorageError::NoSuchLun(lun))?;
        tracing::info!(lun, "storage: disk detached");
        self.shared.enumerate_bus();
        Ok(Arc::clone(disk.backend()))
    }

    /// The attached LUNs, ascending.
    pub fn luns(&self) -> Vec<u8> {
        self.shared
            .disks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// The negotiated protocol version while the guest is connected.
    pub fn version(&self) -> Option<ProtocolVersion> {
        *lock(&self.shared.version)
    }

    /// Requests in flight on all channels.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.chans)
            .iter()
            .map(|c| c.in_flight.load(Ordering::SeqCst))
            .sum()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> StorageStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        StorageStats {
            srb_requests: g(&c.srb_requests),
            srb_completions: g(&c.srb_completions),
            check_conditions: g(&c.check_conditions),
            medium_errors: g(&c.medium_errors),
            rejected: g(&c.rejected),
            bytes_read: g(&c.bytes_read),
            bytes_written: g(&c.bytes_written),
            flushes: g(&c.flushes),
            max_in_flight: g(&c.max_in_flight),
            backpressure: g(&c.backpressure),
            deferred_sends: g(&c.deferred_sends),
            enumerate_bus_sent: g(&c.enumerate_bus_sent),
            subchannels: g(&c.subchannels),
            version: self.version().map(|v| format!("{v:?}")),
        }
    }
}

/// Open the image of `spec`.
pub fn open_spec(spec: &DiskSpec) -> Result<Arc<dyn DiskBackend>, StorageError> {
    FileBackend::open(&spec.path, spec.readonly)
        .map(|b| Arc::new(b) as Arc<dyn DiskBackend>)
        .map_err(|source| StorageError::Open {
            path: spec.path.clone(),
            source,
        })
}

/// Retries completions that waited for ring space: every millisecond while
/// any wait, else when woken (or every 100 ms, to notice the end).
fn retry_loop(weak: &Weak<Shared>, signal: &(Mutex<bool>, Condvar)) {
    loop {
        let waiting = {
            let Some(s) = weak.upgrade() else { return };
            let chans: Vec<Arc<Chan>> = lock(&s.chans).clone();
            let mut waiting = false;
            for c in &chans {
                waiting |= s.flush_pending(c);
            }
            waiting
        };
        let (m, cv) = signal;
        let mut wake = lock(m);
        if !*wake {
            let timeout = if waiting {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(100)
            };
            wake = match cv.wait_timeout(wake, timeout) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        *wake = false;
    }
}

impl Shared {
    fn trace(&self, dir: Dir, relid: u32, tid: u64, name: &str, p: &VstorPacket) {
        if let Some(t) = &self.cfg.trace {
            super::trace::record(t, dir, relid, tid, name, p, *lock(&self.version));
        }
    }

    fn wire_version(&self) -> ProtocolVersion {
        self.wire_version_for(0)
    }

    /// The reply size for a request of `request_len` bytes: the negotiated
    /// version's, or before negotiation the request's own size. Linux 6.x
    /// sends full 64-byte packets from BEGIN_INITIALIZATION on and drops any
    /// completion shorter than that ("Invalid pkt ... minlen=64"), while a
    /// Win7-era guest sends and expects 48.
    fn wire_version_for(&self, request_len: usize) -> ProtocolVersion {
        lock(&self.version).unwrap_or(if request_len >= vsc_storage::vstor::VSTOR_PACKET_SIZE {
            ProtocolVersion::WIN8
        } else {
            ProtocolVersion::WIN7
        })
    }

    /// Send what waits on `c`; true if something is still waiting.
    fn flush_pending(&self, c: &Chan) -> bool {
        let mut q = lock(&c.pending);
        while let Some(front) = q.front() {
            let r = match front {
                Pending::Completion { tid, bytes, .. } => {
                    let parts = [&bytes[..]];
                    c.handle.send(&OutgoingPacket::completion(*tid, &parts))
                }
                Pending::Inband { bytes } => {
                    let parts = [&bytes[..]];
                    c.handle.send(&OutgoingPacket::inband(0, false, &parts))
                }
            };
            match r {
                Ok(()) => {
                    if let Some(Pending::Completion { srb: true, .. }) = q.pop_front() {
                        c.in_flight.fetch_sub(1, Ordering::SeqCst);
                        self.counters.srb_completions.fetch_add(1, Ordering::SeqCst);
                    }
                }
                Err(SendError::Full { .. }) => return true,
                Err(e) => {
                    // The channel is gone (closed, reopened, corrupt): its
                    // completions have nobody to go to.
                    tracing::debug!(relid = c.handle.relid(), error = %e, "storvsp: dropping queued packets");
                    q.clear();
                    c.in_flight.store(0, Ordering::SeqCst);
                    c.closed.store(true, Ordering::SeqCst);
                    return false;
                }
            }
        }
        false
    }

    /// Queue `p` on `c` and send as much as the ring takes.
    fn send_or_queue(&self, c: &Chan, p: Pending) {
        let waiting = {
            let mut q = lock(&c.pending);
            q.push_back(p);
            q.len() > 1
        };
        if waiting {
            self.counters.deferred_sends.fetch_add(1, Ordering::SeqCst);
        }
        if self.flush_pending(c) {
            if !waiting {
                self.counters.deferred_sends.fetch_add(1, Ordering::SeqCst);
            }
            *lock(&self.retry.0) = true;
            self.retry.1.notify_one();
        }
    }

    /// ENUMERATE_BUS to the guest if it is initialized.
    fn enumerate_bus(&self) {
        if *lock(&self.phase) != Phase::Ready {
            return;
        }
        let Some(c) = lock(&self.primary).clone() else {
            return;
        };
        let p = VstorPacket {
            operation: Operation::ENUMERATE_BUS,
            ..VstorPacket::default()
        };
        let bytes = p.wire_bytes(self.wire_version()).to_vec();
        self.trace(Dir::HostToGuest, c.handle.relid(), 0, "ENUMERATE_BUS", &p);
        self.counters
            .enumerate_bus_sent
            .fetch_add(1, Ordering::SeqCst);
        self.send_or_queue(&c, Pending::Inband { bytes });
    }
}

/// The VMBus device of a controller (primary channel or sub-channel).
struct StorVsp {
    shared: Arc<Shared>,
    primary: bool,
    name: String,
    chan: Option<Arc<Chan>>,
    mem: Option<GuestMemoryMmap>,
}

impl StorVsp {
    /// Answer an init-phase request in place.
    fn reply(
        &self,
        ch: &ChannelHandle,
        tid: u64,
        mut p: VstorPacket,
        status: VstorStatus,
        version: ProtocolVersion,
    ) -> Result<(), SendError> {
        p.operation = Operation::COMPLETE_IO;
        p.flags = 0;
        p.status = status;
        self.shared
            .trace(Dir::HostToGuest, ch.relid(), tid, "COMPLETE_IO", &p);
        let bytes = p.wire_bytes(version);
        let parts = [bytes];
        ch.send(&OutgoingPacket::completion(tid, &parts))
    }

    fn control(
        &mut self,
        ch: &ChannelHandle,
        tid: u64,
        req: VstorPacket,
        request_len: usize,
    ) -> Result<(), SendError> {
        let s = Arc::clone(&self.shared);
        let wire = s.wire_version_for(request_len);
        let phase = *lock(&s.phase);
        let mut out = VstorPacket::default();
        match req.operation {
            Operation::BEGIN_INITIALIZATION if self.primary => {
                self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
                *lock(&s.phase) = Phase::Begun;
                *lock(&s.version) = None;
            }
            Operation::QUERY_PROTOCOL_VERSION if self.primary => {
                let want = req.version();
                if phase == Phase::Closed {
                    return self.reply(ch, tid, out, VstorStatus::INVALID_DEVICE_STATE, wire);
                }
                out.set_body(&want);
                if SUPPORTED_VERSIONS.contains(&want.major_minor) && want.revision == 0 {
                    self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
                    tracing::info!(version = ?want.major_minor, "storvsp: protocol version accepted");
                    *lock(&s.version) = Some(want.major_minor);
                    *lock(&s.phase) = Phase::Versioned;
                } else {
                    self.reply(ch, tid, out, VstorStatus::REVISION_MISMATCH, wire)?;
                }
            }
            Operation::QUERY_PROPERTIES if self.primary => {
                if phase != Phase::Versioned && phase != Phase::Ready {
                    return self.reply(ch, tid, out, VstorStatus::INVALID_DEVICE_STATE, wire);
                }
                let multi = wire.has_win8_extension() && s.cfg.max_subchannels > 0;
                out.set_body(&ChannelProperties {
                    max_channel_count: if multi { s.cfg.max_subchannels } else { 0 },
                    flags: if multi {
                        ChannelProperties::FLAG_MULTI_CHANNEL
                    } else {
                        0
                    },
                    max_transfer_bytes: MAX_TRANSFER_BYTES,
                    ..ChannelProperties::default()
                });
                self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
            }
            Operation::END_INITIALIZATION if self.primary => {
                if phase != Phase::Versioned && phase != Phase::Ready {
                    return self.reply(ch, tid, out, VstorStatus::INVALID_DEVICE_STATE, wire);
                }
                self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
                *lock(&s.phase) = Phase::Ready;
            }
            Operation::CREATE_SUB_CHANNELS if self.primary => {
                let n = req.sub_channel_count();
                let ok = phase == Phase::Ready
                    && wire.has_win8_extension()
                    && n >= 1
                    && n <= s.cfg.max_subchannels;
                if !ok {
                    return self.reply(ch, tid, out, VstorStatus::INVALID_PARAMETER, wire);
                }
                self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
                for i in 0..n {
                    ch.request_subchannel(Box::new(StorVsp {
                        shared: Arc::clone(&s),
                        primary: false,
                        name: format!("storvsp-sub{}", i + 1),
                        chan: None,
                        mem: None,
                    }));
                }
                s.counters
                    .subchannels
                    .fetch_add(u64::from(n), Ordering::SeqCst);
            }
            Operation::RESET_LUN | Operation::RESET_BUS | Operation::RESET_ADAPTER => {
                // Nothing is queued inside the controller that a reset could
                // abort: in-flight requests complete on their own.
                self.reply(ch, tid, out, VstorStatus::SUCCESS, wire)?;
            }
            _ => {
                s.counters.rejected.fetch_add(1, Ordering::SeqCst);
                self.reply(ch, tid, out, VstorStatus::INVALID_PARAMETER, wire)?;
            }
        }
        Ok(())
    }

    fn execute_srb(
        &mut self,
        ch: &ChannelHandle,
        packet: &PacketView<'_>,
        tid: u64,
        req: VstorPacket,
    ) -> Result<(), SendError> {
        let s = Arc::clone(&self.shared);
        let version = s.wire_version();
        let (Some(chan), Some(mem)) = (self.chan.clone(), self.mem.clone()) else {
            return Err(SendError::Closed);
        };
        if *lock(&s.phase) != Phase::Ready {
            s.counters.rejected.fetch_add(1, Ordering::SeqCst);
            return self.reply(ch, tid, req, VstorStatus::INVALID_DEVICE_STATE, version);
        }
        if chan.in_flight.load(Ordering::SeqCst) >= QUEUE_DEPTH {
            s.counters.backpressure.fetch_add(1, Ordering::SeqCst);
            // Held by the server and offered again (room or 1 ms retry).
            return Err(SendError::Full { needed: 88 });
        }
        let srb = req.srb();
        let buf = if packet.packet_type() == PacketType::DATA_USING_GPA_DIRECT {
            match DataBuffer::from_packet(packet, &mem, u64::from(MAX_TRANSFER_BYTES)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(relid = ch.relid(), error = %e, "storvsp: bad data buffer");
                    s.counters.rejected.fetch_add(1, Ordering::SeqCst);
                    let r = ScsiResult::srb(SrbStatus::INVALID_REQUEST);
                    let out = completion_packet(&req, &r, version);
                    return self.reply(ch, tid, out, VstorStatus::SUCCESS, version);
                }
            }
        } else {
            DataBuffer::empty()
        };
        s.counters.srb_requests.fetch_add(1, Ordering::SeqCst);
        let n = chan.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.counters
            .max_in_flight
            .fetch_max(n as u64, Ordering::SeqCst);
        let disk = if srb.path_id == 0 && srb.target_id == 0 {
            s.disks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&srb.lun)
                .cloned()
        } else {
            None
        };
        let job_shared = Arc::clone(&s);
        s.pool.submit(move || {
            let r = run_srb(&job_shared, &req, disk.as_deref(), &buf, &mem);
            let out = completion_packet(&req, &r, version);
            job_shared.trace(
                Dir::HostToGuest,
                chan.handle.relid(),
                tid,
                "COMPLETE_IO",
                &out,
            );
            let bytes = out.wire_bytes(version).to_vec();
            job_shared.send_or_queue(
                &chan,
                Pending::Completion {
                    tid,
                    bytes,
                    srb: true,
                },
            );
        });
        Ok(())
    }
}

/// Run one SRB on the I/O thread.
fn run_srb(
    s: &Shared,
    req: &VstorPacket,
    disk: Option<&Disk>,
    buf: &DataBuffer,
    mem: &GuestMemoryMmap,
) -> ScsiResult {
    let srb = req.srb();
    let cdb_len = usize::from(srb.cdb_length);
    if cdb_len == 0 || cdb_len > vsc_storage::vstor::MAX_CDB_SIZE {
        return ScsiResult::srb(SrbStatus::INVALID_REQUEST);
    }
    let cmd = Command {
        cdb: srb.cdb(),
        transfer_len: u64::from(srb.data_transfer_length).min(buf.len()),
    };
    let r = match disk {
        Some(d) => {
            let luns: Vec<u8> = s
                .disks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect();
            d.execute(cmd, buf, mem, &luns)
        }
        None if srb.path_id == 0 && srb.target_id == 0 => {
            let luns: Vec<u8> = s
                .disks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .copied()
                .collect();
            execute_no_lun(cmd, buf, mem, &luns)
        }
        None => execute_no_lun(cmd, buf, mem, &[]),
    };
    let c = &s.counters;
    if let Some(sense) = r.sense {
        c.check_conditions.fetch_add(1, Ordering::SeqCst);
        if sense.key == SenseKey::MEDIUM_ERROR {
            c.medium_errors.fetch_add(1, Ordering::SeqCst);
        }
    }
    if r.srb_status.is_success() {
        match Cdb::parse(cmd.cdb) {
            Ok(Cdb::Read(_)) => {
                c.bytes_read
                    .fetch_add(u64::from(r.transferred), Ordering::SeqCst);
            }
            Ok(Cdb::Write(_)) => {
                c.bytes_written
                    .fetch_add(u64::from(r.transferred), Ordering::SeqCst);
            }
            Ok(Cdb::SynchronizeCache(_)) => {
                c.flushes.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
    r
}

/// The COMPLETE_IO for `req` with result `r`.
fn completion_packet(req: &VstorPacket, r: &ScsiResult, version: ProtocolVersion) -> VstorPacket {
    let mut srb = req.srb();
    srb.srb_status = r.srb_status;
    srb.scsi_status = r.scsi_status.0;
    srb.data_transfer_length = r.transferred;
    match r.sense {
        Some(sense) => srb.set_sense(&sense.to_fixed(), version),
        None => srb.set_sense(&[], version),
    }
    let mut out = VstorPacket::completion(VstorStatus::SUCCESS);
    out.set_body(&srb);
    out
}

impl Vsp for StorVsp {
    fn name(&self) -> &str {
        &self.name
    }

    fn class_id(&self) -> Guid {
        SCSI_CLASS_ID
    }

    fn instance_id(&self) -> Guid {
        self.shared.cfg.instance_id
    }

    fn on_open(
        &mut self,
        ch: &ChannelHandle,
        _user_data: &[u8],
    ) -> Result<(), crate::vmbus::OpenRefused> {
        let mem = ch
            .memory()
            .ok_or_else(|| crate::vmbus::OpenRefused("no guest memory".into()))?;
        let chan = Arc::new(Chan {
            handle: ch.clone(),
            in_flight: AtomicUsize::new(0),
            pending: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
        });
        let s = &self.shared;
        if self.primary {
            *lock(&s.phase) = Phase::Closed;
            *lock(&s.version) = None;
            *lock(&s.primary) = Some(Arc::clone(&chan));
        }
        lock(&s.chans).push(Arc::clone(&chan));
        self.chan = Some(chan);
        self.mem = Some(mem);
        Ok(())
    }

    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError> {
        // Anything that waits for ring space goes first.
        if let Some(c) = &self.chan {
            if self.shared.flush_pending(c) {
                return Err(SendError::Full { needed: 88 });
            }
        }
        let t = packet.packet_type();
        if t != PacketType::DATA_INBAND && t != PacketType::DATA_USING_GPA_DIRECT {
            tracing::debug!(relid = ch.relid(), kind = ?t, "storvsp ignores packet");
            return Ok(());
        }
        let tid = packet.transaction_id();
        // Control requests may come at the pre-Win8 size whatever was
        // negotiated; an SRB must be as long as the version says.
        let version = *lock(&self.shared.version);
        let parsed = VstorPacket::parse(packet.payload(), None).and_then(|p| {
            if p.operation == Operation::EXECUTE_SRB {
                VstorPacket::parse(packet.payload(), version)
            } else {
                Ok(p)
            }
        });
        let req = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(relid = ch.relid(), error = %e, "storvsp: short packet");
                self.shared.counters.rejected.fetch_add(1, Ordering::SeqCst);
                let wire = self.shared.wire_version_for(packet.payload().len());
                return self.reply(
                    ch,
                    tid,
                    VstorPacket::default(),
                    VstorStatus::INVALID_PARAMETER,
                    wire,
                );
            }
        };
        let name = req.operation.name().unwrap_or("UNKNOWN");
        self.shared
            .trace(Dir::GuestToHost, ch.relid(), tid, name, &req);
        if req.operation == Operation::EXECUTE_SRB {
            self.execute_srb(ch, packet, tid, req)
        } else {
            self.control(ch, tid, req, packet.payload().len())
        }
    }

    fn on_close(&mut self, _ch: &ChannelHandle) {
        let s = &self.shared;
        if let Some(c) = self.chan.take() {
            c.closed.store(true, Ordering::SeqCst);
            lock(&c.pending).clear();
            lock(&s.chans).retain(|x| !Arc::ptr_eq(x, &c));
            if self.primary {
                *lock(&s.primary) = None;
                *lock(&s.phase) = Phase::Closed;
                *lock(&s.version) = None;
            }
        }
        self.mem = None;
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert_eq!(storage_instance_id(0), STORAGE_INSTANCE_BASE);
        assert_eq!(
            format!("{}", storage_instance_id(0x102)),
            "5f4c6b1e-6a39-4f0b-9d7c-68766b690102"
        );
        assert_eq!(
            format!("{SCSI_CLASS_ID}"),
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
        );
    }
}
