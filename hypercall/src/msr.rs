//! Synthetic MSR numbers and typed register values (fact sheet §2).
//!
//! Every bitfield type keeps the raw value it was built from (`from_bits`), so a read-modify-write
//! preserves the bits the TLFS says to preserve; `new()` starts from zero.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;

/// Guest OS identity (partition-wide). Must be non-zero before the hypercall page is enabled.
pub const GUEST_OS_ID: u32 = 0x4000_0000;
/// Hypercall page control (partition-wide): [`HypercallMsr`].
pub const HYPERCALL: u32 = 0x4000_0001;
/// Read-only index of the current VP.
pub const VP_INDEX: u32 = 0x4000_0002;
/// Writing 1 resets the partition.
pub const RESET: u32 = 0x4000_0003;
/// Read-only VP run time in 100 ns units.
pub const VP_RUNTIME: u32 = 0x4000_0010;
/// Read-only partition reference counter (10 MHz since partition creation).
pub const TIME_REF_COUNT: u32 = 0x4000_0020;
/// Reference TSC page control: [`ReferenceTscMsr`].
pub const REFERENCE_TSC: u32 = 0x4000_0021;
/// Read-only TSC frequency in Hz.
pub const TSC_FREQUENCY: u32 = 0x4000_0022;
/// Read-only APIC timer frequency in Hz.
pub const APIC_FREQUENCY: u32 = 0x4000_0023;
/// Write-only APIC EOI (bits 31:0).
pub const EOI: u32 = 0x4000_0070;
/// APIC ICR (high half in bits 63:32, low half in 31:0).
pub const ICR: u32 = 0x4000_0071;
/// APIC TPR (bits 7:0).
pub const TPR: u32 = 0x4000_0072;
/// VP assist page control: [`VpAssistPageMsr`].
pub const VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// SynIC control: [`SControl`].
pub const SCONTROL: u32 = 0x4000_0080;
/// Read-only SynIC version ([`SYNIC_VERSION`]).
pub const SVERSION: u32 = 0x4000_0081;
/// SynIC event-flags page: [`Siefp`].
pub const SIEFP: u32 = 0x4000_0082;
/// SynIC message page: [`Simp`].
pub const SIMP: u32 = 0x4000_0083;
/// End of message: a write makes the hypervisor re-scan queued messages.
pub const EOM: u32 = 0x4000_0084;
/// SINT0; SINTn is `SINT0 + n` ([`sint`]).
pub const SINT0: u32 = 0x4000_0090;
/// SINT15, the last SINT.
pub const SINT15: u32 = 0x4000_009F;
/// STIMER0_CONFIG; STIMERn_CONFIG is `STIMER0_CONFIG + 2n` ([`stimer_config`]).
pub const STIMER0_CONFIG: u32 = 0x4000_00B0;
/// STIMER0_COUNT; STIMERn_COUNT is `STIMER0_COUNT + 2n` ([`stimer_count`]).
pub const STIMER0_COUNT: u32 = 0x4000_00B1;
/// STIMER1_CONFIG.
pub const STIMER1_CONFIG: u32 = 0x4000_00B2;
/// STIMER1_COUNT.
pub const STIMER1_COUNT: u32 = 0x4000_00B3;
/// STIMER2_CONFIG.
pub const STIMER2_CONFIG: u32 = 0x4000_00B4;
/// STIMER2_COUNT.
pub const STIMER2_COUNT: u32 = 0x4000_00B5;
/// STIMER3_CONFIG.
pub const STIMER3_CONFIG: u32 = 0x4000_00B6;
/// STIMER3_COUNT.
pub const STIMER3_COUNT: u32 = 0x4000_00B7;
/// Reading idles the VP until an interrupt arrives.
pub const GUEST_IDLE: u32 = 0x4000_00F0;
/// Crash parameter 0.
pub const CRASH_P0: u32 = 0x4000_0100;
/// Crash parameter 1.
pub const CRASH_P1: u32 = 0x4000_0101;
/// Crash parameter 2.
pub const CRASH_P2: u32 = 0x4000_0102;
/// Crash parameter 3 (GPA of the message with [`CrashCtl::crash_message`]).
pub const CRASH_P3: u32 = 0x4000_0103;
/// Crash parameter 4 (message length with [`CrashCtl::crash_message`]).
pub const CRASH_P4: u32 = 0x4000_0104;
/// Crash control: [`CrashCtl`]. A read returns the capabilities.
pub const CRASH_CTL: u32 = 0x4000_0105;
/// Reenlightenment control (vector 7:0, enabled bit 16, target VP 63:32).
pub const REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
/// TSC emulation control (bit 0 = enabled).
pub const TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
/// TSC emulation status (bit 0 = in progress).
pub const TSC_EMULATION_STATUS: u32 = 0x4000_0108;
/// TSC invariant control (bit 0 = expose invariant TSC).
pub const TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;
/// Nested SCONTROL (used instead of [`SCONTROL`] when recommendation bit 12 is set).
pub const NESTED_SCONTROL: u32 = 0x4000_1080;
/// Nested SVERSION.
pub const NESTED_SVERSION: u32 = 0x4000_1081;
/// Nested SIEFP.
pub const NESTED_SIEFP: u32 = 0x4000_1082;
/// Nested SIMP.
pub const NESTED_SIMP: u32 = 0x4000_1083;
/// Nested EOM.
pub const NESTED_EOM: u32 = 0x4000_1084;
/// Nested SINT0; nested SINTn is `NESTED_SINT0 + n`.
pub const NESTED_SINT0: u32 = 0x4000_1090;

