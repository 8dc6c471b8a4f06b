//! VMBus channel-management messages: every type 0..=24 with its layout (fact sheet §5.2, §5.3),
//! the decoder [`ChannelMessage::parse`] and the encoders.
//!
//! Each message travels as one SynIC message of type 1 ([`hypercall::synic::MessageType::VMBUS`]),
//! at most 240 bytes, starting with the 8-byte [`MessageHeader`]. The fixed-size messages are
//! `repr(C)` structs whose bytes are the message (`zerocopy::IntoBytes::as_bytes` encodes them;
//! each has a `new` that fills in the header). The two GPADL messages carry a variable tail of
//! PFNs; [`GpadlMessages`] builds the header-plus-bodies sequence for a buffer.
//!
//! The decoder treats its input as hostile: it checks the length limit, the type range and each
//! type's minimum size, and copies the fixed part out (so the input may have any alignment). It
//! never panics. Bytes beyond a fixed-size message's layout are ignored, as Linux does (newer
//! protocols append fields).
#![forbid(unsafe_code)]

use crate::guid::Guid;
use crate::packet::PfnList;
use crate::version::{FeatureFlags, Version};
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// The largest channel message (the SynIC payload limit).
pub const MAX_MESSAGE_SIZE: usize = hypercall::synic::MESSAGE_PAYLOAD_SIZE;
/// Size of the message header.
pub const HEADER_SIZE: usize = 8;
/// PFNs that fit in a GPADL_HEADER message with one range: (240 - 20 - 8) / 8 (fact sheet §5.3).
pub const GPADL_HEADER_MAX_PFNS: usize = 26;
/// PFNs that fit in one GPADL_BODY message: (240 - 16) / 8 (fact sheet §5.3).
pub const GPADL_BODY_MAX_PFNS: usize = 28;
/// The first GPADL handle Linux uses; it counts up from there (fact sheet §0).
pub const FIRST_GPADL_HANDLE: u32 = 0xE1E10;
/// Largest valid child relid plus one (Linux requires relid < 2048; relid 0 is unusable).
pub const MAX_RELID: u32 = 2048;

/// A channel message type (header offset 0): an open set, so unknown values survive.
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
pub struct ChannelMessageType(pub u32);

macro_rules! message_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $min:expr;)*) => {
        impl ChannelMessageType {
            $($(#[$doc])* pub const $name: Self = Self($value);)*

            /// The Linux name of a known type (`None` for values outside 0..=24).
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// The minimum size of a message of this type, header included (`None` for values
            /// outside 1..=24).
            pub const fn min_size(self) -> Option<usize> {
                if self.0 == 0 {
                    return None;
                }
                match self.0 {
                    $($value => Some($min),)*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// 0: invalid (never sent).
    INVALID = 0, HEADER_SIZE;
    /// 1: host offers a channel ([`OfferChannel`]).
    OFFER_CHANNEL = 1, size_of::<OfferChannel>();
    /// 2: host rescinds an offer ([`RescindChannelOffer`]).
    RESCIND_CHANNEL_OFFER = 2, size_of::<RescindChannelOffer>();
    /// 3: guest asks for the offers (header only).
    REQUEST_OFFERS = 3, HEADER_SIZE;
    /// 4: host has sent every offer (header only).
    ALL_OFFERS_DELIVERED = 4, HEADER_SIZE;
    /// 5: guest opens a channel ([`OpenChannel`]).
    OPEN_CHANNEL = 5, size_of::<OpenChannel>();
    /// 6: host answers an open ([`OpenResult`]).
    OPEN_CHANNEL_RESULT = 6, size_of::<OpenResult>();
    /// 7: guest closes a channel ([`CloseChannel`]).
    CLOSE_CHANNEL = 7, size_of::<CloseChannel>();
    /// 8: guest starts a GPADL ([`GpadlHeader`] + ranges).
    GPADL_HEADER = 8, size_of::<GpadlHeader>();
    /// 9: more PFNs of a GPADL ([`GpadlBody`] + PFNs).
    GPADL_BODY = 9, size_of::<GpadlBody>();
    /// 10: host answers a GPADL ([`GpadlCreated`]).
    GPADL_CREATED = 10, size_of::<GpadlCreated>();
    /// 11: guest tears a GPADL down ([`GpadlTeardown`]).
    GPADL_TEARDOWN = 11, size_of::<GpadlTeardown>();
    /// 12: host confirms a teardown ([`GpadlTorndown`]).
    GPADL_TORNDOWN = 12, size_of::<GpadlTorndown>();
    /// 13: guest releases a rescinded relid ([`RelIdReleased`]).
    RELID_RELEASED = 13, size_of::<RelIdReleased>();
    /// 14: guest connects ([`InitiateContact`]).
    INITIATE_CONTACT = 14, size_of::<InitiateContact>();
    /// 15: host answers InitiateContact ([`VersionResponse`]).
    VERSION_RESPONSE = 15, size_of::<VersionResponse>();
    /// 16: guest disconnects (header only).
    UNLOAD = 16, HEADER_SIZE;
    /// 17: host confirms the unload (header only).
    UNLOAD_RESPONSE = 17, HEADER_SIZE;
    /// 18: open a reserved channel (4.0, [`OpenReservedChannel`]).
    OPEN_RESERVED_CHANNEL = 18, size_of::<OpenReservedChannel>();
    /// 19: close a reserved channel ([`CloseReservedChannel`]).
    CLOSE_RESERVED_CHANNEL = 19, size_of::<CloseReservedChannel>();
    /// 20: reserved channel closed ([`CloseReservedResponse`]).
    CLOSE_RESERVED_RESPONSE = 20, size_of::<CloseReservedResponse>();
    /// 21: hv_sock connect request (4.0, [`TlConnectRequest`]).
    TL_CONNECT_REQUEST = 21, size_of::<TlConnectRequest>();
    /// 22: re-target a channel's VP (4.1, [`ModifyChannel`]).
    MODIFY_CHANNEL = 22, size_of::<ModifyChannel>();
    /// 23: hv_sock connect result (4.1, [`TlConnectResult`]).
    TL_CONNECT_RESULT = 23, size_of::<TlConnectResult>();
    /// 24: answer to ModifyChannel (5.3, [`ModifyChannelResponse`]).
    MODIFY_CHANNEL_RESPONSE = 24, size_of::<ModifyChannelResponse>();
}

impl ChannelMessageType {
    /// One past the last type Linux accepts (it drops msgtype >= 25).
    pub const COUNT: u32 = 25;
}

impl core::fmt::Debug for ChannelMessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "ChannelMessageType({})", self.0),
        }
    }
}

/// The 8-byte header of every channel message (fact sheet §5.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct MessageHeader {
    /// Offset 0: the message type.
    pub msgtype: ChannelMessageType,
    /// Offset 4: padding (0).
    pub padding: u32,
}

