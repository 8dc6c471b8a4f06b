//! netvsp driven packet by packet through [`NetChannel`] with a recording
//! channel over real guest memory and GPADLs: every NVSP/RNDIS flow and the
//! errors a hostile guest can cause (no VMBus server or KVM needed; the
//! VMBus-level path is the same `Nic::handle_packet`).

use super::backend::{CollectSink, FrameBackend, MacAddr};
use super::netvsp::*;
use super::switch::Switch;
use crate::vmbus::{Gpadl, GpadlRange, OutgoingPacket, SendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::packet::{
    encode_gpa_direct_single, PacketType, PacketView, TransferPageRange, XferPageHeader,
};
use vsc_net::nvsp::{self, NvspMessage, ProtocolVersion, Status};
use vsc_net::offload::{NdisOffload, NdisOffloadParameters};
use vsc_net::rndis::{self, Oid, RndisStatus};
use zerocopy::{FromBytes, IntoBytes};

const RAM: usize = 4 << 20;
const RX_GPA: u64 = 0x10_0000;
const RX_LEN: u64 = 64 * 1024;
const TX_GPA: u64 = 0x20_0000;
const TX_SECTIONS: u64 = 4;
const CTRL_GPA: u64 = 0x30_0000;
const RX_GPADL: u32 = 0x100;
const TX_GPADL: u32 = 0x101;

/// A sent packet as the guest would read it.
#[derive(Debug, Clone)]
struct Sent {
    ty: PacketType,
    tid: u64,
    ext: Vec<u8>,
    payload: Vec<u8>,
}

struct MockChannel {
    mem: GuestMemoryMmap,
    sent: Mutex<Vec<Sent>>,
    free: Mutex<usize>,
}

fn gpadl(handle: u32, gpa: u64, len: u64) -> Gpadl {
    Gpadl {
        handle,
        relid: 1,
        ranges: vec![GpadlRange {
            byte_count: len as u32,
            byte_offset: 0,
            pfns: (gpa / 4096..(gpa + len).div_ceil(4096)).collect(),
        }],
    }
}

impl NetChannel for MockChannel {
    fn relid(&self) -> u32 {
        1
    }
    fn send(&self, p: &OutgoingPacket<'_>) -> Result<(), SendError> {
        let mut free = self.free.lock().unwrap();
        if p.ring_bytes() >= *free {
            return Err(SendError::Full {
                needed: p.ring_bytes(),
            });
        }
        *free -= p.ring_bytes();
        self.sent.lock().unwrap().push(Sent {
            ty: p.packet_type,
            tid: p.transaction_id,
            ext: p.extension.to_vec(),
            payload: p.payload.concat(),
        });
        Ok(())
    }
    fn free_space(&self) -> Result<usize, SendError> {
        Ok(*self.free.lock().unwrap())
    }
    fn gpadl(&self, handle: u32) -> Option<Gpadl> {
        match handle {
            RX_GPADL => Some(gpadl(RX_GPADL, RX_GPA, RX_LEN)),
            TX_GPADL => Some(gpadl(TX_GPADL, TX_GPA, TX_SECTIONS * 6144)),
            // A GPADL too small for anything.
            0x102 => Some(gpadl(0x102, RX_GPA, 64)),
            _ => None,
        }
    }
    fn memory(&self) -> Option<GuestMemoryMmap> {
        Some(self.mem.clone())
    }
}

struct Rig {
    nic: Arc<Nic>,
    ch: Arc<MockChannel>,
    dyn_ch: Arc<dyn NetChannel>,
    /// The switch port on the other side of the NIC.
    peer: super::switch::SwitchPort,
    peer_rx: Arc<CollectSink>,
    _switch: Arc<Switch>,
    scratch: Vec<u8>,
    next_tid: u64,
    req_id: u32,
}

const PEER_MAC: MacAddr = MacAddr([2, 0x15, 0xEE, 0, 0, 1]);

impl Rig {
    fn new() -> Self {
        let sw = Switch::new("t");
        let port = sw.port("nic");
        let peer = sw.port("peer");
        let peer_rx = CollectSink::new(256);
        peer.set_sink(Some(peer_rx.clone()));
        let mut cfg = NicConfig::numbered(0);
        cfg.mac = MacAddr([2, 0x15, 0, 0, 0, 0x10]);
        let nic = Nic::new(cfg, Arc::new(port)).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let ch = Arc::new(MockChannel {
            mem,
            sent: Mutex::new(Vec::new()),
            free: Mutex::new(1 << 20),
        });
        let dyn_ch: Arc<dyn NetChannel> = ch.clone();
        nic.attach(Arc::clone(&dyn_ch));
        Self {
            nic,
            ch,
            dyn_ch,
            peer,
            peer_rx,
            _switch: sw,
            scratch: Vec::new(),
            next_tid: 1,
            req_id: 1,
        }
    }

    fn raw(&mut self, ty: PacketType, ext: &[u8], payload: &[u8], completion: bool) -> u64 {
        let tid = self.next_tid;
        self.next_tid += 1;
        let off = 16 + ext.len();
        let total = (off + payload.len()).next_multiple_of(8);
        let mut b = vec![0u8; total];
        b[0..2].copy_from_slice(&ty.0.to_le_bytes());
        b[2..4].copy_from_slice(&((off / 8) as u16).to_le_bytes());
        b[4..6].copy_from_slice(&((total / 8) as u16).to_le_bytes());
        b[6..8].copy_from_slice(&(completion as u16).to_le_bytes());
        b[8..16].copy_from_slice(&tid.to_le_bytes());
        b[16..off].copy_from_slice(ext);
        b[off..off + payload.len()].copy_from_slice(payload);
        let view = PacketView::new(&b).unwrap();
        let ch = Arc::clone(&self.dyn_ch);
        self.nic
            .handle_packet(&ch, &view, &mut self.scratch)
            .unwrap();
        tid
    }

    /// Send an NVSP message in-band, return the completion's NVSP bytes.
    fn nvsp(&mut self, m: &NvspMessage) -> Option<Vec<u8>> {
        let tid = self.raw(PacketType::DATA_INBAND, &[], m.as_bytes(), true);
        self.completion(tid)
    }

    fn completion(&self, tid: u64) -> Option<Vec<u8>> {
        let sent = self.ch.sent.lock().unwrap();
        sent.iter()
            .rev()
            .find(|s| s.ty == PacketType::COMPLETION && s.tid == tid)
            .map(|s| s.payload.clone())
    }

    /// Transfer-page packets not yet taken: (tid, RNDIS bytes).
    fn take_rx(&self) -> Vec<(u64, Vec<u8>)> {
        let mut sent = self.ch.sent.lock().unwrap();
        let mut out = Vec::new();
        sent.retain(|s| {
            if s.ty != PacketType::DATA_USING_XFER_PAGES {
                return true;
            }
            let (h, rest) = XferPageHeader::read_from_prefix(&s.ext).unwrap();
            assert_eq!(h.xfer_pageset_id, nvsp::RECEIVE_BUFFER_ID);
            assert_eq!(h.range_count, 1);
            let (r, _) = TransferPageRange::read_from_prefix(rest).unwrap();
            assert!(u64::from(r.byte_offset) + u64::from(r.byte_count) <= RX_LEN);
            let mut b = vec![0u8; r.byte_count as usize];
            self.ch
                .mem
                .read_slice(&mut b, GuestAddress(RX_GPA + u64::from(r.byte_offset)))
                .unwrap();
            let m = nvsp::parse(&s.payload).unwrap();
            assert!(matches!(m, nvsp::Message::SendRndisPacket(_)));
            out.push((s.tid, b));
            false
        });
        out
    }

    fn complete_rx(&mut self, tid: u64) {
        let m = NvspMessage::send_rndis_packet_complete(Status::SUCCESS);
        let saved = self.next_tid;
        self.next_tid = tid;
        self.raw(PacketType::COMPLETION, &[], m.as_bytes(), false);
        self.next_tid = saved;
    }

    /// An RNDIS message from the guest via GPA-direct (the control path).
    fn rndis_gpa(&mut self, msg: &[u8], channel: u32) -> Status {
        self.ch
            .mem
            .write_slice(msg, GuestAddress(CTRL_GPA))
            .unwrap();
        let pfns: Vec<u64> =
            (CTRL_GPA / 4096..(CTRL_GPA + msg.len() as u64).div_ceil(4096)).collect();
        let mut ext = [0u8; 64];
        let n = encode_gpa_direct_single(&mut ext, 0, msg.len() as u32, &pfns).unwrap();
        let ext = ext[..n.next_multiple_of(8)].to_vec();
        let m = NvspMessage::send_rndis_packet(channel, None);
        let tid = self.raw(PacketType::DATA_USING_GPA_DIRECT, &ext, m.as_bytes(), true);
        nvsp_status(&self.completion(tid).unwrap())
    }

    /// An RNDIS message from the guest in send-buffer section `idx`.
    fn rndis_section(&mut self, msg: &[u8], idx: u32, size: u32) -> Status {
        if (idx as u64) < TX_SECTIONS {
            self.ch
                .mem
                .write_slice(msg, GuestAddress(TX_GPA + u64::from(idx) * 6144))
                .unwrap();
        }
        let m = NvspMessage::send_rndis_packet(nvsp::channel_type::DATA, Some((idx, size)));
        let tid = self.raw(PacketType::DATA_INBAND, &[], m.as_bytes(), true);
        nvsp_status(&self.completion(tid).unwrap())
    }

    /// A control request and its (completed) reply.
    fn control(&mut self, msg: &[u8]) -> Vec<u8> {
        assert_eq!(
            self.rndis_gpa(msg, nvsp::channel_type::CONTROL),
            Status::SUCCESS
        );
        let mut rx = self.take_rx();
        assert_eq!(rx.len(), 1, "one reply");
        let (tid, b) = rx.remove(0);
        self.complete_rx(tid);
        b
    }

    fn query(&mut self, oid: Oid, info: &[u8]) -> (RndisStatus, Vec<u8>) {
        let mut b = [0u8; 256];
        self.req_id += 1;
        let n = rndis::build_query(&mut b, self.req_id, oid, info).unwrap();
        let r = self.control(&b[..n]);
        match rndis::parse(&r).unwrap() {
            rndis::Message::QueryComplete(q, data) => {
                assert_eq!(q.request_id, self.req_id);
                (q.status, data.to_vec())
            }
            m => panic!("not QUERY_C: {m:?}"),
        }
    }

    fn set(&mut self, oid: Oid, data: &[u8]) -> RndisStatus {
        let mut b = [0u8; 256];
        self.req_id += 1;
        let n = rndis::build_set(&mut b, self.req_id, oid, data).unwrap();
        let r = self.control(&b[..n]);
        match rndis::parse(&r).unwrap() {
            rndis::Message::SetComplete(c) => c.status,
            m => panic!("not SET_C: {m:?}"),
        }
    }

    /// INIT v6.1, NDIS version/config, both buffers, RNDIS INIT, filter.
    fn bring_up(&mut self) {
        let r = self.nvsp(&NvspMessage::init(ProtocolVersion::V61)).unwrap();
        match nvsp::parse(&r).unwrap() {
            nvsp::Message::InitComplete(c) => assert_eq!(c.status, Status::SUCCESS),
            m => panic!("{m:?}"),
        }
        self.raw(
            PacketType::DATA_INBAND,
            &[],
            NvspMessage::send_ndis_version(6, 30).as_bytes(),
            false,
        );
        let r = self
            .nvsp(&NvspMessage::send_receive_buffer(
                RX_GPADL,
                nvsp::RECEIVE_BUFFER_ID,
            ))
            .unwrap();
        match nvsp::parse(&r).unwrap() {
            nvsp::Message::SendReceiveBufferComplete(c, s) => {
                assert_eq!(c.status, Status::SUCCESS);
                let s = s.get(0).unwrap();
                assert_eq!(s.offset, 0);
                assert!(
                    s.sub_alloc_size >= 1518
                        && u64::from(s.sub_alloc_size * s.num_sub_allocs) <= RX_LEN
                );
            }
            m => panic!("{m:?}"),
        }
        let r = self
            .nvsp(&NvspMessage::send_send_buffer(TX_GPADL, 0))
            .unwrap();
        match nvsp::parse(&r).unwrap() {
            nvsp::Message::SendSendBufferComplete(c) => {
                assert_eq!(c.status, Status::SUCCESS);
                assert_eq!(c.section_size, 6144);
            }
            m => panic!("{m:?}"),
        }
        let mut b = [0u8; 64];
        let n = rndis::build_initialize(&mut b, 1, 0x4000).unwrap();
        let r = self.control(&b[..n]);
        match rndis::parse(&r).unwrap() {
            rndis::Message::InitializeComplete(c) => {
                assert_eq!(c.status, RndisStatus::SUCCESS);
                assert_eq!(c.request_id, 1);
                assert_eq!(c.max_packets_per_message, 8);
                assert_eq!(c.packet_alignment_factor, 3);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            self.set(
                Oid::GEN_CURRENT_PACKET_FILTER,
                &rndis::packet_filter::LINUX_DEFAULT.to_le_bytes()
            ),
            RndisStatus::SUCCESS
        );
    }
}

fn nvsp_status(b: &[u8]) -> Status {
    match nvsp::parse(b).unwrap() {
        nvsp::Message::SendRndisPacketComplete(c) => c.status,
        m => panic!("not an RNDIS completion: {m:?}"),
    }
}

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x88, 0xB5]);
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

