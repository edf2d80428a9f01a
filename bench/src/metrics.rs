//! `cargo xtask bench metrics`: what the Prometheus metrics (issue 14)
//! cost, with 262,144 grants in the gate's IPv4 map:
//!
//! - the census: CPU time of one walk over the grant and ban maps, with
//!   BPF_MAP_LOOKUP_BATCH and key by key (as a kernel without batch
//!   lookups walks), in this process on maps loaded for it;
//! - a scrape: the CPU of `smtp-gate serve` (utime + stime of
//!   /proc/<pid>/stat, every thread, the census's too) over spans with a
//!   scrape every 100 ms, less the same span without scrapes, per scrape;
//!   the spans take turns;
//! - logins: PASS -> `+OK` of the same daemon (in a lab: namespaces
//!   without a default route) with a scrape every 100 ms beside without
//!   scrapes, in blocks of logins that take turns, as ratios of the
//!   percentiles.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use smtp_gate::gate::{object, settings::default_settings, GateMaps, PinDir};
use testkit::{
    bus_lab::{pop3_login, SECRET, USER},
    lab::Lab,
    mail::MailFixture,
    netns::{enter_netns, in_netns},
    serve::ServeDaemon,
};

use crate::{
    procs::tree_cpu_seconds,
    report::{self, percentile, Figure, Machine},
};

/// The grants in the map: the default capacity of a family.
const GRANTS: u32 = gate_common::DEFAULT_GRANT_CAPACITY;
/// How often Prometheus scrapes here (ten times its usual fastest).
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
/// Where the daemon serves its metrics, on its namespace's loopback.
const METRICS: ([u8; 4], u16) = ([127, 0, 0, 1], 10110);
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);
/// Logins before any is measured.
const WARM_UP: usize = 50;

fn progress(what: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("metrics [{:6.1} s] {what}", start.elapsed().as_secs_f64());
}

#[derive(Clone, Debug, Default, Serialize)]
struct CensusCost {
    grants: u64,
    batched_cpu_ms: Vec<f64>,
    /// Of it, in the kernel.
    batched_system_ms: Vec<f64>,
    batched_wall_ms: Vec<f64>,
    batched_calls: usize,
    by_keys_cpu_ms: Vec<f64>,
    by_keys_wall_ms: Vec<f64>,
    /// The batched walk of the same maps before they were filled: what
    /// the map's size costs whatever it holds.
    empty_cpu_ms: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct ScrapeCost {
    grants: u64,
    span_s: f64,
    /// Daemon CPU seconds over each span, without and with scrapes.
    idle_cpu_s: Vec<f64>,
    scraped_cpu_s: Vec<f64>,
    scrapes: Vec<usize>,
    /// Per scrape: (scraped - idle) / scrapes, in ms, per pair of spans.
    per_scrape_ms: Vec<f64>,
    /// Request -> last octet of the page, µs.
    latency_us: Vec<f64>,
    page_bytes: usize,
    /// The daemon's own word on its walks (smtp_gate_census_duration_seconds).
    census_wall_ms: Vec<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
struct Logins {
    rounds: usize,
    block_s: f64,
    quiet_us: Vec<f64>,
    scraped_us: Vec<f64>,
    scrapes: usize,
}

pub fn run(quick: bool) -> Result<()> {
    progress("building smtp-gate");
    crate::binaries::build("gate-user", "smtp-gate")?;
    let (census_runs, spans, span, rounds, block) = if quick {
        (3, 1, Duration::from_secs(5), 2, Duration::from_secs(3))
    } else {
        (10, 5, Duration::from_secs(20), 6, Duration::from_secs(10))
    };
    progress(&format!("census: {GRANTS} grants in a map loaded for it"));
    let census = census_cost(census_runs)?;

    progress("lab: smtp-gate serve with the gate and metrics");
    let lab = Lab::new();
    let mut mail = MailFixture::new();
    mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
    let daemon = start_daemon(&lab, &mail)?;
    let grants = fill(&PinDir::new(lab.pin_dir()), GRANTS)?;
    progress(&format!("{grants} grants in the daemon's map"));
    let scrape = scrape_cost(&lab, &daemon, grants, spans, span)?;
    let logins = login_latency(&lab, rounds, block)?;
    drop(daemon);
    drop(lab);

    let machine = Machine::describe();
    let mut md = format!(
        "# smtp-gate metrics benchmark (issue 14)\n\n{}\
         Command: `cargo xtask bench metrics{}`. Shared machine: other jobs may run beside.\n",
        machine.markdown(),
        if quick { " --quick" } else { "" }
    );
    let (census_md, census_json) = render_census(&census);
    md += &census_md;
    let (scrape_md, scrape_json) = render_scrapes(&scrape);
    md += &scrape_md;
    let (login_md, login_json) = render_logins(&logins);
    md += &login_md;
    let json = json!({
        "machine": machine,
        "quick": quick,
        "census": census_json,
        "scrapes": scrape_json,
        "logins": login_json,
    });
    let path = report::write("metrics", &md, &json)?;
    println!("{md}");
    eprintln!("report: {}", path.display());
    Ok(())
}

/// CPU time of the calling thread, user and system, in seconds.
fn thread_cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// The `i`th of the filled grants' addresses: 100.64.0.0/10 onwards.
fn filled_addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + i))
}

