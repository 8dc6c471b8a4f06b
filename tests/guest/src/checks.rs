//! The checks. Each one drives the `hypercall` crate's drivers end to end
//! against the host and prints one `hvkit-check:` line with what it measured.
//!
//! Host side (docs/ARCHITECTURE.md, "Host test services"):
//! - echo message connection [`ECHO_CONNECTION_ID`]: payload byte 0 = copies
//!   N (1..=8), byte 1 = reply SINT; the host posts N messages of type
//!   [`ECHO_MESSAGE_TYPE`] back to the posting VP on that SINT, copy k with
//!   byte 0 = k, the 2nd..Nth queued behind the first (MessagePending/EOM);
//! - event connection [`EVENT_CONNECTION_ID`]: HvSignalEvent flag F sets
//!   flag F of SINT [`EVENT_SINT`] in the poster's SIEF page and raises it.

use hypercall::abi::{CallCode, Control, HvStatus};
use hypercall::cpuid::{self, HvCpuidInfo};
use hypercall::hv::{
    Error, Hypervisor, ReferenceClock, SintConfig, SynIc, SyntheticTimer, TimerMode,
};
use hypercall::msr::{self, GuestOsId, ReferenceTscMsr};
use hypercall::platform::Platform;
use hypercall::synic::{HvMessage, MessageType};
use hypercall::tsc;

use crate::irq;
use crate::pages;

/// Echo message service connection id (host test services).
pub const ECHO_CONNECTION_ID: u32 = 0x7E57;
/// Message type of echo replies.
pub const ECHO_MESSAGE_TYPE: MessageType = MessageType(0x7E57);
/// Event loopback connection id (host test services).
pub const EVENT_CONNECTION_ID: u32 = 0x7E58;
/// SINT whose event flags the event loopback sets (fixed by the host).
pub const EVENT_SINT: u8 = 3;
/// SINT we ask the echo service to reply on.
pub const ECHO_SINT: u8 = 2;
/// SINT for synthetic timer messages.
pub const TIMER_SINT: u8 = 1;
/// A connection id nobody registered.
const BOGUS_CONNECTION_ID: u32 = 0x00BA_D0C0;

/// The identity we write: open source, OS type 0 (not one of the TLFS
/// table's Linux/FreeBSD/Xen/Illumos), version 0.1.0 of hvkit, build "hv".
pub const GUEST_OS_ID: GuestOsId = GuestOsId::open_source_id(0, 0x00_01_00, 0x6876);

/// Watchdog ticks (10 ms) to wait for an interrupt that should come at once.
const PROMPT_TICKS: u64 = 200;

fn sint_vector(sint: u8) -> u8 {
    irq::SINT_VECTOR_BASE + sint
}

/// `cpuid-detect`: CPUID.1:ECX[31], "Microsoft Hv", "Hv#1", leaf range, and
/// the privileges every later check needs.
pub fn cpuid_detect<P: Platform>(p: &P) -> Option<HvCpuidInfo> {
    let info = match cpuid::detect(|l, s| p.cpuid(l, s)) {
        Ok(info) => info,
        Err(e) => {
            check!("cpuid-detect", false, "not detected: {e:?}");
            return None;
        }
    };
    let vendor = core::str::from_utf8(&info.vendor).unwrap_or("?");
    let pr = info.privileges;
    let missing: [(&str, bool); 8] = [
        ("vendor", info.is_microsoft_vendor()),
        ("hv1", info.has_hv1_interface()),
        ("linux-accept", info.linux_would_accept()),
        ("hypercall", info.has_hypercalls()),
        ("synic", info.has_synic()),
        ("stimer", info.has_synthetic_timers()),
        (
            "ref-tsc",
            info.has_reference_tsc() && info.has_reference_counter(),
        ),
        ("freq", info.has_frequency_msrs()),
    ];
    let ok = missing.iter().all(|(_, have)| *have);
    let first_missing = missing
        .iter()
        .find(|(_, have)| !*have)
        .map_or("none", |(n, _)| n);
    check!(
        "cpuid-detect",
        ok,
        "vendor=\"{vendor}\" max_leaf={:#x} interface={:#x} priv_eax={:#x} priv_ebx={:#x} features_edx={:#x} hints={:#x} direct_stimer={} crash_msrs={} missing={first_missing}",
        info.max_leaf,
        info.interface,
        pr.eax(),
        pr.ebx(),
        info.features.into_bits(),
        info.recommendations.into_bits(),
        info.has_direct_timers(),
        info.has_crash_msrs(),
    );
    Some(info)
}

