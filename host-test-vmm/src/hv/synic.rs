//! Per-VP SynIC state and delivery (fact sheet §4).
//!
//! Host-to-guest messages go into the SIM slot of their SINT. A message that
//! finds its slot busy stays in a per-SINT FIFO and MessagePending is set in
//! the occupying message; the guest's EOM write re-scans the FIFOs at once
//! (no polling). Event flags are set atomically in the SIEF page and raise
//! the SINT only on a 0 -> 1 transition.

use super::gmem::{GpaError, GuestMem};
use super::wire;
use hypercall::msr::{SControl, Siefp, Simp, Sint, MIN_SINT_VECTOR, SINT_RESET_VALUE};
use std::collections::VecDeque;

/// Messages queued per SINT before the host API reports `QueueFull`.
pub const MAX_QUEUED_PER_SINT: usize = 64;

/// Number of SINTs per VP.
pub const SINT_COUNT: usize = hypercall::synic::SINT_COUNT;

/// A message waiting for its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    /// A host message (type non-zero, bit 31 clear unless it is a
    /// hypervisor message type; payload <= 240 bytes, checked on entry).
    Message { message_type: u32, payload: Vec<u8> },
    /// A synthetic timer expiry; the DeliveryTime is taken when the message
    /// actually reaches the slot.
    Timer { index: u8, expiration: u64 },
}

/// Why a queue is being scanned (for the stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// A new message was queued.
    Post,
    /// The guest wrote EOM.
    Eom,
    /// SIMP or SCONTROL was enabled, or a SINT was reconfigured.
    Config,
}

/// Side effects of an operation done under a VP lock: applied (stats,
/// interrupts) by the caller after the lock is released, so no callback into
/// the VMM ever runs under our locks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Effects {
    pub raises: Vec<u8>,
    pub delivered: u64,
    pub queued: u64,
    pub redelivered: u64,
    pub dropped: u64,
    pub events: u64,
    pub coalesced: u64,
    pub timer_expirations: u64,
    pub timer_missed: u64,
    /// Timer indices whose queued expiry message reached the slot.
    pub timer_msgs_delivered: Vec<u8>,
}

/// The vector to raise for a delivery on this SINT, if any: not masked,
/// not polling, and a valid vector (>= 16).
pub fn interrupt_vector(sint: Sint) -> Option<u8> {
    (!sint.masked() && !sint.polling() && sint.vector() >= MIN_SINT_VECTOR).then_some(sint.vector())
}

/// SynIC registers and queues of one VP.
#[derive(Debug, Clone)]
pub(crate) struct Synic {
    pub scontrol: u64,
    pub siefp: u64,
    pub simp: u64,
    pub sint: [u64; SINT_COUNT],
    pub queues: [VecDeque<Pending>; SINT_COUNT],
}

impl Default for Synic {
    fn default() -> Self {
        Self {
            scontrol: 0,
            siefp: 0,
            simp: 0,
            sint: [SINT_RESET_VALUE; SINT_COUNT],
            queues: Default::default(),
        }
    }
}

impl Synic {
    fn enabled(&self) -> bool {
        SControl::from_bits(self.scontrol).enable()
    }

    /// GPA of the message page, if messages can be delivered now.
    pub fn sim_page(&self) -> Option<u64> {
        let simp = Simp::from_bits(self.simp);
        (self.enabled() && simp.enable()).then(|| simp.gpa())
    }

    /// GPA of the event-flags page, if events can be delivered now.
    pub fn sief_page(&self) -> Option<u64> {
        let siefp = Siefp::from_bits(self.siefp);
        (self.enabled() && siefp.enable()).then(|| siefp.gpa())
    }

    pub fn sint_reg(&self, sint: usize) -> Sint {
        Sint::from_bits(self.sint[sint])
    }

    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Put a message behind those already queued for `sint` and try to
    /// deliver. `Err(())` if the queue is full (nothing queued).
    pub fn enqueue(
        &mut self,
        sint: usize,
        msg: Pending,
        mem: &GuestMem,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), ()> {
        if self.queues[sint].len() >= MAX_QUEUED_PER_SINT {
            return Err(());
        }
        self.queues[sint].push_back(msg);
        self.flush(sint, mem, now, Cause::Post, fx);
        // FIFO: the new message is the last one, so it is still waiting
        // exactly when anything is left in the queue.
        if !self.queues[sint].is_empty() {
            fx.queued += 1;
        }
        Ok(())
    }