impl MessageHeader {
    /// A header of type `msgtype`.
    pub const fn new(msgtype: ChannelMessageType) -> Self {
        Self {
            msgtype,
            padding: 0,
        }
    }
}

/// A fixed-layout channel message type.
pub trait FixedMessage:
    Copy + core::fmt::Debug + FromBytes + IntoBytes + Immutable + KnownLayout
{
    /// Its message type.
    const TYPE: ChannelMessageType;
}

macro_rules! fixed {
    ($t:ty, $ty:ident) => {
        impl FixedMessage for $t {
            const TYPE: ChannelMessageType = ChannelMessageType::$ty;
        }
    };
}

/// Offer flags (`chn_flags`, OfferChannel offset 56).
pub mod offer_flags {
    /// ENUMERATE_DEVICE_INTERFACE.
    pub const ENUMERATE_DEVICE_INTERFACE: u16 = 0x1;
    /// SERVER_SUPPORTS_TRANSFER_PAGES.
    pub const SERVER_SUPPORTS_TRANSFER_PAGES: u16 = 0x2;
    /// SERVER_SUPPORTS_GPADLS.
    pub const SERVER_SUPPORTS_GPADLS: u16 = 0x4;
    /// NAMED_PIPE_MODE.
    pub const NAMED_PIPE_MODE: u16 = 0x10;
    /// LOOPBACK_OFFER.
    pub const LOOPBACK_OFFER: u16 = 0x100;
    /// PARENT_OFFER.
    pub const PARENT_OFFER: u16 = 0x200;
    /// REQUEST_MONITORED_NOTIFICATION.
    pub const REQUEST_MONITORED_NOTIFICATION: u16 = 0x400;
    /// TLNPI_PROVIDER_OFFER: an hv_sock channel (the only flag Linux looks at).
    pub const TLNPI_PROVIDER_OFFER: u16 = 0x2000;
}

/// OfferChannel (type 1, 196 bytes; fact sheet §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OfferChannel {
    /// Offset 0.
    pub header: MessageHeader,
    /// Offset 8: interface (class) GUID.
    pub if_type: Guid,
    /// Offset 24: instance GUID.
    pub if_instance: Guid,
    /// Offset 40: reserved.
    pub reserved: [u32; 4],
    /// Offset 56: [`offer_flags`].
    pub chn_flags: u16,
    /// Offset 58: MMIO space the device wants, in MiB.
    pub mmio_megabytes: u16,
    /// Offset 60: user-defined bytes (named pipes: pipe_mode u32 first).
    pub user_defined: [u8; 120],
    /// Offset 180: 0 = primary channel, else a sub-channel.
    pub sub_channel_index: u16,
    /// Offset 182: reserved (openvmm: mmio_megabytes_optional).
    pub reserved2: u16,
    /// Offset 184: the channel's relid (1..2048).
    pub child_relid: u32,
    /// Offset 188: MNF monitor id.
    pub monitor_id: u8,
    /// Offset 189: bit 0 = monitor allocated.
    pub monitor_allocated: u8,
    /// Offset 190: bit 0 = dedicated interrupt.
    pub is_dedicated_interrupt: u16,
    /// Offset 192: HvSignalEvent connection id for guest -> host interrupts.
    pub connection_id: u32,
}
fixed!(OfferChannel, OFFER_CHANNEL);

impl OfferChannel {
    /// An offer with the fields a simple host sets (fact sheet §5.7 recommendation: no monitor,
    /// dedicated interrupt); everything else zero.
    pub fn new(
        if_type: Guid,
        if_instance: Guid,
        child_relid: u32,
        connection_id: u32,
        sub_channel_index: u16,
    ) -> Self {
        let mut o = Self::new_zeroed();
        o.header = MessageHeader::new(ChannelMessageType::OFFER_CHANNEL);
        o.if_type = if_type;
        o.if_instance = if_instance;
        o.child_relid = child_relid;
        o.connection_id = connection_id;
        o.sub_channel_index = sub_channel_index;
        o.is_dedicated_interrupt = 1;
        o
    }

    /// Whether the monitor (MNF) is allocated for this channel.
    pub const fn monitor_allocated(&self) -> bool {
        self.monitor_allocated & 1 != 0
    }

