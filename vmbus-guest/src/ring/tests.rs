extern crate std;
use super::*;
use hypercall::page::Page;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

struct Pages(Vec<Page>);

impl Pages {
    fn new(n: usize) -> Self {
        Self((0..n).map(|_| Page::new()).collect())
    }
    fn refs(&self) -> Vec<PageRef<'_>> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, p)| PageRef::new(p.words(), 0x10_0000 + i as u64 * 4096).unwrap())
            .collect()
    }
}

// fact sheet §6.1 / §6.3: header fields, framing, trailer, feature bit.
#[test]
fn framing() {
    let pages = Pages::new(3);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    assert_eq!(mem.load_u32(control::FEATURE_BITS), 1);
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    assert_eq!(tx.data_size(), 8192);
    assert!(tx.supports_pending_send_size());

    let sig = tx
        .try_write(&OutgoingPacket::inband(0x55, true, &[b"abc", b"de"]))
        .unwrap();
    assert!(
        sig.needed(),
        "empty -> non-empty with the mask clear signals"
    );
    // descriptor (16) + 5 payload bytes padded to 24, then the trailer.
    assert_eq!(mem.load_u32(control::WRITE_INDEX), 32);
    let mut raw = [0u8; 32];
    mem.read(CONTROL_SIZE, &mut raw);
    assert_eq!(&raw[..8], &[6, 0, 2, 0, 3, 0, 1, 0]);
    assert_eq!(&raw[8..16], &0x55u64.to_le_bytes());
    assert_eq!(&raw[16..21], b"abcde");
    assert_eq!(&raw[21..24], &[0; 3]);
    assert_eq!(&raw[24..32], &trailer(0).to_le_bytes());

    // A second packet before the reader moved: not empty before, no signal.
    let sig = tx.try_write(&OutgoingPacket::completion(9, &[])).unwrap();
    assert!(!sig.needed());

    let mut buf = [0u8; 64];
    let p = rx.try_read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(p.packet_type(), PacketType::DATA_INBAND);
    assert_eq!(p.transaction_id(), 0x55);
    assert!(p.descriptor().completion_requested());
    assert_eq!(&p.payload()[..5], b"abcde");
    let info = rx.try_read(&mut buf).unwrap().unwrap();
    assert_eq!(info.descriptor.packet_type, PacketType::COMPLETION);
    assert_eq!(info.len, 16);
    assert_eq!(rx.try_read(&mut buf).unwrap(), None);
    // Not published until commit.
    assert_eq!(mem.load_u32(control::READ_INDEX), 0);
    assert!(!rx.commit().unwrap().needed());
    assert_eq!(mem.load_u32(control::READ_INDEX), 56);
}

// fact sheet §6.5: the reader's interrupt mask suppresses the signal; end_read re-checks.
#[test]
fn interrupt_mask() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    rx.begin_read();
    assert_eq!(mem.load_u32(control::INTERRUPT_MASK), 1);
    assert!(!tx
        .try_write(&OutgoingPacket::inband(1, false, &[b"x"]))
        .unwrap()
        .needed());
    assert!(rx.end_read().unwrap(), "data arrived while masked");
    let mut buf = [0u8; 64];
    assert!(rx.try_read(&mut buf).unwrap().is_some());
    let _ = rx.commit().unwrap();
    assert!(!rx.end_read().unwrap());
    // Empty again, mask clear: the next write signals.
    assert!(tx
        .try_write(&OutgoingPacket::inband(2, false, &[b"y"]))
        .unwrap()
        .needed());
}

