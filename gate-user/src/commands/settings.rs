use std::time::Duration;

use anyhow::Result;
use gate_common::DenyMode;
use pop3::duration::format_duration;
use serde_json::json;
use smtp_gate::gate::{link_state::LinkState, local_addrs, GateMaps, PinDir};

use super::attach::request;
use smtp_gate::cli::SettingsArgs;

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
    let req = request(&args.settings)?;
    let changing = req.changes_settings() || req.dest.is_some();
    // A change is read, merged and written under the pin directory's lock,
    // which every writer of the settings takes (attach, exempt, settings),
    // and into the maps pinned while it is held (not ones a detach and
    // attach in between replaced).
    let _lock = if changing { dir.lock()? } else { None };
    let mut maps = GateMaps::open(&dir)?;
    let links: Vec<_> = dir
        .links()?
        .into_iter()
        .map(|l| {
            let state = LinkState::of(&l);
            (l, state)
        })
        .collect();
    if changing {
        let merged = req.apply_settings(maps.settings()?)?;
        maps.set_settings(&merged)?;
        if let Some(dest) = &req.dest {
            maps.set_scope(dest)?;
        }
        // The host's addresses are those of the gated interfaces' network
        // namespace: refresh them only from inside it.
        if links
            .iter()
            .any(|(_, state)| matches!(state, LinkState::Live { .. }))
        {
            maps.local_replace(&local_addrs::host_addresses()?)?;
        } else {
            eprintln!(
                "smtp-gate: note: the gated interfaces are not in this network namespace: \
                 the host addresses the reset mode answers for are left as they are"
            );
        }
    }
    let current = maps.settings()?;
    let ports = &current.ports[..current.port_count as usize];
    let window = Duration::from_nanos(current.window_ns);
    let scope = maps.scope_list()?;
    let ban_ports = &current.ban_ports[..current.ban_port_count as usize];
    let ban_prefix_v6 = gate_common::ipv6_mask_prefix(&current.ban_mask_v6);
    let dest: Vec<String> = if current.dest_scoped != 0 {
        scope.iter().map(ToString::to_string).collect()
    } else {
        Vec::new()
    };
    if args.json {
        let attached: Vec<_> = links
            .iter()
            .map(|(l, state)| {
                json!({
                    "iface": l.iface,
                    "mode": l.mode.to_string(),
                    "state": state.word(),
                    "detail": state.to_string(),
                })
            })
            .collect();
        let value = json!({
            "window_secs": window.as_secs_f64(),
            "ports": ports,
            "deny": deny_name(current.deny_mode),
            "log_rate_per_sec": current.log_rate_per_sec,
            "dest_scoped": current.dest_scoped != 0,
            "dest": dest,
            "ban_ports": ban_ports,
            "ban_prefix_v6": ban_prefix_v6,
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
    if dest.is_empty() {
        println!("dest      all");
    } else {
        println!("dest      {}", dest.join(", "));
    }
    let ban_ports: Vec<String> = ban_ports.iter().map(ToString::to_string).collect();
    if ban_ports.is_empty() {
        println!("ban ports none (the gated ports only)");
    } else {
        println!("ban ports {}", ban_ports.join(","));
    }
    println!("ban net   IPv6 /{ban_prefix_v6}");
    for (link, state) in links {
        println!("attached  {} ({}): {state}", link.iface, link.mode);
    }
    Ok(())
}
