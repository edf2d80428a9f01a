//! The packet parser and verdict of gate-packet, run on the host: the same
//! code the kernel program is compiled from, with the gate's state in
//! plain tables. No root needed.
//!
//! The kernel program is checked against the same shapes by the verdict
//! table (verdicts.rs); these tests add what only the host can do cheaply:
//! every readable-prefix layout of a frame, a seeded fuzz over hundreds of
//! thousands of mutated frames, and that the plain shapes' shortcut
//! (`plain`) decides everything it decides exactly as the walk does.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use gate_common::{
    DenyMode, Outcome, Settings, BANS_V4_IN_USE, BANS_V6_IN_USE, EXEMPT_V4_IN_USE,
    EXEMPT_V6_IN_USE, MAX_PORTS,
};
use gate_packet::{
    decide, judge, parse, plain, Action, AddrRef, GateState, Packet, Parsed, Plain, Verdict,
    MAX_WALK,
};
use testkit::packets::{
    tcp_flags::{ACK, FIN, RST, SYN},
    Ipv6Ext, PacketBuilder, TcpFrame, VlanTag, DEFAULT_DST_MAC,
};

const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 25);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);
const STRANGER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
const GRANTED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The login port of the tables' settings, where only bans are checked.
const POP3: u16 = 110;

/// The tables with the strangers (and the granted address) banned.
fn banning(mode: DenyMode) -> Tables {
    let mut state = tables(mode);
    state.settings.bans_in_use = BANS_V4_IN_USE | BANS_V6_IN_USE;
    state.banned.extend([
        IpAddr::from(STRANGER4),
        IpAddr::from(STRANGER6),
        IpAddr::from(GRANTED4),
    ]);
    state
}

/// The gate's state as plain tables: exact-match exempt, granted and
/// banned addresses (prefix matching is the kernel's, tested there).
struct Tables {
    settings: Settings,
    exempt: HashSet<IpAddr>,
    granted: HashSet<IpAddr>,
    banned: HashSet<IpAddr>,
    local: HashSet<IpAddr>,
}

fn ip(addr: AddrRef<'_>) -> IpAddr {
    match addr {
        AddrRef::V4(a) => IpAddr::from(*a),
        AddrRef::V6(a) => IpAddr::from(*a),
    }
}

impl GateState for Tables {
    fn settings(&self) -> Option<&Settings> {
        Some(&self.settings)
    }
    fn is_exempt(&self, src: AddrRef<'_>) -> bool {
        self.exempt.contains(&ip(src))
    }
    fn has_fresh_grant(&self, src: AddrRef<'_>, _config: &Settings) -> bool {
        self.granted.contains(&ip(src))
    }
    fn is_banned(&self, src: AddrRef<'_>, _config: &Settings) -> bool {
        self.banned.contains(&ip(src))
    }
    fn in_scope(&self, _dst: AddrRef<'_>) -> bool {
        true
    }
    fn is_local(&self, dst: AddrRef<'_>) -> bool {
        self.local.contains(&ip(dst))
    }
    fn is_own_mac(&self, mac: &[u8; 6]) -> bool {
        *mac == DEFAULT_DST_MAC
    }
}

fn tables(mode: DenyMode) -> Tables {
    let mut ports = [0u16; MAX_PORTS];
    ports[0] = 25;
    ports[1] = 587;
    let mut ban_ports = [0u16; MAX_PORTS];
    ban_ports[0] = POP3;
    Tables {
        settings: Settings {
            window_ns: 1,
            ports,
            port_count: 2,
            deny_mode: mode as u32,
            exempt_in_use: EXEMPT_V4_IN_USE | EXEMPT_V6_IN_USE,
            ban_ports,
            ban_port_count: 1,
            ..Settings::UNCONFIGURED
        },
        exempt: HashSet::new(),
        granted: [IpAddr::from(GRANTED4)].into_iter().collect(),
        banned: HashSet::new(),
        local: [IpAddr::from(SERVER4), IpAddr::from(SERVER6)]
            .into_iter()
            .collect(),
    }
}

/// What a verdict amounts to, comparable across layouts: the action (0
/// pass, 1 drop, 2 reset), the outcome and the reason counter.
type Summary = (u8, Outcome, Option<Outcome>);

/// The verdict as the kernel program's entries reach it: the plain shapes
/// first, the walk for the rest.
fn entry_verdict<'a>(state: &Tables, packet: &Packet<'a>) -> Verdict<'a> {
    decide(state, packet).verdict()
}

