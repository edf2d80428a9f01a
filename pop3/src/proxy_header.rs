//! The PROXY protocol header a load balancer puts before the client's
//! bytes (HAProxy's proxy-protocol.txt, versions 1 and 2), read without
//! I/O: [`examine`] looks at the octets received so far and says how many
//! more it needs at least, or what the header says once it is whole.
//!
//! It never asks for an octet past the header's end, so a reader that
//! reads at most [`Progress::Incomplete`]'s count each time never takes a
//! POP3 octet the client pipelined after it.
//!
//! Only what can name a real client is taken: a PROXY command for TCP over
//! IPv4 or IPv6. A header that names no client (version 2's LOCAL, a
//! proxy's own health check; version 1's UNKNOWN) means the connection's
//! own addresses, as the specification says. A PROXY command over UDP, a
//! UNIX socket or an unspecified family is refused (the specification
//! lets the receiver refuse it): taking the connection's own address there
//! would grant the proxy's address for a client elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 octets a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A version 1 header's first octets.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Section 2.1: "a receiver may [...] read up to 107 characters": the
/// longest version 1 line, CRLF included.
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a version 2 header.
const V2_FIXED_LEN: usize = 16;
/// The longest address block (addresses and TLVs) taken after the fixed
/// part: the largest address block (two UNIX paths, 216 octets) and room
/// for the TLVs load balancers add (AWS's VPC endpoint id, Azure's link
/// id, a TLS client's certificate names). A larger one is refused rather
/// than read into memory: up to 64 KiB could be announced.
pub const V2_MAX_ADDRESS_BLOCK: usize = 2048;
/// The shortest header of either version: `PROXY UNKNOWN\r\n`. Fewer
/// octets than this can always be read first.
const SHORTEST_HEADER: usize = 15;

/// What a whole header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// The proxy relays a TCP connection from `source` (the real client)
    /// to `destination` (the address the client connected to).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The header names no client (version 2 LOCAL, version 1 UNKNOWN);
    /// the server serves no session for it (server.rs `health_check`):
    /// the connection's own endpoints stand.
    Own,
}

/// A whole header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    pub addresses: Addresses,
    /// Octets the header took on the wire.
    pub len: usize,
}

/// What the octets received so far make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not whole yet: at least this many more octets (never past the
    /// header's end) are needed.
    Incomplete(usize),
    Done(Header),
    /// Not a header that can be taken; why.
    Invalid(&'static str),
}

/// A version 2 PROXY command over TCP from `source` to `destination`
/// (section 2.2), with `tlvs` after the addresses: what a load balancer
/// sends, for the relays and tests that play one.
///
/// # Panics
/// If the two addresses are not of one family, or `tlvs` makes the
/// address block longer than 65535 octets.
pub fn v2_header(source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let (mut block, family) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ([s.octets(), d.octets()].concat(), 0x11),
        (IpAddr::V6(s), IpAddr::V6(d)) => ([s.octets(), d.octets()].concat(), 0x21),
        _ => panic!("a PROXY header names two addresses of one family"),
    };
    block.extend(source.port().to_be_bytes());
    block.extend(destination.port().to_be_bytes());
    block.extend(tlvs);
    let mut wire = V2_SIGNATURE.to_vec();
    wire.extend([0x21, family]);
    wire.extend(
        u16::try_from(block.len())
            .expect("an address block of at most 64 KiB")
            .to_be_bytes(),
    );
    wire.extend(block);
    wire
}

/// What `received` (the connection's first octets, nothing else) makes.
pub fn examine(received: &[u8]) -> Progress {
    match received.first() {
        None => Progress::Incomplete(SHORTEST_HEADER),
        Some(b'\r') => examine_v2(received),
        Some(b'P') => examine_v1(received),
        Some(_) => Progress::Invalid("no PROXY header"),
    }
}

