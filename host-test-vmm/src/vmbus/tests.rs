//! The server driven by a scripted guest through the in-process backend:
//! SynIC MSRs, HvPostMessage/HvSignalEvent through the hypercall path with
//! input pages in guest RAM, replies read from the SIMP slot with the EOM
//! protocol, and rings driven with `vmbus_guest`'s ring over the same guest
//! pages.

use super::echo::{echo_instance_id, EchoVsp, CMD_HOT_ADD, CMD_RESCIND, ECHO_CLASS_ID, ECHO_MAGIC};
use super::ring::GuestRingMemory;
use super::*;
use crate::hv::inprocess::InProcess;
use crate::hv::HvStatus;
use proptest::prelude::*;
use std::cell::Cell;
use std::time::{Duration, Instant};
use vmbus_guest::message::{
    ChannelMessage, CloseChannel, GpadlMessages, GpadlTeardown, InitiateContact, MessageBuf,
    ModifyChannel, OfferChannel, OpenChannel, RelIdReleased, VersionResponse,
};
use vmbus_guest::packet::PacketType;
use vmbus_guest::ring::{init_control, RingReceiver, RingSender};
use vmbus_guest::version::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, VMBUS_SINT};

const RAM: usize = 4 << 20;
const VECTOR: u8 = 0xF3;
const SIMP: [u64; 2] = [0x2000, 0x4000];
const SIEFP: [u64; 2] = [0x3000, 0x5000];
const INPUT: u64 = 0x6000;
const FIRST_FREE_PAGE: u64 = 0x100;
const WAIT: Duration = Duration::from_secs(10);

struct Guest {
    part: InProcess,
    server: Arc<VmbusServer>,
    conn_id: Cell<u32>,
    next_page: Cell<u64>,
    next_gpadl: Cell<u32>,
}

struct GuestChannel {
    relid: u32,
    event_conn: u32,
    gpadl: u32,
    tx: RingSender<GuestRingMemory>,
    rx: RingReceiver<GuestRingMemory>,
    buf: Vec<u8>,
}

impl Guest {
    fn new() -> Self {
        Self::with_options(VmbusOptions::default())
    }

    fn with_options(opts: VmbusOptions) -> Self {
        let part = InProcess::new(2, RAM).unwrap();
        part.enable_hypercalls(0x1000).unwrap();
        for vp in 0..2u32 {
            part.enable_synic(vp, SIMP[vp as usize], SIEFP[vp as usize])
                .unwrap();
            part.unmask_sint(vp, VMBUS_SINT, VECTOR).unwrap();
        }
        let server = VmbusServer::new(Arc::clone(part.hv()), opts).unwrap();
        Self {
            part,
            server,
            conn_id: Cell::new(MESSAGE_CONNECTION_ID),
            next_page: Cell::new(FIRST_FREE_PAGE),
            next_gpadl: Cell::new(0xE1E10),
        }
    }

    fn post_raw(&self, conn: u32, bytes: &[u8]) -> HvStatus {
        self.part.post_message(0, INPUT, conn, 1, bytes)
    }

    fn post(&self, m: &ChannelMessage<'_>) {
        let b = m.encode().unwrap();
        assert_eq!(
            self.post_raw(self.conn_id.get(), b.as_bytes()),
            HvStatus::SUCCESS
        );
    }

    fn try_recv_on(&self, vp: u32) -> Option<MessageBuf> {
        let m = self
            .part
            .complete_message(vp, SIMP[vp as usize], VMBUS_SINT)
            .unwrap()?;
        assert_eq!(m.header.message_type.0, VMBUS_MESSAGE_TYPE);
        Some(MessageBuf::from_bytes(m.payload()).unwrap())
    }

    /// The next control message on VP 0, waiting for the worker if needed.
    fn recv(&self) -> MessageBuf {
        self.recv_on(0)
    }

