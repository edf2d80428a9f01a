//! The grant bus's files in deploy/: the agent's unit passes
//! `systemd-analyze verify` and its offline security review and agrees
//! with the example config on the paths; the example config documents
//! every `smtp-gate agent` key with the real defaults; the Redis ACL file
//! loads into a real redis-server and gives the publishers and the edges
//! exactly what they need (the lab test bus_agent_e2e.rs runs the agent
//! as the edge user of this file).
//!
//! Needs systemd-analyze (Debian package `systemd`), redis-server
//! (`cargo xtask setup`) and a built binary (`cargo build`); panics
//! otherwise, never skips. No root needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use smtp_gate::{agent::AgentConfig, cli::agent_keys};
use support::acl_file;
use testkit::{
    gate_binary::smtp_gate_bin,
    process::{describe, output_within},
    redis::{client, RedisOptions, RedisServer},
    scratch::Scratch,
};

#[path = "support/acl.rs"]
mod support;

const UNIT_EXEC: &str = "/usr/local/sbin/smtp-gate agent --config \
                         /etc/smtp-gate/smtp-gate-agent.toml --pin-dir /run/smtp-gate/pins";

fn read_deploy(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    output_within(
        Command::new("systemd-analyze").args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| {
        panic!("systemd-analyze cannot be run ({e}): install the Debian package `systemd`")
    })
}

/// The unit with ExecStart pointing at `binary`, written into `dir`.
fn unit_copy(dir: &Path, binary: &Path) -> PathBuf {
    let unit = read_deploy("smtp-gate-agent.service");
    let exec_lines: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(
        exec_lines,
        vec![format!("ExecStart={UNIT_EXEC}").as_str()],
        "the unit must start exactly `{UNIT_EXEC}`"
    );
    let rewritten = unit.replace(
        "ExecStart=/usr/local/sbin/smtp-gate ",
        &format!("ExecStart={} ", binary.display()),
    );
    let path = dir.join("smtp-gate-agent.service");
    fs::write(&path, rewritten).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The value of `key=` in the unit (the last one).
fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

/// `MemoryHigh=`/`MemoryMax=`'s value in octets (systemd's K, M, G are
/// powers of 1024).
fn memory_octets(value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 1);
    let scale: u64 = match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => panic!("{value}: give it with K, M or G"),
    };
    number.parse::<u64>().unwrap() * scale
}

/// What the engine sends is read whole (the redis crate has no cap): the
/// unit bounds the agent's memory, softly then hard, far above its own
/// need (87 MiB at most, measured) and far below a host's, and restarts
/// it when it is killed at the bound (attack review).
#[test]
fn agent_unit_bounds_its_memory() {
    let unit = read_deploy("smtp-gate-agent.service");
    let high = memory_octets(&unit_setting(&unit, "MemoryHigh"));
    let max = memory_octets(&unit_setting(&unit, "MemoryMax"));
    assert!(
        high < max,
        "MemoryHigh= {high} is not below MemoryMax= {max}"
    );
    assert!((128 << 20..=1 << 30).contains(&max), "MemoryMax= {max}");
    assert!(high >= 128 << 20, "MemoryHigh= {high}");
    assert_eq!(unit_setting(&unit, "Restart"), "on-failure");
}

#[test]
fn agent_unit_passes_systemd_analyze_verify_and_its_exposure_is_low() {
    let scratch = Scratch::new("deploy-agent-verify");
    let unit = unit_copy(&scratch.0, &smtp_gate_bin());
    let unit_str = unit.to_string_lossy();
    let out = systemd_analyze(&["verify", &unit_str]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify {unit_str} is not clean: {}",
        describe(&out)
    );
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=30", &unit_str]);
    assert!(
        out.status.success(),
        "systemd-analyze security rates the agent's unit above 3.0: {}",
        describe(&out)
    );
    // The check bites: a unit whose binary is missing fails.
    let broken = unit_copy(&scratch.0, &scratch.0.join("no-such-smtp-gate"));
    let out = systemd_analyze(&["verify", &broken.to_string_lossy()]);
    assert!(!out.status.success(), "{}", describe(&out));
}

/// As serve's unit (deploy.rs): systemd waits for the agent's READY=1 and
/// restarts it when its watchdog stops; no ExecReload= (the agent reads
/// its config at start only, so `systemctl reload` is refused rather than
/// pretending to apply a change).
#[test]
fn agent_unit_waits_for_ready_and_keeps_a_watchdog() {
    let unit = read_deploy("smtp-gate-agent.service");
    assert_eq!(unit_setting(&unit, "Type"), "notify");
    assert_eq!(unit_setting(&unit, "NotifyAccess"), "main");
    let watchdog = unit_setting(&unit, "WatchdogSec");
    let secs: u64 = watchdog
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("WatchdogSec={watchdog}: give it in seconds (`30s`)"));
    assert!(
        (10..=300).contains(&secs),
        "WatchdogSec={secs}s: not between 10 s and 5 min"
    );
    assert_eq!(unit_setting(&unit, "Restart"), "on-failure");
    assert!(
        !unit.lines().any(|l| l.starts_with("ExecReload=")),
        "the agent reloads nothing: no ExecReload="
    );
}

