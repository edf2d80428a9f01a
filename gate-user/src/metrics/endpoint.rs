//! The HTTP/1.1 server Prometheus scrapes (hyper, as the Dovecot
//! endpoint's): `GET /metrics` (and `HEAD`) answer the page; any other
//! path 404, any other method 405. Its listeners (`metrics_listen`) are
//! bound at start with the daemon's others, before systemd hears READY=1,
//! so a ready daemon answers scrapes. Connections are kept alive (a
//! scraper reuses its own), bounded in number as the hooks' are (the one
//! idle longest makes room for a new one, but one with a request in
//! progress is never closed: with all busy, a new connection is closed at
//! once), in header time and size; a request with a body is refused
//! unread. However many requests come, the page is rendered at most about
//! 100 times a second (renders.rs).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{anyhow, Result};
use http_body_util::Full;
use hyper::{
    body::{Body as _, Bytes, Incoming},
    header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, info, warn};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{exposition::CONTENT_TYPE as EXPOSITION, page::Page, renders::Renders};
use crate::policy::slots::{ConnectionSlots, Slot};

/// Where the page is.
pub const PATH: &str = "/metrics";
/// Connections open at once; more close the one idle longest (not one
/// with a request in progress).
const MAX_CONNECTIONS: usize = 16;
/// A request's header must be whole within this, and a kept-alive
/// connection without a request is closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest header section read (hyper's least buffer).
const MAX_HEADER_BYTES: usize = 8192;
const MAX_HEADERS: usize = 32;
/// After a failed accept (no file descriptors left), a pause before the
/// next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The bound `metrics_listen` listeners.
pub struct MetricsListeners {
    listeners: Vec<TcpListener>,
}

impl MetricsListeners {
    /// Binds every address (inside the runtime); an error names the key
    /// and the address.
    pub fn bind(addrs: &[SocketAddr]) -> Result<Self> {
        let listeners = addrs
            .iter()
            .map(|addr| {
                listen(*addr).map_err(|e| anyhow!("metrics_listen = {addr}: cannot listen: {e}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self { listeners })
    }

    /// The addresses bound (with the ports the kernel chose for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Serves `page` on `listeners` until `stop`; then lets the answers
/// under way end, and returns.
pub async fn serve(listeners: MetricsListeners, page: Arc<Page>, stop: CancellationToken) {
    let page = Arc::new(Pages {
        page,
        renders: Renders::default(),
    });
    let slots = ConnectionSlots::new("the metrics endpoint", MAX_CONNECTIONS);
    let connections = TaskTracker::new();
    let mut loops = Vec::new();
    for listener in listeners.listeners {
        if let Ok(addr) = listener.local_addr() {
            info!("metrics served on http://{addr}{PATH}");
        }
        loops.push(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&page),
            Arc::clone(&slots),
            connections.clone(),
            stop.clone(),
        )));
    }
    for accepting in loops {
        let _ = accepting.await;
    }
    connections.close();
    connections.wait().await;
}

async fn accept_loop(
    listener: TcpListener,
    page: Arc<Pages>,
    slots: Arc<ConnectionSlots>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("metrics: cannot accept a connection: {e}");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let Some((slot, _made_room)) = slots.admit_sparing_busy(&peer.to_string()) else {
            debug!("metrics: connection from {peer} closed: every slot has a request in progress");
            drop(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            peer,
            slot,
            Arc::clone(&page),
            stop.clone(),
        ));
    }
}

type Answer = Response<Full<Bytes>>;

/// The page, and its renders shared by the requests.
struct Pages {
    page: Arc<Page>,
    renders: Renders,
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    page: Arc<Pages>,
    stop: CancellationToken,
) {
    let closed_for_room = slot.closed_for_room.clone();
    let slot = Arc::new(slot);
    let service = service_fn(move |request| {
        let page = Arc::clone(&page);
        let slot = Arc::clone(&slot);
        async move {
            let _in_progress = slot.request();
            Ok::<_, Infallible>(answer(request, &page).await)
        }
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = closed_for_room.cancelled() => {
            debug!("metrics: connection from {peer} closed for a new one");
            return;
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        // A scraper gone, an idle connection's end, a request hyper could
        // not parse (it answered 400 itself).
        debug!("metrics: connection from {peer} ended: {e}");
    }
}

/// The page for `GET /metrics`; the refusal of anything else.
async fn answer(request: Request<Incoming>, page: &Pages) -> Answer {
    if request.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "smtp-gate serves its metrics at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut answer = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or HEAD /metrics, nothing else\n",
        );
        answer
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return answer;
    }
    if !request.body().is_end_stream() {
        // Not read: the connection ends with this answer.
        let mut answer = plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a request for the metrics has no body\n",
        );
        answer
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return answer;
    }
    let text = page.renders.page(|| page.page.render()).await;
    let mut answer = Response::new(Full::new(text));
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(EXPOSITION));
    answer
}

