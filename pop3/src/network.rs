//! Networks as operators type them (CIDR notation), for the service's
//! settings and for the gate's (smtp-gate's `Cidr` reads them here too).
//! A bare address is a host network (/32 or /128). Host bits must be zero,
//! as in `ip route`: `10.1.2.3/8` is refused rather than silently widened.
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`), as a dual-stack socket reports IPv4
//! peers, is the same host as `a.b.c.d`: `::ffff:a.b.c.d/N` with N >= 96
//! is the IPv4 network `a.b.c.d/(N-96)`.

use std::{net::IpAddr, str::FromStr};

use ipnet::{IpNet, Ipv4Net};

use crate::normalize_addr;

/// Reads one network; the error says why, naming the text.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let trimmed = text.trim();
    let net = if trimmed.contains('/') {
        IpNet::from_str(trimmed)
            .map_err(|_| format!("bad CIDR `{text}`: expected ADDRESS/PREFIX, e.g. 192.0.2.0/24"))?
    } else {
        let bare = trimmed
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(trimmed);
        let addr = IpAddr::from_str(bare)
            .map_err(|_| format!("bad CIDR `{text}`: `{text}` is not an IPv4 or IPv6 address"))?;
        IpNet::from(normalize_addr(addr))
    };
    if net.addr() != net.network() {
        return Err(format!(
            "bad CIDR `{text}`: host bits are set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(normalize_net(net))
}

/// Whether `addr` (normalised) is in one of `networks`.
pub fn contains(networks: &[IpNet], addr: IpAddr) -> bool {
    let addr = normalize_addr(addr);
    networks.iter().any(|net| net.contains(&addr))
}

fn normalize_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                // The prefix is at most 128, so this cannot fail.
                return IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).unwrap());
            }
        }
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        parse_network(text).unwrap()
    }

    #[test]
    fn networks_parse_and_normalise() {
        assert_eq!(net("192.0.2.0/24").to_string(), "192.0.2.0/24");
        assert_eq!(net("10.9.8.7").to_string(), "10.9.8.7/32");
        assert_eq!(net("[2001:db8::5]").to_string(), "2001:db8::5/128");
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert!(parse_network("10.1.2.3/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!(parse_network("proxy.example.org").is_err());
    }

    /// A dual-stack socket reports an IPv4 proxy as ::ffff:a.b.c.d: it is
    /// in the IPv4 network all the same, and an IPv6 one never holds it.
    #[test]
    fn mapped_peers_are_in_their_ipv4_networks() {
        let trusted = [net("10.0.0.0/8"), net("2001:db8::/32")];
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(contains(&trusted, mapped));
        assert!(contains(&trusted, "2001:db8::9".parse().unwrap()));
        assert!(!contains(&trusted, "11.0.0.1".parse().unwrap()));
        assert!(!contains(&[net("::/0")], mapped));
    }
}
