//! Throws arbitrary guest behaviour at the host's Hyper-V emulation (the
//! in-process backend of `host-test-vmm::hv`): MSR reads and writes anywhere
//! in the synthetic range, hypercalls with arbitrary registers, arbitrary
//! bytes written to guest RAM where input blocks and SynIC pages live, EOMs,
//! host-side messages and events, and time passing. The property is the
//! security boundary of DESIGN.md: nothing a guest does panics the VMM or
//! touches memory outside guest RAM (the address sanitizer watches that).
#![no_main]

use arbitrary::Arbitrary;
use host_test_vmm::hv::inprocess::InProcess;
use host_test_vmm::hv::HypercallRegs;
use libfuzzer_sys::fuzz_target;

/// Guest RAM of the fuzzed partition: small, so random GPAs often hit its edges.
const RAM: usize = 64 * 1024;

#[derive(Arbitrary, Debug)]
enum Op {
    /// MSR index chosen within (or just beyond) the synthetic range.
    WrMsr {
        vp: u8,
        msr: u16,
        value: u64,
    },
    RdMsr {
        vp: u8,
        msr: u16,
    },
    /// A well-formed enable of a page MSR at a page chosen near RAM, so the
    /// interesting paths (hypercall page fill, SIMP/SIEFP, TSC page) are reached.
    EnablePage {
        vp: u8,
        which: u8,
        pfn: u8,
    },
    Hypercall {
        vp: u8,
        rcx: u64,
        rdx: u64,
        r8: u64,
    },
    /// A hypercall whose input GPA lies in RAM (possibly unaligned or at the end).
    HypercallInRam {
        vp: u8,
        control: u64,
        gpa: u16,
        r8: u64,
    },
    WriteRam {
        gpa: u16,
        bytes: Vec<u8>,
    },
    PostToGuest {
        vp: u8,
        sint: u8,
        message_type: u32,
        payload: Vec<u8>,
    },
    SignalToGuest {
        vp: u8,
        sint: u8,
        flag: u32,
    },
    AdvanceTime {
        ticks: u32,
    },
    Reset,
}

fuzz_target!(|ops: Vec<Op>| {
    let Ok(host) = InProcess::new(2, RAM) else {
        return;
    };
    host.hv().install_test_services();
    for op in ops.into_iter().take(256) {
        match op {
            Op::WrMsr { vp, msr, value } => {
                let _ = host.wrmsr(
                    u32::from(vp % 3),
                    0x4000_0000 + u32::from(msr % 0x240),
                    value,
                );
            }
            Op::RdMsr { vp, msr } => {
                let _ = host.rdmsr(u32::from(vp % 3), 0x4000_0000 + u32::from(msr % 0x240));
            }
            Op::EnablePage { vp, which, pfn } => {
                let msr = match which % 4 {
                    0 => 0x4000_0001, // HYPERCALL
                    1 => 0x4000_0021, // REFERENCE_TSC
                    2 => 0x4000_0082, // SIEFP
                    _ => 0x4000_0083, // SIMP
                };
                let _ = host.wrmsr(0, 0x4000_0000, 0x8100_0006_0C00_0000);
                let _ = host.wrmsr(u32::from(vp % 2), msr, (u64::from(pfn % 20) << 12) | 1);
            }
            Op::Hypercall { vp, rcx, rdx, r8 } => {
                let mut regs = HypercallRegs {
                    rcx,
                    rdx,
                    r8,
                    rax: 0,
                };
                host.hv().hypercall(u32::from(vp % 3), &mut regs);
            }
            Op::HypercallInRam {
                vp,
                control,
                gpa,
                r8,
            } => {
                let mut regs = HypercallRegs {
                    rcx: control,
                    rdx: u64::from(gpa),
                    r8,
                    rax: 0,
                };
                host.hv().hypercall(u32::from(vp % 2), &mut regs);
            }
            Op::WriteRam { gpa, bytes } => {
                let _ = host.write_bytes(u64::from(gpa), &bytes);
            }
            Op::PostToGuest {
                vp,
                sint,
                message_type,
                payload,
            } => {
                let _ = host
                    .hv()
                    .post_message(u32::from(vp % 3), sint, message_type, &payload);
            }
            Op::SignalToGuest { vp, sint, flag } => {
                let _ = host.hv().signal_event(u32::from(vp % 3), sint, flag);
            }
            Op::AdvanceTime { ticks } => host.advance_ref(u64::from(ticks)),
            Op::Reset => host.hv().reset(),
        }
    }
    host.hv().shutdown();
});
