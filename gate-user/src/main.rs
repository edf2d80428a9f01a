//! `smtp-gate`: the command line over the pinned gate.

mod commands;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use smtp_gate::{
    cli,
    generate::{self, GenerateArgs},
};

fn main() -> ExitCode {
    // The documented command line, and the hidden `generate` that writes
    // its man pages and completions (generate.rs).
    let matches = cli::Cli::command()
        .subcommand(GenerateArgs::command().hide(true))
        .get_matches();
    let done = match matches.subcommand() {
        Some((generate::NAME, args)) => {
            let args = GenerateArgs::from_arg_matches(args).unwrap_or_else(|e| e.exit());
            generate::run(args)
        }
        _ => {
            let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            commands::run(cli.command)
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // At error priority when stderr is the journal.
            smtp_gate::systemd::journal::print_error(&format!("smtp-gate: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
