//! The grants: written at login (and by `grant`), listed, revoked, and
//! moved to the gate's clock after an upgrade.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Result;
use aya::maps::{HashMap, MapData, MapError};
use gate_common::{
    map_names::{GRANTS_V4, GRANTS_V6},
    Grant, GrantKeyV4, GrantKeyV6,
};

use super::{map_error, removed, GateMaps};
use crate::addr::normalize;

fn grant_map_name(addr: IpAddr) -> &'static str {
    match normalize(addr) {
        IpAddr::V4(_) => GRANTS_V4,
        IpAddr::V6(_) => GRANTS_V6,
    }
}

/// One grant as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantEntry {
    pub addr: IpAddr,
    pub age: Duration,
    pub lifetime: Duration,
    /// True if the grant came with its own lifetime (`grant --for`).
    pub own_lifetime: bool,
}

impl GrantEntry {
    /// The grant as it stands at `now_ns` on the gate's clock, under the
    /// gate's window.
    fn of(addr: IpAddr, grant: Grant, now_ns: u64, window_ns: u64) -> Self {
        Self {
            addr,
            age: Duration::from_nanos(now_ns.saturating_sub(grant.granted_at_ns)),
            lifetime: Duration::from_nanos(if grant.lifetime_ns == 0 {
                window_ns
            } else {
                grant.lifetime_ns
            }),
            own_lifetime: grant.lifetime_ns != 0,
        }
    }

    pub fn is_fresh(&self) -> bool {
        self.age < self.lifetime
    }

    pub fn time_left(&self) -> Duration {
        self.lifetime.saturating_sub(self.age)
    }
}

impl GateMaps {
    /// Grants `addr` as of now: with the configured window, or for
    /// `lifetime` if given. A later grant of the same address refreshes it.
    pub fn grant(&mut self, addr: IpAddr, lifetime: Option<Duration>) -> Result<()> {
        let now = self.now_ns()?;
        self.grant_at(addr, now, lifetime)
    }

    /// Grants `addr` so that `left` of the gate's window remains: as a
    /// grant made `window - left` ago. Such a grant follows the window as
    /// a login's does, so `settings --window` shortens what the bus
    /// brought too (attack review F10); one with its own lifetime would
    /// keep it.
    pub fn grant_with_left(&mut self, addr: IpAddr, left: Duration) -> Result<()> {
        let now = self.now_ns()?;
        let window = self.settings()?.window_ns;
        let age = window.saturating_sub(left.as_nanos().min(u64::MAX as u128) as u64);
        self.grant_at(addr, now.saturating_sub(age), None)
    }

