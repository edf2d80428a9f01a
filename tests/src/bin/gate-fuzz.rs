//! `gate-fuzz`: the long run of the differential test (`gate_tests::stackdiff`):
//! rounds of random frame sequences around "a TCP SYN to a gated port",
//! sent from a client namespace to the gate in drop mode with no grant
//! (any SYN-ACK is a bypass), in monitor mode (what the stack accepts),
//! granted and to a non-gated port (plausible SYNs must be answered), until
//! the number of frames sent in drop mode is reached, in one attach mode
//! or in each.
//!
//!     gate-fuzz --frames N [--seed S] [--mode xdp|xdp-skb|tc]
//!               [--round CASES] [--minutes M] [--out DIR] [--case N]
//!
//! Prints, per mode, the frames tried, the cases the stack accepted in
//! monitor mode and the bypasses found (grouped by category and shape, a
//! few described in full); writes every bypass and every case to
//! `DIR/gate-fuzz-<mode>-<seed>.txt` (default `target/gate-fuzz`). The
//! same seed and mode send the same cases again; `--case N` (no `--frames`
//! needed) sends only random case N of the seed and prints it with what
//! each pass saw. Exit status 1 if anything
//! failed (a bypass, a refused legitimate SYN, broken ordinary traffic, or
//! a monitor pass that proves nothing), 2 on bad arguments.
//!
//! Needs root and a built `smtp-gate` next to this binary; `cargo xtask
//! fuzz gate` builds both.

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use gate_tests::stackdiff::{
    report::{Detail, Thresholds},
    runner::{self, Config, Mode},
};

const USAGE: &str = "usage: gate-fuzz --frames N [--seed S] [--mode xdp|xdp-skb|tc] \
                     [--round CASES] [--minutes M] [--out DIR] [--case N]";

struct Args {
    frames: usize,
    seed: u64,
    modes: Vec<Mode>,
    round: usize,
    minutes: u64,
    out: PathBuf,
    case: Option<usize>,
}

fn number(flag: &str, text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{flag} {text}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut frames = None;
    let mut seed = None;
    let mut modes = Mode::ALL.to_vec();
    let mut round = 500;
    let mut minutes = 120;
    let mut out = PathBuf::from("target/gate-fuzz");
    let mut case = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--frames" => frames = Some(number(&flag, &value)? as usize),
            "--seed" => seed = Some(number(&flag, &value)?),
            "--mode" => {
                modes = vec![Mode::parse(&value)
                    .ok_or_else(|| format!("--mode {value}: one of xdp, xdp-skb, tc"))?]
            }
            "--round" => round = number(&flag, &value)?.max(1) as usize,
            "--minutes" => minutes = number(&flag, &value)?.max(1),
            "--out" => out = PathBuf::from(value),
            "--case" => case = Some(number(&flag, &value)? as usize),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let frames = match (frames, case) {
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => return Err(format!("--frames is required\n{USAGE}")),
    };
    // No seed given: a new one, printed, so the run can be repeated.
    let seed = seed.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        gate_tests::stackdiff::rng::mix(now.as_nanos() as u64, u64::from(std::process::id()))
    });
    Ok(Args {
        frames,
        seed,
        modes,
        round,
        minutes,
        out,
        case,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("gate-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("gate-fuzz: cannot create {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    println!(
        "gate-fuzz: seed {:#x}, {} frames in drop mode per mode, modes {}",
        args.seed,
        args.frames,
        args.modes
            .iter()
            .map(|m| m.arg())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // One case replayed proves nothing about the share the stack accepts.
    let thresholds = if args.case.is_some() {
        Thresholds {
            monitor_share: 0.0,
            category_share: 0.0,
        }
    } else {
        Thresholds::default()
    };
    let mut failed = false;
    let mut totals = Vec::new();
    for mode in &args.modes {
        let config = Config {
            mode: *mode,
            seed: args.seed,
            cases: usize::MAX,
            regressions: true,
            round: args.round,
            frames: Some(args.frames),
            time_limit: Some(Duration::from_secs(60 * args.minutes)),
            keep_frames: args.case.is_some(),
            legit: args.case.is_none(),
            only: args.case,
        };
        let report = runner::run(&config, |line| println!("{line}"));
        let failures = report.failures(&thresholds);
        let path = args
            .out
            .join(format!("gate-fuzz-{}-{:#x}.txt", mode.arg(), args.seed));
        let full =
            report.render(&thresholds, Detail::ALL) + "\n==== every case ====\n" + &report.dump();
        match std::fs::write(&path, full) {
            Ok(()) => {}
            Err(e) => eprintln!("gate-fuzz: cannot write {}: {e}", path.display()),
        }
        println!("{}", report.render(&thresholds, Detail::BRIEF));
        if args.case.is_some() {
            for o in &report.outcomes {
                println!(
                    "{}drop: {}, monitor: {}, granted: {:?}, non-gated port: {:?}",
                    o.case.describe(),
                    if o.bypass.is_some() {
                        "SYN-ACK (bypass)"
                    } else {
                        "no SYN-ACK"
                    },
                    if o.monitor { "SYN-ACK" } else { "no SYN-ACK" },
                    o.granted,
                    o.control
                );
            }
        }
        println!("full report: {}", path.display());
        totals.push(format!(
            "--mode {}: {} frames tried in drop mode ({} cases), {} cases accepted by the stack \
             in monitor mode, {} bypasses, {} failures",
            mode.arg(),
            report.frames.drop,
            report.outcomes.len(),
            report.monitor_count(),
            report.bypass_count(),
            failures.len()
        ));
        failed |= !failures.is_empty();
    }
    println!("==== gate-fuzz seed {:#x} ====", args.seed);
    for line in &totals {
        println!("{line}");
    }
    println!(
        "repeat with: cargo xtask fuzz gate --frames {} --seed {:#x}{}{}",
        args.frames,
        args.seed,
        if args.modes.len() == 1 {
            format!(" --mode {}", args.modes[0].arg())
        } else {
            String::new()
        },
        args.case.map_or(String::new(), |n| format!(" --case {n}"))
    );
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
