//! The cost of the gate per packet, from BPF_PROG_TEST_RUN (the kernel
//! runs the program `repeat` times on one packet and reports the mean),
//! beside an empty XDP program measured in the same run, alternately.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use std::os::fd::{AsFd, OwnedFd};

use aya::{
    maps::Map,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use gate_common::{map_names, program_names, DEFAULT_GRANT_CAPACITY};
use serde_json::json;
use smtp_gate::{
    addr::Cidr,
    gate::{object, settings::default_settings, GateMaps},
};
use testkit::packets::{tcp_flags, Ipv6Ext, PacketBuilder, VlanTag};

use crate::{
    capacity,
    report::{self, Figure, Machine},
};

mod bans;
mod floor;

const RUNS: usize = 3;
/// Goal of issue 16: a gated SYN (granted, ungranted, exempt) costs at
/// most this much more than the empty program of its hook.
const GOAL_GATED_NS: f64 = 60.0;
/// ... and an IPv6 one's extra is within this much of its IPv4
/// counterpart's.
const GOAL_V6_SPREAD_NS: f64 = 15.0;
/// A packet that is not gated costs at most this much more than the empty
/// program of its hook.
const GOAL_NOT_GATED_NS: f64 = 10.0;
/// The verifier's limit of instructions walked per program.
const VERIFIER_LIMIT: u32 = 1_000_000;
const LARGE_GRANT_COUNT: u32 = 200_000;

pub(crate) const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
pub(crate) const EXEMPT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
pub(crate) const SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 25);
pub(crate) const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
pub(crate) const EXEMPT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9);
pub(crate) const STRANGER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
pub(crate) const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 200);
pub(crate) const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 25);

/// The three ways a gated SYN can go, each with its own floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// A fresh grant: passed.
    Granted,
    /// No grant, not exempt: denied (dropped).
    Ungranted,
    /// No grant, in an exempt network: passed.
    Exempt,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Granted => "granted",
            Path::Ungranted => "ungranted",
            Path::Exempt => "exempt",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// Which goal a case is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Goal {
    /// A plain gated SYN: at most GOAL_GATED_NS over the baseline; an IPv6
    /// one also within GOAL_V6_SPREAD_NS of the IPv4 one of its path.
    Syn(Path, Family),
    /// Not judged: at most GOAL_NOT_GATED_NS over the baseline.
    NotGated,
    /// Judged, but none of the three plain SYNs (a fragment, a tag,
    /// extension headers): reported without a goal.
    ReportOnly,
}

impl Goal {
    /// Judged as a gated SYN.
    fn gated(self) -> bool {
        self != Goal::NotGated
    }
}

struct Case {
    name: &'static str,
    goal: Goal,
    packet: Vec<u8>,
}

/// The two hooks the gate runs at, each measured against its own empty
/// program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    fn label(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    fn baseline(self) -> &'static str {
        match self {
            Hook::Xdp => program_names::XDP_PASS,
            Hook::Tc => program_names::TC_PASS,
        }
    }
}

fn syn(src: IpAddr, dst: IpAddr, port: u16) -> Vec<u8> {
    PacketBuilder::ip(src, dst)
        .tcp(40_000, port, tcp_flags::SYN)
        .build()
}

