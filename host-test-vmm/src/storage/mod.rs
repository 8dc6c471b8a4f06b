//! The host storage VSP (storvsp): a synthetic SCSI controller on VMBus with
//! disks from raw image files (fact sheet §8).
//!
//! - [`StorageController`]: the disks (LUNs 0..=254 of path 0, target 0),
//!   the I/O pool and the VSTOR protocol state; `controller.vsp()` is the
//!   device to offer (`VmbusServer::add_device`). Hot add/remove at run time
//!   with [`StorageController::add_disk`] / [`StorageController::remove_disk`]
//!   (the guest is sent ENUMERATE_BUS and rescans).
//! - Protocol: BEGIN_INITIALIZATION, QUERY_PROTOCOL_VERSION (6.2, 6.0, 5.1,
//!   4.2, 2.0 accepted; others get STATUS_REVISION_MISMATCH),
//!   QUERY_PROPERTIES ([`MAX_TRANSFER_BYTES`], up to 4 sub-channels from
//!   5.1), END_INITIALIZATION, CREATE_SUB_CHANNELS, EXECUTE_SRB (in-band or
//!   GPA-direct data), RESET_* (answered); anything else
//!   STATUS_INVALID_PARAMETER, out-of-order requests
//!   STATUS_INVALID_DEVICE_STATE.
//! - [`target`]: the SCSI commands; [`backend`]: where blocks live (file,
//!   memory, fault-injecting); [`buffer`]: GPA-direct page lists checked
//!   against guest RAM; [`pool`]: the I/O threads; [`trace`]: VSTOR/CDB
//!   decoding for `--trace`.

pub mod backend;
pub mod buffer;
mod controller;
pub mod demo;
pub mod pool;
pub mod spec;
pub mod target;
pub mod trace;

#[cfg(test)]
mod tests;

pub use backend::{DiskBackend, FaultPlan, FaultyBackend, FileBackend, MemBackend};
pub use controller::{
    open_spec, storage_instance_id, ControllerConfig, StorageController, StorageStats, QUEUE_DEPTH,
    SCSI_CLASS_ID, STORAGE_INSTANCE_BASE, SUPPORTED_VERSIONS,
};
pub use spec::DiskSpec;

use std::path::PathBuf;

/// Largest data buffer of one request (QUERY_PROPERTIES max_transfer_bytes;
/// openvmm uses the same 256 KiB, fact sheet §8.2).
pub const MAX_TRANSFER_BYTES: u32 = 0x40000;

/// Errors of the controller's host-side API.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An image could not be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The disk is smaller than one block.
    #[error("disk {0} is smaller than one 512-byte block")]
    TooSmall(String),
    /// LUN above 254.
    #[error("LUN {0} is out of range (0..=254)")]
    BadLun(u8),
    /// Another disk has this LUN.
    #[error("LUN {0} is already in use")]
    LunInUse(u8),
    /// No disk has this LUN.
    #[error("no disk at LUN {0}")]
    NoSuchLun(u8),
    /// Bad `--disk` specs.
    #[error("{0}")]
    Spec(String),
    /// A thread could not be started.
    #[error("cannot start a storage thread: {0}")]
    Thread(#[source] std::io::Error),
}
