//! The in-process backend: the same [`Hypervisor`] without KVM.
//!
//! Guest RAM is anonymous memory ([`GuestMemoryMmap`]), interrupts are
//! recorded by [`RecordingSink`], and the guest TSC is either a
//! [`FakeTsc`] the test moves by hand or [`HostTsc`] (the host's monotonic
//! clock scaled to the configured frequency). Tests of guest crates drive the
//! hypervisor through [`InProcess`], playing the guest: they write MSRs,
//! build hypercall input pages in guest memory, issue hypercalls and read
//! the SIM/SIEF pages back.

use super::{
    GpaError, GuestTsc, HvConfig, HvError, HvFeatures, HvStatus, HypercallRegs, Hypervisor,
    InterruptSink, MsrFault, RefClock, PAGE_SIZE,
};
use hypercall::abi::{CallCode, Control, HypercallResult, PostMessageInput, SignalEventInput};
use hypercall::cpuid::{CpuidResult, HYPERVISOR_PRESENT_ECX_BIT, LEAF_STANDARD_FEATURES};
use hypercall::msr;
use hypercall::page::{PageRef, PAGE_WORDS};
use hypercall::synic::{EventFlags, HvMessage, MessageType, EVENT_FLAGS_SIZE, MESSAGE_SIZE};
use hypercall::Platform;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::{FromBytes, IntoBytes};

/// An [`InterruptSink`] that records every raise, in order.
#[derive(Debug, Default)]
pub struct RecordingSink {
    raised: Mutex<Vec<(u32, u8)>>,
    cv: Condvar,
}

impl RecordingSink {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `(vp, vector)` raised so far.
    pub fn raised(&self) -> Vec<(u32, u8)> {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every `(vp, vector)` raised so far, clearing the record.
    pub fn take(&self) -> Vec<(u32, u8)> {
        std::mem::take(&mut *self.raised.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many times `vector` was raised on `vp`.
    pub fn count(&self, vp: u32, vector: u8) -> usize {
        self.raised().iter().filter(|&&r| r == (vp, vector)).count()
    }

    /// Wait until `vector` has been raised on `vp` at least `n` times, or
    /// the timeout passes. Returns whether it happened.
    pub fn wait_for(&self, vp: u32, vector: u8, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.iter().filter(|&&r| r == (vp, vector)).count() >= n {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl InterruptSink for RecordingSink {
    fn raise(&self, vp: u32, vector: u8) {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((vp, vector));
        self.cv.notify_all();
    }
}

/// A guest TSC that moves only when told to.
#[derive(Debug, Default)]
pub struct FakeTsc {
    value: AtomicU64,
}

impl FakeTsc {
    /// A TSC reading `start`.
    pub fn new(start: u64) -> Self {
        Self {
            value: AtomicU64::new(start),
        }
    }

    /// Set the TSC.
    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::SeqCst);
    }

    /// Move the TSC forward by `ticks`.
    pub fn advance(&self, ticks: u64) {
        self.value.fetch_add(ticks, Ordering::SeqCst);
    }
}

impl GuestTsc for FakeTsc {
    fn now(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }
}

/// A guest TSC derived from the host's monotonic clock at `hz`.
#[derive(Debug)]
pub struct HostTsc {
    start: Instant,
    hz: u64,
}

impl HostTsc {
    /// A TSC at `hz`, reading 0 now.
    pub fn new(hz: u64) -> Self {
        Self {
            start: Instant::now(),
            hz,
        }
    }
}

impl GuestTsc for HostTsc {
    fn now(&self) -> u64 {
        let ns = self.start.elapsed().as_nanos();
        (ns * u128::from(self.hz) / 1_000_000_000) as u64
    }
}

/// Which guest TSC an [`InProcess`] partition uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockKind {
    /// [`FakeTsc`], starting at the given value.
    Fake(u64),
    /// [`HostTsc`].
    Host,
}

/// A partition without KVM.
pub struct InProcess {
    hv: Arc<Hypervisor>,
    mem: GuestMemoryMmap,
    irq: Arc<RecordingSink>,
    tsc: Arc<dyn GuestTsc>,
    fake: Option<Arc<FakeTsc>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("hv", &self.hv)
            .field("guest_tsc", &self.tsc.now())
            .finish_non_exhaustive()
    }
}

/// Default TSC frequency of in-process partitions: 1 GHz (100 TSC ticks per
/// reference tick).
pub const DEFAULT_TSC_HZ: u64 = 1_000_000_000;

impl InProcess {
    /// `vp_count` VPs, `ram_bytes` of RAM at GPA 0, the recommended
    /// features, a fake TSC at 0 running at [`DEFAULT_TSC_HZ`].
    pub fn new(vp_count: u32, ram_bytes: usize) -> Result<Self, HvError> {
        let cfg = HvConfig {
            vp_count,
            tsc_hz: DEFAULT_TSC_HZ,
            features: HvFeatures::default(),
        };
        Self::with_config(cfg, ram_bytes, ClockKind::Fake(0))
    }

    /// Full control over configuration and clock.
    pub fn with_config(cfg: HvConfig, ram_bytes: usize, clock: ClockKind) -> Result<Self, HvError> {
        if ram_bytes == 0 || !(ram_bytes as u64).is_multiple_of(PAGE_SIZE) {
            return Err(HvError::InvalidConfig(
                "RAM size must be a non-zero multiple of 4 KiB",
            ));
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram_bytes)])
            .map_err(|_| HvError::InvalidConfig("cannot map guest RAM"))?;
        let irq = Arc::new(RecordingSink::new());
        let (tsc, fake): (Arc<dyn GuestTsc>, _) = match clock {
            ClockKind::Fake(start) => {
                let f = Arc::new(FakeTsc::new(start));
                (f.clone(), Some(f))
            }
            ClockKind::Host => (Arc::new(HostTsc::new(cfg.tsc_hz)), None),
        };
        let hv = Hypervisor::new(cfg, mem.clone(), irq.clone(), tsc.clone())?;
        Ok(Self {
            hv,
            mem,
            irq,
            tsc,
            fake,
        })
    }

