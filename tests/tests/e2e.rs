//! End to end: the real `smtp-gate` binary on veths between network
//! namespaces, real TCP connections from a client namespace to an SMTP
//! listener in the server namespace. Each test builds its own lab.
//!
//! Needs root and a built binary (`cargo build`), bpftool and python3 (the
//! POP3 client of the daemon's tests); panics otherwise.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use gate_common::{
    map_names::{GRANTS_V4, GRANTS_V6, LOG_BUCKETS},
    LogBucket, DEFAULT_GRANT_CAPACITY,
};
use gate_tests::stackdiff::raw::RawSender;
use serde_json::json;
use smtp_gate::gate::{object::lru_max_entries, GateMaps, PinDir};
use testkit::{
    cpus::{allowed_cpus, on_cpu},
    denial::{Deny, GateVerdict, Judge},
    lab::{Lab, LabOptions, Link},
    mail::MailFixture,
    packets::{tcp_flags::SYN, PacketBuilder},
    pop3_client::{pop3_client, require_pop3_clients},
    smtp::{assert_connected, ConnectResult, Syns, BANNER, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

/// How long the daemon may take to notice and act on a change (it looks
/// every few seconds), or to exit: only a hang takes longer.
const EVENT_BOUND: Duration = Duration::from_secs(30);

/// One tick of the gate's clock at HZ=100 and more, in seconds: how far a
/// stamp on it may be from the test's own clock.
const TICK_SLACK: f64 = 0.01;

fn lab_with(options: LabOptions) -> Lab {
    Lab::with_options(options)
}

fn v4(link: &Link) -> String {
    link.client_v4.to_string()
}

fn v6(link: &Link) -> String {
    link.client_v6.to_string()
}

#[test]
fn drop_mode_denies_until_granted() {
    let lab = Lab::new();
    let out = lab.attach(&[]);
    assert!(out.contains("attached to"), "attach said: {out}");
    let client = &lab.client;

    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "before any grant");
    let accepted_before = lab.accepted();

    let out = lab.gate_ok(&["grant", &v4(client)]);
    assert!(
        out.contains(&format!("granted {}", client.client_v4)),
        "grant said: {out}"
    );
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "after the grant",
    );
    assert_eq!(
        lab.accepted(),
        accepted_before + 1,
        "the listener saw the connection"
    );
}

#[test]
fn grant_expires_after_the_window() {
    let window = Duration::from_secs(2);
    let lab = Lab::new();
    lab.attach(&["--window", "2s"]);
    let client = &lab.client;
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "before any grant");

    let granted = IpAddr::from(client.client_v4);
    lab.assert_passes_while_fresh(
        client,
        client.server_v4,
        SMTP_PORT,
        granted,
        || {
            lab.gate_ok(&["grant", &v4(client)]);
        },
        "inside the window",
    );

    lab.assert_grant_expires(client, client.server_v4, SMTP_PORT, granted, window, "2s");
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "after the window");

    assert!(
        lab.list(&[]).is_empty(),
        "list shows an expired grant as current"
    );
    let all = lab.list(&["--all"]);
    assert_eq!(all.len(), 1, "list --all: {all:?}");
    assert_eq!(all[0]["address"], v4(client));
    assert_eq!(all[0]["expired"], true, "list --all: {all:?}");
}

#[test]
fn established_connection_survives_expiry() {
    let window = Duration::from_secs(2);
    let lab = Lab::new();
    lab.attach(&["--window", "2s"]);
    let client = &lab.client;

    let granted = IpAddr::from(client.client_v4);
    let mut session = lab.session_while_fresh(
        client,
        client.server_v4,
        SMTP_PORT,
        granted,
        || {
            lab.gate_ok(&["grant", &v4(client)]);
        },
        "connecting inside the window",
    );
    assert_eq!(session.banner, BANNER);
    assert_eq!(
        session.exchange("NOOP").expect("NOOP inside the window"),
        "250 OK NOOP"
    );

    lab.assert_grant_expires(client, client.server_v4, SMTP_PORT, granted, window, "2s");

    let reply = session
        .exchange("EHLO after-expiry")
        .unwrap_or_else(|e| panic!("the established connection broke after expiry: {e}"));
    assert_eq!(reply, "250 OK EHLO after-expiry");
    assert_eq!(session.exchange("QUIT").expect("QUIT"), "221 bye");
}

#[test]
fn attach_exempt_networks_always_pass() {
    let lab = lab_with(LabOptions {
        exempt_client: true,
        ..LabOptions::default()
    });
    let exempt = lab.exempt();
    lab.attach(&["--exempt", &exempt.net_v4, "--exempt", &exempt.net_v6]);

    let syns = exempt
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("exempt client, IPv4")
        .plus(
            &exempt
                .attempt_v6(SMTP_PORT, PASS_TIMEOUT)
                .expect_connected("exempt client, IPv6"),
        );
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "the other client, not exempt",
    );
    let exempted = lab.stat("exempt");
    assert!(
        syns.admits(exempted),
        "{exempted} SYNs counted exempt, {syns} sent: {}",
        lab.stats()
    );

    let listed: Vec<String> =
        serde_json::from_str(&lab.gate_ok(&["exempt", "list", "--json"])).expect("JSON list");
    assert_eq!(listed, vec![exempt.net_v4.clone(), exempt.net_v6.clone()]);

    // Given again, --exempt replaces the set: a network left out stops
    // passing (a planted bug that added to the set passed the suite).
    lab.attach(&["--exempt", "192.0.2.0/24"]);
    let listed: Vec<String> =
        serde_json::from_str(&lab.gate_ok(&["exempt", "list", "--json"])).expect("JSON list");
    assert_eq!(listed, vec!["192.0.2.0/24".to_string()]);
    lab.assert_dropped(
        exempt,
        exempt.server_v4,
        SMTP_PORT,
        "the client whose network left the exempt set",
    );
}

#[test]
fn exempt_add_and_del_apply_at_once() {
    let lab = lab_with(LabOptions {
        exempt_client: true,
        ..LabOptions::default()
    });
    let exempt = lab.exempt();
    lab.attach(&[]);
    lab.assert_dropped(exempt, exempt.server_v4, SMTP_PORT, "not yet exempt");

    let out = lab.gate_ok(&["exempt", "add", &v4(exempt)]);
    assert!(
        out.contains(&format!("{}/32", exempt.client_v4)),
        "exempt add said: {out}"
    );
    lab.gate_ok(&["exempt", "add", &exempt.net_v6]);
    assert_connected(
        exempt.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "after exempt add (v4 host)",
    );
    assert_connected(
        exempt.connect_v6(SMTP_PORT, PASS_TIMEOUT),
        "after exempt add (v6 net)",
    );

    lab.gate_ok(&["exempt", "del", &format!("{}/32", exempt.client_v4)]);
    lab.assert_dropped(exempt, exempt.server_v4, SMTP_PORT, "after exempt del");
}

fn check_reset_mode(mode: &str, xdp_pass_on_clients: bool) {
    let lab = lab_with(LabOptions {
        xdp_pass_on_clients,
        ..LabOptions::default()
    });
    lab.attach(&["--mode", mode, "--deny", "reset"]);
    let client = &lab.client;
    let syns = lab
        .assert_reset(
            client,
            client.server_v4,
            SMTP_PORT,
            &format!("--mode {mode} --deny reset, IPv4"),
        )
        .attempt
        .syns
        .plus(
            &lab.assert_reset(
                client,
                client.server_v6,
                SMTP_PORT,
                &format!("--mode {mode} --deny reset, IPv6"),
            )
            .attempt
            .syns,
        );
    let stats = lab.stats();
    assert!(
        syns.admits(stats["denied_reset"].as_u64().unwrap_or(0)),
        "{syns} refused: {stats}"
    );
    assert_eq!(stats["denied_drop"], 0, "stats: {stats}");

    lab.gate_ok(&["grant", &v4(client)]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        &format!("--mode {mode}, granted"),
    );
}

#[test]
fn reset_mode_refuses_at_once_native_xdp() {
    check_reset_mode("xdp", true);
}

#[test]
fn reset_mode_refuses_at_once_generic_xdp() {
    check_reset_mode("xdp-skb", false);
}

#[test]
fn reset_mode_refuses_at_once_tc() {
    check_reset_mode("tc", false);
}

#[test]
fn tc_mode_denies_grants_and_revokes() {
    let lab = Lab::new();
    let out = lab.attach(&["--mode", "tc"]);
    assert!(out.contains("(tc)"), "attach said: {out}");
    let iface = &lab.client.server_iface;
    assert!(
        lab.xdp_prog_ids(iface).is_empty(),
        "tc mode left an XDP program"
    );
    assert_eq!(lab.attached_ifaces(), vec![iface.clone()]);
    assert!(
        lab.pins().contains(&format!("link_tc_{iface}")),
        "pins: {:?}",
        lab.pins()
    );

    let client = &lab.client;
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "tc, no grant");
    lab.gate_ok(&["grant", &v4(client)]);
    assert_connected(client.connect_v4(SMTP_PORT, PASS_TIMEOUT), "tc, granted");

    let out = lab.gate_ok(&["revoke", &v4(client)]);
    assert!(out.contains("revoked"), "revoke said: {out}");
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "tc, revoked");
    let err = lab.gate_err(&["revoke", &v4(client)]);
    assert!(err.contains("has no grant"), "second revoke said: {err}");
}

#[test]
fn gate_outlives_attach_and_detach_removes_it() {
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();
    // `attach` has exited by the time `Lab::attach` returns.
    lab.attach(&[]);
    let pins = lab.pins();
    for wanted in [
        format!("link_xdp_{iface}"),
        "settings".into(),
        "grants_v4".into(),
    ] {
        assert!(pins.contains(&wanted), "{wanted} not pinned: {pins:?}");
    }
    assert_eq!(
        lab.xdp_prog_ids(&iface).len(),
        1,
        "{}",
        lab.server_link_show(&iface)
    );
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "after the attaching process exited",
    );

    let out = lab.detach();
    assert!(
        out.contains(&format!("detached from {iface}")),
        "detach said: {out}"
    );
    assert!(
        lab.pins().is_empty(),
        "pins left after detach: {:?}",
        lab.pins()
    );
    assert!(
        lab.xdp_prog_ids(&iface).is_empty(),
        "an XDP program is left after detach: {}",
        lab.server_link_show(&iface)
    );
    assert_connected(
        lab.client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "after detach, without a grant",
    );
    let err = lab.gate_err(&["list"]);
    assert!(
        err.contains("nothing attached"),
        "list after detach said: {err}"
    );
}

#[test]
fn ipv6_denied_then_granted() {
    let lab = Lab::new();
    lab.attach(&[]);
    let client = &lab.client;
    lab.assert_dropped(client, client.server_v6, SMTP_PORT, "IPv6, no grant");

    lab.gate_ok(&["grant", &v6(client)]);
    assert_connected(client.connect_v6(SMTP_PORT, PASS_TIMEOUT), "IPv6, granted");
    lab.assert_dropped(
        client,
        client.server_v4,
        SMTP_PORT,
        "IPv4 of the same host: the IPv6 grant must not cover it",
    );
    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["address"], v6(client));
}

