//! Driver sequences checked against the scripted platform.

extern crate std;

use super::*;
use crate::abi::{HvStatus, HypercallResult};
use crate::cpuid::{LEAF_STANDARD_FEATURES, LEAF_VENDOR};
use crate::msr::{CrashCtl, Sint, StimerConfig};
use crate::page::Page;
use crate::synic::{slot_offset, HvMessage, TimerMessagePayload};
use crate::testing::{default_info, Access, ScriptedPlatform};
use crate::tsc::{scale_for_frequency, ReferenceTscPage};
use proptest::prelude::*;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

const OS_ID: GuestOsId = GuestOsId::linux(6, 12, 117);
const HC_GPA: u64 = 0x10_0000;
const IN_GPA: u64 = 0x10_1000;
const OUT_GPA: u64 = 0x10_2000;

fn page_at(page: &Page, gpa: u64) -> PageRef<'_> {
    PageRef::new(page.words(), gpa).unwrap()
}

fn init<'a>(p: &'a ScriptedPlatform, page: &'a Page) -> Hypervisor<'a, ScriptedPlatform> {
    let hv = Hypervisor::init(p, OS_ID, page_at(page, HC_GPA)).unwrap();
    p.take_log();
    hv
}

fn writes_to(p: &ScriptedPlatform, m: u32) -> Vec<u64> {
    p.msr_writes()
        .into_iter()
        .filter(|&(n, _)| n == m)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn init_sequence() {
    let p = ScriptedPlatform::default();
    // Reserved bits of HYPERCALL must survive the read-modify-write.
    p.set_msr(msr::HYPERCALL, 0xFFC);
    let page = Page::new();
    let hv = Hypervisor::init(&p, OS_ID, page_at(&page, HC_GPA)).unwrap();
    assert_eq!(*hv.info(), default_info());
    let log = p.log();
    // Detection first (CPUID only), then exactly: GUEST_OS_ID, read HYPERCALL, write it, read back.
    assert_eq!(
        log[0],
        Access::Cpuid {
            leaf: LEAF_STANDARD_FEATURES,
            subleaf: 0
        }
    );
    assert_eq!(
        log[1],
        Access::Cpuid {
            leaf: LEAF_VENDOR,
            subleaf: 0
        }
    );
    let first_msr = log
        .iter()
        .position(|a| !matches!(a, Access::Cpuid { .. }))
        .unwrap();
    assert_eq!(
        &log[first_msr..],
        &[
            Access::Wrmsr {
                msr: msr::GUEST_OS_ID,
                value: 0x8100_0006_0C75_0000
            },
            Access::Rdmsr {
                msr: msr::HYPERCALL,
                value: 0xFFC
            },
            Access::Wrmsr {
                msr: msr::HYPERCALL,
                value: HC_GPA | 0xFFC | 1
            },
            Access::Rdmsr {
                msr: msr::HYPERCALL,
                value: HC_GPA | 0xFFC | 1
            },
        ]
    );
}

#[test]
fn init_failures() {
    let page = Page::new();
    let hc = page_at(&page, HC_GPA);
    let p = ScriptedPlatform::bare();
    assert_eq!(
        Hypervisor::init(&p, OS_ID, hc).err(),
        Some(Error::Detect(crate::cpuid::DetectError::NoHypervisor))
    );
    assert!(p.msr_writes().is_empty());

    let mut info = default_info();
    info.privileges.set_access_hypercall_msrs(false);
    let p = ScriptedPlatform::hyperv(info);
    assert_eq!(
        Hypervisor::init(&p, OS_ID, hc).err(),
        Some(Error::MissingPrivilege("AccessHypercallMsrs"))
    );
    assert!(p.msr_writes().is_empty());

    let p = ScriptedPlatform::default();
    assert_eq!(
        Hypervisor::init(&p, GuestOsId::new(), hc).err(),
        Some(Error::ZeroGuestOsId)
    );
    assert!(p.msr_writes().is_empty());

    let p = ScriptedPlatform::default();
    p.set_msr(msr::HYPERCALL, 0x5000 | 3);
    assert_eq!(
        Hypervisor::init(&p, OS_ID, hc).err(),
        Some(Error::HypercallLocked { gpa: 0x5000 })
    );
    assert_eq!(writes_to(&p, msr::HYPERCALL), vec![]);

    // A host that ignores the enable.
    let p = ScriptedPlatform::default();
    p.set_read_only(msr::HYPERCALL);
    assert_eq!(
        Hypervisor::init(&p, OS_ID, hc).err(),
        Some(Error::HypercallPageNotEnabled { readback: 0 })
    );
}

#[test]
fn disable_sequence() {
    let p = ScriptedPlatform::default();
    let page = Page::new();
    let hv = init(&p, &page);
    hv.disable();
    assert_eq!(
        p.msr_writes(),
        vec![(msr::HYPERCALL, HC_GPA), (msr::GUEST_OS_ID, 0)]
    );
    assert_eq!(p.msr(msr::HYPERCALL), HC_GPA);
}

#[test]
fn slow_and_fast_calls() {
    let p = ScriptedPlatform::default();
    let (hc, inp, out) = (Page::new(), Page::new(), Page::new());
    let hv = init(&p, &hc);
    let (inp, out) = (page_at(&inp, IN_GPA), page_at(&out, OUT_GPA));
    hv.slow(CallCode::GET_PARTITION_ID, None, Some(&out))
        .unwrap();
    p.push_hypercall_result(HypercallResult::with(HvStatus::ACCESS_DENIED, 0));
    assert_eq!(
        hv.slow(CallCode(0x99), Some(&inp), None),
        Err(Error::Status(HvStatus::ACCESS_DENIED))
    );
    hv.fast(CallCode::SEND_SYNTHETIC_CLUSTER_IPI, 0xF3, 0b11)
        .unwrap();
    let calls = p.hypercalls();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.page_gpa == HC_GPA));
    assert_eq!(
        (calls[0].control.into_bits(), calls[0].rdx, calls[0].r8),
        (0x46, 0, OUT_GPA)
    );
    assert_eq!(
        (calls[1].control.into_bits(), calls[1].rdx, calls[1].r8),
        (0x99, IN_GPA, 0)
    );
    assert_eq!(
        (calls[2].control.into_bits(), calls[2].rdx, calls[2].r8),
        (0x1_000B, 0xF3, 0b11)
    );
}