fn cases() -> Vec<Case> {
    let (c4, s4, e4) = (CLIENT_V4.into(), SERVER_V4.into(), EXEMPT_V4.into());
    let (c6, s6, e6) = (CLIENT_V6.into(), SERVER_V6.into(), EXEMPT_V6.into());
    let stranger4: IpAddr = STRANGER_V4.into();
    let stranger6: IpAddr = STRANGER_V6.into();
    vec![
        Case {
            name: "non-TCP (UDP/IPv4)",
            goal: Goal::NotGated,
            packet: PacketBuilder::ipv4(CLIENT_V4, SERVER_V4)
                .udp(5353, 53)
                .build(),
        },
        Case {
            name: "TCP SYN, other port (IPv4)",
            goal: Goal::NotGated,
            packet: syn(c4, s4, 443),
        },
        Case {
            name: "gated SYN, granted (IPv4)",
            goal: Goal::Syn(Path::Granted, Family::V4),
            packet: syn(c4, s4, 25),
        },
        Case {
            name: "gated SYN, ungranted: drop (IPv4)",
            goal: Goal::Syn(Path::Ungranted, Family::V4),
            packet: syn(stranger4, s4, 25),
        },
        Case {
            name: "gated SYN, exempt (IPv4)",
            goal: Goal::Syn(Path::Exempt, Family::V4),
            packet: syn(e4, s4, 25),
        },
        Case {
            name: "gated SYN, granted (IPv6)",
            goal: Goal::Syn(Path::Granted, Family::V6),
            packet: syn(c6, s6, 25),
        },
        Case {
            name: "gated SYN, ungranted: drop (IPv6)",
            goal: Goal::Syn(Path::Ungranted, Family::V6),
            packet: syn(stranger6, s6, 25),
        },
        Case {
            name: "gated SYN, exempt (IPv6)",
            goal: Goal::Syn(Path::Exempt, Family::V6),
            packet: syn(e6, s6, 25),
        },
        Case {
            name: "TCP data segment (ACK) to port 25 (IPv4)",
            goal: Goal::NotGated,
            packet: PacketBuilder::ipv4(CLIENT_V4, SERVER_V4)
                .tcp(40_000, 25, tcp_flags::ACK | tcp_flags::PSH)
                .payload(&[0x2e; 512])
                .build(),
        },
        Case {
            name: "first fragment of a split SYN, ungranted (IPv4)",
            goal: Goal::ReportOnly,
            packet: {
                // The first 24 octets of a 60-octet TCP header.
                let mut frame = PacketBuilder::ipv4(STRANGER_V4, SERVER_V4)
                    .tcp(40_000, 25, tcp_flags::SYN)
                    .tcp_options(&[1; 40])
                    .ipv4_fragment(0, true)
                    .build();
                frame.truncate(14 + 20 + 24);
                frame[16..18].copy_from_slice(&44u16.to_be_bytes());
                frame
            },
        },
        Case {
            name: "gated SYN, ungranted, behind a VLAN tag (IPv4)",
            goal: Goal::ReportOnly,
            packet: PacketBuilder::ip(stranger4, s4)
                .vlan(VlanTag::dot1q(7))
                .tcp(40_000, 25, tcp_flags::SYN)
                .build(),
        },
        Case {
            name: "gated SYN, granted (IPv6, HBH+AH+DST ext.)",
            goal: Goal::ReportOnly,
            packet: PacketBuilder::ipv6(CLIENT_V6, SERVER_V6)
                .exts([Ipv6Ext::HOP_BY_HOP, Ipv6Ext::AH, Ipv6Ext::DEST_OPTS])
                .tcp(40_000, 25, tcp_flags::SYN)
                .build(),
        },
    ]
}

pub fn mean_ns<
    P: TestRun<Opts<'static> = TestRunOptions<'static>, Result = aya::programs::TestRunResult>,
>(
    program: &P,
    packet: &'static [u8],
    repeat: u32,
) -> Result<f64> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(result.duration.as_nanos() as f64)
}

struct Loaded {
    ebpf: Ebpf,
    maps: GateMaps,
    map_fds: floor::GateMapFds,
}

/// The object with its gate and empty programs (XDP and TC) loaded (not
/// attached) and the default settings of a new gate: what every
/// BPF_PROG_TEST_RUN measurement starts from.
pub fn load_programs(capacity: u32) -> Result<(Ebpf, GateMaps)> {
    let mut ebpf = load_object(capacity)?;
    let maps = gate_maps(&mut ebpf)?;
    Ok((ebpf, maps))
}

fn load_object(capacity: u32) -> Result<Ebpf> {
    let mut ebpf = object::load_unpinned(capacity)?;
    for name in [program_names::XDP, program_names::XDP_PASS] {
        let program: &mut Xdp = ebpf.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }
    for name in [program_names::TC, program_names::TC_PASS] {
        let program: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }
    Ok(ebpf)
}

fn gate_maps(ebpf: &mut Ebpf) -> Result<GateMaps> {
    let mut maps = GateMaps::from_ebpf(ebpf)?;
    maps.set_settings(&default_settings())?;
    Ok(maps)
}

/// How many instructions the verifier walked for each gate program (its
/// limit is 1,000,000 per program).
pub fn verified_instructions(ebpf: &Ebpf) -> Result<Vec<(&'static str, u32)>> {
    let mut counts = Vec::new();
    for name in [program_names::XDP, program_names::TC] {
        let info = ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .info()?;
        let count = info
            .verified_instruction_count()
            .context("this kernel does not report verified instructions")?;
        counts.push((name, count));
    }
    Ok(counts)
}

