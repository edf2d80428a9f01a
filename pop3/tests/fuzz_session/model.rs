//! What RFC 1939 says each line of a session must get, kept apart from the
//! server: the AUTHORIZATION and TRANSACTION states, the marks of DELE,
//! and what QUIT removes.

use std::collections::BTreeSet;

use md5::{Digest, Md5};

use super::fixture::User;

/// A line as the client sent it, as far as the model needs to know it.
#[derive(Clone, Debug)]
pub enum Line {
    /// Not a command (RFC 1939 section 3 grammar, or longer than RFC 2449
    /// section 4 allows): `-ERR`, and the session goes on.
    Malformed,
    Command(Command),
}

#[derive(Clone, Debug)]
pub enum Command {
    User(String),
    Pass(String),
    Apop { user: String, digest: String },
    AuthPlain { user: String, password: String },
    Capa,
    Quit,
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u32),
    Dele(u32),
    Noop,
    Rset,
}

/// What the reply to one line must be.
#[derive(Debug)]
pub struct Expect {
    pub positive: bool,
    /// The whole status line (without CRLF), where RFC 1939 fixes it.
    pub exact: Option<String>,
    pub body: Body,
}

/// The multi-line part of a reply, after the status line.
#[derive(Debug)]
pub enum Body {
    None,
    /// A multi-line reply whose lines are not fixed here (CAPA).
    Any,
    /// A multi-line reply whose un-stuffed content is exactly this.
    Exact(Vec<u8>),
}

impl Expect {
    fn err() -> Self {
        Self::status(false)
    }

    fn ok() -> Self {
        Self::status(true)
    }

    fn status(positive: bool) -> Self {
        Self {
            positive,
            exact: None,
            body: Body::None,
        }
    }

    fn exact(line: String) -> Self {
        Self {
            exact: Some(line),
            ..Self::ok()
        }
    }

    fn body(body: Body) -> Self {
        Self { body, ..Self::ok() }
    }

    /// A multi-line +OK reply holding exactly `body`.
    pub fn listing(body: Vec<u8>) -> Self {
        Self::body(Body::Exact(body))
    }

    /// A single-line +OK reply.
    pub fn positive() -> Self {
        Self::ok()
    }
}

/// Failed logins after which the server closes (its default).
const MAX_LOGIN_FAILURES: u32 = 3;
/// Lines that are not commands after which a server closes a connection
/// that has not logged in (pop3::session::MAX_BAD_COMMANDS).
const MAX_BAD_COMMANDS: u32 = 10;

enum State {
    Authorization {
        /// The name of an accepted USER, waiting for PASS.
        user: Option<String>,
        failures: u32,
    },
    Transaction {
        user: usize,
        deleted: BTreeSet<usize>,
    },
    Closed,
}

pub struct Model<'a> {
    users: &'a [User],
    /// The greeting's timestamp, for APOP.
    timestamp: String,
    state: State,
    /// Lines that were not commands, before login.
    bad_commands: u32,
    /// What QUIT removed: the user's index and the messages' indices.
    pub removed: Option<(usize, BTreeSet<usize>)>,
}

impl<'a> Model<'a> {
    pub fn new(users: &'a [User], timestamp: &str) -> Self {
        Self {
            users,
            timestamp: timestamp.to_string(),
            state: State::Authorization {
                user: None,
                failures: 0,
            },
            bad_commands: 0,
            removed: None,
        }
    }