    /// Grants with an explicit stamp on the gate's clock (tests use stamps
    /// in the past to make expired grants).
    pub fn grant_at(
        &mut self,
        addr: IpAddr,
        granted_at_ns: u64,
        lifetime: Option<Duration>,
    ) -> Result<()> {
        let value = Grant {
            granted_at_ns,
            lifetime_ns: lifetime.map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64),
        };
        match normalize(addr) {
            IpAddr::V4(v4) => self
                .grants_v4
                .insert(GrantKeyV4 { addr: v4.octets() }, value, 0)
                .map_err(|e| map_error(GRANTS_V4, e)),
            IpAddr::V6(v6) => self
                .grants_v6
                .insert(GrantKeyV6 { addr: v6.octets() }, value, 0)
                .map_err(|e| map_error(GRANTS_V6, e)),
        }
    }

    /// Removes a grant; false if there was none.
    pub fn revoke(&mut self, addr: IpAddr) -> Result<bool> {
        let result = match normalize(addr) {
            IpAddr::V4(v4) => self.grants_v4.remove(&GrantKeyV4 { addr: v4.octets() }),
            IpAddr::V6(v6) => self.grants_v6.remove(&GrantKeyV6 { addr: v6.octets() }),
        };
        removed("grants", result)
    }

    /// Every grant in the maps, fresh or not, oldest first.
    pub fn grants(&self) -> Result<Vec<GrantEntry>> {
        let now = self.now_ns()?;
        let window = self.settings()?.window_ns;
        let entry = |addr, grant| GrantEntry::of(addr, grant, now, window);
        let mut out = Vec::new();
        for item in self.grants_v4.iter() {
            let (key, grant) = item.map_err(|e| map_error(GRANTS_V4, e))?;
            out.push(entry(IpAddr::V4(Ipv4Addr::from(key.addr)), grant));
        }
        for item in self.grants_v6.iter() {
            let (key, grant) = item.map_err(|e| map_error(GRANTS_V6, e))?;
            out.push(entry(IpAddr::V6(Ipv6Addr::from(key.addr)), grant));
        }
        out.sort_by(|a, b| b.age.cmp(&a.age).then(a.addr.cmp(&b.addr)));
        Ok(out)
    }

    /// The grant of one address, fresh or not, as [`Self::grants`] shows
    /// it; `None` if it has none.
    pub fn grant_of(&self, addr: IpAddr) -> Result<Option<GrantEntry>> {
        let found = match normalize(addr) {
            IpAddr::V4(v4) => self.grants_v4.get(&GrantKeyV4 { addr: v4.octets() }, 0),
            IpAddr::V6(v6) => self.grants_v6.get(&GrantKeyV6 { addr: v6.octets() }, 0),
        };
        let grant = match found {
            Ok(grant) => grant,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(map_error(grant_map_name(addr), e)),
        };
        let now = self.now_ns()?;
        let window = self.settings()?.window_ns;
        Ok(Some(GrantEntry::of(normalize(addr), grant, now, window)))
    }

    /// Number of entries in the grant maps (a full walk: for tests and
    /// capacity checks).
    pub fn grant_count(&self) -> usize {
        self.grants_v4.keys().count() + self.grants_v6.keys().count()
    }

    /// Moves the stamps of grants written on CLOCK_BOOTTIME (by an
    /// smtp-gate before the gate's clock) to the gate's clock, each
    /// keeping its age. Returns how many were moved. A grant that changed
    /// meanwhile (granted anew, on the gate's clock) is left alone, and
    /// one revoked meanwhile is not brought back.
    pub fn restamp_from_boottime(&mut self) -> Result<usize> {
        let (now, boot_now) = self.clock()?.now_and_boot_ns()?;
        let restamp = |grant: Grant| Grant {
            granted_at_ns: if grant.granted_at_ns <= boot_now {
                now.saturating_sub(boot_now - grant.granted_at_ns)
            } else {
                // A stamp in the future stays one (never fresh).
                now.saturating_add(grant.granted_at_ns - boot_now)
            },
            lifetime_ns: grant.lifetime_ns,
        };
        let v4: Vec<(GrantKeyV4, Grant)> = self.grants_v4.iter().filter_map(Result::ok).collect();
        let v6: Vec<(GrantKeyV6, Grant)> = self.grants_v6.iter().filter_map(Result::ok).collect();
        let mut moved = 0;
        for (key, grant) in v4 {
            moved += restamp_one(&mut self.grants_v4, GRANTS_V4, key, grant, restamp)? as usize;
        }
        for (key, grant) in v6 {
            moved += restamp_one(&mut self.grants_v6, GRANTS_V6, key, grant, restamp)? as usize;
        }
        Ok(moved)
    }
}

/// BPF_EXIST: update an entry only if it is there.
const UPDATE_EXISTING: u64 = 2;

/// Replaces `old` under `key` with `restamp(old)` if it is still `old`;
/// false if it changed or went meanwhile.
fn restamp_one<K: aya::Pod>(
    map: &mut HashMap<MapData, K, Grant>,
    name: &str,
    key: K,
    old: Grant,
    restamp: impl Fn(Grant) -> Grant,
) -> Result<bool> {
    match map.get(&key, 0) {
        Ok(current) if current == old => {}
        _ => return Ok(false),
    }
    match map.insert(key, restamp(old), UPDATE_EXISTING) {
        Ok(()) => Ok(true),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(map_error(name, e)),
    }
}
