extern crate std;
use super::*;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

// SBC-3 byte layouts of the commands Linux sends (fact sheet §8.5).
#[test]
fn known_encodings() {
    let e = |c: Cdb| c.encode().unwrap().as_slice().to_vec();
    assert_eq!(e(Cdb::TestUnitReady), [0, 0, 0, 0, 0, 0]);
    assert_eq!(
        e(Cdb::Inquiry {
            evpd: false,
            page_code: 0,
            allocation_length: 36
        }),
        [0x12, 0, 0, 0, 36, 0]
    );
    assert_eq!(
        e(Cdb::Inquiry {
            evpd: true,
            page_code: vpd::BLOCK_LIMITS,
            allocation_length: 0x1234
        }),
        [0x12, 1, 0xB0, 0x12, 0x34, 0]
    );
    assert_eq!(
        e(Cdb::ReadCapacity16 {
            allocation_length: 32
        }),
        [0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
    );
    assert_eq!(e(Cdb::ReadCapacity10), [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        e(Cdb::Read(ReadWrite {
            size: CdbSize::Ten,
            lba: 0x0102_0304,
            blocks: 8,
            fua: false,
            dpo: false
        })),
        [0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]
    );
    assert_eq!(
        e(Cdb::Write(ReadWrite {
            size: CdbSize::Sixteen,
            lba: 0x0102_0304_0506_0708,
            blocks: 0x0A0B_0C0D,
            fua: true,
            dpo: false
        })),
        [0x8A, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D, 0, 0]
    );
    assert_eq!(
        e(Cdb::Read(ReadWrite {
            size: CdbSize::Six,
            lba: 0x1F_FFFF,
            blocks: 256,
            fua: false,
            dpo: false
        })),
        [0x08, 0x1F, 0xFF, 0xFF, 0, 0]
    );
    assert_eq!(
        e(Cdb::SynchronizeCache(SyncCache {
            size: CdbSize::Ten,
            lba: 0,
            blocks: 0,
            immed: false
        })),
        [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        e(Cdb::Unmap {
            anchor: false,
            parameter_list_length: 24
        }),
        [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]
    );
    assert_eq!(
        e(Cdb::ModeSense(ModeSense {
            size: CdbSize::Six,
            dbd: false,
            llbaa: false,
            page_control: 0,
            page_code: mode_page::ALL,
            subpage: 0,
            allocation_length: 4
        })),
        [0x1A, 0, 0x3F, 0, 4, 0]
    );
    assert_eq!(
        e(Cdb::ModeSense(ModeSense {
            size: CdbSize::Ten,
            dbd: false,
            llbaa: false,
            page_control: 0,
            page_code: mode_page::CONTROL,
            subpage: mode_page::IO_ADVICE_HINTS_SUBPAGE,
            allocation_length: 512
        })),
        [0x5A, 0, 0x0A, 0x05, 0, 0, 0, 2, 0, 0]
    );
    assert_eq!(
        e(Cdb::ReportLuns {
            select_report: 0,
            allocation_length: 4096
        }),
        [0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
    );
    assert_eq!(
        e(Cdb::StartStopUnit(StartStop {
            immed: false,
            power_condition: 0,
            modifier: 0,
            no_flush: false,
            loej: false,
            start: true
        })),
        [0x1B, 0, 0, 0, 1, 0]
    );
}

#[test]
fn decode_errors() {
    assert_eq!(Cdb::parse(&[]), Err(CdbError::Empty));
    assert_eq!(
        Cdb::parse(&[0x28, 0, 0]),
        Err(CdbError::TooShort {
            opcode: 0x28,
            need: 10
        })
    );
    assert_eq!(Cdb::parse(&[0x41; 10]), Err(CdbError::Unsupported(0x41)));
    // READ CAPACITY(16) needs service action 0x10.
    let mut rc = [0u8; 16];
    rc[0] = 0x9E;
    rc[1] = 0x11;
    assert_eq!(Cdb::parse(&rc), Err(CdbError::InvalidField { byte: 1 }));
    // RDPROTECT is not supported.
    assert_eq!(
        Cdb::parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]),
        Err(CdbError::InvalidField { byte: 1 })
    );
    // A standard INQUIRY with a page code.
    assert_eq!(
        Cdb::parse(&[0x12, 0, 0x80, 0, 36, 0]),
        Err(CdbError::InvalidField { byte: 2 })
    );
    // READ(6) with 0 blocks means 256.
    assert_eq!(
        Cdb::parse(&[0x08, 0xE0, 0, 5, 0, 0]),
        Ok(Cdb::Read(ReadWrite {
            size: CdbSize::Six,
            lba: 5,
            blocks: 256,
            fua: false,
            dpo: false
        }))
    );
    // Longer input (the SRB's 16-byte CDB area) is fine.
    assert_eq!(Cdb::parse(&[0u8; 16]), Ok(Cdb::TestUnitReady));
}

#[test]
fn encode_refuses_what_does_not_fit() {
    let rw = |size, lba, blocks| {
        Cdb::Read(ReadWrite {
            size,
            lba,
            blocks,
            fua: false,
            dpo: false,
        })
        .encode()
    };
    assert!(rw(CdbSize::Six, 1 << 21, 1).is_err());
    assert!(rw(CdbSize::Six, 0, 257).is_err());
    assert!(rw(CdbSize::Six, 0, 0).is_err());
    assert!(rw(CdbSize::Ten, 1 << 32, 1).is_err());
    assert!(rw(CdbSize::Ten, 0, 1 << 16).is_err());
    assert!(rw(CdbSize::Sixteen, u64::MAX, u32::MAX).is_ok());
}

#[test]
fn data_layouts() {
    let rc = ReadCapacity16Data::read_from_bytes(&[
        0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 2, 0, 0, 3, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
    ])
    .unwrap();
    assert_eq!(rc.last_lba.get(), 0xFFFF);
    assert_eq!(rc.block_length.get(), 512);
    assert_eq!(rc.exponents & 0xF, 3);
    assert_ne!(rc.provisioning.get() & ReadCapacity16Data::LBPME, 0);
    assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
    assert_eq!(encode_lun(0x123), [0x41, 0x23, 0, 0, 0, 0, 0, 0]);
    assert_eq!(decode_lun(encode_lun(0x123)), Some(0x123));
    assert_eq!(decode_lun([0, 7, 0, 0, 0, 0, 0, 1]), None);
    assert_eq!(opcode::cdb_len(opcode::READ_16), Some(16));
    assert_eq!(opcode::cdb_len(opcode::REPORT_LUNS), Some(12));
    assert_eq!(opcode::cdb_len(opcode::READ_10), Some(10));
    assert_eq!(opcode::cdb_len(opcode::INQUIRY), Some(6));
}

#[test]
fn unmap_list() {
    let mut b = [0u8; 64];
    let n = UnmapList::build(&mut b, &[(0x10, 8), (0x1_0000_0000, 1)]).unwrap();
    assert_eq!(n, 40);
    assert_eq!(&b[..8], &[0, 38, 0, 32, 0, 0, 0, 0]);
    assert_eq!(
        &b[8..24],
        &[0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0]
    );
    let l = UnmapList::parse(&b[..n]).unwrap();
    assert_eq!(
        l.iter().collect::<Vec<_>>(),
        [(0x10, 8), (0x1_0000_0000, 1)]
    );
    // Descriptor length beyond the bytes.
    assert_eq!(
        UnmapList::parse(&b[..24]).err(),
        Some(UnmapListError::BadLength)
    );
    assert!(UnmapList::parse(&[]).unwrap().is_empty());
    assert_eq!(
        UnmapList::build(&mut b[..20], &[(0, 1)]),
        Err(UnmapListError::TooManyDescriptors)
    );
}

fn cdb_strategy() -> impl Strategy<Value = Cdb> {
    let size3 = prop_oneof![
        Just(CdbSize::Six),
        Just(CdbSize::Ten),
        Just(CdbSize::Sixteen)
    ];
    let rw = (
        size3,
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(size, lba, blocks, fua, dpo)| match size {
            CdbSize::Six => ReadWrite {
                size,
                lba: lba % (1 << 21),
                blocks: blocks % 256 + 1,
                fua: false,
                dpo: false,
            },
            CdbSize::Ten => ReadWrite {
                size,
                lba: lba & 0xFFFF_FFFF,
                blocks: blocks & 0xFFFF,
                fua,
                dpo,
            },
            CdbSize::Sixteen => ReadWrite {
                size,
                lba,
                blocks,
                fua,
                dpo,
            },
        });
    let sync = (any::<bool>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
        |(ten, lba, blocks, immed)| {
            if ten {
                SyncCache {
                    size: CdbSize::Ten,
                    lba: lba & 0xFFFF_FFFF,
                    blocks: blocks & 0xFFFF,
                    immed,
                }
            } else {
                SyncCache {
                    size: CdbSize::Sixteen,
                    lba,
                    blocks,
                    immed,
                }
            }
        },
    );
    let mode = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u8..4,
        0u8..0x40,
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(|(six, dbd, llbaa, pc, page, subpage, len)| ModeSense {
            size: if six { CdbSize::Six } else { CdbSize::Ten },
            dbd,
            llbaa: llbaa && !six,
            page_control: pc,
            page_code: page,
            subpage,
            allocation_length: if six { len & 0xFF } else { len },
        });
    prop_oneof![
        Just(Cdb::TestUnitReady),
        Just(Cdb::ReadCapacity10),
        (any::<bool>(), any::<u8>()).prop_map(|(descriptor, allocation_length)| {
            Cdb::RequestSense {
                descriptor,
                allocation_length,
            }
        }),
        (any::<bool>(), any::<u8>(), any::<u16>()).prop_map(|(evpd, page, len)| Cdb::Inquiry {
            evpd,
            page_code: if evpd { page } else { 0 },
            allocation_length: len
        }),
        any::<u32>().prop_map(|allocation_length| Cdb::ReadCapacity16 { allocation_length }),
        rw.clone().prop_map(Cdb::Read),
        rw.prop_map(Cdb::Write),
        sync.prop_map(Cdb::SynchronizeCache),
        (any::<bool>(), any::<u16>()).prop_map(|(anchor, parameter_list_length)| Cdb::Unmap {
            anchor,
            parameter_list_length
        }),
        mode.prop_map(Cdb::ModeSense),
        (any::<u8>(), any::<u32>()).prop_map(|(select_report, allocation_length)| {
            Cdb::ReportLuns {
                select_report,
                allocation_length,
            }
        }),
        (
            any::<bool>(),
            0u8..16,
            0u8..16,
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(immed, power_condition, modifier, no_flush, loej, start)| {
                    Cdb::StartStopUnit(StartStop {
                        immed,
                        power_condition,
                        modifier,
                        no_flush,
                        loej,
                        start,
                    })
                }
            ),
    ]
}

proptest! {
    #[test]
    fn cdb_round_trip(c in cdb_strategy()) {
        let b = c.encode().unwrap();
        prop_assert_eq!(b.len(), opcode::cdb_len(b.opcode()).unwrap());
        prop_assert_eq!(Cdb::parse(b.as_slice()), Ok(c));
    }

    #[test]
    fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..20)) {
        if let Ok(c) = Cdb::parse(&b) {
            // What parses re-encodes and parses to the same command.
            let e = c.encode().unwrap();
            prop_assert_eq!(Cdb::parse(e.as_slice()), Ok(c));
        }
    }

    #[test]
    fn unmap_round_trip(r in proptest::collection::vec(any::<(u64, u32)>(), 0..20)) {
        let mut b = [0u8; 8 + 16 * 20];
        let n = UnmapList::build(&mut b, &r).unwrap();
        let l = UnmapList::parse(&b[..n]).unwrap();
        prop_assert_eq!(l.iter().collect::<Vec<_>>(), r);
    }

    #[test]
    fn unmap_parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(l) = UnmapList::parse(&b) {
            prop_assert!(l.len() * 16 <= b.len().saturating_sub(8));
        }
    }
}

#[test]
fn data_direction_and_length() {
    let rw = ReadWrite {
        size: CdbSize::Ten,
        lba: 0,
        blocks: 8,
        fua: false,
        dpo: false,
    };
    assert_eq!(Cdb::Read(rw).data_in(), Some(true));
    assert_eq!(Cdb::Read(rw).data_length(512), 4096);
    assert_eq!(Cdb::Write(rw).data_in(), Some(false));
    assert_eq!(Cdb::Write(rw).data_length(4096), 32768);
    assert_eq!(Cdb::TestUnitReady.data_in(), None);
    assert_eq!(Cdb::TestUnitReady.data_length(512), 0);
    assert_eq!(Cdb::ReadCapacity10.data_length(512), 8);
    assert_eq!(
        Cdb::Unmap {
            anchor: false,
            parameter_list_length: 24
        }
        .data_in(),
        Some(false)
    );
    assert_eq!(
        Cdb::ReportLuns {
            select_report: 0,
            allocation_length: 4096
        }
        .data_length(512),
        4096
    );
}
