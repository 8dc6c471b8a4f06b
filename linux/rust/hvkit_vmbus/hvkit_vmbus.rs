// SPDX-License-Identifier: MIT OR Apache-2.0
//! hvkit_vmbus: a built-in Rust driver that runs hvkit's no_std guest crates inside Linux.
//!
//! At boot (a device initcall, `module!` in a built-in object) it starts one kernel thread that
//! - detects Hyper-V and sets GUEST_OS_ID and the hypercall page (`hypercall::hv::Hypervisor`),
//! - enables the SynIC with SINT2 in polling mode (`hypercall::hv::SynIc`),
//! - connects to VMBus and lists the offers (`vmbus_guest::driver::VmBus`),
//! - opens the heartbeat and shutdown channels and serves them (`ic_services`), polling every
//!   [`POLL_MS`] ms; an accepted shutdown request powers the kernel off.
//!
//! The platform layer is small: `hypercall::bare_metal::BareMetal` (CPUID/MSR/hypercall by
//! inline assembly, fine at CPL0 in the kernel), pages with physical addresses, a thread, sleep
//! and power-off from `hvkit_helpers.c`. Linux's own Hyper-V code is configured out
//! (`CONFIG_HYPERV=n`), so this driver is the only owner of the hypercall page and the SynIC.

use core::ffi::{c_int, c_void};

use hypercall::bare_metal::{page_from_raw, BareMetal};
use hypercall::hv::{Hypervisor, SintConfig, SynIc};
use hypercall::msr::GuestOsId;
use hypercall::page::PageRef;
use ic_services::driver::{serve_all, RECV_BUFFER_SIZE};
use ic_services::heartbeat::Heartbeat;
use ic_services::service::{Endpoint, IcService};
use ic_services::shutdown::{Shutdown, ShutdownAction, ShutdownHandler, ShutdownKind};
use kernel::prelude::*;
use vmbus_guest::channel::Channel;
use vmbus_guest::client::{ClientConfig, Event};
use vmbus_guest::driver::{DriverError, Pending, Polled, VmBus};
use vmbus_guest::guid;
use vmbus_guest::ring::PageRefRing;
use vmbus_guest::version::{Version, VMBUS_SINT};

module! {
    type: HvkitVmbus,
    name: "hvkit_vmbus",
    author: "hvkit",
    description: "Hyper-V VMBus guest driver built on hvkit's guest crates",
    license: "Dual MIT/GPL",
}

/// Poll period of the service loop (ms).
const POLL_MS: u32 = 20;
/// How long the host may take to answer a VMBus request (ms).
const ANSWER_TIMEOUT_MS: u64 = 30_000;
/// SINT2 is polled, so this vector is never raised; it only has to be valid (Linux's
/// HYPERVISOR_CALLBACK_VECTOR).
const SINT_VECTOR: u8 = 0xF3;
/// Pages per channel: 3 guest -> host, 3 host -> guest (a control page and two data pages each:
/// every IC message fits); allocated as 8 (order 3), 6 used.
const RING_PAGES: usize = 6;
const OUT_PAGES: usize = 3;
/// Open-source guest, OS type 1 (Linux), version 6.12, build "hv".
const GUEST_OS_ID: GuestOsId = GuestOsId::open_source_id(1, 0x06_0c_00, 0x6876);

/// 12 channels, 4 GPADLs, 4 queued messages: a few KiB, it lives on the thread's stack.
type Bus<'a> = VmBus<'a, BareMetal, 12, 4, 4>;
type IcChannel<'p> = Channel<PageRefRing<'p, 'static>>;

extern "C" {
    fn hvkit_alloc_pages(order: u32, phys: *mut u64) -> *mut c_void;
    fn hvkit_alloc_code_page(phys: *mut u64) -> *mut c_void;
    fn hvkit_start_thread(f: extern "C" fn(*mut c_void) -> c_int, data: *mut c_void) -> c_int;
    fn hvkit_msleep(ms: u32);
    fn hvkit_uptime_ms() -> u64;
    fn hvkit_power_off();
    fn hvkit_restart();
}

/// The CPU's privileged operations (CPUID, MSRs, the hypercall call).
// SAFETY: this runs in the kernel at CPL0 in 64-bit mode; the drivers program only synthetic
// MSRs, with GPAs of pages allocated below and never freed (they stay the hypervisor's); the
// hypercall page is only called once `Hypervisor::init` enabled it.
static PLATFORM: BareMetal = unsafe { BareMetal::new() };

struct HvkitVmbus;

impl kernel::Module for HvkitVmbus {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!("starting (hvkit guest crates in a built-in Rust driver)\n");
        // SAFETY: `thread_main` has the kthread signature and takes no data.
        let r = unsafe { hvkit_start_thread(thread_main, core::ptr::null_mut()) };
        if r != 0 {
            pr_err!("kthread_run failed: {}\n", r);
        }
        Ok(HvkitVmbus)
    }
}

