//! The network VSP (netvsp): a synthetic NIC on VMBus (class
//! f8615163-df3e-46c5-913f-f2d2f965ed0e, fact sheet §7, §9) whose frames go
//! to a [`FrameBackend`] (TAP device, L2 switch port).
//!
//! Protocol, all on the primary channel (no sub-channels: a SUBCHANNEL
//! request is answered with success and 0 allocated, and RSS capabilities
//! are not offered, so Linux never asks):
//! - NVSP: INIT for v1, v2, v4, v5, v6, v6.1 (others FAIL; every INIT is
//!   answered), SEND_NDIS_VERSION and SEND_NDIS_CONFIG recorded,
//!   SEND_RECEIVE_BUFFER (one section of [`rx_section_size`]-byte
//!   sub-allocations carved over the whole GPADL), SEND_SEND_BUFFER
//!   ([`SEND_SECTION_SIZE`]-byte sections), revokes, SEND_RNDIS_PACKET with
//!   the RNDIS bytes in a send-buffer section and/or GPA-direct ranges.
//! - RNDIS: INITIALIZE, QUERY (frame size, MAC, offload capabilities type
//!   0xA7, media state, link speed, filter, total size), SET (packet
//!   filter, offload parameters, multicast list, config parameters succeed;
//!   RSS is NOT_SUPPORTED), KEEPALIVE, HALT, RESET, and PACKETs (batched,
//!   VLAN PPI turned into an 802.1Q tag).
//! - Host to guest: every RNDIS message (frames, completions, link
//!   indications) is copied into a free receive sub-allocation and sent as a
//!   transfer-page packet (type 7) whose completion frees it. No free
//!   sub-allocation: frames are dropped and counted; control replies wait in
//!   a bounded queue.
//!
//! Security: every guest length, offset, section index and GPADL is checked
//! (sections against the buffers' sizes, GPA-direct pages against guest
//! RAM, RNDIS offsets against msg_len by `vsc_net::rndis::parse`); failures
//! are answered with NVSP FAIL / RNDIS error statuses and counted.
//!
//! Threads and locks: guest packets arrive on the VMBus worker
//! ([`Nic::handle_packet`]); frames from the backend arrive on the
//! backend's thread ([`FrameSink::deliver`]). Both take the NIC's state
//! lock; neither holds it while calling the backend (a switch delivers to
//! another NIC synchronously, which takes that NIC's lock).

use super::backend::{lock, FrameBackend, FrameSink, MacAddr, ETH_HEADER};
use crate::storage::buffer::DataBuffer;
use crate::vmbus::trace::{Dir, TraceWriter};
use crate::vmbus::{ChannelHandle, Gpadl, GpadlLease, OpenRefused, OutgoingPacket, SendError, Vsp};
use serde::Serialize;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::guid::Guid;
use vmbus_guest::packet::{PacketFlags, PacketType, PacketView, TransferPageRange, XferPageHeader};
use vsc_net::nvsp::{self, NvspMessage, ProtocolVersion, ReceiveBufferSection, Status};
use vsc_net::offload::{NdisOffload, NdisOffloadParameters, NDIS_OBJECT_TYPE_OFFLOAD};
use vsc_net::rndis::{self, Oid, RndisStatus};
use zerocopy::IntoBytes;

/// Class GUID of the synthetic network adapter (fact sheet §7.1).
pub const NET_CLASS_ID: Guid = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
/// Instance GUID of NIC 0; NIC `n` replaces the last two bytes with `n`.
pub const NET_INSTANCE_BASE: Guid = Guid::from_str_const("9f8e2c41-5b7a-4e63-a1d0-6e6574000000");
/// MTU unless configured otherwise.
pub const DEFAULT_MTU: u32 = 1500;
/// Largest MTU a NIC may be configured with.
pub const MAX_MTU: u32 = 9000;
/// Send-buffer section size (what Hyper-V and openvmm use, fact sheet §9.2).
pub const SEND_SECTION_SIZE: u32 = nvsp::DEFAULT_SEND_SECTION_SIZE;
/// Link speed reported (GEN_LINK_SPEED, units of 100 bps): 10 Gbit/s.
pub const LINK_SPEED_100BPS: u32 = 100_000_000;
/// RNDIS messages per packet the guest may batch (INIT_C max_pkt_per_msg;
/// openvmm's value).
pub const MAX_PACKETS_PER_MESSAGE: u32 = 8;
/// Packet alignment exponent (INIT_C pkt_alignment_factor: 2^3 = 8 bytes).
pub const PACKET_ALIGNMENT_FACTOR: u32 = 3;
/// Most bytes one SEND_RNDIS_PACKET may carry (section + GPA-direct ranges):
/// a batch of 8 MTU-9000 frames with headers fits.
pub const MAX_SEND_BYTES: u64 = 128 * 1024;
/// Control replies waiting for a receive sub-allocation, at most.
pub const MAX_QUEUED_CONTROL: usize = 64;
/// Sub-allocations a receive buffer is carved into, at most (Linux's
/// largest buffer, 31 MiB, has ~19k of ours).
pub const MAX_RX_SECTIONS: u32 = 65536;
/// Ring bytes kept free for completions when frames are delivered, so a
/// burst of frames cannot make a guest request's completion fail.
const COMPLETION_RESERVE: usize = 1024;
/// Transaction ids of host->guest transfer-page packets: base + section.
const RX_TID_BASE: u64 = 0x6E65_7476_0000_0000;
/// Bytes before the frame in a receive sub-allocation: RNDIS header and
/// packet body, and room for up to four u32 PPIs.
const RX_HEADROOM: u32 = rndis::packet_header_len(4) as u32;

/// Instance GUID of NIC `n`.
pub const fn net_instance_id(n: u16) -> Guid {
    let mut b = NET_INSTANCE_BASE.0;
    let be = n.to_be_bytes();
    b[14] = be[0];
    b[15] = be[1];
    Guid(b)
}

/// Receive sub-allocation size for `mtu`: headroom + frame with a VLAN tag,
/// rounded to 64 bytes.
pub const fn rx_section_size(mtu: u32) -> u32 {
    (RX_HEADROOM + mtu + ETH_HEADER as u32 + 4).next_multiple_of(64)
}

