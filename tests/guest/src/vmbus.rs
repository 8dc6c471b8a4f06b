//! The VMBus checks: `vmbus-guest`'s client, driver and ring against
//! host-test-vmm's VMBus server and its echo device (docs/ARCHITECTURE.md,
//! "VMBus test device").
//!
//! Interrupt mode throughout: SINT2's handler runs [`VmBus::service`] (the
//! VMBus interrupt routine: it drains SINT2's message slot, posts what the
//! client queued in reply, and takes the channel event flags), logs the
//! client's events and counts channel interrupts per relid. The checks post
//! requests and wait with `sti; hlt` for the logged event or the channel
//! interrupt, each wait bounded by watchdog ticks. The bus is only touched by
//! the checks with interrupts off, so the handler never meets a borrow.
//!
//! Order: connect (version fallback from 6.0), offers, a 32-page GPADL (header
//! plus body) and one the host must refuse, open (a refused open first), echo
//! (ping-pong over many sizes, a streamed burst, a flood that fills both
//! rings), ring wrap accounting, a hot-add by control command, close, rescind
//! of the hot-added device (its relid must be reused after RelIdReleased),
//! GPADL teardown.

use core::cell::{RefCell, UnsafeCell};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use heapless::Deque;
use hypercall::hv::{Hypervisor, SynIc};
use hypercall::page::{PageRef, PAGE_SIZE};
use hypercall::platform::Platform;
use vmbus_guest::channel::{Channel, ChannelError, Received};
use vmbus_guest::client::{ChannelState, Client, ClientConfig, ConnectionState, Event};
use vmbus_guest::driver::{DriverError, OpeningChannel, Pending, Polled, VmBus};
use vmbus_guest::message::{GpadlMessages, PfnSource};
use vmbus_guest::packet::{PacketType, PacketView, TRAILER_SIZE};
use vmbus_guest::ring::{control, OutgoingPacket, PageRefRing, RingError, RingMemory};
use vmbus_guest::test_device::{self, Completion, CMD_HOT_ADD, CMD_RESCIND};
use vmbus_guest::version::{Version, VMBUS_SINT};

use crate::irq;
use crate::pages::{self, GPADL_PAGES, RING_PAGES};

/// 6.0 first, which the host does not speak, so the client's fallback to the
/// next version runs; then Linux's order (5.3 first).
static VERSIONS: [Version; 9] = [
    Version::COPPER,
    Version::WIN10_V5_3,
    Version::WIN10_V5_2,
    Version::WIN10_V5_1,
    Version::WIN10_V5,
    Version::WIN10_V4_1,
    Version::WIN10,
    Version::WIN8_1,
    Version::WIN8,
];

/// Guest -> host ring pages (the rest of [`RING_PAGES`] is host -> guest).
const OUT_PAGES: usize = RING_PAGES / 2;
/// Watchdog ticks (10 ms) for anything the host should answer at once.
const PROMPT_TICKS: u64 = 200;
/// A VP that never exists (the VMM has at most 8): the host must refuse it.
const MISSING_VP: u32 = 255;
/// A page frame far above any RAM the VMM gives a guest (GPA 64 TiB).
const BAD_PFN: u64 = 1 << 34;
/// Where the bad PFN goes: past the 26 PFNs of the header, in the body.
const BAD_PFN_INDEX: usize = 30;
/// Largest echo payload (fits a ring of 3 data pages with descriptor and trailer).
const MAX_PAYLOAD: usize = 12 * 1024;
/// Transaction ids of packets sent without a completion request (requests get
/// 1, 2, ... from the channel).
const PLAIN_TID_BASE: u64 = 0x7E57_0000_0000;

/// Ping-pong payload sizes: around every power of two and 8-byte boundary, up
/// to nearly a whole ring. Odd positions ask for a completion.
const PINGPONG: [usize; 45] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257,
    511, 512, 513, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 3000, 4000, 4095, 4096, 4097, 5000,
    6000, 8000, 10000, 12200,
];
/// Streamed burst: sizes cycle through these; every third asks for a completion.
const STREAM_SIZES: [usize; 6] = [24, 200, 1500, 8, 700, 333];
const STREAM_PACKETS: usize = 48;
/// Packets in flight at once while streaming.
const STREAM_WINDOW: usize = 16;
/// Flood: 36 KiB of payload, more than both 12 KiB rings hold together.
const FLOOD_SIZES: [usize; 2] = [2000, 1000];
const FLOOD_PACKETS: usize = 24;
const FLOOD_WINDOW: usize = 32;

/// 16 channels: echo, storage, the six ICs and the hot-added echo devices.
pub(crate) type Bus<'a, P> = VmBus<'a, P, 16, 16, 16>;
pub(crate) type Ring<'p> = PageRefRing<'p, 'static>;

/// Channel interrupts taken (SIEF flags of SINT2), by relid (0: relid ≥ 64).
static CHAN_IRQS: [AtomicU32; 64] = [const { AtomicU32::new(0) }; 64];

pub(crate) fn chan_irqs(relid: u32) -> u32 {
    CHAN_IRQS
        .get(relid as usize)
        .map_or(0, |c| c.load(Ordering::Acquire))
}

fn sint2_irqs() -> u32 {
    irq::count(irq::SINT_VECTOR_BASE + VMBUS_SINT)
}

// ---- the interrupt routine and the event log ---------------------------------

const LOG_LEN: usize = 32;
/// `service` rounds one interrupt runs at most (each up to the driver's
/// bound of messages).
const ISR_ROUNDS: usize = 8;

/// What the interrupt routine saw, for the checks to wait on.
struct Log {
    events: [Option<Event>; LOG_LEN],
    /// Events logged so far (the last `LOG_LEN` are kept).
    n: usize,
    errors: u32,
    first_error: Option<DriverError>,
    /// Times `service` said more was waiting after its bound.
    extra_rounds: u32,
}

impl Log {
    const fn new() -> Self {
        Self {
            events: [None; LOG_LEN],
            n: 0,
            errors: 0,
            first_error: None,
            extra_rounds: 0,
        }
    }

