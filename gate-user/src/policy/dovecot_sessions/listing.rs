//! `doveadm -f tab who -1`'s output, read into sessions.
//!
//! doveadm's tab formatter (dovecot/core src/doveadm/doveadm-print-tab.c,
//! the same from 2.0 to 2.4) writes every value as it is, escaping
//! nothing: a tab inside a value (a user name) adds a column and shifts
//! every column after it, and a line end inside one splits its line. So a
//! line is read only if it has exactly as many fields as the header; any
//! other is skipped, never read with its columns shifted (a user named
//! `x<TAB>imap<TAB>1<TAB>198.51.100.66` would otherwise renew an address of
//! its choosing). The output is read as bytes: a value that is not UTF-8,
//! or holds a NUL, costs its own line at most.

use std::net::IpAddr;

use anyhow::{bail, Result};
use pop3::log_text::LogText;

use crate::addr::normalize;

/// One open Dovecot session, as `doveadm who -1` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub protocol: String,
    pub addr: IpAddr,
}

/// What a listing gave.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub sessions: Vec<Session>,
    /// Lines whose field count is not the header's, or whose address is
    /// not one: left out.
    pub skipped: usize,
}

/// How much of a header that names no columns an error shows: enough to
/// recognise it, never the megabytes a wedged command may print.
const HEADER_SHOWN: usize = 120;

/// The sessions in `doveadm -f tab who -1`'s output: a header line naming
/// the columns (`username`, `proto` (2.3) or `service` (2.4), `ip`), then
/// one line per connection. Lines without an address (a session of a
/// local process) are left out; a listing without the columns is an error.
pub fn parse_listing(output: &[u8]) -> Result<Listing> {
    if output.is_empty() {
        return Ok(Listing::default());
    }
    let mut lines = output
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let header = lines.next().unwrap_or_default();
    // Found without collecting the fields: a line of millions of tabs
    // would make a vector many times the output's size.
    let column =
        |names: &[&str]| fields(header).position(|c| names.iter().any(|n| c == n.as_bytes()));
    let (Some(user), Some(protocol), Some(ip)) = (
        column(&["username"]),
        column(&["proto", "service"]),
        column(&["ip"]),
    ) else {
        let shown = &header[..header.len().min(HEADER_SHOWN)];
        let more = if header.len() > HEADER_SHOWN {
            "..."
        } else {
            ""
        };
        bail!(
            "the listing's first line names no username, proto (or service) and ip columns: \
             \"{}{more}\" (expected the output of `doveadm -f tab who -1`)",
            LogText(shown)
        );
    };
    let columns = field_count(header);
    let mut listing = Listing::default();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if field_count(line) != columns {
            listing.skipped += 1;
            continue;
        }
        let field = |i: usize| fields(line).nth(i).unwrap_or_default();
        let addr = field(ip);
        if addr.is_empty() {
            continue;
        }
        let Some(addr) = std::str::from_utf8(addr)
            .ok()
            .and_then(|text| text.parse::<IpAddr>().ok())
        else {
            listing.skipped += 1;
            continue;
        };
        listing.sessions.push(Session {
            user: String::from_utf8_lossy(field(user)).into_owned(),
            protocol: String::from_utf8_lossy(field(protocol)).into_owned(),
            addr: normalize(addr),
        });
    }
    Ok(listing)
}

fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b'\t')
}

