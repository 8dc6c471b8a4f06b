//! The driver against a scripted VMBus host living behind the `Platform` (its hypercall and MSR
//! hooks), over real page memory: the full guest flow end to end.
extern crate std;
use super::*;
use crate::channel::Received;
use crate::guid::class;
use crate::message::{
    ChannelMessage, GpadlCreated, GpadlTorndown, MessageBuf, OfferChannel, OpenResult,
    RescindChannelOffer, VersionResponse,
};
use crate::ring::{OutgoingPacket, RingReceiver, RingSender};
use core::cell::RefCell;
use hypercall::abi::{CallCode, Control, HypercallResult, PostMessageInput, SignalEventInput};
use hypercall::cpuid::CpuidResult;
use hypercall::hv::SintConfig;
use hypercall::msr::{self, GuestOsId};
use hypercall::page::Page;
use hypercall::synic::{slot_offset, HvMessage};
use hypercall::testing::ScriptedPlatform;
use std::boxed::Box;
use std::collections::VecDeque;
use std::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

fn leak_page(gpa: u64) -> PageRef<'static> {
    PageRef::new(Box::leak(Box::new(Page::new())).words(), gpa).unwrap()
}

#[derive(Default)]
struct Model {
    max_version: Version,
    reject_connection_4: bool,
    /// Every InitiateContact post fails with INVALID_CONNECTION_ID (no message is ever sent).
    reject_contacts: bool,
    /// RequestOffers posts fail with INVALID_PARAMETER.
    fail_request_offers: bool,
    /// An AllOffersDelivered goes out ahead of the UnloadResponse.
    noise_before_unload_response: bool,
    silent: bool,
    refuse_open: bool,
    offers: Vec<OfferChannel>,
    queue: VecDeque<MessageBuf>,
    posted: Vec<(u32, Vec<u8>)>,
    signals: Vec<u32>,
    gpadl_pfns: Vec<(u32, Vec<u64>)>,
    /// (handle, relid, pfns expected, pfns so far)
    gpadl_in_progress: Option<(u32, u32, usize, Vec<u64>)>,
}

struct TestHost {
    inner: ScriptedPlatform,
    simp: PageRef<'static>,
    input: PageRef<'static>,
    model: RefCell<Model>,
}

const MSG_CONN: u32 = 0x55;

impl TestHost {
    fn new(max_version: Version) -> Self {
        Self {
            inner: ScriptedPlatform::default(),
            simp: leak_page(0x10_1000),
            input: leak_page(0x10_3000),
            model: RefCell::new(Model {
                max_version,
                offers: std::vec![
                    OfferChannel::new(class::SCSI, class::IDE, 1, 0x2001, 0),
                    OfferChannel::new(class::NETWORK, class::KVP, 2, 0x2002, 0),
                ],
                ..Model::default()
            }),
        }
    }

    fn push(&self, m: MessageBuf) {
        self.model.borrow_mut().queue.push_back(m);
        self.deliver();
    }

    /// Puts the next queued message into SINT2's slot if it is free, with MessagePending when
    /// more wait (fact sheet §4.3).
    fn deliver(&self) {
        let slot = slot_offset(2);
        if self.simp.load_u32(slot) != 0 {
            // Busy: flag MessagePending in the occupying message so the guest writes EOM.
            if !self.model.borrow().queue.is_empty() {
                self.simp.fetch_or_u64(slot, 1 << 40);
            }
            return;
        }
        let mut model = self.model.borrow_mut();
        let Some(m) = model.queue.pop_front() else {
            return;
        };
        let mut msg = HvMessage::new(MessageType::VMBUS, m.as_bytes()).unwrap();
        msg.header
            .message_flags
            .set_message_pending(!model.queue.is_empty());
        self.simp.write_bytes(slot, msg.as_bytes());
    }