/// The range of synthetic MSRs a host routes to its Hyper-V emulation.
pub const SYNTHETIC_MSR_RANGE: core::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_01FF;

/// Number of CRASH_Pn parameter MSRs.
pub const CRASH_PARAM_COUNT: usize = 5;
/// Maximum crash-message length in bytes (P4 with [`CrashCtl::crash_message`]).
pub const CRASH_MESSAGE_MAX: u64 = 4096;
/// Number of SINTs per VP.
pub const SINT_COUNT: u8 = 16;
/// Number of synthetic timers per VP.
pub const STIMER_COUNT: u8 = 4;
/// The SynIC version SVERSION reads.
pub const SYNIC_VERSION: u64 = 1;
/// Reset value of every SINTn: masked (fact sheet §2.1).
pub const SINT_RESET_VALUE: u64 = 0x1_0000;
/// Smallest valid SINT vector (fact sheet §2.1: valid 16-255).
pub const MIN_SINT_VECTOR: u8 = 16;

/// The MSR of SINT `n`.
///
/// # Panics
/// If `n >= 16`.
pub const fn sint(n: u8) -> u32 {
    assert!(n < SINT_COUNT, "SINT index out of range");
    SINT0 + n as u32
}

/// The MSR of STIMER`n`_CONFIG.
///
/// # Panics
/// If `n >= 4`.
pub const fn stimer_config(n: u8) -> u32 {
    assert!(n < STIMER_COUNT, "synthetic timer index out of range");
    STIMER0_CONFIG + 2 * n as u32
}

/// The MSR of STIMER`n`_COUNT.
///
/// # Panics
/// If `n >= 4`.
pub const fn stimer_count(n: u8) -> u32 {
    assert!(n < STIMER_COUNT, "synthetic timer index out of range");
    STIMER0_COUNT + 2 * n as u32
}

/// The MSR of CRASH_P`n`.
///
/// # Panics
/// If `n >= 5`.
pub const fn crash_param(n: u8) -> u32 {
    assert!(
        (n as usize) < CRASH_PARAM_COUNT,
        "crash parameter out of range"
    );
    CRASH_P0 + n as u32
}

/// The SINT index an MSR number names, if it is one of SINT0..SINT15.
pub const fn sint_index(msr: u32) -> Option<u8> {
    if msr >= SINT0 && msr <= SINT15 {
        Some((msr - SINT0) as u8)
    } else {
        None
    }
}

