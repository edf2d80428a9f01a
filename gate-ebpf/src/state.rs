//! The gate's state as the verdict sees it: the pinned maps.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_ktime_get_boot_ns};
use gate_common::{GrantKeyV4, GrantKeyV6, Outcome, Settings};
use gate_packet::{AddrRef, GateState};

use crate::maps::{
    exempt_v4, exempt_v6, grants_v4, grants_v6, iface_macs, local_v4, local_v6, scope_v4, scope_v6,
    scratch, settings, stats,
};

/// The maps, for a packet that came in on interface `ifindex`.
pub struct Maps {
    pub ifindex: u32,
}

#[inline(always)]
pub fn count(outcome: Outcome) {
    if let Some(counter) = stats.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

impl GateState for Maps {
    #[inline(always)]
    fn settings(&self) -> Option<&Settings> {
        settings.get(0)
    }

    #[inline(always)]
    fn is_exempt(&self, src: AddrRef<'_>) -> bool {
        match src {
            AddrRef::V4(addr) => exempt_v4.get(&Key::new(32, *addr)).is_some(),
            AddrRef::V6(addr) => exempt_v6.get(&Key::new(128, *addr)).is_some(),
        }
    }

    /// The clock is read only when there is a grant to compare it with: the
    /// read costs about as much as the hash lookup, and a flood of strangers
    /// has no grants.
    #[inline(always)]
    fn has_fresh_grant(&self, src: AddrRef<'_>, window_ns: u64) -> bool {
        // SAFETY: the key types are `#[repr(C)]` wrappers of exactly these
        // arrays (alignment 1), and the helper may read packet memory.
        let grant = match src {
            AddrRef::V4(addr) => {
                grants_v4.get_ptr(unsafe { &*(addr as *const [u8; 4] as *const GrantKeyV4) })
            }
            AddrRef::V6(addr) => {
                grants_v6.get_ptr(unsafe { &*(addr as *const [u8; 16] as *const GrantKeyV6) })
            }
        };
        match grant {
            // SAFETY: read once, right away; the program writes no grants,
            // so the only race is user space replacing the value, which at
            // worst gives the old or the new stamp.
            Some(grant) => unsafe { (*grant).is_fresh(bpf_ktime_get_boot_ns(), window_ns) },
            None => false,
        }
    }

    #[inline(always)]
    fn in_scope(&self, dst: AddrRef<'_>) -> bool {
        match dst {
            AddrRef::V4(addr) => scope_v4.get(&Key::new(32, *addr)).is_some(),
            AddrRef::V6(addr) => scope_v6.get(&Key::new(128, *addr)).is_some(),
        }
    }

    #[inline(always)]
    fn is_local(&self, dst: AddrRef<'_>) -> bool {
        // get_ptr, not get: only presence is asked, no reference to the
        // value is made that user space could change under us.
        match dst {
            AddrRef::V4(addr) => local_v4.get_ptr(addr).is_some(),
            AddrRef::V6(addr) => local_v6.get_ptr(addr).is_some(),
        }
    }

    #[inline(always)]
    fn is_own_mac(&self, mac: &[u8; 6]) -> bool {
        // SAFETY: read once, right away; user space replaces whole values.
        match unsafe { iface_macs.get(&self.ifindex) } {
            // As integers: an array comparison becomes a bcmp call whose
            // byte loop the verifier walks again on every path.
            Some(own) => mac_bits(&own.mac) == mac_bits(mac),
            None => false,
        }
    }

    #[inline(always)]
    fn forget(&self, value: usize) -> usize {
        match scratch.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, touched by nobody else while we run.
            Some(slot) => unsafe {
                *slot = value as u64;
                core::ptr::read_volatile(slot) as usize
            },
            // Never happens (index 0 of a one-slot array); the caller
            // checks the bound of whatever comes back.
            None => usize::MAX,
        }
    }
}

#[inline(always)]
fn mac_bits(mac: &[u8; 6]) -> u64 {
    let mut bits = 0u64;
    let mut i = 0;
    while i < 6 {
        bits = bits << 8 | mac[i] as u64;
        i += 1;
    }
    bits
}
