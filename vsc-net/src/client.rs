//! The netvsc guest client as a sans-IO state machine (fact sheet §9.2–§9.5).
//!
//! [`NetvscClient`] never touches a ring or guest memory. It queues the packets it wants sent
//! (take them with [`NetvscClient::peek_transmit`] and, once they are in the ring,
//! [`NetvscClient::transmitted`]) and consumes every packet the host sends with
//! [`NetvscClient::on_packet`], which reports [`Event`]s to a callback: initialization done,
//! a received frame, link up/down, a transmit finished.
//!
//! **Bring-up** (Linux's order): NVSP INIT for each version newest first until one is accepted,
//! SEND_NDIS_CONFIG (MTU + 14, from v2), SEND_NDIS_VERSION, the receive buffer GPADL (id
//! 0xCAFE), the send buffer GPADL (id 0); then RNDIS INITIALIZE, QUERY maximum frame size,
//! permanent MAC, offload capabilities, SET offload parameters (checksum), QUERY media connect
//! status, SET packet filter. The caller supplies the two GPADL handles and their sizes.
//!
//! **RNDIS control messages** go out GPA-direct ([`Placement::Control`]): the glue copies the
//! bytes [`OutPacket::rndis`] into its control page and names that page in a one-range
//! GPA-direct packet, as Linux does. One control message is in flight at a time; the next is
//! queued when both its NVSP completion (the page is free) and its RNDIS reply have arrived.
//!
//! **Transmit** through the send buffer: [`NetvscClient::begin_transmit`] reserves a section
//! (a bitmap of `64 × W` sections) and returns the RNDIS header to write before the frame;
//! the glue writes header + frame at [`TxReservation::offset`] in the send buffer and calls
//! [`NetvscClient::queue_transmit`]. The host's completion frees the section. Any frame up
//! to the MTU (also one larger than a section) can instead go GPA-direct from a buffer the
//! glue owns ([`NetvscClient::queue_transmit_direct`], [`Placement::Direct`]); the glue names
//! its pages in the packet's ranges.
//!
//! **Receive**: the host copies RNDIS messages into the receive buffer and sends a
//! DATA_USING_XFER_PAGES packet naming one range per message. Every range is checked against
//! the receive buffer and the host's sub-allocation size, the RNDIS message inside against the
//! range, then the completion that returns the ranges to the host is queued at once (status
//! FAIL if anything was malformed).
//!
//! **The host is untrusted**: a bad length, offset, section, range, status or unexpected
//! message is an error (or a failed initialization), never a panic.
#![forbid(unsafe_code)]

use crate::nvsp::{
    self, channel_type, Message as NvspMsg, MessageType, NvspMessage, ProtocolVersion, Status,
    VscCapability, MIN_SECTION_SIZE, NO_RESPONSE_TRANSACTION_ID, RECEIVE_BUFFER_ID, SEND_BUFFER_ID,
};
use crate::offload::{
    param, ChecksumRxInfo, ChecksumTxInfo, NdisOffload, NdisOffloadParameters, VlanInfo,
    NDIS_OFFLOAD_PARAMETERS_REVISION_2, NDIS_OFFLOAD_PARAMETERS_REVISION_3, NDIS_OFFLOAD_SIZE,
};
use crate::rndis::{
    self, media_state, packet_filter, Message as RndisMsg, Oid, PpiType, RndisStatus,
};
use vmbus_guest::packet::{PacketType, PacketView};
use zerocopy::{FromZeros, IntoBytes};

/// Transaction id of the NVSP initialization requests.
pub const CONTROL_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FF00;
/// Transaction id of SEND_RNDIS_PACKET carrying an RNDIS control message.
pub const RNDIS_CONTROL_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FF01;
/// Transaction id of a GPA-direct data transmit.
pub const DIRECT_TX_TRANSACTION_ID: u64 = 0xFFFF_FFFF_FFFF_FF02;
/// Transaction ids of send-buffer transmits: this base | section index.
pub const SECTION_TX_TRANSACTION_BASE: u64 = 0x1_0000_0000;
/// Largest RNDIS control message the client builds (the offload query with its 156-byte
/// pre-filled buffer is 184).
pub const MAX_CONTROL_MESSAGE: usize = 256;
/// Most PPIs the client puts before a transmitted frame.
pub const MAX_TX_PPIS: usize = 2;
/// Largest RNDIS header (+ PPIs) before a transmitted frame.
pub const MAX_TX_HEADER: usize = rndis::packet_header_len(MAX_TX_PPIS);
/// The Ethernet header the NVSP MTU includes.
pub const ETHERNET_HEADER: u32 = 14;
/// Outbox capacity (init messages, transmits, receive completions waiting for the ring).
pub const OUTBOX: usize = 64;

/// A guest buffer given to the host through a GPADL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferConfig {
    /// The GPADL handle (already established by the caller).
    pub gpadl: u32,
    /// Its size in bytes.
    pub len: u32,
}

/// Configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Versions to offer, newest first.
    pub versions: &'static [ProtocolVersion],
    /// The MTU to announce (without the Ethernet header).
    pub mtu: u32,
    /// The receive buffer.
    pub receive_buffer: BufferConfig,
    /// The send buffer.
    pub send_buffer: BufferConfig,
    /// OID_GEN_CURRENT_PACKET_FILTER value.
    pub packet_filter: u32,
    /// Ask for TCP/UDP IPv4 checksum offload when the host offers it.
    pub checksum_offload: bool,
}

impl ClientConfig {
    /// Defaults (all versions, MTU 1500, Linux's packet filter, checksum offload on) for these
    /// buffers.
    pub fn new(receive_buffer: BufferConfig, send_buffer: BufferConfig) -> Self {
        Self {
            versions: &ProtocolVersion::DESCENDING,
            mtu: 1500,
            receive_buffer,
            send_buffer,
            packet_filter: packet_filter::LINUX_DEFAULT,
            checksum_offload: true,
        }
    }
}

