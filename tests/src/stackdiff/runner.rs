//! The differential run: a [`Lab`] with the gate on the server's veth in
//! one attach mode, VLAN devices on both ends, the frames of each case
//! sent raw from the client namespace, SYN-ACKs captured on the client
//! veth.
//!
//! Each round of cases goes through four passes, every case instance with
//! its own source port and fragment identification:
//!
//! 1. **drop**, no grant: any SYN-ACK is a bypass (and the listener must
//!    accept nothing);
//! 2. **monitor** (`settings --deny monitor`): which cases the stack
//!    accepts at all, the proof that the generator reaches it;
//! 3. **granted** (`--deny drop`, every client address granted): each
//!    plausible case the stack accepted in monitor mode must be accepted
//!    again;
//! 4. **non-gated port** (no grant, the same cases to port 2525, where
//!    the lab serves too): likewise.
//!
//! Then checks of ordinary traffic that must never break (see
//! [`DiffLab::legit_checks`]).
//!
//! Network safety: the frames leave through an AF_PACKET socket made inside
//! the client namespace, onto its veth, whose peer is in the server
//! namespace; neither namespace has a default route (checked after the
//! VLAN devices are added). Every loop is bounded in count and time, and
//! the [`Lab`] deletes the namespaces when dropped, also on panic.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::{
    gen::{self, Case, Env, Ids, Net, Recipe},
    raw::{Capture, RawSender, SynAck},
    report::{CaseOutcome, Check, ModeReport},
    rng::mix,
    wire::{Tag, TPID_8021AD, TPID_8021Q},
};
use testkit::{
    denial::GateVerdict,
    lab::{Lab, Link},
    netns::{assert_no_default_route, bring_up_with_addresses, in_netns, ip, netns_sysctl},
    packets::{
        tcp_flags, Ipv6Ext, PacketBuilder, VlanTag, IPV4_OPTION_ROUTER_ALERT, LINUX_SYN_OPTIONS,
    },
    process::describe,
    smtp::{connect, ConnectResult, BANNER, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

/// A port the lab serves but the gate does not gate.
pub const CONTROL_PORT: u16 = 2525;
/// The UDP port of the fragmented-datagram check.
pub const UDP_PORT: u16 = 4000;
/// Source ports of the cases cycle through this range (below Linux's
/// ephemeral ports, so real connections never collide with them).
const PORTS: std::ops::RangeInclusive<u16> = 10_000..=32_000;
/// MTU tried first: room for paged frames. Native XDP on a veth refuses
/// it unless the program handles multi-buffer frames; then [`SMALL_MTU`].
const LARGE_MTU: u32 = 9000;
const SMALL_MTU: u32 = 3400;
/// After this many frames the sender pauses, so that no receive queue on
/// the way (the veth's XDP ring holds 256) overflows.
const PACE_EVERY: usize = 16;
const PACE: Duration = Duration::from_millis(1);
/// Waiting for SYN-ACKs after the last frame of a pass: until the
/// sentinel, a plain SYN to the non-gated port sent after every probe, is
/// answered (the server handles the frames of its veth in order, so by
/// then it has answered every probe it was going to answer, however slow
/// the machine), then until none came for `QUIET` (a reply that waited for
/// neighbour resolution may come after the sentinel's). `REPLIES_BOUND`
/// only a hang reaches.
const QUIET: Duration = Duration::from_millis(250);
const REPLIES_BOUND: Duration = Duration::from_secs(30);

/// Where the gate attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Xdp,
    XdpSkb,
    Tc,
}

impl Mode {
    pub const ALL: [Self; 3] = [Self::Xdp, Self::XdpSkb, Self::Tc];

    /// The `--mode` argument of `smtp-gate attach`.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::XdpSkb => "xdp-skb",
            Self::Tc => "tc",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.arg() == s)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub seed: u64,
    /// Random cases at most; the regression shapes come on top when
    /// `regressions`.
    pub cases: usize,
    pub regressions: bool,
    /// Cases per round of the four passes.
    pub round: usize,
    /// Stop after the round in which this many frames were sent in drop
    /// mode.
    pub frames: Option<usize>,
    /// Stop after the round that ends past this.
    pub time_limit: Option<Duration>,
    /// Keep the frames of every case (else only of bypasses and refused
    /// cases: long runs would hold them all).
    pub keep_frames: bool,
    /// Run the ordinary-traffic checks.
    pub legit: bool,
    /// Only this random case (to replay one printed by an earlier run).
    pub only: Option<usize>,
}

