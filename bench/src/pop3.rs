//! `cargo xtask bench pop3`: smtp-gate's POP3 service side by side with
//! Dovecot (Debian's dovecot-pop3d) on loopback, in the same run, driven by
//! a tokio load generator in this process:
//!
//! - logins per second (USER/PASS and APOP, then QUIT; 1 and 16 clients);
//! - full sessions (STAT, LIST, UIDL, RETR of 20 messages of 4 KiB, QUIT)
//!   per second and MB/s (1 and 16 clients);
//! - total PSS and RSS of the server's processes with 500 idle logged-in
//!   connections, one user each;
//! - over implicit TLS (RFC 8314, the pop3s port): logins (USER/PASS),
//!   full sessions and the idle connections again, with a certificate of
//!   a CA made for the run (certs.rs), beside the same figures in clear.
//!
//! smtp-gate runs as a process of its own (`src/bin/pop3-server.rs`: the
//! same `pop3::server::Server` with a no-op grant, serving both in clear
//! and over TLS), Dovecot in its own directory with its own configuration,
//! first with its default login processes, then restarted with
//! `service_count = 0`, then restarted again with `service_count = 0` and
//! `ssl = required` for the TLS workloads. Within each run the systems
//! alternate; every figure is the median of several runs with min and
//! max, and beside it the CPU used by the load generator and by the
//! server (cores: CPU seconds per second).
//!
//! Last, the time from sending PASS to reading +OK with the real grant (the
//! gate's map) beside a no-op grant sink, both servers in this process,
//! measured alternately.

mod certs;
mod client;
mod fixture;
mod gate;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    GrantSink, NoFailureSink, NoGrant,
};
use serde::Serialize;
use serde_json::json;
use smtp_gate::{
    gate::{object, GateMaps},
    serve::GateGrantSink,
};
use tokio_util::sync::CancellationToken;

use crate::{
    dovecot::{self, Dovecot, LoginMode},
    procs,
    report::{self, percentile, Figure, Machine},
};
use client::{for_each, load, Client, Endpoint, OP_TIMEOUT};
use fixture::{Fixture, HEAVY_USERS, MESSAGES, MESSAGE_SIZE, USERS};
use gate::GateProcess;

/// The goal: the grant adds less than this to PASS -> +OK.
const GOAL_GRANT_US: f64 = 50.0;
/// Goals against Dovecot with `service_count = 0`.
const GOAL_LOGINS: f64 = 5.0;
const GOAL_SESSIONS: f64 = 3.0;
const GOAL_PSS: f64 = 0.1;
const IDLE_CONNECTIONS: usize = 500;
/// Above this much CPU used by neither the generator nor the server, a
/// measurement shared the machine with something else.
const BUSY_REST_CPU: f64 = 0.5;
/// How many idle connections log in at once (Dovecot's default allows 100
/// login processes).
const OPENING_CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum System {
    Gate,
    Dovecot(LoginMode),
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Gate => "smtp-gate",
            System::Dovecot(mode) => mode.label(),
        }
    }
}

/// Where the load generator and the server run during a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Placement {
    /// Wherever the scheduler puts them, on every CPU.
    Anywhere,
    /// Both on one CPU. One client is a chain of round trips, each waking
    /// the other side; on a VM, waking an idle vCPU goes through the
    /// hypervisor and can cost more than the POP3 command itself, so that
    /// the figure would measure the VM's wake-ups more than the server.
    /// On one CPU a wake-up is a task switch there.
    SharedCpu,
}

/// What the clients do; `tls`: over implicit TLS, a full handshake per
/// connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Workload {
    Login {
        apop: bool,
        clients: usize,
        placement: Placement,
        tls: bool,
    },
    Session {
        clients: usize,
        placement: Placement,
        tls: bool,
    },
    Idle {
        tls: bool,
    },
}

impl Workload {
    fn name(self) -> String {
        let name = match self {
            Workload::Login { apop: false, .. } => "login USER/PASS + QUIT".into(),
            Workload::Login { apop: true, .. } => "login APOP + QUIT".into(),
            Workload::Session { .. } => {
                format!("full session (STAT, LIST, UIDL, RETR x{MESSAGES}, QUIT)")
            }
            Workload::Idle { .. } => format!("{IDLE_CONNECTIONS} idle logged-in connections"),
        };
        if self.tls() {
            format!("{name}, over TLS")
        } else {
            name
        }
    }

    fn clients(self) -> usize {
        match self {
            Workload::Login { clients, .. } | Workload::Session { clients, .. } => clients,
            Workload::Idle { .. } => IDLE_CONNECTIONS,
        }
    }

    fn placement(self) -> Placement {
        match self {
            Workload::Login { placement, .. } | Workload::Session { placement, .. } => placement,
            Workload::Idle { .. } => Placement::Anywhere,
        }
    }

    fn tls(self) -> bool {
        match self {
            Workload::Login { tls, .. }
            | Workload::Session { tls, .. }
            | Workload::Idle { tls } => tls,
        }
    }

    fn is_idle(self) -> bool {
        matches!(self, Workload::Idle { .. })
    }

    /// The same in clear.
    fn in_clear(self) -> Self {
        match self {
            Workload::Login {
                apop,
                clients,
                placement,
                ..
            } => login_workload(apop, clients, placement),
            Workload::Session {
                clients, placement, ..
            } => session_workload(clients, placement),
            Workload::Idle { .. } => Workload::Idle { tls: false },
        }
    }

