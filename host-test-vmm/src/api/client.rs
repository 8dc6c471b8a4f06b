//! The client side of the control API: `host-test-vmm ctl --api-socket PATH
//! <command> [args]` sends one request and prints the JSON reply.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::http::{self, HttpError};
use super::API_PREFIX;

/// Why a `ctl` request failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Sending the request or reading the reply failed.
    #[error("control API exchange failed: {0}")]
    Http(#[from] HttpError),
    /// The reply body is not JSON.
    #[error("the reply is not JSON ({status}): {text}")]
    NotJson {
        /// HTTP status.
        status: u16,
        /// The body as text.
        text: String,
    },
    /// A local argument problem (e.g. an unreadable path).
    #[error("{0}")]
    Usage(String),
}

/// A reply: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct CtlReply {
    /// HTTP status (200 = success).
    pub status: u16,
    /// The JSON body (`{"error": ...}` on failure).
    pub body: Value,
}

impl CtlReply {
    /// True for a 2xx status.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Send one request to the API at `socket`. `timeout` bounds the whole
/// exchange (graceful shutdowns wait for the guest: give them room).
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<CtlReply, CtlError> {
    let stream = UnixStream::connect(socket).map_err(|source| CtlError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| CtlError::Http(HttpError::Io(e)))?;
    let mut w = stream
        .try_clone()
        .map_err(|e| CtlError::Http(HttpError::Io(e)))?;
    let path = format!("{API_PREFIX}{endpoint}");
    http::write_request(&mut w, method, &path, body).map_err(HttpError::Io)?;
    let (status, bytes) = http::read_response(&mut BufReader::new(stream))?;
    let body = serde_json::from_slice(&bytes).map_err(|_| CtlError::NotJson {
        status,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })?;
    Ok(CtlReply { status, body })
}

/// The `ctl` commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// State of the partition and of its integration components (GET vm.info).
    Info,
    /// Park every vCPU.
    Pause,
    /// Let a paused partition run.
    Resume,
    /// Hard reset: back to power-on.
    Reset,
    /// Hard power off: the run ends now.
    PowerOff,
    /// Graceful shutdown through the shutdown IC, then power off after the timeout.
    Shutdown {
        /// Seconds the guest gets before the host powers off.
        #[arg(long)]
        timeout: Option<u64>,
        /// Set the force flag of the request.
        #[arg(long)]
        force: bool,
        /// Text the guest may display.
        #[arg(long)]
        message: Option<String>,
    },
    /// Graceful reboot through the shutdown IC, then a hard reset.
    Reboot {
        /// Seconds the guest gets to acknowledge.
        #[arg(long)]
        timeout: Option<u64>,
        /// Set the force flag of the request.
        #[arg(long)]
        force: bool,
        /// Text the guest may display.
        #[arg(long)]
        message: Option<String>,
    },
    /// Every IC: offered, opened, negotiated versions, transactions.
    Ic,
    /// Heartbeat status: alive, last sequence number, rule violations.
    Heartbeat,
    /// KVP: read a key from a pool (external, guest, auto, auto-external, auto-internal or 0..4).
    KvpGet {
        /// The pool.
        pool: String,
        /// The key.
        key: String,
    },
    /// KVP: write a key into a pool (a string; --u32/--u64 for integers).
    KvpSet {
        /// The pool.
        pool: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Send the value as REG_U32.
        #[arg(long, conflicts_with = "u64")]
        u32: bool,
        /// Send the value as REG_U64.
        #[arg(long)]
        u64: bool,
    },
    /// KVP: delete a key from a pool.
    KvpDelete {
        /// The pool.
        pool: String,
        /// The key.
        key: String,
    },
    /// KVP: every key and value of a pool.
    KvpEnumerate {
        /// The pool.
        pool: String,
    },
    /// Push the host time to the guest (a SYNC, or a SAMPLE with --sample).
    TimeSync {
        /// Send a periodic-sample message instead of a sync.
        #[arg(long)]
        sample: bool,
    },
    /// A VSS request: freeze, thaw, hot-backup, get-dm-info, bu-complete, auto-recover, create, delete.
    Vss {
        /// The operation.
        operation: String,
    },
    /// Copy a host file into the guest through the file-copy IC.
    CopyFile {
        /// The host file.
        source: PathBuf,
        /// The guest directory.
        #[arg(long)]
        dest_dir: String,
        /// The guest file name (default: the source's name).
        #[arg(long)]
        name: Option<String>,
        /// Overwrite an existing file.
        #[arg(long)]
        overwrite: bool,
        /// Create the directory if it is missing.
        #[arg(long)]
        create_path: bool,
    },
    /// Hot-add a disk (raw image) to the synthetic SCSI controller (needs `--disk` at start).
    AddDisk {
        /// The raw image file.
        path: PathBuf,
        /// Attach read-only.
        #[arg(long)]
        readonly: bool,
        /// The LUN (default: the lowest free one).
        #[arg(long)]
        lun: Option<u8>,
    },
    /// Hot-remove the disk at a LUN.
    RemoveDisk {
        /// The LUN.
        lun: u8,
    },
    /// The synthetic NICs: MAC, backend, link, counters.
    Net,
    /// Set a NIC's link up or down (the guest sees media connect/disconnect).
    NetLink {
        /// `up` or `down`.
        #[arg(value_parser = ["up", "down"])]
        state: String,
        /// The NIC ("net0"; default: the only one).
        #[arg(long)]
        nic: Option<String>,
    },
}

