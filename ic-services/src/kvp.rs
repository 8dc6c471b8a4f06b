//! Key-value pair exchange (icmsgtype 2, fact sheet §7.4): the host gets, sets, deletes and
//! enumerates string pairs in pools; a [`KvpProvider`] holds the guest's data.
//!
//! Keys and values travel as UTF-16LE in fixed arrays (512 and 2048 bytes) with sizes in bytes
//! that include the terminating NUL. [`Utf16`] views such a string without copying;
//! [`KvpRecordMut`] writes one from a `&str`. All record structs have alignment 1, so the service
//! works on the receive buffer in place. The host drives one transaction at a time; an
//! enumeration walks index 0, 1, ... until the guest answers [`Status::NO_MORE_ITEMS`].
#![forbid(unsafe_code)]

use crate::framing::{IcError, IcMessageType, Status};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the key array in bytes (`HV_KVP_EXCHANGE_MAX_KEY_SIZE`).
pub const MAX_KEY_SIZE: usize = 512;
/// Size of the value array in bytes (`HV_KVP_EXCHANGE_MAX_VALUE_SIZE`).
pub const MAX_VALUE_SIZE: usize = 2048;

/// KVP operation (body offset 0): an open set.
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
pub struct KvpOperation(pub u8);

impl KvpOperation {
    /// 0: GET.
    pub const GET: Self = Self(0);
    /// 1: SET.
    pub const SET: Self = Self(1);
    /// 2: DELETE.
    pub const DELETE: Self = Self(2);
    /// 3: ENUMERATE.
    pub const ENUMERATE: Self = Self(3);
    /// 4: GET_IP_INFO (not supported here).
    pub const GET_IP_INFO: Self = Self(4);
    /// 5: SET_IP_INFO (not supported here).
    pub const SET_IP_INFO: Self = Self(5);
}

/// KVP pool (body offset 1): an open set.
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
pub struct KvpPool(pub u8);

impl KvpPool {
    /// 0: data the host pushes to the guest.
    pub const EXTERNAL: Self = Self(0);
    /// 1: data the guest publishes to the host.
    pub const GUEST: Self = Self(1);
    /// 2: guest intrinsics (OS name, version...).
    pub const AUTO: Self = Self(2);
    /// 3: AUTO_EXTERNAL.
    pub const AUTO_EXTERNAL: Self = Self(3);
    /// 4: AUTO_INTERNAL.
    pub const AUTO_INTERNAL: Self = Self(4);
}

/// The AUTO-pool keys the Linux daemon returns, in its enumeration order (fact sheet §7.4).
pub const AUTO_POOL_KEYS: [&str; 10] = [
    "FullyQualifiedDomainName",
    "IntegrationServicesVersion",
    "NetworkAddressIPv4",
    "NetworkAddressIPv6",
    "OSBuildNumber",
    "OSName",
    "OSMajorVersion",
    "OSMinorVersion",
    "OSVersion",
    "ProcessorArchitecture",
];

/// Value type of a record.
pub mod value_type {
    /// A UTF-16 string (what Linux always answers).
    pub const REG_SZ: u32 = 1;
    /// A 32-bit number.
    pub const REG_U32: u32 = 4;
    /// A 64-bit number as Linux's uapi numbers it.
    pub const REG_U64_LINUX: u32 = 8;
    /// A 64-bit number (QWORD) as Windows and openvmm number it.
    pub const REG_QWORD: u32 = 11;
}

/// The KVP header (`hv_kvp_hdr`, fact sheet §7.4: message offsets 28..32).
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
pub struct KvpHeader {
    /// Offset 0 (message 28).
    pub operation: KvpOperation,
    /// Offset 1 (message 29).
    pub pool: KvpPool,
    /// Offset 2: padding.
    pub pad: U16,
}

/// A key-value record (`hv_kvp_exchg_msg_value`, 2572 bytes, fact sheet §7.4).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct KvpValue {
    /// Offset 0: [`value_type`].
    pub value_type: U32,
    /// Offset 4: key bytes, NUL included.
    pub key_size: U32,
    /// Offset 8: value bytes, NUL included for strings.
    pub value_size: U32,
    /// Offset 12: UTF-16LE key.
    pub key: [u8; MAX_KEY_SIZE],
    /// Offset 524: UTF-16LE value (or a little-endian number).
    pub value: [u8; MAX_VALUE_SIZE],
}