    fn on_post(&self, input: &PostMessageInput) -> HvStatus {
        let mut model = self.model.borrow_mut();
        let payload = input.payload().to_vec();
        model.posted.push((input.connection_id, payload.clone()));
        if model.reject_connection_4 && input.connection_id == 4 {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        if model.reject_contacts
            && ChannelMessage::parse(&payload).unwrap().msgtype()
                == ChannelMessageType::INITIATE_CONTACT
        {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        if model.silent {
            return HvStatus::SUCCESS;
        }
        if model.fail_request_offers
            && ChannelMessage::parse(&payload).unwrap().msgtype()
                == ChannelMessageType::REQUEST_OFFERS
        {
            return HvStatus::INVALID_PARAMETER;
        }
        let reply = |model: &mut Model, m: MessageBuf| model.queue.push_back(m);
        match ChannelMessage::parse(&payload).unwrap() {
            ChannelMessage::InitiateContact(ic) => {
                let v = ic.version_requested;
                let ok = v <= model.max_version;
                let conn = if v.uses_msg_conn_id() { MSG_CONN } else { 0 };
                reply(
                    &mut model,
                    MessageBuf::fixed(&VersionResponse::new(ok, 0, conn)),
                );
            }
            ChannelMessage::RequestOffers => {
                for o in model.offers.clone() {
                    reply(&mut model, MessageBuf::fixed(&o));
                }
                reply(
                    &mut model,
                    MessageBuf::header_only(ChannelMessageType::ALL_OFFERS_DELIVERED),
                );
            }
            ChannelMessage::GpadlHeader { header, ranges } => {
                let total = header.total_pfns().unwrap();
                let pfns: Vec<u64> = ranges[8..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                model.gpadl_in_progress = Some((header.gpadl, header.child_relid, total, pfns));
            }
            ChannelMessage::GpadlBody { body, pfns } => {
                let g = model.gpadl_in_progress.as_mut().unwrap();
                assert_eq!(g.0, body.gpadl);
                g.3.extend(pfns.iter());
            }
            ChannelMessage::OpenChannel(o) => {
                let status = u32::from(model.refuse_open) * 0xC000_0001;
                reply(
                    &mut model,
                    MessageBuf::fixed(&OpenResult::new(o.child_relid, o.open_id, status)),
                );
            }
            ChannelMessage::GpadlTeardown(t) => {
                reply(&mut model, MessageBuf::fixed(&GpadlTorndown::new(t.gpadl)));
            }
            ChannelMessage::Unload => {
                if model.noise_before_unload_response {
                    reply(
                        &mut model,
                        MessageBuf::header_only(ChannelMessageType::ALL_OFFERS_DELIVERED),
                    );
                }
                reply(
                    &mut model,
                    MessageBuf::header_only(ChannelMessageType::UNLOAD_RESPONSE),
                );
            }
            _ => {}
        }
        if let Some((handle, relid, total, pfns)) = model.gpadl_in_progress.take() {
            if pfns.len() == total {
                reply(
                    &mut model,
                    MessageBuf::fixed(&GpadlCreated::new(relid, handle, 0)),
                );
                model.gpadl_pfns.push((handle, pfns));
            } else {
                model.gpadl_in_progress = Some((handle, relid, total, pfns));
            }
        }
        HvStatus::SUCCESS
    }

    fn posted_types(&self) -> Vec<(u32, ChannelMessageType)> {
        self.model
            .borrow()
            .posted
            .iter()
            .map(|(c, p)| (*c, ChannelMessage::parse(p).unwrap().msgtype()))
            .collect()
    }
}

impl Platform for TestHost {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        self.inner.cpuid(leaf, subleaf)
    }
    fn rdmsr(&self, msr: u32) -> u64 {
        self.inner.rdmsr(msr)
    }
    fn wrmsr(&self, msr: u32, value: u64) {
        self.inner.wrmsr(msr, value);
        if msr == msr::EOM {
            self.deliver();
        }
    }
    fn rdtsc(&self) -> u64 {
        self.inner.rdtsc()
    }
    fn hypercall(&self, _page: &PageRef<'_>, control: u64, rdx: u64, _r8: u64) -> u64 {
        let control = Control::from_bits(control);
        let status = match control.call_code() {
            CallCode::POST_MESSAGE => {
                assert_eq!(rdx, self.input.gpa());
                let mut bytes = [0u8; 256];
                self.input.read_bytes(0, &mut bytes);
                self.on_post(&PostMessageInput::read_from_bytes(&bytes).unwrap())
            }
            CallCode::SIGNAL_EVENT => {
                let s = SignalEventInput::from_fast(rdx);
                self.model.borrow_mut().signals.push(s.connection_id);
                HvStatus::SUCCESS
            }
            _ => HvStatus::INVALID_HYPERCALL_CODE,
        };
        self.deliver();
        HypercallResult::with(status, 0).into_bits()
    }
}

struct Guest {
    host: &'static TestHost,
    hv: &'static Hypervisor<'static, TestHost>,
    synic: &'static SynIc<'static, TestHost>,
}

fn guest(max_version: Version) -> Guest {
    let host: &'static TestHost = Box::leak(Box::new(TestHost::new(max_version)));
    let hv = Hypervisor::init(
        host,
        GuestOsId::open_source_id(0x7F, 1, 0),
        leak_page(0x10_0000),
    )
    .unwrap();
    let synic = SynIc::enable(
        host,
        host.simp,
        leak_page(0x10_2000),
        &[(2, SintConfig::polled(0xF3))],
    )
    .unwrap();
    Guest {
        host,
        hv: Box::leak(Box::new(hv)),
        synic: Box::leak(Box::new(synic)),
    }
}

fn ring_pages(n: usize) -> &'static [PageRef<'static>] {
    let v: Vec<PageRef<'static>> = (0..n)
        .map(|i| leak_page(0x20_0000 + i as u64 * 4096))
        .collect();
    Box::leak(v.into_boxed_slice())
}

// The whole flow: connect with fallback (5.3 refused), offers, GPADL, open, request/completion
// through the rings with signals, channel interrupts, close, unload.
#[test]
fn full_flow() {
    let g = guest(Version::WIN10_V5_2);
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    assert_eq!(bus.connect(100), Ok(Version::WIN10_V5_2));
    bus.wait_offers(100).unwrap();
    assert_eq!(bus.client().channels().len(), 2);
    assert_eq!(
        g.host.posted_types(),
        [
            (4, ChannelMessageType::INITIATE_CONTACT),
            (4, ChannelMessageType::INITIATE_CONTACT),
            (MSG_CONN, ChannelMessageType::REQUEST_OFFERS),
        ]
    );

    // 40 pages: the GPADL takes a header and a body message.
    let pages = ring_pages(40);
    let (mut ch, ring) = bus.open_channel(1, pages, 20, 0, [0; 120], 100).unwrap();
    assert_eq!(ring, 0xE1E10);
    let expect_pfns: Vec<u64> = pages.iter().map(|p| p.gpn()).collect();
    assert_eq!(g.host.model.borrow().gpadl_pfns, [(ring, expect_pfns)]);
    let posted = g.host.model.borrow().posted.clone();
    let ChannelMessage::OpenChannel(o) = ChannelMessage::parse(&posted.last().unwrap().1).unwrap()
    else {
        panic!()
    };
    assert_eq!((o.downstream_ring_page_offset, o.ring_gpadl), (20, ring));
    assert_eq!(ch.connection_id(), 0x2001);

    // Guest -> host request.
    let (tid, sig) = ch.send_request(&[b"ping"]).unwrap();
    assert_eq!(tid, 1);
    bus.signal_if(ch.connection_id(), sig).unwrap();
    assert_eq!(g.host.model.borrow().signals, [0x2001]);
    // The host side of the same rings (its view: it reads our outbound, writes our inbound).
    let out_ring = PageRefRing::new(&pages[..20]).unwrap();
    let in_ring = PageRefRing::new(&pages[20..]).unwrap();
    let mut host_rx = RingReceiver::new(out_ring).unwrap();
    let mut host_tx = RingSender::new(in_ring).unwrap();
    let mut buf = [0u8; 256];
    let p = host_rx.try_read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(&p.payload()[..4], b"ping");
    assert!(p.descriptor().completion_requested());
    let host_tid = p.transaction_id();
    let _ = host_rx.commit().unwrap();
    let sig = host_tx
        .try_write(&OutgoingPacket::completion(host_tid, &[b"pong"]))
        .unwrap();
    assert!(sig.needed());
    // The host signals through SIEF slot 2, bit relid.
    g.synic.siefp().fetch_or_u64(slot_offset(2), 1 << 1);
    let mut seen = Vec::new();
    assert_eq!(bus.take_channel_interrupts(|r| seen.push(r)), Ok(1));
    assert_eq!(seen, [1]);
    let mut rbuf = [0u8; 256];
    match ch.recv(&mut rbuf).unwrap().unwrap() {
        Received::Completion {
            transaction_id,
            packet,
        } => {
            assert_eq!(transaction_id, tid);
            assert_eq!(&packet.payload()[..4], b"pong");
        }
        other => panic!("{other:?}"),
    }
    assert!(ch.pending().is_empty());
    let _ = ch.commit_reads().unwrap();
    // A completion nobody asked for is an error (the packet is consumed).
    let _ = host_tx
        .try_write(&OutgoingPacket::completion(77, &[]))
        .unwrap();
    assert_eq!(
        ch.recv(&mut rbuf),
        Err(ChannelError::UnknownTransaction(77))
    );
    assert_eq!(ch.recv(&mut rbuf), Ok(None));

    bus.close_channel(1, 100).unwrap();
    let types = g.host.posted_types();
    let n = types.len();
    assert_eq!(
        &types[n - 2..],
        [
            (MSG_CONN, ChannelMessageType::CLOSE_CHANNEL),
            (MSG_CONN, ChannelMessageType::GPADL_TEARDOWN)
        ]
    );
    bus.unload(100).unwrap();
    assert_eq!(
        bus.client().state(),
        crate::client::ConnectionState::Disconnected
    );
    // Reconnect after unload (kexec).
    assert_eq!(bus.connect(100), Ok(Version::WIN10_V5_2));
}

// fact sheet §5.5: HvPostMessage INVALID_CONNECTION_ID on connection 4 skips every 5.x version;
// 4.1 goes to connection 1.
#[test]
fn connection_4_rejected() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().reject_connection_4 = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    assert_eq!(bus.connect(100), Ok(Version::WIN10_V4_1));
    let types = g.host.posted_types();
    assert_eq!(types.iter().filter(|t| t.0 == 4).count(), 4);
    assert_eq!(types[4], (1, ChannelMessageType::INITIATE_CONTACT));
    assert_eq!(types[5], (1, ChannelMessageType::REQUEST_OFFERS));
}

