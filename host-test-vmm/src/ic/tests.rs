//! The host ICs driven by a scripted guest through the in-process backend:
//! the guest connects to the VMBus server, opens IC channels over rings in
//! guest RAM, and answers with `ic_services`' guest endpoints (or with
//! deliberately broken answers) on a thread of its own.

use super::*;
use crate::hv::inprocess::InProcess;
use crate::hv::HvStatus;
use crate::vmbus::trace::TraceBuffer;
use crate::vmbus::{
    GuestRingMemory, OutgoingPacket, VmbusOptions, VmbusServer, VMBUS_MESSAGE_TYPE,
};
use ic_services::framing::{self, IcMessageType, Status};
use ic_services::kvp::{KvpData, KvpPool, KvpProvider, KvpRecordMut, StaticKvp, Utf16};
use ic_services::negotiate::ServiceVersions;
use ic_services::service::{Endpoint, IcService};
use ic_services::shutdown::{ShutdownAction, ShutdownHandler, ShutdownKind};
use ic_services::timesync::{ClockAdjust, TimeSample};
use ic_services::vss::VssHandler;
use ic_services::{fcopy, framing::IcVersion};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmbus_guest::message::{
    ChannelMessage, CloseChannel, GpadlMessages, InitiateContact, MessageBuf, OfferChannel,
    OpenChannel,
};
use vmbus_guest::ring::{init_control, RingError, RingReceiver, RingSender};
use vmbus_guest::version::{MESSAGE_CONNECTION_ID, VMBUS_SINT};
use vmbus_guest::Version;

const RAM: usize = 4 << 20;
const VECTOR: u8 = 0xF3;
const SIMP: u64 = 0x2000;
const SIEFP: u64 = 0x3000;
const INPUT: u64 = 0x6000;
const WAIT: Duration = Duration::from_secs(10);
const T: Duration = Duration::from_secs(5);
/// Host time the fake wall clock reports (2026-01-01 in 100 ns since 1601).
const WALL: u64 = 134_115_840_000_000_000;
/// Reference time the fake partition clock reports.
const REF: u64 = 42_000_000;

/// A guest answer: given the host's request payload, write the answer;
/// `false` = do not answer.
type Responder = Box<dyn FnMut(&[u8], &mut Vec<u8>) -> bool + Send>;

struct Guest {
    part: Arc<InProcess>,
    server: Arc<VmbusServer>,
    ics: HostIcs,
    trace: TraceBuffer,
    conn_id: u32,
    next_page: u64,
    next_gpadl: u32,
    offers: Vec<OfferChannel>,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    relid: u32,
    gpadl: u32,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            // Never panic again while a failed test unwinds (that aborts the
            // whole test binary and hides the first failure).
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the guest-side channel thread panicked");
            }
        }
    }
}

fn config() -> IcConfig {
    let mut c = IcConfig::new(Arc::new(|| REF));
    // The background thread stays out of the way unless a test wants it.
    c.heartbeat_interval = Duration::from_secs(3600);
    c.timesync_interval = Duration::from_secs(3600);
    c.heartbeat_timeout = Duration::from_millis(300);
    c.wall_time = Arc::new(|| WALL);
    c
}

impl Guest {
    fn new() -> Self {
        Self::with(config(), None)
    }

    fn with(mut cfg: IcConfig, versions: Option<(Service, ServiceVersions)>) -> Self {
        let part = Arc::new(InProcess::new(1, RAM).unwrap());
        part.enable_hypercalls(0x1000).unwrap();
        part.enable_synic(0, SIMP, SIEFP).unwrap();
        part.unmask_sint(0, VMBUS_SINT, VECTOR).unwrap();
        let (w, trace) = TraceWriter::in_memory();
        let w = Arc::new(w);
        let server = VmbusServer::new(
            Arc::clone(part.hv()),
            VmbusOptions {
                trace: Some(Arc::clone(&w)),
            },
        )
        .unwrap();
        cfg.trace = Some(w);
        let ics = match versions {
            Some((s, v)) => HostIcs::with_versions(cfg, s, v).unwrap(),
            None => HostIcs::new(cfg).unwrap(),
        };
        let relids = ics.register(&server).unwrap();
        assert_eq!(relids, vec![1, 2, 3, 4, 5, 6]);
        let mut g = Self {
            part,
            server,
            ics,
            trace,
            conn_id: MESSAGE_CONNECTION_ID,
            next_page: 0x100,
            next_gpadl: 0xE1E10,
            offers: Vec::new(),
        };
        g.connect();
        g
    }

    fn post(&self, m: &ChannelMessage<'_>) {
        let b = m.encode().unwrap();
        let st = self
            .part
            .post_message(0, INPUT, self.conn_id, 1, b.as_bytes());
        assert_eq!(st, HvStatus::SUCCESS);
    }

