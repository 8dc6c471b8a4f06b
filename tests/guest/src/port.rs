//! Port I/O: the 16550 console on COM1 and the debug-exit port.

use core::arch::asm;
use core::fmt;

/// COM1 base port (16550, emulated by the VMM).
const COM1: u16 = 0x3F8;
/// Debug-exit port: an OUT here ends the run with the written value as exit code.
const DEBUG_EXIT: u16 = 0xF4;

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to the console and debug-exit ports the VMM defines for
    // this guest; it touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as in `outb`; reading the 16550 line status register has no side effect.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// Initializes COM1: 8N1, FIFOs on, interrupts off (we only poll).
pub fn serial_init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB on
    outb(COM1, 0x01); // divisor low: 115200 baud
    outb(COM1 + 1, 0x00); // divisor high
    outb(COM1 + 3, 0x03); // LCR: 8N1, DLAB off
    outb(COM1 + 2, 0xC7); // FCR: enable and clear FIFOs
    outb(COM1 + 4, 0x03); // MCR: DTR, RTS
}

fn serial_put(byte: u8) {
    // Wait for "transmit holding register empty" (LSR bit 5). The emulated
    // 16550 drains instantly, so this normally passes first time; the bound
    // keeps a broken UART from hanging the guest (each round is an exit).
    for _ in 0..64 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, byte);
}

/// `core::fmt::Write` sink for the serial console; `\n` becomes `\r\n`.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_put(b'\r');
            }
            serial_put(b);
        }
        Ok(())
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::port::Serial, $($arg)*);
    }};
}

/// Prints a line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::port::Serial, $($arg)*);
    }};
}

/// Ends the run with `code` through the debug-exit port. If the VMM does not
/// stop us (wrong port, no VMM), park the CPU forever with interrupts off.
pub fn exit(code: u8) -> ! {
    outb(DEBUG_EXIT, code);
    loop {
        // SAFETY: stops this CPU; no memory is touched.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}