fn field_count(line: &[u8]) -> usize {
    line.iter().filter(|&&b| b == b'\t').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Dovecot 2.3.19's `doveadm -f tab who -1` printed for two IMAP
    /// sessions and one POP3 session.
    const LISTING_2_3: &str = "username\tproto\tpid\tip\n\
        alice\timap\t2853\t192.0.2.7\n\
        alice\timap\t2854\t::ffff:192.0.2.7\n\
        bob\tpop3\t2860\t2001:db8::9\n\
        carol\timap\t2870\t\n";

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addrs(listing: &Listing) -> Vec<IpAddr> {
        listing.sessions.iter().map(|s| s.addr).collect()
    }

    #[test]
    fn the_listing_gives_each_sessions_user_protocol_and_address() {
        let listing = parse_listing(LISTING_2_3.as_bytes()).unwrap();
        assert_eq!(
            listing.sessions,
            [
                ("alice", "imap", addr("192.0.2.7")),
                ("alice", "imap", addr("192.0.2.7")),
                ("bob", "pop3", addr("2001:db8::9")),
            ]
            .map(|(user, protocol, addr)| Session {
                user: user.into(),
                protocol: protocol.into(),
                addr
            })
        );
        assert_eq!(listing.skipped, 0, "a session without address is no fault");
    }

    #[test]
    fn columns_are_found_by_name_in_either_version() {
        let listing = "ip\tservice\tusername\tpid\r\n198.51.100.4\timap\tdave\t1\r\n";
        let sessions = parse_listing(listing.as_bytes()).unwrap().sessions;
        assert_eq!(sessions[0].user, "dave");
        assert_eq!(sessions[0].protocol, "imap");
        assert_eq!(sessions[0].addr, addr("198.51.100.4"));
        assert_eq!(parse_listing(b"").unwrap(), Listing::default());
        let err = parse_listing(b"username proto pid ip\nalice imap 1 192.0.2.7\n").unwrap_err();
        assert!(err.to_string().contains("doveadm -f tab who -1"), "{err}");
    }

    /// doveadm escapes no tab and no line end in a value: a user name
    /// holding them must not move another column's text under `ip`.
    #[test]
    fn a_line_with_a_tab_or_line_end_in_a_value_is_skipped_not_shifted() {
        let listing = "username\tproto\tpid\tip\n\
            x\timap\t7\t198.51.100.66\timap\t2853\t192.0.2.7\n\
            y\n\
            imap\t2854\t198.51.100.67\n\
            bob\tpop3\t2860\t2001:db8::9\n";
        let listing = parse_listing(listing.as_bytes()).unwrap();
        assert_eq!(addrs(&listing), [addr("2001:db8::9")]);
        assert_eq!(listing.skipped, 3);
    }

    /// Output no doveadm prints, as a hostile or broken command could:
    /// nothing panics, and no address is granted that is not exactly the
    /// `ip` field of a well-formed line.
    #[test]
    fn hostile_output_neither_panics_nor_makes_an_address() {
        let mut output = b"username\tproto\tpid\tip\n".to_vec();
        for line in [
            &b"a\timap\t1\t192.0.2.7\0\n"[..],
            b"b\timap\t2\t192.0.2.\xff\n",
            b"c\timap\t3\t 192.0.2.8\n",
            b"d\timap\t4\tfe80::1%eth0\n",
            b"e\timap\t5\t192.0.2.010\n",
            b"\xff\xfe\0\timap\t6\t192.0.2.9\n",
            b"\t\t\t\t\t\t\t\t\n",
            b"\n\n\r\n",
        ] {
            output.extend_from_slice(line);
        }
        let listing = parse_listing(&output).unwrap();
        assert_eq!(addrs(&listing), [addr("192.0.2.9")]);
        assert_eq!(listing.sessions[0].user, "\u{fffd}\u{fffd}\0");
        assert_eq!(listing.skipped, 6);
    }

    /// A header of megabytes is not carried whole into the warning.
    #[test]
    fn a_huge_header_naming_no_columns_is_shown_in_part() {
        let mut output = vec![b'\t'; 4 << 20];
        output.extend_from_slice(b"\nalice\timap\t1\t192.0.2.7\n");
        let err = format!("{:#}", parse_listing(&output).unwrap_err());
        assert!(err.len() < 4 * HEADER_SHOWN + 200, "{} octets", err.len());
        assert!(err.contains("\\t\\t...\""), "{err}");
    }
}
