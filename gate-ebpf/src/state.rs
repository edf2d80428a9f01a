//! The gate's state as the verdict sees it: the pinned maps.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_jiffies64};
use gate_common::{Counters, GrantKeyV4, GrantKeyV6, Outcome, Settings};
use gate_packet::{AddrRef, GateState};

use crate::maps::{
    bans_v4, bans_v6, exempt_v4, exempt_v6, grants_v4, grants_v6, iface_macs, local_v4, local_v6,
    scope_v4, scope_v6, scratch, settings, stats,
};

/// The maps, for a packet that came in on the interface `ifindex` returns
/// (asked only in reset mode: reading it costs a chain of loads).
pub struct Maps<I: Fn() -> u32> {
    pub ifindex: I,
}

/// This CPU's counters and log bucket: one lookup for all a packet moves.
#[inline(always)]
pub fn counters() -> Option<&'static mut Counters> {
    // SAFETY: this CPU's value, only this CPU touches it while we run
    // (user space only reads it, and zeroes nothing).
    stats
        .get_ptr_mut(0)
        .map(|counters| unsafe { &mut *counters })
}

/// Moves the counter of `outcome`, and of `reason` if there is one.
#[inline(always)]
pub fn count_in(counters: &mut Counters, outcome: Outcome, reason: Option<Outcome>) {
    let slots = &mut counters.slots;
    slots[outcome as usize] += 1;
    if let Some(reason) = reason {
        slots[reason as usize] += 1;
    }
}

/// `count_in` with a lookup of its own, for paths that made none.
#[inline(always)]
pub fn count(outcome: Outcome, reason: Option<Outcome>) {
    if let Some(counters) = counters() {
        count_in(counters, outcome, reason);
    }
}

/// The gate's clock (see `gate_common::Grant`). `bpf_jiffies64` is a
/// single load once the verifier has inlined it on a 64-bit JIT: the
/// nanosecond clocks cost as much as the grant lookup.
#[inline(always)]
pub fn clock_ns(tick_ns: u32) -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_jiffies64() }.wrapping_mul(tick_ns as u64)
}

impl<I: Fn() -> u32> GateState for Maps<I> {
    #[inline(always)]
    fn settings(&self) -> Option<&Settings> {
        settings.get(0)
    }

    #[inline(always)]
    fn is_exempt(&self, src: AddrRef<'_>) -> bool {
        match src {
            AddrRef::V4(addr) => exempt_v4.get(&lpm_key_v4(addr)).is_some(),
            AddrRef::V6(addr) => exempt_v6.get(&lpm_key_v6(addr)).is_some(),
        }
    }

    /// The clock is read only when there is a grant to compare it with.
    #[inline(always)]
    fn has_fresh_grant(&self, src: AddrRef<'_>, config: &Settings) -> bool {
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
            // A gate whose clock was never set up has no fresh grants.
            Some(_) if config.tick_ns == 0 => false,
            Some(grant) => unsafe { (*grant).is_fresh(clock_ns(config.tick_ns), config.window_ns) },
            None => false,
        }
    }

    /// An IPv6 source is looked up by its network: its words cut by the
    /// mask in the settings, which user space writes with the prefix.
    /// The clock is read only when there is a ban to compare it with.
    #[inline(always)]
    fn is_banned(&self, src: AddrRef<'_>, config: &Settings) -> bool {
        let ban = match src {
            // SAFETY: as for the grants.
            AddrRef::V4(addr) => {
                bans_v4.get_ptr(unsafe { &*(addr as *const [u8; 4] as *const GrantKeyV4) })
            }
            AddrRef::V6(addr) => bans_v6.get_ptr(&ban_key_v6(addr, &config.ban_mask_v6)),
        };
        match ban {
            // SAFETY: read once, right away; user space replaces whole
            // values (at worst the old or the new end is seen).
            Some(ban) => unsafe { (*ban).is_active(clock_ns(config.tick_ns)) },
            None => false,
        }
    }

    #[inline(always)]
    fn in_scope(&self, dst: AddrRef<'_>) -> bool {
        match dst {
            AddrRef::V4(addr) => scope_v4.get(&lpm_key_v4(addr)).is_some(),
            AddrRef::V6(addr) => scope_v6.get(&lpm_key_v6(addr)).is_some(),
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
        match unsafe { iface_macs.get(&(self.ifindex)()) } {
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

/// Four octets of the packet at `octets`, as they lie, in one load. LLVM
/// splits any load it cannot prove aligned into single octets (packets
/// promise no alignment); the kernel, whose verifier checks the bounds
/// of every packet access, loads unaligned words on the architectures
/// the gate runs on.
///
/// # Safety
/// The four octets are inside the packet's bounds, as checked by a view.
#[inline(always)]
unsafe fn packet_word(octets: *const u8) -> u32 {
    let word: u64;
    // SAFETY: the caller's promise; the load writes no memory.
    unsafe {
        core::arch::asm!(
            "{word} = *(u32 *)({octets} + 0)",
            word = out(reg) word,
            octets = in(reg) octets,
            options(readonly, nostack, preserves_flags)
        );
    }
    word as u32
}

/// The LPM key of a whole IPv4 address, loaded as one word.
#[inline(always)]
fn lpm_key_v4(addr: &[u8; 4]) -> Key<[u8; 4]> {
    // SAFETY: the address is a view into the packet.
    let word = unsafe { packet_word(addr.as_ptr()) };
    Key::new(32, word.to_ne_bytes())
}

/// The LPM key of a whole IPv6 address, loaded as four words (`*addr`
/// would become a call to a byte-wise memmove, a loop of sixteen rounds).
#[inline(always)]
fn lpm_key_v6(addr: &[u8; 16]) -> Key<[u8; 16]> {
    let at = addr.as_ptr();
    // SAFETY: the address is a view into the packet, sixteen octets long.
    let words: [u32; 4] = unsafe {
        [
            packet_word(at),
            packet_word(at.add(4)),
            packet_word(at.add(8)),
            packet_word(at.add(12)),
        ]
    };
    // SAFETY: same size, and every bit pattern is a valid [u8; 16].
    Key::new(128, unsafe {
        core::mem::transmute::<[u32; 4], [u8; 16]>(words)
    })
}

/// The key of `bans_v6`: the address cut by `mask`, four words at a time.
#[inline(always)]
fn ban_key_v6(addr: &[u8; 16], mask: &[u8; 16]) -> GrantKeyV6 {
    let at = addr.as_ptr();
    let word = |i: usize| u32::from_ne_bytes([mask[i], mask[i + 1], mask[i + 2], mask[i + 3]]);
    // SAFETY: the address is a view into the packet, sixteen octets long.
    let words: [u32; 4] = unsafe {
        [
            packet_word(at) & word(0),
            packet_word(at.add(4)) & word(4),
            packet_word(at.add(8)) & word(8),
            packet_word(at.add(12)) & word(12),
        ]
    };
    GrantKeyV6 {
        // SAFETY: same size, and every bit pattern is a valid [u8; 16].
        addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) },
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
