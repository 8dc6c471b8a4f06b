//! GUIDs in the Microsoft mixed-endian wire form, and the device class GUIDs (fact sheet §7.1).
//!
//! On the wire the first three groups are little-endian and the last eight bytes are in order:
//! `{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}` is sent as `d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1
//! dc 7f`. [`Guid`] stores exactly those 16 wire bytes (alignment 1), so it can sit at any offset
//! of a message or packet.
#![forbid(unsafe_code)]

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID, stored as its 16 wire bytes.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(transparent)]
pub struct Guid(pub [u8; 16]);

/// Text that is not a GUID of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (braces optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuidParseError;

impl core::fmt::Display for GuidParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("invalid GUID text")
    }
}

const fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Self = Self([0; 16]);

    /// A GUID from its four fields as written in text (`data1-data2-data3-data4[0..2]-data4[2..]`).
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Self {
        let a = data1.to_le_bytes();
        let b = data2.to_le_bytes();
        let c = data3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], data4[0], data4[1], data4[2], data4[3],
            data4[4], data4[5], data4[6], data4[7],
        ])
    }

    /// The first field (little-endian on the wire).
    pub const fn data1(&self) -> u32 {
        u32::from_le_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The second field.
    pub const fn data2(&self) -> u16 {
        u16::from_le_bytes([self.0[4], self.0[5]])
    }

    /// The third field.
    pub const fn data3(&self) -> u16 {
        u16::from_le_bytes([self.0[6], self.0[7]])
    }

    /// The last eight bytes, in wire (and text) order.
    pub const fn data4(&self) -> [u8; 8] {
        let b = &self.0;
        [b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, optionally in braces, any hex case. Usable in
    /// `const` context.
    pub const fn parse(text: &str) -> Result<Self, GuidParseError> {
        let mut s = text.as_bytes();
        if s.len() == 38 {
            if s[0] != b'{' || s[37] != b'}' {
                return Err(GuidParseError);
            }
            // Strip the braces without slicing (not const-stable for &[u8] ranges in all forms).
            let (_, rest) = s.split_at(1);
            let (mid, _) = rest.split_at(36);
            s = mid;
        }
        if s.len() != 36 {
            return Err(GuidParseError);
        }
        // Digit value of each of the 32 hex characters, in text order.
        let mut nibbles = [0u8; 32];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            let c = s[i];
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if c != b'-' {
                    return Err(GuidParseError);
                }
            } else {
                match hex_digit(c) {
                    Some(v) => {
                        nibbles[n] = v;
                        n += 1;
                    }
                    None => return Err(GuidParseError),
                }
            }
            i += 1;
        }
        let mut text_bytes = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            text_bytes[k] = nibbles[2 * k] << 4 | nibbles[2 * k + 1];
            k += 1;
        }
        let t = text_bytes;
        Ok(Self::from_fields(
            u32::from_be_bytes([t[0], t[1], t[2], t[3]]),
            u16::from_be_bytes([t[4], t[5]]),
            u16::from_be_bytes([t[6], t[7]]),
            [t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]],
        ))
    }

    /// [`Guid::parse`] for constants: panics (at compile time in a `const`) on bad text.
    pub const fn from_str_const(text: &str) -> Self {
        match Self::parse(text) {
            Ok(g) => g,
            Err(_) => panic!("invalid GUID literal"),
        }
    }
}

impl core::str::FromStr for Guid {
    type Err = GuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl core::fmt::Display for Guid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let d = self.data4();
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1(),
            self.data2(),
            self.data3(),
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            d[7]
        )
    }
}

impl core::fmt::Debug for Guid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match class_name(self) {
            Some(n) => write!(f, "Guid({self} {n})"),
            None => write!(f, "Guid({self})"),
        }
    }
}

/// Device class (interface type) GUIDs offered over VMBus (fact sheet §7.1).
pub mod class {
    use super::Guid;