/// The verdict by the walk alone.
fn walk_verdict<'a>(state: &Tables, packet: &Packet<'a>) -> Verdict<'a> {
    judge(state, parse(packet, state), packet, None)
}

/// The shortcut changes no verdict: action (the reply included), outcome,
/// reason and denial are the walk's.
fn check_plain_agrees(state: &Tables, frame: &[u8], readable: usize, what: &str) {
    let packet = Packet::from_prefix(&frame[..readable], frame.len());
    assert_eq!(
        entry_verdict(state, &packet),
        walk_verdict(state, &packet),
        "{what}: the plain shortcut and the walk disagree on {readable} of {} octets readable \
         (plain says {:?})\n{frame:02x?}",
        frame.len(),
        plain(&packet, state),
    );
}

fn summary(state: &Tables, frame: &[u8], readable: usize) -> Summary {
    let packet = Packet::from_prefix(&frame[..readable], frame.len());
    let verdict = entry_verdict(state, &packet);
    let action = match verdict.action {
        Action::Pass => 0,
        Action::Drop => 1,
        Action::Reset(_) => 2,
    };
    (action, verdict.outcome, verdict.reason)
}

fn whole(state: &Tables, frame: &[u8]) -> Summary {
    summary(state, frame, frame.len())
}

#[test]
fn the_host_library_judges_like_the_kernel_program() {
    let drop = tables(DenyMode::Drop);
    let syn4 = |src| PacketBuilder::ipv4(src, SERVER4).tcp(40000, 25, SYN);
    let syn6 = |src| PacketBuilder::ipv6(src, SERVER6).tcp(40000, 25, SYN);
    let cases: Vec<(&str, Vec<u8>, Summary)> = vec![
        (
            "IPv4 SYN",
            syn4(STRANGER4).build(),
            (1, Outcome::DeniedDrop, None),
        ),
        (
            "IPv4 SYN granted",
            syn4(GRANTED4).build(),
            (0, Outcome::Granted, None),
        ),
        (
            "IPv6 SYN",
            syn6(STRANGER6).build(),
            (1, Outcome::DeniedDrop, None),
        ),
        (
            "ACK",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 25, ACK)
                .build(),
            (0, Outcome::NotGated, None),
        ),
        (
            "IPv6 first fragment",
            syn6(STRANGER6).ext(Ipv6Ext::first_fragment(1)).build(),
            (1, Outcome::DeniedDrop, Some(Outcome::JudgedFragment)),
        ),
        (
            "three priority tags",
            syn4(STRANGER4)
                .vlan(VlanTag::dot1q(0))
                .vlan(VlanTag::dot1q(0))
                .vlan(VlanTag::dot1q(0))
                .build(),
            (1, Outcome::DeniedDrop, None),
        ),
        (
            "IPv6 payload length 0 with hop-by-hop",
            syn6(STRANGER6)
                .ext(Ipv6Ext::HOP_BY_HOP)
                .ipv6_payload_len(0)
                .build(),
            (1, Outcome::DeniedDrop, None),
        ),
        (
            "IPv6 chain of 9",
            syn6(STRANGER6).exts(vec![Ipv6Ext::DEST_OPTS; 9]).build(),
            (1, Outcome::DeniedDrop, Some(Outcome::JudgedUnwalkable)),
        ),
    ];
    for (name, frame, want) in cases {
        assert_eq!(whole(&drop, &frame), want, "{name}");
    }
    let reset = tables(DenyMode::Reset);
    assert_eq!(
        whole(&reset, &syn4(STRANGER4).build()),
        (2, Outcome::DeniedReset, None),
        "reset mode answers a SYN to a local address"
    );
}

/// The TC contract: with at least min(len, MAX_WALK + 64) octets readable
/// in place (what the TC entry pulls), the verdict is the whole frame's;
/// with fewer, it is the same or `NeedsPull` (never a different verdict).
fn check_layouts(state: &Tables, frame: &[u8]) {
    let want = whole(state, frame);
    let pulled = frame.len().min(MAX_WALK + 64);
    for readable in 0..frame.len() {
        check_plain_agrees(state, frame, readable, "layouts");
        let packet = Packet::from_prefix(&frame[..readable], frame.len());
        let parsed = parse(&packet, state);
        if readable >= pulled {
            assert_eq!(
                summary(state, frame, readable),
                want,
                "{readable} of {} octets readable after the pull",
                frame.len()
            );
        } else if parsed != Parsed::NeedsPull {
            assert_eq!(
                summary(state, frame, readable),
                want,
                "{readable} of {} octets readable: a verdict other than NeedsPull must be final",
                frame.len()
            );
        }
    }
}