/// Grants `count` addresses now in `maps`; gives how many the IPv4 map
/// holds then (the LRU map keeps them all: it has room for the default
/// capacity and more).
fn fill_maps(maps: &mut GateMaps, count: u32) -> Result<u64> {
    let now = maps.now_ns()?;
    for i in 0..count {
        maps.grant_at(filled_addr(i), now, None)?;
    }
    let held = maps.census()?.grants_v4;
    if held.live < u64::from(count) {
        bail!("only {} of {count} grants are in the map", held.live);
    }
    Ok(held.live)
}

fn fill(dir: &PinDir, count: u32) -> Result<u64> {
    fill_maps(&mut GateMaps::open(dir)?, count)
}

fn census_cost(runs: usize) -> Result<CensusCost> {
    let mut ebpf = object::load_unpinned(GRANTS)?;
    let mut maps = GateMaps::from_ebpf(&mut ebpf)?;
    maps.set_settings(&default_settings())?;
    let mut empty_cpu_ms = Vec::new();
    for _ in 0..runs {
        let (user, system) = thread_cpu_seconds();
        maps.census()?;
        let (user_after, system_after) = thread_cpu_seconds();
        empty_cpu_ms.push((user_after - user + system_after - system) * 1e3);
    }
    let grants = fill_maps(&mut maps, GRANTS)?;
    let mut cost = CensusCost {
        grants,
        empty_cpu_ms,
        ..CensusCost::default()
    };
    // Turn by turn, so that both see the same machine.
    for _ in 0..runs {
        for batched in [true, false] {
            let ((user, system), wall) = (thread_cpu_seconds(), Instant::now());
            let census = if batched {
                maps.census()?
            } else {
                maps.census_without_batches()?
            };
            let (user_after, system_after) = thread_cpu_seconds();
            let system_ms = (system_after - system) * 1e3;
            let cpu_ms = (user_after - user) * 1e3 + system_ms;
            let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
            if census.grants_v4.live != grants {
                bail!("the census counted {} of {grants}", census.grants_v4.live);
            }
            if batched {
                if let smtp_gate::gate::maps::Walk::Batched(calls) = census.walk {
                    cost.batched_calls = calls;
                }
                cost.batched_cpu_ms.push(cpu_ms);
                cost.batched_system_ms.push(system_ms);
                cost.batched_wall_ms.push(wall_ms);
            } else {
                cost.by_keys_cpu_ms.push(cpu_ms);
                cost.by_keys_wall_ms.push(wall_ms);
            }
        }
    }
    drop(maps);
    drop(ebpf);
    Ok(cost)
}

fn metrics_addr() -> SocketAddr {
    METRICS.into()
}

fn start_daemon(lab: &Lab, mail: &MailFixture) -> Result<ServeDaemon> {
    let users = mail.users_file().to_string_lossy().into_owned();
    let root = mail.mail_root().to_string_lossy().into_owned();
    let metrics = metrics_addr().to_string();
    let daemon = lab.serve(
        &[
            "--iface",
            &lab.client.server_iface,
            "--users",
            &users,
            "--mail-root",
            &root,
            // No grant lapses during the run.
            "--window",
            "1h",
            "--metrics-listen",
            &metrics,
            "--shutdown-grace",
            "1s",
        ],
        &mail.dir().join("serve.log"),
    );
    Ok(daemon)
}

