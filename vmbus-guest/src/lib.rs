//! VMBus for hvkit: the wire formats, the ring buffer, and a `no_std` guest client.
//!
//! # What it is for
//! VMBus is how a Hyper-V guest talks to its devices: the host offers channels over SynIC
//! messages, the guest opens each with a pair of ring buffers in guest memory, and both sides
//! exchange packets through the rings, signalling each other with SynIC events. This crate holds
//! everything of that which both sides must agree on, and the guest's side of it, without
//! allocation.
//!
//! # How it fits
//! - **Shared definitions** ([`guid`], [`version`], [`message`], [`packet`]): every channel
//!   message (types 0..=24), version, GUID and packet layout once, as `repr(C)` zerocopy types
//!   with compile-time size/offset assertions and tests against the fact sheet. The host
//!   (`host-test-vmm`'s VMBus server and its trace decoder) parses the guest's messages with
//!   [`message::ChannelMessage::parse`] and builds its own with the same types.
//! - **The ring** ([`ring`]): one implementation for both sides over the small
//!   [`ring::RingMemory`] trait. The guest implements it over its pages
//!   ([`ring::PageRefRing`]); the host over the guest pages a GPADL names.
//! - **The guest client** ([`client`]): a sans-IO state machine. Feed it the VMBus messages that
//!   arrive in SINT2's slot; it returns the messages to post and events (offers, open results,
//!   GPADLs created, rescinds...). [`driver`] binds it to `hypercall`'s [`hypercall::hv::Hypervisor`]
//!   and [`hypercall::hv::SynIc`]: HvPostMessage, the EOM protocol, HvSignalEvent.
//!
//! - **hvkit's test device** ([`test_device`]): the echo device's GUIDs and command encoding, for
//!   the host that implements it and the guests that test against it (not a Hyper-V standard).
//!
//! The other side is untrusted in both directions: every length, offset and index read from a
//! message or a ring is validated, and a bad one is an error, never a panic or an access outside
//! the buffer.
#![no_std]
#![forbid(unsafe_code)]

pub mod channel;
pub mod client;
pub mod driver;
pub mod guid;
pub mod message;
pub mod packet;
pub mod ring;
pub mod test_device;
pub mod version;

pub use guid::Guid;
pub use version::Version;
