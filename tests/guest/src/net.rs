//! The network checks: `vsc-net`'s netvsc device over the NIC's VMBus channel
//! (netvsp on the host), with smoltcp on top through `SmolDevice`.
//!
//! **Addressing** (docs/ARCHITECTURE.md, "Network"): the test network is
//! 10.213.0.0/24; the host side (the demo's peer, or the kernel behind a TAP)
//! is 10.213.0.1. The guest is 10.213.0.2, unless its MAC has the form
//! 02:15:0a:d5:GG:NN (0a:d5 = 10.213) with NN in 2..=254: then it is
//! 10.213.0.NN. GG != 0 marks a multi-guest test: the guest then also runs
//! `net-peer` (a UDP broadcast exchange with another guest on the switch),
//! which a single guest could never pass.
//!
//! **Host side** the checks expect: ARP and ICMP echo answered at 10.213.0.1,
//! a UDP echo on port 7, the host pinging the guest (at least
//! [`PEER_PINGS`] echo requests) and toggling the link down and up once after
//! bring-up (`host-test-vmm`'s net exercise does that 100 ms after the guest
//! set its packet filter).
//!
//! Evidence comes from the wire, not from smoltcp's word: a [`Sniff`]
//! wrapper around the phy device counts the ARP and ICMP frames each way.
//! Waits sleep between channel interrupts (`sti; hlt`, at most two ticks so
//! smoltcp's timers run), bounded by watchdog ticks. The checks run on a
//! private 128 KiB stack: the glue's receive path alone keeps ~13 KiB of
//! buffers on the stack, smoltcp more.

use core::cell::{Cell, UnsafeCell};
use core::fmt;

use hypercall::page::{Page, PAGE_SIZE};
use hypercall::platform::Platform;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities};
use smoltcp::socket::{icmp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol,
    Ipv4Address, Ipv4Packet,
};
use vmbus_guest::guid;
use vsc_net::client::{BufferConfig, ClientConfig, Event};
use vsc_net::device::smoltcp_phy::SmolDevice;
use vsc_net::device::{HostSignal, NetDevice, DIRECT_TX_MIN_PAGES_JUMBO};

use crate::irq;
use crate::pages::RING_PAGES;
use crate::vmbus::{chan_irqs, create_gpadl, open_channel, Failure, Ring, Shared};

/// Receive buffer: 16 pages (~40 sub-allocations of a 1500-byte MTU).
const RX_PAGES: usize = 16;
/// Send buffer: 12 pages, 8 sections of 6144 bytes.
const TX_PAGES: usize = 12;
static RING: [Page; RING_PAGES] = [const { Page::new() }; RING_PAGES];
static RX: [Page; RX_PAGES] = [const { Page::new() }; RX_PAGES];
static TX: [Page; TX_PAGES] = [const { Page::new() }; TX_PAGES];
/// The RNDIS control page.
static CONTROL: [Page; 1] = [const { Page::new() }; 1];
/// The GPA-direct transmit buffer (any frame up to the MTU plus its RNDIS header).
static DIRECT: [Page; DIRECT_TX_MIN_PAGES_JUMBO] =
    [const { Page::new() }; DIRECT_TX_MIN_PAGES_JUMBO];

/// The host side's address.
pub const PEER_IP: Ipv4Address = Ipv4Address::new(10, 213, 0, 1);
/// The host's UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// `net-peer`'s broadcast port.
pub const PEER_TEST_PORT: u16 = 7001;
/// The guest's own UDP port for the echo exchange.
const LOCAL_PORT: u16 = 40007;
/// Echo requests from the host the guest must answer.
pub const PEER_PINGS: u32 = 3;
/// The ICMP identifier of the guest's pings.
const PING_IDENT: u16 = 0x4856;
const PING_PAYLOAD: &[u8] = b"hvkit-net-icmp guest->peer";
/// Polls the glue's blocking bring-up may spin.
const MAX_POLLS: u64 = 200_000;
/// Watchdog ticks (10 ms) for the link indications.
const LINK_TICKS: u64 = 500;
/// Ticks for the guest's ping (ARP first) and for serving the host's pings.
const ICMP_TICKS: u64 = 500;
/// Ticks per UDP datagram's echo (one retransmission at half time).
const UDP_TICKS: u64 = 200;
/// Ticks for `net-peer` (the other guest may still be in its earlier checks).
const PEER_TICKS: u64 = 3000;
const NET_STACK: usize = 128 * 1024;

