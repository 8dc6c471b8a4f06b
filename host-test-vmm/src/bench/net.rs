//! `host-test-vmm bench net`: guest frames through netvsp into a TAP device
//! (in a private network namespace) and guest to guest over the in-VMM
//! switch, side by side with writing the same frames to the TAP directly.
//!
//! **Harness.** The guest side is driven at the NVSP level: each frame is an
//! RNDIS PACKET the "guest" placed once in a send-buffer section of real
//! guest memory, and each iteration hands netvsp a SEND_RNDIS_PACKET for
//! that section through [`Nic::handle_packet`] (the entry point the VMBus
//! worker uses), so netvsp reads the section from guest RAM, parses and
//! validates RNDIS and sends the frame to the backend. On the switch side
//! the receiving NIC copies each frame into a receive sub-allocation and
//! emits a transfer-page packet, which the harness completes at once as a
//! guest would. What is *not* in the loop: the VMBus rings and the guest's
//! own driver (measured by `bench ring`), so notifications per frame are
//! not measured here; the table shows host->guest packets per frame.
//!
//! **Direct.** The same frames written with `write(2)` to the same TAP fd.
//!
//! **Ring level** (sides named `ring: ...`): the whole stack. The guest is
//! vsc-net's `NetDevice` over vmbus-guest's VMBus driver, hypercalls and
//! SynIC of an in-process partition ([`InProcess`]); rings, receive and
//! send buffers are guest RAM behind real GPADLs, and every frame travels as
//! a SEND_RNDIS_PACKET through the [`VmbusServer`] worker to the real
//! netvsp, then to the TAP (`ring: vsc-net->tap`) or over the switch into
//! another NIC's receive buffer and that guest device's poll
//! (`ring: vsc-net->switch->vsc-net`). The guest polls (it never sleeps
//! on the interrupt), so notifications are what the ring protocol asks
//! for: guest->host = HvSignalEvent calls the server counted on the
//! channels involved, host->guest = channel signals (interrupts) the server
//! raised, each per frame. The `ratio` column is frames/s over the direct
//! TAP writes of the same size in the same run.

use crate::hv::inprocess::InProcess;
use crate::net::backend::{FrameBackend, MacAddr};
use crate::net::netns::TestNetns;
use crate::net::switch::Switch;
use crate::net::{NetChannel, Nic, NicConfig};
use crate::vmbus::{Gpadl, GpadlRange, OutgoingPacket, SendError, VmbusOptions, VmbusServer};
use hypercall::hv::{Hypervisor as GuestHv, SintConfig, SynIc};
use hypercall::msr::GuestOsId;
use hypercall::page::PageRef;
use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::channel::Channel;
use vmbus_guest::client::ClientConfig as BusConfig;
use vmbus_guest::driver::VmBus;
use vmbus_guest::packet::{PacketType, PacketView};
use vmbus_guest::ring::PageRefRing;
use vmbus_guest::version::VMBUS_SINT;
use vsc_net::client::{BufferConfig, ClientConfig, TxOffload};
use vsc_net::device::{HostSignal, NetDevice};
use vsc_net::nvsp::{self, NvspMessage, ProtocolVersion};
use vsc_net::rndis;
use zerocopy::IntoBytes;

const RAM: usize = 8 << 20;
const RX_GPA: u64 = 0x10_0000;
const RX_LEN: u64 = 2 << 20;
const TX_GPA: u64 = 0x40_0000;
const TX_SECTIONS: u64 = 64;

/// Settings.
#[derive(Debug, Clone)]
pub struct NetBenchConfig {
    /// Frames per side and size.
    pub frames: u64,
    /// Frame sizes (bytes, 60..=1514).
    pub sizes: Vec<usize>,
}

impl Default for NetBenchConfig {
    fn default() -> Self {
        Self {
            frames: 100_000,
            sizes: vec![64, 1514],
        }
    }
}