/// `guest-os-id` and `hypercall-page`: the init sequence, then proof that
/// GUEST_OS_ID reads back and that a call through the page reaches the
/// hypervisor (an unknown call code must come back INVALID_HYPERCALL_CODE).
pub fn hypercall_init<P: Platform>(p: &P) -> Option<Hypervisor<'_, P>> {
    let page = pages::hypercall();
    let before = p.rdmsr(msr::HYPERCALL);
    let init = Hypervisor::init(p, GUEST_OS_ID, page);

    let wrote = GUEST_OS_ID.into_bits();
    let read = p.rdmsr(msr::GUEST_OS_ID);
    let back = GuestOsId::from_bits(read);
    check!(
        "guest-os-id",
        read == wrote && back.open_source() && back.os_type() == 0 && back.version() == 0x100,
        "wrote={wrote:#018x} read={read:#018x} open_source={} os_type={} version={:#x} build={:#x}",
        back.open_source(),
        back.os_type(),
        back.version(),
        back.build_number()
    );

    let hv = match init {
        Ok(hv) => hv,
        Err(e) => {
            check!(
                "hypercall-page",
                false,
                "init failed: {e} (HYPERCALL before={before:#x})"
            );
            return None;
        }
    };
    let msr_now = p.rdmsr(msr::HYPERCALL);
    let code = page.load_u64(0).to_le_bytes();
    // An unassigned call code: a working page traps to the hypervisor, which
    // must refuse it; a dead page would return garbage or fault.
    let unknown = hv.call(Control::call(CallCode(0x7FFF)), 0, 0).status();
    let ok = code != [0; 8] && unknown == HvStatus::INVALID_HYPERCALL_CODE;
    check!(
        "hypercall-page",
        ok,
        "gpa={:#x} msr={msr_now:#x} code={:02x?} unknown_call_status={unknown}",
        page.gpa(),
        code
    );
    Some(hv)
}

/// Enables the SynIC with our SINTs; no check line of its own (the synic-*
/// checks fail if it does not work). Returns the SynIC driver.
pub fn synic_enable<'a, P: Platform>(p: &'a P) -> Result<SynIc<'a, P>, Error> {
    let sints = [
        (TIMER_SINT, SintConfig::interrupt(sint_vector(TIMER_SINT))),
        (ECHO_SINT, SintConfig::interrupt(sint_vector(ECHO_SINT))),
        (EVENT_SINT, SintConfig::interrupt(sint_vector(EVENT_SINT))),
    ];
    let simp = pages::simp();
    irq::set_simp(simp.as_ptr() as usize);
    SynIc::enable(p, simp, pages::siefp(), &sints)
}

