//! The storvsc guest client as a sans-IO state machine (fact sheet §8.2–§8.4).
//!
//! [`StorvscClient`] never touches a ring. It queues the packets it wants sent (take them with
//! [`StorvscClient::peek_transmit`] and, once they are in the ring,
//! [`StorvscClient::transmitted`]) and consumes every packet the host sends with
//! [`StorvscClient::on_packet`], which returns [`Event`]s: initialization done, a request
//! completed (by [`Tag`]), sub-channels created, the bus changed.
//!
//! **Requests.** A request occupies one of `N` slots until its completion arrives; its
//! transaction id is `generation << 16 | (slot + 1)`, so a stale or forged completion (old
//! generation, free slot, or an id never issued) matches nothing and is an error instead of
//! completing the wrong request. Requests with data carry a page list (`P` pages at most) sent
//! as a GPA-direct range; the host moves the data straight into or out of those pages.
//!
//! **The host is untrusted.** A completion's operation, packet size, data transfer length
//! (never more than requested), sense length (never more than the version's sense buffer) and
//! sense bytes are all checked; a violation completes the request with
//! [`IoError::Protocol`], never a panic.
#![forbid(unsafe_code)]

use crate::scsi::{Cdb, CdbBytes, CdbError, CdbSize, ReadWrite, ScsiStatus, SyncCache};
use crate::sense::{Sense, SenseError, SenseKey};
use crate::vstor::{
    self, srb_flags, ChannelProperties, DataDirection, FcWwnBody, Operation, ProtocolVersion,
    SrbStatus, VmSrb, VstorPacket, VstorStatus, INIT_TRANSACTION_ID,
};
use vmbus_guest::packet::{encode_gpa_direct_single, PacketType, PacketView, DESCRIPTOR_SIZE};

/// Page size of GPA-direct page lists.
pub const PAGE_SIZE: usize = 4096;
/// The most pages one request may name (1 MiB + one page for an unaligned start).
pub const MAX_PAGES_PER_REQUEST: usize = 257;
/// Bytes a GPA-direct extension of [`MAX_PAGES_PER_REQUEST`] pages needs.
pub const MAX_GPA_EXTENSION: usize = 16 + 8 * MAX_PAGES_PER_REQUEST;

/// A logical unit address on the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Lun {
    /// SCSI channel (0..=7).
    pub path_id: u8,
    /// Target (0..=1).
    pub target_id: u8,
    /// LUN (0..=254).
    pub lun: u8,
}

impl Lun {
    /// Channel 0, target 0, this LUN.
    pub const fn new(lun: u8) -> Self {
        Self {
            path_id: 0,
            target_id: 0,
            lun,
        }
    }
}

/// Data of a request: `len` bytes starting at `offset` in the first of `pfns` (guest page frame
/// numbers, in transfer order; every page but the first starts at its page boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuffer<'a> {
    /// Offset into the first page (< 4096).
    pub offset: u32,
    /// Bytes.
    pub len: u32,
    /// ceil((offset + len) / 4096) page frame numbers.
    pub pfns: &'a [u64],
}

impl DataBuffer<'_> {
    /// Whether the page list covers exactly `offset + len` bytes.
    pub fn is_well_formed(&self) -> bool {
        self.len > 0
            && (self.offset as usize) < PAGE_SIZE
            && (self.offset as usize + self.len as usize).div_ceil(PAGE_SIZE) == self.pfns.len()
    }
}

/// A request slot's handle; completions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(pub u16);

/// Configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// Versions to offer, newest first (default: all of [`ProtocolVersion::ALL`]).
    pub versions: &'static [ProtocolVersion],
    /// The SRB's port number.
    pub port_number: u8,
    /// How often a request that got UNIT ATTENTION is sent again.
    pub unit_attention_retries: u8,
    /// The SRB time-out in seconds.
    pub timeout_secs: u32,
    /// Bytes of the guest -> host ring's data area (bounds the queue depth).
    pub ring_data_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            versions: &ProtocolVersion::ALL,
            port_number: 0,
            unit_attention_retries: 3,
            timeout_secs: vstor::DEFAULT_TIMEOUT_SECS,
            ring_data_bytes: vstor::RING_SIZE - PAGE_SIZE,
        }
    }
}

