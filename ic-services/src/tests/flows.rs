//! Each service's flows and error paths, driven through the host encoders and parsers.
use super::*;
use crate::fcopy::{FileCopy, FileSink};
use crate::framing::{self, IcMessageType, BODY_OFFSET};
use crate::heartbeat::Heartbeat;
use crate::kvp::{value_type, Kvp, KvpData, KvpPool, KvpProvider, KvpRecordMut, StaticKvp, Utf16};
use crate::shutdown::{Shutdown, ShutdownAction, ShutdownBody, ShutdownHandler, ShutdownKind};
use crate::timesync::{self, ClockAdjust, TimeSample, TimeSync, FLAG_SAMPLE, FLAG_SYNC};
use crate::vss::{Vss, VssBody, VssHandler, VssOperation};
use crate::IcError;
use std::string::String;

fn status_of(resp: &[u8], t: IcMessageType) -> Status {
    host::parse_status(resp, t).unwrap()
}

// ---------------------------------------------------------------- negotiation (§7.3)

#[test]
fn negotiation_picks_guest_preference_and_rewrites_in_place() {
    let mut ep = Endpoint::new(TimeSync::new(Clock::default()));
    let v = IcVersion::new;
    // The host lists 1.0 first; the guest's preference (4.0, then 3.0) decides.
    let resp = exchange(&mut ep, |b| {
        host::build_negotiate(
            b,
            3,
            &[v(1, 0), v(3, 0)],
            &[v(1, 0), v(3, 0), v(4, 0), v(5, 0)],
        )
        .unwrap()
    });
    let r = host::parse_response(&resp).unwrap();
    assert_eq!(r.header.flags.into_bits(), 0x5);
    assert_eq!(r.transaction_id(), 3);
    assert_eq!(r.header.message_size.get(), 16);
    assert_eq!(r.status(), Status::OK);
    let (_, chosen) = host::parse_negotiate_response(&resp).unwrap();
    assert_eq!(
        chosen,
        Some(Negotiated {
            framework: v(3, 0),
            message: v(4, 0)
        })
    );
    // Renegotiation to an older set is accepted.
    let resp = exchange(&mut ep, |b| {
        host::build_negotiate(b, 4, &[v(1, 0)], &[v(1, 0)]).unwrap()
    });
    let (_, chosen) = host::parse_negotiate_response(&resp).unwrap();
    assert_eq!(chosen.unwrap().message, v(1, 0));
    assert_eq!(ep.negotiated().unwrap().framework, v(1, 0));
}

#[test]
fn negotiation_mismatch_answers_zero_counts_and_e_fail() {
    let mut ep = Endpoint::new(Heartbeat::new());
    let v = IcVersion::new;
    let resp = exchange(&mut ep, |b| {
        host::build_negotiate(b, 1, &[v(3, 0)], &[v(9, 0)]).unwrap()
    });
    let (status, chosen) = host::parse_negotiate_response(&resp).unwrap();
    assert_eq!((status, chosen), (Status::E_FAIL, None));
    assert_eq!(ep.negotiated(), None);
    // ... and service messages are refused until a negotiation succeeds.
    let hdr = RequestHeader::new(
        Negotiated {
            framework: v(3, 0),
            message: v(3, 0),
        },
        2,
    );
    let resp = exchange(&mut ep, |b| host::build_heartbeat(b, &hdr, 5).unwrap());
    assert_eq!(
        host::parse_heartbeat_response(&resp).unwrap(),
        (Status::E_FAIL, 5)
    );
    assert_eq!(ep.service().count(), 0);
    // An empty host list also fails.
    let resp = exchange(&mut ep, |b| host::build_negotiate(b, 1, &[], &[]).unwrap());
    assert_eq!(
        host::parse_negotiate_response(&resp).unwrap(),
        (Status::E_FAIL, None)
    );
}

