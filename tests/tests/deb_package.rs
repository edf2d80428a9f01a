//! The Debian package (`cargo xtask deb`), built with the xtask's own code
//! from the binary under test, installed on this machine with dpkg: the
//! binary runs from /usr/sbin, `man` finds and renders its pages, the
//! installed units pass `systemd-analyze verify`, nothing is enabled or
//! started, the shipped configuration cannot start the daemon (no users
//! file), a reinstall keeps a gate that is attached and `dpkg -r` takes
//! it off (pinned where the configuration says, on a lab's veth in
//! namespaces of its own) and says so, `dpkg -r` leaves exactly the
//! conffiles and `dpkg -P` those too.
//!
//! Needs root, dpkg-dev, man-db, adduser, systemd-analyze and iproute2
//! (`cargo xtask setup`) and a built binary (`cargo build`); panics
//! otherwise, never skips. It leaves the machine as it found it: it
//! refuses to start if the package is installed or any file it would
//! install is already there (a source install's /etc/smtp-gate, say:
//! purging would delete it), and a guard purges the package and removes
//! the system user it made, also when the test fails. A source install's
//! binary in /usr/local/sbin is never run: everything names /usr/sbin.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use testkit::{
    gate_binary::smtp_gate_bin,
    lab::Lab,
    process::{describe, output_within},
    scratch::Scratch,
    smtp::{DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};
use xtask::deb::{self, BINARY, COMPLETIONS, CONFIG_DIR, MAN_DIR, PACKAGE, UNIT_DIR};

const STATE_DIR: &str = "/var/lib/smtp-gate";
/// deb-systemd-helper's record of the units it knows.
const DSH_STATE: &str = "/var/lib/systemd/deb-systemd-helper-enabled";

fn run(program: &str, args: &[&str]) -> Output {
    output_within(Command::new(program).args(args), Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("cannot run {program} (cargo xtask setup installs it): {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg ARGS; waits while another dpkg or apt holds dpkg's lock (other
/// work on this machine may install packages meanwhile).
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run("dpkg", args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let locked = !out.status.success() && stderr.contains("lock");
        if !locked || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_secs(2));
    }
}

fn dpkg_ok(args: &[&str]) -> String {
    let out = dpkg(args);
    assert!(
        out.status.success(),
        "dpkg {}: {}",
        args.join(" "),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the package ("install ok installed", ...), or None
/// when dpkg knows nothing of it.
fn package_status() -> Option<String> {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.is_empty() && !status.ends_with("not-installed"))
        .then_some(status)
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).status.success()
}

/// Every path under /etc/systemd/system that names smtp-gate: enabling a
/// unit, or masking it, adds one. (Other packages' are not looked at: they
/// may change meanwhile.)
fn systemd_links() -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![PathBuf::from("/etc/systemd/system")];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path.clone());
            }
            if entry.file_name().to_string_lossy().contains(PACKAGE) {
                found.insert(path);
            }
        }
    }
    found
}

/// Puts the machine back: purges the package (whatever state it is in)
/// and removes the system user and group it made, unless they were there
/// before.
struct Installed {
    user_was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_some() {
            let out = dpkg(&["--purge", PACKAGE]);
            if !out.status.success() {
                eprintln!("deb_package teardown: dpkg --purge: {}", describe(&out));
            }
        }
        let _ = fs::remove_dir_all(STATE_DIR);
        if !self.user_was_there && user_exists(PACKAGE) {
            let out = run("deluser", &["--system", "--quiet", PACKAGE]);
            if !out.status.success() {
                eprintln!("deb_package teardown: deluser: {}", describe(&out));
            }
        }
        if !self.user_was_there && run("getent", &["group", PACKAGE]).status.success() {
            let _ = run("delgroup", &["--system", "--quiet", PACKAGE]);
        }
    }
}

/// A network namespace of the test's own (no links but lo, no route),
/// deleted on drop; named as the labs name theirs, so that a killed run's
/// is swept by the next lab.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("sg-{}-deb", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        run_ok("ip", &["netns", "add", &name]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

