//! Shared helpers of the privileged tests, the demo and the benchmarks:
//! crafted packets for BPF_PROG_TEST_RUN and network-namespace labs.

pub mod lab;
pub mod packets;
pub mod stackdiff;
