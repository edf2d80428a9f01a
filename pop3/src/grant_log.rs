//! The grant line: one format for every source of grants, so that log
//! filters (fail2ban, journal queries, summaries) can rely on it:
//!
//! ```text
//! grant source=dovecot-policy addr=2001:db8::7 user=bob protocol=imap
//! grant source=cli addr=192.0.2.9 for=1h
//! session=3f9c0e27a1b4d85e grant source=pop3 addr=192.0.2.7 user=alice
//! session=3f9c0e27a1b4d85e grant-failed source=pop3 addr=192.0.2.7 user=alice error=...
//! ```
//!
//! The event word, then `source=` and `addr=` always, then the source's
//! own fields. A POP3 session's line starts with the session's id, as
//! every line about a session does, so a filter matches
//! `grant source=(\S+) addr=(\S+)` anywhere in the line. Values are escaped as [`LogText`] does (no
//! space, line end or look-alike survives), so a field cannot be forged.

use std::{fmt, net::IpAddr};

use crate::log_text::LogText;

/// The log target of grant lines, whatever their source.
pub const GRANT_LOG_TARGET: &str = "smtp_gate::grant";

/// Who made a grant, as the `source=` field names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantSource {
    /// A login to our POP3 service.
    Pop3,
    /// A login Dovecot reported through its auth policy hook.
    DovecotPolicy,
    /// A session Dovecot still holds open (`doveadm who`), kept fresh.
    DovecotSessions,
    /// `smtp-gate grant`.
    Cli,
    /// A grant another host published on the grant bus.
    Bus,
}

impl GrantSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pop3 => "pop3",
            Self::DovecotPolicy => "dovecot-policy",
            Self::DovecotSessions => "dovecot-sessions",
            Self::Cli => "cli",
            Self::Bus => "bus",
        }
    }
}

impl fmt::Display for GrantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A grant line's fields after `source=` and `addr=`.
#[derive(Default)]
pub struct GrantFields<'a> {
    pub user: Option<&'a [u8]>,
    /// The source's own fields, in order (`session`, `protocol`, ...).
    pub extra: &'a [(&'a str, &'a str)],
}

/// `grant source=... addr=... [user=...] [extra...]`.
pub fn grant_line(source: GrantSource, addr: IpAddr, fields: &GrantFields) -> String {
    line("grant", source, addr, fields, None)
}

/// `grant-failed source=... addr=... [user=...] [extra...] error=...`.
pub fn grant_failed_line(
    source: GrantSource,
    addr: IpAddr,
    fields: &GrantFields,
    error: &dyn fmt::Display,
) -> String {
    line("grant-failed", source, addr, fields, Some(error))
}

fn line(
    event: &str,
    source: GrantSource,
    addr: IpAddr,
    fields: &GrantFields,
    error: Option<&dyn fmt::Display>,
) -> String {
    use fmt::Write;
    let mut out = format!("{event} source={source} addr={addr}");
    if let Some(user) = fields.user {
        let _ = write!(out, " user={}", LogText(user));
    }
    for (key, value) in fields.extra {
        let _ = write!(out, " {key}={}", LogText::of(value));
    }
    if let Some(error) = error {
        let _ = write!(out, " error={}", LogText::of(&error.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_event_source_addr_then_the_sources_fields() {
        let addr: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(
            grant_line(
                GrantSource::DovecotPolicy,
                addr,
                &GrantFields {
                    user: Some(b"bob"),
                    extra: &[("protocol", "imap")],
                }
            ),
            "grant source=dovecot-policy addr=2001:db8::7 user=bob protocol=imap"
        );
        assert_eq!(
            grant_line(GrantSource::Cli, addr, &GrantFields::default()),
            "grant source=cli addr=2001:db8::7"
        );
    }

    #[test]
    fn no_value_can_forge_a_field_or_end_the_line() {
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        let line = grant_failed_line(
            GrantSource::Pop3,
            addr,
            &GrantFields {
                user: Some(b"x addr=10.0.0.1\nuser=root"),
                extra: &[("session", "a b")],
            },
            &"map full\nsource=cli",
        );
        assert_eq!(
            line,
            "grant-failed source=pop3 addr=192.0.2.7 user=x\\x20addr=10.0.0.1\\nuser=root \
             session=a\\x20b error=map\\x20full\\nsource=cli"
        );
        assert_eq!(line.split(' ').count(), 6, "{line}");
    }
}
