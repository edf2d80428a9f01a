//! The gate's counters as the tests read them: through `smtp-gate stats
//! --json` on the lab's pin directory, or, when no pins are left (a test
//! removed them, or unmounted the bpffs), through the program attached to
//! an interface, which keeps its maps; and how far they moved.

use std::{collections::BTreeMap, fmt};

use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use gate_common::{map_names::STATS, Counters, Outcome};

use crate::lab::Lab;

/// Outcomes of a SYN the gate let through.
pub(crate) const PASSED: [&str; 3] = ["granted", "exempt", "monitored"];
/// Outcomes of a SYN the gate denied.
pub(crate) const DENIED: [&str; 4] = [
    "denied_drop",
    "denied_reset",
    "denied_unwalkable",
    "denied_banned",
];

/// How far each counter of the gate moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moved(BTreeMap<String, u64>);

impl Moved {
    /// Between two readings shaped as `smtp-gate stats --json`.
    pub fn between(before: &serde_json::Value, after: &serde_json::Value) -> Self {
        let counters = after.as_object().into_iter().flatten();
        Self(
            counters
                .filter_map(|(name, now)| {
                    let was = before[name].as_u64().unwrap_or(0);
                    Some((name.clone(), now.as_u64()?.saturating_sub(was)))
                })
                .collect(),
        )
    }

    /// How far `name` moved (0 if it is not a counter).
    pub fn of(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Sum over `names`.
    pub fn sum(&self, names: &[&str]) -> u64 {
        names.iter().map(|n| self.of(n)).sum()
    }

    /// SYNs the gate let through.
    pub fn passed(&self) -> u64 {
        self.sum(&PASSED)
    }

    /// SYNs the gate denied.
    pub fn denied(&self) -> u64 {
        self.sum(&DENIED)
    }
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let moved: Vec<String> = self
            .0
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name} +{n}"))
            .collect();
        if moved.is_empty() {
            f.write_str("no counter moved")
        } else {
            f.write_str(&moved.join(", "))
        }
    }
}

impl Lab {
    /// The counters of the gate program attached to the server-side
    /// interface `iface` (XDP, else the tcx ingress), read from its own
    /// `stats` map, shaped as `smtp-gate stats --json` shapes them. Needs
    /// no pin: for tests that take the pins away.
    pub fn program_stats(&self, iface: &str) -> serde_json::Value {
        let program = match self.xdp_prog_ids(iface).first() {
            Some(id) => *id,
            None => self
                .tc_ingress_programs(iface)
                .first()
                .map(|(id, _)| *id)
                .unwrap_or_else(|| panic!("no program is attached to {iface}")),
        };
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == program)
            .unwrap_or_else(|| panic!("program {program} on {iface} is not loaded"));
        let stats = info
            .map_ids()
            .unwrap_or_else(|e| panic!("the maps of program {program}: {e}"))
            .unwrap_or_default()
            .into_iter()
            .find(|id| MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some(STATS)))
            .unwrap_or_else(|| panic!("program {program} on {iface} has no {STATS} map"));
        let data = MapData::from_id(stats).unwrap_or_else(|e| panic!("map {stats}: {e}"));
        let array: PerCpuArray<MapData, Counters> = PerCpuArray::try_from(Map::PerCpuArray(data))
            .unwrap_or_else(|e| panic!("map {stats} is not the counters: {e}"));
        let per_cpu = array
            .get(&0, 0)
            .unwrap_or_else(|e| panic!("reading map {stats}: {e}"));
        let mut totals = serde_json::Map::new();
        for outcome in Outcome::ALL {
            let total: u64 = per_cpu.iter().map(|c| c.slots[outcome as usize]).sum();
            totals.insert(outcome.name().into(), total.into());
        }
        totals.into()
    }
}
