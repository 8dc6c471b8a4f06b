//! host-test-vmm: a Linux/KVM VMM that plays the Hyper-V root partition.
//!
//! It lets the guest crates of hvkit (and guests nobody here wrote) be tested
//! against a real implementation of the Hyper-V interface without Windows.
//! The layers:
//! - [`hv`]: the Hyper-V interface (CPUID leaves, synthetic MSRs, hypercall
//!   dispatcher, SynIC, reference TSC, synthetic timers), independent of KVM.
//!   It runs inside the KVM partition and, unchanged, as the in-process
//!   backend that unit tests drive directly.
//! - [`vmm`]: KVM partition management (memory, vCPU threads, lifecycle, ELF
//!   direct boot, serial console, debug-exit port) that routes guest exits
//!   into [`hv`].
//! - [`vmbus`]: the VMBus server and the devices (VSPs) it offers, on top of
//!   [`hv`]'s SynIC and hypercalls.
//! - [`storage`]: the storage VSP (synthetic SCSI controller over VMBus)
//!   with disks from raw image files.
//! - [`net`]: the network VSP (netvsp) and its backends (TAP, in-VMM L2
//!   switch).
//! - [`ic`]: the host integration components (heartbeat, shutdown, time
//!   sync, KVP, VSS, file copy) as VSPs.
//! - [`api`]: the control API of a running partition (HTTP/1.1 + JSON on a
//!   unix socket) and its `ctl` client.
//! - [`bench`]: benchmarks that run on a real partition.
pub mod api;
pub mod bench;
pub mod hv;
pub mod ic;
pub mod net;
pub mod storage;
pub mod vmbus;
pub mod vmm;
