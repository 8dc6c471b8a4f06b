//! Hyper-V emulation, independent of KVM (see crate docs).
