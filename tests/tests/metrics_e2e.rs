//! Prometheus metrics end to end (issue 14): the real `smtp-gate serve` and
//! `smtp-gate agent` in lab namespaces with `metrics_listen` on their
//! namespace's loopback, scraped over HTTP, every page checked by
//! Prometheus's own `promtool check metrics`:
//!
//! - after a known sequence of packets (a SYN dropped before the login, one
//!   let through after it) the page's packet counters are those of
//!   `smtp-gate stats --json`, and so are `stats --prometheus`'s;
//! - after a known sequence of POP3 logins (right and wrong passwords,
//!   USER/PASS and APOP) the logins are counted by method and result, the
//!   grant and a ban by family;
//! - only `GET /metrics` is served (404, 405);
//! - a bad `metrics_listen`, or a port taken, stops the daemon naming the
//!   key, before the gate is touched; READY=1 comes once the page answers;
//!   a SIGHUP keeps the listener and says the key needs a restart;
//! - the grant bus: the publisher's page counts its publications, the
//!   edge agent's its grants applied and the grant in its map.
//!
//! Needs root, a built binary (`cargo build -p gate-user`), python3,
//! promtool (Debian's prometheus) and redis-server; panics otherwise
//! (never skips).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use gate_common::Outcome;
use serde_json::{json, Value};
use testkit::{
    bus_lab::{BusLab, BusLabOptions},
    denial::{Deny, GateVerdict},
    gate_binary::smtp_gate_in,
    lab::Lab,
    mail::MailFixture,
    metrics::{promtool_check, request, require_promtool, scrape, Samples},
    netns::in_netns,
    notify::NotifySocket,
    pop3_client::{pop3_client, require_pop3_clients},
    process::describe,
    serve::{ServeDaemon, ServeStart},
    smtp::{PASS_TIMEOUT, SMTP_PORT},
};

const USER: &str = "alice";
const SECRET: &str = "wonderland";
/// Where the daemons serve their metrics, each on its namespace's
/// loopback: the example config's port.
const METRICS: &str = "127.0.0.1:10110";
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);

fn metrics_addr() -> SocketAddr {
    METRICS.parse().unwrap()
}

