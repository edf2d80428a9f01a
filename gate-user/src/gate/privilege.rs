//! A clear error before any BPF syscall fails with a bare EPERM.

use anyhow::{bail, Result};

pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root (the BPF maps and programs are only open to root)");
    }
    Ok(())
}
