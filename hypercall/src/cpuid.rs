//! Hypervisor discovery through CPUID (fact sheet §1).
//!
//! The leaves 0x40000000..=0x4000000A are decoded into [`HvCpuidInfo`]; [`HvCpuidInfo::leaf`]
//! encodes them back, so the host emulation produces its CPUID entries from the same types.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;

/// Standard leaf 1; ECX bit 31 is the "hypervisor present" bit (fact sheet §1.1).
pub const LEAF_STANDARD_FEATURES: u32 = 0x0000_0001;
/// Bit of CPUID.1:ECX that says a hypervisor is present (fact sheet §1.1).
pub const HYPERVISOR_PRESENT_ECX_BIT: u32 = 31;

/// Highest hypervisor leaf (EAX) and vendor signature (EBX:ECX:EDX).
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// Hypervisor interface signature ("Hv#1" in EAX).
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// Hypervisor version (build, major.minor, service pack, branch).
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// Partition privileges (EAX, EBX), misc (ECX) and feature flags (EDX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// Implementation recommendations (EAX), spinlock retries (EBX), physical address bits (ECX).
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// Implementation limits (max VPs, max LPs, interrupt-remap vectors).
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// Hardware features in use by the hypervisor.
pub const LEAF_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// CPU management features (root partition only).
pub const LEAF_CPU_MANAGEMENT: u32 = 0x4000_0007;
/// SVM features (root partition only).
pub const LEAF_SVM_FEATURES: u32 = 0x4000_0008;
/// Nested hypervisor feature identification.
pub const LEAF_NESTED_HYPERVISOR_FEATURES: u32 = 0x4000_0009;
/// Nested virtualization features (eVMCS version in EAX 15:0).
pub const LEAF_NESTED_VIRTUALIZATION_FEATURES: u32 = 0x4000_000A;
/// Isolation configuration (read only when privilege EBX bit 22 is set).
pub const LEAF_ISOLATION_CONFIG: u32 = 0x4000_000C;

/// The vendor signature Linux requires: "Microsoft Hv" (fact sheet §0, §1.1).
pub const VENDOR_MICROSOFT_HV: [u8; 12] = *b"Microsoft Hv";
/// The interface signature "Hv#1" in EAX of leaf 0x40000001 (fact sheet §0).
pub const INTERFACE_HV1: u32 = 0x3123_7648;
/// The smallest highest-leaf value Linux accepts (fact sheet §1.1).
pub const LINUX_MIN_MAX_LEAF: u32 = 0x4000_0005;
/// The largest highest-leaf value Linux accepts (fact sheet §1.1).
pub const LINUX_MAX_MAX_LEAF: u32 = 0x4000_FFFF;

/// The four registers a CPUID instruction returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidResult {
    /// All four registers.
    pub const fn new(eax: u32, ebx: u32, ecx: u32, edx: u32) -> Self {
        Self { eax, ebx, ecx, edx }
    }
}

/// Packs a 12-byte signature into EBX, ECX, EDX (little-endian, 4 bytes each).
pub const fn signature_to_regs(sig: &[u8; 12]) -> [u32; 3] {
    [
        u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]),
        u32::from_le_bytes([sig[4], sig[5], sig[6], sig[7]]),
        u32::from_le_bytes([sig[8], sig[9], sig[10], sig[11]]),
    ]
}

/// Unpacks EBX, ECX, EDX into a 12-byte signature.
pub const fn regs_to_signature(ebx: u32, ecx: u32, edx: u32) -> [u8; 12] {
    let b = ebx.to_le_bytes();
    let c = ecx.to_le_bytes();
    let d = edx.to_le_bytes();
    [
        b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3],
    ]
}

