//! The client against a scripted host.
extern crate std;
use super::*;
use crate::offload::csum_cap;
use crate::rndis::{InitializeComplete, DF_CONNECTIONLESS, MEDIUM_802_3};
use std::vec;
use std::vec::Vec;
use vmbus_guest::packet::{PacketDescriptor, PacketFlags, XferPageHeader};

const SUB: u32 = 2048;
const RX_LEN: u32 = 64 * 1024;
const TX_LEN: u32 = 16 * 6144;
const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03];

fn packet(ty: PacketType, tid: u64, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let off = 16 + ext.len();
    let len = (off + payload.len()).next_multiple_of(8);
    let mut v = Vec::new();
    v.extend_from_slice(
        PacketDescriptor {
            packet_type: ty,
            data_offset8: (off / 8) as u16,
            len8: (len / 8) as u16,
            flags: PacketFlags::new(),
            transaction_id: tid,
        }
        .as_bytes(),
    );
    v.extend_from_slice(ext);
    v.extend_from_slice(payload);
    v.resize(len, 0);
    v
}

fn xfer_packet(tid: u64, set: u16, ranges: &[(u32, u32)]) -> Vec<u8> {
    let mut ext = Vec::new();
    ext.extend_from_slice(
        XferPageHeader {
            xfer_pageset_id: set,
            sender_owns_set: 0,
            reserved: 0,
            range_count: ranges.len() as u32,
        }
        .as_bytes(),
    );
    for (count, offset) in ranges {
        ext.extend_from_slice(&count.to_le_bytes());
        ext.extend_from_slice(&offset.to_le_bytes());
    }
    let nvsp = NvspMessage::send_rndis_packet(channel_type::CONTROL, None);
    packet(
        PacketType::DATA_USING_XFER_PAGES,
        tid,
        &ext,
        nvsp.as_bytes(),
    )
}

/// A scripted host: answers what the client sends, records events.
struct Host {
    rx: Vec<u8>,
    next_slot: u32,
    refuse_above: ProtocolVersion,
    offload: NdisOffload,
    link: u32,
    sent: Vec<(u64, Vec<u8>, Placement)>,
    completions: Vec<(u64, Status)>,
    ready: Option<DeviceInfo>,
    failed: Option<InitError>,
    frames: Vec<Vec<u8>>,
    links: Vec<bool>,
    tx_done: usize,
    errors: Vec<ClientError>,
    mac_reply: Vec<u8>,
    filter_status: RndisStatus,
    max_frame: u32,
}

impl Host {
    fn new() -> Self {
        let mut offload = NdisOffload::empty();
        offload.checksum.ip4_tx_csum = csum_cap::ALL_TCP4 | csum_cap::UDP;
        Self {
            rx: vec![0; RX_LEN as usize],
            next_slot: 0,
            refuse_above: ProtocolVersion::V61,
            offload,
            link: 0,
            sent: Vec::new(),
            completions: Vec::new(),
            ready: None,
            failed: None,
            frames: Vec::new(),
            links: Vec::new(),
            tx_done: 0,
            errors: Vec::new(),
            mac_reply: MAC.to_vec(),
            filter_status: RndisStatus::SUCCESS,
            max_frame: 1500,
        }
    }

    fn feed(&mut self, c: &mut NetvscClient, p: &[u8]) -> Result<(), ClientError> {
        let view = PacketView::new(p).unwrap();
        let mut scratch = [0u8; 4096];
        let Self {
            rx,
            ready,
            failed,
            frames,
            links,
            tx_done,
            ..
        } = self;
        let r = c.on_packet(&view, &rx[..], &mut scratch, |e| match e {
            Event::Ready(i) => *ready = Some(i),
            Event::InitFailed(e) => *failed = Some(e),
            Event::Frame { data, .. } => frames.push(data.to_vec()),
            Event::Link(up) => links.push(up),
            Event::TransmitDone { .. } => *tx_done += 1,
            _ => {}
        });
        if let Err(e) = r {
            self.errors.push(e);
        }
        r
    }

