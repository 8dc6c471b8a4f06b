//! The control API of a running partition (the part VMMS/WMI plays on
//! Hyper-V): HTTP/1.1 + JSON on a unix socket, like Cloud Hypervisor and
//! Firecracker, and its client, `host-test-vmm ctl`.
//!
//! - [`run_with_api`]: create and run a partition with the API listening on
//!   a socket (`host-test-vmm run|demo --api-socket PATH`);
//! - [`ApiServer`]: the listener (one thread per connection, one request per
//!   connection), routing to a [`VmHandle`] (lifecycle, served by the thread
//!   that owns the partition) and to the host integration components
//!   ([`crate::ic::HostIcs`]);
//! - [`client`]: what `ctl` sends.
//!
//! Endpoints, bodies and replies: docs/ARCHITECTURE.md, "Control API".
//! Every error reply is `{"error": "<reason>"}` with a 4xx/5xx status.

pub mod client;
mod control;
pub mod http;
mod server;

#[cfg(test)]
mod tests;

pub use control::{
    drive, run_with_api, ApiRunError, VmCommand, VmHandle, VmInfo, VmOwner, VmState,
};
pub use server::{handle_request, ApiServer, ApiTargets, API_PREFIX};

use crate::ic::IcError;

/// An error reply: HTTP status and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The reason, sent as `{"error": message}`.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    /// 400: the request is malformed or names something invalid.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(400, m)
    }
    /// 404: no such endpoint.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(404, m)
    }
    /// 405: the endpoint exists, the method does not.
    pub fn method(m: impl Into<String>) -> Self {
        Self::new(405, m)
    }
    /// 409: not possible in the partition's current state.
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(409, m)
    }
    /// 500: the VMM failed.
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(500, m)
    }
    /// 501: this VMM does not offer the feature.
    pub fn not_supported(m: impl Into<String>) -> Self {
        Self::new(501, m)
    }
    /// 502: the guest answered with a failure or a malformed reply.
    pub fn guest(m: impl Into<String>) -> Self {
        Self::new(502, m)
    }
    /// 503: the guest has not opened the service the request needs.
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(503, m)
    }
    /// 504: the guest (or the partition) did not answer in time.
    pub fn timeout(m: impl Into<String>) -> Self {
        Self::new(504, m)
    }
}

impl From<IcError> for ApiError {
    fn from(e: IcError) -> Self {
        let m = e.to_string();
        match e {
            IcError::NotOpen(_) | IcError::NotNegotiated(_) | IcError::NegotiationFailed(..) => {
                Self::unavailable(m)
            }
            IcError::Closed(_) => Self::unavailable(m),
            IcError::Timeout(_) => Self::timeout(m),
            IcError::GuestStatus { .. } | IcError::BadReply { .. } => Self::guest(m),
            IcError::Invalid(_) => Self::bad_request(m),
            IcError::Send { .. } => Self::internal(m),
        }
    }
}