/// The NVSP versions accepted, newest first (fact sheet §9.1).
pub const SUPPORTED_VERSIONS: [ProtocolVersion; 6] = ProtocolVersion::DESCENDING;

/// NIC settings.
#[derive(Debug, Clone)]
pub struct NicConfig {
    /// A short name for logs and the control API ("net0").
    pub name: String,
    /// The offer's instance GUID.
    pub instance_id: Guid,
    /// The permanent MAC address.
    pub mac: MacAddr,
    /// The MTU (frame payload without the Ethernet header), 68..=9000.
    pub mtu: u32,
    /// Decoded NVSP/RNDIS lines go here (`--trace`).
    pub trace: Option<Arc<TraceWriter>>,
}

impl NicConfig {
    /// NIC `n` with a generated locally administered MAC.
    pub fn numbered(n: u16) -> Self {
        Self {
            name: format!("net{n}"),
            instance_id: net_instance_id(n),
            mac: MacAddr::local_from_seed(u64::from(std::process::id()) << 16 | u64::from(n)),
            mtu: DEFAULT_MTU,
            trace: None,
        }
    }
}

/// NIC counters (Serialize, for reports and the control API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    /// Frames from the guest handed to the backend.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames dropped (bad length, link down, backend busy/error).
    pub tx_dropped: u64,
    /// Frames delivered into the guest's receive buffer.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Backend frames dropped because no receive sub-allocation was free (or
    /// the ring was full).
    pub rx_dropped_no_buffer: u64,
    /// Backend frames dropped by the packet filter or before RNDIS init.
    pub rx_dropped_filter: u64,
    /// Backend frames dropped while the link was down.
    pub rx_dropped_link: u64,
    /// Oversized backend frames dropped.
    pub rx_dropped_oversize: u64,
    /// Malformed or out-of-state guest requests (answered with failure).
    pub protocol_errors: u64,
    /// RNDIS control messages handled.
    pub control_messages: u64,
    /// Link indications sent.
    pub link_indications: u64,
    /// Control replies dropped because the queue was full or no buffer.
    pub control_dropped: u64,
    /// Guest completions of transfer-page packets that matched nothing.
    pub bogus_completions: u64,
    /// NVSP version in use.
    pub version: Option<String>,
    /// The link as the guest was last told (and the control side set).
    pub link_up: bool,
    /// Receive sub-allocations (0 before the guest gave a buffer).
    pub rx_sections: u32,
    /// Of which free.
    pub rx_sections_free: u32,
    /// RNDIS initialized.
    pub rndis_ready: bool,
    /// The packet filter the guest set.
    pub packet_filter: u32,
}

#[derive(Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped_no_buffer: AtomicU64,
    rx_dropped_filter: AtomicU64,
    rx_dropped_link: AtomicU64,
    rx_dropped_oversize: AtomicU64,
    protocol_errors: AtomicU64,
    control_messages: AtomicU64,
    link_indications: AtomicU64,
    control_dropped: AtomicU64,
    bogus_completions: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// What netvsp needs from its channel: sending, GPADLs and guest RAM.
/// [`ChannelHandle`] is the real one; fuzzing and unit tests use their own.
pub trait NetChannel: Send + Sync {
    /// The channel's relid (logs, trace).
    fn relid(&self) -> u32;
    /// Send one packet to the guest.
    fn send(&self, p: &OutgoingPacket<'_>) -> Result<(), SendError>;
    /// Free bytes in the host->guest ring.
    fn free_space(&self) -> Result<usize, SendError>;
    /// A GPADL of this channel.
    fn gpadl(&self, handle: u32) -> Option<Gpadl>;
    /// A GPADL of this channel with its lease, revoked when the guest tears
    /// it down. Channels without teardown (tests, fuzzing) need not override.
    fn gpadl_leased(&self, handle: u32) -> Option<(Gpadl, GpadlLease)> {
        self.gpadl(handle).map(|g| (g, GpadlLease::unrevocable()))
    }
    /// Guest RAM.
    fn memory(&self) -> Option<GuestMemoryMmap>;
}

impl NetChannel for ChannelHandle {
    fn relid(&self) -> u32 {
        ChannelHandle::relid(self)
    }
    fn send(&self, p: &OutgoingPacket<'_>) -> Result<(), SendError> {
        ChannelHandle::send(self, p)
    }
    fn free_space(&self) -> Result<usize, SendError> {
        ChannelHandle::free_space(self)
    }
    fn gpadl(&self, handle: u32) -> Option<Gpadl> {
        ChannelHandle::gpadl(self, handle)
    }
    fn gpadl_leased(&self, handle: u32) -> Option<(Gpadl, GpadlLease)> {
        ChannelHandle::gpadl_leased(self, handle)
    }
    fn memory(&self) -> Option<GuestMemoryMmap> {
        ChannelHandle::memory(self)
    }
}

/// The guest's receive buffer, carved into sub-allocations. The pages are
/// touched only under `lease`: a guest that tears the GPADL down without
/// revoking the buffer first (Linux always revokes first, fact sheet §9.2)
/// gets the buffer dropped, never writes into pages it took back.
struct RecvBuf {
    gpadl: Arc<Gpadl>,
    lease: GpadlLease,
    id: u16,
    section_size: u32,
    count: u32,
    free: Vec<u32>,
    in_use: Vec<bool>,
}

/// The guest's send buffer (read only under `lease`, as the receive buffer).
struct SendBuf {
    gpadl: Arc<Gpadl>,
    lease: GpadlLease,
    id: u16,
    count: u32,
}

#[derive(Default)]
struct State {
    chan: Option<Arc<dyn NetChannel>>,
    mem: Option<GuestMemoryMmap>,
    version: Option<ProtocolVersion>,
    ndis_version: Option<(u32, u32)>,
    guest_mtu: Option<u32>,
    rx: Option<RecvBuf>,
    tx: Option<SendBuf>,
    rndis_ready: bool,
    filter: u32,
    /// RNDIS control messages waiting for a receive sub-allocation.
    control_queue: VecDeque<Vec<u8>>,
    /// The link state the guest was last told.
    told_link: bool,
}

struct Shared {
    cfg: NicConfig,
    backend: Arc<dyn FrameBackend>,
    admin_up: AtomicBool,
    /// Fault injection: the MAC the RNDIS address queries answer instead of
    /// `cfg.mac` (a host that lies about the address; see [`Nic::lie_about_mac`]).
    mac_lie: Mutex<Option<MacAddr>>,
    counters: Counters,
    st: Mutex<State>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.backend.set_sink(None);
    }
}

