//! Hyper-V synthetic SCSI storage for hvkit: the VSTOR protocol, the SCSI commands and sense
//! data carried over it, and a `no_std` storvsc guest client.
//!
//! # What it is for
//! A Hyper-V guest reaches its disks through a VMBus channel of the SCSI controller class: every
//! SCSI command travels as a 64-byte VSTOR packet holding a SCSI request block (SRB) with the
//! CDB, its data as a list of guest pages (GPA direct), and the host answers each packet with a
//! completion carrying SRB status, SAM status and sense data. This crate is both ends' shared
//! vocabulary for that, and the guest's driver.
//!
//! # How it fits
//! - **Shared definitions** ([`vstor`], [`scsi`], [`sense`]): the VSTOR packet and every
//!   operation, the protocol versions 2.0 … 6.2 with their per-version SRB and sense sizes,
//!   channel properties, SRB status and flags; the CDB layouts with a decoder/encoder
//!   ([`scsi::Cdb`]) and the data the commands return; sense data in fixed and descriptor
//!   formats. All `repr(C)` zerocopy types with compile-time layout assertions (fact sheet §8).
//!   `host-test-vmm`'s storvsp and SCSI target parse and build with the same types.
//! - **The guest client** ([`client`]): a sans-IO state machine. It builds the packets to send
//!   (initialization, SCSI requests with GPA-direct page lists) and consumes received packets,
//!   matching completions to requests by transaction id and turning SRB status and sense into
//!   typed errors. It allocates nothing: the request table is a const-generic array.
//! - **The glue** ([`device`]): the client over a `vmbus_guest::channel::Channel` (one per
//!   queue), with blocking helpers and a block-device API.
//!
//! The host is untrusted: every status, length and sense size in a completion is validated, and
//! a bad one is an error, never a panic.
#![no_std]
#![forbid(unsafe_code)]

pub mod client;
pub mod device;
pub mod scsi;
pub mod sense;
pub mod vstor;

pub use scsi::Cdb;
pub use sense::Sense;
pub use vstor::{ProtocolVersion, VmSrb, VstorPacket};
