//! The guest's VMBus control client, sans-IO (fact sheet §5.5, §5.6).
//!
//! [`Client`] is a state machine. The caller feeds it every VMBus message that arrives in SINT2's
//! slot ([`Client::handle_message`]) and asks it for what to post ([`Client::poll_outgoing`],
//! each an [`Outgoing`] with the connection id to post it to). Requests (connect, GPADLs, open,
//! close, unload...) are methods that queue messages; answers come back as [`Event`]s. It does
//! no I/O and allocates nothing: capacities are const generics (channels `C`, GPADLs `G`, queued
//! messages `O`). [`crate::driver::VmBus`] binds it to the hypercall and SynIC drivers.
//!
//! Behaviour:
//! - **Connect** tries each version of [`ClientConfig::versions`] in order (default: Linux's 5.3
//!   down to 2.4). InitiateContact goes to connection 4 from 5.0 on, else 1; a refusal, or an
//!   HvPostMessage that fails with INVALID_CONNECTION_ID ([`Client::contact_post_failed`]), moves
//!   to the next version. On acceptance every later message goes to the host's msg_conn_id (from
//!   5.0; connection 1 before), and RequestOffers is queued at once.
//! - **Offers** are validated (relid 1..2047, unique) and kept; a sub-channel offer (index ≠ 0,
//!   same type and instance as a known primary) names its primary in [`Event::Offer`].
//! - **GPADLs** get handles counting up from 0xE1E10; header and bodies are queued together.
//! - **Open/close**: open needs a created GPADL of that channel and is matched on (relid, openid
//!   = relid). Close queues CLOSECHANNEL and the ring GPADL's teardown.
//! - **Rescind**: the channel stops; if it was open or opening, CLOSECHANNEL is sent; each of its
//!   GPADLs is torn down; once all are torn down, RELID_RELEASED is sent and the relid forgotten.
//! - **Unload** (≥ 3.0): UNLOAD, then on UNLOAD_RESPONSE everything is forgotten and the client
//!   can connect again (reboot, kexec).
//!
//! Anything the host sends that is malformed or does not fit the current state is an error
//! ([`ClientError`]) and changes nothing.
#![forbid(unsafe_code)]

use crate::message::{
    ChannelMessage, ChannelMessageType, CloseChannel, EncodeError, GpadlError, GpadlMessages,
    GpadlTeardown, InitiateContact, MessageBuf, ModifyChannel, OfferChannel, OpenChannel,
    ParseError, PfnSource, RelIdReleased, TlConnectRequest, TlConnectResult, FIRST_GPADL_HANDLE,
    MAX_RELID,
};
use crate::version::{Version, MESSAGE_CONNECTION_ID, VMBUS_SINT};
use crate::Guid;
use heapless::{Deque, Vec};

/// How the client connects.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Versions to try, in order.
    pub versions: &'static [Version],
    /// VP index that receives control messages (Linux: CPU 0's).
    pub target_vcpu: u32,
    /// Legacy interrupt page GPA, sent with versions before 5.0 (0 = none).
    pub interrupt_page: u64,
    /// Parent -> child monitor page GPA (0 = none).
    pub monitor_page1: u64,
    /// Child -> parent monitor page GPA (0 = none).
    pub monitor_page2: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            versions: &Version::LINUX_ORDER,
            target_vcpu: 0,
            interrupt_page: 0,
            monitor_page1: 0,
            monitor_page2: 0,
        }
    }
}

/// A message to post with HvPostMessage (SynIC message type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The connection id to post to.
    pub connection_id: u32,
    /// The message.
    pub message: MessageBuf,
}