/// `reference-tsc`: enable the TSC page, check MSR readback and sequence,
/// monotonic reads, agreement with TIME_REF_COUNT, and the rate against RDTSC
/// at the TSC_FREQUENCY rate.
pub fn reference_tsc<'a, P: Platform>(p: &'a P, tsc_hz: u64) -> ReferenceClock<'a, P> {
    let page = pages::tsc();
    let clock = ReferenceClock::with_tsc_page(p, page);
    let m = ReferenceTscMsr::from_bits(p.rdmsr(msr::REFERENCE_TSC));
    let seq = page.load_u32(tsc::OFFSET_SEQUENCE);
    let scale = page.load_u64(tsc::OFFSET_SCALE);
    let offset = page.load_u64(tsc::OFFSET_OFFSET) as i64;
    let msr_ok = m.enable() && m.gpa() == page.gpa();

    // Monotonic: consecutive page reads never go back.
    let mut prev = tsc::reference_time(&page, || p.rdtsc());
    let mut backwards = 0u32;
    let mut invalid = u32::from(prev.is_none());
    for _ in 0..200 {
        let now = tsc::reference_time(&page, || p.rdtsc());
        match (prev, now) {
            (Some(a), Some(b)) if b < a => backwards += 1,
            (_, None) => invalid += 1,
            _ => {}
        }
        prev = now.or(prev);
    }

    // The MSR and the page agree: a page read, the MSR, a page read.
    let a = tsc::reference_time(&page, || p.rdtsc()).unwrap_or(0);
    let r = clock.read_msr();
    let b = tsc::reference_time(&page, || p.rdtsc()).unwrap_or(0);
    let agree = a <= r && r <= b;

    // Rate: reference time against RDTSC / TSC_FREQUENCY over ~200 ms, with
    // the APIC-timer ticks as an independent (coarse) witness.
    // Each pair comes from one RDTSC, so preemption between reads cannot skew it.
    let pair = || {
        let mut t = 0;
        let r = tsc::reference_time(&page, || {
            t = p.rdtsc();
            t
        });
        (t, r.unwrap_or(0), irq::ticks())
    };
    let (t0, r0, k0) = pair();
    irq::wait_until(20, || false);
    let (t1, r1, k1) = pair();
    let ref_ns = r1.wrapping_sub(r0).saturating_mul(100);
    let tsc_ns = if tsc_hz == 0 {
        0
    } else {
        (u128::from(t1.wrapping_sub(t0)) * 1_000_000_000 / u128::from(tsc_hz)) as u64
    };
    // parts per million of deviation
    let dev_ppm = if tsc_ns == 0 {
        u64::MAX
    } else {
        (ref_ns.abs_diff(tsc_ns) as u128 * 1_000_000 / tsc_ns as u128) as u64
    };
    let rate_ok = dev_ppm <= 10_000;
    let tick_ms = (k1 - k0) * (1000 / irq::TICK_HZ);
    // Coarse real-time witness (the APIC timer is independent of the TSC
    // page): catches a clock running at half or double speed, while leaving
    // room for ticks a loaded host delivers late.
    let witness_ok = ref_ns >= tick_ms * 900_000 && ref_ns <= tick_ms * 1_600_000;

    let ok = msr_ok
        && seq != 0
        && scale != 0
        && backwards == 0
        && invalid == 0
        && agree
        && rate_ok
        && witness_ok;
    check!(
        "reference-tsc",
        ok,
        "msr={:#x} seq={seq} scale={scale:#x} offset={offset} tsc_hz={tsc_hz} backwards={backwards} invalid={invalid} page_msr_page=[{a},{r},{b}] ref_ns={ref_ns} tsc_ns={tsc_ns} dev_ppm={dev_ppm} apic_ticks_ms={tick_ms}",
        m.into_bits()
    );
    clock
}

/// Waits for the next message in `sint`'s slot and consumes it with the
/// driver's EOM protocol.
fn receive<P: Platform>(synic: &SynIc<'_, P>, sint: u8) -> Result<Option<HvMessage>, Error> {
    let arrived = irq::wait_until(PROMPT_TICKS, || {
        synic.poll(sint).map(|t| !t.is_none()).unwrap_or(true)
    });
    if !arrived {
        return Ok(None);
    }
    synic.take_message(sint)
}

