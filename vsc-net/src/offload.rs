//! NDIS offload structures exchanged through RNDIS OIDs (fact sheet §9.4, §9.5):
//! `NDIS_OFFLOAD` (OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, object type 0xA7),
//! `NDIS_OFFLOAD_PARAMETERS` (OID_TCP_OFFLOAD_PARAMETERS, object type 0x80), the RSS
//! capabilities, and the u32 per-packet-info values (checksum, LSO, 802.1Q).
//!
//! The C structures use natural alignment except where noted; the implicit padding is spelled
//! out as `reserved`/`pad` fields so every type is `IntoBytes`.
#![forbid(unsafe_code)]

use bitfield_struct::bitfield;
use core::mem::{offset_of, size_of};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// NDIS object type of `NDIS_OFFLOAD_PARAMETERS` and other default objects.
pub const NDIS_OBJECT_TYPE_DEFAULT: u8 = 0x80;
/// NDIS object type of RSS capabilities.
pub const NDIS_OBJECT_TYPE_RSS_CAPABILITIES: u8 = 0x88;
/// NDIS object type of RSS parameters.
pub const NDIS_OBJECT_TYPE_RSS_PARAMETERS: u8 = 0x89;
/// NDIS object type of `NDIS_OFFLOAD`.
pub const NDIS_OBJECT_TYPE_OFFLOAD: u8 = 0xA7;

/// `NDIS_OFFLOAD` revision for NVSP ≥ v5 (size 156).
pub const NDIS_OFFLOAD_REVISION_3: u8 = 3;
/// Revision for NVSP v4 (size 144).
pub const NDIS_OFFLOAD_REVISION_2: u8 = 2;
/// Revision for older NVSP (size 112).
pub const NDIS_OFFLOAD_REVISION_1: u8 = 1;
/// Full `NDIS_OFFLOAD` size (NDIS 6.30).
pub const NDIS_OFFLOAD_SIZE: usize = 156;
/// Size up to `ipsecv2` (NDIS 6.0): the smallest reply a guest accepts.
pub const NDIS_OFFLOAD_SIZE_6_0: usize = 112;
/// Size up to `rsc` (NDIS 6.1).
pub const NDIS_OFFLOAD_SIZE_6_1: usize = 144;

/// `NDIS_OFFLOAD_PARAMETERS` revision for NVSP ≥ v5 (size 28).
pub const NDIS_OFFLOAD_PARAMETERS_REVISION_3: u8 = 3;
/// Revision 2.
pub const NDIS_OFFLOAD_PARAMETERS_REVISION_2: u8 = 2;
/// Revision 1.
pub const NDIS_OFFLOAD_PARAMETERS_REVISION_1: u8 = 1;
/// Full `NDIS_OFFLOAD_PARAMETERS` size.
pub const NDIS_OFFLOAD_PARAMETERS_SIZE: usize = 28;
/// Size Linux sends for NVSP ≤ v4 (up to `rsc_ipv4`).
pub const NDIS_OFFLOAD_PARAMETERS_SIZE_6_1: usize = 22;

/// RSS capabilities revision.
pub const NDIS_RECEIVE_SCALE_CAPABILITIES_REVISION_2: u8 = 2;

/// Encapsulation bits (`*_encap` fields).
pub mod encap {
    /// None.
    pub const NONE: u32 = 0x0;
    /// Null.
    pub const NULL: u32 = 0x1;
    /// 802.3: needed for TSO.
    pub const IEEE_802_3: u32 = 0x2;
    /// 802.3 with priority.
    pub const IEEE_802_3_PQ: u32 = 0x4;
    /// 802.3 with priority out of band.
    pub const IEEE_802_3_PQ_OOB: u32 = 0x8;
    /// RFC 1483.
    pub const RFC1483: u32 = 0x10;
}

/// Checksum capability bits of [`ChecksumOffload`]'s `*csum` fields (IPv4 and IPv6 share the
/// values; `IP4OPT` doubles as `IP6EXT`).
pub mod csum_cap {
    /// IPv4 options / IPv6 extension headers.
    pub const IP_OPTIONS: u32 = 0x001;
    /// TCP options.
    pub const TCP_OPTIONS: u32 = 0x004;
    /// TCP.
    pub const TCP: u32 = 0x010;
    /// UDP.
    pub const UDP: u32 = 0x040;
    /// IPv4 header checksum.
    pub const IP4: u32 = 0x100;
    /// What Linux needs for TCPv4 offload.
    pub const ALL_TCP4: u32 = TCP | TCP_OPTIONS;
    /// What Linux needs for TCPv6 offload.
    pub const ALL_TCP6: u32 = TCP | TCP_OPTIONS | IP_OPTIONS;
}

