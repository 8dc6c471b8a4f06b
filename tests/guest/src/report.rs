//! The report lines the VMM parses: `hvkit-check: <name> <ok|fail> <detail>`.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Prints one check line and counts it.
pub fn check(name: &str, ok: bool, detail: fmt::Arguments<'_>) {
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
