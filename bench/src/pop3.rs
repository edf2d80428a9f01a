//! `cargo xtask bench pop3`: the POP3 service on loopback, driven by a
//! tokio load generator in this process: logins per second (USER/PASS and
//! APOP, 1 and 16 clients), full sessions per second and MB/s, and the
//! time from sending PASS to reading +OK with the real grant (the gate's
//! map) beside a no-op grant sink, measured alternately in the same run.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use pop3::{
    auth::users_file::UsersFile,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server, ServerConfig},
    GrantSink, NoGrant,
};
use serde_json::json;
use smtp_gate::{
    gate::{object, GateMaps},
    serve::GateGrantSink,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufStream},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::report::{self, Figure, Machine};

const USERS: usize = 16;
const MESSAGES: usize = 20;
const MESSAGE_SIZE: usize = 4096;
const RUNS: usize = 3;
/// The goal: the grant adds less than this to PASS -> +OK.
const GOAL_GRANT_US: f64 = 50.0;

/// A lab of users and Maildirs in a directory of its own.
struct Fixture {
    dir: PathBuf,
    users_file: PathBuf,
}

impl Fixture {
    fn create() -> Result<Self> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bench/pop3-fixture")
            .join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        let mail = dir.join("mail");
        let mut users = String::new();
        let body_line = "x".repeat(75);
        for u in 0..USERS {
            let user = format!("user{u}");
            users.push_str(&format!("{user}:{{PLAIN}}secret{u}\n"));
            for sub in ["cur", "new", "tmp"] {
                fs::create_dir_all(mail.join(&user).join(sub))?;
            }
            for m in 0..MESSAGES {
                let mut text = format!(
                    "From: sender@example.org\nTo: {user}@example.org\nSubject: message {m}\n\n"
                );
                while text.len() + body_line.len() < MESSAGE_SIZE {
                    text.push_str(&body_line);
                    text.push('\n');
                }
                let name = format!("{}.M{m}P{u}.bench:2,S", 1_700_000_000 + m);
                fs::write(mail.join(&user).join("cur").join(name), text)?;
            }
        }
        let users_file = dir.join("users");
        fs::write(&users_file, users)?;
        fs::set_permissions(&users_file, fs::Permissions::from_mode(0o600))?;
        Ok(Self { dir, users_file })
    }

    fn mail_root(&self) -> PathBuf {
        self.dir.join("mail")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

async fn start(
    fixture: &Fixture,
    grants: Arc<dyn GrantSink>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let users = UsersFile::load(&fixture.users_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse()?],
        hostname: "bench.test".into(),
        max_connections: 4096,
        ..ServerConfig::default()
    };
    let backends = Backends {
        auth: Arc::new(users),
        store: Arc::new(MaildirStore::new(fixture.mail_root())),
        grants,
    };
    let server = Server::bind(config, backends).await?;
    let addr = server.local_addrs()[0];
    tokio::spawn(server.run(shutdown.clone()));
    Ok(addr)
}

/// A minimal POP3 client: enough to drive the server hard.
struct Client {
    stream: BufStream<TcpStream>,
    line: String,
    timestamp: String,
    bytes: u64,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Self {
            stream: BufStream::new(stream),
            line: String::new(),
            timestamp: String::new(),
            bytes: 0,
        };
        let greeting = client.status().await?;
        let start = greeting.find('<').context("no APOP timestamp")?;
        client.timestamp = greeting[start..].trim_end().to_string();
        Ok(client)
    }

    /// Reads one status line; fails on -ERR.
    async fn status(&mut self) -> Result<String> {
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        if !self.line.starts_with("+OK") {
            bail!("server said {:?}", self.line);
        }
        Ok(self.line.clone())
    }

    async fn command(&mut self, line: &str) -> Result<String> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\r\n").await?;
        self.stream.flush().await?;
        self.status().await
    }

    /// A multi-line command: the status, then lines up to the dot.
    async fn multi(&mut self, line: &str) -> Result<()> {
        self.command(line).await?;
        loop {
            self.line.clear();
            let n = self.stream.read_line(&mut self.line).await?;
            if n == 0 {
                bail!("connection closed inside a multi-line reply");
            }
            self.bytes += n as u64;
            if self.line == ".\r\n" {
                return Ok(());
            }
        }
    }

    async fn login(&mut self, user: usize, apop: bool) -> Result<Duration> {
        let secret = format!("secret{user}");
        if apop {
            let digest = Md5::digest(format!("{}{secret}", self.timestamp).as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let started = Instant::now();
            self.command(&format!("APOP user{user} {hex}")).await?;
            Ok(started.elapsed())
        } else {
            self.command(&format!("USER user{user}")).await?;
            let started = Instant::now();
            self.command(&format!("PASS {secret}")).await?;
            Ok(started.elapsed())
        }
    }
}

/// Runs `clients` loops of `work` for `span`; returns operations per
/// second and octets received.
async fn load<F, Fut>(clients: usize, span: Duration, work: F) -> Result<(f64, u64)>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    let deadline = Instant::now() + span;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ops, mut bytes) = (0u64, 0u64);
            // Bounded in time and in count.
            while Instant::now() < deadline && ops < 10_000_000 {
                bytes += work(c).await?;
                ops += 1;
            }
            anyhow::Ok((ops, bytes))
        }));
    }
    let (mut ops, mut bytes) = (0, 0);
    for task in tasks {
        let (o, b) = task.await??;
        ops += o;
        bytes += b;
    }
    Ok((ops as f64 / started.elapsed().as_secs_f64(), bytes))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn run(quick: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(quick))
}