// fact sheet §6.1 / §6.5: at least 8 bytes stay free; pending_send_sz wakeups.
#[test]
fn full_ring_and_pending_send_size() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    // 4096-byte data area: packets of 1016 + 8 = 1024 bytes; three fit, the fourth would fill it.
    let payload = [7u8; 1000];
    for i in 0..3 {
        let _ = tx
            .try_write(&OutgoingPacket::inband(i, false, &[&payload]))
            .unwrap();
    }
    assert_eq!(tx.free().unwrap(), 1024);
    assert_eq!(
        tx.try_write(&OutgoingPacket::inband(3, false, &[&payload])),
        Err(RingError::NotEnoughSpace {
            needed: 1024,
            free: 1024
        })
    );
    assert_eq!(
        tx.try_write(&OutgoingPacket::inband(3, false, &[&[0; 5000]])),
        Err(RingError::PacketTooLarge { len: 5024 })
    );
    assert!(!tx.request_space(1024).unwrap());
    assert_eq!(mem.load_u32(control::PENDING_SEND_SIZE), 1024);
    let mut buf = [0u8; 2048];
    assert!(rx.try_read(&mut buf).unwrap().is_some());
    // Free goes 1024 -> 2048: crosses the pending size, so the reader signals.
    assert!(rx.commit().unwrap().needed());
    let _ = tx
        .try_write(&OutgoingPacket::inband(3, false, &[&payload]))
        .unwrap();
    assert_eq!(
        mem.load_u32(control::PENDING_SEND_SIZE),
        0,
        "cleared by the write"
    );
    assert!(rx.try_read(&mut buf).unwrap().is_some());
    assert!(!rx.commit().unwrap().needed(), "nobody waits");
    // A too-small buffer consumes nothing.
    assert_eq!(
        rx.try_read(&mut buf[..100]),
        Err(RingError::BufferTooSmall { needed: 1016 })
    );
    assert!(rx.try_read(&mut buf).unwrap().is_some());
}

#[test]
fn bad_sizes_and_extension() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    assert!(PageRefRing::new(&refs[..1]).is_err());
    let mem = PageRefRing::new(&refs).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let pkt = OutgoingPacket {
        packet_type: PacketType::DATA_USING_GPA_DIRECT,
        flags: PacketFlags::new(),
        transaction_id: 0,
        extension: &[0; 12],
        payload: &[],
    };
    assert_eq!(tx.try_write(&pkt), Err(RingError::BadExtension { len: 12 }));
}

// Hostile peer: indices out of range or unaligned give errors; so do inconsistent descriptors.
#[test]
fn hostile_indices() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    let mut buf = [0u8; 4096];
    mem.store_u32(control::WRITE_INDEX, 4096);
    assert_eq!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptIndex {
            index: Index::Write,
            value: 4096
        })
    );
    mem.store_u32(control::WRITE_INDEX, 12);
    assert!(matches!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptIndex { .. })
    ));
    mem.store_u32(control::READ_INDEX, 0xFFFF_FFF8);
    assert!(matches!(
        tx.try_write(&OutgoingPacket::inband(0, false, &[])),
        Err(RingError::CorruptIndex {
            index: Index::Read,
            ..
        })
    ));
    assert!(RingReceiver::new(&mem).is_err());
    // A descriptor claiming more bytes than were written.
    mem.store_u32(control::READ_INDEX, 0);
    mem.write(CONTROL_SIZE, &[6, 0, 2, 0, 100, 0, 0, 0]);
    mem.store_u32(control::WRITE_INDEX, 24);
    assert_eq!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptPacket { offset: 0 })
    );
    // A descriptor whose length is below 16.
    mem.write(CONTROL_SIZE, &[6, 0, 2, 0, 1, 0, 0, 0]);
    assert_eq!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptPacket { offset: 0 })
    );
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<u8>, bool),
    Read(usize),
    CommitRead,
    Mask(bool),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(any::<u8>(), 0..1500), any::<bool>()).prop_map(|(p, c)| Op::Write(p, c)),
        3 => (1usize..4).prop_map(Op::Read),
        2 => Just(Op::CommitRead),
        1 => any::<bool>().prop_map(Op::Mask),
    ]
}

