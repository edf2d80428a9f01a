//! Property tests of the command parser (`pop3::command::parse`) against
//! RFC 1939 section 3: arbitrary and near-miss lines never panic and never
//! give an error text that could break the `-ERR` line; keywords are
//! case-insensitive; message numbers are read as written; PASS keeps the
//! whole rest of the line; a parsed command reads back from its wire form;
//! only one SPACE separates.
//!
//! The number of cases is `PROPTEST_CASES` (default below); a failing case
//! is shrunk and its seed kept in `fuzz_command.proptest-regressions` next
//! to this file, which is replayed first on every run.

use pop3::command::{parse, Command, MessageNumber, ParseError};
use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence},
};

/// The parser is cheap: many cases fit in a second.
const DEFAULT_CASES: u32 = 1024;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        // Next to this file: tests/ has no lib.rs for proptest's default
        // (a tree parallel to src/) to find, so say where it goes.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

const KEYWORDS: [&str; 15] = [
    "USER", "PASS", "APOP", "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP",
    "UIDL", "STLS", "AUTH",
];

/// The line a client would send for `command` (without CRLF): the keyword,
/// then each argument after one SPACE (RFC 1939 section 3).
fn wire_form(command: &Command) -> String {
    let keyword = command.keyword();
    match command {
        Command::User(user) => format!("{keyword} {user}"),
        Command::Pass(password) => format!("{keyword} {password}"),
        Command::Apop { user, digest } => format!("{keyword} {user} {digest}"),
        Command::List(Some(n)) | Command::Retr(n) | Command::Dele(n) | Command::Uidl(Some(n)) => {
            format!("{keyword} {n}")
        }
        Command::Top(n, lines) => format!("{keyword} {n} {lines}"),
        Command::Auth {
            mechanism: Some(mechanism),
            initial_response: Some(initial),
        } => format!("{keyword} {mechanism} {initial}"),
        Command::Auth {
            mechanism: Some(mechanism),
            initial_response: None,
        } => format!("{keyword} {mechanism}"),
        Command::List(None)
        | Command::Uidl(None)
        | Command::Capa
        | Command::Quit
        | Command::Stat
        | Command::Noop
        | Command::Rset
        | Command::Stls
        | Command::Auth {
            mechanism: None, ..
        } => keyword.to_string(),
    }
}

/// `word` with the case of each ASCII letter flipped where `mask` has a 1.
fn recase(word: &str, mask: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                flip_case(c)
            } else {
                c
            }
        })
        .collect()
}

fn flip_case(c: char) -> char {
    if c.is_ascii_lowercase() {
        c.to_ascii_uppercase()
    } else {
        c.to_ascii_lowercase()
    }
}

/// The keyword bytes of `line` (up to its first SPACE) with their ASCII
/// case changed where `mask` says; the rest of the line untouched.
fn recase_keyword(line: &[u8], mask: u64) -> Vec<u8> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut out = line.to_vec();
    for (i, b) in out[..end].iter_mut().enumerate() {
        if mask >> (i % 64) & 1 == 1 && b.is_ascii_alphabetic() {
            *b ^= 0x20;
        }
    }
    out
}

/// A result with the client's own text dropped from `Unknown` (it echoes
/// the keyword as sent when it cannot be one): what must not depend on
/// the keyword's case.
fn outcome(
    result: Result<Command, ParseError>,
) -> Result<Command, std::mem::Discriminant<ParseError>> {
    result.map_err(|e| std::mem::discriminant(&e))
}

/// An argument as RFC 1939 section 3 has them: printable ASCII, no SPACE.
fn argument() -> impl Strategy<Value = String> {
    "[!-~]{1,60}"
}

fn any_command() -> impl Strategy<Value = Command> {
    let n = any::<MessageNumber>();
    prop_oneof![
        argument().prop_map(Command::User),
        // RFC 1939 section 7: spaces may be part of the password.
        "[^\n]{1,80}".prop_map(Command::Pass),
        (argument(), argument()).prop_map(|(user, digest)| Command::Apop { user, digest }),
        Just(Command::Capa),
        Just(Command::Quit),
        Just(Command::Stat),
        proptest::option::of(n).prop_map(Command::List),
        n.prop_map(Command::Retr),
        n.prop_map(Command::Dele),
        Just(Command::Noop),
        Just(Command::Rset),
        (n, n).prop_map(|(n, lines)| Command::Top(n, lines)),
        proptest::option::of(n).prop_map(Command::Uidl),
    ]
}

/// A command with at least one separator that is not part of an argument
/// (PASS takes the rest of the line).
fn command_with_separators() -> impl Strategy<Value = Command> {
    any_command().prop_filter("needs a separator outside PASS", |c| {
        !matches!(c, Command::Pass(_)) && wire_form(c).contains(' ')
    })
}

