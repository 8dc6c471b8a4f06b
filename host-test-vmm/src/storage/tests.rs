//! storvsp driven by a scripted guest over the in-process VMBus server:
//! SynIC messages through the hypercall path, rings over guest pages, VSTOR
//! packets and GPA-direct page lists as Linux's storvsc builds them.

use super::backend::tests_support::temp_path;
use super::*;
use crate::hv::inprocess::InProcess;
use crate::hv::HvStatus;
use crate::vmbus::{GuestRingMemory, TraceWriter, VmbusOptions, VmbusServer, VMBUS_MESSAGE_TYPE};
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vmbus_guest::message::{
    ChannelMessage, GpadlMessages, InitiateContact, MessageBuf, OfferChannel, OpenChannel,
};
use vmbus_guest::packet::{encode_gpa_direct_single, PacketType};
use vmbus_guest::ring::{init_control, OutgoingPacket, RingReceiver, RingSender};
use vmbus_guest::version::VMBUS_SINT;
use vmbus_guest::Version;
use vsc_storage::vstor::{
    ChannelProperties, DataDirection, Operation, ProtocolVersion, SrbStatus, VmSrb, VstorPacket,
    VstorStatus, INIT_TRANSACTION_ID,
};

const RAM: usize = 8 << 20;
const VECTOR: u8 = 0xF3;
const SIMP: u64 = 0x2000;
const SIEFP: u64 = 0x3000;
const INPUT: u64 = 0x6000;
/// Ring pages are allocated upwards from here, data pages from DATA.
const FIRST_RING_PAGE: u64 = 0x100;
const DATA: u64 = 0x400_000;
const WAIT: Duration = Duration::from_secs(10);
const V: ProtocolVersion = ProtocolVersion::WIN10;

struct Guest {
    part: InProcess,
    _server: Arc<VmbusServer>,
    ctrl: Arc<StorageController>,
    conn_id: Cell<u32>,
    next_page: Cell<u64>,
    next_gpadl: Cell<u32>,
}

struct Ch {
    event_conn: u32,
    tx: RingSender<GuestRingMemory>,
    rx: RingReceiver<GuestRingMemory>,
    buf: Vec<u8>,
    next_tid: u64,
}

/// A completion as the guest sees it.
#[derive(Debug)]
struct Done {
    tid: u64,
    pkt: VstorPacket,
}

impl Done {
    fn srb(&self) -> VmSrb {
        self.pkt.srb()
    }
    fn sense(&self) -> (u8, u8, u8) {
        let s = self.srb();
        let b = s.sense(V);
        assert!(b.len() >= 14, "no sense: {s:?}");
        (b[2] & 0xF, b[12], b[13])
    }
}

impl Guest {
    fn new(ctrl: Arc<StorageController>) -> Self {
        Self::with_options(ctrl, VmbusOptions::default())
    }

    fn with_options(ctrl: Arc<StorageController>, opts: VmbusOptions) -> Self {
        let part = InProcess::new(1, RAM).unwrap();
        part.enable_hypercalls(0x1000).unwrap();
        part.enable_synic(0, SIMP, SIEFP).unwrap();
        part.unmask_sint(0, VMBUS_SINT, VECTOR).unwrap();
        let server = VmbusServer::new(Arc::clone(part.hv()), opts).unwrap();
        server.add_device(ctrl.vsp()).unwrap();
        let g = Self {
            part,
            _server: server,
            ctrl,
            conn_id: Cell::new(0),
            next_page: Cell::new(FIRST_RING_PAGE),
            next_gpadl: Cell::new(0x5700),
        };
        let v = Version::WIN10_V5_3;
        let ic = InitiateContact::with_target_sint(v, 0, VMBUS_SINT, 0, 0x7000, 0x8000);
        let b = ChannelMessage::InitiateContact(ic).encode().unwrap();
        assert_eq!(
            g.part.post_message(
                0,
                INPUT,
                v.initiate_contact_connection_id(),
                1,
                b.as_bytes()
            ),
            HvStatus::SUCCESS
        );
        let ChannelMessage::VersionResponse(r) = g.recv().parse().unwrap() else {
            panic!("no VersionResponse");
        };
        assert!(r.accepted());
        g.conn_id.set(r.msg_conn_id);
        g
    }

    fn post(&self, m: &ChannelMessage<'_>) {
        let b = m.encode().unwrap();
        assert_eq!(
            self.part
                .post_message(0, INPUT, self.conn_id.get(), 1, b.as_bytes()),
            HvStatus::SUCCESS
        );
    }

