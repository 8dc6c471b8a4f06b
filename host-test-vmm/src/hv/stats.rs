//! Counters for the run report ([`HvStats`]).

use serde::Serialize;
use std::collections::BTreeMap;

/// What the Hyper-V emulation observed, for the run report. Keys of the maps
/// are human-readable (MSR names, call names, status names, vectors in hex)
/// so the JSON is stable and greppable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HvStats {
    /// Guest RDMSRs by MSR (name, or hex for an unknown MSR).
    pub msr_reads: BTreeMap<String, u64>,
    /// Guest WRMSRs by MSR.
    pub msr_writes: BTreeMap<String, u64>,
    /// Accesses answered with #GP, by MSR.
    pub msr_faults: BTreeMap<String, u64>,
    /// Hypercalls by call code (name, or hex for an unknown code).
    pub hypercalls_by_code: BTreeMap<String, u64>,
    /// Hypercalls by result status name.
    pub hypercalls_by_status: BTreeMap<String, u64>,
    /// Interrupts raised through the `InterruptSink`, by vector (hex).
    pub interrupts_by_vector: BTreeMap<String, u64>,
    /// Host-to-guest messages written into a message slot (any cause).
    pub messages_delivered: u64,
    /// Messages that found their slot busy (or SynIC off) and were queued.
    pub messages_queued: u64,
    /// Deliveries made because the guest wrote EOM.
    pub messages_redelivered_on_eom: u64,
    /// Messages dropped (queue full, or a slot write failed).
    pub messages_dropped: u64,
    /// Guest messages accepted by HvPostMessage (handler returned SUCCESS).
    pub guest_messages_posted: u64,
    /// Event flags set in a SIEF page (host or guest originated).
    pub events_signalled: u64,
    /// Event flags that were already set (no interrupt raised).
    pub events_coalesced: u64,
    /// Synthetic timer expirations (all modes).
    pub timer_expirations: u64,
    /// Timer expirations dropped because the previous expiry message of the
    /// same timer was still queued.
    pub timer_expirations_missed: u64,
    /// Guest crash notifications (CRASH_CTL writes with CrashNotify).
    pub guest_crashes: u64,
}

pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}