#[test]
fn mapped_ipv6_grant_lets_the_ipv4_client_in() {
    let lab = Lab::new();
    lab.attach(&[]);
    let client = &lab.client;
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "no grant");

    let mapped = format!("::ffff:{}", client.client_v4);
    lab.gate_ok(&["grant", &mapped]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        &format!("after `grant {mapped}`"),
    );
    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(
        grants[0]["address"],
        v4(client),
        "the grant is listed as IPv4"
    );
}

#[test]
fn reattach_updates_settings_without_stacking() {
    let lab = lab_with(LabOptions {
        smtp_ports: vec![25, 587],
        ..LabOptions::default()
    });
    let iface = lab.client.server_iface.clone();
    let client = &lab.client;
    lab.attach(&[]);
    let ids = lab.xdp_prog_ids(&iface);
    assert_eq!(ids.len(), 1, "{}", lab.server_link_show(&iface));
    lab.assert_dropped(client, client.server_v4, 25, "port 25 gated");
    assert_connected(
        client.connect_v4(587, PASS_TIMEOUT),
        "port 587 not gated yet",
    );

    let out = lab.attach(&["--ports", "587"]);
    assert!(
        out.contains("settings updated"),
        "second attach said: {out}"
    );
    assert_eq!(
        lab.xdp_prog_ids(&iface),
        ids,
        "the second attach changed or stacked the XDP program: {}",
        lab.server_link_show(&iface)
    );
    assert_eq!(lab.attached_ifaces(), vec![iface.clone()]);
    assert_connected(
        client.connect_v4(25, PASS_TIMEOUT),
        "port 25 no longer gated",
    );
    lab.assert_dropped(client, client.server_v4, 587, "port 587 gated now");

    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["ports"], serde_json::json!([587]), "{settings}");
    assert_eq!(settings["deny"], "drop", "{settings}");
}

#[test]
fn switching_mode_replaces_the_attachment() {
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();
    lab.attach(&["--window", "7m"]);
    assert_eq!(lab.xdp_prog_ids(&iface).len(), 1);

    let out = lab.attach(&["--mode", "tc"]);
    assert!(
        out.contains("replacing xdp"),
        "attach --mode tc said: {out}"
    );
    assert!(
        lab.xdp_prog_ids(&iface).is_empty(),
        "the XDP program stayed after switching to tc: {}",
        lab.server_link_show(&iface)
    );
    assert_eq!(
        lab.pins().iter().filter(|p| p.starts_with("link_")).count(),
        1,
        "{:?}",
        lab.pins()
    );
    assert!(
        lab.pins().contains(&format!("link_tc_{iface}")),
        "{:?}",
        lab.pins()
    );

    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(
        settings["window_secs"], 420.0,
        "the window was lost: {settings}"
    );

    let client = &lab.client;
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "tc after switching");
    lab.gate_ok(&["grant", &v4(client)]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "tc after switching, granted",
    );
}

#[test]
fn stats_count_denials_and_grants() {
    let lab = Lab::new();
    lab.attach(&[]);
    let client = &lab.client;
    let mut sent = Syns::exactly(0);
    for i in 0..3 {
        let judged = lab.assert_dropped(
            client,
            client.server_v4,
            SMTP_PORT,
            &format!("denied attempt {i}"),
        );
        sent = sent.plus(&judged.attempt.syns);
    }
    let stats = lab.stats();
    let dropped = stats["denied_drop"].as_u64().unwrap_or(0);
    assert!(
        sent.admits(dropped),
        "one dropped SYN counted per SYN sent ({sent}): {stats}"
    );
    assert_eq!(stats["granted"], 0, "{stats}");

    lab.gate_ok(&["grant", &v4(client)]);
    let passed = client
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("granted");
    let stats = lab.stats();
    assert!(
        passed.admits(stats["granted"].as_u64().unwrap_or(0)),
        "one granted SYN counted per SYN sent ({passed}): {stats}"
    );
    assert_eq!(stats["denied_drop"], dropped, "{stats}");
    assert!(
        stats["not_gated"].as_u64().unwrap_or(0) > 0,
        "the handshake's ACKs are not gated: {stats}"
    );

    let table = lab.gate_ok(&["stats"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("denied_drop"))
        .unwrap_or_else(|| panic!("no denied_drop line: {table}"));
    assert_eq!(
        line.split_whitespace().last(),
        Some(dropped.to_string().as_str()),
        "{table}"
    );
}

/// A retransmitted SYN is judged again, and the gate counts every SYN the
/// client says it sent: what the denial judgements of these tests rest on
/// (a dropped SYN tells itself from a slow one by that count).
#[test]
fn a_retransmitted_syn_is_dropped_and_counted_again() {
    let lab = Lab::new();
    lab.attach(&[]);
    let client = &lab.client;
    // Past the first retransmission (1 s) by far, short of the third (7 s).
    let judged = lab.judge(client, client.server_v4, SMTP_PORT, Duration::from_secs(5));
    assert_eq!(judged.attempt.result, ConnectResult::TimedOut, "{judged}");
    assert!(
        judged.attempt.syns.at_least() >= 2,
        "the client sent no retransmission in 5 s: {judged}"
    );
    assert_eq!(judged.verdict(), GateVerdict::Denied, "{judged}");
    assert!(
        judged.attempt.syns.admits(judged.moved.of("denied_drop")),
        "{judged}"
    );
}

#[test]
fn list_shows_grants() {
    let lab = Lab::new();
    lab.attach(&["--window", "10m"]);
    let client = &lab.client;
    assert_eq!(lab.gate_ok(&["list"]).trim(), "no grants");

    let before_grant = Instant::now();
    lab.gate_ok(&["grant", &v4(client)]);
    let out = lab.gate_ok(&["grant", &v6(client), "--for", "1h"]);
    assert!(out.contains("for 1h"), "grant --for said: {out}");

    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 2, "{grants:?}");
    let find = |addr: &str| {
        grants
            .iter()
            .find(|g| g["address"] == addr)
            .unwrap_or_else(|| panic!("{addr} not listed: {grants:?}"))
    };
    let g4 = find(&v4(client));
    assert_eq!(g4["lifetime_secs"], 600.0, "{g4}");
    assert_eq!(g4["expired"], false, "{g4}");
    // The stamp is the gate's clock when `grant` ran: no older than the
    // time since just before it (give or take one tick of that clock).
    let age = g4["age_secs"].as_f64().expect("age_secs");
    let since_grant = before_grant.elapsed().as_secs_f64();
    assert!(
        (0.0..=since_grant + TICK_SLACK).contains(&age),
        "age {age} s, {since_grant} s after the grant: {g4}"
    );
    let left = g4["left_secs"].as_f64().expect("left_secs");
    assert!(
        (left - (600.0 - age)).abs() < 1e-6,
        "left_secs {left}: {g4}"
    );
    let g6 = find(&v6(client));
    assert_eq!(g6["lifetime_secs"], 3600.0, "{g6}");

    let table = lab.gate_ok(&["list"]);
    assert!(
        table.contains(&v4(client)) && table.contains(&v6(client)),
        "list table: {table}"
    );
}

#[test]
fn grant_for_overrides_the_window() {
    let lab = Lab::new();
    lab.attach(&[]); // the default window: 15 minutes
    let client = &lab.client;
    let granted = IpAddr::from(client.client_v4);
    lab.assert_passes_while_fresh(
        client,
        client.server_v4,
        SMTP_PORT,
        granted,
        || {
            lab.gate_ok(&["grant", &v4(client), "--for", "2s"]);
        },
        "inside --for 2s",
    );
    lab.assert_grant_expires(
        client,
        client.server_v4,
        SMTP_PORT,
        granted,
        Duration::from_secs(2),
        "--for 2s",
    );
}

#[test]
fn settings_change_the_running_gate() {
    let lab = Lab::new();
    lab.attach(&["--mode", "xdp-skb"]);
    let client = &lab.client;
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "drop");

    lab.gate_ok(&["settings", "--deny", "reset"]);
    let refused = lab
        .assert_reset(
            client,
            client.server_v4,
            SMTP_PORT,
            "after settings --deny reset",
        )
        .attempt
        .syns;

    lab.gate_ok(&["settings", "--deny", "monitor"]);
    let monitored = client
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("monitor mode");
    let stats = lab.stats();
    assert!(
        monitored.admits(stats["monitored"].as_u64().unwrap_or(0)),
        "{monitored} monitored: {stats}"
    );
    assert!(
        refused.admits(stats["denied_reset"].as_u64().unwrap_or(0)),
        "{refused} refused: {stats}"
    );

    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["deny"], "monitor", "{settings}");
    let attached = settings["attached"].as_array().expect("attached list");
    assert_eq!(attached.len(), 1, "{settings}");
    assert_eq!(
        attached[0]["iface"],
        client.server_iface.as_str(),
        "{settings}"
    );
    assert_eq!(attached[0]["mode"], "xdp-skb", "{settings}");
    assert_eq!(attached[0]["state"], "attached", "{settings}");
}

#[test]
fn errors_name_the_problem() {
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();

    let err = lab.gate_err(&["list"]);
    assert!(
        err.contains("nothing attached"),
        "list on an empty pin dir: {err}"
    );

    let out = lab.gate_in_server(&["attach", "--iface", "nosuchif0"]);
    assert!(
        !out.status.success(),
        "attach to a missing interface succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuchif0"), "attach --iface nosuchif0: {err}");

    let err = lab.gate_err(&["grant", "300.1.1.1"]);
    assert!(err.contains("300.1.1.1"), "grant 300.1.1.1: {err}");

    let out = lab.gate_in_server(&["attach", "--iface", &iface, "--window", "5x"]);
    assert!(!out.status.success(), "attach --window 5x succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad duration"), "attach --window 5x: {err}");
    let err = lab.gate_err(&["grant", "10.231.1.2", "--for", "5x"]);
    assert!(err.contains("bad duration"), "grant --for 5x: {err}");

    let err = lab.gate_err(&["exempt", "add", "10.0.0.1/8"]);
    assert!(err.contains("host bits"), "exempt add 10.0.0.1/8: {err}");

    let err = lab.gate_err(&["detach", "--iface", &iface]);
    assert!(
        err.contains("nothing attached"),
        "detach with no gate: {err}"
    );

    assert!(
        lab.pins().is_empty(),
        "failed commands left pins: {:?}",
        lab.pins()
    );
    assert!(
        lab.xdp_prog_ids(&iface).is_empty(),
        "a failed attach left a program"
    );
    // No gate: the client gets through without a grant.
    assert_connected(
        lab.client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "no gate attached",
    );
}

