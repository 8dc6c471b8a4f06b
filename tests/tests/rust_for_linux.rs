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
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_test_vmm::api::{self, client};
use host_test_vmm::vmm::hv_glue::{self, HvPort};
use host_test_vmm::vmm::linux::{LinuxBoot, DEFAULT_CMDLINE};
use host_test_vmm::vmm::{RunEnd, SerialOutput, VmConfig};
use hvkit_tests::require_kvm;
use serde_json::{json, Value};

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
/// Console text that ends the run early as a failure.
const FATAL: [&str; 4] = ["Kernel panic", "BUG: ", "Oops: ", "hvkit_vmbus: stopped"];

const RUN_LIMIT: Duration = Duration::from_secs(1500);
const BOOT_LIMIT: Duration = Duration::from_secs(1200);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The kernel from linux/build-rust-kernel.sh's cache; fails loudly when it is not built.
fn kernel_path() -> PathBuf {
    let script = workspace_root().join("linux/build-rust-kernel.sh");
    let out = Command::new(&script)
        .arg("--print-path")
        .output()
        .unwrap_or_else(|e| panic!("running {} --print-path: {e}", script.display()));
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        out.status.success() && Path::new(&path).is_file(),
        "the Rust-for-Linux kernel is not built for the current sources ({}): run \
         linux/build-rust-kernel.sh first (cold: about 20 min on 2 cores; after a driver or \
         crate change: an incremental make of a minute or two)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(path)
}

/// One boot of the kernel with the control API and the host's view of it.
struct Boot {
    start: Instant,
    console: PathBuf,
    socket: PathBuf,
    port: Arc<Mutex<Option<Arc<dyn HvPort>>>>,
    run: Option<std::thread::JoinHandle<Result<host_test_vmm::vmm::RunOutcome, api::ApiRunError>>>,
}

