//! `cargo xtask bench bus`: the grant bus across hosts (issue 13), in the
//! lab of the bus test (testkit bus_lab.rs: namespaces without a default
//! route, a private redis-server on `engine`, `smtp-gate serve` on `pop`,
//! `smtp-gate agent` with its own gate on each edge):
//!
//! - propagation: the time from a POP3 login's `+OK` (read by the client)
//!   to the grant in each edge's map (read from its pins by this
//!   process), every login from a new address, with 1 edge and with 2;
//! - throughput: grants per second one POP3 host's publisher gets
//!   acknowledged by the engine (the daemon's `Publisher`, driven
//!   directly by this process in `pop`'s namespace, many in flight), and
//!   how long the edges take to have them all in their maps;
//! - PASS -> `+OK` of `smtp-gate serve` with its own gate, with the bus
//!   beside without (local map only), the two configurations taking
//!   turns in blocks of logins (the daemon restarted between).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use smtp_gate::bus::{config::BusKeys, publisher::Publisher};
use testkit::{
    bus_lab::{BusLab, BusLabOptions, POLL_INTERVAL},
    netns::in_netns,
};
use tokio_util::sync::CancellationToken;

use crate::report::{self, percentile, Figure, Machine};

/// The goal for the p99 of +OK -> grant on an edge.
const GOAL_P99_MS: f64 = 100.0;
/// Logins before any is measured (processes and caches warm).
const WARM_UP: usize = 20;
/// How long a grant may take to reach an edge: only a lost one does.
const GRANT_BOUND: Duration = Duration::from_secs(10);
/// Publications in flight at once in the throughput run.
const IN_FLIGHT: usize = 64;
/// The window every measured grant is published for.
const WINDOW: Duration = Duration::from_secs(600);

