//! SynIC layouts: the 256-byte message, the message page, the event-flags page and the timer
//! message payload (fact sheet §4).
//!
//! These are plain `repr(C)` values for copying and for the host, which writes them into guest
//! memory. The guest reads the live pages, which the hypervisor writes concurrently, only through
//! [`crate::page::PageRef`] (atomic accesses); see [`crate::hv::SynIc`].
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Number of SINTs, and of slots in the message and event-flags pages.
pub const SINT_COUNT: usize = 16;
/// Size of one SynIC message (and of one message-page slot) in bytes.
pub const MESSAGE_SIZE: usize = 256;
/// Size of the message header in bytes.
pub const MESSAGE_HEADER_SIZE: usize = 16;
/// Maximum message payload in bytes.
pub const MESSAGE_PAYLOAD_SIZE: usize = 240;
/// Size of one SINT's event-flags slot in bytes.
pub const EVENT_FLAGS_SIZE: usize = 256;
/// Number of event flags per SINT.
pub const EVENT_FLAGS_PER_SINT: usize = EVENT_FLAGS_SIZE * 8;
/// The SINT VMBus uses (fact sheet §0, §4.4).
pub const VMBUS_SINT: u8 = 2;

/// Byte offset of SINT `sint`'s slot in the message page or event-flags page.
pub const fn slot_offset(sint: u8) -> usize {
    sint as usize * MESSAGE_SIZE
}

/// SynIC message type: an open set, so values this crate does not name survive decoding.
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
pub struct MessageType(pub u32);

impl MessageType {
    /// The slot is empty.
    pub const NONE: Self = Self(0);
    /// VMBus channel-management message (fact sheet §0: "SynIC message type used by VMBus").
    pub const VMBUS: Self = Self(1);
    /// Unmapped GPA intercept.
    pub const UNMAPPED_GPA: Self = Self(0x8000_0000);
    /// GPA intercept.
    pub const GPA_INTERCEPT: Self = Self(0x8000_0001);
    /// Synthetic timer expired (payload: [`TimerMessagePayload`]).
    pub const TIMER_EXPIRED: Self = Self(0x8000_0010);
    /// Invalid VP register value.
    pub const INVALID_VP_REGISTER_VALUE: Self = Self(0x8000_0020);
    /// Unrecoverable exception.
    pub const UNRECOVERABLE_EXCEPTION: Self = Self(0x8000_0021);
    /// Unsupported feature.
    pub const UNSUPPORTED_FEATURE: Self = Self(0x8000_0022);
    /// x64 I/O port intercept.
    pub const X64_IO_PORT_INTERCEPT: Self = Self(0x8001_0000);
    /// x64 MSR intercept.
    pub const X64_MSR_INTERCEPT: Self = Self(0x8001_0001);
    /// x64 CPUID intercept.
    pub const X64_CPUID_INTERCEPT: Self = Self(0x8001_0002);
    /// x64 exception intercept.
    pub const X64_EXCEPTION_INTERCEPT: Self = Self(0x8001_0003);
    /// x64 APIC EOI.
    pub const X64_APIC_EOI: Self = Self(0x8001_0004);
    /// x64 legacy FP error.
    pub const X64_LEGACY_FP_ERROR: Self = Self(0x8001_0005);

    /// The name of a known type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NONE => "NONE",
            Self::VMBUS => "VMBUS",
            Self::UNMAPPED_GPA => "UNMAPPED_GPA",
            Self::GPA_INTERCEPT => "GPA_INTERCEPT",
            Self::TIMER_EXPIRED => "TIMER_EXPIRED",
            Self::INVALID_VP_REGISTER_VALUE => "INVALID_VP_REGISTER_VALUE",
            Self::UNRECOVERABLE_EXCEPTION => "UNRECOVERABLE_EXCEPTION",
            Self::UNSUPPORTED_FEATURE => "UNSUPPORTED_FEATURE",
            Self::X64_IO_PORT_INTERCEPT => "X64_IO_PORT_INTERCEPT",
            Self::X64_MSR_INTERCEPT => "X64_MSR_INTERCEPT",
            Self::X64_CPUID_INTERCEPT => "X64_CPUID_INTERCEPT",
            Self::X64_EXCEPTION_INTERCEPT => "X64_EXCEPTION_INTERCEPT",
            Self::X64_APIC_EOI => "X64_APIC_EOI",
            Self::X64_LEGACY_FP_ERROR => "X64_LEGACY_FP_ERROR",
            _ => return None,
        })
    }

    /// Whether a slot holding this type is empty.
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Bit 31 set: a hypervisor message (guests may not post these with HvPostMessage).
    pub const fn is_hypervisor_message(self) -> bool {
        self.0 & 0x8000_0000 != 0
    }
}

impl core::fmt::Debug for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "MessageType::{n}"),
            None => write!(f, "MessageType({:#x})", self.0),
        }
    }
}

