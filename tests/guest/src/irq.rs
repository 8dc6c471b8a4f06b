//! Interrupt bookkeeping shared between the handlers and the checks.
//!
//! Handlers only count, timestamp and snapshot; the checks do the work with
//! interrupts enabled, so nothing here needs a lock.

use core::arch::{asm, x86_64::_rdtsc};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use crate::apic;

/// APIC timer tick that wakes `hlt` so every wait is bounded in time.
pub const TICK_VECTOR: u8 = 0x40;
/// SINT n is programmed with vector `SINT_VECTOR_BASE + n`.
pub const SINT_VECTOR_BASE: u8 = 0x50;
/// Direct-mode synthetic timer vector.
pub const STIMER_VECTOR: u8 = 0x60;
/// Ticks per second of the watchdog tick.
pub const TICK_HZ: u64 = 100;

/// Interrupts taken, by vector.
static COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
/// RDTSC at each direct-mode stimer interrupt (the first `STAMPS.len()`).
static STAMPS: [AtomicU64; 16] = [const { AtomicU64::new(0) }; 16];
/// Message type found in SIM slot n when SINT n's handler ran (last seen).
static SINT_SEEN_TYPE: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
/// Address of the SIM page once the SynIC is on (0 before).
static SIMP_ADDR: AtomicUsize = AtomicUsize::new(0);

/// A `*const &dyn Fn()` the handler of vector [`HOOK_VECTOR`] calls (null: none).
static HOOK: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());
/// The vector whose handler runs [`HOOK`].
static HOOK_VECTOR: AtomicU8 = AtomicU8::new(0);

/// Lets SINT handlers snapshot the message slot they were raised for.
pub fn set_simp(addr: usize) {
    SIMP_ADDR.store(addr, Ordering::Release);
}

/// How many times `vector`'s handler ran.
pub fn count(vector: u8) -> u32 {
    COUNTS[usize::from(vector)].load(Ordering::Acquire)
}

/// The message type SINT `sint`'s handler last saw in its slot.
pub fn sint_seen_type(sint: u8) -> u32 {
    SINT_SEEN_TYPE[usize::from(sint & 15)].load(Ordering::Acquire)
}

/// RDTSC stamps of direct-mode stimer interrupts `0..n` (n = count).
pub fn stimer_stamps(out: &mut [u64]) -> usize {
    let n = (count(STIMER_VECTOR) as usize)
        .min(STAMPS.len())
        .min(out.len());
    for (o, s) in out.iter_mut().zip(STAMPS.iter()).take(n) {
        *o = s.load(Ordering::Acquire);
    }
    n
}

/// Forgets direct-mode stimer stamps (and the count behind them).
pub fn reset_stimer() {
    COUNTS[usize::from(STIMER_VECTOR)].store(0, Ordering::Release);
}

/// Called by the assembly stubs for vectors 32..=255, interrupts off.
pub fn dispatch(vector: u8) {
    let n = COUNTS[usize::from(vector)].fetch_add(1, Ordering::AcqRel);
    if vector == apic::SPURIOUS_VECTOR {
        return; // spurious interrupts are not in service: no EOI
    }
    if vector == STIMER_VECTOR {
        if let Some(slot) = STAMPS.get(n as usize) {
            // SAFETY: RDTSC has no memory effects; the target always has TSC.
            slot.store(unsafe { _rdtsc() }, Ordering::Release);
        }
    } else if (SINT_VECTOR_BASE..SINT_VECTOR_BASE + 16).contains(&vector) {
        let sint = usize::from(vector - SINT_VECTOR_BASE);
        let simp = SIMP_ADDR.load(Ordering::Acquire);
        if simp != 0 {
            // SAFETY: `simp` is the 4 KiB-aligned static SIM page registered by
            // `set_simp`; slot `sint` starts at sint * 256 and its first field
            // is the 4-byte message type, which the host writes concurrently,
            // hence the volatile read.
            let ty = unsafe { core::ptr::read_volatile((simp + sint * 256) as *const u32) };
            SINT_SEEN_TYPE[sint].store(ty, Ordering::Release);
        }
        if vector == HOOK_VECTOR.load(Ordering::Acquire) {
            let hook = HOOK.load(Ordering::Acquire);
            if !hook.is_null() {
                // SAFETY: `with_sint_hook` stored a pointer to a `&dyn Fn()` in its own
                // frame and clears it (interrupts off) before that frame ends; only this
                // CPU runs, so while the pointer is set the frame is alive.
                let f = unsafe { *hook.cast_const().cast::<&dyn Fn()>() };
                f();
            }
        }
    }
    apic::eoi();
}

/// Ticks of the watchdog timer so far.
pub fn ticks() -> u64 {
    u64::from(count(TICK_VECTOR))
}

/// Waits with `sti; hlt` until `done()` holds or `max_ticks` watchdog ticks
/// passed. `done` is evaluated with interrupts off so a wake-up between the
/// test and the `hlt` cannot be lost (STI's one-instruction shadow).
pub fn wait_until(max_ticks: u64, mut done: impl FnMut() -> bool) -> bool {
    let start = ticks();
    loop {
        // SAFETY: masks interrupts on this CPU; no memory touched.
        unsafe { asm!("cli", options(nostack)) };
        if done() {
            enable();
            return true;
        }
        if ticks().wrapping_sub(start) >= max_ticks {
            enable();
            return false;
        }
        // SAFETY: enables interrupts and halts until the next one; the
        // watchdog tick guarantees one arrives.
        unsafe { asm!("sti; hlt", options(nostack)) };
    }
}

/// Runs `body` while SINT `sint`'s handler calls `hook` (after its snapshot,
/// before the EOI, interrupts off): the VMBus checks' interrupt service routine.
pub fn with_sint_hook<R>(sint: u8, hook: &dyn Fn(), body: impl FnOnce() -> R) -> R {
    let slot: &dyn Fn() = hook;
    let ptr = ptr::from_ref(&slot).cast_mut().cast::<()>();
    without_interrupts(|| {
        HOOK_VECTOR.store(SINT_VECTOR_BASE + (sint & 15), Ordering::Release);
        HOOK.store(ptr, Ordering::Release);
    });
    let r = body();
    without_interrupts(|| HOOK.store(ptr::null_mut(), Ordering::Release));
    r
}

/// Runs `f` with interrupts off, then restores the interrupt flag as it was
/// (so it nests inside `wait_until`'s condition, which runs with them off).
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack and masks interrupts; touches no
    // Rust-visible memory.
    unsafe { asm!("pushfq", "pop {}", "cli", out(reg) flags) };
    let r = f();
    if flags & (1 << 9) != 0 {
        enable();
    }
    r
}

/// Enables interrupts on this CPU.
pub fn enable() {
    // SAFETY: the IDT is loaded before anyone calls this.
    unsafe { asm!("sti", options(nostack)) };
}

/// Disables interrupts on this CPU.
pub fn disable() {
    // SAFETY: masks interrupts; no memory touched.
    unsafe { asm!("cli", options(nostack)) };
}
