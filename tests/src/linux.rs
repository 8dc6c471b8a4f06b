//! What the Linux tiers share (`tests/linux.rs`: the test kernel with Linux's
//! own Hyper-V drivers; `tests/rust_for_linux.rs`: the kernel with hvkit's
//! Rust driver): locating the kernel a `linux/build-*.sh` script built, one
//! boot on host-test-vmm with the control API, and the console/step checks
//! that fail with the console tail and the host's VMBus view.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use host_test_vmm::api::{self, client};
use host_test_vmm::vmm::hv_glue::{self, HvPort, VmbusPartitionOptions};
use host_test_vmm::vmm::linux::LinuxBoot;
use host_test_vmm::vmm::{RunEnd, RunOutcome, SerialOutput, VmConfig};
use serde_json::{json, Value};

/// How long a boot may run in all.
pub const RUN_LIMIT: Duration = Duration::from_secs(1500);
/// How long after the start of the boot a step may take.
pub const BOOT_LIMIT: Duration = Duration::from_secs(1200);

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The kernel from the cache of `script` (relative to the workspace root,
/// asked with `--print-path`); fails loudly when it is not built, with
/// "`not_built` (the script's stderr): run `script` first (`hint`)".
pub fn kernel_path(script: &str, not_built: &str, hint: &str) -> PathBuf {
    let script_path = workspace_root().join(script);
    let out = Command::new(&script_path)
        .arg("--print-path")
        .output()
        .unwrap_or_else(|e| panic!("running {} --print-path: {e}", script_path.display()));
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        out.status.success() && Path::new(&path).is_file(),
        "{not_built} ({}): run {script} first ({hint})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(path)
}

/// Which tier boots, for the failure messages.
#[derive(Debug, Clone, Copy)]
pub struct Tier {
    /// Names the tier in "`name` step ... failed".
    pub name: &'static str,
    /// Console text that ends the run early as a failure.
    pub fatal: &'static [&'static str],
    /// A failure also shows the host's IC state.
    pub ic_on_failure: bool,
}

/// The run thread of a boot.
pub type RunThread = JoinHandle<Result<RunOutcome, api::ApiRunError>>;

/// One boot of a kernel with the control API and the host's view of it.
pub struct Boot {
    pub start: Instant,
    pub console: PathBuf,
    pub socket: PathBuf,
    pub port: Arc<Mutex<Option<Arc<dyn HvPort>>>>,
    pub run: Option<RunThread>,
    tier: Tier,
}

impl Boot {
    /// Boots `kernel` with `cmdline` (256 MiB, one CPU, the console in
    /// `dir`/console.log, the control API on `dir`/api.sock) on a partition
    /// with the VMBus devices of `options`.
    pub fn start(
        kernel: &Path,
        dir: &Path,
        options: VmbusPartitionOptions,
        cmdline: &str,
        tier: Tier,
    ) -> Self {
        let console = dir.join("console.log");
        let socket = dir.join("api.sock");
        let factory = hv_glue::hyperv_with_vmbus(options);
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
            cmdline: cmdline.to_owned(),
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
            tier,
        }
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The last 60 console lines.
    pub fn tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn port(&self) -> Option<Arc<dyn HvPort>> {
        self.port.lock().unwrap().clone()
    }

    /// Fails `step` with `why`, the console tail and the host's VMBus view
    /// (and its IC state if the tier asks).
    pub fn fail(&self, step: &str, why: &str) -> ! {
        let ic = if self.tier.ic_on_failure {
            format!("\n--- IC ---\n{}", self.ic())
        } else {
            String::new()
        };
        panic!(
            "{} step {step:?} failed after {:.0} s: {why}\n--- console tail ---\n{}\n--- VMBus ---\n{}{ic}",
            self.tier.name,
            self.start.elapsed().as_secs_f64(),
            self.tail(),
            self.port()
                .and_then(|p| p.vmbus_stats())
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_default()
        )
    }

    /// Waits until `ok` holds (polled every 250 ms) or `limit` since boot passes;
    /// fails at once on the tier's fatal console text (a kernel panic, ...) or
    /// the end of the run.
    pub fn step(&self, name: &str, limit: Duration, mut ok: impl FnMut(&Self, &str) -> bool) {
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
            if let Some(f) = self.tier.fatal.iter().find(|f| text.contains(**f)) {
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

    /// The host's IC state (`GET ic`), null when the API does not answer.
    pub fn ic(&self) -> Value {
        client::request(&self.socket, "GET", "ic", None, Duration::from_secs(10))
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .unwrap_or(Value::Null)
    }

    /// Steps "shutdown IC negotiated", then asks the guest to shut down
    /// (`PUT vm.shutdown` with `message`) and wants it acknowledged and stopped.
    pub fn request_shutdown(&self, message: &str) {
        let shutdown_ready = |b: &Boot| {
            b.ic()["services"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|s| s["service"] == "shutdown" && s["state"] == "ready")
            })
        };
        self.step("shutdown IC negotiated", BOOT_LIMIT, |b, _| {
            shutdown_ready(b)
        });
        let r = client::request(
            &self.socket,
            "PUT",
            "vm.shutdown",
            Some(&json!({"timeout_secs": 300, "message": message})),
            Duration::from_secs(330),
        )
        .unwrap_or_else(|e| self.fail("shutdown request", &format!("PUT vm.shutdown: {e}")));
        if r.status != 200 || r.body["result"] != "guest-shut-down" {
            self.fail(
                "shutdown request",
                &format!("PUT vm.shutdown -> {} {}", r.status, r.body),
            );
        }
        eprintln!(
            "[{:7.1} s wall] step ok: shutdown request acknowledged, guest stopped",
            self.start.elapsed().as_secs_f64()
        );
    }

    /// Prints the VMBus version, the offers sent and the channels the guest opened.
    pub fn print_channels(&self) {
        if let Some(stats) = self.port().and_then(|p| p.vmbus_stats()) {
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
    }

    /// Waits for the run to end and returns how it ended.
    pub fn finish(&mut self) -> RunOutcome {
        self.run
            .take()
            .expect("run thread")
            .join()
            .expect("the run thread panicked")
            .unwrap_or_else(|e| panic!("the partition failed: {e}"))
    }

    /// [`Boot::finish`], wanting the run to have ended by powering off (step
    /// "kernel powers off"); returns the console text.
    pub fn finish_powered_off(&mut self) -> String {
        let out = self.finish();
        let text = self.console_text();
        assert!(
            matches!(out.end, RunEnd::PoweredOff { .. }),
            "step \"kernel powers off\": the run ended with {:?}\n--- console tail ---\n{}",
            out.end,
            self.tail()
        );
        text
    }
}

/// The printk timestamp of the last complete `[ secs.usecs]` line.
pub fn printk_time(text: &str) -> Option<f64> {
    text.lines().rev().find_map(|l| {
        let rest = l.trim_start().strip_prefix('[')?;
        rest.split(']').next()?.trim().parse().ok()
    })
}

/// The host opened a channel of class `device` at least once.
pub fn channel_opened(p: &dyn HvPort, device: &str) -> bool {
    p.vmbus_stats().is_some_and(|s| {
        s.channels
            .values()
            .any(|c| c.device == device && c.opens > 0)
    })
}
