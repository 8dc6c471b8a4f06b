//! Hyper-V synthetic networking for hvkit: NVSP and RNDIS over VMBus, and a `no_std` netvsc
//! guest client. (Being written: see issue 6.)
#![no_std]
#![forbid(unsafe_code)]