impl Outgoing {
    /// The message type.
    pub fn msgtype(&self) -> ChannelMessageType {
        let b = self.message.as_bytes();
        ChannelMessageType(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What the host told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The host accepted `version`; later messages go to `msg_conn_id`.
    Connected {
        /// The negotiated version.
        version: Version,
        /// The message connection id in use from now on.
        msg_conn_id: u32,
    },
    /// The host refused `version`; the next one is being tried.
    VersionRefused {
        /// The refused version.
        version: Version,
    },
    /// Every version was refused.
    ConnectFailed,
    /// A channel offer.
    Offer {
        /// Its relid.
        relid: u32,
        /// For a sub-channel, the relid of its primary channel.
        subchannel_of: Option<u32>,
    },
    /// The host has sent every offer.
    AllOffersDelivered,
    /// A channel was rescinded.
    Rescinded {
        /// Its relid.
        relid: u32,
        /// Whether it was open (or opening).
        was_open: bool,
    },
    /// Answer to a GPADL creation.
    GpadlCreated {
        /// The channel.
        relid: u32,
        /// The handle.
        gpadl: u32,
        /// 0 = created; otherwise the GPADL is gone.
        status: u32,
    },
    /// A GPADL is torn down: its memory is the guest's again.
    GpadlTorndown {
        /// The channel it belonged to.
        relid: u32,
        /// The handle.
        gpadl: u32,
    },
    /// Answer to an open.
    OpenResult {
        /// The channel.
        relid: u32,
        /// 0 = open.
        status: u32,
    },
    /// Answer to ModifyChannel (5.3+).
    ModifyChannelResponse {
        /// The channel.
        relid: u32,
        /// 0 = success.
        status: i32,
    },
    /// An hv_sock connect result.
    TlConnectResult(TlConnectResult),
    /// The host confirmed UNLOAD: everything is forgotten; connect again to continue.
    Unloaded,
}

/// Why an offer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferProblem {
    /// relid 0 or ≥ 2048.
    RelidOutOfRange,
    /// A channel with this relid exists.
    DuplicateRelid,
    /// A primary channel (index 0) with this type and instance exists.
    DuplicateInstance,
    /// No room for another channel.
    TableFull,
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The host's message did not decode.
    Parse(ParseError),
    /// A message that is not valid now (wrong direction, wrong state, nothing pending).
    Unexpected(ChannelMessageType),
    /// An offer was refused.
    BadOffer {
        /// Its relid.
        relid: u32,
        /// Why.
        problem: OfferProblem,
    },
    /// Not connected.
    NotConnected,
    /// Already connected or connecting.
    AlreadyConnected,
    /// No such channel.
    UnknownChannel(u32),
    /// No such GPADL (or not this channel's).
    UnknownGpadl(u32),
    /// The channel or GPADL is not in a state that allows this.
    WrongState,
    /// The negotiated version does not have this message.
    Unsupported,
    /// The GPADL table is full.
    TooManyGpadls,
    /// The outgoing queue cannot take the messages now: post the queued ones first.
    OutboxFull,
    /// The GPADL description is invalid.
    Gpadl(GpadlError),
    /// A message would exceed 240 bytes.
    Encode(EncodeError),
}

impl From<ParseError> for ClientError {
    fn from(e: ParseError) -> Self {
        Self::Parse(e)
    }
}

impl From<GpadlError> for ClientError {
    fn from(e: GpadlError) -> Self {
        Self::Gpadl(e)
    }
}

impl From<EncodeError> for ClientError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "bad message from the host: {e}"),
            Self::Unexpected(t) => write!(f, "unexpected {t:?}"),
            Self::BadOffer { relid, problem } => write!(f, "offer {relid} refused: {problem:?}"),
            Self::NotConnected => f.write_str("not connected"),
            Self::AlreadyConnected => f.write_str("already connected"),
            Self::UnknownChannel(r) => write!(f, "no channel {r}"),
            Self::UnknownGpadl(g) => write!(f, "no GPADL {g:#x}"),
            Self::WrongState => f.write_str("not possible in this state"),
            Self::Unsupported => f.write_str("not supported by the negotiated version"),
            Self::TooManyGpadls => f.write_str("GPADL table full"),
            Self::OutboxFull => f.write_str("outgoing queue full"),
            Self::Gpadl(e) => write!(f, "invalid GPADL: {e:?}"),
            Self::Encode(e) => e.fmt(f),
        }
    }
}

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (initially, after a failed connect, after unload).
    Disconnected,
    /// InitiateContact for `versions[index]` is out.
    Contacting {
        /// Index into the version list.
        index: usize,
    },
    /// Connected.
    Connected {
        /// The version.
        version: Version,
        /// Where messages go.
        msg_conn_id: u32,
    },
    /// UNLOAD is out.
    Unloading,
}