/// HV_PARTITION_PRIVILEGE_MASK: leaf 0x40000003 EAX (bits 31:0) | EBX << 32 (fact sheet §1.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct PartitionPrivileges {
    /// Bit 0: VP_RUNTIME MSR.
    pub access_vp_runtime_reg: bool,
    /// Bit 1: TIME_REF_COUNT MSR.
    pub access_partition_reference_counter: bool,
    /// Bit 2: SynIC MSRs (SCONTROL..EOM, SINT0-15).
    pub access_synic_regs: bool,
    /// Bit 3: synthetic timer MSRs.
    pub access_synthetic_timer_regs: bool,
    /// Bit 4: EOI/ICR/TPR MSRs and the VP assist page.
    pub access_intr_ctrl_regs: bool,
    /// Bit 5: GUEST_OS_ID and HYPERCALL MSRs (mandatory for Linux).
    pub access_hypercall_msrs: bool,
    /// Bit 6: VP_INDEX MSR (mandatory for Linux).
    pub access_vp_index: bool,
    /// Bit 7: RESET MSR.
    pub access_reset_reg: bool,
    /// Bit 8: statistics pages.
    pub access_stats_reg: bool,
    /// Bit 9: REFERENCE_TSC MSR (the TSC page).
    pub access_partition_reference_tsc: bool,
    /// Bit 10: GUEST_IDLE MSR.
    pub access_guest_idle_reg: bool,
    /// Bit 11: TSC_FREQUENCY / APIC_FREQUENCY MSRs.
    pub access_frequency_regs: bool,
    /// Bit 12: reserved.
    #[bits(1)]
    pub reserved_12: u8,
    /// Bit 13: reenlightenment control MSRs.
    pub access_reenlightenment_controls: bool,
    /// Bit 14: reserved.
    #[bits(1)]
    pub reserved_14: u8,
    /// Bit 15: TSC_INVARIANT_CONTROL MSR.
    pub access_tsc_invariant_controls: bool,
    /// Bits 31:16: reserved.
    #[bits(16)]
    pub reserved_16: u16,
    /// Bit 32 (EBX 0): CreatePartitions.
    pub create_partitions: bool,
    /// Bit 33 (EBX 1): AccessPartitionId (HvCallGetPartitionId).
    pub access_partition_id: bool,
    /// Bit 34 (EBX 2): AccessMemoryPool.
    pub access_memory_pool: bool,
    /// Bit 35 (EBX 3): AdjustMessageBuffers (Linux) / reserved (TLFS).
    pub adjust_message_buffers: bool,
    /// Bit 36 (EBX 4): PostMessages.
    pub post_messages: bool,
    /// Bit 37 (EBX 5): SignalEvents.
    pub signal_events: bool,
    /// Bit 38 (EBX 6): CreatePort.
    pub create_port: bool,
    /// Bit 39 (EBX 7): ConnectPort.
    pub connect_port: bool,
    /// Bit 40 (EBX 8): AccessStats.
    pub access_stats: bool,
    /// Bits 42:41 (EBX 10:9): reserved.
    #[bits(2)]
    pub reserved_41: u8,
    /// Bit 43 (EBX 11): Debugging.
    pub debugging: bool,
    /// Bit 44 (EBX 12): CpuManagement (root partition; never set for a guest).
    pub cpu_management: bool,
    /// Bits 47:45 (EBX 15:13): reserved.
    #[bits(3)]
    pub reserved_45: u8,
    /// Bit 48 (EBX 16): AccessVSM.
    pub access_vsm: bool,
    /// Bit 49 (EBX 17): AccessVpRegisters.
    pub access_vp_registers: bool,
    /// Bits 51:50 (EBX 19:18): reserved.
    #[bits(2)]
    pub reserved_50: u8,
    /// Bit 52 (EBX 20): EnableExtendedHypercalls.
    pub enable_extended_hypercalls: bool,
    /// Bit 53 (EBX 21): StartVirtualProcessor.
    pub start_virtual_processor: bool,
    /// Bit 54 (EBX 22): Isolation (confidential VM).
    pub isolation: bool,
    /// Bits 63:55: reserved.
    #[bits(9)]
    pub reserved_55: u16,
}

impl PartitionPrivileges {
    /// Builds the mask from leaf 0x40000003 EAX (low half) and EBX (high half).
    pub const fn from_regs(eax: u32, ebx: u32) -> Self {
        Self::from_bits(eax as u64 | (ebx as u64) << 32)
    }
    /// The low half (leaf 0x40000003 EAX).
    pub const fn eax(self) -> u32 {
        self.into_bits() as u32
    }
    /// The high half (leaf 0x40000003 EBX).
    pub const fn ebx(self) -> u32 {
        (self.into_bits() >> 32) as u32
    }
}

