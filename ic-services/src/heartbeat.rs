//! Heartbeat (icmsgtype 1, fact sheet §7.4): the host sends a sequence number, the guest answers
//! with the number plus one, leaving the rest of the body alone.
#![forbid(unsafe_code)]

use crate::framing::{read_body, write_body, IcMessageType, Status};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The shortest heartbeat body Linux accepts: the sequence number (fact sheet §7.4).
pub const MIN_BODY_SIZE: usize = 8;

/// Heartbeat body (`heartbeat_msg_data`, fact sheet §7.4: message offsets 28..68).
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
pub struct HeartbeatBody {
    /// Offset 0 (message 28): sequence number; the guest answers with it plus one.
    pub seq_num: U64,
    /// Offset 8 (message 36): application state (openvmm; 0 unknown, 1 healthy, 2 critical,
    /// 3 stopped).
    pub application_state: U32,
    /// Offset 12: reserved.
    pub reserved: [u8; 28],
}

const _: () = {
    // Fact sheet §7.4: seq_num u64 @28, then 32 reserved bytes.
    assert!(size_of::<HeartbeatBody>() == 40);
    assert!(offset_of!(HeartbeatBody, application_state) == 8);
};

/// The guest heartbeat service.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    last_seq: Option<u64>,
    count: u64,
}

impl Heartbeat {
    /// A fresh service.
    pub const fn new() -> Self {
        Self {
            last_seq: None,
            count: 0,
        }
    }

    /// The last sequence number the host sent.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Heartbeats answered.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl IcService for Heartbeat {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::HEARTBEAT;
    const VERSIONS: ServiceVersions = ServiceVersions::HEARTBEAT;

    fn handle_body(&mut self, _versions: Negotiated, body: &mut [u8]) -> Status {
        let Ok(mut hb) = read_body::<HeartbeatBody>(body, MIN_BODY_SIZE) else {
            return Status::E_FAIL;
        };
        let seq = hb.seq_num.get();
        hb.seq_num = U64::new(seq.wrapping_add(1));
        write_body(&hb, body);
        self.last_seq = Some(seq);
        self.count = self.count.wrapping_add(1);
        Status::OK
    }
}
