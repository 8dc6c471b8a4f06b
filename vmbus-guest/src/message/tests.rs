extern crate std;
use super::*;
use crate::guid::class;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

// fact sheet §5.2: type numbers and names; §5.1: Linux's per-type minimum sizes.
#[test]
fn type_numbers_and_minimums() {
    type T = ChannelMessageType;
    let names = [
        (0, "INVALID"),
        (1, "OFFER_CHANNEL"),
        (2, "RESCIND_CHANNEL_OFFER"),
        (3, "REQUEST_OFFERS"),
        (4, "ALL_OFFERS_DELIVERED"),
        (5, "OPEN_CHANNEL"),
        (6, "OPEN_CHANNEL_RESULT"),
        (7, "CLOSE_CHANNEL"),
        (8, "GPADL_HEADER"),
        (9, "GPADL_BODY"),
        (10, "GPADL_CREATED"),
        (11, "GPADL_TEARDOWN"),
        (12, "GPADL_TORNDOWN"),
        (13, "RELID_RELEASED"),
        (14, "INITIATE_CONTACT"),
        (15, "VERSION_RESPONSE"),
        (16, "UNLOAD"),
        (17, "UNLOAD_RESPONSE"),
        (18, "OPEN_RESERVED_CHANNEL"),
        (19, "CLOSE_RESERVED_CHANNEL"),
        (20, "CLOSE_RESERVED_RESPONSE"),
        (21, "TL_CONNECT_REQUEST"),
        (22, "MODIFY_CHANNEL"),
        (23, "TL_CONNECT_RESULT"),
        (24, "MODIFY_CHANNEL_RESPONSE"),
    ];
    for (v, n) in names {
        assert_eq!(ChannelMessageType(v).name(), Some(n));
    }
    assert_eq!(ChannelMessageType(25).name(), None);
    assert_eq!(ChannelMessageType(0).min_size(), None);
    // §5.1 minimums Linux checks.
    assert_eq!(T::OFFER_CHANNEL.min_size(), Some(196));
    assert_eq!(T::RESCIND_CHANNEL_OFFER.min_size(), Some(12));
    assert_eq!(T::OPEN_CHANNEL_RESULT.min_size(), Some(20));
    assert_eq!(T::GPADL_CREATED.min_size(), Some(20));
    assert_eq!(T::GPADL_TORNDOWN.min_size(), Some(12));
    assert_eq!(T::VERSION_RESPONSE.min_size(), Some(16));
    assert_eq!(T::MODIFY_CHANNEL_RESPONSE.min_size(), Some(16));
    assert_eq!(T::ALL_OFFERS_DELIVERED.min_size(), Some(8));
    assert_eq!(T::UNLOAD_RESPONSE.min_size(), Some(8));
    // §5.3 sizes.
    assert_eq!(T::OPEN_CHANNEL.min_size(), Some(148));
    assert_eq!(T::INITIATE_CONTACT.min_size(), Some(40));
    assert_eq!(T::GPADL_TEARDOWN.min_size(), Some(16));
    assert_eq!(T::MODIFY_CHANNEL.min_size(), Some(16));
    assert_eq!(T::TL_CONNECT_REQUEST.min_size(), Some(40));
    assert_eq!(T::TL_CONNECT_RESULT.min_size(), Some(44));
}

// fact sheet §5.3: OfferChannel field offsets in the encoded bytes.
#[test]
fn offer_layout() {
    let mut o = OfferChannel::new(class::SCSI, class::IDE, 0x0105, 0x2005, 3);
    o.chn_flags = offer_flags::TLNPI_PROVIDER_OFFER;
    o.mmio_megabytes = 0x0808;
    o.monitor_id = 0x44;
    o.monitor_allocated = 1;
    o.user_defined[0] = 4;
    let b = MessageBuf::fixed(&o);
    let b = b.as_bytes();
    assert_eq!(b.len(), 196);
    assert_eq!(u32_at(b, 0), 1);
    assert_eq!(&b[8..24], &class::SCSI.0);
    assert_eq!(&b[24..40], &class::IDE.0);
    assert_eq!(&b[56..58], &[0, 0x20]);
    assert_eq!(&b[58..60], &[8, 8]);
    assert_eq!(b[60], 4);
    assert_eq!(&b[180..182], &[3, 0]);
    assert_eq!(u32_at(b, 184), 0x105);
    assert_eq!(b[188], 0x44);
    assert_eq!(b[189], 1);
    assert_eq!(&b[190..192], &[1, 0]);
    assert_eq!(u32_at(b, 192), 0x2005);
    assert!(o.is_hvsock() && o.monitor_allocated() && o.dedicated_interrupt());
    assert_eq!(
        ChannelMessage::parse(b),
        Ok(ChannelMessage::OfferChannel(o))
    );
}

