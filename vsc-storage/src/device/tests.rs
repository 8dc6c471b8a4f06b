//! The glue end to end over real rings in memory, against a small scripted storvsp with a RAM
//! disk running on another thread.
extern crate std;
use super::*;
use crate::scsi::{encode_lun, ReadWrite, ScsiStatus};
use crate::sense::{AdditionalSense, Sense};
use crate::vstor::{
    ChannelProperties, Operation, ProtocolVersion, SrbStatus, VmSrb, VstorPacket, VstorStatus,
};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use hypercall::page::Page;
use std::boxed::Box;
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;
use vmbus_guest::channel::split_rings;
use vmbus_guest::packet::PacketView;
use vmbus_guest::ring::{PageRefRing, RingReceiver, RingSender};
use zerocopy::IntoBytes;

const BLOCKS: usize = 256;
const BS: usize = 512;

struct HostState {
    disk: Vec<u8>,
    ua_pending: bool,
    /// Hold replies until this many requests are waiting, then answer them in reverse order.
    hold: usize,
    enumerate_after: Option<u32>,
    srbs: u32,
    ops: Vec<u8>,
}

struct Host<'a> {
    rx: RingReceiver<PageRefRing<'a, 'a>>,
    tx: RingSender<PageRefRing<'a, 'a>>,
    mem: &'a [Page],
    state: &'a Mutex<HostState>,
}

fn page_of<'a>(mem: &'a [Page], gpn: u64) -> Option<PageRef<'a>> {
    mem.iter()
        .map(PageRef::identity_mapped)
        .find(|p| p.gpn() == gpn)
}

/// Copies between guest pages of a GPA range and `data`.
fn guest_copy(mem: &[Page], offset: u32, pfns: &[u64], data: &mut [u8], to_guest: bool) {
    let mut done = 0;
    while done < data.len() {
        let pos = offset as usize + done;
        let page = page_of(mem, pfns[pos / 4096]).expect("guest page");
        let off = pos % 4096;
        let k = (4096 - off).min(data.len() - done);
        if to_guest {
            page.write_bytes(off, &data[done..done + k]);
        } else {
            page.read_bytes(off, &mut data[done..done + k]);
        }
        done += k;
    }
}

