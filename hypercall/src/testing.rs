//! A scripted [`Platform`] for unit tests (feature `test-platform`; needs `std`, so host-side
//! only).
//!
//! It records every CPUID, MSR, TSC and hypercall access in order, and answers from a small model:
//! - CPUID from an [`HvCpuidInfo`] (hypervisor bit set) plus per-leaf overrides;
//! - MSRs from a map, with the Hyper-V rules a driver sequence depends on: HYPERCALL enable reads
//!   back 0 while GUEST_OS_ID is 0 and writing GUEST_OS_ID = 0 clears it, SINTs reset to masked,
//!   EOM reads 0;
//! - the TSC from a counter that advances by a fixed step on each read;
//! - hypercalls from a handler, else a queue of scripted results, else SUCCESS with all reps
//!   completed.
#![forbid(unsafe_code)]

extern crate std;

use crate::abi::{Control, HvStatus, HypercallResult};
use crate::cpuid::{
    CpuidResult, FeatureFlags, HvCpuidInfo, HvVersion, PartitionPrivileges, Recommendations,
    HYPERVISOR_PRESENT_ECX_BIT, INTERFACE_HV1, LEAF_NESTED_VIRTUALIZATION_FEATURES,
    LEAF_STANDARD_FEATURES, VENDOR_MICROSOFT_HV,
};
use crate::msr::{self, HypercallMsr, SINT_RESET_VALUE};
use crate::page::PageRef;
use crate::platform::Platform;
use core::cell::RefCell;
use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::vec::Vec;

/// One recorded platform access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// CPUID(leaf, subleaf).
    Cpuid {
        /// EAX in.
        leaf: u32,
        /// ECX in.
        subleaf: u32,
    },
    /// RDMSR and the value it returned.
    Rdmsr {
        /// MSR number.
        msr: u32,
        /// Value returned.
        value: u64,
    },
    /// WRMSR.
    Wrmsr {
        /// MSR number.
        msr: u32,
        /// Value written.
        value: u64,
    },
    /// RDTSC and the value it returned.
    Rdtsc(u64),
    /// A call into the hypercall page.
    Hypercall(HypercallCall),
}

/// The arguments and result of one hypercall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypercallCall {
    /// GPA of the page that was called into.
    pub page_gpa: u64,
    /// RCX.
    pub control: Control,
    /// RDX.
    pub rdx: u64,
    /// R8.
    pub r8: u64,
    /// RAX returned (for a handler: filled in after it ran).
    pub result: HypercallResult,
}

type Handler = Box<dyn FnMut(&HypercallCall) -> HypercallResult>;

struct State {
    info: Option<HvCpuidInfo>,
    cpuid_overrides: BTreeMap<u32, CpuidResult>,
    msrs: BTreeMap<u32, u64>,
    read_only: Vec<u32>,
    tsc: u64,
    tsc_step: u64,
    results: VecDeque<HypercallResult>,
    handler: Option<Handler>,
    log: Vec<Access>,
}

/// A recording, scripted [`Platform`]. See the module docs for the model.
pub struct ScriptedPlatform {
    state: RefCell<State>,
}

/// A typical Hyper-V profile (fact sheet §1.4, "recommended"): highest leaf 0x4000000A,
/// "Microsoft Hv" / "Hv#1", privileges 0xA7E + PostMessages/SignalEvents, features direct timers,
/// frequency and crash MSRs and SINT polling, recommendation "deprecate AutoEOI".
pub fn default_info() -> HvCpuidInfo {
    HvCpuidInfo {
        max_leaf: LEAF_NESTED_VIRTUALIZATION_FEATURES,
        vendor: VENDOR_MICROSOFT_HV,
        interface: INTERFACE_HV1,
        version: HvVersion {
            build: 0x3839,
            major: 10,
            ..Default::default()
        },
        privileges: PartitionPrivileges::from_regs(0xA7E, 0x30),
        features: FeatureFlags::from_bits(0x80500).with_sint_polling_mode(true),
        recommendations: Recommendations::new().with_deprecate_auto_eoi(true),
        ..Default::default()
    }
}

impl Default for ScriptedPlatform {
    fn default() -> Self {
        Self::hyperv(default_info())
    }
}

impl ScriptedPlatform {
    /// A CPU without a hypervisor (`CPUID.1:ECX[31]` clear).
    pub fn bare() -> Self {
        Self {
            state: RefCell::new(State {
                info: None,
                cpuid_overrides: BTreeMap::new(),
                msrs: BTreeMap::new(),
                read_only: Vec::new(),
                tsc: 0,
                tsc_step: 0,
                results: VecDeque::new(),
                handler: None,
                log: Vec::new(),
            }),
        }
    }

