//! The bus's keys, in `serve`'s and `agent`'s configuration (and as
//! flags): where the engine is, how to log in to it, under which prefix
//! the keys go, and how long a login waits for the engine.
//!
//! The engine's password never goes on a command line (every user of the
//! host sees it in `ps`): in the config file's URL, or in
//! `bus_password_file`.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use pop3::duration;
use serde::{Deserialize, Deserializer};

use super::names::{Names, DEFAULT_PREFIX};
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

/// The engine's URL. Shown (Display, Debug) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct BusUrl(String);

impl BusUrl {
    /// The URL as given, password included: for the client only.
    pub fn secret_text(&self) -> &str {
        &self.0
    }

    /// True if the URL asks the client not to check the engine's TLS
    /// certificate (`rediss://host/#insecure`): the client is built
    /// without that mode, so it would fail only at connect.
    pub fn skips_certificate_check(&self) -> bool {
        redis::parse_redis_url(&self.0).is_some_and(|url| {
            matches!(url.scheme(), "rediss" | "valkeys") && url.fragment() == Some("insecure")
        })
    }

    /// True if the URL carries a password (refused from a flag): in the
    /// user info (`redis://user:password@host`, `redis://:password@host`)
    /// or in the query, where the redis crate (0.32) reads it for unix
    /// sockets (`redis+unix:///path?user=u&pass=password`; `password=`
    /// is counted too, as a later crate may read it).
    pub fn has_password(&self) -> bool {
        split_userinfo(&self.0).is_some_and(|(user, _)| user.contains(':'))
            || query_pairs(&self.0).any(|(key, _)| is_password_key(key))
    }
}

/// The authority of `scheme://authority/...`: up to the first `/`, `?`
/// or `#` after the scheme.
fn authority_end(after_scheme: &str) -> usize {
    after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len())
}

/// `(userinfo, rest)` of `scheme://userinfo@rest`.
fn split_userinfo(url: &str) -> Option<(&str, &str)> {
    let (_, after_scheme) = url.split_once("://")?;
    let authority = &after_scheme[..authority_end(after_scheme)];
    let at = authority.rfind('@')?;
    Some((&authority[..at], &after_scheme[at + 1..]))
}

/// The query of the URL (between `?` and `#`), as raw `(key, value)`
/// pairs.
fn query_pairs(url: &str) -> impl Iterator<Item = (&str, &str)> {
    let query = url
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(""))
        .unwrap_or("");
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A query key the client takes as the password, once decoded as the
/// client decodes it (form encoding: `%70ass` and `pa+ss` spellings).
fn is_password_key(raw: &str) -> bool {
    let key = decode_form(raw);
    key == "pass" || key == "password"
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX`
/// an octet), as `url::Url::query_pairs` does.
fn decode_form(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromStr for BusUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
            return Err(format!(
                "`{}` is not a redis://, rediss:// or redis+unix:// URL",
                BusUrl(text.to_owned())
            ));
        }
        redis::parse_redis_url(text)
            .ok_or_else(|| format!("`{}` is not a URL", BusUrl(text.to_owned())))?;
        redis::IntoConnectionInfo::into_connection_info(text)
            .map_err(|e| format!("`{}`: {e}", BusUrl(text.to_owned())))?;
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for BusUrl {
    /// The URL with every password replaced by `***`: the user info's
    /// and the query's (`pass`, `password`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.as_str();
        let (head, query_and_fragment) = match text.split_once('?') {
            Some((head, tail)) => (head, Some(tail)),
            None => (text, None),
        };
        match split_userinfo(head) {
            Some((userinfo, rest)) if userinfo.contains(':') => {
                let (scheme, _) = head.split_once("://").unwrap_or(("", ""));
                let user = userinfo.split(':').next().unwrap_or("");
                write!(f, "{scheme}://{user}:***@{rest}")?;
            }
            _ => f.write_str(head)?,
        }
        let Some(tail) = query_and_fragment else {
            return Ok(());
        };
        let (query, fragment) = match tail.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (tail, None),
        };
        f.write_str("?")?;
        for (n, pair) in query.split('&').enumerate() {
            if n > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((key, _)) if is_password_key(key) => write!(f, "{key}=***")?,
                _ => f.write_str(pair)?,
            }
        }
        if let Some(fragment) = fragment {
            write!(f, "#{fragment}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusUrl({self})")
    }
}

impl<'de> Deserialize<'de> for BusUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for BusUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let url: BusUrl = "redis://gate:s3cret@10.0.0.5:6379/2".parse().unwrap();
        assert!(url.has_password());
        assert_eq!(url.to_string(), "redis://gate:***@10.0.0.5:6379/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.secret_text(), "redis://gate:s3cret@10.0.0.5:6379/2");
        let plain: BusUrl = "rediss://gate@engine.example:6380".parse().unwrap();
        assert!(!plain.has_password());
        assert_eq!(plain.to_string(), "rediss://gate@engine.example:6380");
        assert!("redis+unix:///run/redis/redis.sock"
            .parse::<BusUrl>()
            .is_ok());
    }

    /// Every form in which the redis crate (0.32) takes a password: the
    /// user info, with or without a user, and `pass=` in a unix URL's
    /// query (any spelling the form decoding reads as `pass`; `password=`
    /// counted too). Each is seen, and never shown.
    #[test]
    fn every_form_of_password_is_seen_and_masked() {
        for (text, shown) in [
            (
                "redis://:S3cret@10.0.0.5:6379",
                "redis://:***@10.0.0.5:6379",
            ),
            (
                "rediss://edge:S3cret@engine.example:6380/1",
                "rediss://edge:***@engine.example:6380/1",
            ),
            (
                "redis+unix:///run/r.sock?user=edge&pass=S3cret",
                "redis+unix:///run/r.sock?user=edge&pass=***",
            ),
            (
                "unix:///run/r.sock?pass=S3cret&db=2",
                "unix:///run/r.sock?pass=***&db=2",
            ),
            (
                "redis+unix:///run/r.sock?password=S3cret",
                "redis+unix:///run/r.sock?password=***",
            ),
            (
                "redis+unix:///run/r.sock?%70ass=S3cret",
                "redis+unix:///run/r.sock?%70ass=***",
            ),
            (
                "redis+unix:///run/r.sock?pass=x&pass=S3cret",
                "redis+unix:///run/r.sock?pass=***&pass=***",
            ),
        ] {
            let url: BusUrl = text.parse().unwrap();
            assert!(url.has_password(), "{text}");
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("S3cret"), "{text}");
            assert!(
                !serde_json::to_string(&url).unwrap().contains("S3cret"),
                "{text}"
            );
            assert_eq!(url.secret_text(), text);
        }
        // The crate takes the unix password from `pass=`: the check
        // follows it.
        let info = redis::IntoConnectionInfo::into_connection_info(
            "redis+unix:///run/r.sock?user=edge&pass=S3cret",
        )
        .unwrap();
        assert_eq!(info.redis.password.as_deref(), Some("S3cret"));
        for plain in [
            "redis+unix:///run/r.sock?user=edge&db=2",
            "redis://edge@10.0.0.5:6379",
            "redis://10.0.0.5:6379/?protocol=3",
        ] {
            let url: BusUrl = plain.parse().unwrap();
            assert!(!url.has_password(), "{plain}");
            assert_eq!(url.to_string(), plain);
        }
    }

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
    fn other_schemes_and_bad_urls_are_refused_without_showing_a_password() {
        for bad in ["http://x:pw@host", "host:6379", "", "redis://"] {
            let err = bad.parse::<BusUrl>().unwrap_err();
            assert!(!err.contains(":pw@"), "{err}");
        }
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