#[test]
fn the_verdict_never_depends_on_the_readable_part() {
    let state = tables(DenyMode::Drop);
    let frames = [
        PacketBuilder::ipv4(STRANGER4, SERVER4)
            .tcp(40000, 25, SYN)
            .ipv4_options(&[1; 40])
            .tcp_options(&[1; 40])
            .build(),
        PacketBuilder::ipv6(STRANGER6, SERVER6)
            .exts([
                Ipv6Ext::HOP_BY_HOP,
                Ipv6Ext::DestOpts { len: 30 },
                Ipv6Ext::first_fragment(3),
                Ipv6Ext::AH,
            ])
            .tcp(40000, 25, SYN)
            .build(),
        PacketBuilder::ipv6(STRANGER6, SERVER6)
            .exts([Ipv6Ext::DestOpts { len: 120 }])
            .tcp(40000, 25, ACK)
            .payload(&[9; 300])
            .build(),
        PacketBuilder::ipv4(STRANGER4, SERVER4)
            .vlan(VlanTag::dot1ad(5))
            .vlan(VlanTag::dot1q(0))
            .udp(5, 25)
            .payload(&[3; 40])
            .build(),
    ];
    for frame in frames {
        check_layouts(&state, &frame);
    }
}

/// xorshift64*: a fixed seed gives the same frames on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Settings and tables under which the shortcut must agree with the walk:
/// each deny mode, a gate with no ports, one whose ports do not include
/// the seeds', with the denial log on, and with the stranger exempt.
fn settings_variants() -> Vec<(&'static str, Tables)> {
    let mut out = Vec::new();
    for (name, mode) in [
        ("drop", DenyMode::Drop),
        ("reset", DenyMode::Reset),
        ("monitor", DenyMode::Monitor),
    ] {
        out.push((name, tables(mode)));
    }
    let mut unconfigured = tables(DenyMode::Drop);
    unconfigured.settings.port_count = 0;
    out.push(("no ports", unconfigured));
    let mut other_ports = tables(DenyMode::Drop);
    other_ports.settings.ports[0] = 443;
    other_ports.settings.port_count = 1;
    out.push(("port 443 only", other_ports));
    let mut logging = tables(DenyMode::Reset);
    logging.settings.log_rate_per_sec = 5;
    logging.settings.log_burst = 2;
    logging.settings.tick_ns = 4_000_000;
    out.push(("reset, logging", logging));
    let mut exempt = tables(DenyMode::Drop);
    exempt.exempt.insert(STRANGER4.into());
    exempt.exempt.insert(STRANGER6.into());
    out.push(("stranger exempt", exempt));
    out.push(("stranger banned", banning(DenyMode::Drop)));
    out.push(("stranger banned, reset", banning(DenyMode::Reset)));
    out.push(("stranger banned, monitor", banning(DenyMode::Monitor)));
    let mut unlooked = banning(DenyMode::Drop);
    unlooked.settings.bans_in_use = 0;
    out.push(("bans not looked for", unlooked));
    let mut banned_exempt = banning(DenyMode::Drop);
    banned_exempt.exempt.insert(STRANGER4.into());
    out.push(("stranger banned and exempt", banned_exempt));
    out
}