/// Which register of a synthetic timer an MSR names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StimerReg {
    /// STIMERn_CONFIG.
    Config,
    /// STIMERn_COUNT.
    Count,
}

/// The timer index and register an MSR number names, if it is one of STIMER0..3 CONFIG/COUNT.
pub const fn stimer_index(msr: u32) -> Option<(u8, StimerReg)> {
    if msr >= STIMER0_CONFIG && msr <= STIMER3_COUNT {
        let off = msr - STIMER0_CONFIG;
        let reg = if off.is_multiple_of(2) {
            StimerReg::Config
        } else {
            StimerReg::Count
        };
        Some(((off / 2) as u8, reg))
    } else {
        None
    }
}

/// A short name of a synthetic MSR for logs ("GUEST_OS_ID", "SINT2", ...), or `None`.
pub const fn name(msr: u32) -> Option<&'static str> {
    const SINTS: [&str; 16] = [
        "SINT0", "SINT1", "SINT2", "SINT3", "SINT4", "SINT5", "SINT6", "SINT7", "SINT8", "SINT9",
        "SINT10", "SINT11", "SINT12", "SINT13", "SINT14", "SINT15",
    ];
    Some(match msr {
        GUEST_OS_ID => "GUEST_OS_ID",
        HYPERCALL => "HYPERCALL",
        VP_INDEX => "VP_INDEX",
        RESET => "RESET",
        VP_RUNTIME => "VP_RUNTIME",
        TIME_REF_COUNT => "TIME_REF_COUNT",
        REFERENCE_TSC => "REFERENCE_TSC",
        TSC_FREQUENCY => "TSC_FREQUENCY",
        APIC_FREQUENCY => "APIC_FREQUENCY",
        EOI => "EOI",
        ICR => "ICR",
        TPR => "TPR",
        VP_ASSIST_PAGE => "VP_ASSIST_PAGE",
        SCONTROL => "SCONTROL",
        SVERSION => "SVERSION",
        SIEFP => "SIEFP",
        SIMP => "SIMP",
        EOM => "EOM",
        SINT0..=SINT15 => SINTS[(msr - SINT0) as usize],
        STIMER0_CONFIG => "STIMER0_CONFIG",
        STIMER0_COUNT => "STIMER0_COUNT",
        STIMER1_CONFIG => "STIMER1_CONFIG",
        STIMER1_COUNT => "STIMER1_COUNT",
        STIMER2_CONFIG => "STIMER2_CONFIG",
        STIMER2_COUNT => "STIMER2_COUNT",
        STIMER3_CONFIG => "STIMER3_CONFIG",
        STIMER3_COUNT => "STIMER3_COUNT",
        GUEST_IDLE => "GUEST_IDLE",
        CRASH_P0 => "CRASH_P0",
        CRASH_P1 => "CRASH_P1",
        CRASH_P2 => "CRASH_P2",
        CRASH_P3 => "CRASH_P3",
        CRASH_P4 => "CRASH_P4",
        CRASH_CTL => "CRASH_CTL",
        REENLIGHTENMENT_CONTROL => "REENLIGHTENMENT_CONTROL",
        TSC_EMULATION_CONTROL => "TSC_EMULATION_CONTROL",
        TSC_EMULATION_STATUS => "TSC_EMULATION_STATUS",
        TSC_INVARIANT_CONTROL => "TSC_INVARIANT_CONTROL",
        _ => return None,
    })
}

/// Open-source OS type "Linux" in [`GuestOsId::os_type`] (fact sheet §2.2).
pub const OS_TYPE_LINUX: u8 = 1;
/// Open-source OS type "FreeBSD".
pub const OS_TYPE_FREEBSD: u8 = 2;
/// Open-source OS type "Xen".
pub const OS_TYPE_XEN: u8 = 3;
/// Open-source OS type "Illumos".
pub const OS_TYPE_ILLUMOS: u8 = 4;

