//! End to end with the POP3 service: the real `smtp-gate serve` daemon in
//! the server namespace of a lab, real POP3 clients (Python's poplib, curl)
//! in the client namespace, and the gate in front of the lab's SMTP
//! listener. A successful login must open port 25 for the client's address
//! before the `+OK` reaches it; nothing else may.
//!
//! Needs root, a built binary (`cargo build`), python3 and curl; panics
//! otherwise (never skips). Each test builds its own lab.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testkit::{
    denial::Judge,
    gate_binary::smtp_gate_bin,
    lab::{Lab, LabOptions, Link},
    mail::MailFixture,
    netns::in_netns,
    pop3_client::{pop3_client, pop3_client_at, require_pop3_clients},
    process::output_within,
    proxy::{proxy_v2_header, ProxyV2},
    serve::{ServeDaemon, ServeStart, Unprivileged, POP3_PORT},
    smtp::{assert_connected, ConnectResult, Syns, BANNER, PASS_TIMEOUT, SMTP_PORT},
};

/// The window of the daemons here: long enough that no test but the one
/// that waits for the expiry ever sees a grant expire, however slow the
/// machine (that one sets [`SHORT_WINDOW`]).
const WINDOW: &str = "10m";
const SHORT_WINDOW: Duration = Duration::from_secs(3);
/// `--shutdown-grace` of the daemons here: how long a session stays after
/// SIGTERM.
const GRACE: Duration = Duration::from_secs(2);
/// How long a daemon may take to exit after its grace period: only a hang
/// takes longer.
const EXIT_BOUND: Duration = Duration::from_secs(30);
const LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(200);
/// How long a client waits for the server to release a maildrop or a
/// connection slot, or to close its listener: only a hang takes longer.
const RETRY_BOUND: f64 = 30.0;
/// The `timeout` of an `smtp` step that the gate should deny (one SYN,
/// judged by the counters) and of one it should let through.
const SMTP_DENY_TIMEOUT: f64 = 0.5;
const SMTP_PASS_TIMEOUT: f64 = 10.0;

const ALICE: &str = "alice";
const ALICE_SECRET: &str = "wonderland";
const BOB: &str = "bob";
const BOB_PASSWORD: &str = "builder";
/// `openssl passwd -6 -salt smtpgate0lab1 builder`
const BOB_HASH: &str = "$6$smtpgate0lab1$FsSm4oLGuTwkq.yIzOR2sX6mYGk6r77BwQTscWCvlC0cOmwvqhvXoiQbE78ag6vDca.e56Nl9DJrvpMDEZjbR0";

/// Alice's messages, in delivery order: (Maildir name, stored content).
/// The second has lines that need dot-stuffing (one is a lone dot); the
/// third is stored with CRLF already; the others with LF.
const ALICE_MAIL: [(&str, &str); 3] = [
    (
        "1700000001.M1P1.lab",
        "From: carol@example.org\nTo: alice@lab.test\nSubject: First message\n\nHello Alice.\n",
    ),
    (
        "1700000002.M2P1.lab",
        "From: dave@example.org\nSubject: Dots\n\n.a line starting with a dot\n..two dots\n.\nend\n",
    ),
    (
        "1700000003.M3P1.lab",
        "From: erin@example.org\r\nSubject: Third\r\n\r\nStored with CRLF.\r\n",
    ),
];
const BOB_MAIL: (&str, &str) = (
    "1700000004.M4P1.lab",
    "From: carol@example.org\nSubject: For Bob\n\nHi.\n",
);

/// A lab with the daemon serving alice and bob. Fields drop in order: the
/// daemon (SIGTERM) before the mail and the lab.
struct Pop3Lab {
    daemon: ServeDaemon,
    mail: MailFixture,
    lab: Lab,
}

