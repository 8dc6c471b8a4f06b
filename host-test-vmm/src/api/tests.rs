//! The control API: routing and error replies against a scripted owner
//! loop, then the real thing on a unix socket in front of a tiny KVM
//! partition (which needs /dev/kvm; these tests fail without it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{self, CtlCommand};
use super::http::Request;
use super::*;
use crate::vmm::elf::ElfImage;
use crate::vmm::{hv_glue, RunEnd, SerialOutput, VmConfig};

fn req(method: &str, name: &str, body: Value) -> Request {
    Request {
        method: method.into(),
        path: format!("{API_PREFIX}{name}"),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    }
}

/// An owner loop that carries out commands on a pretend partition.
fn scripted_owner(owner: VmOwner) -> JoinHandle<()> {
    std::thread::spawn(move || {
        owner.set_state(VmState::Running, None);
        let mut paused = false;
        while let Some((cmd, reply)) = owner.next(Duration::from_secs(5)) {
            let r = match cmd {
                VmCommand::Pause if paused => Err(ApiError::conflict("already paused")),
                VmCommand::Pause => {
                    paused = true;
                    owner.set_state(VmState::Paused, None);
                    Ok(())
                }
                VmCommand::Resume if !paused => Err(ApiError::conflict("not paused")),
                VmCommand::Resume | VmCommand::Reset => {
                    paused = false;
                    owner.set_state(VmState::Running, None);
                    Ok(())
                }
                VmCommand::PowerOff => {
                    owner.set_state(VmState::Ended, Some(RunEnd::Stopped));
                    let _ = reply.send(Ok(()));
                    return;
                }
            };
            let _ = reply.send(r);
        }
    })
}

#[test]
fn routing_and_error_replies() {
    let (vm, owner) = VmHandle::new(2, 64 << 20);
    let t = scripted_owner(owner);
    let targets = ApiTargets {
        vm: vm.clone(),
        ics: None,
        storage: None,
        net: Vec::new(),
    };
    let h = |r: Request| handle_request(&targets, &r);
    // Wait for the pretend partition to run.
    while vm.state() != VmState::Running {
        std::thread::yield_now();
    }
    let info = h(req("GET", "vm.info", Value::Null)).unwrap();
    assert_eq!(info["state"], "running");
    assert_eq!(info["cpus"], 2);
    assert_eq!(info["memory"], 64 << 20);
    assert!(info.get("ics").is_none());

    let e = h(req("GET", "nope", Value::Null)).unwrap_err();
    assert_eq!(e.status, 404);
    let e = h(Request {
        path: "/other/vm.info".into(),
        ..req("GET", "vm.info", Value::Null)
    })
    .unwrap_err();
    assert_eq!(e.status, 404);
    assert_eq!(
        h(req("PUT", "vm.info", Value::Null)).unwrap_err().status,
        405
    );
    assert_eq!(
        h(req("GET", "vm.pause", Value::Null)).unwrap_err().status,
        405
    );
    assert_eq!(
        h(req("DELETE", "kvp.get", Value::Null)).unwrap_err().status,
        405
    );

    assert_eq!(
        h(req("PUT", "vm.pause", Value::Null)).unwrap()["state"],
        "paused"
    );
    assert_eq!(
        h(req("PUT", "vm.pause", Value::Null)).unwrap_err().status,
        409
    );
    // A paused guest cannot answer IC requests.
    let e = h(req("PUT", "vm.shutdown", json!({"timeout_secs": 1}))).unwrap_err();
    assert_eq!(e.status, 409);
    assert!(e.message.contains("paused"), "{}", e.message);
    assert_eq!(
        h(req("PUT", "vm.resume", Value::Null)).unwrap()["state"],
        "running"
    );
    assert_eq!(
        h(req("PUT", "vm.resume", Value::Null)).unwrap_err().status,
        409
    );
    assert_eq!(
        h(req("PUT", "vm.reset", Value::Null)).unwrap()["state"],
        "running"
    );

    // Bodies are checked.
    let bad = Request {
        body: b"{not json".to_vec(),
        ..req("PUT", "vm.pause", Value::Null)
    };
    assert_eq!(h(bad).unwrap_err().status, 400);
    assert_eq!(
        h(req("PUT", "vm.pause", json!({"x": 1})))
            .unwrap_err()
            .status,
        400
    );
    let e = h(req("PUT", "vm.shutdown", json!({"timeout_secs": 0}))).unwrap_err();
    assert_eq!(e.status, 400);

    // No VMBus ICs in this partition: said so, for every IC endpoint.
    for (name, body) in [
        ("kvp.get", json!({"pool": "external", "key": "k"})),
        ("time.sync", Value::Null),
        ("vss", json!({"operation": "freeze"})),
        ("fcopy", json!({"data": "x", "file_name": "f", "path": "/"})),
    ] {
        let e = h(req("PUT", name, body)).unwrap_err();
        assert_eq!(e.status, 501, "{name}");
        assert!(e.message.contains("no VMBus integration components"));
    }
    assert_eq!(
        h(req("GET", "ic.heartbeat", Value::Null))
            .unwrap_err()
            .status,
        501
    );
    let e = h(req("PUT", "vm.add-disk", json!({"path": "/tmp/x.img"}))).unwrap_err();
    assert_eq!(e.status, 501);
    assert!(e.message.contains("no storage controller"));

    // Graceful shutdown without a shutdown IC powers off at once, and says why.
    let r = h(req("PUT", "vm.shutdown", json!({"timeout_secs": 2}))).unwrap();
    assert_eq!(r["result"], "powered-off");
    assert_eq!(r["acknowledged"], false);
    assert!(r["reason"]
        .as_str()
        .unwrap()
        .contains("no shutdown integration component"));
    assert_eq!(r["end"]["kind"], "stopped");
    t.join().unwrap();
    assert_eq!(vm.state(), VmState::Ended);
    let e = h(req("PUT", "vm.pause", Value::Null)).unwrap_err();
    assert_eq!(e.status, 409);
    assert!(e.message.contains("ended"));
}

