//! IC messages decoded for the VMBus trace (`"kind": "ic"` lines next to
//! the packet lines): header fields and the service body, from the raw
//! payload either side sent. Never panics, whatever the bytes.

use ic_services::fcopy::{FcopyHeader, FcopyOperation, FcopyStart, FcopyWriteHeader};
use ic_services::framing::{self, IcMessageType};
use ic_services::heartbeat::HeartbeatBody;
use ic_services::kvp::{
    KvpDeleteMessage, KvpEnumerateMessage, KvpGetSetMessage, KvpHeader, KvpValue,
};
use ic_services::negotiate;
use ic_services::shutdown::ShutdownBody;
use ic_services::timesync;
use ic_services::vss::VssBody;
use serde_json::{json, Map, Value};
use zerocopy::FromBytes;

use super::services::kvp_pool_name;

fn prefix<T: FromBytes>(b: &[u8]) -> Option<T> {
    T::read_from_prefix(b).ok().map(|(v, _)| v)
}

fn record(r: &KvpValue) -> Value {
    use ic_services::kvp::KvpData;
    let value = match r.data() {
        Some(KvpData::String(s)) => json!(s.to_string()),
        Some(KvpData::U32(v)) => json!(v),
        Some(KvpData::U64(v)) => json!(v),
        Some(KvpData::Other { value_type, bytes }) => {
            json!({"value_type": value_type, "len": bytes.len()})
        }
        None => Value::Null,
    };
    json!({
        "key": r.key().map(|k| k.to_string()),
        "value_type": r.value_type.get(),
        "value": value,
    })
}

fn kvp(body: &[u8]) -> Value {
    let Some(h) = prefix::<KvpHeader>(body) else {
        return json!({"body_error": "short KVP header"});
    };
    let op = h.operation.0;
    let name = [
        "GET",
        "SET",
        "DELETE",
        "ENUMERATE",
        "GET_IP_INFO",
        "SET_IP_INFO",
    ]
    .get(usize::from(op))
    .copied()
    .unwrap_or("UNKNOWN");
    let mut v = json!({"operation": name, "pool": kvp_pool_name(h.pool)});
    match op {
        0 | 1 => {
            if let Some(m) = prefix::<KvpGetSetMessage>(body) {
                v["record"] = record(&m.record);
            }
        }
        2 => {
            if let Some(m) = prefix::<KvpDeleteMessage>(body) {
                v["key"] = json!(
                    ic_services::kvp::Utf16::from_sized(&m.key, m.key_size.get())
                        .map(|k| k.to_string())
                );
            }
        }
        3 => {
            if let Some(m) = prefix::<KvpEnumerateMessage>(body) {
                v["index"] = json!(m.index.get());
                v["record"] = record(&m.record);
            }
        }
        _ => {}
    }
    v
}

fn fcopy(body: &[u8]) -> Value {
    let Some(h) = prefix::<FcopyHeader>(body) else {
        return json!({"body_error": "short file-copy header"});
    };
    let op = h.operation;
    let name = match op {
        FcopyOperation::START_FILE_COPY => "START_FILE_COPY",
        FcopyOperation::WRITE_TO_FILE => "WRITE_TO_FILE",
        FcopyOperation::COMPLETE_FCOPY => "COMPLETE_FCOPY",
        FcopyOperation::CANCEL_FCOPY => "CANCEL_FCOPY",
        _ => "UNKNOWN",
    };
    let mut v = json!({"operation": name});
    if op == FcopyOperation::START_FILE_COPY {
        if let Some(s) = prefix::<FcopyStart>(body) {
            let text = |a: &[u8]| {
                ic_services::kvp::Utf16::from_sized(a, a.len() as u32).map(|t| t.to_string())
            };
            v["file_name"] = json!(text(&s.file_name));
            v["path_name"] = json!(text(&s.path_name));
            v["copy_flags"] = json!(s.copy_flags.get());
            v["file_size"] = json!(s.file_size.get());
        }
    } else if op == FcopyOperation::WRITE_TO_FILE {
        if let Some(w) = prefix::<FcopyWriteHeader>(body) {
            v["offset"] = json!(w.offset.get());
            v["size"] = json!(w.size.get());
        }
    }
    v
}

fn body_fields(header: &framing::IcMessageHeader, body: &[u8]) -> Value {
    let t = header.ic.message_type;
    let major = header.ic.message_version.major();
    match t {
        IcMessageType::NEGOTIATE => match negotiate::parse_body(body) {
            Ok(n) => json!({
                "framework_versions": n.framework.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
                "message_versions": n.message.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"body_error": e.to_string()}),
        },
        IcMessageType::HEARTBEAT => match prefix::<HeartbeatBody>(body).or_else(|| {
            // Linux accepts a body of just the sequence number.
            let mut b = [0u8; 40];
            let n = body.len().min(40);
            b[..n].copy_from_slice(&body[..n]);
            (body.len() >= 8)
                .then(|| prefix::<HeartbeatBody>(&b))
                .flatten()
        }) {
            Some(h) => {
                json!({"seq_num": h.seq_num.get(), "application_state": h.application_state.get()})
            }
            None => json!({"body_error": "short heartbeat body"}),
        },
        IcMessageType::SHUTDOWN => match prefix::<ShutdownBody>(body) {
            Some(s) => json!({
                "reason_code": s.reason_code.get(),
                "timeout_seconds": s.timeout_seconds.get(),
                "flags": s.flags.get(),
            }),
            None => json!({"body_error": "short shutdown body"}),
        },
        IcMessageType::TIMESYNC => match timesync::parse_body(major, body) {
            Some(s) => json!({
                "parent_time": s.host_time,
                "reference_time": s.reference_time,
                "flags": s.flags,
            }),
            None => json!({"body_error": "short time-sync body"}),
        },
        IcMessageType::KVP_EXCHANGE => kvp(body),
        IcMessageType::VSS => match prefix::<VssBody>(body) {
            Some(v) => json!({"operation": v.operation.0, "flags": v.flags.get()}),
            None => json!({"body_error": "short VSS body"}),
        },
        IcMessageType::FCOPY => fcopy(body),
        _ => Value::Object(Map::new()),
    }
}

/// The trace type name and fields of an IC packet payload. A payload that is not a well-framed IC message gives
/// `"IC_MALFORMED"` with the framing error.
pub fn describe(payload: &[u8]) -> (String, Value) {
    match framing::parse(payload) {
        Ok(m) => {
            let h = &m.header.ic;
            let name = h.message_type.name().map_or_else(
                || format!("IC_{}", h.message_type.get()),
                |n| format!("IC_{n}"),
            );
            let mut v = json!({
                "framework_version": h.framework_version.to_string(),
                "message_version": h.message_version.to_string(),
                "status": h.status.get(),
                "status_name": h.status.name(),
                "ic_transaction_id": h.transaction_id,
                "icflags": h.flags.into_bits(),
                "body_len": m.body.len(),
            });
            if let (Value::Object(dst), Value::Object(src)) =
                (&mut v, body_fields(&m.header, m.body))
            {
                dst.extend(src);
            }
            (name, v)
        }
        Err(e) => (
            "IC_MALFORMED".to_owned(),
            json!({"error": e.to_string(), "len": payload.len()}),
        ),
    }
}
