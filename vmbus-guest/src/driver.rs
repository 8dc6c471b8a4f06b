//! The platform glue: [`VmBus`] runs the sans-IO [`Client`] over `hypercall`'s
//! [`Hypervisor`] (HvPostMessage, HvSignalEvent) and [`SynIc`] (SINT2's message slot with the EOM
//! protocol, SINT2's event flags).
//!
//! The same code serves both modes.
//!
//! **Polling**: configure SINT2 with [`hypercall::hv::SintConfig::polled`] (or leave interrupts
//! off) and use the blocking helpers ([`VmBus::connect`], [`VmBus::open_channel`], ...), or
//! [`VmBus::poll`] in a loop. The blocking helpers spin at most `max_polls` times and then give
//! [`DriverError::Timeout`]: a host that never answers cannot hang the guest. They drop whatever
//! else they poll meanwhile (other events, foreign messages; the client's tables still reflect the
//! events): to keep it, use the `begin_*` form with [`VmBus::wait_for`] and its `others` sink.
//!
//! **Interrupts**: configure SINT2 with a vector. The handler calls [`VmBus::service`] (it drains
//! SINT2's slot and the channel event flags, then EOIs); if [`Serviced::more`] is set, work is
//! left that no new interrupt will announce, so the handler runs it again (or defers it). Requests
//! use the non-blocking `begin_*` forms ([`VmBus::begin_connect`], [`VmBus::begin_create_gpadl`],
//! [`VmBus::begin_open_channel`], [`VmBus::begin_close_channel`], [`VmBus::begin_teardown_gpadl`],
//! [`VmBus::begin_unload`]): each queues and posts its messages and returns a [`Pending`], and the
//! [`Event`] that answers it comes out of `service` in the handler; [`Pending::outcome`] says
//! whether an event is that answer and what it means. Nothing spins, so the handler and the code
//! that starts requests never compete for the message slot (call the `begin_*` forms and
//! `service` with the handler excluded, e.g. interrupts off).
//!
//! **Events raised while posting.** A post refused with INVALID_CONNECTION_ID moves the client to
//! the next version inside [`VmBus::flush`] and raises [`Event::VersionRefused`] or
//! [`Event::ConnectFailed`] without any host message, hence without an interrupt. Such events
//! wait in the driver's queue ([`EVENT_QUEUE_LEN`] deep): `flush` and every `begin_*` form report
//! how many wait ([`VmBus::events_waiting`]), [`VmBus::poll`] and [`VmBus::service`] hand them out
//! before any message, and [`VmBus::take_event`] takes them directly. Nothing is dropped: while
//! the queue is full, posting pauses (the rest stays queued in the client) until events are
//! taken.
#![forbid(unsafe_code)]

use crate::channel::{split_rings, Channel, ChannelError};
use crate::client::{ChannelState, Client, ClientConfig, ClientError, Event, Outgoing};
use crate::message::{ChannelMessageType, GpadlError, PfnSource};
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
    /// The channel (this relid) was rescinded before the host answered.
    Rescinded(u32),
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
            Self::Rescinded(r) => write!(f, "channel {r} was rescinded"),
        }
    }
}

/// The most messages one [`VmBus::service`] call consumes.
pub const MAX_MESSAGES_PER_SERVICE: usize = 64;

/// How many events raised while posting the driver keeps for [`VmBus::poll`]. More than the
/// longest standard version list (a host refusing every connection id raises one event per
/// version); a longer list only makes posting pause until events are taken.
pub const EVENT_QUEUE_LEN: usize = 16;

/// What one [`VmBus::poll`] found.
// No allocator to box the message into; a `Polled` lives only until the caller matches it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    /// A VMBus event.
    Event(Event),
    /// A non-VMBus message in SINT2's slot (e.g. a synthetic timer in message mode), consumed.
    Foreign(HvMessage),
    /// A VMBus message the client consumed without an event: while UNLOAD is out, everything but
    /// the response is dropped (as Linux does).
    Discarded(ChannelMessageType),
}