#[test]
fn rep_call_resumes() {
    let p = ScriptedPlatform::default();
    let (hc, inp) = (Page::new(), Page::new());
    let hv = init(&p, &hc);
    let inp = page_at(&inp, IN_GPA);
    for done in [3, 7, 10] {
        p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, done));
    }
    hv.rep(
        CallCode::FLUSH_VIRTUAL_ADDRESS_LIST,
        10,
        0,
        Some(&inp),
        None,
    )
    .unwrap();
    let calls = p.hypercalls();
    let starts: Vec<u16> = calls.iter().map(|c| c.control.rep_start()).collect();
    assert_eq!(starts, vec![0, 3, 7]);
    for c in &calls {
        assert_eq!(c.control.call_code(), CallCode::FLUSH_VIRTUAL_ADDRESS_LIST);
        assert_eq!(c.control.rep_count(), 10);
        assert!(!c.control.fast());
        assert_eq!(c.rdx, IN_GPA);
    }
    assert_eq!(calls[1].control.into_bits(), 0x0003_000A_0000_0003);
}

#[test]
fn rep_call_errors() {
    let p = ScriptedPlatform::default();
    let hc = Page::new();
    let hv = init(&p, &hc);
    let code = CallCode::GET_VP_REGISTERS;
    assert_eq!(
        hv.rep(code, 0, 0, None, None),
        Err(Error::InvalidRepCount(0))
    );
    assert_eq!(
        hv.rep(code, 4096, 0, None, None),
        Err(Error::InvalidRepCount(4096))
    );
    assert_eq!(
        hv.rep(code, 1, 1024, None, None),
        Err(Error::InvalidRepCount(1024))
    );
    assert!(p.hypercalls().is_empty());

    p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, 2));
    p.push_hypercall_result(HypercallResult::with(HvStatus::INVALID_PARAMETER, 4));
    assert_eq!(
        hv.rep(code, 8, 2, None, None),
        Err(Error::Rep {
            status: HvStatus::INVALID_PARAMETER,
            completed: 4
        })
    );
    assert_eq!(p.take_log().len(), 2);

    // A host that claims success without progress, or more reps than asked.
    p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, 2));
    p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, 2));
    assert_eq!(
        hv.rep(code, 8, 0, None, None),
        Err(Error::RepNoProgress {
            start: 2,
            completed: 2
        })
    );
    p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, 9));
    assert_eq!(
        hv.rep(code, 8, 0, None, None),
        Err(Error::RepNoProgress {
            start: 0,
            completed: 9
        })
    );
    let c = p.hypercalls().last().copied().unwrap();
    assert_eq!(c.control.variable_header_size(), 0);
}

