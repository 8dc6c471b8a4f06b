//! The thin glue: a [`StorvscClient`] over an open `vmbus_guest` [`Channel`], and a block-device
//! API on top.
//!
//! [`StorvscDevice`] moves packets between the client and the channel's rings:
//! [`StorvscDevice::flush`] writes what the client queued (signalling the host when the ring
//! rules say so), [`StorvscDevice::poll`] drains the inbound ring in a batch and hands every
//! event to the caller. Call `poll` from the channel's interrupt (or in a loop when polling).
//! The client picks the transaction ids itself, so the glue reads the inbound ring through the
//! channel's receiver rather than `Channel::recv` (which would match ids the channel issued).
//!
//! Data buffers are [`DmaBuf`]s: byte ranges over guest pages ([`PageRef`]s, whose GPAs are
//! known), any offset, any number of pages; the host reads or writes those pages directly.
//!
//! The block API: [`StorvscDevice::probe_disk`] (TEST UNIT READY, INQUIRY, READ CAPACITY,
//! the VPD pages, the caching mode page) gives a [`Disk`] (capacity, block size, discard
//! limits, write cache); then `read`, `write`, `flush`, `discard` (blocking) or
//! `submit_read` / `submit_write` + `poll` (asynchronous, by [`Tag`]). The blocking helpers
//! spin at most `max_polls` rounds and then report [`DeviceError::Timeout`], so a host that
//! never answers cannot hang the guest. An ENUMERATE_BUS (LUN hot-add/remove) is remembered
//! for [`StorvscDevice::take_bus_changed`] and passed to `poll`'s callback.
//!
//! **Multi-queue.** After [`StorvscDevice::create_sub_channels`] returns `n`, the host offers
//! `n` sub-channels (the same class and instance GUIDs, sub_channel_index 1..=n). Open each
//! with `vmbus_guest` like the primary and wrap it in [`StorvscDevice::new_subchannel`] with
//! the primary's [`DeviceInfo`]: every channel has its own request slots and transaction ids,
//! so queues never share state.
#![forbid(unsafe_code)]

use crate::client::{
    ClientConfig, DataBuffer, DeviceInfo, Event, InitError, IoDone, IoError, Lun, StorvscClient,
    SubmitError, Tag, MAX_GPA_EXTENSION, PAGE_SIZE,
};
use crate::scsi::{
    decode_lun, mode_page, peripheral, vpd, BlockLimitsVpd, Cdb, CdbSize,
    LogicalBlockProvisioningVpd, ModeSense, ReadCapacity10Data, ReadCapacity16Data,
    ReportLunsHeader, StandardInquiryData, StartStop, UnmapList, VpdPageHeader, CACHING_WCE,
    MODE_WP,
};
use crate::sense::SenseKey;
use crate::vstor::MAX_INBOUND_PACKET_SIZE;
use hypercall::page::PageRef;
use vmbus_guest::channel::{Channel, ChannelError, SendOutcome};
use vmbus_guest::packet::PacketFlags;
use vmbus_guest::ring::{OutgoingPacket, RingMemory, SignalNeeded};
use zerocopy::FromBytes;

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

/// What went wrong in the glue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceError {
    /// The rings failed (corrupt, or a packet larger than a storvsc packet can be).
    Channel(ChannelError),
    /// The signal could not be sent.
    Signal,
    /// Initialization failed.
    Init(InitError),
    /// The request was refused before it was sent.
    Submit(SubmitError),
    /// The request failed.
    Io(IoError),
    /// Nothing arrived within `max_polls` rounds.
    Timeout,
    /// The LUN reports no disk there (peripheral qualifier/type), or the capacity data is
    /// unusable (zero or non-power-of-two block size, or below 512).
    NotADisk,
    /// A DMA buffer is too small for what the command needs.
    BufferTooSmall,
    /// INQUIRY says there is no logical unit at this address (peripheral qualifier ≠ 0).
    NoLun,
}

