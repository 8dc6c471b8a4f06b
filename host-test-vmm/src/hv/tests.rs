//! Behaviour tests of the emulation through the in-process backend.

use super::inprocess::{ClockKind, InProcess, DEFAULT_TSC_HZ};
use super::*;
use hypercall::abi::{CallCode, Control, HypercallResult, PostMessageInput, SignalEventInput};
use hypercall::cpuid::{CpuidResult, HvCpuidInfo};
use hypercall::msr::{
    self as m, CrashCtl, HypercallMsr, ReferenceTscMsr, Sint, StimerConfig, VpAssistPageMsr,
};
use hypercall::synic::{MessageType, TimerMessagePayload};
use hypercall::tsc;
use std::time::Duration;
use zerocopy::IntoBytes;

const RAM: usize = 1 << 20;
const HC_PAGE: u64 = 0x1000;
const SIMP0: u64 = 0x2000;
const SIEFP0: u64 = 0x3000;
const INPUT: u64 = 0x4000;
const TSC_PAGE: u64 = 0x5000;
const SIMP1: u64 = 0x6000;
const SIEFP1: u64 = 0x7000;
const VEC: u8 = 0xF3;

fn part() -> InProcess {
    InProcess::new(2, RAM).unwrap()
}

/// Hypercalls enabled, SynIC on for VP 0 with SINT 2 and 3 unmasked on VEC,
/// test services installed.
fn ready() -> InProcess {
    let p = part();
    p.enable_hypercalls(HC_PAGE).unwrap();
    p.enable_synic(0, SIMP0, SIEFP0).unwrap();
    p.unmask_sint(0, 2, VEC).unwrap();
    p.unmask_sint(0, 3, VEC).unwrap();
    p.hv().install_test_services();
    p
}

fn status(rax: u64) -> HvStatus {
    HypercallResult::from_bits(rax).status()
}

fn ctl(code: CallCode) -> Control {
    Control::call(code)
}

fn write_input(p: &InProcess, gpa: u64, input: &PostMessageInput) {
    p.write_bytes(gpa, input.as_bytes()).unwrap();
}

fn echo_input(copies: u8, sint: u8, extra: &[u8]) -> PostMessageInput {
    let mut payload = vec![copies, sint];
    payload.extend_from_slice(extra);
    PostMessageInput::new(ECHO_CONNECTION_ID, MessageType(ECHO_MESSAGE_TYPE), &payload).unwrap()
}

fn stimer_cfg() -> StimerConfig {
    StimerConfig::new()
}

// ---------------------------------------------------------------- CPUID

#[test]
fn cpuid_leaves_match_the_recommended_profile() {
    let p = part();
    let leaves = p.hv().cpuid_leaves();
    let fns: Vec<u32> = leaves.iter().map(|l| l.function).collect();
    assert_eq!(fns, (0x4000_0000..=0x4000_000A).collect::<Vec<_>>());
    let get = |f: u32| leaves.iter().find(|l| l.function == f).copied().unwrap();
    let v = get(0x4000_0000);
    assert_eq!(
        (v.eax, v.ebx, v.ecx, v.edx),
        (0x4000_000A, 0x7263_694D, 0x666F_736F, 0x7648_2074)
    );
    assert_eq!(get(0x4000_0001).eax, 0x3123_7648);
    let f = get(0x4000_0003);
    assert_eq!(f.eax, 0xA7E);
    assert_eq!(f.ebx, 0x30);
    // direct stimer, frequency MSRs, crash MSRs + SINT polling, MSR lock.
    assert_eq!(f.edx, 0x80500 | 1 << 17 | 1 << 18);
    assert_eq!(get(0x4000_0004).eax, 1 << 9);
    assert_eq!(get(0x4000_0005).eax, 2);
    let info = HvCpuidInfo::read(|l, _| {
        leaves
            .iter()
            .find(|x| x.function == l)
            .map_or(CpuidResult::default(), |x| {
                CpuidResult::new(x.eax, x.ebx, x.ecx, x.edx)
            })
    });
    assert!(info.linux_would_accept());
    assert!(info.has_direct_timers() && info.has_reference_tsc() && info.has_crash_msrs());
    assert!(!info.privileges.cpu_management());
}

#[test]
fn hypervisor_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Hypervisor>();
    check::<Arc<Hypervisor>>();
    check::<InProcess>();
}

#[test]
fn msr_routing_range() {
    assert!(Hypervisor::is_hv_msr(0x4000_0000));
    assert!(Hypervisor::is_hv_msr(0x4000_01FF));
    assert!(!Hypervisor::is_hv_msr(0x4000_0200));
    assert!(!Hypervisor::is_hv_msr(0x3FFF_FFFF));
}

#[test]
fn config_is_validated() {
    let bad_hz = HvConfig {
        vp_count: 1,
        tsc_hz: 10_000_000,
        features: HvFeatures::default(),
    };
    assert!(matches!(
        InProcess::with_config(bad_hz, RAM, ClockKind::Fake(0)),
        Err(HvError::InvalidConfig(_))
    ));
    assert!(InProcess::new(0, RAM).is_err());
    assert!(InProcess::new(1, 100).is_err());
}

// ---------------------------------------------------------------- MSRs

#[test]
fn guest_os_id_and_hypercall_page() {
    let p = part();
    let enable = HypercallMsr::new()
        .with_enable(true)
        .with_gpa(HC_PAGE)
        .into_bits();
    // Enable without a guest identity reads back disabled, page untouched.
    p.wrmsr(0, m::HYPERCALL, enable).unwrap();
    assert_eq!(p.rdmsr(0, m::HYPERCALL).unwrap(), HC_PAGE);
    assert_eq!(p.read_bytes(HC_PAGE, 7).unwrap(), vec![0; 7]);
    p.wrmsr(1, m::GUEST_OS_ID, 0x8100_0006_0C75_0000).unwrap();
    // Partition-wide: written on VP 1, read on VP 0.
    assert_eq!(p.rdmsr(0, m::GUEST_OS_ID).unwrap(), 0x8100_0006_0C75_0000);
    // Reserved bits 11:2 are preserved.
    p.wrmsr(0, m::HYPERCALL, enable | 0x7FC).unwrap();
    assert_eq!(p.rdmsr(1, m::HYPERCALL).unwrap(), enable | 0x7FC);
    assert_eq!(
        p.read_bytes(HC_PAGE, 7).unwrap(),
        HYPERCALL_PAGE_CODE.to_vec()
    );
    assert_eq!(&HYPERCALL_PAGE_CODE[..4], &[0xF3, 0x0F, 0x1E, 0xFA]);
    assert!(p.hv().hypercall_page_enabled());
    // Page outside RAM: #GP and the old value stays.
    let outside = HypercallMsr::new()
        .with_enable(true)
        .with_gpa(RAM as u64)
        .into_bits();
    assert_eq!(
        p.wrmsr(0, m::HYPERCALL, outside),
        Err(MsrFault::PageOutsideRam {
            msr: m::HYPERCALL,
            gpa: RAM as u64
        })
    );
    assert_eq!(p.rdmsr(0, m::HYPERCALL).unwrap(), enable | 0x7FC);
    // Disabled, a page outside RAM is fine.
    p.wrmsr(0, m::HYPERCALL, RAM as u64).unwrap();
    p.wrmsr(0, m::HYPERCALL, enable).unwrap();
    // Clearing GUEST_OS_ID disables the page.
    p.wrmsr(0, m::GUEST_OS_ID, 0).unwrap();
    assert_eq!(p.rdmsr(0, m::HYPERCALL).unwrap(), HC_PAGE);
    assert!(!p.hv().hypercall_page_enabled());
}