#[test]
fn negotiation_rejects_bad_counts() {
    let mut ep = Endpoint::new(Heartbeat::new());
    // 101 framework versions: over Linux's limit.
    let many = [V3; 101];
    let mut body = vec![0u8; 8 + 102 * 4];
    body[0..2].copy_from_slice(&101u16.to_le_bytes());
    body[2..4].copy_from_slice(&1u16.to_le_bytes());
    for (i, ver) in many.iter().enumerate() {
        body[8 + i * 4..12 + i * 4].copy_from_slice(&[ver.major() as u8, 0, 0, 0]);
    }
    let hdr = RequestHeader::new(
        Negotiated {
            framework: V3,
            message: V3,
        },
        1,
    );
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::NEGOTIATE, &hdr, &body).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::NEGOTIATE), Status::E_FAIL);
    // Counts claiming more versions than the body holds.
    let body = [2, 0, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0];
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::NEGOTIATE, &hdr, &body).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::NEGOTIATE), Status::E_FAIL);
    // A body shorter than the negotiation header.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::NEGOTIATE, &hdr, &[1, 0]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::NEGOTIATE), Status::E_FAIL);
    assert_eq!(ep.negotiated(), None);
}

// ---------------------------------------------------------------- framing errors (§7.2)

#[test]
fn broken_framing_gets_no_answer() {
    let mut ep = Endpoint::new(Heartbeat::new());
    let hdr = negotiate(&mut ep);
    let mut req = buf();
    let n = host::build_heartbeat(&mut req, &hdr, 1).unwrap();
    let mut resp = buf();
    // Too short for the headers.
    assert_eq!(
        ep.handle(&req[..27], &mut resp),
        Err(IcError::TooShort { len: 27 })
    );
    // Pipe msg_size larger than the bytes.
    assert!(matches!(
        ep.handle(&req[..n - 1], &mut resp),
        Err(IcError::BadPipeSize { .. })
    ));
    // Up to 7 bytes of ring padding are fine; 8 are not.
    assert!(ep.handle(&req[..n + 7], &mut resp).is_ok());
    assert!(matches!(
        ep.handle(&req[..n + 8], &mut resp),
        Err(IcError::BadPipeSize { .. })
    ));
    // icmsgsize beyond the message.
    let mut bad = req[..n].to_vec();
    bad[18..20].copy_from_slice(&41u16.to_le_bytes());
    assert!(matches!(
        ep.handle(&bad, &mut resp),
        Err(IcError::BadMessageSize {
            message_size: 41,
            ..
        })
    ));
    // Oversized.
    let big = vec![0u8; framing::MAX_MESSAGE_SIZE + 1];
    let mut big_resp = vec![0u8; big.len()];
    assert!(matches!(
        ep.handle(&big, &mut big_resp),
        Err(IcError::TooLong { .. })
    ));
    // Response buffer too small.
    assert_eq!(
        ep.handle(&req[..n], &mut resp[..n - 1]),
        Err(IcError::BufferTooSmall { needed: n })
    );
    assert_eq!(ep.service().count(), 1, "only the padded one was answered");
}

#[test]
fn unknown_and_foreign_types_get_e_fail() {
    let mut ep = Endpoint::new(Heartbeat::new());
    let hdr = negotiate(&mut ep);
    for t in [
        IcMessageType::new(99),
        IcMessageType::SHUTDOWN,
        IcMessageType::KVP_EXCHANGE,
    ] {
        let resp = exchange(&mut ep, |b| {
            host::build_request(b, t, &hdr, &[0; 40]).unwrap()
        });
        let r = host::parse_response(&resp).unwrap();
        assert_eq!(r.status(), Status::E_FAIL);
        assert_eq!(r.header.message_type, t);
        assert_eq!(r.body, &[0; 40], "body untouched");
    }
    assert_eq!(ep.service().count(), 0);
}

#[test]
fn host_parsers_check_flags_and_type() {
    let mut b = buf();
    let hdr = RequestHeader::new(
        Negotiated {
            framework: V3,
            message: V3,
        },
        1,
    );
    let n = host::build_heartbeat(&mut b, &hdr, 1).unwrap();
    // A request is not a response.
    assert_eq!(host::parse_response(&b[..n]), Err(IcError::NotAResponse));
    b[25] = 0x5;
    assert_eq!(
        host::parse_status(&b[..n], IcMessageType::VSS),
        Err(IcError::UnexpectedType(IcMessageType::HEARTBEAT))
    );
    assert_eq!(host::parse_heartbeat_response(&b[..n]), Ok((Status::OK, 1)));
}

// ---------------------------------------------------------------- heartbeat (§7.4)

