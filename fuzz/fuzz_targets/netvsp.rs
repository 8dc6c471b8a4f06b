//! The host network VSP reading what a (hostile) guest wrote: a sequence of
//! arbitrary VMBus packets (in-band, GPA-direct with arbitrary range lists,
//! completions with arbitrary transaction ids) carrying arbitrary NVSP and
//! RNDIS bytes, interleaved with frames arriving from the backend (a switch
//! port), through `host_test_vmm::net::Nic::handle_packet`, the same entry
//! point the VMBus worker uses. Optionally the device is first brought up
//! the way Linux does it, so the data paths are reached. Errors become NVSP
//! / RNDIS failure statuses, never panics, and nothing reaches outside the
//! small guest RAM or the GPADLs.
#![no_main]

use arbitrary::Arbitrary;
use host_test_vmm::net::{FrameBackend, NetChannel, Nic, NicConfig, Switch};
use host_test_vmm::vmbus::{Gpadl, GpadlRange, OutgoingPacket, SendError};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmbus_guest::packet::{encode_gpa_direct_single, PacketType, PacketView};
use vsc_net::nvsp::{self, NvspMessage, ProtocolVersion};
use vsc_net::rndis;
use zerocopy::IntoBytes;

/// Guest RAM: small, so page lists often point past it.
const RAM: usize = 256 * 1024;
const RX_GPA: u64 = 0x10000;
const TX_GPA: u64 = 0x20000;
const CTRL_GPA: u64 = 0x30000;

struct Chan {
    mem: GuestMemoryMmap,
    free: Mutex<usize>,
    /// Transfer-page transaction ids the host sent (completed later).
    xfer: Mutex<Vec<u64>>,
}

