//! systemd's service protocol end to end (issue 14): `smtp-gate serve` and
//! `smtp-gate agent` in a lab's server namespace, started as systemd
//! starts a `Type=notify` unit with `WatchdogSec=` — `NOTIFY_SOCKET` names
//! a datagram socket of the test's own, `WATCHDOG_USEC` is set, and
//! `JOURNAL_STREAM` names the daemon's stderr — and what the daemon tells
//! that socket is checked against what it does:
//!
//! - READY=1 only once port 110, the policy endpoints and the gate are in
//!   place: while the test holds the pin directory's lock, the daemon has
//!   bound port 110 (it accepts) but cannot attach, and sends no READY;
//!   once the lock is let go READY comes, and port 110 greets at once. A
//!   daemon that cannot listen never says READY.
//! - WATCHDOG=1 every half of WATCHDOG_USEC, from the start, but only
//!   while the daemon's loops check in: a gate watch blocked on the pin
//!   directory's lock (serve), a bus follower blocked opening its status
//!   file (agent: a FIFO the test puts in its way, as a disk that does not
//!   answer) stop it, and it comes back when they go on.
//! - A reload that cannot have the pin directory's lock gives up after
//!   10 s, saying why, and sends READY=1 with a STATUS= that says what it
//!   refused; the watchdog is fed while it waits.
//! - RELOADING=1 (with MONOTONIC_USEC= between the SIGHUP and its
//!   arrival) when a SIGHUP's reload starts, READY=1 only when it is done
//!   (the test holds the lock the reload needs).
//! - STATUS= with the logins and grants; STOPPING=1 on SIGTERM.
//! - No child (the Dovecot sessions command) sees NOTIFY_SOCKET or the
//!   watchdog's variables.
//! - On the journal's stream every log line starts with its priority and
//!   carries no timestamp.
//!
//! Needs root and a built binary (`cargo build -p gate-user`); panics
//! otherwise (never skips). Each test builds its own lab.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use testkit::{
    lab::Lab,
    mail::MailFixture,
    netns::in_netns,
    notify::{Notification, NotifySocket},
    serve::{ServeDaemon, ServeStart, POP3_PORT},
    smtp::{ConnectResult, PASS_TIMEOUT},
};

/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(60);
/// The daemons' watchdog timeout: they must send WATCHDOG=1 every second.
const WATCHDOG_USEC: u64 = 2_000_000;
/// How long the test waits to see that a message does not come: longer
/// than the watchdog's interval, so a daemon held where the test holds it
/// has sent its watchdog messages meanwhile.
const QUIET: Duration = Duration::from_millis(2500);
const DOVECOT_POLICY_PORT: u16 = 10030;
const POSTFIX_POLICY_PORT: u16 = 10031;
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

/// The pin directory's lock (flock, as `smtp-gate attach` takes it), held
/// by the test: a daemon that attaches the gate, or reloads its settings,
/// waits for it.
struct PinLock(fs::File);

