//! NVSP and RNDIS decoding for `--trace` (JSON fields per message), in the
//! style of `storage::trace`: names from vsc-net's types, the fields that
//! matter for debugging a guest, and the parse error for malformed bytes.

use serde_json::{json, Value};
use vsc_net::nvsp::{self, Message as N};
use vsc_net::rndis::{self, Message as R};

/// (name, fields) of an NVSP message.
pub fn decode_nvsp(bytes: &[u8]) -> (String, Value) {
    let m = match nvsp::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            return (
                "NVSP_MALFORMED".into(),
                json!({ "error": e.to_string(), "len": bytes.len() }),
            )
        }
    };
    let t = m.msg_type();
    let name = t
        .name()
        .map_or_else(|| format!("NVSP_{}", t.0), str::to_owned);
    let v = match m {
        N::Init(i) => {
            json!({ "min": format!("{:#x}", i.min_protocol_version.0), "max": format!("{:#x}", i.max_protocol_version.0) })
        }
        N::InitComplete(c) => {
            json!({ "version": format!("{:#x}", c.negotiated_protocol_version.0), "status": c.status.0 })
        }
        N::SendNdisVersion(v) => json!({ "ndis": format!("{}.{}", v.ndis_major, v.ndis_minor) }),
        N::SendNdisConfig(c) => json!({ "mtu": c.mtu }),
        N::SendReceiveBuffer(b) | N::SendSendBuffer(b) => {
            json!({ "gpadl": b.gpadl_handle, "id": b.id })
        }
        N::SendReceiveBufferComplete(c, s) => {
            let secs: Vec<Value> = s.iter().map(|x| json!({ "offset": x.offset, "sub_alloc_size": x.sub_alloc_size, "num_sub_allocs": x.num_sub_allocs })).collect();
            json!({ "status": c.status.0, "sections": secs })
        }
        N::SendSendBufferComplete(c) => {
            json!({ "status": c.status.0, "section_size": c.section_size })
        }
        N::RevokeReceiveBuffer(b) | N::RevokeSendBuffer(b) => json!({ "id": b.id }),
        N::SendRndisPacket(p) => json!({
            "channel_type": if p.channel_type == nvsp::channel_type::CONTROL { "control" } else { "data" },
            "section": if p.send_buffer_section_index == nvsp::NO_SECTION { Value::Null } else { json!(p.send_buffer_section_index) },
            "section_size": p.send_buffer_section_size,
        }),
        N::SendRndisPacketComplete(c) => json!({ "status": c.status.0 }),
        N::Subchannel(r) => json!({ "op_or_status": r.op, "num": r.num_subchannels }),
        _ => json!({}),
    };
    (name, v)
}

/// (name, fields) of the first RNDIS message in `bytes`.
pub fn decode_rndis(bytes: &[u8]) -> (String, Value) {
    let m = match rndis::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            return (
                "RNDIS_MALFORMED".into(),
                json!({ "error": e.to_string(), "len": bytes.len() }),
            )
        }
    };
    match m {
        R::Packet(p) => (
            "PACKET".into(),
            json!({ "frame_len": p.data.len(), "ppi_len": p.ppi_bytes.len() }),
        ),
        R::Initialize(i) => (
            "INITIALIZE".into(),
            json!({ "req_id": i.request_id, "version": format!("{}.{}", i.major_version, i.minor_version), "max_xfer": i.max_transfer_size }),
        ),
        R::InitializeComplete(c) => (
            "INITIALIZE_COMPLETE".into(),
            json!({ "req_id": c.request_id, "status": format!("{:?}", c.status), "max_pkts": c.max_packets_per_message, "align": c.packet_alignment_factor }),
        ),
        R::Halt(h) => ("HALT".into(), json!({ "req_id": h.request_id })),
        R::Query(q, info) => (
            "QUERY".into(),
            json!({ "req_id": q.request_id, "oid": format!("{:?}", q.oid), "info_len": info.len() }),
        ),
        R::QueryComplete(q, info) => (
            "QUERY_COMPLETE".into(),
            json!({ "req_id": q.request_id, "status": format!("{:?}", q.status), "info_len": info.len() }),
        ),
        R::Set(q, info) => (
            "SET".into(),
            json!({ "req_id": q.request_id, "oid": format!("{:?}", q.oid), "info_len": info.len() }),
        ),
        R::SetComplete(c) => (
            "SET_COMPLETE".into(),
            json!({ "req_id": c.request_id, "status": format!("{:?}", c.status) }),
        ),
        R::Reset(_) => ("RESET".into(), json!({})),
        R::ResetComplete(c) => (
            "RESET_COMPLETE".into(),
            json!({ "status": format!("{:?}", c.status) }),
        ),
        R::IndicateStatus(s, _) => (
            "INDICATE_STATUS".into(),
            json!({ "status": format!("{:?}", s.status) }),
        ),
        R::Keepalive(k) => ("KEEPALIVE".into(), json!({ "req_id": k.request_id })),
        R::KeepaliveComplete(k) => (
            "KEEPALIVE_COMPLETE".into(),
            json!({ "req_id": k.request_id, "status": format!("{:?}", k.status) }),
        ),
        R::Other(t, body) => (
            format!("RNDIS_{:#x}", t.0),
            json!({ "body_len": body.len() }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsc_net::nvsp::{NvspMessage, ProtocolVersion};
    use vsc_net::rndis::Oid;
    use zerocopy::IntoBytes;

    #[test]
    fn decodes_and_survives_garbage() {
        let m = NvspMessage::init(ProtocolVersion::V61);
        let (n, v) = decode_nvsp(m.as_bytes());
        assert_eq!(n, "INIT");
        assert_eq!(v["max"], "0x60001");
        let m = NvspMessage::send_rndis_packet(nvsp::channel_type::CONTROL, None);
        assert_eq!(decode_nvsp(m.as_bytes()).1["channel_type"], "control");
        assert_eq!(decode_nvsp(&[1, 0]).0, "NVSP_MALFORMED");
        let mut b = [0u8; 64];
        let len = rndis::build_query(&mut b, 7, Oid::GEN_LINK_SPEED, &[]).unwrap();
        let (n, v) = decode_rndis(&b[..len]);
        assert_eq!(n, "QUERY");
        assert_eq!(v["oid"], "GEN_LINK_SPEED");
        assert_eq!(
            decode_rndis(&[4, 0, 0, 0, 200, 0, 0, 0]).0,
            "RNDIS_MALFORMED"
        );
    }
}