#[test]
fn heartbeat_answers_seq_plus_one() {
    let mut ep = Endpoint::new(Heartbeat::new());
    let hdr = negotiate(&mut ep);
    for seq in [0, 41, u64::MAX] {
        let resp = exchange(&mut ep, |b| host::build_heartbeat(b, &hdr, seq).unwrap());
        assert_eq!(
            host::parse_heartbeat_response(&resp).unwrap(),
            (Status::OK, seq.wrapping_add(1))
        );
        assert_eq!(host::parse_response(&resp).unwrap().transaction_id(), 1);
    }
    assert_eq!(ep.service().last_seq(), Some(u64::MAX));
    assert_eq!(ep.service().count(), 3);
    // The minimum body is 8 bytes; the reserved tail is left alone.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::HEARTBEAT, &hdr, &7u64.to_le_bytes()).unwrap()
    });
    assert_eq!(
        host::parse_heartbeat_response(&resp).unwrap(),
        (Status::OK, 8)
    );
    let mut body = [0xEE; 40];
    body[..8].copy_from_slice(&1u64.to_le_bytes());
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::HEARTBEAT, &hdr, &body).unwrap()
    });
    assert_eq!(&resp[36..68], &[0xEE; 32]);
    // Shorter: refused.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::HEARTBEAT, &hdr, &[1; 7]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::HEARTBEAT), Status::E_FAIL);
    assert_eq!(&resp[BODY_OFFSET..], &[1; 7]);
}

#[test]
fn status_field_echoed_on_success() {
    // Linux leaves the status alone on success: a host-set value comes back.
    let mut ep = Endpoint::new(Heartbeat::new());
    let mut req = buf();
    let n = host::build_negotiate(&mut req, 0, &[V3], &[V3]).unwrap();
    req[20..24].copy_from_slice(&0x1234u32.to_le_bytes());
    let mut resp = buf();
    ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(
        host::parse_response(&resp[..n]).unwrap().status(),
        Status::new(0x1234)
    );
}

// ---------------------------------------------------------------- shutdown (§7.4)

#[derive(Default)]
struct Decider {
    accept: bool,
    seen: Vec<(ShutdownAction, Vec<u8>)>,
}

impl ShutdownHandler for Decider {
    fn decide(&mut self, action: &ShutdownAction, message: &[u8]) -> bool {
        self.seen.push((*action, message[..4].to_vec()));
        self.accept
    }
}

#[test]
fn shutdown_flags_and_decisions() {
    let mut ep = Endpoint::new(Shutdown::new(Decider {
        accept: true,
        ..Decider::default()
    }));
    let hdr = negotiate(&mut ep);
    assert_eq!(hdr.message_version, IcVersion::new(3, 2));
    let kinds = [
        (0, ShutdownKind::PowerOff, false),
        (1, ShutdownKind::PowerOff, true),
        (2, ShutdownKind::Reboot, false),
        (3, ShutdownKind::Reboot, true),
        (4, ShutdownKind::Hibernate, false),
        (5, ShutdownKind::Hibernate, true),
    ];
    for (flags, kind, force) in kinds {
        let resp = exchange(&mut ep, |b| {
            host::build_shutdown(b, &hdr, flags, ShutdownBody::REASON_PLANNED, 60, b"stop").unwrap()
        });
        assert_eq!(status_of(&resp, IcMessageType::SHUTDOWN), Status::OK);
        let a = ep.service_mut().take_accepted().unwrap();
        assert_eq!((a.kind, a.force, a.flags()), (kind, force, flags));
        assert_eq!((a.reason_code, a.timeout_seconds), (0x8000_0000, 60));
        assert_eq!(ep.service_mut().take_accepted(), None);
    }
    assert_eq!(ep.service().handler().seen.len(), 6);
    assert_eq!(ep.service().handler().seen[0].1, b"stop");
    // Flags outside 0..=5: refused without asking.
    for flags in [6, 8, 0x100, u32::MAX] {
        let resp = exchange(&mut ep, |b| {
            host::build_shutdown(b, &hdr, flags, 0, 0, b"").unwrap()
        });
        assert_eq!(status_of(&resp, IcMessageType::SHUTDOWN), Status::E_FAIL);
    }
    assert_eq!(ep.service().handler().seen.len(), 6);
    // The guest declines.
    ep.service_mut().handler_mut().accept = false;
    let resp = exchange(&mut ep, |b| {
        host::build_shutdown(b, &hdr, 0, 0, 0, b"").unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::SHUTDOWN), Status::E_FAIL);
    assert_eq!(ep.service_mut().take_accepted(), None);
    // Short body.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::SHUTDOWN, &hdr, &[0; 11]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::SHUTDOWN), Status::E_FAIL);
}

