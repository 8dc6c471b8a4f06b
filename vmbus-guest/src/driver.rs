//! The platform glue: [`VmBus`] runs the sans-IO [`Client`] over `hypercall`'s
//! [`Hypervisor`] (HvPostMessage, HvSignalEvent) and [`SynIc`] (SINT2's message slot with the EOM
//! protocol, SINT2's event flags).
//!
//! The same code serves both modes. **Polling**: configure SINT2 with
//! [`hypercall::hv::SintConfig::polled`] (or leave interrupts off) and call [`VmBus::poll`] /
//! the `wait_*` helpers in a loop. **Interrupts**: configure SINT2 with a vector; the handler
//! calls [`VmBus::poll`] until it returns `None` and [`VmBus::take_channel_interrupts`] for the
//! channels, then EOIs. The blocking helpers spin at most `max_polls` times and then give
//! [`DriverError::Timeout`]: a host that never answers cannot hang the guest.
#![forbid(unsafe_code)]

use crate::channel::{split_rings, Channel, ChannelError};
use crate::client::{Client, ClientConfig, ClientError, Event, Outgoing};
use crate::message::ChannelMessageType;
use crate::ring::{PageRefRing, SignalNeeded};
use crate::version::{Version, VMBUS_SINT};
use hypercall::abi::HvStatus;
use hypercall::hv::{Error as HvError, Hypervisor, SynIc};
use hypercall::page::{PageRef, PAGE_SIZE};
use hypercall::synic::{HvMessage, MessageType};
use hypercall::Platform;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// A hypercall or SynIC operation failed.
    Hv(HvError),
    /// The client refused a request or a host message.
    Client(ClientError),
    /// A channel's rings failed.
    Channel(ChannelError),
    /// Nothing arrived within `max_polls` polls.
    Timeout,
    /// The host refused every version.
    ConnectFailed,
    /// The host answered a GPADL or an open with a non-zero status.
    Refused(u32),
}

impl From<HvError> for DriverError {
    fn from(e: HvError) -> Self {
        Self::Hv(e)
    }
}

impl From<ClientError> for DriverError {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

impl From<ChannelError> for DriverError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl core::fmt::Display for DriverError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Hv(e) => e.fmt(f),
            Self::Client(e) => e.fmt(f),
            Self::Channel(e) => e.fmt(f),
            Self::Timeout => f.write_str("VMBus host did not answer"),
            Self::ConnectFailed => f.write_str("VMBus host refused every version"),
            Self::Refused(s) => write!(f, "VMBus host refused with status {s:#x}"),
        }
    }
}

/// The most messages one [`VmBus::service`] call consumes.
pub const MAX_MESSAGES_PER_SERVICE: usize = 64;

/// What one [`VmBus::poll`] found.
// No allocator to box the message into; a `Polled` lives only until the caller matches it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A VMBus event.
    Event(Event),
    /// A non-VMBus message in SINT2's slot (e.g. a synthetic timer in message mode), consumed.
    Foreign(HvMessage),
}

/// The guest's VMBus connection over the hypercall and SynIC drivers.
pub struct VmBus<'a, P: Platform, const C: usize = 16, const G: usize = 32, const O: usize = 32> {
    hv: &'a Hypervisor<'a, P>,
    synic: &'a SynIc<'a, P>,
    input: PageRef<'a>,
    client: Client<C, G, O>,
    held: Option<Outgoing>,
    events: heapless::Deque<Event, 4>,
}

impl<'a, P: Platform, const C: usize, const G: usize, const O: usize> VmBus<'a, P, C, G, O> {
    /// A disconnected bus. `input_page` is the hypercall input page for HvPostMessage (this VP's
    /// own). SINT2 must already be configured on `synic`.
    pub fn new(
        hv: &'a Hypervisor<'a, P>,
        synic: &'a SynIc<'a, P>,
        input_page: PageRef<'a>,
        config: ClientConfig,
    ) -> Self {
        Self {
            hv,
            synic,
            input: input_page,
            client: Client::new(config),
            held: None,
            events: heapless::Deque::new(),
        }
    }

    /// The client (channels, GPADLs, state).
    pub fn client(&self) -> &Client<C, G, O> {
        &self.client
    }

    /// The client, for requests the helpers here do not cover.
    pub fn client_mut(&mut self) -> &mut Client<C, G, O> {
        &mut self.client
    }

