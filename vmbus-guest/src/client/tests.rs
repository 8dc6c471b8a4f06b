extern crate std;
use super::*;
use crate::guid::class;
use crate::message::{
    GpadlCreated, GpadlTorndown, ModifyChannelResponse, OpenResult, RescindChannelOffer,
    VersionResponse,
};
use proptest::prelude::*;
use std::vec::Vec;
use zerocopy::IntoBytes;

type Small = Client<4, 8, 32>;

fn drain<const C: usize, const G: usize, const O: usize>(c: &mut Client<C, G, O>) -> Vec<Outgoing> {
    let mut v = Vec::new();
    while let Some(o) = c.poll_outgoing() {
        v.push(o);
    }
    assert!(!c.has_outgoing());
    v
}

fn parsed(o: &Outgoing) -> ChannelMessage<'_> {
    o.message.parse().unwrap()
}

fn accept(conn: u32) -> MessageBuf {
    MessageBuf::fixed(&VersionResponse::new(true, 0, conn))
}

fn refuse() -> MessageBuf {
    MessageBuf::fixed(&VersionResponse::new(false, 0, 0))
}

fn offer(relid: u32, class: Guid, instance: Guid, sub: u16) -> MessageBuf {
    MessageBuf::fixed(&OfferChannel::new(
        class,
        instance,
        relid,
        0x2000 + relid,
        sub,
    ))
}

fn feed<const C: usize, const G: usize, const O: usize>(
    c: &mut Client<C, G, O>,
    m: MessageBuf,
) -> Result<Option<Event>, ClientError> {
    c.handle_message(m.as_bytes())
}

/// A client connected at 5.3 on connection 0x33, with offers 1 (SCSI) and 2 (network).
fn connected() -> Small {
    let mut c = Small::new(ClientConfig::default());
    c.connect().unwrap();
    drain(&mut c);
    feed(&mut c, accept(0x33)).unwrap();
    drain(&mut c);
    feed(&mut c, offer(1, class::SCSI, class::SCSI, 0)).unwrap();
    feed(&mut c, offer(2, class::NETWORK, class::KVP, 0)).unwrap();
    c
}

// fact sheet §5.5 / §4.4: 5.3 refused, 5.2 accepted; connection 4 for InitiateContact ≥ 5.0, then
// the host's msg_conn_id; RequestOffers right after.
#[test]
fn connect_with_fallback() {
    let mut c = Small::new(ClientConfig {
        target_vcpu: 3,
        monitor_page1: 0x5000,
        monitor_page2: 0x6000,
        ..ClientConfig::default()
    });
    c.connect().unwrap();
    assert_eq!(c.connect(), Err(ClientError::AlreadyConnected));
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].connection_id, 4);
    let ChannelMessage::InitiateContact(ic) = parsed(&out[0]) else {
        panic!()
    };
    assert_eq!(ic.version_requested, Version::WIN10_V5_3);
    assert_eq!((ic.target_vcpu, ic.msg_sint(), ic.msg_vtl()), (3, 2, 0));
    assert_eq!((ic.monitor_page1, ic.monitor_page2), (0x5000, 0x6000));

    assert_eq!(
        feed(&mut c, refuse()),
        Ok(Some(Event::VersionRefused {
            version: Version::WIN10_V5_3
        }))
    );
    let out = drain(&mut c);
    let ChannelMessage::InitiateContact(ic) = parsed(&out[0]) else {
        panic!()
    };
    assert_eq!(ic.version_requested, Version::WIN10_V5_2);
    assert_eq!(out[0].connection_id, 4);

    assert_eq!(
        feed(&mut c, accept(0x33)),
        Ok(Some(Event::Connected {
            version: Version::WIN10_V5_2,
            msg_conn_id: 0x33
        }))
    );
    assert_eq!(c.version(), Some(Version::WIN10_V5_2));
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].connection_id, 0x33);
    assert_eq!(parsed(&out[0]), ChannelMessage::RequestOffers);
    // A second VersionResponse is unexpected.
    assert_eq!(
        feed(&mut c, accept(1)),
        Err(ClientError::Unexpected(
            ChannelMessageType::VERSION_RESPONSE
        ))
    );
}