/// Signals the host through the bus.
struct Sig<'s, 'a, P: Platform>(&'s Shared<'a, P>);

impl<P: Platform> HostSignal for Sig<'_, '_, P> {
    fn signal(&mut self, connection_id: u32) -> bool {
        self.0.with(|b| b.signal(connection_id).is_ok())
    }
}

// ---- a private stack ------------------------------------------------------------

#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; NET_STACK]>);
// SAFETY: only the BSP runs checks, and only through `on_net_stack`, which
// is not reentrant (the checks never call it from an interrupt).
unsafe impl Sync for Stack {}
static STACK: Stack = Stack(UnsafeCell::new([0; NET_STACK]));

core::arch::global_asm!(
    r#"
    .section .text.hvkit_call_on_stack, "ax"
    .global hvkit_call_on_stack
    // rdi = argument, rsi = function, rdx = new stack top (16-byte aligned).
    hvkit_call_on_stack:
        push rbp
        mov rbp, rsp
        mov rsp, rdx
        call rsi
        mov rsp, rbp
        pop rbp
        ret
    "#
);

extern "C" {
    fn hvkit_call_on_stack(arg: *mut u8, f: extern "C" fn(*mut u8), top: *mut u8);
}

extern "C" fn trampoline<F: FnOnce()>(arg: *mut u8) {
    // SAFETY: `on_net_stack` passes a live `&mut Option<F>` as `arg`.
    let slot = unsafe { &mut *arg.cast::<Option<F>>() };
    if let Some(f) = slot.take() {
        f();
    }
}

/// Runs `f` on [`STACK`].
fn on_net_stack<F: FnOnce()>(f: F) {
    let mut slot = Some(f);
    let top = STACK.0.get().cast::<u8>().wrapping_add(NET_STACK);
    // SAFETY: the trampoline only runs `f` and returns; the assembly saves
    // and restores RSP/RBP around the call, and the stack is ours alone.
    unsafe { hvkit_call_on_stack((&raw mut slot).cast::<u8>(), trampoline::<F>, top) };
}

// ---- the wire witness -------------------------------------------------------------

/// Frames seen on the wire, by kind and direction.
#[derive(Default)]
struct Seen {
    me: Cell<[u8; 4]>,
    frames_in: Cell<u32>,
    frames_out: Cell<u32>,
    arp_req_out: Cell<u32>,
    arp_reply_in: Cell<u32>,
    arp_req_in: Cell<u32>,
    arp_reply_out: Cell<u32>,
    /// The MAC the peer's ARP reply named.
    peer_mac: Cell<Option<[u8; 6]>>,
    echo_req_in: Cell<u32>,
    echo_reply_out: Cell<u32>,
}

fn bump(c: &Cell<u32>) {
    c.set(c.get().wrapping_add(1));
}

impl Seen {
    fn classify(&self, f: &[u8], rx: bool) {
        bump(if rx {
            &self.frames_in
        } else {
            &self.frames_out
        });
        let Ok(eth) = EthernetFrame::new_checked(f) else {
            return;
        };
        let me = Ipv4Address::from(self.me.get());
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let Ok(p) = ArpPacket::new_checked(eth.payload()) else {
                    return;
                };
                let Ok(ArpRepr::EthernetIpv4 {
                    operation,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                }) = ArpRepr::parse(&p)
                else {
                    return;
                };
                match (rx, operation) {
                    (true, ArpOperation::Request) if target_protocol_addr == me => {
                        bump(&self.arp_req_in)
                    }
                    (true, ArpOperation::Reply)
                        if target_protocol_addr == me && source_protocol_addr == PEER_IP =>
                    {
                        bump(&self.arp_reply_in);
                        self.peer_mac.set(Some(source_hardware_addr.0));
                    }
                    (false, ArpOperation::Request) if target_protocol_addr == PEER_IP => {
                        bump(&self.arp_req_out)
                    }
                    (false, ArpOperation::Reply) => bump(&self.arp_reply_out),
                    _ => {}
                }
            }
            EthernetProtocol::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    return;
                };
                if ip.next_header() != IpProtocol::Icmp {
                    return;
                }
                let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
                    return;
                };
                match (rx, icmp.msg_type()) {
                    (true, Icmpv4Message::EchoRequest) if ip.dst_addr() == me => {
                        bump(&self.echo_req_in)
                    }
                    (false, Icmpv4Message::EchoReply) => bump(&self.echo_reply_out),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// A phy device that shows every frame to [`Seen`].
struct Sniff<D> {
    inner: D,
    seen: Seen,
}

struct SniffRx<'s, T> {
    inner: T,
    seen: &'s Seen,
}