    fn recv(&self) -> MessageBuf {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(m) = self.part.complete_message(0, SIMP, VMBUS_SINT).unwrap() {
                assert_eq!(m.header.message_type.0, VMBUS_MESSAGE_TYPE);
                return MessageBuf::from_bytes(m.payload()).unwrap();
            }
            assert!(Instant::now() < end, "no message arrived");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn offers(&self) -> Vec<OfferChannel> {
        self.post(&ChannelMessage::RequestOffers);
        let mut v = Vec::new();
        loop {
            match self.recv().parse().unwrap() {
                ChannelMessage::OfferChannel(o) => v.push(o),
                ChannelMessage::AllOffersDelivered => return v,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn open(&self, offer: &OfferChannel, up: usize, down: usize) -> Ch {
        let first = self.next_page.get();
        self.next_page.set(first + (up + down) as u64);
        let pfns: Vec<u64> = (first..first + (up + down) as u64).collect();
        let mem = self.part.memory().clone();
        let up_mem = GuestRingMemory::new(mem.clone(), &pfns[..up]).unwrap();
        let down_mem = GuestRingMemory::new(mem, &pfns[up..]).unwrap();
        init_control(&up_mem).unwrap();
        init_control(&down_mem).unwrap();
        let h = self.next_gpadl.get();
        self.next_gpadl.set(h + 1);
        let msgs = GpadlMessages::new(
            offer.child_relid,
            h,
            0,
            (pfns.len() * 4096) as u32,
            &pfns[..],
        )
        .unwrap();
        for m in msgs {
            assert_eq!(
                self.part
                    .post_message(0, INPUT, self.conn_id.get(), 1, m.as_bytes()),
                HvStatus::SUCCESS
            );
        }
        let ChannelMessage::GpadlCreated(c) = self.recv().parse().unwrap() else {
            panic!("no GpadlCreated");
        };
        assert_eq!(c.creation_status, 0);
        let o = OpenChannel::new(
            offer.child_relid,
            offer.child_relid,
            h,
            0,
            up as u32,
            [0; 120],
        );
        self.post(&ChannelMessage::OpenChannel(o));
        let ChannelMessage::OpenResult(r) = self.recv().parse().unwrap() else {
            panic!("no OpenResult");
        };
        assert_eq!(r.status, 0);
        Ch {
            event_conn: offer.connection_id,
            tx: RingSender::new(up_mem).unwrap(),
            rx: RingReceiver::new(down_mem).unwrap(),
            buf: vec![0; down * 4096],
            next_tid: 1,
        }
    }

    /// Connect, open the controller's channel and run the Linux init
    /// sequence.
    fn ready(&self) -> Ch {
        let offers = self.offers();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].if_type, SCSI_CLASS_ID);
        let mut ch = self.open(&offers[0], 8, 8);
        self.init(&mut ch);
        ch
    }

    fn init(&self, ch: &mut Ch) {
        let pre = Some(ProtocolVersion::WIN7);
        let d = self.call(
            ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::request(Operation::BEGIN_INITIALIZATION),
            pre,
        );
        assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
        let d = self.call(ch, INIT_TRANSACTION_ID, &VstorPacket::query_version(V), pre);
        assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
        let d = self.call(
            ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::request(Operation::QUERY_PROPERTIES),
            Some(V),
        );
        assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
        let d = self.call(
            ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::request(Operation::END_INITIALIZATION),
            Some(V),
        );
        assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    }

    fn signal(&self, ch: &Ch) {
        assert_eq!(
            self.part.signal_event(0, ch.event_conn, 0),
            HvStatus::SUCCESS
        );
    }

    /// Send `p` (its wire size for `v`) in-band, or GPA-direct over `data`.
    fn send(
        &self,
        ch: &mut Ch,
        tid: u64,
        p: &VstorPacket,
        v: Option<ProtocolVersion>,
        data: Option<&[u8]>,
    ) {
        let bytes = p.wire_bytes(v.unwrap_or(ProtocolVersion::WIN7));
        let parts = [bytes];
        let mut pkt = OutgoingPacket::inband(tid, true, &parts);
        if let Some(ext) = data {
            pkt.packet_type = PacketType::DATA_USING_GPA_DIRECT;
            pkt.extension = ext;
        }
        if ch.tx.try_write(&pkt).unwrap().needed() {
            self.signal(ch);
        }
    }

    /// The next packet from the host (completion or in-band).
    fn next(&self, ch: &mut Ch) -> (PacketType, Done) {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                let t = v.packet_type();
                let tid = v.transaction_id();
                let pkt = VstorPacket::parse(v.payload(), Some(ProtocolVersion::WIN7)).unwrap();
                assert!(v.bytes().len() <= vsc_storage::vstor::MAX_INBOUND_PACKET_SIZE);
                if ch.rx.commit().unwrap().needed() {
                    self.signal(ch);
                }
                return (t, Done { tid, pkt });
            }
            assert!(Instant::now() < end, "no packet arrived");
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn call(&self, ch: &mut Ch, tid: u64, p: &VstorPacket, v: Option<ProtocolVersion>) -> Done {
        self.send(ch, tid, p, v, None);
        let (t, d) = self.next(ch);
        assert_eq!(t, PacketType::COMPLETION);
        assert_eq!(d.tid, tid);
        assert_eq!(d.pkt.operation, Operation::COMPLETE_IO);
        d
    }

    /// The GPA-direct extension for `len` bytes at data page `page` +
    /// `offset`, pages in descending order (scattered).
    fn ext(&self, page: u64, offset: u32, len: u32) -> Vec<u8> {
        let n = (offset as usize + len as usize).div_ceil(4096);
        let pfns: Vec<u64> = (0..n as u64)
            .map(|i| DATA / 4096 + page + 2 * (n as u64 - 1 - i))
            .collect();
        let mut e = vec![0u8; 16 + 8 * n];
        let k = encode_gpa_direct_single(&mut e, offset, len, &pfns).unwrap();
        e.truncate(k);
        e
    }

    /// Guest bytes of a buffer described by `ext`.
    fn buffer(&self, ext: &[u8]) -> Vec<Segment> {
        let off = u32::from_le_bytes(ext[12..16].try_into().unwrap());
        let mut left = u32::from_le_bytes(ext[8..12].try_into().unwrap());
        let mut first = true;
        let mut segs = Vec::new();
        for c in ext[16..].chunks_exact(8) {
            let pfn = u64::from_le_bytes(c.try_into().unwrap());
            let o = if first { off } else { 0 };
            first = false;
            let n = (4096 - o).min(left);
            segs.push(Segment {
                gpa: pfn * 4096 + u64::from(o),
                len: n,
            });
            left -= n;
        }
        segs
    }

    fn write_guest(&self, ext: &[u8], data: &[u8]) {
        let mut at = 0;
        for s in self.buffer(ext) {
            self.part
                .write_bytes(s.gpa, &data[at..at + s.len as usize])
                .unwrap();
            at += s.len as usize;
        }
    }

    fn read_guest(&self, ext: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for s in self.buffer(ext) {
            v.extend(self.part.read_bytes(s.gpa, s.len as usize).unwrap());
        }
        v
    }

    /// One SCSI command on LUN `lun`; `data` = (extension, direction).
    fn scsi(&self, ch: &mut Ch, lun: u8, cdb: &[u8], data: Option<(&[u8], DataDirection)>) -> Done {
        let tid = ch.next_tid;
        ch.next_tid += 1;
        let p = srb_packet(0, lun, cdb, data.map(|(e, d)| (d, ext_len(e))));
        self.send(ch, tid, &p, Some(V), data.map(|(e, _)| e));
        let (t, d) = self.next(ch);
        assert_eq!(t, PacketType::COMPLETION);
        assert_eq!(d.tid, tid);
        d
    }

    /// A read command's data (`len` bytes at data page `page`).
    fn scsi_in(&self, ch: &mut Ch, lun: u8, cdb: &[u8], len: u32) -> (Done, Vec<u8>) {
        let e = self.ext(0, 0x10, len);
        self.write_guest(&e, &vec![0xCC; len as usize]);
        let d = self.scsi(ch, lun, cdb, Some((&e, DataDirection::READ)));
        let n = d.srb().data_transfer_length as usize;
        let mut v = self.read_guest(&e);
        v.truncate(n);
        (d, v)
    }
}

fn ext_len(e: &[u8]) -> u32 {
    u32::from_le_bytes(e[8..12].try_into().unwrap())
}

use super::buffer::Segment;

fn srb_packet(target: u8, lun: u8, cdb: &[u8], data: Option<(DataDirection, u32)>) -> VstorPacket {
    let mut srb = VmSrb {
        length: V.srb_size() as u16,
        target_id: target,
        lun,
        sense_info_length: 20,
        data_in: data.map_or(DataDirection::NONE, |d| d.0),
        data_transfer_length: data.map_or(0, |d| d.1),
        time_out_value: 60,
        ..VmSrb::default()
    };
    srb.set_cdb(cdb);
    VstorPacket::execute_srb(&srb)
}

fn ok(d: &Done) {
    let s = d.srb();
    assert_eq!(s.srb_status, SrbStatus::SUCCESS, "{s:?}");
    assert_eq!(s.scsi_status, 0);
}

fn image(tag: &str, len: usize, fill: impl Fn(usize) -> u8) -> std::path::PathBuf {
    let p = temp_path(tag);
    std::fs::write(&p, (0..len).map(fill).collect::<Vec<u8>>()).unwrap();
    p
}

fn controller() -> Arc<StorageController> {
    StorageController::new(ControllerConfig {
        io_threads: 4,
        ..ControllerConfig::default()
    })
    .unwrap()
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn init_sequence_versions_and_state_errors() {
    let g = Guest::new(controller());
    let offers = g.offers();
    let mut ch = g.open(&offers[0], 8, 8);
    let pre = Some(ProtocolVersion::WIN7);
    // I/O before initialization.
    let p = srb_packet(0, 0, &[0; 6], None);
    let d = g.call(&mut ch, 5, &p, pre);
    assert_eq!(d.pkt.status, VstorStatus::INVALID_DEVICE_STATE);
    // Version before BEGIN_INITIALIZATION.
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::query_version(V),
        pre,
    );
    assert_eq!(d.pkt.status, VstorStatus::INVALID_DEVICE_STATE);
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::request(Operation::BEGIN_INITIALIZATION),
        pre,
    );
    assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    // Unknown versions are refused with REVISION_MISMATCH, then 6.2 wins.
    for bad in [
        ProtocolVersion(0x0700),
        ProtocolVersion(0x0601),
        ProtocolVersion(0),
    ] {
        let d = g.call(
            &mut ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::query_version(bad),
            pre,
        );
        assert_eq!(d.pkt.status, VstorStatus::REVISION_MISMATCH, "{bad:?}");
    }
    for v in SUPPORTED_VERSIONS {
        let d = g.call(
            &mut ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::query_version(v),
            pre,
        );
        assert_eq!(d.pkt.status, VstorStatus::SUCCESS, "{v:?}");
    }
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::request(Operation::BEGIN_INITIALIZATION),
        pre,
    );
    assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::query_version(V),
        pre,
    );
    assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    assert_eq!(g.ctrl.version(), Some(V));
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::request(Operation::QUERY_PROPERTIES),
        Some(V),
    );
    let pr: ChannelProperties = d.pkt.properties();
    assert_eq!(pr.max_transfer_bytes, MAX_TRANSFER_BYTES);
    assert!(pr.multi_channel());
    assert_eq!(pr.max_channel_count, 4);
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::request(Operation::END_INITIALIZATION),
        Some(V),
    );
    assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    // Unknown operations and short packets.
    let d = g.call(&mut ch, 9, &VstorPacket::request(Operation(99)), Some(V));
    assert_eq!(d.pkt.status, VstorStatus::INVALID_PARAMETER);
    let parts = [&[3u8, 0, 0, 0][..]];
    assert!(ch
        .tx
        .try_write(&OutgoingPacket::inband(10, true, &parts))
        .is_ok());
    g.signal(&ch);
    let (_, d) = g.next(&mut ch);
    assert_eq!((d.tid, d.pkt.status), (10, VstorStatus::INVALID_PARAMETER));
    // Too many sub-channels.
    let d = g.call(&mut ch, 11, &VstorPacket::create_sub_channels(5), Some(V));
    assert_eq!(d.pkt.status, VstorStatus::INVALID_PARAMETER);
    assert!(g.ctrl.stats().rejected >= 2);
}