/// One measured side.
#[derive(Debug, Clone, Serialize)]
pub struct NetPoint {
    /// "netvsp->tap", "direct tap", "netvsp->switch->netvsp".
    pub side: String,
    /// Frame size.
    pub frame_bytes: usize,
    /// Frames that arrived (or were accepted by the TAP).
    pub frames: u64,
    /// Frames per second.
    pub frames_per_sec: f64,
    /// Megabits per second of frame bytes.
    pub mbit_per_sec: f64,
    /// Host->guest packets per frame (transfer pages; 0 for TX-only sides).
    pub host_packets_per_frame: f64,
    /// Ring sides: guest->host signals (HvSignalEvent) per frame.
    pub guest_signals_per_frame: Option<f64>,
    /// Ring sides: host->guest channel signals (interrupts) per frame.
    pub host_interrupts_per_frame: Option<f64>,
    /// Frames/s over the direct TAP writes of the same size in this run.
    pub ratio_to_direct: Option<f64>,
    /// Frames dropped anywhere on the way.
    pub dropped: u64,
}

/// The result.
#[derive(Debug, Clone, Serialize)]
pub struct NetBenchReport {
    /// All points.
    pub points: Vec<NetPoint>,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum NetBenchError {
    /// Namespace / TAP setup.
    #[error("network namespace: {0}")]
    Netns(#[from] crate::net::NetnsError),
    /// A NIC could not be made.
    #[error("NIC: {0}")]
    Nic(#[from] crate::net::NicError),
    /// The protocol did not come up.
    #[error("{0}")]
    Setup(String),
}

struct BenchChannel {
    mem: GuestMemoryMmap,
    xfer: Mutex<Vec<u64>>,
    sent: Mutex<u64>,
}

impl NetChannel for BenchChannel {
    fn relid(&self) -> u32 {
        1
    }
    fn send(&self, p: &OutgoingPacket<'_>) -> Result<(), SendError> {
        *self.sent.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        if p.packet_type == PacketType::DATA_USING_XFER_PAGES {
            self.xfer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(p.transaction_id);
        }
        Ok(())
    }
    fn free_space(&self) -> Result<usize, SendError> {
        Ok(1 << 20)
    }
    fn gpadl(&self, handle: u32) -> Option<Gpadl> {
        let (gpa, len) = match handle {
            1 => (RX_GPA, RX_LEN),
            2 => (TX_GPA, TX_SECTIONS * 6144),
            _ => return None,
        };
        Some(Gpadl {
            handle,
            relid: 1,
            ranges: vec![GpadlRange {
                byte_count: len as u32,
                byte_offset: 0,
                pfns: (gpa / 4096..(gpa + len).div_ceil(4096)).collect(),
            }],
        })
    }
    fn memory(&self) -> Option<GuestMemoryMmap> {
        Some(self.mem.clone())
    }
}

/// A NIC with an attached in-memory guest, brought up like Linux does.
struct Guest {
    nic: Arc<Nic>,
    ch: Arc<BenchChannel>,
    dch: Arc<dyn NetChannel>,
    scratch: Vec<u8>,
}

fn pkt(ty: PacketType, completion: bool, tid: u64, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let off = 16 + ext.len();
    let total = (off + payload.len()).next_multiple_of(8);
    let mut b = vec![0u8; total];
    b[0..2].copy_from_slice(&ty.0.to_le_bytes());
    b[2..4].copy_from_slice(&((off / 8) as u16).to_le_bytes());
    b[4..6].copy_from_slice(&((total / 8) as u16).to_le_bytes());
    b[6..8].copy_from_slice(&u16::from(completion).to_le_bytes());
    b[8..16].copy_from_slice(&tid.to_le_bytes());
    b[16..off].copy_from_slice(ext);
    b[off..off + payload.len()].copy_from_slice(payload);
    b
}

impl Guest {
    fn new(nic: Arc<Nic>) -> Result<Self, NetBenchError> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)])
            .map_err(|e| NetBenchError::Setup(format!("guest memory: {e}")))?;
        let ch = Arc::new(BenchChannel {
            mem,
            xfer: Mutex::new(Vec::new()),
            sent: Mutex::new(0),
        });
        let dch: Arc<dyn NetChannel> = ch.clone();
        nic.attach(Arc::clone(&dch));
        let mut g = Self {
            nic,
            ch,
            dch,
            scratch: Vec::new(),
        };
        for m in [
            NvspMessage::init(ProtocolVersion::V61),
            NvspMessage::send_ndis_version(6, 30),
            NvspMessage::send_receive_buffer(1, nvsp::RECEIVE_BUFFER_ID),
            NvspMessage::send_send_buffer(2, 0),
        ] {
            g.run(&pkt(PacketType::DATA_INBAND, true, 1, &[], m.as_bytes()));
        }
        // RNDIS INIT and the packet filter, through a send section.
        let mut b = [0u8; 64];
        let n = rndis::build_initialize(&mut b, 1, 0x4000)
            .map_err(|e| NetBenchError::Setup(e.to_string()))?;
        g.section_message(0, &b[..n]);
        let n = rndis::build_set(
            &mut b,
            2,
            rndis::Oid::GEN_CURRENT_PACKET_FILTER,
            &rndis::packet_filter::LINUX_DEFAULT.to_le_bytes(),
        )
        .map_err(|e| NetBenchError::Setup(e.to_string()))?;
        g.section_message(0, &b[..n]);
        g.complete_all();
        if !g.nic.stats().rndis_ready {
            return Err(NetBenchError::Setup("RNDIS did not come up".into()));
        }
        Ok(g)
    }

    fn run(&mut self, b: &[u8]) {
        if let Ok(v) = PacketView::new(b) {
            let _ = self.nic.handle_packet(&self.dch, &v, &mut self.scratch);
        }
    }

    fn section_message(&mut self, idx: u32, msg: &[u8]) {
        let _ = self
            .ch
            .mem
            .write_slice(msg, GuestAddress(TX_GPA + u64::from(idx) * 6144));
        let m = NvspMessage::send_rndis_packet(0, Some((idx, msg.len() as u32)));
        self.run(&pkt(PacketType::DATA_INBAND, true, 5, &[], m.as_bytes()));
    }

    /// Complete every transfer-page packet (as the guest would).
    fn complete_all(&mut self) {
        let tids: Vec<u64> =
            std::mem::take(&mut *self.ch.xfer.lock().unwrap_or_else(|e| e.into_inner()));
        let m = NvspMessage::send_rndis_packet_complete(nvsp::Status::SUCCESS);
        for t in tids {
            self.run(&pkt(PacketType::COMPLETION, false, t, &[], m.as_bytes()));
        }
    }
}