impl Host<'_> {
    fn reply(&mut self, id: u64, p: &VstorPacket) {
        let payload = [p.as_bytes()];
        while self
            .tx
            .try_write(&vmbus_guest::ring::OutgoingPacket::completion(id, &payload))
            .is_err()
        {
            std::thread::yield_now();
        }
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 4096];
        let mut batch: Vec<(u64, VstorPacket)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            while let Ok(Some(p)) = self.rx.try_read_packet(&mut buf) {
                let r = self.handle(&p);
                batch.push((p.transaction_id(), r));
            }
            let _ = self.rx.commit();
            let hold = self.state.lock().unwrap().hold;
            if batch.is_empty() || batch.len() < hold {
                std::thread::yield_now();
                continue;
            }
            if hold > 1 {
                batch.reverse();
            }
            for (id, r) in core::mem::take(&mut batch) {
                self.reply(id, &r);
            }
            let mut st = self.state.lock().unwrap();
            if let Some(n) = st.enumerate_after {
                if st.srbs >= n {
                    st.enumerate_after = None;
                    drop(st);
                    let p = VstorPacket {
                        operation: Operation::ENUMERATE_BUS,
                        ..VstorPacket::default()
                    };
                    let payload = [p.as_bytes()];
                    let _ = self
                        .tx
                        .try_write(&vmbus_guest::ring::OutgoingPacket::inband(
                            0, false, &payload,
                        ));
                }
            }
        }
    }

    fn handle(&mut self, p: &PacketView<'_>) -> VstorPacket {
        let req = VstorPacket::parse(p.payload(), None).unwrap();
        let mut reply = VstorPacket::completion(VstorStatus::SUCCESS);
        match req.operation {
            Operation::QUERY_PROTOCOL_VERSION
                if req.version().major_minor != ProtocolVersion::WIN10 =>
            {
                reply.status = VstorStatus::REVISION_MISMATCH;
            }
            Operation::QUERY_PROPERTIES => reply.set_body(&ChannelProperties {
                max_channel_count: 2,
                flags: ChannelProperties::FLAG_MULTI_CHANNEL,
                max_transfer_bytes: 0x40000,
                ..ChannelProperties::default()
            }),
            Operation::EXECUTE_SRB => {
                let srb = self.execute(p, &req.srb());
                reply.set_body(&srb);
            }
            _ => {}
        }
        reply
    }

    fn execute(&mut self, p: &PacketView<'_>, req: &VmSrb) -> VmSrb {
        let mut st = self.state.lock().unwrap();
        st.srbs += 1;
        let range = p
            .gpa_direct_ranges()
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|r| r.ok());
        let (off, pfns): (u32, Vec<u64>) =
            range.map_or((0, vec![]), |r| (r.byte_offset, r.pfns.iter().collect()));
        let len = req.data_transfer_length as usize;
        let mut out = *req;
        out.srb_status = SrbStatus::SUCCESS;
        out.sense_info_length = 0;
        let fail = |out: &mut VmSrb, s: Sense| {
            out.srb_status = SrbStatus::ERROR.with_autosense();
            out.scsi_status = ScsiStatus::CHECK_CONDITION.0;
            out.data_transfer_length = 0;
            out.set_sense(&s.to_fixed(), ProtocolVersion::WIN10);
        };
        let cdb = Cdb::parse(req.cdb());
        st.ops.push(req.cdb()[0]);
        let data_in = |out: &mut VmSrb, bytes: &[u8]| {
            let mut b = bytes[..bytes.len().min(len)].to_vec();
            guest_copy(self.mem, off, &pfns, &mut b, true);
            out.data_transfer_length = b.len() as u32;
        };
        match cdb {
            Ok(Cdb::TestUnitReady) if st.ua_pending => {
                st.ua_pending = false;
                fail(
                    &mut out,
                    Sense::new(SenseKey::UNIT_ATTENTION, AdditionalSense::POWER_ON_RESET),
                );
            }
            Ok(Cdb::TestUnitReady) | Ok(Cdb::SynchronizeCache(_)) => out.data_transfer_length = 0,
            Ok(Cdb::Inquiry { evpd: false, .. }) => {
                let mut d = [0u8; 36];
                d[2] = 6;
                d[3] = 2;
                d[4] = 31;
                d[8..12].copy_from_slice(b"Msft");
                data_in(&mut out, &d);
            }
            Ok(Cdb::Inquiry {
                evpd: true,
                page_code: 0,
                ..
            }) => data_in(&mut out, &[0, 0, 0, 3, 0x00, 0xB0, 0xB2]),
            Ok(Cdb::Inquiry {
                evpd: true,
                page_code: 0xB0,
                ..
            }) => {
                let mut d = [0u8; 64];
                d[1] = 0xB0;
                d[3] = 0x3C;
                d[20..24].copy_from_slice(&16u32.to_be_bytes());
                data_in(&mut out, &d);
            }
            Ok(Cdb::Inquiry {
                evpd: true,
                page_code: 0xB2,
                ..
            }) => data_in(&mut out, &[0, 0xB2, 0, 4, 0, 0x80, 0, 0]),
            Ok(Cdb::ReadCapacity16 { .. }) => {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&(BLOCKS as u64 - 1).to_be_bytes());
                d[8..12].copy_from_slice(&(BS as u32).to_be_bytes());
                d[14] = 0x80;
                data_in(&mut out, &d);
            }
            Ok(Cdb::ModeSense(m)) if m.page_code == 0x08 => {
                let mut d = [0u8; 24];
                d[0] = 23;
                d[4] = 0x08;
                d[5] = 0x12;
                d[6] = CACHING_WCE;
                data_in(&mut out, &d);
            }
            Ok(Cdb::ModeSense(_)) => data_in(&mut out, &[3, 0, 0, 0]),
            Ok(Cdb::ReportLuns { .. }) => {
                let mut d = vec![0, 0, 0, 16, 0, 0, 0, 0];
                d.extend_from_slice(&encode_lun(0));
                d.extend_from_slice(&encode_lun(3));
                data_in(&mut out, &d);
            }
            Ok(Cdb::Read(ReadWrite { lba, blocks, .. }))
            | Ok(Cdb::Write(ReadWrite { lba, blocks, .. })) => {
                let (a, n) = (lba as usize * BS, blocks as usize * BS);
                if a + n > st.disk.len() || n != len {
                    fail(
                        &mut out,
                        Sense::new(SenseKey::ILLEGAL_REQUEST, AdditionalSense::LBA_OUT_OF_RANGE),
                    );
                } else if matches!(cdb, Ok(Cdb::Read(_))) {
                    let mut b = st.disk[a..a + n].to_vec();
                    guest_copy(self.mem, off, &pfns, &mut b, true);
                } else {
                    guest_copy(self.mem, off, &pfns, &mut st.disk[a..a + n], false);
                }
            }
            Ok(Cdb::Unmap {
                parameter_list_length,
                ..
            }) => {
                let mut b = vec![0u8; parameter_list_length as usize];
                guest_copy(self.mem, off, &pfns, &mut b, false);
                for (lba, n) in UnmapList::parse(&b).unwrap().iter() {
                    let (a, n) = (lba as usize * BS, n as usize * BS);
                    st.disk[a..a + n].fill(0);
                }
                out.data_transfer_length = 0;
            }
            _ => fail(
                &mut out,
                Sense::new(
                    SenseKey::ILLEGAL_REQUEST,
                    AdditionalSense::INVALID_COMMAND_OPERATION_CODE,
                ),
            ),
        }
        out
    }
}

