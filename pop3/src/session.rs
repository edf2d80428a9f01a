//! One POP3 session as a state machine: lines in, replies out. The server
//! owns the socket, the timers and the delays; this owns the protocol.
//!
//! RFC 1939 section 3: the session goes through AUTHORIZATION, then
//! TRANSACTION once the client has identified itself and the maildrop is
//! locked, then UPDATE when the client sends QUIT. Deletions are applied in
//! UPDATE only: "If a session terminates for some reason other than a
//! client-issued QUIT command, the POP3 session does NOT enter the UPDATE
//! state and MUST not remove any messages from the maildrop."

use std::{io, net::IpAddr, sync::Arc};

use log::{error, info, warn};

use crate::{
    auth::apop,
    command::{self, Command, MessageNumber},
    framing::Line,
    maildrop::{Maildrop, MaildropStore, MessageInfo, OpenError},
    reply::{pair, top_of, ReplyBuffer, RespCode},
    ApopSecret, Authenticator, GrantSink,
};

/// What the session's dependencies and settings are.
#[derive(Clone)]
pub struct SessionContext {
    pub auth: Arc<dyn Authenticator>,
    pub store: Arc<dyn MaildropStore>,
    pub grants: Arc<dyn GrantSink>,
    /// The client's address, normalised (IPv4-mapped IPv6 is IPv4).
    pub peer: IpAddr,
    /// Failed logins before the connection is closed.
    pub max_login_failures: u32,
}

/// What the server does after the replies of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A login failed: send the replies only after the failure delay.
    LoginFailed,
    /// Too many failures: delay, send, close.
    LoginFailedClose,
    /// Send the replies and close.
    Close,
}

enum State {
    Authorization {
        user: Option<String>,
        failures: u32,
    },
    Transaction {
        user: String,
        /// `None` only while a blocking call has it.
        maildrop: Option<Box<dyn Maildrop>>,
        /// The list fixed at login (shared, so commands need no copy).
        messages: Arc<[MessageInfo]>,
        deleted: Vec<bool>,
    },
    Closed,
}

pub struct Session {
    ctx: SessionContext,
    /// The APOP timestamp of this session's greeting.
    timestamp: String,
    state: State,
}

const CAPABILITIES: [&str; 7] = [
    "TOP",
    "UIDL",
    "USER",
    "RESP-CODES",
    "AUTH-RESP-CODE",
    "PIPELINING",
    "IMPLEMENTATION smtp-gate",
];

enum Method {
    UserPass,
    Apop,
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Self::UserPass => "USER/PASS",
            Self::Apop => "APOP",
        }
    }
}

impl Session {
    pub fn new(ctx: SessionContext, timestamp: String) -> Self {
        Self {
            ctx,
            timestamp,
            state: State::Authorization {
                user: None,
                failures: 0,
            },
        }
    }