/// A synthetic NIC: protocol state, receive path and counters. Offer
/// [`Nic::vsp`] on a VMBus server; the NIC keeps working across guest
/// reconnects (state resets on every open).
pub struct Nic {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Nic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nic")
            .field("name", &self.shared.cfg.name)
            .field("mac", &self.shared.cfg.mac.to_string())
            .field("backend", &self.shared.backend.describe())
            .finish()
    }
}

/// Why a NIC could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// MTU outside 68..=9000.
    #[error("MTU {0} is outside 68..={MAX_MTU}")]
    BadMtu(u32),
}

struct RxSink(Weak<Shared>);

impl FrameSink for RxSink {
    fn deliver(&self, frame: &[u8]) {
        if let Some(s) = self.0.upgrade() {
            s.deliver(frame);
        }
    }
}

impl Nic {
    /// A NIC sending to and receiving from `backend`.
    pub fn new(cfg: NicConfig, backend: Arc<dyn FrameBackend>) -> Result<Arc<Self>, NicError> {
        if !(68..=MAX_MTU).contains(&cfg.mtu) {
            return Err(NicError::BadMtu(cfg.mtu));
        }
        tracing::info!(nic = %cfg.name, mac = %cfg.mac, backend = %backend.describe(), "net: NIC created");
        let shared = Arc::new(Shared {
            cfg,
            backend,
            admin_up: AtomicBool::new(true),
            mac_lie: Mutex::new(None),
            counters: Counters::default(),
            st: Mutex::new(State {
                told_link: true,
                ..State::default()
            }),
        });
        shared
            .backend
            .set_sink(Some(Arc::new(RxSink(Arc::downgrade(&shared)))));
        Ok(Arc::new(Self { shared }))
    }

    /// The device to offer (`VmbusServer::add_device(nic.vsp())`).
    pub fn vsp(self: &Arc<Self>) -> Box<dyn Vsp> {
        Box::new(NetVsp {
            nic: Arc::clone(self),
            scratch: Vec::new(),
        })
    }

    /// The NIC's name.
    pub fn name(&self) -> &str {
        &self.shared.cfg.name
    }

    /// The MAC address.
    pub fn mac(&self) -> MacAddr {
        self.shared.cfg.mac
    }

    /// The MTU.
    pub fn mtu(&self) -> u32 {
        self.shared.cfg.mtu
    }

    /// The offer's instance GUID.
    pub fn instance_id(&self) -> Guid {
        self.shared.cfg.instance_id
    }

    /// The backend's description.
    pub fn backend(&self) -> String {
        self.shared.backend.describe()
    }

    /// Set the link up or down (control API). A guest with RNDIS up is sent
    /// MEDIA_CONNECT / MEDIA_DISCONNECT; frames both ways are dropped while
    /// the link is down.
    pub fn set_link(&self, up: bool) {
        self.shared.admin_up.store(up, Ordering::SeqCst);
        tracing::info!(nic = %self.shared.cfg.name, up, "net: link set");
        self.shared.update_link();
    }

    /// Fault injection for tests: answer the guest's MAC address queries with
    /// `mac` instead of the configured address (from the next query on), so
    /// a check comparing the guest's MAC with the host's configuration can be
    /// shown to fail. `None` restores the truth.
    pub fn lie_about_mac(&self, mac: Option<MacAddr>) {
        *lock(&self.shared.mac_lie) = mac;
    }

    /// Whether the link is up (set from the control side, and the backend's).
    pub fn link_up(&self) -> bool {
        self.shared.effective_link()
    }

    /// Attach a channel (what `on_open` does): protocol state starts over.
    pub fn attach(&self, ch: Arc<dyn NetChannel>) {
        let mut st = lock(&self.shared.st);
        let told = st.told_link;
        *st = State {
            mem: ch.memory(),
            chan: Some(ch),
            told_link: told,
            ..State::default()
        };
    }

    /// Detach the channel (what `on_close` does).
    pub fn detach(&self) {
        let mut st = lock(&self.shared.st);
        let told = st.told_link;
        *st = State {
            told_link: told,
            ..State::default()
        };
    }

    /// Handle one guest packet on the attached channel `ch` (what `on_packet`
    /// does). `scratch` is a reusable buffer. Returns `SendError::Full` only
    /// before anything was done (the packet is offered again later).
    pub fn handle_packet(
        &self,
        ch: &Arc<dyn NetChannel>,
        packet: &PacketView<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        self.shared.handle_packet(ch, packet, scratch)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let st = lock(&self.shared.st);
        NetStats {
            tx_frames: g(&c.tx_frames),
            tx_bytes: g(&c.tx_bytes),
            tx_dropped: g(&c.tx_dropped),
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            rx_dropped_no_buffer: g(&c.rx_dropped_no_buffer),
            rx_dropped_filter: g(&c.rx_dropped_filter),
            rx_dropped_link: g(&c.rx_dropped_link),
            rx_dropped_oversize: g(&c.rx_dropped_oversize),
            protocol_errors: g(&c.protocol_errors),
            control_messages: g(&c.control_messages),
            link_indications: g(&c.link_indications),
            control_dropped: g(&c.control_dropped),
            bogus_completions: g(&c.bogus_completions),
            version: st.version.and_then(|v| v.name()).map(str::to_owned),
            link_up: self.shared.effective_link(),
            rx_sections: st.rx.as_ref().map_or(0, |r| r.count),
            rx_sections_free: st.rx.as_ref().map_or(0, |r| r.free.len() as u32),
            rndis_ready: st.rndis_ready,
            packet_filter: st.filter,
        }
    }
}

/// What a guest request is answered with.
enum Reply {
    None,
    Nvsp(NvspMessage),
}

impl Shared {
    fn effective_link(&self) -> bool {
        self.admin_up.load(Ordering::SeqCst) && self.backend.link_up()
    }

    fn max_frame(&self) -> usize {
        self.cfg.mtu as usize + ETH_HEADER + 4
    }