    /// Move queued messages of every SINT into free slots.
    pub fn flush_all(&mut self, mem: &GuestMem, now: u64, cause: Cause, fx: &mut Effects) {
        for sint in 0..SINT_COUNT {
            self.flush(sint, mem, now, cause, fx);
        }
    }

    /// Move queued messages of `sint` into its slot while the slot is free.
    /// When the slot is busy, set MessagePending in the occupying message and
    /// stop: the guest will write EOM after it frees the slot.
    pub fn flush(&mut self, sint: usize, mem: &GuestMem, now: u64, cause: Cause, fx: &mut Effects) {
        let Some(page) = self.sim_page() else {
            return;
        };
        let slot = page + (sint as u64) * wire::MESSAGE_SIZE as u64;
        let reg = self.sint_reg(sint);
        while let Some(front) = self.queues[sint].front() {
            match slot_is_free(mem, slot) {
                Ok(true) => {}
                Ok(false) => break,
                Err(_) => {
                    // The page was checked at enable; RAM does not shrink, so
                    // this is unreachable in practice. Drop rather than spin.
                    self.drop_front(sint, fx);
                    continue;
                }
            }
            let bytes = wire::encode_message(front, now);
            if let Err(e) = write_slot(mem, slot, &bytes) {
                tracing::warn!(sint, error = %e, "SynIC message slot write failed; message dropped");
                self.drop_front(sint, fx);
                continue;
            }
            if let Some(Pending::Timer { index, .. }) = self.queues[sint].pop_front() {
                fx.timer_msgs_delivered.push(index);
            }
            fx.delivered += 1;
            if cause == Cause::Eom {
                fx.redelivered += 1;
            }
            if let Some(v) = interrupt_vector(reg) {
                fx.raises.push(v);
            }
        }
    }

    /// Discard the first queued message of `sint`. A timer message counts as
    /// gone, so its timer may queue the next expiry.
    fn drop_front(&mut self, sint: usize, fx: &mut Effects) {
        if let Some(Pending::Timer { index, .. }) = self.queues[sint].pop_front() {
            fx.timer_msgs_delivered.push(index);
        }
        fx.dropped += 1;
    }

    /// Set event flag `flag` of `sint`. Returns whether it was newly set.
    /// `Err` if the SIEF page is not enabled.
    pub fn set_event(
        &mut self,
        sint: usize,
        flag: u32,
        mem: &GuestMem,
        fx: &mut Effects,
    ) -> Result<bool, GpaError> {
        let page = self.sief_page().ok_or(GpaError::OutsideRam(0, 0))?;
        let byte = page + (sint as u64) * wire::EVENT_FLAGS_SIZE as u64 + u64::from(flag / 8);
        let bit = 1u8 << (flag % 8);
        let old = mem.fetch_or_u8(byte, bit)?;
        if old & bit != 0 {
            fx.coalesced += 1;
            return Ok(false);
        }
        fx.events += 1;
        if let Some(v) = interrupt_vector(self.sint_reg(sint)) {
            fx.raises.push(v);
        }
        Ok(true)
    }
}

/// Whether the slot at `slot` is empty. If it is busy, MessagePending is set
/// in it first and the type re-read after a full fence: a guest that freed
/// the slot in between either sees MessagePending (and writes EOM) or we see
/// the free slot here. Either way no queued message is stranded.
fn slot_is_free(mem: &GuestMem, slot: u64) -> Result<bool, GpaError> {
    if mem.load_u32(slot + wire::MESSAGE_TYPE_OFFSET as u64)? == 0 {
        return Ok(true);
    }
    mem.fetch_or_u8(
        slot + wire::MESSAGE_FLAGS_OFFSET as u64,
        wire::MESSAGE_FLAG_PENDING,
    )?;
    GuestMem::full_fence();
    Ok(mem.load_u32(slot + wire::MESSAGE_TYPE_OFFSET as u64)? == 0)
}

/// Write a whole encoded message so the guest sees the type last: everything
/// after the type word first, then the type with release ordering.
fn write_slot(mem: &GuestMem, slot: u64, bytes: &[u8; wire::MESSAGE_SIZE]) -> Result<(), GpaError> {
    let type_end = wire::MESSAGE_TYPE_OFFSET + 4;
    mem.write(slot + type_end as u64, &bytes[type_end..])?;
    let mut t = [0u8; 4];
    t.copy_from_slice(&bytes[wire::MESSAGE_TYPE_OFFSET..type_end]);
    mem.store_u32(
        slot + wire::MESSAGE_TYPE_OFFSET as u64,
        u32::from_le_bytes(t),
    )
}