#[test]
fn bad_argument_replies_name_the_problem() {
    let (vm, owner) = VmHandle::new(1, 1 << 20);
    let _t = scripted_owner(owner);
    while vm.state() != VmState::Running {
        std::thread::yield_now();
    }
    let ics = crate::ic::HostIcs::new(crate::ic::IcConfig::new(std::sync::Arc::new(|| 0))).unwrap();
    let targets = ApiTargets {
        vm: vm.clone(),
        ics: Some(ics.clone()),
        storage: None,
        net: Vec::new(),
    };
    let h = |r: Request| handle_request(&targets, &r);
    let cases = [
        ("kvp.get", json!({"key": "k"}), "pool is required"),
        (
            "kvp.get",
            json!({"pool": "attic", "key": "k"}),
            "pool \"attic\"",
        ),
        ("kvp.get", json!({"pool": 9, "key": "k"}), "pool \"9\""),
        ("kvp.get", json!({"pool": "guest"}), "key is required"),
        (
            "kvp.get",
            json!({"pool": 0, "key": "k", "value": "v"}),
            "takes no value",
        ),
        (
            "kvp.set",
            json!({"pool": 0, "key": "k"}),
            "value is required",
        ),
        (
            "kvp.set",
            json!({"pool": 0, "key": "k", "value": -1}),
            "unsigned",
        ),
        (
            "kvp.set",
            json!({"pool": 0, "key": "k", "value": [1]}),
            "expected a string",
        ),
        (
            "kvp.enumerate",
            json!({"pool": 0, "key": "k"}),
            "takes no key",
        ),
        ("time.sync", json!({"mode": "now"}), "mode \"now\""),
        ("vss", json!({}), "operation is required"),
        (
            "vss",
            json!({"operation": "melt"}),
            "VSS operation \"melt\"",
        ),
        (
            "fcopy",
            json!({"file_name": "f", "path": "/"}),
            "exactly one of source",
        ),
        (
            "fcopy",
            json!({"data": "x", "path": "/"}),
            "file_name is required",
        ),
        ("fcopy", json!({"data": "x", "file_name": "f"}), "path"),
        (
            "fcopy",
            json!({"source": "/nonexistent/hvkit", "file_name": "f", "path": "/"}),
            "cannot read source",
        ),
        ("vm.reboot", json!({"timeout_secs": 99999}), "at most"),
        ("vm.shutdown", json!({"force": "yes"}), "bad body"),
    ];
    for (name, body, why) in cases {
        let e = h(req("PUT", name, body.clone())).unwrap_err();
        assert_eq!(e.status, 400, "{name} {body}: {e}");
        assert!(e.message.contains(why), "{name} {body}: {}", e.message);
    }
    // Well-formed IC requests the guest cannot take: the service is not open.
    let e = h(req(
        "PUT",
        "kvp.get",
        json!({"pool": "external", "key": "k"}),
    ))
    .unwrap_err();
    assert_eq!(e.status, 503);
    assert_eq!(e.message, "the guest has not opened the kvp service");
    let e = h(req("PUT", "vss", json!({"operation": "thaw"}))).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (503, "the guest has not opened the vss service")
    );
    let hb = h(req("GET", "ic.heartbeat", Value::Null)).unwrap();
    assert_eq!(hb["state"], "not-open");
    assert_eq!(hb["alive"], false);
    let all = h(req("GET", "ic", Value::Null)).unwrap();
    assert_eq!(all["services"].as_array().unwrap().len(), 6);
    assert_eq!(all["services"][3]["service"], "kvp");
    assert_eq!(all["services"][3]["state"], "closed");
    ics.stop();
}

