//! One thread per vCPU: the KVM_RUN loop, exit routing, and the kick
//! mechanism (a real-time signal plus `immediate_exit`) used by pause/stop.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};

use kvm_bindings::{
    kvm_lapic_state, kvm_mp_state, kvm_run, KVM_INTERNAL_ERROR_EMULATION, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi::{self, SleepRequest, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
use super::boot;
use super::console::{Console, COM1};
use super::hv_glue::{is_hv_msr, HvPort, HvRegs};
use super::irq::MsiInterruptSink;
use super::stats::ExitStats;

/// i8042 command/status port; command 0xFE pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_CMD_RESET: u8 = 0xFE;
/// CMOS/RTC data port: there is no RTC, and reading 0 keeps Linux's
/// "update in progress" poll from spinning until its timeout.
const CMOS_DATA_PORT: u16 = 0x71;
/// x87 `fwait`/`wait`.
const OPCODE_FWAIT: u8 = 0x9B;
const OPCODE_INT3: u8 = 0xCC;

/// HV_X64_MSR_EOI: write-only APIC EOI (fact sheet §2, "EOI / ICR / TPR").
const HV_MSR_EOI: u32 = 0x4000_0070;

/// Port the guest writes its exit code to.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// Port of the hypercall trampoline (`out 0xF5, eax` in the hypercall page).
pub const HYPERCALL_PORT: u16 = 0xF5;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunEnd {
    /// The guest wrote `code` to the debug-exit port.
    DebugExit {
        /// The value written (1, 2 or 4 bytes, zero-extended).
        code: u32,
        /// The VP that wrote it.
        vp: u32,
    },
    /// The run exceeded its time limit.
    Timeout,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The VP.
        vp: u32,
        /// Its RIP after the fault.
        rip: u64,
    },
    /// The VMM stopped the run because of an error it cannot handle.
    Error {
        /// The VP.
        vp: u32,
        /// What happened (names RIP and instruction bytes for emulation failures).
        message: String,
    },
    /// The partition was stopped by its owner.
    Stopped,
    /// The guest powered itself off (ACPI S5 through the sleep control
    /// register, `super::acpi::SLEEP_CONTROL_PORT`).
    PoweredOff {
        /// The VP that wrote it.
        vp: u32,
    },
    /// The guest asked for a platform reset (i8042 command 0xFE).
    Reset {
        /// The VP that asked.
        vp: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Run,
    Pause,
    Stop,
}

pub(crate) struct Ctl {
    pub want: Want,
    /// vCPU threads parked in `Pause`.
    pub paused: u32,
    /// vCPU threads that have not exited yet.
    pub live: u32,
    /// Bumped by a reset; each vCPU re-applies the boot state when it sees a new value.
    pub reset_gen: u64,
    /// First end reason (first one wins).
    pub end: Option<RunEnd>,
    /// pthread ids of live vCPU threads, for kicking. A thread clears its slot
    /// (under this lock) before exiting, so a kick never targets a joined thread.
    pub threads: Vec<Option<libc::pthread_t>>,
}

/// State shared between the partition and its vCPU threads.
pub(crate) struct Shared {
    /// Fast-path flag: set whenever `want != Run` or a reset is pending.
    pub attention: AtomicBool,
    pub ctl: Mutex<Ctl>,
    pub cv: Condvar,
}

impl Shared {
    pub fn new(vp_count: u32) -> Self {
        Self {
            attention: AtomicBool::new(false),
            ctl: Mutex::new(Ctl {
                want: Want::Run,
                paused: 0,
                live: 0,
                reset_gen: 0,
                end: None,
                threads: vec![None; vp_count as usize],
            }),
            cv: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forces every running vCPU out of KVM_RUN. Called with the lock held.
    pub fn kick_all(ctl: &Ctl) {
        for t in ctl.threads.iter().flatten() {
            // SAFETY: the pthread id belongs to a vCPU thread that is still alive: threads
            // clear their slot under the same lock before they exit.
            let r = unsafe { libc::pthread_kill(*t, kick_signal()) };
            if r != 0 {
                tracing::warn!(errno = r, "pthread_kill of a vCPU thread failed");
            }
        }
    }

    /// Records the end of the run (first reason wins) and stops every vCPU.
    pub fn finish(&self, end: RunEnd) {
        let mut ctl = self.lock();
        if ctl.end.is_none() {
            tracing::info!(?end, "run ended");
            ctl.end = Some(end);
        }
        ctl.want = Want::Stop;
        self.attention.store(true, Ordering::Release);
        Self::kick_all(&ctl);
        self.cv.notify_all();
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// This thread's kvm_run mapping, so the kick handler can set `immediate_exit`
    /// (closing the race between checking `attention` and entering KVM_RUN).
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|p| {
        let p = p.get();
        if !p.is_null() {
            // SAFETY: the pointer is this thread's live kvm_run mapping (cleared before the
            // VcpuFd is dropped); a volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*p).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler once per process.
pub(crate) fn install_kick_handler() -> Result<(), super::VmmError> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(
            |source| super::VmmError::Kvm {
                op: "sigaction(vCPU kick signal)",
                source,
            },
        );
    });
    res
}

/// What a vCPU needs besides its fd.
pub(crate) struct VcpuEnv {
    pub vp: u32,
    pub vp_count: u32,
    pub entry: u64,
    /// Set when the partition boots Linux (boot state for resets, symbols for errors).
    pub linux: Option<Arc<super::linux::LoadedLinux>>,
    pub mem: GuestMemoryMmap,
    pub shared: Arc<Shared>,
    pub hv: Arc<dyn HvPort>,
    pub stats: Arc<ExitStats>,
    pub console: Arc<Console>,
    pub sync_regs: bool,
    pub emulation_assist: bool,
    pub initial_lapic: kvm_lapic_state,
    pub irq: Arc<MsiInterruptSink>,
}

pub(crate) struct Vcpu {
    pub fd: VcpuFd,
    pub env: VcpuEnv,
    reset_gen: u64,
}

/// What to do after an exit whose handling needs the fd again.
enum Next {
    Continue,
    ApicEoi,
    End(RunEnd),
    Hypercall,
    InternalError,
}

enum Park {
    Go,
    Stop,
}

impl Vcpu {
    pub fn new(fd: VcpuFd, env: VcpuEnv) -> Self {
        Self {
            fd,
            env,
            reset_gen: 0,
        }
    }

    /// Thread body: runs until the partition stops or the run ends.
    pub fn run_thread(mut self) {
        let vp = self.env.vp;
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|p| p.set(run_ptr));
        {
            let mut ctl = self.env.shared.lock();
            // SAFETY: pthread_self has no preconditions.
            ctl.threads[vp as usize] = Some(unsafe { libc::pthread_self() });
        }
        if self.env.sync_regs {
            self.fd.set_sync_valid_reg(SyncReg::Register);
        }
        tracing::debug!(vp, "vCPU thread started");
        loop {
            if self.env.shared.attention.load(Ordering::Acquire) {
                match self.park() {
                    Park::Go => {}
                    Park::Stop => break,
                }
            }
            let next = self.run_once();
            let next = match next {
                Next::Hypercall => self.hypercall(),
                Next::InternalError => self.internal_error(),
                Next::ApicEoi => self.apic_eoi(),
                n => n,
            };
            if let Next::End(end) = next {
                self.env.console.flush();
                self.env.shared.finish(end);
                break;
            }
        }
        KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
        let mut ctl = self.env.shared.lock();
        ctl.threads[vp as usize] = None;
        ctl.live -= 1;
        self.env.shared.cv.notify_all();
        tracing::debug!(vp, "vCPU thread exits");
    }

    fn park(&mut self) -> Park {
        let shared = self.env.shared.clone();
        let mut ctl = shared.lock();
        loop {
            match ctl.want {
                Want::Stop => return Park::Stop,
                Want::Run => break,
                Want::Pause => {
                    ctl.paused += 1;
                    shared.cv.notify_all();
                    while ctl.want == Want::Pause {
                        ctl = shared.cv.wait(ctl).unwrap_or_else(|p| p.into_inner());
                    }
                    ctl.paused -= 1;
                }
            }
        }
        let gen = ctl.reset_gen;
        drop(ctl);
        if gen != self.reset_gen {
            self.reset_gen = gen;
            if let Err(e) = self.apply_reset() {
                shared.finish(RunEnd::Error {
                    vp: self.env.vp,
                    message: format!("reset failed: {e}"),
                });
                return Park::Stop;
            }
        }
        Park::Go
    }

    /// Back to the boot protocol's entry state.
    fn apply_reset(&mut self) -> Result<(), super::VmmError> {
        use super::VmmError;
        // Complete any I/O KVM still has in flight for the previous exit, so it cannot
        // be applied on top of the new state: KVM_RUN with immediate_exit set does that
        // and returns EINTR without entering the guest.
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        let env = &self.env;
        let mp_state = match &env.linux {
            None => {
                boot::setup_vcpu(&self.fd, env.vp, env.vp_count, env.mem_size(), env.entry)?;
                KVM_MP_STATE_RUNNABLE
            }
            Some(l) if env.vp == 0 => {
                super::linux::setup_boot_vcpu(&self.fd, l)?;
                KVM_MP_STATE_RUNNABLE
            }
            // Linux wakes its application processors with INIT/SIPI.
            Some(_) => KVM_MP_STATE_UNINITIALIZED,
        };
        self.fd
            .set_lapic(&env.initial_lapic)
            .map_err(VmmError::kvm("KVM_SET_LAPIC"))?;
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(VmmError::kvm("KVM_SET_MP_STATE"))?;
        let mut ev = self
            .fd
            .get_vcpu_events()
            .map_err(VmmError::kvm("KVM_GET_VCPU_EVENTS"))?;
        ev.exception = Default::default();
        ev.interrupt = Default::default();
        ev.nmi = Default::default();
        self.fd
            .set_vcpu_events(&ev)
            .map_err(VmmError::kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    fn run_once(&mut self) -> Next {
        let env = &self.env;
        let vp = env.vp;
        let exit = match self.fd.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR => {
                self.fd.set_kvm_immediate_exit(0);
                env.stats.exit("intr");
                return Next::Continue;
            }
            Err(e) if e.errno() == libc::EAGAIN => return Next::Continue,
            Err(e) => {
                return Next::End(RunEnd::Error {
                    vp,
                    message: format!("KVM_RUN failed: {e}"),
                })
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                env.stats.exit("io_out");
                let mut buf = [0u8; 4];
                let len = data.len().min(4);
                buf[..len].copy_from_slice(&data[..len]);
                env.io_out(port, &buf[..len])
            }
            VcpuExit::IoIn(port, data) => {
                env.stats.exit("io_in");
                if (COM1..COM1 + 8).contains(&port) {
                    data[0] = env.console.read((port - COM1) as u8);
                    data[1..].fill(0xFF);
                } else {
                    data.fill(port_in_value(port));
                }
                Next::Continue
            }
            VcpuExit::X86Rdmsr(m) => {
                env.stats.exit("msr_read");
                env.stats.msr_read(m.index);
                match is_hv_msr(m.index).then(|| env.hv.msr_read(vp, m.index)).flatten() {
                    Some(v) => *m.data = v,
                    None => {
                        tracing::debug!(vp, msr = format_args!("{:#x}", m.index), "RDMSR -> #GP");
                        *m.error = 1;
                    }
                }
                Next::Continue
            }
            VcpuExit::X86Wrmsr(m) => {
                env.stats.exit("msr_write");
                env.stats.msr_write(m.index);
                if m.index == HV_MSR_EOI && env.hv.eoi_msr_granted() {
                    return Next::ApicEoi;
                }
                if !(is_hv_msr(m.index) && env.hv.msr_write(vp, m.index, m.data)) {
                    tracing::debug!(vp, msr = format_args!("{:#x}", m.index), value = m.data, "WRMSR -> #GP");
                    *m.error = 1;
                }
                Next::Continue
            }
            VcpuExit::MmioRead(addr, data) => {
                env.stats.exit("mmio_read");
                tracing::debug!(vp, addr = format_args!("{addr:#x}"), "read of unbacked MMIO");
                data.fill(0xFF);
                Next::Continue
            }
            VcpuExit::MmioWrite(addr, _) => {
                env.stats.exit("mmio_write");
                tracing::debug!(vp, addr = format_args!("{addr:#x}"), "write to unbacked MMIO ignored");
                Next::Continue
            }
            VcpuExit::Intr => {
                env.stats.exit("intr");
                Next::Continue
            }
            VcpuExit::Hlt => {
                // With the in-kernel irqchip KVM handles HLT itself; count it if it shows up.
                env.stats.exit("hlt");
                Next::Continue
            }
            VcpuExit::Shutdown => {
                env.stats.exit("shutdown");
                let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
                Next::End(RunEnd::TripleFault { vp, rip })
            }
            VcpuExit::InternalError => {
                env.stats.exit("internal_error");
                Next::InternalError
            }
            VcpuExit::FailEntry(reason, cpu) => Next::End(RunEnd::Error {
                vp,
                message: format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host CPU {cpu}"),
            }),
            VcpuExit::SystemEvent(kind, data) => Next::End(RunEnd::Error {
                vp,
                message: format!("KVM_EXIT_SYSTEM_EVENT type {kind} data {data:x?}"),
            }),
            other => Next::End(RunEnd::Error { vp, message: format!("unhandled KVM exit {other:?}") }),
        }
    }

    /// WRMSR of the Hyper-V EOI MSR: an EOI of the in-kernel LAPIC, which the
    /// KVM-independent emulation cannot do itself.
    fn apic_eoi(&mut self) -> Next {
        match self.env.irq.eoi(&self.fd) {
            Ok(v) => {
                self.env.stats.exit("eoi_msr");
                tracing::trace!(vp = self.env.vp, vector = ?v, "EOI through HV_X64_MSR_EOI");
                Next::Continue
            }
            Err(e) => Next::End(RunEnd::Error {
                vp: self.env.vp,
                message: format!("EOI MSR emulation (KVM_GET/SET_LAPIC) failed: {e}"),
            }),
        }
    }

    /// The guest executed `out 0xF5, eax` (hypercall page trampoline).
    fn hypercall(&mut self) -> Next {
        let vp = self.env.vp;
        let mut regs = if self.env.sync_regs {
            self.fd.sync_regs().regs
        } else {
            match self.fd.get_regs() {
                Ok(r) => r,
                Err(e) => {
                    return Next::End(RunEnd::Error {
                        vp,
                        message: format!("KVM_GET_REGS: {e}"),
                    })
                }
            }
        };
        let mut hr = HvRegs {
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            rax: 0,
        };
        self.env.hv.hypercall(vp, &mut hr);
        let code = (regs.rcx & 0xFFFF) as u16;
        self.env.stats.hypercall(code, hr.rax & 0xFFFF == 0);
        tracing::trace!(vp, code, rax = hr.rax, "hypercall");
        regs.rax = hr.rax;
        regs.rcx = hr.rcx;
        if self.env.sync_regs {
            self.fd.sync_regs_mut().regs = regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
        } else if let Err(e) = self.fd.set_regs(&regs) {
            return Next::End(RunEnd::Error {
                vp,
                message: format!("KVM_SET_REGS: {e}"),
            });
        }
        Next::Continue
    }

    /// KVM_EXIT_INTERNAL_ERROR. Suberror 1 (emulation failure) happens on PVM, where
    /// CPL0 code is emulated; on VMX/SVM it does not occur for these guests, so the
    /// assist below is a no-op there.
    fn internal_error(&mut self) -> Next {
        let vp = self.env.vp;
        // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the union
        // member KVM filled in; it is plain old data.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let mut regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => {
                return Next::End(RunEnd::Error {
                    vp,
                    message: format!("KVM_GET_REGS: {e}"),
                })
            }
        };
        if internal.suberror != KVM_INTERNAL_ERROR_EMULATION {
            let n = (internal.ndata as usize).min(internal.data.len());
            return Next::End(RunEnd::Error {
                vp,
                message: format!(
                    "KVM internal error, suberror {} (data {:x?}) at RIP {:#x}",
                    internal.suberror,
                    &internal.data[..n],
                    regs.rip
                ),
            });
        }
        let bytes = self.instruction_bytes(&internal, regs.rip);
        if self.env.emulation_assist && bytes.first() == Some(&OPCODE_FWAIT) {
            // fwait only raises a pending x87 exception; the kernel (fpu__drop) uses it with
            // none pending, so skipping it is exact.
            regs.rip += 1;
            return match self.fd.set_regs(&regs) {
                Ok(()) => {
                    self.env.stats.assist();
                    tracing::debug!(
                        vp,
                        rip = format_args!("{:#x}", regs.rip - 1),
                        "emulation assist: fwait skipped"
                    );
                    Next::Continue
                }
                Err(e) => Next::End(RunEnd::Error {
                    vp,
                    message: format!("skipping fwait failed: {e}"),
                }),
            };
        }
        if self.env.emulation_assist && bytes.first() == Some(&OPCODE_INT3) {
            // int3: deliver the #BP it would raise, with RIP past the instruction as a
            // trap leaves it.
            regs.rip += 1;
            let injected = self.fd.set_regs(&regs).and_then(|()| {
                let mut ev = self.fd.get_vcpu_events()?;
                ev.exception.injected = 1;
                ev.exception.nr = 3;
                ev.exception.has_error_code = 0;
                ev.exception.error_code = 0;
                self.fd.set_vcpu_events(&ev)
            });
            return match injected {
                Ok(()) => {
                    self.env.stats.assist();
                    tracing::debug!(
                        vp,
                        rip = format_args!("{:#x}", regs.rip - 1),
                        "emulation assist: int3 -> #BP"
                    );
                    Next::Continue
                }
                Err(e) => Next::End(RunEnd::Error {
                    vp,
                    message: format!("injecting #BP for int3 failed: {e}"),
                }),
            };
        }
        let symbol = self
            .env
            .linux
            .as_ref()
            .and_then(|l| l.symbols.describe(regs.rip))
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        Next::End(RunEnd::Error {
            vp,
            message: format!(
                "KVM could not emulate the instruction at RIP {:#x}{symbol} (bytes {}); this KVM (PVM) emulates CPL0 code and lacks this instruction: hide the feature or avoid it in guest code (for Linux: clearcpuid=/noxsave on the command line), or add an emulation assist",
                regs.rip,
                hex(&bytes)
            ),
        })
    }

    /// Instruction bytes from the exit data (KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
    /// or, failing that, read from guest memory at RIP.
    fn instruction_bytes(
        &self,
        internal: &kvm_bindings::kvm_run__bindgen_ty_1__bindgen_ty_13,
        rip: u64,
    ) -> Vec<u8> {
        // Layout of the emulation_failure view: data[0] = flags, then insn_size (u8) and
        // up to 15 instruction bytes.
        if internal.ndata >= 2 && internal.data[0] & 1 != 0 {
            let raw: Vec<u8> = internal.data[1..3]
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            let size = usize::from(raw[0]).min(15);
            return raw[1..=size].to_vec();
        }
        let gpa = match self.fd.translate_gva(rip) {
            Ok(t) if t.valid != 0 => t.physical_address,
            _ => return Vec::new(),
        };
        let mut buf = [0u8; 15];
        for (i, b) in buf.iter_mut().enumerate() {
            match self.env.mem.read_obj::<u8>(GuestAddress(gpa + i as u64)) {
                Ok(v) => *b = v,
                Err(_) => return buf[..i].to_vec(),
            }
        }
        buf.to_vec()
    }
}

/// What an IN from a port without a device reads.
fn port_in_value(port: u16) -> u8 {
    match port {
        // i8042 status: both buffers empty, so a reboot through it does not wait.
        I8042_COMMAND_PORT | CMOS_DATA_PORT => 0,
        SLEEP_CONTROL_PORT | SLEEP_STATUS_PORT => 0,
        _ => 0xFF,
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "unavailable".into();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl VcpuEnv {
    fn mem_size(&self) -> u64 {
        use vm_memory::GuestMemoryBackend;
        self.mem.last_addr().0 + 1
    }

    fn io_out(&self, port: u16, data: &[u8]) -> Next {
        match port {
            p if (COM1..COM1 + 8).contains(&p) => {
                self.console.write((p - COM1) as u8, data[0]);
                Next::Continue
            }
            DEBUG_EXIT_PORT => {
                let mut v = [0u8; 4];
                v[..data.len()].copy_from_slice(data);
                Next::End(RunEnd::DebugExit {
                    code: u32::from_le_bytes(v),
                    vp: self.vp,
                })
            }
            HYPERCALL_PORT if data.len() == 4 => Next::Hypercall,
            I8042_COMMAND_PORT if data[0] == I8042_CMD_RESET => {
                Next::End(RunEnd::Reset { vp: self.vp })
            }
            SLEEP_CONTROL_PORT => match acpi::decode_sleep_control(data[0]) {
                SleepRequest::PowerOff => Next::End(RunEnd::PoweredOff { vp: self.vp }),
                SleepRequest::Other(t) => {
                    tracing::warn!(
                        vp = self.vp,
                        slp_typ = t,
                        "ACPI sleep state not supported; ignored"
                    );
                    Next::Continue
                }
                SleepRequest::None => Next::Continue,
            },
            _ => {
                tracing::trace!(
                    vp = self.vp,
                    port,
                    ?data,
                    "OUT to an unhandled port ignored"
                );
                Next::Continue
            }
        }
    }
}
