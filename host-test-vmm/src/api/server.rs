//! The control socket: a unix listener, one thread per connection, and the
//! routes (docs/ARCHITECTURE.md, "Control API").

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::control::{VmCommand, VmHandle, VmState};
use super::http::{self, HttpError, Request};
use super::ApiError;
use crate::ic::{
    kvp_pool_name, parse_kvp_pool, parse_vss_operation, FileCopy, HostIcs, HostKvpValue, KvpPool,
    ShutdownKind, ShutdownRequest, TimeSyncMode, VssOperation,
};
use crate::storage::{DiskSpec, StorageController, StorageError};

/// Every endpoint is under this prefix.
pub const API_PREFIX: &str = "/api/v1/";
/// Socket read/write timeout per connection (a stuck client cannot pin a
/// thread for ever).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time the guest gets to answer an IC request.
const DEFAULT_IC_TIMEOUT: u64 = 10;
/// Default time a graceful shutdown/reboot gets before the hard fallback.
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 30;
/// Longest timeout a request may ask for.
const MAX_TIMEOUT: u64 = 3600;

/// The listening control socket. Dropping it stops accepting and removes
/// the socket file; requests in flight finish on their own threads.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the API drives: the partition's lifecycle, its integration
/// components and its storage controller (when it has them).
#[derive(Clone)]
pub struct ApiTargets {
    /// Lifecycle (served by the thread that owns the partition).
    pub vm: VmHandle,
    /// The host ICs.
    pub ics: Option<HostIcs>,
    /// The synthetic SCSI controller (disk hot-add/remove).
    pub storage: Option<Arc<StorageController>>,
    /// The synthetic NICs (link up/down, stats).
    pub net: Vec<Arc<crate::net::Nic>>,
}

impl std::fmt::Debug for ApiTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTargets")
            .field("vm", &self.vm)
            .field("ics", &self.ics.is_some())
            .field("storage", &self.storage.is_some())
            .field("net", &self.net.len())
            .finish()
    }
}

impl ApiServer {
    /// Listen on `path` (a stale socket file there is replaced; any other
    /// existing file is an error).
    pub fn bind(path: &Path, targets: ApiTargets) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(targets);
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("api-listener".into())
            .spawn(move || accept_loop(&listener, &ctx, &s))?;
        tracing::info!(path = %path.display(), "control API listening");
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("control API listener panicked");
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, ctx: &Arc<ApiTargets>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let ctx = Arc::clone(ctx);
                let spawned = std::thread::Builder::new()
                    .name("api-conn".into())
                    .spawn(move || serve(stream, &ctx));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "cannot start a control API connection thread");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "control API accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn serve(stream: UnixStream, ctx: &ApiTargets) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "control API connection unusable");
            return;
        }
    };
    let (status, body) = match http::read_request(&mut BufReader::new(stream)) {
        Ok(req) => {
            let r = handle_request(ctx, &req);
            tracing::debug!(method = %req.method, path = %req.path, ok = r.is_ok(), "control API request");
            reply(r)
        }
        Err(HttpError::Eof) => return,
        Err(e @ HttpError::Unsupported(_)) => (501, json!({"error": e.to_string()})),
        Err(e) => (400, json!({"error": e.to_string()})),
    };
    if let Err(e) = http::write_response(&mut w, status, &body) {
        tracing::debug!(error = %e, "control API reply not delivered");
    }
}

fn reply(r: Result<Value, ApiError>) -> (u16, Value) {
    match r {
        Ok(v) => (200, v),
        Err(e) => (e.status, json!({"error": e.message})),
    }
}

fn body<T: DeserializeOwned + Default>(req: &Request) -> Result<T, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&req.body).map_err(|e| ApiError::bad_request(format!("bad body: {e}")))
}

fn timeout(secs: Option<u64>, default: u64) -> Result<Duration, ApiError> {
    match secs.unwrap_or(default) {
        0 => Err(ApiError::bad_request("timeout_secs must be at least 1")),
        s if s > MAX_TIMEOUT => Err(ApiError::bad_request(format!(
            "timeout_secs must be at most {MAX_TIMEOUT}"
        ))),
        s => Ok(Duration::from_secs(s)),
    }
}

