//! What the POP3 service did since it started, counted for the daemon's
//! metrics page (gate-user's metrics/): logins by method and result,
//! sessions begun and ended (by the end line's reason), TLS handshakes,
//! connections refused for want of a slot.
//!
//! Each count is one relaxed `fetch_add` on an atomic of its own, made
//! on the connection's own path where the log line about the same event
//! is written: no lock, nothing shared but the cache line. A scrape reads
//! them one by one; a count may be a step ahead of another, never wrong.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::session::EndReason;

/// How a client logged in (or tried to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginMethod {
    /// USER, then PASS.
    UserPass,
    Apop,
    /// AUTH PLAIN (RFC 5034, RFC 4616).
    SaslPlain,
}

impl LoginMethod {
    pub const ALL: [Self; 3] = [Self::UserPass, Self::Apop, Self::SaslPlain];

    /// As the login lines name it (`method=USER/PASS`).
    pub fn log_name(self) -> &'static str {
        match self {
            Self::UserPass => "USER/PASS",
            Self::Apop => "APOP",
            Self::SaslPlain => "PLAIN",
        }
    }

    /// As a metric's label names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::UserPass => "user-pass",
            Self::Apop => "apop",
            Self::SaslPlain => "sasl-plain",
        }
    }
}

impl fmt::Display for LoginMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.log_name())
    }
}

/// How a login ended: the login line's `result=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginResult {
    /// Logged in (its grant asked for).
    Ok,
    /// A wrong password or digest, an unknown user, a malformed SASL
    /// response: counted toward a ban.
    Failed,
    /// Right, but another session holds the maildrop.
    InUse,
    /// Right, but the maildrop cannot be one (not a Maildir).
    InvalidMaildrop,
    /// Right, but the maildrop is a symbolic link or alike.
    UnsafeMaildrop,
    /// Right, but the maildrop could not be opened (I/O).
    MaildropError,
    /// Right, but the session was cut while its maildrop opened.
    Cut,
}

impl LoginResult {
    pub const ALL: [Self; 7] = [
        Self::Ok,
        Self::Failed,
        Self::InUse,
        Self::InvalidMaildrop,
        Self::UnsafeMaildrop,
        Self::MaildropError,
        Self::Cut,
    ];

    /// As the login lines (`result=in-use`) and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::InUse => "in-use",
            Self::InvalidMaildrop => "invalid-maildrop",
            Self::UnsafeMaildrop => "unsafe-maildrop",
            Self::MaildropError => "maildrop-error",
            Self::Cut => "cut",
        }
    }
}

/// How a TLS handshake ended (server/: implicit TLS and STLS alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Ok,
    /// Not TLS, a version or cipher suite not offered, the client gone.
    Failed,
    /// Not done within its time (tls.rs `HANDSHAKE_TIMEOUT`).
    TimedOut,
}

impl Handshake {
    pub const ALL: [Self; 3] = [Self::Ok, Self::Failed, Self::TimedOut];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::TimedOut => "timeout",
        }
    }
}

/// Why a connection got no slot (server/slots.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot taken (`max_connections`).
    ServerFull,
    /// The client's network holds its most (`max_connections_per_ip`).
    NetworkFull,
}

impl NoSlot {
    pub const ALL: [Self; 2] = [Self::ServerFull, Self::NetworkFull];

    pub fn name(self) -> &'static str {
        match self {
            Self::ServerFull => "server-full",
            Self::NetworkFull => "network-full",
        }
    }
}

const METHODS: usize = LoginMethod::ALL.len();
const RESULTS: usize = LoginResult::ALL.len();
const REASONS: usize = EndReason::ALL.len();
const HANDSHAKES: usize = Handshake::ALL.len();
const REFUSALS: usize = NoSlot::ALL.len();