// fact sheet §5.5: below 5.0 InitiateContact carries the interrupt page and goes to connection 1,
// and so does everything after; INVALID_CONNECTION_ID on post skips a version; a zero
// msg_conn_id counts as a refusal.
#[test]
fn fallback_below_5_0() {
    let mut c = Small::new(ClientConfig {
        interrupt_page: 0x9000,
        ..ClientConfig::default()
    });
    c.connect().unwrap();
    drain(&mut c);
    assert!(matches!(
        c.contact_post_failed(),
        Ok(Some(Event::VersionRefused { .. }))
    )); // 5.3
    drain(&mut c);
    feed(&mut c, accept(0)).unwrap(); // 5.2 "accepted" with connection 0: refused
    drain(&mut c);
    feed(&mut c, refuse()).unwrap(); // 5.1
    drain(&mut c);
    feed(&mut c, refuse()).unwrap(); // 5.0
    let out = drain(&mut c);
    assert_eq!(out[0].connection_id, 1);
    let ChannelMessage::InitiateContact(ic) = parsed(&out[0]) else {
        panic!()
    };
    assert_eq!(ic.version_requested, Version::WIN10_V4_1);
    assert_eq!(ic.interrupt_page(), 0x9000);
    assert_eq!(
        feed(&mut c, accept(0x0004_0001)),
        Ok(Some(Event::Connected {
            version: Version::WIN10_V4_1,
            msg_conn_id: 1
        }))
    );
    assert_eq!(drain(&mut c)[0].connection_id, 1);
}

#[test]
fn all_versions_refused() {
    static ONLY: [Version; 2] = [Version::WIN10_V5_3, Version::WIN8_1];
    let mut c = Small::new(ClientConfig {
        versions: &ONLY,
        ..ClientConfig::default()
    });
    c.connect().unwrap();
    feed(&mut c, refuse()).unwrap();
    assert_eq!(feed(&mut c, refuse()), Ok(Some(Event::ConnectFailed)));
    assert_eq!(c.state(), ConnectionState::Disconnected);
    assert_eq!(c.contact_post_failed(), Err(ClientError::WrongState));
    // Can try again.
    c.connect().unwrap();
}

// fact sheet §5.3 / §5.5: offers, sub-channels, bad offers.
#[test]
fn offers() {
    let mut c = connected();
    assert_eq!(
        feed(&mut c, offer(5, class::SCSI, class::SCSI, 1)),
        Ok(Some(Event::Offer {
            relid: 5,
            subchannel_of: Some(1)
        }))
    );
    assert_eq!(
        feed(
            &mut c,
            MessageBuf::header_only(ChannelMessageType::ALL_OFFERS_DELIVERED)
        ),
        Ok(Some(Event::AllOffersDelivered))
    );
    assert_eq!(c.find_channel(&class::NETWORK).unwrap().relid(), 2);
    assert_eq!(c.channel(2).unwrap().connection_id(), 0x2002);
    assert_eq!(c.channel(5).unwrap().subchannel_of, Some(1));
    let bad = |relid, problem| Err(ClientError::BadOffer { relid, problem });
    assert_eq!(
        feed(&mut c, offer(0, class::VSS, class::VSS, 0)),
        bad(0, OfferProblem::RelidOutOfRange)
    );
    assert_eq!(
        feed(&mut c, offer(2048, class::VSS, class::VSS, 0)),
        bad(2048, OfferProblem::RelidOutOfRange)
    );
    assert_eq!(
        feed(&mut c, offer(2, class::VSS, class::VSS, 0)),
        bad(2, OfferProblem::DuplicateRelid)
    );
    assert_eq!(
        feed(&mut c, offer(9, class::SCSI, class::SCSI, 0)),
        bad(9, OfferProblem::DuplicateInstance)
    );
    feed(&mut c, offer(6, class::VSS, class::VSS, 0)).unwrap();
    assert_eq!(
        feed(&mut c, offer(7, class::KVP, class::KVP, 0)),
        bad(7, OfferProblem::TableFull)
    );
    // A truncated offer (hostile host): a parse error, nothing changes.
    let o = offer(8, class::KVP, class::KVP, 0);
    assert!(matches!(
        c.handle_message(&o.as_bytes()[..100]),
        Err(ClientError::Parse(ParseError::TooShort { .. }))
    ));
    assert_eq!(c.channels().len(), 4);
}

