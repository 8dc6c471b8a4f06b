//! Host integration components (fact sheet §7): heartbeat, shutdown, time
//! sync, KVP, VSS and file copy from the root's side, as VSPs on the VMBus
//! server, offered with the standard class GUIDs so Linux's `hv_utils`
//! binds them as well as hvkit's `ic-services` guest.
//!
//! - [`HostIcs::new`] makes the six services; [`HostIcs::register`] offers
//!   them on a [`VmbusServer`]. Each starts with version negotiation when
//!   the guest opens it (the host offers `ic_services`' version lists and
//!   checks the guest's choice).
//! - A background thread sends a heartbeat request every
//!   [`IcConfig::heartbeat_interval`] (checking the guest's sequence rule:
//!   answer = request + 1), a time sync (SYNC) once a time-sync channel is
//!   negotiated and a SAMPLE every [`IcConfig::timesync_interval`].
//! - Requests on demand (the control API uses these): [`HostIcs::shutdown`],
//!   [`HostIcs::time_sync`], [`HostIcs::kvp_get`] / `kvp_set` / `kvp_delete`
//!   / `kvp_enumerate`, [`HostIcs::vss`], [`HostIcs::copy_file`]. Each waits
//!   for the guest's answer with a timeout; one request is outstanding per
//!   channel.
//! - IC messages appear decoded in the VMBus trace (`"kind": "ic"`).
//!
//! Wire formats are `ic_services`' (one definition of every structure).

mod channel;
pub mod exercise;
mod heartbeat;
mod services;
pub mod trace;

#[cfg(test)]
mod tests;

pub use channel::{
    IcChannelStatus, IcCounters, IcVsp, LoopbackGuest, CHN_FLAG_NAMED_PIPE, PIPE_MODE_MESSAGE,
};
pub use exercise::{ExerciseReport, StepResult};
pub use heartbeat::{HeartbeatState, HeartbeatStatus};
pub use ic_services::kvp::KvpPool;
pub use ic_services::shutdown::ShutdownKind;
pub use ic_services::vss::VssOperation;
pub use services::{
    kvp_pool_name, parse_kvp_pool, parse_vss_operation, FileCopy, FileCopyReport, HostKvpValue,
    KvpEntry, ShutdownRequest, TimeSyncMode, TimeSyncReport, VssReport, FCOPY_CHUNK,
    MAX_KVP_ENTRIES,
};

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use channel::IcCore;
use ic_services::negotiate::ServiceVersions;
use serde::Serialize;
use vmbus_guest::guid::{self, Guid};

use crate::vmbus::{TraceWriter, VmbusError, VmbusServer};

/// The six integration services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// Heartbeat (guest alive?).
    Heartbeat,
    /// Shutdown / reboot requests.
    Shutdown,
    /// Host time pushed to the guest.
    Timesync,
    /// Key-value pair exchange.
    Kvp,
    /// Backup (freeze/thaw).
    Vss,
    /// Guest file copy.
    Fcopy,
}

/// Instance GUID of the heartbeat IC (hvkit's own; the class GUID is what
/// guests bind to).
pub const HEARTBEAT_INSTANCE: Guid = Guid::from_str_const("83f4c5cf-7e0a-4d06-894a-17875d0ba9d2");
/// Instance GUID of the VSS IC (hvkit's own).
pub const VSS_INSTANCE: Guid = Guid::from_str_const("014f9490-e314-4c5c-919f-3f4c29bc0b66");

impl Service {
    /// Every service, in offer order.
    pub const ALL: [Service; 6] = [
        Service::Heartbeat,
        Service::Shutdown,
        Service::Timesync,
        Service::Kvp,
        Service::Vss,
        Service::Fcopy,
    ];

