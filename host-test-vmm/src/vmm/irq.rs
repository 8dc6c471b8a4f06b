//! Interrupt delivery into the in-kernel LAPICs and the guest-visible TSC:
//! the two services the Hyper-V emulation gets from the partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_msi, kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};

use super::error::VmmError;

/// MSI address base: the LAPIC window, destination APIC id in bits 19:12.
const MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;

/// Raises vectors on a VP's in-kernel LAPIC with KVM_SIGNAL_MSI (fixed
/// delivery, edge, physical destination = VP index).
pub struct MsiInterruptSink {
    vm: Arc<VmFd>,
    delivered: AtomicU64,
    blocked: AtomicU64,
    failed: AtomicU64,
    by_vector: Mutex<BTreeMap<u8, u64>>,
    /// Serializes injections with the EOI emulation's read-modify-write of LAPIC
    /// state, so an MSI raised meanwhile cannot be overwritten by KVM_SET_LAPIC.
    lapic_rmw: Mutex<()>,
}

/// Counters of [`MsiInterruptSink`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InterruptCounts {
    /// MSIs KVM accepted (returned > 0).
    pub delivered: u64,
    /// MSIs KVM dropped because the destination LAPIC refused them (returned 0).
    pub blocked: u64,
    /// KVM_SIGNAL_MSI failures.
    pub failed: u64,
    /// Accepted MSIs by vector.
    pub by_vector: BTreeMap<u8, u64>,
}

impl MsiInterruptSink {
    pub(crate) fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            delivered: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            by_vector: Mutex::new(BTreeMap::new()),
            lapic_rmw: Mutex::new(()),
        }
    }

    /// Raises `vector` on VP `vp` (edge, fixed delivery).
    pub fn raise(&self, vp: u32, vector: u8) {
        let msi = kvm_msi {
            address_lo: MSI_ADDRESS_BASE | ((vp & 0xFF) << 12),
            address_hi: 0,
            // Delivery mode 000 (fixed), trigger mode bit 15 clear (edge).
            data: u32::from(vector),
            ..Default::default()
        };
        let rmw = self.lapic_rmw.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.vm.signal_msi(msi);
        drop(rmw);
        match result {
            Ok(n) if n > 0 => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                *self
                    .by_vector
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(vector)
                    .or_default() += 1;
                tracing::trace!(vp, vector, "MSI delivered");
            }
            Ok(_) => {
                self.blocked.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    vp,
                    vector,
                    "MSI blocked by the destination LAPIC (software-disabled?)"
                );
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(vp, vector, error = %e, "KVM_SIGNAL_MSI failed");
            }
        }
    }

    /// Snapshot of the counters.
    pub fn counts(&self) -> InterruptCounts {
        InterruptCounts {
            delivered: self.delivered.load(Ordering::Relaxed),
            blocked: self.blocked.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            by_vector: self
                .by_vector
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// An APIC EOI on `vcpu`'s in-kernel LAPIC, for the Hyper-V EOI MSR
    /// (0x40000070): clears the highest in-service bit, as an EOI write does.
    /// Returns the vector EOI'd, if any was in service.
    pub(crate) fn eoi(&self, vcpu: &VcpuFd) -> Result<Option<u8>, kvm_ioctls::Error> {
        const APIC_ISR: usize = 0x100;
        let _rmw = self.lapic_rmw.lock().unwrap_or_else(|p| p.into_inner());
        let mut lapic = vcpu.get_lapic()?;
        for reg in (0..8usize).rev() {
            let off = APIC_ISR + reg * 0x10;
            let mut bytes = [0u8; 4];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = lapic.regs[off + i] as u8;
            }
            let isr = u32::from_le_bytes(bytes);
            if isr != 0 {
                let bit = 31 - isr.leading_zeros();
                let cleared = (isr & !(1 << bit)).to_le_bytes();
                for (i, b) in cleared.iter().enumerate() {
                    lapic.regs[off + i] = *b as libc::c_char;
                }
                vcpu.set_lapic(&lapic)?;
                return Ok(Some((reg as u32 * 32 + bit) as u8));
            }
        }
        Ok(None)
    }

    pub(crate) fn clear(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.blocked.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.by_vector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Host TSC right now.
pub fn host_rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The guest-visible TSC: host TSC plus the offset KVM applies to this VM.
///
/// PVM (and KVM without TSC scaling) runs the guest TSC at the host rate, so
/// an offset measured once is exact up to the measurement error (a few µs).
#[derive(Debug)]
pub struct KvmGuestTsc {
    hz: u64,
    offset: AtomicU64,
}

const MSR_IA32_TSC: u32 = 0x10;

impl KvmGuestTsc {
    /// Measures the offset between vCPU `vcpu`'s TSC and the host TSC.
    pub(crate) fn measure(vcpu: &VcpuFd) -> Result<Self, VmmError> {
        let khz = vcpu
            .get_tsc_khz()
            .map_err(VmmError::kvm("KVM_GET_TSC_KHZ"))?;
        let tsc = Self {
            hz: u64::from(khz) * 1000,
            offset: AtomicU64::new(0),
        };
        tsc.remeasure(vcpu)?;
        Ok(tsc)
    }

    /// Re-reads the offset (after a reset the guest TSC restarts).
    pub(crate) fn remeasure(&self, vcpu: &VcpuFd) -> Result<(), VmmError> {
        // Take the sample with the shortest ioctl round trip: its midpoint is
        // the best estimate of when KVM read the guest TSC.
        let mut best: Option<(u64, u64)> = None;
        for _ in 0..8 {
            let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
                index: MSR_IA32_TSC,
                ..Default::default()
            }])
            .map_err(|e| VmmError::Hv(format!("MSR list: {e:?}")))?;
            let t0 = host_rdtsc();
            let n = vcpu
                .get_msrs(&mut msrs)
                .map_err(VmmError::kvm("KVM_GET_MSRS(IA32_TSC)"))?;
            let t1 = host_rdtsc();
            if n != 1 {
                return Err(VmmError::MissingCapability("KVM_GET_MSRS of IA32_TSC"));
            }
            let guest = msrs.as_slice()[0].data;
            let span = t1.wrapping_sub(t0);
            let offset = guest.wrapping_sub(t0.wrapping_add(span / 2));
            if best.is_none_or(|(s, _)| span < s) {
                best = Some((span, offset));
            }
        }
        if let Some((_, offset)) = best {
            self.offset.store(offset, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Guest TSC frequency in Hz.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// The guest TSC value right now.
    pub fn now(&self) -> u64 {
        host_rdtsc().wrapping_add(self.offset.load(Ordering::Relaxed))
    }
}