/// Feature flags: leaf 0x40000003 EDX (fact sheet §1.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct FeatureFlags {
    /// Bit 0: MWAIT (deprecated).
    pub mwait: bool,
    /// Bit 1: guest debugging.
    pub guest_debugging: bool,
    /// Bit 2: performance monitor.
    pub performance_monitor: bool,
    /// Bit 3: dynamic partitioning events.
    pub dynamic_partitioning_events: bool,
    /// Bit 4: XMM fast-hypercall input.
    pub xmm_hypercall_input: bool,
    /// Bit 5: guest idle state.
    pub guest_idle: bool,
    /// Bit 6: hypervisor sleep state.
    pub hypervisor_sleep_state: bool,
    /// Bit 7: NUMA distance query.
    pub numa_distance_query: bool,
    /// Bit 8: timer-frequency MSRs available.
    pub frequency_msrs: bool,
    /// Bit 9: synthetic machine-check injection.
    pub synthetic_machine_check: bool,
    /// Bit 10: guest crash MSRs.
    pub guest_crash_msrs: bool,
    /// Bit 11: debug MSRs.
    pub debug_msrs: bool,
    /// Bit 12: NPIEP.
    pub npiep: bool,
    /// Bit 13: DisableHypervisorAvailable.
    pub disable_hypervisor_available: bool,
    /// Bit 14: extended GVA ranges for flush.
    pub extended_gva_ranges_for_flush: bool,
    /// Bit 15: XMM fast-hypercall output.
    pub xmm_hypercall_output: bool,
    /// Bit 16: reserved.
    #[bits(1)]
    pub reserved_16: u8,
    /// Bit 17: SINT polling mode.
    pub sint_polling_mode: bool,
    /// Bit 18: HYPERCALL MSR lock.
    pub hypercall_msr_lock: bool,
    /// Bit 19: direct-mode synthetic timers.
    pub direct_synthetic_timers: bool,
    /// Bit 20: PAT register for VSM.
    pub register_pat_vsm: bool,
    /// Bit 21: BNDCFGS register for VSM.
    pub register_bndcfgs_vsm: bool,
    /// Bit 22: reserved.
    #[bits(1)]
    pub reserved_22: u8,
    /// Bit 23: synthetic time-unhalted timer.
    pub synthetic_time_unhalted_timer: bool,
    /// Bits 25:24: reserved.
    #[bits(2)]
    pub reserved_24: u8,
    /// Bit 26: LBR.
    pub lbr: bool,
    /// Bits 31:27: reserved.
    #[bits(5)]
    pub reserved_27: u8,
}

/// Implementation recommendations: leaf 0x40000004 EAX (fact sheet §1.3).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct Recommendations {
    /// Bit 0: use a hypercall for address-space switches.
    pub use_hypercall_for_address_space_switch: bool,
    /// Bit 1: use a hypercall for local TLB flushes.
    pub use_hypercall_for_local_flush: bool,
    /// Bit 2: use a hypercall for remote TLB flushes.
    pub use_hypercall_for_remote_flush: bool,
    /// Bit 3: use the MSRs for APIC EOI/ICR/TPR.
    pub use_apic_msrs: bool,
    /// Bit 4: use the RESET MSR.
    pub use_reset_msr: bool,
    /// Bit 5: relaxed timing.
    pub use_relaxed_timing: bool,
    /// Bit 6: DMA remapping.
    pub use_dma_remapping: bool,
    /// Bit 7: interrupt remapping.
    pub use_interrupt_remapping: bool,
    /// Bit 8: use the x2APIC MSRs.
    pub use_x2apic_msrs: bool,
    /// Bit 9: AutoEOI is deprecated (leave the SINT AutoEOI bit clear).
    pub deprecate_auto_eoi: bool,
    /// Bit 10: use HvCallSendSyntheticClusterIpi.
    pub use_synthetic_cluster_ipi: bool,
    /// Bit 11: use the Ex processor masks.
    pub use_ex_processor_masks: bool,
    /// Bit 12: running nested under Hyper-V (use the nested SynIC MSRs).
    pub nested: bool,
    /// Bit 13: reserved.
    #[bits(1)]
    pub reserved_13: u8,
    /// Bit 14: enlightened VMCS.
    pub use_enlightened_vmcs: bool,
    /// Bits 17:15: reserved.
    #[bits(3)]
    pub reserved_15: u8,
    /// Bit 18: no non-architectural core sharing.
    pub no_non_architectural_core_sharing: bool,
    /// Bits 20:19: reserved.
    #[bits(2)]
    pub reserved_19: u8,
    /// Bit 21: use MMIO hypercalls.
    pub use_mmio_hypercalls: bool,
    /// Bits 31:22: reserved.
    #[bits(10)]
    pub reserved_22: u16,
}

