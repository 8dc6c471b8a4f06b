//! The guest side of one IC channel: [`Endpoint`] does the framing, version negotiation and
//! the response header for any [`IcService`] (heartbeat, shutdown, ...), sans-IO.
//!
//! The host sends a request; the guest rewrites the same bytes (fact sheet §7.2): status, icflags
//! = TRANSACTION | RESPONSE, the body fields the service answers, and sends as many bytes back as
//! it received, with the host's transaction id. A message whose framing is broken gets no answer
//! ([`IcError`]); a well-framed message the service cannot accept (short body, unknown type or
//! operation, not negotiated yet, version mismatch) is answered with an error status.
#![forbid(unsafe_code)]

use crate::framing::{self, IcError, IcFlags, IcMessageType, Status};
use crate::negotiate::{self, Negotiated, ServiceVersions};
use vmbus_guest::guid::{self, Guid};
use zerocopy::little_endian::U16;
use zerocopy::IntoBytes;

/// The message type and Linux's version lists of the IC whose channel has class `class` (an
/// offer's interface type, `vmbus_guest::guid::class`), or `None` for other devices.
pub fn class_info(class: &Guid) -> Option<(IcMessageType, ServiceVersions)> {
    Some(match *class {
        c if c == guid::class::HEARTBEAT => (IcMessageType::HEARTBEAT, ServiceVersions::HEARTBEAT),
        c if c == guid::class::SHUTDOWN => (IcMessageType::SHUTDOWN, ServiceVersions::SHUTDOWN),
        c if c == guid::class::TIMESYNC => (IcMessageType::TIMESYNC, ServiceVersions::TIMESYNC),
        c if c == guid::class::KVP => (IcMessageType::KVP_EXCHANGE, ServiceVersions::KVP),
        c if c == guid::class::VSS => (IcMessageType::VSS, ServiceVersions::VSS),
        c if c == guid::class::FCOPY => (IcMessageType::FCOPY, ServiceVersions::FCOPY),
        _ => return None,
    })
}

/// One IC service's message handling, behind an [`Endpoint`].
pub trait IcService {
    /// The icmsgtype of this service's messages.
    const MESSAGE_TYPE: IcMessageType;
    /// The versions it speaks (preference order).
    const VERSIONS: ServiceVersions;

    /// Handles one message body of [`Self::MESSAGE_TYPE`] under the negotiated versions,
    /// rewriting `body` in place; returns the status to answer with.
    fn handle_body(&mut self, versions: Negotiated, body: &mut [u8]) -> Status;
}

/// What [`Endpoint::handle_in_place`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The request's message type.
    pub message_type: IcMessageType,
    /// The status answered.
    pub status: Status,
    /// The response length (the request's length).
    pub len: usize,
}

/// The guest end of an IC channel running service `S`.
#[derive(Debug)]
pub struct Endpoint<S> {
    service: S,
    versions: ServiceVersions,
    negotiated: Option<Negotiated>,
}

impl<S: IcService> Endpoint<S> {
    /// An endpoint offering the service's own versions.
    pub fn new(service: S) -> Self {
        Self::with_versions(service, S::VERSIONS)
    }

    /// An endpoint offering other version lists (e.g. to force an older message layout).
    pub fn with_versions(service: S, versions: ServiceVersions) -> Self {
        Self {
            service,
            versions,
            negotiated: None,
        }
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// The service, mutably.
    pub fn service_mut(&mut self) -> &mut S {
        &mut self.service
    }

    /// The versions of the last successful negotiation.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Handles the host's `request` (a packet payload), writing the response to `response`;
    /// returns the response length. Errors mean the request was not an IC message and must not
    /// be answered.
    pub fn handle(&mut self, request: &[u8], response: &mut [u8]) -> Result<usize, IcError> {
        let Some(out) = response.get_mut(..request.len()) else {
            return Err(IcError::BufferTooSmall {
                needed: request.len(),
            });
        };
        out.copy_from_slice(request);
        Ok(self.handle_in_place(out)?.len)
    }

    /// Handles the host's request in `message`, rewriting it into the response.
    pub fn handle_in_place(&mut self, message: &mut [u8]) -> Result<Handled, IcError> {
        let len = message.len();
        let (mut header, body) = framing::parse_mut(message)?;
        let message_type = header.ic.message_type;
        let mut message_size = header.ic.message_size.get();
        let status = if message_type == IcMessageType::NEGOTIATE {
            match negotiate::respond(body, &self.versions) {
                Ok((chosen, size)) => {
                    message_size = size;
                    self.negotiated = chosen;
                    // Linux leaves the status alone on success (fact sheet §7.3).
                    match chosen {
                        Some(_) => header.ic.status,
                        None => Status::E_FAIL,
                    }
                }
                Err(_) => Status::E_FAIL,
            }
        } else if message_type != S::MESSAGE_TYPE {
            Status::E_FAIL
        } else {
            match self.negotiated {
                Some(versions) => self.service.handle_body(versions, body),
                None => Status::E_FAIL,
            }
        };
        header.ic.status = status;
        header.ic.flags = IcFlags::GUEST_RESPONSE;
        header.ic.message_size = U16::new(message_size);
        message[..framing::BODY_OFFSET].copy_from_slice(header.as_bytes());
        Ok(Handled {
            message_type,
            status,
            len,
        })
    }
}
