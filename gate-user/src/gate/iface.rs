//! Interfaces by name.

use anyhow::{bail, Result};
use nix::net::if_::if_nametoindex;

/// The index of the interface `iface`; an error names it when there is
/// none (or the name cannot be one).
pub fn ifindex(iface: &str) -> Result<u32> {
    match if_nametoindex(iface) {
        Ok(index) if index != 0 => Ok(index),
        _ => bail!("no such interface: {iface}"),
    }
}
