//! Glue between the emulation and the `hypercall` crate's TLFS definitions:
//! offsets derived from its structures and message encoding through its
//! types. No layout is defined here.

use super::synic::Pending;
use core::mem::offset_of;
use hypercall::synic::{
    HvMessage, HvMessageHeader, MessageFlags, MessageType, TimerMessagePayload,
};
use zerocopy::IntoBytes;

pub use hypercall::synic::{EVENT_FLAGS_SIZE, MESSAGE_PAYLOAD_SIZE, MESSAGE_SIZE};

/// Offset of MessageType in a message slot.
pub const MESSAGE_TYPE_OFFSET: usize = offset_of!(HvMessageHeader, message_type);
/// Offset of MessageFlags in a message slot.
pub const MESSAGE_FLAGS_OFFSET: usize = offset_of!(HvMessageHeader, message_flags);
/// The MessagePending bit of MessageFlags.
pub const MESSAGE_FLAG_PENDING: u8 = MessageFlags::new().with_message_pending(true).into_bits();

/// The 256-byte slot image of a pending message; `now` is the DeliveryTime
/// of a timer message.
pub fn encode_message(p: &Pending, now: u64) -> [u8; MESSAGE_SIZE] {
    let msg = match p {
        Pending::Message {
            message_type,
            payload,
        } => {
            // Length was checked on entry; clamp defensively anyway.
            let n = payload.len().min(MESSAGE_PAYLOAD_SIZE);
            HvMessage::new(MessageType(*message_type), &payload[..n])
        }
        Pending::Timer { index, expiration } => {
            let t = TimerMessagePayload {
                timer_index: u32::from(*index),
                reserved: 0,
                expiration_time: *expiration,
                delivery_time: now,
            };
            HvMessage::new(MessageType::TIMER_EXPIRED, t.as_bytes())
        }
    }
    .unwrap_or_default();
    let mut out = [0u8; MESSAGE_SIZE];
    out.copy_from_slice(msg.as_bytes());
    out
}