// fact sheet §5.3: OpenChannel, InitiateContact (both forms), VersionResponse.
#[test]
fn open_and_contact_layouts() {
    let mut ud = [0u8; 120];
    ud[0] = 0xAA;
    let o = OpenChannel::new(7, 7, 0xE1E10, 1, 4, ud);
    let b = MessageBuf::fixed(&o);
    let b = b.as_bytes();
    assert_eq!(b.len(), 148);
    assert_eq!(
        [5, 7, 7, 0xE1E10, 1, 4].map(|i: u32| i),
        [0, 8, 12, 16, 20, 24].map(|off| u32_at(b, off))
    );
    assert_eq!(b[28], 0xAA);

    let c = InitiateContact::with_target_sint(Version::WIN10_V5_3, 0, 2, 0, 0x1000, 0x2000);
    let b = MessageBuf::fixed(&c);
    let b = b.as_bytes();
    assert_eq!(b.len(), 40);
    assert_eq!(u32_at(b, 0), 14);
    assert_eq!(u32_at(b, 8), 0x0005_0003);
    assert_eq!(b[16], 2);
    assert_eq!(b[17], 0);
    assert_eq!(&b[18..24], &[0; 6]);
    assert_eq!(u32_at(b, 24), 0x1000);
    assert_eq!(u32_at(b, 32), 0x2000);
    assert_eq!((c.msg_sint(), c.msg_vtl()), (2, 0));
    let c = InitiateContact::with_interrupt_page(Version::WIN8_1, 1, 0x7000, 0, 0);
    assert_eq!(c.interrupt_page(), 0x7000);
    assert_eq!(&c.as_bytes()[16..24], &0x7000u64.to_le_bytes());

    let r = VersionResponse::new(true, connection_state::SUCCESSFUL, 0x33);
    let b = r.as_bytes();
    assert_eq!(b.len(), 16);
    assert_eq!(u32_at(b, 0), 15);
    assert_eq!((b[8], b[9]), (1, 0));
    assert_eq!(u32_at(b, 12), 0x33);
}

// fact sheet §5.3: the small fixed messages.
#[test]
fn small_layouts() {
    let check = |b: &[u8], ty: u32, words: &[(usize, u32)], size: usize| {
        assert_eq!(b.len(), size);
        assert_eq!(u32_at(b, 0), ty);
        for &(off, v) in words {
            assert_eq!(u32_at(b, off), v, "type {ty} offset {off}");
        }
    };
    check(RescindChannelOffer::new(9).as_bytes(), 2, &[(8, 9)], 12);
    check(
        OpenResult::new(9, 8, 1).as_bytes(),
        6,
        &[(8, 9), (12, 8), (16, 1)],
        20,
    );
    check(CloseChannel::new(9).as_bytes(), 7, &[(8, 9)], 12);
    check(
        GpadlCreated::new(9, 5, 0).as_bytes(),
        10,
        &[(8, 9), (12, 5), (16, 0)],
        20,
    );
    check(
        GpadlTeardown::new(9, 5).as_bytes(),
        11,
        &[(8, 9), (12, 5)],
        16,
    );
    check(GpadlTorndown::new(5).as_bytes(), 12, &[(8, 5)], 12);
    check(RelIdReleased::new(9).as_bytes(), 13, &[(8, 9)], 12);
    check(
        ModifyChannel::new(9, 3).as_bytes(),
        22,
        &[(8, 9), (12, 3)],
        16,
    );
    check(
        ModifyChannelResponse::new(9, -1).as_bytes(),
        24,
        &[(8, 9), (12, u32::MAX)],
        16,
    );
    check(
        OpenReservedChannel::new(1, 2, 3, 4, 5).as_bytes(),
        18,
        &[(8, 1), (12, 2), (16, 3), (20, 4), (24, 5)],
        28,
    );
    check(
        CloseReservedChannel::new(1, 2, 3).as_bytes(),
        19,
        &[(8, 1), (16, 3)],
        20,
    );
    check(CloseReservedResponse::new(1).as_bytes(), 20, &[(8, 1)], 12);
    let t = TlConnectResult::new(class::KVP, class::VSS, -5);
    check(t.as_bytes(), 23, &[(40, -5i32 as u32)], 44);
    assert_eq!(&t.as_bytes()[8..24], &class::KVP.0);
    assert_eq!(
        MessageBuf::header_only(ChannelMessageType::UNLOAD).as_bytes(),
        &[16, 0, 0, 0, 0, 0, 0, 0]
    );
}

