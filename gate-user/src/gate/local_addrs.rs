//! The host's own unicast addresses, for the reset mode: the program
//! answers a denied SYN with a RST only when the SYN was sent to one of
//! them (looked up in `local_v4`/`local_v6`), so that the gate never
//! forges replies for addresses that are not this host's. User space
//! keeps the maps equal to the addresses of every interface of the network
//! namespace. A gate whose maps are empty still drops denied SYNs; it just
//! cannot answer them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result};
use nix::{ifaddrs::getifaddrs, net::if_::if_nametoindex};

/// One address of the host and the interface that holds it
/// (informational: the program only asks whether an address is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddr {
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// What the reset mode needs to know of the host: its unicast addresses
/// and the MAC of each interface (it answers only frames sent to the
/// receiving interface's own MAC).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostAddresses {
    /// Every unicast address, each once, sorted.
    pub ips: Vec<LocalAddr>,
    /// (ifindex, MAC) of every interface that has one, sorted.
    pub macs: Vec<(u32, [u8; 6])>,
}

/// The addresses and MACs of every interface of this network namespace.
pub fn host_addresses() -> Result<HostAddresses> {
    let mut found: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut macs: BTreeMap<u32, [u8; 6]> = BTreeMap::new();
    for entry in getifaddrs().context("listing the host's addresses (getifaddrs)")? {
        let Some(storage) = entry.address else {
            continue;
        };
        if let Some(link) = storage.as_link_addr() {
            if let Some(mac) = link.addr().filter(|m| *m != [0; 6]) {
                macs.insert(link.ifindex() as u32, mac);
            }
            continue;
        }
        let addr = if let Some(v4) = storage.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = storage.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !is_unicast(addr) {
            continue;
        }
        // An interface that went away between the two calls has index 0;
        // its address is still listed, the index is informational.
        let ifindex = if_nametoindex(entry.interface_name.as_str()).unwrap_or(0);
        found.entry(addr).or_insert(ifindex);
    }
    Ok(HostAddresses {
        ips: found
            .into_iter()
            .map(|(addr, ifindex)| LocalAddr { addr, ifindex })
            .collect(),
        macs: macs.into_iter().collect(),
    })
}

/// An address a SYN from the wire can be sent to as this host: not
/// unspecified, not multicast, not the IPv4 limited broadcast, not
/// loopback (Linux drops a packet from the wire to 127/8 or ::1 as a
/// martian, so the gate must not answer one either).
fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => {
            !v4.is_unspecified()
                && !v4.is_multicast()
                && !v4.is_loopback()
                && v4 != Ipv4Addr::BROADCAST
        }
        IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_multicast() && !v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unicast_addresses_count() {
        for bad in [
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "ff02::1",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
        ] {
            assert!(!is_unicast(bad.parse().unwrap()), "{bad}");
        }
        for good in ["192.0.2.7", "fe80::1", "2001:db8::7"] {
            assert!(is_unicast(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn loopback_is_not_among_the_host_addresses() {
        let addrs = host_addresses().expect("getifaddrs");
        assert!(!addrs.ips.iter().any(|l| l.addr.is_loopback()), "{addrs:?}");
        assert!(!addrs.macs.is_empty(), "no interface MAC found: {addrs:?}");
    }
}
