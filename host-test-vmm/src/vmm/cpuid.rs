//! Guest CPUID: the host's supported CPUID minus KVM's own hypervisor leaves
//! and minus the features this KVM cannot run at CPL0, plus the Hyper-V leaves.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use super::error::VmmError;
use super::hv_glue::CpuidEntry;

/// CPUID.1:ECX bits hidden: instructions PVM cannot emulate at CPL0 (popcnt,
/// XSAVE family, AVX, ...) and features whose instructions are in the same class.
const LEAF1_ECX_HIDE: u32 = (1 << 1) // PCLMULQDQ
    | (1 << 5) // VMX
    | (1 << 12) // FMA
    | (1 << 19) // SSE4.1
    | (1 << 20) // SSE4.2
    | (1 << 22) // MOVBE
    | (1 << 23) // POPCNT
    | (1 << 25) // AES
    | (1 << 26) // XSAVE
    | (1 << 27) // OSXSAVE
    | (1 << 28) // AVX
    | (1 << 29) // F16C
    | (1 << 30); // RDRAND
/// CPUID.1:ECX[31]: "running under a hypervisor"; Hyper-V guests look for it.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.7.0:EBX bits kept (allow-list: ERMS only affects `rep movsb` speed).
/// Everything else (FSGSBASE, BMI1/2, AVX2/512, SMAP, SMEP, RDSEED, ADX, INVPCID,
/// SHA, ...) is either an instruction PVM cannot emulate at CPL0 or a CR4 mode it
/// does not need to offer.
const LEAF7_EBX_KEEP: u32 = 1 << 9;
/// CPUID.7.0:EDX bits kept: speculation-control enumeration only (MSRs KVM handles).
const LEAF7_EDX_KEEP: u32 = (1 << 10) | (1 << 26) | (1 << 27) | (1 << 29) | (1 << 31);
/// CPUID.80000001:ECX bits hidden: LZCNT/ABM, SSE4A, misaligned SSE, XOP, FMA4, TBM, MONITORX.
const EXT1_ECX_HIDE: u32 =
    (1 << 5) | (1 << 6) | (1 << 7) | (1 << 11) | (1 << 16) | (1 << 21) | (1 << 29);