    /// Puts an RNDIS message into the receive buffer and delivers it.
    fn deliver(&mut self, c: &mut NetvscClient, msg: &[u8]) -> Result<(), ClientError> {
        let off = (self.next_slot % (RX_LEN / SUB)) * SUB;
        self.next_slot += 1;
        self.rx[off as usize..off as usize + msg.len()].copy_from_slice(msg);
        let p = xfer_packet(0x77, RECEIVE_BUFFER_ID, &[(msg.len() as u32, off)]);
        self.feed(c, &p)
    }

    /// Answers everything the client queued until it is quiet.
    fn run(&mut self, c: &mut NetvscClient) {
        for _ in 0..100 {
            let Some(out) = c.peek_transmit() else { return };
            let (tid, nvsp, placement, rndis) = (
                out.transaction_id,
                out.nvsp.to_vec(),
                out.placement,
                out.rndis.to_vec(),
            );
            let completion = out.completion;
            c.transmitted();
            if completion {
                let m = nvsp::parse(&nvsp).unwrap();
                let NvspMsg::SendRndisPacketComplete(s) = m else {
                    panic!("{m:?}")
                };
                self.completions.push((tid, s.status));
                continue;
            }
            self.sent.push((tid, nvsp.clone(), placement));
            let reply = match nvsp::parse(&nvsp).unwrap() {
                NvspMsg::Init(i) => Some(NvspMessage::init_complete(
                    i.max_protocol_version,
                    if i.max_protocol_version > self.refuse_above {
                        Status::FAIL
                    } else {
                        Status::SUCCESS
                    },
                )),
                NvspMsg::SendReceiveBuffer(_) => Some(NvspMessage::send_receive_buffer_complete(
                    Status::SUCCESS,
                    Some(nvsp::ReceiveBufferSection {
                        offset: 0,
                        sub_alloc_size: SUB,
                        num_sub_allocs: RX_LEN / SUB,
                        end_offset: RX_LEN,
                    }),
                )),
                NvspMsg::SendSendBuffer(_) => Some(NvspMessage::send_send_buffer_complete(
                    Status::SUCCESS,
                    6144,
                )),
                NvspMsg::SendRndisPacket(_) => {
                    Some(NvspMessage::send_rndis_packet_complete(Status::SUCCESS))
                }
                _ => None,
            };
            if let Some(r) = reply {
                let p = packet(PacketType::COMPLETION, tid, &[], r.as_bytes());
                let _ = self.feed(c, &p);
            }
            if placement == Placement::Control {
                if let Some(r) = self.rndis_reply(&rndis) {
                    let _ = self.deliver(c, &r);
                }
            }
        }
        panic!("client never went quiet");
    }

    fn rndis_reply(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let mut out = vec![0u8; 512];
        let n = match rndis::parse(msg).unwrap() {
            RndisMsg::Initialize(i) => rndis::build_initialize_complete(
                &mut out,
                &InitializeComplete {
                    request_id: i.request_id,
                    status: RndisStatus::SUCCESS,
                    major_version: 1,
                    minor_version: 0,
                    device_flags: DF_CONNECTIONLESS,
                    medium: MEDIUM_802_3,
                    max_packets_per_message: 8,
                    max_transfer_size: 0xEFFF_FFFF,
                    packet_alignment_factor: 3,
                    af_list_offset: 0,
                    af_list_size: 0,
                },
            ),
            RndisMsg::Query(q, info) => {
                let data: Vec<u8> = match q.oid {
                    Oid::GEN_MAXIMUM_FRAME_SIZE => self.max_frame.to_le_bytes().to_vec(),
                    Oid::ETH_802_3_PERMANENT_ADDRESS => self.mac_reply.clone(),
                    Oid::GEN_MEDIA_CONNECT_STATUS => self.link.to_le_bytes().to_vec(),
                    Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES => {
                        assert!(info.len() >= 112);
                        self.offload.as_bytes().to_vec()
                    }
                    _ => Vec::new(),
                };
                rndis::build_query_complete(&mut out, q.request_id, RndisStatus::SUCCESS, &data)
            }
            RndisMsg::Set(s, info) => {
                let st = match s.oid {
                    Oid::GEN_CURRENT_PACKET_FILTER => {
                        assert_eq!(info, &packet_filter::LINUX_DEFAULT.to_le_bytes());
                        self.filter_status
                    }
                    Oid::TCP_OFFLOAD_PARAMETERS => {
                        let p = NdisOffloadParameters::parse(info).unwrap();
                        assert_eq!(p.ip_v4_csum, param::TX_RX_DISABLED);
                        RndisStatus::SUCCESS
                    }
                    _ => RndisStatus::NOT_SUPPORTED,
                };
                rndis::build_set_complete(&mut out, s.request_id, st)
            }
            m => panic!("{m:?}"),
        }
        .unwrap();
        out.truncate(n);
        Some(out)
    }
}

