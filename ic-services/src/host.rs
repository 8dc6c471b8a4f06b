//! The host side: builds IC requests and parses the guest's answers with the same wire types
//! (used by `host-test-vmm`'s IC devices).
//!
//! Every `build_*` writes a complete packet payload (pipe header, IC header with flags
//! TRANSACTION | REQUEST and status 0, body) into `buf` and returns its length; send it as a
//! DATA_INBAND packet. Every `parse_*` takes the payload of the guest's answer, checks the framing,
//! the RESPONSE flag and the message type, and never panics: the guest is untrusted too.
#![forbid(unsafe_code)]

use crate::fcopy::{
    FcopyHeader, FcopyOperation, FcopyStart, FcopyWriteHeader, DATA_FRAGMENT_SIZE, WRITE_BODY_SIZE,
};
use crate::framing::{
    self, IcError, IcFlags, IcHeader, IcMessageType, IcVersion, Status, BODY_OFFSET,
};
use crate::heartbeat::{HeartbeatBody, MIN_BODY_SIZE as HEARTBEAT_MIN};
use crate::kvp::{
    encode_utf16, value_type, KvpDeleteMessage, KvpEnumerateMessage, KvpGetSetMessage, KvpHeader,
    KvpOperation, KvpPool, KvpValue, MAX_VALUE_SIZE,
};
use crate::negotiate::{self, Negotiated};
use crate::shutdown::{ShutdownBody, BODY_SIZE as SHUTDOWN_BODY_SIZE, DISPLAY_MESSAGE_SIZE};
use crate::timesync::{TimeSyncV3Body, TimeSyncV4Body};
use crate::vss::{VssBody, VssOperation, BODY_SIZE as VSS_BODY_SIZE};
use core::mem::size_of;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// The per-request header fields the host chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Framework version (the negotiated one).
    pub framework: IcVersion,
    /// Message version (the negotiated one; selects the time-sync layout).
    pub message_version: IcVersion,
    /// Transaction id (`ictransaction_id`).
    pub transaction_id: u8,
}

impl RequestHeader {
    /// A header for requests under the negotiated versions.
    pub const fn new(negotiated: Negotiated, transaction_id: u8) -> Self {
        Self {
            framework: negotiated.framework,
            message_version: negotiated.message,
            transaction_id,
        }
    }

    /// The IC header of a request of type `message_type` (icmsgsize is filled in by the
    /// encoder).
    pub fn ic_header(&self, message_type: IcMessageType) -> IcHeader {
        IcHeader {
            framework_version: self.framework,
            message_type,
            message_version: self.message_version,
            message_size: U16::new(0),
            status: Status::OK,
            transaction_id: self.transaction_id,
            flags: IcFlags::HOST_REQUEST,
            reserved: [0; 2],
        }
    }
}

/// Writes a request with a zeroed body of `body_len` bytes, lets `fill` write the body, and
/// returns the total length.
fn build_with(
    buf: &mut [u8],
    message_type: IcMessageType,
    hdr: &RequestHeader,
    body_len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), IcError>,
) -> Result<usize, IcError> {
    let len = BODY_OFFSET + body_len;
    if len > framing::MAX_MESSAGE_SIZE {
        return Err(IcError::TooLong { len });
    }
    let Some(out) = buf.get_mut(..len) else {
        return Err(IcError::BufferTooSmall { needed: len });
    };
    out[BODY_OFFSET..].fill(0);
    let (head, body) = out.split_at_mut(BODY_OFFSET);
    fill(body)?;
    head.copy_from_slice(
        framing::message_header(&hdr.ic_header(message_type), body_len).as_bytes(),
    );
    Ok(len)
}

/// Builds any request from a finished body.
pub fn build_request(
    buf: &mut [u8],
    message_type: IcMessageType,
    hdr: &RequestHeader,
    body: &[u8],
) -> Result<usize, IcError> {
    build_with(buf, message_type, hdr, body.len(), |b| {
        b.copy_from_slice(body);
        Ok(())
    })
}

/// A guest's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The IC header.
    pub header: IcHeader,
    /// The body (icmsgsize bytes).
    pub body: &'a [u8],
}

impl Response<'_> {
    /// The status the guest answered.
    pub fn status(&self) -> Status {
        self.header.status
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> u8 {
        self.header.transaction_id
    }
}

/// Parses a guest answer of any type: framing and the RESPONSE flag.
pub fn parse_response(bytes: &[u8]) -> Result<Response<'_>, IcError> {
    let msg = framing::parse(bytes)?;
    if !msg.header.ic.flags.response() {
        return Err(IcError::NotAResponse);
    }
    Ok(Response {
        header: msg.header.ic,
        body: msg.body,
    })
}

