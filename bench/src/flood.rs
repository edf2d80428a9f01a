//! `cargo xtask bench flood`: a SYN flood from spoofed sources against a
//! real MTA (Postfix) in a network namespace, with no gate, with Postfix's
//! client table (the classic POP-before-SMTP deployment), with an
//! nftables set, and with smtp-gate (XDP drop, XDP reset, TC drop), all in
//! the same run, while a granted client keeps sending; then the cost of one
//! rejected sender in Postfix beside one dropped SYN in the gate.
//!
//! Network safety: everything runs between two namespaces that this suite
//! creates (testkit's lab) and deletes, joined by one veth pair, with no
//! default route in either (asserted); spoofed sources are in
//! 198.18.0.0/15, routed by the server back to the client veth only, where
//! an nftables rule drops them; every loop is bounded in count and time;
//! guards stop Postfix and delete the namespaces, also on errors, panics
//! and SIGINT/SIGTERM. See net.rs.

mod clients;
mod cost;
mod gen;
mod net;
mod postfix;
mod render;
mod setup;
mod sys;
mod xdpgen;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    sync::atomic::AtomicBool,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::report::{self, Machine};
use clients::{LegitConfig, LegitResult, RejectConfig, RejectResult};
use gen::{GenConfig, GenResult};
use net::{DevStats, FloodNet, CLIENT_CPU, REJECTED_V4, SERVER_CPU};
use postfix::{Postfix, Restrictions};
use sys::CpuTimes;

const SMTP_PORT: u16 = 25;
/// Goal: the granted client's p99 under flood within this factor of its
/// figure without flood.
const GOAL_P99_FACTOR: f64 = 2.0;
/// Goal: a rejected sender costs Postfix at least this many times more CPU
/// than a dropped SYN costs the gate.
const GOAL_REJECT_RATIO: f64 = 1000.0;
/// Pause after each flood phase.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    NoGate,
    PostfixTable,
    Nftables,
    XdpDrop,
    XdpReset,
    TcDrop,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::NoGate,
        Config::PostfixTable,
        Config::Nftables,
        Config::XdpDrop,
        Config::XdpReset,
        Config::TcDrop,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::NoGate => "no gate",
            Config::PostfixTable => "Postfix client table",
            Config::Nftables => "nftables set (netdev ingress)",
            Config::XdpDrop => "smtp-gate XDP, deny drop",
            Config::XdpReset => "smtp-gate XDP, deny reset",
            Config::TcDrop => "smtp-gate TC, deny drop",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Config::NoGate => "none",
            Config::PostfixTable => "postfix_table",
            Config::Nftables => "nftables",
            Config::XdpDrop => "xdp_drop",
            Config::XdpReset => "xdp_reset",
            Config::TcDrop => "tc_drop",
        }
    }

    fn is_smtp_gate(self) -> bool {
        matches!(self, Config::XdpDrop | Config::XdpReset | Config::TcDrop)
    }
}

/// How the flood reaches the server veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Generator {
    /// AF_PACKET + sendmmsg: every SYN is a socket buffer before the
    /// server sees it (its XDP program runs on a copy of it).
    Packet,
    /// The same at [`PACED_RATE`]: a flood the filters can keep up with
    /// and an unfiltered server cannot, so that what the legitimate client
    /// sees is the filter's doing, not the lab's one receive ring
    /// overflowing.
    PacketPaced,
    /// XDP live frames, XDP_TX on the client veth: the server veth gets raw
    /// frames, as a driver gets DMA buffers from a NIC.
    XdpFrames,
}

/// Twice what the server drains here with no filter at all (about 0.15
/// Mpps in the full run of 2026-11-28), far below what either generator
/// reaches.
const PACED_RATE: f64 = 300_000.0;

impl Generator {
    const ALL: [Generator; 3] = [
        Generator::Packet,
        Generator::PacketPaced,
        Generator::XdpFrames,
    ];

