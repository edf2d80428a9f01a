//! The maps, BTF-defined so `bpftool map dump` prints named fields. User
//! space pins each under its own name in the pin directory and sets the
//! grant capacity at load time; the sizes here are the defaults.

use aya_ebpf::btf_maps::HashMap;
use aya_ebpf::{
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use gate_common::{
    Ban, Counters, Exempt, Grant, GrantKeyV4, GrantKeyV6, IfaceMac, Local, Settings, BAN_CAPACITY,
    DEFAULT_GRANT_CAPACITY, EXEMPT_CAPACITY, IFACE_CAPACITY, LOCAL_CAPACITY, SCOPE_CAPACITY,
};

const GRANTS: usize = DEFAULT_GRANT_CAPACITY as usize;
const EXEMPTS: usize = EXEMPT_CAPACITY as usize;
const SCOPES: usize = SCOPE_CAPACITY as usize;
const LOCALS: usize = LOCAL_CAPACITY as usize;
const BANS: usize = BAN_CAPACITY as usize;

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
pub static stats: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[btf_map]
pub static scope_v4: LpmTrie<[u8; 4], Exempt, SCOPES> = LpmTrie::new();

#[btf_map]
pub static scope_v6: LpmTrie<[u8; 16], Exempt, SCOPES> = LpmTrie::new();

#[btf_map]
pub static local_v4: HashMap<[u8; 4], Local, LOCALS> = HashMap::new();

#[btf_map]
pub static local_v6: HashMap<[u8; 16], Local, LOCALS> = HashMap::new();

/// One per-CPU scratch slot: a value written and read back through it is
/// unknown to the verifier (see `GateState::forget`).
#[btf_map]
pub static scratch: PerCpuArray<u64, 1> = PerCpuArray::new();

#[btf_map]
pub static iface_macs: HashMap<u32, IfaceMac, { IFACE_CAPACITY as usize }> = HashMap::new();

/// Banned IPv4 sources, by address.
#[btf_map]
pub static bans_v4: LruHashMap<GrantKeyV4, Ban, BANS> = LruHashMap::new();

/// Banned IPv6 networks, by the source address cut to the ban prefix.
#[btf_map]
pub static bans_v6: LruHashMap<GrantKeyV6, Ban, BANS> = LruHashMap::new();
