//! The Maildir name rules: a file name is `<base>[:<info>]`; the base name
//! is the message's identity (and its UIDL), the info part carries flags
//! that other agents change by renaming.

use crate::host::system_host_name;
use crate::maildrop::is_valid_uid;
use md5::{Digest, Md5};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The Maildir base name: everything before the info separator ':'.
pub(super) fn base_of(name: &[u8]) -> &[u8] {
    match name.iter().position(|&b| b == b':') {
        Some(i) => &name[..i],
        None => name,
    }
}

/// The name a message in `new/` gets in `cur/`: `:2,` appended when it has
/// no info part yet (Dovecot's rule: a name that has one keeps it).
pub(super) fn cur_name(new_name: &OsStr) -> OsString {
    let mut target = new_name.to_os_string();
    if !new_name.as_bytes().contains(&b':') {
        target.push(":2,");
    }
    target
}

/// The UIDL of a base name: the name itself when it is a valid unique-id,
/// otherwise (too long, spaces, 8-bit bytes) its MD5 in hex, which is valid
/// and still stable across sessions.
pub(super) fn uid_for(base: &[u8]) -> String {
    if is_valid_uid(base) {
        base.iter().map(|&b| char::from(b)).collect()
    } else {
        let mut hex = String::with_capacity(32);
        for b in Md5::digest(base) {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }
}

/// Dovecot's `,W=<n>` field of the base name: the message size with CRLF
/// line ends, so LIST needs no read. Parsed like Dovecot's
/// `maildir_filename_get_size`: the first `,W=`, digits, then ',' or the
/// end. Unlike Dovecot, an empty or overflowing number is ignored (the size
/// is then computed) instead of read as 0.
pub(super) fn virtual_size(base: &[u8]) -> Option<u64> {
    let start = base.windows(3).position(|w| w == b",W=")? + 3;
    let tail = &base[start..];
    let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || (digits < tail.len() && tail[digits] != b',') {
        return None;
    }
    std::str::from_utf8(&tail[..digits]).ok()?.parse().ok()
}

/// A fresh, unique base name for `name`, keeping its info part.
pub(super) fn fresh_name(name: &OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // The Maildir naming scheme (time, M microseconds, P pid, Q delivery
    // counter of this process, host) makes the name unique without a check.
    let mut fresh = OsString::from(format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname()
    ));
    let bytes = name.as_bytes();
    if let Some(i) = bytes.iter().position(|&b| b == b':') {
        fresh.push(OsStr::from_bytes(&bytes[i..]));
    }
    fresh
}

/// This host's name for new Maildir file names, with '/' and ':' written as
/// `\057` and `\072` as the Maildir specification asks.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| maildir_host(system_host_name()))
}

/// `name` as a Maildir name's host part.
fn maildir_host(name: &str) -> String {
    let mut host = String::new();
    // Octets outside 0x21..=0x7E are left out, so the lossy UTF-8 of
    // the system's name gives what its raw octets would.
    for &b in name.as_bytes() {
        match b {
            b'/' => host.push_str("\\057"),
            b':' => host.push_str("\\072"),
            0x21..=0x7e => host.push(char::from(b)),
            _ => {}
        }
    }
    if host.is_empty() {
        host.push_str("localhost");
    }
    host
}

#[cfg(test)]
mod tests {
    use super::super::tests::{put, store, uids};
    use super::*;

    #[test]
    fn host_parts_are_escaped_as_the_specification_asks() {
        assert_eq!(maildir_host("mx1.example.org"), "mx1.example.org");
        assert_eq!(maildir_host("a/b:c d\u{e9}"), "a\\057b\\072cd");
        assert_eq!(maildir_host(" \t"), "localhost");
    }

    /// A fresh name keeps the info part (flags) of the old one, names this
    /// host (escaped as the Maildir specification asks) and is unique.
    #[test]
    fn fresh_names_keep_the_info_and_name_this_host() {
        let fresh = fresh_name(OsStr::new("1700000000.M1P1.old:2,S"));
        let fresh = fresh.to_str().unwrap();
        assert!(fresh.ends_with(&format!(".{}:2,S", hostname())), "{fresh}");
        assert_eq!(fresh.matches(':').count(), 1, "{fresh}");
        let without = fresh_name(OsStr::new("1700000000.M1P1.old"));
        assert!(!without.to_str().unwrap().contains(':'), "{without:?}");
        assert_ne!(fresh_name(OsStr::new("a")), fresh_name(OsStr::new("a")));
        let host = hostname();
        assert!(!host.is_empty() && !host.contains(['/', ':']), "{host}");
        let system = system_host_name();
        if system
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'/' && b != b':')
        {
            assert_eq!(host, system);
        }
    }
    use crate::maildrop::{ForSession, MaildropStore};
    use std::fs;

    #[test]
    fn virtual_size_parsing() {
        assert_eq!(virtual_size(b"1.M2P3.h,S=10,W=12"), Some(12));
        assert_eq!(virtual_size(b"1.M2P3.h,W=12,S=10"), Some(12));
        assert_eq!(virtual_size(b"1.M2P3.h,S=10"), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W=1a"), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W="), None);
        assert_eq!(virtual_size(b"1.M2P3.h,W=99999999999999999999999"), None);
    }

    #[test]
    fn uid_is_base_name_and_survives_flag_changes() {
        let (_tmp, store) = store();
        put(&store, "u", "cur", "1700000001.M1P1.host,S=2:2,", b"a\n", 1);
        let first = uids(&*store.open("u", &ForSession::default()).unwrap());
        assert_eq!(first, ["1700000001.M1P1.host,S=2"]);
        let cur = store.root().join("u/cur");
        fs::rename(
            cur.join("1700000001.M1P1.host,S=2:2,"),
            cur.join("1700000001.M1P1.host,S=2:2,RS"),
        )
        .unwrap();
        assert_eq!(
            uids(&*store.open("u", &ForSession::default()).unwrap()),
            first
        );
    }

    #[test]
    fn uid_falls_back_to_md5_hex() {
        let (_tmp, store) = store();
        let long = "x".repeat(71);
        put(&store, "u", "cur", &format!("{long}:2,"), b"a\n", 1);
        // 0x20 is outside the allowed range; the MD5 of this sentence is
        // the well-known test vector.
        let fox = "The quick brown fox jumps over the lazy dog";
        put(&store, "u", "cur", &format!("{fox}:2,S"), b"a\n", 2);
        let seventy = "y".repeat(70);
        put(&store, "u", "cur", &format!("{seventy}:2,"), b"a\n", 3);
        let md = store.open("u", &ForSession::default()).unwrap();
        let got = uids(&*md);
        assert_eq!(got[0], uid_for(long.as_bytes()));
        assert_eq!(got[1], "9e107d9d372bb6826bd81d3542a419d6");
        assert_eq!(got[2], seventy);
        assert_eq!(got[0].len(), 32);
        assert!(got[0]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(uid_for(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
