//! What a session did, for the line that sums it up when it ends
//! (`session=<id> end reason=... retr=... dele=...`), in the manner of
//! Dovecot's "Disconnected: Logged out top=0/0, retr=1/1234, del=1/3".

use std::{fmt, net::IpAddr, time::Duration};

use crate::{counters::LoginMethod, log_text::LogText, session_id::SessionId};

/// The counts of one session, kept by the session as it goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The user, once logged in.
    pub user: Option<String>,
    /// Messages sent whole by RETR, and their octets as LIST gives them.
    pub retr: u64,
    pub retr_octets: u64,
    /// Answers to TOP sent whole.
    pub top: u64,
    /// Messages marked deleted when the session ended (or entered UPDATE).
    pub marked: u64,
    /// Messages QUIT's UPDATE removed (unlinked by this session; not the
    /// marks, nor the messages another agent removed first).
    pub removed: u64,
    /// The client sent QUIT.
    pub quit: bool,
    /// Lines that were not a command (unknown, malformed, too long)
    /// before login.
    pub bad_commands: u32,
    /// A login whose maildrop is being opened: the user and the method.
    pub(crate) opening: Option<(String, LoginMethod)>,
}

impl Tally {
    /// The user and method of a login cut while its maildrop was being
    /// opened (sized), if one was.
    pub fn login_in_progress(&self) -> Option<(&str, LoginMethod)> {
        self.opening
            .as_ref()
            .map(|(user, method)| (user.as_str(), *method))
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent QUIT.
    Quit,
    /// The client closed the connection.
    ClientClosed,
    /// The last failed login allowed.
    LoginFailures,
    /// Not logged in within `login_timeout`.
    LoginTimeout,
    /// A command line took longer than `line_timeout`.
    LineTimeout,
    /// No command for `idle_timeout`.
    IdleTimeout,
    /// The client read nothing of a reply for `send_timeout`.
    SendTimeout,
    /// The TLS handshake failed: not TLS, a version or cipher suite we do
    /// not take, or the client left in the middle of it.
    TlsHandshakeFailed,
    /// The TLS handshake did not end within its time limit.
    TlsHandshakeTimeout,
    /// Too many lines that were not commands before login
    /// (`session::MAX_BAD_COMMANDS`).
    BadCommands,
    /// Cut before login to make room for a newcomer.
    Evicted,
    /// Cut when the server's shutdown grace was over.
    Shutdown,
    /// A message could not be read after its `+OK`.
    ReadFailed,
    /// The connection failed (reset, ...).
    IoError,
    /// The session's task was dropped without an end of its own (the
    /// runtime went away under it).
    Abandoned,
}

impl EndReason {
    /// Every reason, in declaration order (a reason's place is `as usize`).
    pub const ALL: [Self; 15] = [
        Self::Quit,
        Self::ClientClosed,
        Self::LoginFailures,
        Self::LoginTimeout,
        Self::LineTimeout,
        Self::IdleTimeout,
        Self::SendTimeout,
        Self::TlsHandshakeFailed,
        Self::TlsHandshakeTimeout,
        Self::BadCommands,
        Self::Evicted,
        Self::Shutdown,
        Self::ReadFailed,
        Self::IoError,
        Self::Abandoned,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::ClientClosed => "client-closed",
            Self::LoginFailures => "login-failures",
            Self::LoginTimeout => "login-timeout",
            Self::LineTimeout => "line-timeout",
            Self::IdleTimeout => "idle-timeout",
            Self::SendTimeout => "send-timeout",
            Self::TlsHandshakeFailed => "tls-handshake-failed",
            Self::TlsHandshakeTimeout => "tls-handshake-timeout",
            Self::BadCommands => "bad-commands",
            Self::Evicted => "evicted",
            Self::Shutdown => "shutdown",
            Self::ReadFailed => "read-failed",
            Self::IoError => "io-error",
            Self::Abandoned => "abandoned",
        }
    }
}

/// The end line of a session, written by [`fmt::Display`].
pub struct Summary<'a> {
    pub id: SessionId,
    pub reason: EndReason,
    pub peer: IpAddr,
    /// The load balancer the client came through, if any.
    pub via: Option<IpAddr>,
    pub tally: &'a Tally,
    /// Octets written to the client, replies and messages.
    pub octets_sent: u64,
    pub duration: Duration,
    /// The TLS version, if the session went over TLS (implicit or STLS).
    pub tls: Option<&'static str>,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.tally;
        write!(
            f,
            "session={} end reason={} addr={}",
            self.id,
            self.reason.name(),
            self.peer
        )?;
        if let Some(via) = self.via {
            write!(f, " via={via}")?;
        }
        if let Some(user) = &t.user {
            write!(f, " user={}", LogText::of(user))?;
        }
        if let Some(version) = self.tls {
            write!(f, " tls={version}")?;
        }
        write!(
            f,
            " retr={}/{} top={} dele={}/{} octets_sent={} duration={:.3}s",
            t.retr,
            t.retr_octets,
            t.top,
            t.marked,
            t.removed,
            self.octets_sent,
            self.duration.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_the_session_first_and_escapes_the_user() {
        let tally = Tally {
            user: Some("al\u{2028}ice".into()),
            retr: 2,
            retr_octets: 1234,
            top: 1,
            marked: 3,
            removed: 2,
            ..Tally::default()
        };
        let line = Summary {
            id: SessionId::from_raw(0xabc),
            reason: EndReason::Quit,
            peer: "192.0.2.7".parse().unwrap(),
            via: None,
            tally: &tally,
            octets_sent: 4321,
            duration: Duration::from_millis(1500),
            tls: Some("TLSv1.3"),
        }
        .to_string();
        assert_eq!(
            line,
            "session=0000000000000abc end reason=quit addr=192.0.2.7 user=al\\u{2028}ice \
             tls=TLSv1.3 retr=2/1234 top=1 dele=3/2 octets_sent=4321 duration=1.500s"
        );
        let anonymous = Tally::default();
        let line = Summary {
            tally: &anonymous,
            reason: EndReason::LoginTimeout,
            id: SessionId::from_raw(1),
            peer: "2001:db8::1".parse().unwrap(),
            via: Some("10.0.0.1".parse().unwrap()),
            octets_sent: 0,
            duration: Duration::ZERO,
            tls: None,
        }
        .to_string();
        assert!(!line.contains("user="), "{line}");
        assert!(!line.contains("tls="), "{line}");
        assert!(
            line.contains("reason=login-timeout addr=2001:db8::1 via=10.0.0.1 retr=0/0"),
            "{line}"
        );
    }
}
