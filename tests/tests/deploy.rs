//! The files in deploy/: the systemd unit passes `systemd-analyze verify`
//! (and its offline security review), the example config documents every
//! key with the real defaults and parses, the example users file loads with
//! the passwords it names, and the unit and the config agree on the paths.
//!
//! Needs systemd-analyze (Debian package `systemd`) and a built binary
//! (`cargo build`); panics otherwise, never skips. No root needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pop3::auth::users_file::UsersFile;
use smtp_gate::{cli::serve_keys, serve::ServeConfig};
use testkit::{
    gate_binary::smtp_gate_bin,
    process::{describe, output_within},
    scratch::Scratch,
};

const UNIT_EXEC: &str =
    "/usr/local/sbin/smtp-gate serve --config /etc/smtp-gate/smtp-gate.toml --pin-dir /run/smtp-gate/pins";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    output_within(
        Command::new("systemd-analyze").args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| {
        panic!(
            "systemd-analyze cannot be run ({e}): install the Debian package `systemd` \
             (apt-get install systemd), which provides /usr/bin/systemd-analyze"
        )
    })
}

/// The unit with ExecStart pointing at `binary` instead of
/// /usr/local/sbin/smtp-gate, written as `<dir>/smtp-gate.service`.
fn unit_copy(dir: &Path, binary: &Path) -> PathBuf {
    let unit = read_deploy("smtp-gate.service");
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
    let path = dir.join("smtp-gate.service");
    fs::write(&path, rewritten).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let scratch = Scratch::new("deploy-verify");
    let unit = unit_copy(&scratch.0, &smtp_gate_bin());
    let unit_str = unit.to_string_lossy();
    let out = systemd_analyze(&["verify", &unit_str]);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify {unit_str} is not clean: {}",
        describe(&out)
    );

    // The check bites: the same unit with a binary that is not there fails.
    let missing = Scratch::new("deploy-verify-missing");
    let broken = unit_copy(&missing.0, &missing.0.join("no-such-smtp-gate"));
    let out = systemd_analyze(&["verify", &broken.to_string_lossy()]);
    assert!(
        !out.status.success(),
        "systemd-analyze verify accepted a unit whose binary is missing: {}",
        describe(&out)
    );
}

#[test]
fn unit_security_exposure_is_low() {
    let scratch = Scratch::new("deploy-security");
    let unit = unit_copy(&scratch.0, &smtp_gate_bin());
    let unit_str = unit.to_string_lossy();
    // The exposure is reported as 0.0 to 10.0; the threshold counts tenths.
    let out = systemd_analyze(&["security", "--offline=yes", "--threshold=30", &unit_str]);
    assert!(
        out.status.success(),
        "systemd-analyze security rates the unit above 3.0: {}",
        describe(&out)
    );
}

/// The value of `key=` in the unit's [Service] section (last one wins).
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

/// The daemon's memory is bounded, softly then hard: far above what 1024
/// sessions need (about 300 MiB at their busiest), and restarted when
/// killed at the bound (the grant bus's engine may send a reply of any
/// size, read whole: attack review).
#[test]
fn unit_bounds_its_memory() {
    let unit = read_deploy("smtp-gate.service");
    let high = memory_octets(&unit_setting(&unit, "MemoryHigh"));
    let max = memory_octets(&unit_setting(&unit, "MemoryMax"));
    assert!(
        high < max,
        "MemoryHigh= {high} is not below MemoryMax= {max}"
    );
    assert!(
        high >= 512 << 20,
        "MemoryHigh= {high}: too close to what sessions need"
    );
    assert!(max <= 4 << 30, "MemoryMax= {max}");
    assert_eq!(unit_setting(&unit, "Restart"), "on-failure");
}

