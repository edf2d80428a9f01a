//! The kernel program's denial lines (aya-log, rate limited in the
//! program), forwarded into the daemon's log.

use anyhow::{anyhow, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya_log::EbpfLogger;
use log::warn;
use tokio::io::unix::AsyncFd;

use crate::gate::PinDir;

/// Starts a task that copies the program's log records to `log`.
pub fn forward(dir: &PinDir, iface: &str) -> Result<()> {
    let link = dir
        .link_for(iface)?
        .ok_or_else(|| anyhow!("no link pinned for {iface}"))?;
    let pinned = PinnedLink::from_pin(&link.path).context("opening the pinned link")?;
    let program_id = FdLink::from(pinned)
        .info()
        .context("reading the link's program")?
        .program_id();
    let logger = EbpfLogger::init_from_id(program_id).context("opening the program's log")?;
    // SAFETY: the logger owns the ring buffer's fd and keeps it open, the
    // same fd, until the AsyncFd (which owns the logger) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("polling the log ring buffer: {e}"))?;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    // aya-log unwraps a record it cannot parse (a program
                    // from another release, say). The panic drops that
                    // record; the rest of the log goes on.
                    let logger = guard.get_inner_mut();
                    let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        logger.flush();
                    }));
                    if flushed.is_err() {
                        warn!("skipped a log record of the gate that could not be read");
                    }
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("the gate's log stopped: {e}");
                    return;
                }
            }
        }
    });
    Ok(())
}