proptest! {
    #[test]
    fn rep_restart_indices(count in 1u16..=4095, cuts in proptest::collection::vec(1u16..4095, 0..8)) {
        let p = ScriptedPlatform::default();
        let hc = Page::new();
        let hv = init(&p, &hc);
        let mut cuts: Vec<u16> = cuts.into_iter().filter(|&c| c < count).collect();
        cuts.sort_unstable();
        cuts.dedup();
        for &c in &cuts {
            p.push_hypercall_result(HypercallResult::with(HvStatus::SUCCESS, c));
        }
        hv.rep(CallCode::GET_VP_REGISTERS, count, 0, None, None).unwrap();
        let starts: Vec<u16> = p.hypercalls().iter().map(|c| c.control.rep_start()).collect();
        let mut expected = vec![0];
        expected.extend(&cuts);
        prop_assert_eq!(starts, expected);
    }
}

#[test]
fn post_message() {
    let p = ScriptedPlatform::default();
    let (hc, inp) = (Page::new(), Page::new());
    let hv = init(&p, &hc);
    let inp = page_at(&inp, IN_GPA);
    let payload: Vec<u8> = (1..=40).collect();
    hv.post_message(&inp, 4, MessageType::VMBUS, &payload)
        .unwrap();
    let c = p.hypercalls()[0];
    assert_eq!((c.control.into_bits(), c.rdx, c.r8), (0x5C, IN_GPA, 0));
    let mut block = [0u8; 256];
    inp.read_bytes(0, &mut block);
    let expected = PostMessageInput::new(4, MessageType::VMBUS, &payload).unwrap();
    assert_eq!(&block[..], expected.as_bytes());

    // Too large: typed error, nothing written, no call.
    p.take_log();
    inp.zero();
    assert_eq!(
        hv.post_message(&inp, 4, MessageType::VMBUS, &[0; 241]),
        Err(Error::PayloadTooLarge(PayloadTooLarge { len: 241 }))
    );
    assert!(p.log().is_empty());
    assert_eq!(inp.load_u64(0), 0);

    p.push_hypercall_result(HypercallResult::with(HvStatus::INSUFFICIENT_BUFFERS, 0));
    assert_eq!(
        hv.post_message(&inp, 4, MessageType::VMBUS, &[1]),
        Err(Error::Status(HvStatus::INSUFFICIENT_BUFFERS))
    );
}

#[test]
fn signal_event() {
    let p = ScriptedPlatform::default();
    let (hc, inp) = (Page::new(), Page::new());
    let hv = init(&p, &hc);
    hv.signal_event(0x2A, 5).unwrap();
    let c = p.hypercalls()[0];
    // fact sheet §3.6: RCX = 0x1005D, RDX = connection id | flag << 32.
    assert_eq!(
        (c.control.into_bits(), c.rdx, c.r8),
        (0x1_005D, 0x5_0000_002A, 0)
    );
    let inp = page_at(&inp, IN_GPA);
    hv.signal_event_slow(&inp, 0x2A, 5).unwrap();
    let c = p.hypercalls()[1];
    assert_eq!((c.control.into_bits(), c.rdx), (0x5D, IN_GPA));
    assert_eq!(inp.load_u64(0), 0x5_0000_002A);
}

const SIMP_GPA: u64 = 0x20_0000;
const SIEFP_GPA: u64 = 0x20_1000;

