//! hvkit bare-metal test guest: boots on host-test-vmm (direct 64-bit ELF
//! boot), exercises the Hyper-V interface through the `hypercall` crate and
//! prints one `hvkit-check: <name> <ok|fail> <detail>` line per check.
//! Exit code (debug port 0xF4): 0 all passed, 1 a check failed, 2 panic,
//! 3 unexpected exception.
#![no_std]
#![no_main]

#[macro_use]
mod port;
#[macro_use]
mod report;
mod apic;
mod checks;
mod ic;
mod idt;
mod irq;
mod net;
mod pages;
mod platform;
mod storage;
mod vmbus;

use core::arch::global_asm;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use hypercall::hv::{crash_capabilities, report_crash, report_crash_message};
use hypercall::msr;
use hypercall::platform::Platform;

use platform::PLATFORM;

/// Set once CPUID says the crash MSRs exist; the panic path uses them then.
static CRASH_MSRS: AtomicBool = AtomicBool::new(false);

// Entry: long mode, CPL0, interrupts off, RSP set by the VMM,
// RDI = vp index, RSI = vCPU count, RDX = RAM size. APs park.
global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
    _start:
        test rdi, rdi
        jnz 2f
        and rsp, -16
        call {main}
    2:
        cli
        hlt
        jmp 2b
    "#,
    main = sym guest_main,
);

extern "C" fn guest_main(vp: u64, vcpus: u64, ram: u64) -> ! {
    port::serial_init();
    println!(
        "hvkit-test-guest: vp {vp} of {vcpus}, {} MiB RAM",
        ram >> 20
    );
    idt::init();
    apic::enable();
    let p = &PLATFORM;

    let info = checks::cpuid_detect(p);
    let freq = info.is_some_and(|i| i.has_frequency_msrs());
    // Watchdog tick: bounds every wait. KVM's APIC bus runs at 1 GHz unless the
    // hypervisor tells us otherwise.
    let apic_hz = if freq {
        p.rdmsr(msr::APIC_FREQUENCY)
    } else {
        0
    };
    let apic_hz = if apic_hz == 0 { 1_000_000_000 } else { apic_hz };
    let tsc_hz = if freq { p.rdmsr(msr::TSC_FREQUENCY) } else { 0 };
    apic::timer_periodic(irq::TICK_VECTOR, (apic_hz / 16 / irq::TICK_HZ) as u32);
    irq::enable();
    println!("hvkit-test-guest: apic_hz={apic_hz} tsc_hz={tsc_hz}");

    if let Some(info) = info {
        CRASH_MSRS.store(info.has_crash_msrs(), Ordering::Release);
        run(p, &info, tsc_hz);
    }
    report::fail_unreported();

    if cfg!(feature = "selftest-panic") {
        panic!("selftest-panic: deliberate panic after the checks");
    }
    if cfg!(feature = "selftest-fault") {
        // SAFETY: raises #UD on purpose; the IDT reports it and ends the run.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }

    apic::timer_stop();
    let (passed, failed) = report::totals();
    println!("hvkit-test-guest: {passed} passed, {failed} failed");
    port::exit(if failed == 0 && report::all_reported() {
        0
    } else {
        1
    })
}

/// Runs the checks after `cpuid-detect`, each as far as its prerequisites work.
fn run<P: Platform>(p: &P, info: &hypercall::cpuid::HvCpuidInfo, tsc_hz: u64) {
    let hv = checks::hypercall_init(p);
    let clock = if info.has_reference_tsc() {
        Some(checks::reference_tsc(p, tsc_hz))
    } else {
        check!(
            "reference-tsc",
            false,
            "reference TSC page not offered (privilege bit 9)"
        );
        None
    };
    // SynIC MSRs need no hypercall page: enable it even if init failed, for
    // the timer checks.
    let synic = checks::synic_enable(p)
        .inspect_err(|e| println!("hvkit-test-guest: SynIC enable failed: {e}"))
        .ok();
    if let (Some(hv), Some(synic)) = (&hv, &synic) {
        checks::echo_round_trip(hv, synic);
        checks::eom_redelivery(hv, synic);
        checks::signal_event(hv, synic);
    }
    if let Some(clock) = &clock {
        if let Some(synic) = &synic {
            checks::stimer_oneshot(p, synic, clock);
        }
        checks::stimer_periodic(p, info, clock);
    }
    if let (Some(hv), Some(synic)) = (&hv, &synic) {
        vmbus::run(hv, synic);
    }
}

pub(crate) fn exception(frame: &idt::ExceptionFrame) -> ! {
    println!(
        "hvkit-test-guest: exception vector {} error {:#x} rip {:#x} cs {:#x} rflags {:#x} rsp {:#x}",
        frame.vector, frame.error_code, frame.rip, frame.cs, frame.rflags, frame.rsp
    );
    if CRASH_MSRS.load(Ordering::Acquire) {
        // P0 vector, P1 guest OS id, P2 RIP, P3 CPU error code, P4 RSP.
        report_crash(
            &PLATFORM,
            [
                frame.vector,
                checks::GUEST_OS_ID.into_bits(),
                frame.rip,
                frame.error_code,
                frame.rsp,
            ],
        );
        println!("hvkit-test-guest: crash reported through the crash MSRs");
    }
    port::exit(3)
}

/// A fixed buffer that `core::fmt` can write into (truncating).
struct MessageBuf {
    buf: [u8; 512],
    len: usize,
}

impl core::fmt::Write for MessageBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    irq::disable();
    if PANICKING.swap(true, Ordering::AcqRel) {
        port::exit(2); // a panic while reporting a panic
    }
    println!("hvkit-test-guest: panic: {info}");
    if CRASH_MSRS.load(Ordering::Acquire) {
        let p = &PLATFORM;
        let mut msg = MessageBuf {
            buf: [0; 512],
            len: 0,
        };
        let _ =
            core::fmt::Write::write_fmt(&mut msg, format_args!("hvkit-test-guest panic: {info}"));
        let sent = crash_capabilities(p).crash_message()
            && report_crash_message(p, &pages::crash(), &msg.buf[..msg.len]).is_ok();
        if !sent {
            // Linux's layout: P0 error code, P1 guest OS id, P2 RIP, P3 RAX, P4 RSP.
            let line = info.location().map_or(0, |l| u64::from(l.line()));
            let rsp: u64;
            // SAFETY: reads RSP; no memory access.
            unsafe {
                core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags))
            };
            report_crash(
                p,
                [
                    0x0BAD_0000 | line,
                    checks::GUEST_OS_ID.into_bits(),
                    0,
                    0,
                    rsp,
                ],
            );
        }
        println!("hvkit-test-guest: crash reported through the crash MSRs (message={sent})");
    }
    port::exit(2)
}