    fn name(self) -> &'static str {
        match self {
            Generator::Packet => "AF_PACKET sendmmsg (socket buffers)",
            Generator::PacketPaced => "AF_PACKET sendmmsg paced at 0.3 Mpps (socket buffers)",
            Generator::XdpFrames => "XDP live frames (raw frames, as from a NIC)",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Generator::Packet => "af_packet",
            Generator::PacketPaced => "af_packet_paced",
            Generator::XdpFrames => "xdp_frames",
        }
    }

    fn rate_pps(self) -> Option<f64> {
        (self == Generator::PacketPaced).then_some(PACED_RATE)
    }
}

struct Params {
    runs: usize,
    flood: Duration,
    calm: Duration,
    max_packets: u64,
    legit_interval: Duration,
    legit_timeout: Duration,
    reject_attempts: usize,
    test_run_repeat: u32,
}

impl Params {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                flood: Duration::from_secs(3),
                calm: Duration::from_secs(2),
                max_packets: 100_000_000,
                legit_interval: Duration::from_millis(10),
                legit_timeout: Duration::from_secs(3),
                reject_attempts: 300,
                test_run_repeat: 200_000,
            }
        } else {
            Self {
                runs: 3,
                flood: Duration::from_secs(10),
                calm: Duration::from_secs(4),
                max_packets: 300_000_000,
                legit_interval: Duration::from_millis(10),
                legit_timeout: Duration::from_secs(3),
                reject_attempts: 1000,
                test_run_repeat: 1_000_000,
            }
        }
    }
}

/// The guards, in drop order: Postfix stops before the namespaces go.
struct Bench {
    postfix: Postfix,
    net: FloodNet,
}

/// Counters read at the start and end of a phase.
struct Snapshot {
    at: Instant,
    cpu: CpuTimes,
    napi_ns: u64,
    postfix_s: f64,
    server: DevStats,
    client: DevStats,
    gate_denied: u64,
    nft_dropped: u64,
    guard_drops: u64,
    log_offset: u64,
    tcp: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Phase {
    seconds: f64,
    legit: LegitResult,
    /// CPU 1 (the server's) busy seconds.
    server_cpu_s: f64,
    server_softirq_s: f64,
    server_steal_s: f64,
    /// The server veth's NAPI thread.
    napi_s: f64,
    postfix_s: f64,
    server_veth: DevStats,
    client_veth: DevStats,
    gate_denied: u64,
    nft_dropped: u64,
    guard_drops: u64,
    mta_connects: BTreeMap<String, u64>,
    /// The server's TCP counters (see net::TCP_COUNTERS), differences.
    tcp: BTreeMap<String, u64>,
    generator: Option<GenResult>,
}

#[derive(Clone, Debug, serde::Serialize)]
struct Sample {
    config: &'static str,
    generator: &'static str,
    run: usize,
    /// The calm phase of this configuration in this run (shared by both
    /// generators' samples).
    calm: Phase,
    flood: Phase,
    /// Flood SYNs the server's receive path handled: server veth packets
    /// beyond the calm phase's rate.
    flood_at_server: f64,
    /// SYNs the server veth's ring had no room for (dropped before any
    /// filter ran).
    ring_drops: u64,
    /// Segments that reached the server's TCP beyond the calm rate.
    flood_at_tcp: f64,
    /// Server CPU (CPU 1) beyond the calm phase's rate.
    flood_server_cpu_s: f64,
    /// The server veth's NAPI thread beyond the calm phase's rate.
    flood_napi_s: f64,
}

impl Sample {
    fn new(config: Config, generator: Generator, run: usize, calm: &Phase, flood: Phase) -> Self {
        let scale = flood.seconds / calm.seconds.max(1e-9);
        let beyond = |f: f64, c: f64| (f - c * scale).max(0.0);
        let in_segs = |p: &Phase| p.tcp.get("Tcp.InSegs").copied().unwrap_or(0) as f64;
        Self {
            config: config.key(),
            generator: generator.key(),
            run,
            flood_at_server: beyond(
                flood.server_veth.rx_packets as f64,
                calm.server_veth.rx_packets as f64,
            ),
            ring_drops: flood.client_veth.tx_dropped,
            flood_at_tcp: beyond(in_segs(&flood), in_segs(calm)),
            flood_server_cpu_s: flood.server_cpu_s - calm.server_cpu_s * scale,
            flood_napi_s: flood.napi_s - calm.napi_s * scale,
            calm: calm.clone(),
            flood,
        }
    }

