//! vsc-net's guest driver against this netvsp through the real VMBus: the
//! guest is `vsc_net::device::NetDevice` over vmbus-guest's VMBus driver,
//! hypercalls and SynIC of an in-process partition ([`InProcess`]); its
//! rings, receive buffer, send buffer and GPA-direct pages are guest RAM
//! behind real GPADLs, and every packet goes through the [`VmbusServer`] to
//! the NIC offered on it. The NICs hang off an L2 [`Switch`] whose extra
//! "peer" port the test sends and receives on, so frames are checked where
//! they leave and enter the VM.
//!
//! Hostile host-side inputs are covered at the NVSP level in `tests.rs`;
//! here the guest-host contract is: what the guest driver does, the host
//! accepts, and the other way round.

use super::backend::{CollectSink, FrameBackend, MacAddr};
use super::netvsp::{rx_section_size, SEND_SECTION_SIZE};
use super::switch::{Switch, SwitchPort};
use super::{Nic, NicConfig, NET_CLASS_ID};
use crate::hv::inprocess::{GuestVp, InProcess};
use crate::vmbus::{VmbusOptions, VmbusServer};
use hypercall::hv::{Hypervisor as GuestHv, SintConfig, SynIc};
use hypercall::msr::GuestOsId;
use hypercall::page::PageRef;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmbus_guest::channel::Channel;
use vmbus_guest::client::ClientConfig as BusConfig;
use vmbus_guest::driver::VmBus;
use vmbus_guest::guid::Guid;
use vmbus_guest::ring::PageRefRing;
use vmbus_guest::version::VMBUS_SINT;
use vsc_net::client::{BufferConfig, ClientConfig, Event, InitError, Step, TxError, TxOffload};
use vsc_net::device::{DeviceError, HostSignal, NetDevice, MAX_DIRECT_PAGES};
use vsc_net::nvsp::{ProtocolVersion, Status};
use vsc_net::rndis::packet_filter;

const RAM: usize = 8 << 20;
const VECTOR: u8 = 0xF3;
const HYPERCALL: u64 = 0x1000;
const SIMP: u64 = 0x2000;
const SIEFP: u64 = 0x3000;
const INPUT: u64 = 0x6000;
/// NIC `i`'s pages live in the MiB at `NIC_BASE + i MiB`.
const NIC_BASE: u64 = 0x10_0000;
const OUT_PAGES: usize = 16;
const IN_PAGES: usize = 16;
/// 256 KiB receive buffer: 157 sub-allocations at MTU 1500.
const RX_PAGES: usize = 64;
/// 16 send sections of 6144 bytes.
const TX_PAGES: usize = 24;
const POLLS: u64 = 2_000_000;
/// Hang guard of the wait loops (not a timing assertion).
const WAIT: Duration = Duration::from_secs(20);
const PEER_MAC: MacAddr = MacAddr([2, 0x70, 0x65, 0x65, 0x72, 1]);

/// The host: partition, VMBus server, NICs on one switch, a peer port.
struct Host {
    part: InProcess,
    _server: Arc<VmbusServer>,
    switch: Arc<Switch>,
    nics: Vec<Arc<Nic>>,
    peer: SwitchPort,
    peer_rx: Arc<CollectSink>,
}

fn nic_mac(i: usize) -> MacAddr {
    MacAddr([2, 0x6E, 0x69, 0x63, 0, i as u8])
}

fn host_with(mtus: &[u32]) -> Host {
    let part = InProcess::new(1, RAM).unwrap();
    let server = VmbusServer::new(Arc::clone(part.hv()), VmbusOptions::default()).unwrap();
    let switch = Switch::new("inproc");
    let nics: Vec<_> = mtus
        .iter()
        .enumerate()
        .map(|(i, &mtu)| {
            let mut cfg = NicConfig::numbered(i as u16);
            cfg.mac = nic_mac(i);
            cfg.mtu = mtu;
            let nic = Nic::new(cfg, Arc::new(switch.port(&format!("nic{i}")))).unwrap();
            server.add_device(nic.vsp()).unwrap();
            nic
        })
        .collect();
    let peer = switch.port("peer");
    let peer_rx = CollectSink::new(8192);
    peer.set_sink(Some(peer_rx.clone()));
    Host {
        part,
        _server: server,
        switch,
        nics,
        peer,
        peer_rx,
    }
}

fn host(n: usize) -> Host {
    host_with(&vec![1500; n])
}

/// Guest pages of one NIC.
struct NicMem<'a> {
    ring: Vec<PageRef<'a>>,
    rx: Vec<PageRef<'a>>,
    tx: Vec<PageRef<'a>>,
    control: PageRef<'a>,
    /// The direct-transmit buffer: out of order and apart in guest RAM, so
    /// a frame crossing a page is only intact if every range names its page.
    direct: Vec<PageRef<'a>>,
}

/// Offsets (from the NIC's MiB) of the direct-transmit pages, in buffer order.
const DIRECT_PAGES: [u64; MAX_DIRECT_PAGES] = [0x8_4000, 0x8_1000, 0x8_6000, 0x8_2000];

