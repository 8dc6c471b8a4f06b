//! Client flows against a scripted host that speaks packets (no rings).
extern crate std;
use super::*;
use crate::scsi::{opcode, UnmapList};
use crate::sense::AdditionalSense;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;
use vmbus_guest::packet::{GpaRanges, PacketDescriptor, PacketFlags};
use zerocopy::IntoBytes;

type Client = StorvscClient<64, 65>;

/// Packet bytes as the host would put them in the ring (descriptor + payload padded to 8).
fn host_packet(ty: PacketType, id: u64, payload: &[u8]) -> Vec<u8> {
    let len = (16 + payload.len()).next_multiple_of(8);
    let mut v = Vec::new();
    v.extend_from_slice(
        PacketDescriptor {
            packet_type: ty,
            data_offset8: 2,
            len8: (len / 8) as u16,
            flags: PacketFlags::new(),
            transaction_id: id,
        }
        .as_bytes(),
    );
    v.extend_from_slice(payload);
    v.resize(len, 0);
    v
}

fn deliver(
    c: &mut Client,
    ty: PacketType,
    id: u64,
    payload: &[u8],
) -> Result<Option<Event>, ClientError> {
    let b = host_packet(ty, id, payload);
    c.on_packet(&PacketView::new(&b).unwrap())
}

fn complete(
    c: &mut Client,
    id: u64,
    p: &VstorPacket,
    version: ProtocolVersion,
) -> Result<Option<Event>, ClientError> {
    deliver(c, PacketType::COMPLETION, id, p.wire_bytes(version))
}

/// What the guest sent: transaction id, the packet (zero-extended), payload size, and the
/// GPA-direct range if any.
#[derive(Debug)]
struct Sent {
    id: u64,
    packet: VstorPacket,
    payload_len: usize,
    ty: PacketType,
    range: Option<(u32, u32, Vec<u64>)>,
}

fn take(c: &mut Client) -> Option<Sent> {
    let out = c.peek_transmit()?;
    let mut ext = [0u8; MAX_GPA_EXTENSION];
    let n = out.encode_extension(&mut ext).unwrap();
    // Decode the extension the way the host does.
    let range = if n > 0 {
        assert_eq!(&ext[..8], &[0, 0, 0, 0, 1, 0, 0, 0]);
        let r = GpaRanges::new(&ext[8..n], 1).next().unwrap().unwrap();
        Some((r.byte_offset, r.byte_count, r.pfns.iter().collect()))
    } else {
        None
    };
    let s = Sent {
        id: out.transaction_id,
        packet: VstorPacket::parse(out.payload, None).unwrap(),
        payload_len: out.payload.len(),
        ty: out.packet_type(),
        range,
    };
    c.transmitted();
    Some(s)
}

fn props(max_channels: u16, multi: bool, max_transfer: u32) -> ChannelProperties {
    ChannelProperties {
        max_channel_count: max_channels,
        flags: if multi {
            ChannelProperties::FLAG_MULTI_CHANNEL
        } else {
            0
        },
        max_transfer_bytes: max_transfer,
        ..ChannelProperties::default()
    }
}

/// Runs the init sequence against a host that accepts `host_versions`; returns the ops seen and
/// the final event.
fn run_init(
    c: &mut Client,
    host_versions: &[ProtocolVersion],
    p: ChannelProperties,
) -> (Vec<(Operation, Option<ProtocolVersion>)>, Option<Event>) {
    c.start();
    let mut ops = Vec::new();
    let mut negotiated = None;
    while let Some(s) = take(c) {
        assert_eq!(s.id, INIT_TRANSACTION_ID);
        assert_eq!(s.ty, PacketType::DATA_INBAND);
        assert_eq!(s.packet.flags, vstor::flags::REQUEST_COMPLETION);
        let op = s.packet.operation;
        let mut reply = VstorPacket::completion(VstorStatus::SUCCESS);
        let mut v = None;
        if op == Operation::QUERY_PROTOCOL_VERSION {
            let want = s.packet.version().major_minor;
            v = Some(want);
            if host_versions.contains(&want) {
                negotiated = Some(want);
            } else {
                reply.status = VstorStatus::REVISION_MISMATCH;
            }
        }
        if op == Operation::QUERY_PROPERTIES {
            reply.set_body(&p);
        }
        ops.push((op, v));
        let wire = negotiated.unwrap_or(ProtocolVersion::WIN10);
        if let Some(e) = complete(c, INIT_TRANSACTION_ID, &reply, wire).unwrap() {
            return (ops, Some(e));
        }
    }
    (ops, None)
}

