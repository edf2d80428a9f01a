//! The grant bus across hosts (issue 13), as the lab test and the bench
//! run it: a [`Hosts`] lab of `engine` (a private redis-server), `pop`
//! (`smtp-gate serve` without a gate, publishing every login), one or two
//! SMTP edges (`edge1`, `edge2`: each `smtp-gate agent` with its own gate
//! on its own interface and its own pin directory, and an SMTP listener on
//! port 25) and `client`, which logs in to `pop` and connects to the
//! edges. No namespace has a default route.
//!
//! The client logs in from addresses of its own choosing (added to its
//! interface, `nodad`), so that every login can make a new grant, and the
//! harness reads each edge's grant map straight from its pins
//! (`GateMaps::grant_of`) to see when a grant arrives or ends.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use smtp_gate::gate::{GateMaps, PinDir};
use socket2::{Domain, Socket, Type};

use crate::{
    lab::Hosts,
    mail::MailFixture,
    netns::{enter_netns, in_netns},
    redis::{RedisOptions, RedisServer},
    serve::{spawn_daemon_in, wait_pop3_at, ServeDaemon, ServeStart, POP3_PORT},
    smtp::SMTP_PORT,
};

/// The engine's port (in its own namespace).
pub const ENGINE_PORT: u16 = 6379;
/// The POP3 user every login is made as.
pub const USER: &str = "alice";
pub const SECRET: &str = "alice-secret";
/// What `pop` publishes as its origin.
pub const ORIGIN: &str = "pop1.lab";
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);
/// The network of the client's login addresses (routed through its first
/// address, not on the switch's link).
pub const SOURCES: &str = "fd00:233::/64";
/// How often the harness reads an edge's grant map while it waits.
pub const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// How to build a [`BusLab`].
#[derive(Clone, Debug)]
pub struct BusLabOptions {
    /// SMTP edges: 1 or 2.
    pub edges: usize,
    /// The edges' gate window: the longest a grant from the bus lives
    /// there.
    pub edge_window: Duration,
    /// The engine writes every change to its append-only file before it
    /// answers (`appendfsync always`), so a killed engine restarts with
    /// everything it acknowledged; otherwise it keeps nothing on disk.
    pub persist: bool,
}

impl Default for BusLabOptions {
    fn default() -> Self {
        Self {
            edges: 2,
            edge_window: Duration::from_secs(600),
            persist: true,
        }
    }
}

/// The lab with its engine, and the daemons the test started. Field
/// order is drop order: the daemons, then the engine, then the
/// namespaces, then the files.
pub struct BusLab {
    serve: Option<ServeDaemon>,
    agents: Vec<Option<ServeDaemon>>,
    pub engine: RedisServer,
    pub hosts: Hosts,
    pub mail: MailFixture,
    options: BusLabOptions,
    runs: u32,
    sources: u32,
}

impl BusLab {
    pub fn new(options: BusLabOptions) -> Self {
        assert!(
            (1..=2).contains(&options.edges),
            "a bus lab has 1 or 2 edges"
        );
        crate::redis::require_redis();
        let mut names = vec!["engine", "pop", "edge1"];
        if options.edges == 2 {
            names.push("edge2");
        }
        names.push("client");
        let mut hosts = Hosts::new(&names);
        // The client's login addresses are in a network of their own,
        // routed through its first address: the other hosts keep one
        // neighbour entry for the client, not one per address (the
        // kernel's neighbour table, shared by all namespaces, holds 1024
        // before it drops what it cannot resolve).
        let client_v6 = hosts.host("client").v6.to_string();
        for name in &names {
            if *name != "client" {
                hosts.ip(name, &["-6", "route", "add", SOURCES, "via", &client_v6]);
            }
        }
        for edge in 1..=options.edges {
            hosts.serve_smtp(&format!("edge{edge}"), SMTP_PORT);
        }
        let mut mail = MailFixture::new();
        mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
        let engine_host = hosts.host("engine").clone();
        let extra = if options.persist {
            vec!["--appendfsync".into(), "always".into()]
        } else {
            Vec::new()
        };
        let engine = RedisServer::start_with(RedisOptions {
            ns: Some(engine_host.ns.clone()),
            bind: engine_host.v4.into(),
            port: ENGINE_PORT,
            dir: Some(mail.dir().join("redis")),
            persist: options.persist,
            extra,
            ..RedisOptions::default()
        });
        Self {
            serve: None,
            agents: (0..options.edges).map(|_| None).collect(),
            engine,
            hosts,
            mail,
            options,
            runs: 0,
            sources: 0,
        }
    }

    /// The edges' names: `edge1`, `edge2`.
    pub fn edges(&self) -> Vec<String> {
        (1..=self.options.edges)
            .map(|e| format!("edge{e}"))
            .collect()
    }

