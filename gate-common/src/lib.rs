//! Types shared by the kernel program (`gate-ebpf`) and user space
//! (`gate-user`). Every map key and value is `#[repr(C)]` with explicit
//! padding fields, so the layout the verifier sees and the bytes user space
//! writes are the same and `bpftool map dump` prints named fields.
#![cfg_attr(not(test), no_std)]

/// Names of the maps, as declared in the eBPF object and pinned in the pin
/// directory.
pub mod map_names {
    pub const GRANTS_V4: &str = "grants_v4";
    pub const GRANTS_V6: &str = "grants_v6";
    pub const EXEMPT_V4: &str = "exempt_v4";
    pub const EXEMPT_V6: &str = "exempt_v6";
    pub const SETTINGS: &str = "settings";
    pub const STATS: &str = "stats";
    /// Retired: the denial log's token buckets, a per-CPU array of their
    /// own until the bucket moved into the counters' value (one lookup
    /// fewer on the flood path). A gate of an older build still has it
    /// pinned; `attach` upgrades such a gate and unpins it.
    pub const LOG_BUCKETS: &str = "log_buckets";
    /// aya-log's ring buffer, pinned under this name so that a daemon that
    /// adopts an existing attachment can read the program's log.
    pub const AYA_LOGS: &str = "AYA_LOGS";
    /// The host's own unicast addresses: reset mode answers only SYNs sent
    /// to one of them.
    pub const LOCAL_V4: &str = "local_v4";
    pub const LOCAL_V6: &str = "local_v6";
    /// Destination networks the gate is scoped to (`--dest`), used only
    /// when `Settings::dest_scoped` is set.
    pub const SCOPE_V4: &str = "scope_v4";
    pub const SCOPE_V6: &str = "scope_v6";
    /// The MAC of each of the host's interfaces, by ifindex: reset mode
    /// answers only frames sent to the receiving interface's own MAC.
    pub const IFACE_MACS: &str = "iface_macs";
    /// Banned sources: password guessers shut out of the login and gated
    /// ports until the ban's end. IPv4 by address, IPv6 by network (the
    /// address cut to `Settings::ban_mask_v6`).
    pub const BANS_V4: &str = "bans_v4";
    pub const BANS_V6: &str = "bans_v6";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const XDP: &str = "smtp_gate_xdp";
    pub const TC: &str = "smtp_gate_tc";
    /// An XDP program that passes everything (benchmark baseline).
    pub const XDP_PASS: &str = "smtp_gate_xdp_pass";
    /// A TC classifier that passes everything (benchmark baseline).
    pub const TC_PASS: &str = "smtp_gate_tc_pass";
}

/// A dual-stack socket reports IPv4 peers as `::ffff:a.b.c.d`; the gate
/// judges them by their IPv4 address, so every address is turned into that
/// form before it is granted, revoked or looked up.
pub fn normalize_addr(addr: core::net::IpAddr) -> core::net::IpAddr {
    use core::net::IpAddr;
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Default capacity of each grants map (IPv4 and IPv6 separately).
pub const DEFAULT_GRANT_CAPACITY: u32 = 262_144;
/// Capacity of each exempt LPM trie.
pub const EXEMPT_CAPACITY: u32 = 4096;
/// Capacity of each destination-scope LPM trie.
pub const SCOPE_CAPACITY: u32 = 1024;
/// Capacity of each local-address map.
pub const LOCAL_CAPACITY: u32 = 4096;
/// Capacity of the interface MAC map.
pub const IFACE_CAPACITY: u32 = 1024;
/// How many destination ports the gate can watch at once.
pub const MAX_PORTS: usize = 8;
/// Capacity of each ban map (IPv4, IPv6): an LRU map, so a flood of bans
/// evicts the bans used longest ago, never fails.
pub const BAN_CAPACITY: u32 = 65_536;
/// Default grant window: 15 minutes.
pub const DEFAULT_WINDOW_NS: u64 = 900 * 1_000_000_000;

/// Key of `grants_v4`: an IPv4 source address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKeyV4 {
    pub addr: [u8; 4],
}

