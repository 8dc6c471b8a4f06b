//! Disk backends: where a LUN's blocks live.
//!
//! [`DiskBackend`] is the interface the SCSI target uses; I/O goes straight
//! between the backend and guest memory ([`VolatileSlice`]s of the request's
//! pages), so a file backend reads and writes guest pages with one
//! `preadv`/`pwritev` per request and no bounce buffer.
//!
//! - [`FileBackend`]: a raw image file (or block device).
//! - [`MemBackend`]: a RAM disk (tests, fuzzing).
//! - [`FaultyBackend`]: wraps another backend and fails chosen I/Os, so tests
//!   can show that a host I/O error reaches the guest as MEDIUM ERROR.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use vm_memory::VolatileSlice;

/// Guest memory segments of one transfer, in order.
pub type IoBufs<'a> = [VolatileSlice<'a>];

/// Total bytes of `bufs`.
pub fn io_len(bufs: &IoBufs<'_>) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// A disk's storage. Offsets and lengths are in bytes; callers (the SCSI
/// target) keep every access inside `0..len()`. Implementations must be
/// usable from several I/O threads at once.
pub trait DiskBackend: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the size is zero.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Writes are refused (the target answers DATA PROTECT before calling).
    fn readonly(&self) -> bool;
    /// Fill `bufs`, in order, from byte `offset`. A short read is an error.
    fn read_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()>;
    /// Write `bufs`, in order, at byte `offset`.
    fn write_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()>;
    /// Make every completed write durable (fdatasync for a file).
    fn flush(&self) -> io::Result<()>;
    /// Forget `len` bytes at `offset`; they read back as zeros afterwards.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// A name for logs (the image path).
    fn describe(&self) -> String;
}

/// Largest iovec count per syscall (Linux UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// A raw image file or block device.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    path: PathBuf,
    len: u64,
    readonly: bool,
}

impl FileBackend {
    /// Open `path` (read-write unless `readonly`). The size is taken now;
    /// an empty image is refused (a disk needs at least one block).
    pub fn open(path: &Path, readonly: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!readonly).open(path)?;
        // Seeking works for block devices too, where the metadata length is 0.
        let len = {
            use std::io::Seek;
            let mut f = &file;
            f.seek(io::SeekFrom::End(0))?
        };
        if len < 512 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: image smaller than one 512-byte block", path.display()),
            ));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
            readonly,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vectored positional transfer of every byte of `bufs`, retrying
    /// partial transfers (a read returning 0 before the end is an error).
    fn transfer(&self, mut offset: u64, bufs: &IoBufs<'_>, write: bool) -> io::Result<()> {
        // (slice index, bytes of it already done)
        let mut idx = 0usize;
        let mut done_in = 0usize;
        while idx < bufs.len() {
            let n_iov = (bufs.len() - idx).min(IOV_MAX);
            // The guards keep the pointers valid until the syscall is done.
            let guards: Vec<_> = bufs[idx..idx + n_iov]
                .iter()
                .map(|b| b.ptr_guard_mut())
                .collect();
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(n_iov);
            for (k, (b, g)) in bufs[idx..idx + n_iov].iter().zip(&guards).enumerate() {
                let skip = if k == 0 { done_in } else { 0 };
                iov.push(libc::iovec {
                    // SAFETY: `skip` < b.len() (finished slices are skipped
                    // below), so the pointer stays inside the slice.
                    iov_base: unsafe { g.as_ptr().add(skip) }.cast(),
                    iov_len: b.len() - skip,
                });
            }
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            let cnt = libc::c_int::try_from(iov.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: every iovec points into a VolatileSlice of guest memory
            // that stays mapped while `bufs` is borrowed (and its guard lives); the kernel reads or
            // writes at most iov_len bytes of each. Guest memory may change
            // concurrently, which is fine for raw byte transfers.
            let n = unsafe {
                if write {
                    libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), cnt, off)
                } else {
                    libc::preadv(self.file.as_raw_fd(), iov.as_ptr(), cnt, off)
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            drop(guards);
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: end of image", self.path.display()),
                ));
            }
            let mut n = n as usize;
            offset += n as u64;
            while n > 0 && idx < bufs.len() {
                let left = bufs[idx].len() - done_in;
                if n >= left {
                    n -= left;
                    idx += 1;
                    done_in = 0;
                } else {
                    done_in += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

impl DiskBackend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn read_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        self.transfer(offset, bufs, false)
    }

    fn write_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only image",
            ));
        }
        self.transfer(offset, bufs, true)
    }

    fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only image",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let (o, l) = (
            libc::off_t::try_from(offset)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?,
            libc::off_t::try_from(len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?,
        );
        // SAFETY: fallocate on our own descriptor with plain integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                o,
                l,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
        // No hole punching here (some filesystems, block devices): zeros keep
        // the "reads back as zeros" promise.
        let zeros = vec![0u8; 64 * 1024];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A disk in host RAM.
