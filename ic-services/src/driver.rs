//! Serving one IC over an open VMBus channel: receive the host's request, let the
//! [`Endpoint`] answer it in place, send the answer back.
//!
//! The answer is a DATA_INBAND packet with the request's transaction id and no completion
//! request, carrying as many bytes as the request (fact sheet §7.2). [`serve_one`] handles one
//! packet; [`serve_all`] drains the inbound ring. Both return whether the host must be
//! signalled (pass it to `vmbus_guest::driver::VmBus::signal_if` with the channel's connection
//! id). A request whose framing is broken is consumed without an answer; a full outbound ring
//! loses that one answer (the host repeats heartbeats and times out other requests).
//!
//! With `vmbus_guest::driver::VmBus`, serving the heartbeat IC takes a few lines (the offer's
//! class is `guid::class::HEARTBEAT`; each ring needs a control page plus a data area larger
//! than the biggest packet, e.g. 3 pages each way; file copy sends 6.2 KiB packets):
//!
//! ```text
//! // `pages`: 6 pages, the first 3 for the guest -> host ring.
//! let (mut chan, _gpadl) = vmbus.open_channel(relid, &pages, 3, 0, [0; 120], MAX_POLLS)?;
//! let mut hb = Endpoint::new(Heartbeat::new());
//! let mut buf = [0u8; RECV_BUFFER_SIZE];
//! // On each interrupt for `relid` (VmBus::service's on_channel) or poll round:
//! let signal = serve_all(&mut chan, &mut hb, &mut buf, |_, _| {})?;
//! vmbus.signal_if(chan.connection_id(), signal)?;
//! ```
//!
//! For shutdown, call `endpoint.service_mut().take_accepted()` after the answer is sent and act
//! on it.
#![forbid(unsafe_code)]

use crate::framing::IcError;
use crate::service::{Endpoint, Handled, IcService};
use vmbus_guest::channel::{Channel, ChannelError, Received};
use vmbus_guest::packet::PacketType;
use vmbus_guest::ring::{RingMemory, SignalNeeded};

/// The receive buffer size that fits every IC message (a 16-byte descriptor plus
/// [`crate::framing::MAX_MESSAGE_SIZE`], rounded up to 8).
pub const RECV_BUFFER_SIZE: usize = 16 + crate::framing::MAX_MESSAGE_SIZE.next_multiple_of(8);

/// What [`serve_one`] did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Answered.
    Answered(Handled),
    /// Consumed without an answer: not an IC message.
    Dropped(IcError),
}

/// Receives one packet from `channel` into `buf` and answers it with `endpoint`. Returns
/// `None` when the inbound ring is empty, and whether the host must be signalled (the answer
/// was written to an empty ring, or the host waits for room in the inbound ring).
pub fn serve_one<M: RingMemory, const P: usize, S: IcService>(
    channel: &mut Channel<M, P>,
    endpoint: &mut Endpoint<S>,
    buf: &mut [u8],
) -> Result<(Option<Served>, SignalNeeded), ChannelError> {
    let (range, transaction_id, inband) = match channel.recv(buf) {
        Ok(None) => return Ok((None, SignalNeeded(false))),
        Ok(Some(Received::Packet(p))) => {
            let d = p.descriptor();
            (
                d.data_offset()..d.len(),
                p.transaction_id(),
                p.packet_type() == PacketType::DATA_INBAND,
            )
        }
        // An IC channel never sends requests, so every completion from the host is unknown to
        // the channel (which consumed it): drop it like any other stray packet.
        Ok(Some(Received::Completion { .. })) | Err(ChannelError::UnknownTransaction(_)) => {
            let s = channel.commit_reads()?;
            return Ok((Some(Served::Dropped(IcError::NotInband)), s));
        }
        Err(e) => return Err(e),
    };
    let commit = channel.commit_reads()?;
    if !inband {
        return Ok((Some(Served::Dropped(IcError::NotInband)), commit));
    }
    let message = &mut buf[range];
    match endpoint.handle_in_place(message) {
        Ok(handled) => {
            let sent = channel.send(transaction_id, &[&message[..handled.len]])?;
            Ok((
                Some(Served::Answered(handled)),
                SignalNeeded(sent.0 || commit.0),
            ))
        }
        Err(e) => Ok((Some(Served::Dropped(e)), commit)),
    }
}

/// Serves every packet waiting in the inbound ring, calling `on_served` for each; returns the
/// combined signal decision. Stops at the first channel error (after reporting the packets
/// served so far through `on_served`).
pub fn serve_all<M: RingMemory, const P: usize, S: IcService>(
    channel: &mut Channel<M, P>,
    endpoint: &mut Endpoint<S>,
    buf: &mut [u8],
    mut on_served: impl FnMut(&mut Endpoint<S>, Served),
) -> Result<SignalNeeded, ChannelError> {
    let mut signal = false;
    loop {
        let (served, s) = serve_one(channel, endpoint, buf)?;
        signal |= s.0;
        match served {
            Some(served) => on_served(endpoint, served),
            None => return Ok(SignalNeeded(signal)),
        }
    }
}
