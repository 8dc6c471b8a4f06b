//! The ring buffer as the host reads and writes it over guest pages the
//! guest controls: every control field and data byte of the rings is fuzzed,
//! then the host's receiver drains packets and its sender writes replies.
//! A corrupt ring must give an error, never a panic or an access outside the
//! ring's pages.
#![no_main]

use arbitrary::Arbitrary;
use host_test_vmm::hv::inprocess::InProcess;
use host_test_vmm::vmbus::GuestRingMemory;
use libfuzzer_sys::fuzz_target;
use vmbus_guest::packet::PacketView;
use vmbus_guest::ring::{OutgoingPacket, RingReceiver, RingSender};

const RAM: usize = 64 * 1024;
/// Ring pages in guest RAM, deliberately not contiguous.
const IN_PFNS: [u64; 4] = [3, 7, 5, 9];
const OUT_PFNS: [u64; 3] = [11, 13, 12];

#[derive(Arbitrary, Debug)]
struct Input {
    in_ring: Vec<u8>,
    out_ring: Vec<u8>,
    replies: Vec<Vec<u8>>,
}

fn fill(part: &InProcess, pfns: &[u64], bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(4096).take(pfns.len()).enumerate() {
        let _ = part.write_bytes(pfns[i] << 12, chunk);
    }
}

fuzz_target!(|inp: Input| {
    let Ok(part) = InProcess::new(1, RAM) else {
        return;
    };
    fill(&part, &IN_PFNS, &inp.in_ring);
    fill(&part, &OUT_PFNS, &inp.out_ring);
    if let Ok(mem) = GuestRingMemory::new(part.memory().clone(), &IN_PFNS) {
        if let Ok(mut rx) = RingReceiver::new(mem) {
            let mut buf = vec![0u8; 16 * 1024];
            for _ in 0..64 {
                match rx.try_read(&mut buf) {
                    Ok(Some(info)) => {
                        let len = info.len.min(buf.len());
                        if let Ok(p) = PacketView::new(&buf[..len]) {
                            let _ = p.payload();
                            if let Ok(r) = p.gpa_direct_ranges() {
                                r.for_each(drop);
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let _ = rx.commit();
        }
    }
    if let Ok(mem) = GuestRingMemory::new(part.memory().clone(), &OUT_PFNS) {
        if let Ok(mut tx) = RingSender::new(mem) {
            for (i, r) in inp.replies.iter().take(16).enumerate() {
                let parts = [r.as_slice()];
                let pkt = OutgoingPacket::inband(i as u64, i % 2 == 0, &parts);
                if tx.try_write(&pkt).is_err() {
                    break;
                }
            }
        }
    }
    part.hv().shutdown();
});
