//! `cargo xtask bench SUITE [--quick]`: smtp-gate measured beside a
//! baseline in the same run, reported under target/bench/.

mod capacity;
mod kernel;
mod pop3;
mod report;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "gate-bench")]
struct Args {
    /// kernel: BPF_PROG_TEST_RUN timings beside an empty XDP program and
    /// the grant capacity check; pop3: the POP3 service on loopback; all.
    #[arg(default_value = "kernel")]
    suite: String,
    /// Fewer repetitions, for a first look.
    #[arg(long)]
    quick: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.suite.as_str() {
        "kernel" => kernel::run(args.quick),
        "pop3" => pop3::run(args.quick),
        "all" => {
            kernel::run(args.quick)?;
            pop3::run(args.quick)
        }
        other => bail!("unknown suite `{other}` (this build knows: kernel, pop3, all)"),
    }
}
