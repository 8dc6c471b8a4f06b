//! The host's requests per service (fact sheet §7.4): shutdown, time sync,
//! KVP, VSS and file copy. Each builds `ic_services`' body structure, runs
//! one transaction (several for KVP enumeration and file copy) and checks
//! the guest's answer.

use std::time::{Duration, Instant};

use ic_services::framing::{IcMessageType, Status};
use ic_services::kvp::{
    self, encode_utf16, KvpData, KvpDeleteMessage, KvpEnumerateMessage, KvpGetSetMessage,
    KvpHeader, KvpOperation, KvpPool, KvpRecordMut,
};
use ic_services::negotiate::Negotiated;
use ic_services::shutdown::{ShutdownAction, ShutdownBody, ShutdownKind, DISPLAY_MESSAGE_SIZE};
use ic_services::timesync::{self, TimeSyncV3Body, TimeSyncV4Body, FLAG_SAMPLE, FLAG_SYNC};
use ic_services::vss::{VssBody, VssOperation};
use ic_services::{fcopy, fcopy::FcopyOperation};
use serde::Serialize;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::channel::{IcCore, IcReply};
use super::{HostIcs, IcError, Inner, Service};

/// Most entries a KVP enumeration walks before giving up (a guest that
/// never says "no more items" cannot keep the host looping).
pub const MAX_KVP_ENTRIES: u32 = 4096;
/// Data bytes per file-copy WRITE_TO_FILE (fact sheet §7.4).
pub const FCOPY_CHUNK: usize = fcopy::DATA_FRAGMENT_SIZE;

/// A graceful shutdown or reboot request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownRequest {
    /// Power off, reboot or hibernate.
    pub kind: ShutdownKind,
    /// The force flag (do not wait for applications).
    pub force: bool,
    /// Text the guest may show (sent as UTF-16LE, cut to fit 2048 bytes).
    pub message: String,
}

/// A time push: SYNC sets the guest clock now, SAMPLE is the periodic one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeSyncMode {
    /// Flags = SYNC (1).
    Sync,
    /// Flags = SAMPLE (2).
    Sample,
}

/// What a time push sent and what came back.
#[derive(Debug, Clone, Serialize)]
pub struct TimeSyncReport {
    /// SYNC or SAMPLE.
    pub mode: TimeSyncMode,
    /// The negotiated message version (4.0 carries the reference time).
    pub message_version: String,
    /// Host time sent, 100 ns units since 1601-01-01 UTC.
    pub parent_time: u64,
    /// The same as Unix nanoseconds.
    pub unix_time_ns: Option<u64>,
    /// The partition reference time sent with it (4.0 only).
    pub reference_time: Option<u64>,
    /// The guest's status (0 = S_OK).
    pub status: u32,
    /// Milliseconds until the guest answered.
    pub round_trip_ms: f64,
}

#[derive(Debug, Default)]
pub(crate) struct TimeSyncState {
    /// The channel open (its `opens` count) the initial SYNC went to.
    synced_open: Option<u64>,
    last: Option<TimeSyncReport>,
}

/// What a VSS request returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VssReport {
    /// The operation number.
    pub operation: u8,
    /// Its name.
    pub name: &'static str,
    /// The guest's flags field (dm_info / HOT_BACKUP flags).
    pub flags: u32,
}

/// A KVP value as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HostKvpValue {
    /// REG_SZ.
    String(String),
    /// REG_U32.
    U32(u32),
    /// REG_QWORD / REG_U64.
    U64(u64),
}

/// One enumerated KVP entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvpEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: HostKvpValue,
}

/// A file to copy into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// The guest file name.
    pub file_name: String,
    /// The guest directory.
    pub path: String,
    /// The contents.
    pub data: Vec<u8>,
    /// Overwrite an existing file.
    pub overwrite: bool,
    /// Create missing directories.
    pub create_path: bool,
}

/// What a file copy did.
#[derive(Debug, Clone, Serialize)]
pub struct FileCopyReport {
    /// Bytes copied.
    pub bytes: u64,
    /// WRITE_TO_FILE messages sent.
    pub fragments: u64,
}