fn nic_mem(part: &InProcess, i: usize) -> NicMem<'_> {
    let base = NIC_BASE + (i as u64) * 0x10_0000;
    let pages = |at: u64, n: usize| -> Vec<PageRef<'_>> {
        (0..n as u64)
            .map(|k| part.page(base + at + k * 0x1000).unwrap())
            .collect()
    };
    NicMem {
        ring: pages(0, OUT_PAGES + IN_PAGES),
        rx: pages(0x2_0000, RX_PAGES),
        tx: pages(0x6_0000, TX_PAGES),
        control: part.page(base + 0x8_0000).unwrap(),
        direct: DIRECT_PAGES
            .iter()
            .map(|&at| part.page(base + at).unwrap())
            .collect(),
    }
}

/// An open NIC channel and its buffer GPADLs.
#[derive(Debug, Clone, Copy)]
struct Opened {
    relid: u32,
    conn: u32,
    rx_gpadl: u32,
    tx_gpadl: u32,
}

type Bus<'a> = VmBus<'a, GuestVp<'a>>;

/// Runs `f` with a connected guest VMBus driver (offers received).
fn with_bus<R>(h: &Host, f: impl FnOnce(&mut Bus<'_>) -> R) -> R {
    let part = &h.part;
    let vp0 = part.vp(0);
    let hc = GuestHv::init(
        &vp0,
        GuestOsId::linux(6, 12, 0),
        part.page(HYPERCALL).unwrap(),
    )
    .unwrap();
    let synic = SynIc::enable(
        &vp0,
        part.page(SIMP).unwrap(),
        part.page(SIEFP).unwrap(),
        &[(VMBUS_SINT, SintConfig::interrupt(VECTOR))],
    )
    .unwrap();
    let cfg = BusConfig {
        monitor_page1: 0x7000,
        monitor_page2: 0x8000,
        ..BusConfig::default()
    };
    let mut bus: Bus<'_> = VmBus::new(&hc, &synic, part.page(INPUT).unwrap(), cfg);
    bus.connect(POLLS).unwrap();
    bus.wait_offers(POLLS).unwrap();
    f(&mut bus)
}

fn relid_of(bus: &Bus<'_>, instance: Guid) -> u32 {
    bus.client()
        .channels()
        .iter()
        .find(|c| c.instance() == instance && c.class() == NET_CLASS_ID)
        .unwrap_or_else(|| panic!("no offer for {instance}"))
        .relid()
}

/// Opens NIC `nic`'s channel and creates its buffer GPADLs (`rx_pages` /
/// `tx_pages` of the NIC's buffers).
fn open_sized(
    bus: &mut Bus<'_>,
    h: &Host,
    nic: usize,
    mem: &NicMem<'_>,
    rx_pages: usize,
    tx_pages: usize,
) -> Opened {
    let relid = relid_of(bus, h.nics[nic].instance_id());
    let (ch, _ring_gpadl) = bus
        .open_channel(relid, &mem.ring, OUT_PAGES, 0, [0; 120], POLLS)
        .unwrap();
    let conn = ch.connection_id();
    drop(ch);
    let rx_gpadl = bus.create_gpadl(relid, &mem.rx[..rx_pages], POLLS).unwrap();
    let tx_gpadl = bus.create_gpadl(relid, &mem.tx[..tx_pages], POLLS).unwrap();
    Opened {
        relid,
        conn,
        rx_gpadl,
        tx_gpadl,
    }
}

fn open(bus: &mut Bus<'_>, h: &Host, nic: usize, mem: &NicMem<'_>) -> Opened {
    open_sized(bus, h, nic, mem, RX_PAGES, TX_PAGES)
}

fn config(o: &Opened) -> ClientConfig {
    ClientConfig::new(
        BufferConfig {
            gpadl: o.rx_gpadl,
            len: (RX_PAGES * 4096) as u32,
        },
        BufferConfig {
            gpadl: o.tx_gpadl,
            len: (TX_PAGES * 4096) as u32,
        },
    )
}

type Dev<'p, 'a, S> = NetDevice<'p, 'a, PageRefRing<'p, 'a>, S>;

/// The device over `o`'s channel (one-slot channel over the same rings;
/// their indices live in the control pages).
fn device<'p, 'a, S: HostSignal>(
    signal: S,
    mem: &'p NicMem<'a>,
    o: &Opened,
    cfg: ClientConfig,
) -> Dev<'p, 'a, S> {
    let ch: Channel<_, 1> = Channel::new(
        PageRefRing::new(&mem.ring[..OUT_PAGES]).unwrap(),
        PageRefRing::new(&mem.ring[OUT_PAGES..]).unwrap(),
        o.conn,
    )
    .unwrap();
    NetDevice::new(ch, signal, cfg, &mem.rx, &mem.tx, mem.control, &mem.direct)
}

/// An Ethernet frame of `len` bytes whose payload names `seed` and `len`.
fn frame(dst: MacAddr, src: MacAddr, len: usize, seed: u32) -> Vec<u8> {
    let mut f = vec![0u8; len];
    let head = len.min(14);
    let mut hdr = [0u8; 14];
    hdr[..6].copy_from_slice(&dst.0);
    hdr[6..12].copy_from_slice(&src.0);
    hdr[12..14].copy_from_slice(&[0x88, 0xB5]); // local experimental ethertype
    f[..head].copy_from_slice(&hdr[..head]);
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seed) as u8;
    }
    f
}