    /// The hypervisor.
    pub fn hv(&self) -> &Arc<Hypervisor> {
        &self.hv
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The interrupt recorder.
    pub fn interrupts(&self) -> &Arc<RecordingSink> {
        &self.irq
    }

    /// The fake TSC, if this partition uses one.
    pub fn fake_tsc(&self) -> Option<&Arc<FakeTsc>> {
        self.fake.as_ref()
    }

    /// Move a fake clock forward by `ticks` of reference time (100 ns) and
    /// fire due timers on this thread. With the host clock, only fires due
    /// timers.
    pub fn advance_ref(&self, ticks: u64) {
        if let Some(f) = &self.fake {
            let target = self.now().saturating_add(ticks);
            let hz = u128::from(self.hv.config().tsc_hz);
            // Estimate (may fall short by the floor of the scale), then step
            // to the first TSC value whose reference time reaches the target.
            let est = u128::from(ticks) * hz / u128::from(super::REF_TICKS_PER_SEC);
            f.advance(u64::try_from(est).unwrap_or(u64::MAX));
            let step = u64::try_from(hz / u128::from(super::REF_TICKS_PER_SEC) / 16)
                .unwrap_or(1)
                .max(1);
            while self.now() < target {
                f.advance(step);
            }
        }
        self.hv.process_timers();
    }

    /// Reference time now.
    pub fn now(&self) -> u64 {
        self.hv.reference_time()
    }

    /// Copy bytes out of guest RAM.
    pub fn read_bytes(&self, gpa: u64, len: usize) -> Result<Vec<u8>, GpaError> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(gpa))
            .map_err(|_| GpaError::OutsideRam(gpa, len))?;
        Ok(v)
    }

    /// Copy bytes into guest RAM.
    pub fn write_bytes(&self, gpa: u64, bytes: &[u8]) -> Result<(), GpaError> {
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|_| GpaError::OutsideRam(gpa, bytes.len()))
    }

    /// The 4 KiB page at `gpa`.
    pub fn read_page(&self, gpa: u64) -> Result<Vec<u8>, GpaError> {
        self.read_bytes(gpa, PAGE_SIZE as usize)
    }

    /// The message in `sint`'s slot of the SIM page at `simp_gpa`.
    pub fn read_message(&self, simp_gpa: u64, sint: u8) -> Result<HvMessage, GpaError> {
        let gpa = simp_gpa + u64::from(sint) * MESSAGE_SIZE as u64;
        let b = self.read_bytes(gpa, MESSAGE_SIZE)?;
        HvMessage::read_from_bytes(&b).map_err(|_| GpaError::OutsideRam(gpa, MESSAGE_SIZE))
    }

    /// `sint`'s event flags in the SIEF page at `siefp_gpa`.
    pub fn read_event_flags(&self, siefp_gpa: u64, sint: u8) -> Result<EventFlags, GpaError> {
        let gpa = siefp_gpa + u64::from(sint) * EVENT_FLAGS_SIZE as u64;
        let b = self.read_bytes(gpa, EVENT_FLAGS_SIZE)?;
        EventFlags::read_from_bytes(&b).map_err(|_| GpaError::OutsideRam(gpa, EVENT_FLAGS_SIZE))
    }

    /// Guest WRMSR.
    pub fn wrmsr(&self, vp: u32, msr: u32, value: u64) -> Result<(), MsrFault> {
        self.hv.msr_write(vp, msr, value)
    }

    /// Guest RDMSR.
    pub fn rdmsr(&self, vp: u32, msr: u32) -> Result<u64, MsrFault> {
        self.hv.msr_read(vp, msr)
    }

    /// Issue a hypercall; returns RAX.
    pub fn hypercall(&self, vp: u32, rcx: u64, rdx: u64, r8: u64) -> u64 {
        let mut regs = HypercallRegs {
            rcx,
            rdx,
            r8,
            rax: 0,
        };
        self.hv.hypercall(vp, &mut regs);
        regs.rax
    }

    /// What a guest does to enable hypercalls: GUEST_OS_ID, then HYPERCALL
    /// with the page at `page_gpa`.
    pub fn enable_hypercalls(&self, page_gpa: u64) -> Result<(), MsrFault> {
        self.wrmsr(
            0,
            msr::GUEST_OS_ID,
            msr::GuestOsId::linux(6, 12, 0).into_bits(),
        )?;
        self.wrmsr(
            0,
            msr::HYPERCALL,
            msr::HypercallMsr::new()
                .with_enable(true)
                .with_gpa(page_gpa)
                .into_bits(),
        )
    }

    /// What a guest does to turn on its SynIC: SIMP, SIEFP, then SCONTROL.
    pub fn enable_synic(&self, vp: u32, simp_gpa: u64, siefp_gpa: u64) -> Result<(), MsrFault> {
        self.wrmsr(
            vp,
            msr::SIMP,
            msr::Simp::new()
                .with_enable(true)
                .with_gpa(simp_gpa)
                .into_bits(),
        )?;
        self.wrmsr(
            vp,
            msr::SIEFP,
            msr::Siefp::new()
                .with_enable(true)
                .with_gpa(siefp_gpa)
                .into_bits(),
        )?;
        self.wrmsr(
            vp,
            msr::SCONTROL,
            msr::SControl::new().with_enable(true).into_bits(),
        )
    }

    /// Unmask SINT `sint` of `vp` with `vector` (no AutoEOI, no polling).
    pub fn unmask_sint(&self, vp: u32, sint: u8, vector: u8) -> Result<(), MsrFault> {
        self.wrmsr(
            vp,
            msr::SINT0 + u32::from(sint),
            msr::Sint::new().with_vector(vector).into_bits(),
        )
    }

    /// HvPostMessage from `vp`: builds the input block at `input_gpa` and
    /// issues the slow call. Returns the status.
    pub fn post_message(
        &self,
        vp: u32,
        input_gpa: u64,
        connection_id: u32,
        message_type: u32,
        payload: &[u8],
    ) -> HvStatus {
        let Ok(input) = PostMessageInput::new(connection_id, MessageType(message_type), payload)
        else {
            return HvStatus::INVALID_PARAMETER;
        };
        if self.write_bytes(input_gpa, input.as_bytes()).is_err() {
            return HvStatus::INVALID_ALIGNMENT;
        }
        let rax = self.hypercall(
            vp,
            Control::call(CallCode::POST_MESSAGE).into_bits(),
            input_gpa,
            0,
        );
        HypercallResult::from_bits(rax).status()
    }

    /// HvSignalEvent (fast form) from `vp`. Returns the status.
    pub fn signal_event(&self, vp: u32, connection_id: u32, flag: u16) -> HvStatus {
        let input = SignalEventInput {
            connection_id,
            flag_number: flag,
            reserved: 0,
        };
        let rcx = Control::call(CallCode::SIGNAL_EVENT)
            .with_fast(true)
            .into_bits();
        HypercallResult::from_bits(self.hypercall(vp, rcx, input.to_fast(), 0)).status()
    }

    /// The guest's end-of-message protocol on `sint` (fact sheet §4.3): take
    /// the message, clear the type, and write EOM if MessagePending was set.
    /// Returns the message, or `None` if the slot was empty.
    pub fn complete_message(
        &self,
        vp: u32,
        simp_gpa: u64,
        sint: u8,
    ) -> Result<Option<HvMessage>, GpaError> {
        let m = self.read_message(simp_gpa, sint)?;
        if m.header.message_type == MessageType::NONE {
            return Ok(None);
        }
        let slot = simp_gpa + u64::from(sint) * MESSAGE_SIZE as u64;
        self.mem
            .store(0u32, GuestAddress(slot), Ordering::SeqCst)
            .map_err(|_| GpaError::OutsideRam(slot, 4))?;
        let flags_off =
            core::mem::offset_of!(hypercall::synic::HvMessageHeader, message_flags) as u64;
        let flags = self.read_bytes(slot + flags_off, 1)?[0];
        let after = hypercall::synic::MessageFlags::from_bits(flags);
        if after.message_pending() {
            self.wrmsr(vp, msr::EOM, 0)
                .map_err(|_| GpaError::OutsideRam(slot, 0))?;
        }
        Ok(Some(m))
    }

    /// A handle on the guest page at `gpa` for the guest drivers of the
    /// `hypercall` crate (they access shared pages through [`PageRef`]).
    pub fn page(&self, gpa: u64) -> Result<PageRef<'_>, GpaError> {
        if !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(GpaError::Misaligned(gpa));
        }
        let len = PAGE_SIZE as usize;
        let slice = GuestMemoryBackend::get_slice(&self.mem, GuestAddress(gpa), len)
            .ok()
            .filter(|s| s.len() == len)
            .ok_or(GpaError::OutsideRam(gpa, len))?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        if !ptr.cast::<AtomicU64>().is_aligned() {
            return Err(GpaError::Misaligned(gpa));
        }
        // SAFETY: `ptr` points at `len` = 4096 bytes of this partition's
        // anonymous guest mapping (checked above), which stays mapped as long
        // as `self.mem` (borrowed for the returned lifetime) holds its
        // regions. It is 8-byte aligned (checked), any bit pattern is a
        // valid `AtomicU64`, and atomics permit the shared mutation the
        // hypervisor side does through its own volatile/atomic accessors.
        let words = unsafe { &*ptr.cast::<[AtomicU64; PAGE_WORDS]>() };
        PageRef::new(words, gpa).map_err(|_| GpaError::Misaligned(gpa))
    }

    /// VP `vp` as a [`Platform`] for the guest drivers of the `hypercall`
    /// crate.
    pub fn vp(&self, vp: u32) -> GuestVp<'_> {
        GuestVp {
            part: self,
            vp,
            faults: Mutex::new(Vec::new()),
        }
    }

    /// Host time that `ticks` of reference time take.
    pub fn ref_to_duration(ticks: u64) -> Duration {
        RefClock::ref_to_duration(ticks)
    }
}