// fact sheet §5.3 / §5.6: GPADL header + bodies, handles from 0xE1E10, matching on (relid, gpadl).
#[test]
fn gpadls() {
    let mut c = connected();
    let pfns: Vec<u64> = (0x400..0x400 + 60).collect();
    assert_eq!(c.create_gpadl(1, 0, 60 * 4096, &pfns[..]), Ok(0xE1E10));
    let out = drain(&mut c);
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|o| o.connection_id == 0x33));
    assert_eq!(out[0].msgtype(), ChannelMessageType::GPADL_HEADER);
    assert_eq!(out[2].msgtype(), ChannelMessageType::GPADL_BODY);
    assert_eq!(c.create_gpadl(2, 0, 4096, &pfns[..1]), Ok(0xE1E11));
    drain(&mut c);
    assert_eq!(
        c.create_gpadl(99, 0, 4096, &pfns[..1]),
        Err(ClientError::UnknownChannel(99))
    );
    assert_eq!(
        c.create_gpadl(1, 0, 4096, &pfns[..2]),
        Err(ClientError::Gpadl(GpadlError::PfnCountMismatch {
            given: 2,
            needed: 1
        }))
    );
    // Matched on relid and handle.
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&GpadlCreated::new(2, 0xE1E10, 0))),
        Err(ClientError::UnknownGpadl(0xE1E10))
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&GpadlCreated::new(1, 0xE1E10, 0))),
        Ok(Some(Event::GpadlCreated {
            relid: 1,
            gpadl: 0xE1E10,
            status: 0
        }))
    );
    assert_eq!(c.gpadl(0xE1E10).unwrap().state, GpadlState::Created);
    // A refused GPADL is forgotten.
    feed(
        &mut c,
        MessageBuf::fixed(&GpadlCreated::new(2, 0xE1E11, 0xC000_0001)),
    )
    .unwrap();
    assert!(c.gpadl(0xE1E11).is_none());
    // Teardown.
    c.teardown_gpadl(0xE1E10).unwrap();
    assert_eq!(c.teardown_gpadl(0xE1E10), Err(ClientError::WrongState));
    let out = drain(&mut c);
    assert_eq!(
        parsed(&out[0]),
        ChannelMessage::GpadlTeardown(GpadlTeardown::new(1, 0xE1E10))
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&GpadlTorndown::new(0xE1E10))),
        Ok(Some(Event::GpadlTorndown {
            relid: 1,
            gpadl: 0xE1E10
        }))
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&GpadlTorndown::new(0xE1E10))),
        Err(ClientError::UnknownGpadl(0xE1E10))
    );
    // Outbox too small for a huge GPADL: refused before anything is queued.
    let many: Vec<u64> = (0..2000).collect();
    assert_eq!(
        c.create_gpadl(1, 0, 2000 * 4096, &many[..]),
        Err(ClientError::OutboxFull)
    );
    assert!(!c.has_outgoing());
}