struct SniffTx<'s, T> {
    inner: T,
    seen: &'s Seen,
}

impl<T: phy::RxToken> phy::RxToken for SniffRx<'_, T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let seen = self.seen;
        self.inner.consume(|b| {
            seen.classify(b, true);
            f(b)
        })
    }
}

impl<T: phy::TxToken> phy::TxToken for SniffTx<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let seen = self.seen;
        self.inner.consume(len, |b| {
            let r = f(b);
            seen.classify(b, false);
            r
        })
    }
}

impl<D: phy::Device> phy::Device for Sniff<D> {
    type RxToken<'a>
        = SniffRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = SniffTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Self { inner, seen } = self;
        let (rx, tx) = inner.receive(t)?;
        Some((SniffRx { inner: rx, seen }, SniffTx { inner: tx, seen }))
    }

    fn transmit(&mut self, t: Instant) -> Option<Self::TxToken<'_>> {
        let Self { inner, seen } = self;
        inner.transmit(t).map(|tx| SniffTx { inner: tx, seen })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

// ---- helpers ------------------------------------------------------------------------

/// `core::fmt` into a byte buffer (truncating).
struct Cursor<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The guest's address and test group from its MAC (see the module docs).
fn addressing(mac: [u8; 6]) -> (Ipv4Address, u8) {
    if mac[..4] == [0x02, 0x15, 0x0a, 0xd5] && (2..=254).contains(&mac[5]) {
        (Ipv4Address::new(10, 213, 0, mac[5]), mac[4])
    } else {
        (Ipv4Address::new(10, 213, 0, 2), 0)
    }
}

fn now() -> Instant {
    Instant::from_millis((irq::ticks() * (1000 / irq::TICK_HZ)) as i64)
}

/// Byte `j` of UDP datagram `k` of `len` bytes.
fn udp_byte(k: usize, len: usize, j: usize) -> u8 {
    (j.wrapping_mul(31).wrapping_add(len).wrapping_add(k * 7) as u8) ^ 0x5A
}

type Dev<'s, 'a, 'p, P> = NetDevice<'p, 'static, Ring<'p>, Sig<'s, 'a, P>, 4>;
type Smol<'s, 'a, 'p, P> = SmolDevice<'p, 'static, Ring<'p>, Sig<'s, 'a, P>, 4, 4>;

/// The link indications seen since bring-up started.
#[derive(Default, Clone, Copy)]
struct Links {
    up_at_init: bool,
    downs: u32,
    ups_after_down: u32,
}

impl Links {
    fn on_event(&mut self, e: &Event<'_>) {
        match e {
            Event::Ready(i) => self.up_at_init = i.link_up,
            Event::Link(false) => self.downs += 1,
            Event::Link(true) if self.downs > 0 => self.ups_after_down += 1,
            _ => {}
        }
    }
}

// ---- the checks -------------------------------------------------------------------

/// Runs the network checks (after storage, before the ICs whose shutdown
/// ends the run).
pub fn run<P: Platform>(sh: &Shared<'_, P>) {
    if sh.client(|c| c.version().is_none()) {
        return;
    }
    on_net_stack(|| checks(sh));
}