fn examine_v1(received: &[u8]) -> Progress {
    let shown = received.len().min(V1_PREFIX.len());
    if received[..shown] != V1_PREFIX[..shown] {
        return Progress::Invalid("no PROXY header");
    }
    if received.len() < SHORTEST_HEADER {
        return Progress::Incomplete(SHORTEST_HEADER - received.len());
    }
    // The line ends at its first LF, which must follow a CR; the octets
    // before it may not hold either (a receiver reads up to the first LF).
    let body = &received[..received.len() - 1];
    if body.contains(&b'\n') {
        return Progress::Invalid("PROXY line with a bare LF");
    }
    match received.last() {
        Some(b'\n') => {}
        last => {
            if received.len() >= V1_MAX_LEN {
                return Progress::Invalid("PROXY line longer than 107 octets");
            }
            // A line ends with CR LF: without a CR last, two more at least.
            let more = if last == Some(&b'\r') { 1 } else { 2 };
            return Progress::Incomplete(more.min(V1_MAX_LEN - received.len()));
        }
    }
    let Some(line) = body.strip_suffix(b"\r") else {
        return Progress::Invalid("PROXY line with a bare LF");
    };
    match parse_v1_line(line) {
        Ok(addresses) => Progress::Done(Header {
            version: 1,
            addresses,
            len: received.len(),
        }),
        Err(why) => Progress::Invalid(why),
    }
}

/// `PROXY TCP4|TCP6 SOURCE DESTINATION SPORT DPORT` or `PROXY UNKNOWN
/// ...`, without its CRLF; fields are separated by exactly one space.
fn parse_v1_line(line: &[u8]) -> Result<Addresses, &'static str> {
    let line = std::str::from_utf8(line).map_err(|_| "PROXY line not ASCII")?;
    let rest = line.strip_prefix("PROXY ").ok_or("no PROXY header")?;
    // Section 2.1: for UNKNOWN "the rest of the line [...] must be
    // ignored", and the connection's own addresses are used.
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Addresses::Own);
    }
    let fields: Vec<&str> = rest.split(' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err("PROXY line without exactly 5 fields");
    };
    let ip = |text: &str| -> Result<IpAddr, &'static str> {
        match protocol {
            "TCP4" => text
                .parse::<Ipv4Addr>()
                .map(IpAddr::from)
                .map_err(|_| "PROXY TCP4 with a bad IPv4 address"),
            "TCP6" => text
                .parse::<Ipv6Addr>()
                .map(IpAddr::from)
                .map_err(|_| "PROXY TCP6 with a bad IPv6 address"),
            _ => Err("PROXY line with an unknown protocol"),
        }
    };
    Ok(Addresses::Proxied {
        source: SocketAddr::new(ip(source)?, v1_port(source_port)?),
        destination: SocketAddr::new(ip(destination)?, v1_port(destination_port)?),
    })
}

/// A port as section 2.1 writes it: decimal, 0 to 65535, without a
/// leading zero (nor sign, nor space).
fn v1_port(text: &str) -> Result<u16, &'static str> {
    let canonical = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err("PROXY line with a bad port");
    }
    text.parse().map_err(|_| "PROXY line with a bad port")
}

fn examine_v2(received: &[u8]) -> Progress {
    let shown = received.len().min(V2_SIGNATURE.len());
    if received[..shown] != V2_SIGNATURE[..shown] {
        return Progress::Invalid("no PROXY header");
    }
    if received.len() < V2_FIXED_LEN {
        return Progress::Incomplete(V2_FIXED_LEN - received.len());
    }
    let version_command = received[12];
    if version_command >> 4 != 2 {
        return Progress::Invalid("PROXY v2 header of another version");
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Progress::Invalid("PROXY v2 header with an unknown command"),
    };
    let family = received[13] >> 4;
    let transport = received[13] & 0x0f;
    if family > 3 || transport > 2 {
        return Progress::Invalid("PROXY v2 header with an unknown family or protocol");
    }
    let block_len = usize::from(u16::from_be_bytes([received[14], received[15]]));
    if block_len > V2_MAX_ADDRESS_BLOCK {
        return Progress::Invalid("PROXY v2 header longer than 2048 octets after its first 16");
    }
    let len = V2_FIXED_LEN + block_len;
    if received.len() < len {
        return Progress::Incomplete(len - received.len());
    }
    if received.len() > len {
        return Progress::Invalid("octets past the PROXY v2 header");
    }
    let block = &received[V2_FIXED_LEN..];
    let addresses = if local {
        // Section 2.2: LOCAL means the real connection endpoints; the
        // protocol block, family included, is ignored.
        Addresses::Own
    } else {
        match v2_addresses(family, transport, block) {
            Ok(addresses) => addresses,
            Err(why) => return Progress::Invalid(why),
        }
    };
    Progress::Done(Header {
        version: 2,
        addresses,
        len,
    })
}

