//! `cargo xtask bench hooks`: what Dovecot's and Postfix's hooks of
//! `smtp-gate serve` (issue 12) cost, each beside a baseline of the same
//! run, all in labs (network namespaces without a default route):
//!
//! - login.rs: a real Dovecot (the shipped 2.3 snippet) logged in to over
//!   IMAP, each login from a new address: the time from the login's OK to
//!   its grant in the gate's map, and login -> OK with no policy server,
//!   with a floor policy server and with smtp-gate, in turns;
//! - throughput.rs: requests per second of the Dovecot endpoint (reports
//!   of successes from new addresses; allow requests) and of the Postfix
//!   policy service (granted, exempt and refused clients in turn), over
//!   kept-alive connections from a load generator in this process, beside
//!   floor servers that answer without looking at anything
//!   (bin/policy-floor.rs), with the CPU of each side.
//!
//! load.rs speaks the protocols, setup.rs starts the pieces.

mod load;
mod login;
mod setup;
mod throughput;

use std::{sync::OnceLock, time::Duration, time::Instant};

use anyhow::Result;
use serde_json::json;

use crate::report::{self, percentile, Figure, Machine};
use login::{LoginResults, Policy, POLL_INTERVAL};
use throughput::{Sample, Server, CONNECTIONS, WORKLOADS};