/// Values of the `NDIS_OFFLOAD_PARAMETERS` checksum bytes.
pub mod param {
    /// Leave unchanged.
    pub const NO_CHANGE: u8 = 0;
    /// TX and RX disabled.
    pub const TX_RX_DISABLED: u8 = 1;
    /// TX enabled, RX disabled.
    pub const TX_ENABLED_RX_DISABLED: u8 = 2;
    /// RX enabled, TX disabled.
    pub const RX_ENABLED_TX_DISABLED: u8 = 3;
    /// Both enabled.
    pub const TX_RX_ENABLED: u8 = 4;
    /// LSO / RSC disabled.
    pub const DISABLED: u8 = 1;
    /// LSO / RSC enabled.
    pub const ENABLED: u8 = 2;
}

/// `NDIS_OBJECT_HEADER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NdisObjectHeader {
    /// Object type.
    pub object_type: u8,
    /// Revision.
    pub revision: u8,
    /// Size of the whole object.
    pub size: u16,
}

/// Checksum offload capabilities (offset 4 of `NDIS_OFFLOAD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ChecksumOffload {
    /// IPv4 TX encapsulation ([`encap`]).
    pub ip4_tx_encap: u32,
    /// IPv4 TX checksum capabilities ([`csum_cap`]).
    pub ip4_tx_csum: u32,
    /// IPv4 RX encapsulation.
    pub ip4_rx_encap: u32,
    /// IPv4 RX checksum capabilities.
    pub ip4_rx_csum: u32,
    /// IPv6 TX encapsulation.
    pub ip6_tx_encap: u32,
    /// IPv6 TX checksum capabilities.
    pub ip6_tx_csum: u32,
    /// IPv6 RX encapsulation.
    pub ip6_rx_encap: u32,
    /// IPv6 RX checksum capabilities.
    pub ip6_rx_csum: u32,
}

/// LSOv1 capabilities (offset 36).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LsoV1Offload {
    /// Encapsulation.
    pub encap: u32,
    /// Largest payload.
    pub max_size: u32,
    /// Fewest segments.
    pub min_segments: u32,
    /// Options.
    pub options: u32,
}

/// IPsec v1 capabilities (offset 52).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IpsecV1Offload {
    /// Encapsulation.
    pub encap: u32,
    /// AH + ESP.
    pub ah_esp: u32,
    /// Transport + tunnel.
    pub transport_tunnel: u32,
    /// IPv4 options.
    pub ip4_options: u32,
    /// Flags.
    pub flags: u32,
    /// IPv4 AH.
    pub ip4_ah: u32,
    /// IPv4 ESP.
    pub ip4_esp: u32,
}

/// LSOv2 capabilities (offset 80).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct LsoV2Offload {
    /// IPv4 encapsulation (TSO needs [`encap::IEEE_802_3`]).
    pub ip4_encap: u32,
    /// IPv4 largest payload.
    pub ip4_max_size: u32,
    /// IPv4 fewest segments.
    pub ip4_min_segments: u32,
    /// IPv6 encapsulation.
    pub ip6_encap: u32,
    /// IPv6 largest payload.
    pub ip6_max_size: u32,
    /// IPv6 fewest segments.
    pub ip6_min_segments: u32,
    /// IPv6 options.
    pub ip6_options: u32,
}

/// IPsec v2 capabilities (offset 112, NDIS 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IpsecV2Offload {
    /// Encapsulation.
    pub encap: u32,
    /// IPv6, IPv4 options, IPv6 ext, AH, ESP, AH+ESP, transport, tunnel, transport+tunnel,
    /// LSO, extended sequence numbers.
    pub flags: [u8; 11],
    /// Padding (C alignment).
    pub pad: u8,
    /// UDP ESP.
    pub udp_esp: u32,
    /// Authentication algorithms.
    pub auth: u32,
    /// Crypto algorithms.
    pub crypto: u32,
    /// SA capabilities.
    pub sa_caps: u32,
}

