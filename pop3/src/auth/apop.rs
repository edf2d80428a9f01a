//! APOP (RFC 1939 section 7): the greeting's timestamp and the digest check.
//!
//! APOP keeps the password off the wire, but it needs the plaintext secret
//! on the server, and MD5 of a known timestamp plus the secret is cheap to
//! brute-force from a captured exchange. It is offered because old clients
//! use it; TLS with USER/PASS is the better choice where available.

use md5::{Digest, Md5};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Octets of randomness in a timestamp: 128 bits, so that two greetings
/// never share one (RFC 1939 section 7 requires a new timestamp for every
/// greeting) and none can be guessed before it is sent.
const RANDOM_OCTETS: usize = 16;

/// Hands out the greeting timestamps.
///
/// RFC 1939 section 7: "The syntax of the timestamp corresponds to the
/// 'msg-id' in [RFC822], and MUST be different each time the POP3 server
/// issues a banner greeting". Its example, `<process-ID.clock@hostname>`,
/// tells every client the server's PID, how many connections it has had
/// and its clock to the nanosecond. A timestamp here is 128 random bits
/// from the kernel's CSPRNG (getrandom), in hex: unique per greeting and
/// telling nothing but the host name.
#[derive(Debug)]
pub struct TimestampSource {
    hostname: String,
    /// Greetings given: only for the fallback below.
    counter: AtomicU64,
}

impl TimestampSource {
    /// A source for timestamps ending in `@hostname`.
    ///
    /// The timestamp is sent verbatim in the greeting line, so the host name
    /// is reduced to letters, digits, '.', '-' and '_' (anything else
    /// becomes '-'): a CR, LF, space or '>' would break the line or the
    /// msg-id syntax that clients parse to find the timestamp. An empty name
    /// becomes "localhost".
    pub fn new(hostname: impl Into<String>) -> Self {
        let raw: String = hostname.into();
        let mut clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if clean.is_empty() {
            clean.push_str("localhost");
        }
        TimestampSource {
            hostname: clean,
            counter: AtomicU64::new(0),
        }
    }

    /// The host name as it appears in the timestamps.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// A fresh timestamp, `<32 hex digits@hostname>`. Safe to call from
    /// many tasks.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut random = [0u8; RANDOM_OCTETS];
        if let Err(e) = getrandom::fill(&mut random) {
            // getrandom(2) does not fail once the kernel's pool is ready
            // (it blocks until then); should it, the timestamp must still
            // be unique and tell nothing: a digest of what makes it unique.
            log::error!("no random octets for the APOP timestamp: {e}");
            random = Md5::new()
                .chain_update(std::process::id().to_le_bytes())
                .chain_update(n.to_le_bytes())
                .chain_update(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0)
                        .to_le_bytes(),
                )
                .finalize()
                .into();
        }
        format!("<{}@{}>", hex(&random), self.hostname)
    }
}