/// `hlt; jmp $-1`: a guest that only waits.
fn idle_guest() -> VmConfig {
    let elf = ElfImage::build_flat(&[0xF4, 0xEB, 0xFD], 0x20_0000);
    let mut c = VmConfig::new(elf);
    c.memory = 16 << 20;
    c.serial = SerialOutput::Null;
    c.timeout = Some(Duration::from_secs(120));
    c.expected_checks = Vec::new();
    c.hv = hv_glue::default_factory();
    c
}

fn socket_path() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "hvkit-api-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

fn ctl(sock: &std::path::Path, cmd: CtlCommand) -> client::CtlReply {
    client::run_ctl(sock, &cmd).unwrap()
}

#[test]
fn api_on_a_socket_drives_a_kvm_partition() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is absent: this test needs KVM"
    );
    let sock = socket_path();
    let s2 = sock.clone();
    let run = std::thread::spawn(move || run_with_api(idle_guest(), &s2));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let info = loop {
        if let Ok(r) = client::request(&sock, "GET", "vm.info", None, Duration::from_secs(5)) {
            if r.body["state"] == "running" {
                break r;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(info.ok());
    assert_eq!(info.body["cpus"], 1);
    assert_eq!(info.body["ics"]["services"].as_array().unwrap().len(), 6);

    let r = ctl(&sock, CtlCommand::Pause);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("paused")));
    let r = ctl(&sock, CtlCommand::Pause);
    assert_eq!(r.status, 409);
    assert!(r.body["error"].as_str().unwrap().contains("already paused"));
    assert_eq!(ctl(&sock, CtlCommand::Info).body["state"], "paused");
    let r = ctl(&sock, CtlCommand::Resume);
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("running")));
    let r = ctl(&sock, CtlCommand::Reset);
    assert_eq!(r.status, 200);
    assert_eq!(ctl(&sock, CtlCommand::Info).body["resets"], 1);

    // The idle guest opens no IC: the API says so.
    let r = ctl(
        &sock,
        CtlCommand::KvpGet {
            pool: "auto".into(),
            key: "OSName".into(),
        },
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"], "the guest has not opened the kvp service");
    let r = ctl(&sock, CtlCommand::Heartbeat);
    assert_eq!(
        (r.status, r.body["state"].as_str()),
        (200, Some("not-open"))
    );
    let r = ctl(
        &sock,
        CtlCommand::AddDisk {
            path: "/tmp/disk.img".into(),
            readonly: false,
            lun: None,
        },
    );
    assert_eq!(r.status, 501);
    // Raw HTTP errors: an unknown endpoint and a malformed request.
    let r = client::request(&sock, "GET", "vm.nothing", None, Duration::from_secs(5)).unwrap();
    assert_eq!(r.status, 404);
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(b"BROKEN\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
        assert!(text.contains("\"error\""));
    }

    // Graceful shutdown: the guest has no shutdown IC open, so the host
    // powers off and the run ends.
    let r = ctl(
        &sock,
        CtlCommand::Shutdown {
            timeout: Some(2),
            force: false,
            message: None,
        },
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["result"], "powered-off");
    assert_eq!(r.body["acknowledged"], false);
    assert!(r.body["reason"]
        .as_str()
        .unwrap()
        .contains("has not opened the shutdown service"));
    let out = run.join().unwrap().unwrap();
    assert_eq!(out.end, RunEnd::Stopped);
    assert!(!sock.exists(), "the socket file is removed at the end");
    assert!(matches!(
        client::run_ctl(&sock, &CtlCommand::Info),
        Err(client::CtlError::Connect { .. })
    ));
}

