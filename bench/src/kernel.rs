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
use gate_tests::packets::{tcp_flags, Ipv6Ext, PacketBuilder, VlanTag};
use serde_json::json;
use smtp_gate::{
    addr::Cidr,
    gate::{attach::default_settings, clock, object, GateMaps},
};

use crate::{
    capacity,
    report::{self, Figure, Machine},
};

mod floor;

const RUNS: usize = 3;
/// The goal of the issue: a gated SYN costs at most this much more than
/// the empty program.
const GOAL_EXTRA_NS: f64 = 40.0;
const LARGE_GRANT_COUNT: u32 = 200_000;

pub(crate) const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const EXEMPT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
pub(crate) const SERVER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 25);
pub(crate) const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 7);
const EXEMPT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 9);
pub(crate) const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 25);

struct Case {
    name: &'static str,
    /// Judged as a gated SYN (the goal applies).
    gated: bool,
    packet: Vec<u8>,
}

fn syn(src: IpAddr, dst: IpAddr, port: u16) -> Vec<u8> {
    PacketBuilder::ip(src, dst)
        .tcp(40_000, port, tcp_flags::SYN)
        .build()
}

fn cases() -> Vec<Case> {
    let (c4, s4, e4) = (CLIENT_V4.into(), SERVER_V4.into(), EXEMPT_V4.into());
    let (c6, s6, e6) = (CLIENT_V6.into(), SERVER_V6.into(), EXEMPT_V6.into());
    let stranger4: IpAddr = Ipv4Addr::new(198, 51, 100, 200).into();
    let stranger6: IpAddr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 200).into();
    vec![
        Case {
            name: "non-TCP (UDP/IPv4)",
            gated: false,
            packet: PacketBuilder::ipv4(CLIENT_V4, SERVER_V4)
                .udp(5353, 53)
                .build(),
        },
        Case {
            name: "TCP SYN, other port (IPv4)",
            gated: false,
            packet: syn(c4, s4, 443),
        },
        Case {
            name: "gated SYN, granted (IPv4)",
            gated: true,
            packet: syn(c4, s4, 25),
        },
        Case {
            name: "gated SYN, ungranted: drop (IPv4)",
            gated: true,
            packet: syn(stranger4, s4, 25),
        },
        Case {
            name: "gated SYN, exempt (IPv4)",
            gated: true,
            packet: syn(e4, s4, 25),
        },
        Case {
            name: "gated SYN, granted (IPv6)",
            gated: true,
            packet: syn(c6, s6, 25),
        },
        Case {
            name: "gated SYN, ungranted: drop (IPv6)",
            gated: true,
            packet: syn(stranger6, s6, 25),
        },
        Case {
            name: "gated SYN, exempt (IPv6)",
            gated: true,
            packet: syn(e6, s6, 25),
        },
        Case {
            name: "TCP data segment (ACK) to port 25 (IPv4)",
            gated: false,
            packet: PacketBuilder::ipv4(CLIENT_V4, SERVER_V4)
                .tcp(40_000, 25, tcp_flags::ACK | tcp_flags::PSH)
                .payload(&[0x2e; 512])
                .build(),
        },
        Case {
            name: "first fragment of a split SYN, ungranted (IPv4)",
            gated: true,
            packet: {
                // The first 24 octets of a 60-octet TCP header.
                let mut frame = PacketBuilder::ipv4(Ipv4Addr::new(198, 51, 100, 200), SERVER_V4)
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
            gated: true,
            packet: PacketBuilder::ip(stranger4, s4)
                .vlan(VlanTag::dot1q(7))
                .tcp(40_000, 25, tcp_flags::SYN)
                .build(),
        },
        Case {
            name: "gated SYN, granted (IPv6, HBH+AH+DST ext.)",
            gated: true,
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

/// The object with its XDP, XDP_PASS and TC programs loaded (not
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
    let tc: &mut SchedClassifier = ebpf
        .program_mut(program_names::TC)
        .context("tc")?
        .try_into()?;
    tc.load()?;
    Ok(ebpf)
}

fn gate_maps(ebpf: &mut Ebpf) -> Result<GateMaps> {
    let mut maps = GateMaps::from_ebpf(ebpf)?;
    maps.set_settings(&default_settings())?;
    Ok(maps)
}

/// A descriptor of one of the object's hash or LPM maps, for the floor
/// programs (taken before `GateMaps` takes the maps over).
fn map_fd(ebpf: &Ebpf, name: &str) -> Result<OwnedFd> {
    match ebpf.map(name).with_context(|| format!("no map {name}"))? {
        Map::LruHashMap(data) | Map::HashMap(data) | Map::LpmTrie(data) => {
            Ok(data.fd().as_fd().try_clone_to_owned()?)
        }
        _ => anyhow::bail!("{name} is not a hash or LPM map"),
    }
}

fn load(grant_count: u32) -> Result<Loaded> {
    let mut ebpf = load_object(DEFAULT_GRANT_CAPACITY)?;
    let map_fds = floor::GateMapFds {
        grants_v4: map_fd(&ebpf, map_names::GRANTS_V4)?,
        exempt_v4: map_fd(&ebpf, map_names::EXEMPT_V4)?,
        grants_v6: map_fd(&ebpf, map_names::GRANTS_V6)?,
        exempt_v6: map_fd(&ebpf, map_names::EXEMPT_V6)?,
    };
    let mut maps = gate_maps(&mut ebpf)?;
    maps.exempt_add("192.0.2.0/24".parse::<Cidr>()?)?;
    maps.exempt_add("2001:db8:2::/64".parse::<Cidr>()?)?;
    let now = clock::boottime_ns();
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

/// One floor program measured beside the empty program.
struct FloorRow {
    family: &'static str,
    grants: u32,
    name: &'static str,
    floor: Figure,
    baseline: Figure,
}

/// The floor programs for the granted SYN of each family, alternated with
/// the empty program on that packet.
fn measure_floor(
    loaded: &Loaded,
    pass: &Xdp,
    grants: u32,
    repeat: u32,
    rows: &mut Vec<FloorRow>,
) -> Result<()> {
    let families: [(&'static str, IpAddr, IpAddr); 2] = [
        ("IPv4", CLIENT_V4.into(), SERVER_V4.into()),
        ("IPv6", CLIENT_V6.into(), SERVER_V6.into()),
    ];
    for (family, client, server) in families {
        let packet: &'static [u8] = Box::leak(syn(client, server, 25).into_boxed_slice());
        let programs = floor::programs(&loaded.map_fds, client)?;
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
                floor: Figure::of(&samples),
                baseline,
            });
        }
    }
    Ok(())
}

struct Row {
    case: &'static str,
    program: &'static str,
    grants: u32,
    gated: bool,
    gate: Figure,
    baseline: Figure,
}

pub fn run(quick: bool) -> Result<()> {
    let repeat: u32 = if quick { 100_000 } else { 1_000_000 };
    let machine = Machine::describe();
    let cases: Vec<(Case, &'static [u8])> = cases()
        .into_iter()
        .map(|c| {
            let leaked: &'static [u8] = Box::leak(c.packet.clone().into_boxed_slice());
            (c, leaked)
        })
        .collect();
    let mut rows = Vec::new();
    let mut floor_rows = Vec::new();
    for grants in [1, LARGE_GRANT_COUNT] {
        eprintln!("kernel bench: {grants} grant(s) per family, {repeat} repetitions x {RUNS} runs");
        let loaded = load(grants)?;
        let xdp: &Xdp = loaded
            .ebpf
            .program(program_names::XDP)
            .context("xdp")?
            .try_into()?;
        let pass: &Xdp = loaded
            .ebpf
            .program(program_names::XDP_PASS)
            .context("pass")?
            .try_into()?;
        let tc: &SchedClassifier = loaded
            .ebpf
            .program(program_names::TC)
            .context("tc")?
            .try_into()?;
        for (case, packet) in &cases {
            let (mut base, mut gate_xdp, mut gate_tc) = (Vec::new(), Vec::new(), Vec::new());
            // Alternating within each run, so drift hits all three alike.
            for _ in 0..RUNS {
                base.push(mean_ns(pass, packet, repeat)?);
                gate_xdp.push(mean_ns(xdp, packet, repeat)?);
                gate_tc.push(mean_ns(tc, packet, repeat)?);
            }
            let baseline = Figure::of(&base);
            for (program, samples) in [("xdp", gate_xdp), ("tc", gate_tc)] {
                rows.push(Row {
                    case: case.name,
                    program,
                    grants,
                    gated: case.gated,
                    gate: Figure::of(&samples),
                    baseline,
                });
            }
        }
        measure_floor(&loaded, pass, grants, repeat, &mut floor_rows)?;
        drop(loaded.maps);
    }

    eprintln!("kernel bench: capacity check ({DEFAULT_GRANT_CAPACITY} grants)");
    let (bare, sized) = capacity::measure(DEFAULT_GRANT_CAPACITY)?;

    let mut md = String::from("# smtp-gate kernel benchmark\n\n");
    md += &machine.markdown();
    md += &format!(
        "\nCommand: `cargo xtask bench kernel{}`. BPF_PROG_TEST_RUN, {repeat} repetitions per \
         measurement, median (min–max) of {RUNS} runs, in ns per packet. The baseline is an XDP \
         program that returns XDP_PASS, measured alternately with the gate on the same packet. \
         Goal: a gated SYN costs at most {GOAL_EXTRA_NS} ns more than the baseline.\n\n",
        if quick { " --quick" } else { "" }
    );
    md += "| case | program | grants | gate ns | empty ns | extra ns | ratio | goal |\n";
    md += "|---|---|---:|---:|---:|---:|---:|---|\n";
    let mut json_rows = Vec::new();
    for row in &rows {
        let extra = row.gate.median - row.baseline.median;
        let ratio = row.gate.median / row.baseline.median.max(1.0);
        let goal = if !row.gated {
            "-"
        } else if extra <= GOAL_EXTRA_NS {
            "met"
        } else {
            "MISSED"
        };
        md += &format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {} |\n",
            row.case,
            row.program,
            row.grants,
            row.gate.cell(1),
            row.baseline.cell(1),
            extra,
            ratio,
            goal
        );
        json_rows.push(json!({
            "case": row.case, "program": row.program, "grants": row.grants,
            "gated": row.gated, "gate_ns": row.gate, "baseline_ns": row.baseline,
            "extra_ns": extra, "ratio": ratio,
        }));
    }
    md += &floor_markdown(&rows, &floor_rows);
    let json_floor: Vec<_> = floor_rows
        .iter()
        .map(|r| {
            json!({
                "family": r.family, "grants": r.grants, "program": r.name,
                "floor_ns": r.floor, "baseline_ns": r.baseline,
                "extra_ns": r.floor.median - r.baseline.median,
            })
        })
        .collect();
    md += &format!(
        "\n## Grant capacity\n\nWrote {} distinct fresh grants from one writer thread per CPU, \
         then refreshed every one of them (an LRU update takes a new slot before it frees the \
         old), then counted the map.\n\n| max_entries | kept |\n|---:|---:|\n| {} (exactly the \
         capacity) | {} |\n| {} (as shipped: capacity + 256 per CPU) | {} |\n",
        bare.capacity, bare.max_entries, bare.kept, sized.max_entries, sized.kept
    );
    let json = json!({
        "machine": machine, "repeat": repeat, "runs": RUNS, "rows": json_rows,
        "floor": json_floor,
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

/// The floor table, and for each granted case what the gate adds above
/// the floor (its own work: parsing, settings, counters).
fn floor_markdown(rows: &[Row], floor_rows: &[FloorRow]) -> String {
    let mut md = String::from(
        "\n## The floor: what the design makes every granted SYN do\n\nDESIGN.md fixes the \
         order exempt network (LPM trie) -> fresh grant (LRU hash, stamp compared with \
         `bpf_ktime_get_boot_ns`). Each of those alone, in an XDP program of a few \
         instructions assembled by the suite, on the gate's own maps and the granted SYN's \
         key, measured alternately with the empty program on the same packet. No program \
         that follows the design can cost less than the \"all three\" row.\n\n\
         | family | grants | program | ns | empty ns | extra ns |\n|---|---:|---|---:|---:|---:|\n",
    );
    for r in floor_rows {
        md += &format!(
            "| {} | {} | {} | {} | {} | {:.1} |\n",
            r.family,
            r.grants,
            r.name,
            r.floor.cell(1),
            r.baseline.cell(1),
            r.floor.median - r.baseline.median
        );
    }
    md += "\nThe floor programs are XDP programs, so the gate's own work is shown for its XDP \
           program (a TC classifier also pays for running on a socket buffer).\n\n\
           | granted SYN | program | grants | gate extra ns | floor extra ns | the gate's own work ns |\n|---|---|---:|---:|---:|---:|\n";
    for row in rows
        .iter()
        .filter(|r| r.program == "xdp" && r.case.starts_with("gated SYN, granted (IPv"))
    {
        let family = if row.case.contains("IPv6") {
            "IPv6"
        } else {
            "IPv4"
        };
        let Some(floor) = floor_rows.iter().find(|f| {
            f.family == family && f.grants == row.grants && f.name.starts_with("all three")
        }) else {
            continue;
        };
        let gate_extra = row.gate.median - row.baseline.median;
        let floor_extra = floor.floor.median - floor.baseline.median;
        md += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            row.case,
            row.program,
            row.grants,
            gate_extra,
            floor_extra,
            gate_extra - floor_extra
        );
    }
    md
}
