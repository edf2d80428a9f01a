//! What a generated session is: a login (most of the time), batches of
//! lines sent at once (RFC 2449 pipelining), each line a command with
//! random arguments or a malformed one, and the way the client leaves.
//! Malformed lines are malformed by construction (RFC 1939 section 3 and
//! RFC 2449 section 4), not by asking the parser.

use std::fmt;

use proptest::{prelude::*, sample::Index};

use super::{
    fixture::User,
    model::{Command, Line, Model},
};

/// Bytes, shown escaped in a failing case.
#[derive(Clone)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", super::client::shown(&self.0, 120))
    }
}

#[derive(Clone, Debug)]
pub struct Script {
    /// Logins as the first user with these (random, so wrong) passwords
    /// before `login`; a third failure closes the session.
    pub failed_logins: Vec<String>,
    pub login: Option<Login>,
    pub batches: Vec<Batch>,
    pub ending: Ending,
}

#[derive(Clone, Copy, Debug)]
pub enum Login {
    /// USER and PASS, pipelined, for the fixture's user at this index,
    /// with the keywords' case changed by the mask.
    UserPass(usize, u64),
    Apop(usize, u64),
}

#[derive(Clone, Debug)]
pub struct Batch {
    pub items: Vec<Item>,
    /// Where the batch's bytes are cut into writes a moment apart, so that
    /// the server reads lines in pieces.
    pub cuts: Vec<Index>,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: Kind,
    /// Which letters of the keyword change case (RFC 1939: keywords are
    /// case-insensitive).
    pub case: u64,
    /// Ends in a bare LF, not CRLF (accepted, as by most servers).
    pub bare_lf: bool,
}

#[derive(Clone, Debug)]
pub enum Kind {
    Command(Choice),
    /// A known keyword with arguments RFC 1939 does not allow.
    WrongArguments(&'static str),
    /// A message number or line count that is not one.
    BadNumber {
        keyword: &'static str,
        text: &'static str,
    },
    /// A keyword RFC 1939 does not define.
    Unknown(String),
    /// A line that does not start with a letter: no keyword at all (empty,
    /// control bytes, NUL, non-UTF-8, ...).
    NoKeyword(Bytes),
    /// Longer than RFC 2449's 255 octets, line end included.
    TooLong(Bytes),
    /// USER with a name making the line exactly 255 octets with its line
    /// end (a command) or 256 (too long).
    AtTheLimit {
        over: bool,
    },
}

#[derive(Clone, Debug)]
pub enum Choice {
    User(Name),
    /// PASS with the password of the name USER gave, if it has one.
    RightPass,
    Pass(String),
    Apop {
        user: Name,
        right: bool,
        wrong_digest: String,
    },
    /// AUTH PLAIN with the initial response (RFC 5034): the right
    /// password of a known user, or `wrong`.
    AuthPlain {
        user: Name,
        right: bool,
        wrong: String,
    },
    Capa,
    Quit,
    Stat,
    List(Option<Number>),
    Uidl(Option<Number>),
    Retr(Number),
    Top(Number, Number),
    Dele(Number),
    Noop,
    Rset,
}

#[derive(Clone, Debug)]
pub enum Name {
    Known(usize),
    Other(String),
}

/// A number as the client writes it: its value, with leading zeros.
#[derive(Clone, Copy, Debug)]
pub struct Number {
    value: u32,
    zeros: usize,
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", "0".repeat(self.zeros), self.value)
    }
}

#[derive(Clone, Debug)]
pub enum Ending {
    Quit {
        case: u64,
    },
    /// Closes right after the last reply.
    Drop,
    /// Half-closes (FIN) and waits for the server to close.
    HalfClose,
    /// A line without its end, then FIN: never answered.
    FragmentThenHalfClose(Bytes),
    FragmentThenDrop(Bytes),
    /// More lines, replies never read, then close.
    UnreadThenDrop(Vec<Item>),
}

/// Every keyword the server knows: an unknown line is none of them (a bare
/// `AUTH` lists mechanisms, `AUTH PLAIN` waits for a response line).
const KEYWORDS: [&str; 15] = [
    "USER", "PASS", "APOP", "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP",
    "UIDL", "AUTH", "STLS",
];

