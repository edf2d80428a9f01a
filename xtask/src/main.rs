//! `cargo xtask`: the project's own commands. This crate depends on nothing
//! that needs the eBPF toolchain, so it builds on a fresh machine and can
//! install that toolchain.

mod cmd;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cmd::{cargo, run};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test, demo and benchmark smtp-gate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs (Debian packages, bpf-linker).
    /// Idempotent: seconds when everything is there.
    Setup,
    /// Build the smtp-gate binary with the eBPF program embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and attach the gate: `--iface IF` and any other
    /// `smtp-gate attach` options follow.
    BuildAndAttach {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        attach_args: Vec<String>,
    },
    /// The whole test suite: setup, fmt, clippy, unit and privileged tests.
    Test,
    /// The demo lab: network namespaces, the gate, a client refused,
    /// granted, accepted, expired.
    Demo,
    /// Benchmarks (not part of the test suite).
    Bench {
        /// Which suite: kernel, flood, pop3 or all.
        #[arg(default_value = "all")]
        suite: String,
        /// Fewer repetitions, for a first look.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build { release } => {
            setup::setup()?;
            let mut args = vec!["build", "--package", "gate-user"];
            if release {
                args.push("--release");
            }
            cargo(&args)
        }
        Command::BuildAndAttach { attach_args } => {
            setup::setup()?;
            cargo(&["build", "--release", "--package", "gate-user"])?;
            let mut args = vec!["attach".to_string()];
            args.extend(attach_args);
            run("target/release/smtp-gate", &args)
        }
        Command::Test => test(),
        Command::Demo => {
            setup::setup()?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "gate-user",
                "--package",
                "gate-tests",
            ])?;
            cargo(&[
                "run",
                "--release",
                "--quiet",
                "--package",
                "gate-tests",
                "--bin",
                "smtp-gate-demo",
            ])
        }
        Command::Bench { suite, quick } => {
            setup::setup()?;
            let mut args = vec![
                "run",
                "--release",
                "--package",
                "gate-bench",
                "--",
                suite.as_str(),
            ];
            if quick {
                args.push("--quick");
            }
            cargo(&args)
        }
    }
}

/// The README's test command, and what CI runs. The workspace's default
/// members are everything but gate-ebpf, which only builds for the BPF
/// target (gate-user's build script compiles it, so it is checked too).
fn test() -> Result<()> {
    setup::setup()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The end-to-end tests run the smtp-gate binary, so build it first.
    cargo(&["build"])?;
    cmd::cargo_test(&["test", "--", "--test-threads=4"])
}