fn ready(host_versions: &[ProtocolVersion]) -> (Client, DeviceInfo) {
    let mut c = Client::new(ClientConfig::default());
    let (_, e) = run_init(&mut c, host_versions, props(4, true, 0x40000));
    let Some(Event::Ready(info)) = e else {
        panic!("{e:?}")
    };
    (c, info)
}

fn srb_reply(
    srb_status: SrbStatus,
    scsi: ScsiStatus,
    transferred: u32,
    sense: Option<&[u8]>,
    v: ProtocolVersion,
) -> VstorPacket {
    let mut srb = VmSrb {
        srb_status,
        scsi_status: scsi.0,
        data_transfer_length: transferred,
        ..VmSrb::default()
    };
    if let Some(s) = sense {
        srb.set_sense(s, v);
    }
    let mut p = VstorPacket::completion(VstorStatus::SUCCESS);
    p.set_body(&srb);
    p
}

fn ok_reply(transferred: u32) -> VstorPacket {
    srb_reply(
        SrbStatus::SUCCESS,
        ScsiStatus::GOOD,
        transferred,
        None,
        ProtocolVersion::WIN10,
    )
}

fn sense_reply(s: Sense) -> VstorPacket {
    srb_reply(
        SrbStatus::ERROR.with_autosense(),
        ScsiStatus::CHECK_CONDITION,
        0,
        Some(&s.to_fixed()),
        ProtocolVersion::WIN10,
    )
}

const PFNS: [u64; 8] = [0x100, 0x233, 0x105, 0x999, 0x4000, 0x4001, 0x7, 0x8];

fn buf(offset: u32, len: u32) -> DataBuffer<'static> {
    let n = (offset as usize + len as usize).div_ceil(4096);
    DataBuffer {
        offset,
        len,
        pfns: &PFNS[..n],
    }
}

// fact sheet §8.2: BEGIN, versions newest first with fallback on a non-zero status,
// PROPERTIES, END; all with the init transaction id.
#[test]
fn init_with_version_fallback() {
    let mut c = Client::new(ClientConfig::default());
    let (ops, e) = run_init(&mut c, &[ProtocolVersion::WIN8], props(0, false, 0x40000));
    assert_eq!(
        ops,
        [
            (Operation::BEGIN_INITIALIZATION, None),
            (
                Operation::QUERY_PROTOCOL_VERSION,
                Some(ProtocolVersion::WIN10)
            ),
            (
                Operation::QUERY_PROTOCOL_VERSION,
                Some(ProtocolVersion::WIN8_1)
            ),
            (
                Operation::QUERY_PROTOCOL_VERSION,
                Some(ProtocolVersion::WIN8)
            ),
            (Operation::QUERY_PROPERTIES, None),
            (Operation::END_INITIALIZATION, None),
        ]
    );
    let Some(Event::Ready(info)) = e else {
        panic!("{e:?}")
    };
    assert_eq!(info.version, ProtocolVersion::WIN8);
    assert_eq!(info.max_transfer_bytes, 0x40000);
    assert!(!info.multi_channel());
    assert!(c.is_ready());
    assert_eq!(c.info(), Some(&info));
}

#[test]
fn init_failures() {
    // Every version refused.
    let mut c = Client::new(ClientConfig::default());
    let (ops, e) = run_init(&mut c, &[], props(0, false, 0x40000));
    assert_eq!(ops.len(), 6); // BEGIN + 5 versions
    assert_eq!(e, Some(Event::InitFailed(InitError::NoCommonVersion)));
    assert_eq!(c.init_error(), Some(InitError::NoCommonVersion));
    assert_eq!(c.submit_flush(Lun::new(0)), Err(SubmitError::NotReady));
    // Zero max transfer.
    let mut c = Client::new(ClientConfig::default());
    let (_, e) = run_init(&mut c, &ProtocolVersion::ALL, props(0, false, 0));
    assert_eq!(e, Some(Event::InitFailed(InitError::BadProperties)));
    // A COMP that is not COMPLETE_IO aborts the probe.
    let mut c = Client::new(ClientConfig::default());
    c.start();
    take(&mut c).unwrap();
    let mut bad = VstorPacket::completion(VstorStatus::SUCCESS);
    bad.operation = Operation::EXECUTE_SRB;
    assert_eq!(
        complete(&mut c, INIT_TRANSACTION_ID, &bad, ProtocolVersion::WIN10),
        Ok(Some(Event::InitFailed(InitError::Protocol(
            ProtocolViolation::WrongOperation(Operation::EXECUTE_SRB)
        ))))
    );
    // BEGIN refused.
    let mut c = Client::new(ClientConfig::default());
    c.start();
    take(&mut c).unwrap();
    assert_eq!(
        complete(
            &mut c,
            INIT_TRANSACTION_ID,
            &VstorPacket::completion(VstorStatus::INVALID_DEVICE_STATE),
            ProtocolVersion::WIN10
        ),
        Ok(Some(Event::InitFailed(InitError::Refused(
            Operation::BEGIN_INITIALIZATION,
            VstorStatus::INVALID_DEVICE_STATE
        ))))
    );
    // A completion nobody waits for.
    let mut c = Client::new(ClientConfig::default());
    assert_eq!(
        complete(
            &mut c,
            INIT_TRANSACTION_ID,
            &VstorPacket::completion(VstorStatus::SUCCESS),
            ProtocolVersion::WIN10
        ),
        Err(ClientError::UnknownTransaction(INIT_TRANSACTION_ID))
    );
    // A short one during init fails it.
    c.start();
    take(&mut c).unwrap();
    assert_eq!(
        deliver(
            &mut c,
            PacketType::COMPLETION,
            INIT_TRANSACTION_ID,
            &[1, 0, 0, 0]
        ),
        Ok(Some(Event::InitFailed(InitError::Protocol(
            ProtocolViolation::ShortPacket { len: 8 }
        ))))
    );
}