#[test]
fn scan_commands() {
    let ctrl = controller();
    let a = image("scan-a", 1 << 20, |_| 0);
    let b = image("scan-b", 64 << 10, |_| 0);
    ctrl.add_disk(
        0,
        open_spec(&DiskSpec {
            path: a.clone(),
            readonly: false,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    ctrl.add_disk(
        3,
        open_spec(&DiskSpec {
            path: b.clone(),
            readonly: true,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    assert_eq!(ctrl.luns(), vec![0, 3]);
    let g = Guest::new(ctrl);
    let mut ch = g.ready();
    // Standard INQUIRY.
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x12, 0, 0, 0, 36, 0], 96);
    ok(&d);
    assert_eq!(v.len(), 36);
    assert_eq!((v[0], v[2], v[4]), (0, 6, 31));
    assert_eq!(&v[8..16], b"hvkit   ");
    // VPD pages.
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0x00, 0, 255, 0], 255);
    ok(&d);
    assert_eq!(&v[..], &[0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0x80, 0, 255, 0], 255);
    assert_eq!(v[1], 0x80);
    assert!(std::str::from_utf8(&v[4..]).unwrap().starts_with("hvkit-"));
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0x83, 0, 255, 0], 255);
    assert_eq!((v[1], v[4], v[5]), (0x83, 0x02, 0x01));
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0xB0, 0, 4, 0], 255);
    ok(&d);
    assert_eq!(v, vec![0, 0xB0, 0, 0x3C], "allocation length honoured");
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0xB0, 0, 64, 0], 255);
    assert_eq!(
        u32::from_be_bytes(v[8..12].try_into().unwrap()),
        MAX_TRANSFER_BYTES / 512
    );
    assert!(
        u32::from_be_bytes(v[20..24].try_into().unwrap()) > 0,
        "max unmap blocks"
    );
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0xB1, 0, 64, 0], 255);
    assert_eq!(u16::from_be_bytes([v[4], v[5]]), 1);
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x12, 1, 0xB2, 0, 8, 0], 255);
    assert_eq!(v[5] & 0x80, 0x80, "LBPU");
    let (_, v) = g.scsi_in(&mut ch, 3, &[0x12, 1, 0xB2, 0, 8, 0], 255);
    assert_eq!(v[5] & 0x80, 0, "no UNMAP on a read-only disk");
    let d = g.scsi_in(&mut ch, 0, &[0x12, 1, 0x89, 0, 8, 0], 255).0;
    assert_eq!(d.sense(), (5, 0x24, 0));
    // REPORT LUNS.
    let (d, v) = g.scsi_in(&mut ch, 0, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0], 4096);
    ok(&d);
    assert_eq!(&v[..4], &16u32.to_be_bytes());
    assert_eq!((v[9], v[17]), (0, 3));
    // Capacity.
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(u32::from_be_bytes(v[..4].try_into().unwrap()), 2047);
    assert_eq!(u32::from_be_bytes(v[4..8].try_into().unwrap()), 512);
    let (_, v) = g.scsi_in(
        &mut ch,
        3,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
    );
    assert_eq!(u64::from_be_bytes(v[..8].try_into().unwrap()), 127);
    assert_eq!(v[14] & 0x80, 0, "read-only: no LBPME");
    let (_, v) = g.scsi_in(
        &mut ch,
        0,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        32,
    );
    assert_eq!(v[14] & 0xC0, 0xC0);
    // MODE SENSE: write protect, caching page.
    let (d, v) = g.scsi_in(&mut ch, 3, &[0x1A, 0, 0x3F, 0, 4, 0], 255);
    ok(&d);
    assert_eq!(v.len(), 4);
    assert_eq!(v[2] & 0x80, 0x80);
    let (_, v) = g.scsi_in(&mut ch, 0, &[0x1A, 0, 0x08, 0, 255, 0], 255);
    assert_eq!(
        (v[0], v[2], v[4], v[5], v[6] & 0x04),
        (23, 0, 0x08, 18, 0x04)
    );
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x5A, 0, 0x0A, 0x05, 0, 0, 0, 2, 0, 0], 512);
    ok(&d);
    assert_eq!(v, vec![0, 6, 0, 0, 0, 0, 0, 0], "unknown page: header only");
    // TEST UNIT READY, START STOP UNIT, REQUEST SENSE.
    ok(&g.scsi(&mut ch, 0, &[0; 6], None));
    ok(&g.scsi(&mut ch, 0, &[0x1B, 0, 0, 0, 1, 0], None));
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x03, 0, 0, 0, 18, 0], 18);
    ok(&d);
    assert_eq!((v[0], v[2]), (0x70, 0));
    // Unsupported opcode: ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    let d = g.scsi(&mut ch, 0, &[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], None);
    assert_eq!(d.srb().srb_status, SrbStatus::ERROR.with_autosense());
    assert_eq!(d.srb().scsi_status, 2);
    assert_eq!(d.srb().sense_info_length, 18);
    assert_eq!(d.sense(), (5, 0x20, 0));
    // Missing LUN: INQUIRY says PQ 3, other commands INVALID_LUN.
    let (d, v) = g.scsi_in(&mut ch, 1, &[0x12, 0, 0, 0, 36, 0], 36);
    ok(&d);
    assert_eq!(v[0], 0x7F);
    let d = g.scsi(&mut ch, 1, &[0; 6], None);
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_LUN);
    // Another target.
    let p = srb_packet(1, 0, &[0; 6], None);
    let d = g.call(&mut ch, 77, &p, Some(V));
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_LUN);
    // Bad CDB length.
    let mut p = srb_packet(0, 0, &[0; 6], None);
    let mut s = p.srb();
    s.cdb_length = 17;
    p.set_body(&s);
    let d = g.call(&mut ch, 78, &p, Some(V));
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_REQUEST);
    std::fs::remove_file(a).ok();
    std::fs::remove_file(b).ok();
}

