//! Boot tests: the bundled bare-metal test guest on `host-test-vmm` over KVM.
//!
//! Each report check is asserted on a healthy host, and then the host is
//! broken on purpose, one behaviour at a time (a wrapper around the real
//! Hyper-V emulation drops EOMs, loses an interrupt, lies about a frequency,
//! ...), and the check that names that behaviour must fail. That is what
//! makes the demo's checks real tests rather than self-reports.
//!
//! Without a usable `/dev/kvm` these tests fail, saying so: they never pass
//! silently.

use std::sync::Arc;
use std::time::Duration;

use host_test_vmm::hv;
use host_test_vmm::net::PeerFaults;
use host_test_vmm::vmbus::echo::{EchoVsp, ECHO_MAGIC};
use host_test_vmm::vmbus::{ChannelHandle, SendError, VmbusOptions, VmbusServer, Vsp};
use host_test_vmm::vmm::hv_glue::{self, CpuidEntry, HvContext, HvPort, HvRegs};
use host_test_vmm::vmm::{self, HvFactory, RunOutcome, SerialOutput, VmConfig, EXPECTED_CHECKS};
use hvkit_tests::{demo_setup, demo_setup_net, demo_setup_with, guest_elf, require_kvm, DemoNet};
use hypercall::msr;
use vmbus_guest::packet::PacketView;

fn boot(cpus: u32, factory: Option<HvFactory>) -> RunOutcome {
    require_kvm();
    let mut cfg = VmConfig::from_file(guest_elf()).expect("read the test guest");
    cfg.cpus = cpus;
    cfg.serial = SerialOutput::Null;
    cfg.timeout = Some(Duration::from_secs(120));
    if let Some(f) = factory {
        cfg.hv = f;
    }
    vmm::run(cfg).expect("the VMM runs the test guest")
}

fn check<'a>(out: &'a RunOutcome, name: &str) -> &'a vmm::report::CheckResult {
    out.report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("report has no check {name:?}:\n{}", out.serial))
}

#[test]
fn every_check_passes_on_one_vcpu() {
    let (factory, _disks) = demo_setup();
    let out = boot(1, Some(factory));
    for name in EXPECTED_CHECKS {
        let c = check(&out, name);
        assert!(
            c.ok,
            "check {name} failed: {}\nserial:\n{}",
            c.detail, out.serial
        );
    }
    assert!(
        out.passed(),
        "run did not pass: {:?}\n{}",
        out.end,
        out.serial
    );
}

#[test]
fn every_check_passes_on_two_vcpus() {
    let (factory, _disks) = demo_setup();
    let out = boot(2, Some(factory));
    assert!(
        out.passed(),
        "run did not pass: {:?}\n{}",
        out.end,
        out.serial
    );
    let exits: serde_json::Value =
        serde_json::from_str(&out.report.to_json()).expect("report JSON");
    assert!(
        exits["exits"].is_object(),
        "report has exit counts: {exits}"
    );
}

/// The real emulation behind a wrapper that breaks one behaviour.
struct Faulty {
    inner: Arc<hv::Hypervisor>,
    fault: Fault,
    /// A VMBus server on `inner`, for the VMBus faults (which live in its devices).
    bus: Option<Arc<VmbusServer>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// Nothing wrong in the emulation itself.
    None,
    EomIgnored,
    GuestOsIdReadbackCorrupt,
    TscFrequencyTwoPercentHigh,
    DirectTimersHidden,
    PeriodHalved,
    OneShotEarly,
    UnknownCallSucceeds,
    DropVector(u8),
}

