//! A Linux TAP device as a NIC backend: guest frames are written to the
//! TAP fd and appear on the host's `NAME` interface; frames the host sends
//! out of that interface are read by a reader thread and handed to the NIC.
//!
//! Opened with TUNSETIFF IFF_TAP|IFF_NO_PI (no packet-info header: the fd
//! carries bare Ethernet frames) and O_NONBLOCK: a write the kernel cannot
//! take is a dropped frame, never a blocked VMBus worker.

use super::backend::{check_len, lock, BackendError, FrameBackend, FrameSink, MAX_FRAME};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
pub const IFNAMSIZ: usize = 16;

/// Why a TAP device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun: {0} (needs CAP_NET_ADMIN and the tun module)")]
    OpenTun(#[source] std::io::Error),
    /// TUNSETIFF failed.
    #[error("cannot create TAP device {name:?}: {source} (needs CAP_NET_ADMIN; is the name taken by a non-TAP device?)")]
    SetIff {
        /// The requested name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The name is empty, too long or has a NUL.
    #[error("invalid interface name {0:?}: 1..=15 bytes, no NUL or '/'")]
    BadName(String),
    /// The reader thread could not be started.
    #[error("cannot start the TAP reader thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Configuring the interface (address, up) failed.
    #[error("cannot configure interface {name:?}: {what}: {source}")]
    Config {
        /// The interface.
        name: String,
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` as the ioctls here use it: the name, then a 24-byte union
/// of which we use flags (short), a sockaddr, or a hardware address.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct IfReq {
    pub name: [u8; IFNAMSIZ],
    pub data: [u8; 24],
}

impl IfReq {
    pub(crate) fn new(name: &str) -> Result<Self, TapError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= IFNAMSIZ || b.contains(&0) || b.contains(&b'/') {
            return Err(TapError::BadName(name.to_owned()));
        }
        let mut r = Self {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }
}

/// Counters of a TAP backend.
#[derive(Debug, Default)]
struct Counters {
    tx_frames: AtomicU64,
    tx_dropped: AtomicU64,
    rx_frames: AtomicU64,
    rx_errors: AtomicU64,
}

struct Shared {
    file: File,
    name: String,
    sink: Mutex<Option<Arc<dyn FrameSink>>>,
    stop: AtomicBool,
    broken: AtomicBool,
    counters: Counters,
}

/// A TAP device (see the module docs). The device disappears when this is
/// dropped (it is not persistent).
pub struct TapBackend {
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapBackend")
            .field("name", &self.shared.name)
            .finish()
    }
}

/// Open /dev/net/tun and attach it to TAP `name` (created if missing).
/// Returns the fd and the kernel's name for the device.
pub(crate) fn open_tap_fd(name: &str) -> Result<(File, String), TapError> {
    let mut req = IfReq::new(name)?;
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    req.data[0..2].copy_from_slice(&flags.to_ne_bytes());
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string; open has no other
    // preconditions and we check its result.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(TapError::OpenTun(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by open and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a
    // properly sized and aligned ifreq that lives across the call, and `fd`
    // is an open tun fd.
    let r = unsafe { libc::ioctl(owned.as_raw_fd(), libc::TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(TapError::SetIff {
            name: name.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    let end = req.name.iter().position(|&c| c == 0).unwrap_or(IFNAMSIZ);
    let actual = String::from_utf8_lossy(&req.name[..end]).into_owned();
    Ok((File::from(owned), actual))
}

impl TapBackend {
    /// Attach to TAP `name` (created if it does not exist) in the calling
    /// thread's network namespace, and start the reader thread.
    pub fn open(name: &str) -> Result<Arc<Self>, TapError> {
        let (file, actual) = open_tap_fd(name)?;
        Self::from_file(file, actual)
    }

    /// A backend over an already attached TAP fd (e.g. opened inside a test
    /// namespace by [`super::netns::TestNetns`]).
    pub fn from_file(file: File, name: String) -> Result<Arc<Self>, TapError> {
        let shared = Arc::new(Shared {
            file,
            name,
            sink: Mutex::new(None),
            stop: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name(format!("tap-{}", shared.name))
            .spawn(move || reader_loop(&s))
            .map_err(TapError::Thread)?;
        tracing::info!(tap = %shared.name, "net: TAP device attached");
        Ok(Arc::new(Self {
            shared,
            reader: Mutex::new(Some(reader)),
        }))
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// (frames written, frames dropped on write, frames read, read errors).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let c = &self.shared.counters;
        (
            c.tx_frames.load(Ordering::Relaxed),
            c.tx_dropped.load(Ordering::Relaxed),
            c.rx_frames.load(Ordering::Relaxed),
            c.rx_errors.load(Ordering::Relaxed),
        )
    }
}

/// Reads frames until stopped: poll with a timeout so that `stop` is seen
/// within 100 ms without closing the fd under a blocked read.
fn reader_loop(s: &Shared) {
    let mut buf = vec![0u8; 65536];
    let fd = s.file.as_raw_fd();
    while !s.stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(tap = %s.name, error = %e, "net: TAP poll failed; reader stops");
            s.broken.store(true, Ordering::SeqCst);
            return;
        }
        if r == 0 {
            continue;
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            tracing::error!(tap = %s.name, revents = pfd.revents, "net: TAP device went away");
            s.broken.store(true, Ordering::SeqCst);
            return;
        }
        // Drain what is there, then poll again.
        loop {
            match (&s.file).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    s.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
                    let sink = lock(&s.sink).clone();
                    if let Some(sink) = sink {
                        sink.deliver(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.counters.rx_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tap = %s.name, error = %e, "net: TAP read failed");
                    break;
                }
            }
        }
    }
}

impl FrameBackend for TapBackend {
    fn describe(&self) -> String {
        format!("tap:{}", self.shared.name)
    }

    fn send(&self, frame: &[u8]) -> Result<(), BackendError> {
        check_len(frame, MAX_FRAME)?;
        // A TAP write takes the whole frame or fails: a short count would
        // be a kernel bug, treated as a drop.
        match (&self.shared.file).write(frame) {
            Ok(n) if n != frame.len() => {
                self.shared
                    .counters
                    .tx_dropped
                    .fetch_add(1, Ordering::Relaxed);
                Err(BackendError::Busy)
            }
            Ok(_) => {
                self.shared
                    .counters
                    .tx_frames
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.shared
                    .counters
                    .tx_dropped
                    .fetch_add(1, Ordering::Relaxed);
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Err(BackendError::Busy)
                } else {
                    Err(BackendError::Io(e))
                }
            }
        }
    }

    fn set_sink(&self, sink: Option<Arc<dyn FrameSink>>) {
        *lock(&self.shared.sink) = sink;
    }

    fn link_up(&self) -> bool {
        !self.shared.broken.load(Ordering::SeqCst)
    }
}

impl Drop for TapBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = lock(&self.reader).take() {
            if h.join().is_err() {
                tracing::error!(tap = %self.shared.name, "net: TAP reader thread panicked");
            }
        }
        *lock(&self.shared.sink) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(IfReq::new(""), Err(TapError::BadName(_))));
        assert!(matches!(
            IfReq::new("0123456789abcdef"),
            Err(TapError::BadName(_))
        ));
        assert!(matches!(IfReq::new("a/b"), Err(TapError::BadName(_))));
        assert!(IfReq::new("hvt0").is_ok());
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn error_message_is_actionable() {
        let e = TapError::OpenTun(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    }
}
