//! The Linux interop tier: a real Linux kernel (linux/build-kernel.sh, 6.12
//! with hv_vmbus, hv_storvsc, hv_utils built in) booted on host-test-vmm,
//! checked step by step from the host (VMBus, storage and IC counters) and
//! from the serial console.
//!
//! Slow (each boot takes minutes: PVM emulates guest CPL0 code at about
//! 1 MIPS), so every test is `#[ignore]`d; run them with
//! `cargo test -p hvkit-tests --test linux --locked -- --ignored --nocapture`.
//! They fail (never skip) when /dev/kvm or the kernel is missing.
//!
//! The root disk is an ext4 image made here with `mkfs.ext4 -d`. Its
//! `/sbin/init` is a 228-byte static i386 ELF that spins at CPL3 (`pause`
//! in a loop) and never makes a system call: under PVM neither a 64-bit
//! `syscall` nor a 32-bit `int 0x80` reaches the guest kernel (measured: the
//! first `int 0x80` of a 32-bit init raised #UD, "traps: init[1] trap invalid
//! opcode", and the kernel panicked on init's death). There is no
//! `/sbin/poweroff`: when the shutdown IC asks, hv_utils' `orderly_poweroff`
//! cannot run it and falls back to `kernel_power_off()`, which reaches the
//! VMM through the ACPI sleep control register. The root is not unmounted
//! first, so the journal may need recovery; `e2fsck -n` must still find the
//! file system consistent.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_test_vmm::api::{self, client};
use host_test_vmm::storage::{ControllerConfig, DiskSpec, StorageController};
use host_test_vmm::vmm::hv_glue::{self, HvPort};
use host_test_vmm::vmm::linux::{LinuxBoot, DEFAULT_CMDLINE};
use host_test_vmm::vmm::{RunEnd, SerialOutput, VmConfig};
use hvkit_tests::require_kvm;
use serde_json::{json, Value};