#[test]
fn hypercall_msr_lock() {
    let p = part();
    p.wrmsr(0, m::GUEST_OS_ID, 1).unwrap();
    let locked = HypercallMsr::new()
        .with_enable(true)
        .with_locked(true)
        .with_gpa(HC_PAGE)
        .into_bits();
    p.wrmsr(0, m::HYPERCALL, locked).unwrap();
    assert_eq!(
        p.wrmsr(0, m::HYPERCALL, 0),
        Err(MsrFault::Locked(m::HYPERCALL))
    );
    assert!(p.wrmsr(1, m::HYPERCALL, HC_PAGE + 0x1000).is_err());
    // A locked page survives GUEST_OS_ID = 0 too.
    p.wrmsr(0, m::GUEST_OS_ID, 0).unwrap();
    assert_eq!(p.rdmsr(0, m::HYPERCALL).unwrap(), locked);
    // Only a reset clears the lock.
    p.hv().reset();
    assert_eq!(p.rdmsr(0, m::HYPERCALL).unwrap(), 0);
    p.wrmsr(0, m::HYPERCALL, HC_PAGE).unwrap();
}

#[test]
fn vp_index_and_read_only_msrs() {
    let p = part();
    assert_eq!(p.rdmsr(0, m::VP_INDEX).unwrap(), 0);
    assert_eq!(p.rdmsr(1, m::VP_INDEX).unwrap(), 1);
    assert_eq!(p.rdmsr(2, m::VP_INDEX), Err(MsrFault::InvalidVp(2)));
    for msr in [
        m::VP_INDEX,
        m::TIME_REF_COUNT,
        m::TSC_FREQUENCY,
        m::APIC_FREQUENCY,
        m::SVERSION,
    ] {
        assert_eq!(p.wrmsr(0, msr, 0), Err(MsrFault::ReadOnly(msr)), "{msr:#x}");
    }
    assert_eq!(p.rdmsr(0, m::TSC_FREQUENCY).unwrap(), DEFAULT_TSC_HZ);
    assert_eq!(
        p.rdmsr(0, m::APIC_FREQUENCY).unwrap(),
        KVM_APIC_FREQUENCY_HZ
    );
    assert_eq!(p.rdmsr(0, m::SVERSION).unwrap(), 1);
}

#[test]
fn unknown_msrs_fault() {
    let p = part();
    for msr in [
        m::RESET,
        m::VP_RUNTIME,
        m::EOI,
        m::ICR,
        m::TPR,
        m::GUEST_IDLE,
        0x4000_01FF,
        0x4000_0050,
    ] {
        assert_eq!(p.rdmsr(0, msr), Err(MsrFault::Unknown(msr)), "{msr:#x}");
        assert_eq!(p.wrmsr(0, msr, 1), Err(MsrFault::Unknown(msr)), "{msr:#x}");
    }
    let s = p.hv().stats();
    assert_eq!(s.msr_faults["RESET"], 2);
    assert_eq!(s.msr_faults["0x400001ff"], 2);
}

#[test]
fn privileges_gate_msrs() {
    let mut features = HvFeatures::default();
    features.privileges = features.privileges.with_access_synic_regs(false);
    features.features = features
        .features
        .with_guest_crash_msrs(false)
        .with_frequency_msrs(false);
    let cfg = HvConfig {
        vp_count: 1,
        tsc_hz: DEFAULT_TSC_HZ,
        features,
    };
    let p = InProcess::with_config(cfg, RAM, ClockKind::Fake(0)).unwrap();
    for msr in [
        m::SIMP,
        m::SINT0 + 2,
        m::EOM,
        m::CRASH_CTL,
        m::CRASH_P0,
        m::TSC_FREQUENCY,
    ] {
        assert_eq!(
            p.rdmsr(0, msr),
            Err(MsrFault::NotAvailable(msr)),
            "{msr:#x}"
        );
    }
    // The CPUID leaves say the same.
    let f = p.hv().cpuid_leaves()[3];
    assert_eq!(f.eax & (1 << 2), 0);
    assert_eq!(f.edx & (1 << 10), 0);
}

#[test]
fn time_ref_count_follows_the_guest_tsc() {
    let p = InProcess::with_config(
        HvConfig {
            vp_count: 1,
            tsc_hz: 2_500_000_000,
            features: HvFeatures::default(),
        },
        RAM,
        ClockKind::Fake(987_654_321_000),
    )
    .unwrap();
    assert_eq!(p.rdmsr(0, m::TIME_REF_COUNT).unwrap(), 0);
    p.fake_tsc().unwrap().advance(2_500_000_000);
    let t = p.rdmsr(0, m::TIME_REF_COUNT).unwrap();
    assert!((9_999_999..=10_000_000).contains(&t), "{t}");
    p.advance_ref(1234);
    let t2 = p.rdmsr(0, m::TIME_REF_COUNT).unwrap();
    assert!(t2 >= t + 1234 && t2 <= t + 1235, "{t} {t2}");
}

#[test]
fn reference_tsc_page_agrees_with_time_ref_count() {
    let hz = 3_000_000_000;
    let p = InProcess::with_config(
        HvConfig {
            vp_count: 1,
            tsc_hz: hz,
            features: HvFeatures::default(),
        },
        RAM,
        ClockKind::Fake(u64::MAX / 3),
    )
    .unwrap();
    let enable = ReferenceTscMsr::new()
        .with_enable(true)
        .with_gpa(TSC_PAGE)
        .into_bits();
    // Written before GUEST_OS_ID, as Linux does.
    p.wrmsr(0, m::REFERENCE_TSC, enable).unwrap();
    assert_eq!(p.rdmsr(0, m::REFERENCE_TSC).unwrap(), enable);
    let page = p.read_page(TSC_PAGE).unwrap();
    let seq = u32::from_le_bytes(page[0..4].try_into().unwrap());
    let scale = u64::from_le_bytes(page[8..16].try_into().unwrap());
    let offset = i64::from_le_bytes(page[16..24].try_into().unwrap());
    assert_ne!(seq, 0);
    assert_eq!(scale, ((10_000_000u128 << 64) / u128::from(hz)) as u64);
    assert_eq!(scale, p.hv().clock().scale());
    let fake = p.fake_tsc().unwrap();
    for step in [0u64, 1, 299, 3_000_000_000, 7_777_777_777] {
        fake.advance(step);
        let tsc_now = fake.now();
        let from_page = tsc::compute(tsc_now, scale, offset);
        assert_eq!(from_page, p.rdmsr(0, m::TIME_REF_COUNT).unwrap());
    }
    // Re-enabling bumps the sequence, never to 0.
    p.wrmsr(0, m::REFERENCE_TSC, enable).unwrap();
    let seq2 = u32::from_le_bytes(p.read_bytes(TSC_PAGE, 4).unwrap().try_into().unwrap());
    assert_ne!(seq2, 0);
    assert_ne!(seq2, seq);
    // Outside RAM: #GP; disabled with any page: accepted.
    let outside = ReferenceTscMsr::new()
        .with_enable(true)
        .with_gpa(1 << 40)
        .into_bits();
    assert!(matches!(
        p.wrmsr(0, m::REFERENCE_TSC, outside),
        Err(MsrFault::PageOutsideRam { .. })
    ));
    p.wrmsr(0, m::REFERENCE_TSC, 1 << 40).unwrap();
}

#[test]
fn vp_assist_page_is_accepted() {
    let p = part();
    let v = VpAssistPageMsr::new()
        .with_enable(true)
        .with_gpa(0x8000)
        .into_bits();
    p.wrmsr(1, m::VP_ASSIST_PAGE, v).unwrap();
    assert_eq!(p.rdmsr(1, m::VP_ASSIST_PAGE).unwrap(), v);
    assert_eq!(p.rdmsr(0, m::VP_ASSIST_PAGE).unwrap(), 0);
    let bad = VpAssistPageMsr::new()
        .with_enable(true)
        .with_gpa(RAM as u64)
        .into_bits();
    assert!(p.wrmsr(1, m::VP_ASSIST_PAGE, bad).is_err());
}

