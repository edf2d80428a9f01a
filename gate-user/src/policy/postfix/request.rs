//! One Postfix policy request, parsed: the client's address to judge, and
//! the few attributes the refuse line shows. Pure: the bytes of one
//! request in, a request or the reason it is malformed out.
//!
//! SMTPD_POLICY_README, "Protocol description": "The client request is a
//! sequence of name=value attributes separated by newline, and is
//! terminated by an empty line." "The order of the attributes does not
//! matter. The policy server should ignore any attributes that it does not
//! care about." "An attribute name must not contain "=", null or newline,
//! and an attribute value must not contain null or newline."

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use pop3::log_text::LogText;

/// The longest line taken, its newline excluded. The longest values
/// Postfix sends come from SMTP commands (helo_name, sender, recipient),
/// which its SMTP server cuts at `line_limit` (2048 by default: "We can't
/// parse or store input that exceeds var_line_limit", smtpd_chat.c); the
/// ccert_* values are xtext, at most three octets for one. Four times
/// `line_limit` is the bound Postfix's own attribute reader was written
/// with (attr_scan_plain.c), and still leaves room for an operator who
/// raised `line_limit`.
pub const MAX_LINE: usize = 8 * 1024;

/// The most octets in one request. Postfix 3.12 sends 31 attributes; only
/// a handful can be long, each bounded as [`MAX_LINE`] says.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The most attributes in one request: four times what Postfix 3.12 sends,
/// for the attributes later versions add.
pub const MAX_ATTRIBUTES: usize = 128;

/// The only request type Postfix's SMTP server sends.
const REQUEST_TYPE: &[u8] = b"smtpd_access_policy";

/// The client's address as Postfix gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAddress {
    /// IPv4, or IPv6 (an IPv4-mapped address as the IPv4 address it is,
    /// the gate's maps key IPv4 clients so).
    Ip(IpAddr),
    /// Postfix writes `unknown` when it has no address: the client went
    /// away before Postfix asked the kernel, or a proxy (XCLIENT,
    /// XFORWARD, HAProxy) said `[UNAVAILABLE]` (smtpd_peer.c, smtpd.c).
    /// No grant can be proven for it.
    Unknown,
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// What the service needs from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub client: ClientAddress,
    /// Only for the log line: `protocol_state`, `sender`, `recipient`,
    /// `client_name`, `sasl_username`, as sent (empty when not sent).
    pub protocol_state: Vec<u8>,
    pub sender: Vec<u8>,
    pub recipient: Vec<u8>,
    pub client_name: Vec<u8>,
    pub sasl_username: Vec<u8>,
}

/// Why a request is not taken. Texts a client sent are escaped in the
/// message, which is logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A line longer than [`MAX_LINE`]: the stream cannot be framed any
    /// more.
    LineTooLong,
    /// More than [`MAX_REQUEST`] octets before the empty line.
    RequestTooLarge,
    /// The connection ended inside a request.
    Truncated,
    /// More than [`MAX_ATTRIBUTES`] attributes.
    TooManyAttributes,
    /// A line without `=`.
    NoEquals {
        line: usize,
    },
    /// A name that is not letters, digits, `_` and `-`.
    BadName {
        line: usize,
    },
    /// A NUL octet (the README forbids it in names and values).
    Nul {
        line: usize,
    },
    MissingRequest,
    /// A request type other than `smtpd_access_policy`.
    WrongRequest(String),
    MissingClientAddress,
    BadClientAddress(String),
    /// `request` or `client_address` given twice: the README lets a server
    /// keep either value, so a second one is ambiguous.
    Duplicate(&'static str),
}