/// RSC capabilities (offset 144, NDIS 6.30).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RscOffload {
    /// IPv4.
    pub ip4: u8,
    /// IPv6.
    pub ip6: u8,
    /// Padding (C alignment of the next field).
    pub pad: [u8; 2],
}

/// GRE encapsulation offload (offset 148).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EncapOffload {
    /// Flags.
    pub flags: u32,
    /// Largest header.
    pub max_header: u32,
}

/// `NDIS_OFFLOAD` (156 bytes, fact sheet §9.4): the answer to
/// OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NdisOffload {
    /// Offset 0: type 0xA7.
    pub header: NdisObjectHeader,
    /// 4.
    pub checksum: ChecksumOffload,
    /// 36.
    pub lso_v1: LsoV1Offload,
    /// 52.
    pub ipsec_v1: IpsecV1Offload,
    /// 80.
    pub lso_v2: LsoV2Offload,
    /// 108.
    pub flags: u32,
    /// 112 (NDIS ≥ 6.1).
    pub ipsec_v2: IpsecV2Offload,
    /// 144 (NDIS ≥ 6.30).
    pub rsc: RscOffload,
    /// 148.
    pub encap_gre: EncapOffload,
}

/// `NDIS_OFFLOAD_PARAMETERS` (28 bytes): the data of SET OID_TCP_OFFLOAD_PARAMETERS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NdisOffloadParameters {
    /// 0: type 0x80.
    pub header: NdisObjectHeader,
    /// 4 ([`param`]; Linux always sends 1).
    pub ip_v4_csum: u8,
    /// 5.
    pub tcp_ip_v4_csum: u8,
    /// 6.
    pub udp_ip_v4_csum: u8,
    /// 7.
    pub tcp_ip_v6_csum: u8,
    /// 8.
    pub udp_ip_v6_csum: u8,
    /// 9.
    pub lso_v1: u8,
    /// 10.
    pub ip_sec_v1: u8,
    /// 11.
    pub lso_v2_ipv4: u8,
    /// 12.
    pub lso_v2_ipv6: u8,
    /// 13.
    pub tcp_connection_ipv4: u8,
    /// 14.
    pub tcp_connection_ipv6: u8,
    /// 15: padding (C alignment).
    pub pad0: u8,
    /// 16.
    pub flags: u32,
    /// 20.
    pub ip_sec_v2: u8,
    /// 21.
    pub ip_sec_v2_ipv4: u8,
    /// 22.
    pub rsc_ipv4: u8,
    /// 23.
    pub rsc_ipv6: u8,
    /// 24.
    pub encapsulated_packet_task_offload: u8,
    /// 25.
    pub encapsulation_types: u8,
    /// 26: padding.
    pub pad1: [u8; 2],
}

/// `NDIS_RECEIVE_SCALE_CAPABILITIES` (18 bytes, packed; fields are little-endian byte arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RssCapabilities {
    /// Type 0x88, revision 2.
    pub header: NdisObjectHeader,
    /// Capability flags.
    pub capabilities: U32,
    /// Interrupt messages.
    pub num_interrupt_messages: U32,
    /// Receive queues.
    pub num_receive_queues: U32,
    /// Indirection table entries.
    pub num_indirection_table_entries: U16,
}

const _: () = {
    // fact sheet §9.4 `ndis_offload` offsets and `ndis_offload_params` offsets.
    assert!(size_of::<NdisObjectHeader>() == 4);
    assert!(size_of::<ChecksumOffload>() == 32);
    assert!(size_of::<IpsecV2Offload>() == 32);
    assert!(offset_of!(NdisOffload, checksum) == 4);
    assert!(offset_of!(NdisOffload, lso_v1) == 36);
    assert!(offset_of!(NdisOffload, ipsec_v1) == 52);
    assert!(offset_of!(NdisOffload, lso_v2) == 80);
    assert!(offset_of!(NdisOffload, flags) == 108);
    assert!(offset_of!(NdisOffload, ipsec_v2) == NDIS_OFFLOAD_SIZE_6_0);
    assert!(offset_of!(NdisOffload, rsc) == NDIS_OFFLOAD_SIZE_6_1);
    assert!(offset_of!(NdisOffload, encap_gre) == 148);
    assert!(size_of::<NdisOffload>() == NDIS_OFFLOAD_SIZE);
    assert!(offset_of!(NdisOffloadParameters, ip_v4_csum) == 4);
    assert!(offset_of!(NdisOffloadParameters, tcp_connection_ipv6) == 14);
    assert!(offset_of!(NdisOffloadParameters, flags) == 16);
    assert!(offset_of!(NdisOffloadParameters, ip_sec_v2) == 20);
    assert!(offset_of!(NdisOffloadParameters, rsc_ipv4) == NDIS_OFFLOAD_PARAMETERS_SIZE_6_1);
    assert!(offset_of!(NdisOffloadParameters, encapsulated_packet_task_offload) == 24);
    assert!(size_of::<NdisOffloadParameters>() == NDIS_OFFLOAD_PARAMETERS_SIZE);
    assert!(size_of::<RssCapabilities>() == 18);
};

