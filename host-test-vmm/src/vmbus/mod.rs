//! The host VMBus server (fact sheet §4.3-4.4, §5, §6, §12.5-6).
//!
//! [`VmbusServer`] plays the Hyper-V root's side of VMBus for one partition,
//! on top of [`crate::hv::Hypervisor`]:
//! - listens for control messages on message connections 1 and 4 and
//!   answers InitiateContact for versions 2.4..=5.3 (others get
//!   VersionResponse with `version_supported = 0`; 5.x guests are told
//!   msg_conn_id 4);
//! - offers the devices registered with [`VmbusServer::add_device`] (relids
//!   1..2047, `monitor_allocated = 0`, `is_dedicated_interrupt = 1`, event
//!   connection id `0x2000 | relid`), then AllOffersDelivered; devices added
//!   later are offered at once (hot-add), [`VmbusServer::rescind`] rescinds
//!   and waits for RelIdReleased before the relid is reused, and
//!   [`VmbusServer::add_subchannel`] offers sub-channels of a device;
//! - assembles GPADLs from header and body messages, every PFN checked to be
//!   guest RAM; opens channels over the ring GPADL (`vmbus_guest`'s ring
//!   over the guest pages), closes them, tears GPADLs down, handles Unload
//!   and ModifyChannel;
//! - drains guest->host rings on a worker thread woken by the channel's
//!   HvSignalEvent, hands packets to the device ([`Vsp`]), and signals the
//!   guest through the SIEF page of the channel's target VP following the
//!   ring rules (fact sheet §6.5);
//! - optionally writes a JSON-lines [`TraceWriter`] of every control
//!   message and packet.
//!
//! It is a security boundary: everything the guest sends is validated; a
//! malformed message is logged and dropped or answered with the protocol's
//! failure status; nothing reaches outside guest RAM.
//!
//! The [`echo`] module holds the test device ([`echo::EchoVsp`]).

mod channel;
pub mod echo;
mod gpadl;
mod ring;
mod server;
mod stats;
pub mod trace;
mod vsp;

#[cfg(test)]
mod tests;

pub use channel::ChannelHandle;
pub use gpadl::{Gpadl, GpadlError, GpadlLease, GpadlRange, MAX_GPADLS};
pub use ring::GuestRingMemory;
pub use server::{
    event_connection_id, ChannelInfo, EVENT_CONNECTION_BASE, MSG_CONN_ID, STATUS_FAILURE,
    VMBUS_MESSAGE_TYPE,
};
pub use stats::{ChannelStats, VmbusStats};
pub use trace::TraceWriter;
pub use vmbus_guest::ring::OutgoingPacket;
pub use vsp::{OfferParams, OpenRefused, SendError, Vsp};

use crate::hv::{HvStatus, Hypervisor};
use server::{lock, Inner};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmbus_guest::version::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbus_guest::Version;

/// Errors of the server's host-side API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmbusError {
    /// All relids 1..2047 are in use.
    #[error("no free channel id")]
    TooManyChannels,
    /// A device with the same class and instance GUIDs is already offered.
    #[error("a device with instance {0} is already offered")]
    DuplicateDevice(String),
    /// No channel has this relid (or it is not a primary channel).
    #[error("no channel {0}")]
    NoSuchChannel(u32),
    /// The channel is not offered to a connected guest right now.
    #[error("channel {0} is not offered")]
    NotOffered(u32),
    /// The worker thread could not be started.
    #[error("cannot start the VMBus worker thread")]
    Thread,
}

/// Server options.
#[derive(Debug, Clone, Default)]
pub struct VmbusOptions {
    /// Where to write the JSON-lines trace, if anywhere.
    pub trace: Option<Arc<TraceWriter>>,
}

/// The VMBus server of one partition. Shared as `Arc<VmbusServer>`.
pub struct VmbusServer {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for VmbusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmbusServer").finish_non_exhaustive()
    }
}

