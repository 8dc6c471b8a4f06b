//! Wire layouts checked byte by byte against the fact sheet (§7.2-§7.4), message offsets from
//! the start of the packet payload.
use super::*;
use crate::fcopy::FcopyStart;
use crate::framing::{IcFlags, IcMessageType, BODY_OFFSET};
use crate::kvp::{value_type, KvpPool};
use crate::shutdown::ShutdownBody;
use crate::timesync::FLAG_SYNC;
use crate::vss::VssOperation;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn hdr(major: u16) -> RequestHeader {
    RequestHeader::new(
        Negotiated {
            framework: V3,
            message: IcVersion::new(major, 0),
        },
        0x42,
    )
}

// §7.2: pipe header, icmsg_hdr fields, flags, body at 28; §7.3: counts @28/@30, versions @36.
#[test]
fn negotiate_request_bytes() {
    let mut b = buf();
    let n =
        host::build_negotiate(&mut b, 7, &[V3, IcVersion::V1_0], &[IcVersion::new(4, 0)]).unwrap();
    assert_eq!(n, 28 + 8 + 3 * 4);
    assert_eq!(u32_at(&b, 0), 1, "pipe type data");
    assert_eq!(u32_at(&b, 4) as usize, n - 8, "pipe msg_size");
    assert_eq!((u16_at(&b, 8), u16_at(&b, 10)), (3, 0), "icverframe");
    assert_eq!(u16_at(&b, 12), 0, "icmsgtype NEGOTIATE");
    assert_eq!((u16_at(&b, 14), u16_at(&b, 16)), (4, 0), "icvermsg");
    assert_eq!(u16_at(&b, 18) as usize, n - 28, "icmsgsize");
    assert_eq!(u32_at(&b, 20), 0, "status");
    assert_eq!(b[24], 7, "transaction id");
    assert_eq!(b[25], 0x3, "TRANSACTION|REQUEST");
    assert_eq!((u16_at(&b, 28), u16_at(&b, 30)), (2, 1));
    assert_eq!(u32_at(&b, 32), 0);
    assert_eq!((u16_at(&b, 36), u16_at(&b, 38)), (3, 0));
    assert_eq!((u16_at(&b, 40), u16_at(&b, 42)), (1, 0));
    assert_eq!((u16_at(&b, 44), u16_at(&b, 46)), (4, 0));
    assert_eq!(BODY_OFFSET, 28);
}

#[test]
fn constants() {
    assert_eq!(IcFlags::HOST_REQUEST.into_bits(), 0x3);
    assert_eq!(IcFlags::GUEST_RESPONSE.into_bits(), 0x5);
    assert!(IcFlags::from_bits(0x4).response());
    assert_eq!(Status::E_FAIL.get(), 0x8000_4005);
    assert_eq!(Status::NO_MORE_ITEMS.get(), 0x8007_0103);
    assert_eq!(Status::NOT_SUPPORTED.get(), 0x8007_0032);
    assert_eq!(Status::INVALID_ARG.get(), 0x8007_0057);
    assert_eq!(Status::NOT_FOUND.get(), 0x8004_1002);
    assert_eq!(Status::ALREADY_EXISTS.get(), 0x8007_0050);
    assert_eq!(Status::DISK_FULL.get(), 0x8007_0070);
    assert_eq!(Status::MACHINE_LOCKED.get(), 0x8007_04F7);
    assert_eq!(Status::DEVICE_NOT_CONNECTED.get(), 0x8007_048F);
    let types = [
        (IcMessageType::NEGOTIATE, 0),
        (IcMessageType::HEARTBEAT, 1),
        (IcMessageType::KVP_EXCHANGE, 2),
        (IcMessageType::SHUTDOWN, 3),
        (IcMessageType::TIMESYNC, 4),
        (IcMessageType::VSS, 5),
        (IcMessageType::RDV, 6),
        (IcMessageType::FCOPY, 7),
        (IcMessageType::VM_SESSION, 8),
    ];
    for (t, v) in types {
        assert_eq!(t.get(), v);
        assert!(t.name().is_some());
    }
    assert_eq!(
        std::format!("{:?}", IcMessageType::new(99)),
        "IcMessageType(99)"
    );
    assert_eq!(std::format!("{:?}", Status::new(1)), "Status(0x00000001)");
    assert_eq!(std::format!("{}", IcVersion::new(3, 2)), "3.2");
    assert!(IcVersion::new(3, 2) > IcVersion::new(3, 0));
    assert!(IcVersion::new(4, 0) > IcVersion::new(3, 9));
}