#[test]
fn unit_and_example_config_agree() {
    let unit = read_deploy("smtp-gate.service");
    let file = ServeConfig::from_toml(&read_deploy("smtp-gate.toml"))
        .unwrap_or_else(|e| panic!("deploy/smtp-gate.toml: {e:#}"));
    let writable: Vec<String> = unit_setting(&unit, "ReadWritePaths")
        .split_whitespace()
        .map(|p| p.trim_start_matches('-').to_string())
        .collect();
    let mail_root = file.mail_root;
    assert!(
        !mail_root.as_os_str().is_empty(),
        "the example sets mail_root"
    );
    assert!(
        writable.contains(&mail_root.to_string_lossy().into_owned()),
        "ReadWritePaths={writable:?} does not include the example's mail_root {}",
        mail_root.display()
    );
    // The pins: the daemon's --pin-dir is the host's pin directory, bound
    // where the mail user can reach it, and made the mail user's first.
    let user = unit_setting(&unit, "User");
    let (host_dir, pin_dir) = unit_setting(&unit, "BindPaths")
        .split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("BindPaths=HOST:SERVICE");
    assert!(
        host_dir.starts_with("/sys/fs/bpf/"),
        "BindPaths= must bind a directory of the host's bpffs, not {host_dir}"
    );
    assert!(
        UNIT_EXEC.ends_with(&format!("--pin-dir {pin_dir}")),
        "ExecStart= does not pin where BindPaths= puts the host's directory ({pin_dir})"
    );
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
    assert_ne!(user, "root", "the daemon runs as the mail user");
    let bounding: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        bounding,
        [
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE"
        ],
        "CapabilityBoundingSet must be exactly what the daemon needs (deploy/README.md; \
         the unprivileged daemon test of pop3_e2e runs with these)"
    );
    assert_eq!(
        unit_setting(&unit, "AmbientCapabilities"),
        unit_setting(&unit, "CapabilityBoundingSet"),
        "the daemon holds what it may hold"
    );
    assert!(
        !bounding.iter().any(|c| c == "CAP_SYS_ADMIN"),
        "CapabilityBoundingSet has CAP_SYS_ADMIN: deploy/README.md explains why not"
    );
    // The daemon refuses to start with a max_connections whose sessions
    // cannot have their files: the unit's limit must fit the default.
    let open_files: u64 = unit_setting(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE= is one number");
    let needed = pop3::server::open_files::needed_for(file.pop3.max_connections);
    assert!(
        open_files >= needed,
        "LimitNOFILE={open_files} cannot hold max_connections = {} ({needed} open files)",
        file.pop3.max_connections
    );
}

