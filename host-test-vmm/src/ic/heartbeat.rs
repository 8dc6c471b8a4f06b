//! Heartbeat monitoring (fact sheet §7.4): the host sends a sequence number,
//! the guest must answer with that number plus one. The monitor keeps the
//! last sequence, counts answers, missed beats and rule violations, and
//! calls the guest alive while a valid answer is younger than the timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ic_services::framing::IcMessageType;
use ic_services::heartbeat::{HeartbeatBody, MIN_BODY_SIZE};
use serde::Serialize;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, IntoBytes};

use super::channel::{IcCore, Phase};
use super::{IcError, Service};

/// The guest's health as the heartbeat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeartbeatState {
    /// The guest has not opened the heartbeat channel.
    NotOpen,
    /// Open, versions not agreed yet.
    Negotiating,
    /// The guest matched none of the host's versions.
    NegotiationFailed,
    /// Negotiated; no answer yet, and the timeout has not passed.
    Waiting,
    /// A valid answer arrived within the timeout.
    Alive,
    /// No valid answer within the timeout.
    Dead,
}

/// What `GET /api/v1/ic.heartbeat` shows.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatStatus {
    /// The verdict.
    pub state: HeartbeatState,
    /// Shorthand: `state == alive`.
    pub alive: bool,
    /// The sequence number the guest last answered with.
    pub last_sequence: Option<u64>,
    /// Milliseconds since that answer.
    pub last_answer_ms_ago: Option<u64>,
    /// Requests sent.
    pub requests: u64,
    /// Valid answers.
    pub answers: u64,
    /// Requests not answered in time.
    pub missed: u64,
    /// Answers that broke the rule (wrong sequence, failure status, short body).
    pub violations: u64,
    /// The last violation, described.
    pub last_violation: Option<String>,
    /// The timeout used for the verdict, in milliseconds.
    pub timeout_ms: u64,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    last_seq: Option<u64>,
    last_answer: Option<Instant>,
    /// When the channel became ready (the timeout counts from here before
    /// the first answer).
    ready_since: Option<Instant>,
    requests: u64,
    answers: u64,
    missed: u64,
    violations: u64,
    last_violation: Option<String>,
}

pub(crate) struct Monitor {
    timeout: Duration,
    st: Mutex<State>,
}

impl Monitor {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            st: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel is not negotiated: forget the answer clock (a new open
    /// starts a new timeout).
    pub fn channel_not_ready(&self, core: &IcCore) {
        if core.negotiated().is_none() {
            let mut st = self.lock();
            st.ready_since = None;
            st.last_answer = None;
        }
    }

    fn violation(&self, why: String) -> IcError {
        let mut st = self.lock();
        st.violations += 1;
        tracing::warn!(why, "heartbeat rule broken");
        st.last_violation = Some(why.clone());
        IcError::BadReply {
            service: Service::Heartbeat,
            why: format!("the heartbeat rule is broken: {why}"),
        }
    }

    /// One heartbeat transaction; returns the guest's sequence number.
    pub fn beat(&self, core: &IcCore, timeout: Duration) -> Result<u64, IcError> {
        let seq = {
            let mut st = self.lock();
            st.ready_since.get_or_insert_with(Instant::now);
            st.requests += 1;
            st.next_seq
        };
        let body = HeartbeatBody {
            seq_num: U64::new(seq),
            ..HeartbeatBody::default()
        };
        let reply = match core.transact(IcMessageType::HEARTBEAT, body.as_bytes(), timeout) {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, IcError::Timeout(_)) {
                    self.lock().missed += 1;
                }
                return Err(e);
            }
        };
        if let Err(e) = core.require_ok(&reply) {
            return Err(self.violation(e.to_string()));
        }
        if reply.body.len() < MIN_BODY_SIZE {
            return Err(self.violation(format!(
                "body of {} bytes, at least {MIN_BODY_SIZE} needed",
                reply.body.len()
            )));
        }
        let got = U64::read_from_prefix(&reply.body)
            .map(|(v, _)| v.get())
            .map_err(|_| self.violation("unreadable sequence number".into()))?;
        let want = seq.wrapping_add(1);
        if got != want {
            return Err(self.violation(format!("sent {seq}, answer {got}, expected {want}")));
        }
        let mut st = self.lock();
        st.answers += 1;
        st.last_seq = Some(got);
        st.last_answer = Some(Instant::now());
        // The next request continues from the guest's number.
        st.next_seq = got;
        Ok(got)
    }

    pub fn status(&self, core: &IcCore) -> HeartbeatStatus {
        let st = self.lock();
        let now = Instant::now();
        let fresh = st
            .last_answer
            .is_some_and(|t| now.duration_since(t) <= self.timeout);
        let state = match core.phase() {
            Phase::Closed => HeartbeatState::NotOpen,
            Phase::Negotiating(_) => HeartbeatState::Negotiating,
            Phase::Failed(_) => HeartbeatState::NegotiationFailed,
            Phase::Ready(_) if fresh => HeartbeatState::Alive,
            Phase::Ready(_) => match (st.last_answer, st.ready_since) {
                (None, Some(since)) if now.duration_since(since) <= self.timeout => {
                    HeartbeatState::Waiting
                }
                (None, None) => HeartbeatState::Waiting,
                _ => HeartbeatState::Dead,
            },
        };
        HeartbeatStatus {
            state,
            alive: state == HeartbeatState::Alive,
            last_sequence: st.last_seq,
            last_answer_ms_ago: st
                .last_answer
                .map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX)),
            requests: st.requests,
            answers: st.answers,
            missed: st.missed,
            violations: st.violations,
            last_violation: st.last_violation.clone(),
            timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl super::HostIcs {
    /// The heartbeat monitor's view.
    pub fn heartbeat(&self) -> HeartbeatStatus {
        self.inner.heartbeat.status(self.core(Service::Heartbeat))
    }
}
