//! Host networking: the network VSP (netvsp) and where its frames go.
//!
//! - [`backend`]: the [`FrameBackend`] port trait a NIC sends frames into and
//!   receives frames from, plus MAC addresses and a collecting sink;
//! - [`tap`]: a Linux TAP device backend;
//! - [`switch`]: an in-VMM learning L2 switch whose ports are NICs of guests
//!   in this process, or ports a test/benchmark drives directly;
//! - [`netns`]: a network namespace a test owns, for TAP tests that never
//!   touch the host's network.

pub mod backend;
pub mod netns;
pub mod switch;
pub mod tap;

pub use backend::{BackendError, CollectSink, FrameBackend, FrameSink, MacAddr};
pub use netns::{NetnsError, TestNetns};
pub use switch::{Switch, SwitchPort, SwitchRegistry, SwitchStats};
pub use tap::{TapBackend, TapError};
