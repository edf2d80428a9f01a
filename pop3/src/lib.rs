//! The POP3 service of smtp-gate: RFC 1939 with CAPA (RFC 2449) and
//! response codes (RFC 3206), serving Maildirs, authenticating against a
//! Dovecot-style passwd-file, and telling a [`GrantSink`] about every
//! successful login before the `+OK` is written.
//!
//! Layout: `command` parses bytes into commands (no I/O), `framing` cuts the
//! byte stream into lines, `reply` writes responses (CRLF, dot-stuffing),
//! `body` turns a message read in chunks into a response body,
//! `proxy_header` reads a load balancer's PROXY header (no I/O), `session`
//! is the state machine, `server` the tokio service; `auth` and `maildrop`
//! are what the session works on.

pub mod auth;
pub mod body;
pub mod command;
pub mod config;
pub mod counters;
pub mod duration;
pub mod framing;
pub mod grant_log;
pub mod host;
pub mod live_config;
pub mod log_text;
pub mod maildrop;
pub mod network;
pub mod proxy_header;
pub mod reply;
pub mod server;
pub mod session;
pub mod session_id;
pub mod tls;
pub mod trusted_file;

use std::{error::Error, fmt, future::Future, net::IpAddr, pin::Pin};

/// Where a successful login is reported: the SMTP gate's grant map in the
/// daemon (and the grant bus, for the other hosts' gates), a fake in
/// tests.
pub trait GrantSink: Send + Sync + 'static {
    /// Grants `addr` (already normalised: IPv4-mapped IPv6 is IPv4).
    /// The login's `+OK` waits for it, so it must end in a bounded time
    /// whatever it waits for. An error is logged by the caller; the login
    /// still succeeds.
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_>;
}

/// A grant under way: boxed, so that a sink can be a trait object.
pub type GrantFuture<'a> = Pin<Box<dyn Future<Output = Result<Granted, GrantError>> + Send + 'a>>;

/// What a sink says of a grant it made, for the end of the grant line
/// (`bus=ok`): nothing for most sinks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    pub fields: Vec<(&'static str, String)>,
}

impl Granted {
    /// The fields as a grant line takes them.
    pub fn as_extra(&self) -> Vec<(&str, &str)> {
        self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Why a [`GrantSink`] could not grant: the sink's own error, whatever its
/// type, with its chain of causes.
///
/// It stands in for that error: its text is the error's text and its
/// source the error's source, so a chain is written once, not twice.
#[derive(Debug)]
pub struct GrantError(Box<dyn Error + Send + Sync + 'static>);

impl GrantError {
    /// From an error (an `anyhow::Error` too) or from a message.
    pub fn new(cause: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        GrantError(cause.into())
    }
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for GrantError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// A sink that grants nothing (benchmarks measure against it).
pub struct NoGrant;

impl GrantSink for NoGrant {
    fn grant(&self, _addr: IpAddr) -> GrantFuture<'_> {
        Box::pin(std::future::ready(Ok(Granted::default())))
    }
}

/// Where failed logins are reported: the daemon counts them per client
/// network and bans a guesser in the kernel; tests look at them.
pub trait FailureSink: Send + Sync + 'static {
    /// A login from `addr` (normalised) failed, naming `user` as the
    /// client sent it (it may not exist). Called before the failure's
    /// delay: it must not block.
    fn login_failed(&self, addr: IpAddr, user: &str);

    /// Whether `addr` (normalised) is banned now. The kernel drops a
    /// banned client's SYNs; one behind a load balancer connects through
    /// the balancer's address, so the service asks here once the PROXY
    /// header has named it.
    fn is_banned(&self, _addr: IpAddr) -> bool {
        false
    }
}

/// A sink that counts nothing (benchmarks, tests that do not look).
pub struct NoFailureSink;

impl FailureSink for NoFailureSink {
    fn login_failed(&self, _addr: IpAddr, _user: &str) {}
}

/// What APOP can learn about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApopSecret {
    /// The plaintext-equivalent secret the digest is computed with.
    Secret(String),
    /// The user exists but only has a hash: APOP cannot work for them.
    NotPlaintext,
    NoSuchUser,
}

/// Who may log in. `verify_password` may be slow on purpose (crypt
/// hashes): the session runs it off the async worker threads.
pub trait Authenticator: Send + Sync + 'static {
    fn verify_password(&self, user: &str, password: &str) -> bool;
    /// Whether checking a password of `user` hashes (costs CPU time worth
    /// a turn: auth/password_checks.rs). Two names whose checks cost the
    /// same must answer the same, or the queue tells them apart.
    fn check_hashes(&self, user: &str) -> bool;
    fn apop_secret(&self, user: &str) -> ApopSecret;
}

pub use gate_common::normalize_addr;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io;

    /// An error with a cause, as `anyhow`'s context makes them (the
    /// session's tests use it too).
    #[derive(Debug)]
    pub(crate) struct WritingMap(pub(crate) io::Error);

    impl fmt::Display for WritingMap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("writing grants_v4")
        }
    }

    impl Error for WritingMap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn grant_error_stands_in_for_its_cause() {
        let e = GrantError::new(WritingMap(io::Error::from_raw_os_error(1)));
        assert_eq!(e.to_string(), "writing grants_v4");
        let cause = e.source().expect("the cause's cause");
        assert_eq!(
            cause.to_string(),
            io::Error::from_raw_os_error(1).to_string()
        );
        assert!(cause.source().is_none());

        let e = GrantError::new("no grant map");
        assert_eq!(e.to_string(), "no grant map");
        assert!(e.source().is_none());
    }
}