/// `systemctl reload` sends the daemon SIGHUP, which reloads it (without
/// ExecReload, systemd refuses the reload; a plain SIGHUP once ended the
/// daemon).
#[test]
fn unit_reloads_with_sighup() {
    let unit = read_deploy("smtp-gate.service");
    assert_eq!(unit_setting(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
}

/// systemd waits for the daemon's READY=1 (Type=notify; notify-reload
/// would need systemd 253, and `systemd-analyze verify` above refuses it on
/// Debian 12's 252), takes it from the daemon's own process only, and
/// restarts a daemon whose watchdog stops: the daemon feeds it every half
/// of WatchdogSec=, which must leave room for a slow moment (a reload
/// under the pin directory's lock, the gate's watch) yet catch a hang
/// within minutes.
#[test]
fn unit_waits_for_ready_and_keeps_a_watchdog() {
    let unit = read_deploy("smtp-gate.service");
    assert_eq!(unit_setting(&unit, "Type"), "notify");
    assert_eq!(unit_setting(&unit, "NotifyAccess"), "main");
    let watchdog = unit_setting(&unit, "WatchdogSec");
    let watchdog: u64 = watchdog
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("WatchdogSec={watchdog}: give it in seconds (`30s`)"));
    assert!(
        (10..=300).contains(&watchdog),
        "WatchdogSec={watchdog}s: not between 10 s and 5 min"
    );
    assert_eq!(unit_setting(&unit, "Restart"), "on-failure");
}

/// Uncomments every `# key = value` line of the example config.
fn uncommented(text: &str) -> String {
    let keys = serve_keys();
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
fn example_config_documents_every_key_with_its_default() {
    let text = read_deploy("smtp-gate.toml");
    let as_is = ServeConfig::from_toml(&text)
        .unwrap_or_else(|e| panic!("deploy/smtp-gate.toml does not parse: {e:#}"));
    let given: toml::Table = text.parse().expect("the example is TOML");
    assert_eq!(as_is.attach.iface, "eth0");
    assert!(given.contains_key("users") && given.contains_key("mail_root"));
    assert!(
        !given.contains_key("window") && !given.contains_key("listen"),
        "optional keys are meant to be commented out"
    );

    let all = uncommented(&text);
    for key in serve_keys() {
        assert!(
            all.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "deploy/smtp-gate.toml does not document the key `{key}`"
        );
    }
    let full = ServeConfig::from_toml(&all)
        .unwrap_or_else(|e| panic!("deploy/smtp-gate.toml with every key uncommented: {e:#}"));

    // The commented-out values are the defaults the code applies.
    let scratch = Scratch::new("deploy-config");
    let with_root = |mut config: ServeConfig| {
        config.mail_root = scratch.0.clone();
        config.check().expect("checking the example");
        config
    };
    let defaults = with_root(as_is);
    let documented = with_root(full);
    let (documented_pop3, default_pop3) = (&documented.pop3, &defaults.pop3);
    assert_eq!(documented_pop3.listen, default_pop3.listen, "listen");
    assert_eq!(documented.pin_dir, defaults.pin_dir, "pin_dir");
    assert_eq!(
        documented_pop3.idle_timeout, default_pop3.idle_timeout,
        "idle_timeout"
    );
    assert_eq!(
        documented_pop3.send_timeout, default_pop3.send_timeout,
        "send_timeout"
    );
    assert_eq!(
        documented_pop3.max_connections, default_pop3.max_connections,
        "max_connections"
    );
    assert_eq!(
        documented_pop3.max_connections_per_ip, default_pop3.max_connections_per_ip,
        "max_connections_per_ip"
    );
    assert_eq!(
        documented_pop3.login_failure_delay, default_pop3.login_failure_delay,
        "login_failure_delay"
    );
    assert_eq!(
        documented_pop3.login_timeout, default_pop3.login_timeout,
        "login_timeout"
    );
    assert_eq!(
        documented_pop3.line_timeout, default_pop3.line_timeout,
        "line_timeout"
    );
    assert_eq!(
        documented_pop3.client_prefix_v4, default_pop3.client_prefix_v4,
        "client_prefix_v4"
    );
    assert_eq!(
        documented_pop3.client_prefix_v6, default_pop3.client_prefix_v6,
        "client_prefix_v6"
    );
    assert_eq!(
        documented_pop3.shutdown_grace, default_pop3.shutdown_grace,
        "shutdown_grace"
    );
    let (documented_hooks, default_hooks) = (&documented.hooks, &defaults.hooks);
    assert_eq!(
        documented_hooks.dovecot_policy_protocols, default_hooks.dovecot_policy_protocols,
        "dovecot_policy_protocols"
    );
    assert_eq!(
        documented_hooks.dovecot_sessions_command, default_hooks.dovecot_sessions_command,
        "dovecot_sessions_command"
    );
    assert_eq!(
        documented_hooks.postfix_policy_granted, default_hooks.postfix_policy_granted,
        "postfix_policy_granted"
    );
    assert_eq!(
        documented_hooks.postfix_policy_reject, default_hooks.postfix_policy_reject,
        "postfix_policy_reject"
    );
    let attach = documented.attach;
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
    let (documented_bus, default_bus) = (&documented.bus, &defaults.bus);
    assert!(documented_bus.bus.is_some() && default_bus.bus.is_none());
    assert_eq!(
        documented_bus.bus_prefix, default_bus.bus_prefix,
        "bus_prefix"
    );
    assert_eq!(
        documented_bus.bus_stream_length, default_bus.bus_stream_length,
        "bus_stream_length"
    );
    assert_eq!(
        documented_bus.bus_timeout, default_bus.bus_timeout,
        "bus_timeout"
    );
}

#[test]
fn example_users_file_loads_with_the_documented_passwords() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new("deploy-users");
    let path = scratch.0.join("users");
    fs::write(&path, read_deploy("users.example")).expect("copying users.example");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let users = UsersFile::load(&path).unwrap_or_else(|e| panic!("deploy/users.example: {e}"));
    assert_eq!(users.len(), 2);
    let alice = users.get("alice").expect("alice");
    assert_eq!(alice.scheme(), "PLAIN");
    assert!(alice.verify_password(b"wonderland-example"));
    assert_eq!(alice.apop_secret(), Some("wonderland-example"));
    let bob = users.get("bob").expect("bob");
    assert_eq!(bob.scheme(), "SHA512-CRYPT");
    assert!(bob.verify_password(b"builder-example"));
    assert!(!bob.verify_password(b"builder"));
    assert_eq!(bob.apop_secret(), None, "a crypt hash cannot serve APOP");

    // As shipped by git (mode 0644) it must be refused: install it 0600.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    assert!(UsersFile::load(&path).is_err(), "a 0644 users file loaded");
}

fn postconf(dir: &Path, args: &[&str]) -> std::process::Output {
    let out = output_within(
        Command::new("/usr/sbin/postconf")
            .arg("-c")
            .arg(dir)
            .args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| {
        panic!("cannot run /usr/sbin/postconf (Debian package postfix, `cargo xtask setup`): {e}")
    });
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "postconf -c {} {args:?}: {}",
        dir.display(),
        describe(&out)
    );
    out
}