/// Pieces that lines near the grammar's edges are made of: keywords in any
/// case, separators that are not one SPACE, control bytes, signs, leading
/// zeros, numbers past u32, non-ASCII digits and broken UTF-8.
fn near_miss_token() -> impl Strategy<Value = Vec<u8>> {
    let keyword = (prop::sample::select(KEYWORDS.to_vec()), any::<u64>())
        .prop_map(|(k, mask)| recase(k, mask).into_bytes());
    let fixed: Vec<&'static [u8]> = vec![
        b" ",
        b"  ",
        b"\t",
        b"\0",
        b"\r",
        b"\n",
        b"\x0b",
        b"\x7f",
        "\u{a0}".as_bytes(),
        "\u{85}".as_bytes(),
        "\u{2003}".as_bytes(),
        "\u{3000}".as_bytes(),
        b"+",
        b"-",
        b"0",
        b"1",
        b"007",
        b"4294967295",
        b"4294967296",
        b"99999999999999999999",
        b"-1",
        b"+1",
        "\u{661}".as_bytes(),
        "\u{ff11}".as_bytes(),
        b"\xff",
        b"\xc3",
        b"alice",
    ];
    prop_oneof![
        3 => keyword,
        4 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => argument().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..8),
    ]
}

fn near_miss_line() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(near_miss_token(), 0..8).prop_map(|tokens| tokens.concat())
}

/// Any bytes, near misses, and lines far past the 255-octet limit (the
/// parser is public and must not rely on framing's limit).
fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        near_miss_line(),
        (near_miss_line(), 0..4_000usize, near_miss_line()).prop_map(|(head, spaces, tail)| {
            let mut line = head;
            line.resize(line.len() + spaces, b' ');
            line.extend(tail);
            line
        }),
        (prop::sample::select(KEYWORDS.to_vec()), 1..8_000usize).prop_map(|(k, len)| format!(
            "{k} {}",
            "9".repeat(len)
        )
        .into_bytes()),
    ]
}