/// A descriptor of one of the object's maps, for the floor
/// programs (taken before `GateMaps` takes the maps over).
fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd> {
    match ebpf.map(name).with_context(|| format!("no map {name}"))? {
        Map::LruHashMap(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::Array(data)
        | Map::PerCpuArray(data) => Ok(data.fd().as_fd().try_clone_to_owned()?),
        _ => anyhow::bail!("{name} is not a hash, LPM or array map"),
    }
}

fn load(grant_count: u32) -> Result<Loaded> {
    let mut ebpf = load_object(DEFAULT_GRANT_CAPACITY)?;
    let map_fds = floor::GateMapFds {
        grants_v4: map_fd(&ebpf, map_names::GRANTS_V4)?,
        exempt_v4: map_fd(&ebpf, map_names::EXEMPT_V4)?,
        grants_v6: map_fd(&ebpf, map_names::GRANTS_V6)?,
        exempt_v6: map_fd(&ebpf, map_names::EXEMPT_V6)?,
        settings: map_fd(&ebpf, map_names::SETTINGS)?,
        stats: map_fd(&ebpf, map_names::STATS)?,
    };
    let mut maps = gate_maps(&mut ebpf)?;
    maps.exempt_add("192.0.2.0/24".parse::<Cidr>()?)?;
    maps.exempt_add("2001:db8:2::/64".parse::<Cidr>()?)?;
    let now = maps.now_ns()?;
    maps.grant_at(CLIENT_V4.into(), now, None)?;
    maps.grant_at(CLIENT_V6.into(), now, None)?;
    // Fillers in other ranges (10.0.0.0/8, 2001:db8:ffff::/48): the hash
    // table gets its real load, the measured sources keep their verdicts.
    for i in 1..grant_count {
        let v4 = Ipv4Addr::from(0x0a00_0000u32 + i);
        let mut v6 = [0u8; 16];
        v6[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff]);
        v6[12..].copy_from_slice(&i.to_be_bytes());
        maps.grant_at(v4.into(), now, None)?;
        maps.grant_at(Ipv6Addr::from(v6).into(), now, None)?;
    }
    Ok(Loaded {
        ebpf,
        maps,
        map_fds,
    })
}

/// One floor program measured beside the empty XDP program.
struct FloorRow {
    family: Family,
    grants: u32,
    name: &'static str,
    /// The path whose minimum it is (new design), if any.
    path: Option<Path>,
    floor: Figure,
    baseline: Figure,
}

impl FloorRow {
    fn extra(&self) -> f64 {
        self.floor.median - self.baseline.median
    }
}

/// The floor programs of each family (those whose name contains `only`,
/// if given), alternated with the empty XDP program on the family's
/// granted SYN.
fn measure_floor(
    loaded: &Loaded,
    pass: &Xdp,
    grants: u32,
    repeat: u32,
    only: Option<&str>,
    rows: &mut Vec<FloorRow>,
) -> Result<()> {
    let families: [(Family, floor::Sources, IpAddr); 2] = [
        (
            Family::V4,
            floor::Sources {
                client: CLIENT_V4.into(),
                stranger: STRANGER_V4.into(),
                exempt: EXEMPT_V4.into(),
            },
            SERVER_V4.into(),
        ),
        (
            Family::V6,
            floor::Sources {
                client: CLIENT_V6.into(),
                stranger: STRANGER_V6.into(),
                exempt: EXEMPT_V6.into(),
            },
            SERVER_V6.into(),
        ),
    ];
    for (family, sources, server) in families {
        let packet: &'static [u8] = Box::leak(syn(sources.client, server, 25).into_boxed_slice());
        let programs: Vec<_> = floor::programs(&loaded.map_fds, sources)?
            .into_iter()
            .filter(|p| only.is_none_or(|only| p.name.contains(only)))
            .collect();
        let mut base = Vec::new();
        let mut samples = vec![Vec::new(); programs.len()];
        for _ in 0..RUNS {
            base.push(mean_ns(pass, packet, repeat)?);
            for (program, samples) in programs.iter().zip(&mut samples) {
                samples.push(floor::mean_ns(program, packet, repeat)?);
            }
        }
        let baseline = Figure::of(&base);
        for (program, samples) in programs.iter().zip(samples) {
            rows.push(FloorRow {
                family,
                grants,
                name: program.name,
                path: program.path,
                floor: Figure::of(&samples),
                baseline,
            });
        }
    }
    Ok(())
}