/// Key of `grants_v6`: an IPv6 source address in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrantKeyV6 {
    pub addr: [u8; 16],
}

/// Value of both grants maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// When the grant was made, on the gate's clock: the kernel's jiffies
    /// times the length of a tick (`Settings::tick_ns`), in nanoseconds.
    /// It advances a tick at a time and, like CLOCK_MONOTONIC, not while
    /// the host is suspended.
    pub granted_at_ns: u64,
    /// How long this grant lasts; 0 means "the window in `settings`", so that
    /// changing the window applies to grants already written.
    pub lifetime_ns: u64,
}

impl Grant {
    /// True if the grant is younger than its lifetime at `now_ns`. A stamp in
    /// the future (written by a confused client) counts as expired rather
    /// than as an everlasting grant.
    #[inline(always)]
    pub fn is_fresh(&self, now_ns: u64, window_ns: u64) -> bool {
        let lifetime = if self.lifetime_ns == 0 {
            window_ns
        } else {
            self.lifetime_ns
        };
        now_ns >= self.granted_at_ns && now_ns - self.granted_at_ns < lifetime
    }
}

/// Value of both ban maps, keyed by a `GrantKeyV4` (the address) or a
/// `GrantKeyV6` (the address cut to the ban prefix). An ended ban stays in
/// the map with its count, so that the next one lasts twice as long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ban {
    /// When the ban began, on the gate's clock (see `Grant`).
    pub banned_at_ns: u64,
    /// When it ends, on the gate's clock: banned while the clock is below.
    pub until_ns: u64,
    /// How many bans this source has had in a row (1 for the first); each
    /// lasts twice as long as the one before, up to the longest ban.
    pub count: u32,
    /// Explicit padding, always zero.
    pub reserved: u32,
}

impl Ban {
    /// True while the ban lasts at `now_ns`.
    #[inline(always)]
    pub fn is_active(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns
    }
}

/// Value of the local-address maps (keyed by the address octets).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub ifindex: u32,
}

/// Value of `iface_macs` (keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceMac {
    pub mac: [u8; 6],
    /// Explicit padding, always zero.
    pub reserved: [u8; 2],
}

/// Value of the exempt LPM tries (the key is aya's `Key<[u8; 4|16]>`).
/// Kept as a struct rather than a bare byte so the pinned map dumps with a
/// field name and can grow without a layout change.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exempt {
    pub enabled: u32,
}

/// What the program does with a gated SYN that has neither exemption nor
/// fresh grant.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum DenyMode {
    /// Drop the SYN; the client retransmits until it times out.
    Drop = 0,
    /// Answer with a TCP RST+ACK so the client fails at once.
    Reset = 1,
    /// Count what would be denied but let everything pass.
    Monitor = 2,
}

impl DenyMode {
    pub const fn from_u32(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Drop),
            1 => Some(Self::Reset),
            2 => Some(Self::Monitor),
            _ => None,
        }
    }
}