proptest! {
    // The ring against a VecDeque model: same packets in the same order, full exactly when the
    // model says, wraparound everywhere (4 KiB data area, packets up to 1.5 KiB), and the
    // empty -> non-empty signal rule.
    #[test]
    fn matches_model(ops in proptest::collection::vec(arb_op(), 1..120), batch in any::<bool>()) {
        let pages = Pages::new(2);
        let refs = pages.refs();
        let mem = PageRefRing::new(&refs).unwrap();
        init_control(&mem).unwrap();
        let mut tx = RingSender::new(&mem).unwrap();
        let mut rx = RingReceiver::new(&mem).unwrap();
        let size = 4096usize;
        // Model: packets written and not yet read; bytes used counting unpublished reads.
        let mut model: VecDeque<(u64, Vec<u8>, bool)> = VecDeque::new();
        let mut used_published = 0usize; // bytes between published read index and write index
        let mut unread_bytes = 0usize;
        let mut masked = false;
        let mut next_id = 1u64;
        let mut buf = vec![0u8; 2048];
        for op in ops {
            match op {
                Op::Write(payload, completion) => {
                    let parts = [&payload[..]];
                    let pkt = OutgoingPacket::inband(next_id, completion, &parts);
                    let need = (16 + payload.len()).next_multiple_of(8) + 8;
                    let free = size - used_published;
                    let was_empty = used_published == 0;
                    let r = if batch { tx.stage(&pkt).map(|_| SignalNeeded(false)) } else { tx.try_write(&pkt) };
                    if need < free {
                        let sig = r.unwrap();
                        if !batch {
                            prop_assert_eq!(sig.needed(), was_empty && !masked);
                        }
                        model.push_back((next_id, payload, completion));
                        used_published += need;
                        unread_bytes += need;
                        if batch {
                            let sig = tx.commit().unwrap();
                            prop_assert_eq!(sig.needed(), was_empty && !masked);
                        }
                    } else {
                        prop_assert_eq!(r, Err(RingError::NotEnoughSpace { needed: need, free }));
                    }
                    next_id += 1;
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        match rx.try_read_packet(&mut buf).unwrap() {
                            None => prop_assert!(model.is_empty() || unread_bytes == 0),
                            Some(p) => {
                                let (id, payload, completion) = model.pop_front().unwrap();
                                prop_assert_eq!(p.transaction_id(), id);
                                prop_assert_eq!(p.descriptor().completion_requested(), completion);
                                prop_assert_eq!(&p.payload()[..payload.len()], &payload[..]);
                                unread_bytes -= (16 + payload.len()).next_multiple_of(8) + 8;
                            }
                        }
                    }
                }
                Op::CommitRead => {
                    let _ = rx.commit().unwrap();
                    used_published = unread_bytes;
                }
                Op::Mask(m) => {
                    masked = m;
                    if m { rx.begin_read() } else { let _ = rx.end_read().unwrap(); }
                }
            }
            prop_assert_eq!(tx.free().unwrap(), size - used_published);
            prop_assert_eq!(rx.available().unwrap(), unread_bytes);
        }
    }

    // A hostile peer writing arbitrary control fields and data: every call returns, nothing
    // panics, reads never report more than the buffer holds.
    #[test]
    fn hostile_peer_never_panics(
        pokes in proptest::collection::vec((0usize..5, any::<u32>()), 1..40),
        data in proptest::collection::vec(any::<u8>(), 4096),
    ) {
        let pages = Pages::new(2);
        let refs = pages.refs();
        let mem = PageRefRing::new(&refs).unwrap();
        init_control(&mem).unwrap();
        mem.write(CONTROL_SIZE, &data);
        let mut tx = RingSender::new(&mem).unwrap();
        let mut rx = RingReceiver::new(&mem).unwrap();
        let mut buf = vec![0u8; 600];
        for (field, value) in pokes {
            let off = [control::WRITE_INDEX, control::READ_INDEX, control::INTERRUPT_MASK,
                control::PENDING_SEND_SIZE, control::FEATURE_BITS][field];
            // Often a plausible (aligned, in range) value, sometimes anything.
            let v = if value & 1 == 0 { (value % 4096) & !7 } else { value };
            mem.store_u32(off, v);
            let _ = tx.try_write(&OutgoingPacket::inband(1, false, &[&data[..100]]));
            let _ = tx.request_space(value);
            for _ in 0..3 {
                if let Ok(Some(info)) = rx.try_read(&mut buf) {
                    prop_assert!(info.len <= buf.len());
                    prop_assert!(info.view(&buf).is_some());
                }
            }
            let _ = rx.commit();
            let _ = rx.end_read();
            let _ = tx.free();
        }
    }
}

