//! One POP3 session as a state machine: lines in, replies out. The server
//! owns the socket, the timers and the delays; this owns the protocol.
//!
//! RFC 1939 section 3: the session goes through AUTHORIZATION, then
//! TRANSACTION once the client has identified itself and the maildrop is
//! locked, then UPDATE when the client sends QUIT. Deletions are applied in
//! UPDATE only: "If a session terminates for some reason other than a
//! client-issued QUIT command, the POP3 session does NOT enter the UPDATE
//! state and MUST not remove any messages from the maildrop."
//!
//! [`Session::handle`] decides, in one match, what a command does in the
//! current state; the handlers of each state live in `authorization` and
//! `transaction` and get that state's data, not the session.

mod authorization;
mod capabilities;
mod tally;
mod transaction;
mod transport;

use std::{io, net::IpAddr, sync::Arc};

/// The log target of the session's lines (logins, grants), the same in
/// every file of it: operators' log filters (fail2ban) match it.
pub(crate) const LOG_TARGET: &str = "pop3::session";

use crate::{
    auth::{password_checks::PasswordChecks, user_throttle::UserThrottle},
    command::{self, Command},
    counters::Pop3Counters,
    framing::Line,
    maildrop::MaildropStore,
    reply::{ReplyBuffer, ReplySink},
    server::ClientNetwork,
    session_id::SessionId,
    Authenticator, FailureSink, GrantSink,
};
use authorization::Authorization;
pub use tally::{EndReason, Summary, Tally};
use transaction::Transaction;
pub use transaction::MESSAGE_CHUNK;
pub use transport::Transport;

/// What the session's dependencies and settings are.
#[derive(Clone)]
pub struct SessionContext {
    /// Named in every line logged about the session.
    pub id: SessionId,
    pub auth: Arc<dyn Authenticator>,
    pub store: Arc<dyn MaildropStore>,
    pub grants: Arc<dyn GrantSink>,
    /// Told of every failed login (the daemon bans guessers).
    pub failures: Arc<dyn FailureSink>,
    /// The client's address, normalised (IPv4-mapped IPv6 is IPv4).
    pub peer: IpAddr,
    /// The client's network, as the connection slots count it.
    pub network: ClientNetwork,
    /// Where password checks that hash wait for their turn.
    pub password_checks: Arc<PasswordChecks>,
    /// Failures per user name, which delay logins naming a user under
    /// attack (auth/user_throttle.rs).
    pub user_throttle: Arc<UserThrottle>,
    /// Failed logins before the connection is closed.
    pub max_login_failures: u32,
    /// TLS or not; the server changes it after STLS.
    pub transport: Transport,
    /// APOP is offered (the greeting's timestamp) and taken.
    pub apop: bool,
    /// The service's counts (logins by method and result).
    pub counters: Arc<Pop3Counters>,
}

/// Lines that are not commands a client may send before it logs in; with
/// the next one the connection is closed. A mail client sends none (it
/// asks CAPA before anything new); a stream of them is another protocol
/// talking to this port, the cross-protocol class of attacks (ALPACA)
/// that RFC 9325 section 3.5 answers this way, or a scanner. Dovecot
/// closes a login connection after as many.
pub const MAX_BAD_COMMANDS: u32 = 10;

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
    /// STLS was accepted: send the replies, drop whatever the client sent
    /// after the command, negotiate TLS, then go on over TLS
    /// (`Session::tls_started`).
    StartTls,
}

enum State {
    Authorization(Authorization),
    Transaction(Transaction),
    Closed,
}

pub struct Session {
    ctx: SessionContext,
    /// The APOP timestamp of this session's greeting.
    timestamp: String,
    state: State,
    tally: Tally,
}

impl Session {
    pub fn new(ctx: SessionContext, timestamp: String) -> Self {
        Self {
            ctx,
            timestamp,
            state: State::Authorization(Authorization::default()),
            tally: Tally::default(),
        }
    }

    pub fn id(&self) -> SessionId {
        self.ctx.id
    }

    /// What the session has done so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The greeting, with the APOP timestamp (RFC 1939 section 7: "A POP3
    /// server which implements the APOP command will include a timestamp
    /// in its banner greeting"; without APOP, none).
    pub fn greeting(&self, out: &mut ReplyBuffer) {
        if self.ctx.apop {
            out.ok(&format!("smtp-gate POP3 server ready {}", self.timestamp));
        } else {
            out.ok("smtp-gate POP3 server ready");
        }
    }

