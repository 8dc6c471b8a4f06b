//! The platform the drivers run on: the `hypercall` crate's bare-metal one.

use hypercall::bare_metal::BareMetal;

/// The CPU we run on.
// SAFETY: `BareMetal::new`'s contract holds for this guest: everything runs at
// CPL0 in 64-bit mode; the only pages handed to the drivers are the statics of
// `pages`, identity mapped (VA == GPA) and reserved for the hypervisor for the
// whole run; and `Platform::hypercall` is only reached through
// `hypercall::hv::Hypervisor`, which checked the HYPERCALL read-back.
pub static PLATFORM: BareMetal = unsafe { BareMetal::new() };