/// The paths in the .deb (dpkg-deb --contents): (directories, files).
fn contents(deb: &Path) -> (Vec<String>, Vec<String>) {
    let listing = run_ok("dpkg-deb", &["--contents", deb.to_str().unwrap()]);
    let (mut dirs, mut files) = (Vec::new(), Vec::new());
    for line in listing.lines() {
        let path = line
            .split_whitespace()
            .nth(5)
            .unwrap_or_else(|| panic!("dpkg-deb --contents line {line:?}"));
        let path = path.trim_start_matches('.').trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        if line.starts_with('d') {
            dirs.push(path.to_string());
        } else {
            files.push(path.to_string());
        }
    }
    (dirs, files)
}

/// The conffiles the package must have: deploy/'s configuration examples.
fn expected_conffiles() -> BTreeSet<String> {
    let deploy = deb::workspace().join("deploy");
    fs::read_dir(&deploy)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml") || name == "users.example")
        .map(|name| format!("{CONFIG_DIR}/{name}"))
        .collect()
}

#[test]
fn package_installs_works_and_removes_cleanly() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the package test installs a package: run as root (it never skips)"
    );
    assert!(
        package_status().is_none(),
        "{PACKAGE} is already known to dpkg ({:?}): this test would replace and purge it; \
         remove it first (dpkg -P {PACKAGE})",
        package_status()
    );

    let scratch = Scratch::new("deb-build");
    let package = deb::build(&deb::workspace(), &smtp_gate_bin(), &scratch.0)
        .unwrap_or_else(|e| panic!("building the package: {e:#}"));
    let (dirs, files) = contents(&package.deb);
    for path in files.iter().map(String::as_str).chain([STATE_DIR]) {
        assert!(
            !Path::new(path).exists(),
            "{path} is on this machine already (a source install?): installing and purging \
             the package would take it over and delete it; move it away first"
        );
    }
    assert!(files.contains(&BINARY.to_string()), "{files:?}");

    let links_before = systemd_links();
    let _installed = Installed {
        user_was_there: user_exists(PACKAGE),
    };
    let deb_path = package.deb.to_str().unwrap();
    dpkg_ok(&["--install", deb_path]);
    assert_eq!(package_status().as_deref(), Some("install ok installed"));

    // The binary, from /usr/sbin (not a source install's /usr/local/sbin).
    let version = run_ok(BINARY, &["--version"]);
    assert_eq!(version.trim(), format!("smtp-gate {}", package.version));
    let help = run_ok(BINARY, &["--help"]);
    assert!(
        help.contains("serve") && !help.contains("generate"),
        "{help}"
    );

    // The man pages: man finds the main page where the package put it,
    // and renders it and serve's without a warning from groff.
    let main_page = format!("{MAN_DIR}/smtp-gate.8.gz");
    let found = run_ok("man", &["-aw", "smtp-gate"]);
    assert!(
        found.lines().any(|l| l == main_page),
        "man -aw smtp-gate: {found}"
    );
    let render = |page: &str| {
        let out = output_within(
            Command::new("man")
                .args(["--warnings", "-P", "cat", page])
                .env("LC_ALL", "C")
                .env("MANWIDTH", "80")
                .env_remove("MANPAGER")
                .env_remove("PAGER"),
            Duration::from_secs(60),
        )
        .expect("man runs");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man {page}: {}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = render(&main_page);
    for expected in [
        "SMTP-GATE(8)",
        "--version",
        "smtp-gate-serve(8)",
        "/etc/smtp-gate/smtp-gate.toml",
    ] {
        assert!(
            text.contains(expected),
            "no {expected} in man smtp-gate:\n{text}"
        );
    }
    assert!(!text.contains("generate"), "{text}");
    let serve = render(&format!("{MAN_DIR}/smtp-gate-serve.8.gz"));
    assert!(serve.contains("--mail-root <DIR>"), "{serve}");
    // The daemons' pages: a SYNOPSIS with the options' values, and what an
    // operator needs beside the options.
    let agent = render(&format!("{MAN_DIR}/smtp-gate-agent.8.gz"));
    assert!(serve.contains("[--mail-root DIR]"), "{serve}");
    assert!(agent.contains("[--bus-position-file FILE]"), "{agent}");
    for (name, page) in [("serve", &serve), ("agent", &agent)] {
        for section in ["SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS"] {
            assert!(
                page.lines().any(|l| l == section),
                "no {section} in man smtp-gate-{name}:\n{page}"
            );
        }
        for wanted in [
            "SIGHUP",
            "SIGTERM",
            "RUST_LOG",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "JOURNAL_STREAM",
        ] {
            assert!(
                page.contains(wanted),
                "no {wanted} in man smtp-gate-{name}:\n{page}"
            );
        }
    }
    assert!(serve.contains("/etc/smtp-gate/users") && serve.contains("mode 0600"));

    // The completions, where each shell looks; bash's loads.
    for (shell, path) in COMPLETIONS {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{shell}: {path}: {e}"));
        assert!(text.contains("mail-root"), "{path}");
    }
    let complete = run_ok(
        "bash",
        &[
            "-c",
            &format!("source {} && complete -p smtp-gate", COMPLETIONS[0].1),
        ],
    );
    assert!(complete.contains("smtp-gate"), "{complete}");

    // The units: verified as installed, starting /usr/sbin/smtp-gate.
    assert!(!package.units.is_empty());
    let units: Vec<String> = package
        .units
        .iter()
        .map(|u| format!("{UNIT_DIR}/{u}"))
        .collect();
    for unit in &units {
        let text = fs::read_to_string(unit).unwrap_or_else(|e| panic!("{unit}: {e}"));
        let exec: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert!(
            !exec.is_empty()
                && exec
                    .iter()
                    .all(|l| l.starts_with(&format!("ExecStart={BINARY} "))),
            "{unit}: {exec:?}"
        );
        assert!(!text.contains("/usr/local/"), "{unit} names /usr/local");
    }
    let mut verify = vec!["verify"];
    verify.extend(units.iter().map(String::as_str));
    let out = run("systemd-analyze", &verify);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify of the installed units: {}",
        describe(&out)
    );

    // Installed, nothing enabled (nor masked): no link under
    // /etc/systemd/system is new. deb-systemd-helper knows the units, so
    // that purge cleans up after an admin who enabled them.
    assert_eq!(
        systemd_links(),
        links_before,
        "installing changed /etc/systemd/system"
    );
    for unit in &package.units {
        let state = Path::new(DSH_STATE).join(format!("{unit}.dsh-also"));
        assert!(state.exists(), "{} is missing", state.display());
    }

    // The conffiles: deploy/'s examples, verbatim; the users example
    // readable by root only; no users file, so the daemon cannot start on
    // the example's users.
    let conffiles: BTreeSet<String> = run_ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(conffiles, expected_conffiles(), "dpkg's conffiles");
    for conffile in &conffiles {
        let name = Path::new(conffile).file_name().unwrap();
        let shipped = fs::read(deb::workspace().join("deploy").join(name)).unwrap();
        assert_eq!(fs::read(conffile).unwrap(), shipped, "{conffile}");
        let meta = fs::metadata(conffile).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{conffile}");
        let mode = meta.permissions().mode() & 0o777;
        let expected = if conffile.ends_with("users.example") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode, expected, "{conffile}: mode {mode:o}");
    }
    let users = format!("{CONFIG_DIR}/users");
    assert!(!Path::new(&users).exists(), "the package installed {users}");

    // Started as the unit starts it, on the shipped config (with a mail
    // root that exists, and the pins in a scratch directory), serve
    // refuses before it touches a gate: the users file is missing. In a
    // namespace of its own, where no eth0 could be gated anyway.
    let netns = Netns::new();
    let mail_root = Scratch::new("deb-mail");
    let pins = mail_root.0.join("pins");
    let out = output_within(
        Command::new("ip")
            .args(["netns", "exec", &netns.0, BINARY])
            .args([
                "serve",
                "--config",
                &format!("{CONFIG_DIR}/smtp-gate.toml"),
                "--mail-root",
                mail_root.0.to_str().unwrap(),
                "--pin-dir",
                pins.to_str().unwrap(),
            ]),
        Duration::from_secs(30),
    )
    .expect("smtp-gate serve ends by itself");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&users),
        "serve on the shipped config must refuse for want of {users}: {}",
        describe(&out)
    );
    assert!(
        !pins.exists(),
        "serve made {} before refusing",
        pins.display()
    );
    drop(netns);

    // The agent's system user: no login, no home.
    let entry = run_ok("getent", &["passwd", PACKAGE]);
    let fields: Vec<&str> = entry.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "{entry}");
    assert_eq!(fields[5], "/nonexistent", "{entry}");
    assert!(fields[6].ends_with("/nologin"), "{entry}");
    run_ok("getent", &["group", PACKAGE]);

    // dpkg -r: of what dpkg listed, only the conffiles stay (with their
    // directory); nothing is left under /etc/systemd/system either.
    let listed = run_ok("dpkg", &["--listfiles", PACKAGE]);
    let listed: Vec<&str> = listed.lines().filter(|l| l.starts_with('/')).collect();
    for path in files.iter().chain(dirs.iter()) {
        assert!(listed.contains(&path.as_str()), "dpkg -L lacks {path}");
    }
    fs::create_dir_all(STATE_DIR).unwrap();
    fs::write(Path::new(STATE_DIR).join("bus-position"), "0-0\n").unwrap();

    // A gate, attached by the installed binary to a lab's veth (in the
    // lab's namespaces, pinned on its bpffs), in the pin directory the
    // agent's configuration names: not the default one.
    let lab = Lab::new();
    let iface = lab.client.server_iface.clone();
    let pin = lab.pin_dir_str();
    run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &lab.server_ns,
            BINARY,
            "attach",
            "--iface",
            &iface,
            "--mode",
            "xdp-skb",
            "--pin-dir",
            &pin,
        ],
    );
    let agent_config = format!("{CONFIG_DIR}/smtp-gate-agent.toml");
    let text = fs::read_to_string(&agent_config).unwrap();
    let commented = "# pin_dir = \"/sys/fs/bpf/smtp-gate\"";
    assert!(text.contains(commented), "{agent_config}:\n{text}");
    fs::write(
        &agent_config,
        text.replace(commented, &format!("pin_dir = \"{pin}\"")),
    )
    .unwrap();
    let gated = |what: &str| {
        assert_eq!(
            lab.attached_ifaces(),
            std::slice::from_ref(&iface),
            "{what}"
        );
        let result = lab.client.connect_v4(SMTP_PORT, DENY_TIMEOUT);
        assert!(
            !result.is_connected(),
            "SMTP reached without a grant {what}: {result}"
        );
    };
    gated("with the gate attached");
    // A reinstall (prerm upgrade) keeps the gate.
    dpkg_ok(&["--force-confold", "--install", deb_path]);
    gated("after a reinstall");

    let removed = dpkg_ok(&["--remove", PACKAGE]);
    assert!(
        removed.contains(&format!("smtp-gate: detached from {iface}")),
        "dpkg -r did not say it detached the gate from {iface}:\n{removed}"
    );
    assert!(lab.pins().is_empty(), "dpkg -r left pins: {:?}", lab.pins());
    let shown = lab.server_link_show(&iface);
    assert!(
        !shown.contains("xdp"),
        "dpkg -r left XDP on {iface}:\n{shown}"
    );
    let result = lab.client.connect_v4(SMTP_PORT, PASS_TIMEOUT);
    assert!(
        result.is_connected(),
        "SMTP still gated after dpkg -r: {result}"
    );
    drop(lab);
    assert_eq!(
        package_status().as_deref(),
        Some("deinstall ok config-files")
    );
    let mut left = Vec::new();
    for path in &listed {
        let path = Path::new(path);
        // (Followed: /lib is a link to /usr/lib on a merged-/usr system.)
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        let ours = path.to_string_lossy().contains("smtp-gate");
        let keep = conffiles.contains(&path.to_string_lossy().into_owned())
            || path == Path::new(CONFIG_DIR)
            || (meta.is_dir() && !ours);
        if !keep {
            left.push(path.display().to_string());
        }
    }
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    for conffile in &conffiles {
        assert!(Path::new(conffile).exists(), "dpkg -r removed {conffile}");
    }
    assert_eq!(
        systemd_links(),
        links_before,
        "removing changed /etc/systemd/system"
    );

    // dpkg -P: the conffiles, their directory, the agent's state and
    // deb-systemd-helper's record go too.
    dpkg_ok(&["--purge", PACKAGE]);
    assert_eq!(package_status(), None);
    for gone in conffiles
        .iter()
        .map(String::as_str)
        .chain([CONFIG_DIR, STATE_DIR])
    {
        assert!(!Path::new(gone).exists(), "dpkg -P left {gone}");
    }
    for unit in &package.units {
        let state = Path::new(DSH_STATE).join(format!("{unit}.dsh-also"));
        assert!(!state.exists(), "dpkg -P left {}", state.display());
    }
    assert_eq!(systemd_links(), links_before);
}