/// Each malformed: a wrong count of arguments, or separators that are not
/// one SPACE. (A trailing space is tolerated, so none ends in one.)
const WRONG_ARGUMENTS: [&str; 22] = [
    "RETR",
    "DELE",
    "TOP",
    "TOP 1",
    "TOP 1 2 3",
    "LIST 1 2",
    "UIDL 1 2",
    "STAT 1",
    "NOOP x",
    "RSET x",
    "CAPA x",
    "QUIT x",
    "USER",
    "PASS",
    "APOP",
    "APOP alice",
    "USER a b",
    "RETR  1",
    "RETR\t1",
    "USER\talice",
    "LIST\u{a0}1",
    "APOP alice  0123456789abcdef0123456789abcdef",
];

/// Not a decimal message number in range: signs, past u32, hex, decimals,
/// non-ASCII digits.
const BAD_NUMBERS: [&str; 11] = [
    "-1",
    "+1",
    "-0",
    "4294967296",
    "99999999999999999999",
    "1x",
    "0x1",
    "1.0",
    "1e3",
    "\u{661}",
    "\u{ff11}",
];

fn number() -> impl Strategy<Value = Number> {
    // Mostly messages that exist (alice has 4, bob 1), and 0 and past the
    // end; sometimes anything up to u32::MAX.
    let value = prop_oneof![10 => 1u32..=4, 3 => 0u32..=6, 1 => Just(u32::MAX), 1 => any::<u32>()];
    let zeros = prop_oneof![6 => Just(0usize), 1 => 1usize..4];
    (value, zeros).prop_map(|(value, zeros)| Number { value, zeros })
}

fn line_count() -> impl Strategy<Value = Number> {
    let value = prop_oneof![6 => 0u32..=4, 1 => 5u32..2000, 1 => Just(u32::MAX)];
    value.prop_map(|value| Number { value, zeros: 0 })
}

fn name(users: usize) -> impl Strategy<Value = Name> {
    prop_oneof![
        4 => (0..users).prop_map(Name::Known),
        1 => "[!-~]{1,30}".prop_map(Name::Other),
    ]
}

fn choice(users: usize) -> impl Strategy<Value = Choice> {
    prop_oneof![
        3 => Just(Choice::Stat),
        4 => proptest::option::of(number()).prop_map(Choice::List),
        4 => proptest::option::of(number()).prop_map(Choice::Uidl),
        4 => number().prop_map(Choice::Retr),
        4 => (number(), line_count()).prop_map(|(n, lines)| Choice::Top(n, lines)),
        6 => number().prop_map(Choice::Dele),
        2 => Just(Choice::Rset),
        2 => Just(Choice::Noop),
        2 => Just(Choice::Capa),
        1 => Just(Choice::Quit),
        2 => name(users).prop_map(Choice::User),
        2 => Just(Choice::RightPass),
        1 => "[ -~]{1,30}".prop_map(Choice::Pass),
        2 => (name(users), any::<bool>(), "[0-9a-f]{32}").prop_map(|(user, right, wrong_digest)| {
            Choice::Apop { user, right, wrong_digest }
        }),
        2 => (name(users), any::<bool>(), "[ -~]{1,30}").prop_map(|(user, right, wrong)| {
            Choice::AuthPlain { user, right, wrong }
        }),
    ]
}

/// Any byte but LF (which would end the line).
fn line_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_map(|b| if b == b'\n' { b'x' } else { b })
}

fn kind(users: usize) -> impl Strategy<Value = Kind> {
    let unknown = "[A-Za-z]{1,8}( [!-~]{1,12}){0,2}".prop_filter("not a keyword", |line| {
        let keyword = line.split(' ').next().unwrap_or_default();
        !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(keyword))
    });
    let no_keyword = prop_oneof![
        1 => Just(Vec::new()),
        6 => (
            line_byte().prop_filter("not a letter", |b| !b.is_ascii_alphabetic()),
            prop::collection::vec(line_byte(), 0..120),
        )
            .prop_map(|(first, rest)| [vec![first], rest].concat()),
    ];
    let too_long = prop_oneof![
        8 => prop::collection::vec(line_byte(), 255..1200),
        1 => prop::collection::vec(line_byte(), 5000..20_000),
    ];
    prop_oneof![
        12 => choice(users).prop_map(Kind::Command),
        2 => prop::sample::select(WRONG_ARGUMENTS.to_vec()).prop_map(Kind::WrongArguments),
        2 => (
            prop::sample::select(vec!["LIST", "UIDL", "RETR", "DELE", "TOP", "TOP 1"]),
            prop::sample::select(BAD_NUMBERS.to_vec()),
        )
            .prop_map(|(keyword, text)| Kind::BadNumber { keyword, text }),
        1 => unknown.prop_map(Kind::Unknown),
        2 => no_keyword.prop_map(|b| Kind::NoKeyword(Bytes(b))),
        1 => too_long.prop_map(|b| Kind::TooLong(Bytes(b))),
        1 => any::<bool>().prop_map(|over| Kind::AtTheLimit { over }),
    ]
}

