//! A clear error before a BPF syscall fails with a bare EPERM. The
//! commands do not need root: they need the capabilities below, which
//! the kernel checks itself, and which a daemon running as the mail user
//! holds as ambient capabilities (deploy/smtp-gate.service).

use anyhow::{bail, Context, Result};
use rustix::thread::{capabilities, CapabilitySet};

/// A capability a command needs, and what for.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub capability: CapabilitySet,
    pub name: &'static str,
    pub why: &'static str,
}

/// Creating maps and loading programs (with
/// `kernel.unprivileged_bpf_disabled` set, as distributions do).
pub const BPF: Need = Need {
    capability: CapabilitySet::BPF,
    name: "CAP_BPF",
    why: "creating BPF maps and loading programs",
};
/// XDP and TC programs: loading and attaching them, and the gate
/// clock's probe, an XDP program (`gate/clock.rs`).
pub const NET_ADMIN: Need = Need {
    capability: CapabilitySet::NET_ADMIN,
    name: "CAP_NET_ADMIN",
    why: "loading and attaching XDP/TC programs",
};
/// The verifier refuses the gate's program without it (pointer
/// arithmetic on packet data across branches, as privileged programs do).
pub const PERFMON: Need = Need {
    capability: CapabilitySet::PERFMON,
    name: "CAP_PERFMON",
    why: "the verifier's checks for the gate's program",
};

/// What loading or replacing the gate needs: attach, detach, serve.
pub const CHANGE_GATE: &[Need] = &[BPF, NET_ADMIN, PERFMON];
/// What reading the gate's clock needs: its probe is an XDP program that
/// is loaded and run (grant, list).
pub const READ_CLOCK: &[Need] = &[BPF, NET_ADMIN];
/// What the pinned maps alone need: no capability, only the rights to
/// their files on the bpffs (stats, exempt, settings, revoke).
pub const USE_PINS: &[Need] = &[];

/// Fails naming every capability of `needs` that this thread does not
/// hold in its effective set.
pub fn require(what: &str, needs: &[Need]) -> Result<()> {
    let held = capabilities(None)
        .context("reading this process's capabilities (capget)")?
        .effective;
    let missing: Vec<String> = needs
        .iter()
        .filter(|need| !held.contains(need.capability))
        .map(|need| format!("{} ({})", need.name, need.why))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{what} needs {}, which this process does not hold; run it as root, or give \
             it these capabilities (deploy/smtp-gate.service runs the daemon as the mail \
             user with them as ambient capabilities)",
            missing.join(", ")
        );
    }
    Ok(())
}