fn rndis_packet(f: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; f.len() + 64];
    let n = rndis::build_packet(&mut b, &[], f).unwrap();
    b.truncate(n);
    b
}

#[test]
fn version_negotiation_answers_every_init() {
    let mut r = Rig::new();
    for v in ProtocolVersion::DESCENDING {
        let c = r.nvsp(&NvspMessage::init(v)).unwrap();
        let nvsp::Message::InitComplete(c) = nvsp::parse(&c).unwrap() else {
            panic!()
        };
        assert_eq!(c.status, Status::SUCCESS, "{v:?}");
        assert_eq!(c.negotiated_protocol_version, v);
    }
    let c = r
        .nvsp(&NvspMessage::init(ProtocolVersion(0x0007_0000)))
        .unwrap();
    let nvsp::Message::InitComplete(c) = nvsp::parse(&c).unwrap() else {
        panic!()
    };
    assert_eq!(c.status, Status::FAIL);
    // A truncated INIT still gets an INIT_COMPLETE FAIL.
    let tid = r.raw(PacketType::DATA_INBAND, &[], &[1, 0, 0, 0, 2, 0], true);
    let nvsp::Message::InitComplete(c) = nvsp::parse(&r.completion(tid).unwrap()).unwrap() else {
        panic!()
    };
    assert_eq!(c.status, Status::FAIL);
    assert!(r.nic.stats().protocol_errors >= 1);
}