const VSS_NAMES: [&str; 8] = [
    "create",
    "delete",
    "hot-backup",
    "get-dm-info",
    "bu-complete",
    "freeze",
    "thaw",
    "auto-recover",
];

/// A VSS operation from its name (`freeze`, `thaw`, `hot-backup`,
/// `get-dm-info`, `bu-complete`, `auto-recover`, `create`, `delete`).
pub fn parse_vss_operation(s: &str) -> Result<VssOperation, String> {
    VSS_NAMES
        .iter()
        .position(|n| *n == s)
        .and_then(|i| u8::try_from(i).ok())
        .map(VssOperation)
        .ok_or_else(|| {
            format!(
                "VSS operation {s:?}: expected one of {}",
                VSS_NAMES.join(", ")
            )
        })
}

const POOL_NAMES: [&str; 5] = [
    "external",
    "guest",
    "auto",
    "auto-external",
    "auto-internal",
];

/// A KVP pool from its name (`external`, `guest`, `auto`, `auto-external`,
/// `auto-internal`) or number (0..=4).
pub fn parse_kvp_pool(s: &str) -> Result<KvpPool, String> {
    POOL_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(s))
        .or_else(|| s.parse::<usize>().ok().filter(|&n| n < POOL_NAMES.len()))
        .and_then(|i| u8::try_from(i).ok())
        .map(KvpPool)
        .ok_or_else(|| {
            format!(
                "pool {s:?}: expected one of {} or 0..=4",
                POOL_NAMES.join(", ")
            )
        })
}

/// The name of a pool (its number for unknown ones).
pub fn kvp_pool_name(p: KvpPool) -> String {
    POOL_NAMES
        .get(usize::from(p.0))
        .map_or_else(|| p.0.to_string(), |n| (*n).to_owned())
}

/// `s` as UTF-16LE with a NUL in `out`, cut at a character boundary when it
/// does not fit.
fn utf16_truncated(s: &str, out: &mut [u8]) {
    let mut end = s.len();
    loop {
        if encode_utf16(&s[..end], out).is_some() {
            return;
        }
        end = s[..end].char_indices().last().map_or(0, |(i, _)| i);
    }
}

fn invalid(what: &str, value: &str, limit: usize) -> IcError {
    IcError::Invalid(format!(
        "{what} {value:?} does not fit in {limit} bytes of UTF-16 with its NUL"
    ))
}

fn kvp_value(core: &IcCore, data: Option<KvpData<'_>>) -> Result<HostKvpValue, IcError> {
    match data {
        Some(KvpData::String(s)) => Ok(HostKvpValue::String(s.to_string())),
        Some(KvpData::U32(v)) => Ok(HostKvpValue::U32(v)),
        Some(KvpData::U64(v)) => Ok(HostKvpValue::U64(v)),
        Some(KvpData::Other { value_type, .. }) => {
            Err(core.bad(format!("value of unknown type {value_type}")))
        }
        None => Err(core.bad("value size out of range".into())),
    }
}

/// The reply body as `T`, which must be complete (the guest answers in the
/// request's buffer, so it is as long as the request).
fn reply_as<T: FromBytes>(core: &IcCore, reply: &IcReply) -> Result<T, IcError> {
    T::read_from_prefix(&reply.body)
        .map(|(v, _)| v)
        .map_err(|_| {
            core.bad(format!(
                "body of {} bytes, {} expected",
                reply.body.len(),
                size_of::<T>()
            ))
        })
}

use std::mem::size_of;

/// Runs the time-sync part of the background thread: a SYNC once per
/// channel open, then a SAMPLE every interval.
pub(crate) fn timesync_tick(inner: &Inner, next_sample: &mut Option<Instant>) {
    let core = &inner.cores[Service::Timesync.index()];
    if core.negotiated().is_none() {
        *next_sample = None;
        return;
    }
    let opens = core.status().counters.opens;
    let synced = inner
        .timesync
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .synced_open;
    let now = Instant::now();
    let mode = if synced != Some(opens) {
        TimeSyncMode::Sync
    } else if next_sample.is_none_or(|t| now >= t) {
        TimeSyncMode::Sample
    } else {
        return;
    };
    match time_sync(inner, mode, Duration::from_secs(1)) {
        Ok(_) => {
            if mode == TimeSyncMode::Sync {
                inner
                    .timesync
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .synced_open = Some(opens);
            }
        }
        Err(e) => tracing::debug!(error = %e, ?mode, "time push"),
    }
    *next_sample = Some(Instant::now() + inner.cfg.timesync_interval);
}

