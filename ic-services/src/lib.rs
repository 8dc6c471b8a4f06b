//! Hyper-V Integration Components (ICs) for hvkit: the IC wire formats, the guest services, and
//! encoders/parsers for the host side, `no_std` and without allocation.
//!
//! # What it is for
//! The ICs are the small services that make a guest a manageable Hyper-V guest: heartbeat,
//! shutdown, time sync, key-value pair exchange (KVP), VSS backup and file copy. Each is a VMBus
//! channel (class GUIDs in [`vmbus_guest::guid::class`]) over which the host sends requests and
//! the guest answers each by rewriting the same message (fact sheet §7).
//!
//! # How it fits
//! - **Framing** ([`framing`]): the pipe header and the IC message header inside each
//!   DATA_INBAND packet payload (the packets themselves are `vmbus_guest`'s), message types,
//!   flags and HRESULT status codes; [`framing::parse`] / [`framing::encode`].
//! - **Negotiation** ([`negotiate`]): icmsgtype 0, the framework and message version choice.
//! - **Services** ([`heartbeat`], [`shutdown`], [`timesync`], [`kvp`], [`vss`], [`fcopy`]): the
//!   body layouts (`repr(C)` zerocopy structs of little-endian fields, alignment 1, with
//!   compile-time size/offset checks) and, for the guest, one [`service::IcService`] each whose
//!   decisions go through a trait the guest implements ([`shutdown::ShutdownHandler`],
//!   [`timesync::ClockAdjust`], [`kvp::KvpProvider`], [`vss::VssHandler`], [`fcopy::FileSink`]).
//! - **Guest endpoint** ([`service::Endpoint`]): sans-IO; `handle(request, response)` does the
//!   framing, negotiation, dispatch and response header for one channel. [`driver`] runs it over
//!   an open [`vmbus_guest::channel::Channel`].
//! - **Host side** ([`host`]): builds each request and parses each guest answer with the same
//!   types; `host-test-vmm`'s IC devices use it.
//!
//! # Example: a guest heartbeat endpoint, and the host's side of one exchange
//! ```
//! use ic_services::heartbeat::Heartbeat;
//! use ic_services::host::{self, RequestHeader};
//! use ic_services::{Endpoint, IcVersion, Status};
//!
//! let mut guest = Endpoint::new(Heartbeat::new());
//! let (mut req, mut resp) = ([0u8; 256], [0u8; 256]);
//!
//! // Negotiation: the host offers framework 3.0 and message versions 3.0 and 1.0.
//! let v3 = IcVersion::new(3, 0);
//! let n = host::build_negotiate(&mut req, 1, &[v3], &[v3, IcVersion::new(1, 0)]).unwrap();
//! let m = guest.handle(&req[..n], &mut resp).unwrap();
//! let (_, chosen) = host::parse_negotiate_response(&resp[..m]).unwrap();
//! let chosen = chosen.unwrap();
//! assert_eq!(chosen.message, v3);
//!
//! // A heartbeat: the guest answers seq + 1.
//! let n = host::build_heartbeat(&mut req, &RequestHeader::new(chosen, 2), 41).unwrap();
//! let m = guest.handle(&req[..n], &mut resp).unwrap();
//! assert_eq!(host::parse_heartbeat_response(&resp[..m]).unwrap(), (Status::OK, 42));
//! ```
//!
//! The host is untrusted: every size and count is checked; a message with broken framing is an
//! [`IcError`] (no answer), a well-framed message the guest cannot accept is answered with an
//! error status (E_FAIL, INVALID_ARG, NOT_SUPPORTED). Nothing here panics on input.
#![no_std]
#![forbid(unsafe_code)]

pub mod accept_all;
pub mod driver;
pub mod fcopy;
pub mod framing;
pub mod heartbeat;
pub mod host;
pub mod kvp;
pub mod negotiate;
pub mod service;
pub mod shutdown;
pub mod timesync;
pub mod vss;

pub use framing::{IcError, IcFlags, IcHeader, IcMessageType, IcVersion, Status};
pub use negotiate::{Negotiated, ServiceVersions};
pub use service::{class_info, Endpoint, Handled, IcService};

#[cfg(test)]
mod tests;
