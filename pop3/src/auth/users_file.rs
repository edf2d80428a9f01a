//! The users file, compatible with Dovecot's passwd-file: one user per line,
//! `user:{SCHEME}secret`, optionally followed by more ':'-separated fields
//! (`uid:gid:gecos:home:shell:extra`), which are ignored here. An existing
//! Dovecot file therefore works unchanged as long as it uses the schemes
//! below, and a file written for us works with Dovecot.
//!
//! Schemes (case-insensitive, as in Dovecot):
//! - `{PLAIN}`, `{CLEARTEXT}`, `{CLEAR}`: plaintext, usable by USER/PASS and
//!   by APOP (which needs the shared secret itself);
//! - `{SHA512-CRYPT}`, and `{CRYPT}` with a `$6$` hash: USER/PASS only;
//! - no prefix and a `$6$` hash: Dovecot's default scheme for passwd-file is
//!   CRYPT, so a bare hash is SHA512-CRYPT.
//!
//! Everything else is refused at load time, every bad line at once, so the
//! daemon never starts with users who silently cannot log in.

use sha2::{Digest, Sha512};
use sha_crypt::{PasswordHashRef, PasswordVerifier, ShaCrypt};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

use super::decoy;
use crate::trusted_file::{self, FileError};

/// A user's secret as stored in the users file.
///
/// `Debug` is written by hand and prints no secret (not even a hash), so a
/// stray `{:?}` in a log line cannot leak one.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A plaintext password (`{PLAIN}`, `{CLEARTEXT}`, `{CLEAR}`).
    Plain(String),
    /// A SHA512-CRYPT hash in its `$6$[rounds=N$]salt$hash` form, checked
    /// for well-formedness at load time.
    Sha512Crypt(String),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(<redacted>)"),
            Secret::Sha512Crypt(_) => f.write_str("Sha512Crypt(<redacted>)"),
        }
    }
}

/// What checking a password against a secret costs: all that a login's
/// timing can tell about the secret. Ordered from cheap to dear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cost {
    /// Plaintext: a SHA-512 of each side, compared in constant time.
    Plain,
    /// SHA512-CRYPT with this many rounds and a salt this long.
    Sha512Crypt { rounds: u32, salt_len: usize },
}

/// As an operator reads it: `PLAIN`, `SHA512-CRYPT (5000 rounds, 16-character salt)`.
impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cost::Plain => f.write_str("PLAIN"),
            Cost::Sha512Crypt { rounds, salt_len } => write!(
                f,
                "SHA512-CRYPT ({rounds} rounds, {salt_len}-character salt)"
            ),
        }
    }
}

/// glibc's rounds when a `$6$` hash names none.
const DEFAULT_SHA512_CRYPT_ROUNDS: u32 = 5000;

impl Secret {
    /// True if `password` (the PASS argument) matches.
    ///
    /// Plaintext is compared as SHA-512 digests, in constant time
    /// (subtle): the time taken tells neither how many leading bytes were
    /// right nor how long the secret is. A hash is verified with
    /// SHA512-crypt, which is slow on purpose (5000 rounds by default): the
    /// server runs this off its async threads.
    #[must_use]
    pub fn verify_password(&self, password: &[u8]) -> bool {
        #[cfg(test)]
        verified::record(self.cost());
        match self {
            Secret::Plain(plain) => {
                let stored = Sha512::digest(plain.as_bytes());
                let given = Sha512::digest(password);
                stored.as_slice().ct_eq(given.as_slice()).into()
            }
            Secret::Sha512Crypt(hash) => ShaCrypt::SHA512
                .verify_password(password, hash.as_str())
                .is_ok(),
        }
    }