    fn recv_on(&self, vp: u32) -> MessageBuf {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.try_recv_on(vp) {
                return m;
            }
            assert!(Instant::now() < end, "no message arrived");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn assert_no_message(&self) {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(m) = self.try_recv_on(0) {
            panic!("unexpected message {m:?}");
        }
    }

    fn initiate(&self, v: Version, target_vcpu: u32) -> VersionResponse {
        let ic = if v.uses_msg_conn_id() {
            InitiateContact::with_target_sint(v, target_vcpu, VMBUS_SINT, 0, 0x7000, 0x8000)
        } else {
            InitiateContact::with_interrupt_page(v, target_vcpu, 0x9000, 0x7000, 0x8000)
        };
        let b = ChannelMessage::InitiateContact(ic).encode().unwrap();
        let st = self.post_raw(v.initiate_contact_connection_id(), b.as_bytes());
        assert_eq!(st, HvStatus::SUCCESS);
        let r = self.recv_on(target_vcpu.min(1));
        let ChannelMessage::VersionResponse(r) = r.parse().unwrap() else {
            panic!("expected VersionResponse, got {r:?}");
        };
        if r.accepted() && v.uses_msg_conn_id() {
            self.conn_id.set(r.msg_conn_id);
        }
        r
    }

    fn connect(&self, v: Version) {
        assert!(self.initiate(v, 0).accepted());
    }

    fn request_offers(&self) -> Vec<OfferChannel> {
        self.post(&ChannelMessage::RequestOffers);
        let mut offers = Vec::new();
        loop {
            let m = self.recv();
            match m.parse().unwrap() {
                ChannelMessage::OfferChannel(o) => offers.push(o),
                ChannelMessage::AllOffersDelivered => return offers,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// `n` pages, deliberately not contiguous (every other page, in
    /// descending order).
    fn alloc_pages(&self, n: usize) -> Vec<u64> {
        let first = self.next_page.get();
        self.next_page.set(first + 2 * n as u64);
        (0..n as u64).rev().map(|i| first + 2 * i).collect()
    }

    fn new_gpadl_handle(&self) -> u32 {
        let h = self.next_gpadl.get();
        self.next_gpadl.set(h + 1);
        h
    }

    /// Send a single-range GPADL over `pfns`; returns (handle, status).
    fn create_gpadl(&self, relid: u32, pfns: &[u64]) -> (u32, u32) {
        let h = self.new_gpadl_handle();
        let msgs = GpadlMessages::new(relid, h, 0, (pfns.len() * 4096) as u32, pfns).unwrap();
        let count = msgs.message_count();
        for (i, m) in msgs.enumerate() {
            assert_eq!(
                self.post_raw(self.conn_id.get(), m.as_bytes()),
                HvStatus::SUCCESS
            );
            if i + 1 < count {
                assert!(self.try_recv_on(0).is_none(), "reply before the last body");
            }
        }
        match self.recv().parse().unwrap() {
            ChannelMessage::GpadlCreated(c) => {
                assert_eq!((c.child_relid, c.gpadl), (relid, h));
                (h, c.creation_status)
            }
            other => panic!("expected GpadlCreated, got {other:?}"),
        }
    }

    fn open_with(
        &self,
        relid: u32,
        gpadl: u32,
        downstream_offset: u32,
        target_vp: u32,
    ) -> vmbus_guest::message::OpenResult {
        let o = OpenChannel::new(relid, relid, gpadl, target_vp, downstream_offset, [0; 120]);
        self.post(&ChannelMessage::OpenChannel(o));
        match self.recv().parse().unwrap() {
            ChannelMessage::OpenResult(r) => r,
            other => panic!("expected OpenResult, got {other:?}"),
        }
    }

    /// Create the ring GPADL (up + down pages, headers included) and open.
    fn open(&self, offer: &OfferChannel, up: usize, down: usize, target_vp: u32) -> GuestChannel {
        let pfns = self.alloc_pages(up + down);
        let mem = self.part.memory().clone();
        let up_mem = GuestRingMemory::new(mem.clone(), &pfns[..up]).unwrap();
        let down_mem = GuestRingMemory::new(mem, &pfns[up..]).unwrap();
        init_control(&up_mem).unwrap();
        init_control(&down_mem).unwrap();
        let (gpadl, status) = self.create_gpadl(offer.child_relid, &pfns);
        assert_eq!(status, 0);
        let r = self.open_with(offer.child_relid, gpadl, up as u32, target_vp);
        assert_eq!(r.status, 0, "open failed");
        assert_eq!(r.open_id, offer.child_relid);
        GuestChannel {
            relid: offer.child_relid,
            event_conn: offer.connection_id,
            gpadl,
            tx: RingSender::new(up_mem).unwrap(),
            rx: RingReceiver::new(down_mem).unwrap(),
            buf: vec![0; down * 4096],
        }
    }

    fn signal(&self, ch: &GuestChannel) {
        assert_eq!(
            self.part.signal_event(0, ch.event_conn, 0),
            HvStatus::SUCCESS
        );
    }

    /// Write one packet as a Linux guest does (signal when told to).
    fn send(&self, ch: &mut GuestChannel, tid: u64, completion: bool, payload: &[u8]) {
        let parts = [payload];
        let p = OutgoingPacket::inband(tid, completion, &parts);
        if ch.tx.try_write(&p).unwrap().needed() {
            self.signal(ch);
        }
    }

    /// The next packet from the host: (type, tid, payload).
    fn receive(&self, ch: &mut GuestChannel) -> (PacketType, u64, Vec<u8>) {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                let r = (v.packet_type(), v.transaction_id(), v.payload().to_vec());
                if ch.rx.commit().unwrap().needed() {
                    self.signal(ch);
                }
                return r;
            }
            assert!(Instant::now() < end, "no packet arrived");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn setup_echo(&self, v: Version) -> Vec<OfferChannel> {
        self.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
        self.connect(v);
        self.request_offers()
    }
}

fn padded(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.resize(p.len().next_multiple_of(8), 0);
    v
}

#[test]
fn versions_2_4_to_5_3_accepted() {
    let g = Guest::new();
    for v in Version::LINUX_ORDER {
        let r = g.initiate(v, 0);
        assert!(r.accepted(), "{v} refused");
        let expect = if v.uses_msg_conn_id() {
            MESSAGE_CONNECTION_ID_4
        } else {
            0
        };
        assert_eq!(r.msg_conn_id, expect, "{v}");
        assert_eq!(g.server.version(), Some(v));
        assert_eq!(g.server.monitor_pages(), Some([0x7000, 0x8000]));
    }
    // Control messages follow target_vcpu.
    assert!(g.initiate(Version::WIN10_V5_3, 1).accepted());
    assert_eq!(g.server.message_target(), Some((1, VMBUS_SINT)));
}

#[test]
fn old_and_garbage_versions_refused() {
    let g = Guest::new();
    for v in [
        Version::WIN7,
        Version::WS2008,
        Version::COPPER,
        Version(0xDEAD_BEEF),
        Version(0),
    ] {
        let r = g.initiate(v, 0);
        assert!(!r.accepted(), "{v} accepted");
        assert_eq!(r.version_supported, 0);
        assert_eq!(g.server.version(), None);
    }
    // A refused guest falls back and gets in.
    assert!(g.initiate(Version::WIN10_V4_1, 0).accepted());
    let s = g.server.stats();
    assert_eq!(s.version.as_deref(), Some("4.1"));
    assert!(s.connected);
    assert_eq!(s.connections, 1);
}

#[test]
fn messages_before_contact_are_dropped() {
    let g = Guest::new();
    g.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    g.post(&ChannelMessage::RequestOffers);
    g.assert_no_message();
    assert_eq!(g.server.stats().messages_rejected, 1);
}

#[test]
fn offers_then_all_offers_delivered() {
    let g = Guest::new();
    let r0 = g.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    let r1 = g.server.add_device(Box::new(EchoVsp::new(1))).unwrap();
    assert_eq!((r0, r1), (1, 2));
    assert_eq!(
        g.server.add_device(Box::new(EchoVsp::new(1))),
        Err(VmbusError::DuplicateDevice(echo_instance_id(1).to_string()))
    );
    g.connect(Version::WIN10_V5_3);
    let offers = g.request_offers();
    assert_eq!(offers.len(), 2);
    for (o, (relid, idx)) in offers.iter().zip([(1u32, 0u16), (2, 1)]) {
        assert_eq!(o.child_relid, relid);
        assert_eq!(o.if_type, ECHO_CLASS_ID);
        assert_eq!(o.if_instance, echo_instance_id(idx));
        assert_eq!(o.connection_id, 0x2000 | relid);
        assert_eq!(o.monitor_allocated, 0);
        assert_eq!(o.is_dedicated_interrupt, 1);
        assert_eq!(o.sub_channel_index, 0);
    }
    // Hot-add after RequestOffers is offered at once.
    let r2 = g.server.add_device(Box::new(EchoVsp::new(2))).unwrap();
    match g.recv().parse().unwrap() {
        ChannelMessage::OfferChannel(o) => assert_eq!(o.child_relid, r2),
        other => panic!("{other:?}"),
    }
    assert_eq!(g.server.stats().offers_sent, 3);
}

#[test]
fn gpadl_header_and_bodies() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    // 26 in the header, then 28 + 28 + 1 in bodies.
    let pfns = g.alloc_pages(83);
    let (_, status) = g.create_gpadl(offers[0].child_relid, &pfns);
    assert_eq!(status, 0);
    // Exactly fitting the header.
    let (_, status) = g.create_gpadl(offers[0].child_relid, &g.alloc_pages(26));
    assert_eq!(status, 0);
    assert_eq!(g.server.stats().gpadls_created, 2);
}

#[test]
fn gpadl_outside_ram_refused() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let relid = offers[0].child_relid;
    let ram_pages = (RAM / 4096) as u64;
    for bad in [ram_pages, ram_pages + 100, u64::MAX, 1 << 40] {
        let mut pfns = g.alloc_pages(40);
        pfns[30] = bad; // in a body message
        let (_, status) = g.create_gpadl(relid, &pfns);
        assert_ne!(status, 0, "PFN {bad:#x} accepted");
    }
    // For a channel that does not exist.
    let (_, status) = g.create_gpadl(77, &g.alloc_pages(2));
    assert_ne!(status, 0);
    // A body for a GPADL nobody announced is dropped without an answer.
    let body = [
        9u8, 0, 0, 0, 0, 0, 0, 0, 0x55, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(g.post_raw(g.conn_id.get(), &body), HvStatus::SUCCESS);
    g.assert_no_message();
    let s = g.server.stats();
    assert_eq!((s.gpadls_created, s.gpadls_refused), (0, 5));
}

#[test]
fn open_with_bad_parameters_refused() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let relid = offers[0].child_relid;
    let pfns = g.alloc_pages(6);
    let (gpadl, st) = g.create_gpadl(relid, &pfns);
    assert_eq!(st, 0);
    for off in [0u32, 1, 5, 6, 100, u32::MAX] {
        let r = g.open_with(relid, gpadl, off, 0);
        assert_ne!(r.status, 0, "offset {off} accepted");
        assert_eq!((r.child_relid, r.open_id), (relid, relid));
    }
    assert_ne!(
        g.open_with(relid, gpadl + 1000, 3, 0).status,
        0,
        "unknown GPADL"
    );
    assert_ne!(
        g.open_with(relid, gpadl, 3, 7).status,
        0,
        "VP 7 does not exist"
    );
    assert_ne!(g.open_with(55, gpadl, 3, 0).status, 0, "unknown relid");
    // A corrupt ring header.
    let up = GuestRingMemory::new(g.part.memory().clone(), &pfns[..3]).unwrap();
    vmbus_guest::ring::RingMemory::store_u32(&up, 4, 0x10_0000);
    assert_ne!(
        g.open_with(relid, gpadl, 3, 0).status,
        0,
        "corrupt read index"
    );
    vmbus_guest::ring::RingMemory::store_u32(&up, 4, 0);
    // And then a good open works, a second one is refused.
    assert_eq!(g.open_with(relid, gpadl, 3, 0).status, 0);
    assert_ne!(g.open_with(relid, gpadl, 3, 0).status, 0);
}

#[test]
fn echo_round_trips_of_many_sizes_with_wrap() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    // 3 data pages each way: large packets wrap often.
    let mut ch = g.open(&offers[0], 4, 4, 0);
    let irq_before = g.part.interrupts().count(0, VECTOR);
    let mut tid = 1u64;
    for size in (0..5000).step_by(97).chain([1, 7, 8, 9, 4000, 5999]) {
        let payload: Vec<u8> = (0..size).map(|i| (i as u8) ^ (tid as u8)).collect();
        let completion = tid.is_multiple_of(3);
        g.send(&mut ch, tid, completion, &payload);
        let (t, id, p) = g.receive(&mut ch);
        assert_eq!((t, id), (PacketType::DATA_INBAND, tid));
        assert!(p == padded(&payload), "size {size}");
        if completion {
            let (t, id, p) = g.receive(&mut ch);
            assert_eq!((t, id), (PacketType::COMPLETION, tid));
            assert_eq!(&p[..4], &(padded(&payload).len() as u32).to_le_bytes());
        }
        tid += 1;
    }
    let s = g.server.stats();
    let c = &s.channels[&ch.relid];
    assert_eq!(c.packets_in, tid - 1);
    assert!(c.packets_out > c.packets_in);
    assert!(s.notifications_from_guest > 0 && s.notifications_to_guest > 0);
    // Host -> guest notifications are SIEF bits on the target VP.
    assert!(g
        .part
        .interrupts()
        .wait_for(0, VECTOR, irq_before + 1, WAIT));
    let flags = g.part.read_event_flags(SIEFP[0], VMBUS_SINT).unwrap();
    assert!(flags.get(ch.relid as usize));
}

#[test]
fn full_host_ring_waits_for_the_guest() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    // Big upstream ring, tiny downstream ring (one data page).
    let mut ch = g.open(&offers[0], 17, 2, 1);
    let payload = vec![0xA5u8; 1500];
    for tid in 0..30 {
        g.send(&mut ch, tid, false, &payload);
    }
    // The host can only place two replies, then waits for room.
    let end = Instant::now() + WAIT;
    while g.server.stats().channels[&ch.relid].ring_full_waits == 0 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    for tid in 0..30 {
        let (t, id, p) = g.receive(&mut ch);
        assert_eq!((t, id), (PacketType::DATA_INBAND, tid));
        assert!(p == padded(&payload));
    }
    // Signals for this channel went to its target VP 1.
    assert!(g.part.interrupts().wait_for(1, VECTOR, 1, WAIT));
    assert_eq!(g.server.stats().channels[&ch.relid].packets_out, 30);
}