/// `post-message`, `synic-message`, `synic-interrupt`: one echo round trip.
pub fn echo_round_trip<P: Platform>(hv: &Hypervisor<'_, P>, synic: &SynIc<'_, P>) {
    let input = pages::input();
    let request: [u8; 16] = [1, ECHO_SINT, 0xA5, 0x5A, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8];
    let vector = sint_vector(ECHO_SINT);
    let irqs_before = irq::count(vector);

    let bogus = hv.post_message(&input, BOGUS_CONNECTION_ID, ECHO_MESSAGE_TYPE, &request);
    let posted = hv.post_message(&input, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &request);
    let bogus_ok = bogus == Err(Error::Status(HvStatus::INVALID_CONNECTION_ID));
    check!(
        "post-message",
        posted.is_ok() && bogus_ok,
        "connection={ECHO_CONNECTION_ID:#x} status={} unregistered_connection_status={}",
        status_str(posted),
        status_str(bogus)
    );

    // Interrupt-driven, as a driver would be: wait for the SINT handler, then
    // read the slot (still polled if no interrupt ever comes, so a missing
    // interrupt fails synic-interrupt but not synic-message).
    irq::wait_until(PROMPT_TICKS, || irq::count(vector) != irqs_before);
    let msg = receive(synic, ECHO_SINT);
    let irqs = irq::count(vector) - irqs_before;
    match msg {
        Ok(Some(m)) => {
            let mut expect = request;
            expect[0] = 1;
            let pending = m.header.message_flags.message_pending();
            let ok =
                m.header.message_type == ECHO_MESSAGE_TYPE && m.payload() == expect && !pending;
            check!(
                "synic-message",
                ok,
                "sint={ECHO_SINT} type={:#x} size={} payload_match={} pending={pending} origin={:#x}",
                m.header.message_type.0,
                m.header.payload_size,
                m.payload() == expect,
                m.header.origination_id
            );
        }
        Ok(None) => check!(
            "synic-message",
            false,
            "no message in SIM slot {ECHO_SINT} after {PROMPT_TICKS} ticks"
        ),
        Err(e) => check!("synic-message", false, "driver error: {e}"),
    }
    let seen = irq::sint_seen_type(ECHO_SINT);
    let sint_reg = synic
        .sint(ECHO_SINT)
        .map(|s| s.into_bits())
        .unwrap_or(u64::MAX);
    check!(
        "synic-interrupt",
        irqs == 1 && seen == ECHO_MESSAGE_TYPE.0,
        "vector={vector:#x} handler_runs={irqs} slot_type_in_handler={seen:#x} sint_msr={sint_reg:#x}"
    );
}

