//! The flood report: Markdown and JSON.

use serde_json::json;

use super::{
    cost::TestRunCost, gen, net, Config, Generator, Params, RejectSample, Sample, GOAL_P99_FACTOR,
    GOAL_REJECT_RATIO,
};
use crate::report::{Figure, Machine};

fn fig(values: impl IntoIterator<Item = f64>) -> Option<Figure> {
    let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| Figure::of(&v))
}

/// The median, with (min–max) when there are several runs and `spread`.
fn cell(f: Option<Figure>, decimals: usize, spread: bool) -> String {
    match f {
        None => "n/a".into(),
        Some(f) if !spread || f.runs == 1 => format!("{:.d$}", f.median, d = decimals),
        Some(f) => f.cell(decimals),
    }
}

fn median(f: &Option<Figure>) -> f64 {
    f.map_or(f64::NAN, |f| f.median)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

struct Row {
    config: Config,
    calm_ok: Option<Figure>,
    calm_p50: Option<Figure>,
    calm_p99: Option<Figure>,
    flood_ok: Option<Figure>,
    flood_p50: Option<Figure>,
    flood_p99: Option<Figure>,
    worst_flood_ok: f64,
    sent_mpps: Option<Figure>,
    gen_cpu_pct: Option<Figure>,
    gen_ns_per_syn: Option<Figure>,
    at_server_mpps: Option<Figure>,
    ring_drop_pct: Option<Figure>,
    at_tcp_pct: Option<Figure>,
    server_cpu_per_m: Option<Figure>,
    napi_per_m: Option<Figure>,
    napi_busy_pct: Option<Figure>,
    mta_flood: u64,
    mta_legit: u64,
    filter_counted: u64,
    at_server_total: f64,
}

fn row(config: Config, samples: &[&Sample]) -> Row {
    let f = |g: &dyn Fn(&Sample) -> f64| fig(samples.iter().map(|s| g(s)));
    let gen_secs = |s: &Sample| s.gen().seconds.max(1e-9);
    Row {
        config,
        calm_ok: f(&|s| s.calm.legit.success_pct()),
        calm_p50: f(&|s| s.calm.legit.percentile(50.0)),
        calm_p99: f(&|s| s.calm.legit.percentile(99.0)),
        flood_ok: f(&|s| s.flood.legit.success_pct()),
        flood_p50: f(&|s| s.flood.legit.percentile(50.0)),
        flood_p99: f(&|s| s.flood.legit.percentile(99.0)),
        worst_flood_ok: samples
            .iter()
            .map(|s| s.flood.legit.success_pct())
            .fold(f64::INFINITY, f64::min),
        sent_mpps: f(&|s| s.gen().rate_pps() / 1e6),
        gen_cpu_pct: f(&|s| 100.0 * s.gen().cpu_seconds / gen_secs(s)),
        gen_ns_per_syn: f(&|s| s.gen().cpu_seconds / s.gen().sent.max(1) as f64 * 1e9),
        at_server_mpps: f(&|s| s.flood_at_server / gen_secs(s) / 1e6),
        ring_drop_pct: f(&|s| {
            100.0 * s.ring_drops as f64 / (s.ring_drops as f64 + s.flood_at_server).max(1.0)
        }),
        at_tcp_pct: f(&|s| 100.0 * s.flood_at_tcp / s.flood_at_server.max(1.0)),
        server_cpu_per_m: f(&|s| s.server_cpu_per_m()),
        napi_per_m: f(&|s| s.napi_per_m()),
        napi_busy_pct: f(&|s| 100.0 * s.flood.napi_s / gen_secs(s)),
        mta_flood: samples
            .iter()
            .map(|s| s.flood.mta_connects.get("flood").copied().unwrap_or(0))
            .sum(),
        mta_legit: samples
            .iter()
            .map(|s| {
                s.flood
                    .mta_connects
                    .iter()
                    .filter(|(k, _)| k.as_str() != "flood")
                    .map(|(_, v)| *v)
                    .sum::<u64>()
            })
            .sum(),
        filter_counted: samples
            .iter()
            .map(|s| s.flood.gate_denied.max(s.flood.nft_dropped))
            .sum(),
        at_server_total: samples.iter().map(|s| s.flood_at_server).sum(),
    }
}

fn rows_of(samples: &[Sample], generator: Generator) -> Vec<Row> {
    Config::ALL
        .iter()
        .map(|c| {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.config == c.key() && s.generator == generator.key())
                .collect();
            row(*c, &of)
        })
        .collect()
}