/// Hardware features in use: leaf 0x40000006 EAX (fact sheet §1.1).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct HardwareFeatures {
    /// Bit 0: APIC overlay assist in use.
    pub apic_overlay_assist: bool,
    /// Bit 1: MSR bitmaps in use.
    pub msr_bitmaps: bool,
    /// Bit 2: architectural performance counters in use.
    pub architectural_performance_counters: bool,
    /// Bit 3: second-level address translation in use.
    pub second_level_address_translation: bool,
    /// Bit 4: DMA remapping in use.
    pub dma_remapping: bool,
    /// Bit 5: interrupt remapping in use.
    pub interrupt_remapping: bool,
    /// Bit 6: memory patrol scrubber present.
    pub memory_patrol_scrubber: bool,
    /// Bit 7: DMA protection in use.
    pub dma_protection: bool,
    /// Bit 8: HPET requested.
    pub hpet_requested: bool,
    /// Bit 9: synthetic timers are volatile.
    pub synthetic_timers_volatile: bool,
    /// Bits 13:10: hypervisor nesting level.
    #[bits(4)]
    pub hypervisor_level: u8,
    /// Bits 31:14: other or reserved.
    #[bits(18)]
    pub reserved_14: u32,
}

/// Hypervisor version: leaf 0x40000002 (fact sheet §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct HvVersion {
    /// EAX: build number.
    pub build: u32,
    /// EBX 31:16: major version.
    pub major: u16,
    /// EBX 15:0: minor version.
    pub minor: u16,
    /// ECX: service pack.
    pub service_pack: u32,
    /// EDX 31:24: service branch.
    pub service_branch: u8,
    /// EDX 23:0: service number.
    pub service_number: u32,
}

impl HvVersion {
    /// Decodes leaf 0x40000002.
    pub const fn from_regs(r: CpuidResult) -> Self {
        Self {
            build: r.eax,
            major: (r.ebx >> 16) as u16,
            minor: r.ebx as u16,
            service_pack: r.ecx,
            service_branch: (r.edx >> 24) as u8,
            service_number: r.edx & 0x00FF_FFFF,
        }
    }
    /// Encodes leaf 0x40000002 (service number truncated to 24 bits).
    pub const fn to_regs(self) -> CpuidResult {
        CpuidResult::new(
            self.build,
            (self.major as u32) << 16 | self.minor as u32,
            self.service_pack,
            (self.service_branch as u32) << 24 | (self.service_number & 0x00FF_FFFF),
        )
    }
}

/// Implementation limits: leaf 0x40000005.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ImplementationLimits {
    /// EAX: maximum virtual processors (0 = not reported).
    pub max_virtual_processors: u32,
    /// EBX: maximum logical processors (0 = not reported).
    pub max_logical_processors: u32,
    /// ECX: maximum interrupt vectors for interrupt remapping.
    pub max_interrupt_remap_vectors: u32,
}

/// Everything the hypervisor leaves say, decoded. Leaves above the reported highest leaf read as
/// zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct HvCpuidInfo {
    /// Highest hypervisor leaf (leaf 0x40000000 EAX).
    pub max_leaf: u32,
    /// Vendor signature (leaf 0x40000000 EBX:ECX:EDX).
    pub vendor: [u8; 12],
    /// Interface signature (leaf 0x40000001 EAX); [`INTERFACE_HV1`] for a Hyper-V compatible host.
    pub interface: u32,
    /// Leaf 0x40000002.
    pub version: HvVersion,
    /// Leaf 0x40000003 EAX | EBX << 32.
    pub privileges: PartitionPrivileges,
    /// Leaf 0x40000003 ECX (power-management and misc; not decoded).
    pub misc: u32,
    /// Leaf 0x40000003 EDX.
    pub features: FeatureFlags,
    /// Leaf 0x40000004 EAX.
    pub recommendations: Recommendations,
    /// Leaf 0x40000004 EBX: spinlock retry count (0xFFFFFFFF = never notify).
    pub spinlock_retries: u32,
    /// Leaf 0x40000004 ECX bits 6:0: physical address bits implemented (0 = not reported).
    pub physical_address_bits: u8,
    /// Leaf 0x40000005.
    pub limits: ImplementationLimits,
    /// Leaf 0x40000006 EAX.
    pub hardware_features: HardwareFeatures,
    /// Leaf 0x4000000A EAX (nested virtualization features; eVMCS version in bits 15:0).
    pub nested_features: u32,
}

/// Why [`detect`] found no usable Hyper-V interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectError {
    /// `CPUID.1:ECX[31]` is clear: no hypervisor at all.
    NoHypervisor,
    /// A hypervisor is present, but it offers neither the "Microsoft Hv" vendor nor the "Hv#1"
    /// interface.
    NotHyperV {
        /// Vendor signature found at 0x40000000.
        vendor: [u8; 12],
        /// Interface signature found at 0x40000001 (0 if the leaf is absent).
        interface: u32,
    },
    /// The highest hypervisor leaf is below 0x40000003, so privileges and features are unknown.
    MaxLeafTooLow(u32),
}