fn progress(what: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("bus [{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

/// +OK -> grant per edge (µs), over the measured logins.
#[derive(Clone, Debug, Default, Serialize)]
struct Propagation {
    edges: usize,
    logins: usize,
    /// Per edge, then the later of the edges per login.
    per_edge_us: Vec<Vec<f64>>,
    all_edges_us: Vec<f64>,
    /// Logins whose grant was on an edge before the client read +OK
    /// (counted as 0).
    before_ok: usize,
    pass_to_ok_us: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
struct Throughput {
    grants: usize,
    in_flight: usize,
    publish_s: f64,
    per_sec: f64,
    failed: u64,
    /// Per edge: from the first publication to the last grant in its map.
    edge_s: Vec<f64>,
    edge_per_sec: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct PassToOk {
    rounds: usize,
    logins_per_block: usize,
    local_us: Vec<f64>,
    bus_us: Vec<f64>,
    /// Median of each block, per configuration.
    local_block_medians: Vec<f64>,
    bus_block_medians: Vec<f64>,
}

pub fn run(quick: bool) -> Result<()> {
    progress("building smtp-gate");
    crate::binaries::build("gate-user", "smtp-gate")?;
    let (logins, grants, rounds, block) = if quick {
        (100, 5_000, 2, 50)
    } else {
        (1000, 50_000, 5, 200)
    };
    let one = {
        progress("lab with 1 edge");
        let mut lab = lab(1)?;
        propagation(&mut lab, logins)?
    };
    progress("lab with 2 edges");
    let mut lab = lab(2)?;
    let two = propagation(&mut lab, logins)?;
    let throughput = throughput(&mut lab, grants)?;
    let pass = pass_to_ok(&mut lab, rounds, block)?;
    drop(lab);

    let machine = Machine::describe();
    let mut md = format!(
        "# smtp-gate grant bus benchmark (issue 13)\n\n{}\
         Command: `cargo xtask bench bus{}`. redis-server {}. Shared machine: other jobs may run \
         beside.\n",
        machine.markdown(),
        if quick { " --quick" } else { "" },
        redis_version()
    );
    let (prop_md, prop_json) = render_propagation(&[&one, &two]);
    md += &prop_md;
    let (tp_md, tp_json) = render_throughput(&throughput);
    md += &tp_md;
    let (pass_md, pass_json) = render_pass(&pass);
    md += &pass_md;
    let json = json!({
        "machine": machine,
        "quick": quick,
        "propagation": prop_json,
        "throughput": tp_json,
        "pass_to_ok": pass_json,
    });
    let path = report::write("bus", &md, &json)?;
    println!("{md}");
    eprintln!("report: {}", path.display());
    Ok(())
}

/// A bus lab with `edges` edges, their agents following.
fn lab(edges: usize) -> Result<BusLab> {
    let mut lab = BusLab::new(BusLabOptions {
        edges,
        edge_window: WINDOW,
        // No fsync per write: the engine as a cache-style deployment runs
        // it (a managed Redis's durability is its own).
        persist: false,
    });
    for e in 1..=edges {
        lab.start_agent(e);
    }
    lab.start_serve(WINDOW, "", true);
    Ok(lab)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `logins` measured logins (after [`WARM_UP`]), each from a new address,
/// one at a time: +OK -> grant in each edge's map.
fn propagation(lab: &mut BusLab, logins: usize) -> Result<Propagation> {
    let edges = lab.edges().len();
    let maps: Vec<_> = (1..=edges).map(|e| lab.maps(e)).collect();
    let sources = lab.new_sources((logins + WARM_UP) as u32);
    let worker = lab.login_worker();
    let mut result = Propagation {
        edges,
        logins,
        per_edge_us: vec![Vec::new(); edges],
        ..Propagation::default()
    };
    for (i, &from) in sources.iter().enumerate() {
        if i % 200 == 0 {
            progress(&format!("propagation, {edges} edge(s): login {i}"));
        }
        let login = worker
            .login(lab.pop3_server(from), from)
            .map_err(|e| anyhow!("login from {from}: {e}"))?;
        if !login.is_ok() {
            bail!("login from {from}: {}", login.answer);
        }
        let seen = BusLab::wait_granted(&maps, from, GRANT_BOUND);
        if i < WARM_UP {
            continue;
        }
        let mut latest = 0.0f64;
        let mut early = false;
        for (e, at) in seen.iter().enumerate() {
            let at = at.with_context(|| {
                format!(
                    "the grant of {from} is not on edge{} within {GRANT_BOUND:?}",
                    e + 1
                )
            })?;
            early |= at < login.answered;
            let d = us(at.saturating_duration_since(login.answered));
            result.per_edge_us[e].push(d);
            latest = latest.max(d);
        }
        result.before_ok += usize::from(early);
        result.all_edges_us.push(latest);
        result
            .pass_to_ok_us
            .push(us(login.answered.duration_since(login.pass_sent)));
    }
    Ok(result)
}

/// The `i`-th address of the throughput run (none of the client's).
fn synthetic(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a64_0000u32 + i as u32))
}

/// `grants` publications from `pop`'s namespace through the daemon's
/// publisher, [`IN_FLIGHT`] at once; then until each edge has them all.
fn throughput(lab: &mut BusLab, grants: usize) -> Result<Throughput> {
    progress(&format!(
        "throughput: {grants} grants, {IN_FLIGHT} in flight"
    ));
    let edges = lab.edges().len();
    let maps: Vec<_> = (1..=edges).map(|e| lab.maps(e)).collect();
    let before: Vec<usize> = maps.iter().map(|m| m.grant_count()).collect();
    let url = lab.url();
    let pop = lab.hosts.host("pop").ns.clone();
    let (started, publish, failed) =
        in_netns(&pop, move || -> Result<(Instant, Duration, u64)> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let keys = BusKeys {
                    bus: Some(url.parse().map_err(anyhow::Error::msg)?),
                    bus_origin: Some("bench".into()),
                    ..BusKeys::default()
                };
                let stop = CancellationToken::new();
                let publisher = Arc::new(Publisher::start(&keys, "bench", stop.clone())?);
                if !publisher.wait_connected(Duration::from_secs(10)).await {
                    bail!("the publisher did not connect to {url}");
                }
                let started = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for w in 0..IN_FLIGHT {
                    let publisher = Arc::clone(&publisher);
                    tasks.spawn(async move {
                        let mut failed = 0u64;
                        for i in (w..grants).step_by(IN_FLIGHT) {
                            if publisher.grant(synthetic(i), WINDOW).await.is_err() {
                                failed += 1;
                            }
                        }
                        failed
                    });
                }
                let mut failed = 0;
                while let Some(done) = tasks.join_next().await {
                    failed += done?;
                }
                let publish = started.elapsed();
                stop.cancel();
                Ok((started, publish, failed))
            })
        })?;
    let mut edge_s = Vec::new();
    for (e, map) in maps.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if map.grant_count() >= before[e] + grants - failed as usize {
                edge_s.push(started.elapsed().as_secs_f64());
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "edge{} holds {} of {grants} published grants after 120 s",
                    e + 1,
                    map.grant_count() - before[e]
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let ok = (grants as u64 - failed) as f64;
    Ok(Throughput {
        grants,
        in_flight: IN_FLIGHT,
        publish_s: publish.as_secs_f64(),
        per_sec: ok / publish.as_secs_f64(),
        failed,
        edge_per_sec: edge_s.iter().map(|s| ok / s).collect(),
        edge_s,
    })
}

/// PASS -> +OK of serve with its own gate on `pop`, without and with the
/// bus, in `rounds` rounds of one block each (the order alternating).
fn pass_to_ok(lab: &mut BusLab, rounds: usize, block: usize) -> Result<PassToOk> {
    let pop = lab.hosts.host("pop").clone();
    let gate = format!(
        "iface = \"{}\"\npin_dir = \"{}\"\n",
        pop.iface,
        pop.pin_dir.display()
    );
    let mut result = PassToOk {
        rounds,
        logins_per_block: block,
        ..PassToOk::default()
    };
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for bus in order {
            progress(&format!(
                "PASS -> +OK: round {} of {rounds}, {}",
                round + 1,
                if bus { "gate and bus" } else { "gate only" }
            ));
            lab.start_serve_with(WINDOW, &gate, bus, true);
            let sources = lab.new_sources((block + 10) as u32);
            let worker = lab.login_worker();
            let mut samples = Vec::new();
            for (i, &from) in sources.iter().enumerate() {
                let login = worker
                    .login(lab.pop3_server(from), from)
                    .map_err(|e| anyhow!("login from {from}: {e}"))?;
                if !login.is_ok() {
                    bail!("login from {from}: {}", login.answer);
                }
                if i >= 10 {
                    samples.push(us(login.answered.duration_since(login.pass_sent)));
                }
            }
            let median = Figure::of(&samples).median;
            if bus {
                result.bus_us.extend(samples);
                result.bus_block_medians.push(median);
            } else {
                result.local_us.extend(samples);
                result.local_block_medians.push(median);
            }
        }
    }
    lab.stop_serve();
    Ok(result)
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn render_propagation(runs: &[&Propagation]) -> (String, serde_json::Value) {
    let mut md = format!(
        "\n## Propagation: POP3 +OK -> grant in each edge's map\n\n\
         The issue's lab (testkit bus_lab.rs): namespaces without a default route on one \
         bridge: `engine` (redis-server, no persistence), `pop` (`smtp-gate serve` without a \
         gate, `bus` set), one or two edges (`smtp-gate agent`, its own gate, XDP on its veth, \
         its own pin directory), `client`. Every login (USER/PASS, then QUIT) from a new IPv6 \
         address of the client's, one at a time; this process reads each edge's grant map \
         (`GateMaps::grant_of` on its pins) every {} µs (plus the sleep's slack) from the \
         instant the client read `+OK` until the address has a fresh grant on every edge. A \
         grant already there at the first read counts as 0. {} measured logins per lab (after \
         {WARM_UP} unmeasured). Goal (issue 13): p99 < {GOAL_P99_MS} ms.\n\n\
         | edges | edge | p50 ms | p99 ms | max ms | goal p99 < 100 ms |\n\
         |---:|---|---:|---:|---:|---|\n",
        POLL_INTERVAL.as_micros(),
        runs.first().map_or(0, |r| r.logins),
    );
    let mut json_runs = Vec::new();
    for run in runs {
        let mut rows: Vec<(String, &Vec<f64>)> = run
            .per_edge_us
            .iter()
            .enumerate()
            .map(|(e, s)| (format!("edge{}", e + 1), s))
            .collect();
        if run.edges > 1 {
            rows.push(("the later of both".into(), &run.all_edges_us));
        }
        for (name, s) in rows {
            let p99 = percentile(s, 99.0);
            md += &format!(
                "| {} | {name} | {} | {} | {} | {} |\n",
                run.edges,
                ms(percentile(s, 50.0)),
                ms(p99),
                ms(percentile(s, 100.0)),
                if p99 / 1000.0 < GOAL_P99_MS {
                    "met"
                } else {
                    "MISSED"
                }
            );
        }
        json_runs.push(json!({
            "edges": run.edges,
            "logins": run.logins,
            "before_ok": run.before_ok,
            "per_edge_us": run.per_edge_us.iter().map(|s| json!({
                "p50": percentile(s, 50.0), "p99": percentile(s, 99.0), "max": percentile(s, 100.0),
            })).collect::<Vec<_>>(),
            "all_edges_us": {
                "p50": percentile(&run.all_edges_us, 50.0),
                "p99": percentile(&run.all_edges_us, 99.0),
                "max": percentile(&run.all_edges_us, 100.0),
            },
            "pass_to_ok_us": {
                "p50": percentile(&run.pass_to_ok_us, 50.0),
                "p99": percentile(&run.pass_to_ok_us, 99.0),
            },
        }));
    }
    for run in runs {
        md += &format!(
            "\n{} edge(s): grants on an edge before the client read its `+OK`: {} of {}; PASS -> \
             `+OK` (gateless `pop`, the `+OK` waiting for the engine's acknowledgement) p50 {} ms, \
             p99 {} ms.",
            run.edges,
            run.before_ok,
            run.logins,
            ms(percentile(&run.pass_to_ok_us, 50.0)),
            ms(percentile(&run.pass_to_ok_us, 99.0)),
        );
    }
    md.push('\n');
    (md, json!(json_runs))
}

fn render_throughput(t: &Throughput) -> (String, serde_json::Value) {
    let mut md = format!(
        "\n## Grants per second through the bus\n\n\
         Through the publisher directly, not through POP3 logins: this process runs the \
         daemon's `Publisher` (bus/publisher.rs, as `serve` uses it: `MULTI SET PX + XADD \
         MAXLEN ~ EXEC` per grant, bounded by `bus_timeout` 250 ms) in `pop`'s namespace with \
         {} publications in flight, {} grants of new addresses; the rate is acknowledged grants \
         per second. Then the time from the first publication until each edge's map holds \
         them all (its agent reading the stream in batches of up to {}).\n\n\
         | grants | in flight | published in s | acknowledged grants/s | not acknowledged |\n\
         |---:|---:|---:|---:|---:|\n\
         | {} | {} | {:.2} | {:.0} | {} |\n\n\
         | edge | all in its map after s | grants/s applied |\n|---|---:|---:|\n",
        t.in_flight,
        t.grants,
        smtp_gate::agent::BATCH,
        t.grants,
        t.in_flight,
        t.publish_s,
        t.per_sec,
        t.failed
    );
    for (e, (s, rate)) in t.edge_s.iter().zip(&t.edge_per_sec).enumerate() {
        md += &format!("| edge{} | {s:.2} | {rate:.0} |\n", e + 1);
    }
    (md, json!(t))
}

fn render_pass(p: &PassToOk) -> (String, serde_json::Value) {
    let (l50, l99) = (percentile(&p.local_us, 50.0), percentile(&p.local_us, 99.0));
    let (b50, b99) = (percentile(&p.bus_us, 50.0), percentile(&p.bus_us, 99.0));
    let (lb, bb) = (
        Figure::of(&p.local_block_medians),
        Figure::of(&p.bus_block_medians),
    );
    let md = format!(
        "\n## PASS -> +OK: the bus beside the local map alone\n\n\
         `smtp-gate serve` on `pop` with its own gate (XDP on its veth): `gate only` (the grant \
         written in the local map) and `gate and bus` (the local map, then the publication, the \
         `+OK` waiting for the engine's acknowledgement), {} rounds of one block of {} logins \
         each (after 10 unmeasured; every login from a new address, so every one grants anew), \
         the order alternating by round, the daemon restarted for each block. From sending \
         PASS to reading its answer, µs.\n\n\
         | configuration | p50 µs | p99 µs | block medians µs |\n|---|---:|---:|---:|\n\
         | gate only | {l50:.0} | {l99:.0} | {} |\n\
         | gate and bus | {b50:.0} | {b99:.0} | {} |\n\n\
         The bus adds {:+.0} µs at the median ({:.2}× the local map alone), {:+.0} µs at the \
         p99 ({:.2}×).\n",
        p.rounds,
        p.logins_per_block,
        lb.cell(0),
        bb.cell(0),
        b50 - l50,
        b50 / l50,
        b99 - l99,
        b99 / l99,
    );
    let json = json!({
        "rounds": p.rounds,
        "logins_per_block": p.logins_per_block,
        "gate_only_us": {"p50": l50, "p99": l99, "block_medians": lb},
        "gate_and_bus_us": {"p50": b50, "p99": b99, "block_medians": bb},
        "ratio_p50": b50 / l50,
        "ratio_p99": b99 / l99,
    });
    (md, json)
}

fn redis_version() -> String {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("v=").map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}
