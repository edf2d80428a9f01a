//! The grant bus (issue 13, in progress): POP3 hosts publish their
//! grants to Redis or Valkey, every SMTP edge applies them to its own
//! gate. This part is the data model, without I/O:
//!
//! - every grant is a key `<prefix>grant:<address>` whose value is its
//!   expiry in wall-clock milliseconds (the engine's clock, clock.rs),
//!   expired by the engine itself (`SET ... PX`): the key set is the
//!   whole current state;
//! - every grant and revoke is also an entry of the stream
//!   `<prefix>events` (`XADD ... MAXLEN ~ N`): the ordered feed an edge
//!   follows from the last entry it applied.
//!
//! Whoever can write to the engine can open the gate: an edge checks
//! every entry and key it reads (event.rs) and clamps what it applies
//! (expiry.rs), but cannot tell a forged grant from a real one.
//!
//! The edge's side (`smtp-gate agent`, agent/): stream.rs reads the
//! engine's replies without trusting them, follow.rs decides what they do
//! to the local map and when the edge must reload the keys, state.rs keeps
//! its position (and the grant maps it holds for, map_identity.rs) and
//! its status on disk, tombstones.rs the revokes it applied
//! (so that an engine gone back to before a revoke cannot undo it).

pub mod clock;
pub mod command;
pub mod config;
pub mod event;
pub mod expiry;
#[cfg(test)]
mod fake_engine;
pub mod follow;
pub mod link;
pub mod map_identity;
pub mod names;
pub mod publisher;
pub mod state;
pub mod stream;
pub mod tombstones;
pub mod url;
