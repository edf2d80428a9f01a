//! The programs the suites start as processes of their own, built beside
//! the harness (`cargo run` builds only the harness binary), in the same
//! profile.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// Builds binary `bin` of `package` and returns its path.
pub fn build(package: &str, bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .context("the harness binary has no directory")?
        .join(bin);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() || !binary.exists() {
        bail!(
            "building the {bin} binary failed ({status}); expected it at {}",
            binary.display()
        );
    }
    Ok(binary)
}
