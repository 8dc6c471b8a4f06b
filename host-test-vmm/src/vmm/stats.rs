//! What the VMM itself observed: exits by kind, hypercalls, synthetic MSR accesses.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Per-call-code hypercall counts as seen at the trampoline port.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HypercallCount {
    /// Calls made.
    pub calls: u64,
    /// Calls that returned HV_STATUS_SUCCESS (RAX[15:0] == 0).
    pub ok: u64,
}

/// Snapshot of [`ExitStats`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExitCounts {
    /// Exits by kind ("io_out", "msr_read", ...).
    pub by_kind: BTreeMap<String, u64>,
    /// Hypercalls by call code (RCX[15:0]).
    pub hypercalls: BTreeMap<u16, HypercallCount>,
    /// RDMSR exits by MSR.
    pub msr_reads: BTreeMap<u32, u64>,
    /// WRMSR exits by MSR.
    pub msr_writes: BTreeMap<u32, u64>,
    /// Emulation assists performed (int3 -> #BP).
    pub emulation_assists: u64,
}

/// Thread-safe counters, updated by every vCPU thread.
#[derive(Debug, Default)]
pub struct ExitStats {
    inner: Mutex<ExitCounts>,
}

impl ExitStats {
    fn with<R>(&self, f: impl FnOnce(&mut ExitCounts) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
    pub(crate) fn exit(&self, kind: &str) {
        self.with(|c| *c.by_kind.entry(kind.to_owned()).or_default() += 1);
    }
    pub(crate) fn hypercall(&self, code: u16, ok: bool) {
        self.with(|c| {
            let e = c.hypercalls.entry(code).or_default();
            e.calls += 1;
            e.ok += u64::from(ok);
        });
    }
    pub(crate) fn msr_read(&self, msr: u32) {
        self.with(|c| *c.msr_reads.entry(msr).or_default() += 1);
    }
    pub(crate) fn msr_write(&self, msr: u32) {
        self.with(|c| *c.msr_writes.entry(msr).or_default() += 1);
    }
    pub(crate) fn assist(&self) {
        self.with(|c| c.emulation_assists += 1);
    }
    pub(crate) fn clear(&self) {
        self.with(|c| *c = ExitCounts::default());
    }
    /// Snapshot.
    pub fn snapshot(&self) -> ExitCounts {
        self.with(|c| c.clone())
    }
}
