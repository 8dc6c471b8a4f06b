//! Synthetic MSRs (fact sheet §2.1), partition-wide and per-VP.

use super::gmem::GuestMem;
use super::synic::{Cause, Effects};
use super::timer;
use super::{lock, CrashReport, Inner, MsrFault, HYPERCALL_PAGE_CODE};
use hypercall::msr::{
    self as m, CrashCtl, HypercallMsr, ReferenceTscMsr, SControl, Siefp, Simp, Sint, StimerConfig,
    StimerReg, VpAssistPageMsr, CRASH_MESSAGE_MAX, MIN_SINT_VECTOR, SYNIC_VERSION,
};

/// Stats key of an MSR: its TLFS name, or hex.
pub(crate) fn name(msr: u32) -> String {
    m::name(msr).map_or_else(|| format!("{msr:#x}"), String::from)
}

/// CRASH_CTL read value: the capabilities we honour.
fn crash_capabilities() -> u64 {
    CrashCtl::new()
        .with_crash_notify(true)
        .with_crash_message(true)
        .into_bits()
}

impl Inner {
    fn check_vp(&self, vp: u32) -> Result<(), MsrFault> {
        if (vp as usize) < self.vps.len() {
            Ok(())
        } else {
            Err(MsrFault::InvalidVp(vp))
        }
    }

    /// Whether the partition is granted access to `msr` (implemented MSRs
    /// only; `None` for MSRs we do not implement at all).
    fn granted(&self, msr: u32) -> Option<bool> {
        let p = self.cfg.features.privileges;
        let f = self.cfg.features.features;
        Some(match msr {
            m::GUEST_OS_ID | m::HYPERCALL => p.access_hypercall_msrs(),
            m::VP_INDEX => p.access_vp_index(),
            m::TIME_REF_COUNT => p.access_partition_reference_counter(),
            m::REFERENCE_TSC => p.access_partition_reference_tsc(),
            m::TSC_FREQUENCY | m::APIC_FREQUENCY => p.access_frequency_regs() && f.frequency_msrs(),
            m::VP_ASSIST_PAGE => p.access_intr_ctrl_regs(),
            m::SCONTROL | m::SVERSION | m::SIEFP | m::SIMP | m::EOM | m::SINT0..=m::SINT15 => {
                p.access_synic_regs()
            }
            m::STIMER0_CONFIG..=m::STIMER3_COUNT => p.access_synthetic_timer_regs(),
            m::CRASH_P0..=m::CRASH_CTL => f.guest_crash_msrs(),
            _ => return None,
        })
    }

    fn check_access(&self, vp: u32, msr: u32) -> Result<(), MsrFault> {
        self.check_vp(vp)?;
        match self.granted(msr) {
            None => Err(MsrFault::Unknown(msr)),
            Some(false) => Err(MsrFault::NotAvailable(msr)),
            Some(true) => Ok(()),
        }
    }

    pub(crate) fn msr_read(&self, vp: u32, msr: u32) -> Result<u64, MsrFault> {
        self.check_access(vp, msr)?;
        let unknown = MsrFault::Unknown(msr);
        let v = match msr {
            m::GUEST_OS_ID => lock(&self.part).guest_os_id,
            m::HYPERCALL => lock(&self.part).hypercall,
            m::VP_INDEX => u64::from(vp),
            m::TIME_REF_COUNT => self.now(),
            m::REFERENCE_TSC => lock(&self.part).reference_tsc,
            m::TSC_FREQUENCY => self.cfg.tsc_hz,
            m::APIC_FREQUENCY => self.cfg.features.apic_frequency_hz,
            m::CRASH_CTL => crash_capabilities(),
            m::CRASH_P0..=m::CRASH_P4 => lock(&self.part).crash_p[(msr - m::CRASH_P0) as usize],
            _ => {
                let st = self.vp(vp).ok_or(MsrFault::InvalidVp(vp))?;
                match msr {
                    m::VP_ASSIST_PAGE => st.vp_assist,
                    m::SCONTROL => st.synic.scontrol,
                    m::SVERSION => SYNIC_VERSION,
                    m::SIEFP => st.synic.siefp,
                    m::SIMP => st.synic.simp,
                    m::EOM => 0,
                    _ => {
                        if let Some(i) = m::sint_index(msr) {
                            st.synic.sint[usize::from(i)]
                        } else if let Some((i, reg)) = m::stimer_index(msr) {
                            let t = &st.timers[usize::from(i)];
                            match reg {
                                StimerReg::Config => t.config,
                                StimerReg::Count => t.count,
                            }
                        } else {
                            return Err(unknown);
                        }
                    }
                }
            }
        };
        Ok(v)
    }

