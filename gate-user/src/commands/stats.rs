use anyhow::Result;
use gate_common::Outcome;
use smtp_gate::gate::{GateMaps, PinDir};

use crate::cli::StatsArgs;

pub fn stats(args: StatsArgs) -> Result<()> {
    let maps = GateMaps::open(&PinDir::new(&args.pins.pin_dir))?;
    let counters = maps.stats()?;
    if args.json {
        let object: serde_json::Map<String, serde_json::Value> = Outcome::ALL
            .iter()
            .map(|o| (o.name().to_string(), counters[*o as usize].into()))
            .collect();
        println!("{}", serde_json::to_string_pretty(&object)?);
        return Ok(());
    }
    for outcome in Outcome::ALL {
        println!("{:<18} {:>14}", outcome.name(), counters[outcome as usize]);
    }
    Ok(())
}