/// Why an offload structure was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// Fewer bytes than the object header.
    TooShort,
    /// Wrong object type or a revision below 1.
    BadHeader {
        /// The object type found.
        object_type: u8,
        /// The revision found.
        revision: u8,
    },
    /// The object's size is below the minimum for its kind or beyond the bytes returned.
    BadSize {
        /// The size field.
        size: u16,
        /// Bytes available.
        available: usize,
    },
}

impl core::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooShort => f.write_str("NDIS object shorter than its header"),
            Self::BadHeader {
                object_type,
                revision,
            } => write!(
                f,
                "NDIS object has type {object_type:#x} revision {revision}, not the expected kind"
            ),
            Self::BadSize { size, available } => write!(
                f,
                "NDIS object size {size} invalid ({available} bytes returned)"
            ),
        }
    }
}

impl NdisOffload {
    /// Parses the reply to OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES as Linux accepts it: type
    /// 0xA7, revision ≥ 1, 112 ≤ size ≤ the bytes returned. Fields beyond `size` (an older
    /// revision) read as zero.
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let Ok((h, _)) = NdisObjectHeader::read_from_prefix(bytes) else {
            return Err(OffloadError::TooShort);
        };
        if h.object_type != NDIS_OBJECT_TYPE_OFFLOAD || h.revision < 1 {
            return Err(OffloadError::BadHeader {
                object_type: h.object_type,
                revision: h.revision,
            });
        }
        let size = h.size as usize;
        if size < NDIS_OFFLOAD_SIZE_6_0 || size > bytes.len() {
            return Err(OffloadError::BadSize {
                size: h.size,
                available: bytes.len(),
            });
        }
        let mut v = Self::new_zeroed();
        let n = size.min(NDIS_OFFLOAD_SIZE);
        v.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
        Ok(v)
    }

    /// The header a guest pre-fills in its QUERY for `revision` (1, 2 or 3 → size 112, 144,
    /// 156).
    pub fn query_header(revision: u8) -> NdisObjectHeader {
        let size = match revision {
            0 | 1 => NDIS_OFFLOAD_SIZE_6_0,
            2 => NDIS_OFFLOAD_SIZE_6_1,
            _ => NDIS_OFFLOAD_SIZE,
        };
        NdisObjectHeader {
            object_type: NDIS_OBJECT_TYPE_OFFLOAD,
            revision: revision.clamp(1, 3),
            size: size as u16,
        }
    }

    /// An all-zero (no offload) object of revision 3 with a valid header.
    pub fn empty() -> Self {
        let mut v = Self::new_zeroed();
        v.header = Self::query_header(NDIS_OFFLOAD_REVISION_3);
        v
    }

    /// Whether TCPv4 TX checksum offload is usable (Linux: TCP4 and TCP4OPT both set).
    pub fn tx_tcp4_csum(&self) -> bool {
        self.checksum.ip4_tx_csum & csum_cap::ALL_TCP4 == csum_cap::ALL_TCP4
    }

    /// Whether UDPv4 TX checksum offload is offered.
    pub fn tx_udp4_csum(&self) -> bool {
        self.checksum.ip4_tx_csum & csum_cap::UDP != 0
    }

    /// Whether TCPv6 TX checksum offload is usable (TCP6, TCP6OPT and IP6EXT).
    pub fn tx_tcp6_csum(&self) -> bool {
        self.checksum.ip6_tx_csum & csum_cap::ALL_TCP6 == csum_cap::ALL_TCP6
    }

    /// Whether UDPv6 TX checksum offload is offered.
    pub fn tx_udp6_csum(&self) -> bool {
        self.checksum.ip6_tx_csum & csum_cap::UDP != 0
    }
}

