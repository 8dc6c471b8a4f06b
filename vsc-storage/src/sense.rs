//! SCSI sense data (SPC-4 §4.5): fixed format (response codes 0x70/0x71) and descriptor format
//! (0x72/0x73), parsed from untrusted bytes and built, with the sense keys and additional sense
//! codes the storvsc client and the host's SCSI target use.
//!
//! The SRB carries at most 20 sense bytes (18 before protocol 5.1, fact sheet §8.1): the fixed
//! format (18 bytes) always fits; a descriptor-format sense with an information descriptor fits
//! (20 bytes), with a sense-key-specific descriptor too it does not and is cut by the sender.
//! [`Sense::parse`] therefore takes whatever prefix arrived and reads only what is inside it.
#![forbid(unsafe_code)]

use core::mem::{offset_of, size_of};
use zerocopy::byteorder::big_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Sense key (4 bits).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SenseKey(pub u8);

impl SenseKey {
    /// 0x0.
    pub const NO_SENSE: Self = Self(0x0);
    /// 0x1.
    pub const RECOVERED_ERROR: Self = Self(0x1);
    /// 0x2: the unit cannot be accessed now.
    pub const NOT_READY: Self = Self(0x2);
    /// 0x3: unrecoverable medium error.
    pub const MEDIUM_ERROR: Self = Self(0x3);
    /// 0x4.
    pub const HARDWARE_ERROR: Self = Self(0x4);
    /// 0x5: bad CDB or parameters.
    pub const ILLEGAL_REQUEST: Self = Self(0x5);
    /// 0x6: something changed (reset, capacity, LUNs); retry.
    pub const UNIT_ATTENTION: Self = Self(0x6);
    /// 0x7: write protected.
    pub const DATA_PROTECT: Self = Self(0x7);
    /// 0x8.
    pub const BLANK_CHECK: Self = Self(0x8);
    /// 0x9.
    pub const VENDOR_SPECIFIC: Self = Self(0x9);
    /// 0xA.
    pub const COPY_ABORTED: Self = Self(0xA);
    /// 0xB: retry may work.
    pub const ABORTED_COMMAND: Self = Self(0xB);
    /// 0xD.
    pub const VOLUME_OVERFLOW: Self = Self(0xD);
    /// 0xE.
    pub const MISCOMPARE: Self = Self(0xE);
}

impl core::fmt::Debug for SenseKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let n = match self.0 {
            0x0 => "NO_SENSE",
            0x1 => "RECOVERED_ERROR",
            0x2 => "NOT_READY",
            0x3 => "MEDIUM_ERROR",
            0x4 => "HARDWARE_ERROR",
            0x5 => "ILLEGAL_REQUEST",
            0x6 => "UNIT_ATTENTION",
            0x7 => "DATA_PROTECT",
            0x8 => "BLANK_CHECK",
            0x9 => "VENDOR_SPECIFIC",
            0xA => "COPY_ABORTED",
            0xB => "ABORTED_COMMAND",
            0xD => "VOLUME_OVERFLOW",
            0xE => "MISCOMPARE",
            k => return write!(f, "SenseKey({k:#x})"),
        };
        f.write_str(n)
    }
}

/// Additional sense code and qualifier (ASC/ASCQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AdditionalSense {
    /// ASC.
    pub asc: u8,
    /// ASCQ.
    pub ascq: u8,
}

impl AdditionalSense {
    /// A pair.
    pub const fn new(asc: u8, ascq: u8) -> Self {
        Self { asc, ascq }
    }

