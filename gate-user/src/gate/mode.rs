//! Where the gate attaches: the three hooks, as the CLI, the config file,
//! the pin names and the messages spell them.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// Native XDP in the driver (falls back to generic XDP where the driver
    /// has no XDP support).
    Xdp,
    /// Generic (skb) XDP: works on every interface, a little slower.
    XdpSkb,
    /// A TC classifier on clsact ingress (tcx).
    Tc,
}

impl AttachMode {
    /// The mode's part of a link's pin name (`link_<tag>_<iface>`).
    pub fn pin_tag(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::XdpSkb => "xdpskb",
            Self::Tc => "tc",
        }
    }

    pub fn from_pin_tag(tag: &str) -> Option<Self> {
        match tag {
            "xdp" => Some(Self::Xdp),
            "xdpskb" => Some(Self::XdpSkb),
            "tc" => Some(Self::Tc),
            _ => None,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Xdp => "xdp",
            Self::XdpSkb => "xdp-skb",
            Self::Tc => "tc",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pin tags name links already pinned by older runs: fixed, distinct,
    /// and read back as the same mode.
    #[test]
    fn pin_tags_round_trip() {
        let modes = [AttachMode::Xdp, AttachMode::XdpSkb, AttachMode::Tc];
        let tags: Vec<&str> = modes.iter().map(|m| m.pin_tag()).collect();
        assert_eq!(tags, ["xdp", "xdpskb", "tc"]);
        for mode in modes {
            assert_eq!(AttachMode::from_pin_tag(mode.pin_tag()), Some(mode));
        }
        assert_eq!(AttachMode::from_pin_tag("xdp-skb"), None);
        assert_eq!(AttachMode::from_pin_tag(""), None);
    }
}