fn table(rows: &[Row], spread: bool) -> String {
    let mut md = String::from(
        "| configuration | legit OK % calm / flood | legit p50 / p99 ms, calm | legit p50 / p99 \
         ms, flood | generator Mpps (its CPU %, ns/SYN) | SYNs at server Mpps | ring drops % | \
         reaching TCP % | server CPU s/M SYNs (CPU 1) | NAPI thread s/M SYNs (busy %) | MTA \
         connects flood / legit |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        md += &format!(
            "| {} | {} / {} | {} / {} | {} / {} | {} ({}, {}) | {} | {} | {} | {} | {} ({}) | {} \
             / {} |\n",
            r.config.name(),
            cell(r.calm_ok, 1, false),
            cell(r.flood_ok, 1, false),
            cell(r.calm_p50, 2, false),
            cell(r.calm_p99, 2, spread),
            cell(r.flood_p50, 2, false),
            cell(r.flood_p99, 2, spread),
            cell(r.sent_mpps, 2, spread),
            cell(r.gen_cpu_pct, 0, false),
            cell(r.gen_ns_per_syn, 0, false),
            cell(r.at_server_mpps, 2, spread),
            cell(r.ring_drop_pct, 1, false),
            cell(r.at_tcp_pct, 1, false),
            if median(&r.server_cpu_per_m) < 0.0 {
                // Less busy than in the calm phase: others' load moved.
                "<0 (noise)".to_string()
            } else {
                cell(r.server_cpu_per_m, 3, spread)
            },
            cell(r.napi_per_m, 3, spread),
            cell(r.napi_busy_pct, 0, false),
            r.mta_flood,
            r.mta_legit,
        );
    }
    md
}