    /// 00/00.
    pub const NO_ADDITIONAL_SENSE: Self = Self::new(0x00, 0x00);
    /// 04/00 (NOT READY).
    pub const NOT_READY_CAUSE_NOT_REPORTABLE: Self = Self::new(0x04, 0x00);
    /// 04/01 (NOT READY).
    pub const NOT_READY_BECOMING_READY: Self = Self::new(0x04, 0x01);
    /// 04/02 (NOT READY): START STOP UNIT needed.
    pub const NOT_READY_INITIALIZING_COMMAND_REQUIRED: Self = Self::new(0x04, 0x02);
    /// 0C/00 (MEDIUM ERROR).
    pub const WRITE_ERROR: Self = Self::new(0x0C, 0x00);
    /// 11/00 (MEDIUM ERROR).
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(0x11, 0x00);
    /// 1A/00 (ILLEGAL REQUEST).
    pub const PARAMETER_LIST_LENGTH_ERROR: Self = Self::new(0x1A, 0x00);
    /// 20/00 (ILLEGAL REQUEST).
    pub const INVALID_COMMAND_OPERATION_CODE: Self = Self::new(0x20, 0x00);
    /// 21/00 (ILLEGAL REQUEST).
    pub const LBA_OUT_OF_RANGE: Self = Self::new(0x21, 0x00);
    /// 24/00 (ILLEGAL REQUEST).
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(0x24, 0x00);
    /// 25/00 (ILLEGAL REQUEST).
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Self = Self::new(0x25, 0x00);
    /// 26/00 (ILLEGAL REQUEST).
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self = Self::new(0x26, 0x00);
    /// 27/00 (DATA PROTECT).
    pub const WRITE_PROTECTED: Self = Self::new(0x27, 0x00);
    /// 29/00 (UNIT ATTENTION).
    pub const POWER_ON_RESET: Self = Self::new(0x29, 0x00);
    /// 2A/00 (UNIT ATTENTION).
    pub const PARAMETERS_CHANGED: Self = Self::new(0x2A, 0x00);
    /// 2A/09 (UNIT ATTENTION): Linux rescans.
    pub const CAPACITY_DATA_CHANGED: Self = Self::new(0x2A, 0x09);
    /// 39/00 (ILLEGAL REQUEST).
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Self = Self::new(0x39, 0x00);
    /// 3A/00 (NOT READY).
    pub const MEDIUM_NOT_PRESENT: Self = Self::new(0x3A, 0x00);
    /// 3F/03 (UNIT ATTENTION).
    pub const INQUIRY_DATA_CHANGED: Self = Self::new(0x3F, 0x03);
    /// 3F/0E (UNIT ATTENTION): LUNs added or removed.
    pub const REPORTED_LUNS_DATA_CHANGED: Self = Self::new(0x3F, 0x0E);
    /// 44/00 (HARDWARE ERROR).
    pub const INTERNAL_TARGET_FAILURE: Self = Self::new(0x44, 0x00);
}

/// Response codes (byte 0 bits 6:0).
pub mod response_code {
    /// Fixed format, current error.
    pub const FIXED_CURRENT: u8 = 0x70;
    /// Fixed format, deferred error.
    pub const FIXED_DEFERRED: u8 = 0x71;
    /// Descriptor format, current error.
    pub const DESCRIPTOR_CURRENT: u8 = 0x72;
    /// Descriptor format, deferred error.
    pub const DESCRIPTOR_DEFERRED: u8 = 0x73;
}

/// Fixed-format sense data, 18 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct FixedSense {
    /// 0: bit 7 VALID (information valid), 6:0 response code.
    pub response_code: u8,
    /// 1: obsolete.
    pub obsolete: u8,
    /// 2: bit 7 FILEMARK, 6 EOM, 5 ILI, 3:0 sense key.
    pub flags_key: u8,
    /// 3..7.
    pub information: U32,
    /// 7: bytes after this one (10).
    pub additional_length: u8,
    /// 8..12.
    pub command_specific: U32,
    /// 12.
    pub asc: u8,
    /// 13.
    pub ascq: u8,
    /// 14: field replaceable unit code.
    pub fru: u8,
    /// 15..18: bit 7 of byte 15 SKSV, then the sense-key-specific bits.
    pub sense_key_specific: [u8; 3],
}

/// Descriptor-format sense header, 8 bytes; descriptors follow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct DescriptorSenseHeader {
    /// 0: response code 0x72/0x73.
    pub response_code: u8,
    /// 1: bits 3:0 sense key.
    pub key: u8,
    /// 2.
    pub asc: u8,
    /// 3.
    pub ascq: u8,
    /// 4..7.
    pub reserved: [u8; 3],
    /// 7: bytes of descriptors.
    pub additional_length: u8,
}

/// Information sense descriptor (type 0), 12 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct InformationDescriptor {
    /// 0: 0x00.
    pub descriptor_type: u8,
    /// 1: 0x0A.
    pub additional_length: u8,
    /// 2: bit 7 VALID.
    pub valid: u8,
    /// 3.
    pub reserved: u8,
    /// 4..12.
    pub information: U64,
}

