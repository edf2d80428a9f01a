//! Running commands loudly: each is echoed, and a failure names it.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<()> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    eprintln!("+ {program} {}", shown.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", shown.join(" "));
    }
    Ok(())
}

/// Runs cargo and says whether it succeeded (a failure is an answer, not
/// an error).
pub fn cargo_status(args: &[&str]) -> Result<bool> {
    Ok(cargo_code(args)? == Some(0))
}

/// Runs cargo and gives its exit code (`None`: ended by a signal).
pub fn cargo_code(args: &[&str]) -> Result<Option<i32>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("+ {cargo} {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    Ok(status.code())
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    run(&cargo, args)
}

/// Output of a command that must succeed.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cargo test --no-fail-fast` (every test binary runs, whatever
/// failed before it), passing its output through, and ends with one line
/// that totals every binary's "test result:" line; cargo's own last line
/// is that of the last binary (often the doc tests, with 0 tests). It
/// fails when a test failed, when a test binary the build made did not
/// run, or when one ran but ended without a result (a crash): each such
/// binary counts as one failure in the total. Ignored tests are named in
/// the total as skipped, never as passed.
pub fn cargo_test(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let (cargo_args, test_args) = match args.iter().position(|a| *a == "--") {
        Some(at) => args.split_at(at),
        None => (args, &[][..]),
    };
    let expected = test_binaries(&cargo, cargo_args)?;
    let mut full: Vec<&str> = cargo_args.to_vec();
    full.insert(1, "--no-fail-fast");
    full.extend(test_args);
    eprintln!("+ {cargo} {}", full.join(" "));
    let mut child = Command::new(&cargo)
        .args(&full)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cargo}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    // cargo says which binary starts on stderr, the binaries report on
    // stdout: both are read at once, or one pipe could fill and stall.
    let started = std::thread::spawn(move || -> (Vec<String>, usize) {
        let (mut started, mut doc_runs) = (Vec::new(), 0);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(binary) = started_binary(&line) {
                started.push(binary);
            } else if line.trim_start().starts_with("Doc-tests ") {
                doc_runs += 1;
            }
        }
        (started, doc_runs)
    });
    let stdout = child.stdout.take().context("no stdout")?;
    let mut tally = Tally::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            tally.add(rest);
        }
    }
    let status = child.wait()?;
    let (started, doc_runs) = started.join().expect("the stderr reader does not panic");
    let never_ran: Vec<&String> = expected
        .iter()
        .filter(|binary| !started.contains(binary))
        .collect();
    let without_result = (started.len() + doc_runs).saturating_sub(tally.results);
    if !never_ran.is_empty() {
        println!("test binaries that never ran: {never_ran:?}");
    }
    if without_result > 0 {
        println!("{without_result} test binaries ended without a result (crashed?)");
    }
    if tally.ignored > 0 {
        println!(
            "{} tests are marked #[ignore] and did not run",
            tally.ignored
        );
    }
    let failed = tally.failed + never_ran.len() as u64 + without_result as u64;
    match tally.ignored {
        0 => println!("{} passed, {failed} failed", tally.passed),
        ignored => println!(
            "{} passed, {failed} failed, {ignored} skipped",
            tally.passed
        ),
    }
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The totals of the "test result:" lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    results: usize,
}

impl Tally {
    fn add(&mut self, summary: &str) {
        self.passed += count_of(summary, " passed");
        self.failed += count_of(summary, " failed");
        self.ignored += count_of(summary, " ignored");
        self.results += 1;
    }
}

/// The test binaries (file names) that `cargo test` with these arguments
/// runs: from the build's own account of what it made.
fn test_binaries(cargo: &str, cargo_args: &[&str]) -> Result<Vec<String>> {
    let mut args: Vec<&str> = cargo_args.to_vec();
    args.splice(1..1, ["--no-run", "--message-format=json"]);
    let out = output(cargo, &args)?;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        if let Some(executable) = message["executable"].as_str() {
            let name = std::path::Path::new(executable)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            binaries.extend(name);
        }
    }
    if binaries.is_empty() {
        bail!("`cargo {}` named no test binary", args.join(" "));
    }
    Ok(binaries)
}

/// The binary a "Running ... (target/debug/deps/NAME)" line of cargo
/// starts.
fn started_binary(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix("Running ")?;
    let path = rest.rsplit_once('(')?.1.strip_suffix(')')?;
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The number before `label` in "ok. 12 passed; 0 failed; ...".
fn count_of(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(label.trim_start())
                .map(str::trim)
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{count_of, started_binary};

    #[test]
    fn names_the_binary_cargo_starts() {
        assert_eq!(
            started_binary("     Running tests/e2e.rs (target/debug/deps/e2e-0123abcd)").as_deref(),
            Some("e2e-0123abcd")
        );
        assert_eq!(
            started_binary("     Running unittests src/lib.rs (target/debug/deps/pop3-99)")
                .as_deref(),
            Some("pop3-99")
        );
        assert_eq!(started_binary("   Doc-tests pop3"), None);
        assert_eq!(started_binary("   Compiling pop3 v0.1.0"), None);
    }

    #[test]
    fn reads_cargo_test_summaries() {
        let ok = "ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s";
        assert_eq!(count_of(ok, " passed"), 12);
        assert_eq!(count_of(ok, " failed"), 0);
        let bad = "FAILED. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_of(bad, " passed"), 7);
        assert_eq!(count_of(bad, " failed"), 2);
        assert_eq!(count_of(ok, " ignored"), 1);
    }
}
