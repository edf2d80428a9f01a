//! The host's own addresses and interface MACs, which the reset mode
//! answers for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use gate_common::{
    map_names::{IFACE_MACS, LOCAL_V4, LOCAL_V6},
    IfaceMac, Local,
};

use super::{map_error, removed, GateMaps};
use crate::gate::local_addrs::{HostAddresses, LocalAddr};

impl GateMaps {
    /// The host's addresses as the reset mode sees them.
    pub fn local_list(&self) -> Result<Vec<LocalAddr>> {
        let mut out = Vec::new();
        for item in self.local_v4.iter() {
            let (key, value) = item.map_err(|e| map_error(LOCAL_V4, e))?;
            out.push(LocalAddr {
                addr: IpAddr::V4(Ipv4Addr::from(key)),
                ifindex: value.ifindex,
            });
        }
        for item in self.local_v6.iter() {
            let (key, value) = item.map_err(|e| map_error(LOCAL_V6, e))?;
            out.push(LocalAddr {
                addr: IpAddr::V6(Ipv6Addr::from(key)),
                ifindex: value.ifindex,
            });
        }
        out.sort_by_key(|l| l.addr);
        Ok(out)
    }

    /// Makes `host` the host's addresses and interface MACs: new ones are
    /// added before the ones that are gone are removed.
    pub fn local_replace(&mut self, host: &HostAddresses) -> Result<()> {
        for (ifindex, mac) in &host.macs {
            let value = IfaceMac {
                mac: *mac,
                reserved: [0; 2],
            };
            self.iface_macs
                .insert(ifindex, value, 0)
                .map_err(|e| map_error(IFACE_MACS, e))?;
        }
        let gone: Vec<u32> = self
            .iface_macs
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !host.macs.iter().any(|(i, _)| i == ifindex))
            .collect();
        for ifindex in gone {
            removed("interface MACs", self.iface_macs.remove(&ifindex))?;
        }
        let addrs = &host.ips;
        for local in addrs {
            let value = Local {
                ifindex: local.ifindex,
            };
            match local.addr {
                IpAddr::V4(v4) => self
                    .local_v4
                    .insert(v4.octets(), value, 0)
                    .map_err(|e| map_error(LOCAL_V4, e))?,
                IpAddr::V6(v6) => self
                    .local_v6
                    .insert(v6.octets(), value, 0)
                    .map_err(|e| map_error(LOCAL_V6, e))?,
            }
        }
        for old in self.local_list()? {
            if addrs.iter().any(|l| l.addr == old.addr) {
                continue;
            }
            let result = match old.addr {
                IpAddr::V4(v4) => self.local_v4.remove(&v4.octets()),
                IpAddr::V6(v6) => self.local_v6.remove(&v6.octets()),
            };
            removed("local addresses", result)?;
        }
        Ok(())
    }
}