fn checks<P: Platform>(sh: &Shared<'_, P>) {
    let Some(relid) = sh.client(|c| c.find_channel(&guid::class::NETWORK).map(|e| e.relid()))
    else {
        check!(
            "net-init",
            false,
            "no NIC offered (class {}); demo attaches one unless --net is given",
            guid::class::NETWORK
        );
        return;
    };
    let ring = vmbus_guest::ring::identity_mapped_refs(&RING);
    let rx = vmbus_guest::ring::identity_mapped_refs(&RX);
    let tx = vmbus_guest::ring::identity_mapped_refs(&TX);
    let [control] = vmbus_guest::ring::identity_mapped_refs(&CONTROL);
    let direct = vmbus_guest::ring::identity_mapped_refs(&DIRECT);

    // net-init
    let setup = (|| {
        let (chan, _ring_gpadl) = open_channel::<P, 1>(sh, relid, &ring)?;
        let (rx_h, s) = create_gpadl(sh, relid, &rx[..])?;
        if s != 0 {
            return Err(Failure::Status("receive buffer GpadlCreated", s));
        }
        let (tx_h, s) = create_gpadl(sh, relid, &tx[..])?;
        if s != 0 {
            return Err(Failure::Status("send buffer GpadlCreated", s));
        }
        Ok((chan, rx_h, tx_h))
    })();
    let (chan, rx_h, tx_h) = match setup {
        Ok(x) => x,
        Err(e) => return check!("net-init", false, "relid={relid} {e}"),
    };
    let mut config = ClientConfig::new(
        BufferConfig {
            gpadl: rx_h,
            len: (RX_PAGES * PAGE_SIZE) as u32,
        },
        BufferConfig {
            gpadl: tx_h,
            len: (TX_PAGES * PAGE_SIZE) as u32,
        },
    );
    // smoltcp computes every checksum itself.
    config.checksum_offload = false;
    let mut dev: Dev<'_, '_, '_, P> =
        NetDevice::new(chan, Sig(sh), config, &rx, &tx, control, &direct);
    let mut links = Links::default();
    let info = match dev.init_with(MAX_POLLS, |e| links.on_event(&e)) {
        Ok(i) => i,
        Err(e) => return check!("net-init", false, "relid={relid} bring-up: {e}"),
    };
    let init_ok = info.mtu >= 576 && info.send_sections > 0 && info.receive_section_size > 0;
    check!(
        "net-init",
        init_ok,
        "relid={relid} nvsp_version={:#010x} mtu={} rx_section={} send_sections={}x{} max_packets_per_message={} link_up={}",
        info.version.0,
        info.mtu,
        info.receive_section_size,
        info.send_sections,
        info.send_section_size,
        info.max_packets_per_message,
        info.link_up
    );
    if !init_ok {
        return;
    }

    // net-mac: the host cross-checks it against the MAC it configured.
    let mac = info.mac;
    let (ip, group) = addressing(mac);
    let mac_ok = mac != [0; 6] && mac[0] & 1 == 0 && dev.mac() == mac;
    check!(
        "net-mac",
        mac_ok,
        "mac={} ip={ip} group={group} (unicast, non-zero, as queried over RNDIS)",
        Mac(mac)
    );
    if !mac_ok {
        return;
    }

    link_check(relid, &mut dev, &mut links);

    let smol: Smol<'_, '_, '_, P> = SmolDevice::new(dev);
    ip_checks(relid, smol, mac, ip, group, info.mtu);
}

/// `net-link`: up at the end of bring-up, then the host's down and up
/// indications (its exercise toggles the link once).
fn link_check<P: Platform>(relid: u32, dev: &mut Dev<'_, '_, '_, P>, links: &mut Links) {
    let start = irq::ticks();
    let mut err = None;
    loop {
        let seen = chan_irqs(relid);
        if let Err(e) = dev.poll_events(|e| links.on_event(&e)) {
            err = Some(e);
            break;
        }
        if links.ups_after_down > 0 || irq::ticks().wrapping_sub(start) > LINK_TICKS {
            break;
        }
        irq::wait_until(2, || chan_irqs(relid) != seen);
    }
    let ok = links.up_at_init
        && links.downs >= 1
        && links.ups_after_down >= 1
        && dev.link_up()
        && err.is_none();
    check!(
        "net-link",
        ok,
        "up at init: {}; indications: {} down, {} up after down, within {} ticks; up now: {}; error: {:?}",
        links.up_at_init,
        links.downs,
        links.ups_after_down,
        irq::ticks().wrapping_sub(start),
        dev.link_up(),
        err
    );
}