    fn record(&mut self, r: Result<Polled, DriverError>) {
        match r {
            Ok(Polled::Event(e)) => {
                self.events[self.n % LOG_LEN] = Some(e);
                self.n += 1;
            }
            // Not VMBus (nothing else targets SINT2 during these checks), or
            // dropped while unloading (we never unload).
            Ok(Polled::Foreign(_) | Polled::Discarded(_)) => {}
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// The first event from `mark` on that satisfies `pred`, with its index.
    fn find(&self, mark: usize, pred: impl Fn(&Event) -> bool) -> Option<(usize, Event)> {
        let start = mark.max(self.n.saturating_sub(LOG_LEN));
        (start..self.n).find_map(|i| self.events[i % LOG_LEN].filter(|e| pred(e)).map(|e| (i, e)))
    }
}

/// The bus and the log, shared between the checks and SINT2's handler.
pub(crate) struct Shared<'a, P: Platform> {
    bus: RefCell<Bus<'a, P>>,
    log: RefCell<Log>,
}

impl<'a, P: Platform> Shared<'a, P> {
    /// SINT2's interrupt routine (runs in the handler, interrupts off).
    fn isr(&self) {
        // The checks borrow only with interrupts off and only this CPU runs,
        // so both borrows succeed here.
        let (Ok(mut bus), Ok(mut log)) = (self.bus.try_borrow_mut(), self.log.try_borrow_mut())
        else {
            return;
        };
        // A message left in the slot after the driver's bound raises no new
        // interrupt: go round again while it says more is waiting.
        for _ in 0..ISR_ROUNDS {
            let done = bus.service(
                |r| log.record(r),
                |relid| {
                    let i = if (relid as usize) < CHAN_IRQS.len() {
                        relid as usize
                    } else {
                        0
                    };
                    CHAN_IRQS[i].fetch_add(1, Ordering::AcqRel);
                },
            );
            if !done.more {
                return;
            }
            log.extra_rounds += 1;
        }
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Bus<'a, P>) -> R) -> R {
        irq::without_interrupts(|| f(&mut self.bus.borrow_mut()))
    }

    /// Starts a request with one of the driver's `begin_*` forms and waits
    /// (interrupt-driven, bounded) for the event `pending` recognises as its
    /// answer. Events raised while posting (a refused connection id) come
    /// with no interrupt: the interrupt routine's work is run at once then.
    /// Returns the request's token, the answering event and what it means.
    pub(crate) fn request<T>(
        &self,
        what: &'static str,
        begin: impl FnOnce(&mut Bus<'a, P>) -> Result<T, DriverError>,
        pending: impl Fn(&T) -> Pending,
    ) -> Result<(T, Event, Result<(), DriverError>), Failure> {
        let mark = self.mark();
        let started = irq::without_interrupts(|| {
            let r = begin(&mut self.bus.borrow_mut());
            // Only those: a message in the slot brings its own interrupt.
            if self.bus.borrow().events_waiting() > 0 {
                self.isr();
            }
            r
        });
        let t = started.map_err(|e| Failure::Driver(what, e))?;
        let p = pending(&t);
        match self.wait_event(mark, |e| p.outcome(e).is_some()) {
            Some((_, e)) => {
                let outcome = p.outcome(&e).unwrap_or(Err(DriverError::Timeout));
                Ok((t, e, outcome))
            }
            None => Err(Failure::Timeout(what)),
        }
    }

    pub(crate) fn client<R>(&self, f: impl FnOnce(&Client<16, 16, 16>) -> R) -> R {
        self.with(|b| f(b.client()))
    }

    /// The log position: events logged from now on are at or after it.
    pub(crate) fn mark(&self) -> usize {
        irq::without_interrupts(|| self.log.borrow().n)
    }

    /// Extra `service` rounds the interrupt routine ran (more was waiting).
    fn extra_rounds(&self) -> u32 {
        irq::without_interrupts(|| self.log.borrow().extra_rounds)
    }

    fn errors(&self) -> (u32, Option<DriverError>) {
        irq::without_interrupts(|| {
            let l = self.log.borrow();
            (l.errors, l.first_error)
        })
    }

    /// Waits (interrupt-driven, bounded) for an event from `mark` on.
    pub(crate) fn wait_event(
        &self,
        mark: usize,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<(usize, Event)> {
        let mut found = None;
        irq::wait_until(PROMPT_TICKS, || {
            found = self.log.borrow().find(mark, &pred);
            found.is_some()
        });
        found
    }

    /// Calls `f` with every logged event from `mark` on.
    fn each_since(&self, mark: usize, mut f: impl FnMut(usize, &Event)) {
        irq::without_interrupts(|| {
            let l = self.log.borrow();
            for i in mark.max(l.n.saturating_sub(LOG_LEN))..l.n {
                if let Some(e) = &l.events[i % LOG_LEN] {
                    f(i, e);
                }
            }
        });
    }
}

// ---- failures -------------------------------------------------------------------

/// Why a step failed (for the check's detail).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    Driver(&'static str, DriverError),
    Timeout(&'static str),
    Status(&'static str, u32),
    Echo(EchoError),
    InStep(&'static str, EchoError),
}

impl From<EchoError> for Failure {
    fn from(e: EchoError) -> Self {
        Self::Echo(e)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver(step, e) => write!(f, "{step}: {e}"),
            Self::Timeout(what) => write!(f, "no {what} within {PROMPT_TICKS} ticks"),
            Self::Status(what, s) => write!(f, "{what} status {s:#x}"),
            Self::Echo(e) => e.fmt(f),
            Self::InStep(step, e) => write!(f, "{step}: {e}"),
        }
    }
}

/// What went wrong on the data path.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EchoError {
    Channel(ChannelError),
    Driver(DriverError),
    Timeout {
        sent: usize,
        outstanding: usize,
    },
    Mismatch {
        what: &'static str,
        tid: u64,
        got_tid: u64,
        len: usize,
        at: usize,
    },
}

impl From<ChannelError> for EchoError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<RingError> for EchoError {
    fn from(e: RingError) -> Self {
        Self::Channel(ChannelError::Ring(e))
    }
}

impl From<DriverError> for EchoError {
    fn from(e: DriverError) -> Self {
        Self::Driver(e)
    }
}

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "channel: {e}"),
            Self::Driver(e) => write!(f, "driver: {e}"),
            Self::Timeout { sent, outstanding } => write!(
                f,
                "no channel interrupt within {PROMPT_TICKS} ticks (sent {sent}, {outstanding} replies outstanding)"
            ),
            Self::Mismatch {
                what,
                tid,
                got_tid,
                len,
                at,
            } => write!(
                f,
                "{what}: expected tid {tid:#x} len {len}, got tid {got_tid:#x}, at byte {at}"
            ),
        }
    }
}

/// `6.0,5.3`.
struct Versions<'v>(&'v [Version]);

impl fmt::Display for Versions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

struct ShowErr<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for ShowErr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(e) => e.fmt(f),
            None => f.write_str("none"),
        }
    }
}

// ---- control-path steps ---------------------------------------------------------

pub(crate) fn create_gpadl<P: Platform, S: PfnSource + ?Sized>(
    sh: &Shared<'_, P>,
    relid: u32,
    pfns: &S,
) -> Result<(u32, u32), Failure> {
    let what = "GpadlCreated";
    let (p, _, r) = sh.request(what, |b| b.begin_create_gpadl(relid, pfns), |p| *p)?;
    let handle = p.gpadl().unwrap_or(0);
    match r {
        Ok(()) => Ok((handle, 0)),
        Err(DriverError::Refused(status)) => Ok((handle, status)),
        Err(e) => Err(Failure::Driver(what, e)),
    }
}

