use std::time::Duration;

use anyhow::Result;
use pop3::{
    duration::format_duration,
    grant_log::{grant_line, GrantFields, GrantSource},
};
use serde_json::json;
use smtp_gate::{
    gate::{GateMaps, PinDir},
    syslog,
};

use smtp_gate::cli::{GrantArgs, ListArgs, RevokeArgs};

pub fn grant(args: GrantArgs) -> Result<()> {
    let mut maps = GateMaps::open(&PinDir::new(&args.pins.pin_dir))?;
    maps.grant(args.addr, args.lifetime)?;
    let lifetime = args.lifetime.map(format_duration);
    let extra: Vec<(&str, &str)> = lifetime.iter().map(|l| ("for", l.as_str())).collect();
    syslog::mail_info(&grant_line(
        GrantSource::Cli,
        args.addr,
        &GrantFields {
            user: None,
            extra: &extra,
        },
    ));
    match args.lifetime {
        Some(lifetime) => println!("granted {} for {}", args.addr, format_duration(lifetime)),
        None => println!("granted {}", args.addr),
    }
    Ok(())
}

pub fn revoke(args: RevokeArgs) -> Result<()> {
    let mut maps = GateMaps::open(&PinDir::new(&args.pins.pin_dir))?;
    if maps.revoke(args.addr)? {
        syslog::mail_info(&format!("revoke source=cli addr={}", args.addr));
        println!("revoked {}", args.addr);
        Ok(())
    } else {
        anyhow::bail!("{} has no grant", args.addr)
    }
}

pub fn list(args: ListArgs) -> Result<()> {
    let maps = GateMaps::open(&PinDir::new(&args.pins.pin_dir))?;
    let grants: Vec<_> = maps
        .grants()?
        .into_iter()
        .filter(|g| args.all || g.is_fresh())
        .collect();
    if args.json {
        let rows: Vec<_> = grants
            .iter()
            .map(|g| {
                json!({
                    "address": g.addr.to_string(),
                    "age_secs": g.age.as_secs_f64(),
                    "left_secs": g.time_left().as_secs_f64(),
                    "lifetime_secs": g.lifetime.as_secs_f64(),
                    "expired": !g.is_fresh(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if grants.is_empty() {
        println!("no grants");
        return Ok(());
    }
    println!("{:<40} {:>12} {:>12}", "ADDRESS", "AGE", "LEFT");
    for g in &grants {
        let left = if g.is_fresh() {
            // Rounded up: a grant made a moment ago shows its whole window.
            let left = g.time_left();
            format_duration(Duration::from_secs(
                left.as_secs() + u64::from(left.subsec_nanos() > 0),
            ))
        } else {
            "expired".to_string()
        };
        println!("{:<40} {:>12} {:>12}", g.addr, format_duration(g.age), left);
    }
    Ok(())
}
