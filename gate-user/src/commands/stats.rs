use std::time::{Duration, Instant};

use anyhow::Result;
use gate_common::Outcome;
use serde_json::json;
use smtp_gate::{
    gate::{link_state::LinkState, GateMaps, PinDir},
    metrics::{self, census::CensusReading, exposition::Exposition},
};

use smtp_gate::cli::StatsArgs;

pub fn stats(args: StatsArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    let maps = GateMaps::open(&dir)?;
    if args.prometheus {
        return prometheus(&maps);
    }
    let counters = maps.stats()?;
    // Counters of a link that gates nothing any more would mislead: say so.
    let stale: Vec<_> = dir
        .links()?
        .into_iter()
        .map(|l| {
            let state = LinkState::of(&l);
            (l, state)
        })
        .filter(|(_, state)| state.is_stale())
        .collect();
    if args.json {
        let mut object: serde_json::Map<String, serde_json::Value> = Outcome::ALL
            .iter()
            .map(|o| (o.name().to_string(), counters[*o as usize].into()))
            .collect();
        let stale: Vec<_> = stale
            .iter()
            .map(|(l, state)| {
                json!({"iface": l.iface, "mode": l.mode.to_string(), "detail": state.to_string()})
            })
            .collect();
        object.insert("stale_links".into(), stale.into());
        println!("{}", serde_json::to_string_pretty(&object)?);
        return Ok(());
    }
    for outcome in Outcome::ALL {
        println!("{:<18} {:>14}", outcome.name(), counters[outcome as usize]);
    }
    for (link, state) in stale {
        println!("stale link: {} ({}): {state}", link.iface, link.mode);
    }
    Ok(())
}

/// The gate's part of a daemon's metrics page, once: the counters, and
/// the grants and bans counted now (node-exporter's textfile collector
/// adds the file's age).
fn prometheus(maps: &GateMaps) -> Result<()> {
    let counters = maps.stats()?;
    let started = Instant::now();
    let census = maps.census()?;
    let reading = CensusReading {
        census,
        taken: Instant::now(),
        took: started.elapsed(),
    };
    let mut out = Exposition::new();
    metrics::build_info(&mut out);
    metrics::gate::render(&mut out, Some(&counters), Some((&reading, Duration::ZERO)));
    print!("{}", out.into_text());
    Ok(())
}
