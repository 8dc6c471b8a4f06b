//! hvkit's VMBus test device, the echo device: its identifiers and its small in-band protocol,
//! shared by the host that implements it (`host-test-vmm`'s `vmbus::echo`) and the guests that
//! test against it (docs/ARCHITECTURE.md, "VMBus test device").
//!
//! **This is hvkit's own test device, not a Hyper-V standard**: the GUIDs were made up for hvkit
//! and no Hyper-V host offers it.
//!
//! - Class GUID [`CLASS_ID`]; echo device `n` has instance GUID [`instance_id`]`(n)`.
//! - Every DATA_INBAND packet is answered with a DATA_INBAND packet with the same transaction id
//!   and the same payload bytes (the whole payload area, including the sender's padding to 8);
//!   if it asked for a completion, a COMPLETION packet with the same transaction id follows,
//!   carrying [`Completion`]. Other packet types are ignored.
//! - A control command is an in-band payload of [`COMMAND_LEN`] bytes: [`MAGIC`], then
//!   `command u32, argument u32` (little-endian); it is echoed like any packet, then acted on
//!   ([`CMD_RESCIND`], [`CMD_HOT_ADD`], [`CMD_SUBCHANNEL`]).
#![forbid(unsafe_code)]

use crate::Guid;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Class GUID of the echo device.
pub const CLASS_ID: Guid = Guid::from_str_const("6827bc3e-28ac-40dc-8a38-8408214e1ce9");

/// Instance GUID of echo device 0; device `n` puts `n` (big-endian) in the last two bytes.
pub const INSTANCE_BASE: Guid = Guid::from_str_const("b9d5e7fc-e817-4d41-98e2-b9ca98b90000");

/// Instance GUID of echo device `n`.
pub const fn instance_id(n: u16) -> Guid {
    let mut b = INSTANCE_BASE.0;
    let be = n.to_be_bytes();
    b[14] = be[0];
    b[15] = be[1];
    Guid(b)
}

/// Which echo device `instance` is, if it is one.
pub fn device_index(instance: &Guid) -> Option<u16> {
    let n = u16::from_be_bytes([instance.0[14], instance.0[15]]);
    (*instance == instance_id(n)).then_some(n)
}

/// First 8 payload bytes of a control command.
pub const MAGIC: [u8; 8] = *b"hvkecho!";

/// Command: rescind this device (RescindChannelOffer; its relid is free after RelIdReleased).
pub const CMD_RESCIND: u32 = 1;
/// Command: hot-add echo device `argument` (a new offer).
pub const CMD_HOT_ADD: u32 = 2;
/// Command: offer a sub-channel of this channel (same GUIDs, next sub_channel_index); it echoes
/// too.
pub const CMD_SUBCHANNEL: u32 = 3;

/// Bytes of an encoded control command.
pub const COMMAND_LEN: usize = 16;

/// The payload of control command `command` with `argument`.
pub fn encode_command(command: u32, argument: u32) -> [u8; COMMAND_LEN] {
    let mut b = [0u8; COMMAND_LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&command.to_le_bytes());
    b[12..].copy_from_slice(&argument.to_le_bytes());
    b
}

/// The control command in `payload` (`(command, argument)`), if it is one. Bytes after the
/// first [`COMMAND_LEN`] (e.g. the padding to 8) are ignored.
pub fn parse_command(payload: &[u8]) -> Option<(u32, u32)> {
    let rest = payload.strip_prefix(&MAGIC[..])?;
    let word = |i: usize| Some(u32::from_le_bytes(rest.get(i..i + 4)?.try_into().ok()?));
    Some((word(0)?, word(4)?))
}

/// The payload of the echo device's COMPLETION packet.
#[repr(C)]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Completion {
    /// Bytes echoed: the request's whole payload area (padded to 8).
    pub echoed_len: u32,
    /// Always 0.
    pub status: u32,
}

// docs/ARCHITECTURE.md, "VMBus test device": `{echoed_len u32, status u32 = 0}`.
const _: () = assert!(core::mem::size_of::<Completion>() == 8);
const _: () = assert!(core::mem::offset_of!(Completion, status) == 4);

impl Completion {
    /// The completion for `echoed_len` echoed bytes.
    pub const fn new(echoed_len: u32) -> Self {
        Self {
            echoed_len,
            status: 0,
        }
    }

    /// Reads a completion payload (`None` if shorter than 8 bytes; longer is accepted).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        Self::read_from_prefix(payload).ok().map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        let g = instance_id(0x102);
        assert_eq!(g.0[14..], [0x01, 0x02]);
        assert_eq!(instance_id(0), INSTANCE_BASE);
        assert_eq!(device_index(&g), Some(0x102));
        assert_eq!(device_index(&CLASS_ID), None);
        assert_eq!(
            CLASS_ID,
            Guid::from_str_const("6827bc3e-28ac-40dc-8a38-8408214e1ce9")
        );
    }

    #[test]
    fn commands() {
        let c = encode_command(CMD_HOT_ADD, 7);
        assert_eq!(&c[..8], b"hvkecho!");
        assert_eq!(parse_command(&c), Some((CMD_HOT_ADD, 7)));
        let mut padded = [0u8; 24];
        padded[..16].copy_from_slice(&c);
        assert_eq!(parse_command(&padded), Some((2, 7)));
        assert_eq!(parse_command(&c[..12]), None);
        assert_eq!(parse_command(b"hello world, hello"), None);
    }

    #[test]
    fn completion() {
        let c = Completion::new(24);
        assert_eq!(c.as_bytes(), [24, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Completion::parse(&[24, 0, 0, 0, 1, 0, 0, 0, 9]),
            Some(Completion {
                echoed_len: 24,
                status: 1
            })
        );
        assert_eq!(Completion::parse(&[0; 7]), None);
    }
}