    pub(crate) fn msr_write(&self, vp: u32, msr: u32, value: u64) -> Result<(), MsrFault> {
        self.check_access(vp, msr)?;
        let invalid = MsrFault::InvalidValue { msr, value };
        match msr {
            m::VP_INDEX
            | m::TIME_REF_COUNT
            | m::TSC_FREQUENCY
            | m::APIC_FREQUENCY
            | m::SVERSION => Err(MsrFault::ReadOnly(msr)),
            m::GUEST_OS_ID => {
                let mut p = lock(&self.part);
                p.guest_os_id = value;
                let hc = HypercallMsr::from_bits(p.hypercall);
                if value == 0 && !hc.locked() {
                    // Clearing the guest identity disables the hypercall page.
                    p.hypercall = hc.with_enable(false).into_bits();
                }
                Ok(())
            }
            m::HYPERCALL => self.write_hypercall_msr(value),
            m::REFERENCE_TSC => self.write_reference_tsc_msr(value),
            m::CRASH_P0..=m::CRASH_P4 => {
                lock(&self.part).crash_p[(msr - m::CRASH_P0) as usize] = value;
                Ok(())
            }
            m::CRASH_CTL => {
                self.write_crash_ctl(vp, value);
                Ok(())
            }
            m::VP_ASSIST_PAGE => {
                let r = VpAssistPageMsr::from_bits(value);
                if r.enable() && !self.mem.page_in_ram(r.gpa()) {
                    return Err(MsrFault::PageOutsideRam { msr, gpa: r.gpa() });
                }
                self.vp(vp).ok_or(MsrFault::InvalidVp(vp))?.vp_assist = value;
                Ok(())
            }
            _ => self.write_vp_synic_or_timer(vp, msr, value, invalid),
        }
    }

    fn write_hypercall_msr(&self, value: u64) -> Result<(), MsrFault> {
        let msr = m::HYPERCALL;
        let mut p = lock(&self.part);
        if HypercallMsr::from_bits(p.hypercall).locked() {
            return Err(MsrFault::Locked(msr));
        }
        let mut new = HypercallMsr::from_bits(value);
        if new.enable() {
            if p.guest_os_id == 0 {
                // Enable reads back 0 until the guest identifies itself.
                new = new.with_enable(false);
            } else {
                let gpa = new.gpa();
                if !self.mem.page_in_ram(gpa) {
                    return Err(MsrFault::PageOutsideRam { msr, gpa });
                }
                self.mem
                    .write(gpa, &HYPERCALL_PAGE_CODE)
                    .map_err(|_| MsrFault::PageOutsideRam { msr, gpa })?;
            }
        }
        p.hypercall = new.into_bits();
        Ok(())
    }

    fn write_reference_tsc_msr(&self, value: u64) -> Result<(), MsrFault> {
        let msr = m::REFERENCE_TSC;
        let r = ReferenceTscMsr::from_bits(value);
        let mut p = lock(&self.part);
        if r.enable() {
            let gpa = r.gpa();
            if !self.mem.page_in_ram(gpa) {
                return Err(MsrFault::PageOutsideRam { msr, gpa });
            }
            p.tsc_sequence = super::tscpage::next_sequence(p.tsc_sequence);
            super::tscpage::write(&self.mem, gpa, p.tsc_sequence, &self.clock)
                .map_err(|_| MsrFault::PageOutsideRam { msr, gpa })?;
        }
        p.reference_tsc = value;
        Ok(())
    }

    fn write_crash_ctl(&self, vp: u32, value: u64) {
        let ctl = CrashCtl::from_bits(value);
        let report = {
            let mut p = lock(&self.part);
            p.crash_ctl = value;
            if !ctl.crash_notify() {
                return;
            }
            let message = ctl
                .crash_message()
                .then(|| read_crash_message(&self.mem, p.crash_p[3], p.crash_p[4]))
                .flatten();
            let report = CrashReport {
                vp,
                params: p.crash_p,
                control: value,
                message,
            };
            p.crash = Some(report.clone());
            report
        };
        lock(&self.stats).guest_crashes += 1;
        tracing::error!(
            vp,
            p0 = format_args!("{:#x}", report.params[0]),
            p1 = format_args!("{:#x}", report.params[1]),
            p2 = format_args!("{:#x}", report.params[2]),
            p3 = format_args!("{:#x}", report.params[3]),
            p4 = format_args!("{:#x}", report.params[4]),
            control = format_args!("{value:#x}"),
            message = report.message.as_deref().unwrap_or(""),
            "guest crash reported through CRASH_CTL"
        );
    }

