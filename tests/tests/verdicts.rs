//! The verdict table of the smtp-gate kernel program, driven through
//! BPF_PROG_TEST_RUN: no interface, no namespace, no attachment.
//!
//! Each test loads its own copy of the object (`load_unpinned`), so tests
//! share no maps and may run in parallel threads. Within a test, rows run
//! one after the other and every row checks the exact change of the
//! per-outcome counters it caused: one in its outcome, zero elsewhere.
//!
//! The tests need root and a kernel with BPF. They fail, loudly, without
//! either: a verdict table that skips itself proves nothing.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::{
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use gate_common::{
    ipv6_mask, program_names, Ban, DenyMode, LogBucket, Outcome, Settings, BANS_V4_IN_USE,
    BANS_V6_IN_USE, MAX_PORTS,
};
use smtp_gate::{
    addr::Cidr,
    gate::{
        local_addrs::{HostAddresses, LocalAddr},
        object, privilege, GateMaps,
    },
};
use testkit::packets::{
    tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN},
    Ipv6Ext, PacketBuilder, ParsedIp, TcpFrame, VlanTag, DEFAULT_DST_MAC, DEFAULT_SRC_MAC,
    ETH_HDR_LEN, ETH_MIN_FRAME_LEN, IPV4_HDR_LEN, IPV4_OPTION_NOP, IPV4_OPTION_ROUTER_ALERT,
    IPV6_HDR_LEN, LINUX_SYN_OPTIONS, TCP_HDR_LEN,
};

// Return codes (include/uapi/linux/bpf.h, include/uapi/linux/pkt_cls.h).
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// TC_ACT_UNSPEC (-1): "no verdict, go on", so tcx runs later programs.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// Grant capacity of the test objects: small, the tests hold a handful.
const CAPACITY: u32 = 1024;

/// The grant window of the test settings. Expired grants are stamped up
/// to twice this long ago, so the host must have been up that long.
const WINDOW: Duration = Duration::from_secs(30);
const SMTP: u16 = 25;
const SUBMISSION: u16 = 587;
/// A port the settings list after `port_count`, so it is not gated.
const SUBMISSIONS: u16 = 465;
const CLIENT_PORT: u16 = 40_000;
const SEQ: u32 = 0x1234_5678;

const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 25);
/// No exemption, no grant: denied.
const STRANGER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const EXEMPT_NET4: &str = "192.0.2.0/24";
const EXEMPT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
/// In the exempt /24 and granted too: the grant is looked up first.
const EXEMPT_AND_GRANTED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 78);
/// Just outside EXEMPT_NET4.
const BESIDE_EXEMPT4: Ipv4Addr = Ipv4Addr::new(192, 0, 3, 77);
/// Granted now, with the window of the settings.
const GRANTED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Granted longer ago than the window.
const EXPIRED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Granted two windows ago with its own lifetime of an hour: fresh.
const OWN_FRESH4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// Granted 10 s ago with its own lifetime of 5 s: expired, though younger
/// than the window.
const OWN_EXPIRED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 4);
/// Stamped an hour in the future: not fresh.
const FUTURE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);

/// A login port of the test settings: only bans are checked there.
const POP3: u16 = 110;
/// Banned for another hour.
const BANNED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// Granted now, and banned: denied.
const GRANTED_BANNED4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// In the exempt /24, and banned (the network was exempted after the
/// ban): exempt networks are never banned.
const EXEMPT_BANNED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
/// Its ban ended a second ago.
const BAN_ENDED4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 67);
/// The network 2001:db8:bad:66::/64 is banned (by another of its
/// addresses); this one is in it.
const BANNED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0x66, 0xa, 0xb, 0xc, 0xd);
const BANNED_NET6_MEMBER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0x66, 0, 0, 0, 1);
/// The /64 beside the banned one.
const BESIDE_BANNED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0x67, 0, 0, 0, 1);
/// The network of this one had a ban that ended.
const BAN_ENDED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0x68, 0, 0, 0, 1);

const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x25);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
const EXEMPT_NET6: &str = "2001:db8:e:1::/64";
const EXEMPT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 1, 0xffff, 0xffff, 0xffff, 0xfffe);
const BESIDE_EXEMPT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xe, 2, 0, 0, 0, 1);
const GRANTED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
const EXPIRED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2);
const OWN_FRESH6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 3);
const OWN_EXPIRED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

/// What the program does with a packet, independent of the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Answer with a RST+ACK out of the same interface.
    Reset,
}

impl Verdict {
    fn code(self, hook: Hook) -> u32 {
        match (hook, self) {
            (Hook::Xdp, Self::Pass) => XDP_PASS,
            (Hook::Xdp, Self::Drop) => XDP_DROP,
            (Hook::Xdp, Self::Reset) => XDP_TX,
            (Hook::Tc, Self::Pass) => TC_ACT_UNSPEC,
            (Hook::Tc, Self::Drop) => TC_ACT_SHOT,
            (Hook::Tc, Self::Reset) => TC_ACT_REDIRECT,
        }
    }
}