#[test]
fn buffers_are_checked() {
    let mut r = Rig::new();
    let fail_rx = |r: &mut Rig, h: u32| {
        let c = r
            .nvsp(&NvspMessage::send_receive_buffer(
                h,
                nvsp::RECEIVE_BUFFER_ID,
            ))
            .unwrap();
        let nvsp::Message::SendReceiveBufferComplete(c, _) = nvsp::parse(&c).unwrap() else {
            panic!()
        };
        c.status
    };
    // Before INIT.
    assert_eq!(fail_rx(&mut r, RX_GPADL), Status::FAIL);
    r.nvsp(&NvspMessage::init(ProtocolVersion::V5));
    // Unknown GPADL, too small a GPADL.
    assert_eq!(fail_rx(&mut r, 0x999), Status::FAIL);
    assert_eq!(fail_rx(&mut r, 0x102), Status::FAIL);
    assert_eq!(fail_rx(&mut r, RX_GPADL), Status::SUCCESS);
    // Twice.
    assert_eq!(fail_rx(&mut r, RX_GPADL), Status::FAIL);
    let c = r.nvsp(&NvspMessage::send_send_buffer(0x102, 0)).unwrap();
    let nvsp::Message::SendSendBufferComplete(c) = nvsp::parse(&c).unwrap() else {
        panic!()
    };
    assert_eq!(c.status, Status::FAIL);
    let st = r.nic.stats();
    assert_eq!(
        st.rx_sections as u64,
        RX_LEN / u64::from(rx_section_size(1500))
    );
    assert_eq!(st.version.as_deref(), Some("v5"));
    // Revoke frees it.
    r.raw(
        PacketType::DATA_INBAND,
        &[],
        NvspMessage::revoke_receive_buffer(nvsp::RECEIVE_BUFFER_ID).as_bytes(),
        false,
    );
    assert_eq!(r.nic.stats().rx_sections, 0);
}