/// What bring-up learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The negotiated NVSP version.
    pub version: ProtocolVersion,
    /// The permanent MAC address.
    pub mac: [u8; 6],
    /// The MTU (without the Ethernet header): the configured one, lowered to the host's
    /// maximum frame size.
    pub mtu: u32,
    /// Link up at the end of bring-up.
    pub link_up: bool,
    /// Receive sub-allocation size.
    pub receive_section_size: u32,
    /// Send section size.
    pub send_section_size: u32,
    /// Usable send sections.
    pub send_sections: u32,
    /// RNDIS packets per message the host takes.
    pub max_packets_per_message: u32,
    /// TX IPv4 TCP checksum offload is on.
    pub tx_tcp4_checksum: bool,
    /// TX IPv4 UDP checksum offload is on.
    pub tx_udp4_checksum: bool,
}

/// An initialization step, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// NVSP INIT.
    NvspInit,
    /// SEND_RECEIVE_BUFFER.
    ReceiveBuffer,
    /// SEND_SEND_BUFFER.
    SendBuffer,
    /// RNDIS INITIALIZE.
    RndisInit,
    /// QUERY maximum frame size.
    QueryMaxFrame,
    /// QUERY MAC.
    QueryMac,
    /// QUERY offload capabilities.
    QueryOffload,
    /// SET offload parameters.
    SetOffload,
    /// QUERY link state.
    QueryLink,
    /// SET packet filter.
    SetFilter,
}

/// A fatal initialization failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The host refused every offered version.
    NoCommonVersion,
    /// A step's NVSP status was not success.
    NvspRefused(Step, Status),
    /// A step's RNDIS status was not success.
    RndisRefused(Step, RndisStatus),
    /// The receive-buffer completion's sections are unusable (count ≠ 1, offset ≠ 0,
    /// sub-allocation < 68 bytes, or outside the buffer).
    BadReceiveSections,
    /// The send section size is below 68 bytes or larger than the buffer.
    BadSendSectionSize(u32),
    /// A reply of the wrong kind or shape for this step.
    BadReply(Step),
    /// initialize() was called with an unusable configuration (no versions, MTU 0).
    BadConfig,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoCommonVersion => f.write_str("host refused every NVSP version offered"),
            Self::NvspRefused(s, st) => write!(f, "host refused {s:?} with NVSP status {st:?}"),
            Self::RndisRefused(s, st) => write!(f, "host refused {s:?} with RNDIS status {st:?}"),
            Self::BadReceiveSections => {
                f.write_str("host's receive-buffer sections are not one section inside the buffer")
            }
            Self::BadSendSectionSize(n) => write!(f, "host's send section size {n} is unusable"),
            Self::BadReply(s) => write!(f, "host sent a malformed reply to {s:?}"),
            Self::BadConfig => f.write_str("client configuration has no versions or MTU 0"),
        }
    }
}

/// A packet the host sent that the client refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// A completion for a transaction that is not outstanding.
    UnknownTransaction(u64),
    /// A packet type the client does not expect.
    WrongPacketType(PacketType),
    /// The NVSP message is malformed or not what this packet should carry.
    BadNvsp(MessageType),
    /// An NVSP message the guest does not expect unsolicited.
    UnexpectedNvsp(MessageType),
    /// A transfer-page packet names another page set than the receive buffer.
    WrongPageSet(u16),
    /// A transfer-page range list is malformed or too long.
    BadRanges,
    /// A range lies outside the receive buffer or exceeds a sub-allocation.
    RangeOutOfBounds {
        /// Offset.
        offset: u32,
        /// Bytes.
        count: u32,
    },
    /// Data arrived before the receive buffer was set up.
    NotReady,
    /// The RNDIS message inside a range is malformed.
    BadRndis(rndis::RndisError),
    /// An RNDIS message the guest does not expect.
    UnexpectedRndis(rndis::MessageType),
    /// The outbox is full: a completion could not be queued (flush the rings more often).
    OutboxFull,
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownTransaction(t) => write!(f, "completion for unknown transaction {t:#x}"),
            Self::WrongPacketType(t) => write!(f, "unexpected VMBus packet type {t:?}"),
            Self::BadNvsp(t) => write!(f, "malformed or misplaced NVSP message {t:?}"),
            Self::UnexpectedNvsp(t) => write!(f, "unexpected NVSP message {t:?}"),
            Self::WrongPageSet(id) => write!(f, "transfer pages of unknown page set {id:#x}"),
            Self::BadRanges => f.write_str("malformed transfer-page range list"),
            Self::RangeOutOfBounds { offset, count } => write!(
                f,
                "transfer-page range {count} bytes at {offset} outside the receive buffer"
            ),
            Self::NotReady => f.write_str("data before the receive buffer was set up"),
            Self::BadRndis(e) => write!(f, "bad RNDIS message in receive buffer: {e}"),
            Self::UnexpectedRndis(t) => write!(f, "unexpected RNDIS message {t:?}"),
            Self::OutboxFull => f.write_str("outbox full; flush the ring"),
        }
    }
}

/// Why a transmit was refused (nothing was queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// Bring-up is not finished.
    NotReady,
    /// Every send section (or the direct buffer) is in use: poll for completions.
    Busy,
    /// The frame is empty or does not fit a section (use the direct path) / the MTU.
    BadLength(usize),
    /// The outbox is full: flush.
    OutboxFull,
}

impl core::fmt::Display for TxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotReady => f.write_str("network device not initialized"),
            Self::Busy => f.write_str("no free send buffer; poll for completions"),
            Self::BadLength(n) => write!(f, "frame of {n} bytes cannot be sent this way"),
            Self::OutboxFull => f.write_str("outbox full; flush the ring"),
        }
    }
}

