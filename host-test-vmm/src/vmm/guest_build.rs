//! Locating and building the bundled test guest (tests/guest), for
//! `host-test-vmm demo` and for boot tests that want the real guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::VmmError;

/// Directory of the bundled test guest crate.
pub fn test_guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guest")
}

/// Builds tests/guest (release, x86_64-unknown-none; a no-op when up to date)
/// and returns the path of the guest ELF.
///
/// The guest gets its own target directory (tests/guest/target) whatever
/// CARGO_TARGET_DIR the caller runs under, so a build started from inside
/// `cargo test` never waits on the outer build's lock.
pub fn build_test_guest() -> Result<PathBuf, VmmError> {
    let dir = test_guest_dir();
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        return Err(VmmError::Demo(format!(
            "the bundled test guest does not exist yet ({} is missing); build a guest ELF and use `host-test-vmm run --kernel <elf>`",
            manifest.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    tracing::info!(manifest = %manifest.display(), "building the test guest");
    let out = Command::new(cargo)
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        // Host-side flags of an outer cargo invocation must not leak into the bare-metal build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .args([
            "build",
            "--release",
            "--target",
            "x86_64-unknown-none",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| VmmError::Demo(format!("cannot run cargo to build the test guest: {e}")))?;
    if !out.status.success() {
        return Err(VmmError::Demo(format!(
            "building the test guest failed ({}); see the compiler output above",
            out.status
        )));
    }
    // The artifact path comes from cargo itself, so profiles and target dirs are honoured.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or_else(|| {
            VmmError::Demo("cargo built the test guest but reported no executable".into())
        })
}

/// Builds (if needed) and runs the bundled test guest with `cpus` vCPUs, its
/// serial output captured only, under `timeout`: the one-call boot test.
pub fn run_test_guest(
    cpus: u32,
    timeout: std::time::Duration,
) -> Result<super::RunOutcome, VmmError> {
    let mut cfg = super::VmConfig::from_file(&build_test_guest()?)?;
    cfg.cpus = cpus;
    cfg.serial = super::SerialOutput::Null;
    cfg.timeout = Some(timeout);
    super::run(cfg)
}