/// The one entry of the `settings` array. The program reads it on every
/// gated packet, so changing it takes effect without a reload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Grants younger than this are fresh.
    pub window_ns: u64,
    /// Destination ports that are gated, host byte order; the first
    /// `port_count` entries are used.
    pub ports: [u16; MAX_PORTS],
    pub port_count: u32,
    /// A `DenyMode` as u32.
    pub deny_mode: u32,
    /// Denial log lines allowed per second per CPU (0: no log).
    pub log_rate_per_sec: u32,
    /// Burst size of the log token bucket.
    pub log_burst: u32,
    /// Non-zero: only SYNs to a destination in the scope tries are gated
    /// (`--dest`); zero: every destination is.
    pub dest_scoped: u32,
    /// Nanoseconds per jiffy (the kernel's tick, `TICK_NSEC`): the gate's
    /// clock is jiffies times this. Zero (a gate whose user space never
    /// wrote it) makes no grant fresh.
    pub tick_ns: u32,
    /// `EXEMPT_V4_IN_USE` and `EXEMPT_V6_IN_USE`: which exempt trie has
    /// networks. The program looks only into those; a bit set over an
    /// empty trie costs a lookup, a bit missing over a full one exempts
    /// nothing (fails closed), so user space writes the bits after each
    /// change of the tries: set after the first network went in, cleared
    /// after the last one went out.
    pub exempt_in_use: u32,
    /// Explicit padding, always zero.
    pub reserved: u32,
    /// Destination ports where only bans are checked (the login ports:
    /// POP3, IMAP), host byte order; the first `ban_port_count` are used.
    /// A banned source is denied at these and at the gated ports.
    pub ban_ports: [u16; MAX_PORTS],
    pub ban_port_count: u32,
    /// `BANS_V4_IN_USE` and `BANS_V6_IN_USE`: which ban map the program
    /// looks into. Set by whoever writes a ban (and by a daemon with bans
    /// on, from its start); a family without the bit costs no lookup.
    pub bans_in_use: u32,
    /// The network an IPv6 ban covers, as a mask over the address's
    /// octets (a /64 by default): `bans_v6` is keyed by the masked source.
    pub ban_mask_v6: [u8; 16],
}

/// Bit of `Settings::bans_in_use`: `bans_v4` is looked into.
pub const BANS_V4_IN_USE: u32 = 1;
/// Bit of `Settings::bans_in_use`: `bans_v6` is looked into.
pub const BANS_V6_IN_USE: u32 = 2;

/// The mask of an IPv6 network of `prefix` bits (more than 128 counts as
/// 128).
pub const fn ipv6_mask(prefix: u32) -> [u8; 16] {
    let bits: u128 = if prefix == 0 {
        0
    } else if prefix >= 128 {
        u128::MAX
    } else {
        u128::MAX << (128 - prefix)
    };
    bits.to_be_bytes()
}

/// The length of the prefix `mask` stands for: its leading one bits.
pub const fn ipv6_mask_prefix(mask: &[u8; 16]) -> u32 {
    u128::from_be_bytes(*mask).leading_ones()
}

/// Bit of `Settings::exempt_in_use`: `exempt_v4` has networks.
pub const EXEMPT_V4_IN_USE: u32 = 1;
/// Bit of `Settings::exempt_in_use`: `exempt_v6` has networks.
pub const EXEMPT_V6_IN_USE: u32 = 2;

impl Settings {
    /// Settings of a gate that has never been configured: nothing is gated.
    /// A zeroed map entry means the same, so a half-set-up gate passes all.
    pub const UNCONFIGURED: Self = Self {
        window_ns: 0,
        ports: [0; MAX_PORTS],
        port_count: 0,
        deny_mode: DenyMode::Drop as u32,
        log_rate_per_sec: 0,
        log_burst: 0,
        dest_scoped: 0,
        tick_ns: 0,
        exempt_in_use: 0,
        reserved: 0,
        ban_ports: [0; MAX_PORTS],
        ban_port_count: 0,
        bans_in_use: 0,
        ban_mask_v6: [0; 16],
    };

    /// Looks at the first `port_count` slots only, and stops there: with
    /// the usual one or two ports, a SYN to another port costs as many
    /// comparisons.
    #[inline(always)]
    pub fn gates_port(&self, port: u16) -> bool {
        listed(&self.ports, self.port_count, port)
    }

    /// True if `port` is one of the login ports, where bans are checked
    /// (the gated ports check them too).
    #[inline(always)]
    pub fn bans_port(&self, port: u16) -> bool {
        listed(&self.ban_ports, self.ban_port_count, port)
    }
}

