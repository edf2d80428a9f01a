//! The hooks' keys in `smtp-gate serve`'s configuration: where Dovecot's
//! reports and Postfix's questions are taken, and what they do. Every one
//! of them is off until its address is given.

use std::{path::PathBuf, time::Duration};

use pop3::duration;
use serde::Deserialize;

use super::{listen::PolicyAddr, postfix::PostfixPolicySettings};
use crate::keys::KeyError;

/// Postfix's answer to a client without a grant, unless configured.
pub const DEFAULT_POSTFIX_REJECT: &str =
    "554 5.7.1 Send mail after checking it: log in to POP3 (or IMAP), then send again";

/// The hooks' settings: keys of serve's config file and flags.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PolicyHooks {
    /// Where Dovecot's auth policy requests are taken (HTTP): a loopback
    /// address with its port, or a Unix socket's path. Off if absent.
    pub dovecot_policy_listen: Option<PolicyAddr>,
    /// The Dovecot protocols whose logins grant (Dovecot's names).
    pub dovecot_policy_protocols: Vec<String>,
    /// A file holding the value Dovecot sends in its API header
    /// (`auth_policy_server_api_header`); requests without it are refused.
    pub dovecot_policy_secret_file: Option<PathBuf>,
    /// How often the addresses of Dovecot's open sessions get their grants
    /// renewed (`dovecot_sessions_command`). Off if absent.
    #[serde(with = "duration::optional_text")]
    pub dovecot_sessions_interval: Option<Duration>,
    /// The command listing Dovecot's open sessions as `doveadm -f tab who
    /// -1` does (a header line naming the columns, `ip` among them): a
    /// list, or one string split at spaces.
    #[serde(deserialize_with = "words")]
    pub dovecot_sessions_command: Vec<String>,
    /// Where Postfix's policy delegation requests are taken: a loopback
    /// address with its port, or a Unix socket's path. Off if absent.
    pub postfix_policy_listen: Option<PolicyAddr>,
    /// Postfix's action for a client with a fresh grant.
    pub postfix_policy_granted: String,
    /// Postfix's action for a client with neither grant nor exemption.
    pub postfix_policy_reject: String,
}

impl Default for PolicyHooks {
    fn default() -> Self {
        Self {
            dovecot_policy_listen: None,
            dovecot_policy_protocols: vec!["pop3".into(), "imap".into()],
            dovecot_policy_secret_file: None,
            dovecot_sessions_interval: None,
            dovecot_sessions_command: ["doveadm", "-f", "tab", "who", "-1"]
                .map(String::from)
                .to_vec(),
            postfix_policy_listen: None,
            postfix_policy_granted: "OK".into(),
            postfix_policy_reject: DEFAULT_POSTFIX_REJECT.into(),
        }
    }
}

/// A command as a list of words, or as one string split at spaces.
fn words<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Words {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Words::deserialize(d)? {
        Words::One(line) => line.split_whitespace().map(String::from).collect(),
        Words::Many(words) => words,
    })
}

/// The shortest renewal interval: `doveadm who` asks Dovecot's anvil for
/// every session, not something to run many times a second.
pub const SHORTEST_SESSIONS_INTERVAL: Duration = Duration::from_secs(1);

impl PolicyHooks {
    /// True if any hook listens.
    pub fn listens(&self) -> bool {
        self.dovecot_policy_listen.is_some() || self.postfix_policy_listen.is_some()
    }

    /// The Postfix policy service's settings: the two actions checked as
    /// Postfix will read them (policy/postfix/action.rs), the bounds at
    /// their defaults.
    pub fn postfix_settings(&self) -> Result<PostfixPolicySettings, KeyError> {
        Ok(PostfixPolicySettings {
            granted: self
                .postfix_policy_granted
                .parse()
                .map_err(|e| KeyError::of("postfix_policy_granted", e))?,
            refused: self
                .postfix_policy_reject
                .parse()
                .map_err(|e| KeyError::of("postfix_policy_reject", e))?,
            ..PostfixPolicySettings::default()
        })
    }