#[test]
fn close_and_teardown() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.send(&mut ch, 1, false, b"ping");
    assert_eq!(g.receive(&mut ch).1, 1);
    // Teardown of the ring GPADL while open waits for the close.
    g.post(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(
        ch.relid, ch.gpadl,
    )));
    g.assert_no_message();
    g.post(&ChannelMessage::CloseChannel(CloseChannel::new(ch.relid)));
    match g.recv().parse().unwrap() {
        ChannelMessage::GpadlTorndown(t) => assert_eq!(t.gpadl, ch.gpadl),
        other => panic!("{other:?}"),
    }
    assert!(!g.server.channels()[0].open);
    // A packet after close is not answered.
    g.send(&mut ch, 2, false, b"late");
    g.signal(&ch);
    std::thread::sleep(Duration::from_millis(20));
    assert!(ch.rx.try_read_packet(&mut ch.buf).unwrap().is_none());
    // Reopen on a fresh GPADL; the ordinary close-then-teardown order.
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.send(&mut ch, 3, true, b"again");
    assert_eq!(g.receive(&mut ch).1, 3);
    assert_eq!(g.receive(&mut ch).0, PacketType::COMPLETION);
    g.post(&ChannelMessage::CloseChannel(CloseChannel::new(ch.relid)));
    g.assert_no_message();
    g.post(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(
        ch.relid, ch.gpadl,
    )));
    assert!(
        matches!(g.recv().parse().unwrap(), ChannelMessage::GpadlTorndown(t) if t.gpadl == ch.gpadl)
    );
    let s = g.server.stats();
    assert_eq!(s.channels[&ch.relid].opens, 2);
    assert_eq!(s.channels[&ch.relid].closes, 2);
    assert_eq!(s.gpadls_torn_down, 2);
    // Unknown teardown: dropped.
    g.post(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(
        ch.relid, 0x999,
    )));
    g.assert_no_message();
}