#[test]
fn silent_host_times_out() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().silent = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    assert_eq!(bus.connect(50), Err(DriverError::Timeout));
}

#[test]
fn refused_everywhere() {
    let g = guest(Version::new(1, 0));
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    assert_eq!(bus.connect(100), Err(DriverError::ConnectFailed));
    assert_eq!(g.host.posted_types().len(), Version::LINUX_ORDER.len());
}

// A host that refuses every InitiateContact at the hypercall sends no message at all: the whole
// version list is walked inside the posting, and ConnectFailed must still come out.
#[test]
fn every_contact_post_refused() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().reject_contacts = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    assert_eq!(bus.connect(100), Err(DriverError::ConnectFailed));
    assert_eq!(g.host.posted_types().len(), Version::LINUX_ORDER.len());
    assert_eq!(
        bus.client().state(),
        crate::client::ConnectionState::Disconnected
    );
}

// Rescind while open through the driver: close, teardown, then RELID_RELEASED; a garbage
// message from the host is an error and polling continues.
#[test]
fn rescind_and_garbage() {
    let g = guest(Version::WIN10_V5_3);
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.connect(100).unwrap();
    bus.wait_offers(100).unwrap();
    let pages = ring_pages(4);
    let (_ch, _ring) = bus.open_channel(2, pages, 2, 0, [0; 120], 100).unwrap();
    g.host
        .push(MessageBuf::from_bytes(&[99, 0, 0, 0, 0, 0, 0, 0]).unwrap());
    g.host.push(MessageBuf::fixed(&RescindChannelOffer::new(2)));
    assert!(matches!(
        bus.poll(),
        Err(DriverError::Client(ClientError::Parse(_)))
    ));
    assert_eq!(
        bus.poll(),
        Ok(Some(Polled::Event(Event::Rescinded {
            relid: 2,
            was_open: true
        })))
    );
    // The close and teardown went out; the host's GPADL_TORNDOWN leads to RELID_RELEASED.
    assert!(matches!(
        bus.poll(),
        Ok(Some(Polled::Event(Event::GpadlTorndown { relid: 2, .. })))
    ));
    bus.flush().unwrap();
    let types = g.host.posted_types();
    let n = types.len();
    assert_eq!(
        types[n - 3..].iter().map(|t| t.1).collect::<Vec<_>>(),
        [
            ChannelMessageType::CLOSE_CHANNEL,
            ChannelMessageType::GPADL_TEARDOWN,
            ChannelMessageType::RELID_RELEASED
        ]
    );
    assert!(bus.client().channel(2).is_none());
    // A non-VMBus message in the slot is handed back.
    let timer = HvMessage::new(MessageType::TIMER_EXPIRED, &[0; 24]).unwrap();
    g.synic.simp().write_bytes(slot_offset(2), timer.as_bytes());
    assert!(
        matches!(bus.poll(), Ok(Some(Polled::Foreign(m))) if m.header.message_type == MessageType::TIMER_EXPIRED)
    );
    assert_eq!(bus.poll(), Ok(None));
}

