//! The one place where the KVM partition meets the Hyper-V emulation.
//!
//! The vCPU loop only sees [`HvPort`], a narrow view of `hv::Hypervisor`
//! with vmm-side types, so the partition layer can be built and tested
//! with or without the emulation (see [`NoHyperV`]).

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::error::VmmError;
use super::irq::{KvmGuestTsc, MsiInterruptSink};
use crate::hv;
use crate::ic::{HostIcs, IcConfig};
use crate::net::{NetExercise, NetReport, Nic};
use crate::storage::StorageController;
use crate::vmbus::echo::EchoVsp;
use crate::vmbus::{TraceWriter, VmbusOptions, VmbusServer, VmbusStats};

/// One CPUID leaf produced by the emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidEntry {
    /// EAX input.
    pub function: u32,
    /// ECX input (sub-leaf).
    pub index: u32,
    /// Output EAX.
    pub eax: u32,
    /// Output EBX.
    pub ebx: u32,
    /// Output ECX.
    pub ecx: u32,
    /// Output EDX.
    pub edx: u32,
}

/// Registers of a hypercall: in RCX/RDX/R8, out RAX (and RCX for rep restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HvRegs {
    /// Hypercall input value.
    pub rcx: u64,
    /// Input GPA or fast input.
    pub rdx: u64,
    /// Output GPA or fast input.
    pub r8: u64,
    /// Result value.
    pub rax: u64,
}

/// What the vCPU loop needs from the Hyper-V emulation.
pub trait HvPort: Send + Sync {
    /// Hypervisor CPUID leaves (0x40000000..).
    fn cpuid_leaves(&self) -> Vec<CpuidEntry>;
    /// RDMSR of a synthetic MSR; `None` makes the VMM inject #GP.
    fn msr_read(&self, vp: u32, msr: u32) -> Option<u64>;
    /// WRMSR of a synthetic MSR; `false` makes the VMM inject #GP.
    fn msr_write(&self, vp: u32, msr: u32, value: u64) -> bool;
    /// A hypercall through the trampoline port.
    fn hypercall(&self, vp: u32, regs: &mut HvRegs);
    /// The emulation's own counters (merged into the report as `hv`).
    fn stats(&self) -> serde_json::Value;
    /// Guest crash report (CRASH_CTL), if the guest reported one.
    fn crash(&self) -> Option<serde_json::Value>;
    /// How many message re-deliveries an EOM triggered, if the emulation counts them.
    fn eom_redeliveries(&self) -> Option<u64>;
    /// How many synthetic timers expired, if the emulation counts them.
    fn timer_expirations(&self) -> Option<u64>;
    /// Whether the partition may use the EOI MSR (AccessIntrCtrlRegs); the VMM
    /// then performs those EOIs on the in-kernel LAPIC.
    fn eoi_msr_granted(&self) -> bool {
        false
    }
    /// Back to power-on state.
    /// The VMBus server's counters, when the partition has one.
    fn vmbus_stats(&self) -> Option<VmbusStats> {
        None
    }
    /// The storage controller (storvsp), when the partition has one (the
    /// control API hot-adds and removes disks through it).
    fn storage(&self) -> Option<Arc<StorageController>> {
        None
    }
    /// The synthetic NICs (netvsp), in offer order (the control API sets
    /// their link state).
    fn nics(&self) -> Vec<Arc<Nic>> {
        Vec::new()
    }
    /// The network evidence for the report (NIC counters, the demo peer's),
    /// when the partition has NICs.
    fn net_report(&self) -> Option<NetReport> {
        None
    }
    /// The host integration components, when the partition has them (the
    /// control API drives them).
    fn ics(&self) -> Option<HostIcs> {
        None
    }
    fn reset(&self);
    /// Stops background threads (timers); idempotent.
    fn shutdown(&self);
}

/// What the partition hands to an emulation factory.
pub struct HvContext {
    /// Number of VPs (== KVM vCPUs).
    pub vp_count: u32,
    /// Guest TSC frequency in Hz (KVM_GET_TSC_KHZ * 1000).
    pub tsc_hz: u64,
    /// Guest RAM, shared with the partition.
    pub mem: GuestMemoryMmap,
    /// Interrupt delivery into the in-kernel LAPICs.
    pub irq: Arc<MsiInterruptSink>,
    /// The guest-visible TSC.
    pub tsc: Arc<KvmGuestTsc>,
}

