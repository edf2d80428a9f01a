//! The listing command, run so that nothing it starts outlives its round.
//!
//! It is started as the leader of a process group of its own: a shell
//! wrapper (`sh -c 'sleep 1000; doveadm ...'`) or a doveadm that forks
//! hands its output pipe to children, and killing the leader alone left
//! them running, one more every interval. On a timeout, an output past
//! the bound, or the daemon stopping, the whole group gets SIGKILL and the
//! leader is reaped. The group is killed only while the leader is not
//! reaped yet: till then its pid (the group's id) cannot be taken by
//! another process, so the signal cannot reach a stranger's group.

use std::{io, process::Stdio, time::Duration};

use anyhow::anyhow;
use nix::{
    sys::signal::{killpg, Signal},
    unistd::Pid,
};
use pop3::log_text::LogText;
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

use super::failure::{numbers_masked, FailureKind, ListingFailure};

/// The bounds of one listing.
#[derive(Clone, Debug)]
pub struct ListingLimits {
    /// The longest one listing may take.
    pub longest: Duration,
    /// The most output a listing may have: far above a host's sessions (a
    /// line is under 100 octets), a bound on what a wedged command can
    /// make us hold. A longer one is refused whole: its last line may
    /// have been cut inside the address (`192.0.2.77` read as `192.0.2.7`).
    pub most_output: usize,
}

impl Default for ListingLimits {
    fn default() -> Self {
        Self {
            longest: Duration::from_secs(30),
            most_output: 64 << 20,
        }
    }
}

/// How much of the command's error output is kept for the warning; the
/// rest is read and dropped, so a chatty command cannot block on a full
/// pipe.
const ERRORS_KEPT: usize = 4096;

/// How long a killed group's leader is waited for. SIGKILL ends it at
/// once unless it is stuck in the kernel (a hung file system): then tokio
/// reaps it whenever it ends, and the next round does not wait for it.
const REAPING_BOUND: Duration = Duration::from_secs(5);

/// Runs `command` and gives its output if it exited with status 0, or
/// None if `stop` came first.
pub async fn run_listing(
    command: &[String],
    limits: &ListingLimits,
    stop: &CancellationToken,
) -> Result<Option<Vec<u8>>, ListingFailure> {
    let cannot_run = |e: io::Error, shown: &str| {
        ListingFailure::new(
            FailureKind::CannotRun(e.kind()),
            anyhow::Error::new(e).context(format!("cannot run `{shown}`")),
        )
    };
    let Some((program, args)) = command.split_first() else {
        let empty = io::Error::new(io::ErrorKind::InvalidInput, "no program");
        return Err(cannot_run(empty, "dovecot_sessions_command (empty)"));
    };
    let shown = command.join(" ");
    let unreadable = |e: io::Error| {
        ListingFailure::new(
            FailureKind::Unreadable,
            anyhow::Error::new(e).context(format!("reading what `{shown}` gave")),
        )
    };
    let mut group =
        ProcessGroup::spawn(Command::new(program).args(args)).map_err(|e| cannot_run(e, &shown))?;
    let (Some(mut stdout), Some(mut stderr)) =
        (group.child.stdout.take(), group.child.stderr.take())
    else {
        return Err(unreadable(io::ErrorKind::BrokenPipe.into()));
    };
    let ended = {
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let read_out = async {
                (&mut stdout)
                    .take(limits.most_output as u64 + 1)
                    .read_to_end(&mut out)
                    .await
                    .map_err(unreadable)?;
                if out.len() > limits.most_output {
                    return Err(ListingFailure::new(
                        FailureKind::TooMuchOutput,
                        anyhow!("`{shown}` printed more than {} octets", limits.most_output),
                    ));
                }
                Ok(())
            };
            let read_err = async {
                keep_first(&mut stderr, ERRORS_KEPT, &mut err)
                    .await
                    .map_err(unreadable)
            };
            // The first failure ends both: a command still writing past
            // the bound would never close its error output either.
            tokio::try_join!(read_out, read_err)?;
            let status = group.child.wait().await.map_err(unreadable)?;
            Ok((status, out, err))
        };
        tokio::select! {
            ended = tokio::time::timeout(limits.longest, run) => Some(ended),
            _ = stop.cancelled() => None,
        }
    };
    group.end().await;
    let Some(ended) = ended else {
        return Ok(None);
    };
    let (status, out, err) = ended.map_err(|_| {
        ListingFailure::new(
            FailureKind::TimedOut,
            anyhow!("`{shown}` took more than {:?}", limits.longest),
        )
    })??;
    if !status.success() {
        let errors = String::from_utf8_lossy(&err);
        let errors = errors.trim();
        return Err(ListingFailure::new(
            FailureKind::Failed {
                status,
                errors: numbers_masked(errors),
            },
            anyhow!("`{shown}` failed ({status}): {}", LogText::of(errors)),
        ));
    }
    Ok(Some(out))
}

