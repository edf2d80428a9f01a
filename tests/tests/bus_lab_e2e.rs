//! The grant bus across hosts (issue 13), the lab: six network
//! namespaces, none with a default route (testkit bus_lab.rs, lab.rs
//! `Hosts`): `engine` (a private redis-server), `pop` (`smtp-gate serve`
//! without a gate, publishing every login, its config file also read by
//! `smtp-gate revoke --config`), `edge1` and `edge2` (each `smtp-gate
//! agent` with its own gate on its own interface and its own pin
//! directory, and a TCP listener on port 25), `client`, and the switch
//! that joins them. One scenario, in order:
//!
//! 1. before a login both edges refuse the client's SYN; after a POP3
//!    login both accept it (and each agent logs the grant, and later the
//!    revoke, it applied: `source=bus`, the publishing host);
//! 2. with a 4 s window, the grant ends on both edges 4 s (+-1 s) after
//!    the `+OK`;
//! 3. 50 logins from new addresses: each grant is in both edges' maps
//!    soon after its `+OK` (measured; a generous bound asserted, the real
//!    figures come from `cargo xtask bench bus`);
//! 4. `smtp-gate revoke --config <pop's file>` reaches both edges;
//! 5. edge1's agent SIGKILLed while logins go on: after its restart it
//!    has every grant made meanwhile;
//! 6. the engine killed: both edges keep passing the granted and refusing
//!    the others, logins still succeed, the failure logged once; the
//!    engine back on its port and data: the agents and serve reconnect by
//!    themselves and new grants reach both edges.
//!
//! The single-host mode without a bus is pop3_e2e's.
//!
//! Needs root, a built binary (`cargo build -p gate-user`) and
//! redis-server (`cargo xtask setup`); panics otherwise (never skips).

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use smtp_gate::gate::GateMaps;
use testkit::{
    bus_lab::{BusLab, BusLabOptions, Login, ORIGIN},
    gate_binary::smtp_gate_in,
    process::describe,
    smtp::{DENY_TIMEOUT, PASS_TIMEOUT},
};

/// The short window of step 2.
const SHORT_WINDOW: Duration = Duration::from_secs(4);
/// The window of the other steps: nothing ends while the test runs.
const LONG_WINDOW: Duration = Duration::from_secs(600);
/// How far an edge's end of a grant may be from the window's end.
const SKEW: Duration = Duration::from_secs(1);
/// Logins of step 3.
const LOGINS: usize = 50;
/// The generous bound on +OK -> grant on an edge asserted here (the
/// issue's goal for the p99, 100 ms, is the bench's to show).
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);

fn both_maps(bus: &BusLab) -> Vec<GateMaps> {
    vec![bus.maps(1), bus.maps(2)]
}

/// Logs in from `from` and panics unless PASS got +OK.
fn login_ok(bus: &BusLab, from: IpAddr) -> Login {
    let login = bus.login_from(from);
    assert!(login.is_ok(), "login from {from}: {}", login.answer);
    login
}

/// +OK -> grant on each edge (zero if the grant was there first).
fn propagation(login: &Login, seen: &[Option<Instant>], from: IpAddr) -> Vec<Duration> {
    seen.iter()
        .enumerate()
        .map(|(e, at)| {
            let at = at.unwrap_or_else(|| {
                panic!(
                    "the grant of {from} is not on edge{} within {BOUND:?}",
                    e + 1
                )
            });
            at.saturating_duration_since(login.answered)
        })
        .collect()
}

fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len());
    sorted[rank - 1]
}