    fn recv(&self) -> MessageBuf {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.part.complete_message(0, SIMP, VMBUS_SINT).unwrap() {
                assert_eq!(m.header.message_type.0, VMBUS_MESSAGE_TYPE);
                return MessageBuf::from_bytes(m.payload()).unwrap();
            }
            assert!(Instant::now() < end, "no message arrived");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn connect(&mut self) {
        let v = Version::WIN10_V5_3;
        let ic = InitiateContact::with_target_sint(v, 0, VMBUS_SINT, 0, 0x7000, 0x8000);
        let b = ChannelMessage::InitiateContact(ic).encode().unwrap();
        let st = self.part.post_message(
            0,
            INPUT,
            v.initiate_contact_connection_id(),
            1,
            b.as_bytes(),
        );
        assert_eq!(st, HvStatus::SUCCESS);
        let ChannelMessage::VersionResponse(r) = self.recv().parse().unwrap() else {
            panic!("expected VersionResponse");
        };
        assert!(r.accepted());
        self.conn_id = r.msg_conn_id;
        self.post(&ChannelMessage::RequestOffers);
        loop {
            match self.recv().parse().unwrap() {
                ChannelMessage::OfferChannel(o) => self.offers.push(o),
                ChannelMessage::AllOffersDelivered => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn offer(&self, s: Service) -> OfferChannel {
        *self
            .offers
            .iter()
            .find(|o| o.if_type == s.class_id())
            .unwrap_or_else(|| panic!("{s:?} not offered"))
    }

    /// Open `s`'s channel and answer every host request with `responder`
    /// on a thread.
    fn open(&mut self, s: Service, mut responder: Responder) -> Running {
        let offer = self.offer(s);
        let relid = offer.child_relid;
        let pages: Vec<u64> = (0..8).map(|i| self.next_page + i).collect();
        self.next_page += 8;
        let mem = self.part.memory().clone();
        let up = GuestRingMemory::new(mem.clone(), &pages[..4]).unwrap();
        let down = GuestRingMemory::new(mem, &pages[4..]).unwrap();
        init_control(&up).unwrap();
        init_control(&down).unwrap();
        let h = self.next_gpadl;
        self.next_gpadl += 1;
        for m in GpadlMessages::new(relid, h, 0, (pages.len() * 4096) as u32, &pages[..]).unwrap() {
            let st = self
                .part
                .post_message(0, INPUT, self.conn_id, 1, m.as_bytes());
            assert_eq!(st, HvStatus::SUCCESS);
        }
        let ChannelMessage::GpadlCreated(c) = self.recv().parse().unwrap() else {
            panic!("expected GpadlCreated");
        };
        assert_eq!(c.creation_status, 0);
        let o = OpenChannel::new(relid, relid, h, 0, 4, [0; 120]);
        self.post(&ChannelMessage::OpenChannel(o));
        let ChannelMessage::OpenResult(r) = self.recv().parse().unwrap() else {
            panic!("expected OpenResult");
        };
        assert_eq!(r.status, 0);
        let mut tx = RingSender::new(up).unwrap();
        let mut rx = RingReceiver::new(down).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let part = Arc::clone(&self.part);
        let event = offer.connection_id;
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4 * 4096];
            let mut out = Vec::new();
            while !s2.load(Ordering::SeqCst) {
                let Some(p) = rx.try_read_packet(&mut buf).unwrap() else {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                };
                let tid = p.transaction_id();
                let req = p.payload().to_vec();
                if rx.commit().unwrap().needed() {
                    part.signal_event(0, event, 0);
                }
                out.clear();
                if responder(&req, &mut out) {
                    let parts = [&out[..]];
                    let pkt = OutgoingPacket::inband(tid, false, &parts);
                    // A slow host (a loaded machine) may not have drained the
                    // ring yet: wait for room, as a real guest would.
                    loop {
                        match tx.try_write(&pkt) {
                            Ok(w) => {
                                if w.needed() {
                                    part.signal_event(0, event, 0);
                                }
                                break;
                            }
                            Err(RingError::NotEnoughSpace { .. }) if !s2.load(Ordering::SeqCst) => {
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            Err(e) => panic!("guest ring write: {e}"),
                        }
                    }
                }
            }
        });
        Running {
            stop,
            thread: Some(thread),
            relid,
            gpadl: h,
        }
    }

    /// Open `s` with an `ic_services` endpoint answering; the endpoint
    /// stays inspectable.
    fn open_endpoint<S: IcService + Send + 'static>(
        &mut self,
        s: Service,
        service: S,
    ) -> (Running, Arc<Mutex<Endpoint<S>>>) {
        let ep = Arc::new(Mutex::new(Endpoint::new(service)));
        let e2 = Arc::clone(&ep);
        let r = self.open(
            s,
            Box::new(move |req, out| {
                out.resize(req.len(), 0);
                e2.lock().unwrap().handle(req, out).is_ok()
            }),
        );
        wait_ready(&self.ics, s);
        (r, ep)
    }

    fn close(&self, r: &Running) {
        self.post(&ChannelMessage::CloseChannel(CloseChannel::new(r.relid)));
        let _ = r.gpadl;
    }
}

fn wait_ready(ics: &HostIcs, s: Service) {
    let end = Instant::now() + WAIT;
    while ics.channel_status(s).state != "ready" {
        assert!(
            Instant::now() < end,
            "{s:?} never negotiated: {:?}",
            ics.channel_status(s)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ---- guest-side services used by the tests ----

#[derive(Default)]
struct Decider {
    accept: bool,
    seen: Vec<ShutdownAction>,
}

impl ShutdownHandler for Decider {
    fn decide(&mut self, action: &ShutdownAction, _message: &[u8]) -> bool {
        self.seen.push(*action);
        self.accept
    }
}

#[derive(Default)]
struct Clock {
    samples: Vec<TimeSample>,
}

impl ClockAdjust for Clock {
    fn time_sample(&mut self, sample: &TimeSample) {
        self.samples.push(*sample);
    }
}

#[derive(Default)]
struct Store {
    map: BTreeMap<(u8, String), String>,
}

impl KvpProvider for Store {
    fn get(
        &mut self,
        pool: KvpPool,
        key: Utf16<'_>,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let v = self
            .map
            .get(&(pool.0, key.to_string()))
            .ok_or(Status::E_FAIL)?;
        out.set_value_str(v)
    }
    fn set(&mut self, pool: KvpPool, key: Utf16<'_>, value: KvpData<'_>) -> Result<(), Status> {
        let v = match value {
            KvpData::String(s) => s.to_string(),
            KvpData::U32(n) => n.to_string(),
            KvpData::U64(n) => n.to_string(),
            KvpData::Other { .. } => return Err(Status::INVALID_ARG),
        };
        self.map.insert((pool.0, key.to_string()), v);
        Ok(())
    }
    fn delete(&mut self, pool: KvpPool, key: Utf16<'_>) -> Result<(), Status> {
        self.map
            .remove(&(pool.0, key.to_string()))
            .map(|_| ())
            .ok_or(Status::E_FAIL)
    }
    fn enumerate(
        &mut self,
        pool: KvpPool,
        index: u32,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let (k, v) = self
            .map
            .iter()
            .filter(|((p, _), _)| *p == pool.0)
            .nth(index as usize)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .ok_or(Status::NO_MORE_ITEMS)?;
        out.set_key(&k)?;
        out.set_value_str(&v)
    }
}

#[derive(Default)]
struct Freezer {
    freezes: u32,
    thaws: u32,
}

impl VssHandler for Freezer {
    fn freeze(&mut self) -> Result<(), Status> {
        self.freezes += 1;
        Ok(())
    }
    fn thaw(&mut self) -> Result<(), Status> {
        self.thaws += 1;
        Ok(())
    }
}

#[derive(Default)]
struct Sink {
    name: String,
    path: String,
    flags: u32,
    size: u64,
    data: Vec<u8>,
    writes: u32,
    complete: bool,
    cancelled: bool,
    refuse_start: bool,
    fail_write: Option<u32>,
}

impl fcopy::FileSink for Sink {
    fn start(
        &mut self,
        file_name: Utf16<'_>,
        path_name: Utf16<'_>,
        copy_flags: u32,
        file_size: u64,
    ) -> Result<(), Status> {
        if self.refuse_start {
            return Err(Status::ALREADY_EXISTS);
        }
        self.name = file_name.to_string();
        self.path = path_name.to_string();
        self.flags = copy_flags;
        self.size = file_size;
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Status> {
        self.writes += 1;
        if self.fail_write == Some(self.writes) {
            return Err(Status::DISK_FULL);
        }
        assert_eq!(offset, self.data.len() as u64);
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn complete(&mut self) -> Result<(), Status> {
        self.complete = true;
        Ok(())
    }
    fn cancel(&mut self) {
        self.cancelled = true;
    }
}

// ---- tests ----

#[test]
fn six_ics_offered_with_standard_guids_as_message_pipes() {
    let g = Guest::new();
    assert_eq!(g.offers.len(), 6);
    for s in Service::ALL {
        let o = g.offer(s);
        assert_eq!(o.if_type, s.class_id());
        assert_eq!(o.if_instance, s.instance_id());
        assert_eq!(o.chn_flags, CHN_FLAG_NAMED_PIPE, "{s:?}");
        assert_eq!(&o.user_defined[..4], &PIPE_MODE_MESSAGE.to_le_bytes());
    }
    assert_eq!(
        Service::Fcopy.instance_id(),
        vmbus_guest::guid::instance::FCOPY
    );
    for s in Service::ALL {
        assert_eq!(g.ics.channel_status(s).state, "closed");
    }
}

#[test]
fn requests_to_unopened_services_say_so() {
    let g = Guest::new();
    let e = g.ics.heartbeat_now(T).unwrap_err();
    assert_eq!(e, IcError::NotOpen(Service::Heartbeat));
    assert_eq!(
        e.to_string(),
        "the guest has not opened the heartbeat service"
    );
    assert!(matches!(
        g.ics.kvp_get(KvpPool::EXTERNAL, "k", T),
        Err(IcError::NotOpen(Service::Kvp))
    ));
    assert_eq!(g.ics.heartbeat().state, HeartbeatState::NotOpen);
    assert!(!g.ics.heartbeat().alive);
}

#[test]
fn negotiation_picks_the_guests_choice() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(
        Service::Timesync,
        ic_services::timesync::TimeSync::new(Clock::default()),
    );
    let st = g.ics.channel_status(Service::Timesync);
    assert_eq!(st.framework_version.as_deref(), Some("3.0"));
    assert_eq!(st.message_version.as_deref(), Some("4.0"));
    assert_eq!(st.counters.opens, 1);
    let n = ep.lock().unwrap().negotiated().unwrap();
    assert_eq!(n.message, IcVersion::new(4, 0));
}

#[test]
fn negotiation_failure_is_reported() {
    const ODD: ServiceVersions = ServiceVersions {
        framework: &[IcVersion::new(9, 0)],
        message: &[IcVersion::new(9, 9)],
    };
    let mut g = Guest::with(config(), Some((Service::Heartbeat, ODD)));
    let ep = Arc::new(Mutex::new(Endpoint::new(
        ic_services::heartbeat::Heartbeat::new(),
    )));
    let e2 = Arc::clone(&ep);
    let _r = g.open(
        Service::Heartbeat,
        Box::new(move |req, out| {
            out.resize(req.len(), 0);
            e2.lock().unwrap().handle(req, out).is_ok()
        }),
    );
    wait_until("negotiation failure", || {
        g.ics.channel_status(Service::Heartbeat).state == "negotiation-failed"
    });
    assert!(matches!(
        g.ics.heartbeat_now(T),
        Err(IcError::NegotiationFailed(Service::Heartbeat, _))
    ));
    assert_eq!(g.ics.heartbeat().state, HeartbeatState::NegotiationFailed);
}

#[test]
fn heartbeat_sequence_rule_and_liveness() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(Service::Heartbeat, ic_services::heartbeat::Heartbeat::new());
    assert_eq!(g.ics.heartbeat().state, HeartbeatState::Waiting);
    assert_eq!(g.ics.heartbeat_now(T).unwrap(), 1);
    assert_eq!(g.ics.heartbeat_now(T).unwrap(), 2);
    let hb = g.ics.heartbeat();
    assert_eq!(hb.state, HeartbeatState::Alive);
    assert!(hb.alive);
    assert_eq!(hb.last_sequence, Some(2));
    assert_eq!((hb.requests, hb.answers, hb.violations), (2, 2, 0));
    // The guest saw the host continue from its own number.
    assert_eq!(ep.lock().unwrap().service().last_seq(), Some(1));
    // Without answers for longer than the timeout, the guest is dead.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(g.ics.heartbeat().state, HeartbeatState::Dead);
}

#[test]
fn heartbeat_rule_violation_and_missed_beats() {
    let mut g = Guest::new();
    let ep = Arc::new(Mutex::new(Endpoint::new(
        ic_services::heartbeat::Heartbeat::new(),
    )));
    let e2 = Arc::clone(&ep);
    let mode = Arc::new(Mutex::new(0u8));
    let m2 = Arc::clone(&mode);
    let _r = g.open(
        Service::Heartbeat,
        Box::new(move |req, out| {
            out.resize(req.len(), 0);
            if e2.lock().unwrap().handle(req, out).is_err() {
                return false;
            }
            let m = framing::parse(out).unwrap();
            if m.header.ic.message_type != IcMessageType::HEARTBEAT {
                return true;
            }
            match *m2.lock().unwrap() {
                // Answer seq + 2.
                1 => {
                    let seq = u64::from_le_bytes(out[28..36].try_into().unwrap());
                    out[28..36].copy_from_slice(&(seq + 1).to_le_bytes());
                    true
                }
                // Silence.
                2 => false,
                _ => true,
            }
        }),
    );
    wait_ready(&g.ics, Service::Heartbeat);
    assert_eq!(g.ics.heartbeat_now(T).unwrap(), 1);
    *mode.lock().unwrap() = 1;
    let e = g.ics.heartbeat_now(T).unwrap_err();
    assert!(
        matches!(
            e,
            IcError::BadReply {
                service: Service::Heartbeat,
                ..
            }
        ),
        "{e}"
    );
    let hb = g.ics.heartbeat();
    assert_eq!(hb.violations, 1);
    assert!(hb
        .last_violation
        .unwrap()
        .contains("sent 1, answer 3, expected 2"));
    *mode.lock().unwrap() = 2;
    assert_eq!(
        g.ics.heartbeat_now(Duration::from_millis(100)),
        Err(IcError::Timeout(Service::Heartbeat))
    );
    let hb = g.ics.heartbeat();
    assert_eq!(hb.missed, 1);
    assert_eq!(
        g.ics.channel_status(Service::Heartbeat).counters.timeouts,
        1
    );
    // The channel keeps working after a missed beat.
    *mode.lock().unwrap() = 0;
    assert_eq!(g.ics.heartbeat_now(T).unwrap(), 2);
}

#[test]
fn background_thread_beats_and_syncs_time() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(20);
    cfg.timesync_interval = Duration::from_millis(30);
    cfg.heartbeat_timeout = Duration::from_secs(5);
    let mut g = Guest::with(cfg, None);
    let (_h, hb) = g.open_endpoint(Service::Heartbeat, ic_services::heartbeat::Heartbeat::new());
    let (_t, ts) = g.open_endpoint(
        Service::Timesync,
        ic_services::timesync::TimeSync::new(Clock::default()),
    );
    wait_until("three heartbeats", || g.ics.heartbeat().answers >= 3);
    assert!(g.ics.heartbeat().alive);
    assert!(hb.lock().unwrap().service().count() >= 3);
    wait_until("a sync and two samples", || {
        ts.lock().unwrap().service().clock().samples.len() >= 3
    });
    let samples = ts.lock().unwrap().service().clock().samples.clone();
    assert!(
        samples[0].is_sync(),
        "first push is a SYNC: {:?}",
        samples[0]
    );
    assert!(samples[1].is_sample());
    assert_eq!(samples[0].host_time, WALL);
    assert_eq!(samples[0].reference_time, Some(REF));
    let last = g.ics.last_time_sync().unwrap();
    assert_eq!(last.message_version, "4.0");
}

#[test]
fn shutdown_requests_carry_kind_and_force() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(
        Service::Shutdown,
        ic_services::shutdown::Shutdown::new(Decider {
            accept: true,
            ..Decider::default()
        }),
    );
    let req = |kind, force| ShutdownRequest {
        kind,
        force,
        message: "bye".into(),
    };
    g.ics
        .shutdown(&req(ShutdownKind::PowerOff, false), T)
        .unwrap();
    g.ics.shutdown(&req(ShutdownKind::Reboot, true), T).unwrap();
    {
        let e = ep.lock().unwrap();
        let seen = &e.service().handler().seen;
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].kind, seen[0].force),
            (ShutdownKind::PowerOff, false)
        );
        assert_eq!((seen[1].kind, seen[1].force), (ShutdownKind::Reboot, true));
        assert_eq!(seen[1].timeout_seconds, 5);
    }
    ep.lock().unwrap().service_mut().handler_mut().accept = false;
    let e = g
        .ics
        .shutdown(&req(ShutdownKind::PowerOff, false), T)
        .unwrap_err();
    assert!(
        matches!(
            e,
            IcError::GuestStatus {
                service: Service::Shutdown,
                status: 0x8000_4005,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("E_FAIL"));
}

#[test]
fn time_sync_on_demand() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(
        Service::Timesync,
        ic_services::timesync::TimeSync::new(Clock::default()),
    );
    let rep = g.ics.time_sync(TimeSyncMode::Sample, T).unwrap();
    assert_eq!(rep.parent_time, WALL);
    assert_eq!(rep.reference_time, Some(REF));
    assert_eq!(rep.status, 0);
    let s = ep.lock().unwrap().service().last_sample().unwrap();
    assert!(s.is_sample());
    assert_eq!(s.host_time, WALL);
}