fn teardown_gpadl<P: Platform>(sh: &Shared<'_, P>, h: u32) -> Result<(), Failure> {
    let what = "GpadlTorndown";
    let (_, _, r) = sh.request(what, |b| b.begin_teardown_gpadl(h), |p| *p)?;
    r.map_err(|e| Failure::Driver(what, e))
}

/// OpenChannel on a created ring GPADL over `ring`; returns the opening
/// channel and the OpenResult status.
fn open_on<'p, P: Platform>(
    sh: &Shared<'_, P>,
    relid: u32,
    gpadl: u32,
    ring: &'p [PageRef<'static>],
    target_vp: u32,
) -> Result<(OpeningChannel<'p, 'static>, u32), Failure> {
    let what = "OpenResult";
    let begin = |b: &mut Bus<'_, P>| {
        b.begin_open_channel(relid, gpadl, ring, OUT_PAGES, target_vp, [0; 120])
    };
    let (opening, _, r) = sh.request(what, begin, OpeningChannel::pending)?;
    match r {
        Ok(()) => Ok((opening, 0)),
        Err(DriverError::Refused(status)) => Ok((opening, status)),
        Err(e) => Err(Failure::Driver(what, e)),
    }
}

/// Creates the ring GPADL over `ring` and opens `relid` on it with interrupts
/// to VP 0; returns the data path and the GPADL.
pub(crate) fn open_channel<'p, P: Platform, const N: usize>(
    sh: &Shared<'_, P>,
    relid: u32,
    ring: &'p [PageRef<'static>],
) -> Result<(Channel<Ring<'p>, N>, u32), Failure> {
    let (gpadl, status) = create_gpadl(sh, relid, ring)?;
    if status != 0 {
        return Err(Failure::Status("ring GpadlCreated", status));
    }
    match open_on(sh, relid, gpadl, ring, 0)? {
        (opening, 0) => {
            let chan = opening
                .into_channel()
                .map_err(|e| Failure::Driver("ring indices", e))?;
            Ok((chan, gpadl))
        }
        (_, s) => Err(Failure::Status("OpenResult", s)),
    }
}

/// CloseChannel and the ring GPADL's teardown; waits for GpadlTorndown.
pub(crate) fn close_channel<P: Platform>(sh: &Shared<'_, P>, relid: u32) -> Result<(), Failure> {
    let what = "GpadlTorndown of the ring";
    let (_, _, r) = sh.request(what, |b| b.begin_close_channel(relid), |p| *p)?;
    r.map_err(|e| Failure::Driver(what, e))
}

// ---- the data path --------------------------------------------------------------

/// Scratch buffers for payloads (too big for the 32 KiB stack).
struct Buffers {
    tx: [u8; MAX_PAYLOAD],
    rx: [u8; MAX_PAYLOAD + 64],
}

/// A static handed out once as `&'static mut`.
struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reachable through `take`, which hands it out at
// most once, so no two references to it ever exist.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    // Unique by construction: the flag lets only the first caller through.
    #[allow(clippy::mut_from_ref)]
    fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: first and only call to get here (the swap above), so this is
        // the only reference to the value, for the rest of the run.
        Some(unsafe { &mut *self.value.get() })
    }
}

static BUFFERS: TakeOnce<Buffers> = TakeOnce {
    taken: AtomicBool::new(false),
    value: UnsafeCell::new(Buffers {
        tx: [0; MAX_PAYLOAD],
        rx: [0; MAX_PAYLOAD + 64],
    }),
};

/// Byte `i` of the payload with seed `seed` (position- and packet-dependent, so
/// a shifted, truncated or swapped payload shows).
fn pattern(seed: u32, i: usize) -> u8 {
    (seed as usize)
        .wrapping_mul(131)
        .wrapping_add(i.wrapping_mul(7))
        .wrapping_add(i >> 8) as u8
}

/// Where a ring's index must be, from the traffic we accounted.
#[derive(Debug, Clone, Copy)]
struct RingTrack {
    size: u32,
    pos: u32,
    bytes: u64,
    /// Times the accounted index passed the end.
    wraps: u32,
    /// Packets whose bytes ran past the end into the start.
    straddles: u32,
    /// Times the host's index (read index of our outbound ring, write index
    /// of our inbound ring) was seen lower than before: wraps seen in memory.
    seen_wraps: u32,
    last_seen: u32,
}

impl RingTrack {
    fn new(size: u32) -> Self {
        Self {
            size,
            pos: 0,
            bytes: 0,
            wraps: 0,
            straddles: 0,
            seen_wraps: 0,
            last_seen: 0,
        }
    }

    fn advance(&mut self, ring_bytes: usize) {
        let end = self.pos as usize + ring_bytes;
        if end > self.size as usize {
            self.straddles += 1;
        }
        if end >= self.size as usize {
            self.wraps += 1;
        }
        self.pos = (end % self.size as usize) as u32;
        self.bytes += ring_bytes as u64;
    }

    fn observe(&mut self, index: u32) {
        if index < self.last_seen {
            self.seen_wraps += 1;
        }
        self.last_seen = index;
    }
}

/// One packet to send.
#[derive(Clone, Copy)]
struct Item {
    size: usize,
    completion: bool,
    command: Option<(u32, u32)>,
}

/// A reply we wait for (replies come in send order).
#[derive(Clone, Copy)]
struct Expect {
    tid: u64,
    len: usize,
    seed: u32,
    command: Option<[u8; test_device::COMMAND_LEN]>,
    completion: bool,
    echoed: bool,
}