#[test]
fn synic_registers() {
    let p = part();
    for i in 0..16 {
        assert_eq!(p.rdmsr(0, m::SINT0 + i).unwrap(), 0x10000);
    }
    // Unmasked with a vector below 16: #GP. Masked with any vector: fine.
    assert!(matches!(
        p.wrmsr(0, m::SINT0, 15),
        Err(MsrFault::InvalidValue { .. })
    ));
    p.wrmsr(0, m::SINT0, 0x10000).unwrap();
    p.wrmsr(0, m::SINT0, 0x10005).unwrap();
    p.wrmsr(0, m::SINT0, 16).unwrap();
    // Preserved bits and AutoEOI/polling round-trip.
    let v = Sint::new()
        .with_vector(0x40)
        .with_auto_eoi(true)
        .with_proxy(true)
        .into_bits()
        | 1 << 40;
    p.wrmsr(0, m::SINT0 + 5, v).unwrap();
    assert_eq!(p.rdmsr(0, m::SINT0 + 5).unwrap(), v);
    // Per VP.
    assert_eq!(p.rdmsr(1, m::SINT0 + 5).unwrap(), 0x10000);
    assert!(p.hv().auto_eoi(0, 5));
    assert!(!p.hv().auto_eoi(1, 5));
    assert!(!p.hv().auto_eoi(0, 200));
    assert_eq!(p.hv().auto_eoi_vectors(0), vec![0x40]);
    assert_eq!(p.rdmsr(0, m::EOM).unwrap(), 0);
    p.wrmsr(0, m::SCONTROL, 0x3).unwrap();
    assert_eq!(p.rdmsr(0, m::SCONTROL).unwrap(), 0x3);
    let simp_out = hypercall::msr::Simp::new()
        .with_enable(true)
        .with_gpa(RAM as u64)
        .into_bits();
    assert!(p.wrmsr(0, m::SIMP, simp_out).is_err());
    let siefp_out = hypercall::msr::Siefp::new()
        .with_enable(true)
        .with_gpa(!0xFFF)
        .into_bits();
    assert!(p.wrmsr(0, m::SIEFP, siefp_out).is_err());
    // Disabled pages may point anywhere.
    p.wrmsr(0, m::SIMP, RAM as u64).unwrap();
}

#[test]
fn crash_msrs_report_the_crash() {
    let p = part();
    let caps = CrashCtl::from_bits(p.rdmsr(0, m::CRASH_CTL).unwrap());
    assert!(caps.crash_notify() && caps.crash_message());
    assert_eq!(p.hv().crash(), None);
    for (i, v) in [0xE, 0x8100, 0xFFFF_8000_1234, 0xAA, 0x55]
        .into_iter()
        .enumerate()
    {
        p.wrmsr(0, m::CRASH_P0 + i as u32, v).unwrap();
    }
    assert_eq!(p.rdmsr(1, m::CRASH_P2).unwrap(), 0xFFFF_8000_1234);
    // Without CrashNotify nothing is reported.
    p.wrmsr(1, m::CRASH_CTL, 0).unwrap();
    assert_eq!(p.hv().crash(), None);
    p.wrmsr(1, m::CRASH_CTL, 1 << 63).unwrap();
    let c = p.hv().crash().unwrap();
    assert_eq!(c.vp, 1);
    assert_eq!(c.params, [0xE, 0x8100, 0xFFFF_8000_1234, 0xAA, 0x55]);
    assert_eq!(c.message, None);
    assert_eq!(p.hv().stats().guest_crashes, 1);

    // kmsg-dump form: P3 = GPA of the text, P4 = length.
    p.write_bytes(0x9000, b"Kernel panic - not syncing")
        .unwrap();
    p.wrmsr(0, m::CRASH_P3, 0x9000).unwrap();
    p.wrmsr(0, m::CRASH_P4, 26).unwrap();
    p.wrmsr(0, m::CRASH_CTL, 3 << 62).unwrap();
    let c = p.hv().crash().unwrap();
    assert_eq!(c.message.as_deref(), Some("Kernel panic - not syncing"));
    // A hostile message pointer is just not read.
    p.wrmsr(0, m::CRASH_P3, u64::MAX - 10).unwrap();
    p.wrmsr(0, m::CRASH_P4, u64::MAX).unwrap();
    p.wrmsr(0, m::CRASH_CTL, 3 << 62).unwrap();
    assert_eq!(p.hv().crash().unwrap().message, None);
    // Length is capped at 4096.
    p.wrmsr(0, m::CRASH_P3, 0x9000).unwrap();
    p.wrmsr(0, m::CRASH_P4, 100_000).unwrap();
    p.wrmsr(0, m::CRASH_CTL, 3 << 62).unwrap();
    assert_eq!(p.hv().crash().unwrap().message.unwrap().len(), 4096);
}

// ---------------------------------------------------------------- hypercalls

#[test]
fn post_message_echo_happy_path() {
    let p = ready();
    let st = p.post_message(
        0,
        INPUT,
        ECHO_CONNECTION_ID,
        ECHO_MESSAGE_TYPE,
        &[1, 2, 0xAB, 0xCD],
    );
    assert_eq!(st, HvStatus::SUCCESS);
    let msg = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(msg.header.message_type, MessageType(ECHO_MESSAGE_TYPE));
    assert_eq!(msg.payload(), &[1, 2, 0xAB, 0xCD]);
    assert!(!msg.header.message_flags.message_pending());
    assert_eq!(p.interrupts().raised(), vec![(0, VEC)]);
    let s = p.hv().stats();
    assert_eq!(s.hypercalls_by_code["PostMessage"], 1);
    assert_eq!(s.hypercalls_by_status["SUCCESS"], 1);
    assert_eq!(s.messages_delivered, 1);
    assert_eq!(s.guest_messages_posted, 1);
    assert_eq!(s.interrupts_by_vector["0xf3"], 1);
}

#[test]
fn post_message_reaches_a_registered_port_with_its_fields() {
    let p = ready();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    p.hv().register_message_port(
        0x12_3456,
        Box::new(move |m| {
            s2.lock().unwrap().push(m.clone());
            HvStatus::INSUFFICIENT_BUFFERS
        }),
    );
    let st = p.post_message(1, INPUT + 0xF00, 0x12_3456, 7, &[9; 240]);
    assert_eq!(st, HvStatus::INSUFFICIENT_BUFFERS);
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![MessageFromGuest {
            vp: 1,
            connection_id: 0x12_3456,
            message_type: 7,
            payload: vec![9; 240],
        }]
    );
}

