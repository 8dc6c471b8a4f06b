//! The VMBus trace: one JSON object per line for every control message and
//! every ring packet the server sees or sends, decoded, for
//! `host-test-vmm run --trace FILE`.
//!
//! Line shape: `{"t_us": <µs since the writer was made>, "dir": "g2h"|"h2g",
//! "kind": "message"|"packet", "type": <name>, "relid": <n>, ...fields}`.

use serde_json::{Map, Value};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Direction of a traced item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Guest to host.
    GuestToHost,
    /// Host to guest.
    HostToGuest,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Dir::GuestToHost => "g2h",
            Dir::HostToGuest => "h2g",
        }
    }
}

/// A sink of trace lines. Cheap to share (`Arc<TraceWriter>`); writes are
/// serialized by an internal lock.
pub struct TraceWriter {
    out: Mutex<Box<dyn Write + Send>>,
    start: Instant,
    /// A write failed (logged once; later lines are still attempted).
    failed: AtomicBool,
}

impl std::fmt::Debug for TraceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceWriter").finish_non_exhaustive()
    }
}

impl TraceWriter {
    /// A writer into any byte sink.
    pub fn new(out: impl Write + Send + 'static) -> Self {
        Self {
            out: Mutex::new(Box::new(out)),
            start: Instant::now(),
            failed: AtomicBool::new(false),
        }
    }

    /// Create (truncate) `path` and trace into it (buffered; flushed by
    /// [`TraceWriter::flush`], by the server's shutdown and on drop).
    pub fn to_file(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let f = std::fs::File::create(path)?;
        Ok(Self::new(BufWriter::new(f)))
    }

    /// A writer into memory, and the buffer to read the lines back (tests).
    pub fn in_memory() -> (Self, TraceBuffer) {
        let buf = TraceBuffer::default();
        (Self::new(buf.clone()), buf)
    }

    /// Flush buffered lines.
    pub fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.flush() {
            tracing::warn!(error = %e, "VMBus trace flush failed");
        }
    }

    /// Write one line: the common fields plus `fields` (an object).
    pub(crate) fn record(
        &self,
        dir: Dir,
        kind: &str,
        type_name: &str,
        relid: Option<u32>,
        fields: Value,
    ) {
        let mut obj = Map::new();
        obj.insert(
            "t_us".into(),
            Value::from(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)),
        );
        obj.insert("dir".into(), Value::from(dir.as_str()));
        obj.insert("kind".into(), Value::from(kind));
        obj.insert("type".into(), Value::from(type_name));
        if let Some(r) = relid {
            obj.insert("relid".into(), Value::from(r));
        }
        if let Value::Object(f) = fields {
            for (k, v) in f {
                obj.entry(k).or_insert(v);
            }
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = out.write_all(line.as_bytes()) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "VMBus trace write failed (reported once)");
            }
        }
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The in-memory target of [`TraceWriter::in_memory`].
#[derive(Debug, Clone, Default)]
pub struct TraceBuffer(Arc<Mutex<Vec<u8>>>);

impl TraceBuffer {
    /// Every line written so far, parsed.
    pub fn lines(&self) -> Vec<Value> {
        let b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Write for TraceBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex of up to the first `max` bytes (payload previews).
pub(crate) fn hex_preview(b: &[u8], max: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len().min(max) * 2);
    for x in b.iter().take(max) {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_objects() {
        let (w, buf) = TraceWriter::in_memory();
        w.record(
            Dir::GuestToHost,
            "message",
            "InitiateContact",
            None,
            serde_json::json!({"version": "5.3"}),
        );
        w.record(
            Dir::HostToGuest,
            "packet",
            "DataInband",
            Some(3),
            serde_json::json!({"len": 40, "type": "ignored duplicate"}),
        );
        let l = buf.lines();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0]["dir"], "g2h");
        assert_eq!(l[0]["version"], "5.3");
        assert!(l[0].get("relid").is_none());
        assert_eq!(l[1]["relid"], 3);
        assert_eq!(l[1]["type"], "DataInband");
        assert_eq!(l[1]["len"], 40);
        assert_eq!(hex_preview(&[1, 0xab, 3], 2), "01ab");
    }

    #[test]
    fn file_writer() {
        let dir = std::env::temp_dir().join(format!("hvkit-trace-{}", std::process::id()));
        {
            let w = TraceWriter::to_file(&dir).unwrap();
            w.record(
                Dir::HostToGuest,
                "message",
                "AllOffersDelivered",
                None,
                Value::Null,
            );
        }
        let text = std::fs::read_to_string(&dir).unwrap();
        std::fs::remove_file(&dir).ok();
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["type"], "AllOffersDelivered");
    }
}
