//! Guest drivers over a [`Platform`]: hypercall setup and calls, SynIC, the reference clock,
//! synthetic timers and crash reporting.
//!
//! The drivers allocate nothing: the caller provides every page as a [`PageRef`] (memory plus
//! guest-physical address) and keeps it alive as long as the driver that uses it.
#![forbid(unsafe_code)]

mod clock;
mod crash;
mod synic;
mod timer;

pub use clock::ReferenceClock;
pub use crash::{crash_capabilities, report_crash, report_crash_message};
pub use synic::{SintConfig, SynIc};
pub use timer::{SyntheticTimer, TimerMode};

use crate::abi::{
    CallCode, Control, HvStatus, HypercallResult, PayloadTooLarge, PostMessageInput,
    SignalEventInput, MAX_REP_COUNT, MAX_VARIABLE_HEADER_QWORDS,
};
use crate::cpuid::{detect, DetectError, HvCpuidInfo};
use crate::msr::{self, GuestOsId, HypercallMsr};
use crate::page::PageRef;
use crate::platform::Platform;
use crate::synic::MessageType;
use zerocopy::IntoBytes;

/// What a driver operation can fail with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No usable Hyper-V interface.
    Detect(DetectError),
    /// The partition lacks a privilege the operation needs (its TLFS name).
    MissingPrivilege(&'static str),
    /// GUEST_OS_ID must be non-zero before the hypercall page is enabled.
    ZeroGuestOsId,
    /// The HYPERCALL MSR is locked to another page.
    HypercallLocked {
        /// The GPA the locked MSR points at.
        gpa: u64,
    },
    /// The HYPERCALL MSR did not read back enabled at the requested page.
    HypercallPageNotEnabled {
        /// The value read back.
        readback: u64,
    },
    /// A hypercall failed.
    Status(HvStatus),
    /// A rep hypercall failed after completing `completed` reps (a total).
    Rep {
        /// The failing status.
        status: HvStatus,
        /// Reps completed.
        completed: u16,
    },
    /// A rep hypercall reported success without progress (or more reps than asked): a
    /// misbehaving host; the driver stops instead of looping.
    RepNoProgress {
        /// The rep start index of the call.
        start: u16,
        /// The reps-completed value returned.
        completed: u16,
    },
    /// A rep count of 0 or above 4095, or a variable header above 1023 qwords.
    InvalidRepCount(u16),
    /// A HvPostMessage payload above 240 bytes.
    PayloadTooLarge(PayloadTooLarge),
    /// A SINT index of 16 or more.
    InvalidSint(u8),
    /// An interrupt vector below 16.
    InvalidVector(u8),
    /// A synthetic timer index of 4 or more.
    InvalidTimer(u8),
    /// A timer count of 0 (which would stop the timer, not start it).
    ZeroTimerCount,
    /// An event flag number of 2048 or more.
    InvalidEventFlag(u16),
    /// A crash message longer than 4096 bytes.
    CrashMessageTooLong(usize),
}

impl From<DetectError> for Error {
    fn from(e: DetectError) -> Self {
        Self::Detect(e)
    }
}

impl From<HvStatus> for Error {
    fn from(s: HvStatus) -> Self {
        Self::Status(s)
    }
}

impl From<PayloadTooLarge> for Error {
    fn from(e: PayloadTooLarge) -> Self {
        Self::PayloadTooLarge(e)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Detect(e) => write!(f, "Hyper-V not detected: {e:?}"),
            Self::MissingPrivilege(p) => write!(f, "missing partition privilege {p}"),
            Self::ZeroGuestOsId => f.write_str("guest OS id must be non-zero"),
            Self::HypercallLocked { gpa } => write!(f, "HYPERCALL MSR locked at {gpa:#x}"),
            Self::HypercallPageNotEnabled { readback } => {
                write!(
                    f,
                    "hypercall page not enabled (HYPERCALL reads {readback:#x})"
                )
            }
            Self::Status(s) => write!(f, "hypercall failed: {s}"),
            Self::Rep { status, completed } => {
                write!(f, "rep hypercall failed: {status} after {completed} reps")
            }
            Self::RepNoProgress { start, completed } => write!(
                f,
                "rep hypercall made no progress (start {start}, completed {completed})"
            ),
            Self::InvalidRepCount(n) => write!(f, "invalid rep count or header size {n}"),
            Self::PayloadTooLarge(e) => e.fmt(f),
            Self::InvalidSint(n) => write!(f, "invalid SINT {n}"),
            Self::InvalidVector(v) => write!(f, "invalid vector {v:#x}"),
            Self::InvalidTimer(n) => write!(f, "invalid synthetic timer {n}"),
            Self::ZeroTimerCount => f.write_str("timer count 0"),
            Self::InvalidEventFlag(n) => write!(f, "invalid event flag {n}"),
            Self::CrashMessageTooLong(n) => write!(f, "crash message of {n} bytes exceeds 4096"),
        }
    }
}