/// Polls until `want` frames arrived (hang guard [`WAIT`]).
fn receive_n<S: HostSignal>(dev: &mut Dev<'_, '_, S>, want: usize) -> Vec<Vec<u8>> {
    receive_n_on(dev, want, None)
}

/// [`receive_n`], reporting `nic`'s counters if frames are missing.
fn receive_n_on<S: HostSignal>(
    dev: &mut Dev<'_, '_, S>,
    want: usize,
    nic: Option<&Nic>,
) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let end = Instant::now() + WAIT;
    while got.len() < want {
        assert!(
            Instant::now() < end,
            "{} of {want} frames arrived; guest {:?}; NIC {:?}",
            got.len(),
            dev.stats(),
            nic.map(|n| n.stats())
        );
        dev.poll(|f| got.push(f.to_vec())).unwrap();
    }
    got
}

/// Polls until the host has nothing more for us and every transmit is done.
fn settle<S: HostSignal>(dev: &mut Dev<'_, '_, S>, nic: &Nic) {
    let end = Instant::now() + WAIT;
    loop {
        dev.poll(|_| {}).unwrap();
        let s = nic.stats();
        if dev.client().sections_in_use() == 0
            && !dev.client().direct_in_use()
            && s.rx_sections_free == s.rx_sections
        {
            return;
        }
        assert!(Instant::now() < end, "did not settle: {s:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[test]
fn bring_up_negotiates_everything() {
    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        let info = dev.init(POLLS).unwrap();
        assert_eq!(info.version, ProtocolVersion::V61);
        assert_eq!(info.mac, nic_mac(0).0);
        assert_eq!(dev.mac(), nic_mac(0).0);
        assert_eq!(info.mtu, 1500);
        assert_eq!(dev.mtu(), 1500);
        assert!(info.link_up && dev.link_up());
        assert_eq!(info.receive_section_size, rx_section_size(1500));
        assert_eq!(info.send_section_size, SEND_SECTION_SIZE);
        assert_eq!(
            info.send_sections,
            (TX_PAGES * 4096) as u32 / SEND_SECTION_SIZE
        );
        assert_eq!(info.max_packets_per_message, 8);
        // The host offers no checksum offload: the guest must not use it.
        assert!(!info.tx_tcp4_checksum && !info.tx_udp4_checksum);
        // The host frees the pieces that carried its RNDIS replies on its
        // worker thread, after the guest's completions: wait for that.
        settle(&mut dev, &h.nics[0]);
        let s = h.nics[0].stats();
        assert_eq!(s.version.as_deref(), ProtocolVersion::V61.name());
        assert!(s.rndis_ready && s.link_up);
        assert_eq!(s.packet_filter, packet_filter::LINUX_DEFAULT);
        assert_eq!(
            s.rx_sections,
            (RX_PAGES * 4096) as u32 / rx_section_size(1500)
        );
        assert_eq!(s.rx_sections_free, s.rx_sections);
        assert_eq!(s.protocol_errors, 0, "{s:?}");
        assert_eq!(s.control_messages, 7, "INIT, 4 QUERYs, 2 SETs: {s:?}");
        let d = dev.stats();
        assert_eq!(d.packets_rejected, 0, "{d:?}");
        // Older guests: every version the host speaks comes up.
        for v in ProtocolVersion::DESCENDING.into_iter().skip(1) {
            let cfg = ClientConfig {
                versions: match v {
                    ProtocolVersion::V6 => &[ProtocolVersion::V6],
                    ProtocolVersion::V5 => &[ProtocolVersion::V5],
                    ProtocolVersion::V4 => &[ProtocolVersion::V4],
                    ProtocolVersion::V2 => &[ProtocolVersion::V2],
                    _ => &[ProtocolVersion::V1],
                },
                ..config(&o)
            };
            // A new INIT starts the host over, so the same GPADLs serve again.
            let mut dev = device(&*bus, &mem, &o, cfg);
            let info = dev.init(POLLS).unwrap();
            assert_eq!(info.version, v);
            assert_eq!(h.nics[0].stats().version.as_deref(), v.name());
        }
    });
}

#[test]
fn tx_frames_of_every_size_arrive_intact() {
    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        dev.init(POLLS).unwrap();
        let me = nic_mac(0);
        // Every size from an Ethernet header to the MTU frame; 1515..=1518
        // is the room of an in-frame 802.1Q tag, which both sides allow.
        for len in 14..=1518usize {
            let f = frame(PEER_MAC, me, len, len as u32);
            dev.transmit(&f, TxOffload::default(), POLLS).unwrap();
            let got = h
                .peer_rx
                .recv(WAIT)
                .expect("frame did not reach the switch");
            assert!(got == f, "frame of {len} bytes changed on the way");
        }
        settle(&mut dev, &h.nics[0]);
        let s = h.nics[0].stats();
        assert_eq!(s.tx_frames, 1505);
        assert_eq!((s.tx_dropped, s.protocol_errors), (0, 0), "{s:?}");
        let d = dev.stats();
        assert_eq!(d.frames_sent, 1505);
        assert_eq!(d.packets_rejected, 0, "{d:?}");
        // Oversize and empty frames are refused by the guest before the host sees them.
        // (Shorter than an Ethernet header, too: the host would drop it.)
        for len in [0, 1, 13, 1519, 4000, 9000] {
            let f = vec![0u8; len];
            assert_eq!(
                dev.transmit(&f, TxOffload::default(), POLLS),
                Err(DeviceError::Tx(TxError::BadLength(len)))
            );
        }
        assert_eq!(h.nics[0].stats().tx_frames, 1505);
        assert!(h.peer_rx.recv(Duration::ZERO).is_none());
    });
}