    /// The same over TLS.
    const fn over_tls(self) -> Self {
        match self {
            Workload::Login {
                apop,
                clients,
                placement,
                ..
            } => Workload::Login {
                apop,
                clients,
                placement,
                tls: true,
            },
            Workload::Session {
                clients, placement, ..
            } => Workload::Session {
                clients,
                placement,
                tls: true,
            },
            Workload::Idle { .. } => Workload::Idle { tls: true },
        }
    }

    /// The number of clients, and for one client where it ran.
    fn clients_label(self) -> String {
        let clients = clients_text(self.clients());
        match (self.clients(), self.placement()) {
            (1, Placement::SharedCpu) => format!("{clients}, one CPU shared with the server"),
            (1, Placement::Anywhere) => format!("{clients}, on any CPU"),
            _ => clients,
        }
    }
}

const fn login_workload(apop: bool, clients: usize, placement: Placement) -> Workload {
    Workload::Login {
        apop,
        clients,
        placement,
        tls: false,
    }
}

const fn session_workload(clients: usize, placement: Placement) -> Workload {
    Workload::Session {
        clients,
        placement,
        tls: false,
    }
}

const WORKLOADS: [Workload; 10] = [
    login_workload(false, 1, Placement::SharedCpu),
    login_workload(false, 1, Placement::Anywhere),
    login_workload(false, 16, Placement::Anywhere),
    login_workload(true, 1, Placement::SharedCpu),
    login_workload(true, 1, Placement::Anywhere),
    login_workload(true, 16, Placement::Anywhere),
    session_workload(1, Placement::SharedCpu),
    session_workload(1, Placement::Anywhere),
    session_workload(16, Placement::Anywhere),
    Workload::Idle { tls: false },
];

/// Over TLS: USER/PASS logins and full sessions with one client (on the
/// CPU of the server, the steady placement) and 16, and the idle
/// connections. (APOP over TLS is no case of its own: TLS is what makes
/// USER/PASS safe.)
const TLS_WORKLOADS: [Workload; 5] = [
    login_workload(false, 1, Placement::SharedCpu).over_tls(),
    login_workload(false, 16, Placement::Anywhere).over_tls(),
    session_workload(1, Placement::SharedCpu).over_tls(),
    session_workload(16, Placement::Anywhere).over_tls(),
    Workload::Idle { tls: true },
];

/// One measurement of one system.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Sample {
    per_sec: f64,
    mb_per_sec: f64,
    errors: u64,
    /// CPU seconds per second of the load generator (this process).
    gen_cpu: f64,
    /// CPU seconds per second of the server's processes.
    server_cpu: f64,
    /// CPU seconds per second the machine was busy with anything else:
    /// other processes, and interrupt time (loopback TCP runs partly in
    /// softirq, which is not charged to a process).
    rest_cpu: f64,
    pss_kib: u64,
    rss_kib: u64,
    /// Before the idle connections were opened.
    base_pss_kib: u64,
    processes: usize,
}

/// A sample and what it is of.
#[derive(Clone, Copy, Debug)]
struct Measured {
    workload: Workload,
    system: System,
    /// The Dovecot configuration that was running while this was measured.
    phase: Phase,
    run: usize,
    sample: Sample,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        json!({
            "workload": self.workload.name(),
            "clients": self.workload.clients(),
            "placement": format!("{:?}", self.workload.placement()),
            "system": self.system.label(),
            "phase": self.phase.label(),
            "run": self.run,
            "sample": self.sample,
        })
    }
}

/// A server under test.
struct Target {
    system: System,
    plain: Endpoint,
    /// Its implicit-TLS listener, if it has one now.
    tls: Option<Endpoint>,
    /// The process (and for Dovecot, the root of the tree) to measure.
    root: u32,
}

impl Target {
    fn endpoint(&self, tls: bool) -> Result<Endpoint> {
        if !tls {
            return Ok(self.plain.clone());
        }
        self.tls
            .clone()
            .with_context(|| format!("{} has no TLS listener", self.system.label()))
    }
}

/// Connects, logs in as `user<n>`, optionally runs the full session, QUITs;
/// returns the octets of multi-line replies.
async fn session(endpoint: Endpoint, user: usize, apop: bool, full: bool) -> Result<u64> {
    let mut client = Client::connect(&endpoint).await?;
    client.login(user, apop).await?;
    if full {
        client.command("STAT").await?;
        client.multi("LIST").await?;
        client.multi("UIDL").await?;
        for m in 1..=MESSAGES {
            client.multi(&format!("RETR {m}")).await?;
        }
    }
    client.command("QUIT").await?;
    Ok(client.bytes)
}

/// One login per user and one full session per heavy user, so that both
/// servers have their caches (Dovecot its indexes) filled before any
/// figure is taken.
async fn warm_up(endpoint: Endpoint, users: usize) -> Result<()> {
    for_each(users, OPENING_CONCURRENCY, move |user| {
        session(endpoint.clone(), user, false, user < HEAVY_USERS)
    })
    .await?;
    Ok(())
}

/// Puts the load generator (this process) and the server's processes on
/// the CPUs the workload's placement says.
fn place(target: &Target, workload: Workload) -> Result<()> {
    let cores = procs::online_cpus();
    let cpus = match workload.placement() {
        Placement::SharedCpu => cores - 1..cores,
        Placement::Anywhere => 0..cores,
    };
    procs::pin(&[std::process::id()], cpus.clone()).context("placing the load generator")?;
    procs::pin(&procs::tree(target.root), cpus).context("placing the server")?;
    Ok(())
}