fn mail_fixture() -> MailFixture {
    let mut mail = MailFixture::new();
    mail.add_user(ALICE, &format!("{{PLAIN}}{ALICE_SECRET}"));
    mail.add_user(BOB, &format!("{{SHA512-CRYPT}}{BOB_HASH}"));
    for (name, content) in ALICE_MAIL {
        mail.deliver(ALICE, name, content.as_bytes());
    }
    mail.deliver(BOB, BOB_MAIL.0, BOB_MAIL.1.as_bytes());
    mail
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The usual flags: every server-side setting the tests rely on.
fn serve_flags(lab: &Lab, mail: &MailFixture, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--iface",
        &lab.client.server_iface,
        "--listen",
        "[::]:110",
        "--users",
        &path_str(&mail.users_file()),
        "--mail-root",
        &path_str(&mail.mail_root()),
        "--hostname",
        "lab.test",
        "--login-failure-delay",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    for (flag, default) in [("--window", WINDOW), ("--shutdown-grace", "2s")] {
        if !extra.contains(&flag) {
            args.extend([flag.to_string(), default.to_string()]);
        }
    }
    args
}

impl Pop3Lab {
    fn new() -> Self {
        Self::with(LabOptions::default(), |_| Vec::new())
    }

    /// A lab as `options` say; `prepare` runs on it (e.g. an attach) and
    /// returns more flags for the daemon, which starts with the usual ones
    /// and those.
    fn with(options: LabOptions, prepare: impl FnOnce(&Lab) -> Vec<String>) -> Self {
        require_pop3_clients();
        let lab = Lab::with_options(options);
        let mail = mail_fixture();
        let extra = prepare(&lab);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let args = serve_flags(&lab, &mail, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = lab.serve(&args, &mail.dir().join("serve.log"));
        Self { daemon, mail, lab }
    }

    /// Like [`Pop3Lab::new`] with more flags for the daemon.
    fn with_flags(flags: &[&str]) -> Self {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        Self::with(LabOptions::default(), |_| flags)
    }

    fn client(&self) -> &Link {
        &self.lab.client
    }

    fn pop_v4(&self, steps: Value) -> Vec<Value> {
        pop3_client(
            &self.client().client_ns,
            self.client().server_v4.into(),
            steps,
        )
    }

    /// [`pop_judged`] over IPv4.
    fn pop_v4_judged(&self, steps: Value) -> Vec<Value> {
        pop_judged(
            &self.lab,
            self.client(),
            self.client().server_v4.into(),
            steps,
        )
    }

    /// SIGTERM; the daemon must exit 0 (within its grace period and any
    /// time a machine that is not hung takes to exit).
    fn stop(&mut self) -> Duration {
        let (status, took) = self.daemon.terminate(GRACE + EXIT_BOUND);
        match status {
            Some(s) if s.success() => took,
            Some(s) => panic!(
                "smtp-gate serve exited with {s} after SIGTERM; log:\n{}",
                self.daemon.log()
            ),
            None => panic!(
                "smtp-gate serve did not exit within {took:?} of SIGTERM (grace {GRACE:?}); log:\n{}",
                self.daemon.log()
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Assertions on client results
// ---------------------------------------------------------------------------

/// The result of step `i`, which must be the operation `op` and not an
/// error reply.
#[track_caller]
fn ok_step<'a>(results: &'a [Value], i: usize, op: &str) -> &'a Value {
    let step = &results[i];
    assert_eq!(step["op"], op, "step {i} is not {op}: {results:#?}");
    assert!(
        step.get("error").is_none() && step.get("oserror").is_none(),
        "step {i} ({op}) failed: {step}\nall steps: {results:#?}"
    );
    step
}

/// True if step `i` found its connection closed by the server.
fn closed_by_server(results: &[Value], i: usize) -> bool {
    results[i].get("oserror").is_some() || results[i]["error"] == "-ERR EOF"
}

/// The error reply of step `i`, which must have failed.
#[track_caller]
fn err_step(results: &[Value], i: usize, op: &str) -> String {
    let step = &results[i];
    assert_eq!(step["op"], op, "step {i} is not {op}: {results:#?}");
    step["error"]
        .as_str()
        .unwrap_or_else(|| panic!("step {i} ({op}) should have failed: {results:#?}"))
        .to_string()
}

#[track_caller]
fn assert_smtp_connected(results: &[Value], i: usize, what: &str) {
    let step = ok_step(results, i, "smtp");
    assert_eq!(
        step["smtp"], "connected",
        "{what}: the client's connect to port 25 should have succeeded: {step}"
    );
    assert_eq!(step["banner"], BANNER, "{what}: {step}");
}

/// Only with [`pop_judged`], which checks that the gate counted the SYNs
/// of such a step as dropped.
#[track_caller]
fn assert_smtp_denied(results: &[Value], i: usize, what: &str) {
    let step = ok_step(results, i, "smtp");
    assert_eq!(
        step["smtp"], "timeout",
        "{what}: the gate should have dropped the SYN (connect timed out): {step}"
    );
}

/// The SYNs an `smtp` step sent, as the client counted them.
fn syns_of(step: &Value) -> Syns {
    let count = |i: usize| {
        step["syns"][i]
            .as_u64()
            .unwrap_or_else(|| panic!("an smtp step without its SYN count: {step}"))
    };
    Syns::between(count(0), count(1))
}

/// Runs the poplib client from `link` against `host` with `steps`, and
/// judges its `smtp` steps by the gate's counters and the lab's listener:
/// every SYN of the steps that connected was let through (none dropped
/// first: a grant was there at once), every SYN of the steps that timed
/// out was dropped, and the listener accepted just the connected ones.
/// So a step that timed out is a denial, not a slow machine.
#[track_caller]
fn pop_judged(lab: &Lab, link: &Link, host: IpAddr, steps: Value) -> Vec<Value> {
    pop_judged_at(lab, link, host, POP3_PORT, steps)
}

/// [`pop_judged`] with POP3 on `port`.
#[track_caller]
fn pop_judged_at(lab: &Lab, link: &Link, host: IpAddr, port: u16, steps: Value) -> Vec<Value> {
    let judge = Judge::by_cli(lab);
    let before = judge.counters();
    let accepted_before = lab.accepted();
    let results = pop3_client_at(&link.client_ns, host, port, steps);
    let (mut passed, mut dropped, mut connected) = (Syns::exactly(0), Syns::exactly(0), 0);
    for step in results.iter().filter(|s| s["op"] == "smtp") {
        match step["smtp"].as_str() {
            Some("connected") => {
                passed = passed.plus(&syns_of(step));
                connected += 1;
            }
            Some("timeout") => dropped = dropped.plus(&syns_of(step)),
            _ => panic!("an smtp step neither connected nor timed out: {step}"),
        }
    }
    let moved = judge.moved_since(&before, passed.at_least() + dropped.at_least());
    assert!(
        passed.admits(moved.passed()),
        "the steps that connected sent {passed}, the gate let {} through ({moved}): \
         {results:#?}",
        moved.passed()
    );
    assert!(
        dropped.admits(moved.of("denied_drop")) && moved.denied() == moved.of("denied_drop"),
        "the steps that timed out sent {dropped}, the gate counted {moved}: {results:#?}"
    );
    assert_eq!(
        lab.accepted() - accepted_before,
        connected,
        "connections the listener accepted: {results:#?}"
    );
    results
}

/// Grants as `smtp-gate list --json` shows them: (address, expired).
fn grants(lab: &Lab, all: bool) -> Vec<(String, bool)> {
    let extra: &[&str] = if all { &["--all"] } else { &[] };
    lab.list(extra)
        .iter()
        .map(|g| {
            (
                g["address"].as_str().unwrap_or_default().to_string(),
                g["expired"].as_bool().unwrap_or(true),
            )
        })
        .collect()
}

/// The message as a POP3 server must send it: every line ending in CRLF.
fn wire(content: &str) -> String {
    let mut out = String::new();
    for line in content.split_inclusive('\n') {
        out.push_str(
            line.strip_suffix('\n')
                .unwrap_or(line)
                .trim_end_matches('\r'),
        );
        out.push_str("\r\n");
    }
    out
}

/// The RETR reply body on the wire: CRLF lines, dot-stuffed, then ".".
fn stuffed(content: &str) -> String {
    let mut out = String::new();
    for line in wire(content).split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out.push_str(".\r\n");
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The core promise: denied before, let in the moment login returns (same
/// process, no sleep), listed, and denied again once the window is over.
#[test]
fn login_opens_smtp_at_once_until_the_window_ends() {
    let mut fx = Pop3Lab::with_flags(&["--window", "3s"]);
    let client = fx.client().clone();
    let granted = IpAddr::from(client.client_v4);
    fx.lab.assert_dropped(
        &client,
        client.server_v4,
        SMTP_PORT,
        "before any POP3 login",
    );
    assert!(grants(&fx.lab, true).is_empty(), "a grant before any login");

    // The connect right after the login must get through on its first SYN
    // (judged by the gate's counters). Only if the grant had already
    // expired by then, on a machine that slow, is the login tried again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let r = fx.pop_v4_judged(json!([
            {"op": "connect"},
            {"op": "login", "user": ALICE, "password": ALICE_SECRET},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "stat"},
            {"op": "quit"},
        ]));
        if r[2]["smtp"] == "connected" {
            break r;
        }
        let age = fx.lab.grant_age(granted);
        assert!(
            age.is_some_and(|g| !g.is_fresh()) && Instant::now() < deadline,
            "right after poplib's login returned, the gate dropped the connect, and the \
             login's grant had not expired (it is {age:?}; None: there is none): {r:#?}"
        );
    };
    let welcome = ok_step(&r, 0, "connect")["welcome"]
        .as_str()
        .unwrap_or_default();
    assert!(
        welcome.starts_with("+OK") && welcome.contains("@lab.test>"),
        "greeting without the APOP timestamp for --hostname lab.test: {welcome}"
    );
    let reply = ok_step(&r, 1, "login")["reply"]
        .as_str()
        .unwrap_or_default();
    assert!(reply.starts_with("+OK"), "login: {reply}");
    assert_smtp_connected(&r, 2, "right after poplib's login returned");
    assert_eq!(ok_step(&r, 3, "stat")["count"], 3, "{r:#?}");

    let listed: Vec<String> = grants(&fx.lab, true).into_iter().map(|g| g.0).collect();
    assert_eq!(
        listed,
        vec![client.client_v4.to_string()],
        "smtp-gate list --json after the IPv4 login (a dual-stack listener must \
         grant the IPv4 address, not ::ffff:...)"
    );
    assert!(fx.lab.stat("granted") >= 1, "stats: {}", fx.lab.stats());

    fx.lab.assert_grant_expires(
        &client,
        client.server_v4,
        SMTP_PORT,
        granted,
        SHORT_WINDOW,
        "the login's grant",
    );
    assert!(
        grants(&fx.lab, false).is_empty(),
        "list still shows a fresh grant after the window"
    );
    fx.stop();
}

/// APOP and USER/PASS over IPv6: the IPv6 address is granted, and only it.
#[test]
fn ipv6_login_grants_the_ipv6_address() {
    let mut fx = Pop3Lab::new();
    let client = fx.client().clone();
    let r = pop_judged(
        &fx.lab,
        &client,
        client.server_v6.into(),
        json!([
            {"op": "smtp", "timeout": SMTP_DENY_TIMEOUT},
            {"op": "connect"},
            {"op": "apop", "user": ALICE, "secret": ALICE_SECRET},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "quit"},
        ]),
    );
    assert_smtp_denied(&r, 0, "IPv6, before the login");
    ok_step(&r, 2, "apop");
    assert_smtp_connected(&r, 3, "IPv6, right after the APOP login over IPv6");
    assert_eq!(
        grants(&fx.lab, false),
        vec![(client.client_v6.to_string(), false)],
        "list --json after the IPv6 login"
    );
    fx.lab.assert_dropped(
        &client,
        client.server_v4,
        SMTP_PORT,
        "IPv4 of the same host: the IPv6 login must not open it",
    );
    fx.stop();
}

/// An exempt network passes without any login; the gate is on its veth too
/// (attached before the daemon, which adopts the client's veth and sets the
/// exempt set from --exempt).
#[test]
fn exempt_network_always_passes() {
    let options = LabOptions {
        exempt_client: true,
        ..LabOptions::default()
    };
    let mut fx = Pop3Lab::with(options, |lab| {
        lab.attach(&[]);
        let exempt = lab.exempt();
        ["--exempt", &exempt.net_v4, "--exempt", &exempt.net_v6]
            .map(String::from)
            .to_vec()
    });
    let exempt = fx.lab.exempt().clone();
    let syns = exempt
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("exempt client, IPv4")
        .plus(
            &exempt
                .attempt_v6(SMTP_PORT, PASS_TIMEOUT)
                .expect_connected("exempt client, IPv6"),
        );
    let client = fx.client().clone();
    fx.lab.assert_dropped(
        &client,
        client.server_v4,
        SMTP_PORT,
        "the other client, not exempt, no login",
    );
    let stats = fx.lab.stats();
    assert!(
        syns.admits(stats["exempt"].as_u64().unwrap_or(0)),
        "{syns} sent by the exempt client: {stats}"
    );
    assert!(
        grants(&fx.lab, true).is_empty(),
        "exempt passes made grants"
    );
    fx.stop();
}

