//! The smtp-gate packet parser and verdict. `no_std` and free of BPF
//! helpers: the kernel program (gate-ebpf) compiles it in and supplies its
//! maps through [`judge::GateState`]; on the host it is unit-tested and
//! fuzzed against the same code.
//!
//! All memory safety rests on one promise, made where a [`cursor::Packet`]
//! is built from raw addresses: the bytes are readable and unchanged while
//! the packet is parsed.
#![cfg_attr(not(test), no_std)]

pub mod cursor;
pub mod headers;
pub mod judge;
pub mod parse;
pub mod plain;
pub mod reset;

pub use cursor::{Cut, Packet, PacketMut, MAX_WALK};
pub use judge::{
    bans_in_use, decide, judge, unsent_reset, Action, Decision, Denial, GateState, Verdict,
};
pub use parse::{parse, Addr, AddrRef, Parsed, Partial, Reason, Syn};
pub use plain::{plain, Plain};
pub use reset::Reply;
