//! End to end with the grant bus's publishing side (issue 13): the real
//! `smtp-gate serve` in a lab's server namespace, a real redis-server
//! started by the test in that namespace (on its loopback, its own port
//! and directory), real POP3 logins from the client namespace. What a
//! login grants must be in the engine before its `+OK`: the key
//! `smtp-gate:grant:<addr>` (its value the expiry in wall-clock ms, the
//! engine expiring it then) and one entry of the `smtp-gate:events`
//! stream. An engine that is killed or hung never holds a login up past
//! `bus_timeout`, nor fills the log; one that comes back is used again.
//! `smtp-gate grant` and `revoke` publish too.
//!
//! Needs root, a built binary (`cargo build`), python3 and redis-server
//! (`cargo xtask setup`); panics otherwise (never skips). Each test builds
//! its own lab.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use testkit::{
    faketime,
    gate_binary::smtp_gate_bin,
    lab::Lab,
    mail::MailFixture,
    netns::in_netns,
    pop3_client::{pop3_client, require_pop3_clients},
    process::describe,
    redis::{client as redis, RedisOptions, RedisServer},
    serve::{ServeDaemon, POP3_PORT},
};

const USER: &str = "alice";
const SECRET: &str = "wonderland";
/// The window of the daemons here, and so the lifetime of what they
/// publish.
const WINDOW: Duration = Duration::from_secs(600);
/// `bus_timeout` of the daemons here (the default).
const BUS_TIMEOUT: Duration = Duration::from_millis(250);
/// What a login may take beyond `bus_timeout` on a loaded machine: the
/// maildrop, the local grant, the round trips.
const MARGIN: Duration = Duration::from_millis(750);
/// How far the test's clock and the engine's reading of a lifetime may be
/// apart (both on this host: the time between the publication and the
/// test's look).
const SLACK_MS: i64 = 10_000;
/// How far one host's reading of the engine's clock may be off (the
/// design tolerates a second).
const CLOCK_SLACK_MS: i64 = 1_000;
/// The engine's port inside the lab's server namespace (its own).
const REDIS_PORT: u16 = 6390;
const ORIGIN: &str = "pop1.lab";
/// How long the link may take to reconnect after the engine is back: its
/// backoff is at most 10 s (and a quarter of jitter).
const RECONNECT_BOUND: Duration = Duration::from_secs(30);
const LOG_BOUND: Duration = Duration::from_secs(30);

/// A lab with the engine, the daemon publishing to it, and alice's
/// maildrop. Fields drop in order: the daemon (SIGTERM) before the
/// engine, the mail and the lab.
struct BusLab {
    daemon: Option<ServeDaemon>,
    redis: RedisServer,
    mail: MailFixture,
    lab: Lab,
}

impl BusLab {
    /// The lab and the engine; no daemon yet.
    fn new() -> Self {
        Self::with_password(None)
    }

    /// [`BusLab::new`], the engine asking for `password`.
    fn with_password(password: Option<&str>) -> Self {
        require_pop3_clients();
        let lab = Lab::new();
        let mut mail = MailFixture::new();
        mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
        mail.deliver(USER, "1700000001.M1P1.lab", b"Subject: hi\n\nHello.\n");
        let dir = mail.dir().join("redis");
        fs::create_dir_all(&dir).unwrap();
        let redis = RedisServer::start_with(RedisOptions {
            ns: Some(lab.server_ns.clone()),
            bind: "127.0.0.1".parse().unwrap(),
            port: REDIS_PORT,
            dir: Some(dir),
            password: password.map(str::to_owned),
            ..RedisOptions::default()
        });
        Self {
            daemon: None,
            redis,
            mail,
            lab,
        }
    }

    /// `--bus URL` and the rest of what every daemon here gets.
    fn flags(&self, gate: bool) -> Vec<String> {
        let mut flags: Vec<String> = vec![
            "--listen".into(),
            "[::]:110".into(),
            "--users".into(),
            self.mail.users_file().display().to_string(),
            "--mail-root".into(),
            self.mail.mail_root().display().to_string(),
            "--window".into(),
            "10m".into(),
            "--shutdown-grace".into(),
            "1s".into(),
            "--bus".into(),
            self.redis.url(),
            "--bus-origin".into(),
            ORIGIN.into(),
        ];
        if gate {
            flags.extend([
                "--iface".into(),
                self.lab.client.server_iface.clone(),
                "--pin-dir".into(),
                self.lab.pin_dir_str(),
            ]);
        }
        flags
    }