/// The service's counts since it started.
#[derive(Debug, Default)]
pub struct Pop3Counters {
    logins: [[AtomicU64; RESULTS]; METHODS],
    sessions_begun: AtomicU64,
    sessions_ended: [AtomicU64; REASONS],
    handshakes: [AtomicU64; HANDSHAKES],
    refused: [AtomicU64; REFUSALS],
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Pop3Counters {
    pub fn login(&self, method: LoginMethod, result: LoginResult) {
        add(&self.logins[method as usize][result as usize]);
    }

    /// A session began: it holds a slot, its end line will follow.
    pub fn session_begun(&self) {
        add(&self.sessions_begun);
    }

    /// A session ended (its end line is written) for `reason`.
    pub fn session_ended(&self, reason: EndReason) {
        add(&self.sessions_ended[reason as usize]);
    }

    pub fn handshake(&self, how: Handshake) {
        add(&self.handshakes[how as usize]);
    }

    pub fn refused(&self, why: NoSlot) {
        add(&self.refused[why as usize]);
    }

    pub fn logins(&self, method: LoginMethod, result: LoginResult) -> u64 {
        get(&self.logins[method as usize][result as usize])
    }

    pub fn sessions_begun(&self) -> u64 {
        get(&self.sessions_begun)
    }

    pub fn sessions_ended(&self, reason: EndReason) -> u64 {
        get(&self.sessions_ended[reason as usize])
    }

    /// Sessions begun and not ended yet: the connections open.
    pub fn sessions_open(&self) -> u64 {
        // The ends first: every session counted ended was counted begun
        // before, so the begun read after cannot be fewer.
        let ended: u64 = self.sessions_ended.iter().map(get).sum();
        self.sessions_begun().saturating_sub(ended)
    }

    pub fn handshakes(&self, how: Handshake) -> u64 {
        get(&self.handshakes[how as usize])
    }

    pub fn refusals(&self, why: NoSlot) -> u64 {
        get(&self.refused[why as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_has_its_own_place() {
        let counters = Pop3Counters::default();
        for (m, method) in LoginMethod::ALL.into_iter().enumerate() {
            for (r, result) in LoginResult::ALL.into_iter().enumerate() {
                for _ in 0..(m * RESULTS + r + 1) {
                    counters.login(method, result);
                }
            }
        }
        for (m, method) in LoginMethod::ALL.into_iter().enumerate() {
            for (r, result) in LoginResult::ALL.into_iter().enumerate() {
                assert_eq!(
                    counters.logins(method, result),
                    (m * RESULTS + r + 1) as u64,
                    "{method:?} {result:?}"
                );
            }
        }
        for (i, reason) in EndReason::ALL.into_iter().enumerate() {
            counters.session_begun();
            counters.session_begun();
            for _ in 0..=i {
                counters.session_ended(reason);
            }
        }
        for (i, reason) in EndReason::ALL.into_iter().enumerate() {
            assert_eq!(counters.sessions_ended(reason), i as u64 + 1, "{reason:?}");
        }
        let begun = 2 * REASONS as u64;
        let ended = (REASONS * (REASONS + 1) / 2) as u64;
        assert_eq!(counters.sessions_begun(), begun);
        assert_eq!(counters.sessions_open(), begun.saturating_sub(ended));
        counters.handshake(Handshake::TimedOut);
        counters.refused(NoSlot::NetworkFull);
        assert_eq!(counters.handshakes(Handshake::TimedOut), 1);
        assert_eq!(counters.handshakes(Handshake::Ok), 0);
        assert_eq!(counters.refusals(NoSlot::NetworkFull), 1);
        assert_eq!(counters.refusals(NoSlot::ServerFull), 0);
    }

    /// A kind's place in the arrays is `as usize`: each list holds every
    /// kind in declaration order.
    #[test]
    fn the_lists_are_in_declaration_order() {
        for (i, x) in LoginMethod::ALL.into_iter().enumerate() {
            assert_eq!(x as usize, i);
        }
        for (i, x) in LoginResult::ALL.into_iter().enumerate() {
            assert_eq!(x as usize, i);
        }
        for (i, x) in EndReason::ALL.into_iter().enumerate() {
            assert_eq!(x as usize, i);
        }
        for (i, x) in Handshake::ALL.into_iter().enumerate() {
            assert_eq!(x as usize, i);
        }
        for (i, x) in NoSlot::ALL.into_iter().enumerate() {
            assert_eq!(x as usize, i);
        }
    }

    #[test]
    fn names_are_the_log_lines_words() {
        assert_eq!(LoginMethod::UserPass.to_string(), "USER/PASS");
        assert_eq!(LoginMethod::SaslPlain.log_name(), "PLAIN");
        assert_eq!(LoginResult::InUse.name(), "in-use");
        assert_eq!(EndReason::ALL.len(), 15);
    }
}
