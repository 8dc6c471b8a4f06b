//! Time synchronisation (icmsgtype 4, fact sheet §7.4): the host sends its UTC time in 100 ns
//! units since 1601-01-01, either to set the clock now (SYNC) or as a periodic SAMPLE; a
//! [`ClockAdjust`] callback decides what to do with it. The guest echoes every message.
//!
//! Message versions below 4 use [`TimeSyncV3Body`]; 4.0 uses [`TimeSyncV4Body`], which carries
//! the partition reference counter value at which the host sampled its time, so the guest can
//! correct for the delay ([`TimeSample::host_time_at`]).
#![forbid(unsafe_code)]

use crate::framing::{read_body, IcMessageType, Status};
use crate::negotiate::{Negotiated, ServiceVersions};
use crate::service::IcService;
use core::mem::{offset_of, size_of};
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// 100 ns units from 1601-01-01 to 1970-01-01 (fact sheet §7.4).
pub const UNIX_EPOCH_100NS: u64 = 116_444_736_000_000_000;
/// Samples older than this (600 s in 100 ns units) are stale (fact sheet §7.4).
pub const STALE_AFTER_100NS: u64 = 600 * 10_000_000;

/// flags: probe only.
pub const FLAG_PROBE: u8 = 0;
/// flags bit 0: set the clock now.
pub const FLAG_SYNC: u8 = 1;
/// flags bit 1: periodic sample.
pub const FLAG_SAMPLE: u8 = 2;

/// Time-sync body for message versions up to 3.x (`ictimesync_data` plus openvmm's 3 reserved
/// bytes; fact sheet §7.4).
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
pub struct TimeSyncV3Body {
    /// Offset 0 (message 28): host time, 100 ns since 1601.
    pub parent_time: U64,
    /// Offset 8 (message 36): unused.
    pub child_time: U64,
    /// Offset 16 (message 44): round-trip time.
    pub round_trip_time: U64,
    /// Offset 24 (message 52): [`FLAG_SYNC`], [`FLAG_SAMPLE`].
    pub flags: u8,
    /// Offset 25: reserved.
    pub reserved: [u8; 3],
}

/// Time-sync body for message version 4.0 (`ictimesync_ref_data` with openvmm's 5 reserved
/// bytes; fact sheet §7.4).
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
pub struct TimeSyncV4Body {
    /// Offset 0 (message 28): host time, 100 ns since 1601.
    pub parent_time: U64,
    /// Offset 8 (message 36): partition reference counter when `parent_time` was sampled.
    pub reference_time: U64,
    /// Offset 16 (message 44): [`FLAG_SYNC`], [`FLAG_SAMPLE`].
    pub flags: u8,
    /// Offset 17 (message 45): leap-second flags.
    pub leap_flags: u8,
    /// Offset 18 (message 46): stratum.
    pub stratum: u8,
    /// Offset 19: reserved.
    pub reserved: [u8; 5],
}

/// Shortest v3 body accepted (Linux's packed struct, flags included).
pub const V3_MIN_BODY_SIZE: usize = 25;
/// Shortest v4 body accepted (Linux's struct with 3 reserved bytes).
pub const V4_MIN_BODY_SIZE: usize = 22;

const _: () = {
    // Fact sheet §7.4: v3 parent @28, child @36, rtt @44, flags @52 (+3 reserved).
    assert!(size_of::<TimeSyncV3Body>() == 28);
    assert!(offset_of!(TimeSyncV3Body, child_time) == 8);
    assert!(offset_of!(TimeSyncV3Body, round_trip_time) == 16);
    assert!(offset_of!(TimeSyncV3Body, flags) == 24);
    // v4: parent @28, vmreferencetime @36, flags @44, leapflags @45, stratum @46 (+5 reserved).
    assert!(size_of::<TimeSyncV4Body>() == 24);
    assert!(offset_of!(TimeSyncV4Body, reference_time) == 8);
    assert!(offset_of!(TimeSyncV4Body, flags) == 16);
    assert!(offset_of!(TimeSyncV4Body, leap_flags) == 17);
    assert!(offset_of!(TimeSyncV4Body, stratum) == 18);
};

