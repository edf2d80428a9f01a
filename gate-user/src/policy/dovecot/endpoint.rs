//! The HTTP/1.1 server Dovecot's auth process talks to (hyper), on a
//! policy listener: keep-alive connections, bounded in number, in header
//! and body time and in body size; every request answered, none acted on
//! unless it is well formed (and carries the secret when one is set).

use std::{
    convert::Infallible,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    body::{Body as _, Bytes, Incoming},
    header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info, warn};
use pop3::log_text::LogText;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    counters::PolicyCounters,
    request::{self, Command, Outcome, PolicyRequest, RequestError, MAX_BODY},
    settings::DovecotPolicySettings,
};
use crate::policy::{
    listen::{PolicyListener, PolicyStream},
    log_budget::LogBudget,
    slots::{ConnectionSlots, Slot},
    LoginReports,
};

/// What an `allow` answer says to a banned client (Dovecot passes it on
/// as the failure's reason).
pub const BANNED_MESSAGE: &str = "too many failed logins from your network, try again later";

/// The largest header section read, with the request line.
const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Dovecot sends eight headers, nine with the API header.
const MAX_HEADERS: usize = 32;
/// After a failed accept (no file descriptors left), a pause before the
/// next, instead of a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Lines about bad and unauthorized requests, at most so many per
/// interval (policy/log_budget.rs); the counters count every one.
const LOG_LINES: u32 = 100;
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serves Dovecot's requests on `listener` until `shutdown`; then stops
/// accepting, lets the requests under way end, and returns.
pub async fn serve(
    listener: PolicyListener,
    settings: DovecotPolicySettings,
    reports: Arc<dyn LoginReports>,
    counters: Arc<PolicyCounters>,
    shutdown: CancellationToken,
) {
    let mut listener = listener;
    let replaced = Arc::clone(&counters);
    listener.on_replaced("Dovecot", move || {
        PolicyCounters::add(&replaced.socket_replaced)
    });
    let slots = ConnectionSlots::new("dovecot-policy", settings.max_connections);
    let endpoint = Arc::new(Endpoint {
        settings,
        reports,
        counters,
        warned_of_password_hash: AtomicBool::new(false),
        bad_request_lines: LogBudget::new("dovecot-policy bad-request", LOG_LINES, LOG_INTERVAL),
    });
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("dovecot-policy accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let (slot, made_room) = slots.admit(&peer);
        if made_room {
            PolicyCounters::add(&endpoint.counters.connections_closed_for_room);
        }
        let endpoint = Arc::clone(&endpoint);
        let shutdown = shutdown.clone();
        connections.spawn(endpoint.connection(stream, peer, slot, shutdown));
    }
    connections.close();
    connections.wait().await;
}

struct Endpoint {
    settings: DovecotPolicySettings,
    reports: Arc<dyn LoginReports>,
    counters: Arc<PolicyCounters>,
    warned_of_password_hash: AtomicBool,
    bad_request_lines: LogBudget,
}

type Answer = Response<Full<Bytes>>;

impl Endpoint {
    async fn connection(
        self: Arc<Self>,
        stream: PolicyStream,
        peer: String,
        slot: Slot,
        shutdown: CancellationToken,
    ) {
        let endpoint = Arc::clone(&self);
        let peer_of_requests = peer.clone();
        let closed_for_room = slot.closed_for_room.clone();
        let slot = Arc::new(slot);
        let service = service_fn(move |request| {
            let endpoint = Arc::clone(&endpoint);
            let peer = peer_of_requests.clone();
            let slot = Arc::clone(&slot);
            async move {
                let answer = endpoint.answer(request, &peer).await;
                slot.answered();
                Ok::<_, Infallible>(answer)
            }
        });
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .keep_alive(true)
            // A client that sends its whole report and then shuts its
            // sending side (a script, `nc -N`) still gets it acted on and
            // answered, rather than the connection closed under it.
            .half_close(true)
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .max_headers(MAX_HEADERS);
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = closed_for_room.cancelled() => {
                debug!(
                    "dovecot-policy connection peer={} closed for a new connection",
                    LogText::of(&peer)
                );
                return;
            }
            () = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = ended {
            // A client gone, a header timeout (also the end of an idle
            // kept-alive connection, so not counted), a request hyper could
            // not parse (it answered 400 itself): the connection's end.
            debug!(
                "dovecot-policy connection peer={} ended: {e}",
                LogText::of(&peer)
            );
            if e.is_parse() || e.is_parse_too_large() {
                PolicyCounters::add(&self.counters.bad_requests);
            }
        }
    }

