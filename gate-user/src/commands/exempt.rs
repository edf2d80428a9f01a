use anyhow::{bail, Result};
use smtp_gate::gate::{GateMaps, PinDir};

use smtp_gate::cli::{ExemptAction, ExemptArgs};

pub fn exempt(args: ExemptArgs) -> Result<()> {
    let dir = PinDir::new(&args.pins.pin_dir);
    // A change of the exempt networks rewrites the settings value (its
    // `exempt_in_use` bits): under the pin directory's lock, like every
    // other writer of the settings, so that no change undoes another.
    let _lock = match args.action {
        ExemptAction::List { .. } => None,
        _ => dir.lock()?,
    };
    let mut maps = GateMaps::open(&dir)?;
    match args.action {
        ExemptAction::Add { cidr } => {
            maps.exempt_add(cidr)?;
            println!("exempt {cidr}");
        }
        ExemptAction::Del { cidr } => {
            if !maps.exempt_del(cidr)? {
                bail!("{cidr} is not in the exempt list");
            }
            println!("no longer exempt: {cidr}");
        }
        ExemptAction::List { json } => {
            let list = maps.exempt_list()?;
            if json {
                let rows: Vec<String> = list.iter().map(ToString::to_string).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if list.is_empty() {
                println!("no exempt networks");
            } else {
                for cidr in list {
                    println!("{cidr}");
                }
            }
        }
    }
    Ok(())
}
