//! Hyper-V emulation, independent of KVM (fact sheet §1-4).
//!
//! [`Hypervisor`] plays the hypervisor side of the TLFS for one partition:
//! CPUID leaves 0x40000000..=0x4000000A, the synthetic MSRs, the hypercall
//! dispatcher behind the hypercall page, SynIC message/event delivery, the
//! reference clock (TIME_REF_COUNT and the reference TSC page) and the four
//! synthetic timers of every VP. It knows nothing of KVM: the VMM routes
//! guest exits into it (see docs/ARCHITECTURE.md, "The `hv` API"), and
//! [`inprocess`] runs the very same object without KVM for tests.
//!
//! Every value the guest supplies (MSR values, hypercall registers, GPAs,
//! message contents) is validated; a guest can make a call fail with the
//! TLFS status or a #GP, never make this code panic or touch memory outside
//! guest RAM.
//!
//! Known limitation: the VMM's in-kernel LAPIC has no AutoEOI. A SINT's
//! AutoEOI bit is recorded and reported by [`Hypervisor::auto_eoi`], but an
//! interrupt raised for such a SINT still needs an EOI unless the VMM
//! emulates one. Our CPUID recommends against AutoEOI (hint bit 9), which
//! makes Linux EOI itself.

mod clock;
mod cpuid;
mod gmem;
mod hcall;
pub mod inprocess;
mod msr;
mod services;
mod stats;
mod synic;
mod timer;
mod tscpage;
mod wire;

pub use clock::{scale_for_tsc_hz, RefClock, REF_TICKS_PER_SEC};
pub use gmem::{GpaError, PAGE_SIZE};
pub use services::{
    ECHO_CONNECTION_ID, ECHO_MAX_COPIES, ECHO_MESSAGE_TYPE, EVENT_CONNECTION_ID, EVENT_TARGET_SINT,
};
pub use stats::HvStats;
pub use synic::{MAX_QUEUED_PER_SINT, SINT_COUNT};
pub use timer::STIMER_COUNT;

use gmem::GuestMem;
use stats::bump;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use synic::{Effects, Pending, Synic};
use timer::{Stimer, TimerCtl};

/// I/O port the hypercall page trampoline writes to (`out 0xF5, eax`).
pub const HYPERCALL_PORT: u16 = 0xF5;

/// Hypercall page contents: `endbr64; out 0xF5, eax; ret`. ENDBR64 first so
/// Linux keeps IBT enabled (fact sheet §2.2).
pub const HYPERCALL_PAGE_CODE: [u8; 7] = [0xF3, 0x0F, 0x1E, 0xFA, 0xE7, 0xF5, 0xC3];

/// Highest MSR routed to [`Hypervisor`] by [`Hypervisor::is_hv_msr`].
pub const HV_MSR_LAST: u32 = *hypercall::msr::SYNTHETIC_MSR_RANGE.end();
/// Lowest MSR routed to [`Hypervisor`].
pub const HV_MSR_FIRST: u32 = *hypercall::msr::SYNTHETIC_MSR_RANGE.start();

/// Number of event flags per SINT (fact sheet §4.2: 256 bytes of bits).
pub const EVENT_FLAGS_PER_SINT: u32 = hypercall::synic::EVENT_FLAGS_PER_SINT as u32;

pub use cpuid::{CpuidLeaf, HvFeatures, KVM_APIC_FREQUENCY_HZ};

/// Partition configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvConfig {
    /// Number of VPs; VP indices are 0..vp_count (== KVM vcpu ids).
    pub vp_count: u32,
    /// Guest TSC frequency in Hz (KVM_GET_TSC_KHZ * 1000). Must exceed 10 MHz.
    pub tsc_hz: u64,
    /// What CPUID advertises and which MSRs/hypercalls are granted.
    pub features: HvFeatures,
}