/// A channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered, not open.
    Offered,
    /// OpenChannel is out.
    Opening {
        /// The ring GPADL.
        ring_gpadl: u32,
    },
    /// Open.
    Open {
        /// The ring GPADL.
        ring_gpadl: u32,
    },
    /// Rescinded: closing and tearing down before RELID_RELEASED.
    Rescinded,
}

/// A known channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelEntry {
    /// The host's offer.
    pub offer: OfferChannel,
    /// Its state.
    pub state: ChannelState,
    /// For a sub-channel, its primary's relid.
    pub subchannel_of: Option<u32>,
    send_close: bool,
    send_release: bool,
}

impl ChannelEntry {
    /// The relid.
    pub fn relid(&self) -> u32 {
        self.offer.child_relid
    }

    /// The class GUID.
    pub fn class(&self) -> Guid {
        self.offer.if_type
    }

    /// The instance GUID.
    pub fn instance(&self) -> Guid {
        self.offer.if_instance
    }

    /// The HvSignalEvent connection id for guest -> host interrupts.
    pub fn connection_id(&self) -> u32 {
        self.offer.connection_id
    }
}

/// A GPADL's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpadlState {
    /// GPADL_HEADER is queued or out; waiting for GPADL_CREATED.
    Creating,
    /// Created.
    Created,
    /// Teardown decided, GPADL_TEARDOWN not yet handed out.
    TeardownQueued,
    /// GPADL_TEARDOWN is out; waiting for GPADL_TORNDOWN.
    TearingDown,
}

/// A known GPADL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpadlEntry {
    /// The handle.
    pub handle: u32,
    /// The channel.
    pub relid: u32,
    /// Its state.
    pub state: GpadlState,
}

/// The sans-IO VMBus client. `C` channels, `G` GPADLs, `O` queued outgoing messages.
#[derive(Debug)]
pub struct Client<const C: usize = 16, const G: usize = 32, const O: usize = 32> {
    config: ClientConfig,
    state: ConnectionState,
    channels: Vec<ChannelEntry, C>,
    gpadls: Vec<GpadlEntry, G>,
    outbox: Deque<Outgoing, O>,
    next_gpadl: u32,
}

