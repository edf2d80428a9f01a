//! The gate's settings policy: what a new gate starts with, and what it
//! can take.

use gate_common::{ipv6_mask, DenyMode, Settings, DEFAULT_WINDOW_NS, MAX_PORTS};

pub const DEFAULT_LOG_RATE_PER_SEC: u32 = 5;
pub const DEFAULT_LOG_BURST: u32 = 10;

/// The login ports a banned source is shut out of besides the gated
/// ones: POP3, POP3S, IMAP, IMAPS.
pub const DEFAULT_BAN_PORTS: [u16; 4] = [110, 995, 143, 993];
/// The network an IPv6 ban covers: a /64, the usual end-user network.
pub const DEFAULT_BAN_PREFIX_V6: u8 = 64;

/// The login ports and the ban prefix of a new gate (or one carried over
/// from a build without bans).
pub fn default_ban_settings(settings: &mut Settings) {
    settings.ban_ports = [0; MAX_PORTS];
    settings.ban_ports[..DEFAULT_BAN_PORTS.len()].copy_from_slice(&DEFAULT_BAN_PORTS);
    settings.ban_port_count = DEFAULT_BAN_PORTS.len() as u32;
    settings.ban_mask_v6 = ipv6_mask(DEFAULT_BAN_PREFIX_V6.into());
}

/// The settings of a new gate: window 15m, port 25, drop, 5 log lines/s;
/// bans checked at the login ports 110, 995, 143 and 993, IPv6 per /64.
pub fn default_settings() -> Settings {
    let mut settings = Settings::UNCONFIGURED;
    settings.window_ns = DEFAULT_WINDOW_NS;
    settings.ports[0] = 25;
    settings.port_count = 1;
    settings.deny_mode = DenyMode::Drop as u32;
    settings.log_rate_per_sec = DEFAULT_LOG_RATE_PER_SEC;
    settings.log_burst = DEFAULT_LOG_BURST;
    default_ban_settings(&mut settings);
    settings
}

/// Checks a port list: 1 to MAX_PORTS distinct ports, none of them 0.
/// The error says what is wrong; the caller names the flag or key.
pub fn validate_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() || ports.len() > MAX_PORTS {
        return Err(format!("takes 1 to {MAX_PORTS} ports, got {}", ports.len()));
    }
    if ports.contains(&0) {
        return Err("0 is not a port".to_string());
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != ports.len() {
        return Err("a port is listed twice".to_string());
    }
    Ok(())
}

/// Checks a list of login ports: up to MAX_PORTS distinct ports, none of
/// them 0; empty means bans are checked at the gated ports only.
pub fn validate_ban_ports(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    validate_ports(ports).map_err(|why| why.replace("takes 1 to", "takes 0 to"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_are_checked() {
        assert_eq!(validate_ports(&[25]), Ok(()));
        assert_eq!(validate_ports(&[1, 2, 3, 4, 5, 6, 7, 8]), Ok(()));
        assert_eq!(
            validate_ports(&[]),
            Err("takes 1 to 8 ports, got 0".to_string())
        );
        assert_eq!(
            validate_ports(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err("takes 1 to 8 ports, got 9".to_string())
        );
        assert_eq!(validate_ports(&[25, 0]), Err("0 is not a port".to_string()));
        assert_eq!(
            validate_ports(&[25, 587, 25]),
            Err("a port is listed twice".to_string())
        );
    }

    #[test]
    fn login_port_lists_may_be_empty() {
        assert_eq!(validate_ban_ports(&[]), Ok(()));
        assert_eq!(validate_ban_ports(&DEFAULT_BAN_PORTS), Ok(()));
        assert_eq!(
            validate_ban_ports(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            Err("takes 0 to 8 ports, got 9".to_string())
        );
        assert_eq!(validate_ban_ports(&[0]), Err("0 is not a port".to_string()));
    }

    #[test]
    fn a_new_gate_bans_at_the_login_ports_per_ipv6_64() {
        let s = default_settings();
        for port in [110, 995, 143, 993] {
            assert!(s.bans_port(port), "{port}");
        }
        assert!(!s.bans_port(25));
        assert_eq!(gate_common::ipv6_mask_prefix(&s.ban_mask_v6), 64);
        assert_eq!(s.bans_in_use, 0);
    }

    #[test]
    fn a_new_gate_gates_port_25_for_15_minutes_and_drops() {
        let s = default_settings();
        assert!(s.gates_port(25) && !s.gates_port(587));
        assert_eq!(s.window_ns, 15 * 60 * 1_000_000_000);
        assert_eq!(DenyMode::from_u32(s.deny_mode), Some(DenyMode::Drop));
        assert_eq!((s.log_rate_per_sec, s.log_burst), (5, 10));
    }
}