/// Bytes of the RNDIS PACKET header before a frame without PPIs.
const RNDIS_HEAD: usize = vsc_net::rndis::packet_header_len(0);

/// Sends `f` GPA-direct and checks it went that way (the direct buffer,
/// not a section, awaits the completion) and reached the switch intact.
fn direct_arrives<S: HostSignal>(dev: &mut Dev<'_, '_, S>, h: &Host, f: &[u8]) {
    let sections = dev.client().sections_in_use();
    dev.transmit_direct(f, TxOffload::default(), POLLS)
        .unwrap_or_else(|e| panic!("GPA-direct frame of {} bytes: {e}", f.len()));
    assert!(dev.client().direct_in_use() && dev.client().sections_in_use() <= sections);
    let got = h.peer_rx.recv(WAIT).unwrap_or_else(|| {
        panic!(
            "GPA-direct frame of {} bytes did not reach the switch; NIC {:?}",
            f.len(),
            h.nics[0].stats()
        )
    });
    assert!(
        got == f,
        "GPA-direct frame of {} bytes changed on the way",
        f.len()
    );
}

/// Forced GPA-direct transmits of every size class arrive intact: small,
/// 1514 and the VLAN-tag room at MTU 1500; at MTU 9000 frames whose RNDIS
/// message ends exactly at a page end, crosses into the next page by one
/// byte, spans three pages, and the 9014-byte (and 9018-byte) maximum. The
/// direct pages are scattered in guest RAM, so a frame crossing a page
/// arrives intact only if each range names its own page with the right
/// length (and netvsp gathers multi-range GPA-direct RNDIS packets).
#[test]
fn gpa_direct_tx_of_every_size_class_arrives_intact() {
    let h = host_with(&[1500, 9000]);
    let me = nic_mac(0);
    let mem = nic_mem(&h.part, 0);
    let m1 = nic_mem(&h.part, 1);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        dev.init(POLLS).unwrap();
        let sizes = [14, 15, 60, 64, 100, 1000, 1513, 1514, 1515, 1518];
        for (i, &len) in sizes.iter().enumerate() {
            direct_arrives(&mut dev, &h, &frame(PEER_MAC, me, len, i as u32));
        }
        // Back to back: the next transmit waits for the direct buffer's
        // completion; a section transmit in between is not held up.
        for i in 0..32u32 {
            direct_arrives(&mut dev, &h, &frame(PEER_MAC, me, 1514, 100 + i));
            let f = frame(PEER_MAC, me, 1514, 200 + i);
            dev.transmit(&f, TxOffload::default(), POLLS).unwrap();
            assert_eq!(h.peer_rx.recv(WAIT), Some(f));
        }
        settle(&mut dev, &h.nics[0]);
        let s = h.nics[0].stats();
        assert_eq!(s.tx_frames, sizes.len() as u64 + 64);
        assert_eq!((s.tx_dropped, s.protocol_errors), (0, 0), "{s:?}");
        // The guest refuses what the host would drop, before it is sent.
        for len in [0, 13, 1519, 9014] {
            assert_eq!(
                dev.transmit_direct(&vec![0; len], TxOffload::default(), POLLS),
                Err(DeviceError::Tx(TxError::BadLength(len)))
            );
        }

        let o1 = open(bus, &h, 1, &m1);
        let mut dev = device(&*bus, &m1, &o1, jumbo(config(&o1)));
        let info = dev.init(POLLS).unwrap();
        assert_eq!(info.mtu, 9000);
        let me = nic_mac(1);
        let page = 4096;
        let sizes = [
            60,
            1514,
            page - RNDIS_HEAD - 1,
            page - RNDIS_HEAD,
            page - RNDIS_HEAD + 1,
            page,
            SEND_SECTION_SIZE as usize,
            2 * page - RNDIS_HEAD,
            2 * page - RNDIS_HEAD + 1,
            9014,
            9018,
        ];
        for (i, &len) in sizes.iter().enumerate() {
            let f = frame(PEER_MAC, me, len, 1000 + i as u32);
            dev.transmit_direct(&f, TxOffload::default(), POLLS)
                .unwrap_or_else(|e| panic!("GPA-direct frame of {len} bytes: {e}"));
            let got = h.peer_rx.recv(WAIT).unwrap_or_else(|| {
                panic!(
                    "GPA-direct frame of {len} bytes did not reach the switch; NIC {:?}",
                    h.nics[1].stats()
                )
            });
            assert!(
                got == f,
                "GPA-direct frame of {len} bytes changed on the way"
            );
        }
        settle(&mut dev, &h.nics[1]);
        let s = h.nics[1].stats();
        assert_eq!(s.tx_frames, sizes.len() as u64);
        assert_eq!((s.tx_dropped, s.protocol_errors), (0, 0), "{s:?}");
        assert_eq!(dev.stats().packets_rejected, 0, "{:?}", dev.stats());
        assert!(h.peer_rx.recv(Duration::ZERO).is_none());
    });
}