fn config() -> ClientConfig {
    ClientConfig::new(
        BufferConfig {
            gpadl: 10,
            len: RX_LEN,
        },
        BufferConfig {
            gpadl: 11,
            len: TX_LEN,
        },
    )
}

fn ready(host: &mut Host) -> NetvscClient {
    let mut c = NetvscClient::new(config());
    c.start();
    host.run(&mut c);
    assert!(c.is_ready(), "{:?}", host.failed);
    c
}

#[test]
fn bring_up_linux_order() {
    let mut host = Host::new();
    host.refuse_above = ProtocolVersion::V5;
    let c = ready(&mut host);
    let info = host.ready.unwrap();
    assert_eq!(info.version, ProtocolVersion::V5);
    assert_eq!(info.mac, MAC);
    assert_eq!(info.mtu, 1500);
    assert!(info.link_up);
    assert_eq!(info.receive_section_size, SUB);
    assert_eq!((info.send_section_size, info.send_sections), (6144, 16));
    assert!(info.tx_tcp4_checksum && info.tx_udp4_checksum);
    assert_eq!(c.info(), Some(info));
    // The NVSP sequence: INIT 6.1, 6, 5, NDIS_CONFIG, NDIS_VERSION, RECV_BUF, SEND_BUF.
    let types: Vec<u32> = host
        .sent
        .iter()
        .map(|(_, n, _)| u32::from_le_bytes([n[0], n[1], n[2], n[3]]))
        .collect();
    assert_eq!(&types[..7], &[1, 1, 1, 125, 100, 101, 104]);
    let NvspMsg::SendNdisConfig(cfg) = nvsp::parse(&host.sent[3].1).unwrap() else {
        panic!()
    };
    assert_eq!(cfg.mtu, 1514);
    assert!(cfg.capability.ieee8021q());
    let NvspMsg::SendNdisVersion(v) = nvsp::parse(&host.sent[4].1).unwrap() else {
        panic!()
    };
    assert_eq!((v.ndis_major, v.ndis_minor), (6, 30));
    // Then 7 RNDIS control messages, each GPA-direct.
    assert_eq!(
        host.sent[7..]
            .iter()
            .filter(|s| s.2 == Placement::Control)
            .count(),
        7
    );
    // Every receive was completed with success.
    assert!(host.completions.iter().all(|c| c.1 == Status::SUCCESS));
    assert_eq!(host.completions.len(), 7);
}

#[test]
fn v1_skips_ndis_config() {
    let mut host = Host::new();
    host.refuse_above = ProtocolVersion::V1;
    let _c = ready(&mut host);
    let types: Vec<u32> = host
        .sent
        .iter()
        .map(|(_, n, _)| u32::from_le_bytes([n[0], n[1], n[2], n[3]]))
        .collect();
    assert_eq!(&types[..9], &[1, 1, 1, 1, 1, 1, 100, 101, 104]);
    assert_eq!(host.ready.unwrap().version, ProtocolVersion::V1);
}

#[test]
fn no_common_version() {
    let mut host = Host::new();
    host.refuse_above = ProtocolVersion(0);
    let mut c = NetvscClient::<4>::new(config());
    c.start();
    host.run(&mut c);
    assert_eq!(host.failed, Some(InitError::NoCommonVersion));
    assert_eq!(c.init_error(), Some(InitError::NoCommonVersion));
}