/// Sense-key-specific sense descriptor (type 2), 8 bytes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct SenseKeySpecificDescriptor {
    /// 0: 0x02.
    pub descriptor_type: u8,
    /// 1: 0x06.
    pub additional_length: u8,
    /// 2..4.
    pub reserved: [u8; 2],
    /// 4..7: bit 7 of byte 4 SKSV.
    pub sense_key_specific: [u8; 3],
    /// 7.
    pub reserved2: u8,
}

const _: () = {
    // SPC-4 §4.5.3 (fixed) and §4.5.2 (descriptor); fact sheet §8.1: sense ≤ 20 bytes.
    assert!(size_of::<FixedSense>() == FIXED_SENSE_LEN);
    assert!(offset_of!(FixedSense, flags_key) == 2);
    assert!(offset_of!(FixedSense, information) == 3);
    assert!(offset_of!(FixedSense, additional_length) == 7);
    assert!(offset_of!(FixedSense, asc) == 12);
    assert!(offset_of!(FixedSense, ascq) == 13);
    assert!(offset_of!(FixedSense, sense_key_specific) == 15);
    assert!(FIXED_SENSE_LEN <= crate::vstor::SENSE_SIZE_PRE_WIN8);
    assert!(size_of::<DescriptorSenseHeader>() == 8);
    assert!(offset_of!(DescriptorSenseHeader, additional_length) == 7);
    assert!(size_of::<InformationDescriptor>() == 12);
    assert!(offset_of!(InformationDescriptor, information) == 4);
    assert!(size_of::<SenseKeySpecificDescriptor>() == 8);
    assert!(8 + size_of::<InformationDescriptor>() == crate::vstor::SENSE_SIZE);
};

/// Length of fixed-format sense data.
pub const FIXED_SENSE_LEN: usize = 18;
/// The longest descriptor-format sense [`Sense::to_descriptor`] builds.
pub const MAX_DESCRIPTOR_SENSE_LEN: usize = 8 + 12 + 8;
/// SKSV bit in the first sense-key-specific byte.
pub const SKSV: u8 = 0x80;

/// Why sense bytes did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenseError {
    /// Fewer bytes than the format's header.
    TooShort,
    /// An unknown response code.
    BadResponseCode(u8),
}

impl core::fmt::Display for SenseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("sense data too short"),
            Self::BadResponseCode(c) => write!(f, "unknown sense response code {c:#04x}"),
        }
    }
}

/// Decoded sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sense {
    /// Deferred (0x71/0x73) rather than current error.
    pub deferred: bool,
    /// Sense key.
    pub key: SenseKey,
    /// ASC/ASCQ.
    pub additional: AdditionalSense,
    /// The INFORMATION field when valid (e.g. the failing LBA).
    pub information: Option<u64>,
    /// The three sense-key-specific bytes when SKSV is set (SKSV included).
    pub sense_key_specific: Option<[u8; 3]>,
}

impl Sense {
    /// Current-error sense with `key` and `additional`.
    pub const fn new(key: SenseKey, additional: AdditionalSense) -> Self {
        Self {
            deferred: false,
            key,
            additional,
            information: None,
            sense_key_specific: None,
        }
    }