#[test]
fn rndis_bring_up_queries_and_sets() {
    let mut r = Rig::new();
    r.bring_up();
    let (s, mac) = r.query(Oid::ETH_802_3_PERMANENT_ADDRESS, &[]);
    assert_eq!(s, RndisStatus::SUCCESS);
    assert_eq!(mac, r.nic.mac().0);
    let (s, v) = r.query(Oid::GEN_MAXIMUM_FRAME_SIZE, &[]);
    assert_eq!(
        (s, v),
        (RndisStatus::SUCCESS, 1500u32.to_le_bytes().to_vec())
    );
    let (_, v) = r.query(Oid::GEN_MEDIA_CONNECT_STATUS, &[]);
    assert_eq!(v, 0u32.to_le_bytes());
    let (_, v) = r.query(Oid::GEN_LINK_SPEED, &[]);
    assert_eq!(v, LINK_SPEED_100BPS.to_le_bytes());
    // Offload capabilities: the header Linux pre-fills picks the revision.
    for rev in [3u8, 2, 1] {
        let hdr = NdisOffload::query_header(rev);
        let mut info = vec![0u8; usize::from(hdr.size)];
        info[..4].copy_from_slice(hdr.as_bytes());
        let (s, v) = r.query(Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, &info);
        assert_eq!(s, RndisStatus::SUCCESS);
        assert_eq!(v.len(), usize::from(hdr.size));
        let o = NdisOffload::parse(&v).unwrap();
        assert_eq!(o.header.object_type, 0xA7);
        assert!(!o.tx_tcp4_csum());
    }
    let p = NdisOffloadParameters::no_change(3);
    assert_eq!(
        r.set(Oid::TCP_OFFLOAD_PARAMETERS, p.wire_bytes()),
        RndisStatus::SUCCESS
    );
    assert_eq!(
        r.set(Oid::TCP_OFFLOAD_PARAMETERS, &[0x80]),
        RndisStatus::INVALID_DATA
    );
    assert_eq!(
        r.set(Oid::ETH_802_3_MULTICAST_LIST, &[1, 0, 0x5e, 0, 0, 1]),
        RndisStatus::SUCCESS
    );
    assert_eq!(
        r.set(Oid::GEN_CURRENT_PACKET_FILTER, &[1, 0]),
        RndisStatus::INVALID_LENGTH
    );
    assert_eq!(
        r.set(Oid::GEN_RECEIVE_SCALE_PARAMETERS, &[0; 8]),
        RndisStatus::NOT_SUPPORTED
    );
    let (s, _) = r.query(Oid::GEN_RECEIVE_SCALE_CAPABILITIES, &[]);
    assert_eq!(
        s,
        RndisStatus::NOT_SUPPORTED,
        "no RSS: Linux stays on one channel"
    );
    // KEEPALIVE.
    let mut b = [0u8; 32];
    let n = rndis::build_keepalive(&mut b, 77).unwrap();
    let rep = r.control(&b[..n]);
    let rndis::Message::KeepaliveComplete(k) = rndis::parse(&rep).unwrap() else {
        panic!()
    };
    assert_eq!((k.request_id, k.status), (77, RndisStatus::SUCCESS));
    // SUBCHANNEL: 0 allocated.
    let c = r.nvsp(&NvspMessage::subchannel_request(3)).unwrap();
    let sc = nvsp::parse(&c).unwrap().subchannel_complete().unwrap();
    assert_eq!((sc.status, sc.num_subchannels), (Status::SUCCESS, 0));
    assert!(r.nic.stats().rndis_ready);
    // HALT: no reply, RNDIS down.
    let n = rndis::build_halt(&mut b, 9).unwrap();
    assert_eq!(
        r.rndis_gpa(&b[..n], nvsp::channel_type::CONTROL),
        Status::SUCCESS
    );
    assert!(r.take_rx().is_empty());
    assert!(!r.nic.stats().rndis_ready);
}