impl From<ChannelError> for DeviceError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<SubmitError> for DeviceError {
    fn from(e: SubmitError) -> Self {
        Self::Submit(e)
    }
}

/// A byte range over guest pages the host can address: `len` bytes starting `offset` bytes into
/// the first page, continuing at the start of each following page.
#[derive(Debug, Clone, Copy)]
pub struct DmaBuf<'p, 'a> {
    pages: &'p [PageRef<'a>],
    offset: usize,
    len: usize,
}

impl<'p, 'a> DmaBuf<'p, 'a> {
    /// `len` bytes at `offset` of `pages`; `None` unless `offset < 4096`, `len > 0` and the pages
    /// hold exactly the pages the range touches.
    pub fn new(pages: &'p [PageRef<'a>], offset: usize, len: usize) -> Option<Self> {
        (offset < PAGE_SIZE && len > 0 && (offset + len).div_ceil(PAGE_SIZE) == pages.len())
            .then_some(Self { pages, offset, len })
    }

    /// The first `len` bytes of this buffer (the pages it needs only).
    pub fn prefix(&self, len: usize) -> Option<Self> {
        if len > self.len {
            return None;
        }
        Self::new(
            &self.pages[..(self.offset + len).div_ceil(PAGE_SIZE)],
            self.offset,
            len,
        )
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (an empty buffer cannot be built).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes at `at` (relative to the buffer) into `out`; false if out of range.
    pub fn read(&self, at: usize, out: &mut [u8]) -> bool {
        self.walk(at, out.len(), |page, off, range| {
            page.read_bytes(off, &mut out[range]);
        })
    }

    /// Copies `data` to `at`; false if out of range.
    pub fn write(&self, at: usize, data: &[u8]) -> bool {
        self.walk(at, data.len(), |page, off, range| {
            page.write_bytes(off, &data[range]);
        })
    }

    fn walk(
        &self,
        at: usize,
        n: usize,
        mut f: impl FnMut(&PageRef<'a>, usize, core::ops::Range<usize>),
    ) -> bool {
        if at.checked_add(n).is_none_or(|end| end > self.len) {
            return false;
        }
        let mut done = 0;
        while done < n {
            let pos = self.offset + at + done;
            let (page, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
            let k = (PAGE_SIZE - off).min(n - done);
            f(&self.pages[page], off, done..done + k);
            done += k;
        }
        true
    }

    fn with_pfns<const P: usize, R>(
        &self,
        f: impl FnOnce(DataBuffer<'_>) -> Result<R, DeviceError>,
    ) -> Result<R, DeviceError> {
        let mut pfns = heapless::Vec::<u64, P>::new();
        for p in self.pages {
            pfns.push(p.gpn())
                .map_err(|_| DeviceError::Submit(SubmitError::BadBuffer))?;
        }
        let len =
            u32::try_from(self.len).map_err(|_| DeviceError::Submit(SubmitError::TooLarge))?;
        f(DataBuffer {
            offset: self.offset as u32,
            len,
            pfns: &pfns,
        })
    }
}

/// A disk found by [`StorvscDevice::probe_disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Its address.
    pub lun: Lun,
    /// Bytes per logical block.
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Write protected (MODE SENSE WP).
    pub read_only: bool,
    /// The write cache is on: flushes matter (caching mode page WCE).
    pub write_cache: bool,
    /// UNMAP supported (logical block provisioning VPD LBPU, or READ CAPACITY(16) LBPME).
    pub discard: bool,
    /// Most blocks one UNMAP may name (0 = no limit reported).
    pub max_unmap_blocks: u32,
    /// Peripheral device type (0 = disk).
    pub device_type: u8,
}

impl Disk {
    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Packets put into the ring.
    pub packets_sent: u64,
    /// Packets taken from the ring.
    pub packets_received: u64,
    /// Host packets the client refused (unknown id, malformed...).
    pub packets_rejected: u64,
    /// Signals sent to the host.
    pub signals: u64,
    /// Times the outbound ring was full.
    pub ring_full: u64,
}

/// Blocking helpers poll at most this many rounds by default.
pub const DEFAULT_MAX_POLLS: u64 = 10_000_000;

/// A storvsc channel: client + rings. `N` request slots, `P` pages per request.
pub struct StorvscDevice<M: RingMemory, S: HostSignal, const N: usize = 64, const P: usize = 65> {
    channel: Channel<M, 1>,
    signal: S,
    client: StorvscClient<N, P>,
    ext: [u8; MAX_GPA_EXTENSION],
    bus_changed: bool,
    stats: DeviceStats,
}

impl<M: RingMemory, S: HostSignal, const N: usize, const P: usize> StorvscDevice<M, S, N, P> {
    /// The device over an open channel (primary: call [`Self::init`] next).
    pub fn new(channel: Channel<M, 1>, signal: S, config: ClientConfig) -> Self {
        Self::with_client(channel, signal, StorvscClient::new(config))
    }

    /// A sub-channel device using what the primary negotiated.
    pub fn new_subchannel(
        channel: Channel<M, 1>,
        signal: S,
        config: ClientConfig,
        info: DeviceInfo,
    ) -> Self {
        Self::with_client(channel, signal, StorvscClient::new_subchannel(config, info))
    }

    fn with_client(channel: Channel<M, 1>, signal: S, client: StorvscClient<N, P>) -> Self {
        Self {
            channel,
            signal,
            client,
            ext: [0; MAX_GPA_EXTENSION],
            bus_changed: false,
            stats: DeviceStats::default(),
        }
    }

    /// The sans-IO client.
    pub fn client(&self) -> &StorvscClient<N, P> {
        &self.client
    }

    /// The sans-IO client, e.g. to submit raw commands.
    pub fn client_mut(&mut self) -> &mut StorvscClient<N, P> {
        &mut self.client
    }

    /// The channel.
    pub fn channel_mut(&mut self) -> &mut Channel<M, 1> {
        &mut self.channel
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Whether an ENUMERATE_BUS / REMOVE_DEVICE arrived since the last call (rescan then).
    pub fn take_bus_changed(&mut self) -> bool {
        core::mem::take(&mut self.bus_changed)
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

    /// Writes every queued packet the outbound ring has room for; returns how many. A full ring
    /// is not an error: the rest waits for the next `flush` (the host is asked to signal when
    /// it has made room).
    pub fn flush(&mut self) -> Result<usize, DeviceError> {
        let mut n = 0;
        let mut signal = false;
        while let Some(out) = self.client.peek_transmit() {
            let Some(ext_len) = out.encode_extension(&mut self.ext) else {
                // Cannot happen: MAX_GPA_EXTENSION covers every page list the client accepts.
                return Err(DeviceError::Submit(SubmitError::BadBuffer));
            };
            let payload = [out.payload];
            let pkt = OutgoingPacket {
                packet_type: out.packet_type(),
                flags: PacketFlags::new().with_completion_requested(true),
                transaction_id: out.transaction_id,
                extension: &self.ext[..ext_len],
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

    /// Drains the inbound ring, calling `on_event` for each event, then flushes what the
    /// client queued meanwhile (retries). Returns the number of packets read.
    pub fn poll(&mut self, mut on_event: impl FnMut(Event)) -> Result<usize, DeviceError> {
        let mut buf = [0u8; MAX_INBOUND_PACKET_SIZE + 48];
        let mut n = 0;
        loop {
            self.channel.begin_batch();
            loop {
                let packet = match self.channel.receiver().try_read_packet(&mut buf) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => {
                        // Publish what was consumed before giving up on this ring.
                        let _ = self.channel.commit_reads();
                        let _ = self.channel.end_batch();
                        return Err(ChannelError::Ring(e).into());
                    }
                };
                n += 1;
                self.stats.packets_received += 1;
                match self.client.on_packet(&packet) {
                    Ok(Some(e)) => {
                        if matches!(e, Event::BusChanged(_)) {
                            self.bus_changed = true;
                        }
                        on_event(e);
                    }
                    Ok(None) => {}
                    Err(_) => self.stats.packets_rejected += 1,
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

    /// Runs initialization to the end (blocking).
    pub fn init(&mut self, max_polls: u64) -> Result<DeviceInfo, DeviceError> {
        self.client.start();
        self.flush()?;
        let mut result = None;
        for _ in 0..max_polls {
            self.poll(|e| match e {
                Event::Ready(i) => result = Some(Ok(i)),
                Event::InitFailed(e) => result = Some(Err(DeviceError::Init(e))),
                _ => {}
            })?;
            if let Some(r) = result {
                return r;
            }
        }
        Err(DeviceError::Timeout)
    }

    /// Asks for sub-channels (blocking until the host answers); returns how many the host
    /// will offer.
    pub fn create_sub_channels(&mut self, count: u16, max_polls: u64) -> Result<u16, DeviceError> {
        self.client.request_sub_channels(count)?;
        self.flush()?;
        let mut result = None;
        for _ in 0..max_polls {
            self.poll(|e| match e {
                Event::SubChannelsCreated(n) => result = Some(Ok(n)),
                Event::SubChannelsRefused(_) => {
                    result = Some(Err(DeviceError::Submit(SubmitError::Busy)))
                }
                _ => {}
            })?;
            if let Some(r) = result {
                return r;
            }
        }
        Err(DeviceError::Timeout)
    }

    /// Waits for `tag`'s completion; other completions are passed to `others`.
    pub fn wait(
        &mut self,
        tag: Tag,
        max_polls: u64,
        mut others: impl FnMut(Event),
    ) -> Result<IoDone, DeviceError> {
        self.flush()?;
        let mut result = None;
        for _ in 0..max_polls {
            self.poll(|e| match e {
                Event::Completed { tag: t, result: r } if t == tag => result = Some(r),
                other => others(other),
            })?;
            if let Some(r) = result {
                return r.map_err(DeviceError::Io);
            }
        }
        Err(DeviceError::Timeout)
    }

    /// Runs one command to completion (blocking).
    pub fn execute(
        &mut self,
        lun: Lun,
        cdb: &Cdb,
        data: Option<&DmaBuf<'_, '_>>,
        max_polls: u64,
    ) -> Result<IoDone, DeviceError> {
        let tag = match data {
            Some(d) => d.with_pfns::<P, _>(|b| Ok(self.client.submit(lun, cdb, Some(b))?))?,
            None => self.client.submit(lun, cdb, None)?,
        };
        self.wait(tag, max_polls, |_| {})
    }

    /// REPORT LUNS to `target` (its path and target id); writes the LUN numbers into `out` and
    /// returns how many the host listed (maybe more than `out` holds). `scratch` bounds the
    /// allocation length.
    pub fn report_luns(
        &mut self,
        target: Lun,
        scratch: &DmaBuf<'_, '_>,
        out: &mut [u16],
        max_polls: u64,
    ) -> Result<usize, DeviceError> {
        let alloc = scratch.len().min(u32::MAX as usize) as u32;
        let cdb = Cdb::ReportLuns {
            select_report: 0,
            allocation_length: alloc,
        };
        let done = self.execute(target, &cdb, Some(scratch), max_polls)?;
        let got = done.transferred as usize;
        let mut h = [0u8; 8];
        if got < 8 || !scratch.read(0, &mut h) {
            return Err(DeviceError::Io(IoError::ShortTransfer {
                requested: alloc,
                transferred: done.transferred,
            }));
        }
        let listed = ReportLunsHeader::read_from_bytes(&h)
            .map(|h| h.lun_list_length.get() as usize / 8)
            .unwrap_or(0);
        let present = ((got - 8) / 8).min(listed);
        let mut k = 0;
        for i in 0..present {
            let mut e = [0u8; 8];
            scratch.read(8 + 8 * i, &mut e);
            if let (Some(l), Some(slot)) = (decode_lun(e), out.get_mut(k)) {
                *slot = l;
                k += 1;
            }
        }
        Ok(listed)
    }

    fn read_in(
        &mut self,
        lun: Lun,
        cdb: &Cdb,
        scratch: &DmaBuf<'_, '_>,
        len: usize,
        out: &mut [u8],
        max_polls: u64,
    ) -> Result<usize, DeviceError> {
        let buf = scratch.prefix(len).ok_or(DeviceError::BufferTooSmall)?;
        let done = self.execute(lun, cdb, Some(&buf), max_polls)?;
        let n = (done.transferred as usize).min(out.len());
        buf.read(0, &mut out[..n]);
        Ok(n)
    }

    /// INQUIRY for a VPD page into `out`; returns the bytes received.
    pub fn inquiry_vpd(
        &mut self,
        lun: Lun,
        page: u8,
        scratch: &DmaBuf<'_, '_>,
        out: &mut [u8],
        max_polls: u64,
    ) -> Result<usize, DeviceError> {
        let len = out.len().min(u16::MAX as usize);
        let cdb = Cdb::Inquiry {
            evpd: true,
            page_code: page,
            allocation_length: len as u16,
        };
        self.read_in(lun, &cdb, scratch, len, out, max_polls)
    }

    /// Probes `lun` as a disk: TEST UNIT READY (starting the unit if it is not ready),
    /// standard INQUIRY, READ CAPACITY (16, falling back to 10), the supported VPD pages
    /// (block limits, logical block provisioning) and MODE SENSE (write protect, write cache).
    /// `scratch` needs at least 255 bytes.
    pub fn probe_disk(
        &mut self,
        lun: Lun,
        scratch: &DmaBuf<'_, '_>,
        max_polls: u64,
    ) -> Result<Disk, DeviceError> {
        if scratch.len() < 255 {
            return Err(DeviceError::BufferTooSmall);
        }
        // UNIT ATTENTION is retried by the client; NOT READY asks for START STOP UNIT.
        match self.execute(lun, &Cdb::TestUnitReady, None, max_polls) {
            Ok(_) => {}
            Err(DeviceError::Io(IoError::NotReady(_))) => {
                let start = Cdb::StartStopUnit(StartStop {
                    immed: false,
                    power_condition: 0,
                    modifier: 0,
                    no_flush: false,
                    loej: false,
                    start: true,
                });
                self.execute(lun, &start, None, max_polls)?;
                self.execute(lun, &Cdb::TestUnitReady, None, max_polls)?;
            }
            Err(e) => return Err(e),
        }
        let mut inq = [0u8; 36];
        let cdb = Cdb::Inquiry {
            evpd: false,
            page_code: 0,
            allocation_length: 36,
        };
        let n = self.read_in(lun, &cdb, scratch, 36, &mut inq, max_polls)?;
        if n < 5 {
            return Err(DeviceError::NotADisk);
        }
        let std_inq =
            StandardInquiryData::read_from_bytes(&inq).map_err(|_| DeviceError::NotADisk)?;
        if std_inq.peripheral == peripheral::NO_LUN || std_inq.peripheral >> 5 != 0 {
            return Err(DeviceError::NoLun);
        }
        let device_type = std_inq.peripheral & 0x1F;

        // Capacity: READ CAPACITY(16) first, (10) if the unit refuses it.
        let mut rc = [0u8; 32];
        let rc16 = Cdb::ReadCapacity16 {
            allocation_length: 32,
        };
        let (block_size, blocks, lbpme) = match self
            .read_in(lun, &rc16, scratch, 32, &mut rc, max_polls)
        {
            Ok(n) if n >= 12 => {
                let d =
                    ReadCapacity16Data::read_from_bytes(&rc).map_err(|_| DeviceError::NotADisk)?;
                (
                    d.block_length.get(),
                    d.last_lba
                        .get()
                        .checked_add(1)
                        .ok_or(DeviceError::NotADisk)?,
                    n >= 16 && d.provisioning.get() & ReadCapacity16Data::LBPME != 0,
                )
            }
            Ok(_) => return Err(DeviceError::NotADisk),
            Err(DeviceError::Io(IoError::IllegalRequest(_))) => {
                let n = self.read_in(lun, &Cdb::ReadCapacity10, scratch, 8, &mut rc, max_polls)?;
                if n < 8 {
                    return Err(DeviceError::NotADisk);
                }
                let d = ReadCapacity10Data::read_from_bytes(&rc[..8])
                    .map_err(|_| DeviceError::NotADisk)?;
                (d.block_length.get(), u64::from(d.last_lba.get()) + 1, false)
            }
            Err(e) => return Err(e),
        };
        if block_size < 512 || !block_size.is_power_of_two() || block_size > 1 << 16 {
            return Err(DeviceError::NotADisk);
        }
        let mut disk = Disk {
            lun,
            block_size,
            blocks,
            read_only: false,
            write_cache: false,
            discard: lbpme,
            max_unmap_blocks: 0,
            device_type,
        };

        // VPD pages: which exist, then block limits and provisioning.
        let mut pages = [0u8; 64];
        if let Ok(n) = self.inquiry_vpd(lun, vpd::SUPPORTED_PAGES, scratch, &mut pages, max_polls) {
            let listed = if n >= 4 {
                let h = VpdPageHeader::read_from_bytes(&pages[..4])
                    .map_err(|_| DeviceError::NotADisk)?;
                &pages[4..n.min(4 + h.page_length.get() as usize)]
            } else {
                &[][..]
            };
            let (has_b0, has_b2) = (
                listed.contains(&vpd::BLOCK_LIMITS),
                listed.contains(&vpd::LOGICAL_BLOCK_PROVISIONING),
            );
            if has_b2 {
                let mut b = [0u8; 8];
                if let Ok(8) = self.inquiry_vpd(
                    lun,
                    vpd::LOGICAL_BLOCK_PROVISIONING,
                    scratch,
                    &mut b,
                    max_polls,
                ) {
                    let p = LogicalBlockProvisioningVpd::read_from_bytes(&b)
                        .map_err(|_| DeviceError::NotADisk)?;
                    disk.discard = p.flags & LogicalBlockProvisioningVpd::LBPU != 0;
                }
            }
            if has_b0 {
                let mut b = [0u8; 64];
                if let Ok(64) = self.inquiry_vpd(lun, vpd::BLOCK_LIMITS, scratch, &mut b, max_polls)
                {
                    let l =
                        BlockLimitsVpd::read_from_bytes(&b).map_err(|_| DeviceError::NotADisk)?;
                    disk.max_unmap_blocks = l.max_unmap_lba_count.get();
                }
            }
        }

        // MODE SENSE(6): all pages for WP, then the caching page for WCE. Failures leave the
        // defaults (writable, no cache), as Linux does.
        let mut m = [0u8; 4 + 20];
        let ms = |page, len| {
            Cdb::ModeSense(ModeSense {
                size: CdbSize::Six,
                dbd: true,
                llbaa: false,
                page_control: 0,
                page_code: page,
                subpage: 0,
                allocation_length: len,
            })
        };
        if let Ok(n) = self.read_in(lun, &ms(mode_page::ALL, 4), scratch, 4, &mut m, max_polls) {
            disk.read_only = n >= 3 && m[2] & MODE_WP != 0;
        }
        if let Ok(n) = self.read_in(
            lun,
            &ms(mode_page::CACHING, 24),
            scratch,
            24,
            &mut m,
            max_polls,
        ) {
            let bd = m[3] as usize;
            let at = 4 + bd;
            disk.write_cache =
                n > at + 2 && m[at] & 0x3F == mode_page::CACHING && m[at + 2] & CACHING_WCE != 0;
        }
        Ok(disk)
    }

    /// Submits a READ of `blocks` blocks at `lba` into `buf` (asynchronous; `poll` reports it).
    pub fn submit_read(
        &mut self,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
    ) -> Result<Tag, DeviceError> {
        Self::check_range(disk, lba, blocks)?;
        let tag = buf.with_pfns::<P, _>(|b| {
            Ok(self
                .client
                .submit_read(disk.lun, lba, blocks, disk.block_size, b)?)
        })?;
        self.flush()?;
        Ok(tag)
    }

    /// Submits a WRITE (asynchronous).
    pub fn submit_write(
        &mut self,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
    ) -> Result<Tag, DeviceError> {
        Self::check_range(disk, lba, blocks)?;
        let tag = buf.with_pfns::<P, _>(|b| {
            Ok(self
                .client
                .submit_write(disk.lun, lba, blocks, disk.block_size, false, b)?)
        })?;
        self.flush()?;
        Ok(tag)
    }

    fn check_range(disk: &Disk, lba: u64, blocks: u32) -> Result<(), DeviceError> {
        if lba
            .checked_add(u64::from(blocks))
            .is_none_or(|end| end > disk.blocks)
        {
            return Err(DeviceError::Submit(SubmitError::LengthMismatch));
        }
        Ok(())
    }

    /// Reads `blocks` blocks at `lba` into `buf` (blocking).
    pub fn read(
        &mut self,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
        max_polls: u64,
    ) -> Result<(), DeviceError> {
        let tag = self.submit_read(disk, lba, blocks, buf)?;
        self.wait(tag, max_polls, |_| {}).map(|_| ())
    }

    /// Writes `blocks` blocks at `lba` from `buf` (blocking).
    pub fn write(
        &mut self,
        disk: &Disk,
        lba: u64,
        blocks: u32,
        buf: &DmaBuf<'_, '_>,
        max_polls: u64,
    ) -> Result<(), DeviceError> {
        let tag = self.submit_write(disk, lba, blocks, buf)?;
        self.wait(tag, max_polls, |_| {}).map(|_| ())
    }

    /// SYNCHRONIZE CACHE (blocking); a no-op success when the disk has no write cache.
    pub fn flush_cache(&mut self, disk: &Disk, max_polls: u64) -> Result<(), DeviceError> {
        if !disk.write_cache {
            return Ok(());
        }
        let tag = self.client.submit_flush(disk.lun)?;
        self.wait(tag, max_polls, |_| {}).map(|_| ())
    }

    /// UNMAP `blocks` blocks at `lba` (blocking), split by the disk's max unmap count; the
    /// parameter list is built in `scratch` (≥ 24 bytes).
    pub fn discard(
        &mut self,
        disk: &Disk,
        lba: u64,
        blocks: u64,
        scratch: &DmaBuf<'_, '_>,
        max_polls: u64,
    ) -> Result<(), DeviceError> {
        if !disk.discard {
            return Err(DeviceError::Io(IoError::IllegalRequest(
                crate::sense::Sense::new(
                    SenseKey::ILLEGAL_REQUEST,
                    crate::sense::AdditionalSense::INVALID_COMMAND_OPERATION_CODE,
                ),
            )));
        }
        if lba.checked_add(blocks).is_none_or(|end| end > disk.blocks) {
            return Err(DeviceError::Submit(SubmitError::LengthMismatch));
        }
        let step = match disk.max_unmap_blocks {
            0 => u64::from(u32::MAX),
            m => u64::from(m),
        };
        let list = scratch.prefix(24).ok_or(DeviceError::BufferTooSmall)?;
        let (mut at, end) = (lba, lba + blocks);
        while at < end {
            let n = (end - at).min(step) as u32;
            let mut bytes = [0u8; 24];
            let len = UnmapList::build(&mut bytes, &[(at, n)])
                .map_err(|_| DeviceError::BufferTooSmall)?;
            list.write(0, &bytes[..len]);
            let tag = list.with_pfns::<P, _>(|b| Ok(self.client.submit_unmap(disk.lun, b)?))?;
            self.wait(tag, max_polls, |_| {})?;
            at += u64::from(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