// Interrupt mode: SINT2 with a vector; the handler's work is `service`, which drains the slot
// (including queued messages behind MessagePending) and the channel flags, and keeps going after
// a bad message.
#[test]
fn interrupt_mode_service() {
    let g = guest(Version::WIN10_V5_3);
    g.synic
        .configure_sint(2, SintConfig::interrupt(0xF3))
        .unwrap();
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.client_mut().connect().unwrap();
    let mut events = Vec::new();
    let mut errors = 0;
    // The InitiateContact goes out; the host's answer and the offers arrive.
    let n = bus.service(
        |r| match r {
            Ok(Polled::Event(e)) => events.push(e),
            Ok(_) => panic!(),
            Err(_) => errors += 1,
        },
        |_| panic!("no channel flags yet"),
    );
    assert_eq!(
        n,
        Serviced {
            messages: 4,
            channels: 0,
            more: false
        }
    );
    assert_eq!(errors, 0);
    assert!(matches!(events[0], Event::Connected { .. }));
    assert_eq!(events[3], Event::AllOffersDelivered);

    g.host
        .push(MessageBuf::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0]).unwrap()); // truncated offer
    g.host.push(MessageBuf::fixed(&RescindChannelOffer::new(1)));
    g.synic.siefp().fetch_or_u64(slot_offset(2), (1 << 2) | 1);
    let mut relids = Vec::new();
    let mut events = Vec::new();
    let n = bus.service(
        |r| match r {
            Ok(Polled::Event(e)) => events.push(e),
            _ => errors += 1,
        },
        |r| relids.push(r),
    );
    assert_eq!((n.messages, n.channels, n.more, errors), (2, 1, false, 1));
    assert_eq!(
        events,
        [Event::Rescinded {
            relid: 1,
            was_open: false
        }]
    );
    assert_eq!(relids, [2], "flag 0 is reserved and skipped");
    assert_eq!(
        g.host.posted_types().last(),
        Some(&(MSG_CONN, ChannelMessageType::RELID_RELEASED))
    );
}

