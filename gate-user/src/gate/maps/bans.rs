//! The bans: written by the daemon when a source guesses passwords (and
//! by `ban add`), listed, lifted. An IPv4 ban covers the address, an
//! IPv6 ban the network the settings' `ban_mask_v6` cuts out of it.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Result;
use gate_common::{
    ipv6_mask, ipv6_mask_prefix,
    map_names::{BANS_V4, BANS_V6},
    Ban, GrantKeyV4, GrantKeyV6, BANS_V4_IN_USE, BANS_V6_IN_USE,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{map_error, removed, GateMaps};
use crate::addr::normalize;

use crate::gate::settings::DEFAULT_BAN_PREFIX_V6;

/// One ban as `ban list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanEntry {
    /// The banned address (IPv4) or network (IPv6).
    pub net: IpNet,
    /// How long ago the ban began.
    pub age: Duration,
    /// How long it lasts in all.
    pub length: Duration,
    /// The bans in a row this one is (1 for the first).
    pub count: u32,
}

impl BanEntry {
    pub fn is_active(&self) -> bool {
        self.age < self.length
    }

    pub fn time_left(&self) -> Duration {
        self.length.saturating_sub(self.age)
    }
}

/// `addr` cut to the network of `mask`.
fn masked_v6(addr: Ipv6Addr, mask: &[u8; 16]) -> [u8; 16] {
    let mut octets = addr.octets();
    for (octet, bits) in octets.iter_mut().zip(mask) {
        *octet &= bits;
    }
    octets
}

impl GateMaps {
    /// The IPv6 mask bans are made with, as the program reads it.
    fn ban_mask_v6(&self) -> Result<[u8; 16]> {
        let mask = self.settings()?.ban_mask_v6;
        Ok(if mask == [0; 16] {
            ipv6_mask(DEFAULT_BAN_PREFIX_V6.into())
        } else {
            mask
        })
    }