impl Malformed {
    /// True if the connection can no longer be framed into requests.
    pub fn loses_framing(&self) -> bool {
        matches!(
            self,
            Self::LineTooLong | Self::RequestTooLarge | Self::Truncated
        )
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "a line longer than {MAX_LINE} octets"),
            Self::RequestTooLarge => write!(f, "a request longer than {MAX_REQUEST} octets"),
            Self::Truncated => f.write_str("the connection ended inside a request"),
            Self::TooManyAttributes => write!(f, "more than {MAX_ATTRIBUTES} attributes"),
            Self::NoEquals { line } => write!(f, "line {line} is not name=value"),
            Self::BadName { line } => write!(f, "line {line} has no attribute name"),
            Self::Nul { line } => write!(f, "line {line} holds a NUL"),
            Self::MissingRequest => f.write_str("no request attribute"),
            Self::WrongRequest(kind) => write!(f, "request={kind}, not smtpd_access_policy"),
            Self::MissingClientAddress => f.write_str("no client_address attribute"),
            Self::BadClientAddress(text) => write!(f, "client_address={text} is no address"),
            Self::Duplicate(name) => write!(f, "{name} given twice"),
        }
    }
}

impl std::error::Error for Malformed {}

/// Parses one request: its lines, each ending in LF, without the empty
/// line that ends it.
pub fn parse_request(block: &[u8]) -> Result<PolicyRequest, Malformed> {
    if block.len() > MAX_REQUEST {
        return Err(Malformed::RequestTooLarge);
    }
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let mut request_type: Option<&[u8]> = None;
    let mut client_address: Option<&[u8]> = None;
    let mut request = PolicyRequest {
        client: ClientAddress::Unknown,
        protocol_state: Vec::new(),
        sender: Vec::new(),
        recipient: Vec::new(),
        client_name: Vec::new(),
        sasl_username: Vec::new(),
    };
    let lines = if body.is_empty() {
        Vec::new()
    } else {
        body.split(|&b| b == b'\n').collect()
    };
    if lines.len() > MAX_ATTRIBUTES {
        return Err(Malformed::TooManyAttributes);
    }
    for (index, line) in lines.into_iter().enumerate() {
        let number = index + 1;
        if line.len() > MAX_LINE {
            return Err(Malformed::LineTooLong);
        }
        if line.contains(&0) {
            return Err(Malformed::Nul { line: number });
        }
        let Some(equals) = line.iter().position(|&b| b == b'=') else {
            return Err(Malformed::NoEquals { line: number });
        };
        let (name, value) = (&line[..equals], &line[equals + 1..]);
        let name_fine = !name.is_empty()
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
        if !name_fine {
            return Err(Malformed::BadName { line: number });
        }
        match name {
            b"request" => once(&mut request_type, value, "request")?,
            b"client_address" => once(&mut client_address, value, "client_address")?,
            // The README: "When the same attribute name is sent more than
            // once, the server may keep the first value or the last": the
            // log keeps the last.
            b"protocol_state" => request.protocol_state = value.to_vec(),
            b"sender" => request.sender = value.to_vec(),
            b"recipient" => request.recipient = value.to_vec(),
            b"client_name" => request.client_name = value.to_vec(),
            b"sasl_username" => request.sasl_username = value.to_vec(),
            _ => {}
        }
    }
    match request_type {
        None => return Err(Malformed::MissingRequest),
        Some(REQUEST_TYPE) => {}
        Some(other) => return Err(Malformed::WrongRequest(LogText(other).to_string())),
    }
    let address = client_address.ok_or(Malformed::MissingClientAddress)?;
    request.client = parse_client_address(address)
        .ok_or_else(|| Malformed::BadClientAddress(LogText(address).to_string()))?;
    Ok(request)
}

fn once<'a>(
    slot: &mut Option<&'a [u8]>,
    value: &'a [u8],
    name: &'static str,
) -> Result<(), Malformed> {
    if slot.replace(value).is_some() {
        return Err(Malformed::Duplicate(name));
    }
    Ok(())
}

/// SMTPD_POLICY_README: "The remote client or local server IP address is
/// an IPv4 dotted quad in the form 1.2.3.4 or it is an IPv6 address in the
/// form 1:2:3::4:5:6." Postfix already writes an IPv4-mapped client as
/// IPv4 (normalize_v4mapped_addr.c); one that comes mapped anyway is made
/// IPv4 here, as the gate keys it. Postfix refuses a scope suffix
/// (`%eth0`, smtpd_peer.c), and so does this.
fn parse_client_address(text: &[u8]) -> Option<ClientAddress> {
    if text == b"unknown" {
        return Some(ClientAddress::Unknown);
    }
    let text = std::str::from_utf8(text).ok()?;
    let addr: IpAddr = text.parse().ok()?;
    Some(ClientAddress::Ip(match addr {
        IpAddr::V6(v6) => unmapped(v6),
        v4 => v4,
    }))
}