// A refused open gives Refused and tears the ring GPADL down again.
#[test]
fn refused_open_tears_down_the_ring() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().refuse_open = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.connect(100).unwrap();
    bus.wait_offers(100).unwrap();
    let pages = ring_pages(2 + 2);
    assert_eq!(
        bus.open_channel(1, pages, 2, 0, [0; 120], 100).err(),
        Some(DriverError::Refused(0xC000_0001))
    );
    assert_eq!(
        g.host.posted_types().last(),
        Some(&(MSG_CONN, ChannelMessageType::GPADL_TEARDOWN))
    );
    assert!(matches!(
        bus.poll(),
        Ok(Some(Polled::Event(Event::GpadlTorndown {
            relid: 1,
            gpadl: 0xE1E10
        })))
    ));
    assert!(bus.client().gpadls().is_empty());
    assert_eq!(
        bus.client().channel(1).unwrap().state,
        crate::client::ChannelState::Offered
    );
}

fn interrupt_guest(max_version: Version) -> Guest {
    let g = guest(max_version);
    g.synic
        .configure_sint(2, SintConfig::interrupt(0xF3))
        .unwrap();
    g
}

/// Everything one `service` call handed out.
fn serviced(bus: &mut VmBus<'_, TestHost>) -> (Serviced, Vec<Result<Polled, DriverError>>) {
    let mut got = Vec::new();
    let s = bus.service(|r| got.push(r), |_| {});
    (s, got)
}

fn events_of(got: &[Result<Polled, DriverError>]) -> Vec<Event> {
    got.iter()
        .filter_map(|r| match r {
            Ok(Polled::Event(e)) => Some(*e),
            _ => None,
        })
        .collect()
}

// Events raised while posting (no host message, so no interrupt) are visible at once: flush and
// begin_connect report them, service hands them out with an empty slot, in order, and a version
// list longer than the queue pauses posting instead of dropping anything.
#[test]
fn events_raised_while_posting_are_kept_and_visible() {
    static LONG: [Version; 20] = [Version::WIN10_V5_3; 20];
    let g = interrupt_guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().reject_contacts = true;
    let mut bus: VmBus<'_, TestHost> = VmBus::new(
        g.hv,
        g.synic,
        g.host.input,
        ClientConfig {
            versions: &LONG,
            ..ClientConfig::default()
        },
    );
    let pending = bus.begin_connect().unwrap();
    assert_eq!(bus.events_waiting(), EVENT_QUEUE_LEN);
    assert_eq!(
        g.host.posted_types().len(),
        EVENT_QUEUE_LEN,
        "paused, not dropped"
    );
    assert!(bus.has_outgoing());
    assert!(bus.work_waiting());
    let (s, got) = serviced(&mut bus);
    assert_eq!(
        s,
        Serviced {
            messages: LONG.len(),
            channels: 0,
            more: false
        }
    );
    let events = events_of(&got);
    assert_eq!(events.len(), LONG.len());
    assert!(events[..LONG.len() - 1].iter().all(|e| *e
        == Event::VersionRefused {
            version: Version::WIN10_V5_3
        }));
    assert_eq!(events[LONG.len() - 1], Event::ConnectFailed);
    assert_eq!(g.host.posted_types().len(), LONG.len());
    assert_eq!(
        pending.outcome(&events[LONG.len() - 1]),
        Some(Err(DriverError::ConnectFailed))
    );
    assert_eq!(pending.outcome(&events[0]), None);
    assert!(!bus.work_waiting());
}