    /// Synthetic SCSI controller (storvsc).
    pub const SCSI: Guid = Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
    /// IDE accelerator (storvsc in IDE mode).
    pub const IDE: Guid = Guid::from_str_const("32412632-86cb-44a2-9b5c-50d1417354f5");
    /// Synthetic Fibre Channel.
    pub const FIBRE_CHANNEL: Guid = Guid::from_str_const("2f9bcc4a-0069-4af3-b76b-6fd0be528cda");
    /// Network (netvsc).
    pub const NETWORK: Guid = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");
    /// NetworkDirect (guest RDMA).
    pub const NETWORK_DIRECT: Guid = Guid::from_str_const("8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501");
    /// PCI Express pass-through (vPCI).
    pub const PCIE: Guid = Guid::from_str_const("44c4f61d-4444-4400-9d52-802e27ede19f");
    /// Synthetic video.
    pub const VIDEO: Guid = Guid::from_str_const("da0a7802-e377-4aac-8e77-0558eb1073f8");
    /// Keyboard.
    pub const KEYBOARD: Guid = Guid::from_str_const("f912ad6d-2b17-48ea-bd65-f927a61c7684");
    /// Mouse (HID).
    pub const MOUSE: Guid = Guid::from_str_const("cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a");
    /// Heartbeat IC.
    pub const HEARTBEAT: Guid = Guid::from_str_const("57164f39-9115-4e78-ab55-382f3bd5422d");
    /// Shutdown IC.
    pub const SHUTDOWN: Guid = Guid::from_str_const("0e0b6031-5213-4934-818b-38d90ced39db");
    /// Time sync IC.
    pub const TIMESYNC: Guid = Guid::from_str_const("9527e630-d0ae-497b-adce-e80ab0175caf");
    /// KVP (data exchange) IC.
    pub const KVP: Guid = Guid::from_str_const("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6");
    /// VSS (backup) IC.
    pub const VSS: Guid = Guid::from_str_const("35fa2e29-ea23-4236-96ae-3a6ebacba440");
    /// Guest file copy (fcopy).
    pub const FCOPY: Guid = Guid::from_str_const("34d14be3-dee4-41c8-9ae7-6b174977c192");
    /// Dynamic memory (balloon).
    pub const BALLOON: Guid = Guid::from_str_const("525074dc-8985-46e2-8057-a307dc18a502");
    /// AVMA1 (Windows-only).
    pub const AVMA1: Guid = Guid::from_str_const("f8e65716-3cb3-4a06-9a60-1889c5cccab5");
    /// AVMA2 (Windows-only).
    pub const AVMA2: Guid = Guid::from_str_const("3375baf4-9e15-4b30-b765-67acb10d607b");
    /// RDV (Windows-only).
    pub const RDV: Guid = Guid::from_str_const("276aacf4-ac15-426c-98dd-7521ad3f01fe");
    /// IMC (Windows-only).
    pub const IMC: Guid = Guid::from_str_const("c376c1c3-d276-48d2-90a9-c04748072c60");

    /// Every class above with its short name.
    pub const ALL: [(Guid, &str); 20] = [
        (SCSI, "scsi"),
        (IDE, "ide"),
        (FIBRE_CHANNEL, "fibre-channel"),
        (NETWORK, "network"),
        (NETWORK_DIRECT, "network-direct"),
        (PCIE, "pcie"),
        (VIDEO, "video"),
        (KEYBOARD, "keyboard"),
        (MOUSE, "mouse"),
        (HEARTBEAT, "heartbeat"),
        (SHUTDOWN, "shutdown"),
        (TIMESYNC, "timesync"),
        (KVP, "kvp"),
        (VSS, "vss"),
        (FCOPY, "fcopy"),
        (BALLOON, "balloon"),
        (AVMA1, "avma1"),
        (AVMA2, "avma2"),
        (RDV, "rdv"),
        (IMC, "imc"),
    ];
}

/// The short name of a known device class GUID.
pub fn class_name(guid: &Guid) -> Option<&'static str> {
    class::ALL.iter().find(|(g, _)| g == guid).map(|&(_, n)| n)
}

/// Well-known instance GUIDs (fact sheet §7.1).
pub mod instance {
    use super::Guid;