impl NdisOffloadParameters {
    /// Parameters with every field "no change", with the header for `revision` (3 → size 28,
    /// otherwise 22 as Linux sends for NVSP ≤ v4).
    pub fn no_change(revision: u8) -> Self {
        let mut v = Self::new_zeroed();
        v.header = NdisObjectHeader {
            object_type: NDIS_OBJECT_TYPE_DEFAULT,
            revision,
            size: if revision >= NDIS_OFFLOAD_PARAMETERS_REVISION_3 {
                NDIS_OFFLOAD_PARAMETERS_SIZE as u16
            } else {
                NDIS_OFFLOAD_PARAMETERS_SIZE_6_1 as u16
            },
        };
        v
    }

    /// The bytes to send: the first `header.size` bytes (at most 28).
    pub fn wire_bytes(&self) -> &[u8] {
        let n = (self.header.size as usize).min(NDIS_OFFLOAD_PARAMETERS_SIZE);
        &self.as_bytes()[..n]
    }

    /// Parses a SET's data: type 0x80, a size of at least 22 within the bytes; fields beyond
    /// `size` read as "no change".
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let Ok((h, _)) = NdisObjectHeader::read_from_prefix(bytes) else {
            return Err(OffloadError::TooShort);
        };
        if h.object_type != NDIS_OBJECT_TYPE_DEFAULT || h.revision < 1 {
            return Err(OffloadError::BadHeader {
                object_type: h.object_type,
                revision: h.revision,
            });
        }
        let size = h.size as usize;
        if size < NDIS_OFFLOAD_PARAMETERS_SIZE_6_1 || size > bytes.len() {
            return Err(OffloadError::BadSize {
                size: h.size,
                available: bytes.len(),
            });
        }
        let mut v = Self::new_zeroed();
        let n = size.min(NDIS_OFFLOAD_PARAMETERS_SIZE);
        v.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
        Ok(v)
    }
}

/// The TCPIP_CHECKSUM PPI value on transmit.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChecksumTxInfo {
    /// Bit 0.
    pub is_ipv4: bool,
    /// Bit 1.
    pub is_ipv6: bool,
    /// Bit 2: compute the TCP checksum.
    pub tcp_checksum: bool,
    /// Bit 3: compute the UDP checksum.
    pub udp_checksum: bool,
    /// Bit 4: compute the IPv4 header checksum.
    pub ip_header_checksum: bool,
    /// Bits 15:5.
    #[bits(11)]
    pub reserved: u16,
    /// Bits 25:16: offset of the TCP header in the frame.
    #[bits(10)]
    pub tcp_header_offset: u16,
    /// Bits 31:26.
    #[bits(6)]
    pub reserved2: u8,
}

/// The TCPIP_CHECKSUM PPI value on receive.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ChecksumRxInfo {
    /// Bit 0.
    pub tcp_checksum_failed: bool,
    /// Bit 1.
    pub udp_checksum_failed: bool,
    /// Bit 2.
    pub ip_checksum_failed: bool,
    /// Bit 3.
    pub tcp_checksum_succeeded: bool,
    /// Bit 4.
    pub udp_checksum_succeeded: bool,
    /// Bit 5.
    pub ip_checksum_succeeded: bool,
    /// Bit 6.
    pub loopback: bool,
    /// Bit 7.
    pub tcp_checksum_value_invalid: bool,
    /// Bit 8.
    pub ip_checksum_value_invalid: bool,
    /// Bits 31:9.
    #[bits(23)]
    pub reserved: u32,
}

impl ChecksumRxInfo {
    /// Whether the host reported any checksum failure.
    pub fn any_failed(&self) -> bool {
        self.tcp_checksum_failed() || self.udp_checksum_failed() || self.ip_checksum_failed()
    }
}

/// The TCP_LARGESEND PPI value for LSOv2 transmit.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct LsoV2TxInfo {
    /// Bits 19:0.
    #[bits(20)]
    pub mss: u32,
    /// Bits 29:20.
    #[bits(10)]
    pub tcp_header_offset: u16,
    /// Bit 30: 1 for LSOv2.
    pub lso_v2: bool,
    /// Bit 31: 0 IPv4, 1 IPv6.
    pub ipv6: bool,
}