impl NetChannel for Chan {
    fn relid(&self) -> u32 {
        1
    }
    fn send(&self, p: &OutgoingPacket<'_>) -> Result<(), SendError> {
        let free = *self.free.lock().unwrap();
        if p.ring_bytes() >= free {
            return Err(SendError::Full {
                needed: p.ring_bytes(),
            });
        }
        assert!(p.padded_len() <= nvsp::MAX_INBOUND_PACKET_SIZE);
        if p.packet_type == PacketType::DATA_USING_XFER_PAGES {
            self.xfer.lock().unwrap().push(p.transaction_id);
        }
        Ok(())
    }
    fn free_space(&self) -> Result<usize, SendError> {
        Ok(*self.free.lock().unwrap())
    }
    fn gpadl(&self, handle: u32) -> Option<Gpadl> {
        // Handles name buffers of different sizes, some straddling the end
        // of RAM (their pages were checked by the server, so only ones
        // inside RAM exist).
        let (gpa, len) = match handle {
            1 => (RX_GPA, 0x8000u64),
            2 => (TX_GPA, 4 * 6144),
            3 => (RX_GPA, 100),
            4 => (0, RAM as u64),
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

#[derive(Arbitrary, Debug)]
enum Step {
    /// A packet from the guest.
    Packet {
        kind: u8,
        completion: bool,
        tid: u64,
        /// Extension bytes (cut to 8-byte units).
        extension: Vec<u8>,
        payload: Vec<u8>,
    },
    /// An RNDIS message through the control path (GPA-direct to CTRL_GPA).
    Rndis { channel: u8, bytes: Vec<u8> },
    /// An RNDIS message in send section `idx` with a claimed size.
    Section { idx: u32, size: u32, bytes: Vec<u8> },
    /// A frame from the backend.
    Frame(Vec<u8>),
    /// Complete the n-th outstanding transfer-page packet.
    Complete(u8),
    /// Link up/down from the control side.
    Link(bool),
    /// Change the ring's free space.
    Ring(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    bring_up: bool,
    mtu: u16,
    steps: Vec<Step>,
}

fn packet(ty: PacketType, completion: bool, tid: u64, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let ext_len = (ext.len() / 8 * 8).min(2048);
    let off = 16 + ext_len;
    let total = (off + payload.len().min(8192)).next_multiple_of(8);
    let mut b = vec![0u8; total];
    b[0..2].copy_from_slice(&ty.0.to_le_bytes());
    b[2..4].copy_from_slice(&((off / 8) as u16).to_le_bytes());
    b[4..6].copy_from_slice(&((total / 8) as u16).to_le_bytes());
    b[6..8].copy_from_slice(&(completion as u16).to_le_bytes());
    b[8..16].copy_from_slice(&tid.to_le_bytes());
    b[16..off].copy_from_slice(&ext[..ext_len]);
    let n = payload.len().min(8192);
    b[off..off + n].copy_from_slice(&payload[..n]);
    b
}

fuzz_target!(|inp: Input| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let ch = Arc::new(Chan {
        mem: mem.clone(),
        free: Mutex::new(1 << 20),
        xfer: Mutex::new(Vec::new()),
    });
    let dch: Arc<dyn NetChannel> = ch.clone();
    let sw = Switch::new("fuzz");
    let peer = sw.port("peer");
    let mut cfg = NicConfig::numbered(0);
    cfg.mtu = u32::from(inp.mtu).clamp(68, 9000);
    let Ok(nic) = Nic::new(cfg, Arc::new(sw.port("nic"))) else {
        return;
    };
    nic.attach(Arc::clone(&dch));
    let mut scratch = Vec::new();
    let run = |b: &[u8], scratch: &mut Vec<u8>| {
        if let Ok(v) = PacketView::new(b) {
            let _ = nic.handle_packet(&dch, &v, scratch);
        }
    };
    let rndis_gpa = |bytes: &[u8], channel: u32, scratch: &mut Vec<u8>| {
        let n = bytes.len().min(8000);
        if n == 0 {
            return;
        }
        let _ = vm_memory::Bytes::write_slice(&mem, &bytes[..n], GuestAddress(CTRL_GPA));
        let pfns: Vec<u64> = (CTRL_GPA / 4096..(CTRL_GPA + n as u64).div_ceil(4096)).collect();
        let mut ext = [0u8; 64];
        let Some(e) = encode_gpa_direct_single(&mut ext, 0, n as u32, &pfns) else {
            return;
        };
        let m = NvspMessage::send_rndis_packet(channel, None);
        run(
            &packet(
                PacketType::DATA_USING_GPA_DIRECT,
                true,
                7,
                &ext[..e.next_multiple_of(8)],
                m.as_bytes(),
            ),
            scratch,
        );
    };
    if inp.bring_up {
        for m in [
            NvspMessage::init(ProtocolVersion::V61),
            NvspMessage::send_ndis_version(6, 30),
            NvspMessage::send_receive_buffer(1, nvsp::RECEIVE_BUFFER_ID),
            NvspMessage::send_send_buffer(2, 0),
        ] {
            run(
                &packet(PacketType::DATA_INBAND, true, 1, &[], m.as_bytes()),
                &mut scratch,
            );
        }
        let mut b = [0u8; 64];
        if let Ok(n) = rndis::build_initialize(&mut b, 1, 0x4000) {
            rndis_gpa(&b[..n], nvsp::channel_type::CONTROL, &mut scratch);
        }
        if let Ok(n) = rndis::build_set(
            &mut b,
            2,
            rndis::Oid::GEN_CURRENT_PACKET_FILTER,
            &0x2Du32.to_le_bytes(),
        ) {
            rndis_gpa(&b[..n], nvsp::channel_type::CONTROL, &mut scratch);
        }
    }
    for step in inp.steps.iter().take(64) {
        match step {
            Step::Packet {
                kind,
                completion,
                tid,
                extension,
                payload,
            } => {
                let ty = PacketType(u16::from(*kind % 14));
                run(
                    &packet(ty, *completion, *tid, extension, payload),
                    &mut scratch,
                );
            }
            Step::Rndis { channel, bytes } => {
                rndis_gpa(bytes, u32::from(*channel % 3), &mut scratch)
            }
            Step::Section { idx, size, bytes } => {
                let i = u64::from(*idx % 8);
                let n = bytes.len().min(6144);
                let _ = vm_memory::Bytes::write_slice(
                    &mem,
                    &bytes[..n],
                    GuestAddress(TX_GPA + i * 6144),
                );
                let m = NvspMessage::send_rndis_packet(0, Some((*idx, *size)));
                run(
                    &packet(PacketType::DATA_INBAND, true, 9, &[], m.as_bytes()),
                    &mut scratch,
                );
            }
            Step::Frame(f) => {
                let _ = peer.send(&f[..f.len().min(10000)]);
            }
            Step::Complete(n) => {
                let tid = {
                    let mut x = ch.xfer.lock().unwrap();
                    if x.is_empty() {
                        continue;
                    }
                    let i = usize::from(*n) % x.len();
                    x.swap_remove(i)
                };
                let m = NvspMessage::send_rndis_packet_complete(nvsp::Status::SUCCESS);
                run(
                    &packet(PacketType::COMPLETION, false, tid, &[], m.as_bytes()),
                    &mut scratch,
                );
            }
            Step::Link(up) => nic.set_link(*up),
            Step::Ring(free) => *ch.free.lock().unwrap() = usize::from(*free) * 16,
        }
    }
    let s = nic.stats();
    assert!(s.rx_sections_free <= s.rx_sections);
    let _ = host_test_vmm::net::trace::decode_nvsp(&[]);
    nic.detach();
});
