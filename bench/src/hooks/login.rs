//! Dovecot login -> grant: a real Dovecot per configuration, each in a
//! lab of its own, logged in to over IMAP from a new IPv6 address every
//! time, the configurations taking turns login by login:
//!
//! - `off`: no policy server configured (the baseline login);
//! - `floor`: the shipped 2.3 snippet, its URL at the floor HTTP server
//!   (answers `{"status":0}` without reading the JSON);
//! - `smtp-gate`: the shipped snippet, its URL at `smtp-gate serve`'s
//!   endpoint; a thread of this process polls the gate's grant map for
//!   the login's address from before the login is sent until it appears.
//!
//! Each login: connect, greeting, `LOGIN`, its tagged OK (the instant
//! taken, CLOCK_MONOTONIC), `LOGOUT`. Login -> OK is from sending `LOGIN`
//! to reading its OK. Grant seen - OK can be negative: Dovecot's auth
//! process sends the report when the authentication succeeds, and the
//! tagged OK comes only after the imap process for the session started.

use std::{
    fs,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;
use smtp_gate::gate::{GateMaps, PinDir};
use testkit::{
    dovecot::{Dovecot, DovecotOptions, IMAP_PORT},
    lab::Lab,
    netns::{enter_netns, ip},
    serve::ServeDaemon,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpSocket,
};

use super::setup::{self, addr, Floor, RunDir, DOVECOT_POLICY, FLOOR_DOVECOT};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
/// One login may take this long: only a hang does.
const LOGIN_BOUND: Duration = Duration::from_secs(30);
/// How long the grant of a login may take to appear: only a lost report
/// takes longer.
const GRANT_BOUND: Duration = Duration::from_secs(10);
/// How often the grant map is read while a login is in flight.
pub const POLL_INTERVAL: Duration = Duration::from_micros(100);
/// Logins per configuration before any is measured (processes started,
/// caches filled), from addresses of their own.
const WARM_UP: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Policy {
    Off,
    Floor,
    Gate,
}

impl Policy {
    pub fn label(self) -> &'static str {
        match self {
            Policy::Off => "no policy server",
            Policy::Floor => "floor policy server",
            Policy::Gate => "smtp-gate serve",
        }
    }
}

pub const POLICIES: [Policy; 3] = [Policy::Off, Policy::Floor, Policy::Gate];

/// The instants of one login.
#[derive(Clone, Copy, Debug)]
struct LoginTimes {
    sent: Instant,
    ok: Instant,
}

/// What the logins of one configuration measured (µs).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    pub login_to_ok_us: Vec<f64>,
    /// smtp-gate only: grant seen minus OK.
    pub grant_minus_ok_us: Vec<f64>,
    /// smtp-gate only: grant seen minus `LOGIN` sent.
    pub grant_minus_sent_us: Vec<f64>,
    /// Lines of Dovecot's log about the policy server that say error.
    pub dovecot_policy_errors: Vec<String>,
    /// smtp-gate only: each login that left no grant, with what Dovecot's
    /// and the daemon's logs say of its address.
    pub missing_grants: Vec<String>,
}

/// The source address of login `i` (a /64 of its own on the client veth).
fn source(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x231, 1, 0, 0, 1, (i >> 16) as u16, i as u16)
}

/// Adds the logins' addresses to the client's veth (no duplicate address
/// detection: usable at once).
fn add_sources(lab: &Lab, dir: &Path, count: u32) -> Result<()> {
    let batch: String = (0..count)
        .map(|i| {
            format!(
                "addr add {}/64 dev {} nodad\n",
                source(i),
                lab.client.client_iface
            )
        })
        .collect();
    let file = dir.join(format!("addresses-{}", lab.id));
    fs::write(&file, batch)?;
    ip(
        &lab.client.client_ns,
        &["-batch", file.to_str().context("path")?],
    );
    Ok(())
}