impl HvPort for Faulty {
    fn cpuid_leaves(&self) -> Vec<CpuidEntry> {
        let mut leaves = HvPort::cpuid_leaves(&*self.inner);
        if self.fault == Fault::DirectTimersHidden {
            for l in leaves.iter_mut().filter(|l| l.function == 0x4000_0003) {
                l.edx &= !(1 << 19);
            }
        }
        leaves
    }
    fn msr_read(&self, vp: u32, m: u32) -> Option<u64> {
        let v = HvPort::msr_read(&*self.inner, vp, m);
        match (self.fault, m) {
            (Fault::GuestOsIdReadbackCorrupt, msr::GUEST_OS_ID) => v.map(|v| v ^ 0x100),
            (Fault::TscFrequencyTwoPercentHigh, msr::TSC_FREQUENCY) => v.map(|v| v / 100 * 102),
            _ => v,
        }
    }
    fn msr_write(&self, vp: u32, m: u32, value: u64) -> bool {
        match (self.fault, m) {
            (Fault::EomIgnored, msr::EOM) => true,
            (Fault::PeriodHalved, m)
                if msr::stimer_index(m).is_some_and(|(_, r)| r == msr::StimerReg::Count) =>
            {
                HvPort::msr_write(&*self.inner, vp, m, value / 2)
            }
            (Fault::OneShotEarly, msr::STIMER0_COUNT) => {
                // 10 ms early in reference time.
                HvPort::msr_write(&*self.inner, vp, m, value.saturating_sub(100_000))
            }
            _ => HvPort::msr_write(&*self.inner, vp, m, value),
        }
    }
    fn hypercall(&self, vp: u32, regs: &mut HvRegs) {
        if self.fault == Fault::UnknownCallSucceeds && regs.rcx & 0xFFFF == 0x7FFF {
            regs.rax = 0;
            return;
        }
        HvPort::hypercall(&*self.inner, vp, regs)
    }
    fn stats(&self) -> serde_json::Value {
        HvPort::stats(&*self.inner)
    }
    fn crash(&self) -> Option<serde_json::Value> {
        HvPort::crash(&*self.inner)
    }
    fn eom_redeliveries(&self) -> Option<u64> {
        HvPort::eom_redeliveries(&*self.inner)
    }
    fn timer_expirations(&self) -> Option<u64> {
        HvPort::timer_expirations(&*self.inner)
    }
    fn eoi_msr_granted(&self) -> bool {
        HvPort::eoi_msr_granted(&*self.inner)
    }
    fn vmbus_stats(&self) -> Option<host_test_vmm::vmbus::VmbusStats> {
        self.bus.as_ref().map(|b| b.stats())
    }
    fn reset(&self) {
        if let Some(b) = &self.bus {
            b.reset();
        }
        HvPort::reset(&*self.inner)
    }
    fn shutdown(&self) {
        if let Some(b) = &self.bus {
            b.shutdown();
        }
        HvPort::shutdown(&*self.inner)
    }
}

/// Loses every interrupt with one vector.
struct DropVector {
    inner: Arc<dyn hv::InterruptSink>,
    vector: u8,
}

impl hv::InterruptSink for DropVector {
    fn raise(&self, vp: u32, vector: u8) {
        if vector != self.vector {
            self.inner.raise(vp, vector);
        }
    }
}

fn faulty(fault: Fault) -> HvFactory {
    Arc::new(move |ctx: HvContext| {
        let cfg = hv::HvConfig {
            vp_count: ctx.vp_count,
            tsc_hz: ctx.tsc_hz,
            features: hv::HvFeatures::default(),
        };
        let irq: Arc<dyn hv::InterruptSink> = match fault {
            Fault::DropVector(vector) => Arc::new(DropVector {
                inner: ctx.irq.clone(),
                vector,
            }),
            _ => ctx.irq.clone(),
        };
        let h = hv::Hypervisor::new(cfg, ctx.mem, irq, ctx.tsc)
            .map_err(|e| vmm::VmmError::Hv(e.to_string()))?;
        h.install_test_services();
        Ok(Arc::new(Faulty {
            inner: h,
            fault,
            bus: None,
        }) as Arc<dyn HvPort>)
    })
}

/// Boots with `fault` and asserts that `must_fail` fails and the run fails.
fn broken_host_fails(fault: Fault, must_fail: &str) {
    let out = boot(1, Some(faulty(fault)));
    let c = check(&out, must_fail);
    assert!(
        !c.ok,
        "with {fault:?} the check {must_fail} still passed: {}",
        c.detail
    );
    assert!(!out.passed(), "with {fault:?} the run still passed");
}

#[test]
fn check_guest_os_id_fails_when_the_readback_is_wrong() {
    broken_host_fails(Fault::GuestOsIdReadbackCorrupt, "guest-os-id");
}

#[test]
fn check_hypercall_page_fails_when_unknown_calls_succeed() {
    broken_host_fails(Fault::UnknownCallSucceeds, "hypercall-page");
}

#[test]
fn check_eom_redelivery_fails_when_eom_is_ignored() {
    broken_host_fails(Fault::EomIgnored, "eom-redelivery");
}

#[test]
fn check_synic_interrupt_fails_when_the_sint_interrupt_is_lost() {
    // Test guest: SINT n uses vector 0x50 + n; echo replies arrive on SINT2.
    broken_host_fails(Fault::DropVector(0x52), "synic-interrupt");
}

#[test]
fn check_signal_event_fails_when_the_event_interrupt_is_lost() {
    broken_host_fails(Fault::DropVector(0x53), "signal-event");
}