/// Parses a guest answer that must be of `message_type`.
pub fn parse_response_of(
    bytes: &[u8],
    message_type: IcMessageType,
) -> Result<Response<'_>, IcError> {
    let r = parse_response(bytes)?;
    if r.header.message_type != message_type {
        return Err(IcError::UnexpectedType(r.header.message_type));
    }
    Ok(r)
}

/// Builds a negotiation request offering `framework` and `message` versions (each at most
/// [`negotiate::MAX_VERSION_COUNT`]); the header carries the first of each list.
pub fn build_negotiate(
    buf: &mut [u8],
    transaction_id: u8,
    framework: &[IcVersion],
    message: &[IcVersion],
) -> Result<usize, IcError> {
    let hdr = RequestHeader {
        framework: framework.first().copied().unwrap_or(IcVersion::V1_0),
        message_version: message.first().copied().unwrap_or(IcVersion::V1_0),
        transaction_id,
    };
    let body_len = 8 + (framework.len() + message.len()) * 4;
    build_with(buf, IcMessageType::NEGOTIATE, &hdr, body_len, |b| {
        negotiate::write_body(b, framework, message).map(|_| ())
    })
}

/// Parses the guest's negotiation answer: its status and the chosen versions (`None` when the
/// guest found no common version).
pub fn parse_negotiate_response(bytes: &[u8]) -> Result<(Status, Option<Negotiated>), IcError> {
    let r = parse_response_of(bytes, IcMessageType::NEGOTIATE)?;
    Ok((r.status(), negotiate::parse_response_body(r.body)?))
}

/// Builds a heartbeat with sequence number `seq`.
pub fn build_heartbeat(buf: &mut [u8], hdr: &RequestHeader, seq: u64) -> Result<usize, IcError> {
    let body = HeartbeatBody {
        seq_num: U64::new(seq),
        application_state: U32::new(0),
        reserved: [0; 28],
    };
    build_request(buf, IcMessageType::HEARTBEAT, hdr, body.as_bytes())
}

/// Parses a heartbeat answer: status and the guest's sequence number (the host's plus one).
pub fn parse_heartbeat_response(bytes: &[u8]) -> Result<(Status, u64), IcError> {
    let r = parse_response_of(bytes, IcMessageType::HEARTBEAT)?;
    let body: HeartbeatBody = framing::read_body(r.body, HEARTBEAT_MIN)?;
    Ok((r.status(), body.seq_num.get()))
}

/// Builds a shutdown request (`flags`: [`ShutdownBody::FORCE`] | [`ShutdownBody::RESTART`] |
/// [`ShutdownBody::HIBERNATE`]); `message` (at most 2048 bytes) goes into the display message.
pub fn build_shutdown(
    buf: &mut [u8],
    hdr: &RequestHeader,
    flags: u32,
    reason_code: u32,
    timeout_seconds: u32,
    message: &[u8],
) -> Result<usize, IcError> {
    if message.len() > DISPLAY_MESSAGE_SIZE {
        return Err(IcError::BadField);
    }
    build_with(buf, IcMessageType::SHUTDOWN, hdr, SHUTDOWN_BODY_SIZE, |b| {
        let (body, _) = ShutdownBody::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        body.reason_code = U32::new(reason_code);
        body.timeout_seconds = U32::new(timeout_seconds);
        body.flags = U32::new(flags);
        body.display_message[..message.len()].copy_from_slice(message);
        Ok(())
    })
}

/// Parses the status of an answer of `message_type` (shutdown, time sync, KVP, VSS, fcopy...).
pub fn parse_status(bytes: &[u8], message_type: IcMessageType) -> Result<Status, IcError> {
    Ok(parse_response_of(bytes, message_type)?.status())
}

/// Builds a time-sync message in the layout of `hdr.message_version` (4.x: [`TimeSyncV4Body`]
/// with `reference_time`; older: [`TimeSyncV3Body`]). `host_time` is 100 ns since 1601;
/// `flags` is [`crate::timesync::FLAG_SYNC`], [`crate::timesync::FLAG_SAMPLE`] or 0.
pub fn build_timesync(
    buf: &mut [u8],
    hdr: &RequestHeader,
    host_time: u64,
    reference_time: u64,
    flags: u8,
) -> Result<usize, IcError> {
    if hdr.message_version.major() >= 4 {
        let body = TimeSyncV4Body {
            parent_time: U64::new(host_time),
            reference_time: U64::new(reference_time),
            flags,
            leap_flags: 0,
            stratum: 0,
            reserved: [0; 5],
        };
        build_request(buf, IcMessageType::TIMESYNC, hdr, body.as_bytes())
    } else {
        let body = TimeSyncV3Body {
            parent_time: U64::new(host_time),
            child_time: U64::new(0),
            round_trip_time: U64::new(0),
            flags,
            reserved: [0; 3],
        };
        build_request(buf, IcMessageType::TIMESYNC, hdr, body.as_bytes())
    }
}

