//! POP3 commands parsed from one line of bytes; no I/O here.
//!
//! RFC 1939 section 3: "Commands in the POP3 consist of a case-insensitive
//! keyword, possibly followed by one or more arguments. All commands are
//! terminated by a CRLF pair. Keywords and arguments consist of printable
//! ASCII characters. Keywords and arguments are each separated by a single
//! SPACE character."

use std::fmt;

/// A message number as the client wrote it: 1-based. 0 is kept (not
/// mapped to 1) so the session can refuse it like any missing message.
pub type MessageNumber = u32;

#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    /// The whole rest of the line: RFC 1939 section 7 allows spaces in the
    /// password ("a POP3 server may treat spaces in the argument as part of
    /// the password").
    Pass(String),
    Apop {
        user: String,
        digest: String,
    },
    Capa,
    Quit,
    Stat,
    List(Option<MessageNumber>),
    Retr(MessageNumber),
    Dele(MessageNumber),
    Noop,
    Rset,
    Top(MessageNumber, u32),
    Uidl(Option<MessageNumber>),
    /// RFC 2595 section 4: begin TLS on this connection.
    Stls,
    /// RFC 5034 section 4: `AUTH mechanism [initial-response]`. The
    /// mechanism is upper-cased (SASL names are case-insensitive); the
    /// initial response is kept as sent (base64, or `=` for an empty
    /// one). A bare `AUTH` (no mechanism) asks for the list.
    Auth {
        mechanism: Option<String>,
        initial_response: Option<String>,
    },
}

impl Command {
    /// The keyword, for logs and for the state check.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::User(_) => "USER",
            Self::Pass(_) => "PASS",
            Self::Apop { .. } => "APOP",
            Self::Capa => "CAPA",
            Self::Quit => "QUIT",
            Self::Stat => "STAT",
            Self::List(_) => "LIST",
            Self::Retr(_) => "RETR",
            Self::Dele(_) => "DELE",
            Self::Noop => "NOOP",
            Self::Rset => "RSET",
            Self::Top(..) => "TOP",
            Self::Uidl(_) => "UIDL",
            Self::Stls => "STLS",
            Self::Auth { .. } => "AUTH",
        }
    }
}

/// Never prints a password.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass(_) => f.write_str("Pass(<redacted>)"),
            Self::Apop { user, .. } => write!(f, "Apop({user:?}, <digest>)"),
            Self::User(u) => write!(f, "User({u:?})"),
            Self::List(n) => write!(f, "List({n:?})"),
            Self::Retr(n) => write!(f, "Retr({n})"),
            Self::Dele(n) => write!(f, "Dele({n})"),
            Self::Top(n, m) => write!(f, "Top({n}, {m})"),
            Self::Uidl(n) => write!(f, "Uidl({n:?})"),
            Self::Auth {
                mechanism,
                initial_response,
            } => write!(
                f,
                "Auth({mechanism:?}{})",
                if initial_response.is_some() {
                    ", <initial response>"
                } else {
                    ""
                }
            ),
            other => f.write_str(other.keyword()),
        }
    }
}

/// Why a line is not a command; the text goes into the `-ERR` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    Empty,
    Unknown(String),
    /// Keyword known, arguments wrong.
    Syntax(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty command"),
            Self::Unknown(keyword) => write!(f, "unknown command {keyword}"),
            Self::Syntax(usage) => write!(f, "syntax: {usage}"),
        }
    }
}

