//! KVM partition management (see crate docs and docs/ARCHITECTURE.md):
//! guest RAM, vCPU threads and their lifecycle, the direct 64-bit boot
//! protocol and the Linux boot protocol ([`linux`], with ACPI tables from
//! [`acpi`]), COM1, the debug-exit port, the few legacy platform ports a
//! Linux guest uses (i8042 reset, ACPI sleep control), and the glue that routes CPUID,
//! synthetic MSRs, hypercalls, interrupts and time to the Hyper-V emulation.
//!
//! Entry points: [`run`] (create, run to the end, report) and [`Partition`]
//! for finer lifecycle control.

pub mod acpi;
pub mod boot;
pub mod console;
pub mod cpuid;
pub mod elf;
pub mod error;
pub mod guest_build;
pub mod hv_glue;
pub mod irq;
pub mod linux;
pub mod partition;
pub mod report;
pub mod stats;
pub mod vcpu;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

pub use console::SerialOutput;
pub use error::VmmError;
pub use hv_glue::{HvFactory, HvPort};
pub use partition::{KvmFacts, Partition};
pub use report::{Report, EXPECTED_CHECKS};
pub use vcpu::RunEnd;

/// How to build and run a partition.
#[derive(Clone)]
pub struct VmConfig {
    /// The guest ELF image (bytes).
    pub kernel: Vec<u8>,
    /// vCPU count (1..=8).
    pub cpus: u32,
    /// RAM in bytes (2 MiB..=3 GiB).
    pub memory: u64,
    /// Where COM1 output goes (it is always captured for the report as well).
    pub serial: SerialOutput,
    /// Wall-clock limit for [`run`].
    pub timeout: Option<Duration>,
    /// Builds the Hyper-V emulation for the partition.
    pub hv: HvFactory,
    /// Check names the report expects (missing ones fail).
    pub expected_checks: Vec<String>,
    /// Use KVM_CAP_SYNC_REGS for hypercall registers when KVM offers it.
    pub use_sync_regs: bool,
    /// Assist KVM where it failed to emulate an instruction (`int3` -> #BP,
    /// `fwait` -> no-op; PVM only, never triggers on VMX/SVM).
    pub emulation_assist: bool,
    /// Boot `kernel` with the Linux boot protocol (bzImage or vmlinux) instead
    /// of hvkit's direct protocol; see [`linux`].
    pub linux: Option<linux::LinuxBoot>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel_bytes", &self.kernel.len())
            .field("cpus", &self.cpus)
            .field("memory", &self.memory)
            .field("serial", &self.serial)
            .field("timeout", &self.timeout)
            .field("expected_checks", &self.expected_checks)
            .field("linux", &self.linux.as_ref().map(|l| &l.cmdline))
            .finish_non_exhaustive()
    }
}

impl VmConfig {
    /// Defaults: 1 vCPU, 256 MiB, serial to stdout, no timeout, the Hyper-V
    /// emulation, the test guest's expected checks.
    pub fn new(kernel: Vec<u8>) -> Self {
        Self {
            kernel,
            cpus: 1,
            memory: 256 << 20,
            serial: SerialOutput::Stdout,
            timeout: None,
            hv: hv_glue::default_factory(),
            expected_checks: EXPECTED_CHECKS.iter().map(|s| (*s).to_owned()).collect(),
            use_sync_regs: true,
            emulation_assist: true,
            linux: None,
        }
    }

    /// Like [`new`](Self::new), reading the ELF from `path`.
    pub fn from_file(path: &Path) -> Result<Self, VmmError> {
        let kernel = std::fs::read(path).map_err(|source| VmmError::ReadImage {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::new(kernel))
    }
}

/// Result of [`run`].
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How the run ended.
    pub end: RunEnd,
    /// The report (checks, counters, exit code).
    pub report: Report,
    /// Captured serial text (the most recent MiB).
    pub serial: String,
    /// What this KVM offered.
    pub facts: KvmFacts,
}

impl RunOutcome {
    /// True when every check passed and the guest exited through port 0xF4 with 0.
    pub fn passed(&self) -> bool {
        self.report.passed
    }
}

/// Creates a partition, runs it until the guest exits (or the timeout), stops
/// every thread and returns the report.
pub fn run(cfg: VmConfig) -> Result<RunOutcome, VmmError> {
    let mut p = Partition::create(&cfg)?;
    p.start()?;
    let end = p.wait(cfg.timeout).unwrap_or_else(|| {
        p.end_run(RunEnd::Timeout);
        RunEnd::Timeout
    });
    p.stop()?;
    let expected: Vec<&str> = cfg.expected_checks.iter().map(String::as_str).collect();
    let report = p.report(&expected);
    Ok(RunOutcome {
        end,
        report,
        serial: p.console().text(),
        facts: p.facts(),
    })
}

/// Parses a memory size: bytes, or a number with K, M or G (binary units).
pub fn parse_memory_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix {c:?} (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 256M, 1G, 4194304)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}
