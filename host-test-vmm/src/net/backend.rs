//! Where a NIC's frames go: the [`FrameBackend`] port trait that netvsp
//! sends guest frames into and receives host frames from.
//!
//! A backend is one "cable end": [`super::tap::TapBackend`] (a Linux TAP
//! device) or [`super::switch::SwitchPort`] (a port of the in-VMM L2 switch).
//! Frames are whole Ethernet frames without FCS. Received frames are pushed
//! to the [`FrameSink`] installed with [`FrameBackend::set_sink`], on the
//! backend's own thread (TAP reader) or on the sender's thread (switch): a
//! sink must be quick and must not call back into the backend that feeds it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Largest frame a backend carries: a 1500-byte MTU frame plus VLAN tag,
/// rounded up, and room for a jumbo MTU of 9000 (netvsp bounds frames by its
/// own configured MTU; this bounds buffers).
pub const MAX_FRAME: usize = 9216;
/// Smallest frame accepted: an Ethernet header.
pub const ETH_HEADER: usize = 14;

/// Why a frame could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The frame is shorter than an Ethernet header or longer than the
    /// backend's limit.
    #[error("frame of {len} bytes is outside {ETH_HEADER}..={max}")]
    BadLength {
        /// The frame's length.
        len: usize,
        /// The backend's limit.
        max: usize,
    },
    /// The backend cannot take the frame now (TAP queue full); the frame is
    /// dropped, like a full NIC queue drops it.
    #[error("backend is busy, frame dropped")]
    Busy,
    /// The link is down (switch port detached, TAP gone).
    #[error("link is down")]
    LinkDown,
    /// An I/O error of the underlying device.
    #[error("backend I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Receives the frames a backend delivers.
pub trait FrameSink: Send + Sync {
    /// One received frame (a whole Ethernet frame). Called on the backend's
    /// thread; must not block for long.
    fn deliver(&self, frame: &[u8]);
}

/// One end of a network cable as netvsp sees it.
pub trait FrameBackend: Send + Sync {
    /// A short description for logs ("tap:hvt0", "switch:lan/port2").
    fn describe(&self) -> String;
    /// Send one frame out of the VM. Non-blocking: a frame the backend
    /// cannot take now is dropped with [`BackendError::Busy`].
    fn send(&self, frame: &[u8]) -> Result<(), BackendError>;
    /// Install (or, with `None`, remove) the receiver of incoming frames.
    fn set_sink(&self, sink: Option<Arc<dyn FrameSink>>);
    /// Whether the backend's own link is up (a TAP device whose fd works, a
    /// switch port that is attached). netvsp combines it with the link state
    /// set from the control API.
    fn link_up(&self) -> bool {
        true
    }
}

/// Check a frame's length against `ETH_HEADER..=max`.
pub fn check_len(frame: &[u8], max: usize) -> Result<(), BackendError> {
    if frame.len() < ETH_HEADER || frame.len() > max {
        return Err(BackendError::BadLength {
            len: frame.len(),
            max,
        });
    }
    Ok(())
}

/// A sink that queues frames for a reader (tests, benchmarks, the
/// benchmark's "direct" port). Holds at most `capacity` frames; more are
/// dropped and counted.
#[derive(Debug)]
pub struct CollectSink {
    q: Mutex<CollectState>,
    cv: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CollectState {
    frames: VecDeque<Vec<u8>>,
    received: u64,
    dropped: u64,
    /// When set, frames are only counted, not stored (benchmarks).
    count_only: bool,
}

impl CollectSink {
    /// A sink keeping up to `capacity` frames.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            q: Mutex::new(CollectState::default()),
            cv: Condvar::new(),
            capacity,
        })
    }

    /// A sink that only counts frames (benchmarks).
    pub fn counting() -> Arc<Self> {
        let s = Self::new(0);
        lock(&s.q).count_only = true;
        s
    }

    /// The next frame, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut g = lock(&self.q);
        loop {
            if let Some(f) = g.frames.pop_front() {
                return Some(f);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            g = match self.cv.wait_timeout(g, end - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// The next frame that `pred` accepts (others are discarded), waiting up
    /// to `timeout` in total.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            let f = self.recv(left)?;
            if pred(&f) {
                return Some(f);
            }
        }
    }

    /// Frames received so far (stored or not).
    pub fn received(&self) -> u64 {
        lock(&self.q).received
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.q).dropped
    }

    /// Wait until `received() >= n` or `timeout` passes; returns received().
    pub fn wait_received(&self, n: u64, timeout: Duration) -> u64 {
        let end = Instant::now() + timeout;
        let mut g = lock(&self.q);
        while g.received < n {
            let now = Instant::now();
            if now >= end {
                break;
            }
            g = match self.cv.wait_timeout(g, end - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        g.received
    }
}

impl FrameSink for CollectSink {
    fn deliver(&self, frame: &[u8]) {
        let mut g = lock(&self.q);
        g.received += 1;
        if !g.count_only {
            if g.frames.len() >= self.capacity {
                g.dropped += 1;
            } else {
                g.frames.push_back(frame.to_vec());
            }
        }
        drop(g);
        self.cv.notify_all();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address.
    pub const BROADCAST: Self = Self([0xFF; 6]);

    /// Group (multicast or broadcast) address: I/G bit set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// A locally administered unicast address derived from `seed` (02:xx..),
    /// stable for the same seed.
    pub fn local_from_seed(seed: u64) -> Self {
        // splitmix64: spreads consecutive seeds over the whole space.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        Self([0x02, 0x15, b[0], b[1], b[2], b[3]])
    }

    /// Destination MAC of a frame (None if shorter than a header).
    pub fn dst_of(frame: &[u8]) -> Option<Self> {
        frame.get(0..6).and_then(|b| b.try_into().ok()).map(Self)
    }

    /// Source MAC of a frame.
    pub fn src_of(frame: &[u8]) -> Option<Self> {
        frame.get(6..12).and_then(|b| b.try_into().ok()).map(Self)
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("{s:?}: expected a MAC like 02:15:00:00:00:01"));
        }
        let mut b = [0u8; 6];
        for (o, p) in b.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("{s:?}: {p:?} is not a hex byte"))?;
        }
        let m = Self(b);
        if m.is_multicast() {
            return Err(format!("{s:?}: a NIC address must be unicast"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:15:aa:bb:cc:0d".parse().unwrap();
        assert_eq!(m.to_string(), "02:15:aa:bb:cc:0d");
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err());
        assert!("02:15:aa:bb:cc".parse::<MacAddr>().is_err());
        assert!("02:15:aa:bb:cc:zz".parse::<MacAddr>().is_err());
        assert!("02:15:aa:bb:cc:0dd".parse::<MacAddr>().is_err());
        let a = MacAddr::local_from_seed(1);
        assert_eq!(a, MacAddr::local_from_seed(1));
        assert_ne!(a, MacAddr::local_from_seed(2));
        assert_eq!(a.0[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn collect_sink_bounds() {
        let s = CollectSink::new(2);
        for _ in 0..3 {
            s.deliver(&[0u8; 20]);
        }
        assert_eq!(s.received(), 3);
        assert_eq!(s.dropped(), 1);
        assert!(s.recv(Duration::from_millis(1)).is_some());
        assert!(s.recv(Duration::from_millis(1)).is_some());
        assert!(s.recv(Duration::from_millis(1)).is_none());
        assert!(check_len(&[0; 13], 100).is_err());
        assert!(check_len(&[0; 101], 100).is_err());
        assert!(check_len(&[0; 14], 100).is_ok());
    }
}