// §7.3: Linux's per-service lists.
#[test]
fn linux_version_lists() {
    let v = IcVersion::new;
    assert_eq!(
        ServiceVersions::SHUTDOWN.message,
        &[v(3, 2), v(3, 1), v(3, 0), v(1, 0)]
    );
    assert_eq!(
        ServiceVersions::TIMESYNC.message,
        &[v(4, 0), v(3, 0), v(1, 0)]
    );
    assert_eq!(ServiceVersions::HEARTBEAT.message, &[v(3, 0), v(1, 0)]);
    assert_eq!(ServiceVersions::KVP.message, &[v(4, 0), v(3, 0), v(1, 0)]);
    assert_eq!(ServiceVersions::VSS.framework, &[v(3, 0)]);
    assert_eq!(ServiceVersions::VSS.message, &[v(5, 0)]);
    assert_eq!(ServiceVersions::FCOPY.message, &[v(1, 1)]);
    for s in [
        ServiceVersions::SHUTDOWN,
        ServiceVersions::TIMESYNC,
        ServiceVersions::HEARTBEAT,
        ServiceVersions::KVP,
    ] {
        assert_eq!(s.framework, &[v(3, 0), v(1, 0)]);
    }
}

// §7.4 heartbeat: seq_num u64 @28, 32 reserved bytes.
#[test]
fn heartbeat_bytes() {
    let mut b = buf();
    let n = host::build_heartbeat(&mut b, &hdr(3), 0x1122_3344_5566_7788).unwrap();
    assert_eq!(n, 28 + 40);
    assert_eq!(u16_at(&b, 12), 1);
    assert_eq!(u64_at(&b, 28), 0x1122_3344_5566_7788);
    assert_eq!(b[24], 0x42);
}

// §7.4 shutdown: reason @28, timeout @32, flags @36, message @40, body 2060.
#[test]
fn shutdown_bytes() {
    let mut b = buf();
    let flags = ShutdownBody::RESTART | ShutdownBody::FORCE;
    let n = host::build_shutdown(&mut b, &hdr(3), flags, 0x8000_0000, 30, b"bye").unwrap();
    assert_eq!(n, 28 + 2060);
    assert_eq!(u16_at(&b, 12), 3);
    assert_eq!(u32_at(&b, 28), 0x8000_0000);
    assert_eq!(u32_at(&b, 32), 30);
    assert_eq!(u32_at(&b, 36), 3);
    assert_eq!(&b[40..43], b"bye");
    assert!(host::build_shutdown(&mut b, &hdr(3), 0, 0, 0, &[1; 2049]).is_err());
}

// §7.4 timesync: v3 parent @28, child @36, rtt @44, flags @52; v4 parent @28, ref @36,
// flags @44, leap @45, stratum @46.
#[test]
fn timesync_bytes() {
    let mut b = buf();
    let n = host::build_timesync(&mut b, &hdr(3), 0xAAAA, 0xBBBB, FLAG_SYNC).unwrap();
    assert_eq!(n, 28 + 28);
    assert_eq!(u16_at(&b, 12), 4);
    assert_eq!(u64_at(&b, 28), 0xAAAA);
    assert_eq!(u64_at(&b, 36), 0);
    assert_eq!(b[52], 1);
    let n = host::build_timesync(&mut b, &hdr(4), 0xAAAA, 0xBBBB, 2).unwrap();
    assert_eq!(n, 28 + 24);
    assert_eq!(u64_at(&b, 28), 0xAAAA);
    assert_eq!(u64_at(&b, 36), 0xBBBB);
    assert_eq!(b[44], 2);
    assert_eq!((b[45], b[46]), (0, 0));
}

// §7.4 KVP: op @28, pool @29; record at @32: value_type, key_size @36, value_size @40,
// key[512] @44, value[2048] @556; ENUMERATE index @32, record @36; DELETE key_size @32, key @36.
#[test]
fn kvp_bytes() {
    let mut b = buf();
    let n = host::build_kvp_set(&mut b, &hdr(4), KvpPool::EXTERNAL, "Ké", "v1").unwrap();
    assert_eq!(n, 28 + 2576);
    assert_eq!(u16_at(&b, 12), 2);
    assert_eq!((b[28], b[29]), (1, 0));
    assert_eq!(u32_at(&b, 32), value_type::REG_SZ);
    assert_eq!(u32_at(&b, 36), 6, "2 x (chars + 1)");
    assert_eq!(u32_at(&b, 40), 6);
    assert_eq!(&b[44..50], &[b'K', 0, 0xE9, 0, 0, 0]);
    assert_eq!(&b[556..562], &[b'v', 0, b'1', 0, 0, 0]);

    let n = host::build_kvp_enumerate(&mut b, &hdr(4), KvpPool::AUTO, 5).unwrap();
    assert_eq!(n, 28 + 2580);
    assert_eq!((b[28], b[29]), (3, 2));
    assert_eq!(u32_at(&b, 32), 5);

    let n = host::build_kvp_delete(&mut b, &hdr(4), KvpPool::GUEST, "ab").unwrap();
    assert_eq!(n, 28 + 520);
    assert_eq!((b[28], b[29]), (2, 1));
    assert_eq!(u32_at(&b, 32), 6);
    assert_eq!(&b[36..42], &[b'a', 0, b'b', 0, 0, 0]);

    let n = host::build_kvp_get(&mut b, &hdr(4), KvpPool::GUEST, "k").unwrap();
    assert_eq!(n, 28 + 2576);
    assert_eq!((b[28], b[29]), (0, 1));
    assert_eq!(u32_at(&b, 36), 4);
    // 255 characters + NUL fill the 512-byte key; 256 do not.
    let long: std::string::String = core::iter::repeat_n('x', 255).collect();
    assert!(host::build_kvp_get(&mut b, &hdr(4), KvpPool::GUEST, &long).is_ok());
    let longer = std::format!("{long}x");
    assert!(host::build_kvp_get(&mut b, &hdr(4), KvpPool::GUEST, &longer).is_err());
}