/// deploy/postfix/main.cf.snippet as Postfix's postconf reads it in a
/// private config directory: no parameter Postfix does not know (postconf
/// warns of those), the policy check after the permits and before
/// reject_unauth_destination in smtpd_relay_restrictions, asking the
/// address deploy/smtp-gate.toml gives as postfix_policy_listen's example.
/// The restriction's syntax is Postfix's SMTP server's to check: the
/// Postfix lab test (postfix_e2e.rs) runs it with this file verbatim.
#[test]
fn postfix_snippet_passes_postconf_and_asks_the_documented_address() {
    let scratch = Scratch::new("deploy-postconf");
    fs::write(
        scratch.0.join("main.cf"),
        read_deploy("postfix/main.cf.snippet"),
    )
    .unwrap();
    fs::write(scratch.0.join("master.cf"), "smtp inet n - y - - smtpd\n").unwrap();
    let listed = postconf(&scratch.0, &["-n"]);
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("smtpd_relay_restrictions = "), "{listed}");
    let value = postconf(&scratch.0, &["-h", "smtpd_relay_restrictions"]);
    let value = String::from_utf8(value.stdout).unwrap();
    let position = |word: &str| {
        value
            .find(word)
            .unwrap_or_else(|| panic!("no {word} in smtpd_relay_restrictions = {value}"))
    };
    assert!(
        position("permit_mynetworks") < position("permit_sasl_authenticated")
            && position("permit_sasl_authenticated") < position("check_policy_service")
            && position("check_policy_service") < position("reject_unauth_destination"),
        "{value}"
    );
    assert!(
        value.contains("default_action = 451 4."),
        "fails closed, temporarily: {value}"
    );

    let example = ServeConfig::from_toml(&uncommented(&read_deploy("smtp-gate.toml")))
        .expect("the example config parses");
    let listen = example
        .hooks
        .postfix_policy_listen
        .expect("deploy/smtp-gate.toml shows postfix_policy_listen");
    let asked = format!("check_policy_service {{ inet:{listen},");
    assert!(value.contains(&asked), "{asked} in {value}");
}