impl Config {
    /// The bounded run of the test suite: `cases` random cases and the
    /// regressions in one round, every frame kept, ordinary traffic checked.
    pub fn bounded(mode: Mode, seed: u64, cases: usize) -> Self {
        Self {
            mode,
            seed,
            cases,
            regressions: true,
            round: usize::MAX,
            frames: None,
            time_limit: None,
            keep_frames: true,
            legit: true,
            only: None,
        }
    }
}

/// The lab of one differential run.
pub struct DiffLab {
    pub lab: Lab,
    pub mode: Mode,
    pub env: Env,
    pub mtu: u32,
    sender: RawSender,
    next_port: u16,
    next_frag: u32,
    /// Every address the client has (veth and VLAN devices).
    client_addrs: Vec<IpAddr>,
    pub notes: Vec<String>,
}

fn mac_of(ns: &str, iface: &str) -> [u8; 6] {
    let text = ip(ns, &["-o", "link", "show", "dev", iface]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "link/ether")
        .unwrap_or_else(|| panic!("no link/ether in: {text}"));
    let mut mac = [0u8; 6];
    for (i, part) in words[at + 1].split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("MAC {text}: {e}"));
    }
    mac
}

/// Whether `ip link add ... type vlan` works (the kernel may have no
/// 802.1Q support at all); the probe device is deleted again.
fn vlan_devices_supported(ns: &str, lower: &str) -> bool {
    let out = Command::new("ip")
        .args([
            "-n", ns, "link", "add", "link", lower, "name", "vprobe", "type", "vlan", "id", "99",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip: {e}"));
    if out.status.success() {
        ip(ns, &["link", "del", "dev", "vprobe"]);
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Unknown device type") || err.contains("not supported") {
        return false;
    }
    panic!("cannot add a VLAN device: {}", describe(&out));
}

/// The VLAN devices both ends get: (name, tags from the veth, parent,
/// third octet of the IPv4 /24 and IPv6 /64).
const VLANS: [(&str, &str, u16, u16, &str, u8); 3] = [
    ("Q100", "vq100", TPID_8021Q, 100, "", 100),
    ("AD300", "vad300", TPID_8021AD, 300, "", 103),
    ("AD300/Q400", "vq400", TPID_8021Q, 400, "vad300", 104),
];

impl DiffLab {
    /// Builds the lab, attaches the gate in `mode` with `--deny drop`, adds
    /// the VLAN devices and the non-gated listener. Panics (after cleaning
    /// up) if anything is missing.
    pub fn new(mode: Mode, seed: u64) -> Self {
        let mut lab = Lab::new();
        lab.serve_smtp(CONTROL_PORT);
        let link = lab.client.clone();
        let server_ns = lab.server_ns.clone();
        let ends = [
            (server_ns.clone(), link.server_iface.clone()),
            (link.client_ns.clone(), link.client_iface.clone()),
        ];
        let set_mtu = |mtu: u32| {
            for (ns, iface) in &ends {
                ip(ns, &["link", "set", "dev", iface, "mtu", &mtu.to_string()]);
            }
        };
        let attach = |lab: &Lab| {
            lab.gate_in_server(&[
                "attach",
                "--iface",
                &link.server_iface,
                "--mode",
                mode.arg(),
                "--deny",
                "drop",
            ])
        };
        let mut notes = Vec::new();
        set_mtu(LARGE_MTU);
        let mut mtu = LARGE_MTU;
        let out = attach(&lab);
        if !out.status.success() {
            if mode != Mode::Xdp {
                panic!(
                    "attaching the gate (--mode {}) failed: {}",
                    mode.arg(),
                    describe(&out)
                );
            }
            notes.push(format!(
                "native XDP refused MTU {LARGE_MTU} ({}); MTU {SMALL_MTU}, no paged frames",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            set_mtu(SMALL_MTU);
            mtu = SMALL_MTU;
            let out = attach(&lab);
            if !out.status.success() {
                panic!("attaching the gate (--mode xdp) failed: {}", describe(&out));
            }
        }
        let shown = lab.server_link_show(&link.server_iface);
        match mode {
            Mode::Xdp => assert!(
                shown.contains("prog/xdp") && !shown.contains("xdpgeneric"),
                "--mode xdp is not native XDP on the veth: {shown}"
            ),
            Mode::XdpSkb => assert!(
                shown.contains("xdpgeneric"),
                "--mode xdp-skb is not generic XDP: {shown}"
            ),
            Mode::Tc => assert!(
                !lab.tc_ingress_programs(&link.server_iface).is_empty(),
                "--mode tc: no program on the tcx ingress of {}",
                link.server_iface
            ),
        }

        // VLAN devices, the same on both ends.
        let mut nets = vec![Net {
            name: "base".to_string(),
            path: Vec::new(),
            client_v4: link.client_v4,
            server_v4: link.server_v4,
            client_v6: link.client_v6,
            server_v6: link.server_v6,
        }];
        let vlan_devices = vlan_devices_supported(&server_ns, &link.server_iface);
        if !vlan_devices {
            notes.push(
                "NOT TESTED: this kernel has no 802.1Q VLAN devices (CONFIG_VLAN_8021Q is off), \
                 so no traffic through a server VLAN device; VLAN stacks are sent with priority \
                 tags (VID 0, which the stack strips) and to VIDs nobody serves"
                    .to_string(),
            );
        }
        for (name, dev, tpid, vid, parent, k) in VLANS.into_iter().filter(|_| vlan_devices) {
            for (ns, veth, host) in [
                (&server_ns, &link.server_iface, 1u8),
                (&link.client_ns, &link.client_iface, 2u8),
            ] {
                let lower = if parent.is_empty() {
                    veth.as_str()
                } else {
                    parent
                };
                let proto = if tpid == TPID_8021AD {
                    "802.1ad"
                } else {
                    "802.1Q"
                };
                ip(
                    ns,
                    &[
                        "link",
                        "add",
                        "link",
                        lower,
                        "name",
                        dev,
                        "type",
                        "vlan",
                        "protocol",
                        proto,
                        "id",
                        &vid.to_string(),
                    ],
                );
                let v4 = Ipv4Addr::new(10, 231, k, host);
                let v6 = Ipv6Addr::new(0xfd00, 0x231, u16::from(k), 0, 0, 0, 0, u16::from(host));
                bring_up_with_addresses(ns, dev, v4, v6);
            }
            let mut path: Vec<Tag> = Vec::new();
            if !parent.is_empty() {
                path.push(Tag {
                    tpid: TPID_8021AD,
                    tci: 300,
                });
            }
            path.push(Tag { tpid, tci: vid });
            nets.push(Net::numbered(name, path, k));
        }
        for ns in [&server_ns, &link.client_ns] {
            assert_no_default_route(ns);
        }
        // Room for thousands of half-reassembled datagrams (the gate drops
        // one fragment, the others wait), and a shorter wait for them.
        for (key, value) in [
            ("net/ipv4/ipfrag_high_thresh", "268435456"),
            ("net/ipv4/ipfrag_low_thresh", "201326592"),
            ("net/ipv4/ipfrag_time", "15"),
            ("net/ipv6/ip6frag_high_thresh", "268435456"),
            ("net/ipv6/ip6frag_low_thresh", "201326592"),
            ("net/ipv6/ip6frag_time", "15"),
            ("net/ipv4/tcp_syncookies", "1"),
        ] {
            netns_sysctl(&server_ns, key, value);
        }

        let env = Env {
            client_mac: mac_of(&link.client_ns, &link.client_iface),
            server_mac: mac_of(&server_ns, &link.server_iface),
            nets,
            max_frame: mtu as usize + 14,
        };
        let client_addrs = env
            .nets
            .iter()
            .flat_map(|n| [IpAddr::from(n.client_v4), IpAddr::from(n.client_v6)])
            .collect();
        let sender = RawSender::open(&link.client_ns, &link.client_iface)
            .unwrap_or_else(|e| panic!("cannot open the raw sender: {e}"));
        let start = mix(seed, mode as u64);
        Self {
            lab,
            mode,
            env,
            mtu,
            sender,
            next_port: *PORTS.start() + (start % 1000) as u16,
            next_frag: (start >> 16) as u32,
            client_addrs,
            notes,
        }
    }

    fn next_ids(&mut self) -> Ids {
        let src_port = self.next_port;
        self.next_port = if self.next_port >= *PORTS.end() {
            *PORTS.start()
        } else {
            self.next_port + 1
        };
        self.next_frag = self.next_frag.wrapping_add(1);
        Ids {
            src_port,
            frag_id: self.next_frag,
        }
    }

    /// A fresh instance of `recipe` to `dst_port`.
    pub fn instantiate(&mut self, recipe: Recipe, dst_port: u16) -> Case {
        let ids = self.next_ids();
        gen::build(&self.env, recipe, ids, dst_port)
    }

    /// `smtp-gate settings --deny MODE`.
    pub fn set_deny(&self, deny: &str) {
        self.lab.gate_ok(&["settings", "--deny", deny]);
    }

    pub fn grant_all(&self) {
        for addr in &self.client_addrs {
            self.lab.gate_ok(&["grant", &addr.to_string()]);
        }
    }

    pub fn revoke_all(&self) {
        for addr in &self.client_addrs {
            self.lab.gate_ok(&["revoke", &addr.to_string()]);
        }
    }

    /// The gate's counters.
    pub fn stats(&self) -> HashMap<String, u64> {
        self.lab
            .stats()
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends every frame of every probe (`(source port, frames)`), then
    /// waits for SYN-ACKs. Returns the first SYN-ACK to each probe's port
    /// (by probe), and the number of frames sent.
    pub fn send_probes(&mut self, probes: &[(u16, &[Vec<u8>])]) -> (Vec<Option<SynAck>>, usize) {
        let sentinel_port = self.next_ids().src_port;
        let base = &self.env.nets[0];
        let sentinel = PacketBuilder::ipv4(base.client_v4, base.server_v4)
            .macs(self.env.client_mac, self.env.server_mac)
            .tcp(sentinel_port, CONTROL_PORT, tcp_flags::SYN)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .build();
        let mut ports: HashSet<u16> = probes.iter().map(|(p, _)| *p).collect();
        ports.insert(sentinel_port);
        let capture = Capture::start(
            &self.lab.client.client_ns,
            &self.lab.client.client_iface,
            ports,
        )
        .unwrap_or_else(|e| panic!("cannot start the capture: {e}"));
        let mut sent = 0;
        for (port, frames) in probes {
            for frame in frames.iter() {
                let mut tries = 0;
                loop {
                    match self.sender.send(frame) {
                        Ok(()) => break,
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 50 => {
                            tries += 1;
                            thread::sleep(Duration::from_millis(2));
                        }
                        Err(e) => panic!(
                            "sending frame of probe {port} ({} octets): {e}\n{}",
                            frame.len(),
                            crate::stackdiff::wire::hex(frame)
                        ),
                    }
                }
                sent += 1;
                if sent % PACE_EVERY == 0 {
                    thread::sleep(PACE);
                }
            }
        }
        self.sender
            .send(&sentinel)
            .unwrap_or_else(|e| panic!("sending the sentinel SYN: {e}"));
        let sent_at = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(25));
            assert!(
                sent_at.elapsed() < REPLIES_BOUND,
                "the sentinel SYN to {}:{CONTROL_PORT} was not answered in {REPLIES_BOUND:?}: \
                 the SYN-ACKs of this pass cannot be trusted",
                base.server_v4
            );
            let since = capture.last_at().map_or(sent_at, |l| l.max(sent_at));
            if capture.has_seen(sentinel_port) && since.elapsed() >= QUIET {
                break;
            }
        }
        let replies = capture
            .finish()
            .unwrap_or_else(|e| panic!("the capture failed: {e}"));
        let mut first: HashMap<u16, SynAck> = HashMap::new();
        for r in replies {
            first.entry(r.dst_port).or_insert(r);
        }
        (
            probes.iter().map(|(p, _)| first.get(p).cloned()).collect(),
            sent,
        )
    }

    /// Sends `cases` and returns the SYN-ACK each one got, if any.
    pub fn send_pass(&mut self, cases: &[Case]) -> (Vec<Option<SynAck>>, usize) {
        let probes: Vec<(u16, &[Vec<u8>])> = cases
            .iter()
            .map(|c| (c.ids.src_port, c.frames.as_slice()))
            .collect();
        self.send_probes(&probes)
    }

    /// Fresh instances of `recipes` to `dst_port`; those not answered are
    /// sent once more (fresh again). Returns whether each was answered and
    /// the frames sent.
    fn pass_with_retry(&mut self, recipes: &[Recipe], dst_port: u16) -> (Vec<bool>, usize, usize) {
        let cases: Vec<Case> = recipes
            .iter()
            .map(|r| self.instantiate(*r, dst_port))
            .collect();
        let (replies, mut frames) = self.send_pass(&cases);
        let mut answered: Vec<bool> = replies.iter().map(Option::is_some).collect();
        let missing: Vec<usize> = (0..recipes.len()).filter(|i| !answered[*i]).collect();
        if !missing.is_empty() {
            let again: Vec<Case> = missing
                .iter()
                .map(|i| self.instantiate(recipes[*i], dst_port))
                .collect();
            let (replies, more) = self.send_pass(&again);
            frames += more;
            for (i, r) in missing.iter().zip(replies) {
                answered[*i] = r.is_some();
            }
        }
        (answered, frames, missing.len())
    }

    /// One round: the four passes over `recipes`.
    pub fn round(&mut self, recipes: &[Recipe], report: &mut ModeReport) {
        // 1. Drop, no grant.
        let drop_cases: Vec<Case> = recipes
            .iter()
            .map(|r| self.instantiate(*r, SMTP_PORT))
            .collect();
        let accepted_before = self.lab.accepted();
        let stats_before = self.stats();
        let (bypass, frames) = self.send_pass(&drop_cases);
        report.frames.drop += frames;
        report.accepted_during_drop += self.lab.accepted() - accepted_before;
        add_delta(&mut report.drop_stats, &stats_before, &self.stats());

        // 2. Monitor.
        self.set_deny("monitor");
        let monitor_cases: Vec<Case> = recipes
            .iter()
            .map(|r| self.instantiate(*r, SMTP_PORT))
            .collect();
        let stats_before = self.stats();
        let (monitor, frames) = self.send_pass(&monitor_cases);
        report.frames.monitor += frames;
        add_delta(&mut report.monitor_stats, &stats_before, &self.stats());
        self.set_deny("drop");

        // 3. Granted, and 4. to the non-gated port: the plausible cases
        // the stack accepted.
        let legit: Vec<usize> = (0..recipes.len())
            .filter(|i| drop_cases[*i].plausible && monitor[*i].is_some())
            .collect();
        let legit_recipes: Vec<Recipe> = legit.iter().map(|i| recipes[*i]).collect();
        self.grant_all();
        let (granted, frames, retried) = self.pass_with_retry(&legit_recipes, SMTP_PORT);
        report.frames.granted += frames;
        report.retried += retried;
        self.revoke_all();
        let (control, frames, retried) = self.pass_with_retry(&legit_recipes, CONTROL_PORT);
        report.frames.control += frames;
        report.retried += retried;

        let mut granted_of: HashMap<usize, bool> = HashMap::new();
        let mut control_of: HashMap<usize, bool> = HashMap::new();
        for (k, i) in legit.iter().enumerate() {
            granted_of.insert(*i, granted[k]);
            control_of.insert(*i, control[k]);
        }
        for (i, case) in drop_cases.into_iter().enumerate() {
            report.outcomes.push(CaseOutcome {
                bypass: bypass[i].clone(),
                monitor: monitor[i].is_some(),
                granted: granted_of.get(&i).copied(),
                control: control_of.get(&i).copied(),
                case,
            });
        }
    }

    /// Ordinary traffic that must pass the gate in drop mode with no grant
    /// (or, for the established connection, after the grant is revoked).
    pub fn legit_checks(&mut self) -> Vec<Check> {
        let mut checks = Vec::new();
        let client = self.lab.client.clone();
        let ns = client.client_ns.clone();

        // The gate is there: real SYNs to the gated port are dropped (as
        // the gate counted them: a timeout alone could be a slow machine).
        for addr in [
            IpAddr::from(client.server_v4),
            IpAddr::from(client.server_v6),
        ] {
            checks.push(self.dropped_check(
                format!("a real SYN to {addr}:25 with no grant is dropped"),
                &client,
                addr,
            ));
        }

        // VLAN devices: ordinary TCP to a non-gated port passes; SYNs to
        // the gated port over a VLAN are dropped.
        for net in self.env.nets.clone().into_iter().skip(1) {
            for addr in [IpAddr::from(net.server_v4), IpAddr::from(net.server_v6)] {
                let r = connect_retrying(&ns, addr, CONTROL_PORT);
                checks.push(Check::new(
                    format!("TCP over VLAN {} to {addr}:{CONTROL_PORT}", net.name),
                    matches!(&r, ConnectResult::Connected(b) if b == BANNER),
                    r.to_string(),
                ));
            }
        }
        if let Some(qinq) = self.env.nets.last().filter(|n| n.path.len() == 2) {
            let addr = qinq.server_v4;
            let name = format!(
                "a real SYN over VLAN {} to {addr}:25 with no grant is dropped",
                qinq.name
            );
            checks.push(self.dropped_check(name, &client, addr.into()));
        }

        // Fragmented UDP datagrams, IPv4 and IPv6.
        checks.extend(self.udp_fragments_check());

        // IPv6 extension headers and IPv4 options to a non-gated port.
        checks.extend(self.extension_headers_check());

        // An established connection keeps working after its grant is
        // revoked, large writes included.
        checks.extend(self.established_check());
        checks
    }

    /// A real connect from `client` to `addr:25` that the gate must drop:
    /// judged by the gate's counters and the listener (see
    /// `testkit::denial`).
    fn dropped_check(&self, name: String, client: &Link, addr: IpAddr) -> Check {
        let judged = self.lab.judge(client, addr, SMTP_PORT, DENY_TIMEOUT);
        let dropped = judged.verdict() == GateVerdict::Denied
            && judged.attempt.result == ConnectResult::TimedOut
            && judged.attempt.syns.admits(judged.moved.of("denied_drop"));
        Check::new(name, dropped, judged.to_string())
    }

    fn udp_fragments_check(&mut self) -> Vec<Check> {
        let size = (self.mtu as usize * 5 / 2).min(60_000);
        let count = 4;
        let server = in_netns(&self.lab.server_ns, || {
            UdpSocket::bind((Ipv6Addr::UNSPECIFIED, UDP_PORT))
        })
        .unwrap_or_else(|e| panic!("binding the UDP listener: {e}"));
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("UDP read timeout");
        let mut checks = Vec::new();
        let link = self.lab.client.clone();
        for (family, target) in [
            ("IPv4", SocketAddr::new(link.server_v4.into(), UDP_PORT)),
            ("IPv6", SocketAddr::new(link.server_v6.into(), UDP_PORT)),
        ] {
            let client = in_netns(&link.client_ns, || {
                let any: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                UdpSocket::bind(any)
            })
            .unwrap_or_else(|e| panic!("binding the UDP client: {e}"));
            let mut got = 0;
            let mut wrong = Vec::new();
            for n in 0..count {
                let datagram: Vec<u8> = (0..size).map(|i| (i as u8) ^ (n as u8)).collect();
                if let Err(e) = client.send_to(&datagram, target) {
                    wrong.push(format!("send {n}: {e}"));
                }
                thread::sleep(Duration::from_millis(5));
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut buf = vec![0u8; 65536];
            while got + wrong.len() < count && Instant::now() < deadline {
                match server.recv_from(&mut buf) {
                    Ok((n, _from)) => {
                        let tag = buf[0];
                        if n == size && (0..n).all(|i| buf[i] == (i as u8) ^ tag) {
                            got += 1;
                        } else {
                            wrong.push(format!("a datagram of {n} octets with other content"));
                        }
                    }
                    Err(_) => continue,
                }
            }
            checks.push(Check::new(
                format!(
                    "{count} fragmented {family} UDP datagrams of {size} octets (MTU {}) arrive",
                    self.mtu
                ),
                got == count,
                format!("{got} of {count} arrived; {}", wrong.join("; ")),
            ));
        }
        checks
    }

    fn extension_headers_check(&mut self) -> Vec<Check> {
        let link = self.lab.client.clone();
        let (src_mac, dst_mac) = (self.env.client_mac, self.env.server_mac);
        let shapes: Vec<(&str, Vec<Ipv6Ext>)> = vec![
            ("hop-by-hop", vec![Ipv6Ext::HOP_BY_HOP]),
            ("destination options", vec![Ipv6Ext::DEST_OPTS]),
            (
                "hop-by-hop + destination options",
                vec![Ipv6Ext::HOP_BY_HOP, Ipv6Ext::DEST_OPTS],
            ),
            (
                "hop-by-hop + routing + destination options",
                vec![Ipv6Ext::HOP_BY_HOP, Ipv6Ext::ROUTING, Ipv6Ext::DEST_OPTS],
            ),
            (
                "atomic fragment + destination options",
                vec![
                    Ipv6Ext::Fragment {
                        offset: 0,
                        more: false,
                        id: 77,
                    },
                    Ipv6Ext::DEST_OPTS,
                ],
            ),
        ];
        let mut probes: Vec<(String, u16, Vec<Vec<u8>>)> = Vec::new();
        for (name, exts) in shapes {
            let port = self.next_ids().src_port;
            let frame = PacketBuilder::ipv6(link.client_v6, link.server_v6)
                .macs(src_mac, dst_mac)
                .exts(exts)
                .tcp(port, CONTROL_PORT, tcp_flags::SYN)
                .tcp_options(&LINUX_SYN_OPTIONS)
                .build();
            probes.push((format!("IPv6 SYN with {name}"), port, vec![frame]));
        }
        for (name, tags) in [
            (
                "one priority tag (802.1Q VID 0)",
                vec![VlanTag::dot1q(0).with_priority(5)],
            ),
            (
                "two priority tags (802.1ad VID 0, 802.1Q VID 0)",
                vec![VlanTag::dot1ad(0), VlanTag::dot1q(0).with_priority(3)],
            ),
        ] {
            for v6 in [false, true] {
                let port = self.next_ids().src_port;
                let mut b = if v6 {
                    PacketBuilder::ipv6(link.client_v6, link.server_v6)
                } else {
                    PacketBuilder::ipv4(link.client_v4, link.server_v4)
                };
                for tag in &tags {
                    b = b.vlan(*tag);
                }
                let frame = b
                    .macs(src_mac, dst_mac)
                    .tcp(port, CONTROL_PORT, tcp_flags::SYN)
                    .tcp_options(&LINUX_SYN_OPTIONS)
                    .build();
                let family = if v6 { "IPv6" } else { "IPv4" };
                probes.push((format!("{family} SYN with {name}"), port, vec![frame]));
            }
        }
        let port = self.next_ids().src_port;
        let frame = PacketBuilder::ipv4(link.client_v4, link.server_v4)
            .macs(src_mac, dst_mac)
            .ipv4_options(&IPV4_OPTION_ROUTER_ALERT)
            .tcp(port, CONTROL_PORT, tcp_flags::SYN)
            .tcp_options(&LINUX_SYN_OPTIONS)
            .build();
        probes.push(("IPv4 SYN with Router Alert".to_string(), port, vec![frame]));
        let refs: Vec<(u16, &[Vec<u8>])> =
            probes.iter().map(|(_, p, f)| (*p, f.as_slice())).collect();
        let (replies, _) = self.send_probes(&refs);
        probes
            .iter()
            .zip(replies)
            .map(|((name, _, _), r)| {
                Check::new(
                    format!("{name} to non-gated port {CONTROL_PORT} is answered"),
                    r.is_some(),
                    if r.is_some() {
                        "SYN-ACK".to_string()
                    } else {
                        "no SYN-ACK".to_string()
                    },
                )
            })
            .collect()
    }

    fn established_check(&mut self) -> Vec<Check> {
        let link = self.lab.client.clone();
        let mut checks = Vec::new();
        self.grant_all();
        let mut sessions = Vec::new();
        for addr in [IpAddr::from(link.server_v4), IpAddr::from(link.server_v6)] {
            let stream = in_netns(&link.client_ns, || {
                TcpStream::connect_timeout(&SocketAddr::new(addr, SMTP_PORT), PASS_TIMEOUT)
            });
            sessions.push((addr, stream));
        }
        self.revoke_all();
        for (addr, stream) in sessions {
            let result = match stream {
                Ok(stream) => bulk_echo(stream, 3000, 200),
                Err(e) => Err(format!("could not connect while granted: {e}")),
            };
            checks.push(Check::new(
                format!(
                    "a connection to {addr}:25 opened while granted carries 3000 lines \
                     (600 KB) each way after the grant is revoked"
                ),
                result.is_ok(),
                result.err().unwrap_or_else(|| "all echoed".to_string()),
            ));
        }
        checks
    }
}

/// Connects, retrying for up to 5 s (a VLAN neighbour may need resolving).
fn connect_retrying(ns: &str, addr: IpAddr, port: u16) -> ConnectResult {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = connect(ns, addr, port, PASS_TIMEOUT);
        if r.is_connected() || Instant::now() > deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the banner, writes `lines` lines of `len` octets from a second
/// thread while reading the listener's `250 OK <line>` replies.
fn bulk_echo(stream: TcpStream, lines: usize, len: usize) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut banner = String::new();
    reader
        .read_line(&mut banner)
        .map_err(|e| format!("banner: {e}"))?;
    if banner.trim_end() != BANNER {
        return Err(format!("banner {banner:?}"));
    }
    let line = move |i: usize| format!("DATA {i:06} {}", "x".repeat(len - 12));
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let writing = thread::spawn(move || -> Result<(), String> {
        let mut chunk = String::new();
        for i in 0..lines {
            chunk.push_str(&line(i));
            chunk.push_str("\r\n");
            // Large writes: 64 KiB at a time.
            if chunk.len() >= 65536 || i + 1 == lines {
                writer
                    .write_all(chunk.as_bytes())
                    .map_err(|e| format!("writing at line {i}: {e}"))?;
                chunk.clear();
            }
        }
        Ok(())
    });
    let mut result = Ok(());
    for i in 0..lines {
        let mut reply = String::new();
        match reader.read_line(&mut reply) {
            Ok(0) => {
                result = Err(format!("closed after {i} replies"));
                break;
            }
            Ok(_) => {
                let expected = format!("250 OK {}", line(i));
                if reply.trim_end() != expected {
                    result = Err(format!("reply {i}: {:?}", reply.trim_end()));
                    break;
                }
            }
            Err(e) => {
                result = Err(format!("reading reply {i}: {e}"));
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let written = writing
        .join()
        .unwrap_or_else(|_| Err("the writer panicked".to_string()));
    result.and(written)?;
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(())
}

fn add_delta(
    into: &mut Vec<(String, u64)>,
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
) {
    let mut keys: Vec<&String> = after.keys().collect();
    keys.sort();
    for key in keys {
        let d = after[key].saturating_sub(before.get(key).copied().unwrap_or(0));
        match into.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v += d,
            None => into.push((key.clone(), d)),
        }
    }
}

/// The whole differential run of one mode: rounds of the four passes over
/// the regression shapes and `config.cases` random cases, then the
/// ordinary-traffic checks. `progress` gets a line per round.
pub fn run(config: &Config, mut progress: impl FnMut(&str)) -> ModeReport {
    let started = Instant::now();
    let mut dl = DiffLab::new(config.mode, config.seed);
    let mut report = ModeReport::new(config.mode, config.seed, dl.mtu, dl.env.max_frame);
    report.notes.append(&mut dl.notes);
    let mut pending: Vec<Recipe> = if config.regressions && config.only.is_none() {
        gen::regression_recipes(&dl.env)
    } else {
        Vec::new()
    };
    let round = config.round.max(1);
    let (mut next_random, last_random) = match config.only {
        Some(n) => (n, n.saturating_add(1)),
        None => (0, config.cases),
    };
    for k in 0.. {
        while pending.len() < round && next_random < last_random {
            pending.push(gen::random_recipe(&dl.env, config.seed, next_random));
            next_random += 1;
        }
        if pending.is_empty() {
            break;
        }
        let take = pending.len().min(round);
        let chunk: Vec<Recipe> = pending.drain(..take).collect();
        let first = report.outcomes.len();
        dl.round(&chunk, &mut report);
        if !config.keep_frames {
            for o in &mut report.outcomes[first..] {
                if o.bypass.is_none() && o.granted != Some(false) && o.control != Some(false) {
                    o.case.frames = Vec::new();
                }
            }
        }
        progress(&format!(
            "{}: round {} done: {} cases, {} frames in drop mode, {} bypasses, {} accepted \
             in monitor mode ({:.1?})",
            config.mode.arg(),
            k + 1,
            report.outcomes.len(),
            report.frames.drop,
            report.bypass_count(),
            report.monitor_count(),
            started.elapsed()
        ));
        if config.frames.is_some_and(|n| report.frames.drop >= n)
            || config.time_limit.is_some_and(|t| started.elapsed() >= t)
        {
            break;
        }
    }
    if config.legit {
        report.checks = dl.legit_checks();
    }
    drop(dl);
    report.elapsed = started.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.arg()), Some(m));
        }
        assert_eq!(Mode::parse("nope"), None);
    }
}