    /// What [`Secret::verify_password`] costs for this secret.
    pub fn cost(&self) -> Cost {
        match self {
            Secret::Plain(_) => Cost::Plain,
            Secret::Sha512Crypt(hash) => {
                // The form was checked at load time (`sha512_crypt`):
                // `$6$[rounds=N$]salt$digest`.
                let fields: Vec<&str> = hash.split('$').skip(2).collect();
                let (rounds, salt) = match fields[..] {
                    [rounds, salt, _] => (
                        rounds
                            .strip_prefix("rounds=")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(DEFAULT_SHA512_CRYPT_ROUNDS),
                        salt,
                    ),
                    [salt, ..] => (DEFAULT_SHA512_CRYPT_ROUNDS, salt),
                    [] => (DEFAULT_SHA512_CRYPT_ROUNDS, ""),
                };
                Cost::Sha512Crypt {
                    rounds,
                    salt_len: salt.len(),
                }
            }
        }
    }

    /// A secret that costs `cost` to check and that no password matches
    /// (it is only checked for names that do not exist, and the answer is
    /// "no" whatever it says).
    pub(crate) fn decoy(cost: Cost) -> Secret {
        match cost {
            Cost::Plain => Secret::Plain("decoy: no such user".to_string()),
            Cost::Sha512Crypt { rounds, salt_len } => Secret::Sha512Crypt(format!(
                "$6$rounds={rounds}${}${}",
                "s".repeat(salt_len),
                ".".repeat(86)
            )),
        }
    }

    /// The shared secret for APOP, which only plaintext can provide: APOP
    /// hashes the secret itself with the greeting's timestamp (RFC 1939
    /// section 7), so a user with a crypt hash cannot use APOP.
    pub fn apop_secret(&self) -> Option<&str> {
        match self {
            Secret::Plain(plain) => Some(plain),
            Secret::Sha512Crypt(_) => None,
        }
    }

    /// The scheme name as Dovecot writes it, for logs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Secret::Plain(_) => "PLAIN",
            Secret::Sha512Crypt(_) => "SHA512-CRYPT",
        }
    }
}

/// The users and their secrets, as loaded (at start, and again on
/// SIGHUP).
#[derive(Clone, Debug)]
pub struct UsersFile {
    users: HashMap<String, Secret>,
    /// What a name that does not exist is checked against (decoy.rs).
    decoy: Secret,
}

impl Default for UsersFile {
    fn default() -> Self {
        Self::from_users(HashMap::new())
    }
}

/// What a new users file changes (see [`UsersFile::changes_to`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsersChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Users whose secret is another (a new password, another scheme).
    pub changed: Vec<String>,
}

impl UsersChanges {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Whether a users file's text looks written whole. A file read while an
/// editor or a copy writes it is empty, or stops in a line: perhaps in a
/// `{PLAIN}` password, which would then be a prefix of the real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Ends with a line end.
    Whole,
    /// Nothing but white space (a byte order mark counts as such).
    Empty,
    /// Text whose last line has no line end.
    Unterminated,
}

impl Written {
    pub fn of(text: &str) -> Self {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        if text.trim().is_empty() {
            Self::Empty
        } else if text.ends_with('\n') {
            Self::Whole
        } else {
            Self::Unterminated
        }
    }
}

/// One bad line of a users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based, as editors count.
    pub line: usize,
    /// What is wrong, never including the secret.
    pub reason: String,
}

/// Why a users file was refused. Every message names the file (when loaded
/// from one) and never contains a secret.
#[derive(Debug)]
pub enum UsersFileError {
    /// One or more malformed lines; all of them are listed, so one round of
    /// editing fixes the file.
    Lines {
        /// The file, or None for [`UsersFile::parse`] of a string.
        path: Option<PathBuf>,
        /// Every bad line, in file order.
        errors: Vec<LineError>,
    },
    /// The file itself was refused (its owner, its mode, not a regular
    /// file) or could not be read.
    File(FileError),
}

impl fmt::Display for UsersFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersFileError::Lines { path, errors } => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    match path {
                        Some(path) => {
                            write!(f, "{} line {}: {}", path.display(), e.line, e.reason)?
                        }
                        None => write!(f, "line {}: {}", e.line, e.reason)?,
                    }
                }
                Ok(())
            }
            UsersFileError::File(e) => e.fmt(f),
        }
    }
}