async fn measure(target: &Target, workload: Workload, span: Duration) -> Result<Sample> {
    place(target, workload)?;
    let endpoint = target.endpoint(workload.tls())?;
    let server0 = procs::tree_cpu_seconds(target.root);
    let machine0 = procs::machine_busy_seconds();
    let gen0 = procs::self_cpu_seconds();
    let started = Instant::now();
    let result = match workload {
        Workload::Login { apop, clients, .. } => {
            load(clients, span, move |c| {
                session(endpoint.clone(), c % HEAVY_USERS, apop, false)
            })
            .await?
        }
        Workload::Session { clients, .. } => {
            load(clients, span, move |c| {
                session(endpoint.clone(), c % HEAVY_USERS, false, true)
            })
            .await?
        }
        Workload::Idle { .. } => return measure_idle(target, endpoint).await,
    };
    let wall = started.elapsed().as_secs_f64();
    let gen_cpu = (procs::self_cpu_seconds() - gen0) / wall;
    let machine_cpu = (procs::machine_busy_seconds() - machine0) / wall;
    let server_cpu = (procs::tree_cpu_seconds(target.root) - server0) / wall;
    Ok(Sample {
        per_sec: result.per_sec(),
        mb_per_sec: result.mb_per_sec(),
        errors: result.errors,
        gen_cpu,
        server_cpu,
        rest_cpu: (machine_cpu - gen_cpu - server_cpu).max(0.0),
        ..Sample::default()
    })
}

/// Opens [`IDLE_CONNECTIONS`] connections, each logged in as another user,
/// sums Pss and Rss over the server's processes while they sit idle, then
/// closes them and waits for the server to settle.
async fn measure_idle(target: &Target, endpoint: Endpoint) -> Result<Sample> {
    let base = procs::tree(target.root);
    let (base_pss_kib, _) = procs::memory_kib(&base);
    let gen0 = procs::self_cpu_seconds();
    let started = Instant::now();
    let clients = for_each(IDLE_CONNECTIONS, OPENING_CONCURRENCY, move |user| {
        let endpoint = endpoint.clone();
        async move {
            let mut client = Client::connect(&endpoint).await?;
            client.login(user, false).await?;
            anyhow::Ok(client)
        }
    })
    .await
    .context("opening the idle connections")?;
    let wall = started.elapsed().as_secs_f64();
    let gen_cpu = (procs::self_cpu_seconds() - gen0) / wall;
    // Let forked processes finish starting up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = procs::tree(target.root);
    let (pss_kib, rss_kib) = procs::memory_kib(&pids);
    let processes = pids.len();
    let mut closing = Vec::new();
    for mut client in clients {
        closing.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.command("QUIT")).await;
        }));
    }
    for task in closing {
        let _ = task.await;
    }
    // Dovecot's pop3 processes exit after QUIT: wait (bounded) until the
    // tree is back to its size before, so the next measurement starts clean.
    let deadline = Instant::now() + Duration::from_secs(15);
    while procs::tree(target.root).len() > base.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Sample {
        gen_cpu,
        pss_kib,
        rss_kib,
        base_pss_kib,
        processes,
        ..Sample::default()
    })
}

/// The system's OpenSSL, which Debian's Dovecot is linked with.
fn openssl_version() -> String {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "OpenSSL, version unknown".into())
}

/// What a TLS handshake with `target` settles on (one connection, QUIT).
async fn tls_parameters(target: &Target) -> Result<String> {
    let endpoint = target.endpoint(true)?;
    let mut client = tokio::time::timeout(OP_TIMEOUT, Client::connect(&endpoint))
        .await
        .context("connecting over TLS timed out")??;
    let parameters = client.tls_parameters().context("no TLS session")?;
    tokio::time::timeout(OP_TIMEOUT, client.command("QUIT"))
        .await
        .context("QUIT timed out")??;
    Ok(parameters)
}

/// The system as the TLS phase runs it.
fn phase_system_label(system: System, phase: Phase) -> String {
    match system {
        System::Gate => system.label().into(),
        System::Dovecot(_) => phase.label(),
    }
}

/// One Dovecot configuration and the workloads measured beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Phase {
    mode: LoginMode,
    /// Dovecot with a certificate and `ssl = required`: the workloads over
    /// TLS, and no others.
    tls: bool,
}

impl Phase {
    fn label(self) -> String {
        if self.tls {
            format!("{}, ssl = required", self.mode.label())
        } else {
            self.mode.label().into()
        }
    }

    /// The workloads, in groups measured together run by run. Over TLS,
    /// each throughput workload goes with the same in clear, on the same
    /// servers, so that what TLS costs is measured at the same time (this
    /// machine's load changes from minute to minute; Dovecot with `ssl =
    /// required` still takes a password in clear from loopback, which it
    /// counts as secured). Memory does not depend on the load: the idle
    /// connections over TLS stand alone.
    fn groups(self) -> Vec<Vec<Workload>> {
        if !self.tls {
            return WORKLOADS.iter().map(|&w| vec![w]).collect();
        }
        TLS_WORKLOADS
            .iter()
            .map(|&w| {
                if w.is_idle() {
                    vec![w]
                } else {
                    vec![w, w.in_clear()]
                }
            })
            .collect()
    }
}

