//! The partition's owner loop with a control channel: the API threads ask,
//! the thread that owns the [`Partition`] acts (pause, resume, reset,
//! power off) and publishes the state.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::server::{ApiServer, ApiTargets};
use super::ApiError;
use crate::vmm::{Partition, RunEnd, RunOutcome, VmConfig, VmmError};

/// How often the owner loop looks at the run's end while no command comes.
const POLL: Duration = Duration::from_millis(10);
/// How long an API thread waits for the owner loop to act.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the partition is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Created, vCPUs not started yet.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked by a pause.
    Paused,
    /// The run ended (guest exit, fault, power off, timeout).
    Ended,
}

/// A lifecycle command for the owner loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmCommand {
    /// Park every vCPU.
    Pause,
    /// Let parked vCPUs run.
    Resume,
    /// Back to power-on (RAM reloaded, emulation and VMBus reset).
    Reset,
    /// End the run now (`RunEnd::Stopped`).
    PowerOff,
}

struct Status {
    state: VmState,
    end: Option<RunEnd>,
    resets: u64,
}

struct Shared {
    status: Mutex<Status>,
    cv: Condvar,
}

type Reply = mpsc::Sender<Result<(), ApiError>>;

/// The API's handle on a partition (cheap to clone; any thread).
#[derive(Clone)]
pub struct VmHandle {
    tx: mpsc::Sender<(VmCommand, Reply)>,
    shared: Arc<Shared>,
    cpus: u32,
    memory: u64,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("cpus", &self.cpus)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

/// What `GET /api/v1/vm.info` reports about the partition.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// The state.
    pub state: VmState,
    /// How the run ended, once it has.
    pub end: Option<RunEnd>,
    /// vCPU count.
    pub cpus: u32,
    /// RAM in bytes.
    pub memory: u64,
    /// Resets done through the API since start.
    pub resets: u64,
}

