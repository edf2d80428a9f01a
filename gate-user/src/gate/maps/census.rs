//! How many grants and bans the maps hold, per family: one walk over each
//! hash map, batched where the kernel can (batch.rs), key by key where it
//! cannot. For the metrics (the daemons' page and `stats --prometheus`);
//! the daemon walks at most every few seconds, off its async threads
//! (metrics/census.rs).

use std::os::fd::AsFd;

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, IterableMap, MapData},
    Pod,
};
use gate_common::{
    map_names::{BANS_V4, BANS_V6, GRANTS_V4, GRANTS_V6},
    Ban, Grant,
};

use super::{
    batch::{self, BatchError},
    map_error, GateMaps,
};

/// One map's count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Entries in the map, whatever their state.
    pub entries: u64,
    /// Grants fresh, bans in force (an ended ban stays for its count, an
    /// expired grant until the LRU map evicts it).
    pub live: u64,
}

/// How a walk read its map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// BPF_MAP_LOOKUP_BATCH, in so many calls.
    Batched(usize),
    /// Key by key: the kernel has no batch lookups for the map.
    KeyByKey,
}

/// The grants and bans held, per family, at one walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapCensus {
    pub grants_v4: Held,
    pub grants_v6: Held,
    pub bans_v4: Held,
    pub bans_v6: Held,
    /// How the grant maps were walked (the bans are walked alike).
    pub walk: Walk,
}

impl GateMaps {
    /// Counts the entries of the grant and ban maps, and which of them
    /// are live. A grant counts as fresh if it was at the start of the
    /// walk or at its end (one written meanwhile is), as the program
    /// judges it under the gate's window; a ban if it was in force at
    /// the start.
    pub fn census(&self) -> Result<MapCensus> {
        self.census_walking(true)
    }

    /// [`Self::census`] as a kernel without batch lookups makes it: key
    /// by key (the benchmark compares the two).
    pub fn census_without_batches(&self) -> Result<MapCensus> {
        self.census_walking(false)
    }

    fn census_walking(&self, batched: bool) -> Result<MapCensus> {
        let before = self.now_ns()?;
        let window = self.settings()?.window_ns;
        let fresh_grants = |held: &mut Held, grant: &Grant, after: u64| {
            held.entries += 1;
            if grant.is_fresh(before, window) || grant.is_fresh(after, window) {
                held.live += 1;
            }
        };
        // The end of the walk is only known after it: grants are kept
        // aside by their stamp only when they are newer than `before`
        // (written during the walk), which are few.
        let mut newer: Vec<(bool, Grant)> = Vec::new();
        let mut grants_v4 = Held::default();
        let mut grants_v6 = Held::default();
        let first = if batched {
            Walk::Batched(0)
        } else {
            Walk::KeyByKey
        };
        let walk = walk_as(first, &self.grants_v4, GRANTS_V4, |_, grant: &Grant| {
            if grant.granted_at_ns > before {
                newer.push((true, *grant));
            } else {
                fresh_grants(&mut grants_v4, grant, before);
            }
        })?;
        walk_as(walk, &self.grants_v6, GRANTS_V6, |_, grant: &Grant| {
            if grant.granted_at_ns > before {
                newer.push((false, *grant));
            } else {
                fresh_grants(&mut grants_v6, grant, before);
            }
        })?;
        let after = self.now_ns()?;
        for (v4, grant) in &newer {
            let held = if *v4 { &mut grants_v4 } else { &mut grants_v6 };
            fresh_grants(held, grant, after);
        }
        let active_bans = |held: &mut Held, ban: &Ban| {
            held.entries += 1;
            held.live += u64::from(ban.is_active(before));
        };
        let mut bans_v4 = Held::default();
        let mut bans_v6 = Held::default();
        walk_as(walk, &self.bans_v4, BANS_V4, |_, ban: &Ban| {
            active_bans(&mut bans_v4, ban)
        })?;
        walk_as(walk, &self.bans_v6, BANS_V6, |_, ban: &Ban| {
            active_bans(&mut bans_v6, ban)
        })?;
        Ok(MapCensus {
            grants_v4,
            grants_v6,
            bans_v4,
            bans_v6,
            walk,
        })
    }
}