fn synic<'a>(
    p: &'a ScriptedPlatform,
    simp: &'a Page,
    siefp: &'a Page,
) -> SynIc<'a, ScriptedPlatform> {
    let s = SynIc::enable(
        p,
        page_at(simp, SIMP_GPA),
        page_at(siefp, SIEFP_GPA),
        &[(2, SintConfig::interrupt(0xF3))],
    )
    .unwrap();
    p.take_log();
    s
}

#[test]
fn synic_enable_sequence() {
    let p = ScriptedPlatform::default();
    p.set_msr(msr::SIMP, 0x10); // a reserved bit to keep
    p.set_msr(msr::sint(2), 0x1_0000 | 1 << 40);
    p.set_msr(msr::SCONTROL, 0x100);
    let (simp, siefp) = (Page::new(), Page::new());
    SynIc::enable(
        &p,
        page_at(&simp, SIMP_GPA),
        page_at(&siefp, SIEFP_GPA),
        &[
            (2, SintConfig::interrupt(0xF3)),
            (5, SintConfig::polled(0x40).with_auto_eoi(true)),
        ],
    )
    .unwrap();
    // fact sheet §2.3 step 5: SIMP, SIEFP, SINT2, SCONTROL in that order (plus SINT5 here).
    assert_eq!(
        p.msr_writes(),
        vec![
            (msr::SIMP, SIMP_GPA | 0x10 | 1),
            (msr::SIEFP, SIEFP_GPA | 1),
            (msr::sint(2), 0xF3 | 1 << 40),
            (
                msr::sint(5),
                Sint::new()
                    .with_vector(0x40)
                    .with_polling(true)
                    .with_auto_eoi(true)
                    .into_bits()
            ),
            (msr::SCONTROL, 0x101),
        ]
    );
    // Each write is a read-modify-write.
    let log = p.log();
    assert_eq!(
        log[0],
        Access::Rdmsr {
            msr: msr::SIMP,
            value: 0x10
        }
    );

    // Validation happens before any write.
    let p = ScriptedPlatform::default();
    let bad = SynIc::enable(
        &p,
        page_at(&simp, SIMP_GPA),
        page_at(&siefp, SIEFP_GPA),
        &[
            (2, SintConfig::interrupt(0xF3)),
            (16, SintConfig::interrupt(0xF3)),
        ],
    );
    assert_eq!(bad.err(), Some(Error::InvalidSint(16)));
    let bad = SynIc::enable(
        &p,
        page_at(&simp, SIMP_GPA),
        page_at(&siefp, SIEFP_GPA),
        &[(2, SintConfig::interrupt(15))],
    );
    assert_eq!(bad.err(), Some(Error::InvalidVector(15)));
    assert!(p.log().is_empty());
}

#[test]
fn synic_configure_and_disable() {
    let p = ScriptedPlatform::default();
    let (simp, siefp) = (Page::new(), Page::new());
    let s = synic(&p, &simp, &siefp);
    s.configure_sint(3, SintConfig::interrupt(0x50)).unwrap();
    s.mask_sint(2).unwrap();
    assert_eq!(s.sint(2).unwrap().into_bits(), 0x1_00F3);
    assert_eq!(
        s.configure_sint(3, SintConfig::masked(3)),
        Err(Error::InvalidVector(3))
    );
    assert_eq!(s.mask_sint(16), Err(Error::InvalidSint(16)));
    p.take_log();
    s.disable();
    assert_eq!(
        p.msr_writes(),
        vec![
            (msr::SIMP, SIMP_GPA),
            (msr::SIEFP, SIEFP_GPA),
            (msr::SCONTROL, 0)
        ]
    );
}

fn post(simp: &Page, sint: u8, msg: &HvMessage) {
    PageRef::identity_mapped(simp).write_bytes(slot_offset(sint), msg.as_bytes());
}