#[test]
fn check_reference_tsc_fails_when_the_frequency_is_wrong() {
    broken_host_fails(Fault::TscFrequencyTwoPercentHigh, "reference-tsc");
}

#[test]
fn check_stimer_oneshot_fails_when_it_fires_early() {
    broken_host_fails(Fault::OneShotEarly, "stimer-oneshot");
}

#[test]
fn check_stimer_oneshot_fails_when_the_timer_message_interrupt_is_lost() {
    broken_host_fails(Fault::DropVector(0x51), "stimer-oneshot");
}

#[test]
fn check_stimer_periodic_fails_when_the_period_is_wrong() {
    broken_host_fails(Fault::PeriodHalved, "stimer-periodic");
}

#[test]
fn check_stimer_periodic_fails_without_direct_mode() {
    broken_host_fails(Fault::DirectTimersHidden, "stimer-periodic");
}

#[test]
fn checks_fail_without_hyperv() {
    let out = boot(1, Some(hv_glue::no_hyperv()));
    assert!(!check(&out, "cpuid-detect").ok);
    assert!(!out.passed());
}

#[test]
fn checks_fail_without_the_host_test_services() {
    let out = boot(1, Some(hv_glue::hyperv(hv::HvFeatures::default(), false)));
    for name in [
        "post-message",
        "synic-message",
        "eom-redelivery",
        "signal-event",
    ] {
        assert!(
            !check(&out, name).ok,
            "{name} passed without the echo services"
        );
    }
}