#[test]
fn time_sync_v3_layout_when_the_guest_wants_3_0() {
    let mut g = Guest::new();
    const V3: ServiceVersions = ServiceVersions {
        framework: &[IcVersion::new(3, 0)],
        message: &[IcVersion::new(3, 0)],
    };
    let ep = Arc::new(Mutex::new(Endpoint::with_versions(
        ic_services::timesync::TimeSync::new(Clock::default()),
        V3,
    )));
    let e2 = Arc::clone(&ep);
    let _r = g.open(
        Service::Timesync,
        Box::new(move |req, out| {
            out.resize(req.len(), 0);
            e2.lock().unwrap().handle(req, out).is_ok()
        }),
    );
    wait_ready(&g.ics, Service::Timesync);
    let rep = g.ics.time_sync(TimeSyncMode::Sync, T).unwrap();
    assert_eq!(rep.message_version, "3.0");
    assert_eq!(rep.reference_time, None);
    let s = ep.lock().unwrap().service().last_sample().unwrap();
    assert!(s.is_sync());
    assert_eq!(s.host_time, WALL);
    assert_eq!(s.reference_time, None);
}

#[test]
fn kvp_set_get_enumerate_delete() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(Service::Kvp, ic_services::kvp::Kvp::new(Store::default()));
    let ext = KvpPool::EXTERNAL;
    g.ics
        .kvp_set(
            ext,
            "VirtualMachineName",
            &HostKvpValue::String("hvkit-vm".into()),
            T,
        )
        .unwrap();
    g.ics
        .kvp_set(ext, "Answer", &HostKvpValue::U32(42), T)
        .unwrap();
    g.ics
        .kvp_set(
            KvpPool::GUEST,
            "Other",
            &HostKvpValue::String("x".into()),
            T,
        )
        .unwrap();
    assert_eq!(
        g.ics.kvp_get(ext, "VirtualMachineName", T).unwrap(),
        HostKvpValue::String("hvkit-vm".into())
    );
    assert_eq!(
        g.ics.kvp_get(ext, "Answer", T).unwrap(),
        HostKvpValue::String("42".into())
    );
    let items = g.ics.kvp_enumerate(ext, T).unwrap();
    assert_eq!(
        items.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec!["Answer", "VirtualMachineName"]
    );
    g.ics.kvp_delete(ext, "Answer", T).unwrap();
    assert_eq!(g.ics.kvp_enumerate(ext, T).unwrap().len(), 1);
    assert!(ep
        .lock()
        .unwrap()
        .service()
        .provider()
        .map
        .contains_key(&(1, "Other".into())));
    // A key the guest does not have: its failure status comes back.
    let e = g.ics.kvp_get(ext, "Missing", T).unwrap_err();
    assert!(
        matches!(
            e,
            IcError::GuestStatus {
                service: Service::Kvp,
                ..
            }
        ),
        "{e}"
    );
    // Keys that cannot fit are refused before anything is sent.
    let long = "k".repeat(300);
    assert!(matches!(
        g.ics.kvp_get(ext, &long, T),
        Err(IcError::Invalid(_))
    ));
}