/// The addresses of a PROXY command's block; TLVs after them are skipped.
fn v2_addresses(family: u8, transport: u8, block: &[u8]) -> Result<Addresses, &'static str> {
    const STREAM: u8 = 1;
    if transport != STREAM {
        return Err("PROXY v2 header for another protocol than TCP");
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        1 => {
            if block.len() < 12 {
                return Err("PROXY v2 IPv4 header with a short address block");
            }
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            Ok(Addresses::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        2 => {
            if block.len() < 36 {
                return Err("PROXY v2 IPv6 header with a short address block");
            }
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap());
            Ok(Addresses::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        _ => Err("PROXY v2 header for a UNIX socket or an unspecified family"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` as a reader would: no more than asked for each time.
    /// Gives what it made and how many octets it took.
    fn read_as_asked(wire: &[u8]) -> (Progress, usize) {
        let mut taken = 0;
        loop {
            match examine(&wire[..taken]) {
                Progress::Incomplete(more) => {
                    assert!(more > 0, "asked for nothing after {taken} octets");
                    if taken == wire.len() {
                        return (Progress::Incomplete(more), taken);
                    }
                    taken = (taken + more).min(wire.len());
                }
                done => return (done, taken),
            }
        }
    }

    fn proxied(source: &str, destination: &str) -> Addresses {
        Addresses::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\n";
        assert_eq!(
            examine(line),
            Progress::Done(Header {
                version: 1,
                addresses: proxied("192.0.2.7:56324", "198.51.100.1:110"),
                len: line.len(),
            })
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 0\r\n";
        assert_eq!(
            examine(line),
            Progress::Done(Header {
                version: 1,
                addresses: proxied("[2001:db8::7]:65535", "[2001:db8::1]:0"),
                len: line.len(),
            })
        );
    }

    #[test]
    fn v1_unknown_keeps_the_connections_own_addresses() {
        for line in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ] {
            let Progress::Done(header) = examine(line) else {
                panic!("{line:?} refused")
            };
            assert_eq!(header.addresses, Addresses::Own);
        }
    }

    /// Section 2.1's worst case, 107 octets, is taken; one more is not.
    #[test]
    fn v1_is_at_most_107_octets() {
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                        ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert!(matches!(examine(longest), Progress::Done(_)));
        let mut over = longest[..V1_MAX_LEN - 2].to_vec();
        over.push(b'x');
        assert_eq!(over.len(), V1_MAX_LEN - 1);
        // 106 octets without a line end: the CR LF would make 108.
        let (made, taken) = read_as_asked(&[over.as_slice(), b"\r\n"].concat());
        assert!(matches!(made, Progress::Invalid(_)), "{made:?}");
        assert!(taken <= V1_MAX_LEN, "read {taken} octets");
    }

    #[test]
    fn v1_numbers_and_addresses_are_strict() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 056324 110\r\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 0110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 \r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 1 110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 110 \r\n",
            b"PROXY TCP4 192.0.2.07 198.51.100.1 1 110\r\n",
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 110\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 110\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 1 110\r\n",
            b"PROXY tcp4 192.0.2.7 198.51.100.1 1 110\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 110\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 110\r\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY  UNKNOWN\r\n",
            b"proxy UNKNOWN\r\n",
        ] {
            let (made, _) = read_as_asked(bad);
            assert!(
                matches!(made, Progress::Invalid(_)),
                "{:?} gave {made:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The header's octets, then the client's: only the header is asked
    /// for (a client may pipeline its first command behind it).
    #[test]
    fn nothing_past_the_header_is_asked_for() {
        // Lines of odd and even length: a reader asking two octets at a
        // time would overshoot one of them.
        let odd = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\n";
        let even = b"PROXY TCP4 192.0.2.7 198.51.100.1 5632 110\r\n";
        let v2 = v2_ipv4();
        for header in [&odd[..], even, &v2, b"PROXY UNKNOWN\r\n"] {
            let wire = [header, b"CAPA\r\nUSER alice\r\n"].concat();
            let (made, taken) = read_as_asked(&wire);
            assert!(matches!(made, Progress::Done(_)), "{made:?}");
            assert_eq!(taken, header.len());
        }
    }

    /// Example of section 2.2: PROXY over TCP/IPv4 from 192.0.2.7:56324
    /// to 198.51.100.1:110, with one TLV (a NOOP of 3 octets) after it.
    fn v2_ipv4() -> Vec<u8> {
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend([0x21, 0x11, 0x00, 12 + 6]);
        wire.extend([192, 0, 2, 7, 198, 51, 100, 1]);
        wire.extend(56324u16.to_be_bytes());
        wire.extend(110u16.to_be_bytes());
        wire.extend([0x04, 0x00, 0x03, 1, 2, 3]);
        wire
    }

    #[test]
    fn v2_names_the_client_and_skips_tlvs() {
        let wire = v2_ipv4();
        assert_eq!(
            examine(&wire),
            Progress::Done(Header {
                version: 2,
                addresses: proxied("192.0.2.7:56324", "198.51.100.1:110"),
                len: wire.len(),
            })
        );
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend([0x21, 0x21, 0x00, 36]);
        let source: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let destination: Ipv6Addr = "2001:db8::1".parse().unwrap();
        wire.extend(source.octets());
        wire.extend(destination.octets());
        wire.extend([0xdb, 0xfc, 0x00, 0x6e]);
        assert_eq!(
            examine(&wire),
            Progress::Done(Header {
                version: 2,
                addresses: proxied("[2001:db8::7]:56316", "[2001:db8::1]:110"),
                len: wire.len(),
            })
        );
    }

    /// A health check (LOCAL) keeps the connection's own addresses,
    /// whatever family and block it carries.
    #[test]
    fn v2_local_keeps_the_connections_own_addresses() {
        for (family, block) in [(0x00, vec![]), (0x11, vec![9; 12]), (0x31, vec![0; 216])] {
            let mut wire = V2_SIGNATURE.to_vec();
            wire.extend([0x20, family]);
            wire.extend((block.len() as u16).to_be_bytes());
            wire.extend(&block);
            let (made, taken) = read_as_asked(&wire);
            assert_eq!(
                made,
                Progress::Done(Header {
                    version: 2,
                    addresses: Addresses::Own,
                    len: wire.len()
                })
            );
            assert_eq!(taken, wire.len());
        }
    }

    /// A PROXY command that names no IP client is refused: the connection's
    /// own address would be the proxy's.
    #[test]
    fn v2_proxy_without_a_tcp_client_is_refused() {
        for (family, block_len) in [
            (0x00u8, 0usize),
            (0x31, 216),
            (0x12, 12),
            (0x22, 36),
            (0x10, 12),
        ] {
            let mut wire = V2_SIGNATURE.to_vec();
            wire.extend([0x21, family]);
            wire.extend((block_len as u16).to_be_bytes());
            wire.extend(vec![1; block_len]);
            let made = examine(&wire);
            assert!(
                matches!(made, Progress::Invalid(_)),
                "{family:#x}: {made:?}"
            );
        }
    }

    #[test]
    fn v2_malformed_headers_are_refused() {
        let good = v2_ipv4();
        let with = |at: usize, octet: u8| {
            let mut wire = good.clone();
            wire[at] = octet;
            wire
        };
        for (what, wire) in [
            ("version 1 in a binary header", with(12, 0x11)),
            ("version 3", with(12, 0x31)),
            ("command 2", with(12, 0x22)),
            ("family 4", with(13, 0x41)),
            ("protocol 3", with(13, 0x13)),
            ("a wrong signature", with(11, b'\r')),
            ("a short IPv4 block", {
                let mut wire = with(15, 11);
                wire.truncate(16 + 11);
                wire
            }),
            ("a short IPv6 block", {
                let mut wire = with(13, 0x21);
                wire.truncate(16 + 18);
                wire
            }),
        ] {
            let (made, _) = read_as_asked(&wire);
            assert!(matches!(made, Progress::Invalid(_)), "{what}: {made:?}");
        }
    }

    /// An announced length past the bound is refused from the first 16
    /// octets, before anything of it is read.
    #[test]
    fn v2_length_is_bounded() {
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend([0x21, 0x11]);
        wire.extend((V2_MAX_ADDRESS_BLOCK as u16 + 1).to_be_bytes());
        assert!(matches!(examine(&wire), Progress::Invalid(_)));
        let mut wire = V2_SIGNATURE.to_vec();
        wire.extend([0x21, 0x11]);
        wire.extend((V2_MAX_ADDRESS_BLOCK as u16).to_be_bytes());
        assert_eq!(examine(&wire), Progress::Incomplete(V2_MAX_ADDRESS_BLOCK));
    }

    #[test]
    fn other_first_octets_are_no_header() {
        for wire in [&b"USER alice\r\n"[..], b"\r\nUSER", b"PROX\r\n", b"\0"] {
            let (made, _) = read_as_asked(wire);
            assert!(matches!(made, Progress::Invalid(_)), "{wire:?}: {made:?}");
        }
    }
}
