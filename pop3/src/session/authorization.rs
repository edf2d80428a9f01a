//! The AUTHORIZATION state (RFC 1939 section 4): USER and PASS, or APOP.
//! A login locks the maildrop and grants the client's address before the
//! `+OK`, and the session enters TRANSACTION.

use std::{error::Error, sync::Arc, time::Instant};

use log::{debug, error, info, warn};

use super::{
    off_runtime, on_blocking_pool, transaction::Transaction, Flow, SessionContext, State, Tally,
    LOG_TARGET,
};
use crate::{
    auth::{apop, sasl_plain, user_throttle},
    counters::{LoginMethod, LoginResult},
    grant_log::{grant_failed_line, grant_line, GrantFields, GrantSource, GRANT_LOG_TARGET},
    log_text::LogText,
    maildrop::{ForSession, OpenError},
    reply::{ReplyBuffer, RespCode},
    ApopSecret,
};

/// What the session knows before a login.
#[derive(Default)]
pub(super) struct Authorization {
    /// The name given by USER, waiting for its PASS.
    user: Option<String>,
    /// Failed logins so far in this session.
    failures: u32,
    /// AUTH PLAIN sent its challenge: the next line is the response.
    awaiting_plain: bool,
}

/// The `-ERR [AUTH]` of a password offered where it would cross the
/// network in clear (RFC 8314 section 4.1; the text says what to do).
const USE_TLS: &str = "cleartext passwords are not accepted here: use TLS (STLS, or port 995)";

/// What APOP checks a digest against when there is no secret to check
/// it against, so that every APOP costs one digest.
const APOP_DECOY_SECRET: &str = "decoy: no plaintext-equivalent secret";

impl Authorization {
    /// STLS: a name given in clear is not carried into TLS.
    pub(super) fn forget_user(&mut self) {
        self.user = None;
    }

    pub(super) fn awaits_sasl_response(&self) -> bool {
        self.awaiting_plain
    }

    pub(super) fn user(
        self,
        ctx: &SessionContext,
        user: String,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        // Refused at USER, so that a client that heeds it never sends the
        // password (Dovecot answers USER the same way).
        if !ctx.transport.cleartext_password_allowed() {
            return self.refuse_cleartext(ctx, out);
        }
        // RFC 1939 allows -ERR for an unknown name; answering +OK
        // either way does not tell a prober which names exist.
        out.ok("send PASS");
        let next = Self {
            user: Some(user),
            ..self
        };
        (State::Authorization(next), Flow::Continue)
    }

    pub(super) async fn pass(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        password: String,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let Some(user) = self.user.clone() else {
            out.err(None, "USER first");
            return (State::Authorization(self), Flow::Continue);
        };
        if !ctx.transport.cleartext_password_allowed() {
            return self.refuse_cleartext(ctx, out);
        }
        self.check_password(ctx, tally, user, password, LoginMethod::UserPass, out)
            .await
    }

    /// RFC 5034 section 4: `AUTH mechanism [initial-response]`. A bare
    /// `AUTH` lists the mechanisms, as RFC 1734 had it and clients still
    /// send it (Dovecot answers it too).
    pub(super) async fn auth(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        mechanism: Option<String>,
        initial_response: Option<String>,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let offered = ctx.transport.cleartext_password_allowed();
        match mechanism.as_deref() {
            None => {
                let list: &[&str] = if offered { &["PLAIN"] } else { &[] };
                out.ok_lines("mechanisms follow", list);
                (State::Authorization(self), Flow::Continue)
            }
            Some("PLAIN") if !offered => self.refuse_cleartext(ctx, out),
            Some("PLAIN") => {
                let next = Self { user: None, ..self };
                match initial_response {
                    Some(response) => next.plain(ctx, tally, response.into_bytes(), out).await,
                    None => {
                        // PLAIN's challenge is empty: "+ " and CRLF.
                        out.challenge("");
                        let next = Self {
                            awaiting_plain: true,
                            ..next
                        };
                        (State::Authorization(next), Flow::Continue)
                    }
                }
            }
            Some(_) => {
                out.err(None, "unsupported authentication mechanism");
                (State::Authorization(self), Flow::Continue)
            }
        }
    }