    /// Posts everything the client has queued. A post the hypervisor refuses with
    /// INSUFFICIENT_BUFFERS is kept and retried on the next flush; an InitiateContact refused
    /// with INVALID_CONNECTION_ID moves the client to the next version. Any other failure drops
    /// that message and is returned.
    pub fn flush(&mut self) -> Result<(), DriverError> {
        loop {
            let Some(out) = self.held.take().or_else(|| self.client.poll_outgoing()) else {
                return Ok(());
            };
            match self.hv.post_message(
                &self.input,
                out.connection_id,
                MessageType::VMBUS,
                out.message.as_bytes(),
            ) {
                Ok(()) => {}
                Err(HvError::Status(HvStatus::INSUFFICIENT_BUFFERS)) => {
                    self.held = Some(out);
                    return Ok(());
                }
                Err(HvError::Status(HvStatus::INVALID_CONNECTION_ID))
                    if out.msgtype() == ChannelMessageType::INITIATE_CONTACT =>
                {
                    if let Some(e) = self.client.contact_post_failed()? {
                        // At most one event per InitiateContact, and poll drains them first.
                        let _ = self.events.push_back(e);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Posts what is queued, then consumes messages from SINT2's slot until one gives an event
    /// (or the slot is empty: `None`). A malformed or unexpected host message is consumed and
    /// returned as an error; polling again continues after it.
    pub fn poll(&mut self) -> Result<Option<Polled>, DriverError> {
        self.flush()?;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(Polled::Event(e)));
            }
            let Some(msg) = self.synic.take_message(VMBUS_SINT)? else {
                return Ok(None);
            };
            if msg.header.message_type != MessageType::VMBUS {
                return Ok(Some(Polled::Foreign(msg)));
            }
            let event = self.client.handle_message(msg.payload());
            self.flush()?;
            if let Some(e) = event? {
                return Ok(Some(Polled::Event(e)));
            }
        }
    }

    /// Polls until an event satisfies `until` (other events are dropped, but the client's
    /// tables still reflect them), at most `max_polls` polls.
    pub fn wait(
        &mut self,
        max_polls: u64,
        mut until: impl FnMut(&Event) -> bool,
    ) -> Result<Event, DriverError> {
        for _ in 0..max_polls {
            match self.poll()? {
                Some(Polled::Event(e)) if until(&e) => return Ok(e),
                Some(_) => {}
                None => core::hint::spin_loop(),
            }
        }
        Err(DriverError::Timeout)
    }

    /// Connects (version fallback as in [`Client`]) and returns the version. RequestOffers is
    /// posted right after.
    pub fn connect(&mut self, max_polls: u64) -> Result<Version, DriverError> {
        self.client.connect()?;
        match self.wait(max_polls, |e| {
            matches!(e, Event::Connected { .. } | Event::ConnectFailed)
        })? {
            Event::Connected { version, .. } => {
                self.flush()?;
                Ok(version)
            }
            _ => Err(DriverError::ConnectFailed),
        }
    }

    /// Waits for AllOffersDelivered; the offers are then in [`Client::channels`].
    pub fn wait_offers(&mut self, max_polls: u64) -> Result<(), DriverError> {
        self.wait(max_polls, |e| *e == Event::AllOffersDelivered)
            .map(|_| ())
    }

    /// Creates a GPADL over whole `pages` for channel `relid` and waits for the host's answer.
    pub fn create_gpadl(
        &mut self,
        relid: u32,
        pages: &[PageRef<'_>],
        max_polls: u64,
    ) -> Result<u32, DriverError> {
        let bytes = pages.len().saturating_mul(PAGE_SIZE);
        let count = u32::try_from(bytes).map_err(|_| {
            ClientError::Gpadl(crate::message::GpadlError::TooManyPfns(pages.len()))
        })?;
        let handle = self.client.create_gpadl(relid, 0, count, pages)?;
        self.flush()?;
        match self.wait(
            max_polls,
            |e| matches!(e, Event::GpadlCreated { gpadl, .. } if *gpadl == handle),
        )? {
            Event::GpadlCreated { status: 0, .. } => Ok(handle),
            Event::GpadlCreated { status, .. } => Err(DriverError::Refused(status)),
            _ => Err(DriverError::Timeout),
        }
    }

    /// Tears a GPADL down and waits until the host confirms (its pages are then free).
    pub fn teardown_gpadl(&mut self, handle: u32, max_polls: u64) -> Result<(), DriverError> {
        self.client.teardown_gpadl(handle)?;
        self.flush()?;
        self.wait(
            max_polls,
            |e| matches!(e, Event::GpadlTorndown { gpadl, .. } if *gpadl == handle),
        )
        .map(|_| ())
    }

    /// Opens channel `relid` with its rings in `pages` (the first `outbound_pages` for guest ->
    /// host, each ring's first page its control page): initialises both control pages, creates
    /// the ring GPADL, sends OpenChannel with interrupts to `target_vp`, and waits for the result.
    /// Returns the channel's data path and the ring GPADL handle. If the host refuses the open,
    /// the ring GPADL is torn down again (not waited for) and [`DriverError::Refused`] returned.
    pub fn open_channel<'p>(
        &mut self,
        relid: u32,
        pages: &'p [PageRef<'a>],
        outbound_pages: usize,
        target_vp: u32,
        user_data: [u8; 120],
        max_polls: u64,
    ) -> Result<(Channel<PageRefRing<'p, 'a>>, u32), DriverError> {
        let connection_id = self
            .client
            .channel(relid)
            .ok_or(ClientError::UnknownChannel(relid))?
            .connection_id();
        let (out, inb) = split_rings(pages, outbound_pages).map_err(ChannelError::Ring)?;
        let gpadl = self.create_gpadl(relid, pages, max_polls)?;
        self.client
            .open(relid, gpadl, outbound_pages as u32, target_vp, user_data)?;
        self.flush()?;
        match self.wait(max_polls, |e| {
            matches!(e, Event::OpenResult { relid: r, .. } | Event::Rescinded { relid: r, .. } if *r == relid)
        })? {
            Event::OpenResult { status: 0, .. } => {
                Ok((Channel::new(out, inb, connection_id)?, gpadl))
            }
            Event::OpenResult { status, .. } => {
                // The ring GPADL is of no use now: tear it down (its Event::GpadlTorndown comes
                // later) so the host can drop it.
                self.client.teardown_gpadl(gpadl)?;
                self.flush()?;
                Err(DriverError::Refused(status))
            }
            // Rescinded meanwhile: the client already tears the GPADL down.
            _ => Err(DriverError::Client(ClientError::UnknownChannel(relid))),
        }
    }

    /// Closes an open channel and waits until its ring GPADL is torn down.
    pub fn close_channel(&mut self, relid: u32, max_polls: u64) -> Result<(), DriverError> {
        let ring = match self.client.channel(relid).map(|c| c.state) {
            Some(crate::client::ChannelState::Open { ring_gpadl }) => ring_gpadl,
            Some(_) => return Err(ClientError::WrongState.into()),
            None => return Err(ClientError::UnknownChannel(relid).into()),
        };
        self.client.close(relid)?;
        self.flush()?;
        self.wait(
            max_polls,
            |e| matches!(e, Event::GpadlTorndown { gpadl, .. } if *gpadl == ring),
        )
        .map(|_| ())
    }

    /// Sends UNLOAD and waits for the host's response (for reboot, kexec, crash).
    pub fn unload(&mut self, max_polls: u64) -> Result<(), DriverError> {
        self.client.unload()?;
        self.flush()?;
        self.wait(max_polls, |e| *e == Event::Unloaded).map(|_| ())
    }

    /// The work of a VMBus interrupt (SINT2), also usable as one round of a polling loop: drains
    /// SINT2's message slot (at most [`MAX_MESSAGES_PER_SERVICE`] messages, so a flooding host
    /// cannot keep the guest here), handing each result to `on_message` (a bad host message is an
    /// `Err` there, and draining continues), then takes the channel event flags, calling
    /// `on_channel` with each signalled relid. Returns how many messages and channel flags were
    /// handled.
    pub fn service(
        &mut self,
        mut on_message: impl FnMut(Result<Polled, DriverError>),
        on_channel: impl FnMut(u32),
    ) -> usize {
        let mut n = 0;
        while n < MAX_MESSAGES_PER_SERVICE {
            match self.poll() {
                Ok(None) => break,
                Ok(Some(p)) => on_message(Ok(p)),
                Err(e) => on_message(Err(e)),
            }
            n += 1;
        }
        match self.take_channel_interrupts(on_channel) {
            Ok(k) => n + k,
            Err(e) => {
                on_message(Err(e));
                n
            }
        }
    }

    /// Signals the host on a channel's connection id (HvSignalEvent, fast, flag 0).
    pub fn signal(&self, connection_id: u32) -> Result<(), DriverError> {
        Ok(self.hv.signal_event(connection_id, 0)?)
    }

    /// Signals if `needed` says so.
    pub fn signal_if(&self, connection_id: u32, needed: SignalNeeded) -> Result<(), DriverError> {
        if needed.needed() {
            self.signal(connection_id)?;
        }
        Ok(())
    }

    /// Takes SINT2's event flags: calls `f` with the relid of every channel the host signalled
    /// (flag 0 is reserved and skipped). Returns how many.
    pub fn take_channel_interrupts(&self, mut f: impl FnMut(u32)) -> Result<usize, DriverError> {
        let mut n = 0;
        self.synic.take_events(VMBUS_SINT, |flag| {
            if flag != 0 {
                n += 1;
                f(u32::from(flag));
            }
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