impl Boot {
    fn start(kernel: &Path, dir: &Path) -> Self {
        let console = dir.join("console.log");
        let socket = dir.join("api.sock");
        let factory = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
            // Only real device classes (the ICs): no echo device, no disk.
            test_devices: false,
            ..hv_glue::VmbusPartitionOptions::default()
        });
        let port: Arc<Mutex<Option<Arc<dyn HvPort>>>> = Arc::default();
        let keep = port.clone();
        let mut cfg = VmConfig::from_file(kernel).expect("read the kernel");
        cfg.hv = Arc::new(move |ctx| {
            let p = factory(ctx)?;
            *keep.lock().unwrap() = Some(p.clone());
            Ok(p)
        });
        cfg.memory = 256 << 20;
        cfg.cpus = 1;
        cfg.serial = SerialOutput::File(console.clone());
        cfg.timeout = Some(RUN_LIMIT);
        cfg.expected_checks.clear();
        cfg.linux = Some(LinuxBoot {
            cmdline: DEFAULT_CMDLINE.to_owned(),
            initrd: None,
        });
        let run_socket = socket.clone();
        let start = Instant::now();
        let run = std::thread::spawn(move || api::run_with_api(cfg, &run_socket));
        Self {
            start,
            console,
            socket,
            port,
            run: Some(run),
        }
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn port(&self) -> Option<Arc<dyn HvPort>> {
        self.port.lock().unwrap().clone()
    }

    fn fail(&self, step: &str, why: &str) -> ! {
        panic!(
            "Rust-for-Linux step {step:?} failed after {:.0} s: {why}\n--- console tail ---\n{}\n--- VMBus ---\n{}\n--- IC ---\n{}",
            self.start.elapsed().as_secs_f64(),
            self.tail(),
            self.port()
                .and_then(|p| p.vmbus_stats())
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_default(),
            self.ic()
        )
    }

    /// Waits until `ok` holds (polled every 250 ms) or `limit` since boot passes;
    /// fails at once on a kernel panic, a driver error or the end of the run.
    fn step(&self, name: &str, limit: Duration, mut ok: impl FnMut(&Self, &str) -> bool) {
        loop {
            let text = self.console_text();
            if ok(self, &text) {
                let printk = printk_time(&text);
                eprintln!(
                    "[{:7.1} s wall | guest {}] step ok: {name}",
                    self.start.elapsed().as_secs_f64(),
                    printk.map_or("?".into(), |t| format!("{t:.1} s"))
                );
                return;
            }
            if let Some(f) = FATAL.iter().find(|f| text.contains(**f)) {
                self.fail(name, &format!("the kernel printed {f:?}"));
            }
            if self.run.as_ref().is_some_and(|r| r.is_finished()) {
                self.fail(name, "the run ended before this step");
            }
            if self.start.elapsed() > limit {
                self.fail(name, "timed out");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn ic(&self) -> Value {
        client::request(&self.socket, "GET", "ic", None, Duration::from_secs(10))
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .unwrap_or(Value::Null)
    }

    fn heartbeats(&self) -> u64 {
        self.ic()["heartbeat"]["answers"].as_u64().unwrap_or(0)
    }
}

/// The printk timestamp of the last complete `[ secs.usecs]` line.
fn printk_time(text: &str) -> Option<f64> {
    text.lines().rev().find_map(|l| {
        let rest = l.trim_start().strip_prefix('[')?;
        rest.split(']').next()?.trim().parse().ok()
    })
}

fn channel_opened(p: &dyn HvPort, device: &str) -> bool {
    p.vmbus_stats().is_some_and(|s| {
        s.channels
            .values()
            .any(|c| c.device == device && c.opens > 0)
    })
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
    let kernel = kernel_path();
    let dir = std::env::temp_dir().join(format!("hvkit-r4l-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    eprintln!("kernel {}", kernel.display());

    let mut boot = Boot::start(&kernel, &dir);
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
    if let Some(stats) = b.port().and_then(|p| p.vmbus_stats()) {
        let opened: Vec<String> = stats
            .channels
            .values()
            .map(|c| format!("{} (opens {})", c.device, c.opens))
            .collect();
        eprintln!(
            "VMBus {}: offers {}, channels: {}",
            stats.version.as_deref().unwrap_or("?"),
            stats.offers_sent,
            opened.join(", ")
        );
    }
    // The answers below can only come from the Rust driver: Linux's own Hyper-V drivers are
    // not built (hv_vmbus would print "Vmbus version:", hv_utils its IC names).
    let text = b.console_text();
    if let Some(c) = LINUX_HV_DRIVERS.iter().find(|c| text.contains(**c)) {
        b.fail("no C Hyper-V driver", &format!("the console shows {c:?}"));
    }
    b.step(
        "heartbeats answered by the Rust driver (host IC counter >= 2)",
        BOOT_LIMIT + Duration::from_secs(120),
        |b, _| b.heartbeats() >= 2,
    );

    let shutdown_ready = |b: &Boot| {
        b.ic()["services"].as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s["service"] == "shutdown" && s["state"] == "ready")
        })
    };
    b.step("shutdown IC negotiated", BOOT_LIMIT, |b, _| {
        shutdown_ready(b)
    });
    let r = client::request(
        &b.socket,
        "PUT",
        "vm.shutdown",
        Some(&json!({"timeout_secs": 300, "message": "hvkit Rust-for-Linux: power off"})),
        Duration::from_secs(330),
    )
    .unwrap_or_else(|e| b.fail("shutdown request", &format!("PUT vm.shutdown: {e}")));
    if r.status != 200 || r.body["result"] != "guest-shut-down" {
        b.fail(
            "shutdown request",
            &format!("PUT vm.shutdown -> {} {}", r.status, r.body),
        );
    }
    eprintln!(
        "[{:7.1} s wall] step ok: shutdown request acknowledged, guest stopped",
        b.start.elapsed().as_secs_f64()
    );

    let out = boot
        .run
        .take()
        .expect("run thread")
        .join()
        .expect("the run thread panicked")
        .unwrap_or_else(|e| panic!("the partition failed: {e}"));
    let text = boot.console_text();
    assert!(
        matches!(out.end, RunEnd::PoweredOff { .. }),
        "step \"kernel powers off\": the run ended with {:?}\n--- console tail ---\n{}",
        out.end,
        boot.tail()
    );
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