#[test]
fn two_interfaces_share_one_gate() {
    let lab = lab_with(LabOptions {
        exempt_client: true,
        ..LabOptions::default()
    });
    // Here the second client is just another gated client, on its own veth.
    let (first, second) = (&lab.client, lab.exempt());
    lab.attach(&[]);
    assert_eq!(lab.attached_ifaces().len(), 2, "{:?}", lab.pins());
    lab.assert_dropped(second, second.server_v4, SMTP_PORT, "second veth, no grant");
    lab.gate_ok(&["grant", &v4(first)]);
    assert_connected(
        first.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "first veth, granted",
    );

    let out = lab.gate_in_server(&["detach", "--iface", &second.server_iface]);
    assert!(
        out.status.success(),
        "detach one of two: {}",
        testkit::process::describe(&out)
    );
    assert_connected(
        second.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "second veth after its detach",
    );
    assert!(
        lab.pins().contains(&"settings".to_string()),
        "maps went with the first detach"
    );
    assert_eq!(
        lab.list(&[]).len(),
        1,
        "the grant went with the first detach"
    );
    assert_connected(
        first.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "first veth, still granted",
    );
    lab.gate_ok(&["revoke", &v4(first)]);
    lab.assert_dropped(
        first,
        first.server_v4,
        SMTP_PORT,
        "first veth still gated after the other was detached",
    );

    lab.detach();
    assert!(
        lab.pins().is_empty(),
        "pins after the last detach: {:?}",
        lab.pins()
    );
}

#[test]
fn detach_keep_grants_carries_grants_over() {
    let lab = Lab::new();
    let client = &lab.client;
    lab.attach(&[]);
    lab.gate_ok(&["grant", &v4(client)]);
    let out = lab.gate_in_server(&["detach", "--iface", &client.server_iface, "--keep-grants"]);
    assert!(
        out.status.success(),
        "detach --keep-grants: {}",
        testkit::process::describe(&out)
    );
    // The bans stay with the grants: a reinstall must not free a guesser.
    assert_eq!(lab.pins(), ["bans_v4", "bans_v6", "grants_v4", "grants_v6"]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "no gate attached",
    );

    lab.attach(&[]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the kept grant after attaching again",
    );
    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["address"], v4(client));
}

#[test]
fn window_changes_apply_to_existing_grants() {
    let lab = Lab::new();
    lab.attach(&["--window", "10m"]);
    let client = &lab.client;
    lab.gate_ok(&["grant", &v4(client)]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "granted for 10m",
    );
    // Grants without their own lifetime follow the window: shrinking it
    // below the grant's age (on the gate's clock) expires the grant at
    // once.
    let granted = IpAddr::from(client.client_v4);
    wait_for(
        EVENT_BOUND,
        "the grant is older than 1 s",
        || {
            lab.grant_age(granted)
                .is_some_and(|g| g.age > Duration::from_millis(1050))
        },
        || format!("{:?}", lab.grant_age(granted)),
    );
    lab.gate_ok(&["settings", "--window", "1s"]);
    lab.assert_dropped(
        client,
        client.server_v4,
        SMTP_PORT,
        "after settings --window 1s",
    );
    lab.gate_ok(&["settings", "--window", "10m"]);
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "window back to 10m",
    );
}

#[test]
fn regrant_refreshes_the_window() {
    let window = Duration::from_secs(2);
    let lab = Lab::new();
    lab.attach(&["--window", "2s"]);
    let client = &lab.client;
    let granted = IpAddr::from(client.client_v4);
    // The gate's clock and the test's agree to a tick or two: this much
    // covers it.
    let slack = Duration::from_millis(50);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tries = 0;
    loop {
        tries += 1;
        lab.gate_ok(&["grant", &v4(client)]);
        // The first grant was stamped before this: its window is over by
        // the time this plus the window has passed.
        let first_granted = Instant::now();
        wait_for(
            EVENT_BOUND,
            "the first grant is half its window old",
            || lab.grant_age(granted).is_some_and(|g| g.age >= window / 2),
            || format!("{:?}", lab.grant_age(granted)),
        );
        // The second grant is stamped after this.
        let regranting = Instant::now();
        lab.gate_ok(&["grant", &v4(client)]);
        let first_over = first_granted + window + slack;
        thread::sleep(first_over.saturating_duration_since(Instant::now()));
        let judged = lab.judge(client, client.server_v4, SMTP_PORT, DENY_TIMEOUT);
        let second_open = Instant::now() + slack < regranting + window;
        match judged.verdict() {
            GateVerdict::Passed => break,
            GateVerdict::Denied if second_open => panic!(
                "past the first grant's window, inside the refreshed one, the client was not \
                 let in: {judged}"
            ),
            GateVerdict::Unclear => panic!("the gate's counters do not add up: {judged}"),
            GateVerdict::Denied => {}
        }
        assert!(
            Instant::now() < deadline,
            "in {tries} tries, the machine was never quick enough to try inside the refreshed \
             window; last: {judged}"
        );
    }
    lab.assert_grant_expires(
        client,
        client.server_v4,
        SMTP_PORT,
        granted,
        window,
        "regranted",
    );
}

// A failed first attach (bad --ports, or an interface that already runs
// another XDP program) must leave no pins: maps without a link would make
// `list` answer "no grants" and `detach` refuse to remove them.

#[test]
fn failed_first_attach_with_bad_ports_leaves_no_pins() {
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();
    let out = lab.gate_in_server(&["attach", "--iface", &iface, "--ports", "0"]);
    assert!(!out.status.success(), "attach --ports 0 succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a port"), "attach --ports 0: {err}");
    assert!(
        lab.pins().is_empty(),
        "attach --ports 0 failed but left pins: {:?}",
        lab.pins()
    );
    let err = lab.gate_err(&["list"]);
    assert!(
        err.contains("nothing attached"),
        "list after the failed attach: {err}"
    );
}

#[test]
fn failed_attach_over_a_foreign_xdp_program_leaves_no_pins() {
    let mut lab = Lab::new();
    let (ns, iface) = (lab.server_ns.clone(), lab.client.server_iface.clone());
    lab.load_xdp_pass(&ns, &iface);
    let out = lab.gate_in_server(&["attach", "--iface", &iface]);
    assert!(
        !out.status.success(),
        "attach over a foreign XDP program succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not smtp-gate's"),
        "attach over a foreign program: {err}"
    );
    assert!(
        lab.pins().is_empty(),
        "attach over a foreign XDP program failed but left pins: {:?}",
        lab.pins()
    );
}

/// The lab itself: dropping it, also while a test panics, leaves no
/// namespace, mount or gate behind.
#[test]
fn lab_teardown_leaves_nothing_behind() {
    fn footprint(lab: &Lab) -> (Vec<String>, PathBuf) {
        let mut names = vec![lab.server_ns.clone()];
        names.extend(lab.links().iter().map(|l| l.client_ns.clone()));
        let mount = lab
            .pin_dir()
            .parent()
            .expect("the pin dir is inside the mount")
            .to_path_buf();
        (names, mount)
    }
    fn assert_gone(names: &[String], mount: &Path) {
        for ns in names {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "namespace {ns} survived the lab"
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let mount_text = mount.to_string_lossy();
        assert!(
            !mounts
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*mount_text)),
            "{mount_text} is still mounted"
        );
        assert!(!mount.exists(), "{} survived the lab", mount.display());
    }

    let lab = lab_with(LabOptions {
        exempt_client: true,
        xdp_pass_on_clients: true,
        ..LabOptions::default()
    });
    lab.attach(&[]);
    let (names, mount) = footprint(&lab);
    for ns in &names {
        assert!(Path::new("/run/netns").join(ns).exists(), "{ns} missing");
    }
    drop(lab);
    assert_gone(&names, &mount);

    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::panic::catch_unwind(move || {
        let lab = Lab::new();
        lab.attach(&["--mode", "tc"]);
        tx.send(footprint(&lab)).expect("send");
        panic!("a test failing with a lab alive");
    });
    assert!(panicked.is_err());
    let (names, mount) = rx.recv().expect("the footprint of the panicking lab");
    assert_gone(&names, &mount);
}