#[test]
fn queue_depth_from_properties() {
    let (_, info) = ready(&[ProtocolVersion::WIN10]);
    assert_eq!(info.queue_depth, 64); // limited by N
                                      // 256 slots: the ring decides. Worst request: 16 + 16 + 8 * 65 + 64, padded, + 8 = 624
                                      // bytes; 126976 / 624 = 203, minus one of slack.
    let mut c = StorvscClient::<256, 65>::new(ClientConfig::default());
    c.start();
    let mut n = 0;
    let e = loop {
        let out = c.peek_transmit().unwrap();
        let op = VstorPacket::parse(out.payload, None).unwrap().operation;
        c.transmitted();
        let mut reply = VstorPacket::completion(VstorStatus::SUCCESS);
        if op == Operation::QUERY_PROPERTIES {
            reply.set_body(&props(0, false, 0x100000));
        }
        let b = host_packet(
            PacketType::COMPLETION,
            INIT_TRANSACTION_ID,
            reply.as_bytes(),
        );
        if let Some(e) = c.on_packet(&PacketView::new(&b).unwrap()).unwrap() {
            break e;
        }
        n += 1;
        assert!(n < 10);
    };
    let Event::Ready(info) = e else { panic!() };
    // The host allows 1 MiB, 65 pages hold 256 KiB.
    assert_eq!(info.max_transfer_bytes, 0x40000);
    assert_eq!(info.queue_depth, 202);
}

// fact sheet §8.4: data as one GPA-direct range, multi-page, unaligned.
#[test]
fn read_multi_page_unaligned() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let lun = Lun {
        path_id: 0,
        target_id: 1,
        lun: 2,
    };
    // 18 blocks of 512 starting 0xE00 into the first page: 4 pages.
    let tag = c
        .submit_read(lun, 0x1234, 18, 512, buf(0xE00, 18 * 512))
        .unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(s.ty, PacketType::DATA_USING_GPA_DIRECT);
    assert_eq!(s.payload_len, 64);
    assert_eq!(s.range, Some((0xE00, 18 * 512, PFNS[..4].to_vec())));
    assert_eq!(s.id & 0xFFFF, u64::from(tag.0) + 1);
    let srb = s.packet.srb();
    assert_eq!(s.packet.operation, Operation::EXECUTE_SRB);
    assert_eq!(srb.length, 0x34);
    assert_eq!((srb.path_id, srb.target_id, srb.lun), (0, 1, 2));
    assert_eq!(srb.data_in, DataDirection::READ);
    assert_eq!(srb.data_transfer_length, 18 * 512);
    assert_eq!(srb.sense_info_length, 20);
    assert_eq!(
        srb.srb_flags,
        srb_flags::DATA_IN | srb_flags::DISABLE_SYNCH_TRANSFER
    );
    assert_eq!(srb.time_out_value, 60);
    assert_eq!(
        srb.cdb(),
        &[opcode::READ_10, 0, 0, 0, 0x12, 0x34, 0, 0, 18, 0]
    );
    assert_eq!(c.outstanding(), 1);
    assert_eq!(
        complete(&mut c, s.id, &ok_reply(18 * 512), ProtocolVersion::WIN10),
        Ok(Some(Event::Completed {
            tag,
            result: Ok(IoDone {
                transferred: 18 * 512,
                scsi_status: ScsiStatus::GOOD
            })
        }))
    );
    assert_eq!(c.outstanding(), 0);
    // The same id again is unknown now.
    assert_eq!(
        complete(&mut c, s.id, &ok_reply(0), ProtocolVersion::WIN10),
        Err(ClientError::UnknownTransaction(s.id))
    );
}