/// Every workload of the phase, `runs` times, smtp-gate and Dovecot
/// alternating.
async fn measure_phase(
    gate: &Target,
    dovecot: &Target,
    phase: Phase,
    first: bool,
    span: Duration,
    runs: usize,
) -> Result<Vec<Measured>> {
    let mut records = Vec::new();
    let targets = [gate, dovecot];
    // The next Dovecots start on the first one's indexes, and smtp-gate
    // is already warm: then the heavy users are enough.
    let users = if first { USERS } else { HEAVY_USERS };
    for target in targets {
        warm_up(target.endpoint(phase.tls)?, users)
            .await
            .with_context(|| format!("warming up {}", target.system.label()))?;
    }
    for group in phase.groups() {
        progress(&format!(
            "  {}, {}{}",
            group[0].name(),
            group[0].clients_label(),
            if group.len() > 1 {
                ", beside the same in clear"
            } else {
                ""
            }
        ));
        for run in 0..runs {
            // Alternate which system goes first, and in a group which
            // workload.
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let target = targets[i];
                let mut workloads = group.clone();
                if run % 2 == 1 {
                    workloads.reverse();
                }
                for workload in workloads {
                    let sample = measure(target, workload, span).await.with_context(|| {
                        format!(
                            "{}: {}, {}",
                            target.system.label(),
                            workload.name(),
                            workload.clients_label()
                        )
                    })?;
                    records.push(Measured {
                        workload,
                        system: target.system,
                        phase,
                        run,
                        sample,
                    });
                }
            }
        }
    }
    Ok(records)
}

fn bench_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench"));
    std::fs::create_dir_all(&dir).ok();
    dir.canonicalize().unwrap_or(dir)
}

pub fn run(quick: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(quick))
}

