//! The demo's host network peer: "the host side" of the test network, on a
//! port of an in-VMM switch, so the guest's network checks need no
//! privileges (no TAP, no namespace).
//!
//! **Addressing** (docs/ARCHITECTURE.md, "Network"): the test network is
//! 10.213.0.0/24. The peer is [`PEER_IP`] (10.213.0.1) with MAC
//! [`PEER_MAC`]. A guest is 10.213.0.2, unless its MAC is
//! 02:15:0a:d5:GG:NN (`0a:d5` = 10.213, see [`guest_mac`]) with NN in
//! 2..=254: then 10.213.0.NN. The demo's NIC gets [`DEMO_GUEST_MAC`]
//! (…:00:02, so 10.213.0.2 either way).
//!
//! **What it does**, on its own thread (frames from the switch are queued to
//! it, never handled on the sender's thread, so replying cannot re-enter the
//! NIC that is sending):
//! - answers ARP requests for its address; learns every 10.213.0.x it hears
//!   from as a guest;
//! - asks each learned guest's MAC with an ARP request of its own (even if it
//!   could take it from the guest's request: the guest must be seen to
//!   answer ARP), then pings it every 100 ms until [`PeerConfig::pings`]
//!   replies arrived (at most 50 tries);
//! - answers ICMP echo requests to its address;
//! - runs a UDP echo on [`ECHO_PORT`] (7, RFC 862);
//! - counts all of it ([`PeerStats`]): the report checks the guest's
//!   `net-arp`/`net-icmp`/`net-udp` against these counters.
//!
//! **Why hand-written** (over smoltcp's `wire` types for parsing and
//! building) rather than a smoltcp `Interface`: the peer must send an ARP
//! request on purpose, count every frame kind, and break on request
//! ([`PeerFaults`]: never answer pings, corrupt UDP echoes), none of which
//! an `Interface` exposes; and it must not wait a second before re-asking a
//! silent neighbour as smoltcp does. The responder is a few dozen lines.

use super::backend::{lock, BackendError, FrameBackend, FrameSink, MacAddr};
use super::switch::{Switch, SwitchPort};
use serde::Serialize;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The peer's address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The peer's MAC.
pub const PEER_MAC: MacAddr = MacAddr([0x02, 0x15, 0x0a, 0xd5, 0x00, 0x01]);
/// The test network's prefix length.
pub const PREFIX: u8 = 24;
/// The peer's UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// The demo's NIC MAC (the guest derives 10.213.0.2 from it).
pub const DEMO_GUEST_MAC: MacAddr = guest_mac(0, 2);
/// The switch `demo` puts its NIC and the peer on.
pub const DEMO_SWITCH: &str = "hvkit-demo";
/// Pings per guest the peer wants answered (the guest serves at least as many).
pub const DEFAULT_PINGS: u32 = 3;
/// The ICMP identifier of the peer's pings.
const PING_IDENT: u16 = 0x7065;
const PING_INTERVAL: Duration = Duration::from_millis(100);
const MAX_PINGS: u32 = 50;
const ARP_INTERVAL: Duration = Duration::from_millis(300);
const MAX_ARPS: u32 = 30;

/// The MAC that gives a guest 10.213.0.`n` in test group `group` (group != 0:
/// a multi-guest test, the guest also runs `net-peer`).
pub const fn guest_mac(group: u8, n: u8) -> MacAddr {
    MacAddr([0x02, 0x15, 0x0a, 0xd5, group, n])
}

/// Behaviours to break on purpose (boot tests show the named check failing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerFaults {
    /// Never answer ARP requests (`net-arp` must fail).
    pub ignore_arp: bool,
    /// Never answer ICMP echo requests (`net-icmp` must fail).
    pub ignore_icmp: bool,
    /// Flip one byte of every UDP echo's payload (`net-udp` must fail).
    pub corrupt_udp: bool,
}