fn time_sync(
    inner: &Inner,
    mode: TimeSyncMode,
    timeout: Duration,
) -> Result<TimeSyncReport, IcError> {
    let core = &inner.cores[Service::Timesync.index()];
    // The version decides the layout; a renegotiation between here and the
    // send would only happen across a reopen, which fails the transaction.
    let neg: Option<Negotiated> = core.negotiated();
    let major = neg.map_or(4, |n| n.message.major());
    let flags = match mode {
        TimeSyncMode::Sync => FLAG_SYNC,
        TimeSyncMode::Sample => FLAG_SAMPLE,
    };
    let parent_time = (inner.cfg.wall_time)();
    let reference_time = (inner.cfg.reference_time)();
    let body: Vec<u8> = if major >= 4 {
        TimeSyncV4Body {
            parent_time: U64::new(parent_time),
            reference_time: U64::new(reference_time),
            flags,
            ..TimeSyncV4Body::new_zeroed()
        }
        .as_bytes()
        .to_vec()
    } else {
        TimeSyncV3Body {
            parent_time: U64::new(parent_time),
            flags,
            ..TimeSyncV3Body::new_zeroed()
        }
        .as_bytes()
        .to_vec()
    };
    let start = Instant::now();
    let reply = core.transact(IcMessageType::TIMESYNC, &body, timeout)?;
    let rtt = start.elapsed();
    core.require_ok(&reply)?;
    let report = TimeSyncReport {
        mode,
        message_version: reply.header.ic.message_version.to_string(),
        parent_time,
        unix_time_ns: timesync::to_unix_nanos(parent_time),
        reference_time: (major >= 4).then_some(reference_time),
        status: reply.status().get(),
        round_trip_ms: rtt.as_secs_f64() * 1e3,
    };
    inner
        .timesync
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last = Some(report.clone());
    Ok(report)
}

impl HostIcs {
    /// Ask the guest to power off, reboot or hibernate; `Ok` when it
    /// answered S_OK (it acts after answering).
    pub fn shutdown(&self, req: &ShutdownRequest, timeout: Duration) -> Result<(), IcError> {
        let core = self.core(Service::Shutdown);
        let action = ShutdownAction {
            kind: req.kind,
            force: req.force,
            reason_code: ShutdownBody::REASON_PLANNED,
            timeout_seconds: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        };
        let mut body = ShutdownBody::new_zeroed();
        body.reason_code = U32::new(action.reason_code);
        body.timeout_seconds = U32::new(action.timeout_seconds);
        body.flags = U32::new(action.flags());
        utf16_truncated(
            &req.message,
            &mut body.display_message[..DISPLAY_MESSAGE_SIZE],
        );
        let reply = core.transact(IcMessageType::SHUTDOWN, body.as_bytes(), timeout)?;
        core.require_ok(&reply)
    }

    /// Push the host time now.
    pub fn time_sync(
        &self,
        mode: TimeSyncMode,
        timeout: Duration,
    ) -> Result<TimeSyncReport, IcError> {
        time_sync(&self.inner, mode, timeout)
    }

    /// The last time push that the guest acknowledged.
    pub fn last_time_sync(&self) -> Option<TimeSyncReport> {
        self.inner
            .timesync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .clone()
    }

    /// A VSS request.
    pub fn vss(&self, op: VssOperation, timeout: Duration) -> Result<VssReport, IcError> {
        let core = self.core(Service::Vss);
        let body = VssBody {
            operation: op,
            ..VssBody::default()
        };
        let reply = core.transact(IcMessageType::VSS, body.as_bytes(), timeout)?;
        core.require_ok(&reply)?;
        let answer: VssBody = reply_as(core, &reply)?;
        Ok(VssReport {
            operation: op.0,
            name: VSS_NAMES
                .get(usize::from(op.0))
                .copied()
                .unwrap_or("unknown"),
            flags: answer.flags.get(),
        })
    }

