//! The control API driving the test guest's integration services end to
//! end: the host's exercise script is off, so everything the guest's IC
//! checks verify (the KVP round trip, VSS freeze/thaw, the file copy and its
//! checksum, the graceful shutdown) arrives through `PUT /api/v1/...`
//! requests made here. The run must end through the guest's own shutdown
//! path (its debug exit after answering the shutdown IC), not a power-off.

use std::path::Path;
use std::time::{Duration, Instant};

use host_test_vmm::api::{self, client};
use host_test_vmm::vmm::{RunEnd, SerialOutput, VmConfig};
use hvkit_tests::{demo_setup_with, guest_elf, require_kvm};
use serde_json::{json, Value};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn put(socket: &Path, endpoint: &str, body: Value) -> Value {
    let r = client::request(socket, "PUT", endpoint, Some(&body), REQUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("PUT {endpoint}: {e}"));
    assert_eq!(r.status, 200, "PUT {endpoint} {body}: {}", r.body);
    r.body
}

/// Waits until every named IC service is negotiated with the guest.
fn wait_ready(socket: &Path, services: &[&str], deadline: Instant) {
    loop {
        let ready = client::request(socket, "GET", "ic", None, REQUEST_TIMEOUT)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| {
                let list = r.body["services"].as_array().cloned().unwrap_or_default();
                services.iter().all(|name| {
                    list.iter()
                        .any(|s| s["service"] == *name && s["state"] == "ready")
                })
            })
            .unwrap_or(false);
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never opened {services:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn control_api_drives_the_guest_ics_and_shuts_it_down_gracefully() {
    require_kvm();
    let (factory, _disks) = demo_setup_with(false, |_| {});
    let dir = std::env::temp_dir().join(format!("hvkit-api-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("api.sock");
    // The file the guest's ic-fcopy check expects: 8192 bytes, byte i = i % 251.
    let file = dir.join("hvkit-fcopy.bin");
    let content: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).expect("write the file to copy");

    let mut cfg = VmConfig::from_file(guest_elf()).expect("read the test guest");
    cfg.serial = SerialOutput::Null;
    cfg.timeout = Some(Duration::from_secs(300));
    cfg.hv = factory;
    let run_socket = socket.clone();
    let run = std::thread::spawn(move || api::run_with_api(cfg, &run_socket));

    let deadline = Instant::now() + Duration::from_secs(240);
    wait_ready(&socket, &["kvp", "vss", "fcopy"], deadline);

    let key = "hvkit-exercise-key";
    let value = "hvkit-exercise-value";
    put(
        &socket,
        "kvp.set",
        json!({"pool": "external", "key": key, "value": value}),
    );
    let got = put(&socket, "kvp.get", json!({"pool": "external", "key": key}));
    assert_eq!(got["value"], value, "KVP round trip through the guest");
    let auto = put(&socket, "kvp.enumerate", json!({"pool": "auto"}));
    assert!(
        auto["items"].as_array().is_some_and(|v| !v.is_empty()),
        "the guest lists its AUTO pool: {auto}"
    );
    put(
        &socket,
        "kvp.delete",
        json!({"pool": "external", "key": key}),
    );
    put(&socket, "vss", json!({"operation": "freeze"}));
    put(&socket, "vss", json!({"operation": "thaw"}));
    let copied = put(
        &socket,
        "fcopy",
        json!({"source": file, "file_name": "hvkit-fcopy.bin", "path": "/hvkit",
               "overwrite": true, "create_path": true}),
    );
    assert_eq!(copied["bytes"], 8192, "{copied}");

    // The guest opens its shutdown channel last, once its other IC checks are done.
    wait_ready(&socket, &["shutdown"], deadline);
    let down = put(
        &socket,
        "vm.shutdown",
        json!({"timeout_secs": 60, "message": "hvkit api test: power off"}),
    );
    assert_eq!(down["result"], "guest-shut-down", "{down}");

    let out = run
        .join()
        .expect("the run thread")
        .expect("the partition ran");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        matches!(out.end, RunEnd::DebugExit { code: 0, .. }),
        "the guest ended through its own exit path: {:?}\n{}",
        out.end,
        out.serial
    );
    for name in [
        "ic-heartbeat",
        "ic-timesync",
        "ic-kvp",
        "ic-vss",
        "ic-fcopy",
        "ic-shutdown",
    ] {
        let c = out
            .report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}"));
        assert!(
            c.ok,
            "{name} failed when driven through the API: {}",
            c.detail
        );
    }
    assert!(out.passed(), "{}", out.serial);
}
