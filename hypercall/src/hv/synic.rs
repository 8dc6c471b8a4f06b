//! SynIC driver: enable/configure, poll and consume messages (EOM protocol), event flags.

use super::{check_sint, check_vector, Error};
use crate::msr::{self, SControl, Siefp, Simp, Sint};
use crate::page::PageRef;
use crate::platform::Platform;
use crate::synic::{
    slot_offset, HvMessage, MessageFlags, MessageType, EVENT_FLAGS_PER_SINT, EVENT_FLAGS_SIZE,
};
use zerocopy::{FromZeros, IntoBytes};

/// How a SINT delivers (fact sheet §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SintConfig {
    /// Interrupt vector (16-255).
    pub vector: u8,
    /// Masked: nothing is delivered.
    pub masked: bool,
    /// AutoEOI: the hypervisor EOIs the interrupt itself.
    pub auto_eoi: bool,
    /// Polling: unmasked, but no interrupt is raised; the guest polls the slot.
    pub polling: bool,
}

impl SintConfig {
    /// Unmasked, interrupt on `vector`, no AutoEOI (what Linux does with hint bit 9).
    pub const fn interrupt(vector: u8) -> Self {
        Self {
            vector,
            masked: false,
            auto_eoi: false,
            polling: false,
        }
    }

    /// Unmasked in polling mode (needs feature bit 17); `vector` still has to be valid.
    pub const fn polled(vector: u8) -> Self {
        Self {
            vector,
            masked: false,
            auto_eoi: false,
            polling: true,
        }
    }

    /// Masked.
    pub const fn masked(vector: u8) -> Self {
        Self {
            vector,
            masked: true,
            auto_eoi: false,
            polling: false,
        }
    }

    /// With AutoEOI set.
    pub const fn with_auto_eoi(self, auto_eoi: bool) -> Self {
        Self { auto_eoi, ..self }
    }

    /// This configuration applied over `current`, whose other bits are kept.
    pub const fn apply(self, current: Sint) -> Sint {
        current
            .with_vector(self.vector)
            .with_masked(self.masked)
            .with_auto_eoi(self.auto_eoi)
            .with_polling(self.polling)
    }
}

/// The SynIC of the current VP, with its message page (SIMP) and event-flags page (SIEFP).
pub struct SynIc<'a, P: Platform> {
    platform: &'a P,
    simp: PageRef<'a>,
    siefp: PageRef<'a>,
}

impl<'a, P: Platform> SynIc<'a, P> {
    /// Enables the SynIC in Linux's order (fact sheet §2.3): SIMP, SIEFP, each SINT in `sints`,
    /// then SCONTROL, each as read-modify-write so preserved bits stay. Everything is validated
    /// before the first write.
    pub fn enable(
        platform: &'a P,
        simp: PageRef<'a>,
        siefp: PageRef<'a>,
        sints: &[(u8, SintConfig)],
    ) -> Result<Self, Error> {
        for &(sint, cfg) in sints {
            check_sint(sint)?;
            check_vector(cfg.vector)?;
        }
        let s = Self {
            platform,
            simp,
            siefp,
        };
        let v = Simp::from_bits(platform.rdmsr(msr::SIMP));
        platform.wrmsr(
            msr::SIMP,
            v.with_enable(true).with_gpa(simp.gpa()).into_bits(),
        );
        let v = Siefp::from_bits(platform.rdmsr(msr::SIEFP));
        platform.wrmsr(
            msr::SIEFP,
            v.with_enable(true).with_gpa(siefp.gpa()).into_bits(),
        );
        for &(sint, cfg) in sints {
            s.write_sint(sint, cfg);
        }
        let v = SControl::from_bits(platform.rdmsr(msr::SCONTROL));
        platform.wrmsr(msr::SCONTROL, v.with_enable(true).into_bits());
        Ok(s)
    }

    /// Uses a SynIC that is already enabled with these pages.
    pub fn attach(platform: &'a P, simp: PageRef<'a>, siefp: PageRef<'a>) -> Self {
        Self {
            platform,
            simp,
            siefp,
        }
    }