fn open_channel(c: &mut Small, relid: u32) -> u32 {
    let g = c
        .create_gpadl(relid, 0, 4 * 4096, &[1u64, 2, 3, 4][..])
        .unwrap();
    drain(c);
    feed(c, MessageBuf::fixed(&GpadlCreated::new(relid, g, 0))).unwrap();
    c.open(relid, g, 2, 0, [0; 120]).unwrap();
    let out = drain(c);
    let ChannelMessage::OpenChannel(o) = parsed(&out[0]) else {
        panic!()
    };
    assert_eq!(
        (
            o.child_relid,
            o.open_id,
            o.ring_gpadl,
            o.downstream_ring_page_offset
        ),
        (relid, relid, g, 2)
    );
    assert_eq!(
        feed(c, MessageBuf::fixed(&OpenResult::new(relid, relid, 0))),
        Ok(Some(Event::OpenResult { relid, status: 0 }))
    );
    g
}

// fact sheet §5.6: open, OpenResult matched on (relid, openid), close = CLOSECHANNEL then the
// ring GPADL's teardown.
#[test]
fn open_and_close() {
    let mut c = connected();
    assert_eq!(
        c.open(1, 0xE1E10, 2, 0, [0; 120]),
        Err(ClientError::UnknownGpadl(0xE1E10))
    );
    let g = c.create_gpadl(1, 0, 4096, &[7u64][..]).unwrap();
    assert_eq!(
        c.open(1, g, 2, 0, [0; 120]),
        Err(ClientError::WrongState),
        "not created yet"
    );
    drain(&mut c);
    feed(&mut c, MessageBuf::fixed(&GpadlCreated::new(1, g, 0))).unwrap();
    assert_eq!(
        c.open(2, g, 2, 0, [0; 120]),
        Err(ClientError::WrongState),
        "another channel's"
    );
    c.open(1, g, 2, 1, [0; 120]).unwrap();
    drain(&mut c);
    assert_eq!(
        c.teardown_gpadl(g),
        Err(ClientError::WrongState),
        "ring of an opening channel"
    );
    // Wrong open id, then a refusal.
    assert!(feed(&mut c, MessageBuf::fixed(&OpenResult::new(1, 9, 0))).is_err());
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&OpenResult::new(1, 1, 5))),
        Ok(Some(Event::OpenResult {
            relid: 1,
            status: 5
        }))
    );
    assert_eq!(c.channel(1).unwrap().state, ChannelState::Offered);
    assert!(
        feed(&mut c, MessageBuf::fixed(&OpenResult::new(1, 1, 0))).is_err(),
        "not opening"
    );

    let g2 = open_channel(&mut c, 2);
    assert_eq!(
        c.channel(2).unwrap().state,
        ChannelState::Open { ring_gpadl: g2 }
    );
    c.close(2).unwrap();
    assert_eq!(c.close(2), Err(ClientError::WrongState));
    let out = drain(&mut c);
    assert_eq!(
        out.iter().map(|o| parsed(o)).collect::<Vec<_>>(),
        [
            ChannelMessage::CloseChannel(CloseChannel::new(2)),
            ChannelMessage::GpadlTeardown(GpadlTeardown::new(2, g2)),
        ]
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&GpadlTorndown::new(g2))),
        Ok(Some(Event::GpadlTorndown {
            relid: 2,
            gpadl: g2
        }))
    );
    // It can be opened again.
    open_channel(&mut c, 2);
}

