//! Hyper-V TLFS core for guests: discovery, synthetic MSRs, hypercalls, SynIC,
//! reference TSC and synthetic timers. Shared with the host (`host-test-vmm`),
//! which uses the same definitions to emulate the hypervisor side.
#![no_std]