impl HvCpuidInfo {
    /// Decodes the hypervisor leaves from a CPUID function (`cpuid(leaf, subleaf)`).
    /// Leaves above the reported highest leaf are not queried and read as zero.
    pub fn read(mut cpuid: impl FnMut(u32, u32) -> CpuidResult) -> Self {
        let v = cpuid(LEAF_VENDOR, 0);
        let max_leaf = v.eax;
        let mut leaf = |l: u32| {
            if (LEAF_VENDOR..=max_leaf).contains(&l) {
                cpuid(l, 0)
            } else {
                CpuidResult::default()
            }
        };
        let interface = leaf(LEAF_INTERFACE).eax;
        let version = HvVersion::from_regs(leaf(LEAF_VERSION));
        let f = leaf(LEAF_FEATURES);
        let r = leaf(LEAF_RECOMMENDATIONS);
        let l = leaf(LEAF_LIMITS);
        let hw = leaf(LEAF_HARDWARE_FEATURES);
        let nested = leaf(LEAF_NESTED_VIRTUALIZATION_FEATURES);
        Self {
            max_leaf,
            vendor: regs_to_signature(v.ebx, v.ecx, v.edx),
            interface,
            version,
            privileges: PartitionPrivileges::from_regs(f.eax, f.ebx),
            misc: f.ecx,
            features: FeatureFlags::from_bits(f.edx),
            recommendations: Recommendations::from_bits(r.eax),
            spinlock_retries: r.ebx,
            physical_address_bits: (r.ecx & 0x7F) as u8,
            limits: ImplementationLimits {
                max_virtual_processors: l.eax,
                max_logical_processors: l.ebx,
                max_interrupt_remap_vectors: l.ecx,
            },
            hardware_features: HardwareFeatures::from_bits(hw.eax),
            nested_features: nested.eax,
        }
    }

    /// Encodes one hypervisor leaf from these values: the inverse of [`HvCpuidInfo::read`], for a
    /// host that builds its CPUID table from this type. Returns `None` for leaves outside
    /// 0x40000000..=`max_leaf` and for leaves this type does not describe (they read as zero).
    pub fn leaf(&self, leaf: u32) -> Option<CpuidResult> {
        if !(LEAF_VENDOR..=self.max_leaf).contains(&leaf) {
            return None;
        }
        let [ebx, ecx, edx] = signature_to_regs(&self.vendor);
        Some(match leaf {
            LEAF_VENDOR => CpuidResult::new(self.max_leaf, ebx, ecx, edx),
            LEAF_INTERFACE => CpuidResult::new(self.interface, 0, 0, 0),
            LEAF_VERSION => self.version.to_regs(),
            LEAF_FEATURES => CpuidResult::new(
                self.privileges.eax(),
                self.privileges.ebx(),
                self.misc,
                self.features.into_bits(),
            ),
            LEAF_RECOMMENDATIONS => CpuidResult::new(
                self.recommendations.into_bits(),
                self.spinlock_retries,
                (self.physical_address_bits & 0x7F) as u32,
                0,
            ),
            LEAF_LIMITS => CpuidResult::new(
                self.limits.max_virtual_processors,
                self.limits.max_logical_processors,
                self.limits.max_interrupt_remap_vectors,
                0,
            ),
            LEAF_HARDWARE_FEATURES => CpuidResult::new(self.hardware_features.into_bits(), 0, 0, 0),
            LEAF_NESTED_VIRTUALIZATION_FEATURES => CpuidResult::new(self.nested_features, 0, 0, 0),
            _ => CpuidResult::default(),
        })
    }

    /// The vendor signature is "Microsoft Hv".
    pub fn is_microsoft_vendor(&self) -> bool {
        self.vendor == VENDOR_MICROSOFT_HV
    }

    /// The interface signature is "Hv#1".
    pub fn has_hv1_interface(&self) -> bool {
        self.interface == INTERFACE_HV1
    }

    /// Whether a Linux guest would take the Hyper-V path on these leaves (fact sheet §1.1, §1.4):
    /// vendor "Microsoft Hv", 0x40000005 <= highest leaf <= 0x4000FFFF, and the hypercall-MSR and
    /// VP-index privileges.
    pub fn linux_would_accept(&self) -> bool {
        self.is_microsoft_vendor()
            && (LINUX_MIN_MAX_LEAF..=LINUX_MAX_MAX_LEAF).contains(&self.max_leaf)
            && self.privileges.access_hypercall_msrs()
            && self.privileges.access_vp_index()
    }