fn uptime_ms() -> u64 {
    // SAFETY: plain C helper without preconditions.
    unsafe { hvkit_uptime_ms() }
}

fn sleep_ms(ms: u32) {
    // SAFETY: called from the driver's kernel thread (process context).
    unsafe { hvkit_msleep(ms) }
}

/// `N` (a power of two) zeroed, physically contiguous pages, one `PageRef` each; never freed.
fn alloc_pages<const N: usize>() -> Option<[PageRef<'static>; N]> {
    let mut phys = 0u64;
    // SAFETY: the helper writes `phys` only on success.
    let va = unsafe { hvkit_alloc_pages(N.trailing_zeros(), &mut phys) }.cast::<u8>();
    if va.is_null() {
        return None;
    }
    // SAFETY: page `i` of a page-aligned, zeroed allocation of `N` pages that is never freed
    // and accessed only through `PageRef`s (atomics); physically contiguous, so its GPA is
    // `phys + i * 4 KiB`.
    let page = |i: usize| unsafe { page_from_raw(va.add(i * 4096), phys + (i as u64) * 4096) };
    let mut pages = [page(0)?; N];
    for (i, p) in pages.iter_mut().enumerate().skip(1) {
        *p = page(i)?;
    }
    Some(pages)
}

fn one_page() -> Option<PageRef<'static>> {
    alloc_pages::<1>().map(|[p]| p)
}

/// Polls the bus until `pending` is answered, sleeping between empty polls.
fn wait(
    bus: &mut Bus<'_>,
    pending: Pending,
    what: &str,
) -> core::result::Result<Event, DriverError> {
    let start = uptime_ms();
    loop {
        match bus.poll()? {
            Some(Polled::Event(e)) => match pending.outcome(&e) {
                Some(Ok(())) => return Ok(e),
                Some(Err(err)) => return Err(err),
                None => log_event(&e),
            },
            Some(_) => {}
            None => {
                if uptime_ms().saturating_sub(start) > ANSWER_TIMEOUT_MS {
                    pr_err!("no answer to {} within {} ms\n", what, ANSWER_TIMEOUT_MS);
                    return Err(DriverError::Timeout);
                }
                sleep_ms(1);
            }
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::Offer { .. } | Event::AllOffersDelivered => {}
        e => pr_info!("event {:?}\n", e),
    }
}

/// Accepts power-off and reboot requests (hibernation is not supported).
struct Accept;

impl ShutdownHandler for Accept {
    fn decide(&mut self, action: &ShutdownAction, _message: &[u8]) -> bool {
        matches!(action.kind, ShutdownKind::PowerOff | ShutdownKind::Reboot)
    }
}

/// Creates the ring GPADL and opens channel `relid` on `pages` (3 pages each way).
fn open<'p>(
    bus: &mut Bus<'_>,
    relid: u32,
    pages: &'p [PageRef<'static>],
) -> core::result::Result<IcChannel<'p>, DriverError> {
    let p = bus.begin_create_gpadl(relid, pages)?;
    wait(bus, p, "CreateGpadl")?;
    let gpadl = p.gpadl().unwrap_or(0);
    let opening = bus.begin_open_channel(relid, gpadl, pages, OUT_PAGES, 0, [0; 120])?;
    wait(bus, opening.pending(), "OpenChannel")?;
    opening.into_channel()
}

extern "C" fn thread_main(_data: *mut c_void) -> c_int {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            pr_err!("stopped: {}\n", e);
            -1
        }
    }
}

