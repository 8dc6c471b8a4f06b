//! The thin glue: a [`NetvscClient`] over an open `vmbus_guest` [`Channel`], and a frame API
//! on top (plus, with the `smoltcp` feature, a `smoltcp::phy::Device`).
//!
//! [`NetDevice`] moves packets between the client and the channel's rings and bytes between
//! the client and guest memory: the receive buffer and send buffer (guest pages behind the
//! GPADLs the caller established, as [`PageBuffer`]s), one control page for RNDIS control
//! messages, and a direct-transmit buffer of one or more pages for GPA-direct frames (up to
//! [`MAX_DIRECT_PAGES`] of them are used: enough for an MTU-9000 frame and its RNDIS header).
//! A frame goes through a send section when it fits one, otherwise GPA-direct;
//! [`NetDevice::transmit_direct`] forces the GPA-direct path. [`NetDevice::poll`] drains the inbound ring in a batch,
//! hands frames to a callback and sends the receive completions at once, so the host can reuse
//! its buffer space; [`NetDevice::flush`] writes what the client queued.
//!
//! Blocking helpers spin at most `max_polls` rounds and then report [`DeviceError::Timeout`],
//! so a host that never answers cannot hang the guest.
//! The client picks the transaction ids itself, so the glue reads the inbound ring through the
//! channel's receiver rather than `Channel::recv`.
#![forbid(unsafe_code)]

use crate::client::{
    ClientConfig, ClientError, DeviceInfo, Event, InitError, NetvscClient, Placement,
    ReceiveBuffer, TxError, TxOffload, MAX_TX_HEADER,
};
use crate::nvsp::MAX_INBOUND_PACKET_SIZE;
use hypercall::page::PageRef;
use vmbus_guest::channel::{Channel, ChannelError, SendOutcome};
use vmbus_guest::packet::{encode_gpa_direct_single, PacketFlags, PacketType};
use vmbus_guest::ring::{OutgoingPacket, RingMemory, SignalNeeded};

const PAGE_SIZE: usize = 4096;

/// Pages of the direct-transmit buffer the glue uses (more are ignored): 16 KiB holds an
/// MTU-9000 frame with a VLAN tag and its RNDIS header
/// ([`DIRECT_TX_MIN_PAGES_JUMBO`] pages are enough for that).
pub const MAX_DIRECT_PAGES: usize = 4;

/// Direct-transmit pages an MTU-9000 device needs to send any frame GPA-direct.
pub const DIRECT_TX_MIN_PAGES_JUMBO: usize = (MAX_TX_HEADER + 9000 + 14 + 4).div_ceil(PAGE_SIZE);

/// Bytes of a GPA-direct extension with one range per direct page: the
/// {reserved, range_count} head, then {byte_count, byte_offset, pfn} per range.
const DIRECT_EXT_LEN: usize = 8 + 16 * MAX_DIRECT_PAGES;

/// Writes the extension of a DATA_USING_GPA_DIRECT packet describing the first `len` bytes of
/// `pages` (in order, each 4 KiB, not necessarily contiguous) into `out`: one range per page
/// touched, each {byte_count ≤ 4096, byte_offset 0, one PFN}, as Linux's page buffers
/// (fact sheet §6.4, §9.3). Returns the bytes written, or `None` if `len` is 0, the pages are
/// too few or `out` too small.
fn encode_gpa_direct_pages(out: &mut [u8], pages: &[PageRef<'_>], len: usize) -> Option<usize> {
    let n = len.div_ceil(PAGE_SIZE);
    if n == 0 || n > pages.len() {
        return None;
    }
    let total = 8 + 16 * n;
    let out = out.get_mut(..total)?;
    out[..4].copy_from_slice(&0u32.to_le_bytes());
    out[4..8].copy_from_slice(&(n as u32).to_le_bytes());
    for (i, (r, page)) in out[8..].chunks_exact_mut(16).zip(pages).enumerate() {
        let count = (len - i * PAGE_SIZE).min(PAGE_SIZE) as u32;
        r[..4].copy_from_slice(&count.to_le_bytes());
        r[4..8].copy_from_slice(&0u32.to_le_bytes());
        r[8..].copy_from_slice(&page.gpn().to_le_bytes());
    }
    Some(total)
}

/// How the glue signals the host (HvSignalEvent on the channel's connection id).
pub trait HostSignal {
    /// Signals; `false` if the signal could not be sent.
    fn signal(&mut self, connection_id: u32) -> bool;
}

impl<F: FnMut(u32) -> bool> HostSignal for F {
    fn signal(&mut self, connection_id: u32) -> bool {
        self(connection_id)
    }
}

impl<P: hypercall::Platform, const C: usize, const G: usize, const O: usize> HostSignal
    for &vmbus_guest::driver::VmBus<'_, P, C, G, O>
{
    fn signal(&mut self, connection_id: u32) -> bool {
        vmbus_guest::driver::VmBus::signal(self, connection_id).is_ok()
    }
}

/// Guest memory over consecutive [`PageRef`]s (a GPADL's pages in order).
#[derive(Debug, Clone, Copy)]
pub struct PageBuffer<'p, 'a> {
    pages: &'p [PageRef<'a>],
}