    /// What deserves a warning at start though the daemon runs with it:
    /// who can reach a hook beyond the mail servers it is for.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        match (
            &self.dovecot_policy_listen,
            &self.dovecot_policy_secret_file,
        ) {
            (Some(PolicyAddr::Tcp(addr)), None) => warnings.push(format!(
                "dovecot_policy_listen = {addr} takes requests without a secret: any user of \
                 this host can connect to it and grant any address; set \
                 dovecot_policy_secret_file, or listen on a Unix socket"
            )),
            (Some(PolicyAddr::Tcp(addr)), Some(_)) if !addr.ip().is_loopback() => {
                warnings.push(format!(
                    "dovecot_policy_listen = {addr} is reachable from other hosts: the secret \
                     and the users' names cross the network in clear HTTP; use it only on a \
                     network you trust, or keep Dovecot on this host and listen on loopback"
                ));
            }
            _ => {}
        }
        if let Some(PolicyAddr::Tcp(addr)) = &self.postfix_policy_listen {
            if !addr.ip().is_loopback() {
                warnings.push(format!(
                    "postfix_policy_listen = {addr} is reachable from other hosts: whoever \
                     connects learns which addresses hold grants and can write refuse lines \
                     to the log; listen on loopback or a Unix socket unless a firewall keeps \
                     all but your Postfix hosts out"
                ));
            }
        }
        warnings
    }

    /// Refuses what the daemon cannot run with, naming the key.
    pub fn check(&self, window: Option<Duration>) -> Result<(), KeyError> {
        self.postfix_settings()?;
        if let (Some(PolicyAddr::Tcp(addr)), None) = (
            &self.dovecot_policy_listen,
            &self.dovecot_policy_secret_file,
        ) {
            if !addr.ip().is_loopback() {
                return Err(KeyError::of(
                    "dovecot_policy_listen",
                    format!(
                        "{addr} is reachable from other hosts, and without \
                         dovecot_policy_secret_file anyone who reaches it can grant any \
                         address: listen on loopback or a Unix socket, or set the secret"
                    ),
                ));
            }
        }
        for protocol in &self.dovecot_policy_protocols {
            let fine = !protocol.is_empty()
                && protocol.len() <= 32
                && protocol
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !fine {
                return Err(KeyError::of(
                    "dovecot_policy_protocols",
                    format!("`{protocol}` is not a protocol name (e.g. imap, pop3, submission)"),
                ));
            }
        }
        if let Some(interval) = self.dovecot_sessions_interval {
            if self.dovecot_policy_listen.is_none() {
                return Err(KeyError::of(
                    "dovecot_sessions_interval",
                    "needs dovecot_policy_listen: the sessions renewed are Dovecot's, whose \
                     logins come through its policy reports",
                ));
            }
            if interval < SHORTEST_SESSIONS_INTERVAL {
                return Err(KeyError::of(
                    "dovecot_sessions_interval",
                    "at least 1s (each round asks Dovecot for all its sessions)",
                ));
            }
            if let Some(window) = window.filter(|window| interval >= *window) {
                return Err(KeyError::of(
                    "dovecot_sessions_interval",
                    format!(
                        "{} is not shorter than the window ({}): a session's grant would lapse \
                         between two renewals",
                        duration::format_duration(interval),
                        duration::format_duration(window)
                    ),
                ));
            }
            if self.dovecot_sessions_command.is_empty() {
                return Err(KeyError::of(
                    "dovecot_sessions_command",
                    "empty: the program and its arguments are needed",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::postfix::GrantedAction;

    fn listening(dovecot: &str, secret: bool, postfix: &str) -> PolicyHooks {
        PolicyHooks {
            dovecot_policy_listen: Some(dovecot.parse().unwrap()),
            dovecot_policy_secret_file: secret.then(|| "/etc/smtp-gate/dovecot-secret".into()),
            postfix_policy_listen: Some(postfix.parse().unwrap()),
            ..PolicyHooks::default()
        }
    }

    #[test]
    fn a_hook_reachable_from_other_hosts_is_refused_or_warned_of() {
        for wildcard in ["0.0.0.0:10030", "[::]:10030", "192.0.2.1:10030"] {
            let err = listening(wildcard, false, "127.0.0.1:10031")
                .check(None)
                .unwrap_err();
            assert_eq!(err.key.as_deref(), Some("dovecot_policy_listen"), "{err}");
            assert!(err.problem.contains("grant any address"), "{err}");
        }
        let with_secret = listening("0.0.0.0:10030", true, "[::]:10031");
        assert_eq!(with_secret.check(None), Ok(()));
        let warnings = with_secret.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("in clear HTTP"), "{warnings:?}");
        assert!(warnings[1].starts_with("postfix_policy_listen = [::]:10031"));

        let loopback = listening("127.0.0.1:10030", false, "[::1]:10031");
        assert_eq!(loopback.check(None), Ok(()));
        let warnings = loopback.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("any user of this host"),
            "{warnings:?}"
        );

        let quiet = listening("/run/smtp-gate/dovecot", false, "127.0.0.1:10031");
        assert_eq!(quiet.check(None), Ok(()));
        assert_eq!(quiet.warnings(), Vec::<String>::new());
    }

    #[test]
    fn postfix_actions_are_checked_under_their_keys() {
        let hooks = PolicyHooks::default();
        let settings = hooks.postfix_settings().unwrap();
        assert_eq!(settings.granted, GrantedAction::Ok);
        assert_eq!(settings.refused.as_str(), DEFAULT_POSTFIX_REJECT);
        let bad_granted = PolicyHooks {
            postfix_policy_granted: "RELAY".into(),
            ..PolicyHooks::default()
        };
        let err = bad_granted.check(None).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("postfix_policy_granted"), "{err}");
        let bad_reject = PolicyHooks {
            postfix_policy_reject: "554".into(),
            ..PolicyHooks::default()
        };
        let err = bad_reject.check(None).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("postfix_policy_reject"), "{err}");
        assert!(err.problem.contains("reads a bare number as OK"), "{err}");
    }
}