struct Row {
    case: &'static str,
    hook: Hook,
    grants: u32,
    goal: Goal,
    gate: Figure,
    /// The empty program of the row's own hook, measured alternately.
    baseline: Figure,
}

impl Row {
    fn extra(&self) -> f64 {
        self.gate.median - self.baseline.median
    }
}

/// One comparison a goal makes.
enum Check {
    /// The row's extra at most `limit`.
    Extra { value: f64, limit: f64 },
    /// An IPv6 row's extra within `limit` (either way) of the extra of the
    /// IPv4 row of its path; `None` when that row was not measured
    /// (`--only`).
    VsIpv4 { diff: Option<f64>, limit: f64 },
}

impl Check {
    fn met(&self) -> Option<bool> {
        match *self {
            Check::Extra { value, limit } => Some(value <= limit),
            Check::VsIpv4 { diff, limit } => diff.map(|d| d.abs() <= limit),
        }
    }

    fn cell(&self) -> String {
        let word = |met: bool| if met { "met" } else { "MISSED" };
        match *self {
            Check::Extra { value, limit } => {
                let met = value <= limit;
                let cmp = if met { "≤" } else { ">" };
                format!("{} ({value:.1} {cmp} {limit})", word(met))
            }
            Check::VsIpv4 { diff: None, .. } => "n/a (no IPv4 row measured)".into(),
            Check::VsIpv4 {
                diff: Some(diff),
                limit,
            } => {
                let met = diff.abs() <= limit;
                let not = if met { "" } else { "not " };
                format!("{} (vs IPv4 {diff:+.1}, {not}within ±{limit})", word(met))
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        let (what, value, limit) = match *self {
            Check::Extra { value, limit } => ("extra_ns", Some(value), limit),
            Check::VsIpv4 { diff, limit } => ("ipv6_minus_ipv4_extra_ns", diff, limit),
        };
        json!({"what": what, "value_ns": value, "limit_ns": limit, "met": self.met()})
    }
}

/// The comparisons of a row's goal (none for a case without one).
fn checks(row: &Row, rows: &[Row]) -> Vec<Check> {
    let extra = |limit| Check::Extra {
        value: row.extra(),
        limit,
    };
    match row.goal {
        Goal::ReportOnly => Vec::new(),
        Goal::NotGated => vec![extra(GOAL_NOT_GATED_NS)],
        Goal::Syn(_, Family::V4) => vec![extra(GOAL_GATED_NS)],
        Goal::Syn(path, Family::V6) => {
            let v4 = rows.iter().find(|r| {
                r.goal == Goal::Syn(path, Family::V4)
                    && r.hook == row.hook
                    && r.grants == row.grants
            });
            vec![
                extra(GOAL_GATED_NS),
                Check::VsIpv4 {
                    diff: v4.map(|v4| row.extra() - v4.extra()),
                    limit: GOAL_V6_SPREAD_NS,
                },
            ]
        }
    }
}

/// The goal column: "-" without a goal, else each comparison.
fn goal_cell(checks: &[Check]) -> String {
    if checks.is_empty() {
        return "-".into();
    }
    checks
        .iter()
        .map(Check::cell)
        .collect::<Vec<_>>()
        .join("; ")
}

fn goal_json(goal: Goal, checks: &[Check]) -> serde_json::Value {
    let met = if checks.is_empty() {
        None
    } else {
        checks
            .iter()
            .map(Check::met)
            .collect::<Option<Vec<_>>>()
            .map(|m| m.iter().all(|&m| m))
    };
    let (kind, path, family) = match goal {
        Goal::Syn(path, family) => ("gated_syn", Some(path.label()), Some(family.label())),
        Goal::NotGated => ("not_gated", None, None),
        Goal::ReportOnly => ("none", None, None),
    };
    json!({
        "kind": kind, "path": path, "family": family, "met": met,
        "checks": checks.iter().map(Check::json).collect::<Vec<_>>(),
    })
}

/// 1234567 as "1,234,567".
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let machine = Machine::describe();
    let cases: Vec<(Case, &'static [u8])> = cases()
        .into_iter()
        .filter(|c| only.is_none_or(|only| c.name.contains(only)))
        .map(|c| {
            let leaked: &'static [u8] = Box::leak(c.packet.clone().into_boxed_slice());
            (c, leaked)
        })
        .collect();
    let mut rows = Vec::new();
    let mut floor_rows = Vec::new();
    let mut ban_rows = Vec::new();
    let mut verified = None;
    let grant_counts: &[u32] = if only.is_some() {
        &[1]
    } else {
        &[1, LARGE_GRANT_COUNT]
    };
    for &grants in grant_counts {
        eprintln!("kernel bench: {grants} grant(s) per family, {repeat} repetitions x {RUNS} runs");
        let mut loaded = load(grants)?;
        if verified.is_none() {
            verified = Some(verified_instructions(&loaded.ebpf)?);
        }
        let xdp: &Xdp = loaded
            .ebpf
            .program(program_names::XDP)
            .context("xdp")?
            .try_into()?;
        let xdp_pass: &Xdp = loaded
            .ebpf
            .program(program_names::XDP_PASS)
            .context("xdp pass")?
            .try_into()?;
        let tc: &SchedClassifier = loaded
            .ebpf
            .program(program_names::TC)
            .context("tc")?
            .try_into()?;
        let tc_pass: &SchedClassifier = loaded
            .ebpf
            .program(program_names::TC_PASS)
            .context("tc pass")?
            .try_into()?;
        for (case, packet) in &cases {
            let [mut xdp_base, mut xdp_gate, mut tc_base, mut tc_gate] =
                [(); 4].map(|_| Vec::new());
            // Alternating within each run, so drift hits all four alike.
            for _ in 0..RUNS {
                xdp_base.push(mean_ns(xdp_pass, packet, repeat)?);
                xdp_gate.push(mean_ns(xdp, packet, repeat)?);
                tc_base.push(mean_ns(tc_pass, packet, repeat)?);
                tc_gate.push(mean_ns(tc, packet, repeat)?);
            }
            for (hook, gate, base) in [
                (Hook::Xdp, xdp_gate, xdp_base),
                (Hook::Tc, tc_gate, tc_base),
            ] {
                rows.push(Row {
                    case: case.name,
                    hook,
                    grants,
                    goal: case.goal,
                    gate: Figure::of(&gate),
                    baseline: Figure::of(&base),
                });
            }
        }
        measure_floor(&loaded, xdp_pass, grants, repeat, only, &mut floor_rows)?;
        if ban_rows.is_empty() {
            eprintln!("kernel bench: the ban check");
            ban_rows = bans::measure(&mut loaded.maps, xdp, xdp_pass, repeat, only)?;
        }
        drop(loaded.maps);
    }
    let verified = verified.unwrap_or_default();
    if only.is_some() {
        for (name, count) in &verified {
            println!(
                "{name}: {} instructions verified (of the verifier's {})",
                thousands(*count),
                thousands(VERIFIER_LIMIT)
            );
        }
        for row in &rows {
            println!(
                "{:<55} {:<4} {:>7.1} ns extra  {}",
                row.case,
                row.hook.label(),
                row.extra(),
                goal_cell(&checks(row, &rows))
            );
        }
        for row in &floor_rows {
            println!(
                "floor {:<4} {:<75} {:>5.1} ns extra",
                row.family.label(),
                row.name,
                row.extra()
            );
        }
        for row in &ban_rows {
            println!(
                "bans  {:<55} empty {:>5.1}  no bans {:>5.1}  bans {:>5.1} ns: the check adds {:+.1} ns",
                row.case,
                row.baseline.median,
                row.off.median,
                row.on.median,
                row.added()
            );
        }
        return Ok(());
    }

    eprintln!("kernel bench: capacity check ({DEFAULT_GRANT_CAPACITY} grants)");
    let (bare, sized) = capacity::measure(DEFAULT_GRANT_CAPACITY)?;

    let mut md = String::from("# smtp-gate kernel benchmark\n\n");
    md += &machine.markdown();
    md += &format!(
        "\nCommand: `cargo xtask bench kernel{}`. BPF_PROG_TEST_RUN, {repeat} repetitions per \
         measurement, median (min–max) of {RUNS} runs, in ns per packet (the kernel reports \
         each mean in whole ns, rounded down). Each row's baseline is \
         the empty program of its own hook: `{}` (returns XDP_PASS) for the xdp rows, `{}` (a \
         classifier that returns TC_ACT_UNSPEC; its test run builds a socket buffer like the \
         gate's) for the tc rows. In each run the four are measured alternately on the same \
         packet: empty XDP, gate XDP, empty TC, gate TC.\n\n\
         Goals (issue 16): a gated SYN that is granted, ungranted (dropped) or exempt costs at \
         most {GOAL_GATED_NS} ns more than its baseline, and an IPv6 one's extra is within \
         {GOAL_V6_SPREAD_NS} ns of the extra of the IPv4 one of the same path (same program, \
         same grant count); a packet that is not gated (UDP, a SYN to another port, an ACK data \
         segment) costs at most {GOAL_NOT_GATED_NS} ns more. The other gated cases (a first \
         fragment, a VLAN tag, IPv6 extension headers) have no goal (\"-\"). The goal column \
         gives each comparison with the number compared.\n\n",
        if quick { " --quick" } else { "" },
        Hook::Xdp.baseline(),
        Hook::Tc.baseline(),
    );
    md += "| case | program | grants | gate ns | baseline ns (own hook) | extra ns | ratio | goal |\n";
    md += "|---|---|---:|---:|---:|---:|---:|---|\n";
    let mut json_rows = Vec::new();
    for row in &rows {
        let extra = row.extra();
        let ratio = row.gate.median / row.baseline.median.max(1.0);
        let checks = checks(row, &rows);
        md += &format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |\n",
            row.case,
            row.hook.label(),
            row.grants,
            row.gate.cell(1),
            row.baseline.cell(1),
            extra,
            ratio,
            goal_cell(&checks)
        );
        json_rows.push(json!({
            "case": row.case, "program": row.hook.label(), "grants": row.grants,
            "gated": row.goal.gated(), "gate_ns": row.gate,
            "baseline_program": row.hook.baseline(), "baseline_ns": row.baseline,
            "extra_ns": extra, "ratio": ratio, "goal": goal_json(row.goal, &checks),
        }));
    }
    md += &verified_markdown(&verified);
    md += &floor_markdown(&floor_rows);
    md += &bans::markdown(&ban_rows);
    let own_work = own_work(&rows, &floor_rows);
    md += &own_work_markdown(&own_work);
    let json_floor: Vec<_> = floor_rows
        .iter()
        .map(|r| {
            json!({
                "family": r.family.label(), "grants": r.grants, "program": r.name,
                "path": r.path.map(Path::label),
                "floor_ns": r.floor, "baseline_program": Hook::Xdp.baseline(),
                "baseline_ns": r.baseline, "extra_ns": r.extra(),
            })
        })
        .collect();
    let json_own_work: Vec<_> = own_work
        .iter()
        .map(|w| {
            json!({
                "case": w.row.case, "program": w.row.hook.label(), "grants": w.row.grants,
                "path": w.path.label(), "family": w.family.label(),
                "gate_extra_ns": w.row.extra(),
                "gate_baseline_program": w.row.hook.baseline(),
                "floor_program": w.floor.name, "floor_extra_ns": w.floor.extra(),
                "floor_baseline_program": Hook::Xdp.baseline(),
                "own_work_ns": w.row.extra() - w.floor.extra(),
            })
        })
        .collect();
    let json_verified: Vec<_> = verified
        .iter()
        .map(|(name, count)| json!({"program": name, "instructions": count}))
        .collect();
    md += &format!(
        "\n## Grant capacity\n\nWrote {} distinct fresh grants from one writer thread per CPU, \
         then refreshed every one of them (an LRU update takes a new slot before it frees the \
         old), then counted the map.\n\n| max_entries | kept |\n|---:|---:|\n| {} (exactly the \
         capacity) | {} |\n| {} (as shipped: capacity + 256 per CPU) | {} |\n",
        bare.capacity, bare.max_entries, bare.kept, sized.max_entries, sized.kept
    );
    let json = json!({
        "machine": machine, "repeat": repeat, "runs": RUNS,
        "goals": {
            "gated_syn_extra_ns": GOAL_GATED_NS,
            "ipv6_minus_ipv4_extra_ns": GOAL_V6_SPREAD_NS,
            "not_gated_extra_ns": GOAL_NOT_GATED_NS,
        },
        "baselines": {"xdp": Hook::Xdp.baseline(), "tc": Hook::Tc.baseline()},
        "rows": json_rows,
        "verified_instructions": {"limit": VERIFIER_LIMIT, "programs": json_verified},
        "floor": json_floor,
        "own_work": json_own_work,
        "capacity": {"bare": bare, "shipped": sized},
    });
    let path = report::write("kernel", &md, &json)?;
    println!("{md}");
    eprintln!("report written to {}", path.display());
    if sized.kept != sized.capacity {
        anyhow::bail!(
            "capacity check failed: {} of {} grants kept",
            sized.kept,
            sized.capacity
        );
    }
    Ok(())
}

/// The verifier's count of each gate program.
fn verified_markdown(verified: &[(&'static str, u32)]) -> String {
    let mut md = String::from(
        "\n## Verified instructions\n\nHow many instructions the verifier walked to accept \
         each gate program (at load, before the measurements above).\n\n\
         | program | instructions verified |\n|---|---:|\n",
    );
    for (name, count) in verified {
        md += &format!(
            "| {name} | {} of the verifier's {} ({:.1} %) |\n",
            thousands(*count),
            thousands(VERIFIER_LIMIT),
            100.0 * f64::from(*count) / f64::from(VERIFIER_LIMIT)
        );
    }
    md
}

/// The floor table.
fn floor_markdown(floor_rows: &[FloorRow]) -> String {
    let mut md = String::from(
        "\n## The floor: what the design makes each gated SYN do\n\nDESIGN.md fixes neither the \
         order of the lookups nor the clock. The gate looks up the grant (LRU hash) first and \
         reads `bpf_jiffies64` to compare a grant's stamp; only a SYN without a fresh grant is \
         looked up in the exempt networks (LPM trie), and not even that when the family has no \
         exempt network (here both have one). So no program can do less per path than: \
         granted, a grant hit and the clock; ungranted, a grant miss and an exempt miss; \
         exempt, a grant miss and an exempt hit. Each operation alone and each path's minimum \
         is an XDP program of a few instructions assembled by the suite, on the gate's own maps \
         (with the grants of the row), with the keys of the path's source on the stack, \
         measured alternately with the empty XDP program on the family's granted SYN. A program \
         whose lookup does not find what it should fails the run, so each row times the path it \
         names. The old design's floor (exempt lookup first, then the grant, the stamp compared \
         with `bpf_ktime_get_boot_ns`) stays for comparison.\n\n\
         | family | grants | program | ns | empty XDP ns | extra ns |\n|---|---:|---|---:|---:|---:|\n",
    );
    for r in floor_rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {:.1} |\n",
            r.family.label(),
            r.grants,
            r.name,
            r.floor.cell(1),
            r.baseline.cell(1),
            r.extra()
        );
    }
    md
}

/// A gated SYN of one of the three paths beside its path's floor.
struct OwnWork<'a> {
    row: &'a Row,
    path: Path,
    family: Family,
    floor: &'a FloorRow,
}

