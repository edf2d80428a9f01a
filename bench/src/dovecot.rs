//! A Dovecot POP3 server of the benchmark's own: its own dovecot.conf,
//! base_dir, state_dir, index and log in one directory, listening on
//! 127.0.0.1 on a free port, and with a certificate on another for pop3s
//! (implicit TLS) with `ssl = required`. The host's /etc/dovecot is never read or
//! changed, and every process it started is stopped when the [`Dovecot`]
//! is dropped (also when the run fails).

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Context, Result};

use crate::packages;

/// The Debian package the POP3 server comes in (it pulls dovecot-core).
pub const PACKAGE: &str = "dovecot-pop3d";

/// The users Debian's dovecot-core creates for Dovecot's own processes.
const INTERNAL_USER: &str = "dovecot";
const LOGIN_USER: &str = "dovenull";

/// The uid and primary gid of `name`.
pub fn user_ids(name: &str) -> Result<(u32, u32)> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: getpwnam with a NUL-terminated name; the result is read at
    // once, before any other passwd call (the harness is the only caller).
    let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if pw.is_null() {
        bail!("there is no user `{name}`");
    }
    // SAFETY: a non-null pointer from getpwnam.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// How Dovecot's login processes are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoginMode {
    /// Dovecot's default: a new pop3-login process per connection
    /// (`service_count = 1`).
    Default,
    /// "High-performance mode": `service_count = 0`, long-lived login
    /// processes that serve many connections, `process_min_avail` of them
    /// started in advance.
    Reuse { min_avail: usize },
}

impl LoginMode {
    pub fn label(self) -> &'static str {
        match self {
            LoginMode::Default => "Dovecot default",
            LoginMode::Reuse { .. } => "Dovecot service_count=0",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            LoginMode::Default => "default",
            LoginMode::Reuse { .. } => "sc0",
        }
    }
}

/// What Dovecot serves: the same users and Maildirs as smtp-gate.
pub struct Setup<'a> {
    /// passwd-file with `user:{PLAIN}secret` lines (copied).
    pub users_file: &'a Path,
    /// `<mail_root>/<user>/` Maildirs, owned by `mail_uid`/`mail_gid`
    /// (Dovecot refuses to access mail as root).
    pub mail_root: &'a Path,
    pub mail_uid: u32,
    pub mail_gid: u32,
}

/// The certificate chain and key (PEM files) Dovecot serves pop3s with.
pub struct Ssl<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Where a configuration listens: POP3 in clear on `port` and, with a
/// certificate, pop3s on `tls_port` (then `ssl = required`).
struct Listeners<'a> {
    port: u16,
    ssl: Option<(&'a Ssl<'a>, u16)>,
}

/// A running Dovecot master and everything it forked.
pub struct Dovecot {
    dir: PathBuf,
    conf: PathBuf,
    instance: String,
    master: Option<Child>,
    pub addr: SocketAddr,
    /// The pop3s listener, when it was given a certificate.
    pub tls_addr: Option<SocketAddr>,
}