/// One VP of an [`InProcess`] partition, seen by guest code as the CPU it
/// runs on: CPUID (leaf 1 reports a hypervisor; the Hyper-V leaves come from
/// [`Hypervisor::cpuid_leaves`]), RDMSR/WRMSR into the hypervisor, RDTSC from
/// the partition's guest TSC, and calls into the hypercall page.
///
/// [`Platform`] has no way to raise #GP, so a faulting MSR access reads as 0
/// (or is dropped) and is recorded in [`GuestVp::faults`]. A call through a
/// page that does not hold [`super::HYPERCALL_PAGE_CODE`] (the real CPU
/// would run whatever is there) is not dispatched: it is recorded with
/// `msr == 0` and returns INVALID_HYPERCALL_CODE.
#[derive(Debug)]
pub struct GuestVp<'a> {
    part: &'a InProcess,
    vp: u32,
    faults: Mutex<Vec<(u32, Option<MsrFault>)>>,
}

impl GuestVp<'_> {
    /// The VP index.
    pub fn index(&self) -> u32 {
        self.vp
    }

    /// Faulting accesses so far: `(msr, fault)`; `(0, None)` for a call
    /// through a page without the hypercall trampoline.
    pub fn faults(&self) -> Vec<(u32, Option<MsrFault>)> {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, msr: u32, fault: Option<MsrFault>) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((msr, fault));
    }
}

