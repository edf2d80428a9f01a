//! The daemons (`serve`, `agent`) as systemd services of `Type=notify`
//! (sd_notify(3), implemented here: one datagram to `$NOTIFY_SOCKET`):
//!
//! - `READY=1` once every listener is bound and the gate is in place;
//! - `WATCHDOG=1` from a task of the daemon's runtime, every half of
//!   `$WATCHDOG_USEC` (`WatchdogSec=` in the unit), so that a runtime that
//!   no longer runs its tasks is noticed and restarted;
//! - `RELOADING=1` (with `MONOTONIC_USEC=`, which `Type=notify-reload`
//!   needs from systemd 253 on) when a SIGHUP's reload starts, `READY=1`
//!   when it is done;
//! - `STOPPING=1` on SIGTERM;
//! - `STATUS=` with the daemon's logins and grants (from counters, never a
//!   walk over a map), when it changed.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does
//! nothing. The variables are taken out of the environment at start, so
//! that no child (the daemon runs `doveadm who`) notifies in its name.
//!
//! Logging that fits the journal is in journal.rs.

pub mod journal;
pub mod notify;

use std::{
    ffi::OsString,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use log::{info, warn};

use notify::NotifySocket;

/// The variables of the protocol, taken out of the environment at start.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

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
    socket: NotifySocket,
    /// How often `WATCHDOG=1` is sent: half of `$WATCHDOG_USEC`.
    watchdog: Option<Duration>,
    /// The `STATUS=` sent last.
    status: Mutex<String>,
    /// A failed send was logged.
    warned: AtomicBool,
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
        let (watchdog, problem) = match watchdog_interval(usec.as_deref(), pid.as_deref(), me) {
            Ok(watchdog) => (watchdog, None),
            Err(e) => (None, Some(e.into())),
        };
        Self {
            inner: Some(Arc::new(Inner {
                socket,
                watchdog,
                status: Mutex::new(String::new()),
                warned: AtomicBool::new(false),
            })),
            problem,
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
                    "systemd: notifying {}, the watchdog every {}",
                    inner.socket.shown,
                    pop3::duration::format_duration(every)
                ),
                None => info!("systemd: notifying {}", inner.socket.shown),
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

    /// `READY=1`: every listener is bound and the gate is in place (at
    /// start), or a reload is done.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `RELOADING=1` with the time it started (CLOCK_MONOTONIC, as
    /// `Type=notify-reload` wants it: systemd 253 ignores a reload
    /// message older than the signal it sent).
    pub fn reloading(&self) {
        if self.inner.is_some() {
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        }
    }

    /// `STOPPING=1`: the daemon is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STATUS=line` (`systemctl status` shows it), if it is not the one
    /// sent last.
    pub fn status(&self, line: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        // One line: a line end would start an assignment of its own.
        let line = line.replace(['\n', '\r'], " ");
        {
            let mut last = inner.status.lock().unwrap_or_else(|p| p.into_inner());
            if *last == line {
                return;
            }
            last.clone_from(&line);
        }
        self.send(&format!("STATUS={line}"));
    }

    /// Feeds the watchdog from a task of the current tokio runtime, every
    /// half of `$WATCHDOG_USEC`, for as long as the runtime runs its
    /// tasks: a runtime whose threads are all stuck stops feeding it, and
    /// systemd restarts the daemon (`WatchdogSec=`). Nothing without a
    /// watchdog.
    pub fn spawn_watchdog(&self) {
        let Some(every) = self.watchdog_every() else {
            return;
        };
        let manager = self.clone();
        every_tick(every, move || manager.watchdog());
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

    fn send(&self, message: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        match inner.socket.send(message) {
            Ok(()) => {
                if inner.warned.swap(false, Ordering::Relaxed) {
                    info!("systemd: {} takes messages again", inner.socket.shown);
                }
            }
            Err(e) => {
                if !inner.warned.swap(true, Ordering::Relaxed) {
                    let first = message.lines().next().unwrap_or_default();
                    warn!(
                        "systemd: cannot send {first} to {}: {e} (said once until a message \
                         gets through)",
                        inner.socket.shown
                    );
                }
            }
        }
    }
}

/// How often `WATCHDOG=1` must be sent, as sd_watchdog_enabled(3) reads
/// the environment: `None` when no watchdog is asked for (no or a zero
/// `WATCHDOG_USEC`), or when `WATCHDOG_PID` names another process (the
/// watchdog is then not this one's). Half of the timeout, as systemd.service(5)
/// advises.
pub fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    me: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id; no watchdog"))?;
        if pid != me {
            return Ok(None);
        }
    }
    let usec: u64 = usec
        .parse()
        .map_err(|_| format!("WATCHDOG_USEC={usec:?} is not a number; no watchdog"))?;
    if usec == 0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_micros(usec) / 2))
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
        let half = |ms| Ok(Some(Duration::from_millis(ms)));
        assert_eq!(watchdog_interval(None, None, me), Ok(None));
        assert_eq!(watchdog_interval(Some("2000000"), None, me), half(1000));
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("4242"), me),
            half(1000)
        );
        // Another process's watchdog (a child that inherited it).
        assert_eq!(watchdog_interval(Some("2000000"), Some("1"), me), Ok(None));
        assert_eq!(watchdog_interval(Some("0"), None, me), Ok(None));
        assert!(watchdog_interval(Some("30s"), None, me).is_err());
        assert!(watchdog_interval(Some("1000"), Some("me"), me).is_err());
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
        let dir = std::env::temp_dir().join(format!("smtp-gate-sm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let manager = ServiceManager::from_values(
            Some(path.clone().into_os_string()),
            Some("3000000".into()),
            None,
            1,
        );
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
        std::fs::remove_dir_all(&dir).unwrap();

        let none = ServiceManager::from_values(None, Some("3000000".into()), None, 1);
        assert!(!none.is_listening());
        assert_eq!(none.watchdog_every(), None);
        none.ready();
        none.status("x");
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
