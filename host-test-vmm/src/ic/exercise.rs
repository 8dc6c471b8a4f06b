//! The exercise: with [`IcConfig::exercise`](super::IcConfig::exercise) on,
//! the background thread drives every on-demand service once per channel
//! open with a fixed script, so a guest (the bare-metal test guest) can check
//! each service without anyone calling the API. Results are kept for the
//! report ([`HostIcs::exercise_report`](super::HostIcs::exercise_report)).
//!
//! The script, per service, as soon as it is negotiated:
//! - KVP: SET [`EXERCISE_KEY`] = [`EXERCISE_VALUE`] in the EXTERNAL pool,
//!   GET it back (must match), ENUMERATE the AUTO pool, DELETE the key.
//! - VSS: FREEZE, then THAW.
//! - file copy: [`EXERCISE_FILE`] into [`EXERCISE_DIR`] (flags overwrite |
//!   create path), [`EXERCISE_FILE_SIZE`] bytes, byte `i` = `i % 251`: two
//!   WRITE_TO_FILE fragments (6144 + 2048), then COMPLETE.
//! - shutdown: a power-off request (not forced, message
//!   [`EXERCISE_MESSAGE`]), so a guest should open the shutdown channel last
//!   and end its run after answering.

use std::sync::Mutex;
use std::time::Duration;

use ic_services::kvp::KvpPool;
use serde::Serialize;

use super::services::{FileCopy, HostKvpValue, ShutdownRequest};
use super::{parse_vss_operation, HostIcs, IcError, Service, ShutdownKind};

/// The KVP key the exercise sets (EXTERNAL pool).
pub const EXERCISE_KEY: &str = "hvkit-exercise-key";
/// Its value.
pub const EXERCISE_VALUE: &str = "hvkit-exercise-value";
/// The file the exercise copies.
pub const EXERCISE_FILE: &str = "hvkit-fcopy.bin";
/// The guest directory it goes to.
pub const EXERCISE_DIR: &str = "/hvkit";
/// Its size (byte `i` is `i % 251`).
pub const EXERCISE_FILE_SIZE: usize = 8192;
/// The shutdown request's display message.
pub const EXERCISE_MESSAGE: &str = "hvkit exercise: power off";
/// Time the guest gets per request.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The exercise file's contents.
pub fn exercise_file() -> Vec<u8> {
    (0..EXERCISE_FILE_SIZE).map(|i| (i % 251) as u8).collect()
}

/// What one service's script did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepResult {
    /// The channel open (its `opens` count) the script ran on.
    pub open: u64,
    /// `None` when every request succeeded, else the first error.
    pub error: Option<String>,
    /// What the guest returned that the report may want (KVP: the AUTO
    /// pool's key count; file copy: bytes).
    pub detail: Option<String>,
}

/// The results so far, per service (`None` = not run yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExerciseReport {
    /// KVP set/get/enumerate/delete.
    pub kvp: Option<StepResult>,
    /// VSS freeze/thaw.
    pub vss: Option<StepResult>,
    /// File copy.
    pub fcopy: Option<StepResult>,
    /// The power-off request.
    pub shutdown: Option<StepResult>,
}

impl ExerciseReport {
    fn slot(&mut self, s: Service) -> Option<&mut Option<StepResult>> {
        match s {
            Service::Kvp => Some(&mut self.kvp),
            Service::Vss => Some(&mut self.vss),
            Service::Fcopy => Some(&mut self.fcopy),
            Service::Shutdown => Some(&mut self.shutdown),
            Service::Heartbeat | Service::Timesync => None,
        }
    }
}

fn kvp(ics: &HostIcs) -> Result<String, IcError> {
    let ext = KvpPool::EXTERNAL;
    let value = HostKvpValue::String(EXERCISE_VALUE.into());
    ics.kvp_set(ext, EXERCISE_KEY, &value, TIMEOUT)?;
    let back = ics.kvp_get(ext, EXERCISE_KEY, TIMEOUT)?;
    if back != value {
        return Err(IcError::BadReply {
            service: Service::Kvp,
            why: format!("GET returned {back:?} after SET {value:?}"),
        });
    }
    let auto = ics.kvp_enumerate(KvpPool::AUTO, TIMEOUT)?;
    ics.kvp_delete(ext, EXERCISE_KEY, TIMEOUT)?;
    Ok(format!("auto_pool_keys={}", auto.len()))
}

fn vss(ics: &HostIcs) -> Result<String, IcError> {
    for op in ["freeze", "thaw"] {
        let op = parse_vss_operation(op).map_err(IcError::Invalid)?;
        ics.vss(op, TIMEOUT)?;
    }
    Ok("freeze,thaw".into())
}

fn fcopy(ics: &HostIcs) -> Result<String, IcError> {
    let r = ics.copy_file(
        &FileCopy {
            file_name: EXERCISE_FILE.into(),
            path: EXERCISE_DIR.into(),
            data: exercise_file(),
            overwrite: true,
            create_path: true,
        },
        TIMEOUT,
    )?;
    Ok(format!("bytes={} fragments={}", r.bytes, r.fragments))
}

fn shutdown(ics: &HostIcs) -> Result<String, IcError> {
    ics.shutdown(
        &ShutdownRequest {
            kind: ShutdownKind::PowerOff,
            force: false,
            message: EXERCISE_MESSAGE.into(),
        },
        TIMEOUT,
    )?;
    Ok("power-off acknowledged".into())
}

/// One round of the background thread: run the script of every service that
/// is negotiated and has not had it on this open.
pub(crate) fn tick(ics: &HostIcs, report: &Mutex<ExerciseReport>) {
    for s in [
        Service::Kvp,
        Service::Vss,
        Service::Fcopy,
        Service::Shutdown,
    ] {
        let core = ics.core(s);
        if core.negotiated().is_none() {
            continue;
        }
        let open = core.status().counters.opens;
        let done = report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slot(s)
            .and_then(|r| r.as_ref().map(|r| r.open));
        if done == Some(open) {
            continue;
        }
        let r = match s {
            Service::Kvp => kvp(ics),
            Service::Vss => vss(ics),
            Service::Fcopy => fcopy(ics),
            _ => shutdown(ics),
        };
        tracing::info!(service = ?s, result = ?r, "IC exercise");
        let step = StepResult {
            open,
            error: r.as_ref().err().map(ToString::to_string),
            detail: r.ok(),
        };
        if let Some(slot) = report.lock().unwrap_or_else(|e| e.into_inner()).slot(s) {
            *slot = Some(step);
        }
    }
}
