//! The host end of one IC channel, whatever the service: the VSP the VMBus
//! server offers ([`IcVsp`]), version negotiation when the guest opens it,
//! and one-at-a-time request/response transactions for the service layer
//! ([`IcCore::transact`]). Framing and negotiation bodies are
//! `ic_services`' (one definition).
//!
//! Locks: the core's `st` is taken inside VSP callbacks (under the server's
//! locks) and by API threads; while holding it, only the channel handle's
//! send path is used (never a `VmbusServer` method), so the order is always
//! server locks -> `st` -> the channel's outgoing ring.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ic_services::framing::{self, IcFlags, IcHeader, IcMessageHeader, IcMessageType, Status};
use ic_services::negotiate::{self, Negotiated, ServiceVersions};
use serde::Serialize;
use vmbus_guest::guid::Guid;
use vmbus_guest::packet::{PacketType, PacketView};
use vmbus_guest::ring::OutgoingPacket;

use super::trace::describe;
use super::{IcError, Service};
use crate::vmbus::trace::{Dir, TraceWriter};
use crate::vmbus::{ChannelHandle, OfferParams, SendError, Vsp};

/// `chn_flags` NAMED_PIPE_MODE (fact sheet §5.3): IC channels are
/// message-mode pipes (§7.2).
pub const CHN_FLAG_NAMED_PIPE: u16 = 0x10;
/// `pipe_mode` 4 = message mode, in the offer's user-defined bytes (§5.3).
pub const PIPE_MODE_MESSAGE: u32 = 4;

/// Where a channel is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Not open (never opened, closed, rescinded, reset).
    Closed,
    /// Open; the negotiate request with this VMBus transaction id is out.
    Negotiating(u64),
    /// Negotiated: requests may flow.
    Ready(Negotiated),
    /// The guest's negotiation answer was negative or malformed.
    Failed(String),
}

/// Counters of one IC channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IcCounters {
    /// Times the guest opened the channel.
    pub opens: u64,
    /// Requests sent (negotiation included).
    pub requests: u64,
    /// Responses matched to a request.
    pub responses: u64,
    /// Requests the guest did not answer in time.
    pub timeouts: u64,
    /// Packets from the guest that answer nothing outstanding (late, stray).
    pub unexpected: u64,
    /// Packets from the guest that are not well-framed IC responses.
    pub malformed: u64,
}

/// What the status endpoint shows for one IC.
#[derive(Debug, Clone, Serialize)]
pub struct IcChannelStatus {
    /// The service.
    pub service: Service,
    /// The channel's relid while open.
    pub relid: Option<u32>,
    /// "closed", "negotiating", "ready" or "negotiation-failed".
    pub state: &'static str,
    /// Negotiated framework version ("3.0").
    pub framework_version: Option<String>,
    /// Negotiated message version.
    pub message_version: Option<String>,
    /// Why negotiation failed.
    pub error: Option<String>,
    /// Counters.
    pub counters: IcCounters,
}

struct InFlight {
    tid: u64,
    reply: Option<Vec<u8>>,
}

/// A guest wired straight to the host IC, without VMBus: given each
/// request (VMBus transaction id, payload), it returns the payloads it
/// answers with (none, one, or several). For tests and fuzzing of the host
/// side's handling of guest answers.
pub type LoopbackGuest = Box<dyn FnMut(u64, &[u8]) -> Vec<Vec<u8>> + Send>;

/// How requests reach the guest.
#[derive(Clone)]
enum Link {
    /// An open VMBus channel.
    Vmbus(ChannelHandle),
    /// A [`LoopbackGuest`], called outside the core's lock.
    Loopback(Arc<Mutex<LoopbackGuest>>),
}

impl Link {
    fn relid(&self) -> u32 {
        match self {
            Link::Vmbus(ch) => ch.relid(),
            Link::Loopback(_) => 0,
        }
    }
}

struct CoreState {
    ch: Option<Link>,
    /// Requests waiting for a loopback guest (sent once the lock is dropped).
    loop_out: Vec<(u64, Vec<u8>)>,
    phase: Phase,
    next_tid: u64,
    inflight: Option<InFlight>,
    counters: IcCounters,
}

/// A response to a host request.
#[derive(Debug, Clone)]
pub(crate) struct IcReply {
    pub header: IcMessageHeader,
    pub body: Vec<u8>,
}

impl IcReply {
    pub fn status(&self) -> Status {
        self.header.ic.status
    }
}

