//! Host networking: the network VSP (netvsp) and where its frames go.
//!
//! - [`netvsp`]: the VMBus network device ([`Nic`]): NVSP + RNDIS over the
//!   guest's receive/send buffers, frames to and from a backend;
//! - [`trace`]: NVSP/RNDIS decoding for `--trace`;
//! - [`backend`]: the [`FrameBackend`] port trait a NIC sends frames into and
//!   receives frames from, plus MAC addresses and a collecting sink;
//! - [`tap`]: a Linux TAP device backend;
//! - [`switch`]: an in-VMM learning L2 switch whose ports are NICs of guests
//!   in this process, or ports a test/benchmark drives directly;
//! - [`spec`]: `--net tap=NAME|switch=NAME[,mac=..][,mtu=..]` and building
//!   a partition's NICs;
//! - [`netns`]: a network namespace a test owns, for TAP tests that never
//!   touch the host's network;
//! - [`peer`]: the demo's host side of the test network (10.213.0.1 on a
//!   switch port: ARP, ICMP echo both ways, UDP echo, counters);
//! - [`exercise`]: the demo's link toggle and the evidence the report checks
//!   the guest's network checks against.

pub mod backend;
pub mod exercise;
pub mod netns;
pub mod netvsp;
pub mod peer;
pub mod spec;
pub mod switch;
pub mod tap;
pub mod trace;

pub use backend::{BackendError, CollectSink, FrameBackend, FrameSink, MacAddr};
pub use exercise::{ExerciseConfig, NetExercise, NetReport, NicReport};
pub use netns::{NetnsError, TestNetns};
pub use netvsp::{net_instance_id, NetChannel, NetStats, Nic, NicConfig, NicError, NET_CLASS_ID};
pub use peer::{Peer, PeerConfig, PeerFaults, PeerStats};
pub use spec::{build_nics, NetBackendSpec, NetError, NetSpec};
pub use switch::{Switch, SwitchPort, SwitchRegistry, SwitchStats};
pub use tap::{TapBackend, TapError};

#[cfg(test)]
mod inprocess_tests;
#[cfg(test)]
mod tests;