fn step_to(c: &mut NetvscClient, host: &mut Host, ty: MessageType) -> u64 {
    while let Some(o) = c.peek_transmit() {
        let m = nvsp::parse(o.nvsp).unwrap().msg_type();
        let tid = o.transaction_id;
        c.transmitted();
        if m == ty {
            return tid;
        }
        if m == MessageType::INIT {
            let r = NvspMessage::init_complete(ProtocolVersion::V61, Status::SUCCESS);
            host.feed(c, &packet(PacketType::COMPLETION, tid, &[], r.as_bytes()))
                .unwrap();
        }
    }
    panic!("never sent {ty:?}");
}

#[test]
fn bad_receive_sections() {
    let cases = [
        (0u32, 2048u32, 32u32, RX_LEN, 1u32),
        (0, 2048, 33, RX_LEN, 1),      // beyond the buffer
        (0, 60, 32, RX_LEN, 1),        // sub-allocation too small
        (4096, 2048, 30, RX_LEN, 1),   // offset not 0
        (0, 2048, 32, RX_LEN + 1, 1),  // end beyond
        (0, 2048, 32, RX_LEN, 0),      // no sections
        (0, u32::MAX, u32::MAX, 0, 1), // overflow
    ];
    for (i, (offset, sub, n, end, count)) in cases.into_iter().enumerate() {
        let mut host = Host::new();
        let mut c = NetvscClient::<4>::new(config());
        c.start();
        let tid = step_to(&mut c, &mut host, MessageType::SEND_RECEIVE_BUFFER);
        let mut m = NvspMessage::send_receive_buffer_complete(
            Status::SUCCESS,
            Some(nvsp::ReceiveBufferSection {
                offset,
                sub_alloc_size: sub,
                num_sub_allocs: n,
                end_offset: end,
            }),
        );
        m.body[4..8].copy_from_slice(&count.to_le_bytes());
        host.feed(
            &mut c,
            &packet(PacketType::COMPLETION, tid, &[], m.as_bytes()),
        )
        .unwrap();
        if i == 0 {
            assert_eq!(host.failed, None);
        } else {
            assert_eq!(host.failed, Some(InitError::BadReceiveSections), "case {i}");
        }
    }
    // Refused, short and wrong-type replies.
    for (m, want) in [
        (
            NvspMessage::send_receive_buffer_complete(Status::FAIL, None).as_bytes()[..40].to_vec(),
            InitError::NvspRefused(Step::ReceiveBuffer, Status::FAIL),
        ),
        (
            NvspMessage::send_receive_buffer_complete(Status::SUCCESS, None).as_bytes()[..8]
                .to_vec(),
            InitError::BadReply(Step::ReceiveBuffer),
        ),
        (
            NvspMessage::send_send_buffer_complete(Status::SUCCESS, 6144)
                .as_bytes()
                .to_vec(),
            InitError::BadReply(Step::ReceiveBuffer),
        ),
    ] {
        let mut host = Host::new();
        let mut c = NetvscClient::<4>::new(config());
        c.start();
        let tid = step_to(&mut c, &mut host, MessageType::SEND_RECEIVE_BUFFER);
        host.feed(&mut c, &packet(PacketType::COMPLETION, tid, &[], &m))
            .unwrap();
        assert_eq!(host.failed, Some(want));
    }
}

#[test]
fn bad_send_section_size() {
    for size in [0u32, 67, TX_LEN + 1] {
        let mut host = Host::new();
        let mut c = NetvscClient::<4>::new(config());
        c.start();
        let tid = step_to(&mut c, &mut host, MessageType::SEND_RECEIVE_BUFFER);
        let ok = NvspMessage::send_receive_buffer_complete(
            Status::SUCCESS,
            Some(nvsp::ReceiveBufferSection {
                offset: 0,
                sub_alloc_size: SUB,
                num_sub_allocs: 32,
                end_offset: RX_LEN,
            }),
        );
        host.feed(
            &mut c,
            &packet(PacketType::COMPLETION, tid, &[], ok.as_bytes()),
        )
        .unwrap();
        let tid = step_to(&mut c, &mut host, MessageType::SEND_SEND_BUFFER);
        let m = NvspMessage::send_send_buffer_complete(Status::SUCCESS, size);
        host.feed(
            &mut c,
            &packet(PacketType::COMPLETION, tid, &[], m.as_bytes()),
        )
        .unwrap();
        assert_eq!(host.failed, Some(InitError::BadSendSectionSize(size)));
    }
}