struct Net<'d, D: phy::Device> {
    relid: u32,
    dev: Sniff<D>,
    iface: Interface,
    sockets: SocketSet<'d>,
}

impl<D: phy::Device> Net<'_, D> {
    fn poll(&mut self) {
        self.iface.poll(now(), &mut self.dev, &mut self.sockets);
    }

    /// Polls until `done` or `max_ticks`, sleeping between channel interrupts
    /// (at most two ticks: smoltcp's timers and our resends run then).
    fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let start = irq::ticks();
        loop {
            let seen = chan_irqs(self.relid);
            self.poll();
            if done(self) {
                self.poll();
                return true;
            }
            if irq::ticks().wrapping_sub(start) > max_ticks {
                return false;
            }
            let relid = self.relid;
            irq::wait_until(2, || chan_irqs(relid) != seen);
        }
    }
}

fn ip_checks<D: phy::Device>(
    relid: u32,
    smol: D,
    mac: [u8; 6],
    ip: Ipv4Address,
    group: u8,
    mtu: u32,
) {
    let mut dev = Sniff {
        inner: smol,
        seen: Seen::default(),
    };
    dev.seen.me.set(ip.octets());
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    config.random_seed = u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 1]);
    let mut iface = Interface::new(config, &mut dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(ip), 24));
    });

    let mut icmp_meta = [icmp::PacketMetadata::EMPTY; 4];
    let mut icmp_rx = [0u8; 512];
    let mut icmp_tx_meta = [icmp::PacketMetadata::EMPTY; 4];
    let mut icmp_tx = [0u8; 512];
    let mut udp_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_rx = [0u8; 4096];
    let mut udp_tx_meta = [udp::PacketMetadata::EMPTY; 4];
    let mut udp_tx = [0u8; 4096];
    let mut icmp_sock = icmp::Socket::new(
        icmp::PacketBuffer::new(&mut icmp_meta[..], &mut icmp_rx[..]),
        icmp::PacketBuffer::new(&mut icmp_tx_meta[..], &mut icmp_tx[..]),
    );
    let _ = icmp_sock.bind(icmp::Endpoint::Ident(PING_IDENT));
    let mut udp_sock = udp::Socket::new(
        udp::PacketBuffer::new(&mut udp_meta[..], &mut udp_rx[..]),
        udp::PacketBuffer::new(&mut udp_tx_meta[..], &mut udp_tx[..]),
    );
    let _ = udp_sock.bind(LOCAL_PORT);
    let mut storage = [SocketStorage::EMPTY, SocketStorage::EMPTY];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let icmp_h = sockets.add(icmp_sock);
    let udp_h = sockets.add(udp_sock);
    let mut net = Net {
        relid,
        dev,
        iface,
        sockets,
    };
    icmp_checks(&mut net, icmp_h);
    udp_check(&mut net, udp_h, mtu);
    if group != 0 {
        peer_check(&mut net, udp_h, ip);
    }
}