/// What the client reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Bring-up finished.
    Ready(DeviceInfo),
    /// Bring-up failed.
    InitFailed(InitError),
    /// A received Ethernet frame (valid until the callback returns).
    Frame {
        /// The frame, without FCS.
        data: &'a [u8],
        /// The host's checksum verdict, if it sent one.
        checksum: Option<ChecksumRxInfo>,
        /// The 802.1Q tag, if any.
        vlan: Option<VlanInfo>,
    },
    /// The link went up (true) or down (false).
    Link(bool),
    /// NETWORK_CHANGE: the network behind the link changed (Linux bounces the link).
    NetworkChange,
    /// Any other status indication.
    Status(RndisStatus),
    /// A transmit finished (its section or direct buffer is free again).
    TransmitDone {
        /// The host's status.
        status: Status,
    },
    /// The host pushed a send indirection table (count of entries).
    IndirectionTable(u32),
}

/// Where an RNDIS message of an [`OutPacket`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// No RNDIS message: the NVSP message alone, in-band.
    None,
    /// A control message: copy [`OutPacket::rndis`] to the control page, send GPA-direct.
    Control,
    /// A frame already in the send buffer (this section), in-band.
    Section(u32),
    /// A frame already written by the glue to its direct-transmit page(s): `len` bytes,
    /// send GPA-direct.
    Direct(u32),
}

/// What the glue must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket<'a> {
    /// A COMP packet (for a host transfer-page packet) rather than a data packet.
    pub completion: bool,
    /// The descriptor's transaction id.
    pub transaction_id: u64,
    /// Whether to ask for a completion.
    pub completion_requested: bool,
    /// The NVSP message (the payload).
    pub nvsp: &'a [u8],
    /// Where the RNDIS message is.
    pub placement: Placement,
    /// The RNDIS control message bytes ([`Placement::Control`] only).
    pub rndis: &'a [u8],
}

/// A send section reserved by [`NetvscClient::begin_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxReservation {
    /// The section.
    pub section: u32,
    /// Its byte offset in the send buffer.
    pub offset: usize,
    /// The RNDIS header and PPIs to write at `offset`.
    pub header: [u8; MAX_TX_HEADER],
    /// Bytes of `header` used; the frame follows at `offset + header_len`.
    pub header_len: usize,
    /// header_len + frame length.
    pub total_len: usize,
}

impl TxReservation {
    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.header_len]
    }
}

/// A GPA-direct transmit queued by [`NetvscClient::queue_transmit_direct`]: the glue writes
/// [`Self::header`] at offset 0 of its direct buffer and the frame right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectReservation {
    /// The RNDIS header and PPIs.
    pub header: [u8; MAX_TX_HEADER],
    /// Bytes of `header` used; the frame follows at `header_len`.
    pub header_len: usize,
    /// header_len + frame length: the bytes the GPA-direct ranges must describe.
    pub total_len: usize,
}

impl DirectReservation {
    /// The header bytes.
    pub fn header(&self) -> &[u8] {
        &self.header[..self.header_len]
    }
}

/// Checksum offload requests for one transmitted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxOffload {
    /// The checksum PPI to attach (ignored unless the host offered the offload).
    pub checksum: Option<ChecksumTxInfo>,
    /// An 802.1Q tag to attach.
    pub vlan: Option<VlanInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    NvspInit(usize),
    ReceiveBuffer,
    SendBuffer,
    Rndis(Step),
    Ready,
    Failed(InitError),
}

#[derive(Debug, Clone, Copy)]
struct OutItem {
    completion: bool,
    transaction_id: u64,
    completion_requested: bool,
    nvsp: NvspMessage,
    placement: Placement,
}

/// The netvsc client of the primary channel. `W` = words of the send-section bitmap (64
/// sections each; Linux's default 1 MiB send buffer has 170 sections → `W = 3`).
#[derive(Debug)]
pub struct NetvscClient<const W: usize = 4> {
    config: ClientConfig,
    state: State,
    version: ProtocolVersion,
    outbox: heapless::Deque<OutItem, OUTBOX>,
    // Control message bytes: at most one in the outbox or in flight.
    control: [u8; MAX_CONTROL_MESSAGE],
    control_len: usize,
    control_in_flight: bool,
    next_control: Option<Step>,
    awaiting_reply: Option<(Step, u32)>,
    request_id: u32,
    nvsp_pending: bool,
    // Learned.
    mac: [u8; 6],
    mtu: u32,
    link_up: bool,
    recv_section_size: u32,
    send_section_size: u32,
    send_sections: u32,
    max_packets: u32,
    offload: NdisOffload,
    tx_tcp4: bool,
    tx_udp4: bool,
    sections: [u64; W],
    direct_busy: bool,
}

impl<const W: usize> NetvscClient<W> {
    const CHECK: () = assert!(W > 0, "at least one bitmap word");

    /// A client that has not started.
    pub fn new(config: ClientConfig) -> Self {
        let () = Self::CHECK;
        Self {
            config,
            state: State::Idle,
            version: ProtocolVersion::V1,
            outbox: heapless::Deque::new(),
            control: [0; MAX_CONTROL_MESSAGE],
            control_len: 0,
            control_in_flight: false,
            next_control: None,
            awaiting_reply: None,
            request_id: 0,
            nvsp_pending: false,
            mac: [0; 6],
            mtu: config.mtu,
            link_up: false,
            recv_section_size: 0,
            send_section_size: 0,
            send_sections: 0,
            max_packets: 1,
            offload: NdisOffload::new_zeroed(),
            tx_tcp4: false,
            tx_udp4: false,
            sections: [0; W],
            direct_busy: false,
        }
    }

    /// Starts bring-up: queues the first NVSP INIT.
    pub fn start(&mut self) {
        let c = self.config;
        *self = Self::new(c);
        if c.versions.is_empty() || c.mtu == 0 {
            self.state = State::Failed(InitError::BadConfig);
            return;
        }
        self.send_init(0);
    }