#[test]
fn identity_refs() {
    let pages = std::boxed::Box::new([Page::new(), Page::new(), Page::new()]);
    let refs = identity_mapped_refs(&pages);
    for (r, p) in refs.iter().zip(pages.iter()) {
        assert_eq!(r.gpa(), core::ptr::from_ref(p).addr() as u64);
    }
    let ring = PageRefRing::new(&refs).unwrap();
    assert_eq!(ring.len(), 3 * 4096);
}

// fact sheet §6.3: a packet and its trailer wrap past the end of the data area (copied modulo
// the data size), and the trailer records the packet's start.
#[test]
fn explicit_wraparound() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    let mut buf = [0u8; 4096];
    // Two 2024-byte packets (2000 payload + 16 descriptor + 8 trailer) move both indices to 4048.
    let filler = [0u8; 2000];
    for _ in 0..2 {
        let _ = tx
            .try_write(&OutgoingPacket::inband(0, false, &[&filler]))
            .unwrap();
        rx.try_read(&mut buf).unwrap().unwrap();
        let _ = rx.commit().unwrap();
    }
    let start = mem.load_u32(control::WRITE_INDEX);
    assert_eq!(start, 2 * (2016 + 8));
    assert_eq!(start as usize, 4096 - 48);
    // 16 + 40 payload = 56 bytes + 8 trailer: 48 before the end, 16 after.
    let payload: Vec<u8> = (0..40).collect();
    let _ = tx
        .try_write(&OutgoingPacket::inband(5, false, &[&payload]))
        .unwrap();
    assert_eq!(mem.load_u32(control::WRITE_INDEX), 16);
    let mut t = [0u8; 8];
    mem.read(CONTROL_SIZE + 8, &mut t);
    assert_eq!(u64::from_le_bytes(t), trailer(start));
    let p = rx.try_read_packet(&mut buf).unwrap().unwrap();
    assert_eq!(p.transaction_id(), 5);
    assert_eq!(p.payload(), &payload[..]);
}

/// The bytes a packet must occupy in the ring (fact sheet §6.3): descriptor, extension, payload,
/// zero padding to 8, trailer.
fn expected_bytes(pkt: &OutgoingPacket<'_>, start: u32) -> Vec<u8> {
    let len = pkt.padded_len();
    let desc = PacketDescriptor {
        packet_type: pkt.packet_type,
        data_offset8: ((DESCRIPTOR_SIZE + pkt.extension.len()) / 8) as u16,
        len8: (len / 8) as u16,
        flags: pkt.flags,
        transaction_id: pkt.transaction_id,
    };
    let mut v = desc.as_bytes().to_vec();
    v.extend_from_slice(pkt.extension);
    for part in pkt.payload {
        v.extend_from_slice(part);
    }
    v.resize(len, 0);
    v.extend_from_slice(&trailer(start).to_le_bytes());
    v
}

