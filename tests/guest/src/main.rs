//! hvkit bare-metal test guest. See README in this folder.
#![no_std]
#![no_main]

mod apic;
mod idt;
mod irq;
#[macro_use]
mod port;

use core::arch::global_asm;
use core::panic::PanicInfo;

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
    println!("hvkit-test-guest: vp {vp} of {vcpus}, ram {} MiB", ram >> 20);
    idt::init();
    let id = apic::enable();
    println!("apic id {id}");
    port::exit(0)
}

pub(crate) fn exception(frame: &idt::ExceptionFrame) -> ! {
    println!(
        "hvkit-test-guest: exception vector {} error {:#x} rip {:#x} rsp {:#x}",
        frame.vector, frame.error_code, frame.rip, frame.rsp
    );
    port::exit(3)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    println!("hvkit-test-guest: panic: {info}");
    port::exit(2)
}
