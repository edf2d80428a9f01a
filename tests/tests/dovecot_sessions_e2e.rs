//! Dovecot's open sessions keep their grants (issue 12, item 3): a real
//! Dovecot in a lab's server namespace, `smtp-gate serve` beside it
//! serving the hooks only (no POP3 of its own) and renewing the grants of
//! Dovecot's sessions every second from `doveadm who`. An IMAP client that
//! stays logged in (IDLE) for several windows keeps its grant, and port 25
//! lets it through; once it logged out its grant is renewed no more and
//! lapses, and port 25 refuses it again. A client banned while its session
//! stays open is renewed no more.
//!
//! Needs root, a built binary (`cargo build -p gate-user`), python3 and
//! Dovecot (`cargo xtask setup`); panics otherwise (never skips).

use std::{
    net::IpAddr,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    dovecot::{Dovecot, DovecotOptions, IMAP_PORT},
    imap_client::{imap_login, ImapIdler},
    lab::Lab,
    serve::ServeDaemon,
    smtp::{ConnectResult, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const WINDOW: Duration = Duration::from_secs(5);
const INTERVAL: Duration = Duration::from_secs(1);
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);

/// The client's grant as `smtp-gate list --all --json` shows it.
fn grant_of(lab: &Lab, addr: IpAddr) -> Option<Value> {
    lab.list(&["--all"])
        .into_iter()
        .find(|g| g["address"] == addr.to_string())
}

fn left(grant: &Value) -> f64 {
    grant["left_secs"].as_f64().expect("left_secs")
}

fn start_daemon(lab: &Lab, dovecot: &Dovecot) -> ServeDaemon {
    start_daemon_with(lab, dovecot, "")
}

fn start_daemon_with(lab: &Lab, dovecot: &Dovecot, extra: &str) -> ServeDaemon {
    let mut daemon = dovecot.spawn_hooks_daemon(
        lab,
        &format!(
            "window = \"{}s\"\n\
             dovecot_policy_listen = \"127.0.0.1:10030\"\n\
             dovecot_sessions_interval = \"{}s\"\n\
             dovecot_sessions_command = \"{}\"\n\
             {extra}",
            WINDOW.as_secs(),
            INTERVAL.as_secs(),
            dovecot.who_command()
        ),
    );
    let log = daemon.wait_for_log("Dovecot's open sessions renew their grants", 1, BOUND);
    // Beside Dovecot (which has 110 here) it serves no POP3, so it warns
    // of no certificate it does not need.
    assert!(
        log.contains("serving the mail servers' hooks only"),
        "{log}"
    );
    assert!(!log.contains("no TLS certificate"), "{log}");
    daemon
}

#[test]
fn an_idling_imap_client_keeps_its_grant_until_it_logs_out() {
    let lab = Lab::new();
    let link = lab.client.clone();
    let client = IpAddr::from(link.client_v4);
    let dovecot = Dovecot::start(
        &lab.server_ns,
        &link.client_ns,
        link.server_v4.into(),
        &DovecotOptions {
            users: vec![(USER.into(), PASSWORD.into())],
            include: None,
        },
    );
    let mut daemon = start_daemon(&lab, &dovecot);
    assert!(
        matches!(
            link.connect_v4(SMTP_PORT, DENY_TIMEOUT),
            ConnectResult::TimedOut
        ),
        "no session, no grant: port 25 must drop the client's SYN"
    );

    let idler = ImapIdler::start(
        &link.client_ns,
        link.server_v4.into(),
        IMAP_PORT,
        USER,
        PASSWORD,
    );
    daemon.wait_for_log(
        &format!("grant source=dovecot-sessions addr={client} user={USER} protocol=imap"),
        1,
        BOUND,
    );
    // Three windows in IDLE: the grant never lapses, and a renewal comes
    // every interval (its time left is never far below the window).
    let idle_until = Instant::now() + 3 * WINDOW;
    while Instant::now() < idle_until {
        let grant = grant_of(&lab, client).expect("the idling client has a grant");
        assert_eq!(
            grant["expired"], false,
            "the grant lapsed while in IDLE: {grant}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    assert!(
        matches!(
            link.connect_v4(SMTP_PORT, PASS_TIMEOUT),
            ConnectResult::Connected(_)
        ),
        "three windows after its login the idling client may still send"
    );
    assert_eq!(
        daemon
            .log()
            .matches(&format!("grant source=dovecot-sessions addr={client} "))
            .count(),
        1,
        "renewals are not logged one by one"
    );

    idler.logout();
    // A round may have listed the session just before it ended: after two
    // intervals no renewal is left in flight.
    thread::sleep(2 * INTERVAL + Duration::from_millis(500));
    let mut last = left(&grant_of(&lab, client).expect("the grant is still there"));
    assert!(
        last <= (WINDOW - INTERVAL).as_secs_f64(),
        "renewed after the logout: {last}s left of a {WINDOW:?} window"
    );
    let deadline = Instant::now() + WINDOW + BOUND;
    loop {
        let grant = grant_of(&lab, client).expect("an expired grant stays listed with --all");
        let now_left = left(&grant);
        assert!(
            now_left <= last,
            "renewed after the logout: {last}s, then {now_left}s left"
        );
        last = now_left;
        if grant["expired"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the grant never lapsed: {grant}");
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        matches!(
            link.connect_v4(SMTP_PORT, DENY_TIMEOUT),
            ConnectResult::TimedOut
        ),
        "after the logout's grant lapsed, port 25 must drop the client's SYN again"
    );
    daemon.terminate(BOUND);
}

/// Attack review (issue 12's hooks): the renewer granted banned
/// addresses (`grant source=dovecot-sessions` for them) while a banned
/// client's reported login grants nothing. Dovecot with the shipped 2.3
/// snippet reports the failed guesses that ban the client; its IMAP
/// session stays open in IDLE, and is renewed no more: one refusal line,
/// no grant line, and the grant lapses.
#[test]
fn a_client_banned_while_its_session_stays_open_is_renewed_no_more() {
    let lab = Lab::new();
    let link = lab.client.clone();
    let client = IpAddr::from(link.client_v4);
    let snippet = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/dovecot/smtp-gate-policy-2.3.conf");
    let dovecot = Dovecot::start(
        &lab.server_ns,
        &link.client_ns,
        link.server_v4.into(),
        &DovecotOptions {
            users: vec![(USER.into(), PASSWORD.into())],
            include: Some(snippet),
        },
    );
    // The ban drops no SYN (ban_ports = []): the guesses reach Dovecot.
    let mut daemon = start_daemon_with(
        &lab,
        &dovecot,
        "ban_failures = 2\nban_failure_window = \"5m\"\nban_time = \"1m\"\nban_ports = []\n",
    );
    let idler = ImapIdler::start(
        &link.client_ns,
        link.server_v4.into(),
        IMAP_PORT,
        USER,
        PASSWORD,
    );
    let renewed = format!("grant source=dovecot-sessions addr={client} ");
    daemon.wait_for_log(&renewed, 1, BOUND);
    for guess in ["guess-1", "guess-2"] {
        assert!(!imap_login(
            &link.client_ns,
            link.server_v4.into(),
            IMAP_PORT,
            USER,
            guess
        ));
    }
    daemon.wait_for_log("ban net=", 1, BOUND);
    daemon.wait_for_log(
        &format!(
            "dovecot-sessions refused addr={client} user={USER} protocol=imap reason=banned \
             (open session, not renewed)"
        ),
        1,
        BOUND,
    );
    // No renewal in flight after two intervals; then the grant only ages.
    thread::sleep(2 * INTERVAL + Duration::from_millis(500));
    let mut last = left(&grant_of(&lab, client).expect("the grant is still there"));
    let deadline = Instant::now() + WINDOW + BOUND;
    loop {
        let grant = grant_of(&lab, client).expect("an expired grant stays listed with --all");
        let now_left = left(&grant);
        assert!(
            now_left <= last,
            "renewed while banned: {last}s, then {now_left}s left"
        );
        last = now_left;
        if grant["expired"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the grant never lapsed: {grant}");
        thread::sleep(Duration::from_millis(200));
    }
    let log = daemon.log();
    assert_eq!(log.matches(&renewed).count(), 1, "{log}");
    assert_eq!(
        log.matches("dovecot-sessions refused").count(),
        1,
        "said once: {log}"
    );
    idler.logout();
    daemon.terminate(BOUND);
    let log = daemon.log();
    let statistics = log
        .lines()
        .find(|l| l.contains("statistics hook=dovecot-policy "))
        .unwrap_or_else(|| panic!("no statistics line: {log}"));
    let banned: u64 = statistics
        .split(' ')
        .find_map(|field| field.strip_prefix("sessions_banned="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sessions_banned: {statistics}"));
    assert!(banned >= 1, "{statistics}");
}
