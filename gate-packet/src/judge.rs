//! The verdict for one parsed packet: the gate's policy, apart from where
//! its state lives (BPF maps in the kernel program, plain tables in tests).

use gate_common::{
    DenyMode, Outcome, Settings, BANS_V4_IN_USE, BANS_V6_IN_USE, EXEMPT_V4_IN_USE, EXEMPT_V6_IN_USE,
};

use crate::{
    cursor::Packet,
    headers::{EthHdr, ETH_HDR_LEN},
    parse::{parse, AddrRef, Parsed, Syn},
    plain::{plain, Plain},
    reset::Reply,
};

/// What the gate knows besides the packet.
pub trait GateState {
    /// The settings, read once per packet; `None` if there are none.
    fn settings(&self) -> Option<&Settings>;
    /// True if `src` lies in an exempt network.
    fn is_exempt(&self, src: AddrRef<'_>) -> bool;
    /// True if `src` has a grant younger than its lifetime (or the
    /// window of `config`), on the clock of `config`.
    fn has_fresh_grant(&self, src: AddrRef<'_>, config: &Settings) -> bool;
    /// True if `src` (its network, for IPv6) is banned at the clock of
    /// `config`.
    fn is_banned(&self, src: AddrRef<'_>, config: &Settings) -> bool;
    /// True if `dst` lies in the destination scope (`--dest`).
    fn in_scope(&self, dst: AddrRef<'_>) -> bool;
    /// True if `dst` is one of the host's own unicast addresses.
    fn is_local(&self, dst: AddrRef<'_>) -> bool;
    /// True if `mac` is the MAC of the interface the packet came in on.
    fn is_own_mac(&self, mac: &[u8; 6]) -> bool;

    /// `value` itself, but for the BPF verifier an unknown number: it
    /// follows every constant through registers and the stack, and would
    /// verify the walk after each constant offset apart (the kernel
    /// program passes the value through a per-CPU map slot). Elsewhere
    /// there is nothing to forget.
    #[inline(always)]
    fn forget(&self, value: usize) -> usize {
        value
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Drop,
    /// Answer the SYN with a RST+ACK out of the same interface.
    Reset(Reply),
}

/// A denial worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Denial<'a> {
    /// `None` when the headers were too deep to find it.
    pub src: Option<AddrRef<'a>>,
    /// 0 when the packet does not show it.
    pub dst_port: u16,
    /// The log limit of the settings the verdict was made with, so the
    /// log does not read them a second time.
    pub log_rate_per_sec: u32,
    pub log_burst: u32,
    /// The tick length of the gate's clock, which the log limit runs on.
    pub tick_ns: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub action: Action,
    /// The one outcome counter this packet moves.
    pub outcome: Outcome,
    /// The reason counter it also moves, if any.
    pub reason: Option<Outcome>,
    pub denial: Option<Denial<'a>>,
}

impl Verdict<'_> {
    const fn pass(outcome: Outcome) -> Self {
        Self {
            action: Action::Pass,
            outcome,
            reason: None,
            denial: None,
        }
    }
}

/// What becomes of a packet, as the kernel program's entries take it: the
/// plain shapes first (`plain`), the general walk for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Passed and counted `not_gated`, with nothing else to do: most
    /// packets, which the entries count and pass at once rather than
    /// carrying a whole verdict along.
    NotGated,
    Judged(Verdict<'a>),
}

impl<'a> Decision<'a> {
    /// The verdict this decision amounts to.
    pub fn verdict(self) -> Verdict<'a> {
        match self {
            Decision::NotGated => Verdict::pass(Outcome::NotGated),
            Decision::Judged(verdict) => verdict,
        }
    }
}

#[inline(always)]
pub fn decide<'a, S: GateState>(state: &S, packet: &Packet<'a>) -> Decision<'a> {
    match plain(packet, state) {
        Plain::NotGated => Decision::NotGated,
        Plain::Syn(syn, config) => {
            Decision::Judged(judge(state, Parsed::Syn(syn), packet, Some(config)))
        }
        Plain::Walk => Decision::Judged(judge(state, parse(packet, state), packet, None)),
    }
}

/// Order of judgement for a gated packet: destination scope, ban, fresh
/// grant, exempt network, then the deny mode; a SYN to a login port (not
/// gated) is judged by its ban alone. Everything else passes. The grant
/// comes before the exempt networks because it is the cheaper of the two
/// lookups for the SYNs that pass (see BENCHMARKS.md); a source both
/// granted and exempt counts as granted. A banned source is denied even
/// with a grant, unless it is exempt (exempt networks are never banned: a
/// network exempted after the ban was made is let through). `settings`
/// are the settings if the caller has read them already (they are read
/// once per packet).
#[inline(always)]
pub fn judge<'a, 's, S: GateState>(
    state: &'s S,
    parsed: Parsed<'a>,
    packet: &Packet<'a>,
    settings: Option<&'s Settings>,
) -> Verdict<'a> {
    let (src, dst, dst_port, reason, whole) = match parsed {
        Parsed::NotGated => return Verdict::pass(Outcome::NotGated),
        Parsed::Malformed => return Verdict::pass(Outcome::Malformed),
        Parsed::Syn(syn) => (syn.src, syn.dst, Some(syn.dst_port), None, Some(syn)),
        Parsed::Partial(p) => (p.src, p.dst, p.dst_port, Some(p.reason.counter()), None),
        // A packet whose headers could not be pulled in (TC) or walked
        // (VLAN tags) is judged without a source.
        Parsed::NeedsPull | Parsed::Unwalkable => return judge_unwalkable(state),
    };
    let Some(config) = settings.or_else(|| state.settings()) else {
        return Verdict::pass(Outcome::NotGated);
    };
    let gated = match dst_port {
        Some(port) => config.gates_port(port),
        None => config.port_count != 0,
    } && (config.dest_scoped == 0 || state.in_scope(dst));
    // The login ports are guarded against banned sources wherever they
    // go: the destination scope keeps an MX open to other mail servers,
    // not to a guesser.
    let login = !gated && dst_port.is_some_and(|port| config.bans_port(port));
    if !gated && !login {
        return Verdict::pass(Outcome::NotGated);
    }
    let exempt = || exempt_in_use(config, src) && state.is_exempt(src);
    let banned = bans_in_use(config, src) && state.is_banned(src, config) && !exempt();
    // One way to the deny mode for banned and unadmitted SYNs alike: the
    // verifier walks the reset reply's paths once, not once per reason.
    if !banned {
        if !gated {
            return Verdict::pass(Outcome::NotGated);
        }
        let admitted = |outcome| Verdict {
            action: Action::Pass,
            outcome,
            reason,
            denial: None,
        };
        if state.has_fresh_grant(src, config) {
            return admitted(Outcome::Granted);
        }
        if exempt() {
            return admitted(Outcome::Exempt);
        }
    }
    deny(state, config, packet, src, dst_port, reason, whole, banned)
}

