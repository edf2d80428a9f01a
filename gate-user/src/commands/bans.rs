use std::time::Duration;

use anyhow::{bail, Result};
use pop3::duration::format_duration;
use serde_json::json;
use smtp_gate::gate::{GateMaps, PinDir};

use smtp_gate::cli::{BanAction, BanArgs};

pub fn ban(args: BanArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    // A ban may set the settings' `bans_in_use` bit: under the pin
    // directory's lock, like every other writer of the settings.
    let _lock = match args.action {
        BanAction::List { .. } => None,
        _ => dir.lock()?,
    };
    let mut maps = GateMaps::open(&dir)?;
    match args.action {
        BanAction::Add { addr, length } => {
            if maps.is_exempt(addr)? {
                bail!("{addr} is in an exempt network: exempt networks are never banned");
            }
            let net = maps.ban_network(addr)?;
            let ban = maps.ban(addr, length)?;
            println!(
                "banned {net} for {} (ban {} in a row)",
                format_duration(length),
                ban.count
            );
        }
        BanAction::Del { addr } => {
            let net = maps.ban_network(addr)?;
            if !maps.unban(addr)? {
                bail!("{net} has no ban");
            }
            println!("lifted the ban of {net}");
        }
        BanAction::List { json, all } => {
            let bans: Vec<_> = maps
                .bans()?
                .into_iter()
                .filter(|b| all || b.is_active())
                .collect();
            if json {
                let rows: Vec<_> = bans
                    .iter()
                    .map(|b| {
                        json!({
                            "network": b.net.to_string(),
                            "age_secs": b.age.as_secs_f64(),
                            "left_secs": b.time_left().as_secs_f64(),
                            "length_secs": b.length.as_secs_f64(),
                            "count": b.count,
                            "ended": !b.is_active(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if bans.is_empty() {
                println!("no bans");
                return Ok(());
            }
            println!(
                "{:<44} {:>12} {:>12} {:>5}",
                "NETWORK", "LENGTH", "LEFT", "COUNT"
            );
            for b in &bans {
                let left = if b.is_active() {
                    let left = b.time_left();
                    format_duration(Duration::from_secs(
                        left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    ))
                } else {
                    "ended".to_string()
                };
                println!(
                    "{:<44} {:>12} {:>12} {:>5}",
                    b.net.to_string(),
                    format_duration(b.length),
                    left,
                    b.count
                );
            }
        }
    }
    Ok(())
}
