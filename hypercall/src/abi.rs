//! The x64 hypercall ABI: control word (RCX), result value (RAX), status codes, call codes and the
//! input blocks of HvPostMessage and HvSignalEvent (fact sheet §3).
#![forbid(unsafe_code)]

use crate::synic::MessageType;
use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Maximum HvPostMessage payload in bytes (fact sheet §3.5).
pub const MAX_MESSAGE_PAYLOAD: usize = 240;
/// Largest rep count / rep start index the 12-bit fields hold.
pub const MAX_REP_COUNT: u16 = 0xFFF;
/// Largest variable header size (10 bits, in qwords).
pub const MAX_VARIABLE_HEADER_QWORDS: u16 = 0x3FF;

/// A hypercall code: an open set, so unknown codes survive decoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct CallCode(pub u16);

impl CallCode {
    /// HvCallFlushVirtualAddressSpace (slow).
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE: Self = Self(0x0002);
    /// HvCallFlushVirtualAddressList (slow rep).
    pub const FLUSH_VIRTUAL_ADDRESS_LIST: Self = Self(0x0003);
    /// HvCallNotifyLongSpinWait (fast).
    pub const NOTIFY_LONG_SPIN_WAIT: Self = Self(0x0008);
    /// HvCallSendSyntheticClusterIpi (fast).
    pub const SEND_SYNTHETIC_CLUSTER_IPI: Self = Self(0x000B);
    /// HvCallFlushVirtualAddressSpaceEx.
    pub const FLUSH_VIRTUAL_ADDRESS_SPACE_EX: Self = Self(0x0013);
    /// HvCallFlushVirtualAddressListEx.
    pub const FLUSH_VIRTUAL_ADDRESS_LIST_EX: Self = Self(0x0014);
    /// HvCallSendSyntheticClusterIpiEx.
    pub const SEND_SYNTHETIC_CLUSTER_IPI_EX: Self = Self(0x0015);
    /// HvCallGetPartitionId (slow, output u64).
    pub const GET_PARTITION_ID: Self = Self(0x0046);
    /// HvCallGetVpRegisters (rep).
    pub const GET_VP_REGISTERS: Self = Self(0x0050);
    /// HvCallSetVpRegisters (rep).
    pub const SET_VP_REGISTERS: Self = Self(0x0051);
    /// HvCallPostMessage (slow; input [`PostMessageInput`]).
    pub const POST_MESSAGE: Self = Self(0x005C);
    /// HvCallSignalEvent (fast or slow; input [`SignalEventInput`]).
    pub const SIGNAL_EVENT: Self = Self(0x005D);
    /// HvCallGetVpIndexFromApicId (slow rep).
    pub const GET_VP_INDEX_FROM_APIC_ID: Self = Self(0x009A);
    /// HvExtCallQueryCapabilities (slow, output u64).
    pub const EXT_QUERY_CAPABILITIES: Self = Self(0x8001);
    /// HvExtCallMemoryHeatHint.
    pub const EXT_MEMORY_HEAT_HINT: Self = Self(0x8003);

    /// The name of a known call code.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::FLUSH_VIRTUAL_ADDRESS_SPACE => "FlushVirtualAddressSpace",
            Self::FLUSH_VIRTUAL_ADDRESS_LIST => "FlushVirtualAddressList",
            Self::NOTIFY_LONG_SPIN_WAIT => "NotifyLongSpinWait",
            Self::SEND_SYNTHETIC_CLUSTER_IPI => "SendSyntheticClusterIpi",
            Self::FLUSH_VIRTUAL_ADDRESS_SPACE_EX => "FlushVirtualAddressSpaceEx",
            Self::FLUSH_VIRTUAL_ADDRESS_LIST_EX => "FlushVirtualAddressListEx",
            Self::SEND_SYNTHETIC_CLUSTER_IPI_EX => "SendSyntheticClusterIpiEx",
            Self::GET_PARTITION_ID => "GetPartitionId",
            Self::GET_VP_REGISTERS => "GetVpRegisters",
            Self::SET_VP_REGISTERS => "SetVpRegisters",
            Self::POST_MESSAGE => "PostMessage",
            Self::SIGNAL_EVENT => "SignalEvent",
            Self::GET_VP_INDEX_FROM_APIC_ID => "GetVpIndexFromApicId",
            Self::EXT_QUERY_CAPABILITIES => "ExtQueryCapabilities",
            Self::EXT_MEMORY_HEAT_HINT => "ExtMemoryHeatHint",
            _ => return None,
        })
    }

    /// For the bitfield macro.
    pub const fn from_bits(v: u16) -> Self {
        Self(v)
    }

    /// For the bitfield macro.
    pub const fn into_bits(self) -> u16 {
        self.0
    }
}