/// Installs dovecot-pop3d if it is missing and returns `dovecot --version`.
pub fn ensure_installed() -> Result<String> {
    packages::ensure_packages(&[PACKAGE])?;
    let out = Command::new("dovecot")
        .arg("--version")
        .output()
        .context("running `dovecot --version`")?;
    if !out.status.success() {
        bail!("`dovecot --version` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// (major, minor) of a `dovecot --version` line such as
/// `2.3.19.1 (9b53102964)`.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version
        .split_whitespace()
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The benchmark's Dovecot directory, `dovecot-<pid>/`: one
/// subdirectory per configuration (its dovecot.conf, base_dir, state_dir,
/// log and users file) and the indexes they share, so the second
/// configuration starts with warm indexes. Removed when dropped.
pub struct Home {
    dir: PathBuf,
}

impl Home {
    pub fn create(parent: &Path, setup: &Setup) -> Result<Self> {
        let dir = parent.join(format!("dovecot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let home = Self { dir };
        fs::create_dir_all(home.index())
            .with_context(|| format!("creating {}", home.index().display()))?;
        std::os::unix::fs::chown(home.index(), Some(setup.mail_uid), Some(setup.mail_gid))?;
        Ok(home)
    }

    fn index(&self) -> PathBuf {
        self.dir.join("index")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Dovecot {
    /// Writes the configuration under `<home>/<mode>[-tls]/`, starts
    /// `dovecot -F -c <conf>` and waits for its greeting. With `ssl`, it
    /// also serves pop3s and requires TLS for logging in.
    pub fn start(
        home: &Home,
        version: &str,
        mode: LoginMode,
        setup: &Setup,
        ssl: Option<&Ssl>,
    ) -> Result<Self> {
        let tag = format!("{}{}", mode.tag(), if ssl.is_some() { "-tls" } else { "" });
        let instance = format!("gate-bench-{}-{tag}", std::process::id());
        let dir = home.dir.join(&tag);
        let _ = fs::remove_dir_all(&dir);
        for sub in ["run", "state"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // Unix socket paths must fit in sun_path (108 bytes).
        if dir.join("run/login/pop3-login-master").as_os_str().len() > 100 {
            bail!(
                "{} is too deep for Dovecot's unix sockets; run from a shorter path",
                dir.display()
            );
        }
        let index = home.index();
        // Its auth process runs as the internal user: it gets its own copy
        // of the users file, readable by that user alone.
        let users = dir.join("users");
        fs::copy(setup.users_file, &users).context("copying the users file")?;
        let (internal_uid, internal_gid) = user_ids(INTERNAL_USER)?;
        std::os::unix::fs::chown(&users, Some(internal_uid), Some(internal_gid))?;
        fs::set_permissions(&users, fs::Permissions::from_mode(0o600))?;
        user_ids(LOGIN_USER)?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listeners = Listeners {
            port,
            ssl: match ssl {
                Some(ssl) => Some((ssl, free_port()?)),
                None => None,
            },
        };
        let tls_addr = listeners
            .ssl
            .map(|(_, port)| SocketAddr::from(([127, 0, 0, 1], port)));
        let conf = dir.join("dovecot.conf");
        let text = if major_minor(version) >= (2, 4) {
            config_2_4(&dir, &index, &instance, &listeners, mode, setup, version)
        } else {
            config_2_3(&dir, &index, &instance, &listeners, mode, setup)
        };
        fs::write(&conf, text)?;
        let stdio = fs::File::create(dir.join("master.out"))?;
        let master = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stdio.try_clone()?)
            .stderr(stdio)
            .spawn()
            .context("starting dovecot")?;
        let mut dovecot = Self {
            dir,
            conf,
            instance,
            master: Some(master),
            addr,
            tls_addr,
        };
        dovecot.wait_ready().map_err(|e| {
            e.context(format!(
                "Dovecot ({}) did not come up; its log:\n{}",
                mode.label(),
                dovecot.log_tail()
            ))
        })?;
        Ok(dovecot)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(master) = self.master.as_mut() {
                if let Some(status) = master.try_wait()? {
                    bail!("the master exited ({status})");
                }
            }
            if let Ok(stream) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)) {
                use std::io::{BufRead, BufReader};
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut greeting = String::new();
                BufReader::new(stream).read_line(&mut greeting)?;
                if greeting.starts_with("+OK") {
                    return Ok(());
                }
                bail!("unexpected greeting {greeting:?}");
            }
            if Instant::now() > deadline {
                bail!("no listener on {} after 15 s", self.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Child::id)
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["master.out", "dovecot.log"] {
            if let Ok(log) = fs::read_to_string(self.dir.join(name)) {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(20);
                text += &lines[from..].join("\n");
                text.push('\n');
            }
        }
        text
    }

    /// Warnings and errors Dovecot logged (for the report).
    pub fn log_problems(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("dovecot.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Warning:") || l.contains("Error:") || l.contains("Fatal:"))
            .map(str::to_string)
            .collect()
    }

    /// Stops Dovecot (`doveadm stop`, then signals), makes sure none of its
    /// processes is left and removes its directory.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(mut master) = self.master.take() else {
            return Ok(());
        };
        let before = crate::procs::tree(master.id());
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut exited = wait_child(&mut master, Duration::from_secs(10));
        if !exited {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(master.id() as libc::pid_t, libc::SIGKILL) };
            exited = wait_child(&mut master, Duration::from_secs(5));
        }
        // Whatever outlived the master: the processes of the tree seen
        // before, and anything that still carries this instance's name.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut left: Vec<u32> = before
                .iter()
                .copied()
                .filter(|&pid| pid != master.id() && self.is_ours(pid))
                .collect();
            for pid in self.stray_pids() {
                if !left.contains(&pid) {
                    left.push(pid);
                }
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("Dovecot processes {left:?} would not go away");
            }
            for pid in left {
                // SAFETY: a pid checked just now to be a process of this
                // Dovecot instance.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            bail!("the Dovecot master {} did not exit", master.id());
        }
        let _ = fs::remove_dir_all(&self.dir);
        Ok(())
    }

    /// Whether `pid` is a live process of this instance (its title or
    /// command line names the instance or our configuration).
    fn is_ours(&self, pid: u32) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains(&self.instance) || cmdline.contains(&*self.conf.to_string_lossy())
    }

    fn stray_pids(&self) -> Vec<u32> {
        crate::procs::all_pids()
            .into_iter()
            .filter(|&pid| self.is_ours(pid))
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("stopping Dovecot: {e:#}");
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    matches!(child.try_wait(), Ok(Some(_)))
}

/// A port on 127.0.0.1 that nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The pop3-login lines of `mode`; `count_key` and `unlimited` are
/// `service_count` and `0` in 2.3, `restart_request_count` and
/// `unlimited` in 2.4.
fn login_lines(mode: LoginMode, count_key: &str, unlimited: &str) -> String {
    match mode {
        LoginMode::Default => format!("  {count_key} = 1\n"),
        LoginMode::Reuse { min_avail } => {
            format!("  {count_key} = {unlimited}\n  process_min_avail = {min_avail}\n")
        }
    }
}

/// Dovecot 2.3 (Debian 12).
fn config_2_3(
    dir: &Path,
    index: &Path,
    instance: &str,
    listeners: &Listeners,
    mode: LoginMode,
    setup: &Setup,
) -> String {
    let (d, i) = (dir.display(), index.display());
    let (users, mail) = (dir.join("users"), setup.mail_root.display());
    let users = users.display();
    let (uid, gid) = (setup.mail_uid, setup.mail_gid);
    let login = login_lines(mode, "service_count", "0");
    let port = listeners.port;
    let (ssl, pop3s) = match listeners.ssl {
        None => ("ssl = no".to_string(), "    port = 0".to_string()),
        Some((files, tls_port)) => (
            format!(
                "ssl = required\nssl_cert = <{}\nssl_key = <{}",
                files.cert.display(),
                files.key.display()
            ),
            format!("    address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes"),
        ),
    };
    format!(
        "# Written by gate-bench for one benchmark run. Not the host's configuration.
protocols = pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = {instance}
log_path = {d}/dovecot.log
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain apop
mail_location = maildir:{mail}/%u:INDEX={i}/%u:CONTROL={i}/%u
pop3_uidl_format = %f
default_internal_user = {INTERNAL_USER}
default_login_user = {LOGIN_USER}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {users}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
{pop3s}
  }}
{login}}}
# One pop3 process per session: room for the 500 idle sessions.
service pop3 {{
  process_limit = 1024
}}
"
    )
}