#[test]
fn transmit_from_sections_and_gpa_direct() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    // Every valid size up to the MTU, in a section.
    for len in [14usize, 60, 600, 1514] {
        let f = frame(PEER_MAC, me, len);
        let m = rndis_packet(&f);
        assert_eq!(
            r.rndis_section(&m, 1, m.len() as u32),
            Status::SUCCESS,
            "{len}"
        );
        assert_eq!(r.peer_rx.recv(Duration::from_secs(1)).unwrap(), f);
    }
    // A batch of three, padded to 8 (as Linux packs them).
    let mut batch = Vec::new();
    for i in 0..3 {
        let mut m = rndis_packet(&frame(PEER_MAC, me, 61 + i));
        let padded = m.len().next_multiple_of(8);
        m.resize(padded, 0);
        m[4..8].copy_from_slice(&(padded as u32).to_le_bytes());
        batch.extend_from_slice(&m);
    }
    assert_eq!(
        r.rndis_section(&batch, 0, batch.len() as u32),
        Status::SUCCESS
    );
    for i in 0..3 {
        assert_eq!(
            r.peer_rx.recv(Duration::from_secs(1)).unwrap().len(),
            61 + i
        );
    }
    // GPA-direct.
    let f = frame(PEER_MAC, me, 1000);
    assert_eq!(
        r.rndis_gpa(&rndis_packet(&f), nvsp::channel_type::DATA),
        Status::SUCCESS
    );
    assert_eq!(r.peer_rx.recv(Duration::from_secs(1)).unwrap(), f);
    let st = r.nic.stats();
    assert_eq!(st.tx_frames, 8);
    assert_eq!(st.tx_dropped, 0);
}

