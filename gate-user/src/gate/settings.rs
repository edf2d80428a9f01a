//! The gate's settings policy: what a new gate starts with, and how a
//! requested change is checked and laid over the settings there are.

use std::time::Duration;

use anyhow::{bail, Result};
use gate_common::{DenyMode, Settings, DEFAULT_WINDOW_NS, MAX_PORTS};

pub const DEFAULT_LOG_RATE_PER_SEC: u32 = 5;
pub const DEFAULT_LOG_BURST: u32 = 10;

/// A change to the running gate's settings: each field that is `Some`
/// replaces what is there, the rest stays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub window: Option<Duration>,
    pub ports: Option<Vec<u16>>,
    pub deny: Option<DenyMode>,
    /// Denial log lines per second per CPU; the burst follows (twice the
    /// rate).
    pub log_rate_per_sec: Option<u32>,
}

impl SettingsChange {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with this change laid over it; refused if a value is not
    /// one the gate can take.
    pub fn apply(&self, base: Settings) -> Result<Settings> {
        let mut settings = base;
        if let Some(window) = self.window {
            settings.window_ns = window.as_nanos().min(u64::MAX as u128) as u64;
        }
        if let Some(ports) = &self.ports {
            validate_ports(ports)?;
            settings.ports = [0; MAX_PORTS];
            settings.ports[..ports.len()].copy_from_slice(ports);
            settings.port_count = ports.len() as u32;
        }
        if let Some(deny) = self.deny {
            settings.deny_mode = deny as u32;
        }
        if let Some(rate) = self.log_rate_per_sec {
            settings.log_rate_per_sec = rate;
            settings.log_burst = rate.saturating_mul(2);
        }
        Ok(settings)
    }
}

/// The settings of a new gate: window 15m, port 25, drop, 5 log lines/s.
pub fn default_settings() -> Settings {
    let mut settings = Settings::UNCONFIGURED;
    settings.window_ns = DEFAULT_WINDOW_NS;
    settings.ports[0] = 25;
    settings.port_count = 1;
    settings.deny_mode = DenyMode::Drop as u32;
    settings.log_rate_per_sec = DEFAULT_LOG_RATE_PER_SEC;
    settings.log_burst = DEFAULT_LOG_BURST;
    settings
}

/// Checks a port list: 1 to MAX_PORTS distinct ports, none of them 0.
pub fn validate_ports(ports: &[u16]) -> Result<()> {
    if ports.is_empty() || ports.len() > MAX_PORTS {
        bail!("--ports takes 1 to {MAX_PORTS} ports, got {}", ports.len());
    }
    if ports.contains(&0) {
        bail!("--ports: 0 is not a port");
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ports.len() {
        bail!("--ports: a port is listed twice");
    }
    Ok(())
}