fn ics(ics: Option<&HostIcs>) -> Result<&HostIcs, ApiError> {
    ics.ok_or_else(|| {
        ApiError::not_supported("not supported: this partition has no VMBus integration components")
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    timeout_secs: Option<u64>,
    #[serde(default)]
    force: bool,
    message: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KvpBody {
    pool: Option<Value>,
    key: Option<String>,
    value: Option<Value>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeBody {
    mode: Option<String>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VssBody {
    operation: Option<String>,
    timeout_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FcopyBody {
    source: Option<PathBuf>,
    data: Option<String>,
    file_name: Option<String>,
    path: Option<String>,
    #[serde(default)]
    overwrite: bool,
    #[serde(default)]
    create_path: bool,
    timeout_secs: Option<u64>,
}

/// Route one request. Public so tests (and other front ends) can drive the
/// API without a socket.
pub fn handle_request(t: &ApiTargets, req: &Request) -> Result<Value, ApiError> {
    let vm = &t.vm;
    let ics_opt = t.ics.as_ref();
    let Some(name) = req.path.strip_prefix(API_PREFIX) else {
        return Err(ApiError::not_found(format!(
            "no endpoint {} (every endpoint is under {API_PREFIX})",
            req.path
        )));
    };
    let get = match (name, req.method.as_str()) {
        ("vm.info" | "ic" | "ic.heartbeat" | "net", "GET") => true,
        ("vm.info" | "ic" | "ic.heartbeat" | "net", _) => {
            return Err(ApiError::method(format!("{name} takes GET")))
        }
        (_, "PUT") => false,
        _ if !ENDPOINTS.contains(&name) => {
            return Err(ApiError::not_found(format!("no endpoint {}", req.path)))
        }
        _ => return Err(ApiError::method(format!("{name} takes PUT"))),
    };
    debug_assert!(get || req.method == "PUT");
    match name {
        "vm.info" => {
            let mut v = to_value(&vm.info())?;
            if let Some(i) = ics_opt {
                v["ics"] = to_value(&i.status())?;
            }
            if let Some(s) = &t.storage {
                v["disks"] = json!(s.luns());
            }
            if !t.net.is_empty() {
                v["nics"] = json!(t.net.iter().map(|n| n.name()).collect::<Vec<_>>());
            }
            Ok(v)
        }
        "vm.pause" => lifecycle(vm, req, VmCommand::Pause),
        "vm.resume" => lifecycle(vm, req, VmCommand::Resume),
        "vm.reset" => lifecycle(vm, req, VmCommand::Reset),
        "vm.power-off" => lifecycle(vm, req, VmCommand::PowerOff),
        "vm.shutdown" => graceful(vm, ics_opt, body(req)?, ShutdownKind::PowerOff),
        "vm.reboot" => graceful(vm, ics_opt, body(req)?, ShutdownKind::Reboot),
        "vm.add-disk" | "vm.remove-disk" => disk(t.storage.as_deref(), name, req),
        "net" => Ok(json!(t.net.iter().map(nic_info).collect::<Vec<_>>())),
        "net.link" => net_link(&t.net, body(req)?),
        "ic" => to_value(&ics(ics_opt)?.status()),
        "ic.heartbeat" => to_value(&ics(ics_opt)?.heartbeat()),
        "kvp.get" | "kvp.set" | "kvp.delete" | "kvp.enumerate" => {
            kvp(vm, ics(ics_opt)?, name, body(req)?)
        }
        "time.sync" => {
            let b: TimeBody = body(req)?;
            let mode = match b.mode.as_deref().unwrap_or("sync") {
                "sync" => TimeSyncMode::Sync,
                "sample" => TimeSyncMode::Sample,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "mode {other:?}: expected \"sync\" or \"sample\""
                    )))
                }
            };
            let t = timeout(b.timeout_secs, DEFAULT_IC_TIMEOUT)?;
            running(vm)?;
            to_value(&ics(ics_opt)?.time_sync(mode, t)?)
        }
        "vss" => {
            let b: VssBody = body(req)?;
            let op: VssOperation = parse_vss_operation(
                b.operation
                    .as_deref()
                    .ok_or_else(|| ApiError::bad_request("operation is required"))?,
            )
            .map_err(ApiError::bad_request)?;
            let t = timeout(b.timeout_secs, DEFAULT_IC_TIMEOUT)?;
            running(vm)?;
            to_value(&ics(ics_opt)?.vss(op, t)?)
        }
        "fcopy" => fcopy(vm, ics(ics_opt)?, body(req)?),
        _ => Err(ApiError::not_found(format!("no endpoint {}", req.path))),
    }
}

/// Every endpoint name (after [`API_PREFIX`]).
const ENDPOINTS: &[&str] = &[
    "vm.info",
    "vm.pause",
    "vm.resume",
    "vm.reset",
    "vm.power-off",
    "vm.shutdown",
    "vm.reboot",
    "vm.add-disk",
    "vm.remove-disk",
    "net",
    "net.link",
    "ic",
    "ic.heartbeat",
    "kvp.get",
    "kvp.set",
    "kvp.delete",
    "kvp.enumerate",
    "time.sync",
    "vss",
    "fcopy",
];

fn lifecycle(vm: &VmHandle, req: &Request, cmd: VmCommand) -> Result<Value, ApiError> {
    let _: Empty = body(req)?;
    vm.command(cmd)?;
    if cmd == VmCommand::PowerOff {
        // The owner loop notices the end within a few milliseconds.
        let end = vm.wait_ended(Duration::from_secs(5));
        return Ok(json!({"state": vm.state(), "end": end}));
    }
    Ok(json!({"state": vm.state()}))
}

/// IC requests need running vCPUs: a paused guest cannot answer.
fn running(vm: &VmHandle) -> Result<(), ApiError> {
    match vm.state() {
        VmState::Running => Ok(()),
        VmState::Paused => Err(ApiError::conflict(
            "the partition is paused: the guest cannot answer (resume it first)",
        )),
        VmState::Ended => Err(ApiError::conflict("the partition's run has ended")),
        VmState::Created => Err(ApiError::conflict("the partition has not started")),
    }
}

fn graceful(
    vm: &VmHandle,
    ics_opt: Option<&HostIcs>,
    b: ShutdownBody,
    kind: ShutdownKind,
) -> Result<Value, ApiError> {
    let t = timeout(b.timeout_secs, DEFAULT_SHUTDOWN_TIMEOUT)?;
    running(vm)?;
    let start = Instant::now();
    let req = ShutdownRequest {
        kind,
        force: b.force,
        message: b.message.unwrap_or_default(),
    };
    let asked = match ics_opt {
        Some(i) => i.shutdown(&req, t).map_err(|e| e.to_string()),
        None => Err("this partition has no shutdown integration component".to_owned()),
    };
    let (fallback, verb) = match kind {
        ShutdownKind::PowerOff | ShutdownKind::Hibernate => (VmCommand::PowerOff, "powered-off"),
        ShutdownKind::Reboot => (VmCommand::Reset, "reset"),
    };
    match (asked, kind) {
        (Ok(()), ShutdownKind::PowerOff | ShutdownKind::Hibernate) => {
            let left = t.saturating_sub(start.elapsed());
            if let Some(end) = vm.wait_ended(left) {
                return Ok(json!({"result": "guest-shut-down", "acknowledged": true, "end": end}));
            }
            vm.command(fallback)?;
            let end = vm.wait_ended(Duration::from_secs(5));
            Ok(json!({
                "result": verb,
                "acknowledged": true,
                "reason": format!("the guest acknowledged but did not stop within {} s", t.as_secs()),
                "end": end,
            }))
        }
        (Ok(()), ShutdownKind::Reboot) => {
            // This VMM has no guest-initiated platform reset: once the guest
            // has agreed, the host resets the partition.
            vm.command(VmCommand::Reset)?;
            Ok(json!({"result": "rebooted", "acknowledged": true, "state": vm.state()}))
        }
        (Err(why), _) => {
            vm.command(fallback)?;
            let end = (fallback == VmCommand::PowerOff)
                .then(|| vm.wait_ended(Duration::from_secs(5)))
                .flatten();
            Ok(json!({
                "result": verb,
                "acknowledged": false,
                "reason": why,
                "state": vm.state(),
                "end": end,
            }))
        }
    }
}

fn pool(v: Option<&Value>) -> Result<KvpPool, ApiError> {
    match v {
        None => Err(ApiError::bad_request("pool is required")),
        Some(Value::String(s)) => parse_kvp_pool(s).map_err(ApiError::bad_request),
        Some(Value::Number(n)) => parse_kvp_pool(&n.to_string()).map_err(ApiError::bad_request),
        Some(other) => Err(ApiError::bad_request(format!(
            "pool {other}: expected a name or a number"
        ))),
    }
}

fn kvp(vm: &VmHandle, ics: &HostIcs, op: &str, b: KvpBody) -> Result<Value, ApiError> {
    let p = pool(b.pool.as_ref())?;
    let pname = kvp_pool_name(p);
    let t = timeout(b.timeout_secs, DEFAULT_IC_TIMEOUT)?;
    let key = || {
        b.key
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("key is required"))
    };
    if op != "kvp.set" && b.value.is_some() {
        return Err(ApiError::bad_request(format!("{op} takes no value")));
    }
    match op {
        "kvp.get" => {
            let k = key()?;
            running(vm)?;
            let v = ics.kvp_get(p, k, t)?;
            Ok(json!({"pool": pname, "key": k, "value": v}))
        }
        "kvp.set" => {
            let k = key()?;
            let v = match b.value {
                Some(Value::String(s)) => HostKvpValue::String(s),
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(x) => match u32::try_from(x) {
                        Ok(x) => HostKvpValue::U32(x),
                        Err(_) => HostKvpValue::U64(x),
                    },
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "value {n}: numbers must be unsigned integers"
                        )))
                    }
                },
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "value {other}: expected a string or an unsigned integer"
                    )))
                }
                None => return Err(ApiError::bad_request("value is required")),
            };
            running(vm)?;
            ics.kvp_set(p, k, &v, t)?;
            Ok(json!({"pool": pname, "key": k, "value": v}))
        }
        "kvp.delete" => {
            let k = key()?;
            running(vm)?;
            ics.kvp_delete(p, k, t)?;
            Ok(json!({"pool": pname, "key": k, "deleted": true}))
        }
        _ => {
            if b.key.is_some() {
                return Err(ApiError::bad_request("kvp.enumerate takes no key"));
            }
            running(vm)?;
            let items = ics.kvp_enumerate(p, t)?;
            Ok(json!({"pool": pname, "items": items}))
        }
    }
}