/// The text already ends with the I/O error's, so the error names no
/// source: a chain printer (`anyhow`'s `{:#}`, which the daemon's errors go
/// through) would write that cause twice.
impl std::error::Error for UsersFileError {}

/// Schemes Dovecot knows but we do not verify. Only these names are echoed
/// in errors: an unknown "scheme" may be a password typed between braces.
const OTHER_DOVECOT_SCHEMES: &[&str] = &[
    "ARGON2I",
    "ARGON2ID",
    "BLF-CRYPT",
    "CRAM-MD5",
    "DES-CRYPT",
    "DIGEST-MD5",
    "HMAC-MD5",
    "LANMAN",
    "LDAP-MD5",
    "MD5",
    "MD5-CRYPT",
    "NTLM",
    "OTP",
    "PBKDF2",
    "PLAIN-MD4",
    "PLAIN-MD5",
    "PLAIN-TRUNC",
    "RPA",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "SHA",
    "SHA1",
    "SHA256",
    "SHA256-CRYPT",
    "SHA512",
    "SKEY",
    "SMD5",
    "SSHA",
    "SSHA256",
    "SSHA512",
];

impl UsersFile {
    /// Parses the text of a users file. Errors name lines as "line N"; use
    /// [`UsersFile::load`] to have them name the file too.
    ///
    /// A UTF-8 byte order mark at the start (Windows editors write one) is
    /// not part of the first user's name.
    pub fn parse(text: &str) -> Result<UsersFile, UsersFileError> {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        let mut users = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok((user, secret)) => {
                    if let Some(first) = first_line.get(user) {
                        errors.push(LineError {
                            line: n,
                            reason: format!("duplicate user {user} (first on line {first})"),
                        });
                    } else {
                        first_line.insert(user.to_owned(), n);
                        users.insert(user.to_owned(), secret);
                    }
                }
                Err(reason) => errors.push(LineError { line: n, reason }),
            }
        }
        if errors.is_empty() {
            Ok(UsersFile::from_users(users))
        } else {
            Err(UsersFileError::Lines { path: None, errors })
        }
    }

    /// Reads and parses the users file at `path`.
    ///
    /// Refuses a file that is not a regular file, that root or the
    /// daemon's user does not own, or whose mode lets group or others read
    /// or write it (`mode & 0o077 != 0`): it holds passwords, plaintext
    /// ones for APOP, and Dovecot's documentation asks for the same (see
    /// trusted_file.rs).
    pub fn load(path: &Path) -> Result<UsersFile, UsersFileError> {
        Self::load_as_written(path).map(|(users, _)| users)
    }

    /// [`UsersFile::load`], and whether the text looks written whole.
    pub fn load_as_written(path: &Path) -> Result<(UsersFile, Written), UsersFileError> {
        let text = trusted_file::read(path, trusted_file::SECRETS).map_err(UsersFileError::File)?;
        let users = UsersFile::parse(&text).map_err(|e| match e {
            UsersFileError::Lines { errors, .. } => UsersFileError::Lines {
                path: Some(path.to_path_buf()),
                errors,
            },
            other => other,
        })?;
        Ok((users, Written::of(&text)))
    }

    fn from_users(users: HashMap<String, Secret>) -> Self {
        let decoy = Secret::decoy(decoy::common_cost(users.values()));
        Self { users, decoy }
    }

    /// The secret a name that does not exist is checked against: it costs
    /// what the file's most common secrets cost (see decoy.rs).
    pub fn decoy(&self) -> &Secret {
        &self.decoy
    }

    /// How many users have a secret that costs something else than the
    /// decoy: a login's timing tells that these names exist.
    pub fn users_unlike_the_decoy(&self) -> usize {
        let cost = self.decoy.cost();
        self.users.values().filter(|s| s.cost() != cost).count()
    }

    /// What differs in `new`: the users added, removed, and those whose
    /// secret changed, each sorted by name.
    pub fn changes_to(&self, new: &UsersFile) -> UsersChanges {
        let sorted = |mut names: Vec<String>| {
            names.sort();
            names
        };
        UsersChanges {
            added: sorted(
                new.users
                    .keys()
                    .filter(|name| !self.users.contains_key(*name))
                    .cloned()
                    .collect(),
            ),
            removed: sorted(
                self.users
                    .keys()
                    .filter(|name| !new.users.contains_key(*name))
                    .cloned()
                    .collect(),
            ),
            changed: sorted(
                new.users
                    .iter()
                    .filter(|(name, secret)| {
                        self.users.get(*name).is_some_and(|old| old != *secret)
                    })
                    .map(|(name, _)| name.clone())
                    .collect(),
            ),
        }
    }

    /// The secret of `user`; user names are case-sensitive, as in Dovecot's
    /// passwd-file by default.
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.users.get(user)
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if the file has no users (then nobody can log in).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Parses one non-comment line into the user and the secret. The error
/// string never contains the secret.
fn parse_line(line: &str) -> Result<(&str, Secret), String> {
    let Some((user, rest)) = line.split_once(':') else {
        return Err("no ':' after the user name".into());
    };
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        // A POP3 USER/APOP argument cannot carry these: such a user could
        // never log in, which is surely a typo (e.g. a leading space).
        return Err(format!(
            "user name {user:?} contains whitespace or control characters"
        ));
    }
    // Like Dovecot, the password field ends at the next ':'; the remaining
    // fields (uid, gid, gecos, home, shell, extra) are not ours.
    let field = rest.split(':').next().unwrap_or("");
    parse_secret(field).map(|secret| (user, secret))
}