#[test]
fn read_write_bounds_and_protection() {
    let ctrl = controller();
    let a = image("rw", 1 << 20, |i| (i / 512) as u8);
    let ro = image("rw-ro", 64 << 10, |_| 0x5A);
    ctrl.add_disk(
        0,
        open_spec(&DiskSpec {
            path: a.clone(),
            readonly: false,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    ctrl.add_disk(
        1,
        open_spec(&DiskSpec {
            path: ro.clone(),
            readonly: true,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    let g = Guest::new(ctrl);
    let mut ch = g.ready();
    // WRITE(10) of 24 blocks from scattered pages at an odd page offset.
    let data: Vec<u8> = (0..24 * 512).map(|i| (i * 13 % 251) as u8).collect();
    let e = g.ext(40, 0x200, data.len() as u32);
    g.write_guest(&e, &data);
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 100, 24),
        Some((&e, DataDirection::WRITE)),
    );
    ok(&d);
    assert_eq!(d.srb().data_transfer_length, data.len() as u32);
    // READ(16) back, and READ(6) of one block.
    let mut c16 = [0u8; 16];
    c16[0] = 0x88;
    c16[2..10].copy_from_slice(&100u64.to_be_bytes());
    c16[10..14].copy_from_slice(&24u32.to_be_bytes());
    let (d, v) = g.scsi_in(&mut ch, 0, &c16, data.len() as u32);
    ok(&d);
    assert!(v == data);
    let (d, v) = g.scsi_in(&mut ch, 0, &[0x08, 0, 0, 99, 1, 0], 512);
    ok(&d);
    assert!(v.iter().all(|&x| x == 99));
    // WRITE(6) and WRITE(16) land where the CDB says.
    let e1 = g.ext(80, 0, 512);
    g.write_guest(&e1, &[0xA1; 512]);
    ok(&g.scsi(
        &mut ch,
        0,
        &[0x0A, 0, 0, 7, 1, 0],
        Some((&e1, DataDirection::WRITE)),
    ));
    c16[0] = 0x8A;
    c16[2..10].copy_from_slice(&2047u64.to_be_bytes());
    c16[10..14].copy_from_slice(&1u32.to_be_bytes());
    ok(&g.scsi(&mut ch, 0, &c16, Some((&e1, DataDirection::WRITE))));
    let raw = std::fs::read(&a).unwrap();
    assert!(raw[7 * 512..8 * 512].iter().all(|&x| x == 0xA1));
    assert!(raw[2047 * 512..].iter().all(|&x| x == 0xA1));
    assert!(raw[100 * 512..124 * 512] == data[..]);
    // Out of range: last block + 1, and LBA overflow.
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 2047, 2),
        Some((&e, DataDirection::READ)),
    );
    assert_eq!(d.sense(), (5, 0x21, 0));
    c16[0] = 0x88;
    c16[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    let d = g.scsi(&mut ch, 0, &c16, Some((&e1, DataDirection::READ)));
    assert_eq!(d.sense(), (5, 0x21, 0));
    // Buffer smaller than the CDB asks.
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 0, 2),
        Some((&e1, DataDirection::READ)),
    );
    assert_eq!(d.sense(), (5, 0x24, 0));
    // Read-only disk: reads fine, writes DATA PROTECT, image untouched.
    let (d, v) = g.scsi_in(&mut ch, 1, &rw10(0x28, 0, 1), 512);
    ok(&d);
    assert!(v.iter().all(|&x| x == 0x5A));
    let d = g.scsi(
        &mut ch,
        1,
        &rw10(0x2A, 0, 1),
        Some((&e1, DataDirection::WRITE)),
    );
    assert_eq!(d.sense(), (7, 0x27, 0));
    assert!(std::fs::read(&ro).unwrap().iter().all(|&x| x == 0x5A));
    // A page list outside guest RAM: refused before any I/O.
    let mut bad = vec![0u8; 24];
    encode_gpa_direct_single(&mut bad, 0, 512, &[0x10_0000]).unwrap();
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 0, 1),
        Some((&bad, DataDirection::WRITE)),
    );
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_REQUEST);
    // Over max_transfer_bytes.
    let big = g.ext(200, 0, MAX_TRANSFER_BYTES + 512);
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 0, 1),
        Some((&big, DataDirection::READ)),
    );
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_REQUEST);
    let st = g.ctrl.stats();
    assert!(st.bytes_written >= data.len() as u64 + 1024, "{st:?}");
    assert!(st.bytes_read >= data.len() as u64, "{st:?}");
    std::fs::remove_file(a).ok();
    std::fs::remove_file(ro).ok();
}

