//! What the flood suite needs before it starts: root, Postfix, nftables,
//! ethtool and iproute2 (installed when missing, Postfix preseeded so that
//! the package configures and starts no host MTA), and the release
//! `smtp-gate` binary.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{bail, Context, Result};

use super::sys::run_with_input;
use crate::packages;

const PACKAGES: &[&str] = &["postfix", "nftables", "ethtool", "iproute2"];

pub fn ensure_prerequisites() -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the flood suite needs root (network namespaces, XDP, Postfix): run it as root");
    }
    if !packages::installed("postfix") {
        // "No configuration": the package writes no main.cf and starts no
        // MTA on the host; the suite runs its own instance.
        let out = run_with_input(
            &mut Command::new("debconf-set-selections"),
            "postfix postfix/main_mailer_type select No configuration\n",
            Duration::from_secs(30),
        )?;
        if !out.status.success() {
            bail!(
                "debconf-set-selections failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    packages::ensure_packages(PACKAGES)?;
    build_smtp_gate()
}

/// `cargo build --release -p gate-user`: the bench runs the real binary.
fn build_smtp_gate() -> Result<()> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("flood: cargo build --release -p gate-user");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "gate-user", "--manifest-path"])
        .arg(&manifest)
        .status()
        .with_context(|| format!("running {cargo} build"))?;
    if !status.success() {
        bail!("cargo build --release -p gate-user failed ({status})");
    }
    Ok(())
}

/// The binary the lab runs: `target/release/smtp-gate` beside this one.
pub fn smtp_gate_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("the bench binary has no directory")?
        .join("smtp-gate");
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}