    /// The instance the Linux fcopy daemon expects.
    pub const FCOPY: Guid = Guid::from_str_const("eb765408-105f-49b6-b4aa-c123b64d17d4");
    /// openvmm's shutdown IC instance.
    pub const SHUTDOWN: Guid = Guid::from_str_const("b6650ff7-33bc-4840-8048-e0676786f393");
    /// openvmm's timesync IC instance.
    pub const TIMESYNC: Guid = Guid::from_str_const("2dd1ce17-079e-403c-b352-a1921ee207ee");
    /// openvmm's KVP IC instance.
    pub const KVP: Guid = Guid::from_str_const("242ff919-07db-4180-9c2e-b86cb68c8c55");
}

const _: () = assert!(core::mem::size_of::<Guid>() == 16);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::format;
    use std::string::ToString;

    // fact sheet §7.1: the wire byte order example.
    #[test]
    fn mixed_endian_wire_form() {
        assert_eq!(
            class::SCSI.0,
            [
                0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1,
                0xdc, 0x7f
            ]
        );
        assert_eq!(class::SCSI.data1(), 0xba6163d9);
        assert_eq!(class::SCSI.data2(), 0x04a1);
        assert_eq!(class::SCSI.data3(), 0x4d29);
        assert_eq!(
            class::SCSI.to_string(),
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
        );
        assert_eq!(
            Guid::parse("{BA6163D9-04A1-4D29-B605-72E2FFB1DC7F}"),
            Ok(class::SCSI)
        );
        assert_eq!(
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f".parse::<Guid>(),
            Ok(class::SCSI)
        );
        assert_eq!(class_name(&class::NETWORK), Some("network"));
        assert_eq!(class_name(&Guid::ZERO), None);
        assert_eq!(
            format!("{:?}", class::HEARTBEAT),
            "Guid(57164f39-9115-4e78-ab55-382f3bd5422d heartbeat)"
        );
    }

    // fact sheet §7.1: every class GUID in the table.
    #[test]
    fn class_table() {
        let expect = [
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f",
            "32412632-86cb-44a2-9b5c-50d1417354f5",
            "2f9bcc4a-0069-4af3-b76b-6fd0be528cda",
            "f8615163-df3e-46c5-913f-f2d2f965ed0e",
            "8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501",
            "44c4f61d-4444-4400-9d52-802e27ede19f",
            "da0a7802-e377-4aac-8e77-0558eb1073f8",
            "f912ad6d-2b17-48ea-bd65-f927a61c7684",
            "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a",
            "57164f39-9115-4e78-ab55-382f3bd5422d",
            "0e0b6031-5213-4934-818b-38d90ced39db",
            "9527e630-d0ae-497b-adce-e80ab0175caf",
            "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6",
            "35fa2e29-ea23-4236-96ae-3a6ebacba440",
            "34d14be3-dee4-41c8-9ae7-6b174977c192",
            "525074dc-8985-46e2-8057-a307dc18a502",
            "f8e65716-3cb3-4a06-9a60-1889c5cccab5",
            "3375baf4-9e15-4b30-b765-67acb10d607b",
            "276aacf4-ac15-426c-98dd-7521ad3f01fe",
            "c376c1c3-d276-48d2-90a9-c04748072c60",
        ];
        for ((g, _), text) in class::ALL.iter().zip(expect) {
            assert_eq!(g.to_string(), text);
        }
    }

    #[test]
    fn bad_text() {
        for bad in [
            "",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7fa",
            "ba6163d9x04a1-4d29-b605-72e2ffb1dc7f",
            "ga6163d9-04a1-4d29-b605-72e2ffb1dc7f",
            "{ba6163d9-04a1-4d29-b605-72e2ffb1dc7f)",
            "(ba6163d9-04a1-4d29-b605-72e2ffb1dc7f}",
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7\u{e9}",
        ] {
            assert_eq!(Guid::parse(bad), Err(GuidParseError), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn text_round_trip(bytes in any::<[u8; 16]>()) {
            let g = Guid(bytes);
            let text = g.to_string();
            prop_assert_eq!(text.len(), 36);
            prop_assert_eq!(Guid::parse(&text), Ok(g));
            prop_assert_eq!(Guid::parse(&text.to_uppercase()), Ok(g));
            prop_assert_eq!(Guid::from_fields(g.data1(), g.data2(), g.data3(), g.data4()), g);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = Guid::parse(&s);
        }
    }
}