fn udp_frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(42)];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (f.len() - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 213, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 213, 0, 1]);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&9999u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f
}

fn point(
    side: &str,
    size: usize,
    frames: u64,
    secs: f64,
    host_pkts: u64,
    dropped: u64,
) -> NetPoint {
    NetPoint {
        side: side.into(),
        frame_bytes: size,
        frames,
        frames_per_sec: frames as f64 / secs,
        mbit_per_sec: frames as f64 * size as f64 * 8.0 / secs / 1e6,
        host_packets_per_frame: if frames == 0 {
            0.0
        } else {
            host_pkts as f64 / frames as f64
        },
        guest_signals_per_frame: None,
        host_interrupts_per_frame: None,
        ratio_to_direct: None,
        dropped,
    }
}

/// Run the benchmark (needs CAP_NET_ADMIN and CAP_SYS_ADMIN for the
/// namespace and TAP).
pub fn net_throughput(cfg: &NetBenchConfig) -> Result<NetBenchReport, NetBenchError> {
    let ns = TestNetns::new()?;
    let tap = ns.create_tap("hvbench0", Ipv4Addr::new(10, 213, 0, 1), 24)?;
    let tap_mac = ns.mac_of("hvbench0")?;
    let mut points = Vec::new();

    // netvsp -> TAP: the NIC owns the TAP backend.
    let mut ncfg = NicConfig::numbered(0);
    ncfg.mac = MacAddr([2, 0x15, 0, 0, 0, 2]);
    let guest_mac = ncfg.mac;
    let tap_dyn: Arc<dyn FrameBackend> = tap.clone();
    let nic = Nic::new(ncfg, tap_dyn)?;
    let mut g = Guest::new(Arc::clone(&nic))?;

    // guest -> guest over the switch.
    let sw = Switch::new("bench");
    let mut a_cfg = NicConfig::numbered(1);
    a_cfg.mac = MacAddr([2, 0x15, 0, 0, 1, 1]);
    let mut b_cfg = NicConfig::numbered(2);
    b_cfg.mac = MacAddr([2, 0x15, 0, 0, 1, 2]);
    let (a_mac, b_mac) = (a_cfg.mac, b_cfg.mac);
    let mut ga = Guest::new(Nic::new(a_cfg, Arc::new(sw.port("a")))?)?;
    let mut gb = Guest::new(Nic::new(b_cfg, Arc::new(sw.port("b")))?)?;
    // B speaks once, so the switch learns its port (no flooding after).
    let mut hello = [0u8; 128];
    let n = rndis::build_packet(&mut hello, &[], &udp_frame(a_mac, b_mac, 60))
        .map_err(|e| NetBenchError::Setup(e.to_string()))?;
    gb.section_message(1, &hello[..n]);
    ga.complete_all();
    if sw.stats().macs != 1 {
        return Err(NetBenchError::Setup("the switch did not learn B".into()));
    }

    for &size in &cfg.sizes {
        let size = size.clamp(60, 1514);
        // Direct TAP writes.
        let f = udp_frame(tap_mac, guest_mac, size);
        let (tx0, drop0, _, _) = tap.counters();
        let t = Instant::now();
        for _ in 0..cfg.frames {
            let _ = tap.send(&f);
        }
        let secs = t.elapsed().as_secs_f64();
        let (tx1, drop1, _, _) = tap.counters();
        points.push(point("direct tap", size, tx1 - tx0, secs, 0, drop1 - drop0));

        // netvsp -> TAP.
        let mut msg = vec![0u8; size + 64];
        let n = rndis::build_packet(&mut msg, &[], &f)
            .map_err(|e| NetBenchError::Setup(e.to_string()))?;
        for i in 0..TX_SECTIONS {
            let _ =
                g.ch.mem
                    .write_slice(&msg[..n], GuestAddress(TX_GPA + i * 6144));
        }
        let reqs: Vec<Vec<u8>> = (0..TX_SECTIONS as u32)
            .map(|i| {
                let m = NvspMessage::send_rndis_packet(0, Some((i, n as u32)));
                pkt(PacketType::DATA_INBAND, true, 7, &[], m.as_bytes())
            })
            .collect();
        let s0 = nic.stats();
        let t = Instant::now();
        for i in 0..cfg.frames {
            g.run(&reqs[(i % TX_SECTIONS) as usize]);
        }
        let secs = t.elapsed().as_secs_f64();
        let s1 = nic.stats();
        points.push(point(
            "nvsp-level: netvsp->tap",
            size,
            s1.tx_frames - s0.tx_frames,
            secs,
            0,
            s1.tx_dropped - s0.tx_dropped,
        ));

        // netvsp -> switch -> netvsp.
        let f = udp_frame(b_mac, a_mac, size);
        let n = rndis::build_packet(&mut msg, &[], &f)
            .map_err(|e| NetBenchError::Setup(e.to_string()))?;
        for i in 0..TX_SECTIONS {
            let _ = ga
                .ch
                .mem
                .write_slice(&msg[..n], GuestAddress(TX_GPA + i * 6144));
        }
        let sb0 = gb.nic.stats();
        let sent0 = *gb.ch.sent.lock().unwrap_or_else(|e| e.into_inner());
        let t = Instant::now();
        for i in 0..cfg.frames {
            ga.run(&reqs[(i % TX_SECTIONS) as usize]);
            if i % 32 == 31 {
                gb.complete_all();
            }
        }
        gb.complete_all();
        let secs = t.elapsed().as_secs_f64();
        let sb1 = gb.nic.stats();
        let sent1 = *gb.ch.sent.lock().unwrap_or_else(|e| e.into_inner());
        points.push(point(
            "nvsp-level: netvsp->switch->netvsp",
            size,
            sb1.rx_frames - sb0.rx_frames,
            secs,
            sent1 - sent0,
            sb1.rx_dropped_no_buffer - sb0.rx_dropped_no_buffer,
        ));
    }
    points.extend(ring_points(cfg, &tap, tap_mac)?);
    drop(ns);
    // Group by frame size (stable: direct, NVSP level, ring level).
    points.sort_by_key(|p| p.frame_bytes);
    let direct: Vec<(usize, f64)> = points
        .iter()
        .filter(|p| p.side == "direct tap")
        .map(|p| (p.frame_bytes, p.frames_per_sec))
        .collect();
    for p in &mut points {
        if let Some(&(_, d)) = direct.iter().find(|(s, _)| *s == p.frame_bytes) {
            p.ratio_to_direct = (d > 0.0).then(|| p.frames_per_sec / d);
        }
    }
    Ok(NetBenchReport { points })
}