    /// Starts the daemon with `flags` and waits until it answers POP3 and
    /// its link to the engine is up.
    fn serve(&mut self, flags: &[String]) {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut daemon = self
            .lab
            .spawn_serve(&flags, &self.mail.dir().join("serve.log"));
        self.lab.wait_pop3(&mut daemon);
        daemon.wait_for_log("bus serve: connected to", 1, LOG_BOUND);
        self.daemon = Some(daemon);
    }

    fn daemon(&mut self) -> &mut ServeDaemon {
        self.daemon.as_mut().expect("the daemon runs")
    }

    fn log(&self) -> String {
        self.daemon.as_ref().expect("the daemon runs").log()
    }

    fn client_v4(&self) -> IpAddr {
        self.lab.client.client_v4.into()
    }

    fn client_v6(&self) -> IpAddr {
        self.lab.client.client_v6.into()
    }

    /// A USER/PASS login over IPv4, from the client: PASS's answer and
    /// how long it took to come.
    fn login(&self) -> (String, Duration) {
        timed_login(&self.lab, self.lab.client.server_v4.into())
    }

    /// The engine's connection (inside the server namespace).
    fn engine(&self) -> redis::Connection {
        self.redis.connection()
    }
}

/// Logs alice in with USER and PASS from the client's namespace to
/// `server`, then QUITs: PASS's answer and the time from PASS to it.
fn timed_login(lab: &Lab, server: IpAddr) -> (String, Duration) {
    let stream = in_netns(&lab.client.client_ns, || {
        TcpStream::connect_timeout(&SocketAddr::new(server, POP3_PORT), Duration::from_secs(10))
    })
    .unwrap_or_else(|e| panic!("connecting to POP3 at {server}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a POP3 answer");
        line
    };
    assert!(line().starts_with("+OK"), "no greeting");
    writer
        .write_all(format!("USER {USER}\r\n").as_bytes())
        .unwrap();
    assert!(line().starts_with("+OK"), "USER refused");
    let started = Instant::now();
    writer
        .write_all(format!("PASS {SECRET}\r\n").as_bytes())
        .unwrap();
    let answer = line();
    let took = started.elapsed();
    writer.write_all(b"QUIT\r\n").unwrap();
    let _ = line();
    (answer, took)
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn grant_key(addr: IpAddr) -> String {
    format!("smtp-gate:grant:{addr}")
}

/// The grant key of `addr`: its value, PTTL and PEXPIRETIME, if it exists.
fn grant_of(engine: &mut redis::Connection, addr: IpAddr) -> Option<(i64, i64, i64)> {
    let key = grant_key(addr);
    let value: Option<String> = redis::cmd("GET").arg(&key).query(engine).unwrap();
    let value = value?;
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(engine).unwrap();
    let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query(engine).unwrap();
    let value = value
        .parse()
        .unwrap_or_else(|e| panic!("{key} holds {value:?}, not a number: {e}"));
    Some((value, pttl, at))
}

/// Checks that `addr`'s key holds an expiry `lifetime` from now, and that
/// the engine expires it then.
#[track_caller]
fn assert_granted_for(engine: &mut redis::Connection, addr: IpAddr, lifetime: Duration) {
    let (value, pttl, at) =
        grant_of(engine, addr).unwrap_or_else(|| panic!("no key {}", grant_key(addr)));
    let lifetime = lifetime.as_millis() as i64;
    // The value is on the engine's clock as the publisher carries it
    // forward (bus/clock.rs); the key expires a lifetime after the SET.
    assert!(
        (at - value).abs() <= CLOCK_SLACK_MS,
        "the engine expires the key at {at}, its value says {value}"
    );
    let from_now = value - wall_ms();
    assert!(
        (lifetime - SLACK_MS..=lifetime + CLOCK_SLACK_MS).contains(&from_now),
        "{} expires in {from_now} ms, not about {lifetime}",
        grant_key(addr)
    );
    assert!(
        (lifetime - SLACK_MS..=lifetime).contains(&pttl),
        "{}'s PTTL is {pttl} ms, not about {lifetime}",
        grant_key(addr)
    );
}

/// The entries of the events stream, oldest first: their fields.
fn events(engine: &mut redis::Connection) -> Vec<HashMap<String, String>> {
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("smtp-gate:events")
        .arg("-")
        .arg("+")
        .query(engine)
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            fields
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect()
        })
        .collect()
}

