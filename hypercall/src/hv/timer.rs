//! Synthetic timers (STIMER0..3).

use super::{check_sint, check_vector, Error};
use crate::msr::{self, StimerConfig};
use crate::platform::Platform;

/// Where a synthetic timer's expiry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerMode {
    /// Direct mode: raise APIC `vector` (needs feature bit 19).
    Direct {
        /// Vector 16-255.
        vector: u8,
    },
    /// Message mode: post a TIMER_EXPIRED message to `sint`.
    Message {
        /// SINT 0-15.
        sint: u8,
    },
}

/// One synthetic timer of the current VP.
pub struct SyntheticTimer<'a, P: Platform> {
    platform: &'a P,
    index: u8,
}

impl<'a, P: Platform> SyntheticTimer<'a, P> {
    /// Timer `index` (0-3).
    pub fn new(platform: &'a P, index: u8) -> Result<Self, Error> {
        if index >= msr::STIMER_COUNT {
            return Err(Error::InvalidTimer(index));
        }
        Ok(Self { platform, index })
    }

    /// The timer's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The CONFIG value for `mode`: enable and auto-enable set, one-shot or periodic.
    pub fn config_for(mode: TimerMode, periodic: bool) -> Result<StimerConfig, Error> {
        let c = StimerConfig::new()
            .with_enable(true)
            .with_auto_enable(true)
            .with_periodic(periodic);
        Ok(match mode {
            TimerMode::Direct { vector } => {
                check_vector(vector)?;
                c.with_direct_mode(true).with_apic_vector(vector)
            }
            TimerMode::Message { sint } => {
                check_sint(sint)?;
                c.with_sintx(sint)
            }
        })
    }

    fn start(&self, mode: TimerMode, periodic: bool, count: u64) -> Result<(), Error> {
        let config = Self::config_for(mode, periodic)?;
        if count == 0 {
            return Err(Error::ZeroTimerCount);
        }
        // Linux's order: CONFIG, then COUNT.
        self.platform
            .wrmsr(msr::stimer_config(self.index), config.into_bits());
        self.platform.wrmsr(msr::stimer_count(self.index), count);
        Ok(())
    }

    /// Starts a one-shot timer that expires at absolute reference time `expiry` (100 ns units).
    pub fn start_one_shot(&self, mode: TimerMode, expiry: u64) -> Result<(), Error> {
        self.start(mode, false, expiry)
    }

    /// Starts a periodic timer with `period` (100 ns units).
    pub fn start_periodic(&self, mode: TimerMode, period: u64) -> Result<(), Error> {
        self.start(mode, true, period)
    }

    /// Re-arms a configured one-shot timer (auto-enable) by writing only COUNT, as Linux's
    /// clockevent does for each event.
    pub fn rearm(&self, expiry: u64) -> Result<(), Error> {
        if expiry == 0 {
            return Err(Error::ZeroTimerCount);
        }
        self.platform.wrmsr(msr::stimer_count(self.index), expiry);
        Ok(())
    }

    /// Stops the timer: COUNT = 0, then CONFIG = 0 (Linux's order).
    pub fn stop(&self) {
        self.platform.wrmsr(msr::stimer_count(self.index), 0);
        self.platform.wrmsr(msr::stimer_config(self.index), 0);
    }

    /// Reads CONFIG.
    pub fn config(&self) -> StimerConfig {
        StimerConfig::from_bits(self.platform.rdmsr(msr::stimer_config(self.index)))
    }

    /// Reads COUNT.
    pub fn count(&self) -> u64 {
        self.platform.rdmsr(msr::stimer_count(self.index))
    }
}