    fn trace(&self, dir: Dir, relid: u32, kind: &str, name: &str, fields: serde_json::Value) {
        if let Some(t) = &self.cfg.trace {
            t.record(dir, kind, name, Some(relid), fields);
        }
    }

    fn trace_nvsp(&self, dir: Dir, relid: u32, tid: u64, bytes: &[u8]) {
        if self.cfg.trace.is_some() {
            let (name, v) = super::trace::decode_nvsp(bytes);
            let mut v = v;
            v["trans_id"] = json!(tid);
            v["nic"] = json!(self.cfg.name);
            self.trace(dir, relid, "nvsp", &name, v);
        }
    }

    fn trace_rndis(&self, dir: Dir, relid: u32, bytes: &[u8]) {
        if self.cfg.trace.is_some() {
            let (name, mut v) = super::trace::decode_rndis(bytes);
            v["nic"] = json!(self.cfg.name);
            self.trace(dir, relid, "rndis", &name, v);
        }
    }

    /// Tell the guest about a link change if RNDIS is up.
    fn update_link(&self) {
        let up = self.effective_link();
        let mut st = lock(&self.st);
        if st.told_link == up {
            return;
        }
        st.told_link = up;
        if !st.rndis_ready {
            return;
        }
        let status = if up {
            RndisStatus::MEDIA_CONNECT
        } else {
            RndisStatus::MEDIA_DISCONNECT
        };
        let mut buf = [0u8; 32];
        if let Ok(n) = rndis::build_indicate_status(&mut buf, status, &[]) {
            inc(&self.counters.link_indications);
            self.queue_control(&mut st, buf[..n].to_vec());
        }
    }

    /// The guest tore down a buffer's GPADL without revoking the buffer:
    /// drop the buffer (nothing more goes into or comes out of those pages)
    /// and count it as a protocol error.
    fn buffer_torn_down(&self, st: &mut State, which: &str) {
        inc(&self.counters.protocol_errors);
        tracing::warn!(
            nic = %self.cfg.name,
            which,
            "netvsp: the guest tore down the {which} buffer's GPADL without revoking the buffer first; buffer dropped"
        );
        if which == "receive" {
            st.rx = None;
            st.control_queue.clear();
        } else {
            st.tx = None;
        }
    }

    /// Send (or queue) an RNDIS control message to the guest.
    fn queue_control(&self, st: &mut State, msg: Vec<u8>) {
        if st.control_queue.len() >= MAX_QUEUED_CONTROL {
            inc(&self.counters.control_dropped);
            tracing::warn!(nic = %self.cfg.name, "netvsp: control queue full, reply dropped");
            return;
        }
        st.control_queue.push_back(msg);
        self.flush_control(st);
    }

    /// Send queued control messages while sub-allocations are free.
    fn flush_control(&self, st: &mut State) {
        while let Some(msg) = st.control_queue.front() {
            let msg = msg.clone();
            match self.send_rx(st, &[&msg], nvsp::channel_type::CONTROL, 0) {
                Ok(()) => {
                    st.control_queue.pop_front();
                }
                Err(RxError::NoBuffer) | Err(RxError::RingFull) => return,
                Err(_) => {
                    inc(&self.counters.control_dropped);
                    st.control_queue.pop_front();
                }
            }
        }
    }

    /// Copy an RNDIS message (`parts` concatenated) into a free receive
    /// sub-allocation and send the transfer-page packet. `reserve` is ring
    /// room to leave free.
    fn send_rx(
        &self,
        st: &mut State,
        parts: &[&[u8]],
        channel_type: u32,
        reserve: usize,
    ) -> Result<(), RxError> {
        let (Some(ch), Some(mem)) = (st.chan.clone(), st.mem.as_ref()) else {
            return Err(RxError::NoChannel);
        };
        let rx = st.rx.as_mut().ok_or(RxError::NoBuffer)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > rx.section_size as usize {
            return Err(RxError::TooBig);
        }
        let payload = NvspMessage::send_rndis_packet(channel_type, None);
        let mut ext = [0u8; 16];
        let range_hdr = XferPageHeader {
            xfer_pageset_id: rx.id,
            sender_owns_set: 0,
            reserved: 0,
            range_count: 1,
        };
        ext[..8].copy_from_slice(range_hdr.as_bytes());
        if reserve > 0 {
            let need = 16 + ext.len() + payload.as_bytes().len() + 8 + reserve;
            if ch.free_space().map_err(|_| RxError::NoChannel)? < need {
                return Err(RxError::RingFull);
            }
        }
        let section = rx.free.pop().ok_or(RxError::NoBuffer)?;
        let offset = u64::from(section) * u64::from(rx.section_size);
        let written = rx.lease.with(|| {
            let mut at = offset;
            parts.iter().all(|p| {
                let ok = rx.gpadl.write(mem, at, p);
                at += p.len() as u64;
                ok
            })
        });
        match written {
            Some(true) => {}
            Some(false) => {
                rx.free.push(section);
                return Err(RxError::Memory);
            }
            None => {
                self.buffer_torn_down(st, "receive");
                return Err(RxError::TornDown);
            }
        }
        let range = TransferPageRange {
            byte_count: len as u32,
            byte_offset: offset as u32,
        };
        ext[8..].copy_from_slice(range.as_bytes());
        let body = [payload.as_bytes()];
        let p = OutgoingPacket {
            packet_type: PacketType::DATA_USING_XFER_PAGES,
            flags: PacketFlags::new().with_completion_requested(true),
            transaction_id: RX_TID_BASE + u64::from(section),
            extension: &ext,
            payload: &body,
        };
        match ch.send(&p) {
            Ok(()) => {
                rx.in_use[section as usize] = true;
                Ok(())
            }
            Err(e) => {
                rx.free.push(section);
                Err(match e {
                    SendError::Full { .. } => RxError::RingFull,
                    _ => RxError::NoChannel,
                })
            }
        }
    }