/// GET and SET body: header then one record (message offsets 28..2604).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct KvpGetSetMessage {
    /// Offset 0.
    pub header: KvpHeader,
    /// Offset 4 (message 32).
    pub record: KvpValue,
}

/// DELETE body: header, key size, key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct KvpDeleteMessage {
    /// Offset 0.
    pub header: KvpHeader,
    /// Offset 4 (message 32): key bytes, NUL included.
    pub key_size: U32,
    /// Offset 8 (message 36).
    pub key: [u8; MAX_KEY_SIZE],
}

/// ENUMERATE body: header, index, then the record the guest fills.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct KvpEnumerateMessage {
    /// Offset 0.
    pub header: KvpHeader,
    /// Offset 4 (message 32): the index asked for.
    pub index: U32,
    /// Offset 8 (message 36).
    pub record: KvpValue,
}

const _: () = {
    // Fact sheet §7.4: hv_kvp_hdr {op u8 @28, pool u8 @29, pad u16}; record 2572 bytes; the
    // enumerate body is 4 + 2576 = 2580 bytes; delete is key_size u32 + key[512].
    assert!(size_of::<KvpHeader>() == 4);
    assert!(offset_of!(KvpHeader, pool) == 1);
    assert!(size_of::<KvpValue>() == 2572);
    assert!(offset_of!(KvpValue, key_size) == 4);
    assert!(offset_of!(KvpValue, value_size) == 8);
    assert!(offset_of!(KvpValue, key) == 12);
    assert!(offset_of!(KvpValue, value) == 524);
    assert!(size_of::<KvpGetSetMessage>() == 2576);
    assert!(size_of::<KvpDeleteMessage>() == 520);
    assert!(offset_of!(KvpDeleteMessage, key) == 8);
    assert!(size_of::<KvpEnumerateMessage>() == 2580);
    assert!(offset_of!(KvpEnumerateMessage, record) == 8);
};

/// A UTF-16LE string as it sits in a message, without its terminating NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Utf16<'a>(&'a [u8]);

impl<'a> Utf16<'a> {
    /// The string in the first `size` bytes of `array`, up to the first NUL unit (`None` if
    /// `size` exceeds the array). An odd trailing byte is ignored.
    pub fn from_sized(array: &'a [u8], size: u32) -> Option<Self> {
        let bytes = array.get(..usize::try_from(size).ok()?)?;
        let units = bytes.len() / 2;
        let end = (0..units)
            .find(|&i| bytes[2 * i] == 0 && bytes[2 * i + 1] == 0)
            .unwrap_or(units);
        Some(Self(&bytes[..2 * end]))
    }

    /// The string's bytes (UTF-16LE, no NUL).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// Length in UTF-16 units.
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The UTF-16 units.
    pub fn units(&self) -> impl Iterator<Item = u16> + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    }

    /// The characters (unpaired surrogates become U+FFFD).
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        char::decode_utf16(self.units()).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    /// Whether the string equals `s`.
    pub fn eq_str(&self, s: &str) -> bool {
        self.units().eq(s.encode_utf16())
    }
}

impl core::fmt::Debug for Utf16<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("\"")?;
        for c in self.chars() {
            write!(f, "{}", c.escape_debug())?;
        }
        f.write_str("\"")
    }
}

impl core::fmt::Display for Utf16<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.chars()
            .try_for_each(|c| core::fmt::Write::write_char(f, c))
    }
}

/// Writes `s` as UTF-16LE with a terminating NUL into `out`; returns the bytes written (the
/// size field's value), or `None` if it does not fit.
pub fn encode_utf16(s: &str, out: &mut [u8]) -> Option<u32> {
    let mut n = 0;
    for unit in s.encode_utf16().chain(core::iter::once(0)) {
        out.get_mut(n..n + 2)?.copy_from_slice(&unit.to_le_bytes());
        n += 2;
    }
    u32::try_from(n).ok()
}

/// A record's value, decoded by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvpData<'a> {
    /// REG_SZ.
    String(Utf16<'a>),
    /// REG_U32.
    U32(u32),
    /// REG_QWORD (11) or Linux's REG_U64 (8).
    U64(u64),
    /// Any other type, raw.
    Other {
        /// The value type.
        value_type: u32,
        /// The value bytes (value_size of them).
        bytes: &'a [u8],
    },
}