#[test]
fn write_sync_is_on_disk_and_unmap_punches_holes() {
    let ctrl = controller();
    let a = image("sync", 1 << 20, |_| 0x77);
    ctrl.add_disk(
        0,
        open_spec(&DiskSpec {
            path: a.clone(),
            readonly: false,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    let g = Guest::new(ctrl);
    let mut ch = g.ready();
    let data: Vec<u8> = (0..8192).map(|i| (i % 199) as u8).collect();
    let e = g.ext(0, 0, 8192);
    g.write_guest(&e, &data);
    ok(&g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 64, 16),
        Some((&e, DataDirection::WRITE)),
    ));
    ok(&g.scsi(&mut ch, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None));
    assert_eq!(g.ctrl.stats().flushes, 1);
    // Another handle sees the data.
    let raw = std::fs::read(&a).unwrap();
    assert!(raw[64 * 512..80 * 512] == data[..]);
    // UNMAP blocks 64..72 and 200..208: zeros, size kept.
    let mut list = vec![0u8; 8 + 32];
    list[0..2].copy_from_slice(&38u16.to_be_bytes());
    list[2..4].copy_from_slice(&32u16.to_be_bytes());
    list[8..16].copy_from_slice(&64u64.to_be_bytes());
    list[16..20].copy_from_slice(&8u32.to_be_bytes());
    list[24..32].copy_from_slice(&200u64.to_be_bytes());
    list[32..36].copy_from_slice(&8u32.to_be_bytes());
    let e = g.ext(10, 0, list.len() as u32);
    g.write_guest(&e, &list);
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
    ok(&g.scsi(&mut ch, 0, &cdb, Some((&e, DataDirection::WRITE))));
    let raw = std::fs::read(&a).unwrap();
    assert_eq!(raw.len(), 1 << 20);
    assert!(raw[64 * 512..72 * 512].iter().all(|&x| x == 0));
    assert!(raw[72 * 512..80 * 512] == data[4096..]);
    assert!(raw[200 * 512..208 * 512].iter().all(|&x| x == 0));
    assert_eq!(raw[208 * 512], 0x77);
    // A descriptor out of range fails the whole UNMAP before anything is punched.
    list[24..32].copy_from_slice(&2045u64.to_be_bytes());
    list[8..16].copy_from_slice(&300u64.to_be_bytes());
    g.write_guest(&e, &list);
    let d = g.scsi(&mut ch, 0, &cdb, Some((&e, DataDirection::WRITE)));
    assert_eq!(d.sense(), (5, 0x21, 0));
    assert_eq!(std::fs::read(&a).unwrap()[300 * 512], 0x77);
    std::fs::remove_file(a).ok();
}

/// The child half of `sigkill_after_flush_keeps_data`: writes and flushes
/// through storvsp, says so on stdout, then waits to be killed.
#[test]
fn sigkill_child() {
    let Ok(path) = std::env::var("HVKIT_STORVSP_SIGKILL_IMAGE") else {
        return;
    };
    let ctrl = controller();
    ctrl.add_disk(
        0,
        open_spec(&DiskSpec {
            path: path.into(),
            readonly: false,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    let g = Guest::new(ctrl);
    let mut ch = g.ready();
    let e = g.ext(0, 0, 4096);
    g.write_guest(&e, &[0xD7; 4096]);
    ok(&g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 8, 8),
        Some((&e, DataDirection::WRITE)),
    ));
    ok(&g.scsi(&mut ch, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None));
    println!("HVKIT-FLUSHED");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("not killed");
}

#[test]
fn sigkill_after_flush_keeps_data() {
    use std::io::{BufRead, BufReader};
    let a = image("kill", 64 << 10, |_| 0);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage::tests::sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HVKIT_STORVSP_SIGKILL_IMAGE", &a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut seen = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("HVKIT-FLUSHED") {
            seen = true;
            break;
        }
    }
    // SAFETY: plain kill(2) of our own child by pid.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(r, 0);
    let status = child.wait().unwrap();
    assert!(seen, "child never flushed");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let raw = std::fs::read(&a).unwrap();
    assert!(raw[8 * 512..16 * 512].iter().all(|&x| x == 0xD7));
    assert!(raw[..8 * 512].iter().all(|&x| x == 0));
    std::fs::remove_file(a).ok();
}

#[test]
fn host_io_errors_reach_the_guest_as_medium_error() {
    let ctrl = controller();
    let faulty = Arc::new(FaultyBackend::new(Box::new(MemBackend::new(
        1 << 20,
        false,
    ))));
    ctrl.add_disk(0, Arc::clone(&faulty) as Arc<dyn DiskBackend>)
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let mut ch = g.ready();
    faulty.set_plan(FaultPlan {
        reads: std::iter::once(10 * 512..11 * 512).collect(),
        writes: std::iter::once(20 * 512..21 * 512).collect(),
        flush: true,
        discard: true,
    });
    let e = g.ext(0, 0, 4096);
    ok(&g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 0, 8),
        Some((&e, DataDirection::READ)),
    ));
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 8, 8),
        Some((&e, DataDirection::READ)),
    );
    assert_eq!(d.srb().scsi_status, 2);
    assert!(d.srb().srb_status.autosense_valid());
    assert_eq!(d.srb().data_transfer_length, 0);
    assert_eq!(d.sense(), (3, 0x11, 0));
    let d = g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 16, 8),
        Some((&e, DataDirection::WRITE)),
    );
    assert_eq!(d.sense(), (3, 0x0C, 0));
    let d = g.scsi(&mut ch, 0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], None);
    assert_eq!(d.sense(), (3, 0x0C, 0));
    faulty.set_plan(FaultPlan::default());
    ok(&g.scsi(
        &mut ch,
        0,
        &rw10(0x2A, 16, 8),
        Some((&e, DataDirection::WRITE)),
    ));
    assert_eq!(faulty.injected(), 3);
    assert_eq!(ctrl.stats().medium_errors, 3);
}

/// A backend whose reads wait for a gate, to hold requests in flight.
struct Gated {
    inner: MemBackend,
    open: Mutex<bool>,
    cv: Condvar,
}