    async fn answer(&self, request: Request<Incoming>, peer: &str) -> Answer {
        PolicyCounters::add(&self.counters.requests);
        if request.uri().path() != "/" {
            return self.refuse(
                peer,
                StatusCode::NOT_FOUND,
                "not-found",
                request.uri().path(),
            );
        }
        if request.method() != Method::POST {
            let mut answer = self.refuse(
                peer,
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                request.method().as_str(),
            );
            answer
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return answer;
        }
        if let Some(secret) = &self.settings.secret {
            let given = request
                .headers()
                .get(AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            if !secret.matches(given) {
                PolicyCounters::add(&self.counters.unauthorized);
                if self.bad_request_lines.allows() {
                    warn!(
                        "dovecot-policy unauthorized peer={} (no or a wrong Authorization \
                         header: see dovecot_policy_secret_file)",
                        LogText::of(peer)
                    );
                }
                let mut answer = plain(
                    StatusCode::UNAUTHORIZED,
                    "the shared secret is missing or wrong",
                );
                answer
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return closing(answer);
            }
        }
        let command = match Command::from_query(request.uri().query()) {
            Ok(command) => command,
            Err(e) => return self.bad_request(peer, &e),
        };
        let body = match self.read_body(request).await {
            Ok(body) => body,
            Err(answer) => return answer,
        };
        match request::parse(command, &body) {
            Ok(request) => self.act(&request).await,
            Err(e) => self.bad_request(peer, &e),
        }
    }

    /// The whole body, or the answer refusing it (the connection is then
    /// closed: what is left of the body is not read).
    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, Answer> {
        let body = request.into_body();
        if body.size_hint().lower() > MAX_BODY as u64 {
            return Err(closing(self.count_bad(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &RequestError::TooLarge.to_string(),
            ))));
        }
        let read = tokio::time::timeout(
            self.settings.body_timeout,
            Limited::new(body, MAX_BODY).collect(),
        );
        match read.await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(closing(self.count_bad(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &RequestError::TooLarge.to_string(),
            )))),
            Ok(Err(e)) => {
                // Cut short (the client closed, or a bad chunk): nobody is
                // there to read an answer, but the count shows it.
                debug!("dovecot-policy body not read whole: {e}");
                Err(closing(self.count_bad(plain(
                    StatusCode::BAD_REQUEST,
                    "the body was cut short",
                ))))
            }
            Err(_) => Err(closing(self.count_bad(plain(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not come in time",
            )))),
        }
    }

    async fn act(&self, request: &PolicyRequest) -> Answer {
        if request.carried_password_hash
            && !self.warned_of_password_hash.swap(true, Ordering::Relaxed)
        {
            warn!(
                "dovecot-policy: Dovecot sends a password hash (pwhash) to smtp-gate, which \
                 ignores it; remove pwhash from auth_policy_request_attributes as the snippets \
                 in deploy/dovecot/ do"
            );
        }
        match request.command {
            Command::Allow => self.allow(request),
            Command::Report => {
                self.report(request).await;
                status(0, "")
            }
        }
    }

    fn allow(&self, request: &PolicyRequest) -> Answer {
        let Some(addr) = request.remote.filter(|addr| self.reports.is_banned(*addr)) else {
            PolicyCounters::add(&self.counters.allowed);
            return status(0, "");
        };
        PolicyCounters::add(&self.counters.refused);
        info!(
            "dovecot-policy refused addr={addr} user={} protocol={} reason=banned",
            LogText::of(&request.login),
            LogText::of(&request.protocol)
        );
        status(-1, BANNED_MESSAGE)
    }

    async fn report(&self, request: &PolicyRequest) {
        let (Some(addr), Some(outcome)) = (request.remote, request.outcome) else {
            PolicyCounters::add(&self.counters.ignored);
            return;
        };
        if !self.settings.grants_for(&request.protocol) {
            PolicyCounters::add(&self.counters.ignored);
            return;
        }
        match outcome {
            // Banned after Dovecot asked `allow`: the kernel refuses the
            // address whatever its grant, so none is written or logged.
            Outcome::Succeeded if self.reports.is_banned(addr) => {
                PolicyCounters::add(&self.counters.refused);
                info!(
                    "dovecot-policy refused addr={addr} user={} protocol={} reason=banned \
                     (login succeeded, not granted)",
                    LogText::of(&request.login),
                    LogText::of(&request.protocol)
                );
            }
            Outcome::Succeeded => self.grant(addr, request).await,
            Outcome::Failed => {
                PolicyCounters::add(&self.counters.failures);
                self.reports.login_failed(addr, &request.login);
            }
            Outcome::LoginRefused(why) => {
                PolicyCounters::add(&self.counters.refused);
                info!(
                    "dovecot-policy refused addr={addr} user={} protocol={} reason={} \
                     (password right, login refused by Dovecot; not granted)",
                    LogText::of(&request.login),
                    LogText::of(&request.protocol),
                    why.word()
                );
            }
            Outcome::FailedNotCounted(why) => {
                PolicyCounters::add(&self.counters.failures_not_counted);
                debug!(
                    "dovecot-policy failure not counted addr={addr} user={} cause={why:?}",
                    LogText::of(&request.login)
                );
            }
        }
    }

    /// A good login is never refused for our trouble: the report's answer
    /// is "go on" whatever the grant did (LoginReports logs its failure).
    async fn grant(&self, addr: IpAddr, request: &PolicyRequest) {
        match self
            .reports
            .login_succeeded(addr, &request.login, &request.protocol)
            .await
        {
            Ok(()) => PolicyCounters::add(&self.counters.grants),
            Err(e) => {
                PolicyCounters::add(&self.counters.grant_errors);
                debug!("dovecot-policy grant of {addr} failed: {e:#}");
            }
        }
    }

    fn bad_request(&self, peer: &str, error: &RequestError) -> Answer {
        let detail = match error {
            RequestError::BadJson(why) => why.as_str(),
            RequestError::BadRemote(text) => text.as_str(),
            RequestError::MissingField(name) => name,
            RequestError::UnknownCommand | RequestError::TooLarge => "",
        };
        if self.bad_request_lines.allows() {
            warn!(
                "dovecot-policy bad-request peer={} reason={} detail={}",
                LogText::of(peer),
                error.kind(),
                LogText::of(detail)
            );
        }
        let code = match error {
            RequestError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        self.count_bad(plain(code, &error.to_string()))
    }

    fn refuse(&self, peer: &str, code: StatusCode, reason: &str, what: &str) -> Answer {
        if self.bad_request_lines.allows() {
            warn!(
                "dovecot-policy bad-request peer={} reason={reason} detail={}",
                LogText::of(peer),
                LogText::of(what)
            );
        }
        closing(self.count_bad(plain(code, "smtp-gate takes POST /?command=allow|report")))
    }

    fn count_bad(&self, answer: Answer) -> Answer {
        PolicyCounters::add(&self.counters.bad_requests);
        answer
    }
}

/// Dovecot's answer: `status` 0 goes on, below 0 refuses the login, above
/// 0 delays it by that many seconds.
fn status(status: i32, msg: &str) -> Answer {
    let body = serde_json::json!({ "status": status, "msg": msg }).to_string();
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

fn plain(code: StatusCode, text: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *answer.status_mut() = code;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

/// The connection ends after this answer.
fn closing(mut answer: Answer) -> Answer {
    answer
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    answer
}