#[test]
fn commands_encode_as_expected() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let lun = Lun::new(0);
    // Beyond 2^32 blocks: READ(16)/WRITE(16) with FUA.
    c.submit_write(lun, 1 << 32, 1, 4096, true, buf(0, 4096))
        .unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(s.packet.srb().cdb()[..2], [opcode::WRITE_16, 0x08]);
    assert_eq!(s.packet.srb().data_in, DataDirection::WRITE);
    assert_eq!(
        s.packet.srb().srb_flags & srb_flags::DATA_OUT,
        srb_flags::DATA_OUT
    );
    // Flush: no data, in-band.
    c.submit_flush(lun).unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(s.ty, PacketType::DATA_INBAND);
    assert_eq!(s.packet.srb().cdb()[0], opcode::SYNCHRONIZE_CACHE_10);
    assert_eq!(s.packet.srb().data_in, DataDirection::NONE);
    assert_eq!(s.packet.srb().data_transfer_length, 0);
    // UNMAP with its parameter list as data out.
    let mut list = [0u8; 40];
    let n = UnmapList::build(&mut list, &[(8, 8), (100, 1)]).unwrap();
    c.submit_unmap(lun, buf(0x10, n as u32)).unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(
        s.packet.srb().cdb(),
        &[opcode::UNMAP, 0, 0, 0, 0, 0, 0, 0, 40, 0]
    );
    assert_eq!(s.packet.srb().data_in, DataDirection::WRITE);
    // INQUIRY VPD, READ CAPACITY(16), REPORT LUNS.
    c.submit(
        lun,
        &Cdb::Inquiry {
            evpd: true,
            page_code: 0xB0,
            allocation_length: 64,
        },
        Some(buf(0, 64)),
    )
    .unwrap();
    assert_eq!(
        take(&mut c).unwrap().packet.srb().cdb(),
        &[0x12, 1, 0xB0, 0, 64, 0]
    );
    c.submit(
        lun,
        &Cdb::ReadCapacity16 {
            allocation_length: 32,
        },
        Some(buf(0, 32)),
    )
    .unwrap();
    assert_eq!(take(&mut c).unwrap().packet.srb().cdb()[..2], [0x9E, 0x10]);
    c.submit(
        lun,
        &Cdb::ReportLuns {
            select_report: 0,
            allocation_length: 4096,
        },
        Some(buf(0, 4096)),
    )
    .unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(s.packet.srb().cdb()[0], opcode::REPORT_LUNS);
    assert_eq!(s.range.unwrap().2.len(), 1);
    // Raw CDB.
    c.submit_raw(lun, &[0x00, 0, 0, 0, 0, 0], DataDirection::NONE, None)
        .unwrap();
    assert_eq!(take(&mut c).unwrap().packet.srb().cdb_length, 6);
}

#[test]
fn submit_validation() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let lun = Lun::new(0);
    // Page count disagrees with offset + len.
    let bad = DataBuffer {
        offset: 0xE00,
        len: 0x400,
        pfns: &PFNS[..1],
    };
    assert_eq!(
        c.submit_read(lun, 0, 2, 512, bad),
        Err(SubmitError::BadBuffer)
    );
    let bad = DataBuffer {
        offset: 4096,
        len: 512,
        pfns: &PFNS[..2],
    };
    assert_eq!(
        c.submit_read(lun, 0, 1, 512, bad),
        Err(SubmitError::BadBuffer)
    );
    // Length is not blocks × block size.
    assert_eq!(
        c.submit_read(lun, 0, 2, 512, buf(0, 512)),
        Err(SubmitError::LengthMismatch)
    );
    // Data for a command without data, none for one with.
    assert_eq!(
        c.submit(lun, &Cdb::TestUnitReady, Some(buf(0, 8))),
        Err(SubmitError::LengthMismatch)
    );
    assert_eq!(
        c.submit(lun, &Cdb::ReadCapacity10, None),
        Err(SubmitError::LengthMismatch)
    );
    // Beyond the max transfer (256 KiB).
    let pfns = [0u64; 65];
    let big = DataBuffer {
        offset: 0,
        len: 0x40000 + 512,
        pfns: &pfns,
    };
    assert_eq!(
        c.submit_read(lun, 0, 0x201, 512, big),
        Err(SubmitError::TooLarge)
    );
    // Queue full at the depth.
    for _ in 0..64 {
        c.submit_flush(lun).unwrap();
    }
    assert_eq!(c.submit_flush(lun), Err(SubmitError::QueueFull));
    assert_eq!(c.free_slots(), 0);
    let mut n = 0;
    c.fail_all(|_| n += 1);
    assert_eq!(n, 64);
    assert!(c.peek_transmit().is_none());
    assert_eq!(c.free_slots(), 64);
}

