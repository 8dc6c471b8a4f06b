//! The host VMBus server against arbitrary guest behaviour: channel messages
//! of any bytes posted on the VMBus message connections (after a valid
//! connect, so deep states are reachable), arbitrary bytes written over guest
//! RAM where rings and GPADL pages live, channel signals, and the guest
//! consuming (or not) the server's replies. Nothing may panic, on the vCPU
//! path or on the server's worker thread.
#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use host_test_vmm::hv::inprocess::InProcess;
use host_test_vmm::vmbus::echo::EchoVsp;
use host_test_vmm::vmbus::{VmbusOptions, VmbusServer};
use libfuzzer_sys::fuzz_target;
use vmbus_guest::message::{ChannelMessage, InitiateContact, MessageBuf};
use vmbus_guest::version::Version;

/// 1 MiB: small enough that fuzzed PFNs often land inside RAM.
const RAM: usize = 1 << 20;
const SIMP: u64 = 0x2000;
const SIEFP: u64 = 0x3000;
const INPUT: u64 = 0x6000;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes on connection 4 (or 1).
    Post {
        legacy: bool,
        bytes: Vec<u8>,
    },
    /// A message of a chosen type whose body is fuzzed: gets past the type check.
    Typed {
        msgtype: u8,
        body: Vec<u8>,
    },
    WriteRam {
        page: u8,
        offset: u16,
        bytes: Vec<u8>,
    },
    Signal {
        relid: u8,
        flag: u16,
    },
    Consume,
    AddEcho {
        index: u8,
    },
    Rescind {
        relid: u8,
    },
    Reset,
}

fuzz_target!(|ops: Vec<Op>| {
    let Ok(part) = InProcess::new(2, RAM) else {
        return;
    };
    if part.enable_hypercalls(0x1000).is_err()
        || part.enable_synic(0, SIMP, SIEFP).is_err()
        || part.unmask_sint(0, 2, 0x52).is_err()
    {
        return;
    }
    let Ok(server) = VmbusServer::new(Arc::clone(part.hv()), VmbusOptions::default()) else {
        return;
    };
    let _ = server.add_device(Box::new(EchoVsp::new(0)));
    // A valid connect first, so most fuzzed messages meet a connected server.
    let ic = InitiateContact::with_target_sint(Version::WIN10_V5_3, 0, 2, 0, 0x7000, 0x8000);
    if let Ok(b) = ChannelMessage::InitiateContact(ic).encode() {
        let _ = part.post_message(0, INPUT, 4, 1, b.as_bytes());
    }
    for op in ops.into_iter().take(128) {
        match op {
            Op::Post { legacy, bytes } => {
                let conn = if legacy { 1 } else { 4 };
                let _ = part.post_message(0, INPUT, conn, 1, &bytes[..bytes.len().min(240)]);
            }
            Op::Typed { msgtype, body } => {
                let mut m = vec![u32::from(msgtype % 26) as u8, 0, 0, 0, 0, 0, 0, 0];
                m.extend_from_slice(&body[..body.len().min(232)]);
                if let Ok(b) = MessageBuf::from_bytes(&m) {
                    let _ = part.post_message(0, INPUT, 4, 1, b.as_bytes());
                } else {
                    let _ = part.post_message(0, INPUT, 4, 1, &m);
                }
            }
            Op::WriteRam {
                page,
                offset,
                bytes,
            } => {
                let gpa =
                    0x10_0000 - 0x10_0000 / 2 + u64::from(page) * 4096 + u64::from(offset % 4096);
                let _ = part.write_bytes(gpa % RAM as u64, &bytes);
            }
            Op::Signal { relid, flag } => {
                let _ = part.signal_event(0, 0x2000 | u32::from(relid), flag);
            }
            Op::Consume => {
                let _ = part.complete_message(0, SIMP, 2);
            }
            Op::AddEcho { index } => {
                let _ = server.add_device(Box::new(EchoVsp::new(u16::from(index))));
            }
            Op::Rescind { relid } => {
                let _ = server.rescind(u32::from(relid));
            }
            Op::Reset => server.reset(),
        }
    }
    server.shutdown();
    part.hv().shutdown();
});