    /// The name given by USER and not yet used by PASS.
    pub fn pending_user(&self) -> Option<&str> {
        match &self.state {
            State::Authorization { user, .. } => user.as_deref(),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The APOP digest of `user` for this session (RFC 1939 section 7:
    /// MD5 of the timestamp and the secret, lower-case hex).
    pub fn apop_digest(&self, secret: &str) -> String {
        Md5::new()
            .chain_update(self.timestamp.as_bytes())
            .chain_update(secret.as_bytes())
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The reply `line` must get; the model moves on as the server must.
    pub fn step(&mut self, line: &Line) -> Expect {
        let Line::Command(command) = line else {
            if let State::Authorization { .. } = self.state {
                self.bad_commands += 1;
                if self.bad_commands >= MAX_BAD_COMMANDS {
                    self.state = State::Closed;
                }
            }
            return Expect::err();
        };
        if let Command::Capa = command {
            // RFC 2449 section 5: in AUTHORIZATION and TRANSACTION.
            return Expect::body(Body::Any);
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (state, expect) = match state {
            State::Authorization { user, failures } => self.authorization(user, failures, command),
            State::Transaction { user, deleted } => self.transaction(user, deleted, command),
            State::Closed => panic!("the harness sends nothing after the session closed"),
        };
        self.state = state;
        expect
    }

    fn authorization(
        &mut self,
        user: Option<String>,
        failures: u32,
        command: &Command,
    ) -> (State, Expect) {
        let stay = |user| State::Authorization { user, failures };
        match (user, command) {
            (_, Command::User(name)) => {
                // RFC 1939 allows -ERR for an unknown name; the issue wants
                // no user enumeration, so every name gets +OK.
                (stay(Some(name.clone())), Expect::ok())
            }
            (None, Command::Pass(_)) => (stay(None), Expect::err()),
            (Some(name), Command::Pass(password)) => {
                let right = self
                    .users
                    .iter()
                    .position(|u| u.name == name && u.password == password);
                login_or_fail(right, failures)
            }
            (_, Command::Apop { user: name, digest }) => {
                let right = self
                    .users
                    .iter()
                    .position(|u| u.name == *name && *digest == self.apop_digest(u.password));
                login_or_fail(right, failures)
            }
            // RFC 5034 with RFC 4616: the same check as USER/PASS, in one
            // line; a USER given before is forgotten either way.
            (
                _,
                Command::AuthPlain {
                    user: name,
                    password,
                },
            ) => {
                let right = self
                    .users
                    .iter()
                    .position(|u| u.name == *name && u.password == password);
                login_or_fail(right, failures)
            }
            // RFC 1939 section 6: QUIT in AUTHORIZATION ends the session
            // without entering UPDATE.
            (_, Command::Quit) => (State::Closed, Expect::ok()),
            (user, _) => (stay(user), Expect::err()),
        }
    }

    fn transaction(
        &mut self,
        user: usize,
        mut deleted: BTreeSet<usize>,
        command: &Command,
    ) -> (State, Expect) {
        let users = self.users;
        let messages = &users[user].messages;
        let live = |deleted: &BTreeSet<usize>, n: u32| {
            let i = (n as usize).checked_sub(1)?;
            (i < messages.len() && !deleted.contains(&i)).then_some(i)
        };
        let expect = match command {
            Command::Stat => {
                let (count, size) = messages
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !deleted.contains(i))
                    .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.wire.len()));
                Expect::exact(format!("+OK {count} {size}"))
            }
            Command::List(None) | Command::Uidl(None) => {
                let listing: String = messages
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !deleted.contains(i))
                    .map(|(i, m)| match command {
                        Command::List(_) => format!("{} {}\r\n", i + 1, m.wire.len()),
                        _ => format!("{} {}\r\n", i + 1, m.uid),
                    })
                    .collect();
                Expect::body(Body::Exact(listing.into_bytes()))
            }
            Command::List(Some(n)) => match live(&deleted, *n) {
                Some(i) => Expect::exact(format!("+OK {n} {}", messages[i].wire.len())),
                None => Expect::err(),
            },
            Command::Uidl(Some(n)) => match live(&deleted, *n) {
                Some(i) => Expect::exact(format!("+OK {n} {}", messages[i].uid)),
                None => Expect::err(),
            },
            Command::Retr(n) => match live(&deleted, *n) {
                Some(i) => Expect::body(Body::Exact(messages[i].wire.clone())),
                None => Expect::err(),
            },
            Command::Top(n, lines) => match live(&deleted, *n) {
                Some(i) => Expect::body(Body::Exact(top(&messages[i].wire, *lines))),
                None => Expect::err(),
            },
            Command::Dele(n) => match live(&deleted, *n) {
                Some(i) => {
                    deleted.insert(i);
                    Expect::ok()
                }
                None => Expect::err(),
            },
            Command::Rset => {
                deleted.clear();
                Expect::ok()
            }
            Command::Noop => Expect::ok(),
            // RFC 1939 section 6: the UPDATE state removes the marked
            // messages.
            Command::Quit => {
                self.removed = Some((user, deleted));
                return (State::Closed, Expect::ok());
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::AuthPlain { .. } => Expect::err(),
            Command::Capa => unreachable!("answered in every state by step"),
        };
        (State::Transaction { user, deleted }, expect)
    }
}

/// A login with the right secret for the user at `right`, or a failed
/// one: RFC 1939 section 7 starts over with USER after a failure; the
/// server closes after its third.
fn login_or_fail(right: Option<usize>, failures: u32) -> (State, Expect) {
    match right {
        Some(user) => (
            State::Transaction {
                user,
                deleted: BTreeSet::new(),
            },
            Expect::ok(),
        ),
        None if failures + 1 >= MAX_LOGIN_FAILURES => (State::Closed, Expect::err()),
        None => (
            State::Authorization {
                user: None,
                failures: failures + 1,
            },
            Expect::err(),
        ),
    }
}

/// RFC 1939 section 7, TOP: "the headers of the message, the blank line
/// separating the headers from the body, and then the number of lines of
/// the indicated message's body"; a message without a blank line is all
/// header.
fn top(wire: &[u8], lines: u32) -> Vec<u8> {
    let all: Vec<&[u8]> = wire.split_inclusive(|&b| b == b'\n').collect();
    let Some(blank) = all.iter().position(|l| *l == b"\r\n") else {
        return wire.to_vec();
    };
    let end = (blank + 1).saturating_add(lines as usize).min(all.len());
    all[..end].concat()
}
