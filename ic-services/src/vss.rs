//! VSS, the backup integration (icmsgtype 5, fact sheet §7.4): the host asks the guest to freeze
//! its file systems before a snapshot and thaw them after; a [`VssHandler`] does the work.
//!
//! Answers follow Linux: FREEZE, THAW and HOT_BACKUP go to the handler (HOT_BACKUP's answer carries
//! flags = [`VssBody::HBU_NO_AUTO_RECOVERY`]); GET_DM_INFO is answered with flags 0; CREATE,
//! DELETE, BU_COMPLETE and AUTO_RECOVER with S_OK. Unknown operations get E_FAIL.
#![forbid(unsafe_code)]

use crate::framing::{read_body, write_body, IcMessageType, Status};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// VSS operation (body offset 0): an open set.
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
pub struct VssOperation(pub u8);

impl VssOperation {
    /// 0: CREATE.
    pub const CREATE: Self = Self(0);
    /// 1: DELETE.
    pub const DELETE: Self = Self(1);
    /// 2: HOT_BACKUP.
    pub const HOT_BACKUP: Self = Self(2);
    /// 3: GET_DM_INFO.
    pub const GET_DM_INFO: Self = Self(3);
    /// 4: BU_COMPLETE.
    pub const BU_COMPLETE: Self = Self(4);
    /// 5: FREEZE.
    pub const FREEZE: Self = Self(5);
    /// 6: THAW.
    pub const THAW: Self = Self(6);
    /// 7: AUTO_RECOVER.
    pub const AUTO_RECOVER: Self = Self(7);
}

/// VSS body (fact sheet §7.4: message offsets 28..40).
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
pub struct VssBody {
    /// Offset 0 (message 28).
    pub operation: VssOperation,
    /// Offset 1: reserved.
    pub reserved: [u8; 7],
    /// Offset 8 (message 36): check-feature / dm_info flags.
    pub flags: U32,
}

impl VssBody {
    /// The flags a HOT_BACKUP answer carries (VSS_HBU_NO_AUTO_RECOVERY).
    pub const HBU_NO_AUTO_RECOVERY: u32 = 5;
}

/// Body size (fact sheet §7.4).
pub const BODY_SIZE: usize = 12;

const _: () = {
    // Fact sheet §7.4: operation u8 @28, reserved[7], flags u32 @36.
    assert!(size_of::<VssBody>() == BODY_SIZE);
    assert!(offset_of!(VssBody, flags) == 8);
};

/// What the guest does for a backup.
pub trait VssHandler {
    /// Freeze the file systems (flush, block writes) for a snapshot.
    fn freeze(&mut self) -> Result<(), Status>;
    /// Thaw them after the snapshot.
    fn thaw(&mut self) -> Result<(), Status>;
    /// A backup without freeze is about to happen (default: fine).
    fn hot_backup(&mut self) -> Result<(), Status> {
        Ok(())
    }
}

/// The guest VSS service.
#[derive(Debug)]
pub struct Vss<H> {
    handler: H,
    frozen: bool,
}

impl<H: VssHandler> Vss<H> {
    /// The service over `handler`.
    pub const fn new(handler: H) -> Self {
        Self {
            handler,
            frozen: false,
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Whether a FREEZE succeeded and no THAW followed yet.
    pub fn frozen(&self) -> bool {
        self.frozen
    }
}

fn status(r: Result<(), Status>) -> Status {
    match r {
        Ok(()) => Status::OK,
        // An error that claims success would be a handler bug; answer a failure anyway.
        Err(s) if s.is_ok() => Status::E_FAIL,
        Err(s) => s,
    }
}

impl<H: VssHandler> IcService for Vss<H> {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::VSS;
    const VERSIONS: ServiceVersions = ServiceVersions::VSS;

    fn handle_body(&mut self, _versions: Negotiated, body: &mut [u8]) -> Status {
        let Ok(mut msg) = read_body::<VssBody>(body, BODY_SIZE) else {
            return Status::E_FAIL;
        };
        let result = match msg.operation {
            VssOperation::FREEZE => {
                let s = status(self.handler.freeze());
                self.frozen = s.is_ok();
                s
            }
            VssOperation::THAW => {
                self.frozen = false;
                status(self.handler.thaw())
            }
            VssOperation::HOT_BACKUP => {
                let s = status(self.handler.hot_backup());
                msg.flags = U32::new(VssBody::HBU_NO_AUTO_RECOVERY);
                s
            }
            VssOperation::GET_DM_INFO => {
                msg.flags = U32::new(0);
                Status::OK
            }
            VssOperation::CREATE
            | VssOperation::DELETE
            | VssOperation::BU_COMPLETE
            | VssOperation::AUTO_RECOVER => Status::OK,
            _ => Status::E_FAIL,
        };
        write_body(&msg, body);
        result
    }
}
