//! The POP3 service of smtp-gate: RFC 1939 with CAPA (RFC 2449) and
//! response codes (RFC 3206), serving Maildirs, authenticating against a
//! Dovecot-style passwd-file, and telling a [`GrantSink`] about every
//! successful login before the `+OK` is written.
//!
//! Layout: `command` parses bytes into commands (no I/O), `framing` cuts the
//! byte stream into lines, `reply` writes responses (CRLF, dot-stuffing),
//! `session` is the state machine, `server` the tokio service; `auth` and
//! `maildrop` are what the session works on.

pub mod auth;
pub mod command;
pub mod config;
pub mod duration;
pub mod framing;
pub mod maildrop;
pub mod reply;
pub mod server;
pub mod session;

use std::net::IpAddr;

/// Where a successful login is reported: the SMTP gate's grant map in the
/// daemon, a fake in tests.
pub trait GrantSink: Send + Sync + 'static {
    /// Grants `addr` (already normalised: IPv4-mapped IPv6 is IPv4).
    /// An error is logged by the caller; the login still succeeds.
    fn grant(&self, addr: IpAddr) -> Result<(), String>;
}

/// A sink that grants nothing (benchmarks measure against it).
pub struct NoGrant;

impl GrantSink for NoGrant {
    fn grant(&self, _addr: IpAddr) -> Result<(), String> {
        Ok(())
    }
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
    fn apop_secret(&self, user: &str) -> ApopSecret;
}

pub use gate_common::normalize_addr;