/// A time sample from the host, decoded from either layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeSample {
    /// Host UTC time, 100 ns units since 1601-01-01.
    pub host_time: u64,
    /// v4: reference counter (100 ns) at which `host_time` was sampled.
    pub reference_time: Option<u64>,
    /// v3: the round-trip time.
    pub round_trip_time: Option<u64>,
    /// The raw flags.
    pub flags: u8,
    /// v4: leap flags (0 in v3).
    pub leap_flags: u8,
    /// v4: stratum (0 in v3).
    pub stratum: u8,
}

impl TimeSample {
    /// SYNC: set the clock now.
    pub const fn is_sync(&self) -> bool {
        self.flags & FLAG_SYNC != 0
    }

    /// SAMPLE: a periodic sample.
    pub const fn is_sample(&self) -> bool {
        self.flags & FLAG_SAMPLE != 0
    }

    /// The host's time at reference-counter value `reference_now`: the sample plus the time
    /// since it was taken (v4), or the sample itself (v3, or a counter that went backwards).
    pub const fn host_time_at(&self, reference_now: u64) -> u64 {
        match self.reference_time {
            Some(r) if reference_now >= r => self.host_time.saturating_add(reference_now - r),
            _ => self.host_time,
        }
    }

    /// Whether the sample was taken more than 600 s before `reference_now` (v4 only).
    pub const fn is_stale(&self, reference_now: u64) -> bool {
        match self.reference_time {
            Some(r) => reference_now.saturating_sub(r) > STALE_AFTER_100NS,
            None => false,
        }
    }
}

/// A 1601-based 100 ns time as nanoseconds since the Unix epoch (`None` before 1970).
pub const fn to_unix_nanos(time_100ns: u64) -> Option<u64> {
    match time_100ns.checked_sub(UNIX_EPOCH_100NS) {
        Some(t) => t.checked_mul(100),
        None => None,
    }
}

/// Nanoseconds since the Unix epoch as a 1601-based 100 ns time.
pub const fn from_unix_nanos(nanos: u64) -> u64 {
    nanos / 100 + UNIX_EPOCH_100NS
}

/// What the guest does with a time sample.
pub trait ClockAdjust {
    /// A sample arrived (SYNC: set the clock now; SAMPLE: periodic; neither: probe).
    fn time_sample(&mut self, sample: &TimeSample);
}

/// The guest time-sync service.
#[derive(Debug)]
pub struct TimeSync<C> {
    clock: C,
    last: Option<TimeSample>,
}

impl<C: ClockAdjust> TimeSync<C> {
    /// The service over `clock`.
    pub const fn new(clock: C) -> Self {
        Self { clock, last: None }
    }

    /// The clock callback.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The clock callback, mutably.
    pub fn clock_mut(&mut self) -> &mut C {
        &mut self.clock
    }

    /// The last sample received.
    pub fn last_sample(&self) -> Option<TimeSample> {
        self.last
    }
}

/// Decodes a time-sync body in the layout of message version `major`.x (4 and up: v4, below:
/// v3); `None` if the body is shorter than that layout's minimum.
pub fn parse_body(major: u16, body: &[u8]) -> Option<TimeSample> {
    if major >= 4 {
        let b = read_body::<TimeSyncV4Body>(body, V4_MIN_BODY_SIZE).ok()?;
        Some(TimeSample {
            host_time: b.parent_time.get(),
            reference_time: Some(b.reference_time.get()),
            round_trip_time: None,
            flags: b.flags,
            leap_flags: b.leap_flags,
            stratum: b.stratum,
        })
    } else {
        let b = read_body::<TimeSyncV3Body>(body, V3_MIN_BODY_SIZE).ok()?;
        Some(TimeSample {
            host_time: b.parent_time.get(),
            reference_time: None,
            round_trip_time: Some(b.round_trip_time.get()),
            flags: b.flags,
            leap_flags: 0,
            stratum: 0,
        })
    }
}

impl<C: ClockAdjust> IcService for TimeSync<C> {
    const MESSAGE_TYPE: IcMessageType = IcMessageType::TIMESYNC;
    const VERSIONS: ServiceVersions = ServiceVersions::TIMESYNC;

    fn handle_body(&mut self, versions: Negotiated, body: &mut [u8]) -> Status {
        match parse_body(versions.message.major(), body) {
            Some(sample) => {
                self.clock.time_sample(&sample);
                self.last = Some(sample);
                Status::OK
            }
            None => Status::E_FAIL,
        }
    }
}