    /// The greeting, with the APOP timestamp (RFC 1939 section 7).
    pub fn greeting(&self, out: &mut ReplyBuffer) {
        out.ok(&format!("smtp-gate POP3 server ready {}", self.timestamp));
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Handles one line and appends its reply to `out`.
    pub async fn handle(&mut self, line: Line, out: &mut ReplyBuffer) -> Flow {
        let bytes = match line {
            Line::Command(bytes) => bytes,
            Line::TooLong => {
                out.err(None, "line too long (RFC 2449: at most 255 octets)");
                return Flow::Continue;
            }
        };
        let command = match command::parse(&bytes) {
            Ok(command) => command,
            Err(e) => {
                out.err(None, &e.to_string());
                return Flow::Continue;
            }
        };
        if !self.allowed(&command) {
            out.err(
                None,
                &format!("{} is not valid in this state", command.keyword()),
            );
            return Flow::Continue;
        }
        match command {
            Command::Capa => {
                out.ok_lines("capability list follows", CAPABILITIES);
                Flow::Continue
            }
            Command::Quit => self.quit(out).await,
            Command::User(user) => {
                // RFC 1939 allows -ERR for an unknown name; answering +OK
                // either way does not tell a prober which names exist.
                self.state = State::Authorization {
                    user: Some(user),
                    failures: self.failures(),
                };
                out.ok("send PASS");
                Flow::Continue
            }
            Command::Pass(password) => self.pass(password, out).await,
            Command::Apop { user, digest } => self.apop(user, digest, out).await,
            other => self.transaction(other, out).await,
        }
    }

    /// The one check of each command against the state.
    fn allowed(&self, command: &Command) -> bool {
        match (&self.state, command) {
            (_, Command::Capa | Command::Quit) => !self.is_closed(),
            (
                State::Authorization { .. },
                Command::User(_) | Command::Pass(_) | Command::Apop { .. },
            ) => true,
            (State::Authorization { .. }, _) => false,
            (
                State::Transaction { .. },
                Command::User(_) | Command::Pass(_) | Command::Apop { .. },
            ) => false,
            (State::Transaction { .. }, _) => true,
            (State::Closed, _) => false,
        }
    }

    fn failures(&self) -> u32 {
        match self.state {
            State::Authorization { failures, .. } => failures,
            _ => 0,
        }
    }

    async fn pass(&mut self, password: String, out: &mut ReplyBuffer) -> Flow {
        let State::Authorization {
            user: Some(user), ..
        } = &self.state
        else {
            out.err(None, "USER first");
            return Flow::Continue;
        };
        let user = user.clone();
        let auth = Arc::clone(&self.ctx.auth);
        let check_user = user.clone();
        let verified = off_runtime(move || auth.verify_password(&check_user, &password))
            .await
            .unwrap_or(false);
        if verified {
            self.login(user, Method::UserPass, out).await
        } else {
            self.fail(
                &user,
                Method::UserPass,
                "invalid user name or password",
                out,
            )
        }
    }

    async fn apop(&mut self, user: String, digest: String, out: &mut ReplyBuffer) -> Flow {
        match self.ctx.auth.apop_secret(&user) {
            ApopSecret::Secret(secret) => {
                if apop::verify(&self.timestamp, &secret, &digest) {
                    self.login(user, Method::Apop, out).await
                } else {
                    self.fail(&user, Method::Apop, "invalid user name or digest", out)
                }
            }
            ApopSecret::NotPlaintext => self.fail(
                &user,
                Method::Apop,
                "APOP is not available for this user (no plaintext-equivalent secret); use USER/PASS",
                out,
            ),
            ApopSecret::NoSuchUser => {
                self.fail(&user, Method::Apop, "invalid user name or digest", out)
            }
        }
    }

    fn fail(&mut self, user: &str, method: Method, reason: &str, out: &mut ReplyBuffer) -> Flow {
        let failures = self.failures() + 1;
        info!(
            "login user={user} addr={} method={} result=failed",
            self.ctx.peer,
            method.name()
        );
        out.err(Some(RespCode::Auth), reason);
        if failures >= self.ctx.max_login_failures {
            self.state = State::Closed;
            return Flow::LoginFailedClose;
        }
        // RFC 1939 section 7: after a failed PASS the session starts over
        // with USER.
        self.state = State::Authorization {
            user: None,
            failures,
        };
        Flow::LoginFailed
    }

    /// Authentication succeeded: lock the maildrop, grant, then answer.
    async fn login(&mut self, user: String, method: Method, out: &mut ReplyBuffer) -> Flow {
        let store = Arc::clone(&self.ctx.store);
        let open_user = user.clone();
        let opened = off_runtime(move || store.open(&open_user))
            .await
            .unwrap_or_else(|e| Err(OpenError::Io(e)));
        let peer = self.ctx.peer;
        let maildrop = match opened {
            Ok(maildrop) => maildrop,
            Err(OpenError::InUse) => {
                info!(
                    "login user={user} addr={peer} method={} result=in-use",
                    method.name()
                );
                out.err(
                    Some(RespCode::InUse),
                    "maildrop is locked by another session",
                );
                self.reset_authorization();
                return Flow::Continue;
            }
            Err(OpenError::Invalid(reason)) => {
                warn!(
                    "login user={user} addr={peer} method={} result=invalid-maildrop ({reason})",
                    method.name()
                );
                out.err(Some(RespCode::SysPerm), "cannot open this maildrop");
                self.reset_authorization();
                return Flow::Continue;
            }
            Err(OpenError::Io(e)) => {
                error!(
                    "login user={user} addr={peer} method={} result=maildrop-error ({e})",
                    method.name()
                );
                out.err(
                    Some(RespCode::SysTemp),
                    "cannot open the maildrop, try again later",
                );
                self.reset_authorization();
                return Flow::Continue;
            }
        };
        // The grant must be in the kernel before the client hears +OK: a
        // client may open its SMTP connection the moment login returns.
        match self.ctx.grants.grant(peer) {
            Ok(()) => info!("grant addr={peer} user={user}"),
            Err(e) => error!("grant addr={peer} user={user} failed: {e} (login goes on)"),
        }
        info!(
            "login user={user} addr={peer} method={} result=ok",
            method.name()
        );
        let (count, size) = totals(maildrop.messages(), None);
        let messages: Arc<[MessageInfo]> = maildrop.messages().into();
        let deleted = vec![false; messages.len()];
        out.ok(&format!("{user} has {count} messages ({size} octets)"));
        self.state = State::Transaction {
            user,
            maildrop: Some(maildrop),
            messages,
            deleted,
        };
        Flow::Continue
    }

    fn reset_authorization(&mut self) {
        self.state = State::Authorization {
            user: None,
            failures: self.failures(),
        };
    }

    async fn quit(&mut self, out: &mut ReplyBuffer) -> Flow {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let State::Transaction {
            user,
            maildrop: Some(maildrop),
            deleted,
            ..
        } = state
        else {
            out.ok("smtp-gate POP3 server signing off");
            return Flow::Close;
        };
        // UPDATE state.
        let doomed: Vec<usize> = deleted
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.then_some(i))
            .collect();
        let count = doomed.len();
        let result = if doomed.is_empty() {
            // Nothing to unlink or sync: releasing the lock is one close.
            maildrop.commit(&doomed)
        } else {
            off_runtime(move || maildrop.commit(&doomed))
                .await
                .unwrap_or_else(Err)
        };
        match result {
            Ok(()) => out.ok(&format!(
                "smtp-gate POP3 server signing off ({count} messages deleted)"
            )),
            Err(e) => {
                error!("user={user}: applying {count} deletions failed: {e}");
                out.err(Some(RespCode::SysTemp), "some deleted messages not removed");
            }
        }
        Flow::Close
    }

