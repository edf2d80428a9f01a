//! The bus's keys, in `serve`'s and `agent`'s configuration (and as
//! flags): where the engine is, how to log in to it, under which prefix
//! the keys go, and how long a login waits for the engine.
//!
//! The engine's password never goes on a command line (every user of the
//! host sees it in `ps`): in the config file's URL, or in
//! `bus_password_file`.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use pop3::duration;
use serde::Deserialize;

use super::names::{Names, DEFAULT_PREFIX};
pub use super::url::BusUrl;
use crate::keys::KeyError;

/// The stream's length the publishers keep (approximately: `MAXLEN ~`).
pub const DEFAULT_STREAM_LENGTH: u64 = 100_000;
/// How long a login waits for the engine's acknowledgement.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// The bus keys.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BusKeys {
    /// The engine: `redis://[user[:password]@]host[:port][/db]`,
    /// `rediss://...` for TLS, `redis+unix:///path`. Off if absent.
    pub bus: Option<BusUrl>,
    /// A file holding the engine's password (the ACL user's, with the
    /// user in the URL): no access for group or others.
    pub bus_password_file: Option<PathBuf>,
    /// Put before every key, so that several gates share one engine.
    pub bus_prefix: String,
    /// The stream's length kept by the publishers.
    pub bus_stream_length: u64,
    /// How long a login's `+OK` waits for the engine.
    #[serde(with = "duration::text")]
    pub bus_timeout: Duration,
    /// This host's name in the entries it publishes (default: the host
    /// name).
    pub bus_origin: Option<String>,
}

impl Default for BusKeys {
    fn default() -> Self {
        Self {
            bus: None,
            bus_password_file: None,
            bus_prefix: DEFAULT_PREFIX.to_owned(),
            bus_stream_length: DEFAULT_STREAM_LENGTH,
            bus_timeout: DEFAULT_PUBLISH_TIMEOUT,
            bus_origin: None,
        }
    }
}

