//! The integration-component checks: `ic-services`' guest endpoints over
//! VMBus channels against host-test-vmm's host ICs running their exercise
//! script (`demo` turns it on; docs/ARCHITECTURE.md, "Host integration
//! components").
//!
//! Heartbeat, time sync, KVP, VSS and file copy are opened together and
//! served from their channel interrupts until each has seen what the script
//! sends (heartbeats every second, a SYNC then a SAMPLE after 5 s, the KVP
//! set/get/enumerate/delete, VSS freeze/thaw, the 8 KiB file), then closed.
//! The shutdown channel is opened last: its power-off request, accepted, ends
//! the run through the normal report path.

use core::cell::UnsafeCell;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, Ordering};

use hypercall::msr;
use hypercall::page::{Page, PageRef};
use hypercall::platform::Platform;
use ic_services::driver::{serve_all, Served, RECV_BUFFER_SIZE};
use ic_services::fcopy::{FileCopy, FileSink};
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::{Kvp, KvpData, KvpPool, KvpProvider, KvpRecordMut, Utf16};
use ic_services::shutdown::{Shutdown, ShutdownAction, ShutdownHandler, ShutdownKind};
use ic_services::timesync::{to_unix_nanos, ClockAdjust, TimeSample, TimeSync};
use ic_services::vss::{Vss, VssHandler};
use ic_services::{Endpoint, IcMessageType, IcService, Status};
use vmbus_guest::channel::Channel;
use vmbus_guest::guid::{self, Guid};

use crate::irq;
use crate::platform::PLATFORM;
use crate::vmbus::{chan_irqs, close_channel, open_channel, Failure, Ring, Shared};

/// Pages per IC channel: 4 each way (a control page and 12 KiB of ring; file
/// copy's requests are 6.2 KiB).
const IC_RING_PAGES: usize = 8;
/// Heartbeat, time sync, KVP, VSS, file copy, shutdown.
const IC_COUNT: usize = 6;
static IC_RINGS: [[Page; IC_RING_PAGES]; IC_COUNT] =
    [const { [const { Page::new() }; IC_RING_PAGES] }; IC_COUNT];

/// The exercise's file: name, size, byte i = i % 251.
const FCOPY_NAME: &str = "hvkit-fcopy.bin";
const FCOPY_SIZE: usize = 8192;
const KVP_KEY: &str = "hvkit-exercise-key";
const KVP_VALUE: &str = "hvkit-exercise-value";
/// The AUTO pool's entries the guest answers ENUMERATE with.
const AUTO_ENTRIES: [(&str, &str); 2] = [
    ("FullyQualifiedDomainName", "hvkit-test-guest"),
    ("OSName", "hvkit bare-metal test guest"),
];
/// Watchdog ticks (10 ms) for the whole exercise: a time-sync SAMPLE comes
/// 5 s after the SYNC.
const EXERCISE_TICKS: u64 = 1500;
/// Ticks to wait for the power-off request after opening the shutdown channel.
const SHUTDOWN_TICKS: u64 = 1000;
/// 100 ns units per second.
const HNS_PER_SEC: u64 = 10_000_000;

/// Statics handed out once (the endpoints and buffers are too big for the
/// 32 KiB stack).
struct Once<T>(UnsafeCell<T>, AtomicBool);

// SAFETY: the value is only reached through `take`, which hands it out once,
// so no two references to it ever exist.
unsafe impl<T: Send> Sync for Once<T> {}