impl DiskBackend for Gated {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn readonly(&self) -> bool {
        false
    }
    fn read_at(&self, o: u64, b: &backend::IoBufs<'_>) -> std::io::Result<()> {
        let mut g = self.open.lock().unwrap();
        while !*g {
            g = self.cv.wait(g).unwrap();
        }
        drop(g);
        self.inner.read_at(o, b)
    }
    fn write_at(&self, o: u64, b: &backend::IoBufs<'_>) -> std::io::Result<()> {
        self.inner.write_at(o, b)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, o: u64, l: u64) -> std::io::Result<()> {
        self.inner.discard(o, l)
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

#[test]
fn sixty_four_requests_in_flight() {
    let ctrl = controller();
    let gated = Arc::new(Gated {
        inner: MemBackend::new(1 << 20, false),
        open: Mutex::new(false),
        cv: Condvar::new(),
    });
    ctrl.add_disk(0, Arc::clone(&gated) as Arc<dyn DiskBackend>)
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let mut ch = g.ready();
    let n = 64u64;
    for i in 0..n {
        let e = g.ext(2 * i, 0, 512);
        let p = srb_packet(
            0,
            0,
            &rw10(0x28, i as u32, 1),
            Some((DataDirection::READ, 512)),
        );
        g.send(&mut ch, 1000 + i, &p, Some(V), Some(&e));
    }
    // All accepted while none can complete: the VMBus worker did not block.
    let end = Instant::now() + WAIT;
    while ctrl.in_flight() < n as usize {
        assert!(Instant::now() < end, "only {} in flight", ctrl.in_flight());
        std::thread::sleep(Duration::from_millis(1));
    }
    *gated.open.lock().unwrap() = true;
    gated.cv.notify_all();
    let mut tids: Vec<u64> = (0..n).map(|_| g.next(&mut ch).1.tid).collect();
    tids.sort_unstable();
    assert_eq!(tids, (1000..1000 + n).collect::<Vec<_>>());
    assert!(ctrl.stats().max_in_flight >= 64);
    assert_eq!(ctrl.in_flight(), 0);
}

#[test]
fn full_ring_defers_completions_without_loss() {
    let ctrl = controller();
    ctrl.add_disk(0, Arc::new(MemBackend::new(1 << 20, false)))
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let offers = g.offers();
    // One data page host->guest: about 46 completions fit.
    let mut ch = g.open(&offers[0], 16, 2);
    g.init(&mut ch);
    let n = 150u64;
    for i in 0..n {
        let p = srb_packet(0, 0, &[0; 6], None);
        g.send(&mut ch, 10 + i, &p, Some(V), None);
    }
    std::thread::sleep(Duration::from_millis(50));
    let mut tids: Vec<u64> = (0..n).map(|_| g.next(&mut ch).1.tid).collect();
    tids.sort_unstable();
    assert_eq!(tids, (10..10 + n).collect::<Vec<_>>());
    let st = ctrl.stats();
    assert!(st.deferred_sends > 0 || st.backpressure > 0, "{st:?}");
    assert_eq!(st.srb_completions, n);
}

#[test]
fn hot_add_and_remove_send_enumerate_bus() {
    let ctrl = controller();
    ctrl.add_disk(0, Arc::new(MemBackend::new(64 << 10, false)))
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let mut ch = g.ready();
    let d = g.scsi(&mut ch, 5, &[0; 6], None);
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_LUN);
    ctrl.add_disk(5, Arc::new(MemBackend::new(64 << 10, false)))
        .unwrap();
    assert!(matches!(
        ctrl.add_disk(5, Arc::new(MemBackend::new(4096, false))),
        Err(StorageError::LunInUse(5))
    ));
    let (t, d) = g.next(&mut ch);
    assert_eq!(
        (t, d.tid, d.pkt.operation),
        (PacketType::DATA_INBAND, 0, Operation::ENUMERATE_BUS)
    );
    ok(&g.scsi(&mut ch, 5, &[0; 6], None));
    let (_, v) = g.scsi_in(&mut ch, 0, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0], 4096);
    assert_eq!(&v[..4], &16u32.to_be_bytes());
    ctrl.remove_disk(0).unwrap();
    assert!(matches!(
        ctrl.remove_disk(0),
        Err(StorageError::NoSuchLun(0))
    ));
    let (t, d) = g.next(&mut ch);
    assert_eq!(
        (t, d.pkt.operation),
        (PacketType::DATA_INBAND, Operation::ENUMERATE_BUS)
    );
    let d = g.scsi(&mut ch, 0, &[0; 6], None);
    assert_eq!(d.srb().srb_status, SrbStatus::INVALID_LUN);
    // LUN 0 gone, 5 present: REPORT LUNS on LUN 0 still lists it.
    let (d, v) = g.scsi_in(&mut ch, 0, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0], 4096);
    ok(&d);
    assert_eq!((v[3], v[9]), (8, 5));
    assert_eq!(ctrl.stats().enumerate_bus_sent, 2);
}

#[test]
fn subchannels_carry_io() {
    let ctrl = controller();
    let mem = Arc::new(MemBackend::new(64 << 10, false));
    ctrl.add_disk(0, Arc::clone(&mem) as Arc<dyn DiskBackend>)
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let mut ch = g.ready();
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::create_sub_channels(2),
        Some(V),
    );
    assert_eq!(d.pkt.status, VstorStatus::SUCCESS);
    let mut subs = Vec::new();
    for i in 1..=2u16 {
        let ChannelMessage::OfferChannel(o) = g.recv().parse().unwrap() else {
            panic!("no sub-channel offer");
        };
        assert_eq!(o.if_type, SCSI_CLASS_ID);
        assert_eq!(o.if_instance, ctrl.instance_id());
        assert_eq!(o.sub_channel_index, i);
        subs.push(o);
    }
    let mut sub = g.open(&subs[1], 4, 4);
    let e = g.ext(0, 0, 512);
    g.write_guest(&e, &[0x3C; 512]);
    ok(&g.scsi(
        &mut sub,
        0,
        &rw10(0x2A, 3, 1),
        Some((&e, DataDirection::WRITE)),
    ));
    assert!(mem.contents()[3 * 512..4 * 512].iter().all(|&x| x == 0x3C));
    // The primary still works.
    ok(&g.scsi(&mut ch, 0, &[0; 6], None));
    assert_eq!(ctrl.stats().subchannels, 2);
}

#[test]
fn trace_has_decoded_vstor_lines() {
    let (w, buf) = TraceWriter::in_memory();
    let ctrl = StorageController::new(ControllerConfig {
        io_threads: 2,
        trace: Some(Arc::new(w)),
        ..ControllerConfig::default()
    })
    .unwrap();
    ctrl.add_disk(0, Arc::new(MemBackend::new(64 << 10, false)))
        .unwrap();
    let g = Guest::new(ctrl);
    let mut ch = g.ready();
    let e = g.ext(0, 0, 1024);
    ok(&g.scsi(
        &mut ch,
        0,
        &rw10(0x28, 4, 2),
        Some((&e, DataDirection::READ)),
    ));
    let lines = buf.lines();
    let v = lines
        .iter()
        .find(|l| l["kind"] == "vstor" && l["type"] == "EXECUTE_SRB")
        .expect("no EXECUTE_SRB line");
    assert_eq!(v["scsi_op"], "READ_10");
    assert_eq!(v["lba"], 4);
    assert_eq!(v["blocks"], 2);
    assert_eq!(v["dir"], "g2h");
    assert!(lines.iter().any(|l| l["kind"] == "vstor"
        && l["type"] == "QUERY_PROTOCOL_VERSION"
        && l["version"] == "6.2"));
    assert!(lines
        .iter()
        .any(|l| l["kind"] == "vstor" && l["dir"] == "h2g" && l["type"] == "COMPLETE_IO"));
}