    /// Short name (logs, trace, API).
    pub const fn name(self) -> &'static str {
        match self {
            Service::Heartbeat => "heartbeat",
            Service::Shutdown => "shutdown",
            Service::Timesync => "timesync",
            Service::Kvp => "kvp",
            Service::Vss => "vss",
            Service::Fcopy => "fcopy",
        }
    }

    /// The class GUID (fact sheet §7.1).
    pub const fn class_id(self) -> Guid {
        match self {
            Service::Heartbeat => guid::class::HEARTBEAT,
            Service::Shutdown => guid::class::SHUTDOWN,
            Service::Timesync => guid::class::TIMESYNC,
            Service::Kvp => guid::class::KVP,
            Service::Vss => guid::class::VSS,
            Service::Fcopy => guid::class::FCOPY,
        }
    }

    /// The instance GUID offered: the well-known ones where a guest expects
    /// one (fcopy: the Linux daemon's; openvmm's for shutdown, time sync,
    /// KVP), hvkit's own for heartbeat and VSS.
    pub const fn instance_id(self) -> Guid {
        match self {
            Service::Heartbeat => HEARTBEAT_INSTANCE,
            Service::Shutdown => guid::instance::SHUTDOWN,
            Service::Timesync => guid::instance::TIMESYNC,
            Service::Kvp => guid::instance::KVP,
            Service::Vss => VSS_INSTANCE,
            Service::Fcopy => guid::instance::FCOPY,
        }
    }

    /// The versions the host offers (the same lists Linux uses, so Linux
    /// and hvkit's guest both find a match).
    pub const fn versions(self) -> ServiceVersions {
        match self {
            Service::Heartbeat => ServiceVersions::HEARTBEAT,
            Service::Shutdown => ServiceVersions::SHUTDOWN,
            Service::Timesync => ServiceVersions::TIMESYNC,
            Service::Kvp => ServiceVersions::KVP,
            Service::Vss => ServiceVersions::VSS,
            Service::Fcopy => ServiceVersions::FCOPY,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a host IC request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IcError {
    /// The guest has not opened the service's channel.
    #[error("the guest has not opened the {} service", .0.name())]
    NotOpen(Service),
    /// The channel is open but negotiation has not finished in time.
    #[error("the {} service is still negotiating versions with the guest", .0.name())]
    NotNegotiated(Service),
    /// Version negotiation failed.
    #[error("{} version negotiation failed: {}", .0.name(), .1)]
    NegotiationFailed(Service, String),
    /// The channel closed while a request was outstanding.
    #[error("the guest closed the {} channel during the request", .0.name())]
    Closed(Service),
    /// The guest did not answer in time.
    #[error("the guest did not answer the {} request in time", .0.name())]
    Timeout(Service),
    /// The guest answered with a failure status.
    #[error("the guest answered the {} request with status {status:#010x}{}", service.name(), name.map(|n| format!(" ({n})")).unwrap_or_default())]
    GuestStatus {
        /// The service.
        service: Service,
        /// The HRESULT.
        status: u32,
        /// Its name, if known.
        name: Option<&'static str>,
    },
    /// The guest's answer is malformed.
    #[error("malformed {} answer from the guest: {why}", service.name())]
    BadReply {
        /// The service.
        service: Service,
        /// What is wrong.
        why: String,
    },
    /// The request itself is invalid (a key too long, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The packet could not be sent.
    #[error("cannot send the {} request: {error}", service.name())]
    Send {
        /// The service.
        service: Service,
        /// The send error.
        error: String,
    },
}

/// A source of time for the host ICs.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Settings of the host ICs.
#[derive(Clone)]
pub struct IcConfig {
    /// Time between heartbeat requests.
    pub heartbeat_interval: Duration,
    /// The guest counts as dead when no valid heartbeat answer came for this long.
    pub heartbeat_timeout: Duration,
    /// Time between time-sync SAMPLE pushes (a SYNC goes out at negotiation).
    pub timesync_interval: Duration,
    /// The partition's reference time (100 ns units), for time sync 4.0.
    pub reference_time: Clock,
    /// Host wall-clock time in 100 ns units since 1601-01-01 UTC.
    pub wall_time: Clock,
    /// Where IC messages are traced.
    pub trace: Option<Arc<TraceWriter>>,
    /// Run the heartbeat/time-sample thread (off: only requests on demand,
    /// e.g. for fuzzing).
    pub background: bool,
    /// Run the [`exercise`] script on every service once it is negotiated
    /// (for the bare-metal test guest; needs `background`).
    pub exercise: bool,
}

impl std::fmt::Debug for IcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IcConfig")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("timesync_interval", &self.timesync_interval)
            .finish_non_exhaustive()
    }
}