/// At MTU 9000 a jumbo frame that fits a send section goes through one, a
/// larger one (which used to be refused with BadLength) goes GPA-direct on
/// its own, and a forced GPA-direct transmit of the same frames works too.
/// A direct buffer too small for a frame refuses it before anything is
/// sent.
#[test]
fn jumbo_frames_through_a_section_and_direct_at_mtu_9000() {
    let h = host_with(&[9000]);
    let mem = nic_mem(&h.part, 0);
    let me = nic_mac(0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, jumbo(config(&o)));
        assert_eq!(dev.init(POLLS).unwrap().mtu, 9000);
        let in_section = SEND_SECTION_SIZE as usize - RNDIS_HEAD;
        for (i, len) in [in_section, in_section + 1, 8000, 9014, 9018]
            .into_iter()
            .enumerate()
        {
            let f = frame(PEER_MAC, me, len, 10 * i as u32);
            dev.transmit(&f, TxOffload::default(), POLLS)
                .unwrap_or_else(|e| panic!("frame of {len} bytes: {e}"));
            let via_section = dev.client().sections_in_use() == 1;
            assert_eq!(via_section, len <= in_section, "frame of {len} bytes");
            assert_eq!(dev.client().direct_in_use(), !via_section);
            assert_eq!(h.peer_rx.recv(WAIT), Some(f), "frame of {len} bytes");
            settle(&mut dev, &h.nics[0]);

            let f = frame(PEER_MAC, me, len, 10 * i as u32 + 1);
            dev.transmit_direct(&f, TxOffload::default(), POLLS)
                .unwrap_or_else(|e| panic!("GPA-direct frame of {len} bytes: {e}"));
            assert!(dev.client().direct_in_use() && dev.client().sections_in_use() == 0);
            assert_eq!(h.peer_rx.recv(WAIT), Some(f), "frame of {len} bytes");
            settle(&mut dev, &h.nics[0]);
        }
        let s = h.nics[0].stats();
        assert_eq!(s.tx_frames, 10);
        assert_eq!((s.tx_dropped, s.protocol_errors), (0, 0), "{s:?}");
        assert_eq!(
            dev.transmit(&[0; 9019], TxOffload::default(), POLLS),
            Err(DeviceError::Tx(TxError::BadLength(9019)))
        );

        // One direct page: a frame that fits a section still goes, a
        // larger one is refused by the guest and never reaches the host.
        let ch: Channel<_, 1> = Channel::new(
            PageRefRing::new(&mem.ring[..OUT_PAGES]).unwrap(),
            PageRefRing::new(&mem.ring[OUT_PAGES..]).unwrap(),
            o.conn,
        )
        .unwrap();
        let mut dev: Dev<'_, '_, _> = NetDevice::new(
            ch,
            &*bus,
            jumbo(config(&o)),
            &mem.rx,
            &mem.tx,
            mem.control,
            &mem.direct[..1],
        );
        dev.init(POLLS).unwrap();
        let f = frame(PEER_MAC, me, in_section, 7);
        dev.transmit(&f, TxOffload::default(), POLLS).unwrap();
        assert_eq!(h.peer_rx.recv(WAIT), Some(f));
        let f = frame(PEER_MAC, me, page_room(1) + 1, 8);
        assert_eq!(
            dev.transmit_direct(&f, TxOffload::default(), POLLS),
            Err(DeviceError::Tx(TxError::BadLength(f.len())))
        );
        let f = frame(PEER_MAC, me, page_room(1), 9);
        dev.transmit_direct(&f, TxOffload::default(), POLLS)
            .unwrap();
        assert_eq!(h.peer_rx.recv(WAIT), Some(f));
        assert_eq!(
            dev.transmit(&[0; 9014], TxOffload::default(), POLLS),
            Err(DeviceError::Tx(TxError::BadLength(9014)))
        );
        settle(&mut dev, &h.nics[0]);
        let s = h.nics[0].stats();
        assert_eq!(s.tx_frames, 12);
        assert_eq!((s.tx_dropped, s.protocol_errors), (0, 0), "{s:?}");
        assert!(h.peer_rx.recv(Duration::ZERO).is_none());
    });
}

/// `cfg` announcing MTU 9000.
fn jumbo(cfg: ClientConfig) -> ClientConfig {
    ClientConfig { mtu: 9000, ..cfg }
}

/// The largest frame `pages` direct pages hold after the RNDIS header.
fn page_room(pages: usize) -> usize {
    pages * 4096 - RNDIS_HEAD
}