fn mail_fixture() -> MailFixture {
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
    mail
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The daemon's flags: the gate on the lab's link, POP3, a short failure
/// delay, the metrics, and `extra`.
fn serve_flags(lab: &Lab, mail: &MailFixture, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--iface",
        &lab.client.server_iface,
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

fn start(lab: &Lab, mail: &MailFixture, extra: &[&str], log: &str) -> ServeDaemon {
    let args = serve_flags(lab, mail, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.spawn_serve(&args, &mail.dir().join(log));
    lab.wait_pop3(&mut daemon);
    daemon
}

fn stop(daemon: &mut ServeDaemon) {
    match daemon.terminate(BOUND) {
        (Some(status), _) if status.success() => {}
        (status, took) => panic!(
            "the daemon ended with {status:?} after {took:?} of SIGTERM; log:\n{}",
            daemon.log()
        ),
    }
}

/// Scrapes until `done` is true of the page (a census is at most a few
/// seconds old, the agent's status two), within [`BOUND`]; gives the page.
fn scrape_until(ns: &str, addr: SocketAddr, what: &str, done: impl Fn(&Samples) -> bool) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        let page = scrape(ns, addr);
        if done(&Samples::parse(&page)) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on the page within {BOUND:?}:\n{page}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// The gate's families of `page` agree with two readings of `stats --json`
/// taken around it: every counter between them (the lab's own traffic,
/// neighbour discovery, may move `not_gated`), and equal to them where
/// they did not move.
#[track_caller]
fn assert_counters_between(page: &Samples, before: &Value, after: &Value, what: &str) {
    for outcome in Outcome::ALL {
        let (family, label) = if outcome.is_reason() {
            ("smtp_gate_packet_reasons_total", "reason")
        } else {
            ("smtp_gate_packets_total", "outcome")
        };
        let name = outcome.name();
        let shown = page.value(family, &[(label, name)]) as u64;
        let (was, is) = (
            before[name].as_u64().unwrap(),
            after[name].as_u64().unwrap(),
        );
        assert!(
            was <= shown && shown <= is,
            "{what}: {family}{{{label}=\"{name}\"}} is {shown}, stats --json said {was} \
             before and {is} after"
        );
        if was == is {
            assert_eq!(shown, was, "{what}: {name}");
        }
    }
}

/// The main path: known packets and logins, the page against `stats
/// --json`, `stats --prometheus`, what is not served.
#[test]
fn serve_page_matches_stats_and_counts_logins() {
    require_promtool();
    require_pop3_clients();
    let lab = Lab::new();
    let mail = mail_fixture();
    let ns = lab.server_ns.clone();
    let mut daemon = start(&lab, &mail, &["--metrics-listen", METRICS], "serve.log");

    let page = scrape(&ns, metrics_addr());
    promtool_check(&page, "serve's page at start");
    let first = Samples::parse(&page);
    assert_eq!(first.value("smtp_gate_grants", &[("family", "ipv4")]), 0.0);
    assert_eq!(
        first.value(
            "smtp_gate_pop3_logins_total",
            &[("method", "user-pass"), ("result", "ok")]
        ),
        0.0
    );

    // Known packets: a SYN to the gated port before any login is dropped
    // (its retransmissions too), ...
    lab.assert_denied(
        Deny::Drop,
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "before the login",
    );
    // ... known logins: a wrong and a right password, APOP, a user that
    // does not exist, ...
    let results = pop3_client(
        &lab.client.client_ns,
        lab.client.server_v4.into(),
        json!([
            {"op": "connect"},
            {"op": "login", "user": USER, "password": "wrong"},
            {"op": "login", "user": USER, "password": SECRET},
            {"op": "quit"},
            {"op": "connect"},
            {"op": "apop", "user": USER, "secret": SECRET},
            {"op": "quit"},
            {"op": "connect"},
            {"op": "login", "user": "nobody", "password": "x"},
            {"op": "quit"},
        ]),
    );
    let failed: Vec<bool> = results
        .iter()
        .filter(|r| r["op"] == "login" || r["op"] == "apop")
        .map(|r| r["error"].as_str().is_some_and(|e| e.starts_with("-ERR")))
        .collect();
    assert_eq!(failed, [true, false, false, true], "{results:#?}");
    // ... and a SYN after the login passes, granted.
    let judged = lab.judge(&lab.client, lab.client.server_v4, SMTP_PORT, PASS_TIMEOUT);
    assert_eq!(judged.verdict(), GateVerdict::Passed, "{judged}");
    // A ban of an IPv6 network.
    lab.gate_ok(&["ban", "add", "2001:db8:99::1"]);

    // The census is renewed within seconds.
    let page = scrape_until(&ns, metrics_addr(), "the grant and the ban", |s| {
        s.get("smtp_gate_grants", &[("family", "ipv4")]) == Some(1.0)
            && s.get("smtp_gate_bans", &[("family", "ipv6")]) == Some(1.0)
    });
    promtool_check(&page, "serve's page after the logins");
    let s = Samples::parse(&page);
    for (name, family, value) in [
        ("smtp_gate_grants", "ipv6", 0.0),
        ("smtp_gate_grant_map_entries", "ipv4", 1.0),
        ("smtp_gate_bans", "ipv4", 0.0),
        ("smtp_gate_ban_map_entries", "ipv6", 1.0),
    ] {
        assert_eq!(
            s.value(name, &[("family", family)]),
            value,
            "{name} {family}"
        );
    }
    let age = s.value("smtp_gate_census_age_seconds", &[]);
    assert!((0.0..6.0).contains(&age), "census age {age}");
    // Every login by method and result, and nothing else.
    let expected = [
        ("user-pass", "ok", 1.0),
        ("user-pass", "failed", 2.0),
        ("apop", "ok", 1.0),
    ];
    for method in ["user-pass", "apop", "sasl-plain"] {
        for result in [
            "ok",
            "failed",
            "in-use",
            "invalid-maildrop",
            "unsafe-maildrop",
            "maildrop-error",
            "cut",
        ] {
            let want = expected
                .iter()
                .find(|(m, r, _)| *m == method && *r == result)
                .map_or(0.0, |(_, _, n)| *n);
            let labels = [("method", method), ("result", result)];
            assert_eq!(
                s.value("smtp_gate_pop3_logins_total", &labels),
                want,
                "logins {labels:?}"
            );
        }
    }
    assert!(s.value("smtp_gate_pop3_sessions_ended_total", &[("reason", "quit")]) >= 3.0);
    assert_eq!(
        s.value(
            "smtp_gate_pop3_tls_handshakes_total",
            &[("result", "failed")]
        ),
        0.0
    );

    // The packet counters are stats --json's.
    let before = lab.stats();
    let page = Samples::parse(&scrape(&ns, metrics_addr()));
    let after = lab.stats();
    assert_counters_between(&page, &before, &after, "the daemon's page");
    let denied = page.value("smtp_gate_packets_total", &[("outcome", "denied_drop")]);
    assert!(denied >= 1.0, "the SYN before the login: {denied}");
    assert!(page.value("smtp_gate_packets_total", &[("outcome", "granted")]) >= 1.0);

    // stats --prometheus: the same gate, once.
    let before = lab.stats();
    let printed = lab.gate_ok(&["stats", "--prometheus"]);
    let after = lab.stats();
    promtool_check(&printed, "stats --prometheus");
    let printed = Samples::parse(&printed);
    assert_counters_between(&printed, &before, &after, "stats --prometheus");
    assert_eq!(
        printed.value("smtp_gate_grants", &[("family", "ipv4")]),
        1.0
    );
    assert_eq!(printed.value("smtp_gate_bans", &[("family", "ipv6")]), 1.0);
    assert!(printed.has_family("smtp_gate_build_info"));
    assert!(
        !printed.has_family("smtp_gate_pop3_logins_total"),
        "stats --prometheus has no daemon's counters"
    );
    assert!(lab
        .gate_err(&["stats", "--prometheus", "--json"])
        .contains("cannot be used with"));

    // Only GET (and HEAD) /metrics.
    for (method, path, status) in [
        ("GET", "/", 404),
        ("GET", "/metrics/x", 404),
        ("POST", "/metrics", 405),
        ("PUT", "/metrics", 405),
        ("HEAD", "/metrics", 200),
    ] {
        let answer = request(&ns, metrics_addr(), method, path, "");
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.head);
    }
    stop(&mut daemon);
}

/// A bad value stops the daemon naming the key (the file's) or the flag;
/// a port another process holds stops it naming the key and the address,
/// before it touches the gate; the agent alike.
#[test]
fn a_bad_or_taken_metrics_listen_stops_the_daemon_naming_the_key() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let config = mail.dir().join("smtp-gate.toml");
    std::fs::write(&config, "metrics_listen = [\"localhost:10110\"]\n").unwrap();
    let mut flags = serve_flags(&lab, &mail, &["--config", &path_str(&config)]);
    flags.insert(0, "serve".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = smtp_gate_in(&lab.server_ns, &flags);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr.contains(&format!(
            "config file {}: key `metrics_listen`: ",
            config.display()
        )),
        "{}",
        describe(&out)
    );

    let out = smtp_gate_in(
        &lab.server_ns,
        &["serve", "--metrics-listen", "localhost:10110"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--metrics-listen"),
        "{}",
        describe(&out)
    );

    // The port taken in the daemon's namespace.
    let _taken = in_netns(&lab.server_ns, || {
        std::net::TcpListener::bind(METRICS).expect("binding the port first")
    });
    let args = serve_flags(&lab, &mail, &["--metrics-listen", METRICS]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.spawn_serve(&args, &mail.dir().join("taken.log"));
    let status = daemon.wait_exit(BOUND).expect("the daemon stops by itself");
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains(&format!("metrics_listen = {METRICS}: cannot listen: ")),
        "{log}"
    );
    assert!(
        lab.attached_ifaces().is_empty(),
        "the gate was touched: {:?}",
        lab.pins()
    );
    let pin = lab.pin_dir_str();
    let mut agent = lab.spawn_daemon_with(
        ServeStart::default(),
        "agent",
        &[
            "--iface",
            &lab.client.server_iface,
            "--pin-dir",
            &pin,
            "--bus",
            "redis://127.0.0.1:1",
            "--bus-position-file",
            &path_str(&mail.dir().join("position")),
            "--metrics-listen",
            METRICS,
        ],
        &mail.dir().join("agent.log"),
    );
    let status = agent.wait_exit(BOUND).expect("the agent stops by itself");
    assert!(!status.success());
    assert!(
        agent
            .log()
            .contains(&format!("metrics_listen = {METRICS}: cannot listen: ")),
        "{}",
        agent.log()
    );
    assert!(lab.attached_ifaces().is_empty(), "{:?}", lab.pins());
}

/// READY=1 comes once the page answers: a scrape right after it gets the
/// gate's counters. A SIGHUP that changes `metrics_listen` keeps the
/// listener and says that only a restart applies it.
#[test]
fn ready_means_the_page_answers_and_a_reload_keeps_the_listener() {
    let lab = Lab::new();
    let mail = mail_fixture();
    let config = mail.dir().join("smtp-gate.toml");
    let write_config = |addr: &str| {
        std::fs::write(&config, format!("metrics_listen = [\"{addr}\"]\n")).unwrap();
    };
    write_config(METRICS);
    let notify = NotifySocket::new();
    let notify_path = notify.path();
    let env = [("NOTIFY_SOCKET", notify_path.as_str())];
    let args = serve_flags(&lab, &mail, &["--config", &path_str(&config)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut notify = notify;
    let mut daemon = lab.spawn_serve_with(
        ServeStart {
            env: &env,
            ..ServeStart::default()
        },
        &args,
        &mail.dir().join("serve.log"),
    );
    let deadline = Instant::now() + BOUND;
    while notify
        .wait_for(Duration::from_millis(500), |n| n.says("READY", "1"))
        .is_none()
    {
        assert!(
            daemon.exited().is_none() && Instant::now() < deadline,
            "no READY=1; messages:\n{}log:\n{}",
            notify.transcript(),
            daemon.log()
        );
    }
    let page = scrape(&lab.server_ns, metrics_addr());
    assert!(
        Samples::parse(&page).has_family("smtp_gate_packets_total"),
        "right after READY=1:\n{page}"
    );

    write_config("127.0.0.1:10112");
    daemon.signal(libc::SIGHUP);
    let log = daemon.wait_for_log("`metrics_listen` changed", 1, BOUND);
    assert!(log.contains("only a restart applies it"), "{log}");
    scrape(&lab.server_ns, metrics_addr());
    stop(&mut daemon);
}

/// The grant bus: `pop` publishes a login (its page counts the
/// publication and the login), the edge's agent applies it (its page
/// counts the grant applied and shows it in its map).
#[test]
fn the_publisher_and_the_agent_show_the_bus() {
    require_promtool();
    let mut lab = BusLab::new(BusLabOptions {
        edges: 1,
        ..BusLabOptions::default()
    });
    lab.start_serve(
        Duration::from_secs(600),
        &format!("metrics_listen = [\"{METRICS}\"]\n"),
        true,
    );
    lab.start_agent_with(1, &["--metrics-listen", METRICS]);
    let from = lab.new_source();
    let login = lab.login_from(from);
    assert!(login.is_ok(), "{}", login.answer);
    let pop = lab.hosts.host("pop").ns.clone();
    let edge = lab.hosts.host("edge1").ns.clone();

    let page = scrape_until(&pop, metrics_addr(), "the publication", |s| {
        s.get(
            "smtp_gate_bus_publications_total",
            &[("result", "published")],
        ) == Some(1.0)
    });
    promtool_check(&page, "the publisher's page");
    let s = Samples::parse(&page);
    assert_eq!(s.value("smtp_gate_bus_connected", &[]), 1.0);
    assert_eq!(
        s.value(
            "smtp_gate_pop3_logins_total",
            &[("method", "user-pass"), ("result", "ok")]
        ),
        1.0
    );
    assert!(
        !s.has_family("smtp_gate_packets_total"),
        "a host without a gate"
    );

    let family = match from {
        IpAddr::V4(_) => "ipv4",
        IpAddr::V6(_) => "ipv6",
    };
    let page = scrape_until(&edge, metrics_addr(), "the grant applied", |s| {
        s.get("smtp_gate_bus_applied_total", &[("op", "grant")]) == Some(1.0)
            && s.get("smtp_gate_grants", &[("family", family)]) == Some(1.0)
    });
    promtool_check(&page, "the agent's page");
    let s = Samples::parse(&page);
    assert_eq!(s.value("smtp_gate_bus_connected", &[]), 1.0);
    assert_eq!(
        s.value("smtp_gate_bus_rejected_total", &[("what", "entry")]),
        0.0
    );
    assert!(s.has_family("smtp_gate_packets_total"));
    assert!(!s.has_family("smtp_gate_pop3_logins_total"));
}