    /// Hypercalls can be enabled (privilege bit 5).
    pub fn has_hypercalls(&self) -> bool {
        self.privileges.access_hypercall_msrs()
    }

    /// SynIC MSRs are granted (privilege bit 2).
    pub fn has_synic(&self) -> bool {
        self.privileges.access_synic_regs()
    }

    /// Synthetic timers are granted (privilege bit 3).
    pub fn has_synthetic_timers(&self) -> bool {
        self.privileges.access_synthetic_timer_regs()
    }

    /// Direct-mode synthetic timers are available (privilege bit 3 and EDX bit 19).
    pub fn has_direct_timers(&self) -> bool {
        self.has_synthetic_timers() && self.features.direct_synthetic_timers()
    }

    /// The reference TSC page is granted (privilege bit 9).
    pub fn has_reference_tsc(&self) -> bool {
        self.privileges.access_partition_reference_tsc()
    }

    /// TIME_REF_COUNT is granted (privilege bit 1).
    pub fn has_reference_counter(&self) -> bool {
        self.privileges.access_partition_reference_counter()
    }

    /// TSC_FREQUENCY / APIC_FREQUENCY can be read (privilege bit 11 and EDX bit 8).
    pub fn has_frequency_msrs(&self) -> bool {
        self.privileges.access_frequency_regs() && self.features.frequency_msrs()
    }

    /// The crash MSRs are available (EDX bit 10).
    pub fn has_crash_msrs(&self) -> bool {
        self.features.guest_crash_msrs()
    }
}