#[derive(Debug)]
pub struct MemBackend {
    data: RwLock<Vec<u8>>,
    readonly: bool,
}

impl MemBackend {
    /// A zeroed disk of `len` bytes.
    pub fn new(len: usize, readonly: bool) -> Self {
        Self {
            data: RwLock::new(vec![0; len]),
            readonly,
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn range_of(offset: u64, len: u64, size: usize) -> io::Result<Range<usize>> {
    let start = usize::try_from(offset).ok();
    let end = offset
        .checked_add(len)
        .and_then(|e| usize::try_from(e).ok());
    match (start, end) {
        (Some(s), Some(e)) if e <= size => Ok(s..e),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "access past the end of the disk",
        )),
    }
}

impl DiskBackend for MemBackend {
    fn len(&self) -> u64 {
        self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn readonly(&self) -> bool {
        self.readonly
    }

    fn read_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let mut at = range_of(offset, io_len(bufs), d.len())?.start;
        for b in bufs {
            b.copy_from(&d[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "read-only disk",
            ));
        }
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let size = d.len();
        let mut at = range_of(offset, io_len(bufs), size)?.start;
        for b in bufs {
            b.copy_to(&mut d[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        let size = d.len();
        let r = range_of(offset, len, size)?;
        d[r].fill(0);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

/// Which operations of a [`FaultyBackend`] fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Reads overlapping any of these byte ranges fail.
    pub reads: Vec<Range<u64>>,
    /// Writes overlapping any of these byte ranges fail.
    pub writes: Vec<Range<u64>>,
    /// Every flush fails.
    pub flush: bool,
    /// Every discard fails.
    pub discard: bool,
}

fn overlaps(ranges: &[Range<u64>], offset: u64, len: u64) -> bool {
    let end = offset.saturating_add(len.max(1));
    ranges.iter().any(|r| r.start < end && offset < r.end)
}

/// Wraps a backend and fails the I/Os a [`FaultPlan`] names with EIO
/// (nothing is transferred for a failed I/O).
pub struct FaultyBackend {
    inner: Box<dyn DiskBackend>,
    plan: Mutex<FaultPlan>,
    injected: AtomicU64,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner.describe())
            .field(
                "plan",
                &*self.plan.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl FaultyBackend {
    /// `inner` with no faults planned yet.
    pub fn new(inner: Box<dyn DiskBackend>) -> Self {
        Self {
            inner,
            plan: Mutex::new(FaultPlan::default()),
            injected: AtomicU64::new(0),
        }
    }

    /// Replace the fault plan (takes effect for the next I/O).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// How many I/Os were failed on purpose.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn fail(&self, what: &str) -> io::Error {
        self.injected.fetch_add(1, Ordering::SeqCst);
        io::Error::other(format!("injected {what} fault (EIO)"))
    }

    fn plan(&self) -> FaultPlan {
        self.plan.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl DiskBackend for FaultyBackend {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn readonly(&self) -> bool {
        self.inner.readonly()
    }

    fn read_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        if overlaps(&self.plan().reads, offset, io_len(bufs)) {
            return Err(self.fail("read"));
        }
        self.inner.read_at(offset, bufs)
    }

    fn write_at(&self, offset: u64, bufs: &IoBufs<'_>) -> io::Result<()> {
        if overlaps(&self.plan().writes, offset, io_len(bufs)) {
            return Err(self.fail("write"));
        }
        self.inner.write_at(offset, bufs)
    }

    fn flush(&self) -> io::Result<()> {
        if self.plan().flush {
            return Err(self.fail("flush"));
        }
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.plan().discard {
            return Err(self.fail("discard"));
        }
        self.inner.discard(offset, len)
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A fresh path in the temp directory.
    pub(crate) fn temp_path(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::env::temp_dir().join(format!(
            "hvkit-storage-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::temp_path;
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn file_vectored_round_trip_and_discard() {
        let p = temp_path("file");
        std::fs::write(&p, vec![0xEEu8; 64 * 1024]).unwrap();
        let b = FileBackend::open(&p, false).unwrap();
        assert_eq!(b.len(), 64 * 1024);
        let m = mem();
        // Three scattered guest segments of odd sizes.
        let segs = [(0x1000u64, 100usize), (0x5000, 4096), (0x9000, 924)];
        for (i, (gpa, len)) in segs.iter().enumerate() {
            let data: Vec<u8> = (0..*len).map(|k| (k + i * 7) as u8).collect();
            m.get_slice(GuestAddress(*gpa), *len)
                .unwrap()
                .copy_from(&data);
        }
        let slices: Vec<_> = segs
            .iter()
            .map(|(g, l)| m.get_slice(GuestAddress(*g), *l).unwrap())
            .collect();
        b.write_at(512, &slices).unwrap();
        b.flush().unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw[511], 0xEE);
        assert_eq!(raw[512], 0);
        assert_eq!(raw[512 + 100], 7);
        assert_eq!(raw[512 + 100 + 4096 + 923], (923 + 14) as u8);
        assert_eq!(raw[512 + 5120], 0xEE);
        // Read back into other guest pages.
        let back: Vec<_> = [(0x20000u64, 5120usize)]
            .iter()
            .map(|(g, l)| m.get_slice(GuestAddress(*g), *l).unwrap())
            .collect();
        b.read_at(512, &back).unwrap();
        let mut got = vec![0u8; 5120];
        back[0].copy_to(&mut got[..]);
        assert_eq!(&got[..], &raw[512..512 + 5120]);
        // Past the end: error, not a silent short read.
        let tail = [m.get_slice(GuestAddress(0x30000), 1024).unwrap()];
        assert!(b.read_at(64 * 1024 - 512, &tail).is_err());
        // Punch a hole: zeros, size kept.
        b.discard(4096, 8192).unwrap();
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw.len(), 64 * 1024);
        assert!(raw[4096..12288].iter().all(|&x| x == 0));
        assert_eq!(raw[12288], 0xEE);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn readonly_and_tiny_images() {
        let p = temp_path("ro");
        std::fs::write(&p, vec![1u8; 4096]).unwrap();
        let b = FileBackend::open(&p, true).unwrap();
        assert!(b.readonly());
        let m = mem();
        let s = [m.get_slice(GuestAddress(0), 512).unwrap()];
        assert!(b.write_at(0, &s).is_err());
        assert!(b.discard(0, 512).is_err());
        b.read_at(0, &s).unwrap();
        std::fs::write(&p, [0u8; 100]).unwrap();
        assert!(FileBackend::open(&p, false).is_err());
        std::fs::remove_file(&p).ok();
        assert!(FileBackend::open(&p, false).is_err());
    }

    #[test]
    fn faults_hit_only_planned_ranges() {
        let f = FaultyBackend::new(Box::new(MemBackend::new(8192, false)));
        f.set_plan(FaultPlan {
            reads: std::iter::once(4096..4608).collect(),
            writes: std::iter::once(0..1).collect(),
            flush: true,
            discard: false,
        });
        let m = mem();
        let s = [m.get_slice(GuestAddress(0), 512).unwrap()];
        assert!(f.read_at(0, &s).is_ok());
        assert!(f.read_at(4096 - 256, &s).is_err());
        assert!(f.write_at(0, &s).is_err());
        assert!(f.write_at(512, &s).is_ok());
        assert!(f.flush().is_err());
        assert!(f.discard(0, 512).is_ok());
        assert_eq!(f.injected(), 3);
    }
}