#[test]
fn transmit_errors_are_answered() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    let m = rndis_packet(&frame(PEER_MAC, me, 100));
    // Bad section index, size beyond the section, zero size.
    assert_eq!(r.rndis_section(&m, TX_SECTIONS as u32, 100), Status::FAIL);
    assert_eq!(r.rndis_section(&m, u32::MAX - 1, 100), Status::FAIL);
    assert_eq!(r.rndis_section(&m, 0, 6145), Status::FAIL);
    assert_eq!(r.rndis_section(&m, 0, 0), Status::FAIL);
    // Oversized frame (MTU + header + VLAN + 1).
    let big = rndis_packet(&frame(PEER_MAC, me, 1500 + 14 + 4 + 1));
    assert_eq!(
        r.rndis_section(&big, 0, big.len() as u32),
        Status::INVALID_RNDIS_PACKET
    );
    // RNDIS length lies: msg_len beyond the bytes, data beyond msg_len.
    let mut lie = m.clone();
    lie[4..8].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(
        r.rndis_section(&lie, 0, lie.len() as u32),
        Status::INVALID_RNDIS_PACKET
    );
    let mut lie = m.clone();
    lie[12..16].copy_from_slice(&4000u32.to_le_bytes()); // data_length
    assert_eq!(
        r.rndis_section(&lie, 0, lie.len() as u32),
        Status::INVALID_RNDIS_PACKET
    );
    let mut lie = m.clone();
    lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes()); // data_offset
    assert_eq!(
        r.rndis_section(&lie, 0, lie.len() as u32),
        Status::INVALID_RNDIS_PACKET
    );
    // GPA-direct page outside RAM.
    let mut ext = [0u8; 24];
    let n = encode_gpa_direct_single(&mut ext, 0, 100, &[(RAM as u64) / 4096 + 10]).unwrap();
    let msg = NvspMessage::send_rndis_packet(0, None);
    let tid = r.raw(
        PacketType::DATA_USING_GPA_DIRECT,
        &ext[..n],
        msg.as_bytes(),
        true,
    );
    assert_eq!(nvsp_status(&r.completion(tid).unwrap()), Status::FAIL);
    // Nothing reached the wire.
    assert!(r.peer_rx.recv(Duration::from_millis(20)).is_none());
    assert!(r.nic.stats().protocol_errors >= 8);
    // Data before RNDIS init is refused too.
    let mut r = Rig::new();
    r.nvsp(&NvspMessage::init(ProtocolVersion::V61));
    r.nvsp(&NvspMessage::send_send_buffer(TX_GPADL, 0));
    assert_eq!(
        r.rndis_section(&m, 0, m.len() as u32),
        Status::INVALID_RNDIS_PACKET
    );
}

