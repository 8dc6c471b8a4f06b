//! hvkit integration tests: the bare-metal test guest booted on `host-test-vmm`
//! over KVM (tests/boot.rs) and, as the VMBus and device issues land, guest
//! crates driven against the in-process host. The test guest itself lives in
//! `tests/guest` (its own crate: it only builds for `x86_64-unknown-none`).
