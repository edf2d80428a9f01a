//! A differential test of the gate against the Linux stack: crafted frame
//! sequences around "a TCP SYN to a gated port" are sent raw from a client
//! namespace to a server namespace where the gate is attached with no
//! grant, and every SYN-ACK that comes back is a SYN the gate let through
//! and the stack accepted. The kernel's parser is the reference, not ours.
//!
//! - [`gen`]: the case generator (seeded, reproducible, every case
//!   described and printable in hex);
//! - [`wire`]: byte-level encoders;
//! - [`raw`]: AF_PACKET sending and SYN-ACK capture;
//! - [`runner`]: the lab (VLAN devices, MTU, reassembly limits), the passes
//!   (drop, monitor, granted, non-gated port), legitimate-traffic checks;
//! - [`report`]: results grouped by category and shape.

pub mod gen;
pub mod raw;
pub mod report;
pub mod rng;
pub mod runner;
pub mod wire;
