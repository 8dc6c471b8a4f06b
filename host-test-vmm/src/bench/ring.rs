//! `host-test-vmm bench ring`: VMBus ring throughput against the `rtrb` SPSC
//! queue (64-byte packets, packets/s) and against `memcpy` (4 KiB packets,
//! bytes/s), side by side in one process.
//!
//! The VMBus ring runs in the guest-to-host direction as a channel uses it:
//! the producer is the guest's `RingSender<PageRefRing>` over `PageRef`s into
//! the guest RAM of an in-process partition ([`InProcess::page`]), the
//! consumer the host's `RingReceiver<GuestRingMemory>` over the same pages
//! named by PFN, and the pages are deliberately not contiguous (a control
//! page and 16 scattered data pages: a 64 KiB data area). Producer and
//! consumer are two threads; the "interrupts" between them are flags set only
//! when the ring's commit says to signal (writer: empty to non-empty with the
//! reader's interrupt mask clear; reader: free space crossed the writer's
//! pending_send_sz), and a side that finds the ring empty or full waits for
//! its flag as a driver would wait for its interrupt. So a lost wakeup stalls
//! the run, which is reported as an error after a timeout, and the counts of
//! those signals per packet are what a real VM pays in exits and interrupts.
//!
//! `rtrb` gets a queue of `[u8; 64]` items with the same 64 KiB of storage,
//! once with per-item `push`/`pop` and once with `push_partial_slice` /
//! `pop_partial_slice` of up to K items (the closest thing to the ring's
//! batch of K packets per commit); it has no notifications, both threads poll
//! with the same back-off as the ring's waits. The `memcpy` side copies each
//! 4 KiB packet into a slot of a 64 KiB buffer and back out on one thread.
//!
//! Every consumer checks every packet (a sequence number at both ends of the
//! payload, the pattern in between, and for the VMBus ring the descriptor's
//! transaction id), so a broken ring fails the benchmark instead of producing
//! a fast number. The memcpy side pays for the same stamping and checking.
//!
//! Rounds alternate the order of the sides; we report medians over rounds,
//! min/max, and the ratios with their goals (ring / rtrb push-pop >= 1.0,
//! ring 4 KiB / memcpy >= 0.5), saying plainly when a goal is missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use hypercall::page::PageRef;
use vmbus_guest::packet::PacketType;
use vmbus_guest::ring::{
    init_control, OutgoingPacket, PacketInfo, PageRefRing, RingError, RingMemory, RingReceiver,
    RingSender,
};

use crate::hv::inprocess::InProcess;
use crate::hv::PAGE_SIZE;
use crate::vmbus::GuestRingMemory;

/// Payload of the small packets (bytes).
pub const SMALL_PAYLOAD: usize = 64;
/// Payload of the large packets (bytes).
pub const LARGE_PAYLOAD: usize = 4096;
/// Data pages of the ring (and storage of the other sides): 64 KiB.
pub const DATA_PAGES: usize = 16;
/// Bytes of the ring's data area, and of rtrb's and memcpy's storage.
pub const RING_DATA_BYTES: usize = DATA_PAGES * PAGE_SIZE as usize;
/// The 4 KiB runs move `packets / LARGE_DIVISOR` packets.
pub const LARGE_DIVISOR: u64 = 16;
/// Goal for VMBus ring / rtrb push-pop, 64-byte packets/s.
pub const GOAL_VS_RTRB: f64 = 1.0;
/// Goal for VMBus ring / memcpy, 4 KiB bytes/s.
pub const GOAL_VS_MEMCPY: f64 = 0.5;

/// Control page of the benchmark ring (guest PFN).
const CONTROL_PFN: u64 = 0x40;
/// Guest RAM of the in-process partition that holds the ring.
const RAM_BYTES: usize = 2 << 20;

