//! Hyper-V TLFS core for guests: discovery, synthetic MSRs, hypercalls, SynIC,
//! reference TSC and synthetic timers. Shared with the host (`host-test-vmm`),
//! which uses the same definitions to emulate the hypervisor side.
#![no_std]
#![cfg_attr(not(feature = "bare-metal"), forbid(unsafe_code))]
#![cfg_attr(feature = "bare-metal", deny(unsafe_code))]

pub mod abi;
pub mod cpuid;
pub mod hv;
pub mod msr;
pub mod page;
pub mod platform;
pub mod synic;
#[cfg(any(test, feature = "test-platform"))]
pub mod testing;
pub mod tsc;

pub use platform::Platform;
#[cfg(all(feature = "bare-metal", target_arch = "x86_64"))]
pub mod bare_metal;