/// A wrong password or digest: `-ERR [AUTH]` after the failure delay and no
/// grant; bob's SHA512-CRYPT password then works.
#[test]
fn wrong_password_is_refused_and_grants_nothing() {
    let mut fx = Pop3Lab::new();
    let r = fx.pop_v4_judged(json!([
        {"op": "connect"},
        {"op": "login", "user": BOB, "password": "bulldozer"},
        {"op": "smtp", "timeout": SMTP_DENY_TIMEOUT},
        {"op": "apop", "user": ALICE, "secret": "looking-glass"},
        {"op": "login", "user": "mallory", "password": "x"},
        {"op": "noop"},
        {"op": "cut"},
    ]));
    for (i, op) in [(1, "login"), (3, "apop"), (4, "login")] {
        let error = err_step(&r, i, op);
        assert!(
            error.starts_with("-ERR [AUTH]"),
            "step {i} ({op}): expected -ERR [AUTH], got: {error}"
        );
        let elapsed = r[i]["elapsed"].as_f64().unwrap_or_default();
        assert!(
            elapsed >= LOGIN_FAILURE_DELAY.as_secs_f64() * 0.9,
            "step {i} ({op}) failed after {elapsed} s, before the failure delay"
        );
    }
    assert_smtp_denied(&r, 2, "after a wrong password");
    assert!(
        closed_by_server(&r, 5),
        "the connection is still open after 3 failed logins: {}",
        r[5]
    );
    assert!(
        grants(&fx.lab, true).is_empty(),
        "a failed login made a grant"
    );
    assert_eq!(fx.lab.stat("granted"), 0, "stats: {}", fx.lab.stats());

    let r = fx.pop_v4_judged(json!([
        {"op": "connect"},
        {"op": "login", "user": BOB, "password": BOB_PASSWORD},
        {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
        {"op": "stat"},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");
    assert_smtp_connected(&r, 2, "after bob's SHA512-CRYPT login");
    assert_eq!(ok_step(&r, 3, "stat")["count"], 1, "{r:#?}");
    fx.stop();
}

/// STAT, LIST, UIDL and RETR against the files: CRLF on the wire, sizes
/// in wire octets, dot-stuffing that poplib undoes; new/ moved to cur/.
#[test]
fn retr_matches_the_files_and_dot_stuffing_round_trips() {
    let mut fx = Pop3Lab::new();
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "apop", "user": ALICE, "secret": ALICE_SECRET},
        {"op": "stat"},
        {"op": "list"},
        {"op": "uidl"},
        {"op": "retr", "n": 1},
        {"op": "retr", "n": 2},
        {"op": "retr", "n": 3},
        {"op": "raw_retr", "n": 2},
        {"op": "raw_retr", "n": 3},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "apop");
    let sizes: Vec<usize> = ALICE_MAIL.iter().map(|(_, c)| wire(c).len()).collect();
    let stat = ok_step(&r, 2, "stat");
    assert_eq!(stat["count"], 3);
    assert_eq!(stat["size"], sizes.iter().sum::<usize>(), "STAT size");
    let list = ok_step(&r, 3, "list")["lines"].clone();
    let expected: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{} {s}", i + 1))
        .collect();
    assert_eq!(list, json!(expected), "LIST (sizes in CRLF octets)");
    let uidl = ok_step(&r, 4, "uidl")["lines"].clone();
    let expected: Vec<String> = ALICE_MAIL
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{} {name}", i + 1))
        .collect();
    assert_eq!(uidl, json!(expected), "UIDL (the Maildir base names)");

    for (k, (name, content)) in ALICE_MAIL.iter().enumerate() {
        let step = ok_step(&r, 5 + k, "retr");
        let lines: Vec<String> = wire(content)
            .split_terminator("\r\n")
            .map(str::to_string)
            .collect();
        assert_eq!(
            step["lines"],
            json!(lines),
            "poplib's RETR {} of {name} (dot-stuffing undone)",
            k + 1
        );
    }
    for (i, k) in [(8, 1), (9, 2)] {
        let raw = ok_step(&r, i, "raw_retr")["raw"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (status, body) = raw
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("RETR {}: no status line: {raw:?}", k + 1));
        assert!(status.starts_with("+OK"), "RETR {}: {status}", k + 1);
        assert_eq!(
            body,
            stuffed(ALICE_MAIL[k].1),
            "RETR {} on the wire (CRLF, dot-stuffed, terminated)",
            k + 1
        );
    }
    let reply = ok_step(&r, 10, "quit")["reply"]
        .as_str()
        .unwrap_or_default();
    assert!(reply.starts_with("+OK"), "QUIT: {reply}");

    assert!(
        fx.mail.files(ALICE, "new").is_empty(),
        "new/ still has {:?} after a login",
        fx.mail.files(ALICE, "new")
    );
    let cur = fx.mail.files(ALICE, "cur");
    assert_eq!(cur.len(), 3, "cur/: {cur:?}");
    for (name, _) in ALICE_MAIL {
        assert!(
            cur.iter().any(|f| f.split(':').next() == Some(name)),
            "{name} not in cur/: {cur:?}"
        );
    }
    fx.stop();
}

/// curl's POP3 client: the listing and a message (curl chooses APOP, since
/// the greeting has a timestamp).
#[test]
fn curl_lists_and_retrieves() {
    let mut fx = Pop3Lab::new();
    let client = fx.client().clone();
    let curl = |url: &str| -> String {
        let out = output_within(
            testkit::netns::netns_command(&client.client_ns, "curl")
                .args(["-sS", "--max-time", "60", "-u"])
                .arg(format!("{ALICE}:{ALICE_SECRET}"))
                .arg(url),
            Duration::from_secs(90),
        )
        .unwrap_or_else(|e| panic!("curl {url}: {e}"));
        assert!(
            out.status.success(),
            "curl {url} failed: {}",
            testkit::process::describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("pop3://{}", client.server_v4);
    let listing = curl(&format!("{base}/"));
    let expected: String = ALICE_MAIL
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("{} {}\r\n", i + 1, wire(c).len()))
        .collect();
    assert_eq!(listing, expected, "curl's listing");
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "after curl's login",
    );
    let message = curl(&format!("{base}/2"));
    assert_eq!(message, wire(ALICE_MAIL[1].1), "curl's RETR 2");
    let message = curl(&format!("pop3://[{}]/1", client.server_v6));
    assert_eq!(message, wire(ALICE_MAIL[0].1), "curl's RETR 1 over IPv6");
    fx.stop();
}

/// RFC 1939: a session that ends without QUIT deletes nothing; DELE and
/// QUIT remove the file from cur/.
#[test]
fn deletions_apply_only_on_quit() {
    let mut fx = Pop3Lab::new();
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
        {"op": "dele", "n": 1},
        {"op": "dele", "n": 2},
        {"op": "stat"},
        {"op": "cut"},
        // The server notices the cut connection a moment later, and
        // releases the maildrop (not only at the idle timeout, 10 min).
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET, "retry_in_use": RETRY_BOUND},
        {"op": "stat"},
        {"op": "uidl"},
        {"op": "dele", "n": 1},
        {"op": "quit"},
    ]));
    ok_step(&r, 2, "dele");
    ok_step(&r, 3, "dele");
    assert_eq!(ok_step(&r, 4, "stat")["count"], 1, "STAT after two DELEs");
    ok_step(&r, 7, "login");
    assert_eq!(
        ok_step(&r, 8, "stat")["count"],
        3,
        "messages deleted in a session cut without QUIT are gone"
    );
    assert_eq!(
        ok_step(&r, 9, "uidl")["lines"].as_array().map(Vec::len),
        Some(3)
    );
    ok_step(&r, 10, "dele");
    let reply = ok_step(&r, 11, "quit")["reply"]
        .as_str()
        .unwrap_or_default();
    assert!(reply.starts_with("+OK"), "QUIT: {reply}");

    let cur = fx.mail.files(ALICE, "cur");
    let first = ALICE_MAIL[0].0;
    assert!(
        !cur.iter().any(|f| f.starts_with(first)),
        "{first} is still in cur/ after DELE + QUIT: {cur:?}"
    );
    assert_eq!(cur.len(), 2, "cur/ after DELE 1 + QUIT: {cur:?}");
    assert!(fx.mail.files(ALICE, "new").is_empty());

    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET, "retry_in_use": RETRY_BOUND},
        {"op": "uidl"},
        {"op": "quit"},
    ]));
    let expected: Vec<String> = ALICE_MAIL[1..]
        .iter()
        .enumerate()
        .map(|(i, (name, _))| format!("{} {name}", i + 1))
        .collect();
    assert_eq!(
        ok_step(&r, 2, "uidl")["lines"],
        json!(expected),
        "UIDL after the QUIT"
    );
    fx.stop();
}

/// One session per maildrop: a second login of the same user gets
/// `-ERR [IN-USE]` until the first one quits.
#[test]
fn second_session_of_a_user_is_in_use() {
    let mut fx = Pop3Lab::new();
    let r = fx.pop_v4(json!([
        {"op": "connect", "conn": "a"},
        {"op": "login", "conn": "a", "user": ALICE, "password": ALICE_SECRET},
        {"op": "connect", "conn": "b"},
        {"op": "login", "conn": "b", "user": ALICE, "password": ALICE_SECRET},
        {"op": "stat", "conn": "a"},
        {"op": "quit", "conn": "a"},
        {"op": "login", "conn": "b", "user": ALICE, "password": ALICE_SECRET, "retry_in_use": RETRY_BOUND},
        {"op": "stat", "conn": "b"},
        {"op": "quit", "conn": "b"},
    ]));
    ok_step(&r, 1, "login");
    let error = err_step(&r, 3, "login");
    assert!(
        error.starts_with("-ERR [IN-USE]"),
        "second concurrent session: expected -ERR [IN-USE], got: {error}"
    );
    assert_eq!(
        ok_step(&r, 4, "stat")["count"],
        3,
        "the first session goes on"
    );
    ok_step(&r, 5, "quit");
    ok_step(&r, 6, "login");
    assert_eq!(ok_step(&r, 7, "stat")["count"], 3);
    ok_step(&r, 8, "quit");
    fx.stop();
}