/// The IEEE_8021Q PPI value.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VlanInfo {
    /// Bits 2:0: user priority.
    #[bits(3)]
    pub priority: u8,
    /// Bit 3: canonical format id.
    pub cfi: bool,
    /// Bits 15:4.
    #[bits(12)]
    pub vlan_id: u16,
    /// Bits 31:16.
    pub reserved: u16,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offload_parse() {
        let mut o = NdisOffload::empty();
        o.checksum.ip4_tx_csum = csum_cap::ALL_TCP4 | csum_cap::UDP | csum_cap::IP4;
        o.rsc.ip4 = 1;
        assert!(o.tx_tcp4_csum() && o.tx_udp4_csum() && !o.tx_tcp6_csum());
        let b = o.as_bytes();
        assert_eq!(&b[..4], &[0xA7, 3, 156, 0]);
        assert_eq!(b[144], 1);
        assert_eq!(NdisOffload::parse(b), Ok(o));
        // A revision-1 reply of 112 bytes: later fields zero.
        let mut short = [0u8; 112];
        short.copy_from_slice(&b[..112]);
        short[1] = 1;
        short[2] = 112;
        let p = NdisOffload::parse(&short).unwrap();
        assert_eq!(p.rsc.ip4, 0);
        assert!(p.tx_tcp4_csum());
        // Errors.
        assert_eq!(NdisOffload::parse(&[0xA7]), Err(OffloadError::TooShort));
        let mut bad = short;
        bad[0] = 0x80;
        assert!(matches!(
            NdisOffload::parse(&bad),
            Err(OffloadError::BadHeader { .. })
        ));
        let mut bad = short;
        bad[2] = 111;
        assert!(matches!(
            NdisOffload::parse(&bad),
            Err(OffloadError::BadSize { .. })
        ));
        let mut bad = short;
        bad[2] = 156; // claims more than returned
        assert!(matches!(
            NdisOffload::parse(&bad),
            Err(OffloadError::BadSize { .. })
        ));
        assert_eq!(NdisOffload::query_header(2).size, 144);
        assert_eq!(NdisOffload::query_header(1).size, 112);
    }

    #[test]
    fn params() {
        let mut p = NdisOffloadParameters::no_change(NDIS_OFFLOAD_PARAMETERS_REVISION_3);
        p.ip_v4_csum = param::TX_RX_DISABLED;
        p.tcp_ip_v4_csum = param::TX_RX_ENABLED;
        p.udp_ip_v4_csum = param::TX_RX_ENABLED;
        let w = p.wire_bytes();
        assert_eq!(w.len(), 28);
        assert_eq!(&w[..7], &[0x80, 3, 28, 0, 1, 4, 4]);
        assert_eq!(NdisOffloadParameters::parse(w), Ok(p));
        let p2 = NdisOffloadParameters::no_change(NDIS_OFFLOAD_PARAMETERS_REVISION_2);
        assert_eq!(p2.wire_bytes().len(), 22);
        assert!(NdisOffloadParameters::parse(p2.wire_bytes()).is_ok());
        assert!(NdisOffloadParameters::parse(&w[..21]).is_err());
    }

    #[test]
    fn ppi_values() {
        let tx = ChecksumTxInfo::new()
            .with_is_ipv4(true)
            .with_tcp_checksum(true)
            .with_tcp_header_offset(34);
        assert_eq!(tx.into_bits(), 0x1 | 0x4 | (34 << 16));
        let rx = ChecksumRxInfo::from_bits(0x28);
        assert!(rx.tcp_checksum_succeeded() && rx.ip_checksum_succeeded() && !rx.any_failed());
        let lso = LsoV2TxInfo::new()
            .with_mss(1460)
            .with_tcp_header_offset(34)
            .with_lso_v2(true);
        assert_eq!(lso.into_bits(), 1460 | (34 << 20) | (1 << 30));
        let v = VlanInfo::new().with_priority(5).with_vlan_id(100);
        assert_eq!(v.into_bits(), 5 | (100 << 4));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = NdisOffload::parse(&bytes);
            let _ = NdisOffloadParameters::parse(&bytes);
        }
    }
}