/// Where interrupts go: fixed delivery, edge, to one VP's LAPIC.
pub trait InterruptSink: Send + Sync {
    /// Raise `vector` on VP `vp`.
    fn raise(&self, vp: u32, vector: u8);
}

/// The guest-visible TSC.
pub trait GuestTsc: Send + Sync {
    /// The guest TSC value right now.
    fn now(&self) -> u64;
}

/// Registers of a hypercall: RCX (control), RDX, R8 in; RAX out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HypercallRegs {
    /// Hypercall input value (fact sheet §3.1).
    pub rcx: u64,
    /// Input GPA (slow) or first input qword (fast).
    pub rdx: u64,
    /// Output GPA (slow) or second input qword (fast).
    pub r8: u64,
    /// Result value (fact sheet §3.2), written by [`Hypervisor::hypercall`].
    pub rax: u64,
}

/// Re-export of the TLFS status type used by message-port handlers.
pub use hcall::HvStatus;

/// A message a guest posted with HvPostMessage to a registered connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFromGuest {
    /// The posting VP.
    pub vp: u32,
    /// Connection id (bits 23:0 of the input's ConnectionId).
    pub connection_id: u32,
    /// Message type (non-zero, bit 31 clear).
    pub message_type: u32,
    /// Payload, at most 240 bytes.
    pub payload: Vec<u8>,
}

/// Handler of a message connection.
pub type MessageHandler = dyn Fn(&MessageFromGuest) -> HvStatus + Send + Sync;
/// Handler of an event connection: `(vp, flag)`.
pub type EventHandler = dyn Fn(u32, u16) + Send + Sync;

/// A guest crash notification (CRASH_CTL write with CrashNotify).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CrashReport {
    /// The VP that wrote CRASH_CTL.
    pub vp: u32,
    /// CRASH_P0..P4 at the time of the notification.
    pub params: [u64; 5],
    /// The CRASH_CTL value written.
    pub control: u64,
    /// With CrashMessage: the text at GPA P3, length P4 (<= 4096), lossily
    /// decoded; `None` without CrashMessage or if the range was not RAM.
    pub message: Option<String>,
}

/// Errors of the host-side API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HvError {
    /// The configuration cannot be used.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// No such VP.
    #[error("VP {0} does not exist")]
    InvalidVp(u32),
    /// SINT out of range.
    #[error("SINT {0} out of range")]
    InvalidSint(u8),
    /// Message payload over 240 bytes.
    #[error("message payload of {0} bytes exceeds 240")]
    PayloadTooLarge(usize),
    /// Message type 0 is "slot empty".
    #[error("message type {0:#x} is not allowed")]
    InvalidMessageType(u32),
    /// Event flag beyond 2047.
    #[error("event flag {0} out of range")]
    InvalidEventFlag(u32),
    /// Too many messages waiting for one SINT.
    #[error("message queue of VP {vp} SINT {sint} is full")]
    QueueFull {
        /// Target VP.
        vp: u32,
        /// Target SINT.
        sint: u8,
    },
    /// SynIC or the SIEF page of the target VP is not enabled.
    #[error("SynIC event page of VP {0} is not enabled")]
    SynicDisabled(u32),
    /// A guest page the operation needs is not usable.
    #[error("guest memory: {0}")]
    GuestMemory(#[from] GpaError),
}

/// Why a guest MSR access raises #GP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsrFault {
    /// Not an MSR we implement.
    #[error("MSR {0:#x} is not implemented")]
    Unknown(u32),
    /// Implemented, but the partition privilege / feature is not granted.
    #[error("MSR {0:#x} is not available to this partition")]
    NotAvailable(u32),
    /// Write to a read-only MSR.
    #[error("MSR {0:#x} is read-only")]
    ReadOnly(u32),
    /// Reserved bits set or a field out of range.
    #[error("invalid value {value:#x} for MSR {msr:#x}")]
    InvalidValue {
        /// The MSR.
        msr: u32,
        /// The rejected value.
        value: u64,
    },
    /// The HYPERCALL MSR is locked until the next reset.
    #[error("MSR {0:#x} is locked")]
    Locked(u32),
    /// The page the value points at is not guest RAM.
    #[error("MSR {msr:#x}: page {gpa:#x} is outside guest RAM")]
    PageOutsideRam {
        /// The MSR.
        msr: u32,
        /// The page GPA.
        gpa: u64,
    },
    /// The accessing VP does not exist.
    #[error("VP {0} does not exist")]
    InvalidVp(u32),
}

