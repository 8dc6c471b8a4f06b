//! The in-VMM L2 switch: guests of this process (and test/benchmark ports)
//! exchange Ethernet frames without the host kernel.
//!
//! A learning switch: the source MAC of every frame is recorded against the
//! port it came in on; a frame to a known unicast MAC goes to that port
//! only, a frame to a broadcast/multicast or unknown MAC is flooded to every
//! other port. Frames are delivered synchronously on the sender's thread
//! (no queue in the switch: the receiving NIC's own buffers are the queue,
//! and it drops and counts when they are full). Entries age out after
//! [`AGE`], and move when a MAC shows up on another port.

use super::backend::{check_len, lock, BackendError, FrameBackend, FrameSink, MacAddr, MAX_FRAME};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long a learned MAC stays in the table without traffic.
pub const AGE: Duration = Duration::from_secs(300);
/// MACs learned at most (a guest spraying source MACs cannot grow it
/// without bound; when full, unknown sources are not learned and their
/// replies are flooded).
pub const MAX_MACS: usize = 4096;

/// Switch counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwitchStats {
    /// Frames that entered the switch.
    pub frames_in: u64,
    /// Frame copies handed to ports.
    pub frames_out: u64,
    /// Frames flooded (broadcast, multicast, unknown destination).
    pub flooded: u64,
    /// Frames dropped (bad length, destination is the sender's own port).
    pub dropped: u64,
    /// MACs in the table.
    pub macs: usize,
    /// Ports attached.
    pub ports: usize,
}

struct PortEntry {
    name: String,
    sink: Option<Arc<dyn FrameSink>>,
}

#[derive(Default)]
struct Inner {
    ports: BTreeMap<u32, PortEntry>,
    next_port: u32,
    table: HashMap<MacAddr, (u32, Instant)>,
    stats: SwitchStats,
}

/// A learning L2 switch. Create ports with [`Switch::port`].
pub struct Switch {
    name: String,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("name", &self.name).finish()
    }
}

impl Switch {
    /// A switch with no ports.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The switch's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attach a new port; it is detached when the returned port is dropped.
    pub fn port(self: &Arc<Self>, name: &str) -> SwitchPort {
        let mut g = lock(&self.inner);
        let id = g.next_port;
        g.next_port += 1;
        g.ports.insert(
            id,
            PortEntry {
                name: name.to_owned(),
                sink: None,
            },
        );
        tracing::debug!(switch = %self.name, port = id, name, "switch: port attached");
        SwitchPort {
            switch: Arc::downgrade(self),
            id,
            desc: format!("switch:{}/{}", self.name, name),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SwitchStats {
        let g = lock(&self.inner);
        SwitchStats {
            macs: g.table.len(),
            ports: g.ports.len(),
            ..g.stats.clone()
        }
    }

    /// The learned table: (MAC, port name).
    pub fn table(&self) -> Vec<(MacAddr, String)> {
        let g = lock(&self.inner);
        let mut v: Vec<_> = g
            .table
            .iter()
            .filter_map(|(m, (p, _))| g.ports.get(p).map(|e| (*m, e.name.clone())))
            .collect();
        v.sort();
        v
    }

    fn forward(&self, from: u32, frame: &[u8]) -> Result<(), BackendError> {
        if let Err(e) = check_len(frame, MAX_FRAME) {
            lock(&self.inner).stats.dropped += 1;
            return Err(e);
        }
        let (Some(dst), Some(src)) = (MacAddr::dst_of(frame), MacAddr::src_of(frame)) else {
            return Err(BackendError::BadLength {
                len: frame.len(),
                max: MAX_FRAME,
            });
        };
        // Collect the receivers under the lock, deliver outside it: a sink
        // may take its own locks and must never wait for the switch's.
        let mut out: Vec<Arc<dyn FrameSink>> = Vec::new();
        {
            let mut g = lock(&self.inner);
            let now = Instant::now();
            g.stats.frames_in += 1;
            if !src.is_multicast() && (g.table.len() < MAX_MACS || g.table.contains_key(&src)) {
                g.table.insert(src, (from, now));
            }
            let known = if dst.is_multicast() {
                None
            } else {
                match g.table.get(&dst) {
                    Some((p, t)) if now.duration_since(*t) < AGE => Some(*p),
                    Some(_) => {
                        g.table.remove(&dst);
                        None
                    }
                    None => None,
                }
            };
            match known {
                Some(p) if p == from => {
                    // The destination sits behind the sender's own port.
                    g.stats.dropped += 1;
                    return Ok(());
                }
                Some(p) => {
                    if let Some(s) = g.ports.get(&p).and_then(|e| e.sink.clone()) {
                        out.push(s);
                    }
                }
                None => {
                    g.stats.flooded += 1;
                    out.extend(
                        g.ports
                            .iter()
                            .filter(|(id, _)| **id != from)
                            .filter_map(|(_, e)| e.sink.clone()),
                    );
                }
            }
            g.stats.frames_out += out.len() as u64;
        }
        for s in out {
            s.deliver(frame);
        }
        Ok(())
    }
}

/// One port of a [`Switch`]: a [`FrameBackend`] for a NIC, or a port a test
/// or benchmark sends and receives on directly (with a
/// [`super::backend::CollectSink`]).
pub struct SwitchPort {
    switch: Weak<Switch>,
    id: u32,
    desc: String,
}

impl std::fmt::Debug for SwitchPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.desc)
    }
}