impl<T> Once<T> {
    // Unique by construction: the flag lets only the first caller through.
    #[allow(clippy::mut_from_ref)]
    fn take(&'static self) -> Option<&'static mut T> {
        if self.1.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag makes this the only reference ever handed out.
        Some(unsafe { &mut *self.0.get() })
    }
}

struct State {
    buf: [u8; RECV_BUFFER_SIZE],
    file: [u8; FCOPY_SIZE],
}

static STATE: Once<State> = Once(
    UnsafeCell::new(State {
        buf: [0; RECV_BUFFER_SIZE],
        file: [0; FCOPY_SIZE],
    }),
    AtomicBool::new(false),
);

fn reference_now() -> u64 {
    PLATFORM.rdmsr(msr::TIME_REF_COUNT)
}

// ---- the service callbacks ------------------------------------------------------

/// Heartbeat bookkeeping: sequences seen, and whether each followed the rule
/// (the host's next request carries the sequence the guest answered).
#[derive(Default)]
struct Beats {
    answered: u32,
    in_order: u32,
    broken: u32,
    last_answer: Option<u64>,
    first_seq: Option<u64>,
}

/// The time samples and what the guest made of them.
#[derive(Default)]
struct Clock {
    sync: Option<(TimeSample, u64)>,
    sample: Option<(TimeSample, u64)>,
    other: u32,
}

impl ClockAdjust for Clock {
    fn time_sample(&mut self, sample: &TimeSample) {
        let entry = Some((*sample, reference_now()));
        if sample.is_sync() && self.sync.is_none() {
            self.sync = entry;
        } else if sample.is_sample() && self.sync.is_some() && self.sample.is_none() {
            self.sample = entry;
        } else {
            self.other += 1;
        }
    }
}

/// Whether a sample received at reference time `now` is plausible: host
/// time between 2020 and 2100, taken at most 10 s before it arrived (v4).
fn plausible(s: &TimeSample, now: u64) -> bool {
    const Y2020: u64 = 1_577_836_800_000_000_000;
    const Y2100: u64 = 4_102_444_800_000_000_000;
    let unix = to_unix_nanos(s.host_time_at(now)).unwrap_or(0);
    let taken_ok = s
        .reference_time
        .is_some_and(|r| r <= now && now - r < 10 * HNS_PER_SEC);
    (Y2020..Y2100).contains(&unix) && taken_ok
}

/// One REG_SZ entry the host may set.
struct Entry {
    pool: KvpPool,
    key: heapless::String<64>,
    value: heapless::String<64>,
}

/// The guest's KVP store: what the host sets (a few entries), and the AUTO
/// pool's fixed entries.
#[derive(Default)]
struct Store {
    entries: heapless::Vec<Entry, 4>,
    set_seen: bool,
    got: bool,
    enumerated: u32,
    enumerate_end: bool,
    deleted: bool,
    refused: u32,
}

fn to_string<const N: usize>(s: Utf16<'_>) -> Option<heapless::String<N>> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        out.push(c).ok()?;
    }
    Some(out)
}

impl KvpProvider for Store {
    fn get(
        &mut self,
        pool: KvpPool,
        key: Utf16<'_>,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let e = self
            .entries
            .iter()
            .find(|e| e.pool == pool && key.eq_str(&e.key))
            .ok_or(Status::E_FAIL)?;
        out.set_value_str(&e.value)?;
        if key.eq_str(KVP_KEY) {
            self.got = true;
        }
        Ok(())
    }

    fn set(&mut self, pool: KvpPool, key: Utf16<'_>, value: KvpData<'_>) -> Result<(), Status> {
        let (Some(k), KvpData::String(v)) = (to_string::<64>(key), value) else {
            self.refused += 1;
            return Err(Status::E_FAIL);
        };
        let v = to_string::<64>(v).ok_or(Status::INVALID_ARG)?;
        if k == KVP_KEY && v == KVP_VALUE && pool == KvpPool::EXTERNAL {
            self.set_seen = true;
        }
        self.entries.retain(|e| !(e.pool == pool && e.key == k));
        self.entries
            .push(Entry {
                pool,
                key: k,
                value: v,
            })
            .map_err(|_| Status::DISK_FULL)
    }