/// Why the ring benchmark could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum RingBenchError {
    /// The parameters make no sense.
    #[error("invalid benchmark parameters: {0}")]
    Invalid(&'static str),
    /// The partition or its ring pages could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// The VMBus ring refused an operation.
    #[error("{side}: ring error: {error}")]
    Ring {
        /// Which side and run.
        side: String,
        /// What the ring said.
        error: RingError,
    },
    /// A consumer received something other than the packet that was due.
    #[error("{side}: packet {seq} corrupt: {detail}")]
    Corrupt {
        /// Which side and run.
        side: String,
        /// The sequence number that was due.
        seq: u64,
        /// What was wrong.
        detail: String,
    },
    /// A side waited longer than the stall timeout without progress (a lost
    /// wakeup or a wedged peer).
    #[error("{side}: no progress for {waited:?} while waiting for {what}")]
    Stalled {
        /// Which side and run.
        side: String,
        /// What it waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// A benchmark thread panicked.
    #[error("{0}: benchmark thread panicked")]
    Panicked(String),
}

/// Parameters of [`ring_throughput`].
#[derive(Debug, Clone, Copy)]
pub struct RingBenchConfig {
    /// 64-byte packets per side per round (the 4 KiB runs move
    /// `packets / 16`, at least 1).
    pub packets: u64,
    /// Rounds; each runs every side once, in alternating order.
    pub rounds: u32,
    /// K: packets the VMBus producer stages per commit and the consumer reads
    /// per commit; items per rtrb slice operation.
    pub batch: u32,
    /// A side that waits this long without progress fails the run.
    pub stall_timeout: Duration,
}

impl Default for RingBenchConfig {
    fn default() -> Self {
        Self {
            packets: 1_000_000,
            rounds: 7,
            batch: 16,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RingSide {
    /// Short name.
    pub name: String,
    /// Exactly what the producer and consumer do.
    pub what: String,
    /// `packets/s` or `bytes/s` (payload bytes).
    pub unit: &'static str,
    /// Payload bytes per packet.
    pub payload_bytes: usize,
    /// Packets per round.
    pub packets: u64,
    /// Median over rounds.
    pub median: f64,
    /// Slowest round.
    pub min: f64,
    /// Fastest round.
    pub max: f64,
    /// Per round, in run order.
    pub samples: Vec<f64>,
    /// Writer commits that said "signal the reader", per packet (VMBus only).
    pub reader_signals_per_packet: Option<f64>,
    /// Reader commits that said "signal the writer" (pending_send_sz), per
    /// packet (VMBus only).
    pub writer_signals_per_packet: Option<f64>,
    /// Per packet: VMBus, times the producer found the ring full and waited
    /// for the reader's signal (one-thread lines: fill cycles); rtrb, failed
    /// push attempts.
    pub full_waits_per_packet: Option<f64>,
    /// Per packet: VMBus, times the consumer found the ring empty and waited
    /// for the writer's signal; rtrb, failed pop attempts.
    pub empty_waits_per_packet: Option<f64>,
}

/// One ratio with its goal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RingRatio {
    /// What is divided by what.
    pub name: &'static str,
    /// The ratio of the medians.
    pub value: f64,
    /// The median of the per-round ratios (both sides ran in the same round,
    /// so this pairs runs that saw similar noise).
    pub paired_median: f64,
    /// The goal (at least this), if there is one.
    pub goal: Option<f64>,
    /// Whether the goal is met (true when there is no goal).
    pub met: bool,
}

/// Result of [`ring_throughput`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct RingBenchReport {
    /// Benchmark name.
    pub bench: &'static str,
    /// Rounds.
    pub rounds: u32,
    /// K.
    pub batch: u32,
    /// Bytes of ring data area / rtrb storage / memcpy buffer.
    pub storage_bytes: usize,
    /// What memory the VMBus ring runs over.
    pub ring_memory: String,
    /// The sides.
    pub sides: Vec<RingSide>,
    /// The ratios.
    pub ratios: Vec<RingRatio>,
}

impl RingBenchReport {
    /// A table for humans.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "ring throughput ({} rounds, alternating order; K = {}; storage {} KiB each)\n\
             ring memory: {}\n",
            self.rounds,
            self.batch,
            self.storage_bytes / 1024,
            self.ring_memory
        );
        s.push_str(&format!(
            "{:<34} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "side", "unit", "median", "min", "max", "sig->rd", "sig->wr", "fullwait", "emptywait"
        ));
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        for side in &self.sides {
            let scale = if side.unit == "bytes/s" {
                (1e9, "GB/s")
            } else {
                (1e6, "Mpkt/s")
            };
            s.push_str(&format!(
                "{:<34} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>9} {:>9} {:>9}\n",
                side.name,
                scale.1,
                side.median / scale.0,
                side.min / scale.0,
                side.max / scale.0,
                opt(side.reader_signals_per_packet),
                opt(side.writer_signals_per_packet),
                opt(side.full_waits_per_packet),
                opt(side.empty_waits_per_packet),
            ));
        }
        s.push_str(
            "(per packet: sig->rd / sig->wr = commits that said to signal the reader / the \
             writer; fullwait / emptywait = VMBus: times the producer / consumer blocked for \
             a signal, rtrb: failed push / pop attempts)\n",
        );
        for side in &self.sides {
            s.push_str(&format!("  {}: {}\n", side.name, side.what));
        }
        s.push_str("ratios: of the medians [median of the per-round ratios]\n");
        for r in &self.ratios {
            match r.goal {
                Some(goal) => s.push_str(&format!(
                    "ratio {}: {:.3} [per-round median {:.3}] (goal >= {}): {}\n",
                    r.name,
                    r.value,
                    r.paired_median,
                    goal,
                    if r.met { "met" } else { "GOAL MISSED" }
                )),
                None => s.push_str(&format!(
                    "ratio {}: {:.3} [per-round median {:.3}]\n",
                    r.name, r.value, r.paired_median
                )),
            }
        }
        s
    }
}

/// The payload pattern every side sends; [`stamp`] puts the sequence number
/// into its first and (inverted) last 8 bytes.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
        .collect()
}

fn stamp(buf: &mut [u8], seq: u64) {
    let n = buf.len();
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[n - 8..].copy_from_slice(&(!seq).to_le_bytes());
}