fn run() -> core::result::Result<(), DriverError> {
    let t0 = uptime_ms();
    // Pages: hypercall code (executable), SIMP, SIEFP, HvPostMessage input.
    let mut code_phys = 0u64;
    // SAFETY: the helper writes `code_phys` only on success.
    let code = unsafe { hvkit_alloc_code_page(&mut code_phys) }.cast::<u8>();
    // SAFETY: a page-aligned vmalloc page that is never freed; the kernel maps it read-only and
    // executable, and it is only read (atomically) or executed through the `PageRef`.
    let code = unsafe { page_from_raw(code, code_phys) };
    let (Some(code), Some(simp), Some(siefp), Some(input)) =
        (code, one_page(), one_page(), one_page())
    else {
        pr_err!("out of memory\n");
        return Ok(());
    };

    let hv = match Hypervisor::init(&PLATFORM, GUEST_OS_ID, code) {
        Ok(hv) => hv,
        Err(e) => {
            pr_info!("no Hyper-V hypercall interface: {}\n", e);
            return Ok(());
        }
    };
    let info = hv.info();
    pr_info!(
        "Hyper-V detected: vendor \"{}\", max leaf {:#x}, hypercall page at {:#x}\n",
        core::str::from_utf8(&info.vendor).unwrap_or("?"),
        info.max_leaf,
        code.gpa()
    );
    let synic = SynIc::enable(
        &PLATFORM,
        simp,
        siefp,
        &[(VMBUS_SINT, SintConfig::polled(SINT_VECTOR))],
    )?;
    pr_info!("SynIC enabled (SINT{} polled)\n", VMBUS_SINT);

    let config = ClientConfig {
        versions: &Version::LINUX_ORDER,
        ..ClientConfig::default()
    };
    let mut bus: Bus<'_> = VmBus::new(&hv, &synic, input, config);
    let p = bus.begin_connect()?;
    let version = match wait(&mut bus, p, "InitiateContact")? {
        Event::Connected { version, .. } => version,
        _ => return Err(DriverError::ConnectFailed),
    };
    pr_info!(
        "VMBus connected, version {} ({} ms)\n",
        version,
        uptime_ms() - t0
    );

    // Offers until AllOffersDelivered.
    let start = uptime_ms();
    loop {
        match bus.poll()? {
            Some(Polled::Event(Event::AllOffersDelivered)) => break,
            Some(Polled::Event(e)) => log_event(&e),
            Some(_) => {}
            None => {
                if uptime_ms() - start > ANSWER_TIMEOUT_MS {
                    return Err(DriverError::Timeout);
                }
                sleep_ms(1);
            }
        }
    }
    let mut heartbeat_relid = None;
    let mut shutdown_relid = None;
    let n = bus.client().channels().len();
    pr_info!("{} offers\n", n);
    for c in bus.client().channels() {
        let class = c.class();
        pr_info!(
            "offer relid {} class {} ({}) instance {}\n",
            c.relid(),
            class,
            guid::class_name(&class).unwrap_or("unknown"),
            c.instance()
        );
        if class == guid::class::HEARTBEAT {
            heartbeat_relid = Some(c.relid());
        } else if class == guid::class::SHUTDOWN {
            shutdown_relid = Some(c.relid());
        }
    }

    let (Some(hb_pages), Some(sd_pages)) = (alloc_pages::<8>(), alloc_pages::<8>()) else {
        pr_err!("out of memory\n");
        return Ok(());
    };
    let mut hb_chan = match heartbeat_relid {
        Some(relid) => Some((relid, open(&mut bus, relid, &hb_pages[..RING_PAGES])?)),
        None => None,
    };
    let mut sd_chan = match shutdown_relid {
        Some(relid) => Some((relid, open(&mut bus, relid, &sd_pages[..RING_PAGES])?)),
        None => None,
    };
    pr_info!(
        "opened heartbeat {:?} and shutdown {:?} ({} ms)\n",
        hb_chan.as_ref().map(|c| c.0),
        sd_chan.as_ref().map(|c| c.0),
        uptime_ms() - t0
    );

    // The receive buffer (16 KiB) does not belong on the kernel stack.
    let mut buf_phys = 0u64;
    // SAFETY: the helper writes `buf_phys` only on success.
    let buf_ptr = unsafe { hvkit_alloc_pages(3, &mut buf_phys) }.cast::<u8>();
    if buf_ptr.is_null() {
        pr_err!("out of memory\n");
        return Ok(());
    }
    // SAFETY: a fresh 32 KiB allocation, owned by this thread alone from here on, never freed.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf_ptr, RECV_BUFFER_SIZE) };

    let mut hb = Endpoint::new(Heartbeat::new());
    let mut sd = Endpoint::new(Shutdown::new(Accept));
    let mut beats_logged = 0u64;
    loop {
        bus.service(
            |r| match r {
                Ok(Polled::Event(e)) => log_event(&e),
                Ok(_) => {}
                Err(e) => pr_err!("{}\n", e),
            },
            |_| {},
        );
        if let Some((_, chan)) = hb_chan.as_mut() {
            serve(&bus, chan, &mut hb, buf);
            let count = hb.service().count();
            if count > beats_logged && (beats_logged == 0 || count % 10 == 0) {
                pr_info!(
                    "heartbeat {} answered (seq {:?})\n",
                    count,
                    hb.service().last_seq()
                );
            }
            beats_logged = count;
        }
        if let Some((_, chan)) = sd_chan.as_mut() {
            serve(&bus, chan, &mut sd, buf);
            if let Some(action) = sd.service_mut().take_accepted() {
                pr_info!("shutdown request accepted: {:?}\n", action);
                // The answer is in the ring and the host is signalled: act on it.
                sleep_ms(50);
                match action.kind {
                    // SAFETY: process context; this does not return.
                    ShutdownKind::Reboot => unsafe { hvkit_restart() },
                    // SAFETY: as above.
                    _ => unsafe { hvkit_power_off() },
                }
            }
        }
        sleep_ms(POLL_MS);
    }
}

fn serve<S: IcService>(
    bus: &Bus<'_>,
    chan: &mut IcChannel<'_>,
    ep: &mut Endpoint<S>,
    buf: &mut [u8],
) {
    match serve_all(chan, ep, buf, |_, _| {}) {
        Ok(signal) => {
            if let Err(e) = bus.signal_if(chan.connection_id(), signal) {
                pr_err!("signal: {}\n", e);
            }
        }
        Err(e) => pr_err!("channel: {:?}\n", e),
    }
}