impl Platform for GuestVp<'_> {
    fn cpuid(&self, leaf: u32, _subleaf: u32) -> CpuidResult {
        if leaf == LEAF_STANDARD_FEATURES {
            return CpuidResult::new(0, 0, 1 << HYPERVISOR_PRESENT_ECX_BIT, 0);
        }
        self.part
            .hv
            .cpuid_leaves()
            .into_iter()
            .find(|l| l.function == leaf)
            .map_or(CpuidResult::default(), |l| {
                CpuidResult::new(l.eax, l.ebx, l.ecx, l.edx)
            })
    }

    fn rdmsr(&self, msr: u32) -> u64 {
        self.part.hv.msr_read(self.vp, msr).unwrap_or_else(|f| {
            self.record(msr, Some(f));
            0
        })
    }

    fn wrmsr(&self, msr: u32, value: u64) {
        if let Err(f) = self.part.hv.msr_write(self.vp, msr, value) {
            self.record(msr, Some(f));
        }
    }

    fn rdtsc(&self) -> u64 {
        self.part.tsc.now()
    }

    fn hypercall(&self, code_page: &PageRef<'_>, control: u64, rdx: u64, r8: u64) -> u64 {
        let code = self
            .part
            .read_bytes(code_page.gpa(), super::HYPERCALL_PAGE_CODE.len());
        if code.ok().as_deref() != Some(&super::HYPERCALL_PAGE_CODE[..]) {
            self.record(0, None);
            return HypercallResult::with(HvStatus::INVALID_HYPERCALL_CODE, 0).into_bits();
        }
        self.part.hypercall(self.vp, control, rdx, r8)
    }
}