pub(super) fn render(
    machine: &Machine,
    p: &Params,
    quick: bool,
    samples: &[Sample],
    rejects: &[RejectSample],
    test_run: &TestRunCost,
) -> (String, serde_json::Value) {
    let spread = p.runs > 1;
    let mut md = String::from("# smtp-gate flood benchmark\n\n");
    md += &machine.markdown();
    md += &format!(
        "\nCommand: `cargo xtask bench flood{}`. {} Per configuration: a calm phase of {} s \
         (legitimate client only), then a flood of {} s from each generator (their order \
         alternates by run); configurations alternate within each run. Method and caveats \
         below the goals.\n",
        if quick { " --quick" } else { "" },
        if spread {
            format!("Median (min–max) of {} runs.", p.runs)
        } else {
            "One run (quick mode): every figure is that run's, not a median of several.".into()
        },
        p.calm.as_secs_f64(),
        p.flood.as_secs_f64(),
    );
    let mut by_gen = Vec::new();
    for generator in Generator::ALL {
        let rows = rows_of(samples, generator);
        md += &format!("\n## Flood: {}\n\n", generator.name());
        md += &table(&rows, spread);
        by_gen.push((generator, rows));
    }

    // The cost of one rejected sender.
    let postfix_us = fig(rejects.iter().map(|r| r.postfix_us()));
    let server_us = fig(rejects.iter().map(|r| r.server_us()));
    let attempts: usize = rejects.iter().map(|r| r.result.attempts).sum();
    let drop_ns = |g: Generator, cpu1: bool| {
        by_gen
            .iter()
            .find(|(gen, _)| *gen == g)
            .and_then(|(_, rows)| rows.iter().find(|r| r.config == Config::XdpDrop))
            .map_or(f64::NAN, |r| {
                median(if cpu1 {
                    &r.server_cpu_per_m
                } else {
                    &r.napi_per_m
                }) * 1e3
            })
    };
    md += &format!(
        "\n## The cost of one rejected sender\n\n{attempts} full attempts in all from an address \
         the Postfix client table does not list (connect, EHLO, MAIL FROM, RCPT TO → `554 5.7.1 \
         Client host rejected`, QUIT), one after another, beside one SYN dropped by smtp-gate \
         (XDP, deny drop).\n\n| what | CPU per attempt or per SYN |\n|---|---:|\n\
         | Postfix's processes (master and daemons, schedstat) | {} µs |\n\
         | Postfix, whole server CPU (+ kernel TCP; CPU 1 minus its idle rate) | {} µs |\n",
        cell(postfix_us, 1, spread),
        cell(server_us, 1, spread),
    );
    for g in Generator::ALL {
        md += &format!(
            "| smtp-gate, server veth NAPI thread per flood SYN, {} | {:.0} ns |\n\
             | smtp-gate, CPU 1 per flood SYN, {} | {:.0} ns |\n",
            g.key(),
            drop_ns(g, false),
            g.key(),
            drop_ns(g, true),
        );
    }
    md += &format!(
        "| smtp-gate XDP program alone, BPF_PROG_TEST_RUN mean ({} repetitions) | {:.1} ns |\n\
         | smtp-gate TC program alone, BPF_PROG_TEST_RUN mean | {:.1} ns |\n",
        test_run.repeat, test_run.xdp_drop_ns, test_run.tc_drop_ns
    );
    let ratio = |g: Generator| median(&postfix_us) * 1e3 / drop_ns(g, false);
    let ratio_whole = |g: Generator| median(&server_us) * 1e3 / drop_ns(g, true);
    let ratio_test_run = median(&postfix_us) * 1e3 / test_run.xdp_drop_ns;
    md += "\nRatios, Postfix's processes per rejected attempt / the gate's NAPI thread per \
           dropped SYN (whole server CPU on both sides in brackets):";
    for g in Generator::ALL {
        md += &format!(
            " {} flood **{:.0}x** ({:.0}x);",
            g.key(),
            ratio(g),
            ratio_whole(g)
        );
    }
    md += &format!(
        " the XDP program alone (BPF_PROG_TEST_RUN): {ratio_test_run:.0}x. A dropped client \
         retries its SYN (about 6 times over 2 minutes); with deny reset one SYN and one RST \
         end the attempt.\n"
    );

    // Goals.
    md += "\n## Goals\n\n";
    let mut goals = Vec::new();
    for (g, rows) in &by_gen {
        for r in rows.iter().filter(|r| r.config.is_smtp_gate()) {
            let all_ok = r.worst_flood_ok >= 100.0;
            let p99_ok = median(&r.flood_p99) <= GOAL_P99_FACTOR * median(&r.calm_p99);
            let ok = all_ok && p99_ok;
            md += &format!(
                "- Granted client, {}, {} flood: 100% success ({:.1}% in the worst run) and p99 \
                 within {GOAL_P99_FACTOR}x of the calm figure ({:.2} ms vs {:.2} ms): **{}**\n",
                r.config.name(),
                g.key(),
                r.worst_flood_ok,
                median(&r.flood_p99),
                median(&r.calm_p99),
                met(ok)
            );
            goals.push(json!({"goal": "granted_client", "config": r.config.key(),
                "generator": g.key(), "met": ok}));
        }
    }
    for (g, rows) in &by_gen {
        let nft = rows.iter().find(|r| r.config == Config::Nftables);
        let (nft_napi, nft_cpu1) = nft.map_or((f64::NAN, f64::NAN), |r| {
            (median(&r.napi_per_m), median(&r.server_cpu_per_m))
        });
        for r in rows.iter().filter(|r| r.config.is_smtp_gate()) {
            let (napi, cpu1) = (median(&r.napi_per_m), median(&r.server_cpu_per_m));
            let ok = napi <= nft_napi;
            md += &format!(
                "- {}, {} flood: server CPU per million flood SYNs <= nftables: NAPI thread \
                 {napi:.3} s vs {nft_napi:.3} s: **{}** (CPU 1: {cpu1:.3} s vs {nft_cpu1:.3} s, {}){}\n",
                r.config.name(),
                g.key(),
                met(ok),
                if (cpu1 <= nft_cpu1) == ok {
                    "agrees"
                } else {
                    "disagrees"
                },
                if r.config == Config::XdpReset {
                    "; reset also builds and sends a RST per SYN"
                } else {
                    ""
                },
            );
            goals.push(json!({"goal": "cpu_vs_nftables", "config": r.config.key(),
                "generator": g.key(), "met": ok, "napi_s_per_m": napi,
                "nftables_napi_s_per_m": nft_napi, "cpu1_s_per_m": cpu1,
                "nftables_cpu1_s_per_m": nft_cpu1}));
        }
    }
    for g in Generator::ALL {
        let (r, whole) = (ratio(g), ratio_whole(g));
        let ok = r >= GOAL_REJECT_RATIO;
        md += &format!(
            "- One rejected sender costs >= {GOAL_REJECT_RATIO:.0}x more CPU in Postfix's table \
             check than one SYN dropped by smtp-gate, {} flood: {r:.0}x: **{}** (whole server \
             CPU: {whole:.0}x; the program alone: {ratio_test_run:.0}x)\n",
            g.key(),
            met(ok)
        );
        goals.push(
            json!({"goal": "rejected_sender_ratio", "generator": g.key(), "met": ok,
            "ratio": r, "ratio_whole_server": whole, "ratio_test_run": ratio_test_run}),
        );
    }

    md += &method(p, &by_gen);

    let json = json!({
        "machine": machine,
        "quick": quick,
        "runs": p.runs,
        "flood_seconds": p.flood.as_secs_f64(),
        "calm_seconds": p.calm.as_secs_f64(),
        "samples": samples,
        "rejected_sender": rejects,
        "test_run": test_run,
        "goals": goals,
    });
    (md, json)
}