/// Every entry of `map`, batched if the kernel can.
fn walk<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
    mut each: impl FnMut(&K, &V),
) -> Result<Walk> {
    match batch::for_each(map.map().fd().as_fd(), &mut each) {
        Ok(calls) => Ok(Walk::Batched(calls)),
        Err(BatchError::Unsupported) => {
            walk_key_by_key(map, name, each)?;
            Ok(Walk::KeyByKey)
        }
        Err(BatchError::Failed(e)) => Err(e).with_context(|| format!("map {name}")),
    }
}

/// Every entry of `map`, the way `first` walked its map (batched if the
/// kernel can, or key by key): a kernel that refused one batch walk is not
/// asked again.
fn walk_as<K: Pod, V: Pod>(
    first: Walk,
    map: &HashMap<MapData, K, V>,
    name: &str,
    mut each: impl FnMut(&K, &V),
) -> Result<Walk> {
    match first {
        Walk::Batched(_) => walk(map, name, each),
        Walk::KeyByKey => {
            walk_key_by_key(map, name, &mut each)?;
            Ok(Walk::KeyByKey)
        }
    }
}

/// Every entry of `map` through aya's iterator: two bpf() calls a key.
pub(super) fn walk_key_by_key<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &str,
    mut each: impl FnMut(&K, &V),
) -> Result<()> {
    for item in map.iter() {
        let (key, value) = item.map_err(|e| map_error(name, e))?;
        each(&key, &value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use gate_common::{GrantKeyV4, GrantKeyV6};

    use super::*;
    use crate::gate::{object, privilege};

    /// Maps of a freshly loaded object (not attached, not pinned) for
    /// `capacity` grants a family, with the default settings (the
    /// window: 15 minutes).
    fn maps(capacity: u32) -> (aya::Ebpf, GateMaps) {
        privilege::require("the census test", privilege::READ_CLOCK)
            .expect("this test must run as root; it does not skip");
        let mut ebpf = object::load_unpinned(capacity).expect("loading the gate's object");
        let mut maps = GateMaps::from_ebpf(&mut ebpf).expect("its maps");
        maps.set_settings(&crate::gate::settings::default_settings())
            .expect("writing the settings");
        (ebpf, maps)
    }

    /// The IPv6 network `n` (a /64 of 2001:db8::/32), its address 1.
    fn net6(n: u32) -> IpAddr {
        IpAddr::from(((0x2001_0db8u128 << 96) + (u128::from(n) << 64) + 1).to_be_bytes())
    }

    /// Fresh and expired grants, bans in force and ended, of both
    /// families: counted apart, and the batched walk sees what the key by
    /// key one does.
    #[test]
    fn the_census_counts_live_and_held_entries_per_family() {
        let (_ebpf, mut maps) = maps(1024);
        let now = maps.now_ns().unwrap();
        let window = maps.settings().unwrap().window_ns;
        let addr = |family: u8, i: u32| -> IpAddr {
            if family == 4 {
                IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())
            } else {
                IpAddr::from(((0x2001_0db8u128 << 96) + u128::from(i)).to_be_bytes())
            }
        };
        // IPv4: 700 fresh, 300 expired (by the window), 5 with a lifetime
        // of their own that ran out; IPv6: 900 fresh (2 of them with
        // their own lifetime), 100 expired.
        for i in 0..700 {
            maps.grant_at(addr(4, i), now, None).unwrap();
        }
        for i in 700..1000 {
            maps.grant_at(addr(4, i), now - window - 1, None).unwrap();
        }
        for i in 1000..1005 {
            let hour = Duration::from_secs(3600);
            maps.grant_at(addr(4, i), now - 2 * hour.as_nanos() as u64, Some(hour))
                .unwrap();
        }
        for i in 0..898 {
            maps.grant_at(addr(6, i), now, None).unwrap();
        }
        for i in 898..900 {
            maps.grant_at(addr(6, i), now, Some(Duration::from_secs(60)))
                .unwrap();
        }
        for i in 900..1000 {
            maps.grant_at(addr(6, i), now.saturating_sub(window), None)
                .unwrap();
        }
        for i in 0..7 {
            maps.ban(addr(4, i), Duration::from_secs(600)).unwrap();
        }
        let ended = Ban {
            banned_at_ns: now - 10,
            until_ns: now - 1,
            count: 1,
            reserved: 0,
        };
        maps.ban_at(addr(4, 100), ended).unwrap();
        maps.ban(net6(1), Duration::from_secs(600)).unwrap();
        maps.ban_at(net6(2), ended).unwrap();
        maps.ban_at(net6(3), ended).unwrap();

        let census = maps.census().unwrap();
        assert_eq!(
            census.grants_v4,
            Held {
                entries: 1005,
                live: 700
            }
        );
        assert_eq!(
            census.grants_v6,
            Held {
                entries: 1000,
                live: 900
            }
        );
        assert_eq!(
            census.bans_v4,
            Held {
                entries: 8,
                live: 7
            }
        );
        assert_eq!(
            census.bans_v6,
            Held {
                entries: 3,
                live: 1
            }
        );
        // This kernel (5.6 and later) batches: a call per BATCH entries,
        // and one that finds the end.
        let calls = 1005usize.div_ceil(batch::BATCH as usize);
        assert!(
            census.walk == Walk::Batched(calls) || census.walk == Walk::Batched(calls + 1),
            "{census:?}"
        );
        let by_keys = maps.census_without_batches().unwrap();
        assert_eq!(by_keys.walk, Walk::KeyByKey);
        assert_eq!(
            MapCensus {
                walk: census.walk,
                ..by_keys
            },
            census,
            "key by key, the same"
        );

        // What the batches handed out is what the kernel's iteration has.
        let mut batched_v4 = Vec::new();
        walk(&maps.grants_v4, GRANTS_V4, |k: &GrantKeyV4, g: &Grant| {
            batched_v4.push((k.addr, g.granted_at_ns))
        })
        .unwrap();
        let mut keyed_v4 = Vec::new();
        walk_key_by_key(&maps.grants_v4, GRANTS_V4, |k: &GrantKeyV4, g: &Grant| {
            keyed_v4.push((k.addr, g.granted_at_ns))
        })
        .unwrap();
        batched_v4.sort();
        keyed_v4.sort();
        assert_eq!(batched_v4.len(), 1005);
        assert_eq!(batched_v4, keyed_v4);
        let mut v6 = 0;
        walk(&maps.grants_v6, GRANTS_V6, |_: &GrantKeyV6, _: &Grant| {
            v6 += 1
        })
        .unwrap();
        assert_eq!(v6, 1000);
    }

    /// More entries than one batch: the walk goes on from where the last
    /// call ended, and sees each entry once.
    #[test]
    fn a_walk_goes_on_over_many_batches() {
        let count = 3 * batch::BATCH + 17;
        let (_ebpf, mut maps) = maps(count);
        let now = maps.now_ns().unwrap();
        for i in 0..count {
            maps.grant_at(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()), now, None)
                .unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let walked = walk(&maps.grants_v4, GRANTS_V4, |k: &GrantKeyV4, _: &Grant| {
            assert!(seen.insert(k.addr), "{:?} seen twice", k.addr);
        })
        .unwrap();
        assert_eq!(seen.len(), count as usize);
        let Walk::Batched(calls) = walked else {
            panic!("not batched: {walked:?}")
        };
        assert!(calls >= 4, "{calls} calls for {count} entries");
        let census = maps.census().unwrap();
        assert_eq!(
            census.grants_v4,
            Held {
                entries: count.into(),
                live: count.into()
            }
        );
    }
}