    fn kvp_record(op: KvpOperation, pool: KvpPool, key: &str) -> Result<KvpGetSetMessage, IcError> {
        let mut msg = KvpGetSetMessage::new_zeroed();
        msg.header = KvpHeader {
            operation: op,
            pool,
            ..KvpHeader::new_zeroed()
        };
        KvpRecordMut::new(&mut msg.record)
            .set_key(key)
            .map_err(|_| invalid("key", key, kvp::MAX_KEY_SIZE))?;
        Ok(msg)
    }

    /// KVP GET of `key` in `pool`.
    pub fn kvp_get(
        &self,
        pool: KvpPool,
        key: &str,
        timeout: Duration,
    ) -> Result<HostKvpValue, IcError> {
        let core = self.core(Service::Kvp);
        let msg = Self::kvp_record(KvpOperation::GET, pool, key)?;
        let reply = core.transact(IcMessageType::KVP_EXCHANGE, msg.as_bytes(), timeout)?;
        core.require_ok(&reply)?;
        let answer: KvpGetSetMessage = reply_as(core, &reply)?;
        kvp_value(core, answer.record.data())
    }

    /// KVP SET of `key` = `value` in `pool`.
    pub fn kvp_set(
        &self,
        pool: KvpPool,
        key: &str,
        value: &HostKvpValue,
        timeout: Duration,
    ) -> Result<(), IcError> {
        let core = self.core(Service::Kvp);
        let mut msg = Self::kvp_record(KvpOperation::SET, pool, key)?;
        let mut rec = KvpRecordMut::new(&mut msg.record);
        match value {
            HostKvpValue::String(s) => rec
                .set_value_str(s)
                .map_err(|_| invalid("value", s, kvp::MAX_VALUE_SIZE))?,
            HostKvpValue::U32(v) => rec.set_value_u32(*v),
            HostKvpValue::U64(v) => rec
                .set_value_raw(kvp::value_type::REG_QWORD, &v.to_le_bytes())
                .map_err(|_| IcError::Invalid("u64 value".into()))?,
        }
        let reply = core.transact(IcMessageType::KVP_EXCHANGE, msg.as_bytes(), timeout)?;
        core.require_ok(&reply)
    }

    /// KVP DELETE of `key` from `pool`.
    pub fn kvp_delete(&self, pool: KvpPool, key: &str, timeout: Duration) -> Result<(), IcError> {
        let core = self.core(Service::Kvp);
        let mut msg = KvpDeleteMessage::new_zeroed();
        msg.header = KvpHeader {
            operation: KvpOperation::DELETE,
            pool,
            ..KvpHeader::new_zeroed()
        };
        let n = encode_utf16(key, &mut msg.key)
            .ok_or_else(|| invalid("key", key, kvp::MAX_KEY_SIZE))?;
        msg.key_size = U32::new(n);
        let reply = core.transact(IcMessageType::KVP_EXCHANGE, msg.as_bytes(), timeout)?;
        core.require_ok(&reply)
    }

    /// Every entry of `pool`: ENUMERATE with index 0, 1, 2, ... until the
    /// guest answers "no more items" (fact sheet §7.4). `timeout` applies to
    /// each request.
    pub fn kvp_enumerate(
        &self,
        pool: KvpPool,
        timeout: Duration,
    ) -> Result<Vec<KvpEntry>, IcError> {
        let core = self.core(Service::Kvp);
        let mut items = Vec::new();
        for index in 0..MAX_KVP_ENTRIES {
            let mut msg = KvpEnumerateMessage::new_zeroed();
            msg.header = KvpHeader {
                operation: KvpOperation::ENUMERATE,
                pool,
                ..KvpHeader::new_zeroed()
            };
            msg.index = U32::new(index);
            let reply = core.transact(IcMessageType::KVP_EXCHANGE, msg.as_bytes(), timeout)?;
            if reply.status() == Status::NO_MORE_ITEMS {
                return Ok(items);
            }
            core.require_ok(&reply)?;
            let answer: KvpEnumerateMessage = reply_as(core, &reply)?;
            let key = answer
                .record
                .key()
                .ok_or_else(|| core.bad("key size out of range".into()))?
                .to_string();
            let value = kvp_value(core, answer.record.data())?;
            items.push(KvpEntry { key, value });
        }
        Err(core.bad(format!(
            "more than {MAX_KVP_ENTRIES} entries without \"no more items\""
        )))
    }