/// The maps carry BTF: `bpftool map dump` prints keys and values as named
/// fields, so an operator can read them without our CLI.
#[test]
fn bpftool_dumps_maps_with_named_fields() {
    let lab = Lab::new();
    lab.attach(&["--window", "7m"]);
    lab.gate_ok(&["grant", &v4(&lab.client)]);
    let dump = |map: &str| {
        let out = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(lab.pin_dir().join(map))
            .output()
            .expect("bpftool must be installed (cargo xtask setup installs it)");
        assert!(out.status.success(), "bpftool failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let grants = dump("grants_v4");
    for field in ["\"addr\"", "\"granted_at_ns\"", "\"lifetime_ns\""] {
        assert!(
            grants.contains(field),
            "grants_v4 dump lacks {field}: {grants}"
        );
    }
    let settings = dump("settings");
    assert!(
        settings.contains("\"window_ns\": 420000000000"),
        "settings dump: {settings}"
    );
    assert!(
        settings.contains("\"deny_mode\""),
        "settings dump: {settings}"
    );
}

/// An attach that only changes settings keeps the mode the interface has:
/// it must never take a TC gate away to try XDP.
#[test]
fn settings_only_attach_keeps_the_attach_mode() {
    let lab = Lab::new();
    lab.attach(&["--mode", "tc"]);
    let out = lab.attach(&["--window", "30m"]);
    assert!(
        out.contains("already attached") && out.contains("(tc)"),
        "re-attach said: {out}"
    );
    let settings = lab.gate_ok(&["settings", "--json"]);
    assert!(settings.contains("\"mode\": \"tc\""), "{settings}");
    assert!(settings.contains("1800"), "window applied: {settings}");
}

/// When an interface is deleted and made again, the kernel detaches its
/// link but the pin stays: attach must see that and attach anew, not
/// report a gate that enforces nothing.
#[test]
fn a_recreated_interface_is_attached_anew() {
    let lab = Lab::new();
    let ip = |args: &[&str]| {
        let out = testkit::netns::netns_command(&lab.server_ns, "ip")
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    // A veth pair inside the server namespace: this kernel has no dummy.
    let make = || {
        ip(&[
            "link", "add", "sgdummy0", "type", "veth", "peer", "name", "sgdummy1",
        ])
    };
    make();
    ip(&["link", "set", "sgdummy0", "up"]);
    let first = lab.gate_in_server(&["attach", "--iface", "sgdummy0", "--mode", "xdp-skb"]);
    assert!(first.status.success(), "{first:?}");
    ip(&["link", "del", "sgdummy0"]);
    make();
    let again = lab.gate_in_server(&["attach", "--iface", "sgdummy0", "--mode", "xdp-skb"]);
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again:?}");
    assert!(
        said.contains("attached to sgdummy0") && !said.contains("already attached"),
        "a stale link was taken for a live one: {said}"
    );
    assert_eq!(
        lab.xdp_prog_ids("sgdummy0").len(),
        1,
        "the new link holds a program"
    );
    let detached = lab.gate_in_server(&["detach", "--iface", "sgdummy0"]);
    assert!(detached.status.success(), "{detached:?}");
    ip(&["link", "del", "sgdummy0"]);
}

// ---------------------------------------------------------------------------
// The gate never fails open because of our own operations
// ---------------------------------------------------------------------------

/// Polls `ok` every 100 ms for up to `within`; panics with `what` and
/// `context()` if it never holds.
#[track_caller]
fn wait_for(
    within: Duration,
    what: &str,
    mut ok: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not so after {within:?}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Native XDP is refused on a veth whose peer's MTU is larger than a page
/// can hold (the kernel answers ERANGE): a way to make a switch to native
/// XDP fail on this kernel.
fn refuse_native_xdp(lab: &Lab) {
    lab.ip(
        &lab.client.client_ns,
        &["link", "set", &lab.client.client_iface, "mtu", "9000"],
    );
}

#[test]
fn failed_switch_from_generic_to_native_xdp_keeps_the_generic_gate() {
    let lab = Lab::new();
    refuse_native_xdp(&lab);
    let iface = lab.client.server_iface.clone();
    lab.attach(&["--mode", "xdp-skb", "--window", "7m"]);
    let before = lab.xdp_prog_ids(&iface);
    assert_eq!(before.len(), 1, "{}", lab.server_link_show(&iface));

    let out = lab.gate_in_server(&["attach", "--iface", &iface, "--mode", "xdp"]);
    assert!(
        !out.status.success(),
        "native XDP was expected to be refused here: {}",
        testkit::process::describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the gate is back on {iface} in xdp-skb mode")),
        "the error does not say the gate is back: {err}"
    );
    assert_eq!(
        lab.xdp_prog_ids(&iface).len(),
        1,
        "no XDP program after the failed switch: {}",
        lab.server_link_show(&iface)
    );
    assert!(
        lab.pins().contains(&format!("link_xdpskb_{iface}")),
        "the old mode's link is not pinned again: {:?}",
        lab.pins()
    );
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "after the failed switch, no grant",
    );
    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["window_secs"], 420.0, "{settings}");
    lab.gate_ok(&["grant", &v4(&lab.client)]);
    assert_connected(
        lab.client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "after the failed switch, granted",
    );
}

#[test]
fn failed_switch_from_tc_to_native_xdp_keeps_the_tc_gate() {
    let lab = Lab::new();
    refuse_native_xdp(&lab);
    let iface = lab.client.server_iface.clone();
    lab.attach(&["--mode", "tc"]);
    let out = lab.gate_in_server(&["attach", "--iface", &iface, "--mode", "xdp"]);
    assert!(
        !out.status.success(),
        "native XDP was expected to be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the gate stays on {iface} in tc mode")),
        "the error does not say the gate stays: {err}"
    );
    assert_eq!(lab.tc_ingress_programs(&iface).len(), 1);
    assert!(lab.xdp_prog_ids(&iface).is_empty());
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "tc after the failed switch",
    );
}

/// Under `ip netns exec`, /sys/fs/bpf is an empty directory of a fresh
/// sysfs: a bpffs mounted there would be the process's own, and the gate
/// would vanish when it exits.
#[test]
fn attach_refuses_a_bpffs_that_would_vanish_with_it() {
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();
    // No --pin-dir: the default /sys/fs/bpf/smtp-gate, inside the server
    // namespace's private mount namespace.
    let out = testkit::gate_binary::smtp_gate_in(&lab.server_ns, &["attach", "--iface", &iface]);
    assert!(
        !out.status.success(),
        "attach pinned on a private bpffs: {}",
        testkit::process::describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mount namespace") && err.contains("--allow-private-bpffs"),
        "the refusal does not say why or what to do: {err}"
    );
    assert!(lab.xdp_prog_ids(&iface).is_empty());

    // Told so, it does it: and the gate is gone with the process. (The
    // kernel lets go of the private mount, and so of the link, a moment
    // after the process exits: waited for.)
    let out = testkit::gate_binary::smtp_gate_in(
        &lab.server_ns,
        &["attach", "--iface", &iface, "--allow-private-bpffs"],
    );
    assert!(out.status.success(), "{}", testkit::process::describe(&out));
    wait_for(
        EVENT_BOUND,
        "the gate on a private bpffs is gone with its process",
        || lab.xdp_prog_ids(&iface).is_empty(),
        || lab.server_link_show(&iface),
    );
}

/// The daemon started as `ip netns exec ... smtp-gate serve` with the
/// default pin directory is refused the same way.
#[test]
fn serve_refuses_a_bpffs_that_would_vanish_with_it() {
    let lab = Lab::new();
    let mail = testkit::mail::MailFixture::new();
    let log = mail.dir().join("serve.log");
    let args = serve_args(&lab, &mail, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.spawn_serve(&args, &log);
    let status = daemon
        .wait_exit(EVENT_BOUND)
        .unwrap_or_else(|| panic!("serve did not refuse:\n{}", daemon.log()));
    assert!(!status.success(), "serve started:\n{}", daemon.log());
    assert!(
        daemon.log().contains("--allow-private-bpffs"),
        "serve's refusal: {}",
        daemon.log()
    );
    assert!(lab.xdp_prog_ids(&lab.client.server_iface).is_empty());
}

/// The flags of a `serve` on the lab's client veth (no `--pin-dir`).
fn serve_args(lab: &Lab, mail: &testkit::mail::MailFixture, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--iface",
        &lab.client.server_iface,
        "--users",
        &mail.users_file().to_string_lossy(),
        "--mail-root",
        &mail.mail_root().to_string_lossy(),
        "--shutdown-grace",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `serve` on the lab's pin directory, answering POP3.
fn start_daemon(
    lab: &Lab,
    mail: &testkit::mail::MailFixture,
    extra: &[&str],
) -> testkit::serve::ServeDaemon {
    let args = serve_args(lab, mail, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.serve(&args, &mail.dir().join("serve.log"))
}

/// SIGTERM; the daemon must exit 0. Returns its log.
fn stop_daemon(daemon: &mut testkit::serve::ServeDaemon) -> String {
    let (status, _) = daemon.terminate(EVENT_BOUND);
    assert!(
        status.is_some_and(|s| s.success()),
        "serve did not exit cleanly: {status:?}\n{}",
        daemon.log()
    );
    daemon.log()
}

#[test]
fn daemon_keeps_the_gate_when_its_pins_are_removed() {
    let lab = Lab::new();
    let mail = testkit::mail::MailFixture::new();
    let mut daemon = start_daemon(&lab, &mail, &[]);
    let client = &lab.client;
    lab.gate_ok(&["grant", &v4(client)]);

    // Every pin goes: the maps, the link, the directory.
    let iface = client.server_iface.clone();
    std::fs::remove_dir_all(lab.pin_dir()).expect("removing the pin directory");
    Judge::by_program(&lab, &iface).assert_dropped(
        client,
        client.server_v6,
        SMTP_PORT,
        "the ungranted IPv6 address, with the pins gone",
    );
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the granted IPv4 address, with the pins gone",
    );

    wait_for(
        EVENT_BOUND,
        "the daemon pins the gate again",
        || {
            let pins = lab.pins();
            pins.contains(&format!("link_xdp_{iface}")) && pins.contains(&"settings".into())
        },
        || format!("pins: {:?}\n{}", lab.pins(), daemon.log()),
    );
    let log = daemon.log();
    assert!(
        log.contains("ERROR") && log.contains("gate incident 1") && log.contains("pins"),
        "the daemon did not report the lost pins as an error:\n{log}"
    );
    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 1, "the grant survived: {grants:?}");
    lab.assert_dropped(
        client,
        client.server_v6,
        SMTP_PORT,
        "still gated after the repair",
    );

    let log = stop_daemon(&mut daemon);
    assert!(
        log.contains(&format!("the gate stays attached to {iface}")),
        "shutdown line:\n{log}"
    );
    lab.assert_dropped(
        client,
        client.server_v6,
        SMTP_PORT,
        "gated after the daemon exited",
    );
}

/// The host's bpffs is unmounted (the unmount reaches the daemon's mount
/// namespace, as it does a systemd service's), and later mounted again.
#[test]
fn daemon_keeps_the_gate_when_the_bpffs_is_unmounted() {
    let lab = Lab::new();
    let shared = testkit::bpffs::SharedBpffs::new(&lab);
    let pin_dir = shared.pin_dir().to_string_lossy().into_owned();
    let mail = testkit::mail::MailFixture::new();
    let args = serve_args(&lab, &mail, &["--pin-dir", &pin_dir]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = lab.spawn_serve(&args, &mail.dir().join("serve.log"));
    lab.wait_pop3(&mut daemon);
    let client = &lab.client;
    let iface = client.server_iface.clone();
    let grant = testkit::gate_binary::smtp_gate(&["grant", &v4(client), "--pin-dir", &pin_dir]);
    assert!(
        grant.status.success(),
        "{}",
        testkit::process::describe(&grant)
    );

    // The lab's own pin directory is not this gate's: its counters are
    // read through the program.
    let gate = Judge::by_program(&lab, &iface);
    shared.unmount();
    gate.assert_dropped(
        client,
        client.server_v6,
        SMTP_PORT,
        "the ungranted IPv6 address, bpffs unmounted",
    );
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the granted IPv4 address, bpffs unmounted",
    );
    wait_for(
        EVENT_BOUND,
        "the daemon reports the lost pins",
        || daemon.log().contains("gate incident 1"),
        || daemon.log(),
    );
    // It does not mount a bpffs of its own (one only it would see); once
    // the host has one again, it pins the gate there.
    shared.mount();
    wait_for(
        EVENT_BOUND,
        "the daemon pins the gate on the new bpffs",
        || {
            let pins = shared.pins();
            pins.contains(&format!("link_xdp_{iface}")) && pins.contains(&"grants_v4".into())
        },
        || format!("pins: {:?}\n{}", shared.pins(), daemon.log()),
    );
    let list = testkit::gate_binary::smtp_gate(&["list", "--json", "--pin-dir", &pin_dir]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(&v4(client)),
        "the grant is in the re-pinned map: {}",
        testkit::process::describe(&list)
    );
    let log = stop_daemon(&mut daemon);
    assert!(
        log.contains(&format!("the gate stays attached to {iface}")),
        "shutdown line:\n{log}"
    );
    gate.assert_dropped(
        client,
        client.server_v6,
        SMTP_PORT,
        "gated after the daemon exited",
    );
    let detach = testkit::gate_binary::smtp_gate_in(
        &lab.server_ns,
        &["detach", "--iface", &iface, "--pin-dir", &pin_dir],
    );
    assert!(
        detach.status.success(),
        "{}",
        testkit::process::describe(&detach)
    );
}

#[test]
fn daemon_says_so_when_the_gate_ends_with_it() {
    let lab = Lab::new();
    let mail = testkit::mail::MailFixture::new();
    let mut daemon = start_daemon(&lab, &mail, &[]);
    let pid = daemon.pid().expect("the daemon runs").to_string();
    let mount_point = lab.bpffs_mount_point().to_string_lossy().into_owned();
    lab.unmount_bpffs();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid, "-m", "umount", &mount_point])
        .output()
        .expect("nsenter (util-linux) must be installed");
    assert!(out.status.success(), "{}", testkit::process::describe(&out));
    // No pin is left anywhere: the counters are read through the program.
    Judge::by_program(&lab, &lab.client.server_iface).assert_dropped(
        &lab.client,
        lab.client.server_v6,
        SMTP_PORT,
        "gated while the daemon holds it",
    );
    let log = stop_daemon(&mut daemon);
    assert!(
        log.contains("ENDS with this daemon") && !log.contains("the gate stays attached"),
        "the shutdown line does not tell the truth:\n{log}"
    );
}