/// Parses the password field: `{SCHEME}secret` or a bare `$6$` hash.
fn parse_secret(field: &str) -> Result<Secret, String> {
    if field.is_empty() {
        return Err("empty password field".into());
    }
    let Some(after_brace) = field.strip_prefix('{') else {
        return if field.starts_with("$6$") {
            sha512_crypt(field)
        } else {
            Err(
                "password has no {SCHEME} prefix and is not a $6$ (SHA512-CRYPT) hash; write {PLAIN}password for a plaintext one"
                    .into(),
            )
        };
    };
    let Some((scheme, secret)) = after_brace.split_once('}') else {
        return Err("'{' without a closing '}' in the password field".into());
    };
    let upper = scheme.to_ascii_uppercase();
    match upper.as_str() {
        "PLAIN" | "CLEARTEXT" | "CLEAR" => {
            if secret.is_empty() {
                Err(format!("empty password after {{{scheme}}}"))
            } else {
                Ok(Secret::Plain(secret.to_owned()))
            }
        }
        "SHA512-CRYPT" => sha512_crypt(secret),
        "CRYPT" => {
            if secret.starts_with("$6$") {
                sha512_crypt(secret)
            } else {
                Err(
                    "{CRYPT} hash is not a $6$ (SHA512-CRYPT) hash, the only crypt supported"
                        .into(),
                )
            }
        }
        _ => {
            // Dovecot allows an encoding suffix ({PLAIN.BASE64}); we do not.
            let base = upper.split('.').next().unwrap_or("");
            if OTHER_DOVECOT_SCHEMES.contains(&base)
                || ["PLAIN", "CLEARTEXT", "CLEAR", "SHA512-CRYPT", "CRYPT"].contains(&base)
            {
                Err(format!(
                    "unknown scheme {{{scheme}}} (supported: PLAIN, CLEARTEXT, CLEAR, SHA512-CRYPT, CRYPT with a $6$ hash)"
                ))
            } else {
                Err("unknown scheme (its name is not shown in case it is a password typed between braces)".into())
            }
        }
    }
}

