//! Small system helpers of the flood suite: CPU affinity and scheduling,
//! CPU-time counters (/proc/stat per CPU, /proc/PID/schedstat), process
//! trees, commands with a time limit, and an interrupt flag.

use std::{
    fs, io,
    path::Path,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use testkit::process::{describe, output_within};

/// Set by SIGINT/SIGTERM: every loop of the suite checks it, stops early,
/// and the guards tear everything down on the way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set [`interrupted`] instead of killing the
/// process, so that the namespaces and the MTA are cleaned up.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Moves task `tid` (0: the calling thread) to CPU `cpu`.
pub fn set_affinity(tid: i32, cpu: usize) -> io::Result<()> {
    crate::procs::set_affinity(tid, cpu..cpu + 1)
}

/// Makes task `tid` (0: the calling thread) SCHED_FIFO at `priority`.
pub fn set_fifo(tid: i32, priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time the calling thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One CPU's line of /proc/stat, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq.
    pub busy: f64,
    /// softirq alone.
    pub softirq: f64,
    pub idle: f64,
    /// Time the hypervisor gave to someone else.
    pub steal: f64,
}

impl CpuTimes {
    pub fn read(cpu: usize) -> Result<Self> {
        let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let label = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(label.as_str()))
            .with_context(|| format!("/proc/stat has no {label}"))?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse::<f64>().unwrap_or(0.0))
            .collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
        let hz = crate::procs::clock_ticks_per_sec();
        // user nice system idle iowait irq softirq steal
        Ok(Self {
            busy: (get(0) + get(1) + get(2) + get(5) + get(6)) / hz,
            softirq: get(6) / hz,
            idle: (get(3) + get(4)) / hz,
            steal: get(7) / hz,
        })
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            busy: self.busy - earlier.busy,
            softirq: self.softirq - earlier.softirq,
            idle: self.idle - earlier.idle,
            steal: self.steal - earlier.steal,
        }
    }
}

/// Time task `pid` has run, in ns (first field of /proc/PID/schedstat;
/// exact for a task that is not running at the moment).
pub fn schedstat_ns(pid: i32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fields of /proc/PID/stat after the command name: (ppid, cutime +
/// cstime in seconds).
pub fn ppid_and_children_cpu(pid: i32) -> Option<(i32, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, cutime 16, cstime 17.
    let ppid = f.get(1)?.parse().ok()?;
    let cutime: f64 = f.get(13)?.parse().ok()?;
    let cstime: f64 = f.get(14)?.parse().ok()?;
    Some((
        ppid,
        (cutime + cstime) / crate::procs::clock_ticks_per_sec(),
    ))
}

/// Every process id in /proc.
pub fn all_pids() -> Vec<i32> {
    crate::procs::all_pids()
        .into_iter()
        .map(|pid| pid as i32)
        .collect()
}

/// Process ids whose /proc/PID/comm starts with `prefix` (kernel threads
/// show their full name there on current kernels).
pub fn pids_named(prefix: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().starts_with(prefix))
                .unwrap_or(false)
        })
        .collect()
}

pub fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Runs a command to completion within `timeout`; an error unless it exits 0.
pub fn run_ok(command: &mut Command, timeout: Duration) -> Result<String> {
    let shown = format!("{command:?}");
    let out = output_within(command, timeout).with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", describe(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its standard input, within `timeout`.
pub fn run_with_input(command: &mut Command, input: &str, timeout: Duration) -> Result<Output> {
    use std::io::Write;
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {shown}"))?;
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} still running after {timeout:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
