//! `cargo xtask mutants`: mutation testing. cargo-mutants mutates the
//! host-side crates (its configuration, with what is left out and why, is
//! .cargo/mutants.toml); the kernel program, which cargo-mutants cannot
//! run, gets the hand-written mutations below, each applied alone, the
//! object rebuilt, and the tests that judge packets run: every one must
//! make them fail.

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};

use crate::cmd::{cargo, cargo_status};

/// The crates cargo-mutants runs over, and what to test them with.
pub const CRATES: [&str; 3] = ["gate-common", "pop3", "gate-user"];

const CARGO_MUTANTS_VERSION: &str = "27.1.0";

/// One planted bug in code the kernel program runs: `find` must occur
/// exactly once in `file`, and becomes `replace`.
struct Mutation {
    name: &'static str,
    file: &'static str,
    find: &'static str,
    replace: &'static str,
}

const BPF_MUTATIONS: &[Mutation] = &[
    Mutation {
        name: "gates_port compares the other way",
        file: "gate-common/src/lib.rs",
        find: "if ports[i] == port {",
        replace: "if ports[i] != port {",
    },
    Mutation {
        name: "gates_port looks at the first two slots only",
        file: "gate-common/src/lib.rs",
        find: "while i < MAX_PORTS && i < count {",
        replace: "while i < 2 && i < count {",
    },
    Mutation {
        name: "a grant is fresh one tick longer",
        file: "gate-common/src/lib.rs",
        find: "now_ns - self.granted_at_ns < lifetime",
        replace: "now_ns - self.granted_at_ns <= lifetime",
    },
    Mutation {
        name: "a stamp in the future counts as fresh",
        file: "gate-common/src/lib.rs",
        find: "now_ns >= self.granted_at_ns && now_ns - self.granted_at_ns < lifetime",
        // Not wrapping_sub: a future stamp wraps to an age no window
        // reaches, which is the same verdict (an equivalent mutant).
        replace: "now_ns.saturating_sub(self.granted_at_ns) < lifetime",
    },
    Mutation {
        name: "the grant check is inverted",
        file: "gate-packet/src/judge.rs",
        find: "if state.has_fresh_grant(src, config) {",
        replace: "if !state.has_fresh_grant(src, config) {",
    },
    Mutation {
        name: "the exempt lookup is skipped",
        file: "gate-packet/src/judge.rs",
        find: "let exempt = || exempt_in_use(config, src) && state.is_exempt(src);",
        replace: "let exempt = || false && state.is_exempt(src);",
    },
    Mutation {
        name: "the ban check is skipped",
        file: "gate-packet/src/judge.rs",
        find: "let banned = bans_in_use(config, src) && state.is_banned(src, config) && !exempt();",
        replace: "let banned = false && state.is_banned(src, config) && !exempt();",
    },
    Mutation {
        name: "a banned exempt source is denied",
        file: "gate-packet/src/judge.rs",
        find: "let banned = bans_in_use(config, src) && state.is_banned(src, config) && !exempt();",
        replace: "let banned = bans_in_use(config, src) && state.is_banned(src, config);",
    },
    Mutation {
        name: "the IPv6 ban key keeps the interface identifier",
        file: "gate-ebpf/src/state.rs",
        find: "packet_word(at.add(8)) & word(8),",
        replace: "packet_word(at.add(8)),",
    },
    Mutation {
        name: "the login ports are not judged",
        file: "gate-packet/src/plain.rs",
        find: "c.gates_port(dst_port) || (c.bans_port(dst_port) && bans_in_use(c, src))",
        replace: "c.gates_port(dst_port)",
    },
    Mutation {
        name: "a SYN with ACK is judged as opening",
        file: "gate-packet/src/plain.rs",
        find: "if tcp.flags & OPENING != TCP_FLAG_SYN {",
        replace: "if tcp.flags & TCP_FLAG_SYN == 0 {",
    },
    Mutation {
        name: "later IPv4 fragments are judged by what they show",
        file: "gate-packet/src/parse.rs",
        find: "if frag & 0x1fff != 0 {",
        replace: "if frag & 0x0fff != 0 {",
    },
    Mutation {
        // Header starts lie at 2 or 6 modulo 8, so 1025 would be an
        // equivalent mutant: 1026 is the first start it changes.
        name: "the walk goes two octets deeper",
        file: "gate-packet/src/cursor.rs",
        find: "pub const MAX_WALK: usize = 1024;",
        replace: "pub const MAX_WALK: usize = 1026;",
    },
    Mutation {
        name: "reset mode answers a multicast source",
        file: "gate-packet/src/judge.rs",
        find: "AddrRef::V4(a) => a[0] != 0 && a[0] != 127 && a[0] < 224,",
        replace: "AddrRef::V4(a) => a[0] != 0 && a[0] != 127,",
    },
    Mutation {
        name: "reset mode answers a SYN from the host's own address",
        file: "gate-packet/src/judge.rs",
        find: "        && !state.is_local(syn.src)\n",
        replace: "\n",
    },
    Mutation {
        name: "an unwalkable packet passes when ports are gated",
        file: "gate-packet/src/judge.rs",
        find: "state.settings().filter(|c| c.port_count != 0)",
        replace: "state.settings().filter(|c| c.port_count == 0)",
    },
    Mutation {
        name: "the outcome counter does not move",
        file: "gate-ebpf/src/state.rs",
        find: "slots[outcome as usize] += 1;",
        replace: "slots[outcome as usize] += 0;",
    },
    Mutation {
        name: "the denial log's token bucket never runs dry",
        file: "gate-ebpf/src/log.rs",
        find: "if bucket.milli_tokens < MILLI {",
        replace: "if false {",
    },
];