#[test]
fn take_message_eom_protocol() {
    let p = ScriptedPlatform::default();
    let (simp, siefp) = (Page::new(), Page::new());
    let s = synic(&p, &simp, &siefp);
    assert_eq!(s.take_message(2).unwrap(), None);
    assert_eq!(s.poll(2).unwrap(), MessageType::NONE);

    // No MessagePending: the slot is freed, no EOM.
    let mut m = HvMessage::new(MessageType::VMBUS, b"hello").unwrap();
    m.header.origination_id = 7;
    post(&simp, 2, &m);
    assert_eq!(s.poll(2).unwrap(), MessageType::VMBUS);
    assert_eq!(s.take_message(2).unwrap(), Some(m));
    assert_eq!(s.poll(2).unwrap(), MessageType::NONE);
    // Only the type is cleared; the rest of the slot is left as it was.
    assert_eq!(s.simp().load_u64(slot_offset(2)), 5 << 32);
    assert!(p.msr_writes().is_empty());
    assert!(p.log().is_empty(), "polling and consuming touch no MSR");

    // MessagePending: EOM after the slot is freed.
    m.header.message_flags.set_message_pending(true);
    post(&simp, 2, &m);
    let got = s.take_message(2).unwrap().unwrap();
    assert!(got.header.message_flags.message_pending());
    assert_eq!(got.payload(), b"hello");
    assert_eq!(p.msr_writes(), vec![(msr::EOM, 0)]);

    // Other slots are independent.
    let t = TimerMessagePayload {
        timer_index: 0,
        reserved: 0,
        expiration_time: 10,
        delivery_time: 11,
    };
    post(
        &simp,
        0,
        &HvMessage::new(MessageType::TIMER_EXPIRED, t.as_bytes()).unwrap(),
    );
    assert_eq!(s.poll(2).unwrap(), MessageType::NONE);
    assert_eq!(s.take_message(0).unwrap().unwrap().timer_payload(), Some(t));
    assert_eq!(s.take_message(16), Err(Error::InvalidSint(16)));
}

#[test]
fn event_flags() {
    let p = ScriptedPlatform::default();
    let (simp, siefp) = (Page::new(), Page::new());
    let s = synic(&p, &simp, &siefp);
    let raw = PageRef::identity_mapped(&siefp);
    // Flag k of SINT2 is bit k%8 of byte 512 + k/8 (fact sheet §4.2).
    raw.write_bytes(512, &[0b10, 0, 0, 0, 0, 0, 0, 0, 0b1]); // flags 1 and 64
    raw.write_bytes(512 + 255, &[0x80]); // flag 2047
    raw.write_bytes(256, &[1]); // SINT1 flag 0: must not be seen
    assert_eq!(s.event_pending(2, 1), Ok(true));
    assert_eq!(s.test_and_clear_event(2, 1), Ok(true));
    assert_eq!(s.test_and_clear_event(2, 1), Ok(false));
    let mut seen = Vec::new();
    assert_eq!(s.take_events(2, |f| seen.push(f)), Ok(2));
    assert_eq!(seen, vec![64, 2047]);
    assert_eq!(s.take_events(2, |_| panic!()), Ok(0));
    assert_eq!(s.event_pending(1, 0), Ok(true));
    assert_eq!(
        s.test_and_clear_event(2, 2048),
        Err(Error::InvalidEventFlag(2048))
    );
    assert!(p.log().is_empty());
}

#[test]
fn reference_clock() {
    let p = ScriptedPlatform::default();
    p.set_msr(msr::REFERENCE_TSC, 0x20); // reserved bit kept
    p.set_msr(msr::TIME_REF_COUNT, 4242);
    let page = Page::new();
    let r = page_at(&page, 0x30_0000);
    let mut clock = ReferenceClock::with_tsc_page(&p, r);
    assert_eq!(
        p.msr_writes(),
        vec![(msr::REFERENCE_TSC, 0x30_0000 | 0x20 | 1)]
    );
    p.take_log();
    // Sequence 0: fallback to the MSR, no TSC read.
    assert_eq!(clock.now(), 4242);
    assert_eq!(
        p.take_log(),
        vec![Access::Rdmsr {
            msr: msr::TIME_REF_COUNT,
            value: 4242
        }]
    );
    // A valid page: 2.5 GHz, offset 100, TSC at 1 s -> 10^7 - 1 + 100 ticks.
    let tp = ReferenceTscPage {
        tsc_sequence: 1,
        tsc_scale: scale_for_frequency(2_500_000_000),
        tsc_offset: 100,
        ..Default::default()
    };
    r.write_bytes(0, tp.as_bytes());
    p.set_tsc(2_500_000_000, 0);
    assert_eq!(clock.now(), 10_000_099);
    assert_eq!(p.take_log(), vec![Access::Rdtsc(2_500_000_000)]);
    clock.disable_tsc_page();
    assert_eq!(p.msr_writes(), vec![(msr::REFERENCE_TSC, 0x30_0000 | 0x20)]);
    assert_eq!(clock.now(), 4242);
    assert_eq!(ReferenceClock::msr_only(&p).now(), 4242);
}