fn with_device(
    state: HostState,
    f: impl FnOnce(
        &mut StorvscDevice<PageRefRing<'_, '_>, &dyn Fn(u32) -> bool>,
        &[PageRef<'_>],
        &Mutex<HostState>,
    ),
) -> u32 {
    let ring_pages: Box<[Page]> = (0..32).map(|_| Page::new()).collect();
    let data_pages: Box<[Page]> = (0..16).map(|_| Page::new()).collect();
    let ring_refs: Vec<PageRef<'_>> = ring_pages.iter().map(PageRef::identity_mapped).collect();
    let data_refs: Vec<PageRef<'_>> = data_pages.iter().map(PageRef::identity_mapped).collect();
    let (out, inb) = split_rings(&ring_refs, 16).unwrap();
    let state = Mutex::new(state);
    let stop = AtomicBool::new(false);
    let signals = AtomicU32::new(0);
    std::thread::scope(|s| {
        let mut host = Host {
            rx: RingReceiver::new(out).unwrap(),
            tx: RingSender::new(inb).unwrap(),
            mem: &data_pages,
            state: &state,
        };
        let (stop_ref, state_ref) = (&stop, &state);
        s.spawn(move || host.run(stop_ref));
        let signal = |_id: u32| {
            signals.fetch_add(1, Ordering::Relaxed);
            true
        };
        let signal: &dyn Fn(u32) -> bool = &signal;
        let channel = Channel::new(out, inb, 0x2001).unwrap();
        let mut dev: StorvscDevice<_, _> =
            StorvscDevice::new(channel, signal, ClientConfig::default());
        f(&mut dev, &data_refs, state_ref);
        stop.store(true, Ordering::Relaxed);
    });
    signals.load(Ordering::Relaxed)
}

fn host_state() -> HostState {
    HostState {
        disk: (0..BLOCKS * BS)
            .map(|i| (i / BS) as u8 ^ (i % 251) as u8)
            .collect(),
        ua_pending: true,
        hold: 1,
        enumerate_after: None,
        srbs: 0,
        ops: Vec::new(),
    }
}

const POLLS: u64 = 50_000_000;

#[test]
fn init_probe_and_block_io() {
    let signals = with_device(host_state(), |dev, pages, state| {
        let info = dev.init(POLLS).unwrap();
        assert_eq!(info.version, ProtocolVersion::WIN10);
        assert!(info.multi_channel());
        assert_eq!(dev.create_sub_channels(4, POLLS), Ok(2));
        let scratch = DmaBuf::new(&pages[0..1], 0, 4096).unwrap();
        let disk = dev.probe_disk(Lun::new(0), &scratch, POLLS).unwrap();
        assert_eq!(
            disk,
            Disk {
                lun: Lun::new(0),
                block_size: 512,
                blocks: BLOCKS as u64,
                read_only: false,
                write_cache: true,
                discard: true,
                max_unmap_blocks: 16,
                device_type: 0,
            }
        );
        // The first TEST UNIT READY got UNIT ATTENTION and was retried.
        assert_eq!(&state.lock().unwrap().ops[..2], &[0x00, 0x00]);
        let mut luns = [0u16; 4];
        assert_eq!(
            dev.report_luns(Lun::new(0), &scratch, &mut luns, POLLS),
            Ok(2)
        );
        assert_eq!(&luns[..2], &[0, 3]);

        // Multi-page, unaligned: 9 blocks from 0x300 into page 1 spans pages 1..3.
        let buf = DmaBuf::new(&pages[1..3], 0x300, 9 * 512).unwrap();
        dev.read(&disk, 10, 9, &buf, POLLS).unwrap();
        let mut got = vec![0u8; 9 * 512];
        assert!(buf.read(0, &mut got));
        assert_eq!(got, state.lock().unwrap().disk[10 * 512..19 * 512]);
        // Write a pattern, read it back through another buffer.
        let pattern: Vec<u8> = (0..9 * 512).map(|i| (i * 7 % 256) as u8).collect();
        assert!(buf.write(0, &pattern));
        dev.write(&disk, 100, 9, &buf, POLLS).unwrap();
        dev.flush_cache(&disk, POLLS).unwrap();
        let other = DmaBuf::new(&pages[4..7], 0xFF8, 9 * 512).unwrap();
        dev.read(&disk, 100, 9, &other, POLLS).unwrap();
        assert!(other.read(0, &mut got));
        assert_eq!(got, pattern);
        // Discard 40 blocks: three UNMAPs of at most 16.
        dev.discard(&disk, 100, 40, &scratch, POLLS).unwrap();
        assert!(state.lock().unwrap().disk[100 * 512..140 * 512]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            state
                .lock()
                .unwrap()
                .ops
                .iter()
                .filter(|&&o| o == 0x42)
                .count(),
            3
        );
        // Out of range is refused locally; a host error comes back typed.
        assert!(matches!(
            dev.read(&disk, 250, 9, &buf, POLLS),
            Err(DeviceError::Submit(_))
        ));
        let bad = Cdb::Read(ReadWrite {
            size: CdbSize::Sixteen,
            lba: 1 << 40,
            blocks: 1,
            fua: false,
            dpo: false,
        });
        let one = DmaBuf::new(&pages[8..9], 0, 512).unwrap();
        match dev.execute(Lun::new(0), &bad, Some(&one), POLLS) {
            Err(DeviceError::Io(IoError::IllegalRequest(s))) => {
                assert_eq!(s.additional, AdditionalSense::LBA_OUT_OF_RANGE)
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dev.stats().packets_rejected, 0);
    });
    assert!(signals > 0);
}

#[test]
fn async_many_outstanding_out_of_order_and_rescan() {
    let mut st = host_state();
    st.ua_pending = false;
    st.enumerate_after = Some(40);
    with_device(st, |dev, pages, state| {
        dev.init(POLLS).unwrap();
        let scratch = DmaBuf::new(&pages[0..1], 0, 4096).unwrap();
        let disk = dev.probe_disk(Lun::new(0), &scratch, POLLS).unwrap();
        state.lock().unwrap().hold = 12;
        // 36 one-block reads, each into its own slice of pages 1..=9 (unaligned, some crossing
        // a page boundary).
        let bufs: Vec<DmaBuf<'_, '_>> = (0..36)
            .map(|i| {
                let start: usize = 4096 + i * 1000;
                let (first, off) = (start / 4096, start % 4096);
                let n = (off + 512).div_ceil(4096);
                DmaBuf::new(&pages[first..first + n], off, 512).unwrap()
            })
            .collect();
        // Each buffer overlaps no other: 1000-byte stride.
        let mut tags = Vec::new();
        for (i, b) in bufs.iter().enumerate() {
            tags.push(dev.submit_read(&disk, i as u64 * 3, 1, b).unwrap());
        }
        let mut done = vec![false; 36];
        let mut order = Vec::new();
        let mut rescans = 0;
        for _ in 0..POLLS {
            dev.poll(|e| match e {
                Event::Completed { tag, result } => {
                    let i = tags.iter().position(|&t| t == tag).unwrap();
                    assert!(!done[i]);
                    assert_eq!(result.unwrap().transferred, 512);
                    done[i] = true;
                    order.push(i);
                }
                Event::BusChanged(op) => {
                    assert_eq!(op, Operation::ENUMERATE_BUS);
                    rescans += 1;
                }
                other => panic!("{other:?}"),
            })
            .unwrap();
            if done.iter().all(|&d| d) && rescans > 0 {
                break;
            }
        }
        assert!(done.iter().all(|&d| d), "{done:?}");
        assert_eq!(rescans, 1);
        assert!(dev.take_bus_changed());
        assert!(!dev.take_bus_changed());
        // Completions did not come in submission order.
        assert_ne!(order, (0..36).collect::<Vec<_>>());
        let disk_bytes = state.lock().unwrap().disk.clone();
        for (i, b) in bufs.iter().enumerate() {
            let mut got = [0u8; 512];
            b.read(0, &mut got);
            assert_eq!(
                got[..],
                disk_bytes[i * 3 * 512..(i * 3 + 1) * 512],
                "read {i}"
            );
        }
        assert_eq!(dev.client().outstanding(), 0);
    });
}

#[test]
fn dma_buf_bounds() {
    let pages: Box<[Page]> = (0..3).map(|_| Page::new()).collect();
    let refs: Vec<PageRef<'_>> = pages.iter().map(PageRef::identity_mapped).collect();
    assert!(DmaBuf::new(&refs[..2], 0xF00, 0x200).is_some());
    assert!(DmaBuf::new(&refs[..2], 0xF00, 0x100).is_none()); // one page would do
    assert!(DmaBuf::new(&refs[..1], 4096, 1).is_none());
    assert!(DmaBuf::new(&refs[..1], 0, 0).is_none());
    let b = DmaBuf::new(&refs, 0x10, 8192).unwrap();
    assert!(b.write(4000, &[1; 200]));
    let mut x = [0u8; 200];
    assert!(b.read(4000, &mut x));
    assert_eq!(x, [1; 200]);
    assert!(!b.read(8100, &mut x));
    assert!(!b.write(usize::MAX, &[1]));
    let p = b.prefix(100).unwrap();
    assert_eq!(p.len(), 100);
    assert!(b.prefix(8193).is_none());
}

proptest::proptest! {
    // A hostile host writes arbitrary completions (any id, any bytes) into the real inbound
    // ring: poll reports events or errors, never panics, and never completes more than asked.
    #[test]
    fn hostile_ring_completions(
        replies in proptest::collection::vec(
            (proptest::prop_oneof![proptest::strategy::Just((1u64 << 16) | 1), proptest::prelude::any::<u64>()],
             proptest::collection::vec(proptest::prelude::any::<u8>(), 0..72)),
            1..6)
    ) {
        let ring_pages: Box<[Page]> = (0..8).map(|_| Page::new()).collect();
        let data_pages: Box<[Page]> = (0..2).map(|_| Page::new()).collect();
        let ring_refs: Vec<PageRef<'_>> = ring_pages.iter().map(PageRef::identity_mapped).collect();
        let data_refs: Vec<PageRef<'_>> = data_pages.iter().map(PageRef::identity_mapped).collect();
        let (out, inb) = split_rings(&ring_refs, 4).unwrap();
        let mut host_tx = RingSender::new(inb).unwrap();
        let info = crate::client::DeviceInfo {
            version: ProtocolVersion::WIN10,
            properties: ChannelProperties { max_transfer_bytes: 0x10000, ..ChannelProperties::default() },
            max_transfer_bytes: 0x10000,
            queue_depth: 4,
        };
        let signal = |_: u32| true;
        let mut dev: StorvscDevice<_, _, 4, 5> =
            StorvscDevice::new_subchannel(Channel::new(out, inb, 1).unwrap(), signal, ClientConfig::default(), info);
        let disk = Disk { lun: Lun::new(0), block_size: 512, blocks: 100, read_only: false, write_cache: false, discard: false, max_unmap_blocks: 0, device_type: 0 };
        let buf = DmaBuf::new(&data_refs, 0x800, 4096).unwrap();
        dev.submit_read(&disk, 0, 8, &buf).unwrap();
        for (id, payload) in &replies {
            let parts = [&payload[..]];
            let _ = host_tx.try_write(&vmbus_guest::ring::OutgoingPacket::completion(*id, &parts)).unwrap();
            let r = dev.poll(|e| {
                if let Event::Completed { result: Ok(d), .. } = e {
                    assert!(d.transferred <= 4096);
                }
            });
            proptest::prop_assert!(r.is_ok());
            proptest::prop_assert!(dev.client().outstanding() <= 1);
        }
    }
}
