//! The verdict for one packet, shared by the XDP and TC entries.

use aya_ebpf::{btf_maps::lpm_trie::Key, helpers::generated::bpf_ktime_get_boot_ns, EbpfContext};
use gate_common::{DenyMode, GrantKeyV4, GrantKeyV6, Outcome};

use crate::{
    log::log_denial,
    maps::{exempt_v4, exempt_v6, grants_v4, grants_v6, settings, stats},
    parse::{parse, AddrAt, Parsed},
    reset::Reply,
};

pub enum Action {
    Pass,
    Drop,
    /// Answer the SYN with a RST+ACK out of the same interface.
    Reset(Reply),
}

#[inline(always)]
pub fn count(outcome: Outcome) {
    if let Some(counter) = stats.get_ptr_mut(outcome as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *counter += 1 };
    }
}

/// Order of judgement for a gated SYN: exempt network, then fresh grant,
/// then the deny mode. Everything that is not a gated SYN passes.
#[inline(always)]
pub fn classify<C: EbpfContext>(ctx: &C, start: usize, end: usize, packet_len: usize) -> Action {
    let (src, dst_port, syn) = match parse(start, end, packet_len) {
        Parsed::Syn(syn) => (syn.src, syn.dst_port, Some(syn)),
        Parsed::TinyFragment { src, dst_port } => (src, dst_port, None),
        Parsed::NotGated => {
            count(Outcome::NotGated);
            return Action::Pass;
        }
        Parsed::Malformed => {
            count(Outcome::Malformed);
            return Action::Pass;
        }
        Parsed::Unwalkable => return deny_unwalkable(),
    };
    let Some(config) = settings.get(0) else {
        count(Outcome::NotGated);
        return Action::Pass;
    };
    if !config.gates_port(dst_port) {
        count(Outcome::NotGated);
        return Action::Pass;
    }
    if is_exempt(&src) {
        count(Outcome::Exempt);
        return Action::Pass;
    }
    if has_fresh_grant(&src, config.window_ns) {
        count(Outcome::Granted);
        return Action::Pass;
    }
    let (outcome, action) = match (DenyMode::from_u32(config.deny_mode), syn) {
        (Some(DenyMode::Monitor), _) => (Outcome::Monitored, Action::Pass),
        (Some(DenyMode::Reset), Some(syn)) => {
            (Outcome::DeniedReset, Action::Reset(Reply::of(&syn)))
        }
        // A fragment cannot be answered: there is no whole segment.
        _ => (Outcome::DeniedDrop, Action::Drop),
    };
    count(outcome);
    log_denial(ctx, src, dst_port, outcome, config);
    action
}

/// An IPv6 chain the walk cannot finish: its port is unknown, so it is
/// dropped wherever it goes (monitor mode passes and counts it). No mail
/// client sends one.
#[inline(always)]
fn deny_unwalkable() -> Action {
    let Some(config) = settings.get(0).filter(|c| c.port_count != 0) else {
        count(Outcome::Malformed);
        return Action::Pass;
    };
    if config.deny_mode == DenyMode::Monitor as u32 {
        count(Outcome::Monitored);
        return Action::Pass;
    }
    count(Outcome::DeniedUnwalkable);
    Action::Drop
}

#[inline(always)]
fn is_exempt(src: &AddrAt) -> bool {
    // SAFETY (both arms): a pointer the parser made into the unchanged
    // packet; [u8; N] has alignment 1.
    match *src {
        AddrAt::V4(addr) => exempt_v4.get(&Key::new(32, unsafe { *addr })).is_some(),
        AddrAt::V6(addr) => exempt_v6.get(&Key::new(128, unsafe { *addr })).is_some(),
    }
}

/// The clock is read only when there is a grant to compare it with: the
/// read costs about as much as the hash lookup, and a flood of strangers
/// has no grants.
#[inline(always)]
fn has_fresh_grant(src: &AddrAt, window_ns: u64) -> bool {
    // SAFETY: the keys are the address octets in the unchanged packet: the
    // key types are `#[repr(C)]` wrappers of exactly those arrays
    // (alignment 1), and the helper may read packet memory.
    let grant = match *src {
        AddrAt::V4(addr) => grants_v4.get_ptr(unsafe { &*(addr as *const GrantKeyV4) }),
        AddrAt::V6(addr) => grants_v6.get_ptr(unsafe { &*(addr as *const GrantKeyV6) }),
    };
    match grant {
        // SAFETY: read once, right away; the program writes no grants, so
        // the only race is user space replacing the value, which at worst
        // gives the old or the new stamp.
        Some(grant) => unsafe { (*grant).is_fresh(bpf_ktime_get_boot_ns(), window_ns) },
        None => false,
    }
}