    /// A frame from the backend.
    fn deliver(&self, frame: &[u8]) {
        let c = &self.counters;
        if !self.effective_link() {
            inc(&c.rx_dropped_link);
            return;
        }
        if frame.len() < ETH_HEADER || frame.len() > self.max_frame() {
            inc(&c.rx_dropped_oversize);
            return;
        }
        let mut st = lock(&self.st);
        if !st.rndis_ready || !accepts(st.filter, self.cfg.mac, frame) {
            inc(&c.rx_dropped_filter);
            return;
        }
        let mut hdr = [0u8; rndis::PACKET_HEADER_SIZE];
        if rndis::build_packet_header(&mut hdr, &[], frame.len()).is_err() {
            inc(&c.rx_dropped_oversize);
            return;
        }
        match self.send_rx(
            &mut st,
            &[&hdr, frame],
            nvsp::channel_type::DATA,
            COMPLETION_RESERVE,
        ) {
            Ok(()) => {
                inc(&c.rx_frames);
                c.rx_bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
            }
            Err(_) => inc(&c.rx_dropped_no_buffer),
        }
    }

    /// The guest completed a transfer-page packet: free its sub-allocation.
    fn rx_completion(&self, tid: u64) {
        let mut st = lock(&self.st);
        let ok = match st.rx.as_mut() {
            Some(rx) => match tid.checked_sub(RX_TID_BASE) {
                Some(i) if i < u64::from(rx.count) && rx.in_use[i as usize] => {
                    rx.in_use[i as usize] = false;
                    rx.free.push(i as u32);
                    true
                }
                _ => false,
            },
            None => false,
        };
        if !ok {
            inc(&self.counters.bogus_completions);
            return;
        }
        if !st.control_queue.is_empty() {
            self.flush_control(&mut st);
        }
    }