    fn delete(&mut self, pool: KvpPool, key: Utf16<'_>) -> Result<(), Status> {
        let before = self.entries.len();
        self.entries
            .retain(|e| !(e.pool == pool && key.eq_str(&e.key)));
        if self.entries.len() == before {
            return Err(Status::E_FAIL);
        }
        if key.eq_str(KVP_KEY) {
            self.deleted = true;
        }
        Ok(())
    }

    fn enumerate(
        &mut self,
        pool: KvpPool,
        index: u32,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        if pool != KvpPool::AUTO {
            return Err(Status::NO_MORE_ITEMS);
        }
        match AUTO_ENTRIES.get(index as usize) {
            Some((k, v)) => {
                out.set_key(k)?;
                out.set_value_str(v)?;
                self.enumerated += 1;
                Ok(())
            }
            None => {
                self.enumerate_end = true;
                Err(Status::NO_MORE_ITEMS)
            }
        }
    }
}

/// VSS: the operations in the order they came (F freeze, T thaw).
#[derive(Default)]
struct Snapshots {
    order: heapless::Vec<u8, 8>,
}

impl VssHandler for Snapshots {
    fn freeze(&mut self) -> Result<(), Status> {
        let _ = self.order.push(b'F');
        Ok(())
    }

    fn thaw(&mut self) -> Result<(), Status> {
        let _ = self.order.push(b'T');
        Ok(())
    }
}

/// File copy into a static buffer of the exercise's size.
struct Sink {
    data: &'static mut [u8; FCOPY_SIZE],
    name_ok: bool,
    size: u64,
    written: usize,
    fragments: u32,
    complete: bool,
    refused: u32,
}

impl FileSink for Sink {
    fn start(
        &mut self,
        file_name: Utf16<'_>,
        _path_name: Utf16<'_>,
        _copy_flags: u32,
        file_size: u64,
    ) -> Result<(), Status> {
        self.name_ok = file_name.eq_str(FCOPY_NAME);
        self.size = file_size;
        self.written = 0;
        self.fragments = 0;
        self.complete = false;
        self.data.fill(0);
        if file_size > FCOPY_SIZE as u64 {
            self.refused += 1;
            return Err(Status::DISK_FULL);
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Status> {
        let at = usize::try_from(offset).map_err(|_| Status::E_FAIL)?;
        let Some(dst) = self.data.get_mut(at..at + data.len()) else {
            self.refused += 1;
            return Err(Status::DISK_FULL);
        };
        dst.copy_from_slice(data);
        self.written = self.written.max(at + data.len());
        self.fragments += 1;
        Ok(())
    }

    fn complete(&mut self) -> Result<(), Status> {
        self.complete = true;
        Ok(())
    }

    fn cancel(&mut self) {
        self.complete = false;
        self.written = 0;
    }
}

/// Shutdown: accept a power-off, refuse anything else.
#[derive(Default)]
struct PowerOff {
    asked: Option<ShutdownAction>,
    message_units: usize,
}

impl ShutdownHandler for PowerOff {
    fn decide(&mut self, action: &ShutdownAction, message: &[u8]) -> bool {
        self.asked = Some(*action);
        self.message_units = message.chunks(2).take_while(|u| *u != [0, 0]).count();
        action.kind == ShutdownKind::PowerOff
    }
}

// ---- channels ---------------------------------------------------------------------

/// An open IC channel and its endpoint, with the answers it sent.
struct Ic<'p, S: IcService> {
    relid: u32,
    chan: Channel<Ring<'p>>,
    ep: Endpoint<S>,
    irqs_seen: u32,
    answered: u32,
    /// Non-OK statuses answered, dropped requests.
    bad_status: u32,
    dropped: u32,
    chan_error: bool,
}

fn find(sh: &Shared<'_, impl Platform>, class: &Guid) -> Option<u32> {
    sh.client(|c| c.find_channel(class).map(|e| e.relid()))
}

fn open<'p, S: IcService, P: Platform>(
    sh: &Shared<'_, P>,
    class: &Guid,
    ring: &'p [PageRef<'static>],
    service: S,
) -> Result<Ic<'p, S>, Failure> {
    let relid = find(sh, class).ok_or(Failure::Timeout("offer of the IC class"))?;
    let (chan, _gpadl) = open_channel(sh, relid, ring)?;
    Ok(Ic {
        relid,
        chan,
        ep: Endpoint::new(service),
        irqs_seen: 0,
        answered: 0,
        bad_status: 0,
        dropped: 0,
        chan_error: false,
    })
}