impl BusKeys {
    /// Refuses what cannot work, naming the key.
    pub fn check(&self) -> Result<(), KeyError> {
        Names::new(&self.bus_prefix).map_err(|e| KeyError::of("bus_prefix", e))?;
        if !(1_000..=100_000_000).contains(&self.bus_stream_length) {
            return Err(KeyError::of(
                "bus_stream_length",
                "1000 to 100000000 entries (an edge that falls further behind reloads the \
                 grants from the keys)",
            ));
        }
        if self.bus_timeout.is_zero() || self.bus_timeout > Duration::from_secs(10) {
            return Err(KeyError::of(
                "bus_timeout",
                "above 0 and at most 10s: the longest the engine may take to answer",
            ));
        }
        if let Some(origin) = &self.bus_origin {
            if origin.is_empty()
                || origin.len() > 255
                || !origin.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(KeyError::of(
                    "bus_origin",
                    "a host name: printable ASCII without spaces, at most 255 octets",
                ));
            }
        }
        if self
            .bus
            .as_ref()
            .is_some_and(BusUrl::skips_certificate_check)
        {
            return Err(KeyError::of(
                "bus",
                "`#insecure` cannot be used: the engine's TLS certificate is always checked \
                 (give the engine a certificate the host trusts, or use redis:// on a trusted \
                 network)",
            ));
        }
        if self.bus.is_none() && self.bus_password_file.is_some() {
            return Err(KeyError::of("bus_password_file", "needs bus"));
        }
        Ok(())
    }

    /// The engine's password from `bus_password_file`, if one is named:
    /// a file of secrets (pop3::trusted_file::SECRETS: no access for
    /// group or others), its one line without the line end. Errors are a
    /// [`KeyError`] of `bus_password_file`. Read at start by every role
    /// (serve, grant, revoke, agent).
    pub fn read_password(&self) -> Result<Option<String>, KeyError> {
        let Some(path) = &self.bus_password_file else {
            return Ok(None);
        };
        let refused = |problem: String| KeyError::of("bus_password_file", problem);
        let text = pop3::trusted_file::read(path, pop3::trusted_file::SECRETS)
            .map_err(|e| refused(e.to_string()))?;
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(refused(format!("{} is empty", path.display())));
        }
        Ok(Some(password.to_owned()))
    }

    /// A config file (`path`) whose bus URL carries a password must be
    /// readable by its owner alone, as the password file must, or the
    /// password is anyone's on the host. Errors are a [`KeyError`] of
    /// `bus`, without the password.
    pub fn check_file_keeps_password(&self, path: &Path) -> Result<(), KeyError> {
        if !self.bus.as_ref().is_some_and(BusUrl::has_password) {
            return Ok(());
        }
        let mode = std::fs::metadata(path)
            .map_err(|e| KeyError::whole(format!("{}: {e}", path.display())))?
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::of(
                "bus",
                format!(
                    "the URL carries a password, but {} is mode {mode:04o}: others may read \
                     it (chmod 600, or give the password in bus_password_file)",
                    path.display()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_tls_is_refused_naming_bus() {
        let keys = BusKeys {
            bus: Some("rediss://engine.example:6380/#insecure".parse().unwrap()),
            ..BusKeys::default()
        };
        let err = keys.check().unwrap_err();
        assert_eq!(err.key.as_deref(), Some("bus"), "{err}");
        assert!(err.problem.contains("certificate"), "{err}");
        let checked = BusKeys {
            bus: Some("rediss://engine.example:6380/".parse().unwrap()),
            ..BusKeys::default()
        };
        assert_eq!(checked.check(), Ok(()));
    }

    #[test]
    fn keys_are_checked_by_name() {
        assert_eq!(BusKeys::default().check(), Ok(()));
        let cases: [(&str, BusKeys); 4] = [
            (
                "bus_prefix",
                BusKeys {
                    bus_prefix: "a b".into(),
                    ..BusKeys::default()
                },
            ),
            (
                "bus_stream_length",
                BusKeys {
                    bus_stream_length: 10,
                    ..BusKeys::default()
                },
            ),
            (
                "bus_timeout",
                BusKeys {
                    bus_timeout: Duration::ZERO,
                    ..BusKeys::default()
                },
            ),
            (
                "bus_password_file",
                BusKeys {
                    bus_password_file: Some("/etc/smtp-gate/bus-password".into()),
                    ..BusKeys::default()
                },
            ),
        ];
        for (key, keys) in cases {
            let err = keys.check().unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{err}");
        }
    }

    /// The one password reader of every role: the file's line without
    /// its end; a file others may read, an empty one, or a missing one is
    /// refused naming `bus_password_file` (and never showing the text).
    #[test]
    fn the_password_file_is_read_under_the_secrets_rule() {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-bus-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        let keys = BusKeys {
            bus: Some("redis://edge@e:6379".parse().unwrap()),
            bus_password_file: Some(file.clone()),
            ..BusKeys::default()
        };
        assert_eq!(BusKeys::default().read_password(), Ok(None));
        for (text, mode, read) in [
            ("s3cret\n", 0o600, Some("s3cret")),
            ("s3cret\r\n", 0o400, Some("s3cret")),
            ("s3cret\n", 0o644, None),
            ("s3cret\n", 0o640, None),
            ("\n", 0o600, None),
        ] {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            match (keys.read_password(), read) {
                (Ok(Some(password)), Some(read)) => assert_eq!(password, read),
                (Err(e), None) => {
                    assert_eq!(e.key.as_deref(), Some("bus_password_file"), "{e}");
                    assert!(!e.problem.contains("s3cret"), "{e}");
                }
                (other, _) => panic!("{text:?} mode {mode:o}: {other:?}"),
            }
        }
        std::fs::remove_file(&file).unwrap();
        let e = keys.read_password().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("bus_password_file"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
