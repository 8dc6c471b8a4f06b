//! A channel's runtime side: the device, its rings, and the handle a device
//! sends through.

use super::gpadl::{Gpadl, GpadlLease};
use super::ring::HostRings;
use super::server::{lock, Inner, Work};
use super::vsp::{SendError, Vsp};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmbus_guest::packet::MAX_PACKET_SIZE;
use vmbus_guest::ring::{OutgoingPacket, RingError, RingReceiver, RingSender};

use super::ring::GuestRingMemory;

/// The receive side of an open channel.
#[derive(Debug)]
pub(crate) struct InRing {
    pub ring: RingReceiver<GuestRingMemory>,
    pub generation: u64,
    /// Set after a ring error: the channel is not processed again until it
    /// is reopened.
    pub broken: bool,
    /// Set while a device waits for room in the outgoing ring.
    pub blocked: bool,
    /// The packet the device could not answer yet (already taken from the
    /// ring; handed to the device again before anything newer).
    pub held: Option<Vec<u8>>,
    /// Packet buffer (a packet is at most the ring's data size).
    pub buf: Vec<u8>,
}

/// The send side of an open channel.
#[derive(Debug)]
pub(crate) struct OutRing {
    pub ring: RingSender<GuestRingMemory>,
    pub generation: u64,
    pub broken: bool,
}

/// Everything about a channel the data path needs. Lock order: `vsp`, then
/// `incoming`, then `outgoing`; the server's state lock, if held, comes
/// before all three.
pub(crate) struct ChannelRt {
    pub relid: u32,
    pub name: String,
    pub vsp: Mutex<Box<dyn Vsp>>,
    pub incoming: Mutex<Option<InRing>>,
    pub outgoing: Mutex<Option<OutRing>>,
    /// Bumped on every open and close; a handle from an older open is dead.
    pub generation: AtomicU64,
    pub target_vp: AtomicU32,
    pub sint: AtomicU32,
    /// OpenResult was posted: signals may go to the guest.
    pub announced: AtomicBool,
    /// A signal was wanted before OpenResult went out.
    pub signal_deferred: AtomicBool,
}

impl ChannelRt {
    pub fn new(relid: u32, vsp: Box<dyn Vsp>) -> Self {
        Self {
            relid,
            name: vsp.name().to_owned(),
            vsp: Mutex::new(vsp),
            incoming: Mutex::new(None),
            outgoing: Mutex::new(None),
            generation: AtomicU64::new(0),
            target_vp: AtomicU32::new(0),
            sint: AtomicU32::new(u32::from(vmbus_guest::version::VMBUS_SINT)),
            announced: AtomicBool::new(false),
            signal_deferred: AtomicBool::new(false),
        }
    }

    /// Map the rings (OpenChannel); returns the new generation.
    pub fn install(&self, rings: HostRings, target_vp: u32, sint: u8) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.target_vp.store(target_vp, Ordering::SeqCst);
        self.sint.store(u32::from(sint), Ordering::SeqCst);
        self.announced.store(false, Ordering::SeqCst);
        self.signal_deferred.store(false, Ordering::SeqCst);
        *lock(&self.incoming) = Some(InRing {
            ring: rings.incoming,
            generation,
            broken: false,
            blocked: false,
            held: None,
            buf: Vec::new(),
        });
        *lock(&self.outgoing) = Some(OutRing {
            ring: rings.outgoing,
            generation,
            broken: false,
        });
        generation
    }

    /// Unmap the rings (close); handles of the old open stop working.
    pub fn uninstall(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.announced.store(false, Ordering::SeqCst);
        *lock(&self.incoming) = None;
        *lock(&self.outgoing) = None;
    }
}

/// A device's handle on its channel: send packets, reach guest memory
/// through GPADLs, ask for rescind / hot-add. Cheap to clone, usable from
/// any thread; it stops working (`SendError::Closed`) when the channel
/// closes.
#[derive(Clone)]
pub struct ChannelHandle {
    pub(crate) server: Weak<Inner>,
    pub(crate) rt: Arc<ChannelRt>,
    pub(crate) generation: u64,
}

impl std::fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHandle")
            .field("relid", &self.rt.relid)
            .field("generation", &self.generation)
            .finish()
    }
}

fn send_error(e: RingError) -> SendError {
    match e {
        RingError::NotEnoughSpace { needed, .. } => SendError::Full { needed },
        RingError::PacketTooLarge { len } => SendError::Invalid(len),
        RingError::BadExtension { len } => SendError::Invalid(len),
        other => SendError::Corrupt(other),
    }
}