    /// The longest line the session takes next, CRLF included: a command
    /// line (RFC 2449 section 4), or a SASL response, which may be longer
    /// (RFC 5034 section 4 limits only the AUTH command line itself).
    pub fn max_line(&self) -> usize {
        match &self.state {
            State::Authorization(auth) if auth.awaits_sasl_response() => {
                crate::auth::sasl_plain::MAX_RESPONSE_LINE
            }
            _ => crate::framing::MAX_LINE,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// TLS is up after STLS. RFC 2595 section 4: the client "MUST discard
    /// cached information about server capabilities"; the server forgets
    /// what it was told in clear (a USER), so nothing sent before the
    /// handshake counts after it.
    pub fn tls_started(&mut self) {
        self.ctx.transport.tls = true;
        if let State::Authorization(auth) = &mut self.state {
            auth.forget_user();
        }
    }

    /// A line that was not a command: `-ERR why`; before login, the
    /// `MAX_BAD_COMMANDS`th is answered that the connection closes, and
    /// it does.
    fn bad_command(&mut self, why: &str, out: &mut ReplyBuffer) -> Flow {
        if matches!(self.state, State::Authorization(_)) {
            self.tally.bad_commands += 1;
            if self.tally.bad_commands >= MAX_BAD_COMMANDS {
                out.err(None, "too many bad commands, closing");
                self.state = State::Closed;
                return Flow::Close;
            }
        }
        out.err(None, why);
        Flow::Continue
    }

    /// True once a login has succeeded (TRANSACTION).
    pub fn is_logged_in(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    /// Handles one line and appends its reply to `out`; a long reply (a
    /// message) is sent through `out` as it is written.
    pub async fn handle<O: ReplySink>(&mut self, line: Line, out: &mut O) -> Flow {
        // RFC 5034 section 4: after a challenge, the next line is the
        // client's response, not a command.
        if let State::Authorization(auth) = &mut self.state {
            if auth.awaits_sasl_response() {
                let response = match line {
                    Line::Command(bytes) => Some(bytes),
                    Line::TooLong => None,
                };
                let State::Authorization(auth) = std::mem::replace(&mut self.state, State::Closed)
                else {
                    unreachable!("matched above")
                };
                let (state, flow) = auth
                    .sasl_response(&self.ctx, &mut self.tally, response, out.buffer())
                    .await;
                self.state = state;
                return flow;
            }
        }
        let bytes = match line {
            Line::Command(bytes) => bytes,
            Line::TooLong => {
                return self
                    .bad_command("line too long (RFC 2449: at most 255 octets)", out.buffer());
            }
        };
        let command = match command::parse(&bytes) {
            Ok(command) => command,
            Err(e) => return self.bad_command(&e.to_string(), out.buffer()),
        };
        // The handlers take the state and give back the next one. A step
        // whose future is dropped (the server cut the session) leaves the
        // session Closed, which it then is.
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (state, flow) = step(
            &self.ctx,
            &self.timestamp,
            &mut self.tally,
            state,
            command,
            out,
        )
        .await;
        self.state = state;
        flow
    }
}

/// The one check of each command against the state, and its dispatch.
///
/// RFC 1939 section 3: "A server MUST respond to a command issued when
/// the session is in an incorrect state by responding with a negative
/// status indicator." RFC 2449 section 5, of CAPA: "It is available in
/// both the AUTHORIZATION and TRANSACTION states."
///
/// `timestamp` is the session's APOP timestamp.
async fn step<O: ReplySink>(
    ctx: &SessionContext,
    timestamp: &str,
    tally: &mut Tally,
    state: State,
    command: Command,
    sink: &mut O,
) -> (State, Flow) {
    use Command as C;
    use State as S;
    match (state, command) {
        (state @ (S::Authorization(_) | S::Transaction(_)), C::Capa) => {
            let logged_in = matches!(state, S::Transaction(_));
            sink.buffer().ok_lines(
                "capability list follows",
                capabilities::capabilities(logged_in, &ctx.transport),
            );
            (state, Flow::Continue)
        }
        // RFC 2595 section 4: "Restrictions: Only permitted in
        // AUTHORIZATION state." Not inside TLS, and only where a
        // certificate is configured.
        (S::Authorization(auth), C::Stls) => {
            if ctx.transport.tls {
                sink.buffer().err(None, "TLS is already active");
                (S::Authorization(auth), Flow::Continue)
            } else if !ctx.transport.tls_available {
                sink.buffer()
                    .err(None, "TLS is not available on this server");
                (S::Authorization(auth), Flow::Continue)
            } else {
                sink.buffer().ok("Begin TLS negotiation");
                (S::Authorization(auth), Flow::StartTls)
            }
        }
        (S::Authorization(auth), C::User(user)) => auth.user(ctx, user, sink.buffer()),
        (
            S::Authorization(auth),
            C::Auth {
                mechanism,
                initial_response,
            },
        ) => {
            auth.auth(ctx, tally, mechanism, initial_response, sink.buffer())
                .await
        }
        (S::Authorization(auth), C::Pass(password)) => {
            auth.pass(ctx, tally, password, sink.buffer()).await
        }
        (S::Authorization(auth), C::Apop { .. }) if !ctx.apop => {
            sink.buffer()
                .err(None, "APOP is not offered by this server");
            (S::Authorization(auth), Flow::Continue)
        }
        (S::Authorization(auth), C::Apop { user, digest }) => {
            auth.apop(ctx, tally, timestamp, user, digest, sink.buffer())
                .await
        }
        (S::Authorization(_), C::Quit) => {
            // RFC 1939 section 6: "if the client issues the QUIT command
            // from the AUTHORIZATION state, the POP3 session terminates
            // but does NOT enter the UPDATE state."
            sink.buffer().ok("smtp-gate POP3 server signing off");
            tally.quit = true;
            (S::Closed, Flow::Close)
        }
        (S::Transaction(txn), C::Quit) => {
            tally.quit = true;
            (S::Closed, txn.quit(tally, sink.buffer()).await)
        }
        (S::Transaction(txn), C::Stat) => {
            txn.stat(sink.buffer());
            stay(txn)
        }
        (S::Transaction(txn), C::List(n)) => {
            txn.list(n, sink.buffer());
            stay(txn)
        }
        (S::Transaction(txn), C::Uidl(n)) => {
            txn.uidl(n, sink.buffer());
            stay(txn)
        }
        (S::Transaction(mut txn), C::Retr(n)) => {
            let flow = txn.retr(n, tally, sink).await;
            stay_unless_lost(txn, flow)
        }
        (S::Transaction(mut txn), C::Top(n, lines)) => {
            let flow = txn.top(n, lines, tally, sink).await;
            stay_unless_lost(txn, flow)
        }
        (S::Transaction(mut txn), C::Dele(n)) => {
            txn.dele(n, tally, sink.buffer());
            stay(txn)
        }
        (S::Transaction(mut txn), C::Rset) => {
            txn.rset(tally, sink.buffer());
            stay(txn)
        }
        (S::Transaction(txn), C::Noop) => {
            sink.buffer().ok("");
            stay(txn)
        }
        (state, command) => {
            sink.buffer().err(
                None,
                &format!("{} is not valid in this state", command.keyword()),
            );
            (state, Flow::Continue)
        }
    }
}

/// A message was sent (or refused): the session stays in TRANSACTION,
/// unless the connection was lost in the middle of it; then the maildrop
/// goes without UPDATE.
fn stay_unless_lost(txn: Transaction, flow: Flow) -> (State, Flow) {
    match flow {
        Flow::Continue => stay(txn),
        flow => (State::Closed, flow),
    }
}

/// A TRANSACTION command answered: the session stays in TRANSACTION.
fn stay(txn: Transaction) -> (State, Flow) {
    (State::Transaction(txn), Flow::Continue)
}

/// Runs CPU-bound blocking work (password hashing) without stalling other
/// sessions. On the multi-threaded runtime (the daemon) the worker hands
/// its other tasks to its peers and runs `work` itself, which spares a
/// thread switch; elsewhere (a current-thread runtime) it goes to the
/// blocking pool.
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

/// Runs file work on the blocking pool, never on an async worker thread.
/// A file operation may wait for the disk, or for good on a file system
/// that hangs; `block_in_place` would hold a worker thread in it, and the
/// server's shutdown could not leave the session behind. Here the session
/// only awaits the work; the work runs to its end on its own thread, even
/// if the session is dropped meanwhile, so a QUIT's deletions are never
/// cut in half.
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)
}