fn item(users: usize) -> impl Strategy<Value = Item> {
    (kind(users), any::<u64>(), prop::bool::weighted(0.2)).prop_map(|(kind, case, bare_lf)| Item {
        kind,
        case,
        bare_lf,
    })
}

fn batch(users: usize) -> impl Strategy<Value = Batch> {
    let cuts = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec(any::<Index>(), 1..3),
    ];
    (prop::collection::vec(item(users), 1..6), cuts).prop_map(|(items, cuts)| Batch { items, cuts })
}

fn fragment() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(line_byte(), 1..400).prop_map(Bytes)
}

fn ending(users: usize) -> impl Strategy<Value = Ending> {
    let unread = prop::collection::vec(
        item(users).prop_filter("QUIT would remove messages", |i| {
            !matches!(i.kind, Kind::Command(Choice::Quit))
        }),
        1..4,
    );
    prop_oneof![
        6 => any::<u64>().prop_map(|case| Ending::Quit { case }),
        2 => Just(Ending::Drop),
        2 => Just(Ending::HalfClose),
        1 => fragment().prop_map(Ending::FragmentThenHalfClose),
        1 => fragment().prop_map(Ending::FragmentThenDrop),
        2 => unread.prop_map(Ending::UnreadThenDrop),
    ]
}

pub fn script(users: usize) -> impl Strategy<Value = Script> {
    let login = prop_oneof![
        1 => Just(None),
        4 => (0..users, any::<u64>()).prop_map(|(u, case)| Some(Login::UserPass(u, case))),
        2 => (0..users, any::<u64>()).prop_map(|(u, case)| Some(Login::Apop(u, case))),
    ];
    let failed_logins = prop_oneof![
        6 => Just(Vec::new()),
        1 => prop::collection::vec("[ -~]{1,20}", 1..=3),
    ];
    let batches = prop::collection::vec(batch(users), 0..6);
    (failed_logins, login, batches, ending(users)).prop_map(
        |(failed_logins, login, batches, ending)| Script {
            failed_logins,
            login,
            batches,
            ending,
        },
    )
}

impl Login {
    /// The login as a batch of lines.
    fn batch(self) -> Batch {
        let item = |choice, case| Item {
            kind: Kind::Command(choice),
            case,
            bare_lf: false,
        };
        let items = match self {
            Login::UserPass(user, case) => vec![
                item(Choice::User(Name::Known(user)), case),
                item(Choice::RightPass, case >> 4),
            ],
            Login::Apop(user, case) => vec![item(
                Choice::Apop {
                    user: Name::Known(user),
                    right: true,
                    wrong_digest: String::new(),
                },
                case,
            )],
        };
        Batch {
            items,
            cuts: Vec::new(),
        }
    }
}

impl Script {
    /// The failed logins and the login, as batches of lines.
    pub fn login_batches(&self) -> Vec<Batch> {
        let item = |choice| Item {
            kind: Kind::Command(choice),
            case: 0,
            bare_lf: false,
        };
        let failed = self.failed_logins.iter().map(|password| Batch {
            items: vec![
                item(Choice::User(Name::Known(0))),
                item(Choice::Pass(password.clone())),
            ],
            cuts: Vec::new(),
        });
        failed.chain(self.login.map(Login::batch)).collect()
    }
}

impl Ending {
    pub fn quit(case: u64) -> Item {
        Item {
            kind: Kind::Command(Choice::Quit),
            case,
            bare_lf: false,
        }
    }
}

