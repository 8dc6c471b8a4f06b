//! Hyper-V synthetic networking for hvkit: the NVSP protocol, RNDIS carried over it, the NDIS
//! offload structures, and a `no_std` netvsc guest client.
//!
//! # What it is for
//! A Hyper-V guest reaches its virtual NIC through a VMBus channel of the network class. The
//! channel speaks NVSP: version negotiation, then the guest hands the host two GPADL-backed
//! buffers (a receive buffer the host copies frames into, a send buffer the guest copies frames
//! into). Inside NVSP travels RNDIS: the guest initializes the device, queries its MAC, MTU,
//! link state and offload capabilities, sets offload parameters and the packet filter, and
//! exchanges Ethernet frames as RNDIS PACKET messages with per-packet info (checksum, VLAN,
//! hash). This crate is both ends' shared vocabulary for that, and the guest's driver.
//!
//! # How it fits
//! - **Shared definitions** ([`nvsp`], [`rndis`], [`offload`]): every NVSP message of
//!   protocol versions 1 … 6.1, RNDIS messages, status codes, OIDs and per-packet info, and the
//!   NDIS offload objects. All `repr(C)` zerocopy types with compile-time layout assertions
//!   (fact sheet §9), plus parsers that validate every offset and length, and builders.
//!   `host-test-vmm`'s netvsp parses and builds with the same types.
//! - **The guest client** ([`client`]): a sans-IO state machine. It runs the NVSP and RNDIS
//!   bring-up, reserves send-buffer sections for frames, validates every transfer-page range
//!   and the RNDIS message inside, and queues the completions that hand receive buffer space
//!   back to the host. It allocates nothing: capacities are const generics.
//! - **The glue** ([`device`]): the client over a `vmbus_guest::channel::Channel` and the
//!   guest pages of the buffers, with blocking helpers (`open`, `mac`, `mtu`, `link_up`,
//!   `transmit`, `receive`/`poll`) and, with the `smoltcp` feature, a `smoltcp::phy::Device`.
//!
//! The host is untrusted: every length, offset, section and transfer-page range it sends is
//! validated, and a bad one is an error, never a panic.
#![no_std]
#![forbid(unsafe_code)]

/// `Debug` for an open code type (`struct X(pub u32)` with a `name()`): the
/// name of a known value, else the number in `$fmt`. One definition for
/// NVSP's and RNDIS's code types.
macro_rules! open_enum_debug {
    ($t:ident, $fmt:literal) => {
        impl core::fmt::Debug for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, $fmt, self.0),
                }
            }
        }
    };
}

pub mod client;
pub mod device;
pub mod nvsp;
pub mod offload;
pub mod rndis;

pub use nvsp::{NvspMessage, ProtocolVersion};
pub use offload::{NdisOffload, NdisOffloadParameters};
pub use rndis::{Oid, RndisStatus};
