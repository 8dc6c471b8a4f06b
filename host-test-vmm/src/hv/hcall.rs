//! Hypercall dispatcher (fact sheet §3): HvPostMessage and HvSignalEvent;
//! every other call code is INVALID_HYPERCALL_CODE.

use super::gmem::GpaError;
use super::stats::bump;
use super::{lock, HypercallRegs, Inner, MessageFromGuest, EVENT_FLAGS_PER_SINT};
use hypercall::abi::{CallCode, Control, HypercallResult, PostMessageInput, SignalEventInput};
use hypercall::msr::HypercallMsr;
use zerocopy::FromBytes;

pub use hypercall::abi::HvStatus;

/// Connection ids are 24 bits (fact sheet §3.5: bits 31:24 reserved).
pub(crate) const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;

/// Stats key of a call code.
fn code_name(code: CallCode) -> String {
    code.name()
        .map_or_else(|| format!("{:#06x}", code.0), String::from)
}

/// Stats key of a status.
pub(crate) fn status_name(status: HvStatus) -> String {
    status
        .name()
        .map_or_else(|| format!("{:#06x}", status.0), String::from)
}

/// Checks shared by the simple (non-rep) calls we implement.
fn check_simple(control: Control) -> Result<(), HvStatus> {
    if !control.reserved_bits_clear()
        || control.nested()
        || control.rep_count() != 0
        || control.rep_start() != 0
        || control.variable_header_size() != 0
    {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(())
}

/// Any unusable input GPA is INVALID_ALIGNMENT (fact sheet §3.4: unaligned,
/// crossing a page, or outside the GPA space).
fn gpa_status(_: GpaError) -> HvStatus {
    HvStatus::INVALID_ALIGNMENT
}

impl Inner {
    pub(crate) fn hypercall_page_enabled(&self) -> bool {
        HypercallMsr::from_bits(lock(&self.part).hypercall).enable()
    }

    pub(crate) fn hypercall(&self, vp: u32, regs: &mut HypercallRegs) {
        let control = Control::from_bits(regs.rcx);
        let code = control.call_code();
        let status = self
            .dispatch(vp, control, regs)
            .err()
            .unwrap_or(HvStatus::SUCCESS);
        // Simple calls only: no reps completed, RCX untouched.
        regs.rax = HypercallResult::with(status, 0).into_bits();
        {
            let mut s = lock(&self.stats);
            bump(&mut s.hypercalls_by_code, code_name(code));
            bump(&mut s.hypercalls_by_status, status_name(status));
        }
        if status != HvStatus::SUCCESS {
            tracing::debug!(vp, rcx = format_args!("{:#x}", regs.rcx), %status, "hypercall failed");
        }
    }

    fn dispatch(&self, vp: u32, control: Control, regs: &HypercallRegs) -> Result<(), HvStatus> {
        if vp as usize >= self.vps.len() {
            return Err(HvStatus::INVALID_VP_INDEX);
        }
        let handler: fn(&Self, u32, Control, &HypercallRegs) -> Result<(), HvStatus> =
            match control.call_code() {
                CallCode::POST_MESSAGE => Self::hc_post_message,
                CallCode::SIGNAL_EVENT => Self::hc_signal_event,
                _ => return Err(HvStatus::INVALID_HYPERCALL_CODE),
            };
        check_simple(control)?;
        // The trampoline is reachable only through an enabled hypercall
        // page; a stray OUT to the port gets ACCESS_DENIED.
        if !self.hypercall_page_enabled() {
            return Err(HvStatus::ACCESS_DENIED);
        }
        handler(self, vp, control, regs)
    }

    fn hc_post_message(
        &self,
        vp: u32,
        control: Control,
        regs: &HypercallRegs,
    ) -> Result<(), HvStatus> {
        if !self.cfg.features.privileges.post_messages() {
            return Err(HvStatus::ACCESS_DENIED);
        }
        if control.fast() {
            // 256 bytes of input do not fit in two registers, and XMM input
            // is not offered.
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        let gpa = regs.rdx;
        let size = size_of::<PostMessageInput>();
        self.mem.check_block(gpa, size, 8).map_err(gpa_status)?;
        let mut buf = [0u8; size_of::<PostMessageInput>()];
        self.mem.read(gpa, &mut buf).map_err(gpa_status)?;
        let input = PostMessageInput::read_from_bytes(&buf[..])
            .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)?;
        if input.reserved != 0 {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        if input.connection_id & !CONNECTION_ID_MASK != 0 {
            return Err(HvStatus::INVALID_CONNECTION_ID);
        }
        let handler = self
            .msg_ports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&input.connection_id)
            .cloned()
            .ok_or(HvStatus::INVALID_CONNECTION_ID)?;
        let t = input.message_type.0;
        if t == 0
            || t & 0x8000_0000 != 0
            || input.payload_size as usize > hypercall::abi::MAX_MESSAGE_PAYLOAD
        {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        let msg = MessageFromGuest {
            vp,
            connection_id: input.connection_id,
            message_type: t,
            payload: input.payload().to_vec(),
        };
        // No lock held: the handler may post messages or signal events.
        let status = handler(&msg);
        if status == HvStatus::SUCCESS {
            lock(&self.stats).guest_messages_posted += 1;
            Ok(())
        } else {
            Err(status)
        }
    }

    fn hc_signal_event(
        &self,
        vp: u32,
        control: Control,
        regs: &HypercallRegs,
    ) -> Result<(), HvStatus> {
        if !self.cfg.features.privileges.signal_events() {
            return Err(HvStatus::ACCESS_DENIED);
        }
        let input = if control.fast() {
            SignalEventInput::from_fast(regs.rdx)
        } else {
            let gpa = regs.rdx;
            let size = size_of::<SignalEventInput>();
            self.mem.check_block(gpa, size, 8).map_err(gpa_status)?;
            let mut buf = [0u8; size_of::<SignalEventInput>()];
            self.mem.read(gpa, &mut buf).map_err(gpa_status)?;
            SignalEventInput::read_from_bytes(&buf[..])
                .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)?
        };
        if input.reserved != 0 {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        if input.connection_id & !CONNECTION_ID_MASK != 0 {
            return Err(HvStatus::INVALID_CONNECTION_ID);
        }
        let handler = self
            .evt_ports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&input.connection_id)
            .cloned()
            .ok_or(HvStatus::INVALID_CONNECTION_ID)?;
        if u32::from(input.flag_number) >= EVENT_FLAGS_PER_SINT {
            return Err(HvStatus::INVALID_PARAMETER);
        }
        handler(vp, input.flag_number);
        Ok(())
    }
}