#[test]
fn fatal_rndis_failures() {
    let mut host = Host::new();
    host.mac_reply = vec![1, 2, 3];
    let mut c = NetvscClient::<4>::new(config());
    c.start();
    host.run(&mut c);
    assert_eq!(host.failed, Some(InitError::BadReply(Step::QueryMac)));

    let mut host = Host::new();
    host.offload.header.object_type = 0x80;
    let mut c = NetvscClient::<4>::new(config());
    c.start();
    host.run(&mut c);
    assert_eq!(host.failed, Some(InitError::BadReply(Step::QueryOffload)));

    let mut host = Host::new();
    host.filter_status = RndisStatus::FAILURE;
    let mut c = NetvscClient::<4>::new(config());
    c.start();
    host.run(&mut c);
    assert_eq!(
        host.failed,
        Some(InitError::RndisRefused(
            Step::SetFilter,
            RndisStatus::FAILURE
        ))
    );
}

#[test]
fn optional_queries_and_link_down() {
    let mut host = Host::new();
    host.link = media_state::DISCONNECTED;
    host.max_frame = 1400;
    host.offload = NdisOffload::empty();
    let c = ready(&mut host);
    let info = c.info().unwrap();
    assert!(!info.link_up && !c.link_up());
    assert_eq!(info.mtu, 1400);
    assert!(!info.tx_tcp4_checksum);
}

fn indicate(status: RndisStatus) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    let n = rndis::build_indicate_status(&mut out, status, &[]).unwrap();
    out.truncate(n);
    out
}

#[test]
fn link_indications() {
    let mut host = Host::new();
    let mut c = ready(&mut host);
    host.deliver(&mut c, &indicate(RndisStatus::MEDIA_DISCONNECT))
        .unwrap();
    assert!(!c.link_up());
    host.deliver(&mut c, &indicate(RndisStatus::MEDIA_CONNECT))
        .unwrap();
    assert!(c.link_up());
    assert_eq!(host.links, [false, true]);
    host.deliver(&mut c, &indicate(RndisStatus::NETWORK_CHANGE))
        .unwrap();
    host.run(&mut c);
    assert!(host.completions.iter().all(|c| c.1 == Status::SUCCESS));
}