async fn run_async(quick: bool) -> Result<()> {
    let (span, runs) = if quick {
        (Duration::from_millis(500), 3)
    } else {
        (Duration::from_secs(3), 5)
    };
    let samples = if quick { 300 } else { 2000 };
    progress("installing what is missing, building the fixture");
    let machine = Machine::describe();
    let nofile = procs::raise_nofile();
    let version = dovecot::ensure_installed()?;
    let dir = bench_dir();
    let fixture = Fixture::create(&dir)?;
    // Dovecot will not access mail as root.
    let (uid, gid) = dovecot::user_ids("nobody")?;
    fixture.chown_mail(uid, gid)?;
    let setup = dovecot::Setup {
        users_file: &fixture.users_file,
        mail_root: &fixture.mail_root(),
        mail_uid: uid,
        mail_gid: gid,
    };

    let pki = certs::create(&fixture.dir.join("tls"))?;
    let connector = certs::connector(&pki)?;
    let over_tls = |addr: SocketAddr| Endpoint {
        addr,
        tls: Some(connector.clone()),
    };
    let ssl = dovecot::Ssl {
        cert: &pki.cert,
        key: &pki.key,
    };

    let gate = GateProcess::start(&fixture, Some(&pki))?;
    let gate_target = Target {
        system: System::Gate,
        plain: Endpoint::plain(gate.addr),
        tls: gate.tls_addr.map(over_tls),
        root: gate.pid(),
    };
    let modes = [
        LoginMode::Default,
        LoginMode::Reuse {
            min_avail: machine.cores,
        },
    ];
    // The TLS workloads beside Dovecot's faster mode only: in its default
    // mode every connection forks a login process either way.
    let phases = modes
        .iter()
        .map(|&mode| Phase { mode, tls: false })
        .chain([Phase {
            mode: modes[1],
            tls: true,
        }]);
    let mut records: Vec<Measured> = Vec::new();
    let mut dovecot_problems = Vec::new();
    // What each server's TLS handshake settled on.
    let mut negotiated = Vec::new();
    let home = dovecot::Home::create(&dir, &setup)?;
    for (i, phase) in phases.enumerate() {
        progress(&format!("{} beside smtp-gate", phase.label()));
        let ssl = phase.tls.then_some(&ssl);
        let dovecot = tokio::task::block_in_place(|| {
            Dovecot::start(&home, &version, phase.mode, &setup, ssl)
        })?;
        let dovecot_target = Target {
            system: System::Dovecot(phase.mode),
            plain: Endpoint::plain(dovecot.addr),
            tls: dovecot.tls_addr.map(over_tls),
            root: dovecot.master_pid().context("Dovecot has no master")?,
        };
        let measured = async {
            let records =
                measure_phase(&gate_target, &dovecot_target, phase, i == 0, span, runs).await?;
            if phase.tls {
                for target in [&gate_target, &dovecot_target] {
                    let parameters = tls_parameters(target).await?;
                    negotiated.push((phase_system_label(target.system, phase), parameters));
                }
            }
            anyhow::Ok(records)
        }
        .await;
        match measured {
            Ok(mut phase) => records.append(&mut phase),
            Err(e) => {
                return Err(e.context(format!(
                    "{} beside smtp-gate; Dovecot's log ends with:\n{}",
                    phase.label(),
                    dovecot.log_tail()
                )))
            }
        }
        dovecot_problems.extend(
            dovecot
                .log_problems()
                .into_iter()
                .map(|l| format!("{}: {l}", phase.label())),
        );
        tokio::task::block_in_place(|| dovecot.stop())?;
    }
    drop(gate);
    drop(home);

    let mut md = String::from("# smtp-gate POP3 benchmark, beside Dovecot\n\n");
    md += &machine.markdown();
    md += &format!(
        "\nCommand: `cargo xtask bench pop3{}`. Dovecot {version} (Debian's dovecot-pop3d), \
         configured by the harness in its own directory. Loopback only; load generator: tokio, \
         in the harness process; smtp-gate: `pop3::server::Server` in a process of its own \
         (bench/src/bin/pop3-server.rs, no-op grant, logging like the daemon; its certificate \
         is configured throughout, see \"Over TLS\", and clients on loopback may log in in \
         clear). {USERS} users; \
         the throughput workloads use {HEAVY_USERS} of them, with {MESSAGES} messages of \
         {MESSAGE_SIZE} octets each; the idle connections use all {USERS}. RLIMIT_NOFILE \
         {nofile}.\n\n\
         Dovecot: passwd-file with the same `{{PLAIN}}` secrets, static userdb (uid `nobody`) on \
         the same Maildirs (`pop3_uidl_format = %f`, indexes in its own directory), `ssl = no`, \
         `auth_mechanisms = plain apop`; `service pop3 {{ process_limit = 1024 }}` (the default \
         100 cannot hold 500 sessions); default mode: `service pop3-login {{ service_count = 1 \
         }}`; service_count=0 mode: `service_count = 0`, `process_min_avail = {}`. smtp-gate: \
         per-address connection limit raised to 4096 (every client here is 127.0.0.1).\n\n\
         Every figure is the median (min–max) of {runs} runs of {span:?} (smtp-gate: \
         {} runs, alternated with each Dovecot mode); Dovecot was restarted between its \
         configurations, and within each run the systems alternate. `[gen G, srv S, rest R]`: CPU used by \
         the load generator, by the server's processes, and by everything else on the machine \
         (other processes, interrupts: loopback TCP runs partly in softirq) over the \
         measurement, in cores (CPU seconds per second; the machine has {}). Ratios compare smtp-gate with the Dovecot mode \
         it alternated with.\n\n",
        if quick { " --quick" } else { "" },
        machine.cores,
        runs * modes.len(),
        machine.cores,
    );
    let in_clear: Vec<Measured> = records.iter().filter(|m| !m.phase.tls).copied().collect();
    let (table, rows, goals) = tables(&in_clear, &modes);
    md += &table;
    let throughput: Vec<&Measured> = records.iter().filter(|m| !m.workload.is_idle()).collect();
    let busy = throughput
        .iter()
        .filter(|m| m.sample.rest_cpu > BUSY_REST_CPU)
        .count();
    if busy > 0 {
        md += &format!(
            "\n{busy} of {} throughput measurements had more than {BUSY_REST_CPU} cores busy \
             outside the load generator and the server (`rest`): something else shared the \
             machine then, and those figures are low and noisy.\n",
            throughput.len()
        );
    }
    md += "\n## Goals (against Dovecot with service_count=0)\n\n";
    for (goal, met) in &goals {
        md += &format!("- {goal}: {}\n", if *met { "met" } else { "MISSED" });
    }
    let negotiated_text: Vec<String> = negotiated
        .iter()
        .map(|(system, parameters)| format!("{system}: {parameters}"))
        .collect();
    md += &format!(
        "\n## Over TLS (implicit TLS, RFC 8314)\n\n\
         Each server has a second listener on 127.0.0.1 that speaks TLS from the first octet \
         (pop3s), with the same certificate and key files, made by the harness for this run: \
         {key_type}, signed by a CA of the run's own. smtp-gate: rustls over ring, TLS 1.2 and \
         1.3 (the same process as above). Dovecot: restarted in its service_count=0 mode with \
         `ssl = required`, `ssl_cert`, `ssl_key` and `inet_listener pop3s {{ ssl = yes }}`, its \
         other ssl settings at their defaults ({openssl}). The load generator: tokio-rustls over \
         ring, offering what rustls offers by default (TLS 1.3 and 1.2), verifying the chain \
         against the run's CA and the name `{server_name}`; it keeps no session tickets, so \
         every connection is a full handshake. Negotiated (protocol, cipher suite, key \
         exchange): {negotiated}. Every figure: median (min–max) of {runs} runs of {span:?}, \
         the two alternating. \"TLS ÷ clear\": a server's figure over TLS divided by its own \
         in clear (shown beside), measured in the same runs on the same servers, each run \
         measuring both, the order alternating (Dovecot with `ssl = required` takes a password \
         in clear from loopback, which it counts as secured); for the idle connections, the \
         figures in clear of the service_count=0 configuration above (memory does not follow \
         the machine's load as throughput does).\n\n",
        key_type = certs::KEY_TYPE,
        openssl = openssl_version(),
        server_name = testkit::tls::SERVER_NAME,
        negotiated = negotiated_text.join("; "),
    );
    let (tls_md, tls_rows) = tls_table(&records, modes[1]);
    md += &tls_md;
    if !dovecot_problems.is_empty() {
        md += &format!(
            "\nDovecot logged {} warnings or errors, e.g.:\n\n",
            dovecot_problems.len()
        );
        for line in dovecot_problems.iter().take(5) {
            md += &format!("    {line}\n");
        }
    }

    // PASS -> +OK with the real grant and with none, both in this process.
    progress("PASS to +OK, real grant beside a no-op one");
    let (grant_md, grant_json) = grant_latency(&fixture, samples).await?;
    md += &grant_md;

    let json = json!({
        "machine": machine,
        "dovecot_version": version,
        "runs": runs,
        "span_secs": span.as_secs_f64(),
        "rows": rows,
        "tls": {
            "key_type": certs::KEY_TYPE,
            "negotiated": negotiated.iter().map(|(system, parameters)| json!({"system": system, "parameters": parameters})).collect::<Vec<_>>(),
            "rows": tls_rows,
        },
        "goals": goals.iter().map(|(g, met)| json!({"goal": g, "met": met})).collect::<Vec<_>>(),
        "samples": records.iter().map(Measured::json).collect::<Vec<_>>(),
        "dovecot_log_problems": dovecot_problems,
        "pass_to_ok_us": grant_json,
    });
    let path = report::write("pop3", &md, &json)?;
    println!("{md}");
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// One metric of a workload, as a table row.
#[derive(Clone, Copy)]
enum Metric {
    PerSec,
    MbPerSec,
    PssMib,
    /// The total PSS divided among the idle connections: the server's own
    /// memory is in it. (The PSS above the one before they were opened
    /// would leave it out, but smtp-gate's allocator keeps freed memory
    /// from the workloads before, which idle sessions then reuse.)
    PssPerConnectionKib,
    RssMib,
    BasePssMib,
    Processes,
}

impl Metric {
    fn of(self, s: &Sample) -> f64 {
        match self {
            Metric::PerSec => s.per_sec,
            Metric::MbPerSec => s.mb_per_sec,
            Metric::PssMib => s.pss_kib as f64 / 1024.0,
            Metric::PssPerConnectionKib => s.pss_kib as f64 / IDLE_CONNECTIONS as f64,
            Metric::RssMib => s.rss_kib as f64 / 1024.0,
            Metric::BasePssMib => s.base_pss_kib as f64 / 1024.0,
            Metric::Processes => s.processes as f64,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Metric::PerSec => "per second",
            Metric::MbPerSec => "MB/s",
            Metric::PssMib => "total PSS, MiB",
            Metric::PssPerConnectionKib => "total PSS per connection, KiB",
            Metric::RssMib => "total RSS, MiB (shared pages once per process)",
            Metric::BasePssMib => "total PSS before opening them, MiB",
            Metric::Processes => "processes",
        }
    }

    fn decimals(self) -> usize {
        match self {
            Metric::PerSec | Metric::Processes => 0,
            _ => 1,
        }
    }

    fn has_ratio(self) -> bool {
        !matches!(self, Metric::Processes)
    }

    /// CPU figures beside throughput only.
    fn shows_cpu(self) -> bool {
        matches!(self, Metric::PerSec | Metric::MbPerSec)
    }

    /// The goal against Dovecot with service_count=0, as (ratio, at least?).
    fn goal(self, workload: Workload) -> Option<(f64, bool)> {
        match (workload, self) {
            (Workload::Login { .. }, Metric::PerSec) => Some((GOAL_LOGINS, true)),
            (Workload::Session { .. }, Metric::PerSec | Metric::MbPerSec) => {
                Some((GOAL_SESSIONS, true))
            }
            (Workload::Idle { tls: false }, Metric::PssMib) => Some((GOAL_PSS, false)),
            _ => None,
        }
    }
}

type Records = [Measured];

/// A progress line on stderr, with the seconds since the suite began.
fn progress(what: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("pop3 [{:5.1} s] {what}", start.elapsed().as_secs_f64());
}

fn format_ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

fn clients_text(n: usize) -> String {
    if n == 1 {
        "1 client".into()
    } else {
        format!("{n} clients")
    }
}

fn median(values: &[f64]) -> f64 {
    Figure::of(values).median
}

/// The metrics a workload is reported in, one row each.
fn metrics_of(workload: Workload) -> &'static [Metric] {
    match workload {
        Workload::Login { .. } => &[Metric::PerSec],
        Workload::Session { .. } => &[Metric::PerSec, Metric::MbPerSec],
        Workload::Idle { tls: false } => &[
            Metric::PssMib,
            Metric::RssMib,
            Metric::BasePssMib,
            Metric::Processes,
        ],
        Workload::Idle { tls: true } => &[
            Metric::PssMib,
            Metric::PssPerConnectionKib,
            Metric::RssMib,
            Metric::BasePssMib,
            Metric::Processes,
        ],
    }
}