async fn run_async(quick: bool) -> Result<()> {
    let span = if quick {
        Duration::from_millis(700)
    } else {
        Duration::from_secs(3)
    };
    let samples = if quick { 300 } else { 2000 };
    let machine = Machine::describe();
    let fixture = Fixture::create()?;
    let shutdown = CancellationToken::new();

    // The real grant: the gate's maps, loaded (not attached) for this run.
    let mut ebpf = object::load_unpinned(gate_common::DEFAULT_GRANT_CAPACITY)?;
    let maps = GateMaps::from_ebpf(&mut ebpf)?;
    let gate_addr = start(&fixture, Arc::new(GateGrantSink::new(maps)), &shutdown).await?;
    let noop_addr = start(&fixture, Arc::new(NoGrant), &shutdown).await?;

    let mut md = String::from("# smtp-gate POP3 benchmark\n\n");
    md += &machine.markdown();
    md += &format!(
        "\nCommand: `cargo xtask bench pop3{}`. Server and load generator (tokio, in one \
         process) on loopback; {USERS} users with {MESSAGES} messages of 4 KiB each; every \
         figure is the median (min–max) of {RUNS} runs of {:?}.\n\n",
        if quick { " --quick" } else { "" },
        span
    );
    let mut json_rows = Vec::new();

    md += "| workload | clients | per second | MB/s |\n|---|---:|---:|---:|\n";
    for (name, apop) in [
        ("login USER/PASS + QUIT", false),
        ("login APOP + QUIT", true),
    ] {
        for clients in [1, 16] {
            let mut rates = Vec::new();
            for _ in 0..RUNS {
                let (rate, _) = load(clients, span, move |c| async move {
                    let mut client = Client::connect(gate_addr).await?;
                    client.login(c % USERS, apop).await?;
                    client.command("QUIT").await?;
                    Ok(0)
                })
                .await?;
                rates.push(rate);
            }
            let f = Figure::of(&rates);
            md += &format!("| {name} | {clients} | {} | - |\n", f.cell(0));
            json_rows.push(json!({"workload": name, "clients": clients, "per_sec": f}));
        }
    }
    for clients in [1, 16] {
        let (mut rates, mut mbs) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let started = Instant::now();
            let (rate, bytes) = load(clients, span, move |c| async move {
                let mut client = Client::connect(gate_addr).await?;
                client.login(c % USERS, false).await?;
                client.command("STAT").await?;
                client.multi("LIST").await?;
                client.multi("UIDL").await?;
                for m in 1..=MESSAGES {
                    client.multi(&format!("RETR {m}")).await?;
                }
                client.command("QUIT").await?;
                Ok(client.bytes)
            })
            .await?;
            rates.push(rate);
            mbs.push(bytes as f64 / 1e6 / started.elapsed().as_secs_f64());
        }
        let (f, m) = (Figure::of(&rates), Figure::of(&mbs));
        md += &format!(
            "| full session (STAT, LIST, UIDL, RETR x{MESSAGES}, QUIT) | {clients} | {} | {} |\n",
            f.cell(0),
            m.cell(1)
        );
        json_rows.push(
            json!({"workload": "full session", "clients": clients, "per_sec": f, "mb_per_sec": m}),
        );
    }

    // PASS -> +OK, alternating the two servers sample by sample.
    let (mut with_grant, mut without) = (Vec::new(), Vec::new());
    for i in 0..samples * 2 {
        let addr = if i % 2 == 0 { gate_addr } else { noop_addr };
        let mut client = Client::connect(addr).await?;
        let took = client.login(i % USERS, false).await?;
        client.command("QUIT").await?;
        let us = took.as_secs_f64() * 1e6;
        if i % 2 == 0 {
            with_grant.push(us);
        } else {
            without.push(us);
        }
    }
    with_grant.sort_by(|a, b| a.total_cmp(b));
    without.sort_by(|a, b| a.total_cmp(b));
    let (g50, g99) = (percentile(&with_grant, 0.5), percentile(&with_grant, 0.99));
    let (n50, n99) = (percentile(&without, 0.5), percentile(&without, 0.99));
    let extra = g50 - n50;
    md += &format!(
        "\n## PASS to +OK\n\n{samples} logins each, alternating.\n\n| grant sink | median µs | p99 µs |\n|---|---:|---:|\n\
         | gate map (real grant) | {g50:.1} | {g99:.1} |\n| no-op | {n50:.1} | {n99:.1} |\n\n\
         The grant adds {extra:.1} µs at the median (goal: under {GOAL_GRANT_US} µs: {}).\n",
        if extra < GOAL_GRANT_US { "met" } else { "MISSED" }
    );
    shutdown.cancel();
    let json = json!({
        "machine": machine, "rows": json_rows,
        "pass_to_ok_us": {"grant": {"p50": g50, "p99": g99}, "noop": {"p50": n50, "p99": n99}, "extra_p50": extra},
    });
    let path = report::write("pop3", &md, &json)?;
    println!("{md}");
    eprintln!("report written to {}", path.display());
    drop(ebpf);
    Ok(())
}
