//! `cargo xtask bench SUITE [--quick]`: smtp-gate measured beside a
//! baseline in the same run, reported under target/bench/.

mod binaries;
mod bpf_asm;
mod bus;
mod capacity;
mod dovecot;
mod flood;
mod hooks;
mod kernel;
mod metrics;
mod packages;
mod pop3;
mod procs;
mod report;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "gate-bench")]
struct Args {
    /// kernel: BPF_PROG_TEST_RUN timings beside an empty XDP program and
    /// the grant capacity check; flood: a SYN flood between namespaces
    /// against Postfix's table check, nftables and the gate; pop3: the POP3
    /// service beside Dovecot; hooks: Dovecot's and Postfix's policy hooks
    /// of `smtp-gate serve` (login -> grant, requests/s) beside baselines;
    /// bus: the grant bus across hosts (+OK -> grant on 1 and 2 edges,
    /// grants/s, PASS -> +OK with and without the bus); metrics: the
    /// Prometheus metrics with 262,144 grants (census CPU, daemon CPU per
    /// scrape, PASS -> +OK with and without scrapes); all: the six.
    #[arg(default_value = "all")]
    suite: String,
    /// Fewer repetitions, for a first look.
    #[arg(long)]
    quick: bool,
    /// kernel: only the cases and floor programs whose name contains
    /// this, with one grant count and no capacity check (for working on
    /// the program).
    #[arg(long)]
    only: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.suite.as_str() {
        "kernel" => kernel::run(args.quick, args.only.as_deref()),
        "pop3" => pop3::run(args.quick),
        "flood" => flood::run(args.quick),
        "hooks" => hooks::run(args.quick),
        "bus" => bus::run(args.quick),
        "metrics" => metrics::run(args.quick),
        "all" => {
            kernel::run(args.quick, None)?;
            flood::run(args.quick)?;
            pop3::run(args.quick)?;
            hooks::run(args.quick)?;
            bus::run(args.quick)?;
            metrics::run(args.quick)
        }
        other => {
            bail!(
                "unknown suite `{other}` (this build knows: kernel, flood, pop3, hooks, bus, \
                 metrics, all)"
            )
        }
    }
}