impl Expect {
    fn byte(&self, i: usize) -> u8 {
        match &self.command {
            Some(c) => c[i],
            None => pattern(self.seed, i),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PhaseStats {
    packets: u32,
    bytes: u64,
    completions_requested: u32,
    /// HvSignalEvent after a send (the ring went empty -> non-empty).
    signals: u32,
    /// Publications of the write index (one per send, one per staged burst).
    commits: u32,
    /// HvSignalEvent after reads (the host waited for space).
    space_signals: u32,
    replies: u32,
    completions: u32,
    /// Channel interrupts (our relid's SIEF flag) taken.
    irqs: u32,
    /// SINT2 interrupts taken.
    sint_irqs: u32,
    ring_full: u32,
    waits: u32,
}

enum Sent {
    Sent(Expect),
    /// The outbound ring has no room for `needed` bytes now (0: too many
    /// requests outstanding).
    Full {
        needed: u32,
    },
}

/// An open channel with its traffic accounting.
struct Link<'s, 'a, 'p, P: Platform> {
    sh: &'s Shared<'a, P>,
    relid: u32,
    chan: Channel<Ring<'p>>,
    out: RingTrack,
    inb: RingTrack,
    stats: PhaseStats,
    next_plain: u64,
    seed_base: u32,
}

impl<'s, 'a, 'p, P: Platform> Link<'s, 'a, 'p, P> {
    fn new(sh: &'s Shared<'a, P>, relid: u32, mut chan: Channel<Ring<'p>>) -> Self {
        let out = RingTrack::new(chan.sender().data_size());
        let inb = RingTrack::new(chan.receiver().data_size());
        Self {
            sh,
            relid,
            chan,
            out,
            inb,
            stats: PhaseStats::default(),
            next_plain: PLAIN_TID_BASE,
            seed_base: 0,
        }
    }

    fn signal(&self) -> Result<(), DriverError> {
        let conn = self.chan.connection_id();
        self.sh.with(|b| b.signal(conn))
    }

    /// Sends one item. With `stage`, it is only staged, requests included
    /// (published by [`Self::commit`] at the end of the burst), so a burst
    /// costs one signal decision.
    fn send_one(
        &mut self,
        tx: &mut [u8],
        it: &Item,
        seed: u32,
        stage: bool,
    ) -> Result<Sent, EchoError> {
        let mut cmd = None;
        let len = match it.command {
            Some((c, a)) => {
                let b = test_device::encode_command(c, a);
                tx[..b.len()].copy_from_slice(&b);
                cmd = Some(b);
                b.len()
            }
            None => {
                for (i, x) in tx[..it.size].iter_mut().enumerate() {
                    *x = pattern(seed, i);
                }
                it.size
            }
        };
        let parts = [&tx[..len]];
        let ring_bytes = OutgoingPacket::inband(0, false, &parts).ring_bytes();
        let tid = self.next_plain;
        let sent = match (it.completion, stage) {
            (true, true) => self.chan.stage_request(&parts).map(|t| (t, None)),
            (true, false) => self.chan.send_request(&parts).map(|(t, s)| (t, Some(s))),
            (false, true) => self.chan.stage(tid, &parts).map(|()| (tid, None)),
            (false, false) => self.chan.send(tid, &parts).map(|s| (tid, Some(s))),
        };
        match sent {
            Ok((tid, signal)) => {
                if !it.completion {
                    self.next_plain += 1;
                }
                self.out.advance(ring_bytes);
                self.stats.packets += 1;
                self.stats.bytes += len as u64;
                self.stats.completions_requested += u32::from(it.completion);
                if let Some(signal) = signal {
                    self.stats.commits += 1;
                    if signal.needed() {
                        self.signal()?;
                        self.stats.signals += 1;
                    }
                }
                Ok(Sent::Sent(Expect {
                    tid,
                    len,
                    seed,
                    command: cmd,
                    completion: it.completion,
                    echoed: false,
                }))
            }
            Err(ChannelError::Ring(RingError::NotEnoughSpace { needed, .. })) => {
                self.stats.ring_full += 1;
                Ok(Sent::Full {
                    needed: needed as u32,
                })
            }
            Err(ChannelError::TooManyPending) => Ok(Sent::Full { needed: 0 }),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes staged packets; signals the host if the ring was empty.
    fn commit(&mut self) -> Result<(), EchoError> {
        if !self.chan.has_staged() {
            return Ok(());
        }
        self.stats.commits += 1;
        if self.chan.commit()?.needed() {
            self.signal()?;
            self.stats.signals += 1;
        }
        Ok(())
    }

    /// Reads every reply there is (interrupt mask set while draining, re-check
    /// after clearing it), verifying each against the head of `q`.
    fn drain(&mut self, rx: &mut [u8], q: &mut Deque<Expect, 32>) -> Result<usize, EchoError> {
        let mut n = 0;
        loop {
            self.chan.begin_batch();
            while let Some(r) = self.chan.recv(&mut rx[..])? {
                let (pkt, completion) = match r {
                    Received::Completion {
                        transaction_id,
                        packet,
                    } => (packet, Some(transaction_id)),
                    Received::Packet(p) => (p, None),
                };
                self.inb.advance(pkt.bytes().len() + TRAILER_SIZE);
                n += 1;
                self.stats.replies += 1;
                verify(q, &pkt, completion, &mut self.stats)?;
            }
            if self.chan.commit_reads()?.needed() {
                self.signal()?;
                self.stats.space_signals += 1;
            }
            let host_read = self.chan.sender().memory().load_u32(control::READ_INDEX);
            let host_write = self.chan.receiver().memory().load_u32(control::WRITE_INDEX);
            self.out.observe(host_read);
            self.inb.observe(host_write);
            if !self.chan.end_batch()? {
                return Ok(n);
            }
        }
    }

    /// Sends `count` items (at most `window` replies outstanding; with `stage`
    /// each burst is published by one commit) and verifies every reply; waits
    /// only for channel interrupts. The phase's counters are in `self.stats`
    /// afterwards, also when it failed.
    fn run(
        &mut self,
        bufs: &mut Buffers,
        count: usize,
        item: impl Fn(usize) -> Item,
        window: usize,
        stage: bool,
    ) -> Result<(), EchoError> {
        self.stats = PhaseStats::default();
        let (irq0, sint0) = (chan_irqs(self.relid), sint2_irqs());
        let result = self.run_phase(bufs, count, item, window, stage);
        self.seed_base = self.seed_base.wrapping_add(count as u32);
        self.stats.irqs = chan_irqs(self.relid).wrapping_sub(irq0);
        self.stats.sint_irqs = sint2_irqs().wrapping_sub(sint0);
        result
    }

    fn run_phase(
        &mut self,
        bufs: &mut Buffers,
        count: usize,
        item: impl Fn(usize) -> Item,
        window: usize,
        stage: bool,
    ) -> Result<(), EchoError> {
        let mut q: Deque<Expect, 32> = Deque::new();
        let window = window.clamp(1, q.capacity());
        let mut next = 0;
        loop {
            let seen = chan_irqs(self.relid);
            let mut retry = false;
            while next < count && q.len() < window {
                let seed = self.seed_base.wrapping_add(next as u32);
                match self.send_one(&mut bufs.tx, &item(next), seed, stage)? {
                    Sent::Sent(e) => {
                        let _ = q.push_back(e);
                        next += 1;
                    }
                    Sent::Full { needed } => {
                        // Publish what is staged first (a commit clears
                        // pending_send_sz), then ask the host to signal once
                        // it made room.
                        self.commit()?;
                        if needed != 0 {
                            retry = self.chan.sender().request_space(needed)?;
                        }
                        break;
                    }
                }
            }
            self.commit()?;
            let got = self.drain(&mut bufs.rx, &mut q)?;
            if next == count && q.is_empty() {
                return Ok(());
            }
            if got > 0 || retry {
                continue;
            }
            self.stats.waits += 1;
            if !irq::wait_until(PROMPT_TICKS, || chan_irqs(self.relid) != seen) {
                return Err(EchoError::Timeout {
                    sent: next,
                    outstanding: q.len(),
                });
            }
        }
    }

    /// Sends one control command (echoed first, then acted on).
    fn command(&mut self, bufs: &mut Buffers, cmd: u32, arg: u32) -> Result<(), EchoError> {
        let it = Item {
            size: test_device::COMMAND_LEN,
            completion: false,
            command: Some((cmd, arg)),
        };
        self.run(bufs, 1, |_| it, 1, false)
    }

    /// The host's indices: (outbound write, outbound read, inbound write, inbound read).
    fn indices(&mut self) -> [u32; 4] {
        let o = self.chan.sender().memory();
        let (ow, or) = (
            o.load_u32(control::WRITE_INDEX),
            o.load_u32(control::READ_INDEX),
        );
        let i = self.chan.receiver().memory();
        [
            ow,
            or,
            i.load_u32(control::WRITE_INDEX),
            i.load_u32(control::READ_INDEX),
        ]
    }
}

fn mismatch(what: &'static str, e: &Expect, got_tid: u64, at: usize) -> EchoError {
    EchoError::Mismatch {
        what,
        tid: e.tid,
        got_tid,
        len: e.len,
        at,
    }
}

/// Checks one reply against the oldest outstanding packet: the echo (same
/// transaction id, the payload byte for byte plus zero padding to 8), then,
/// if one was requested, the completion `{echoed_len, status 0}`.
fn verify(
    q: &mut Deque<Expect, 32>,
    pkt: &PacketView<'_>,
    completion: Option<u64>,
    stats: &mut PhaseStats,
) -> Result<(), EchoError> {
    let got_tid = pkt.transaction_id();
    let Some(head) = q.front_mut() else {
        return Err(EchoError::Mismatch {
            what: "reply with nothing outstanding",
            tid: 0,
            got_tid,
            len: 0,
            at: 0,
        });
    };
    let padded = head.len.next_multiple_of(8);
    match completion {
        None => {
            if pkt.packet_type() != PacketType::DATA_INBAND {
                return Err(mismatch("reply not DATA_INBAND", head, got_tid, 0));
            }
            if head.echoed {
                return Err(mismatch(
                    "second echo, completion expected",
                    head,
                    got_tid,
                    0,
                ));
            }
            if got_tid != head.tid {
                return Err(mismatch("echo transaction id", head, got_tid, 0));
            }
            let p = pkt.payload();
            if p.len() != padded {
                return Err(mismatch("echo length", head, got_tid, p.len()));
            }
            if let Some(at) = (0..head.len).find(|&i| p[i] != head.byte(i)) {
                return Err(mismatch("echo payload byte", head, got_tid, at));
            }
            if let Some(at) = (head.len..padded).find(|&i| p[i] != 0) {
                return Err(mismatch("echo padding byte", head, got_tid, at));
            }
            if head.completion {
                head.echoed = true;
            } else {
                q.pop_front();
            }
        }
        Some(tid) => {
            if !head.completion || !head.echoed {
                return Err(mismatch("completion before its echo", head, tid, 0));
            }
            if tid != head.tid {
                return Err(mismatch("completion transaction id", head, tid, 0));
            }
            let p = pkt.payload();
            let Some(c) = Completion::parse(p) else {
                return Err(mismatch("completion too short", head, tid, p.len()));
            };
            if c.echoed_len != padded as u32 {
                return Err(mismatch("completion echoed_len", head, tid, p.len()));
            }
            if c.status != 0 {
                return Err(mismatch("completion status", head, tid, 4));
            }
            stats.completions += 1;
            q.pop_front();
        }
    }
    Ok(())
}

// ---- the checks -------------------------------------------------------------------

/// Runs the VMBus checks (after the SynIC checks; SINT2 is configured with
/// vector 0x52). Each prints its own line; a step that fails leaves the
/// checks after it unreported (`report::fail_unreported` marks them).
pub fn run<P: Platform>(hv: &Hypervisor<'_, P>, synic: &SynIc<'_, P>) {
    let Some(bufs) = BUFFERS.take() else {
        return;
    };
    let config = ClientConfig {
        versions: &VERSIONS,
        ..ClientConfig::default()
    };
    let sh = Shared {
        bus: RefCell::new(VmBus::new(hv, synic, pages::vmbus_input(), config)),
        log: RefCell::new(Log::new()),
    };
    let isr = || sh.isr();
    irq::with_sint_hook(VMBUS_SINT, &isr, || {
        checks(&sh, bufs);
        // The storage controller's and the ICs' checks share the connection;
        // the shutdown IC's power-off request ends the run, so the ICs go last.
        crate::storage::run(&sh);
        crate::net::run(&sh);
        crate::ic::run(&sh);
    });
}

fn checks<P: Platform>(sh: &Shared<'_, P>, bufs: &mut Buffers) {
    let Some(relid) = connect_and_offers(sh) else {
        return;
    };
    let gpadl = gpadl_create(sh, relid);
    channel_checks(sh, relid, bufs);
    // Whatever happened to the channel, the GPADL is torn down at the end.
    gpadl_teardown(sh, gpadl);
}

/// `vmbus-open`, `vmbus-echo`, `vmbus-ring-wrap`, `vmbus-close`, `vmbus-rescind`.
fn channel_checks<P: Platform>(sh: &Shared<'_, P>, relid: u32, bufs: &mut Buffers) {
    let ring = pages::ring();
    let Some((chan, ring_gpadl)) = open_check(sh, relid, &ring) else {
        return;
    };
    let mut link = Link::new(sh, relid, chan);
    let echo_ok = echo_check(&mut link, bufs);
    ring_wrap_check(&mut link, echo_ok);

    // Hot-add echo device 1 through the control command (its offer arrives
    // at once: we asked for offers already).
    let mark = sh.mark();
    let hot1 = link
        .command(bufs, CMD_HOT_ADD, 1)
        .map_err(|e| Failure::InStep("hot-add command on echo 0", e))
        .and_then(|()| wait_offer(sh, mark));

    if !close_check(sh, link, ring_gpadl) {
        return;
    }
    rescind_check(sh, relid, &ring, bufs, hot1);
}

/// `vmbus-connect` and `vmbus-offers`; returns the echo device's relid.
fn connect_and_offers<P: Platform>(sh: &Shared<'_, P>) -> Option<u32> {
    let sint0 = sint2_irqs();
    let mark = sh.mark();
    let answer = sh.request("VersionResponse", |b| b.begin_connect(), |p| *p);
    let mut refused: heapless::Vec<Version, 8> = heapless::Vec::new();
    sh.each_since(mark, |_, e| {
        if let Event::VersionRefused { version } = e {
            let _ = refused.push(*version);
        }
    });
    let state = sh.client(|c| c.state());
    let irqs = sint2_irqs().wrapping_sub(sint0);
    let (errors, first_error) = sh.errors();
    let (version, conn) = match answer {
        Ok((
            _,
            Event::Connected {
                version,
                msg_conn_id,
            },
            _,
        )) => (Some(version), msg_conn_id),
        _ => (None, 0),
    };
    let ok = version == Some(Version::WIN10_V5_3)
        && conn != 0
        && refused.as_slice() == [Version::COPPER]
        && state
            == (ConnectionState::Connected {
                version: Version::WIN10_V5_3,
                msg_conn_id: conn,
            })
        && irqs > 0
        && errors == 0;
    let failure = match answer {
        Ok((_, _, Err(e))) => Some(Failure::Driver("connect", e)),
        Err(f) => Some(f),
        Ok(_) => None,
    };
    check!(
        "vmbus-connect",
        ok,
        "version={} msg_conn_id={conn} tried={} refused={} sint2_irqs={irqs} host_errors={errors} first_error={} error={}",
        ShowErr(version),
        Versions(&VERSIONS[..(refused.len() + 1).min(VERSIONS.len())]),
        Versions(&refused),
        ShowErr(first_error),
        ShowErr(failure)
    );
    version?;

    // The client posted RequestOffers with the acceptance.
    let all = sh.wait_event(mark, |e| *e == Event::AllOffersDelivered);
    let mut offers = 0u32;
    let mut echo: Option<(usize, u32)> = None;
    let mut last_offer_at = 0;
    sh.each_since(mark, |i, e| {
        if let Event::Offer { relid, .. } = e {
            offers += 1;
            last_offer_at = i;
            let is_echo = sh_is_echo(sh, *relid, 0);
            if is_echo && echo.is_none() {
                echo = Some((i, *relid));
            }
        }
    });
    let entry = echo.and_then(|(_, r)| sh.client(|c| c.channel(r).copied()));
    let ordered = matches!((all, echo), (Some((a, _)), Some((o, _))) if o < a && last_offer_at < a);
    let ok = all.is_some()
        && ordered
        && entry.is_some_and(|c| {
            c.state == ChannelState::Offered
                && c.connection_id() != 0
                && c.subchannel_of.is_none()
                && (1..2048).contains(&c.relid())
        });
    match entry {
        Some(c) => check!(
            "vmbus-offers",
            ok,
            "offers={offers} all_offers_delivered={} after_offers={ordered} echo: relid={} class={} instance={} connection_id={:#x} sub_channel_index={} mmio_mb={}",
            all.is_some(),
            c.relid(),
            c.class(),
            c.instance(),
            c.connection_id(),
            { c.offer.sub_channel_index },
            { c.offer.mmio_megabytes }
        ),
        None => check!(
            "vmbus-offers",
            false,
            "offers={offers} all_offers_delivered={} but no offer of class {} instance {}",
            all.is_some(),
            test_device::CLASS_ID,
            test_device::instance_id(0)
        ),
    }
    if ok {
        entry.map(|c| c.relid())
    } else {
        None
    }
}

/// Whether `relid` is echo device `n` (class and instance).
fn sh_is_echo<P: Platform>(sh: &Shared<'_, P>, relid: u32, n: u16) -> bool {
    // Called from each_since (interrupts already off): borrow directly.
    let bus = sh.bus.borrow();
    bus.client().channel(relid).is_some_and(|c| {
        c.class() == test_device::CLASS_ID && test_device::device_index(&c.instance()) == Some(n)
    })
}

/// The multi-page GPADL, kept until the end (its line is printed at teardown).
struct GpadlInfo {
    relid: u32,
    handle: u32,
    status: u32,
    messages: usize,
    bad_status: Option<u32>,
    bad_forgotten: bool,
    failure: Option<Failure>,
}

fn gpadl_create<P: Platform>(sh: &Shared<'_, P>, relid: u32) -> GpadlInfo {
    let refs = pages::gpadl();
    let bytes = (GPADL_PAGES * PAGE_SIZE) as u32;
    let messages =
        GpadlMessages::new(relid, 0, 0, bytes, &refs[..]).map_or(0, |m| m.message_count());
    let mut info = GpadlInfo {
        relid,
        handle: 0,
        status: u32::MAX,
        messages,
        bad_status: None,
        bad_forgotten: false,
        failure: None,
    };
    match create_gpadl(sh, relid, &refs[..]) {
        Ok((h, s)) => {
            info.handle = h;
            info.status = s;
        }
        Err(f) => info.failure = Some(f),
    }
    // The same pages with one PFN beyond RAM, in the body: the host must
    // assemble header and body to see it, and refuse.
    let mut pfns = [0u64; GPADL_PAGES];
    for (p, r) in pfns.iter_mut().zip(refs.iter()) {
        *p = r.gpn();
    }
    pfns[BAD_PFN_INDEX] = BAD_PFN;
    match create_gpadl(sh, relid, &pfns[..]) {
        Ok((h, s)) => {
            info.bad_status = Some(s);
            info.bad_forgotten = sh.client(|c| c.gpadl(h).is_none());
        }
        Err(f) => {
            info.failure.get_or_insert(f);
        }
    }
    info
}

/// `vmbus-gpadl`, at the end: tear the multi-page GPADL down.
fn gpadl_teardown<P: Platform>(sh: &Shared<'_, P>, mut info: GpadlInfo) {
    let created = info.status == 0 && info.failure.is_none();
    let mut torn = false;
    if created {
        match teardown_gpadl(sh, info.handle) {
            Ok(()) => torn = true,
            Err(f) => info.failure = Some(f),
        }
    }
    let forgotten = sh.client(|c| c.gpadl(info.handle).is_none());
    let ok = created
        && info.messages >= 2
        && info.bad_status.is_some_and(|s| s != 0)
        && info.bad_forgotten
        && torn
        && forgotten;
    check!(
        "vmbus-gpadl",
        ok,
        "relid={} pages={GPADL_PAGES} messages={} (header+body) handle={:#x} created_status={:#x} bad_pfn_in_body(index {BAD_PFN_INDEX}) status={:#x} bad_forgotten={} torn_down={torn} error={}",
        info.relid,
        info.messages,
        info.handle,
        info.status,
        info.bad_status.unwrap_or(0),
        info.bad_forgotten,
        ShowErr(info.failure)
    );
}

/// `vmbus-open`: a ring GPADL over [`RING_PAGES`] pages; an open targeting a
/// VP that does not exist must be refused; then the open with VP 0.
fn open_check<'p, P: Platform>(
    sh: &Shared<'_, P>,
    relid: u32,
    ring: &'p [PageRef<'static>],
) -> Option<(Channel<Ring<'p>>, u32)> {
    let result = (|| {
        let (gpadl, status) = create_gpadl(sh, relid, ring)?;
        if status != 0 {
            return Err(Failure::Status("ring GpadlCreated", status));
        }
        let (_, refused) = open_on(sh, relid, gpadl, ring, MISSING_VP)?;
        let state_after_refusal = sh.client(|c| c.channel(relid).map(|c| c.state));
        let (opening, status) = open_on(sh, relid, gpadl, ring, 0)?;
        Ok((gpadl, refused, state_after_refusal, status, opening))
    })();
    let (gpadl, refused, after, status, opening) = match result {
        Ok(r) => r,
        Err(f) => {
            check!("vmbus-open", false, "relid={relid}: {f}");
            return None;
        }
    };
    let state = sh.client(|c| c.channel(relid).map(|c| c.state));
    let chan = opening.into_channel();
    let ok = refused != 0
        && after == Some(ChannelState::Offered)
        && status == 0
        && state == Some(ChannelState::Open { ring_gpadl: gpadl })
        && chan.is_ok();
    check!(
        "vmbus-open",
        ok,
        "relid={relid} ring_gpadl={gpadl:#x} pages={RING_PAGES} downstream_offset={OUT_PAGES} target_vp=0 status={status:#x} state={state:?} refused_open(target_vp {MISSING_VP}) status={refused:#x} state_after={after:?}"
    );
    match chan {
        Ok(c) if ok => Some((c, gpadl)),
        _ => None,
    }
}

/// `vmbus-echo`: ping-pong over [`PINGPONG`] sizes, then a streamed burst.
fn echo_check<P: Platform>(link: &mut Link<'_, '_, '_, P>, bufs: &mut Buffers) -> bool {
    let (e0, _) = link.sh.errors();
    let ping = link.run(
        bufs,
        PINGPONG.len(),
        |k| Item {
            size: PINGPONG[k],
            completion: k % 2 == 1,
            command: None,
        },
        1,
        false,
    );
    let p = link.stats;
    let stream = ping.and_then(|()| {
        link.run(
            bufs,
            STREAM_PACKETS,
            |k| Item {
                size: STREAM_SIZES[k % STREAM_SIZES.len()],
                completion: k % 3 == 0,
                command: None,
            },
            STREAM_WINDOW,
            true,
        )
    });
    let s = if ping.is_ok() {
        link.stats
    } else {
        PhaseStats::default()
    };
    // Flood: more than both rings hold, read only once the outbound ring is
    // full, so the host fills the inbound ring and waits for room
    // (pending_send_sz, our signal after reading), and we wait for room in
    // the outbound ring (our pending_send_sz, the host's signal). Every reply
    // must still arrive, in order.
    let flood = stream.and_then(|()| {
        link.run(
            bufs,
            FLOOD_PACKETS,
            |k| Item {
                size: FLOOD_SIZES[k % FLOOD_SIZES.len()],
                completion: false,
                command: None,
            },
            FLOOD_WINDOW,
            false,
        )
    });
    let f = if stream.is_ok() {
        link.stats
    } else {
        PhaseStats::default()
    };
    let (e1, first_error) = link.sh.errors();
    // The outbound ring must have filled (we read nothing until then, and the
    // flood exceeds both rings). Whether the host was still waiting for room
    // when we read (our space signal) depends on its thread's timing, and it
    // also polls, so that count is reported, not required.
    let flood_ok = f.packets as usize == FLOOD_PACKETS
        && f.replies == f.packets
        && f.ring_full > 0
        && f.irqs > 0;
    // Ping-pong waits for every reply on an empty ring, so the host must
    // interrupt. A stream may legitimately see none: when this vCPU is slow
    // (a loaded host), the host always writes into a non-empty ring, and the
    // ring rules forbid a signal then. The flood proves interrupts under load.
    let phase_ok = |st: &PhaseStats, want: usize, irqs_required: bool| {
        st.packets as usize == want
            && st.replies == st.packets + st.completions_requested
            && st.completions == st.completions_requested
            && st.completions > 0
            && st.completions < st.packets
            && st.signals > 0
            && (st.irqs > 0 || !irqs_required)
    };
    let ok = ping.is_ok()
        && stream.is_ok()
        && phase_ok(&p, PINGPONG.len(), true)
        && phase_ok(&s, STREAM_PACKETS, false)
        // Staged bursts (requests included): fewer publications than packets,
        // at most one signal per publication.
        && s.commits < s.packets
        && s.signals <= s.commits
        && p.signals <= p.commits
        && flood.is_ok()
        && flood_ok
        && link.chan.pending().is_empty()
        && e1 == e0;
    let error = ping.err().or(stream.err()).or(flood.err());
    check!(
        "vmbus-echo",
        ok,
        "relid={} pingpong: packets={} payload_bytes={} sizes={}..{} with_completion={} replies={} completions={} guest_signals={} host_irqs={} sint2_irqs={} | stream(window {STREAM_WINDOW}): packets={} payload_bytes={} with_completion={} replies={} completions={} guest_signals={} host_irqs={} sint2_irqs={} commits={} ring_full={} space_signals={} | flood(window {FLOOD_WINDOW}): packets={} payload_bytes={} replies={} guest_signals={} host_irqs={} outbound_full={} host_waited_space_signals={} | notifications per packet: guest->host {}/{} host->guest {}/{} | error={} host_errors={} isr_extra_rounds={}",
        link.relid,
        p.packets,
        p.bytes,
        PINGPONG[0],
        PINGPONG[PINGPONG.len() - 1],
        p.completions_requested,
        p.replies,
        p.completions,
        p.signals,
        p.irqs,
        p.sint_irqs,
        s.packets,
        s.bytes,
        s.completions_requested,
        s.replies,
        s.completions,
        s.signals,
        s.irqs,
        s.sint_irqs,
        s.commits,
        s.ring_full,
        s.space_signals,
        f.packets,
        f.bytes,
        f.replies,
        f.signals,
        f.irqs,
        f.ring_full,
        f.space_signals,
        s.signals,
        s.packets,
        s.irqs,
        s.packets,
        ShowErr(error),
        ShowErr(first_error.filter(|_| e1 != e0)),
        link.sh.extra_rounds()
    );
    ok
}

/// `vmbus-ring-wrap`: the echo traffic went round both rings; the indices in
/// ring memory (ours and the host's) are exactly where the accounting says.
fn ring_wrap_check<P: Platform>(link: &mut Link<'_, '_, '_, P>, echo_ok: bool) {
    // The host publishes its read index after its batch: give it a moment.
    let want = link.out.pos;
    irq::wait_until(50, || {
        link.chan.sender().memory().load_u32(control::READ_INDEX) == want
    });
    let [ow, or, iw, ir] = link.indices();
    let (o, i) = (link.out, link.inb);
    let ok = echo_ok
        && o.wraps >= 1
        && i.wraps >= 1
        && o.straddles >= 1
        && i.straddles >= 1
        && o.seen_wraps >= 1
        && i.seen_wraps >= 1
        && ow == o.pos
        && or == o.pos
        && iw == i.pos
        && ir == i.pos;
    check!(
        "vmbus-ring-wrap",
        ok,
        "ring_data_bytes={}/{} out: bytes={} wraps={} straddling_packets={} host_read_index_wraps_seen={} write_index={ow} read_index={or} expected={} | in: bytes={} wraps={} straddling_packets={} host_write_index_wraps_seen={} write_index={iw} read_index={ir} expected={} | echo_verified={echo_ok}",
        o.size,
        i.size,
        o.bytes,
        o.wraps,
        o.straddles,
        o.seen_wraps,
        o.pos,
        i.bytes,
        i.wraps,
        i.straddles,
        i.seen_wraps,
        i.pos
    );
}

/// Waits for the next offer logged from `mark` on; returns its relid.
fn wait_offer<P: Platform>(sh: &Shared<'_, P>, mark: usize) -> Result<u32, Failure> {
    match sh.wait_event(mark, |e| matches!(e, Event::Offer { .. })) {
        Some((_, Event::Offer { relid, .. })) => Ok(relid),
        _ => Err(Failure::Timeout("hot-added offer")),
    }
}

/// `vmbus-close`: CloseChannel + ring GPADL teardown; afterwards the host must
/// leave the rings alone (a packet written and signalled is not consumed, no
/// reply, no interrupt).
fn close_check<P: Platform>(
    sh: &Shared<'_, P>,
    mut link: Link<'_, '_, '_, P>,
    ring_gpadl: u32,
) -> bool {
    let relid = link.relid;
    let closed = close_channel(sh, relid);
    let state = sh.client(|c| c.channel(relid).map(|c| c.state));
    let forgotten = sh.client(|c| c.gpadl(ring_gpadl).is_none());

    let [_, or0, iw0, _] = link.indices();
    let irq0 = chan_irqs(relid);
    let late = link.chan.send(PLAIN_TID_BASE - 1, &[b"after close....."]);
    let signal = link.signal();
    irq::wait_until(10, || false);
    let [_, or1, iw1, _] = link.indices();
    let irqs = chan_irqs(relid).wrapping_sub(irq0);
    let ok = closed.is_ok()
        && state == Some(ChannelState::Offered)
        && forgotten
        && late.is_ok()
        && or1 == or0
        && iw1 == iw0
        && irqs == 0;
    check!(
        "vmbus-close",
        ok,
        "relid={relid} ring_gpadl={ring_gpadl:#x} torn_down={} state={state:?} gpadl_forgotten={forgotten} | after close: packet_written={} signal={} host_read_index {or0}->{or1} host_write_index {iw0}->{iw1} channel_irqs={irqs} | error={}",
        closed.is_ok(),
        late.is_ok(),
        ShowErr(signal.err()),
        ShowErr(closed.err())
    );
    ok
}

/// `vmbus-rescind`: open the hot-added echo device 1, ask it to rescind
/// itself; the client closes, tears the ring GPADL down and sends
/// RelIdReleased. The host must then reuse that relid for the next hot-add
/// (device 2, asked for through device 0 reopened).
fn rescind_check<P: Platform>(
    sh: &Shared<'_, P>,
    relid0: u32,
    ring: &[PageRef<'static>],
    bufs: &mut Buffers,
    hot1: Result<u32, Failure>,
) {
    struct Outcome {
        hot1: u32,
        hot1_is_echo1: bool,
        was_open: bool,
        rescind_irqs: u32,
        released: bool,
        hot2: u32,
        hot2_is_echo2: bool,
    }
    let result = (|| {
        let hot1 = hot1?;
        let hot1_is_echo1 = irq::without_interrupts(|| sh_is_echo(sh, hot1, 1));
        let (chan, gpadl1) = open_channel(sh, hot1, ring)?;
        let mut link = Link::new(sh, hot1, chan);
        // It echoes like device 0.
        link.run(
            bufs,
            2,
            |k| Item {
                size: 100 + k,
                completion: k == 1,
                command: None,
            },
            2,
            false,
        )
        .map_err(|e| Failure::InStep("echo on device 1", e))?;
        let sint0 = sint2_irqs();
        let mark = sh.mark();
        link.command(bufs, CMD_RESCIND, 0)
            .map_err(|e| Failure::InStep("rescind command", e))?;
        let was_open = match sh.wait_event(
            mark,
            |e| matches!(e, Event::Rescinded { relid, .. } if *relid == hot1),
        ) {
            Some((_, Event::Rescinded { was_open, .. })) => was_open,
            _ => return Err(Failure::Timeout("RescindChannelOffer")),
        };
        // The client answers with CloseChannel and the GPADL teardown, and
        // sends RelIdReleased once GpadlTorndown arrives.
        sh.wait_event(
            mark,
            |e| matches!(e, Event::GpadlTorndown { gpadl, .. } if *gpadl == gpadl1),
        )
        .ok_or(Failure::Timeout("GpadlTorndown after the rescind"))?;
        let rescind_irqs = sint2_irqs().wrapping_sub(sint0);
        let released = sh.client(|c| c.channel(hot1).is_none());
        drop(link);

        // Device 0 again, to ask for device 2: it must get the released relid.
        let (chan, _) = open_channel(sh, relid0, ring)?;
        let mut link = Link::new(sh, relid0, chan);
        let mark = sh.mark();
        link.command(bufs, CMD_HOT_ADD, 2)
            .map_err(|e| Failure::InStep("hot-add command after the release", e))?;
        let hot2 = wait_offer(sh, mark)?;
        let hot2_is_echo2 = irq::without_interrupts(|| sh_is_echo(sh, hot2, 2));
        drop(link);
        close_channel(sh, relid0)?;
        Ok(Outcome {
            hot1,
            hot1_is_echo1,
            was_open,
            rescind_irqs,
            released,
            hot2,
            hot2_is_echo2,
        })
    })();
    match result {
        Ok(o) => {
            let ok = o.hot1_is_echo1
                && o.hot1 != relid0
                && o.was_open
                && o.released
                && o.rescind_irqs > 0
                && o.hot2 == o.hot1
                && o.hot2_is_echo2;
            check!(
                "vmbus-rescind",
                ok,
                "hot_add(echo 1): relid={} instance_ok={} | rescind by command: RescindChannelOffer relid={} was_open={} ring GpadlTorndown, RelIdReleased sent={} sint2_irqs={} | hot_add(echo 2) after release: relid={} (reused={}) instance_ok={}",
                o.hot1,
                o.hot1_is_echo1,
                o.hot1,
                o.was_open,
                o.released,
                o.rescind_irqs,
                o.hot2,
                o.hot2 == o.hot1,
                o.hot2_is_echo2
            );
        }
        Err(f) => check!("vmbus-rescind", false, "{f}"),
    }
}