// ---------------------------------------------------------------- timesync (§7.4)

#[derive(Default)]
struct Clock(Vec<TimeSample>);

impl ClockAdjust for Clock {
    fn time_sample(&mut self, sample: &TimeSample) {
        self.0.push(*sample);
    }
}

#[test]
fn timesync_v4_and_v3() {
    let mut ep = Endpoint::new(TimeSync::new(Clock::default()));
    let hdr = negotiate(&mut ep);
    assert_eq!(hdr.message_version.major(), 4);
    let t = timesync::from_unix_nanos(1_700_000_000_000_000_000);
    let resp = exchange(&mut ep, |b| {
        host::build_timesync(b, &hdr, t, 5_000, FLAG_SYNC).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::TIMESYNC), Status::OK);
    assert_eq!(&resp[28..36], &t.to_le_bytes(), "echoed");
    let s = ep.service().last_sample().unwrap();
    assert!(s.is_sync() && !s.is_sample());
    assert_eq!(s.reference_time, Some(5_000));
    assert_eq!(s.host_time_at(5_000 + 10_000_000), t + 10_000_000);
    assert_eq!(
        s.host_time_at(4_000),
        t,
        "a counter behind the sample adds nothing"
    );
    assert_eq!(
        timesync::to_unix_nanos(s.host_time),
        Some(1_700_000_000_000_000_000)
    );
    assert!(!s.is_stale(5_000 + timesync::STALE_AFTER_100NS));
    assert!(s.is_stale(5_001 + timesync::STALE_AFTER_100NS));
    assert_eq!(timesync::to_unix_nanos(5), None);
    // v4 minimum body is 22 bytes (Linux); 21 is refused.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::TIMESYNC, &hdr, &[0; 22]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::TIMESYNC), Status::OK);
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::TIMESYNC, &hdr, &[0; 21]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::TIMESYNC), Status::E_FAIL);
    assert_eq!(ep.service().clock().0.len(), 2);

    // A host that only speaks 3.0 gets the v3 layout.
    let mut ep = Endpoint::new(TimeSync::new(Clock::default()));
    let hdr = negotiate_with(
        &mut ep,
        &ServiceVersions {
            framework: &[V3],
            message: &[V3],
        },
    );
    let resp = exchange(&mut ep, |b| {
        host::build_timesync(b, &hdr, t, 0, FLAG_SAMPLE).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::TIMESYNC), Status::OK);
    let s = ep.service().last_sample().unwrap();
    assert_eq!(
        (s.host_time, s.reference_time, s.round_trip_time),
        (t, None, Some(0))
    );
    assert!(s.is_sample());
    assert_eq!(s.host_time_at(123), t);
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::TIMESYNC, &hdr, &[0; 24]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::TIMESYNC), Status::E_FAIL);
}

// ---------------------------------------------------------------- KVP (§7.4)

/// A small in-memory KVP store.
#[derive(Default)]
struct Store(Vec<(KvpPool, String, String)>);

fn text(s: Utf16<'_>) -> String {
    s.chars().collect()
}

impl KvpProvider for Store {
    fn get(
        &mut self,
        pool: KvpPool,
        key: Utf16<'_>,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let e = self.0.iter().find(|e| e.0 == pool && key.eq_str(&e.1));
        out.set_value_str(&e.ok_or(Status::E_FAIL)?.2)
    }
    fn set(&mut self, pool: KvpPool, key: Utf16<'_>, value: KvpData<'_>) -> Result<(), Status> {
        let value = match value {
            KvpData::String(s) => text(s),
            KvpData::U32(v) => std::format!("{v}"),
            KvpData::U64(v) => std::format!("{v}"),
            KvpData::Other { .. } => return Err(Status::INVALID_ARG),
        };
        let key = text(key);
        self.0.retain(|e| !(e.0 == pool && e.1 == key));
        self.0.push((pool, key, value));
        Ok(())
    }
    fn delete(&mut self, pool: KvpPool, key: Utf16<'_>) -> Result<(), Status> {
        let before = self.0.len();
        self.0.retain(|e| !(e.0 == pool && key.eq_str(&e.1)));
        if self.0.len() == before {
            Err(Status::NOT_FOUND)
        } else {
            Ok(())
        }
    }
    fn enumerate(
        &mut self,
        pool: KvpPool,
        index: u32,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let e = self
            .0
            .iter()
            .filter(|e| e.0 == pool)
            .nth(index as usize)
            .ok_or(Status::NO_MORE_ITEMS)?;
        out.set_key(&e.1)?;
        out.set_value_str(&e.2)
    }
}