impl<S: IcService> Ic<'_, S> {
    /// Answers everything waiting; `on_answer` sees each answered request.
    fn serve<P: Platform>(
        &mut self,
        sh: &Shared<'_, P>,
        buf: &mut [u8],
        mut on_answer: impl FnMut(&mut Endpoint<S>, IcMessageType, Status),
    ) {
        let (mut answered, mut bad, mut dropped) = (0, 0, 0);
        let r = irq::without_interrupts(|| {
            serve_all(&mut self.chan, &mut self.ep, buf, |ep, s| match s {
                Served::Answered(h) => {
                    answered += 1;
                    // KVP's enumeration ends with NO_MORE_ITEMS by design.
                    if h.status != Status::OK
                        && h.status != Status::NO_MORE_ITEMS
                        && h.message_type != IcMessageType::NEGOTIATE
                    {
                        bad += 1;
                    }
                    on_answer(ep, h.message_type, h.status);
                }
                Served::Dropped(_) => dropped += 1,
            })
        });
        self.answered += answered;
        self.bad_status += bad;
        self.dropped += dropped;
        match r {
            Ok(signal) => {
                let conn = self.chan.connection_id();
                if sh.with(|b| b.signal_if(conn, signal)).is_err() {
                    self.chan_error = true;
                }
            }
            Err(_) => self.chan_error = true,
        }
    }

    /// Whether a channel interrupt came since the last call.
    fn interrupted(&mut self) -> bool {
        let n = chan_irqs(self.relid);
        let new = n != self.irqs_seen;
        self.irqs_seen = n;
        new
    }
}

// ---- the checks -------------------------------------------------------------------

