//! VMBus protocol versions, their connection-id rules and the 6.0 feature flags (fact sheet §5.4,
//! §4.4).
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A VMBus protocol version, encoded `(major << 16) | minor` as on the wire.
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
)]
#[repr(transparent)]
pub struct Version(pub u32);

impl Version {
    /// 0.13, Windows Server 2008 (`VERSION_WS2008`).
    pub const WS2008: Self = Self::new(0, 13);
    /// 1.1, Windows 7 / WS2008R2.
    pub const WIN7: Self = Self::new(1, 1);
    /// 2.4, Windows 8 / WS2012: sub-channels, per-channel target VP. Linux's minimum.
    pub const WIN8: Self = Self::new(2, 4);
    /// 3.0, Windows 8.1 / WS2012R2: UNLOAD and reconnect.
    pub const WIN8_1: Self = Self::new(3, 0);
    /// 4.0, Windows 10 / WS2016: hv_sock.
    pub const WIN10: Self = Self::new(4, 0);
    /// 4.1, Windows 10 RS3: MODIFYCHANNEL.
    pub const WIN10_V4_1: Self = Self::new(4, 1);
    /// 5.0: InitiateContact on connection 4 with msg_sint, host-chosen msg_conn_id.
    pub const WIN10_V5: Self = Self::new(5, 0);
    /// 5.1 (RS4).
    pub const WIN10_V5_1: Self = Self::new(5, 1);
    /// 5.2 (WS2019 / RS5).
    pub const WIN10_V5_2: Self = Self::new(5, 2);
    /// 5.3 (WS2022): MODIFYCHANNEL_RESPONSE.
    pub const WIN10_V5_3: Self = Self::new(5, 3);
    /// 6.0 (openvmm "Copper"): feature flags; not used by Linux 6.12.
    pub const COPPER: Self = Self::new(6, 0);

    /// Every version named above, lowest first.
    pub const ALL: [Self; 11] = [
        Self::WS2008,
        Self::WIN7,
        Self::WIN8,
        Self::WIN8_1,
        Self::WIN10,
        Self::WIN10_V4_1,
        Self::WIN10_V5,
        Self::WIN10_V5_1,
        Self::WIN10_V5_2,
        Self::WIN10_V5_3,
        Self::COPPER,
    ];

    /// The versions Linux 6.12 offers, in the order it tries them (fact sheet §5.4).
    pub const LINUX_ORDER: [Self; 8] = [
        Self::WIN10_V5_3,
        Self::WIN10_V5_2,
        Self::WIN10_V5_1,
        Self::WIN10_V5,
        Self::WIN10_V4_1,
        Self::WIN10,
        Self::WIN8_1,
        Self::WIN8,
    ];

    /// `major.minor`.
    pub const fn new(major: u16, minor: u16) -> Self {
        Self((major as u32) << 16 | minor as u32)
    }

    /// The major number.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The minor number.
    pub const fn minor(self) -> u16 {
        self.0 as u16
    }

    /// Whether this is one of the versions named here.
    pub fn is_known(self) -> bool {
        Self::ALL.contains(&self)
    }

    /// The connection id InitiateContact is posted to: 4 from 5.0 on, else 1 (fact sheet §4.4).
    pub const fn initiate_contact_connection_id(self) -> u32 {
        if self.0 >= Self::WIN10_V5.0 {
            MESSAGE_CONNECTION_ID_4
        } else {
            MESSAGE_CONNECTION_ID
        }
    }

    /// From 5.0 on, InitiateContact carries msg_sint/msg_vtl (not an interrupt page) and the host
    /// returns the message connection id for every later message in VersionResponse.
    pub const fn uses_msg_conn_id(self) -> bool {
        self.0 >= Self::WIN10_V5.0
    }

    /// UNLOAD is defined (3.0 and later; Linux sends it only then).
    pub const fn supports_unload(self) -> bool {
        self.0 >= Self::WIN8_1.0
    }

    /// Sub-channels and a per-channel target VP (2.4 and later).
    pub const fn supports_subchannels(self) -> bool {
        self.0 >= Self::WIN8.0
    }

    /// MODIFYCHANNEL (4.1 and later).
    pub const fn supports_modify_channel(self) -> bool {
        self.0 >= Self::WIN10_V4_1.0
    }