/// The samples of `workload` on `system`, of every phase or of one.
fn select(
    records: &Records,
    workload: Workload,
    system: System,
    phase: Option<Phase>,
) -> Vec<&Sample> {
    records
        .iter()
        .filter(|m| {
            m.workload == workload && m.system == system && phase.is_none_or(|p| p == m.phase)
        })
        .map(|m| &m.sample)
        .collect()
}

/// One system's figure of `metric` as a table cell (median, min–max, the
/// CPU beside throughput, failures) and as JSON; `None` without samples.
fn figure_cell(samples: &[&Sample], metric: Metric) -> Option<(String, serde_json::Value)> {
    if samples.is_empty() {
        return None;
    }
    let values: Vec<f64> = samples.iter().map(|s| metric.of(s)).collect();
    let figure = Figure::of(&values);
    let mut cell = figure.cell(metric.decimals());
    let gen = median(&samples.iter().map(|s| s.gen_cpu).collect::<Vec<_>>());
    let srv = median(&samples.iter().map(|s| s.server_cpu).collect::<Vec<_>>());
    let rest = median(&samples.iter().map(|s| s.rest_cpu).collect::<Vec<_>>());
    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    if metric.shows_cpu() {
        cell += &format!(" [gen {gen:.2}, srv {srv:.2}, rest {rest:.2}]");
    }
    if errors > 0 {
        cell += &format!(" ({errors} failed)");
    }
    let json = json!({"figure": figure, "gen_cpu": gen, "server_cpu": srv, "rest_cpu": rest, "errors": errors});
    Some((cell, json))
}