fn method(p: &Params, by_gen: &[(Generator, Vec<Row>)]) -> String {
    let mut counted = Vec::new();
    for (g, rows) in by_gen {
        for r in rows.iter().filter(|r| r.filter_counted > 0) {
            counted.push(format!(
                "{} ({}): {} counted by the filter, {:.0} at the veth",
                r.config.name(),
                g.key(),
                r.filter_counted,
                r.at_server_total
            ));
        }
    }
    format!(
        "\n## Method\n\n\
         - Network: two namespaces made by the suite (testkit's lab) joined by one veth pair, \
         no default route in either (asserted before any flood). Spoofed sources are random \
         addresses of 198.18.0.0/15 (RFC 2544). The server routes that range to the client veth \
         only, so its SYN-ACKs and RSTs go where a real server's would, and the client namespace \
         drops them at ingress (nftables, netdev hook) and forwards nothing.\n\
         - Generators, each on one thread in the client namespace pinned to CPU {cli}, as fast as \
         they go (but for the paced one), for {flood} s and {max} SYNs at most: (1) an AF_PACKET \
         socket on the client veth, {frames} pre-built SYN frames (distinct sources, random ports \
         and sequence numbers, Linux's SYN options) sent round robin by sendmmsg, 64 per call: \
         every SYN is a socket buffer, and on a veth the server's XDP program runs on a copy of \
         it; (1b) the same, paced: each batch of 64 is sent when it is due (sleep, then spin), \
         {paced} Mpps, twice what this server drains with no filter, well below what the filters \
         drain, so that they have CPU to spare (where the server cannot drain it, with no filter \
         or Postfix's table, the veth takes only what it drains); (2) XDP live \
         frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES on the client veth, an \
         XDP program, assembled by the suite, that writes the SYN template anew (recycled pages \
         keep what the server did to them, e.g. the gate's in-place RST), randomizes the source \
         in 198.18.0.0/16 and the source port with RFC 1624 checksum updates, and returns XDP_TX): the server veth receives raw frames, \
         as a driver receives them from a NIC, and builds socket buffers only for what XDP \
         passes. Each generator's rate (SYNs the veth took from AF_PACKET; SYNs sent by XDP_TX, \
         room in the server's ring or not), its own thread CPU (CLOCK_THREAD_CPUTIME_ID) and its \
         CPU per SYN are shown beside the figures. The client veth runs a 14-instruction XDP \
         guard that drops whatever is addressed to 198.18.0.0/15 (the server's SYN-ACKs and \
         RSTs to spoofed sources) on arrival.\n\
         - Server CPU: both veths run threaded NAPI. The server veth has GRO on (so it has NAPI \
         without XDP), the client veth TSO off (so a veth hands every frame to that NAPI); the \
         server's NAPI thread is pinned to CPU {srv} with Postfix, the client's to CPU {cli}, \
         both SCHED_FIFO {prio} so that packet processing preempts processes as softirq \
         processing does. The server's whole receive path (XDP, tc, nftables ingress, IP, TCP, \
         SYN-ACKs) runs in its NAPI thread. \"NAPI thread s/M SYNs\": that thread's run time \
         (schedstat) during the flood, minus the calm phase's rate, per million flood SYNs the \
         server veth received (its rx_packets minus the calm rate); the goal is judged on it, as \
         it holds all of a filter's work and none of the other tenants of this shared machine. \
         \"CPU 1\": the same from CPU {srv}'s busy time in /proc/stat \
         (user+nice+system+irq+softirq), which also holds timers (SYN-ACK retransmissions) and \
         anything else that ran there. \"Ring drops\": SYNs the server veth's 256-slot ring had \
         no room for (dropped before any filter ran). \"Reaching TCP\": segments counted by the \
         server's TCP (Tcp.InSegs) beyond the calm rate, per SYN at the veth. {counted}\n\
         - Legitimate client: 10.231.1.2 (granted by the gate, in the nftables set, OK in the \
         Postfix table), a thread in the client namespace on CPU {cli}, SCHED_FIFO (it stands \
         for another machine: the generator's busy loop must not delay it), one SMTP connection \
         every {interval} ms (connect, 220 banner, QUIT); latency = connect + banner (p50 and \
         p99 by nearest rank); an attempt \
         fails after {timeout} s. It shares the veth and its ring with the flood, as a real \
         client shares the NIC. The calm phase, right before, in the same configuration, gives \
         the \"no-flood figure\".\n\
         - MTA: Postfix in the server namespace with its own config, queue and data directories \
         and log; \"MTA connects\" counts smtpd's `connect from` lines during the flood phases, \
         all runs. A spoofed SYN never completes a handshake, so the MTA sees no flood connection \
         in any configuration: the flood's cost is in the kernel (SYN queue, SYN cookies, \
         SYN-ACKs), where Postfix's table cannot act.\n\
         - The rejected sender: Postfix's daemons live through the whole bench (max_use, \
         max_idle), so their schedstat run time, summed before and after, holds all their work; \
         the whole-server figure is CPU {srv}'s busy time minus its rate in the idle second \
         before. The ratio goal is judged per flood on Postfix's processes alone (no kernel \
         work) against the gate's whole receive path per SYN (NAPI thread), which leans against \
         the gate.\n\
         - Caveats: a VM with 2 vCPUs shared with other work (other benchmarks may run at the \
         same time; steal time is in the JSON); a veth ring has 256 slots and a sleeping NAPI \
         thread takes tens of microseconds to wake here, so a flood faster than the server drains \
         overflows the ring and drops legitimate packets too, whatever the filter (a NIC has \
         larger rings; the figures say how fast each path drains).\n",
        cli = net::CLIENT_CPU,
        srv = net::SERVER_CPU,
        prio = net::NAPI_PRIORITY,
        frames = gen::FRAMES,
        paced = super::PACED_RATE / 1e6,
        flood = p.flood.as_secs_f64(),
        max = p.max_packets,
        interval = p.legit_interval.as_millis(),
        timeout = p.legit_timeout.as_secs_f64(),
        counted = if counted.is_empty() {
            String::new()
        } else {
            format!("Cross-check: {}.", counted.join("; "))
        },
    )
}