// Many outstanding, completed out of order, each exactly once.
#[test]
fn many_outstanding_out_of_order() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let lun = Lun::new(0);
    let mut sent = Vec::new();
    for i in 0..48u64 {
        let tag = c
            .submit_write(
                lun,
                i * 8,
                8,
                512,
                false,
                buf((i as u32 * 512) % 4096, 4096),
            )
            .unwrap();
        let s = take(&mut c).unwrap();
        assert_eq!(s.packet.srb().cdb()[5], (i * 8) as u8);
        sent.push((tag, s.id));
    }
    assert_eq!(c.outstanding(), 48);
    let mut ids: Vec<u64> = sent.iter().map(|s| s.1).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 48);
    // Complete in a scrambled order: odd ones backwards, then even ones.
    let order: Vec<usize> = (0..48)
        .rev()
        .filter(|i| i % 2 == 1)
        .chain((0..48).filter(|i| i % 2 == 0))
        .collect();
    for (k, &i) in order.iter().enumerate() {
        let (tag, id) = sent[i];
        let e = complete(&mut c, id, &ok_reply(4096), ProtocolVersion::WIN10).unwrap();
        assert_eq!(
            e,
            Some(Event::Completed {
                tag,
                result: Ok(IoDone {
                    transferred: 4096,
                    scsi_status: ScsiStatus::GOOD
                })
            })
        );
        assert_eq!(c.outstanding(), 47 - k);
    }
    // A reused slot gets a new generation: the old id does not complete the new request.
    let tag = c.submit_flush(lun).unwrap();
    let s = take(&mut c).unwrap();
    let old = sent.iter().find(|x| x.0 == tag).unwrap().1;
    assert_ne!(old, s.id);
    assert_eq!(
        complete(&mut c, old, &ok_reply(0), ProtocolVersion::WIN10),
        Err(ClientError::UnknownTransaction(old))
    );
    assert!(matches!(
        complete(&mut c, s.id, &ok_reply(0), ProtocolVersion::WIN10),
        Ok(Some(Event::Completed { .. }))
    ));
}

