//! The channel glue against a host that writes and reads the rings directly.
use super::*;
use crate::driver::{serve_all, serve_one, Served, RECV_BUFFER_SIZE};
use crate::heartbeat::Heartbeat;
use crate::IcError;
use core::cell::RefCell;
use vmbus_guest::channel::Channel;
use vmbus_guest::packet::{PacketType, PacketView};
use vmbus_guest::ring::{init_control, OutgoingPacket, RingMemory, RingReceiver, RingSender};

/// Ring memory in a Vec (single-threaded tests).
struct Mem(RefCell<Vec<u8>>);

impl Mem {
    fn new(pages: usize) -> Self {
        Self(RefCell::new(vec![0; pages * 4096]))
    }
}

impl RingMemory for Mem {
    fn len(&self) -> usize {
        self.0.borrow().len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.0.borrow()[offset..offset + buf.len()]);
    }
    fn write(&self, offset: usize, data: &[u8]) {
        self.0.borrow_mut()[offset..offset + data.len()].copy_from_slice(data);
    }
    fn load_u32(&self, offset: usize) -> u32 {
        let b = self.0.borrow();
        u32::from_le_bytes(b[offset..offset + 4].try_into().unwrap())
    }
    fn store_u32(&self, offset: usize, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
}

#[test]
fn serves_negotiation_and_heartbeats_over_rings() {
    let (out, inb) = (Mem::new(5), Mem::new(5));
    init_control(&out).unwrap();
    init_control(&inb).unwrap();
    let mut chan: Channel<&Mem> = Channel::new(&out, &inb, 7).unwrap();
    let mut host_tx = RingSender::new(&inb).unwrap();
    let mut host_rx = RingReceiver::new(&out).unwrap();
    let mut ep = Endpoint::new(Heartbeat::new());
    let mut rbuf = vec![0u8; RECV_BUFFER_SIZE];

    // Empty ring: nothing to do.
    let (served, signal) = serve_one(&mut chan, &mut ep, &mut rbuf).unwrap();
    assert_eq!(served, None);
    assert!(!signal.needed());

    // The host sends a negotiation (with a completion request, which the answer ignores) and
    // two heartbeats, one of them with a length that is not a multiple of 8.
    let mut req = buf();
    let n = host::build_negotiate(&mut req, 1, &[V3], &[V3, IcVersion::V1_0]).unwrap();
    let _ = host_tx
        .try_write(&OutgoingPacket::inband(0xAA, true, &[&req[..n]]))
        .unwrap();
    let hdr = RequestHeader::new(
        Negotiated {
            framework: V3,
            message: V3,
        },
        2,
    );
    let n = host::build_heartbeat(&mut req, &hdr, 10).unwrap();
    let _ = host_tx
        .try_write(&OutgoingPacket::inband(0xBB, false, &[&req[..n]]))
        .unwrap();
    let n = host::build_request(
        &mut req,
        crate::IcMessageType::HEARTBEAT,
        &hdr,
        &20u64.to_le_bytes()[..8],
    )
    .unwrap();
    assert_eq!(n % 8, 4);
    let _ = host_tx
        .try_write(&OutgoingPacket::inband(0xCC, false, &[&req[..n]]))
        .unwrap();
    // A packet of another type and an in-band packet that is not an IC message.
    let _ = host_tx
        .try_write(&OutgoingPacket::completion(0xDD, &[b"12345678"]))
        .unwrap();
    let _ = host_tx
        .try_write(&OutgoingPacket::inband(0xEE, false, &[b"junk"]))
        .unwrap();
    // A well-formed heartbeat in a packet that is not DATA_INBAND.
    let parts: [&[u8]; 1] = [&req[..n]];
    let mut synch = OutgoingPacket::inband(0xFF, false, &parts);
    synch.packet_type = PacketType::SYNCH;
    let _ = host_tx.try_write(&synch).unwrap();

    let mut results = Vec::new();
    let signal = serve_all(&mut chan, &mut ep, &mut rbuf, |_, s| results.push(s)).unwrap();
    assert!(signal.needed(), "the first answer went into an empty ring");
    assert_eq!(results.len(), 6);
    assert!(results[..3]
        .iter()
        .all(|r| matches!(r, Served::Answered(h) if h.status.is_ok())));
    assert_eq!(results[3], Served::Dropped(IcError::NotInband));
    assert!(matches!(
        results[4],
        Served::Dropped(IcError::TooShort { .. })
    ));
    assert_eq!(results[5], Served::Dropped(IcError::NotInband));
    assert_eq!(serve_one(&mut chan, &mut ep, &mut rbuf).unwrap().0, None);
    assert_eq!(
        chan.receiver().available().unwrap(),
        0,
        "all reads published"
    );

    // The host reads three answers: DATA_INBAND, the request's transaction id, no completion
    // request, the request's length (padding included).
    let mut hbuf = vec![0u8; RECV_BUFFER_SIZE];
    let mut answers = Vec::new();
    while let Some(info) = host_rx.try_read(&mut hbuf).unwrap() {
        let p = PacketView::new(&hbuf[..info.len]).unwrap();
        assert_eq!(p.packet_type(), PacketType::DATA_INBAND);
        assert!(!p.descriptor().completion_requested());
        answers.push((p.transaction_id(), p.payload().to_vec()));
    }
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].0, 0xAA);
    let (status, chosen) = host::parse_negotiate_response(&answers[0].1).unwrap();
    assert_eq!((status, chosen.unwrap().message), (Status::OK, V3));
    assert_eq!(answers[1].0, 0xBB);
    assert_eq!(
        host::parse_heartbeat_response(&answers[1].1).unwrap(),
        (Status::OK, 11)
    );
    assert_eq!(answers[2].0, 0xCC);
    assert_eq!(answers[2].1.len() % 8, 0, "padded payload echoed");
    assert_eq!(
        host::parse_heartbeat_response(&answers[2].1).unwrap(),
        (Status::OK, 21)
    );
    assert_eq!(ep.service().count(), 2);
}
