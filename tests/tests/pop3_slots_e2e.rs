//! Who gets a POP3 slot, and the daemon's open files, with the real
//! `smtp-gate serve` (issue 10, defects 4 and 5): in a lab, hundreds of
//! idle connections from a few addresses must not keep a client from
//! another address out, two addresses of one IPv6 /64 share one budget,
//! and a daemon started with systemd's soft limit of 1024 open files
//! raises it; without a lab, a `max_connections` that cannot have its
//! files is refused, naming the key.
//!
//! Needs root for the labs and a built binary (`cargo build`); panics
//! otherwise (never skips). `SMTP_GATE_BIN=target/release/smtp-gate` runs
//! them against the release build; the 1,100-connection test prints how
//! long the newcomer's login took and the daemon's open files.

use std::{
    fs,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use testkit::{
    gate_binary::smtp_gate_bin,
    lab::Lab,
    mail::MailFixture,
    netns::in_netns,
    process::{describe, limit_open_files, output_within},
    serve::{ServeDaemon, ServeStart, POP3_PORT},
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// systemd's default soft RLIMIT_NOFILE for services.
const SYSTEMD_SOFT_LIMIT: u64 = 1024;

fn mail_fixture() -> MailFixture {
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{PASSWORD}"));
    mail.deliver(USER, "1700000001.M1P1.lab", b"Subject: hi\n\nHello.\n");
    mail
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The daemon in `lab` with its soft open-file limit at systemd's 1024.
fn serve(lab: &Lab, mail: &MailFixture, extra: &[&str]) -> ServeDaemon {
    let (users, root) = (path_str(&mail.users_file()), path_str(&mail.mail_root()));
    let mut args = vec![
        "--iface",
        &lab.client.server_iface,
        "--users",
        &users,
        "--mail-root",
        &root,
        "--hostname",
        "lab.test",
        "--shutdown-grace",
        "2s",
    ];
    args.extend_from_slice(extra);
    let start = ServeStart {
        soft_open_files: Some(SYSTEMD_SOFT_LIMIT),
        ..ServeStart::default()
    };
    lab.serve_with(start, &args, &mail.dir().join("serve.log"))
}

/// A connection from `source` (an address of the client namespace,
/// opened on the calling thread, which must be in it) and its greeting.
fn connect_from(source: IpAddr, server: IpAddr) -> (TcpStream, String) {
    let domain = if source.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("binding {source}: {e}"));
    socket
        .connect_timeout(
            &SocketAddr::new(server, POP3_PORT).into(),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{source} cannot connect: {e}"));
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let greeting = read_line(&mut stream);
    (stream, greeting)
}

/// One line, read an octet at a time (nothing after it is consumed);
/// panics after the stream's read timeout.
fn read_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut octet = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 512 {
        match stream.read(&mut octet) {
            Ok(0) => break,
            Ok(_) => line.push(octet[0]),
            Err(e) => panic!("reading a reply: {e} (after {:?})", line),
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Logs in from `source` (on the calling thread, in the client
/// namespace) and quits; returns the time from connecting to the `+OK`
/// of PASS. Panics unless greeted and logged in.
fn timed_login(source: IpAddr, server: IpAddr) -> Duration {
    let started = Instant::now();
    let (mut stream, greeting) = connect_from(source, server);
    assert!(greeting.starts_with("+OK"), "{source} greeted: {greeting}");
    stream
        .write_all(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .unwrap();
    let replies = [read_line(&mut stream), read_line(&mut stream)];
    let took = started.elapsed();
    assert!(
        replies[1].starts_with(&format!("+OK {USER} has")),
        "{source}'s login: {replies:?}"
    );
    stream.write_all(b"QUIT\r\n").unwrap();
    let bye = read_line(&mut stream);
    assert!(bye.starts_with("+OK"), "{source}'s QUIT: {bye}");
    took
}

/// The soft and hard "Max open files" of process `pid`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

fn open_files_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Raises this process's soft open-file limit to its hard one: the test
/// holds more than a thousand sockets.
fn raise_own_open_file_limit() {
    let limit = pop3::server::open_files::raise_soft_limit().expect("raising RLIMIT_NOFILE");
    assert!(
        limit.now >= 2 * HOSTILE as u64,
        "this test needs {} open files, the hard limit is {}",
        2 * HOSTILE,
        limit.now
    );
}

/// Hostile connections and the addresses they come from (issue 10's
/// report).
const HOSTILE: usize = 1100;
const HOSTILE_ADDRESSES: u8 = 23;

/// Issue 10, defects 4 and 5, measured: 1,100 connections that never log
/// in, from 23 addresses, against the daemon's defaults (1024 slots, 50
/// per network), started with a soft limit of 1024 open files. A client
/// from another address must still be greeted and log in, one hostile
/// connection giving up its slot; the daemon must have raised its soft
/// limit to the hard one. Against main's server (with the limit raised)
/// the newcomer got `-ERR [SYS/TEMP]`; main's daemon does not raise it.
#[test]
fn hostile_idle_connections_do_not_keep_a_newcomer_out() {
    raise_own_open_file_limit();
    let lab = Lab::new();
    let mail = mail_fixture();
    let client_ns = lab.client.client_ns.clone();
    let hostile: Vec<Ipv4Addr> = (0..HOSTILE_ADDRESSES)
        .map(|i| Ipv4Addr::new(10, 231, 1, 10 + i))
        .collect();
    let newcomer = Ipv4Addr::new(10, 231, 1, 100);
    for addr in hostile.iter().chain([&newcomer]) {
        lab.ip(
            &client_ns,
            &[
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &lab.client.client_iface,
            ],
        );
    }
    // The defaults but for the login timeout, which must not cut the
    // hostile connections while a slow machine opens them.
    let mut daemon = serve(&lab, &mail, &["--login-timeout", "10m"]);
    let pid = daemon.pid().expect("the daemon runs");
    let (soft, hard) = open_file_limits(pid);
    assert_eq!(
        soft, hard,
        "the daemon started with a soft limit of {SYSTEMD_SOFT_LIMIT} open files and did not \
         raise it to the hard limit"
    );
    assert!(
        daemon.log().contains(&format!(
            "soft limit raised from {SYSTEMD_SOFT_LIMIT} to the hard limit {hard}"
        )),
        "{}",
        daemon.log()
    );

    let server = IpAddr::from(lab.client.server_v4);
    // The same login on an idle server, for comparison.
    let idle_login_took = in_netns(&client_ns, || timed_login(newcomer.into(), server));
    let started = Instant::now();
    let held: Vec<(TcpStream, String)> = in_netns(&client_ns, || {
        (0..HOSTILE)
            .map(|i| connect_from(hostile[i % hostile.len()].into(), server))
            .collect()
    });
    let opening = started.elapsed();
    let greeted = held.iter().filter(|(_, g)| g.starts_with("+OK")).count();
    let refused = held
        .iter()
        .filter(|(_, g)| g == "-ERR [SYS/TEMP] too many connections, try again later\r\n")
        .count();
    assert_eq!(
        (greeted, refused),
        (1024, HOSTILE - 1024),
        "every slot greeted, the rest refused; other greetings: {:?}",
        held.iter()
            .map(|(_, g)| g)
            .filter(|g| !g.starts_with("+OK") && !g.starts_with("-ERR [SYS/TEMP]"))
            .collect::<Vec<_>>()
    );
    let daemon_files = open_files_of(pid);

    let login_took = in_netns(&client_ns, || timed_login(newcomer.into(), server));

    // One hostile connection, and only one, is told it made room.
    let mut waiting: Vec<TcpStream> = held
        .into_iter()
        .filter(|(_, g)| g.starts_with("+OK"))
        .map(|(stream, _)| stream)
        .collect();
    for stream in &waiting {
        stream.set_nonblocking(true).unwrap();
    }
    let mut cut = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cut.is_empty() && Instant::now() < deadline {
        waiting.retain_mut(|stream| {
            let mut buf = [0u8; 128];
            match stream.read(&mut buf) {
                Ok(n) => {
                    cut.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    false
                }
                Err(_) => true,
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cut.len(),
        1,
        "hostile connections cut for the newcomer: {cut:?}"
    );
    assert!(
        cut[0].starts_with("-ERR [SYS/TEMP] disconnected to make room"),
        "{cut:?}"
    );
    eprintln!(
        "{HOSTILE} connections from {HOSTILE_ADDRESSES} addresses opened in {opening:.2?} \
         ({greeted} greeted, {refused} refused); the daemon held {daemon_files} open files \
         (soft limit {soft}); a login from another address took {login_took:.2?} \
         ({idle_login_took:.2?} on the idle server)"
    );
    let (status, _) = daemon.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
}

/// Issue 10, defect 4: the per-address limit counted single IPv6
/// addresses, so a host with a /64 could hold any number of slots. With
/// `--max-connections-per-ip 2`, two addresses of the client's /64 take
/// its budget and a third is refused; the client's IPv4 address, another
/// network, is still greeted. Against main's daemon the third was greeted.
#[test]
fn addresses_of_one_ipv6_64_share_one_budget() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let client_ns = lab.client.client_ns.clone();
    let addresses: Vec<Ipv6Addr> = (3..=4)
        .map(|host| Ipv6Addr::new(0xfd00, 0x231, 1, 0, 0, 0, 0, host))
        .collect();
    for addr in &addresses {
        lab.ip(
            &client_ns,
            &[
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                &lab.client.client_iface,
                "nodad",
            ],
        );
    }
    let daemon = serve(&lab, &mail, &["--max-connections-per-ip", "2"]);
    let server_v6 = IpAddr::from(lab.client.server_v6);
    let server_v4 = IpAddr::from(lab.client.server_v4);
    let greetings: Vec<String> = in_netns(&client_ns, || {
        let first = connect_from(lab.client.client_v6.into(), server_v6);
        let second = connect_from(addresses[0].into(), server_v6);
        let third = connect_from(addresses[1].into(), server_v6);
        let other = connect_from(lab.client.client_v4.into(), server_v4);
        [first, second, third, other]
            .into_iter()
            .map(|(_, greeting)| greeting)
            .collect()
    });
    assert!(
        greetings[0].starts_with("+OK") && greetings[1].starts_with("+OK"),
        "{greetings:?}"
    );
    assert_eq!(
        greetings[2], "-ERR [SYS/TEMP] too many connections from your network, try again later\r\n",
        "a third address of fd00:231:1::/64"
    );
    assert!(greetings[3].starts_with("+OK"), "{greetings:?}");
    drop(daemon);
}

/// Issue 10, defect 5: the daemon must raise its soft open-file limit,
/// and refuse a `max_connections` whose sessions cannot have their files
/// even then, naming the key. With a hard limit of 4096: 400 connections
/// need 3328 files, which fit once the soft limit of 1024 is raised (the
/// daemon then goes on, to the users file that is not there); 1024 need
/// 8320 and are refused. Against main's daemon both went on.
#[test]
fn max_connections_must_fit_in_the_open_file_limit() {
    let mail_root = tempfile_dir();
    let run = |max_connections: &str| {
        let mut command = std::process::Command::new(smtp_gate_bin());
        command.args([
            "serve",
            "--iface",
            "lo",
            "--users",
            "/nonexistent/smtp-gate-users",
            "--mail-root",
            &path_str(&mail_root.0),
            "--max-connections",
            max_connections,
        ]);
        limit_open_files(&mut command, SYSTEMD_SOFT_LIMIT, Some(4096));
        let out = output_within(&mut command, Duration::from_secs(30)).expect("smtp-gate serve");
        assert!(!out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let fits = run("400");
    assert!(
        !fits.contains("max_connections") && fits.contains("smtp-gate-users"),
        "400 connections fit in 4096 open files: {fits}"
    );
    let refused = run("1024");
    assert!(
        refused.contains("`max_connections`: 1024 connections need up to 8320 open files")
            && refused.contains("RLIMIT_NOFILE allows 4096"),
        "{refused}"
    );
}

/// A scratch directory, removed on drop.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("smtp-gate-slots-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    ScratchDir(dir)
}
