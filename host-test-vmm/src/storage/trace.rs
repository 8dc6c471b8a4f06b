//! Decoding of VSTOR packets and SCSI CDBs for the `--trace` output. The
//! storage controller writes one `"kind": "vstor"` line per request and per
//! completion, next to the server's generic packet lines.

use super::target::opcode_name;
use crate::vmbus::trace::{Dir, TraceWriter};
use serde_json::{json, Map, Value};
use vsc_storage::scsi::Cdb;
use vsc_storage::vstor::{Operation, ProtocolVersion, VstorPacket};

/// The fields of a CDB worth reading in a trace: operation name, and LBA /
/// block count / allocation length / page where the command has them
/// (decoded with `vsc_storage`'s [`Cdb::parse`]; a CDB it refuses shows
/// the reason).
pub fn decode_cdb(cdb: &[u8]) -> Value {
    let mut m = Map::new();
    let Some(&opcode) = cdb.first() else {
        return json!({"scsi_op": "EMPTY"});
    };
    m.insert("scsi_op".into(), Value::from(opcode_name(opcode)));
    m.insert("opcode".into(), Value::from(opcode));
    let mut put = |k: &str, v: u64| {
        m.insert(k.into(), Value::from(v));
    };
    match Cdb::parse(cdb) {
        Ok(Cdb::Read(rw) | Cdb::Write(rw)) => {
            put("lba", rw.lba);
            put("blocks", u64::from(rw.blocks));
            if rw.fua {
                put("fua", 1);
            }
        }
        Ok(Cdb::SynchronizeCache(s)) => {
            put("lba", s.lba);
            put("blocks", u64::from(s.blocks));
        }
        Ok(Cdb::Inquiry {
            evpd,
            page_code,
            allocation_length,
        }) => {
            put("evpd", u64::from(evpd));
            put("page", u64::from(page_code));
            put("alloc_len", u64::from(allocation_length));
        }
        Ok(Cdb::ModeSense(ms)) => {
            put("page", u64::from(ms.page_code));
            put("subpage", u64::from(ms.subpage));
            put("alloc_len", u64::from(ms.allocation_length));
        }
        Ok(Cdb::ReadCapacity16 { allocation_length })
        | Ok(Cdb::ReportLuns {
            allocation_length, ..
        }) => put("alloc_len", u64::from(allocation_length)),
        Ok(Cdb::Unmap {
            parameter_list_length,
            ..
        }) => put("param_len", u64::from(parameter_list_length)),
        Ok(_) => {}
        Err(e) => {
            m.insert("cdb_error".into(), Value::from(e.to_string()));
        }
    }
    Value::Object(m)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The fields of a VSTOR packet (request or completion) for the trace.
pub fn decode_packet(p: &VstorPacket, version: Option<ProtocolVersion>) -> Value {
    let mut m = Map::new();
    m.insert("operation".into(), Value::from(p.operation.0));
    m.insert("flags".into(), Value::from(p.flags));
    m.insert("status".into(), Value::from(format!("{:#x}", p.status.0)));
    match p.operation {
        Operation::QUERY_PROTOCOL_VERSION => {
            let v = p.version();
            m.insert(
                "version".into(),
                Value::from(format!("{:?}", v.major_minor)),
            );
        }
        Operation::CREATE_SUB_CHANNELS => {
            m.insert("count".into(), Value::from(p.sub_channel_count()));
        }
        Operation::EXECUTE_SRB | Operation::COMPLETE_IO => {
            let s = p.srb();
            if p.operation == Operation::EXECUTE_SRB {
                m.insert("cdb".into(), Value::from(hex(s.cdb())));
                if let Value::Object(c) = decode_cdb(s.cdb()) {
                    m.extend(c);
                }
            } else if s.srb_status.0 != 0 {
                m.insert("srb_status".into(), Value::from(s.srb_status.0));
                m.insert("scsi_status".into(), Value::from(s.scsi_status));
                let sense = s.sense(version.unwrap_or(ProtocolVersion::WIN10));
                if sense.len() >= 14 {
                    m.insert("sense_key".into(), Value::from(sense[2] & 0xF));
                    m.insert("asc".into(), Value::from(sense[12]));
                    m.insert("ascq".into(), Value::from(sense[13]));
                }
            }
            m.insert(
                "lun".into(),
                Value::from(format!("{}:{}:{}", s.path_id, s.target_id, s.lun)),
            );
            m.insert("data_in".into(), Value::from(s.data_in.0));
            m.insert(
                "data_transfer_length".into(),
                Value::from(s.data_transfer_length),
            );
        }
        Operation::QUERY_PROPERTIES => {
            let pr = p.properties();
            if pr.max_transfer_bytes != 0 {
                m.insert("max_channels".into(), Value::from(pr.max_channel_count));
                m.insert("prop_flags".into(), Value::from(pr.flags));
                m.insert(
                    "max_transfer_bytes".into(),
                    Value::from(pr.max_transfer_bytes),
                );
            }
        }
        _ => {}
    }
    Value::Object(m)
}

/// Write one decoded line.
pub(crate) fn record(
    t: &TraceWriter,
    dir: Dir,
    relid: u32,
    trans_id: u64,
    name: &str,
    p: &VstorPacket,
    version: Option<ProtocolVersion>,
) {
    let mut v = decode_packet(p, version);
    if let Value::Object(m) = &mut v {
        m.insert("trans_id".into(), Value::from(trans_id));
    }
    t.record(dir, "vstor", name, Some(relid), v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsc_storage::vstor::VmSrb;

    #[test]
    fn cdbs_and_packets_decode() {
        let v = decode_cdb(&[0x28, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]);
        assert_eq!(v["scsi_op"], "READ_10");
        assert_eq!(v["lba"], 0x1000);
        assert_eq!(v["blocks"], 8);
        let v = decode_cdb(&[0x88, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(v["lba"], 1u64 << 32);
        assert_eq!(v["blocks"], 256);
        assert_eq!(decode_cdb(&[0x12, 1, 0x83, 0, 4, 0])["page"], 0x83);
        assert_eq!(decode_cdb(&[])["scsi_op"], "EMPTY");
        // Truncated CDBs say why, never panic.
        let v = decode_cdb(&[0x8A, 0]);
        assert!(v.get("lba").is_none());
        assert!(v.get("cdb_error").is_some());
        let mut srb = VmSrb::default();
        srb.set_cdb(&[0x00, 0, 0, 0, 0, 0]);
        srb.lun = 3;
        let p = VstorPacket::execute_srb(&srb);
        let v = decode_packet(&p, None);
        assert_eq!(v["scsi_op"], "TEST_UNIT_READY");
        assert_eq!(v["lun"], "0:0:3");
        let p = VstorPacket::query_version(ProtocolVersion::WIN10);
        assert_eq!(decode_packet(&p, None)["version"], "6.2");
    }
}
