//! The mail servers' hooks: Dovecot reports its logins (dovecot/), Postfix
//! asks whether a client may send (postfix/). Both listen on a loopback
//! TCP port or a Unix socket (listen.rs) inside `smtp-gate serve`, and act
//! on the gate through the two traits below, so each can be tested with
//! no gate at all.

pub mod config;
mod counters;
pub mod dovecot;
pub mod dovecot_sessions;
pub mod listen;
pub(crate) mod log_budget;
pub mod postfix;
pub(crate) mod slots;

use std::{future::Future, net::IpAddr, pin::Pin};

/// A report's grant under way: boxed, so that the reports can be a trait
/// object.
pub type ReportFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// What a Dovecot login report does to the gate.
pub trait LoginReports: Send + Sync + 'static {
    /// `user` logged in to Dovecot over `protocol` (`imap`, `pop3`, as
    /// Dovecot names it) from `addr`: grant the address (log line
    /// `grant source=dovecot-policy ...`). Dovecot's answer waits for it
    /// (so bounded, as a POP3 login's grant). An error means the grant
    /// was not written.
    fn login_succeeded<'a>(
        &'a self,
        addr: IpAddr,
        user: &'a str,
        protocol: &'a str,
    ) -> ReportFuture<'a>;
    /// A failed login: counted toward a ban of the client's network.
    fn login_failed(&self, addr: IpAddr, user: &str);
    /// True if `addr` is banned now (an `allow` request is refused then).
    fn is_banned(&self, addr: IpAddr) -> bool;
}

/// Where a client stands with the gate, as Postfix's policy service asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A fresh grant.
    Granted,
    /// No fresh grant, but in an exempt network.
    Exempt,
    /// Neither: the gate would refuse its SYN.
    Refused,
}

/// The gate's view of a client, read from the same maps the kernel reads.
pub trait GrantLookup: Send + Sync + 'static {
    fn standing(&self, addr: IpAddr) -> anyhow::Result<Standing>;
}