fn kvp_header(operation: KvpOperation, pool: KvpPool) -> KvpHeader {
    KvpHeader {
        operation,
        pool,
        pad: U16::new(0),
    }
}

fn put_key(record_key: &mut [u8], key: &str) -> Result<U32, IcError> {
    encode_utf16(key, record_key)
        .map(U32::new)
        .ok_or(IcError::BadField)
}

/// Builds a KVP GET of `key` in `pool`.
pub fn build_kvp_get(
    buf: &mut [u8],
    hdr: &RequestHeader,
    pool: KvpPool,
    key: &str,
) -> Result<usize, IcError> {
    let len = size_of::<KvpGetSetMessage>();
    build_with(buf, IcMessageType::KVP_EXCHANGE, hdr, len, |b| {
        let (m, _) = KvpGetSetMessage::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        m.header = kvp_header(KvpOperation::GET, pool);
        m.record.key_size = put_key(&mut m.record.key, key)?;
        Ok(())
    })
}

/// Builds a KVP SET of `key` = `value` (REG_SZ) in `pool`.
pub fn build_kvp_set(
    buf: &mut [u8],
    hdr: &RequestHeader,
    pool: KvpPool,
    key: &str,
    value: &str,
) -> Result<usize, IcError> {
    let mut units = [0u8; MAX_VALUE_SIZE];
    let n = encode_utf16(value, &mut units).ok_or(IcError::BadField)?;
    build_kvp_set_raw(
        buf,
        hdr,
        pool,
        key,
        value_type::REG_SZ,
        &units[..n as usize],
    )
}

/// Builds a KVP SET of `key` with a value of any type from its bytes (at most 2048).
pub fn build_kvp_set_raw(
    buf: &mut [u8],
    hdr: &RequestHeader,
    pool: KvpPool,
    key: &str,
    value_type: u32,
    value: &[u8],
) -> Result<usize, IcError> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(IcError::BadField);
    }
    let len = size_of::<KvpGetSetMessage>();
    build_with(buf, IcMessageType::KVP_EXCHANGE, hdr, len, |b| {
        let (m, _) = KvpGetSetMessage::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        m.header = kvp_header(KvpOperation::SET, pool);
        m.record.key_size = put_key(&mut m.record.key, key)?;
        m.record.value_type = U32::new(value_type);
        m.record.value_size = U32::new(value.len() as u32);
        m.record.value[..value.len()].copy_from_slice(value);
        Ok(())
    })
}

/// Builds a KVP DELETE of `key` in `pool`.
pub fn build_kvp_delete(
    buf: &mut [u8],
    hdr: &RequestHeader,
    pool: KvpPool,
    key: &str,
) -> Result<usize, IcError> {
    let len = size_of::<KvpDeleteMessage>();
    build_with(buf, IcMessageType::KVP_EXCHANGE, hdr, len, |b| {
        let (m, _) = KvpDeleteMessage::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        m.header = kvp_header(KvpOperation::DELETE, pool);
        m.key_size = put_key(&mut m.key, key)?;
        Ok(())
    })
}

/// Builds a KVP ENUMERATE of entry `index` of `pool`.
pub fn build_kvp_enumerate(
    buf: &mut [u8],
    hdr: &RequestHeader,
    pool: KvpPool,
    index: u32,
) -> Result<usize, IcError> {
    let len = size_of::<KvpEnumerateMessage>();
    build_with(buf, IcMessageType::KVP_EXCHANGE, hdr, len, |b| {
        let (m, _) = KvpEnumerateMessage::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        m.header = kvp_header(KvpOperation::ENUMERATE, pool);
        m.index = U32::new(index);
        Ok(())
    })
}

/// A guest's KVP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvpResponse<'a> {
    /// The status ([`Status::NO_MORE_ITEMS`] ends an enumeration).
    pub status: Status,
    /// Operation and pool, as echoed.
    pub header: KvpHeader,
    /// ENUMERATE: the index.
    pub index: Option<u32>,
    /// GET, SET, ENUMERATE: the record (use [`KvpValue::key`] and [`KvpValue::data`]).
    pub record: Option<&'a KvpValue>,
}