/// The entries of `op` for `addr`.
fn events_of(
    engine: &mut redis::Connection,
    op: &str,
    addr: IpAddr,
) -> Vec<HashMap<String, String>> {
    events(engine)
        .into_iter()
        .filter(|e| e["op"] == op && e["addr"] == addr.to_string())
        .collect()
}

#[track_caller]
fn assert_one_grant_entry(engine: &mut redis::Connection, addr: IpAddr, origin: &str) {
    let entries = events_of(engine, "grant", addr);
    assert_eq!(entries.len(), 1, "grant entries of {addr}: {entries:?}");
    let entry = &entries[0];
    let (value, _, _) = grant_of(engine, addr).expect("the key of the entry");
    assert_eq!(entry["expires"], value.to_string(), "{entry:?}");
    assert_eq!(entry["origin"], origin, "{entry:?}");
}

/// A POP3 login (USER/PASS over IPv4, APOP over IPv6) is in the engine
/// when its `+OK` comes, looked at without waiting: the key with the
/// expiry one window ahead (the engine's own expiry set to it), one
/// stream entry naming the operation, the address, the expiry and the
/// origin. The local gate has it too, and the grant line says
/// `bus=published`.
#[test]
fn a_pop3_login_is_in_the_engine_before_its_ok() {
    let mut lab = BusLab::new();
    let flags = lab.flags(true);
    lab.serve(&flags);
    let mut engine = lab.engine();
    let (v4, v6) = (lab.client_v4(), lab.client_v6());
    assert_eq!(grant_of(&mut engine, v4), None, "granted before any login");

    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert_granted_for(&mut engine, v4, WINDOW);
    assert_one_grant_entry(&mut engine, v4, ORIGIN);

    let results = pop3_client(
        &lab.lab.client.client_ns,
        lab.lab.client.server_v6.into(),
        serde_json::json!([
            {"op": "connect"},
            {"op": "apop", "user": USER, "secret": SECRET},
            {"op": "quit"},
        ]),
    );
    assert!(results[1].get("error").is_none(), "APOP: {results:?}");
    assert_granted_for(&mut engine, v6, WINDOW);
    assert_one_grant_entry(&mut engine, v6, ORIGIN);
    assert_eq!(events(&mut engine).len(), 2, "one entry per login");

    let local = lab.lab.list(&[]);
    for addr in [v4, v6] {
        assert!(
            local.iter().any(|g| g["address"] == addr.to_string()),
            "{addr} is not in the local gate: {local:?}"
        );
    }
    let log = lab.log();
    for addr in [v4, v6] {
        let line = format!("grant source=pop3 addr={addr} user={USER} bus=published");
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }
}

