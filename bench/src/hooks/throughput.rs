//! Requests per second the hooks' endpoints answer, beside the floor
//! servers (bench/src/bin/policy-floor.rs) in the same lab and the same
//! runs, the two taking turns; with the CPU of the server, of the load
//! generator (this process) and of the rest of the machine.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use smtp_gate::gate::{GateMaps, PinDir};
use testkit::lab::Lab;

use super::{
    load::{self, Expect, Workload, GRANTED_CLIENTS, GRANTED_NET},
    setup::{
        self, addr, Floor, RunDir, DOVECOT_POLICY, FLOOR_DOVECOT, FLOOR_POSTFIX, POSTFIX_POLICY,
    },
};
use crate::procs;

pub const WORKLOADS: [Workload; 3] = [
    Workload::DovecotReport,
    Workload::DovecotAllow,
    Workload::PostfixMixed,
];
pub const CONNECTIONS: [usize; 2] = [1, 16];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Server {
    Gate,
    Floor,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::Gate => "smtp-gate serve",
            Server::Floor => "floor",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    #[serde(skip)]
    pub workload: Workload,
    pub workload_label: &'static str,
    pub server: Server,
    pub connections: usize,
    pub run: usize,
    pub requests: u64,
    pub errors: u64,
    pub per_sec: f64,
    /// CPU seconds per second (cores) of the server's processes.
    pub server_cpu: f64,
    /// The server's CPU time per answered request, µs.
    pub server_us_per_request: f64,
    /// Of this process: the load generator.
    pub gen_cpu: f64,
    /// Of everything else on the machine (softirq of loopback included).
    pub rest_cpu: f64,
}

fn measure(
    ns: &str,
    server: Server,
    pid: u32,
    workload: Workload,
    connections: usize,
    span: Duration,
) -> Result<(load::Done, f64, f64, f64)> {
    let (to, expect) = match (server, workload.is_dovecot()) {
        (Server::Gate, true) => (addr(DOVECOT_POLICY), Expect::Judged),
        (Server::Gate, false) => (addr(POSTFIX_POLICY), Expect::Judged),
        (Server::Floor, true) => (addr(FLOOR_DOVECOT), Expect::Dunno),
        (Server::Floor, false) => (addr(FLOOR_POSTFIX), Expect::Dunno),
    };
    let server0 = procs::tree_cpu_seconds(pid);
    let machine0 = procs::machine_busy_seconds();
    let gen0 = procs::self_cpu_seconds();
    let done = setup::in_ns(ns, || load::run(to, workload, expect, connections, span))
        .with_context(|| format!("{} against {}", workload.label(), server.label()))?;
    let wall = done.elapsed.as_secs_f64();
    let server_cpu = (procs::tree_cpu_seconds(pid) - server0) / wall;
    let gen_cpu = (procs::self_cpu_seconds() - gen0) / wall;
    let machine = (procs::machine_busy_seconds() - machine0) / wall;
    Ok((
        done,
        server_cpu,
        gen_cpu,
        (machine - server_cpu - gen_cpu).max(0.0),
    ))
}

/// Every workload with every connection count, `runs` times, for `span`
/// each, smtp-gate and the floor alternating (the first of a run
/// alternating too).
pub fn run(runs: usize, span: Duration, progress: &dyn Fn(&str)) -> Result<Vec<Sample>> {
    let dir = RunDir::new("load")?;
    let lab = Lab::new();
    let daemon = setup::start_daemon(&lab, &dir.0, true, true)?;
    let daemon_pid = daemon.pid().context("the daemon has no pid")?;
    let mut maps = GateMaps::open(&PinDir::new(lab.pin_dir()))?;
    let floor_dovecot = Floor::start(&lab.server_ns, true)?;
    let floor_postfix = Floor::start(&lab.server_ns, false)?;
    let mut samples = Vec::new();
    for workload in WORKLOADS {
        for connections in CONNECTIONS {
            progress(&format!(
                "throughput: {}, {connections} connection(s)",
                workload.label()
            ));
            for run in 0..runs {
                let order = if run % 2 == 0 {
                    [Server::Gate, Server::Floor]
                } else {
                    [Server::Floor, Server::Gate]
                };
                for server in order {
                    if !workload.is_dovecot() {
                        grant_postfix_clients(&mut maps)?;
                    }
                    let pid = match (server, workload.is_dovecot()) {
                        (Server::Gate, _) => daemon_pid,
                        (Server::Floor, true) => floor_dovecot.pid(),
                        (Server::Floor, false) => floor_postfix.pid(),
                    };
                    let (done, server_cpu, gen_cpu, rest_cpu) =
                        measure(&lab.server_ns, server, pid, workload, connections, span).map_err(
                            |e| {
                                anyhow::anyhow!(
                                    "{e:#}\n--- smtp-gate serve's log (end) ---\n{}",
                                    tail(&daemon.log())
                                )
                            },
                        )?;
                    let per_sec = done.requests as f64 / done.elapsed.as_secs_f64();
                    samples.push(Sample {
                        workload,
                        workload_label: workload.label(),
                        server,
                        connections,
                        run,
                        requests: done.requests,
                        errors: done.errors,
                        per_sec,
                        server_cpu,
                        server_us_per_request: server_cpu / per_sec * 1e6,
                        gen_cpu,
                        rest_cpu,
                    });
                }
            }
        }
    }
    Ok(samples)
}

/// Grants the Postfix workload's granted clients anew, just before it: the
/// grant maps are LRU maps, and the Dovecot reports before (a new address
/// each, hundreds of thousands) push older grants out.
fn grant_postfix_clients(maps: &mut GateMaps) -> Result<()> {
    for i in 0..GRANTED_CLIENTS {
        maps.grant(load::in_net(GRANTED_NET, i), None)?;
    }
    Ok(())
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
