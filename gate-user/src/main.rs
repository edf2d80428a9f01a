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
        .try_get_matches()
        .unwrap_or_else(|e| exit_masked(e));
    let done = match matches.subcommand() {
        Some((generate::NAME, args)) => {
            let args = GenerateArgs::from_arg_matches(args).unwrap_or_else(|e| exit_masked(e));
            generate::run(args)
        }
        _ => {
            let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| exit_masked(e));
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

/// Exits as clap does for `error`, but with every URL it quotes masked
/// (bus/url.rs): clap's errors quote what was given (an unexpected
/// argument, say), a bus URL with its password among them.
fn exit_masked(error: clap::Error) -> ! {
    let text = error.render().to_string();
    let masked = smtp_gate::bus::url::mask_urls_in(&text);
    if masked == text {
        error.exit()
    }
    eprint!("{masked}");
    std::process::exit(error.exit_code())
}