// Small packets are put together in a scratch buffer, larger ones written piece by piece: both
// must give exactly the framing of §6.3, with zero padding over stale ring bytes, also across the
// wrap and around the size where one path turns into the other.
#[test]
fn framing_of_every_size_and_split() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    let ext = [0xEEu8; 16];
    let data: Vec<u8> = (0..700u32).map(|i| (i * 7 + 1) as u8).collect();
    for ext_len in [0usize, 8, 16] {
        for total_payload in (0..300).chain([500, 700]) {
            for split in [0usize, 1, total_payload / 2, total_payload] {
                let split = split.min(total_payload);
                mem.write(CONTROL_SIZE, &[0xFF; 4096]);
                init_control(&mem).unwrap();
                // Start near the end so many packets wrap.
                let start = (4096 - 8 * (1 + total_payload % 37)) as u32;
                mem.store_u32(control::WRITE_INDEX, start);
                mem.store_u32(control::READ_INDEX, start);
                let mut tx = RingSender::new(&mem).unwrap();
                let parts = [&data[..split], &data[split..total_payload]];
                let pkt = OutgoingPacket {
                    packet_type: PacketType::DATA_INBAND,
                    flags: PacketFlags::new(),
                    transaction_id: total_payload as u64,
                    extension: &ext[..ext_len],
                    payload: &parts,
                };
                tx.stage(&pkt).unwrap();
                let want = expected_bytes(&pkt, start);
                let mut got = vec![0u8; want.len()];
                copy_out(&mem, 4096, start, &mut got);
                assert_eq!(
                    got, want,
                    "ext {ext_len}, payload {total_payload}, split {split}"
                );
                let _ = tx.commit().unwrap();
                assert_eq!(
                    mem.load_u32(control::WRITE_INDEX) as usize,
                    (start as usize + want.len()) % 4096
                );
            }
        }
    }
}

// The receiver reads ahead with the descriptor: every packet size around the read-ahead size,
// every buffer size around the packet size, wrapped or not. Contents are exact, a short buffer
// consumes nothing, and the cursor lands on the next packet.
#[test]
fn read_ahead_every_size_and_buffer() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    let data: Vec<u8> = (0..400u32).map(|i| (i * 13 + 5) as u8).collect();
    let mut id = 0u64;
    for payload in (0usize..200).chain([300, 400]) {
        let len = (16 + payload).next_multiple_of(8);
        for buf_len in [0, 8, 15, 16, len - 1, len, len + 1, len + 200] {
            id += 1;
            let parts = [&data[..payload]];
            let _ = tx
                .try_write(&OutgoingPacket::inband(id, false, &parts))
                .unwrap();
            // A second packet right behind, so read-ahead has more published bytes to see.
            let _ = tx.try_write(&OutgoingPacket::completion(!id, &[])).unwrap();
            let mut buf = vec![0u8; buf_len];
            if buf_len < len {
                assert_eq!(
                    rx.try_read(&mut buf),
                    Err(RingError::BufferTooSmall { needed: len })
                );
                buf = vec![0u8; len];
            }
            let info = rx.try_read(&mut buf).unwrap().unwrap();
            assert_eq!(info.len, len);
            let view = info.view(&buf).unwrap();
            assert_eq!(view.transaction_id(), id);
            assert_eq!(&view.payload()[..payload], &data[..payload]);
            assert!(view.payload()[payload..].iter().all(|&b| b == 0));
            let mut small = [0u8; 16];
            let info = rx.try_read(&mut small).unwrap().unwrap();
            assert_eq!(info.descriptor.transaction_id, !id);
            assert_eq!(info.descriptor.packet_type, PacketType::COMPLETION);
            assert_eq!(rx.try_read(&mut small).unwrap(), None);
            let _ = rx.commit().unwrap();
        }
    }
}