// fact sheet §5.6: rescind while open: CLOSECHANNEL, GPADL_TEARDOWN of each GPADL, and
// RELID_RELEASED only once all are torn down.
#[test]
fn rescind_while_open() {
    let mut c = connected();
    let ring = open_channel(&mut c, 1);
    let extra = c.create_gpadl(1, 0, 4096, &[9u64][..]).unwrap();
    drain(&mut c);
    feed(&mut c, MessageBuf::fixed(&GpadlCreated::new(1, extra, 0))).unwrap();
    let pending = c.create_gpadl(1, 0, 4096, &[10u64][..]).unwrap();
    drain(&mut c);

    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&RescindChannelOffer::new(1))),
        Ok(Some(Event::Rescinded {
            relid: 1,
            was_open: true
        }))
    );
    assert!(
        c.gpadl(pending).is_none(),
        "a GPADL still being created is dropped"
    );
    assert_eq!(
        c.create_gpadl(1, 0, 4096, &[1u64][..]),
        Err(ClientError::WrongState)
    );
    let out = drain(&mut c);
    let msgs: Vec<_> = out.iter().map(|o| parsed(o)).collect();
    assert_eq!(msgs[0], ChannelMessage::CloseChannel(CloseChannel::new(1)));
    assert_eq!(msgs.len(), 3);
    assert!(msgs.contains(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(1, ring))));
    assert!(msgs.contains(&ChannelMessage::GpadlTeardown(GpadlTeardown::new(1, extra))));
    // A second rescind is unexpected.
    assert!(feed(&mut c, MessageBuf::fixed(&RescindChannelOffer::new(1))).is_err());
    feed(&mut c, MessageBuf::fixed(&GpadlTorndown::new(ring))).unwrap();
    assert!(drain(&mut c).is_empty(), "one GPADL still up");
    feed(&mut c, MessageBuf::fixed(&GpadlTorndown::new(extra))).unwrap();
    let out = drain(&mut c);
    assert_eq!(
        parsed(&out[0]),
        ChannelMessage::RelIdReleased(RelIdReleased::new(1))
    );
    assert!(c.channel(1).is_none());
    // The relid can be offered again.
    feed(&mut c, offer(1, class::SCSI, class::SCSI, 0)).unwrap();
}

#[test]
fn rescind_offered_releases_at_once() {
    let mut c = connected();
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&RescindChannelOffer::new(2))),
        Ok(Some(Event::Rescinded {
            relid: 2,
            was_open: false
        }))
    );
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(
        parsed(&out[0]),
        ChannelMessage::RelIdReleased(RelIdReleased::new(2))
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&RescindChannelOffer::new(2))),
        Err(ClientError::UnknownChannel(2))
    );
}

// fact sheet §5.6: UNLOAD (≥ 3.0), everything forgotten on UNLOAD_RESPONSE, reconnect works.
#[test]
fn unload_and_reconnect() {
    let mut c = connected();
    open_channel(&mut c, 1);
    c.unload().unwrap();
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].connection_id, parsed(&out[0])),
        (0x33, ChannelMessage::Unload)
    );
    // Messages during the unload are dropped.
    assert_eq!(feed(&mut c, offer(3, class::VSS, class::VSS, 0)), Ok(None));
    assert_eq!(
        feed(
            &mut c,
            MessageBuf::header_only(ChannelMessageType::UNLOAD_RESPONSE)
        ),
        Ok(Some(Event::Unloaded))
    );
    assert!(c.channels().is_empty() && c.gpadls().is_empty());
    assert_eq!(c.state(), ConnectionState::Disconnected);
    c.connect().unwrap();
    assert_eq!(
        drain(&mut c)[0].msgtype(),
        ChannelMessageType::INITIATE_CONTACT
    );

    // 2.4 has no UNLOAD.
    static OLD: [Version; 1] = [Version::WIN8];
    let mut c = Small::new(ClientConfig {
        versions: &OLD,
        ..ClientConfig::default()
    });
    c.connect().unwrap();
    feed(&mut c, accept(0)).unwrap();
    assert_eq!(c.unload(), Err(ClientError::Unsupported));
    assert_eq!(c.modify_channel(1, 1), Err(ClientError::Unsupported));
}

#[test]
fn modify_channel_and_tl() {
    let mut c = connected();
    assert_eq!(c.modify_channel(1, 2), Err(ClientError::WrongState));
    open_channel(&mut c, 1);
    c.modify_channel(1, 2).unwrap();
    assert_eq!(
        parsed(&drain(&mut c)[0]),
        ChannelMessage::ModifyChannel(ModifyChannel::new(1, 2))
    );
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&ModifyChannelResponse::new(1, 0))),
        Ok(Some(Event::ModifyChannelResponse {
            relid: 1,
            status: 0
        }))
    );
    c.tl_connect(class::KVP, class::VSS).unwrap();
    assert_eq!(
        drain(&mut c)[0].msgtype(),
        ChannelMessageType::TL_CONNECT_REQUEST
    );
    let r = TlConnectResult::new(class::KVP, class::VSS, 0);
    assert_eq!(
        feed(&mut c, MessageBuf::fixed(&r)),
        Ok(Some(Event::TlConnectResult(r)))
    );
}

