//! Bans end to end: the real `smtp-gate serve` in the server namespace of
//! a lab, Python's poplib failing logins from a client namespace, and the
//! gate on every server-side veth. Ten failed logins ban the client's
//! address at the login port and the gated port while another address is
//! still served; the ban ends on time; an exempt network is never banned;
//! bans stay across a daemon restart; `smtp-gate ban` manages them.
//!
//! Needs root, a built binary (`cargo build -p gate-user`) and python3;
//! panics otherwise (never skips).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testkit::{
    denial::{Deny, GateVerdict},
    lab::{Lab, LabOptions, Link},
    mail::MailFixture,
    pop3_client::{pop3_client, require_pop3_clients},
    serve::{ServeDaemon, POP3_PORT},
    smtp::{DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

const USER: &str = "alice";
const SECRET: &str = "wonderland";
/// How long the daemon may take to start, stop or log a ban: only a hang
/// takes longer.
const BOUND: Duration = Duration::from_secs(30);

fn mail_fixture() -> MailFixture {
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
    mail
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The daemon's flags: the lab's first link, a short failure delay, and
/// `extra`.
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
        "--login-failure-delay",
        "100ms",
        "--shutdown-grace",
        "1s",
        "--pin-dir",
        &lab.pin_dir_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts the daemon and waits until it listens. Not through the lab's
/// client: that one may be banned.
fn start(lab: &Lab, mail: &MailFixture, extra: &[&str], log: &str) -> ServeDaemon {
    let args = serve_flags(lab, mail, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.spawn_serve(&args, &mail.dir().join(log));
    daemon.wait_for_log("POP3 listening on", 1, BOUND);
    daemon
}

fn stop(daemon: &mut ServeDaemon) {
    match daemon.terminate(BOUND) {
        (Some(status), _) if status.success() => {}
        (status, took) => panic!(
            "smtp-gate serve ended with {status:?} after {took:?} of SIGTERM; log:\n{}",
            daemon.log()
        ),
    }
}

/// `n` failed logins from `link` over IPv4, three to a connection (the
/// server closes it after the third), each answered `-ERR [AUTH]`.
fn fail_logins(link: &Link, n: usize) {
    let mut steps = Vec::new();
    for i in 0..n {
        if i % 3 == 0 {
            steps.push(json!({"op": "connect"}));
        }
        steps.push(json!({"op": "login", "user": USER, "password": format!("guess{i}")}));
    }
    let results = pop3_client(&link.client_ns, link.server_v4.into(), json!(steps));
    let refused = results
        .iter()
        .filter(|r| r["op"] == "login")
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("-ERR [AUTH]"))
        })
        .count();
    assert_eq!(refused, n, "every guess is refused: {results:#?}");
}

/// `smtp-gate ban list --json [--all]`.
fn bans(lab: &Lab, all: bool) -> Vec<Value> {
    let mut args = vec!["ban", "list", "--json"];
    if all {
        args.push("--all");
    }
    let out = lab.gate_ok(&args);
    serde_json::from_str::<Vec<Value>>(&out)
        .unwrap_or_else(|e| panic!("`ban list --json` printed no JSON list ({e}): {out}"))
}