#[test]
fn recreated_interface_is_stale_and_the_daemon_attaches_again() {
    let lab = Lab::new();
    let client = &lab.client;
    let iface = client.server_iface.clone();
    lab.attach(&[]);
    lab.recreate_link(client);
    // The defect: the new interface is not gated, and only `attach` knew.
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the re-created interface (nothing gates it)",
    );
    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["attached"][0]["state"], "stale", "{settings}");
    let text = lab.gate_ok(&["settings"]);
    assert!(text.contains("STALE"), "settings: {text}");
    let stats = lab.stats();
    assert_eq!(
        stats["stale_links"][0]["iface"],
        iface.as_str(),
        "stats: {stats}"
    );
    let text = lab.gate_ok(&["stats"]);
    assert!(text.contains("stale link"), "stats: {text}");

    // A daemon attaches anew at its start, and again each time the
    // interface is re-created under it.
    let mail = testkit::mail::MailFixture::new();
    let mut daemon = start_daemon(&lab, &mail, &["--window", "30m"]);
    lab.assert_dropped(
        client,
        client.server_v4,
        SMTP_PORT,
        "gated by the daemon's attach",
    );
    // An operator's change after the daemon started outlives the link: the
    // daemon attaches again with the pinned settings, not its own flags.
    lab.gate_ok(&["settings", "--window", "7m"]);
    lab.recreate_link(client);
    wait_for(
        EVENT_BOUND,
        "the daemon attaches to the re-created interface",
        || daemon.log().contains(&format!("attached again to {iface}")),
        || daemon.log(),
    );
    lab.assert_dropped(
        client,
        client.server_v4,
        SMTP_PORT,
        "the re-created interface, gated again",
    );
    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["attached"][0]["state"], "attached", "{settings}");
    assert_eq!(
        settings["window_secs"], 420.0,
        "the operator's window after the daemon attached again: {settings}"
    );
    stop_daemon(&mut daemon);
}

// ---------------------------------------------------------------------------
// Upgrades, host addresses, destination scope
// ---------------------------------------------------------------------------

/// The shapes that `attach` compares pinned maps with (read from the
/// object) are the ones the map commands check for (from gate-common).
#[test]
fn declared_map_layout_is_what_the_map_commands_expect() {
    smtp_gate::gate::privilege::require("this test", smtp_gate::gate::privilege::CHANGE_GATE)
        .expect("run as root");
    let declared = smtp_gate::gate::layout::declared().expect("loading the object");
    for name in smtp_gate::gate::pins::ALL_MAPS {
        assert!(declared.contains_key(name), "the object has no map {name}");
    }
    assert_eq!(
        declared["settings"].value_size as usize,
        std::mem::size_of::<gate_common::Settings>()
    );
    assert_eq!(declared["stats"].max_entries, 1);
    assert_eq!(
        declared["stats"].value_size as usize,
        std::mem::size_of::<gate_common::Counters>()
    );
}

/// Pins maps the way an older smtp-gate did and a link running a program
/// of its own, with a grant stamped on CLOCK_BOOTTIME and settings in
/// those maps: the first layout (settings of 40 octets, 8 stats slots, no
/// scope or local-address maps), or with `settings` of 48 octets the one
/// before the gate's clock (16 stats slots, one counter each), or with 56
/// octets the one before the bans (no ban maps; this build's counters;
/// its grant stamped on the gate's clock).
fn pin_an_old_gate(lab: &Lab, settings: &[u8], granted: std::net::Ipv4Addr, tc: bool) {
    use aya::maps::{Array, HashMap, Map, MapData};
    let pin = lab.pin_dir().to_path_buf();
    let create = |name: &str, kind: &str, key: &str, value: &str, entries: &str, flags: &[&str]| {
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(pin.join(name))
            .args(["type", kind, "key", key, "value", value, "entries", entries])
            .args(["name", name])
            .args(flags)
            .output()
            .expect("bpftool must be installed (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "bpftool map create {name}: {}",
            testkit::process::describe(&out)
        );
    };
    let settings_size = settings.len().to_string();
    let banless = settings.len() == 56;
    create("settings", "array", "4", &settings_size, "1", &[]);
    if banless {
        create("stats", "percpu_array", "4", "128", "1", &[]);
    } else {
        let stats_slots = if settings.len() == 40 { "8" } else { "16" };
        create("stats", "percpu_array", "4", "8", stats_slots, &[]);
        create("log_buckets", "percpu_array", "4", "24", "1", &[]);
    }
    create("exempt_v4", "lpm_trie", "8", "4", "4096", &["flags", "1"]);
    create("exempt_v6", "lpm_trie", "20", "4", "4096", &["flags", "1"]);
    create("grants_v4", "lru_hash", "4", "16", "4096", &[]);
    create("grants_v6", "lru_hash", "16", "16", "4096", &[]);
    let open = |name: &str| {
        Map::from_map_data(MapData::from_pin(pin.join(name)).expect("opening a pinned map"))
            .expect("a map")
    };
    if let Ok(settings) = <&[u8; 40]>::try_from(settings) {
        let mut old: Array<MapData, [u8; 40]> =
            Array::try_from(open("settings")).expect("40-octet array");
        old.set(0, settings, 0).expect("writing the old settings");
    } else if let Ok(settings) = <&[u8; 48]>::try_from(settings) {
        let mut old: Array<MapData, [u8; 48]> =
            Array::try_from(open("settings")).expect("48-octet array");
        old.set(0, settings, 0).expect("writing the old settings");
    } else {
        let settings: &[u8; 56] = settings.try_into().expect("40, 48 or 56 octets");
        let mut old: Array<MapData, [u8; 56]> =
            Array::try_from(open("settings")).expect("56-octet array");
        old.set(0, settings, 0).expect("writing the old settings");
    }
    // Ten seconds ago, on the clock of the old build.
    let granted_at_ns = if banless {
        smtp_gate::gate::clock::GateClock::open()
            .and_then(|clock| clock.now_ns())
            .expect("reading the gate's clock")
            - 10_000_000_000
    } else {
        smtp_gate::gate::clock::boottime_ns() - 10_000_000_000
    };
    let mut grants: HashMap<MapData, gate_common::GrantKeyV4, gate_common::Grant> =
        HashMap::try_from(open("grants_v4")).expect("grants map");
    grants
        .insert(
            gate_common::GrantKeyV4 {
                addr: granted.octets(),
            },
            gate_common::Grant {
                granted_at_ns,
                lifetime_ns: 0,
            },
            0,
        )
        .expect("writing a grant");
    let iface = lab.client.server_iface.clone();
    let link_path = pin.join(format!("link_{}_{iface}", if tc { "tc" } else { "xdp" }));
    testkit::netns::in_netns(&lab.server_ns, || {
        use aya::programs::{
            links::FdLink, tc::TcAttachOptions, LinkOrder, SchedClassifier, TcAttachType, Xdp,
            XdpMode,
        };
        let mut ebpf = smtp_gate::gate::object::load_unpinned(16).expect("loading the object");
        if tc {
            // This build's TC program over maps of its own (unconfigured:
            // it passes everything) stands in for an older build's.
            let program: &mut SchedClassifier = ebpf
                .program_mut(gate_common::program_names::TC)
                .expect("the TC program")
                .try_into()
                .expect("a TC program");
            program.load().expect("loading the TC program");
            let id = program
                .attach_with_options(
                    &iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .expect("attaching the old gate's TC program");
            let link: FdLink = program
                .take_link(id)
                .expect("the link")
                .try_into()
                .expect("an fd link");
            link.pin(&link_path).expect("pinning the old gate's link");
            return;
        }
        let program: &mut Xdp = ebpf
            .program_mut(gate_common::program_names::XDP_PASS)
            .expect("the pass-all program")
            .try_into()
            .expect("an XDP program");
        program.load().expect("loading the pass-all program");
        let id = program
            .attach(&iface, XdpMode::default())
            .expect("attaching the old gate's program");
        let link: FdLink = program
            .take_link(id)
            .expect("the link")
            .try_into()
            .expect("an fd link");
        link.pin(&link_path).expect("pinning the old gate's link");
    });
}

#[test]
fn attach_upgrades_a_gate_pinned_by_an_older_build_xdp() {
    check_upgrade(false, 40);
}

#[test]
fn attach_upgrades_a_gate_pinned_by_an_older_build_tc() {
    check_upgrade(true, 40);
}

/// The layout of the build before the gate's clock: its grants were
/// stamped on CLOCK_BOOTTIME and must keep their age.
#[test]
fn attach_upgrades_a_gate_of_the_boottime_clock() {
    check_upgrade(false, 48);
}

/// The layout of the build before the bans: no ban maps, settings of 56
/// octets. The upgrade adds the ban maps, carries the settings over with
/// the default login ports, and bans work at once.
#[test]
fn attach_upgrades_a_gate_without_ban_maps() {
    check_upgrade(false, 56);
}

fn check_upgrade(tc: bool, settings_size: usize) {
    let lab = Lab::new();
    let client = &lab.client;
    let iface = client.server_iface.clone();
    // window 7m, ports 25 and 587, deny drop, 3 log lines/s (burst 6).
    let mut old = vec![0u8; settings_size];
    old[0..8].copy_from_slice(&(420u64 * 1_000_000_000).to_ne_bytes());
    old[8..10].copy_from_slice(&25u16.to_ne_bytes());
    old[10..12].copy_from_slice(&587u16.to_ne_bytes());
    old[24..28].copy_from_slice(&2u32.to_ne_bytes());
    old[32..36].copy_from_slice(&3u32.to_ne_bytes());
    old[36..40].copy_from_slice(&6u32.to_ne_bytes());
    // The old grant is stamped ten seconds before a moment after this.
    let before_stamp = Instant::now();
    pin_an_old_gate(&lab, &old, client.client_v4, tc);
    let programs = || -> Vec<u32> {
        if tc {
            lab.tc_ingress_programs(&iface)
                .iter()
                .map(|(id, _)| *id)
                .collect()
        } else {
            lab.xdp_prog_ids(&iface)
        }
    };
    let old_program = programs();
    assert_eq!(old_program.len(), 1);

    let err = lab.gate_err(&["list"]);
    assert!(
        err.contains(&format!(
            "pinned by an older smtp-gate; run `smtp-gate attach --iface {iface}` to upgrade it"
        )),
        "list on an old gate: {err}"
    );

    let out = lab.attach(&[]);
    assert!(
        out.contains(&format!("upgraded the gate on {iface}")),
        "attach said: {out}"
    );
    assert!(
        out.contains(if tc { "(tc)" } else { "(xdp)" }),
        "attach said: {out}"
    );
    let now = programs();
    assert_eq!(now.len(), 1, "{}", lab.server_link_show(&iface));
    assert_ne!(now, old_program, "the link still runs the old program");
    let link = format!("link_{}_{iface}", if tc { "tc" } else { "xdp" });
    assert!(lab.pins().contains(&link), "{:?}", lab.pins());
    for new_map in ["scope_v4", "scope_v6", "local_v4", "local_v6"] {
        assert!(
            lab.pins().contains(&new_map.to_string()),
            "{:?}",
            lab.pins()
        );
    }
    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["window_secs"], 420.0, "{settings}");
    assert_eq!(
        settings["ports"],
        serde_json::json!([25, 587]),
        "{settings}"
    );
    assert_eq!(settings["deny"], "drop", "{settings}");
    assert_eq!(settings["log_rate_per_sec"], 3, "{settings}");
    let grants = lab.list(&[]);
    assert_eq!(grants.len(), 1, "the grant was kept: {grants:?}");
    // Restamped on the gate's clock with its age: ten seconds and what the
    // upgrade took, not the distance between the two clocks.
    let age = grants[0]["age_secs"].as_f64().expect("age_secs");
    let most = 10.0 + before_stamp.elapsed().as_secs_f64() + TICK_SLACK;
    assert!(
        (10.0..=most).contains(&age),
        "age after the upgrade, at most {most} s: {grants:?}"
    );
    assert_connected(
        client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        "the address granted before the upgrade",
    );
    // The counters start from nothing after the upgrade: the one denied
    // attempt is all they hold.
    let sent = lab
        .assert_dropped(
            client,
            client.server_v6,
            SMTP_PORT,
            "an ungranted address after the upgrade",
        )
        .attempt
        .syns;
    let dropped = lab.stat("denied_drop");
    assert!(sent.admits(dropped), "{sent} sent: {}", lab.stats());
    assert!(
        !lab.pins().contains(&LOG_BUCKETS.to_string()),
        "the retired log buckets are unpinned: {:?}",
        lab.pins()
    );
    for ban_map in ["bans_v4", "bans_v6"] {
        assert!(
            lab.pins().contains(&ban_map.to_string()),
            "{:?}",
            lab.pins()
        );
    }
    assert_eq!(
        settings["ban_ports"],
        serde_json::json!([110, 995, 143, 993]),
        "{settings}"
    );
    assert_eq!(settings["ban_prefix_v6"], 64, "{settings}");
    // A ban works on the upgraded gate, granted address or not.
    lab.gate_ok(&["ban", "add", &client.client_v4.to_string()]);
    lab.assert_denied(
        testkit::denial::Deny::Banned,
        client,
        client.server_v4,
        SMTP_PORT,
        "the granted address, banned after the upgrade",
    );
}

