//! Framework and service version negotiation (icmsgtype 0, fact sheet §7.3).
//!
//! The host sends its framework versions and its message versions; the guest walks its own lists
//! in preference order, picks the first entry the host also lists in each, and rewrites the body
//! in place: both counts 1, slot 0 = the framework version, slot 1 = the message version,
//! icmsgsize = 16. On no match it answers counts 0/0 (and, unlike Linux, status E_FAIL so the
//! host does not have to infer the failure from the counts alone).
#![forbid(unsafe_code)]

use crate::framing::{IcError, IcVersion};
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Linux rejects more than this many versions in either list (fact sheet §7.3).
pub const MAX_VERSION_COUNT: usize = 100;
/// icmsgsize of a negotiation response: the 8-byte header and two versions.
pub const RESPONSE_BODY_SIZE: usize = 16;

/// The negotiation body header (`icmsg_negotiate`, fact sheet §7.3: message offsets 28..36);
/// `framework_count + message_count` [`IcVersion`]s follow.
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
pub struct NegotiateHeader {
    /// Offset 0 (message 28): number of framework versions.
    pub framework_count: U16,
    /// Offset 2 (message 30): number of message versions.
    pub message_count: U16,
    /// Offset 4 (message 32): reserved.
    pub reserved: U32,
}

const _: () = {
    // Fact sheet §7.3: counts @28/@30, reserved @32, versions from @36.
    assert!(size_of::<NegotiateHeader>() == 8);
    assert!(offset_of!(NegotiateHeader, message_count) == 2);
    assert!(offset_of!(NegotiateHeader, reserved) == 4);
};

/// The versions a service speaks, each list in preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceVersions {
    /// Framework versions.
    pub framework: &'static [IcVersion],
    /// Message (service) versions.
    pub message: &'static [IcVersion],
}

const fn v(major: u16, minor: u16) -> IcVersion {
    IcVersion::new(major, minor)
}

const FW_3_1: &[IcVersion] = &[v(3, 0), v(1, 0)];

impl ServiceVersions {
    /// Heartbeat (Linux's lists, fact sheet §7.3).
    pub const HEARTBEAT: Self = Self {
        framework: FW_3_1,
        message: &[v(3, 0), v(1, 0)],
    };
    /// Shutdown.
    pub const SHUTDOWN: Self = Self {
        framework: FW_3_1,
        message: &[v(3, 2), v(3, 1), v(3, 0), v(1, 0)],
    };
    /// Time sync (4.0 uses the reference-time body).
    pub const TIMESYNC: Self = Self {
        framework: FW_3_1,
        message: &[v(4, 0), v(3, 0), v(1, 0)],
    };
    /// KVP.
    pub const KVP: Self = Self {
        framework: FW_3_1,
        message: &[v(4, 0), v(3, 0), v(1, 0)],
    };
    /// VSS.
    pub const VSS: Self = Self {
        framework: &[v(3, 0)],
        message: &[v(5, 0)],
    };
    /// File copy.
    pub const FCOPY: Self = Self {
        framework: &[v(3, 0)],
        message: &[v(1, 1)],
    };
}

/// The versions negotiation settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// Framework version.
    pub framework: IcVersion,
    /// Message version.
    pub message: IcVersion,
}

/// A list of versions as it sits in a message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VersionList<'a>(&'a [u8]);

impl<'a> VersionList<'a> {
    /// Number of versions.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The versions.
    pub fn iter(&self) -> impl Iterator<Item = IcVersion> + 'a {
        self.0
            .chunks_exact(4)
            .filter_map(|c| IcVersion::read_from_bytes(c).ok())
    }

    /// Whether `version` is listed.
    pub fn contains(&self, version: IcVersion) -> bool {
        self.iter().any(|x| x == version)
    }
}

impl core::fmt::Debug for VersionList<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A parsed negotiation body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateBody<'a> {
    /// Framework versions.
    pub framework: VersionList<'a>,
    /// Message versions.
    pub message: VersionList<'a>,
}