#[test]
fn rescind_waits_for_relid_released() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let relid = offers[0].child_relid;
    let ch = g.open(&offers[0], 3, 3, 0);
    g.server.rescind(relid).unwrap();
    match g.recv().parse().unwrap() {
        ChannelMessage::RescindChannelOffer(r) => assert_eq!(r.child_relid, relid),
        other => panic!("{other:?}"),
    }
    assert!(g.server.channels()[0].rescinded);
    // Not reused before the release.
    let other = g.server.add_device(Box::new(EchoVsp::new(5))).unwrap();
    assert_ne!(other, relid);
    let ChannelMessage::OfferChannel(_) = g.recv().parse().unwrap() else {
        panic!()
    };
    // A late open is ignored; Linux's close + teardown + release.
    let r = OpenChannel::new(relid, relid, ch.gpadl, 0, 3, [0; 120]);
    g.post(&ChannelMessage::OpenChannel(r));
    g.assert_no_message();
    g.post(&ChannelMessage::CloseChannel(CloseChannel::new(relid)));
    g.post(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(
        relid, ch.gpadl,
    )));
    assert!(matches!(
        g.recv().parse().unwrap(),
        ChannelMessage::GpadlTorndown(_)
    ));
    g.post(&ChannelMessage::RelIdReleased(RelIdReleased::new(relid)));
    g.assert_no_message();
    assert!(g.server.channels().iter().all(|c| c.relid != relid));
    // Now the relid is free again.
    assert_eq!(
        g.server.add_device(Box::new(EchoVsp::new(6))).unwrap(),
        relid
    );
    // Releasing a channel that was not rescinded is refused.
    let before = g.server.stats().messages_rejected;
    g.post(&ChannelMessage::RelIdReleased(RelIdReleased::new(other)));
    assert_eq!(g.server.stats().messages_rejected, before + 1);
    assert_eq!(g.server.rescind(999), Err(VmbusError::NoSuchChannel(999)));
}

#[test]
fn echo_commands_rescind_and_hot_add() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    let mut cmd = ECHO_MAGIC.to_vec();
    cmd.extend_from_slice(&CMD_HOT_ADD.to_le_bytes());
    cmd.extend_from_slice(&9u32.to_le_bytes());
    g.send(&mut ch, 1, false, &cmd);
    assert_eq!(g.receive(&mut ch).2, cmd);
    match g.recv().parse().unwrap() {
        ChannelMessage::OfferChannel(o) => assert_eq!(o.if_instance, echo_instance_id(9)),
        other => panic!("{other:?}"),
    }
    let mut cmd = ECHO_MAGIC.to_vec();
    cmd.extend_from_slice(&CMD_RESCIND.to_le_bytes());
    cmd.extend_from_slice(&0u32.to_le_bytes());
    g.send(&mut ch, 2, false, &cmd);
    assert_eq!(g.receive(&mut ch).1, 2);
    match g.recv().parse().unwrap() {
        ChannelMessage::RescindChannelOffer(r) => assert_eq!(r.child_relid, ch.relid),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unload_and_reconnect() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.post(&ChannelMessage::Unload);
    assert!(matches!(
        g.recv().parse().unwrap(),
        ChannelMessage::UnloadResponse
    ));
    assert_eq!(g.server.version(), None);
    let s = g.server.stats();
    assert_eq!((s.version.as_deref(), s.connected), (Some("5.3"), false));
    assert!(!g.server.channels()[0].open);
    g.send(&mut ch, 1, false, b"nobody home");
    g.signal(&ch);
    std::thread::sleep(Duration::from_millis(10));
    assert!(ch.rx.try_read_packet(&mut ch.buf).unwrap().is_none());
    // Hibernate-resume style: same version, same devices again.
    g.connect(Version::WIN10_V5_3);
    let again = g.request_offers();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].if_instance, offers[0].if_instance);
    let mut ch = g.open(&again[0], 3, 3, 0);
    g.send(&mut ch, 5, false, b"back");
    assert_eq!(g.receive(&mut ch).1, 5);
    // reset(): silently back to not connected.
    g.server.reset();
    assert_eq!(g.server.version(), None);
    g.post(&ChannelMessage::RequestOffers);
    g.assert_no_message();
}

#[test]
fn modify_channel() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.post(&ChannelMessage::ModifyChannel(ModifyChannel::new(
        ch.relid, 1,
    )));
    match g.recv().parse().unwrap() {
        ChannelMessage::ModifyChannelResponse(r) => {
            assert_eq!((r.child_relid, r.status), (ch.relid, 0))
        }
        other => panic!("{other:?}"),
    }
    let before = g.part.interrupts().count(1, VECTOR);
    g.send(&mut ch, 1, false, b"now on vp 1");
    g.receive(&mut ch);
    // (The signal follows the packet: wait for it rather than race it.)
    assert!(g.part.interrupts().wait_for(1, VECTOR, before + 1, WAIT));
    // A VP that does not exist, a channel that is not open.
    g.post(&ChannelMessage::ModifyChannel(ModifyChannel::new(
        ch.relid, 9,
    )));
    assert!(
        matches!(g.recv().parse().unwrap(), ChannelMessage::ModifyChannelResponse(r) if r.status != 0)
    );
    g.post(&ChannelMessage::ModifyChannel(ModifyChannel::new(77, 0)));
    assert!(
        matches!(g.recv().parse().unwrap(), ChannelMessage::ModifyChannelResponse(r) if r.status != 0)
    );
    // 4.1 has ModifyChannel without a response.
    g.connect(Version::WIN10_V4_1);
    let offers = g.request_offers();
    let ch = g.open(&offers[0], 3, 3, 0);
    g.post(&ChannelMessage::ModifyChannel(ModifyChannel::new(
        ch.relid, 1,
    )));
    g.assert_no_message();
}