#[test]
fn synthetic_timers() {
    let p = ScriptedPlatform::default();
    let t0 = SyntheticTimer::new(&p, 0).unwrap();
    t0.start_one_shot(TimerMode::Direct { vector: 0xED }, 1000)
        .unwrap();
    // fact sheet §2.2: direct mode 0x1ED9, then COUNT.
    assert_eq!(
        p.msr_writes(),
        vec![(0x4000_00B0, 0x1ED9), (0x4000_00B1, 1000)]
    );
    p.take_log();
    let t3 = SyntheticTimer::new(&p, 3).unwrap();
    t3.start_one_shot(TimerMode::Message { sint: 2 }, 5)
        .unwrap();
    // fact sheet §2.2: message mode on SINT2 0x20009.
    assert_eq!(
        p.msr_writes(),
        vec![(0x4000_00B6, 0x20009), (0x4000_00B7, 5)]
    );
    p.take_log();
    t3.start_periodic(TimerMode::Message { sint: 1 }, 10_000)
        .unwrap();
    let cfg = StimerConfig::from_bits(p.msr_writes()[0].1);
    assert!(cfg.periodic() && cfg.enable() && !cfg.direct_mode());
    assert_eq!(cfg.sintx(), 1);
    assert_eq!(t3.count(), 10_000);
    assert_eq!(t3.config(), cfg);
    p.take_log();
    t0.rearm(2000).unwrap();
    t0.stop();
    assert_eq!(
        p.msr_writes(),
        vec![(0x4000_00B1, 2000), (0x4000_00B1, 0), (0x4000_00B0, 0)]
    );
    p.take_log();
    assert_eq!(
        SyntheticTimer::new(&p, 4).err(),
        Some(Error::InvalidTimer(4))
    );
    assert_eq!(
        t0.start_one_shot(TimerMode::Direct { vector: 2 }, 1),
        Err(Error::InvalidVector(2))
    );
    assert_eq!(
        t0.start_one_shot(TimerMode::Message { sint: 16 }, 1),
        Err(Error::InvalidSint(16))
    );
    assert_eq!(
        t0.start_one_shot(TimerMode::Direct { vector: 0xED }, 0),
        Err(Error::ZeroTimerCount)
    );
    assert_eq!(t0.rearm(0), Err(Error::ZeroTimerCount));
    assert!(p.msr_writes().is_empty());
}

#[test]
fn crash_capabilities_read() {
    let p = ScriptedPlatform::default();
    p.set_msr(msr::CRASH_CTL, (1 << 63) | (1 << 62));
    let caps = crash_capabilities(&p);
    assert!(caps.crash_message() && caps.crash_notify() && !caps.no_crash_dump());
    assert_eq!(
        p.log(),
        vec![Access::Rdmsr {
            msr: msr::CRASH_CTL,
            value: (1 << 63) | (1 << 62)
        }]
    );
}

#[test]
fn crash_report_sequence() {
    let p = ScriptedPlatform::default();
    report_crash(&p, [1, 2, 3, 4, 5]);
    assert_eq!(
        p.msr_writes(),
        vec![
            (0x4000_0100, 1),
            (0x4000_0101, 2),
            (0x4000_0102, 3),
            (0x4000_0103, 4),
            (0x4000_0104, 5),
            (
                msr::CRASH_CTL,
                CrashCtl::new().with_crash_notify(true).into_bits()
            ),
        ]
    );
    p.take_log();
    let page = Page::new();
    let r = page_at(&page, 0x40_0000);
    report_crash_message(&p, &r, b"kernel panic").unwrap();
    assert_eq!(
        p.msr_writes(),
        vec![
            (0x4000_0100, 0),
            (0x4000_0101, 0),
            (0x4000_0102, 0),
            (0x4000_0103, 0x40_0000),
            (0x4000_0104, 12),
            (msr::CRASH_CTL, (1 << 63) | (1 << 62)),
        ]
    );
    let mut text = [0u8; 12];
    r.read_bytes(0, &mut text);
    assert_eq!(&text, b"kernel panic");
    p.take_log();
    assert_eq!(
        report_crash_message(&p, &r, &[0; 4097]),
        Err(Error::CrashMessageTooLong(4097))
    );
    assert!(p.log().is_empty());
}