mod hostile {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        /// Random VSTOR payloads and CDBs, in-band and GPA-direct with random
        /// ranges: never a panic, and the channel still answers afterwards.
        #[test]
        fn hostile_packets_never_break_the_controller(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..12),
            cdbs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..17), 1..12),
            ext in proptest::collection::vec(any::<u8>(), 8..64),
        ) {
            let ctrl = controller();
            ctrl.add_disk(0, Arc::new(MemBackend::new(64 << 10, false))).unwrap();
            let g = Guest::new(Arc::clone(&ctrl));
            let mut ch = g.ready();
            let mut sent = 0u64;
            for (i, p) in payloads.iter().enumerate() {
                let parts = [&p[..]];
                let mut pkt = OutgoingPacket::inband(500 + i as u64, true, &parts);
                let mut e = ext.clone();
                e.truncate(e.len() / 8 * 8);
                if i % 2 == 1 {
                    pkt.packet_type = PacketType::DATA_USING_GPA_DIRECT;
                    pkt.extension = &e;
                }
                if ch.tx.try_write(&pkt).unwrap().needed() {
                    g.signal(&ch);
                }
                sent += 1;
            }
            for cdb in &cdbs {
                let mut srb = VmSrb { length: 52, data_in: DataDirection::READ, data_transfer_length: 4096, ..VmSrb::default() };
                srb.set_cdb(cdb);
                let e = g.ext(0, 0, 4096);
                g.send(&mut ch, 900, &VstorPacket::execute_srb(&srb), Some(V), Some(&e));
                sent += 1;
            }
            // Every request got exactly one answer.
            let mut got = 0u64;
            let end = Instant::now() + WAIT;
            while got < sent {
                prop_assert!(Instant::now() < end);
                if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                    prop_assert_eq!(v.packet_type(), PacketType::COMPLETION);
                    got += 1;
                    if ch.rx.commit().unwrap().needed() {
                        g.signal(&ch);
                    }
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            ok(&g.scsi(&mut ch, 0, &[0; 6], None));
        }
    }
}

/// vsc-storage's own guest driver (the storvsc client over vmbus-guest's
/// VMBus driver, hypercalls and SynIC in-process) against this storvsp:
/// init, probe, read/write/flush/discard, REPORT LUNS, hot-add seen as
/// ENUMERATE_BUS.
#[test]
fn vsc_storage_client_against_storvsp() {
    use hypercall::hv::{SintConfig, SynIc};
    use hypercall::msr::GuestOsId;
    use vmbus_guest::channel::Channel;
    use vmbus_guest::client::ClientConfig as BusConfig;
    use vmbus_guest::driver::VmBus;
    use vmbus_guest::ring::PageRefRing;
    use vsc_storage::client::{ClientConfig, Lun};
    use vsc_storage::device::{DmaBuf, StorvscDevice};
    const POLLS: u64 = 2_000_000;

    let img = image("client", 1 << 20, |i| (i / 4096) as u8);
    let ctrl = controller();
    ctrl.add_disk(
        0,
        open_spec(&DiskSpec {
            path: img.clone(),
            readonly: false,
            lun: None,
        })
        .unwrap(),
    )
    .unwrap();
    let p = InProcess::new(1, RAM).unwrap();
    let server = VmbusServer::new(Arc::clone(p.hv()), VmbusOptions::default()).unwrap();
    server.add_device(ctrl.vsp()).unwrap();
    let vp0 = p.vp(0);
    let hc = hypercall::hv::Hypervisor::init(
        &vp0,
        GuestOsId::linux(6, 12, 117),
        p.page(0x1000).unwrap(),
    )
    .unwrap();
    let synic = SynIc::enable(
        &vp0,
        p.page(SIMP).unwrap(),
        p.page(SIEFP).unwrap(),
        &[(VMBUS_SINT, SintConfig::interrupt(VECTOR))],
    )
    .unwrap();
    let config = BusConfig {
        monitor_page1: 0x7000,
        monitor_page2: 0x8000,
        ..BusConfig::default()
    };
    let mut bus: VmBus<'_, _> = VmBus::new(&hc, &synic, p.page(INPUT).unwrap(), config);
    bus.connect(POLLS).unwrap();
    bus.wait_offers(POLLS).unwrap();
    let relid = bus.client().find_channel(&SCSI_CLASS_ID).unwrap().relid();
    let ring_pages: Vec<_> = (0..16u64)
        .map(|i| p.page(0x10_0000 + i * 0x1000).unwrap())
        .collect();
    let (ch, _gpadl) = bus
        .open_channel(relid, &ring_pages, 8, 0, [0; 120], POLLS)
        .unwrap();
    let conn = ch.connection_id();
    drop(ch);
    // The device wants a one-slot channel; the rings keep their indices.
    let ch1: Channel<_, 1> = Channel::new(
        PageRefRing::new(&ring_pages[..8]).unwrap(),
        PageRefRing::new(&ring_pages[8..]).unwrap(),
        conn,
    )
    .unwrap();
    let mut dev: StorvscDevice<_, _> = StorvscDevice::new(ch1, &bus, ClientConfig::default());
    let info = dev.init(POLLS).unwrap();
    assert_eq!(info.version, ProtocolVersion::WIN10);
    assert_eq!(info.properties.max_transfer_bytes, MAX_TRANSFER_BYTES);
    let data_pages: Vec<_> = (0..20u64)
        .map(|i| p.page(DATA + i * 0x1000).unwrap())
        .collect();
    let scratch = DmaBuf::new(&data_pages[16..17], 0, 4096).unwrap();
    let disk = dev.probe_disk(Lun::new(0), &scratch, POLLS).unwrap();
    assert_eq!(disk.blocks, 2048);
    assert_eq!(disk.block_size, 512);
    assert!(disk.write_cache && disk.discard && !disk.read_only);
    // Write 24 blocks at a page offset, flush, read back through the client.
    let wbuf = DmaBuf::new(&data_pages[..4], 0x300, 24 * 512).unwrap();
    let pattern: Vec<u8> = (0..24 * 512).map(|i| (i * 31 % 253) as u8).collect();
    assert!(wbuf.write(0, &pattern));
    dev.write(&disk, 40, 24, &wbuf, POLLS).unwrap();
    dev.flush_cache(&disk, POLLS).unwrap();
    let raw = std::fs::read(&img).unwrap();
    assert!(raw[40 * 512..64 * 512] == pattern[..]);
    let rbuf = DmaBuf::new(&data_pages[4..8], 0x10, 24 * 512).unwrap();
    dev.read(&disk, 40, 24, &rbuf, POLLS).unwrap();
    let mut back = vec![0u8; 24 * 512];
    assert!(rbuf.read(0, &mut back));
    assert!(back == pattern);
    // Discard, then the blocks read as zeros.
    dev.discard(&disk, 40, 8, &scratch, POLLS).unwrap();
    dev.read(&disk, 40, 24, &rbuf, POLLS).unwrap();
    assert!(rbuf.read(0, &mut back));
    assert!(back[..8 * 512].iter().all(|&x| x == 0));
    assert!(back[8 * 512..] == pattern[8 * 512..]);
    // Out of range is refused by the client before it reaches the host;
    // the host's own check is covered by read_write_bounds_and_protection.
    assert!(dev.read(&disk, 2047, 2, &rbuf, POLLS).is_err());
    // Hot-add: the client sees ENUMERATE_BUS and REPORT LUNS lists both.
    ctrl.add_disk(2, Arc::new(MemBackend::new(64 << 10, false)))
        .unwrap();
    let end = Instant::now() + WAIT;
    while !dev.take_bus_changed() {
        assert!(Instant::now() < end, "no ENUMERATE_BUS");
        dev.poll(|_| {}).unwrap();
    }
    let mut luns = [0u16; 8];
    let n = dev
        .report_luns(Lun::new(0), &scratch, &mut luns, POLLS)
        .unwrap();
    assert_eq!(&luns[..n], &[0, 2]);
    let d2 = dev.probe_disk(Lun::new(2), &scratch, POLLS).unwrap();
    assert_eq!(d2.blocks, 128);
    std::fs::remove_file(img).ok();
}

