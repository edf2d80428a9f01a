//! Whether a pinned link still gates its interface. When an interface is
//! deleted (and perhaps made again under the same name), the kernel
//! detaches its link but the pin stays: the gate must not be reported as
//! attached then.

use std::fmt;

use super::{link_fd::LinkFd, pins::PinnedLinkEntry};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// On the interface of that name here.
    Live { ifindex: u32 },
    /// On an interface, but the name is not known in this network
    /// namespace: the gate may well be in force in another one.
    Elsewhere { ifindex: u32 },
    /// Gates nothing: its interface was deleted (or the link detached).
    Gone,
    /// On another interface than the one that has the name now (renamed,
    /// or deleted and made again while something held the old one).
    Other { ifindex: u32, named: u32 },
    /// The pin cannot be read as a link.
    Unreadable(String),
}

impl LinkState {
    pub fn of(entry: &PinnedLinkEntry) -> Self {
        let info = match LinkFd::open_pinned(&entry.path).and_then(|l| l.info()) {
            Ok(info) => info,
            Err(e) => return Self::Unreadable(e.to_string()),
        };
        if info.ifindex == 0 {
            return Self::Gone;
        }
        match super::iface::ifindex(&entry.iface) {
            Ok(named) if named == info.ifindex => Self::Live {
                ifindex: info.ifindex,
            },
            Ok(named) => Self::Other {
                ifindex: info.ifindex,
                named,
            },
            Err(_) => Self::Elsewhere {
                ifindex: info.ifindex,
            },
        }
    }

    /// False when the interface of that name is not gated by this link.
    pub fn is_stale(&self) -> bool {
        !matches!(self, Self::Live { .. } | Self::Elsewhere { .. })
    }

    /// One word for JSON: "attached" or "stale".
    pub fn word(&self) -> &'static str {
        if self.is_stale() {
            "stale"
        } else {
            "attached"
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Live { ifindex } => write!(f, "attached (ifindex {ifindex})"),
            Self::Elsewhere { ifindex } => write!(
                f,
                "attached to ifindex {ifindex} (not in this network namespace)"
            ),
            Self::Gone => f.write_str(
                "STALE: the interface is gone (deleted or re-created): not gated; run \
                 `smtp-gate attach` for it again",
            ),
            Self::Other { ifindex, named } => write!(
                f,
                "STALE: the link is on ifindex {ifindex}, the name is ifindex {named} now: \
                 not gated; run `smtp-gate attach` for it again"
            ),
            Self::Unreadable(e) => write!(f, "STALE: the pin cannot be read as a link: {e}"),
        }
    }
}