/// Message flags (header byte 5).
#[bitfield(u8)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MessageFlags {
    /// Bit 0: another message is queued behind this one; write EOM after freeing the slot.
    pub message_pending: bool,
    /// Bits 7:1: reserved.
    #[bits(7)]
    pub reserved: u8,
}

/// The 16-byte header of an HV_MESSAGE (fact sheet §4.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct HvMessageHeader {
    /// Offset 0: message type; [`MessageType::NONE`] means the slot is empty.
    pub message_type: MessageType,
    /// Offset 4: payload size in bytes (untrusted: may exceed 240).
    pub payload_size: u8,
    /// Offset 5: flags.
    pub message_flags: MessageFlags,
    /// Offset 6: reserved.
    pub reserved: u16,
    /// Offset 8: origination id / sender / port id (bits 23:0 of the low dword).
    pub origination_id: u64,
}

impl HvMessageHeader {
    /// The port id: bits 23:0 of the origination id.
    pub const fn port_id(&self) -> u32 {
        self.origination_id as u32 & 0x00FF_FFFF
    }
}

/// One 256-byte HV_MESSAGE: header plus 240 payload bytes (fact sheet §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessage {
    /// Offset 0: the header.
    pub header: HvMessageHeader,
    /// Offset 16: the payload (only the first `payload_size` bytes matter).
    pub payload: [u8; MESSAGE_PAYLOAD_SIZE],
}

impl Default for HvMessage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl HvMessage {
    /// A message of `message_type` carrying `payload`.
    ///
    /// Returns `None` if `payload` is longer than 240 bytes.
    pub fn new(message_type: MessageType, payload: &[u8]) -> Option<Self> {
        if payload.len() > MESSAGE_PAYLOAD_SIZE {
            return None;
        }
        let mut m = Self::default();
        m.header.message_type = message_type;
        m.header.payload_size = payload.len() as u8;
        m.payload[..payload.len()].copy_from_slice(payload);
        Some(m)
    }

    /// The payload bytes: the first `payload_size` bytes, clamped to 240 because the size is
    /// written by the other side.
    pub fn payload(&self) -> &[u8] {
        let n = (self.header.payload_size as usize).min(MESSAGE_PAYLOAD_SIZE);
        &self.payload[..n]
    }

    /// The payload read as a timer message, if this is a [`MessageType::TIMER_EXPIRED`] message.
    pub fn timer_payload(&self) -> Option<TimerMessagePayload> {
        if self.header.message_type != MessageType::TIMER_EXPIRED {
            return None;
        }
        TimerMessagePayload::read_from_prefix(&self.payload)
            .ok()
            .map(|(p, _)| p)
    }
}

/// The SIM page: 16 message slots, slot n for SINT n (fact sheet §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MessagePage {
    /// Slot n at offset n * 256.
    pub slots: [HvMessage; SINT_COUNT],
}

/// One SINT's 2048 event flags; flag k is bit (k mod 8) of byte (k / 8) (fact sheet §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EventFlags {
    /// The LSB-first bitmap.
    pub flags: [u8; EVENT_FLAGS_SIZE],
}

impl Default for EventFlags {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl EventFlags {
    /// Whether flag `k` is set (`false` for `k >= 2048`).
    pub fn get(&self, k: usize) -> bool {
        k < EVENT_FLAGS_PER_SINT && self.flags[k / 8] & (1 << (k % 8)) != 0
    }

    /// Sets flag `k`, returning whether it was already set (`None` for `k >= 2048`).
    pub fn set(&mut self, k: usize) -> Option<bool> {
        if k >= EVENT_FLAGS_PER_SINT {
            return None;
        }
        let was = self.get(k);
        self.flags[k / 8] |= 1 << (k % 8);
        Some(was)
    }
}

/// The SIEF page: 16 event-flag slots, slot n for SINT n (fact sheet §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EventFlagsPage {
    /// Slot n at offset n * 256.
    pub slots: [EventFlags; SINT_COUNT],
}

/// Payload of a [`MessageType::TIMER_EXPIRED`] message (fact sheet §4.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TimerMessagePayload {
    /// Offset 0: index of the synthetic timer that expired.
    pub timer_index: u32,
    /// Offset 4: reserved.
    pub reserved: u32,
    /// Offset 8: the expiration time (100 ns reference time).
    pub expiration_time: u64,
    /// Offset 16: the delivery time (100 ns reference time).
    pub delivery_time: u64,
}