/// An echo device that breaks one thing on purpose.
struct BrokenEcho {
    inner: EchoVsp,
    fault: EchoFault,
    data_packets: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EchoFault {
    /// Flip the first payload byte of the 5th data packet before echoing it.
    CorruptFifthPacket,
    /// Swallow control commands (so the device never rescinds itself).
    IgnoreCommands,
}

impl Vsp for BrokenEcho {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn class_id(&self) -> vmbus_guest::guid::Guid {
        self.inner.class_id()
    }
    fn instance_id(&self) -> vmbus_guest::guid::Guid {
        self.inner.instance_id()
    }
    fn on_packet(&mut self, ch: &ChannelHandle, packet: &PacketView<'_>) -> Result<(), SendError> {
        let is_command = packet.payload().starts_with(&ECHO_MAGIC);
        match self.fault {
            EchoFault::IgnoreCommands if is_command => Ok(()),
            EchoFault::CorruptFifthPacket if !is_command => {
                self.data_packets += 1;
                if self.data_packets != 5 || packet.payload().is_empty() {
                    return self.inner.on_packet(ch, packet);
                }
                let mut bytes = packet.bytes().to_vec();
                bytes[packet.descriptor().data_offset()] ^= 0x5A;
                let corrupted = PacketView::new(&bytes).expect("still a packet");
                self.inner.on_packet(ch, &corrupted)
            }
            _ => self.inner.on_packet(ch, packet),
        }
    }
}

fn vmbus_with(fault: EchoFault) -> HvFactory {
    Arc::new(move |ctx: HvContext| {
        let cfg = hv::HvConfig {
            vp_count: ctx.vp_count,
            tsc_hz: ctx.tsc_hz,
            features: hv::HvFeatures::default(),
        };
        let h = hv::Hypervisor::new(cfg, ctx.mem, ctx.irq, ctx.tsc)
            .map_err(|e| vmm::VmmError::Hv(e.to_string()))?;
        h.install_test_services();
        let bus = VmbusServer::new(h.clone(), VmbusOptions::default())
            .map_err(|e| vmm::VmmError::Hv(e.to_string()))?;
        bus.add_device(Box::new(BrokenEcho {
            inner: EchoVsp::new(0),
            fault,
            data_packets: 0,
        }))
        .map_err(|e| vmm::VmmError::Hv(e.to_string()))?;
        Ok(Arc::new(Faulty {
            inner: h,
            fault: Fault::None,
            bus: Some(bus),
        }) as Arc<dyn HvPort>)
    })
}

#[test]
fn check_vmbus_connect_fails_without_a_vmbus_server() {
    let out = boot(1, Some(hv_glue::hyperv(hv::HvFeatures::default(), true)));
    assert!(!check(&out, "vmbus-connect").ok);
    assert!(!out.passed());
}

#[test]
fn check_vmbus_echo_fails_when_the_device_corrupts_a_packet() {
    let out = boot(1, Some(vmbus_with(EchoFault::CorruptFifthPacket)));
    let c = check(&out, "vmbus-echo");
    assert!(
        !c.ok,
        "vmbus-echo passed with a corrupted echo: {}",
        c.detail
    );
    assert!(!out.passed());
}

#[test]
fn check_vmbus_rescind_fails_when_the_device_never_rescinds() {
    let out = boot(1, Some(vmbus_with(EchoFault::IgnoreCommands)));
    let c = check(&out, "vmbus-rescind");
    assert!(
        !c.ok,
        "vmbus-rescind passed without a rescind: {}",
        c.detail
    );
    assert!(!out.passed());
}

#[test]
fn check_storage_readonly_fails_when_the_readonly_disk_accepts_writes() {
    let (factory, _disks) = demo_setup_with(true, |specs| {
        for s in specs.iter_mut() {
            s.readonly = false;
        }
    });
    let out = boot(1, Some(factory));
    // The guest notices before it writes: the capacity probe already sees a
    // writable LUN 1, and the read-only check must not pass either way.
    assert!(!check(&out, "storage-capacity").ok);
    assert!(!check(&out, "storage-readonly").ok);
    assert!(!out.passed());
}

#[test]
fn checks_ic_kvp_vss_fcopy_shutdown_fail_without_the_host_exercise() {
    let (factory, _disks) = demo_setup_with(false, |_| {});
    let out = boot(1, Some(factory));
    for name in ["ic-kvp", "ic-vss", "ic-fcopy", "ic-shutdown"] {
        assert!(
            !check(&out, name).ok,
            "{name} passed without the host exercising it"
        );
    }
    // Heartbeat and time sync come from the host whatever the script says.
    assert!(check(&out, "ic-heartbeat").ok);
    assert!(check(&out, "ic-timesync").ok);
}

/// Exit counts are stable on this machine even when times are not: one exit
/// per bare OUT and one per hypercall, and every hypercall reaches its port.
#[test]
fn hypercall_benchmark_counts_one_exit_per_operation() {
    require_kvm();
    let r =
        host_test_vmm::bench::hypercall_round_trip(host_test_vmm::bench::HypercallBenchConfig {
            iterations: 200,
            rounds: 3,
        })
        .expect("benchmark runs");
    assert_eq!(r.bare_exit.exits_per_op, 1.0);
    assert_eq!(r.hypercall.exits_per_op, 1.0);
    assert!(r.ratio.is_finite() && r.ratio > 0.0);
}

/// The demo with its network broken as `net` says: `must_fail` must fail.
fn broken_net_fails(net: DemoNet, must_fail: &str) {
    let (factory, _disks) = demo_setup_net(true, |_| {}, &net);
    let out = boot(1, Some(factory));
    let c = check(&out, must_fail);
    assert!(
        !c.ok,
        "{must_fail} passed with the host network broken ({net:?}): {}\nserial:\n{}",
        c.detail, out.serial
    );
    assert!(!out.passed());
}

fn peer_fault(faults: PeerFaults) -> DemoNet {
    DemoNet {
        peer_faults: faults,
        ..DemoNet::default()
    }
}

#[test]
fn check_net_arp_fails_when_the_peer_never_answers_arp() {
    broken_net_fails(
        peer_fault(PeerFaults {
            ignore_arp: true,
            ..PeerFaults::default()
        }),
        "net-arp",
    );
}

#[test]
fn check_net_icmp_fails_when_the_peer_never_answers_pings() {
    broken_net_fails(
        peer_fault(PeerFaults {
            ignore_icmp: true,
            ..PeerFaults::default()
        }),
        "net-icmp",
    );
}

#[test]
fn check_net_udp_fails_when_the_echo_is_corrupted() {
    broken_net_fails(
        peer_fault(PeerFaults {
            corrupt_udp: true,
            ..PeerFaults::default()
        }),
        "net-udp",
    );
}

#[test]
fn check_net_mac_fails_when_netvsp_reports_another_mac() {
    broken_net_fails(
        DemoNet {
            // Outside the 02:15:0a:d5:GG:NN form, so the guest keeps its
            // default address 10.213.0.2 and only the MAC is wrong.
            mac_lie: Some(host_test_vmm::net::MacAddr([
                0x02, 0x15, 0x0a, 0xd6, 0x00, 0x02,
            ])),
            ..DemoNet::default()
        },
        "net-mac",
    );
}

#[test]
fn check_net_link_fails_without_link_indications() {
    broken_net_fails(
        DemoNet {
            toggle_link: false,
            ..DemoNet::default()
        },
        "net-link",
    );
}

#[test]
fn check_net_init_fails_without_a_nic() {
    broken_net_fails(
        DemoNet {
            nics: Vec::new(),
            peer: false,
            ..DemoNet::default()
        },
        "net-init",
    );
}
