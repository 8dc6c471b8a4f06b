//! The VMBus server's core: control messages (fact sheet §5), channel
//! lifecycle, and the worker thread that drains guest->host rings.
//!
//! Locks, in the order they may nest: `state` (control plane; VSP
//! `on_open`/`on_close` run under it), a channel's `vsp`, its `incoming`,
//! its `outgoing`; `gpadls`, `stats`, `backlog`, `work`, `blocked` and
//! `ports` are leaves (nothing else is taken while one is held). The worker
//! never takes `state` while it holds a channel lock, and device requests
//! that need `state` (rescind, hot-add) go through the work queue.

use super::channel::{ChannelHandle, ChannelRt, InRing};
use super::gpadl::{GpadlTable, Progress};
use super::ring::HostRings;
use super::stats::{bump, VmbusStats};
use super::trace::{hex_preview, Dir, TraceWriter};
use super::vsp::{OfferParams, SendError, Vsp};
use super::VmbusError;
use crate::hv::{HvError, HvStatus, Hypervisor, MessageFromGuest, SINT_COUNT};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;
use vmbus_guest::guid::Guid;
use vmbus_guest::message::{
    connection_state, ChannelMessage, ChannelMessageType, GpadlCreated, GpadlTorndown, MessageBuf,
    ModifyChannelResponse, OfferChannel, OpenResult, RescindChannelOffer, VersionResponse,
    MAX_RELID,
};
use vmbus_guest::packet::{PacketView, MAX_PACKET_SIZE};
use vmbus_guest::ring::{OutgoingPacket, RingError};
use vmbus_guest::version::{MESSAGE_CONNECTION_ID_4, VMBUS_SINT};
use vmbus_guest::Version;

/// SynIC message type of VMBus control messages (fact sheet §4.1).
pub const VMBUS_MESSAGE_TYPE: u32 = 1;
/// The msg_conn_id returned to 5.x guests (we listen on it anyway).
pub const MSG_CONN_ID: u32 = MESSAGE_CONNECTION_ID_4;
/// Failure status in OpenResult / GpadlCreated / ModifyChannelResponse
/// (STATUS_UNSUCCESSFUL; Linux only tests for non-zero).
pub const STATUS_FAILURE: u32 = 0xC000_0001;
/// Base of the per-channel event connection ids: `relid | (SINT 2 << 12)`,
/// as openvmm does (fact sheet §5.7), e.g. 0x2005 for relid 5.
pub const EVENT_CONNECTION_BASE: u32 = (VMBUS_SINT as u32) << 12;
/// Host messages that may wait for room in the SynIC queue before more are
/// dropped.
const MAX_BACKLOG: usize = 4096;
/// Packets processed per channel before other work gets a turn.
const BATCH: usize = 256;
/// Dropped guest messages logged at warn level before switching to debug.
const WARN_LIMIT: u64 = 100;
/// How often the worker retries blocked channels and the message backlog.
const POLL: Duration = Duration::from_millis(1);

/// Poison-tolerant lock (a panicking device must not take the server down).
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The event connection id of channel `relid`.
pub const fn event_connection_id(relid: u32) -> u32 {
    EVENT_CONNECTION_BASE | relid
}

/// Work for the worker thread.
pub(crate) enum Work {
    /// Drain the channel's guest->host ring.
    Channel(u32),
    /// Rescind the channel (device request).
    Rescind(u32),
    /// Offer a new device (device request).
    AddDevice(Box<dyn Vsp>),
    /// Offer a sub-channel of a primary channel (device request).
    AddSubchannel(u32, Box<dyn Vsp>),
}

#[derive(Default)]
struct WorkQueue {
    items: VecDeque<Work>,
    queued: HashSet<u32>,
    stop: bool,
}

/// The guest's connection after an accepted InitiateContact.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub version: Version,
    /// VP and SINT that receive control messages.
    pub vp: u32,
    pub sint: u8,
    pub offers_requested: bool,
    /// Monitor pages from InitiateContact: accepted, recorded, never used
    /// (offers have monitor_allocated = 0).
    pub monitor_pages: [u64; 2],
}

#[derive(Debug, Clone, Copy)]
struct OpenState {
    ring_gpadl: u32,
}

pub(crate) struct Channel {
    pub rt: Arc<ChannelRt>,
    pub class_id: Guid,
    pub instance_id: Guid,
    params: OfferParams,
    /// 0 for a device's primary channel; for a sub-channel its index and
    /// primary relid.
    sub_index: u16,
    primary: Option<u32>,
    /// The offer was sent in the current connection.
    offered: bool,
    /// RescindChannelOffer was sent; waiting for RelIdReleased.
    rescinded: bool,
    open: Option<OpenState>,
}

#[derive(Default)]
pub(crate) struct State {
    pub conn: Option<Connection>,
    pub channels: BTreeMap<u32, Channel>,
    /// Ring GPADLs the guest tore down while their channel was open: the
    /// GpadlTorndown goes out when the channel closes.
    deferred_teardown: HashSet<u32>,
}

/// Public view of one channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelInfo {
    /// Channel id.
    pub relid: u32,
    /// HvSignalEvent connection id of the channel.
    pub connection_id: u32,
    /// Device name.
    pub device: String,
    /// Class GUID (text).
    pub class_id: String,
    /// Instance GUID (text).
    pub instance_id: String,
    /// Offered in the current connection.
    pub offered: bool,
    /// Open.
    pub open: bool,
    /// Rescinded, waiting for RelIdReleased.
    pub rescinded: bool,
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
    /// A sub-channel's primary relid.
    pub primary: Option<u32>,
}