/// Checks a received payload against the pattern stamped with `seq`.
fn check_payload(got: &[u8], pattern: &[u8], seq: u64) -> Result<(), String> {
    let n = pattern.len();
    if got.len() != n {
        return Err(format!("{} payload bytes instead of {n}", got.len()));
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let (head, tail) = (word(&got[..8]), !word(&got[n - 8..]));
    if head != seq || tail != seq {
        return Err(format!("carries sequence numbers {head} / {tail}"));
    }
    if got[8..n - 8] != pattern[8..n - 8] {
        return Err("payload differs from the pattern".into());
    }
    Ok(())
}

/// Busy-wait iterations (PAUSE) before a waiter starts yielding the CPU: a
/// few microseconds, so a peer that is running wakes us without a trip
/// through the scheduler, as a polling driver would.
/// (Longer spinning, e.g. 2048, made every two-thread side slower and
/// noisier on this overcommitted 2-CPU machine.)
const SPINS_BEFORE_YIELD: u32 = 64;

/// Spin, then yield; fails after `stall` without progress.
struct Backoff {
    spins: u32,
    since: Option<Instant>,
    stall: Duration,
}

impl Backoff {
    fn new(stall: Duration) -> Self {
        Self {
            spins: 0,
            since: None,
            stall,
        }
    }

    fn reset(&mut self) {
        self.spins = 0;
        self.since = None;
    }

    fn snooze(&mut self, side: &str, what: &'static str) -> Result<(), RingBenchError> {
        self.spins = self.spins.wrapping_add(1);
        if self.spins < SPINS_BEFORE_YIELD {
            std::hint::spin_loop();
            return Ok(());
        }
        std::thread::yield_now();
        if self.spins.is_multiple_of(64) {
            let since = *self.since.get_or_insert_with(Instant::now);
            let waited = since.elapsed();
            if waited > self.stall {
                return Err(RingBenchError::Stalled {
                    side: side.to_string(),
                    what,
                    waited,
                });
            }
        }
        Ok(())
    }
}

/// The two threads' shared state: the "interrupt" flags and an abort flag so
/// one side's failure stops the other.
struct Shared {
    reader_event: AtomicBool,
    writer_event: AtomicBool,
    abort: AtomicBool,
    start: Barrier,
    stall: Duration,
}

impl Shared {
    fn new(stall: Duration) -> Self {
        Self {
            reader_event: AtomicBool::new(false),
            writer_event: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            start: Barrier::new(2),
            stall,
        }
    }

    /// Waits for `event` (consuming it) like a driver waits for its interrupt.
    fn wait(
        &self,
        event: &AtomicBool,
        side: &str,
        what: &'static str,
    ) -> Result<(), RingBenchError> {
        let mut b = Backoff::new(self.stall);
        loop {
            if event.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
            if self.abort.load(Ordering::Relaxed) {
                // The peer failed; its error is the one reported.
                return Err(RingBenchError::Stalled {
                    side: side.to_string(),
                    what: "a peer that gave up",
                    waited: Duration::ZERO,
                });
            }
            b.snooze(side, what)?;
        }
    }

    /// Runs `f` as one side; on failure tells the peer to give up.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T, RingBenchError>) -> Result<T, RingBenchError> {
        let r = f();
        if r.is_err() {
            self.abort.store(true, Ordering::Relaxed);
        }
        r
    }
}

/// What one producer/consumer run measured.
#[derive(Debug, Clone, Copy, Default)]
struct RunStats {
    elapsed: Duration,
    reader_signals: u64,
    writer_signals: u64,
    full_waits: u64,
    empty_waits: u64,
}

