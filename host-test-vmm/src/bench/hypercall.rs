//! `host-test-vmm bench hypercall`, on a real KVM partition.
//!
//! The round trip of a fast HvSignalEvent through the hypercall
//! page against the floor of this machine, a bare `out` exit. Both loops run
//! in one guest, alternating round by round, and the guest times them with
//! its own TSC, so noise on this machine hits both sides alike; we report the
//! medians per operation and their ratio, and count exits per operation from
//! the VMM's own counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypercall::msr::{self, GuestOsId};
use vm_memory::{Bytes, GuestAddress};

use crate::hv;
use crate::vmm::elf::ElfImage;
use crate::vmm::hv_glue::HvContext;
use crate::vmm::{HvFactory, HvPort, Partition, RunEnd, SerialOutput, VmConfig, VmmError};

/// Why a benchmark could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The partition could not be created or run.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The parameters make no sense.
    #[error("invalid benchmark parameters: {0}")]
    Invalid(&'static str),
    /// The benchmark guest misbehaved, so its numbers would mean nothing.
    #[error("benchmark guest: {0}")]
    Guest(String),
}

/// Guest-physical load address of the benchmark code.
const CODE_GPA: u64 = 0x20_0000;
/// Hypercall page of the benchmark guest.
const HYPERCALL_PAGE_GPA: u64 = 0x21_0000;
/// Where the guest stores its TSC stamps: four u64 per round.
const RESULTS_GPA: u64 = 0x30_0000;
/// Port the bare-exit loop writes to: nothing is behind it, so the VMM only counts it.
pub const BARE_EXIT_PORT: u8 = 0xF6;
/// Event connection the benchmark signals; its handler only counts.
pub const BENCH_EVENT_CONNECTION: u32 = 0x7E60;

/// Parameters of [`hypercall_round_trip`].
#[derive(Debug, Clone, Copy)]
pub struct HypercallBenchConfig {
    /// Operations per loop per round.
    pub iterations: u32,
    /// Rounds; each runs the bare-exit loop then the hypercall loop.
    pub rounds: u32,
}

impl Default for HypercallBenchConfig {
    fn default() -> Self {
        Self {
            iterations: 2000,
            rounds: 7,
        }
    }
}

/// One side of the comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Side {
    /// What was measured.
    pub name: &'static str,
    /// Median over rounds of the time per operation, in nanoseconds.
    pub median_ns: f64,
    /// Fastest round, ns per operation.
    pub min_ns: f64,
    /// Slowest round, ns per operation.
    pub max_ns: f64,
    /// VM exits per operation, from the VMM's exit counters.
    pub exits_per_op: f64,
}

/// Result of [`hypercall_round_trip`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct HypercallBenchReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Operations per loop per round.
    pub iterations: u32,
    /// Rounds.
    pub rounds: u32,
    /// Guest TSC frequency used to convert cycles to time.
    pub tsc_hz: u64,
    /// The floor: `out` to an unhandled port.
    pub bare_exit: Side,
    /// Fast HvSignalEvent through the hypercall page.
    pub hypercall: Side,
    /// The hypercall loop's instructions without the exit: the guest-side
    /// cost of the calling convention (large only where CPL0 code is emulated).
    pub calling_sequence: Side,
    /// `hypercall.median_ns / bare_exit.median_ns` (goal: at most 1.2).
    pub ratio: f64,
    /// `(hypercall - calling_sequence) / bare_exit`: the exit and dispatch path
    /// of a hypercall relative to a bare exit, with the guest's calling
    /// sequence taken out.
    pub exit_path_ratio: f64,
}