/// Optional `timeout_secs` field.
fn with_timeout(mut v: Value, t: Option<u64>) -> Value {
    if let Some(t) = t {
        v["timeout_secs"] = json!(t);
    }
    v
}

/// Method, endpoint and body of a command.
pub fn to_request(
    cmd: &CtlCommand,
) -> Result<(&'static str, &'static str, Option<Value>), CtlError> {
    use CtlCommand as C;
    Ok(match cmd {
        C::Info => ("GET", "vm.info", None),
        C::Pause => ("PUT", "vm.pause", None),
        C::Resume => ("PUT", "vm.resume", None),
        C::Reset => ("PUT", "vm.reset", None),
        C::PowerOff => ("PUT", "vm.power-off", None),
        C::Shutdown {
            timeout,
            force,
            message,
        }
        | C::Reboot {
            timeout,
            force,
            message,
        } => {
            let mut b = with_timeout(json!({"force": force}), *timeout);
            if let Some(m) = message {
                b["message"] = json!(m);
            }
            let ep = if matches!(cmd, C::Shutdown { .. }) {
                "vm.shutdown"
            } else {
                "vm.reboot"
            };
            ("PUT", ep, Some(b))
        }
        C::Ic => ("GET", "ic", None),
        C::Heartbeat => ("GET", "ic.heartbeat", None),
        C::KvpGet { pool, key } => ("PUT", "kvp.get", Some(json!({"pool": pool, "key": key}))),
        C::KvpSet {
            pool,
            key,
            value,
            u32,
            u64,
        } => {
            let v = if *u32 || *u64 {
                let n: u64 = value.parse().map_err(|_| {
                    CtlError::Usage(format!("{value:?} is not an unsigned integer"))
                })?;
                if *u32 && u32::try_from(n).is_err() {
                    return Err(CtlError::Usage(format!("{n} does not fit in 32 bits")));
                }
                json!(n)
            } else {
                json!(value)
            };
            (
                "PUT",
                "kvp.set",
                Some(json!({"pool": pool, "key": key, "value": v})),
            )
        }
        C::KvpDelete { pool, key } => {
            ("PUT", "kvp.delete", Some(json!({"pool": pool, "key": key})))
        }
        C::KvpEnumerate { pool } => ("PUT", "kvp.enumerate", Some(json!({"pool": pool}))),
        C::TimeSync { sample } => (
            "PUT",
            "time.sync",
            Some(json!({"mode": if *sample { "sample" } else { "sync" }})),
        ),
        C::Vss { operation } => ("PUT", "vss", Some(json!({"operation": operation}))),
        C::CopyFile {
            source,
            dest_dir,
            name,
            overwrite,
            create_path,
        } => {
            // The VMM reads the file itself: send an absolute path.
            let abs = std::path::absolute(source).map_err(|e| {
                CtlError::Usage(format!("cannot resolve {}: {e}", source.display()))
            })?;
            let file_name = match name {
                Some(n) => n.clone(),
                None => source
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| {
                        CtlError::Usage(format!(
                            "{} has no file name; use --name",
                            source.display()
                        ))
                    })?,
            };
            (
                "PUT",
                "fcopy",
                Some(json!({
                    "source": abs,
                    "file_name": file_name,
                    "path": dest_dir,
                    "overwrite": overwrite,
                    "create_path": create_path,
                })),
            )
        }
        C::AddDisk {
            path,
            readonly,
            lun,
        } => {
            // The VMM opens the image itself: send an absolute path.
            let abs = std::path::absolute(path)
                .map_err(|e| CtlError::Usage(format!("cannot resolve {}: {e}", path.display())))?;
            let mut b = json!({"path": abs, "readonly": readonly});
            if let Some(l) = lun {
                b["lun"] = json!(l);
            }
            ("PUT", "vm.add-disk", Some(b))
        }
        C::RemoveDisk { lun } => ("PUT", "vm.remove-disk", Some(json!({"lun": lun}))),
        C::Net => ("GET", "net", None),
        C::NetLink { state, nic } => {
            let mut b = json!({"up": state == "up"});
            if let Some(n) = nic {
                b["nic"] = json!(n);
            }
            ("PUT", "net.link", Some(b))
        }
    })
}

/// Run one `ctl` command against `socket`.
pub fn run_ctl(socket: &Path, cmd: &CtlCommand) -> Result<CtlReply, CtlError> {
    let (method, endpoint, body) = to_request(cmd)?;
    // Graceful shutdowns may take the guest's whole timeout, and then some.
    let wait = match cmd {
        CtlCommand::Shutdown { timeout, .. } | CtlCommand::Reboot { timeout, .. } => {
            Duration::from_secs(timeout.unwrap_or(30) + 30)
        }
        _ => Duration::from_secs(120),
    };
    request(socket, method, endpoint, body.as_ref(), wait)
}