/// The tests a kernel mutation must make fail: the unit tests of the
/// code the program is built from, and the packet tests on the host and
/// through BPF_PROG_TEST_RUN.
const BPF_TESTS: &[&str] = &[
    "test",
    "--no-fail-fast",
    "-p",
    "gate-common",
    "-p",
    "gate-packet",
    "-p",
    "gate-tests",
    // Target flags apply to every package named: the unit tests of
    // gate-common and gate-packet are their library targets.
    "--lib",
    "--test",
    "verdicts",
    "--test",
    "packet_host",
];

/// Runs cargo-mutants over `krate` (or every crate of [`CRATES`]).
/// Property-test cases per test for each mutant: the suite's default
/// (pop3's fuzz tests) would add a quarter of a minute to every mutant,
/// and a mutant the properties catch is caught in the first few cases.
const PROPTEST_CASES_PER_MUTANT: &str = "32";

pub fn host(krate: Option<&str>, shard: Option<&str>, since: Option<&str>) -> Result<()> {
    ensure_cargo_mutants()?;
    let crates: Vec<&str> = match krate {
        Some(one) if CRATES.contains(&one) => vec![one],
        Some(other) => bail!("cargo-mutants runs over {CRATES:?}, not {other}"),
        None => CRATES.to_vec(),
    };
    let mut summaries = Vec::new();
    for krate in crates {
        let out = format!("target/mutants/{krate}");
        fs::create_dir_all(&out).with_context(|| format!("making {out}"))?;
        let started = Instant::now();
        // 2: mutants missed, 3: timeouts; the report in `out` says which.
        // Anything else but 0 means the run itself failed.
        let mut args = vec!["mutants", "--package", krate, "--output", &out];
        if let Some(shard) = shard {
            args.extend(["--shard", shard]);
        }
        let diff = format!("{out}/changes.diff");
        if let Some(rev) = since {
            write_diff_since(rev, &diff)?;
            args.extend(["--in-diff", &diff]);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        eprintln!(
            "+ PROPTEST_CASES={PROPTEST_CASES_PER_MUTANT} {cargo} {}",
            args.join(" ")
        );
        let code = std::process::Command::new(&cargo)
            .args(&args)
            .env("PROPTEST_CASES", PROPTEST_CASES_PER_MUTANT)
            .status()
            .with_context(|| format!("cannot run {cargo}"))?
            .code();
        if !matches!(code, Some(0 | 2 | 3)) {
            bail!("cargo mutants over {krate} failed ({code:?}): see {out}/mutants.out/");
        }
        summaries.push(format!(
            "{krate}: {} in {:.0?} (missed ones: {out}/mutants.out/missed.txt)",
            summary(&format!("{out}/mutants.out/outcomes.json"))?,
            started.elapsed()
        ));
    }
    for line in summaries {
        eprintln!("mutants: {line}");
    }
    Ok(())
}

/// Writes `git diff REV` (the working tree's changes since `rev`) to
/// `path`, for cargo-mutants' --in-diff.
fn write_diff_since(rev: &str, path: &str) -> Result<()> {
    let out = std::process::Command::new("git")
        .args(["diff", "--no-color", "--no-ext-diff", rev])
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!(
            "git diff {rev} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::write(path, &out.stdout).with_context(|| format!("writing {path}"))
}

/// The counts of cargo-mutants' outcomes.json, and the share of viable
/// mutants caught.
fn summary(outcomes: &str) -> Result<String> {
    let text = fs::read_to_string(outcomes).with_context(|| format!("reading {outcomes}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {outcomes}"))?;
    let count = |key: &str| json[key].as_u64().unwrap_or(0);
    let (total, caught, missed) = (count("total_mutants"), count("caught"), count("missed"));
    let (timeout, unviable) = (count("timeout"), count("unviable"));
    let viable = caught + missed + timeout;
    let share = if viable == 0 {
        100.0
    } else {
        100.0 * caught as f64 / viable as f64
    };
    Ok(format!(
        "{total} mutants, {caught} caught, {missed} missed, {timeout} timeouts, {unviable} \
         unviable: {share:.0}% of the viable ones caught"
    ))
}

/// Applies each kernel mutation (or those whose name contains `only`)
/// alone, rebuilds and runs the packet tests; fails naming the mutations
/// that survived.
pub fn bpf(only: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let chosen: Vec<&Mutation> = BPF_MUTATIONS
        .iter()
        .filter(|m| only.is_none_or(|part| m.name.contains(part)))
        .collect();
    if chosen.is_empty() {
        bail!("no kernel mutation's name contains {only:?}");
    }
    let mut survived = Vec::new();
    for mutation in &chosen {
        let planted = Planted::new(mutation)?;
        eprintln!(
            "mutants: planting \"{}\" in {} (if this run is killed, `git checkout {}` takes \
             it out)",
            mutation.name, mutation.file, mutation.file
        );
        let caught = !cargo_status(&["build", "-p", "gate-user"])? || !cargo_status(BPF_TESTS)?;
        drop(planted);
        eprintln!(
            "mutants: \"{}\": {}",
            mutation.name,
            if caught { "caught" } else { "SURVIVED" }
        );
        if !caught {
            survived.push(mutation.name);
        }
    }
    // The object as it is, for whatever runs next.
    cargo(&["build", "-p", "gate-user"])?;
    eprintln!(
        "mutants: {} kernel mutations, {} caught, {} survived, in {:.0?}",
        chosen.len(),
        chosen.len() - survived.len(),
        survived.len(),
        started.elapsed()
    );
    if !survived.is_empty() {
        bail!("kernel mutations the tests did not catch: {survived:?}");
    }
    Ok(())
}

/// A mutation in place, taken out again when dropped (also when the run
/// fails or panics).
struct Planted {
    path: PathBuf,
    original: String,
}

impl Planted {
    fn new(mutation: &Mutation) -> Result<Self> {
        let path = PathBuf::from(mutation.file);
        let original =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if original.matches(mutation.find).count() != 1 {
            bail!(
                "mutation \"{}\": `{}` is not in {} exactly once (the source moved on: update \
                 xtask/src/mutants.rs)",
                mutation.name,
                mutation.find,
                mutation.file
            );
        }
        fs::write(&path, original.replacen(mutation.find, mutation.replace, 1))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { path, original })
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.original) {
            eprintln!(
                "mutants: could not restore {}: {e}; `git checkout {}` does",
                self.path.display(),
                self.path.display()
            );
        }
    }
}

/// cargo-mutants of the pinned version, installed once.
fn ensure_cargo_mutants() -> Result<()> {
    let installed = std::process::Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_MUTANTS_VERSION))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    cargo(&[
        "install",
        "--locked",
        "cargo-mutants",
        "--version",
        CARGO_MUTANTS_VERSION,
    ])
}
