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

use crate::net::backend::{FrameBackend, MacAddr};
use crate::net::netns::TestNetns;
use crate::net::switch::Switch;
use crate::net::{NetChannel, Nic, NicConfig};
use crate::vmbus::{Gpadl, GpadlRange, OutgoingPacket, SendError};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::packet::{PacketType, PacketView};
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
            "netvsp->tap",
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
            "netvsp->switch->netvsp",
            size,
            sb1.rx_frames - sb0.rx_frames,
            secs,
            sent1 - sent0,
            sb1.rx_dropped_no_buffer - sb0.rx_dropped_no_buffer,
        ));
    }
    drop(ns);
    Ok(NetBenchReport { points })
}

impl NetBenchReport {
    /// The table.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<26} {:>6} {:>10} {:>12} {:>10} {:>14} {:>8}\n",
            "side", "bytes", "frames", "frames/s", "Mbit/s", "h2g pkt/frame", "dropped"
        );
        for p in &self.points {
            s += &format!(
                "{:<26} {:>6} {:>10} {:>12.0} {:>10.0} {:>14.2} {:>8}\n",
                p.side,
                p.frame_bytes,
                p.frames,
                p.frames_per_sec,
                p.mbit_per_sec,
                p.host_packets_per_frame,
                p.dropped
            );
        }
        for size in self
            .points
            .iter()
            .map(|p| p.frame_bytes)
            .collect::<std::collections::BTreeSet<_>>()
        {
            let get = |side: &str| {
                self.points
                    .iter()
                    .find(|p| p.side == side && p.frame_bytes == size)
                    .map(|p| p.frames_per_sec)
            };
            if let (Some(a), Some(d)) = (get("netvsp->tap"), get("direct tap")) {
                s += &format!("{size} B: netvsp->tap / direct tap = {:.2}\n", a / d);
            }
        }
        s
    }
}