#[test]
fn kvp_enumerates_the_guests_auto_pool() {
    let mut g = Guest::new();
    static AUTO: [(KvpPool, &str, &str); 2] = [
        (KvpPool::AUTO, "FullyQualifiedDomainName", "guest.example"),
        (KvpPool::AUTO, "OSName", "hvkit test guest"),
    ];
    let (_r, _ep) = g.open_endpoint(
        Service::Kvp,
        ic_services::kvp::Kvp::new(StaticKvp { entries: &AUTO }),
    );
    let items = g.ics.kvp_enumerate(KvpPool::AUTO, T).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[1].key, "OSName");
    assert_eq!(
        items[1].value,
        HostKvpValue::String("hvkit test guest".into())
    );
    assert!(g
        .ics
        .kvp_enumerate(KvpPool::EXTERNAL, T)
        .unwrap()
        .is_empty());
}

#[test]
fn vss_freeze_thaw_and_dm_info() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(Service::Vss, ic_services::vss::Vss::new(Freezer::default()));
    let op = |s| parse_vss_operation(s).unwrap();
    g.ics.vss(op("freeze"), T).unwrap();
    assert!(ep.lock().unwrap().service().frozen());
    g.ics.vss(op("thaw"), T).unwrap();
    assert!(!ep.lock().unwrap().service().frozen());
    let r = g.ics.vss(op("hot-backup"), T).unwrap();
    assert_eq!(r.flags, ic_services::vss::VssBody::HBU_NO_AUTO_RECOVERY);
    assert_eq!(g.ics.vss(op("get-dm-info"), T).unwrap().flags, 0);
    let f = ep.lock().unwrap();
    assert_eq!(
        (f.service().handler().freezes, f.service().handler().thaws),
        (1, 1)
    );
    assert!(parse_vss_operation("melt").is_err());
}