    /// Copy a file into the guest: START_FILE_COPY, WRITE_TO_FILE per
    /// [`FCOPY_CHUNK`] bytes, COMPLETE_FCOPY; on a failure after the start,
    /// CANCEL_FCOPY. `timeout` applies to each request.
    pub fn copy_file(&self, req: &FileCopy, timeout: Duration) -> Result<FileCopyReport, IcError> {
        let core = self.core(Service::Fcopy);
        let mut start = fcopy::FcopyStart::new_zeroed();
        start.header.operation = FcopyOperation::START_FILE_COPY;
        encode_utf16(&req.file_name, &mut start.file_name)
            .ok_or_else(|| invalid("file name", &req.file_name, fcopy::NAME_SIZE))?;
        encode_utf16(&req.path, &mut start.path_name)
            .ok_or_else(|| invalid("path", &req.path, fcopy::NAME_SIZE))?;
        if req.file_name.is_empty() {
            return Err(IcError::Invalid("the file name is empty".into()));
        }
        let mut flags = 0;
        if req.overwrite {
            flags |= fcopy::FcopyStart::OVERWRITE;
        }
        if req.create_path {
            flags |= fcopy::FcopyStart::CREATE_PATH;
        }
        start.copy_flags = U32::new(flags);
        start.file_size = U64::new(req.data.len() as u64);
        let reply = core.transact(IcMessageType::FCOPY, start.as_bytes(), timeout)?;
        core.require_ok(&reply)?;
        let result = (|| {
            let mut fragments = 0u64;
            let mut body = vec![0u8; fcopy::WRITE_BODY_SIZE];
            for (i, chunk) in req.data.chunks(FCOPY_CHUNK).enumerate() {
                let hdr = fcopy::FcopyWriteHeader {
                    header: fcopy::FcopyHeader {
                        operation: FcopyOperation::WRITE_TO_FILE,
                        ..fcopy::FcopyHeader::new_zeroed()
                    },
                    offset: U64::new((i * FCOPY_CHUNK) as u64),
                    size: U32::new(chunk.len() as u32),
                    ..fcopy::FcopyWriteHeader::new_zeroed()
                };
                let n = size_of::<fcopy::FcopyWriteHeader>();
                body.fill(0);
                body[..n].copy_from_slice(hdr.as_bytes());
                body[n..n + chunk.len()].copy_from_slice(chunk);
                let reply = core.transact(IcMessageType::FCOPY, &body, timeout)?;
                core.require_ok(&reply)?;
                fragments += 1;
            }
            let done = fcopy::FcopyHeader {
                operation: FcopyOperation::COMPLETE_FCOPY,
                ..fcopy::FcopyHeader::new_zeroed()
            };
            let reply = core.transact(IcMessageType::FCOPY, done.as_bytes(), timeout)?;
            core.require_ok(&reply)?;
            Ok(fragments)
        })();
        match result {
            Ok(fragments) => Ok(FileCopyReport {
                bytes: req.data.len() as u64,
                fragments,
            }),
            Err(e) => {
                let cancel = fcopy::FcopyHeader {
                    operation: FcopyOperation::CANCEL_FCOPY,
                    ..fcopy::FcopyHeader::new_zeroed()
                };
                if let Err(c) = core.transact(IcMessageType::FCOPY, cancel.as_bytes(), timeout) {
                    tracing::debug!(error = %c, "file copy cancel not acknowledged");
                }
                Err(e)
            }
        }
    }
}
