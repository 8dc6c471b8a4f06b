//! The guest storage client reading what a (hostile) host wrote: arbitrary
//! packets into the storvsc client during initialization and with requests
//! outstanding, plus the SCSI decoders the guest applies to host data (sense
//! in fixed and descriptor formats) and the CDB/UNMAP decoders the host
//! applies to guest data. Errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_guest::packet::PacketView;
use vsc_storage::client::{ClientConfig, DataBuffer, Lun, StorvscClient};
use vsc_storage::scsi::{Cdb, UnmapList};
use vsc_storage::sense::Sense;

fuzz_target!(|data: &[u8]| {
    let _ = Cdb::parse(data);
    let _ = Sense::parse(data);
    let _ = UnmapList::parse(data);

    let mut client: StorvscClient = StorvscClient::new(ClientConfig::default());
    client.start();
    let pfns = [0x100u64, 0x101, 0x102];
    let mut rest = data;
    let mut submitted = false;
    // Packets: a 1-byte length (in 8-byte units), then the packet bytes.
    while let Some((&len8, tail)) = rest.split_first() {
        let n = (usize::from(len8) * 8).min(tail.len());
        let (pkt, tail) = tail.split_at(n);
        rest = tail;
        while client.peek_transmit().is_some() {
            client.transmitted();
        }
        if let Ok(view) = PacketView::new(pkt) {
            let _ = client.on_packet(&view);
        }
        if client.is_ready() && !submitted {
            submitted = true;
            for lba in 0..4u64 {
                let buf = DataBuffer {
                    offset: 512,
                    len: 4096,
                    pfns: &pfns,
                };
                let _ = client.submit_read(Lun::default(), lba * 8, 8, 512, buf);
            }
            let _ = client.submit_flush(Lun::default());
        }
    }
});