impl HypercallBenchReport {
    /// A small table for humans.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "hypercall round trip vs bare exit ({} rounds x {} ops, guest TSC {} MHz)\n",
            self.rounds,
            self.iterations,
            self.tsc_hz / 1_000_000
        );
        s.push_str(&format!(
            "{:<36} {:>12} {:>12} {:>12} {:>10}\n",
            "operation", "median ns", "min ns", "max ns", "exits/op"
        ));
        for side in [&self.bare_exit, &self.hypercall, &self.calling_sequence] {
            s.push_str(&format!(
                "{:<36} {:>12.0} {:>12.0} {:>12.0} {:>10.2}\n",
                side.name, side.median_ns, side.min_ns, side.max_ns, side.exits_per_op
            ));
        }
        s.push_str(&format!(
            "ratio hypercall / bare exit: {:.3} (goal <= 1.2)\n",
            self.ratio
        ));
        s.push_str(&format!(
            "ratio (hypercall - calling sequence) / bare exit: {:.3}\n",
            self.exit_path_ratio
        ));
        s
    }
}

/// Tiny x86-64 encoder for the handful of instructions the benchmark needs.
struct Asm(Vec<u8>);

impl Asm {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn op_imm32(&mut self, opcode: &[u8], imm: u32) -> &mut Self {
        self.bytes(opcode).bytes(&imm.to_le_bytes())
    }
    fn mov_ecx(&mut self, v: u32) -> &mut Self {
        self.op_imm32(&[0xB9], v)
    }
    fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.op_imm32(&[0xB8], v)
    }
    fn mov_edx(&mut self, v: u32) -> &mut Self {
        self.op_imm32(&[0xBA], v)
    }
    fn mov_ebx(&mut self, v: u32) -> &mut Self {
        self.op_imm32(&[0xBB], v)
    }
    fn wrmsr(&mut self) -> &mut Self {
        self.bytes(&[0x0F, 0x30])
    }
    /// rax = full 64-bit TSC (rdtsc; shl rdx, 32; or rax, rdx).
    fn rdtsc64(&mut self) -> &mut Self {
        self.bytes(&[0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0])
    }
    fn here(&self) -> usize {
        self.0.len()
    }
    /// dec ebx; jnz back to `target` (rel8).
    fn dec_ebx_jnz(&mut self, target: usize) -> &mut Self {
        self.bytes(&[0xFF, 0xCB]);
        let rel = target as isize - (self.here() as isize + 2);
        let rel = i8::try_from(rel).expect("benchmark loop body fits a rel8 jump");
        self.bytes(&[0x75, rel as u8])
    }
}