    /// The line after AUTH PLAIN's challenge; `None` when it was too long
    /// to be one.
    pub(super) async fn sasl_response(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        response: Option<Vec<u8>>,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let next = Self {
            awaiting_plain: false,
            ..self
        };
        match response {
            // RFC 5034 section 4: "If the client wishes to cancel the
            // authentication exchange, it issues a line with a single
            // "*". If the server receives such a response, it MUST reject
            // the AUTH command by sending an -ERR reply."
            Some(line) if line == b"*" => {
                out.err(None, "authentication cancelled");
                (State::Authorization(next), Flow::Continue)
            }
            Some(line) => next.plain(ctx, tally, line, out).await,
            None => next.fail(
                ctx,
                "",
                LoginMethod::SaslPlain,
                "SASL response too long",
                out,
            ),
        }
    }

    /// A PLAIN response: decoded, then checked as a password is.
    async fn plain(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        response: Vec<u8>,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let decoded = std::str::from_utf8(&response)
            .map_err(|_| sasl_plain::PlainError::Base64)
            .and_then(sasl_plain::decode);
        match decoded {
            Ok(creds) => {
                self.check_password(
                    ctx,
                    tally,
                    creds.user,
                    creds.password,
                    LoginMethod::SaslPlain,
                    out,
                )
                .await
            }
            // A malformed response is a failed login (its delay, its
            // count): otherwise it would be a free probe.
            Err(e) => {
                info!(target: LOG_TARGET, "session={} login addr={} method=PLAIN: {e}", ctx.id, ctx.peer);
                self.fail(ctx, "", LoginMethod::SaslPlain, &e.to_string(), out)
            }
        }
    }

    /// A password offered in clear from another host, with a certificate
    /// configured: refused before anything is checked, and not counted as
    /// a failed login (nothing was guessed).
    fn refuse_cleartext(self, ctx: &SessionContext, out: &mut ReplyBuffer) -> (State, Flow) {
        debug!(target: LOG_TARGET, "session={} addr={} cleartext login refused: no TLS", ctx.id, ctx.peer);
        out.err(Some(RespCode::Auth), USE_TLS);
        let next = Self { user: None, ..self };
        (State::Authorization(next), Flow::Continue)
    }

    /// Checks `password` of `user`, for every method that sends one: the
    /// same queue, the same delays, the same log lines.
    async fn check_password(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        user: String,
        password: String,
        method: LoginMethod,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        wait_if_targeted(ctx, &user, method).await;
        // Only a check that hashes waits for a turn. A user whose check
        // does not hash (PLAIN) skipping the queue tells nothing new: a
        // name that does not exist is checked against the decoy, which
        // costs what most users' secrets cost, and queues as they do; a
        // PLAIN user among hashed ones is told apart by the missing hash
        // already (the daemon warns of such users at start).
        let turn = if ctx.auth.check_hashes(&user) {
            Some(ctx.password_checks.turn(ctx.network).await)
        } else {
            None
        };
        let auth = Arc::clone(&ctx.auth);
        let check_user = user.clone();
        let verified = off_runtime(move || auth.verify_password(&check_user, &password))
            .await
            .unwrap_or(false);
        drop(turn);
        if verified {
            self.login(ctx, tally, user, method, out).await
        } else {
            self.fail(ctx, &user, method, "invalid user name or password", out)
        }
    }

