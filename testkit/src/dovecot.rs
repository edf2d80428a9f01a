//! A real Dovecot (Debian's dovecot-imapd and dovecot-pop3d) for the
//! hooks' tests: started in a lab's server namespace with a private
//! config (its own base_dir, state, log and passwd-file, no TLS, plain
//! logins allowed), IMAP on 143 and POP3 on 110, stopped and removed on
//! drop, also when a test panics. Extra settings (the shipped policy
//! snippet, with its URL) go in through [`DovecotOptions::include`].
//!
//! Needs root and the packages (`cargo xtask setup` installs them);
//! panics with a clear message otherwise, never skips.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    lab::Lab,
    netns::netns_command,
    serve::ServeDaemon,
    smtp::{connect, ConnectResult},
};

pub const IMAP_PORT: u16 = 143;
pub const POP3_PORT: u16 = 110;
/// How long Dovecot may take to start listening: only a hang is longer.
const START_BOUND: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How to start a [`Dovecot`].
#[derive(Clone, Debug, Default)]
pub struct DovecotOptions {
    /// `(user, password)` pairs of its passwd-file.
    pub users: Vec<(String, String)>,
    /// A file `!include`d at the end of the config (e.g. a snippet of
    /// deploy/dovecot/, rewritten to the lab's addresses).
    pub include: Option<PathBuf>,
}

/// A running private Dovecot.
pub struct Dovecot {
    dir: PathBuf,
    ns: String,
}

/// Panics unless Dovecot's programs are installed.
pub fn require_dovecot() {
    for program in ["dovecot", "doveadm", "doveconf"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{program} is not installed: run `cargo xtask setup` (Debian's dovecot-imapd and \
             dovecot-pop3d)"
        );
    }
}

impl Dovecot {
    /// Starts Dovecot in namespace `ns`, listening on every address there,
    /// and waits until `client_ns` reads its IMAP greeting at `server`.
    pub fn start(ns: &str, client_ns: &str, server: IpAddr, options: &DovecotOptions) -> Self {
        require_dovecot();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-dovecot-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["base", "state", "mail"] {
            fs::create_dir_all(dir.join(sub)).expect("Dovecot's directories");
        }
        // The mail processes run as nobody.
        set_mode(&dir.join("mail"), 0o1777);
        let passwd: String = options
            .users
            .iter()
            .map(|(user, password)| format!("{user}:{{PLAIN}}{password}\n"))
            .collect();
        fs::write(dir.join("users"), passwd).expect("Dovecot's passwd-file");
        let include = options
            .include
            .as_ref()
            .map(|path| format!("!include {}\n", path.display()))
            .unwrap_or_default();
        let d = dir.display();
        let config = format!(
            "base_dir = {d}/base\n\
             state_dir = {d}/state\n\
             log_path = {d}/log\n\
             protocols = imap pop3\n\
             listen = *, ::\n\
             ssl = no\n\
             disable_plaintext_auth = no\n\
             auth_mechanisms = plain login\n\
             default_login_user = dovenull\n\
             default_internal_user = dovecot\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
             userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/mail/%u\n}}\n\
             mail_location = maildir:{d}/mail/%u\n\
             service imap-login {{\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service pop3-login {{\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
             {include}"
        );
        fs::write(dir.join("dovecot.conf"), config).expect("Dovecot's config");
        let dovecot = Self {
            dir,
            ns: ns.to_owned(),
        };
        // The master goes to the background keeping what it was given as
        // output: a pipe would never end, so its errors go to a file.
        let errors = dovecot.dir.join("start-errors");
        let status = netns_command(ns, "dovecot")
            .arg("-c")
            .arg(dovecot.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&errors).expect("Dovecot's start errors file"))
            .status()
            .expect("cannot run dovecot");
        assert!(
            status.success(),
            "dovecot did not start ({status}): {}\nits log:\n{}",
            fs::read_to_string(&errors).unwrap_or_default(),
            dovecot.log()
        );
        dovecot.wait_greeting(client_ns, server);
        dovecot
    }

    fn wait_greeting(&self, client_ns: &str, server: IpAddr) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            match connect(client_ns, server, IMAP_PORT, Duration::from_secs(2)) {
                ConnectResult::Connected(greeting) if greeting.starts_with("* OK") => return,
                other if Instant::now() > deadline => panic!(
                    "Dovecot does not greet on {server}:{IMAP_PORT} after {START_BOUND:?} \
                     ({other}); its log:\n{}",
                    self.log()
                ),
                _ => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Its config file (for `doveadm -c`, `doveconf -c`).
    pub fn config(&self) -> PathBuf {
        self.dir.join("dovecot.conf")
    }

    /// The command listing its sessions, for `dovecot_sessions_command`.
    pub fn who_command(&self) -> String {
        format!("doveadm -c {} -f tab who -1", self.config().display())
    }

    /// The Maildir of `user`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user)
    }

    /// Everything Dovecot logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `smtp-gate serve` beside this Dovecot in `lab`'s server
    /// namespace, serving the hooks only (`listen = []`, Dovecot has 110):
    /// its config file is the gate on the lab's client link, then `keys`
    /// (TOML lines). Returns at once; its log is `serve.log` here.
    pub fn spawn_hooks_daemon(&self, lab: &Lab, keys: &str) -> ServeDaemon {
        let config = self.dir.join("smtp-gate.toml");
        fs::write(
            &config,
            format!(
                "iface = \"{}\"\nlisten = []\n{keys}",
                lab.client.server_iface
            ),
        )
        .expect("the daemon's config");
        let pin = lab.pin_dir_str();
        lab.spawn_serve(
            &["--config", &config.to_string_lossy(), "--pin-dir", &pin],
            &self.dir.join("serve.log"),
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let stopped = netns_command(&self.ns, "doveadm")
            .arg("-c")
            .arg(self.config())
            .arg("stop")
            .output()
            .is_ok_and(|o| o.status.success());
        if !stopped {
            if let Ok(pid) = fs::read_to_string(self.dir.join("base/master.pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        // The master removes its pid file last.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.dir.join("base/master.pid").exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        if thread::panicking() {
            eprintln!("--- Dovecot's log ---\n{}---", self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