/// Detects a Hyper-V (or Hyper-V compatible) hypervisor through a CPUID function
/// (`cpuid(leaf, subleaf)`).
///
/// Present means: `CPUID.1:ECX[31]` set, vendor "Microsoft Hv" *or* interface "Hv#1" (a compatible
/// host such as KVM's "Linux KVM Hv"), and a highest leaf of at least 0x40000003, so the privileges
/// are known. What the host offers is in the returned [`HvCpuidInfo`]; whether Linux itself would
/// accept it is [`HvCpuidInfo::linux_would_accept`].
pub fn detect(mut cpuid: impl FnMut(u32, u32) -> CpuidResult) -> Result<HvCpuidInfo, DetectError> {
    let std = cpuid(LEAF_STANDARD_FEATURES, 0);
    if std.ecx & (1 << HYPERVISOR_PRESENT_ECX_BIT) == 0 {
        return Err(DetectError::NoHypervisor);
    }
    let info = HvCpuidInfo::read(&mut cpuid);
    if !info.is_microsoft_vendor() && !info.has_hv1_interface() {
        return Err(DetectError::NotHyperV {
            vendor: info.vendor,
            interface: info.interface,
        });
    }
    if info.max_leaf < LEAF_FEATURES {
        return Err(DetectError::MaxLeafTooLow(info.max_leaf));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // fact sheet §0 and §1.1: leaf numbers.
    #[test]
    fn leaf_numbers() {
        assert_eq!(LEAF_VENDOR, 0x4000_0000);
        assert_eq!(LEAF_INTERFACE, 0x4000_0001);
        assert_eq!(LEAF_VERSION, 0x4000_0002);
        assert_eq!(LEAF_FEATURES, 0x4000_0003);
        assert_eq!(LEAF_RECOMMENDATIONS, 0x4000_0004);
        assert_eq!(LEAF_LIMITS, 0x4000_0005);
        assert_eq!(LEAF_HARDWARE_FEATURES, 0x4000_0006);
        assert_eq!(LEAF_CPU_MANAGEMENT, 0x4000_0007);
        assert_eq!(LEAF_SVM_FEATURES, 0x4000_0008);
        assert_eq!(LEAF_NESTED_HYPERVISOR_FEATURES, 0x4000_0009);
        assert_eq!(LEAF_NESTED_VIRTUALIZATION_FEATURES, 0x4000_000A);
        assert_eq!(LEAF_ISOLATION_CONFIG, 0x4000_000C);
    }

    // fact sheet §0: "Micr" "osof" "t Hv" = 0x7263694D, 0x666F736F, 0x76482074; "Hv#1" = 0x31237648.
    #[test]
    fn signatures() {
        assert_eq!(
            signature_to_regs(&VENDOR_MICROSOFT_HV),
            [0x7263_694D, 0x666F_736F, 0x7648_2074]
        );
        assert_eq!(
            regs_to_signature(0x7263_694D, 0x666F_736F, 0x7648_2074),
            VENDOR_MICROSOFT_HV
        );
        assert_eq!(INTERFACE_HV1, u32::from_le_bytes(*b"Hv#1"));
        assert_eq!(INTERFACE_HV1, 0x3123_7648);
    }

    // fact sheet §1.2 / §1.4: bit positions of privileges and features.
    #[test]
    fn privilege_and_feature_bits() {
        // §1.4: bits 1, 2, 3, 5, 6, 9 -> 0x26E
        let p = PartitionPrivileges::new()
            .with_access_partition_reference_counter(true)
            .with_access_synic_regs(true)
            .with_access_synthetic_timer_regs(true)
            .with_access_hypercall_msrs(true)
            .with_access_vp_index(true)
            .with_access_partition_reference_tsc(true);
        assert_eq!(p.eax(), 0x26E);
        // §1.4: add bits 4 and 11 -> 0xA7E
        let p = p
            .with_access_intr_ctrl_regs(true)
            .with_access_frequency_regs(true);
        assert_eq!(p.eax(), 0xA7E);
        assert_eq!(
            PartitionPrivileges::new()
                .with_access_tsc_invariant_controls(true)
                .into_bits(),
            1 << 15
        );
        assert_eq!(
            PartitionPrivileges::new()
                .with_access_reenlightenment_controls(true)
                .into_bits(),
            1 << 13
        );
        // §1.4: EBX bits 4, 5 -> 0x30
        let p = PartitionPrivileges::new()
            .with_post_messages(true)
            .with_signal_events(true);
        assert_eq!(p.ebx(), 0x30);
        assert_eq!(p.eax(), 0);
        let b = |p: PartitionPrivileges| p.ebx();
        assert_eq!(
            b(PartitionPrivileges::new().with_access_partition_id(true)),
            1 << 1
        );
        assert_eq!(
            b(PartitionPrivileges::new().with_cpu_management(true)),
            1 << 12
        );
        assert_eq!(
            b(PartitionPrivileges::new().with_enable_extended_hypercalls(true)),
            1 << 20
        );
        assert_eq!(b(PartitionPrivileges::new().with_isolation(true)), 1 << 22);
        assert_eq!(b(PartitionPrivileges::new().with_debugging(true)), 1 << 11);
        assert_eq!(b(PartitionPrivileges::new().with_access_vsm(true)), 1 << 16);
        // §1.4: EDX bits 19, 8, 10 -> 0x80500
        let f = FeatureFlags::new()
            .with_direct_synthetic_timers(true)
            .with_frequency_msrs(true)
            .with_guest_crash_msrs(true);
        assert_eq!(f.into_bits(), 0x80500);
        assert_eq!(
            FeatureFlags::new()
                .with_xmm_hypercall_input(true)
                .into_bits(),
            1 << 4
        );
        assert_eq!(
            FeatureFlags::new()
                .with_xmm_hypercall_output(true)
                .into_bits(),
            1 << 15
        );
        assert_eq!(
            FeatureFlags::new().with_sint_polling_mode(true).into_bits(),
            1 << 17
        );
        assert_eq!(FeatureFlags::new().with_lbr(true).into_bits(), 1 << 26);
        // §1.3
        assert_eq!(
            Recommendations::new()
                .with_deprecate_auto_eoi(true)
                .into_bits(),
            1 << 9
        );
        assert_eq!(
            Recommendations::new().with_use_apic_msrs(true).into_bits(),
            1 << 3
        );
        assert_eq!(
            Recommendations::new().with_nested(true).into_bits(),
            1 << 12
        );
        assert_eq!(
            Recommendations::new()
                .with_use_enlightened_vmcs(true)
                .into_bits(),
            1 << 14
        );
        assert_eq!(
            Recommendations::new()
                .with_no_non_architectural_core_sharing(true)
                .into_bits(),
            1 << 18
        );
        assert_eq!(
            Recommendations::new()
                .with_use_mmio_hypercalls(true)
                .into_bits(),
            1 << 21
        );
        // §1.1: 0x40000006 bit 9 = synthetic timers volatile; bits 13:10 = nesting level
        assert_eq!(
            HardwareFeatures::new()
                .with_synthetic_timers_volatile(true)
                .into_bits(),
            1 << 9
        );
        assert_eq!(
            HardwareFeatures::new()
                .with_hypervisor_level(0xF)
                .into_bits(),
            0xF << 10
        );
    }

    fn table(info: HvCpuidInfo, hv_bit: bool) -> impl FnMut(u32, u32) -> CpuidResult {
        move |leaf, _| {
            if leaf == LEAF_STANDARD_FEATURES {
                CpuidResult::new(0, 0, if hv_bit { 1 << 31 } else { 0 }, 0)
            } else {
                info.leaf(leaf).unwrap_or_default()
            }
        }
    }

    fn sample() -> HvCpuidInfo {
        HvCpuidInfo {
            max_leaf: 0x4000_000A,
            vendor: VENDOR_MICROSOFT_HV,
            interface: INTERFACE_HV1,
            version: HvVersion {
                build: 0x3839,
                major: 10,
                minor: 0,
                ..Default::default()
            },
            privileges: PartitionPrivileges::from_regs(0xA7E, 0x30),
            features: FeatureFlags::from_bits(0x80500),
            recommendations: Recommendations::new().with_deprecate_auto_eoi(true),
            ..Default::default()
        }
    }

    #[test]
    fn detect_microsoft() {
        let info = detect(table(sample(), true)).unwrap();
        assert_eq!(info, sample());
        assert!(info.linux_would_accept());
        assert!(info.has_direct_timers());
        assert!(info.has_frequency_msrs());
        assert_eq!(info.leaf(LEAF_VERSION).unwrap().ebx, 0x000A_0000);
    }

    #[test]
    fn detect_failures() {
        assert_eq!(
            detect(table(sample(), false)),
            Err(DetectError::NoHypervisor)
        );
        let mut kvm = sample();
        kvm.vendor = *b"KVMKVMKVM\0\0\0";
        kvm.interface = 0;
        assert!(matches!(
            detect(table(kvm, true)),
            Err(DetectError::NotHyperV { .. })
        ));
        // A compatible host: "Linux KVM Hv" with "Hv#1" is detected, but Linux would not accept it.
        let mut compat = sample();
        compat.vendor = *b"Linux KVM Hv";
        let info = detect(table(compat, true)).unwrap();
        assert!(!info.linux_would_accept());
        let mut low = sample();
        low.max_leaf = LEAF_VERSION;
        assert_eq!(
            detect(table(low, true)),
            Err(DetectError::MaxLeafTooLow(LEAF_VERSION))
        );
    }

    #[test]
    fn leaves_above_max_read_zero() {
        let mut s = sample();
        s.max_leaf = 0x4000_0005;
        let mut queried = [false; 16];
        let mut f = table(s, true);
        let info = HvCpuidInfo::read(|l, sl| {
            queried[(l & 0xF) as usize] = true;
            f(l, sl)
        });
        assert!(!queried[0xA] && !queried[6]);
        assert_eq!(info.nested_features, 0);
    }

    proptest! {
        #[test]
        fn cpuid_round_trip(eax in any::<u32>(), ebx in any::<u32>(), ecx in any::<u32>(),
                            edx in any::<u32>(), r in any::<u32>(), hw in any::<u32>(),
                            build in any::<u32>(), ver in any::<u32>(), svc in any::<u32>()) {
            let info = HvCpuidInfo {
                max_leaf: 0x4000_000A,
                vendor: VENDOR_MICROSOFT_HV,
                interface: INTERFACE_HV1,
                version: HvVersion::from_regs(CpuidResult::new(build, ver, svc, edx)),
                privileges: PartitionPrivileges::from_regs(eax, ebx),
                misc: ecx,
                features: FeatureFlags::from_bits(edx),
                recommendations: Recommendations::from_bits(r),
                spinlock_retries: ebx,
                physical_address_bits: (ecx & 0x7F) as u8,
                limits: ImplementationLimits { max_virtual_processors: eax, max_logical_processors: ebx, max_interrupt_remap_vectors: ecx },
                hardware_features: HardwareFeatures::from_bits(hw),
                nested_features: r,
            };
            prop_assert_eq!(detect(table(info, true)), Ok(info));
            prop_assert_eq!(FeatureFlags::from_bits(edx).into_bits(), edx);
            prop_assert_eq!(Recommendations::from_bits(r).into_bits(), r);
            prop_assert_eq!(HardwareFeatures::from_bits(hw).into_bits(), hw);
            let v = HvVersion::from_regs(CpuidResult::new(build, ver, svc, edx));
            prop_assert_eq!(HvVersion::from_regs(v.to_regs()), v);
            prop_assert_eq!(v.to_regs(), CpuidResult::new(build, ver, svc, edx));
            prop_assert_eq!(PartitionPrivileges::from_regs(eax, ebx).eax(), eax);
            prop_assert_eq!(PartitionPrivileges::from_regs(eax, ebx).ebx(), ebx);
        }
    }
}
