//! A private Postfix instance in the server namespace: its own
//! config_directory (main.cf, master.cf, the client table), queue_directory,
//! data_directory and maillog_file, all under the harness directory
//! `/run/smtp-gate-flood/<pid>/`. Started with `ip netns exec SRV postfix
//! -c DIR start` (the master and its daemons live in that namespace),
//! pinned to the server CPU; stopped with `postfix -c DIR stop` when
//! dropped. The host's own Postfix configuration is never read or written.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Seek, SeekFrom},
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use testkit::netns::netns_command;

use super::{
    net::{in_spoof_net, SERVER_CPU},
    sys::{self, run_ok},
};

/// Where the harness directories live, one per bench process.
pub const HARNESS_ROOT: &str = "/run/smtp-gate-flood";
const CMD_TIMEOUT: Duration = Duration::from_secs(30);

/// Stops the Postfix instances and removes the directories of bench
/// processes that are gone (killed before their guards could run).
pub fn sweep_stale() {
    let own = std::process::id() as i32;
    let Ok(entries) = fs::read_dir(HARNESS_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == own || sys::pid_alive(pid) {
            continue;
        }
        let conf = entry.path().join("conf");
        eprintln!(
            "flood: stopping a stale Postfix instance in {}",
            conf.display()
        );
        let _ = testkit::process::output_within(
            Command::new("postfix").arg("-c").arg(&conf).arg("stop"),
            CMD_TIMEOUT,
        );
        let _ = fs::remove_dir_all(entry.path());
    }
}

/// How the MTA restricts clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restrictions {
    /// No client restrictions (relay is still refused).
    Open,
    /// `check_client_access cidr:DIR/clients, reject`: the classic
    /// POP-before-SMTP deployment, the legitimate client listed OK.
    ClientTable,
}

pub struct Postfix {
    dir: PathBuf,
    conf: PathBuf,
    ns: String,
    server: Ipv4Addr,
    running: bool,
    restrictions: Restrictions,
}

impl Postfix {
    /// Writes the instance's configuration (nothing runs yet).
    pub fn new(ns: &str, server: Ipv4Addr, listed_client: Ipv4Addr) -> Result<Self> {
        let dir = Path::new(HARNESS_ROOT).join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&dir);
        let conf = dir.join("conf");
        for sub in ["conf", "queue", "data"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        run_ok(
            Command::new("chown").arg("postfix").arg(dir.join("data")),
            CMD_TIMEOUT,
        )?;
        fs::write(conf.join("clients"), format!("{listed_client}/32 OK\n"))?;
        fs::write(conf.join("master.cf"), MASTER_CF)?;
        let postfix = Self {
            dir,
            conf,
            ns: ns.to_string(),
            server,
            running: false,
            restrictions: Restrictions::Open,
        };
        postfix.write_main_cf()?;
        Ok(postfix)
    }

    fn write_main_cf(&self) -> Result<()> {
        let d = self.dir.display();
        let restrictions = match self.restrictions {
            Restrictions::Open => String::new(),
            Restrictions::ClientTable => {
                format!(
                    "check_client_access cidr:{}/clients, reject",
                    self.conf.display()
                )
            }
        };
        let main_cf = format!(
            "# Written by gate-bench (flood suite); removed when the bench ends.\n\
             compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             myhostname = mx.flood.invalid\n\
             mydomain = flood.invalid\n\
             myorigin = $myhostname\n\
             mydestination =\n\
             relay_domains =\n\
             relayhost =\n\
             mynetworks = 127.0.0.0/8\n\
             inet_interfaces = {server}\n\
             inet_protocols = ipv4\n\
             smtpd_peername_lookup = no\n\
             smtp_dns_support_level = disabled\n\
             smtpd_client_restrictions = {restrictions}\n\
             smtpd_relay_restrictions = reject_unauth_destination\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             smtputf8_enable = no\n\
             # Daemons live through the whole bench, so their CPU time can be read.\n\
             max_use = 1000000\n\
             max_idle = 3600s\n",
            server = self.server,
        );
        fs::write(self.conf.join("main.cf"), main_cf)?;
        Ok(())
    }

    fn postfix_cmd(&self, action: &str) -> Command {
        let mut command = netns_command(&self.ns, "postfix");
        command.arg("-c").arg(&self.conf).arg(action);
        command
    }