fn fcopy(vm: &VmHandle, ics: &HostIcs, b: FcopyBody) -> Result<Value, ApiError> {
    let data = match (b.source, b.data) {
        (Some(src), None) => std::fs::read(&src).map_err(|e| {
            ApiError::bad_request(format!("cannot read source {}: {e}", src.display()))
        })?,
        (None, Some(d)) => d.into_bytes(),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of source (a host file path) and data (text)",
            ))
        }
    };
    let file_name = b
        .file_name
        .ok_or_else(|| ApiError::bad_request("file_name is required"))?;
    let path = b
        .path
        .ok_or_else(|| ApiError::bad_request("path (the guest directory) is required"))?;
    let t = timeout(b.timeout_secs, DEFAULT_IC_TIMEOUT)?;
    running(vm)?;
    let req = FileCopy {
        file_name,
        path,
        data,
        overwrite: b.overwrite,
        create_path: b.create_path,
    };
    to_value(&ics.copy_file(&req, t)?)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AddDiskBody {
    path: Option<PathBuf>,
    #[serde(default)]
    readonly: bool,
    lun: Option<u8>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RemoveDiskBody {
    lun: Option<u8>,
}

fn storage_error(e: StorageError) -> ApiError {
    let m = e.to_string();
    match e {
        StorageError::LunInUse(_) => ApiError::conflict(m),
        StorageError::NoSuchLun(_) => ApiError::not_found(m),
        StorageError::Thread(_) => ApiError::internal(m),
        _ => ApiError::bad_request(m),
    }
}

/// Body of `net.link`: which NIC (name, e.g. "net0"; default: the only
/// one) and the state.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetLinkBody {
    nic: Option<String>,
    up: Option<bool>,
}