    pub(super) async fn apop(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        timestamp: &str,
        user: String,
        digest: String,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        wait_if_targeted(ctx, &user, LoginMethod::Apop).await;
        // RFC 1939 section 13: the answer must not tell a name that
        // exists from one that does not, nor a user without a
        // plaintext-equivalent secret (only a hash, which APOP cannot use)
        // from a wrong digest. Every case computes a digest and gets the
        // same reply; the reason goes to the log.
        let (secret, usable) = match ctx.auth.apop_secret(&user) {
            ApopSecret::Secret(secret) => (secret, true),
            ApopSecret::NotPlaintext => {
                info!(target: LOG_TARGET, "session={} login user={} addr={} method=APOP: the user \
                    has only a password hash, which APOP cannot use (USER/PASS can); answered as \
                    a wrong digest",
                    ctx.id,
                    LogText::of(&user),
                    ctx.peer
                );
                (APOP_DECOY_SECRET.to_string(), false)
            }
            ApopSecret::NoSuchUser => (APOP_DECOY_SECRET.to_string(), false),
        };
        // Not `&&`: the digest is computed in every case.
        if apop::verify(timestamp, &secret, &digest) & usable {
            return self.login(ctx, tally, user, LoginMethod::Apop, out).await;
        }
        self.fail(
            ctx,
            &user,
            LoginMethod::Apop,
            "invalid user name or digest",
            out,
        )
    }

    fn fail(
        self,
        ctx: &SessionContext,
        user: &str,
        method: LoginMethod,
        reason: &str,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let failures = self.failures + 1;
        ctx.counters.login(method, LoginResult::Failed);
        ctx.failures.login_failed(ctx.peer, user);
        if ctx.user_throttle.failed(user, Instant::now()) {
            warn!(target: LOG_TARGET, "session={} user={} has {} failed logins within {}: logins naming \
                it from networks it has not logged in from are delayed",
                ctx.id,
                LogText::of(user),
                user_throttle::FAILURES_BEFORE_DELAY,
                crate::duration::format_duration(user_throttle::WINDOW)
            );
        }
        info!(target: LOG_TARGET, "session={} login user={} addr={} method={} result=failed",
            ctx.id,
            LogText::of(user),
            ctx.peer,
            method.log_name()
        );
        out.err(Some(RespCode::Auth), reason);
        if failures >= ctx.max_login_failures {
            return (State::Closed, Flow::LoginFailedClose);
        }
        // RFC 1939 section 7: after a failed PASS the session starts over
        // with USER.
        let next = Self {
            user: None,
            failures,
            awaiting_plain: false,
        };
        (State::Authorization(next), Flow::LoginFailed)
    }