    fn write_vp_synic_or_timer(
        &self,
        vp: u32,
        msr: u32,
        value: u64,
        invalid: MsrFault,
    ) -> Result<(), MsrFault> {
        let now = self.now();
        let mut fx = Effects::default();
        let mut kick = false;
        {
            let mut st = self.vp(vp).ok_or(MsrFault::InvalidVp(vp))?;
            match msr {
                m::SCONTROL => {
                    st.synic.scontrol = value;
                    if SControl::from_bits(value).enable() {
                        st.synic.flush_all(&self.mem, now, Cause::Config, &mut fx);
                    }
                }
                m::SIEFP => {
                    let r = Siefp::from_bits(value);
                    if r.enable() && !self.mem.page_in_ram(r.gpa()) {
                        return Err(MsrFault::PageOutsideRam { msr, gpa: r.gpa() });
                    }
                    st.synic.siefp = value;
                }
                m::SIMP => {
                    let r = Simp::from_bits(value);
                    if r.enable() && !self.mem.page_in_ram(r.gpa()) {
                        return Err(MsrFault::PageOutsideRam { msr, gpa: r.gpa() });
                    }
                    st.synic.simp = value;
                    st.synic.flush_all(&self.mem, now, Cause::Config, &mut fx);
                }
                m::EOM => st.synic.flush_all(&self.mem, now, Cause::Eom, &mut fx),
                _ => {
                    if let Some(i) = m::sint_index(msr) {
                        let s = Sint::from_bits(value);
                        // Like KVM: a masked SINT may carry any vector (the
                        // reset value has vector 0); an unmasked one needs a
                        // valid vector.
                        if !s.masked() && s.vector() < MIN_SINT_VECTOR {
                            return Err(invalid);
                        }
                        st.synic.sint[usize::from(i)] = value;
                    } else if let Some((i, reg)) = m::stimer_index(msr) {
                        let direct_ok = self.cfg.features.features.direct_synthetic_timers();
                        let t = &mut st.timers[usize::from(i)];
                        match reg {
                            StimerReg::Config => {
                                t.config = check_stimer_config(value, direct_ok).ok_or(invalid)?;
                            }
                            StimerReg::Count => {
                                t.count = value;
                                let c = StimerConfig::from_bits(t.config);
                                let c = if value == 0 {
                                    c.with_enable(false)
                                } else if c.auto_enable() && timer_can_enable(c) {
                                    c.with_enable(true)
                                } else {
                                    c
                                };
                                t.config = c.into_bits();
                            }
                        }
                        t.rearm(now);
                        kick = true;
                        let super::VpState { synic, timers, .. } = &mut *st;
                        timer::fire_due(timers, synic, &self.mem, now, &mut fx);
                    } else {
                        return Err(MsrFault::Unknown(msr));
                    }
                }
            }
            st.settle(&mut fx);
        }
        self.apply(vp, fx);
        if kick {
            self.timer_ctl.kick();
        }
        Ok(())
    }
}

/// A message-mode timer needs a SINT other than 0 to run (as KVM does:
/// SINTx = 0 leaves the timer disabled).
fn timer_can_enable(c: StimerConfig) -> bool {
    c.direct_mode() || c.sintx() != 0
}

/// Validate a STIMERn_CONFIG value; returns the value to store.
fn check_stimer_config(value: u64, direct_ok: bool) -> Option<u64> {
    let c = StimerConfig::from_bits(value);
    if c.reserved_13() != 0 || c.reserved_20() != 0 {
        return None;
    }
    if c.direct_mode() && (!direct_ok || c.apic_vector() < MIN_SINT_VECTOR) {
        return None;
    }
    let c = if c.enable() && !timer_can_enable(c) {
        c.with_enable(false)
    } else {
        c
    };
    Some(c.into_bits())
}

/// The crash message at `gpa`, `len` bytes (at most 4096), if it is RAM.
fn read_crash_message(mem: &GuestMem, gpa: u64, len: u64) -> Option<String> {
    let len = usize::try_from(len.min(CRASH_MESSAGE_MAX)).ok()?;
    let mut buf = vec![0u8; len];
    mem.read(gpa, &mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}
