//! The engine's key names, under the operator's prefix (default
//! `smtp-gate:`), so that several gates can share one engine.

use std::net::IpAddr;

use crate::addr::normalize;

pub const DEFAULT_PREFIX: &str = "smtp-gate:";

/// The names of one gate's keys in the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Refuses a prefix that would make names hard to match or scan: it
    /// must be printable ASCII without spaces or glob characters, at most
    /// 64 octets.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let fine = prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"*?[]\\".contains(&b));
        if !fine {
            return Err(format!(
                "`{}` is not a key prefix: printable ASCII without spaces, `*?[]\\`, at most 64 \
                 octets (e.g. smtp-gate:)",
                prefix.escape_debug()
            ));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    /// `<prefix>grant:<address>`, the address normalised (an IPv4-mapped
    /// IPv6 address is its IPv4 address), so one client has one key.
    pub fn grant(&self, addr: IpAddr) -> String {
        format!("{}grant:{}", self.prefix, normalize(addr))
    }

    /// The pattern SCAN matches every grant key with.
    pub fn grant_pattern(&self) -> String {
        format!("{}grant:*", self.prefix)
    }

    /// The address a grant key names; `None` for a key that is not one
    /// (another prefix, a bad address, a non-canonical spelling).
    pub fn address_of(&self, key: &[u8]) -> Option<IpAddr> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let text = std::str::from_utf8(rest.strip_prefix(b"grant:")?).ok()?;
        let addr: IpAddr = text.parse().ok()?;
        // Only the spelling a publisher writes: two keys must never name
        // one client.
        (normalize(addr).to_string() == text).then_some(addr)
    }

    /// `<prefix>events`, the stream.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_key_names_its_address_and_nothing_else() {
        let names = Names::new(DEFAULT_PREFIX).unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(names.grant(v4), "smtp-gate:grant:192.0.2.7");
        assert_eq!(names.grant(mapped), names.grant(v4));
        assert_eq!(names.address_of(names.grant(v4).as_bytes()), Some(v4));
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(names.address_of(names.grant(v6).as_bytes()), Some(v6));
        for bad in [
            &b"smtp-gate:grant:::ffff:192.0.2.7"[..],
            b"smtp-gate:grant:2001:DB8::7",
            b"smtp-gate:grant:192.0.2.007",
            b"smtp-gate:grant:",
            b"other:grant:192.0.2.7",
            b"smtp-gate:grant:192.0.2.7\n",
            b"smtp-gate:events",
            b"smtp-gate:grant:\xff",
        ] {
            assert_eq!(names.address_of(bad), None, "{}", bad.escape_ascii());
        }
        assert_eq!(names.events(), "smtp-gate:events");
        assert_eq!(names.grant_pattern(), "smtp-gate:grant:*");
    }

    #[test]
    fn a_prefix_is_plain_printable_text() {
        Names::new("isp-a:").unwrap();
        Names::new("").unwrap();
        for bad in ["a b:", "a*:", "x\n", "ü:", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