    /// Authentication succeeded: lock the maildrop, grant, then answer.
    async fn login(
        self,
        ctx: &SessionContext,
        tally: &mut Tally,
        user: String,
        method: LoginMethod,
        out: &mut ReplyBuffer,
    ) -> (State, Flow) {
        let store = Arc::clone(&ctx.store);
        let open_user = user.clone();
        // The open may take long (a message without W= is read whole to
        // size it). If this future is dropped meanwhile (the login timeout,
        // a client cut for a newcomer, the shutdown), the guard tells the
        // store to stop, and the maildrop's lock goes with it; the server
        // logs the login as cut, from `tally.opening`.
        let (for_session, _gives_up_when_dropped) = ForSession::new(ctx.id);
        tally.opening = Some((user.clone(), method));
        let opened = on_blocking_pool(move || store.open(&open_user, &for_session))
            .await
            .unwrap_or_else(|e| Err(OpenError::Io(e)));
        tally.opening = None;
        let peer = ctx.peer;
        let id = ctx.id;
        let maildrop = match opened {
            Ok(maildrop) => maildrop,
            Err(OpenError::InUse) => {
                ctx.counters.login(method, LoginResult::InUse);
                info!(target: LOG_TARGET, "session={id} login user={} addr={peer} method={} result=in-use",
                    LogText::of(&user),
                    method.log_name()
                );
                out.err(
                    Some(RespCode::InUse),
                    "maildrop is locked by another session",
                );
                return self.start_over();
            }
            Err(OpenError::Invalid(reason)) => {
                ctx.counters.login(method, LoginResult::InvalidMaildrop);
                warn!(target: LOG_TARGET, "session={id} login user={} addr={peer} method={} result=invalid-maildrop ({reason})",
                    LogText::of(&user),
                    method.log_name()
                );
                out.err(Some(RespCode::SysPerm), "cannot open this maildrop");
                return self.start_over();
            }
            Err(OpenError::Unsafe(reason)) => {
                ctx.counters.login(method, LoginResult::UnsafeMaildrop);
                error!(target: LOG_TARGET, "session={id} login user={} addr={peer} method={} result=unsafe-maildrop ({reason})",
                    LogText::of(&user),
                    method.log_name()
                );
                out.err(Some(RespCode::SysPerm), "cannot open this maildrop");
                return self.start_over();
            }
            // Only a login that is still waiting sees this: the store
            // stopped for a session that gave up.
            Err(OpenError::Abandoned) => {
                ctx.counters.login(method, LoginResult::Cut);
                out.err(
                    Some(RespCode::SysTemp),
                    "cannot open the maildrop, try again later",
                );
                return self.start_over();
            }
            Err(OpenError::Io(e)) => {
                ctx.counters.login(method, LoginResult::MaildropError);
                error!(target: LOG_TARGET, "session={id} login user={} addr={peer} method={} result=maildrop-error ({e})",
                    LogText::of(&user),
                    method.log_name()
                );
                out.err(
                    Some(RespCode::SysTemp),
                    "cannot open the maildrop, try again later",
                );
                return self.start_over();
            }
        };
        // The grant must be in the kernel before the client hears +OK: a
        // client may open its SMTP connection the moment login returns.
        // The sink bounds its own wait (the grant bus's `bus_timeout`).
        match ctx.grants.grant(peer).await {
            Ok(granted) => {
                let fields = GrantFields {
                    user: Some(user.as_bytes()),
                    extra: &granted.as_extra(),
                };
                info!(target: GRANT_LOG_TARGET, "session={id} {}",
                    grant_line(GrantSource::Pop3, peer, &fields)
                )
            }
            Err(e) => {
                let fields = GrantFields {
                    user: Some(user.as_bytes()),
                    extra: &[],
                };
                error!(target: GRANT_LOG_TARGET, "session={id} {} (login goes on)",
                    grant_failed_line(GrantSource::Pop3, peer, &fields, &with_causes(&e))
                )
            }
        }
        ctx.counters.login(method, LoginResult::Ok);
        info!(target: LOG_TARGET, "session={id} login user={} addr={peer} method={} result=ok",
            LogText::of(&user),
            method.log_name()
        );
        ctx.user_throttle
            .succeeded(&user, ctx.network, Instant::now());
        tally.user = Some(user.clone());
        let transaction = Transaction::begin(id, user, maildrop);
        let (count, size) = transaction.totals();
        out.ok(&format!(
            "{} has {count} messages ({size} octets)",
            transaction.user()
        ));
        (State::Transaction(transaction), Flow::Continue)
    }

    /// Back to waiting for USER (or APOP), the failures kept: the login
    /// was right but its maildrop could not be had.
    fn start_over(self) -> (State, Flow) {
        let next = Self { user: None, ..self };
        (State::Authorization(next), Flow::Continue)
    }
}

/// A name guessed at from many places: the login waits first (never
/// refused), whatever its password or digest, unless it comes from where
/// this user logged in before (auth/user_throttle.rs).
async fn wait_if_targeted(ctx: &SessionContext, user: &str, method: LoginMethod) {
    let delay = ctx.user_throttle.delay(user, ctx.network, Instant::now());
    if !delay.is_zero() {
        debug!(target: LOG_TARGET, "session={} login user={} addr={} method={}: delayed {delay:?}, \
            many failed logins name this user",
            ctx.id, LogText::of(user), ctx.peer, method.log_name());
        tokio::time::sleep(delay).await;
    }
}

/// An error and its causes, joined by ": " as `anyhow` writes them with
/// `{:#}`: the log line is all anyone sees of a failed grant.
fn with_causes(e: &(dyn Error + 'static)) -> String {
    std::iter::successors(Some(e), |&e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{tests::WritingMap, GrantError};
    use std::io;

    #[test]
    fn a_failed_grant_is_logged_with_its_causes() {
        let denied = io::Error::from_raw_os_error(1);
        let expected = format!("writing grants_v4: {denied}");
        let e = GrantError::new(WritingMap(denied));
        assert_eq!(with_causes(&e), expected);
        assert_eq!(with_causes(&GrantError::new("no map")), "no map");
    }
}