/// What initialization learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    /// The host's channel properties.
    pub properties: ChannelProperties,
    /// Largest transfer of one request: the host's limit, cut to what `P` pages hold.
    pub max_transfer_bytes: u32,
    /// How many requests may be outstanding on one channel.
    pub queue_depth: u16,
}

impl DeviceInfo {
    /// Whether the host supports sub-channels.
    pub fn multi_channel(&self) -> bool {
        self.version.has_win8_extension() && self.properties.multi_channel()
    }
}

/// A fatal initialization failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// A step's COMP had a non-zero status (which step, and the status).
    Refused(Operation, VstorStatus),
    /// The host refused every offered version ("obsolete Hyper-V version").
    NoCommonVersion,
    /// A COMP whose operation is not COMPLETE_IO, or a malformed one.
    Protocol(ProtocolViolation),
    /// QUERY_PROPERTIES returned a zero max_transfer_bytes.
    BadProperties,
}

/// How the host broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// A payload shorter than the negotiated packet size.
    ShortPacket {
        /// Bytes received.
        len: usize,
    },
    /// A completion whose operation is not COMPLETE_IO.
    WrongOperation(Operation),
    /// A completion that is not a COMP packet, or a request that is not in-band.
    WrongPacketType(PacketType),
    /// More data moved than requested.
    TransferTooLong {
        /// Requested.
        requested: u32,
        /// Reported.
        reported: u32,
    },
    /// A sense length beyond the sense buffer.
    SenseTooLong {
        /// Reported.
        len: u8,
        /// The version's sense buffer.
        max: u8,
    },
    /// Autosense marked valid but the bytes are not sense data.
    BadSense(SenseError),
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// MEDIUM ERROR (unreadable / unwritable block).
    MediumError(Sense),
    /// ILLEGAL REQUEST (bad CDB, LBA out of range, unsupported command).
    IllegalRequest(Sense),
    /// DATA PROTECT (write protected).
    DataProtect(Sense),
    /// NOT READY.
    NotReady(Sense),
    /// UNIT ATTENTION, still after every retry.
    UnitAttention(Sense),
    /// ABORTED COMMAND.
    AbortedCommand(Sense),
    /// HARDWARE ERROR.
    HardwareError(Sense),
    /// Any other sense key.
    OtherSense(Sense),
    /// CHECK CONDITION without valid sense.
    CheckConditionWithoutSense,
    /// A non-GOOD SAM status other than CHECK CONDITION (BUSY, RESERVATION CONFLICT...).
    Scsi(ScsiStatus),
    /// The LUN, target or path does not exist (INVALID_LUN, NO_DEVICE, SELECTION_TIMEOUT...).
    NoDevice(SrbStatus),
    /// SRB BUSY: retry later.
    Busy,
    /// Any other SRB failure (code only).
    Srb(SrbStatus),
    /// The packet's VSTOR status was not success.
    HostStatus(VstorStatus),
    /// A READ/WRITE moved fewer bytes than asked.
    ShortTransfer {
        /// Requested.
        requested: u32,
        /// Moved.
        transferred: u32,
    },
    /// The host broke the protocol in this completion.
    Protocol(ProtocolViolation),
    /// The request was failed locally ([`StorvscClient::fail_all`]).
    Cancelled,
}

impl IoError {
    /// The sense data, if the error came with some.
    pub fn sense(&self) -> Option<&Sense> {
        match self {
            Self::MediumError(s)
            | Self::IllegalRequest(s)
            | Self::DataProtect(s)
            | Self::NotReady(s)
            | Self::UnitAttention(s)
            | Self::AbortedCommand(s)
            | Self::HardwareError(s)
            | Self::OtherSense(s) => Some(s),
            _ => None,
        }
    }

    fn from_sense(s: Sense) -> Self {
        match s.key {
            SenseKey::MEDIUM_ERROR => Self::MediumError(s),
            SenseKey::ILLEGAL_REQUEST => Self::IllegalRequest(s),
            SenseKey::DATA_PROTECT => Self::DataProtect(s),
            SenseKey::NOT_READY => Self::NotReady(s),
            SenseKey::UNIT_ATTENTION => Self::UnitAttention(s),
            SenseKey::ABORTED_COMMAND => Self::AbortedCommand(s),
            SenseKey::HARDWARE_ERROR => Self::HardwareError(s),
            _ => Self::OtherSense(s),
        }
    }
}