#[test]
fn post_message_error_statuses() {
    let p = ready();
    let call = ctl(CallCode::POST_MESSAGE).into_bits();
    let good = echo_input(1, 2, &[]);
    write_input(&p, INPUT, &good);
    // Unknown call codes.
    for code in [0u16, 1, 0x46, 0x5E, 0x8001, 0xFFFF] {
        let rax = p.hypercall(0, u64::from(code), INPUT, 0);
        assert_eq!(status(rax), HvStatus::INVALID_HYPERCALL_CODE, "{code:#x}");
    }
    // Alignment, page crossing, outside RAM.
    for gpa in [
        INPUT + 4,
        INPUT + 1,
        0x4F08,
        RAM as u64,
        RAM as u64 - 8,
        u64::MAX - 7,
        1 << 52,
    ] {
        assert_eq!(
            status(p.hypercall(0, call, gpa, 0)),
            HvStatus::INVALID_ALIGNMENT,
            "{gpa:#x}"
        );
    }
    // The very last 256 bytes of RAM are a valid input block.
    let last = RAM as u64 - 256;
    write_input(&p, last, &good);
    assert_eq!(status(p.hypercall(0, call, last, 0)), HvStatus::SUCCESS);
    p.complete_message(0, SIMP0, 2).unwrap();
    // Unknown connection, reserved connection-id bits.
    let mut i = good;
    i.connection_id = 0x7E59;
    write_input(&p, INPUT, &i);
    assert_eq!(
        status(p.hypercall(0, call, INPUT, 0)),
        HvStatus::INVALID_CONNECTION_ID
    );
    i.connection_id = ECHO_CONNECTION_ID | 0x0100_0000;
    write_input(&p, INPUT, &i);
    assert_eq!(
        status(p.hypercall(0, call, INPUT, 0)),
        HvStatus::INVALID_CONNECTION_ID
    );
    // Type 0, type with bit 31, payload over 240.
    for (t, size) in [(0u32, 2u32), (0x8000_0001, 2), (5, 241), (5, u32::MAX)] {
        let mut i = good;
        i.message_type = MessageType(t);
        i.payload_size = size;
        write_input(&p, INPUT, &i);
        assert_eq!(
            status(p.hypercall(0, call, INPUT, 0)),
            HvStatus::INVALID_PARAMETER,
            "{t:#x} {size}"
        );
    }
    // RsvdZ field of the input block.
    let mut i = good;
    i.reserved = 1;
    write_input(&p, INPUT, &i);
    assert_eq!(
        status(p.hypercall(0, call, INPUT, 0)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    write_input(&p, INPUT, &good);
    // Control word: rep count, rep start, varhead, reserved bits, nested, fast.
    let bad_controls = [
        ctl(CallCode::POST_MESSAGE).with_rep_count(1).into_bits(),
        ctl(CallCode::POST_MESSAGE)
            .with_rep_count(0xFFF)
            .into_bits(),
        ctl(CallCode::POST_MESSAGE).with_rep_start(3).into_bits(),
        ctl(CallCode::POST_MESSAGE)
            .with_variable_header_size(1)
            .into_bits(),
        ctl(CallCode::POST_MESSAGE).with_nested(true).into_bits(),
        ctl(CallCode::POST_MESSAGE).with_fast(true).into_bits(),
        call | 1 << 27,
        call | 1 << 44,
        call | 1 << 63,
    ];
    for rcx in bad_controls {
        assert_eq!(
            status(p.hypercall(0, rcx, INPUT, 0)),
            HvStatus::INVALID_HYPERCALL_INPUT,
            "{rcx:#x}"
        );
    }
    // The echo service's own checks.
    for payload in [&[][..], &[1][..], &[0, 2][..], &[9, 2][..], &[1, 16][..]] {
        let st = p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, payload);
        assert_eq!(st, HvStatus::INVALID_PARAMETER, "{payload:?}");
    }
    // Nothing got delivered by any of that.
    assert_eq!(
        p.read_message(SIMP0, 2).unwrap().header.message_type,
        MessageType::NONE
    );
    let s = p.hv().stats();
    assert_eq!(s.hypercalls_by_status["INVALID_HYPERCALL_CODE"], 6);
    assert_eq!(s.hypercalls_by_code["0xffff"], 1);
}

#[test]
fn hypercalls_need_the_page_and_the_privilege() {
    let p = part();
    p.hv().install_test_services();
    let st = p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[1, 2]);
    assert_eq!(st, HvStatus::ACCESS_DENIED);
    assert!(!p.hv().hypercall_page_enabled());

    let mut features = HvFeatures::default();
    features.privileges = features
        .privileges
        .with_post_messages(false)
        .with_signal_events(false);
    let cfg = HvConfig {
        vp_count: 1,
        tsc_hz: DEFAULT_TSC_HZ,
        features,
    };
    let p = InProcess::with_config(cfg, RAM, ClockKind::Fake(0)).unwrap();
    p.enable_hypercalls(HC_PAGE).unwrap();
    p.hv().install_test_services();
    assert_eq!(
        p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[1, 2]),
        HvStatus::ACCESS_DENIED
    );
    assert_eq!(
        p.signal_event(0, EVENT_CONNECTION_ID, 1),
        HvStatus::ACCESS_DENIED
    );
}

#[test]
fn queued_messages_are_redelivered_on_eom() {
    let p = ready();
    let st = p.post_message(
        0,
        INPUT,
        ECHO_CONNECTION_ID,
        ECHO_MESSAGE_TYPE,
        &[3, 2, 0x77],
    );
    assert_eq!(st, HvStatus::SUCCESS);
    // First copy in the slot, flagged: two more wait behind it.
    let first = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(first.payload(), &[1, 2, 0x77]);
    assert!(first.header.message_flags.message_pending());
    assert_eq!(p.hv().queued_messages(0), 2);
    assert_eq!(p.interrupts().take(), vec![(0, VEC)]);
    let s = p.hv().stats();
    assert_eq!((s.messages_delivered, s.messages_queued), (1, 2));

    // The guest's protocol: clear the type, see MessagePending, write EOM.
    // Delivery of the next copy is immediate, with an interrupt.
    let m1 = p.complete_message(0, SIMP0, 2).unwrap().unwrap();
    assert_eq!(m1.payload()[0], 1);
    let second = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(second.payload(), &[2, 2, 0x77]);
    assert!(second.header.message_flags.message_pending());
    assert_eq!(p.interrupts().take(), vec![(0, VEC)]);

    p.complete_message(0, SIMP0, 2).unwrap().unwrap();
    let third = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(third.payload(), &[3, 2, 0x77]);
    assert!(!third.header.message_flags.message_pending());
    assert_eq!(p.hv().queued_messages(0), 0);

    // Last one: no pending flag, so no EOM, nothing more arrives.
    p.complete_message(0, SIMP0, 2).unwrap().unwrap();
    assert_eq!(
        p.read_message(SIMP0, 2).unwrap().header.message_type,
        MessageType::NONE
    );
    let s = p.hv().stats();
    assert_eq!(s.messages_delivered, 3);
    assert_eq!(s.messages_redelivered_on_eom, 2);
    assert_eq!(s.msr_writes["EOM"], 2);
}

#[test]
fn eom_without_queued_messages_is_harmless() {
    let p = ready();
    p.wrmsr(0, m::EOM, 0).unwrap();
    p.wrmsr(0, m::EOM, u64::MAX).unwrap();
    assert!(p.interrupts().raised().is_empty());
}

#[test]
fn slot_freed_without_eom_is_used_by_the_next_post() {
    let p = ready();
    p.hv().post_message(0, 2, 5, b"a").unwrap();
    // Guest clears the slot but (no pending flag) does not write EOM.
    p.complete_message(0, SIMP0, 2).unwrap().unwrap();
    p.hv().post_message(0, 2, 5, b"b").unwrap();
    assert_eq!(p.read_message(SIMP0, 2).unwrap().payload(), b"b");
    assert_eq!(p.hv().queued_messages(0), 0);
}

#[test]
fn host_messages_wait_for_synic_enable() {
    let p = part();
    p.hv().post_message(0, 4, 0x100, b"early").unwrap();
    p.hv().post_message(0, 4, 0x100, b"later").unwrap();
    assert_eq!(p.hv().queued_messages(0), 2);
    // SIMP on, SCONTROL still off: nothing yet.
    p.wrmsr(0, m::SIMP, SIMP0 | 1).unwrap();
    assert_eq!(
        p.read_message(SIMP0, 4).unwrap().header.message_type,
        MessageType::NONE
    );
    p.unmask_sint(0, 4, 0x50).unwrap();
    p.wrmsr(0, m::SCONTROL, 1).unwrap();
    let msg = p.read_message(SIMP0, 4).unwrap();
    assert_eq!(msg.payload(), b"early");
    assert!(msg.header.message_flags.message_pending());
    assert_eq!(p.interrupts().raised(), vec![(0, 0x50)]);
}