impl<'p, 'a> PageBuffer<'p, 'a> {
    /// The buffer over `pages`.
    pub fn new(pages: &'p [PageRef<'a>]) -> Self {
        Self { pages }
    }

    /// The pages.
    pub fn pages(&self) -> &'p [PageRef<'a>] {
        self.pages
    }

    fn walk(
        &self,
        at: usize,
        n: usize,
        mut f: impl FnMut(&PageRef<'a>, usize, core::ops::Range<usize>),
    ) -> bool {
        if at
            .checked_add(n)
            .is_none_or(|end| end > self.pages.len() * PAGE_SIZE)
        {
            return false;
        }
        let mut done = 0;
        while done < n {
            let pos = at + done;
            let (page, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
            let k = (PAGE_SIZE - off).min(n - done);
            f(&self.pages[page], off, done..done + k);
            done += k;
        }
        true
    }

    /// Copies `data` to `at`; false if out of range.
    pub fn write(&self, at: usize, data: &[u8]) -> bool {
        self.walk(at, data.len(), |p, off, r| p.write_bytes(off, &data[r]))
    }
}

impl ReceiveBuffer for PageBuffer<'_, '_> {
    fn len(&self) -> usize {
        self.pages.len() * PAGE_SIZE
    }

    fn read(&self, offset: usize, out: &mut [u8]) -> bool {
        self.walk(offset, out.len(), |p, off, r| {
            p.read_bytes(off, &mut out[r])
        })
    }
}

/// What went wrong in the glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The rings failed.
    Channel(ChannelError),
    /// The signal could not be sent.
    Signal,
    /// Bring-up failed.
    Init(InitError),
    /// A transmit was refused.
    Tx(TxError),
    /// Nothing arrived within `max_polls` rounds.
    Timeout,
    /// The control page cannot hold a message (cannot happen with a 4 KiB page), or the
    /// direct-transmit pages cannot be named in a packet.
    ControlPage,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "netvsc channel: {e}"),
            Self::Signal => f.write_str("could not signal the host"),
            Self::Init(e) => write!(f, "netvsc bring-up failed: {e}"),
            Self::Tx(e) => write!(f, "transmit refused: {e}"),
            Self::Timeout => f.write_str("host did not answer in time"),
            Self::ControlPage => f.write_str("control page too small"),
        }
    }
}

