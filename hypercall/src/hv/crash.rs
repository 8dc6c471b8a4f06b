//! Crash reporting through the crash MSRs (fact sheet §2.1, §2.2).

use super::Error;
use crate::msr::{self, CrashCtl, CRASH_MESSAGE_MAX, CRASH_PARAM_COUNT};
use crate::page::PageRef;
use crate::platform::Platform;

/// What CRASH_CTL offers (a read returns the capabilities).
pub fn crash_capabilities<P: Platform>(platform: &P) -> CrashCtl {
    CrashCtl::from_bits(platform.rdmsr(msr::CRASH_CTL))
}

/// Reports a crash: P0..P4 = `params` (Linux: error code, guest OS id, RIP, RAX, RSP), then
/// CRASH_CTL = CrashNotify.
pub fn report_crash<P: Platform>(platform: &P, params: [u64; CRASH_PARAM_COUNT]) {
    write_params_then_ctl(platform, params, CrashCtl::new().with_crash_notify(true));
}

/// Reports a crash with a message: copies `message` (at most 4096 bytes) to the start of `page`,
/// writes P0 = P1 = P2 = 0, P3 = the page's GPA, P4 = the length, then
/// CRASH_CTL = CrashNotify | CrashMessage. Check [`crash_capabilities`] for `crash_message` first.
pub fn report_crash_message<P: Platform>(
    platform: &P,
    page: &PageRef<'_>,
    message: &[u8],
) -> Result<(), Error> {
    if message.len() as u64 > CRASH_MESSAGE_MAX {
        return Err(Error::CrashMessageTooLong(message.len()));
    }
    page.write_bytes(0, message);
    write_params_then_ctl(
        platform,
        [0, 0, 0, page.gpa(), message.len() as u64],
        CrashCtl::new()
            .with_crash_notify(true)
            .with_crash_message(true),
    );
    Ok(())
}

fn write_params_then_ctl<P: Platform>(
    platform: &P,
    params: [u64; CRASH_PARAM_COUNT],
    ctl: CrashCtl,
) {
    for (n, value) in params.into_iter().enumerate() {
        platform.wrmsr(msr::crash_param(n as u8), value);
    }
    platform.wrmsr(msr::CRASH_CTL, ctl.into_bits());
}