/// What one [`VmBus::service`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Serviced {
    /// Results handed to `on_message` (events, foreign or discarded messages, errors).
    pub messages: usize,
    /// Channel event flags handed to `on_channel`.
    pub channels: usize,
    /// Stopped at [`MAX_MESSAGES_PER_SERVICE`] with work left (a message in the slot or queued
    /// events). No interrupt announces it: call `service` again (now or deferred).
    pub more: bool,
}

/// A request started with a `begin_*` form, waiting for the host's answer. The fields say what
/// to match, so one can also be built for a request made through [`VmBus::client_mut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// InitiateContact (with version fallback): [`Event::Connected`] or [`Event::ConnectFailed`].
    Connect,
    /// GPADL creation: [`Event::GpadlCreated`] for `gpadl`.
    GpadlCreate {
        /// The channel.
        relid: u32,
        /// The handle.
        gpadl: u32,
    },
    /// GPADL teardown: [`Event::GpadlTorndown`] for `gpadl`.
    GpadlTeardown {
        /// The handle.
        gpadl: u32,
    },
    /// OpenChannel: [`Event::OpenResult`] for `relid`.
    Open {
        /// The channel.
        relid: u32,
        /// Its ring GPADL.
        ring_gpadl: u32,
    },
    /// CloseChannel: done when the ring GPADL is torn down (its pages are free then).
    Close {
        /// The channel.
        relid: u32,
        /// Its ring GPADL.
        ring_gpadl: u32,
    },
    /// UNLOAD: [`Event::Unloaded`].
    Unload,
}

impl Pending {
    /// The GPADL it concerns (the ring GPADL for an open or a close).
    pub fn gpadl(&self) -> Option<u32> {
        match *self {
            Self::GpadlCreate { gpadl, .. } | Self::GpadlTeardown { gpadl } => Some(gpadl),
            Self::Open { ring_gpadl, .. } | Self::Close { ring_gpadl, .. } => Some(ring_gpadl),
            Self::Connect | Self::Unload => None,
        }
    }

    /// Whether `event` answers this request: `None` if not, else the outcome (`Ok` = done as
    /// asked). A GPADL creation or an open of a channel that gets rescinded is answered with
    /// [`DriverError::Rescinded`] (the host will not answer it any more); anything but a connect
    /// or an unload is answered by [`Event::Unloaded`] with [`ClientError::NotConnected`].
    pub fn outcome(&self, event: &Event) -> Option<Result<(), DriverError>> {
        let status = |s: u32| {
            if s == 0 {
                Ok(())
            } else {
                Err(DriverError::Refused(s))
            }
        };
        match (*self, *event) {
            (Self::Connect, Event::Connected { .. }) => Some(Ok(())),
            (Self::Connect, Event::ConnectFailed) => Some(Err(DriverError::ConnectFailed)),
            (Self::Unload, Event::Unloaded) => Some(Ok(())),
            (Self::Connect | Self::Unload, _) => None,
            (_, Event::Unloaded) => Some(Err(ClientError::NotConnected.into())),
            (
                Self::GpadlCreate { gpadl, .. },
                Event::GpadlCreated {
                    gpadl: g,
                    status: s,
                    ..
                },
            ) if g == gpadl => Some(status(s)),
            (
                Self::Open { relid, .. },
                Event::OpenResult {
                    relid: r,
                    status: s,
                },
            ) if r == relid => Some(status(s)),
            (
                Self::GpadlCreate { relid, .. } | Self::Open { relid, .. },
                Event::Rescinded { relid: r, .. },
            ) if r == relid => Some(Err(DriverError::Rescinded(relid))),
            (
                Self::GpadlTeardown { gpadl }
                | Self::Close {
                    ring_gpadl: gpadl, ..
                },
                Event::GpadlTorndown { gpadl: g, .. },
            ) if g == gpadl => Some(Ok(())),
            _ => None,
        }
    }
}

