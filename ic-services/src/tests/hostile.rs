//! Property tests: encoder/parser round trips, and hostile input (random bytes, random bodies
//! behind valid headers) that must give an error or an error status, never a panic.
use super::*;
use crate::accept_all::AcceptAll as Yes;
use crate::fcopy::FileCopy;
use crate::framing::{self, IcFlags, IcHeader, IcMessageType};
use crate::heartbeat::Heartbeat;
use crate::kvp::{Kvp, KvpData, KvpPool, KvpProvider, KvpRecordMut, StaticKvp, Utf16};
use crate::negotiate;
use crate::shutdown::{Shutdown, ShutdownAction};
use crate::timesync::TimeSync;
use crate::vss::Vss;
use proptest::prelude::*;
use std::string::String;
use zerocopy::little_endian::U16;

/// Records what SET delivers.
#[derive(Default)]
struct Last(Option<(u8, String, String)>);
impl KvpProvider for Last {
    fn get(&mut self, _: KvpPool, _: Utf16<'_>, out: &mut KvpRecordMut<'_>) -> Result<(), Status> {
        let v = self.0.as_ref().map(|l| l.2.clone()).unwrap_or_default();
        out.set_value_str(&v)
    }
    fn set(&mut self, pool: KvpPool, key: Utf16<'_>, value: KvpData<'_>) -> Result<(), Status> {
        let KvpData::String(v) = value else {
            return Err(Status::INVALID_ARG);
        };
        self.0 = Some((pool.0, key.chars().collect(), v.chars().collect()));
        Ok(())
    }
    fn delete(&mut self, _: KvpPool, _: Utf16<'_>) -> Result<(), Status> {
        Ok(())
    }
    fn enumerate(&mut self, _: KvpPool, _: u32, _: &mut KvpRecordMut<'_>) -> Result<(), Status> {
        Err(Status::NO_MORE_ITEMS)
    }
}

/// Feeds `msg` to a negotiated and a fresh endpoint of every service; checks the invariants
/// of any answer.
fn feed_all(msg: &[u8]) {
    fn one<S: IcService>(ep: &mut Endpoint<S>, msg: &[u8]) {
        let mut resp = vec![0u8; msg.len()];
        match ep.handle(msg, &mut resp) {
            Ok(n) => {
                assert_eq!(n, msg.len());
                let m = framing::parse(&resp).expect("an answer is well framed");
                assert_eq!(m.header.ic.flags, IcFlags::GUEST_RESPONSE);
                assert_eq!(m.header.ic.transaction_id, msg[24]);
                assert_eq!(m.header.pipe, framing::parse(msg).unwrap().header.pipe);
            }
            Err(_) => assert!(framing::parse(msg).is_err()),
        }
    }
    fn both<S: IcService>(mut ep: Endpoint<S>, msg: &[u8]) {
        one(&mut ep, msg);
        negotiate(&mut ep);
        one(&mut ep, msg);
    }
    both(Endpoint::new(Heartbeat::new()), msg);
    both(Endpoint::new(Shutdown::new(Yes)), msg);
    both(Endpoint::new(TimeSync::new(Yes)), msg);
    both(Endpoint::new(Kvp::new(Last::default())), msg);
    let entries = [(KvpPool::AUTO, "k", "v")];
    both(
        Endpoint::new(Kvp::new(StaticKvp { entries: &entries })),
        msg,
    );
    both(Endpoint::new(Vss::new(Yes)), msg);
    both(Endpoint::new(FileCopy::new(Yes)), msg);
    // The host parsers too.
    let _ = host::parse_response(msg);
    let _ = host::parse_negotiate_response(msg);
    let _ = host::parse_heartbeat_response(msg);
    let _ = host::parse_kvp_response(msg);
    let _ = host::parse_vss_response(msg);
}

/// A well-framed message of type `t` (any flags, id, versions) around `body`.
fn framed(t: u16, tid: u8, major: u16, body: &[u8]) -> Vec<u8> {
    let ic = IcHeader {
        framework_version: V3,
        message_type: IcMessageType::new(t),
        message_version: IcVersion::new(major, 0),
        message_size: U16::new(0),
        status: Status::OK,
        transaction_id: tid,
        flags: IcFlags::HOST_REQUEST,
        reserved: [0; 2],
    };
    let mut b = vec![0u8; framing::BODY_OFFSET + body.len()];
    framing::encode(&mut b, &ic, body).unwrap();
    b
}