#[test]
fn host_post_message_validation_and_queue_limit() {
    let p = ready();
    let hv = p.hv();
    assert_eq!(hv.post_message(2, 2, 1, b""), Err(HvError::InvalidVp(2)));
    assert_eq!(
        hv.post_message(0, 16, 1, b""),
        Err(HvError::InvalidSint(16))
    );
    assert_eq!(
        hv.post_message(0, 2, 0, b""),
        Err(HvError::InvalidMessageType(0))
    );
    assert_eq!(
        hv.post_message(0, 2, 1, &[0; 241]),
        Err(HvError::PayloadTooLarge(241))
    );
    // One in the slot plus MAX_QUEUED_PER_SINT waiting.
    for _ in 0..=MAX_QUEUED_PER_SINT {
        hv.post_message(0, 2, 1, &[0; 240]).unwrap();
    }
    assert_eq!(
        hv.post_message(0, 2, 1, b"x"),
        Err(HvError::QueueFull { vp: 0, sint: 2 })
    );
    // Other SINTs are unaffected.
    hv.post_message(0, 3, 1, b"x").unwrap();
    // The echo service turns a full queue into INSUFFICIENT_BUFFERS.
    assert_eq!(
        p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[1, 2]),
        HvStatus::INSUFFICIENT_BUFFERS
    );
}

#[test]
fn masked_and_polling_sints_get_messages_without_interrupts() {
    let p = ready();
    p.wrmsr(
        0,
        m::SINT0 + 5,
        Sint::new().with_vector(0x60).with_masked(true).into_bits(),
    )
    .unwrap();
    p.wrmsr(
        0,
        m::SINT0 + 6,
        Sint::new().with_vector(0x61).with_polling(true).into_bits(),
    )
    .unwrap();
    p.hv().post_message(0, 5, 9, b"masked").unwrap();
    p.hv().post_message(0, 6, 9, b"polled").unwrap();
    assert_eq!(p.read_message(SIMP0, 5).unwrap().payload(), b"masked");
    assert_eq!(p.read_message(SIMP0, 6).unwrap().payload(), b"polled");
    // Events on them: the flag is set, no interrupt either.
    p.hv().signal_event(0, 5, 1).unwrap();
    assert!(p.read_event_flags(SIEFP0, 5).unwrap().get(1));
    assert!(p.interrupts().raised().is_empty());
    // Reset-state SINT (masked, vector 0) on VP 0 slot 9: same.
    p.hv().post_message(0, 9, 9, b"reset").unwrap();
    assert!(p.interrupts().raised().is_empty());
}

#[test]
fn events_raise_only_on_a_clear_to_set_transition() {
    let p = ready();
    let hv = p.hv();
    hv.signal_event(0, 3, 77).unwrap();
    assert!(p.read_event_flags(SIEFP0, 3).unwrap().get(77));
    assert_eq!(p.interrupts().take(), vec![(0, VEC)]);
    hv.signal_event(0, 3, 77).unwrap();
    assert!(p.interrupts().take().is_empty());
    // Guest clears the flag: the next signal raises again.
    let byte = SIEFP0 + 3 * 256 + 77 / 8;
    let b = p.read_bytes(byte, 1).unwrap()[0];
    p.write_bytes(byte, &[b & !(1 << (77 % 8))]).unwrap();
    hv.signal_event(0, 3, 77).unwrap();
    assert_eq!(p.interrupts().take(), vec![(0, VEC)]);
    hv.signal_event(0, 3, 2047).unwrap();
    assert!(p.read_event_flags(SIEFP0, 3).unwrap().get(2047));
    assert_eq!(
        hv.signal_event(0, 3, 2048),
        Err(HvError::InvalidEventFlag(2048))
    );
    assert_eq!(hv.signal_event(0, 16, 1), Err(HvError::InvalidSint(16)));
    assert_eq!(hv.signal_event(1, 3, 1), Err(HvError::SynicDisabled(1)));
    assert_eq!(hv.signal_event(7, 3, 1), Err(HvError::InvalidVp(7)));
    let s = hv.stats();
    assert_eq!((s.events_signalled, s.events_coalesced), (3, 1));
}

