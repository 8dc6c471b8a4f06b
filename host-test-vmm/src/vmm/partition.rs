//! A partition: a KVM VM with guest RAM, N vCPU threads and a lifecycle
//! (create, start, pause, resume, reset, stop).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_lapic_state, kvm_mp_state, kvm_userspace_memory_region,
    KVM_CAP_X86_USER_SPACE_MSR, KVM_MP_STATE_RUNNABLE, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN, KVM_SYNC_X86_REGS,
};
use kvm_ioctls::{
    Cap, Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::boot;
use super::console::Console;
use super::cpuid;
use super::elf::ElfImage;
use super::error::VmmError;
use super::hv_glue::{HvContext, HvPort};
use super::irq::{KvmGuestTsc, MsiInterruptSink};
use super::linux::{self, LinuxBoot, LoadedLinux};
use super::report::{self, Report};
use super::stats::ExitStats;
use super::vcpu::{self, RunEnd, Shared, Vcpu, VcpuEnv, Want};
use super::VmConfig;

/// TSS area KVM needs on Intel VMX hosts (three pages just below the BIOS area).
const TSS_ADDRESS: usize = 0xFFFB_D000;
/// LAPIC spurious-interrupt vector register offset.
const APIC_SVR: usize = 0xF0;

/// What the partition boots, kept so a reset can load it again.
enum GuestImage {
    /// hvkit's direct protocol (the bundled test guest).
    Hvkit(ElfImage),
    /// A Linux kernel.
    Linux {
        kernel: Vec<u8>,
        boot: LinuxBoot,
        loaded: Arc<LoadedLinux>,
    },
}

/// What this KVM offers, measured at partition creation.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct KvmFacts {
    /// KVM_CAP_SYNC_REGS includes the general-purpose registers.
    pub sync_regs: bool,
    /// KVM_GET_TSC_KHZ of vCPU 0.
    pub tsc_khz: u64,
}

/// A KVM partition.
pub struct Partition {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    image: GuestImage,
    vp_count: u32,
    memory: u64,
    facts: KvmFacts,
    created: Vec<Vcpu>,
    threads: Vec<(u32, JoinHandle<()>)>,
    shared: Arc<Shared>,
    hv: Arc<dyn HvPort>,
    irq: Arc<MsiInterruptSink>,
    tsc: Arc<KvmGuestTsc>,
    stats: Arc<ExitStats>,
    console: Arc<Console>,
    started: bool,
    stopped: bool,
}

fn open_kvm() -> Result<Kvm, VmmError> {
    open_kvm_at(c"/dev/kvm")
}

/// Opens a KVM device node, mapping the errors a user can fix to their own variants.
pub(crate) fn open_kvm_at(path: &std::ffi::CStr) -> Result<Kvm, VmmError> {
    Kvm::new_with_path(path).map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmmError::NoKvm,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::KvmOpen(e),
    })
}

fn require(kvm: &Kvm, cap: Cap, name: &'static str) -> Result<(), VmmError> {
    if kvm.check_extension(cap) {
        Ok(())
    } else {
        Err(VmmError::MissingCapability(name))
    }
}

