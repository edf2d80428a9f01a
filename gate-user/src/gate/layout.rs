//! The shape of each pinned map (type, key and value size, entries),
//! compared with what this build expects. A gate pinned by an older
//! smtp-gate may have maps of another layout (the settings value grew from
//! 40 to 48 to 56 octets, the stats array from 8 to 16 slots and then to
//! one per-CPU value of 16 counters, the scope and local-address maps are
//! new): loading this build's program over them would fail in the
//! verifier, and typed access would read garbage.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData, MapInfo};
use gate_common::{
    map_names::{GRANTS_V4, GRANTS_V6, SETTINGS, STATS},
    Counters, Settings,
};

use super::{
    object,
    pins::{PinDir, ALL_MAPS},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl MapShape {
    fn of(info: &MapInfo) -> Self {
        Self {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        }
    }

    /// The grant maps are sized at load time (`--capacity`): their number
    /// of entries is not part of the layout.
    fn matches(&self, declared: &MapShape, name: &str) -> bool {
        let sized_at_load = name == GRANTS_V4 || name == GRANTS_V6;
        self.map_type == declared.map_type
            && self.key_size == declared.key_size
            && self.value_size == declared.value_size
            && (sized_at_load || self.max_entries == declared.max_entries)
    }
}

pub(super) fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// The maps this build's object declares, as the kernel creates them: the
/// object is loaded without pins (and with tiny grant maps) and each map's
/// shape read back.
pub fn declared() -> Result<BTreeMap<String, MapShape>> {
    let ebpf = object::load_unpinned(1)?;
    let mut shapes = BTreeMap::new();
    for (name, map) in ebpf.maps() {
        let Some(data) = map_data(map) else { continue };
        let info = data
            .info()
            .with_context(|| format!("reading map {name} of the object"))?;
        shapes.insert(name.to_string(), MapShape::of(&info));
    }
    Ok(shapes)
}

/// The gate's maps pinned in `dir` whose shape is not the one this build
/// declares: the maps an upgrade replaces. Maps that are not pinned (new
/// in this build) are not listed; the loader creates them.
pub fn outdated_pins(dir: &PinDir) -> Result<Vec<&'static str>> {
    let pinned: Vec<&'static str> = ALL_MAPS
        .iter()
        .copied()
        .filter(|name| dir.map(name).exists())
        .collect();
    if pinned.is_empty() {
        return Ok(Vec::new());
    }
    let declared = declared()?;
    let mut outdated = Vec::new();
    for name in pinned {
        let Some(want) = declared.get(name) else {
            continue;
        };
        let path = dir.map(name);
        let info =
            MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        if !MapShape::of(&info).matches(want, name) {
            outdated.push(name);
        }
    }
    Ok(outdated)
}

/// Fails with an explanation when the pinned gate is of an older layout
/// than this build reads. A quick check from gate-common's types, for the
/// commands that only open maps (no object load).
pub fn require_current(dir: &PinDir) -> Result<()> {
    let info = |name: &str| MapInfo::from_pin(dir.map(name)).ok();
    let settings_ok =
        info(SETTINGS).is_some_and(|i| i.value_size() as usize == size_of::<Settings>());
    let stats_ok = info(STATS).is_some_and(|i| i.value_size() as usize == size_of::<Counters>());
    // Every map of this build is pinned (a gate of an older build lacks
    // the maps added since).
    let new_maps_ok = ALL_MAPS.iter().all(|name| dir.map(name).exists());
    if settings_ok && stats_ok && new_maps_ok {
        return Ok(());
    }
    let iface = dir
        .links()
        .ok()
        .and_then(|links| links.into_iter().next())
        .map_or_else(|| "IF".to_string(), |l| l.iface);
    bail!(
        "the gate in {} was pinned by an older smtp-gate; run `smtp-gate attach --iface \
         {iface}` to upgrade it",
        dir.path().display()
    )
}
