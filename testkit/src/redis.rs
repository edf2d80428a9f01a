//! A real Redis (Debian's redis-server) for the grant bus's tests: the
//! engine the publishers write to and the edges read from. Started by the
//! test with its own port, data directory and settings (nothing of the
//! host's Redis is used or touched), on loopback or inside a lab's
//! namespace, killed and removed on drop, also when a test panics.
//!
//! It can be killed (SIGKILL, as an engine that crashes), paused
//! (SIGSTOP: it keeps its socket but answers nothing, as a hung engine)
//! and started again on the same port and directory. With `persist`, an
//! append-only file keeps its data across a restart; without it, nothing
//! is written to disk.
//!
//! Needs the package (`cargo xtask setup` installs it); panics with a
//! clear message otherwise, never skips.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// The client the tests read and write the engine with (sync, no runtime).
pub use ::redis as client;

use crate::netns::{in_netns, netns_command};

const REDIS_SERVER: &str = "redis-server";
/// How long Redis may take to answer after its start, or to exit: only a
/// hang takes longer.
const BOUND: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How to start a [`RedisServer`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The network namespace to run in; `None`: this one (then bind
    /// loopback only).
    pub ns: Option<String>,
    /// The one address it listens on.
    pub bind: IpAddr,
    /// Its port; 0 picks a free one on `bind` (outside a namespace).
    pub port: u16,
    /// Its data directory; `None`: a fresh one, removed on drop.
    pub dir: Option<PathBuf>,
    /// Keep the data across a restart (`appendonly yes`).
    pub persist: bool,
    /// The password of its default user (`requirepass`): the test's own
    /// connections give it; [`RedisServer::url`] does not carry it.
    pub password: Option<String>,
    /// More settings, as `redis-server` takes them on its command line
    /// (`["--maxmemory", "1mb"]`).
    pub extra: Vec<String>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            ns: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            dir: None,
            persist: false,
            password: None,
            extra: Vec::new(),
        }
    }
}

/// A running private Redis.
pub struct RedisServer {
    options: RedisOptions,
    dir: PathBuf,
    /// The directory is ours to remove.
    own_dir: bool,
    child: Option<Child>,
}

/// Panics unless redis-server is installed.
pub fn require_redis() {
    let found = Command::new(REDIS_SERVER)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{REDIS_SERVER} is not installed: run `cargo xtask setup` (Debian's redis-server)"
    );
}

/// A port nobody listens on at `addr` now (bound and let go: another
/// process could take it in between, which no test here races for).
pub fn free_port(addr: IpAddr) -> u16 {
    TcpListener::bind((addr, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free port on {addr}: {e}"))
        .port()
}

impl RedisServer {
    /// Starts Redis in `ns` (or here), listening on `bind:port`, with its
    /// data in `dir`, and waits until it answers PING.
    pub fn start(ns: Option<&str>, bind: IpAddr, port: u16, dir: &Path) -> Self {
        Self::start_with(RedisOptions {
            ns: ns.map(str::to_owned),
            bind,
            port,
            dir: Some(dir.to_owned()),
            ..RedisOptions::default()
        })
    }

    /// Starts Redis on loopback, on a free port, in a directory of its own.
    pub fn start_local() -> Self {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(mut options: RedisOptions) -> Self {
        require_redis();
        if options.port == 0 {
            assert!(
                options.ns.is_none(),
                "give a port inside a namespace (any: the namespace is the test's)"
            );
            options.port = free_port(options.bind);
        }
        let (dir, own_dir) = match &options.dir {
            Some(dir) => (dir.clone(), false),
            None => {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = std::env::temp_dir()
                    .join(format!("smtp-gate-redis-{}-{n}", std::process::id()));
                let _ = fs::remove_dir_all(&dir);
                (dir, true)
            }
        };
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut server = Self {
            options,
            dir,
            own_dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `redis://ADDR:PORT` (no user, no password, even with one set).
    pub fn url(&self) -> String {
        let host = match self.options.bind {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        format!("redis://{host}:{}", self.options.port)
    }

    pub fn port(&self) -> u16 {
        self.options.port
    }

    pub fn bind(&self) -> IpAddr {
        self.options.bind
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything Redis logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while it runs (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Starts it (again, after [`Self::kill`]) on the same port and
    /// directory, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "Redis runs already");
        let options = &self.options;
        let mut command = match &options.ns {
            Some(ns) => netns_command(ns, REDIS_SERVER),
            None => Command::new(REDIS_SERVER),
        };
        let appendonly = if options.persist { "yes" } else { "no" };
        command
            .arg("--port")
            .arg(options.port.to_string())
            .arg("--bind")
            .arg(options.bind.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--daemonize", "no", "--logfile"])
            .arg(self.dir.join("redis.log"))
            // Redis 7 answers a default user without a password only on
            // loopback ("protected mode"); in a namespace of the test's,
            // which has no route out, the other namespaces must reach it.
            .args(options.ns.iter().flat_map(|_| ["--protected-mode", "no"]))
            .args(
                options
                    .password
                    .iter()
                    .flat_map(|password| ["--requirepass", password.as_str()]),
            )
            .args(&options.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + BOUND;
        loop {
            let answer = self
                .try_connection()
                .and_then(|mut c| client::cmd("PING").query::<String>(&mut c));
            match answer {
                Ok(_) => return,
                Err(e) => {
                    assert!(
                        self.is_running(),
                        "redis-server exited at its start ({e}); its log:\n{}",
                        self.log()
                    );
                    assert!(
                        Instant::now() < deadline,
                        "redis-server does not answer on {} after {BOUND:?} ({e}); its log:\n{}",
                        self.url(),
                        self.log()
                    );
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// A new connection to it (made inside its namespace).
    pub fn connection(&self) -> client::Connection {
        self.try_connection()
            .unwrap_or_else(|e| panic!("cannot connect to Redis at {}: {e}", self.url()))
    }

    fn try_connection(&self) -> client::RedisResult<client::Connection> {
        let url = match &self.options.password {
            Some(password) => self.url().replacen("://", &format!("://:{password}@"), 1),
            None => self.url(),
        };
        let connect = move || {
            let c = client::Client::open(url.as_str())?;
            let connection = c.get_connection_with_timeout(Duration::from_secs(5))?;
            connection.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(connection)
        };
        match &self.options.ns {
            Some(ns) => in_netns(ns, connect),
            None => connect(),
        }
    }

    /// Kills it with SIGKILL (a crash) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process dies of SIGKILL too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: it keeps its port (the kernel still accepts connections)
    /// but answers nothing, as a hung engine.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("Redis runs");
        // SAFETY: kill has no memory effects; pid is our own child.
        let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
    }

    /// Stops it with SIGTERM, SIGKILL if it does not end in time.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: as in `signal`; SIGCONT first, a paused Redis cannot act
        // on SIGTERM.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + BOUND;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("--- Redis's log ---\n{}---", self.log());
        }
        if self.own_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