impl ChannelHandle {
    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.rt.relid
    }

    /// Whether this handle's open is still the current one.
    pub fn is_open(&self) -> bool {
        self.rt.generation.load(Ordering::SeqCst) == self.generation
            && lock(&self.rt.outgoing).is_some()
    }

    /// Send one packet to the guest.
    pub fn send(&self, packet: &OutgoingPacket<'_>) -> Result<(), SendError> {
        self.send_all(std::slice::from_ref(packet))
    }

    /// Send packets to the guest, all or none: if they do not all fit now,
    /// nothing is written and `SendError::Full` says how much room the batch
    /// needs. Signals the guest when the ring rules say so (fact sheet §6.5).
    pub fn send_all(&self, packets: &[OutgoingPacket<'_>]) -> Result<(), SendError> {
        let server = self.server.upgrade().ok_or(SendError::Closed)?;
        let signal = {
            let mut out = lock(&self.rt.outgoing);
            let o = out
                .as_mut()
                .filter(|o| o.generation == self.generation)
                .ok_or(SendError::Closed)?;
            if o.broken {
                return Err(SendError::Corrupt(RingError::BadSize { len: 0 }));
            }
            let size = o.ring.data_size() as usize;
            let mut needed = 0usize;
            for p in packets {
                // Checked here so that only a guest moving indices can make
                // staging fail below.
                if p.ring_bytes() >= size
                    || p.padded_len() > MAX_PACKET_SIZE
                    || !p.extension.len().is_multiple_of(8)
                {
                    return Err(SendError::Invalid(p.ring_bytes()));
                }
                needed += p.ring_bytes();
            }
            let free = o.ring.free().map_err(|e| {
                o.broken = true;
                send_error(e)
            })?;
            // A writer always leaves a gap (fact sheet §6.1).
            if needed >= free {
                return Err(SendError::Full { needed });
            }
            for p in packets {
                if let Err(e) = o.ring.stage(p) {
                    // Only a guest moving read_index under us gets here (space
                    // was checked): the staged part must never be published.
                    o.broken = true;
                    server.ring_error(self.rt.relid, &e);
                    return Err(send_error(e));
                }
            }
            // Counted and traced before the guest can see them.
            for p in packets {
                server.packet_sent(self.rt.relid, p);
            }
            match o.ring.commit() {
                Ok(s) => s.needed(),
                Err(e) => {
                    o.broken = true;
                    server.ring_error(self.rt.relid, &e);
                    return Err(send_error(e));
                }
            }
        };
        if signal {
            self.signal_guest(&server);
        } else {
            server.signal_suppressed(self.rt.relid);
        }
        Ok(())
    }

    fn signal_guest(&self, server: &Inner) {
        let rt = &self.rt;
        rt.signal_deferred.store(true, Ordering::SeqCst);
        if rt.announced.load(Ordering::SeqCst) && rt.signal_deferred.swap(false, Ordering::SeqCst) {
            server.signal_channel(rt);
        }
    }

    /// Free bytes in the host->guest ring right now.
    pub fn free_space(&self) -> Result<usize, SendError> {
        let out = lock(&self.rt.outgoing);
        let o = out
            .as_ref()
            .filter(|o| o.generation == self.generation)
            .ok_or(SendError::Closed)?;
        o.ring.free().map_err(send_error)
    }

    /// A copy of GPADL `handle` if it belongs to this channel (for devices
    /// that use extra GPADLs, e.g. receive buffers).
    pub fn gpadl(&self, handle: u32) -> Option<Gpadl> {
        let server = self.server.upgrade()?;
        let g = lock(&server.gpadls).get(handle).cloned()?;
        (g.relid == self.rt.relid).then_some(g)
    }

    /// [`Self::gpadl`] with its lease, which is revoked when the guest tears
    /// the GPADL down (a device keeping a buffer checks it on every access).
    pub fn gpadl_leased(&self, handle: u32) -> Option<(Gpadl, GpadlLease)> {
        let server = self.server.upgrade()?;
        let (g, l) = lock(&server.gpadls).get_leased(handle)?;
        (g.relid == self.rt.relid).then_some((g, l))
    }

    /// Read `buf.len()` bytes at byte `offset` of this channel's GPADL
    /// `handle` (e.g. a send buffer). False if there is no such GPADL or the
    /// span leaves it.
    pub fn read_gpadl(&self, handle: u32, offset: u64, buf: &mut [u8]) -> bool {
        let Some(s) = self.server.upgrade() else {
            return false;
        };
        self.gpadl(handle)
            .is_some_and(|g| g.read(&s.mem, offset, buf))
    }

    /// Write `data` at byte `offset` of this channel's GPADL `handle` (e.g.
    /// a receive buffer). False if there is no such GPADL or the span leaves
    /// it.
    pub fn write_gpadl(&self, handle: u32, offset: u64, data: &[u8]) -> bool {
        let Some(s) = self.server.upgrade() else {
            return false;
        };
        self.gpadl(handle)
            .is_some_and(|g| g.write(&s.mem, offset, data))
    }

    /// Guest RAM, for devices that follow GPA-direct ranges. Every access
    /// through it is bounds-checked by vm-memory.
    pub fn memory(&self) -> Option<GuestMemoryMmap> {
        self.server.upgrade().map(|s| s.mem.clone())
    }

    /// Read guest memory at `gpa` (fails outside guest RAM).
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.memory()
            .is_some_and(|m| m.read_slice(buf, GuestAddress(gpa)).is_ok())
    }

    /// Write guest memory at `gpa` (fails outside guest RAM).
    pub fn write_guest(&self, gpa: u64, data: &[u8]) -> bool {
        self.memory()
            .is_some_and(|m| m.write_slice(data, GuestAddress(gpa)).is_ok())
    }

    /// Ask the server to rescind this channel (done on the worker thread,
    /// after the current callback returns).
    pub fn request_rescind(&self) {
        if let Some(s) = self.server.upgrade() {
            s.push_work(Work::Rescind(self.rt.relid));
        }
    }

    /// Ask the server to offer a sub-channel of this (primary) channel,
    /// served by `vsp`, with this channel's GUIDs and the next
    /// sub_channel_index (on the worker thread).
    pub fn request_subchannel(&self, vsp: Box<dyn Vsp>) {
        if let Some(s) = self.server.upgrade() {
            s.push_work(Work::AddSubchannel(self.rt.relid, vsp));
        }
    }

    /// Ask the server to offer another device (hot-add, on the worker
    /// thread).
    pub fn request_add_device(&self, vsp: Box<dyn Vsp>) {
        if let Some(s) = self.server.upgrade() {
            s.push_work(Work::AddDevice(vsp));
        }
    }
}