impl NetBenchReport {
    /// The table.
    pub fn to_table(&self) -> String {
        let opt = |v: Option<f64>, w: usize| match v {
            Some(v) => format!("{v:>w$.3}"),
            None => format!("{:>w$}", "-"),
        };
        let mut s = format!(
            "{:<36} {:>6} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}\n",
            "side",
            "bytes",
            "frames",
            "frames/s",
            "Mbit/s",
            "g2h/frm",
            "h2g/frm",
            "h2g pkt",
            "ratio",
            "dropped"
        );
        for p in &self.points {
            s += &format!(
                "{:<36} {:>6} {:>9} {:>11.0} {:>9.0} {} {} {:>9.2} {} {:>7}\n",
                p.side,
                p.frame_bytes,
                p.frames,
                p.frames_per_sec,
                p.mbit_per_sec,
                opt(p.guest_signals_per_frame, 9),
                opt(p.host_interrupts_per_frame, 9),
                p.host_packets_per_frame,
                opt(p.ratio_to_direct, 7),
                p.dropped
            );
        }
        s += "g2h/frm: guest->host signals per frame; h2g/frm: host->guest interrupts per frame (ring sides); ratio: frames/s / direct tap\n";
        s
    }
}

/// Guest pages of one NIC of the ring-level sides.
struct RingMem<'a> {
    ring: Vec<PageRef<'a>>,
    rx: Vec<PageRef<'a>>,
    tx: Vec<PageRef<'a>>,
    control: PageRef<'a>,
    direct: PageRef<'a>,
}