// fact sheet §5.3: GPADL header holds 26 PFNs, bodies 28; range_buflen = 8 + 8n; msgnumber 0.
#[test]
fn gpadl_messages() {
    let pfns: Vec<u64> = (0x100..0x100 + 60).collect();
    let msgs: Vec<MessageBuf> = GpadlMessages::new(5, FIRST_GPADL_HANDLE, 0, 60 * 4096, &pfns[..])
        .unwrap()
        .collect();
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        GpadlMessages::new(5, 1, 0, 60 * 4096, &pfns[..])
            .unwrap()
            .message_count(),
        3
    );
    let h = msgs[0].as_bytes();
    assert_eq!(h.len(), 240 - 4);
    assert_eq!(u32_at(h, 0), 8);
    assert_eq!(u32_at(h, 8), 5);
    assert_eq!(u32_at(h, 12), 0xE1E10);
    assert_eq!(&h[16..18], &(8u16 + 8 * 60).to_le_bytes());
    assert_eq!(&h[18..20], &[1, 0]);
    assert_eq!(u32_at(h, 20), 60 * 4096);
    assert_eq!(u32_at(h, 24), 0);
    assert_eq!(&h[28..36], &0x100u64.to_le_bytes());
    let b1 = msgs[1].as_bytes();
    assert_eq!(b1.len(), 240);
    assert_eq!(
        (u32_at(b1, 0), u32_at(b1, 8), u32_at(b1, 12)),
        (9, 0, 0xE1E10)
    );
    assert_eq!(&b1[16..24], &(0x100u64 + 26).to_le_bytes());
    assert_eq!(msgs[2].as_bytes().len(), 16 + 6 * 8);

    // The decoded sequence gives back every PFN and the range.
    let mut all = Vec::new();
    let mut total = 0;
    for m in &msgs {
        match m.parse().unwrap() {
            ChannelMessage::GpadlHeader { header, ranges } => {
                total = header.total_pfns().unwrap();
                all.extend_from_slice(ranges);
            }
            ChannelMessage::GpadlBody { pfns, .. } => all.extend_from_slice(pfns.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, 60);
    let ranges: Vec<_> = crate::packet::GpaRanges::new(&all, 1).collect();
    let r = ranges[0].unwrap();
    assert_eq!(r.byte_count, 60 * 4096);
    assert_eq!(r.pfns.iter().collect::<Vec<_>>(), pfns);

    // Exactly 26 PFNs: header only.
    assert_eq!(
        GpadlMessages::new(1, 1, 0, 26 * 4096, &pfns[..26])
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        GpadlMessages::new(1, 1, 0, 27 * 4096, &pfns[..27])
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        GpadlMessages::new(1, 1, 1, 4096, &pfns[..1]).err(),
        Some(GpadlError::PfnCountMismatch {
            given: 1,
            needed: 2
        })
    );
    assert_eq!(
        GpadlMessages::new(1, 1, 0, 0, &pfns[..1]).err(),
        Some(GpadlError::Empty)
    );
}

#[test]
fn hostile_inputs() {
    assert_eq!(
        ChannelMessage::parse(&[1, 0, 0]),
        Err(ParseError::NoHeader { len: 3 })
    );
    assert_eq!(
        ChannelMessage::parse(&[0; 241]),
        Err(ParseError::TooLong { len: 241 })
    );
    assert_eq!(
        ChannelMessage::parse(&[0; 8]),
        Err(ParseError::UnknownType(0))
    );
    assert_eq!(
        ChannelMessage::parse(&[25, 0, 0, 0, 0, 0, 0, 0]),
        Err(ParseError::UnknownType(25))
    );
    let offer = MessageBuf::fixed(&OfferChannel::new(class::SCSI, class::SCSI, 1, 1, 0));
    assert_eq!(
        ChannelMessage::parse(&offer.as_bytes()[..195]),
        Err(ParseError::TooShort {
            msgtype: ChannelMessageType::OFFER_CHANNEL,
            len: 195,
            min: 196
        })
    );
    // Extra bytes after a fixed message are ignored (newer protocols append fields).
    let mut long = [0u8; 20];
    long[..16].copy_from_slice(VersionResponse::new(true, 0, 4).as_bytes());
    assert!(
        matches!(ChannelMessage::parse(&long), Ok(ChannelMessage::VersionResponse(r)) if r.msg_conn_id == 4)
    );
    // GPADL header whose ranges exceed range_buflen, or with no range.
    let mut g = Vec::from(GpadlHeader::new(1, 2, 8, 1).as_bytes());
    g.extend_from_slice(&[0; 16]);
    assert!(matches!(
        ChannelMessage::parse(&g),
        Err(ParseError::BadGpadl { .. })
    ));
    let mut g = Vec::from(GpadlHeader::new(1, 2, 16, 0).as_bytes());
    g.extend_from_slice(&[0; 16]);
    assert!(matches!(
        ChannelMessage::parse(&g),
        Err(ParseError::BadGpadl { .. })
    ));
    let mut b = Vec::from(GpadlBody::new(0, 2).as_bytes());
    b.extend_from_slice(&[0; 5]);
    assert!(matches!(
        ChannelMessage::parse(&b),
        Err(ParseError::BadGpadl { .. })
    ));
    // TL connect with the silo id.
    let mut t = Vec::from(TlConnectRequest::new(class::KVP, class::VSS).as_bytes());
    t.extend_from_slice(&class::FCOPY.0);
    assert!(matches!(
        ChannelMessage::parse(&t),
        Ok(ChannelMessage::TlConnectRequest { silo_id: Some(g), .. }) if g == class::FCOPY
    ));
}

fn arb_guid() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>().prop_map(Guid)
}