// The standard list refused at the hypercall: the whole walk happens in begin_connect's flush;
// take_event hands the events out directly.
#[test]
fn take_event_after_refused_contacts() {
    let g = interrupt_guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().reject_contacts = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.begin_connect().unwrap();
    assert_eq!(bus.events_waiting(), Version::LINUX_ORDER.len());
    assert_eq!(bus.flush(), Ok(Version::LINUX_ORDER.len()));
    let mut events = Vec::new();
    while let Some(e) = bus.take_event() {
        events.push(e);
    }
    assert_eq!(events.len(), Version::LINUX_ORDER.len());
    for (e, v) in events.iter().zip(Version::LINUX_ORDER) {
        if v != Version::WIN8 {
            assert_eq!(*e, Event::VersionRefused { version: v });
        }
    }
    assert_eq!(events.last(), Some(&Event::ConnectFailed));
    assert_eq!(bus.poll(), Ok(None));
}

// service stops at MAX_MESSAGES_PER_SERVICE and says that more is waiting; the next call takes
// the rest and says nothing is left.
#[test]
fn service_reports_more() {
    let g = interrupt_guest(Version::WIN10_V5_3);
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.begin_connect().unwrap();
    let (s, _) = serviced(&mut bus);
    assert!(!s.more);
    let extra = MAX_MESSAGES_PER_SERVICE + 6;
    for _ in 0..extra {
        g.host.push(MessageBuf::header_only(
            ChannelMessageType::ALL_OFFERS_DELIVERED,
        ));
    }
    let (s, got) = serviced(&mut bus);
    assert_eq!((s.messages, s.more), (MAX_MESSAGES_PER_SERVICE, true));
    assert_eq!(events_of(&got).len(), MAX_MESSAGES_PER_SERVICE);
    let (s, got) = serviced(&mut bus);
    assert_eq!((s.messages, s.more), (6, false));
    assert_eq!(events_of(&got).len(), 6);
    // Exactly the bound with nothing behind it: not "more".
    for _ in 0..MAX_MESSAGES_PER_SERVICE {
        g.host.push(MessageBuf::header_only(
            ChannelMessageType::ALL_OFFERS_DELIVERED,
        ));
    }
    let (s, _) = serviced(&mut bus);
    assert_eq!((s.messages, s.more), (MAX_MESSAGES_PER_SERVICE, false));
}

// A post that fails right after a message was handled does not swallow that message's event:
// the event comes first, the error with the next poll.
#[test]
fn failed_post_after_a_message_keeps_its_event() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().fail_request_offers = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.begin_connect().unwrap();
    assert!(matches!(
        bus.poll(),
        Ok(Some(Polled::Event(Event::Connected { .. })))
    ));
    assert_eq!(
        bus.poll(),
        Err(DriverError::Hv(HvError::Status(
            HvStatus::INVALID_PARAMETER
        )))
    );
    assert_eq!(bus.poll(), Ok(None));
}

// While UNLOAD is out, other host messages are consumed and reported as Discarded.
#[test]
fn discarded_while_unloading() {
    let g = guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().noise_before_unload_response = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.connect(100).unwrap();
    bus.wait_offers(100).unwrap();
    let p = bus.begin_unload().unwrap();
    assert_eq!(
        bus.poll(),
        Ok(Some(Polled::Discarded(
            ChannelMessageType::ALL_OFFERS_DELIVERED
        )))
    );
    let Ok(Some(Polled::Event(e))) = bus.poll() else {
        panic!()
    };
    assert_eq!(p.outcome(&e), Some(Ok(())));
}