/// Dovecot 2.4 renamed most of these settings. Written from its
/// documentation; Debian 12 ships 2.3, so this one has not been run here.
fn config_2_4(
    dir: &Path,
    index: &Path,
    instance: &str,
    listeners: &Listeners,
    mode: LoginMode,
    setup: &Setup,
    version: &str,
) -> String {
    let d = dir.display();
    let (users, mail) = (dir.join("users"), setup.mail_root.display());
    let users = users.display();
    let (uid, gid) = (setup.mail_uid, setup.mail_gid);
    let i = index.display();
    let v = version.split_whitespace().next().unwrap_or("2.4.0");
    let login = login_lines(mode, "restart_request_count", "unlimited");
    let port = listeners.port;
    let (ssl, pop3s) = match listeners.ssl {
        None => ("ssl = no".to_string(), "    port = 0".to_string()),
        Some((files, tls_port)) => (
            format!(
                "ssl = required\nssl_server_cert_file = {}\nssl_server_key_file = {}",
                files.cert.display(),
                files.key.display()
            ),
            format!("    listen = 127.0.0.1\n    port = {tls_port}\n    ssl = yes"),
        ),
    };
    format!(
        "# Written by gate-bench for one benchmark run. Not the host's configuration.
dovecot_config_version = {v}
dovecot_storage_version = {v}
protocols = pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = {instance}
log_path = {d}/dovecot.log
{ssl}
auth_allow_cleartext = yes
auth_mechanisms = plain apop
mail_driver = maildir
mail_path = {mail}/%{{user}}
mail_index_path = {i}/%{{user}}
mail_control_path = {i}/%{{user}}
mail_uid = {uid}
mail_gid = {gid}
pop3_uidl_format = %{{filename}}
default_internal_user = {INTERNAL_USER}
default_login_user = {LOGIN_USER}
passdb passwd-file {{
  passwd_file_path = {users}
  default_password_scheme = PLAIN
}}
userdb static {{
}}
service pop3-login {{
  inet_listener pop3 {{
    listen = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
{pop3s}
  }}
{login}}}
service pop3 {{
  process_limit = 1024
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::major_minor;

    #[test]
    fn reads_the_version() {
        assert_eq!(major_minor("2.3.19.1 (9b53102964)"), (2, 3));
        assert_eq!(major_minor("2.4.1-4 (7d8c0e5759)"), (2, 4));
        assert_eq!(major_minor(""), (0, 0));
    }
}