#[test]
fn power_off_ends_the_run_and_a_busy_socket_path_is_refused() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "/dev/kvm is absent: this test needs KVM"
    );
    // A regular file in the way is not replaced.
    let blocked = socket_path();
    std::fs::write(&blocked, b"keep me").unwrap();
    let e = run_with_api(idle_guest(), &blocked).unwrap_err();
    assert!(matches!(e, ApiRunError::Socket { .. }), "{e}");
    assert_eq!(std::fs::read(&blocked).unwrap(), b"keep me");
    std::fs::remove_file(&blocked).unwrap();

    let sock = socket_path();
    let s2 = sock.clone();
    let run = std::thread::spawn(move || run_with_api(idle_guest(), &s2));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !client::request(&sock, "GET", "vm.info", None, Duration::from_secs(5))
        .is_ok_and(|r| r.body["state"] == "running")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the API never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = ctl(&sock, CtlCommand::PowerOff);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "ended");
    assert_eq!(r.body["end"]["kind"], "stopped");
    assert_eq!(run.join().unwrap().unwrap().end, RunEnd::Stopped);
}

#[test]
fn disks_hot_add_and_remove_on_the_storage_controller() {
    use crate::storage::{ControllerConfig, StorageController};
    let (vm, owner) = VmHandle::new(1, 1 << 20);
    let _t = scripted_owner(owner);
    let cfg = ControllerConfig {
        io_threads: 1,
        ..ControllerConfig::default()
    };
    let targets = ApiTargets {
        vm: vm.clone(),
        ics: None,
        storage: Some(StorageController::new(cfg).unwrap()),
        net: Vec::new(),
    };
    let h = |r: Request| handle_request(&targets, &r);
    let img = socket_path().with_extension("img");
    std::fs::write(&img, vec![0u8; 64 * 1024]).unwrap();
    let r = h(req("PUT", "vm.add-disk", json!({"path": img}))).unwrap();
    assert_eq!(r["lun"], 0);
    let r = h(req(
        "PUT",
        "vm.add-disk",
        json!({"path": img, "readonly": true, "lun": 5}),
    ))
    .unwrap();
    assert_eq!(r["disks"], json!([0, 5]));
    let e = h(req("PUT", "vm.add-disk", json!({"path": img, "lun": 5}))).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (409, "LUN 5 is already in use")
    );
    let e = h(req(
        "PUT",
        "vm.add-disk",
        json!({"path": "/nonexistent/hvkit.img"}),
    ))
    .unwrap_err();
    assert_eq!(e.status, 400);
    assert!(
        e.message.contains("cannot open disk image"),
        "{}",
        e.message
    );
    assert_eq!(
        h(req("PUT", "vm.add-disk", json!({}))).unwrap_err().status,
        400
    );
    assert_eq!(
        h(req("GET", "vm.info", Value::Null)).unwrap()["disks"],
        json!([0, 5])
    );
    let r = h(req("PUT", "vm.remove-disk", json!({"lun": 0}))).unwrap();
    assert_eq!(r["disks"], json!([5]));
    let e = h(req("PUT", "vm.remove-disk", json!({"lun": 0}))).unwrap_err();
    assert_eq!((e.status, e.message.as_str()), (404, "no disk at LUN 0"));
    assert_eq!(
        h(req("PUT", "vm.remove-disk", json!({})))
            .unwrap_err()
            .status,
        400
    );
    std::fs::remove_file(&img).unwrap();
}

