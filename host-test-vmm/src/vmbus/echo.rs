//! The VMBus test device: an echo VSP (docs/ARCHITECTURE.md, "VMBus test
//! device").
//!
//! - Class GUID [`ECHO_CLASS_ID`]; instance GUID [`echo_instance_id`]`(n)`.
//! - Every DATA_INBAND packet is answered with a DATA_INBAND packet carrying
//!   the same payload bytes (the packet's whole payload area, i.e. including
//!   the sender's padding to 8) and the same transaction id; if the packet
//!   asked for a completion, a COMPLETION packet with the same transaction id
//!   follows, whose 8-byte payload is `{echoed_len u32, status u32 = 0}`.
//!   Both go into the ring together or not at all (when the host->guest ring
//!   is full the device waits for room, so nothing is lost).
//! - Other packet types are ignored.
//! - Control commands, in-band: a payload that starts with [`ECHO_MAGIC`]
//!   followed by `command u32, argument u32` is echoed like any other, then
//!   acted on: [`CMD_RESCIND`] rescinds this device; [`CMD_HOT_ADD`] offers a
//!   new echo device with instance [`echo_instance_id`]`(argument)`;
//!   [`CMD_SUBCHANNEL`] offers a sub-channel of this channel (same GUIDs,
//!   next sub_channel_index) that echoes too.
//!   The library equivalents are `VmbusServer::rescind` and
//!   `VmbusServer::add_device(Box::new(EchoVsp::new(n)))`.
//! - The GUIDs, the command encoding and the completion layout are defined
//!   once, in `vmbus_guest::test_device` (no_std, shared with the guests);
//!   the names here are re-exports.

use super::channel::ChannelHandle;
use super::vsp::{SendError, Vsp};
use vmbus_guest::guid::Guid;
use vmbus_guest::packet::{PacketType, PacketView};
use vmbus_guest::ring::OutgoingPacket;
use vmbus_guest::test_device::{self, Completion};
use zerocopy::IntoBytes;

// The identifiers and the command encoding are defined once, in `vmbus_guest::test_device`
// (the guests use them too); these names stay for the host's code.
pub use test_device::{
    instance_id as echo_instance_id, CLASS_ID as ECHO_CLASS_ID, CMD_HOT_ADD, CMD_RESCIND,
    CMD_SUBCHANNEL, INSTANCE_BASE as ECHO_INSTANCE_BASE, MAGIC as ECHO_MAGIC,
};

/// The echo device.
#[derive(Debug, Clone)]
pub struct EchoVsp {
    index: u16,
    name: String,
    echoed: u64,
}

impl EchoVsp {
    /// Echo device `index` (instance [`echo_instance_id`]`(index)`).
    pub fn new(index: u16) -> Self {
        Self {
            index,
            name: format!("echo{index}"),
            echoed: 0,
        }
    }

    /// Packets echoed since creation.
    pub fn echoed(&self) -> u64 {
        self.echoed
    }
}

impl Vsp for EchoVsp {
    fn name(&self) -> &str {
        &self.name
    }

    fn class_id(&self) -> Guid {
        ECHO_CLASS_ID
    }

    fn instance_id(&self) -> Guid {
        echo_instance_id(self.index)
    }

    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError> {
        if packet.packet_type() != PacketType::DATA_INBAND {
            tracing::debug!(relid = ch.relid(), kind = ?packet.packet_type(), "echo ignores packet");
            return Ok(());
        }
        let payload = packet.payload();
        let tid = packet.transaction_id();
        let parts = [payload];
        let echo = OutgoingPacket::inband(tid, false, &parts);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let comp_body = Completion::new(len);
        let comp_parts = [comp_body.as_bytes()];
        let comp = OutgoingPacket::completion(tid, &comp_parts);
        if packet.descriptor().completion_requested() {
            ch.send_all(&[echo, comp])?;
        } else {
            ch.send(&echo)?;
        }
        self.echoed += 1;
        match test_device::parse_command(payload) {
            Some((CMD_RESCIND, _)) => {
                tracing::info!(relid = ch.relid(), "echo device asked to rescind itself");
                ch.request_rescind();
            }
            Some((CMD_HOT_ADD, arg)) => {
                let index = u16::try_from(arg).unwrap_or(u16::MAX);
                tracing::info!(
                    relid = ch.relid(),
                    index,
                    "echo device asked to hot-add another"
                );
                ch.request_add_device(Box::new(EchoVsp::new(index)));
            }
            Some((CMD_SUBCHANNEL, _)) => {
                tracing::info!(relid = ch.relid(), "echo device asked for a sub-channel");
                let mut sub = EchoVsp::new(self.index);
                sub.name = format!("{}-sub", self.name);
                ch.request_subchannel(Box::new(sub));
            }
            Some((other, _)) => tracing::warn!(command = other, "unknown echo command"),
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_commands() {
        assert_eq!(
            format!("{}", echo_instance_id(0x102)),
            "b9d5e7fc-e817-4d41-98e2-b9ca98b90102"
        );
        assert_eq!(echo_instance_id(0), ECHO_INSTANCE_BASE);
        assert_eq!(
            format!("{ECHO_CLASS_ID}"),
            "6827bc3e-28ac-40dc-8a38-8408214e1ce9"
        );
        let mut p = ECHO_MAGIC.to_vec();
        p.extend_from_slice(&2u32.to_le_bytes());
        p.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(test_device::parse_command(&p), Some((CMD_HOT_ADD, 7)));
        assert_eq!(test_device::parse_command(&p[..12]), None);
        assert_eq!(test_device::parse_command(b"hello world, hello"), None);
    }
}
