//! [`AcceptAll`]: a guest-side handler for every service callback that says
//! yes to everything and keeps nothing. For tests, fuzzing and examples that
//! exercise the protocol rather than a guest's policy.

use crate::fcopy::FileSink;
use crate::framing::Status;
use crate::kvp::Utf16;
use crate::shutdown::{ShutdownAction, ShutdownHandler};
use crate::timesync::{ClockAdjust, TimeSample};
use crate::vss::VssHandler;

/// Accepts every shutdown, time sample, freeze/thaw and file copy, storing nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptAll;

impl ShutdownHandler for AcceptAll {
    fn decide(&mut self, _: &ShutdownAction, _: &[u8]) -> bool {
        true
    }
}

impl ClockAdjust for AcceptAll {
    fn time_sample(&mut self, _: &TimeSample) {}
}

impl VssHandler for AcceptAll {
    fn freeze(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn thaw(&mut self) -> Result<(), Status> {
        Ok(())
    }
}

impl FileSink for AcceptAll {
    fn start(&mut self, _: Utf16<'_>, _: Utf16<'_>, _: u32, _: u64) -> Result<(), Status> {
        Ok(())
    }
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), Status> {
        Ok(())
    }
    fn complete(&mut self) -> Result<(), Status> {
        Ok(())
    }
    fn cancel(&mut self) {}
}