fn nic_info(n: &Arc<crate::net::Nic>) -> Value {
    json!({
        "name": n.name(),
        "mac": n.mac().to_string(),
        "mtu": n.mtu(),
        "backend": n.backend(),
        "link_up": n.link_up(),
        "stats": n.stats(),
    })
}

/// Set a NIC's link up or down (the guest gets a media connect/disconnect
/// indication).
fn net_link(nics: &[Arc<crate::net::Nic>], b: NetLinkBody) -> Result<Value, ApiError> {
    if nics.is_empty() {
        return Err(ApiError::not_supported(
            "not supported: no NIC (start the partition with --net tap=NAME or --net switch=NAME)",
        ));
    }
    let up =
        b.up.ok_or_else(|| ApiError::bad_request("up (true or false) is required"))?;
    let nic = match &b.nic {
        Some(name) => nics
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| ApiError::not_found(format!("no NIC {name:?}")))?,
        None if nics.len() == 1 => &nics[0],
        None => return Err(ApiError::bad_request("nic is required (more than one NIC)")),
    };
    nic.set_link(up);
    Ok(nic_info(nic))
}

/// Disk hot-add/remove on the synthetic SCSI controller (the guest is told
/// to rescan).
fn disk(storage: Option<&StorageController>, name: &str, req: &Request) -> Result<Value, ApiError> {
    let s = storage.ok_or_else(|| {
        ApiError::not_supported(
            "not supported: no storage controller (start the partition with --disk SPEC to have one)",
        )
    })?;
    if name == "vm.add-disk" {
        let b: AddDiskBody = body(req)?;
        let spec = DiskSpec {
            path: b
                .path
                .ok_or_else(|| ApiError::bad_request("path is required"))?,
            readonly: b.readonly,
            lun: b.lun,
        };
        let lun = s.add_disk_spec(&spec).map_err(storage_error)?;
        Ok(json!({"lun": lun, "disks": s.luns()}))
    } else {
        let b: RemoveDiskBody = body(req)?;
        let lun = b
            .lun
            .ok_or_else(|| ApiError::bad_request("lun is required"))?;
        s.remove_disk(lun).map_err(storage_error)?;
        Ok(json!({"removed": lun, "disks": s.luns()}))
    }
}
