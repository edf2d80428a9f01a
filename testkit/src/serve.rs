//! The `smtp-gate serve` daemon in a lab's server namespace: started,
//! waited for until it answers POP3, stopped with SIGTERM.

use std::{
    fs,
    io::{self, Read, Write},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{
    gate_binary::smtp_gate_bin,
    lab::Lab,
    netns::netns_command,
    process::limit_open_files,
    smtp::{connect, ConnectResult, DENY_TIMEOUT},
};

/// The port `smtp-gate serve` listens on in the labs (its default).
pub const POP3_PORT: u16 = 110;

/// A user other than root for a command, holding only `capabilities`
/// (names as `setpriv` takes them: `bpf`, `net_admin`, ...).
#[derive(Clone, Debug)]
pub struct Unprivileged {
    pub uid: u32,
    pub gid: u32,
    pub capabilities: Vec<&'static str>,
}

impl Unprivileged {
    /// The user `nobody` (65534) with `capabilities`.
    pub fn nobody(capabilities: &[&'static str]) -> Self {
        Self {
            uid: 65534,
            gid: 65534,
            capabilities: capabilities.to_vec(),
        }
    }

    /// `setpriv` arguments that switch to this user, with its
    /// capabilities inheritable and ambient and no others (ambient ones
    /// survive the exec of a program without file capabilities).
    pub fn setpriv_args(&self) -> Vec<String> {
        let caps: String = self.capabilities.iter().map(|c| format!(",+{c}")).collect();
        vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            format!("--inh-caps=-all{caps}"),
            format!("--ambient-caps=-all{caps}"),
        ]
    }
}

/// How long `smtp-gate serve` may take to listen: only a hang takes
/// longer.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the Drop of a [`ServeDaemon`] waits after SIGTERM before SIGKILL.
const SERVE_DROP_GRACE: Duration = Duration::from_secs(15);

/// A `smtp-gate serve` daemon started by [`Lab::spawn_serve`]. Dropping it
/// sends SIGTERM and waits (SIGKILL after 15 s); [`ServeDaemon::terminate`]
/// does the same and reports how it went.
pub struct ServeDaemon {
    child: Option<std::process::Child>,
    log: PathBuf,
    status: Option<std::process::ExitStatus>,
    /// The output pipe of a daemon started with `output_held`, until
    /// [`ServeDaemon::release_output`].
    held: Option<HeldOutput>,
}

/// A full pipe the daemon writes its output to: its first write blocks.
struct HeldOutput {
    read: OwnedFd,
    /// Octets put in beforehand to fill it, not the daemon's.
    filler: usize,
}

impl ServeDaemon {
    /// The daemon's process id (`ip netns exec` execs it: the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the daemon has written so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the daemon has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                    self.child = None;
                }
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the daemon is blocked in write(2) (on its held output,
    /// see [`ServeStart::output_held`]).
    pub fn is_blocked_writing(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|call| call.starts_with(&format!("{} ", libc::SYS_write)))
    }

    /// Lets a daemon started with [`ServeStart::output_held`] write on: its
    /// output goes to its log file from now on.
    pub fn release_output(&mut self) {
        let HeldOutput { read, filler } = self.held.take().expect("the output is held");
        let mut log = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("opening the daemon's log");
        thread::spawn(move || {
            let mut pipe = fs::File::from(read);
            let mut skip = filler;
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    // Every writer gone: the daemon exited.
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let dropped = skip.min(n);
                        skip -= dropped;
                        let _ = log.write_all(&buf[dropped..n]);
                    }
                }
            }
        });
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("the daemon is running");
        // SAFETY: kill has no memory effects; pid is our own child.
        let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` until the log holds `needle` at least `count`
    /// times, and returns the log. Panics, showing the log, if the daemon
    /// exits first or the time runs out.
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= count {
                return log;
            }
            if let Some(status) = self.exited() {
                panic!("smtp-gate serve exited ({status}) before logging {needle:?}:\n{log}");
            }
            if Instant::now() > deadline {
                panic!(
                    "smtp-gate serve did not log {needle:?} {count} time(s) in {timeout:?}:\n{log}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `timeout`: returns the exit status and
    /// how long the daemon took, or `None` (after a SIGKILL) if it did not
    /// exit in time. An already exited daemon reports its status at once.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return (Some(status), Duration::ZERO);
        }
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory effects; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = self.wait_exit(timeout);
        let took = started.elapsed();
        if status.is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        (status, took)
    }
}

impl Drop for ServeDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (status, took) = self.terminate(SERVE_DROP_GRACE);
            match status {
                Some(s) if s.success() => {}
                Some(s) => eprintln!("smtp-gate serve exited with {s} after SIGTERM ({took:?})"),
                None => eprintln!("smtp-gate serve ignored SIGTERM for {took:?}: killed"),
            }
        }
        if thread::panicking() {
            eprintln!("--- smtp-gate serve log ---\n{}---", self.log());
        }
    }
}

/// How a lab starts the daemon, besides its arguments.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeStart<'a> {
    /// Run as this user (see [`Lab::spawn_serve_as`]); root if `None`.
    pub user: Option<&'a Unprivileged>,
    /// The daemon's soft RLIMIT_NOFILE (its hard limit unchanged), e.g.
    /// systemd's default of 1024; this process's if `None`.
    pub soft_open_files: Option<u64>,
    /// The daemon's output goes to a pipe that is full when it starts:
    /// its first line blocks it in write(2) (see
    /// [`ServeDaemon::is_blocked_writing`]) until
    /// [`ServeDaemon::release_output`]. A test can so act on a daemon held
    /// at a known point of its start, without racing it.
    pub output_held: bool,
    /// More environment variables for the daemon (e.g. `NOTIFY_SOCKET`,
    /// or libfaketime's for a host whose clock is off).
    pub env: &'a [(&'a str, &'a str)],
}

impl Lab {
    /// Starts `ip netns exec <server ns> smtp-gate serve ARGS` (exactly these
    /// arguments: pass `--pin-dir` yourself, see [`Lab::serve`]), with its
    /// output going to the file `log`. Returns at once.
    pub fn spawn_serve(&self, args: &[&str], log: &Path) -> ServeDaemon {
        self.spawn_serve_with(ServeStart::default(), args, log)
    }

    /// [`Lab::spawn_serve`], as `user` if one is given: the daemon runs
    /// under `setpriv` with that user's ids and only the capabilities of
    /// `user`, ambient (as the systemd unit starts it).
    pub fn spawn_serve_as(
        &self,
        user: Option<&Unprivileged>,
        args: &[&str],
        log: &Path,
    ) -> ServeDaemon {
        self.spawn_serve_with(
            ServeStart {
                user,
                ..ServeStart::default()
            },
            args,
            log,
        )
    }

    /// [`Lab::spawn_serve`], started as `start` says.
    pub fn spawn_serve_with(
        &self,
        start: ServeStart<'_>,
        args: &[&str],
        log: &Path,
    ) -> ServeDaemon {
        self.spawn_daemon_with(start, "serve", args, log)
    }

    /// Another daemon of the binary (`agent`), started in the server
    /// namespace as [`Lab::spawn_serve_with`] starts `serve`.
    pub fn spawn_daemon_with(
        &self,
        start: ServeStart<'_>,
        subcommand: &str,
        args: &[&str],
        log: &Path,
    ) -> ServeDaemon {
        spawn_daemon_in(&self.server_ns, start, subcommand, args, log)
    }

    /// Waits (at most a minute) until the client reaches `daemon`'s POP3 port
    /// on the server's IPv4 and IPv6 address and reads a greeting. Panics,
    /// showing the daemon's log, if it exits or never listens.
    pub fn wait_pop3(&self, daemon: &mut ServeDaemon) {
        wait_pop3_at(
            daemon,
            &self.client.client_ns,
            &[self.client.server_v4.into(), self.client.server_v6.into()],
        );
    }

    /// `smtp-gate serve --pin-dir <lab pin dir> ARGS`, started and answering
    /// POP3 (see [`Lab::spawn_serve`] and [`Lab::wait_pop3`]).
    pub fn serve(&self, args: &[&str], log: &Path) -> ServeDaemon {
        self.serve_with(ServeStart::default(), args, log)
    }

    /// [`Lab::serve`], as `user` if one is given (see
    /// [`Lab::spawn_serve_as`]).
    pub fn serve_as(&self, user: Option<&Unprivileged>, args: &[&str], log: &Path) -> ServeDaemon {
        self.serve_with(
            ServeStart {
                user,
                ..ServeStart::default()
            },
            args,
            log,
        )
    }

    /// [`Lab::serve`], started as `start` says (see
    /// [`Lab::spawn_serve_with`]).
    pub fn serve_with(&self, start: ServeStart<'_>, args: &[&str], log: &Path) -> ServeDaemon {
        let pin = self.pin_dir_str();
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pin.as_str()]);
        let mut daemon = self.spawn_serve_with(start, &all, log);
        self.wait_pop3(&mut daemon);
        daemon
    }
}

/// `ip netns exec NS smtp-gate SUBCOMMAND ARGS` (exactly these arguments),
/// started as `start` says, its output going to the file `log`. Returns
/// at once. Any lab's daemons ([`Lab`], [`crate::lab::Hosts`]).
pub fn spawn_daemon_in(
    ns: &str,
    start: ServeStart<'_>,
    subcommand: &str,
    args: &[&str],
    log: &Path,
) -> ServeDaemon {
    let file =
        fs::File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let (file, held) = if start.output_held {
        let (write, held) = full_pipe().expect("a full pipe for the daemon's output");
        (fs::File::from(write), Some(held))
    } else {
        (file, None)
    };
    let err_file = file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot duplicate {}: {e}", log.display()));
    let mut command = match start.user {
        None => netns_command(ns, smtp_gate_bin()),
        Some(user) => {
            let mut command = netns_command(ns, "setpriv");
            command.args(user.setpriv_args()).arg(smtp_gate_bin());
            command
        }
    };
    command
        .arg(subcommand)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .envs(start.env.iter().copied());
    if let Some(soft) = start.soft_open_files {
        limit_open_files(&mut command, soft, None);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start smtp-gate {subcommand}: {e}"));
    ServeDaemon {
        child: Some(child),
        log: log.to_path_buf(),
        status: None,
        held,
    }
}

/// Waits (at most a minute) until namespace `from_ns` reaches `daemon`'s
/// POP3 port on each of `addrs` and reads a greeting. Panics, showing the
/// daemon's log, if it exits or never listens.
pub fn wait_pop3_at(daemon: &mut ServeDaemon, from_ns: &str, addrs: &[IpAddr]) {
    let deadline = Instant::now() + SERVE_START_TIMEOUT;
    for &addr in addrs {
        loop {
            if let Some(status) = daemon.exited() {
                panic!(
                    "smtp-gate serve exited ({status}) before listening:\n{}",
                    daemon.log()
                );
            }
            let result = connect(from_ns, addr, POP3_PORT, DENY_TIMEOUT);
            match &result {
                ConnectResult::Connected(greeting) if greeting.starts_with("+OK") => break,
                _ if Instant::now() > deadline => panic!(
                    "smtp-gate serve does not answer on {addr}:{POP3_PORT} after \
                     {SERVE_START_TIMEOUT:?} (last attempt: {result}); its log:\n{}",
                    daemon.log()
                ),
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// A pipe filled to capacity: its write end (blocking) and what fills it.
fn full_pipe() -> io::Result<(OwnedFd, HeldOutput)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let set_nonblocking = |on: bool| {
        // SAFETY: fcntl on an fd we own; no memory is passed.
        let flags = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETFL) };
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set_nonblocking(true)?;
    let mut pipe = fs::File::from(write.try_clone()?);
    let block = [b'#'; 4096];
    let mut filler = 0;
    // Bounded: a pipe holds at most /proc/sys/fs/pipe-max-size (1 MiB).
    for _ in 0..4096 {
        match pipe.write(&block[..]) {
            Ok(n) => filler += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    // Single octets fill what a block did not fit into.
    loop {
        match pipe.write(&block[..1]) {
            Ok(n) => filler += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    set_nonblocking(false)?;
    Ok((write, HeldOutput { read, filler }))
}