#[test]
fn file_copy_in_fragments() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(Service::Fcopy, fcopy::FileCopy::new(Sink::default()));
    let data: Vec<u8> = (0..15_000u32).map(|i| (i % 251) as u8).collect();
    let rep = g
        .ics
        .copy_file(
            &FileCopy {
                file_name: "hello.bin".into(),
                path: "/tmp/in".into(),
                data: data.clone(),
                overwrite: true,
                create_path: true,
            },
            T,
        )
        .unwrap();
    assert_eq!((rep.bytes, rep.fragments), (15_000, 3));
    let e = ep.lock().unwrap();
    let s = e.service().sink();
    assert_eq!((s.name.as_str(), s.path.as_str()), ("hello.bin", "/tmp/in"));
    assert_eq!(s.flags, 3);
    assert_eq!(s.size, 15_000);
    assert_eq!(s.data, data);
    assert!(s.complete && !s.cancelled);
}

#[test]
fn file_copy_errors_cancel() {
    let mut g = Guest::new();
    let (_r, ep) = g.open_endpoint(
        Service::Fcopy,
        fcopy::FileCopy::new(Sink {
            fail_write: Some(2),
            ..Sink::default()
        }),
    );
    let req = FileCopy {
        file_name: "f".into(),
        path: "/".into(),
        data: vec![7; 20_000],
        overwrite: false,
        create_path: false,
    };
    let e = g.ics.copy_file(&req, T).unwrap_err();
    assert!(
        matches!(
            e,
            IcError::GuestStatus {
                status: 0x8007_0070,
                ..
            }
        ),
        "{e}"
    );
    assert!(ep.lock().unwrap().service().sink().cancelled);
    ep.lock().unwrap().service_mut().sink_mut().refuse_start = true;
    let e = g.ics.copy_file(&req, T).unwrap_err();
    assert!(
        matches!(
            e,
            IcError::GuestStatus {
                status: 0x8007_0050,
                ..
            }
        ),
        "{e}"
    );
    let empty_name = FileCopy {
        file_name: String::new(),
        ..req
    };
    assert!(matches!(
        g.ics.copy_file(&empty_name, T),
        Err(IcError::Invalid(_))
    ));
}