fn plain(code: StatusCode, text: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *answer.status_mut() = code;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pop3::counters::{LoginMethod, LoginResult, Pop3Counters};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::{bus::state::AgentStatus, policy::postfix};

    /// A page of POP3 counters (one login), the agent's status and the
    /// Postfix hook's counters, served on a loopback port of its own.
    async fn serving() -> (SocketAddr, CancellationToken) {
        let pop3 = Arc::new(Pop3Counters::default());
        pop3.login(LoginMethod::Apop, LoginResult::Ok);
        let postfix = Arc::new(postfix::PolicyCounters::default());
        postfix::PolicyCounters::add(&postfix.refused);
        let (_shown, status) = tokio::sync::watch::channel(AgentStatus {
            connected: true,
            lag_ms: Some(1500),
            grants_applied: 7,
            ..AgentStatus::default()
        });
        let page = Page {
            pop3: Some(pop3),
            postfix: Some(postfix),
            agent: Some(status),
            ..Page::default()
        };
        let listeners = MetricsListeners::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let addr = listeners.local_addrs()[0];
        let stop = CancellationToken::new();
        tokio::spawn(serve(listeners, Arc::new(page), stop.clone()));
        (addr, stop)
    }

    /// Sends `request` whole and reads the answer to the end (each asks
    /// the server to close).
    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("an answer in time")
            .unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn get_metrics_answers_the_page_and_nothing_else_is_served() {
        let (addr, _stop) = serving().await;
        let page = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(
            page.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{page}"
        );
        for line in [
            "smtp_gate_build_info{version=\"",
            "smtp_gate_pop3_logins_total{method=\"apop\",result=\"ok\"} 1\n",
            "smtp_gate_pop3_logins_total{method=\"user-pass\",result=\"ok\"} 0\n",
            "smtp_gate_pop3_connections_open 0\n",
            "smtp_gate_policy_requests_total{hook=\"postfix\",result=\"refused\"} 1\n",
            "smtp_gate_bus_connected 1\n",
            "smtp_gate_bus_lag_seconds 1.5\n",
            "smtp_gate_bus_applied_total{op=\"grant\"} 7\n",
        ] {
            assert!(page.contains(line), "{line:?} missing:\n{page}");
        }
        assert!(
            !page.contains("hook=\"dovecot\""),
            "no Dovecot hook here:\n{page}"
        );
        assert!(!page.contains("smtp_gate_packets_total"), "no gate here");

        let head = ask(
            addr,
            "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "no body: {head}");

        for path in ["/", "/metrics/", "/metricsx", "/favicon.ico"] {
            let answer = ask(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            let answer = ask(
                addr,
                &format!(
                    "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                ),
            )
            .await;
            assert!(answer.starts_with("HTTP/1.1 405 "), "{method}: {answer}");
            assert!(answer.contains("\r\nallow: GET, HEAD\r\n"), "{answer}");
        }
        let with_body = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(with_body.starts_with("HTTP/1.1 413 "), "{with_body}");
    }

    /// A scraper keeps its connection: two pages on one.
    #[tokio::test]
    async fn a_kept_alive_connection_is_served_again() {
        let (addr, _stop) = serving().await;
        let twice = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n\
             GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(twice.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{twice}");
    }

    /// A header that does not end, or is too large, does not hold a
    /// connection: hyper answers or closes within the header timeout.
    #[tokio::test]
    async fn an_oversized_header_is_refused() {
        let (addr, _stop) = serving().await;
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
            "y".repeat(64 * 1024)
        );
        let answer = ask(addr, &huge).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
    }

    /// A port taken stops the start, naming the key and the address.
    #[tokio::test]
    async fn a_port_taken_is_an_error_naming_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = MetricsListeners::bind(&[addr])
            .err()
            .expect("the port is taken");
        let text = format!("{e:#}");
        assert!(
            text.starts_with(&format!("metrics_listen = {addr}: cannot listen: ")),
            "{text}"
        );
    }
}
