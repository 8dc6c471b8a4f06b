//! The small interface the guest drivers run on.
//!
//! A [`Platform`] executes the few privileged operations the drivers need; everything else
//! (encoding, protocol order, validation) stays in the sans-IO drivers of [`crate::hv`]. Shared
//! memory is not part of the trait: the caller hands the drivers [`PageRef`]s, which carry their
//! guest-physical address and are accessed atomically.
//!
//! Implementations: `crate::bare_metal::BareMetal` (feature `bare-metal`, x86_64 at CPL0) and
//! `crate::testing::ScriptedPlatform` (feature `test-platform`, records every access).
#![forbid(unsafe_code)]

use crate::cpuid::CpuidResult;
use crate::page::PageRef;

/// Privileged operations of the CPU the guest runs on.
///
/// Methods take `&self` so several drivers (hypercalls, SynIC, clock, timers) can share one
/// platform; a platform with state uses interior mutability.
pub trait Platform {
    /// Executes CPUID with `leaf` in EAX and `subleaf` in ECX.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;

    /// Reads an MSR.
    fn rdmsr(&self, msr: u32) -> u64;

    /// Writes an MSR.
    fn wrmsr(&self, msr: u32, value: u64);

    /// Reads the time-stamp counter (ordered with respect to earlier loads, like `lfence; rdtsc`).
    fn rdtsc(&self) -> u64;

    /// Calls into the hypercall page `code_page` (the page the driver enabled through the
    /// HYPERCALL MSR) with RCX = `control`, RDX = `rdx`, R8 = `r8`, and returns RAX.
    fn hypercall(&self, code_page: &PageRef<'_>, control: u64, rdx: u64, r8: u64) -> u64;
}

impl<P: Platform + ?Sized> Platform for &P {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        (**self).cpuid(leaf, subleaf)
    }
    fn rdmsr(&self, msr: u32) -> u64 {
        (**self).rdmsr(msr)
    }
    fn wrmsr(&self, msr: u32, value: u64) {
        (**self).wrmsr(msr, value)
    }
    fn rdtsc(&self) -> u64 {
        (**self).rdtsc()
    }
    fn hypercall(&self, code_page: &PageRef<'_>, control: u64, rdx: u64, r8: u64) -> u64 {
        (**self).hypercall(code_page, control, rdx, r8)
    }
}