/// SIGTERM: the daemon exits 0 within its grace period although a session
/// is open, and the gate stays with its grants: the granted address still
/// gets in, an ungranted one still does not.
#[test]
fn sigterm_exits_cleanly_and_the_gate_stays() {
    let mut fx = Pop3Lab::new();
    let client = fx.client().clone();
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": BOB, "password": BOB_PASSWORD},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");
    let mut idle = client
        .session_v4(POP3_PORT, PASS_TIMEOUT)
        .unwrap_or_else(|e| panic!("an idle POP3 connection: {e}"));
    assert!(idle.banner.starts_with("+OK"), "greeting: {}", idle.banner);
    let reply = idle
        .exchange("CAPA")
        .unwrap_or_else(|e| panic!("CAPA: {e}"));
    assert!(reply.starts_with("+OK"), "CAPA: {reply}");
    while idle.read_line().map(|l| l != ".").unwrap_or(false) {}

    // Within its grace period (and the time to exit): not held up until
    // the idle session's timeout (10 min). The idle session had the whole
    // grace period.
    let took = fx.stop();
    assert!(
        took >= GRACE,
        "SIGTERM took {took:?}, less than the grace of {GRACE:?}"
    );
    // The session still open when the grace ran out was told why it ends.
    match idle.read_line() {
        Ok(line) => assert!(
            line.starts_with("-ERR"),
            "the open session got {line:?} at shutdown"
        ),
        Err(e) => eprintln!("the open session was closed without a reply at shutdown: {e}"),
    }
    let log = fx.daemon.log();
    assert!(
        log.contains("SIGTERM"),
        "the log does not mention SIGTERM:\n{log}"
    );

    assert_eq!(
        fx.lab.attached_ifaces(),
        vec![client.server_iface.clone()],
        "the gate is gone with the daemon; pins: {:?}",
        fx.lab.pins()
    );
    let pop3 = client.connect_v4(POP3_PORT, PASS_TIMEOUT);
    assert_eq!(
        pop3,
        ConnectResult::Refused,
        "port 110 still answers after the daemon exited"
    );
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the granted IPv4 address, after the daemon exited",
    );
    fx.lab.assert_dropped(
        &client,
        client.server_v6,
        SMTP_PORT,
        "the ungranted IPv6 address, after the daemon exited",
    );
    assert_eq!(
        grants(&fx.lab, false),
        vec![(client.client_v4.to_string(), false)],
        "the grant outlives the daemon"
    );

    // A new daemon adopts the gate and its grants, and grants again.
    let args = serve_flags(&fx.lab, &fx.mail, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fx.daemon = fx.lab.serve(&args, &fx.mail.dir().join("serve2.log"));
    assert!(
        fx.daemon.log().contains("adopted"),
        "the restarted daemon did not adopt the gate:\n{}",
        fx.daemon.log()
    );
    let r = pop_judged(
        &fx.lab,
        &client,
        client.server_v6.into(),
        json!([
            {"op": "connect"},
            {"op": "login", "user": BOB, "password": BOB_PASSWORD},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "quit"},
        ]),
    );
    assert_smtp_connected(&r, 2, "IPv6, after a login to the restarted daemon");
    let mut listed = grants(&fx.lab, false);
    listed.sort();
    assert_eq!(
        listed,
        vec![
            (client.client_v4.to_string(), false),
            (client.client_v6.to_string(), false)
        ],
        "the old grant and the new one"
    );
    fx.stop();
}

/// `login_failure_delay` of the configuration files: longer than the
/// default (2 s), so that a failed login taking at least this long shows
/// that the file's value applies, with no upper bound on the time.
const CONFIG_LOGIN_FAILURE_DELAY: Duration = Duration::from_millis(2500);

fn write_config(mail: &MailFixture, lab: &Lab, extra: &str) -> PathBuf {
    let path = mail.dir().join("smtp-gate.toml");
    let text = format!(
        "# written by pop3_e2e\n\
         listen = [\"[::]:110\"]\n\
         users = \"{}\"\n\
         mail_root = \"{}\"\n\
         hostname = \"lab.test\"\n\
         iface = \"{}\"\n\
         pin_dir = \"{}\"\n\
         deny = \"drop\"\n\
         login_failure_delay = \"{}ms\"\n\
         shutdown_grace = \"2s\"\n\
         {extra}",
        mail.users_file().display(),
        mail.mail_root().display(),
        lab.client.server_iface,
        lab.pin_dir().display(),
        CONFIG_LOGIN_FAILURE_DELAY.as_millis(),
    );
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    // The daemon refuses a config file that others may write: whatever
    // the umask of the test run, this one is the owner's.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    path
}

/// Everything from a TOML file, no flags: the settings reach the gate and
/// the POP3 service.
#[test]
fn config_file_instead_of_flags() {
    require_pop3_clients();
    let lab = Lab::new();
    let mail = mail_fixture();
    let config = write_config(&mail, &lab, "window = \"45s\"\nports = [25]\n");
    let mut daemon = lab.spawn_serve(
        &["--config", &path_str(&config)],
        &mail.dir().join("serve.log"),
    );
    lab.wait_pop3(&mut daemon);

    let settings: Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings --json");
    assert_eq!(settings["window_secs"], 45.0, "settings: {settings}");
    assert_eq!(settings["deny"], "drop", "settings: {settings}");
    assert_eq!(
        settings["attached"][0]["iface"], lab.client.server_iface,
        "settings: {settings}"
    );

    let client = &lab.client;
    let r = pop_judged(
        &lab,
        client,
        client.server_v4.into(),
        json!([
            {"op": "connect"},
            {"op": "login", "user": ALICE, "password": "wrong"},
            {"op": "smtp", "timeout": SMTP_DENY_TIMEOUT},
            {"op": "login", "user": ALICE, "password": ALICE_SECRET},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "quit"},
        ]),
    );
    let welcome = ok_step(&r, 0, "connect")["welcome"]
        .as_str()
        .unwrap_or_default();
    assert!(
        welcome.contains("@lab.test>"),
        "hostname from the file: {welcome}"
    );
    assert!(err_step(&r, 1, "login").starts_with("-ERR [AUTH]"));
    let elapsed = r[1]["elapsed"].as_f64().unwrap_or_default();
    let delay = CONFIG_LOGIN_FAILURE_DELAY.as_secs_f64();
    assert!(
        elapsed >= delay * 0.9,
        "the failed login took {elapsed} s: login_failure_delay = {delay} s not applied"
    );
    assert_smtp_denied(&r, 2, "after a failed login");
    ok_step(&r, 3, "login");
    assert_smtp_connected(&r, 4, "after the login");

    let (status, took) = daemon.terminate(GRACE + EXIT_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "serve --config: SIGTERM gave {status:?} after {took:?}; log:\n{}",
        daemon.log()
    );
}

/// Starts a daemon that must refuse to start; returns its output.
fn refused_start(lab: &Lab, args: &[&str], log: &Path) -> String {
    let mut daemon = lab.spawn_serve(args, log);
    let status = daemon.wait_exit(EXIT_BOUND);
    let output = daemon.log();
    match status {
        Some(s) if !s.success() => {}
        Some(s) => panic!("serve {args:?} exited with {s} instead of refusing: {output}"),
        None => panic!("serve {args:?} is running although it should have refused: {output}"),
    }
    assert!(
        lab.pins().is_empty(),
        "serve {args:?} refused to start but left pins: {:?}",
        lab.pins()
    );
    output
}

/// A bad value or an unknown key stops the daemon before anything starts,
/// with a message naming the key.
#[test]
fn bad_config_is_refused_naming_the_key() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let log = mail.dir().join("serve.log");
    for (extra, key) in [
        ("window = \"5x\"\n", "window"),
        ("liste = [\"[::]:110\"]\n", "liste"),
        ("ports = [25, 70000]\n", "ports"),
    ] {
        let config = write_config(&mail, &lab, extra);
        let output = refused_start(&lab, &["--config", &path_str(&config)], &log);
        assert!(
            output.contains(&format!("`{key}`")),
            "config with {extra:?}: the message does not name `{key}`: {output}"
        );
        assert!(
            output.contains(&path_str(&config)),
            "config with {extra:?}: the message does not name the file: {output}"
        );
    }
}