    fn handle_packet(
        &self,
        ch: &Arc<dyn NetChannel>,
        packet: &PacketView<'_>,
        scratch: &mut Vec<u8>,
    ) -> Result<(), SendError> {
        let tid = packet.transaction_id();
        let t = packet.packet_type();
        if t == PacketType::COMPLETION {
            self.rx_completion(tid);
            return Ok(());
        }
        if t != PacketType::DATA_INBAND && t != PacketType::DATA_USING_GPA_DIRECT {
            tracing::debug!(nic = %self.cfg.name, kind = ?t, "netvsp ignores packet");
            inc(&self.counters.protocol_errors);
            return Ok(());
        }
        let wants_completion = packet.descriptor().completion_requested();
        // Room for the completion first, so that nothing is done twice when
        // the server offers this packet again.
        if wants_completion && ch.free_space()? < 128 {
            return Err(SendError::Full { needed: 128 });
        }
        let relid = ch.relid();
        self.trace_nvsp(Dir::GuestToHost, relid, tid, packet.payload());
        let reply = match nvsp::parse(packet.payload()) {
            Ok(msg) => self.nvsp_request(ch, packet, msg, scratch),
            Err(e) => {
                tracing::warn!(nic = %self.cfg.name, error = %e, "netvsp: malformed NVSP message");
                inc(&self.counters.protocol_errors);
                failure_for(packet.payload())
            }
        };
        if let Reply::Nvsp(m) = reply {
            if wants_completion {
                self.trace_nvsp(Dir::HostToGuest, relid, tid, m.as_bytes());
                let body = [m.as_bytes()];
                match ch.send(&OutgoingPacket::completion(tid, &body)) {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(nic = %self.cfg.name, error = %e, "netvsp: completion lost");
                    }
                }
            }
        }
        Ok(())
    }

    fn nvsp_request(
        &self,
        ch: &Arc<dyn NetChannel>,
        packet: &PacketView<'_>,
        msg: nvsp::Message<'_>,
        scratch: &mut Vec<u8>,
    ) -> Reply {
        use nvsp::Message as M;
        let c = &self.counters;
        let fail = |m: NvspMessage| {
            inc(&c.protocol_errors);
            Reply::Nvsp(m)
        };
        match msg {
            M::Init(i) => {
                let want = i.max_protocol_version;
                let pick = SUPPORTED_VERSIONS
                    .iter()
                    .copied()
                    .find(|v| v.0 <= want.0 && v.0 >= i.min_protocol_version.0);
                let mut st = lock(&self.st);
                match pick {
                    Some(v) => {
                        // A new negotiation starts the device over.
                        let chan = st.chan.clone();
                        let mem = st.mem.clone();
                        let told = st.told_link;
                        *st = State {
                            chan,
                            mem,
                            told_link: told,
                            version: Some(v),
                            ..State::default()
                        };
                        tracing::info!(nic = %self.cfg.name, version = ?v.name(), "netvsp: NVSP version accepted");
                        Reply::Nvsp(NvspMessage::init_complete(v, Status::SUCCESS))
                    }
                    None => Reply::Nvsp(NvspMessage::init_complete(want, Status::FAIL)),
                }
            }
            M::SendNdisVersion(v) => {
                lock(&self.st).ndis_version = Some((v.ndis_major, v.ndis_minor));
                Reply::None
            }
            M::SendNdisConfig(cfg) => {
                lock(&self.st).guest_mtu = Some(cfg.mtu);
                Reply::None
            }
            M::SendReceiveBuffer(b) => {
                let r = self.set_receive_buffer(ch, b.gpadl_handle, b.id);
                match r {
                    Ok(sec) => Reply::Nvsp(NvspMessage::send_receive_buffer_complete(
                        Status::SUCCESS,
                        Some(sec),
                    )),
                    Err(why) => {
                        tracing::warn!(nic = %self.cfg.name, why, "netvsp: receive buffer refused");
                        fail(NvspMessage::send_receive_buffer_complete(
                            Status::FAIL,
                            None,
                        ))
                    }
                }
            }
            M::SendSendBuffer(b) => match self.set_send_buffer(ch, b.gpadl_handle, b.id) {
                Ok(()) => Reply::Nvsp(NvspMessage::send_send_buffer_complete(
                    Status::SUCCESS,
                    SEND_SECTION_SIZE,
                )),
                Err(why) => {
                    tracing::warn!(nic = %self.cfg.name, why, "netvsp: send buffer refused");
                    fail(NvspMessage::send_send_buffer_complete(Status::FAIL, 0))
                }
            },
            M::RevokeReceiveBuffer(b) => {
                let mut st = lock(&self.st);
                if st.rx.as_ref().is_some_and(|r| r.id == b.id) {
                    st.rx = None;
                    st.control_queue.clear();
                } else {
                    inc(&c.protocol_errors);
                }
                Reply::None
            }
            M::RevokeSendBuffer(b) => {
                let mut st = lock(&self.st);
                if st.tx.as_ref().is_some_and(|r| r.id == b.id) {
                    st.tx = None;
                } else {
                    inc(&c.protocol_errors);
                }
                Reply::None
            }
            M::SendRndisPacket(p) => {
                let status = self.rndis_from_guest(packet, p, scratch);
                if status != Status::SUCCESS {
                    inc(&c.protocol_errors);
                }
                Reply::Nvsp(NvspMessage::send_rndis_packet_complete(status))
            }
            M::Subchannel(r) => {
                // Sub-channels are not offered (RSS capabilities are not
                // either, so Linux does not ask): 0 allocated.
                let v5 = lock(&self.st)
                    .version
                    .is_some_and(|v| v.0 >= ProtocolVersion::V5.0);
                if v5 && r.op == nvsp::subchannel_op::ALLOCATE {
                    Reply::Nvsp(NvspMessage::subchannel_complete(Status::SUCCESS, 0))
                } else {
                    fail(NvspMessage::subchannel_complete(Status::FAIL, 0))
                }
            }
            M::SwitchDataPath(_) | M::SendVfAssociation(_) => Reply::None,
            other => {
                tracing::debug!(nic = %self.cfg.name, msg_type = ?other.msg_type(), "netvsp: unexpected NVSP message");
                inc(&c.protocol_errors);
                Reply::Nvsp(NvspMessage::send_rndis_packet_complete(Status::FAIL))
            }
        }
    }

    fn set_receive_buffer(
        &self,
        ch: &Arc<dyn NetChannel>,
        handle: u32,
        id: u16,
    ) -> Result<ReceiveBufferSection, &'static str> {
        let mut st = lock(&self.st);
        if st.version.is_none() {
            return Err("before NVSP INIT");
        }
        if st.rx.is_some() {
            return Err("a receive buffer is already set");
        }
        let (g, lease) = ch
            .gpadl_leased(handle)
            .ok_or("no such GPADL on this channel")?;
        let size = rx_section_size(self.cfg.mtu);
        let count = (g.byte_len() / u64::from(size)).min(u64::from(MAX_RX_SECTIONS)) as u32;
        if count == 0 {
            return Err("buffer smaller than one sub-allocation");
        }
        st.rx = Some(RecvBuf {
            gpadl: Arc::new(g),
            lease,
            id,
            section_size: size,
            count,
            // Popped from the end: hand out low sections first.
            free: (0..count).rev().collect(),
            in_use: vec![false; count as usize],
        });
        Ok(ReceiveBufferSection {
            offset: 0,
            sub_alloc_size: size,
            num_sub_allocs: count,
            end_offset: count * size,
        })
    }

    fn set_send_buffer(
        &self,
        ch: &Arc<dyn NetChannel>,
        handle: u32,
        id: u16,
    ) -> Result<(), &'static str> {
        let mut st = lock(&self.st);
        if st.version.is_none() {
            return Err("before NVSP INIT");
        }
        if st.tx.is_some() {
            return Err("a send buffer is already set");
        }
        let (g, lease) = ch
            .gpadl_leased(handle)
            .ok_or("no such GPADL on this channel")?;
        let count = (g.byte_len() / u64::from(SEND_SECTION_SIZE)).min(u64::from(u32::MAX)) as u32;
        if count == 0 {
            return Err("buffer smaller than one section");
        }
        st.tx = Some(SendBuf {
            gpadl: Arc::new(g),
            lease,
            id,
            count,
        });
        Ok(())
    }

    /// SEND_RNDIS_PACKET: gather the RNDIS bytes (send-buffer section, then
    /// GPA-direct ranges) and handle every message in them.
    fn rndis_from_guest(
        &self,
        packet: &PacketView<'_>,
        p: nvsp::SendRndisPacket,
        scratch: &mut Vec<u8>,
    ) -> Status {
        let (tx, mem) = {
            let st = lock(&self.st);
            if st.version.is_none() {
                return Status::FAIL;
            }
            (
                st.tx
                    .as_ref()
                    .map(|t| (Arc::clone(&t.gpadl), t.lease.clone(), t.count)),
                st.mem.clone(),
            )
        };
        let Some(mem) = mem else {
            return Status::FAIL;
        };
        scratch.clear();
        if p.send_buffer_section_index != nvsp::NO_SECTION {
            let Some((g, lease, count)) = tx else {
                return Status::FAIL;
            };
            let len = p.send_buffer_section_size;
            if p.send_buffer_section_index >= count || len > SEND_SECTION_SIZE || len == 0 {
                return Status::FAIL;
            }
            scratch.resize(len as usize, 0);
            let off = u64::from(p.send_buffer_section_index) * u64::from(SEND_SECTION_SIZE);
            match lease.with(|| g.read(&mem, off, scratch)) {
                Some(true) => {}
                Some(false) => return Status::FAIL,
                None => {
                    let mut st = lock(&self.st);
                    // Only if it is still that buffer (a new one may be set).
                    if st.tx.as_ref().is_some_and(|t| Arc::ptr_eq(&t.gpadl, &g)) {
                        self.buffer_torn_down(&mut st, "send");
                    }
                    return Status::FAIL;
                }
            }
        }
        if packet.packet_type() == PacketType::DATA_USING_GPA_DIRECT {
            let room = MAX_SEND_BYTES - scratch.len() as u64;
            let buf = match DataBuffer::from_packet(packet, &mem, room) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(nic = %self.cfg.name, error = %e, "netvsp: bad GPA-direct ranges");
                    return Status::FAIL;
                }
            };
            for s in buf.segments() {
                let start = scratch.len();
                scratch.resize(start + s.len as usize, 0);
                if mem
                    .read_slice(&mut scratch[start..], GuestAddress(s.gpa))
                    .is_err()
                {
                    return Status::FAIL;
                }
            }
        }
        if scratch.is_empty() {
            return Status::FAIL;
        }
        let mut rest: &[u8] = scratch;
        let mut status = Status::SUCCESS;
        let mut n = 0;
        while !rest.is_empty() {
            let (msg, tail) = match rndis::split_message(rest) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(nic = %self.cfg.name, error = %e, "netvsp: bad RNDIS message");
                    return Status::INVALID_RNDIS_PACKET;
                }
            };
            n += 1;
            if n > MAX_PACKETS_PER_MESSAGE as usize * 8 {
                return Status::INVALID_RNDIS_PACKET;
            }
            if !self.rndis_message(msg) {
                status = Status::INVALID_RNDIS_PACKET;
            }
            // Padding to the alignment is part of msg_len; a tail shorter
            // than a header is padding the guest did not count.
            rest = if tail.len() < rndis::HEADER_SIZE || tail.iter().all(|&b| b == 0) {
                &[]
            } else {
                tail
            };
        }
        status
    }

    /// One RNDIS message from the guest; false if it was malformed.
    fn rndis_message(&self, msg: &[u8]) -> bool {
        use rndis::Message as R;
        let parsed = match rndis::parse(msg) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(nic = %self.cfg.name, error = %e, "netvsp: malformed RNDIS message");
                return false;
            }
        };
        if let R::Packet(p) = parsed {
            return self.transmit(&p);
        }
        inc(&self.counters.control_messages);
        let mut st = lock(&self.st);
        let relid = st.chan.as_ref().map_or(0, |c| c.relid());
        self.trace_rndis(Dir::GuestToHost, relid, msg);
        let mut out = vec![0u8; 256];
        let built = match parsed {
            R::Initialize(req) => {
                st.rndis_ready = true;
                st.told_link = self.effective_link();
                let body = rndis::InitializeComplete {
                    request_id: req.request_id,
                    status: RndisStatus::SUCCESS,
                    major_version: rndis::MAJOR_VERSION,
                    minor_version: rndis::MINOR_VERSION,
                    device_flags: rndis::DF_CONNECTIONLESS,
                    medium: rndis::MEDIUM_802_3,
                    max_packets_per_message: MAX_PACKETS_PER_MESSAGE,
                    max_transfer_size: 0xEFFF_FFFF,
                    packet_alignment_factor: PACKET_ALIGNMENT_FACTOR,
                    af_list_offset: 0,
                    af_list_size: 0,
                };
                rndis::build_initialize_complete(&mut out, &body)
            }
            R::Query(q, info) => {
                let (status, data) = self.query(&st, q.oid, info);
                rndis::build_query_complete(&mut out, q.request_id, status, &data)
            }
            R::Set(q, data) => {
                let status = self.set(&mut st, q.oid, data);
                rndis::build_set_complete(&mut out, q.request_id, status)
            }
            R::Keepalive(k) => {
                rndis::build_keepalive_complete(&mut out, k.request_id, RndisStatus::SUCCESS)
            }
            R::Reset(_) => {
                st.filter = 0;
                rndis::build_reset_complete(&mut out, RndisStatus::SUCCESS, false)
            }
            R::Halt(_) => {
                st.rndis_ready = false;
                st.filter = 0;
                return true;
            }
            other => {
                tracing::debug!(nic = %self.cfg.name, msg = ?other, "netvsp: unexpected RNDIS message");
                return false;
            }
        };
        match built {
            Ok(n) => {
                out.truncate(n);
                self.trace_rndis(Dir::HostToGuest, relid, &out);
                self.queue_control(&mut st, out);
                true
            }
            Err(_) => false,
        }
    }

    /// QUERY: (status, data).
    fn query(&self, st: &State, oid: Oid, info: &[u8]) -> (RndisStatus, Vec<u8>) {
        let u32v = |v: u32| (RndisStatus::SUCCESS, v.to_le_bytes().to_vec());
        match oid {
            Oid::GEN_MAXIMUM_FRAME_SIZE => u32v(self.cfg.mtu),
            Oid::GEN_MAXIMUM_TOTAL_SIZE => u32v(self.cfg.mtu + ETH_HEADER as u32),
            Oid::GEN_LINK_SPEED => u32v(LINK_SPEED_100BPS),
            Oid::GEN_MEDIA_CONNECT_STATUS => u32v(if self.effective_link() {
                rndis::media_state::CONNECTED
            } else {
                rndis::media_state::DISCONNECTED
            }),
            Oid::GEN_CURRENT_PACKET_FILTER => u32v(st.filter),
            Oid::ETH_802_3_PERMANENT_ADDRESS | Oid::ETH_802_3_CURRENT_ADDRESS => {
                let mac = lock(&self.mac_lie).unwrap_or(self.cfg.mac);
                (RndisStatus::SUCCESS, mac.0.to_vec())
            }
            Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES => {
                let b = offload_capabilities(info, st.version);
                (RndisStatus::SUCCESS, b)
            }
            _ => (RndisStatus::NOT_SUPPORTED, Vec::new()),
        }
    }

    /// SET: status.
    fn set(&self, st: &mut State, oid: Oid, data: &[u8]) -> RndisStatus {
        match oid {
            Oid::GEN_CURRENT_PACKET_FILTER => match data.get(..4) {
                Some(b) if data.len() == 4 => {
                    st.filter = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    RndisStatus::SUCCESS
                }
                _ => RndisStatus::INVALID_LENGTH,
            },
            Oid::TCP_OFFLOAD_PARAMETERS => {
                if NdisOffloadParameters::parse(data).is_ok() {
                    RndisStatus::SUCCESS
                } else {
                    RndisStatus::INVALID_DATA
                }
            }
            Oid::ETH_802_3_MULTICAST_LIST => {
                if data.len().is_multiple_of(6) {
                    RndisStatus::SUCCESS
                } else {
                    RndisStatus::INVALID_LENGTH
                }
            }
            // "NetworkAddress" and friends: accepted, the MAC stays the
            // configured one (the switch learns whatever the guest uses).
            Oid::GEN_RNDIS_CONFIG_PARAMETER => RndisStatus::SUCCESS,
            _ => RndisStatus::NOT_SUPPORTED,
        }
    }

    /// A guest PACKET: the frame to the backend. False if malformed.
    fn transmit(&self, p: &rndis::Packet<'_>) -> bool {
        let c = &self.counters;
        if !p.ppis_valid() {
            inc(&c.tx_dropped);
            return false;
        }
        let ready = lock(&self.st).rndis_ready;
        let frame = p.data;
        if !ready || frame.len() < ETH_HEADER || frame.len() > self.max_frame() {
            inc(&c.tx_dropped);
            return false;
        }
        if !self.effective_link() {
            inc(&c.tx_dropped);
            return true;
        }
        let tagged;
        let out: &[u8] = match p.ppi_u32(rndis::PpiType::IEEE_8021Q) {
            // pri 2:0, cfi 3, vlan id 15:4 (fact sheet §9.5) -> TCI.
            Some(v) if v & 0xFFF0 != 0 || v & 0x7 != 0 => {
                let tci =
                    ((v & 0x7) << 13) as u16 | ((v & 0x8) << 9) as u16 | ((v >> 4) & 0xFFF) as u16;
                let mut f = Vec::with_capacity(frame.len() + 4);
                f.extend_from_slice(&frame[..12]);
                f.extend_from_slice(&[0x81, 0x00]);
                f.extend_from_slice(&tci.to_be_bytes());
                f.extend_from_slice(&frame[12..]);
                tagged = f;
                &tagged
            }
            _ => frame,
        };
        match self.backend.send(out) {
            Ok(()) => {
                inc(&c.tx_frames);
                c.tx_bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                inc(&c.tx_dropped);
                tracing::trace!(nic = %self.cfg.name, error = %e, "netvsp: frame dropped by backend");
            }
        }
        true
    }
}