    /// Whether the channel has a dedicated interrupt.
    pub const fn dedicated_interrupt(&self) -> bool {
        self.is_dedicated_interrupt & 1 != 0
    }

    /// Whether this is an hv_sock (TLNPI provider) offer.
    pub const fn is_hvsock(&self) -> bool {
        self.chn_flags & offer_flags::TLNPI_PROVIDER_OFFER != 0
    }
}

macro_rules! simple_message {
    ($(#[$doc:meta])* $name:ident, $ty:ident { $($(#[$fdoc:meta])* $field:ident: $fty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
        )]
        #[repr(C)]
        pub struct $name {
            /// Offset 0.
            pub header: MessageHeader,
            $($(#[$fdoc])* pub $field: $fty,)*
        }
        fixed!($name, $ty);

        impl $name {
            /// The message with its header filled in.
            #[allow(clippy::too_many_arguments)]
            pub const fn new($($field: $fty),*) -> Self {
                Self { header: MessageHeader::new(ChannelMessageType::$ty), $($field),* }
            }
        }
    };
}

simple_message!(
    /// RescindChannelOffer (type 2, 12 bytes).
    RescindChannelOffer, RESCIND_CHANNEL_OFFER {
    /// Offset 8.
    child_relid: u32,
});

/// OpenChannel (type 5, 148 bytes; fact sheet §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenChannel {
    /// Offset 0.
    pub header: MessageHeader,
    /// Offset 8.
    pub child_relid: u32,
    /// Offset 12: open id (Linux: = relid); the result is matched on (relid, openid).
    pub open_id: u32,
    /// Offset 16: the GPADL covering both rings.
    pub ring_gpadl: u32,
    /// Offset 20: VP for host -> guest interrupts.
    pub target_vp: u32,
    /// Offset 24: page offset of the host -> guest ring within the GPADL.
    pub downstream_ring_page_offset: u32,
    /// Offset 28: driver-specific user data.
    pub user_data: [u8; 120],
}
fixed!(OpenChannel, OPEN_CHANNEL);

impl OpenChannel {
    /// The message with its header filled in.
    pub const fn new(
        child_relid: u32,
        open_id: u32,
        ring_gpadl: u32,
        target_vp: u32,
        downstream_ring_page_offset: u32,
        user_data: [u8; 120],
    ) -> Self {
        Self {
            header: MessageHeader::new(ChannelMessageType::OPEN_CHANNEL),
            child_relid,
            open_id,
            ring_gpadl,
            target_vp,
            downstream_ring_page_offset,
            user_data,
        }
    }
}

simple_message!(
    /// OpenResult (type 6, 20 bytes).
    OpenResult, OPEN_CHANNEL_RESULT {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12.
    open_id: u32,
    /// Offset 16: 0 = success.
    status: u32,
});

simple_message!(
    /// CloseChannel (type 7, 12 bytes).
    CloseChannel, CLOSE_CHANNEL {
    /// Offset 8.
    child_relid: u32,
});

simple_message!(
    /// The fixed part of GpadlHeader (type 8, 20 bytes); the ranges follow at offset 20.
    GpadlHeader, GPADL_HEADER {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12: handle chosen by the guest.
    gpadl: u32,
    /// Offset 16: total bytes of all range descriptors, Σ(8 + 8 × pfn_count).
    range_buflen: u16,
    /// Offset 18: number of ranges (Linux: 1).
    range_count: u16,
});

impl GpadlHeader {
    /// The number of PFNs all ranges hold together, from `range_buflen` and `range_count`; `None`
    /// if they are inconsistent (no range, or a buffer too short or not a multiple of 8).
    pub const fn total_pfns(&self) -> Option<usize> {
        let buflen = self.range_buflen as usize;
        let headers = self.range_count as usize * 8;
        if self.range_count == 0 || buflen < headers || !buflen.is_multiple_of(8) {
            return None;
        }
        Some((buflen - headers) / 8)
    }
}

simple_message!(
    /// The fixed part of GpadlBody (type 9, 16 bytes); PFNs follow at offset 16.
    GpadlBody, GPADL_BODY {
    /// Offset 8: message number (Linux: 0).
    msg_number: u32,
    /// Offset 12.
    gpadl: u32,
});

simple_message!(
    /// GpadlCreated (type 10, 20 bytes).
    GpadlCreated, GPADL_CREATED {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12.
    gpadl: u32,
    /// Offset 16: 0 = ok.
    creation_status: u32,
});

simple_message!(
    /// GpadlTeardown (type 11, 16 bytes).
    GpadlTeardown, GPADL_TEARDOWN {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12.
    gpadl: u32,
});

simple_message!(
    /// GpadlTorndown (type 12, 12 bytes).
    GpadlTorndown, GPADL_TORNDOWN {
    /// Offset 8.
    gpadl: u32,
});

simple_message!(
    /// RelIdReleased (type 13, 12 bytes).
    RelIdReleased, RELID_RELEASED {
    /// Offset 8.
    child_relid: u32,
});

/// InitiateContact (type 14, 40 bytes; fact sheet §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitiateContact {
    /// Offset 0.
    pub header: MessageHeader,
    /// Offset 8: the version requested.
    pub version_requested: Version,
    /// Offset 12: VP that receives control messages.
    pub target_vcpu: u32,
    /// Offset 16: before 5.0 the interrupt page GPA; from 5.0 msg_sint (byte 16), msg_vtl
    /// (byte 17), reserved, and in 6.0 feature flags (bytes 20..24).
    pub interrupt_page_or_target_info: u64,
    /// Offset 24: parent -> child monitor page GPA.
    pub monitor_page1: u64,
    /// Offset 32: child -> parent monitor page GPA.
    pub monitor_page2: u64,
}
fixed!(InitiateContact, INITIATE_CONTACT);