fn progress(what: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("hooks [{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

pub fn run(quick: bool) -> Result<()> {
    progress("building smtp-gate and policy-floor");
    // The labs run the smtp-gate binary beside this one.
    crate::binaries::build("gate-user", "smtp-gate")?;
    crate::binaries::build("gate-bench", "policy-floor")?;
    let (logins, runs, span) = if quick {
        (100, 1, Duration::from_secs(1))
    } else {
        (1000, 5, Duration::from_secs(3))
    };
    let logins = login::run(logins, &progress)?;
    let samples = throughput::run(runs, span, &progress)?;
    let machine = Machine::describe();
    let mut md = format!(
        "# smtp-gate hooks benchmark (Dovecot auth policy, Postfix policy)\n\n{}\
         Command: `cargo xtask bench hooks{}`. Shared machine: other jobs may run beside \
         (the rest column says how much CPU went elsewhere).\n",
        machine.markdown(),
        if quick { " --quick" } else { "" }
    );
    let (login_md, login_json) = render_logins(&logins);
    md += &login_md;
    let (load_md, load_json) = render_throughput(&samples, runs, span);
    md += &load_md;
    let json = json!({
        "machine": machine,
        "quick": quick,
        "logins": login_json,
        "throughput": load_json,
    });
    let path = report::write("hooks", &md, &json)?;
    println!("{md}");
    eprintln!("report: {}", path.display());
    Ok(())
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn render_logins(results: &LoginResults) -> (String, serde_json::Value) {
    let n = results.logins;
    let mut md = format!(
        "\n## Dovecot login -> grant\n\n\
         Dovecot {} (Debian), one per configuration, each in a lab of its own, IMAP over IPv6 from \
         the lab's client namespace; every login from a new source address (added `nodad` to the \
         client's veth), so every login of the smtp-gate configuration makes a new grant. \
         {n} measured logins per configuration (after 20 unmeasured), the configurations taking \
         turns login by login. The policy configurations include `{}` with only \
         `auth_policy_server_url` changed: to the floor server (HTTP/1.1, answers \
         `{{\"status\":0}}` without reading the JSON) or to `smtp-gate serve` (`listen = []`, \
         `dovecot_policy_listen`, the gate attached to the lab's server veth; the other two labs \
         have no gate, so only that lab's IMAP packets pass its XDP program).\n\n\
         Login -> OK: from sending `LOGIN` to reading its tagged OK (the session's imap process \
         started), in ms; percentiles by nearest rank.\n\n\
         | configuration | p50 ms | p99 ms | max ms | p50 - no policy | p99 - no policy |\n\
         |---|---:|---:|---:|---:|---:|\n",
        dovecot_version(),
        results.snippet,
    );
    let off = results
        .by_policy
        .iter()
        .find(|(p, _)| *p == Policy::Off)
        .map(|(_, m)| m.login_to_ok_us.clone())
        .unwrap_or_default();
    let (off50, off99) = (percentile(&off, 50.0), percentile(&off, 99.0));
    let mut json_policies = serde_json::Map::new();
    for (policy, m) in &results.by_policy {
        let s = &m.login_to_ok_us;
        let (p50, p99, max) = (
            percentile(s, 50.0),
            percentile(s, 99.0),
            percentile(s, 100.0),
        );
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            policy.label(),
            ms(p50),
            ms(p99),
            ms(max),
            if *policy == Policy::Off {
                "-".into()
            } else {
                format!("{:+.2}", (p50 - off50) / 1000.0)
            },
            if *policy == Policy::Off {
                "-".into()
            } else {
                format!("{:+.2}", (p99 - off99) / 1000.0)
            },
        );
        json_policies.insert(
            policy.label().into(),
            json!({"login_to_ok_us": {"p50": p50, "p99": p99, "max": max}, "samples": m}),
        );
    }
    let gate = results
        .by_policy
        .iter()
        .find(|(p, _)| *p == Policy::Gate)
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let g = &gate.grant_minus_ok_us;
    let sent = &gate.grant_minus_sent_us;
    let before = g.iter().filter(|&&x| x < 0.0).count();
    md += &format!(
        "\nWhen the grant is in the map (smtp-gate configuration): a thread of the harness reads \
         the gate's grant map (`GateMaps::grant_of` on the lab's pin directory) every {} µs (plus \
         the sleep's slack, ~50 µs) from before `LOGIN` is sent until the login's address \
         appears; the instants are CLOCK_MONOTONIC. Grant - OK is negative when the grant was in \
         the map before the client read its OK: Dovecot's auth process sends the report when the \
         password is found good, and the OK comes only once the imap process of the session \
         runs.\n\n\
         | from | logins | p50 ms | p99 ms | max ms | min ms |\n\
         |---|---:|---:|---:|---:|---:|\n\
         | the login's OK | {} | {} | {} | {} | {} |\n\
         | `LOGIN` sent | {} | {} | {} | {} | {} |\n\n\
         Grants in the map before their login's OK: {before} of {}; logins that left no grant \
         within 10 s: {}.\n",
        POLL_INTERVAL.as_micros(),
        g.len(),
        ms(percentile(g, 50.0)),
        ms(percentile(g, 99.0)),
        ms(percentile(g, 100.0)),
        ms(percentile(g, 0.0)),
        sent.len(),
        ms(percentile(sent, 50.0)),
        ms(percentile(sent, 99.0)),
        ms(percentile(sent, 100.0)),
        ms(percentile(sent, 0.0)),
        g.len(),
        results.grants_missing,
    );
    for missing in &gate.missing_grants {
        md += &format!("\nNo grant: {missing}\n");
    }
    for (policy, m) in &results.by_policy {
        if !m.dovecot_policy_errors.is_empty() {
            md += &format!(
                "\nDovecot ({}) logged {} policy error line(s), e.g. `{}`\n",
                policy.label(),
                m.dovecot_policy_errors.len(),
                m.dovecot_policy_errors[0]
            );
        }
    }
    let json = json!({
        "logins": n,
        "snippet": results.snippet,
        "poll_interval_us": POLL_INTERVAL.as_micros() as u64,
        "grant_minus_ok_us": {
            "p50": percentile(g, 50.0), "p99": percentile(g, 99.0),
            "max": percentile(g, 100.0), "min": percentile(g, 0.0),
            "before_ok": before, "missing": results.grants_missing,
        },
        "grant_minus_login_sent_us": {
            "p50": percentile(sent, 50.0), "p99": percentile(sent, 99.0),
            "max": percentile(sent, 100.0), "min": percentile(sent, 0.0),
        },
        "configurations": json_policies,
    });
    (md, json)
}

fn dovecot_version() -> String {
    std::process::Command::new("dovecot")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn render_throughput(
    samples: &[Sample],
    runs: usize,
    span: Duration,
) -> (String, serde_json::Value) {
    let mut md = format!(
        "\n## Policy requests per second\n\n\
         `smtp-gate serve` (`listen = []`, both hooks, the gate attached; 4096 addresses granted anew \
         before each Postfix measurement, `exempt` a /16) beside the floor server of the same protocol \
         (bench/src/bin/policy-floor.rs: tokio multi-threaded as the daemon, reads a request and \
         answers `action=DUNNO` or `{{\"status\":0}}` without looking at it), both in the lab's \
         server namespace on its loopback. Load generator: this process, one tokio thread in the \
         same namespace, N kept-alive connections each sending a request, reading and checking \
         its answer, then the next. Every figure: median (min–max) of {runs} run(s) of {}s, \
         smtp-gate and the floor alternating. CPU in cores (CPU seconds per second): srv the \
         server's processes, gen the load generator, rest everything else (loopback softirq \
         included). µs/req: the server's CPU per answered request. The generator has one \
         thread: at 1 core it, not the server, is the limit. The daemon's log lines (one per \
         grant) go to a file here, to the journal in a deployment.\n\n\
         Requests: Dovecot's as Dovecot 2.3 sends them with the shipped snippet's attributes \
         (reports: `success: true`, each from a new address, so each grants anew and logs its \
         grant line; allow: an address not banned); Postfix's at RCPT with the 31 attributes \
         of 3.x, the client granted, exempt and neither in turn (answers checked: `OK`, \
         `DUNNO`, `554 ...`; the floor's `DUNNO`).\n\n\
         | workload | conns | smtp-gate req/s | floor req/s | smtp-gate ÷ floor | smtp-gate µs/req | floor µs/req | µs/req ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        span.as_secs_f64()
    );
    let mut rows = Vec::new();
    for workload in WORKLOADS {
        for connections in CONNECTIONS {
            let of = |server: Server| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| {
                        s.workload == workload && s.connections == connections && s.server == server
                    })
                    .collect()
            };
            let (gate, floor) = (of(Server::Gate), of(Server::Floor));
            if gate.is_empty() || floor.is_empty() {
                continue;
            }
            let fig = |v: &[&Sample], f: fn(&Sample) -> f64| {
                Figure::of(&v.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let cell = |v: &[&Sample]| {
                let rate = fig(v, |s| s.per_sec);
                let errors: u64 = v.iter().map(|s| s.errors).sum();
                format!(
                    "{} [srv {:.2}, gen {:.2}, rest {:.2}]{}",
                    rate.cell(0),
                    fig(v, |s| s.server_cpu).median,
                    fig(v, |s| s.gen_cpu).median,
                    fig(v, |s| s.rest_cpu).median,
                    if errors > 0 {
                        format!(" ({errors} failed)")
                    } else {
                        String::new()
                    }
                )
            };
            let rate_ratio = fig(&gate, |s| s.per_sec).median / fig(&floor, |s| s.per_sec).median;
            let (gus, fus) = (
                fig(&gate, |s| s.server_us_per_request).median,
                fig(&floor, |s| s.server_us_per_request).median,
            );
            md += &format!(
                "| {} | {connections} | {} | {} | {rate_ratio:.2}× | {gus:.1} | {fus:.1} | {:.2}× |\n",
                workload.label(),
                cell(&gate),
                cell(&floor),
                gus / fus
            );
            rows.push(json!({
                "workload": workload.label(),
                "connections": connections,
                "smtp_gate": {"per_sec": fig(&gate, |s| s.per_sec), "server_cpu": fig(&gate, |s| s.server_cpu),
                              "gen_cpu": fig(&gate, |s| s.gen_cpu), "us_per_request": gus},
                "floor": {"per_sec": fig(&floor, |s| s.per_sec), "server_cpu": fig(&floor, |s| s.server_cpu),
                          "gen_cpu": fig(&floor, |s| s.gen_cpu), "us_per_request": fus},
                "per_sec_ratio": rate_ratio,
                "us_per_request_ratio": gus / fus,
            }));
        }
    }
    (md, json!({"rows": rows, "samples": samples}))
}
