use std::time::Duration;

use anyhow::Result;
use gate_common::DenyMode;
use serde_json::json;
use smtp_gate::{
    duration::format_duration,
    gate::{attach::merge_settings, GateMaps, PinDir},
};

use super::attach::request;
use crate::cli::SettingsArgs;

fn deny_name(raw: u32) -> &'static str {
    match DenyMode::from_u32(raw) {
        Some(DenyMode::Drop) => "drop",
        Some(DenyMode::Reset) => "reset",
        Some(DenyMode::Monitor) => "monitor",
        None => "unknown",
    }
}

pub fn settings(args: SettingsArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    let mut maps = GateMaps::open(&dir)?;
    let s = &args.settings;
    let changing =
        s.window.is_some() || s.ports.is_some() || s.deny.is_some() || s.log_rate.is_some();
    if changing {
        let merged = merge_settings(maps.settings()?, &request("", s))?;
        maps.set_settings(&merged)?;
    }
    let current = maps.settings()?;
    let ports = &current.ports[..current.port_count as usize];
    let window = Duration::from_nanos(current.window_ns);
    let links = dir.links()?;
    if args.json {
        let attached: Vec<_> = links
            .iter()
            .map(|l| json!({"iface": l.iface, "mode": l.mode.to_string()}))
            .collect();
        let value = json!({
            "window_secs": window.as_secs_f64(),
            "ports": ports,
            "deny": deny_name(current.deny_mode),
            "log_rate_per_sec": current.log_rate_per_sec,
            "attached": attached,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
    println!("window    {}", format_duration(window));
    println!("ports     {}", ports.join(","));
    println!("deny      {}", deny_name(current.deny_mode));
    println!("log rate  {}/s per CPU", current.log_rate_per_sec);
    for link in links {
        println!("attached  {} ({})", link.iface, link.mode);
    }
    Ok(())
}