impl PinLock {
    fn take(dir: &Path) -> Self {
        let file = fs::File::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(
            locked,
            0,
            "locking {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Self(file)
    }
}

impl Drop for PinLock {
    fn drop(&mut self) {
        // Closing the file would let go of it too; said here.
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock of MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

fn is_ready(n: &Notification) -> bool {
    n.says("READY", "1")
}

fn is_watchdog(n: &Notification) -> bool {
    n.says("WATCHDOG", "1")
}

/// Whether a TCP connection from `ns` to `addr` completes (the kernel
/// accepts it for a listening socket, whether or not the daemon greets).
fn tcp_accepts(ns: &str, addr: SocketAddr) -> bool {
    in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
}

/// The environment systemd gives a `Type=notify` service with a watchdog
/// whose stderr is the journal: the log file's device and inode stand in
/// for the journal's stream (the file is made here, so that they are
/// known before the daemon starts; the lab opens it again without making
/// a new one).
fn service_env(notify: &NotifySocket, log: &Path) -> Vec<(String, String)> {
    fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let meta = fs::metadata(log).unwrap();
    vec![
        ("NOTIFY_SOCKET".into(), notify.path()),
        ("WATCHDOG_USEC".into(), WATCHDOG_USEC.to_string()),
        (
            "JOURNAL_STREAM".into(),
            format!("{}:{}", meta.dev(), meta.ino()),
        ),
    ]
}

/// Waits for a message `wanted` accepts, or panics naming `what`, with
/// what came and the daemon's log.
fn expect(
    notify: &mut NotifySocket,
    daemon: &mut ServeDaemon,
    what: &str,
    wanted: impl Fn(&Notification) -> bool,
) -> Notification {
    let deadline = Instant::now() + BOUND;
    loop {
        // A daemon that exited sends nothing more: what it sent is read
        // (a last short wait), then the test fails at once.
        let exited = daemon.exited();
        let wait = if exited.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        if let Some(got) = notify.wait_for(wait, &wanted) {
            return got;
        }
        if exited.is_some() || Instant::now() > deadline {
            panic!(
                "no {what} within {BOUND:?} (exited: {exited:?}); messages:\n{}log:\n{}",
                notify.transcript(),
                daemon.log()
            )
        }
    }
}

/// Waits [`QUIET`] and asserts that no READY=1 came meanwhile, nor
/// before (since `since` messages were received); the daemon must be
/// running and feeding its watchdog (so that the silence is not a dead
/// daemon's).
fn assert_no_ready(notify: &mut NotifySocket, daemon: &mut ServeDaemon, since: usize, why: &str) {
    notify.collect(QUIET);
    let got = &notify.received[since..];
    assert!(
        !got.iter().any(is_ready),
        "READY=1 while {why}; messages:\n{}log:\n{}",
        notify.transcript(),
        daemon.log()
    );
    assert!(
        got.iter().any(is_watchdog),
        "no WATCHDOG=1 in {QUIET:?} while {why} (WATCHDOG_USEC={WATCHDOG_USEC}); messages:\n{}",
        notify.transcript()
    );
    assert!(daemon.exited().is_none(), "exited:\n{}", daemon.log());
}

/// The watchdog: over `span`, WATCHDOG=1 comes at least every second
/// (half of WATCHDOG_USEC), and never later than WATCHDOG_USEC after the
/// one before (systemd would kill the daemon then).
fn assert_watchdog_fed(notify: &mut NotifySocket, span: Duration) {
    let got: Vec<Instant> = notify
        .collect(span)
        .iter()
        .filter(|n| is_watchdog(n))
        .map(|n| n.at)
        .collect();
    let expected = (span.as_micros() as u64 / (WATCHDOG_USEC / 2)) as usize;
    assert!(
        got.len() + 1 >= expected,
        "{} WATCHDOG=1 in {span:?}, expected about {expected}; messages:\n{}",
        got.len(),
        notify.transcript()
    );
    let longest = got
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest < Duration::from_micros(WATCHDOG_USEC),
        "{longest:?} between two WATCHDOG=1: systemd would have killed the daemon"
    );
}

/// Waits `settle` for the daemon to get stuck where the test holds it,
/// then asserts that no WATCHDOG=1 comes for [`QUIET`] and more (systemd
/// would kill the daemon), the daemon still running.
fn assert_watchdog_withheld(
    notify: &mut NotifySocket,
    daemon: &mut ServeDaemon,
    settle: Duration,
    why: &str,
) {
    notify.collect(settle);
    let since = notify.received.len();
    notify.collect(Duration::from_micros(WATCHDOG_USEC) + Duration::from_millis(500));
    let fed = notify.received[since..]
        .iter()
        .filter(|n| is_watchdog(n))
        .count();
    assert_eq!(
        fed,
        0,
        "WATCHDOG=1 while {why}; messages:\n{}log:\n{}",
        notify.transcript(),
        daemon.log()
    );
    assert!(daemon.exited().is_none(), "exited:\n{}", daemon.log());
}

/// Logs in on POP3 (`password` right or wrong) and quits; gives the
/// reply to PASS.
fn pop3_login(lab: &Lab, password: &str) -> String {
    let mut session = lab
        .client
        .session_v4(POP3_PORT, PASS_TIMEOUT)
        .unwrap_or_else(|e| panic!("POP3: {e}"));
    let user = session.exchange(&format!("USER {USER}")).expect("USER");
    assert!(user.starts_with("+OK"), "USER: {user}");
    let pass = session.exchange(&format!("PASS {password}")).expect("PASS");
    let _ = session.exchange("QUIT");
    pass
}

/// Every log line begins with a syslog priority (`<6>`, ...) and none with
/// env_logger's timestamp (`[2025-...`).
fn assert_journal_lines(log: &str) {
    assert!(!log.is_empty());
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .and_then(|(n, rest)| n.parse::<u8>().ok().map(|n| (n, rest)));
        let Some((n, rest)) = priority else {
            panic!("a log line without a priority: {line:?}\nlog:\n{log}");
        };
        assert!(n <= 7, "priority {n}: {line:?}");
        assert!(
            !rest.starts_with("[2") && !rest.contains("Z INFO") && !rest.contains("Z WARN"),
            "a timestamp of ours in the journal: {line:?}"
        );
    }
}

/// The sessions command the daemon runs: writes its environment where
/// the test reads it, and lists no session.
fn env_recorder(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("who.sh");
    let out = dir.join("child.env");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {out}.tmp && mv {out}.tmp {out}\n",
            out = out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    (script, out)
}

#[test]
fn serve_is_ready_with_its_listeners_and_gate_and_tells_systemd_its_watchdog_reloads_and_stop() {
    let lab = Lab::new();
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{PASSWORD}"));
    let dir = mail.dir().to_path_buf();
    let (who, child_env) = env_recorder(&dir);
    let config = dir.join("smtp-gate.toml");
    fs::write(
        &config,
        format!(
            "iface = \"{iface}\"\n\
             listen = [\"[::]:110\"]\n\
             users = \"{users}\"\n\
             mail_root = \"{root}\"\n\
             hostname = \"lab.test\"\n\
             window = \"10m\"\n\
             shutdown_grace = \"2s\"\n\
             login_failure_delay = \"200ms\"\n\
             dovecot_policy_listen = \"127.0.0.1:{DOVECOT_POLICY_PORT}\"\n\
             postfix_policy_listen = \"127.0.0.1:{POSTFIX_POLICY_PORT}\"\n\
             dovecot_sessions_interval = \"1s\"\n\
             dovecot_sessions_command = [\"{who}\"]\n",
            iface = lab.client.server_iface,
            users = mail.users_file().display(),
            root = mail.mail_root().display(),
            who = who.display(),
        ),
    )
    .unwrap();
    let mut notify = NotifySocket::new();
    let log = dir.join("serve.log");
    let env = service_env(&notify, &log);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // Held at the gate: the lock is the test's.
    let lock = PinLock::take(lab.pin_dir());
    let pin = lab.pin_dir_str();
    let mut daemon = lab.spawn_serve_with(
        ServeStart {
            env: &env,
            ..ServeStart::default()
        },
        &["--config", &config.to_string_lossy(), "--pin-dir", &pin],
        &log,
    );
    let pop3_v4 = SocketAddr::new(lab.client.server_v4.into(), POP3_PORT);
    let deadline = Instant::now() + BOUND;
    while !tcp_accepts(&lab.client.client_ns, pop3_v4) {
        assert!(daemon.exited().is_none(), "exited:\n{}", daemon.log());
        assert!(
            Instant::now() < deadline,
            "port 110 never listened:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Listening, but the gate is not there yet: not ready.
    assert_no_ready(
        &mut notify,
        &mut daemon,
        0,
        "the daemon waits for the pin directory's lock to attach the gate",
    );
    assert!(
        lab.attached_ifaces().is_empty(),
        "a gate while the lock was held: {:?}",
        lab.pins()
    );
    drop(lock);
    expect(&mut notify, &mut daemon, "READY=1", is_ready);
    // At once, all of it: POP3 on both families greets, the policy
    // endpoints accept, the gate is attached.
    for result in [
        lab.client.connect_v4(POP3_PORT, PASS_TIMEOUT),
        lab.client.connect_v6(POP3_PORT, PASS_TIMEOUT),
    ] {
        assert!(
            matches!(&result, ConnectResult::Connected(banner) if banner.starts_with("+OK")),
            "POP3 right after READY=1: {result}\n{}",
            daemon.log()
        );
    }
    for port in [DOVECOT_POLICY_PORT, POSTFIX_POLICY_PORT] {
        let addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
        assert!(
            tcp_accepts(&lab.server_ns, addr),
            "{addr} right after READY=1"
        );
    }
    assert_eq!(
        lab.attached_ifaces(),
        std::slice::from_ref(&lab.client.server_iface)
    );

    assert_watchdog_fed(&mut notify, Duration::from_secs(5));

    // The status line counts logins and grants.
    assert!(pop3_login(&lab, PASSWORD).starts_with("+OK"));
    assert!(pop3_login(&lab, "looking-glass").starts_with("-ERR"));
    let wanted = "POP3 logins 1 (1 failed), grants 1 (0 failed)";
    expect(&mut notify, &mut daemon, wanted, |n| {
        n.get("STATUS") == Some(wanted)
    });

    // The sessions command ran without systemd's variables.
    let deadline = Instant::now() + BOUND;
    let seen = loop {
        if let Ok(text) = fs::read_to_string(&child_env) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the sessions command never ran:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(seen.lines().any(|l| l.starts_with("PATH=")), "{seen}");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(&format!("{var}="))),
            "the daemon's child got {var}:\n{seen}"
        );
    }

    // A reload: RELOADING=1 when it starts, READY=1 only once it is done
    // (it waits for the lock to change the gate's settings).
    let lock = PinLock::take(lab.pin_dir());
    let before = monotonic_usec();
    daemon.signal(libc::SIGHUP);
    let reloading = expect(&mut notify, &mut daemon, "RELOADING=1", |n| {
        n.says("RELOADING", "1")
    });
    let after = monotonic_usec();
    let stamp: u64 = reloading
        .get("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC={stamp} not between the SIGHUP ({before}) and its arrival ({after})"
    );
    let since = notify.received.len();
    assert_no_ready(
        &mut notify,
        &mut daemon,
        since,
        "the reload waits for the lock",
    );
    assert!(!daemon.log().contains("reloaded on SIGHUP"));
    drop(lock);
    expect(
        &mut notify,
        &mut daemon,
        "READY=1 after the reload",
        is_ready,
    );
    assert!(
        daemon.log().contains("reloaded on SIGHUP"),
        "READY=1 before the reload's line:\n{}",
        daemon.log()
    );

    let log_text = daemon.log();
    assert_journal_lines(&log_text);
    assert!(
        log_text.contains("<6>[INFO  smtp_gate::serve] POP3 listening on [::]:110"),
        "{log_text}"
    );

    daemon.signal(libc::SIGTERM);
    expect(&mut notify, &mut daemon, "STOPPING=1", |n| {
        n.says("STOPPING", "1")
    });
    let status = daemon.wait_exit(BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        daemon.log()
    );
}

/// A daemon that cannot listen on its port, or cannot attach its gate,
/// stops without ever saying READY=1; its log keeps env_logger's format,
/// stderr not being the journal's stream.
#[test]
fn serve_that_cannot_listen_or_attach_never_says_ready() {
    let lab = Lab::new();
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{PASSWORD}"));
    let pin = lab.pin_dir_str();
    let users = mail.users_file().to_string_lossy().into_owned();
    let root = mail.mail_root().to_string_lossy().into_owned();
    // Port 110 is taken.
    let taken = in_netns(&lab.server_ns, || TcpListener::bind("[::]:110")).expect("binding 110");
    let missing = "nosuchif0".to_string();
    for (iface, what) in [
        (&lab.client.server_iface, "Address already in use"),
        (&missing, "nosuchif0"),
    ] {
        let listen = if iface == &missing {
            "[::]:1110"
        } else {
            "[::]:110"
        };
        let mut notify = NotifySocket::new();
        let log = mail.dir().join(format!("serve-{iface}.log"));
        let notify_path = notify.path();
        // A journal stream inherited, but not the daemon's stderr.
        let other = fs::metadata(mail.users_file()).unwrap();
        let journal = format!("{}:{}", other.dev(), other.ino());
        let env = [
            ("NOTIFY_SOCKET", notify_path.as_str()),
            ("WATCHDOG_USEC", "2000000"),
            ("JOURNAL_STREAM", journal.as_str()),
        ];
        let mut daemon = lab.spawn_serve_with(
            ServeStart {
                env: &env,
                ..ServeStart::default()
            },
            &[
                "--iface",
                iface,
                "--listen",
                listen,
                "--users",
                &users,
                "--mail-root",
                &root,
                "--pin-dir",
                &pin,
            ],
            &log,
        );
        let status = daemon.wait_exit(BOUND);
        assert!(
            status.is_some_and(|s| !s.success()),
            "{status:?}\n{}",
            daemon.log()
        );
        let text = daemon.log();
        assert!(text.contains(what), "{text}");
        // env_logger's format, as ever; the final error as ever.
        assert!(
            text.lines().next().is_some_and(|l| l.starts_with("[2")),
            "{text}"
        );
        assert!(!text.contains("<6>") && !text.contains("<3>"), "{text}");
        assert!(
            text.lines()
                .last()
                .is_some_and(|l| l.starts_with("smtp-gate: ")),
            "{text}"
        );
        notify.collect(Duration::from_millis(200));
        assert!(
            !notify.received.iter().any(is_ready),
            "READY=1 from a daemon that failed ({what}):\n{}",
            notify.transcript()
        );
    }
    drop(taken);
}

#[test]
fn agent_is_ready_once_its_gate_is_held_and_tells_systemd_its_reloads_and_stop() {
    let lab = Lab::new();
    let mail = MailFixture::new();
    let dir = mail.dir();
    let mut notify = NotifySocket::new();
    let log = dir.join("agent.log");
    let env = service_env(&notify, &log);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let position = dir.join("state/bus-position");
    let position = position.to_string_lossy();
    let pin = lab.pin_dir_str();
    let lock = PinLock::take(lab.pin_dir());
    // No engine listens there: the agent must be ready all the same (it
    // enforces what it has through an engine outage).
    let mut agent = lab.spawn_daemon_with(
        ServeStart {
            env: &env,
            ..ServeStart::default()
        },
        "agent",
        &[
            "--iface",
            &lab.client.server_iface,
            "--pin-dir",
            &pin,
            "--window",
            "120s",
            "--bus",
            "redis://127.0.0.1:1",
            "--bus-position-file",
            &position,
        ],
        &log,
    );
    expect(&mut notify, &mut agent, "WATCHDOG=1", is_watchdog);
    assert_no_ready(
        &mut notify,
        &mut agent,
        0,
        "the agent waits for the pin directory's lock to attach the gate",
    );
    assert!(lab.attached_ifaces().is_empty(), "{:?}", lab.pins());
    drop(lock);
    expect(&mut notify, &mut agent, "READY=1", is_ready);
    assert_eq!(
        lab.attached_ifaces(),
        std::slice::from_ref(&lab.client.server_iface)
    );
    expect(
        &mut notify,
        &mut agent,
        "STATUS= of an agent without engine",
        |n| {
            n.get("STATUS")
                .is_some_and(|s| s.starts_with("engine NOT CONNECTED"))
        },
    );
    assert_watchdog_fed(&mut notify, Duration::from_secs(4));

    agent.signal(libc::SIGHUP);
    expect(&mut notify, &mut agent, "RELOADING=1", |n| {
        n.says("RELOADING", "1") && n.get("MONOTONIC_USEC").is_some()
    });
    expect(&mut notify, &mut agent, "READY=1 after SIGHUP", is_ready);
    assert!(agent
        .log()
        .contains("SIGHUP: the agent reads its config only at start"));

    assert_journal_lines(&agent.log());
    agent.signal(libc::SIGTERM);
    expect(&mut notify, &mut agent, "STOPPING=1", |n| {
        n.says("STOPPING", "1")
    });
    let status = agent.wait_exit(BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.log()
    );
}

/// The watchdog waits for the gate's watch; a reload that cannot have the
/// pin directory's lock gives up after 10 s and says so.
#[test]
fn serve_feeds_the_watchdog_only_while_its_watch_checks_in_and_a_reload_gives_up_on_a_held_lock() {
    let lab = Lab::new();
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{PASSWORD}"));
    let dir = mail.dir().to_path_buf();
    let mut notify = NotifySocket::new();
    let log = dir.join("serve.log");
    let env = service_env(&notify, &log);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let pin = lab.pin_dir_str();
    let users = mail.users_file().to_string_lossy().into_owned();
    let root = mail.mail_root().to_string_lossy().into_owned();
    let mut daemon = lab.spawn_serve_with(
        ServeStart {
            env: &env,
            ..ServeStart::default()
        },
        &[
            "--iface",
            &lab.client.server_iface,
            "--users",
            &users,
            "--mail-root",
            &root,
            "--pin-dir",
            &pin,
            "--login-failure-delay",
            "200ms",
        ],
        &log,
    );
    expect(&mut notify, &mut daemon, "READY=1", is_ready);
    assert_watchdog_fed(&mut notify, Duration::from_secs(3));

    // A reload while the test holds the lock: it waits, feeding the
    // watchdog, and gives up after 10 s with READY=1 and a status line
    // that says what it refused.
    let lock = PinLock::take(lab.pin_dir());
    daemon.signal(libc::SIGHUP);
    let reloading = expect(&mut notify, &mut daemon, "RELOADING=1", |n| {
        n.says("RELOADING", "1")
    });
    assert_watchdog_fed(&mut notify, Duration::from_secs(6));
    let ready = expect(
        &mut notify,
        &mut daemon,
        "READY=1 of the refused reload",
        is_ready,
    );
    let waited = ready.at - reloading.at;
    assert!(
        waited >= Duration::from_millis(9500) && waited < Duration::from_secs(15),
        "READY=1 {waited:?} after RELOADING=1:\n{}",
        daemon.log()
    );
    let status = ready.get("STATUS").unwrap_or_default();
    assert!(
        status.contains("last reload (SIGHUP) refused the gate's settings"),
        "READY=1 without the refusal on the status line: {ready:?}"
    );
    let text = daemon.log();
    let me = format!("pid {}", std::process::id());
    for wanted in [
        "reload (SIGHUP): waiting up to 10s for the lock of the pin directory",
        "reload (SIGHUP): the gate's settings could not be changed",
        "for more than 10s",
        "reloaded on SIGHUP: refused the gate's settings",
    ] {
        assert!(text.contains(wanted), "no {wanted:?} in the log:\n{text}");
    }
    assert!(
        text.contains(&me),
        "the lock's holder ({me}) not named:\n{text}"
    );

    // The gate's watch blocked on the lock (a pin to put back): the
    // watchdog is no longer fed, while POP3 goes on; fed again once the
    // watch goes on.
    fs::remove_file(lab.pin_dir().join("stats")).expect("removing the stats pin");
    assert_watchdog_withheld(
        &mut notify,
        &mut daemon,
        Duration::from_secs(4),
        "the gate's watch waits for the lock",
    );
    assert!(pop3_login(&lab, PASSWORD).starts_with("+OK"));
    let text = daemon.log();
    assert!(
        text.contains("WATCHDOG=1 withheld: no check-in from the gate's watch"),
        "{text}"
    );
    drop(lock);
    expect(
        &mut notify,
        &mut daemon,
        "WATCHDOG=1 once the watch goes on",
        is_watchdog,
    );
    assert_watchdog_fed(&mut notify, Duration::from_secs(3));
    assert!(
        lab.pins().contains(&"stats".to_string()),
        "{:?}",
        lab.pins()
    );
    assert!(daemon.log().contains("every loop checks in again"));

    // A reload that refuses nothing takes the note off the status line.
    daemon.signal(libc::SIGHUP);
    let ready = expect(
        &mut notify,
        &mut daemon,
        "READY=1 after a good reload",
        is_ready,
    );
    assert!(
        ready.get("STATUS").is_some_and(|s| !s.contains("refused")),
        "{ready:?}"
    );

    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        daemon.log()
    );
}