/// Attack review (busload F4): an entry with the last possible id makes
/// the engine refuse every later XADD (the key is still written). Logins
/// go on; the log says so once, naming the stream to delete; the grant
/// lines say `bus=exhausted`, the statistics count it. Deleted, the stream
/// is made anew by the next login and publishing works again.
#[test]
fn an_exhausted_stream_is_said_once_counted_and_mended_by_deleting_it() {
    let mut lab = BusLab::new();
    let flags = lab.flags(true);
    lab.serve(&flags);
    let mut engine = lab.engine();
    redis::cmd("XADD")
        .arg("smtp-gate:events")
        .arg("18446744073709551615-18446744073709551615")
        .arg("op")
        .arg("grant")
        .query::<String>(&mut engine)
        .expect("XADD of the last id");
    for n in 1..=3 {
        let (answer, took) = lab.login();
        assert!(answer.starts_with("+OK"), "login {n}: {answer}");
        assert!(took < BUS_TIMEOUT + MARGIN, "login {n} took {took:?}");
    }
    let v4 = lab.client_v4();
    assert!(grant_of(&mut engine, v4).is_some(), "the key is written");
    let log = lab.log();
    let said = "bus serve: publishing fails: the stream's ids are exhausted";
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(log.contains("DEL smtp-gate:events"), "{log}");
    let line = format!("grant source=pop3 addr={v4} user={USER} bus=exhausted");
    assert_eq!(log.matches(&line).count(), 3, "{log}");

    redis::cmd("DEL")
        .arg("smtp-gate:events")
        .query::<()>(&mut engine)
        .unwrap();
    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert_eq!(events_of(&mut engine, "grant", v4).len(), 1);
    let daemon = lab.daemon();
    daemon.wait_for_log("bus serve: publishing works again", 1, LOG_BOUND);
    let (stopped, _) = daemon.terminate(LOG_BOUND);
    assert!(stopped.is_some_and(|s| s.success()), "{}", daemon.log());
    let log = daemon.log();
    let statistics = log
        .lines()
        .rfind(|l| l.contains("statistics bus=publisher "))
        .unwrap_or_else(|| panic!("no statistics line: {log}"));
    assert!(
        statistics.ends_with("published=1 failed=0 timed_out=0 refused_busy=0 down=0 exhausted=3"),
        "{statistics}"
    );
}

/// The engine killed: logins go on, each answered within `bus_timeout`
/// and a margin, granted by the local gate; the log says once that
/// publishing fails (not once per login). The engine back on the same
/// port and directory: the link finds it by itself, the next login is
/// published, and the log says once that it works again.
#[test]
fn logins_go_on_while_the_engine_is_down_and_publish_again_when_it_is_back() {
    let mut lab = BusLab::new();
    let flags = lab.flags(true);
    lab.serve(&flags);
    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert!(grant_of(&mut lab.engine(), lab.client_v4()).is_some());

    lab.redis.kill();
    let warnings = |log: &str| {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.contains("bus serve:"))
            .count()
    };
    for n in 1..=3 {
        let (answer, took) = lab.login();
        assert!(
            answer.starts_with("+OK"),
            "login {n} with the engine down: {answer}"
        );
        assert!(
            took < BUS_TIMEOUT + MARGIN,
            "login {n} with the engine down took {took:?}"
        );
        if n == 2 {
            // What the link and the publisher had to say of the loss is
            // said by now.
            std::thread::sleep(Duration::from_millis(500));
            let log = lab.log();
            assert_eq!(
                log.matches("bus serve: publishing fails").count(),
                1,
                "two logins, one line:\n{log}"
            );
            assert!(warnings(&log) <= 2, "{log}");
        }
    }
    let log = lab.log();
    assert_eq!(
        log.matches("bus serve: publishing fails").count(),
        1,
        "three logins, one line:\n{log}"
    );
    let v4 = lab.client_v4();
    let unpublished = log
        .lines()
        .filter(|l| l.contains(&format!("grant source=pop3 addr={v4} ")))
        .skip(1)
        .collect::<Vec<_>>();
    assert_eq!(unpublished.len(), 3, "{log}");
    for line in &unpublished {
        assert!(
            line.ends_with(" bus=failed") || line.ends_with(" bus=down"),
            "a login with the engine down: {line}"
        );
    }
    assert!(
        lab.lab
            .list(&[])
            .iter()
            .any(|g| g["address"] == v4.to_string()),
        "the local gate lost the grant"
    );

    lab.redis.restart();
    lab.daemon()
        .wait_for_log("bus serve: connected to", 2, RECONNECT_BOUND);
    let mut engine = lab.engine();
    assert_eq!(grant_of(&mut engine, v4), None, "a fresh engine, no data");
    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert_granted_for(&mut engine, v4, WINDOW);
    assert_one_grant_entry(&mut engine, v4, ORIGIN);
    let log = lab.log();
    assert_eq!(
        log.matches("bus serve: publishing works again").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(&format!(
            "grant source=pop3 addr={v4} user={USER} bus=published"
        ))
        .count(),
        2,
        "the logins before the kill and after the restart:\n{log}"
    );
}