/// The gate finds a capacity that its pinned maps do not have only when it
/// looks at them, after the config is read; the error still names the key
/// and the file it came from, not a flag that was never given.
#[test]
fn capacity_the_pinned_maps_do_not_have_is_refused_naming_the_key() {
    let lab = Lab::new();
    let mail = mail_fixture();
    lab.attach(&["--capacity", "1009"]);
    let config = write_config(&mail, &lab, "capacity = 2000\n");
    let mut daemon = lab.spawn_serve(
        &["--config", &path_str(&config)],
        &mail.dir().join("serve.log"),
    );
    let status = daemon.wait_exit(EXIT_BOUND);
    let output = daemon.log();
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve with capacity = 2000 over maps of 1009: {status:?}\n{output}"
    );
    let named = format!("config file {}: key `capacity`: 2000", path_str(&config));
    assert!(output.contains(&named), "expected {named:?} in:\n{output}");
}

/// A users file that others may read is refused, naming file and mode.
#[test]
fn users_file_readable_by_others_is_refused() {
    let lab = Lab::new();
    let mail = mail_fixture();
    mail.chmod_users(0o644);
    let args = serve_flags(&lab, &mail, &["--pin-dir", &lab.pin_dir_str()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = refused_start(&lab, &args, &mail.dir().join("serve.log"));
    let users = path_str(&mail.users_file());
    assert!(
        output.contains(&users),
        "the refusal does not name {users}: {output}"
    );
    assert!(
        output.contains("644"),
        "the refusal does not name the mode 0644: {output}"
    );
}

/// `--listen [::]:110` is documented as dual stack; it must stay so on a
/// host with `net.ipv6.bindv6only = 1` (set here in the server namespace).
#[test]
fn default_listener_is_dual_stack_even_with_bindv6only() {
    let mut fx = Pop3Lab::with(LabOptions::default(), |lab| {
        let out = output_within(
            testkit::netns::netns_command(&lab.server_ns, "sysctl").args([
                "-q",
                "-w",
                "net.ipv6.bindv6only=1",
            ]),
            EXIT_BOUND,
        )
        .expect("sysctl");
        assert!(out.status.success(), "{}", testkit::process::describe(&out));
        Vec::new()
    });
    fx.stop();
}

/// SIGTERM while a session is open: no new connections, but the session
/// may still QUIT within the grace period, and its deletions apply.
#[test]
fn quit_within_the_shutdown_grace_applies_deletions() {
    // A grace that only a hung machine could miss: the session ends it
    // with its QUIT.
    let mut fx = Pop3Lab::with_flags(&["--shutdown-grace", "60s"]);
    let pid = fx.daemon.pid().expect("the daemon runs");
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
        {"op": "dele", "n": 1},
        {"op": "kill", "pid": pid, "signal": 15},
        {"op": "wait_refused", "timeout": RETRY_BOUND},
        {"op": "stat"},
        {"op": "quit"},
    ]));
    ok_step(&r, 2, "dele");
    // The listener closes after SIGTERM while the session goes on.
    ok_step(&r, 4, "wait_refused");
    assert_eq!(ok_step(&r, 5, "stat")["count"], 2, "the session goes on");
    let reply = ok_step(&r, 6, "quit")["reply"].as_str().unwrap_or_default();
    assert!(
        reply.starts_with("+OK"),
        "QUIT during the grace period: {reply}"
    );
    // The last session's QUIT ends the grace period: the daemon exits
    // without waiting for the rest of it.
    let (status, took) = fx.daemon.terminate(EXIT_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "after SIGTERM and the last QUIT: {status:?} after {took:?}; log:\n{}",
        fx.daemon.log()
    );
    let cur = fx.mail.files(ALICE, "cur");
    assert_eq!(
        cur.len(),
        2,
        "cur/ after DELE 1 + QUIT during shutdown: {cur:?}"
    );
    assert!(
        !cur.iter().any(|f| f.starts_with(ALICE_MAIL[0].0)),
        "{cur:?}"
    );
}

/// `--max-connections`: one more connection is told `-ERR [SYS/TEMP]`.
#[test]
fn connections_over_the_limit_get_sys_temp() {
    let mut fx = Pop3Lab::with_flags(&["--max-connections", "1"]);
    let r = fx.pop_v4(json!([
        {"op": "connect", "conn": "a"},
        {"op": "connect", "conn": "b"},
        {"op": "login", "conn": "a", "user": ALICE, "password": ALICE_SECRET},
        {"op": "quit", "conn": "a"},
        // The slot comes back once the server has closed the first one.
        {"op": "connect", "conn": "c", "retry_busy": RETRY_BOUND},
        {"op": "quit", "conn": "c"},
    ]));
    let error = err_step(&r, 1, "connect");
    assert!(
        error.starts_with("-ERR [SYS/TEMP]"),
        "the second connection with --max-connections 1: {error}"
    );
    ok_step(&r, 2, "login");
    ok_step(&r, 4, "connect");
    fx.stop();
}

/// A daemon that cannot listen (the port is taken, or no
/// CAP_NET_BIND_SERVICE) must fail before it changes the gate: `serve`
/// promises that everything that can be refused is refused first, and a
/// fresh gate without a POP3 service locks every client out of SMTP.
#[test]
fn listen_failure_leaves_no_gate_behind() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let _taken = testkit::netns::in_netns(&lab.server_ns, || {
        std::net::TcpListener::bind("[::]:110").expect("binding [::]:110 in the server namespace")
    });
    let args = serve_flags(&lab, &mail, &["--pin-dir", &lab.pin_dir_str()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = refused_start(&lab, &args, &mail.dir().join("serve.log"));
    assert!(
        output.contains("110"),
        "the refusal does not name the port: {output}"
    );
}

/// The capabilities the systemd unit gives the daemon, and nothing else.
const UNIT_CAPABILITIES: [&str; 4] = ["bpf", "perfmon", "net_admin", "net_bind_service"];

/// Makes `path` and everything under it `uid`'s.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}"), &path_str(path)])
        .status()
        .expect("running chown");
    assert!(status.success(), "chown -R {} failed", path.display());
}

