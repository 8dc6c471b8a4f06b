//! Errors a user of the partition layer can act on.

use std::path::PathBuf;

/// Everything that can stop a partition from being created or run.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The KVM device node is missing.
    #[error("/dev/kvm does not exist: this machine offers no KVM (load kvm_intel, kvm_amd or kvm_pvm, or run on a host with virtualization enabled)")]
    NoKvm,
    /// The KVM device node exists but cannot be opened by this user.
    #[error("permission denied opening /dev/kvm: run as root or add this user to the group owning /dev/kvm (usually `kvm`)")]
    KvmPermission,
    /// Opening /dev/kvm failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// What the VMM tried to do.
        op: &'static str,
        /// The errno KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// This KVM lacks a capability the partition needs.
    #[error("this KVM lacks {0}, which the partition needs")]
    MissingCapability(&'static str),
    /// The kernel image could not be read.
    #[error("cannot read guest image {path}: {source}")]
    ReadImage {
        /// The path given by the user.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The guest image is not a loadable ELF64 x86_64 executable.
    #[error("bad guest ELF: {0}")]
    BadElf(String),
    /// A PT_LOAD segment lies (partly) outside guest RAM.
    #[error("bad guest ELF: segment {index} at {start:#x}..{end:#x} lies outside guest RAM (0..{ram:#x}); give the guest more memory or relink it")]
    SegmentOutsideRam {
        /// Program header index.
        index: usize,
        /// First guest-physical byte.
        start: u64,
        /// One past the last guest-physical byte.
        end: u64,
        /// RAM size.
        ram: u64,
    },
    /// A PT_LOAD segment reaches below 1 MiB, which belongs to the VMM.
    #[error("bad guest ELF: segment {index} starts at {start:#x}, below 1 MiB (0x100000), which the VMM uses for GDT, page tables and stacks; link the guest at or above 1 MiB")]
    SegmentBelow1MiB {
        /// Program header index.
        index: usize,
        /// First guest-physical byte.
        start: u64,
    },
    /// Requested RAM is below what the boot protocol needs.
    #[error("too little memory: {requested} bytes requested, at least {minimum} bytes are needed")]
    TooLittleMemory {
        /// Requested RAM size.
        requested: u64,
        /// Smallest accepted RAM size.
        minimum: u64,
    },
    /// Requested RAM overlaps the MMIO hole below 4 GiB.
    #[error("too much memory: {requested} bytes requested, at most {maximum} bytes are supported (RAM must end below the LAPIC/MMIO hole)")]
    TooMuchMemory {
        /// Requested RAM size.
        requested: u64,
        /// Largest accepted RAM size.
        maximum: u64,
    },
    /// The vCPU count is outside what the boot protocol supports.
    #[error("unsupported vCPU count {requested}: the boot protocol supports 1..={maximum}")]
    BadCpuCount {
        /// Requested count.
        requested: u32,
        /// Largest supported count.
        maximum: u32,
    },
    /// Guest memory could not be allocated or written.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The serial output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        /// Path given by the user.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Hyper-V emulation could not be created.
    #[error("Hyper-V emulation: {0}")]
    Hv(String),
    /// A vCPU thread could not be spawned.
    #[error("cannot spawn vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A lifecycle operation was called in the wrong state.
    #[error("partition lifecycle: {0}")]
    Lifecycle(&'static str),
    /// A vCPU thread panicked.
    #[error("vCPU {0} thread panicked")]
    VcpuPanicked(u32),
    /// The VMBus trace file could not be created.
    #[error("cannot create the trace file {path}: {source}")]
    TraceFile {
        /// The path given with --trace.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest build for the demo failed.
    #[error("{0}")]
    Demo(String),
}

impl VmmError {
    /// Wraps a failed KVM ioctl with what the VMM was doing.
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Kvm { op, source }
    }
}
