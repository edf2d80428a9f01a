//! Sets of networks, each in an IPv4 and an IPv6 LPM trie: the exempt
//! sources and the destination scope.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    MapData,
};
use gate_common::{Exempt, EXEMPT_V4_IN_USE, EXEMPT_V6_IN_USE};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{map_error, removed, GateMaps};
use crate::addr::Cidr;

/// Which half of a set replacement comes first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// For sets that let packets through (exempt sources).
    RemoveFirst,
    /// For sets that make packets judged (gated destinations).
    AddFirst,
}

/// A set of networks kept in an IPv4 and an IPv6 LPM trie: the exempt
/// sources, the gated destinations.
pub(super) struct CidrSet {
    pub(super) v4: LpmTrie<MapData, [u8; 4], Exempt>,
    pub(super) v6: LpmTrie<MapData, [u8; 16], Exempt>,
    pub(super) names: [&'static str; 2],
}

impl GateMaps {
    /// Tells the program which exempt tries to look into: after networks
    /// went in (until then they are not exempt yet), and after the last
    /// one of a family went out (the lookups find nothing meanwhile).
    fn note_exempt_change(&mut self) -> Result<()> {
        let settings = self.settings()?;
        self.set_settings(&settings)
    }

    pub fn exempt_add(&mut self, cidr: Cidr) -> Result<()> {
        self.exempt.add(cidr)?;
        self.note_exempt_change()
    }

    /// Removes an exempt network; false if it was not there.
    pub fn exempt_del(&mut self, cidr: Cidr) -> Result<bool> {
        let removed = self.exempt.del(cidr)?;
        self.note_exempt_change()?;
        Ok(removed)
    }

    pub fn exempt_list(&self) -> Result<Vec<Cidr>> {
        self.exempt.list()
    }

    /// True if `addr` lies in an exempt network: one lookup, as the
    /// program makes it.
    pub fn is_exempt(&self, addr: std::net::IpAddr) -> Result<bool> {
        self.exempt.contains(crate::addr::normalize(addr))
    }

    /// Replaces the exempt set with `cidrs`. Old networks go before new
    /// ones come in: while it changes, the set never exempts more than
    /// either.
    pub fn exempt_replace(&mut self, cidrs: &[Cidr]) -> Result<()> {
        self.exempt.replace(cidrs, Order::RemoveFirst)?;
        self.note_exempt_change()
    }

    /// The destination networks the gate is scoped to (`--dest`); they
    /// only apply while `Settings::dest_scoped` is set.
    pub fn scope_list(&self) -> Result<Vec<Cidr>> {
        self.scope.list()
    }

    /// Makes `cidrs` the destination scope, and the gate scoped to it (or
    /// to every destination when `cidrs` is empty). Each step leaves the
    /// gate judging at least what it judged before or what it will judge
    /// after: the new networks go in before the old ones go out, and the
    /// flag is cleared before the set is emptied.
    pub fn set_scope(&mut self, cidrs: &[Cidr]) -> Result<()> {
        let mut settings = self.settings()?;
        if cidrs.is_empty() {
            settings.dest_scoped = 0;
            self.set_settings(&settings)?;
            self.scope.replace(&[], Order::AddFirst)
        } else {
            self.scope.replace(cidrs, Order::AddFirst)?;
            settings.dest_scoped = 1;
            self.set_settings(&settings)
        }
    }
}

impl CidrSet {
    /// `EXEMPT_V4_IN_USE` and `EXEMPT_V6_IN_USE` for the tries that hold
    /// networks.
    pub(super) fn in_use(&self) -> Result<u32> {
        let mut bits = 0;
        if let Some(key) = self.v4.keys().next() {
            key.map_err(|e| map_error(self.names[0], e))?;
            bits |= EXEMPT_V4_IN_USE;
        }
        if let Some(key) = self.v6.keys().next() {
            key.map_err(|e| map_error(self.names[1], e))?;
            bits |= EXEMPT_V6_IN_USE;
        }
        Ok(bits)
    }

    fn contains(&self, addr: std::net::IpAddr) -> Result<bool> {
        let found = match addr {
            std::net::IpAddr::V4(v4) => self.v4.get(&Key::new(32, v4.octets()), 0),
            std::net::IpAddr::V6(v6) => self.v6.get(&Key::new(128, v6.octets()), 0),
        };
        match found {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_error(self.names[0], e)),
        }
    }

    fn add(&mut self, cidr: Cidr) -> Result<()> {
        let value = Exempt { enabled: 1 };
        match cidr.net() {
            IpNet::V4(net) => self
                .v4
                .insert(
                    &Key::new(net.prefix_len() as u32, net.addr().octets()),
                    value,
                    0,
                )
                .map_err(|e| map_error(self.names[0], e)),
            IpNet::V6(net) => self
                .v6
                .insert(
                    &Key::new(net.prefix_len() as u32, net.addr().octets()),
                    value,
                    0,
                )
                .map_err(|e| map_error(self.names[1], e)),
        }
    }

    fn del(&mut self, cidr: Cidr) -> Result<bool> {
        let (name, result) = match cidr.net() {
            IpNet::V4(net) => (
                self.names[0],
                self.v4
                    .remove(&Key::new(net.prefix_len() as u32, net.addr().octets())),
            ),
            IpNet::V6(net) => (
                self.names[1],
                self.v6
                    .remove(&Key::new(net.prefix_len() as u32, net.addr().octets())),
            ),
        };
        removed(name, result)
    }

    fn list(&self) -> Result<Vec<Cidr>> {
        let mut out = Vec::new();
        for key in self.v4.keys() {
            let key = key.map_err(|e| map_error(self.names[0], e))?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), key.prefix_len() as u8)?;
            out.push(Cidr::from(IpNet::V4(net)));
        }
        for key in self.v6.keys() {
            let key = key.map_err(|e| map_error(self.names[1], e))?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), key.prefix_len() as u8)?;
            out.push(Cidr::from(IpNet::V6(net)));
        }
        out.sort_by_key(|c| c.net());
        Ok(out)
    }

    /// Makes the set `cidrs`, in the order that keeps the gate judging
    /// at least as much as before or after while it changes.
    fn replace(&mut self, cidrs: &[Cidr], order: Order) -> Result<()> {
        if order == Order::AddFirst {
            for cidr in cidrs {
                self.add(*cidr)?;
            }
        }
        for old in self.list()? {
            if !cidrs.contains(&old) {
                self.del(old)?;
            }
        }
        if order == Order::RemoveFirst {
            for cidr in cidrs {
                self.add(*cidr)?;
            }
        }
        Ok(())
    }
}
