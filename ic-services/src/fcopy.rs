//! Guest file copy (icmsgtype 7, fact sheet §7.4): the host starts a copy, sends the file in
//! fragments of up to [`DATA_FRAGMENT_SIZE`] bytes, then completes or cancels it; a [`FileSink`]
//! stores the data.
//!
//! Every body starts with the 36-byte [`FcopyHeader`] (operation and two unused service ids).
//! A WRITE, COMPLETE before any START is refused with E_FAIL; a START during a copy cancels the
//! previous copy first.
#![forbid(unsafe_code)]

use crate::framing::{IcMessageType, Status};
use crate::kvp::Utf16;
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use vmbus_guest::Guid;
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes of a file or path name array (260 UTF-16 units, `W_MAX_PATH`).
pub const NAME_SIZE: usize = 520;
/// The largest WRITE_TO_FILE fragment (`DATA_FRAGMENT`).
pub const DATA_FRAGMENT_SIZE: usize = 6144;

/// File copy operation (header offset 0): an open set.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(transparent)]
pub struct FcopyOperation(pub U32);

impl FcopyOperation {
    /// 0: START_FILE_COPY.
    pub const START_FILE_COPY: Self = Self(U32::new(0));
    /// 1: WRITE_TO_FILE.
    pub const WRITE_TO_FILE: Self = Self(U32::new(1));
    /// 2: COMPLETE_FCOPY.
    pub const COMPLETE_FCOPY: Self = Self(U32::new(2));
    /// 3: CANCEL_FCOPY.
    pub const CANCEL_FCOPY: Self = Self(U32::new(3));
}

/// The header of every file copy body (`hv_fcopy_hdr`, 36 bytes).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct FcopyHeader {
    /// Offset 0 (message 28).
    pub operation: FcopyOperation,
    /// Offset 4: unused service id.
    pub service_id0: Guid,
    /// Offset 20: unused service id.
    pub service_id1: Guid,
}

/// START_FILE_COPY body (`hv_start_fcopy`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct FcopyStart {
    /// Offset 0.
    pub header: FcopyHeader,
    /// Offset 36: file name, UTF-16LE, NUL-terminated.
    pub file_name: [u8; NAME_SIZE],
    /// Offset 556: directory, UTF-16LE, NUL-terminated.
    pub path_name: [u8; NAME_SIZE],
    /// Offset 1076: [`FcopyStart::OVERWRITE`], [`FcopyStart::CREATE_PATH`].
    pub copy_flags: U32,
    /// Offset 1080: file size.
    pub file_size: U64,
}

impl FcopyStart {
    /// copy_flags: overwrite an existing file.
    pub const OVERWRITE: u32 = 1;
    /// copy_flags: create missing directories.
    pub const CREATE_PATH: u32 = 2;
}

/// WRITE_TO_FILE body up to the data (`hv_do_fcopy` without `data`); `size` bytes of data follow
/// (the host sends the whole [`DATA_FRAGMENT_SIZE`] array).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct FcopyWriteHeader {
    /// Offset 0.
    pub header: FcopyHeader,
    /// Offset 36: padding.
    pub pad: U32,
    /// Offset 40: file offset.
    pub offset: U64,
    /// Offset 48: data bytes.
    pub size: U32,
}

/// The full WRITE_TO_FILE body size (header and the fragment array).
pub const WRITE_BODY_SIZE: usize = size_of::<FcopyWriteHeader>() + DATA_FRAGMENT_SIZE;

const _: () = {
    // Fact sheet §7.4: header = operation u32 + two 16-byte ids; START {file_name u16[260],
    // path_name u16[260], copy_flags u32, file_size u64}; WRITE {pad u32, offset u64, size u32,
    // data[6144]}.
    assert!(size_of::<FcopyHeader>() == 36);
    assert!(offset_of!(FcopyHeader, service_id0) == 4);
    assert!(offset_of!(FcopyHeader, service_id1) == 20);
    assert!(size_of::<FcopyStart>() == 1088);
    assert!(offset_of!(FcopyStart, file_name) == 36);
    assert!(offset_of!(FcopyStart, path_name) == 556);
    assert!(offset_of!(FcopyStart, copy_flags) == 1076);
    assert!(offset_of!(FcopyStart, file_size) == 1080);
    assert!(size_of::<FcopyWriteHeader>() == 52);
    assert!(offset_of!(FcopyWriteHeader, offset) == 40);
    assert!(offset_of!(FcopyWriteHeader, size) == 48);
    assert!(WRITE_BODY_SIZE == 6196);
};

/// Where copied files go.
pub trait FileSink {
    /// A copy starts: `file_name` in directory `path_name`, `copy_flags`, `file_size` bytes.
    fn start(
        &mut self,
        file_name: Utf16<'_>,
        path_name: Utf16<'_>,
        copy_flags: u32,
        file_size: u64,
    ) -> Result<(), Status>;
    /// A fragment at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Status>;
    /// The copy is complete.
    fn complete(&mut self) -> Result<(), Status>;
    /// The copy is abandoned (discard what was written).
    fn cancel(&mut self);
}

/// The guest file copy service.
#[derive(Debug)]
pub struct FileCopy<S> {
    sink: S,
    copying: bool,
}

impl<S: FileSink> FileCopy<S> {
    /// The service over `sink`.
    pub const fn new(sink: S) -> Self {
        Self {
            sink,
            copying: false,
        }
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// Whether a copy is in progress.
    pub fn copying(&self) -> bool {
        self.copying
    }
}

fn status(r: Result<(), Status>) -> Status {
    match r {
        Ok(()) => Status::OK,
        Err(s) if s.is_ok() => Status::E_FAIL,
        Err(s) => s,
    }
}

impl<S: FileSink> IcService for FileCopy<S> {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::FCOPY;
    const VERSIONS: ServiceVersions = ServiceVersions::FCOPY;

    fn handle_body(&mut self, _versions: Negotiated, body: &mut [u8]) -> Status {
        let Ok((header, _)) = FcopyHeader::ref_from_prefix(body) else {
            return Status::E_FAIL;
        };
        match header.operation {
            FcopyOperation::START_FILE_COPY => {
                let Ok((msg, _)) = FcopyStart::ref_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                if self.copying {
                    self.sink.cancel();
                    self.copying = false;
                }
                let name = Utf16::from_sized(&msg.file_name, NAME_SIZE as u32);
                let path = Utf16::from_sized(&msg.path_name, NAME_SIZE as u32);
                let (Some(name), Some(path)) = (name, path) else {
                    return Status::E_FAIL;
                };
                let s =
                    status(
                        self.sink
                            .start(name, path, msg.copy_flags.get(), msg.file_size.get()),
                    );
                self.copying = s.is_ok();
                s
            }
            FcopyOperation::WRITE_TO_FILE => {
                let Ok((msg, data)) = FcopyWriteHeader::ref_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                let size = msg.size.get() as usize;
                if !self.copying || size > DATA_FRAGMENT_SIZE || size > data.len() {
                    return Status::E_FAIL;
                }
                status(self.sink.write(msg.offset.get(), &data[..size]))
            }
            FcopyOperation::COMPLETE_FCOPY => {
                if !self.copying {
                    return Status::E_FAIL;
                }
                self.copying = false;
                status(self.sink.complete())
            }
            FcopyOperation::CANCEL_FCOPY => {
                if self.copying {
                    self.sink.cancel();
                    self.copying = false;
                }
                Status::OK
            }
            _ => Status::E_FAIL,
        }
    }
}
