//! Synthetic timers (fact sheet §2.1 STIMERn, §2.2, §4.1 timer message) and
//! the timer thread that fires them.
//!
//! Deadlines are kept in reference time. The thread sleeps on a condvar until
//! the earliest deadline (converted to host time: reference time runs at
//! 10 MHz) or until an MSR write re-arms a timer, then fires whatever is due.

use super::gmem::GuestMem;
use super::synic::{Effects, Pending, Synic};
use hypercall::msr::StimerConfig;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Timers per VP.
pub const STIMER_COUNT: usize = hypercall::msr::STIMER_COUNT as usize;

/// Upper bound on one sleep of the timer thread. Not needed for
/// correctness (every re-arm wakes the thread); it bounds the damage if the
/// guest TSC is moved under us (e.g. set by the VMM at reset).
pub const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Lower bound on one sleep of the timer thread: a guest programming a
/// periodic timer with a tiny period gets its expirations coalesced (missed
/// periods are skipped) instead of a host thread spinning.
pub const MIN_SLEEP: Duration = Duration::from_micros(50);

/// One synthetic timer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stimer {
    pub config: u64,
    pub count: u64,
    /// Next expiry in reference time, when armed.
    pub deadline: Option<u64>,
    /// An expiry message of this timer is waiting in a SINT queue.
    pub msg_queued: bool,
}

impl Stimer {
    fn cfg(&self) -> StimerConfig {
        StimerConfig::from_bits(self.config)
    }

    /// Recompute the deadline after CONFIG or COUNT changed.
    pub fn rearm(&mut self, now: u64) {
        let c = self.cfg();
        self.deadline = if !c.enable() || self.count == 0 {
            None
        } else if c.periodic() {
            Some(now.saturating_add(self.count))
        } else {
            // One-shot: COUNT is the absolute expiry; a past one fires now.
            Some(self.count)
        };
    }
}

/// Fire every due timer of one VP. Runs under that VP's lock; interrupts and
/// stats are returned in `fx`.
pub(crate) fn fire_due(
    timers: &mut [Stimer; STIMER_COUNT],
    synic: &mut Synic,
    mem: &GuestMem,
    now: u64,
    fx: &mut Effects,
) {
    for (index, t) in timers.iter_mut().enumerate() {
        let Some(deadline) = t.deadline else { continue };
        if deadline > now {
            continue;
        }
        let c = t.cfg();
        fx.timer_expirations += 1;
        if c.direct_mode() {
            fx.raises.push(c.apic_vector());
        } else if t.msg_queued {
            // The previous expiry has not reached the slot yet: this one is
            // lost (as with lazy periodic timers on Hyper-V).
            fx.timer_missed += 1;
        } else {
            let msg = Pending::Timer {
                index: index as u8,
                expiration: deadline,
            };
            if synic
                .enqueue(usize::from(c.sintx()), msg, mem, now, fx)
                .is_ok()
            {
                t.msg_queued = true;
            } else {
                fx.timer_missed += 1;
            }
        }
        if c.periodic() && t.count != 0 {
            // Next period; periods missed entirely are skipped, not replayed.
            let mut next = deadline.saturating_add(t.count);
            if next <= now {
                next = now.saturating_add(t.count);
            }
            t.deadline = Some(next);
        } else {
            t.deadline = None;
            t.config = c.with_enable(false).into_bits();
        }
    }
    // Messages that reached their slot in this call (including ones queued
    // above and delivered at once) are no longer waiting.
    for i in fx.timer_msgs_delivered.drain(..) {
        if let Some(t) = timers.get_mut(usize::from(i)) {
            t.msg_queued = false;
        }
    }
}

/// Clear `msg_queued` for the timers whose messages were delivered by a
/// SynIC flush (EOM, enable).
pub(crate) fn note_delivered(timers: &mut [Stimer; STIMER_COUNT], fx: &mut Effects) {
    for i in fx.timer_msgs_delivered.drain(..) {
        if let Some(t) = timers.get_mut(usize::from(i)) {
            t.msg_queued = false;
        }
    }
}

/// Earliest armed deadline.
pub(crate) fn earliest(timers: &[Stimer; STIMER_COUNT]) -> Option<u64> {
    timers.iter().filter_map(|t| t.deadline).min()
}

/// Wake-up control shared by the timer thread and the MSR paths.
#[derive(Debug, Default)]
pub(crate) struct TimerCtl {
    state: Mutex<CtlState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct CtlState {
    shutdown: bool,
    generation: u64,
}

impl TimerCtl {
    fn lock(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A timer was (re)armed: make the thread recompute its sleep.
    pub fn kick(&self) {
        let mut s = self.lock();
        s.generation = s.generation.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Ask the thread to exit. Idempotent.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.shutdown = true;
        self.cv.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.lock().shutdown
    }

    /// Current generation, or `None` once shut down.
    pub fn generation(&self) -> Option<u64> {
        let s = self.lock();
        (!s.shutdown).then_some(s.generation)
    }

    /// Sleep up to `timeout` (forever if `None`) unless the generation moved
    /// past `seen` or shutdown was requested. Returns false on shutdown.
    pub fn wait(&self, seen: u64, timeout: Option<Duration>) -> bool {
        let mut s = self.lock();
        if s.shutdown {
            return false;
        }
        if s.generation != seen {
            return true;
        }
        s = match timeout {
            Some(t) => {
                self.cv
                    .wait_timeout(s, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.cv.wait(s).unwrap_or_else(|e| e.into_inner()),
        };
        !s.shutdown
    }
}
