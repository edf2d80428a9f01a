//! The open-file budget: every session needs file descriptors, and a
//! daemon that runs out of them stops greeting new clients while the
//! listener keeps taking connections into its backlog.
//!
//! systemd starts services with a soft RLIMIT_NOFILE of 1024 (its hard
//! limit is far higher): the daemon raises the soft limit to the hard one
//! at start, then refuses a `max_connections` that cannot fit in it.

use std::io;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::{BadSetting, ServerConfig};

/// File descriptors one session can hold at once: its socket (1), the
/// maildrop's lock file (1) and directory handles (the Maildir, `cur`,
/// `new`: 3), and either, at login, the mail root and a directory being
/// listed (2) or, later, the message being sent (1); one spare. A session
/// that has not logged in holds only its socket.
pub const FDS_PER_SESSION: u64 = 8;

/// File descriptors the daemon holds besides its sessions: standard
/// streams, the async runtime's epoll and wakers, the listeners, the
/// gate's maps, programs and links (several per interface), the log ring
/// buffer, the users file while it is read, and connections being refused
/// or cut (each is held for the moment its `-ERR` takes).
pub const RESERVED_FDS: u64 = 128;

/// Open files `max_connections` sessions need, with the daemon's own.
pub fn needed_for(max_connections: usize) -> u64 {
    (max_connections as u64)
        .saturating_mul(FDS_PER_SESSION)
        .saturating_add(RESERVED_FDS)
}

/// The soft RLIMIT_NOFILE before and after [`raise_soft_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (an unlimited hard
/// limit is taken as the kernel's `nr_open`, the most a process can have).
pub fn raise_soft_limit() -> io::Result<OpenFileLimit> {
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let hard = match limit.maximum {
        Some(hard) => hard,
        None => nr_open()?,
    };
    if before >= hard {
        return Ok(OpenFileLimit {
            before,
            now: before,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("setrlimit: {e}")))?;
    Ok(OpenFileLimit { before, now: hard })
}

/// The soft RLIMIT_NOFILE now.
pub fn soft_limit() -> u64 {
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn nr_open() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/sys/fs/nr_open")?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("fs.nr_open: {e}")))
}

/// Refuses a `max_connections` whose sessions cannot have their files
/// under a soft limit of `limit` open files.
pub fn check_fits(config: &ServerConfig, limit: u64) -> Result<(), BadSetting> {
    let needed = needed_for(config.max_connections);
    if needed <= limit {
        return Ok(());
    }
    let most = limit.saturating_sub(RESERVED_FDS) / FDS_PER_SESSION;
    Err(BadSetting {
        key: "max_connections",
        problem: format!(
            "{} connections need up to {needed} open files ({FDS_PER_SESSION} per session and \
             {RESERVED_FDS} for the daemon), but RLIMIT_NOFILE allows {limit}: set at most {most}, \
             or raise the limit (LimitNOFILE= in the systemd unit)",
            config.max_connections
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft limit one below the hard one goes up to it, and the
    /// second call finds nothing to raise. (This test binary's own limit:
    /// it only ever ends at the hard limit, which nothing here lowers.)
    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        let limit = getrlimit(Resource::Nofile);
        let hard = limit.maximum.unwrap_or_else(|| nr_open().unwrap());
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard - 1),
                maximum: limit.maximum,
            },
        )
        .unwrap();
        assert_eq!(soft_limit(), hard - 1);
        let raised = raise_soft_limit().unwrap();
        assert_eq!((raised.before, raised.now), (hard - 1, hard));
        assert_eq!(soft_limit(), hard);
        let again = raise_soft_limit().unwrap();
        assert_eq!((again.before, again.now), (hard, hard));
    }

    /// fs.nr_open, the ceiling of an unlimited hard limit, as the kernel
    /// has it.
    #[test]
    fn nr_open_is_the_kernels() {
        let text = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap();
        assert_eq!(nr_open().unwrap(), text.trim().parse::<u64>().unwrap());
        assert!(nr_open().unwrap() >= 1024);
    }

    #[test]
    fn max_connections_must_fit_in_the_open_file_limit() {
        let config = ServerConfig {
            max_connections: 1024,
            ..ServerConfig::default()
        };
        assert_eq!(needed_for(1024), 1024 * 8 + 128);
        check_fits(&config, needed_for(1024)).unwrap();
        let bad = check_fits(&config, 1024).unwrap_err();
        assert_eq!(bad.key, "max_connections");
        assert!(
            bad.problem
                .contains("RLIMIT_NOFILE allows 1024: set at most 112"),
            "{bad}"
        );
        assert_eq!(needed_for(usize::MAX), u64::MAX, "no overflow");
    }
}