    /// Whether bring-up finished.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Why bring-up failed, if it did.
    pub fn init_error(&self) -> Option<InitError> {
        match self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// What bring-up learned (once ready).
    pub fn info(&self) -> Option<DeviceInfo> {
        self.is_ready().then(|| self.device_info())
    }

    /// The current link state.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// The offload capabilities the host reported.
    pub fn offload_capabilities(&self) -> &NdisOffload {
        &self.offload
    }

    /// Send sections in use.
    pub fn sections_in_use(&self) -> u32 {
        self.sections.iter().map(|w| w.count_ones()).sum()
    }

    fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            version: self.version,
            mac: self.mac,
            mtu: self.mtu,
            link_up: self.link_up,
            receive_section_size: self.recv_section_size,
            send_section_size: self.send_section_size,
            send_sections: self.send_sections,
            max_packets_per_message: self.max_packets,
            tx_tcp4_checksum: self.tx_tcp4,
            tx_udp4_checksum: self.tx_udp4,
        }
    }

    // ---- outbox ----

    /// The next packet to send, if any.
    pub fn peek_transmit(&self) -> Option<OutPacket<'_>> {
        let o = self.outbox.front()?;
        Some(OutPacket {
            completion: o.completion,
            transaction_id: o.transaction_id,
            completion_requested: o.completion_requested,
            nvsp: o.nvsp.as_bytes(),
            placement: o.placement,
            rndis: if o.placement == Placement::Control {
                &self.control[..self.control_len]
            } else {
                &[]
            },
        })
    }

    /// The packet [`Self::peek_transmit`] returned is in the ring.
    pub fn transmitted(&mut self) {
        self.outbox.pop_front();
    }

    /// Packets waiting for the ring.
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    fn push(&mut self, item: OutItem) -> bool {
        self.outbox.push_back(item).is_ok()
    }

    fn push_request(&mut self, nvsp: NvspMessage) {
        self.nvsp_pending = true;
        self.push(OutItem {
            completion: false,
            transaction_id: CONTROL_TRANSACTION_ID,
            completion_requested: true,
            nvsp,
            placement: Placement::None,
        });
    }

    fn push_oneway(&mut self, nvsp: NvspMessage) {
        self.push(OutItem {
            completion: false,
            transaction_id: NO_RESPONSE_TRANSACTION_ID,
            completion_requested: false,
            nvsp,
            placement: Placement::None,
        });
    }

    // ---- bring-up ----

    fn fail(&mut self, e: InitError, on_event: &mut impl FnMut(Event<'_>)) {
        self.state = State::Failed(e);
        on_event(Event::InitFailed(e));
    }

    fn send_init(&mut self, i: usize) {
        self.state = State::NvspInit(i);
        self.push_request(NvspMessage::init(self.config.versions[i]));
    }

    fn on_init_complete(&mut self, msg: &NvspMsg<'_>, ev: &mut impl FnMut(Event<'_>)) {
        match (self.state, msg) {
            (State::NvspInit(i), NvspMsg::InitComplete(c)) => {
                if !c.status.is_success() {
                    if i + 1 < self.config.versions.len() {
                        self.send_init(i + 1);
                    } else {
                        self.fail(InitError::NoCommonVersion, ev);
                    }
                    return;
                }
                // Linux uses the version it offered (min = max), whatever the host echoes.
                let v = self.config.versions[i];
                self.version = v;
                if v != ProtocolVersion::V1 {
                    // 802.1Q as Linux; no RSC, SR-IOV or teaming: this client does none.
                    let caps = VscCapability::new().with_ieee8021q(true);
                    self.push_oneway(NvspMessage::send_ndis_config(
                        self.config.mtu.saturating_add(ETHERNET_HEADER),
                        caps,
                    ));
                }
                let (major, minor) = v.ndis_version();
                self.push_oneway(NvspMessage::send_ndis_version(major, minor));
                self.state = State::ReceiveBuffer;
                self.push_request(NvspMessage::send_receive_buffer(
                    self.config.receive_buffer.gpadl,
                    RECEIVE_BUFFER_ID,
                ));
            }
            (State::NvspInit(_), _) => self.fail(InitError::BadReply(Step::NvspInit), ev),
            (State::ReceiveBuffer, NvspMsg::SendReceiveBufferComplete(h, s)) => {
                if !h.status.is_success() {
                    return self.fail(InitError::NvspRefused(Step::ReceiveBuffer, h.status), ev);
                }
                let len = u64::from(self.config.receive_buffer.len);
                let ok = s.len() == 1
                    && s.get(0).is_some_and(|s| {
                        s.offset == 0
                            && s.sub_alloc_size >= MIN_SECTION_SIZE
                            && s.num_sub_allocs >= 1
                            && u64::from(s.sub_alloc_size) * u64::from(s.num_sub_allocs) <= len
                            && u64::from(s.end_offset) <= len
                    });
                if !ok {
                    return self.fail(InitError::BadReceiveSections, ev);
                }
                self.recv_section_size = s.get(0).map_or(0, |s| s.sub_alloc_size);
                self.state = State::SendBuffer;
                self.push_request(NvspMessage::send_send_buffer(
                    self.config.send_buffer.gpadl,
                    SEND_BUFFER_ID,
                ));
            }
            (State::ReceiveBuffer, _) => self.fail(InitError::BadReply(Step::ReceiveBuffer), ev),
            (State::SendBuffer, NvspMsg::SendSendBufferComplete(c)) => {
                if !c.status.is_success() {
                    return self.fail(InitError::NvspRefused(Step::SendBuffer, c.status), ev);
                }
                let len = self.config.send_buffer.len;
                if c.section_size < MIN_SECTION_SIZE || c.section_size > len {
                    return self.fail(InitError::BadSendSectionSize(c.section_size), ev);
                }
                self.send_section_size = c.section_size;
                self.send_sections = (len / c.section_size).min((W * 64) as u32);
                self.queue_rndis(Step::RndisInit);
            }
            (State::SendBuffer, _) => self.fail(InitError::BadReply(Step::SendBuffer), ev),
            _ => {}
        }
    }

    /// Builds the RNDIS control message of `step` and queues it (or remembers it until the
    /// control page is free).
    fn queue_rndis(&mut self, step: Step) {
        self.state = State::Rndis(step);
        if self.control_in_flight {
            self.next_control = Some(step);
            return;
        }
        self.request_id = self.request_id.wrapping_add(1);
        let id = self.request_id;
        let out = &mut self.control;
        let r = match step {
            Step::RndisInit => rndis::build_initialize(out, id, rndis::DEFAULT_MAX_TRANSFER_SIZE),
            Step::QueryMaxFrame => rndis::build_query(out, id, Oid::GEN_MAXIMUM_FRAME_SIZE, &[]),
            Step::QueryMac => rndis::build_query(out, id, Oid::ETH_802_3_PERMANENT_ADDRESS, &[]),
            Step::QueryOffload => {
                let rev = if self.version >= ProtocolVersion::V5 {
                    3
                } else if self.version >= ProtocolVersion::V4 {
                    2
                } else {
                    1
                };
                let mut caps = NdisOffload::new_zeroed();
                caps.header = NdisOffload::query_header(rev);
                let n = caps.header.size as usize;
                rndis::build_query(
                    out,
                    id,
                    Oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES,
                    &caps.as_bytes()[..n.min(NDIS_OFFLOAD_SIZE)],
                )
            }
            Step::SetOffload => {
                let rev = if self.version >= ProtocolVersion::V5 {
                    NDIS_OFFLOAD_PARAMETERS_REVISION_3
                } else {
                    NDIS_OFFLOAD_PARAMETERS_REVISION_2
                };
                let mut p = NdisOffloadParameters::no_change(rev);
                p.ip_v4_csum = param::TX_RX_DISABLED;
                let want = self.config.checksum_offload;
                let tcp = want && self.offload.tx_tcp4_csum();
                let udp = want && self.offload.tx_udp4_csum();
                p.tcp_ip_v4_csum = if tcp {
                    param::TX_RX_ENABLED
                } else {
                    param::TX_RX_DISABLED
                };
                p.udp_ip_v4_csum = if udp {
                    param::TX_RX_ENABLED
                } else {
                    param::TX_RX_DISABLED
                };
                self.tx_tcp4 = tcp;
                self.tx_udp4 = udp;
                rndis::build_set(out, id, Oid::TCP_OFFLOAD_PARAMETERS, p.wire_bytes())
            }
            Step::QueryLink => rndis::build_query(out, id, Oid::GEN_MEDIA_CONNECT_STATUS, &[]),
            Step::SetFilter => rndis::build_set(
                out,
                id,
                Oid::GEN_CURRENT_PACKET_FILTER,
                &self.config.packet_filter.to_le_bytes(),
            ),
            _ => Ok(0),
        };
        // Cannot fail: every message above fits MAX_CONTROL_MESSAGE.
        self.control_len = r.unwrap_or(0);
        self.control_in_flight = true;
        self.awaiting_reply = Some((step, id));
        self.push(OutItem {
            completion: false,
            transaction_id: RNDIS_CONTROL_TRANSACTION_ID,
            completion_requested: true,
            nvsp: NvspMessage::send_rndis_packet(channel_type::CONTROL, None),
            placement: Placement::Control,
        });
    }

    fn next_step(&mut self, after: Step, ev: &mut impl FnMut(Event<'_>)) {
        let next = match after {
            Step::RndisInit => Step::QueryMaxFrame,
            Step::QueryMaxFrame => Step::QueryMac,
            Step::QueryMac => Step::QueryOffload,
            Step::QueryOffload => Step::SetOffload,
            Step::SetOffload => Step::QueryLink,
            Step::QueryLink => Step::SetFilter,
            _ => {
                self.state = State::Ready;
                ev(Event::Ready(self.device_info()));
                return;
            }
        };
        self.queue_rndis(next);
    }

    /// An RNDIS completion during bring-up.
    fn on_rndis_reply(
        &mut self,
        msg: &RndisMsg<'_>,
        ev: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let Some((step, id)) = self.awaiting_reply else {
            return Err(ClientError::UnexpectedRndis(msg_type(msg)));
        };
        let (rid, status, info): (u32, RndisStatus, &[u8]) = match *msg {
            RndisMsg::InitializeComplete(c) => (c.request_id, c.status, &[]),
            RndisMsg::QueryComplete(c, info) => (c.request_id, c.status, info),
            RndisMsg::SetComplete(c) => (c.request_id, c.status, &[]),
            _ => return Err(ClientError::UnexpectedRndis(msg_type(msg))),
        };
        let kind_ok = matches!(
            (step, msg),
            (Step::RndisInit, RndisMsg::InitializeComplete(_))
                | (
                    Step::QueryMaxFrame | Step::QueryMac | Step::QueryOffload | Step::QueryLink,
                    RndisMsg::QueryComplete(..)
                )
                | (Step::SetOffload | Step::SetFilter, RndisMsg::SetComplete(_))
        );
        if rid != id || !kind_ok {
            // A stale or forged reply: ignore it, keep waiting.
            return Err(ClientError::UnexpectedRndis(msg_type(msg)));
        }
        self.awaiting_reply = None;
        // As Linux: only the frame-size and link queries are optional.
        let fatal = !matches!(step, Step::QueryMaxFrame | Step::QueryLink);
        if !status.is_success() {
            if fatal {
                self.fail(InitError::RndisRefused(step, status), ev);
                return Ok(());
            }
        } else {
            match (step, *msg) {
                (Step::RndisInit, RndisMsg::InitializeComplete(c)) => {
                    self.max_packets = c.max_packets_per_message.max(1);
                }
                (Step::QueryMaxFrame, _) => {
                    // Used only if exactly 4 bytes (Linux); lowers the MTU, never raises it.
                    if let Ok(b) = <[u8; 4]>::try_from(info) {
                        let v = u32::from_le_bytes(b);
                        if v >= 68 {
                            self.mtu = self.mtu.min(v);
                        }
                    }
                }
                (Step::QueryMac, _) => match <[u8; 6]>::try_from(info) {
                    Ok(m) => self.mac = m,
                    Err(_) => {
                        self.fail(InitError::BadReply(step), ev);
                        return Ok(());
                    }
                },
                (Step::QueryOffload, _) => match NdisOffload::parse(info) {
                    Ok(o) => self.offload = o,
                    Err(_) => {
                        self.fail(InitError::BadReply(step), ev);
                        return Ok(());
                    }
                },
                (Step::QueryLink, _) => {
                    if let Ok(b) = <[u8; 4]>::try_from(info) {
                        self.link_up = u32::from_le_bytes(b) == media_state::CONNECTED;
                    } else {
                        self.link_up = true;
                    }
                }
                _ => {}
            }
        }
        if step == Step::QueryLink && !status.is_success() {
            // Optional query failed: assume connected, as Linux does.
            self.link_up = true;
        }
        self.next_step(step, ev);
        Ok(())
    }

    // ---- transmit ----

    fn alloc_section(&mut self) -> Option<u32> {
        for (wi, w) in self.sections.iter_mut().enumerate() {
            let free = !*w;
            if free == 0 {
                continue;
            }
            let bit = free.trailing_zeros();
            let idx = (wi as u32) * 64 + bit;
            if idx >= self.send_sections {
                return None;
            }
            *w |= 1 << bit;
            return Some(idx);
        }
        None
    }

    fn free_section(&mut self, idx: u32) -> bool {
        let (wi, bit) = ((idx / 64) as usize, idx % 64);
        match self.sections.get_mut(wi) {
            Some(w) if idx < self.send_sections && *w & (1 << bit) != 0 => {
                *w &= !(1 << bit);
                true
            }
            _ => false,
        }
    }

    fn ppis(&self, off: TxOffload) -> heapless::Vec<(PpiType, u32), MAX_TX_PPIS> {
        let mut v = heapless::Vec::new();
        if let Some(c) = off.checksum {
            if (c.tcp_checksum() && self.tx_tcp4) || (c.udp_checksum() && self.tx_udp4) {
                let _ = v.push((PpiType::TCPIP_CHECKSUM, c.into_bits()));
            }
        }
        if let Some(t) = off.vlan {
            let _ = v.push((PpiType::IEEE_8021Q, t.into_bits()));
        }
        v
    }

    /// Largest frame [`Self::begin_transmit`] accepts: MTU + Ethernet header (+4 for a VLAN
    /// tag), limited by the section size.
    pub fn max_frame(&self) -> usize {
        (self.mtu + ETHERNET_HEADER + 4) as usize
    }

    /// Reserves a send section for a `frame_len`-byte frame and returns where to write the
    /// RNDIS header and the frame. Nothing is sent until [`Self::queue_transmit`]; an unused
    /// reservation is returned with [`Self::cancel_transmit`].
    pub fn begin_transmit(
        &mut self,
        frame_len: usize,
        offload: TxOffload,
    ) -> Result<TxReservation, TxError> {
        if self.state != State::Ready {
            return Err(TxError::NotReady);
        }
        let ppis = self.ppis(offload);
        let head = rndis::packet_header_len(ppis.len());
        // Shorter than an Ethernet header: the host would drop it (netvsp,
        // Hyper-V) after taking a section; refuse it here with a typed error.
        if frame_len < ETHERNET_HEADER as usize
            || frame_len > self.max_frame()
            || head + frame_len > self.send_section_size as usize
        {
            return Err(TxError::BadLength(frame_len));
        }
        if self.outbox.is_full() {
            return Err(TxError::OutboxFull);
        }
        let section = self.alloc_section().ok_or(TxError::Busy)?;
        let mut header = [0u8; MAX_TX_HEADER];
        // Cannot fail: `header` holds MAX_TX_PPIS PPIs.
        let header_len = rndis::build_packet_header(&mut header, &ppis, frame_len).unwrap_or(0);
        Ok(TxReservation {
            section,
            offset: section as usize * self.send_section_size as usize,
            header,
            header_len,
            total_len: header_len + frame_len,
        })
    }

    /// Queues the SEND_RNDIS_PACKET for a reservation whose bytes are in the send buffer.
    pub fn queue_transmit(&mut self, r: &TxReservation) -> Result<(), TxError> {
        let ok = self.push(OutItem {
            completion: false,
            transaction_id: SECTION_TX_TRANSACTION_BASE | u64::from(r.section),
            completion_requested: true,
            nvsp: NvspMessage::send_rndis_packet(
                channel_type::DATA,
                Some((r.section, r.total_len as u32)),
            ),
            placement: Placement::Section(r.section),
        });
        if !ok {
            self.free_section(r.section);
            return Err(TxError::OutboxFull);
        }
        Ok(())
    }

    /// Returns an unused reservation's section.
    pub fn cancel_transmit(&mut self, r: &TxReservation) {
        self.free_section(r.section);
    }

    /// Builds the RNDIS message for a GPA-direct transmit of `frame` into `out` (the glue's
    /// direct page), reserves the single direct buffer and queues the packet. Returns the
    /// bytes written to `out`.
    pub fn transmit_direct(
        &mut self,
        out: &mut [u8],
        frame: &[u8],
        offload: TxOffload,
    ) -> Result<usize, TxError> {
        self.check_direct(frame.len())?;
        let ppis = self.ppis(offload);
        let n =
            rndis::build_packet(out, &ppis, frame).map_err(|_| TxError::BadLength(frame.len()))?;
        self.push_direct(n);
        Ok(n)
    }

    /// [`Self::transmit_direct`] for a glue that writes the bytes into its direct buffer itself
    /// (a jumbo frame spans several pages, so it is not built in one contiguous buffer):
    /// reserves the single direct buffer, queues the packet for header + `frame_len` bytes and
    /// returns the RNDIS header. The glue writes the header at offset 0 of its direct buffer
    /// and the frame right after it, before it flushes. `capacity` is the direct buffer's size
    /// in bytes; a message larger than that is refused with [`TxError::BadLength`] (nothing
    /// reserved or queued).
    pub fn queue_transmit_direct(
        &mut self,
        frame_len: usize,
        offload: TxOffload,
        capacity: usize,
    ) -> Result<DirectReservation, TxError> {
        self.check_direct(frame_len)?;
        let ppis = self.ppis(offload);
        let mut header = [0u8; MAX_TX_HEADER];
        // Cannot fail: `header` holds MAX_TX_PPIS PPIs and frame_len <= max_frame.
        let header_len = rndis::build_packet_header(&mut header, &ppis, frame_len)
            .map_err(|_| TxError::BadLength(frame_len))?;
        let total_len = header_len + frame_len;
        if total_len > capacity || u32::try_from(total_len).is_err() {
            return Err(TxError::BadLength(frame_len));
        }
        self.push_direct(total_len);
        Ok(DirectReservation {
            header,
            header_len,
            total_len,
        })
    }

    /// Whether the direct buffer is in use (a GPA-direct transmit awaits its completion).
    pub fn direct_in_use(&self) -> bool {
        self.direct_busy
    }

    fn check_direct(&self, frame_len: usize) -> Result<(), TxError> {
        if self.state != State::Ready {
            return Err(TxError::NotReady);
        }
        if self.direct_busy {
            return Err(TxError::Busy);
        }
        if frame_len < ETHERNET_HEADER as usize || frame_len > self.max_frame() {
            return Err(TxError::BadLength(frame_len));
        }
        if self.outbox.is_full() {
            return Err(TxError::OutboxFull);
        }
        Ok(())
    }

    /// Reserves the direct buffer and queues its packet (`check_direct` passed: there is room).
    fn push_direct(&mut self, len: usize) {
        self.direct_busy = true;
        self.push(OutItem {
            completion: false,
            transaction_id: DIRECT_TX_TRANSACTION_ID,
            completion_requested: true,
            nvsp: NvspMessage::send_rndis_packet(channel_type::DATA, None),
            placement: Placement::Direct(len as u32),
        });
    }

    // ---- receive ----

    /// Consumes one packet from the host, reading transfer-page ranges from `receive_buffer`
    /// through `scratch` (at least the receive sub-allocation size; a range that does not fit
    /// is refused). Events go to `on_event`. For a transfer-page packet the completion that
    /// returns the ranges to the host is queued before this returns, also when the packet was
    /// malformed (then with status FAIL, and the first problem is the error).
    pub fn on_packet(
        &mut self,
        packet: &PacketView<'_>,
        receive_buffer: &(impl ReceiveBuffer + ?Sized),
        scratch: &mut [u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let ev = &mut on_event;
        match packet.packet_type() {
            PacketType::COMPLETION => self.on_completion(packet, ev),
            PacketType::DATA_USING_XFER_PAGES => {
                self.on_xfer_pages(packet, receive_buffer, scratch, ev)
            }
            PacketType::DATA_INBAND => {
                let m = nvsp::parse(packet.payload())
                    .map_err(|_| ClientError::BadNvsp(MessageType::NONE))?;
                match m {
                    NvspMsg::SendIndirectionTable(h, _) => {
                        ev(Event::IndirectionTable(h.count));
                        Ok(())
                    }
                    // Informational on the synthetic path; nothing to do.
                    NvspMsg::SendVfAssociation(_) | NvspMsg::SwitchDataPath(_) => Ok(()),
                    m => Err(ClientError::UnexpectedNvsp(m.msg_type())),
                }
            }
            t => Err(ClientError::WrongPacketType(t)),
        }
    }

    fn on_completion(
        &mut self,
        packet: &PacketView<'_>,
        ev: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let id = packet.transaction_id();
        let msg = nvsp::parse(packet.payload());
        match id {
            CONTROL_TRANSACTION_ID if self.nvsp_pending => {
                self.nvsp_pending = false;
                match msg {
                    Ok(m) => self.on_init_complete(&m, ev),
                    Err(_) => {
                        let step = match self.state {
                            State::ReceiveBuffer => Step::ReceiveBuffer,
                            State::SendBuffer => Step::SendBuffer,
                            _ => Step::NvspInit,
                        };
                        self.fail(InitError::BadReply(step), ev);
                    }
                }
                Ok(())
            }
            RNDIS_CONTROL_TRANSACTION_ID if self.control_in_flight => {
                self.control_in_flight = false;
                let status = rndis_complete_status(&msg)?;
                if !status.is_success() {
                    // The host refused the control message: no reply will come.
                    if let (Some((step, _)), State::Rndis(_)) = (self.awaiting_reply, self.state) {
                        self.awaiting_reply = None;
                        self.fail(InitError::NvspRefused(step, status), ev);
                        return Ok(());
                    }
                }
                if let Some(step) = self.next_control.take() {
                    self.queue_rndis(step);
                }
                Ok(())
            }
            DIRECT_TX_TRANSACTION_ID if self.direct_busy => {
                self.direct_busy = false;
                let status = rndis_complete_status(&msg)?;
                ev(Event::TransmitDone { status });
                Ok(())
            }
            id if id & !0xFFFF_FFFF == SECTION_TX_TRANSACTION_BASE => {
                let status = rndis_complete_status(&msg)?;
                if !self.free_section(id as u32) {
                    return Err(ClientError::UnknownTransaction(id));
                }
                ev(Event::TransmitDone { status });
                Ok(())
            }
            id => Err(ClientError::UnknownTransaction(id)),
        }
    }

    fn on_xfer_pages(
        &mut self,
        packet: &PacketView<'_>,
        rx: &(impl ReceiveBuffer + ?Sized),
        scratch: &mut [u8],
        ev: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let tid = packet.transaction_id();
        let result = self.receive_ranges(packet, rx, scratch, ev);
        let status = if result.is_ok() {
            Status::SUCCESS
        } else {
            Status::FAIL
        };
        // Always give the ranges back, promptly, or the host runs out of receive buffer.
        let queued = self.push(OutItem {
            completion: true,
            transaction_id: tid,
            completion_requested: false,
            nvsp: NvspMessage::send_rndis_packet_complete(status),
            placement: Placement::None,
        });
        result?;
        if !queued {
            return Err(ClientError::OutboxFull);
        }
        Ok(())
    }

    fn receive_ranges(
        &mut self,
        packet: &PacketView<'_>,
        rx: &(impl ReceiveBuffer + ?Sized),
        scratch: &mut [u8],
        ev: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        match nvsp::parse(packet.payload()) {
            Ok(NvspMsg::SendRndisPacket(_)) => {}
            Ok(m) => return Err(ClientError::BadNvsp(m.msg_type())),
            Err(_) => return Err(ClientError::BadNvsp(MessageType::NONE)),
        }
        if self.recv_section_size == 0 {
            return Err(ClientError::NotReady);
        }
        let (h, ranges) = packet
            .xfer_page_ranges()
            .map_err(|_| ClientError::BadRanges)?;
        if h.xfer_pageset_id != RECEIVE_BUFFER_ID {
            return Err(ClientError::WrongPageSet(h.xfer_pageset_id));
        }
        if h.range_count as usize > nvsp::MAX_XFER_RANGES_RSC {
            return Err(ClientError::BadRanges);
        }
        let buf_len = (self.config.receive_buffer.len as usize).min(rx.len());
        let mut first_err = None;
        for r in ranges {
            let (off, cnt) = (r.byte_offset as usize, r.byte_count as usize);
            let bad = ClientError::RangeOutOfBounds {
                offset: r.byte_offset,
                count: r.byte_count,
            };
            if cnt == 0
                || off > buf_len
                || cnt > buf_len - off
                || cnt > self.recv_section_size as usize
                || cnt > scratch.len()
            {
                first_err.get_or_insert(bad);
                continue;
            }
            let bytes = &mut scratch[..cnt];
            if !rx.read(off, bytes) {
                first_err.get_or_insert(bad);
                continue;
            }
            if let Err(e) = self.on_rndis(bytes, ev) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One RNDIS message from the receive buffer (exactly one per range).
    fn on_rndis(
        &mut self,
        bytes: &[u8],
        ev: &mut impl FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let msg = rndis::parse(bytes).map_err(ClientError::BadRndis)?;
        match msg {
            RndisMsg::Packet(p) => {
                if self.state != State::Ready {
                    return Err(ClientError::NotReady);
                }
                if p.data.is_empty() || !p.ppis_valid() {
                    return Err(ClientError::BadRndis(rndis::RndisError::BadPpi));
                }
                let checksum = p
                    .ppi_u32(PpiType::TCPIP_CHECKSUM)
                    .map(ChecksumRxInfo::from_bits);
                let vlan = p.ppi_u32(PpiType::IEEE_8021Q).map(VlanInfo::from_bits);
                ev(Event::Frame {
                    data: p.data,
                    checksum,
                    vlan,
                });
                Ok(())
            }
            RndisMsg::IndicateStatus(s, _) => {
                match s.status {
                    RndisStatus::MEDIA_CONNECT => {
                        self.link_up = true;
                        ev(Event::Link(true));
                    }
                    RndisStatus::MEDIA_DISCONNECT => {
                        self.link_up = false;
                        ev(Event::Link(false));
                    }
                    RndisStatus::NETWORK_CHANGE => ev(Event::NetworkChange),
                    st => ev(Event::Status(st)),
                }
                Ok(())
            }
            RndisMsg::InitializeComplete(_)
            | RndisMsg::QueryComplete(..)
            | RndisMsg::SetComplete(_) => self.on_rndis_reply(&msg, ev),
            m => Err(ClientError::UnexpectedRndis(msg_type(&m))),
        }
    }
}

/// The status of a SEND_RNDIS_PACKET_COMPLETE payload.
fn rndis_complete_status(
    msg: &Result<NvspMsg<'_>, nvsp::NvspError>,
) -> Result<Status, ClientError> {
    match msg {
        Ok(NvspMsg::SendRndisPacketComplete(c)) => Ok(c.status),
        Ok(m) => Err(ClientError::BadNvsp(m.msg_type())),
        Err(_) => Err(ClientError::BadNvsp(MessageType::NONE)),
    }
}

fn msg_type(m: &RndisMsg<'_>) -> rndis::MessageType {
    use rndis::MessageType as T;
    match m {
        RndisMsg::Packet(_) => T::PACKET,
        RndisMsg::Initialize(_) => T::INITIALIZE,
        RndisMsg::InitializeComplete(_) => T::INITIALIZE_COMPLETE,
        RndisMsg::Halt(_) => T::HALT,
        RndisMsg::Query(..) => T::QUERY,
        RndisMsg::QueryComplete(..) => T::QUERY_COMPLETE,
        RndisMsg::Set(..) => T::SET,
        RndisMsg::SetComplete(_) => T::SET_COMPLETE,
        RndisMsg::Reset(_) => T::RESET,
        RndisMsg::ResetComplete(_) => T::RESET_COMPLETE,
        RndisMsg::IndicateStatus(..) => T::INDICATE_STATUS,
        RndisMsg::Keepalive(_) => T::KEEPALIVE,
        RndisMsg::KeepaliveComplete(_) => T::KEEPALIVE_COMPLETE,
        RndisMsg::Other(t, _) => *t,
    }
}

/// The receive buffer as the client reads it (guest pages behind a GPADL, or a slice in tests).
pub trait ReceiveBuffer {
    /// Its size in bytes.
    fn len(&self) -> usize;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `out.len()` bytes at `offset`; false if out of range.
    fn read(&self, offset: usize, out: &mut [u8]) -> bool;
}

impl ReceiveBuffer for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        match offset
            .checked_add(out.len())
            .and_then(|end| self.get(offset..end))
        {
            Some(b) => {
                out.copy_from_slice(b);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests;