#[test]
fn receive_into_sections_and_recycle() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    let sections = r.nic.stats().rx_sections as usize;
    // Every size up to MTU arrives intact.
    for len in [14usize, 60, 1514, 1518] {
        let f = frame(me, PEER_MAC, len);
        r.peer.send(&f).unwrap();
        let rx = r.take_rx();
        assert_eq!(rx.len(), 1);
        let rndis::Message::Packet(p) = rndis::parse(&rx[0].1).unwrap() else {
            panic!()
        };
        assert_eq!(p.data, &f[..]);
        r.complete_rx(rx[0].0);
    }
    // Frames for someone else are filtered; broadcast is not.
    r.peer
        .send(&frame(MacAddr([2, 9, 9, 9, 9, 9]), PEER_MAC, 60))
        .unwrap();
    r.peer
        .send(&frame(MacAddr::BROADCAST, PEER_MAC, 60))
        .unwrap();
    // Oversized frame dropped.
    r.peer.send(&frame(me, PEER_MAC, 1519)).unwrap();
    let rx = r.take_rx();
    assert_eq!(rx.len(), 1);
    r.complete_rx(rx[0].0);
    let st = r.nic.stats();
    assert_eq!(st.rx_dropped_filter, 1);
    assert_eq!(st.rx_dropped_oversize, 1);
    // No completions: every section fills, then frames are dropped.
    for _ in 0..sections + 5 {
        r.peer.send(&frame(me, PEER_MAC, 100)).unwrap();
    }
    let rx = r.take_rx();
    assert_eq!(rx.len(), sections);
    let st = r.nic.stats();
    assert_eq!(st.rx_dropped_no_buffer, 5);
    assert_eq!(st.rx_sections_free, 0);
    // A completion for a section not in use, or a made-up tid, is ignored.
    r.complete_rx(12345);
    assert_eq!(r.nic.stats().bogus_completions, 1);
    for (tid, _) in &rx {
        r.complete_rx(*tid);
    }
    r.complete_rx(rx[0].0);
    assert_eq!(r.nic.stats().bogus_completions, 2, "double completion");
    assert_eq!(r.nic.stats().rx_sections_free as usize, sections);
    r.peer.send(&frame(me, PEER_MAC, 100)).unwrap();
    assert_eq!(r.take_rx().len(), 1);
}

