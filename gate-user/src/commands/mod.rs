//! One file per subcommand; each prints its own output.

mod agent;
mod attach;
mod bans;
mod exempt;
mod grants;
mod serve;
mod settings;
mod stats;

use anyhow::Result;
use smtp_gate::gate::privilege::{require, CHANGE_GATE, READ_CLOCK, USE_PINS};

/// No capability, checked here.
const NOTHING: &[smtp_gate::gate::privilege::Need] = &[];

use smtp_gate::cli::Command;

pub fn run(command: Command) -> Result<()> {
    let (name, needs) = match &command {
        Command::Attach(_) => ("smtp-gate attach", CHANGE_GATE),
        Command::Detach(_) => ("smtp-gate detach", CHANGE_GATE),
        // What serve and grant need depends on whether the host has a
        // gate (serve.rs, grants.rs).
        Command::Serve(_) => ("smtp-gate serve", NOTHING),
        Command::Agent(_) => ("smtp-gate agent", CHANGE_GATE),
        Command::Bus(_) => ("smtp-gate bus", USE_PINS),
        Command::Grant(_) => ("smtp-gate grant", NOTHING),
        Command::List(_) => ("smtp-gate list", READ_CLOCK),
        Command::Revoke(_) => ("smtp-gate revoke", USE_PINS),
        // The grants' freshness is judged on the gate's clock.
        Command::Stats(args) if args.prometheus => ("smtp-gate stats", READ_CLOCK),
        Command::Stats(_) => ("smtp-gate stats", USE_PINS),
        Command::Exempt(_) => ("smtp-gate exempt", USE_PINS),
        Command::Ban(_) => ("smtp-gate ban", READ_CLOCK),
        Command::Settings(_) => ("smtp-gate settings", USE_PINS),
    };
    require(name, needs)?;
    match command {
        Command::Attach(args) => attach::attach(args),
        Command::Detach(args) => attach::detach(args),
        Command::Grant(args) => grants::grant(args),
        Command::Revoke(args) => grants::revoke(args),
        Command::List(args) => grants::list(args),
        Command::Stats(args) => stats::stats(args),
        Command::Exempt(args) => exempt::exempt(args),
        Command::Ban(args) => bans::ban(args),
        Command::Settings(args) => settings::settings(args),
        Command::Serve(args) => serve::serve(args),
        Command::Agent(args) => agent::agent(args),
        Command::Bus(args) => agent::bus(args),
    }
}
