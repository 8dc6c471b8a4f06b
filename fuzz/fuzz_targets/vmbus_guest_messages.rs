//! The guest side reading what a (hostile) host wrote: channel messages into
//! the sans-IO VMBus client in every state it reaches, the message decoder's
//! round trip, and packet descriptors. The guest treats the host as
//! untrusted: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_guest::client::{Client, ClientConfig};
use vmbus_guest::message::ChannelMessage;
use vmbus_guest::packet::PacketView;

fuzz_target!(|data: &[u8]| {
    // Decoder: whatever parses must encode and parse back to the same message.
    for chunk in data.chunks(240) {
        if let Ok(m) = ChannelMessage::parse(chunk) {
            let encoded = m.encode().expect("a parsed message encodes");
            let again =
                ChannelMessage::parse(encoded.as_bytes()).expect("an encoded message parses");
            assert_eq!(m, again);
        }
        if let Ok(p) = PacketView::new(chunk) {
            let _ = p.payload();
            if let Ok(r) = p.gpa_direct_ranges() {
                r.for_each(drop);
            }
            if let Ok((_, r)) = p.xfer_page_ranges() {
                r.for_each(drop);
            }
        }
    }
    // Client: connect, then take each chunk (the first byte chooses its
    // length) as a host message, acting on what it reports.
    let mut client: Client = Client::new(ClientConfig::default());
    let _ = client.connect();
    let mut rest = data;
    let mut pfns = [0u64; 40];
    for (i, p) in pfns.iter_mut().enumerate() {
        *p = 0x100 + i as u64;
    }
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (msg, tail) = tail.split_at(n);
        rest = tail;
        while client.poll_outgoing().is_some() {}
        if let Ok(Some(ev)) = client.handle_message(msg) {
            // Drive further flows from whatever the host claimed.
            let relid = msg
                .get(8..12)
                .map_or(1, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let _ = ev;
            if let Ok(handle) = client.create_gpadl(relid, 0, 40 * 4096, &pfns[..]) {
                let _ = client.open(relid, handle, 2, 0, [0; 120]);
                let _ = client.close(relid);
                let _ = client.teardown_gpadl(handle);
            }
        }
    }
    let _ = client.unload();
    while client.poll_outgoing().is_some() {}
});