/// A banned source is denied at the gated ports, granted or not, and at
/// the login ports, counted `denied_banned` (reset mode answers it); other
/// ports pass; an exempt source is never denied for a ban; without the
/// family's bit no ban is looked for. The plain shapes and the walk agree
/// on each.
#[test]
fn banned_sources_are_denied_at_gated_and_login_ports() {
    let syn4 = |src, port| PacketBuilder::ipv4(src, SERVER4).tcp(40000, port, SYN);
    let syn6 = |src, port| PacketBuilder::ipv6(src, SERVER6).tcp(40000, port, SYN);
    let banned = (1, Outcome::DeniedBanned, None);
    let drop = banning(DenyMode::Drop);
    let cases: Vec<(&str, Vec<u8>, Summary)> = vec![
        ("v4 to 25", syn4(STRANGER4, 25).build(), banned),
        ("v4 to 110", syn4(STRANGER4, POP3).build(), banned),
        ("v6 to 25", syn6(STRANGER6, 25).build(), banned),
        ("v6 to 110", syn6(STRANGER6, POP3).build(), banned),
        ("granted but banned", syn4(GRANTED4, 25).build(), banned),
        (
            "v4 to 443",
            syn4(STRANGER4, 443).build(),
            (0, Outcome::NotGated, None),
        ),
        (
            "unbanned to 110",
            syn4(Ipv4Addr::new(203, 0, 113, 8), POP3).build(),
            (0, Outcome::NotGated, None),
        ),
        (
            "ACK to 110",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, POP3, ACK)
                .build(),
            (0, Outcome::NotGated, None),
        ),
        (
            "v6 first fragment to 110",
            syn6(STRANGER6, POP3)
                .ext(Ipv6Ext::first_fragment(1))
                .build(),
            (1, Outcome::DeniedBanned, Some(Outcome::JudgedFragment)),
        ),
    ];
    for (name, frame, want) in &cases {
        assert_eq!(whole(&drop, frame), *want, "{name}");
        check_plain_agrees(&drop, frame, frame.len(), name);
    }
    let reset = banning(DenyMode::Reset);
    assert_eq!(
        whole(&reset, &syn4(STRANGER4, POP3).build()),
        (2, Outcome::DeniedBanned, None),
        "reset mode answers a banned SYN as it answers a denied one"
    );
    let monitor = banning(DenyMode::Monitor);
    assert_eq!(
        whole(&monitor, &syn4(STRANGER4, POP3).build()),
        (0, Outcome::Monitored, None)
    );
    let mut exempt = banning(DenyMode::Drop);
    exempt.exempt.insert(STRANGER4.into());
    assert_eq!(
        whole(&exempt, &syn4(STRANGER4, 25).build()),
        (0, Outcome::Exempt, None),
        "an exempt source is never banned"
    );
    assert_eq!(
        whole(&exempt, &syn4(STRANGER4, POP3).build()),
        (0, Outcome::NotGated, None)
    );
    let mut unlooked = banning(DenyMode::Drop);
    unlooked.settings.bans_in_use = BANS_V6_IN_USE;
    assert_eq!(
        whole(&unlooked, &syn4(STRANGER4, 25).build()),
        (1, Outcome::DeniedDrop, None),
        "no IPv4 ban is looked for without its bit"
    );
    assert_eq!(
        whole(&unlooked, &syn4(STRANGER4, POP3).build()),
        (0, Outcome::NotGated, None)
    );
    assert_eq!(whole(&unlooked, &syn6(STRANGER6, POP3).build()), banned);
}

/// The shapes the shortcut exists for are decided by it, not handed to
/// the walk (which would keep every verdict and silently lose the speed).
#[test]
fn the_plain_shapes_take_the_shortcut() {
    let state = tables(DenyMode::Drop);
    let decided = |frame: &[u8]| {
        let packet = Packet::from_slice(frame);
        match plain(&packet, &state) {
            Plain::NotGated => "not gated",
            Plain::Syn(..) => "syn",
            Plain::Walk => "walk",
        }
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "UDP over IPv4",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .udp(5353, 53)
                .build(),
            "not gated",
        ),
        (
            "UDP over IPv6",
            PacketBuilder::ipv6(STRANGER6, SERVER6)
                .udp(5353, 53)
                .build(),
            "not gated",
        ),
        (
            "ACK with data",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 25, ACK)
                .payload(&[7; 100])
                .build(),
            "not gated",
        ),
        (
            "SYN to port 443",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 443, SYN)
                .build(),
            "not gated",
        ),
        (
            "SYN to port 25 with Linux's options",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 25, SYN)
                .tcp_options(&testkit::packets::LINUX_SYN_OPTIONS)
                .build(),
            "syn",
        ),
        (
            "IPv6 SYN to port 587",
            PacketBuilder::ipv6(STRANGER6, SERVER6)
                .tcp(40000, 587, SYN)
                .build(),
            "syn",
        ),
        (
            "IPv4 options",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 25, SYN)
                .ipv4_options(&[1; 4])
                .build(),
            "walk",
        ),
        (
            "VLAN tag",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .vlan(VlanTag::dot1q(7))
                .tcp(40000, 25, ACK)
                .build(),
            "walk",
        ),
        (
            "IPv6 hop-by-hop",
            PacketBuilder::ipv6(STRANGER6, SERVER6)
                .ext(Ipv6Ext::HOP_BY_HOP)
                .udp(5, 6)
                .build(),
            "walk",
        ),
        (
            "first fragment",
            PacketBuilder::ipv4(STRANGER4, SERVER4)
                .tcp(40000, 25, SYN)
                .ipv4_fragment(0, true)
                .build(),
            "walk",
        ),
    ];
    for (what, frame, want) in cases {
        assert_eq!(decided(&frame), want, "{what}");
        check_plain_agrees(&state, &frame, frame.len(), what);
    }
}