#[test]
fn corrupt_ring_stops_the_channel_only() {
    let g = Guest::new();
    g.server.add_device(Box::new(EchoVsp::new(1))).unwrap();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut a = g.open(&offers[0], 3, 3, 0);
    let mut b = g.open(&offers[1], 3, 3, 0);
    // Guest publishes a write index past the data area.
    vmbus_guest::ring::RingMemory::store_u32(a.tx.memory(), 0, 0x7FFF_FFF8);
    g.signal(&a);
    let end = Instant::now() + WAIT;
    while g.server.stats().channels[&a.relid].ring_errors == 0 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    // A packet with a descriptor claiming more than was written.
    let _ = &mut a;
    g.send(&mut b, 1, false, b"still fine");
    assert_eq!(g.receive(&mut b).1, 1);
}

#[test]
fn trace_lines() {
    let (w, buf) = TraceWriter::in_memory();
    let g = Guest::with_options(VmbusOptions {
        trace: Some(Arc::new(w)),
    });
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.send(&mut ch, 42, true, b"traced");
    g.receive(&mut ch);
    g.receive(&mut ch);
    g.post_raw(g.conn_id.get(), &[0xFF; 3]);
    g.server.shutdown();
    let lines = buf.lines();
    let find = |dir: &str, ty: &str| {
        lines
            .iter()
            .find(|l| l["dir"] == dir && l["type"] == ty)
            .unwrap_or_else(|| panic!("no {dir} {ty} in {lines:#?}"))
            .clone()
    };
    assert_eq!(find("g2h", "INITIATE_CONTACT")["version"], "5.3");
    assert_eq!(find("h2g", "VERSION_RESPONSE")["msg_conn_id"], 4);
    assert_eq!(find("h2g", "OFFER_CHANNEL")["connection_id"], 0x2001);
    let p = find("g2h", "DATA_INBAND");
    assert_eq!(
        (
            p["kind"].as_str(),
            p["trans_id"].as_u64(),
            p["relid"].as_u64()
        ),
        (Some("packet"), Some(42), Some(1))
    );
    assert_eq!(find("h2g", "COMPLETION")["trans_id"], 42);
    assert_eq!(find("g2h", "MALFORMED")["kind"], "message");
    assert!(lines.iter().all(|l| l["t_us"].is_u64()));
}

#[test]
fn shutdown_refuses_messages_and_closes_devices() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let _ch = g.open(&offers[0], 3, 3, 0);
    g.server.shutdown();
    g.server.shutdown();
    assert!(!g.server.channels()[0].open);
    let b = ChannelMessage::RequestOffers.encode().unwrap();
    assert_eq!(
        g.post_raw(g.conn_id.get(), b.as_bytes()),
        HvStatus::INVALID_CONNECTION_ID
    );
}

#[test]
fn stats_serialize() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 3, 3, 0);
    g.send(&mut ch, 1, false, b"x");
    g.receive(&mut ch);
    let v = serde_json::to_value(g.server.stats()).unwrap();
    assert_eq!(v["version"], "5.3");
    assert_eq!(v["messages_in"]["INITIATE_CONTACT"], 1);
    assert_eq!(v["messages_out"]["OFFER_CHANNEL"], 1);
    assert_eq!(v["channels"]["1"]["device"], "echo0");
    assert_eq!(v["channels"]["1"]["packets_in"], 1);
}

/// Guest bytes the server must survive: random messages (and random
/// messages with a valid type word, to reach the handlers), interleaved
/// with a live channel.
fn hostile_round(g: &Guest, msgs: &[(u8, Vec<u8>)]) {
    for (kind, bytes) in msgs {
        let mut b = bytes.clone();
        if *kind % 2 == 0 && b.len() >= 4 {
            b[..4].copy_from_slice(&u32::from(*kind % 26).to_le_bytes());
        }
        let conn = if *kind % 3 == 0 {
            MESSAGE_CONNECTION_ID
        } else {
            MESSAGE_CONNECTION_ID_4
        };
        let _ = g.post_raw(conn, &b);
        while g.try_recv_on(0).is_some() {}
        while g.try_recv_on(1).is_some() {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn hostile_messages_never_panic(
        msgs in proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..240)), 1..40)
    ) {
        let g = Guest::new();
        let offers = g.setup_echo(Version::WIN10_V5_3);
        let _old = g.open(&offers[0], 3, 3, 0);
        hostile_round(&g, &msgs);
        // Still a working server afterwards: reconnect if the noise
        // disconnected us, and echo on a fresh channel.
        g.conn_id.set(MESSAGE_CONNECTION_ID_4);
        g.connect(Version::WIN10_V5_3);
        let offers = g.request_offers();
        prop_assert!(!offers.is_empty());
        let mut ch = g.open(&offers[0], 3, 3, 0);
        g.send(&mut ch, 7, false, b"alive");
        prop_assert_eq!(g.receive(&mut ch).1, 7);
    }

    #[test]
    fn hostile_ring_contents_never_panic(
        garbage in proptest::collection::vec(any::<u8>(), 0..8192),
        w in any::<u32>(),
    ) {
        let g = Guest::new();
        let offers = g.setup_echo(Version::WIN10_V5_3);
        let ch = g.open(&offers[0], 3, 3, 0);
        let m = ch.tx.memory();
        vmbus_guest::ring::RingMemory::write(m, 4096, &garbage);
        vmbus_guest::ring::RingMemory::store_u32(m, 0, w & 0x1FF8);
        g.signal(&ch);
        std::thread::sleep(Duration::from_millis(2));
        g.server.shutdown();
    }
}