impl KvpValue {
    /// The key (`None` if key_size exceeds the array).
    pub fn key(&self) -> Option<Utf16<'_>> {
        Utf16::from_sized(&self.key, self.key_size.get())
    }

    /// The value, decoded by its type (`None` if value_size exceeds the array or a number's size
    /// is wrong).
    pub fn data(&self) -> Option<KvpData<'_>> {
        let size = self.value_size.get();
        let bytes = self.value.get(..usize::try_from(size).ok()?)?;
        Some(match self.value_type.get() {
            value_type::REG_SZ => KvpData::String(Utf16::from_sized(&self.value, size)?),
            value_type::REG_U32 => KvpData::U32(u32::from_le_bytes(bytes.try_into().ok()?)),
            value_type::REG_U64_LINUX | value_type::REG_QWORD => {
                KvpData::U64(u64::from_le_bytes(bytes.try_into().ok()?))
            }
            t => KvpData::Other {
                value_type: t,
                bytes,
            },
        })
    }
}

/// Writes the key and value of a record (the guest's answer, or a host request).
#[derive(Debug)]
pub struct KvpRecordMut<'a>(&'a mut KvpValue);

impl<'a> KvpRecordMut<'a> {
    /// Writer over `record`.
    pub fn new(record: &'a mut KvpValue) -> Self {
        Self(record)
    }

    /// The record as it stands.
    pub fn record(&self) -> &KvpValue {
        self.0
    }

    /// Sets the key; [`Status::INVALID_ARG`] if it does not fit in 512 bytes with its NUL (the
    /// key is then cleared).
    pub fn set_key(&mut self, key: &str) -> Result<(), Status> {
        self.0.key = [0; MAX_KEY_SIZE];
        let n = encode_utf16(key, &mut self.0.key).ok_or(Status::INVALID_ARG)?;
        self.0.key_size = U32::new(n);
        Ok(())
    }

    /// Sets a REG_SZ value; [`Status::INVALID_ARG`] if it does not fit in 2048 bytes.
    pub fn set_value_str(&mut self, value: &str) -> Result<(), Status> {
        self.0.value = [0; MAX_VALUE_SIZE];
        let n = encode_utf16(value, &mut self.0.value).ok_or(Status::INVALID_ARG)?;
        self.0.value_size = U32::new(n);
        self.0.value_type = U32::new(value_type::REG_SZ);
        Ok(())
    }

    /// Sets a REG_U32 value.
    pub fn set_value_u32(&mut self, value: u32) {
        self.0.value = [0; MAX_VALUE_SIZE];
        self.0.value[..4].copy_from_slice(&value.to_le_bytes());
        self.0.value_size = U32::new(4);
        self.0.value_type = U32::new(value_type::REG_U32);
    }

    /// Sets a value of any type from its bytes.
    pub fn set_value_raw(&mut self, value_type: u32, bytes: &[u8]) -> Result<(), Status> {
        if bytes.len() > MAX_VALUE_SIZE {
            return Err(Status::INVALID_ARG);
        }
        self.0.value = [0; MAX_VALUE_SIZE];
        self.0.value[..bytes.len()].copy_from_slice(bytes);
        self.0.value_size = U32::new(bytes.len() as u32);
        self.0.value_type = U32::new(value_type);
        Ok(())
    }
}