#[test]
fn link_down_and_up_indications() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    r.nic.set_link(false);
    let rx = r.take_rx();
    assert_eq!(rx.len(), 1);
    let rndis::Message::IndicateStatus(s, _) = rndis::parse(&rx[0].1).unwrap() else {
        panic!()
    };
    assert_eq!(s.status, RndisStatus::MEDIA_DISCONNECT);
    r.complete_rx(rx[0].0);
    // Down: media state says so, frames dropped both ways.
    let (_, v) = r.query(Oid::GEN_MEDIA_CONNECT_STATUS, &[]);
    assert_eq!(v, 1u32.to_le_bytes());
    r.peer.send(&frame(me, PEER_MAC, 60)).unwrap();
    assert!(r.take_rx().is_empty());
    assert_eq!(r.nic.stats().rx_dropped_link, 1);
    let m = rndis_packet(&frame(PEER_MAC, me, 60));
    assert_eq!(r.rndis_section(&m, 0, m.len() as u32), Status::SUCCESS);
    assert!(r.peer_rx.recv(Duration::from_millis(20)).is_none());
    // Setting the same state again sends nothing.
    r.nic.set_link(false);
    assert!(r.take_rx().is_empty());
    r.nic.set_link(true);
    let rx = r.take_rx();
    let rndis::Message::IndicateStatus(s, _) = rndis::parse(&rx[0].1).unwrap() else {
        panic!()
    };
    assert_eq!(s.status, RndisStatus::MEDIA_CONNECT);
    assert_eq!(r.nic.stats().link_indications, 2);
    assert!(r.nic.link_up());
}

#[test]
fn control_reply_waits_for_a_free_section() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    let sections = r.nic.stats().rx_sections as usize;
    for _ in 0..sections {
        r.peer.send(&frame(me, PEER_MAC, 100)).unwrap();
    }
    let rx = r.take_rx();
    let mut b = [0u8; 64];
    let n = rndis::build_query(&mut b, 42, Oid::GEN_LINK_SPEED, &[]).unwrap();
    assert_eq!(
        r.rndis_gpa(&b[..n], nvsp::channel_type::CONTROL),
        Status::SUCCESS
    );
    assert!(r.take_rx().is_empty(), "no section yet");
    r.complete_rx(rx[0].0);
    let rep = r.take_rx();
    assert_eq!(rep.len(), 1);
    let rndis::Message::QueryComplete(q, _) = rndis::parse(&rep[0].1).unwrap() else {
        panic!()
    };
    assert_eq!(q.request_id, 42);
}

#[test]
fn full_ring_defers_requests_and_drops_frames() {
    let mut r = Rig::new();
    r.bring_up();
    let me = r.nic.mac();
    *r.ch.free.lock().unwrap() = 100;
    // A request needing a completion is pushed back untouched.
    let m = NvspMessage::init(ProtocolVersion::V61);
    let bytes = {
        let mut b = vec![0u8; 16 + 40];
        b[0..2].copy_from_slice(&PacketType::DATA_INBAND.0.to_le_bytes());
        b[2..4].copy_from_slice(&2u16.to_le_bytes());
        b[4..6].copy_from_slice(&7u16.to_le_bytes());
        b[6..8].copy_from_slice(&1u16.to_le_bytes());
        b[16..].copy_from_slice(m.as_bytes());
        b
    };
    let view = PacketView::new(&bytes).unwrap();
    let ch = Arc::clone(&r.dyn_ch);
    assert!(matches!(
        r.nic.handle_packet(&ch, &view, &mut Vec::new()),
        Err(SendError::Full { .. })
    ));
    assert!(r.nic.stats().rndis_ready, "nothing was done");
    // Frames are dropped rather than eating the completions' room.
    r.peer.send(&frame(me, PEER_MAC, 60)).unwrap();
    assert_eq!(r.nic.stats().rx_dropped_no_buffer, 1);
}

#[test]
fn garbage_never_panics() {
    let mut r = Rig::new();
    r.bring_up();
    let mut seed = 0x1234_5678u64;
    for i in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 48) as usize;
        let mut p = vec![0u8; len];
        for (j, b) in p.iter_mut().enumerate() {
            *b = (seed >> ((j % 8) * 8)) as u8;
        }
        if len >= 4 && i % 2 == 0 {
            p[..4].copy_from_slice(&(100 + (seed % 40) as u32).to_le_bytes());
        }
        r.raw(PacketType::DATA_INBAND, &[], &p, true);
    }
}