    /// A Hyper-V host described by `info`.
    pub fn hyperv(info: HvCpuidInfo) -> Self {
        let p = Self::bare();
        p.state.borrow_mut().info = Some(info);
        p
    }

    /// Makes CPUID `leaf` (any subleaf) return `result`.
    pub fn set_cpuid(&self, leaf: u32, result: CpuidResult) {
        self.state.borrow_mut().cpuid_overrides.insert(leaf, result);
    }

    /// Sets an MSR's value without recording an access (e.g. VP_INDEX, TIME_REF_COUNT, CRASH_CTL
    /// capabilities).
    pub fn set_msr(&self, msr: u32, value: u64) {
        self.state.borrow_mut().msrs.insert(msr, value);
    }

    /// Makes writes to `msr` have no effect (they are still recorded), e.g. to model a host that
    /// refuses to enable the hypercall page.
    pub fn set_read_only(&self, msr: u32) {
        self.state.borrow_mut().read_only.push(msr);
    }

    /// An MSR's current model value.
    pub fn msr(&self, msr: u32) -> u64 {
        model_read(&self.state.borrow().msrs, msr)
    }

    /// The TSC reads `start`, then advances by `step` after each read.
    pub fn set_tsc(&self, start: u64, step: u64) {
        let mut s = self.state.borrow_mut();
        s.tsc = start;
        s.tsc_step = step;
    }

    /// Queues the result of a future hypercall (used when no handler is set).
    pub fn push_hypercall_result(&self, result: HypercallResult) {
        self.state.borrow_mut().results.push_back(result);
    }

    /// Answers every hypercall with `handler` (it sees the call with `result` zero).
    pub fn on_hypercall(&self, handler: impl FnMut(&HypercallCall) -> HypercallResult + 'static) {
        self.state.borrow_mut().handler = Some(Box::new(handler));
    }

    /// Every access so far, in order.
    pub fn log(&self) -> Vec<Access> {
        self.state.borrow().log.clone()
    }

    /// Every access so far, clearing the log.
    pub fn take_log(&self) -> Vec<Access> {
        core::mem::take(&mut self.state.borrow_mut().log)
    }

    /// The MSR writes so far, in order.
    pub fn msr_writes(&self) -> Vec<(u32, u64)> {
        self.state
            .borrow()
            .log
            .iter()
            .filter_map(|a| match *a {
                Access::Wrmsr { msr, value } => Some((msr, value)),
                _ => None,
            })
            .collect()
    }

    /// The hypercalls so far, in order.
    pub fn hypercalls(&self) -> Vec<HypercallCall> {
        self.state
            .borrow()
            .log
            .iter()
            .filter_map(|a| match *a {
                Access::Hypercall(c) => Some(c),
                _ => None,
            })
            .collect()
    }
}

fn model_read(msrs: &BTreeMap<u32, u64>, m: u32) -> u64 {
    match m {
        msr::EOM => 0,
        _ => msrs.get(&m).copied().unwrap_or_else(|| {
            if msr::sint_index(m).is_some() {
                SINT_RESET_VALUE
            } else {
                0
            }
        }),
    }
}

