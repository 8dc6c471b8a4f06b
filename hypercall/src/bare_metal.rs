//! The bare-metal x86_64 [`Platform`] (feature `bare-metal`): CPUID, RDMSR, WRMSR, RDTSC and the
//! call into the hypercall page, as inline assembly.
//!
//! This is the crate's only module with `unsafe` code. The drivers stay safe because everything
//! the hypervisor writes concurrently is reached through [`PageRef`] (atomics), never through
//! plain references.
#![allow(unsafe_code)]

use crate::cpuid::CpuidResult;
use crate::page::{PageRef, PAGE_WORDS};
use crate::platform::Platform;
use core::arch::asm;
use core::sync::atomic::AtomicU64;

/// The current CPU, running at CPL0 under a Hyper-V compatible hypervisor.
#[derive(Debug)]
pub struct BareMetal {
    _private: (),
}

impl BareMetal {
    /// The platform of the CPU this code runs on.
    ///
    /// # Safety
    /// The caller guarantees that:
    /// - the code runs at CPL0 in 64-bit mode (RDMSR/WRMSR and hypercalls fault elsewhere);
    /// - MSR writes made through this platform cannot break memory safety: the drivers of
    ///   [`crate::hv`] write only synthetic MSRs, and the guest-physical addresses they program
    ///   come from [`PageRef`]s, so every `PageRef` handed to them must really describe the memory
    ///   at its GPA, and that memory must stay reserved for the hypervisor's use as long as the MSR
    ///   points at it (the hypervisor writes it by GPA, behind the compiler's back);
    /// - [`Platform::hypercall`] is only given the page that the HYPERCALL MSR enabled (as
    ///   [`crate::hv::Hypervisor`] does after checking the read-back), since it jumps into it.
    pub const unsafe fn new() -> Self {
        Self { _private: () }
    }
}

/// A [`PageRef`] for the page at virtual address `va` and guest-physical address `gpa`, for memory
/// that is not a Rust [`crate::page::Page`] (e.g. a page the guest's own allocator hands out).
///
/// # Safety
/// `va` must be 4 KiB aligned, point to 4 KiB of memory that stays valid and mapped for `'a`, and
/// that memory must be accessed only atomically (through `PageRef`s or atomics) while the handle
/// exists. `gpa` must be its guest-physical address.
pub unsafe fn page_from_raw<'a>(va: *const u8, gpa: u64) -> Option<PageRef<'a>> {
    if va.is_null() || !va.addr().is_multiple_of(4096) {
        return None;
    }
    // SAFETY: the caller guarantees `va` is 4 KiB aligned (checked above), valid for 4096 bytes for
    // 'a and only accessed atomically; `[AtomicU64; 512]` has size 4096 and alignment 8.
    let words = unsafe { &*va.cast::<[AtomicU64; PAGE_WORDS]>() };
    PageRef::new(words, gpa).ok()
}

impl Platform for BareMetal {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let (eax, ebx, ecx, edx): (u32, u64, u32, u32);
        // SAFETY: CPUID has no side effects on memory. RBX is reserved by LLVM, so it is saved in
        // a scratch register and swapped back.
        unsafe {
            asm!(
                "mov {rbx_save}, rbx",
                "cpuid",
                "xchg {rbx_save}, rbx",
                rbx_save = out(reg) ebx,
                inout("eax") leaf => eax,
                inout("ecx") subleaf => ecx,
                out("edx") edx,
                options(nostack, nomem, preserves_flags),
            );
        }
        CpuidResult::new(eax, ebx as u32, ecx, edx)
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: reading an MSR does not touch memory the compiler knows about; `new`'s contract
        // guarantees CPL0. No `nomem`: it stays ordered with the drivers' page accesses.
        unsafe {
            asm!(
                "rdmsr",
                in("ecx") msr,
                out("eax") lo,
                out("edx") hi,
                options(nostack, preserves_flags),
            );
        }
        (hi as u64) << 32 | lo as u64
    }

    fn wrmsr(&self, msr: u32, value: u64) {
        // SAFETY: `new`'s contract: CPL0, and the synthetic MSRs written by the drivers only make
        // the hypervisor use pages reserved for it. Not `nomem`: enabling a page lets the
        // hypervisor write guest memory.
        unsafe {
            asm!(
                "wrmsr",
                in("ecx") msr,
                in("eax") value as u32,
                in("edx") (value >> 32) as u32,
                options(nostack, preserves_flags),
            );
        }
    }

    fn rdtsc(&self) -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: LFENCE; RDTSC only read the time-stamp counter. LFENCE keeps RDTSC after earlier
        // loads (the TSC page fields); no `nomem`, so the compiler does not move those loads either.
        unsafe {
            asm!(
                "lfence",
                "rdtsc",
                out("eax") lo,
                out("edx") hi,
                options(nostack, preserves_flags),
            );
        }
        (hi as u64) << 32 | lo as u64
    }

    fn hypercall(&self, code_page: &PageRef<'_>, control: u64, rdx: u64, r8: u64) -> u64 {
        let rax: u64;
        // SAFETY: `new`'s contract: `code_page` is the enabled hypercall page, which holds the
        // hypervisor's hypercall sequence ending in a near RET (here `endbr64; out 0xF5, eax; ret`,
        // on Hyper-V VMCALL/VMMCALL; ret). The call needs the stack (no `nostack`) and may read
        // input and write output pages (no `nomem`). The TLFS changes only RAX (and RCX for rep
        // calls) and flags; RCX, RDX, R8-R11 are treated as clobbered to be safe.
        unsafe {
            asm!(
                "call {target}",
                target = in(reg) code_page.as_ptr(),
                inout("rcx") control => _,
                inout("rdx") rdx => _,
                inout("r8") r8 => _,
                out("rax") rax,
                out("r9") _,
                out("r10") _,
                out("r11") _,
            );
        }
        rax
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::Page;

    // CPUID and RDTSC also work at CPL3, so the assembly is checked on the host.
    #[test]
    fn cpuid_matches_core_arch() {
        // SAFETY: only cpuid and rdtsc are used here, which are fine at CPL3.
        let p = unsafe { BareMetal::new() };
        for leaf in [0, 1, 7] {
            let ours = p.cpuid(leaf, 0);
            let theirs = core::arch::x86_64::__cpuid_count(leaf, 0);
            assert_eq!(
                (ours.eax, ours.ebx, ours.ecx, ours.edx),
                (theirs.eax, theirs.ebx, theirs.ecx, theirs.edx)
            );
        }
        let a = p.rdtsc();
        let b = p.rdtsc();
        assert!(b >= a);
    }

    #[test]
    fn raw_pages() {
        let page = Page::new();
        let va = core::ptr::from_ref(&page).cast::<u8>();
        // SAFETY: `page` is aligned, lives for the test and is only used atomically.
        let r = unsafe { page_from_raw(va, 0x7000) }.unwrap();
        r.store_u64(8, 5);
        assert_eq!(
            page.words()[1].load(core::sync::atomic::Ordering::Relaxed),
            5
        );
        // SAFETY: rejected before any dereference.
        assert!(unsafe { page_from_raw(va.wrapping_add(8), 0x7000) }.is_none());
        // SAFETY: valid pointer, but the GPA is unaligned: rejected.
        assert!(unsafe { page_from_raw(va, 0x7008) }.is_none());
    }
}