/// GUEST_OS_ID in the TLFS open-source encoding (fact sheet §2.2).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct GuestOsId {
    /// Bits 15:0: build number (distribution specific).
    pub build_number: u16,
    /// Bits 47:16: version (Linux: `major << 16 | minor << 8 | sublevel`).
    pub version: u32,
    /// Bits 55:48: OS id (distribution specific).
    pub os_id: u8,
    /// Bits 62:56: OS type ([`OS_TYPE_LINUX`], ...).
    #[bits(7)]
    pub os_type: u8,
    /// Bit 63: open source (1 for this encoding).
    pub open_source: bool,
}

impl GuestOsId {
    /// An open-source guest identity.
    pub const fn open_source_id(os_type: u8, version: u32, build_number: u16) -> Self {
        Self::new()
            .with_open_source(true)
            .with_os_type(os_type & 0x7F)
            .with_version(version)
            .with_build_number(build_number)
    }

    /// The identity Linux writes for kernel `major.minor.sublevel` (sublevel capped at 255).
    pub const fn linux(major: u8, minor: u8, sublevel: u16) -> Self {
        let sub = if sublevel > 255 { 255 } else { sublevel as u32 };
        Self::open_source_id(
            OS_TYPE_LINUX,
            (major as u32) << 16 | (minor as u32) << 8 | sub,
            0,
        )
    }
}

/// HYPERCALL MSR (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct HypercallMsr {
    /// Bit 0: the hypercall page is enabled.
    pub enable: bool,
    /// Bit 1: locked (only a reset clears it).
    pub locked: bool,
    /// Bits 11:2: reserved, preserve.
    #[bits(10)]
    pub reserved: u16,
    /// Bits 63:12: guest-physical page number of the hypercall page.
    #[bits(52)]
    pub gpn: u64,
}

/// SCONTROL MSR (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct SControl {
    /// Bit 0: SynIC enable.
    pub enable: bool,
    /// Bits 63:1: preserve.
    #[bits(63)]
    pub reserved: u64,
}

/// SIMP MSR: SynIC message page (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Simp {
    /// Bit 0: enable.
    pub enable: bool,
    /// Bits 11:1: preserve.
    #[bits(11)]
    pub reserved: u16,
    /// Bits 63:12: guest-physical page number of the message page.
    #[bits(52)]
    pub gpn: u64,
}

/// SIEFP MSR: SynIC event-flags page (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Siefp {
    /// Bit 0: enable.
    pub enable: bool,
    /// Bits 11:1: preserve.
    #[bits(11)]
    pub reserved: u16,
    /// Bits 63:12: guest-physical page number of the event-flags page.
    #[bits(52)]
    pub gpn: u64,
}

/// REFERENCE_TSC MSR (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct ReferenceTscMsr {
    /// Bit 0: enable.
    pub enable: bool,
    /// Bits 11:1: preserve.
    #[bits(11)]
    pub reserved: u16,
    /// Bits 63:12: guest-physical page number of the reference TSC page.
    #[bits(52)]
    pub gpn: u64,
}

/// VP_ASSIST_PAGE MSR (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct VpAssistPageMsr {
    /// Bit 0: enable.
    pub enable: bool,
    /// Bits 11:1: preserve.
    #[bits(11)]
    pub reserved: u16,
    /// Bits 63:12: guest-physical page number of the VP assist page.
    #[bits(52)]
    pub gpn: u64,
}

macro_rules! gpa_accessors {
    ($($t:ty),*) => {$(
        impl $t {
            /// The page's guest-physical address (`gpn << 12`).
            pub const fn gpa(self) -> u64 {
                self.gpn() << 12
            }
            /// With the page number of a guest-physical address (its low 12 bits are dropped).
            pub const fn with_gpa(self, gpa: u64) -> Self {
                self.with_gpn(gpa >> 12)
            }
        }
    )*};
}
gpa_accessors!(HypercallMsr, Simp, Siefp, ReferenceTscMsr, VpAssistPageMsr);