/// Builds the emulation for a new partition.
pub type HvFactory = Arc<dyn Fn(HvContext) -> Result<Arc<dyn HvPort>, VmmError> + Send + Sync>;

/// True for the synthetic MSR range routed to the emulation.
pub fn is_hv_msr(msr: u32) -> bool {
    (0x4000_0000..=0x4000_01FF).contains(&msr)
}

/// A partition without Hyper-V enlightenments: no hypervisor leaves, every
/// synthetic MSR faults and every hypercall fails with
/// HV_STATUS_INVALID_HYPERCALL_CODE, as on a machine without the interface.
#[derive(Debug, Default)]
pub struct NoHyperV;

/// HV_STATUS_INVALID_HYPERCALL_CODE (TLFS "Hypercall status codes").
const HV_STATUS_INVALID_HYPERCALL_CODE: u64 = 2;

impl HvPort for NoHyperV {
    fn cpuid_leaves(&self) -> Vec<CpuidEntry> {
        Vec::new()
    }
    fn msr_read(&self, _vp: u32, _msr: u32) -> Option<u64> {
        None
    }
    fn msr_write(&self, _vp: u32, _msr: u32, _value: u64) -> bool {
        false
    }
    fn hypercall(&self, _vp: u32, regs: &mut HvRegs) {
        regs.rax = HV_STATUS_INVALID_HYPERCALL_CODE;
    }
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn crash(&self) -> Option<serde_json::Value> {
        None
    }
    fn eom_redeliveries(&self) -> Option<u64> {
        None
    }
    fn timer_expirations(&self) -> Option<u64> {
        None
    }
    fn reset(&self) {}
    fn shutdown(&self) {}
}

/// Factory for [`NoHyperV`].
pub fn no_hyperv() -> HvFactory {
    Arc::new(|_ctx| Ok(Arc::new(NoHyperV) as Arc<dyn HvPort>))
}

impl hv::InterruptSink for MsiInterruptSink {
    fn raise(&self, vp: u32, vector: u8) {
        MsiInterruptSink::raise(self, vp, vector);
    }
}

impl hv::GuestTsc for KvmGuestTsc {
    fn now(&self) -> u64 {
        KvmGuestTsc::now(self)
    }
}

impl HvPort for hv::Hypervisor {
    fn cpuid_leaves(&self) -> Vec<CpuidEntry> {
        hv::Hypervisor::cpuid_leaves(self)
            .into_iter()
            .map(|l| CpuidEntry {
                function: l.function,
                index: l.index,
                eax: l.eax,
                ebx: l.ebx,
                ecx: l.ecx,
                edx: l.edx,
            })
            .collect()
    }
    fn msr_read(&self, vp: u32, msr: u32) -> Option<u64> {
        hv::Hypervisor::msr_read(self, vp, msr).ok()
    }
    fn msr_write(&self, vp: u32, msr: u32, value: u64) -> bool {
        hv::Hypervisor::msr_write(self, vp, msr, value).is_ok()
    }
    fn hypercall(&self, vp: u32, regs: &mut HvRegs) {
        let mut r = hv::HypercallRegs {
            rcx: regs.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            rax: regs.rax,
        };
        hv::Hypervisor::hypercall(self, vp, &mut r);
        regs.rax = r.rax;
        regs.rcx = r.rcx;
    }
    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(hv::Hypervisor::stats(self)).unwrap_or(serde_json::Value::Null)
    }
    fn crash(&self) -> Option<serde_json::Value> {
        hv::Hypervisor::crash(self).and_then(|c| serde_json::to_value(c).ok())
    }
    fn eom_redeliveries(&self) -> Option<u64> {
        Some(hv::Hypervisor::stats(self).messages_redelivered_on_eom)
    }
    fn timer_expirations(&self) -> Option<u64> {
        Some(hv::Hypervisor::stats(self).timer_expirations)
    }
    fn eoi_msr_granted(&self) -> bool {
        self.config().features.privileges.access_intr_ctrl_regs()
    }
    fn reset(&self) {
        hv::Hypervisor::reset(self);
    }
    fn shutdown(&self) {
        hv::Hypervisor::shutdown(self);
    }
}

