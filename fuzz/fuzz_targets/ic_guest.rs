//! The guest's integration-component services reading what a (hostile) host
//! sent: every service endpoint takes a valid negotiation and then arbitrary
//! messages, in order, so both the framing checks and each service's body
//! parsing (heartbeat, shutdown, timesync v3/v4, KVP, VSS, file copy) are
//! reached. Any answer must be well framed; nothing may panic.
#![no_main]

use ic_services::accept_all::AcceptAll as Yes;
use ic_services::fcopy::FileCopy;
use ic_services::framing;
use ic_services::heartbeat::Heartbeat;
use ic_services::host;
use ic_services::kvp::{Kvp, KvpPool, StaticKvp};
use ic_services::service::{Endpoint, IcService};
use ic_services::shutdown::Shutdown;
use ic_services::timesync::TimeSync;
use ic_services::vss::Vss;
use libfuzzer_sys::fuzz_target;

/// Negotiates `ep` properly, then feeds it every message of `msgs`.
fn serve<S: IcService>(mut ep: Endpoint<S>, msgs: &[&[u8]]) {
    let mut buf = [0u8; 512];
    if let Ok(n) = host::build_negotiate(&mut buf, 1, S::VERSIONS.framework, S::VERSIONS.message) {
        let mut resp = [0u8; 512];
        let _ = ep.handle(&buf[..n], &mut resp[..n]);
    }
    for msg in msgs {
        let mut resp = vec![0u8; msg.len()];
        if let Ok(n) = ep.handle(msg, &mut resp) {
            assert_eq!(n, msg.len(), "an answer reuses the request's length");
            framing::parse(&resp[..n]).expect("an answer is well framed");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Messages: a 2-byte little-endian length, then that many bytes.
    let mut msgs = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && msgs.len() < 16 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 4096;
        let n = n.min(rest.len() - 2);
        msgs.push(&rest[2..2 + n]);
        rest = &rest[2 + n..];
    }
    serve(Endpoint::new(Heartbeat::new()), &msgs);
    serve(Endpoint::new(Shutdown::new(Yes)), &msgs);
    serve(Endpoint::new(TimeSync::new(Yes)), &msgs);
    let entries = [
        (KvpPool::AUTO, "HostName", "hvkit"),
        (KvpPool::GUEST, "k", "v"),
    ];
    serve(
        Endpoint::new(Kvp::new(StaticKvp { entries: &entries })),
        &msgs,
    );
    serve(Endpoint::new(Vss::new(Yes)), &msgs);
    serve(Endpoint::new(FileCopy::new(Yes)), &msgs);
});