// The producer remembers the free space and the consumer the unread bytes from their last load
// of the peer's index. A stale value only ever makes them reload; a corrupt index is still an
// error the moment it is loaded, and the public queries always load it.
#[test]
fn cached_peer_indices_against_a_hostile_peer() {
    let pages = Pages::new(2);
    let refs = pages.refs();
    let mem = PageRefRing::new(&refs).unwrap();
    init_control(&mem).unwrap();
    let mut tx = RingSender::new(&mem).unwrap();
    let mut rx = RingReceiver::new(&mem).unwrap();
    let mut buf = [0u8; 4096];
    let payload = [3u8; 1000]; // 1024 ring bytes each: three fit in 4096.

    // Producer: the first stage loads the read index (free 4096), the second and third use the
    // remembered space, the fourth must reload and finds a corrupt index.
    tx.stage(&OutgoingPacket::inband(1, false, &[&payload]))
        .unwrap();
    mem.store_u32(control::READ_INDEX, 4097);
    assert!(matches!(
        tx.free(),
        Err(RingError::CorruptIndex {
            index: Index::Read,
            value: 4097
        })
    ));
    tx.stage(&OutgoingPacket::inband(2, false, &[&payload]))
        .unwrap();
    tx.stage(&OutgoingPacket::inband(3, false, &[&payload]))
        .unwrap();
    assert_eq!(
        tx.stage(&OutgoingPacket::inband(4, false, &[&payload])),
        Err(RingError::CorruptIndex {
            index: Index::Read,
            value: 4097
        })
    );
    mem.store_u32(control::READ_INDEX, 0);
    let _ = tx.commit().unwrap();
    // Exactly full for a 1024-byte packet now (8 bytes always stay free).
    assert_eq!(
        tx.stage(&OutgoingPacket::inband(4, false, &[&payload])),
        Err(RingError::NotEnoughSpace {
            needed: 1024,
            free: 1024
        })
    );

    // Consumer: the first read loads the write index (3 packets), then a corrupt write index
    // is not seen while the remembered bytes last, but available() reports it at once and the
    // read after the remembered bytes fails.
    assert_eq!(
        rx.try_read(&mut buf)
            .unwrap()
            .unwrap()
            .descriptor
            .transaction_id,
        1
    );
    mem.store_u32(control::WRITE_INDEX, 12);
    assert!(matches!(
        rx.available(),
        Err(RingError::CorruptIndex {
            index: Index::Write,
            value: 12
        })
    ));
    assert!(rx.end_read().is_err());
    assert_eq!(
        rx.try_read(&mut buf)
            .unwrap()
            .unwrap()
            .descriptor
            .transaction_id,
        2
    );
    assert_eq!(
        rx.try_read(&mut buf)
            .unwrap()
            .unwrap()
            .descriptor
            .transaction_id,
        3
    );
    assert_eq!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptIndex {
            index: Index::Write,
            value: 12
        })
    );
    mem.store_u32(control::WRITE_INDEX, 3072);
    assert_eq!(rx.try_read(&mut buf), Ok(None));
    let _ = rx.commit().unwrap();

    // A write index pointing into the middle of a packet: the descriptor is visible, the rest
    // is not, so the packet is corrupt; once the index covers it, the remembered (short) count
    // makes the reader reload instead of failing.
    let _ = tx
        .try_write(&OutgoingPacket::inband(5, false, &[&payload[..100]]))
        .unwrap();
    let end = mem.load_u32(control::WRITE_INDEX);
    mem.store_u32(control::WRITE_INDEX, 3072 + 24);
    assert_eq!(
        rx.try_read(&mut buf),
        Err(RingError::CorruptPacket { offset: 3072 })
    );
    mem.store_u32(control::WRITE_INDEX, end);
    let info = rx.try_read(&mut buf).unwrap().unwrap();
    assert_eq!((info.descriptor.transaction_id, info.len), (5, 120));
    assert_eq!(rx.try_read(&mut buf), Ok(None));

    // A peer that moves the write index backwards past remembered data: reads stay inside the
    // ring and return errors or packets, never panic.
    for (w, r) in [(0u32, 8u32), (4088, 0), (8, 4088)] {
        let _ = tx.try_write(&OutgoingPacket::inband(6, false, &[&payload[..40]]));
        mem.store_u32(control::WRITE_INDEX, w);
        mem.store_u32(control::READ_INDEX, r);
        for _ in 0..4 {
            if let Ok(Some(info)) = rx.try_read(&mut buf) {
                assert!(info.len <= buf.len());
            }
            let _ = tx.stage(&OutgoingPacket::inband(7, false, &[&payload[..40]]));
        }
        let _ = rx.commit();
        let _ = tx.commit();
    }
}
