//! The hand-assembled programs' toolkit lives with the gate's clock probe
//! in smtp-gate; the benchmarks use it from there.
pub use smtp_gate::gate::bpf_asm::*;