/// Host wall-clock time in 100 ns units since 1601-01-01 (the time-sync
/// epoch, fact sheet §7.4).
pub fn wall_time_now() -> u64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ticks = u64::try_from(since_unix.as_nanos() / 100).unwrap_or(u64::MAX);
    ic_services::timesync::UNIX_EPOCH_100NS.saturating_add(ticks)
}

impl IcConfig {
    /// Heartbeat every second, dead after 5 s, time samples every 5 s
    /// (Hyper-V's own sample period), `reference_time` from the partition.
    pub fn new(reference_time: Clock) -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(5),
            timesync_interval: Duration::from_secs(5),
            reference_time,
            wall_time: Arc::new(wall_time_now),
            trace: None,
            background: true,
            exercise: false,
        }
    }
}

/// What `GET /api/v1/ic` shows.
#[derive(Debug, Clone, Serialize)]
pub struct IcStatus {
    /// One entry per service.
    pub services: Vec<IcChannelStatus>,
    /// The heartbeat monitor.
    pub heartbeat: HeartbeatStatus,
    /// The exercise script's results (all `null` unless it is enabled).
    pub exercise: ExerciseReport,
}

struct Stopper {
    stop: Mutex<bool>,
    cv: Condvar,
}

pub(crate) struct Inner {
    cfg: IcConfig,
    cores: Vec<Arc<IcCore>>,
    heartbeat: heartbeat::Monitor,
    timesync: Mutex<services::TimeSyncState>,
    exercise: Mutex<ExerciseReport>,
    stopper: Arc<Stopper>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        *self.stopper.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stopper.cv.notify_all();
    }
}

/// The host ICs of one partition. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct HostIcs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostIcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIcs").finish_non_exhaustive()
    }
}

impl HostIcs {
    /// The six services, not offered yet; starts the heartbeat/time thread.
    pub fn new(cfg: IcConfig) -> std::io::Result<Self> {
        Self::with_cores(
            Service::ALL
                .iter()
                .map(|&s| IcCore::new(s, cfg.trace.clone()))
                .collect(),
            cfg,
        )
    }

    /// Like [`new`](Self::new), offering other version lists for `service`
    /// (tests: a guest that matches none).
    pub fn with_versions(
        cfg: IcConfig,
        service: Service,
        versions: ServiceVersions,
    ) -> std::io::Result<Self> {
        Self::with_cores(
            Service::ALL
                .iter()
                .map(|&s| {
                    if s == service {
                        IcCore::with_versions(s, versions, cfg.trace.clone())
                    } else {
                        IcCore::new(s, cfg.trace.clone())
                    }
                })
                .collect(),
            cfg,
        )
    }

    fn with_cores(cores: Vec<Arc<IcCore>>, cfg: IcConfig) -> std::io::Result<Self> {
        let stopper = Arc::new(Stopper {
            stop: Mutex::new(false),
            cv: Condvar::new(),
        });
        let inner = Arc::new(Inner {
            heartbeat: heartbeat::Monitor::new(cfg.heartbeat_timeout),
            cfg,
            cores,
            timesync: Mutex::new(services::TimeSyncState::default()),
            exercise: Mutex::new(ExerciseReport::default()),
            stopper: Arc::clone(&stopper),
            ticker: Mutex::new(None),
        });
        if !inner.cfg.background {
            return Ok(Self { inner });
        }
        let weak = Arc::downgrade(&inner);
        let t = std::thread::Builder::new()
            .name("ic-ticker".into())
            .spawn(move || ticker(&weak, &stopper))?;
        *inner.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
        Ok(Self { inner })
    }

