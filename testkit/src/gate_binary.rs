//! The `smtp-gate` binary under test: where it is, and running it in the
//! root namespace or in a lab's.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use crate::netns::netns_command;

/// Path of the `smtp-gate` binary: `$SMTP_GATE_BIN` if set, else
/// `target/<profile>/smtp-gate` next to the running executable (tests run
/// from `target/<profile>/deps/`, binaries from `target/<profile>/`).
/// Panics if it is not there.
pub fn smtp_gate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SMTP_GATE_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!("SMTP_GATE_BIN={} is not a file", path.display());
        }
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable has no directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("smtp-gate");
    if !bin.is_file() {
        panic!(
            "the smtp-gate binary is missing at {}: build it first: cargo build \
             (or cargo build --release for release tests)",
            bin.display()
        );
    }
    bin
}

/// Runs `smtp-gate ARGS` in the root namespace. Remember `--pin-dir`: without
/// it the command works on the system's default pin directory.
pub fn smtp_gate(args: &[&str]) -> Output {
    let bin = smtp_gate_bin();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs `smtp-gate ARGS` inside namespace `ns` (`ip netns exec`), as
/// `attach` needs to see the namespace's interfaces.
pub fn smtp_gate_in(ns: &str, args: &[&str]) -> Output {
    let bin = smtp_gate_bin();
    netns_command(ns, &bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns} {}: {e}", bin.display()))
}