/// Parses one command line, without its line ending.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("commands are ASCII"))?;
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let (keyword, rest) = match line.split_once(' ') {
        Some((k, r)) => (k, Some(r)),
        None => (line, None),
    };
    if keyword.len() > 4 || !keyword.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ParseError::Unknown(printable(keyword)));
    }
    let keyword = keyword.to_ascii_uppercase();
    // PASS keeps its argument whole; every other command splits on single
    // spaces. Tolerate a trailing space, as clients send one.
    if keyword == "PASS" {
        return match rest {
            Some(password) if !password.is_empty() => Ok(Command::Pass(password.to_string())),
            _ => Err(ParseError::Syntax("PASS password")),
        };
    }
    let args: Vec<&str> = match rest.map(|r| r.trim_end_matches(' ')) {
        None | Some("") => Vec::new(),
        Some(r) => r.split(' ').collect(),
    };
    // RFC 1939 section 3 caps arguments at 40 characters, but RFC 2449
    // section 4 lifts that for servers that offer CAPA: only the 255-octet
    // line limit (framing.rs) applies, so long user names work.
    if args.iter().any(|a| a.is_empty()) {
        return Err(ParseError::Syntax(usage(&keyword)));
    }
    // Section 3 again: arguments are printable. A control character (a
    // TAB, a bare CR, NUL, U+0085) in a user name is refused here, as
    // Dovecot refuses it; non-ASCII letters pass, as they do there (the
    // log escapes them, log_text.rs).
    if args.iter().any(|a| a.chars().any(char::is_control)) {
        return Err(ParseError::Syntax(usage(&keyword)));
    }
    let syntax = || ParseError::Syntax(usage(&keyword));
    let number = |s: &str| parse_number(s).ok_or_else(syntax);
    let command = match (keyword.as_str(), args.as_slice()) {
        ("USER", [user]) => Command::User(user.to_string()),
        ("APOP", [user, digest]) => Command::Apop {
            user: user.to_string(),
            digest: digest.to_string(),
        },
        ("CAPA", []) => Command::Capa,
        ("QUIT", []) => Command::Quit,
        ("STAT", []) => Command::Stat,
        ("LIST", []) => Command::List(None),
        ("LIST", [n]) => Command::List(Some(number(n)?)),
        ("RETR", [n]) => Command::Retr(number(n)?),
        ("DELE", [n]) => Command::Dele(number(n)?),
        ("NOOP", []) => Command::Noop,
        ("RSET", []) => Command::Rset,
        ("TOP", [n, lines]) => Command::Top(number(n)?, number(lines)?),
        ("UIDL", []) => Command::Uidl(None),
        ("UIDL", [n]) => Command::Uidl(Some(number(n)?)),
        ("STLS", []) => Command::Stls,
        ("AUTH", []) => Command::Auth {
            mechanism: None,
            initial_response: None,
        },
        ("AUTH", [mechanism]) => Command::Auth {
            mechanism: Some(mechanism.to_ascii_uppercase()),
            initial_response: None,
        },
        ("AUTH", [mechanism, initial]) => Command::Auth {
            mechanism: Some(mechanism.to_ascii_uppercase()),
            initial_response: Some(initial.to_string()),
        },
        (
            "USER" | "APOP" | "CAPA" | "QUIT" | "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET"
            | "TOP" | "UIDL" | "STLS" | "AUTH",
            _,
        ) => return Err(syntax()),
        _ => return Err(ParseError::Unknown(printable(&keyword))),
    };
    Ok(command)
}

/// A decimal number without sign; out of range for u32 is a syntax error.
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn usage(keyword: &str) -> &'static str {
    match keyword {
        "USER" => "USER name",
        "APOP" => "APOP name digest",
        "LIST" => "LIST [msg]",
        "RETR" => "RETR msg",
        "DELE" => "DELE msg",
        "TOP" => "TOP msg lines",
        "UIDL" => "UIDL [msg]",
        "CAPA" => "CAPA",
        "QUIT" => "QUIT",
        "STAT" => "STAT",
        "NOOP" => "NOOP",
        "RSET" => "RSET",
        "STLS" => "STLS",
        "AUTH" => "AUTH [mechanism [initial-response]]",
        _ => "unknown",
    }
}