/// A successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDone {
    /// Bytes the host moved (at most the request's length).
    pub transferred: u32,
    /// SAM status (GOOD, CONDITION MET, or CHECK CONDITION with RECOVERED ERROR).
    pub scsi_status: ScsiStatus,
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// Initialization has not finished (or failed).
    NotReady,
    /// Every slot (or the queue depth) is in use.
    QueueFull,
    /// The page list does not describe `offset + len` bytes, or has more than `P` pages.
    BadBuffer,
    /// More bytes than the host's max transfer.
    TooLarge,
    /// Data given for a command without data, or none for one with data, or a READ/WRITE
    /// whose buffer is not blocks × block size.
    LengthMismatch,
    /// The command cannot be encoded.
    Cdb(CdbError),
    /// A control request is already waiting for its completion, or the host lacks the feature.
    Busy,
}

/// What [`StorvscClient::on_packet`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Initialization finished: requests may be submitted.
    Ready(DeviceInfo),
    /// Initialization failed; the client stays unusable.
    InitFailed(InitError),
    /// A request finished.
    Completed {
        /// Its tag (the slot is free again).
        tag: Tag,
        /// The outcome.
        result: Result<IoDone, IoError>,
    },
    /// A request got UNIT ATTENTION and was queued again (take it with `peek_transmit`).
    Retrying {
        /// Its tag.
        tag: Tag,
        /// The sense that caused it.
        sense: Sense,
    },
    /// CREATE_SUB_CHANNELS succeeded: the host will offer this many sub-channels.
    SubChannelsCreated(u16),
    /// CREATE_SUB_CHANNELS failed.
    SubChannelsRefused(VstorStatus),
    /// The host says the bus changed (ENUMERATE_BUS or REMOVE_DEVICE): rescan the LUNs.
    BusChanged(Operation),
    /// New Fibre Channel names.
    FcHbaData(FcWwnBody),
}

/// A packet the host sent that the client refuses (the client state is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// A completion for a transaction that is not outstanding.
    UnknownTransaction(u64),
    /// The packet is malformed.
    Protocol(ProtocolViolation),
    /// An unsolicited operation the guest does not expect.
    UnexpectedOperation(Operation),
}

/// A packet to put into the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket<'a> {
    /// The descriptor's transaction id.
    pub transaction_id: u64,
    /// The VSTOR packet bytes (64, or 48 before protocol 5.1).
    pub payload: &'a [u8],
    /// The data pages, sent as one GPA-direct range.
    pub data: Option<DataBuffer<'a>>,
}

impl OutPacket<'_> {
    /// DATA_USING_GPA_DIRECT with data, DATA_INBAND without; completion requested either way.
    pub fn packet_type(&self) -> PacketType {
        if self.data.is_some() {
            PacketType::DATA_USING_GPA_DIRECT
        } else {
            PacketType::DATA_INBAND
        }
    }

    /// Writes the GPA-direct extension into `out` (at least [`MAX_GPA_EXTENSION`] bytes is
    /// always enough); returns its length (0 without data), `None` if `out` is too small.
    pub fn encode_extension(&self, out: &mut [u8]) -> Option<usize> {
        match self.data {
            None => Some(0),
            Some(d) => encode_gpa_direct_single(out, d.offset, d.len, d.pfns),
        }
    }

    /// The ring bytes this packet takes (descriptor, extension, payload, padding, trailer).
    pub fn ring_bytes(&self) -> usize {
        let ext = self.data.map_or(0, |d| 16 + 8 * d.pfns.len());
        (DESCRIPTOR_SIZE + ext + self.payload.len()).next_multiple_of(8) + 8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    Queued,
    InFlight,
}

#[derive(Debug, Clone)]
struct Slot<const P: usize> {
    state: SlotState,
    generation: u32,
    packet: VstorPacket,
    offset: u32,
    len: u32,
    pfns: heapless::Vec<u64, P>,
    full_transfer: bool,
    retries_left: u8,
}