#[test]
fn handler_sees_calls() {
    let p = ScriptedPlatform::default();
    let hc = Page::new();
    let hv = init(&p, &hc);
    let seen = Rc::new(core::cell::Cell::new(0u64));
    let s2 = seen.clone();
    p.on_hypercall(move |c| {
        s2.set(c.rdx);
        HypercallResult::with(HvStatus::INVALID_CONNECTION_ID, 0)
    });
    assert_eq!(
        hv.signal_event(9, 0),
        Err(Error::Status(HvStatus::INVALID_CONNECTION_ID))
    );
    assert_eq!(seen.get(), 9);
    assert_eq!(
        p.hypercalls()[0].result.status(),
        HvStatus::INVALID_CONNECTION_ID
    );
}

/// A platform whose only job is counting EOM writes, shareable across threads.
struct EomCounter(std::sync::atomic::AtomicU64);

impl Platform for EomCounter {
    fn cpuid(&self, _: u32, _: u32) -> crate::cpuid::CpuidResult {
        unreachable!("not used by the message path")
    }
    fn rdmsr(&self, _: u32) -> u64 {
        unreachable!("not used by the message path")
    }
    fn wrmsr(&self, m: u32, _: u64) {
        assert_eq!(m, msr::EOM);
        self.0.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    }
    fn rdtsc(&self) -> u64 {
        unreachable!("not used by the message path")
    }
    fn hypercall(&self, _: &PageRef<'_>, _: u64, _: u64, _: u64) -> u64 {
        unreachable!("not used by the message path")
    }
}

// A host thread delivers messages into SINT2's slot following the delivery rules (fact sheet
// §4.3: only into an empty slot; if busy, set MessagePending atomically and wait for EOM) while
// the guest consumes them. Every message must arrive once, in order, untorn, and the pending flag
// set concurrently must never be lost (the host would wait forever). A stress test: a driver that
// clears the type with a plain store instead of the compare-exchange loop fails it only some of
// the time (the window is a few loads wide), a correct one never does.
#[test]
fn take_message_races_with_host() {
    use core::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    const N: u32 = 20_000;
    let simp = Page::new();
    let slot = slot_offset(2);
    let platform = EomCounter(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    std::thread::scope(|scope| {
        let host_page = PageRef::identity_mapped(&simp);
        let eoms = &platform.0;
        scope.spawn(move || {
            for i in 1..=N {
                loop {
                    assert!(Instant::now() < deadline, "host stuck at message {i}");
                    let word = host_page.load_u64(slot);
                    if word as u32 == 0 {
                        // Body first, then the header qword with the type (release).
                        let body = [i as u8; 240];
                        host_page.write_bytes(slot + 16, &body);
                        host_page.store_u64(slot + 8, i as u64);
                        host_page.store_u64(slot, 0x1 | 240 << 32);
                        break;
                    }
                    let seen = eoms.load(Ordering::SeqCst);
                    if host_page
                        .compare_exchange_u64(slot, word, word | 1 << 40)
                        .is_ok()
                    {
                        while eoms.load(Ordering::SeqCst) == seen {
                            assert!(Instant::now() < deadline, "EOM never came for {i}");
                            std::thread::yield_now();
                        }
                    }
                }
            }
        });
        let s = SynIc::attach(
            &platform,
            PageRef::identity_mapped(&simp),
            PageRef::identity_mapped(&simp),
        );
        let mut next = 1u32;
        while next <= N {
            assert!(Instant::now() < deadline, "guest stuck at message {next}");
            match s.take_message(2).unwrap() {
                None => std::thread::yield_now(),
                Some(m) => {
                    assert_eq!(m.header.origination_id, next as u64);
                    assert!(m.payload().iter().all(|&b| b == next as u8));
                    next += 1;
                }
            }
        }
    });
}