    /// The VSP of `service` (to offer it on a server yourself).
    pub fn vsp(&self, service: Service) -> IcVsp {
        IcVsp::new(
            Arc::clone(&self.inner.cores[service.index()]),
            service.instance_id(),
        )
    }

    /// Offer every service on `server`; returns the relids in
    /// [`Service::ALL`] order.
    pub fn register(&self, server: &VmbusServer) -> Result<Vec<u32>, VmbusError> {
        Service::ALL
            .iter()
            .map(|&s| server.add_device(Box::new(self.vsp(s))))
            .collect()
    }

    pub(crate) fn core(&self, service: Service) -> &IcCore {
        &self.inner.cores[service.index()]
    }

    /// Connect `service` to `guest` directly, without VMBus (tests, fuzzing):
    /// negotiation runs at once, and every later request is handed to
    /// `guest` synchronously, its answers parsed exactly like a VMBus
    /// guest's. With no answer, a request fails when its timeout passes.
    pub fn open_loopback(&self, service: Service, guest: LoopbackGuest) {
        self.core(service).open_loopback(guest);
    }

    /// Close `service`'s link from the host side (as if the guest closed it).
    pub fn close_link(&self, service: Service) {
        self.core(service).close_link();
    }

    /// What the [`exercise`] script did so far.
    pub fn exercise_report(&self) -> ExerciseReport {
        self.inner
            .exercise
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every service's state and the heartbeat monitor.
    pub fn status(&self) -> IcStatus {
        IcStatus {
            services: self.inner.cores.iter().map(|c| c.status()).collect(),
            heartbeat: self.heartbeat(),
            exercise: self.exercise_report(),
        }
    }

    /// The status of one service's channel.
    pub fn channel_status(&self, service: Service) -> IcChannelStatus {
        self.core(service).status()
    }

    /// Send one heartbeat request now and check the answer (the background
    /// thread does this every interval).
    pub fn heartbeat_now(&self, timeout: Duration) -> Result<u64, IcError> {
        self.inner
            .heartbeat
            .beat(&self.inner.cores[Service::Heartbeat.index()], timeout)
    }

    /// Stop the background thread (idempotent; also when the last handle
    /// is dropped).
    pub fn stop(&self) {
        *self
            .inner
            .stopper
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.inner.stopper.cv.notify_all();
        let t = self
            .inner
            .ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = t {
            if t.thread().id() != std::thread::current().id() && t.join().is_err() {
                tracing::error!("IC ticker thread panicked");
            }
        }
    }
}

/// The background thread: heartbeats and time samples. Holds only a weak
/// reference, so dropping every [`HostIcs`] ends it.
fn ticker(weak: &Weak<Inner>, stopper: &Stopper) {
    let mut next_beat = Instant::now();
    let mut next_sample: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let now = Instant::now();
        if now >= next_beat {
            let hb = &inner.cores[Service::Heartbeat.index()];
            if hb.negotiated().is_some() {
                let t = inner.cfg.heartbeat_interval.max(Duration::from_millis(10));
                if let Err(e) = inner.heartbeat.beat(hb, t) {
                    tracing::debug!(error = %e, "heartbeat");
                }
            } else {
                inner.heartbeat.channel_not_ready(hb);
            }
            next_beat = Instant::now() + inner.cfg.heartbeat_interval;
        }
        services::timesync_tick(&inner, &mut next_sample);
        if inner.cfg.exercise {
            let ics = HostIcs {
                inner: Arc::clone(&inner),
            };
            exercise::tick(&ics, &inner.exercise);
        }
        let wake = next_sample.map_or(next_beat, |s| s.min(next_beat));
        let hb_interval = inner.cfg.heartbeat_interval;
        drop(inner);
        let stop = stopper.stop.lock().unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
        // Wake at the next deadline, and at least every interval to notice
        // a channel that became ready.
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(hb_interval)
            .max(Duration::from_millis(1));
        let (stop, _) = stopper
            .cv
            .wait_timeout(stop, wait)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
    }
}