/// `eom-redelivery`: ask for several replies; the first arrives with
/// MessagePending, the driver writes EOM when it frees the slot, and the
/// others follow in order, each with its own interrupt.
pub fn eom_redelivery<P: Platform>(hv: &Hypervisor<'_, P>, synic: &SynIc<'_, P>) {
    const N: u8 = 4;
    let input = pages::input();
    let request = [N, ECHO_SINT, 0xE0, 0x11];
    let vector = sint_vector(ECHO_SINT);
    let irqs_before = irq::count(vector);
    if let Err(e) = hv.post_message(&input, ECHO_CONNECTION_ID, ECHO_MESSAGE_TYPE, &request) {
        check!("eom-redelivery", false, "post failed: {e}");
        return;
    }
    let mut order = [0u8; N as usize];
    let mut pending = [false; N as usize];
    let mut got = 0usize;
    let mut error = None;
    while got < N as usize {
        // Message k arrives with its own interrupt once k-1 was freed (EOM).
        let want = irqs_before + got as u32 + 1;
        irq::wait_until(PROMPT_TICKS, || irq::count(vector) >= want);
        match receive(synic, ECHO_SINT) {
            Ok(Some(m))
                if m.header.message_type == ECHO_MESSAGE_TYPE
                    && m.payload().len() == request.len() =>
            {
                order[got] = m.payload()[0];
                pending[got] = m.header.message_flags.message_pending();
                got += 1;
            }
            Ok(Some(m)) => {
                error = Some(m.header.message_type.0);
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let irqs = irq::count(vector) - irqs_before;
    let in_order = got == N as usize
        && order
            .iter()
            .enumerate()
            .all(|(i, &k)| usize::from(k) == i + 1);
    let pending_ok = pending
        .iter()
        .enumerate()
        .all(|(i, &p)| p == (i + 1 < N as usize));
    check!(
        "eom-redelivery",
        in_order && pending_ok && irqs == u32::from(N) && error.is_none(),
        "requested={N} received={got} order={order:?} pending={pending:?} interrupts={irqs} unexpected_type={error:?}"
    );
}

/// `signal-event`: fast and slow HvSignalEvent to the loopback connection;
/// each flag must come back in SINT 3's event slot with an interrupt.
pub fn signal_event<P: Platform>(hv: &Hypervisor<'_, P>, synic: &SynIc<'_, P>) {
    const FAST_FLAG: u16 = 5;
    const SLOW_FLAG: u16 = 70;
    let vector = sint_vector(EVENT_SINT);
    let input = pages::input();

    let bogus = hv.signal_event(BOGUS_CONNECTION_ID, FAST_FLAG);

    let before = irq::count(vector);
    let fast = hv.signal_event(EVENT_CONNECTION_ID, FAST_FLAG);
    irq::wait_until(PROMPT_TICKS, || irq::count(vector) != before);
    let fast_irqs = irq::count(vector) - before;
    let fast_flag = synic
        .test_and_clear_event(EVENT_SINT, FAST_FLAG)
        .unwrap_or(false);

    let before = irq::count(vector);
    let slow = hv.signal_event_slow(&input, EVENT_CONNECTION_ID, SLOW_FLAG);
    irq::wait_until(PROMPT_TICKS, || irq::count(vector) != before);
    let slow_irqs = irq::count(vector) - before;
    let slow_flag = synic
        .test_and_clear_event(EVENT_SINT, SLOW_FLAG)
        .unwrap_or(false);

    // Nothing else may be left set in the slot.
    let mut stray = 0usize;
    let _ = synic.take_events(EVENT_SINT, |_| stray += 1);

    let ok = fast.is_ok()
        && slow.is_ok()
        && bogus == Err(Error::Status(HvStatus::INVALID_CONNECTION_ID))
        && fast_flag
        && slow_flag
        && fast_irqs == 1
        && slow_irqs == 1
        && stray == 0;
    check!(
        "signal-event",
        ok,
        "connection={EVENT_CONNECTION_ID:#x} fast(flag {FAST_FLAG})={} flag_set={fast_flag} irqs={fast_irqs} slow(flag {SLOW_FLAG})={} flag_set={slow_flag} irqs={slow_irqs} stray_flags={stray} unregistered_connection_status={}",
        status_str(fast),
        status_str(slow),
        status_str(bogus)
    );
}

/// `stimer-oneshot`: timer 0 in message mode on [`TIMER_SINT`], 20 ms ahead;
/// exactly one TIMER_EXPIRED message, not early, with the programmed expiry.
pub fn stimer_oneshot<P: Platform>(p: &P, synic: &SynIc<'_, P>, clock: &ReferenceClock<'_, P>) {
    const DELTA: u64 = 200_000; // 20 ms in 100 ns units
                                // Generous: catches unit errors (x10, x1000) without failing on a loaded host.
    const MAX_LATENCY: u64 = 5_000_000; // 500 ms
    let timer = match SyntheticTimer::new(p, 0) {
        Ok(t) => t,
        Err(e) => return check!("stimer-oneshot", false, "{e}"),
    };
    let vector = sint_vector(TIMER_SINT);
    let before = irq::count(vector);
    let start = clock.now();
    let expiry = start + DELTA;
    if let Err(e) = timer.start_one_shot(TimerMode::Message { sint: TIMER_SINT }, expiry) {
        return check!("stimer-oneshot", false, "start failed: {e}");
    }
    let config = timer.config().into_bits();
    let msg = receive(synic, TIMER_SINT);
    let seen_at = clock.now();
    // A one-shot fires once: wait 5 periods more for a stray second message.
    irq::wait_until(10, || false);
    let second = synic
        .poll(TIMER_SINT)
        .map(|t| !t.is_none())
        .unwrap_or(false);
    let irqs = irq::count(vector) - before;
    timer.stop();
    match msg {
        Ok(Some(m)) => match m.timer_payload() {
            Some(t) => {
                let ok = t.timer_index == 0
                    && t.expiration_time == expiry
                    && t.delivery_time >= expiry
                    && seen_at >= expiry
                    && seen_at - expiry < MAX_LATENCY
                    && t.delivery_time - expiry < MAX_LATENCY
                    && !second
                    && irqs == 1;
                let (idx, exp, del) = (t.timer_index, t.expiration_time, t.delivery_time);
                check!(
                    "stimer-oneshot",
                    ok,
                    "mode=message sint={TIMER_SINT} config={config:#x} start={start} expiry={exp} wanted={expiry} delivery={del} seen={seen_at} latency_us={} index={idx} interrupts={irqs} second={second}",
                    seen_at.saturating_sub(expiry) / 10
                )
            }
            None => check!("stimer-oneshot", false, "unexpected message type {:#x}", m.header.message_type.0),
        },
        Ok(None) => check!("stimer-oneshot", false, "no TIMER_EXPIRED message within {PROMPT_TICKS} ticks (config={config:#x} start={start} expiry={expiry} now={seen_at})"),
        Err(e) => check!("stimer-oneshot", false, "driver error: {e}"),
    }
}

/// `stimer-periodic`: timer 1 in direct mode (APIC vector), period 50 ms;
/// the handler stamps each expiry, converted to reference time here.
pub fn stimer_periodic<P: Platform>(p: &P, info: &HvCpuidInfo, clock: &ReferenceClock<'_, P>) {
    const PERIOD: u64 = 500_000; // 50 ms
    const WANT: usize = 6;
    if !info.has_direct_timers() {
        return check!(
            "stimer-periodic",
            false,
            "direct-mode timers not offered (EDX bit 19)"
        );
    }
    let Some(page) = clock.tsc_page() else {
        return check!(
            "stimer-periodic",
            false,
            "no TSC page to timestamp expirations"
        );
    };
    let timer = match SyntheticTimer::new(p, 1) {
        Ok(t) => t,
        Err(e) => return check!("stimer-periodic", false, "{e}"),
    };
    irq::reset_stimer();
    let start = clock.now();
    if let Err(e) = timer.start_periodic(
        TimerMode::Direct {
            vector: irq::STIMER_VECTOR,
        },
        PERIOD,
    ) {
        return check!("stimer-periodic", false, "start failed: {e}");
    }
    let config = timer.config().into_bits();
    irq::wait_until(PROMPT_TICKS, || {
        irq::count(irq::STIMER_VECTOR) as usize >= WANT
    });
    timer.stop();
    let mut stamps = [0u64; WANT];
    let n = irq::stimer_stamps(&mut stamps);
    let mut times = [0u64; WANT];
    for (t, &s) in times.iter_mut().zip(stamps.iter()).take(n) {
        *t = tsc::reference_time(&page, || s).unwrap_or(0);
    }
    // Stopped means stopped: no more expirations after stop().
    let after_stop = irq::count(irq::STIMER_VECTOR);
    irq::wait_until(10, || false);
    let extra = irq::count(irq::STIMER_VECTOR) - after_stop;

    let mut min = u64::MAX;
    let mut max = 0;
    for w in times[..n].windows(2) {
        let d = w[1].wrapping_sub(w[0]);
        min = min.min(d);
        max = max.max(d);
    }
    let mean = if n >= 2 {
        times[n - 1].wrapping_sub(times[0]) / (n as u64 - 1)
    } else {
        0
    };
    let first = times[0].wrapping_sub(start);
    let ok = n == WANT
        && mean.abs_diff(PERIOD) * 10 <= PERIOD // mean within 10 %
        && min * 2 >= PERIOD                     // never bunched below 50 %
        && max * 2 <= 3 * PERIOD                 // never a missed beat (150 %)
        && first >= PERIOD * 9 / 10
        && first * 2 <= PERIOD * 3
        && extra == 0;
    check!(
        "stimer-periodic",
        ok,
        "mode=direct vector={:#x} config={config:#x} period={PERIOD} expirations={n} first_after={first} spacing_mean={mean} min={min} max={max} after_stop={extra}",
        irq::STIMER_VECTOR
    );
}

fn status_str(r: Result<(), Error>) -> StatusStr {
    StatusStr(r)
}

struct StatusStr(Result<(), Error>);

impl core::fmt::Display for StatusStr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Ok(()) => f.write_str("SUCCESS"),
            Err(Error::Status(s)) => write!(f, "{s}"),
            Err(e) => write!(f, "{e}"),
        }
    }
}