/// The benchmark guest: enables the hypercall page, then per round stamps the
/// TSC around a loop of bare exits and a loop of fast HvSignalEvent calls.
fn guest_code(cfg: &HypercallBenchConfig) -> Vec<u8> {
    let os_id = GuestOsId::open_source_id(0, 1, 0x6876).into_bits();
    let mut a = Asm(Vec::new());
    a.mov_ecx(msr::GUEST_OS_ID)
        .mov_eax(os_id as u32)
        .mov_edx((os_id >> 32) as u32)
        .wrmsr();
    a.mov_ecx(msr::HYPERCALL)
        .mov_eax(HYPERCALL_PAGE_GPA as u32 | 1)
        .bytes(&[0x31, 0xD2]) // xor edx, edx
        .wrmsr();
    a.op_imm32(&[0xBF], RESULTS_GPA as u32); // mov edi, results
    a.op_imm32(&[0x41, 0xBF], cfg.rounds); // mov r15d, rounds
    let outer = a.here();
    a.rdtsc64().bytes(&[0x49, 0x89, 0xC4]); // mov r12, rax
    a.mov_ebx(cfg.iterations);
    let bare = a.here();
    a.bytes(&[0xE7, BARE_EXIT_PORT]); // out imm8, eax
    a.dec_ebx_jnz(bare);
    a.rdtsc64().bytes(&[0x49, 0x89, 0xC5]); // mov r13, rax
    a.mov_ebx(cfg.iterations);
    let call = a.here();
    let control = hypercall::abi::Control::call(hypercall::abi::CallCode::SIGNAL_EVENT)
        .with_fast(true)
        .into_bits();
    a.mov_ecx(control as u32)
        .mov_edx(BENCH_EVENT_CONNECTION)
        .bytes(&[0x45, 0x31, 0xC0]) // xor r8d, r8d
        .mov_eax(HYPERCALL_PAGE_GPA as u32)
        .bytes(&[0xFF, 0xD0]); // call rax
    a.dec_ebx_jnz(call);
    a.rdtsc64().bytes(&[0x49, 0x89, 0xC6]); // mov r14, rax

    // The same calling sequence into a stub without the exit: what the TLFS
    // calling convention itself costs where CPL0 code is emulated.
    a.mov_ebx(cfg.iterations);
    let stub_call = a.here();
    let stub_fixup = a
        .mov_ecx(control as u32)
        .mov_edx(BENCH_EVENT_CONNECTION)
        .bytes(&[0x45, 0x31, 0xC0]) // xor r8d, r8d
        .here()
        + 1;
    a.mov_eax(0).bytes(&[0xFF, 0xD0]); // mov eax, stub (patched below); call rax
    a.dec_ebx_jnz(stub_call);
    a.rdtsc64();
    a.bytes(&[0x4C, 0x89, 0x27]) // mov [rdi], r12
        .bytes(&[0x4C, 0x89, 0x6F, 0x08]) // mov [rdi+8], r13
        .bytes(&[0x4C, 0x89, 0x77, 0x10]) // mov [rdi+16], r14
        .bytes(&[0x48, 0x89, 0x47, 0x18]) // mov [rdi+24], rax
        .bytes(&[0x48, 0x83, 0xC7, 0x20]) // add rdi, 32
        .bytes(&[0x41, 0xFF, 0xCF]); // dec r15d
    let rel = outer as i64 - (a.here() as i64 + 6);
    a.bytes(&[0x0F, 0x85]).bytes(&(rel as i32).to_le_bytes()); // jnz outer
    a.bytes(&[0x31, 0xC0, 0xE7, 0xF4, 0xF4]); // xor eax, eax; out 0xF4, eax; hlt

    // The stub: the hypercall page's instructions with the OUT replaced by a
    // two-byte NOP (endbr64; xchg ax, ax; ret).
    let stub = CODE_GPA as u32 + a.here() as u32;
    a.0[stub_fixup..stub_fixup + 4].copy_from_slice(&stub.to_le_bytes());
    a.bytes(&[0xF3, 0x0F, 0x1E, 0xFA, 0x66, 0x90, 0xC3]);
    a.0
}