/// `net-arp` and `net-icmp`: the guest pings the peer (resolving it with
/// ARP first), then serves the peer's ARP request and pings.
fn icmp_checks<D: phy::Device>(net: &mut Net<'_, D>, h: SocketHandle) {
    let caps = ChecksumCapabilities::default();
    let mut seq: u16 = 0;
    let mut sent_at: Option<u64> = None;
    let mut answered: Option<u16> = None;
    let mut bad_replies = 0u32;
    let start = irq::ticks();
    let pinged = net.run_until(ICMP_TICKS, |n| {
        let s = n.sockets.get_mut::<icmp::Socket>(h);
        while let Ok((data, from)) = s.recv() {
            let ok = Icmpv4Packet::new_checked(data)
                .ok()
                .and_then(|p| Icmpv4Repr::parse(&p, &caps).ok())
                .is_some_and(|r| {
                    matches!(r, Icmpv4Repr::EchoReply { ident, seq_no, data }
                        if ident == PING_IDENT && seq_no == seq && data == PING_PAYLOAD)
                });
            if ok && from == IpAddress::Ipv4(PEER_IP) {
                answered = Some(seq);
            } else {
                bad_replies += 1;
            }
        }
        if answered.is_some() {
            return true;
        }
        // Resend every 0.5 s: the first may wait for ARP, and smoltcp
        // re-asks a silent neighbour only after a second.
        let t = irq::ticks();
        if sent_at.is_none_or(|at| t.wrapping_sub(at) >= 50) && s.can_send() {
            seq = seq.wrapping_add(1);
            let repr = Icmpv4Repr::EchoRequest {
                ident: PING_IDENT,
                seq_no: seq,
                data: PING_PAYLOAD,
            };
            if let Ok(buf) = s.send(repr.buffer_len(), IpAddress::Ipv4(PEER_IP)) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                sent_at = Some(t);
            }
        }
        false
    });
    let ping_ticks = irq::ticks().wrapping_sub(start);
    // Serve the peer: it asks for our MAC and pings us.
    let served = net.run_until(ICMP_TICKS, |n| {
        n.dev.seen.arp_reply_out.get() >= 1 && n.dev.seen.echo_reply_out.get() >= PEER_PINGS
    });
    let s = &net.dev.seen;
    let arp_ok = s.arp_req_out.get() >= 1
        && s.arp_reply_in.get() >= 1
        && s.peer_mac.get().is_some()
        && s.arp_req_in.get() >= 1
        && s.arp_reply_out.get() >= 1;
    check!(
        "net-arp",
        arp_ok,
        "resolved {PEER_IP}: {} request(s) out, {} reply(ies) in, peer mac={}; answered the peer: {} request(s) in, {} reply(ies) out",
        s.arp_req_out.get(),
        s.arp_reply_in.get(),
        s.peer_mac.get().map_or(Mac([0; 6]), Mac),
        s.arp_req_in.get(),
        s.arp_reply_out.get()
    );
    let icmp_ok = pinged && served && s.echo_reply_out.get() >= PEER_PINGS;
    check!(
        "net-icmp",
        icmp_ok,
        "echo to {PEER_IP}: {} (seq {seq}, {} bytes, {ping_ticks} ticks, {bad_replies} unexpected replies); the peer's echo requests: {} in, {} answered (need {PEER_PINGS}); frames in={} out={}",
        if answered.is_some() { "answered" } else { "no reply" },
        PING_PAYLOAD.len(),
        s.echo_req_in.get(),
        s.echo_reply_out.get(),
        s.frames_in.get(),
        s.frames_out.get()
    );
}