impl InitiateContact {
    /// A request for a version before 5.0, with the legacy interrupt page.
    pub const fn with_interrupt_page(
        version: Version,
        target_vcpu: u32,
        interrupt_page: u64,
        monitor_page1: u64,
        monitor_page2: u64,
    ) -> Self {
        Self {
            header: MessageHeader::new(ChannelMessageType::INITIATE_CONTACT),
            version_requested: version,
            target_vcpu,
            interrupt_page_or_target_info: interrupt_page,
            monitor_page1,
            monitor_page2,
        }
    }

    /// A request for 5.0 or later, naming the SINT and VTL for control messages.
    pub const fn with_target_sint(
        version: Version,
        target_vcpu: u32,
        msg_sint: u8,
        msg_vtl: u8,
        monitor_page1: u64,
        monitor_page2: u64,
    ) -> Self {
        Self {
            header: MessageHeader::new(ChannelMessageType::INITIATE_CONTACT),
            version_requested: version,
            target_vcpu,
            interrupt_page_or_target_info: msg_sint as u64 | (msg_vtl as u64) << 8,
            monitor_page1,
            monitor_page2,
        }
    }

    /// The legacy interrupt page GPA (meaningful before 5.0).
    pub const fn interrupt_page(&self) -> u64 {
        self.interrupt_page_or_target_info
    }

    /// msg_sint (byte 16; meaningful from 5.0).
    pub const fn msg_sint(&self) -> u8 {
        self.interrupt_page_or_target_info as u8
    }

    /// msg_vtl (byte 17; meaningful from 5.0).
    pub const fn msg_vtl(&self) -> u8 {
        (self.interrupt_page_or_target_info >> 8) as u8
    }

    /// 6.0 feature flags (bytes 20..24).
    pub const fn feature_flags(&self) -> FeatureFlags {
        FeatureFlags::from_bits((self.interrupt_page_or_target_info >> 32) as u32)
    }
}

/// VersionResponse connection states (offset 9).
pub mod connection_state {
    /// Success.
    pub const SUCCESSFUL: u8 = 0;
    /// Failed: low resources.
    pub const FAILED_LOW_RESOURCES: u8 = 1;
    /// Failed: unknown failure.
    pub const FAILED_UNKNOWN: u8 = 2;
}

/// VersionResponse (type 15, 16 bytes; fact sheet §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VersionResponse {
    /// Offset 0.
    pub header: MessageHeader,
    /// Offset 8: non-zero = the requested version is accepted.
    pub version_supported: u8,
    /// Offset 9: [`connection_state`].
    pub connection_state: u8,
    /// Offset 10: padding.
    pub padding: u16,
    /// Offset 12: from 5.0 the message connection id for all later messages (older protocols:
    /// openvmm echoes the selected version).
    pub msg_conn_id: u32,
}
fixed!(VersionResponse, VERSION_RESPONSE);

impl VersionResponse {
    /// The message with its header filled in.
    pub const fn new(version_supported: bool, connection_state: u8, msg_conn_id: u32) -> Self {
        Self {
            header: MessageHeader::new(ChannelMessageType::VERSION_RESPONSE),
            version_supported: version_supported as u8,
            connection_state,
            padding: 0,
            msg_conn_id,
        }
    }

    /// Whether the host accepted the version.
    pub const fn accepted(&self) -> bool {
        self.version_supported != 0
    }
}

simple_message!(
    /// OpenReservedChannel (type 18, 28 bytes; not in the fact sheet: Microsoft's VMBus headers,
    /// as published with the Hyper-V UEFI firmware).
    OpenReservedChannel, OPEN_RESERVED_CHANNEL {
    /// Offset 8.
    channel_id: u32,
    /// Offset 12.
    target_vp: u32,
    /// Offset 16.
    target_sint: u32,
    /// Offset 20.
    ring_gpadl: u32,
    /// Offset 24.
    downstream_page_offset: u32,
});

simple_message!(
    /// CloseReservedChannel (type 19, 20 bytes; same source as [`OpenReservedChannel`]).
    CloseReservedChannel, CLOSE_RESERVED_CHANNEL {
    /// Offset 8.
    channel_id: u32,
    /// Offset 12.
    target_vp: u32,
    /// Offset 16.
    target_sint: u32,
});

simple_message!(
    /// CloseReservedResponse (type 20, 12 bytes; same source as [`OpenReservedChannel`]).
    CloseReservedResponse, CLOSE_RESERVED_RESPONSE {
    /// Offset 8.
    channel_id: u32,
});

simple_message!(
    /// TlConnectRequest (type 21, 40 bytes; from 5.2 optionally 56 with a silo id).
    TlConnectRequest, TL_CONNECT_REQUEST {
    /// Offset 8.
    guest_endpoint_id: Guid,
    /// Offset 24.
    host_service_id: Guid,
});

simple_message!(
    /// ModifyChannel (type 22, 16 bytes).
    ModifyChannel, MODIFY_CHANNEL {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12.
    target_vp: u32,
});

simple_message!(
    /// TlConnectResult (type 23, 44 bytes, per openvmm).
    TlConnectResult, TL_CONNECT_RESULT {
    /// Offset 8.
    endpoint_id: Guid,
    /// Offset 24.
    service_id: Guid,
    /// Offset 40: status (an NTSTATUS-style i32).
    status: i32,
});

