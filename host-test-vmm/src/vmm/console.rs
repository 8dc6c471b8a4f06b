//! COM1: a `vm-superio` 16550 whose output goes to stdout, a file or nowhere,
//! and is also captured (bounded) so the report can parse the check lines.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};

use super::error::VmmError;
use super::report::{parse_check_line, GuestCheck};

/// COM1 base port.
pub const COM1: u16 = 0x3F8;
/// Captured console text kept for the caller (older text is dropped).
const CAPTURE_LIMIT: usize = 1 << 20;

/// Where the guest's serial output goes (besides the capture).
#[derive(Debug, Clone, Default)]
pub enum SerialOutput {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// The VMM's stderr (keeps stdout free for a JSON report).
    Stderr,
    /// A file (created or truncated).
    File(PathBuf),
    /// Only the capture.
    Null,
}

/// The serial interrupt line is not wired: guests poll the LSR, which is all the
/// bare-metal guests and an early Linux console need.
struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Serial text and the check lines parsed from it.
#[derive(Debug, Default)]
pub struct Capture {
    /// Console text (at most 1 MiB, the most recent part).
    pub text: String,
    /// Check lines in arrival order.
    pub checks: Vec<GuestCheck>,
    line: Vec<u8>,
}

impl Capture {
    fn push(&mut self, b: u8) {
        if b == b'\n' {
            let line = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_owned();
            if let Some(c) = parse_check_line(&line) {
                self.checks.push(c);
            }
            self.line.clear();
        } else if self.line.len() < 4096 {
            self.line.push(b);
        }
        self.text.push(char::from(b));
        if self.text.len() > CAPTURE_LIMIT {
            let cut = self.text.len() - CAPTURE_LIMIT / 2;
            let cut = (cut..self.text.len())
                .find(|i| self.text.is_char_boundary(*i))
                .unwrap_or(cut);
            self.text.drain(..cut);
        }
    }
}

struct ConsoleWriter {
    sink: Option<Box<dyn Write + Send>>,
    capture: Arc<Mutex<Capture>>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(s) = self.sink.as_mut() {
            s.write_all(buf)?;
            if buf.contains(&b'\n') {
                s.flush()?;
            }
        }
        let mut c = self.capture.lock().unwrap_or_else(|p| p.into_inner());
        buf.iter().for_each(|b| c.push(*b));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.as_mut().map_or(Ok(()), |s| s.flush())
    }
}

/// COM1 device shared by all vCPU threads.
pub struct Console {
    serial: Mutex<Serial<NoIrq, vm_superio::serial::NoEvents, ConsoleWriter>>,
    capture: Arc<Mutex<Capture>>,
}

impl Console {
    pub(crate) fn new(out: &SerialOutput) -> Result<Self, VmmError> {
        let sink: Option<Box<dyn Write + Send>> = match out {
            SerialOutput::Stdout => Some(Box::new(io::stdout())),
            SerialOutput::Stderr => Some(Box::new(io::stderr())),
            SerialOutput::File(path) => Some(Box::new(io::BufWriter::new(
                std::fs::File::create(path).map_err(|source| VmmError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            ))),
            SerialOutput::Null => None,
        };
        let capture = Arc::new(Mutex::new(Capture::default()));
        let writer = ConsoleWriter {
            sink,
            capture: capture.clone(),
        };
        Ok(Self {
            serial: Mutex::new(Serial::new(NoIrq, writer)),
            capture,
        })
    }

    fn serial(
        &self,
    ) -> std::sync::MutexGuard<'_, Serial<NoIrq, vm_superio::serial::NoEvents, ConsoleWriter>> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Guest OUT to COM1 + `offset`.
    pub(crate) fn write(&self, offset: u8, value: u8) {
        if let Err(e) = self.serial().write(offset, value) {
            tracing::warn!(error = ?e, "serial output failed");
        }
    }

    /// Guest IN from COM1 + `offset`.
    pub(crate) fn read(&self, offset: u8) -> u8 {
        self.serial().read(offset)
    }

    /// Flushes the output sink.
    pub(crate) fn flush(&self) {
        let _ = self.serial().writer_mut().flush();
    }

    /// Console text so far.
    pub fn text(&self) -> String {
        self.capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .text
            .clone()
    }

    /// Check lines so far.
    pub fn checks(&self) -> Vec<GuestCheck> {
        self.capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checks
            .clone()
    }

    /// Forgets the checks of a previous boot (after a reset).
    pub(crate) fn clear_checks(&self) {
        self.capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checks
            .clear();
    }
}
