//! The host storage VSP reading what a (hostile) guest wrote: an arbitrary
//! VSTOR packet (in-band or GPA-direct, with arbitrary range lists) goes
//! through the same steps as `host-test-vmm::storage`'s EXECUTE_SRB path:
//! VSTOR parse for a version, the page list checked against a small guest
//! RAM, then the SCSI target on a RAM disk (read-only or not) with the
//! arbitrary CDB, plus the trace decoders. Errors become SCSI/SRB statuses,
//! never panics, and no access leaves guest RAM or the disk.
#![no_main]

use arbitrary::Arbitrary;
use host_test_vmm::storage::buffer::DataBuffer;
use host_test_vmm::storage::target::{execute_no_lun, Command, Disk};
use host_test_vmm::storage::{trace, DiskBackend, MemBackend, MAX_TRANSFER_BYTES};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmbus_guest::packet::{PacketType, PacketView};
use vsc_storage::vstor::{ProtocolVersion, VstorPacket};

/// Guest RAM: small, so page lists often point past it.
const RAM: usize = 64 * 1024;

#[derive(Arbitrary, Debug)]
struct Input {
    gpa_direct: bool,
    /// Extension bytes (the GPA-direct header and ranges), cut to 8-byte units.
    extension: Vec<u8>,
    /// The VSTOR packet bytes.
    payload: Vec<u8>,
    /// Index into the known versions (or none yet).
    version: u8,
    readonly: bool,
    /// Disk size in blocks (1..=256).
    blocks: u8,
    luns: Vec<u8>,
    /// Guest RAM contents (UNMAP parameter lists, write data).
    ram: Vec<u8>,
}

fuzz_target!(|inp: Input| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let n = inp.ram.len().min(RAM);
    let _ = vm_memory::Bytes::write_slice(&mem, &inp.ram[..n], GuestAddress(0));

    // A well-framed VMBus packet around the fuzzed extension and payload.
    let ext_len = (inp.extension.len() / 8 * 8).min(2048);
    let body = 16 + ext_len + inp.payload.len().min(4096);
    let total = body.next_multiple_of(8);
    let mut pkt = vec![0u8; total];
    let ty = if inp.gpa_direct {
        PacketType::DATA_USING_GPA_DIRECT
    } else {
        PacketType::DATA_INBAND
    };
    pkt[0..2].copy_from_slice(&ty.0.to_le_bytes());
    pkt[2..4].copy_from_slice(&(((16 + ext_len) / 8) as u16).to_le_bytes());
    pkt[4..6].copy_from_slice(&((total / 8) as u16).to_le_bytes());
    pkt[6..8].copy_from_slice(&1u16.to_le_bytes());
    pkt[16..16 + ext_len].copy_from_slice(&inp.extension[..ext_len]);
    let pl = inp.payload.len().min(4096);
    pkt[16 + ext_len..16 + ext_len + pl].copy_from_slice(&inp.payload[..pl]);
    let Ok(view) = PacketView::new(&pkt) else {
        return;
    };

    let version = ProtocolVersion::ALL.get(usize::from(inp.version)).copied();
    let Ok(req) = VstorPacket::parse(view.payload(), version) else {
        return;
    };
    let _ = trace::decode_packet(&req, version);
    let buf = if inp.gpa_direct {
        match DataBuffer::from_packet(&view, &mem, u64::from(MAX_TRANSFER_BYTES)) {
            Ok(b) => b,
            Err(_) => return,
        }
    } else {
        DataBuffer::empty()
    };
    assert!(buf.len() <= u64::from(MAX_TRANSFER_BYTES));
    for s in buf.segments() {
        assert!(
            s.gpa + u64::from(s.len) <= RAM as u64,
            "segment outside RAM"
        );
    }

    let srb = req.srb();
    let cdb = srb.cdb();
    if cdb.is_empty() {
        return;
    }
    let _ = trace::decode_cdb(cdb);
    let cmd = Command {
        cdb,
        transfer_len: u64::from(srb.data_transfer_length).min(buf.len()),
    };
    let blocks = usize::from(inp.blocks).max(1);
    let backend: Arc<dyn DiskBackend> = Arc::new(MemBackend::new(blocks * 512, inp.readonly));
    let disk = Disk::new(0, Arc::clone(&backend), "fuzz".into());
    let r = disk.execute(cmd, &buf, &mem, &inp.luns);
    assert!(
        u64::from(r.transferred) <= buf.len(),
        "moved more than the buffer"
    );
    assert_eq!(backend.len(), (blocks * 512) as u64, "disk size changed");
    let r = execute_no_lun(cmd, &buf, &mem, &inp.luns);
    assert!(u64::from(r.transferred) <= buf.len());
});
