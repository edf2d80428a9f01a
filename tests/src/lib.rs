//! The differential test of the gate against the Linux stack, shared by
//! the test suite (tests/stack_differential.rs) and `cargo xtask fuzz`
//! (src/bin/gate-fuzz.rs). The labs and packets are testkit's.

pub mod stackdiff;
