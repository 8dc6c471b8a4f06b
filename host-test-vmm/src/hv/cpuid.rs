//! CPUID leaves 0x40000000..=0x4000000A (fact sheet §1), built from the
//! `hypercall::cpuid` types so host and guest share one encoding.

use super::HvConfig;
use hypercall::cpuid::{
    FeatureFlags, HvCpuidInfo, HvVersion, ImplementationLimits, PartitionPrivileges,
    Recommendations, INTERFACE_HV1, LEAF_NESTED_VIRTUALIZATION_FEATURES, LEAF_VENDOR,
    VENDOR_MICROSOFT_HV,
};

/// APIC timer frequency of KVM's in-kernel LAPIC (1 GHz bus clock, the KVM
/// default), reported by APIC_FREQUENCY.
pub const KVM_APIC_FREQUENCY_HZ: u64 = 1_000_000_000;

/// One CPUID entry for KVM_SET_CPUID2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidLeaf {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input); always 0 for these leaves.
    pub index: u32,
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// What the partition is offered. CPUID advertises exactly this, and the
/// MSR and hypercall paths grant exactly this (an MSR whose privilege is
/// clear raises #GP; a hypercall without its privilege returns
/// ACCESS_DENIED).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvFeatures {
    /// Leaf 0x40000003 EAX/EBX.
    pub privileges: PartitionPrivileges,
    /// Leaf 0x40000003 EDX.
    pub features: FeatureFlags,
    /// Leaf 0x40000004 EAX.
    pub recommendations: Recommendations,
    /// Value of APIC_FREQUENCY (Hz).
    pub apic_frequency_hz: u64,
}

impl Default for HvFeatures {
    /// The recommended profile of fact sheet §1.4 / §12.
    fn default() -> Self {
        Self::recommended()
    }
}

impl HvFeatures {
    /// Fact sheet §1.4 "Recommended": privileges EAX 0xA7E (reference
    /// counter, SynIC, stimers, APIC/VP-assist, hypercall MSRs, VP index,
    /// reference TSC, frequency MSRs), EBX PostMessages|SignalEvents; EDX
    /// frequency MSRs, crash MSRs, direct stimers, plus SINT polling mode and
    /// the HYPERCALL MSR lock, which this emulation implements; hint bit 9
    /// (deprecate AutoEOI), since the in-kernel LAPIC has no AutoEOI.
    pub fn recommended() -> Self {
        let privileges = PartitionPrivileges::new()
            .with_access_partition_reference_counter(true)
            .with_access_synic_regs(true)
            .with_access_synthetic_timer_regs(true)
            .with_access_intr_ctrl_regs(true)
            .with_access_hypercall_msrs(true)
            .with_access_vp_index(true)
            .with_access_partition_reference_tsc(true)
            .with_access_frequency_regs(true)
            .with_post_messages(true)
            .with_signal_events(true);
        let features = FeatureFlags::new()
            .with_frequency_msrs(true)
            .with_guest_crash_msrs(true)
            .with_sint_polling_mode(true)
            .with_hypercall_msr_lock(true)
            .with_direct_synthetic_timers(true);
        let recommendations = Recommendations::new().with_deprecate_auto_eoi(true);
        Self {
            privileges,
            features,
            recommendations,
            apic_frequency_hz: KVM_APIC_FREQUENCY_HZ,
        }
    }
}

/// The decoded form of our leaves.
pub(crate) fn info(cfg: &HvConfig) -> HvCpuidInfo {
    HvCpuidInfo {
        max_leaf: LEAF_NESTED_VIRTUALIZATION_FEATURES,
        vendor: VENDOR_MICROSOFT_HV,
        interface: INTERFACE_HV1,
        // What KVM reports (fact sheet §11): build 0x3839, version 10.0.
        version: HvVersion {
            build: 0x3839,
            major: 10,
            minor: 0,
            service_pack: 0,
            service_branch: 0,
            service_number: 0,
        },
        privileges: cfg.features.privileges,
        misc: 0,
        features: cfg.features.features,
        recommendations: cfg.features.recommendations,
        spinlock_retries: u32::MAX,
        physical_address_bits: 0,
        limits: ImplementationLimits {
            max_virtual_processors: cfg.vp_count,
            max_logical_processors: cfg.vp_count,
            max_interrupt_remap_vectors: 0,
        },
        hardware_features: Default::default(),
        nested_features: 0,
    }
}

/// Every leaf from 0x40000000 to 0x4000000A.
pub(crate) fn leaves(cfg: &HvConfig) -> Vec<CpuidLeaf> {
    let info = info(cfg);
    (LEAF_VENDOR..=LEAF_NESTED_VIRTUALIZATION_FEATURES)
        .map(|function| {
            let r = info.leaf(function).unwrap_or_default();
            CpuidLeaf {
                function,
                index: 0,
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
            }
        })
        .collect()
}