fn unmapped(v6: Ipv6Addr) -> IpAddr {
    v6.to_ipv4_mapped()
        .map(IpAddr::V4)
        .unwrap_or(IpAddr::V6(v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Postfix 3.12 sends at RCPT (SMTPD_POLICY_README's example).
    const POSTFIX_REQUEST: &str = "request=smtpd_access_policy\n\
        protocol_state=RCPT\nprotocol_name=SMTP\nhelo_name=some.domain.tld\n\
        queue_id=8045F2AB23\nsender=foo@bar.tld\nrecipient=bar@foo.tld\n\
        recipient_count=0\nclient_address=1.2.3.4\nclient_name=another.domain.tld\n\
        reverse_client_name=another.domain.tld\ninstance=123.456.7\nsasl_method=plain\n\
        sasl_username=you\nsasl_sender=\nsize=12345\nccert_subject=solaris9.porcupine.org\n\
        ccert_issuer=Wietse+20Venema\nccert_fingerprint=C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04\n\
        encryption_protocol=TLSv1/SSLv3\nencryption_cipher=DHE-RSA-AES256-SHA\n\
        encryption_keysize=256\netrn_domain=\nstress=\n\
        ccert_pubkey_fingerprint=68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40\n\
        client_port=1234\npolicy_context=submission\nserver_address=10.3.2.1\n\
        server_port=54321\ncompatibility_level=major.minor.patch\nmail_version=3.8.0\n\
        tls_sni=mail.example.com\n";

    fn with_address(address: &str) -> String {
        POSTFIX_REQUEST.replace(
            "client_address=1.2.3.4",
            &format!("client_address={address}"),
        )
    }

    #[test]
    fn postfix_full_request_gives_the_address_and_the_logged_fields() {
        let request = parse_request(POSTFIX_REQUEST.as_bytes()).unwrap();
        assert_eq!(
            request.client,
            ClientAddress::Ip("1.2.3.4".parse().unwrap())
        );
        assert_eq!(request.protocol_state, b"RCPT");
        assert_eq!(request.sender, b"foo@bar.tld");
        assert_eq!(request.recipient, b"bar@foo.tld");
        assert_eq!(request.client_name, b"another.domain.tld");
        assert_eq!(request.sasl_username, b"you");
    }

    #[test]
    fn the_minimal_request_is_its_type_and_the_address() {
        let request =
            parse_request(b"request=smtpd_access_policy\nclient_address=192.0.2.1\n").unwrap();
        assert_eq!(
            request.client,
            ClientAddress::Ip("192.0.2.1".parse().unwrap())
        );
        assert!(request.sender.is_empty() && request.recipient.is_empty());
    }

    #[test]
    fn ipv6_as_postfix_writes_it_and_ipv4_mapped_made_ipv4() {
        for (sent, judged) in [
            ("2001:db8:1:2::4:5:6", "2001:db8:1:2::4:5:6"),
            ("::1", "::1"),
            ("::ffff:192.0.2.9", "192.0.2.9"),
            ("::FFFF:c000:0209", "192.0.2.9"),
        ] {
            let request = parse_request(with_address(sent).as_bytes()).unwrap();
            assert_eq!(
                request.client,
                ClientAddress::Ip(judged.parse().unwrap()),
                "{sent}"
            );
        }
        let request = parse_request(with_address("unknown").as_bytes()).unwrap();
        assert_eq!(request.client, ClientAddress::Unknown);
    }

    #[test]
    fn an_address_that_is_none_is_malformed() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4 ",
            "1.2.3.4\r",
            "fe80::1%eth0",
            "[::1]",
            "IPv6:::1",
            "UNKNOWN",
            "example.org",
        ] {
            assert!(
                matches!(
                    parse_request(with_address(bad).as_bytes()),
                    Err(Malformed::BadClientAddress(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_or_wrong_request_type_and_missing_address_are_malformed() {
        assert_eq!(
            parse_request(b"client_address=192.0.2.1\n"),
            Err(Malformed::MissingRequest)
        );
        assert_eq!(
            parse_request(b"request=junk_policy\nclient_address=192.0.2.1\n"),
            Err(Malformed::WrongRequest("junk_policy".into()))
        );
        assert_eq!(
            parse_request(b"request=smtpd_access_policy\nsender=a@b\n"),
            Err(Malformed::MissingClientAddress)
        );
        assert_eq!(parse_request(b""), Err(Malformed::MissingRequest));
    }

    #[test]
    fn critical_attributes_only_once_others_keep_the_last() {
        let twice = format!("{POSTFIX_REQUEST}client_address=10.0.0.1\n");
        assert_eq!(
            parse_request(twice.as_bytes()),
            Err(Malformed::Duplicate("client_address"))
        );
        let twice = format!("request=smtpd_access_policy\n{POSTFIX_REQUEST}");
        assert_eq!(
            parse_request(twice.as_bytes()),
            Err(Malformed::Duplicate("request"))
        );
        let request = parse_request(format!("{POSTFIX_REQUEST}sender=last@x\n").as_bytes());
        assert_eq!(request.unwrap().sender, b"last@x");
    }

    #[test]
    fn lines_must_be_name_equals_value_without_nul() {
        let cases: [(&[u8], Malformed); 5] = [
            (
                b"request=smtpd_access_policy\nhello\n",
                Malformed::NoEquals { line: 2 },
            ),
            (
                b"=x\nrequest=smtpd_access_policy\n",
                Malformed::BadName { line: 1 },
            ),
            (b"na me=x\n", Malformed::BadName { line: 1 }),
            (b"\xff\xfe=x\n", Malformed::BadName { line: 1 }),
            (
                b"request=smtpd_access_policy\nsender=a\0b\n",
                Malformed::Nul { line: 2 },
            ),
        ];
        for (block, reason) in cases {
            assert_eq!(parse_request(block), Err(reason), "{}", LogText(block));
        }
    }

    #[test]
    fn values_may_hold_anything_but_nul_and_newline() {
        let block = b"request=smtpd_access_policy\nclient_address=192.0.2.1\n\
            sender=a=b\xc3\xa9 \x1b\nhelo_name=\n";
        assert_eq!(parse_request(block).unwrap().sender, b"a=b\xc3\xa9 \x1b");
    }

    #[test]
    fn size_and_count_limits() {
        let at_limit = format!("{POSTFIX_REQUEST}sender={}\n", "s".repeat(MAX_LINE - 7));
        assert!(parse_request(at_limit.as_bytes()).is_ok());
        let over = format!("{POSTFIX_REQUEST}sender={}\n", "s".repeat(MAX_LINE - 6));
        assert_eq!(parse_request(over.as_bytes()), Err(Malformed::LineTooLong));

        let sent = POSTFIX_REQUEST.lines().count();
        let filler = |n: usize| (0..n).map(|i| format!("x{i}=\n")).collect::<String>();
        let most = format!("{POSTFIX_REQUEST}{}", filler(MAX_ATTRIBUTES - sent));
        assert!(parse_request(most.as_bytes()).is_ok());
        let too_many = format!("{POSTFIX_REQUEST}{}", filler(MAX_ATTRIBUTES - sent + 1));
        assert_eq!(
            parse_request(too_many.as_bytes()),
            Err(Malformed::TooManyAttributes)
        );
        let big = vec![b'x'; MAX_REQUEST + 1];
        assert_eq!(parse_request(&big), Err(Malformed::RequestTooLarge));
    }

    #[test]
    fn messages_escape_what_the_client_sent() {
        let error = parse_request(b"request=smtpd_access_policy\nclient_address=1.2.3.4 x=y\n")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "client_address=1.2.3.4\\x20x=y is no address"
        );
    }
}