/// Partition-wide MSR state (fact sheet §2.1, scope "P").
#[derive(Debug, Clone, Default)]
struct Partition {
    guest_os_id: u64,
    hypercall: u64,
    reference_tsc: u64,
    /// Last TscSequence written to the page (never 0 once written).
    tsc_sequence: u32,
    crash_p: [u64; 5],
    crash_ctl: u64,
    crash: Option<CrashReport>,
}

/// Per-VP state (scope "VP").
#[derive(Debug, Clone, Default)]
struct VpState {
    synic: Synic,
    timers: [Stimer; STIMER_COUNT],
    vp_assist: u64,
}

impl VpState {
    /// Deliveries may have moved timer messages into their slots.
    fn settle(&mut self, fx: &mut Effects) {
        timer::note_delivered(&mut self.timers, fx);
    }
}

/// Poison-tolerant lock: a panic elsewhere (say, in a host handler) must
/// not take the whole partition down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything shared with the timer thread.
struct Inner {
    cfg: HvConfig,
    mem: GuestMem,
    irq: Arc<dyn InterruptSink>,
    tsc: Arc<dyn GuestTsc>,
    clock: RefClock,
    part: Mutex<Partition>,
    vps: Vec<Mutex<VpState>>,
    msg_ports: RwLock<HashMap<u32, Arc<MessageHandler>>>,
    evt_ports: RwLock<HashMap<u32, Arc<EventHandler>>>,
    stats: Mutex<HvStats>,
    timer_ctl: TimerCtl,
}