    /// The engine's URL, as the hosts reach it.
    pub fn url(&self) -> String {
        self.engine.url()
    }

    /// A new file under the fixture's directory for a daemon's log.
    fn log_file(&mut self, what: &str) -> PathBuf {
        self.runs += 1;
        self.mail.dir().join(format!("{what}-{}.log", self.runs))
    }

    /// `pop`'s config file: POP3 on its addresses, every login published
    /// for `window` (no gate: no iface). Written anew by each
    /// [`Self::start_serve`]; `smtp-gate revoke --config` reads it too.
    pub fn serve_config(&self) -> PathBuf {
        self.mail.dir().join("pop.toml")
    }

    /// Starts `smtp-gate serve` on `pop` (stopping the one running) with
    /// `window` and `extra` lines in its config file, and waits until it
    /// answers POP3 and its link to the engine is up (unless
    /// `engine_up` is false).
    pub fn start_serve(&mut self, window: Duration, extra: &str, engine_up: bool) {
        self.start_serve_with(window, extra, true, engine_up);
    }

    /// [`Self::start_serve`], publishing on the bus only if `bus` (without
    /// it, `extra` should give the daemon a gate: `iface`, `pin_dir`).
    pub fn start_serve_with(&mut self, window: Duration, extra: &str, bus: bool, engine_up: bool) {
        self.stop_serve();
        let pop = self.hosts.host("pop").clone();
        let bus_lines = if bus {
            format!("bus = \"{}\"\nbus_origin = \"{ORIGIN}\"\n", self.url())
        } else {
            String::new()
        };
        let config = format!(
            "listen = [\"{}:{POP3_PORT}\", \"[{}]:{POP3_PORT}\"]\n\
             users = \"{}\"\nmail_root = \"{}\"\nwindow = \"{}ms\"\n\
             shutdown_grace = \"1s\"\n{bus_lines}{extra}",
            pop.v4,
            pop.v6,
            self.mail.users_file().display(),
            self.mail.mail_root().display(),
            window.as_millis(),
        );
        fs::write(self.serve_config(), config).expect("writing pop.toml");
        let log = self.log_file("serve");
        let config = self.serve_config().to_string_lossy().into_owned();
        let mut daemon = spawn_daemon_in(
            &pop.ns,
            ServeStart::default(),
            "serve",
            &["--config", &config],
            &log,
        );
        let client = self.hosts.host("client").ns.clone();
        wait_pop3_at(&mut daemon, &client, &[pop.v4.into(), pop.v6.into()]);
        if bus && engine_up {
            daemon.wait_for_log("bus serve: connected to", 1, BOUND);
        }
        self.serve = Some(daemon);
    }

    /// Stops `pop`'s daemon (SIGTERM), if one runs.
    pub fn stop_serve(&mut self) {
        if let Some(mut daemon) = self.serve.take() {
            let (status, took) = daemon.terminate(Duration::from_secs(15));
            assert!(
                status.is_some_and(|s| s.success()),
                "smtp-gate serve did not stop cleanly ({status:?} after {took:?}):\n{}",
                daemon.log()
            );
        }
    }

    /// `pop`'s daemon; panics if none runs.
    pub fn serve(&mut self) -> &mut ServeDaemon {
        self.serve.as_mut().expect("smtp-gate serve runs on pop")
    }

    /// Where edge `e` (1-based) keeps its position (and status beside it).
    pub fn position_file(&self, e: usize) -> PathBuf {
        self.mail.dir().join(format!("edge{e}/bus-position"))
    }

    /// Starts `smtp-gate agent` on edge `e` (1-based) and waits until it
    /// follows the stream: its gate on the edge's interface, its own pin
    /// directory and position file.
    pub fn start_agent(&mut self, e: usize) {
        self.start_agent_with(e, &[]);
    }

    /// [`Self::start_agent`] with `extra` flags (`--metrics-listen ...`).
    pub fn start_agent_with(&mut self, e: usize, extra: &[&str]) {
        assert!(self.agents[e - 1].is_none(), "edge{e}'s agent runs already");
        let edge = self.hosts.host(&format!("edge{e}")).clone();
        let log = self.log_file(&format!("agent{e}"));
        let window = format!("{}ms", self.options.edge_window.as_millis());
        let position = self.position_file(e).to_string_lossy().into_owned();
        let pin = edge.pin_dir_str();
        let url = self.url();
        let mut args = vec![
            "--iface",
            &edge.iface,
            "--pin-dir",
            &pin,
            "--window",
            &window,
            "--bus",
            &url,
            "--bus-position-file",
            &position,
        ];
        args.extend_from_slice(extra);
        let mut agent = spawn_daemon_in(&edge.ns, ServeStart::default(), "agent", &args, &log);
        agent.wait_for_log("following the stream from", 1, BOUND);
        self.agents[e - 1] = Some(agent);
    }

