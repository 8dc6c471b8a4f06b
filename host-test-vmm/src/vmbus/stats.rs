//! Counters of the VMBus server, for the run report.

use serde::Serialize;
use std::collections::BTreeMap;

/// Per-channel counters (keyed by relid in [`VmbusStats::channels`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// The device's name (its VSP's `name()`).
    pub device: String,
    /// Ring packets guest -> host.
    pub packets_in: u64,
    /// Ring packets host -> guest.
    pub packets_out: u64,
    /// Packet bytes (descriptor + payload, excluding trailer) guest -> host.
    pub bytes_in: u64,
    /// Packet bytes host -> guest.
    pub bytes_out: u64,
    /// HvSignalEvent calls of the guest on this channel's connection.
    pub signals_from_guest: u64,
    /// Event flags the host set for this channel.
    pub signals_to_guest: u64,
    /// Host writes that needed no signal (guest masked, or ring not empty).
    pub signals_suppressed: u64,
    /// Times the host->guest ring was full and the host waited.
    pub ring_full_waits: u64,
    /// Successful opens.
    pub opens: u64,
    /// Closes (guest CloseChannel, unload, rescind of an open channel).
    pub closes: u64,
    /// Malformed packets or rings seen on this channel.
    pub ring_errors: u64,
}

/// Counters of the whole server. Serializes to JSON for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VmbusStats {
    /// The last negotiated protocol version ("5.3"), kept after an unload.
    pub version: Option<String>,
    /// Whether the guest is connected now.
    pub connected: bool,
    /// Accepted InitiateContacts.
    pub connections: u64,
    /// Control messages guest -> host, by type name.
    pub messages_in: BTreeMap<String, u64>,
    /// Control messages host -> guest, by type name.
    pub messages_out: BTreeMap<String, u64>,
    /// Guest messages dropped as malformed or out of place.
    pub messages_rejected: u64,
    /// Host messages that had to wait for room in the SynIC queue.
    pub messages_backlogged: u64,
    /// Channel notifications host -> guest (event flags set).
    pub notifications_to_guest: u64,
    /// Channel notifications guest -> host (HvSignalEvent on a channel).
    pub notifications_from_guest: u64,
    /// GPADLs created.
    pub gpadls_created: u64,
    /// GPADLs refused (GpadlCreated with a failure status).
    pub gpadls_refused: u64,
    /// GPADLs torn down.
    pub gpadls_torn_down: u64,
    /// Offers sent (including hot-adds and re-offers after unload).
    pub offers_sent: u64,
    /// Rescinds sent.
    pub rescinds_sent: u64,
    /// Per channel, keyed by relid. A relid reused after a rescind keeps
    /// accumulating under the new device's name.
    pub channels: BTreeMap<u32, ChannelStats>,
}

pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}