/// A hung engine (SIGSTOP: it accepts, answers nothing): the `+OK` waits
/// for it, and no longer than `bus_timeout` (and a margin); the line says
/// `bus=timeout`. Resumed, it is used again.
#[test]
fn a_hung_engine_holds_a_login_up_for_bus_timeout_at_most() {
    let mut lab = BusLab::new();
    let flags = lab.flags(true);
    lab.serve(&flags);
    lab.redis.pause();
    let (answer, took) = lab.login();
    lab.redis.resume();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    // It waited: the +OK waits for the engine's acknowledgement (a
    // publication sent off without waiting would answer at once).
    assert!(
        took >= BUS_TIMEOUT.mul_f32(0.9),
        "the +OK came after {took:?}, without waiting for the engine"
    );
    assert!(took < BUS_TIMEOUT + MARGIN, "the +OK came after {took:?}");
    let v4 = lab.client_v4();
    let log = lab.log();
    assert!(
        log.contains(&format!(
            "grant source=pop3 addr={v4} user={USER} bus=timeout"
        )),
        "{log}"
    );
    lab.daemon()
        .wait_for_log("bus serve: connected to", 2, RECONNECT_BOUND);
    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert_granted_for(&mut lab.engine(), v4, WINDOW);
}

/// A host without a gate (no iface): nothing is attached or pinned, its
/// POP3 logins, Dovecot's reported logins and Dovecot's open sessions are
/// published only.
#[test]
fn a_host_without_a_gate_publishes_every_grant() {
    let mut lab = BusLab::new();
    let reported: IpAddr = "192.0.2.99".parse().unwrap();
    let in_session: IpAddr = "2001:db8::77".parse().unwrap();
    // Dovecot's listing of its sessions, as `doveadm -f tab who -1`.
    let who = lab.mail.dir().join("who");
    fs::write(
        &who,
        format!(
            "#!/bin/sh\nprintf 'username\\tproto\\tpid\\tip\\nbob\\timap\\t7\\t{in_session}\\n'\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&who, fs::Permissions::from_mode(0o755)).unwrap();
    let mut flags = lab.flags(false);
    flags.extend([
        "--dovecot-policy-listen".into(),
        "127.0.0.1:10030".into(),
        "--dovecot-sessions-interval".into(),
        "1s".into(),
        "--dovecot-sessions-command".into(),
        who.display().to_string(),
    ]);
    lab.serve(&flags);
    assert!(lab.lab.pins().is_empty(), "pinned: {:?}", lab.lab.pins());
    assert!(
        lab.lab.attached_ifaces().is_empty(),
        "attached: {:?}",
        lab.lab.attached_ifaces()
    );
    let log = lab.log();
    assert!(log.contains("no iface: this host has no gate"), "{log}");

    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    let mut engine = lab.engine();
    let v4 = lab.client_v4();
    assert_granted_for(&mut engine, v4, WINDOW);
    assert_one_grant_entry(&mut engine, v4, ORIGIN);

    let body = serde_json::json!({
        "login": "carol", "protocol": "imap", "remote": reported.to_string(),
        "success": true, "policy_reject": false, "tls": true,
    })
    .to_string();
    let answer = in_netns(&lab.lab.server_ns, || {
        dovecot_report("127.0.0.1:10030".parse().unwrap(), &body)
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_granted_for(&mut engine, reported, WINDOW);
    assert_one_grant_entry(&mut engine, reported, ORIGIN);

    // The first round may run before the link is up (its line then says
    // bus=down, and a renewal is logged once, not each round): the key,
    // written by the next round at the latest, shows that renewals are
    // published.
    lab.daemon().wait_for_log(
        &format!("grant source=dovecot-sessions addr={in_session} user=bob protocol=imap bus="),
        1,
        LOG_BOUND,
    );
    let deadline = Instant::now() + LOG_BOUND;
    while grant_of(&mut engine, in_session).is_none() {
        assert!(
            Instant::now() < deadline,
            "no key {} after {LOG_BOUND:?}",
            grant_key(in_session)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_granted_for(&mut engine, in_session, WINDOW);
    let log = lab.log();
    for line in [
        format!("grant source=pop3 addr={v4} user={USER} bus=published"),
        format!(
            "grant source=dovecot-policy addr={reported} user=carol protocol=imap bus=published"
        ),
    ] {
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }
    assert!(lab.lab.pins().is_empty(), "pinned: {:?}", lab.lab.pins());
}

/// Dovecot's success report, as its auth policy client sends it; the
/// whole answer.
fn dovecot_report(endpoint: SocketAddr, body: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connecting to {endpoint}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = format!(
        "POST /?command=report HTTP/1.1\r\nHost: {endpoint}\r\nContent-Length: {}\r\n\
         Connection: close\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    answer
}

/// The engine's password comes from `bus_password_file`: with the file
/// mode 600 the daemon logs in with it and publishes; a file others may
/// read stops the start before the gate changes, naming the flag and the
/// mode; a password in the `--bus` URL is refused without being shown.
#[test]
fn the_engines_password_comes_from_a_file_only_its_owner_reads() {
    const PASSWORD: &str = "lab-bus-secret";
    let mut lab = BusLab::with_password(Some(PASSWORD));
    let file = lab.mail.dir().join("bus-password");
    fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let mut flags = lab.flags(true);
    flags.extend(["--bus-password-file".into(), file.display().to_string()]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let log = lab.mail.dir().join("refused.log");

    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let mut refused = lab.lab.spawn_serve(&args, &log);
    let status = refused.wait_exit(LOG_BOUND).expect("the daemon exits");
    assert!(
        !status.success(),
        "started with a password file others may read"
    );
    let said = refused.log();
    assert!(
        said.contains("--bus-password-file: ") && said.contains("is mode 0644"),
        "{said}"
    );
    assert!(
        lab.lab.pins().is_empty(),
        "the gate changed: {:?}",
        lab.lab.pins()
    );

    let mut with_password = flags.clone();
    let url = lab
        .redis
        .url()
        .replacen("://", &format!("://:{PASSWORD}@"), 1);
    let at = with_password.iter().position(|f| f == "--bus").unwrap() + 1;
    with_password[at] = url;
    let args: Vec<&str> = with_password.iter().map(String::as_str).collect();
    let mut refused = lab.lab.spawn_serve(&args, &log);
    let status = refused.wait_exit(LOG_BOUND).expect("the daemon exits");
    assert!(
        !status.success(),
        "started with a password on its command line"
    );
    let said = refused.log();
    assert!(said.contains("--bus: redis://:***@127.0.0.1"), "{said}");
    assert!(!said.contains(PASSWORD), "the password is shown: {said}");

    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    lab.serve(&flags);
    let (answer, _) = lab.login();
    assert!(answer.starts_with("+OK"), "PASS: {answer}");
    assert_granted_for(&mut lab.engine(), lab.client_v4(), WINDOW);
    assert!(!lab.log().contains(PASSWORD), "the password is in the log");
}

/// `smtp-gate ARGS` in the server namespace (where the engine is): its
/// output.
fn gate_command(lab: &Lab, args: &[&str]) -> std::process::Output {
    testkit::gate_binary::smtp_gate_in(&lab.server_ns, args)
}

#[track_caller]
fn ok_output(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", describe(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A publisher whose wall clock is an hour ahead (attack review F7): its
/// grant's key lives the grant's lifetime in the engine, not an hour
/// more, and the expiry it writes is on the engine's clock.
#[test]
fn a_publisher_whose_clock_is_ahead_publishes_on_the_engines_clock() {
    let lab = BusLab::new();
    let url = lab.redis.url();
    let mut engine = lab.engine();
    let granted: IpAddr = "192.0.2.51".parse().unwrap();
    let elsewhere = lab.mail.dir().join("no-gate").display().to_string();
    let out = testkit::netns::netns_command(&lab.lab.server_ns, smtp_gate_bin())
        .args([
            "grant",
            "192.0.2.51",
            "--for",
            "10m",
            "--bus",
            &url,
            "--pin-dir",
            &elsewhere,
        ])
        .envs(faketime::wall_clock_off("+1h"))
        .output()
        .expect("smtp-gate grant");
    ok_output(&out, "grant with the clock an hour ahead");
    assert_granted_for(&mut engine, granted, Duration::from_secs(600));
    let entries = events_of(&mut engine, "grant", granted);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let expires: i64 = entries[0]["expires"].parse().unwrap();
    let from_now = expires - wall_ms();
    assert!(
        (600_000 - SLACK_MS..=600_000 + CLOCK_SLACK_MS).contains(&from_now),
        "the entry's expiry is {from_now} ms from now"
    );
}

/// `smtp-gate grant` and `revoke` with a bus publish: the key set (for
/// `--for`, or the gate's window) and deleted, a stream entry each; with
/// a gate pinned they write its map too, without one they say so. The
/// bus may come from serve's config file. An engine that is down fails
/// the command, saying the grant is not published.
#[test]
fn grant_and_revoke_publish() {
    let lab = BusLab::new();
    let url = lab.redis.url();
    let pin = lab.lab.pin_dir_str();
    let mut engine = lab.engine();
    let granted: IpAddr = "192.0.2.50".parse().unwrap();
    lab.lab.attach(&["--window", "10m"]);

    // A gate pinned here: its map and the bus.
    let out = gate_command(
        &lab.lab,
        &[
            "grant",
            "192.0.2.50",
            "--for",
            "1h",
            "--bus",
            &url,
            "--bus-origin",
            "ops",
            "--pin-dir",
            &pin,
        ],
    );
    let said = ok_output(&out, "grant");
    assert!(said.contains("here and on the bus"), "{said}");
    assert_granted_for(&mut engine, granted, Duration::from_secs(3600));
    assert_one_grant_entry(&mut engine, granted, "ops");
    assert!(
        lab.lab
            .list(&[])
            .iter()
            .any(|g| g["address"] == "192.0.2.50"),
        "not in the local gate"
    );
    let out = gate_command(
        &lab.lab,
        &[
            "revoke",
            "192.0.2.50",
            "--bus",
            &url,
            "--bus-origin",
            "ops",
            "--pin-dir",
            &pin,
        ],
    );
    let said = ok_output(&out, "revoke");
    assert!(said.contains("revoked 192.0.2.50 here"), "{said}");
    assert_eq!(grant_of(&mut engine, granted), None, "the key stays");
    let revokes = events_of(&mut engine, "revoke", granted);
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0]["origin"], "ops");
    assert!(
        !lab.lab
            .list(&["--all"])
            .iter()
            .any(|g| g["address"] == "192.0.2.50"),
        "still in the local gate"
    );

    // No gate pinned here, the bus from serve's config file (a host that
    // only publishes): the window is the file's.
    let config = lab.mail.dir().join("smtp-gate.toml");
    fs::write(
        &config,
        format!(
            "listen = []\ndovecot_policy_listen = \"127.0.0.1:10030\"\nwindow = \"20m\"\n\
             bus = \"{url}\"\nbus_origin = \"pop2\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    let config = config.display().to_string();
    let elsewhere = lab.mail.dir().join("no-gate").display().to_string();
    let only: IpAddr = "2001:db8::50".parse().unwrap();
    let out = gate_command(
        &lab.lab,
        &[
            "grant",
            "2001:db8::50",
            "--config",
            &config,
            "--pin-dir",
            &elsewhere,
        ],
    );
    let said = ok_output(&out, "grant --config");
    assert!(said.contains("no gate here"), "{said}");
    assert_granted_for(&mut engine, only, Duration::from_secs(1200));
    assert_one_grant_entry(&mut engine, only, "pop2");
    let out = gate_command(
        &lab.lab,
        &[
            "revoke",
            "2001:db8::50",
            "--config",
            &config,
            "--pin-dir",
            &elsewhere,
        ],
    );
    ok_output(&out, "revoke --config");
    assert_eq!(grant_of(&mut engine, only), None);
    assert_eq!(events_of(&mut engine, "revoke", only).len(), 1);
    assert!(!Path::new(&elsewhere).exists(), "a gate was made");

    // The engine down: the command fails and says so.
    drop(engine);
    let mut lab = lab;
    lab.redis.kill();
    let out = gate_command(
        &lab.lab,
        &["grant", "192.0.2.51", "--bus", &url, "--pin-dir", &pin],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "granted with the engine down: {}",
        describe(&out)
    );
    assert!(
        stderr.contains("the grant of 192.0.2.51 is NOT published on the bus"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("granted 192.0.2.51 here"), "{stdout}");
}