/// The hypercall interface: detection, GUEST_OS_ID, the hypercall page, and calls through it.
pub struct Hypervisor<'a, P: Platform> {
    platform: &'a P,
    page: PageRef<'a>,
    info: HvCpuidInfo,
}

impl<'a, P: Platform> Hypervisor<'a, P> {
    /// The init sequence: detect Hyper-V, check the hypercall privilege, write GUEST_OS_ID, then
    /// read HYPERCALL and write it back with enable set and the page number of `hypercall_page`
    /// (keeping the reserved bits), and check that it reads back enabled at that page.
    pub fn init(
        platform: &'a P,
        guest_os_id: GuestOsId,
        hypercall_page: PageRef<'a>,
    ) -> Result<Self, Error> {
        let info = detect(|leaf, sub| platform.cpuid(leaf, sub))?;
        if !info.privileges.access_hypercall_msrs() {
            return Err(Error::MissingPrivilege("AccessHypercallMsrs"));
        }
        if guest_os_id.into_bits() == 0 {
            return Err(Error::ZeroGuestOsId);
        }
        platform.wrmsr(msr::GUEST_OS_ID, guest_os_id.into_bits());
        let current = HypercallMsr::from_bits(platform.rdmsr(msr::HYPERCALL));
        if current.locked() && current.gpa() != hypercall_page.gpa() {
            return Err(Error::HypercallLocked { gpa: current.gpa() });
        }
        let wanted = current.with_enable(true).with_gpa(hypercall_page.gpa());
        platform.wrmsr(msr::HYPERCALL, wanted.into_bits());
        let readback = HypercallMsr::from_bits(platform.rdmsr(msr::HYPERCALL));
        if !readback.enable() || readback.gpa() != hypercall_page.gpa() {
            return Err(Error::HypercallPageNotEnabled {
                readback: readback.into_bits(),
            });
        }
        Ok(Self {
            platform,
            page: hypercall_page,
            info,
        })
    }

    /// Uses a hypercall page that is already enabled (e.g. by [`Hypervisor::init`] on another
    /// VP: GUEST_OS_ID and HYPERCALL are partition-wide).
    pub fn attach(platform: &'a P, info: HvCpuidInfo, hypercall_page: PageRef<'a>) -> Self {
        Self {
            platform,
            page: hypercall_page,
            info,
        }
    }

    /// What detection found.
    pub fn info(&self) -> &HvCpuidInfo {
        &self.info
    }

