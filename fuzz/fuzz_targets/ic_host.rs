//! The host's integration components reading what a (hostile) guest
//! answered: every host request (negotiation, heartbeat, shutdown, time
//! sync, KVP get/set/delete/enumerate, VSS, file copy) goes to a loopback
//! guest whose answer is a correct `ic_services` answer that the input then
//! patches, cuts, lengthens, replaces with raw bytes, duplicates or drops.
//! Every answer also goes through the trace decoder. Nothing may panic; the
//! host must turn every bad answer into an error.
#![no_main]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::Arbitrary;
use host_test_vmm::ic::{
    FileCopy, HostIcs, HostKvpValue, IcConfig, LoopbackGuest, Service, ShutdownKind,
    ShutdownRequest, TimeSyncMode,
};
use host_test_vmm::vmbus::TraceWriter;
use ic_services::accept_all::AcceptAll as Yes;
use ic_services::fcopy::FileCopy as GuestFileCopy;
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::{Kvp, KvpPool, StaticKvp};
use ic_services::service::{Endpoint, IcService};
use ic_services::shutdown::Shutdown;
use ic_services::timesync::TimeSync;
use ic_services::vss::{Vss, VssOperation};
use libfuzzer_sys::fuzz_target;

static AUTO: [(KvpPool, &str, &str); 3] = [
    (KvpPool::AUTO, "FullyQualifiedDomainName", "fuzz.example"),
    (KvpPool::AUTO, "OSName", "hvkit"),
    (KvpPool::EXTERNAL, "k", "v"),
];

/// How the guest answers one request.
#[derive(Arbitrary, Debug, Clone)]
enum Answer {
    /// The correct answer.
    Correct,
    /// The correct answer with bytes overwritten, then cut or lengthened.
    Patched {
        patches: Vec<(u16, Vec<u8>)>,
        len: Option<u16>,
    },
    /// Arbitrary bytes.
    Raw(Vec<u8>),
    /// No answer.
    Silent,
    /// The correct answer twice.
    Twice,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Heartbeat,
    Shutdown {
        kind: u8,
        force: bool,
        message: String,
    },
    TimeSync {
        sample: bool,
    },
    KvpGet {
        pool: u8,
        key: String,
    },
    KvpSet {
        pool: u8,
        key: String,
        value: Value,
    },
    KvpDelete {
        pool: u8,
        key: String,
    },
    KvpEnumerate {
        pool: u8,
    },
    Vss {
        op: u8,
    },
    CopyFile {
        name: String,
        path: String,
        len: u16,
    },
    Reopen {
        service: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Value {
    Text(String),
    U32(u32),
    U64(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    answers: Vec<Answer>,
    ops: Vec<Op>,
}

type Script = Arc<Mutex<VecDeque<Answer>>>;

fn guest<S: IcService + Send + 'static>(service: S, script: Script) -> LoopbackGuest {
    let mut ep = Endpoint::new(service);
    Box::new(move |_tid, req| {
        let mut out = vec![0u8; req.len()];
        let correct = ep.handle(req, &mut out).is_ok();
        let answer = script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Correct);
        match answer {
            Answer::Correct if correct => vec![out],
            Answer::Twice if correct => vec![out.clone(), out],
            Answer::Correct | Answer::Twice | Answer::Silent => Vec::new(),
            Answer::Raw(b) => vec![b],
            Answer::Patched { patches, len } => {
                for (at, bytes) in patches {
                    let at = usize::from(at) % out.len().max(1);
                    let n = bytes.len().min(out.len().saturating_sub(at));
                    out[at..at + n].copy_from_slice(&bytes[..n]);
                }
                if let Some(l) = len {
                    out.resize(usize::from(l), 0);
                }
                vec![out]
            }
        }
    })
}

fn open(ics: &HostIcs, s: Service, script: &Script) {
    let sc = Arc::clone(script);
    let g = match s {
        Service::Heartbeat => guest(Heartbeat::new(), sc),
        Service::Shutdown => guest(Shutdown::new(Yes), sc),
        Service::Timesync => guest(TimeSync::new(Yes), sc),
        Service::Kvp => guest(Kvp::new(StaticKvp { entries: &AUTO }), sc),
        Service::Vss => guest(Vss::new(Yes), sc),
        Service::Fcopy => guest(GuestFileCopy::new(Yes), sc),
    };
    ics.open_loopback(s, g);
}

fuzz_target!(|input: Input| {
    let mut cfg = IcConfig::new(Arc::new(|| 1234));
    cfg.heartbeat_interval = Duration::from_secs(3600);
    cfg.timesync_interval = Duration::from_secs(3600);
    cfg.trace = Some(Arc::new(TraceWriter::new(std::io::sink())));
    cfg.background = false;
    let ics = HostIcs::new(cfg).expect("no thread to start");
    let script: Script = Arc::new(Mutex::new(input.answers.into_iter().collect()));
    for s in Service::ALL {
        open(&ics, s, &script);
    }
    let t = Duration::ZERO;
    for op in input.ops.into_iter().take(64) {
        match op {
            Op::Heartbeat => drop(ics.heartbeat_now(t)),
            Op::Shutdown {
                kind,
                force,
                message,
            } => {
                let kind = match kind % 3 {
                    0 => ShutdownKind::PowerOff,
                    1 => ShutdownKind::Reboot,
                    _ => ShutdownKind::Hibernate,
                };
                let req = ShutdownRequest {
                    kind,
                    force,
                    message,
                };
                drop(ics.shutdown(&req, t));
            }
            Op::TimeSync { sample } => {
                let mode = if sample {
                    TimeSyncMode::Sample
                } else {
                    TimeSyncMode::Sync
                };
                drop(ics.time_sync(mode, t));
            }
            Op::KvpGet { pool, key } => drop(ics.kvp_get(KvpPool(pool), &key, t)),
            Op::KvpSet { pool, key, value } => {
                let v = match value {
                    Value::Text(s) => HostKvpValue::String(s),
                    Value::U32(n) => HostKvpValue::U32(n),
                    Value::U64(n) => HostKvpValue::U64(n),
                };
                drop(ics.kvp_set(KvpPool(pool), &key, &v, t));
            }
            Op::KvpDelete { pool, key } => drop(ics.kvp_delete(KvpPool(pool), &key, t)),
            Op::KvpEnumerate { pool } => drop(ics.kvp_enumerate(KvpPool(pool), t)),
            Op::Vss { op } => drop(ics.vss(VssOperation(op), t)),
            Op::CopyFile { name, path, len } => {
                let req = FileCopy {
                    file_name: name,
                    path,
                    data: vec![0x5A; usize::from(len) % 20_000],
                    overwrite: true,
                    create_path: false,
                };
                drop(ics.copy_file(&req, t));
            }
            Op::Reopen { service } => {
                let s = Service::ALL[usize::from(service) % Service::ALL.len()];
                ics.close_link(s);
                open(&ics, s, &script);
            }
        }
    }
    let _ = ics.status();
    ics.stop();
});
