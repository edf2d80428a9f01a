//! How many fresh grants survive when the advertised capacity is written.
//!
//! The kernel's LRU hash may evict before it is full (per-CPU free lists),
//! so the maps are created with headroom (`object::lru_max_entries`). This
//! writes `capacity` distinct fresh grants, with and without that headroom,
//! and counts what is left.

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, MapData},
    EbpfLoader,
};
use gate_common::{map_names::GRANTS_V4, Grant, GrantKeyV4};
use smtp_gate::gate::{clock, object};

#[derive(Debug, Clone, serde::Serialize)]
pub struct CapacityResult {
    pub capacity: u32,
    pub max_entries: u32,
    pub kept: u32,
}

/// Moves the calling thread to `cpu`: inserts from several CPUs are what
/// makes the kernel's LRU evict early (a multi-threaded daemon does that).
fn fill(capacity: u32, max_entries: u32) -> Result<CapacityResult> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(GRANTS_V4, max_entries)
        .load(object::embedded()?)
        .context("loading the object")?;
    let map = ebpf.take_map(GRANTS_V4).context("no grants_v4")?;
    let grants: HashMap<MapData, GrantKeyV4, Grant> = HashMap::try_from(map)?;
    let now = clock::GateClock::open()?.now_ns()?;
    let cpus = aya::util::online_cpus().map_err(|(_, e)| e)?;
    // One writer thread per CPU, interleaved addresses, all at once: the
    // way a multi-threaded daemon writes grants.
    let grants = std::sync::Mutex::new(grants);
    std::thread::scope(|scope| {
        for (t, cpu) in cpus.iter().enumerate() {
            let grants = &grants;
            let n = cpus.len() as u32;
            scope.spawn(move || {
                let cpu = *cpu as usize;
                crate::procs::set_affinity(0, cpu..cpu + 1).expect("pinning a writer to its CPU");
                let mut i = t as u32;
                while i < capacity {
                    // 10.0.0.0/8 and up: distinct addresses.
                    let addr = (0x0a00_0000u32 + i).to_be_bytes();
                    let value = Grant {
                        granted_at_ns: now,
                        lifetime_ns: 0,
                    };
                    grants
                        .lock()
                        .unwrap()
                        .insert(GrantKeyV4 { addr }, value, 0)
                        .expect("insert");
                    i += n;
                }
                // Then every user logs in again: an LRU update takes a new
                // slot before it frees the old one.
                let mut i = t as u32;
                while i < capacity {
                    let addr = (0x0a00_0000u32 + i).to_be_bytes();
                    let value = Grant {
                        granted_at_ns: now + 1,
                        lifetime_ns: 0,
                    };
                    grants
                        .lock()
                        .unwrap()
                        .insert(GrantKeyV4 { addr }, value, 0)
                        .expect("refresh");
                    i += n;
                }
            });
        }
    });
    let grants = grants.into_inner().unwrap();
    let kept = grants.keys().filter(|k| k.is_ok()).count() as u32;
    Ok(CapacityResult {
        capacity,
        max_entries,
        kept,
    })
}

/// Returns (without headroom, with the shipped headroom).
pub fn measure(capacity: u32) -> Result<(CapacityResult, CapacityResult)> {
    let bare = fill(capacity, capacity)?;
    let sized = fill(capacity, object::lru_max_entries(capacity))?;
    Ok((bare, sized))
}