#[test]
fn agent_unit_and_example_config_agree() {
    let unit = read_deploy("smtp-gate-agent.service");
    let config = AgentConfig::from_toml(&read_deploy("smtp-gate-agent.toml"))
        .unwrap_or_else(|e| panic!("deploy/smtp-gate-agent.toml: {e:#}"));
    // The position (and the status beside it) in the unit's state
    // directory.
    let state = Path::new("/var/lib").join(unit_setting(&unit, "StateDirectory"));
    assert_eq!(
        config.bus_position_file.parent(),
        Some(state.as_path()),
        "bus_position_file's default is in StateDirectory="
    );
    // The pins: the host's pin directory, bound where the agent's user
    // reaches it, made that user's first.
    let user = unit_setting(&unit, "User");
    assert_ne!(user, "root");
    let (host_dir, pin_dir) = unit_setting(&unit, "BindPaths")
        .split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("BindPaths=HOST:SERVICE");
    assert_eq!(
        Path::new(&host_dir),
        config.pin_dir,
        "the host's pin directory is the default one (the CLI's)"
    );
    assert!(UNIT_EXEC.ends_with(&format!("--pin-dir {pin_dir}")));
    let prepared: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStartPre=+"))
        .collect();
    assert!(
        prepared
            .iter()
            .any(|c| c.contains(&format!("-o {user}")) && c.ends_with(&host_dir))
            && prepared
                .iter()
                .any(|c| c.contains(&format!("chown -R -h {user}:")) && c.ends_with(&host_dir)),
        "ExecStartPre=+ must make {host_dir} and give it to {user}: {prepared:?}"
    );
    // Exactly what attaching needs: it listens on no port.
    assert_eq!(
        unit_setting(&unit, "CapabilityBoundingSet"),
        "CAP_BPF CAP_PERFMON CAP_NET_ADMIN"
    );
    assert_eq!(
        unit_setting(&unit, "AmbientCapabilities"),
        unit_setting(&unit, "CapabilityBoundingSet")
    );
}

