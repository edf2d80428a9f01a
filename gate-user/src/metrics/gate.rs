//! The gate's part of the page: its packet counters, summed over the
//! CPUs at every scrape (one bpf() call), and the census of its grant and
//! ban maps (census.rs). `smtp-gate stats --prometheus` prints the same
//! part.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use anyhow::Result;
use gate_common::Outcome;
use log::warn;

use super::{
    census::CensusReading,
    exposition::{Exposition, Kind},
};
use crate::{
    gate::{maps::Held, GateMaps},
    serve::watch::MapUser,
};

/// The counters, per [`Outcome`] in its order, as `GateMaps::stats` sums
/// them.
pub type Counters = [u64; Outcome::COUNT as usize];

/// Writes the gate's families: the counters, and the census if there is
/// one, `age` old.
pub fn render(
    out: &mut Exposition,
    counters: Option<&Counters>,
    census: Option<(&CensusReading, Duration)>,
) {
    if let Some(counters) = counters {
        let mut packets = out.family(
            "smtp_gate_packets_total",
            Kind::Counter,
            "Packets the gate judged, by outcome (every packet moves exactly one), summed over \
             the CPUs.",
        );
        for outcome in Outcome::ALL.iter().filter(|o| !o.is_reason()) {
            packets.sample(&[("outcome", outcome.name())], counters[*outcome as usize]);
        }
        let mut reasons = out.family(
            "smtp_gate_packet_reasons_total",
            Kind::Counter,
            "Why a packet got its outcome, counted beside it: a first fragment or an IPv6 \
             header chain judged by what it shows, a denied SYN reset mode could not answer.",
        );
        for reason in Outcome::ALL.iter().filter(|o| o.is_reason()) {
            reasons.sample(&[("reason", reason.name())], counters[*reason as usize]);
        }
    }
    let Some((reading, age)) = census else {
        return;
    };
    let census = &reading.census;
    let by_family = |out: &mut Exposition, name: &str, help: &str, v4: u64, v6: u64| {
        out.family(name, Kind::Gauge, help)
            .sample(&[("family", "ipv4")], v4)
            .sample(&[("family", "ipv6")], v6);
    };
    let live = |held: Held| held.live;
    let entries = |held: Held| held.entries;
    by_family(
        out,
        "smtp_gate_grants",
        "Fresh grants in the gate's maps: addresses whose SYNs to the gated ports pass.",
        live(census.grants_v4),
        live(census.grants_v6),
    );
    by_family(
        out,
        "smtp_gate_grant_map_entries",
        "Entries of the grant maps, fresh or expired (an expired grant stays until the LRU \
         map needs its slot).",
        entries(census.grants_v4),
        entries(census.grants_v6),
    );
    by_family(
        out,
        "smtp_gate_bans",
        "Bans in force (IPv4 addresses, IPv6 networks of the ban prefix).",
        live(census.bans_v4),
        live(census.bans_v6),
    );
    by_family(
        out,
        "smtp_gate_ban_map_entries",
        "Entries of the ban maps, in force or ended (an ended ban stays for its count).",
        entries(census.bans_v4),
        entries(census.bans_v6),
    );
    out.family(
        "smtp_gate_census_age_seconds",
        Kind::Gauge,
        "How old the counts of grants and bans are: the maps are walked at most every few \
         seconds.",
    )
    .sample(&[], age.as_secs_f64());
    out.family(
        "smtp_gate_census_duration_seconds",
        Kind::Gauge,
        "How long the last walk of the grant and ban maps took.",
    )
    .sample(&[], reading.took.as_secs_f64());
}

/// The daemon's handles for reading the counters at every scrape (a
/// census walks with handles of its own: census.rs).
pub struct GateStats {
    maps: Mutex<GateMaps>,
    /// The last failure logged, so that it is logged once.
    failure: Mutex<Option<String>>,
}

impl GateStats {
    pub fn new(maps: GateMaps) -> Self {
        Self {
            maps: Mutex::new(maps),
            failure: Mutex::new(None),
        }
    }

    /// The counters now; `None` (logged once) if they cannot be read.
    pub fn read(&self) -> Option<Counters> {
        let read: Result<Counters> = self
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats();
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(counters) => {
                *failure = None;
                Some(counters)
            }
            Err(e) => {
                let text = format!("{e:#}");
                if failure.as_deref() != Some(&text) {
                    warn!("metrics: cannot read the gate's counters: {text}");
                    *failure = Some(text);
                }
                None
            }
        }
    }
}

impl MapUser for GateStats {
    fn replace_maps(&self, maps: GateMaps) {
        *self.maps.lock().unwrap_or_else(PoisonError::into_inner) = maps;
    }
}