impl Inner {
    fn vp(&self, vp: u32) -> Option<MutexGuard<'_, VpState>> {
        self.vps.get(vp as usize).map(lock)
    }

    /// Reference time now (100 ns units).
    fn now(&self) -> u64 {
        self.clock.ref_from_tsc(self.tsc.now())
    }

    /// Account for and perform the effects of an operation, outside any VP
    /// lock.
    fn apply(&self, vp: u32, fx: Effects) {
        if fx == Effects::default() {
            return;
        }
        {
            let mut s = lock(&self.stats);
            s.messages_delivered += fx.delivered;
            s.messages_queued += fx.queued;
            s.messages_redelivered_on_eom += fx.redelivered;
            s.messages_dropped += fx.dropped;
            s.events_signalled += fx.events;
            s.events_coalesced += fx.coalesced;
            s.timer_expirations += fx.timer_expirations;
            s.timer_expirations_missed += fx.timer_missed;
            for v in &fx.raises {
                bump(&mut s.interrupts_by_vector, format!("{v:#04x}"));
            }
        }
        for v in fx.raises {
            self.irq.raise(vp, v);
        }
    }

    fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), HvError> {
        if sint as usize >= SINT_COUNT {
            return Err(HvError::InvalidSint(sint));
        }
        if payload.len() > wire::MESSAGE_PAYLOAD_SIZE {
            return Err(HvError::PayloadTooLarge(payload.len()));
        }
        if message_type == 0 {
            return Err(HvError::InvalidMessageType(message_type));
        }
        let now = self.now();
        let mut fx = Effects::default();
        {
            let mut st = self.vp(vp).ok_or(HvError::InvalidVp(vp))?;
            let msg = Pending::Message {
                message_type,
                payload: payload.to_vec(),
            };
            let r = st
                .synic
                .enqueue(sint as usize, msg, &self.mem, now, &mut fx);
            st.settle(&mut fx);
            if r.is_err() {
                drop(st);
                self.apply(vp, fx);
                return Err(HvError::QueueFull { vp, sint });
            }
        }
        self.apply(vp, fx);
        Ok(())
    }

    fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<bool, HvError> {
        if sint as usize >= SINT_COUNT {
            return Err(HvError::InvalidSint(sint));
        }
        if flag >= EVENT_FLAGS_PER_SINT {
            return Err(HvError::InvalidEventFlag(flag));
        }
        let mut fx = Effects::default();
        let r = {
            let mut st = self.vp(vp).ok_or(HvError::InvalidVp(vp))?;
            if st.synic.sief_page().is_none() {
                return Err(HvError::SynicDisabled(vp));
            }
            st.synic.set_event(sint as usize, flag, &self.mem, &mut fx)
        };
        self.apply(vp, fx);
        Ok(r?)
    }

    /// Fire due timers on every VP; returns the earliest remaining deadline.
    fn process_timers(&self) -> Option<u64> {
        let mut earliest: Option<u64> = None;
        for vp in 0..self.cfg.vp_count {
            let now = self.now();
            let mut fx = Effects::default();
            let next = {
                let Some(mut st) = self.vp(vp) else { continue };
                let VpState { synic, timers, .. } = &mut *st;
                timer::fire_due(timers, synic, &self.mem, now, &mut fx);
                timer::earliest(timers)
            };
            self.apply(vp, fx);
            earliest = match (earliest, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        earliest
    }

    fn timer_thread(self: Arc<Self>) {
        while let Some(seen) = self.timer_ctl.generation() {
            let next = self.process_timers();
            let timeout = next.map(|d| {
                let now = self.now();
                RefClock::ref_to_duration(d.saturating_sub(now))
                    .clamp(timer::MIN_SLEEP, timer::MAX_SLEEP)
            });
            if !self.timer_ctl.wait(seen, timeout) {
                break;
            }
        }
        tracing::debug!("hv timer thread stopped");
    }
}

/// The Hyper-V emulation of one partition. Shared as `Arc<Hypervisor>`;
/// every method takes `&self`.
pub struct Hypervisor {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Hypervisor {
    /// Create the partition's hypervisor state (all registers at their
    /// power-on values, reference time 0 now) and start the timer thread.
    pub fn new(
        cfg: HvConfig,
        mem: vm_memory::GuestMemoryMmap,
        irq: Arc<dyn InterruptSink>,
        tsc: Arc<dyn GuestTsc>,
    ) -> Result<Arc<Self>, HvError> {
        if cfg.vp_count == 0 {
            return Err(HvError::InvalidConfig("vp_count must be at least 1"));
        }
        if cfg.vp_count > 4096 {
            return Err(HvError::InvalidConfig("vp_count above 4096"));
        }
        let clock = RefClock::new(cfg.tsc_hz, tsc.now())
            .ok_or(HvError::InvalidConfig("tsc_hz must be above 10 MHz"))?;
        let vps = (0..cfg.vp_count)
            .map(|_| Mutex::new(VpState::default()))
            .collect();
        let inner = Arc::new(Inner {
            cfg,
            mem: GuestMem::new(mem),
            irq,
            tsc,
            clock,
            part: Mutex::new(Partition::default()),
            vps,
            msg_ports: RwLock::new(HashMap::new()),
            evt_ports: RwLock::new(HashMap::new()),
            stats: Mutex::new(HvStats::default()),
            timer_ctl: TimerCtl::default(),
        });
        let thread_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("hv-stimer".into())
            .spawn(move || thread_inner.timer_thread())
            .map_err(|_| HvError::InvalidConfig("cannot spawn the timer thread"))?;
        Ok(Arc::new(Self {
            inner,
            thread: Mutex::new(Some(handle)),
        }))
    }

    /// The configuration this partition was created with.
    pub fn config(&self) -> &HvConfig {
        &self.inner.cfg
    }

    /// CPUID entries for 0x40000000..=0x4000000A.
    pub fn cpuid_leaves(&self) -> Vec<CpuidLeaf> {
        cpuid::leaves(&self.inner.cfg)
    }

    /// Whether the VMM should route this MSR to us.
    pub fn is_hv_msr(msr: u32) -> bool {
        (HV_MSR_FIRST..=HV_MSR_LAST).contains(&msr)
    }

    /// Guest RDMSR. `Err` means the VMM injects #GP.
    pub fn msr_read(&self, vp: u32, msr: u32) -> Result<u64, MsrFault> {
        let r = self.inner.msr_read(vp, msr);
        let mut s = lock(&self.inner.stats);
        bump(&mut s.msr_reads, msr::name(msr));
        if let Err(e) = &r {
            bump(&mut s.msr_faults, msr::name(msr));
            tracing::debug!(vp, msr = format_args!("{msr:#x}"), error = %e, "RDMSR #GP");
        }
        r
    }

    /// Guest WRMSR. `Err` means the VMM injects #GP.
    pub fn msr_write(&self, vp: u32, msr: u32, value: u64) -> Result<(), MsrFault> {
        {
            let mut s = lock(&self.inner.stats);
            bump(&mut s.msr_writes, msr::name(msr));
        }
        let r = self.inner.msr_write(vp, msr, value);
        if let Err(e) = &r {
            bump(&mut lock(&self.inner.stats).msr_faults, msr::name(msr));
            tracing::debug!(vp, msr = format_args!("{msr:#x}"), value = format_args!("{value:#x}"), error = %e, "WRMSR #GP");
        }
        r
    }

    /// A hypercall from VP `vp` (the trampoline's OUT). Reads RCX/RDX/R8,
    /// writes RAX (and RCX for rep calls). Never panics.
    pub fn hypercall(&self, vp: u32, regs: &mut HypercallRegs) {
        self.inner.hypercall(vp, regs);
    }

    /// Whether the guest has enabled the hypercall page (a VMM may choose
    /// to inject #UD for a hypercall before that; [`Hypervisor::hypercall`]
    /// itself answers ACCESS_DENIED).
    pub fn hypercall_page_enabled(&self) -> bool {
        self.inner.hypercall_page_enabled()
    }

    /// Route HvPostMessage to `connection_id` (bits 23:0) to `handler`,
    /// replacing an earlier registration. The handler runs on the posting
    /// vCPU's thread with no hypervisor lock held; its status is returned to
    /// the guest.
    pub fn register_message_port(
        &self,
        connection_id: u32,
        handler: Box<dyn Fn(&MessageFromGuest) -> HvStatus + Send + Sync>,
    ) {
        let mut ports = self
            .inner
            .msg_ports
            .write()
            .unwrap_or_else(|e| e.into_inner());
        ports.insert(
            connection_id & hcall::CONNECTION_ID_MASK,
            Arc::from(handler),
        );
    }

    /// Route HvSignalEvent to `connection_id` to `handler(vp, flag)`.
    pub fn register_event_port(
        &self,
        connection_id: u32,
        handler: Box<dyn Fn(u32, u16) + Send + Sync>,
    ) {
        let mut ports = self
            .inner
            .evt_ports
            .write()
            .unwrap_or_else(|e| e.into_inner());
        ports.insert(
            connection_id & hcall::CONNECTION_ID_MASK,
            Arc::from(handler),
        );
    }

    /// Host-to-guest message into SINT `sint` of VP `vp`. Written at once if
    /// the slot is free; otherwise queued (MessagePending is set in the
    /// occupying message) and delivered on the guest's EOM. Also queued while
    /// the VP's SynIC or message page is disabled, and delivered when the
    /// guest enables them.
    pub fn post_message(
        &self,
        vp: u32,
        sint: u8,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), HvError> {
        self.inner.post_message(vp, sint, message_type, payload)
    }

    /// Set event flag `flag` in SINT `sint`'s slot of VP `vp`'s SIEF page and
    /// raise the SINT if the flag was clear (and the SINT is not masked or
    /// polling). Fails if the VP's SynIC or SIEF page is not enabled.
    pub fn signal_event(&self, vp: u32, sint: u8, flag: u32) -> Result<(), HvError> {
        self.inner.signal_event(vp, sint, flag).map(|_| ())
    }

    /// Install the host test services (docs/ARCHITECTURE.md, "Host test
    /// services").
    pub fn install_test_services(self: &Arc<Self>) {
        services::install(self);
    }

    /// The last guest crash notification since power-on/reset.
    pub fn crash(&self) -> Option<CrashReport> {
        lock(&self.inner.part).crash.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> HvStats {
        lock(&self.inner.stats).clone()
    }

    /// Reference time now (100 ns units since creation or the last reset).
    pub fn reference_time(&self) -> u64 {
        self.inner.now()
    }

    /// The reference clock (scale/offset of the reference TSC page).
    pub fn clock(&self) -> &RefClock {
        &self.inner.clock
    }

    /// Whether SINT `sint` of VP `vp` has AutoEOI set. The in-kernel LAPIC
    /// cannot do AutoEOI; a VMM that wants it must EOI on the guest's behalf.
    pub fn auto_eoi(&self, vp: u32, sint: u8) -> bool {
        if sint as usize >= SINT_COUNT {
            return false;
        }
        self.inner
            .vp(vp)
            .is_some_and(|st| st.synic.sint_reg(sint as usize).auto_eoi())
    }

    /// Vectors of VP `vp`'s unmasked AutoEOI SINTs.
    pub fn auto_eoi_vectors(&self, vp: u32) -> Vec<u8> {
        let Some(st) = self.inner.vp(vp) else {
            return Vec::new();
        };
        (0..SINT_COUNT)
            .map(|i| st.synic.sint_reg(i))
            .filter(|r| r.auto_eoi() && !r.masked())
            .map(|r| r.vector())
            .collect()
    }

    /// Messages waiting (not yet in a slot) for VP `vp`.
    pub fn queued_messages(&self, vp: u32) -> usize {
        self.inner.vp(vp).map_or(0, |st| st.synic.queued())
    }

    /// Fire every timer that is due now, on the caller's thread. The timer
    /// thread does this on its own; tests with a controlled clock call it
    /// after moving the clock. Returns the earliest remaining deadline.
    pub fn process_timers(&self) -> Option<u64> {
        self.inner.process_timers()
    }

    /// Make the timer thread re-evaluate deadlines now (e.g. after the
    /// guest TSC was moved).
    pub fn kick_timers(&self) {
        self.inner.timer_ctl.kick();
    }

    /// Back to power-on state: all MSRs, queues and timers; reference time
    /// restarts at 0 from the guest TSC as it is now (so a VMM that resets
    /// the guest TSC should do so first). Port registrations and stats stay.
    pub fn reset(&self) {
        *lock(&self.inner.part) = Partition::default();
        for vp in &self.inner.vps {
            *lock(vp) = VpState::default();
        }
        self.inner.clock.restart_at(self.inner.tsc.now());
        self.inner.timer_ctl.kick();
    }

    /// Stop the timer thread. Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.inner.timer_ctl.stop();
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                tracing::error!("hv timer thread panicked");
            }
        }
    }

    /// Whether [`Hypervisor::shutdown`] has run.
    pub fn is_shut_down(&self) -> bool {
        self.inner.timer_ctl.stopped()
    }

    /// Guest memory as the emulation sees it.
    pub fn memory(&self) -> &vm_memory::GuestMemoryMmap {
        self.inner.mem.inner()
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests;
