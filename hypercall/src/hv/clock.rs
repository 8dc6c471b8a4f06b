//! Reference clock: the TSC page with fallback to the TIME_REF_COUNT MSR.

use crate::msr::{self, ReferenceTscMsr};
use crate::page::PageRef;
use crate::platform::Platform;
use crate::tsc;

/// The partition reference clock (100 ns units since partition creation).
pub struct ReferenceClock<'a, P: Platform> {
    platform: &'a P,
    page: Option<PageRef<'a>>,
}

impl<'a, P: Platform> ReferenceClock<'a, P> {
    /// Enables the reference TSC page at `tsc_page` (read-modify-write of REFERENCE_TSC, keeping
    /// the reserved bits). Needs privilege bit 9 (`HvCpuidInfo::has_reference_tsc`).
    pub fn with_tsc_page(platform: &'a P, tsc_page: PageRef<'a>) -> Self {
        let v = ReferenceTscMsr::from_bits(platform.rdmsr(msr::REFERENCE_TSC));
        platform.wrmsr(
            msr::REFERENCE_TSC,
            v.with_enable(true).with_gpa(tsc_page.gpa()).into_bits(),
        );
        Self {
            platform,
            page: Some(tsc_page),
        }
    }

    /// A clock that reads only TIME_REF_COUNT (privilege bit 1).
    pub fn msr_only(platform: &'a P) -> Self {
        Self {
            platform,
            page: None,
        }
    }

    /// The TSC page, if one is in use.
    pub fn tsc_page(&self) -> Option<PageRef<'a>> {
        self.page
    }

    /// The current reference time: from the TSC page when its sequence is valid, else from
    /// TIME_REF_COUNT (fact sheet §2.2).
    pub fn now(&self) -> u64 {
        self.page
            .and_then(|page| tsc::reference_time(&page, || self.platform.rdtsc()))
            .unwrap_or_else(|| self.read_msr())
    }

    /// The reference time from the TIME_REF_COUNT MSR.
    pub fn read_msr(&self) -> u64 {
        self.platform.rdmsr(msr::TIME_REF_COUNT)
    }

    /// Disables the TSC page (REFERENCE_TSC enable = 0, other bits kept); later reads use the
    /// MSR.
    pub fn disable_tsc_page(&mut self) {
        if self.page.take().is_some() {
            let v = ReferenceTscMsr::from_bits(self.platform.rdmsr(msr::REFERENCE_TSC));
            self.platform
                .wrmsr(msr::REFERENCE_TSC, v.with_enable(false).into_bits());
        }
    }
}