/// The build before the log's token bucket moved into the counters had
/// the same maps but for a `log_buckets` map of its own. `attach` over
/// such a gate puts this build's program on the link (it would otherwise
/// keep running the old one, whose log bucket is elsewhere), unpins the
/// retired map and keeps the counters. Fails with an attach that takes
/// the gate as current (the program stays, the pin stays).
#[test]
fn attach_retires_the_log_buckets_of_the_previous_build() {
    let lab = Lab::new();
    let client = &lab.client;
    let iface = client.server_iface.clone();
    lab.attach(&[]);
    let sent = lab
        .assert_dropped(client, client.server_v4, SMTP_PORT, "an ungranted address")
        .attempt
        .syns;
    let dropped = lab.stat("denied_drop");
    assert!(sent.admits(dropped), "{sent} sent: {}", lab.stats());
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(lab.pin_dir().join(LOG_BUCKETS))
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "24",
            "entries",
            "1",
        ])
        .args(["name", LOG_BUCKETS])
        .output()
        .expect("bpftool must be installed (cargo xtask setup installs it)");
    assert!(out.status.success(), "{}", testkit::process::describe(&out));
    let before = lab.xdp_prog_ids(&iface);
    assert_eq!(before.len(), 1);

    let out = lab.attach(&[]);
    assert!(
        out.contains(&format!("upgraded the gate on {iface}")),
        "attach said: {out}"
    );
    let after = lab.xdp_prog_ids(&iface);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "the link still runs the old program");
    assert!(
        !lab.pins().contains(&LOG_BUCKETS.to_string()),
        "{:?}",
        lab.pins()
    );
    assert_eq!(lab.stat("denied_drop"), dropped, "the counters were kept");
    // A second attach finds a current gate: nothing to upgrade.
    let out = lab.attach(&[]);
    assert!(!out.contains("upgraded"), "attach said: {out}");
}

#[test]
fn host_addresses_are_kept_for_the_reset_mode() {
    use smtp_gate::gate::{GateMaps, PinDir};
    let lab = Lab::new();
    let server = lab.server_ns.clone();
    let iface = lab.client.server_iface.clone();
    lab.attach(&[]);
    let dir = PinDir::new(lab.pin_dir());
    let locals = || -> Vec<std::net::IpAddr> {
        GateMaps::open(&dir)
            .expect("opening the maps")
            .local_list()
            .expect("listing the host addresses")
            .iter()
            .map(|l| l.addr)
            .collect()
    };
    let now = locals();
    for wanted in [
        std::net::IpAddr::from(lab.client.server_v4),
        lab.client.server_v6.into(),
    ] {
        assert!(now.contains(&wanted), "{wanted} missing from {now:?}");
    }
    // Loopback is the host's, but no SYN from the wire may be answered
    // for it (Linux drops such a packet as a martian).
    for unwanted in [
        std::net::IpAddr::from(lab.client.client_v4),
        std::net::Ipv4Addr::UNSPECIFIED.into(),
        std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ] {
        assert!(!now.contains(&unwanted), "{unwanted} in {now:?}");
    }
    let ifindex = GateMaps::open(&dir)
        .unwrap()
        .local_list()
        .unwrap()
        .into_iter()
        .find(|l| l.addr == std::net::IpAddr::from(lab.client.server_v4))
        .map(|l| l.ifindex);
    let real = testkit::netns::in_netns(&server, || {
        smtp_gate::gate::iface::ifindex(&iface).expect("ifindex")
    });
    assert_eq!(
        ifindex,
        Some(real),
        "the ifindex of the interface holding it"
    );

    let extra: std::net::IpAddr = "10.231.9.1".parse().unwrap();
    lab.ip(&server, &["addr", "add", "10.231.9.1/32", "dev", "lo"]);
    let out = lab.gate_in_server(&["settings", "--window", "10m"]);
    assert!(out.status.success(), "{}", testkit::process::describe(&out));
    assert!(locals().contains(&extra), "settings did not add it");
    lab.ip(&server, &["addr", "del", "10.231.9.1/32", "dev", "lo"]);
    lab.attach(&[]);
    assert!(!locals().contains(&extra), "attach did not remove it");

    // The daemon keeps them current by itself.
    let mail = testkit::mail::MailFixture::new();
    let mut daemon = start_daemon(&lab, &mail, &[]);
    let added: std::net::IpAddr = "fd00:231:9::1".parse().unwrap();
    lab.ip(
        &server,
        &["addr", "add", "fd00:231:9::1/128", "dev", "lo", "nodad"],
    );
    wait_for(
        EVENT_BOUND,
        "the daemon adds a new host address",
        || locals().contains(&added),
        || format!("{:?}\n{}", locals(), daemon.log()),
    );
    lab.ip(&server, &["addr", "del", "fd00:231:9::1/128", "dev", "lo"]);
    wait_for(
        EVENT_BOUND,
        "the daemon removes a host address that is gone",
        || !locals().contains(&added),
        || format!("{:?}\n{}", locals(), daemon.log()),
    );
    stop_daemon(&mut daemon);
}

#[test]
fn dest_scope_is_written_to_the_maps() {
    use smtp_gate::gate::{GateMaps, PinDir};
    let lab = Lab::new();
    let dir = PinDir::new(lab.pin_dir());
    let scope = || -> (Vec<String>, u32) {
        let maps = GateMaps::open(&dir).expect("opening the maps");
        let list = maps
            .scope_list()
            .expect("scope")
            .iter()
            .map(ToString::to_string)
            .collect();
        (list, maps.settings().expect("settings").dest_scoped)
    };
    lab.attach(&[]);
    assert_eq!(scope(), (Vec::new(), 0), "no --dest: every destination");

    lab.attach(&["--dest", "10.231.1.1", "--dest", "fd00:231:1::1/128"]);
    assert_eq!(
        scope(),
        (vec!["10.231.1.1/32".into(), "fd00:231:1::1/128".into()], 1)
    );
    let settings: serde_json::Value =
        serde_json::from_str(&lab.gate_ok(&["settings", "--json"])).expect("settings JSON");
    assert_eq!(settings["dest_scoped"], true, "{settings}");
    assert_eq!(
        settings["dest"],
        serde_json::json!(["10.231.1.1/32", "fd00:231:1::1/128"]),
        "{settings}"
    );
    let text = lab.gate_ok(&["settings"]);
    assert!(
        text.contains("dest      10.231.1.1/32, fd00:231:1::1/128"),
        "{text}"
    );

    lab.gate_ok(&["settings", "--dest", "10.231.1.0/24"]);
    assert_eq!(scope(), (vec!["10.231.1.0/24".into()], 1), "replaced");
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(lab.pin_dir().join("scope_v4"))
        .output()
        .expect("bpftool");
    assert!(
        dump.status.success(),
        "{}",
        testkit::process::describe(&dump)
    );

    lab.gate_ok(&["settings", "--dest", "all"]);
    assert_eq!(scope(), (Vec::new(), 0), "--dest all clears the scope");
    let text = lab.gate_ok(&["settings"]);
    assert!(text.contains("dest      all"), "{text}");

    let err = lab.gate_err(&["settings", "--dest", "all", "--dest", "10.0.0.0/8"]);
    assert!(err.contains("cannot be combined"), "{err}");
    let err = lab.gate_err(&["settings", "--dest", "10.0.0.1/8"]);
    assert!(err.contains("host bits"), "{err}");
}

