//! The guest network client reading what a (hostile) host wrote: arbitrary NVSP completions,
//! in-band messages and transfer-page packets whose ranges point into a receive buffer filled
//! with arbitrary RNDIS bytes, fed into the netvsc client during bring-up and after it (with
//! transmits outstanding). Errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_guest::packet::{PacketDescriptor, PacketFlags, PacketType, PacketView, XferPageHeader};
use vsc_net::client::{BufferConfig, ClientConfig, NetvscClient, TxOffload};
use vsc_net::{nvsp, rndis};
use zerocopy::IntoBytes;

const RX_LEN: usize = 16 * 1024;

fn packet(out: &mut Vec<u8>, ty: PacketType, tid: u64, ext: &[u8], payload: &[u8]) {
    out.clear();
    let off = 16 + ext.len();
    let len = (off + payload.len()).next_multiple_of(8);
    out.extend_from_slice(
        PacketDescriptor {
            packet_type: ty,
            data_offset8: (off / 8) as u16,
            len8: (len / 8) as u16,
            flags: PacketFlags::new(),
            transaction_id: tid,
        }
        .as_bytes(),
    );
    out.extend_from_slice(ext);
    out.extend_from_slice(payload);
    out.resize(len, 0);
}

fuzz_target!(|data: &[u8]| {
    let _ = nvsp::parse(data);
    let _ = rndis::parse(data);
    let _ = vsc_net::NdisOffload::parse(data);

    let config = ClientConfig::new(
        BufferConfig {
            gpadl: 1,
            len: RX_LEN as u32,
        },
        BufferConfig {
            gpadl: 2,
            len: 8 * 6144,
        },
    );
    let mut client: NetvscClient<1> = NetvscClient::new(config);
    client.start();
    let mut rx = vec![0u8; RX_LEN];
    let mut scratch = [0u8; 4096];
    let mut pkt = Vec::new();
    let mut last_tid = 0u64;
    let mut rest = data;
    // Chunks: a mode byte, a length byte, then that many bytes.
    while let [mode, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        while let Some(o) = client.peek_transmit() {
            if !o.completion {
                last_tid = o.transaction_id;
            }
            client.transmitted();
        }
        match mode % 4 {
            // A raw packet.
            0 => pkt = body.to_vec(),
            // A completion for the last request the client sent, with this NVSP payload.
            1 => packet(&mut pkt, PacketType::COMPLETION, last_tid, &[], body),
            // RNDIS bytes into the receive buffer at a chosen offset, one range naming them.
            2 => {
                let off = body.first().map_or(0, |&b| usize::from(b) * 64) % RX_LEN;
                let msg = body.get(1..).unwrap_or(&[]);
                let k = msg.len().min(RX_LEN - off);
                rx[off..off + k].copy_from_slice(&msg[..k]);
                let mut ext = XferPageHeader {
                    xfer_pageset_id: nvsp::RECEIVE_BUFFER_ID,
                    sender_owns_set: 0,
                    reserved: 0,
                    range_count: 1,
                }
                .as_bytes()
                .to_vec();
                ext.extend_from_slice(&(k as u32).to_le_bytes());
                ext.extend_from_slice(&(off as u32).to_le_bytes());
                let m = nvsp::NvspMessage::send_rndis_packet(nvsp::channel_type::CONTROL, None);
                packet(&mut pkt, PacketType::DATA_USING_XFER_PAGES, 9, &ext, m.as_bytes());
            }
            // Transmit (once ready) so completions have sections to free.
            _ => {
                if let Ok(r) = client.begin_transmit(body.len().max(1), TxOffload::default()) {
                    let _ = client.queue_transmit(&r);
                }
                continue;
            }
        }
        if let Ok(view) = PacketView::new(&pkt) {
            let _ = client.on_packet(&view, &rx[..], &mut scratch, |_| {});
        }
    }
});