pub(crate) struct Inner {
    pub hv: Arc<Hypervisor>,
    pub mem: GuestMemoryMmap,
    pub vp_count: u32,
    pub trace: Option<Arc<TraceWriter>>,
    pub state: Mutex<State>,
    pub gpadls: Mutex<GpadlTable>,
    pub stats: Mutex<VmbusStats>,
    backlog: Mutex<VecDeque<(u32, u8, MessageBuf)>>,
    work: Mutex<WorkQueue>,
    work_cv: Condvar,
    blocked: Mutex<HashSet<u32>>,
    ports: Mutex<HashSet<u32>>,
    pub shut_down: AtomicBool,
    me: Weak<Inner>,
}

fn guid_text(g: &Guid) -> String {
    format!("{g}")
}

impl Inner {
    pub fn new(hv: Arc<Hypervisor>, trace: Option<Arc<TraceWriter>>) -> Arc<Self> {
        let mem = hv.memory().clone();
        let vp_count = hv.config().vp_count;
        Arc::new_cyclic(|me| Self {
            hv,
            mem,
            vp_count,
            trace,
            state: Mutex::new(State::default()),
            gpadls: Mutex::new(GpadlTable::default()),
            stats: Mutex::new(VmbusStats::default()),
            backlog: Mutex::new(VecDeque::new()),
            work: Mutex::new(WorkQueue::default()),
            work_cv: Condvar::new(),
            blocked: Mutex::new(HashSet::new()),
            ports: Mutex::new(HashSet::new()),
            shut_down: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    // ---- work queue -------------------------------------------------------

    pub fn push_work(&self, w: Work) {
        let mut q = lock(&self.work);
        if let Work::Channel(relid) = &w {
            if !q.queued.insert(*relid) {
                return;
            }
        }
        q.items.push_back(w);
        drop(q);
        self.work_cv.notify_one();
    }

    fn wake(&self) {
        self.work_cv.notify_one();
    }

    pub fn stop_worker(&self) {
        lock(&self.work).stop = true;
        self.work_cv.notify_all();
    }

    /// The worker thread: channel drains, device requests, retries.
    pub fn worker(self: Arc<Self>) {
        let mut last_poll = Instant::now();
        loop {
            let item = {
                let mut q = lock(&self.work);
                loop {
                    if q.stop {
                        tracing::debug!("VMBus worker stopped");
                        return;
                    }
                    if let Some(w) = q.items.pop_front() {
                        if let Work::Channel(r) = &w {
                            q.queued.remove(r);
                        }
                        break Some(w);
                    }
                    let poll = !lock(&self.backlog).is_empty() || !lock(&self.blocked).is_empty();
                    if poll {
                        let (g, to) = self
                            .work_cv
                            .wait_timeout(q, POLL)
                            .unwrap_or_else(|e| e.into_inner());
                        q = g;
                        if to.timed_out() {
                            break None;
                        }
                    } else {
                        q = self.work_cv.wait(q).unwrap_or_else(|e| e.into_inner());
                    }
                }
            };
            match item {
                Some(Work::Channel(relid)) => self.process_channel(relid),
                Some(Work::Rescind(relid)) => {
                    if let Err(e) = self.rescind(relid) {
                        tracing::warn!(relid, error = %e, "device-requested rescind failed");
                    }
                }
                Some(Work::AddDevice(vsp)) => {
                    if let Err(e) = self.add_device(vsp) {
                        tracing::warn!(error = %e, "device-requested hot-add failed");
                    }
                }
                Some(Work::AddSubchannel(primary, vsp)) => {
                    if let Err(e) = self.add_subchannel(primary, vsp) {
                        tracing::warn!(primary, error = %e, "device-requested sub-channel failed");
                    }
                }
                None => {}
            }
            // Retries happen on time even while other work keeps arriving: a
            // guest that reads without honouring pending_send_sz still
            // unblocks its channel.
            if last_poll.elapsed() >= POLL {
                last_poll = Instant::now();
                let blocked: Vec<u32> = lock(&self.blocked).iter().copied().collect();
                for relid in blocked {
                    self.process_channel(relid);
                }
            }
            self.flush_backlog();
        }
    }

    // ---- host -> guest messages --------------------------------------------

    fn post(&self, vp: u32, sint: u8, msg: MessageBuf) {
        if let Ok(m) = msg.parse() {
            let name = type_name(m.msgtype());
            bump(&mut lock(&self.stats).messages_out, name);
            self.trace_message(Dir::HostToGuest, &m);
        }
        let mut q = lock(&self.backlog);
        if q.is_empty() {
            match self
                .hv
                .post_message(vp, sint, VMBUS_MESSAGE_TYPE, msg.as_bytes())
            {
                Ok(()) => return,
                Err(HvError::QueueFull { .. }) => {}
                Err(e) => {
                    tracing::warn!(vp, sint, error = %e, "VMBus message not posted");
                    return;
                }
            }
        }
        if q.len() >= MAX_BACKLOG {
            tracing::warn!(vp, "VMBus message backlog full; message dropped");
            return;
        }
        q.push_back((vp, sint, msg));
        drop(q);
        lock(&self.stats).messages_backlogged += 1;
        self.wake();
    }

    fn flush_backlog(&self) {
        let mut q = lock(&self.backlog);
        while let Some((vp, sint, m)) = q.front() {
            match self
                .hv
                .post_message(*vp, *sint, VMBUS_MESSAGE_TYPE, m.as_bytes())
            {
                Ok(()) => {}
                Err(HvError::QueueFull { .. }) => return,
                Err(e) => tracing::warn!(vp, error = %e, "backlogged VMBus message dropped"),
            }
            q.pop_front();
        }
    }

    fn post_conn(&self, conn: &Connection, msg: MessageBuf) {
        self.post(conn.vp, conn.sint, msg);
    }

    // ---- guest -> host messages --------------------------------------------

    fn reject(&self, why: &str, detail: &dyn std::fmt::Debug) {
        let n = {
            let mut s = lock(&self.stats);
            s.messages_rejected += 1;
            s.messages_rejected
        };
        // A hostile guest must not be able to flood the host's log.
        if n <= WARN_LIMIT {
            tracing::warn!(why, detail = ?detail, "VMBus message from the guest dropped");
            if n == WARN_LIMIT {
                tracing::warn!("further dropped VMBus messages are logged at debug level");
            }
        } else {
            tracing::debug!(why, detail = ?detail, "VMBus message from the guest dropped");
        }
    }

    /// Handler of the message connections (1, 4): runs on the posting
    /// vCPU's thread.
    pub fn handle_message(&self, m: &MessageFromGuest) -> HvStatus {
        if self.shut_down.load(Ordering::SeqCst) {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        if m.message_type != VMBUS_MESSAGE_TYPE {
            self.reject("SynIC message type is not VMBus (1)", &m.message_type);
            return HvStatus::SUCCESS;
        }
        let msg = match ChannelMessage::parse(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                if let Some(t) = &self.trace {
                    t.record(
                        Dir::GuestToHost,
                        "message",
                        "MALFORMED",
                        None,
                        json!({"error": format!("{e}"), "bytes": hex_preview(&m.payload, 240)}),
                    );
                }
                self.reject("malformed channel message", &e);
                return HvStatus::SUCCESS;
            }
        };
        bump(&mut lock(&self.stats).messages_in, type_name(msg.msgtype()));
        self.trace_message(Dir::GuestToHost, &msg);
        let mut st = lock(&self.state);
        self.dispatch(&mut st, m, msg);
        HvStatus::SUCCESS
    }

    fn dispatch(&self, st: &mut State, m: &MessageFromGuest, msg: ChannelMessage<'_>) {
        if let ChannelMessage::InitiateContact(ic) = msg {
            self.initiate_contact(st, m, &ic);
            return;
        }
        let Some(conn) = st.conn.clone() else {
            self.reject("message before InitiateContact", &msg.msgtype());
            return;
        };
        match msg {
            ChannelMessage::RequestOffers => self.request_offers(st),
            ChannelMessage::GpadlHeader { header, ranges } => {
                let relid = header.child_relid;
                if st
                    .channels
                    .get(&relid)
                    .is_none_or(|c| c.rescinded || !c.offered)
                {
                    self.reject("GPADL for a channel that is not offered", &relid);
                    self.gpadl_created(&conn, relid, header.gpadl, STATUS_FAILURE);
                    return;
                }
                let r = lock(&self.gpadls).header(
                    &self.mem,
                    relid,
                    header.gpadl,
                    header.range_buflen,
                    header.range_count,
                    ranges,
                );
                self.gpadl_progress(&conn, relid, header.gpadl, r);
            }
            ChannelMessage::GpadlBody { body, pfns } => {
                let r = lock(&self.gpadls).body(&self.mem, body.gpadl, pfns.as_bytes());
                match r {
                    Ok(p) => {
                        let relid = match p {
                            Progress::Created { relid } => relid,
                            Progress::NeedMore => 0,
                        };
                        self.gpadl_progress(&conn, relid, body.gpadl, Ok(p));
                    }
                    Err((Some(relid), e)) => {
                        self.gpadl_progress(&conn, relid, body.gpadl, Err(e));
                    }
                    Err((None, e)) => self.reject("GPADL body", &e),
                }
            }
            ChannelMessage::GpadlTeardown(t) => {
                self.gpadl_teardown(st, &conn, t.child_relid, t.gpadl)
            }
            ChannelMessage::OpenChannel(o) => self.open_channel(st, &conn, &o),
            ChannelMessage::CloseChannel(c) => {
                let relid = c.child_relid;
                match st.channels.get(&relid) {
                    Some(ch) if ch.open.is_some() => self.close_locked(st, relid),
                    // Linux closes a channel we rescinded (and closed) already.
                    Some(ch) if ch.rescinded => {}
                    _ => self.reject("CloseChannel of a channel that is not open", &relid),
                }
            }
            ChannelMessage::RelIdReleased(r) => {
                let relid = r.child_relid;
                if st.channels.get(&relid).is_some_and(|c| c.rescinded) {
                    self.close_locked(st, relid);
                    st.channels.remove(&relid);
                    lock(&self.gpadls).remove_channel(relid);
                    tracing::debug!(relid, "relid released");
                } else {
                    self.reject("RelIdReleased of a channel that was not rescinded", &relid);
                }
            }
            ChannelMessage::Unload => {
                self.disconnect(st);
                self.post_conn(
                    &conn,
                    MessageBuf::header_only(ChannelMessageType::UNLOAD_RESPONSE),
                );
            }
            ChannelMessage::ModifyChannel(mc) => {
                if !conn.version.supports_modify_channel() {
                    self.reject("ModifyChannel before protocol 4.1", &conn.version);
                    return;
                }
                let status = match st.channels.get(&mc.child_relid) {
                    Some(ch) if ch.open.is_some() && mc.target_vp < self.vp_count => {
                        ch.rt.target_vp.store(mc.target_vp, Ordering::SeqCst);
                        0
                    }
                    _ => {
                        tracing::warn!(
                            relid = mc.child_relid,
                            vp = mc.target_vp,
                            "ModifyChannel refused"
                        );
                        STATUS_FAILURE
                    }
                };
                if conn.version.has_modify_channel_response() {
                    let r = ModifyChannelResponse::new(mc.child_relid, status as i32);
                    self.post_conn(&conn, MessageBuf::fixed(&r));
                }
            }
            ChannelMessage::TlConnectRequest { .. } => {
                self.reject("hv_sock is not offered", &msg.msgtype());
            }
            ChannelMessage::OpenReservedChannel(_) | ChannelMessage::CloseReservedChannel(_) => {
                self.reject("reserved channels are not supported", &msg.msgtype());
            }
            other => self.reject(
                "host-to-guest message type from the guest",
                &other.msgtype(),
            ),
        }
    }

    fn initiate_contact(
        &self,
        st: &mut State,
        m: &MessageFromGuest,
        ic: &vmbus_guest::message::InitiateContact,
    ) {
        let v = ic.version_requested;
        let vp = if ic.target_vcpu < self.vp_count {
            ic.target_vcpu
        } else {
            m.vp
        };
        if st.conn.is_some() {
            tracing::warn!("InitiateContact while connected: dropping the old connection");
            self.disconnect(st);
        }
        let sint = if v.uses_msg_conn_id() {
            ic.msg_sint()
        } else {
            VMBUS_SINT
        };
        if Version::LINUX_ORDER.contains(&v) && usize::from(sint) < SINT_COUNT {
            let conn = Connection {
                version: v,
                vp,
                sint,
                offers_requested: false,
                monitor_pages: [ic.monitor_page1, ic.monitor_page2],
            };
            tracing::info!(version = %v, vp, sint, "VMBus connected");
            {
                let mut s = lock(&self.stats);
                s.version = Some(v.to_string());
                s.connected = true;
                s.connections += 1;
            }
            let conn_id = if v.uses_msg_conn_id() { MSG_CONN_ID } else { 0 };
            let r = VersionResponse::new(true, connection_state::SUCCESSFUL, conn_id);
            self.post_conn(&conn, MessageBuf::fixed(&r));
            st.conn = Some(conn);
        } else {
            tracing::info!(version = %v, sint, "VMBus version refused");
            let r = VersionResponse::new(false, connection_state::SUCCESSFUL, 0);
            self.post(vp, VMBUS_SINT, MessageBuf::fixed(&r));
        }
    }

    fn offer_message(relid: u32, ch: &Channel) -> MessageBuf {
        let mut o = OfferChannel::new(
            ch.class_id,
            ch.instance_id,
            relid,
            event_connection_id(relid),
            ch.sub_index,
        );
        o.chn_flags = ch.params.chn_flags;
        o.mmio_megabytes = ch.params.mmio_megabytes;
        o.user_defined = ch.params.user_defined;
        MessageBuf::fixed(&o)
    }

    fn request_offers(&self, st: &mut State) {
        let State { conn, channels, .. } = st;
        let Some(conn) = conn.as_mut() else { return };
        conn.offers_requested = true;
        let mut sent = 0;
        for (&relid, ch) in channels.iter_mut().filter(|(_, c)| !c.rescinded) {
            self.post_conn(conn, Self::offer_message(relid, ch));
            ch.offered = true;
            sent += 1;
        }
        lock(&self.stats).offers_sent += sent;
        self.post_conn(
            conn,
            MessageBuf::header_only(ChannelMessageType::ALL_OFFERS_DELIVERED),
        );
    }

    fn gpadl_created(&self, conn: &Connection, relid: u32, gpadl: u32, status: u32) {
        let mut s = lock(&self.stats);
        if status == 0 {
            s.gpadls_created += 1;
        } else {
            s.gpadls_refused += 1;
        }
        drop(s);
        let m = GpadlCreated::new(relid, gpadl, status);
        self.post_conn(conn, MessageBuf::fixed(&m));
    }

    fn gpadl_progress(
        &self,
        conn: &Connection,
        relid: u32,
        gpadl: u32,
        r: Result<Progress, super::gpadl::GpadlError>,
    ) {
        match r {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Created { relid }) => self.gpadl_created(conn, relid, gpadl, 0),
            Err(e) => {
                tracing::warn!(relid, gpadl, error = %e, "GPADL refused");
                self.gpadl_created(conn, relid, gpadl, STATUS_FAILURE);
            }
        }
    }

    fn gpadl_teardown(&self, st: &mut State, conn: &Connection, relid: u32, gpadl: u32) {
        let mut table = lock(&self.gpadls);
        let owner = table
            .get(gpadl)
            .map(|g| g.relid)
            .or_else(|| table.pending_relid(gpadl));
        match owner {
            Some(r) if r == relid => {}
            Some(_) => {
                drop(table);
                self.reject("GpadlTeardown names the wrong channel", &(relid, gpadl));
                return;
            }
            None => {
                drop(table);
                self.reject("GpadlTeardown of an unknown GPADL", &gpadl);
                return;
            }
        }
        let in_use = st
            .channels
            .values()
            .any(|c| c.open.is_some_and(|o| o.ring_gpadl == gpadl));
        if in_use {
            // Hyper-V finishes the teardown when the channel closes.
            st.deferred_teardown.insert(gpadl);
            tracing::debug!(
                relid,
                gpadl,
                "teardown of an open channel's ring GPADL deferred"
            );
            return;
        }
        if table.remove(gpadl).is_err() {
            table.remove_pending(gpadl);
        }
        drop(table);
        lock(&self.stats).gpadls_torn_down += 1;
        self.post_conn(conn, MessageBuf::fixed(&GpadlTorndown::new(gpadl)));
    }

    fn open_channel(
        &self,
        st: &mut State,
        conn: &Connection,
        o: &vmbus_guest::message::OpenChannel,
    ) {
        let relid = o.child_relid;
        let fail = |why: &str| {
            tracing::warn!(relid, why, "OpenChannel refused");
            let r = OpenResult::new(relid, o.open_id, STATUS_FAILURE);
            self.post_conn(conn, MessageBuf::fixed(&r));
        };
        let Some(ch) = st.channels.get_mut(&relid) else {
            return fail("no such channel");
        };
        if ch.rescinded {
            // Fact sheet §5.6: a late open of a rescinded channel is ignored.
            tracing::debug!(relid, "OpenChannel of a rescinded channel ignored");
            return;
        }
        if !ch.offered {
            return fail("channel was not offered");
        }
        if ch.open.is_some() {
            return fail("channel is already open");
        }
        let Some(gpadl) = lock(&self.gpadls).get(o.ring_gpadl).cloned() else {
            return fail("no such ring GPADL");
        };
        if gpadl.relid != relid {
            return fail("ring GPADL belongs to another channel");
        }
        let Some(pages) = gpadl.whole_pages() else {
            return fail("ring GPADL is not made of whole pages");
        };
        if o.target_vp >= self.vp_count {
            return fail("target VP does not exist");
        }
        let rings = match HostRings::new(&self.mem, &pages, o.downstream_ring_page_offset) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(relid, error = %e, "ring unusable");
                return fail("bad ring offsets or ring header");
            }
        };
        let rt = Arc::clone(&ch.rt);
        let generation = rt.install(rings, o.target_vp, conn.sint);
        let handle = ChannelHandle {
            server: self.me.clone(),
            rt: Arc::clone(&rt),
            generation,
        };
        if let Err(e) = lock(&rt.vsp).on_open(&handle, &o.user_data) {
            rt.uninstall();
            return fail(&e.to_string());
        }
        ch.open = Some(OpenState {
            ring_gpadl: o.ring_gpadl,
        });
        let r = OpenResult::new(relid, o.open_id, 0);
        self.post_conn(conn, MessageBuf::fixed(&r));
        rt.announced.store(true, Ordering::SeqCst);
        if rt.signal_deferred.swap(false, Ordering::SeqCst) {
            self.signal_channel(&rt);
        }
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.opens += 1;
        }
        // The guest may have queued packets before OpenResult.
        self.push_work(Work::Channel(relid));
    }

    /// Close channel `relid` on the host side if it is open.
    fn close_locked(&self, st: &mut State, relid: u32) {
        let Some(ch) = st.channels.get_mut(&relid) else {
            return;
        };
        let Some(open) = ch.open.take() else {
            return;
        };
        let rt = Arc::clone(&ch.rt);
        let handle = ChannelHandle {
            server: self.me.clone(),
            rt: Arc::clone(&rt),
            generation: rt.generation.load(Ordering::SeqCst),
        };
        lock(&rt.vsp).on_close(&handle);
        rt.uninstall();
        lock(&self.blocked).remove(&relid);
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.closes += 1;
        }
        if st.deferred_teardown.remove(&open.ring_gpadl)
            && lock(&self.gpadls).remove(open.ring_gpadl).is_ok()
        {
            lock(&self.stats).gpadls_torn_down += 1;
            if let Some(conn) = &st.conn {
                self.post_conn(
                    conn,
                    MessageBuf::fixed(&GpadlTorndown::new(open.ring_gpadl)),
                );
            }
        }
    }

    /// Forget the connection: close channels, drop GPADLs and rescinded
    /// channels (unload, reset, re-InitiateContact).
    pub fn disconnect(&self, st: &mut State) {
        let open: Vec<u32> = st
            .channels
            .iter()
            .filter(|(_, c)| c.open.is_some())
            .map(|(&r, _)| r)
            .collect();
        for relid in open {
            self.close_locked(st, relid);
        }
        // Sub-channels live for one connection: the device asks again.
        st.channels
            .retain(|_, c| !c.rescinded && c.primary.is_none());
        for c in st.channels.values_mut() {
            c.offered = false;
        }
        st.deferred_teardown.clear();
        st.conn = None;
        lock(&self.gpadls).clear();
        lock(&self.backlog).clear();
        lock(&self.stats).connected = false;
    }

    // ---- devices -------------------------------------------------------------

    fn register_port(&self, relid: u32) {
        if !lock(&self.ports).insert(relid) {
            return;
        }
        let weak = self.me.clone();
        self.hv.register_event_port(
            event_connection_id(relid),
            Box::new(move |vp, flag| {
                if let Some(s) = weak.upgrade() {
                    s.guest_signal(relid, vp, flag);
                }
            }),
        );
    }

    pub fn add_device(&self, vsp: Box<dyn Vsp>) -> Result<u32, VmbusError> {
        let class_id = vsp.class_id();
        let instance_id = vsp.instance_id();
        let params = vsp.offer_params();
        let name = vsp.name().to_owned();
        let mut st = lock(&self.state);
        if st
            .channels
            .values()
            .any(|c| c.primary.is_none() && c.class_id == class_id && c.instance_id == instance_id)
        {
            return Err(VmbusError::DuplicateDevice(guid_text(&instance_id)));
        }
        let relid = (1..MAX_RELID)
            .find(|r| !st.channels.contains_key(r))
            .ok_or(VmbusError::TooManyChannels)?;
        self.register_port(relid);
        lock(&self.stats).channels.entry(relid).or_default().device = name.clone();
        let mut ch = Channel {
            rt: Arc::new(ChannelRt::new(relid, vsp)),
            class_id,
            instance_id,
            params,
            sub_index: 0,
            primary: None,
            offered: false,
            rescinded: false,
            open: None,
        };
        if let Some(conn) = st.conn.as_ref().filter(|c| c.offers_requested) {
            self.post_conn(conn, Self::offer_message(relid, &ch));
            ch.offered = true;
            lock(&self.stats).offers_sent += 1;
        }
        tracing::info!(relid, device = %name, class = %class_id, "VMBus device added");
        st.channels.insert(relid, ch);
        Ok(relid)
    }

    /// Offer a sub-channel of primary channel `primary`, served by `vsp`
    /// (its GUIDs are ignored: a sub-channel carries its primary's, with the
    /// next sub_channel_index). Sub-channels exist for the current
    /// connection only, so the primary must be offered now.
    pub fn add_subchannel(&self, primary: u32, vsp: Box<dyn Vsp>) -> Result<u32, VmbusError> {
        let name = vsp.name().to_owned();
        let mut st = lock(&self.state);
        let Some(p) = st.channels.get(&primary).filter(|c| c.primary.is_none()) else {
            return Err(VmbusError::NoSuchChannel(primary));
        };
        if !p.offered || p.rescinded {
            return Err(VmbusError::NotOffered(primary));
        }
        let (class_id, instance_id, params) = (p.class_id, p.instance_id, p.params.clone());
        let sub_index = st
            .channels
            .values()
            .filter(|c| c.primary == Some(primary))
            .map(|c| c.sub_index)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(VmbusError::TooManyChannels)?;
        let relid = (1..MAX_RELID)
            .find(|r| !st.channels.contains_key(r))
            .ok_or(VmbusError::TooManyChannels)?;
        let Some(conn) = st.conn.clone() else {
            return Err(VmbusError::NotOffered(primary));
        };
        self.register_port(relid);
        lock(&self.stats).channels.entry(relid).or_default().device = name.clone();
        let ch = Channel {
            rt: Arc::new(ChannelRt::new(relid, vsp)),
            class_id,
            instance_id,
            params,
            sub_index,
            primary: Some(primary),
            offered: true,
            rescinded: false,
            open: None,
        };
        self.post_conn(&conn, Self::offer_message(relid, &ch));
        lock(&self.stats).offers_sent += 1;
        tracing::info!(relid, primary, sub_index, device = %name, "VMBus sub-channel offered");
        st.channels.insert(relid, ch);
        Ok(relid)
    }

    pub fn rescind(&self, relid: u32) -> Result<(), VmbusError> {
        let mut st = lock(&self.state);
        // A device's sub-channels go with it.
        let subs: Vec<u32> = st
            .channels
            .iter()
            .filter(|(_, c)| c.primary == Some(relid))
            .map(|(&r, _)| r)
            .collect();
        for sub in subs {
            self.rescind_locked(&mut st, sub)?;
        }
        self.rescind_locked(&mut st, relid)
    }

    fn rescind_locked(&self, st: &mut State, relid: u32) -> Result<(), VmbusError> {
        let Some(ch) = st.channels.get(&relid) else {
            return Err(VmbusError::NoSuchChannel(relid));
        };
        if ch.rescinded {
            return Ok(());
        }
        let offered = ch.offered;
        self.close_locked(st, relid);
        match st.conn.clone().filter(|_| offered) {
            Some(conn) => {
                if let Some(ch) = st.channels.get_mut(&relid) {
                    ch.rescinded = true;
                }
                lock(&self.stats).rescinds_sent += 1;
                let m = RescindChannelOffer::new(relid);
                self.post_conn(&conn, MessageBuf::fixed(&m));
            }
            None => {
                st.channels.remove(&relid);
                lock(&self.gpadls).remove_channel(relid);
            }
        }
        tracing::info!(relid, "VMBus channel rescinded");
        Ok(())
    }

    pub fn channel_infos(&self) -> Vec<ChannelInfo> {
        let st = lock(&self.state);
        st.channels
            .iter()
            .map(|(&relid, c)| ChannelInfo {
                relid,
                connection_id: event_connection_id(relid),
                device: c.rt.name.clone(),
                class_id: guid_text(&c.class_id),
                instance_id: guid_text(&c.instance_id),
                offered: c.offered,
                open: c.open.is_some(),
                rescinded: c.rescinded,
                sub_channel_index: c.sub_index,
                primary: c.primary,
            })
            .collect()
    }

    // ---- data path ------------------------------------------------------------

    fn guest_signal(&self, relid: u32, vp: u32, flag: u16) {
        {
            let mut s = lock(&self.stats);
            s.notifications_from_guest += 1;
            if let Some(c) = s.channels.get_mut(&relid) {
                c.signals_from_guest += 1;
            }
        }
        tracing::trace!(relid, vp, flag, "guest signalled channel");
        self.push_work(Work::Channel(relid));
    }

    /// Set the channel's event flag on its target VP (fact sheet §5.7).
    pub fn signal_channel(&self, rt: &ChannelRt) {
        let vp = rt.target_vp.load(Ordering::SeqCst);
        let sint = rt.sint.load(Ordering::SeqCst) as u8;
        match self.hv.signal_event(vp, sint, rt.relid) {
            Ok(()) => {
                let mut s = lock(&self.stats);
                s.notifications_to_guest += 1;
                if let Some(c) = s.channels.get_mut(&rt.relid) {
                    c.signals_to_guest += 1;
                }
            }
            Err(e) => {
                tracing::debug!(relid = rt.relid, vp, error = %e, "channel signal not delivered")
            }
        }
    }

    pub fn signal_suppressed(&self, relid: u32) {
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.signals_suppressed += 1;
        }
    }

    pub fn ring_error(&self, relid: u32, e: &RingError) {
        tracing::warn!(relid, error = %e, "VMBus ring error; channel stops until reopened");
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.ring_errors += 1;
        }
    }

    pub fn packet_sent(&self, relid: u32, p: &OutgoingPacket<'_>) {
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.packets_out += 1;
            c.bytes_out += p.padded_len() as u64;
        }
        if let Some(t) = &self.trace {
            let mut payload = Vec::new();
            for part in p.payload {
                if payload.len() >= 32 {
                    break;
                }
                payload.extend_from_slice(&part[..part.len().min(32 - payload.len())]);
            }
            t.record(
                Dir::HostToGuest,
                "packet",
                p.packet_type.name().unwrap_or("UNKNOWN"),
                Some(relid),
                json!({
                    "packet_type": p.packet_type.0,
                    "trans_id": p.transaction_id,
                    "completion_requested": p.flags.completion_requested(),
                    "len": p.padded_len(),
                    "payload_len": p.payload_len(),
                    "payload_head": hex_preview(&payload, 32),
                }),
            );
        }
    }

    fn packet_received(&self, relid: u32, v: &PacketView<'_>) {
        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
            c.packets_in += 1;
            c.bytes_in += v.bytes().len() as u64;
        }
        if let Some(t) = &self.trace {
            let d = v.descriptor();
            t.record(
                Dir::GuestToHost,
                "packet",
                d.packet_type.name().unwrap_or("UNKNOWN"),
                Some(relid),
                json!({
                    "packet_type": d.packet_type.0,
                    "trans_id": d.transaction_id,
                    "completion_requested": d.completion_requested(),
                    "len": d.len(),
                    "payload_len": v.payload().len(),
                    "payload_head": hex_preview(v.payload(), 32),
                }),
            );
        }
    }

    /// Drain channel `relid`'s guest->host ring (fact sheet §6.5, reader
    /// side: mask while draining, re-check after unmasking).
    fn process_channel(&self, relid: u32) {
        let rt = {
            let st = lock(&self.state);
            match st.channels.get(&relid) {
                Some(c) if c.open.is_some() => Arc::clone(&c.rt),
                _ => {
                    lock(&self.blocked).remove(&relid);
                    return;
                }
            }
        };
        let mut vsp = lock(&rt.vsp);
        let mut guard = lock(&rt.incoming);
        let Some(inr) = guard.as_mut() else { return };
        if inr.broken {
            return;
        }
        let handle = ChannelHandle {
            server: self.me.clone(),
            rt: Arc::clone(&rt),
            generation: inr.generation,
        };
        // The channel's packet buffer, allocated once per open.
        let mut buf = std::mem::take(&mut inr.buf);
        if buf.is_empty() {
            buf = vec![0u8; (inr.ring.data_size() as usize).min(MAX_PACKET_SIZE)];
        }
        let mut done = 0usize;
        let mut requeue = false;
        inr.blocked = false;
        lock(&self.blocked).remove(&relid);
        'drain: loop {
            inr.ring.begin_read();
            loop {
                if done >= BATCH {
                    requeue = true;
                    break;
                }
                // A packet the device could not answer last time comes first.
                let (len, fresh) = match inr.held.take() {
                    Some(h) => {
                        buf[..h.len()].copy_from_slice(&h);
                        (h.len(), false)
                    }
                    None => match inr.ring.try_read(&mut buf) {
                        Ok(None) => break,
                        Ok(Some(info)) => (info.len, true),
                        Err(e) => {
                            inr.broken = true;
                            self.ring_error(relid, &e);
                            break 'drain;
                        }
                    },
                };
                done += 1;
                let view = match PacketView::new(&buf[..len]) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(relid, error = %e, "malformed packet dropped");
                        if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
                            c.ring_errors += 1;
                        }
                        continue;
                    }
                };
                if fresh {
                    self.packet_received(relid, &view);
                }
                match vsp.on_packet(&handle, &view) {
                    Ok(()) => {}
                    Err(SendError::Full { needed }) => {
                        // Keep the packet host-side and wait for room: ask the
                        // guest to signal when it has read enough (fact sheet
                        // §6.5 flow control); the worker also polls.
                        inr.held = Some(buf[..len].to_vec());
                        let room = lock(&rt.outgoing).as_mut().map(|o| {
                            o.ring
                                .request_space(u32::try_from(needed).unwrap_or(u32::MAX))
                                .unwrap_or(false)
                        });
                        if fresh {
                            if let Some(c) = lock(&self.stats).channels.get_mut(&relid) {
                                c.ring_full_waits += 1;
                            }
                        }
                        if room == Some(true) {
                            requeue = true;
                        } else {
                            inr.blocked = true;
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(relid, error = %e, "device could not answer a packet")
                    }
                }
                if !self.commit_read(&rt, inr) {
                    break 'drain;
                }
            }
            if !self.commit_read(&rt, inr) {
                break;
            }
            match inr.ring.end_read() {
                Ok(more) if more && !inr.blocked && !requeue => continue,
                Ok(_) => break,
                Err(e) => {
                    inr.broken = true;
                    self.ring_error(relid, &e);
                    break;
                }
            }
        }
        inr.buf = buf;
        if inr.blocked {
            lock(&self.blocked).insert(relid);
        }
        drop(guard);
        drop(vsp);
        if requeue {
            self.push_work(Work::Channel(relid));
        }
    }

    /// Publish the read index; signal a guest waiting for room. False on a
    /// ring error (the channel is marked broken).
    fn commit_read(&self, rt: &ChannelRt, inr: &mut InRing) -> bool {
        match inr.ring.commit() {
            Ok(s) => {
                if s.needed() {
                    self.signal_channel(rt);
                }
                true
            }
            Err(e) => {
                inr.broken = true;
                self.ring_error(rt.relid, &e);
                false
            }
        }
    }

    // ---- trace -------------------------------------------------------------

    fn trace_message(&self, dir: Dir, m: &ChannelMessage<'_>) {
        let Some(t) = &self.trace else { return };
        let (relid, fields) = describe(m);
        t.record(dir, "message", type_name(m.msgtype()), relid, fields);
    }
}