    /// With the INFORMATION field.
    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`, if any) of the
    /// CDB, as the sense-key-specific field pointer.
    pub const fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        let mut s = Self::new(
            SenseKey::ILLEGAL_REQUEST,
            AdditionalSense::INVALID_FIELD_IN_CDB,
        );
        // SKSV | C/D (the error is in the CDB) | BPV + bit pointer.
        let b0 = SKSV
            | 0x40
            | match bit {
                Some(b) => 0x08 | (b & 7),
                None => 0,
            };
        let p = byte.to_be_bytes();
        s.sense_key_specific = Some([b0, p[0], p[1]]);
        s
    }

    /// Parses fixed or descriptor sense from (a prefix of) its bytes. Fields beyond the bytes
    /// present or beyond the sense's own additional length read as absent/zero.
    pub fn parse(b: &[u8]) -> Result<Self, SenseError> {
        let &b0 = b.first().ok_or(SenseError::TooShort)?;
        let code = b0 & 0x7F;
        match code {
            response_code::FIXED_CURRENT | response_code::FIXED_DEFERRED => {
                // The sense key is in byte 2; anything shorter says nothing.
                if b.len() < 3 {
                    return Err(SenseError::TooShort);
                }
                let mut buf = [0u8; FIXED_SENSE_LEN];
                let avail = match b.get(7) {
                    Some(&add) => b.len().min(8 + add as usize),
                    None => b.len(),
                };
                let n = avail.min(FIXED_SENSE_LEN);
                buf[..n].copy_from_slice(&b[..n]);
                let f = FixedSense::read_from_bytes(&buf).map_err(|_| SenseError::TooShort)?;
                let info_ok = b0 & 0x80 != 0 && n >= 7;
                Ok(Self {
                    deferred: code == response_code::FIXED_DEFERRED,
                    key: SenseKey(f.flags_key & 0xF),
                    additional: AdditionalSense::new(f.asc, f.ascq),
                    information: info_ok.then(|| f.information.get().into()),
                    sense_key_specific: (n >= 18 && f.sense_key_specific[0] & SKSV != 0)
                        .then_some(f.sense_key_specific),
                })
            }
            response_code::DESCRIPTOR_CURRENT | response_code::DESCRIPTOR_DEFERRED => {
                let (h, rest) =
                    DescriptorSenseHeader::read_from_prefix(b).map_err(|_| SenseError::TooShort)?;
                let mut s = Self {
                    deferred: code == response_code::DESCRIPTOR_DEFERRED,
                    key: SenseKey(h.key & 0xF),
                    additional: AdditionalSense::new(h.asc, h.ascq),
                    information: None,
                    sense_key_specific: None,
                };
                let mut d = &rest[..rest.len().min(h.additional_length as usize)];
                // Each descriptor: type, additional length, then that many bytes.
                while d.len() >= 2 {
                    let len = 2 + d[1] as usize;
                    let Some(desc) = d.get(..len) else { break };
                    match d[0] {
                        0x00 => {
                            if let Ok((i, _)) = InformationDescriptor::read_from_prefix(desc) {
                                if i.valid & 0x80 != 0 {
                                    s.information = Some(i.information.get());
                                }
                            }
                        }
                        0x02 => {
                            if let Ok((k, _)) = SenseKeySpecificDescriptor::read_from_prefix(desc) {
                                if k.sense_key_specific[0] & SKSV != 0 {
                                    s.sense_key_specific = Some(k.sense_key_specific);
                                }
                            }
                        }
                        _ => {}
                    }
                    d = &d[len..];
                }
                Ok(s)
            }
            c => Err(SenseError::BadResponseCode(c)),
        }
    }

    /// Fixed-format bytes. An INFORMATION value above 32 bits does not fit the format and is
    /// left out (VALID clear); use [`Sense::to_descriptor`] for 64-bit LBAs.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let info = self.information.and_then(|i| u32::try_from(i).ok());
        let code = if self.deferred {
            response_code::FIXED_DEFERRED
        } else {
            response_code::FIXED_CURRENT
        };
        let f = FixedSense {
            response_code: code | if info.is_some() { 0x80 } else { 0 },
            obsolete: 0,
            flags_key: self.key.0 & 0xF,
            information: info.unwrap_or(0).into(),
            additional_length: (FIXED_SENSE_LEN - 8) as u8,
            command_specific: 0.into(),
            asc: self.additional.asc,
            ascq: self.additional.ascq,
            fru: 0,
            sense_key_specific: match self.sense_key_specific {
                Some(k) => [k[0] | SKSV, k[1], k[2]],
                None => [0; 3],
            },
        };
        let mut out = [0; FIXED_SENSE_LEN];
        out.copy_from_slice(f.as_bytes());
        out
    }

    /// Descriptor-format bytes into `out` (the information descriptor first, then the
    /// sense-key-specific one); returns the length, at most [`MAX_DESCRIPTOR_SENSE_LEN`], or
    /// `None` if `out` is too small.
    pub fn to_descriptor(&self, out: &mut [u8]) -> Option<usize> {
        let mut buf = [0u8; MAX_DESCRIPTOR_SENSE_LEN];
        let mut n = 8;
        if let Some(info) = self.information {
            buf[n..n + 12].copy_from_slice(
                InformationDescriptor {
                    descriptor_type: 0,
                    additional_length: 0x0A,
                    valid: 0x80,
                    reserved: 0,
                    information: info.into(),
                }
                .as_bytes(),
            );
            n += 12;
        }
        if let Some(k) = self.sense_key_specific {
            buf[n..n + 8].copy_from_slice(
                SenseKeySpecificDescriptor {
                    descriptor_type: 2,
                    additional_length: 6,
                    reserved: [0; 2],
                    sense_key_specific: [k[0] | SKSV, k[1], k[2]],
                    reserved2: 0,
                }
                .as_bytes(),
            );
            n += 8;
        }
        let h = DescriptorSenseHeader {
            response_code: if self.deferred {
                response_code::DESCRIPTOR_DEFERRED
            } else {
                response_code::DESCRIPTOR_CURRENT
            },
            key: self.key.0 & 0xF,
            asc: self.additional.asc,
            ascq: self.additional.ascq,
            reserved: [0; 3],
            additional_length: (n - 8) as u8,
        };
        buf[..8].copy_from_slice(h.as_bytes());
        out.get_mut(..n)?.copy_from_slice(&buf[..n]);
        Some(n)
    }

    /// Whether this is UNIT ATTENTION (the command was not executed; retry it).
    pub fn is_unit_attention(&self) -> bool {
        self.key == SenseKey::UNIT_ATTENTION
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_layout_bytes() {
        let s = Sense::new(
            SenseKey::MEDIUM_ERROR,
            AdditionalSense::UNRECOVERED_READ_ERROR,
        )
        .with_information(0x1234);
        let b = s.to_fixed();
        assert_eq!(
            b,
            [0xF0, 0, 3, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0]
        );
        assert_eq!(Sense::parse(&b), Ok(s));
    }

    #[test]
    fn descriptor_layout_bytes() {
        let s = Sense::new(SenseKey::DATA_PROTECT, AdditionalSense::WRITE_PROTECTED)
            .with_information(0x1_0000_0000);
        let mut b = [0u8; 32];
        let n = s.to_descriptor(&mut b).unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            &b[..n],
            &[0x72, 7, 0x27, 0, 0, 0, 0, 12, 0, 0x0A, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(Sense::parse(&b[..n]), Ok(s));
        // Fixed cannot carry the 33-bit information.
        assert_eq!(Sense::parse(&s.to_fixed()).unwrap().information, None);
    }

    #[test]
    fn field_pointer() {
        let s = Sense::invalid_field_in_cdb(2, Some(3));
        assert_eq!(s.sense_key_specific, Some([0xCB, 0, 2]));
        let b = s.to_fixed();
        assert_eq!(&b[15..18], &[0xCB, 0, 2]);
        assert_eq!(Sense::parse(&b), Ok(s));
    }

    #[test]
    fn truncated_and_bad() {
        assert_eq!(Sense::parse(&[]), Err(SenseError::TooShort));
        assert_eq!(Sense::parse(&[0x70, 0]), Err(SenseError::TooShort));
        assert_eq!(Sense::parse(&[0x72, 6, 0x29]), Err(SenseError::TooShort));
        assert_eq!(
            Sense::parse(&[0x12; 18]),
            Err(SenseError::BadResponseCode(0x12))
        );
        // Additional length 0: ASC/ASCQ are outside the sense and read as zero.
        let mut b =
            Sense::new(SenseKey::UNIT_ATTENTION, AdditionalSense::POWER_ON_RESET).to_fixed();
        b[7] = 0;
        let s = Sense::parse(&b).unwrap();
        assert_eq!(s.key, SenseKey::UNIT_ATTENTION);
        assert_eq!(s.additional, AdditionalSense::NO_ADDITIONAL_SENSE);
    }

    fn sense_strategy(wide_info: bool) -> impl Strategy<Value = Sense> {
        let info = if wide_info {
            any::<u64>().boxed()
        } else {
            any::<u32>().prop_map(u64::from).boxed()
        };
        (
            any::<bool>(),
            0u8..16,
            any::<(u8, u8)>(),
            proptest::option::of(info),
            proptest::option::of(any::<[u8; 3]>().prop_map(|mut k| {
                k[0] |= SKSV;
                k
            })),
        )
            .prop_map(|(deferred, key, (asc, ascq), information, sks)| Sense {
                deferred,
                key: SenseKey(key),
                additional: AdditionalSense::new(asc, ascq),
                information,
                sense_key_specific: sks,
            })
    }

    proptest! {
        #[test]
        fn fixed_round_trip(s in sense_strategy(false)) {
            prop_assert_eq!(Sense::parse(&s.to_fixed()), Ok(s));
        }

        #[test]
        fn descriptor_round_trip(s in sense_strategy(true)) {
            let mut b = [0u8; MAX_DESCRIPTOR_SENSE_LEN];
            let n = s.to_descriptor(&mut b).unwrap();
            prop_assert_eq!(Sense::parse(&b[..n]), Ok(s));
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sense::parse(&b);
        }
    }
}
