//! The net exercise: what `demo` does on the host side so the test guest's
//! network checks have something to see, and the evidence the report checks
//! them against ([`NetReport`]).
//!
//! - **Link toggle**: once a NIC's guest has brought RNDIS up and set its
//!   packet filter (the last step of its bring-up: the guest is ready), wait
//!   [`ExerciseConfig::delay`], set the link down, hold it
//!   [`ExerciseConfig::down_for`], set it up again: the guest's `net-link`
//!   must see both indications. Once per NIC.
//! - **Peer**: optionally owns the [`Peer`] (demo: on the demo switch), so
//!   its counters end up in the report.
//!
//! A polling thread (20 ms) watches the NICs' counters; it stops when the
//! exercise is dropped.

use super::backend::lock;
use super::netvsp::{NetStats, Nic};
use super::peer::{Peer, PeerStats};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Exercise settings.
#[derive(Debug, Clone, Copy)]
pub struct ExerciseConfig {
    /// Toggle the link (off: `net-link` must fail, for tests).
    pub toggle_link: bool,
    /// From "guest ready" to link down.
    pub delay: Duration,
    /// How long the link stays down.
    pub down_for: Duration,
}

impl Default for ExerciseConfig {
    fn default() -> Self {
        Self {
            toggle_link: true,
            delay: Duration::from_millis(100),
            down_for: Duration::from_millis(300),
        }
    }
}

/// One NIC in the report.
#[derive(Debug, Clone, Serialize)]
pub struct NicReport {
    /// Its name (net0, ...).
    pub name: String,
    /// The MAC the host configured.
    pub mac: String,
    /// The exercise set its link down and up again.
    pub link_toggled: bool,
    /// Its counters.
    pub stats: NetStats,
}

/// The network evidence for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NetReport {
    /// Every NIC of the partition.
    pub nics: Vec<NicReport>,
    /// The peer's counters, when the partition's switch has one.
    pub peer: Option<PeerStats>,
}

struct Inner {
    nics: Vec<Arc<Nic>>,
    toggled: Mutex<Vec<bool>>,
    stop: AtomicBool,
}

/// The exercise (see the module docs).
pub struct NetExercise {
    inner: Arc<Inner>,
    peer: Option<Peer>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NetExercise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetExercise")
            .field("nics", &self.inner.nics.len())
            .field("peer", &self.peer.is_some())
            .finish()
    }
}

impl NetExercise {
    /// Starts the exercise on `nics`, keeping `peer` for the report.
    pub fn start(
        nics: Vec<Arc<Nic>>,
        peer: Option<Peer>,
        cfg: ExerciseConfig,
    ) -> Result<Arc<Self>, std::io::Error> {
        let inner = Arc::new(Inner {
            toggled: Mutex::new(vec![false; nics.len()]),
            nics,
            stop: AtomicBool::new(false),
        });
        let thread = if cfg.toggle_link && !inner.nics.is_empty() {
            let i = Arc::clone(&inner);
            Some(
                std::thread::Builder::new()
                    .name("hvkit-net-exercise".into())
                    .spawn(move || toggle_links(&i, cfg))?,
            )
        } else {
            None
        };
        Ok(Arc::new(Self {
            inner,
            peer,
            thread: Mutex::new(thread),
        }))
    }

    /// The evidence so far.
    pub fn report(&self) -> NetReport {
        let toggled = lock(&self.inner.toggled).clone();
        NetReport {
            nics: self
                .inner
                .nics
                .iter()
                .zip(toggled)
                .map(|(n, t)| nic_report(n, t))
                .collect(),
            peer: self.peer.as_ref().map(Peer::stats),
        }
    }
}

/// A NIC's part of the report.
pub fn nic_report(n: &Nic, link_toggled: bool) -> NicReport {
    NicReport {
        name: n.name().to_owned(),
        mac: n.mac().to_string(),
        link_toggled,
        stats: n.stats(),
    }
}

impl Drop for NetExercise {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn toggle_links(inner: &Inner, cfg: ExerciseConfig) {
    let tick = Duration::from_millis(20);
    let mut ready_at: Vec<Option<Instant>> = vec![None; inner.nics.len()];
    let stopped = || inner.stop.load(Ordering::SeqCst);
    while !stopped() {
        let mut all_done = true;
        for (i, nic) in inner.nics.iter().enumerate() {
            if lock(&inner.toggled)[i] {
                continue;
            }
            all_done = false;
            let s = nic.stats();
            if !(s.rndis_ready && s.packet_filter != 0) {
                continue;
            }
            let at = *ready_at[i].get_or_insert_with(Instant::now);
            if at.elapsed() < cfg.delay {
                continue;
            }
            tracing::info!(nic = nic.name(), "net exercise: link down");
            nic.set_link(false);
            let down = Instant::now();
            while down.elapsed() < cfg.down_for && !stopped() {
                std::thread::sleep(tick);
            }
            nic.set_link(true);
            tracing::info!(nic = nic.name(), "net exercise: link up");
            lock(&inner.toggled)[i] = true;
        }
        if all_done {
            return;
        }
        std::thread::sleep(tick);
    }
}