simple_message!(
    /// ModifyChannelResponse (type 24, 16 bytes).
    ModifyChannelResponse, MODIFY_CHANNEL_RESPONSE {
    /// Offset 8.
    child_relid: u32,
    /// Offset 12: 0 = success.
    status: i32,
});

// fact sheet §5.3: sizes and offsets (types 18-20: Microsoft's headers, see the struct docs).
const _: () = {
    assert!(size_of::<MessageHeader>() == 8);
    assert!(size_of::<OfferChannel>() == 196);
    assert!(offset_of!(OfferChannel, if_type) == 8);
    assert!(offset_of!(OfferChannel, if_instance) == 24);
    assert!(offset_of!(OfferChannel, reserved) == 40);
    assert!(offset_of!(OfferChannel, chn_flags) == 56);
    assert!(offset_of!(OfferChannel, mmio_megabytes) == 58);
    assert!(offset_of!(OfferChannel, user_defined) == 60);
    assert!(offset_of!(OfferChannel, sub_channel_index) == 180);
    assert!(offset_of!(OfferChannel, reserved2) == 182);
    assert!(offset_of!(OfferChannel, child_relid) == 184);
    assert!(offset_of!(OfferChannel, monitor_id) == 188);
    assert!(offset_of!(OfferChannel, monitor_allocated) == 189);
    assert!(offset_of!(OfferChannel, is_dedicated_interrupt) == 190);
    assert!(offset_of!(OfferChannel, connection_id) == 192);
    assert!(size_of::<RescindChannelOffer>() == 12);
    assert!(size_of::<OpenChannel>() == 148);
    assert!(offset_of!(OpenChannel, open_id) == 12);
    assert!(offset_of!(OpenChannel, ring_gpadl) == 16);
    assert!(offset_of!(OpenChannel, target_vp) == 20);
    assert!(offset_of!(OpenChannel, downstream_ring_page_offset) == 24);
    assert!(offset_of!(OpenChannel, user_data) == 28);
    assert!(size_of::<OpenResult>() == 20);
    assert!(offset_of!(OpenResult, status) == 16);
    assert!(size_of::<CloseChannel>() == 12);
    assert!(size_of::<GpadlHeader>() == 20);
    assert!(offset_of!(GpadlHeader, gpadl) == 12);
    assert!(offset_of!(GpadlHeader, range_buflen) == 16);
    assert!(offset_of!(GpadlHeader, range_count) == 18);
    assert!(size_of::<GpadlBody>() == 16);
    assert!(offset_of!(GpadlBody, gpadl) == 12);
    assert!(size_of::<GpadlCreated>() == 20);
    assert!(offset_of!(GpadlCreated, creation_status) == 16);
    assert!(size_of::<GpadlTeardown>() == 16);
    assert!(size_of::<GpadlTorndown>() == 12);
    assert!(size_of::<RelIdReleased>() == 12);
    assert!(size_of::<InitiateContact>() == 40);
    assert!(offset_of!(InitiateContact, version_requested) == 8);
    assert!(offset_of!(InitiateContact, target_vcpu) == 12);
    assert!(offset_of!(InitiateContact, interrupt_page_or_target_info) == 16);
    assert!(offset_of!(InitiateContact, monitor_page1) == 24);
    assert!(offset_of!(InitiateContact, monitor_page2) == 32);
    assert!(size_of::<VersionResponse>() == 16);
    assert!(offset_of!(VersionResponse, connection_state) == 9);
    assert!(offset_of!(VersionResponse, msg_conn_id) == 12);
    assert!(size_of::<OpenReservedChannel>() == 28);
    assert!(size_of::<CloseReservedChannel>() == 20);
    assert!(size_of::<CloseReservedResponse>() == 12);
    assert!(size_of::<TlConnectRequest>() == 40);
    assert!(offset_of!(TlConnectRequest, host_service_id) == 24);
    assert!(size_of::<ModifyChannel>() == 16);
    assert!(size_of::<TlConnectResult>() == 44);
    assert!(offset_of!(TlConnectResult, status) == 40);
    assert!(size_of::<ModifyChannelResponse>() == 16);
    assert!(HEADER_SIZE + 12 + 8 * GPADL_HEADER_MAX_PFNS + 8 <= MAX_MESSAGE_SIZE);
    assert!(HEADER_SIZE + 8 + 8 * GPADL_BODY_MAX_PFNS == MAX_MESSAGE_SIZE);
};

/// Why a message did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than the 8-byte header.
    NoHeader {
        /// The length.
        len: usize,
    },
    /// Longer than 240 bytes.
    TooLong {
        /// The length.
        len: usize,
    },
    /// msgtype 0 or >= 25.
    UnknownType(u32),
    /// Shorter than the type's minimum.
    TooShort {
        /// The type.
        msgtype: ChannelMessageType,
        /// The length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A GPADL message's variable part is malformed (no range, ranges longer than
    /// `range_buflen`, or a tail that is not whole qwords).
    BadGpadl {
        /// The type.
        msgtype: ChannelMessageType,
    },
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoHeader { len } => write!(f, "channel message of {len} bytes has no header"),
            Self::TooLong { len } => write!(f, "channel message of {len} bytes exceeds 240"),
            Self::UnknownType(t) => write!(f, "unknown channel message type {t}"),
            Self::TooShort { msgtype, len, min } => {
                write!(f, "{msgtype:?} of {len} bytes is shorter than {min}")
            }
            Self::BadGpadl { msgtype } => write!(f, "malformed {msgtype:?}"),
        }
    }
}