/// A channel whose OpenChannel is out ([`VmBus::begin_open_channel`]): its rings are initialised
/// and kept here until the answer.
#[derive(Debug)]
pub struct OpeningChannel<'p, 'r> {
    relid: u32,
    ring_gpadl: u32,
    connection_id: u32,
    outbound: PageRefRing<'p, 'r>,
    inbound: PageRefRing<'p, 'r>,
}

impl<'p, 'r> OpeningChannel<'p, 'r> {
    /// What answers the open.
    pub fn pending(&self) -> Pending {
        Pending::Open {
            relid: self.relid,
            ring_gpadl: self.ring_gpadl,
        }
    }

    /// The channel.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// The ring GPADL.
    pub fn ring_gpadl(&self) -> u32 {
        self.ring_gpadl
    }

    /// The data path, once [`Pending::outcome`] said the open succeeded.
    pub fn into_channel<const N: usize>(
        self,
    ) -> Result<Channel<PageRefRing<'p, 'r>, N>, DriverError> {
        Ok(Channel::new(
            self.outbound,
            self.inbound,
            self.connection_id,
        )?)
    }
}

/// The guest's VMBus connection over the hypercall and SynIC drivers.
pub struct VmBus<'a, P: Platform, const C: usize = 16, const G: usize = 32, const O: usize = 32> {
    hv: &'a Hypervisor<'a, P>,
    synic: &'a SynIc<'a, P>,
    input: PageRef<'a>,
    client: Client<C, G, O>,
    held: Option<Outgoing>,
    events: heapless::Deque<Event, EVENT_QUEUE_LEN>,
    /// A posting failure met after a message's event was already due to the caller: reported by
    /// the next poll, so neither is lost.
    deferred: Option<DriverError>,
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
            deferred: None,
        }
    }

    /// The client (channels, GPADLs, state).
    pub fn client(&self) -> &Client<C, G, O> {
        &self.client
    }

    /// The client, for requests the helpers here do not cover (then [`Self::flush`]).
    pub fn client_mut(&mut self) -> &mut Client<C, G, O> {
        &mut self.client
    }

    /// Posts everything the client has queued and returns how many events wait in the driver's
    /// queue ([`Self::events_waiting`]). A post the hypervisor refuses with INSUFFICIENT_BUFFERS
    /// is kept and retried on the next flush; an InitiateContact refused with
    /// INVALID_CONNECTION_ID moves the client to the next version, and the event that raises is
    /// queued. While the queue is full, posting pauses (nothing is dropped). Any other failure
    /// drops that message and is returned.
    pub fn flush(&mut self) -> Result<usize, DriverError> {
        // Each post raises at most one event, so one free entry is enough to post.
        while !self.events.is_full() {
            let Some(out) = self.held.take().or_else(|| self.client.poll_outgoing()) else {
                break;
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
                    break;
                }
                Err(HvError::Status(HvStatus::INVALID_CONNECTION_ID))
                    if out.msgtype() == ChannelMessageType::INITIATE_CONTACT =>
                {
                    if let Some(e) = self.client.contact_post_failed()? {
                        // Cannot fail: the loop runs only with a free entry.
                        let _ = self.events.push_back(e);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.events.len())
    }

    /// Events raised while posting that no poll has handed out yet (no interrupt announces them).
    pub fn events_waiting(&self) -> usize {
        self.events.len()
    }

    /// Takes the oldest event raised while posting, then posts what that made room for.
    pub fn take_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_some() && self.client.has_outgoing() {
            // A failure here stays the caller's to see: keep it for the next poll.
            if let Err(err) = self.flush() {
                self.deferred.get_or_insert(err);
            }
        }
        e
    }

    /// Whether messages wait to be posted (held back by INSUFFICIENT_BUFFERS or a full event
    /// queue, or just queued).
    pub fn has_outgoing(&self) -> bool {
        self.held.is_some() || self.client.has_outgoing()
    }

    /// One step: hands out a queued event, else posts what is queued and consumes one message
    /// from SINT2's slot (`None`: nothing queued and the slot is empty). A malformed or unexpected
    /// host message is consumed and returned as an error; polling again continues after it.
    pub fn poll(&mut self) -> Result<Option<Polled>, DriverError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(Polled::Event(e)));
        }
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        self.flush()?;
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(Polled::Event(e)));
        }
        let Some(msg) = self.synic.take_message(VMBUS_SINT)? else {
            return Ok(None);
        };
        if msg.header.message_type != MessageType::VMBUS {
            return Ok(Some(Polled::Foreign(msg)));
        }
        let handled = self.client.handle_message(msg.payload());
        // Post the answers (RequestOffers, RelIdReleased...) now, not at the next poll.
        let flushed = self.flush();
        let result = match handled {
            Ok(Some(e)) => Ok(Some(Polled::Event(e))),
            Ok(None) => {
                // It parsed, so it holds at least the 4-byte type.
                let t = msg.payload().get(..4).and_then(|b| b.try_into().ok());
                let t = t.map_or(0, u32::from_le_bytes);
                Ok(Some(Polled::Discarded(ChannelMessageType(t))))
            }
            Err(e) => Err(e.into()),
        };
        if let Err(err) = flushed {
            self.deferred.get_or_insert(err);
        }
        result
    }

    /// Polls until `until` accepts an event, at most `max_polls` polls. Everything else polled
    /// meanwhile goes to `others` (the client's tables reflect it either way).
    pub fn wait_with(
        &mut self,
        max_polls: u64,
        mut until: impl FnMut(&Event) -> bool,
        mut others: impl FnMut(Polled),
    ) -> Result<Event, DriverError> {
        for _ in 0..max_polls {
            match self.poll()? {
                Some(Polled::Event(e)) if until(&e) => return Ok(e),
                Some(p) => others(p),
                None => core::hint::spin_loop(),
            }
        }
        Err(DriverError::Timeout)
    }

    /// [`Self::wait_with`] dropping everything else (the client's tables still reflect it).
    pub fn wait(
        &mut self,
        max_polls: u64,
        until: impl FnMut(&Event) -> bool,
    ) -> Result<Event, DriverError> {
        self.wait_with(max_polls, until, |_| {})
    }

    /// Polls until `pending` is answered (at most `max_polls` polls) and returns the answering
    /// event, or the error it means. Everything else polled meanwhile goes to `others`.
    pub fn wait_for(
        &mut self,
        pending: Pending,
        max_polls: u64,
        mut others: impl FnMut(Polled),
    ) -> Result<Event, DriverError> {
        for _ in 0..max_polls {
            match self.poll()? {
                Some(Polled::Event(e)) => match pending.outcome(&e) {
                    Some(Ok(())) => return Ok(e),
                    Some(Err(err)) => return Err(err),
                    None => others(Polled::Event(e)),
                },
                Some(p) => others(p),
                None => core::hint::spin_loop(),
            }
        }
        Err(DriverError::Timeout)
    }

    // ---- non-blocking requests ------------------------------------------------------------

    /// Starts connecting (version fallback as in [`Client`]; RequestOffers follows acceptance).
    /// When the host refuses connection ids at the hypercall, the refusals (and possibly
    /// [`Event::ConnectFailed`]) are already queued when this returns: see
    /// [`Self::events_waiting`].
    pub fn begin_connect(&mut self) -> Result<Pending, DriverError> {
        self.client.connect()?;
        self.flush()?;
        Ok(Pending::Connect)
    }

    /// Starts creating a GPADL over whole pages (`pfns`, e.g. `&[PageRef]` or `&[u64]`) for
    /// channel `relid`.
    pub fn begin_create_gpadl<S: PfnSource + ?Sized>(
        &mut self,
        relid: u32,
        pfns: &S,
    ) -> Result<Pending, DriverError> {
        let n = pfns.pfn_count();
        let count = n
            .checked_mul(PAGE_SIZE)
            .and_then(|b| u32::try_from(b).ok())
            .ok_or(ClientError::Gpadl(GpadlError::TooManyPfns(n)))?;
        let gpadl = self.client.create_gpadl(relid, 0, count, pfns)?;
        self.flush()?;
        Ok(Pending::GpadlCreate { relid, gpadl })
    }

    /// Starts tearing a created GPADL down (not an open channel's ring: close that instead).
    pub fn begin_teardown_gpadl(&mut self, gpadl: u32) -> Result<Pending, DriverError> {
        self.client.teardown_gpadl(gpadl)?;
        self.flush()?;
        Ok(Pending::GpadlTeardown { gpadl })
    }

    /// Starts opening channel `relid` on its created GPADL `ring_gpadl` over `pages` (the first
    /// `outbound_pages` for guest -> host, each ring's first page its control page; both control
    /// pages are initialised here), interrupts to `target_vp`. On success turn the returned
    /// [`OpeningChannel`] into the data path; on a refusal the GPADL stays created (reuse it or
    /// tear it down).
    pub fn begin_open_channel<'p, 'r>(
        &mut self,
        relid: u32,
        ring_gpadl: u32,
        pages: &'p [PageRef<'r>],
        outbound_pages: usize,
        target_vp: u32,
        user_data: [u8; 120],
    ) -> Result<OpeningChannel<'p, 'r>, DriverError> {
        let connection_id = self
            .client
            .channel(relid)
            .ok_or(ClientError::UnknownChannel(relid))?
            .connection_id();
        // Before the open: the host reads the ring indices when it accepts.
        let (outbound, inbound) = split_rings(pages, outbound_pages).map_err(ChannelError::Ring)?;
        // At most `pages.len()` (split_rings checked), so it fits.
        let offset = u32::try_from(outbound_pages).map_err(|_| ClientError::WrongState)?;
        self.client
            .open(relid, ring_gpadl, offset, target_vp, user_data)?;
        self.flush()?;
        Ok(OpeningChannel {
            relid,
            ring_gpadl,
            connection_id,
            outbound,
            inbound,
        })
    }

    /// Starts closing an open channel: CloseChannel, then its ring GPADL's teardown; answered when
    /// the ring pages are free.
    pub fn begin_close_channel(&mut self, relid: u32) -> Result<Pending, DriverError> {
        let ring_gpadl = match self.client.channel(relid).map(|c| c.state) {
            Some(ChannelState::Open { ring_gpadl }) => ring_gpadl,
            Some(_) => return Err(ClientError::WrongState.into()),
            None => return Err(ClientError::UnknownChannel(relid).into()),
        };
        self.client.close(relid)?;
        self.flush()?;
        Ok(Pending::Close { relid, ring_gpadl })
    }

    /// Starts UNLOAD (for reboot, kexec, crash).
    pub fn begin_unload(&mut self) -> Result<Pending, DriverError> {
        self.client.unload()?;
        self.flush()?;
        Ok(Pending::Unload)
    }

    // ---- blocking helpers (polling mode) ----------------------------------------------------

    /// Connects and returns the version (RequestOffers is posted right after). Blocking: events
    /// other than the answer are dropped.
    pub fn connect(&mut self, max_polls: u64) -> Result<Version, DriverError> {
        let p = self.begin_connect()?;
        match self.wait_for(p, max_polls, |_| {})? {
            Event::Connected { version, .. } => Ok(version),
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
        let p = self.begin_create_gpadl(relid, pages)?;
        self.wait_for(p, max_polls, |_| {})?;
        match p {
            Pending::GpadlCreate { gpadl, .. } => Ok(gpadl),
            _ => Err(DriverError::Timeout),
        }
    }

    /// Tears a GPADL down and waits until the host confirms (its pages are then free).
    pub fn teardown_gpadl(&mut self, handle: u32, max_polls: u64) -> Result<(), DriverError> {
        let p = self.begin_teardown_gpadl(handle)?;
        self.wait_for(p, max_polls, |_| {}).map(|_| ())
    }

    /// Opens channel `relid` with its rings in `pages` (the first `outbound_pages` for guest ->
    /// host, each ring's first page its control page): creates the ring GPADL, initialises both
    /// control pages, sends OpenChannel with interrupts to `target_vp`, and waits for the result.
    /// Returns the channel's data path and the ring GPADL handle. If the host refuses the open,
    /// the ring GPADL is torn down again (not waited for) and [`DriverError::Refused`] returned;
    /// if the channel is rescinded meanwhile, [`DriverError::Rescinded`] (the client tears the
    /// GPADL down itself).
    pub fn open_channel<'p, 'r>(
        &mut self,
        relid: u32,
        pages: &'p [PageRef<'r>],
        outbound_pages: usize,
        target_vp: u32,
        user_data: [u8; 120],
        max_polls: u64,
    ) -> Result<(Channel<PageRefRing<'p, 'r>>, u32), DriverError> {
        if self.client.channel(relid).is_none() {
            return Err(ClientError::UnknownChannel(relid).into());
        }
        // Refuse unusable ring pages before a GPADL exists (the open sets them up again).
        split_rings(pages, outbound_pages).map_err(ChannelError::Ring)?;
        let gpadl = self.create_gpadl(relid, pages, max_polls)?;
        let opening =
            self.begin_open_channel(relid, gpadl, pages, outbound_pages, target_vp, user_data)?;
        match self.wait_for(opening.pending(), max_polls, |_| {}) {
            Ok(_) => Ok((opening.into_channel()?, gpadl)),
            Err(DriverError::Refused(status)) => {
                // The ring GPADL is of no use now: tear it down (its Event::GpadlTorndown comes
                // later) so the host can drop it.
                self.begin_teardown_gpadl(gpadl)?;
                Err(DriverError::Refused(status))
            }
            Err(e) => Err(e),
        }
    }

    /// Closes an open channel and waits until its ring GPADL is torn down.
    pub fn close_channel(&mut self, relid: u32, max_polls: u64) -> Result<(), DriverError> {
        let p = self.begin_close_channel(relid)?;
        self.wait_for(p, max_polls, |_| {}).map(|_| ())
    }

    /// Sends UNLOAD and waits for the host's response (for reboot, kexec, crash).
    pub fn unload(&mut self, max_polls: u64) -> Result<(), DriverError> {
        let p = self.begin_unload()?;
        self.wait_for(p, max_polls, |_| {}).map(|_| ())
    }

    // ---- interrupt mode ---------------------------------------------------------------------

    /// The work of a VMBus interrupt (SINT2), also usable as one round of a polling loop: hands
    /// out the queued events and drains SINT2's message slot (at most
    /// [`MAX_MESSAGES_PER_SERVICE`] results, so a flooding host cannot keep the guest here),
    /// passing each result to `on_message` (a bad host message is an `Err` there, and draining
    /// continues), then takes the channel event flags, calling `on_channel` with each signalled
    /// relid. [`Serviced::more`] says the bound stopped it with work left.
    pub fn service(
        &mut self,
        mut on_message: impl FnMut(Result<Polled, DriverError>),
        on_channel: impl FnMut(u32),
    ) -> Serviced {
        let mut done = Serviced::default();
        let mut emptied = false;
        while done.messages < MAX_MESSAGES_PER_SERVICE {
            match self.poll() {
                Ok(None) => {
                    emptied = true;
                    break;
                }
                Ok(Some(p)) => on_message(Ok(p)),
                Err(e) => on_message(Err(e)),
            }
            done.messages += 1;
        }
        if !emptied {
            done.more = self.work_waiting();
        }
        match self.take_channel_interrupts(on_channel) {
            Ok(k) => done.channels = k,
            Err(e) => {
                on_message(Err(e));
                done.messages += 1;
            }
        }
        done
    }

    /// Whether [`Self::poll`] has something to hand out now: a queued event or error, or a
    /// message in SINT2's slot.
    pub fn work_waiting(&self) -> bool {
        !self.events.is_empty()
            || self.deferred.is_some()
            || self
                .synic
                .poll(VMBUS_SINT)
                .is_ok_and(|t| t != MessageType::NONE)
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