/// Runs the IC checks (after the other VMBus checks, on the same connection).
pub fn run<P: Platform>(sh: &Shared<'_, P>) {
    if sh.client(|c| c.version().is_none()) {
        return;
    }
    let Some(st) = STATE.take() else {
        return;
    };
    let rings: [[PageRef<'static>; IC_RING_PAGES]; IC_COUNT] =
        core::array::from_fn(|i| vmbus_guest::ring::identity_mapped_refs(&IC_RINGS[i]));
    let State { buf, file } = st;
    exercise(sh, &rings, buf, file);
    shutdown(sh, &rings[5], buf);
}

fn fail_open(name: &str, f: Option<Failure>) {
    let f = f.unwrap_or(Failure::Timeout("open"));
    crate::report::check(name, false, format_args!("open: {f}"));
}

fn split<T>(r: Result<T, Failure>) -> (Option<T>, Option<Failure>) {
    match r {
        Ok(t) => (Some(t), None),
        Err(f) => (None, Some(f)),
    }
}

/// Heartbeat, time sync, KVP, VSS, file copy.
fn exercise<P: Platform>(
    sh: &Shared<'_, P>,
    rings: &[[PageRef<'static>; IC_RING_PAGES]; IC_COUNT],
    buf: &mut [u8],
    file: &'static mut [u8; FCOPY_SIZE],
) {
    let sink = Sink {
        data: file,
        name_ok: false,
        size: 0,
        written: 0,
        fragments: 0,
        complete: false,
        refused: 0,
    };
    let hb = open(sh, &guid::class::HEARTBEAT, &rings[0], Heartbeat::new());
    let ts = open(
        sh,
        &guid::class::TIMESYNC,
        &rings[1],
        TimeSync::new(Clock::default()),
    );
    let kvp = open(sh, &guid::class::KVP, &rings[2], Kvp::new(Store::default()));
    let vss = open(
        sh,
        &guid::class::VSS,
        &rings[3],
        Vss::new(Snapshots::default()),
    );
    let fc = open(sh, &guid::class::FCOPY, &rings[4], FileCopy::new(sink));
    let ((mut hb, hb_err), (mut ts, ts_err), (mut kvp, kvp_err)) =
        (split(hb), split(ts), split(kvp));
    let ((mut vss, vss_err), (mut fc, fc_err)) = (split(vss), split(fc));

    let mut beats = Beats::default();
    let start = irq::ticks();
    let done = |hb: &Option<Ic<'_, Heartbeat>>,
                beats: &Beats,
                ts: &Option<Ic<'_, TimeSync<Clock>>>,
                kvp: &Option<Ic<'_, Kvp<Store>>>,
                vss: &Option<Ic<'_, Vss<Snapshots>>>,
                fc: &Option<Ic<'_, FileCopy<Sink>>>| {
        (hb.is_none() || beats.answered >= 3)
            && ts
                .as_ref()
                .is_none_or(|t| t.ep.service().clock().sample.is_some())
            && kvp
                .as_ref()
                .is_none_or(|k| k.ep.service().provider().deleted)
            && vss
                .as_ref()
                .is_none_or(|v| v.ep.service().handler().order.len() >= 2)
            && fc.as_ref().is_none_or(|f| f.ep.service().sink().complete)
    };
    // The first packets (the negotiations) are in the rings before the
    // OpenResults: serve once without waiting.
    let mut first = true;
    while irq::ticks().wrapping_sub(start) < EXERCISE_TICKS {
        if let Some(ic) = hb.as_mut() {
            if ic.interrupted() || first {
                ic.serve(sh, buf, |ep, t, s| {
                    if t != IcMessageType::HEARTBEAT || s != Status::OK {
                        return;
                    }
                    // The service answered `seq + 1`; the host's next request
                    // must carry that.
                    let Some(seq) = ep.service().last_seq() else {
                        return;
                    };
                    beats.answered += 1;
                    beats.first_seq.get_or_insert(seq);
                    match beats.last_answer {
                        Some(a) if a == seq => beats.in_order += 1,
                        Some(_) => beats.broken += 1,
                        None => {}
                    }
                    beats.last_answer = Some(seq.wrapping_add(1));
                });
            }
        }
        if let Some(ic) = ts.as_mut() {
            if ic.interrupted() || first {
                ic.serve(sh, buf, |_, _, _| {});
            }
        }
        if let Some(ic) = kvp.as_mut() {
            if ic.interrupted() || first {
                ic.serve(sh, buf, |_, _, _| {});
            }
        }
        if let Some(ic) = vss.as_mut() {
            if ic.interrupted() || first {
                ic.serve(sh, buf, |_, _, _| {});
            }
        }
        if let Some(ic) = fc.as_mut() {
            if ic.interrupted() || first {
                ic.serve(sh, buf, |_, _, _| {});
            }
        }
        first = false;
        if done(&hb, &beats, &ts, &kvp, &vss, &fc) {
            break;
        }
        // Until a channel interrupt (or 20 ticks, to look again).
        let seen: [(u32, u32); 5] = [
            hb.as_ref().map_or((0, 0), |i| (i.relid, i.irqs_seen)),
            ts.as_ref().map_or((0, 0), |i| (i.relid, i.irqs_seen)),
            kvp.as_ref().map_or((0, 0), |i| (i.relid, i.irqs_seen)),
            vss.as_ref().map_or((0, 0), |i| (i.relid, i.irqs_seen)),
            fc.as_ref().map_or((0, 0), |i| (i.relid, i.irqs_seen)),
        ];
        irq::wait_until(20, || {
            seen.iter().any(|&(r, n)| r != 0 && chan_irqs(r) != n)
        });
    }
    let elapsed = irq::ticks().wrapping_sub(start);

    // ic-heartbeat
    match &hb {
        None => fail_open("ic-heartbeat", hb_err),
        Some(ic) => {
            let ok = beats.answered >= 2
                && beats.in_order + 1 >= beats.answered
                && beats.broken == 0
                && beats.first_seq == Some(0)
                && ic.ep.negotiated().is_some()
                && ic.bad_status == 0
                && !ic.chan_error;
            check!(
                "ic-heartbeat",
                ok,
                "relid={} negotiated={:?} heartbeats_answered={} seq_rule_followed={} broken={} first_seq={:?} last_answer={:?} bad_status={} dropped={} ticks={elapsed}",
                ic.relid,
                ic.ep.negotiated().map(|n| n.message),
                beats.answered,
                beats.in_order,
                beats.broken,
                beats.first_seq,
                beats.last_answer,
                ic.bad_status,
                ic.dropped
            );
        }
    }
    // ic-timesync
    if let Some(ic) = &ts {
        let c = ic.ep.service().clock();
        let sync_ok = c.sync.is_some_and(|(s, now)| plausible(&s, now));
        let sample_ok = c.sample.is_some_and(|(s, now)| plausible(&s, now));
        // Host time and reference time advance together between the two
        // (within 1 s: both come from the same host clock).
        let drift = match (c.sync, c.sample) {
            (Some((a, _)), Some((b, _))) => match (a.reference_time, b.reference_time) {
                (Some(ra), Some(rb)) => Some(
                    (b.host_time.wrapping_sub(a.host_time) as i64)
                        .wrapping_sub(rb.wrapping_sub(ra) as i64),
                ),
                _ => None,
            },
            _ => None,
        };
        let ok = sync_ok
            && sample_ok
            && drift.is_some_and(|d| d.unsigned_abs() < HNS_PER_SEC)
            && ic.bad_status == 0
            && !ic.chan_error;
        let unix_s = c
            .sample
            .or(c.sync)
            .and_then(|(s, now)| to_unix_nanos(s.host_time_at(now)))
            .map(|n| n / 1_000_000_000);
        check!(
            "ic-timesync",
            ok,
            "relid={} negotiated={:?} sync={} (plausible={sync_ok}) sample={} (plausible={sample_ok}) host_unix_s={unix_s:?} host_vs_reference_drift_100ns={drift:?} other={} bad_status={}",
            ic.relid,
            ic.ep.negotiated().map(|n| n.message),
            c.sync.is_some(),
            c.sample.is_some(),
            c.other,
            ic.bad_status
        );
    } else {
        fail_open("ic-timesync", ts_err);
    }
    // ic-kvp
    if let Some(ic) = &kvp {
        let s = ic.ep.service().provider();
        let left = s.entries.iter().any(|e| e.key == KVP_KEY);
        let ok = s.set_seen
            && s.got
            && s.enumerated == AUTO_ENTRIES.len() as u32
            && s.enumerate_end
            && s.deleted
            && !left
            && ic.bad_status == 0
            && !ic.chan_error;
        check!(
            "ic-kvp",
            ok,
            "relid={} negotiated={:?} set({KVP_KEY}={KVP_VALUE})={} get={} enumerate(auto)={} entries, end={} delete={} still_stored={left} refused={} answered={} bad_status={}",
            ic.relid,
            ic.ep.negotiated().map(|n| n.message),
            s.set_seen,
            s.got,
            s.enumerated,
            s.enumerate_end,
            s.deleted,
            s.refused,
            ic.answered,
            ic.bad_status
        );
    } else {
        fail_open("ic-kvp", kvp_err);
    }
    // ic-vss
    if let Some(ic) = &vss {
        let order = &ic.ep.service().handler().order;
        let ok = order.as_slice() == b"FT"
            && !ic.ep.service().frozen()
            && ic.bad_status == 0
            && !ic.chan_error;
        check!(
            "ic-vss",
            ok,
            "relid={} negotiated={:?} operations={} frozen_after={} bad_status={}",
            ic.relid,
            ic.ep.negotiated().map(|n| n.message),
            core::str::from_utf8(order).unwrap_or("?"),
            ic.ep.service().frozen(),
            ic.bad_status
        );
    } else {
        fail_open("ic-vss", vss_err);
    }
    // ic-fcopy
    if let Some(ic) = &fc {
        let s = ic.ep.service().sink();
        let bad_at = s
            .data
            .iter()
            .enumerate()
            .position(|(i, b)| *b != (i % 251) as u8);
        let sum = s
            .data
            .iter()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
        let expect = (0..FCOPY_SIZE).fold(0u32, |a, i| {
            a.wrapping_mul(31).wrapping_add((i % 251) as u32)
        });
        let ok = s.name_ok
            && s.size == FCOPY_SIZE as u64
            && s.written == FCOPY_SIZE
            && s.complete
            && bad_at.is_none()
            && sum == expect
            && ic.bad_status == 0
            && !ic.chan_error;
        let mut at = heapless::String::<24>::new();
        let _ = match bad_at {
            Some(i) => write!(at, "{i}"),
            None => write!(at, "none"),
        };
        check!(
            "ic-fcopy",
            ok,
            "relid={} negotiated={:?} {FCOPY_NAME}: name_ok={} size={} written={} fragments={} complete={} checksum={sum:#x} (expected {expect:#x}) first_bad_byte={at} bad_status={}",
            ic.relid,
            ic.ep.negotiated().map(|n| n.message),
            s.name_ok,
            s.size,
            s.written,
            s.fragments,
            s.complete,
            ic.bad_status
        );
    } else {
        fail_open("ic-fcopy", fc_err);
    }

    // Close them: only the shutdown channel stays for the end.
    for relid in [
        hb.as_ref().map(|i| i.relid),
        ts.as_ref().map(|i| i.relid),
        kvp.as_ref().map(|i| i.relid),
        vss.as_ref().map(|i| i.relid),
        fc.as_ref().map(|i| i.relid),
    ]
    .into_iter()
    .flatten()
    {
        let _ = close_channel(sh, relid);
    }
}

/// `ic-shutdown`: opened last; the host's power-off request is decided by the
/// handler and answered S_OK, then the run ends (the caller reports and exits).
fn shutdown<P: Platform>(sh: &Shared<'_, P>, ring: &[PageRef<'static>], buf: &mut [u8]) {
    let mut ic = match open(
        sh,
        &guid::class::SHUTDOWN,
        ring,
        Shutdown::new(PowerOff::default()),
    ) {
        Ok(ic) => ic,
        Err(f) => return fail_open("ic-shutdown", Some(f)),
    };
    let start = irq::ticks();
    let mut answer: Option<Status> = None;
    let mut accepted: Option<ShutdownAction> = None;
    let mut first = true;
    while irq::ticks().wrapping_sub(start) < SHUTDOWN_TICKS {
        if ic.interrupted() || first {
            ic.serve(sh, buf, |ep, t, s| {
                if t == IcMessageType::SHUTDOWN {
                    answer = Some(s);
                    accepted = ep.service_mut().take_accepted();
                }
            });
        }
        first = false;
        if answer.is_some() {
            break;
        }
        let (relid, seen) = (ic.relid, ic.irqs_seen);
        irq::wait_until(20, || chan_irqs(relid) != seen);
    }
    let asked = ic.ep.service().handler().asked;
    let ok = answer == Some(Status::OK)
        && accepted.is_some_and(|a| a.kind == ShutdownKind::PowerOff)
        && ic.ep.service().handler().message_units > 0
        && !ic.chan_error;
    check!(
        "ic-shutdown",
        ok,
        "relid={} negotiated={:?} request={asked:?} message_chars={} answered={answer:?} accepted={} -> ending the run",
        ic.relid,
        ic.ep.negotiated().map(|n| n.message),
        ic.ep.service().handler().message_units,
        accepted.is_some()
    );
}