// §7.4 VSS: operation @28, flags @36, body 12.
#[test]
fn vss_bytes() {
    let mut b = buf();
    let n = host::build_vss(&mut b, &hdr(5), VssOperation::FREEZE).unwrap();
    assert_eq!(n, 28 + 12);
    assert_eq!(u16_at(&b, 12), 5);
    assert_eq!(b[28], 5);
    assert_eq!(u32_at(&b, 36), 0);
}

// §7.4 fcopy: operation u32 @28, two 16-byte ids; START file_name @64, path_name @584,
// copy_flags @1104, file_size @1108; WRITE offset @68, size @76, data @80 (6144 bytes).
#[test]
fn fcopy_bytes() {
    let mut b = buf();
    let n = host::build_fcopy_start(&mut b, &hdr(1), "f.txt", "/tmp", FcopyStart::OVERWRITE, 99)
        .unwrap();
    assert_eq!(n, 28 + 1088);
    assert_eq!(u16_at(&b, 12), 7);
    assert_eq!(u32_at(&b, 28), 0);
    assert_eq!(&b[64..68], &[b'f', 0, b'.', 0]);
    assert_eq!(&b[584..588], &[b'/', 0, b't', 0]);
    assert_eq!(u32_at(&b, 1104), 1);
    assert_eq!(u64_at(&b, 1108), 99);
    let n = host::build_fcopy_write(&mut b, &hdr(1), 0x1000, b"data").unwrap();
    assert_eq!(n, 28 + 6196);
    assert_eq!(u32_at(&b, 28), 1);
    assert_eq!(u64_at(&b, 68), 0x1000);
    assert_eq!(u32_at(&b, 76), 4);
    assert_eq!(&b[80..84], b"data");
    assert!(host::build_fcopy_write(&mut b, &hdr(1), 0, &[0; 6145]).is_err());
    let n = host::build_fcopy_complete(&mut b, &hdr(1)).unwrap();
    assert_eq!((n, u32_at(&b, 28)), (28 + 36, 2));
    let n = host::build_fcopy_cancel(&mut b, &hdr(1)).unwrap();
    assert_eq!((n, u32_at(&b, 28)), (28 + 36, 3));
}

#[test]
fn builders_check_buffer_size() {
    let mut small = [0u8; 40];
    assert_eq!(
        host::build_heartbeat(&mut small, &hdr(3), 1),
        Err(crate::IcError::BufferTooSmall { needed: 68 })
    );
    assert!(host::build_kvp_get(&mut small, &hdr(3), KvpPool::GUEST, "k").is_err());
    let too_many = [V3; 101];
    assert_eq!(
        host::build_negotiate(&mut buf(), 0, &too_many, &[V3]),
        Err(crate::IcError::BadField)
    );
}

// §7.1: the IC class GUIDs map to their message types and §7.3 version lists.
#[test]
fn class_mapping() {
    use crate::class_info;
    use vmbus_guest::guid::class;
    assert_eq!(
        class_info(&class::HEARTBEAT),
        Some((IcMessageType::HEARTBEAT, ServiceVersions::HEARTBEAT))
    );
    assert_eq!(
        class_info(&class::SHUTDOWN).unwrap().0,
        IcMessageType::SHUTDOWN
    );
    assert_eq!(
        class_info(&class::TIMESYNC).unwrap().0,
        IcMessageType::TIMESYNC
    );
    assert_eq!(
        class_info(&class::KVP).unwrap().0,
        IcMessageType::KVP_EXCHANGE
    );
    assert_eq!(class_info(&class::VSS).unwrap().1, ServiceVersions::VSS);
    assert_eq!(class_info(&class::FCOPY).unwrap().0, IcMessageType::FCOPY);
    assert_eq!(class_info(&class::SCSI), None);
    assert_eq!(crate::kvp::AUTO_POOL_KEYS[0], "FullyQualifiedDomainName");
}
