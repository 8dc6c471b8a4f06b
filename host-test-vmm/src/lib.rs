//! host-test-vmm: a Linux/KVM VMM that plays the Hyper-V root partition.
//!
//! Two layers:
//! - [`hv`]: the Hyper-V interface (CPUID leaves, synthetic MSRs, hypercall
//!   dispatcher, SynIC, reference TSC, synthetic timers), independent of KVM.
//!   It runs inside the KVM partition and, unchanged, as the in-process
//!   backend that unit tests drive directly.
//! - [`vmm`]: KVM partition management (memory, vCPU threads, lifecycle, ELF
//!   direct boot, serial console, debug-exit port) that routes guest exits
//!   into [`hv`].
pub mod bench;
pub mod hv;
pub mod vmm;
pub mod vmbus;