fn networks(bans: &[Value]) -> Vec<String> {
    bans.iter()
        .map(|b| b["network"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Asserts that `link`'s connections to the POP3 port and to the gated
/// port are both dropped as banned.
#[track_caller]
fn assert_banned(lab: &Lab, link: &Link, what: &str) {
    for port in [POP3_PORT, SMTP_PORT] {
        lab.assert_denied(
            Deny::Banned,
            link,
            link.server_v4,
            port,
            &format!("{what}, port {port}"),
        );
    }
}

/// Asserts that `link` reaches the POP3 port: connected, every SYN let
/// through.
#[track_caller]
fn assert_pop3_reached(lab: &Lab, link: &Link, what: &str) {
    let judged = lab.judge(link, link.server_v4, POP3_PORT, PASS_TIMEOUT);
    assert!(
        judged.attempt.result.is_connected() && judged.verdict() == GateVerdict::Passed,
        "{what}: expected to reach the POP3 port: {judged}"
    );
}

/// A lab with a second client (not exempt unless a test says so), the
/// gate attached to both server-side veths, and the mail of one user.
fn two_client_lab() -> (Lab, MailFixture) {
    require_pop3_clients();
    let lab = Lab::with_options(LabOptions {
        exempt_client: true,
        ..LabOptions::default()
    });
    lab.attach(&[]);
    (lab, mail_fixture())
}

/// Ten failed logins ban the client's address: its SYNs to 110 and to 25
/// are dropped (denied_banned) while the other client is still served;
/// the ban, logged once at warn, ends on time and the client gets in
/// again.
#[test]
fn ten_failed_logins_ban_the_client_until_the_ban_ends() {
    let (lab, mail) = two_client_lab();
    // Long enough for the checks below on a slow machine, short enough to
    // wait for its end.
    let mut daemon = start(&lab, &mail, &["--ban-time", "15s"], "serve.log");
    let client = lab.client.clone();
    let other = lab.exempt().clone();
    fail_logins(&client, 9);
    assert!(bans(&lab, true).is_empty(), "nine failures banned already");
    assert_pop3_reached(&lab, &client, "nine failures: not banned yet");
    fail_logins(&client, 1);
    let log = daemon.wait_for_log("ban net=", 1, BOUND);
    let line = format!(
        "ban net={}/32 failures=10 within=10m duration=15s",
        client.client_v4
    );
    assert!(log.contains(&line), "no `{line}` in the log:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("ban net=")),
        "the ban is logged at warn:\n{log}"
    );
    let listed = bans(&lab, false);
    assert_eq!(networks(&listed), [format!("{}/32", client.client_v4)]);
    assert_eq!(listed[0]["count"], 1);
    assert_banned(&lab, &client, "after ten failed logins");
    assert_pop3_reached(&lab, &other, "another address is still served");
    assert!(lab.stat("denied_banned") >= 2, "{}", lab.stats());

    // The ban ends by itself: the client gets in again, once `ban list`
    // shows it ended.
    let deadline = Instant::now() + BOUND;
    loop {
        let judged = lab.judge(&client, client.server_v4, POP3_PORT, DENY_TIMEOUT);
        if judged.attempt.result.is_connected() && judged.verdict() == GateVerdict::Passed {
            let listed = bans(&lab, true);
            assert!(
                listed.iter().all(|b| b["ended"] == true),
                "let in while a ban lasts: {listed:#?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the ban never ended: {judged}");
    }
    assert!(bans(&lab, false).is_empty());
    assert_eq!(
        daemon.log().matches("ban net=").count(),
        1,
        "one line per ban, not per failure"
    );
    stop(&mut daemon);
}

/// An exempt network is never banned: ten failures and more from it leave
/// no ban, and its connections pass.
#[test]
fn an_exempt_network_is_never_banned() {
    let (lab, mail) = two_client_lab();
    let exempt = lab.exempt().clone();
    let mut daemon = start(
        &lab,
        &mail,
        &["--exempt", &exempt.net_v4, "--exempt", &exempt.net_v6],
        "serve.log",
    );
    fail_logins(&exempt, 12);
    // The failures reached the daemon: a login made after them is logged
    // after their lines.
    daemon.wait_for_log("result=failed", 12, BOUND);
    assert!(bans(&lab, true).is_empty(), "{:#?}", bans(&lab, true));
    assert!(!daemon.log().contains("ban net="), "{}", daemon.log());
    assert_pop3_reached(&lab, &exempt, "the exempt client");
    exempt
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("the exempt client, port 25");
    assert_eq!(lab.stat("denied_banned"), 0, "{}", lab.stats());
    let refused = lab.gate_err(&["ban", "add", &exempt.client_v4.to_string()]);
    assert!(
        refused.contains("exempt networks are never banned"),
        "{refused}"
    );
    stop(&mut daemon);
}

/// A ban (automatic or `ban add`) stays across a daemon restart, with its
/// count: the next ban of the network lasts twice as long. `ban del`
/// lifts one at once.
#[test]
fn bans_stay_across_a_restart_and_the_cli_manages_them() {
    let (lab, mail) = two_client_lab();
    let client = lab.client.clone();
    let other = lab.exempt().clone();
    let mut daemon = start(&lab, &mail, &["--ban-time", "10m"], "serve.log");
    fail_logins(&client, 10);
    daemon.wait_for_log("ban net=", 1, BOUND);
    stop(&mut daemon);
    assert_banned(&lab, &client, "the daemon stopped");
    let mut daemon = start(&lab, &mail, &["--ban-time", "10m"], "serve2.log");
    assert_banned(&lab, &client, "the daemon started again");
    let listed = bans(&lab, false);
    assert_eq!(networks(&listed), [format!("{}/32", client.client_v4)]);
    assert_eq!(listed[0]["length_secs"], 600.0);

    let out = lab.gate_ok(&["ban", "del", &client.client_v4.to_string()]);
    assert!(out.contains("lifted the ban"), "{out}");
    assert_pop3_reached(&lab, &client, "the ban lifted");
    let err = lab.gate_err(&["ban", "del", &client.client_v4.to_string()]);
    assert!(err.contains("has no ban"), "{err}");

    // The other client, banned by hand over IPv6 and IPv4: its /64 is
    // listed, its SYNs dropped.
    let out = lab.gate_ok(&["ban", "add", &other.client_v4.to_string(), "--for", "1h"]);
    assert!(out.contains("for 1h"), "{out}");
    let out = lab.gate_ok(&["ban", "add", &other.client_v6.to_string()]);
    let net6 = other.net_v6.clone();
    assert!(out.contains(&net6), "{out}");
    assert_banned(&lab, &other, "banned by hand");
    lab.assert_denied(
        Deny::Banned,
        &other,
        other.server_v6,
        SMTP_PORT,
        "banned by hand, IPv6",
    );
    let mut listed = networks(&bans(&lab, false));
    listed.sort();
    let mut want = vec![format!("{}/32", other.client_v4), net6];
    want.sort();
    assert_eq!(listed, want);

    // Lifting a ban forgets its count: ten more failures make a first
    // ban again, not a repeat.
    fail_logins(&client, 10);
    let log = daemon.wait_for_log("ban net=", 1, BOUND);
    assert!(log.contains("(ban 1 in a row)"), "{log}");
    stop(&mut daemon);
}

/// A ban that follows one within the longest ban's time lasts twice as
/// long, also when the daemon restarted in between: the count is kept in
/// the pinned map.
#[test]
fn a_repeated_ban_doubles_across_a_restart() {
    let (lab, mail) = two_client_lab();
    let client = lab.client.clone();
    let flags = ["--ban-time", "2s", "--ban-failures", "3"];
    let mut daemon = start(&lab, &mail, &flags, "serve.log");
    fail_logins(&client, 3);
    daemon.wait_for_log("ban net=", 1, BOUND);
    stop(&mut daemon);
    // The first ban ends (2 s) while no daemon runs.
    let deadline = Instant::now() + BOUND;
    while !bans(&lab, false).is_empty() {
        assert!(Instant::now() < deadline, "the first ban never ended");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut daemon = start(&lab, &mail, &flags, "serve2.log");
    fail_logins(&client, 3);
    let log = daemon.wait_for_log("ban net=", 1, BOUND);
    assert!(
        log.contains("duration=4s (ban 2 in a row)"),
        "the second ban doubles:\n{log}"
    );
    assert_eq!(bans(&lab, false)[0]["count"], 2);
    stop(&mut daemon);
}