/// One IMAP login from `from` to `server`, then LOGOUT.
async fn imap_login(server: SocketAddr, from: Ipv6Addr) -> Result<LoginTimes> {
    let socket = TcpSocket::new_v6()?;
    socket.bind(SocketAddr::new(IpAddr::V6(from), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    ensure!(line.starts_with("* OK"), "greeting {line:?}");
    reader
        .get_mut()
        .write_all(format!("a LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await?;
    let sent = Instant::now();
    let ok = loop_until_tagged(&mut reader, "a").await?;
    let ok_at = Instant::now();
    ensure!(ok.starts_with("a OK"), "LOGIN answered {ok:?}");
    reader.get_mut().write_all(b"b LOGOUT\r\n").await?;
    let bye = loop_until_tagged(&mut reader, "b").await?;
    ensure!(bye.starts_with("b OK"), "LOGOUT answered {bye:?}");
    Ok(LoginTimes { sent, ok: ok_at })
}

/// Reads lines until the one tagged `tag` (bounded in count).
async fn loop_until_tagged(
    reader: &mut BufReader<tokio::net::TcpStream>,
    tag: &str,
) -> Result<String> {
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection before `{tag}` was answered");
        }
        if line.starts_with(&format!("{tag} ")) {
            return Ok(line.trim_end().to_string());
        }
    }
    bail!("no answer to `{tag}` in 50 lines")
}

/// A thread in the lab's client namespace that logs in when told.
struct LoginWorker {
    orders: Option<mpsc::Sender<u32>>,
    results: mpsc::Receiver<Result<LoginTimes>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl LoginWorker {
    fn spawn(ns: String, server: SocketAddr) -> Self {
        let (orders, take) = mpsc::channel::<u32>();
        let (give, results) = mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = enter_netns(&ns)
                .map_err(anyhow::Error::from)
                .and_then(|()| {
                    Ok(tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?)
                });
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = give.send(Err(e));
                    return;
                }
            };
            for i in take {
                let result = runtime.block_on(async {
                    tokio::time::timeout(LOGIN_BOUND, imap_login(server, source(i)))
                        .await
                        .map_err(|_| anyhow!("login {i} took longer than {LOGIN_BOUND:?}"))?
                });
                if give.send(result).is_err() {
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

    fn login(&self, i: u32) -> Result<LoginTimes> {
        self.orders
            .as_ref()
            .context("worker stopped")?
            .send(i)
            .map_err(|_| anyhow!("the login thread is gone"))?;
        self.results
            .recv_timeout(LOGIN_BOUND + Duration::from_secs(5))
            .map_err(|_| anyhow!("the login thread did not answer"))?
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

/// A thread reading the gate's grant map: told an address, it reads the
/// map every [`POLL_INTERVAL`] until the address has a grant (or
/// [`GRANT_BOUND`] passed) and says when it first saw it.
struct GrantPoller {
    watch: Option<mpsc::Sender<IpAddr>>,
    seen: mpsc::Receiver<Result<Option<Instant>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl GrantPoller {
    fn spawn(pin_dir: &Path) -> Self {
        let pins = PinDir::new(pin_dir);
        let (watch, addresses) = mpsc::channel::<IpAddr>();
        let (give, seen) = mpsc::channel();
        let thread = thread::spawn(move || {
            let maps = match GateMaps::open(&pins) {
                Ok(maps) => maps,
                Err(e) => {
                    let _ = give.send(Err(e));
                    return;
                }
            };
            for addr in addresses {
                let deadline = Instant::now() + GRANT_BOUND;
                let found = loop {
                    match maps.grant_of(addr) {
                        Ok(Some(_)) => break Ok(Some(Instant::now())),
                        Ok(None) if Instant::now() > deadline => break Ok(None),
                        Ok(None) => thread::sleep(POLL_INTERVAL),
                        Err(e) => break Err(e),
                    }
                };
                if give.send(found).is_err() {
                    return;
                }
            }
        });
        Self {
            watch: Some(watch),
            seen,
            thread: Some(thread),
        }
    }

    fn watch(&self, addr: IpAddr) -> Result<()> {
        self.watch
            .as_ref()
            .context("poller stopped")?
            .send(addr)
            .map_err(|_| anyhow!("the grant poller is gone"))
    }

    fn seen(&self) -> Result<Option<Instant>> {
        self.seen
            .recv_timeout(GRANT_BOUND + Duration::from_secs(5))
            .map_err(|_| anyhow!("the grant poller did not answer"))?
    }
}

impl Drop for GrantPoller {
    fn drop(&mut self) {
        drop(self.watch.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One configuration's lab, Dovecot and policy server. Field order is
/// drop order: the login thread, then Dovecot, then the servers, then
/// the lab (namespaces) and the run's directory.
struct Setup {
    policy: Policy,
    worker: LoginWorker,
    poller: Option<GrantPoller>,
    dovecot: Dovecot,
    _daemon: Option<ServeDaemon>,
    _floor: Option<Floor>,
    _lab: Lab,
    _dir: RunDir,
}

impl Setup {
    fn start(policy: Policy, logins: u32) -> Result<(Self, Option<String>)> {
        let dir = RunDir::new(&format!("login-{policy:?}").to_lowercase())?;
        let lab = Lab::new();
        add_sources(&lab, &dir.0, logins + WARM_UP)?;
        let (daemon, floor, url) = match policy {
            Policy::Off => (None, None, None),
            Policy::Floor => (
                None,
                Some(Floor::start(&lab.server_ns, true)?),
                Some(format!("http://{}/", addr(FLOOR_DOVECOT))),
            ),
            Policy::Gate => (
                Some(setup::start_daemon(&lab, &dir.0, true, false)?),
                None,
                Some(format!("http://{}/", addr(DOVECOT_POLICY))),
            ),
        };
        let (include, snippet) = match url {
            Some(url) => {
                let (path, name) = setup::shipped_snippet(&dir.0, &url)?;
                (Some(path), Some(name))
            }
            None => (None, None),
        };
        let dovecot = Dovecot::start(
            &lab.server_ns,
            &lab.client.client_ns,
            lab.client.server_v4.into(),
            &DovecotOptions {
                users: vec![(USER.into(), PASSWORD.into())],
                include,
            },
        );
        let server = SocketAddr::new(lab.client.server_v6.into(), IMAP_PORT);
        let worker = LoginWorker::spawn(lab.client.client_ns.clone(), server);
        let poller = (policy == Policy::Gate).then(|| GrantPoller::spawn(lab.pin_dir()));
        Ok((
            Self {
                policy,
                worker,
                poller,
                dovecot,
                _daemon: daemon,
                _floor: floor,
                _lab: lab,
                _dir: dir,
            },
            snippet,
        ))
    }

    /// Login `i`, and for smtp-gate when its grant appeared.
    fn login(&self, i: u32) -> Result<(LoginTimes, Option<Option<Instant>>)> {
        if let Some(poller) = &self.poller {
            poller.watch(IpAddr::V6(source(i)))?;
        }
        let times = self
            .worker
            .login(i)
            .with_context(|| format!("{}: login {i}", self.policy.label()))?;
        let seen = match &self.poller {
            Some(poller) => Some(poller.seen()?),
            None => None,
        };
        Ok((times, seen))
    }

    /// What Dovecot's and the daemon's logs say of login `i`'s address.
    fn traces(&self, i: u32) -> String {
        let addr = source(i).to_string();
        let lines = |log: String, who: &str| -> Vec<String> {
            log.lines()
                .filter(|l| {
                    l.contains(&format!("{addr},"))
                        || l.contains(&format!("{addr} "))
                        || l.ends_with(&addr)
                        || l.contains(&format!("{addr})"))
                })
                .map(|l| format!("{who}: {l}"))
                .collect()
        };
        let mut said = lines(self.dovecot.log(), "Dovecot");
        if let Some(daemon) = &self._daemon {
            said.extend(lines(daemon.log(), "smtp-gate"));
        }
        format!("login {i} from {addr}: {}", said.join(" | "))
    }

    fn policy_errors(&self) -> Vec<String> {
        self.dovecot
            .log()
            .lines()
            .filter(|l| l.contains("olicy") && (l.contains("rror") || l.contains("ailed")))
            .map(str::to_string)
            .collect()
    }
}

/// What [`run`] found, and the snippet the policy Dovecots were given.
pub struct LoginResults {
    pub by_policy: Vec<(Policy, Measured)>,
    pub snippet: String,
    pub logins: u32,
    /// Logins whose grant never appeared within [`GRANT_BOUND`].
    pub grants_missing: u32,
}

/// `logins` measured logins per configuration, the configurations taking
/// turns (their order rotating) login by login.
pub fn run(logins: u32, progress: &dyn Fn(&str)) -> Result<LoginResults> {
    let mut setups = Vec::new();
    let mut snippet = String::new();
    for policy in POLICIES {
        progress(&format!("login: starting Dovecot with {}", policy.label()));
        let (setup, name) = Setup::start(policy, logins)?;
        snippet = name.unwrap_or(snippet);
        setups.push(setup);
    }
    for setup in &setups {
        for w in 0..WARM_UP {
            setup.login(logins + w).context("warming up")?;
        }
    }
    let mut measured: Vec<Measured> = vec![Measured::default(); setups.len()];
    let mut grants_missing = 0;
    for i in 0..logins {
        if i % 100 == 0 {
            progress(&format!("login: {i} of {logins}"));
        }
        for k in 0..setups.len() {
            let s = (k + i as usize) % setups.len();
            let (times, seen) = setups[s].login(i)?;
            let m = &mut measured[s];
            m.login_to_ok_us
                .push(times.ok.duration_since(times.sent).as_secs_f64() * 1e6);
            match seen {
                None => {}
                Some(Some(at)) => {
                    m.grant_minus_ok_us.push(signed_us(at, times.ok));
                    m.grant_minus_sent_us.push(signed_us(at, times.sent));
                }
                Some(None) => {
                    grants_missing += 1;
                    m.missing_grants.push(setups[s].traces(i));
                    if grants_missing >= 3 {
                        bail!(
                            "{grants_missing} logins to the Dovecot reporting to smtp-gate left no \
                             grant within {GRANT_BOUND:?}; Dovecot's policy lines:\n{}",
                            setups[s].policy_errors().join("\n")
                        );
                    }
                }
            }
        }
    }
    for (setup, m) in setups.iter().zip(&mut measured) {
        m.dovecot_policy_errors = setup.policy_errors();
    }
    Ok(LoginResults {
        by_policy: setups.iter().map(|s| s.policy).zip(measured).collect(),
        snippet,
        logins,
        grants_missing,
    })
}

/// `a - b` in µs, negative if `a` came first.
fn signed_us(a: Instant, b: Instant) -> f64 {
    if a >= b {
        a.duration_since(b).as_secs_f64() * 1e6
    } else {
        -(b.duration_since(a).as_secs_f64() * 1e6)
    }
}
