//! Network boot tests beyond the demo's switch + host peer (tests/boot.rs
//! covers that one and its faults):
//!
//! - **TAP in a namespace**: the guest's NIC is a TAP device inside a
//!   network namespace the test owns ([`TestNetns`]); the Linux kernel there
//!   is the peer at 10.213.0.1 (ARP, ICMP echo), the test runs the UDP echo
//!   on port 7 and pings the guest through a raw ICMP socket, both opened in
//!   the namespace. All net checks must pass, and afterwards the namespace
//!   (and the TAP in it) must be gone. Needs root (CAP_SYS_ADMIN,
//!   CAP_NET_ADMIN): without it the test fails, saying so.
//! - **Two guests on one switch**: two partitions in this process, NICs on
//!   the same named switch (with the host peer), MACs 02:15:0a:d5:01:02 and
//!   …:01:03: group 1 makes each guest also run `net-peer` (every 100 ms a
//!   UDP broadcast "hvkit-peer <ip> seen=<0|1>" to port 7001; done when the
//!   other guest's broadcast says seen=1). Both must pass everything plus
//!   `net-peer`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use host_test_vmm::net::peer::{guest_mac, DEMO_GUEST_MAC, ECHO_PORT, PEER_IP, PREFIX};
use host_test_vmm::net::{
    ExerciseConfig, FrameBackend, NetExercise, Nic, NicConfig, SwitchRegistry, TestNetns,
};
use host_test_vmm::storage::{ControllerConfig, StorageController};
use host_test_vmm::vmm::hv_glue;
use host_test_vmm::vmm::{self, HvFactory, RunOutcome, SerialOutput, VmConfig, EXPECTED_CHECKS};
use hvkit_tests::{demo_nic, demo_setup_net, guest_elf, icmp, require_kvm, DemoNet};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
const TAP: &str = "hvnt0";

fn boot(factory: HvFactory, timeout: Duration) -> RunOutcome {
    require_kvm();
    let mut cfg = VmConfig::from_file(guest_elf()).expect("read the test guest");
    cfg.serial = SerialOutput::Null;
    cfg.timeout = Some(timeout);
    cfg.hv = factory;
    vmm::run(cfg).expect("the VMM runs the test guest")
}

fn assert_checks(out: &RunOutcome, names: &[&str]) {
    for name in names {
        let c = out
            .report
            .checks
            .iter()
            .find(|c| c.name == *name)
            .unwrap_or_else(|| panic!("report has no check {name:?}:\n{}", out.serial));
        assert!(
            c.ok,
            "check {name} failed: {}\nserial:\n{}",
            c.detail, out.serial
        );
    }
}

// ---- the namespace side ---------------------------------------------------------