/// Stats/trace name of a message type.
pub(crate) fn type_name(t: ChannelMessageType) -> &'static str {
    t.name().unwrap_or("UNKNOWN")
}

/// The decoded fields of a control message for the trace.
fn describe(m: &ChannelMessage<'_>) -> (Option<u32>, Value) {
    match m {
        ChannelMessage::OfferChannel(o) => (
            Some(o.child_relid),
            json!({
                "class_id": guid_text(&o.if_type),
                "instance_id": guid_text(&o.if_instance),
                "connection_id": o.connection_id,
                "sub_channel_index": o.sub_channel_index,
                "monitor_allocated": o.monitor_allocated,
                "is_dedicated_interrupt": o.is_dedicated_interrupt,
                "chn_flags": o.chn_flags,
            }),
        ),
        ChannelMessage::RescindChannelOffer(r) => (Some(r.child_relid), json!({})),
        ChannelMessage::OpenChannel(o) => (
            Some(o.child_relid),
            json!({
                "open_id": o.open_id,
                "ring_gpadl": o.ring_gpadl,
                "target_vp": o.target_vp,
                "downstream_ring_page_offset": o.downstream_ring_page_offset,
                "user_data_head": hex_preview(&o.user_data, 16),
            }),
        ),
        ChannelMessage::OpenResult(r) => (
            Some(r.child_relid),
            json!({"open_id": r.open_id, "status": r.status}),
        ),
        ChannelMessage::CloseChannel(c) => (Some(c.child_relid), json!({})),
        ChannelMessage::GpadlHeader { header, ranges } => (
            Some(header.child_relid),
            json!({
                "gpadl": header.gpadl,
                "range_buflen": header.range_buflen,
                "range_count": header.range_count,
                "bytes_in_header": ranges.len(),
            }),
        ),
        ChannelMessage::GpadlBody { body, pfns } => (
            None,
            json!({"gpadl": body.gpadl, "msg_number": body.msg_number, "pfns": pfns.len()}),
        ),
        ChannelMessage::GpadlCreated(g) => (
            Some(g.child_relid),
            json!({"gpadl": g.gpadl, "status": g.creation_status}),
        ),
        ChannelMessage::GpadlTeardown(g) => (Some(g.child_relid), json!({"gpadl": g.gpadl})),
        ChannelMessage::GpadlTorndown(g) => (None, json!({"gpadl": g.gpadl})),
        ChannelMessage::RelIdReleased(r) => (Some(r.child_relid), json!({})),
        ChannelMessage::InitiateContact(ic) => (
            None,
            json!({
                "version": ic.version_requested.to_string(),
                "target_vcpu": ic.target_vcpu,
                "msg_sint": ic.msg_sint(),
                "interrupt_page_or_target_info": ic.interrupt_page_or_target_info,
                "monitor_page1": ic.monitor_page1,
                "monitor_page2": ic.monitor_page2,
            }),
        ),
        ChannelMessage::VersionResponse(v) => (
            None,
            json!({
                "version_supported": v.version_supported,
                "connection_state": v.connection_state,
                "msg_conn_id": v.msg_conn_id,
            }),
        ),
        ChannelMessage::ModifyChannel(mc) => {
            (Some(mc.child_relid), json!({"target_vp": mc.target_vp}))
        }
        ChannelMessage::ModifyChannelResponse(r) => {
            (Some(r.child_relid), json!({"status": r.status}))
        }
        ChannelMessage::TlConnectRequest { request, silo_id } => (
            None,
            json!({
                "guest_endpoint_id": guid_text(&request.guest_endpoint_id),
                "host_service_id": guid_text(&request.host_service_id),
                "silo_id": silo_id.as_ref().map(guid_text),
            }),
        ),
        _ => (None, json!({})),
    }
}
