//! Host test services for the bare-metal test guest (documented in
//! docs/ARCHITECTURE.md, "Host test services").
//!
//! - Message connection [`ECHO_CONNECTION_ID`]: payload byte 0 = number of
//!   copies N (1..=8), byte 1 = reply SINT (0..=15), at least 2 bytes. The
//!   host answers with N messages of type [`ECHO_MESSAGE_TYPE`] to the
//!   posting VP on that SINT; copy k (1-based) carries the request payload
//!   with byte 0 replaced by k, so the guest can check FIFO order. The
//!   2nd..Nth copies queue behind the first, which exercises MessagePending
//!   and EOM redelivery.
//! - Event connection [`EVENT_CONNECTION_ID`]: HvSignalEvent with flag F
//!   from VP v sets flag F in SINT [`EVENT_TARGET_SINT`]'s slot of VP v's
//!   SIEF page and raises that SINT if the flag was clear.

use super::{HvError, HvStatus, Hypervisor, MessageFromGuest, SINT_COUNT};
use std::sync::{Arc, Weak};

/// Connection id of the echo message service.
pub const ECHO_CONNECTION_ID: u32 = 0x7E57;
/// Message type of the echo replies.
pub const ECHO_MESSAGE_TYPE: u32 = 0x7E57;
/// Most copies one echo request may ask for.
pub const ECHO_MAX_COPIES: u8 = 8;
/// Connection id of the event loopback service.
pub const EVENT_CONNECTION_ID: u32 = 0x7E58;
/// SINT whose event slot the event loopback service sets.
pub const EVENT_TARGET_SINT: u8 = 3;

pub(crate) fn install(hv: &Arc<Hypervisor>) {
    // Weak: the handlers live inside the hypervisor they call back into.
    let weak: Weak<Hypervisor> = Arc::downgrade(hv);
    hv.register_message_port(
        ECHO_CONNECTION_ID,
        Box::new(move |m| match weak.upgrade() {
            Some(hv) => echo(&hv, m),
            None => HvStatus::INVALID_CONNECTION_ID,
        }),
    );
    let weak: Weak<Hypervisor> = Arc::downgrade(hv);
    hv.register_event_port(
        EVENT_CONNECTION_ID,
        Box::new(move |vp, flag| {
            if let Some(hv) = weak.upgrade() {
                if let Err(e) = hv.signal_event(vp, EVENT_TARGET_SINT, u32::from(flag)) {
                    tracing::debug!(vp, flag, error = %e, "event loopback not delivered");
                }
            }
        }),
    );
}

fn echo(hv: &Hypervisor, m: &MessageFromGuest) -> HvStatus {
    let (copies, sint) = match m.payload.as_slice() {
        [n, s, ..] => (*n, *s),
        _ => return HvStatus::INVALID_PARAMETER,
    };
    if copies == 0 || copies > ECHO_MAX_COPIES || usize::from(sint) >= SINT_COUNT {
        return HvStatus::INVALID_PARAMETER;
    }
    let mut reply = m.payload.clone();
    for k in 1..=copies {
        reply[0] = k;
        match hv.post_message(m.vp, sint, ECHO_MESSAGE_TYPE, &reply) {
            Ok(()) => {}
            Err(HvError::QueueFull { .. }) => return HvStatus::INSUFFICIENT_BUFFERS,
            Err(e) => {
                tracing::warn!(vp = m.vp, error = %e, "echo reply failed");
                return HvStatus::INVALID_PARAMETER;
            }
        }
    }
    HvStatus::SUCCESS
}
