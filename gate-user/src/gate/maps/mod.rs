//! Typed access to the gate's maps, opened either from the pin directory
//! (CLI, daemon) or from a freshly loaded object (tests, benchmarks): the
//! grants (grants.rs), the bans (bans.rs), the network sets (networks.rs) and the host's own
//! addresses (host.rs), the settings and the counters (here); how many
//! grants and bans are held (census.rs, over batch.rs).

mod bans;
mod batch;
mod census;
mod grants;
mod host;
mod networks;

use std::cell::OnceCell;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use gate_common::{
    map_names::{
        BANS_V4, BANS_V6, EXEMPT_V4, EXEMPT_V6, GRANTS_V4, GRANTS_V6, IFACE_MACS, LOCAL_V4,
        LOCAL_V6, SCOPE_V4, SCOPE_V6, SETTINGS, STATS,
    },
    Ban, Counters, Grant, GrantKeyV4, GrantKeyV6, IfaceMac, Local, LogBucket, Outcome, Settings,
};

pub use bans::BanEntry;
pub use batch::BATCH;
pub use census::{Held, MapCensus, Walk};
pub use grants::GrantEntry;
use networks::CidrSet;

use super::{
    clock::{self, GateClock},
    layout,
    pins::PinDir,
};

pub struct GateMaps {
    grants_v4: HashMap<MapData, GrantKeyV4, Grant>,
    grants_v6: HashMap<MapData, GrantKeyV6, Grant>,
    bans_v4: HashMap<MapData, GrantKeyV4, Ban>,
    bans_v6: HashMap<MapData, GrantKeyV6, Ban>,
    exempt: CidrSet,
    scope: CidrSet,
    local_v4: HashMap<MapData, [u8; 4], Local>,
    local_v6: HashMap<MapData, [u8; 16], Local>,
    iface_macs: HashMap<MapData, u32, IfaceMac>,
    settings: Array<MapData, Settings>,
    stats: PerCpuArray<MapData, Counters>,
    /// Loaded when a stamp is first needed.
    clock: OnceCell<GateClock>,
    /// The kernel's ids of the two grant maps, as opened (`None` if the
    /// kernel did not tell them).
    grant_map_ids: Option<[u32; 2]>,
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

/// The kernel's id of `map`.
fn map_id(map: &Map) -> Option<u32> {
    layout::map_data(map)?.info().ok().map(|info| info.id())
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
        let grants_v4 = get(GRANTS_V4)?;
        let grants_v6 = get(GRANTS_V6)?;
        let grant_map_ids = map_id(&grants_v4)
            .zip(map_id(&grants_v6))
            .map(<[u32; 2]>::from);
        Ok(Self {
            grants_v4: typed(grants_v4, GRANTS_V4)?,
            grants_v6: typed(grants_v6, GRANTS_V6)?,
            bans_v4: typed(get(BANS_V4)?, BANS_V4)?,
            bans_v6: typed(get(BANS_V6)?, BANS_V6)?,
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
            grant_map_ids,
        })
    }

    /// The kernel's ids of the grant maps these handles write to (IPv4,
    /// IPv6): unique on this boot, so a map made anew (the gate attached
    /// again, a reboot) has others. `None` if the kernel did not tell.
    pub fn grant_map_ids(&self) -> Option<[u32; 2]> {
        self.grant_map_ids
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

    pub fn settings(&self) -> Result<Settings> {
        self.settings.get(&0, 0).map_err(|e| map_error(SETTINGS, e))
    }

    /// Writes `settings`, with the fields that describe the host and the
    /// maps rather than the operator's wishes filled in here: the tick
    /// length of the gate's clock and which exempt tries are in use. A
    /// settings value without an IPv6 ban mask (carried over from an
    /// older build) gets the default /64: an empty mask would cut every
    /// IPv6 source to the same key.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let mut settings = *settings;
        settings.tick_ns = clock::tick_ns()?;
        settings.exempt_in_use = self.exempt.in_use()?;
        settings.reserved = 0;
        if settings.ban_mask_v6 == [0; 16] {
            settings.ban_mask_v6 =
                gate_common::ipv6_mask(super::settings::DEFAULT_BAN_PREFIX_V6.into());
        }
        self.settings
            .set(0, settings, 0)
            .map_err(|e| map_error(SETTINGS, e))
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

    /// The denial log's token bucket of each CPU (kept beside its
    /// counters).
    pub fn log_buckets(&self) -> Result<Vec<LogBucket>> {
        let per_cpu = self.stats.get(&0, 0).map_err(|e| map_error(STATS, e))?;
        Ok(per_cpu.iter().map(|counters| counters.log).collect())
    }
}