/// The owner loop's side: receives commands.
pub struct VmOwner {
    rx: mpsc::Receiver<(VmCommand, Reply)>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmHandle {
    /// A handle and the owner side for a partition of `cpus` vCPUs and
    /// `memory` bytes.
    pub fn new(cpus: u32, memory: u64) -> (Self, VmOwner) {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            status: Mutex::new(Status {
                state: VmState::Created,
                end: None,
                resets: 0,
            }),
            cv: Condvar::new(),
        });
        (
            Self {
                tx,
                shared: Arc::clone(&shared),
                cpus,
                memory,
            },
            VmOwner { rx, shared },
        )
    }

    /// The state and facts.
    pub fn info(&self) -> VmInfo {
        let st = lock(&self.shared.status);
        VmInfo {
            state: st.state.clone(),
            end: st.end.clone(),
            cpus: self.cpus,
            memory: self.memory,
            resets: st.resets,
        }
    }

    /// The state.
    pub fn state(&self) -> VmState {
        lock(&self.shared.status).state.clone()
    }

    /// Have the owner loop run `cmd`; waits for it to be done.
    pub fn command(&self, cmd: VmCommand) -> Result<(), ApiError> {
        if self.state() == VmState::Ended {
            return Err(ApiError::conflict("the partition's run has ended"));
        }
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .send((cmd, rtx))
            .map_err(|_| ApiError::conflict("the partition's run has ended"))?;
        match rrx.recv_timeout(COMMAND_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ApiError::timeout(
                "the partition did not carry out the command in time",
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(ApiError::conflict("the partition's run has ended"))
            }
        }
    }

    /// Wait until the run ends, at most `timeout`; the end if it came.
    pub fn wait_ended(&self, timeout: Duration) -> Option<RunEnd> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.status);
        loop {
            if st.state == VmState::Ended {
                return st.end.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl VmOwner {
    /// Publish a new state.
    pub fn set_state(&self, state: VmState, end: Option<RunEnd>) {
        let mut st = lock(&self.shared.status);
        st.state = state;
        if end.is_some() {
            st.end = end;
        }
        self.shared.cv.notify_all();
    }

    /// The next command, waiting at most `timeout`. `None` on timeout (or
    /// when every handle is gone).
    pub fn next(&self, timeout: Duration) -> Option<(VmCommand, Reply)> {
        self.rx.recv_timeout(timeout).ok()
    }

    fn count_reset(&self) {
        lock(&self.shared.status).resets += 1;
    }
}

fn lifecycle(e: VmmError) -> ApiError {
    match e {
        VmmError::Lifecycle(why) => ApiError::conflict(why),
        other => ApiError::internal(other.to_string()),
    }
}

/// Carry out one command on the partition.
fn apply(p: &mut Partition, owner: &VmOwner, cmd: VmCommand) -> Result<(), ApiError> {
    let state = lock(&owner.shared.status).state.clone();
    match cmd {
        VmCommand::Pause => {
            if state == VmState::Paused {
                return Err(ApiError::conflict("the partition is already paused"));
            }
            p.pause().map_err(lifecycle)?;
            owner.set_state(VmState::Paused, None);
        }
        VmCommand::Resume => {
            if state != VmState::Paused {
                return Err(ApiError::conflict("resume needs a paused partition"));
            }
            p.resume().map_err(lifecycle)?;
            owner.set_state(VmState::Running, None);
        }
        VmCommand::Reset => {
            // A paused partition is resumed first: reset pauses and resumes
            // around its work, and the guest should run again afterwards.
            if state == VmState::Paused {
                p.resume().map_err(lifecycle)?;
            }
            p.reset().map_err(lifecycle)?;
            owner.count_reset();
            owner.set_state(VmState::Running, None);
        }
        VmCommand::PowerOff => p.end_run(RunEnd::Stopped),
    }
    tracing::info!(?cmd, "control API command done");
    Ok(())
}

/// Why [`run_with_api`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiRunError {
    /// The partition failed.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The control socket could not be created.
    #[error("cannot listen on the control socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Like [`crate::vmm::run`], with the control API listening on `socket`
/// while the partition lives (the socket file is removed at the end).
pub fn run_with_api(cfg: VmConfig, socket: &Path) -> Result<RunOutcome, ApiRunError> {
    let mut p = Partition::create(&cfg)?;
    let (handle, owner) = VmHandle::new(cfg.cpus, cfg.memory);
    let targets = ApiTargets {
        vm: handle,
        ics: p.hv().ics(),
        storage: p.hv().storage(),
        net: p.hv().nics(),
    };
    let api = ApiServer::bind(socket, targets).map_err(|source| ApiRunError::Socket {
        path: socket.to_path_buf(),
        source,
    })?;
    p.start()?;
    owner.set_state(VmState::Running, None);
    let deadline = cfg.timeout.map(|t| Instant::now() + t);
    let end = drive(&mut p, &owner, deadline);
    owner.set_state(VmState::Ended, Some(end.clone()));
    let stopped = p.stop();
    drop(api);
    stopped?;
    let expected: Vec<&str> = cfg.expected_checks.iter().map(String::as_str).collect();
    let report = p.report(&expected);
    Ok(RunOutcome {
        end,
        report,
        serial: p.console().text(),
        facts: p.facts(),
    })
}

/// Serve commands until the run ends (or `deadline` passes: then it ends
/// with [`RunEnd::Timeout`]).
pub fn drive(p: &mut Partition, owner: &VmOwner, deadline: Option<Instant>) -> RunEnd {
    loop {
        if let Some((cmd, reply)) = owner.next(POLL) {
            let r = apply(p, owner, cmd);
            if let Err(e) = &r {
                tracing::info!(?cmd, error = %e.message, "control API command refused");
            }
            // The asker may have given up; nothing to do then.
            let _ = reply.send(r);
        }
        if let Some(end) = p.wait(Some(Duration::ZERO)) {
            return end;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            p.end_run(RunEnd::Timeout);
        }
    }
}