impl<const C: usize, const G: usize, const O: usize> Client<C, G, O> {
    /// A disconnected client.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: ConnectionState::Disconnected,
            channels: Vec::new(),
            gpadls: Vec::new(),
            outbox: Deque::new(),
            next_gpadl: FIRST_GPADL_HANDLE,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The negotiated version, when connected.
    pub fn version(&self) -> Option<Version> {
        match self.state {
            ConnectionState::Connected { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The known channels.
    pub fn channels(&self) -> &[ChannelEntry] {
        &self.channels
    }

    /// One channel.
    pub fn channel(&self, relid: u32) -> Option<&ChannelEntry> {
        self.channels.iter().find(|c| c.relid() == relid)
    }

    /// The first channel of class `class` (primary channels only).
    pub fn find_channel(&self, class: &Guid) -> Option<&ChannelEntry> {
        self.channels
            .iter()
            .find(|c| c.offer.if_type == *class && c.offer.sub_channel_index == 0)
    }

    /// The known GPADLs.
    pub fn gpadls(&self) -> &[GpadlEntry] {
        &self.gpadls
    }

    /// One GPADL.
    pub fn gpadl(&self, handle: u32) -> Option<&GpadlEntry> {
        self.gpadls.iter().find(|g| g.handle == handle)
    }

    fn channel_mut(&mut self, relid: u32) -> Result<&mut ChannelEntry, ClientError> {
        self.channels
            .iter_mut()
            .find(|c| c.offer.child_relid == relid)
            .ok_or(ClientError::UnknownChannel(relid))
    }

    fn msg_conn_id(&self) -> Result<u32, ClientError> {
        match self.state {
            ConnectionState::Connected { msg_conn_id, .. } => Ok(msg_conn_id),
            _ => Err(ClientError::NotConnected),
        }
    }

    fn queue(&mut self, connection_id: u32, message: MessageBuf) -> Result<(), ClientError> {
        self.outbox
            .push_back(Outgoing {
                connection_id,
                message,
            })
            .map_err(|_| ClientError::OutboxFull)
    }

    fn queue_contact(&mut self, index: usize) -> Result<(), ClientError> {
        let version = self.config.versions[index];
        let cfg = &self.config;
        let msg = if version.uses_msg_conn_id() {
            InitiateContact::with_target_sint(
                version,
                cfg.target_vcpu,
                VMBUS_SINT,
                0,
                cfg.monitor_page1,
                cfg.monitor_page2,
            )
        } else {
            InitiateContact::with_interrupt_page(
                version,
                cfg.target_vcpu,
                cfg.interrupt_page,
                cfg.monitor_page1,
                cfg.monitor_page2,
            )
        };
        self.queue(
            version.initiate_contact_connection_id(),
            MessageBuf::fixed(&msg),
        )?;
        self.state = ConnectionState::Contacting { index };
        Ok(())
    }

    /// Starts connecting: queues InitiateContact for the first version.
    pub fn connect(&mut self) -> Result<(), ClientError> {
        if self.state != ConnectionState::Disconnected {
            return Err(ClientError::AlreadyConnected);
        }
        if self.config.versions.is_empty() {
            return Err(ClientError::Unsupported);
        }
        self.queue_contact(0)
    }

    fn next_version(&mut self, index: usize) -> Result<Option<Event>, ClientError> {
        let version = self.config.versions[index];
        if index + 1 < self.config.versions.len() {
            self.queue_contact(index + 1)?;
            Ok(Some(Event::VersionRefused { version }))
        } else {
            self.state = ConnectionState::Disconnected;
            Ok(Some(Event::ConnectFailed))
        }
    }

    /// HvPostMessage of the pending InitiateContact failed with INVALID_CONNECTION_ID (the host
    /// does not listen on that connection): try the next version, as Linux does.
    pub fn contact_post_failed(&mut self) -> Result<Option<Event>, ClientError> {
        match self.state {
            ConnectionState::Contacting { index } => self.next_version(index),
            _ => Err(ClientError::WrongState),
        }
    }

    /// The next message to post, if any. Control messages come first in the order they were
    /// queued; then closes, GPADL teardowns and RELID_RELEASED decided by close and rescind.
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        if let Some(o) = self.outbox.pop_front() {
            return Some(o);
        }
        let conn = match self.state {
            ConnectionState::Connected { msg_conn_id, .. } => msg_conn_id,
            _ => return None,
        };
        if let Some(c) = self.channels.iter_mut().find(|c| c.send_close) {
            c.send_close = false;
            let m = CloseChannel::new(c.offer.child_relid);
            return Some(Outgoing {
                connection_id: conn,
                message: MessageBuf::fixed(&m),
            });
        }
        if let Some(g) = self
            .gpadls
            .iter_mut()
            .find(|g| g.state == GpadlState::TeardownQueued)
        {
            g.state = GpadlState::TearingDown;
            let m = GpadlTeardown::new(g.relid, g.handle);
            return Some(Outgoing {
                connection_id: conn,
                message: MessageBuf::fixed(&m),
            });
        }
        if let Some(i) = self.channels.iter().position(|c| c.send_release) {
            let c = self.channels.swap_remove(i);
            let m = RelIdReleased::new(c.offer.child_relid);
            return Some(Outgoing {
                connection_id: conn,
                message: MessageBuf::fixed(&m),
            });
        }
        None
    }

    /// Whether anything is waiting to be posted.
    pub fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
            || (self.msg_conn_id().is_ok()
                && (self.channels.iter().any(|c| c.send_close || c.send_release)
                    || self
                        .gpadls
                        .iter()
                        .any(|g| g.state == GpadlState::TeardownQueued)))
    }

    /// Handles one message from the host (the SynIC payload of a type-1 message in SINT2).
    pub fn handle_message(&mut self, bytes: &[u8]) -> Result<Option<Event>, ClientError> {
        let msg = ChannelMessage::parse(bytes)?;
        let unexpected = Err(ClientError::Unexpected(msg.msgtype()));
        if self.state == ConnectionState::Unloading {
            // Linux drains everything but the response while unloading.
            return match msg {
                ChannelMessage::UnloadResponse => {
                    self.state = ConnectionState::Disconnected;
                    self.channels.clear();
                    self.gpadls.clear();
                    self.outbox.clear();
                    Ok(Some(Event::Unloaded))
                }
                _ => Ok(None),
            };
        }
        match msg {
            ChannelMessage::VersionResponse(r) => {
                let ConnectionState::Contacting { index } = self.state else {
                    return unexpected;
                };
                let version = self.config.versions[index];
                // From 5.0 the host must name a non-zero connection; a zero one is treated as
                // a refusal rather than posting to connection 0.
                if !r.accepted() || (version.uses_msg_conn_id() && r.msg_conn_id == 0) {
                    return self.next_version(index);
                }
                let msg_conn_id = if version.uses_msg_conn_id() {
                    r.msg_conn_id
                } else {
                    MESSAGE_CONNECTION_ID
                };
                self.state = ConnectionState::Connected {
                    version,
                    msg_conn_id,
                };
                self.queue(
                    msg_conn_id,
                    MessageBuf::header_only(ChannelMessageType::REQUEST_OFFERS),
                )?;
                Ok(Some(Event::Connected {
                    version,
                    msg_conn_id,
                }))
            }
            _ if self.msg_conn_id().is_err() => unexpected,
            ChannelMessage::OfferChannel(offer) => self.on_offer(offer).map(Some),
            ChannelMessage::AllOffersDelivered => Ok(Some(Event::AllOffersDelivered)),
            ChannelMessage::RescindChannelOffer(r) => self.on_rescind(r.child_relid).map(Some),
            ChannelMessage::GpadlCreated(m) => {
                let Some(i) = self.gpadls.iter().position(|g| {
                    g.handle == m.gpadl
                        && g.relid == m.child_relid
                        && g.state == GpadlState::Creating
                }) else {
                    return Err(ClientError::UnknownGpadl(m.gpadl));
                };
                if m.creation_status == 0 {
                    self.gpadls[i].state = GpadlState::Created;
                } else {
                    self.gpadls.swap_remove(i);
                }
                Ok(Some(Event::GpadlCreated {
                    relid: m.child_relid,
                    gpadl: m.gpadl,
                    status: m.creation_status,
                }))
            }
            ChannelMessage::GpadlTorndown(m) => {
                let Some(i) = self
                    .gpadls
                    .iter()
                    .position(|g| g.handle == m.gpadl && g.state == GpadlState::TearingDown)
                else {
                    return Err(ClientError::UnknownGpadl(m.gpadl));
                };
                let g = self.gpadls.swap_remove(i);
                self.release_if_done(g.relid);
                Ok(Some(Event::GpadlTorndown {
                    relid: g.relid,
                    gpadl: g.handle,
                }))
            }
            ChannelMessage::OpenResult(m) => {
                let Ok(c) = self.channel_mut(m.child_relid) else {
                    return Err(ClientError::UnknownChannel(m.child_relid));
                };
                // Linux uses openid = relid and matches on both.
                let ChannelState::Opening { ring_gpadl } = c.state else {
                    return unexpected;
                };
                if m.open_id != m.child_relid {
                    return unexpected;
                }
                c.state = if m.status == 0 {
                    ChannelState::Open { ring_gpadl }
                } else {
                    ChannelState::Offered
                };
                Ok(Some(Event::OpenResult {
                    relid: m.child_relid,
                    status: m.status,
                }))
            }
            ChannelMessage::ModifyChannelResponse(m) => {
                self.channel(m.child_relid)
                    .ok_or(ClientError::UnknownChannel(m.child_relid))?;
                Ok(Some(Event::ModifyChannelResponse {
                    relid: m.child_relid,
                    status: m.status,
                }))
            }
            ChannelMessage::TlConnectResult(m) => Ok(Some(Event::TlConnectResult(m))),
            // Host-bound types, the reserved-channel family, and a response nobody asked for.
            _ => unexpected,
        }
    }

    fn on_offer(&mut self, offer: OfferChannel) -> Result<Event, ClientError> {
        let relid = offer.child_relid;
        let refuse = |problem| Err(ClientError::BadOffer { relid, problem });
        if relid == 0 || relid >= MAX_RELID {
            return refuse(OfferProblem::RelidOutOfRange);
        }
        if self.channel(relid).is_some() {
            return refuse(OfferProblem::DuplicateRelid);
        }
        let primary = self.channels.iter().find(|c| {
            c.offer.sub_channel_index == 0
                && c.offer.if_type == offer.if_type
                && c.offer.if_instance == offer.if_instance
                && c.state != ChannelState::Rescinded
        });
        let subchannel_of = match (primary, offer.sub_channel_index) {
            (Some(_), 0) => return refuse(OfferProblem::DuplicateInstance),
            (Some(p), _) => Some(p.offer.child_relid),
            (None, _) => None,
        };
        let entry = ChannelEntry {
            offer,
            state: ChannelState::Offered,
            subchannel_of,
            send_close: false,
            send_release: false,
        };
        if self.channels.push(entry).is_err() {
            return refuse(OfferProblem::TableFull);
        }
        Ok(Event::Offer {
            relid,
            subchannel_of,
        })
    }

    fn on_rescind(&mut self, relid: u32) -> Result<Event, ClientError> {
        let c = self.channel_mut(relid)?;
        let was_open = match c.state {
            ChannelState::Rescinded => {
                return Err(ClientError::Unexpected(
                    ChannelMessageType::RESCIND_CHANNEL_OFFER,
                ))
            }
            ChannelState::Open { .. } | ChannelState::Opening { .. } => true,
            ChannelState::Offered => false,
        };
        c.state = ChannelState::Rescinded;
        c.send_close = was_open;
        // GPADLs still being created will not be answered by a host that rescinded the channel:
        // forget them. Created ones are torn down.
        self.gpadls
            .retain(|g| !(g.relid == relid && g.state == GpadlState::Creating));
        for g in self.gpadls.iter_mut().filter(|g| g.relid == relid) {
            if g.state == GpadlState::Created {
                g.state = GpadlState::TeardownQueued;
            }
        }
        self.release_if_done(relid);
        Ok(Event::Rescinded { relid, was_open })
    }

    fn release_if_done(&mut self, relid: u32) {
        let busy = self.gpadls.iter().any(|g| g.relid == relid);
        if let Ok(c) = self.channel_mut(relid) {
            if c.state == ChannelState::Rescinded && !busy {
                c.send_release = true;
            }
        }
    }

    /// Creates a GPADL over `byte_count` bytes starting `byte_offset` into the first page of
    /// `pfns` for channel `relid`: queues GPADL_HEADER and the GPADL_BODY messages and returns
    /// the handle. [`Event::GpadlCreated`] follows.
    pub fn create_gpadl<S: PfnSource + ?Sized>(
        &mut self,
        relid: u32,
        byte_offset: u32,
        byte_count: u32,
        pfns: &S,
    ) -> Result<u32, ClientError> {
        let conn = self.msg_conn_id()?;
        let c = self
            .channel(relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if c.state == ChannelState::Rescinded {
            return Err(ClientError::WrongState);
        }
        if self.gpadls.is_full() {
            return Err(ClientError::TooManyGpadls);
        }
        let mut handle = self.next_gpadl;
        while handle == 0 || self.gpadl(handle).is_some() {
            handle = handle.wrapping_add(1);
        }
        let msgs = GpadlMessages::new(relid, handle, byte_offset, byte_count, pfns)?;
        if O - self.outbox.len() < msgs.message_count() {
            return Err(ClientError::OutboxFull);
        }
        for m in msgs {
            self.queue(conn, m)?;
        }
        self.next_gpadl = handle.wrapping_add(1);
        let _ = self.gpadls.push(GpadlEntry {
            handle,
            relid,
            state: GpadlState::Creating,
        });
        Ok(handle)
    }

    /// Tears a created GPADL down ([`Event::GpadlTorndown`] follows). Not the ring GPADL of an
    /// open channel: close it instead.
    pub fn teardown_gpadl(&mut self, handle: u32) -> Result<(), ClientError> {
        self.msg_conn_id()?;
        let g = self
            .gpadl(handle)
            .ok_or(ClientError::UnknownGpadl(handle))?;
        let in_use = self.channels.iter().any(|c| match c.state {
            ChannelState::Opening { ring_gpadl } | ChannelState::Open { ring_gpadl } => {
                ring_gpadl == handle
            }
            _ => false,
        });
        if g.state != GpadlState::Created || in_use {
            return Err(ClientError::WrongState);
        }
        if let Some(g) = self.gpadls.iter_mut().find(|g| g.handle == handle) {
            g.state = GpadlState::TeardownQueued;
        }
        Ok(())
    }

    /// Opens channel `relid` on the created GPADL `ring_gpadl`, the host -> guest ring starting
    /// `downstream_page_offset` pages into it, interrupts to `target_vp` ([`Event::OpenResult`]
    /// follows).
    pub fn open(
        &mut self,
        relid: u32,
        ring_gpadl: u32,
        downstream_page_offset: u32,
        target_vp: u32,
        user_data: [u8; 120],
    ) -> Result<(), ClientError> {
        let conn = self.msg_conn_id()?;
        match self.gpadl(ring_gpadl) {
            Some(g) if g.relid == relid && g.state == GpadlState::Created => {}
            Some(_) => return Err(ClientError::WrongState),
            None => return Err(ClientError::UnknownGpadl(ring_gpadl)),
        }
        let c = self
            .channel(relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if c.state != ChannelState::Offered {
            return Err(ClientError::WrongState);
        }
        let m = OpenChannel::new(
            relid,
            relid,
            ring_gpadl,
            target_vp,
            downstream_page_offset,
            user_data,
        );
        self.queue(conn, MessageBuf::fixed(&m))?;
        self.channel_mut(relid)?.state = ChannelState::Opening { ring_gpadl };
        Ok(())
    }

    /// Closes an open channel: CLOSECHANNEL, then the ring GPADL's teardown
    /// ([`Event::GpadlTorndown`] says when the ring memory is free). The channel can be opened
    /// again.
    pub fn close(&mut self, relid: u32) -> Result<(), ClientError> {
        self.msg_conn_id()?;
        let c = self.channel_mut(relid)?;
        let ChannelState::Open { ring_gpadl } = c.state else {
            return Err(ClientError::WrongState);
        };
        c.state = ChannelState::Offered;
        c.send_close = true;
        if let Some(g) = self.gpadls.iter_mut().find(|g| g.handle == ring_gpadl) {
            g.state = GpadlState::TeardownQueued;
        }
        Ok(())
    }

    /// Moves an open channel's interrupts to `target_vp` (4.1+; from 5.3
    /// [`Event::ModifyChannelResponse`] follows).
    pub fn modify_channel(&mut self, relid: u32, target_vp: u32) -> Result<(), ClientError> {
        let conn = self.msg_conn_id()?;
        if !self.version().is_some_and(Version::supports_modify_channel) {
            return Err(ClientError::Unsupported);
        }
        let c = self
            .channel(relid)
            .ok_or(ClientError::UnknownChannel(relid))?;
        if !matches!(c.state, ChannelState::Open { .. }) {
            return Err(ClientError::WrongState);
        }
        self.queue(
            conn,
            MessageBuf::fixed(&ModifyChannel::new(relid, target_vp)),
        )
    }

    /// Asks the host for an hv_sock connection (4.0+).
    pub fn tl_connect(
        &mut self,
        guest_endpoint_id: Guid,
        host_service_id: Guid,
    ) -> Result<(), ClientError> {
        let conn = self.msg_conn_id()?;
        if self.version().is_none_or(|v| v < Version::WIN10) {
            return Err(ClientError::Unsupported);
        }
        let m = TlConnectRequest::new(guest_endpoint_id, host_service_id);
        self.queue(conn, MessageBuf::fixed(&m))
    }

    /// Starts UNLOAD (3.0+): [`Event::Unloaded`] follows, after which every channel and GPADL is
    /// forgotten. Messages still queued are dropped.
    pub fn unload(&mut self) -> Result<(), ClientError> {
        let conn = self.msg_conn_id()?;
        if !self.version().is_some_and(Version::supports_unload) {
            return Err(ClientError::Unsupported);
        }
        self.outbox.clear();
        self.queue(conn, MessageBuf::header_only(ChannelMessageType::UNLOAD))?;
        self.state = ConnectionState::Unloading;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