/// The median of `metric` over `ours` divided by that over `theirs`.
fn median_ratio(ours: &[&Sample], theirs: &[&Sample], metric: Metric) -> Option<f64> {
    let values =
        |samples: &[&Sample]| -> Vec<f64> { samples.iter().map(|s| metric.of(s)).collect() };
    let (ours, theirs) = (values(ours), values(theirs));
    (metric.has_ratio() && !ours.is_empty() && !theirs.is_empty() && median(&theirs) != 0.0)
        .then(|| median(&ours) / median(&theirs))
}

fn ratio_cell(r: Option<f64>) -> String {
    r.map_or("-".into(), format_ratio)
}

/// The Markdown table of the workloads in clear, their rows as JSON, and
/// each goal with met or not.
fn tables(
    records: &Records,
    modes: &[LoginMode],
) -> (String, Vec<serde_json::Value>, Vec<(String, bool)>) {
    let reuse = modes
        .iter()
        .copied()
        .find(|m| matches!(m, LoginMode::Reuse { .. }))
        .unwrap_or(modes[0]);
    let default = LoginMode::Default;
    let systems = [
        System::Gate,
        System::Dovecot(reuse),
        System::Dovecot(default),
    ];
    let mut md = format!(
        "| workload | clients | figure | {} | {} | {} | smtp-gate ÷ sc=0 | smtp-gate ÷ default | goal |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---|\n",
        systems[0].label(),
        systems[1].label(),
        systems[2].label()
    );
    let mut rows = Vec::new();
    let mut goals = Vec::new();
    for &workload in &WORKLOADS {
        for &metric in metrics_of(workload) {
            let mut cells = Vec::new();
            let mut json_systems = serde_json::Map::new();
            for system in systems {
                match figure_cell(&select(records, workload, system, None), metric) {
                    Some((cell, json)) => {
                        cells.push(cell);
                        json_systems.insert(system.label().into(), json);
                    }
                    None => cells.push("-".to_string()),
                }
            }
            // Ratios against the Dovecot mode the gate alternated with.
            let ratio = |mode: LoginMode| -> Option<f64> {
                let phase = Phase { mode, tls: false };
                median_ratio(
                    &select(records, workload, System::Gate, Some(phase)),
                    &select(records, workload, System::Dovecot(mode), None),
                    metric,
                )
            };
            let (r_reuse, r_default) = (ratio(reuse), ratio(default));
            let goal_cell = match (metric.goal(workload), r_reuse) {
                (Some((target, at_least)), Some(r)) => {
                    let met = if at_least { r >= target } else { r <= target };
                    let what = format!(
                        "{}, {}, {}: {} {target}× Dovecot service_count=0 (is {})",
                        workload.name(),
                        metric.unit(),
                        workload.clients_label(),
                        if at_least { "≥" } else { "≤" },
                        format_ratio(r),
                    );
                    goals.push((what, met));
                    format!(
                        "{} {target}×: {}",
                        if at_least { "≥" } else { "≤" },
                        if met { "met" } else { "MISSED" }
                    )
                }
                _ => String::new(),
            };
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                workload.name(),
                workload.clients_label(),
                metric.unit(),
                cells[0],
                cells[1],
                cells[2],
                ratio_cell(r_reuse),
                ratio_cell(r_default),
                goal_cell
            );
            rows.push(json!({
                "workload": workload.name(),
                "clients": workload.clients(),
                "placement": format!("{:?}", workload.placement()),
                "figure": metric.unit(),
                "systems": json_systems,
                "ratio_vs_service_count_0": r_reuse,
                "ratio_vs_default": r_default,
            }));
        }
    }
    (md, rows, goals)
}