// The whole control path in interrupt mode with the begin_* forms: each answer comes out of
// service and is recognised by Pending::outcome; nothing spins.
#[test]
fn begin_forms_in_interrupt_mode() {
    let g = interrupt_guest(Version::WIN10_V5_3);
    g.host.model.borrow_mut().refuse_open = true;
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    // Runs the "interrupt handler" and returns the outcome of `p`.
    fn answer(bus: &mut VmBus<'_, TestHost>, p: Pending) -> Option<Result<(), DriverError>> {
        let (_, got) = serviced(bus);
        events_of(&got).iter().find_map(|e| p.outcome(e))
    }
    let p = bus.begin_connect().unwrap();
    assert_eq!(answer(&mut bus, p), Some(Ok(())));
    assert_eq!(bus.client().channels().len(), 2);

    let pages = ring_pages(4);
    let p = bus.begin_create_gpadl(1, pages).unwrap();
    let Pending::GpadlCreate { relid: 1, gpadl } = p else {
        panic!("{p:?}")
    };
    assert_eq!(p.gpadl(), Some(gpadl));
    assert_eq!(answer(&mut bus, p), Some(Ok(())));

    // A refused open leaves the GPADL created, for another try.
    let opening = bus
        .begin_open_channel(1, gpadl, pages, 2, 0, [0; 120])
        .unwrap();
    assert_eq!(
        answer(&mut bus, opening.pending()),
        Some(Err(DriverError::Refused(0xC000_0001)))
    );
    assert_eq!(
        bus.client().gpadl(gpadl).unwrap().state,
        crate::client::GpadlState::Created
    );
    g.host.model.borrow_mut().refuse_open = false;
    let opening = bus
        .begin_open_channel(1, gpadl, pages, 2, 0, [0; 120])
        .unwrap();
    assert_eq!(opening.ring_gpadl(), gpadl);
    assert_eq!(answer(&mut bus, opening.pending()), Some(Ok(())));
    let ch: Channel<PageRefRing<'_, '_>> = opening.into_channel().unwrap();
    assert_eq!(ch.connection_id(), 0x2001);

    let p = bus.begin_close_channel(1).unwrap();
    assert_eq!(
        p,
        Pending::Close {
            relid: 1,
            ring_gpadl: gpadl
        }
    );
    assert_eq!(answer(&mut bus, p), Some(Ok(())));
    assert!(bus.client().gpadl(gpadl).is_none());

    // A second GPADL, torn down explicitly.
    let p = bus.begin_create_gpadl(2, &[0x300u64, 0x301][..]).unwrap();
    assert_eq!(answer(&mut bus, p), Some(Ok(())));
    let Pending::GpadlCreate { gpadl, .. } = p else {
        panic!()
    };
    let p = bus.begin_teardown_gpadl(gpadl).unwrap();
    assert_eq!(answer(&mut bus, p), Some(Ok(())));

    // An open the host never answers, then a rescind: answered with Rescinded.
    g.host.model.borrow_mut().silent = true;
    let p = bus.begin_create_gpadl(2, pages).unwrap();
    g.host.model.borrow_mut().silent = false;
    g.host.push(MessageBuf::fixed(&RescindChannelOffer::new(2)));
    assert_eq!(answer(&mut bus, p), Some(Err(DriverError::Rescinded(2))));

    let p = bus.begin_unload().unwrap();
    assert_eq!(answer(&mut bus, p), Some(Ok(())));
}

#[test]
fn pending_outcomes() {
    let open = Pending::Open {
        relid: 3,
        ring_gpadl: 9,
    };
    let close = Pending::Close {
        relid: 3,
        ring_gpadl: 9,
    };
    let torn = |gpadl| Event::GpadlTorndown { relid: 3, gpadl };
    assert_eq!(
        open.outcome(&Event::OpenResult {
            relid: 3,
            status: 0
        }),
        Some(Ok(()))
    );
    assert_eq!(
        open.outcome(&Event::OpenResult {
            relid: 4,
            status: 0
        }),
        None
    );
    assert_eq!(
        open.outcome(&Event::Rescinded {
            relid: 3,
            was_open: true
        }),
        Some(Err(DriverError::Rescinded(3)))
    );
    assert_eq!(
        open.outcome(&Event::Unloaded),
        Some(Err(DriverError::Client(ClientError::NotConnected)))
    );
    assert_eq!(close.outcome(&torn(9)), Some(Ok(())));
    assert_eq!(close.outcome(&torn(8)), None);
    assert_eq!(
        Pending::GpadlTeardown { gpadl: 9 }.outcome(&torn(9)),
        Some(Ok(()))
    );
    let create = Pending::GpadlCreate { relid: 3, gpadl: 9 };
    assert_eq!(
        create.outcome(&Event::GpadlCreated {
            relid: 3,
            gpadl: 9,
            status: 5
        }),
        Some(Err(DriverError::Refused(5)))
    );
    assert_eq!(Pending::Connect.outcome(&Event::Unloaded), None);
    assert_eq!(Pending::Unload.outcome(&Event::AllOffersDelivered), None);
}

