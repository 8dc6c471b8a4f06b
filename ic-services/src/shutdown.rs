//! Shutdown (icmsgtype 3, fact sheet §7.4): the host asks the guest to power off, reboot or
//! hibernate. A [`ShutdownHandler`] decides; the service answers S_OK (accepted) or E_FAIL and
//! keeps the accepted action for the caller to carry out *after* the response is sent, as Linux
//! does ([`Shutdown::take_accepted`]).
#![forbid(unsafe_code)]

use crate::framing::{IcMessageType, Status};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the display message.
pub const DISPLAY_MESSAGE_SIZE: usize = 2048;
/// The full body size (fact sheet §7.4).
pub const BODY_SIZE: usize = 12 + DISPLAY_MESSAGE_SIZE;
/// The shortest body accepted: reason, timeout and flags (the message may be cut off).
pub const MIN_BODY_SIZE: usize = 12;

/// Shutdown body (`shutdown_msg_data`, fact sheet §7.4: message offsets 28..2088).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ShutdownBody {
    /// Offset 0 (message 28): reason code ([`ShutdownBody::REASON_PLANNED`] ...).
    pub reason_code: U32,
    /// Offset 4 (message 32): seconds the guest has.
    pub timeout_seconds: U32,
    /// Offset 8 (message 36): [`ShutdownBody::FORCE`], [`ShutdownBody::RESTART`],
    /// [`ShutdownBody::HIBERNATE`].
    pub flags: U32,
    /// Offset 12 (message 40): a text the guest may show.
    pub display_message: [u8; DISPLAY_MESSAGE_SIZE],
}

impl ShutdownBody {
    /// flags bit 0: force.
    pub const FORCE: u32 = 1;
    /// flags bit 1: restart instead of power off.
    pub const RESTART: u32 = 2;
    /// flags bit 2: hibernate.
    pub const HIBERNATE: u32 = 4;
    /// The planned-shutdown reason flag openvmm uses.
    pub const REASON_PLANNED: u32 = 0x8000_0000;
}

const _: () = {
    // Fact sheet §7.4: reason u32 @28, timeout u32 @32, flags u32 @36, message[2048] @40.
    assert!(size_of::<ShutdownBody>() == 2060);
    assert!(offset_of!(ShutdownBody, timeout_seconds) == 4);
    assert!(offset_of!(ShutdownBody, flags) == 8);
    assert!(offset_of!(ShutdownBody, display_message) == 12);
};

/// What the host asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShutdownKind {
    /// Orderly power off (flags 0 or 1).
    PowerOff,
    /// Orderly reboot (flags 2 or 3).
    Reboot,
    /// Hibernate (flags 4 or 5).
    Hibernate,
}

/// A shutdown request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShutdownAction {
    /// What to do.
    pub kind: ShutdownKind,
    /// Bit 0 of the flags: do not wait for applications.
    pub force: bool,
    /// The host's reason code.
    pub reason_code: u32,
    /// The host's timeout in seconds.
    pub timeout_seconds: u32,
}

impl ShutdownAction {
    /// Decodes the whole flags value as Linux does: only 0..=5 are meaningful.
    pub const fn from_flags(flags: u32, reason_code: u32, timeout_seconds: u32) -> Option<Self> {
        let kind = match flags {
            0 | 1 => ShutdownKind::PowerOff,
            2 | 3 => ShutdownKind::Reboot,
            4 | 5 => ShutdownKind::Hibernate,
            _ => return None,
        };
        Some(Self {
            kind,
            force: flags & ShutdownBody::FORCE != 0,
            reason_code,
            timeout_seconds,
        })
    }

    /// The flags value that encodes this action.
    pub const fn flags(&self) -> u32 {
        let base = match self.kind {
            ShutdownKind::PowerOff => 0,
            ShutdownKind::Reboot => ShutdownBody::RESTART,
            ShutdownKind::Hibernate => ShutdownBody::HIBERNATE,
        };
        base | if self.force { ShutdownBody::FORCE } else { 0 }
    }
}

/// The guest's decision on a shutdown request.
pub trait ShutdownHandler {
    /// Whether the guest will carry out `action` (it should not act before the response is
    /// sent). `message` is the host's display message bytes, as sent.
    fn decide(&mut self, action: &ShutdownAction, message: &[u8]) -> bool;
}

/// The guest shutdown service.
#[derive(Debug)]
pub struct Shutdown<H> {
    handler: H,
    accepted: Option<ShutdownAction>,
}

impl<H: ShutdownHandler> Shutdown<H> {
    /// The service over `handler`.
    pub const fn new(handler: H) -> Self {
        Self {
            handler,
            accepted: None,
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The last accepted action, to carry out once the response is on its way.
    pub fn take_accepted(&mut self) -> Option<ShutdownAction> {
        self.accepted.take()
    }
}

impl<H: ShutdownHandler> IcService for Shutdown<H> {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::SHUTDOWN;
    const VERSIONS: ServiceVersions = ServiceVersions::SHUTDOWN;

    fn handle_body(&mut self, _versions: Negotiated, body: &mut [u8]) -> Status {
        // Only the three numbers are needed; the message is passed as the bytes sent.
        let Ok(([reason, timeout, flags], _)) = <[U32; 3]>::read_from_prefix(body) else {
            return Status::E_FAIL;
        };
        let Some(action) = ShutdownAction::from_flags(flags.get(), reason.get(), timeout.get())
        else {
            return Status::E_FAIL;
        };
        let text = &body[MIN_BODY_SIZE..body.len().min(BODY_SIZE)];
        if self.handler.decide(&action, text) {
            self.accepted = Some(action);
            Status::OK
        } else {
            Status::E_FAIL
        }
    }
}