#[test]
fn receive_frames_and_validation() {
    let mut host = Host::new();
    let mut c = ready(&mut host);
    host.completions.clear();
    let frame: Vec<u8> = (0..60u8).collect();
    let mut msg = vec![0u8; 256];
    let n = rndis::build_packet(&mut msg, &[(PpiType::TCPIP_CHECKSUM, 0x28)], &frame).unwrap();
    msg.truncate(n);
    host.deliver(&mut c, &msg).unwrap();
    assert_eq!(host.frames, core::slice::from_ref(&frame));
    host.run(&mut c);
    assert_eq!(host.completions, [(0x77, Status::SUCCESS)]);

    // Two ranges in one packet: both frames, one completion.
    host.rx[0..n].copy_from_slice(&msg);
    host.rx[SUB as usize..SUB as usize + n].copy_from_slice(&msg);
    let p = xfer_packet(0x99, RECEIVE_BUFFER_ID, &[(n as u32, 0), (n as u32, SUB)]);
    host.feed(&mut c, &p).unwrap();
    assert_eq!(host.frames.len(), 3);
    host.run(&mut c);

    // Each lie: an error, and the completion still goes back (with FAIL).
    let mut lying_len = msg.clone();
    lying_len[4] = 255; // msg_len beyond the range
    let mut lying_data = msg.clone();
    lying_data[12] = 200; // data_length beyond msg_len
    let mut lying_ppi = msg.clone();
    lying_ppi[44] = 200; // PPI size beyond the area
    let bad_ranges: [(&[(u32, u32)], u16); 6] = [
        (&[(n as u32, RX_LEN - 10)], RECEIVE_BUFFER_ID), // past the buffer end
        (&[(n as u32, u32::MAX)], RECEIVE_BUFFER_ID),    // offset overflow
        (&[(SUB + 1, 0)], RECEIVE_BUFFER_ID),            // larger than a sub-allocation
        (&[(0, 0)], RECEIVE_BUFFER_ID),                  // empty
        (&[(n as u32, 0)], 0x1234),                      // wrong page set
        (&[(u32::MAX, 8)], RECEIVE_BUFFER_ID),           // absurd count
    ];
    for (i, (ranges, set)) in bad_ranges.into_iter().enumerate() {
        host.completions.clear();
        let p = xfer_packet(1000 + i as u64, set, ranges);
        assert!(host.feed(&mut c, &p).is_err(), "case {i}");
        host.run(&mut c);
        assert_eq!(
            host.completions,
            [(1000 + i as u64, Status::FAIL)],
            "case {i}"
        );
    }
    for (i, m) in [lying_len, lying_data, lying_ppi].iter().enumerate() {
        host.completions.clear();
        assert!(host.deliver(&mut c, m).is_err(), "lie {i}");
        host.run(&mut c);
        assert_eq!(host.completions, [(0x77, Status::FAIL)]);
    }
    // A range count larger than the packet.
    let mut p = xfer_packet(5, RECEIVE_BUFFER_ID, &[(n as u32, 0)]);
    p[20] = 50;
    assert_eq!(host.feed(&mut c, &p), Err(ClientError::BadRanges));
    // Transfer pages carrying something other than SEND_RNDIS_PACKET.
    let mut p = xfer_packet(6, RECEIVE_BUFFER_ID, &[(n as u32, 0)]);
    p[32] = 2;
    assert!(matches!(
        host.feed(&mut c, &p),
        Err(ClientError::BadNvsp(_))
    ));
    // Unexpected RNDIS (a keepalive from the host) is refused.
    let mut ka = vec![0u8; 16];
    let k = rndis::build_keepalive(&mut ka, 1).unwrap();
    assert!(matches!(
        host.deliver(&mut c, &ka[..k]),
        Err(ClientError::UnexpectedRndis(_))
    ));
    assert_eq!(host.frames.len(), 3);
}

#[test]
fn frames_before_ready_are_refused() {
    let mut host = Host::new();
    let mut c = NetvscClient::<4>::new(config());
    c.start();
    let frame = [1u8; 60];
    let mut msg = vec![0u8; 256];
    let n = rndis::build_packet(&mut msg, &[], &frame).unwrap();
    assert_eq!(host.deliver(&mut c, &msg[..n]), Err(ClientError::NotReady));
}

#[test]
fn transmit_sections() {
    let mut host = Host::new();
    let mut c = ready(&mut host);
    host.sent.clear();
    let csum = ChecksumTxInfo::new()
        .with_is_ipv4(true)
        .with_tcp_checksum(true);
    let mut tids = Vec::new();
    for _ in 0..16 {
        let r = c
            .begin_transmit(
                100,
                TxOffload {
                    checksum: Some(csum),
                    vlan: None,
                },
            )
            .unwrap();
        assert_eq!(r.offset, r.section as usize * 6144);
        assert_eq!(r.header_len, 44 + 16);
        assert_eq!(r.total_len, 160);
        // The header parses (with a dummy frame after it) and carries the checksum PPI.
        let mut whole = r.header().to_vec();
        whole.resize(r.total_len, 0);
        let RndisMsg::Packet(p) = rndis::parse(&whole).unwrap() else {
            panic!()
        };
        assert_eq!(p.ppi_u32(PpiType::TCPIP_CHECKSUM), Some(csum.into_bits()));
        c.queue_transmit(&r).unwrap();
        tids.push(r.section);
    }
    assert_eq!(c.sections_in_use(), 16);
    assert_eq!(
        c.begin_transmit(100, TxOffload::default()),
        Err(TxError::Busy)
    );
    assert_eq!(
        c.begin_transmit(0, TxOffload::default()),
        Err(TxError::BadLength(0))
    );
    // Shorter than an Ethernet header: the host would drop it.
    assert_eq!(
        c.begin_transmit(13, TxOffload::default()),
        Err(TxError::BadLength(13))
    );
    assert_eq!(
        c.begin_transmit(6144, TxOffload::default()),
        Err(TxError::BadLength(6144))
    );
    host.run(&mut c);
    assert_eq!(host.tx_done, 16);
    assert_eq!(c.sections_in_use(), 0);
    let NvspMsg::SendRndisPacket(s) = nvsp::parse(&host.sent[0].1).unwrap() else {
        panic!()
    };
    assert_eq!(
        (s.channel_type, s.send_buffer_section_size),
        (channel_type::DATA, 160)
    );
    // A completion for a free section or an unknown id is refused.
    let done = NvspMessage::send_rndis_packet_complete(Status::SUCCESS);
    let p = packet(
        PacketType::COMPLETION,
        SECTION_TX_TRANSACTION_BASE | 3,
        &[],
        done.as_bytes(),
    );
    assert_eq!(
        host.feed(&mut c, &p),
        Err(ClientError::UnknownTransaction(
            SECTION_TX_TRANSACTION_BASE | 3
        ))
    );
    let p = packet(PacketType::COMPLETION, 42, &[], done.as_bytes());
    assert_eq!(
        host.feed(&mut c, &p),
        Err(ClientError::UnknownTransaction(42))
    );
    // Cancel returns the section.
    let r = c.begin_transmit(60, TxOffload::default()).unwrap();
    assert_eq!(c.sections_in_use(), 1);
    c.cancel_transmit(&r);
    assert_eq!(c.sections_in_use(), 0);
}