/// The shared state of one IC channel (the VSP in the server and the
/// service API both hold it).
pub(crate) struct IcCore {
    pub service: Service,
    offered: ServiceVersions,
    st: Mutex<CoreState>,
    cv: Condvar,
    trace: Option<Arc<TraceWriter>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Message buffer size: the largest IC message (fact sheet §7.2).
const BUF: usize = framing::MAX_MESSAGE_SIZE;

impl IcCore {
    pub fn new(service: Service, trace: Option<Arc<TraceWriter>>) -> Arc<Self> {
        Self::with_versions(service, service.versions(), trace)
    }

    /// A core offering other version lists (tests: a guest that matches none).
    pub fn with_versions(
        service: Service,
        offered: ServiceVersions,
        trace: Option<Arc<TraceWriter>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            service,
            offered,
            st: Mutex::new(CoreState {
                ch: None,
                loop_out: Vec::new(),
                phase: Phase::Closed,
                next_tid: 1,
                inflight: None,
                counters: IcCounters::default(),
            }),
            cv: Condvar::new(),
            trace,
        })
    }

    pub fn status(&self) -> IcChannelStatus {
        let st = lock(&self.st);
        let (state, neg, error) = match &st.phase {
            Phase::Closed => ("closed", None, None),
            Phase::Negotiating(_) => ("negotiating", None, None),
            Phase::Ready(n) => ("ready", Some(*n), None),
            Phase::Failed(e) => ("negotiation-failed", None, Some(e.clone())),
        };
        IcChannelStatus {
            service: self.service,
            relid: st.ch.as_ref().map(Link::relid),
            state,
            framework_version: neg.map(|n| n.framework.to_string()),
            message_version: neg.map(|n| n.message.to_string()),
            error,
            counters: st.counters.clone(),
        }
    }

    /// The negotiated versions, if the channel is ready.
    pub fn negotiated(&self) -> Option<Negotiated> {
        match lock(&self.st).phase {
            Phase::Ready(n) => Some(n),
            _ => None,
        }
    }

    pub fn phase(&self) -> Phase {
        lock(&self.st).phase.clone()
    }

    fn trace(&self, dir: Dir, relid: u32, tid: u64, payload: &[u8]) {
        if let Some(t) = &self.trace {
            let (name, mut fields) = describe(payload);
            fields["service"] = serde_json::json!(self.service);
            fields["trans_id"] = serde_json::json!(tid);
            t.record(dir, "ic", &name, Some(relid), fields);
        }
    }

    /// Frame and send one request; the caller holds `st`.
    fn send_locked(
        &self,
        st: &mut CoreState,
        header: &IcHeader,
        body: &[u8],
    ) -> Result<u64, IcError> {
        let link = st.ch.clone().ok_or(IcError::NotOpen(self.service))?;
        let mut buf = vec![0u8; BUF];
        let len = framing::encode(&mut buf, header, body)
            .map_err(|e| IcError::Invalid(format!("cannot frame the request: {e}")))?;
        let tid = st.next_tid;
        st.next_tid += 1;
        self.trace(Dir::HostToGuest, link.relid(), tid, &buf[..len]);
        match link {
            Link::Vmbus(ch) => {
                let parts = [&buf[..len]];
                let p = OutgoingPacket::inband(tid, false, &parts);
                ch.send(&p).map_err(|e| match e {
                    SendError::Closed => IcError::Closed(self.service),
                    other => IcError::Send {
                        service: self.service,
                        error: other.to_string(),
                    },
                })?;
            }
            Link::Loopback(_) => {
                buf.truncate(len);
                st.loop_out.push((tid, buf));
            }
        }
        st.counters.requests += 1;
        Ok(tid)
    }

    /// Hand queued requests to a loopback guest and take its answers in.
    /// Called without the lock held; a no-op on VMBus links.
    fn pump(&self) {
        loop {
            let (guest, out) = {
                let mut st = lock(&self.st);
                match &st.ch {
                    Some(Link::Loopback(g)) if !st.loop_out.is_empty() => {
                        (Arc::clone(g), std::mem::take(&mut st.loop_out))
                    }
                    _ => return,
                }
            };
            for (tid, req) in out {
                let answers = (lock(&guest))(tid, &req);
                for a in answers {
                    self.received_payload(0, tid, true, &a);
                }
            }
        }
    }

    /// Open with a [`LoopbackGuest`] instead of a VMBus channel; the
    /// negotiation runs at once.
    pub fn open_loopback(&self, guest: LoopbackGuest) {
        self.opened_link(Link::Loopback(Arc::new(Mutex::new(guest))));
        self.pump();
    }

    /// Close a loopback (or any) link from the host side.
    pub fn close_link(&self) {
        self.closed();
    }

    fn opened(&self, ch: &ChannelHandle) {
        self.opened_link(Link::Vmbus(ch.clone()));
    }

    fn opened_link(&self, link: Link) {
        let relid = link.relid();
        let mut st = lock(&self.st);
        st.ch = Some(link);
        st.loop_out.clear();
        st.inflight = None;
        st.counters.opens += 1;
        let mut body = [0u8; 8 + 4 * 2 * negotiate::MAX_VERSION_COUNT];
        let header = IcHeader {
            framework_version: self.offered.framework[0],
            message_type: IcMessageType::NEGOTIATE,
            message_version: self.offered.message[0],
            flags: IcFlags::HOST_REQUEST,
            ..IcHeader::default()
        };
        let sent = negotiate::write_body(&mut body, self.offered.framework, self.offered.message)
            .map_err(|e| IcError::Invalid(e.to_string()))
            .and_then(|n| self.send_locked(&mut st, &header, &body[..n]));
        st.phase = match sent {
            Ok(tid) => Phase::Negotiating(tid),
            Err(e) => Phase::Failed(format!("cannot send the negotiation request: {e}")),
        };
        tracing::debug!(service = ?self.service, relid, phase = ?st.phase, "IC channel opened");
        self.cv.notify_all();
    }

    fn closed(&self) {
        let mut st = lock(&self.st);
        st.ch = None;
        st.loop_out.clear();
        st.phase = Phase::Closed;
        st.inflight = None;
        self.cv.notify_all();
    }

    fn received(&self, relid: u32, packet: &PacketView<'_>) {
        let inband = packet.packet_type() == PacketType::DATA_INBAND;
        if !inband {
            tracing::debug!(service = ?self.service, kind = ?packet.packet_type(), "IC ignores a non-inband packet");
        }
        self.received_payload(relid, packet.transaction_id(), inband, packet.payload());
    }

    /// One packet payload from the guest (untrusted).
    fn received_payload(&self, relid: u32, tid: u64, inband: bool, payload: &[u8]) {
        self.trace(Dir::GuestToHost, relid, tid, payload);
        let mut st = lock(&self.st);
        if !inband {
            st.counters.malformed += 1;
            return;
        }
        let msg = match framing::parse(payload) {
            Ok(m) if m.header.ic.flags.response() => m,
            Ok(_) => {
                st.counters.malformed += 1;
                tracing::warn!(service = ?self.service, "IC packet from the guest is not a response");
                return;
            }
            Err(e) => {
                st.counters.malformed += 1;
                tracing::warn!(service = ?self.service, error = %e, "malformed IC packet from the guest");
                return;
            }
        };
        if msg.header.ic.message_type == IcMessageType::NEGOTIATE {
            if st.phase != Phase::Negotiating(tid) {
                st.counters.unexpected += 1;
                tracing::debug!(service = ?self.service, tid, "IC negotiation answer for nothing outstanding");
                return;
            }
            st.counters.responses += 1;
            st.phase = match negotiate::parse_response_body(msg.body) {
                Ok(Some(n))
                    if self.offered.framework.contains(&n.framework)
                        && self.offered.message.contains(&n.message) =>
                {
                    tracing::info!(service = ?self.service, framework = %n.framework, message = %n.message, "IC negotiated");
                    Phase::Ready(n)
                }
                Ok(Some(n)) => Phase::Failed(format!(
                    "the guest chose versions the host did not offer (framework {}, message {})",
                    n.framework, n.message
                )),
                Ok(None) => Phase::Failed("the guest supports none of the offered versions".into()),
                Err(e) => Phase::Failed(format!("malformed negotiation answer: {e}")),
            };
            if let Phase::Failed(why) = &st.phase {
                tracing::warn!(service = ?self.service, why, "IC negotiation failed");
            }
            self.cv.notify_all();
            return;
        }
        match st.inflight.as_mut() {
            Some(f) if f.tid == tid && f.reply.is_none() => {
                f.reply = Some(payload.to_vec());
                st.counters.responses += 1;
                self.cv.notify_all();
            }
            _ => {
                st.counters.unexpected += 1;
                tracing::debug!(service = ?self.service, tid, "IC answer for nothing outstanding (late or stray)");
            }
        }
    }

    /// Send a request of `message_type` with `body` and wait for the
    /// answer, at most `timeout` in all (waiting for an earlier request or
    /// for negotiation counts). One request is outstanding per channel.
    pub fn transact(
        &self,
        message_type: IcMessageType,
        body: &[u8],
        timeout: Duration,
    ) -> Result<IcReply, IcError> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.st);
        let neg = loop {
            match &st.phase {
                Phase::Closed => return Err(IcError::NotOpen(self.service)),
                Phase::Failed(why) => {
                    return Err(IcError::NegotiationFailed(self.service, why.clone()))
                }
                Phase::Ready(n) if st.inflight.is_none() => break *n,
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match st.phase {
                    Phase::Negotiating(_) => IcError::NotNegotiated(self.service),
                    _ => IcError::Timeout(self.service),
                });
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        let header = IcHeader {
            framework_version: neg.framework,
            message_type,
            message_version: neg.message,
            flags: IcFlags::HOST_REQUEST,
            ..IcHeader::default()
        };
        // A full ring only delays the request (the guest drains it).
        let tid = loop {
            match self.send_locked(&mut st, &header, body) {
                Err(IcError::Send { .. }) if Instant::now() < deadline => {
                    st = self
                        .cv
                        .wait_timeout(st, Duration::from_millis(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if st.ch.is_none() {
                        return Err(IcError::Closed(self.service));
                    }
                }
                other => break other?,
            }
        };
        st.inflight = Some(InFlight { tid, reply: None });
        drop(st);
        self.pump();
        let mut st = lock(&self.st);
        loop {
            match st.inflight.as_mut() {
                Some(f) if f.tid == tid => {
                    if let Some(bytes) = f.reply.take() {
                        st.inflight = None;
                        self.cv.notify_all();
                        drop(st);
                        return self.check_reply(message_type, bytes);
                    }
                }
                // Closed (and maybe reopened) meanwhile.
                _ => return Err(IcError::Closed(self.service)),
            }
            let now = Instant::now();
            if now >= deadline {
                st.inflight = None;
                st.counters.timeouts += 1;
                self.cv.notify_all();
                return Err(IcError::Timeout(self.service));
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn check_reply(&self, message_type: IcMessageType, bytes: Vec<u8>) -> Result<IcReply, IcError> {
        let msg = framing::parse(&bytes).map_err(|e| self.bad(e.to_string()))?;
        if msg.header.ic.message_type != message_type {
            return Err(self.bad(format!(
                "answer of type {:?} to a {:?} request",
                msg.header.ic.message_type, message_type
            )));
        }
        Ok(IcReply {
            header: msg.header,
            body: msg.body.to_vec(),
        })
    }

    pub fn bad(&self, why: String) -> IcError {
        IcError::BadReply {
            service: self.service,
            why,
        }
    }

    /// A guest status other than S_OK as an error.
    pub fn require_ok(&self, reply: &IcReply) -> Result<(), IcError> {
        let s = reply.status();
        if s.is_ok() {
            Ok(())
        } else {
            Err(IcError::GuestStatus {
                service: self.service,
                status: s.get(),
                name: s.name(),
            })
        }
    }
}

/// The VSP of one IC: offered with the service's class GUID, as a
/// message-mode pipe.
pub struct IcVsp {
    core: Arc<IcCore>,
    instance: Guid,
}

impl IcVsp {
    pub(crate) fn new(core: Arc<IcCore>, instance: Guid) -> Self {
        Self { core, instance }
    }
}

impl Vsp for IcVsp {
    fn name(&self) -> &str {
        self.core.service.name()
    }

    fn class_id(&self) -> Guid {
        self.core.service.class_id()
    }

    fn instance_id(&self) -> Guid {
        self.instance
    }

    fn offer_params(&self) -> OfferParams {
        let mut p = OfferParams {
            chn_flags: CHN_FLAG_NAMED_PIPE,
            ..OfferParams::default()
        };
        p.user_defined[..4].copy_from_slice(&PIPE_MODE_MESSAGE.to_le_bytes());
        p
    }

    fn on_open(
        &mut self,
        ch: &ChannelHandle,
        _user_data: &[u8],
    ) -> Result<(), crate::vmbus::OpenRefused> {
        self.core.opened(ch);
        Ok(())
    }

    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError> {
        self.core.received(ch.relid(), packet);
        Ok(())
    }

    fn on_close(&mut self, _ch: &ChannelHandle) {
        self.core.closed();
    }
}
