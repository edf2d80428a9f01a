//! A listing's failure and its kind. The renewer warns when the kind
//! changes (a "not found" fixed into an "exit status 75" is news) and
//! logs a repeat of the same kind at debug only, so a listing failing
//! every interval does not fill the log.

use std::{fmt, io, process::ExitStatus};

/// What went wrong, as far as telling one failure from another goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The command could not be started (no such file, no permission).
    CannotRun(io::ErrorKind),
    TimedOut,
    TooMuchOutput,
    /// Its output or status could not be read.
    Unreadable,
    /// It ended with another status than 0. Its error output is part of
    /// the kind with every number in it made `#`: a new message is news,
    /// a new pid or time in the same message is not.
    Failed {
        status: ExitStatus,
        errors: String,
    },
    /// Its output is not a `doveadm -f tab who -1` listing.
    NotAListing,
}

/// A failed listing: its kind, and the error that says it in full.
#[derive(Debug)]
pub struct ListingFailure {
    pub kind: FailureKind,
    pub error: anyhow::Error,
}

impl ListingFailure {
    pub fn new(kind: FailureKind, error: impl Into<anyhow::Error>) -> Self {
        Self {
            kind,
            error: error.into(),
        }
    }
}

impl fmt::Display for ListingFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// `text` with each run of ASCII digits made one `#`.
pub fn numbers_masked(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                masked.push('#');
            }
            in_number = true;
        } else {
            masked.push(c);
            in_number = false;
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn failed(code: i32, errors: &str) -> FailureKind {
        FailureKind::Failed {
            status: ExitStatus::from_raw(code << 8),
            errors: numbers_masked(errors),
        }
    }

    #[test]
    fn a_failure_is_another_by_its_status_or_message_not_its_numbers() {
        let down = "doveadm(2853): Error: net_connect_unix(/run/dovecot/anvil) failed: \
                    Connection refused (after 0.001 secs)";
        let down_later = "doveadm(7001): Error: net_connect_unix(/run/dovecot/anvil) failed: \
                          Connection refused (after 0.013 secs)";
        let denied = "doveadm(2853): Error: net_connect_unix(/run/dovecot/anvil) failed: \
                      Permission denied";
        assert_eq!(failed(75, down), failed(75, down_later));
        assert_ne!(failed(75, down), failed(75, denied));
        assert_ne!(failed(75, down), failed(89, down));
        assert_eq!(numbers_masked("pid 12, 3.45s"), "pid #, #.#s");
    }
}