fn kvp_text(resp: &[u8]) -> (Status, Option<String>, Option<String>) {
    let r = host::parse_kvp_response(resp).unwrap();
    let rec = r.record.unwrap();
    let value = match rec.data() {
        Some(KvpData::String(s)) => Some(text(s)),
        _ => None,
    };
    (r.status, rec.key().map(text), value)
}

#[test]
fn kvp_set_get_enumerate_delete() {
    let mut ep = Endpoint::new(Kvp::new(Store::default()));
    let hdr = negotiate(&mut ep);
    let ext = KvpPool::EXTERNAL;
    for (k, v) in [("VirtualMachineName", "vm-1"), ("Ключ", "значение 😀")] {
        let resp = exchange(&mut ep, |b| {
            host::build_kvp_set(b, &hdr, ext, k, v).unwrap()
        });
        assert_eq!(host::parse_kvp_response(&resp).unwrap().status, Status::OK);
    }
    // Numbers are accepted as typed values.
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_set_raw(b, &hdr, ext, "n", value_type::REG_U32, &7u32.to_le_bytes())
            .unwrap()
    });
    assert_eq!(host::parse_kvp_response(&resp).unwrap().status, Status::OK);
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_set_raw(
            b,
            &hdr,
            ext,
            "q",
            value_type::REG_QWORD,
            &9u64.to_le_bytes(),
        )
        .unwrap()
    });
    assert_eq!(host::parse_kvp_response(&resp).unwrap().status, Status::OK);
    assert_eq!(ep.service().provider().0[2].2, "7");
    assert_eq!(ep.service().provider().0[3].2, "9");
    // A number with the wrong size is refused.
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_set_raw(b, &hdr, ext, "n", value_type::REG_U32, &[1, 2]).unwrap()
    });
    assert_eq!(
        host::parse_kvp_response(&resp).unwrap().status,
        Status::INVALID_ARG
    );

    let resp = exchange(&mut ep, |b| {
        host::build_kvp_get(b, &hdr, ext, "Ключ").unwrap()
    });
    let (status, key, value) = kvp_text(&resp);
    assert_eq!(status, Status::OK);
    assert_eq!(key.as_deref(), Some("Ключ"));
    assert_eq!(value.as_deref(), Some("значение 😀"));
    let rec = host::parse_kvp_response(&resp).unwrap().record.unwrap();
    assert_eq!(rec.value_type.get(), value_type::REG_SZ);
    assert_eq!(
        rec.value_size.get() as usize,
        2 * ("значение 😀".encode_utf16().count() + 1)
    );
    // The other pool does not have it.
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_get(b, &hdr, KvpPool::GUEST, "Ключ").unwrap()
    });
    assert_eq!(kvp_text(&resp).0, Status::E_FAIL);

    // Enumerate until NO_MORE_ITEMS.
    let mut seen = Vec::new();
    for i in 0.. {
        let resp = exchange(&mut ep, |b| {
            host::build_kvp_enumerate(b, &hdr, ext, i).unwrap()
        });
        let r = host::parse_kvp_response(&resp).unwrap();
        assert_eq!(r.index, Some(i));
        if r.status == Status::NO_MORE_ITEMS {
            break;
        }
        let (_, k, v) = kvp_text(&resp);
        seen.push((k.unwrap(), v.unwrap()));
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], ("VirtualMachineName".into(), "vm-1".into()));

    let resp = exchange(&mut ep, |b| {
        host::build_kvp_delete(b, &hdr, ext, "n").unwrap()
    });
    let r = host::parse_kvp_response(&resp).unwrap();
    assert_eq!((r.status, r.record), (Status::OK, None));
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_delete(b, &hdr, ext, "n").unwrap()
    });
    assert_eq!(
        host::parse_kvp_response(&resp).unwrap().status,
        Status::NOT_FOUND
    );
}