/// A decoded channel message. Fixed-size messages are copies; the GPADL tails borrow the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // each variant is named after its message type
pub enum ChannelMessage<'a> {
    OfferChannel(OfferChannel),
    RescindChannelOffer(RescindChannelOffer),
    RequestOffers,
    AllOffersDelivered,
    OpenChannel(OpenChannel),
    OpenResult(OpenResult),
    CloseChannel(CloseChannel),
    /// The fixed part and the range bytes that follow it (`{byte_count u32, byte_offset u32,
    /// pfn[] u64}`…, possibly continued in GpadlBody messages).
    GpadlHeader {
        header: GpadlHeader,
        ranges: &'a [u8],
    },
    /// The fixed part and its PFNs.
    GpadlBody {
        body: GpadlBody,
        pfns: PfnList<'a>,
    },
    GpadlCreated(GpadlCreated),
    GpadlTeardown(GpadlTeardown),
    GpadlTorndown(GpadlTorndown),
    RelIdReleased(RelIdReleased),
    InitiateContact(InitiateContact),
    VersionResponse(VersionResponse),
    Unload,
    UnloadResponse,
    OpenReservedChannel(OpenReservedChannel),
    CloseReservedChannel(CloseReservedChannel),
    CloseReservedResponse(CloseReservedResponse),
    /// With the 5.2 silo id when the message is 56 bytes or longer.
    TlConnectRequest {
        request: TlConnectRequest,
        silo_id: Option<Guid>,
    },
    ModifyChannel(ModifyChannel),
    TlConnectResult(TlConnectResult),
    ModifyChannelResponse(ModifyChannelResponse),
}

fn read<M: FixedMessage>(bytes: &[u8]) -> M {
    // The caller checked the minimum size, which is size_of::<M>().
    match M::read_from_prefix(bytes) {
        Ok((m, _)) => m,
        Err(_) => M::new_zeroed(),
    }
}