fn one_result(reply: &VstorPacket, full: bool) -> Result<IoDone, IoError> {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let lun = Lun::new(0);
    let tag = if full {
        c.submit_read(lun, 0, 8, 512, buf(0, 4096)).unwrap()
    } else {
        c.submit(
            lun,
            &Cdb::Inquiry {
                evpd: false,
                page_code: 0,
                allocation_length: 96,
            },
            Some(buf(0, 96)),
        )
        .unwrap()
    };
    let s = take(&mut c).unwrap();
    match complete(&mut c, s.id, reply, ProtocolVersion::WIN10) {
        Ok(Some(Event::Completed { tag: t, result })) => {
            assert_eq!(t, tag);
            result
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_are_typed() {
    let medium = Sense::new(
        SenseKey::MEDIUM_ERROR,
        AdditionalSense::UNRECOVERED_READ_ERROR,
    )
    .with_information(7);
    assert_eq!(
        one_result(&sense_reply(medium), true),
        Err(IoError::MediumError(medium))
    );
    let illegal = Sense::new(SenseKey::ILLEGAL_REQUEST, AdditionalSense::LBA_OUT_OF_RANGE);
    assert_eq!(
        one_result(&sense_reply(illegal), true),
        Err(IoError::IllegalRequest(illegal))
    );
    let wp = Sense::new(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED);
    assert_eq!(
        one_result(&sense_reply(wp), true),
        Err(IoError::DataProtect(wp))
    );
    let nr = Sense::new(SenseKey::NOT_READY, AdditionalSense::MEDIUM_NOT_PRESENT);
    assert_eq!(
        one_result(&sense_reply(nr), true),
        Err(IoError::NotReady(nr))
    );
    // Descriptor-format sense works too.
    let mut d = [0u8; 20];
    let n = medium.to_descriptor(&mut d).unwrap();
    let r = srb_reply(
        SrbStatus::ERROR.with_autosense(),
        ScsiStatus::CHECK_CONDITION,
        0,
        Some(&d[..n]),
        ProtocolVersion::WIN10,
    );
    assert_eq!(one_result(&r, true), Err(IoError::MediumError(medium)));
    // RECOVERED ERROR is success.
    let rec = Sense::new(
        SenseKey::RECOVERED_ERROR,
        AdditionalSense::NO_ADDITIONAL_SENSE,
    );
    let r = srb_reply(
        SrbStatus::SUCCESS.with_autosense(),
        ScsiStatus::CHECK_CONDITION,
        4096,
        Some(&rec.to_fixed()),
        ProtocolVersion::WIN10,
    );
    assert_eq!(
        one_result(&r, true),
        Ok(IoDone {
            transferred: 4096,
            scsi_status: ScsiStatus::CHECK_CONDITION
        })
    );
    // SRB-level outcomes.
    let r = srb_reply(
        SrbStatus::INVALID_LUN,
        ScsiStatus::GOOD,
        0,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(
        one_result(&r, true),
        Err(IoError::NoDevice(SrbStatus::INVALID_LUN))
    );
    let r = srb_reply(
        SrbStatus::BUSY,
        ScsiStatus::GOOD,
        0,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(one_result(&r, true), Err(IoError::Busy));
    let r = srb_reply(
        SrbStatus::ERROR,
        ScsiStatus::GOOD,
        0,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(one_result(&r, true), Err(IoError::Srb(SrbStatus::ERROR)));
    let r = srb_reply(
        SrbStatus::ERROR,
        ScsiStatus::CHECK_CONDITION,
        0,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(
        one_result(&r, true),
        Err(IoError::CheckConditionWithoutSense)
    );
    let r = srb_reply(
        SrbStatus::SUCCESS,
        ScsiStatus::RESERVATION_CONFLICT,
        0,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(
        one_result(&r, true),
        Err(IoError::Scsi(ScsiStatus::RESERVATION_CONFLICT))
    );
    // Short READ is an error; a short INQUIRY (DATA_OVERRUN = underrun) is fine.
    assert_eq!(
        one_result(&ok_reply(512), true),
        Err(IoError::ShortTransfer {
            requested: 4096,
            transferred: 512
        })
    );
    let r = srb_reply(
        SrbStatus::DATA_OVERRUN,
        ScsiStatus::GOOD,
        36,
        None,
        ProtocolVersion::WIN10,
    );
    assert_eq!(
        one_result(&r, false),
        Ok(IoDone {
            transferred: 36,
            scsi_status: ScsiStatus::GOOD
        })
    );
    // Host lies.
    assert_eq!(
        one_result(&ok_reply(8192), true),
        Err(IoError::Protocol(ProtocolViolation::TransferTooLong {
            requested: 4096,
            reported: 8192
        }))
    );
    let mut r = sense_reply(medium);
    r.body[9] = 21; // sense_info_length beyond 20
    assert_eq!(
        one_result(&r, true),
        Err(IoError::Protocol(ProtocolViolation::SenseTooLong {
            len: 21,
            max: 20
        }))
    );
    let mut r = sense_reply(medium);
    r.body[16] = 0x12; // not a sense response code
    assert_eq!(
        one_result(&r, true),
        Err(IoError::Protocol(ProtocolViolation::BadSense(
            SenseError::BadResponseCode(0x12)
        )))
    );
    let mut r = ok_reply(4096);
    r.operation = Operation::EXECUTE_SRB;
    assert_eq!(
        one_result(&r, true),
        Err(IoError::Protocol(ProtocolViolation::WrongOperation(
            Operation::EXECUTE_SRB
        )))
    );
    let mut r = ok_reply(4096);
    r.status = VstorStatus::UNSUCCESSFUL;
    assert_eq!(
        one_result(&r, true),
        Err(IoError::HostStatus(VstorStatus::UNSUCCESSFUL))
    );
}

#[test]
fn unit_attention_is_retried() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let ua = Sense::new(SenseKey::UNIT_ATTENTION, AdditionalSense::POWER_ON_RESET);
    let tag = c
        .submit_read(Lun::new(0), 0, 1, 512, buf(0x200, 512))
        .unwrap();
    let first = take(&mut c).unwrap();
    assert_eq!(
        complete(&mut c, first.id, &sense_reply(ua), ProtocolVersion::WIN10),
        Ok(Some(Event::Retrying { tag, sense: ua }))
    );
    let again = take(&mut c).unwrap();
    assert_ne!(again.id, first.id);
    assert_eq!(again.packet, first.packet);
    assert_eq!(again.range, first.range);
    assert_eq!(
        complete(&mut c, first.id, &ok_reply(512), ProtocolVersion::WIN10),
        Err(ClientError::UnknownTransaction(first.id))
    );
    assert!(matches!(
        complete(&mut c, again.id, &ok_reply(512), ProtocolVersion::WIN10),
        Ok(Some(Event::Completed { result: Ok(_), .. }))
    ));
    // Retries run out: 1 + 3 attempts, then the error.
    let tag = c.submit_flush(Lun::new(0)).unwrap();
    for _ in 0..3 {
        let s = take(&mut c).unwrap();
        assert!(matches!(
            complete(&mut c, s.id, &sense_reply(ua), ProtocolVersion::WIN10),
            Ok(Some(Event::Retrying { .. }))
        ));
    }
    let s = take(&mut c).unwrap();
    assert_eq!(
        complete(&mut c, s.id, &sense_reply(ua), ProtocolVersion::WIN10),
        Ok(Some(Event::Completed {
            tag,
            result: Err(IoError::UnitAttention(ua))
        }))
    );
    assert_eq!(c.outstanding(), 0);
}

// fact sheet §8.1: pre-Win8 hosts get 48-byte packets, 36-byte SRBs, 18-byte sense.
#[test]
fn pre_win8_size_delta() {
    let (mut c, info) = ready(&[ProtocolVersion::WIN7]);
    assert_eq!(info.version, ProtocolVersion::WIN7);
    assert!(!info.multi_channel());
    c.submit_read(Lun::new(0), 0, 1, 512, buf(0, 512)).unwrap();
    let s = take(&mut c).unwrap();
    assert_eq!(s.payload_len, 48);
    assert_eq!(s.packet.srb().length, 0x24);
    assert_eq!(s.packet.srb().sense_info_length, 18);
    let v = ProtocolVersion::WIN7;
    let medium = Sense::new(
        SenseKey::MEDIUM_ERROR,
        AdditionalSense::UNRECOVERED_READ_ERROR,
    );
    let r = srb_reply(
        SrbStatus::ERROR.with_autosense(),
        ScsiStatus::CHECK_CONDITION,
        0,
        Some(&medium.to_fixed()),
        v,
    );
    assert!(matches!(
        complete(&mut c, s.id, &r, v),
        Ok(Some(Event::Completed {
            result: Err(IoError::MediumError(_)),
            ..
        }))
    ));
    // A 20-byte sense length is too long for this version.
    c.submit_read(Lun::new(0), 0, 1, 512, buf(0, 512)).unwrap();
    let s = take(&mut c).unwrap();
    let mut r = r;
    r.body[9] = 20;
    assert!(matches!(
        complete(&mut c, s.id, &r, v),
        Ok(Some(Event::Completed {
            result: Err(IoError::Protocol(ProtocolViolation::SenseTooLong {
                len: 20,
                max: 18
            })),
            ..
        }))
    ));
}

#[test]
fn enumerate_bus_and_unsolicited() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    let p = VstorPacket {
        operation: Operation::ENUMERATE_BUS,
        ..VstorPacket::default()
    };
    assert_eq!(
        deliver(&mut c, PacketType::DATA_INBAND, 0, p.as_bytes()),
        Ok(Some(Event::BusChanged(Operation::ENUMERATE_BUS)))
    );
    let p = VstorPacket {
        operation: Operation::REMOVE_DEVICE,
        ..VstorPacket::default()
    };
    assert_eq!(
        deliver(&mut c, PacketType::DATA_INBAND, 0, p.as_bytes()),
        Ok(Some(Event::BusChanged(Operation::REMOVE_DEVICE)))
    );
    let mut p = VstorPacket {
        operation: Operation::FCHBA_DATA,
        ..VstorPacket::default()
    };
    p.body[4] = 0xAA;
    let Ok(Some(Event::FcHbaData(w))) = deliver(&mut c, PacketType::DATA_INBAND, 0, p.as_bytes())
    else {
        panic!()
    };
    assert_eq!(w.primary_port_wwn[0], 0xAA);
    let p = VstorPacket {
        operation: Operation::EXECUTE_SRB,
        ..VstorPacket::default()
    };
    assert_eq!(
        deliver(&mut c, PacketType::DATA_INBAND, 0, p.as_bytes()),
        Err(ClientError::UnexpectedOperation(Operation::EXECUTE_SRB))
    );
    assert_eq!(
        deliver(&mut c, PacketType::DATA_USING_GPADL, 0, p.as_bytes()),
        Err(ClientError::Protocol(ProtocolViolation::WrongPacketType(
            PacketType::DATA_USING_GPADL
        )))
    );
    assert!(deliver(&mut c, PacketType::DATA_INBAND, 0, &[11, 0, 0, 0]).is_err());
    // Still usable.
    c.submit_flush(Lun::new(0)).unwrap();
}

// fact sheet §8.2 step 6.
#[test]
fn sub_channels() {
    let (mut c, info) = ready(&[ProtocolVersion::WIN10]);
    assert!(info.multi_channel());
    assert_eq!(c.request_sub_channels(8), Ok(4));
    assert_eq!(c.request_sub_channels(1), Err(SubmitError::Busy));
    let s = take(&mut c).unwrap();
    assert_eq!(s.id, INIT_TRANSACTION_ID);
    assert_eq!(s.packet.operation, Operation::CREATE_SUB_CHANNELS);
    assert_eq!(s.packet.sub_channel_count(), 4);
    assert_eq!(
        complete(
            &mut c,
            INIT_TRANSACTION_ID,
            &VstorPacket::completion(VstorStatus::SUCCESS),
            ProtocolVersion::WIN10
        ),
        Ok(Some(Event::SubChannelsCreated(4)))
    );
    // A sub-channel client is ready at once and numbers its own requests.
    let mut sub = Client::new_subchannel(ClientConfig::default(), info);
    assert!(sub.is_ready());
    sub.submit_flush(Lun::new(0)).unwrap();
    assert_eq!(take(&mut sub).unwrap().id & 0xFFFF, 1);
    // No multi-channel: refused.
    let (mut c, _) = ready(&[ProtocolVersion::WIN7]);
    assert_eq!(c.request_sub_channels(2), Err(SubmitError::Busy));
}

proptest! {
    // Whatever the host puts in a completion: an event or an error, never a panic, and a
    // success never reports more than requested.
    #[test]
    fn hostile_completion_bytes(payload in proptest::collection::vec(any::<u8>(), 0..80), full in any::<bool>()) {
        let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
        let tag = if full {
            c.submit_read(Lun::new(0), 0, 8, 512, buf(0x10, 4096)).unwrap()
        } else {
            c.submit(Lun::new(0), &Cdb::Inquiry { evpd: true, page_code: 0, allocation_length: 255 }, Some(buf(0, 255))).unwrap()
        };
        let s = take(&mut c).unwrap();
        match deliver(&mut c, PacketType::COMPLETION, s.id, &payload) {
            Ok(Some(Event::Completed { tag: t, result })) => {
                prop_assert_eq!(t, tag);
                prop_assert_eq!(c.outstanding(), 0);
                if let Ok(d) = result {
                    let max = if full { 4096 } else { 255 };
                    prop_assert!(d.transferred <= max);
                }
            }
            Ok(Some(Event::Retrying { .. })) => prop_assert!(c.peek_transmit().is_some()),
            other => prop_assert!(false, "{:?}", other),
        }
    }

    // Random whole packets (any type, any id) at any point of init or I/O.
    #[test]
    fn hostile_packets(packets in proptest::collection::vec((0u16..16, prop_oneof![Just(INIT_TRANSACTION_ID), Just(0u64), 0u64..0x40000, any::<u64>()], proptest::collection::vec(any::<u8>(), 0..72)), 1..8), init_first in any::<bool>()) {
        let mut c = Client::new(ClientConfig::default());
        if init_first {
            let (_, e) = run_init(&mut c, &ProtocolVersion::ALL, props(2, true, 0x10000));
            prop_assert!(matches!(e, Some(Event::Ready(_))));
            for _ in 0..4 {
                c.submit_flush(Lun::new(0)).unwrap();
                take(&mut c).unwrap();
            }
        } else {
            c.start();
            take(&mut c);
        }
        for (ty, id, payload) in packets {
            let b = host_packet(PacketType(ty), id, &payload);
            let _ = c.on_packet(&PacketView::new(&b).unwrap());
            prop_assert!(c.outstanding() <= 4);
            while c.peek_transmit().is_some() {
                c.transmitted();
            }
        }
    }
}

#[test]
fn out_packet_sizes() {
    let (mut c, _) = ready(&[ProtocolVersion::WIN10]);
    c.submit_read(Lun::new(0), 0, 8, 512, buf(0x800, 4096))
        .unwrap();
    let out = c.peek_transmit().unwrap();
    // 16 descriptor + 16 GPA header/range + 2 PFNs + 64 packet + 8 trailer.
    assert_eq!(out.ring_bytes(), 16 + 16 + 16 + 64 + 8);
    let mut small = [0u8; 8];
    assert_eq!(out.encode_extension(&mut small), None);
    let v = vec![0u8; MAX_GPA_EXTENSION];
    assert!(v.len() >= 16 + 8 * 257);
}