/// The real guest side: `vmbus_guest`'s driver (client + rings) over the
/// `hypercall` crate's drivers, through the in-process platform, against
/// this server and the echo device.
#[test]
fn vmbus_guest_driver_end_to_end() {
    use hypercall::hv::{SintConfig, SynIc};
    use hypercall::msr::GuestOsId;
    use vmbus_guest::channel::Received;
    use vmbus_guest::client::{ClientConfig, Event};
    use vmbus_guest::driver::{Polled, VmBus};
    const POLLS: u64 = 1_000;

    let p = InProcess::new(1, RAM).unwrap();
    let server = VmbusServer::new(Arc::clone(p.hv()), VmbusOptions::default()).unwrap();
    server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    let vp0 = p.vp(0);
    let hc = hypercall::hv::Hypervisor::init(
        &vp0,
        GuestOsId::linux(6, 12, 117),
        p.page(0x1000).unwrap(),
    )
    .unwrap();
    let synic = SynIc::enable(
        &vp0,
        p.page(SIMP[0]).unwrap(),
        p.page(SIEFP[0]).unwrap(),
        &[(VMBUS_SINT, SintConfig::interrupt(VECTOR))],
    )
    .unwrap();
    let config = ClientConfig {
        monitor_page1: 0x7000,
        monitor_page2: 0x8000,
        ..ClientConfig::default()
    };
    let mut bus: VmBus<'_, _> = VmBus::new(&hc, &synic, p.page(INPUT).unwrap(), config);
    assert_eq!(bus.connect(POLLS).unwrap(), Version::WIN10_V5_3);
    bus.wait_offers(POLLS).unwrap();
    let relid = bus.client().find_channel(&ECHO_CLASS_ID).unwrap().relid();
    let pages: Vec<_> = (0..8u64)
        .map(|i| p.page(0x10_0000 + i * 0x3000).unwrap())
        .collect();
    let (mut ch, _gpadl) = bus
        .open_channel(relid, &pages, 4, 0, [0; 120], POLLS)
        .unwrap();
    let mut buf = vec![0u8; 4 * 4096];
    for size in [0usize, 1, 100, 1000, 3000, 5000, 6000, 2500, 777] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        let (tid, sig) = ch.send_request(&[&payload]).unwrap();
        bus.signal_if(ch.connection_id(), sig).unwrap();
        let (mut got_echo, mut got_comp) = (false, false);
        let end = Instant::now() + WAIT;
        while !(got_echo && got_comp) {
            assert!(Instant::now() < end, "no echo for {size} bytes");
            match ch.recv(&mut buf).unwrap() {
                Some(Received::Packet(v)) => {
                    assert_eq!(v.transaction_id(), tid);
                    assert!(v.payload() == padded(&payload));
                    got_echo = true;
                }
                Some(Received::Completion { transaction_id, .. }) => {
                    assert_eq!(transaction_id, tid);
                    assert!(got_echo, "completion before the echo");
                    got_comp = true;
                }
                None => std::thread::sleep(Duration::from_micros(50)),
            }
            let sig = ch.commit_reads().unwrap();
            bus.signal_if(ch.connection_id(), sig).unwrap();
        }
    }
    // The host signalled through SINT2's event flags.
    let mut signalled = Vec::new();
    bus.take_channel_interrupts(|r| signalled.push(r)).unwrap();
    assert_eq!(signalled, vec![relid]);
    // A sub-channel offer, as the client classifies it.
    let mut cmd = ECHO_MAGIC.to_vec();
    cmd.extend_from_slice(&super::echo::CMD_SUBCHANNEL.to_le_bytes());
    cmd.extend_from_slice(&0u32.to_le_bytes());
    let sig = ch.send(77, &[&cmd]).unwrap();
    bus.signal_if(ch.connection_id(), sig).unwrap();
    let end = Instant::now() + WAIT;
    let sub = loop {
        assert!(Instant::now() < end, "no sub-channel offer");
        match bus.poll().unwrap() {
            Some(Polled::Event(Event::Offer {
                relid: r,
                subchannel_of,
            })) => {
                assert_eq!(subchannel_of, Some(relid));
                break r;
            }
            Some(other) => panic!("{other:?}"),
            None => std::thread::sleep(Duration::from_micros(100)),
        }
    };
    while ch.recv(&mut buf).unwrap().is_none() {
        std::thread::sleep(Duration::from_micros(50));
    }
    let sig = ch.commit_reads().unwrap();
    bus.signal_if(ch.connection_id(), sig).unwrap();
    assert_eq!(bus.client().channel(sub).unwrap().class(), ECHO_CLASS_ID);
    // ModifyChannel (5.3: answered).
    bus.client_mut().modify_channel(relid, 0).unwrap();
    let e = bus
        .wait(POLLS, |e| matches!(e, Event::ModifyChannelResponse { .. }))
        .unwrap();
    assert_eq!(e, Event::ModifyChannelResponse { relid, status: 0 });
    // Close (waits for the ring GPADL's teardown), reopen, then rescind: the
    // client closes, tears down and releases on its own.
    bus.close_channel(relid, POLLS).unwrap();
    let (_ch, _) = bus
        .open_channel(relid, &pages, 4, 0, [0; 120], POLLS)
        .unwrap();
    // (The sub-channel goes first, then its primary.)
    server.rescind(relid).unwrap();
    let e = bus
        .wait(POLLS, |e| matches!(e, Event::Rescinded { .. }))
        .unwrap();
    assert_eq!(
        e,
        Event::Rescinded {
            relid: sub,
            was_open: false
        }
    );
    let e = bus
        .wait(POLLS, |e| matches!(e, Event::Rescinded { .. }))
        .unwrap();
    assert_eq!(
        e,
        Event::Rescinded {
            relid,
            was_open: true
        }
    );
    bus.wait(POLLS, |e| matches!(e, Event::GpadlTorndown { .. }))
        .unwrap();
    for _ in 0..10 {
        let _ = bus.poll().unwrap();
    }
    assert!(server.channels().is_empty(), "relid not released");
    // Hot-add is offered to the connected client; then unload.
    let r2 = server.add_device(Box::new(EchoVsp::new(3))).unwrap();
    let e = bus
        .wait(POLLS, |e| matches!(e, Event::Offer { .. }))
        .unwrap();
    assert_eq!(
        e,
        Event::Offer {
            relid: r2,
            subchannel_of: None
        }
    );
    bus.unload(POLLS).unwrap();
    assert_eq!(server.version(), None);
    assert_eq!(server.monitor_pages(), None);
    let s = server.stats();
    assert_eq!(s.messages_rejected, 0, "{s:#?}");
    assert_eq!(s.rescinds_sent, 2);
}