/// A line of /proc/PID/status, without its key.
fn proc_status(pid: u32, key: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("reading its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// The pin directory bound to a second path, as the systemd unit's
/// `BindPaths=` does: the bpffs root is mode 0700 (systemd mounts it so,
/// and so does the lab), which an unprivileged daemon cannot traverse.
/// Unbound on drop, before the lab unmounts its bpffs.
struct BoundPinDir(PathBuf);

impl BoundPinDir {
    fn new(lab: &Lab) -> Self {
        let path = PathBuf::from(format!(
            "{}-bound",
            lab.pin_dir().parent().unwrap().display()
        ));
        fs::create_dir_all(&path).expect("making the bind mount point");
        let status = std::process::Command::new("mount")
            .args(["--bind", &lab.pin_dir_str(), &path_str(&path)])
            .status()
            .expect("running mount");
        assert!(status.success(), "mount --bind {}", path.display());
        Self(path)
    }
}

impl Drop for BoundPinDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

/// The daemon needs no root: as `nobody` holding the unit's four
/// capabilities (ambient), with the pin directory set up as the unit sets
/// it up (made for it, bound to a path it can reach), it attaches the
/// gate, grants a login before `+OK`, and serves and deletes mail that the
/// user owns, with no other capability in its process.
#[test]
fn daemon_runs_unprivileged_with_the_units_capabilities() {
    require_pop3_clients();
    let lab = Lab::new();
    let mail = mail_fixture();
    let user = Unprivileged::nobody(&UNIT_CAPABILITIES);
    chown_tree(mail.dir(), user.uid, user.gid);
    chown_tree(lab.pin_dir(), user.uid, user.gid);
    let bound = BoundPinDir::new(&lab);
    let mut args = serve_flags(&lab, &mail, &[]);
    args.extend(["--pin-dir".to_string(), path_str(&bound.0)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Port 110 without CAP_NET_BIND_SERVICE: refused, naming it, before
    // the gate is touched.
    let no_bind = Unprivileged::nobody(&UNIT_CAPABILITIES[..3]);
    let mut refused = lab.spawn_serve_as(Some(&no_bind), &args, &mail.dir().join("refused.log"));
    let status = refused.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()) && refused.log().contains("CAP_NET_BIND_SERVICE"),
        "serve on port 110 without CAP_NET_BIND_SERVICE: {status:?}\n{}",
        refused.log()
    );
    assert!(
        lab.pins().is_empty(),
        "a refused daemon pinned {:?}",
        lab.pins()
    );

    let mut daemon = lab.spawn_serve_as(Some(&user), &args, &mail.dir().join("serve.log"));
    lab.wait_pop3(&mut daemon);

    let pid = daemon.pid().expect("the daemon runs");
    assert_eq!(
        proc_status(pid, "Uid:"),
        "65534\t65534\t65534\t65534",
        "the daemon's user ids"
    );
    // CAP_NET_BIND_SERVICE 10, CAP_NET_ADMIN 12, CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = 1 << 10 | 1 << 12 | 1 << 38 | 1 << 39;
    assert_eq!(
        u64::from_str_radix(&proc_status(pid, "CapEff:"), 16).expect("CapEff is hex"),
        expected,
        "the daemon's effective capabilities"
    );

    let client = lab.client.clone();
    let r = pop_judged(
        &lab,
        &client,
        client.server_v4.into(),
        json!([
            {"op": "connect"},
            {"op": "login", "user": ALICE, "password": ALICE_SECRET},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "retr", "n": 1},
            {"op": "dele", "n": 1},
            {"op": "quit"},
        ]),
    );
    ok_step(&r, 1, "login");
    assert_smtp_connected(&r, 2, "after a login to the unprivileged daemon");
    ok_step(&r, 3, "retr");
    ok_step(&r, 5, "quit");
    let cur = mail.files(ALICE, "cur");
    assert_eq!(cur.len(), 2, "cur/ after DELE 1 + QUIT as nobody: {cur:?}");
    // The counters need no capability at all, only the rights to the
    // daemon's pins.
    let stats = std::process::Command::new("setpriv")
        .args(Unprivileged::nobody(&[]).setpriv_args())
        .arg(smtp_gate_bin())
        .args(["stats", "--json", "--pin-dir", &path_str(&bound.0)])
        .output()
        .expect("running setpriv");
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap_or_else(|e| {
        panic!(
            "stats as nobody without capabilities: {e}: {}",
            String::from_utf8_lossy(&stats.stderr)
        )
    });
    assert!(stats["granted"].as_u64().is_some(), "stats: {stats}");
    let pins = lab.pins();
    assert!(
        pins.contains(&"grants_v4".to_string()),
        "the daemon's pins are not on the lab's bpffs: {pins:?}"
    );
    let (status, _) = daemon.terminate(GRACE + EXIT_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "the unprivileged daemon did not stop cleanly; log:\n{}",
        daemon.log()
    );
    drop(bound);
}

/// Without the capabilities, every command stops before its first bpf()
/// call and names what is missing.
#[test]
fn commands_without_their_capabilities_name_the_missing_ones() {
    let lab = Lab::new();
    let pin = lab.pin_dir_str();
    let cases: [(&[&str], &[&'static str], &[&str]); 3] = [
        (
            &["list", "--pin-dir", &pin],
            &[],
            &["CAP_BPF", "CAP_NET_ADMIN"],
        ),
        (
            &["grant", "192.0.2.9", "--pin-dir", &pin],
            &["bpf"],
            &["CAP_NET_ADMIN"],
        ),
        (
            &[
                "attach",
                "--iface",
                &lab.client.server_iface,
                "--pin-dir",
                &pin,
            ],
            &["bpf", "net_admin"],
            &["CAP_PERFMON"],
        ),
    ];
    for (args, held, missing) in cases {
        let user = Unprivileged::nobody(held);
        let out = std::process::Command::new("setpriv")
            .args(user.setpriv_args())
            .arg(smtp_gate_bin())
            .args(args)
            .output()
            .expect("running setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} with {held:?} succeeded");
        for name in missing {
            assert!(stderr.contains(name), "{args:?} with {held:?}: {stderr}");
        }
        for name in held {
            let cap = format!("CAP_{}", name.to_uppercase());
            assert!(
                !stderr.contains(&cap),
                "{args:?} named {cap}, which it holds: {stderr}"
            );
        }
    }
    assert!(
        lab.pins().is_empty(),
        "a refused command pinned something: {:?}",
        lab.pins()
    );
}

/// A user name is the client's to choose: control characters are refused
/// by the parser, but a line or paragraph separator, a bidi override or a
/// "user=" in it must not end the log line, hide what it is or forge a
/// field.
#[test]
fn user_names_are_escaped_in_the_log() {
    let mut fx = Pop3Lab::new();
    let client = fx.client().clone();
    let hostile = "mallory\u{2028}user=root\u{2029}addr=10.0.0.1\u{202e}result=ok";
    in_netns(&client.client_ns, || {
        use std::io::{BufRead, BufReader, Write};
        let stream = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(client.server_v4.into(), POP3_PORT),
            Duration::from_secs(10),
        )
        .expect("connecting to the daemon");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("greeting");
        (&stream)
            .write_all(format!("USER {hostile}\r\nPASS wrong\r\n").as_bytes())
            .expect("sending the login");
        for _ in 0..2 {
            line.clear();
            reader.read_line(&mut line).expect("a reply");
        }
        assert!(line.starts_with("-ERR"), "PASS for an unknown user: {line}");
    });
    let log = fx
        .daemon
        .wait_for_log("result=failed", 1, Duration::from_secs(30));
    let escaped = "user=mallory\\u{2028}user=root\\u{2029}addr=10.0.0.1\\u{202e}result=ok addr=";
    assert!(
        log.contains(escaped),
        "the login line is not escaped:\n{log}"
    );
    for bad in ['\u{2028}', '\u{2029}', '\u{202e}'] {
        assert!(!log.contains(bad), "the log holds a raw {bad:?}:\n{log:?}");
    }
}

// ---------------------------------------------------------------------------
// SIGHUP: the users file and the config file read again
// ---------------------------------------------------------------------------

/// The line the daemon ends every reload with.
const RELOADED: &str = "reloaded on SIGHUP";
/// Only a hang takes this long.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// SIGHUP reloads the users file: a user added can log in, a user removed
/// cannot, and a session opened before stays open. A users file with a
/// bad line changes nothing: the users in force keep working and the log
/// names the line.
#[test]
fn sighup_reloads_the_users_file_and_open_sessions_stay() {
    let mut fx = Pop3Lab::new();
    let client = fx.client().clone();
    let mut open = client
        .session_v4(POP3_PORT, PASS_TIMEOUT)
        .unwrap_or_else(|e| panic!("a POP3 session: {e}"));
    for (command, what) in [
        (format!("USER {ALICE}"), "USER"),
        (format!("PASS {ALICE_SECRET}"), "PASS"),
    ] {
        let reply = open
            .exchange(&command)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(reply.starts_with("+OK"), "{what}: {reply}");
    }

    fx.mail.remove_user(ALICE);
    fx.mail.add_user("carol", "{PLAIN}carol-secret");
    fx.daemon.signal(libc::SIGHUP);
    let log = fx.daemon.wait_for_log(RELOADED, 1, RELOAD_TIMEOUT);
    assert!(
        log.contains("reloaded on SIGHUP: users +carol -alice"),
        "the reload's line says who came and went:\n{log}"
    );
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
        {"op": "login", "user": "carol", "password": "carol-secret"},
        {"op": "quit"},
    ]));
    assert!(
        err_step(&r, 1, "login").starts_with("-ERR [AUTH]"),
        "alice was removed: {r:#?}"
    );
    ok_step(&r, 2, "login");
    let stat = open
        .exchange("STAT")
        .expect("STAT in the session opened before");
    assert!(
        stat.starts_with("+OK 3 "),
        "alice's session goes on after the reload: {stat}"
    );

    // A bad file: nothing changes, and the log says where it is wrong.
    fx.mail.write_users_text(&format!(
        "carol:{{PLAIN}}carol-secret\nbroken line\n{BOB}:{{SHA512-CRYPT}}{BOB_HASH}\n"
    ));
    fx.daemon.signal(libc::SIGHUP);
    let log = fx.daemon.wait_for_log(RELOADED, 2, RELOAD_TIMEOUT);
    let named = format!(
        "{} line 2: no ':' after the user name; the 2 users loaded before stay",
        path_str(&fx.mail.users_file())
    );
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": "carol", "password": "carol-secret"},
        {"op": "quit"},
        {"op": "connect"},
        {"op": "login", "user": BOB, "password": BOB_PASSWORD},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");
    ok_step(&r, 4, "login");

    // An empty file (one caught half written): the users in force stay.
    fx.mail.write_users_text("");
    fx.daemon.signal(libc::SIGHUP);
    let log = fx.daemon.wait_for_log(RELOADED, 3, RELOAD_TIMEOUT);
    assert!(
        log.contains("is empty (a file half written?); the 2 users loaded before stay"),
        "an empty users file on reload:\n{log}"
    );
    assert!(
        log.contains(
            "reloaded on SIGHUP: refused the users file (the 2 users loaded before stay); \
             nothing else changed"
        ),
        "the reload's line says the file was refused:\n{log}"
    );
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": "carol", "password": "carol-secret"},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");
    let quit = open.exchange("QUIT").expect("QUIT");
    assert!(quit.starts_with("+OK"), "{quit}");
    fx.stop();
}

