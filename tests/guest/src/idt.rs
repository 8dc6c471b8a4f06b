//! Interrupt descriptor table: one assembly stub per vector.
//!
//! Vectors 0..=31 (exceptions) report and end the run with exit code 3.
//! Vectors 32..=255 save the caller-saved registers and call
//! [`crate::irq::dispatch`] with the vector number, then `iretq`. The target
//! has no SSE and no red zone, so general registers are all we must keep.

use core::arch::{asm, global_asm};
use core::mem::size_of;

// One stub per vector. Exceptions that push an error code (8, 10-14, 17, 21,
// 29, 30) get no dummy push, so every exception frame has the same shape:
// [vector, error code, rip, cs, rflags, rsp, ss].
global_asm!(
    r#"
    .macro hvkit_exc_noerr vec
    hvkit_isr_\vec:
        push 0
        push \vec
        jmp hvkit_exc_common
    .endm

    .macro hvkit_exc_err vec
    hvkit_isr_\vec:
        push \vec
        jmp hvkit_exc_common
    .endm

    .macro hvkit_irq vec
    hvkit_isr_\vec:
        push \vec
        jmp hvkit_irq_common
    .endm

    .macro hvkit_isr_ref vec
        .quad hvkit_isr_\vec
    .endm

    .section .text.hvkit_isr, "ax"
    .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
        hvkit_exc_noerr \v
    .endr
    .irp v, 8,10,11,12,13,14,17,21,29,30
        hvkit_exc_err \v
    .endr
    .set hvkit_irq_n, 32
    .rept 224
        .altmacro
        hvkit_irq %hvkit_irq_n
        .noaltmacro
        .set hvkit_irq_n, hvkit_irq_n + 1
    .endr

    hvkit_exc_common:
        cld
        mov rdi, rsp
        and rsp, -16
        call {exception}
        ud2

    hvkit_irq_common:
        push rax
        push rcx
        push rdx
        push rsi
        push rdi
        push r8
        push r9
        push r10
        push r11
        push rbp
        mov rdi, [rsp + 80]
        mov rbp, rsp
        and rsp, -16
        cld
        call {irq}
        mov rsp, rbp
        pop rbp
        pop r11
        pop r10
        pop r9
        pop r8
        pop rdi
        pop rsi
        pop rdx
        pop rcx
        pop rax
        add rsp, 8
        iretq

    .section .rodata.hvkit_isr_table, "a"
    .balign 8
    .global hvkit_isr_table
    hvkit_isr_table:
    .set hvkit_vec_n, 0
    .rept 256
        .altmacro
        hvkit_isr_ref %hvkit_vec_n
        .noaltmacro
        .set hvkit_vec_n, hvkit_vec_n + 1
    .endr
    "#,
    exception = sym exception_entry,
    irq = sym irq_entry,
);

/// The CPU-pushed frame with the stub's vector and (real or dummy) error code.
#[repr(C)]
pub struct ExceptionFrame {
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

extern "C" fn exception_entry(frame: &ExceptionFrame) -> ! {
    crate::exception(frame)
}

extern "C" fn irq_entry(vector: u64) {
    // The stubs only pass 32..=255.
    crate::irq::dispatch(vector as u8);
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}
const _: () = assert!(size_of::<Gate>() == 16);

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    attributes: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
}; 256]);

unsafe extern "C" {
    static hvkit_isr_table: [u64; 256];
}

/// Fills the IDT (present 64-bit interrupt gates, DPL 0, current CS) and loads it.
/// Called once, on the BSP, before interrupts are enabled.
pub fn init() {
    let cs: u16;
    // SAFETY: reads the CS selector; no memory access.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    // SAFETY: `hvkit_isr_table` is a read-only table of 256 stub addresses
    // emitted by the global_asm above.
    let table = unsafe { &*core::ptr::addr_of!(hvkit_isr_table) };
    // SAFETY: single-threaded boot code on the BSP (APs are parked before
    // touching the IDT) and interrupts are off, so no one else reads or
    // writes IDT while we fill it.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for (gate, &addr) in idt.0.iter_mut().zip(table.iter()) {
        *gate = Gate {
            offset_low: addr as u16,
            selector: cs,
            ist: 0,
            attributes: 0x8E, // present, DPL 0, 64-bit interrupt gate (IF cleared on entry)
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer {
        limit: (size_of::<Idt>() - 1) as u16,
        base: idt as *const Idt as u64,
    };
    // SAFETY: `ptr` describes the static IDT, which lives for the whole run
    // and whose every gate now points at a valid stub.
    unsafe { asm!("lidt [{0}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}