/// Echo traffic on two channels from two guest threads (VPs 0 and 1) while
/// the main thread hot-adds and rescinds other devices and reads stats: no
/// deadlock, nothing lost, nothing reordered.
#[test]
fn concurrent_channels_and_control() {
    fn round_trips(part: &InProcess, vp: u32, ch: &mut GuestChannel, n: u64) {
        for tid in 1..=n {
            let size = ((tid * 131) % 3000) as usize;
            let payload: Vec<u8> = (0..size).map(|i| (i as u64 ^ tid) as u8).collect();
            let parts = [&payload[..]];
            let p = OutgoingPacket::inband(tid, false, &parts);
            if ch.tx.try_write(&p).unwrap().needed() {
                assert_eq!(part.signal_event(vp, ch.event_conn, 0), HvStatus::SUCCESS);
            }
            let end = Instant::now() + WAIT;
            loop {
                if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                    assert_eq!(v.transaction_id(), tid);
                    assert!(v.payload() == padded(&payload));
                    if ch.rx.commit().unwrap().needed() {
                        part.signal_event(vp, ch.event_conn, 0);
                    }
                    break;
                }
                assert!(Instant::now() < end, "echo {tid} lost");
                std::thread::yield_now();
            }
        }
    }

    let g = Guest::new();
    g.server.add_device(Box::new(EchoVsp::new(1))).unwrap();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut a = g.open(&offers[0], 3, 3, 0);
    let mut b = g.open(&offers[1], 3, 3, 1);
    let part = &g.part;
    std::thread::scope(|s| {
        let ta = s.spawn(|| round_trips(part, 0, &mut a, 400));
        let tb = s.spawn(|| round_trips(part, 1, &mut b, 400));
        for i in 0..20u16 {
            let relid = g
                .server
                .add_device(Box::new(EchoVsp::new(100 + i)))
                .unwrap();
            assert!(
                matches!(g.recv().parse().unwrap(), ChannelMessage::OfferChannel(o) if o.child_relid == relid)
            );
            g.server.rescind(relid).unwrap();
            assert!(
                matches!(g.recv().parse().unwrap(), ChannelMessage::RescindChannelOffer(r) if r.child_relid == relid)
            );
            g.post(&ChannelMessage::RelIdReleased(RelIdReleased::new(relid)));
            let _ = serde_json::to_string(&g.server.stats()).unwrap();
        }
        ta.join().unwrap();
        tb.join().unwrap();
    });
    let s = g.server.stats();
    assert_eq!(s.channels[&1].packets_in, 400);
    assert_eq!(s.channels[&2].packets_in, 400);
    assert_eq!(s.rescinds_sent, 20);
    assert_eq!(g.server.channels().len(), 2);
}

/// A device that reads and writes guest memory through the channel's
/// GPADLs: payload `{handle u32, offset u32, len u32, write u32}`; with
/// `write` != 0 it first fills the span with 0x5A. The reply is `[ok u8]`
/// followed by the span's bytes.
struct GpadlProbe;

impl Vsp for GpadlProbe {
    fn name(&self) -> &str {
        "probe"
    }
    fn class_id(&self) -> vmbus_guest::Guid {
        vmbus_guest::Guid::from_str_const("00000000-0000-0000-0000-0000000000aa")
    }
    fn instance_id(&self) -> vmbus_guest::Guid {
        vmbus_guest::Guid::from_str_const("00000000-0000-0000-0000-0000000000bb")
    }
    fn on_packet(
        &mut self,
        ch: &ChannelHandle,
        packet: &vmbus_guest::packet::PacketView<'_>,
    ) -> Result<(), SendError> {
        let p = packet.payload();
        let word = |i: usize| u32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap());
        let (handle, offset, len, write) = (word(0), word(1), word(2) as usize, word(3));
        let mut ok = true;
        if write != 0 {
            ok &= ch.write_gpadl(handle, u64::from(offset), &vec![0x5A; len]);
        }
        let mut data = vec![0u8; len];
        ok &= ch.read_gpadl(handle, u64::from(offset), &mut data);
        let flag = [u8::from(ok)];
        let parts = [&flag[..], &data[..]];
        ch.send(&OutgoingPacket::inband(
            packet.transaction_id(),
            false,
            &parts,
        ))
    }
}

#[test]
fn devices_reach_guest_memory_through_gpadls() {
    let g = Guest::new();
    g.server.add_device(Box::new(GpadlProbe)).unwrap();
    g.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    g.connect(Version::WIN10_V5_3);
    let offers = g.request_offers();
    let probe = offers.iter().find(|o| o.child_relid == 1).unwrap();
    let echo = offers.iter().find(|o| o.child_relid == 2).unwrap();
    let mut ch = g.open(probe, 3, 3, 0);
    // A 3-page buffer GPADL on the probe's channel, one on the echo's.
    let buf_pages = g.alloc_pages(3);
    let (mine, st) = g.create_gpadl(probe.child_relid, &buf_pages);
    assert_eq!(st, 0);
    let (theirs, st) = g.create_gpadl(echo.child_relid, &g.alloc_pages(1));
    assert_eq!(st, 0);
    let ask = |ch: &mut GuestChannel, tid: u64, handle: u32, offset: u32, len: u32, write: u32| {
        let mut req = Vec::new();
        for w in [handle, offset, len, write] {
            req.extend_from_slice(&w.to_le_bytes());
        }
        g.send(ch, tid, false, &req);
        g.receive(ch).2
    };
    // Guest writes a pattern across the first page boundary; the device reads it.
    let pattern: Vec<u8> = (0..100u8).collect();
    g.part
        .write_bytes(buf_pages[0] * 4096 + 4046, &pattern[..50])
        .unwrap();
    g.part
        .write_bytes(buf_pages[1] * 4096, &pattern[50..])
        .unwrap();
    let r = ask(&mut ch, 1, mine, 4046, 100, 0);
    assert_eq!(r[0], 1);
    assert_eq!(&r[1..101], &pattern[..]);
    // The device writes; the guest sees it in the scattered pages.
    let r = ask(&mut ch, 2, mine, 8190, 4, 1);
    assert_eq!(&r[..5], &[1, 0x5A, 0x5A, 0x5A, 0x5A]);
    assert_eq!(
        g.part.read_bytes(buf_pages[1] * 4096 + 4094, 2).unwrap(),
        [0x5A; 2]
    );
    assert_eq!(
        g.part.read_bytes(buf_pages[2] * 4096, 2).unwrap(),
        [0x5A; 2]
    );
    // Past the end, another channel's GPADL, an unknown handle: refused.
    assert_eq!(ask(&mut ch, 3, mine, 3 * 4096 - 2, 4, 0)[0], 0);
    assert_eq!(ask(&mut ch, 4, theirs, 0, 4, 0)[0], 0);
    assert_eq!(ask(&mut ch, 5, 0x1234, 0, 4, 0)[0], 0);
}