/// Attack review 10: a users file whose every line is commented out was
/// refused as "has no users (a file half written?)", and alice and bob
/// still logged in after the reload said "nothing changed". A file with
/// content but no users is meant: it is taken, with a warning, and
/// nobody logs in. A file cut in its last line (`alic` for alice's
/// password `alice...`) is refused and the users in force stay.
#[test]
fn a_reload_takes_a_file_without_users_and_refuses_one_cut_in_a_line() {
    let mut fx = Pop3Lab::new();
    let users_file = path_str(&fx.mail.users_file());
    let whole = fs::read_to_string(fx.mail.users_file()).expect("the users file");
    let cut_at = whole.find(ALICE_SECRET).expect("alice's plaintext secret") + 2;
    assert!(cut_at < whole.len() - 1);
    fx.mail.write_users_text(&whole[..cut_at]);
    fx.daemon.signal(libc::SIGHUP);
    let log = fx.daemon.wait_for_log(RELOADED, 1, RELOAD_TIMEOUT);
    let refused = format!(
        "{users_file} does not end with a line end (a file half written? its last line may be \
         cut); the 2 users loaded before stay"
    );
    assert!(log.contains(&refused), "expected {refused:?} in:\n{log}");
    assert!(
        log.contains("reloaded on SIGHUP: refused the users file"),
        "{log}"
    );
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");

    let commented: String = whole.lines().map(|line| format!("#{line}\n")).collect();
    fx.mail.write_users_text(&commented);
    fx.daemon.signal(libc::SIGHUP);
    let log = fx.daemon.wait_for_log(RELOADED, 2, RELOAD_TIMEOUT);
    assert!(
        log.contains(&format!("{users_file} has no users: nobody can log in")),
        "a warning for a file without users:\n{log}"
    );
    let removed = format!("reloaded on SIGHUP: users -{ALICE} -{BOB}");
    assert!(log.contains(&removed), "expected {removed:?} in:\n{log}");
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
        {"op": "login", "user": BOB, "password": BOB_PASSWORD},
        {"op": "quit"},
    ]));
    assert!(
        err_step(&r, 1, "login").starts_with("-ERR [AUTH]"),
        "alice was commented out: {r:#?}"
    );
    assert!(
        err_step(&r, 2, "login").starts_with("-ERR [AUTH]"),
        "bob was commented out: {r:#?}"
    );
    fx.stop();
}

fn gate_settings(lab: &Lab) -> Value {
    serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings --json")
}

/// SIGHUP reads the config file again: the window and the deny mode reach
/// the gate (as `smtp-gate settings` shows) and the connection limit the
/// POP3 service, while a key only a restart applies (hostname) keeps its
/// value with a warning, and the reload's line names it as refused. A config file with a bad value changes nothing
/// and the log names the key.
#[test]
fn sighup_applies_the_config_file_to_the_gate_and_the_service() {
    require_pop3_clients();
    let lab = Lab::new();
    let mail = mail_fixture();
    let config = write_config(&mail, &lab, "window = \"3s\"\nmax_connections = 1\n");
    let mut daemon = lab.spawn_serve(
        &["--config", &path_str(&config)],
        &mail.dir().join("serve.log"),
    );
    lab.wait_pop3(&mut daemon);
    let before = gate_settings(&lab);
    assert_eq!(
        (&before["window_secs"], &before["deny"]),
        (&json!(3.0), &json!("drop")),
        "{before}"
    );
    let client = &lab.client;
    let two_at_once = || {
        pop3_client(
            &client.client_ns,
            client.server_v4.into(),
            json!([
                {"op": "connect", "conn": "a"},
                {"op": "connect", "conn": "b"},
                {"op": "quit", "conn": "a"},
            ]),
        )
    };
    let r = two_at_once();
    assert!(
        err_step(&r, 1, "connect").starts_with("-ERR [SYS/TEMP]"),
        "max_connections = 1: {r:#?}"
    );

    let text = fs::read_to_string(&config).expect("the config file");
    let changed = text
        .replace("window = \"3s\"", "window = \"10s\"")
        .replace("deny = \"drop\"", "deny = \"reset\"")
        .replace("max_connections = 1", "max_connections = 2")
        .replace("hostname = \"lab.test\"", "hostname = \"other.test\"");
    assert_ne!(text, changed);
    fs::write(&config, &changed).expect("rewriting the config file");
    daemon.signal(libc::SIGHUP);
    let log = daemon.wait_for_log(RELOADED, 1, RELOAD_TIMEOUT);
    let after = gate_settings(&lab);
    assert_eq!(
        (&after["window_secs"], &after["deny"]),
        (&json!(10.0), &json!("reset")),
        "the gate after the reload: {after}"
    );
    for said in [
        "window 3s -> 10s",
        "deny drop -> reset",
        "max_connections 1 -> 2",
        "`hostname` changed, but only a restart applies it; the daemon keeps \"lab.test\"",
        // The reload's line too (it once named only what changed).
        "; refused hostname (only a restart applies it; it stays \"lab.test\")",
    ] {
        assert!(log.contains(said), "expected {said:?} in:\n{log}");
    }
    let r = two_at_once();
    ok_step(&r, 1, "connect");
    let welcome = r[1]["welcome"].as_str().unwrap_or_default();
    assert!(
        welcome.ends_with("@lab.test>"),
        "the host name needs a restart: {welcome}"
    );

    fs::write(
        &config,
        changed.replace("window = \"10s\"", "window = \"5x\""),
    )
    .expect("rewriting the config file");
    daemon.signal(libc::SIGHUP);
    let log = daemon.wait_for_log(RELOADED, 2, RELOAD_TIMEOUT);
    let named = format!("config file {}: key `window`", path_str(&config));
    assert!(log.contains(&named), "expected {named:?} in:\n{log}");
    assert_eq!(gate_settings(&lab)["window_secs"], json!(10.0));

    let (status, took) = daemon.terminate(GRACE + EXIT_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM after the reloads gave {status:?} after {took:?}; log:\n{}",
        daemon.log()
    );
}

/// A users file without users starts the daemon (users may come with a
/// reload), but not silently.
#[test]
fn an_empty_users_file_is_a_warning_at_start() {
    let lab = Lab::new();
    let mail = MailFixture::new();
    let args = serve_flags(&lab, &mail, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.serve(&args, &mail.dir().join("serve.log"));
    let warning = format!(
        "{} has no users: nobody can log in",
        path_str(&mail.users_file())
    );
    daemon.wait_for_log(&warning, 1, RELOAD_TIMEOUT);
    let (status, _) = daemon.terminate(GRACE + EXIT_BOUND);
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
}

/// A users file whose last line has no line end starts the daemon (there
/// are no users in force to keep, unlike on a reload), with a warning.
#[test]
fn a_users_file_without_a_last_line_end_is_a_warning_at_start() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let whole = fs::read_to_string(mail.users_file()).expect("the users file");
    mail.write_users_text(whole.trim_end());
    let args = serve_flags(&lab, &mail, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.serve(&args, &mail.dir().join("serve.log"));
    let warning = format!(
        "{} does not end with a line end: its last line is taken as it is",
        path_str(&mail.users_file())
    );
    daemon.wait_for_log(&warning, 1, RELOAD_TIMEOUT);
    daemon.wait_for_log("2 users loaded from", 1, RELOAD_TIMEOUT);
    let (status, _) = daemon.terminate(GRACE + EXIT_BOUND);
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
}

/// APOP tells a prober nothing: the greeting's timestamp holds neither
/// the daemon's PID nor anything that repeats, and a user who has only a
/// hash, a name that does not exist and a wrong digest get the same
/// answer (RFC 1939 section 13); the log says why the hash-only user was
/// refused.
#[test]
fn apop_tells_neither_the_pid_nor_which_users_have_only_a_hash() {
    let mut fx = Pop3Lab::new();
    let pid = fx.daemon.pid().expect("the daemon runs").to_string();
    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "apop", "user": ALICE, "secret": "wrong"},
        {"op": "apop", "user": BOB, "secret": BOB_PASSWORD},
        {"op": "apop", "user": "nobody", "secret": "whatever"},
        {"op": "connect", "conn": "b"},
        {"op": "apop", "conn": "b", "user": ALICE, "secret": ALICE_SECRET},
        {"op": "quit", "conn": "b"},
    ]));
    let wrong = err_step(&r, 1, "apop");
    assert!(wrong.starts_with("-ERR [AUTH]"), "{wrong}");
    assert_eq!(err_step(&r, 2, "apop"), wrong, "the user with only a hash");
    assert_eq!(err_step(&r, 3, "apop"), wrong, "a name that does not exist");
    ok_step(&r, 5, "apop");
    let timestamps: Vec<String> = [0, 4]
        .iter()
        .map(|&i| {
            let welcome = ok_step(&r, i, "connect")["welcome"]
                .as_str()
                .unwrap_or_default();
            let start = welcome.find('<').expect("a timestamp");
            welcome[start..].to_string()
        })
        .collect();
    assert_ne!(timestamps[0], timestamps[1]);
    for timestamp in &timestamps {
        let local = &timestamp[1..timestamp.find('@').expect("msg-id")];
        assert!(
            !local.split(['.', '-']).any(|field| field == pid),
            "{timestamp} shows the daemon's PID {pid}"
        );
    }
    let log = fx
        .daemon
        .wait_for_log("the user has only a password hash", 1, RELOAD_TIMEOUT);
    assert!(log.contains(&format!("user={BOB}")), "{log}");
    fx.stop();
}

// ---------------------------------------------------------------------------
// The start: a SIGHUP before the reloader holds it
// ---------------------------------------------------------------------------