impl<const P: usize> Slot<P> {
    const FREE: Self = Self {
        state: SlotState::Free,
        generation: 0,
        packet: VstorPacket {
            operation: Operation(0),
            flags: 0,
            status: VstorStatus(0),
            body: [0; vstor::VSTOR_BODY_SIZE],
        },
        offset: 0,
        len: 0,
        pfns: heapless::Vec::new(),
        full_transfer: false,
        retries_left: 0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitState {
    Idle,
    BeginInit,
    QueryVersion(usize),
    QueryProperties,
    EndInit,
    Ready,
    Failed(InitError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    None,
    /// Waiting to be sent.
    Queued(VstorPacket),
    /// Sent, waiting for its COMP.
    Sent(Operation),
}

/// The storvsc client of one channel: `N` request slots, `P` pages per request at most.
#[derive(Debug)]
pub struct StorvscClient<const N: usize = 64, const P: usize = 65> {
    config: ClientConfig,
    init: InitState,
    control: Control,
    info: Option<DeviceInfo>,
    version: Option<ProtocolVersion>,
    slots: [Slot<P>; N],
    outbox: heapless::Deque<u16, N>,
    in_use: usize,
    pending_sub_channels: u16,
}

const GENERATION_SHIFT: u32 = 16;

impl<const N: usize, const P: usize> StorvscClient<N, P> {
    const CHECK: () = {
        assert!(N > 0 && N < 0xFFFF, "1..65535 slots");
        assert!(
            P > 0 && P <= MAX_PAGES_PER_REQUEST,
            "1..=257 pages per request"
        );
    };

    /// A client that has not started initialization (primary channel).
    pub fn new(config: ClientConfig) -> Self {
        let () = Self::CHECK;
        Self {
            config,
            init: InitState::Idle,
            control: Control::None,
            info: None,
            version: None,
            slots: [const { Slot::FREE }; N],
            outbox: heapless::Deque::new(),
            in_use: 0,
            pending_sub_channels: 0,
        }
    }

    /// A client for a sub-channel: no initialization of its own, it uses what the primary
    /// negotiated.
    pub fn new_subchannel(config: ClientConfig, info: DeviceInfo) -> Self {
        let mut c = Self::new(config);
        let info = c.finish_info(info.version, info.properties);
        c.version = Some(info.version);
        c.info = Some(info);
        c.init = InitState::Ready;
        c
    }

    /// Starts initialization: queues BEGIN_INITIALIZATION. Also restarts a failed one.
    pub fn start(&mut self) {
        self.init = InitState::BeginInit;
        self.info = None;
        self.version = None;
        self.control = Control::Queued(VstorPacket::request(Operation::BEGIN_INITIALIZATION));
    }

    /// Whether initialization finished.
    pub fn is_ready(&self) -> bool {
        self.init == InitState::Ready
    }

    /// The initialization failure, if any.
    pub fn init_error(&self) -> Option<InitError> {
        match self.init {
            InitState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// What initialization learned.
    pub fn info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }

    /// Requests submitted and not completed.
    pub fn outstanding(&self) -> usize {
        self.in_use
    }

    /// How many more requests fit now.
    pub fn free_slots(&self) -> usize {
        let depth = self.info.map_or(0, |i| i.queue_depth as usize);
        depth.saturating_sub(self.in_use)
    }

    fn finish_info(&self, version: ProtocolVersion, properties: ChannelProperties) -> DeviceInfo {
        let cap = ((P - 1) * PAGE_SIZE) as u32;
        let max = properties.max_transfer_bytes.min(cap).max(1);
        // The worst request in the ring: descriptor, GPA header and range, the pages, the
        // packet, padding and trailer.
        let pages = (max as usize).div_ceil(PAGE_SIZE) + 1;
        let worst =
            (DESCRIPTOR_SIZE + 16 + 8 * pages + version.packet_size()).next_multiple_of(8) + 8;
        // Keep one worst-case packet of slack so the ring never has to be exactly full.
        let by_ring = (self.config.ring_data_bytes / worst)
            .saturating_sub(1)
            .max(1);
        DeviceInfo {
            version,
            properties,
            max_transfer_bytes: max,
            queue_depth: by_ring.min(N) as u16,
        }
    }

    /// Queues CREATE_SUB_CHANNELS for `count` (cut to the host's max_channel_count).
    /// [`Event::SubChannelsCreated`] reports the count asked for.
    pub fn request_sub_channels(&mut self, count: u16) -> Result<u16, SubmitError> {
        let Some(info) = self.info.filter(|_| self.is_ready()) else {
            return Err(SubmitError::NotReady);
        };
        if !info.multi_channel() || self.control != Control::None {
            return Err(SubmitError::Busy);
        }
        let n = count.min(info.properties.max_channel_count);
        if n == 0 {
            return Err(SubmitError::Busy);
        }
        self.control = Control::Queued(VstorPacket::create_sub_channels(n));
        self.pending_sub_channels = n;
        Ok(n)
    }

    fn wire_version(&self) -> ProtocolVersion {
        // Until a version is negotiated every packet goes out in the full Win8 size, as Linux
        // sends it; the init bodies fit either size.
        self.version.unwrap_or(ProtocolVersion::WIN10)
    }

    /// The next packet to send, if any (the control packet first, then requests in order).
    pub fn peek_transmit(&self) -> Option<OutPacket<'_>> {
        if let Control::Queued(p) = &self.control {
            return Some(OutPacket {
                transaction_id: INIT_TRANSACTION_ID,
                payload: p.wire_bytes(self.wire_version()),
                data: None,
            });
        }
        let &i = self.outbox.front()?;
        let s = &self.slots[i as usize];
        Some(OutPacket {
            transaction_id: Self::transaction_id(i, s.generation),
            payload: s.packet.wire_bytes(self.wire_version()),
            data: (s.len > 0).then_some(DataBuffer {
                offset: s.offset,
                len: s.len,
                pfns: &s.pfns,
            }),
        })
    }

    /// The packet [`Self::peek_transmit`] returned is in the ring: wait for its completion.
    pub fn transmitted(&mut self) {
        if let Control::Queued(p) = self.control {
            self.control = Control::Sent(p.operation);
            return;
        }
        if let Some(i) = self.outbox.pop_front() {
            self.slots[i as usize].state = SlotState::InFlight;
        }
    }

    fn transaction_id(slot: u16, generation: u32) -> u64 {
        (u64::from(generation) << GENERATION_SHIFT) | (u64::from(slot) + 1)
    }

    /// Submits a SCSI command. `data` must be given exactly when the command moves data
    /// (its direction comes from the command); READ/WRITE fail with
    /// [`IoError::ShortTransfer`] if the host moves less than the buffer.
    pub fn submit(
        &mut self,
        lun: Lun,
        cdb: &Cdb,
        data: Option<DataBuffer<'_>>,
    ) -> Result<Tag, SubmitError> {
        let bytes = cdb.encode().map_err(SubmitError::Cdb)?;
        let dir = match (cdb.data_in(), data.is_some()) {
            (None, false) => DataDirection::NONE,
            (Some(true), true) => DataDirection::READ,
            (Some(false), true) => DataDirection::WRITE,
            _ => return Err(SubmitError::LengthMismatch),
        };
        let full = matches!(cdb, Cdb::Read(_) | Cdb::Write(_));
        self.submit_bytes(lun, bytes, dir, data, full)
    }

    /// Submits raw CDB bytes (any command, up to 16 bytes) with an explicit direction.
    pub fn submit_raw(
        &mut self,
        lun: Lun,
        cdb: &[u8],
        direction: DataDirection,
        data: Option<DataBuffer<'_>>,
    ) -> Result<Tag, SubmitError> {
        let bytes = CdbBytes::from_slice(cdb)
            .filter(|b| !b.is_empty())
            .ok_or(SubmitError::Cdb(CdbError::Empty))?;
        if (direction == DataDirection::NONE) != data.is_none()
            || direction.0 > DataDirection::NONE.0
        {
            return Err(SubmitError::LengthMismatch);
        }
        self.submit_bytes(lun, bytes, direction, data, false)
    }

    fn submit_bytes(
        &mut self,
        lun: Lun,
        cdb: CdbBytes,
        dir: DataDirection,
        data: Option<DataBuffer<'_>>,
        full_transfer: bool,
    ) -> Result<Tag, SubmitError> {
        let Some(info) = self.info.filter(|_| self.is_ready()) else {
            return Err(SubmitError::NotReady);
        };
        if let Some(d) = &data {
            if !d.is_well_formed() || d.pfns.len() > P {
                return Err(SubmitError::BadBuffer);
            }
            if d.len > info.max_transfer_bytes {
                return Err(SubmitError::TooLarge);
            }
        }
        if self.in_use >= info.queue_depth as usize {
            return Err(SubmitError::QueueFull);
        }
        let Some(i) = self.slots.iter().position(|s| s.state == SlotState::Free) else {
            return Err(SubmitError::QueueFull);
        };
        let version = info.version;
        let mut srb = VmSrb {
            length: version.srb_size() as u16,
            port_number: self.config.port_number,
            path_id: lun.path_id,
            target_id: lun.target_id,
            lun: lun.lun,
            sense_info_length: version.sense_size() as u8,
            data_in: dir,
            data_transfer_length: data.map_or(0, |d| d.len),
            srb_flags: srb_flags::DISABLE_SYNCH_TRANSFER
                | match dir {
                    DataDirection::READ => srb_flags::DATA_IN,
                    DataDirection::WRITE => srb_flags::DATA_OUT,
                    _ => 0,
                },
            time_out_value: self.config.timeout_secs,
            ..VmSrb::default()
        };
        srb.set_cdb(cdb.as_slice());
        let s = &mut self.slots[i];
        s.packet = VstorPacket::execute_srb(&srb);
        s.pfns.clear();
        match data {
            Some(d) => {
                s.offset = d.offset;
                s.len = d.len;
                // Capacity checked above.
                let _ = s.pfns.extend_from_slice(d.pfns);
            }
            None => {
                s.offset = 0;
                s.len = 0;
            }
        }
        s.full_transfer = full_transfer;
        s.retries_left = self.config.unit_attention_retries;
        self.queue_slot(i);
        self.in_use += 1;
        Ok(Tag(i as u16))
    }

    fn queue_slot(&mut self, i: usize) {
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        if s.generation == 0 {
            s.generation = 1;
        }
        s.state = SlotState::Queued;
        // The deque holds N entries and each slot is queued at most once.
        let _ = self.outbox.push_back(i as u16);
    }

    /// READ of `blocks` blocks of `block_size` bytes at `lba` into `data` (READ(10) when it
    /// fits, READ(16) otherwise).
    pub fn submit_read(
        &mut self,
        lun: Lun,
        lba: u64,
        blocks: u32,
        block_size: u32,
        data: DataBuffer<'_>,
    ) -> Result<Tag, SubmitError> {
        let rw = Self::rw(lba, blocks, block_size, &data)?;
        self.submit(lun, &Cdb::Read(rw), Some(data))
    }

    /// WRITE, like [`Self::submit_read`].
    pub fn submit_write(
        &mut self,
        lun: Lun,
        lba: u64,
        blocks: u32,
        block_size: u32,
        fua: bool,
        data: DataBuffer<'_>,
    ) -> Result<Tag, SubmitError> {
        let mut rw = Self::rw(lba, blocks, block_size, &data)?;
        rw.fua = fua;
        self.submit(lun, &Cdb::Write(rw), Some(data))
    }

    fn rw(
        lba: u64,
        blocks: u32,
        block_size: u32,
        data: &DataBuffer<'_>,
    ) -> Result<ReadWrite, SubmitError> {
        if blocks == 0 || u64::from(blocks) * u64::from(block_size) != u64::from(data.len) {
            return Err(SubmitError::LengthMismatch);
        }
        let fits10 = lba + u64::from(blocks) <= 1 << 32 && blocks <= 0xFFFF;
        Ok(ReadWrite {
            size: if fits10 {
                CdbSize::Ten
            } else {
                CdbSize::Sixteen
            },
            lba,
            blocks,
            fua: false,
            dpo: false,
        })
    }

    /// SYNCHRONIZE CACHE (10) of the whole unit.
    pub fn submit_flush(&mut self, lun: Lun) -> Result<Tag, SubmitError> {
        let c = Cdb::SynchronizeCache(SyncCache {
            size: CdbSize::Ten,
            lba: 0,
            blocks: 0,
            immed: false,
        });
        self.submit(lun, &c, None)
    }

    /// UNMAP with a parameter list already in guest pages (build it with
    /// [`crate::scsi::UnmapList::build`]).
    pub fn submit_unmap(&mut self, lun: Lun, list: DataBuffer<'_>) -> Result<Tag, SubmitError> {
        let Ok(len) = u16::try_from(list.len) else {
            return Err(SubmitError::TooLarge);
        };
        let c = Cdb::Unmap {
            anchor: false,
            parameter_list_length: len,
        };
        self.submit(lun, &c, Some(list))
    }

    /// Fails every request that is queued or in flight with [`IoError::Cancelled`] (after a
    /// channel reset or close), calling `f` for each; the slots are free again.
    pub fn fail_all(&mut self, mut f: impl FnMut(Tag)) {
        self.outbox.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.state != SlotState::Free {
                s.state = SlotState::Free;
                f(Tag(i as u16));
            }
        }
        self.in_use = 0;
        if matches!(self.control, Control::Sent(_)) {
            self.control = Control::None;
        }
    }

    /// Consumes one packet from the host.
    pub fn on_packet(&mut self, packet: &PacketView<'_>) -> Result<Option<Event>, ClientError> {
        let ty = packet.packet_type();
        let id = packet.transaction_id();
        if ty == PacketType::COMPLETION {
            if id == INIT_TRANSACTION_ID {
                return self.on_control_completion(packet.payload());
            }
            return self.on_io_completion(id, packet.payload()).map(Some);
        }
        if ty != PacketType::DATA_INBAND {
            return Err(ClientError::Protocol(ProtocolViolation::WrongPacketType(
                ty,
            )));
        }
        let p = VstorPacket::parse(packet.payload(), None).map_err(|_| {
            ClientError::Protocol(ProtocolViolation::ShortPacket {
                len: packet.payload().len(),
            })
        })?;
        match p.operation {
            Operation::ENUMERATE_BUS | Operation::REMOVE_DEVICE => {
                Ok(Some(Event::BusChanged(p.operation)))
            }
            Operation::FCHBA_DATA => Ok(Some(Event::FcHbaData(p.fc_wwn()))),
            op => Err(ClientError::UnexpectedOperation(op)),
        }
    }

    fn fail_init(&mut self, e: InitError) -> Result<Option<Event>, ClientError> {
        self.init = InitState::Failed(e);
        self.control = Control::None;
        Ok(Some(Event::InitFailed(e)))
    }

    fn on_control_completion(&mut self, payload: &[u8]) -> Result<Option<Event>, ClientError> {
        let Control::Sent(op) = self.control else {
            return Err(ClientError::UnknownTransaction(INIT_TRANSACTION_ID));
        };
        let p = match VstorPacket::parse(payload, self.version) {
            Ok(p) => p,
            Err(_) => {
                let v = ProtocolViolation::ShortPacket { len: payload.len() };
                if op == Operation::CREATE_SUB_CHANNELS {
                    self.control = Control::None;
                    return Err(ClientError::Protocol(v));
                }
                return self.fail_init(InitError::Protocol(v));
            }
        };
        if op == Operation::CREATE_SUB_CHANNELS {
            self.control = Control::None;
            if p.operation != Operation::COMPLETE_IO {
                return Err(ClientError::Protocol(ProtocolViolation::WrongOperation(
                    p.operation,
                )));
            }
            if !p.status.is_success() {
                return Ok(Some(Event::SubChannelsRefused(p.status)));
            }
            // Our own request says how many we asked for (the reply need not echo it).
            return Ok(Some(Event::SubChannelsCreated(self.pending_sub_channels)));
        }
        if p.operation != Operation::COMPLETE_IO {
            return self.fail_init(InitError::Protocol(ProtocolViolation::WrongOperation(
                p.operation,
            )));
        }
        self.control = Control::None;
        match self.init {
            InitState::BeginInit => {
                if !p.status.is_success() {
                    return self.fail_init(InitError::Refused(op, p.status));
                }
                self.query_version(0)
            }
            InitState::QueryVersion(i) => {
                if p.status.is_success() {
                    self.version = Some(self.config.versions[i]);
                    self.init = InitState::QueryProperties;
                    self.control =
                        Control::Queued(VstorPacket::request(Operation::QUERY_PROPERTIES));
                    Ok(None)
                } else {
                    self.query_version(i + 1)
                }
            }
            InitState::QueryProperties => {
                if !p.status.is_success() {
                    return self.fail_init(InitError::Refused(op, p.status));
                }
                let props = p.properties();
                if props.max_transfer_bytes == 0 {
                    return self.fail_init(InitError::BadProperties);
                }
                let version = self.version.unwrap_or(ProtocolVersion::WIN10);
                self.info = Some(self.finish_info(version, props));
                self.init = InitState::EndInit;
                self.control = Control::Queued(VstorPacket::request(Operation::END_INITIALIZATION));
                Ok(None)
            }
            InitState::EndInit => {
                if !p.status.is_success() {
                    return self.fail_init(InitError::Refused(op, p.status));
                }
                self.init = InitState::Ready;
                Ok(self.info.map(Event::Ready))
            }
            _ => Err(ClientError::UnknownTransaction(INIT_TRANSACTION_ID)),
        }
    }

    fn query_version(&mut self, i: usize) -> Result<Option<Event>, ClientError> {
        let Some(&v) = self.config.versions.get(i) else {
            return self.fail_init(InitError::NoCommonVersion);
        };
        self.init = InitState::QueryVersion(i);
        self.control = Control::Queued(VstorPacket::query_version(v));
        Ok(None)
    }

    fn on_io_completion(&mut self, id: u64, payload: &[u8]) -> Result<Event, ClientError> {
        let slot = (id & 0xFFFF) as usize;
        let generation = id >> GENERATION_SHIFT;
        if slot == 0 || slot > N || generation > u64::from(u32::MAX) {
            return Err(ClientError::UnknownTransaction(id));
        }
        let i = slot - 1;
        let s = &self.slots[i];
        if s.state != SlotState::InFlight || u64::from(s.generation) != generation {
            return Err(ClientError::UnknownTransaction(id));
        }
        let version = self.version.unwrap_or(ProtocolVersion::WIN10);
        let tag = Tag(i as u16);
        let result = match Self::check_completion(payload, version, s.len, s.full_transfer) {
            Err(IoError::UnitAttention(sense)) if s.retries_left > 0 => {
                self.slots[i].retries_left -= 1;
                self.queue_slot(i);
                return Ok(Event::Retrying { tag, sense });
            }
            r => r,
        };
        self.slots[i].state = SlotState::Free;
        self.in_use -= 1;
        Ok(Event::Completed { tag, result })
    }

    /// Validates an EXECUTE_SRB completion and maps it to the outcome.
    fn check_completion(
        payload: &[u8],
        version: ProtocolVersion,
        requested: u32,
        full_transfer: bool,
    ) -> Result<IoDone, IoError> {
        let p = VstorPacket::parse(payload, Some(version)).map_err(|_| {
            IoError::Protocol(ProtocolViolation::ShortPacket { len: payload.len() })
        })?;
        if p.operation != Operation::COMPLETE_IO {
            return Err(IoError::Protocol(ProtocolViolation::WrongOperation(
                p.operation,
            )));
        }
        let srb = p.srb();
        if srb.data_transfer_length > requested {
            return Err(IoError::Protocol(ProtocolViolation::TransferTooLong {
                requested,
                reported: srb.data_transfer_length,
            }));
        }
        let max_sense = version.sense_size() as u8;
        if srb.sense_info_length > max_sense {
            return Err(IoError::Protocol(ProtocolViolation::SenseTooLong {
                len: srb.sense_info_length,
                max: max_sense,
            }));
        }
        let status = srb.srb_status;
        let scsi = ScsiStatus(srb.scsi_status);
        let code = status.code();
        if matches!(
            code,
            SrbStatus::INVALID_LUN
                | SrbStatus::NO_DEVICE
                | SrbStatus::INVALID_TARGET_ID
                | SrbStatus::INVALID_PATH_ID
                | SrbStatus::SELECTION_TIMEOUT
        ) {
            return Err(IoError::NoDevice(code));
        }
        // Sense counts only with CHECK CONDITION and autosense valid (as Linux copies it).
        if scsi == ScsiStatus::CHECK_CONDITION {
            if !status.autosense_valid() || srb.sense_info_length == 0 {
                return Err(IoError::CheckConditionWithoutSense);
            }
            let sense = Sense::parse(srb.sense(version))
                .map_err(|e| IoError::Protocol(ProtocolViolation::BadSense(e)))?;
            if sense.key != SenseKey::RECOVERED_ERROR {
                return Err(IoError::from_sense(sense));
            }
        } else if code == SrbStatus::BUSY || scsi == ScsiStatus::BUSY {
            return Err(IoError::Busy);
        } else if scsi != ScsiStatus::GOOD && scsi != ScsiStatus::CONDITION_MET {
            return Err(IoError::Scsi(scsi));
        }
        // DATA_OVERRUN with good status is an under/overrun the length already reports.
        if code != SrbStatus::SUCCESS && code != SrbStatus::DATA_OVERRUN {
            return Err(IoError::Srb(code));
        }
        if !p.status.is_success() {
            return Err(IoError::HostStatus(p.status));
        }
        if full_transfer && srb.data_transfer_length != requested {
            return Err(IoError::ShortTransfer {
                requested,
                transferred: srb.data_transfer_length,
            });
        }
        Ok(IoDone {
            transferred: srb.data_transfer_length,
            scsi_status: scsi,
        })
    }
}

#[cfg(test)]
mod tests;