impl core::fmt::Debug for CallCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "CallCode::{n}({:#x})", self.0),
            None => write!(f, "CallCode({:#x})", self.0),
        }
    }
}

/// HV_STATUS: an open set, so unknown values survive decoding (fact sheet §3.4).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct HvStatus(pub u16);

impl HvStatus {
    /// The call succeeded.
    pub const SUCCESS: Self = Self(0x0000);
    /// Unknown call code.
    pub const INVALID_HYPERCALL_CODE: Self = Self(0x0002);
    /// Bad rep count, start >= count, reserved bit set, or a variable header where none is allowed.
    pub const INVALID_HYPERCALL_INPUT: Self = Self(0x0003);
    /// Unaligned GPA, crosses a page, or outside the GPA space.
    pub const INVALID_ALIGNMENT: Self = Self(0x0004);
    /// A parameter is invalid.
    pub const INVALID_PARAMETER: Self = Self(0x0005);
    /// The caller lacks the privilege.
    pub const ACCESS_DENIED: Self = Self(0x0006);
    /// The partition is in the wrong state.
    pub const INVALID_PARTITION_STATE: Self = Self(0x0007);
    /// The operation is denied.
    pub const OPERATION_DENIED: Self = Self(0x0008);
    /// Not enough memory.
    pub const INSUFFICIENT_MEMORY: Self = Self(0x000B);
    /// Invalid VP index.
    pub const INVALID_VP_INDEX: Self = Self(0x000E);
    /// Invalid port id.
    pub const INVALID_PORT_ID: Self = Self(0x0011);
    /// Invalid connection id.
    pub const INVALID_CONNECTION_ID: Self = Self(0x0012);
    /// The port has no free message buffers.
    pub const INSUFFICIENT_BUFFERS: Self = Self(0x0013);
    /// The VP is in the wrong state.
    pub const INVALID_VP_STATE: Self = Self(0x0015);
    /// SINT masked, SynIC disabled, or SIM/SIEF page disabled.
    pub const INVALID_SYNIC_STATE: Self = Self(0x0018);
    /// The object is in use.
    pub const OBJECT_IN_USE: Self = Self(0x0019);
    /// Timed out.
    pub const TIME_OUT: Self = Self(0x0078);
    /// The VTL is already enabled.
    pub const VTL_ALREADY_ENABLED: Self = Self(0x0086);

