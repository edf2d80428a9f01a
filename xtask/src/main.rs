//! `cargo xtask`: the project's own commands. This crate depends on nothing
//! that needs the eBPF toolchain, so it builds on a fresh machine and can
//! install that toolchain.

/// Which rustc builds the BPF target (shared with gate-user's build script).
mod bpf_toolchain;
mod mutants;
mod setup;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use xtask::{
    cmd::{self, cargo, run},
    deb,
};

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
    /// Build the Debian package: the release binary, its units, example
    /// configs, man pages and completions (README.md, "Installing the
    /// Debian package").
    Deb {
        /// Where the .deb goes (and its staging tree, in build/). Default
        /// target/debian in the workspace.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The whole test suite: setup, fmt, clippy, unit and privileged tests.
    Test,
    /// The demo lab: network namespaces, the gate, a client refused,
    /// granted, accepted, expired.
    Demo,
    /// Long differential runs of the gate against the Linux stack (the
    /// bounded run is part of the test suite): crafted SYN frame sequences
    /// from a client namespace, any SYN-ACK without a grant is a bypass.
    Fuzz {
        /// What to fuzz.
        #[arg(value_enum)]
        target: FuzzTarget,
        /// Frames to send in drop mode, per attach mode (required unless
        /// --case).
        #[arg(long, required_unless_present = "case")]
        frames: Option<u64>,
        /// Seed (decimal or 0x-hex); a new one is drawn and printed if none.
        #[arg(long)]
        seed: Option<String>,
        /// One attach mode instead of all three.
        #[arg(long, value_parser = ["xdp", "xdp-skb", "tc"])]
        mode: Option<String>,
        /// Only this random case of the seed, described with its frames.
        #[arg(long)]
        case: Option<u64>,
    },
    /// Mutation testing (not part of the test suite: it takes long):
    /// cargo-mutants over the host-side crates, or with --bpf the
    /// hand-written mutations of the kernel program.
    Mutants {
        /// One crate instead of all: gate-common, pop3 or gate-user.
        #[arg(long = "crate", value_name = "CRATE", conflicts_with = "bpf")]
        krate: Option<String>,
        /// The kernel program's mutations instead (the object is rebuilt
        /// for each; the packet tests must fail).
        #[arg(long)]
        bpf: bool,
        /// With --bpf: only the mutations whose name contains this.
        #[arg(long, requires = "bpf")]
        only: Option<String>,
        /// One share of the crate's mutants, K/N (cargo-mutants' --shard):
        /// a sample, or one machine's part of the whole run.
        #[arg(long, value_name = "K/N", conflicts_with = "bpf")]
        shard: Option<String>,
        /// Only the mutants in lines changed since this git revision
        /// (cargo-mutants' --in-diff): a full run's follow-up.
        #[arg(long, value_name = "REV", conflicts_with = "bpf")]
        since: Option<String>,
    },
    /// Benchmarks (not part of the test suite).
    Bench {
        /// Which suite: kernel, flood, pop3, hooks, bus, metrics or all.
        #[arg(default_value = "all")]
        suite: String,
        /// Fewer repetitions, for a first look.
        #[arg(long)]
        quick: bool,
        /// kernel: only the cases and floor programs whose name contains
        /// this (one grant count, no capacity check, no report file).
        #[arg(long)]
        only: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FuzzTarget {
    /// The kernel program, against the Linux stack (tests/src/stackdiff).
    Gate,
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
        Command::Deb { out } => {
            setup::setup()?;
            let workspace = deb::workspace();
            let manifest = workspace.join("Cargo.toml");
            cargo(&[
                "build",
                "--release",
                "--manifest-path",
                manifest.to_str().expect("a UTF-8 workspace path"),
                "--package",
                "gate-user",
            ])?;
            let binary = workspace.join("target/release/smtp-gate");
            let out = out.unwrap_or_else(|| workspace.join("target/debian"));
            let package = deb::build(&workspace, &binary, &out)?;
            eprintln!(
                "xtask deb: {} (units {}; conffiles {})",
                package.deb.display(),
                package.units.join(", "),
                package.conffiles.join(", ")
            );
            Ok(())
        }
        Command::Test => test(),
        Command::Mutants {
            krate,
            bpf,
            only,
            shard,
            since,
        } => {
            setup::setup()?;
            if bpf {
                mutants::bpf(only.as_deref())
            } else {
                mutants::host(krate.as_deref(), shard.as_deref(), since.as_deref())
            }
        }
        Command::Demo => run_lab_binary("smtp-gate-demo", &[]),
        Command::Fuzz {
            target: FuzzTarget::Gate,
            frames,
            seed,
            mode,
            case,
        } => {
            let mut args = Vec::new();
            let numbers = [("--frames", frames), ("--case", case)];
            for (flag, value) in numbers {
                if let Some(value) = value {
                    args.extend([flag.to_string(), value.to_string()]);
                }
            }
            for (flag, value) in [("--seed", seed), ("--mode", mode)] {
                if let Some(value) = value {
                    args.extend([flag.to_string(), value]);
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_lab_binary("gate-fuzz", &args)
        }
        Command::Bench { suite, quick, only } => {
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
            if let Some(only) = &only {
                args.extend(["--only", only.as_str()]);
            }
            cargo(&args)
        }
    }
}

/// Builds the smtp-gate binary and the lab's binaries (release), then runs
/// the lab binary `bin` with `args`: the demo and the long fuzz runs.
fn run_lab_binary(bin: &str, args: &[&str]) -> Result<()> {
    setup::setup()?;
    cargo(&[
        "build",
        "--release",
        "--package",
        "gate-user",
        "--package",
        "gate-tests",
    ])?;
    let mut run = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "gate-tests",
        "--bin",
        bin,
        "--",
    ];
    run.extend_from_slice(args);
    cargo(&run)
}

/// The README's test command, and what CI runs. Lints and tests cover
/// every member but gate-ebpf, which only builds for the BPF target
/// (gate-user's build script compiles it, so it is checked too): the
/// workspace's default members leave out gate-bench as well, which the
/// suite must not.
fn test() -> Result<()> {
    setup::setup()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "gate-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The end-to-end tests run the smtp-gate binary, so build it first.
    cargo(&["build"])?;
    cmd::cargo_test(&[
        "test",
        "--workspace",
        "--exclude",
        "gate-ebpf",
        "--",
        "--test-threads=4",
    ])
}