#[derive(Debug)]
enum RxError {
    /// The receive buffer's GPADL was torn down (the buffer is dropped).
    TornDown,
    NoChannel,
    NoBuffer,
    RingFull,
    TooBig,
    Memory,
}

/// Whether the packet filter lets `frame` in.
fn accepts(filter: u32, mac: MacAddr, frame: &[u8]) -> bool {
    use rndis::packet_filter as f;
    let Some(dst) = MacAddr::dst_of(frame) else {
        return false;
    };
    if filter & f::PROMISCUOUS != 0 {
        return true;
    }
    if dst == MacAddr::BROADCAST {
        return filter & f::BROADCAST != 0;
    }
    if dst.is_multicast() {
        return filter & (f::ALL_MULTICAST | f::MULTICAST) != 0;
    }
    dst == mac && filter & f::DIRECTED != 0
}

/// The reply to OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: no offloads (the
/// guest checksums and segments itself), in the revision the guest's
/// pre-filled header asks for, else the one Linux uses for the NVSP
/// version (v5+: 3, v4: 2, older: 1), so the size never exceeds its buffer.
fn offload_capabilities(info: &[u8], version: Option<ProtocolVersion>) -> Vec<u8> {
    let by_version = match version {
        Some(v) if v.0 >= ProtocolVersion::V5.0 => 3,
        Some(v) if v.0 >= ProtocolVersion::V4.0 => 2,
        _ => 1,
    };
    let rev = match info {
        [t, r, ..] if *t == NDIS_OBJECT_TYPE_OFFLOAD && *r >= 1 => (*r).min(3),
        _ => by_version,
    };
    let mut o = NdisOffload::empty();
    o.header = NdisOffload::query_header(rev);
    let n = usize::from(o.header.size);
    o.as_bytes()[..n].to_vec()
}