/// Checks a SHA512-CRYPT hash, so a malformed one fails at load time with a
/// line number instead of failing every login silently.
///
/// The form is glibc's: `$6$`, optionally `rounds=N$` (glibc writes N
/// clamped to 1000..=999999999, and the verifier rejects anything else),
/// a salt of 1..=16 characters, `$`, and 86 characters of crypt base64.
/// Finally the verifier's own parser must accept it (it allows fewer salt
/// characters than glibc: `[A-Za-z0-9./+=,-]`).
fn sha512_crypt(hash: &str) -> Result<Secret, String> {
    const FORM: &str = "malformed SHA512-CRYPT hash: expected $6$[rounds=N$]salt$ and 86 characters of [./0-9A-Za-z]";
    let rest = hash.strip_prefix("$6$").ok_or(FORM)?;
    let mut fields: Vec<&str> = rest.split('$').collect();
    if fields.len() == 3 {
        let rounds = fields.remove(0);
        let n: u32 = rounds
            .strip_prefix("rounds=")
            .and_then(|n| n.parse().ok())
            .ok_or(FORM)?;
        if !(1000..=999_999_999).contains(&n) {
            return Err(format!(
                "SHA512-CRYPT rounds={n} is outside 1000..=999999999"
            ));
        }
    }
    let [salt, digest] = fields[..] else {
        return Err(FORM.into());
    };
    if salt.is_empty() || salt.len() > 16 {
        return Err("SHA512-CRYPT salt must be 1 to 16 characters".into());
    }
    let crypt64 = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
    if digest.len() != 86 || !digest.bytes().all(crypt64) {
        return Err(FORM.into());
    }
    if PasswordHashRef::new(hash).is_err() {
        return Err(
            "SHA512-CRYPT salt has characters the verifier does not accept (use [A-Za-z0-9./])"
                .into(),
        );
    }
    Ok(Secret::Sha512Crypt(hash.to_owned()))
}

/// The test hook of [`Secret::verify_password`]: the costs of the checks
/// made on this thread, so that tests can see which kind of secret a login
/// was checked against.
#[cfg(test)]
pub(crate) mod verified {
    use super::Cost;
    use std::cell::RefCell;