/// `GET net` and `PUT net.link`: NIC selection, link changes reach the NIC
/// (and its counters), and every bad request names what is wrong.
#[test]
fn net_link_sets_a_nics_link() {
    use crate::net::{Nic, NicConfig, Switch};
    use std::sync::Arc;
    let (vm, owner) = VmHandle::new(1, 1 << 20);
    let _t = scripted_owner(owner);
    let sw = Switch::new("api");
    let nic = |n: u16| Nic::new(NicConfig::numbered(n), Arc::new(sw.port("p"))).unwrap();
    let (n0, n1) = (nic(0), nic(1));

    // No NIC: not supported, with the flag that adds one.
    let none = ApiTargets {
        vm: vm.clone(),
        ics: None,
        storage: None,
        net: Vec::new(),
    };
    let e = handle_request(&none, &req("PUT", "net.link", json!({"up": false}))).unwrap_err();
    assert_eq!(e.status, 501, "{}", e.message);
    assert!(e.message.contains("--net"), "{}", e.message);
    assert_eq!(
        handle_request(&none, &req("GET", "net", Value::Null)).unwrap(),
        json!([])
    );

    // One NIC: `nic` may be left out.
    let one = ApiTargets {
        net: vec![Arc::clone(&n0)],
        ..none
    };
    let h = |r: Request| handle_request(&one, &r);
    let r = h(req("PUT", "net.link", json!({"up": false}))).unwrap();
    assert_eq!(r["name"], "net0");
    assert_eq!(r["link_up"], false);
    assert!(!n0.link_up());
    assert_eq!(
        h(req("GET", "net", Value::Null)).unwrap()[0]["link_up"],
        false
    );
    let r = h(req("PUT", "net.link", json!({"nic": "net0", "up": true}))).unwrap();
    assert_eq!(r["link_up"], true);
    assert_eq!(r["stats"]["link_up"], true);
    assert!(n0.link_up());
    // Bad requests.
    let e = h(req("PUT", "net.link", json!({}))).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("up"), "{}", e.message);
    let e = h(req("PUT", "net.link", json!({"up": "down"}))).unwrap_err();
    assert_eq!(e.status, 400, "{}", e.message);
    let e = h(req("PUT", "net.link", json!({"up": true, "speed": 10}))).unwrap_err();
    assert_eq!(e.status, 400, "{}", e.message);
    let e = h(req("PUT", "net.link", json!({"nic": "net7", "up": true}))).unwrap_err();
    assert_eq!(e.status, 404);
    assert!(e.message.contains("net7"), "{}", e.message);
    assert_eq!(
        h(req("GET", "net.link", Value::Null)).unwrap_err().status,
        405
    );

    // Two NICs: `nic` is required and only the named one changes.
    let two = ApiTargets {
        net: vec![Arc::clone(&n0), Arc::clone(&n1)],
        ..one
    };
    let e = handle_request(&two, &req("PUT", "net.link", json!({"up": false}))).unwrap_err();
    assert_eq!(e.status, 400);
    assert!(e.message.contains("nic is required"), "{}", e.message);
    let r = handle_request(
        &two,
        &req("PUT", "net.link", json!({"nic": "net1", "up": false})),
    )
    .unwrap();
    assert_eq!(r["name"], "net1");
    assert!(!n1.link_up() && n0.link_up());
    let all = handle_request(&two, &req("GET", "net", Value::Null)).unwrap();
    assert_eq!(all[0]["link_up"], true);
    assert_eq!(all[1]["link_up"], false);
}