// fact sheet §4.1 / §4.2: sizes and offsets.
const _: () = {
    assert!(size_of::<HvMessageHeader>() == MESSAGE_HEADER_SIZE);
    assert!(offset_of!(HvMessageHeader, message_type) == 0);
    assert!(offset_of!(HvMessageHeader, payload_size) == 4);
    assert!(offset_of!(HvMessageHeader, message_flags) == 5);
    assert!(offset_of!(HvMessageHeader, reserved) == 6);
    assert!(offset_of!(HvMessageHeader, origination_id) == 8);
    assert!(size_of::<HvMessage>() == MESSAGE_SIZE);
    assert!(offset_of!(HvMessage, payload) == 16);
    assert!(MESSAGE_HEADER_SIZE + MESSAGE_PAYLOAD_SIZE == MESSAGE_SIZE);
    assert!(size_of::<MessagePage>() == 4096);
    assert!(size_of::<EventFlags>() == EVENT_FLAGS_SIZE);
    assert!(size_of::<EventFlagsPage>() == 4096);
    assert!(size_of::<TimerMessagePayload>() == 24);
    assert!(offset_of!(TimerMessagePayload, timer_index) == 0);
    assert!(offset_of!(TimerMessagePayload, expiration_time) == 8);
    assert!(offset_of!(TimerMessagePayload, delivery_time) == 16);
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // fact sheet §4.1: layout and message type values.
    #[test]
    fn message_layout() {
        assert_eq!(size_of::<HvMessage>(), 256);
        assert_eq!(size_of::<MessagePage>(), 16 * 256);
        assert_eq!(slot_offset(2), 512); // §4.4: SIM slot 2 at byte offset 512
        assert_eq!(MessageType::NONE.0, 0);
        assert_eq!(MessageType::VMBUS.0, 1);
        assert_eq!(MessageType::TIMER_EXPIRED.0, 0x8000_0010);
        assert_eq!(MessageType::UNMAPPED_GPA.0, 0x8000_0000);
        assert_eq!(MessageType::GPA_INTERCEPT.0, 0x8000_0001);
        assert_eq!(MessageType::INVALID_VP_REGISTER_VALUE.0, 0x8000_0020);
        assert_eq!(MessageType::UNSUPPORTED_FEATURE.0, 0x8000_0022);
        assert_eq!(MessageType::X64_IO_PORT_INTERCEPT.0, 0x8001_0000);
        assert_eq!(MessageType::X64_LEGACY_FP_ERROR.0, 0x8001_0005);
        assert_eq!(
            MessageFlags::new().with_message_pending(true).into_bits(),
            1
        );

        let mut m = HvMessage::new(MessageType::VMBUS, &[1, 2, 3]).unwrap();
        m.header.message_flags.set_message_pending(true);
        m.header.origination_id = 0xAB12_3456;
        let b = m.as_bytes();
        assert_eq!(&b[0..4], &1u32.to_le_bytes());
        assert_eq!(b[4], 3);
        assert_eq!(b[5], 1);
        assert_eq!(&b[16..19], &[1, 2, 3]);
        assert_eq!(m.header.port_id(), 0x12_3456);
        assert_eq!(m.payload(), &[1, 2, 3]);
        assert!(HvMessage::new(MessageType::VMBUS, &[0; 241]).is_none());
        // Untrusted size is clamped.
        m.header.payload_size = 255;
        assert_eq!(m.payload().len(), 240);
        assert_eq!(format!("{:?}", MessageType(7)), "MessageType(0x7)");
        assert_eq!(
            format!("{:?}", MessageType::TIMER_EXPIRED),
            "MessageType::TIMER_EXPIRED"
        );
    }

    // fact sheet §4.1: timer message payload.
    #[test]
    fn timer_payload() {
        let p = TimerMessagePayload {
            timer_index: 1,
            reserved: 0,
            expiration_time: 0x1122,
            delivery_time: 0x3344,
        };
        let m = HvMessage::new(MessageType::TIMER_EXPIRED, p.as_bytes()).unwrap();
        assert_eq!(m.header.payload_size, 24);
        assert_eq!(&m.payload[8..10], &[0x22, 0x11]);
        assert_eq!(m.timer_payload(), Some(p));
        assert_eq!(
            HvMessage::new(MessageType::VMBUS, p.as_bytes())
                .unwrap()
                .timer_payload(),
            None
        );
    }

    // fact sheet §4.2: flag k is bit (k mod 8) of byte (k / 8).
    #[test]
    fn event_flags() {
        let mut f = EventFlags::default();
        assert_eq!(f.set(9), Some(false));
        assert_eq!(f.set(9), Some(true));
        assert_eq!(f.flags[1], 0b10);
        assert!(f.get(9));
        assert!(!f.get(8));
        assert_eq!(f.set(2048), None);
        assert!(!f.get(5000));
        assert_eq!(size_of::<EventFlagsPage>(), 4096);
    }

    extern crate std;
    use std::format;

    proptest! {
        #[test]
        fn message_bytes_round_trip(bytes in proptest::collection::vec(any::<u8>(), 256)) {
            let m = HvMessage::read_from_bytes(&bytes).unwrap();
            prop_assert_eq!(m.as_bytes(), &bytes[..]);
            prop_assert_eq!(m.header.message_flags.message_pending(), bytes[5] & 1 == 1);
            prop_assert_eq!(m.header.message_type.0, u32::from_le_bytes(bytes[0..4].try_into().unwrap()));
            prop_assert!(m.payload().len() <= 240);
        }
    }
}
