//! The key that turns the metrics endpoint on, for `serve` and `agent`
//! alike (flattened into their configs; `--metrics-listen` in cli.rs).

use std::net::SocketAddr;

use serde::Deserialize;

use crate::keys::KeyError;

/// A port no exporter of Prometheus's list takes: that list (the wiki's
/// "Default port allocations") has filled 9100 to 9999; 10110 is beyond
/// it, is none of the mail stack's (Postfix's content filters use 10024
/// to 10026, rspamd 11332 to 11334), and ends in POP3's 110.
pub const EXAMPLE_PORT: u16 = 10110;

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct MetricsKeys {
    /// Where Prometheus scrapes the daemon (`GET /metrics`): addresses
    /// with their ports. Off (none) by default.
    #[serde(default)]
    pub metrics_listen: Vec<SocketAddr>,
}

impl MetricsKeys {
    pub fn check(&self) -> Result<(), KeyError> {
        for (i, addr) in self.metrics_listen.iter().enumerate() {
            if self.metrics_listen[..i].contains(addr) {
                return Err(KeyError::of(
                    "metrics_listen",
                    format!("{addr} is given twice"),
                ));
            }
        }
        Ok(())
    }
}