fn hex(octets: &[u8]) -> String {
    let mut hex = String::with_capacity(octets.len() * 2);
    for b in octets {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The APOP digest: lowercase hex MD5 of the timestamp followed by the
/// secret.
///
/// RFC 1939 section 7: "The 'digest' parameter is calculated by applying
/// the MD5 algorithm [RFC1321] to a string consisting of the timestamp
/// (including angle-brackets) followed by a shared secret. ... The 'digest'
/// parameter itself is a 16-octet value which is sent in hexadecimal
/// format, using lower-case ASCII characters."
#[must_use]
pub fn digest(timestamp: &str, secret: &str) -> String {
    hex(&raw_digest(timestamp, secret))
}

/// True if `client_digest` (the APOP argument) is the digest of `timestamp`
/// and `secret`.
///
/// The RFC says lower-case, but upper-case hex carries the same 16 octets,
/// so it is accepted too. Anything but 32 hex digits is false. The decoded
/// octets are compared with the expected ones in constant time (subtle), so
/// timing does not tell an attacker how much of a guess was right.
#[must_use]
pub fn verify(timestamp: &str, secret: &str, client_digest: &str) -> bool {
    let Some(client) = decode_hex16(client_digest) else {
        return false;
    };
    let expected = raw_digest(timestamp, secret);
    expected.as_slice().ct_eq(&client).into()
}

fn raw_digest(timestamp: &str, secret: &str) -> [u8; 16] {
    Md5::new()
        .chain_update(timestamp.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

/// Decodes exactly 32 hex digits (either case).
fn decode_hex16(s: &str) -> Option<[u8; 16]> {
    let bytes = s.as_bytes();
    if bytes.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    // RFC 1939 section 7, the APOP example.
    const TS: &str = "<1896.697170952@dbc.mtview.ca.us>";
    const SECRET: &str = "tanstaaf";
    const DIGEST: &str = "c4c9334bac560ecc979e58001b3e22fb";

    #[test]
    fn rfc1939_example_digest() {
        assert_eq!(digest(TS, SECRET), DIGEST);
    }

    #[test]
    fn verify_accepts_the_right_digest_in_either_case() {
        assert!(verify(TS, SECRET, DIGEST));
        assert!(verify(TS, SECRET, &DIGEST.to_ascii_uppercase()));
        assert!(verify(TS, SECRET, "C4c9334BAC560ecc979e58001b3e22fB"));
    }

    #[test]
    fn verify_rejects_wrong_digests() {
        assert!(!verify(TS, "tanstaafl", DIGEST));
        assert!(!verify("<1896.697170953@dbc.mtview.ca.us>", SECRET, DIGEST));
        // Wrong length, either way.
        assert!(!verify(TS, SECRET, &DIGEST[..31]));
        assert!(!verify(TS, SECRET, &format!("{DIGEST}0")));
        assert!(!verify(TS, SECRET, ""));
        // Not hex.
        assert!(!verify(TS, SECRET, &DIGEST.replace('c', "g")));
        assert!(!verify(TS, SECRET, "+4c9334bac560ecc979e58001b3e22fb"));
        // A one-digit change.
        assert!(!verify(TS, SECRET, "c4c9334bac560ecc979e58001b3e22fc"));
        // 32 characters, but not all ASCII: must not panic on a char boundary.
        assert!(!verify(TS, SECRET, "é4c9334bac560ecc979e58001b3e22f"));
    }

    #[test]
    fn timestamps_have_the_rfc_shape() {
        let src = TimestampSource::new("pop.example.org");
        let ts = src.next();
        assert!(
            ts.starts_with('<') && ts.ends_with("@pop.example.org>"),
            "{ts}"
        );
        let local = &ts[1..ts.find('@').unwrap()];
        assert_eq!(local.len(), 32, "{ts}");
        assert!(
            local
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{ts}"
        );
        // It round-trips through APOP.
        assert!(verify(&ts, SECRET, &digest(&ts, SECRET)));
    }

    /// The timestamp tells nothing: no field of it is the PID, a counter
    /// or a clock. Any of those keeps digits fixed from one greeting to the
    /// next (the PID all of them, a counter or a clock the leading ones);
    /// random hex takes every value at every position. Over 2000 greetings
    /// a position that takes fewer than 12 of the 16 digits is not random
    /// (the chance of that for random digits is below 10^-1000).
    #[test]
    fn timestamps_reveal_no_pid_counter_or_clock() {
        let src = TimestampSource::new("h");
        let all: Vec<String> = (0..2000).map(|_| src.next()).collect();
        let pid = std::process::id().to_string();
        for ts in &all {
            let local = &ts[1..ts.find('@').unwrap()];
            assert!(
                !local.split(['.', '-']).any(|field| field == pid),
                "{ts} has the PID {pid} as a field"
            );
            assert!(!local.contains('.'), "{ts}: fields are a sign of structure");
        }
        for position in 0..32 {
            let digits: HashSet<u8> = all.iter().map(|ts| ts.as_bytes()[1 + position]).collect();
            assert!(
                digits.len() >= 12,
                "hex digit {position} took only {} values in 2000 timestamps: {:?}",
                digits.len(),
                &all[..3]
            );
        }
    }

    #[test]
    fn timestamps_are_unique_across_threads() {
        let src = Arc::new(TimestampSource::new("h"));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let src = Arc::clone(&src);
                std::thread::spawn(move || (0..2500).map(|_| src.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            for ts in t.join().unwrap() {
                assert!(all.insert(ts));
            }
        }
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn hostname_cannot_break_the_greeting() {
        let src = TimestampSource::new("evil>\r\n+OK x y@z");
        assert_eq!(src.hostname(), "evil----OK-x-y-z");
        let ts = src.next();
        assert_eq!(ts.matches('<').count(), 1);
        assert_eq!(ts.matches('>').count(), 1);
        assert_eq!(ts.matches('@').count(), 1);
        assert!(!ts.contains(['\r', '\n', ' ']));
        assert_eq!(TimestampSource::new("").hostname(), "localhost");
    }
}