fn version() -> impl Strategy<Value = IcVersion> {
    (0u16..6, 0u16..3).prop_map(|(a, b)| IcVersion::new(a, b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        feed_all(&bytes);
    }

    #[test]
    fn random_bodies_behind_valid_headers(
        t in 0u16..10,
        tid in any::<u8>(),
        major in 0u16..6,
        body in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        feed_all(&framed(t, tid, major, &body));
    }

    #[test]
    fn random_bodies_with_plausible_operations(
        t in prop_oneof![Just(2u16), Just(5), Just(7)],
        op in 0u8..10,
        len in 0usize..7000,
        fill in any::<u8>(),
    ) {
        let mut body = vec![fill; len];
        if let Some(b) = body.first_mut() {
            *b = op;
        }
        // fcopy's operation is a u32.
        if t == 7 && len >= 4 {
            body[..4].copy_from_slice(&u32::from(op).to_le_bytes());
        }
        feed_all(&framed(t, 1, 4, &body));
    }

    #[test]
    fn framing_round_trip(
        t in any::<u16>(), tid in any::<u8>(), flags in any::<u8>(), status in any::<u32>(),
        fw in version(), mv in version(),
        body in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let ic = IcHeader {
            framework_version: fw,
            message_type: IcMessageType::new(t),
            message_version: mv,
            message_size: U16::new(0),
            status: Status::new(status),
            transaction_id: tid,
            flags: IcFlags::from_bits(flags),
            reserved: [0; 2],
        };
        let mut b = vec![0u8; 28 + body.len()];
        let n = framing::encode(&mut b, &ic, &body).unwrap();
        let m = framing::parse(&b[..n]).unwrap();
        prop_assert_eq!(m.body, &body[..]);
        prop_assert_eq!(m.header.ic.message_type, ic.message_type);
        prop_assert_eq!(m.header.ic.status, ic.status);
        prop_assert_eq!(m.header.ic.flags, ic.flags);
        prop_assert_eq!(m.header.ic.transaction_id, tid);
        prop_assert_eq!(m.header.ic.message_size.get() as usize, body.len());
        prop_assert_eq!((m.header.ic.framework_version, m.header.ic.message_version), (fw, mv));
    }

    #[test]
    fn negotiation_matches_reference(
        host_fw in proptest::collection::vec(version(), 0..8),
        host_msg in proptest::collection::vec(version(), 0..8),
    ) {
        let mut ep = Endpoint::new(TimeSync::new(Yes));
        let mut req = buf();
        let n = host::build_negotiate(&mut req, 5, &host_fw, &host_msg).unwrap();
        let parsed = negotiate::parse_body(framing::parse(&req[..n]).unwrap().body).unwrap();
        prop_assert_eq!(parsed.framework.iter().collect::<Vec<_>>(), host_fw.clone());
        prop_assert_eq!(parsed.message.iter().collect::<Vec<_>>(), host_msg.clone());
        let mut resp = buf();
        let m = ep.handle(&req[..n], &mut resp).unwrap();
        let (status, chosen) = host::parse_negotiate_response(&resp[..m]).unwrap();
        // Reference: the first of the guest's lists that the host lists.
        let pick = |own: &[IcVersion], offered: &[IcVersion]| {
            own.iter().copied().find(|v| offered.contains(v))
        };
        let expected = pick(ServiceVersions::TIMESYNC.framework, &host_fw)
            .zip(pick(ServiceVersions::TIMESYNC.message, &host_msg))
            .map(|(framework, message)| Negotiated { framework, message });
        prop_assert_eq!(chosen, expected);
        prop_assert_eq!(status.is_ok(), expected.is_some());
        prop_assert_eq!(ep.negotiated(), expected);
    }

    #[test]
    fn heartbeat_round_trip(seq in any::<u64>(), tid in any::<u8>()) {
        let mut ep = Endpoint::new(Heartbeat::new());
        let mut hdr = negotiate(&mut ep);
        hdr.transaction_id = tid;
        let resp = exchange(&mut ep, |b| host::build_heartbeat(b, &hdr, seq).unwrap());
        prop_assert_eq!(host::parse_heartbeat_response(&resp).unwrap(), (Status::OK, seq.wrapping_add(1)));
        prop_assert_eq!(host::parse_response(&resp).unwrap().transaction_id(), tid);
    }

    #[test]
    fn kvp_strings_round_trip(
        pool in 0u8..5,
        key in "\\PC{1,255}",
        value in "\\PC{0,1000}",
    ) {
        let key_units = key.encode_utf16().count();
        let value_units = value.encode_utf16().count();
        prop_assume!(key_units < 256 && value_units < 1024);
        let mut ep = Endpoint::new(Kvp::new(Last::default()));
        let hdr = negotiate(&mut ep);
        let resp = exchange(&mut ep, |b| {
            host::build_kvp_set(b, &hdr, KvpPool(pool), &key, &value).unwrap()
        });
        prop_assert_eq!(host::parse_kvp_response(&resp).unwrap().status, Status::OK);
        let stored = ep.service().provider().0.clone().unwrap();
        // Keys and values end at their first NUL, as in C.
        let cut = |s: &str| s.split('\0').next().unwrap().to_string();
        prop_assert_eq!(stored, (pool, cut(&key), cut(&value)));
        let resp = exchange(&mut ep, |b| host::build_kvp_get(b, &hdr, KvpPool(pool), &key).unwrap());
        let r = host::parse_kvp_response(&resp).unwrap();
        let got: String = match r.record.unwrap().data().unwrap() {
            KvpData::String(s) => s.chars().collect(),
            _ => String::new(),
        };
        prop_assert_eq!(got, cut(&value));
    }

    #[test]
    fn shutdown_flags_decode(flags in any::<u32>()) {
        let a = ShutdownAction::from_flags(flags, 0, 0);
        prop_assert_eq!(a.is_some(), flags <= 5);
        if let Some(a) = a {
            prop_assert_eq!(a.flags(), flags);
        }
    }
}

use std::string::ToString;
