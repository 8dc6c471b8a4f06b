//! Local xAPIC through its MMIO page (identity mapped by the VMM).

use core::ptr::{read_volatile, write_volatile};

const APIC_BASE: usize = 0xFEE0_0000;
const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_LVT_TIMER: usize = 0x320;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_DIVIDE: usize = 0x3E0;

/// Spurious-interrupt vector; its handler must not EOI.
pub const SPURIOUS_VECTOR: u8 = 0xFF;

fn read(reg: usize) -> u32 {
    // SAFETY: `reg` is one of the xAPIC register offsets above, inside the
    // 4 KiB APIC page the VMM maps at 0xFEE00000; the access is an aligned
    // 32-bit MMIO read as the xAPIC requires.
    unsafe { read_volatile((APIC_BASE + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as in `read`, for an aligned 32-bit MMIO write.
    unsafe { write_volatile((APIC_BASE + reg) as *mut u32, value) }
}

/// Software-enables the APIC (SVR bit 8, spurious vector 0xFF) and accepts
/// every priority (TPR 0). Returns the APIC ID.
pub fn enable() -> u32 {
    write(REG_TPR, 0);
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    read(REG_ID) >> 24
}

/// Signals end of interrupt for the in-service vector.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Starts the APIC timer in periodic mode on `vector`, with `count` ticks of
/// the APIC bus clock divided by 16 between interrupts.
pub fn timer_periodic(vector: u8, count: u32) {
    write(REG_TIMER_DIVIDE, 0x3); // divide by 16
    write(REG_LVT_TIMER, (1 << 17) | u32::from(vector)); // periodic, unmasked
    write(REG_TIMER_INITIAL, count);
}

/// Stops the APIC timer.
pub fn timer_stop() {
    write(REG_LVT_TIMER, 1 << 16); // masked
    write(REG_TIMER_INITIAL, 0);
}