/// Factory for the Hyper-V emulation with `features`, plus the host test
/// services the bundled test guest talks to when `test_services` is set.
pub fn hyperv(features: hv::HvFeatures, test_services: bool) -> HvFactory {
    Arc::new(move |ctx: HvContext| {
        let cfg = hv::HvConfig {
            vp_count: ctx.vp_count,
            tsc_hz: ctx.tsc_hz,
            features: features.clone(),
        };
        let h = hv::Hypervisor::new(cfg, ctx.mem, ctx.irq, ctx.tsc)
            .map_err(|e| VmmError::Hv(e.to_string()))?;
        if test_services {
            h.install_test_services();
        }
        Ok(h as Arc<dyn HvPort>)
    })
}

/// The Hyper-V emulation with a VMBus server on it: what a partition is by default.
pub struct HyperVWithVmbus {
    hv: Arc<hv::Hypervisor>,
    vmbus: Arc<VmbusServer>,
    storage: Option<Arc<StorageController>>,
    nics: Vec<Arc<Nic>>,
    net_exercise: Option<Arc<NetExercise>>,
    ics: HostIcs,
}

impl HyperVWithVmbus {
    /// The emulation.
    pub fn hv(&self) -> &Arc<hv::Hypervisor> {
        &self.hv
    }
    /// The VMBus server.
    pub fn vmbus(&self) -> &Arc<VmbusServer> {
        &self.vmbus
    }
    /// The host integration components offered on the server.
    pub fn host_ics(&self) -> &HostIcs {
        &self.ics
    }
}

impl HvPort for HyperVWithVmbus {
    fn cpuid_leaves(&self) -> Vec<CpuidEntry> {
        HvPort::cpuid_leaves(&*self.hv)
    }
    fn msr_read(&self, vp: u32, msr: u32) -> Option<u64> {
        HvPort::msr_read(&*self.hv, vp, msr)
    }
    fn msr_write(&self, vp: u32, msr: u32, value: u64) -> bool {
        HvPort::msr_write(&*self.hv, vp, msr, value)
    }
    fn hypercall(&self, vp: u32, regs: &mut HvRegs) {
        HvPort::hypercall(&*self.hv, vp, regs)
    }
    fn stats(&self) -> serde_json::Value {
        HvPort::stats(&*self.hv)
    }
    fn crash(&self) -> Option<serde_json::Value> {
        HvPort::crash(&*self.hv)
    }
    fn eom_redeliveries(&self) -> Option<u64> {
        HvPort::eom_redeliveries(&*self.hv)
    }
    fn timer_expirations(&self) -> Option<u64> {
        HvPort::timer_expirations(&*self.hv)
    }
    fn eoi_msr_granted(&self) -> bool {
        HvPort::eoi_msr_granted(&*self.hv)
    }
    fn vmbus_stats(&self) -> Option<VmbusStats> {
        Some(self.vmbus.stats())
    }
    fn storage(&self) -> Option<Arc<StorageController>> {
        self.storage.clone()
    }
    fn nics(&self) -> Vec<Arc<Nic>> {
        self.nics.clone()
    }
    fn net_report(&self) -> Option<NetReport> {
        match &self.net_exercise {
            Some(e) => Some(e.report()),
            None if self.nics.is_empty() => None,
            None => Some(NetReport {
                nics: self
                    .nics
                    .iter()
                    .map(|n| crate::net::exercise::nic_report(n, false))
                    .collect(),
                peer: None,
            }),
        }
    }
    fn ics(&self) -> Option<HostIcs> {
        Some(self.ics.clone())
    }
    fn reset(&self) {
        // The bus first: it must not deliver into pages the reset is about to forget.
        self.vmbus.reset();
        HvPort::reset(&*self.hv);
    }
    fn shutdown(&self) {
        self.ics.stop();
        self.vmbus.shutdown();
        HvPort::shutdown(&*self.hv);
    }
}