/// The deny mode's verdict on a gated SYN, or a banned one (counted
/// `denied_banned` whether dropped or answered).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn deny<'a, S: GateState>(
    state: &S,
    config: &Settings,
    packet: &Packet<'a>,
    src: AddrRef<'a>,
    dst_port: Option<u16>,
    reason: Option<Outcome>,
    whole: Option<Syn<'a>>,
    banned: bool,
) -> Verdict<'a> {
    let denial = Some(Denial {
        src: Some(src),
        dst_port: dst_port.unwrap_or(0),
        log_rate_per_sec: config.log_rate_per_sec,
        log_burst: config.log_burst,
        tick_ns: config.tick_ns,
    });
    let (dropped, answered) = if banned {
        (Outcome::DeniedBanned, Outcome::DeniedBanned)
    } else {
        (Outcome::DeniedDrop, Outcome::DeniedReset)
    };
    let (action, outcome, reason) = match DenyMode::from_u32(config.deny_mode) {
        Some(DenyMode::Monitor) => (Action::Pass, Outcome::Monitored, reason),
        Some(DenyMode::Reset) => match whole {
            Some(syn) if answerable(state, &syn, packet) => {
                (Action::Reset(Reply::of(&syn)), answered, None)
            }
            Some(_) => (Action::Drop, dropped, Some(Outcome::ResetSkipped)),
            // A fragment cannot be answered: there is no whole segment.
            None => (Action::Drop, dropped, reason),
        },
        _ => (Action::Drop, dropped, reason),
    };
    Verdict {
        action,
        outcome,
        reason,
        denial,
    }
}

/// The outcome of a reset verdict whose reply could not be sent after
/// all: dropped instead, counted so (beside `reset_skipped`).
#[inline(always)]
pub fn unsent_reset(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::DeniedBanned => Outcome::DeniedBanned,
        _ => Outcome::DeniedDrop,
    }
}