/// For every plain gated SYN, XDP and TC, the new design's floor of its
/// path (same family, same grant count).
fn own_work<'a>(rows: &'a [Row], floor_rows: &'a [FloorRow]) -> Vec<OwnWork<'a>> {
    rows.iter()
        .filter_map(|row| {
            let Goal::Syn(path, family) = row.goal else {
                return None;
            };
            let floor = floor_rows
                .iter()
                .find(|f| f.path == Some(path) && f.family == family && f.grants == row.grants)?;
            Some(OwnWork {
                row,
                path,
                family,
                floor,
            })
        })
        .collect()
}

/// What the gate adds above the floor of each path (its own work:
/// parsing, settings, counters).
fn own_work_markdown(own_work: &[OwnWork]) -> String {
    let mut md = format!(
        "\n## The gate's own work\n\nFor each granted, ungranted and exempt SYN, what the gate \
         costs above the floor of its path (same family, same grant count): its parsing, \
         settings and counters. For xdp both extras are against the empty XDP program. For tc \
         the gate's extra is against the empty TC classifier (`{}`), the floor's against the \
         empty XDP program (`{}`), because the floor programs are XDP programs; the difference \
         also holds whatever the same lookups cost a classifier more than an XDP program.\n\n\
         | case | program | grants | gate extra ns | path floor | floor extra ns | the gate's own work ns |\n\
         |---|---|---:|---:|---|---:|---:|\n",
        Hook::Tc.baseline(),
        Hook::Xdp.baseline(),
    );
    for w in own_work {
        md += &format!(
            "| {} | {} | {} | {:.1} | {} | {:.1} | {:.1} |\n",
            w.row.case,
            w.row.hook.label(),
            w.row.grants,
            w.row.extra(),
            w.floor.name,
            w.floor.extra(),
            w.row.extra() - w.floor.extra()
        );
    }
    md
}
