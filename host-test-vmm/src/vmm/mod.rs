//! KVM partition management (see crate docs).