/// Joins the two sides of a run, preferring the error that is not a mere
/// reaction to the peer giving up.
fn join_sides<P, C>(
    name: &str,
    producer: std::thread::ScopedJoinHandle<'_, Result<P, RingBenchError>>,
    consumer: std::thread::ScopedJoinHandle<'_, Result<C, RingBenchError>>,
) -> Result<(P, C), RingBenchError> {
    let p = producer
        .join()
        .map_err(|_| RingBenchError::Panicked(format!("{name} producer")))?;
    let c = consumer
        .join()
        .map_err(|_| RingBenchError::Panicked(format!("{name} consumer")))?;
    let secondary = |e: &RingBenchError| matches!(e, RingBenchError::Stalled { waited, .. } if waited.is_zero());
    match (p, c) {
        (Ok(p), Ok(c)) => Ok((p, c)),
        (Err(pe), Err(ce)) => Err(if secondary(&ce) { pe } else { ce }),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// One VMBus ring run: `packets` packets of `payload` bytes from a
/// `RingSender` over `tx` to a `RingReceiver` over `rx` (the same ring
/// memory seen from the two sides), K per commit on both sides.
fn run_vmbus<S, R>(
    name: &str,
    tx: S,
    rx: R,
    payload: usize,
    packets: u64,
    batch: u32,
    stall: Duration,
) -> Result<RunStats, RingBenchError>
where
    S: RingMemory + Send,
    R: RingMemory + Send,
{
    let ring_err = |side: &str| {
        let side = format!("{name} {side}");
        move |error| RingBenchError::Ring {
            side: side.clone(),
            error,
        }
    };
    init_control(&rx).map_err(ring_err("setup"))?;
    let mut sender = RingSender::new(tx).map_err(ring_err("producer"))?;
    let mut receiver = RingReceiver::new(rx).map_err(ring_err("consumer"))?;
    let shared = Shared::new(stall);
    let pattern = pattern(payload);
    let batch = batch.max(1);

    let producer = |tx: &mut RingSender<S>| -> Result<RunStats, RingBenchError> {
        let side = format!("{name} producer");
        let err = ring_err("producer");
        let mut st = RunStats::default();
        let mut buf = pattern.clone();
        let mut staged = 0;
        let mut seq = 0;
        // The error mapper is built once: formatting it per commit would be
        // measured as ring cost.
        let commit = |tx: &mut RingSender<S>, st: &mut RunStats| {
            if tx.commit().map_err(&err)?.needed() {
                st.reader_signals += 1;
                shared.reader_event.store(true, Ordering::Release);
            }
            Ok::<_, RingBenchError>(())
        };
        shared.start.wait();
        while seq < packets {
            stamp(&mut buf, seq);
            let parts = [&buf[..]];
            match tx.stage(&OutgoingPacket::inband(seq, false, &parts)) {
                Ok(()) => {
                    seq += 1;
                    staged += 1;
                    if staged == batch {
                        commit(tx, &mut st)?;
                        staged = 0;
                    }
                }
                Err(RingError::NotEnoughSpace { needed, .. }) => {
                    if staged > 0 {
                        commit(tx, &mut st)?;
                        staged = 0;
                    }
                    // Flow control as a driver does it: ask to be signalled
                    // once the packet fits, unless it fits already.
                    if !tx.request_space(needed as u32).map_err(&err)? {
                        st.full_waits += 1;
                        shared.wait(&shared.writer_event, &side, "space (pending_send_sz)")?;
                    }
                }
                Err(e) => return Err(err(e)),
            }
        }
        if staged > 0 {
            commit(tx, &mut st)?;
        }
        Ok(st)
    };

    let consumer = |rx: &mut RingReceiver<R>| -> Result<RunStats, RingBenchError> {
        let side = format!("{name} consumer");
        let err = ring_err("consumer");
        let mut st = RunStats::default();
        let mut buf = vec![0u8; payload + 64];
        let mut got = 0;
        shared.start.wait();
        let t0 = Instant::now();
        rx.begin_read();
        while got < packets {
            let mut n = 0;
            while n < batch && got < packets {
                let Some(info) = rx.try_read(&mut buf).map_err(&err)? else {
                    break;
                };
                check_packet(&buf, info, &pattern, got).map_err(|detail| {
                    RingBenchError::Corrupt {
                        side: side.clone(),
                        seq: got,
                        detail,
                    }
                })?;
                got += 1;
                n += 1;
            }
            if n > 0 {
                if rx.commit().map_err(&err)?.needed() {
                    st.writer_signals += 1;
                    shared.writer_event.store(true, Ordering::Release);
                }
                continue;
            }
            // Empty: unmask and look once more (the producer did not signal
            // while we were masked), then wait for the interrupt.
            if rx.end_read().map_err(&err)? {
                rx.begin_read();
                continue;
            }
            st.empty_waits += 1;
            shared.wait(&shared.reader_event, &side, "data (interrupt)")?;
            rx.begin_read();
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    };

    let (p, c) = std::thread::scope(|s| {
        let p = s.spawn(|| shared.guard(|| producer(&mut sender)));
        let c = s.spawn(|| shared.guard(|| consumer(&mut receiver)));
        join_sides(name, p, c)
    })?;
    Ok(RunStats {
        elapsed: c.elapsed,
        reader_signals: p.reader_signals,
        writer_signals: c.writer_signals,
        full_waits: p.full_waits,
        empty_waits: c.empty_waits,
    })
}

/// Checks a packet the ring receiver copied into `buf`.
fn check_packet(buf: &[u8], info: PacketInfo, pattern: &[u8], seq: u64) -> Result<(), String> {
    let view = info.view(buf).ok_or("descriptor does not parse")?;
    if view.packet_type() != PacketType::DATA_INBAND || view.transaction_id() != seq {
        return Err(format!(
            "descriptor type {:?}, transaction id {}",
            view.packet_type(),
            view.transaction_id()
        ));
    }
    check_payload(view.payload(), pattern, seq)
}

/// The ring without the second thread: one thread stages packets (K per
/// commit) until the ring is full or the run done, then reads them all (K
/// per commit), and again. What the ring's own code and copies cost, without
/// cache-line transfers, waits and scheduling between two CPUs.
fn run_vmbus_one_thread<S: RingMemory, R: RingMemory>(
    name: &str,
    tx: S,
    rx: R,
    payload: usize,
    packets: u64,
    batch: u32,
) -> Result<RunStats, RingBenchError> {
    let err = |error| RingBenchError::Ring {
        side: name.to_string(),
        error,
    };
    init_control(&rx).map_err(err)?;
    let mut tx = RingSender::new(tx).map_err(err)?;
    let mut rx = RingReceiver::new(rx).map_err(err)?;
    let pattern = pattern(payload);
    let mut out = pattern.clone();
    let mut buf = vec![0u8; payload + 64];
    let batch = u64::from(batch.max(1));
    let mut st = RunStats::default();
    let (mut sent, mut got) = (0u64, 0u64);
    let t0 = Instant::now();
    while got < packets {
        let mut staged = 0;
        while sent < packets {
            stamp(&mut out, sent);
            let parts = [&out[..]];
            match tx.stage(&OutgoingPacket::inband(sent, false, &parts)) {
                Ok(()) => {
                    sent += 1;
                    staged += 1;
                }
                Err(RingError::NotEnoughSpace { .. }) => break,
                Err(e) => return Err(err(e)),
            }
            if staged == batch {
                st.reader_signals += u64::from(tx.commit().map_err(err)?.needed());
                staged = 0;
            }
        }
        st.reader_signals += u64::from(tx.commit().map_err(err)?.needed());
        st.full_waits += 1;
        let mut n = 0;
        while got < sent {
            let info =
                rx.try_read(&mut buf)
                    .map_err(err)?
                    .ok_or_else(|| RingBenchError::Corrupt {
                        side: name.to_string(),
                        seq: got,
                        detail: "ring empty before all committed packets were read".into(),
                    })?;
            check_packet(&buf, info, &pattern, got).map_err(|detail| RingBenchError::Corrupt {
                side: name.to_string(),
                seq: got,
                detail,
            })?;
            got += 1;
            n += 1;
            if n == batch {
                st.writer_signals += u64::from(rx.commit().map_err(err)?.needed());
                n = 0;
            }
        }
        st.writer_signals += u64::from(rx.commit().map_err(err)?.needed());
    }
    st.elapsed = t0.elapsed();
    Ok(st)
}

type Item = [u8; SMALL_PAYLOAD];

/// One rtrb run with `[u8; 64]` items and 64 KiB of storage: per-item
/// push/pop (`batch == None`) or slices of up to K items.
fn run_rtrb(
    name: &str,
    packets: u64,
    batch: Option<u32>,
    stall: Duration,
) -> Result<RunStats, RingBenchError> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Item>::new(RING_DATA_BYTES / SMALL_PAYLOAD);
    let shared = Shared::new(stall);
    let pattern = pattern(SMALL_PAYLOAD);
    let template: Item = pattern.as_slice().try_into().unwrap_or([0; SMALL_PAYLOAD]);
    let k = batch.unwrap_or(1).max(1) as usize;

    let producer = |tx: &mut rtrb::Producer<Item>| -> Result<RunStats, RingBenchError> {
        let side = format!("{name} producer");
        let mut st = RunStats::default();
        let mut b = Backoff::new(stall);
        let mut local = vec![template; k];
        shared.start.wait();
        let mut seq = 0;
        while seq < packets {
            if batch.is_none() {
                let mut item = template;
                stamp(&mut item, seq);
                while let Err(rtrb::PushError::Full(_)) = tx.push(item) {
                    st.full_waits += 1;
                    if shared.abort.load(Ordering::Relaxed) {
                        return Ok(st);
                    }
                    b.snooze(&side, "a free slot")?;
                }
                seq += 1;
            } else {
                let n = (packets - seq).min(k as u64) as usize;
                for (i, item) in local[..n].iter_mut().enumerate() {
                    stamp(item, seq + i as u64);
                }
                let mut rest = &local[..n];
                while !rest.is_empty() {
                    let (pushed, left) = tx.push_partial_slice(rest);
                    if pushed.is_empty() {
                        st.full_waits += 1;
                        if shared.abort.load(Ordering::Relaxed) {
                            return Ok(st);
                        }
                        b.snooze(&side, "free slots")?;
                    }
                    rest = left;
                }
                seq += n as u64;
            }
            b.reset();
        }
        Ok(st)
    };

    let consumer = |rx: &mut rtrb::Consumer<Item>| -> Result<RunStats, RingBenchError> {
        let side = format!("{name} consumer");
        let mut st = RunStats::default();
        let mut b = Backoff::new(stall);
        let mut local = vec![[0u8; SMALL_PAYLOAD]; k];
        let corrupt = |seq, detail| RingBenchError::Corrupt {
            side: side.clone(),
            seq,
            detail,
        };
        shared.start.wait();
        let t0 = Instant::now();
        let mut got = 0;
        while got < packets {
            if batch.is_none() {
                match rx.pop() {
                    Ok(item) => {
                        check_payload(&item, &pattern, got).map_err(|d| corrupt(got, d))?;
                        got += 1;
                        b.reset();
                    }
                    Err(_) => {
                        st.empty_waits += 1;
                        b.snooze(&side, "an item")?;
                    }
                }
            } else {
                let want = (packets - got).min(k as u64) as usize;
                let (popped, _) = rx.pop_partial_slice(&mut local[..want]);
                if popped.is_empty() {
                    st.empty_waits += 1;
                    b.snooze(&side, "items")?;
                    continue;
                }
                for item in popped.iter() {
                    check_payload(item, &pattern, got).map_err(|d| corrupt(got, d))?;
                    got += 1;
                }
                b.reset();
            }
        }
        st.elapsed = t0.elapsed();
        Ok(st)
    };

    let (p, c) = std::thread::scope(|s| {
        let p = s.spawn(|| shared.guard(|| producer(&mut tx)));
        let c = s.spawn(|| shared.guard(|| consumer(&mut rx)));
        join_sides(name, p, c)
    })?;
    Ok(RunStats {
        elapsed: c.elapsed,
        full_waits: p.full_waits,
        empty_waits: c.empty_waits,
        ..RunStats::default()
    })
}

/// The memcpy floor: each `payload`-byte packet is stamped, copied into the
/// next slot of a 64 KiB buffer and out again, and checked, on one thread.
fn run_memcpy(name: &str, payload: usize, packets: u64) -> Result<RunStats, RingBenchError> {
    let pattern = pattern(payload);
    let mut src = pattern.clone();
    let mut dst = vec![0u8; payload];
    let mut buffer = vec![0u8; RING_DATA_BYTES];
    let slots = (RING_DATA_BYTES / payload).max(1) as u64;
    let t0 = Instant::now();
    for seq in 0..packets {
        stamp(&mut src, seq);
        let at = (seq % slots) as usize * payload;
        buffer[at..at + payload].copy_from_slice(&src);
        // Keep the compiler from copying src to dst directly.
        let slot = std::hint::black_box(&buffer[at..at + payload]);
        dst.copy_from_slice(slot);
        check_payload(&dst, &pattern, seq).map_err(|detail| RingBenchError::Corrupt {
            side: name.to_string(),
            seq,
            detail,
        })?;
    }
    Ok(RunStats {
        elapsed: t0.elapsed(),
        ..RunStats::default()
    })
}

/// The ring's pages in guest RAM: a control page and scattered data pages
/// (neither contiguous nor ascending).
fn ring_pfns() -> Vec<u64> {
    let mut pfns = vec![CONTROL_PFN];
    pfns.extend((0..DATA_PAGES as u64).map(|i| 0x80 + ((i * 5) % DATA_PAGES as u64) * 3));
    pfns
}

/// The guest side's `PageRef`s and the host side's memory for one ring.
fn ring_pages(part: &InProcess) -> Result<(Vec<PageRef<'_>>, GuestRingMemory), RingBenchError> {
    let pfns = ring_pfns();
    let refs = pfns
        .iter()
        .map(|&pfn| part.page(pfn * PAGE_SIZE))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RingBenchError::Setup(format!("ring page: {e}")))?;
    let host = GuestRingMemory::new(part.memory().clone(), &pfns).map_err(|error| {
        RingBenchError::Ring {
            side: "setup".into(),
            error,
        }
    })?;
    Ok((refs, host))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One side under test and what it has measured so far.
struct Contender {
    side: RingSide,
    totals: RunStats,
    rounds: u64,
    counts_signals: bool,
}

impl Contender {
    fn new(name: &str, what: String, payload: usize, packets: u64, signals: bool) -> Self {
        Self {
            side: RingSide {
                name: name.to_string(),
                what,
                unit: if payload == SMALL_PAYLOAD {
                    "packets/s"
                } else {
                    "bytes/s"
                },
                payload_bytes: payload,
                packets,
                median: 0.0,
                min: 0.0,
                max: 0.0,
                samples: Vec::new(),
                reader_signals_per_packet: None,
                writer_signals_per_packet: None,
                full_waits_per_packet: None,
                empty_waits_per_packet: None,
            },
            totals: RunStats::default(),
            rounds: 0,
            counts_signals: signals,
        }
    }

    fn record(&mut self, run: RunStats) {
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        let per_packet = if self.side.unit == "bytes/s" {
            self.side.payload_bytes as f64
        } else {
            1.0
        };
        self.side
            .samples
            .push(self.side.packets as f64 * per_packet / secs);
        self.totals.reader_signals += run.reader_signals;
        self.totals.writer_signals += run.writer_signals;
        self.totals.full_waits += run.full_waits;
        self.totals.empty_waits += run.empty_waits;
        self.rounds += 1;
    }

    fn finish(mut self, threads: bool) -> RingSide {
        let s = &mut self.side;
        s.median = median(&s.samples);
        s.min = s.samples.iter().copied().fold(f64::INFINITY, f64::min);
        s.max = s.samples.iter().copied().fold(0.0, f64::max);
        let all = (s.packets * self.rounds).max(1) as f64;
        if self.counts_signals {
            s.reader_signals_per_packet = Some(self.totals.reader_signals as f64 / all);
            s.writer_signals_per_packet = Some(self.totals.writer_signals as f64 / all);
        }
        if threads {
            s.full_waits_per_packet = Some(self.totals.full_waits as f64 / all);
            s.empty_waits_per_packet = Some(self.totals.empty_waits as f64 / all);
        }
        self.side
    }
}

/// The sides, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Guest PageRefRing sender -> host GuestRingMemory receiver, two threads.
    Vmbus { payload: usize, batch: u32 },
    /// The same ring on one thread.
    VmbusOneThread { payload: usize },
    /// Diagnostic: one thread, GuestRingMemory on both ends (no PageRef copies).
    VmbusOneThreadHostMemory { payload: usize },
    /// rtrb per item (`None`) or by slices of K.
    Rtrb { batch: Option<u32> },
    /// The memcpy floor.
    Memcpy,
}

/// Runs the ring benchmark: every side once per round, alternating order.
pub fn ring_throughput(cfg: RingBenchConfig) -> Result<RingBenchReport, RingBenchError> {
    if cfg.packets == 0 || cfg.rounds == 0 || cfg.batch == 0 {
        return Err(RingBenchError::Invalid(
            "packets, rounds and batch must be at least 1",
        ));
    }
    let part = InProcess::new(1, RAM_BYTES)
        .map_err(|e| RingBenchError::Setup(format!("in-process partition: {e}")))?;
    let (refs, host) = ring_pages(&part)?;
    let guest = PageRefRing::new(&refs).map_err(|error| RingBenchError::Ring {
        side: "setup".into(),
        error,
    })?;
    let k = cfg.batch;
    let small = cfg.packets;
    let large = (cfg.packets / LARGE_DIVISOR).max(1);
    let two_threads = |k: u32| {
        format!(
            "guest RingSender<PageRefRing> stages {k} packet(s) per commit (on a full ring: commit, \
             request_space, wait for the reader's signal); host RingReceiver<GuestRingMemory> \
             reads up to {k} per commit inside begin_read/end_read, waits for the writer's \
             signal when empty; in-band packets, transaction id = sequence number"
        )
    };
    let one_thread = format!(
        "the same ring (guest PageRefRing sender, host GuestRingMemory receiver) on ONE thread: \
         stage until full ({k} per commit), then read all ({k} per commit); no waits; the \
         fullwait column counts fill cycles (informative: the ring's own cost without \
         cross-CPU traffic)"
    );
    let host_both = format!(
        "diagnostic: as the 1-thread line but GuestRingMemory (vm-memory copies) at BOTH ends, \
         so no PageRef::write_bytes; shows what the guest's PageRef copy costs ({k} per commit)"
    );
    let rtrb_items = "rtrb::Producer::push / Consumer::pop of one [u8; 64] item at a time, 1024 \
                      slots; both threads poll (spin, then yield)"
        .to_string();
    let rtrb_slices = format!(
        "rtrb push_partial_slice / pop_partial_slice of up to {k} [u8; 64] items, 1024 slots; \
         both threads poll (spin, then yield)"
    );
    let memcpy = "stamp a 4 KiB packet, copy_from_slice it into the next slot of a 64 KiB buffer \
                  and out into a packet buffer, check it; one thread"
        .to_string();
    let (s, l) = (SMALL_PAYLOAD, LARGE_PAYLOAD);
    let mut sides = [
        (
            Kind::Vmbus {
                payload: s,
                batch: k,
            },
            format!("vmbus 64 B, K={k}"),
            two_threads(k),
            small,
        ),
        (
            Kind::Vmbus {
                payload: s,
                batch: 1,
            },
            "vmbus 64 B, K=1".into(),
            two_threads(1),
            small,
        ),
        (
            Kind::Rtrb { batch: None },
            "rtrb push/pop [u8;64]".into(),
            rtrb_items,
            small,
        ),
        (
            Kind::Rtrb { batch: Some(k) },
            format!("rtrb slices [u8;64], K={k}"),
            rtrb_slices,
            small,
        ),
        (
            Kind::VmbusOneThread { payload: s },
            format!("vmbus 64 B, K={k}, 1 thread"),
            one_thread.clone(),
            small,
        ),
        (
            Kind::Vmbus {
                payload: l,
                batch: k,
            },
            format!("vmbus 4 KiB, K={k}"),
            two_threads(k),
            large,
        ),
        (
            Kind::VmbusOneThread { payload: l },
            format!("vmbus 4 KiB, K={k}, 1 thread"),
            one_thread,
            large,
        ),
        (
            Kind::VmbusOneThreadHostMemory { payload: l },
            "4 KiB, 1 thr, host mem both".to_string(),
            host_both,
            large,
        ),
        (
            Kind::Memcpy,
            "memcpy 4 KiB (1 thread)".into(),
            memcpy,
            large,
        ),
    ]
    .map(|(kind, name, what, packets)| {
        let payload = match kind {
            Kind::Vmbus { payload, .. }
            | Kind::VmbusOneThread { payload }
            | Kind::VmbusOneThreadHostMemory { payload } => payload,
            Kind::Rtrb { .. } => SMALL_PAYLOAD,
            Kind::Memcpy => LARGE_PAYLOAD,
        };
        let vmbus = !matches!(kind, Kind::Rtrb { .. } | Kind::Memcpy);
        (kind, Contender::new(&name, what, payload, packets, vmbus))
    });
    let n = sides.len();
    let stall = cfg.stall_timeout;
    for round in 0..cfg.rounds {
        for i in 0..n {
            let i = if round % 2 == 0 { i } else { n - 1 - i };
            let (kind, c) = &mut sides[i];
            let name = c.side.name.clone();
            let packets = c.side.packets;
            let run = match *kind {
                Kind::Vmbus { payload, batch } => {
                    run_vmbus(&name, guest, host.clone(), payload, packets, batch, stall)?
                }
                Kind::VmbusOneThread { payload } => {
                    run_vmbus_one_thread(&name, guest, host.clone(), payload, packets, k)?
                }
                Kind::VmbusOneThreadHostMemory { payload } => {
                    run_vmbus_one_thread(&name, host.clone(), host.clone(), payload, packets, k)?
                }
                Kind::Rtrb { batch } => run_rtrb(&name, packets, batch, stall)?,
                Kind::Memcpy => run_memcpy(&name, LARGE_PAYLOAD, packets)?,
            };
            tracing::debug!(side = %name, round, elapsed = ?run.elapsed, "ring bench run");
            c.record(run);
        }
    }
    let sides: Vec<RingSide> = sides
        .into_iter()
        .map(|(kind, c)| c.finish(kind != Kind::Memcpy))
        .collect();
    let ratio = |name, a: usize, b: usize, goal: Option<f64>| {
        let value = sides[a].median / sides[b].median;
        let paired: Vec<f64> = sides[a]
            .samples
            .iter()
            .zip(&sides[b].samples)
            .map(|(x, y)| x / y)
            .collect();
        RingRatio {
            name,
            value,
            paired_median: median(&paired),
            goal,
            met: goal.is_none_or(|g| value >= g),
        }
    };
    let ratios = vec![
        ratio(
            "vmbus 64 B K / rtrb push/pop (packets/s)",
            0,
            2,
            Some(GOAL_VS_RTRB),
        ),
        ratio("vmbus 64 B K / rtrb slices K (packets/s)", 0, 3, None),
        ratio("vmbus 64 B K=1 / rtrb push/pop (packets/s)", 1, 2, None),
        ratio(
            "vmbus 4 KiB K / memcpy 4 KiB (bytes/s)",
            5,
            8,
            Some(GOAL_VS_MEMCPY),
        ),
        ratio(
            "vmbus 4 KiB K, 1 thread / memcpy 4 KiB (bytes/s)",
            6,
            8,
            None,
        ),
        ratio(
            "4 KiB 1 thread host memory both ends / memcpy (bytes/s)",
            7,
            8,
            None,
        ),
    ];
    Ok(RingBenchReport {
        bench: "ring",
        rounds: cfg.rounds,
        batch: cfg.batch,
        storage_bytes: RING_DATA_BYTES,
        ring_memory: format!(
            "guest RAM of an in-process partition (GuestMemoryMmap); guest producer through \
             PageRefRing (PageRefs from InProcess::page), host consumer through GuestRingMemory; \
             control PFN {:#x}, data PFNs {:x?} (scattered, not contiguous)",
            CONTROL_PFN,
            &ring_pfns()[1..]
        ),
        sides,
        ratios,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use vmbus_guest::ring::control;

    fn tiny() -> RingBenchConfig {
        RingBenchConfig {
            packets: 3000,
            rounds: 2,
            batch: 8,
            stall_timeout: Duration::from_secs(20),
        }
    }

    #[test]
    fn tiny_run_completes_with_counts() {
        let r = ring_throughput(tiny()).unwrap();
        assert_eq!(r.sides.len(), 9);
        for s in &r.sides {
            assert_eq!(s.samples.len(), 2, "{}", s.name);
            assert!(s.median > 0.0 && s.min <= s.median && s.median <= s.max);
        }
        // The first commit on an empty ring with the mask clear always signals.
        assert!(r.sides[0].reader_signals_per_packet.unwrap() > 0.0);
        assert!(r.sides[2].reader_signals_per_packet.is_none());
        assert_eq!(r.sides[5].packets, 3000 / LARGE_DIVISOR);
        assert!(r.sides[8].reader_signals_per_packet.is_none());
        assert_eq!(r.ratios.len(), 6);
        assert!(r
            .ratios
            .iter()
            .all(|q| q.value > 0.0 && q.paired_median > 0.0));
        let table = r.to_table();
        assert!(table.contains("goal >= 1"), "{table}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["bench"], "ring");
    }

    #[test]
    fn zero_parameters_are_refused() {
        let cfg = RingBenchConfig {
            rounds: 0,
            ..tiny()
        };
        assert!(matches!(
            ring_throughput(cfg),
            Err(RingBenchError::Invalid(_))
        ));
    }

    #[test]
    fn payload_check_catches_each_kind_of_damage() {
        let p = pattern(64);
        let mut good = p.clone();
        stamp(&mut good, 42);
        assert!(check_payload(&good, &p, 42).is_ok());
        assert!(check_payload(&good, &p, 41).is_err());
        assert!(check_payload(&good[..56], &p, 42).is_err());
        for at in [0, 20, 63] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(check_payload(&bad, &p, 42).is_err(), "byte {at}");
        }
    }

    /// Ring memory that flips a bit in the `nth` packet-sized read: the
    /// host consumer then sees a damaged payload.
    struct Corrupting<M> {
        inner: M,
        countdown: AtomicU32,
    }

    impl<M: RingMemory> RingMemory for Corrupting<M> {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn read(&self, offset: usize, buf: &mut [u8]) {
            self.inner.read(offset, buf);
            if buf.len() >= SMALL_PAYLOAD && self.countdown.fetch_sub(1, Ordering::Relaxed) == 1 {
                buf[40] ^= 0x04;
            }
        }
        fn write(&self, offset: usize, data: &[u8]) {
            self.inner.write(offset, data)
        }
        fn load_u32(&self, offset: usize) -> u32 {
            self.inner.load_u32(offset)
        }
        fn store_u32(&self, offset: usize, value: u32) {
            self.inner.store_u32(offset, value)
        }
    }

    /// Ring memory whose reader never sees the write index move.
    struct HidesWrites<M>(M);

    impl<M: RingMemory> RingMemory for HidesWrites<M> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn read(&self, offset: usize, buf: &mut [u8]) {
            self.0.read(offset, buf)
        }
        fn write(&self, offset: usize, data: &[u8]) {
            self.0.write(offset, data)
        }
        fn load_u32(&self, offset: usize) -> u32 {
            if offset == control::WRITE_INDEX {
                0
            } else {
                self.0.load_u32(offset)
            }
        }
        fn store_u32(&self, offset: usize, value: u32) {
            self.0.store_u32(offset, value)
        }
    }

    #[test]
    fn corruption_in_the_ring_fails_the_run() {
        let part = InProcess::new(1, RAM_BYTES).unwrap();
        let (refs, host) = ring_pages(&part).unwrap();
        let guest = PageRefRing::new(&refs).unwrap();
        // A clean run over the same pages succeeds...
        run_vmbus(
            "clean",
            guest,
            host.clone(),
            64,
            500,
            4,
            Duration::from_secs(20),
        )
        .unwrap();
        // ...a damaged 37th packet does not.
        let bad = Corrupting {
            inner: host,
            countdown: AtomicU32::new(37),
        };
        let e = run_vmbus("bad", guest, bad, 64, 500, 4, Duration::from_secs(20)).unwrap_err();
        assert!(matches!(e, RingBenchError::Corrupt { seq: 36, .. }), "{e}");
        // The one-thread line checks packets the same way.
        let bad = Corrupting {
            inner: GuestRingMemory::new(part.memory().clone(), &ring_pfns()).unwrap(),
            countdown: AtomicU32::new(5),
        };
        let e = run_vmbus_one_thread("bad1", guest, bad, 64, 500, 4).unwrap_err();
        assert!(matches!(e, RingBenchError::Corrupt { seq: 4, .. }), "{e}");
    }

    #[test]
    fn a_ring_that_never_delivers_is_an_error_not_a_hang() {
        let part = InProcess::new(1, RAM_BYTES).unwrap();
        let (refs, host) = ring_pages(&part).unwrap();
        let guest = PageRefRing::new(&refs).unwrap();
        let e = run_vmbus(
            "blind",
            guest,
            HidesWrites(host),
            64,
            5000,
            4,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(e, RingBenchError::Stalled { .. }), "{e}");
    }

    #[test]
    fn memcpy_and_rtrb_sides_verify_and_finish() {
        assert!(run_memcpy("m", LARGE_PAYLOAD, 40).is_ok());
        let st = run_rtrb("r", 5000, Some(8), Duration::from_secs(20)).unwrap();
        assert_eq!(st.reader_signals, 0);
        run_rtrb("r1", 5000, None, Duration::from_secs(20)).unwrap();
    }

    #[test]
    fn ring_pages_are_scattered() {
        let p = ring_pfns();
        assert_eq!(p.len(), DATA_PAGES + 1);
        assert!(p.windows(2).any(|w| w[1] < w[0]));
        assert!(p.windows(2).all(|w| w[1] != w[0] + 1));
        let mut sorted = p.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), p.len());
    }
}
