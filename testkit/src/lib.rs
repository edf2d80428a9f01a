//! What the privileged tests (gate-tests), the demo and the benchmarks
//! (gate-bench) share: network-namespace labs with the real `smtp-gate`
//! binary in them, and crafted packets with an independent parser.

pub mod bpffs;
pub mod bus_lab;
pub mod counters;
pub mod cpus;
pub mod denial;
mod dirs;
pub mod dovecot;
pub mod faketime;
pub mod gate_binary;
pub mod imap_client;
pub mod lab;
pub mod mail;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod packets;
pub mod pop3_client;
pub mod postfix;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod scratch;
pub mod serve;
pub mod smtp;
pub mod tls;
pub mod window;
