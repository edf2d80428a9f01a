//! Running commands from the labs and the benchmarks: to completion, with
//! a time limit, or as a check that a tool is installed, and describing
//! how one went for a message.

use std::{
    io::{self, ErrorKind, Read},
    process::{Command, Output},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Exit status, stdout and stderr of a finished command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program ARGS` to completion; panics only if it cannot start.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `program ARGS` and returns its stdout; panics unless it succeeds.
pub(crate) fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    if !out.status.success() {
        panic!("`{program} {}` failed: {}", args.join(" "), describe(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a teardown command; failures are reported, never panicked on.
pub(crate) fn run_quiet(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "lab teardown: `{program} {}` failed: {}",
                args.join(" "),
                describe(&out)
            );
            false
        }
        Err(e) => {
            eprintln!("lab teardown: cannot run {program}: {e}");
            false
        }
    }
}

/// Panics unless `program ARGS` runs and exits 0; `package` is the Debian
/// package to install. Never skips: a missing client is a broken setup.
pub fn require_tool(program: &str, args: &[&str], package: &str) {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} {}` failed (install the Debian package {package}): {}",
            args.join(" "),
            describe(&out)
        ),
        Err(e) => panic!(
            "{program} is needed by the POP3 tests but cannot be run ({e}): \
             install the Debian package {package} (cargo xtask setup does)"
        ),
    }
}

/// Runs `command` to completion, but for at most `timeout`: past it the
/// command is killed and the result is an error of kind `TimedOut`. Stdin
/// is closed; stdout and stderr are collected.
pub fn output_within(command: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stdout.join();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{command:?} still running after {timeout:?}, killed; stderr: {err}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Makes `command` start with a soft RLIMIT_NOFILE of `soft` and a hard
/// one of `hard` (`None`: this process's hard limit); the soft limit is
/// cut to the hard one.
pub fn limit_open_files(command: &mut Command, soft: u64, hard: Option<u64>) {
    use std::os::unix::process::CommandExt;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        panic!("getrlimit: {}", io::Error::last_os_error());
    }
    if let Some(hard) = hard {
        limit.rlim_max = hard.min(limit.rlim_max);
    }
    limit.rlim_cur = soft.min(limit.rlim_max);
    // SAFETY: setrlimit is async-signal-safe and changes only the child.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