/// Linux 6.x sends 64-byte packets before any version is negotiated and
/// drops completions shorter than 64 bytes ("Invalid pkt ... minlen=64"):
/// init-phase replies take the request's size; a 48-byte request still gets 48.
#[test]
fn pre_negotiation_replies_match_the_request_size() {
    let ctrl = controller();
    let g = Guest::new(Arc::clone(&ctrl));
    let offers = g.offers();
    let mut ch = g.open(&offers[0], 8, 8);
    let reply_len = |ch: &mut Ch| {
        let end = Instant::now() + WAIT;
        loop {
            if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
                let n = v.payload().len();
                if ch.rx.commit().unwrap().needed() {
                    g.signal(ch);
                }
                return n;
            }
            assert!(Instant::now() < end, "no completion");
            std::thread::sleep(Duration::from_micros(50));
        }
    };
    let begin = VstorPacket::request(Operation::BEGIN_INITIALIZATION);
    g.send(&mut ch, INIT_TRANSACTION_ID, &begin, Some(V), None);
    assert_eq!(
        reply_len(&mut ch),
        64,
        "Linux-style 64-byte BEGIN_INITIALIZATION"
    );
    g.send(
        &mut ch,
        INIT_TRANSACTION_ID,
        &begin,
        Some(ProtocolVersion::WIN7),
        None,
    );
    assert_eq!(
        reply_len(&mut ch),
        48,
        "Win7-style 48-byte BEGIN_INITIALIZATION"
    );
    g.send(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::query_version(V),
        Some(V),
        None,
    );
    assert_eq!(reply_len(&mut ch), 64);
}

/// A Win7-era guest (protocol 4.2): 48-byte packets both ways, 18-byte
/// sense, no multi-channel.
#[test]
fn win7_protocol_uses_short_packets() {
    let ctrl = controller();
    ctrl.add_disk(0, Arc::new(MemBackend::new(64 << 10, false)))
        .unwrap();
    let g = Guest::new(Arc::clone(&ctrl));
    let offers = g.offers();
    let mut ch = g.open(&offers[0], 8, 8);
    let w7 = Some(ProtocolVersion::WIN7);
    for p in [
        VstorPacket::request(Operation::BEGIN_INITIALIZATION),
        VstorPacket::query_version(ProtocolVersion::WIN7),
    ] {
        assert_eq!(
            g.call(&mut ch, INIT_TRANSACTION_ID, &p, w7).pkt.status,
            VstorStatus::SUCCESS
        );
    }
    let d = g.call(
        &mut ch,
        INIT_TRANSACTION_ID,
        &VstorPacket::request(Operation::QUERY_PROPERTIES),
        w7,
    );
    assert!(!d.pkt.properties().multi_channel());
    assert_eq!(
        g.call(
            &mut ch,
            INIT_TRANSACTION_ID,
            &VstorPacket::request(Operation::END_INITIALIZATION),
            w7
        )
        .pkt
        .status,
        VstorStatus::SUCCESS
    );
    let d = g.call(&mut ch, 3, &VstorPacket::create_sub_channels(1), w7);
    assert_eq!(d.pkt.status, VstorStatus::INVALID_PARAMETER);
    // An unsupported opcode in a 48-byte packet (SRB length 36).
    let mut srb = VmSrb {
        length: ProtocolVersion::WIN7.srb_size() as u16,
        sense_info_length: 18,
        data_in: DataDirection::NONE,
        ..VmSrb::default()
    };
    srb.set_cdb(&[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    g.send(&mut ch, 44, &VstorPacket::execute_srb(&srb), w7, None);
    let end = Instant::now() + WAIT;
    let (len, pkt) = loop {
        if let Some(v) = ch.rx.try_read_packet(&mut ch.buf).unwrap() {
            assert_eq!(v.transaction_id(), 44);
            let r = (
                v.payload().len(),
                VstorPacket::parse(v.payload(), w7).unwrap(),
            );
            if ch.rx.commit().unwrap().needed() {
                g.signal(&ch);
            }
            break r;
        }
        assert!(Instant::now() < end, "no completion");
        std::thread::sleep(Duration::from_micros(50));
    };
    assert_eq!(len, 48);
    let s = pkt.srb();
    assert_eq!(s.scsi_status, 2);
    assert_eq!(s.sense_info_length, 18);
    assert_eq!((s.cdb_or_sense[2] & 0xF, s.cdb_or_sense[12]), (5, 0x20));
    // A 48-byte EXECUTE_SRB is fine at 4.2; TEST UNIT READY succeeds.
    srb.set_cdb(&[0; 6]);
    g.send(&mut ch, 45, &VstorPacket::execute_srb(&srb), w7, None);
    let (_, d) = g.next(&mut ch);
    assert_eq!(d.srb().srb_status, SrbStatus::SUCCESS);
    assert_eq!(ctrl.version(), Some(ProtocolVersion::WIN7));
}