/// A guest that drains its inbound ring but never signals the host for
/// room (ignores pending_send_sz) still gets every reply: the worker polls
/// blocked channels.
#[test]
fn blocked_channel_is_polled_without_guest_signals() {
    let g = Guest::new();
    let offers = g.setup_echo(Version::WIN10_V5_3);
    let mut ch = g.open(&offers[0], 17, 2, 0);
    let payload = vec![0x3Cu8; 1000];
    for tid in 0..20 {
        g.send(&mut ch, tid, false, &payload);
    }
    let signals_before = g.server.stats().notifications_from_guest;
    let end = Instant::now() + WAIT;
    for tid in 0..20 {
        loop {
            if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                assert_eq!(v.transaction_id(), tid);
                let _ = ch.rx.commit().unwrap(); // no signal, whatever it says
                break;
            }
            assert!(Instant::now() < end, "reply {tid} never came");
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    let s = g.server.stats();
    assert_eq!(s.notifications_from_guest, signals_before);
    assert!(s.channels[&ch.relid].ring_full_waits > 0);
}

/// A device that first tries packets that can never be sent (odd extension,
/// larger than the ring), then replies with what `send` said about them.
struct BadSender;

impl Vsp for BadSender {
    fn name(&self) -> &str {
        "bad-sender"
    }
    fn class_id(&self) -> vmbus_guest::Guid {
        vmbus_guest::Guid::from_str_const("00000000-0000-0000-0000-0000000000cc")
    }
    fn instance_id(&self) -> vmbus_guest::Guid {
        vmbus_guest::Guid::from_str_const("00000000-0000-0000-0000-0000000000dd")
    }
    fn on_packet(
        &mut self,
        ch: &ChannelHandle,
        packet: &vmbus_guest::packet::PacketView<'_>,
    ) -> Result<(), SendError> {
        let mut odd = OutgoingPacket::inband(1, false, &[]);
        odd.extension = &[0; 4];
        let r1 = ch.send(&odd);
        let huge = vec![0u8; 64 * 1024];
        let parts = [&huge[..]];
        let r2 = ch.send(&OutgoingPacket::inband(2, false, &parts));
        let verdict = [
            u8::from(matches!(r1, Err(SendError::Invalid(_)))),
            u8::from(matches!(r2, Err(SendError::Invalid(_)))),
        ];
        let parts = [&verdict[..]];
        ch.send(&OutgoingPacket::inband(
            packet.transaction_id(),
            false,
            &parts,
        ))
    }
}

#[test]
fn unsendable_packets_are_refused_without_breaking_the_channel() {
    let g = Guest::new();
    g.server.add_device(Box::new(BadSender)).unwrap();
    g.connect(Version::WIN10_V5_3);
    let offers = g.request_offers();
    let mut ch = g.open(&offers[0], 3, 3, 0);
    for tid in 1..=3 {
        g.send(&mut ch, tid, false, b"go");
        let (_, id, p) = g.receive(&mut ch);
        assert_eq!(id, tid);
        assert_eq!(&p[..2], &[1, 1]);
    }
    assert_eq!(g.server.stats().channels[&ch.relid].ring_errors, 0);
}

#[test]
fn subchannels() {
    let g = Guest::new();
    assert_eq!(
        g.server.add_subchannel(1, Box::new(EchoVsp::new(0))),
        Err(VmbusError::NoSuchChannel(1))
    );
    g.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    assert_eq!(
        g.server.add_subchannel(1, Box::new(EchoVsp::new(0))),
        Err(VmbusError::NotOffered(1))
    );
    g.connect(Version::WIN10_V5_3);
    let offers = g.request_offers();
    let primary = offers[0];
    let mut ch = g.open(&primary, 3, 3, 0);
    // The echo device asks for a sub-channel in-band.
    let mut cmd = ECHO_MAGIC.to_vec();
    cmd.extend_from_slice(&super::echo::CMD_SUBCHANNEL.to_le_bytes());
    cmd.extend_from_slice(&0u32.to_le_bytes());
    g.send(&mut ch, 1, false, &cmd);
    assert_eq!(g.receive(&mut ch).1, 1);
    let sub = match g.recv().parse().unwrap() {
        ChannelMessage::OfferChannel(o) => o,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (sub.if_type, sub.if_instance),
        (primary.if_type, primary.if_instance)
    );
    assert_eq!(sub.sub_channel_index, 1);
    assert_ne!(sub.child_relid, primary.child_relid);
    assert_eq!(sub.connection_id, 0x2000 | sub.child_relid);
    // A second one through the library API gets index 2.
    let r3 = g
        .server
        .add_subchannel(primary.child_relid, Box::new(EchoVsp::new(0)))
        .unwrap();
    match g.recv().parse().unwrap() {
        ChannelMessage::OfferChannel(o) => {
            assert_eq!((o.child_relid, o.sub_channel_index), (r3, 2))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        g.server.add_subchannel(r3, Box::new(EchoVsp::new(0))),
        Err(VmbusError::NoSuchChannel(r3)),
        "a sub-channel of a sub-channel"
    );
    // The sub-channel carries its own traffic.
    let mut sch = g.open(&sub, 3, 3, 1);
    g.send(&mut sch, 9, true, b"on the sub-channel");
    assert_eq!(g.receive(&mut sch).1, 9);
    assert_eq!(g.receive(&mut sch).0, PacketType::COMPLETION);
    assert_eq!(g.server.stats().channels[&sub.child_relid].packets_in, 1);
    // Rescinding the primary rescinds its sub-channels too.
    g.server.rescind(primary.child_relid).unwrap();
    let mut rescinded: Vec<u32> = (0..3)
        .map(|_| match g.recv().parse().unwrap() {
            ChannelMessage::RescindChannelOffer(r) => r.child_relid,
            other => panic!("{other:?}"),
        })
        .collect();
    rescinded.sort_unstable();
    let mut want = vec![primary.child_relid, sub.child_relid, r3];
    want.sort_unstable();
    assert_eq!(rescinded, want);
    // After an unload, only the device's primary channel is offered again.
    g.post(&ChannelMessage::Unload);
    assert!(matches!(
        g.recv().parse().unwrap(),
        ChannelMessage::UnloadResponse
    ));
    assert!(g.server.channels().is_empty());
    g.server.add_device(Box::new(EchoVsp::new(0))).unwrap();
    g.connect(Version::WIN10_V5_3);
    let again = g.request_offers();
    assert_eq!(again.len(), 1);
    let relid = again[0].child_relid;
    g.server
        .add_subchannel(relid, Box::new(EchoVsp::new(0)))
        .unwrap();
    assert!(matches!(
        g.recv().parse().unwrap(),
        ChannelMessage::OfferChannel(_)
    ));
    g.post(&ChannelMessage::Unload);
    assert!(matches!(
        g.recv().parse().unwrap(),
        ChannelMessage::UnloadResponse
    ));
    assert_eq!(g.server.channels().len(), 1);
    assert_eq!(g.server.channels()[0].sub_channel_index, 0);
}