#[test]
fn kvp_rejects_malformed_requests() {
    let mut ep = Endpoint::new(Kvp::new(Store::default()));
    let hdr = negotiate(&mut ep);
    let mut req = buf();
    // key_size beyond the 512-byte array.
    let n = host::build_kvp_get(&mut req, &hdr, KvpPool::GUEST, "k").unwrap();
    req[36..40].copy_from_slice(&513u32.to_le_bytes());
    let mut resp = buf();
    ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(
        host::parse_kvp_response(&resp[..n]).unwrap().status,
        Status::INVALID_ARG
    );
    // value_size beyond the 2048-byte array.
    let n = host::build_kvp_set(&mut req, &hdr, KvpPool::GUEST, "k", "v").unwrap();
    req[40..44].copy_from_slice(&2050u32.to_le_bytes());
    ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(
        host::parse_kvp_response(&resp[..n]).unwrap().status,
        Status::INVALID_ARG
    );
    // DELETE key_size too big.
    let n = host::build_kvp_delete(&mut req, &hdr, KvpPool::GUEST, "k").unwrap();
    req[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
    ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(
        host::parse_kvp_response(&resp[..n]).unwrap().status,
        Status::INVALID_ARG
    );
    assert!(ep.service().provider().0.is_empty());
    // Truncated bodies for each operation, and the IP operations.
    for (op, len) in [
        (0u8, 2575),
        (1, 2575),
        (2, 519),
        (3, 2579),
        (4, 3000),
        (5, 3000),
        (9, 8),
    ] {
        let mut body = vec![0u8; len];
        body[0] = op;
        let resp = exchange(&mut ep, |b| {
            host::build_request(b, IcMessageType::KVP_EXCHANGE, &hdr, &body).unwrap()
        });
        let expected = if op >= 4 {
            Status::NOT_SUPPORTED
        } else {
            Status::E_FAIL
        };
        assert_eq!(
            host::parse_status(&resp, IcMessageType::KVP_EXCHANGE).unwrap(),
            expected,
            "op {op}"
        );
    }
    // A body shorter than the KVP header.
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::KVP_EXCHANGE, &hdr, &[0; 3]).unwrap()
    });
    assert_eq!(
        status_of(&resp, IcMessageType::KVP_EXCHANGE),
        Status::E_FAIL
    );
    assert!(host::parse_kvp_response(&resp).is_err());
}

#[test]
fn static_kvp_answers_auto_pool() {
    let entries = [
        (KvpPool::AUTO, "OSName", "hvkit"),
        (KvpPool::GUEST, "other", "x"),
        (KvpPool::AUTO, "OSMajorVersion", "1"),
    ];
    let mut ep = Endpoint::new(Kvp::new(StaticKvp { entries: &entries }));
    let hdr = negotiate(&mut ep);
    let auto = KvpPool::AUTO;
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_enumerate(b, &hdr, auto, 1).unwrap()
    });
    assert_eq!(
        kvp_text(&resp),
        (Status::OK, Some("OSMajorVersion".into()), Some("1".into()))
    );
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_enumerate(b, &hdr, auto, 2).unwrap()
    });
    assert_eq!(
        host::parse_kvp_response(&resp).unwrap().status,
        Status::NO_MORE_ITEMS
    );
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_get(b, &hdr, auto, "OSName").unwrap()
    });
    assert_eq!(kvp_text(&resp).2.as_deref(), Some("hvkit"));
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_set(b, &hdr, auto, "a", "b").unwrap()
    });
    assert_eq!(
        host::parse_kvp_response(&resp).unwrap().status,
        Status::E_FAIL
    );
    let resp = exchange(&mut ep, |b| {
        host::build_kvp_delete(b, &hdr, auto, "OSName").unwrap()
    });
    assert_eq!(
        host::parse_kvp_response(&resp).unwrap().status,
        Status::E_FAIL
    );
}

