//! The Rust-for-Linux tier: hvkit's own guest crates (`hypercall`, `vmbus-guest`,
//! `ic-services`) compiled with the kernel's flags and linked into a built-in
//! Rust driver, `hvkit_vmbus` (linux/rust/hvkit_vmbus), in a Linux 6.12 kernel
//! with `CONFIG_RUST=y` and Linux's own Hyper-V code configured out
//! (linux/build-rust-kernel.sh, linux/hvkit-rust.config). Booted on
//! host-test-vmm and checked from the host: the driver's VMBus connection and
//! version, the channels it opened, heartbeats it answered (host IC counters),
//! and a shutdown request through the control API that it acknowledges and
//! carries out by powering the kernel off (ACPI S5).
//!
//! Slow (a boot takes minutes under PVM), so the test is `#[ignore]`d; run it
//! with `cargo test -p hvkit-tests --test rust_for_linux --locked -- --ignored
//! --nocapture`. It fails (never skips) when /dev/kvm or the kernel is
//! missing. No disk: the kernel waits for its root device (`rootwait`) while
//! the driver's thread serves the ICs; nothing here needs user space.

use std::path::{Path, PathBuf};
use std::time::Duration;

use host_test_vmm::vmm::hv_glue;
use host_test_vmm::vmm::linux::DEFAULT_CMDLINE;
use hvkit_tests::linux::{channel_opened, kernel_path, Boot, Tier, BOOT_LIMIT};
use hvkit_tests::require_kvm;

/// Console text of each milestone (Linux 6.12's and the driver's wording).
const HYPERV_DETECTED: &str = "Hypervisor detected: Microsoft Hyper-V";
const DRIVER_STARTED: &str = "hvkit_vmbus: starting";
const DRIVER_HYPERV: &str = "hvkit_vmbus: Hyper-V detected";
const DRIVER_SYNIC: &str = "hvkit_vmbus: SynIC enabled";
const DRIVER_CONNECTED: &str = "hvkit_vmbus: VMBus connected, version ";
const DRIVER_OFFER: &str = "hvkit_vmbus: offer relid ";
const DRIVER_OPENED: &str = "hvkit_vmbus: opened heartbeat";
const DRIVER_SHUTDOWN: &str = "hvkit_vmbus: shutdown request accepted";
const POWER_DOWN: &str = "reboot: Power down";
/// What Linux's C Hyper-V drivers print when they bind (absent: `CONFIG_HYPERV=n`).
const LINUX_HV_DRIVERS: [&str; 3] = ["Vmbus version:", "hv_vmbus:", "hv_utils:"];

/// Failures name the tier and show the host's IC state; a kernel panic or a
/// driver error ends the run early.
const TIER: Tier = Tier {
    name: "Rust-for-Linux",
    fatal: &["Kernel panic", "BUG: ", "Oops: ", "hvkit_vmbus: stopped"],
    ic_on_failure: true,
};

/// The kernel from linux/build-rust-kernel.sh's cache; fails loudly when it is not built.
fn rust_kernel_path() -> PathBuf {
    kernel_path(
        "linux/build-rust-kernel.sh",
        "the Rust-for-Linux kernel is not built for the current sources",
        "cold: about 20 min on 2 cores; after a driver or crate change: an incremental make \
         of a minute or two",
    )
}

/// Boots `kernel` with the default command line; only real device classes
/// (the ICs): no echo device, no disk.
fn start_boot(kernel: &Path, dir: &Path) -> Boot {
    let options = hv_glue::VmbusPartitionOptions {
        test_devices: false,
        ..hv_glue::VmbusPartitionOptions::default()
    };
    Boot::start(kernel, dir, options, DEFAULT_CMDLINE, TIER)
}

fn heartbeats(b: &Boot) -> u64 {
    b.ic()["heartbeat"]["answers"].as_u64().unwrap_or(0)
}

/// The version the driver printed ("5.3"), if it did.
fn driver_version(text: &str) -> Option<String> {
    let rest = &text[text.find(DRIVER_CONNECTED)? + DRIVER_CONNECTED.len()..];
    Some(rest.split_whitespace().next()?.to_owned())
}

#[test]
#[ignore = "slow tier: needs the Rust-for-Linux kernel (linux/build-rust-kernel.sh)"]
fn rust_driver_in_linux_connects_vmbus_serves_heartbeat_and_powers_off_on_request() {
    require_kvm();
    let kernel = rust_kernel_path();
    let dir = std::env::temp_dir().join(format!("hvkit-r4l-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    eprintln!("kernel {}", kernel.display());

    let mut boot = start_boot(&kernel, &dir);
    let b = &boot;

    b.step("Linux detected Hyper-V (CPUID)", BOOT_LIMIT, |_, t| {
        t.contains(HYPERV_DETECTED)
    });
    b.step(
        "the built-in Rust driver started (initcall)",
        BOOT_LIMIT,
        |_, t| t.contains(DRIVER_STARTED),
    );
    b.step(
        "the driver set up the hypercall page and the SynIC",
        BOOT_LIMIT,
        |_, t| t.contains(DRIVER_HYPERV) && t.contains(DRIVER_SYNIC),
    );
    b.step(
        "VMBus connected; host and driver agree on version 5.x",
        BOOT_LIMIT,
        |b, t| {
            let Some(guest) = driver_version(t) else {
                return false;
            };
            b.port().and_then(|p| p.vmbus_stats()).is_some_and(|s| {
                s.connected
                    && s.version.as_deref() == Some(guest.as_str())
                    && guest.starts_with('5')
            })
        },
    );
    b.step(
        "the driver listed every offer the host sent",
        BOOT_LIMIT,
        |b, t| {
            let listed = t.matches(DRIVER_OFFER).count() as u64;
            let sent = b
                .port()
                .and_then(|p| p.vmbus_stats())
                .map_or(0, |s| s.offers_sent);
            t.contains(DRIVER_OPENED) && listed > 0 && listed == sent
        },
    );
    b.step(
        "the driver opened the heartbeat and shutdown channels",
        BOOT_LIMIT,
        |b, _| {
            b.port().is_some_and(|p| {
                channel_opened(&*p, "heartbeat") && channel_opened(&*p, "shutdown")
            })
        },
    );
    b.print_channels();
    // The answers below can only come from the Rust driver: Linux's own Hyper-V drivers are
    // not built (hv_vmbus would print "Vmbus version:", hv_utils its IC names).
    let text = b.console_text();
    if let Some(c) = LINUX_HV_DRIVERS.iter().find(|c| text.contains(**c)) {
        b.fail("no C Hyper-V driver", &format!("the console shows {c:?}"));
    }
    b.step(
        "heartbeats answered by the Rust driver (host IC counter >= 2)",
        BOOT_LIMIT + Duration::from_secs(120),
        |b, _| heartbeats(b) >= 2,
    );

    b.request_shutdown("hvkit Rust-for-Linux: power off");

    let text = boot.finish_powered_off();
    assert!(
        text.contains(DRIVER_SHUTDOWN) && text.contains(POWER_DOWN),
        "step \"kernel powers off\": want {DRIVER_SHUTDOWN:?} and {POWER_DOWN:?} on the console\n{}",
        boot.tail()
    );
    eprintln!(
        "[{:7.1} s wall] step ok: the driver powered the kernel off (ACPI S5)",
        boot.start.elapsed().as_secs_f64()
    );
    eprintln!("--- the driver's console lines ---");
    for l in text.lines().filter(|l| l.contains("hvkit_vmbus")) {
        eprintln!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