    /// `ip netns exec SRV postfix -c DIR start`, the master pinned to the
    /// server CPU (its daemons inherit that).
    pub fn start(&mut self) -> Result<()> {
        let mut command = self.postfix_cmd("start");
        // SAFETY: sched_setaffinity is async-signal-safe; nothing else runs.
        unsafe {
            command.pre_exec(|| {
                let _ = sys::set_affinity(0, SERVER_CPU);
                Ok(())
            });
        }
        self.running = true;
        run_ok(&mut command, CMD_TIMEOUT).context("starting Postfix")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.master_pid().is_none() {
            if Instant::now() > deadline {
                bail!(
                    "Postfix started but its master is not running:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Rewrites main.cf and reloads; the caller checks that it took.
    pub fn set_restrictions(&mut self, restrictions: Restrictions) -> Result<()> {
        if restrictions == self.restrictions {
            return Ok(());
        }
        self.restrictions = restrictions;
        self.write_main_cf()?;
        run_ok(&mut self.postfix_cmd("reload"), CMD_TIMEOUT).context("postfix reload")?;
        Ok(())
    }

    pub fn restrictions(&self) -> Restrictions {
        self.restrictions
    }

    /// The master's process id, if it runs.
    pub fn master_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.dir.join("queue/pid/master.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        sys::pid_alive(pid).then_some(pid)
    }

    /// CPU time of the whole instance in seconds: the master, its live
    /// daemons (schedstat, ns exact) and the daemons it has reaped.
    pub fn cpu_seconds(&self) -> f64 {
        let Some(master) = self.master_pid() else {
            return 0.0;
        };
        let mut ns = sys::schedstat_ns(master).unwrap_or(0);
        let mut reaped = 0.0;
        for pid in sys::all_pids() {
            match sys::ppid_and_children_cpu(pid) {
                Some((ppid, _)) if ppid == master => ns += sys::schedstat_ns(pid).unwrap_or(0),
                Some((_, children)) if pid == master => reaped = children,
                _ => {}
            }
        }
        ns as f64 / 1e9 + reaped
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    /// Size of the mail log, to count what is written after this point.
    pub fn log_offset(&self) -> u64 {
        fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0)
    }

    /// `connect from` lines of smtpd written since `offset`, by client
    /// kind: "flood" (198.18.0.0/15), or the address.
    pub fn connects_since(&self, offset: u64) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        let Ok(mut file) = fs::File::open(self.log_path()) else {
            return counts;
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(offset)).is_err() || file.read_to_string(&mut text).is_err() {
            return counts;
        }
        for line in text.lines() {
            let Some(rest) = line.split(" connect from ").nth(1) else {
                continue;
            };
            if !line.contains("/smtpd[") {
                continue;
            }
            let addr = rest
                .split('[')
                .nth(1)
                .and_then(|a| a.split(']').next())
                .unwrap_or("?");
            let key = match addr.parse::<Ipv4Addr>() {
                Ok(a) if in_spoof_net(a) => "flood".to_string(),
                _ => addr.to_string(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let master = self.master_pid();
        // Inside the namespace while it exists; `postfix stop` only signals
        // the master through its pid file, so it works from outside too.
        let ns_exists = Path::new("/run/netns").join(&self.ns).exists();
        let mut command = if ns_exists {
            self.postfix_cmd("stop")
        } else {
            let mut c = Command::new("postfix");
            c.arg("-c").arg(&self.conf).arg("stop");
            c
        };
        if let Err(e) = run_ok(&mut command, CMD_TIMEOUT) {
            eprintln!("flood: postfix stop: {e:#}");
        }
        if let Some(pid) = master {
            let deadline = Instant::now() + Duration::from_secs(10);
            while sys::pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if sys::pid_alive(pid) {
                eprintln!("flood: the Postfix master {pid} ignored stop: killing its group");
                // SAFETY: kill has no memory effects; the master leads its
                // own process group (it calls setsid).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(HARNESS_ROOT);
    }
}

/// Only what an inbound MTA needs; nothing chrooted (the queue directory
/// has no copies of /etc), no delivery agents but error and discard.
const MASTER_CF: &str = "\
# Written by gate-bench (flood suite).
smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