const R_HYPERCALL: u64 = 0x1000;
const R_SIMP: u64 = 0x2000;
const R_SIEFP: u64 = 0x3000;
const R_INPUT: u64 = 0x6000;
const R_VECTOR: u8 = 0xF3;
/// NIC `i`'s pages: 2 MiB from `R_NIC_BASE + 2i MiB`.
const R_NIC_BASE: u64 = 0x20_0000;
/// 128 KiB rings each way (Linux's netvsc uses 512 KiB; this is plenty for
/// a polling guest).
const R_RING_OUT: usize = 32;
const R_RING_IN: usize = 32;
/// 1 MiB receive buffer (630 pieces at MTU 1500).
const R_RX_PAGES: usize = 256;
/// 256 KiB send buffer (42 sections).
const R_TX_PAGES: usize = 64;
const R_RAM: usize = 8 << 20;
const R_POLLS: u64 = 2_000_000;
/// A side without progress for this long fails.
const R_STALL: std::time::Duration = std::time::Duration::from_secs(10);

fn ring_mem(part: &InProcess, i: usize) -> Result<RingMem<'_>, NetBenchError> {
    let base = R_NIC_BASE + (i as u64) * 0x20_0000;
    let page = |gpa: u64| {
        part.page(gpa)
            .map_err(|e| NetBenchError::Setup(format!("guest page {gpa:#x}: {e:?}")))
    };
    let pages = |at: u64, n: usize| -> Result<Vec<PageRef<'_>>, NetBenchError> {
        (0..n as u64).map(|k| page(base + at + k * 4096)).collect()
    };
    Ok(RingMem {
        ring: pages(0, R_RING_OUT + R_RING_IN)?,
        rx: pages(0x4_0000, R_RX_PAGES)?,
        tx: pages(0x14_0000, R_TX_PAGES)?,
        control: page(base + 0x18_0000)?,
        direct: page(base + 0x18_1000)?,
    })
}

/// (guest->host signals, host->guest signals) of `relids` so far.
fn notifications(server: &VmbusServer, relids: &[u32]) -> (u64, u64) {
    let s = server.stats();
    relids
        .iter()
        .filter_map(|r| s.channels.get(r))
        .fold((0, 0), |(g, h), c| {
            (g + c.signals_from_guest, h + c.signals_to_guest)
        })
}

fn ring_point(
    side: &str,
    size: usize,
    frames: u64,
    secs: f64,
    dropped: u64,
    (g2h, h2g): (u64, u64),
) -> NetPoint {
    let mut p = point(side, size, frames, secs, 0, dropped);
    let per = |n: u64| {
        Some(if frames == 0 {
            0.0
        } else {
            n as f64 / frames as f64
        })
    };
    p.guest_signals_per_frame = per(g2h);
    p.host_interrupts_per_frame = per(h2g);
    p
}