fn arb_fixed<M: FixedMessage>() -> impl Strategy<Value = M> {
    proptest::collection::vec(any::<u8>(), core::mem::size_of::<M>()).prop_map(|v| {
        let mut m = M::read_from_bytes(&v).unwrap();
        // The header is the message type and zero padding.
        m.as_mut_bytes()[..4].copy_from_slice(&M::TYPE.0.to_le_bytes());
        m.as_mut_bytes()[4..8].fill(0);
        m
    })
}

fn arb_message() -> impl Strategy<Value = MessageBuf> {
    let fixed = prop_oneof![
        arb_fixed::<OfferChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<RescindChannelOffer>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<OpenChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<OpenResult>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<CloseChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<GpadlCreated>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<GpadlTeardown>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<GpadlTorndown>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<RelIdReleased>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<InitiateContact>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<VersionResponse>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<OpenReservedChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<CloseReservedChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<CloseReservedResponse>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<TlConnectRequest>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<ModifyChannel>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<TlConnectResult>().prop_map(|m| MessageBuf::fixed(&m)),
        arb_fixed::<ModifyChannelResponse>().prop_map(|m| MessageBuf::fixed(&m)),
    ];
    let header_only = prop_oneof![Just(3u32), Just(4), Just(16), Just(17)]
        .prop_map(|t| MessageBuf::header_only(ChannelMessageType(t)));
    let gpadl = (
        any::<u32>(),
        any::<u32>(),
        0u32..4096,
        1u32..200_000,
        proptest::collection::vec(any::<u64>(), 60),
    )
        .prop_map(|(relid, handle, off, count, pfns)| {
            let n = (off as usize + count as usize).div_ceil(4096);
            let msgs = GpadlMessages::new(relid, handle, off, count, &pfns[..n]).unwrap();
            msgs.last().unwrap()
        });
    let tl_silo = (arb_guid(), arb_guid(), arb_guid()).prop_map(|(a, b, c)| {
        ChannelMessage::TlConnectRequest {
            request: TlConnectRequest::new(a, b),
            silo_id: Some(c),
        }
        .encode()
        .unwrap()
    });
    prop_oneof![fixed, header_only, gpadl, tl_silo]
}

proptest! {
    // Every valid message decodes, and encoding the decoded form gives the same bytes.
    #[test]
    fn parse_encode_round_trip(m in arb_message()) {
        let parsed = ChannelMessage::parse(m.as_bytes()).unwrap();
        prop_assert_eq!(parsed.msgtype().0, u32_at(m.as_bytes(), 0));
        let again = parsed.encode().unwrap();
        prop_assert_eq!(again.as_bytes(), m.as_bytes());
    }

    // Arbitrary bytes never panic the decoder; anything it accepts re-encodes to a prefix.
    #[test]
    fn parse_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..260), ty in 0u32..30) {
        if bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&ty.to_le_bytes());
        }
        if let Ok(m) = ChannelMessage::parse(&bytes) {
            let e = m.encode().unwrap();
            prop_assert!(e.len() <= bytes.len());
            prop_assert_eq!(&e.as_bytes()[..4], &bytes[..4]);
            prop_assert_eq!(&e.as_bytes()[8..], &bytes[8..e.len()]);
        }
    }
}