impl From<ChannelError> for DeviceError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<TxError> for DeviceError {
    fn from(e: TxError) -> Self {
        Self::Tx(e)
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Packets put into the ring.
    pub packets_sent: u64,
    /// Packets taken from the ring.
    pub packets_received: u64,
    /// Host packets the client refused.
    pub packets_rejected: u64,
    /// The last refusal.
    pub last_error: Option<ClientError>,
    /// Frames received.
    pub frames_received: u64,
    /// Frames transmitted.
    pub frames_sent: u64,
    /// Signals sent to the host.
    pub signals: u64,
    /// Times the outbound ring was full.
    pub ring_full: u64,
}

/// Blocking helpers poll at most this many rounds by default.
pub const DEFAULT_MAX_POLLS: u64 = 10_000_000;

/// Largest receive sub-allocation the glue copies out (a range larger than this is refused).
pub const MAX_RECEIVE_SECTION: usize = 8192;

/// A netvsc device: client + rings + buffers. `W` = send-section bitmap words.
pub struct NetDevice<'p, 'a, M: RingMemory, S: HostSignal, const W: usize = 4> {
    channel: Channel<M, 1>,
    signal: S,
    client: NetvscClient<W>,
    receive: PageBuffer<'p, 'a>,
    send: PageBuffer<'p, 'a>,
    control: PageRef<'a>,
    direct: PageBuffer<'p, 'a>,
    link_up: bool,
    stats: DeviceStats,
}

impl<'p, 'a, M: RingMemory, S: HostSignal, const W: usize> NetDevice<'p, 'a, M, S, W> {
    /// The device over an open channel. `receive`/`send` are the pages of the GPADLs named in
    /// `config`; `control` is one more page the host can address (RNDIS control messages) and
    /// `direct` more pages (in any physical order) for GPA-direct frames: a frame is sent
    /// GPA-direct only if header + frame fit the first [`MAX_DIRECT_PAGES`] of them
    /// ([`DIRECT_TX_MIN_PAGES_JUMBO`] for any MTU-9000 frame, one page for MTU 1500 and
    /// smaller). Call [`Self::init`] next, or use [`Self::open`].
    pub fn new(
        channel: Channel<M, 1>,
        signal: S,
        config: ClientConfig,
        receive: &'p [PageRef<'a>],
        send: &'p [PageRef<'a>],
        control: PageRef<'a>,
        direct: &'p [PageRef<'a>],
    ) -> Self {
        Self {
            channel,
            signal,
            client: NetvscClient::new(config),
            receive: PageBuffer::new(receive),
            send: PageBuffer::new(send),
            control,
            direct: PageBuffer::new(&direct[..direct.len().min(MAX_DIRECT_PAGES)]),
            link_up: false,
            stats: DeviceStats::default(),
        }
    }

    /// [`Self::new`] + [`Self::init`].
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        channel: Channel<M, 1>,
        signal: S,
        config: ClientConfig,
        receive: &'p [PageRef<'a>],
        send: &'p [PageRef<'a>],
        control: PageRef<'a>,
        direct: &'p [PageRef<'a>],
        max_polls: u64,
    ) -> Result<Self, DeviceError> {
        let mut d = Self::new(channel, signal, config, receive, send, control, direct);
        d.init(max_polls)?;
        Ok(d)
    }

    /// The sans-IO client.
    pub fn client(&self) -> &NetvscClient<W> {
        &self.client
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// The MAC address (zero before bring-up).
    pub fn mac(&self) -> [u8; 6] {
        self.client.info().map_or([0; 6], |i| i.mac)
    }

    /// The MTU (without the Ethernet header).
    pub fn mtu(&self) -> u32 {
        self.client.info().map_or(0, |i| i.mtu)
    }

    /// The link state.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    fn signal_if(&mut self, s: SignalNeeded) -> Result<(), DeviceError> {
        if s.needed() {
            self.stats.signals += 1;
            if !self.signal.signal(self.channel.connection_id()) {
                return Err(DeviceError::Signal);
            }
        }
        Ok(())
    }

    /// Writes every queued packet the outbound ring has room for; returns how many.
    pub fn flush(&mut self) -> Result<usize, DeviceError> {
        let mut n = 0;
        let mut signal = false;
        let mut ext = [0u8; DIRECT_EXT_LEN];
        while let Some(out) = self.client.peek_transmit() {
            let (ty, ext_len) = match out.placement {
                Placement::Control => {
                    if out.rndis.len() > PAGE_SIZE {
                        return Err(DeviceError::ControlPage);
                    }
                    self.control.write_bytes(0, out.rndis);
                    let len = out.rndis.len() as u32;
                    let Some(k) = encode_gpa_direct_single(&mut ext, 0, len, &[self.control.gpn()])
                    else {
                        return Err(DeviceError::ControlPage);
                    };
                    (PacketType::DATA_USING_GPA_DIRECT, k)
                }
                Placement::Direct(len) => {
                    // The bytes are already in the direct pages (written before queuing).
                    let Some(k) =
                        encode_gpa_direct_pages(&mut ext, self.direct.pages(), len as usize)
                    else {
                        return Err(DeviceError::ControlPage);
                    };
                    (PacketType::DATA_USING_GPA_DIRECT, k)
                }
                _ if out.completion => (PacketType::COMPLETION, 0),
                _ => (PacketType::DATA_INBAND, 0),
            };
            let payload = [out.nvsp];
            let pkt = OutgoingPacket {
                packet_type: ty,
                flags: PacketFlags::new().with_completion_requested(out.completion_requested),
                transaction_id: out.transaction_id,
                extension: &ext[..ext_len],
                payload: &payload,
            };
            match self.channel.send_or_request_space(&pkt)? {
                SendOutcome::Sent(s) => {
                    signal |= s.needed();
                    self.client.transmitted();
                    self.stats.packets_sent += 1;
                    n += 1;
                }
                SendOutcome::Full => {
                    self.stats.ring_full += 1;
                    break;
                }
            }
        }
        self.signal_if(SignalNeeded(signal))?;
        Ok(n)
    }

    /// Drains the inbound ring, passing each received frame to `on_frame` and every event to
    /// the client's bookkeeping, then flushes (receive completions go out here). Returns the
    /// number of packets read.
    pub fn poll(&mut self, mut on_frame: impl FnMut(&[u8])) -> Result<usize, DeviceError> {
        self.poll_events(|e| {
            if let Event::Frame { data, .. } = e {
                on_frame(data)
            }
        })
    }

    /// [`Self::poll`] with every [`Event`].
    pub fn poll_events(
        &mut self,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<usize, DeviceError> {
        let mut buf = [0u8; MAX_INBOUND_PACKET_SIZE + 48];
        let mut scratch = [0u8; MAX_RECEIVE_SECTION];
        let mut n = 0;
        loop {
            self.channel.begin_batch();
            loop {
                let packet = match self.channel.receiver().try_read_packet(&mut buf) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.channel.commit_reads();
                        let _ = self.channel.end_batch();
                        return Err(ChannelError::Ring(e).into());
                    }
                };
                n += 1;
                self.stats.packets_received += 1;
                let (stats, link) = (&mut self.stats, &mut self.link_up);
                let r = self
                    .client
                    .on_packet(&packet, &self.receive, &mut scratch, |e| {
                        match e {
                            Event::Frame { .. } => stats.frames_received += 1,
                            Event::Link(up) => *link = up,
                            Event::Ready(i) => *link = i.link_up,
                            _ => {}
                        }
                        on_event(e)
                    });
                if let Err(e) = r {
                    self.stats.packets_rejected += 1;
                    self.stats.last_error = Some(e);
                }
                // Receive completions out at once: the host may be waiting for buffer space.
                if self.client.queued() > 0 {
                    self.flush()?;
                }
            }
            let s = self.channel.commit_reads()?;
            self.signal_if(s)?;
            if !self.channel.end_batch()? {
                break;
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// Runs bring-up to the end (blocking).
    pub fn init(&mut self, max_polls: u64) -> Result<DeviceInfo, DeviceError> {
        self.init_with(max_polls, |_| {})
    }

    /// [`Self::init`], handing every event that arrives meanwhile to `on_event` too: a link
    /// indication (or a frame) the host sends while bring-up finishes would otherwise be lost
    /// to the caller.
    pub fn init_with(
        &mut self,
        max_polls: u64,
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<DeviceInfo, DeviceError> {
        self.client.start();
        self.flush()?;
        let mut result = None;
        for _ in 0..max_polls {
            if let Some(e) = self.client.init_error() {
                return Err(DeviceError::Init(e));
            }
            self.poll_events(|e| {
                match e {
                    Event::Ready(i) => result = Some(Ok(i)),
                    Event::InitFailed(e) => result = Some(Err(DeviceError::Init(e))),
                    _ => {}
                }
                on_event(e)
            })?;
            if let Some(r) = result {
                return r;
            }
        }
        Err(DeviceError::Timeout)
    }

    /// Sends one Ethernet frame (without FCS) through a send-buffer section, or GPA-direct
    /// from the direct buffer if it does not fit a section. Polls (dropping received frames)
    /// up to `max_polls` rounds while every section (or the direct buffer) is busy.
    pub fn transmit(
        &mut self,
        frame: &[u8],
        offload: TxOffload,
        max_polls: u64,
    ) -> Result<(), DeviceError> {
        self.transmit_via(frame, offload, max_polls, false)
    }

    /// Sends one Ethernet frame (without FCS) GPA-direct from the direct buffer, whatever its
    /// size: header and frame are written to the direct pages and named page by page in the
    /// packet's ranges. Refused with [`TxError::BadLength`] if the frame is larger than the
    /// MTU allows or header + frame do not fit the direct buffer. Polls (dropping received
    /// frames) up to `max_polls` rounds while the direct buffer is busy.
    pub fn transmit_direct(
        &mut self,
        frame: &[u8],
        offload: TxOffload,
        max_polls: u64,
    ) -> Result<(), DeviceError> {
        self.transmit_via(frame, offload, max_polls, true)
    }

    fn transmit_via(
        &mut self,
        frame: &[u8],
        offload: TxOffload,
        max_polls: u64,
        force_direct: bool,
    ) -> Result<(), DeviceError> {
        for _ in 0..max_polls.max(1) {
            let section = if force_direct {
                Err(TxError::BadLength(frame.len()))
            } else {
                self.client.begin_transmit(frame.len(), offload)
            };
            match section {
                Ok(r) => {
                    let ok = self.send.write(r.offset, r.header())
                        && self.send.write(r.offset + r.header_len, frame);
                    if !ok {
                        self.client.cancel_transmit(&r);
                        return Err(DeviceError::Tx(TxError::BadLength(frame.len())));
                    }
                    self.client.queue_transmit(&r)?;
                    self.stats.frames_sent += 1;
                    self.flush()?;
                    return Ok(());
                }
                Err(TxError::BadLength(_)) if frame.len() <= self.client.max_frame() => {
                    let capacity = self.direct.len();
                    match self
                        .client
                        .queue_transmit_direct(frame.len(), offload, capacity)
                    {
                        Ok(r) => {
                            // Within `capacity`, so both writes succeed; the packet is queued
                            // but only goes out with the flush below, after the bytes.
                            let ok = self.direct.write(0, r.header())
                                && self.direct.write(r.header_len, frame);
                            debug_assert!(ok);
                            self.stats.frames_sent += 1;
                            self.flush()?;
                            return Ok(());
                        }
                        Err(TxError::Busy) | Err(TxError::OutboxFull) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(TxError::Busy) | Err(TxError::OutboxFull) => {}
                Err(e) => return Err(e.into()),
            }
            self.poll(|_| {})?;
        }
        Err(DeviceError::Timeout)
    }

    /// Polls until at least one frame arrived (or `max_polls` rounds), handing frames to
    /// `on_frame`; returns how many arrived.
    pub fn receive(
        &mut self,
        mut on_frame: impl FnMut(&[u8]),
        max_polls: u64,
    ) -> Result<usize, DeviceError> {
        let mut frames = 0;
        for _ in 0..max_polls.max(1) {
            self.poll(|f| {
                frames += 1;
                on_frame(f)
            })?;
            if frames > 0 {
                break;
            }
        }
        Ok(frames)
    }
}

/// `smoltcp::phy::Device` over a [`NetDevice`] (feature `smoltcp`). Received frames are
/// buffered `Q` at a time (a small ring of MTU-sized slots) because smoltcp pulls frames one
/// at a time while the VMBus ring is drained in batches.
#[cfg(feature = "smoltcp")]
pub mod smoltcp_phy {
    use super::*;
    use smoltcp::phy::{self, DeviceCapabilities, Medium};
    use smoltcp::time::Instant;

    /// Bytes of one buffered frame.
    pub const FRAME_SLOT: usize = 1536;

    /// The adapter: owns the device and a small receive queue of `Q` frames.
    pub struct SmolDevice<
        'p,
        'a,
        M: RingMemory,
        S: HostSignal,
        const W: usize = 4,
        const Q: usize = 8,
    > {
        dev: NetDevice<'p, 'a, M, S, W>,
        rxq: heapless::Deque<([u8; FRAME_SLOT], usize), Q>,
        /// Rounds a transmit waits for a free section.
        pub max_polls: u64,
    }

    impl<'p, 'a, M: RingMemory, S: HostSignal, const W: usize, const Q: usize>
        SmolDevice<'p, 'a, M, S, W, Q>
    {
        /// Wraps an initialized device.
        pub fn new(dev: NetDevice<'p, 'a, M, S, W>) -> Self {
            Self {
                dev,
                rxq: heapless::Deque::new(),
                max_polls: DEFAULT_MAX_POLLS,
            }
        }

        /// The device.
        pub fn device(&mut self) -> &mut NetDevice<'p, 'a, M, S, W> {
            &mut self.dev
        }

        fn fill(&mut self) {
            if !self.rxq.is_empty() {
                return;
            }
            let q = &mut self.rxq;
            // Frames beyond the queue (or larger than a slot) are dropped, like a full NIC ring.
            let _ = self.dev.poll(|f| {
                if f.len() <= FRAME_SLOT && !q.is_full() {
                    let mut s = [0u8; FRAME_SLOT];
                    s[..f.len()].copy_from_slice(f);
                    let _ = q.push_back((s, f.len()));
                }
            });
        }
    }

    /// A received frame.
    pub struct RxToken {
        frame: [u8; FRAME_SLOT],
        len: usize,
    }

    impl phy::RxToken for RxToken {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.frame[..self.len])
        }
    }

    /// A permit to send one frame.
    pub struct TxToken<'d, 'p, 'a, M: RingMemory, S: HostSignal, const W: usize> {
        dev: &'d mut NetDevice<'p, 'a, M, S, W>,
        max_polls: u64,
    }

    impl<M: RingMemory, S: HostSignal, const W: usize> phy::TxToken for TxToken<'_, '_, '_, M, S, W> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut buf = [0u8; FRAME_SLOT];
            let n = len.min(FRAME_SLOT);
            let r = f(&mut buf[..n]);
            // smoltcp has no way to report a failed send; the frame is lost like on a wire.
            let _ = self
                .dev
                .transmit(&buf[..n], TxOffload::default(), self.max_polls);
            r
        }
    }

    impl<'p, 'a, M: RingMemory, S: HostSignal, const W: usize, const Q: usize> phy::Device
        for SmolDevice<'p, 'a, M, S, W, Q>
    {
        type RxToken<'d>
            = RxToken
        where
            Self: 'd;
        type TxToken<'d>
            = TxToken<'d, 'p, 'a, M, S, W>
        where
            Self: 'd;

        fn receive(&mut self, _t: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
            self.fill();
            let (frame, len) = self.rxq.pop_front()?;
            Some((
                RxToken { frame, len },
                TxToken {
                    dev: &mut self.dev,
                    max_polls: self.max_polls,
                },
            ))
        }

        fn transmit(&mut self, _t: Instant) -> Option<Self::TxToken<'_>> {
            self.dev.link_up().then_some(TxToken {
                dev: &mut self.dev,
                max_polls: self.max_polls,
            })
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ethernet;
            c.max_transmission_unit = (self.dev.mtu() as usize + 14).min(FRAME_SLOT);
            c.max_burst_size = Some(1);
            c
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::sync::atomic::AtomicU64;
    use std::vec::Vec;

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// One range per page touched, each {len within the page, offset 0, that page's PFN}, in
    /// buffer order (the pages need not be contiguous).
    #[test]
    fn direct_ranges_name_each_page() {
        let words: Vec<[AtomicU64; 512]> = (0..3)
            .map(|_| core::array::from_fn(|_| AtomicU64::new(0)))
            .collect();
        let gpas = [0x9000u64, 0x2000, 0x5000];
        let pages: Vec<PageRef<'_>> = words
            .iter()
            .zip(gpas)
            .map(|(w, g)| PageRef::new(w, g).unwrap())
            .collect();
        let mut ext = [0u8; DIRECT_EXT_LEN];
        for (len, want) in [
            (1usize, &[1u32][..]),
            (4096, &[4096]),
            (4097, &[4096, 1]),
            (44 + 9018, &[4096, 4096, 870]),
            (3 * 4096, &[4096, 4096, 4096]),
        ] {
            let n = encode_gpa_direct_pages(&mut ext, &pages, len).unwrap();
            assert_eq!(n, 8 + 16 * want.len());
            assert_eq!((le32(&ext, 0), le32(&ext, 4)), (0, want.len() as u32));
            for (i, &count) in want.iter().enumerate() {
                let r = &ext[8 + 16 * i..];
                assert_eq!((le32(r, 0), le32(r, 4)), (count, 0), "len {len} range {i}");
                assert_eq!(
                    u64::from_le_bytes(r[8..16].try_into().unwrap()),
                    gpas[i] >> 12
                );
            }
        }
        assert_eq!(encode_gpa_direct_pages(&mut ext, &pages, 0), None);
        assert_eq!(
            encode_gpa_direct_pages(&mut ext, &pages, 3 * 4096 + 1),
            None
        );
        assert_eq!(encode_gpa_direct_pages(&mut ext[..23], &pages, 4097), None);
        const { assert!(DIRECT_TX_MIN_PAGES_JUMBO <= MAX_DIRECT_PAGES) };
    }
}