fn code_name(hook: Hook, code: u32) -> String {
    let name = match (hook, code) {
        (Hook::Xdp, XDP_DROP) => "XDP_DROP",
        (Hook::Xdp, XDP_PASS) => "XDP_PASS",
        (Hook::Xdp, XDP_TX) => "XDP_TX",
        (Hook::Tc, TC_ACT_UNSPEC) => "TC_ACT_UNSPEC",
        (Hook::Tc, TC_ACT_SHOT) => "TC_ACT_SHOT",
        (Hook::Tc, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
        _ => "unexpected",
    };
    format!("{name} ({code})")
}

type Counters = [u64; Outcome::COUNT as usize];

fn describe_deltas(deltas: &Counters) -> String {
    let moved: Vec<String> = Outcome::ALL
        .iter()
        .filter(|o| deltas[**o as usize] != 0)
        .map(|o| format!("{} +{}", o.name(), deltas[*o as usize]))
        .collect();
    if moved.is_empty() {
        "no counter moved".to_string()
    } else {
        moved.join(", ")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// What one BPF_PROG_TEST_RUN gave back.
struct RunResult {
    code: u32,
    /// The packet as the program left it (`data_out`, `data_size_out` long).
    out: Vec<u8>,
}

/// One loaded copy of the object: both programs and the maps.
struct Gate {
    ebpf: Ebpf,
    maps: GateMaps,
}

impl Gate {
    /// Loads the object and both programs, and writes the host's
    /// addresses and MAC the reset mode answers for. Panics without root
    /// or BPF.
    fn load() -> Self {
        privilege::require(
            "the BPF_PROG_TEST_RUN verdict tests",
            privilege::CHANGE_GATE,
        )
        .expect("these tests must run as root; they do not skip");
        let mut ebpf = object::load_unpinned(CAPACITY)
            .expect("loading the smtp-gate object failed: is BPF available to root here?");
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP)
            .expect("the object has no XDP program")
            .try_into()
            .expect("the XDP program is not of type Xdp");
        xdp.load().expect("the verifier refused the XDP program");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC)
            .expect("the object has no TC program")
            .try_into()
            .expect("the TC program is not of type SchedClassifier");
        tc.load().expect("the verifier refused the TC program");
        let mut maps = GateMaps::from_ebpf(&mut ebpf).expect("taking the maps out of the object");
        maps.local_replace(&host_addresses())
            .expect("writing the host's addresses");
        Self { ebpf, maps }
    }

    /// A gate with the exempt networks and grants every table uses.
    fn with_fixture() -> Self {
        Self::with_fixture_scoped(&[])
    }

    /// The same, with destination scope networks written (the tables'
    /// settings say whether they apply).
    fn with_fixture_scoped(scope: &[&str]) -> Self {
        let mut gate = Self::load();
        let scope: Vec<Cidr> = scope
            .iter()
            .map(|net| net.parse().expect("scope CIDR parses"))
            .collect();
        gate.maps.set_scope(&scope).expect("writing the scope");
        for net in [EXEMPT_NET4, EXEMPT_NET6] {
            let cidr: Cidr = net.parse().expect("fixture CIDR parses");
            gate.maps
                .exempt_add(cidr)
                .expect("adding an exempt network");
        }
        let now = gate.maps.now_ns().expect("reading the gate's clock");
        let ago = |d: Duration| {
            now.checked_sub(d.as_nanos() as u64).expect(
                "the host has been up for less than two grant windows: \
                 cannot stamp expired grants",
            )
        };
        let hour = Duration::from_secs(3600);
        let grants: [(IpAddr, u64, Option<Duration>); 10] = [
            (EXEMPT_AND_GRANTED4.into(), now, None),
            (GRANTED4.into(), now, None),
            (EXPIRED4.into(), ago(WINDOW + Duration::from_secs(5)), None),
            (OWN_FRESH4.into(), ago(2 * WINDOW), Some(hour)),
            (
                OWN_EXPIRED4.into(),
                ago(Duration::from_secs(10)),
                Some(Duration::from_secs(5)),
            ),
            (FUTURE4.into(), now + hour.as_nanos() as u64, None),
            (GRANTED6.into(), now, None),
            (EXPIRED6.into(), ago(WINDOW + Duration::from_secs(5)), None),
            (OWN_FRESH6.into(), ago(2 * WINDOW), Some(hour)),
            (
                OWN_EXPIRED6.into(),
                ago(Duration::from_secs(10)),
                Some(Duration::from_secs(5)),
            ),
        ];
        for (addr, stamp, lifetime) in grants {
            gate.maps
                .grant_at(addr, stamp, lifetime)
                .unwrap_or_else(|e| panic!("granting {addr}: {e:#}"));
        }
        gate.maps
            .grant_at(GRANTED_BANNED4.into(), now, None)
            .expect("granting");
        // The IPv6 bans are keyed by the /64 of the settings' mask, which
        // must be in place when they are written.
        gate.set_settings(&settings(DenyMode::Drop));
        let ban = |until_ns| Ban {
            banned_at_ns: ago(Duration::from_secs(10)),
            until_ns,
            count: 1,
            reserved: 0,
        };
        let lasting = ban(now + hour.as_nanos() as u64);
        let ended = ban(ago(Duration::from_secs(1)));
        let bans: [(IpAddr, Ban); 6] = [
            (BANNED4.into(), lasting),
            (GRANTED_BANNED4.into(), lasting),
            (EXEMPT_BANNED4.into(), lasting),
            (BAN_ENDED4.into(), ended),
            (BANNED6.into(), lasting),
            (BAN_ENDED6.into(), ended),
        ];
        for (addr, ban) in bans {
            gate.maps
                .ban_at(addr, ban)
                .unwrap_or_else(|e| panic!("banning {addr}: {e:#}"));
        }
        gate
    }

    fn stats(&self) -> Counters {
        self.maps.stats().expect("reading the stats map")
    }

    fn set_settings(&mut self, settings: &Settings) {
        self.maps
            .set_settings(settings)
            .expect("writing the settings map");
    }

    /// Runs `packet` through the program of `hook` once.
    fn try_run(&self, hook: Hook, packet: &[u8]) -> Result<RunResult, ProgramError> {
        // Room for any reply: the program never grows a packet.
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let result = match hook {
            Hook::Xdp => {
                let p: &Xdp = self
                    .ebpf
                    .program(program_names::XDP)
                    .expect("the object has no XDP program")
                    .try_into()
                    .expect("the XDP program is not of type Xdp");
                p.test_run(opts)?
            }
            Hook::Tc => {
                let p: &SchedClassifier = self
                    .ebpf
                    .program(program_names::TC)
                    .expect("the object has no TC program")
                    .try_into()
                    .expect("the TC program is not of type SchedClassifier");
                p.test_run(opts)?
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok(RunResult {
            code: result.return_value,
            out,
        })
    }

    /// Runs `row` and checks its verdict, its counter and, for a pass, that
    /// the packet is untouched, for a reset, the reply.
    fn check(&mut self, hook: Hook, row: &Row) {
        if hook == Hook::Tc && row.tc_unanswered {
            let unanswered = Row {
                name: format!("{} (TC: not answered)", row.name),
                packet: row.packet.clone(),
                settings: row.settings,
                expect: Drop,
                outcome: DeniedDrop,
                reason: Some(ResetSkipped),
                tc_unanswered: false,
            };
            return self.check(hook, &unanswered);
        }
        self.set_settings(&row.settings);
        let before = self.stats();
        let run = self
            .try_run(hook, &row.packet)
            .unwrap_or_else(|e| panic!("[{hook:?}] {}: BPF_PROG_TEST_RUN failed: {e:?}", row.name));
        let after = self.stats();
        let mut deltas = [0u64; Outcome::COUNT as usize];
        for (i, d) in deltas.iter_mut().enumerate() {
            *d = after[i] - before[i];
        }
        let mut wanted = [0u64; Outcome::COUNT as usize];
        wanted[row.outcome as usize] = 1;
        if let Some(reason) = row.reason {
            wanted[reason as usize] = 1;
        }
        let want_code = row.expect.code(hook);
        assert!(
            run.code == want_code && deltas == wanted,
            "[{hook:?}] row `{}`: got {} with {}; expected {} with {}\n  packet ({} octets):\n    {}",
            row.name,
            code_name(hook, run.code),
            describe_deltas(&deltas),
            code_name(hook, want_code),
            describe_deltas(&wanted),
            row.packet.len(),
            hex(&row.packet),
        );
        match row.expect {
            Verdict::Pass => assert!(
                run.out == row.packet,
                "[{hook:?}] row `{}`: passed, but the packet was changed to\n    {}",
                row.name,
                hex(&run.out)
            ),
            Verdict::Drop => {}
            Verdict::Reset => check_reset_reply(
                &format!("[{hook:?}] row `{}`", row.name),
                &row.packet,
                &run.out,
            ),
        }
    }
}

/// The host as the reset mode sees it: the server's addresses, and
/// loopback too, as a careless map would hold it (the program must still
/// never answer a SYN from the wire sent there). BPF_PROG_TEST_RUN runs
/// both programs as if the frame came in on the loopback device: its MAC
/// is the test frames' destination MAC.
fn host_addresses() -> HostAddresses {
    let lo = smtp_gate::gate::iface::ifindex("lo").expect("the loopback device's index");
    let ips = [
        IpAddr::from(SERVER4),
        Ipv4Addr::LOCALHOST.into(),
        SERVER6.into(),
        Ipv6Addr::LOCALHOST.into(),
    ]
    .into_iter()
    .map(|addr| LocalAddr { addr, ifindex: lo })
    .collect();
    HostAddresses {
        ips,
        macs: vec![(lo, DEFAULT_DST_MAC)],
    }
}

/// One row of a verdict table.
struct Row {
    name: String,
    packet: Vec<u8>,
    settings: Settings,
    expect: Verdict,
    /// The one outcome counter the packet must increase.
    outcome: Outcome,
    /// The reason counter it must increase too, if any.
    reason: Option<Outcome>,
    /// A SYN with IP options or extension headers in reset mode: TC cannot
    /// answer it (it cannot cut a socket buffer before its transport
    /// header), so there it is dropped and counted `reset_skipped`.
    tc_unanswered: bool,
}

/// Settings of the tables: window WINDOW, ports 25 and 587 (465 listed
/// after `port_count`), no log; bans looked for at the login ports 110
/// and 995, IPv6 per /64.
fn settings(mode: DenyMode) -> Settings {
    let mut ports = [0u16; MAX_PORTS];
    ports[0] = SMTP;
    ports[1] = SUBMISSION;
    ports[2] = SUBMISSIONS;
    let mut ban_ports = [0u16; MAX_PORTS];
    ban_ports[0] = POP3;
    ban_ports[1] = 995;
    Settings {
        window_ns: WINDOW.as_nanos() as u64,
        ports,
        port_count: 2,
        deny_mode: mode as u32,
        log_rate_per_sec: 0,
        log_burst: 0,
        dest_scoped: 0,
        // Filled in by GateMaps::set_settings.
        tick_ns: 0,
        exempt_in_use: 0,
        reserved: 0,
        ban_ports,
        ban_port_count: 2,
        bans_in_use: BANS_V4_IN_USE | BANS_V6_IN_USE,
        ban_mask_v6: ipv6_mask(64),
    }
}

/// The same settings with the denial log on.
fn logging(mut s: Settings) -> Settings {
    s.log_rate_per_sec = 5;
    s.log_burst = 2;
    s
}

fn row(name: &str, packet: impl Into<Vec<u8>>, expect: Verdict, outcome: Outcome) -> Row {
    Row {
        name: name.to_string(),
        packet: packet.into(),
        settings: settings(DenyMode::Drop),
        expect,
        outcome,
        reason: None,
        tc_unanswered: false,
    }
}

impl Row {
    fn tc_unanswered(mut self) -> Self {
        self.tc_unanswered = true;
        self
    }

    fn reason(mut self, reason: Outcome) -> Self {
        self.reason = Some(reason);
        self
    }

    fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    fn mode(self, mode: DenyMode) -> Self {
        self.settings(settings(mode))
    }
}

/// A SYN from `src` (port CLIENT_PORT, sequence SEQ) to SERVER4:`port`.
fn syn4(src: Ipv4Addr, port: u16) -> PacketBuilder {
    PacketBuilder::ipv4(src, SERVER4)
        .tcp(CLIENT_PORT, port, SYN)
        .seq(SEQ)
}

/// A SYN from `src` (port CLIENT_PORT, sequence SEQ) to SERVER6:`port`.
fn syn6(src: Ipv6Addr, port: u16) -> PacketBuilder {
    PacketBuilder::ipv6(src, SERVER6)
        .tcp(CLIENT_PORT, port, SYN)
        .seq(SEQ)
}

/// Hop-by-hop, AH (12-octet ICV, so 24 octets: counted in 4-octet units
/// it lands elsewhere than in 8-octet units) and destination options.
fn hop_ah_dst() -> [Ipv6Ext; 3] {
    [
        Ipv6Ext::HopByHop { len: 1 },
        Ipv6Ext::AH,
        Ipv6Ext::DEST_OPTS,
    ]
}

/// `n` destination options headers.
fn dest_opts_chain(n: usize) -> Vec<Ipv6Ext> {
    vec![Ipv6Ext::DEST_OPTS; n]
}

/// `b` behind `n` priority tags (802.1Q, VID 0).
fn tags(n: usize, b: PacketBuilder) -> PacketBuilder {
    (0..n).fold(b, |b, _| b.vlan(VlanTag::dot1q(0)))
}

/// A SYN from `src` whose TCP header starts at 1030, past the walk's 1024.
fn syn6_past_the_walk(src: Ipv6Addr) -> PacketBuilder {
    syn6(src, SMTP).exts([Ipv6Ext::DestOpts { len: 120 }, Ipv6Ext::DEST_OPTS])
}

/// IPv4 options: Router Alert and NOPs, 12 octets (IHL 8).
fn some_ipv4_options() -> Vec<u8> {
    let mut o = IPV4_OPTION_ROUTER_ALERT.to_vec();
    o.extend([IPV4_OPTION_NOP; 8]);
    o
}

use DenyMode::{Monitor, Reset as ResetMode};
use Outcome::{
    DeniedBanned, DeniedDrop, DeniedReset, DeniedUnwalkable, Exempt, Granted, JudgedFragment,
    JudgedUnwalkable, Malformed, Monitored, NotGated, ResetSkipped,
};
use Verdict::{Drop, Pass, Reset};

/// The verdict table in drop and monitor mode (reset mode has its own
/// table because its rows also check the reply).
fn verdict_rows() -> Vec<Row> {
    let s = STRANGER4;
    let s6 = STRANGER6;
    vec![
        // Shapes of a gated SYN from a stranger: all dropped.
        row("IPv4 SYN to 25", syn4(s, SMTP).build(), Drop, DeniedDrop),
        row(
            "IPv4 with options (IHL 8) SYN to 25",
            syn4(s, SMTP).ipv4_options(&some_ipv4_options()).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 with 40 octets of options (IHL 15) SYN to 25",
            syn4(s, SMTP).ipv4_options(&[IPV4_OPTION_NOP; 40]).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 SYN with Linux TCP options",
            syn4(s, SMTP).tcp_options(&LINUX_SYN_OPTIONS).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 SYN with TFO payload",
            syn4(s, SMTP)
                .tcp_options(&LINUX_SYN_OPTIONS)
                .payload(b"EHLO client.example\r\n")
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 SYN padded to 60 octets",
            syn4(s, SMTP).pad_to(ETH_MIN_FRAME_LEN).build(),
            Drop,
            DeniedDrop,
        ),
        row("IPv6 SYN to 25", syn6(s6, SMTP).build(), Drop, DeniedDrop),
        row(
            "IPv6 hop-by-hop + AH + destination options before TCP",
            syn6(s6, SMTP).exts(hop_ah_dst()).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 hop-by-hop + routing + destination options before TCP",
            syn6(s6, SMTP)
                .exts([
                    Ipv6Ext::HOP_BY_HOP,
                    Ipv6Ext::Routing { len: 2 },
                    Ipv6Ext::DestOpts { len: 3 },
                ])
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 AH directly before TCP",
            syn6(s6, SMTP).ext(Ipv6Ext::AH).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 AH of odd 4-octet length (12 octets) before TCP",
            syn6(s6, SMTP).ext(Ipv6Ext::Ah { len: 1 }).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 fragment header offset 0 with M (first fragment)",
            syn6(s6, SMTP).ext(Ipv6Ext::first_fragment(7)).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 fragment header offset 0 without M (atomic fragment)",
            syn6(s6, SMTP)
                .ext(Ipv6Ext::Fragment {
                    offset: 0,
                    more: false,
                    id: 7,
                })
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 hop-by-hop + fragment offset 0 + AH + destination options",
            syn6(s6, SMTP)
                .exts([
                    Ipv6Ext::HOP_BY_HOP,
                    Ipv6Ext::first_fragment(8),
                    Ipv6Ext::AH,
                    Ipv6Ext::DEST_OPTS,
                ])
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 fragment header offset 1 (not first): not gated",
            syn6(s6, SMTP)
                .ext(Ipv6Ext::Fragment {
                    offset: 1,
                    more: true,
                    id: 7,
                })
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 fragment header offset 185, last fragment: not gated",
            syn6(s6, SMTP)
                .ext(Ipv6Ext::Fragment {
                    offset: 185,
                    more: false,
                    id: 7,
                })
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 exactly 8 extension headers before TCP",
            syn6(s6, SMTP).exts(dest_opts_chain(8)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 one 802.1Q tag",
            syn4(s, SMTP).vlan(VlanTag::dot1q(100)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 802.1ad + 802.1Q tags (QinQ)",
            syn4(s, SMTP).qinq(100, 200).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 two 802.1Q tags",
            syn4(s, SMTP)
                .vlan(VlanTag::dot1q(100))
                .vlan(VlanTag::dot1q(200))
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 one 802.1Q tag",
            syn6(s6, SMTP).vlan(VlanTag::dot1q(100)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 QinQ with extension headers",
            syn6(s6, SMTP).qinq(100, 200).exts(hop_ah_dst()).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "three VLAN tags (802.1ad + two 802.1Q) are walked",
            syn4(s, SMTP)
                .vlan(VlanTag::dot1ad(1))
                .vlan(VlanTag::dot1q(2))
                .vlan(VlanTag::dot1q(3))
                .build(),
            Drop,
            DeniedDrop,
        ),
        // TCP flags: only SYN without ACK is judged.
        row(
            "SYN+ACK to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "ACK to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "RST to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, RST)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "RST+ACK to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, RST | ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "PSH+ACK with data to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, PSH | ACK)
                .payload(b"MAIL FROM:<a@b>\r\n")
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "FIN+ACK to 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, FIN | ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 SYN+ACK to 25: not gated",
            PacketBuilder::ipv6(s6, SERVER6)
                .tcp(CLIENT_PORT, SMTP, SYN | ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 ACK to 25: not gated",
            PacketBuilder::ipv6(s6, SERVER6)
                .tcp(CLIENT_PORT, SMTP, ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "ECN-setup SYN (SYN+ECE+CWR) is a SYN",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | ECE | CWR)
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "SYN+FIN: the host discards it, not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | FIN)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "SYN+RST: the host discards it, not gated (and never answered)",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | RST)
                .build(),
            Pass,
            NotGated,
        ),
        // Ports.
        row(
            "IPv4 SYN to the second port 587",
            syn4(s, SUBMISSION).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 SYN to the second port 587",
            syn6(s6, SUBMISSION).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 SYN to port 80: not gated",
            syn4(s, 80).build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 SYN to port 143: not gated",
            syn6(s6, 143).build(),
            Pass,
            NotGated,
        ),
        row(
            "SYN to 465, listed after port_count: not gated",
            syn4(s, SUBMISSIONS).build(),
            Pass,
            NotGated,
        ),
        row(
            "SYN from port 25 to a high port: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(SMTP, CLIENT_PORT, SYN)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "unconfigured gate (port_count 0): not gated",
            syn4(s, SMTP).build(),
            Pass,
            NotGated,
        )
        .settings(Settings::UNCONFIGURED),
        // Exempt networks.
        row(
            "IPv4 source in the exempt /24",
            syn4(EXEMPT4, SMTP).build(),
            Pass,
            Exempt,
        ),
        row(
            "IPv4 first address of the exempt /24",
            syn4(Ipv4Addr::new(192, 0, 2, 0), SUBMISSION).build(),
            Pass,
            Exempt,
        ),
        row(
            "IPv4 source just outside the exempt /24",
            syn4(BESIDE_EXEMPT4, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 source exempt and granted: counted as granted (grant looked up first)",
            syn4(EXEMPT_AND_GRANTED4, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv6 source in the exempt /64",
            syn6(EXEMPT6, SMTP).build(),
            Pass,
            Exempt,
        ),
        row(
            "IPv6 source in the exempt /64 behind extension headers and VLAN",
            syn6(EXEMPT6, SMTP)
                .vlan(VlanTag::dot1q(5))
                .exts(hop_ah_dst())
                .build(),
            Pass,
            Exempt,
        ),
        row(
            "IPv6 source just outside the exempt /64",
            syn6(BESIDE_EXEMPT6, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "exempt destination does not exempt the source",
            PacketBuilder::ipv4(s, EXEMPT4)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        ),
        // Grants.
        row(
            "IPv4 fresh grant",
            syn4(GRANTED4, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv4 fresh grant to port 587 behind QinQ",
            syn4(GRANTED4, SUBMISSION).qinq(1, 2).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv4 grant older than the window",
            syn4(EXPIRED4, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 grant with own lifetime, older than the window: fresh",
            syn4(OWN_FRESH4, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv4 grant with own lifetime expired, younger than the window",
            syn4(OWN_EXPIRED4, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 grant stamped in the future",
            syn4(FUTURE4, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "a grant of the destination does not grant the source",
            PacketBuilder::ipv4(s, GRANTED4)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 fresh grant",
            syn6(GRANTED6, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv6 fresh grant behind extension headers",
            syn6(GRANTED6, SMTP).exts(hop_ah_dst()).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv6 grant older than the window",
            syn6(EXPIRED6, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 grant with own lifetime, older than the window: fresh",
            syn6(OWN_FRESH6, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv6 grant with own lifetime expired, younger than the window",
            syn6(OWN_EXPIRED6, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 address granted as IPv4 does not grant its IPv6 twin",
            syn6(
                Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0xc633, 0x6401),
                SMTP,
            )
            .build(),
            Drop,
            DeniedDrop,
        ),
        // Deny modes.
        row(
            "monitor mode: IPv4 stranger passes",
            syn4(s, SMTP).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "monitor mode: IPv6 stranger behind extension headers passes",
            syn6(s6, SMTP).exts(hop_ah_dst()).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "monitor mode: expired grant passes",
            syn4(EXPIRED4, SUBMISSION).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "monitor mode with the log on",
            syn4(s, SMTP).build(),
            Pass,
            Monitored,
        )
        .settings(logging(settings(Monitor))),
        row(
            "monitor mode: fresh grant still counts as granted",
            syn4(GRANTED4, SMTP).build(),
            Pass,
            Granted,
        )
        .mode(Monitor),
        row(
            "monitor mode: exempt still counts as exempt",
            syn6(EXEMPT6, SMTP).build(),
            Pass,
            Exempt,
        )
        .mode(Monitor),
        row(
            "monitor mode: SYN+ACK still not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | ACK)
                .build(),
            Pass,
            NotGated,
        )
        .mode(Monitor),
        row(
            "drop mode with the log on",
            syn6(s6, SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .settings(logging(settings(DenyMode::Drop))),
        row(
            "unknown deny mode 7 falls back to drop",
            syn4(s, SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .settings(Settings {
            deny_mode: 7,
            ..settings(DenyMode::Drop)
        }),
        // IPv4 fragments.
        row(
            "IPv4 tiny first fragment (8 octets of TCP, MF) to 25: judged by port, dropped",
            tiny_first_fragment(s, SMTP),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv4 tiny first fragment to another port: not gated",
            tiny_first_fragment(s, 80),
            Pass,
            NotGated,
        ),
        row(
            "IPv4 tiny first fragment from a granted source passes",
            tiny_first_fragment(GRANTED4, SMTP),
            Pass,
            Granted,
        )
        .reason(JudgedFragment),
        row(
            "reset mode: a tiny first fragment is dropped, never answered",
            tiny_first_fragment(s, SMTP),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment)
        .mode(DenyMode::Reset),
        row(
            "IPv4 non-first fragment (offset 185) that looks like a SYN: not gated",
            syn4(s, SMTP).ipv4_fragment(185, false).build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv4 non-first fragment (offset 1, MF): not gated",
            syn4(s, SMTP).ipv4_fragment(1, true).build(),
            Pass,
            NotGated,
        ),
        // Every bit of the 13-bit offset counts (a mask that dropped the
        // top one made this fragment a first one).
        row(
            "IPv4 non-first fragment at offset 4096 (32 KiB in) that looks like a SYN: not gated",
            syn4(s, SMTP).ipv4_fragment(0x1000, false).build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv4 first fragment (offset 0, MF) carries the SYN",
            syn4(s, SMTP).ipv4_fragment(0, true).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        // Not TCP.
        row(
            "IPv4 UDP to port 25: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .udp(CLIENT_PORT, SMTP)
                .payload(b"x")
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 UDP to port 25: not gated",
            PacketBuilder::ipv6(s6, SERVER6)
                .udp(CLIENT_PORT, SMTP)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 UDP behind hop-by-hop: not gated",
            PacketBuilder::ipv6(s6, SERVER6)
                .ext(Ipv6Ext::HOP_BY_HOP)
                .udp(CLIENT_PORT, SMTP)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "ICMP echo: not gated",
            PacketBuilder::ipv4(s, SERVER4).icmp_echo(1, 1).build(),
            Pass,
            NotGated,
        ),
        row(
            "ICMPv6 echo: not gated",
            PacketBuilder::ipv6(s6, SERVER6).icmp_echo(1, 1).build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 no next header: not gated",
            PacketBuilder::ipv6(s6, SERVER6).build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv6 unknown extension header (135) before TCP: not gated",
            syn6(s6, SMTP)
                .ext(Ipv6Ext::Raw {
                    kind: 135,
                    bytes: vec![0; 8],
                })
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "ARP request: not gated",
            PacketBuilder::arp_request(s, SERVER4).build(),
            Pass,
            NotGated,
        ),
        row(
            "ARP request behind an 802.1Q tag: not gated",
            PacketBuilder::arp_request(s, SERVER4)
                .vlan(VlanTag::dot1q(7))
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "LLDP frame: not gated",
            PacketBuilder::ethernet(0x88cc).payload(&[0; 46]).build(),
            Pass,
            NotGated,
        ),
        // Malformed headers: all pass.
        row(
            "IPv4 IHL 4",
            syn4(s, SMTP).ipv4_ihl(4).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv4 IHL 0",
            syn4(s, SMTP).ipv4_ihl(0).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv4 total length 19 < header length 20",
            syn4(s, SMTP).ipv4_total_len(19).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv4 total length 0: the frame's length counts (GSO, Linux >= 6.3)",
            syn4(s, SMTP).ipv4_total_len(0).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv4 total length 0 from a granted source passes",
            syn4(GRANTED4, SMTP).ipv4_total_len(0).build(),
            Pass,
            Granted,
        ),
        row(
            "IPv4 total length 0, ACK: not gated",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, ACK)
                .ipv4_total_len(0)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "IPv4 with options, total length 23 < header length 24",
            syn4(s, SMTP)
                .ipv4_options(&IPV4_OPTION_ROUTER_ALERT)
                .ipv4_total_len(23)
                .build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv4 EtherType with IP version 6",
            syn4(s, SMTP).ip_version(6).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv6 EtherType with IP version 4",
            syn6(s6, SMTP).ip_version(4).build(),
            Pass,
            Malformed,
        ),
        row(
            "TCP data offset 4",
            syn4(s, SMTP).tcp_data_offset(4).build(),
            Pass,
            Malformed,
        ),
        row(
            "TCP data offset 0",
            syn4(s, SMTP).tcp_data_offset(0).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv6 TCP data offset 4 behind extension headers",
            syn6(s6, SMTP).exts(hop_ah_dst()).tcp_data_offset(4).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv6 9 extension headers (chain longer than 8): judged by source, dropped",
            syn6(s6, SMTP).exts(dest_opts_chain(9)).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "IPv6 16 extension headers: dropped",
            syn6(s6, SMTP).exts(dest_opts_chain(16)).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "IPv6 chain too long to walk from a granted source passes",
            syn6(GRANTED6, SMTP).exts(dest_opts_chain(9)).build(),
            Pass,
            Granted,
        )
        .reason(JudgedUnwalkable),
        row(
            "IPv6 chain too long to walk from an exempt source passes",
            syn6(EXEMPT6, 443).exts(dest_opts_chain(12)).build(),
            Pass,
            Exempt,
        )
        .reason(JudgedUnwalkable),
        row(
            "monitor mode: IPv6 chain too long to walk passes, counted",
            syn6(s6, SMTP).exts(dest_opts_chain(9)).build(),
            Pass,
            Monitored,
        )
        .reason(JudgedUnwalkable)
        .mode(Monitor),
        row(
            "IPv6 payload length shorter than the extension headers",
            syn6(s6, SMTP)
                .exts(hop_ah_dst())
                .ipv6_payload_len(16)
                .build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv6 hop-by-hop of 2048 octets puts TCP beyond 1024: dropped",
            syn6(s6, SMTP).ext(Ipv6Ext::HopByHop { len: 255 }).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "IPv6 AH of 1028 octets puts TCP beyond 1024: dropped",
            syn6(s6, SMTP).ext(Ipv6Ext::Ah { len: 255 }).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "IPv6 AH claiming 1028 octets in a short packet",
            syn6(s6, SMTP).ext(Ipv6Ext::Ah { len: 255 }).build()[..200].to_vec(),
            Pass,
            Malformed,
        ),
        row(
            "IPv6 ext header length runs past the frame",
            syn6(s6, SMTP).ext(Ipv6Ext::DestOpts { len: 20 }).build()[..14 + 40 + 60].to_vec(),
            Pass,
            Malformed,
        ),
    ]
}

/// Reset mode: every denied SYN is answered, and what is not denied passes
/// as in the other modes.
fn reset_rows() -> Vec<Row> {
    let s = STRANGER4;
    let s6 = STRANGER6;
    let rows = vec![
        row("reset IPv4", syn4(s, SMTP).build(), Reset, DeniedReset),
        row(
            "reset IPv4 with options (IHL 8)",
            syn4(s, SMTP).ipv4_options(&some_ipv4_options()).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv4 with 40 octets of options (IHL 15)",
            syn4(s, SMTP).ipv4_options(&[IPV4_OPTION_NOP; 40]).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv4 to port 587",
            syn4(s, SUBMISSION).build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset IPv4 with Linux TCP options",
            syn4(s, SMTP).tcp_options(&LINUX_SYN_OPTIONS).build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset IPv4 TFO SYN acknowledges the payload",
            syn4(s, SMTP)
                .tcp_options(&LINUX_SYN_OPTIONS)
                .payload(b"EHLO client.example\r\n")
                .build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset IPv4 sequence number wraps",
            syn4(s, SMTP).seq(u32::MAX).build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset IPv4 SYN padded to 60 octets: padding is not payload",
            syn4(s, SMTP).pad_to(ETH_MIN_FRAME_LEN).build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset IPv4 expired grant",
            syn4(EXPIRED4, SMTP).build(),
            Reset,
            DeniedReset,
        ),
        row(
            "reset mode: a SYN with one 802.1Q tag is dropped, not answered",
            syn4(s, SMTP)
                .vlan(VlanTag::dot1q(100).with_priority(5))
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a QinQ SYN with options is dropped, not answered",
            syn4(s, SMTP)
                .qinq(100, 200)
                .ipv4_options(&some_ipv4_options())
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row("reset IPv6", syn6(s6, SMTP).build(), Reset, DeniedReset),
        row(
            "reset IPv6 hop-by-hop + AH + destination options",
            syn6(s6, SMTP).exts(hop_ah_dst()).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv6 hop-by-hop + routing + atomic fragment + AH + destination options",
            syn6(s6, SMTP)
                .exts([
                    Ipv6Ext::HOP_BY_HOP,
                    Ipv6Ext::Routing { len: 2 },
                    Ipv6Ext::Fragment {
                        offset: 0,
                        more: false,
                        id: 3,
                    },
                    Ipv6Ext::AH,
                    Ipv6Ext::DestOpts { len: 1 },
                ])
                .build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv6 AH directly before TCP",
            syn6(s6, SMTP).ext(Ipv6Ext::AH).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv6 TFO SYN behind extension headers acknowledges the payload",
            syn6(s6, SMTP)
                .exts(hop_ah_dst())
                .tcp_options(&LINUX_SYN_OPTIONS)
                .payload(&[0x5a; 100])
                .build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset mode: an IPv6 SYN with one 802.1Q tag is dropped, not answered",
            syn6(s6, SMTP).vlan(VlanTag::dot1q(9)).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: an IPv6 QinQ SYN is dropped, not answered",
            syn6(s6, SMTP).qinq(100, 200).exts(hop_ah_dst()).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: an IPv6 SYN with two 802.1Q tags is dropped, not answered",
            syn6(s6, SUBMISSION)
                .vlan(VlanTag::dot1q(1))
                .vlan(VlanTag::dot1q(2))
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset IPv4 with the log on",
            syn4(s, SMTP).build(),
            Reset,
            DeniedReset,
        )
        .settings(logging(settings(ResetMode))),
        row(
            "reset IPv6 with the log on",
            syn6(s6, SMTP).exts(hop_ah_dst()).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered()
        .settings(logging(settings(ResetMode))),
        // Not denied: passes untouched in reset mode too.
        row(
            "reset mode: exempt IPv4 passes",
            syn4(EXEMPT4, SMTP).build(),
            Pass,
            Exempt,
        ),
        row(
            "reset mode: granted IPv6 passes",
            syn6(GRANTED6, SMTP).build(),
            Pass,
            Granted,
        ),
        row(
            "reset mode: SYN+ACK passes",
            PacketBuilder::ipv4(s, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN | ACK)
                .build(),
            Pass,
            NotGated,
        ),
        row(
            "reset mode: other port passes",
            syn6(s6, 80).build(),
            Pass,
            NotGated,
        ),
        row(
            "reset mode: malformed passes",
            syn4(s, SMTP).tcp_data_offset(2).build(),
            Pass,
            Malformed,
        ),
        row(
            "reset mode: a SYN to a broadcast MAC is dropped, never answered",
            syn4(s, SMTP).macs(DEFAULT_SRC_MAC, [0xff; 6]).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN sent to another host's MAC is dropped, never answered",
            syn4(s, SMTP)
                .macs(DEFAULT_SRC_MAC, [0x02, 0, 0, 0, 0, 0x99])
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from a multicast MAC is dropped, never answered",
            syn4(s, SMTP)
                .macs([0x01, 0x00, 0x5e, 0, 0, 1], DEFAULT_DST_MAC)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN to an address that is not the host's is dropped, never answered",
            PacketBuilder::ipv4(s, Ipv4Addr::new(10, 0, 0, 99))
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: IPv6 to an address that is not the host's",
            PacketBuilder::ipv6(s6, Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x99))
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN to the limited broadcast address",
            PacketBuilder::ipv4(s, Ipv4Addr::BROADCAST)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from a multicast source address",
            syn4(Ipv4Addr::new(224, 0, 0, 9), SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from an IPv6 multicast source",
            syn6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from an IPv4-mapped IPv6 source",
            syn6(Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped(), SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from the host's own address is dropped, never answered",
            PacketBuilder::ipv4(SERVER4, SERVER4)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: IPv6 from the host's own address",
            PacketBuilder::ipv6(SERVER6, SERVER6)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from the wire to 127.0.0.1 is dropped, never answered",
            PacketBuilder::ipv4(s, Ipv4Addr::LOCALHOST)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a SYN from the wire to ::1",
            PacketBuilder::ipv6(s6, Ipv6Addr::LOCALHOST)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        row(
            "reset mode: a split SYN is dropped, never answered",
            ipv4_first_fragment(
                &syn4(s, SMTP)
                    .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
                    .ipv4_fragment(0, true),
                24,
            ),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "reset IPv6 behind a 248-octet destination options header",
            syn6(s6, SMTP).ext(Ipv6Ext::DestOpts { len: 30 }).build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset IPv6 with payload length 0 and hop-by-hop",
            syn6(s6, SMTP)
                .ext(Ipv6Ext::HOP_BY_HOP)
                .ipv6_payload_len(0)
                .build(),
            Reset,
            DeniedReset,
        )
        .tc_unanswered(),
        row(
            "reset mode: a SYN behind three priority tags is dropped, not answered",
            syn4(s, SMTP)
                .vlan(VlanTag::dot1q(0))
                .vlan(VlanTag::dot1q(0))
                .vlan(VlanTag::dot1q(0))
                .build(),
            Drop,
            DeniedDrop,
        )
        .reason(ResetSkipped),
        // A SYN whose chain is longer than the walk has no whole segment
        // to answer: dropped, counted by the chain; one behind more tags
        // than the walk follows has no source either.
        row(
            "reset mode: a SYN whose TCP header starts past the walk is dropped, not answered",
            syn6_past_the_walk(s6).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "reset mode: a SYN behind nine VLAN tags is dropped as unwalkable",
            tags(9, syn4(s, SMTP)).build(),
            Drop,
            DeniedUnwalkable,
        ),
    ];
    rows.into_iter()
        .map(|r| {
            if r.settings.deny_mode == DenyMode::Drop as u32 {
                r.mode(ResetMode)
            } else {
                r
            }
        })
        .collect()
}

/// Checks that `reply` is the RST+ACK the gate owes the sender of `syn`
/// (RFC 9293 3.10.7.1: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>), with
/// checksums verified by the test's own code.
fn check_reset_reply(what: &str, syn: &[u8], reply: &[u8]) {
    let syn = TcpFrame::parse(syn)
        .unwrap_or_else(|e| panic!("{what}: the test's SYN does not parse: {e}"));
    let rst = TcpFrame::parse(reply).unwrap_or_else(|e| {
        panic!(
            "{what}: the reply is not a valid TCP frame: {e}\n  reply ({} octets):\n    {}",
            reply.len(),
            hex(reply)
        )
    });
    let fail = |msg: String| -> ! {
        panic!(
            "{what}: {msg}\n  reply ({} octets):\n    {}",
            reply.len(),
            hex(reply)
        )
    };

    if rst.dst_mac != syn.src_mac || rst.src_mac != syn.dst_mac {
        fail(format!(
            "MACs not swapped: reply {:02x?} -> {:02x?}, SYN {:02x?} -> {:02x?}",
            rst.src_mac, rst.dst_mac, syn.src_mac, syn.dst_mac
        ));
    }
    if rst.vlans != syn.vlans {
        fail(format!(
            "VLAN tags changed: {:?}, SYN had {:?}",
            rst.vlans, syn.vlans
        ));
    }
    if rst.ip.src() != syn.ip.dst() || rst.ip.dst() != syn.ip.src() {
        fail(format!(
            "addresses not swapped: reply {} -> {}, SYN {} -> {}",
            rst.ip.src(),
            rst.ip.dst(),
            syn.ip.src(),
            syn.ip.dst()
        ));
    }
    let ip_len = match (&rst.ip, &syn.ip) {
        (ParsedIp::V4(ip), ParsedIp::V4(_)) => {
            if ip.header_len != IPV4_HDR_LEN || ip.total_len as usize != IPV4_HDR_LEN + TCP_HDR_LEN
            {
                fail(format!(
                    "IPv4 header length {} / total length {}, expected 20 / 40",
                    ip.header_len, ip.total_len
                ));
            }
            if ip.ttl == 0 {
                fail("IPv4 TTL 0".into());
            }
            IPV4_HDR_LEN
        }
        (ParsedIp::V6(ip), ParsedIp::V6(_)) => {
            if !ip.ext_kinds.is_empty() || ip.payload_len as usize != TCP_HDR_LEN {
                fail(format!(
                    "IPv6 extension headers {:?} / payload length {}, expected none / 20",
                    ip.ext_kinds, ip.payload_len
                ));
            }
            if ip.hop_limit == 0 {
                fail("IPv6 hop limit 0".into());
            }
            IPV6_HDR_LEN
        }
        _ => fail("the reply is of another IP version than the SYN".into()),
    };
    let expected_len = syn.l3_offset + ip_len + TCP_HDR_LEN;
    if reply.len() != expected_len || rst.trailer_len != 0 {
        fail(format!(
            "reply is {} octets ({} after the datagram), expected exactly {expected_len}",
            reply.len(),
            rst.trailer_len
        ));
    }
    let tcp = &rst.tcp;
    if tcp.src_port != syn.tcp.dst_port || tcp.dst_port != syn.tcp.src_port {
        fail(format!(
            "ports not swapped: reply {} -> {}, SYN {} -> {}",
            tcp.src_port, tcp.dst_port, syn.tcp.src_port, syn.tcp.dst_port
        ));
    }
    if tcp.flags != RST | ACK {
        fail(format!(
            "TCP flags {:#04x}, expected RST|ACK (0x14)",
            tcp.flags
        ));
    }
    if tcp.seq != 0 {
        fail(format!("sequence number {}, expected 0", tcp.seq));
    }
    let want_ack = syn
        .tcp
        .seq
        .wrapping_add(1)
        .wrapping_add(syn.payload.len() as u32);
    if tcp.ack != want_ack {
        fail(format!(
            "acknowledgment {} ({:#x}), expected SYN seq {:#x} + 1 + {} payload octets = {want_ack:#x}",
            tcp.ack,
            tcp.ack,
            syn.tcp.seq,
            syn.payload.len()
        ));
    }
    if tcp.data_offset != 5 || !rst.payload.is_empty() {
        fail(format!(
            "TCP data offset {} with {} payload octets, expected 5 and none",
            tcp.data_offset,
            rst.payload.len()
        ));
    }
}

fn run_table(hook: Hook, rows: &[Row]) {
    let mut gate = Gate::with_fixture();
    for row in rows {
        gate.check(hook, row);
    }
}

/// Banned sources (the fixture's bans), in every deny mode.
fn ban_rows() -> Vec<Row> {
    let no_bans_looked_for = Settings {
        bans_in_use: 0,
        ..settings(DenyMode::Drop)
    };
    let only_v6_looked_for = Settings {
        bans_in_use: BANS_V6_IN_USE,
        ..settings(DenyMode::Drop)
    };
    let banned = |name: &str, packet: PacketBuilder| row(name, packet.build(), Drop, DeniedBanned);
    vec![
        banned("banned IPv4 SYN to 25", syn4(BANNED4, SMTP)),
        banned("banned IPv4 SYN to 587", syn4(BANNED4, SUBMISSION)),
        banned("banned IPv4 SYN to the login port 110", syn4(BANNED4, POP3)),
        banned("banned IPv4 SYN to the login port 995", syn4(BANNED4, 995)),
        row(
            "banned IPv4 SYN to 443: not gated",
            syn4(BANNED4, 443).build(),
            Pass,
            NotGated,
        ),
        row(
            "banned IPv4 SYN to 465 (listed after the count): not gated",
            syn4(BANNED4, SUBMISSIONS).build(),
            Pass,
            NotGated,
        ),
        row(
            "banned IPv4 ACK to 110: an established session runs on",
            PacketBuilder::ipv4(BANNED4, SERVER4)
                .tcp(CLIENT_PORT, POP3, ACK)
                .build(),
            Pass,
            NotGated,
        ),
        banned(
            "granted but banned IPv4 SYN to 25: denied",
            syn4(GRANTED_BANNED4, SMTP),
        ),
        row(
            "granted IPv4 SYN to 110 (not banned): not gated",
            syn4(GRANTED4, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "stranger IPv4 SYN to 110 (not banned): not gated",
            syn4(STRANGER4, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "exempt and banned IPv4 SYN to 25: exempt networks are never banned",
            syn4(EXEMPT_BANNED4, SMTP).build(),
            Pass,
            Exempt,
        ),
        row(
            "exempt and banned IPv4 SYN to 110: passes",
            syn4(EXEMPT_BANNED4, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "ended ban IPv4 SYN to 110: passes",
            syn4(BAN_ENDED4, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "ended ban IPv4 SYN to 25: denied as any stranger",
            syn4(BAN_ENDED4, SMTP).build(),
            Drop,
            DeniedDrop,
        ),
        banned("banned IPv6 SYN to 25", syn6(BANNED6, SMTP)),
        banned("banned IPv6 SYN to the login port 110", syn6(BANNED6, POP3)),
        banned(
            "IPv6 SYN to 110 from another address of the banned /64",
            syn6(BANNED_NET6_MEMBER, POP3),
        ),
        banned(
            "IPv6 SYN to 25 from another address of the banned /64",
            syn6(BANNED_NET6_MEMBER, SMTP),
        ),
        row(
            "IPv6 SYN to 110 from the /64 beside the banned one: passes",
            syn6(BESIDE_BANNED6, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "banned IPv6 SYN to 443: not gated",
            syn6(BANNED6, 443).build(),
            Pass,
            NotGated,
        ),
        row(
            "ended ban IPv6 SYN to 110: passes",
            syn6(BAN_ENDED6, POP3).build(),
            Pass,
            NotGated,
        ),
        row(
            "banned IPv6 first fragment to 110: judged by its port",
            syn6(BANNED6, POP3).ext(Ipv6Ext::first_fragment(1)).build(),
            Drop,
            DeniedBanned,
        )
        .reason(JudgedFragment),
        row(
            "banned IPv4 SYN with options to 110: the walk judges it too",
            syn4(BANNED4, POP3)
                .ipv4_options(&some_ipv4_options())
                .build(),
            Drop,
            DeniedBanned,
        ),
        row(
            "banned IPv4 SYN to 25 in monitor mode: passed, counted",
            syn4(BANNED4, SMTP).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "banned IPv4 SYN to 110 in monitor mode: passed, counted",
            syn4(BANNED4, POP3).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "banned IPv4 SYN to 110 with no ban looked for: passes",
            syn4(BANNED4, POP3).build(),
            Pass,
            NotGated,
        )
        .settings(no_bans_looked_for),
        row(
            "banned IPv4 SYN to 25 with no ban looked for: an ordinary denial",
            syn4(BANNED4, SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .settings(no_bans_looked_for),
        row(
            "banned IPv4 SYN to 110 with only IPv6 bans looked for: passes",
            syn4(BANNED4, POP3).build(),
            Pass,
            NotGated,
        )
        .settings(only_v6_looked_for),
        banned(
            "banned IPv6 SYN to 110 with only IPv6 bans looked for",
            syn6(BANNED6, POP3),
        )
        .settings(only_v6_looked_for),
        row(
            "banned IPv4 SYN to 25 in reset mode: answered, counted denied_banned",
            syn4(BANNED4, SMTP).build(),
            Reset,
            DeniedBanned,
        )
        .mode(ResetMode),
        row(
            "banned IPv4 SYN to 110 in reset mode: answered",
            syn4(BANNED4, POP3).build(),
            Reset,
            DeniedBanned,
        )
        .mode(ResetMode),
        row(
            "banned IPv6 SYN to 110 in reset mode: answered",
            syn6(BANNED_NET6_MEMBER, POP3).build(),
            Reset,
            DeniedBanned,
        )
        .mode(ResetMode),
        row(
            "banned IPv4 SYN to 110 in reset mode, to another host: dropped, not answered",
            PacketBuilder::ipv4(BANNED4, Ipv4Addr::new(10, 0, 0, 99))
                .tcp(CLIENT_PORT, POP3, SYN)
                .build(),
            Drop,
            DeniedBanned,
        )
        .reason(ResetSkipped)
        .mode(ResetMode),
    ]
}

#[test]
fn ban_table_xdp() {
    run_table(Hook::Xdp, &ban_rows());
}

#[test]
fn ban_table_tc() {
    run_table(Hook::Tc, &ban_rows());
}

#[test]
fn table_row_names_are_unique() {
    let mut names: Vec<String> = verdict_rows()
        .into_iter()
        .chain(reset_rows())
        .chain(ban_rows())
        .map(|r| r.name)
        .collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "two table rows share a name");
}

#[test]
fn verdict_table_xdp() {
    run_table(Hook::Xdp, &verdict_rows());
}

#[test]
fn verdict_table_tc() {
    run_table(Hook::Tc, &verdict_rows());
}

#[test]
fn reset_table_xdp() {
    run_table(Hook::Xdp, &reset_rows());
}

#[test]
fn reset_table_tc() {
    run_table(Hook::Tc, &reset_rows());
}

/// The first fragment of a SYN split after 8 octets of TCP (RFC 1858's
/// tiny fragment): ports and sequence number, no flags.
fn tiny_first_fragment(src: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    tcp.extend_from_slice(&port.to_be_bytes());
    tcp.extend_from_slice(&SEQ.to_be_bytes());
    PacketBuilder::ipv4(src, SERVER4)
        .ipv4_fragment(0, true)
        .raw_transport(testkit::packets::ip_proto::TCP)
        .payload(&tcp)
        .build()
}

/// Gated SYNs from a stranger, in the shapes the truncation test cuts.
/// None carries TCP options or payload, so every proper prefix cuts a
/// header the program has to read.
fn truncation_shapes() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("IPv4", syn4(STRANGER4, SMTP).build()),
        (
            "IPv4 with options",
            syn4(STRANGER4, SMTP)
                .ipv4_options(&some_ipv4_options())
                .build(),
        ),
        (
            "IPv6 with hop-by-hop + AH + destination options",
            syn6(STRANGER6, SMTP).exts(hop_ah_dst()).build(),
        ),
        (
            "IPv6 with a fragment header",
            syn6(STRANGER6, SMTP)
                .ext(Ipv6Ext::first_fragment(1))
                .build(),
        ),
        ("IPv4 QinQ", syn4(STRANGER4, SMTP).qinq(10, 20).build()),
        (
            "IPv6 QinQ with extension headers and a fragment header",
            syn6(STRANGER6, SMTP)
                .qinq(10, 20)
                .exts([Ipv6Ext::HOP_BY_HOP, Ipv6Ext::first_fragment(2), Ipv6Ext::AH])
                .build(),
        ),
    ]
}

/// True if BPF_PROG_TEST_RUN may refuse `frame` with EINVAL before the
/// program runs (net/bpf/test_run.c): `bpf_test_init` wants at least an
/// Ethernet header (ETH_HLEN, 14 octets) for XDP and sched_cls alike, and
/// `bpf_prog_test_run_skb` of recent kernels (6.18 here) also wants the
/// whole fixed IP header when the EtherType right after the MACs is IPv4
/// (14 + 20) or IPv6 (14 + 40). Such frames cannot reach the program
/// through BPF_PROG_TEST_RUN at all.
fn kernel_may_refuse(hook: Hook, frame: &[u8]) -> bool {
    if frame.len() < ETH_HDR_LEN {
        return true;
    }
    let outer_type = u16::from_be_bytes([frame[12], frame[13]]);
    hook == Hook::Tc
        && match outer_type {
            0x0800 => frame.len() < ETH_HDR_LEN + IPV4_HDR_LEN,
            0x86dd => frame.len() < ETH_HDR_LEN + IPV6_HDR_LEN,
            _ => false,
        }
}

/// Every prefix of every shape, from 0 octets to one short of the whole,
/// passes and counts `malformed`. The whole shape is checked first, so a
/// prefix that passes does so because it was cut.
///
/// Prefixes the kernel refuses to run (see `kernel_may_refuse`) must fail
/// with EINVAL and are counted as refused; if a kernel runs them anyway,
/// they must pass as malformed like the others. Any other prefix must run.
fn check_truncations(hook: Hook) {
    let mut gate = Gate::with_fixture();
    let (mut ran, mut refused) = (0, 0);
    for (shape, packet) in truncation_shapes() {
        // A first fragment (M set) is judged without being a whole SYN.
        let whole = row(&format!("whole {shape}"), packet.clone(), Drop, DeniedDrop);
        let whole = if shape.contains("fragment") {
            whole.reason(JudgedFragment)
        } else {
            whole
        };
        gate.check(hook, &whole);
        for len in 0..packet.len() {
            let prefix = &packet[..len];
            let name = format!("{shape} cut to {len} of {} octets", packet.len());
            if kernel_may_refuse(hook, prefix) {
                match gate.try_run(hook, prefix) {
                    Err(ProgramError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        refused += 1;
                        continue;
                    }
                    Err(e) => panic!("[{hook:?}] {name}: unexpected error {e:?}"),
                    Ok(_) => {}
                }
            }
            gate.check(hook, &row(&name, prefix, Pass, Malformed));
            ran += 1;
        }
    }
    assert!(
        ran > 250,
        "[{hook:?}] only {ran} prefixes reached the program ({refused} refused by the kernel)"
    );
}

#[test]
fn truncated_syns_pass_as_malformed_xdp() {
    check_truncations(Hook::Xdp);
}

#[test]
fn truncated_syns_pass_as_malformed_tc() {
    check_truncations(Hook::Tc);
}

// Regressions: SYNs whose TCP header does not fit in the datagram or the
// frame once passed the fixed-size read and were judged.

/// A SYN with TCP options (as every real client sends) cut inside its
/// options, or inside its TFO payload, must pass as malformed, not be
/// judged (dropped, or answered with a RST that acknowledges octets that
/// are not there).
#[test]
fn syn_cut_inside_tcp_options_is_malformed() {
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut gate = Gate::with_fixture();
        let packet = syn4(STRANGER4, SMTP)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .payload(b"EHLO")
            .build();
        let l4 = TcpFrame::parse(&packet).expect("SYN parses").l4_offset;
        for len in l4 + TCP_HDR_LEN..packet.len() {
            let name = format!("IPv4 SYN with options cut to {len} of {}", packet.len());
            gate.check(hook, &row(&name, &packet[..len], Pass, Malformed));
        }
    }
}

/// Headers that cannot be: the IP lengths leave no room for the TCP header
/// the program reads (it reads it from the Ethernet padding or beyond the
/// datagram), or the TCP data offset claims more octets than the datagram
/// has. The program checks `total length >= IHL * 4` but not that the TCP
/// header fits in the datagram, and `saturating_sub` hides the negative
/// payload length.
#[test]
fn tcp_header_outside_the_datagram_is_malformed() {
    let rows = [
        row(
            "IPv4 total length 20: TCP header outside the datagram",
            syn4(STRANGER4, SMTP).ipv4_total_len(20).build(),
            Pass,
            Malformed,
        ),
        row(
            "IPv4 total length 30: TCP header half outside the datagram",
            syn4(STRANGER4, SMTP).ipv4_total_len(30).build(),
            Pass,
            Malformed,
        ),
        row(
            "TCP data offset 15 in a 20-octet segment",
            syn4(STRANGER4, SMTP).tcp_data_offset(15).build(),
            Pass,
            Malformed,
        ),
    ];
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut gate = Gate::with_fixture();
        for r in &rows {
            gate.check(hook, r);
        }
    }
}

// The bypasses of the gate: frames the Linux stack turns into a SYN to a
// gated port that the walk once passed as `malformed` or `not_gated`.

/// `syn` (built with `ipv4_fragment(0, true)`) cut to its first
/// fragment: the IP header and `tcp_octets` octets of the segment.
fn ipv4_first_fragment(syn: &PacketBuilder, tcp_octets: usize) -> Vec<u8> {
    let frame = syn.build();
    let (l3, l4) = (syn.l3_offset(), syn.l4_offset());
    let mut out = frame[..l4 + tcp_octets].to_vec();
    let total = (l4 - l3 + tcp_octets) as u16;
    out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out, l3, l4);
    out
}

/// The rest of the same datagram: `syn`'s segment from octet `from` (a
/// multiple of 8) on, as the last fragment.
fn ipv4_last_fragment(syn: &PacketBuilder, from: usize) -> Vec<u8> {
    let frame = syn.build();
    let (l3, l4) = (syn.l3_offset(), syn.l4_offset());
    let mut out = frame[..l4].to_vec();
    out.extend_from_slice(&frame[l4 + from..]);
    let total = (out.len() - l3) as u16;
    out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    let frag = (from / 8) as u16; // MF clear, DF clear
    out[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
    fix_ipv4_checksum(&mut out, l3, l4);
    out
}

fn fix_ipv4_checksum(frame: &mut [u8], l3: usize, l4: usize) {
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let sum = testkit::packets::internet_checksum(&[&frame[l3..l4]]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

/// An IPv6 frame cut to its first `len` octets with the payload length
/// made to match: a first fragment when the chain holds a fragment
/// header with M set.
fn ipv6_cut(frame: &[u8], l3: usize, len: usize) -> Vec<u8> {
    let mut out = frame[..len].to_vec();
    let payload = (len - l3 - IPV6_HDR_LEN) as u16;
    out[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// Forty octets of TCP options (a 60-octet header): NOP padding.
const FORTY_OCTETS_OF_TCP_OPTIONS: [u8; 40] = [1; 40];

fn bypass_rows() -> Vec<Row> {
    let s = STRANGER4;
    let s6 = STRANGER6;
    let big4 = syn4(s, SMTP)
        .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
        .ipv4_fragment(0, true);
    let big4_ip_options = big4.clone().ipv4_options(&[IPV4_OPTION_NOP; 40]);
    let frag6 = |src: Ipv6Addr, exts: Vec<Ipv6Ext>| {
        syn6(src, SMTP)
            .exts(exts)
            .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
    };
    let first6 = |b: PacketBuilder, tcp_octets: usize| {
        ipv6_cut(&b.build(), b.l3_offset(), b.l4_offset() + tcp_octets)
    };
    let cut_chain = {
        // Fragment + destination options in the first fragment; the next
        // destination options header and the SYN in the second.
        let b = syn6(s6, SMTP).exts([
            Ipv6Ext::first_fragment(9),
            Ipv6Ext::DEST_OPTS,
            Ipv6Ext::DestOpts { len: 1 },
        ]);
        ipv6_cut(&b.build(), b.l3_offset(), b.l3_offset() + IPV6_HDR_LEN + 16)
    };
    let chain_ends_at_fragment_end = {
        let b = syn6(s6, SMTP).exts([Ipv6Ext::first_fragment(10), Ipv6Ext::DEST_OPTS]);
        ipv6_cut(&b.build(), b.l3_offset(), b.l4_offset())
    };
    let jumbo_hbh = |src: Ipv6Addr| {
        syn6(src, SMTP)
            .ext(Ipv6Ext::HOP_BY_HOP)
            .ipv6_payload_len(0)
            .build()
    };
    let first_fragment_with = |flags: u8, tcp_octets: usize| {
        let b = PacketBuilder::ipv4(s, SERVER4)
            .tcp(CLIENT_PORT, SMTP, flags)
            .payload(&[0x55; 64])
            .ipv4_fragment(0, true);
        ipv4_first_fragment(&b, tcp_octets)
    };
    vec![
        // IPv4: the TCP header does not fit in the first fragment.
        row(
            "IPv4 SYN with a 60-octet TCP header, first fragment carries 24 octets of it",
            ipv4_first_fragment(&big4, 24),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv4 SYN with a 60-octet TCP header, first fragment carries 32 octets of it",
            ipv4_first_fragment(&big4, 32),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv4 with 40 octets of IP options, SYN header split after 24 octets",
            ipv4_first_fragment(&big4_ip_options, 24),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "the later fragment of that SYN alone: not gated (the first decides)",
            ipv4_last_fragment(&big4, 24),
            Pass,
            NotGated,
        ),
        row(
            "IPv4 split SYN from a granted source passes",
            ipv4_first_fragment(
                &syn4(GRANTED4, SMTP)
                    .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
                    .ipv4_fragment(0, true),
                24,
            ),
            Pass,
            Granted,
        )
        .reason(JudgedFragment),
        row(
            "IPv4 split SYN to a port that is not gated: not gated",
            ipv4_first_fragment(
                &syn4(s, 80)
                    .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
                    .ipv4_fragment(0, true),
                24,
            ),
            Pass,
            NotGated,
        ),
        // What reassembly keeps of a first fragment: whole 8-octet units.
        row(
            "first fragment of 20 TCP octets showing ACK (flags kept): not gated",
            first_fragment_with(ACK | PSH, 20),
            Pass,
            NotGated,
        ),
        row(
            "first fragment of 14 TCP octets showing ACK: reassembly trims it to 8, judged by port",
            first_fragment_with(ACK, 14),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "first fragment with fewer than 8 TCP octets: the stack discards it",
            first_fragment_with(SYN, 6),
            Pass,
            Malformed,
        ),
        row(
            "first fragment of a large UDP datagram: not gated",
            {
                let b = PacketBuilder::ipv4(s, SERVER4)
                    .udp(CLIENT_PORT, SMTP)
                    .payload(&[7; 200])
                    .ipv4_fragment(0, true);
                ipv4_first_fragment(&b, 104)
            },
            Pass,
            NotGated,
        ),
        // IPv6: the same with a fragment header.
        row(
            "IPv6 SYN with a 60-octet TCP header, first fragment carries 24 octets of it",
            first6(frag6(s6, vec![Ipv6Ext::first_fragment(3)]), 24),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 split SYN behind hop-by-hop and fragment headers, 32 octets",
            first6(
                frag6(s6, vec![Ipv6Ext::HOP_BY_HOP, Ipv6Ext::first_fragment(4)]),
                32,
            ),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 split SYN from a granted source passes",
            first6(frag6(GRANTED6, vec![Ipv6Ext::first_fragment(5)]), 24),
            Pass,
            Granted,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 first fragment showing ACK: not gated",
            {
                let b = PacketBuilder::ipv6(s6, SERVER6)
                    .ext(Ipv6Ext::first_fragment(6))
                    .tcp(CLIENT_PORT, SMTP, ACK)
                    .payload(&[1; 100]);
                ipv6_cut(&b.build(), b.l3_offset(), b.l4_offset() + 40)
            },
            Pass,
            NotGated,
        ),
        row(
            "IPv6 extension chain cut by the fragment boundary: port unknown, judged",
            cut_chain,
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        row(
            "IPv6 first fragment ends where the TCP header would start: judged",
            chain_ends_at_fragment_end,
            Drop,
            DeniedDrop,
        )
        .reason(JudgedFragment),
        // IPv6 payload length 0 with hop-by-hop: Linux takes the frame's length.
        row(
            "IPv6 payload length 0 without hop-by-hop: the frame's length counts (GSO)",
            syn6(s6, SMTP).ipv6_payload_len(0).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 payload length 0 with hop-by-hop (no jumbo option) before a SYN",
            jumbo_hbh(s6),
            Drop,
            DeniedDrop,
        ),
        row(
            "IPv6 payload length 0 with hop-by-hop from a granted source passes",
            jumbo_hbh(GRANTED6),
            Pass,
            Granted,
        ),
        // VLAN priority tags: Linux strips every VID-0 tag.
        row(
            "three VLAN priority tags (VID 0)",
            tags(3, syn4(s, SMTP)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "four VLAN priority tags (VID 0), IPv6",
            tags(4, syn6(s6, SMTP)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "eight VLAN tags: the walk's limit",
            tags(8, syn4(s, SMTP)).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "eight VLAN tags from a granted source pass",
            tags(8, syn4(GRANTED4, SMTP)).build(),
            Pass,
            Granted,
        ),
        row(
            "eight VLAN tags to a port that is not gated: not gated",
            tags(8, syn4(s, 80)).build(),
            Pass,
            NotGated,
        ),
        row(
            "nine VLAN tags: deeper than the walk, source unknown, dropped",
            tags(9, syn4(GRANTED4, SMTP)).build(),
            Drop,
            DeniedUnwalkable,
        ),
        row(
            "monitor mode: nine VLAN tags pass, counted",
            tags(9, syn4(s, SMTP)).build(),
            Pass,
            Monitored,
        )
        .mode(Monitor),
        row(
            "unconfigured gate: nine VLAN tags pass",
            tags(9, syn4(s, SMTP)).build(),
            Pass,
            NotGated,
        )
        .settings(Settings::UNCONFIGURED),
        row(
            "a SYN behind a 248-octet destination options header",
            syn6(s6, SMTP).ext(Ipv6Ext::DestOpts { len: 30 }).build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "a SYN whose TCP header starts at 1022, the deepest the walk reaches",
            syn6(s6, SMTP).ext(Ipv6Ext::DestOpts { len: 120 }).build(),
            Drop,
            DeniedDrop,
        ),
        // 1026 is the shallowest start past 1024 a frame can have (header
        // starts lie at 2 or 6 modulo 8): with 1022 above, it pins the
        // limit.
        row(
            "a SYN whose TCP header starts at 1026 (one VLAN tag), past the walk's 1024",
            tags(1, syn6(s6, SMTP).ext(Ipv6Ext::DestOpts { len: 120 })).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
        row(
            "a SYN whose TCP header starts at 1030, past the walk's 1024",
            syn6_past_the_walk(s6).build(),
            Drop,
            DeniedDrop,
        )
        .reason(JudgedUnwalkable),
    ]
}

#[test]
fn bypass_table_xdp() {
    run_table(Hook::Xdp, &bypass_rows());
}

#[test]
fn bypass_table_tc() {
    run_table(Hook::Tc, &bypass_rows());
}

/// `--dest`: only SYNs to a destination in the scope are gated; the rest
/// pass as not gated, and the scope is ignored while it is off.
/// Exempt networks of other lengths than the fixture's /24 and /64 (the
/// trie matches by prefix, not by whole octets): a source just inside
/// passes as exempt, one just outside is denied.
#[test]
fn exempt_prefixes_of_other_lengths() {
    let v4 = |a: [u8; 4]| Ipv4Addr::from(a);
    let v6 = |text: &str| text.parse::<Ipv6Addr>().expect("IPv6 address");
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut gate = Gate::load();
        for net in [
            "172.16.0.0/12",
            "198.51.100.77/32",
            "2001:db8:1000::/36",
            "2001:db8:2::7/128",
        ] {
            gate.maps
                .exempt_add(net.parse().expect("CIDR"))
                .expect("adding an exempt network");
        }
        let inside = |name: &str, frame: Vec<u8>| row(name, frame, Pass, Exempt);
        let outside = |name: &str, frame: Vec<u8>| row(name, frame, Drop, DeniedDrop);
        for row in [
            inside(
                "/12, last address",
                syn4(v4([172, 31, 255, 255]), SMTP).build(),
            ),
            outside("/12, next address", syn4(v4([172, 32, 0, 0]), SMTP).build()),
            outside(
                "/12, address before",
                syn4(v4([172, 15, 255, 255]), SMTP).build(),
            ),
            inside(
                "/32, the address",
                syn4(v4([198, 51, 100, 77]), SMTP).build(),
            ),
            outside(
                "/32, its neighbour",
                syn4(v4([198, 51, 100, 76]), SMTP).build(),
            ),
            inside(
                "/36, last address",
                syn6(v6("2001:db8:1fff:ffff:ffff:ffff:ffff:ffff"), SMTP).build(),
            ),
            outside(
                "/36, next address",
                syn6(v6("2001:db8:2000::"), SMTP).build(),
            ),
            inside("/128, the address", syn6(v6("2001:db8:2::7"), SMTP).build()),
            outside(
                "/128, its neighbour",
                syn6(v6("2001:db8:2::8"), SMTP).build(),
            ),
        ] {
            gate.check(hook, &row);
        }
    }
}

/// The denial log is limited per CPU by its token bucket: a burst of
/// denied SYNs writes at most the burst on each CPU the runs land on and
/// counts the rest as suppressed. (With the bucket planted away, every
/// denial was logged and the whole suite still passed.)
#[test]
fn denial_log_is_limited_by_its_bucket() {
    const BURST: u32 = 3;
    const SYNS: u64 = 40;
    let mut gate = Gate::with_fixture();
    gate.set_settings(&Settings {
        // One token a second: nothing refills while the runs last.
        log_rate_per_sec: 1,
        log_burst: BURST,
        ..settings(DenyMode::Drop)
    });
    let syn = syn4(STRANGER4, SMTP).build();
    let started = std::time::Instant::now();
    for _ in 0..SYNS {
        let run = gate.try_run(Hook::Xdp, &syn).expect("a test run");
        assert_eq!(run.code, XDP_DROP, "{}", code_name(Hook::Xdp, run.code));
    }
    let elapsed = started.elapsed();
    let per_cpu: Vec<LogBucket> = gate.maps.log_buckets().expect("reading the log buckets");
    let cpus_used = per_cpu.iter().filter(|b| b.refilled_at_ns != 0).count() as u64;
    let suppressed: u64 = per_cpu.iter().map(|b| b.suppressed).sum();
    let logged = SYNS - suppressed;
    assert!(cpus_used >= 1, "no CPU's bucket was touched");
    assert!(
        (1..=(BURST as u64 + elapsed.as_secs() + 1) * cpus_used).contains(&logged),
        "{logged} of {SYNS} denials logged on {cpus_used} CPU(s) in {elapsed:?}, \
         with a burst of {BURST} and 1 line/s"
    );
}

#[test]
fn destination_scope() {
    let scoped = Settings {
        dest_scoped: 1,
        ..settings(DenyMode::Drop)
    };
    let relay6 = Ipv6Addr::new(0x2001, 0xdb8, 0x25, 0, 0, 0, 0, 0x99);
    let rows = [
        row(
            "in scope: IPv4 SYN",
            syn4(STRANGER4, SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .settings(scoped),
        row(
            "out of scope: a SYN to the MX address passes",
            PacketBuilder::ipv4(STRANGER4, Ipv4Addr::new(10, 0, 0, 26))
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Pass,
            NotGated,
        )
        .settings(scoped),
        row(
            "in scope: IPv6 SYN",
            syn6(STRANGER6, SMTP).build(),
            Drop,
            DeniedDrop,
        )
        .settings(scoped),
        row(
            "out of scope: IPv6",
            PacketBuilder::ipv6(STRANGER6, relay6)
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Pass,
            NotGated,
        )
        .settings(scoped),
        row(
            "out of scope: a split SYN passes too",
            ipv4_first_fragment(
                &PacketBuilder::ipv4(STRANGER4, Ipv4Addr::new(10, 0, 0, 26))
                    .tcp(CLIENT_PORT, SMTP, SYN)
                    .tcp_options(&FORTY_OCTETS_OF_TCP_OPTIONS)
                    .ipv4_fragment(0, true),
                24,
            ),
            Pass,
            NotGated,
        )
        .settings(scoped),
        row(
            "scope off: every destination is gated",
            PacketBuilder::ipv4(STRANGER4, Ipv4Addr::new(10, 0, 0, 26))
                .tcp(CLIENT_PORT, SMTP, SYN)
                .build(),
            Drop,
            DeniedDrop,
        ),
        row(
            "scoped, but headers too deep to find the destination: dropped",
            (0..9)
                .fold(
                    PacketBuilder::ipv4(STRANGER4, Ipv4Addr::new(10, 0, 0, 26)).tcp(
                        CLIENT_PORT,
                        SMTP,
                        SYN,
                    ),
                    |b, _| b.vlan(VlanTag::dot1q(0)),
                )
                .build(),
            Drop,
            DeniedUnwalkable,
        )
        .settings(scoped),
    ];
    for hook in [Hook::Xdp, Hook::Tc] {
        let mut gate = Gate::with_fixture_scoped(&["10.0.0.24/31", "2001:db8:25::/122"]);
        for r in &rows {
            gate.check(hook, r);
        }
    }
}