/// A message number as a client may write it, with what RFC 1939 makes of
/// it: its value, or `None` for a syntax error.
fn number_text() -> impl Strategy<Value = (String, Option<MessageNumber>)> {
    prop_oneof![
        (any::<MessageNumber>(), 0..4usize)
            .prop_map(|(n, zeros)| (format!("{}{n}", "0".repeat(zeros)), Some(n))),
        // Past u32: the largest message number a session can have.
        ((MessageNumber::MAX as u64 + 1)..=u64::MAX).prop_map(|n| (n.to_string(), None)),
        "[1-9][0-9]{10,30}".prop_map(|digits| (digits, None)),
        (prop::sample::select(vec!["+", "-"]), any::<MessageNumber>())
            .prop_map(|(sign, n)| (format!("{sign}{n}"), None)),
        // Non-ASCII digits (Arabic-Indic, fullwidth) are not decimal here.
        (
            any::<MessageNumber>(),
            prop::sample::select(vec!["\u{661}", "\u{ff11}"])
        )
            .prop_map(|(n, digit)| (format!("{n}{digit}"), None)),
        "[0-9]{0,3}[a-zA-Z.,_][0-9]{0,3}".prop_map(|text| (text, None)),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the line, the parser answers (no panic), and an error's
    /// text, which goes into the `-ERR` line, is short printable ASCII: no
    /// client byte can end the reply line early or forge a second one.
    #[test]
    fn any_line_gives_a_command_or_a_printable_error(line in any_line()) {
        match parse(&line) {
            // What a command is made of: a_parsed_line_is_its_wire_form.
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                prop_assert!(
                    text.len() <= 80 && text.bytes().all(|b| (b' '..=b'~').contains(&b)),
                    "{line:?} gave error text {text:?}"
                );
            }
        }
    }

    /// A line that parses is its command's wire form up to the keyword's
    /// case, a number's leading zeros and the trailing spaces the parser
    /// tolerates: nothing of the line is lost or invented (PASS keeps the
    /// rest of the line as it is). And that wire form reads back the same.
    #[test]
    fn a_parsed_line_is_its_wire_form(line in any_line()) {
        let Ok(command) = parse(&line) else { return Ok(()) };
        let wire = wire_form(&command);
        prop_assert_eq!(parse(wire.as_bytes()), Ok(command.clone()), "from {:?}", line);
        let Ok(line) = String::from_utf8(line.clone()) else {
            return Err(TestCaseError::fail(format!("non-UTF-8 line {line:?} gave {command:?}")));
        };
        let (keyword, rest) = line.split_once(' ').unwrap_or((&line, ""));
        prop_assert!(keyword.eq_ignore_ascii_case(command.keyword()), "{:?} gave {:?}", line, command);
        if let Command::Pass(password) = &command {
            prop_assert_eq!(password, rest);
            return Ok(());
        }
        let sent: Vec<&str> = line.trim_end_matches(' ').split(' ').skip(1).collect();
        let read: Vec<&str> = wire.split(' ').skip(1).collect();
        prop_assert_eq!(sent.len(), read.len(), "{:?} gave {:?}", line, command);
        for (i, (sent, read)) in sent.iter().zip(&read).enumerate() {
            let same_number = sent.bytes().all(|b| b.is_ascii_digit())
                && sent.trim_start_matches('0') == read.trim_start_matches('0');
            // RFC 4422 section 3.1: mechanism names are matched without
            // regard to case (the parser writes them upper case); the
            // initial response after it is base64, and keeps its case.
            let same_mechanism = matches!(command, Command::Auth { .. })
                && i == 0
                && sent.eq_ignore_ascii_case(read);
            prop_assert!(
                sent == read || same_number || same_mechanism,
                "{:?} gave {:?}", line, command
            );
        }
    }

    /// RFC 1939 section 3: "a case-insensitive keyword".
    #[test]
    fn keywords_are_case_insensitive(line in any_line(), mask in any::<u64>()) {
        let recased = recase_keyword(&line, mask);
        prop_assert_eq!(outcome(parse(&line)), outcome(parse(&recased)), "{:?} and {:?}", line, recased);
    }

    /// Every command, written as RFC 1939 writes it with its keyword in any
    /// case, is read as exactly that command.
    #[test]
    fn every_command_reads_back_from_its_wire_form(command in any_command(), mask in any::<u64>()) {
        let wire = wire_form(&command);
        let keyword_len = command.keyword().len();
        let line = format!("{}{}", recase(&wire[..keyword_len], mask), &wire[keyword_len..]);
        prop_assert_eq!(parse(line.as_bytes()), Ok(command), "{:?}", line);
    }

    /// A message number is the decimal value written, leading zeros and
    /// all; a sign, a non-ASCII digit or a value past u32 is a syntax
    /// error, never a wrapped or clamped number.
    #[test]
    fn message_numbers_are_read_as_written(
        keyword in prop::sample::select(vec!["LIST", "RETR", "DELE", "UIDL", "TOP"]),
        (text, value) in number_text(),
        (lines_text, lines_value) in number_text(),
    ) {
        let line = if keyword == "TOP" {
            format!("{keyword} {text} {lines_text}")
        } else {
            format!("{keyword} {text}")
        };
        let expected = match (keyword, value, lines_value) {
            ("LIST", Some(n), _) => Some(Command::List(Some(n))),
            ("RETR", Some(n), _) => Some(Command::Retr(n)),
            ("DELE", Some(n), _) => Some(Command::Dele(n)),
            ("UIDL", Some(n), _) => Some(Command::Uidl(Some(n))),
            ("TOP", Some(n), Some(lines)) => Some(Command::Top(n, lines)),
            _ => None,
        };
        match expected {
            Some(command) => prop_assert_eq!(parse(line.as_bytes()), Ok(command), "{:?}", line),
            None => prop_assert!(
                matches!(parse(line.as_bytes()), Err(ParseError::Syntax(_))),
                "{:?} gave {:?}", line, parse(line.as_bytes())
            ),
        }
    }

    /// RFC 1939 section 7: "a POP3 server may treat spaces in the argument
    /// as part of the password" - and so it keeps everything after
    /// "PASS ", leading and trailing spaces, tabs and all.
    #[test]
    fn pass_keeps_the_whole_rest_of_the_line(
        password in "[ \t]{0,3}[^\n]{1,80}[ \t]{0,3}",
        mask in any::<u64>(),
    ) {
        let line = format!("{} {password}", recase("PASS", mask));
        prop_assert_eq!(parse(line.as_bytes()), Ok(Command::Pass(password)));
    }

    /// RFC 1939 section 3: keywords and arguments "are each separated by a
    /// single SPACE character". Two spaces, a tab or a Unicode space in
    /// place of any one separator is a malformed command (PASS aside, whose
    /// argument is the rest of the line).
    #[test]
    fn only_a_single_space_separates(
        command in command_with_separators(),
        which in any::<prop::sample::Index>(),
        separator in prop::sample::select(vec!["  ", "\t", "\x0b", "\x0c", "\u{a0}", "\u{85}", "\u{2003}", "\u{3000}"]),
    ) {
        let wire = wire_form(&command);
        let spaces: Vec<usize> = wire.match_indices(' ').map(|(i, _)| i).collect();
        let at = spaces[which.index(spaces.len())];
        let line = format!("{}{separator}{}", &wire[..at], &wire[at + 1..]);
        prop_assert!(parse(line.as_bytes()).is_err(), "{:?} gave {:?}", line, parse(line.as_bytes()));
    }
}
