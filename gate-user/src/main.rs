//! `smtp-gate`: the command line over the pinned gate.

mod commands;

use std::process::ExitCode;

use clap::Parser;
use smtp_gate::cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // At error priority when stderr is the journal.
            smtp_gate::systemd::journal::print_error(&format!("smtp-gate: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