    /// Edge `e`'s agent; panics if none runs.
    pub fn agent(&mut self, e: usize) -> &mut ServeDaemon {
        self.agents[e - 1]
            .as_mut()
            .unwrap_or_else(|| panic!("edge{e}'s agent does not run"))
    }

    /// Kills edge `e`'s agent with SIGKILL (its gate stays pinned) and
    /// waits until it is gone; returns its log.
    pub fn kill_agent(&mut self, e: usize) -> String {
        let mut agent = self.agents[e - 1]
            .take()
            .unwrap_or_else(|| panic!("edge{e}'s agent does not run"));
        agent.signal(libc::SIGKILL);
        assert!(
            agent.wait_exit(BOUND).is_some(),
            "edge{e}'s agent outlived SIGKILL"
        );
        agent.log()
    }

    /// Edge `e`'s grant maps, read from its pins (the agent must have
    /// attached its gate).
    pub fn maps(&self, e: usize) -> GateMaps {
        let edge = self.hosts.host(&format!("edge{e}"));
        GateMaps::open(&PinDir::new(&edge.pin_dir))
            .unwrap_or_else(|e| panic!("opening {}'s maps: {e:#}", edge.name))
    }

    /// A new address of the client's (in [`SOURCES`], added to its
    /// interface, no duplicate address detection), for a login that makes
    /// a new grant.
    pub fn new_source(&mut self) -> IpAddr {
        self.new_sources(1)[0]
    }

    /// `count` new addresses of the client's (one `ip -batch`).
    pub fn new_sources(&mut self, count: u32) -> Vec<IpAddr> {
        let client = self.hosts.host("client").clone();
        let first = self.sources;
        self.sources += count;
        let addrs: Vec<Ipv6Addr> = (first..first + count)
            .map(|i| Ipv6Addr::new(0xfd00, 0x233, 0, 0, 0, 1, (i >> 16) as u16, i as u16))
            .collect();
        let batch: String = addrs
            .iter()
            .map(|a| format!("addr add {a}/128 dev {} nodad\n", client.iface))
            .collect();
        let file = self.mail.dir().join(format!("sources-{first}"));
        fs::write(&file, batch).expect("writing the address batch");
        self.hosts
            .ip("client", &["-batch", &file.to_string_lossy()]);
        addrs.into_iter().map(IpAddr::V6).collect()
    }

    /// `pop`'s address of the family of `from`.
    fn pop_addr(&self, from: IpAddr) -> IpAddr {
        let pop = self.hosts.host("pop");
        match from {
            IpAddr::V4(_) => pop.v4.into(),
            IpAddr::V6(_) => pop.v6.into(),
        }
    }

    /// A USER/PASS login from the client's address `from`, then QUIT.
    pub fn login_from(&self, from: IpAddr) -> Login {
        let server = SocketAddr::new(self.pop_addr(from), POP3_PORT);
        let ns = self.hosts.host("client").ns.clone();
        in_netns(&ns, || pop3_login(server, from))
            .unwrap_or_else(|e| panic!("POP3 login from {from} to {server}: {e}"))
    }

    /// A logger-in that stays in the client's namespace (a thread of its
    /// own), for many logins in a row without a thread each.
    pub fn login_worker(&self) -> LoginWorker {
        LoginWorker::spawn(self.hosts.host("client").ns.clone())
    }

    /// `pop`'s address for a login from `from` (for [`LoginWorker`]).
    pub fn pop3_server(&self, from: IpAddr) -> SocketAddr {
        SocketAddr::new(self.pop_addr(from), POP3_PORT)
    }

