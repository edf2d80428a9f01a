//! Prometheus metrics (issue 14): the page a daemon serves on
//! `metrics_listen` (endpoint.rs), made at each scrape from the counters
//! it keeps anyway (page.rs): the gate's packet counters and the census
//! of its grant and ban maps (gate.rs, census.rs), POP3's logins and
//! sessions (pop3.rs), the grant bus (bus.rs), the hooks (policy.rs). In
//! Prometheus's text format, version 0.0.4 (exposition.rs). `smtp-gate
//! stats --prometheus` prints the gate's part once, for node-exporter's
//! textfile collector.
//!
//! Names follow Prometheus's conventions: `smtp_gate_` first, `_total`
//! for counters, seconds, no label with an address or a user in it.

mod bus;
pub mod census;
pub mod config;
pub mod endpoint;
pub mod exposition;
pub mod gate;
mod page;
mod policy;
mod pop3;
mod renders;

pub use config::MetricsKeys;
pub use endpoint::MetricsListeners;
pub use page::{build_info, GateSource, Page};