impl VmbusServer {
    /// Create the server: registers message connections 1 and 4 with `hv`
    /// (replacing earlier registrations) and starts the worker thread.
    pub fn new(hv: Arc<Hypervisor>, opts: VmbusOptions) -> Result<Arc<Self>, VmbusError> {
        let inner = Inner::new(Arc::clone(&hv), opts.trace);
        for conn in [MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4] {
            let weak = Arc::downgrade(&inner);
            hv.register_message_port(
                conn,
                Box::new(move |m| match weak.upgrade() {
                    Some(s) => s.handle_message(m),
                    None => HvStatus::INVALID_CONNECTION_ID,
                }),
            );
        }
        let w = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("vmbus-worker".into())
            .spawn(move || w.worker())
            .map_err(|_| VmbusError::Thread)?;
        Ok(Arc::new(Self {
            inner,
            worker: Mutex::new(Some(handle)),
        }))
    }

    /// Register a device; it is offered at once if the guest has already
    /// asked for offers. Returns its relid.
    pub fn add_device(&self, vsp: Box<dyn Vsp>) -> Result<u32, VmbusError> {
        self.inner.add_device(vsp)
    }

    /// Offer a sub-channel of primary channel `primary` served by `vsp`
    /// (same class and instance GUIDs, next sub_channel_index, its own relid,
    /// rings and event connection). Sub-channels belong to the current
    /// connection: they are dropped on unload/reset and rescinded with their
    /// primary.
    pub fn add_subchannel(&self, primary: u32, vsp: Box<dyn Vsp>) -> Result<u32, VmbusError> {
        self.inner.add_subchannel(primary, vsp)
    }

    /// Rescind channel `relid` (and a primary's sub-channels): closes it on
    /// the host side and sends RescindChannelOffer; the relid is free again
    /// after the guest's RelIdReleased. A channel never offered is simply
    /// removed.
    pub fn rescind(&self, relid: u32) -> Result<(), VmbusError> {
        self.inner.rescind(relid)
    }

    /// The channels and their state.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.inner.channel_infos()
    }

    /// The negotiated protocol version, while connected.
    pub fn version(&self) -> Option<Version> {
        lock(&self.inner.state).conn.as_ref().map(|c| c.version)
    }

    /// The VP and SINT control messages go to, while connected.
    pub fn message_target(&self) -> Option<(u32, u8)> {
        lock(&self.inner.state)
            .conn
            .as_ref()
            .map(|c| (c.vp, c.sint))
    }

    /// The monitor page GPAs the guest gave in InitiateContact (accepted and
    /// recorded, never used).
    pub fn monitor_pages(&self) -> Option<[u64; 2]> {
        lock(&self.inner.state)
            .conn
            .as_ref()
            .map(|c| c.monitor_pages)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> VmbusStats {
        lock(&self.inner.stats).clone()
    }

    /// Back to "not connected" (partition reset): channels closed, GPADLs
    /// and rescinded channels dropped, devices kept for the next connection.
    /// Sends nothing to the guest.
    pub fn reset(&self) {
        let mut st = lock(&self.inner.state);
        self.inner.disconnect(&mut st);
    }

    /// Stop the worker thread and close every channel (devices get
    /// `on_close`); guest messages are refused afterwards. Flushes the trace.
    /// Idempotent; also done on drop.
    pub fn shutdown(&self) {
        if !self.inner.shut_down.swap(true, Ordering::SeqCst) {
            self.inner.stop_worker();
            let h = lock(&self.worker).take();
            if let Some(h) = h {
                if h.join().is_err() {
                    tracing::error!("VMBus worker thread panicked");
                }
            }
            let mut st = lock(&self.inner.state);
            self.inner.disconnect(&mut st);
        }
        if let Some(t) = &self.inner.trace {
            t.flush();
        }
    }
}

impl Drop for VmbusServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