/// Peer settings.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: MacAddr,
    /// Pings per guest it wants answered.
    pub pings: u32,
    /// Faults.
    pub faults: PeerFaults,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            ip: PEER_IP,
            mac: PEER_MAC,
            pings: DEFAULT_PINGS,
            faults: PeerFaults::default(),
        }
    }
}

/// What the peer saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerStats {
    /// Frames received (any).
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// ARP requests for the peer's address.
    pub arp_requests_in: u64,
    /// ARP replies sent.
    pub arp_replies_out: u64,
    /// ARP requests the peer sent for guests.
    pub arp_requests_out: u64,
    /// ARP replies from guests to them.
    pub arp_replies_in: u64,
    /// ICMP echo requests to the peer.
    pub icmp_requests_in: u64,
    /// Echo replies the peer sent.
    pub icmp_replies_out: u64,
    /// Pings the peer sent.
    pub pings_sent: u64,
    /// Echo replies to them (identifier, sequence and payload matching).
    pub ping_replies_in: u64,
    /// UDP datagrams echoed on port 7.
    pub udp_echoed: u64,
    /// Their payload bytes.
    pub udp_bytes_echoed: u64,
    /// Payload sizes echoed, in order.
    pub udp_sizes: Vec<usize>,
    /// Frames that did not parse or were not for the peer.
    pub ignored: u64,
    /// The guests learned: address, MAC (once it answered ARP), replies to pings.
    pub guests: Vec<GuestSeen>,
}

/// One guest as the peer knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestSeen {
    /// Its address.
    pub ip: String,
    /// Its MAC from its ARP reply.
    pub mac: Option<String>,
    /// Pings sent to it.
    pub pings_sent: u32,
    /// Replies.
    pub ping_replies: u32,
}

#[derive(Debug)]
struct Target {
    mac: Option<MacAddr>,
    arps: u32,
    last_arp: Option<Instant>,
    seq: u16,
    pings: u32,
    replies: u32,
    last_ping: Option<Instant>,
}

struct State {
    cfg: PeerConfig,
    stats: PeerStats,
    targets: BTreeMap<Ipv4Addr, Target>,
}

struct QueueSink(Mutex<mpsc::Sender<Vec<u8>>>);

impl FrameSink for QueueSink {
    fn deliver(&self, frame: &[u8]) {
        // The peer thread may be gone (shutting down): then the frame is lost.
        let _ = lock(&self.0).send(frame.to_vec());
    }
}

/// The peer (see the module docs). Dropping it stops its thread and
/// detaches it from the switch.
pub struct Peer {
    /// Switch ports only hold the switch weakly: the peer keeps its switch
    /// (and so the NICs' links) alive for as long as it lives.
    _switch: Arc<Switch>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").finish_non_exhaustive()
    }
}