#[test]
fn rx_frames_of_every_size_and_completions_free_the_buffer() {
    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        dev.init(POLLS).unwrap();
        let me = nic_mac(0);
        let nic = &h.nics[0];
        let sections = nic.stats().rx_sections;
        // Every size up to the MTU frame (+ a VLAN tag's room), in batches
        // smaller than the receive buffer.
        let sizes: Vec<usize> = (14..=1518).collect();
        for chunk in sizes.chunks(64) {
            for &len in chunk {
                h.peer.send(&frame(me, PEER_MAC, len, 7)).unwrap();
            }
            let got = receive_n_on(&mut dev, chunk.len(), Some(nic));
            for (&len, g) in chunk.iter().zip(&got) {
                assert!(
                    *g == frame(me, PEER_MAC, len, 7),
                    "{len}-byte frame changed"
                );
            }
            // The host frees pieces on its worker thread, asynchronously:
            // wait for it, so the next batch cannot find the buffer full.
            settle(&mut dev, nic);
        }
        settle(&mut dev, nic);
        let s = nic.stats();
        assert_eq!(s.rx_frames, sizes.len() as u64);
        assert_eq!(s.rx_dropped_no_buffer + s.bogus_completions, 0, "{s:?}");
        assert_eq!(s.rx_sections_free, sections);
        // Oversize from the host side: dropped and counted, never delivered.
        h.peer.send(&frame(me, PEER_MAC, 1519, 7)).unwrap();
        assert_eq!(nic.stats().rx_dropped_oversize, 1);
        // Frames for someone else are filtered (directed + broadcast only).
        h.peer
            .send(&frame(MacAddr([2, 9, 9, 9, 9, 9]), PEER_MAC, 60, 7))
            .unwrap();
        assert_eq!(nic.stats().rx_dropped_filter, 1);
        let b = frame(MacAddr::BROADCAST, PEER_MAC, 60, 9);
        h.peer.send(&b).unwrap();
        assert_eq!(receive_n_on(&mut dev, 1, Some(nic)), vec![b]);

        // Sustained traffic: many times the buffer, no piece leaks.
        let total = 20 * sections as usize;
        let mut got = 0;
        for i in 0..total {
            h.peer
                .send(&frame(me, PEER_MAC, 60 + i % 1400, i as u32))
                .unwrap();
            if i % 100 == 99 {
                got += receive_n_on(&mut dev, 100, Some(nic)).len();
                settle(&mut dev, nic);
            }
        }
        got += receive_n_on(&mut dev, total - got, Some(nic)).len();
        assert_eq!(got, total);
        settle(&mut dev, nic);
        let s = nic.stats();
        assert_eq!(s.rx_dropped_no_buffer, 0, "{s:?}");
        assert_eq!(s.rx_sections_free, sections, "sub-allocations leaked");

        // Overload: the host drops what does not fit and counts it; once the
        // guest catches up every piece is free again.
        let burst = 2 * sections as usize;
        for i in 0..burst {
            h.peer.send(&frame(me, PEER_MAC, 1514, i as u32)).unwrap();
        }
        let s = nic.stats();
        assert!(s.rx_dropped_no_buffer > 0, "{s:?}");
        let delivered = burst - (s.rx_dropped_no_buffer as usize);
        assert_eq!(
            receive_n_on(&mut dev, delivered, Some(nic)).len(),
            delivered
        );
        settle(&mut dev, nic);
        assert_eq!(nic.stats().rx_sections_free, sections);
        // And traffic flows again.
        h.peer.send(&frame(me, PEER_MAC, 100, 1)).unwrap();
        assert_eq!(receive_n_on(&mut dev, 1, Some(nic)).len(), 1);
        assert_eq!(dev.stats().packets_rejected, 0);
    });
}

#[test]
fn link_indications_reach_the_guest() {
    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        dev.init(POLLS).unwrap();
        let nic = &h.nics[0];
        let me = nic_mac(0);
        let wait_link = |dev: &mut Dev<'_, '_, _>, up: bool| {
            let mut seen = Vec::new();
            let end = Instant::now() + WAIT;
            while !seen.contains(&up) {
                assert!(Instant::now() < end, "no link {up} indication");
                dev.poll_events(|e| {
                    if let Event::Link(u) = e {
                        seen.push(u)
                    }
                })
                .unwrap();
            }
            assert_eq!(seen, vec![up]);
        };
        nic.set_link(false);
        wait_link(&mut dev, false);
        assert!(!dev.link_up());
        // While down: host frames are dropped, guest frames too (but
        // completed, as a NIC without carrier would).
        h.peer.send(&frame(me, PEER_MAC, 60, 1)).unwrap();
        assert_eq!(nic.stats().rx_dropped_link, 1);
        dev.transmit(&frame(PEER_MAC, me, 60, 1), TxOffload::default(), POLLS)
            .unwrap();
        settle(&mut dev, nic);
        assert_eq!(nic.stats().tx_dropped, 1);
        assert!(h.peer_rx.recv(Duration::ZERO).is_none());
        nic.set_link(true);
        wait_link(&mut dev, true);
        assert!(dev.link_up());
        // Setting the same state again sends nothing.
        nic.set_link(true);
        let before = nic.stats().link_indications;
        assert_eq!(before, 2);
        let f = frame(me, PEER_MAC, 60, 2);
        h.peer.send(&f).unwrap();
        assert_eq!(receive_n_on(&mut dev, 1, Some(nic)), vec![f]);
        assert_eq!(nic.stats().link_indications, 2);
    });
}