    async fn transaction(&mut self, command: Command, out: &mut ReplyBuffer) -> Flow {
        let State::Transaction {
            maildrop,
            messages,
            deleted,
            ..
        } = &mut self.state
        else {
            out.err(None, "not logged in");
            return Flow::Continue;
        };
        let messages = Arc::clone(messages);
        // Message numbers are 1-based; 0, numbers past the end and
        // messages marked deleted do not exist for the client.
        let index = |n: MessageNumber| -> Option<usize> {
            let i = (n as usize).checked_sub(1)?;
            (i < messages.len() && !deleted[i]).then_some(i)
        };
        match command {
            Command::Stat => {
                let (count, size) = totals(&messages, Some(deleted));
                out.ok(&pair(count, size));
            }
            Command::List(None) => {
                let (count, size) = totals(&messages, Some(deleted));
                let lines = live(&messages, deleted).map(|(i, m)| pair(i + 1, m.size));
                out.ok_lines(&format!("{count} messages ({size} octets)"), lines);
            }
            Command::List(Some(n)) => match index(n) {
                Some(i) => out.ok(&pair(n, messages[i].size)),
                None => no_such_message(out),
            },
            Command::Uidl(None) => {
                let lines = live(&messages, deleted).map(|(i, m)| pair(i + 1, &m.uid));
                out.ok_lines("unique-id listing follows", lines);
            }
            Command::Uidl(Some(n)) => match index(n) {
                Some(i) => out.ok(&pair(n, &messages[i].uid)),
                None => no_such_message(out),
            },
            Command::Dele(n) => match index(n) {
                Some(i) => {
                    deleted[i] = true;
                    out.ok(&format!("message {n} deleted"));
                }
                None => no_such_message(out),
            },
            Command::Rset => {
                deleted.iter_mut().for_each(|d| *d = false);
                let (count, size) = totals(&messages, None);
                out.ok(&format!("maildrop has {count} messages ({size} octets)"));
            }
            Command::Noop => out.ok(""),
            Command::Retr(n) => match index(n) {
                Some(i) => match read(maildrop, i).await {
                    Ok(body) => out.ok_body(&format!("{} octets", messages[i].size), &body),
                    Err(e) => read_failed(out, n, e),
                },
                None => no_such_message(out),
            },
            Command::Top(n, lines) => match index(n) {
                Some(i) => match read(maildrop, i).await {
                    Ok(body) => out.ok_body("top of message follows", top_of(&body, lines)),
                    Err(e) => read_failed(out, n, e),
                },
                None => no_such_message(out),
            },
            other => out.err(
                None,
                &format!("{} is not valid in this state", other.keyword()),
            ),
        }
        Flow::Continue
    }
}