/// What a partition with a VMBus server is built from: one options struct, so
/// a new device class adds a field rather than another factory.
#[derive(Clone, Default)]
pub struct VmbusPartitionOptions {
    /// The Hyper-V feature profile (CPUID, MSRs, hypercalls).
    pub features: hv::HvFeatures,
    /// Receives the decoded VMBus traffic (`--trace`).
    pub trace: Option<Arc<TraceWriter>>,
    /// The synthetic SCSI controller (storvsp, class
    /// ba6163d9-04a1-4d29-b605-72e2ffb1dc7f), offered when given.
    pub storage: Option<Arc<StorageController>>,
    /// Synthetic NICs (netvsp, class f8615163-df3e-46c5-913f-f2d2f965ed0e),
    /// each offered as its own device, in this order.
    pub net: Vec<Arc<Nic>>,
    /// The net exercise on those NICs (demo: link toggle, the host peer),
    /// kept for the report's evidence.
    pub net_exercise: Option<Arc<NetExercise>>,
    /// The bundled test guest's extras: the host test services (hypercall
    /// test codes) and the echo test device (docs/ARCHITECTURE.md, "VMBus
    /// test device"). Off for guests nobody here wrote (Linux), whose bus
    /// should carry only real device classes.
    pub test_devices: bool,
    /// The host ICs run their exercise script (`IcConfig::exercise`): only
    /// for the bare-metal test guest (`demo`), which answers it and ends its
    /// run on the power-off request.
    pub ic_exercise: bool,
}

impl VmbusPartitionOptions {
    /// The bundled test guest's partition: default features, test devices on.
    pub fn test_guest() -> Self {
        Self {
            test_devices: true,
            ..Self::default()
        }
    }
}

/// Hyper-V with a VMBus server offering the host integration components
/// (heartbeat, shutdown, time sync, KVP, VSS, file copy) and what `opts`
/// adds (test devices, storage).
pub fn hyperv_with_vmbus(opts: VmbusPartitionOptions) -> HvFactory {
    Arc::new(move |ctx: HvContext| {
        let cfg = hv::HvConfig {
            vp_count: ctx.vp_count,
            tsc_hz: ctx.tsc_hz,
            features: opts.features.clone(),
        };
        let h = hv::Hypervisor::new(cfg, ctx.mem, ctx.irq, ctx.tsc)
            .map_err(|e| VmmError::Hv(e.to_string()))?;
        let vmbus = VmbusServer::new(
            h.clone(),
            VmbusOptions {
                trace: opts.trace.clone(),
            },
        )
        .map_err(|e| VmmError::Hv(format!("VMBus server: {e}")))?;
        if opts.test_devices {
            h.install_test_services();
            vmbus
                .add_device(Box::new(EchoVsp::new(0)))
                .map_err(|e| VmmError::Hv(format!("VMBus echo device: {e}")))?;
        }
        if let Some(storage) = &opts.storage {
            vmbus
                .add_device(storage.vsp())
                .map_err(|e| VmmError::Hv(format!("VMBus storage controller: {e}")))?;
        }
        for nic in &opts.net {
            vmbus
                .add_device(nic.vsp())
                .map_err(|e| VmmError::Hv(format!("VMBus NIC {}: {e}", nic.name())))?;
        }
        let clock = Arc::downgrade(&h);
        let mut ic_cfg = IcConfig::new(Arc::new(move || {
            clock.upgrade().map_or(0, |h| h.reference_time())
        }));
        ic_cfg.trace = opts.trace.clone();
        ic_cfg.exercise = opts.ic_exercise;
        let ics = HostIcs::new(ic_cfg)
            .map_err(|e| VmmError::Hv(format!("integration components: {e}")))?;
        ics.register(&vmbus)
            .map_err(|e| VmmError::Hv(format!("VMBus integration components: {e}")))?;
        Ok(Arc::new(HyperVWithVmbus {
            hv: h,
            vmbus,
            ics,
            storage: opts.storage.clone(),
            nics: opts.net.clone(),
            net_exercise: opts.net_exercise.clone(),
        }) as Arc<dyn HvPort>)
    })
}

/// The emulation a partition gets unless the caller picks another: Hyper-V
/// with the recommended feature profile, the host test services and a VMBus
/// server with the echo test device.
pub fn default_factory() -> HvFactory {
    hyperv_with_vmbus(VmbusPartitionOptions::test_guest())
}