const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// True if `e` is the vendor leaf of KVM's own hypervisor range.
fn is_kvm_signature(e: &kvm_cpuid_entry2) -> bool {
    [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE
}

/// Filters the host's supported CPUID as described in docs/ARCHITECTURE.md and
/// appends `hv_leaves`.
pub fn filter(host: &[kvm_cpuid_entry2], hv_leaves: &[CpuidEntry]) -> Vec<kvm_cpuid_entry2> {
    // KVM places its leaves at 0x40000000 + k*0x100 (after other hypervisor ranges); drop every
    // 0x100-block whose base leaf carries the KVM signature.
    let kvm_bases: Vec<u32> = host
        .iter()
        .filter(|e| {
            (0x4000_0000..0x5000_0000).contains(&e.function)
                && e.function & 0xFF == 0
                && is_kvm_signature(e)
        })
        .map(|e| e.function)
        .collect();
    let mut out: Vec<kvm_cpuid_entry2> = host
        .iter()
        .filter(|e| {
            !kvm_bases
                .iter()
                .any(|b| (*b..=*b + 0xFF).contains(&e.function))
        })
        .filter(|e| !hv_leaves.iter().any(|h| h.function == e.function))
        .copied()
        .collect();
    for e in &mut out {
        match (e.function, e.index) {
            (1, _) => {
                e.ecx = (e.ecx & !LEAF1_ECX_HIDE) | LEAF1_ECX_HYPERVISOR;
            }
            (7, 0) => {
                e.ebx &= LEAF7_EBX_KEEP;
                e.ecx = 0;
                e.edx &= LEAF7_EDX_KEEP;
            }
            (7, _) | (0xD, _) | (0x12, _) | (0x14, _) => {
                // Sub-leaves of structured features, XSAVE state, SGX and PT: all hidden.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            (0x8000_0001, _) => {
                e.ecx &= !EXT1_ECX_HIDE;
            }
            _ => {}
        }
    }
    out.extend(hv_leaves.iter().map(|h| kvm_cpuid_entry2 {
        function: h.function,
        index: h.index,
        flags: 0,
        eax: h.eax,
        ebx: h.ebx,
        ecx: h.ecx,
        edx: h.edx,
        ..Default::default()
    }));
    out
}

/// Per-vCPU copy with the APIC ID fields set to the VP index (== KVM vcpu id):
/// leaf 1 EBX[31:24], leaves 0xB/0x1F EDX, and on AMD leaf 0x8000001E
/// (extended APIC ID in EAX, core ID in EBX[7:0], one thread per core), which
/// Linux reads as the initial APIC ID there ("APIC ID mismatch" otherwise).
pub fn for_vcpu(base: &[kvm_cpuid_entry2], vp: u32) -> Result<CpuId, VmmError> {
    let entries: Vec<kvm_cpuid_entry2> = base
        .iter()
        .map(|e| {
            let mut e = *e;
            match e.function {
                1 => e.ebx = (e.ebx & 0x00FF_FFFF) | (vp << 24),
                0xB | 0x1F if e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0 => e.edx = vp,
                0x8000_001E => {
                    e.eax = vp;
                    e.ebx = (e.ebx & !0xFFFF) | (vp & 0xFF);
                }
                _ => {}
            }
            e
        })
        .collect();
    CpuId::from_entries(&entries).map_err(|e| VmmError::Hv(format!("CPUID table too large: {e:?}")))
}

/// The host's supported CPUID (KVM_GET_SUPPORTED_CPUID).
pub fn host_supported(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, VmmError> {
    let c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(c.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn removes_kvm_leaves_hides_features_and_adds_hv() {
        let host = vec![
            leaf(1, 0, 0, 0, (1 << 23) | (1 << 26) | (1 << 13), 0),
            leaf(7, 0, 1, (1 << 3) | (1 << 8) | (1 << 9) | (1 << 20), 0xFF, 0),
            leaf(0xD, 1, 0xF, 0, 0, 0),
            leaf(
                0x4000_0000,
                0,
                0x4000_0001,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
            ),
            leaf(0x4000_0001, 0, 0x7efb, 0, 0, 0),
            leaf(
                0x4000_0100,
                0,
                0x4000_0101,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
            ),
            leaf(0x4000_0101, 0, 0x7efb, 0, 0, 0),
            leaf(0x8000_0001, 0, 0, 0, (1 << 5) | 1, 0),
        ];
        let hv = [CpuidEntry {
            function: 0x4000_0000,
            index: 0,
            eax: 0x4000_000A,
            ebx: 1,
            ecx: 2,
            edx: 3,
        }];
        let out = filter(&host, &hv);
        let get = |f: u32, i: u32| {
            out.iter()
                .find(|e| e.function == f && e.index == i)
                .copied()
        };
        let l1 = get(1, 0).unwrap();
        assert_eq!(l1.ecx, (1 << 13) | (1 << 31));
        let l7 = get(7, 0).unwrap();
        assert_eq!((l7.eax, l7.ebx, l7.ecx), (1, 1 << 9, 0));
        assert_eq!(get(0xD, 1).unwrap().eax, 0);
        assert_eq!(get(0x8000_0001, 0).unwrap().ecx, 1);
        assert!(
            get(0x4000_0001, 0).is_none()
                && get(0x4000_0100, 0).is_none()
                && get(0x4000_0101, 0).is_none()
        );
        assert_eq!(get(0x4000_0000, 0).unwrap().eax, 0x4000_000A);
        assert_eq!(out.iter().filter(|e| e.function == 0x4000_0000).count(), 1);
    }

    #[test]
    fn per_vcpu_apic_id() {
        let base = vec![
            leaf(1, 0, 0, 0x0012_3456, 0, 0),
            leaf(0x8000_001E, 0, 0, 0x0000_0100, 0x0000_0100, 0),
        ];
        let c = for_vcpu(&base, 3).unwrap();
        assert_eq!(c.as_slice()[0].ebx, 0x0312_3456);
        // AMD: Linux takes the initial APIC ID from 0x8000001E EAX (seen as
        // "CPU 1: APIC ID mismatch. CPUID: 0x0000 APIC: 0x0001" with 2 vCPUs).
        let amd = c.as_slice()[1];
        assert_eq!((amd.eax, amd.ebx & 0xFFFF, amd.ecx), (3, 3, 0x100));
    }
}