/// A mode switch by the CLI while the daemon holds the old link: the old
/// link is detached for every holder (not only unpinned, which would leave
/// it attached through the daemon's fd and block the single XDP slot), and
/// the daemon follows the new one.
#[test]
fn daemon_follows_a_mode_switch_made_by_the_cli() {
    let lab = Lab::new();
    let mail = testkit::mail::MailFixture::new();
    let iface = lab.client.server_iface.clone();
    let mut daemon = start_daemon(&lab, &mail, &["--mode", "xdp"]);
    let before = lab.xdp_prog_ids(&iface);
    assert_eq!(before.len(), 1);

    let out = lab.attach(&["--mode", "xdp-skb"]);
    assert!(out.contains("replacing xdp"), "attach said: {out}");
    let show = lab.server_link_show(&iface);
    assert!(show.contains("xdpgeneric"), "not in generic mode: {show}");
    wait_for(
        EVENT_BOUND,
        "the daemon follows the new attachment",
        || {
            daemon
                .log()
                .contains("replaced by another smtp-gate command (xdp-skb)")
        },
        || daemon.log(),
    );
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "gated in the new mode",
    );
    let log = stop_daemon(&mut daemon);
    assert!(
        log.contains(&format!("the gate stays attached to {iface} (xdp-skb)")),
        "shutdown line:\n{log}"
    );
    assert!(
        !log.contains("gate incident"),
        "a switch is no incident:\n{log}"
    );
    assert_eq!(
        lab.xdp_prog_ids(&iface).len(),
        1,
        "{}",
        lab.server_link_show(&iface)
    );
}

/// MX safety: with `--dest`, only SYNs to the scoped addresses are judged;
/// the host's other addresses (an MX) take mail from anyone.
#[test]
fn dest_scope_gates_only_the_scoped_addresses() {
    let lab = Lab::new();
    let client = &lab.client;
    let server = lab.server_ns.clone();
    lab.ip(
        &server,
        &["addr", "add", "10.231.1.25/24", "dev", &client.server_iface],
    );
    lab.ip(
        &server,
        &[
            "addr",
            "add",
            "fd00:231:1::25/64",
            "dev",
            &client.server_iface,
            "nodad",
        ],
    );
    let submission_v4: std::net::IpAddr = "10.231.1.25".parse().unwrap();
    let submission_v6: std::net::IpAddr = "fd00:231:1::25".parse().unwrap();
    let to = |addr: std::net::IpAddr, timeout: Duration| {
        testkit::smtp::connect(&client.client_ns, addr, SMTP_PORT, timeout)
    };
    lab.attach(&["--dest", "10.231.1.25", "--dest", "fd00:231:1::25"]);
    lab.assert_dropped(client, submission_v4, SMTP_PORT, "scoped IPv4 address");
    lab.assert_dropped(client, submission_v6, SMTP_PORT, "scoped IPv6 address");
    assert_connected(
        to(client.server_v4.into(), PASS_TIMEOUT),
        "the MX's IPv4 address, outside the scope",
    );
    assert_connected(
        to(client.server_v6.into(), PASS_TIMEOUT),
        "the MX's IPv6 address, outside the scope",
    );

    lab.gate_ok(&["settings", "--dest", "all"]);
    lab.assert_dropped(
        client,
        client.server_v4,
        SMTP_PORT,
        "every destination gated again",
    );
    lab.gate_ok(&["settings", "--dest", "10.231.1.1"]);
    lab.assert_dropped(client, client.server_v4, SMTP_PORT, "scoped now");
    assert_connected(to(submission_v4, PASS_TIMEOUT), "out of the scope now");
}

/// The reset mode answers only for the host's own addresses, as the maps
/// know them: an address added after `attach` is dropped unanswered until
/// `settings` (in the gate's namespace) or the daemon writes it.
#[test]
fn reset_mode_answers_for_host_addresses_once_the_maps_know_them() {
    let lab = Lab::new();
    let client = &lab.client;
    let server = lab.server_ns.clone();
    let iface = client.server_iface.clone();
    lab.attach(&["--mode", "xdp-skb", "--deny", "reset"]);
    lab.ip(&server, &["addr", "add", "10.231.1.77/24", "dev", &iface]);
    let late_v4: std::net::IpAddr = "10.231.1.77".parse().unwrap();
    let to = |addr: std::net::IpAddr, timeout: Duration| {
        testkit::smtp::connect(&client.client_ns, addr, SMTP_PORT, timeout)
    };
    lab.assert_denied(
        Deny::ResetSkipped,
        client,
        late_v4,
        SMTP_PORT,
        "an address the maps do not know yet: dropped, not answered",
    );

    let out = lab.gate_in_server(&["settings", "--deny", "reset"]);
    assert!(out.status.success(), "{}", testkit::process::describe(&out));
    lab.assert_reset(
        client,
        late_v4,
        SMTP_PORT,
        "after settings wrote the address",
    );

    let mail = testkit::mail::MailFixture::new();
    let mut daemon = start_daemon(&lab, &mail, &[]);
    lab.ip(
        &server,
        &["addr", "add", "fd00:231:1::77/64", "dev", &iface, "nodad"],
    );
    let late_v6: std::net::IpAddr = "fd00:231:1::77".parse().unwrap();
    wait_for(
        EVENT_BOUND,
        "the daemon writes the new address and the gate answers for it",
        || to(late_v6, DENY_TIMEOUT) == ConnectResult::Refused,
        || daemon.log(),
    );
    lab.assert_reset(
        client,
        late_v6,
        SMTP_PORT,
        "after the daemon wrote the address",
    );
    stop_daemon(&mut daemon);
}

// ---------------------------------------------------------------------------
// Grant capacity: `--capacity` sizes both grant maps when they are made; a
// map keeps every one of its capacity's grants however often they are
// granted again and from whichever CPU; when a flood of grants fills it,
// the kernel's LRU evicts the oldest ones. The gate never fails open on the
// way: an evicted or never granted address is denied, while a new grant at
// the full map (`smtp-gate grant`, a POP3 login to the daemon) is written
// without an error and lets its address in.
// ---------------------------------------------------------------------------

/// The capacity the tests ask for: small, so that a test can fill it, and
/// prime. The kernel's LRU hash moves free slots to a CPU in batches (128,
/// or fewer in a small map) and evicts to top up a short batch, so a map
/// of exactly a multiple of the batch size would keep its capacity even
/// without the headroom the gate adds; a prime capacity is never one.
const CAPACITY: u32 = 1009;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

/// `max_entries` of a pinned map, as `bpftool map show` reports it.
fn max_entries(lab: &Lab, map: &str) -> u32 {
    let out = Command::new("bpftool")
        .args(["--json", "map", "show", "pinned"])
        .arg(lab.pin_dir().join(map))
        .output()
        .expect("bpftool must be installed (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool map show {map}: {out:?}");
    let shown: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool --json prints JSON");
    let entries = shown["max_entries"]
        .as_u64()
        .unwrap_or_else(|| panic!("bpftool shows no max_entries for {map}: {shown}"));
    u32::try_from(entries).expect("max_entries fits a u32")
}

/// Both grant maps are sized for [`CAPACITY`]: the capacity plus the
/// headroom the kernel's per-CPU free lists need (gate/object.rs), nothing
/// near the default's size.
#[track_caller]
fn assert_sized_for_the_capacity(lab: &Lab) -> u32 {
    let expected = lru_max_entries(CAPACITY);
    assert!(
        (CAPACITY..lru_max_entries(DEFAULT_GRANT_CAPACITY)).contains(&expected),
        "the sizing rule itself: {expected} slots for a capacity of {CAPACITY}"
    );
    for map in [GRANTS_V4, GRANTS_V6] {
        assert_eq!(
            max_entries(lab, map),
            expected,
            "{map} after --capacity {CAPACITY}"
        );
    }
    expected
}

/// The addresses `smtp-gate list --json` shows, sorted.
fn listed(lab: &Lab) -> Vec<String> {
    let mut addrs: Vec<String> = lab
        .list(&["--all"])
        .iter()
        .map(|g| g["address"].as_str().unwrap_or_default().to_string())
        .collect();
    addrs.sort();
    addrs
}

/// Distinct addresses, none of them the lab's.
fn stranger(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i))
}

/// Grants `addrs` in order through the maps, as the daemon and the CLI
/// write them, from a thread on `cpu`.
fn grant_on_cpu(lab: &Lab, cpu: usize, addrs: &[IpAddr]) {
    on_cpu(cpu, || {
        let mut maps = GateMaps::open(&PinDir::new(lab.pin_dir())).expect("opening the maps");
        for (i, addr) in addrs.iter().enumerate() {
            maps.grant(*addr, None)
                .unwrap_or_else(|e| panic!("grant {i} of {} ({addr}): {e:#}", addrs.len()));
        }
    })
}