    /// The network a ban of `addr` covers: the address itself (IPv4), or
    /// its network of the ban prefix (IPv6).
    pub fn ban_network(&self, addr: IpAddr) -> Result<IpNet> {
        Ok(match normalize(addr) {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
            IpAddr::V6(v6) => {
                let mask = self.ban_mask_v6()?;
                let prefix = ipv6_mask_prefix(&mask) as u8;
                IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(masked_v6(v6, &mask)), prefix)
                        .expect("a prefix of at most 128 bits"),
                )
            }
        })
    }

    /// The ban of `addr`'s network, ended or not; `None` if there is none.
    pub fn ban_of(&self, addr: IpAddr) -> Result<Option<Ban>> {
        let result = match normalize(addr) {
            IpAddr::V4(v4) => self.bans_v4.get(&GrantKeyV4 { addr: v4.octets() }, 0),
            IpAddr::V6(v6) => {
                let key = GrantKeyV6 {
                    addr: masked_v6(v6, &self.ban_mask_v6()?),
                };
                self.bans_v6.get(&key, 0)
            }
        };
        match result {
            Ok(ban) => Ok(Some(ban)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error("bans", e)),
        }
    }

    /// Writes `ban` for `addr`'s network, and makes sure the program
    /// looks into that family's ban map.
    pub fn ban_at(&mut self, addr: IpAddr, ban: Ban) -> Result<()> {
        let bit = match normalize(addr) {
            IpAddr::V4(v4) => {
                self.bans_v4
                    .insert(GrantKeyV4 { addr: v4.octets() }, ban, 0)
                    .map_err(|e| map_error(BANS_V4, e))?;
                BANS_V4_IN_USE
            }
            IpAddr::V6(v6) => {
                let key = GrantKeyV6 {
                    addr: masked_v6(v6, &self.ban_mask_v6()?),
                };
                self.bans_v6
                    .insert(key, ban, 0)
                    .map_err(|e| map_error(BANS_V6, e))?;
                BANS_V6_IN_USE
            }
        };
        self.look_for_bans(bit)
    }

    /// Bans `addr`'s network for `length` from now, as one more ban in a
    /// row of those it had. Returns the ban written.
    pub fn ban(&mut self, addr: IpAddr, length: Duration) -> Result<Ban> {
        let now = self.now_ns()?;
        let count = self.ban_of(addr)?.map_or(0, |b| b.count).saturating_add(1);
        let ban = Ban {
            banned_at_ns: now,
            until_ns: now.saturating_add(length.as_nanos().min(u64::MAX as u128) as u64),
            count,
            reserved: 0,
        };
        self.ban_at(addr, ban)?;
        Ok(ban)
    }

    /// Lifts the ban of `addr`'s network, its count with it; false if there
    /// was none.
    pub fn unban(&mut self, addr: IpAddr) -> Result<bool> {
        let result = match normalize(addr) {
            IpAddr::V4(v4) => self.bans_v4.remove(&GrantKeyV4 { addr: v4.octets() }),
            IpAddr::V6(v6) => {
                let key = GrantKeyV6 {
                    addr: masked_v6(v6, &self.ban_mask_v6()?),
                };
                self.bans_v6.remove(&key)
            }
        };
        removed("bans", result)
    }

    /// Sets `bits` (`BANS_V4_IN_USE`, `BANS_V6_IN_USE`) in the settings,
    /// if they are not set yet: from then on the program looks for bans
    /// of those families.
    pub fn look_for_bans(&mut self, bits: u32) -> Result<()> {
        let mut settings = self.settings()?;
        if settings.bans_in_use & bits == bits {
            return Ok(());
        }
        settings.bans_in_use |= bits;
        self.set_settings(&settings)
    }

    /// Every ban in the maps, ended or not, newest first.
    pub fn bans(&self) -> Result<Vec<BanEntry>> {
        let now = self.now_ns()?;
        let prefix = ipv6_mask_prefix(&self.ban_mask_v6()?) as u8;
        let entry = |net: IpNet, ban: Ban| BanEntry {
            net,
            age: Duration::from_nanos(now.saturating_sub(ban.banned_at_ns)),
            length: Duration::from_nanos(ban.until_ns.saturating_sub(ban.banned_at_ns)),
            count: ban.count,
        };
        let mut out = Vec::new();
        for item in self.bans_v4.iter() {
            let (key, ban) = item.map_err(|e| map_error(BANS_V4, e))?;
            out.push(entry(IpNet::V4(Ipv4Addr::from(key.addr).into()), ban));
        }
        for item in self.bans_v6.iter() {
            let (key, ban) = item.map_err(|e| map_error(BANS_V6, e))?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.addr), prefix)
                .expect("a prefix of at most 128 bits");
            out.push(entry(IpNet::V6(net), ban));
        }
        out.sort_by(|a, b| a.age.cmp(&b.age).then(a.net.cmp(&b.net)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_address_is_cut_to_its_network() {
        let addr: Ipv6Addr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let cut = Ipv6Addr::from(masked_v6(addr, &ipv6_mask(64)));
        assert_eq!(cut, "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap());
        let cut = Ipv6Addr::from(masked_v6(addr, &ipv6_mask(56)));
        assert_eq!(cut, "2001:db8:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(Ipv6Addr::from(masked_v6(addr, &ipv6_mask(128))), addr);
    }

    #[test]
    fn a_ban_entry_counts_its_time_left() {
        let entry = BanEntry {
            net: "192.0.2.7/32".parse().unwrap(),
            age: Duration::from_secs(60),
            length: Duration::from_secs(900),
            count: 1,
        };
        assert!(entry.is_active());
        assert_eq!(entry.time_left(), Duration::from_secs(840));
        let ended = BanEntry {
            age: Duration::from_secs(900),
            ..entry
        };
        assert!(!ended.is_active());
        assert_eq!(ended.time_left(), Duration::ZERO);
    }
}