/// The ring-level sides: NIC 0 on the TAP, NICs 1 and 2 on a switch, all
/// driven by vsc-net devices in one in-process guest.
fn ring_points(
    cfg: &NetBenchConfig,
    tap: &Arc<crate::net::TapBackend>,
    tap_mac: MacAddr,
) -> Result<Vec<NetPoint>, NetBenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Debug| {
        NetBenchError::Setup(format!("ring level: {what}: {e:?}"))
    };
    let part = InProcess::new(1, R_RAM).map_err(|e| setup("partition", &e))?;
    let server = VmbusServer::new(Arc::clone(part.hv()), VmbusOptions::default())
        .map_err(|e| setup("VMBus server", &e))?;
    let sw = Switch::new("ringbench");
    let macs = [
        MacAddr([2, 0x15, 0, 0, 2, 0]),
        MacAddr([2, 0x15, 0, 0, 2, 1]),
        MacAddr([2, 0x15, 0, 0, 2, 2]),
    ];
    let mut nics = Vec::new();
    for (i, mac) in macs.iter().enumerate() {
        let mut c = NicConfig::numbered(10 + i as u16);
        c.mac = *mac;
        let backend: Arc<dyn FrameBackend> = if i == 0 {
            tap.clone()
        } else {
            Arc::new(sw.port(&format!("g{i}")))
        };
        let nic = Nic::new(c, backend)?;
        server
            .add_device(nic.vsp())
            .map_err(|e| setup("offer", &e))?;
        nics.push(nic);
    }
    let vp0 = part.vp(0);
    let page = |gpa| part.page(gpa).map_err(|e| setup("guest page", &e));
    let hc = GuestHv::init(&vp0, GuestOsId::linux(6, 12, 0), page(R_HYPERCALL)?)
        .map_err(|e| setup("hypercall page", &e))?;
    let synic = SynIc::enable(
        &vp0,
        page(R_SIMP)?,
        page(R_SIEFP)?,
        &[(VMBUS_SINT, SintConfig::interrupt(R_VECTOR))],
    )
    .map_err(|e| setup("SynIC", &e))?;
    let bus_cfg = BusConfig {
        monitor_page1: 0x7000,
        monitor_page2: 0x8000,
        ..BusConfig::default()
    };
    let mut bus: VmBus<'_, _> = VmBus::new(&hc, &synic, page(R_INPUT)?, bus_cfg);
    bus.connect(R_POLLS).map_err(|e| setup("connect", &e))?;
    bus.wait_offers(R_POLLS).map_err(|e| setup("offers", &e))?;
    let mems = (0..3)
        .map(|i| ring_mem(&part, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut opened = Vec::new();
    for (nic, mem) in nics.iter().zip(&mems) {
        let relid = bus
            .client()
            .channels()
            .iter()
            .find(|c| c.instance() == nic.instance_id())
            .ok_or_else(|| NetBenchError::Setup(format!("no offer for {}", nic.name())))?
            .relid();
        let (ch, _) = bus
            .open_channel(relid, &mem.ring, R_RING_OUT, 0, [0; 120], R_POLLS)
            .map_err(|e| setup("open channel", &e))?;
        let conn = ch.connection_id();
        drop(ch);
        let rx = bus
            .create_gpadl(relid, &mem.rx, R_POLLS)
            .map_err(|e| setup("receive buffer GPADL", &e))?;
        let tx = bus
            .create_gpadl(relid, &mem.tx, R_POLLS)
            .map_err(|e| setup("send buffer GPADL", &e))?;
        opened.push((relid, conn, rx, tx));
    }
    let bus = &bus;
    let mut devs = Vec::new();
    for (mem, &(_, conn, rx, tx)) in mems.iter().zip(&opened) {
        let ring = |p| PageRefRing::new(p).map_err(|e| setup("ring", &e));
        let ch: Channel<_, 1> = Channel::new(
            ring(&mem.ring[..R_RING_OUT])?,
            ring(&mem.ring[R_RING_OUT..])?,
            conn,
        )
        .map_err(|e| setup("channel", &e))?;
        let c = ClientConfig::new(
            BufferConfig {
                gpadl: rx,
                len: (R_RX_PAGES * 4096) as u32,
            },
            BufferConfig {
                gpadl: tx,
                len: (R_TX_PAGES * 4096) as u32,
            },
        );
        let dev = NetDevice::<_, _>::open(
            ch,
            bus,
            c,
            &mem.rx,
            &mem.tx,
            mem.control,
            std::slice::from_ref(&mem.direct),
            R_POLLS,
        )
        .map_err(|e| setup("netvsc bring-up", &e))?;
        devs.push(dev);
    }
    let relids: Vec<u32> = opened.iter().map(|o| o.0).collect();
    let [d0, d1, d2] = &mut devs[..] else {
        return Err(NetBenchError::Setup("three devices expected".into()));
    };
    // B speaks once, so the switch learns it (no flooding after).
    d2.transmit(
        &udp_frame(macs[1], macs[2], 60),
        TxOffload::default(),
        R_POLLS,
    )
    .map_err(|e| setup("hello", &e))?;
    let _ = d1.receive(|_| {}, R_POLLS);

    let mut points = Vec::new();
    for &size in &cfg.sizes {
        let size = size.clamp(60, 1514);
        // vsc-net -> netvsp -> TAP.
        let f = udp_frame(tap_mac, macs[0], size);
        let s0 = nics[0].stats();
        let n0 = notifications(&server, &relids[..1]);
        let t = Instant::now();
        for i in 0..cfg.frames {
            d0.transmit(&f, TxOffload::default(), R_POLLS)
                .map_err(|e| setup("transmit", &e))?;
            if i % 64 == 63 {
                // Frames the namespace sends back (ARP) and TX completions.
                d0.poll(|_| {}).map_err(|e| setup("poll", &e))?;
            }
        }
        drain_tx(d0, &nics[0], cfg.frames + s0.tx_frames + s0.tx_dropped)?;
        let secs = t.elapsed().as_secs_f64();
        let s1 = nics[0].stats();
        let n1 = notifications(&server, &relids[..1]);
        points.push(ring_point(
            "ring: vsc-net->netvsp->tap",
            size,
            s1.tx_frames - s0.tx_frames,
            secs,
            s1.tx_dropped - s0.tx_dropped,
            (n1.0 - n0.0, n1.1 - n0.1),
        ));

        // vsc-net -> switch -> vsc-net.
        let f = udp_frame(macs[2], macs[1], size);
        let sb0 = nics[2].stats();
        let n0 = notifications(&server, &relids[1..]);
        let mut got = 0u64;
        let t = Instant::now();
        for i in 0..cfg.frames {
            d1.transmit(&f, TxOffload::default(), R_POLLS)
                .map_err(|e| setup("transmit", &e))?;
            if i % 16 == 15 {
                d2.poll(|_| got += 1).map_err(|e| setup("poll", &e))?;
            }
        }
        let mut last = (got, Instant::now());
        loop {
            d2.poll(|_| got += 1).map_err(|e| setup("poll", &e))?;
            d1.poll(|_| {}).map_err(|e| setup("poll", &e))?;
            let s = nics[2].stats();
            if got + (s.rx_dropped_no_buffer - sb0.rx_dropped_no_buffer) >= cfg.frames {
                break;
            }
            if got != last.0 {
                last = (got, Instant::now());
            } else if last.1.elapsed() > R_STALL {
                return Err(NetBenchError::Setup(format!(
                    "ring level: switch side stalled at {got} of {} frames",
                    cfg.frames
                )));
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let sb1 = nics[2].stats();
        let n1 = notifications(&server, &relids[1..]);
        points.push(ring_point(
            "ring: vsc-net->switch->vsc-net",
            size,
            got,
            secs,
            sb1.rx_dropped_no_buffer - sb0.rx_dropped_no_buffer,
            (n1.0 - n0.0, n1.1 - n0.1),
        ));
    }
    Ok(points)
}

/// Polls until the host handled `want` frames in total (sent or dropped).
fn drain_tx<S: HostSignal>(
    dev: &mut NetDevice<'_, '_, PageRefRing<'_, '_>, S>,
    nic: &Nic,
    want: u64,
) -> Result<(), NetBenchError> {
    let mut last = (0, Instant::now());
    loop {
        dev.poll(|_| {})
            .map_err(|e| NetBenchError::Setup(format!("ring level: poll: {e}")))?;
        let s = nic.stats();
        let done = s.tx_frames + s.tx_dropped;
        if done >= want {
            return Ok(());
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > R_STALL {
            return Err(NetBenchError::Setup(format!(
                "ring level: TAP side stalled at {done} of {want} frames"
            )));
        }
    }
}