/// The failure completion for a message that did not parse, by its type.
fn failure_for(bytes: &[u8]) -> Reply {
    let t = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0);
    Reply::Nvsp(match nvsp::MessageType(t) {
        nvsp::MessageType::INIT => NvspMessage::init_complete(ProtocolVersion(0), Status::FAIL),
        nvsp::MessageType::SEND_RECEIVE_BUFFER => {
            NvspMessage::send_receive_buffer_complete(Status::FAIL, None)
        }
        nvsp::MessageType::SEND_SEND_BUFFER => {
            NvspMessage::send_send_buffer_complete(Status::FAIL, 0)
        }
        nvsp::MessageType::SUBCHANNEL => NvspMessage::subchannel_complete(Status::FAIL, 0),
        _ => NvspMessage::send_rndis_packet_complete(Status::FAIL),
    })
}

/// The VMBus device of a NIC.
struct NetVsp {
    nic: Arc<Nic>,
    scratch: Vec<u8>,
}

impl Vsp for NetVsp {
    fn name(&self) -> &str {
        "netvsp"
    }

    fn class_id(&self) -> Guid {
        NET_CLASS_ID
    }

    fn instance_id(&self) -> Guid {
        self.nic.shared.cfg.instance_id
    }

    fn on_open(&mut self, ch: &ChannelHandle, _user_data: &[u8]) -> Result<(), OpenRefused> {
        if ch.memory().is_none() {
            return Err(OpenRefused("no guest memory".into()));
        }
        self.nic.attach(Arc::new(ch.clone()));
        Ok(())
    }

    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError> {
        let chan = lock(&self.nic.shared.st).chan.clone();
        let Some(chan) = chan else {
            return Err(SendError::Closed);
        };
        let r = self.nic.handle_packet(&chan, packet, &mut self.scratch);
        let _ = ch;
        r
    }

    fn on_close(&mut self, _ch: &ChannelHandle) {
        self.nic.detach();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn ids_and_sizes() {
        assert_eq!(
            format!("{NET_CLASS_ID}"),
            "f8615163-df3e-46c5-913f-f2d2f965ed0e"
        );
        assert_eq!(
            format!("{}", net_instance_id(0x102)),
            "9f8e2c41-5b7a-4e63-a1d0-6e6574000102"
        );
        let s = rx_section_size(1500);
        assert!(s >= RX_HEADROOM + 1518 && s.is_multiple_of(64), "{s}");
        assert!(s >= nvsp::MIN_SECTION_SIZE);
    }

    #[test]
    fn filter() {
        use rndis::packet_filter as f;
        let me = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut fr = [0u8; 14];
        fr[..6].copy_from_slice(&me.0);
        assert!(accepts(f::DIRECTED, me, &fr));
        assert!(!accepts(f::BROADCAST, me, &fr));
        fr[..6].copy_from_slice(&[0xFF; 6]);
        assert!(accepts(f::BROADCAST, me, &fr));
        assert!(!accepts(f::DIRECTED, me, &fr));
        fr[..6].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1]);
        assert!(accepts(f::ALL_MULTICAST, me, &fr));
        fr[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(!accepts(f::LINUX_DEFAULT, me, &fr));
        assert!(accepts(f::PROMISCUOUS, me, &fr));
        assert!(!accepts(0, me, &fr));
    }
}