    /// Waits (at most `bound`) until every map in `maps` holds a fresh
    /// grant of `addr`: for each, when it was first seen (`None`: not
    /// within the bound).
    pub fn wait_granted(maps: &[GateMaps], addr: IpAddr, bound: Duration) -> Vec<Option<Instant>> {
        let deadline = Instant::now() + bound;
        let mut seen = vec![None; maps.len()];
        loop {
            for (map, seen) in maps.iter().zip(seen.iter_mut()) {
                if seen.is_none()
                    && map
                        .grant_of(addr)
                        .ok()
                        .flatten()
                        .is_some_and(|g| g.is_fresh())
                {
                    *seen = Some(Instant::now());
                }
            }
            if seen.iter().all(Option::is_some) || Instant::now() > deadline {
                return seen;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits (at most `bound`) until no map in `maps` holds a fresh grant
    /// of `addr`: for each, when it was first seen without one.
    pub fn wait_ended(maps: &[GateMaps], addr: IpAddr, bound: Duration) -> Vec<Option<Instant>> {
        let deadline = Instant::now() + bound;
        let mut seen = vec![None; maps.len()];
        loop {
            for (map, seen) in maps.iter().zip(seen.iter_mut()) {
                if seen.is_none()
                    && !map
                        .grant_of(addr)
                        .ok()
                        .flatten()
                        .is_some_and(|g| g.is_fresh())
                {
                    *seen = Some(Instant::now());
                }
            }
            if seen.iter().all(Option::is_some) || Instant::now() > deadline {
                return seen;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the client (from its own first address) gets through to
    /// edge `e`'s port 25 within `timeout`.
    pub fn client_passes(&self, e: usize, timeout: Duration) -> bool {
        self.hosts
            .connect_v4("client", &format!("edge{e}"), SMTP_PORT, timeout)
            .is_connected()
    }

    /// Whether the client from `from` gets through to edge `e`'s port 25
    /// within `timeout` (a connection from that source address).
    pub fn passes_from(&self, e: usize, from: IpAddr, timeout: Duration) -> bool {
        let edge = self.hosts.host(&format!("edge{e}"));
        let to = match from {
            IpAddr::V4(_) => IpAddr::from(edge.v4),
            IpAddr::V6(_) => IpAddr::from(edge.v6),
        };
        let ns = self.hosts.host("client").ns.clone();
        in_netns(&ns, || {
            connect_from(from, SocketAddr::new(to, SMTP_PORT), timeout).is_ok()
        })
    }

    /// The lines of `pop`'s daemon log.
    pub fn serve_log(&self) -> String {
        self.serve
            .as_ref()
            .map(ServeDaemon::log)
            .unwrap_or_default()
    }

    /// The file directory of this lab (logs, config, positions).
    pub fn dir(&self) -> &Path {
        self.mail.dir()
    }
}

/// One login's answer and instants.
#[derive(Clone, Debug)]
pub struct Login {
    /// PASS's answer line.
    pub answer: String,
    /// When PASS was sent.
    pub pass_sent: Instant,
    /// When its answer was read.
    pub answered: Instant,
}

impl Login {
    pub fn is_ok(&self) -> bool {
        self.answer.starts_with("+OK")
    }
}

/// A TCP connection from `from` (bound before connecting) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// USER/PASS from `from` to `server`, then QUIT (call inside the client's
/// namespace).
pub fn pop3_login(server: SocketAddr, from: IpAddr) -> Result<Login, String> {
    let stream = connect_from(from, server, Duration::from_secs(10))
        .map_err(|e| format!("connecting: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(BOUND))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = || -> Result<String, String> {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading: {e}"))?;
        Ok(line.trim_end().to_owned())
    };
    let greeting = line()?;
    if !greeting.starts_with("+OK") {
        return Err(format!("greeting {greeting:?}"));
    }
    writer
        .write_all(format!("USER {USER}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let user = line()?;
    if !user.starts_with("+OK") {
        return Err(format!("USER answered {user:?}"));
    }
    // Before the write: a busy machine may preempt this thread for the
    // daemon it woke, and the answer would then be there before the
    // instant was taken.
    let pass_sent = Instant::now();
    writer
        .write_all(format!("PASS {SECRET}\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let answer = line()?;
    let answered = Instant::now();
    let _ = writer.write_all(b"QUIT\r\n");
    let _ = line();
    Ok(Login {
        answer,
        pass_sent,
        answered,
    })
}

/// A thread in the client's namespace that logs in when told (one login
/// at a time).
pub struct LoginWorker {
    orders: Option<std::sync::mpsc::Sender<(SocketAddr, IpAddr)>>,
    results: std::sync::mpsc::Receiver<Result<Login, String>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoginWorker {
    fn spawn(ns: String) -> Self {
        let (orders, take) = std::sync::mpsc::channel::<(SocketAddr, IpAddr)>();
        let (give, results) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            if let Err(e) = enter_netns(&ns) {
                let _ = give.send(Err(e.to_string()));
                return;
            }
            for (server, from) in take {
                if give.send(pop3_login(server, from)).is_err() {
                    return;
                }
            }
        });
        Self {
            orders: Some(orders),
            results,
            thread: Some(thread),
        }
    }

    /// A login from `from` to `server` (see [`BusLab::pop3_server`]).
    pub fn login(&self, server: SocketAddr, from: IpAddr) -> Result<Login, String> {
        self.orders
            .as_ref()
            .ok_or("the worker stopped")?
            .send((server, from))
            .map_err(|_| "the login thread is gone".to_string())?;
        self.results
            .recv_timeout(BOUND + Duration::from_secs(15))
            .map_err(|_| "the login thread did not answer".to_string())?
    }
}

impl Drop for LoginWorker {
    fn drop(&mut self) {
        drop(self.orders.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