    /// The name of a known status.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "SUCCESS",
            Self::INVALID_HYPERCALL_CODE => "INVALID_HYPERCALL_CODE",
            Self::INVALID_HYPERCALL_INPUT => "INVALID_HYPERCALL_INPUT",
            Self::INVALID_ALIGNMENT => "INVALID_ALIGNMENT",
            Self::INVALID_PARAMETER => "INVALID_PARAMETER",
            Self::ACCESS_DENIED => "ACCESS_DENIED",
            Self::INVALID_PARTITION_STATE => "INVALID_PARTITION_STATE",
            Self::OPERATION_DENIED => "OPERATION_DENIED",
            Self::INSUFFICIENT_MEMORY => "INSUFFICIENT_MEMORY",
            Self::INVALID_VP_INDEX => "INVALID_VP_INDEX",
            Self::INVALID_PORT_ID => "INVALID_PORT_ID",
            Self::INVALID_CONNECTION_ID => "INVALID_CONNECTION_ID",
            Self::INSUFFICIENT_BUFFERS => "INSUFFICIENT_BUFFERS",
            Self::INVALID_VP_STATE => "INVALID_VP_STATE",
            Self::INVALID_SYNIC_STATE => "INVALID_SYNIC_STATE",
            Self::OBJECT_IN_USE => "OBJECT_IN_USE",
            Self::TIME_OUT => "TIME_OUT",
            Self::VTL_ALREADY_ENABLED => "VTL_ALREADY_ENABLED",
            _ => return None,
        })
    }

    /// Whether this is [`HvStatus::SUCCESS`].
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// `Ok(())` for success, `Err(self)` otherwise.
    pub const fn result(self) -> Result<(), HvStatus> {
        if self.is_success() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// For the bitfield macro.
    pub const fn from_bits(v: u16) -> Self {
        Self(v)
    }

    /// For the bitfield macro.
    pub const fn into_bits(self) -> u16 {
        self.0
    }
}

impl core::fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => write!(f, "HvStatus::{n}"),
            None => write!(f, "HvStatus({:#x})", self.0),
        }
    }
}

impl core::fmt::Display for HvStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{:#06x}", self.0),
        }
    }
}

/// The hypercall input value in RCX (fact sheet §3.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Control {
    /// Bits 15:0: call code.
    #[bits(16)]
    pub call_code: CallCode,
    /// Bit 16: fast (register-based input).
    pub fast: bool,
    /// Bits 26:17: variable header size in qwords.
    #[bits(10)]
    pub variable_header_size: u16,
    /// Bits 30:27: reserved-zero.
    #[bits(4)]
    pub reserved_27: u8,
    /// Bit 31: nested (send to the L0 hypervisor).
    pub nested: bool,
    /// Bits 43:32: rep count (0 for simple calls).
    #[bits(12)]
    pub rep_count: u16,
    /// Bits 47:44: reserved-zero.
    #[bits(4)]
    pub reserved_44: u8,
    /// Bits 59:48: rep start index.
    #[bits(12)]
    pub rep_start: u16,
    /// Bits 63:60: reserved-zero.
    #[bits(4)]
    pub reserved_60: u8,
}

impl Control {
    /// A simple call of `code`.
    pub const fn call(code: CallCode) -> Self {
        Self::new().with_call_code(code)
    }

    /// Whether every reserved-zero field is zero.
    pub const fn reserved_bits_clear(self) -> bool {
        self.reserved_27() == 0 && self.reserved_44() == 0 && self.reserved_60() == 0
    }
}

/// The hypercall result value in RAX (fact sheet §3.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HypercallResult {
    /// Bits 15:0: status.
    #[bits(16)]
    pub status: HvStatus,
    /// Bits 31:16: ignore.
    #[bits(16)]
    pub reserved_16: u16,
    /// Bits 43:32: reps completed (a total, not relative to the start index).
    #[bits(12)]
    pub reps_completed: u16,
    /// Bits 63:44: ignore.
    #[bits(20)]
    pub reserved_44: u32,
}

impl HypercallResult {
    /// A result with `status` and `reps_completed`.
    pub const fn with(status: HvStatus, reps_completed: u16) -> Self {
        Self::new()
            .with_status(status)
            .with_reps_completed(reps_completed)
    }
}

/// The payload is longer than [`MAX_MESSAGE_PAYLOAD`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadTooLarge {
    /// The length that was asked for.
    pub len: usize,
}

impl core::fmt::Display for PayloadTooLarge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "message payload of {} bytes exceeds {MAX_MESSAGE_PAYLOAD}",
            self.len
        )
    }
}

/// Input block of HvCallPostMessage: 256 bytes (fact sheet §3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PostMessageInput {
    /// Offset 0: connection id (bits 23:0; 31:24 reserved).
    pub connection_id: u32,
    /// Offset 4: reserved-zero.
    pub reserved: u32,
    /// Offset 8: message type (non-zero, bit 31 clear; VMBus uses 1).
    pub message_type: MessageType,
    /// Offset 12: payload size (at most 240).
    pub payload_size: u32,
    /// Offset 16: payload.
    pub payload: [u8; MAX_MESSAGE_PAYLOAD],
}

