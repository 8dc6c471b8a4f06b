//! hvkit integration tests: the bare-metal test guest (`tests/guest`, its own
//! crate because it only builds for `x86_64-unknown-none`) booted on
//! `host-test-vmm` over KVM. `tests/boot.rs` asserts every report check and
//! breaks the host one behaviour at a time to show each check failing;
//! `tests/api.rs` drives the guest's integration services through the
//! control API. This library holds what both need.

pub mod icmp;
pub mod linux;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use host_test_vmm::net::{
    self as hnet, ExerciseConfig, NetBackendSpec, NetExercise, NetSpec, Peer, PeerConfig,
    PeerFaults, SwitchRegistry,
};
use host_test_vmm::storage::{self, ControllerConfig, DiskSpec, StorageController};
use host_test_vmm::vmm::hv_glue;
use host_test_vmm::vmm::{self, HvFactory};

/// Fails (never skips) when KVM is not usable.
pub fn require_kvm() {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        ok,
        "/dev/kvm is missing or not accessible: boot tests need KVM (run as a user who can open /dev/kvm)"
    );
}

/// The test guest ELF, built once per test binary (in its own target dir).
pub fn guest_elf() -> &'static PathBuf {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        vmm::guest_build::build_test_guest()
            .unwrap_or_else(|e| panic!("building the test guest: {e}"))
    })
}

/// What `host-test-vmm demo` boots: the generated disks on the SCSI
/// controller and the host ICs' exercise script, so every check can run.
/// The disk directory is removed when the returned guard drops.
pub fn demo_setup() -> (HvFactory, DiskDir) {
    demo_setup_with(true, |_| {})
}

/// [`demo_setup`] with the exercise script on or off and the disk specs
/// adjusted by `tweak` (to break the storage side on purpose).
pub fn demo_setup_with(
    exercise: bool,
    tweak: impl FnOnce(&mut Vec<DiskSpec>),
) -> (HvFactory, DiskDir) {
    demo_setup_net(exercise, tweak, &DemoNet::default())
}

/// The demo's network (one NIC on the demo switch with the host peer, the
/// net exercise), with knobs to break it on purpose.
#[derive(Debug, Clone)]
pub struct DemoNet {
    /// Faults of the host peer.
    pub peer_faults: PeerFaults,
    /// The net exercise toggles the link.
    pub toggle_link: bool,
    /// The NICs (default: the demo's one).
    pub nics: Vec<NetSpec>,
    /// Attach the peer to the demo switch.
    pub peer: bool,
    /// The switches `nics` name (share one registry between partitions to
    /// put several guests on one switch).
    pub switches: Option<Arc<SwitchRegistry>>,
    /// netvsp answers the guest's MAC queries with this address instead of
    /// the configured one (a host lying about the MAC).
    pub mac_lie: Option<hnet::MacAddr>,
}

impl Default for DemoNet {
    fn default() -> Self {
        Self {
            peer_faults: PeerFaults::default(),
            toggle_link: true,
            nics: vec![demo_nic(hnet::peer::DEMO_GUEST_MAC)],
            peer: true,
            switches: None,
            mac_lie: None,
        }
    }
}

/// A NIC on the demo switch with this MAC.
pub fn demo_nic(mac: hnet::MacAddr) -> NetSpec {
    NetSpec {
        backend: NetBackendSpec::Switch(hnet::peer::DEMO_SWITCH.into()),
        mac: Some(mac),
        mtu: None,
    }
}

/// The NICs and the net exercise of `net` (the peer on the demo switch if
/// asked for).
pub fn demo_network(net: &DemoNet) -> (Vec<Arc<hnet::Nic>>, Arc<NetExercise>) {
    let switches = net.switches.clone().unwrap_or_default();
    let nics = hnet::build_nics(&net.nics, &switches, None)
        .unwrap_or_else(|e| panic!("building the demo NICs: {e}"));
    for nic in &nics {
        nic.lie_about_mac(net.mac_lie);
    }
    let peer = net.peer.then(|| {
        let cfg = PeerConfig {
            faults: net.peer_faults,
            ..PeerConfig::default()
        };
        Peer::attach(&switches.get(hnet::peer::DEMO_SWITCH), cfg)
            .unwrap_or_else(|e| panic!("starting the host peer: {e}"))
    });
    let cfg = ExerciseConfig {
        toggle_link: net.toggle_link,
        ..ExerciseConfig::default()
    };
    let ex = NetExercise::start(nics.clone(), peer, cfg)
        .unwrap_or_else(|e| panic!("starting the net exercise: {e}"));
    (nics, ex)
}

/// [`demo_setup_with`] with the network of `net`.
pub fn demo_setup_net(
    exercise: bool,
    tweak: impl FnOnce(&mut Vec<DiskSpec>),
    net: &DemoNet,
) -> (HvFactory, DiskDir) {
    let (dir, mut specs) = storage::demo::create_demo_disks(&std::env::temp_dir())
        .unwrap_or_else(|e| panic!("creating the demo disks: {e}"));
    tweak(&mut specs);
    let controller = StorageController::with_disks(ControllerConfig::default(), &specs)
        .unwrap_or_else(|e| panic!("opening the demo disks: {e}"));
    let (nics, ex) = demo_network(net);
    let factory = hv_glue::hyperv_with_vmbus(hv_glue::VmbusPartitionOptions {
        storage: Some(controller),
        net: nics,
        net_exercise: Some(ex),
        ic_exercise: exercise,
        ..hv_glue::VmbusPartitionOptions::test_guest()
    });
    (factory, DiskDir(dir))
}

/// Removes the generated disks when dropped.
pub struct DiskDir(PathBuf);

impl Drop for DiskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