/// A map keeps every one of its capacity's grants: written from one CPU,
/// then all granted again from another (a grant takes a new slot before it
/// frees the old one, and free slots wait in per-CPU lists).
#[test]
fn capacity_sizes_the_grant_maps_and_they_keep_that_many_grants() {
    let lab = Lab::new();
    lab.attach(&["--capacity", &CAPACITY.to_string()]);
    assert_sized_for_the_capacity(&lab);

    // The client's grant first: the one an early eviction would take.
    let granted: Vec<IpAddr> = std::iter::once(IpAddr::V4(lab.client.client_v4))
        .chain((1..CAPACITY).map(stranger))
        .collect();
    let cpus = allowed_cpus();
    let (first, last) = (cpus[0], cpus[cpus.len() - 1]);
    grant_on_cpu(&lab, first, &granted);
    grant_on_cpu(&lab, last, &granted);

    let mut expected: Vec<String> = granted.iter().map(IpAddr::to_string).collect();
    expected.sort();
    let kept = listed(&lab);
    let lost: Vec<&String> = expected.iter().filter(|a| !kept.contains(a)).collect();
    assert!(
        lost.is_empty() && kept.len() == expected.len(),
        "{} of {CAPACITY} grants kept (written on CPU {first}, again on CPU {last}); \
         lost {} of them, the first {:?}",
        kept.len(),
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let passed_before = lab.stat("granted");
    let sent = lab
        .client
        .attempt_v4(SMTP_PORT, PASS_TIMEOUT)
        .expect_connected("the client, the oldest of the kept grants");
    let passed = lab.stat("granted") - passed_before;
    assert!(
        sent.admits(passed),
        "the gate let the SYN in by its grant: {passed} granted, {sent} sent"
    );
}

/// `serve --capacity`, a grant for the client, then a flood of more
/// grants than the map has slots (written on one CPU, so that the kernel's
/// LRU order is the order they were written in), then one more grant by
/// the CLI and a POP3 login: the oldest grant is evicted and denied, the
/// new ones work, and nothing reports an error.
#[test]
fn a_full_grant_map_evicts_its_oldest_grants_and_never_fails_open() {
    require_pop3_clients();
    let lab = Lab::new();
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{PASSWORD}"));
    let daemon = start_daemon(&lab, &mail, &["--capacity", &CAPACITY.to_string()]);
    let slots = assert_sized_for_the_capacity(&lab);
    let client = lab.client.client_v4;
    let newest = "10.199.0.1";

    let cpu = allowed_cpus()[0];
    on_cpu(cpu, || lab.gate_ok(&["grant", &client.to_string()]));
    // More grants than the map has slots: writes found it full, and the
    // kernel evicted to make room.
    let flood: Vec<IpAddr> = (0..slots).map(stranger).collect();
    grant_on_cpu(&lab, cpu, &flood);
    let cli = on_cpu(cpu, || lab.gate(&["grant", newest]));
    assert!(
        cli.status.success() && cli.stderr.is_empty(),
        "`smtp-gate grant` at a full map: {cli:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim(),
        format!("granted {newest}")
    );
    let after = listed(&lab);
    assert!(
        (CAPACITY as usize..=slots as usize).contains(&after.len()),
        "{} grants in a map of {slots} slots for a capacity of {CAPACITY}",
        after.len()
    );
    assert!(
        after.contains(&newest.to_string()),
        "the newest grant was evicted"
    );
    assert!(
        !after.contains(&client.to_string()),
        "the oldest grant, the client's, was not evicted: {after:?}"
    );

    // Each denied and counted so, nothing let through.
    let passed_before = lab.stat("granted");
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v4,
        SMTP_PORT,
        "the client, whose grant was evicted",
    );
    lab.assert_dropped(
        &lab.client,
        lab.client.server_v6,
        SMTP_PORT,
        "the client's IPv6 address, never granted",
    );

    // A login at the full map: granted before the +OK, so its SYN passes.
    let steps = pop3_client(
        &lab.client.client_ns,
        IpAddr::V4(lab.client.server_v4),
        json!([
            {"op": "connect"},
            {"op": "login", "user": USER, "password": PASSWORD},
            {"op": "smtp", "timeout": PASS_TIMEOUT.as_secs_f64()},
            {"op": "quit"},
        ]),
    );
    assert!(
        steps[1]["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("+OK")),
        "the login at a full map: {steps:#?}"
    );
    assert_eq!(
        steps[2]["smtp"], "connected",
        "the client's SYN after its login at a full map: {steps:#?}"
    );
    // Every SYN the client sent (as it counted them) passed by its grant.
    let sent = steps[2]["syns"][0].as_u64();
    let passed = lab.stat("granted") - passed_before;
    assert_eq!(Some(passed), sent, "passed by its grant: {steps:#?}");
    assert!(listed(&lab).contains(&client.to_string()));
    let log = daemon.log();
    assert!(
        log.contains(&format!("grant source=pop3 addr={client} user={USER}")),
        "the daemon logs the grant:\n{log}"
    );
    assert!(
        !log.contains("ERROR")
            && log
                .lines()
                .filter(|l| l.contains("grant source=pop3 addr="))
                .all(|l| !l.contains("failed")),
        "a full map is no error for the daemon:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// The gate's denial lines in the daemon's log: the program writes them
// through aya-log's ring buffer, rate limited per CPU by a token bucket
// (`--log-rate`, a burst of twice the rate), and `serve` forwards them.
// ---------------------------------------------------------------------------

/// One denial line of the gate, as the daemon's log shows it.
#[derive(Debug)]
struct DenialLine {
    from: IpAddr,
    port: u16,
    /// Denials left out since the line before on the same CPU.
    suppressed: u64,
}

/// The gate's denial lines in a daemon's log, in order. Panics on one that
/// does not read as the program writes them.
fn denial_lines(log: &str) -> Vec<DenialLine> {
    log.lines()
        .filter_map(|line| {
            line.split_once("denied SYN from ")
                .map(|(_, rest)| (line, rest))
        })
        .map(|(line, rest)| {
            let parsed = (|| {
                let (from, rest) = rest.split_once(" to port ")?;
                let (port, rest) = rest.split_once(": drop (")?;
                let suppressed = rest.strip_suffix(" more suppressed)")?;
                Some(DenialLine {
                    from: from.parse().ok()?,
                    port: port.parse().ok()?,
                    suppressed: suppressed.parse().ok()?,
                })
            })();
            parsed.unwrap_or_else(|| panic!("a denial line of another form: {line}"))
        })
        .collect()
}

/// The per-CPU log buckets of the pinned gate (in the counters' value):
/// (denials suppressed and not reported in a line yet, CPUs whose bucket
/// has been used).
fn pending_suppressed(lab: &Lab) -> (u64, u64) {
    let maps = GateMaps::open(&PinDir::new(lab.pin_dir())).expect("opening the gate's maps");
    let buckets: Vec<LogBucket> = maps.log_buckets().expect("reading the log buckets");
    let pending = buckets.iter().map(|b| b.suppressed).sum();
    let used = buckets.iter().filter(|b| b.refilled_at_ns != 0).count() as u64;
    (pending, used)
}

/// Waits (up to 30 s) until the daemon's log accounts for every SYN the
/// gate denied: each one is a line, or counted in a later line's "N more
/// suppressed", or still pending in its CPU's bucket. Returns the lines.
fn wait_for_every_denial_accounted(
    lab: &Lab,
    daemon: &testkit::serve::ServeDaemon,
) -> Vec<DenialLine> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let denied = lab.stat("denied_drop");
        let lines = denial_lines(&daemon.log());
        let reported: u64 = lines.iter().map(|l| l.suppressed).sum();
        let (pending, _) = pending_suppressed(lab);
        let accounted = lines.len() as u64 + reported + pending;
        if accounted == denied && denied > 0 {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{denied} SYNs denied, {accounted} accounted for in the daemon's log after 30 s: \
             {} lines, {reported} reported suppressed, {pending} pending\n{}",
            lines.len(),
            daemon.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A denied SYN of each family shows up in the daemon's log, naming its
/// source and port. Then, at one line a second (a burst of two per CPU), a
/// burst of 300 denied SYNs writes no more lines than the buckets allow
/// while the burst lasts; the rest are counted as suppressed, and a later
/// line says how many.
#[test]
fn denial_lines_reach_the_daemon_log_within_the_log_rate() {
    const BURST_SYNS: u16 = 300;
    let lab = Lab::new();
    let mail = MailFixture::new();
    let daemon = start_daemon(&lab, &mail, &[]);
    let client = lab.client.clone();

    lab.assert_dropped(&client, client.server_v4, SMTP_PORT, "ungranted IPv4");
    lab.assert_dropped(&client, client.server_v6, SMTP_PORT, "ungranted IPv6");
    let lines = wait_for_every_denial_accounted(&lab, &daemon);
    for from in [IpAddr::V4(client.client_v4), IpAddr::V6(client.client_v6)] {
        assert!(
            lines.iter().any(|l| l.from == from && l.port == SMTP_PORT),
            "no denial line for {from} to port {SMTP_PORT}: {lines:?}\n{}",
            daemon.log()
        );
    }

    lab.gate_ok(&["settings", "--log-rate", "1"]);
    let sender = RawSender::open(&client.client_ns, &client.client_iface)
        .unwrap_or_else(|e| panic!("a raw socket in the client namespace: {e}"));
    let denied_before = lab.stat("denied_drop");
    let burst_started = Instant::now();
    for i in 0..BURST_SYNS {
        let syn = PacketBuilder::ipv4(client.client_v4, client.server_v4)
            .tcp(40_000 + i, SMTP_PORT, SYN)
            .build();
        sender.send(&syn).unwrap_or_else(|e| panic!("SYN {i}: {e}"));
    }
    let burst_took = burst_started.elapsed();
    let all = wait_for_every_denial_accounted(&lab, &daemon);
    assert_eq!(
        lab.stat("denied_drop"),
        denied_before + u64::from(BURST_SYNS),
        "the gate denied every SYN of the burst"
    );
    let burst_lines = &all[lines.len()..];
    let (_, cpus) = pending_suppressed(&lab);
    // Per CPU: the bucket's two lines, and one more per second it refills.
    let most = cpus * (2 + burst_took.as_secs() + 1);
    assert!(
        (1..=most).contains(&(burst_lines.len() as u64)),
        "{} lines for a burst of {BURST_SYNS} denied SYNs in {burst_took:?} at 1 line/s \
         (burst 2) on {cpus} CPU(s): at most {most}\n{}",
        burst_lines.len(),
        daemon.log()
    );
    assert!(
        burst_lines
            .iter()
            .all(|l| l.from == IpAddr::V4(client.client_v4) && l.port == SMTP_PORT),
        "{burst_lines:?}"
    );

    // Once a token is back, the next denial's line says how many were left
    // out before it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = 50_000;
    while !denial_lines(&daemon.log())
        .iter()
        .skip(all.len())
        .any(|l| l.suppressed > 0)
    {
        assert!(
            Instant::now() < deadline,
            "no line reports the suppressed denials after 30 s:\n{}",
            daemon.log()
        );
        let syn = PacketBuilder::ipv4(client.client_v4, client.server_v4)
            .tcp(port, SMTP_PORT, SYN)
            .build();
        sender
            .send(&syn)
            .unwrap_or_else(|e| panic!("SYN from port {port}: {e}"));
        port += 1;
        thread::sleep(Duration::from_millis(500));
    }
}

/// `smtp-gate grant` and `revoke` write their lines to syslog, mail
/// facility, as the daemon's grant lines go to the journal: run inside a
/// private mount namespace whose /dev/log is the test's own socket.
#[test]
fn grant_and_revoke_write_their_lines_to_syslog() {
    let lab = Lab::new();
    lab.attach(&[]);
    let client = &lab.client;
    let dir = std::env::temp_dir().join(format!("syslog-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("log");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("a syslog socket");
    syslog.set_read_timeout(Some(EVENT_BOUND)).unwrap();
    let bin = testkit::gate_binary::smtp_gate_bin();
    let pin = lab.pin_dir_str();
    let with_syslog = |args: &[&str]| {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(
                "mount -t tmpfs none /dev; touch /dev/log; mount --bind \"$1\" /dev/log; \
                 shift; exec \"$@\"",
            )
            .arg("sh")
            .arg(&socket_path)
            .arg(&bin)
            .args(args)
            .args(["--pin-dir", &pin])
            .output()
            .expect("unshare runs");
        assert!(out.status.success(), "{}", testkit::process::describe(&out));
    };
    let read_line = || {
        let mut datagram = vec![0; 4096];
        let read = syslog.recv(&mut datagram).expect("a line on syslog");
        String::from_utf8_lossy(&datagram[..read]).into_owned()
    };
    let addr = v4(client);
    with_syslog(&["grant", &addr, "--for", "1h"]);
    let line = read_line();
    // <22>: facility mail (2), priority info (6).
    assert!(line.starts_with("<22>"), "{line}");
    assert!(line.contains(" smtp-gate["), "{line}");
    assert!(
        line.ends_with(&format!("]: grant source=cli addr={addr} for=1h")),
        "{line}"
    );
    with_syslog(&["revoke", &addr]);
    let line = read_line();
    assert!(
        line.ends_with(&format!("]: revoke source=cli addr={addr}")),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