impl FrameBackend for SwitchPort {
    fn describe(&self) -> String {
        self.desc.clone()
    }

    fn send(&self, frame: &[u8]) -> Result<(), BackendError> {
        let s = self.switch.upgrade().ok_or(BackendError::LinkDown)?;
        s.forward(self.id, frame)
    }

    fn set_sink(&self, sink: Option<Arc<dyn FrameSink>>) {
        if let Some(s) = self.switch.upgrade() {
            if let Some(e) = lock(&s.inner).ports.get_mut(&self.id) {
                e.sink = sink;
            }
        }
    }

    fn link_up(&self) -> bool {
        self.switch.strong_count() > 0
    }
}

impl Drop for SwitchPort {
    fn drop(&mut self) {
        if let Some(s) = self.switch.upgrade() {
            let mut g = lock(&s.inner);
            g.ports.remove(&self.id);
            let id = self.id;
            g.table.retain(|_, (p, _)| *p != id);
        }
    }
}

/// Switches by name, for `--net switch=NAME`: NICs naming the same switch
/// share it.
#[derive(Debug, Default)]
pub struct SwitchRegistry {
    switches: Mutex<BTreeMap<String, Arc<Switch>>>,
}

impl SwitchRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The switch called `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<Switch> {
        Arc::clone(
            lock(&self.switches)
                .entry(name.to_owned())
                .or_insert_with(|| Switch::new(name)),
        )
    }

    /// All switches.
    pub fn all(&self) -> Vec<Arc<Switch>> {
        lock(&self.switches).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::CollectSink;
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12] = 0x88;
        f[13] = 0xB5;
        f[14] = tag;
        f
    }

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xA];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xB];
    const C: [u8; 6] = [2, 0, 0, 0, 0, 0xC];
    const T: Duration = Duration::from_millis(10);

    fn setup() -> (Arc<Switch>, Vec<(SwitchPort, Arc<CollectSink>)>) {
        let sw = Switch::new("t");
        let ports = (0..3)
            .map(|i| {
                let p = sw.port(&format!("p{i}"));
                let s = CollectSink::new(16);
                p.set_sink(Some(s.clone()));
                (p, s)
            })
            .collect();
        (sw, ports)
    }

    #[test]
    fn floods_unknown_then_learns() {
        let (sw, p) = setup();
        // A (port 0) to unknown B: flooded to ports 1 and 2.
        p[0].0.send(&frame(B, A, 1)).unwrap();
        assert_eq!(p[1].1.recv(T).unwrap()[14], 1);
        assert_eq!(p[2].1.recv(T).unwrap()[14], 1);
        assert!(p[0].1.recv(T).is_none(), "never back to the sender");
        // B answers from port 1: A is known, only port 0 gets it.
        p[1].0.send(&frame(A, B, 2)).unwrap();
        assert_eq!(p[0].1.recv(T).unwrap()[14], 2);
        assert!(p[2].1.recv(T).is_none());
        // Now B is known too.
        p[0].0.send(&frame(B, A, 3)).unwrap();
        assert_eq!(p[1].1.recv(T).unwrap()[14], 3);
        assert!(p[2].1.recv(T).is_none());
        let st = sw.stats();
        assert_eq!(st.frames_in, 3);
        assert_eq!(st.flooded, 1);
        assert_eq!(st.frames_out, 4);
        assert_eq!(st.macs, 2);
        assert_eq!(sw.table().len(), 2);
    }

    #[test]
    fn broadcast_and_multicast_flood() {
        let (_sw, p) = setup();
        p[1].0.send(&frame(B, C, 0)).unwrap(); // learn C on port 1... then
        p[2].1.recv(T);
        p[0].1.recv(T);
        p[0].0.send(&frame([0xFF; 6], A, 7)).unwrap();
        assert!(p[1].1.recv(T).is_some() && p[2].1.recv(T).is_some());
        p[0].0.send(&frame([1, 0, 0x5e, 0, 0, 1], A, 8)).unwrap();
        assert!(p[1].1.recv(T).is_some() && p[2].1.recv(T).is_some());
        assert!(p[0].1.recv(T).is_none());
    }

    #[test]
    fn mac_moves_and_port_removal() {
        let (sw, mut p) = setup();
        p[0].0.send(&frame(B, A, 0)).unwrap();
        // A moves to port 2.
        p[2].0.send(&frame(B, A, 0)).unwrap();
        for x in &p {
            while x.1.recv(Duration::ZERO).is_some() {}
        }
        p[1].0.send(&frame(A, B, 9)).unwrap();
        assert_eq!(p[2].1.recv(T).unwrap()[14], 9);
        assert!(p[0].1.recv(T).is_none());
        // Port 2 goes away: A is forgotten, frames to it flood.
        let gone = p.remove(2);
        drop(gone);
        assert_eq!(sw.stats().ports, 2);
        p[1].0.send(&frame(A, B, 10)).unwrap();
        assert_eq!(p[0].1.recv(T).unwrap()[14], 10);
    }

    #[test]
    fn bad_frames_and_dead_switch() {
        let (sw, p) = setup();
        assert!(p[0].0.send(&[0u8; 10]).is_err());
        assert!(p[0].0.send(&vec![0u8; MAX_FRAME + 1]).is_err());
        assert_eq!(sw.stats().dropped, 2);
        // Same-port destination is dropped silently.
        p[0].0.send(&frame(B, A, 0)).unwrap();
        p[0].0.send(&frame(A, C, 0)).unwrap();
        assert_eq!(sw.stats().dropped, 3);
        let (p0, _) = p.into_iter().next().unwrap();
        drop(sw);
        assert!(!p0.link_up());
        assert!(matches!(
            p0.send(&frame(B, A, 0)),
            Err(BackendError::LinkDown)
        ));
    }

    #[test]
    fn table_is_bounded() {
        let sw = Switch::new("b");
        let p = sw.port("spray");
        for i in 0..(MAX_MACS as u32 + 100) {
            let b = i.to_be_bytes();
            p.send(&frame([0xFF; 6], [2, 0, b[0], b[1], b[2], b[3]], 0))
                .unwrap();
        }
        assert_eq!(sw.stats().macs, MAX_MACS);
    }

    #[test]
    fn registry_shares_by_name() {
        let r = SwitchRegistry::new();
        assert!(Arc::ptr_eq(&r.get("a"), &r.get("a")));
        assert!(!Arc::ptr_eq(&r.get("a"), &r.get("b")));
        assert_eq!(r.all().len(), 2);
    }
}