/// One scrape over a kept-alive connection: how long it took and the
/// page.
struct Scraper {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Scraper {
    /// Connects (call inside the daemon's namespace).
    fn connect() -> Result<Self> {
        let stream = TcpStream::connect_timeout(&metrics_addr(), BOUND)?;
        stream.set_read_timeout(Some(BOUND))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    fn scrape(&mut self) -> Result<(Duration, String)> {
        let started = Instant::now();
        self.writer
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut length = None;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        if !status.starts_with("HTTP/1.1 200") {
            bail!("the scrape was answered {status:?}");
        }
        // Bounded: hyper's header section is a few lines.
        for _ in 0..64 {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.context("an answer without content-length")?;
        let mut page = vec![0; length];
        self.reader.read_exact(&mut page)?;
        Ok((started.elapsed(), String::from_utf8(page)?))
    }
}

/// What a scraper saw.
#[derive(Default)]
struct Scraped {
    latency_us: Vec<f64>,
    page_bytes: usize,
    census_wall_ms: Vec<f64>,
}

/// A thread in `ns` scraping every [`SCRAPE_EVERY`] until `stop` (and
/// for at most `most` scrapes).
fn scrape_every(
    ns: String,
    stop: Arc<AtomicBool>,
    most: usize,
) -> thread::JoinHandle<Result<Scraped>> {
    thread::spawn(move || {
        enter_netns(&ns)?;
        let mut scraper = Scraper::connect()?;
        let mut scraped = Scraped::default();
        let mut next = Instant::now();
        for _ in 0..most {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let (took, page) = scraper.scrape()?;
            scraped.latency_us.push(took.as_secs_f64() * 1e6);
            scraped.page_bytes = page.len();
            if let Some(seconds) = page
                .lines()
                .find_map(|l| l.strip_prefix("smtp_gate_census_duration_seconds "))
                .and_then(|v| v.parse::<f64>().ok())
            {
                scraped.census_wall_ms.push(seconds * 1e3);
            }
            next += SCRAPE_EVERY;
            let now = Instant::now();
            if next > now {
                thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        Ok(scraped)
    })
}

fn scrape_cost(
    lab: &Lab,
    daemon: &ServeDaemon,
    grants: u64,
    spans: usize,
    span: Duration,
) -> Result<ScrapeCost> {
    let pid = daemon.pid().context("the daemon runs")?;
    // The first census of the full map, and the first connection's
    // setup, before anything is measured.
    in_netns(&lab.server_ns, || -> Result<(Duration, String)> {
        Scraper::connect()?.scrape()
    })?;
    thread::sleep(Duration::from_secs(1));
    let mut cost = ScrapeCost {
        grants,
        span_s: span.as_secs_f64(),
        ..ScrapeCost::default()
    };
    let most = (span.as_millis() / SCRAPE_EVERY.as_millis()) as usize + 1;
    for i in 0..spans {
        progress(&format!(
            "daemon CPU per scrape: spans {} of {spans}",
            i + 1
        ));
        let mut pair = [0.0; 2];
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for scraping in order {
            let cpu = tree_cpu_seconds(pid);
            if scraping {
                let stop = Arc::new(AtomicBool::new(false));
                let scraper = scrape_every(lab.server_ns.clone(), Arc::clone(&stop), most);
                thread::sleep(span);
                stop.store(true, Ordering::Relaxed);
                let used = tree_cpu_seconds(pid) - cpu;
                let scraped = scraper
                    .join()
                    .map_err(|_| anyhow!("the scraper panicked"))??;
                cost.scrapes.push(scraped.latency_us.len());
                cost.scraped_cpu_s.push(used);
                cost.latency_us.extend(&scraped.latency_us);
                cost.page_bytes = scraped.page_bytes;
                cost.census_wall_ms.extend(&scraped.census_wall_ms);
                pair[1] = used;
            } else {
                thread::sleep(span);
                let used = tree_cpu_seconds(pid) - cpu;
                cost.idle_cpu_s.push(used);
                pair[0] = used;
            }
        }
        let scrapes = *cost.scrapes.last().unwrap_or(&1) as f64;
        cost.per_scrape_ms
            .push((pair[1] - pair[0]).max(0.0) * 1e3 / scrapes.max(1.0));
    }
    Ok(cost)
}

/// A login started every this long (one at a time): a block of logins
/// spans scrapes and walks of the maps.
const LOGIN_EVERY: Duration = Duration::from_millis(2);

fn login_latency(lab: &Lab, rounds: usize, block: Duration) -> Result<Logins> {
    let server = SocketAddr::new(lab.client.server_v4.into(), 110);
    let from: IpAddr = lab.client.client_v4.into();
    let ns = lab.client.client_ns.clone();
    // Logins, one every LOGIN_EVERY (later if one takes longer), for
    // `span` or `most` logins; their PASS -> +OK in µs.
    let login = |span: Duration, most: usize| -> Result<Vec<f64>> {
        in_netns(&ns, || {
            let started = Instant::now();
            let mut took = Vec::new();
            let mut next = started;
            for _ in 0..most {
                if started.elapsed() >= span {
                    break;
                }
                let login = pop3_login(server, from).map_err(|e| anyhow!("a login: {e}"))?;
                if !login.is_ok() {
                    bail!("a login was refused: {}", login.answer);
                }
                took.push(login.answered.duration_since(login.pass_sent).as_secs_f64() * 1e6);
                next += LOGIN_EVERY;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Ok(took)
        })
    };
    login(BOUND, WARM_UP)?;
    let most = (block.as_millis() / LOGIN_EVERY.as_millis()) as usize + 1;
    let mut logins = Logins {
        rounds,
        block_s: block.as_secs_f64(),
        ..Logins::default()
    };
    for round in 0..rounds {
        progress(&format!("PASS -> +OK: round {} of {rounds}", round + 1));
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for scraping in order {
            if scraping {
                let stop = Arc::new(AtomicBool::new(false));
                let scraper = scrape_every(lab.server_ns.clone(), Arc::clone(&stop), most);
                let took = login(block, most);
                stop.store(true, Ordering::Relaxed);
                let scraped = scraper
                    .join()
                    .map_err(|_| anyhow!("the scraper panicked"))??;
                logins.scrapes += scraped.latency_us.len();
                logins.scraped_us.extend(took?);
            } else {
                logins.quiet_us.extend(login(block, most)?);
            }
        }
    }
    Ok(logins)
}

fn render_census(c: &CensusCost) -> (String, serde_json::Value) {
    let batched = Figure::of(&c.batched_cpu_ms);
    let by_keys = Figure::of(&c.by_keys_cpu_ms);
    let md = format!(
        "\n## The census: one walk over the grant and ban maps\n\n\
         {} fresh IPv4 grants in a map of the default capacity (loaded for the run, not \
         attached), the other maps empty; `GateMaps::census` in this process, CPU time of its \
         thread (user and system: the walk is bpf() calls), median (min-max) of {} walks each, \
         the two ways taking turns.\n\n\
         | walk | CPU ms | wall ms | bpf() calls on the grant map |\n|---|---:|---:|---:|\n\
         | BPF_MAP_LOOKUP_BATCH, {} a call | {} | {} | {} |\n\
         | key by key (aya's iterator: next key, lookup) | {} | {} | about {} |\n\
         | BPF_MAP_LOOKUP_BATCH, the same maps empty | {} | | |\n\n\
         The batched walk costs {:.1}x less CPU; {:.0}% of its CPU is the kernel's (the batch \
         lookups), {:.0} ns per grant in all, nearly all of it per entry: the same maps empty \
         take the last row's.\n",
        c.grants,
        c.batched_cpu_ms.len(),
        smtp_gate::gate::maps::BATCH,
        batched.cell(1),
        Figure::of(&c.batched_wall_ms).cell(1),
        c.batched_calls,
        by_keys.cell(1),
        Figure::of(&c.by_keys_wall_ms).cell(1),
        2 * c.grants,
        Figure::of(&c.empty_cpu_ms).cell(1),
        by_keys.median / batched.median,
        Figure::of(&c.batched_system_ms).median / batched.median * 100.0,
        batched.median * 1e6 / c.grants as f64,
    );
    (md, serde_json::to_value(c).unwrap_or_default())
}

fn render_scrapes(c: &ScrapeCost) -> (String, serde_json::Value) {
    let per = Figure::of(&c.per_scrape_ms);
    let idle = Figure::of(
        &c.idle_cpu_s
            .iter()
            .map(|s| s / c.span_s * 1e3)
            .collect::<Vec<_>>(),
    );
    let scraped = Figure::of(
        &c.scraped_cpu_s
            .iter()
            .map(|s| s / c.span_s * 1e3)
            .collect::<Vec<_>>(),
    );
    let census = if c.census_wall_ms.is_empty() {
        "-".to_string()
    } else {
        Figure::of(&c.census_wall_ms).cell(1)
    };
    let md = format!(
        "\n## What a scrape costs the daemon\n\n\
         `smtp-gate serve` (release) in a lab, the gate attached to its veth, {} fresh IPv4 \
         grants in its map; `GET /metrics` every {} ms over one kept-alive connection from its \
         namespace, for spans of {:.0} s, beside spans without scrapes, taking turns ({} \
         pairs). The daemon's CPU from /proc/<pid>/stat (utime + stime, every thread, the \
         census's walks at SCHED_IDLE included; clock ticks of 10 ms). The census is at most \
         5 s old: one walk per 50 scrapes here.\n\n\
         | | median (min-max) |\n|---|---:|\n\
         | daemon CPU without scrapes, ms per s | {} |\n\
         | daemon CPU with a scrape every 100 ms, ms per s | {} |\n\
         | CPU per scrape (the difference), ms | {} |\n\
         | a walk of the maps in the daemon (its census_duration gauge, wall at SCHED_IDLE), ms | {census} |\n\
         | scrape, request to the page's last octet: p50 / p99 / max µs (a scrape that finds the census older than 5 s waits for the walk) | {:.0} / {:.0} / {:.0} |\n\
         | page size, octets | {} |\n",
        c.grants,
        SCRAPE_EVERY.as_millis(),
        c.span_s,
        c.per_scrape_ms.len(),
        idle.cell(2),
        scraped.cell(2),
        per.cell(3),
        percentile(&c.latency_us, 50.0),
        percentile(&c.latency_us, 99.0),
        percentile(&c.latency_us, 100.0),
        c.page_bytes,
    );
    (md, serde_json::to_value(c).unwrap_or_default())
}

fn render_logins(l: &Logins) -> (String, serde_json::Value) {
    let row = |p: f64| {
        let (quiet, scraped) = (percentile(&l.quiet_us, p), percentile(&l.scraped_us, p));
        (quiet, scraped, scraped / quiet)
    };
    let mut md = format!(
        "\n## Logins while Prometheus scrapes\n\n\
         PASS -> `+OK` (USER/PASS from the lab's client namespace, each login granted in the \
         map of {} grants, then QUIT), one login at a time, one started every {} ms; blocks of \
         {:.0} s with a scrape every 100 ms (the census walked every 5 s) beside blocks \
         without, taking turns, {} rounds ({} logins without scrapes, {} with, {} scrapes). \
         Percentiles by nearest rank.\n\n\
         | percentile | no scrapes µs | scrapes every 100 ms µs | ratio |\n|---|---:|---:|---:|\n",
        GRANTS,
        LOGIN_EVERY.as_millis(),
        l.block_s,
        l.rounds,
        l.quiet_us.len(),
        l.scraped_us.len(),
        l.scrapes,
    );
    let mut json_rows = Vec::new();
    for (name, p) in [("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9)] {
        let (quiet, scraped, ratio) = row(p);
        md += &format!("| {name} | {quiet:.0} | {scraped:.0} | {ratio:.2} |\n");
        json_rows.push(
            json!({"percentile": name, "quiet_us": quiet, "scraped_us": scraped, "ratio": ratio}),
        );
    }
    (
        md,
        json!({
            "rounds": l.rounds,
            "block_s": l.block_s,
            "scrapes": l.scrapes,
            "percentiles": json_rows,
        }),
    )
}