/// The Markdown table of the workloads over TLS and its rows as JSON:
/// smtp-gate beside Dovecot in `mode` with `ssl = required`, and what TLS
/// costs each against its own figure in clear: of the same runs where the
/// phase measured it (throughput), else of `mode` without ssl (memory).
fn tls_table(records: &Records, mode: LoginMode) -> (String, Vec<serde_json::Value>) {
    let (gate, dovecot) = (System::Gate, System::Dovecot(mode));
    let tls_phase = Phase { mode, tls: true };
    let clear_phase = Phase { mode, tls: false };
    let in_clear = |workload: Workload, system: System| {
        let same_runs = select(records, workload.in_clear(), system, Some(tls_phase));
        if same_runs.is_empty() {
            select(records, workload.in_clear(), system, Some(clear_phase))
        } else {
            same_runs
        }
    };
    // A ratio and the figure in clear it divides by.
    let cost_cell = |ratio: Option<f64>, clear: &[&Sample], metric: Metric| match ratio {
        Some(r) => {
            let values: Vec<f64> = clear.iter().map(|s| metric.of(s)).collect();
            format!(
                "{} (clear: {:.*})",
                format_ratio(r),
                metric.decimals(),
                median(&values)
            )
        }
        None => "-".into(),
    };
    let mut md = format!(
        "| workload | clients | figure | smtp-gate | {}, ssl = required | smtp-gate ÷ Dovecot | \
         smtp-gate TLS ÷ clear | Dovecot TLS ÷ clear |\n|---|---:|---|---:|---:|---:|---:|---:|\n",
        mode.label()
    );
    let mut rows = Vec::new();
    for &workload in &TLS_WORKLOADS {
        for &metric in metrics_of(workload) {
            let gate_tls = select(records, workload, gate, Some(tls_phase));
            let dovecot_tls = select(records, workload, dovecot, Some(tls_phase));
            let gate_clear = in_clear(workload, gate);
            let dovecot_clear = in_clear(workload, dovecot);
            let (gate_cell, gate_json) = figure_cell(&gate_tls, metric).unzip();
            let (dovecot_cell, dovecot_json) = figure_cell(&dovecot_tls, metric).unzip();
            let versus = median_ratio(&gate_tls, &dovecot_tls, metric);
            let gate_cost = median_ratio(&gate_tls, &gate_clear, metric);
            let dovecot_cost = median_ratio(&dovecot_tls, &dovecot_clear, metric);
            md += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                workload.name(),
                workload.clients_label(),
                metric.unit(),
                gate_cell.unwrap_or_else(|| "-".into()),
                dovecot_cell.unwrap_or_else(|| "-".into()),
                ratio_cell(versus),
                cost_cell(gate_cost, &gate_clear, metric),
                cost_cell(dovecot_cost, &dovecot_clear, metric),
            );
            rows.push(json!({
                "workload": workload.name(),
                "clients": workload.clients(),
                "placement": format!("{:?}", workload.placement()),
                "figure": metric.unit(),
                "systems": {gate.label(): gate_json, dovecot.label(): dovecot_json},
                "ratio_vs_dovecot": versus,
                "smtp_gate_tls_vs_clear": gate_cost,
                "dovecot_tls_vs_clear": dovecot_cost,
            }));
        }
    }
    // What TLS adds to one idle session: the totals' difference.
    let extra_kib = |system: System| -> Option<f64> {
        let total = |samples: Vec<&Sample>| {
            let kib: Vec<f64> = samples.iter().map(|s| s.pss_kib as f64).collect();
            (!kib.is_empty()).then(|| median(&kib))
        };
        let idle = Workload::Idle { tls: true };
        let over_tls = total(select(records, idle, system, Some(tls_phase)))?;
        Some((over_tls - total(in_clear(idle, system))?) / IDLE_CONNECTIONS as f64)
    };
    let kib = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1} KiB"));
    md += &format!(
        "\nWhat TLS adds to one idle logged-in session (the medians of the total PSS over TLS \
         and in clear, their difference ÷ {IDLE_CONNECTIONS}): smtp-gate {}, Dovecot {}.\n",
        kib(extra_kib(gate)),
        kib(extra_kib(dovecot))
    );
    (md, rows)
}

async fn start(
    fixture: &Fixture,
    grants: Arc<dyn GrantSink>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let users = UsersFile::load(&fixture.users_file)?;
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse()?],
        hostname: "bench.test".into(),
        max_connections: 4096,
        // Every client of the benchmark is 127.0.0.1.
        max_connections_per_ip: 4096,
        ..ServerConfig::default()
    };
    let backends = Backends {
        auth: Arc::new(users),
        store: Arc::new(MaildirStore::new(fixture.mail_root())),
        grants,
        failures: Arc::new(NoFailureSink),
    };
    let server = Server::bind(config, backends).await?;
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(shutdown.clone()));
    Ok(addr)
}

/// PASS -> +OK with the gate's map as grant sink and with a no-op one,
/// alternating login by login; both servers in this process.
async fn grant_latency(fixture: &Fixture, samples: usize) -> Result<(String, serde_json::Value)> {
    let shutdown = CancellationToken::new();
    // The real grant: the gate's maps, loaded (not attached) for this run.
    let mut ebpf = object::load_unpinned(gate_common::DEFAULT_GRANT_CAPACITY)?;
    let maps = GateMaps::from_ebpf(&mut ebpf)?;
    let gate_addr = start(fixture, Arc::new(GateGrantSink::new(maps)), &shutdown).await?;
    let noop_addr = start(fixture, Arc::new(NoGrant), &shutdown).await?;
    let (mut with_grant, mut without) = (Vec::new(), Vec::new());
    for i in 0..samples * 2 {
        let addr = if i % 2 == 0 { gate_addr } else { noop_addr };
        let took = tokio::time::timeout(OP_TIMEOUT, async {
            let mut client = Client::connect(&Endpoint::plain(addr)).await?;
            let took = client.login(i % HEAVY_USERS, false).await?;
            client.command("QUIT").await?;
            anyhow::Ok(took)
        })
        .await
        .context("a login timed out")??;
        let us = took.as_secs_f64() * 1e6;
        if i % 2 == 0 {
            with_grant.push(us);
        } else {
            without.push(us);
        }
    }
    shutdown.cancel();
    let (g50, g99) = (percentile(&with_grant, 50.0), percentile(&with_grant, 99.0));
    let (n50, n99) = (percentile(&without, 50.0), percentile(&without, 99.0));
    let extra = g50 - n50;
    let md = format!(
        "\n## PASS to +OK\n\nsmtp-gate only, server in the harness process: {samples} logins \
         each, alternating; median (p50) and p99 by nearest rank.\n\n| grant sink | median µs | p99 µs |\n|---|---:|---:|\n\
         | gate map (real grant) | {g50:.1} | {g99:.1} |\n| no-op | {n50:.1} | {n99:.1} |\n\n\
         The grant adds {extra:.1} µs at the median (goal: under {GOAL_GRANT_US} µs: {}).\n",
        if extra < GOAL_GRANT_US {
            "met"
        } else {
            "MISSED"
        }
    );
    let json = json!({"grant": {"p50": g50, "p99": g99}, "noop": {"p50": n50, "p99": n99}, "extra_p50": extra});
    drop(ebpf);
    Ok((md, json))
}