/// Seeds: SYN shapes around the gate's decisions, and the everyday traffic
/// the shortcut decides.
fn seeds() -> Vec<Vec<u8>> {
    let syn4 = || PacketBuilder::ipv4(STRANGER4, SERVER4).tcp(40000, 25, SYN);
    let syn6 = || PacketBuilder::ipv6(STRANGER6, SERVER6).tcp(40000, 25, SYN);
    vec![
        syn4().build(),
        syn4().ipv4_options(&[1; 12]).tcp_options(&[1; 20]).build(),
        syn4().ipv4_fragment(0, true).tcp_options(&[1; 40]).build(),
        syn4().qinq(1, 2).build(),
        syn6().build(),
        syn6()
            .exts([Ipv6Ext::HOP_BY_HOP, Ipv6Ext::first_fragment(1), Ipv6Ext::AH])
            .build(),
        syn6().exts(vec![Ipv6Ext::DEST_OPTS; 7]).build(),
        syn6()
            .vlan(VlanTag::dot1q(0))
            .ext(Ipv6Ext::HOP_BY_HOP)
            .build(),
        PacketBuilder::ipv4(STRANGER4, SERVER4)
            .udp(5353, 53)
            .payload(&[1; 20])
            .build(),
        PacketBuilder::ipv6(STRANGER6, SERVER6)
            .udp(5353, 53)
            .build(),
        PacketBuilder::ipv4(STRANGER4, SERVER4)
            .tcp(40000, 25, ACK)
            .payload(&[2; 30])
            .build(),
        PacketBuilder::ipv4(GRANTED4, SERVER4)
            .tcp(40000, 25, SYN)
            .tcp_options(&testkit::packets::LINUX_SYN_OPTIONS)
            .build(),
        PacketBuilder::ipv4(STRANGER4, SERVER4)
            .tcp(40000, POP3, SYN)
            .build(),
        PacketBuilder::ipv6(STRANGER6, SERVER6)
            .tcp(40000, POP3, SYN)
            .ext(Ipv6Ext::first_fragment(1))
            .build(),
    ]
}

/// Random mutations of the seeds: octets set at random, frames cut or
/// extended. Nothing may panic, every frame keeps the layout contract,
/// and a frame that the tests' own parser reads as a whole SYN to a gated
/// port from a stranger is never passed. (The reference for what else the
/// stack accepts is the stack itself: the differential test.)
#[test]
fn fuzzed_frames_keep_the_contracts() {
    let state = tables(DenyMode::Drop);
    let variants = settings_variants();
    let seeds = seeds();
    let mut rng = Rng(0x5eed_0f9a_7e00);
    let iterations = 200_000;
    let (mut judged, mut whole_syns) = (0usize, 0usize);
    for i in 0..iterations {
        let mut frame = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 => {
                    let cut = rng.below(frame.len() + 1);
                    frame.truncate(cut);
                }
                1 => frame.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                _ if !frame.is_empty() => {
                    // Mostly the first 80 octets, where the headers are.
                    let at = rng.below(frame.len().min(80));
                    frame[at] = rng.next() as u8;
                }
                _ => {}
            }
        }
        for (name, variant) in &variants {
            check_plain_agrees(
                variant,
                &frame,
                frame.len(),
                &format!("fuzz case {i}, {name}"),
            );
        }
        let verdict = whole(&state, &frame);
        if verdict.1 != Outcome::NotGated && verdict.1 != Outcome::Malformed {
            judged += 1;
        }
        // An independent parser (the tests' own) that reads the frame as
        // a whole, unfragmented SYN to a gated port from a stranger: the
        // gate must drop it.
        if let Ok(tcp) = TcpFrame::parse(&frame) {
            let opening = tcp.tcp.flags & (SYN | ACK | RST | FIN) == SYN;
            let gated = [25, 587].contains(&tcp.tcp.dst_port);
            let stranger = !state.granted.contains(&tcp.ip.src());
            if opening && gated && stranger && tcp.tcp.data_offset >= 5 {
                whole_syns += 1;
                assert_eq!(
                    verdict.0, 1,
                    "fuzz case {i}: a whole SYN to a gated port from {} passed: {verdict:?}\n{frame:02x?}",
                    tcp.ip.src()
                );
            }
        }
        if i % 50 == 0 {
            check_layouts(&state, &frame);
        }
    }
    assert!(
        whole_syns > iterations / 20,
        "only {whole_syns} fuzzed frames were whole SYNs by the reference parser"
    );
    assert!(
        judged > iterations / 10,
        "only {judged} of {iterations} fuzzed frames were judged: the fuzz no longer reaches the gate"
    );
}