#[test]
fn two_nics_on_one_switch_exchange_frames() {
    let h = host(2);
    let (ma, mb) = (nic_mem(&h.part, 0), nic_mem(&h.part, 1));
    with_bus(&h, |bus| {
        let oa = open(bus, &h, 0, &ma);
        let ob = open(bus, &h, 1, &mb);
        assert_ne!(oa.relid, ob.relid);
        let mut a = device(&*bus, &ma, &oa, config(&oa));
        let mut b = device(&*bus, &mb, &ob, config(&ob));
        a.init(POLLS).unwrap();
        b.init(POLLS).unwrap();
        let (a_mac, b_mac) = (nic_mac(0), nic_mac(1));
        assert_eq!(a.mac(), a_mac.0);
        assert_eq!(b.mac(), b_mac.0);
        // A broadcast from A: B and the peer see it, A does not.
        let bc = frame(MacAddr::BROADCAST, a_mac, 60, 3);
        a.transmit(&bc, TxOffload::default(), POLLS).unwrap();
        assert_eq!(receive_n(&mut b, 1), vec![bc.clone()]);
        assert_eq!(h.peer_rx.recv(WAIT), Some(bc));
        // Unicast both ways, every size class; once learned, the peer sees none.
        let mut n = 0;
        for len in [14, 60, 61, 512, 1000, 1514] {
            let ab = frame(b_mac, a_mac, len, 10);
            let ba = frame(a_mac, b_mac, len, 20);
            a.transmit(&ab, TxOffload::default(), POLLS).unwrap();
            b.transmit(&ba, TxOffload::default(), POLLS).unwrap();
            assert_eq!(receive_n(&mut b, 1), vec![ab]);
            assert_eq!(receive_n(&mut a, 1), vec![ba]);
            n += 1;
        }
        settle(&mut a, &h.nics[0]);
        settle(&mut b, &h.nics[1]);
        let (sa, sb) = (h.nics[0].stats(), h.nics[1].stats());
        assert_eq!((sa.tx_frames, sb.rx_frames), (n + 1, n + 1));
        assert_eq!((sb.tx_frames, sa.rx_frames), (n, n));
        assert_eq!(h.switch.stats().macs, 2);
        // Only the first unicast (A not yet learned? B unknown) may flood.
        while let Some(f) = h.peer_rx.recv(Duration::ZERO) {
            assert_eq!(MacAddr::dst_of(&f), Some(b_mac), "flooded frame");
        }
    });
}

#[test]
fn bring_up_errors_are_typed() {
    let h = host_with(&[1500, 576]);
    let (m0, m1) = (nic_mem(&h.part, 0), nic_mem(&h.part, 1));
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &m0);
        // No version in common.
        let cfg = ClientConfig {
            versions: &[ProtocolVersion(0x0009_0000)],
            ..config(&o)
        };
        let mut dev = device(&*bus, &m0, &o, cfg);
        assert_eq!(
            dev.init(POLLS),
            Err(DeviceError::Init(InitError::NoCommonVersion))
        );
        // A receive buffer GPADL the host does not know.
        let mut cfg = config(&o);
        cfg.receive_buffer.gpadl = 0xDEAD;
        let mut dev = device(&*bus, &m0, &o, cfg);
        assert_eq!(
            dev.init(POLLS),
            Err(DeviceError::Init(InitError::NvspRefused(
                Step::ReceiveBuffer,
                Status::FAIL
            )))
        );
        // The send buffer named as the receive buffer's GPADL twice: the
        // host refuses a second buffer on the same GPADL? It does not care;
        // but a send buffer smaller than one section is refused.
        let small = bus.create_gpadl(o.relid, &m0.tx[..1], POLLS).unwrap();
        let mut cfg = config(&o);
        cfg.send_buffer = BufferConfig {
            gpadl: small,
            len: 4096,
        };
        let mut dev = device(&*bus, &m0, &o, cfg);
        let r = dev.init(POLLS);
        assert!(
            matches!(
                r,
                Err(DeviceError::Init(
                    InitError::NvspRefused(Step::SendBuffer, _) | InitError::BadConfig
                ))
            ),
            "{r:?}"
        );
        // After all that, a correct bring-up on the same channel works.
        let mut dev = device(&*bus, &m0, &o, config(&o));
        dev.init(POLLS).unwrap();
        dev.transmit(
            &frame(PEER_MAC, nic_mac(0), 60, 0),
            TxOffload::default(),
            POLLS,
        )
        .unwrap();
        assert!(h.peer_rx.recv(WAIT).is_some());

        // A NIC with a smaller MTU: the guest adopts it and refuses bigger frames.
        let o1 = open(bus, &h, 1, &m1);
        let mut dev = device(&*bus, &m1, &o1, config(&o1));
        let info = dev.init(POLLS).unwrap();
        assert_eq!(info.mtu, 576);
        let ok = frame(PEER_MAC, nic_mac(1), 590, 0);
        dev.transmit(&ok, TxOffload::default(), POLLS).unwrap();
        assert_eq!(h.peer_rx.recv(WAIT), Some(ok));
        assert_eq!(
            dev.transmit(&[0; 595], TxOffload::default(), POLLS),
            Err(DeviceError::Tx(TxError::BadLength(595)))
        );
    });
}