/// Uncomments every `# key = value` line of the example.
fn uncommented(text: &str) -> String {
    let keys = agent_keys();
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(key, _)| keys.iter().any(|k| k == key)) =>
            {
                rest.to_string()
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn agent_example_config_documents_every_key_with_its_default() {
    let text = read_deploy("smtp-gate-agent.toml");
    let as_is = AgentConfig::from_toml(&text)
        .unwrap_or_else(|e| panic!("deploy/smtp-gate-agent.toml does not parse: {e:#}"));
    as_is.check().expect("the example as it is");
    let given: toml::Table = text.parse().expect("the example is TOML");
    let mut required: Vec<&String> = given.keys().collect();
    required.sort();
    assert_eq!(required, ["bus", "iface"], "the rest is commented out");
    let all = uncommented(&text);
    for key in agent_keys() {
        assert!(
            all.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "deploy/smtp-gate-agent.toml does not document the key `{key}`"
        );
    }
    let full = AgentConfig::from_toml(&all)
        .unwrap_or_else(|e| panic!("the example with every key uncommented: {e:#}"));
    full.check().expect("the example with every key");
    // The commented-out values are the defaults the code applies.
    assert_eq!(full.pin_dir, as_is.pin_dir, "pin_dir");
    assert_eq!(full.bus_position_file, as_is.bus_position_file);
    assert_eq!(full.bus.bus_prefix, as_is.bus.bus_prefix, "bus_prefix");
    assert_eq!(full.bus.bus_timeout, as_is.bus.bus_timeout, "bus_timeout");
    let attach = full.attach;
    assert_eq!(
        attach.window,
        Some(Duration::from_nanos(gate_common::DEFAULT_WINDOW_NS)),
        "window"
    );
    assert_eq!(attach.ports, Some(vec![25]), "ports");
    assert_eq!(attach.deny, Some(gate_common::DenyMode::Drop), "deny");
    assert_eq!(
        attach.capacity,
        Some(gate_common::DEFAULT_GRANT_CAPACITY),
        "capacity"
    );
    assert_eq!(
        attach.log_rate_per_sec,
        Some(smtp_gate::gate::settings::DEFAULT_LOG_RATE_PER_SEC),
        "log_rate"
    );
    assert_eq!(attach.mode, Some(smtp_gate::gate::AttachMode::Xdp), "mode");
    assert_eq!(
        attach.ban_ports,
        Some(smtp_gate::gate::settings::DEFAULT_BAN_PORTS.to_vec()),
        "ban_ports"
    );
    assert_eq!(
        attach.ban_prefix_v6,
        Some(smtp_gate::gate::settings::DEFAULT_BAN_PREFIX_V6),
        "ban_prefix_v6"
    );
    assert!(!attach.allow_private_bpffs, "allow_private_bpffs");
}

fn logged_in(server: &RedisServer, user: &str, password: &str) -> client::Connection {
    let mut connection = server.connection();
    client::cmd("AUTH")
        .arg(user)
        .arg(password)
        .query::<()>(&mut connection)
        .unwrap_or_else(|e| panic!("AUTH {user}: {e}"));
    connection
}

fn refused(result: client::RedisResult<client::Value>) -> bool {
    matches!(result, Err(e) if e.code() == Some("NOPERM"))
}

#[test]
fn the_redis_acl_file_lets_publishers_write_and_edges_only_read() {
    let scratch = Scratch::new("deploy-agent-acl");
    let acl = scratch.0.join("users.acl");
    fs::write(&acl, acl_file("pop-secret", "edge-secret")).unwrap();
    let server = RedisServer::start_with(RedisOptions {
        extra: vec!["--include".into(), acl.to_string_lossy().into_owned()],
        ..RedisOptions::default()
    });
    let mut publisher = logged_in(&server, "smtp-gate-pop", "pop-secret");
    let mut edge = logged_in(&server, "smtp-gate-edge", "edge-secret");
    let run = |connection: &mut client::Connection, args: &[&str]| {
        let mut command = client::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query::<client::Value>(connection)
    };

    // A publisher's grant and revoke, as bus/publisher.rs sends them.
    let mut grant = client::pipe();
    grant.atomic();
    grant
        .cmd("SET")
        .arg("smtp-gate:grant:192.0.2.7")
        .arg("99999999999999")
        .arg("PXAT")
        .arg("99999999999999")
        .ignore();
    grant
        .cmd("XADD")
        .arg("smtp-gate:events")
        .arg("MAXLEN")
        .arg("~")
        .arg(100_000)
        .arg("*")
        .arg("op")
        .arg("grant")
        .ignore();
    grant
        .query::<()>(&mut publisher)
        .expect("the publisher's grant");
    let mut revoke = client::pipe();
    revoke.atomic();
    revoke.cmd("DEL").arg("smtp-gate:grant:192.0.2.8").ignore();
    revoke
        .query::<()>(&mut publisher)
        .expect("the publisher's revoke");
    assert!(
        refused(run(&mut publisher, &["SET", "other:key", "1"])),
        "outside the prefix"
    );
    assert!(refused(run(&mut publisher, &["FLUSHALL"])));
    assert!(refused(run(
        &mut publisher,
        &["XTRIM", "smtp-gate:events", "MAXLEN", "0"]
    )));

    // What the agent reads with, and nothing that writes.
    for read in [
        &["XINFO", "STREAM", "smtp-gate:events"][..],
        &["XREAD", "COUNT", "10", "STREAMS", "smtp-gate:events", "0-0"],
        &["XRANGE", "smtp-gate:events", "1-0", "1-0"],
        &["SCAN", "0", "MATCH", "smtp-gate:grant:*", "COUNT", "1000"],
        &["GETRANGE", "smtp-gate:grant:192.0.2.7", "0", "64"],
        &["PTTL", "smtp-gate:grant:192.0.2.7"],
        &["PING"],
    ] {
        run(&mut edge, read).unwrap_or_else(|e| panic!("the edge's {read:?}: {e}"));
    }
    for write in [
        &["SET", "smtp-gate:grant:192.0.2.9", "1"][..],
        &["DEL", "smtp-gate:grant:192.0.2.7"],
        &["XADD", "smtp-gate:events", "*", "op", "grant"],
        &["XTRIM", "smtp-gate:events", "MAXLEN", "0"],
        &["PEXPIRE", "smtp-gate:grant:192.0.2.7", "1"],
        &["FLUSHALL"],
    ] {
        assert!(refused(run(&mut edge, write)), "the edge may {write:?}");
    }
}

#[test]
fn the_redis_durability_file_makes_the_engine_sync_every_write() {
    // What a revoke needs to survive the engine's restart (README,
    // "Revokes, and an engine that goes back in time").
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis-durability.conf");
    let server = RedisServer::start_with(RedisOptions {
        extra: vec!["--include".into(), path.to_string_lossy().into_owned()],
        ..RedisOptions::default()
    });
    let mut connection = server.connection();
    for (name, value) in [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("no-appendfsync-on-rewrite", "no"),
    ] {
        let got: Vec<String> = client::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query(&mut connection)
            .unwrap();
        assert_eq!(got, [name, value], "{}", path.display());
    }
}
