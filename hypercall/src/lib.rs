//! Hyper-V guest core for hvkit: the TLFS definitions a guest and a host must agree on, and the
//! guest drivers built on them.
//!
//! # What it is for
//! A guest operating system that wants to be a Hyper-V guest has to detect the hypervisor
//! (CPUID), identify itself and enable the hypercall page (synthetic MSRs), make hypercalls, take
//! messages and events from the synthetic interrupt controller (SynIC), keep time with the
//! reference TSC page and synthetic timers, and report crashes. This crate does all of that in
//! `no_std` without allocation, so it runs in a bare-metal test guest, a unikernel or a kernel
//! module alike.
//!
//! # How it fits
//! - **Shared definitions** ([`cpuid`], [`msr`], [`abi`], [`synic`], [`tsc`]): every number and
//!   layout once, with compile-time size/offset assertions and tests against the project's fact
//!   sheet. The host, `host-test-vmm`, emulates the hypervisor with these same types (it encodes
//!   its CPUID leaves with [`cpuid::HvCpuidInfo::leaf`], decodes MSR writes with the [`msr`]
//!   bitfields, reads [`abi::PostMessageInput`] and writes [`synic::HvMessage`] slots).
//! - **Guest drivers** ([`hv`]): sans-IO protocol code over the small [`Platform`] trait (CPUID,
//!   RDMSR, WRMSR, RDTSC, call into the hypercall page). Memory the hypervisor writes
//!   concurrently is reached only through [`page::PageRef`] (atomic accesses), so the drivers are
//!   safe code.
//! - **Platforms**: `bare_metal::BareMetal` (feature `bare-metal`, x86_64 CPL0, the only
//!   `unsafe` in the crate) and `testing::ScriptedPlatform` (feature `test-platform`, host-side,
//!   records every access so driver sequences can be asserted exactly).
//!
//! # Example
//! The init sequence, the SynIC and a message, against the scripted platform (this exact code
//! runs as the unit test `tests::crate_docs_example`, because the scripted platform needs the
//! `test-platform` feature, which doc tests do not get):
//! ```ignore
//! use hypercall::hv::{Hypervisor, SintConfig, SynIc};
//! use hypercall::msr::{self, GuestOsId};
//! use hypercall::page::{Page, PageRef};
//! use hypercall::synic::{HvMessage, MessageType};
//! use hypercall::testing::ScriptedPlatform;
//!
//! let platform = ScriptedPlatform::default(); // a typical Hyper-V host
//! let (code, simp, siefp, input) = (Page::new(), Page::new(), Page::new(), Page::new());
//! let hv = Hypervisor::init(
//!     &platform,
//!     GuestOsId::open_source_id(0x7F, 1, 0),
//!     PageRef::new(code.words(), 0x10_0000).unwrap(),
//! )?;
//! assert!(hv.info().has_synic());
//!
//! let synic = SynIc::enable(
//!     &platform,
//!     PageRef::new(simp.words(), 0x10_1000).unwrap(),
//!     PageRef::new(siefp.words(), 0x10_2000).unwrap(),
//!     &[(2, SintConfig::interrupt(0xF3))],
//! )?;
//! hv.post_message(&PageRef::new(input.words(), 0x10_3000).unwrap(), 4, MessageType::VMBUS, b"hi")?;
//!
//! // The host answers into SINT2's slot; the guest consumes it with the EOM protocol.
//! let reply = HvMessage::new(MessageType::VMBUS, b"hello").unwrap();
//! synic.simp().write_bytes(2 * 256, zerocopy::IntoBytes::as_bytes(&reply));
//! assert_eq!(synic.take_message(2)?.unwrap().payload(), b"hello");
//! assert!(!platform.msr_writes().iter().any(|&(m, _)| m == msr::EOM)); // nothing was pending
//! # Ok::<(), hypercall::hv::Error>(())
//! ```
#![no_std]
#![cfg_attr(not(feature = "bare-metal"), forbid(unsafe_code))]
#![cfg_attr(feature = "bare-metal", deny(unsafe_code))]

pub mod abi;
#[cfg(all(feature = "bare-metal", target_arch = "x86_64"))]
pub mod bare_metal;
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

#[cfg(test)]
mod tests {
    /// The crate-level example, verbatim.
    #[test]
    fn crate_docs_example() -> Result<(), crate::hv::Error> {
        use crate as hypercall;
        use hypercall::hv::{Hypervisor, SintConfig, SynIc};
        use hypercall::msr::{self, GuestOsId};
        use hypercall::page::{Page, PageRef};
        use hypercall::synic::{HvMessage, MessageType};
        use hypercall::testing::ScriptedPlatform;

        let platform = ScriptedPlatform::default(); // a typical Hyper-V host
        let (code, simp, siefp, input) = (Page::new(), Page::new(), Page::new(), Page::new());
        let hv = Hypervisor::init(
            &platform,
            GuestOsId::open_source_id(0x7F, 1, 0),
            PageRef::new(code.words(), 0x10_0000).unwrap(),
        )?;
        assert!(hv.info().has_synic());

        let synic = SynIc::enable(
            &platform,
            PageRef::new(simp.words(), 0x10_1000).unwrap(),
            PageRef::new(siefp.words(), 0x10_2000).unwrap(),
            &[(2, SintConfig::interrupt(0xF3))],
        )?;
        hv.post_message(
            &PageRef::new(input.words(), 0x10_3000).unwrap(),
            4,
            MessageType::VMBUS,
            b"hi",
        )?;

        // The host answers into SINT2's slot; the guest consumes it with the EOM protocol.
        let reply = HvMessage::new(MessageType::VMBUS, b"hello").unwrap();
        synic
            .simp()
            .write_bytes(2 * 256, zerocopy::IntoBytes::as_bytes(&reply));
        assert_eq!(synic.take_message(2)?.unwrap().payload(), b"hello");
        assert!(!platform.msr_writes().iter().any(|&(m, _)| m == msr::EOM)); // nothing was pending
        Ok(())
    }
}