/// Parses a negotiation body: checks the counts against [`MAX_VERSION_COUNT`] and the body length.
pub fn parse_body(body: &[u8]) -> Result<NegotiateBody<'_>, IcError> {
    let Ok((hdr, rest)) = NegotiateHeader::read_from_prefix(body) else {
        return Err(IcError::BodyTooShort {
            needed: size_of::<NegotiateHeader>(),
            len: body.len(),
        });
    };
    let fc = usize::from(hdr.framework_count.get());
    let mc = usize::from(hdr.message_count.get());
    if fc > MAX_VERSION_COUNT || mc > MAX_VERSION_COUNT {
        return Err(IcError::BadField);
    }
    let needed = (fc + mc) * 4;
    if rest.len() < needed {
        return Err(IcError::BodyTooShort {
            needed: size_of::<NegotiateHeader>() + needed,
            len: body.len(),
        });
    }
    Ok(NegotiateBody {
        framework: VersionList(&rest[..fc * 4]),
        message: VersionList(&rest[fc * 4..needed]),
    })
}

/// The first of `own` (preference order) that `offered` lists.
pub fn select(own: &[IcVersion], offered: VersionList<'_>) -> Option<IcVersion> {
    own.iter().copied().find(|&v| offered.contains(v))
}

/// Picks the versions for a service from the host's lists.
pub fn choose(own: &ServiceVersions, offered: &NegotiateBody<'_>) -> Option<Negotiated> {
    Some(Negotiated {
        framework: select(own.framework, offered.framework)?,
        message: select(own.message, offered.message)?,
    })
}

/// Writes a negotiation body: the header with the counts, then the versions. Returns its length.
pub fn write_body(
    body: &mut [u8],
    framework: &[IcVersion],
    message: &[IcVersion],
) -> Result<usize, IcError> {
    if framework.len() > MAX_VERSION_COUNT || message.len() > MAX_VERSION_COUNT {
        return Err(IcError::BadField);
    }
    let len = size_of::<NegotiateHeader>() + (framework.len() + message.len()) * 4;
    if body.len() < len {
        return Err(IcError::BufferTooSmall { needed: len });
    }
    let hdr = NegotiateHeader {
        framework_count: U16::new(framework.len() as u16),
        message_count: U16::new(message.len() as u16),
        reserved: U32::new(0),
    };
    body[..8].copy_from_slice(hdr.as_bytes());
    for (i, ver) in framework.iter().chain(message).enumerate() {
        body[8 + i * 4..12 + i * 4].copy_from_slice(ver.as_bytes());
    }
    Ok(len)
}

/// The guest's answer, written over the host's body in place (fact sheet §7.3). Returns the chosen
/// versions (`None` on no match) and the new icmsgsize. The body must be a valid negotiation body
/// (see [`parse_body`]); a body too short for the two answer slots gets counts 0/0 only.
pub fn respond(
    body: &mut [u8],
    own: &ServiceVersions,
) -> Result<(Option<Negotiated>, u16), IcError> {
    // A match means the host listed at least one of each, so both slots are in the body; the
    // length check only keeps a future change from writing past it.
    let chosen = choose(own, &parse_body(body)?).filter(|_| body.len() >= RESPONSE_BODY_SIZE);
    let count = u16::from(chosen.is_some());
    let hdr = NegotiateHeader {
        framework_count: U16::new(count),
        message_count: U16::new(count),
        reserved: U32::new(0),
    };
    body[..8].copy_from_slice(hdr.as_bytes());
    match chosen {
        Some(n) => {
            body[8..12].copy_from_slice(n.framework.as_bytes());
            body[12..16].copy_from_slice(n.message.as_bytes());
            Ok((Some(n), RESPONSE_BODY_SIZE as u16))
        }
        None => Ok((None, 8)),
    }
}

/// Reads a guest's negotiation answer: `Some` when both counts are 1 (the chosen versions),
/// `None` when the guest found no match (counts 0).
pub fn parse_response_body(body: &[u8]) -> Result<Option<Negotiated>, IcError> {
    let parsed = parse_body(body)?;
    match (parsed.framework.len(), parsed.message.len()) {
        (0, 0) => Ok(None),
        (1, 1) => Ok(Some(Negotiated {
            framework: parsed.framework.iter().next().ok_or(IcError::BadField)?,
            message: parsed.message.iter().next().ok_or(IcError::BadField)?,
        })),
        _ => Err(IcError::BadField),
    }
}