// Hostile host: host-bound messages, answers before contact, garbage.
#[test]
fn unexpected_messages() {
    let mut c = Small::new(ClientConfig::default());
    assert_eq!(
        feed(&mut c, offer(1, class::SCSI, class::SCSI, 0)),
        Err(ClientError::Unexpected(ChannelMessageType::OFFER_CHANNEL))
    );
    assert_eq!(
        feed(&mut c, accept(4)),
        Err(ClientError::Unexpected(
            ChannelMessageType::VERSION_RESPONSE
        ))
    );
    assert_eq!(
        c.create_gpadl(1, 0, 4096, &[1u64][..]),
        Err(ClientError::NotConnected)
    );
    let mut c = connected();
    for m in [
        MessageBuf::fixed(&OpenChannel::new(1, 1, 1, 0, 1, [0; 120])),
        MessageBuf::header_only(ChannelMessageType::REQUEST_OFFERS),
        MessageBuf::header_only(ChannelMessageType::UNLOAD_RESPONSE),
        MessageBuf::fixed(&InitiateContact::with_interrupt_page(
            Version::WIN8,
            0,
            0,
            0,
            0,
        )),
    ] {
        assert!(
            matches!(feed(&mut c, m), Err(ClientError::Unexpected(_))),
            "{m:?}"
        );
    }
    assert_eq!(
        c.handle_message(&[]),
        Err(ClientError::Parse(ParseError::NoHeader { len: 0 }))
    );
    assert_eq!(c.channels().len(), 2);
}

proptest! {
    // Random host messages (valid-looking and not) in any order never panic the client, and its
    // tables stay within their invariants.
    #[test]
    fn hostile_host_never_panics(
        msgs in proptest::collection::vec((1u32..25, proptest::collection::vec(any::<u8>(), 0..240), 0u32..6), 1..60),
        requests in proptest::collection::vec(0u8..6, 60),
    ) {
        let mut c = connected();
        for ((ty, mut body, relid), req) in msgs.into_iter().zip(requests) {
            body.resize(body.len().max(24), 0);
            body[..4].copy_from_slice(&ty.to_le_bytes());
            // Steer relids and handles into the interesting range some of the time.
            body[8..12].copy_from_slice(&relid.to_le_bytes());
            if body.len() >= 16 && ty != 1 {
                body[12..16].copy_from_slice(&(0xE1E10 + relid % 3).to_le_bytes());
            }
            if ty == 1 && body.len() >= 196 {
                body[184..188].copy_from_slice(&relid.to_le_bytes());
            }
            let _ = c.handle_message(&body);
            let _ = match req {
                0 => c.create_gpadl(relid, 0, 4096, &[relid as u64][..]).map(|_| ()),
                1 => c.open(relid, 0xE1E10 + relid % 3, 1, 0, [0; 120]),
                2 => c.close(relid),
                3 => c.teardown_gpadl(0xE1E10 + relid % 3),
                4 => c.modify_channel(relid, 0),
                _ => Ok(()),
            };
            let _ = drain(&mut c);
            prop_assert!(c.channels().iter().all(|ch| (1..2048).contains(&ch.relid())));
            prop_assert!(c.gpadls().iter().all(|g| c.channel(g.relid).is_some() || c.state() != ConnectionState::Unloading));
        }
    }
}

#[test]
fn outgoing_msgtype() {
    let o = Outgoing {
        connection_id: 1,
        message: MessageBuf::fixed(&CloseChannel::new(3)),
    };
    assert_eq!(o.msgtype(), ChannelMessageType::CLOSE_CHANNEL);
    assert_eq!(o.message.as_bytes(), CloseChannel::new(3).as_bytes());
}
