//! The guest's integration-component services reading what a (hostile) host
//! sent: every service endpoint takes a valid negotiation and then arbitrary
//! messages, in order, so both the framing checks and each service's body
//! parsing (heartbeat, shutdown, timesync v3/v4, KVP, VSS, file copy) are
//! reached. Any answer must be well framed; nothing may panic.
#![no_main]

use ic_services::fcopy::{FileCopy, FileSink};
use ic_services::framing::{self, Status};
use ic_services::heartbeat::Heartbeat;
use ic_services::host;
use ic_services::kvp::{Kvp, KvpPool, StaticKvp, Utf16};
use ic_services::service::{Endpoint, IcService};
use ic_services::shutdown::{Shutdown, ShutdownAction, ShutdownHandler};
use ic_services::timesync::{ClockAdjust, TimeSample, TimeSync};
use ic_services::vss::{Vss, VssHandler};
use libfuzzer_sys::fuzz_target;

/// Agrees to everything, stores nothing.
struct Yes;
impl ShutdownHandler for Yes {
    fn decide(&mut self, _: &ShutdownAction, _: &[u8]) -> bool {
        true
    }
}
impl ClockAdjust for Yes {
    fn time_sample(&mut self, _: &TimeSample) {}
}
impl VssHandler for Yes {
    fn freeze(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn thaw(&mut self) -> Result<(), Status> {
        Ok(())
    }
}
impl FileSink for Yes {
    fn start(&mut self, _: Utf16<'_>, _: Utf16<'_>, _: u32, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), Status> {
        Ok(())
    }
    fn complete(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn cancel(&mut self) {}
}

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