impl PostMessageInput {
    /// Builds the input block; the payload is limited to 240 bytes.
    pub fn new(
        connection_id: u32,
        message_type: MessageType,
        payload: &[u8],
    ) -> Result<Self, PayloadTooLarge> {
        if payload.len() > MAX_MESSAGE_PAYLOAD {
            return Err(PayloadTooLarge { len: payload.len() });
        }
        let mut input = Self::new_zeroed();
        input.connection_id = connection_id;
        input.message_type = message_type;
        input.payload_size = payload.len() as u32;
        input.payload[..payload.len()].copy_from_slice(payload);
        Ok(input)
    }

    /// The payload bytes (`payload_size` clamped to 240, since a host reads this from a guest).
    pub fn payload(&self) -> &[u8] {
        let n = (self.payload_size as usize).min(MAX_MESSAGE_PAYLOAD);
        &self.payload[..n]
    }
}

/// Input block of HvCallSignalEvent: 8 bytes (fact sheet §3.6).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct SignalEventInput {
    /// Offset 0: connection id.
    pub connection_id: u32,
    /// Offset 4: flag number, relative to the port's base flag.
    pub flag_number: u16,
    /// Offset 6: reserved-zero.
    pub reserved: u16,
}

impl SignalEventInput {
    /// The input as the single register (RDX) of the fast form.
    pub const fn to_fast(self) -> u64 {
        self.connection_id as u64 | (self.flag_number as u64) << 32 | (self.reserved as u64) << 48
    }

    /// The input from the fast form's RDX.
    pub const fn from_fast(rdx: u64) -> Self {
        Self {
            connection_id: rdx as u32,
            flag_number: (rdx >> 32) as u16,
            reserved: (rdx >> 48) as u16,
        }
    }
}