impl<'a> ChannelMessage<'a> {
    /// Decodes one message (the SynIC payload, `payload_size` bytes). Validates the 240-byte limit,
    /// the type range 1..=24, the type's minimum size and the GPADL tails; never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let len = bytes.len();
        if len > MAX_MESSAGE_SIZE {
            return Err(ParseError::TooLong { len });
        }
        let Ok((header, _)) = MessageHeader::read_from_prefix(bytes) else {
            return Err(ParseError::NoHeader { len });
        };
        let msgtype = header.msgtype;
        let min = match msgtype.min_size() {
            Some(m) if msgtype.0 < ChannelMessageType::COUNT => m,
            _ => return Err(ParseError::UnknownType(msgtype.0)),
        };
        if len < min {
            return Err(ParseError::TooShort { msgtype, len, min });
        }
        let bad_gpadl = ParseError::BadGpadl { msgtype };
        type T = ChannelMessageType;
        Ok(match msgtype {
            T::OFFER_CHANNEL => Self::OfferChannel(read(bytes)),
            T::RESCIND_CHANNEL_OFFER => Self::RescindChannelOffer(read(bytes)),
            T::REQUEST_OFFERS => Self::RequestOffers,
            T::ALL_OFFERS_DELIVERED => Self::AllOffersDelivered,
            T::OPEN_CHANNEL => Self::OpenChannel(read(bytes)),
            T::OPEN_CHANNEL_RESULT => Self::OpenResult(read(bytes)),
            T::CLOSE_CHANNEL => Self::CloseChannel(read(bytes)),
            T::GPADL_HEADER => {
                let header: GpadlHeader = read(bytes);
                let ranges = &bytes[min..];
                if header.total_pfns().is_none()
                    || ranges.len() > header.range_buflen as usize
                    || !ranges.len().is_multiple_of(8)
                    || ranges.len() < 8
                {
                    return Err(bad_gpadl);
                }
                Self::GpadlHeader { header, ranges }
            }
            T::GPADL_BODY => {
                let body: GpadlBody = read(bytes);
                let pfns = PfnList::new(&bytes[min..]).ok_or(bad_gpadl)?;
                Self::GpadlBody { body, pfns }
            }
            T::GPADL_CREATED => Self::GpadlCreated(read(bytes)),
            T::GPADL_TEARDOWN => Self::GpadlTeardown(read(bytes)),
            T::GPADL_TORNDOWN => Self::GpadlTorndown(read(bytes)),
            T::RELID_RELEASED => Self::RelIdReleased(read(bytes)),
            T::INITIATE_CONTACT => Self::InitiateContact(read(bytes)),
            T::VERSION_RESPONSE => Self::VersionResponse(read(bytes)),
            T::UNLOAD => Self::Unload,
            T::UNLOAD_RESPONSE => Self::UnloadResponse,
            T::OPEN_RESERVED_CHANNEL => Self::OpenReservedChannel(read(bytes)),
            T::CLOSE_RESERVED_CHANNEL => Self::CloseReservedChannel(read(bytes)),
            T::CLOSE_RESERVED_RESPONSE => Self::CloseReservedResponse(read(bytes)),
            T::TL_CONNECT_REQUEST => Self::TlConnectRequest {
                request: read(bytes),
                silo_id: Guid::read_from_prefix(&bytes[min..]).ok().map(|(g, _)| g),
            },
            T::MODIFY_CHANNEL => Self::ModifyChannel(read(bytes)),
            T::TL_CONNECT_RESULT => Self::TlConnectResult(read(bytes)),
            T::MODIFY_CHANNEL_RESPONSE => Self::ModifyChannelResponse(read(bytes)),
            _ => return Err(ParseError::UnknownType(msgtype.0)),
        })
    }

    /// The message type.
    pub fn msgtype(&self) -> ChannelMessageType {
        type T = ChannelMessageType;
        match self {
            Self::OfferChannel(_) => T::OFFER_CHANNEL,
            Self::RescindChannelOffer(_) => T::RESCIND_CHANNEL_OFFER,
            Self::RequestOffers => T::REQUEST_OFFERS,
            Self::AllOffersDelivered => T::ALL_OFFERS_DELIVERED,
            Self::OpenChannel(_) => T::OPEN_CHANNEL,
            Self::OpenResult(_) => T::OPEN_CHANNEL_RESULT,
            Self::CloseChannel(_) => T::CLOSE_CHANNEL,
            Self::GpadlHeader { .. } => T::GPADL_HEADER,
            Self::GpadlBody { .. } => T::GPADL_BODY,
            Self::GpadlCreated(_) => T::GPADL_CREATED,
            Self::GpadlTeardown(_) => T::GPADL_TEARDOWN,
            Self::GpadlTorndown(_) => T::GPADL_TORNDOWN,
            Self::RelIdReleased(_) => T::RELID_RELEASED,
            Self::InitiateContact(_) => T::INITIATE_CONTACT,
            Self::VersionResponse(_) => T::VERSION_RESPONSE,
            Self::Unload => T::UNLOAD,
            Self::UnloadResponse => T::UNLOAD_RESPONSE,
            Self::OpenReservedChannel(_) => T::OPEN_RESERVED_CHANNEL,
            Self::CloseReservedChannel(_) => T::CLOSE_RESERVED_CHANNEL,
            Self::CloseReservedResponse(_) => T::CLOSE_RESERVED_RESPONSE,
            Self::TlConnectRequest { .. } => T::TL_CONNECT_REQUEST,
            Self::ModifyChannel(_) => T::MODIFY_CHANNEL,
            Self::TlConnectResult(_) => T::TL_CONNECT_RESULT,
            Self::ModifyChannelResponse(_) => T::MODIFY_CHANNEL_RESPONSE,
        }
    }

    /// Encodes the message. The header of the result always carries [`Self::msgtype`] (whatever
    /// the embedded struct's header says). Fails only if a GPADL tail makes it exceed 240 bytes.
    pub fn encode(&self) -> Result<MessageBuf, EncodeError> {
        let mut b = MessageBuf::empty();
        match self {
            Self::OfferChannel(m) => b.push(m.as_bytes()),
            Self::RescindChannelOffer(m) => b.push(m.as_bytes()),
            Self::RequestOffers
            | Self::AllOffersDelivered
            | Self::Unload
            | Self::UnloadResponse => b.push(MessageHeader::default().as_bytes()),
            Self::OpenChannel(m) => b.push(m.as_bytes()),
            Self::OpenResult(m) => b.push(m.as_bytes()),
            Self::CloseChannel(m) => b.push(m.as_bytes()),
            Self::GpadlHeader { header, ranges } => {
                b.push(header.as_bytes())?;
                b.push(ranges)
            }
            Self::GpadlBody { body, pfns } => {
                b.push(body.as_bytes())?;
                b.push(pfns.as_bytes())
            }
            Self::GpadlCreated(m) => b.push(m.as_bytes()),
            Self::GpadlTeardown(m) => b.push(m.as_bytes()),
            Self::GpadlTorndown(m) => b.push(m.as_bytes()),
            Self::RelIdReleased(m) => b.push(m.as_bytes()),
            Self::InitiateContact(m) => b.push(m.as_bytes()),
            Self::VersionResponse(m) => b.push(m.as_bytes()),
            Self::OpenReservedChannel(m) => b.push(m.as_bytes()),
            Self::CloseReservedChannel(m) => b.push(m.as_bytes()),
            Self::CloseReservedResponse(m) => b.push(m.as_bytes()),
            Self::TlConnectRequest { request, silo_id } => {
                b.push(request.as_bytes())?;
                match silo_id {
                    Some(g) => b.push(g.as_bytes()),
                    None => Ok(()),
                }
            }
            Self::ModifyChannel(m) => b.push(m.as_bytes()),
            Self::TlConnectResult(m) => b.push(m.as_bytes()),
            Self::ModifyChannelResponse(m) => b.push(m.as_bytes()),
        }?;
        b.bytes[..4].copy_from_slice(&self.msgtype().0.to_le_bytes());
        Ok(b)
    }
}

/// A message would exceed 240 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeError {
    /// The size it would have had.
    pub len: usize,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "channel message of {} bytes exceeds 240", self.len)
    }
}

/// An encoded channel message: up to 240 bytes, ready for HvPostMessage or a SynIC slot.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageBuf {
    bytes: [u8; MAX_MESSAGE_SIZE],
    len: usize,
}

impl core::fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match ChannelMessage::parse(self.as_bytes()) {
            Ok(m) => write!(f, "MessageBuf({m:?})"),
            Err(_) => write!(f, "MessageBuf({:02x?})", self.as_bytes()),
        }
    }
}

impl MessageBuf {
    /// An empty buffer.
    pub const fn empty() -> Self {
        Self {
            bytes: [0; MAX_MESSAGE_SIZE],
            len: 0,
        }
    }

