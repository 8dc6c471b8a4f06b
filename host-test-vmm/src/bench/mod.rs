//! Benchmarks (`host-test-vmm bench ...`): each prints a table and writes
//! JSON. They compare side by side in one run and report ratios, because this
//! machine is noisy and its KVM emulates guest CPL0 code: absolute times mean
//! little, ratios and counts (exits, notifications per operation) do.

pub mod hypercall;
pub mod net;
pub mod ring;
pub mod storage;

pub use hypercall::{
    hypercall_round_trip, BenchError, HypercallBenchConfig, HypercallBenchReport, Side,
};
pub use net::{net_throughput, NetBenchConfig, NetBenchError, NetBenchReport};
pub use ring::{ring_throughput, RingBenchConfig, RingBenchError, RingBenchReport};
pub use storage::{
    storage_throughput, Budget, StorageBenchConfig, StorageBenchError, StorageBenchReport,
};