/// Issue 10, defect 5: a SIGHUP that came before the daemon installed
/// its reload handler killed it (SIGHUP's default action), e.g. a
/// `systemctl reload` racing the start. Now `serve` ignores SIGHUP first
/// thing. Not raced: the daemon starts with a full output pipe and a low
/// soft open-file limit, so its first line ("open files: soft limit
/// raised", written before the runtime and its signal handlers exist)
/// holds it in write(2); the SIGHUP arrives there, then the output is
/// let go. Fails on the old daemon: it exits by SIGHUP before listening.
#[test]
fn a_sighup_during_the_start_does_not_kill_the_daemon() {
    let lab = Lab::with_options(LabOptions::default());
    let mail = mail_fixture();
    let pin = lab.pin_dir_str();
    let args = serve_flags(&lab, &mail, &["--pin-dir", &pin]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = ServeStart {
        soft_open_files: Some(1024),
        output_held: true,
        ..ServeStart::default()
    };
    let mut daemon = lab.spawn_serve_with(start, &args, &mail.dir().join("serve.log"));
    let deadline = Instant::now() + EXIT_BOUND;
    while !daemon.is_blocked_writing() {
        assert!(
            daemon.exited().is_none(),
            "the daemon exited before its first line"
        );
        assert!(
            Instant::now() < deadline,
            "the daemon never blocked writing its first line"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon.signal(libc::SIGHUP);
    daemon.release_output();
    lab.wait_pop3(&mut daemon);
    let log = daemon.log();
    assert!(
        log.starts_with("[")
            && log
                .lines()
                .next()
                .unwrap()
                .contains("open files: soft limit raised"),
        "the daemon was held elsewhere than at its first line (the open-file limit was not \
         raised?):\n{log}"
    );
    // From here the reloader holds SIGHUP.
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(RELOADED, 1, RELOAD_TIMEOUT);
}

// ---------------------------------------------------------------------------
// Attack finding F3: a message too large to size at login
// ---------------------------------------------------------------------------

/// Attack finding F3 against the daemon: a sparse file of 4 TiB without
/// W= in alice's cur/ kept her login unanswered and her maildrop locked
/// for hours. Now the login ends at the login timeout with
/// `-ERR [SYS/TEMP]`, the lines about it name its session, bob logs in
/// meanwhile, alice's next login is not `[IN-USE]` (it is cut the same way,
/// the lock having been released), and SIGTERM during such a login ends
/// the daemon. Fails on the old daemon: no [SYS/TEMP], no session ids, and
/// `[IN-USE]` from then on.
#[test]
fn a_huge_message_without_a_size_neither_hangs_a_login_nor_locks_the_maildrop() {
    let mut fx = Pop3Lab::with_flags(&["--login-timeout", "3s"]);
    let huge = fx
        .mail
        .mail_root()
        .join(ALICE)
        .join("cur")
        .join("1700000009.M9P1.lab:2,");
    fs::File::create(&huge)
        .expect("creating the huge message")
        .set_len(4 << 40)
        .expect("a sparse file of 4 TiB");
    let alice_login = json!([
        {"op": "connect"},
        {"op": "login", "user": ALICE, "password": ALICE_SECRET},
    ]);
    let r = fx.pop_v4(alice_login.clone());
    let refused = err_step(&r, 1, "login");
    assert!(
        refused.starts_with("-ERR [SYS/TEMP]"),
        "the login with a 4 TiB message: {r:#?}"
    );
    let log = fx.daemon.wait_for_log("result=cut", 1, EXIT_BOUND);
    let cut = log
        .lines()
        .find(|l| l.contains("login user=alice") && l.contains("result=cut"))
        .expect("the cut login's line");
    let id = cut
        .split("session=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a session id in the cut line");
    let log = fx.daemon.wait_for_log(
        &format!("session={id} end reason=login-timeout"),
        1,
        EXIT_BOUND,
    );
    assert!(
        log.contains(&format!("session={id} maildir ")) && log.contains("stopped sizing cur/"),
        "the store's line about the scan it stopped:\n{log}"
    );

    let r = fx.pop_v4(json!([
        {"op": "connect"},
        {"op": "login", "user": BOB, "password": BOB_PASSWORD},
        {"op": "quit"},
    ]));
    ok_step(&r, 1, "login");
    // Cut like the first, not refused as in use: the lock was released.
    let r = fx.pop_v4(alice_login.clone());
    let again = err_step(&r, 1, "login");
    assert!(
        again.starts_with("-ERR [SYS/TEMP]"),
        "alice's second login: {r:#?}"
    );

    // SIGTERM while a login sizes the file: the daemon exits all the
    // same (stop() bounds it and wants status 0). The second is only to
    // let the login begin (the daemon logs nothing until it ends); if it
    // has not, the test checks less, not something else.
    let ns = fx.client().client_ns.clone();
    let server: IpAddr = fx.client().server_v4.into();
    let third = std::thread::spawn(move || pop3_client(&ns, server, alice_login));
    std::thread::sleep(Duration::from_secs(1));
    fx.stop();
    let r = third.join().expect("the third login's client");
    assert!(
        r[1].get("error").is_some() || r[1].get("oserror").is_some(),
        "a login during the shutdown: {r:#?}"
    );
}

// ---------------------------------------------------------------------------
// Behind a load balancer (PROXY protocol)
// ---------------------------------------------------------------------------

/// The daemon's listener behind the lab's load balancer, and the
/// balancer's own: both on the server's address, the balancer (a relay in
/// the server namespace, as a balancer on the mail host would be) in
/// front of the proxied one.
const PROXIED_PORT: u16 = 1111;
const BALANCER_PORT: u16 = 1110;

/// The client logs in through a load balancer that sends a PROXY v2
/// header: the grant is the client's own address (its SMTP SYN passes at
/// once), not the balancer's; the log names both. The same client sending
/// its own PROXY header straight to the proxied listener, from outside the
/// trusted networks, is closed without a greeting and nobody is granted.
#[test]
fn a_client_behind_a_load_balancer_is_granted_under_its_own_address() {
    let mut pop = Pop3Lab::with(LabOptions::default(), |lab| {
        let proxied = format!("{}:{PROXIED_PORT}", lab.client.server_v4);
        let balancer = format!("{}/32", lab.client.server_v4);
        [
            "--listen",
            &proxied,
            "--proxy-listen",
            &proxied,
            "--proxy-trusted-networks",
            &balancer,
        ]
        .map(String::from)
        .to_vec()
    });
    let link = pop.lab.client.clone();
    let server = IpAddr::from(link.server_v4);
    let proxied = SocketAddr::new(server, PROXIED_PORT);

    // Straight from the client, which is not trusted, with a header that
    // names another host of its network.
    let claimed: SocketAddr = "10.231.1.77:40000".parse().unwrap();
    let answer = in_netns(&link.client_ns, || {
        let mut stream = TcpStream::connect_timeout(&proxied, Duration::from_secs(10))
            .expect("connecting to the proxied listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut first = proxy_v2_header(claimed, proxied);
        first.extend(format!("USER {ALICE}\r\nPASS {ALICE_SECRET}\r\n").as_bytes());
        // The daemon may close before all of it arrives.
        let _ = stream.write_all(&first);
        // Until it is closed (or reset); a connection still open after
        // the read timeout gives what it sent by then.
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => answer,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => answer,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                answer.extend(b" (and still open)");
                answer
            }
            Err(e) => panic!("reading the proxied listener's answer: {e}"),
        }
    });
    assert!(
        answer.is_empty(),
        "an untrusted PROXY header got an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    pop.daemon
        .wait_for_log("proxied connections refused", 1, Duration::from_secs(30));
    assert_eq!(grants(&pop.lab, true), Vec::new(), "nobody granted");

    let balancer = ProxyV2::start(
        &pop.lab.server_ns,
        SocketAddr::new(server, BALANCER_PORT),
        proxied,
    );
    let results = pop_judged_at(
        &pop.lab,
        &link,
        server,
        BALANCER_PORT,
        json!([
            {"op": "smtp", "timeout": SMTP_DENY_TIMEOUT},
            {"op": "connect"},
            {"op": "login", "user": ALICE, "password": ALICE_SECRET},
            {"op": "smtp", "timeout": SMTP_PASS_TIMEOUT},
            {"op": "quit"},
        ]),
    );
    assert_smtp_denied(&results, 0, "before the login");
    ok_step(&results, 2, "login");
    assert_smtp_connected(&results, 3, "after the login through the balancer");
    ok_step(&results, 4, "quit");
    assert_eq!(balancer.relayed(), 1, "the login went through the balancer");
    assert_eq!(
        grants(&pop.lab, true),
        [(link.client_v4.to_string(), false)],
        "the client's own address, and not the balancer's ({server})"
    );
    let log = pop.daemon.wait_for_log(
        &format!("end reason=quit addr={} via={server}", link.client_v4),
        1,
        Duration::from_secs(30),
    );
    assert!(
        log.contains(&format!(
            "grant source=pop3 addr={} user={ALICE}",
            link.client_v4
        )),
        "{log}"
    );
    drop(balancer);
    pop.stop();
}