/// True if `port` is among the first `count` of `ports`.
#[inline(always)]
fn listed(ports: &[u16; MAX_PORTS], count: u32, port: u16) -> bool {
    let count = count as usize;
    let mut i = 0;
    while i < MAX_PORTS && i < count {
        if ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// The one per-CPU value of the `stats` map: a counter per `Outcome`
/// slot and the denial log's token bucket, side by side in one per-CPU
/// allocation of two cache lines, so that a packet's outcome, its reason
/// and its log line take one map lookup. The bucket lies where the
/// counters of the earlier layout had spare slots (always zero there): the
/// value kept its size, and a pinned `stats` map of that layout is kept
/// with its counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub slots: [u64; STATS_SLOTS as usize],
    pub log: LogBucket,
}

/// Per-CPU token bucket that limits denial log lines (in `Counters`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBucket {
    /// Tokens in units of 1/1000 of a line, so refill needs no division by
    /// a run-time value per packet.
    pub milli_tokens: u64,
    /// On the gate's clock (see `Grant`).
    pub refilled_at_ns: u64,
    /// Lines suppressed since the last line that was written.
    pub suppressed: u64,
}

/// Indices into the per-CPU `stats` array. Every packet moves exactly one
/// of the outcomes (0 to 7, and 11); a packet judged without a whole SYN,
/// or a reset that was not sent, also moves one of the reasons (8 to 10).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Provably not a SYN to a gated port (other traffic, non-TCP, later
    /// fragments, established sessions).
    NotGated = 0,
    /// Gated SYN from an exempt network.
    Exempt = 1,
    /// Gated SYN with a fresh grant.
    Granted = 2,
    /// Gated SYN dropped.
    DeniedDrop = 3,
    /// Gated SYN answered with a RST.
    DeniedReset = 4,
    /// Gated SYN that would have been denied, passed in monitor mode.
    Monitored = 5,
    /// Packet the Linux stack discards itself (headers cut short or
    /// impossible); passed untouched.
    Malformed = 6,
    /// Headers too deep to find the source (more VLAN tags than the walk):
    /// dropped, since a SYN may hide behind them.
    DeniedUnwalkable = 7,
    /// Reason: a first fragment (IPv4 or IPv6) whose TCP header or
    /// extension header chain continues in a later fragment, judged by
    /// what it shows as a SYN to a gated port.
    JudgedFragment = 8,
    /// Reason: an IPv6 extension header chain longer than the walk, judged
    /// by its source as a SYN to a gated port.
    JudgedUnwalkable = 9,
    /// Reason: reset mode could not answer (the SYN was not sent to a
    /// unicast address of this host from a unicast MAC, or the reply could
    /// not be built): dropped instead.
    ResetSkipped = 10,
    /// SYN to a gated or a login port from a banned source (a password
    /// guesser): dropped, or answered with a RST in reset mode. An outcome
    /// placed after the reasons, in a slot that was spare.
    DeniedBanned = 11,
}

/// Counter slots of the `stats` value: room for counters added later
/// without changing the pinned map's size (16 u64 words with the log
/// bucket's three).
pub const STATS_SLOTS: u32 = 13;