/// Reads `reader` to its end, keeping its first `most` octets.
async fn keep_first(
    reader: &mut (impl AsyncRead + Unpin),
    most: usize,
    kept: &mut Vec<u8>,
) -> io::Result<()> {
    let mut chunk = [0; 4096];
    loop {
        let read = reader.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        let room = most.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..read.min(room)]);
    }
}

/// A command leading its own process group; the group is killed when
/// this is dropped with the leader not reaped (the round's future dropped
/// as the daemon's runtime shuts down).
struct ProcessGroup {
    child: Child,
}

impl ProcessGroup {
    fn spawn(command: &mut Command) -> io::Result<Self> {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child })
    }

    fn kill(&self) {
        // id() is None once the leader is reaped (see the module).
        if let Some(leader) = self.child.id() {
            let _ = killpg(Pid::from_raw(leader as i32), Signal::SIGKILL);
        }
    }

    /// Kills what is left of the group and reaps the leader.
    async fn end(&mut self) {
        self.kill();
        let _ = tokio::time::timeout(REAPING_BOUND, self.child.wait()).await;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::dovecot_sessions::test_processes::{
        command_leaving_a_grandchild, ScratchDir, Started, BOUND,
    };

    fn sh(script: &str) -> Vec<String> {
        ["sh", "-c", script].map(String::from).to_vec()
    }

    async fn run(command: &[String], limits: ListingLimits) -> Result<Vec<u8>, ListingFailure> {
        run_listing(command, &limits, &CancellationToken::new())
            .await
            .map(|output| output.expect("not stopped"))
    }

    #[tokio::test]
    async fn a_timeout_kills_the_commands_whole_process_group() {
        let dir = ScratchDir::new("timeout");
        let limits = ListingLimits {
            longest: Duration::from_secs(1),
            ..ListingLimits::default()
        };
        let err = run(&command_leaving_a_grandchild(&dir.0), limits)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("took more than 1s"), "{err:#}");
        assert_eq!(err.kind, FailureKind::TimedOut);
        let started = Started::wait_for(&dir.0);
        assert!(started.leader_reaped(), "the command was not reaped");
        assert!(
            started.grandchild_ends(),
            "the command's child outlived the timeout"
        );
    }

    /// A listing cut at the bound may end inside an address: refused
    /// whole, and at once, not after the command blocks till the timeout.
    #[tokio::test]
    async fn output_past_the_bound_is_refused_whole() {
        let listing = "username\tproto\tpid\tip\na\timap\t1\t192.0.2.77\n";
        let limits = ListingLimits {
            longest: BOUND,
            most_output: listing.len() - 2,
        };
        let printed = sh(&format!(
            "printf '{}'",
            listing.replace('\t', "\\t").replace('\n', "\\n")
        ));
        let err = run(&printed, limits.clone()).await.unwrap_err();
        assert!(format!("{err:#}").contains("printed more than"), "{err:#}");
        let endless = sh("head -c 100000000 /dev/zero");
        let err = run(&endless, limits).await.unwrap_err();
        assert!(format!("{err:#}").contains("printed more than"), "{err:#}");
        assert_eq!(err.kind, FailureKind::TooMuchOutput);
    }

    /// Error output past what is kept is read on: a command writing much
    /// of it must not block on a full pipe until the timeout.
    #[tokio::test]
    async fn much_error_output_does_not_block_the_command() {
        let limits = ListingLimits {
            longest: BOUND,
            ..ListingLimits::default()
        };
        let chatty = sh("head -c 1000000 /dev/zero | tr '\\0' w >&2; echo listed");
        assert_eq!(run(&chatty, limits).await.unwrap(), b"listed\n");
    }
}