#[test]
fn malformed_and_mistyped_answers() {
    let mut g = Guest::new();
    let ep = Arc::new(Mutex::new(Endpoint::new(ic_services::vss::Vss::new(
        Freezer::default(),
    ))));
    let e2 = Arc::clone(&ep);
    let mode = Arc::new(Mutex::new(0u8));
    let m2 = Arc::clone(&mode);
    let _r = g.open(
        Service::Vss,
        Box::new(move |req, out| {
            out.resize(req.len(), 0);
            e2.lock().unwrap().handle(req, out).unwrap();
            match *m2.lock().unwrap() {
                // Garbage, then nothing.
                1 => {
                    out.clear();
                    out.extend_from_slice(b"not an IC message");
                }
                // The right framing, the wrong message type.
                2 => out[12] = IcMessageType::HEARTBEAT.get() as u8,
                // Not flagged as a response.
                3 => out[25] = 0x3,
                _ => {}
            }
            true
        }),
    );
    wait_ready(&g.ics, Service::Vss);
    let op = parse_vss_operation("freeze").unwrap();
    let short = Duration::from_millis(150);
    *mode.lock().unwrap() = 1;
    assert_eq!(
        g.ics.vss(op, short).unwrap_err(),
        IcError::Timeout(Service::Vss)
    );
    *mode.lock().unwrap() = 2;
    let e = g.ics.vss(op, T).unwrap_err();
    assert!(matches!(e, IcError::BadReply { .. }), "{e}");
    *mode.lock().unwrap() = 3;
    assert_eq!(
        g.ics.vss(op, short).unwrap_err(),
        IcError::Timeout(Service::Vss)
    );
    let c = g.ics.channel_status(Service::Vss).counters;
    assert_eq!(c.malformed, 2);
    *mode.lock().unwrap() = 0;
    g.ics.vss(op, T).unwrap();
}

