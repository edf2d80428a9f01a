//! smtp-gate user space: the loader, the pinned-map access and the parsing
//! of what operators type. The `smtp-gate` binary (main.rs) is a thin CLI
//! over this library; the integration tests use it too.

pub mod addr;
pub mod agent;
pub mod bus;
pub mod cli;
pub mod gate;
pub mod generate;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod syslog;
pub mod systemd;