    /// A copy of `bytes` (at most 240).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EncodeError> {
        let mut b = Self::empty();
        b.push(bytes)?;
        Ok(b)
    }

    /// A fixed-size message.
    pub fn fixed<M: FixedMessage>(m: &M) -> Self {
        let mut b = Self::empty();
        // Every fixed message is at most 196 bytes (asserted above via the layouts).
        let _ = b.push(m.as_bytes());
        b
    }

    /// A header-only message of `msgtype`.
    pub fn header_only(msgtype: ChannelMessageType) -> Self {
        let mut b = Self::empty();
        let _ = b.push(MessageHeader::new(msgtype).as_bytes());
        b
    }

    /// Appends bytes.
    pub fn push(&mut self, data: &[u8]) -> Result<(), EncodeError> {
        let end = self.len + data.len();
        if end > MAX_MESSAGE_SIZE {
            return Err(EncodeError { len: end });
        }
        self.bytes[self.len..end].copy_from_slice(data);
        self.len = end;
        Ok(())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been written.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes the buffer again.
    pub fn parse(&self) -> Result<ChannelMessage<'_>, ParseError> {
        ChannelMessage::parse(self.as_bytes())
    }
}

/// Why a GPADL cannot be described.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpadlError {
    /// No PFNs, a byte count of 0, or a byte offset of 4096 or more.
    Empty,
    /// The PFN count is not ceil((byte_offset + byte_count) / 4096).
    PfnCountMismatch {
        /// PFNs given.
        given: usize,
        /// PFNs the range needs.
        needed: usize,
    },
    /// More PFNs than one GPADL_HEADER's 16-bit range_buflen can describe (8190).
    TooManyPfns(usize),
}

/// The most PFNs one single-range GPADL can have: (65535 - 8) / 8.
pub const GPADL_MAX_PFNS: usize = 8190;

/// Where a GPADL's page numbers come from: a slice of PFNs, or the guest's pages themselves.
pub trait PfnSource {
    /// The number of pages.
    fn pfn_count(&self) -> usize;
    /// Page `i`'s PFN (`i < pfn_count()`).
    fn pfn(&self, i: usize) -> u64;
}

impl PfnSource for [u64] {
    fn pfn_count(&self) -> usize {
        self.len()
    }
    fn pfn(&self, i: usize) -> u64 {
        self[i]
    }
}

impl PfnSource for [hypercall::page::PageRef<'_>] {
    fn pfn_count(&self) -> usize {
        self.len()
    }
    fn pfn(&self, i: usize) -> u64 {
        self[i].gpn()
    }
}

/// The GPADL_HEADER and GPADL_BODY messages describing one buffer as a single range, as Linux
/// sends them (fact sheet §5.3, §5.6): the header holds up to 26 PFNs, each body up to 28.
#[derive(Clone)]
pub struct GpadlMessages<'p, S: PfnSource + ?Sized = [u64]> {
    child_relid: u32,
    gpadl: u32,
    byte_offset: u32,
    byte_count: u32,
    pfns: &'p S,
    next: usize,
    header_sent: bool,
}

impl<S: PfnSource + ?Sized> core::fmt::Debug for GpadlMessages<'_, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GpadlMessages")
            .field("child_relid", &self.child_relid)
            .field("gpadl", &self.gpadl)
            .field("pfns", &self.pfns.pfn_count())
            .field("next", &self.next)
            .finish()
    }
}

impl<'p, S: PfnSource + ?Sized> GpadlMessages<'p, S> {
    /// The messages for `byte_count` bytes starting `byte_offset` into the first of `pfns`.
    pub fn new(
        child_relid: u32,
        gpadl: u32,
        byte_offset: u32,
        byte_count: u32,
        pfns: &'p S,
    ) -> Result<Self, GpadlError> {
        let count = pfns.pfn_count();
        if count == 0 || byte_count == 0 || byte_offset >= 4096 {
            return Err(GpadlError::Empty);
        }
        let needed = (byte_offset as usize + byte_count as usize).div_ceil(4096);
        if needed != count {
            return Err(GpadlError::PfnCountMismatch {
                given: count,
                needed,
            });
        }
        if count > GPADL_MAX_PFNS {
            return Err(GpadlError::TooManyPfns(count));
        }
        Ok(Self {
            child_relid,
            gpadl,
            byte_offset,
            byte_count,
            pfns,
            next: 0,
            header_sent: false,
        })
    }

    /// The total number of messages (header plus bodies).
    pub fn message_count(&self) -> usize {
        let rest = self.pfns.pfn_count().saturating_sub(GPADL_HEADER_MAX_PFNS);
        1 + rest.div_ceil(GPADL_BODY_MAX_PFNS)
    }
}

impl<S: PfnSource + ?Sized> Iterator for GpadlMessages<'_, S> {
    type Item = MessageBuf;

    fn next(&mut self) -> Option<MessageBuf> {
        let count = self.pfns.pfn_count();
        let mut b = MessageBuf::empty();
        // Sizes are bounded by the constants above, so the pushes cannot fail.
        if !self.header_sent {
            self.header_sent = true;
            let header = GpadlHeader::new(self.child_relid, self.gpadl, (8 + 8 * count) as u16, 1);
            let n = count.min(GPADL_HEADER_MAX_PFNS);
            let _ = b.push(header.as_bytes());
            let _ = b.push(&self.byte_count.to_le_bytes());
            let _ = b.push(&self.byte_offset.to_le_bytes());
            for i in 0..n {
                let _ = b.push(&self.pfns.pfn(i).to_le_bytes());
            }
            self.next = n;
            return Some(b);
        }
        if self.next >= count {
            return None;
        }
        let n = (count - self.next).min(GPADL_BODY_MAX_PFNS);
        let _ = b.push(GpadlBody::new(0, self.gpadl).as_bytes());
        for i in self.next..self.next + n {
            let _ = b.push(&self.pfns.pfn(i).to_le_bytes());
        }
        self.next += n;
        Some(b)
    }
}

#[cfg(test)]
mod tests;