/// SINTn MSR (fact sheet §2.1). Reset value [`SINT_RESET_VALUE`] (masked).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Sint {
    /// Bits 7:0: interrupt vector (valid 16-255).
    pub vector: u8,
    /// Bits 15:8: preserve.
    #[bits(8)]
    pub reserved_8: u8,
    /// Bit 16: masked.
    pub masked: bool,
    /// Bit 17: AutoEOI.
    pub auto_eoi: bool,
    /// Bit 18: polling (unmasked without raising an interrupt).
    pub polling: bool,
    /// Bit 19: preserve.
    #[bits(1)]
    pub reserved_19: u8,
    /// Bit 20: proxy (confidential VMs with a paravisor).
    pub proxy: bool,
    /// Bits 63:21: preserve.
    #[bits(43)]
    pub reserved_21: u64,
}

/// STIMERn_CONFIG MSR (fact sheet §2.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct StimerConfig {
    /// Bit 0: enable.
    pub enable: bool,
    /// Bit 1: periodic (COUNT is the period) instead of one-shot (COUNT is the absolute expiry).
    pub periodic: bool,
    /// Bit 2: lazy.
    pub lazy: bool,
    /// Bit 3: auto-enable (writing a non-zero COUNT sets enable).
    pub auto_enable: bool,
    /// Bits 11:4: APIC vector (direct mode).
    pub apic_vector: u8,
    /// Bit 12: direct mode (raise `apic_vector` instead of posting a SynIC message).
    pub direct_mode: bool,
    /// Bits 15:13: reserved-zero.
    #[bits(3)]
    pub reserved_13: u8,
    /// Bits 19:16: the SINT that gets the timer message (message mode).
    #[bits(4)]
    pub sintx: u8,
    /// Bits 63:20: reserved-zero.
    #[bits(44)]
    pub reserved_20: u64,
}