#[test]
fn utf16_views() {
    let mut arr = [0u8; 16];
    let n = crate::kvp::encode_utf16("ab", &mut arr).unwrap();
    assert_eq!(n, 6);
    let s = Utf16::from_sized(&arr, n).unwrap();
    assert_eq!(
        (s.len(), std::format!("{s}"), std::format!("{s:?}")),
        (2, "ab".into(), "\"ab\"".into())
    );
    // Stops at the first NUL, ignores an odd byte, refuses a size beyond the array.
    assert_eq!(Utf16::from_sized(&arr, 16).unwrap().len(), 2);
    assert_eq!(Utf16::from_sized(&arr, 3).unwrap().len(), 1);
    assert!(Utf16::from_sized(&arr, 17).is_none());
    assert!(Utf16::from_sized(&arr, 0).unwrap().is_empty());
    // An unpaired surrogate decodes as U+FFFD.
    let lone = [0x00, 0xD8];
    assert_eq!(text(Utf16::from_sized(&lone, 2).unwrap()), "\u{FFFD}");
    assert!(crate::kvp::encode_utf16("abcdefgh", &mut arr).is_none());
}

// ---------------------------------------------------------------- VSS (§7.4)

#[derive(Default)]
struct Fs {
    calls: Vec<&'static str>,
    fail_freeze: bool,
}

impl VssHandler for Fs {
    fn freeze(&mut self) -> Result<(), Status> {
        self.calls.push("freeze");
        if self.fail_freeze {
            Err(Status::MACHINE_LOCKED)
        } else {
            Ok(())
        }
    }
    fn thaw(&mut self) -> Result<(), Status> {
        self.calls.push("thaw");
        Ok(())
    }
}

#[test]
fn vss_freeze_thaw_and_others() {
    let mut ep = Endpoint::new(Vss::new(Fs::default()));
    let hdr = negotiate(&mut ep);
    assert_eq!(hdr.message_version, IcVersion::new(5, 0));
    let run = |ep: &mut Endpoint<Vss<Fs>>, op| {
        let resp = exchange(ep, |b| host::build_vss(b, &hdr, op).unwrap());
        host::parse_vss_response(&resp).unwrap()
    };
    assert_eq!(run(&mut ep, VssOperation::FREEZE).0, Status::OK);
    assert!(ep.service().frozen());
    assert_eq!(run(&mut ep, VssOperation::THAW).0, Status::OK);
    assert!(!ep.service().frozen());
    let (s, body) = run(&mut ep, VssOperation::HOT_BACKUP);
    assert_eq!(
        (s, body.flags.get()),
        (Status::OK, VssBody::HBU_NO_AUTO_RECOVERY)
    );
    let (s, body) = run(&mut ep, VssOperation::GET_DM_INFO);
    assert_eq!((s, body.flags.get()), (Status::OK, 0));
    for op in [0, 1, 4, 7] {
        assert_eq!(run(&mut ep, VssOperation(op)).0, Status::OK);
    }
    assert_eq!(run(&mut ep, VssOperation(8)).0, Status::E_FAIL);
    ep.service_mut().handler_mut().fail_freeze = true;
    assert_eq!(run(&mut ep, VssOperation::FREEZE).0, Status::MACHINE_LOCKED);
    assert!(!ep.service().frozen());
    assert_eq!(ep.service().handler().calls, ["freeze", "thaw", "freeze"]);
    let resp = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::VSS, &hdr, &[5; 11]).unwrap()
    });
    assert_eq!(status_of(&resp, IcMessageType::VSS), Status::E_FAIL);
    assert_eq!(ep.service().handler().calls.len(), 3);
}

// ---------------------------------------------------------------- file copy (§7.4)

#[derive(Default)]
struct Sink {
    name: String,
    path: String,
    flags: u32,
    size: u64,
    data: Vec<u8>,
    done: bool,
    cancelled: u32,
}

