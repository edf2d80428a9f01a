//! The daemons (`serve`, `agent`) as systemd services of `Type=notify`
//! (sd_notify(3), implemented here: one datagram to `$NOTIFY_SOCKET`):
//!
//! - `READY=1` once every listener is bound and the gate is in place;
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC` (`WatchdogSec=` in the
//!   unit), but only while every loop that does the daemon's work checked
//!   in within that half (liveness.rs): a loop that hangs, or a runtime
//!   that no longer runs its tasks, stops it, and systemd restarts the
//!   daemon;
//! - `RELOADING=1` (with `MONOTONIC_USEC=`, which `Type=notify-reload`
//!   needs from systemd 253 on) when a SIGHUP's reload starts, `READY=1`
//!   when it is done (with a `STATUS=` naming what it refused, if it did);
//! - `STOPPING=1` on SIGTERM;
//! - `STATUS=` with the daemon's logins and grants (from counters, never a
//!   walk over a map), when it changed.
//!
//! No send waits on a runtime's thread (sender.rs). Without
//! `$NOTIFY_SOCKET` (not started by systemd) every call does nothing. The
//! variables are taken out of the environment at start, so that no child
//! (the daemon runs `doveadm who`) notifies in its name.
//!
//! Logging that fits the journal is in journal.rs.

pub mod journal;
pub mod liveness;
pub mod notify;
mod sender;

use std::{
    ffi::OsString,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use log::{info, warn};
use pop3::duration::format_duration;

use liveness::{Heartbeat, Liveness};
use notify::NotifySocket;
use sender::{Kind, Sender};

/// The variables of the protocol, taken out of the environment at start.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// The watchdog is fed at most this often, whatever `$WATCHDOG_USEC` asks.
/// `WatchdogSec=` is set in seconds in practice (systemd.service(5)'s
/// examples; the unit's 30 s); a timeout of a microsecond, which the
/// variable can express, made a loop that sent 130,000 datagrams a second.
/// Below 100 ms the daemon's loops could not promise to check in in time
/// anyway: a loaded host delays a task by tens of milliseconds, and a
/// reload reads files. A timeout below twice this is said to be one the
/// daemon cannot meet.
pub const SHORTEST_WATCHDOG_INTERVAL: Duration = Duration::from_millis(100);

/// The service manager as the daemon sees it: a handle to notify it, or
/// nothing (no `$NOTIFY_SOCKET`). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ServiceManager {
    inner: Option<Arc<Inner>>,
    /// What was wrong with the environment, for the log (which is set up
    /// after the environment is read).
    problem: Option<Arc<str>>,
}

#[derive(Debug)]
struct Inner {
    sender: Arc<Sender>,
    /// How often `WATCHDOG=1` is sent: half of `$WATCHDOG_USEC`.
    watchdog: Option<Duration>,
    /// The loops that must check in for the watchdog to be fed.
    liveness: Liveness,
    /// `WATCHDOG=1` is withheld (a loop did not check in), and was said.
    withheld: AtomicBool,
    status: Mutex<Status>,
}

/// The status line: the daemon's, and a note after it (a refused reload).
#[derive(Debug, Default)]
struct Status {
    line: String,
    note: Option<String>,
    /// The `STATUS=` sent last.
    sent: String,
}

impl Status {
    fn shown(&self) -> String {
        match (&self.note, self.line.is_empty()) {
            (None, _) => self.line.clone(),
            (Some(note), true) => note.clone(),
            (Some(note), false) => format!("{}; {note}", self.line),
        }
    }
}

impl ServiceManager {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, and
    /// removes them from the environment (sd_notify's `unset_environment`):
    /// the daemon's children must not notify for it, nor see a watchdog
    /// meant for it.
    ///
    /// Call it before any other thread exists (changing the environment
    /// races with threads that read it).
    pub fn from_env() -> Self {
        let [socket, usec, pid] = ENV_VARS.map(std::env::var_os);
        for var in ENV_VARS {
            std::env::remove_var(var);
        }
        Self::from_values(socket, usec, pid, std::process::id())
    }

    /// [`ServiceManager::from_env`] from the variables' values, for a
    /// process whose id is `me`.
    fn from_values(
        socket: Option<OsString>,
        usec: Option<OsString>,
        pid: Option<OsString>,
        me: u32,
    ) -> Self {
        let failed = |problem: String| Self {
            inner: None,
            problem: Some(problem.into()),
        };
        let Some(socket) = socket else {
            return Self::default();
        };
        let Some(socket) = socket.to_str() else {
            return failed(format!(
                "NOTIFY_SOCKET={socket:?} is not UTF-8; not notifying"
            ));
        };
        let socket = match NotifySocket::new(socket) {
            Ok(socket) => socket,
            Err(e) => return failed(format!("{e}")),
        };
        let usec = usec.map(|v| v.to_string_lossy().into_owned());
        let pid = pid.map(|v| v.to_string_lossy().into_owned());
        let (watchdog, problem) = watchdog_interval(usec.as_deref(), pid.as_deref(), me);
        Self {
            inner: Some(Arc::new(Inner {
                sender: Arc::new(Sender::new(socket)),
                watchdog,
                liveness: Liveness::default(),
                withheld: AtomicBool::new(false),
                status: Mutex::new(Status::default()),
            })),
            problem: problem.map(Into::into),
        }
    }

    /// Says in the log how the daemon talks to systemd, if it does.
    pub fn log_setup(&self) {
        if let Some(problem) = &self.problem {
            warn!("systemd: {problem}");
        }
        if let Some(inner) = &self.inner {
            match inner.watchdog {
                Some(every) => info!(
                    "systemd: notifying {}, the watchdog every {} while the daemon's loops check in",
                    inner.sender.shown(),
                    format_duration(every)
                ),
                None => info!("systemd: notifying {}", inner.sender.shown()),
            }
        }
    }

    /// Whether a service manager listens (`$NOTIFY_SOCKET` was usable).
    pub fn is_listening(&self) -> bool {
        self.inner.is_some()
    }

    /// How often the watchdog is fed, if systemd asked for it.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|inner| inner.watchdog)
    }

    /// How many messages were dropped because systemd's queue was full.
    pub fn dropped_messages(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.sender.dropped())
    }

    /// `READY=1`: every listener is bound and the gate is in place (at
    /// start).
    pub fn ready(&self) {
        self.send("READY=1", Kind::StateChange);
    }

    /// `READY=1` after a reload, with what it `refused` (if anything) on
    /// the status line until the next reload, which `systemctl status`
    /// shows.
    pub fn reloaded(&self, refused: Option<&str>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let note = refused.map(|what| format!("last reload (SIGHUP) refused {what}"));
        let status = {
            let mut status = inner.status.lock().unwrap_or_else(|p| p.into_inner());
            status.note = note;
            let shown = one_line(&status.shown());
            (shown != status.sent).then(|| {
                status.sent.clone_from(&shown);
                shown
            })
        };
        match status {
            Some(line) => self.send(&format!("READY=1\nSTATUS={line}"), Kind::StateChange),
            None => self.ready(),
        }
    }

    /// `RELOADING=1` with the time it started (CLOCK_MONOTONIC, as
    /// `Type=notify-reload` wants it: systemd 253 ignores a reload
    /// message older than the signal it sent).
    pub fn reloading(&self) {
        if self.inner.is_some() {
            self.send(
                &format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()),
                Kind::StateChange,
            );
        }
    }

    /// `STOPPING=1`: the daemon is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1", Kind::StateChange);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1", Kind::Replaceable);
    }

    /// `STATUS=line` (`systemctl status` shows it, with the note of a
    /// refused reload after it), if it is not the one sent last.
    pub fn status(&self, line: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let shown = {
            let mut status = inner.status.lock().unwrap_or_else(|p| p.into_inner());
            status.line = line.to_string();
            let shown = one_line(&status.shown());
            if shown == status.sent {
                return;
            }
            status.sent.clone_from(&shown);
            shown
        };
        self.send(&format!("STATUS={shown}"), Kind::Replaceable);
    }

    /// A heartbeat for the loop called `name` (liveness.rs): from now on
    /// and while it lives, `WATCHDOG=1` waits for the loop to check in.
    /// Without a watchdog it does nothing.
    pub fn heartbeat(&self, name: &'static str) -> Heartbeat {
        match (&self.inner, self.watchdog_every()) {
            (Some(inner), Some(every)) => inner.liveness.register(name, every / 2),
            _ => Heartbeat::none(),
        }
    }

    /// Feeds the watchdog from a task of the current tokio runtime, every
    /// half of `$WATCHDOG_USEC`, while every registered loop checked in
    /// within that time ([`ServiceManager::heartbeat`]): a loop that hangs,
    /// or a runtime whose threads are all stuck, stops feeding it, and
    /// systemd restarts the daemon (`WatchdogSec=`). Nothing without a
    /// watchdog.
    pub fn spawn_watchdog(&self) {
        let Some(every) = self.watchdog_every() else {
            return;
        };
        let manager = self.clone();
        every_tick(every, move || manager.feed_watchdog(every));
    }

    /// One tick of the watchdog: `WATCHDOG=1`, or why not (said once).
    fn feed_watchdog(&self, every: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        let stale = inner.liveness.stale(every);
        if stale.is_empty() {
            if inner.withheld.swap(false, Ordering::Relaxed) {
                info!("systemd: every loop checks in again; WATCHDOG=1 is sent again");
            }
            self.watchdog();
            return;
        }
        if !inner.withheld.swap(true, Ordering::Relaxed) {
            let silent: Vec<String> = stale
                .iter()
                .map(|s| {
                    format!(
                        "{} for {}",
                        s.name,
                        humantime::format_duration(s.silent_for)
                    )
                })
                .collect();
            warn!(
                "systemd: WATCHDOG=1 withheld: no check-in from {} (stuck in a system call?); \
                 systemd restarts the daemon unless it comes back within WatchdogSec=",
                silent.join(", ")
            );
        }
    }

    /// Sends `STATUS=` with what `line` gives, every `every`, when it
    /// changed (from a task of the current runtime, until it ends).
    /// `line` must be cheap: counters, not a walk over a map.
    pub fn spawn_status(&self, every: Duration, line: impl Fn() -> String + Send + 'static) {
        if self.inner.is_none() {
            return;
        }
        let manager = self.clone();
        every_tick(every, move || manager.status(&line()));
    }

    fn send(&self, message: &str, kind: Kind) {
        if let Some(inner) = &self.inner {
            inner.sender.send(message, kind);
        }
    }
}

/// A status line as one line: a line end would start an assignment of its
/// own.
fn one_line(line: &str) -> String {
    line.replace(['\n', '\r'], " ")
}

/// How often `WATCHDOG=1` must be sent, as sd_watchdog_enabled(3) reads
/// the environment, and what is wrong with it for the log: no watchdog
/// when none is asked for (no or a zero `WATCHDOG_USEC`), when the values
/// do not read, or when `WATCHDOG_PID` names another process (the
/// watchdog is then not this one's: said, as systemd will kill the
/// service it belongs to). Half of the timeout, as systemd.service(5)
/// advises, but not below [`SHORTEST_WATCHDOG_INTERVAL`].
pub fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    me: u32,
) -> (Option<Duration>, Option<String>) {
    let Some(usec) = usec else {
        return (None, None);
    };
    if let Some(pid) = pid {
        let Ok(pid) = pid.parse::<u32>() else {
            return (
                None,
                Some(format!(
                    "WATCHDOG_PID={pid:?} is not a process id; no watchdog"
                )),
            );
        };
        if pid != me {
            return (
                None,
                Some(format!(
                    "WATCHDOG_PID={pid} is not this process ({me}): the watchdog is another \
                     process's, and this one does not feed it; with NotifyAccess=main systemd \
                     does not hear this one either (was it started through a wrapper that \
                     forks?)"
                )),
            );
        }
    }
    let Ok(usec) = usec.parse::<u64>() else {
        return (
            None,
            Some(format!(
                "WATCHDOG_USEC={usec:?} is not a number; no watchdog"
            )),
        );
    };
    if usec == 0 {
        return (None, None);
    }
    let half = Duration::from_micros(usec) / 2;
    if half >= SHORTEST_WATCHDOG_INTERVAL {
        return (Some(half), None);
    }
    (
        Some(SHORTEST_WATCHDOG_INTERVAL),
        Some(format!(
            "WATCHDOG_USEC={usec} asks for WATCHDOG=1 every {}, more often than smtp-gate \
             sends it: every {}; systemd will take the daemon for stuck unless WatchdogSec= is \
             raised (to 1s or more)",
            humantime::format_duration(half),
            format_duration(SHORTEST_WATCHDOG_INTERVAL)
        )),
    )
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000,
        // Cannot fail for this clock on Linux; 0 reads as "long ago".
        Err(_) => 0,
    }
}

/// Runs `act` every `every` from a task of the current runtime, for as
/// long as it runs; after a stall, once, not a burst of the missed ticks.
fn every_tick(every: Duration, act: impl Fn() + Send + 'static) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            act();
        }
    });
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn the_watchdog_is_asked_for_by_usec_and_only_for_this_process() {
        let me = 4242;
        let half = |ms| (Some(Duration::from_millis(ms)), None);
        assert_eq!(watchdog_interval(None, None, me), (None, None));
        assert_eq!(watchdog_interval(Some("2000000"), None, me), half(1000));
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("4242"), me),
            half(1000)
        );
        assert_eq!(watchdog_interval(Some("0"), None, me), (None, None));
        let (none, problem) = watchdog_interval(Some("30s"), None, me);
        assert!(none.is_none() && problem.unwrap().contains("WATCHDOG_USEC"));
        let (none, problem) = watchdog_interval(Some("1000"), Some("me"), me);
        assert!(none.is_none() && problem.unwrap().contains("WATCHDOG_PID"));
    }

    /// Another process's watchdog (a child that inherited it, a wrapper
    /// that forked): no watchdog, and said, naming both processes.
    #[test]
    fn another_process_watchdog_is_off_and_said() {
        let (none, problem) = watchdog_interval(Some("2000000"), Some("1"), 4242);
        assert_eq!(none, None);
        let problem = problem.expect("a word for the log");
        assert!(
            problem.contains("WATCHDOG_PID=1 is not this process (4242)"),
            "{problem}"
        );
    }

    /// A timeout shorter than the daemon can promise: fed at the shortest
    /// interval (no busy loop), and said.
    #[test]
    fn a_tiny_watchdog_is_fed_at_the_shortest_interval_and_said() {
        for usec in ["1", "150000"] {
            let (every, problem) = watchdog_interval(Some(usec), None, 1);
            assert_eq!(every, Some(SHORTEST_WATCHDOG_INTERVAL), "{usec}");
            let problem = problem.expect("a word for the log");
            assert!(
                problem.contains(&format!("WATCHDOG_USEC={usec}")) && problem.contains("100ms"),
                "{problem}"
            );
        }
        assert_eq!(
            watchdog_interval(Some("200000"), None, 1),
            (Some(SHORTEST_WATCHDOG_INTERVAL), None)
        );
    }

    /// A manager whose notify socket (in a fresh directory named after
    /// `tag`) this test reads, with the watchdog of `usec`.
    fn manager_listened_to(
        tag: &str,
        usec: &str,
    ) -> (std::path::PathBuf, UnixDatagram, ServiceManager) {
        let dir = std::env::temp_dir().join(format!("smtp-gate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let manager =
            ServiceManager::from_values(Some(path.into_os_string()), Some(usec.into()), None, 1);
        (dir, listener, manager)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).unwrap();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            all.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        all
    }

    /// The messages as sd_notify(3) spells them; a status is sent only
    /// when it changed and never spans lines; without a socket nothing
    /// happens.
    #[test]
    fn messages_are_spelled_as_systemd_reads_them() {
        let (dir, listener, manager) = manager_listened_to("sm", "3000000");
        assert!(manager.problem.is_none());
        assert_eq!(manager.watchdog_every(), Some(Duration::from_millis(1500)));
        let before = monotonic_usec();
        manager.ready();
        manager.reloading();
        manager.status("3 logins\n(1 failed)");
        manager.status("3 logins\n(1 failed)");
        manager.watchdog();
        manager.stopping();
        let after = monotonic_usec();
        let got = received(&listener);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], "READY=1");
        let usec: u64 = got[1]
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{:?}", got[1]))
            .parse()
            .unwrap();
        assert!((before..=after).contains(&usec), "{before} {usec} {after}");
        assert_eq!(got[2], "STATUS=3 logins (1 failed)");
        assert_eq!(got[3], "WATCHDOG=1");
        assert_eq!(got[4], "STOPPING=1");

        // A reload that refused something: READY=1 with the status line
        // saying so, kept on it until a reload refuses nothing.
        manager.reloaded(Some("the gate's settings"));
        manager.status("4 logins");
        manager.reloaded(None);
        manager.reloaded(None);
        let got = received(&listener);
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=3 logins (1 failed); last reload (SIGHUP) refused the gate's \
                 settings",
                "STATUS=4 logins; last reload (SIGHUP) refused the gate's settings",
                "READY=1\nSTATUS=4 logins",
                "READY=1",
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let none = ServiceManager::from_values(None, Some("3000000".into()), None, 1);
        assert!(!none.is_listening());
        assert_eq!(none.watchdog_every(), None);
        none.ready();
        none.status("x");
    }

    /// WATCHDOG=1 only while every registered loop checked in within the
    /// interval; a loop that ended no longer holds it back.
    #[test]
    fn the_watchdog_waits_for_every_loop_to_check_in() {
        let (dir, listener, manager) = manager_listened_to("sm-wd", "400000");
        let every = manager.watchdog_every().unwrap();
        assert_eq!(every, Duration::from_millis(200));
        manager.feed_watchdog(every);
        assert_eq!(received(&listener), ["WATCHDOG=1"]);
        let follower = manager.heartbeat("the follower");
        let watch = manager.heartbeat("the watch");
        std::thread::sleep(every + Duration::from_millis(50));
        watch.beat();
        manager.feed_watchdog(every);
        assert!(received(&listener).is_empty(), "fed with a silent loop");
        follower.beat();
        manager.feed_watchdog(every);
        assert_eq!(received(&listener), ["WATCHDOG=1"]);
        std::thread::sleep(every + Duration::from_millis(50));
        drop(follower);
        watch.beat();
        manager.feed_watchdog(every);
        assert_eq!(received(&listener), ["WATCHDOG=1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_environment_is_told_not_fatal() {
        let bad = ServiceManager::from_values(Some("relative/notify".into()), None, None, 1);
        assert!(!bad.is_listening());
        assert!(bad.problem.as_deref().unwrap().contains("NOTIFY_SOCKET"));
        let no_watchdog = ServiceManager::from_values(
            Some("/run/systemd/notify".into()),
            Some("soon".into()),
            None,
            1,
        );
        assert!(no_watchdog.is_listening());
        assert_eq!(no_watchdog.watchdog_every(), None);
        assert!(no_watchdog
            .problem
            .as_deref()
            .unwrap()
            .contains("WATCHDOG_USEC"));
    }
}
