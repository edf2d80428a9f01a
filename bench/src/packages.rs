//! Debian packages a suite needs, installed only when missing, the way
//! `cargo xtask setup` does it (the xtask may call this one later).

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Installs the packages of `packages` that dpkg does not know as
/// installed: `apt-get update` (only then), then `apt-get install -y
/// --no-install-recommends`. Needs root only when something is missing.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {}", missing.join(" "));
    apt(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    if let Some(still) = missing.iter().find(|p| !installed(p)) {
        bail!("`apt-get install {still}` succeeded but dpkg does not list it as installed");
    }
    Ok(())
}

/// Whether dpkg lists `package` as installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        .unwrap_or(false)
}

fn apt(args: &[&str]) -> Result<()> {
    // Another apt run (a second suite, the xtask) may hold the lock: wait.
    let status = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}
