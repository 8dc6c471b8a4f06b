//! An open channel's data path: the outbound and inbound rings, sending with or without a
//! completion request, receiving, and matching completions to requests by transaction id.
//!
//! [`Channel`] is sans-IO too: sends and commits return [`SignalNeeded`]; the caller signals the
//! host with HvSignalEvent on [`Channel::connection_id`] (see [`crate::driver::VmBus::signal`]).
//! Transaction ids of requests are chosen here (1, 2, ... never 0, which is the host's
//! unsolicited id) and kept until their completion arrives; a completion for an id that is not
//! outstanding is an error (the host is untrusted), and the packet is consumed.
#![forbid(unsafe_code)]

use crate::packet::{PacketType, PacketView};
use crate::ring::{
    init_control, OutgoingPacket, PageRefRing, RingError, RingMemory, RingReceiver, RingSender,
    SignalNeeded,
};
use hypercall::page::PageRef;

/// What can go wrong on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// A ring problem (full, corrupt...).
    Ring(RingError),
    /// A completion for a transaction id that is not outstanding.
    UnknownTransaction(u64),
    /// Too many requests are waiting for completions.
    TooManyPending,
}

impl From<RingError> for ChannelError {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl core::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ring(e) => e.fmt(f),
            Self::UnknownTransaction(t) => write!(f, "completion for unknown transaction {t:#x}"),
            Self::TooManyPending => f.write_str("too many requests outstanding"),
        }
    }
}

/// What [`Channel::send_or_request_space`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Written (with anything staged before it); signal the host when this says so.
    Sent(SignalNeeded),
    /// No room: the host has been asked (pending_send_sz) to signal once it has freed enough;
    /// send the packet again then.
    Full,
}

/// A received packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'b> {
    /// The completion of our request with this transaction id.
    Completion {
        /// The request's transaction id.
        transaction_id: u64,
        /// The completion packet.
        packet: PacketView<'b>,
    },
    /// Any other packet (in-band data, transfer pages, ...).
    Packet(PacketView<'b>),
}

/// An open channel's rings. `P` = how many requests may wait for completions at once.
#[derive(Debug)]
pub struct Channel<M: RingMemory, const P: usize = 16> {
    tx: RingSender<M>,
    rx: RingReceiver<M>,
    connection_id: u32,
    pending: heapless::Vec<u64, P>,
    next_id: u64,
}

impl<M: RingMemory, const P: usize> Channel<M, P> {
    /// The channel over its outbound (guest -> host) and inbound rings, signalling the host on
    /// `connection_id` (the offer's). The rings keep whatever indices they hold.
    pub fn new(outbound: M, inbound: M, connection_id: u32) -> Result<Self, ChannelError> {
        Ok(Self {
            tx: RingSender::new(outbound)?,
            rx: RingReceiver::new(inbound)?,
            connection_id,
            pending: heapless::Vec::new(),
            next_id: 1,
        })
    }

    /// The HvSignalEvent connection id.
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// The outbound ring.
    pub fn sender(&mut self) -> &mut RingSender<M> {
        &mut self.tx
    }

    /// The inbound ring.
    pub fn receiver(&mut self) -> &mut RingReceiver<M> {
        &mut self.rx
    }

    /// Transaction ids waiting for completions.
    pub fn pending(&self) -> &[u64] {
        &self.pending
    }

    /// Sends any packet as is (publishes it, and anything staged before it).
    pub fn send_packet(
        &mut self,
        packet: &OutgoingPacket<'_>,
    ) -> Result<SignalNeeded, ChannelError> {
        Ok(self.tx.try_write(packet)?)
    }