#[test]
fn signal_event_hypercall_fast_and_slow() {
    let p = ready();
    assert_eq!(p.signal_event(0, EVENT_CONNECTION_ID, 5), HvStatus::SUCCESS);
    assert!(p
        .read_event_flags(SIEFP0, EVENT_TARGET_SINT)
        .unwrap()
        .get(5));
    assert_eq!(p.interrupts().take(), vec![(0, VEC)]);
    // Slow form.
    let input = SignalEventInput {
        connection_id: EVENT_CONNECTION_ID,
        flag_number: 9,
        reserved: 0,
    };
    p.write_bytes(INPUT, input.as_bytes()).unwrap();
    let slow = ctl(CallCode::SIGNAL_EVENT).into_bits();
    assert_eq!(status(p.hypercall(0, slow, INPUT, 0)), HvStatus::SUCCESS);
    assert!(p.read_event_flags(SIEFP0, 3).unwrap().get(9));
    assert_eq!(
        status(p.hypercall(0, slow, INPUT + 4, 0)),
        HvStatus::INVALID_ALIGNMENT
    );
    assert_eq!(
        status(p.hypercall(0, slow, RAM as u64, 0)),
        HvStatus::INVALID_ALIGNMENT
    );
    // The last 8 bytes of a page do not cross it.
    p.write_bytes(INPUT + 0xFF8, input.as_bytes()).unwrap();
    assert_eq!(
        status(p.hypercall(0, slow, INPUT + 0xFF8, 0)),
        HvStatus::SUCCESS
    );
    // Errors.
    assert_eq!(
        p.signal_event(0, 0x7E57, 1),
        HvStatus::INVALID_CONNECTION_ID
    );
    assert_eq!(
        p.signal_event(0, EVENT_CONNECTION_ID | 1 << 24, 1),
        HvStatus::INVALID_CONNECTION_ID
    );
    assert_eq!(
        p.signal_event(0, EVENT_CONNECTION_ID, 2048),
        HvStatus::INVALID_PARAMETER
    );
    let fast = ctl(CallCode::SIGNAL_EVENT).with_fast(true).into_bits();
    let reserved = SignalEventInput {
        connection_id: EVENT_CONNECTION_ID,
        flag_number: 1,
        reserved: 1,
    };
    assert_eq!(
        status(p.hypercall(0, fast, reserved.to_fast(), 0)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    let rep = ctl(CallCode::SIGNAL_EVENT)
        .with_fast(true)
        .with_rep_count(2)
        .into_bits();
    assert_eq!(
        status(p.hypercall(0, rep, input.to_fast(), 0)),
        HvStatus::INVALID_HYPERCALL_INPUT
    );
    // From VP 1 the flag goes to VP 1's page, which is not enabled: the
    // call succeeds, nothing is delivered.
    p.interrupts().take();
    assert_eq!(p.signal_event(1, EVENT_CONNECTION_ID, 5), HvStatus::SUCCESS);
    assert!(p.interrupts().raised().is_empty());
    p.enable_synic(1, SIMP1, SIEFP1).unwrap();
    p.unmask_sint(1, 3, 0x51).unwrap();
    assert_eq!(p.signal_event(1, EVENT_CONNECTION_ID, 5), HvStatus::SUCCESS);
    assert!(p.read_event_flags(SIEFP1, 3).unwrap().get(5));
    assert_eq!(p.interrupts().raised(), vec![(1, 0x51)]);
}

// ---------------------------------------------------------------- timers

fn set_timer(p: &InProcess, vp: u32, n: u32, config: StimerConfig, count: u64) {
    p.wrmsr(vp, m::STIMER0_CONFIG + 2 * n, config.into_bits())
        .unwrap();
    p.wrmsr(vp, m::STIMER0_COUNT + 2 * n, count).unwrap();
}

#[test]
fn one_shot_direct_timer() {
    let p = ready();
    let cfg = stimer_cfg()
        .with_enable(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    let deadline = p.now() + 1000;
    set_timer(&p, 0, 0, cfg, deadline);
    p.advance_ref(999);
    assert!(p.interrupts().raised().is_empty());
    p.advance_ref(1);
    assert_eq!(p.interrupts().raised(), vec![(0, 0xED)]);
    // One-shot: enable is cleared after it fired.
    let c = StimerConfig::from_bits(p.rdmsr(0, m::STIMER0_CONFIG).unwrap());
    assert!(!c.enable());
    assert_eq!(p.rdmsr(0, m::STIMER0_COUNT).unwrap(), deadline);
    p.advance_ref(100_000);
    assert_eq!(p.interrupts().raised().len(), 1);
    assert_eq!(p.hv().stats().timer_expirations, 1);
}

#[test]
fn one_shot_in_the_past_fires_on_the_write() {
    let p = ready();
    p.advance_ref(5000);
    let cfg = stimer_cfg()
        .with_enable(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    set_timer(&p, 1, 3, cfg, 10);
    assert_eq!(p.interrupts().raised(), vec![(1, 0xED)]);
}

#[test]
fn periodic_direct_timer_skips_missed_periods() {
    let p = ready();
    let cfg = stimer_cfg()
        .with_enable(true)
        .with_periodic(true)
        .with_lazy(true)
        .with_direct_mode(true)
        .with_apic_vector(0x40);
    set_timer(&p, 0, 1, cfg, 100);
    assert_eq!(p.rdmsr(0, m::STIMER0_CONFIG + 2).unwrap(), cfg.into_bits());
    p.advance_ref(100);
    p.advance_ref(100);
    assert_eq!(p.interrupts().count(0, 0x40), 2);
    // 3.5 periods at once: one expiry, the rest are skipped.
    p.advance_ref(350);
    assert_eq!(p.interrupts().count(0, 0x40), 3);
    p.advance_ref(99);
    assert_eq!(p.interrupts().count(0, 0x40), 3);
    p.advance_ref(1);
    assert_eq!(p.interrupts().count(0, 0x40), 4);
    // COUNT = 0 stops it.
    p.wrmsr(0, m::STIMER0_COUNT + 2, 0).unwrap();
    assert!(!StimerConfig::from_bits(p.rdmsr(0, m::STIMER0_CONFIG + 2).unwrap()).enable());
    p.advance_ref(1000);
    assert_eq!(p.interrupts().count(0, 0x40), 4);
}

#[test]
fn message_mode_timer_writes_the_timer_message() {
    let p = ready();
    let cfg = stimer_cfg().with_enable(true).with_sintx(2);
    let deadline = p.now() + 500;
    set_timer(&p, 0, 2, cfg, deadline);
    p.advance_ref(600);
    let msg = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(msg.header.message_type, MessageType::TIMER_EXPIRED);
    let t: TimerMessagePayload = msg.timer_payload().unwrap();
    assert_eq!(t.timer_index, 2);
    assert_eq!(t.expiration_time, deadline);
    assert_eq!(t.delivery_time, p.now());
    assert_eq!(p.interrupts().raised(), vec![(0, VEC)]);
}

#[test]
fn message_mode_timer_queues_behind_a_busy_slot() {
    let p = ready();
    p.hv().post_message(0, 2, 1, b"busy").unwrap();
    let cfg = stimer_cfg()
        .with_enable(true)
        .with_periodic(true)
        .with_sintx(2);
    set_timer(&p, 0, 0, cfg, 1000);
    p.advance_ref(1000);
    let busy = p.read_message(SIMP0, 2).unwrap();
    assert_eq!(busy.payload(), b"busy");
    assert!(busy.header.message_flags.message_pending());
    // A second period while the first expiry still waits: missed, not queued twice.
    p.advance_ref(1000);
    assert_eq!(p.hv().queued_messages(0), 1);
    assert_eq!(p.hv().stats().timer_expirations_missed, 1);
    p.advance_ref(10);
    p.complete_message(0, SIMP0, 2).unwrap().unwrap();
    let msg = p.read_message(SIMP0, 2).unwrap();
    let t = msg.timer_payload().unwrap();
    assert_eq!(t.timer_index, 0);
    assert_eq!(t.expiration_time, 1000);
    assert_eq!(t.delivery_time, p.now());
    // Once delivered, the next period queues again.
    p.complete_message(0, SIMP0, 2).unwrap();
    p.advance_ref(1000);
    assert_eq!(
        p.read_message(SIMP0, 2)
            .unwrap()
            .timer_payload()
            .unwrap()
            .expiration_time,
        3000
    );
}

#[test]
fn auto_enable_and_config_validation() {
    let p = ready();
    let cfg = stimer_cfg()
        .with_auto_enable(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    p.wrmsr(0, m::STIMER0_CONFIG, cfg.into_bits()).unwrap();
    p.advance_ref(10_000);
    assert!(p.interrupts().raised().is_empty());
    p.wrmsr(0, m::STIMER0_COUNT, p.now() + 10).unwrap();
    assert!(StimerConfig::from_bits(p.rdmsr(0, m::STIMER0_CONFIG).unwrap()).enable());
    p.advance_ref(10);
    assert_eq!(p.interrupts().raised(), vec![(0, 0xED)]);
    // Reserved bits, direct vector below 16: #GP.
    for bad in [
        1u64 << 13,
        1 << 20,
        1 << 63,
        stimer_cfg()
            .with_direct_mode(true)
            .with_apic_vector(15)
            .into_bits(),
    ] {
        assert!(
            matches!(
                p.wrmsr(0, m::STIMER0_CONFIG, bad),
                Err(MsrFault::InvalidValue { .. })
            ),
            "{bad:#x}"
        );
    }
    // Message mode with SINTx = 0 does not enable.
    p.wrmsr(
        0,
        m::STIMER0_CONFIG + 2,
        stimer_cfg().with_enable(true).into_bits(),
    )
    .unwrap();
    assert!(!StimerConfig::from_bits(p.rdmsr(0, m::STIMER0_CONFIG + 2).unwrap()).enable());
}

#[test]
fn direct_timers_need_the_feature() {
    let mut features = HvFeatures::default();
    features.features = features.features.with_direct_synthetic_timers(false);
    let cfg = HvConfig {
        vp_count: 1,
        tsc_hz: DEFAULT_TSC_HZ,
        features,
    };
    let p = InProcess::with_config(cfg, RAM, ClockKind::Fake(0)).unwrap();
    let c = stimer_cfg()
        .with_enable(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    assert!(p.wrmsr(0, m::STIMER0_CONFIG, c.into_bits()).is_err());
}

#[test]
fn timer_thread_fires_on_the_host_clock() {
    let cfg = HvConfig {
        vp_count: 1,
        tsc_hz: DEFAULT_TSC_HZ,
        features: HvFeatures::default(),
    };
    let p = InProcess::with_config(cfg, RAM, ClockKind::Host).unwrap();
    let c = stimer_cfg()
        .with_enable(true)
        .with_periodic(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    // 2 ms period.
    set_timer(&p, 0, 0, c, 20_000);
    assert!(p.interrupts().wait_for(0, 0xED, 3, Duration::from_secs(10)));
    p.hv().shutdown();
    assert!(p.hv().is_shut_down());
    p.hv().shutdown();
}

#[test]
fn tiny_periods_are_coalesced_by_the_timer_thread() {
    let cfg = HvConfig {
        vp_count: 1,
        tsc_hz: DEFAULT_TSC_HZ,
        features: HvFeatures::default(),
    };
    let p = InProcess::with_config(cfg, RAM, ClockKind::Host).unwrap();
    let c = stimer_cfg()
        .with_enable(true)
        .with_periodic(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    // A 100 ns period: 1,000,000 expirations per second if taken literally.
    set_timer(&p, 0, 0, c, 1);
    assert!(p.interrupts().wait_for(0, 0xED, 1, Duration::from_secs(10)));
    let start = std::time::Instant::now();
    let n0 = p.interrupts().count(0, 0xED);
    std::thread::sleep(Duration::from_millis(100));
    let n1 = p.interrupts().count(0, 0xED);
    let elapsed = start.elapsed();
    p.hv().shutdown();
    // At most one round per MIN_SLEEP (50 us), plus slack.
    let bound = (elapsed.as_micros() / 50 + 100) as usize;
    assert!(n1 - n0 <= bound, "{} expirations in {elapsed:?}", n1 - n0);
    assert_eq!(
        p.hv().stats().timer_expirations as usize,
        p.interrupts().count(0, 0xED)
    );
}

// ---------------------------------------------------------------- lifecycle

#[test]
fn reset_returns_to_power_on_state() {
    let p = ready();
    p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[3, 2]);
    let c = stimer_cfg()
        .with_enable(true)
        .with_periodic(true)
        .with_direct_mode(true)
        .with_apic_vector(0xED);
    set_timer(&p, 0, 0, c, 100);
    p.wrmsr(0, m::CRASH_CTL, 1 << 63).unwrap();
    p.wrmsr(0, m::VP_ASSIST_PAGE, 0x8001).unwrap();
    p.advance_ref(1000);
    p.hv().reset();
    assert_eq!(p.now(), 0);
    assert_eq!(p.hv().crash(), None);
    assert_eq!(p.hv().queued_messages(0), 0);
    for (msr, v) in [
        (m::GUEST_OS_ID, 0),
        (m::HYPERCALL, 0),
        (m::REFERENCE_TSC, 0),
        (m::SCONTROL, 0),
        (m::SIMP, 0),
        (m::SIEFP, 0),
        (m::SINT0 + 2, 0x10000),
        (m::STIMER0_CONFIG, 0),
        (m::STIMER0_COUNT, 0),
        (m::VP_ASSIST_PAGE, 0),
        (m::CRASH_P0, 0),
    ] {
        assert_eq!(p.rdmsr(0, msr).unwrap(), v, "{msr:#x}");
    }
    p.interrupts().take();
    p.advance_ref(10_000);
    assert!(p.interrupts().raised().is_empty());
    // Port registrations survive a reset.
    p.enable_hypercalls(HC_PAGE).unwrap();
    p.enable_synic(0, SIMP0, SIEFP0).unwrap();
    assert_eq!(
        p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[1, 2]),
        HvStatus::SUCCESS
    );
}

#[test]
fn drop_stops_the_timer_thread() {
    let p = part();
    let weak = Arc::downgrade(p.hv());
    p.hv().install_test_services();
    drop(p);
    // The service closures hold only weak references: nothing keeps it alive.
    assert!(weak.upgrade().is_none());
}

#[test]
fn stats_serialize() {
    let p = ready();
    p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[2, 2]);
    p.complete_message(0, SIMP0, 2).unwrap();
    let _ = p.rdmsr(0, m::VP_INDEX);
    let json = serde_json::to_value(p.hv().stats()).unwrap();
    assert_eq!(json["msr_reads"]["VP_INDEX"], 1);
    assert_eq!(json["msr_writes"]["SIMP"], 1);
    assert_eq!(json["hypercalls_by_code"]["PostMessage"], 1);
    assert_eq!(json["messages_delivered"], 2);
    assert_eq!(json["messages_queued"], 1);
    assert_eq!(json["messages_redelivered_on_eom"], 1);
    assert_eq!(json["interrupts_by_vector"]["0xf3"], 2);
}

/// A guest thread consuming SINT 2 with the real protocol (compare-exchange
/// the type to 0, then read MessagePending, then EOM) while the host posts
/// bursts of messages: every message arrives, in order, and none is stranded
/// (after each burst the host waits, posting nothing, until the guest has
/// seen the whole burst, so only EOM can deliver the queued ones).
#[test]
fn concurrent_guest_consumer_sees_every_message_in_order() {
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
    use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileMemory};
    const BURSTS: u32 = 1500;
    const BURST: u32 = 4;
    let p = ready();
    let hv = p.hv().clone();
    let mem = p.memory().clone();
    let received = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (hv, received, stop) = (hv.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || {
            let slot = SIMP0 + 2 * 256;
            let s = GuestMemoryBackend::get_slice(&mem, GuestAddress(slot), 256).unwrap();
            let ty: &AtomicU32 = s.get_atomic_ref(0).unwrap();
            let flags: &AtomicU8 = s.get_atomic_ref(5).unwrap();
            let mut got = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let t = ty.load(Ordering::Acquire);
                if t == 0 {
                    std::thread::yield_now();
                    continue;
                }
                let mut payload = [0u8; 4];
                s.get_slice(16, 4).unwrap().copy_to(&mut payload[..]);
                got.push(u32::from_le_bytes(payload));
                ty.compare_exchange(t, 0, Ordering::SeqCst, Ordering::SeqCst)
                    .unwrap();
                if flags.load(Ordering::SeqCst) & 1 != 0 {
                    hv.msr_write(0, m::EOM, 0).unwrap();
                }
                received.fetch_add(1, Ordering::SeqCst);
            }
            got
        })
    };
    let mut stranded = false;
    'outer: for b in 0..BURSTS {
        for i in 0..BURST {
            hv.post_message(0, 2, 1, &(b * BURST + i).to_le_bytes())
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::SeqCst) < (b + 1) * BURST {
            if std::time::Instant::now() > deadline {
                stranded = true;
                break 'outer;
            }
            std::thread::yield_now();
        }
    }
    stop.store(true, Ordering::SeqCst);
    let got = consumer.join().unwrap();
    assert!(
        !stranded,
        "a queued message was stranded after {} messages",
        got.len()
    );
    assert_eq!(got, (0..BURSTS * BURST).collect::<Vec<_>>());
    assert_eq!(hv.queued_messages(0), 0);
}

// ---------------------------------------------------------------- guest drivers

/// The `hypercall` crate's own guest drivers, run against this host through
/// the in-process `Platform`: detection, hypercall page, SynIC with the EOM
/// protocol, events, the reference clock and a direct timer.
#[test]
fn hypercall_guest_drivers_work_against_this_host() {
    use hypercall::hv::{ReferenceClock, SintConfig, SynIc, SyntheticTimer, TimerMode};
    let p = part();
    p.hv().install_test_services();
    let vp0 = p.vp(0);
    let hc = hypercall::hv::Hypervisor::init(
        &vp0,
        m::GuestOsId::linux(6, 12, 117),
        p.page(HC_PAGE).unwrap(),
    )
    .unwrap();
    assert!(hc.info().linux_would_accept());
    assert_eq!(hc.vp_index(), 0);
    let synic = SynIc::enable(
        &vp0,
        p.page(SIMP0).unwrap(),
        p.page(SIEFP0).unwrap(),
        &[
            (2, SintConfig::interrupt(VEC)),
            (3, SintConfig::interrupt(VEC)),
        ],
    )
    .unwrap();
    let input = p.page(INPUT).unwrap();
    hc.post_message(
        &input,
        ECHO_CONNECTION_ID,
        MessageType(ECHO_MESSAGE_TYPE),
        &[4, 2, 0x42],
    )
    .unwrap();
    let mut copies = Vec::new();
    while let Some(m) = synic.take_message(2).unwrap() {
        assert_eq!(m.header.message_type, MessageType(ECHO_MESSAGE_TYPE));
        assert_eq!(&m.payload()[1..], &[2, 0x42]);
        copies.push(m.payload()[0]);
    }
    assert_eq!(copies, vec![1, 2, 3, 4]);
    assert_eq!(p.hv().stats().messages_redelivered_on_eom, 3);
    // Errors come back as statuses.
    assert!(hc
        .post_message(&input, 0x999, MessageType(1), b"x")
        .is_err());
    // Events, fast and slow.
    hc.signal_event(EVENT_CONNECTION_ID, 7).unwrap();
    hc.signal_event_slow(&input, EVENT_CONNECTION_ID, 1000)
        .unwrap();
    let mut flags = Vec::new();
    synic.take_events(3, |f| flags.push(f)).unwrap();
    assert_eq!(flags, vec![7, 1000]);
    // Reference clock: page and MSR agree.
    let fake = p.fake_tsc().unwrap();
    fake.advance(123_456_789);
    let clock = ReferenceClock::with_tsc_page(&vp0, p.page(TSC_PAGE).unwrap());
    assert_eq!(clock.now(), clock.read_msr());
    assert_eq!(clock.now(), p.now());
    // Direct-mode one-shot timer.
    p.interrupts().take();
    let t = SyntheticTimer::new(&vp0, 0).unwrap();
    t.start_one_shot(TimerMode::Direct { vector: 0xED }, clock.now() + 50)
        .unwrap();
    p.advance_ref(49);
    assert!(p.interrupts().raised().is_empty());
    p.advance_ref(1);
    assert_eq!(p.interrupts().raised(), vec![(0, 0xED)]);
    assert!(vp0.faults().is_empty(), "{:?}", vp0.faults());
    // A call through a page without the trampoline is not dispatched.
    let other = hypercall::hv::Hypervisor::attach(&vp0, *hc.info(), p.page(0x9000).unwrap());
    assert!(other.signal_event(EVENT_CONNECTION_ID, 1).is_err());
    assert_eq!(vp0.faults(), vec![(0, None)]);
}

// ---------------------------------------------------------------- hostile guests

mod hostile {
    use super::*;
    use proptest::prelude::*;

    /// MSRs worth hitting: all of ours plus neighbours.
    fn msr_strategy() -> impl Strategy<Value = u32> {
        prop_oneof![
            0x4000_0000u32..=0x4000_0200,
            prop::sample::select(vec![
                m::GUEST_OS_ID,
                m::HYPERCALL,
                m::REFERENCE_TSC,
                m::SCONTROL,
                m::SIMP,
                m::SIEFP,
                m::EOM,
                m::SINT0 + 2,
                m::STIMER0_CONFIG,
                m::STIMER0_COUNT,
                m::CRASH_CTL,
                m::CRASH_P3,
                m::CRASH_P4,
            ]),
            any::<u32>(),
        ]
    }

    fn value_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..(RAM as u64 * 2)).prop_map(|v| v | 1),
            Just(u64::MAX),
            Just(0u64),
            (0u64..0x1_0000),
        ]
    }

    fn rcx_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (
                any::<u64>(),
                prop::sample::select(vec![0x5Cu64, 0x5D, 0x1005D])
            )
                .prop_map(|(r, c)| (r & !0xFFFF_FFFF) | c),
            prop::sample::select(vec![0x5Cu64, 0x5D, 0x1005D]),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Wrmsr(u32, u32, u64),
        Rdmsr(u32, u32),
        Hypercall(u32, u64, u64, u64),
        Advance(u16),
        Poke(u64, Vec<u8>),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, msr_strategy(), value_strategy()).prop_map(|(v, m, x)| Op::Wrmsr(v, m, x)),
            (0u32..4, msr_strategy()).prop_map(|(v, m)| Op::Rdmsr(v, m)),
            (0u32..4, rcx_strategy(), value_strategy(), any::<u64>())
                .prop_map(|(v, c, d, r)| Op::Hypercall(v, c, d, r)),
            any::<u16>().prop_map(Op::Advance),
            (
                (0u64..RAM as u64 - 64),
                prop::collection::vec(any::<u8>(), 1..64)
            )
                .prop_map(|(g, b)| Op::Poke(g, b)),
        ]
    }

    const ALLOWED: [HvStatus; 8] = [
        HvStatus::SUCCESS,
        HvStatus::INVALID_HYPERCALL_CODE,
        HvStatus::INVALID_HYPERCALL_INPUT,
        HvStatus::INVALID_ALIGNMENT,
        HvStatus::INVALID_PARAMETER,
        HvStatus::ACCESS_DENIED,
        HvStatus::INVALID_CONNECTION_ID,
        HvStatus::INSUFFICIENT_BUFFERS,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_guest_activity_never_panics(ops in prop::collection::vec(op_strategy(), 1..80)) {
            let p = ready();
            p.enable_synic(1, SIMP1, SIEFP1).unwrap();
            for op in ops {
                match op {
                    Op::Wrmsr(vp, msr, v) => {
                        let r = p.wrmsr(vp, msr, v);
                        if vp >= 2 {
                            prop_assert_eq!(r, Err(MsrFault::InvalidVp(vp)));
                        }
                        if !Hypervisor::is_hv_msr(msr) {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Rdmsr(vp, msr) => {
                        let r = p.rdmsr(vp, msr);
                        if msr == m::VP_INDEX && vp < 2 {
                            prop_assert_eq!(r, Ok(u64::from(vp)));
                        }
                    }
                    Op::Hypercall(vp, rcx, rdx, r8) => {
                        let rax = p.hypercall(vp, rcx, rdx, r8);
                        let r = HypercallResult::from_bits(rax);
                        prop_assert!(
                            ALLOWED.contains(&r.status()) || (vp >= 2 && r.status() == HvStatus::INVALID_VP_INDEX),
                            "status {:?}", r.status()
                        );
                        prop_assert_eq!(r.reps_completed(), 0);
                        let code = Control::from_bits(rcx).call_code();
                        if code != CallCode::POST_MESSAGE && code != CallCode::SIGNAL_EVENT && vp < 2 {
                            prop_assert_eq!(r.status(), HvStatus::INVALID_HYPERCALL_CODE);
                        }
                    }
                    Op::Advance(t) => p.advance_ref(u64::from(t)),
                    Op::Poke(gpa, bytes) => p.write_bytes(gpa, &bytes).unwrap(),
                }
            }
            // Still answering sanely afterwards.
            prop_assert_eq!(p.rdmsr(1, m::VP_INDEX), Ok(1));
            prop_assert!(p.hv().queued_messages(0) <= SINT_COUNT * (MAX_QUEUED_PER_SINT + 1));
            let _ = serde_json::to_string(&p.hv().stats()).unwrap();
        }

        #[test]
        fn message_slots_respect_the_guest_protocol(copies in 1u8..=8, rounds in 1usize..4) {
            let p = ready();
            for _ in 0..rounds {
                prop_assert_eq!(
                    p.post_message(0, INPUT, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &[copies, 2, 0xEE]),
                    HvStatus::SUCCESS
                );
                let mut got = Vec::new();
                while let Some(m) = p.complete_message(0, SIMP0, 2).unwrap() {
                    got.push(m.payload()[0]);
                }
                prop_assert_eq!(got, (1..=copies).collect::<Vec<_>>());
                prop_assert_eq!(p.hv().queued_messages(0), 0);
            }
        }
    }
}