    fn per_million(&self, seconds: f64) -> f64 {
        if self.flood_at_server < 1000.0 {
            return f64::NAN;
        }
        seconds / self.flood_at_server * 1e6
    }

    fn server_cpu_per_m(&self) -> f64 {
        self.per_million(self.flood_server_cpu_s)
    }

    fn napi_per_m(&self) -> f64 {
        self.per_million(self.flood_napi_s)
    }

    fn gen(&self) -> GenResult {
        self.flood.generator.unwrap_or_default()
    }
}

#[derive(Clone, Debug, serde::Serialize)]
struct RejectSample {
    run: usize,
    result: RejectResult,
    postfix_cpu_s: f64,
    server_cpu_s: f64,
    idle_server_cpu_rate: f64,
}

impl RejectSample {
    fn postfix_us(&self) -> f64 {
        self.postfix_cpu_s / self.result.attempts.max(1) as f64 * 1e6
    }

    fn server_us(&self) -> f64 {
        let extra = self.server_cpu_s - self.idle_server_cpu_rate * self.result.seconds;
        extra / self.result.attempts.max(1) as f64 * 1e6
    }
}

pub fn run(quick: bool) -> Result<()> {
    sys::catch_interrupts();
    let params = Params::new(quick);
    let machine = Machine::describe();
    if machine.cores < 2 {
        bail!("the flood suite needs two CPUs (generator and server)");
    }
    setup::ensure_prerequisites()?;
    std::env::set_var("SMTP_GATE_BIN", setup::smtp_gate_bin()?);
    postfix::sweep_stale();

    eprintln!("flood: BPF_PROG_TEST_RUN of one dropped SYN");
    let test_run = cost::measure(params.test_run_repeat, 3)?;

    eprintln!("flood: building the namespaces and starting Postfix");
    let net = FloodNet::new()?;
    let postfix = Postfix::new(&net.server_ns, net.server_v4, net.client_v4)?;
    let mut bench = Bench { postfix, net };
    bench.postfix.start()?;
    let outcome = measure_all(&mut bench, &params);
    // Guards run here (Postfix stop, lab teardown) whatever happened.
    drop(bench);
    let (samples, rejects) = outcome?;
    check_clean()?;

    let (md, json) = render::render(&machine, &params, quick, &samples, &rejects, &test_run);
    let path = report::write("flood", &md, &json)?;
    println!("{md}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

fn measure_all(bench: &mut Bench, p: &Params) -> Result<(Vec<Sample>, Vec<RejectSample>)> {
    let frames = gen::build_frames(&gen_config(&bench.net, p), gen::FRAMES);
    let mut samples = Vec::new();
    let mut rejects = Vec::new();
    for run in 0..p.runs {
        for config in Config::ALL {
            sys::check_interrupted()?;
            eprintln!("flood: run {}/{}: {}", run + 1, p.runs, config.name());
            apply(bench, config).with_context(|| format!("setting up {}", config.name()))?;
            let calm = phase(bench, p, config, p.calm, None, &frames)?;
            // Both generators, in turns: the first one alternates by run.
            let mut generators = Generator::ALL;
            if run % 2 == 1 {
                generators.reverse();
            }
            for generator in generators {
                sys::check_interrupted()?;
                let flood = phase(bench, p, config, p.flood, Some(generator), &frames)?;
                let sample = Sample::new(config, generator, run, &calm, flood);
                eprintln!(
                    "  {}: sent {} ({:.2} Mpps), at server {:.0}, ring drops {}, NAPI {:.3} s/M, \
                     CPU 1 {:.3} s/M, legit {}/{} ok, p99 {:.2} ms",
                    generator.key(),
                    sample.gen().sent,
                    sample.gen().rate_pps() / 1e6,
                    sample.flood_at_server,
                    sample.ring_drops,
                    sample.napi_per_m(),
                    sample.server_cpu_per_m(),
                    sample.flood.legit.ok,
                    sample.flood.legit.attempts,
                    sample.flood.legit.percentile(99.0)
                );
                samples.push(sample);
                // SYN-ACK retransmissions and TIME_WAITs of the last phase
                // settle before the next one.
                thread::sleep(SETTLE);
            }
            revert(bench, config).with_context(|| format!("removing {}", config.name()))?;
        }
        sys::check_interrupted()?;
        rejects.push(reject_cost(bench, p, run)?);
    }
    Ok((samples, rejects))
}

fn gen_config(net: &FloodNet, p: &Params) -> GenConfig {
    GenConfig {
        ns: net.client_ns.clone(),
        iface: net.client_iface.clone(),
        src_mac: net.client_mac,
        dst_mac: net.server_mac,
        dst: net.server_v4,
        port: SMTP_PORT,
        duration: p.flood,
        max_packets: p.max_packets,
        cpu: CLIENT_CPU,
        rate_pps: None,
    }
}

fn smtp_addr(net: &FloodNet) -> SocketAddrV4 {
    SocketAddrV4::new(net.server_v4, SMTP_PORT)
}

const NFT_TABLE: &str = "smtp_flood";

fn apply(bench: &mut Bench, config: Config) -> Result<()> {
    let restrictions = if config == Config::PostfixTable {
        Restrictions::ClientTable
    } else {
        Restrictions::Open
    };
    if restrictions != bench.postfix.restrictions() {
        bench.postfix.set_restrictions(restrictions)?;
        verify_restrictions(bench, restrictions)?;
    }
    let net = &bench.net;
    let client = net.client_v4.to_string();
    match config {
        Config::NoGate | Config::PostfixTable => {}
        Config::Nftables => {
            let script = format!(
                "table netdev {NFT_TABLE} {{\n  set granted {{\n    type ipv4_addr\n    \
                 flags timeout\n    elements = {{ {client} timeout 15m }}\n  }}\n  chain \
                 ingress {{\n    type filter hook ingress device \"{iface}\" priority -500; \
                 policy accept;\n    meta protocol ip tcp dport {SMTP_PORT} tcp flags & (syn | \
                 ack) == syn ip saddr != @granted counter drop\n  }}\n}}\n",
                iface = net.server_iface
            );
            net.nft(&net.server_ns, &script)?;
        }
        Config::XdpDrop | Config::XdpReset | Config::TcDrop => {
            let (mode, deny) = match config {
                Config::XdpDrop => ("xdp", "drop"),
                Config::XdpReset => ("xdp", "reset"),
                _ => ("tc", "drop"),
            };
            net.lab
                .attach(&["--mode", mode, "--deny", deny, "--ports", "25"]);
            net.lab.gate_ok(&["grant", &client]);
        }
    }
    Ok(())
}

fn revert(bench: &mut Bench, config: Config) -> Result<()> {
    let net = &bench.net;
    match config {
        Config::Nftables => {
            net.nft_cmd(&net.server_ns, &["delete", "table", "netdev", NFT_TABLE])?;
        }
        Config::XdpDrop | Config::XdpReset | Config::TcDrop => {
            net.lab.detach();
        }
        _ => {}
    }
    Ok(())
}

/// Waits until a probe from the rejected address gets the reply that
/// `restrictions` call for (after a reload, old daemons may answer first).
fn verify_restrictions(bench: &Bench, restrictions: Restrictions) -> Result<()> {
    let want = match restrictions {
        Restrictions::Open => "Relay access denied",
        Restrictions::ClientTable => "Client host rejected",
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    loop {
        let reply = clients::probe_rcpt(&bench.net.client_ns, REJECTED_V4, smtp_addr(&bench.net));
        match &reply {
            Ok(r) if r.contains(want) => {
                in_a_row += 1;
                if in_a_row == 3 {
                    return Ok(());
                }
                continue;
            }
            _ => in_a_row = 0,
        }
        if Instant::now() > deadline {
            bail!(
                "Postfix does not apply {restrictions:?} (last RCPT reply: {reply:?}); its log:\n{}",
                bench.postfix.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn snapshot(bench: &Bench, config: Config, napi: &[i32]) -> Result<Snapshot> {
    let net = &bench.net;
    Ok(Snapshot {
        at: Instant::now(),
        cpu: CpuTimes::read(SERVER_CPU)?,
        napi_ns: napi.iter().filter_map(|t| sys::schedstat_ns(*t)).sum(),
        postfix_s: bench.postfix.cpu_seconds(),
        server: net.server_stats()?,
        client: net.client_stats()?,
        gate_denied: if config.is_smtp_gate() {
            net.gate_denied()
        } else {
            0
        },
        nft_dropped: if config == Config::Nftables {
            net::nft_counter(&net.nft_cmd(
                &net.server_ns,
                &["-j", "list", "table", "netdev", NFT_TABLE],
            )?)
        } else {
            0
        },
        guard_drops: net.guard_drops()?,
        log_offset: bench.postfix.log_offset(),
        tcp: net.tcp_counters()?,
    })
}

/// One phase: the legitimate client for `duration`, with the generator
/// beside it when `frames` is given; counters around both.
fn phase(
    bench: &Bench,
    p: &Params,
    config: Config,
    duration: Duration,
    generator: Option<Generator>,
    frames: &[Vec<u8>],
) -> Result<Phase> {
    let napi = bench.net.pin_napi()?;
    let legit_cfg = LegitConfig {
        ns: bench.net.client_ns.clone(),
        src: bench.net.client_v4,
        dst: smtp_addr(&bench.net),
        duration,
        max_attempts: (duration.as_millis() / p.legit_interval.as_millis().max(1)) as usize + 1,
        interval: p.legit_interval,
        timeout: p.legit_timeout,
        cpu: CLIENT_CPU,
    };
    let mut gen_cfg = gen_config(&bench.net, p);
    gen_cfg.duration = duration;
    let stop = AtomicBool::new(false);
    let before = snapshot(bench, config, &napi)?;
    let (legit, generator) = thread::scope(|scope| {
        let legit = scope.spawn(|| clients::run_legit(&legit_cfg, &stop));
        let generator = generator.map(|kind| {
            gen_cfg.rate_pps = kind.rate_pps();
            let (cfg, stop) = (&gen_cfg, &stop);
            scope.spawn(move || match kind {
                Generator::Packet | Generator::PacketPaced => gen::run(cfg, frames, stop),
                Generator::XdpFrames => xdpgen::run(cfg, stop),
            })
        });
        // Both stop by themselves; an interrupt stops them early.
        while !legit.is_finished() || generator.as_ref().is_some_and(|g| !g.is_finished()) {
            if sys::interrupted() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let legit = legit
            .join()
            .map_err(|_| anyhow!("the legitimate client panicked"));
        let generator = generator.map(|g| g.join().map_err(|_| anyhow!("the generator panicked")));
        (legit, generator)
    });
    let legit = legit?.context("legitimate client")?;
    let generator = match generator {
        Some(g) => Some(g?.context("generator")?),
        None => None,
    };
    // Let the rings and backlogs drain into the counters.
    thread::sleep(Duration::from_millis(200));
    let after = snapshot(bench, config, &napi)?;
    let cpu = after.cpu.since(&before.cpu);
    Ok(Phase {
        seconds: (after.at - before.at).as_secs_f64(),
        legit,
        server_cpu_s: cpu.busy,
        server_softirq_s: cpu.softirq,
        server_steal_s: cpu.steal,
        napi_s: after.napi_ns.saturating_sub(before.napi_ns) as f64 / 1e9,
        postfix_s: after.postfix_s - before.postfix_s,
        server_veth: after.server.since(&before.server),
        client_veth: after.client.since(&before.client),
        gate_denied: after.gate_denied.saturating_sub(before.gate_denied),
        nft_dropped: after.nft_dropped.saturating_sub(before.nft_dropped),
        guard_drops: after.guard_drops.saturating_sub(before.guard_drops),
        mta_connects: bench.postfix.connects_since(before.log_offset),
        tcp: after
            .tcp
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.saturating_sub(*before.tcp.get(k).unwrap_or(&0)),
                )
            })
            .collect(),
        generator,
    })
}

/// A full rejected SMTP attempt against Postfix's client table, repeated:
/// CPU of all Postfix processes, and of the whole server CPU.
fn reject_cost(bench: &mut Bench, p: &Params, run: usize) -> Result<RejectSample> {
    eprintln!(
        "flood: run {}/{}: the cost of one rejected sender",
        run + 1,
        p.runs
    );
    bench.postfix.set_restrictions(Restrictions::ClientTable)?;
    verify_restrictions(bench, Restrictions::ClientTable)?;
    // The server CPU's background rate, to take out.
    let idle_before = CpuTimes::read(SERVER_CPU)?;
    let idle_started = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let idle = CpuTimes::read(SERVER_CPU)?.since(&idle_before);
    let idle_rate = idle.busy / idle_started.elapsed().as_secs_f64();

    let cfg = RejectConfig {
        ns: bench.net.client_ns.clone(),
        src: REJECTED_V4,
        dst: smtp_addr(&bench.net),
        attempts: p.reject_attempts,
        max_duration: Duration::from_secs(30),
        cpu: CLIENT_CPU,
    };
    let stop = AtomicBool::new(false);
    let cpu_before = CpuTimes::read(SERVER_CPU)?;
    let postfix_before = bench.postfix.cpu_seconds();
    let result = thread::scope(|scope| {
        scope
            .spawn(|| clients::run_rejected(&cfg, &stop))
            .join()
            .map_err(|_| anyhow!("the rejected sender panicked"))
    })??;
    thread::sleep(Duration::from_millis(100));
    let postfix_cpu_s = bench.postfix.cpu_seconds() - postfix_before;
    let server_cpu_s = CpuTimes::read(SERVER_CPU)?.since(&cpu_before).busy;
    if result.rejected != result.attempts {
        bail!(
            "only {} of {} attempts were rejected by the client table: {:?}",
            result.rejected,
            result.attempts,
            result.other
        );
    }
    Ok(RejectSample {
        run,
        result,
        postfix_cpu_s,
        // The window also holds the 100 ms settle time.
        server_cpu_s,
        idle_server_cpu_rate: idle_rate,
    })
}

/// After the guards: no namespace, no Postfix master, no mount of ours.
fn check_clean() -> Result<()> {
    let pid = std::process::id();
    let netns = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("sg-{pid}-"))
                })
                .count()
        })
        .unwrap_or(0);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let ours = mounts
        .lines()
        .filter(|l| l.contains(&format!("/run/smtp-gate-tests/{pid}-")))
        .count();
    let harness = std::path::Path::new(postfix::HARNESS_ROOT).join(pid.to_string());
    if netns > 0 || ours > 0 || harness.exists() {
        bail!(
            "left behind: {netns} namespace(s), {ours} mount(s), harness dir exists: {}",
            harness.exists()
        );
    }
    Ok(())
}