/// CRASH_CTL MSR (fact sheet §2.1). Written to report, read for the capabilities.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct CrashCtl {
    /// Bits 57:0: reserved.
    #[bits(58)]
    pub reserved: u64,
    /// Bits 60:58: pre-OS id.
    #[bits(3)]
    pub pre_os_id: u8,
    /// Bit 61: no crash dump.
    pub no_crash_dump: bool,
    /// Bit 62: crash message (P3 = GPA of the message, P4 = its length, at most 4096).
    pub crash_message: bool,
    /// Bit 63: crash notify.
    pub crash_notify: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // fact sheet §0 and §2.1: MSR numbers.
    #[test]
    fn msr_numbers() {
        assert_eq!(GUEST_OS_ID, 0x4000_0000);
        assert_eq!(HYPERCALL, 0x4000_0001);
        assert_eq!(VP_INDEX, 0x4000_0002);
        assert_eq!(RESET, 0x4000_0003);
        assert_eq!(VP_RUNTIME, 0x4000_0010);
        assert_eq!(TIME_REF_COUNT, 0x4000_0020);
        assert_eq!(REFERENCE_TSC, 0x4000_0021);
        assert_eq!(TSC_FREQUENCY, 0x4000_0022);
        assert_eq!(APIC_FREQUENCY, 0x4000_0023);
        assert_eq!(EOI, 0x4000_0070);
        assert_eq!(ICR, 0x4000_0071);
        assert_eq!(TPR, 0x4000_0072);
        assert_eq!(VP_ASSIST_PAGE, 0x4000_0073);
        assert_eq!(SCONTROL, 0x4000_0080);
        assert_eq!(SVERSION, 0x4000_0081);
        assert_eq!(SIEFP, 0x4000_0082);
        assert_eq!(SIMP, 0x4000_0083);
        assert_eq!(EOM, 0x4000_0084);
        assert_eq!(SINT0, 0x4000_0090);
        assert_eq!(SINT15, 0x4000_009F);
        assert_eq!(sint(2), 0x4000_0092);
        assert_eq!(sint(15), SINT15);
        for n in 0..4u8 {
            assert_eq!(stimer_config(n), 0x4000_00B0 + 2 * n as u32);
            assert_eq!(stimer_count(n), 0x4000_00B1 + 2 * n as u32);
            assert_eq!(stimer_index(stimer_config(n)), Some((n, StimerReg::Config)));
            assert_eq!(stimer_index(stimer_count(n)), Some((n, StimerReg::Count)));
        }
        assert_eq!(
            [
                STIMER1_CONFIG,
                STIMER1_COUNT,
                STIMER2_CONFIG,
                STIMER2_COUNT,
                STIMER3_CONFIG,
                STIMER3_COUNT
            ],
            [
                0x4000_00B2,
                0x4000_00B3,
                0x4000_00B4,
                0x4000_00B5,
                0x4000_00B6,
                0x4000_00B7
            ]
        );
        assert_eq!(stimer_index(0x4000_00B8), None);
        assert_eq!(stimer_index(0x4000_00AF), None);
        assert_eq!(GUEST_IDLE, 0x4000_00F0);
        assert_eq!(
            [CRASH_P0, CRASH_P1, CRASH_P2, CRASH_P3, CRASH_P4, CRASH_CTL],
            [
                0x4000_0100,
                0x4000_0101,
                0x4000_0102,
                0x4000_0103,
                0x4000_0104,
                0x4000_0105
            ]
        );
        for n in 0..5u8 {
            assert_eq!(crash_param(n), 0x4000_0100 + n as u32);
        }
        assert_eq!(REENLIGHTENMENT_CONTROL, 0x4000_0106);
        assert_eq!(TSC_EMULATION_CONTROL, 0x4000_0107);
        assert_eq!(TSC_EMULATION_STATUS, 0x4000_0108);
        assert_eq!(TSC_INVARIANT_CONTROL, 0x4000_0118);
        assert_eq!(NESTED_SCONTROL, 0x4000_1080);
        assert_eq!(NESTED_EOM, 0x4000_1084);
        assert_eq!(NESTED_SINT0, 0x4000_1090);
        for n in 0..16u8 {
            assert_eq!(sint_index(sint(n)), Some(n));
        }
        assert_eq!(sint_index(0x4000_00A0), None);
        assert_eq!(name(sint(2)), Some("SINT2"));
        assert_eq!(name(HYPERCALL), Some("HYPERCALL"));
        assert_eq!(name(0x4000_0FFF), None);
    }

    #[test]
    #[should_panic]
    fn sint_out_of_range() {
        let _ = sint(16);
    }

    // fact sheet §2.2: Linux 6.12.117 writes 0x8100_0006_0C75_0000.
    #[test]
    fn guest_os_id_linux() {
        assert_eq!(
            GuestOsId::linux(6, 12, 117).into_bits(),
            0x8100_0006_0C75_0000
        );
        assert_eq!(GuestOsId::linux(6, 12, 300).version(), 0x06_0C_FF);
        let id = GuestOsId::from_bits(0x8100_0006_0C75_0000);
        assert!(id.open_source());
        assert_eq!(id.os_type(), OS_TYPE_LINUX);
        assert_eq!(id.os_id(), 0);
        assert_eq!(id.build_number(), 0);
    }

    // fact sheet §2.1 bit positions.
    #[test]
    fn bit_positions() {
        let h = HypercallMsr::new().with_enable(true).with_gpa(0x1234_5000);
        assert_eq!(h.into_bits(), 0x1234_5001);
        assert_eq!(HypercallMsr::new().with_locked(true).into_bits(), 2);
        assert_eq!(SControl::new().with_enable(true).into_bits(), 1);
        assert_eq!(Simp::from_bits(0xABC_D001).gpa(), 0xABC_D000);
        assert!(Siefp::from_bits(0xABC_D001).enable());
        assert_eq!(
            ReferenceTscMsr::new()
                .with_enable(true)
                .with_gpa(0x7000)
                .into_bits(),
            0x7001
        );
        // SINT: vector 7:0, masked 16, AutoEOI 17, polling 18, proxy 20; §2.2: 0x000200F3.
        let s = Sint::new().with_vector(0xF3).with_auto_eoi(true);
        assert_eq!(s.into_bits(), 0x0002_00F3);
        assert_eq!(Sint::new().with_masked(true).into_bits(), SINT_RESET_VALUE);
        assert_eq!(Sint::new().with_polling(true).into_bits(), 1 << 18);
        assert_eq!(Sint::new().with_proxy(true).into_bits(), 1 << 20);
        // STIMER config, §2.2: direct mode 0x1ED9, message mode 0x20009.
        let d = StimerConfig::new()
            .with_enable(true)
            .with_auto_enable(true)
            .with_direct_mode(true)
            .with_apic_vector(0xED);
        assert_eq!(d.into_bits(), 0x1ED9);
        let m = StimerConfig::new()
            .with_enable(true)
            .with_auto_enable(true)
            .with_sintx(2);
        assert_eq!(m.into_bits(), 0x20009);
        assert_eq!(StimerConfig::new().with_periodic(true).into_bits(), 2);
        assert_eq!(StimerConfig::new().with_lazy(true).into_bits(), 4);
        // CRASH_CTL: notify 63, message 62, no dump 61, pre-OS id 60:58.
        assert_eq!(CrashCtl::new().with_crash_notify(true).into_bits(), 1 << 63);
        assert_eq!(
            CrashCtl::new()
                .with_crash_notify(true)
                .with_crash_message(true)
                .into_bits(),
            (1 << 63) | (1 << 62)
        );
        assert_eq!(
            CrashCtl::new().with_no_crash_dump(true).into_bits(),
            1 << 61
        );
        assert_eq!(CrashCtl::new().with_pre_os_id(7).into_bits(), 7 << 58);
    }

    proptest! {
        // Every bitfield keeps every bit through from_bits/into_bits, and field writes only touch
        // their own bits.
        #[test]
        fn bitfields_round_trip(v in any::<u64>()) {
            prop_assert_eq!(GuestOsId::from_bits(v).into_bits(), v);
            prop_assert_eq!(HypercallMsr::from_bits(v).into_bits(), v);
            prop_assert_eq!(SControl::from_bits(v).into_bits(), v);
            prop_assert_eq!(Simp::from_bits(v).into_bits(), v);
            prop_assert_eq!(Siefp::from_bits(v).into_bits(), v);
            prop_assert_eq!(Sint::from_bits(v).into_bits(), v);
            prop_assert_eq!(StimerConfig::from_bits(v).into_bits(), v);
            prop_assert_eq!(ReferenceTscMsr::from_bits(v).into_bits(), v);
            prop_assert_eq!(VpAssistPageMsr::from_bits(v).into_bits(), v);
            prop_assert_eq!(CrashCtl::from_bits(v).into_bits(), v);
            let g = GuestOsId::from_bits(v);
            prop_assert_eq!(
                GuestOsId::new().with_build_number(g.build_number()).with_version(g.version())
                    .with_os_id(g.os_id()).with_os_type(g.os_type()).with_open_source(g.open_source()),
                g
            );
            let h = HypercallMsr::from_bits(v);
            prop_assert_eq!(h.with_enable(!h.enable()).into_bits(), v ^ 1);
            prop_assert_eq!(h.with_gpa(h.gpa()), h);
            let s = Sint::from_bits(v);
            prop_assert_eq!(s.with_vector(s.vector() ^ 0xFF).into_bits(), v ^ 0xFF);
            prop_assert_eq!(s.with_masked(!s.masked()).into_bits(), v ^ (1 << 16));
            let t = StimerConfig::from_bits(v);
            prop_assert_eq!(
                StimerConfig::from_bits(v & !0x000F_1FFF)
                    .with_enable(t.enable()).with_periodic(t.periodic()).with_lazy(t.lazy())
                    .with_auto_enable(t.auto_enable()).with_apic_vector(t.apic_vector())
                    .with_direct_mode(t.direct_mode()).with_sintx(t.sintx()),
                t
            );
            let c = CrashCtl::from_bits(v);
            prop_assert_eq!(
                CrashCtl::from_bits(v & ((1 << 58) - 1)).with_pre_os_id(c.pre_os_id())
                    .with_no_crash_dump(c.no_crash_dump()).with_crash_message(c.crash_message())
                    .with_crash_notify(c.crash_notify()),
                c
            );
        }
    }
}
