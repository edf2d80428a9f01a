//! What the endpoint is told: the protocols whose logins grant, the shared
//! secret Dovecot must send (read again on SIGHUP: [`LiveSecret`]), and
//! the limits of a connection.

use std::{
    fmt,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use subtle::ConstantTimeEq;

use crate::policy::config::PolicyHooks;

/// The endpoint's settings.
#[derive(Clone, Debug)]
pub struct DovecotPolicySettings {
    /// Dovecot's protocol names whose successful logins grant (matched
    /// ignoring case); reports of other protocols change nothing.
    pub protocols: Vec<String>,
    /// If set, a request without it is refused (401) and changes nothing.
    /// A reload may put another in its place.
    pub secret: Option<LiveSecret>,
    /// The longest wait for a request's headers, the wait between two
    /// requests of a kept-alive connection included. Longer than
    /// Dovecot's own idle limit (10 s), so Dovecot, not us, closes an
    /// idle connection and never sends on one we are closing.
    pub header_timeout: Duration,
    /// The longest wait for a request's body once its headers came.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    /// Dovecot opens at most 100 per auth process.
    pub max_connections: usize,
}

impl DovecotPolicySettings {
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_CONNECTIONS: usize = 256;

    /// The settings with the default limits.
    pub fn new(protocols: Vec<String>, secret: Option<PolicySecret>) -> Self {
        Self {
            protocols,
            secret: secret.map(LiveSecret::new),
            header_timeout: Self::HEADER_TIMEOUT,
            body_timeout: Self::BODY_TIMEOUT,
            max_connections: Self::MAX_CONNECTIONS,
        }
    }

    /// The settings `serve`'s config gives: `dovecot_policy_protocols`,
    /// and the secret in `dovecot_policy_secret_file` (a file of secrets:
    /// no access for group or others).
    pub fn from_hooks(hooks: &PolicyHooks) -> anyhow::Result<Self> {
        let secret = match &hooks.dovecot_policy_secret_file {
            None => None,
            Some(path) => Some(
                PolicySecret::read(path)
                    .map_err(|why| anyhow::anyhow!("dovecot_policy_secret_file: {why}"))?,
            ),
        };
        Ok(Self::new(hooks.dovecot_policy_protocols.clone(), secret))
    }

    /// True if a successful login over `protocol` grants.
    pub fn grants_for(&self, protocol: &str) -> bool {
        self.protocols
            .iter()
            .any(|enabled| enabled.eq_ignore_ascii_case(protocol))
    }
}

/// The shared secret: Dovecot sends it as `Authorization: Bearer <secret>`
/// (its setting `auth_policy_server_api_header`, see the snippets).
#[derive(Clone)]
pub struct PolicySecret {
    /// The whole header value expected, `Bearer <secret>`.
    expected: Vec<u8>,
}

/// The shortest secret taken.
pub const SHORTEST_SECRET: usize = 16;

impl PolicySecret {
    /// The secret in the file at `path`: a file of secrets (no access for
    /// group or others), holding one token ([`Self::from_file_text`]).
    /// The error says why, naming the file.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = pop3::trusted_file::read(path, pop3::trusted_file::SECRETS)
            .map_err(|e| e.to_string())?;
        Self::from_file_text(&text).map_err(|why| format!("{}: {why}", path.display()))
    }

    /// The secret file's text: one token, a line end after it allowed.
    /// Only RFC 7235's token68 characters (letters, digits, `-._~+/` and
    /// trailing `=`): they stand unquoted in Dovecot's config and in a
    /// header, so base64 or hex output of a random generator fits.
    pub fn from_file_text(text: &str) -> Result<Self, String> {
        let token = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        if token.len() < SHORTEST_SECRET {
            return Err(format!(
                "the secret must be at least {SHORTEST_SECRET} characters \
                 (e.g. `openssl rand -hex 32`)"
            ));
        }
        let body = token.trim_end_matches('=');
        let fine = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !fine {
            return Err(
                "the secret must be one line of letters, digits and -._~+/ (then = allowed at \
                 its end), as `openssl rand -hex 32` or `-base64 32` writes"
                    .into(),
            );
        }
        Ok(Self {
            expected: format!("Bearer {token}").into_bytes(),
        })
    }

    /// True if `header` (the request's `Authorization` value) carries the
    /// secret; compared in constant time.
    pub fn matches(&self, header: Option<&[u8]>) -> bool {
        header.is_some_and(|header| bool::from(header.ct_eq(&self.expected)))
    }
}

/// Two secrets are the same if they expect the same header (compared in
/// constant time, as a request's header is).
impl PartialEq for PolicySecret {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.expected.ct_eq(&other.expected))
    }
}

impl Eq for PolicySecret {}

/// The secret in force, shared by the endpoint and the reload (SIGHUP),
/// which may put another in its place: a request is checked against the
/// secret in force when it comes.
#[derive(Clone, Debug)]
pub struct LiveSecret(Arc<RwLock<PolicySecret>>);

impl LiveSecret {
    pub fn new(secret: PolicySecret) -> Self {
        Self(Arc::new(RwLock::new(secret)))
    }

    /// True if `header` carries the secret in force.
    pub fn matches(&self, header: Option<&[u8]>) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .matches(header)
    }

    /// Puts `new` in force; true if it is another secret than the one in
    /// force was.
    pub fn replace(&self, new: PolicySecret) -> bool {
        let mut current = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *current != new;
        *current = new;
        changed
    }
}

impl fmt::Debug for PolicySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PolicySecret(hidden)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_one_token_line_and_matches_only_its_bearer_header() {
        let secret = PolicySecret::from_file_text("0123456789abcdef0123\n").unwrap();
        assert!(secret.matches(Some(b"Bearer 0123456789abcdef0123")));
        assert!(!secret.matches(Some(b"Bearer 0123456789abcdef012")));
        assert!(!secret.matches(Some(b"Bearer 0123456789abcdef01234")));
        assert!(!secret.matches(Some(b"0123456789abcdef0123")));
        assert!(!secret.matches(None));
        assert!(!format!("{secret:?}").contains("0123"));
        assert!(PolicySecret::from_file_text("c2VjcmV0c2VjcmV0c2VjcmV0\r\n").is_ok());
        assert!(PolicySecret::from_file_text("c2VjcmV0c2VjcmV0c2Vj==").is_ok());
        for bad in [
            "short\n",
            "0123456789abcdef 0123",
            "0123456789abcdef#0123",
            "0123456789abcdef\n\n",
            "================",
        ] {
            assert!(PolicySecret::from_file_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn protocols_match_ignoring_case() {
        let settings = DovecotPolicySettings::new(vec!["pop3".into(), "IMAP".into()], None);
        assert!(settings.grants_for("imap"));
        assert!(settings.grants_for("POP3"));
        assert!(!settings.grants_for("submission"));
        assert!(!settings.grants_for(""));
    }
}