impl Item {
    /// The bytes to send, and what the line is to the model. The right
    /// credentials come from the model's state and the fixture.
    pub fn realize(&self, model: &Model, users: &[User]) -> (Vec<u8>, Line) {
        let name_of = |name: &Name| match name {
            Name::Known(i) => users[*i].name.to_string(),
            Name::Other(other) => other.clone(),
        };
        let ending: &[u8] = if self.bare_lf { b"\n" } else { b"\r\n" };
        let (text, line) = match &self.kind {
            Kind::Command(choice) => {
                let (text, command) = match choice {
                    Choice::User(name) => {
                        let name = name_of(name);
                        (format!("USER {name}"), Command::User(name))
                    }
                    Choice::RightPass => {
                        let password = model
                            .pending_user()
                            .and_then(|pending| users.iter().find(|u| u.name == pending))
                            .map_or(users[0].password, |u| u.password);
                        (format!("PASS {password}"), Command::Pass(password.into()))
                    }
                    Choice::Pass(password) => {
                        (format!("PASS {password}"), Command::Pass(password.clone()))
                    }
                    Choice::Apop {
                        user,
                        right,
                        wrong_digest,
                    } => {
                        let name = name_of(user);
                        let digest = match (right, user) {
                            (true, Name::Known(i)) => model.apop_digest(users[*i].password),
                            _ => wrong_digest.clone(),
                        };
                        (
                            format!("APOP {name} {digest}"),
                            Command::Apop { user: name, digest },
                        )
                    }
                    Choice::AuthPlain { user, right, wrong } => {
                        use base64ct::{Base64, Encoding};
                        let name = name_of(user);
                        let password = match (right, user) {
                            (true, Name::Known(i)) => users[*i].password.to_string(),
                            _ => wrong.clone(),
                        };
                        let message = format!("\0{name}\0{password}");
                        (
                            format!("AUTH PLAIN {}", Base64::encode_string(message.as_bytes())),
                            Command::AuthPlain {
                                user: name,
                                password,
                            },
                        )
                    }
                    Choice::Capa => ("CAPA".into(), Command::Capa),
                    Choice::Quit => ("QUIT".into(), Command::Quit),
                    Choice::Stat => ("STAT".into(), Command::Stat),
                    Choice::List(None) => ("LIST".into(), Command::List(None)),
                    Choice::List(Some(n)) => (format!("LIST {n}"), Command::List(Some(n.value))),
                    Choice::Uidl(None) => ("UIDL".into(), Command::Uidl(None)),
                    Choice::Uidl(Some(n)) => (format!("UIDL {n}"), Command::Uidl(Some(n.value))),
                    Choice::Retr(n) => (format!("RETR {n}"), Command::Retr(n.value)),
                    Choice::Top(n, lines) => (
                        format!("TOP {n} {lines}"),
                        Command::Top(n.value, lines.value),
                    ),
                    Choice::Dele(n) => (format!("DELE {n}"), Command::Dele(n.value)),
                    Choice::Noop => ("NOOP".into(), Command::Noop),
                    Choice::Rset => ("RSET".into(), Command::Rset),
                };
                (text.into_bytes(), Line::Command(command))
            }
            Kind::WrongArguments(text) => (text.as_bytes().to_vec(), Line::Malformed),
            Kind::BadNumber { keyword, text } => {
                let line = if *keyword == "TOP" {
                    format!("TOP {text} 1")
                } else {
                    format!("{keyword} {text}")
                };
                (line.into_bytes(), Line::Malformed)
            }
            Kind::Unknown(text) => (text.as_bytes().to_vec(), Line::Malformed),
            Kind::NoKeyword(bytes) | Kind::TooLong(bytes) => (bytes.0.clone(), Line::Malformed),
            Kind::AtTheLimit { over } => {
                // RFC 2449 section 4: 255 octets including the line end.
                let name = "n".repeat(255 - ending.len() - "USER ".len() + usize::from(*over));
                let line = if *over {
                    Line::Malformed
                } else {
                    Line::Command(Command::User(name.clone()))
                };
                (format!("USER {name}").into_bytes(), line)
            }
        };
        let mut bytes = recase_keyword(text, self.case);
        bytes.extend_from_slice(ending);
        (bytes, line)
    }
}

/// The line with the case of its keyword's letters (up to the first
/// SPACE) flipped where `mask` says.
fn recase_keyword(mut line: Vec<u8>, mask: u64) -> Vec<u8> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    for (i, b) in line[..end].iter_mut().enumerate() {
        if mask >> (i % 64) & 1 == 1 && b.is_ascii_alphabetic() {
            *b ^= 0x20;
        }
    }
    line
}