#[test]
fn grants_cross_from_the_pop3_host_through_the_engine_to_every_edge() {
    let mut bus = BusLab::new(BusLabOptions::default());
    bus.start_agent(1);
    bus.start_agent(2);
    bus.start_serve(SHORT_WINDOW, "", true);
    let client: IpAddr = bus.hosts.host("client").v4.into();

    // 1. Before a login both edges refuse the client; after one both let
    // it through.
    for e in [1, 2] {
        assert!(
            !bus.client_passes(e, DENY_TIMEOUT),
            "edge{e} lets the client through before any login"
        );
    }
    let accepted = [bus.hosts.accepted("edge1"), bus.hosts.accepted("edge2")];
    let login = login_ok(&bus, client);
    let maps = both_maps(&bus);
    let seen = BusLab::wait_granted(&maps, client, BOUND);
    let first = propagation(&login, &seen, client);
    for e in [1, 2] {
        assert!(
            bus.client_passes(e, PASS_TIMEOUT),
            "edge{e} refuses the client after its login"
        );
    }
    assert_eq!(bus.hosts.accepted("edge1"), accepted[0] + 1);
    assert_eq!(bus.hosts.accepted("edge2"), accepted[1] + 1);
    eprintln!("first login: +OK -> grant on edge1, edge2: {first:?}");
    // Each agent logs the grant it applied as a grant line of its own
    // source, naming the publishing host.
    for e in [1, 2] {
        let log = bus.agent(e).log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("grant source=bus addr={client} ")))
            .unwrap_or_else(|| panic!("edge{e} logs no grant line for {client}:\n{log}"));
        assert!(
            line.contains(&format!(" origin={ORIGIN} expires=20")),
            "edge{e}: {line}"
        );
    }

    // 2. The grant ends on the edges when the window the POP3 host gave
    // it ends, +-1 s.
    let ended = BusLab::wait_ended(&maps, client, SHORT_WINDOW + BOUND);
    for (e, at) in ended.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("the grant never ends on edge{}", e + 1));
        let lived = at.saturating_duration_since(login.answered);
        assert!(
            lived + SKEW >= SHORT_WINDOW && lived <= SHORT_WINDOW + SKEW,
            "on edge{} the grant of a {SHORT_WINDOW:?} window lived {lived:?}",
            e + 1
        );
        eprintln!("edge{}: the grant ended {lived:?} after the +OK", e + 1);
    }
    for e in [1, 2] {
        assert!(
            !bus.client_passes(e, DENY_TIMEOUT),
            "edge{e} lets the client through after its grant ended"
        );
    }

    // 3. Many logins, each from a new address: every grant reaches both
    // edges soon after its +OK.
    bus.start_serve(LONG_WINDOW, "", true);
    let sources = bus.new_sources(LOGINS as u32);
    let worker = bus.login_worker();
    let mut delays: Vec<Vec<Duration>> = vec![Vec::new(), Vec::new()];
    for &from in &sources {
        let login = worker
            .login(bus.pop3_server(from), from)
            .unwrap_or_else(|e| panic!("login from {from}: {e}"));
        assert!(login.is_ok(), "login from {from}: {}", login.answer);
        let seen = BusLab::wait_granted(&maps, from, BOUND);
        for (e, d) in propagation(&login, &seen, from).into_iter().enumerate() {
            delays[e].push(d);
        }
    }
    for (e, delays) in delays.iter_mut().enumerate() {
        delays.sort();
        let (p50, p99, max) = (
            nearest_rank(delays, 50),
            nearest_rank(delays, 99),
            delays[delays.len() - 1],
        );
        eprintln!(
            "edge{}: +OK -> grant over {LOGINS} logins: p50 {p50:?}, p99 {p99:?}, max {max:?}",
            e + 1
        );
        assert!(
            max <= PROPAGATION_BOUND,
            "edge{}: a grant took {max:?} from its +OK (bound {PROPAGATION_BOUND:?})",
            e + 1
        );
    }
    for &from in &sources[..3] {
        for e in [1, 2] {
            assert!(
                bus.passes_from(e, from, PASS_TIMEOUT),
                "edge{e} refuses {from} after its login"
            );
        }
    }

    // 4. A revoke on the POP3 host, with its config file, reaches both
    // edges.
    login_ok(&bus, client);
    assert!(BusLab::wait_granted(&maps, client, BOUND)
        .iter()
        .all(Option::is_some));
    let pop = bus.hosts.host("pop").clone();
    let config = bus.serve_config().to_string_lossy().into_owned();
    let out = smtp_gate_in(
        &pop.ns,
        &[
            "revoke",
            &client.to_string(),
            "--config",
            &config,
            "--pin-dir",
            &pop.pin_dir_str(),
        ],
    );
    assert!(out.status.success(), "revoke: {}", describe(&out));
    let revoked = Instant::now();
    let ended = BusLab::wait_ended(&maps, client, BOUND);
    for (e, at) in ended.iter().enumerate() {
        assert!(at.is_some(), "the revoke does not reach edge{}", e + 1);
    }
    eprintln!(
        "revoke -> gone from both edges: {:?}",
        ended
            .iter()
            .flatten()
            .map(|at| at.saturating_duration_since(revoked))
            .max()
    );
    for e in [1, 2] {
        assert!(
            !bus.client_passes(e, DENY_TIMEOUT),
            "edge{e} lets the client through after the revoke"
        );
        let log = bus.agent(e).log();
        assert!(
            log.contains(&format!("revoke source=bus addr={client} origin={ORIGIN}")),
            "edge{e} logs no revoke line:\n{log}"
        );
    }

    // 5. edge1's agent killed while logins go on: restarted, it has every
    // grant made meanwhile (edge2 had them all along).
    let meanwhile = bus.new_sources(15);
    for (i, &from) in meanwhile.iter().enumerate() {
        if i == 5 {
            bus.kill_agent(1);
        }
        let login = worker
            .login(bus.pop3_server(from), from)
            .unwrap_or_else(|e| panic!("login from {from}: {e}"));
        assert!(login.is_ok(), "login from {from}: {}", login.answer);
        assert!(
            BusLab::wait_granted(&maps[1..], from, BOUND)[0].is_some(),
            "{from} not on edge2"
        );
    }
    bus.start_agent(1);
    for &from in &meanwhile {
        assert!(
            BusLab::wait_granted(&maps[..1], from, BOUND)[0].is_some(),
            "edge1's agent, restarted, lacks the grant of {from}"
        );
    }
    assert!(bus.passes_from(1, meanwhile[14], PASS_TIMEOUT));

    // 6. The engine killed: the edges keep their verdicts, logins go on
    // with one line in the log; back, everything reconnects by itself.
    let granted = meanwhile[14];
    let never = bus.new_source();
    bus.engine.kill();
    for e in [1, 2] {
        bus.agent(e).wait_for_log("; reconnecting", 1, BOUND);
    }
    let mut during = Vec::new();
    for _ in 0..3 {
        let from = bus.new_source();
        let login = worker
            .login(bus.pop3_server(from), from)
            .unwrap_or_else(|e| panic!("login from {from} with the engine down: {e}"));
        assert!(
            login.is_ok(),
            "login with the engine down: {}",
            login.answer
        );
        during.push(from);
    }
    for e in [1, 2] {
        assert!(
            bus.passes_from(e, granted, PASS_TIMEOUT),
            "edge{e} refuses {granted}, granted before the outage"
        );
        assert!(
            !bus.passes_from(e, never, DENY_TIMEOUT),
            "edge{e} lets {never}, never granted, through during the outage"
        );
    }
    // Several reconnection attempts later, still one line each.
    thread::sleep(Duration::from_secs(3));
    let log = bus.serve_log();
    assert_eq!(
        log.matches("bus serve: publishing fails").count(),
        1,
        "three logins with the engine down, one line:\n{log}"
    );
    for from in &during {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("grant source=pop3 addr={from} ")))
            .unwrap_or_else(|| panic!("no grant line for {from}:\n{log}"));
        assert!(
            line.contains(" bus=") && !line.contains("bus=published"),
            "a login with the engine down: {line}"
        );
    }
    for e in [1, 2] {
        let agent = bus.agent(e).log();
        assert_eq!(
            agent.matches("; reconnecting").count(),
            1,
            "edge{e}:\n{agent}"
        );
        assert_eq!(bus.agent(e).exited(), None, "edge{e}'s agent runs on");
    }

    bus.engine.restart();
    for e in [1, 2] {
        bus.agent(e).wait_for_log("connected to", 2, BOUND);
    }
    bus.serve()
        .wait_for_log("bus serve: connected to", 2, BOUND);
    let after = bus.new_source();
    let login = worker
        .login(bus.pop3_server(after), after)
        .unwrap_or_else(|e| panic!("login from {after}: {e}"));
    assert!(login.is_ok(), "{}", login.answer);
    let seen = BusLab::wait_granted(&maps, after, BOUND);
    propagation(&login, &seen, after);
    for e in [1, 2] {
        assert!(
            bus.passes_from(e, after, PASS_TIMEOUT),
            "edge{e} refuses {after}, granted after the engine came back"
        );
        assert!(
            bus.passes_from(e, granted, PASS_TIMEOUT),
            "edge{e} lost {granted} over the outage"
        );
    }
}