impl Partition {
    /// Creates the VM, its memory and vCPUs and loads the guest; nothing runs yet.
    pub fn create(cfg: &VmConfig) -> Result<Self, VmmError> {
        boot::check_limits(cfg.memory, cfg.cpus)?;
        let hvkit_image = match &cfg.linux {
            None => Some(ElfImage::parse(&cfg.kernel, cfg.memory)?),
            Some(_) => None,
        };
        let kvm = open_kvm()?;
        require(&kvm, Cap::Irqchip, "KVM_CAP_IRQCHIP")?;
        require(&kvm, Cap::SignalMsi, "KVM_CAP_SIGNAL_MSI")?;
        require(&kvm, Cap::X86UserSpaceMsr, "KVM_CAP_X86_USER_SPACE_MSR")?;
        require(&kvm, Cap::X86MsrFilter, "KVM_CAP_X86_MSR_FILTER")?;
        require(&kvm, Cap::GetTscKhz, "KVM_CAP_GET_TSC_KHZ")?;
        require(&kvm, Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT")?;
        let sync_regs = cfg.use_sync_regs
            && (kvm.check_extension_int(Cap::SyncRegs) as u32) & KVM_SYNC_X86_REGS != 0;

        let vm = Arc::new(kvm.create_vm().map_err(VmmError::kvm("KVM_CREATE_VM"))?);
        vm.set_tss_address(TSS_ADDRESS)
            .map_err(VmmError::kvm("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(VmmError::kvm("KVM_CREATE_IRQCHIP"))?;
        // Synthetic MSRs exit to userspace: KVM would otherwise handle (or #GP) them in-kernel.
        let cap = kvm_enable_cap {
            cap: KVM_CAP_X86_USER_SPACE_MSR,
            args: [
                u64::from(
                    KVM_MSR_EXIT_REASON_UNKNOWN
                        | KVM_MSR_EXIT_REASON_INVAL
                        | KVM_MSR_EXIT_REASON_FILTER,
                ),
                0,
                0,
                0,
            ],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(VmmError::kvm("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
        let deny_all = [0u8; 0x200 / 8];
        vm.set_msr_filter(
            MsrFilterDefaultAction::ALLOW,
            &[MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base: 0x4000_0000,
                msr_count: 0x200,
                bitmap: &deny_all,
            }],
        )
        .map_err(VmmError::kvm("KVM_X86_SET_MSR_FILTER"))?;

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), cfg.memory as usize)]).map_err(
            |e| {
                VmmError::Memory(format!(
                    "cannot allocate {} bytes of guest RAM: {e}",
                    cfg.memory
                ))
            },
        )?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mmap of `region.len()` bytes owned by `mem` (and its
            // clones); the partition drops its VM fd before `mem`, and every vCPU thread is
            // joined before either, so KVM never touches the range after it is unmapped.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(VmmError::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        let image = match (hvkit_image, &cfg.linux) {
            (Some(elf), _) => {
                boot::load(&mem, &elf)?;
                GuestImage::Hvkit(elf)
            }
            (None, Some(lb)) => {
                let loaded = linux::load(&mem, cfg.memory, cfg.cpus, &cfg.kernel, lb)?;
                GuestImage::Linux {
                    kernel: cfg.kernel.clone(),
                    boot: lb.clone(),
                    loaded: Arc::new(loaded),
                }
            }
            (None, None) => unreachable!("an image is parsed unless cfg.linux is set"),
        };
        let linux_loaded = match &image {
            GuestImage::Linux { loaded, .. } => Some(loaded.clone()),
            GuestImage::Hvkit(_) => None,
        };
        let entry = match &image {
            GuestImage::Hvkit(elf) => elf.entry,
            GuestImage::Linux { loaded, .. } => loaded.entry,
        };

        let mut fds: Vec<VcpuFd> = Vec::new();
        for vp in 0..cfg.cpus {
            fds.push(
                vm.create_vcpu(u64::from(vp))
                    .map_err(VmmError::kvm("KVM_CREATE_VCPU"))?,
            );
        }
        let tsc = Arc::new(KvmGuestTsc::measure(&fds[0])?);
        let irq = Arc::new(MsiInterruptSink::new(vm.clone()));
        let hv = (cfg.hv)(HvContext {
            vp_count: cfg.cpus,
            tsc_hz: tsc.hz(),
            mem: mem.clone(),
            irq: irq.clone(),
            tsc: tsc.clone(),
        })?;
        let host_cpuid = cpuid::host_supported(&kvm)?;
        let guest_cpuid = cpuid::filter(&host_cpuid, &hv.cpuid_leaves());

        let shared = Arc::new(Shared::new(cfg.cpus));
        let stats = Arc::new(ExitStats::default());
        let console = Arc::new(Console::new(&cfg.serial)?);
        let mut created = Vec::new();
        for (vp, fd) in (0u32..).zip(fds) {
            fd.set_cpuid2(&cpuid::for_vcpu(&guest_cpuid, vp)?)
                .map_err(VmmError::kvm("KVM_SET_CPUID2"))?;
            let lapic = match &linux_loaded {
                None => {
                    boot::setup_vcpu(&fd, vp, cfg.cpus, cfg.memory, entry)?;
                    // With an in-kernel irqchip KVM parks application processors until
                    // INIT/SIPI; the protocol starts every vCPU at the entry point.
                    fd.set_mp_state(kvm_mp_state {
                        mp_state: KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(VmmError::kvm("KVM_SET_MP_STATE"))?;
                    software_enable_lapic(&fd)?
                }
                Some(loaded) => {
                    // Linux starts on the BSP and wakes the others with INIT/SIPI itself.
                    if vp == 0 {
                        linux::setup_boot_vcpu(&fd, loaded)?;
                    }
                    fd.get_lapic().map_err(VmmError::kvm("KVM_GET_LAPIC"))?
                }
            };
            created.push(Vcpu::new(
                fd,
                VcpuEnv {
                    vp,
                    vp_count: cfg.cpus,
                    entry,
                    linux: linux_loaded.clone(),
                    mem: mem.clone(),
                    shared: shared.clone(),
                    hv: hv.clone(),
                    stats: stats.clone(),
                    console: console.clone(),
                    sync_regs,
                    emulation_assist: cfg.emulation_assist,
                    initial_lapic: lapic,
                    irq: irq.clone(),
                },
            ));
        }
        let facts = KvmFacts {
            sync_regs,
            tsc_khz: tsc.hz() / 1000,
        };
        tracing::info!(
            cpus = cfg.cpus,
            memory = cfg.memory,
            entry = format_args!("{entry:#x}"),
            linux = linux_loaded.is_some(),
            ?facts,
            "partition created"
        );
        Ok(Self {
            _kvm: kvm,
            vm,
            mem,
            image,
            vp_count: cfg.cpus,
            memory: cfg.memory,
            facts,
            created,
            threads: Vec::new(),
            shared,
            hv,
            irq,
            tsc,
            stats,
            console,
            started: false,
            stopped: false,
        })
    }

    /// Starts one thread per vCPU.
    pub fn start(&mut self) -> Result<(), VmmError> {
        if self.started {
            return Err(VmmError::Lifecycle("partition already started"));
        }
        vcpu::install_kick_handler()?;
        self.started = true;
        for v in self.created.drain(..) {
            let vp = v.env.vp;
            self.shared.lock().live += 1;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{vp}"))
                .spawn(move || v.run_thread());
            match h {
                Ok(h) => self.threads.push((vp, h)),
                Err(e) => {
                    self.shared.lock().live -= 1;
                    self.shared.finish(RunEnd::Error {
                        vp,
                        message: format!("cannot spawn thread: {e}"),
                    });
                    return Err(VmmError::Thread(e));
                }
            }
        }
        Ok(())
    }

    /// Stops every vCPU at its next exit and waits until all are parked.
    pub fn pause(&self) -> Result<(), VmmError> {
        if !self.started || self.stopped {
            return Err(VmmError::Lifecycle(
                "pause needs a started, not yet stopped partition",
            ));
        }
        let mut ctl = self.shared.lock();
        if ctl.want == Want::Stop {
            return Err(VmmError::Lifecycle("the run has already ended"));
        }
        ctl.want = Want::Pause;
        self.shared.attention.store(true, Ordering::Release);
        Shared::kick_all(&ctl);
        while ctl.paused < ctl.live && ctl.want == Want::Pause {
            ctl = self.shared.cv.wait(ctl).unwrap_or_else(|p| p.into_inner());
        }
        if ctl.want != Want::Pause {
            return Err(VmmError::Lifecycle("the run ended while pausing"));
        }
        Ok(())
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> Result<(), VmmError> {
        let mut ctl = self.shared.lock();
        if ctl.want != Want::Pause {
            return Err(VmmError::Lifecycle("resume needs a paused partition"));
        }
        ctl.want = Want::Run;
        self.shared.attention.store(false, Ordering::Release);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Number of vCPU threads currently parked by [`pause`](Self::pause).
    pub fn paused_vcpus(&self) -> u32 {
        self.shared.lock().paused
    }

    /// Number of vCPU threads alive.
    pub fn live_vcpus(&self) -> u32 {
        self.shared.lock().live
    }

    /// Back to power-on: RAM reloaded from the image, emulation reset, every vCPU
    /// at the entry point again. A started partition is paused and resumed around it.
    /// The guest TSC keeps counting (the reference clock stays monotonic).
    pub fn reset(&mut self) -> Result<(), VmmError> {
        if self.stopped {
            return Err(VmmError::Lifecycle("a stopped partition cannot be reset"));
        }
        let running = self.started;
        if running {
            self.pause()?;
        }
        for region in self.mem.iter() {
            let host = self
                .mem
                .get_host_address(region.start_addr())
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            // SAFETY: `host` is the start of a mapping of exactly `region.len()` bytes owned by
            // `self.mem`; every vCPU is parked, so nothing else writes it concurrently.
            unsafe { std::ptr::write_bytes(host, 0, region.len() as usize) };
        }
        match &self.image {
            GuestImage::Hvkit(elf) => boot::load(&self.mem, elf)?,
            GuestImage::Linux { kernel, boot, .. } => {
                linux::load(&self.mem, self.memory, self.vp_count, kernel, boot)?;
            }
        }
        self.hv.reset();
        self.stats.clear();
        self.irq.clear();
        self.console.clear_checks();
        if running {
            self.shared.lock().reset_gen += 1;
            self.resume()?;
        }
        Ok(())
    }

    /// Stops every vCPU (kick + join) and the emulation's threads. Idempotent.
    pub fn stop(&mut self) -> Result<(), VmmError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        {
            let mut ctl = self.shared.lock();
            if ctl.end.is_none() {
                ctl.end = Some(RunEnd::Stopped);
            }
            ctl.want = Want::Stop;
            self.shared.attention.store(true, Ordering::Release);
            Shared::kick_all(&ctl);
            self.shared.cv.notify_all();
        }
        let mut panicked = None;
        for (vp, h) in self.threads.drain(..) {
            if h.join().is_err() {
                panicked = Some(vp);
            }
        }
        self.hv.shutdown();
        self.console.flush();
        match panicked {
            Some(vp) => Err(VmmError::VcpuPanicked(vp)),
            None => Ok(()),
        }
    }

    /// Waits until the run ends (debug exit, fault, error, stop) or `timeout`
    /// passes (then `None`; the partition keeps running).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<RunEnd> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ctl = self.shared.lock();
        loop {
            if let Some(end) = &ctl.end {
                return Some(end.clone());
            }
            match deadline {
                None => ctl = self.shared.cv.wait(ctl).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    ctl = self
                        .shared
                        .cv
                        .wait_timeout(ctl, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Ends the run with `end` (unless it already ended) and kicks every vCPU out;
    /// [`stop`](Self::stop) still joins the threads.
    pub fn end_run(&self, end: RunEnd) {
        self.shared.finish(end);
    }

    /// Builds the report from what the guest printed and what the host saw.
    pub fn report(&self, expected: &[&str]) -> Report {
        let end = self.shared.lock().end.clone().unwrap_or(RunEnd::Stopped);
        report::build(report::Inputs {
            expected,
            checks: self.console.checks(),
            exits: self.stats.snapshot(),
            interrupts: self.irq.counts(),
            hv_stats: self.hv.stats(),
            crash: self.hv.crash(),
            eom_redeliveries: self.hv.eom_redeliveries(),
            timer_expirations: self.hv.timer_expirations(),
            vmbus: self.hv.vmbus_stats(),
            net: self.hv.net_report(),
            end,
        })
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }
    /// The VM fd.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }
    /// Interrupt delivery into the guest (the emulation's InterruptSink).
    pub fn interrupts(&self) -> &Arc<MsiInterruptSink> {
        &self.irq
    }
    /// The guest-visible TSC.
    pub fn guest_tsc(&self) -> &Arc<KvmGuestTsc> {
        &self.tsc
    }
    /// The serial console.
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }
    /// Exit counters.
    pub fn exit_stats(&self) -> &Arc<ExitStats> {
        &self.stats
    }
    /// The emulation.
    pub fn hv(&self) -> &Arc<dyn HvPort> {
        &self.hv
    }
    /// What this KVM offers.
    pub fn facts(&self) -> KvmFacts {
        self.facts
    }
    /// vCPU count.
    pub fn vp_count(&self) -> u32 {
        self.vp_count
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the partition on drop");
        }
    }
}

/// Sets the LAPIC software-enable bit (SVR = 0x1FF) so bare-metal guests only need
/// an IDT and `sti` to take interrupts; returns the resulting state for resets.
fn software_enable_lapic(fd: &VcpuFd) -> Result<kvm_lapic_state, VmmError> {
    let mut lapic = fd.get_lapic().map_err(VmmError::kvm("KVM_GET_LAPIC"))?;
    let svr: u32 = 0x1FF;
    for (i, b) in svr.to_le_bytes().iter().enumerate() {
        lapic.regs[APIC_SVR + i] = *b as libc::c_char;
    }
    fd.set_lapic(&lapic)
        .map_err(VmmError::kvm("KVM_SET_LAPIC"))?;
    Ok(lapic)
}