#[test]
fn close_and_reopen_starts_over() {
    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        {
            let mut dev = device(&*bus, &mem, &o, config(&o));
            dev.init(POLLS).unwrap();
            // Leave a frame unreceived in the ring: its piece is in use.
            h.peer.send(&frame(nic_mac(0), PEER_MAC, 60, 0)).unwrap();
        }
        // Linux (VMBus >= 4.0) order: close, then tear the buffers down.
        bus.close_channel(o.relid, POLLS).unwrap();
        assert!(!h.nics[0].stats().rndis_ready);
        bus.teardown_gpadl(o.rx_gpadl, POLLS).unwrap();
        bus.teardown_gpadl(o.tx_gpadl, POLLS).unwrap();
        // Frames while closed go nowhere (and nothing is written).
        h.peer.send(&frame(nic_mac(0), PEER_MAC, 60, 1)).unwrap();
        let o = open(bus, &h, 0, &mem);
        let mut dev = device(&*bus, &mem, &o, config(&o));
        dev.init(POLLS).unwrap();
        let f = frame(nic_mac(0), PEER_MAC, 70, 2);
        h.peer.send(&f).unwrap();
        assert_eq!(receive_n(&mut dev, 1), vec![f]);
        settle(&mut dev, &h.nics[0]);
    });
}

/// A guest that tears a buffer's GPADL down without revoking the buffer
/// first (Linux never does: it revokes, then tears down) gets its pages
/// back untouched: netvsp drops the buffer instead of writing into pages
/// the guest may have reused, and refuses sends from the torn-down send
/// buffer.
#[test]
fn torn_down_buffer_gpadls_are_never_touched_again() {
    use vmbus_guest::packet::{PacketFlags, PacketType};
    use vmbus_guest::ring::OutgoingPacket;
    use vsc_net::nvsp::{self, NvspMessage};
    use zerocopy::IntoBytes;

    let h = host(1);
    let mem = nic_mem(&h.part, 0);
    let nic = &h.nics[0];
    let me = nic_mac(0);
    with_bus(&h, |bus| {
        let o = open(bus, &h, 0, &mem);
        {
            let mut dev = device(&*bus, &mem, &o, config(&o));
            dev.init(POLLS).unwrap();
            h.peer.send(&frame(me, PEER_MAC, 60, 0)).unwrap();
            assert_eq!(receive_n(&mut dev, 1).len(), 1);
            settle(&mut dev, nic);
        }
        // The GPADLs go while the buffers are still in use.
        bus.teardown_gpadl(o.rx_gpadl, POLLS).unwrap();
        bus.teardown_gpadl(o.tx_gpadl, POLLS).unwrap();
        // The guest reuses the pages at once (it got GpadlTorndown).
        let fill = |pages: &[PageRef<'_>], b: u8| {
            for p in pages {
                p.write_bytes(0, &[b; 4096]);
            }
        };
        fill(&mem.rx, 0xA5);
        fill(&mem.tx, 0x5A);
        for i in 0..10 {
            h.peer.send(&frame(me, PEER_MAC, 1514, i)).unwrap();
        }
        let s = nic.stats();
        assert_eq!(s.rx_dropped_no_buffer, 10, "{s:?}");
        assert_eq!(s.rx_sections, 0, "receive buffer still in use: {s:?}");
        assert_eq!(s.protocol_errors, 1, "{s:?}");
        let mut page = [0u8; 4096];
        for p in &mem.rx {
            p.read_bytes(0, &mut page);
            assert!(
                page.iter().all(|&b| b == 0xA5),
                "host wrote a torn-down page"
            );
        }
        // A send from a section of the torn-down send buffer fails.
        let mut ch: Channel<_, 1> = Channel::new(
            PageRefRing::new(&mem.ring[..OUT_PAGES]).unwrap(),
            PageRefRing::new(&mem.ring[OUT_PAGES..]).unwrap(),
            o.conn,
        )
        .unwrap();
        let m = NvspMessage::send_rndis_packet(nvsp::channel_type::DATA, Some((0, 100)));
        let payload = [m.as_bytes()];
        let p = OutgoingPacket {
            packet_type: PacketType::DATA_INBAND,
            flags: PacketFlags::new().with_completion_requested(true),
            transaction_id: 77,
            extension: &[],
            payload: &payload,
        };
        let s = ch.send_packet(&p).unwrap();
        if s.needed() {
            bus.signal(o.conn).unwrap();
        }
        let mut buf = [0u8; 512];
        let end = Instant::now() + WAIT;
        let status = loop {
            assert!(Instant::now() < end, "no completion");
            if let Some(v) = ch.receiver().try_read_packet(&mut buf).unwrap() {
                if v.transaction_id() == 77 {
                    let m = nvsp::parse(v.payload()).unwrap();
                    break match m {
                        nvsp::Message::SendRndisPacketComplete(c) => c.status,
                        other => panic!("{other:?}"),
                    };
                }
            }
        };
        assert_eq!(status, Status::FAIL);
        assert!(h.peer_rx.recv(Duration::ZERO).is_none());
        for p in &mem.tx {
            p.read_bytes(0, &mut page);
            assert!(page.iter().all(|&b| b == 0x5A));
        }
    });
}