    thread_local! {
        static COSTS: RefCell<Vec<Cost>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn record(cost: Cost) {
        COSTS.with(|costs| costs.borrow_mut().push(cost));
    }

    /// The costs of the checks that `work` made.
    pub(crate) fn during(work: impl FnOnce()) -> Vec<Cost> {
        COSTS.with(|costs| costs.borrow_mut().clear());
        work();
        COSTS.with(|costs| costs.borrow_mut().drain(..).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SHA512-CRYPT salt has 1 to 16 characters (crypt(3)); a hash with
    /// none or more is refused, not read some other way.
    #[test]
    fn sha512_salts_outside_one_to_sixteen_are_refused() {
        let digest = HELLO_HASH.rsplit('$').next().unwrap();
        for salt in ["", "saltstringsaltst1"] {
            let line = format!("a:{{SHA512-CRYPT}}$6${salt}${digest}\n");
            let err = UsersFile::parse(&line).unwrap_err().to_string();
            assert!(err.contains("salt must be 1 to 16"), "{salt:?}: {err}");
        }
        let sixteen = format!("a:{{SHA512-CRYPT}}$6$saltstringsaltst${digest}\n");
        assert!(UsersFile::parse(&sixteen).is_ok());
    }

    /// A change of any kind makes the changes non-empty: the reload's
    /// summary says "nothing changed" only when nothing did.
    #[test]
    fn changes_are_empty_only_without_any() {
        assert!(UsersChanges::default().is_empty());
        let one = || vec!["alice".to_string()];
        for changes in [
            UsersChanges {
                added: one(),
                ..UsersChanges::default()
            },
            UsersChanges {
                removed: one(),
                ..UsersChanges::default()
            },
            UsersChanges {
                changed: one(),
                ..UsersChanges::default()
            },
        ] {
            assert!(!changes.is_empty(), "{changes:?}");
        }
    }
    use crate::trusted_file::Refusal;
    use std::os::unix::fs::PermissionsExt;

    /// Drepper's SHA-crypt test vector ("Hello world!", salt "saltstring",
    /// 5000 rounds), as glibc writes it (default rounds left implicit).
    const HELLO_HASH: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
    /// The same with explicit rounds.
    const HELLO_HASH_ROUNDS: &str = "$6$rounds=5000$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";
    /// Another vector, 10000 rounds, salt truncated to 16 characters.
    const LONG_SALT_HASH: &str = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.";

    fn lines_of(e: UsersFileError) -> Vec<LineError> {
        match e {
            UsersFileError::Lines { errors, .. } => errors,
            other => panic!("expected line errors, got {other}"),
        }
    }

    fn single_error(text: &str) -> String {
        let errors = lines_of(UsersFile::parse(text).unwrap_err());
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].reason.clone()
    }

    #[test]
    fn parses_plain_schemes_and_ignores_extra_fields() {
        let users = UsersFile::parse(
            "# comment\n\
             \n\
             alice:{PLAIN}wonderland\n\
             bob:{cleartext}builder:1000:1000::/home/bob:/bin/false:userdb_quota=1G\n\
             carol:{Clear}c4r0l::\n   \n  # indented comment\r\n\
             dave:{PLAIN}with spaces and {braces}\r\n",
        )
        .unwrap();
        assert_eq!(users.len(), 4);
        assert!(!users.is_empty());
        assert_eq!(
            users.get("alice").unwrap().apop_secret(),
            Some("wonderland")
        );
        assert_eq!(users.get("bob").unwrap().apop_secret(), Some("builder"));
        assert_eq!(users.get("carol").unwrap().apop_secret(), Some("c4r0l"));
        assert_eq!(
            users.get("dave").unwrap().apop_secret(),
            Some("with spaces and {braces}")
        );
        assert!(users.get("Alice").is_none());
        assert!(users.get("eve").is_none());
    }

    #[test]
    fn plain_verify() {
        let s = Secret::Plain("wonderland".into());
        assert!(s.verify_password(b"wonderland"));
        assert!(!s.verify_password(b"Wonderland"));
        assert!(!s.verify_password(b"wonderlan"));
        assert!(!s.verify_password(b"wonderland "));
        assert!(!s.verify_password(b""));
        assert_eq!(s.scheme(), "PLAIN");
    }

    #[test]
    fn sha512_crypt_forms_and_verify() {
        let text = format!(
            "a:{{SHA512-CRYPT}}{HELLO_HASH}\n\
             b:{{crypt}}{HELLO_HASH_ROUNDS}\n\
             c:{HELLO_HASH}:1000:1000\n\
             d:{{sha512-crypt}}{LONG_SALT_HASH}\n"
        );
        let users = UsersFile::parse(&text).unwrap();
        for user in ["a", "b", "c"] {
            let s = users.get(user).unwrap();
            assert_eq!(s.scheme(), "SHA512-CRYPT");
            assert_eq!(s.apop_secret(), None, "APOP needs plaintext");
            assert!(s.verify_password(b"Hello world!"), "{user}");
            assert!(!s.verify_password(b"Hello world"), "{user}");
            assert!(!s.verify_password(b""), "{user}");
        }
        assert!(users.get("d").unwrap().verify_password(b"Hello world!"));
    }

    #[test]
    fn line_error_messages() {
        assert_eq!(single_error("alice"), "no ':' after the user name");
        assert_eq!(single_error(":{PLAIN}x"), "empty user name");
        assert_eq!(single_error("alice:"), "empty password field");
        assert_eq!(single_error("alice::1000"), "empty password field");
        assert!(single_error("alice:{PLAIN}").contains("empty password"));
        assert!(single_error(" alice:{PLAIN}x").contains("whitespace"));
        assert!(single_error("alice:secret").contains("no {SCHEME} prefix"));
        assert!(single_error("alice:{PLAIN").contains("without a closing"));
        assert!(single_error("alice:{MD5}$1$abc$def").starts_with("unknown scheme {MD5}"));
        assert!(single_error("alice:{plain.b64}eA==").starts_with("unknown scheme {plain.b64}"));
        assert!(single_error("alice:{CRYPT}$1$abc$def").contains("not a $6$"));
        assert!(single_error("alice:{CRYPT}abDEF12345678").contains("not a $6$"));
        assert!(single_error("alice:$6$salt$tooshort").contains("malformed"));
        assert!(single_error("alice:{SHA512-CRYPT}$5$x$y").contains("malformed"));
        let no_salt = format!("alice:$6${}", &HELLO_HASH[14..]);
        assert!(single_error(&no_salt).contains("malformed"), "{no_salt}");
        let empty_salt = format!("alice:$6$${}", &HELLO_HASH[14..]);
        assert!(single_error(&empty_salt).contains("salt"));
        let few_rounds = HELLO_HASH_ROUNDS.replace("rounds=5000", "rounds=999");
        assert!(single_error(&format!("alice:{few_rounds}")).contains("rounds=999"));
        let odd_salt = HELLO_HASH.replace("saltstring", "salt_str");
        assert!(single_error(&format!("alice:{odd_salt}")).contains("salt"));
    }

    #[test]
    fn errors_never_show_the_secret() {
        let text = "a:{hunter2}\n\
                    b:hunter2\n\
                    c:{PLAIN\n\
                    d:{CRYPT}hunter2\n\
                    e:$6$hunter2\n\
                    f:{SHA512-CRYPT}hunter2\n\
                    hunter2\n";
        let e = UsersFile::parse(text).unwrap_err();
        let shown = format!("{e}\n{e:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(lines_of(e).len(), 7);
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "alice:{PLAIN}a\n\
                    bob\n\
                    # fine\n\
                    :{PLAIN}x\n\
                    carol:{MD5}x\n\
                    dave:{PLAIN}d\n\
                    alice:{PLAIN}again\n";
        let e = UsersFile::parse(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: no ':' after the user name\n\
             line 4: empty user name\n\
             line 5: unknown scheme {MD5} (supported: PLAIN, CLEARTEXT, CLEAR, SHA512-CRYPT, CRYPT with a $6$ hash)\n\
             line 7: duplicate user alice (first on line 1)"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let users =
            UsersFile::parse(&format!("alice:{{PLAIN}}topsecret\nbob:{HELLO_HASH}\n")).unwrap();
        let shown = format!("{users:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(!shown.contains("saltstring"), "{shown}");
        assert_eq!(
            format!("{:?}", users.get("alice").unwrap()),
            "Plain(<redacted>)"
        );
        assert_eq!(
            format!("{:?}", users.get("bob").unwrap()),
            "Sha512Crypt(<redacted>)"
        );
    }

    /// Editors on Windows start a UTF-8 file with a byte order mark; it
    /// is not part of the first user's name, who must be able to log in.
    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let users = UsersFile::parse("\u{FEFF}alice:{PLAIN}wonderland\nbob:{PLAIN}b\n").unwrap();
        assert_eq!(users.len(), 2);
        assert!(
            users.get("alice").is_some(),
            "the first user is \"alice\", not \"\\u{{feff}}alice\""
        );
        assert!(users.get("alice").unwrap().verify_password(b"wonderland"));
        let tmp = tempfile::tempdir().unwrap();
        let path = write_file(tmp.path(), 0o600, "\u{FEFF}alice:{PLAIN}a\n");
        assert!(UsersFile::load(&path).unwrap().get("alice").is_some());
        // Only at the start: elsewhere it is a character of a name, and
        // not one a POP3 client can send by mistake.
        let inner = UsersFile::parse("alice:{PLAIN}a\n\u{FEFF}bob:{PLAIN}b\n").unwrap();
        assert!(inner.get("bob").is_none());
    }

    #[test]
    fn changes_name_the_users_added_removed_and_changed() {
        let old = UsersFile::parse("alice:{PLAIN}a\nbob:{PLAIN}b\ncarol:{PLAIN}c\n").unwrap();
        let new =
            UsersFile::parse("bob:{PLAIN}b\ncarol:{PLAIN}new\nerin:{PLAIN}e\ndave:{PLAIN}d\n")
                .unwrap();
        let changes = old.changes_to(&new);
        assert_eq!(
            changes,
            UsersChanges {
                added: vec!["dave".into(), "erin".into()],
                removed: vec!["alice".into()],
                changed: vec!["carol".into()],
            }
        );
        assert!(old.changes_to(&old.clone()).is_empty());
    }

    #[test]
    fn whether_a_file_looks_written_whole() {
        for (text, written) in [
            ("", Written::Empty),
            (" \n\t\r\n", Written::Empty),
            ("\u{FEFF}", Written::Empty),
            ("\u{FEFF}\n", Written::Empty),
            ("# nobody\n", Written::Whole),
            ("alice:{PLAIN}alice\n", Written::Whole),
            ("alice:{PLAIN}alice\r\n", Written::Whole),
            ("alice:{PLAIN}alic", Written::Unterminated),
            ("# nobody", Written::Unterminated),
            ("a:{PLAIN}a\nb:{PLAIN}b \t", Written::Unterminated),
        ] {
            assert_eq!(Written::of(text), written, "{text:?}");
        }
    }

    #[test]
    fn empty_file_has_no_users() {
        let users = UsersFile::parse("# nobody yet\n").unwrap();
        assert!(users.is_empty());
        assert_eq!(users.len(), 0);
    }

    fn write_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let path = dir.join("users.passwd");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn load_accepts_private_file() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            let path = write_file(tmp.path(), mode, "alice:{PLAIN}a\n");
            assert_eq!(UsersFile::load(&path).unwrap().len(), 1);
        }
    }

    #[test]
    fn load_refuses_group_or_other_access() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
            let path = write_file(tmp.path(), mode, "alice:{PLAIN}a\n");
            let e = UsersFile::load(&path).unwrap_err();
            assert!(
                matches!(
                    e,
                    UsersFileError::File(FileError {
                        refusal: Refusal::Permissions { .. },
                        ..
                    })
                ),
                "{mode:o}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains("chmod 600"), "{msg}");
        }
        let path = write_file(tmp.path(), 0o644, "");
        assert_eq!(
            UsersFile::load(&path).unwrap_err().to_string(),
            format!(
                "{} is mode 0644: it holds secrets and must not be readable or writable by group or others (chmod 600)",
                path.display()
            )
        );
    }

    #[test]
    fn load_refuses_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let e = UsersFile::load(tmp.path()).unwrap_err();
        assert!(
            matches!(
                e,
                UsersFileError::File(FileError {
                    refusal: Refusal::NotRegularFile(_),
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn the_error_boxes_as_a_thread_safe_error_that_says_its_cause_once() {
        let tmp = tempfile::tempdir().unwrap();
        let e = UsersFile::load(&tmp.path().join("nope")).unwrap_err();
        let boxed: Box<dyn std::error::Error + Send + Sync + 'static> = Box::new(e);
        assert!(boxed.to_string().contains("(os error 2)"), "{boxed}");
        assert!(boxed.source().is_none(), "the cause is in the text already");
    }

    #[test]
    fn load_names_the_file_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let e = UsersFile::load(&missing).unwrap_err();
        assert!(matches!(
            e,
            UsersFileError::File(FileError {
                refusal: Refusal::Io(_),
                ..
            })
        ));
        assert!(e
            .to_string()
            .starts_with(&format!("cannot read {}", missing.display())));

        let path = write_file(tmp.path(), 0o600, "alice:{PLAIN}a\nbob:{MD5}x\n");
        assert_eq!(
            UsersFile::load(&path).unwrap_err().to_string(),
            format!(
                "{} line 2: unknown scheme {{MD5}} (supported: PLAIN, CLEARTEXT, CLEAR, SHA512-CRYPT, CRYPT with a $6$ hash)",
                path.display()
            )
        );
    }
}