/// Why the peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The thread could not be spawned.
    #[error("cannot start the network peer's thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl Peer {
    /// Attach a peer to `switch` and start it.
    pub fn attach(switch: &Arc<Switch>, cfg: PeerConfig) -> Result<Self, PeerError> {
        let port = switch.port("peer");
        let (tx, rx) = mpsc::channel();
        port.set_sink(Some(Arc::new(QueueSink(Mutex::new(tx)))));
        tracing::info!(switch = switch.name(), ip = %cfg.ip, mac = %cfg.mac, faults = ?cfg.faults, "net peer: attached");
        let state = Arc::new(Mutex::new(State {
            cfg,
            stats: PeerStats::default(),
            targets: BTreeMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("hvkit-net-peer".into())
            .spawn(move || run(port, rx, &st, &sp))
            .map_err(PeerError::Thread)?;
        Ok(Self {
            _switch: Arc::clone(switch),
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PeerStats {
        let g = lock(&self.state);
        let mut s = g.stats.clone();
        s.guests = g
            .targets
            .iter()
            .map(|(ip, t)| GuestSeen {
                ip: ip.to_string(),
                mac: t.mac.map(|m| m.to_string()),
                pings_sent: t.pings,
                ping_replies: t.replies,
            })
            .collect();
        s
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(port: SwitchPort, rx: mpsc::Receiver<Vec<u8>>, state: &Mutex<State>, stop: &AtomicBool) {
    let mut out: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(f) => lock(state).on_frame(&f, &mut out),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        lock(state).on_timer(Instant::now(), &mut out);
        // Sent outside the state lock: delivery runs the receiving NIC's code.
        for f in out.drain(..) {
            match port.send(&f) {
                Ok(()) => lock(state).stats.frames_out += 1,
                Err(BackendError::LinkDown) => break,
                Err(e) => tracing::debug!(error = %e, "net peer: send failed"),
            }
        }
    }
    port.set_sink(None);
}

fn caps() -> ChecksumCapabilities {
    ChecksumCapabilities::default()
}

fn in_subnet(ip: Ipv4Addr, me: Ipv4Addr) -> bool {
    ip.octets()[..3] == me.octets()[..3] && ip != me && !matches!(ip.octets()[3], 0 | 255)
}

fn ethernet(dst: MacAddr, src: MacAddr, ty: EthernetProtocol, payload: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    f.set_dst_addr(EthernetAddress(dst.0));
    f.set_src_addr(EthernetAddress(src.0));
    f.set_ethertype(ty);
    buf
}

impl State {
    fn learn(&mut self, ip: Ipv4Addr) {
        if in_subnet(ip, self.cfg.ip) && !self.targets.contains_key(&ip) {
            tracing::info!(guest = %ip, "net peer: learned a guest");
            self.targets.insert(
                ip,
                Target {
                    mac: None,
                    arps: 0,
                    last_arp: None,
                    seq: 0,
                    pings: 0,
                    replies: 0,
                    last_ping: None,
                },
            );
        }
    }

    fn arp(&mut self, op: ArpOperation, dst: MacAddr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(self.cfg.mac.0),
            source_protocol_addr: self.cfg.ip,
            target_hardware_addr: EthernetAddress(tha.0),
            target_protocol_addr: tpa,
        };
        let mut f = ethernet(dst, self.cfg.mac, EthernetProtocol::Arp, repr.buffer_len());
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    }

    fn icmp(&self, dst_mac: MacAddr, dst: Ipv4Addr, repr: &Icmpv4Repr<'_>) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: self.cfg.ip,
            dst_addr: dst,
            next_header: IpProtocol::Icmp,
            payload_len: repr.buffer_len(),
            hop_limit: 64,
        };
        let n = ip.buffer_len();
        let mut f = ethernet(
            dst_mac,
            self.cfg.mac,
            EthernetProtocol::Ipv4,
            n + repr.buffer_len(),
        );
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps());
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut f[14 + n..]), &caps());
        f
    }

    fn on_frame(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) {
        self.stats.frames_in += 1;
        if !self.handle(frame, out) {
            self.stats.ignored += 1;
        }
    }

    /// Handles one frame; false if it was not for the peer or did not parse.
    fn handle(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return false;
        };
        let dst = MacAddr(eth.dst_addr().0);
        let src = MacAddr(eth.src_addr().0);
        if dst != self.cfg.mac && !dst.is_multicast() {
            return false;
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.on_arp(src, eth.payload(), out),
            EthernetProtocol::Ipv4 => self.on_ipv4(src, eth.payload(), out),
            _ => false,
        }
    }

    fn on_arp(&mut self, src: MacAddr, payload: &[u8], out: &mut Vec<Vec<u8>>) -> bool {
        let Ok(p) = ArpPacket::new_checked(payload) else {
            return false;
        };
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr: spa,
            target_protocol_addr: tpa,
            ..
        }) = ArpRepr::parse(&p)
        else {
            return false;
        };
        if tpa != self.cfg.ip {
            return false;
        }
        self.learn(spa);
        let sha = MacAddr(source_hardware_addr.0);
        match operation {
            ArpOperation::Request => {
                self.stats.arp_requests_in += 1;
                if self.cfg.faults.ignore_arp {
                    return true;
                }
                let reply = self.arp(ArpOperation::Reply, src, sha, spa);
                out.push(reply);
                self.stats.arp_replies_out += 1;
                true
            }
            ArpOperation::Reply => {
                self.stats.arp_replies_in += 1;
                if let Some(t) = self.targets.get_mut(&spa) {
                    t.mac = Some(sha);
                }
                true
            }
            _ => false,
        }
    }

    fn on_ipv4(&mut self, src_mac: MacAddr, payload: &[u8], out: &mut Vec<Vec<u8>>) -> bool {
        let Ok(p) = Ipv4Packet::new_checked(payload) else {
            return false;
        };
        let Ok(ip) = Ipv4Repr::parse(&p, &caps()) else {
            return false;
        };
        if ip.dst_addr != self.cfg.ip {
            return false;
        }
        self.learn(ip.src_addr);
        let body = p.payload();
        match ip.next_header {
            IpProtocol::Icmp => {
                let Ok(ip_pkt) = Icmpv4Packet::new_checked(body) else {
                    return false;
                };
                let Ok(repr) = Icmpv4Repr::parse(&ip_pkt, &caps()) else {
                    return false;
                };
                match repr {
                    Icmpv4Repr::EchoRequest {
                        ident,
                        seq_no,
                        data,
                    } => {
                        self.stats.icmp_requests_in += 1;
                        if !self.cfg.faults.ignore_icmp {
                            let reply = Icmpv4Repr::EchoReply {
                                ident,
                                seq_no,
                                data,
                            };
                            out.push(self.icmp(src_mac, ip.src_addr, &reply));
                            self.stats.icmp_replies_out += 1;
                        }
                        true
                    }
                    Icmpv4Repr::EchoReply {
                        ident,
                        seq_no,
                        data,
                    } if ident == PING_IDENT => {
                        let Some(t) = self.targets.get_mut(&ip.src_addr) else {
                            return false;
                        };
                        if seq_no == t.seq && data == ping_payload(seq_no).as_slice() {
                            t.replies += 1;
                            self.stats.ping_replies_in += 1;
                        }
                        true
                    }
                    _ => false,
                }
            }
            IpProtocol::Udp => {
                let Ok(u) = UdpPacket::new_checked(body) else {
                    return false;
                };
                let (s, d) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));
                let Ok(repr) = UdpRepr::parse(&u, &s, &d, &caps()) else {
                    return false;
                };
                if repr.dst_port != ECHO_PORT {
                    return false;
                }
                let mut data = u.payload().to_vec();
                if self.cfg.faults.corrupt_udp && !data.is_empty() {
                    let k = data.len() / 2;
                    data[k] ^= 0xFF;
                }
                out.push(self.udp(src_mac, ip.src_addr, ECHO_PORT, repr.src_port, &data));
                self.stats.udp_echoed += 1;
                self.stats.udp_bytes_echoed += data.len() as u64;
                self.stats.udp_sizes.push(data.len());
                true
            }
            _ => false,
        }
    }

    fn udp(&self, dst_mac: MacAddr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let u = UdpRepr {
            src_port: sport,
            dst_port: dport,
        };
        let ip = Ipv4Repr {
            src_addr: self.cfg.ip,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: u.header_len() + data.len(),
            hop_limit: 64,
        };
        let n = ip.buffer_len();
        let mut f = ethernet(
            dst_mac,
            self.cfg.mac,
            EthernetProtocol::Ipv4,
            n + ip.payload_len,
        );
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut f[14..]), &caps());
        u.emit(
            &mut UdpPacket::new_unchecked(&mut f[14 + n..]),
            &IpAddress::Ipv4(self.cfg.ip),
            &IpAddress::Ipv4(dst),
            data.len(),
            |b| b.copy_from_slice(data),
            &caps(),
        );
        f
    }

    /// ARP requests to guests not resolved yet, pings to those that are.
    fn on_timer(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let due = |last: Option<Instant>, every: Duration| {
            last.is_none_or(|t| now.duration_since(t) >= every)
        };
        let want = self.cfg.pings;
        let ips: Vec<Ipv4Addr> = self.targets.keys().copied().collect();
        for ip in ips {
            let Some(t) = self.targets.get(&ip) else {
                continue;
            };
            match t.mac {
                None if t.arps < MAX_ARPS && due(t.last_arp, ARP_INTERVAL) => {
                    let f = self.arp(
                        ArpOperation::Request,
                        MacAddr::BROADCAST,
                        MacAddr([0; 6]),
                        ip,
                    );
                    out.push(f);
                    self.stats.arp_requests_out += 1;
                    if let Some(t) = self.targets.get_mut(&ip) {
                        t.arps += 1;
                        t.last_arp = Some(now);
                    }
                }
                Some(mac)
                    if t.replies < want
                        && t.pings < MAX_PINGS
                        && due(t.last_ping, PING_INTERVAL) =>
                {
                    let seq = t.seq.wrapping_add(1);
                    let data = ping_payload(seq);
                    let req = Icmpv4Repr::EchoRequest {
                        ident: PING_IDENT,
                        seq_no: seq,
                        data: &data,
                    };
                    let f = self.icmp(mac, ip, &req);
                    out.push(f);
                    self.stats.pings_sent += 1;
                    if let Some(t) = self.targets.get_mut(&ip) {
                        t.seq = seq;
                        t.pings += 1;
                        t.last_ping = Some(now);
                    }
                }
                _ => {}
            }
        }
    }
}

