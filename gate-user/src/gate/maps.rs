//! Typed access to the gate's maps, opened either from the pin directory
//! (CLI, daemon) or from a freshly loaded object (tests, benchmarks).

use std::{
    cell::OnceCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, MapError, PerCpuArray,
    },
    Ebpf,
};
use gate_common::{
    map_names::{
        EXEMPT_V4, EXEMPT_V6, GRANTS_V4, GRANTS_V6, IFACE_MACS, LOCAL_V4, LOCAL_V6, SCOPE_V4,
        SCOPE_V6, SETTINGS, STATS,
    },
    Counters, Exempt, Grant, GrantKeyV4, GrantKeyV6, IfaceMac, Local, Outcome, Settings,
    EXEMPT_V4_IN_USE, EXEMPT_V6_IN_USE,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    clock::{self, GateClock},
    layout,
    local_addrs::{HostAddresses, LocalAddr},
    pins::PinDir,
};
use crate::addr::{normalize, Cidr};

pub struct GateMaps {
    grants_v4: HashMap<MapData, GrantKeyV4, Grant>,
    grants_v6: HashMap<MapData, GrantKeyV6, Grant>,
    exempt: CidrSet,
    scope: CidrSet,
    local_v4: HashMap<MapData, [u8; 4], Local>,
    local_v6: HashMap<MapData, [u8; 16], Local>,
    iface_macs: HashMap<MapData, u32, IfaceMac>,
    settings: Array<MapData, Settings>,
    stats: PerCpuArray<MapData, Counters>,
    /// Loaded when a stamp is first needed.
    clock: OnceCell<GateClock>,
}

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
struct CidrSet {
    v4: LpmTrie<MapData, [u8; 4], Exempt>,
    v6: LpmTrie<MapData, [u8; 16], Exempt>,
    names: [&'static str; 2],
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
    pub fn is_fresh(&self) -> bool {
        self.age < self.lifetime
    }

    pub fn time_left(&self) -> Duration {
        self.lifetime.saturating_sub(self.age)
    }
}

fn typed<T>(map: Map, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn map_error(name: &str, err: MapError) -> anyhow::Error {
    if let MapError::SyscallError(ref sys) = err {
        match sys.io_error.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOSPC) => {
                return anyhow!("map {name} is full");
            }
            Some(libc::EPERM) | Some(libc::EACCES) => {
                return anyhow!("permission denied on map {name}: run as root");
            }
            _ => {}
        }
    }
    anyhow::Error::new(err).context(format!("map {name}"))
}

/// The result of a map removal: true if the key was there.
fn removed(name: &str, result: Result<(), MapError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(ref s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(map_error(name, e)),
    }
}

impl GateMaps {
    /// Opens the pinned maps. A gate pinned by an older smtp-gate, whose
    /// maps have another layout, is refused with a clear word on how to
    /// upgrade it.
    pub fn open(dir: &PinDir) -> Result<Self> {
        dir.require_gate()?;
        layout::require_current(dir)?;
        Self::build(|name| {
            let path = dir.map(name);
            let data = MapData::from_pin(&path).map_err(|e| map_error(name, e))?;
            Map::from_map_data(data).map_err(|e| map_error(name, e))
        })
    }

    /// Takes the maps out of a loaded object. Its programs keep using them.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
        })
    }

    fn build(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            grants_v4: typed(get(GRANTS_V4)?, GRANTS_V4)?,
            grants_v6: typed(get(GRANTS_V6)?, GRANTS_V6)?,
            exempt: CidrSet {
                v4: typed(get(EXEMPT_V4)?, EXEMPT_V4)?,
                v6: typed(get(EXEMPT_V6)?, EXEMPT_V6)?,
                names: [EXEMPT_V4, EXEMPT_V6],
            },
            scope: CidrSet {
                v4: typed(get(SCOPE_V4)?, SCOPE_V4)?,
                v6: typed(get(SCOPE_V6)?, SCOPE_V6)?,
                names: [SCOPE_V4, SCOPE_V6],
            },
            local_v4: typed(get(LOCAL_V4)?, LOCAL_V4)?,
            local_v6: typed(get(LOCAL_V6)?, LOCAL_V6)?,
            iface_macs: typed(get(IFACE_MACS)?, IFACE_MACS)?,
            settings: typed(get(SETTINGS)?, SETTINGS)?,
            stats: typed(get(STATS)?, STATS)?,
            clock: OnceCell::new(),
        })
    }

    fn clock(&self) -> Result<&GateClock> {
        if let Some(clock) = self.clock.get() {
            return Ok(clock);
        }
        let clock = GateClock::open()?;
        Ok(self.clock.get_or_init(|| clock))
    }

    /// The gate's clock now (see `gate_common::Grant`), in nanoseconds.
    pub fn now_ns(&self) -> Result<u64> {
        self.clock()?.now_ns()
    }

    /// Grants `addr` as of now: with the configured window, or for
    /// `lifetime` if given. A later grant of the same address refreshes it.
    pub fn grant(&mut self, addr: IpAddr, lifetime: Option<Duration>) -> Result<()> {
        let now = self.now_ns()?;
        self.grant_at(addr, now, lifetime)
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
        let entry = |addr: IpAddr, grant: Grant| GrantEntry {
            addr,
            age: Duration::from_nanos(now.saturating_sub(grant.granted_at_ns)),
            lifetime: Duration::from_nanos(if grant.lifetime_ns == 0 {
                window
            } else {
                grant.lifetime_ns
            }),
            own_lifetime: grant.lifetime_ns != 0,
        };
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

    /// Number of entries in the grant maps (a full walk: for tests and
    /// capacity checks).
    pub fn grant_count(&self) -> usize {
        self.grants_v4.keys().count() + self.grants_v6.keys().count()
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).map_err(|e| map_error(SETTINGS, e))
    }

    /// Writes `settings`, with the fields that describe the host and the
    /// maps rather than the operator's wishes filled in here: the tick
    /// length of the gate's clock and which exempt tries are in use.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let mut settings = *settings;
        settings.tick_ns = clock::tick_ns()?;
        settings.exempt_in_use = self.exempt.in_use()?;
        settings.reserved = 0;
        self.settings
            .set(0, settings, 0)
            .map_err(|e| map_error(SETTINGS, e))
    }

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

    /// Counters summed over CPUs, in `Outcome` order.
    pub fn stats(&self) -> Result<[u64; Outcome::COUNT as usize]> {
        let mut totals = [0u64; Outcome::COUNT as usize];
        let per_cpu = self.stats.get(&0, 0).map_err(|e| map_error(STATS, e))?;
        for counters in per_cpu.iter() {
            for (total, count) in totals.iter_mut().zip(counters.slots) {
                *total += count;
            }
        }
        Ok(totals)
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

impl CidrSet {
    /// `EXEMPT_V4_IN_USE` and `EXEMPT_V6_IN_USE` for the tries that hold
    /// networks.
    fn in_use(&self) -> Result<u32> {
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
