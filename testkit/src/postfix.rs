//! A real Postfix for the lab tests, started in a namespace with a private
//! config, queue and data directory (nothing of the host's Postfix is
//! used or touched), stopped and removed on drop, also when a test fails.
//! It listens on port 25 of every address of its namespace and delivers
//! every recipient of `lab.test` into one Maildir (`mail/alice/`, owned
//! by nobody), logging to a file the tests can show.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::netns_command,
    process::{describe, output_within},
};

const POSTFIX: &str = "/usr/sbin/postfix";
/// nobody: the owner of the delivered mail.
const MAIL_UID: u32 = 65534;
/// How long starting or stopping Postfix may take: only a hang takes longer.
const BOUND: Duration = Duration::from_secs(60);

/// The services a Postfix that receives and delivers locally needs, none
/// chrooted (the queue directory is a scratch one, without the copies of
/// /etc a chroot needs).
const MASTER_CF: &str = "\
smtp      inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
proxymap  unix  -       -       n       -       -       proxymap
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct PostfixServer {
    dir: PathBuf,
    ns: String,
}

impl PostfixServer {
    /// Starts Postfix in `ns`: its main.cf is the lab's settings, then
    /// `restrictions` verbatim (e.g. deploy/postfix/main.cf.snippet).
    /// `mynetworks` is loopback only, so no lab client is trusted.
    pub fn start(ns: &str, restrictions: &str) -> Self {
        assert!(
            Path::new(POSTFIX).exists(),
            "{POSTFIX} is missing: install Debian's postfix (`cargo xtask setup` does)"
        );
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-postfix-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let server = Self {
            dir,
            ns: ns.to_string(),
        };
        for sub in ["etc", "queue", "data", "mail"] {
            fs::create_dir_all(server.dir.join(sub))
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", server.dir.display()));
        }
        fs::set_permissions(&server.dir, fs::Permissions::from_mode(0o755)).unwrap();
        chown(&server.dir.join("data"), "postfix:postfix");
        chown(&server.dir.join("mail"), &format!("{MAIL_UID}:{MAIL_UID}"));
        let d = server.dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file_prefixes = {d}\n\
             maillog_file = {d}/maillog\n\
             myhostname = mx.lab.test\n\
             mydestination =\n\
             inet_interfaces = all\n\
             inet_protocols = all\n\
             mynetworks = 127.0.0.0/8 [::1]/128\n\
             smtpd_banner = $myhostname ESMTP\n\
             virtual_mailbox_domains = lab.test\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = static:alice/\n\
             virtual_uid_maps = static:{MAIL_UID}\n\
             virtual_gid_maps = static:{MAIL_UID}\n\
             \n{restrictions}"
        );
        fs::write(server.dir.join("etc/main.cf"), main_cf).unwrap();
        fs::write(server.dir.join("etc/master.cf"), MASTER_CF).unwrap();
        let out = server.postfix(&["start"]);
        assert!(
            out.status.success(),
            "postfix start failed: {}\nits log:\n{}",
            describe(&out),
            server.log()
        );
        server
    }

    fn postfix(&self, args: &[&str]) -> std::process::Output {
        let mut command = netns_command(&self.ns, POSTFIX);
        command.arg("-c").arg(self.dir.join("etc")).args(args);
        output_within(&mut command, BOUND)
            .unwrap_or_else(|e| panic!("cannot run {POSTFIX} {args:?}: {e}"))
    }

    /// Postfix's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Files delivered to the Maildir's `new/` so far.
    pub fn delivered(&self) -> Vec<PathBuf> {
        let new = self.dir.join("mail/alice/new");
        let mut files: Vec<PathBuf> = fs::read_dir(new)
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits until a delivered message holds `needle`; returns its text.
    /// Panics with Postfix's log if none does within `timeout`.
    pub fn wait_delivered(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            for file in self.delivered() {
                let text = fs::read_to_string(&file).unwrap_or_default();
                if text.contains(needle) {
                    return text;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no message with {needle:?} delivered in {timeout:?}; Postfix's log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn master_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn chown(path: &Path, owner: &str) {
    let out = output_within(
        std::process::Command::new("chown").arg(owner).arg(path),
        BOUND,
    )
    .unwrap_or_else(|e| panic!("cannot run chown: {e}"));
    assert!(out.status.success(), "chown {owner}: {}", describe(&out));
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl Drop for PostfixServer {
    fn drop(&mut self) {
        let master = self.master_pid();
        let _ = self.postfix(&["stop"]);
        if let Some(pid) = master {
            let deadline = Instant::now() + BOUND;
            while alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if alive(pid) {
                // SAFETY: kill has no memory effects; the pid is the master
                // this instance started (its own pid file).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