// fact sheet §3.5 / §3.6: sizes and offsets.
const _: () = {
    assert!(size_of::<PostMessageInput>() == 256);
    assert!(offset_of!(PostMessageInput, connection_id) == 0);
    assert!(offset_of!(PostMessageInput, reserved) == 4);
    assert!(offset_of!(PostMessageInput, message_type) == 8);
    assert!(offset_of!(PostMessageInput, payload_size) == 12);
    assert!(offset_of!(PostMessageInput, payload) == 16);
    assert!(size_of::<SignalEventInput>() == 8);
    assert!(offset_of!(SignalEventInput, flag_number) == 4);
    assert!(offset_of!(SignalEventInput, reserved) == 6);
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    extern crate std;
    use std::format;

    // fact sheet §3.1 bit positions.
    #[test]
    fn control_bits() {
        assert_eq!(Control::call(CallCode::POST_MESSAGE).into_bits(), 0x5C);
        // §3.6: Linux's fast SignalEvent uses RCX = 0x1005D.
        assert_eq!(
            Control::call(CallCode::SIGNAL_EVENT)
                .with_fast(true)
                .into_bits(),
            0x1_005D
        );
        assert_eq!(
            Control::new().with_variable_header_size(0x3FF).into_bits(),
            0x3FF << 17
        );
        assert_eq!(Control::new().with_nested(true).into_bits(), 1 << 31);
        assert_eq!(
            Control::new().with_rep_count(0xFFF).into_bits(),
            0xFFF << 32
        );
        assert_eq!(
            Control::new().with_rep_start(0xFFF).into_bits(),
            0xFFF << 48
        );
        assert!(Control::from_bits(1 << 27).reserved_27() == 1);
        assert!(!Control::from_bits(1 << 27).reserved_bits_clear());
        assert!(!Control::from_bits(1 << 44).reserved_bits_clear());
        assert!(!Control::from_bits(1 << 60).reserved_bits_clear());
        assert!(Control::from_bits(0x0FFF_0FFF_87FF_FFFF).reserved_bits_clear());
    }

    // fact sheet §3.2 bit positions.
    #[test]
    fn result_bits() {
        let r = HypercallResult::from_bits(0x0000_0123_0000_0013);
        assert_eq!(r.status(), HvStatus::INSUFFICIENT_BUFFERS);
        assert_eq!(r.reps_completed(), 0x123);
        assert_eq!(
            HypercallResult::with(HvStatus::SUCCESS, 5).into_bits(),
            5 << 32
        );
        // Ignored bits don't change the meaning.
        let r = HypercallResult::from_bits(0xFFFF_F000_FFFF_0000);
        assert!(r.status().is_success());
        assert_eq!(r.reps_completed(), 0);
    }

    // fact sheet §3.4 values.
    #[test]
    fn status_values() {
        let table = [
            (HvStatus::SUCCESS, 0x0000),
            (HvStatus::INVALID_HYPERCALL_CODE, 0x0002),
            (HvStatus::INVALID_HYPERCALL_INPUT, 0x0003),
            (HvStatus::INVALID_ALIGNMENT, 0x0004),
            (HvStatus::INVALID_PARAMETER, 0x0005),
            (HvStatus::ACCESS_DENIED, 0x0006),
            (HvStatus::INVALID_PARTITION_STATE, 0x0007),
            (HvStatus::OPERATION_DENIED, 0x0008),
            (HvStatus::INSUFFICIENT_MEMORY, 0x000B),
            (HvStatus::INVALID_VP_INDEX, 0x000E),
            (HvStatus::INVALID_PORT_ID, 0x0011),
            (HvStatus::INVALID_CONNECTION_ID, 0x0012),
            (HvStatus::INSUFFICIENT_BUFFERS, 0x0013),
            (HvStatus::INVALID_VP_STATE, 0x0015),
            (HvStatus::INVALID_SYNIC_STATE, 0x0018),
            (HvStatus::OBJECT_IN_USE, 0x0019),
            (HvStatus::TIME_OUT, 0x0078),
            (HvStatus::VTL_ALREADY_ENABLED, 0x0086),
        ];
        for (s, v) in table {
            assert_eq!(s.0, v);
            assert!(s.name().is_some());
        }
        assert_eq!(HvStatus(0x1234).name(), None);
        assert_eq!(format!("{:?}", HvStatus(0x1234)), "HvStatus(0x1234)");
        assert_eq!(format!("{}", HvStatus::ACCESS_DENIED), "ACCESS_DENIED");
        assert_eq!(HvStatus::SUCCESS.result(), Ok(()));
        assert_eq!(HvStatus::TIME_OUT.result(), Err(HvStatus::TIME_OUT));
    }

    // fact sheet §0, §3.5-§3.7 call codes.
    #[test]
    fn call_codes() {
        assert_eq!(CallCode::POST_MESSAGE.0, 0x005C);
        assert_eq!(CallCode::SIGNAL_EVENT.0, 0x005D);
        assert_eq!(CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE.0, 0x0002);
        assert_eq!(CallCode::FLUSH_VIRTUAL_ADDRESS_LIST.0, 0x0003);
        assert_eq!(CallCode::SEND_SYNTHETIC_CLUSTER_IPI.0, 0x000B);
        assert_eq!(CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX.0, 0x0013);
        assert_eq!(CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX.0, 0x0014);
        assert_eq!(CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX.0, 0x0015);
        assert_eq!(CallCode::GET_PARTITION_ID.0, 0x0046);
        assert_eq!(CallCode::GET_VP_REGISTERS.0, 0x0050);
        assert_eq!(CallCode::SET_VP_REGISTERS.0, 0x0051);
        assert_eq!(CallCode::GET_VP_INDEX_FROM_APIC_ID.0, 0x009A);
        assert_eq!(CallCode::EXT_QUERY_CAPABILITIES.0, 0x8001);
        assert_eq!(CallCode::EXT_MEMORY_HEAT_HINT.0, 0x8003);
        assert_eq!(format!("{:?}", CallCode(0x77)), "CallCode(0x77)");
    }

    // fact sheet §3.5 layout.
    #[test]
    fn post_message_input() {
        let i = PostMessageInput::new(4, MessageType::VMBUS, &[0xAA; 10]).unwrap();
        let b = i.as_bytes();
        assert_eq!(b.len(), 256);
        assert_eq!(&b[0..4], &4u32.to_le_bytes());
        assert_eq!(&b[4..8], &[0; 4]);
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &10u32.to_le_bytes());
        assert_eq!(&b[16..26], &[0xAA; 10]);
        assert_eq!(&b[26..], &[0; 230][..]);
        assert_eq!(i.payload(), &[0xAA; 10]);
        assert!(PostMessageInput::new(1, MessageType::VMBUS, &[0; 240]).is_ok());
        assert_eq!(
            PostMessageInput::new(1, MessageType::VMBUS, &[0; 241]),
            Err(PayloadTooLarge { len: 241 })
        );
        let mut bad = i;
        bad.payload_size = 1000;
        assert_eq!(bad.payload().len(), 240);
    }

    // fact sheet §3.6 layout and Linux's fast form (connection id low 32 bits, flag in 47:32).
    #[test]
    fn signal_event_input() {
        let s = SignalEventInput {
            connection_id: 0x1234,
            flag_number: 3,
            reserved: 0,
        };
        assert_eq!(s.as_bytes(), &[0x34, 0x12, 0, 0, 3, 0, 0, 0]);
        assert_eq!(s.to_fast(), 0x0003_0000_1234);
        assert_eq!(
            u64::from_le_bytes(s.as_bytes().try_into().unwrap()),
            s.to_fast()
        );
    }

    proptest! {
        #[test]
        fn control_round_trip(code in any::<u16>(), fast in any::<bool>(), vh in 0u16..=0x3FF,
                              nested in any::<bool>(), count in 0u16..=0xFFF, start in 0u16..=0xFFF) {
            let c = Control::call(CallCode(code)).with_fast(fast).with_variable_header_size(vh)
                .with_nested(nested).with_rep_count(count).with_rep_start(start);
            let d = Control::from_bits(c.into_bits());
            prop_assert_eq!(d.call_code(), CallCode(code));
            prop_assert_eq!(d.fast(), fast);
            prop_assert_eq!(d.variable_header_size(), vh);
            prop_assert_eq!(d.nested(), nested);
            prop_assert_eq!(d.rep_count(), count);
            prop_assert_eq!(d.rep_start(), start);
            prop_assert!(d.reserved_bits_clear());
            prop_assert_eq!(c.into_bits() & !0x0FFF_0FFF_87FF_FFFF, 0);
        }

        #[test]
        fn control_raw_round_trip(v in any::<u64>()) {
            prop_assert_eq!(Control::from_bits(v).into_bits(), v);
            prop_assert_eq!(HypercallResult::from_bits(v).into_bits(), v);
        }

        #[test]
        fn result_round_trip(status in any::<u16>(), reps in 0u16..=0xFFF) {
            let r = HypercallResult::from_bits(HypercallResult::with(HvStatus(status), reps).into_bits());
            prop_assert_eq!(r.status(), HvStatus(status));
            prop_assert_eq!(r.reps_completed(), reps);
        }

        #[test]
        fn signal_event_round_trip(v in any::<u64>()) {
            prop_assert_eq!(SignalEventInput::from_fast(v).to_fast(), v);
        }

        #[test]
        fn post_message_round_trip(conn in any::<u32>(), ty in any::<u32>(),
                                   payload in proptest::collection::vec(any::<u8>(), 0..=240)) {
            let i = PostMessageInput::new(conn, MessageType(ty), &payload).unwrap();
            let back = PostMessageInput::read_from_bytes(i.as_bytes()).unwrap();
            prop_assert_eq!(back.payload(), &payload[..]);
            prop_assert_eq!(back.connection_id, conn);
            prop_assert_eq!(back.message_type, MessageType(ty));
        }
    }
}