/// False when no ban of `src`'s family is to be looked for, so the
/// lookup can be skipped.
#[inline(always)]
pub fn bans_in_use(config: &Settings, src: AddrRef<'_>) -> bool {
    let bit = match src {
        AddrRef::V4(_) => BANS_V4_IN_USE,
        AddrRef::V6(_) => BANS_V6_IN_USE,
    };
    config.bans_in_use & bit != 0
}

/// False when the exempt trie of `src`'s family is empty, so the lookup
/// can be skipped.
#[inline(always)]
fn exempt_in_use(config: &Settings, src: AddrRef<'_>) -> bool {
    let bit = match src {
        AddrRef::V4(_) => EXEMPT_V4_IN_USE,
        AddrRef::V6(_) => EXEMPT_V6_IN_USE,
    };
    config.exempt_in_use & bit != 0
}

/// A packet whose source is unknown: denied wherever it goes (monitor mode
/// passes and counts it). No mail client sends one.
#[inline(always)]
fn judge_unwalkable<'a, S: GateState>(state: &S) -> Verdict<'a> {
    let Some(config) = state.settings().filter(|c| c.port_count != 0) else {
        return Verdict::pass(Outcome::NotGated);
    };
    let denial = Some(Denial {
        src: None,
        dst_port: 0,
        log_rate_per_sec: config.log_rate_per_sec,
        log_burst: config.log_burst,
        tick_ns: config.tick_ns,
    });
    if config.deny_mode == DenyMode::Monitor as u32 {
        return Verdict {
            action: Action::Pass,
            outcome: Outcome::Monitored,
            reason: None,
            denial,
        };
    }
    Verdict {
        action: Action::Drop,
        outcome: Outcome::DeniedUnwalkable,
        reason: None,
        denial,
    }
}

/// Reset mode answers only what the host's own stack would: an untagged
/// SYN sent to the receiving interface's own MAC and one of the host's unicast
/// addresses (never loopback), from a unicast MAC and a unicast source
/// address that is not the host's own (the stack drops the rest before
/// TCP sees it; a reply to them would spoof a neighbour, hit a group or
/// talk to itself).
#[inline(always)]
fn answerable<S: GateState>(state: &S, syn: &Syn<'_>, packet: &Packet<'_>) -> bool {
    let Ok(eth) = packet.view::<EthHdr>(0) else {
        return false;
    };
    let group_mac = |mac: &[u8; 6]| mac[0] & 1 != 0;
    // Untagged only: the reply would keep the SYN's VLAN tags, and the
    // host answers in a VLAN only if it has a device there (which the
    // program cannot see); a gate on the VLAN device answers there.
    syn.l3_offset == ETH_HDR_LEN
        && !group_mac(&eth.src)
        && !group_mac(&eth.dst)
        && state.is_own_mac(&eth.dst)
        && unicast_source(syn.src)
        && !loopback(syn.dst)
        && state.is_local(syn.dst)
        && !state.is_local(syn.src)
}

/// 127/8 or ::1: the stack drops a packet from the wire sent there.
#[inline(always)]
fn loopback(addr: AddrRef<'_>) -> bool {
    match addr {
        AddrRef::V4(a) => a[0] == 127,
        AddrRef::V6(a) => {
            a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] == 0
                && a[8] | a[9] | a[10] | a[11] | a[12] | a[13] | a[14] == 0
                && a[15] == 1
        }
    }
}

/// Not a source the stack accepts from the wire: unspecified, loopback,
/// multicast, broadcast or class E (IPv4); unspecified, loopback,
/// multicast or IPv4-mapped (IPv6, ip6_rcv_core).
#[inline(always)]
fn unicast_source(src: AddrRef<'_>) -> bool {
    match src {
        AddrRef::V4(a) => a[0] != 0 && a[0] != 127 && a[0] < 224,
        AddrRef::V6(a) => {
            let head_zero = a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] == 0;
            let mid_zero = a[8] | a[9] | a[10] | a[11] == 0;
            let mapped = head_zero && a[8] | a[9] == 0 && a[10] == 0xff && a[11] == 0xff;
            let low_is_0_or_1 = a[12] | a[13] | a[14] == 0 && a[15] <= 1;
            a[0] != 0xff && !mapped && !(head_zero && mid_zero && low_is_0_or_1)
        }
    }
}