impl FileSink for Sink {
    fn start(&mut self, n: Utf16<'_>, p: Utf16<'_>, flags: u32, size: u64) -> Result<(), Status> {
        if text(n) == "exists" {
            return Err(Status::ALREADY_EXISTS);
        }
        (self.name, self.path, self.flags, self.size) = (text(n), text(p), flags, size);
        self.data.clear();
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Status> {
        let end = offset as usize + data.len();
        if end > self.size as usize {
            return Err(Status::DISK_FULL);
        }
        self.data.resize(self.data.len().max(end), 0);
        self.data[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn complete(&mut self) -> Result<(), Status> {
        self.done = true;
        Ok(())
    }
    fn cancel(&mut self) {
        self.cancelled += 1;
    }
}

#[test]
fn fcopy_flow() {
    let mut ep = Endpoint::new(FileCopy::new(Sink::default()));
    let hdr = negotiate(&mut ep);
    let st = |r: &[u8]| status_of(r, IcMessageType::FCOPY);
    // Nothing started yet.
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_write(b, &hdr, 0, b"x").unwrap()
    });
    assert_eq!(st(&r), Status::E_FAIL);
    let r = exchange(&mut ep, |b| host::build_fcopy_complete(b, &hdr).unwrap());
    assert_eq!(st(&r), Status::E_FAIL);

    let file: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_start(b, &hdr, "a.bin", "/data", 3, file.len() as u64).unwrap()
    });
    assert_eq!(st(&r), Status::OK);
    assert!(ep.service().copying());
    for (i, chunk) in file.chunks(crate::fcopy::DATA_FRAGMENT_SIZE).enumerate() {
        let off = (i * crate::fcopy::DATA_FRAGMENT_SIZE) as u64;
        let r = exchange(&mut ep, |b| {
            host::build_fcopy_write(b, &hdr, off, chunk).unwrap()
        });
        assert_eq!(st(&r), Status::OK);
    }
    // A sink error is answered as is.
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_write(b, &hdr, 9_999, b"xy").unwrap()
    });
    assert_eq!(st(&r), Status::DISK_FULL);
    let r = exchange(&mut ep, |b| host::build_fcopy_complete(b, &hdr).unwrap());
    assert_eq!(st(&r), Status::OK);
    let s = ep.service().sink();
    assert_eq!(
        (s.name.as_str(), s.path.as_str(), s.flags),
        ("a.bin", "/data", 3)
    );
    assert_eq!(s.data, file);
    assert!(s.done && !ep.service().copying());

    // Size field beyond the fragment or beyond the bytes sent.
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_start(b, &hdr, "b", "/", 0, 10).unwrap()
    });
    assert_eq!(st(&r), Status::OK);
    let mut req = buf();
    let n = host::build_fcopy_write(&mut req, &hdr, 0, b"abc").unwrap();
    req[76..80].copy_from_slice(&6145u32.to_le_bytes());
    let mut resp = buf();
    ep.handle(&req[..n], &mut resp).unwrap();
    assert_eq!(st(&resp[..n]), Status::E_FAIL);
    let mut body = vec![0u8; 52 + 2];
    body[0] = 1;
    body[48] = 3; // size 3, but only 2 data bytes follow
    let r = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::FCOPY, &hdr, &body).unwrap()
    });
    assert_eq!(st(&r), Status::E_FAIL);
    // A new START cancels the copy in progress; CANCEL ends it; a second CANCEL is harmless.
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_start(b, &hdr, "c", "/", 0, 1).unwrap()
    });
    assert_eq!(st(&r), Status::OK);
    assert_eq!(ep.service().sink().cancelled, 1);
    let r = exchange(&mut ep, |b| host::build_fcopy_cancel(b, &hdr).unwrap());
    assert_eq!(st(&r), Status::OK);
    let r = exchange(&mut ep, |b| host::build_fcopy_cancel(b, &hdr).unwrap());
    assert_eq!(st(&r), Status::OK);
    assert_eq!(ep.service().sink().cancelled, 2);
    // Sink refusal, unknown operation, short header.
    let r = exchange(&mut ep, |b| {
        host::build_fcopy_start(b, &hdr, "exists", "/", 0, 1).unwrap()
    });
    assert_eq!(st(&r), Status::ALREADY_EXISTS);
    assert!(!ep.service().copying());
    let r = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::FCOPY, &hdr, &[9; 36]).unwrap()
    });
    assert_eq!(st(&r), Status::E_FAIL);
    let r = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::FCOPY, &hdr, &[0; 35]).unwrap()
    });
    assert_eq!(st(&r), Status::E_FAIL);
    let r = exchange(&mut ep, |b| {
        host::build_request(b, IcMessageType::FCOPY, &hdr, &[0; 1087]).unwrap()
    });
    assert_eq!(st(&r), Status::E_FAIL);
}