    /// The platform.
    pub fn platform(&self) -> &'a P {
        self.platform
    }

    /// The hypercall page.
    pub fn hypercall_page(&self) -> PageRef<'a> {
        self.page
    }

    /// This VP's index (VP_INDEX MSR).
    pub fn vp_index(&self) -> u32 {
        self.platform.rdmsr(msr::VP_INDEX) as u32
    }

    /// One raw call: RCX = `control`, RDX = `rdx`, R8 = `r8`.
    pub fn call(&self, control: Control, rdx: u64, r8: u64) -> HypercallResult {
        HypercallResult::from_bits(self.platform.hypercall(
            &self.page,
            control.into_bits(),
            rdx,
            r8,
        ))
    }

    /// A simple slow (memory-based) call: the input and output blocks are at the start of the
    /// given pages (GPA 0 for an absent one).
    pub fn slow(
        &self,
        code: CallCode,
        input: Option<&PageRef<'_>>,
        output: Option<&PageRef<'_>>,
    ) -> Result<(), Error> {
        let r = self.call(Control::call(code), gpa_of(input), gpa_of(output));
        Ok(r.status().result()?)
    }

    /// A simple fast call with up to 16 bytes of input in RDX and R8.
    pub fn fast(&self, code: CallCode, input0: u64, input1: u64) -> Result<(), Error> {
        let r = self.call(Control::call(code).with_fast(true), input0, input1);
        Ok(r.status().result()?)
    }

    /// A slow rep call of `rep_count` elements (1..=4095) with a variable header of
    /// `variable_header_qwords`. When the hypervisor returns early with reps completed < count, the
    /// call is re-issued with rep start = reps completed until all are done.
    pub fn rep(
        &self,
        code: CallCode,
        rep_count: u16,
        variable_header_qwords: u16,
        input: Option<&PageRef<'_>>,
        output: Option<&PageRef<'_>>,
    ) -> Result<(), Error> {
        if rep_count == 0 || rep_count > MAX_REP_COUNT {
            return Err(Error::InvalidRepCount(rep_count));
        }
        if variable_header_qwords > MAX_VARIABLE_HEADER_QWORDS {
            return Err(Error::InvalidRepCount(variable_header_qwords));
        }
        let (rdx, r8) = (gpa_of(input), gpa_of(output));
        let mut start = 0;
        loop {
            let control = Control::call(code)
                .with_variable_header_size(variable_header_qwords)
                .with_rep_count(rep_count)
                .with_rep_start(start);
            let r = self.call(control, rdx, r8);
            let completed = r.reps_completed();
            if !r.status().is_success() {
                return Err(Error::Rep {
                    status: r.status(),
                    completed,
                });
            }
            if completed == rep_count {
                return Ok(());
            }
            if completed <= start || completed > rep_count {
                return Err(Error::RepNoProgress { start, completed });
            }
            start = completed;
        }
    }

    /// HvPostMessage: builds the 256-byte input block in `input_page` and makes the slow call.
    /// Payloads above 240 bytes are refused before anything is written.
    pub fn post_message(
        &self,
        input_page: &PageRef<'_>,
        connection_id: u32,
        message_type: MessageType,
        payload: &[u8],
    ) -> Result<(), Error> {
        let input = PostMessageInput::new(connection_id, message_type, payload)?;
        input_page.write_bytes(0, input.as_bytes());
        self.slow(CallCode::POST_MESSAGE, Some(input_page), None)
    }

    /// HvSignalEvent, fast form (RDX = connection id | flag number << 32), as Linux issues it.
    pub fn signal_event(&self, connection_id: u32, flag_number: u16) -> Result<(), Error> {
        let input = SignalEventInput {
            connection_id,
            flag_number,
            reserved: 0,
        };
        self.fast(CallCode::SIGNAL_EVENT, input.to_fast(), 0)
    }

    /// HvSignalEvent, slow form: the 8-byte input block in `input_page`.
    pub fn signal_event_slow(
        &self,
        input_page: &PageRef<'_>,
        connection_id: u32,
        flag_number: u16,
    ) -> Result<(), Error> {
        let input = SignalEventInput {
            connection_id,
            flag_number,
            reserved: 0,
        };
        input_page.write_bytes(0, input.as_bytes());
        self.slow(CallCode::SIGNAL_EVENT, Some(input_page), None)
    }

    /// Turns the interface off again: HYPERCALL enable cleared (other bits kept), then
    /// GUEST_OS_ID = 0, as Linux does on kexec.
    pub fn disable(self) {
        let current = HypercallMsr::from_bits(self.platform.rdmsr(msr::HYPERCALL));
        self.platform
            .wrmsr(msr::HYPERCALL, current.with_enable(false).into_bits());
        self.platform.wrmsr(msr::GUEST_OS_ID, 0);
    }
}

fn gpa_of(page: Option<&PageRef<'_>>) -> u64 {
    page.map_or(0, PageRef::gpa)
}

pub(crate) fn check_sint(sint: u8) -> Result<(), Error> {
    if sint < msr::SINT_COUNT {
        Ok(())
    } else {
        Err(Error::InvalidSint(sint))
    }
}

pub(crate) fn check_vector(vector: u8) -> Result<(), Error> {
    if vector >= msr::MIN_SINT_VECTOR {
        Ok(())
    } else {
        Err(Error::InvalidVector(vector))
    }
}

#[cfg(test)]
mod tests;
