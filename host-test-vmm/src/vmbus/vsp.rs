//! The device side of a channel: what a virtual service provider (VSP)
//! implements, and what it sends.

use super::channel::ChannelHandle;
use vmbus_guest::guid::Guid;
use vmbus_guest::packet::PacketView;
use vmbus_guest::ring::RingError;

/// Offer fields a device may set besides its GUIDs (fact sheet §5.3
/// OfferChannel). The server fills in relid, connection id, monitor fields
/// (never allocated) and the dedicated-interrupt bit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferParams {
    /// `chn_flags` (Linux only looks at 0x2000, hv_sock).
    pub chn_flags: u16,
    /// `mmio_megabytes`.
    pub mmio_megabytes: u16,
    /// The 120 `user_defined` bytes (pipe mode for named-pipe offers).
    pub user_defined: [u8; 120],
}

impl Default for OfferParams {
    fn default() -> Self {
        Self {
            chn_flags: 0,
            mmio_megabytes: 0,
            user_defined: [0; 120],
        }
    }
}

/// Why a device refused an OpenChannel (the guest gets a non-zero
/// OpenResult status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device refused the open: {0}")]
pub struct OpenRefused(pub String);

/// A virtual service provider: one offered device. Callbacks must not block
/// for long: `on_open` runs on the vCPU thread that posted OpenChannel,
/// `on_packet` on the server's worker thread, `on_close` on whichever thread
/// closes the channel (a vCPU, the worker, or a caller of
/// `VmbusServer::{rescind, reset, shutdown}`). They run under the server's
/// locks: from a callback, use the [`ChannelHandle`]'s `request_*` methods,
/// never `VmbusServer` methods (those would deadlock).
pub trait Vsp: Send {
    /// A short name for logs, trace and stats ("echo", "storvsp", ...).
    fn name(&self) -> &str;
    /// The device class (interface type) GUID.
    fn class_id(&self) -> Guid;
    /// The device instance GUID.
    fn instance_id(&self) -> Guid;
    /// Extra offer fields.
    fn offer_params(&self) -> OfferParams {
        OfferParams::default()
    }
    /// The guest opened the channel; rings are mapped and `ch` can send.
    /// `user_data` is OpenChannel's 120-byte userdata.
    fn on_open(&mut self, ch: &ChannelHandle, user_data: &[u8]) -> Result<(), OpenRefused> {
        let _ = (ch, user_data);
        Ok(())
    }
    /// One packet from the guest (validated descriptor; payload untrusted).
    /// Return `Err(SendError::Full { .. })` when a reply does not fit the
    /// host->guest ring: the packet is not consumed, and is handed over
    /// again once the guest has made room. Any other error is logged and the
    /// packet is consumed.
    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError>;
    /// The channel was closed (guest CloseChannel, rescind, unload, reset).
    fn on_close(&mut self, ch: &ChannelHandle) {
        let _ = ch;
    }
}

/// Why a packet could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The channel is not open (or was reopened since this handle's open).
    #[error("channel is not open")]
    Closed,
    /// The host->guest ring has no room for `needed` bytes right now.
    #[error("ring full ({needed} bytes needed)")]
    Full {
        /// Bytes the write needs (all packets of the batch, trailers included).
        needed: usize,
    },
    /// The packet can never fit (bigger than the ring, or than a descriptor
    /// can describe), or the extension is not a multiple of 8.
    #[error("packet of {0} bytes cannot be sent")]
    Invalid(usize),
    /// The ring holds values the guest corrupted (the channel stops until
    /// it is reopened).
    #[error("ring is corrupt: {0}")]
    Corrupt(RingError),
}