impl Platform for ScriptedPlatform {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        let mut s = self.state.borrow_mut();
        s.log.push(Access::Cpuid { leaf, subleaf });
        if let Some(r) = s.cpuid_overrides.get(&leaf) {
            return *r;
        }
        match (leaf, s.info) {
            (LEAF_STANDARD_FEATURES, info) => CpuidResult::new(
                0,
                0,
                if info.is_some() {
                    1 << HYPERVISOR_PRESENT_ECX_BIT
                } else {
                    0
                },
                0,
            ),
            (_, Some(info)) => info.leaf(leaf).unwrap_or_default(),
            (_, None) => CpuidResult::default(),
        }
    }

    fn rdmsr(&self, m: u32) -> u64 {
        let mut s = self.state.borrow_mut();
        let value = model_read(&s.msrs, m);
        s.log.push(Access::Rdmsr { msr: m, value });
        value
    }

    fn wrmsr(&self, m: u32, value: u64) {
        let mut s = self.state.borrow_mut();
        s.log.push(Access::Wrmsr { msr: m, value });
        let stored = match m {
            // fact sheet §2.1: enable reads back 0 while GUEST_OS_ID is 0.
            msr::HYPERCALL if model_read(&s.msrs, msr::GUEST_OS_ID) == 0 => {
                HypercallMsr::from_bits(value)
                    .with_enable(false)
                    .into_bits()
            }
            msr::EOM => return,
            _ if s.read_only.contains(&m) => return,
            _ => value,
        };
        s.msrs.insert(m, stored);
        if m == msr::GUEST_OS_ID && value == 0 {
            // fact sheet §2.1: writing 0 disables the hypercall page.
            let h = HypercallMsr::from_bits(model_read(&s.msrs, msr::HYPERCALL));
            s.msrs
                .insert(msr::HYPERCALL, h.with_enable(false).into_bits());
        }
    }

    fn rdtsc(&self) -> u64 {
        let mut s = self.state.borrow_mut();
        let v = s.tsc;
        s.tsc = v.wrapping_add(s.tsc_step);
        s.log.push(Access::Rdtsc(v));
        v
    }

    fn hypercall(&self, code_page: &PageRef<'_>, control: u64, rdx: u64, r8: u64) -> u64 {
        let mut call = HypercallCall {
            page_gpa: code_page.gpa(),
            control: Control::from_bits(control),
            rdx,
            r8,
            result: HypercallResult::new(),
        };
        // Take the handler out so it may call back into the platform (e.g. to write pages).
        let handler = self.state.borrow_mut().handler.take();
        let result = if let Some(mut h) = handler {
            let r = h(&call);
            self.state.borrow_mut().handler = Some(h);
            r
        } else if let Some(r) = self.state.borrow_mut().results.pop_front() {
            r
        } else {
            HypercallResult::with(HvStatus::SUCCESS, call.control.rep_count())
        };
        call.result = result;
        self.state.borrow_mut().log.push(Access::Hypercall(call));
        result.into_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::Page;
    use std::vec;

    // fact sheet §2.1: the model's HYPERCALL / GUEST_OS_ID / SINT / EOM rules.
    #[test]
    fn msr_model() {
        let p = ScriptedPlatform::default();
        p.wrmsr(msr::HYPERCALL, 0x5001);
        assert_eq!(p.rdmsr(msr::HYPERCALL), 0x5000, "enable needs GUEST_OS_ID");
        p.wrmsr(msr::GUEST_OS_ID, 1);
        p.wrmsr(msr::HYPERCALL, 0x5001);
        assert_eq!(p.rdmsr(msr::HYPERCALL), 0x5001);
        p.wrmsr(msr::GUEST_OS_ID, 0);
        assert_eq!(p.rdmsr(msr::HYPERCALL), 0x5000, "GUEST_OS_ID = 0 disables");
        assert_eq!(p.rdmsr(msr::sint(7)), SINT_RESET_VALUE);
        p.wrmsr(msr::EOM, 0);
        assert_eq!(p.rdmsr(msr::EOM), 0);
        p.set_read_only(msr::VP_INDEX);
        p.set_msr(msr::VP_INDEX, 3);
        p.wrmsr(msr::VP_INDEX, 9);
        assert_eq!(p.rdmsr(msr::VP_INDEX), 3);
        assert_eq!(p.msr_writes().len(), 6);
    }

    #[test]
    fn cpuid_tsc_and_hypercalls() {
        let p = ScriptedPlatform::bare();
        assert_eq!(p.cpuid(1, 0).ecx & (1 << 31), 0);
        p.set_cpuid(0x4000_0000, CpuidResult::new(1, 2, 3, 4));
        assert_eq!(p.cpuid(0x4000_0000, 5), CpuidResult::new(1, 2, 3, 4));
        let p = ScriptedPlatform::default();
        assert_ne!(p.cpuid(1, 0).ecx & (1 << 31), 0);
        assert_eq!(p.cpuid(0x4000_0001, 0).eax, INTERFACE_HV1);
        p.set_tsc(10, 5);
        assert_eq!((p.rdtsc(), p.rdtsc()), (10, 15));
        let page = Page::new();
        let r = PageRef::new(page.words(), 0x9000).unwrap();
        let rep = Control::new().with_rep_count(7).into_bits();
        assert_eq!(
            HypercallResult::from_bits(p.hypercall(&r, rep, 1, 2)).reps_completed(),
            7
        );
        p.push_hypercall_result(HypercallResult::with(HvStatus::TIME_OUT, 0));
        assert_eq!(p.hypercall(&r, 0, 0, 0), HvStatus::TIME_OUT.0 as u64);
        let calls = p.hypercalls();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].page_gpa, calls[0].rdx, calls[0].r8),
            (0x9000, 1, 2)
        );
        assert_eq!(
            p.take_log()[..3],
            vec![
                Access::Cpuid {
                    leaf: 1,
                    subleaf: 0
                },
                Access::Cpuid {
                    leaf: 0x4000_0001,
                    subleaf: 0
                },
                Access::Rdtsc(10)
            ][..]
        );
        assert!(p.log().is_empty());
    }
}