/// `net-udp`: datagrams of several sizes, up to the largest an MTU-sized IP
/// packet carries, to the peer's UDP echo; each must come back intact.
fn udp_check<D: phy::Device>(net: &mut Net<'_, D>, h: SocketHandle, mtu: u32) {
    let max = (mtu as usize).saturating_sub(28).min(1472);
    let sizes = [1, 64, 333, 1000, max];
    let mut echoed = 0usize;
    let mut failure: Option<(usize, &'static str, usize)> = None;
    let mut buf = [0u8; 1600];
    let mut tx = [0u8; 1600];
    let peer = (IpAddress::Ipv4(PEER_IP), ECHO_PORT);
    for (k, &len) in sizes.iter().enumerate() {
        for (j, b) in tx[..len].iter_mut().enumerate() {
            *b = udp_byte(k, len, j);
        }
        let mut sent = 0;
        let mut sent_at = 0;
        let mut result: Option<Result<(), (&'static str, usize)>> = None;
        net.run_until(UDP_TICKS, |n| {
            let s = n.sockets.get_mut::<udp::Socket>(h);
            while let Ok((got, meta)) = s.recv_slice(&mut buf) {
                if meta.endpoint.addr != peer.0 || meta.endpoint.port != ECHO_PORT {
                    continue;
                }
                result = Some(if got != len {
                    Err(("length", got))
                } else if let Some(at) = (0..len).find(|&j| buf[j] != udp_byte(k, len, j)) {
                    Err(("payload byte", at))
                } else {
                    Ok(())
                });
            }
            if result.is_some() {
                return true;
            }
            let t = irq::ticks();
            if (sent == 0 || (sent == 1 && t.wrapping_sub(sent_at) >= UDP_TICKS / 2))
                && s.send_slice(&tx[..len], peer).is_ok()
            {
                sent += 1;
                sent_at = t;
            }
            false
        });
        match result {
            Some(Ok(())) => echoed += 1,
            Some(Err((what, at))) => {
                failure.get_or_insert((len, what, at));
            }
            None => {
                failure.get_or_insert((len, "no echo", 0));
            }
        }
    }
    let ok = echoed == sizes.len() && max >= 1400;
    match failure {
        None => check!(
            "net-udp",
            ok,
            "{echoed}/{} datagrams of {sizes:?} bytes (max {max} for MTU {mtu}) echoed intact by {PEER_IP}:{ECHO_PORT}",
            sizes.len()
        ),
        Some((len, what, at)) => check!(
            "net-udp",
            false,
            "{echoed}/{} datagrams of {sizes:?} bytes echoed intact by {PEER_IP}:{ECHO_PORT}; first failure: {len}-byte datagram: {what} {at}",
            sizes.len()
        ),
    }
}

/// `net-peer` (multi-guest tests only): every 100 ms a UDP broadcast
/// "hvkit-peer <ip> seen=<0|1>" to port 7001; done when another guest's
/// broadcast said seen=1 (it has heard us, and we it). Then three more
/// seen=1 broadcasts so the other one can finish too.
fn peer_check<D: phy::Device>(net: &mut Net<'_, D>, h: SocketHandle, ip: Ipv4Address) {
    {
        let s = net.sockets.get_mut::<udp::Socket>(h);
        s.close();
        let _ = s.bind(PEER_TEST_PORT);
    }
    let dst = (IpAddress::Ipv4(Ipv4Address::BROADCAST), PEER_TEST_PORT);
    let mut other: Option<Ipv4Address> = None;
    let mut other_saw_us = false;
    let mut sent = 0u32;
    let mut received = 0u32;
    let mut last = 0u64;
    let mut msg = [0u8; 40];
    let mut buf = [0u8; 64];
    let compose = |seen: bool, msg: &mut [u8; 40]| -> usize {
        let mut w = Cursor { buf: msg, len: 0 };
        let _ = core::fmt::Write::write_fmt(
            &mut w,
            format_args!("hvkit-peer {ip} seen={}", u8::from(seen)),
        );
        w.len
    };
    let start = irq::ticks();
    let done = net.run_until(PEER_TICKS, |n| {
        let s = n.sockets.get_mut::<udp::Socket>(h);
        while let Ok((got, meta)) = s.recv_slice(&mut buf) {
            let IpAddress::Ipv4(from) = meta.endpoint.addr;
            let text = core::str::from_utf8(&buf[..got]).unwrap_or("");
            if from == ip || from == PEER_IP || !text.starts_with("hvkit-peer ") {
                continue;
            }
            received += 1;
            other = Some(from);
            other_saw_us |= text.ends_with("seen=1");
        }
        if other.is_some() && other_saw_us {
            return true;
        }
        let t = irq::ticks();
        if t.wrapping_sub(last) >= 10 {
            let n = compose(other.is_some(), &mut msg);
            if s.send_slice(&msg[..n], dst).is_ok() {
                sent += 1;
                last = t;
            }
        }
        false
    });
    if done {
        for _ in 0..3 {
            let n = compose(true, &mut msg);
            let _ = net
                .sockets
                .get_mut::<udp::Socket>(h)
                .send_slice(&msg[..n], dst);
            let t = irq::ticks();
            net.run_until(5, |_| irq::ticks().wrapping_sub(t) >= 5);
        }
    }
    check!(
        "net-peer",
        done,
        "broadcast to port {PEER_TEST_PORT}: {sent} sent, {received} received from another guest ({}), it heard us: {other_saw_us}, {} ticks",
        other.map_or(Ipv4Address::UNSPECIFIED, |a| a),
        irq::ticks().wrapping_sub(start)
    );
}