fn ping_payload(seq: u16) -> Vec<u8> {
    format!("hvkit-peer-ping {seq:05}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::backend::CollectSink;

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
    const GMAC: MacAddr = DEMO_GUEST_MAC;

    fn guest_arp(op: ArpOperation, dst: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(GMAC.0),
            source_protocol_addr: GUEST,
            target_hardware_addr: EthernetAddress(if op == ArpOperation::Reply {
                PEER_MAC.0
            } else {
                [0; 6]
            }),
            target_protocol_addr: tpa,
        };
        let mut f = ethernet(dst, GMAC, EthernetProtocol::Arp, repr.buffer_len());
        repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
        f
    }

    fn guest_udp(data: &[u8]) -> Vec<u8> {
        let st = State {
            cfg: PeerConfig {
                ip: GUEST,
                mac: GMAC,
                ..PeerConfig::default()
            },
            stats: PeerStats::default(),
            targets: BTreeMap::new(),
        };
        st.udp(PEER_MAC, PEER_IP, 40007, ECHO_PORT, data)
    }

    fn parse_udp(f: &[u8]) -> Vec<u8> {
        let eth = EthernetFrame::new_checked(f).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        let s = IpAddress::Ipv4(ip.src_addr());
        let d = IpAddress::Ipv4(ip.dst_addr());
        UdpRepr::parse(&u, &s, &d, &caps()).expect("valid checksum");
        u.payload().to_vec()
    }

    /// The whole conversation over a real switch: ARP both ways, pings, UDP echo.
    #[test]
    fn answers_arp_pings_guest_and_echoes_udp() {
        let sw = Switch::new("peer-test");
        let guest = sw.port("guest");
        let sink = CollectSink::new(64);
        guest.set_sink(Some(sink.clone()));
        let peer = Peer::attach(&sw, PeerConfig::default()).unwrap();
        let t = Duration::from_secs(2);

        guest
            .send(&guest_arp(
                ArpOperation::Request,
                MacAddr::BROADCAST,
                PEER_IP,
            ))
            .unwrap();
        // The peer answers, and asks for the guest's MAC itself.
        let mut got_reply = false;
        let mut got_request = false;
        while !(got_reply && got_request) {
            let f = sink.recv(t).expect("ARP from the peer");
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let p = ArpPacket::new_checked(eth.payload()).unwrap();
            match ArpRepr::parse(&p).unwrap() {
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_hardware_addr,
                    ..
                } => {
                    assert_eq!(source_hardware_addr.0, PEER_MAC.0);
                    got_reply = true;
                }
                ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Request,
                    target_protocol_addr,
                    ..
                } => {
                    assert_eq!(target_protocol_addr, GUEST);
                    got_request = true;
                }
                r => panic!("unexpected {r:?}"),
            }
        }
        guest
            .send(&guest_arp(ArpOperation::Reply, PEER_MAC, PEER_IP))
            .unwrap();
        // Now pings come: answer them.
        let mut answered = 0;
        while answered < DEFAULT_PINGS {
            let f = sink.recv(t).expect("a ping from the peer");
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            if let Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } = Icmpv4Repr::parse(&icmp, &caps()).unwrap()
            {
                let st = State {
                    cfg: PeerConfig {
                        ip: GUEST,
                        mac: GMAC,
                        ..PeerConfig::default()
                    },
                    stats: PeerStats::default(),
                    targets: BTreeMap::new(),
                };
                let reply = Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                };
                guest.send(&st.icmp(PEER_MAC, PEER_IP, &reply)).unwrap();
                answered += 1;
            }
        }
        let data: Vec<u8> = (0..1472u32).map(|i| i as u8).collect();
        guest.send(&guest_udp(&data)).unwrap();
        let echo = sink
            .recv_matching(t, |f| f.len() > 1000)
            .expect("the UDP echo");
        assert_eq!(parse_udp(&echo), data);
        std::thread::sleep(Duration::from_millis(50));
        let s = peer.stats();
        assert_eq!(s.arp_requests_in, 1);
        assert_eq!(s.arp_replies_in, 1);
        assert!(s.ping_replies_in >= u64::from(DEFAULT_PINGS), "{s:?}");
        assert_eq!(s.udp_sizes, vec![1472]);
        assert_eq!(s.guests[0].mac.as_deref(), Some("02:15:0a:d5:00:02"));
    }

    #[test]
    fn faults_break_icmp_and_udp() {
        let sw = Switch::new("peer-faults");
        let guest = sw.port("guest");
        let sink = CollectSink::new(64);
        guest.set_sink(Some(sink.clone()));
        let cfg = PeerConfig {
            faults: PeerFaults {
                ignore_icmp: true,
                corrupt_udp: true,
                ..PeerFaults::default()
            },
            ..PeerConfig::default()
        };
        let peer = Peer::attach(&sw, cfg).unwrap();
        let st = State {
            cfg: PeerConfig {
                ip: GUEST,
                mac: GMAC,
                ..PeerConfig::default()
            },
            stats: PeerStats::default(),
            targets: BTreeMap::new(),
        };
        let req = Icmpv4Repr::EchoRequest {
            ident: 1,
            seq_no: 1,
            data: b"x",
        };
        guest.send(&st.icmp(PEER_MAC, PEER_IP, &req)).unwrap();
        guest.send(&guest_udp(b"hello")).unwrap();
        let echo = sink
            .recv_matching(Duration::from_secs(2), |f| {
                EthernetFrame::new_checked(f).is_ok_and(|e| {
                    e.ethertype() == EthernetProtocol::Ipv4
                        && Ipv4Packet::new_checked(e.payload())
                            .is_ok_and(|p| p.next_header() == IpProtocol::Udp)
                })
            })
            .expect("the UDP echo");
        assert_ne!(parse_udp(&echo), b"hello");
        std::thread::sleep(Duration::from_millis(50));
        let s = peer.stats();
        assert_eq!((s.icmp_requests_in, s.icmp_replies_out), (1, 0));
    }
}