#[test]
fn transmit_direct_and_not_ready() {
    let mut c = NetvscClient::<4>::new(config());
    assert_eq!(
        c.begin_transmit(60, TxOffload::default()),
        Err(TxError::NotReady)
    );
    let mut host = Host::new();
    let mut c = ready(&mut host);
    let mut page = [0u8; 4096];
    let frame = [7u8; 1514];
    let n = c
        .transmit_direct(&mut page, &frame, TxOffload::default())
        .unwrap();
    assert_eq!(n, 44 + 1514);
    assert_eq!(
        c.transmit_direct(&mut page, &frame, TxOffload::default()),
        Err(TxError::Busy)
    );
    let out = c.peek_transmit().unwrap();
    assert_eq!(out.placement, Placement::Direct(n as u32));
    host.run(&mut c);
    assert_eq!(host.tx_done, 1);
    assert!(c
        .transmit_direct(&mut page, &frame, TxOffload::default())
        .is_ok());
}

#[test]
fn stale_and_unexpected() {
    let mut host = Host::new();
    let mut c = ready(&mut host);
    // A stray RNDIS completion after bring-up.
    let mut out = vec![0u8; 64];
    let n = rndis::build_set_complete(&mut out, 99, RndisStatus::SUCCESS).unwrap();
    assert!(matches!(
        host.deliver(&mut c, &out[..n]),
        Err(ClientError::UnexpectedRndis(_))
    ));
    // A control-id completion nothing waits for.
    let m = NvspMessage::init_complete(ProtocolVersion::V1, Status::SUCCESS);
    let p = packet(
        PacketType::COMPLETION,
        CONTROL_TRANSACTION_ID,
        &[],
        m.as_bytes(),
    );
    assert!(host.feed(&mut c, &p).is_err());
    // Unexpected in-band NVSP and packet types.
    let p = packet(PacketType::DATA_INBAND, 0, &[], m.as_bytes());
    assert_eq!(
        host.feed(&mut c, &p),
        Err(ClientError::UnexpectedNvsp(MessageType::INIT_COMPLETE))
    );
    let mut tbl = [0u8; 12 + 64];
    let k = nvsp::build_indirection_table(&mut tbl, &[0; 16]).unwrap();
    let p = packet(PacketType::DATA_INBAND, 0, &[], &tbl[..k]);
    assert!(host.feed(&mut c, &p).is_ok());
    let p = packet(PacketType::DATA_USING_GPA_DIRECT, 0, &[0; 8], m.as_bytes());
    assert!(matches!(
        host.feed(&mut c, &p),
        Err(ClientError::WrongPacketType(_))
    ));
    assert!(c.is_ready());
}
