//! The maps, BTF-defined so `bpftool map dump` prints named fields. User
//! space pins each under its own name in the pin directory and sets the
//! grant capacity at load time; the sizes here are the defaults.

use aya_ebpf::{
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gate_common::{
    Exempt, Grant, GrantKeyV4, GrantKeyV6, LogBucket, Outcome, Settings, DEFAULT_GRANT_CAPACITY,
    EXEMPT_CAPACITY,
};

const GRANTS: usize = DEFAULT_GRANT_CAPACITY as usize;
const EXEMPTS: usize = EXEMPT_CAPACITY as usize;
const OUTCOMES: usize = Outcome::COUNT as usize;

#[btf_map]
pub static grants_v4: LruHashMap<GrantKeyV4, Grant, GRANTS> = LruHashMap::new();

#[btf_map]
pub static grants_v6: LruHashMap<GrantKeyV6, Grant, GRANTS> = LruHashMap::new();

#[btf_map]
pub static exempt_v4: LpmTrie<[u8; 4], Exempt, EXEMPTS> = LpmTrie::new();

#[btf_map]
pub static exempt_v6: LpmTrie<[u8; 16], Exempt, EXEMPTS> = LpmTrie::new();

#[btf_map]
pub static settings: Array<Settings, 1> = Array::new();

#[btf_map]
pub static stats: PerCpuArray<u64, OUTCOMES> = PerCpuArray::new();

#[btf_map]
pub static log_buckets: PerCpuArray<LogBucket, 1> = PerCpuArray::new();