/// Echoing client bytes into a reply: printable ASCII only, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .take(16)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// RFC 1939 section 3: arguments are printable characters.
    #[test]
    fn control_characters_in_arguments_are_refused() {
        for line in [
            "USER a\tb",
            "USER a\rb",
            "USER a\0",
            "USER \u{1b}[2J",
            "USER a\u{85}b",
            "APOP a\u{7f} c4c9334bac560ecc979e58001b3e22fb",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Err(ParseError::Syntax(_))),
                "{line:?} was accepted"
            );
        }
        assert_eq!(ok("USER jos\u{e9}"), Command::User("jos\u{e9}".into()));
        assert_eq!(
            ok("PASS a\tb"),
            Command::Pass("a\tb".into()),
            "a password may hold a TAB"
        );
    }

    /// Debug output (what a log or a panic shows) never holds a
    /// password or an APOP digest, and still says what the command was.
    #[test]
    fn debug_hides_secrets() {
        let pass = format!("{:?}", ok("PASS hunter2"));
        assert_eq!(pass, "Pass(<redacted>)");
        let apop = format!("{:?}", ok("APOP mrose c4c9334bac560ecc979e58001b3e22fb"));
        assert!(
            apop.starts_with("Apop(\"mrose\"") && !apop.contains("c4c9"),
            "{apop}"
        );
        assert_eq!(format!("{:?}", ok("RETR 2")), "Retr(2)");
    }

    /// A wrong argument list gets the command's usage (RFC 1939 names
    /// the arguments; the -ERR text tells the client what was expected).
    #[test]
    fn wrong_arguments_get_the_usage() {
        let cases = [
            ("USER", "USER name"),
            ("APOP x", "APOP name digest"),
            ("LIST 1 2", "LIST [msg]"),
            ("RETR", "RETR msg"),
            ("DELE x", "DELE msg"),
            ("TOP 1", "TOP msg lines"),
            ("UIDL 1 2", "UIDL [msg]"),
            ("CAPA x", "CAPA"),
            ("QUIT x", "QUIT"),
            ("STAT x", "STAT"),
            ("NOOP x", "NOOP"),
            ("RSET x", "RSET"),
        ];
        for (line, usage) in cases {
            assert_eq!(
                parse(line.as_bytes()),
                Err(ParseError::Syntax(usage)),
                "{line}"
            );
        }
    }

    /// A keyword that cannot be one (too long, or not all letters) is
    /// named as the client sent it; a word of up to four letters is named
    /// as the keyword it would be.
    #[test]
    fn unknown_keywords_are_named() {
        for keyword in ["abcdef", "Us3r"] {
            assert_eq!(
                parse(keyword.as_bytes()),
                Err(ParseError::Unknown(keyword.to_string())),
                "{keyword}"
            );
        }
        assert_eq!(parse(b"xyz"), Err(ParseError::Unknown("XYZ".to_string())));
    }

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(ok("stat"), Command::Stat);
        assert_eq!(ok("StAt"), Command::Stat);
        assert_eq!(ok("list 3"), Command::List(Some(3)));
        assert_eq!(ok("uidl"), Command::Uidl(None));
        assert_eq!(ok("top 1 0"), Command::Top(1, 0));
        assert_eq!(ok("capa"), Command::Capa);
    }

    #[test]
    fn pass_keeps_spaces_and_case() {
        assert_eq!(
            ok("PASS my Secret pw"),
            Command::Pass("my Secret pw".into())
        );
        assert_eq!(ok("pass  lead"), Command::Pass(" lead".into()));
        assert!(parse(b"PASS").is_err());
        assert!(parse(b"PASS ").is_err());
    }

    #[test]
    fn apop_takes_user_and_digest() {
        assert_eq!(
            ok("APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Command::Apop {
                user: "mrose".into(),
                digest: "c4c9334bac560ecc979e58001b3e22fb".into()
            }
        );
        assert!(parse(b"APOP mrose").is_err());
    }

    #[test]
    fn message_zero_parses_so_the_session_can_refuse_it() {
        assert_eq!(ok("RETR 0"), Command::Retr(0));
    }

    #[test]
    fn bad_arguments_are_syntax_errors() {
        for bad in [
            "RETR",
            "RETR x",
            "RETR -1",
            "RETR +1",
            "RETR 1 2",
            "LIST 1 2",
            "TOP 1",
            "TOP 1 x",
            "DELE 99999999999",
            "STAT 1",
            "USER",
            "USER a b",
            "NOOP x",
            "QUIT now",
            "RETR  1",
        ] {
            match parse(bad.as_bytes()) {
                Err(ParseError::Syntax(_)) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert!(matches!(parse(b"HELLOWORLD"), Err(ParseError::Unknown(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(ParseError::Syntax(_))));
        let long = "firstname.lastname@mail.example-company.com";
        assert_eq!(ok(&format!("USER {long}")), Command::User(long.into()));
    }

    #[test]
    fn stls_and_auth() {
        assert_eq!(ok("stls"), Command::Stls);
        assert_eq!(parse(b"STLS now"), Err(ParseError::Syntax("STLS")));
        assert_eq!(
            ok("auth plain"),
            Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: None
            }
        );
        assert_eq!(
            ok("AUTH PLAIN AGJvYgBzZWNyZXQ="),
            Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial_response: Some("AGJvYgBzZWNyZXQ=".into())
            }
        );
        assert_eq!(
            ok("AUTH"),
            Command::Auth {
                mechanism: None,
                initial_response: None
            }
        );
        assert!(matches!(
            parse(b"AUTH PLAIN a b"),
            Err(ParseError::Syntax(_))
        ));
        let debug = format!("{:?}", ok("AUTH PLAIN AGJvYgBzZWNyZXQ="));
        assert!(!debug.contains("AGJv"), "{debug}");
    }

    #[test]
    fn trailing_space_is_tolerated() {
        assert_eq!(ok("STAT "), Command::Stat);
        assert_eq!(ok("USER bob "), Command::User("bob".into()));
    }
}