/// Pings `dst` every 100 ms through a raw ICMP socket until `want` replies
/// (or `stop`); counts replies in `replies`.
fn pinger(fd: OwnedFd, dst: Ipv4Addr, want: u32, replies: &AtomicU32, stop: &AtomicBool) {
    const IDENT: u16 = 0x6e73;
    let mut seq: u16 = 0;
    while replies.load(Ordering::SeqCst) < want && !stop.load(Ordering::SeqCst) {
        seq = seq.wrapping_add(1);
        let wait = Duration::from_millis(100);
        if icmp::ping_once(&fd, dst, IDENT, seq, b"hvkit-netns-ping", wait).is_some() {
            replies.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Echoes every datagram back until `stop`.
fn udp_echo(sock: UdpSocket, echoed: &AtomicU32, stop: &AtomicBool) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(&buf[..n], from).is_ok() {
                echoed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// This thread's network namespace ("net:[inode]").
fn netns_id(pid_task: &str) -> Option<String> {
    std::fs::read_link(format!("{pid_task}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

#[test]
fn guest_net_checks_pass_over_a_tap_in_a_namespace_with_linux_as_the_peer() {
    require_kvm();
    let ns = TestNetns::new().unwrap_or_else(|e| {
        panic!("{e}: this test needs root (a private network namespace and a TAP device)")
    });
    let inner_ns = ns
        .run(|| netns_id("/proc/thread-self"))
        .expect("namespace thread")
        .expect("its ns/net link");
    assert_ne!(Some(&inner_ns), netns_id("/proc/thread-self").as_ref());
    let tap = ns
        .create_tap(TAP, PEER_IP, PREFIX)
        .expect("TAP in the namespace");
    // Linux learns the guest from its ARP request (a STALE entry) and would
    // wait 5 s before asking itself; ask at once, so the guest is seen to
    // answer ARP within its window.
    ns.run(|| {
        std::fs::write(
            format!("/proc/sys/net/ipv4/neigh/{TAP}/delay_first_probe_time"),
            "0",
        )
    })
    .expect("namespace thread")
    .expect("set delay_first_probe_time in the namespace");
    let echo_sock = ns
        .udp_socket(SocketAddrV4::new(PEER_IP, ECHO_PORT))
        .expect("UDP echo socket in the namespace");
    let raw = icmp::raw_socket(&ns).expect("a raw ICMP socket in the namespace (root)");

    let mut cfg = NicConfig::numbered(0);
    cfg.mac = DEMO_GUEST_MAC;
    let tap_backend: Arc<dyn FrameBackend> = tap.clone();
    let tap_weak = Arc::downgrade(&tap);
    drop(tap);
    let nic = Nic::new(cfg, tap_backend).expect("NIC on the TAP");
    let ex = NetExercise::start(vec![nic.clone()], None, ExerciseConfig::default())
        .expect("net exercise");
    let (dir, specs) =
        host_test_vmm::storage::demo::create_demo_disks(&std::env::temp_dir()).expect("demo disks");
    let controller =
        StorageController::with_disks(ControllerConfig::default(), &specs).expect("disks");
    let factory = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
        storage: Some(controller),
        net: vec![nic],
        net_exercise: Some(ex),
        ic_exercise: true,
        ..hv_glue::VmbusPartitionOptions::test_guest()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (replies, echoed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let p = {
        let (r, s) = (replies.clone(), stop.clone());
        std::thread::spawn(move || pinger(raw, GUEST_IP, 3, &r, &s))
    };
    let u = {
        let (e, s) = (echoed.clone(), stop.clone());
        std::thread::spawn(move || udp_echo(echo_sock, &e, &s))
    };
    let out = boot(factory, Duration::from_secs(150));
    stop.store(true, Ordering::SeqCst);
    p.join().expect("pinger");
    u.join().expect("udp echo");
    let _ = std::fs::remove_dir_all(dir);

    assert_checks(&out, EXPECTED_CHECKS);
    assert!(
        out.passed(),
        "run did not pass: {:?}\n{}",
        out.end,
        out.serial
    );
    assert!(
        replies.load(Ordering::SeqCst) >= 3,
        "the namespace's pings got {} replies",
        replies.load(Ordering::SeqCst)
    );
    assert_eq!(echoed.load(Ordering::SeqCst), 5, "UDP datagrams echoed");

    // Everything that held the namespace is gone: the run (NIC, TAP fd),
    // the sockets (moved into the joined threads), the namespace thread.
    drop(out);
    drop(ns);
    assert!(
        tap_weak.upgrade().is_none(),
        "the TAP backend outlived the run"
    );
    let still: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| t.ok())
        .filter_map(|t| netns_id(&t.path().display().to_string()))
        .filter(|n| *n == inner_ns)
        .collect();
    assert!(still.is_empty(), "a thread is still in {inner_ns}");
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{TAP}")).exists(),
        "{TAP} leaked into the test's own namespace"
    );
}

#[test]
fn two_guests_on_one_switch_exchange_broadcasts() {
    require_kvm();
    let switches = Arc::new(SwitchRegistry::new());
    let setup = |n: u8, peer: bool| {
        demo_setup_net(
            true,
            |_| {},
            &DemoNet {
                nics: vec![demo_nic(guest_mac(1, n))],
                peer,
                switches: Some(switches.clone()),
                ..DemoNet::default()
            },
        )
    };
    let (fa, _da) = setup(2, true);
    let (fb, _db) = setup(3, false);
    let a = std::thread::spawn(move || boot(fa, Duration::from_secs(240)));
    let b = boot(fb, Duration::from_secs(240));
    let a = a.join().expect("guest A's VMM thread");
    for out in [&a, &b] {
        let mut names = EXPECTED_CHECKS.to_vec();
        names.push("net-peer");
        assert_checks(out, &names);
        assert!(
            out.passed(),
            "run did not pass: {:?}\n{}",
            out.end,
            out.serial
        );
    }
    let sw = switches.get(host_test_vmm::net::peer::DEMO_SWITCH);
    assert!(sw.stats().flooded > 0, "{:?}", sw.stats());
}