    /// The message page.
    pub fn simp(&self) -> PageRef<'a> {
        self.simp
    }

    /// The event-flags page.
    pub fn siefp(&self) -> PageRef<'a> {
        self.siefp
    }

    fn write_sint(&self, sint: u8, cfg: SintConfig) {
        let m = msr::sint(sint);
        let current = Sint::from_bits(self.platform.rdmsr(m));
        self.platform.wrmsr(m, cfg.apply(current).into_bits());
    }

    /// Configures one SINT (read-modify-write).
    pub fn configure_sint(&self, sint: u8, cfg: SintConfig) -> Result<(), Error> {
        check_sint(sint)?;
        check_vector(cfg.vector)?;
        self.write_sint(sint, cfg);
        Ok(())
    }

    /// Masks one SINT, keeping its other bits.
    pub fn mask_sint(&self, sint: u8) -> Result<(), Error> {
        check_sint(sint)?;
        let m = msr::sint(sint);
        let current = Sint::from_bits(self.platform.rdmsr(m));
        self.platform
            .wrmsr(m, current.with_masked(true).into_bits());
        Ok(())
    }

    /// Reads one SINT.
    pub fn sint(&self, sint: u8) -> Result<Sint, Error> {
        check_sint(sint)?;
        Ok(Sint::from_bits(self.platform.rdmsr(msr::sint(sint))))
    }

    /// Disables the SynIC like Linux's `hv_synic_disable_regs` after the caller masked its SINTs:
    /// SIMP enable = 0, SIEFP enable = 0, SCONTROL enable = 0.
    pub fn disable(self) {
        let p = self.platform;
        let v = Simp::from_bits(p.rdmsr(msr::SIMP));
        p.wrmsr(msr::SIMP, v.with_enable(false).into_bits());
        let v = Siefp::from_bits(p.rdmsr(msr::SIEFP));
        p.wrmsr(msr::SIEFP, v.with_enable(false).into_bits());
        let v = SControl::from_bits(p.rdmsr(msr::SCONTROL));
        p.wrmsr(msr::SCONTROL, v.with_enable(false).into_bits());
    }

    /// The type of the message in `sint`'s slot ([`MessageType::NONE`] when empty), without
    /// consuming it.
    pub fn poll(&self, sint: u8) -> Result<MessageType, Error> {
        check_sint(sint)?;
        Ok(MessageType(self.simp.load_u32(slot_offset(sint))))
    }

    /// Consumes the message in `sint`'s slot with the EOM protocol (fact sheet §4.3): copy it out,
    /// clear the message type with a compare-exchange, and if the cleared header had
    /// MessagePending set, write the EOM MSR so the hypervisor delivers the next one.
    ///
    /// Returns `None` if the slot is empty. The returned copy's flags are those seen at the moment
    /// the slot was freed.
    pub fn take_message(&self, sint: u8) -> Result<Option<HvMessage>, Error> {
        check_sint(sint)?;
        let base = slot_offset(sint);
        let mut header = self.simp.load_u64(base);
        let ty = header as u32;
        if ty == 0 {
            return Ok(None);
        }
        let mut msg = HvMessage::new_zeroed();
        self.simp.read_bytes(base, msg.as_mut_bytes());
        // The hypervisor may set MessagePending in the same qword at any time; retry the exchange
        // for as long as the slot still holds this message.
        loop {
            if header as u32 != ty {
                // The slot changed under us: only the guest empties a slot, so a conforming
                // hypervisor never does this. Leave it alone.
                return Ok(Some(msg));
            }
            match self
                .simp
                .compare_exchange_u64(base, header, header & !0xFFFF_FFFF)
            {
                Ok(_) => break,
                Err(actual) => header = actual,
            }
        }
        let flags = MessageFlags::from_bits((header >> 40) as u8);
        msg.header.message_type = MessageType(ty);
        msg.header.message_flags = flags;
        if flags.message_pending() {
            self.eom();
        }
        Ok(Some(msg))
    }

    /// Writes the EOM MSR (0): the hypervisor re-scans its queues.
    pub fn eom(&self) {
        self.platform.wrmsr(msr::EOM, 0);
    }

    fn flag_word(sint: u8, flag: u16) -> Result<(usize, u64), Error> {
        check_sint(sint)?;
        if flag as usize >= EVENT_FLAGS_PER_SINT {
            return Err(Error::InvalidEventFlag(flag));
        }
        Ok((
            slot_offset(sint) + (flag as usize / 64) * 8,
            1u64 << (flag % 64),
        ))
    }

    /// Atomically clears event flag `flag` of `sint`, returning whether it was set.
    pub fn test_and_clear_event(&self, sint: u8, flag: u16) -> Result<bool, Error> {
        let (offset, bit) = Self::flag_word(sint, flag)?;
        Ok(self.siefp.fetch_and_u64(offset, !bit) & bit != 0)
    }

    /// Whether event flag `flag` of `sint` is set (without clearing it).
    pub fn event_pending(&self, sint: u8, flag: u16) -> Result<bool, Error> {
        let (offset, bit) = Self::flag_word(sint, flag)?;
        Ok(self.siefp.load_u64(offset) & bit != 0)
    }

    /// Atomically takes every set event flag of `sint`, calling `f` with each flag number in
    /// ascending order; returns how many were set.
    pub fn take_events(&self, sint: u8, mut f: impl FnMut(u16)) -> Result<usize, Error> {
        check_sint(sint)?;
        let base = slot_offset(sint);
        let mut n = 0;
        for word in 0..EVENT_FLAGS_SIZE / 8 {
            let offset = base + word * 8;
            if self.siefp.load_u64(offset) == 0 {
                continue;
            }
            let mut bits = self.siefp.swap_u64(offset, 0);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                f((word * 64) as u16 + bit as u16);
                n += 1;
            }
        }
        Ok(n)
    }
}