/// i386, from `_start: 1: pause; jmp 1b` (`as --32`; `ld -m elf_i386 -N -s
/// -e _start -Ttext=0x08048054`: one PT_LOAD whose file offset and address
/// agree modulo the page size, as binfmt_elf needs).
const INIT_ELF: [u8; 228] = [
    0x7f, 0x45, 0x4c, 0x46, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x54, 0x80, 0x04, 0x08, 0x34, 0x00, 0x00, 0x00,
    0x6c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x34, 0x00, 0x20, 0x00, 0x01, 0x00, 0x28, 0x00,
    0x03, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x54, 0x00, 0x00, 0x00, 0x54, 0x80, 0x04, 0x08,
    0x54, 0x80, 0x04, 0x08, 0x04, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0xf3, 0x90, 0xeb, 0xfc, 0x00, 0x2e, 0x73, 0x68, 0x73, 0x74, 0x72, 0x74,
    0x61, 0x62, 0x00, 0x2e, 0x74, 0x65, 0x78, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00,
    0x54, 0x80, 0x04, 0x08, 0x54, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x58, 0x00, 0x00, 0x00,
    0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

/// Console text the kernel prints for each milestone (6.12 wording).
const HYPERV_DETECTED: &str = "Hypervisor detected: Microsoft Hyper-V";
const VMBUS_VERSION: &str = "Vmbus version:5.";
/// INQUIRY answered: the disk's vendor/product strings.
const DISK_INQUIRY: &str = "Direct-Access     hvkit    storvsp disk";
/// READ CAPACITY answered: 32 MiB of 512-byte blocks.
const DISK_CAPACITY: &str = "[sda] 65536 512-byte logical blocks";
/// Printed after the partition table was read.
const DISK_ATTACHED: &str = "[sda] Attached SCSI disk";
const EXT4_MOUNTED_RW: &str = "EXT4-fs (sda): mounted filesystem";
const ROOT_MOUNTED: &str = "VFS: Mounted root (ext4 filesystem)";
const RUN_INIT: &str = "Run /sbin/init as init process";
const POWER_DOWN: &str = "reboot: Power down";
/// Console text that ends the run early as a failure.
const FATAL: [&str; 3] = ["Kernel panic", "BUG: ", "Oops: "];

/// The IC services the kernel's hv_utils binds (6.12 has no in-kernel
/// fcopy driver any more: it moved to uio_hv_generic, not built).
const IC_DRIVERS: [&str; 5] = ["heartbeat", "shutdown", "timesync", "kvp", "vss"];

const RUN_LIMIT: Duration = Duration::from_secs(1500);
const BOOT_LIMIT: Duration = Duration::from_secs(1200);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The kernel from linux/build-kernel.sh's cache; fails loudly when it is not built.
fn kernel_path() -> PathBuf {
    let script = workspace_root().join("linux/build-kernel.sh");
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
        "the Linux test kernel is not built ({}): run linux/build-kernel.sh first (about 20 min on 2 cores)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(path)
}

fn tool(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (e2fsprogs installed?)"));
    out
}

/// A 32 MiB ext4 image with /sbin/init (and nothing that could power off from user space).
fn make_root_image(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["sbin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("rootfs dirs");
    }
    let init = root.join("sbin/init");
    std::fs::write(&init, INIT_ELF).expect("write /sbin/init");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = dir.join("root.ext4");
    let out = tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "hvkit-root", "-E", "root_owner=0:0", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("32M"),
    );
    assert!(
        out.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

/// A field of `dumpe2fs -h`.
fn superblock_field(image: &Path, field: &str) -> String {
    let out = tool(Command::new("dumpe2fs").arg("-h").arg(image));
    assert!(out.status.success(), "dumpe2fs -h failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim_start_matches(':').trim().to_owned())
        })
        .unwrap_or_else(|| panic!("dumpe2fs -h prints no {field:?}"))
}

/// One boot of the Linux kernel with the control API and the host's view of it.
struct Boot {
    start: Instant,
    console: PathBuf,
    socket: PathBuf,
    port: Arc<Mutex<Option<Arc<dyn HvPort>>>>,
    storage: Arc<StorageController>,
    run: Option<std::thread::JoinHandle<Result<host_test_vmm::vmm::RunOutcome, api::ApiRunError>>>,
}

impl Boot {
    fn start(kernel: &Path, image: &Path, dir: &Path) -> Self {
        let console = dir.join("console.log");
        let socket = dir.join("api.sock");
        let storage = StorageController::with_disks(
            ControllerConfig::default(),
            &[image
                .to_str()
                .map(|p| format!("path={p}"))
                .expect("utf-8 temp path")
                .parse::<DiskSpec>()
                .expect("disk spec")],
        )
        .unwrap_or_else(|e| panic!("opening the root image: {e}"));
        let factory = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
            storage: Some(storage.clone()),
            // Only real device classes: no echo device or hypercall test services.
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
            storage,
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
            "Linux interop step {step:?} failed after {:.0} s: {why}\n--- console tail ---\n{}\n--- VMBus ---\n{}",
            self.start.elapsed().as_secs_f64(),
            self.tail(),
            self.port()
                .and_then(|p| p.vmbus_stats())
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_default()
        )
    }

    /// Waits until `ok` holds (polled every 250 ms) or `limit` since boot passes;
    /// fails at once on a kernel panic or the end of the run.
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

#[test]
#[ignore = "slow tier: needs the Linux test kernel (linux/build-kernel.sh)"]
fn linux_boots_with_hyperv_drivers_mounts_root_and_powers_off_on_request() {
    require_kvm();
    let kernel = kernel_path();
    let dir = std::env::temp_dir().join(format!("hvkit-linux-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let image = make_root_image(&dir);
    let mounts_before = superblock_field(&image, "Mount count");
    eprintln!(
        "kernel {}, root image {}",
        kernel.display(),
        image.display()
    );

    let mut boot = Boot::start(&kernel, &image, &dir);
    let b = &boot;

    b.step("Hyper-V detected", BOOT_LIMIT, |_, t| {
        t.contains(HYPERV_DETECTED)
    });
    b.step("VMBus connected at version 5.x", BOOT_LIMIT, |b, t| {
        let host = b.port().and_then(|p| p.vmbus_stats()).is_some_and(|s| {
            s.connected && s.version.as_deref().is_some_and(|v| v.starts_with('5'))
        });
        host && t.contains(VMBUS_VERSION)
    });
    b.step(
        "storvsc opened the SCSI controller channel",
        BOOT_LIMIT,
        |b, _| b.port().is_some_and(|p| channel_opened(&*p, "storvsp")),
    );
    b.step(
        "storvsc scanned the disk (INQUIRY, READ CAPACITY, partition table)",
        BOOT_LIMIT,
        |b, t| {
            let s = b.storage.stats();
            [DISK_INQUIRY, DISK_CAPACITY, DISK_ATTACHED]
                .iter()
                .all(|m| t.contains(m))
                && s.srb_completions > 0
                && s.bytes_read > 0
        },
    );
    b.step("ext4 root mounted read-write", BOOT_LIMIT, |_, t| {
        t.lines()
            .any(|l| l.contains(EXT4_MOUNTED_RW) && l.contains("r/w"))
            && t.contains(ROOT_MOUNTED)
    });
    b.step(
        "hv_utils opened every IC it has a driver for",
        BOOT_LIMIT,
        |b, _| {
            b.port()
                .is_some_and(|p| IC_DRIVERS.iter().all(|d| channel_opened(&*p, d)))
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
    b.step("the kernel runs /sbin/init", BOOT_LIMIT, |_, t| {
        t.contains(RUN_INIT)
    });
    // init spins at CPL3; give it a moment to die if it were going to (a panic fails the step).
    // init spins at CPL3 without system calls; were it to die, the kernel would panic.
    std::thread::sleep(Duration::from_secs(5));
    b.step("init stays alive", BOOT_LIMIT, |_, t| {
        !t.contains("Attempted to kill init")
    });
    b.step(
        "heartbeat answered",
        BOOT_LIMIT + Duration::from_secs(120),
        |b, _| b.ic()["heartbeat"]["answers"].as_u64().unwrap_or(0) > 0,
    );

    // Network (netvsc + the kernel's ip= autoconfiguration): added with netvsp.

    // Shutdown IC -> hv_utils -> orderly_poweroff -> /sbin/poweroff (i386) -> ACPI S5.
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
        Some(&json!({"timeout_secs": 300, "message": "hvkit Linux interop: power off"})),
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
    eprintln!(
        "[{:7.1} s wall] step ok: kernel powered off through ACPI S5",
        boot.start.elapsed().as_secs_f64()
    );
    assert!(
        text.contains(POWER_DOWN),
        "step \"kernel powers off\": no {POWER_DOWN:?} on the console"
    );
    let recovery = superblock_field(&image, "Filesystem features").contains("needs_recovery");
    eprintln!("journal needs recovery after the power-off: {recovery}");

    let fsck = tool(Command::new("e2fsck").args(["-f", "-n"]).arg(&image));
    assert!(
        fsck.status.success(),
        "step \"e2fsck -n clean\": exit {:?}\n{}{}\n--- console tail ---\n{}",
        fsck.status.code(),
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr),
        boot.tail()
    );
    let mounts_after = superblock_field(&image, "Mount count");
    assert_ne!(
        mounts_before, mounts_after,
        "step \"the guest mounted the image\": the superblock mount count did not change"
    );
    eprintln!("step ok: e2fsck -n clean, mount count {mounts_before} -> {mounts_after}");
    let _ = std::fs::remove_dir_all(&dir);
}