/// The Hyper-V emulation with a counting event port for the benchmark.
fn bench_factory(signals: Arc<AtomicU64>) -> HvFactory {
    Arc::new(move |ctx: HvContext| {
        let cfg = hv::HvConfig {
            vp_count: ctx.vp_count,
            tsc_hz: ctx.tsc_hz,
            features: hv::HvFeatures::default(),
        };
        let h = hv::Hypervisor::new(cfg, ctx.mem, ctx.irq, ctx.tsc)
            .map_err(|e| VmmError::Hv(e.to_string()))?;
        let signals = signals.clone();
        h.register_event_port(
            BENCH_EVENT_CONNECTION,
            Box::new(move |_vp, _flag| {
                signals.fetch_add(1, Ordering::Relaxed);
            }),
        );
        Ok(h as Arc<dyn HvPort>)
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the hypercall benchmark on a fresh one-vCPU partition.
pub fn hypercall_round_trip(cfg: HypercallBenchConfig) -> Result<HypercallBenchReport, BenchError> {
    if cfg.iterations == 0 || cfg.rounds == 0 {
        return Err(BenchError::Invalid(
            "iterations and rounds must be at least 1",
        ));
    }
    let signals = Arc::new(AtomicU64::new(0));
    let mut vm = VmConfig::new(ElfImage::build_flat(&guest_code(&cfg), CODE_GPA));
    vm.memory = 16 << 20;
    vm.serial = SerialOutput::Null;
    vm.expected_checks = Vec::new();
    vm.hv = bench_factory(signals.clone());
    let mut p = Partition::create(&vm)?;
    p.start()?;
    let end = p.wait(Some(Duration::from_secs(600)));
    let tsc_hz = p.guest_tsc().hz();
    let exits = p.exit_stats().snapshot();
    let mut stamps = vec![0u8; cfg.rounds as usize * 32];
    let read = p
        .memory()
        .read_slice(&mut stamps, GuestAddress(RESULTS_GPA));
    p.stop()?;
    match end {
        Some(RunEnd::DebugExit { code: 0, .. }) => {}
        other => {
            return Err(BenchError::Guest(format!(
                "did not finish through the debug port with 0: {other:?}"
            )))
        }
    }
    read.map_err(|e| BenchError::Guest(format!("results unreadable: {e}")))?;

    let n = f64::from(cfg.iterations);
    let ns = |cycles: u64| cycles as f64 * 1e9 / tsc_hz as f64 / n;
    let (mut bare, mut call, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    for r in stamps.chunks_exact(32) {
        let t = |i: usize| u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        bare.push(ns(t(1).wrapping_sub(t(0))));
        call.push(ns(t(2).wrapping_sub(t(1))));
        seq.push(ns(t(3).wrapping_sub(t(2))));
    }
    let ops = f64::from(cfg.iterations) * f64::from(cfg.rounds);
    let io_out = exits.by_kind.get("io_out").copied().unwrap_or(0) as f64;
    let hypercalls = exits
        .hypercalls
        .get(&hypercall::abi::CallCode::SIGNAL_EVENT.0)
        .map(|c| c.calls)
        .unwrap_or(0) as f64;
    let delivered = signals.load(Ordering::Relaxed) as f64;
    if delivered != ops || hypercalls != ops {
        return Err(BenchError::Guest(format!(
            "hypercalls went astray: {ops} issued, {hypercalls} seen at the port, {delivered} delivered"
        )));
    }
    let side = |name, v: &mut Vec<f64>, exits_per_op| Side {
        name,
        median_ns: median(v),
        min_ns: v.iter().copied().fold(f64::INFINITY, f64::min),
        max_ns: v.iter().copied().fold(0.0, f64::max),
        exits_per_op,
    };
    // Every OUT exit that is not a hypercall (or the final debug exit) is a bare exit.
    let bare_exit = side(
        "bare OUT exit",
        &mut bare,
        (io_out - hypercalls - 1.0) / ops,
    );
    let hypercall = side(
        "HvSignalEvent (fast) via hypercall page",
        &mut call,
        hypercalls / ops,
    );
    let calling_sequence = side("same calling sequence, no exit (stub)", &mut seq, 0.0);
    Ok(HypercallBenchReport {
        bench: "hypercall",
        exit_path_ratio: (hypercall.median_ns - calling_sequence.median_ns) / bare_exit.median_ns,
        calling_sequence,
        iterations: cfg.iterations,
        rounds: cfg.rounds,
        tsc_hz,
        ratio: hypercall.median_ns / bare_exit.median_ns,
        bare_exit,
        hypercall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_code_has_the_loops_the_debug_exit_and_the_stub() {
        let code = guest_code(&HypercallBenchConfig::default());
        assert!(code.windows(2).any(|w| w == [0xE7, BARE_EXIT_PORT]));
        assert_eq!(code.windows(2).filter(|w| *w == [0xFF, 0xD0]).count(), 2);
        assert!(code.windows(3).any(|w| w == [0xE7, 0xF4, 0xF4]));
        // The stub is the hypercall page's code with the OUT replaced by a NOP.
        assert!(code.ends_with(&[0xF3, 0x0F, 0x1E, 0xFA, 0x66, 0x90, 0xC3]));
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