    /// Sends `packet` like [`Channel::send_packet`], but a full ring is an outcome, not an
    /// error: the host is asked to signal once the packet fits (pending_send_sz), and if room
    /// appeared meanwhile the packet is written at once (one retry). Drivers keep an unsent
    /// packet queued and flush again on the host's signal.
    pub fn send_or_request_space(
        &mut self,
        packet: &OutgoingPacket<'_>,
    ) -> Result<SendOutcome, ChannelError> {
        let mut retried = false;
        loop {
            match self.tx.try_write(packet) {
                Ok(s) => return Ok(SendOutcome::Sent(s)),
                Err(RingError::NotEnoughSpace { needed, .. }) => {
                    let needed = u32::try_from(needed).unwrap_or(u32::MAX);
                    if retried || !self.tx.request_space(needed)? {
                        return Ok(SendOutcome::Full);
                    }
                    retried = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends in-band data without asking for a completion.
    pub fn send(
        &mut self,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<SignalNeeded, ChannelError> {
        self.send_packet(&OutgoingPacket::inband(transaction_id, false, payload))
    }

    /// Sends in-band data asking for a completion; returns the transaction id it was given.
    pub fn send_request(&mut self, payload: &[&[u8]]) -> Result<(u64, SignalNeeded), ChannelError> {
        self.send_request_packet(PacketType::DATA_INBAND, &[], payload)
    }

    /// Sends a packet of any type with `extension` (e.g. GPA-direct ranges), asking for a
    /// completion; returns its transaction id.
    pub fn send_request_packet(
        &mut self,
        packet_type: PacketType,
        extension: &[u8],
        payload: &[&[u8]],
    ) -> Result<(u64, SignalNeeded), ChannelError> {
        let id = self.stage_request_packet(packet_type, extension, payload)?;
        Ok((id, self.commit()?))
    }

    // Staged sends: written into the ring after what is staged already but not published until
    // `commit`, so a burst costs one signal decision (fact sheet §6.5: signal only when the ring
    // was empty before the batch). A failed stage writes nothing and keeps the earlier ones.

    /// Stages any packet as is.
    pub fn stage_packet(&mut self, packet: &OutgoingPacket<'_>) -> Result<(), ChannelError> {
        Ok(self.tx.stage(packet)?)
    }

    /// Stages in-band data without a completion request.
    pub fn stage(&mut self, transaction_id: u64, payload: &[&[u8]]) -> Result<(), ChannelError> {
        self.stage_packet(&OutgoingPacket::inband(transaction_id, false, payload))
    }

    /// Stages in-band data asking for a completion; returns the transaction id it was given (it
    /// is outstanding from now on; its completion can only come after the commit).
    pub fn stage_request(&mut self, payload: &[&[u8]]) -> Result<u64, ChannelError> {
        self.stage_request_packet(PacketType::DATA_INBAND, &[], payload)
    }

    /// Stages a packet of any type with `extension`, asking for a completion; returns its
    /// transaction id.
    pub fn stage_request_packet(
        &mut self,
        packet_type: PacketType,
        extension: &[u8],
        payload: &[&[u8]],
    ) -> Result<u64, ChannelError> {
        if self.pending.is_full() {
            return Err(ChannelError::TooManyPending);
        }
        let mut id = self.next_id;
        while id == 0 || self.pending.contains(&id) {
            id = id.wrapping_add(1);
        }
        let mut pkt = OutgoingPacket::inband(id, true, payload);
        pkt.packet_type = packet_type;
        pkt.extension = extension;
        self.tx.stage(&pkt)?;
        self.next_id = id.wrapping_add(1);
        // Cannot fail: checked for room above.
        let _ = self.pending.push(id);
        Ok(id)
    }

    /// Whether staged packets wait for [`Self::commit`].
    pub fn has_staged(&self) -> bool {
        self.tx.has_staged()
    }

    /// Publishes everything staged; says whether to signal the host (once for the whole batch).
    pub fn commit(&mut self) -> Result<SignalNeeded, ChannelError> {
        Ok(self.tx.commit()?)
    }

    /// Sends a completion for the host's request `transaction_id`.
    pub fn send_completion(
        &mut self,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<SignalNeeded, ChannelError> {
        self.send_packet(&OutgoingPacket::completion(transaction_id, payload))
    }

    /// Receives the next packet into `buf` (without publishing the read index: call
    /// [`Self::commit_reads`] after a batch). A completion is matched against the outstanding
    /// requests.
    pub fn recv<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<Received<'b>>, ChannelError> {
        let Some(packet) = self.rx.try_read_packet(buf)? else {
            return Ok(None);
        };
        if packet.packet_type() != PacketType::COMPLETION {
            return Ok(Some(Received::Packet(packet)));
        }
        let id = packet.transaction_id();
        match self.pending.iter().position(|&p| p == id) {
            Some(i) => {
                self.pending.swap_remove(i);
                Ok(Some(Received::Completion {
                    transaction_id: id,
                    packet,
                }))
            }
            None => Err(ChannelError::UnknownTransaction(id)),
        }
    }

    /// Publishes the reads so far; says whether to signal the host (it waits for space).
    pub fn commit_reads(&mut self) -> Result<SignalNeeded, ChannelError> {
        Ok(self.rx.commit()?)
    }

    /// Starts a batch of reads: masks the host's interrupts for the inbound ring.
    pub fn begin_batch(&mut self) {
        self.rx.begin_read();
    }

    /// Ends a batch: unmasks, and says whether data arrived meanwhile (then read again).
    pub fn end_batch(&mut self) -> Result<bool, ChannelError> {
        Ok(self.rx.end_read()?)
    }
}

/// The two rings of a channel over the guest pages of its ring GPADL: the first
/// `outbound_pages` pages are the guest -> host ring, the rest the host -> guest ring (fact sheet
/// §6.2). Both control pages are initialised (zeroed, feature bit 0 set) here, before the open.
pub fn split_rings<'p, 'a>(
    pages: &'p [PageRef<'a>],
    outbound_pages: usize,
) -> Result<(PageRefRing<'p, 'a>, PageRefRing<'p, 'a>), RingError> {
    if outbound_pages > pages.len() {
        return Err(RingError::BadSize {
            len: pages.len() * 4096,
        });
    }
    let (out, inb) = pages.split_at(outbound_pages);
    let (out, inb) = (PageRefRing::new(out)?, PageRefRing::new(inb)?);
    init_control(&out)?;
    init_control(&inb)?;
    Ok((out, inb))
}