impl Outcome {
    pub const COUNT: u32 = 12;
    pub const ALL: [Outcome; Self::COUNT as usize] = [
        Self::NotGated,
        Self::Exempt,
        Self::Granted,
        Self::DeniedDrop,
        Self::DeniedReset,
        Self::Monitored,
        Self::Malformed,
        Self::DeniedUnwalkable,
        Self::JudgedFragment,
        Self::JudgedUnwalkable,
        Self::ResetSkipped,
        Self::DeniedBanned,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::NotGated => "not_gated",
            Self::Exempt => "exempt",
            Self::Granted => "granted",
            Self::DeniedDrop => "denied_drop",
            Self::DeniedReset => "denied_reset",
            Self::Monitored => "monitored",
            Self::Malformed => "malformed",
            Self::DeniedUnwalkable => "denied_unwalkable",
            Self::JudgedFragment => "judged_fragment",
            Self::JudgedUnwalkable => "judged_unwalkable",
            Self::ResetSkipped => "reset_skipped",
            Self::DeniedBanned => "denied_banned",
        }
    }

    /// True for the reasons, which count beside an outcome.
    pub const fn is_reason(self) -> bool {
        matches!(
            self,
            Self::JudgedFragment | Self::JudgedUnwalkable | Self::ResetSkipped
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and have no
    // implicit padding (checked by the layout tests below).
    unsafe impl aya::Pod for GrantKeyV4 {}
    unsafe impl aya::Pod for GrantKeyV6 {}
    unsafe impl aya::Pod for Grant {}
    unsafe impl aya::Pod for Ban {}
    unsafe impl aya::Pod for Exempt {}
    unsafe impl aya::Pod for Local {}
    unsafe impl aya::Pod for IfaceMac {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for LogBucket {}
    unsafe impl aya::Pod for Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    /// The sum of the field sizes equals the struct size: no hidden padding
    /// the kernel could see as uninitialised bytes.
    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<GrantKeyV4>(), 4);
        assert_eq!(size_of::<GrantKeyV6>(), 16);
        assert_eq!(size_of::<Grant>(), 8 + 8);
        assert_eq!(size_of::<Exempt>(), 4);
        assert_eq!(
            size_of::<Settings>(),
            8 + 2 * MAX_PORTS + 8 * 4 + 2 * MAX_PORTS + 2 * 4 + 16
        );
        assert_eq!(size_of::<Settings>() % 8, 0);
        assert_eq!(size_of::<Ban>(), 8 + 8 + 4 + 4);
        assert_eq!(align_of::<Ban>(), 8);
        assert_eq!(size_of::<Counters>(), 8 * STATS_SLOTS as usize + 3 * 8);
        // The size of the earlier layout's 16 counters: its pinned map
        // stays in use.
        assert_eq!(size_of::<Counters>(), 128);
        assert_eq!(size_of::<Local>(), 4);
        assert_eq!(size_of::<IfaceMac>(), 8);
        assert_eq!(size_of::<LogBucket>(), 3 * 8);
        assert_eq!(align_of::<Settings>(), 8);
        assert_eq!(align_of::<Grant>(), 8);
    }

    #[test]
    fn grant_freshness() {
        let window = 10;
        let g = Grant {
            granted_at_ns: 100,
            lifetime_ns: 0,
        };
        assert!(g.is_fresh(100, window));
        assert!(g.is_fresh(109, window));
        assert!(!g.is_fresh(110, window));
        assert!(
            !g.is_fresh(99, window),
            "a stamp in the future is not fresh"
        );
        let long = Grant {
            granted_at_ns: 100,
            lifetime_ns: 50,
        };
        assert!(long.is_fresh(149, window));
        assert!(!long.is_fresh(150, window));
    }

    #[test]
    fn ports_only_count_up_to_port_count() {
        let mut s = Settings::UNCONFIGURED;
        assert!(!s.gates_port(0), "unconfigured gate gates nothing");
        s.ports[0] = 25;
        s.ports[1] = 587;
        s.port_count = 1;
        assert!(s.gates_port(25));
        assert!(!s.gates_port(587));
        s.port_count = 2;
        assert!(s.gates_port(587));
    }

    /// Every one of the eight slots is looked at (a planted bug that read
    /// only the first two passed the whole suite before this test).
    #[test]
    fn every_port_slot_is_gated() {
        let mut s = Settings::UNCONFIGURED;
        let ports: [u16; MAX_PORTS] = [25, 26, 465, 587, 2525, 10025, 10026, 65535];
        s.ports = ports;
        s.port_count = MAX_PORTS as u32;
        for port in ports {
            assert!(s.gates_port(port), "slot of port {port}");
        }
        for other in [0, 24, 27, 110, 588, 65534] {
            assert!(!s.gates_port(other), "port {other} is not gated");
        }
        s.port_count = 7;
        assert!(!s.gates_port(65535), "the eighth slot is not counted");
        assert!(s.gates_port(10026));
    }

    /// A corrupt port count past the slots (user space never writes one)
    /// is read as all eight slots, never past them.
    #[test]
    fn a_port_count_past_the_slots_reads_eight() {
        let mut s = Settings::UNCONFIGURED;
        s.ports = [1, 2, 3, 4, 5, 6, 7, 8];
        s.port_count = 9;
        assert!(s.gates_port(8));
        assert!(!s.gates_port(9));
    }

    #[test]
    fn login_ports_are_their_own_list() {
        let mut s = Settings::UNCONFIGURED;
        s.ports[0] = 25;
        s.port_count = 1;
        s.ban_ports[..4].copy_from_slice(&[110, 995, 143, 993]);
        s.ban_port_count = 3;
        assert!(s.bans_port(110) && s.bans_port(143));
        assert!(!s.bans_port(993), "past ban_port_count");
        assert!(!s.bans_port(25), "a gated port is not a login port");
        assert!(!s.gates_port(110), "a login port is not gated");
    }

    #[test]
    fn a_ban_lasts_until_its_end() {
        let ban = Ban {
            banned_at_ns: 100,
            until_ns: 200,
            count: 1,
            reserved: 0,
        };
        assert!(ban.is_active(100) && ban.is_active(199));
        assert!(!ban.is_active(200) && !ban.is_active(u64::MAX));
    }

    #[test]
    fn ipv6_masks_and_their_prefixes() {
        assert_eq!(ipv6_mask(0), [0; 16]);
        assert_eq!(ipv6_mask(128), [0xff; 16]);
        assert_eq!(ipv6_mask(200), [0xff; 16]);
        let m64 = ipv6_mask(64);
        assert_eq!(&m64[..8], &[0xff; 8]);
        assert_eq!(&m64[8..], &[0; 8]);
        assert_eq!(ipv6_mask(12)[..2], [0xff, 0xf0]);
        for prefix in 0..=128 {
            assert_eq!(ipv6_mask_prefix(&ipv6_mask(prefix)), prefix);
        }
    }

    #[test]
    fn the_default_window_is_fifteen_minutes() {
        assert_eq!(DEFAULT_WINDOW_NS, 15 * 60 * 1_000_000_000);
    }

    #[test]
    fn deny_modes_round_trip_and_others_are_none() {
        for mode in [DenyMode::Drop, DenyMode::Reset, DenyMode::Monitor] {
            assert_eq!(DenyMode::from_u32(mode as u32), Some(mode));
        }
        assert_eq!(DenyMode::from_u32(3), None);
        assert_eq!(DenyMode::from_u32(u32::MAX), None);
    }

    /// The names are what `stats --json` and the metrics print: fixed.
    #[test]
    fn outcome_names_and_reasons() {
        let names: [&str; Outcome::COUNT as usize] = [
            "not_gated",
            "exempt",
            "granted",
            "denied_drop",
            "denied_reset",
            "monitored",
            "malformed",
            "denied_unwalkable",
            "judged_fragment",
            "judged_unwalkable",
            "reset_skipped",
            "denied_banned",
        ];
        for (outcome, name) in Outcome::ALL.iter().zip(names) {
            assert_eq!(outcome.name(), name);
            let reason = matches!(
                outcome,
                Outcome::JudgedFragment | Outcome::JudgedUnwalkable | Outcome::ResetSkipped
            );
            assert_eq!(outcome.is_reason(), reason, "{name}");
        }
    }

    #[test]
    fn outcome_indices_are_dense() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        const { assert!(Outcome::COUNT <= STATS_SLOTS) };
    }
}