/// Reads a message: in place if it is in the page cache, otherwise off the
/// async worker threads, handing the maildrop over and back.
async fn read(slot: &mut Option<Box<dyn Maildrop>>, index: usize) -> io::Result<Vec<u8>> {
    let busy = || io::Error::other("maildrop busy");
    if let Some(body) = slot.as_mut().ok_or_else(busy)?.read_if_cached(index) {
        return Ok(body);
    }
    let mut maildrop = slot.take().ok_or_else(busy)?;
    let (maildrop, result) = off_runtime(move || {
        let result = maildrop.read(index);
        (maildrop, result)
    })
    .await?;
    *slot = Some(maildrop);
    result
}

/// Runs blocking work (files, password hashing) without stalling other
/// sessions. On the multi-threaded runtime (the daemon) the worker hands
/// its other tasks to its peers and runs `work` itself, which spares a
/// thread switch per RETR; elsewhere (a current-thread runtime) it goes to
/// the blocking pool. Either way, once started it runs to its end, even if
/// the session is dropped meanwhile: a QUIT's deletions are never cut in
/// half.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        Ok(tokio::task::block_in_place(work))
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(io::Error::other)
    }
}

fn read_failed(out: &mut ReplyBuffer, n: MessageNumber, e: io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        out.err(None, &format!("message {n} was removed by another client"));
    } else {
        error!("reading message {n} failed: {e}");
        out.err(Some(RespCode::SysTemp), "cannot read the message now");
    }
}

fn no_such_message(out: &mut ReplyBuffer) {
    out.err(None, "no such message");
}

fn live<'a>(
    messages: &'a [MessageInfo],
    deleted: &'a [bool],
) -> impl Iterator<Item = (usize, &'a MessageInfo)> + 'a {
    messages
        .iter()
        .enumerate()
        .filter(move |(i, _)| !deleted[*i])
}

/// Count and octets of the messages not marked deleted.
fn totals(messages: &[MessageInfo], deleted: Option<&[bool]>) -> (usize, u64) {
    messages
        .iter()
        .enumerate()
        .filter(|(i, _)| deleted.is_none_or(|d| !d[*i]))
        .fold((0, 0), |(n, s), (_, m)| (n + 1, s + m.size))
}