/// The agent's watchdog waits for its bus follower: one blocked opening
/// its status file (a FIFO in its way, as a disk that does not answer)
/// stops it; let go, the follower goes on and the watchdog is fed again.
#[test]
fn agent_feeds_the_watchdog_only_while_its_follower_checks_in() {
    let lab = Lab::new();
    let mail = MailFixture::new();
    let dir = mail.dir();
    let mut notify = NotifySocket::new();
    let log = dir.join("agent.log");
    let env = service_env(&notify, &log);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let state = dir.join("state");
    let position = state.join("bus-position");
    let pin = lab.pin_dir_str();
    // No engine: the follower goes round every 2 s, writing its status
    // file each time.
    let mut agent = lab.spawn_daemon_with(
        ServeStart {
            env: &env,
            ..ServeStart::default()
        },
        "agent",
        &[
            "--iface",
            &lab.client.server_iface,
            "--pin-dir",
            &pin,
            "--bus",
            "redis://127.0.0.1:1",
            "--bus-position-file",
            &position.to_string_lossy(),
        ],
        &log,
    );
    expect(&mut notify, &mut agent, "READY=1", is_ready);
    assert_watchdog_fed(&mut notify, Duration::from_secs(3));

    // The status file is written through a temporary file of the
    // agent's pid (bus/state.rs): a FIFO there blocks the open, in the
    // follower's own thread, until someone reads.
    let pid = agent.pid().expect("the agent's pid");
    let fifo = state.join(format!("bus-position.status.json.{pid}.tmp"));
    let c_fifo = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) },
        0,
        "mkfifo {}: {}",
        fifo.display(),
        std::io::Error::last_os_error()
    );
    struct Unblock(std::ffi::CString);
    impl Drop for Unblock {
        fn drop(&mut self) {
            // Opening the read end lets the follower's open go on.
            // SAFETY: a NUL-terminated path; the descriptor is closed.
            unsafe {
                let fd = libc::open(self.0.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
                if fd >= 0 {
                    thread::sleep(Duration::from_millis(200));
                    libc::close(fd);
                }
                libc::unlink(self.0.as_ptr());
            }
        }
    }
    let unblock = Unblock(c_fifo);
    assert_watchdog_withheld(
        &mut notify,
        &mut agent,
        Duration::from_secs(4),
        "the follower is blocked opening its status file",
    );
    let text = agent.log();
    assert!(
        text.contains("WATCHDOG=1 withheld: no check-in from the bus follower"),
        "{text}"
    );
    drop(unblock);
    expect(
        &mut notify,
        &mut agent,
        "WATCHDOG=1 once the follower goes on",
        is_watchdog,
    );
    assert_watchdog_fed(&mut notify, Duration::from_secs(3));

    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.log()
    );
}