/// The guest's key-value data. Errors are answered as the status (Linux answers E_FAIL for a
/// key it does not have).
pub trait KvpProvider {
    /// The value of `key` in `pool`, written with `out.set_value_*`.
    fn get(
        &mut self,
        pool: KvpPool,
        key: Utf16<'_>,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status>;
    /// Stores `value` under `key` in `pool`.
    fn set(&mut self, pool: KvpPool, key: Utf16<'_>, value: KvpData<'_>) -> Result<(), Status>;
    /// Removes `key` from `pool`.
    fn delete(&mut self, pool: KvpPool, key: Utf16<'_>) -> Result<(), Status>;
    /// Entry `index` of `pool`, written with `out.set_key` and `out.set_value_*`;
    /// [`Status::NO_MORE_ITEMS`] past the end.
    fn enumerate(
        &mut self,
        pool: KvpPool,
        index: u32,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status>;
}

/// A read-only provider over a fixed table of `(pool, key, value)` string entries (e.g. the
/// AUTO pool's intrinsics). Sets and deletes fail with E_FAIL.
#[derive(Debug, Clone, Copy)]
pub struct StaticKvp<'t> {
    /// The entries; enumeration follows their order within each pool.
    pub entries: &'t [(KvpPool, &'t str, &'t str)],
}

impl KvpProvider for StaticKvp<'_> {
    fn get(
        &mut self,
        pool: KvpPool,
        key: Utf16<'_>,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let (_, _, v) = self
            .entries
            .iter()
            .find(|(p, k, _)| *p == pool && key.eq_str(k))
            .ok_or(Status::E_FAIL)?;
        out.set_value_str(v)
    }

    fn set(&mut self, _: KvpPool, _: Utf16<'_>, _: KvpData<'_>) -> Result<(), Status> {
        Err(Status::E_FAIL)
    }

    fn delete(&mut self, _: KvpPool, _: Utf16<'_>) -> Result<(), Status> {
        Err(Status::E_FAIL)
    }

    fn enumerate(
        &mut self,
        pool: KvpPool,
        index: u32,
        out: &mut KvpRecordMut<'_>,
    ) -> Result<(), Status> {
        let (_, k, v) = self
            .entries
            .iter()
            .filter(|(p, _, _)| *p == pool)
            .nth(usize::try_from(index).map_err(|_| Status::NO_MORE_ITEMS)?)
            .ok_or(Status::NO_MORE_ITEMS)?;
        out.set_key(k)?;
        out.set_value_str(v)
    }
}

/// The guest KVP service.
#[derive(Debug)]
pub struct Kvp<P> {
    provider: P,
}

impl<P: KvpProvider> Kvp<P> {
    /// The service over `provider`.
    pub const fn new(provider: P) -> Self {
        Self { provider }
    }

    /// The provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The provider, mutably.
    pub fn provider_mut(&mut self) -> &mut P {
        &mut self.provider
    }
}

fn status(r: Result<(), Status>) -> Status {
    match r {
        Ok(()) => Status::OK,
        Err(s) if s.is_ok() => Status::E_FAIL,
        Err(s) => s,
    }
}

fn key_of(array: &[u8], size: u32) -> Result<Utf16<'_>, Status> {
    Utf16::from_sized(array, size).ok_or(Status::INVALID_ARG)
}

/// Reads the KVP header of a body.
pub fn parse_header(body: &[u8]) -> Result<KvpHeader, IcError> {
    KvpHeader::read_from_prefix(body)
        .map(|(h, _)| h)
        .map_err(|_| IcError::BodyTooShort {
            needed: size_of::<KvpHeader>(),
            len: body.len(),
        })
}

impl<P: KvpProvider> IcService for Kvp<P> {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::KVP_EXCHANGE;
    const VERSIONS: ServiceVersions = ServiceVersions::KVP;

    fn handle_body(&mut self, _versions: Negotiated, body: &mut [u8]) -> Status {
        let Ok(header) = parse_header(body) else {
            return Status::E_FAIL;
        };
        let pool = header.pool;
        match header.operation {
            KvpOperation::GET => {
                let Ok((msg, _)) = KvpGetSetMessage::mut_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                let r = &mut msg.record;
                // The key is copied out so the provider can write the record it came from.
                let mut key = [0u8; MAX_KEY_SIZE];
                let key = match key_of(&r.key, r.key_size.get()) {
                    Ok(k) => {
                        let n = k.as_bytes().len();
                        key[..n].copy_from_slice(k.as_bytes());
                        Utf16(&key[..n])
                    }
                    Err(s) => return s,
                };
                status(self.provider.get(pool, key, &mut KvpRecordMut(r)))
            }
            KvpOperation::SET => {
                let Ok((msg, _)) = KvpGetSetMessage::ref_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                let r = &msg.record;
                let key = match key_of(&r.key, r.key_size.get()) {
                    Ok(k) => k,
                    Err(s) => return s,
                };
                let Some(data) = r.data() else {
                    return Status::INVALID_ARG;
                };
                status(self.provider.set(pool, key, data))
            }
            KvpOperation::DELETE => {
                let Ok((msg, _)) = KvpDeleteMessage::ref_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                match key_of(&msg.key, msg.key_size.get()) {
                    Ok(key) => status(self.provider.delete(pool, key)),
                    Err(s) => s,
                }
            }
            KvpOperation::ENUMERATE => {
                let Ok((msg, _)) = KvpEnumerateMessage::mut_from_prefix(body) else {
                    return Status::E_FAIL;
                };
                let index = msg.index.get();
                status(
                    self.provider
                        .enumerate(pool, index, &mut KvpRecordMut(&mut msg.record)),
                )
            }
            _ => Status::NOT_SUPPORTED,
        }
    }
}