    /// The host answers MODIFYCHANNEL with MODIFYCHANNEL_RESPONSE (5.3 and later).
    pub const fn has_modify_channel_response(self) -> bool {
        self.0 >= Self::WIN10_V5_3.0
    }
}

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl core::fmt::Debug for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Version({self})")
    }
}

/// Message connection id for protocols before 5.0 (`VMBUS_MESSAGE_CONNECTION_ID`).
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// Legacy shared event connection id (`VMBUS_EVENT_CONNECTION_ID`).
pub const EVENT_CONNECTION_ID: u32 = 2;
/// Legacy monitor connection id.
pub const MONITOR_CONNECTION_ID: u32 = 3;
/// Connection id InitiateContact is posted to from 5.0 on (`VMBUS_MESSAGE_CONNECTION_ID_4`).
pub const MESSAGE_CONNECTION_ID_4: u32 = 4;
/// The redirect connection id a VTL2 kernel tries first (fact sheet §4.4).
pub const MESSAGE_CONNECTION_ID_VTL2_REDIRECT: u32 = 0x0080_0074;
/// The SINT VMBus control messages and channel events use.
pub const VMBUS_SINT: u8 = hypercall::synic::VMBUS_SINT;

/// Feature flags of protocol 6.0 (openvmm), exchanged in InitiateContact bytes 20..24 and
/// VersionResponse2 (fact sheet §5.4).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct FeatureFlags {
    /// Bit 0: guest-specified signal parameters (OpenChannel2 connection_id / event_flag).
    pub guest_specified_signal_parameters: bool,
    /// Bit 1: channel interrupt redirection.
    pub channel_interrupt_redirection: bool,
    /// Bit 2: MODIFY_CONNECTION.
    pub modify_connection: bool,
    /// Bit 3: client_id in InitiateContact2.
    pub client_id: bool,
    /// Bit 4: confidential channels.
    pub confidential_channels: bool,
    /// Bit 5: pause / resume.
    pub pause_resume: bool,
    /// Bit 6: server-specified monitor pages.
    pub server_specified_monitor_pages: bool,
    /// Bit 7: GPA pinning.
    pub pin_pages: bool,
    /// Bits 31:8: undefined.
    #[bits(24)]
    pub reserved: u32,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    // fact sheet §5.4: encodings and Linux's order; §4.4: connection ids.
    #[test]
    fn versions() {
        assert_eq!(Version::WS2008.0, 0x0000_000D);
        assert_eq!(Version::WIN7.0, 0x0001_0001);
        assert_eq!(Version::WIN8.0, 0x0002_0004);
        assert_eq!(Version::WIN8_1.0, 0x0003_0000);
        assert_eq!(Version::WIN10.0, 0x0004_0000);
        assert_eq!(Version::WIN10_V4_1.0, 0x0004_0001);
        assert_eq!(Version::WIN10_V5.0, 0x0005_0000);
        assert_eq!(Version::WIN10_V5_3.0, 0x0005_0003);
        assert_eq!(Version::WIN10_V5_3.to_string(), "5.3");
        assert_eq!(Version::WS2008.to_string(), "0.13");
        assert!(Version::LINUX_ORDER.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(Version::LINUX_ORDER[7], Version::WIN8);
        for v in Version::ALL {
            let expect = if v >= Version::WIN10_V5 { 4 } else { 1 };
            assert_eq!(v.initiate_contact_connection_id(), expect, "{v}");
            assert_eq!(v.uses_msg_conn_id(), expect == 4);
            assert!(v.is_known());
        }
        assert!(!Version::new(5, 4).is_known());
        assert!(!Version::WIN8.supports_unload());
        assert!(Version::WIN8_1.supports_unload());
        assert!(Version::WIN10_V4_1.supports_modify_channel());
        assert!(!Version::WIN10_V5_2.has_modify_channel_response());
        assert_eq!(VMBUS_SINT, 2);
        assert_eq!(
            (
                MESSAGE_CONNECTION_ID,
                EVENT_CONNECTION_ID,
                MONITOR_CONNECTION_ID
            ),
            (1, 2, 3)
        );
        assert_eq!(FeatureFlags::new().with_pin_pages(true).into_bits(), 0x80);
        assert_eq!(FeatureFlags::new().with_client_id(true).into_bits(), 0x08);
    }
}