/// Parses a KVP answer.
pub fn parse_kvp_response(bytes: &[u8]) -> Result<KvpResponse<'_>, IcError> {
    let r = parse_response_of(bytes, IcMessageType::KVP_EXCHANGE)?;
    let header = crate::kvp::parse_header(r.body)?;
    let short = |needed: usize| IcError::BodyTooShort {
        needed,
        len: r.body.len(),
    };
    let (index, record) = match header.operation {
        KvpOperation::GET | KvpOperation::SET => {
            let (m, _) = KvpGetSetMessage::ref_from_prefix(r.body)
                .map_err(|_| short(size_of::<KvpGetSetMessage>()))?;
            (None, Some(&m.record))
        }
        KvpOperation::ENUMERATE => {
            let (m, _) = KvpEnumerateMessage::ref_from_prefix(r.body)
                .map_err(|_| short(size_of::<KvpEnumerateMessage>()))?;
            (Some(m.index.get()), Some(&m.record))
        }
        _ => (None, None),
    };
    Ok(KvpResponse {
        status: r.status(),
        header,
        index,
        record,
    })
}

/// Builds a VSS request.
pub fn build_vss(
    buf: &mut [u8],
    hdr: &RequestHeader,
    operation: VssOperation,
) -> Result<usize, IcError> {
    let body = VssBody {
        operation,
        reserved: [0; 7],
        flags: U32::new(0),
    };
    build_request(buf, IcMessageType::VSS, hdr, body.as_bytes())
}

/// Parses a VSS answer: status and the body (flags carry the HOT_BACKUP / GET_DM_INFO answers).
pub fn parse_vss_response(bytes: &[u8]) -> Result<(Status, VssBody), IcError> {
    let r = parse_response_of(bytes, IcMessageType::VSS)?;
    Ok((r.status(), framing::read_body(r.body, VSS_BODY_SIZE)?))
}

fn fcopy_header(operation: FcopyOperation) -> FcopyHeader {
    FcopyHeader {
        operation,
        ..FcopyHeader::default()
    }
}

/// Builds a START_FILE_COPY (`copy_flags`: [`FcopyStart::OVERWRITE`],
/// [`FcopyStart::CREATE_PATH`]); names of at most 259 UTF-16 units.
pub fn build_fcopy_start(
    buf: &mut [u8],
    hdr: &RequestHeader,
    file_name: &str,
    path_name: &str,
    copy_flags: u32,
    file_size: u64,
) -> Result<usize, IcError> {
    build_with(
        buf,
        IcMessageType::FCOPY,
        hdr,
        size_of::<FcopyStart>(),
        |b| {
            let (m, _) = FcopyStart::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
            m.header = fcopy_header(FcopyOperation::START_FILE_COPY);
            put_key(&mut m.file_name, file_name)?;
            put_key(&mut m.path_name, path_name)?;
            m.copy_flags = U32::new(copy_flags);
            m.file_size = U64::new(file_size);
            Ok(())
        },
    )
}

/// Builds a WRITE_TO_FILE of `data` (at most [`DATA_FRAGMENT_SIZE`] bytes) at `offset`; the body
/// carries the whole fragment array, as Linux's struct does.
pub fn build_fcopy_write(
    buf: &mut [u8],
    hdr: &RequestHeader,
    offset: u64,
    data: &[u8],
) -> Result<usize, IcError> {
    if data.len() > DATA_FRAGMENT_SIZE {
        return Err(IcError::BadField);
    }
    build_with(buf, IcMessageType::FCOPY, hdr, WRITE_BODY_SIZE, |b| {
        let (m, rest) = FcopyWriteHeader::mut_from_prefix(b).map_err(|_| IcError::BadField)?;
        m.header = fcopy_header(FcopyOperation::WRITE_TO_FILE);
        m.offset = U64::new(offset);
        m.size = U32::new(data.len() as u32);
        rest[..data.len()].copy_from_slice(data);
        Ok(())
    })
}

/// Builds a COMPLETE_FCOPY.
pub fn build_fcopy_complete(buf: &mut [u8], hdr: &RequestHeader) -> Result<usize, IcError> {
    let h = fcopy_header(FcopyOperation::COMPLETE_FCOPY);
    build_request(buf, IcMessageType::FCOPY, hdr, h.as_bytes())
}

/// Builds a CANCEL_FCOPY.
pub fn build_fcopy_cancel(buf: &mut [u8], hdr: &RequestHeader) -> Result<usize, IcError> {
    let h = fcopy_header(FcopyOperation::CANCEL_FCOPY);
    build_request(buf, IcMessageType::FCOPY, hdr, h.as_bytes())
}