#[test]
fn closing_the_channel_fails_the_outstanding_request() {
    let mut g = Guest::new();
    let r = g.open(Service::Kvp, {
        let mut ep = Endpoint::new(ic_services::kvp::Kvp::new(Store::default()));
        Box::new(move |req, out| {
            out.clear();
            out.extend_from_slice(req);
            let h = ep.handle_in_place(out).unwrap();
            // Answer the negotiation only.
            h.message_type == IcMessageType::NEGOTIATE
        })
    });
    wait_ready(&g.ics, Service::Kvp);
    let ics = g.ics.clone();
    let t = std::thread::spawn(move || ics.kvp_get(KvpPool::EXTERNAL, "k", T));
    wait_until("the request to go out", || {
        g.ics.channel_status(Service::Kvp).counters.requests >= 2
    });
    g.close(&r);
    assert_eq!(t.join().unwrap(), Err(IcError::Closed(Service::Kvp)));
    assert_eq!(g.ics.channel_status(Service::Kvp).state, "closed");
    // After a reset the server forgets the connection; the IC is closed too.
    g.server.reset();
    assert_eq!(g.ics.channel_status(Service::Kvp).state, "closed");
}

#[test]
fn ic_messages_are_traced_decoded() {
    let mut g = Guest::new();
    let (_r, _ep) = g.open_endpoint(Service::Heartbeat, ic_services::heartbeat::Heartbeat::new());
    g.ics.heartbeat_now(T).unwrap();
    let lines = g.trace.lines();
    let ic: Vec<_> = lines.iter().filter(|l| l["kind"] == "ic").collect();
    let neg = ic
        .iter()
        .find(|l| l["type"] == "IC_NEGOTIATE" && l["dir"] == "h2g")
        .unwrap();
    assert_eq!(neg["framework_versions"], serde_json::json!(["3.0", "1.0"]));
    assert_eq!(neg["service"], "heartbeat");
    let answer = ic
        .iter()
        .find(|l| l["type"] == "IC_HEARTBEAT" && l["dir"] == "g2h")
        .unwrap();
    assert_eq!(answer["seq_num"], 1);
    assert_eq!(answer["status_name"], "S_OK");
    assert_eq!(answer["icflags"], 5);
    let (name, v) = trace::describe(b"short");
    assert_eq!(name, "IC_MALFORMED");
    assert!(v["error"].as_str().unwrap().contains("too short"));
}

