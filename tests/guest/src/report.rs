//! The report lines the VMM parses: `hvkit-check: <name> <ok|fail> <detail>`.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Every check the guest reports, in run order (the names the VMM expects).
/// (Extra checks some tests ask for, like `net-peer`, are printed and counted
/// but not listed: a run passes without them.)
pub const ALL_CHECKS: [&str; 39] = [
    "cpuid-detect",
    "guest-os-id",
    "hypercall-page",
    "reference-tsc",
    "post-message",
    "synic-message",
    "synic-interrupt",
    "eom-redelivery",
    "signal-event",
    "stimer-oneshot",
    "stimer-periodic",
    "vmbus-connect",
    "vmbus-offers",
    "vmbus-gpadl",
    "vmbus-open",
    "vmbus-echo",
    "vmbus-ring-wrap",
    "vmbus-close",
    "vmbus-rescind",
    "storage-init",
    "storage-inquiry",
    "storage-capacity",
    "storage-rw-verify",
    "storage-flush",
    "storage-unmap",
    "storage-readonly",
    "storage-qd32",
    "net-init",
    "net-mac",
    "net-link",
    "net-arp",
    "net-icmp",
    "net-udp",
    "ic-heartbeat",
    "ic-timesync",
    "ic-kvp",
    "ic-vss",
    "ic-fcopy",
    "ic-shutdown",
];

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
/// Bit i set: `ALL_CHECKS[i]` has printed its line.
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// Prints one check line and counts it.
pub fn check(name: &str, ok: bool, detail: fmt::Arguments<'_>) {
    if let Some(i) = ALL_CHECKS.iter().position(|n| *n == name) {
        REPORTED.fetch_or(1u64 << i, Ordering::Relaxed);
    }
    if ok {
        PASSED.fetch_add(1, Ordering::Relaxed);
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
    }
    println!(
        "hvkit-check: {name} {} {detail}",
        if ok { "ok" } else { "fail" }
    );
}

/// Prints a failing line for every check that has not reported (an earlier
/// step it depends on failed), so the VMM always sees all of them.
pub fn fail_unreported() {
    let reported = REPORTED.load(Ordering::Relaxed);
    for (i, name) in ALL_CHECKS.iter().enumerate() {
        if reported & (1u64 << i) == 0 {
            check(
                name,
                false,
                format_args!("not run: a step it depends on failed (see above)"),
            );
        }
    }
}

/// Whether every check of [`ALL_CHECKS`] has printed its line.
pub fn all_reported() -> bool {
    REPORTED.load(Ordering::Relaxed) == (1u64 << ALL_CHECKS.len()) - 1
}

/// (passed, failed) so far.
pub fn totals() -> (u32, u32) {
    (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

/// `check!(name, ok, "fmt", args...)`.
#[macro_export]
macro_rules! check {
    ($name:expr, $ok:expr, $($arg:tt)*) => {
        $crate::report::check($name, $ok, format_args!($($arg)*))
    };
}
