//! Addresses and networks as operators type them. IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`), as a dual-stack socket reports IPv4 peers, is the
//! same host as `a.b.c.d` and is turned into it everywhere.

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

/// Turns an IPv4-mapped IPv6 address into the IPv4 address it carries.
pub use gate_common::normalize_addr as normalize;

/// Parses an IPv4 or IPv6 address (brackets allowed around IPv6) and
/// normalises it.
pub fn parse_addr(text: &str) -> Result<IpAddr> {
    let trimmed = text.trim();
    let bare = trimmed
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(trimmed);
    let addr = IpAddr::from_str(bare)
        .with_context(|| format!("`{text}` is not an IPv4 or IPv6 address"))?;
    Ok(normalize(addr))
}

/// A network in CIDR notation. A bare address is a host network (/32 or
/// /128). Host bits must be zero, as in `ip route`: `10.1.2.3/8` is refused
/// rather than silently widened. `::ffff:a.b.c.d/N` with N >= 96 is the IPv4
/// network `a.b.c.d/(N-96)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl From<IpNet> for Cidr {
    fn from(net: IpNet) -> Self {
        Self(net)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Read as the POP3 service reads its networks (`pop3::network`).
impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        pop3::network::parse_network(text)
            .map(Self)
            .map_err(anyhow::Error::msg)
    }
}

/// As the operator typed it: the config file and the flags carry the same
/// text.
impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(|e: anyhow::Error| D::Error::custom(format!("{e:#}")))
    }
}

/// A `--dest` value: a network the gate is scoped to, or `all` (every
/// destination, the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    All,
    Net(Cidr),
}

impl FromStr for Dest {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.trim().eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        Ok(Self::Net(text.parse()?))
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Net(net) => net.fmt(f),
        }
    }
}

impl Serialize for Dest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The destination scope of a config list of `--dest` values (see
/// [`dest_scope`]); absent, `None`: keep the scope there is.
pub fn deserialize_dest_scope<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Cidr>>, D::Error> {
    let values = Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| text.parse::<Dest>())
        .collect::<Result<Vec<Dest>>>()
        .and_then(|values| dest_scope(&values))
        .map_err(|e| D::Error::custom(format!("{e:#}")))?;
    Ok(Some(values))
}

/// The destination scope a list of `--dest` values asks for: the networks,
/// or no network at all (every destination) for `all`, which cannot be
/// mixed with networks.
pub fn dest_scope(values: &[Dest]) -> Result<Vec<Cidr>> {
    if values.contains(&Dest::All) {
        if values.len() > 1 {
            bail!("`all` (every destination) cannot be combined with networks");
        }
        return Ok(Vec::new());
    }
    Ok(values
        .iter()
        .filter_map(|d| match d {
            Dest::Net(net) => Some(*net),
            Dest::All => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_is_its_network() {
        let cidr: Cidr = "192.0.2.0/24".parse().unwrap();
        assert_eq!(cidr.net(), "192.0.2.0/24".parse::<IpNet>().unwrap());
    }

    #[test]
    fn mapped_addresses_become_ipv4() {
        assert_eq!(
            parse_addr("::ffff:192.0.2.7").unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_addr("[::ffff:c000:207]").unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_addr("2001:db8::1").unwrap(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            parse_addr(" 10.0.0.1 ").unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        // IPv4-compatible (deprecated ::a.b.c.d) is not mapped: left alone.
        assert!(parse_addr("::192.0.2.7").unwrap().is_ipv6());
    }

    #[test]
    fn bad_addresses_are_refused_by_name() {
        let err = parse_addr("300.1.1.1").unwrap_err().to_string();
        assert!(err.contains("300.1.1.1"), "{err}");
        assert!(parse_addr("").is_err());
        assert!(parse_addr("mail.example.com").is_err());
    }

    #[test]
    fn cidrs_parse_and_normalise() {
        let c: Cidr = "192.0.2.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.0.2.0/24");
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::/32");
        let c: Cidr = "10.9.8.7".parse().unwrap();
        assert_eq!(c.to_string(), "10.9.8.7/32");
        let c: Cidr = "2001:db8::5".parse().unwrap();
        assert_eq!(c.to_string(), "2001:db8::5/128");
        let c: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let c: Cidr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.2.3/32");
    }

    #[test]
    fn dest_values_are_networks_or_all() {
        let parse = |items: &[&str]| {
            let values: Vec<Dest> = items.iter().map(|s| s.parse().unwrap()).collect();
            dest_scope(&values)
        };
        assert_eq!(parse(&["all"]).unwrap(), Vec::<Cidr>::new());
        assert_eq!(parse(&["ALL"]).unwrap(), Vec::<Cidr>::new());
        let nets = parse(&["192.0.2.25", "2001:db8::/64"]).unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0].to_string(), "192.0.2.25/32");
        assert!(parse(&["all", "192.0.2.0/24"]).is_err());
        assert!("10.1.2.3/8".parse::<Dest>().is_err());
    }

    #[test]
    fn bad_cidrs_are_refused_with_a_reason() {
        for bad in ["10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "x/8", "/8", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} accepted");
        }
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err().to_string();
        assert!(
            err.contains("host bits") && err.contains("10.0.0.0/8"),
            "{err}"
        );
    }
}