// Staged requests: several requests and plain packets are published by one commit with one
// signal decision; the host sees none of them before.
#[test]
fn staged_requests_commit_once() {
    let g = guest(Version::WIN10_V5_3);
    let mut bus: VmBus<'_, TestHost> =
        VmBus::new(g.hv, g.synic, g.host.input, ClientConfig::default());
    bus.connect(100).unwrap();
    bus.wait_offers(100).unwrap();
    let pages = ring_pages(4);
    let (mut ch, _) = bus.open_channel(1, pages, 2, 0, [0; 120], 100).unwrap();
    let t1 = ch.stage_request(&[b"one"]).unwrap();
    ch.stage(500, &[b"plain"]).unwrap();
    let t2 = ch.stage_request(&[b"two"]).unwrap();
    assert_ne!(t1, t2);
    assert!(ch.has_staged());
    assert_eq!(ch.pending(), [t1, t2]);
    let out_ring = PageRefRing::new(&pages[..2]).unwrap();
    let mut host_rx = RingReceiver::new(out_ring).unwrap();
    let mut buf = [0u8; 256];
    assert!(
        host_rx.try_read_packet(&mut buf).unwrap().is_none(),
        "nothing published yet"
    );
    let sig = ch.commit().unwrap();
    assert!(sig.needed());
    assert!(!ch.has_staged());
    assert_eq!(
        ch.commit(),
        Ok(SignalNeeded(false)),
        "nothing left to publish"
    );
    let mut seen = Vec::new();
    while let Some(p) = host_rx.try_read_packet(&mut buf).unwrap() {
        seen.push((p.transaction_id(), p.descriptor().completion_requested()));
    }
    assert_eq!(seen, [(t1, true), (500, false), (t2, true)]);
    // Completions in any order match the staged requests.
    let in_ring = PageRefRing::new(&pages[2..]).unwrap();
    let mut host_tx = RingSender::new(in_ring).unwrap();
    for t in [t2, t1] {
        let _ = host_tx
            .try_write(&OutgoingPacket::completion(t, &[]))
            .unwrap();
    }
    let mut rbuf = [0u8; 256];
    for want in [t2, t1] {
        match ch.recv(&mut rbuf).unwrap().unwrap() {
            Received::Completion { transaction_id, .. } => assert_eq!(transaction_id, want),
            other => panic!("{other:?}"),
        }
    }
    assert!(ch.pending().is_empty());
    // A full pending table refuses a staged request without writing anything.
    let mut small: Channel<PageRefRing<'_, '_>, 1> = Channel::new(
        PageRefRing::new(&pages[..2]).unwrap(),
        PageRefRing::new(&pages[2..]).unwrap(),
        0x2001,
    )
    .unwrap();
    small.stage_request(&[b"a"]).unwrap();
    assert_eq!(
        small.stage_request(&[b"b"]),
        Err(ChannelError::TooManyPending)
    );
}

// A full outbound ring is an outcome: the host is asked for room (pending_send_sz) and the
// packet goes out once the host has read enough.
#[test]
fn send_or_request_space_asks_for_room_when_full() {
    use crate::channel::SendOutcome;
    let pages = ring_pages(4);
    let mut ch: Channel<PageRefRing<'_, '_>> = Channel::new(
        PageRefRing::new(&pages[..2]).unwrap(),
        PageRefRing::new(&pages[2..]).unwrap(),
        0x2001,
    )
    .unwrap();
    let payload = [0x5Au8; 1000];
    let parts = [&payload[..]];
    let mut sent = 0u64;
    let full = loop {
        let pkt = OutgoingPacket::inband(sent, false, &parts);
        match ch.send_or_request_space(&pkt).unwrap() {
            SendOutcome::Sent(_) => sent += 1,
            SendOutcome::Full => break sent,
        }
        assert!(sent < 8, "a 4 KiB ring cannot hold 8 packets of 1000 bytes");
    };
    assert!(full >= 2, "{full} packets fit");
    // The reader sees the request for room (pending_send_sz = the packet's ring size).
    let pending = crate::ring::RingMemory::load_u32(
        &PageRefRing::new(&pages[..2]).unwrap(),
        crate::ring::control::PENDING_SEND_SIZE,
    );
    assert!(
        pending > 1000 && pending < 1100,
        "pending_send_sz {pending}"
    );
    // The host reads one packet: the same packet now goes out.
    let mut host_rx = RingReceiver::new(PageRefRing::new(&pages[..2]).unwrap()).unwrap();
    let mut buf = [0u8; 2048];
    assert!(host_rx.try_read_packet(&mut buf).unwrap().is_some());
    let _ = host_rx.commit().unwrap();
    let pkt = OutgoingPacket::inband(full, false, &parts);
    assert!(matches!(
        ch.send_or_request_space(&pkt).unwrap(),
        SendOutcome::Sent(_)
    ));
}