proptest! {
    #[test]
    fn describe_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = trace::describe(&bytes);
    }

    #[test]
    fn describe_decodes_any_body_behind_valid_framing(
        ty in 0u16..10,
        body in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut buf = vec![0u8; framing::BODY_OFFSET + body.len()];
        let hdr = framing::IcHeader {
            message_type: IcMessageType::new(ty),
            message_version: IcVersion::new(4, 0),
            ..framing::IcHeader::default()
        };
        framing::encode(&mut buf, &hdr, &body).unwrap();
        let (name, v) = trace::describe(&buf);
        prop_assert!(name.starts_with("IC_"));
        prop_assert_eq!(v["body_len"].as_u64(), Some(body.len() as u64));
    }
}

#[test]
fn loopback_guest_without_vmbus() {
    let ics = HostIcs::new(config()).unwrap();
    let mut ep = Endpoint::new(ic_services::vss::Vss::new(Freezer::default()));
    let answers = Arc::new(Mutex::new(1usize));
    let a2 = Arc::clone(&answers);
    ics.open_loopback(
        Service::Vss,
        Box::new(move |_tid, req| {
            let mut out = vec![0u8; req.len()];
            ep.handle(req, &mut out).unwrap();
            vec![out; *a2.lock().unwrap()]
        }),
    );
    assert_eq!(ics.channel_status(Service::Vss).state, "ready");
    assert_eq!(ics.channel_status(Service::Vss).relid, Some(0));
    let op = parse_vss_operation("freeze").unwrap();
    ics.vss(op, Duration::ZERO).unwrap();
    // A duplicate answer is counted as unexpected, not taken for the next request.
    *answers.lock().unwrap() = 2;
    ics.vss(op, Duration::ZERO).unwrap();
    assert_eq!(ics.channel_status(Service::Vss).counters.unexpected, 1);
    // No answer: the request times out (at once with a zero timeout).
    *answers.lock().unwrap() = 0;
    assert_eq!(
        ics.vss(op, Duration::ZERO),
        Err(IcError::Timeout(Service::Vss))
    );
    ics.close_link(Service::Vss);
    assert_eq!(ics.vss(op, T).unwrap_err(), IcError::NotOpen(Service::Vss));
    ics.stop();
}

#[test]
fn exercise_script_drives_every_on_demand_service() {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(20);
    cfg.exercise = true;
    let mut g = Guest::with(cfg, None);
    let mut store = Store::default();
    store
        .map
        .insert((2, "OSName".into()), "hvkit test guest".into());
    let (_k, kvp) = g.open_endpoint(Service::Kvp, ic_services::kvp::Kvp::new(store));
    let (_v, vss) = g.open_endpoint(Service::Vss, ic_services::vss::Vss::new(Freezer::default()));
    let (_f, fc) = g.open_endpoint(Service::Fcopy, fcopy::FileCopy::new(Sink::default()));
    wait_until("kvp, vss and fcopy scripts", || {
        let r = g.ics.exercise_report();
        r.kvp.is_some() && r.vss.is_some() && r.fcopy.is_some()
    });
    let r = g.ics.exercise_report();
    assert_eq!(r.shutdown, None, "shutdown waits for its channel");
    for step in [&r.kvp, &r.vss, &r.fcopy] {
        let step = step.as_ref().unwrap();
        assert_eq!((step.open, step.error.as_deref()), (1, None), "{step:?}");
    }
    assert_eq!(r.kvp.unwrap().detail.as_deref(), Some("auto_pool_keys=1"));
    assert_eq!(
        r.fcopy.unwrap().detail.as_deref(),
        Some("bytes=8192 fragments=2")
    );
    {
        let k = kvp.lock().unwrap();
        // Set, read back, then deleted again.
        assert!(!k
            .service()
            .provider()
            .map
            .contains_key(&(0, exercise::EXERCISE_KEY.into())));
        let v = vss.lock().unwrap();
        assert_eq!(
            (v.service().handler().freezes, v.service().handler().thaws),
            (1, 1)
        );
        let f = fc.lock().unwrap();
        let sink = f.service().sink();
        assert_eq!(sink.name, exercise::EXERCISE_FILE);
        assert_eq!(sink.path, exercise::EXERCISE_DIR);
        assert_eq!(sink.data, exercise::exercise_file());
        assert!(sink.complete);
    }
    // The shutdown channel, opened last, gets the power-off request.
    let (_s, sd) = g.open_endpoint(
        Service::Shutdown,
        ic_services::shutdown::Shutdown::new(Decider {
            accept: true,
            ..Decider::default()
        }),
    );
    wait_until("the shutdown script", || {
        g.ics.exercise_report().shutdown.is_some()
    });
    assert_eq!(g.ics.exercise_report().shutdown.unwrap().error, None);
    let seen = sd.lock().unwrap().service().handler().seen.clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].kind, seen[0].force),
        (ShutdownKind::PowerOff, false)
    );
    // Once per open: nothing runs twice.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vss.lock().unwrap().service().handler().freezes, 1);
    assert_eq!(g.ics.status().exercise.kvp.unwrap().open, 1);
}
