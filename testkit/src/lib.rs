//! What the privileged tests (gate-tests), the demo and the benchmarks
//! (gate-bench) share: network-namespace labs with the real `smtp-gate`
//! binary in them, and crafted packets with an independent parser.

pub mod lab;
pub mod packets;
