//! The tokio service: listeners, the connection slots (slots.rs),
//! per-connection timers and delays, and graceful shutdown.
//!
//! A connection's time limits: until it logs in, `login_timeout` from its
//! start, whatever it sends; in every state, `line_timeout` for a command
//! line from its first octet, and `idle_timeout` from its last complete
//! command (octets trickling in without a line end are not a command).
//!
//! With a certificate (tls.rs), the `listen_tls` listeners speak TLS from
//! the first octet, and the others take STLS: the connection then goes on
//! over TLS, with the same session.

mod accept_errors;
mod conn;
pub mod open_files;
pub mod proxy;
mod session_end;
pub(crate) mod slots;

pub use proxy::{Peer, ProxyDoor};
pub use slots::ClientNetwork;

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use log::{debug, info, warn};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::maildrop::MaildropStore;
use crate::{
    auth::{apop::TimestampSource, password_checks::PasswordChecks, user_throttle::UserThrottle},
    config::ServerConfig,
    counters::{Handshake, LoginResult, NoSlot, Pop3Counters},
    duration::format_duration,
    framing::LineBuffer,
    live_config::LiveConfig,
    log_text::LogText,
    network,
    proxy_header::Addresses,
    reply::{ReplyBuffer, ReplySink, RespCode, FLUSH_AT},
    session::{EndReason, Flow, Session, SessionContext, Transport, LOG_TARGET, MAX_BAD_COMMANDS},
    session_id::{SessionId, SessionIds},
    tls::{self, HandshakeError, Tls},
    Authenticator, FailureSink, GrantSink,
};
use accept_errors::AcceptErrors;
use conn::Conn;
use proxy::Refusal;
use session_end::Served;
use slots::{Admission, Slot, Slots};

/// The service's dependencies.
#[derive(Clone)]
pub struct Backends {
    pub auth: Arc<dyn Authenticator>,
    pub store: Arc<dyn MaildropStore>,
    pub grants: Arc<dyn GrantSink>,
    pub failures: Arc<dyn FailureSink>,
}

pub struct Server {
    live: Arc<LiveConfig>,
    backends: Backends,
    /// Each listener, and whether it is behind a load balancer.
    listeners: Vec<(TcpListener, bool)>,
    door: Arc<ProxyDoor>,
    /// The certificate, if one is configured: STLS on `listeners`.
    tls: Option<Arc<Tls>>,
    /// Implicit TLS (RFC 8314), each with whether it is behind a load
    /// balancer (which sends its PROXY header before the handshake).
    tls_listeners: Vec<(TcpListener, bool)>,
    /// What the service did, for the daemon's metrics.
    counters: Arc<Pop3Counters>,
}

const READ_CHUNK: usize = 4096;

impl Server {
    /// Binds every listen address, TLS ones too, and reads the certificate
    /// if one is configured; fails naming the address or the file that
    /// cannot be had.
    pub async fn bind(config: ServerConfig, backends: Backends) -> io::Result<Self> {
        let tls = Tls::from_config(&config).map_err(io::Error::other)?;
        let listeners = bind_listeners(&config.listen)?;
        let tls_listeners = bind_listeners(&config.tls_listen())?;
        let server = Self::with_listeners(config, backends, listeners);
        Ok(match tls {
            Some(tls) => server.serving_tls(tls, tls_listeners),
            None => server,
        })
    }

    /// A server on listeners bound beforehand (the daemon binds first, so
    /// that a port it cannot have stops it before it touches the gate):
    /// those of `config.listen`, in its order, as `bind_listeners` gives
    /// them.
    pub fn with_listeners(
        config: ServerConfig,
        backends: Backends,
        listeners: Vec<TcpListener>,
    ) -> Self {
        // Which listener is proxied is known by its place: one taken for
        // another would serve a load balancer's clients as the balancer.
        assert_eq!(
            listeners.len(),
            config.listen.len(),
            "one listener for each address of `listen`"
        );
        let listeners = listeners
            .into_iter()
            .zip(&config.listen)
            .map(|(listener, addr)| (listener, config.is_proxied(*addr)))
            .collect();
        Self {
            live: Arc::new(LiveConfig::new(config)),
            backends,
            listeners,
            door: Arc::default(),
            tls: None,
            tls_listeners: Vec::new(),
            counters: Arc::default(),
        }
    }

    /// Serves TLS with `tls`'s certificate: STLS on the listeners it has,
    /// implicit TLS on `tls_listeners`: those of `tls_listen()`, in its
    /// order, bound beforehand.
    pub fn serving_tls(mut self, tls: Tls, tls_listeners: Vec<TcpListener>) -> Self {
        let config = self.live.current();
        let addrs = config.tls_listen();
        // As in `with_listeners`: a proxied listener is known by its place.
        assert_eq!(
            tls_listeners.len(),
            addrs.len(),
            "one listener for each address of `listen_tls`"
        );
        self.tls = Some(Arc::new(tls));
        self.tls_listeners = tls_listeners
            .into_iter()
            .zip(&addrs)
            .map(|(listener, addr)| (listener, config.is_proxied(*addr)))
            .collect();
        self
    }

    /// The certificate in force, which a reload replaces; `None` without
    /// TLS.
    pub fn certificates(&self) -> Option<Arc<tls::Certificates>> {
        self.tls.as_ref().map(|tls| tls.certificates())
    }

    /// The addresses of the implicit-TLS listeners.
    pub fn tls_local_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// What the service did since it started: logins, sessions, TLS
    /// handshakes (counters.rs).
    pub fn counters(&self) -> Arc<Pop3Counters> {
        Arc::clone(&self.counters)
    }

    /// The proxied listeners' count of refused connections.
    pub fn proxy_door(&self) -> Arc<ProxyDoor> {
        Arc::clone(&self.door)
    }

    /// The settings while it runs, which a reload replaces.
    pub fn live_config(&self) -> Arc<LiveConfig> {
        Arc::clone(&self.live)
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// sessions finish within the grace period and cuts the rest (a cut
    /// session never enters UPDATE, so it deletes nothing; a QUIT already
    /// applying its deletions runs to its end on the blocking pool and
    /// still answers). A session in a file operation that does not end (a
    /// file system that hangs) is waited for as long again, then left
    /// behind: it cannot hold the shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = self.live.slots();
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let timestamps = Arc::new(TimestampSource::new(&self.live.current().hostname));
        let ids = Arc::new(SessionIds::new());
        let password_checks = PasswordChecks::per_cpu();
        let user_throttle = Arc::new(UserThrottle::new());
        let mut accept_loops = Vec::new();
        if let Some(tls) = &self.tls {
            tokio::spawn(tls::watch::run(tls.certificates(), shutdown.clone()));
        }
        // (listener, proxied, implicit TLS).
        let listeners = (self
            .listeners
            .into_iter()
            .map(|(l, proxied)| (l, proxied, false)))
        .chain(
            self.tls_listeners
                .into_iter()
                .map(|(l, proxied)| (l, proxied, true)),
        );
        for (listener, proxied, implicit_tls) in listeners {
            let shared = Shared {
                live: Arc::clone(&self.live),
                backends: self.backends.clone(),
                slots: Arc::clone(&slots),
                tracker: tracker.clone(),
                hard_stop: hard_stop.clone(),
                timestamps: Arc::clone(&timestamps),
                ids: Arc::clone(&ids),
                password_checks: Arc::clone(&password_checks),
                user_throttle: Arc::clone(&user_throttle),
                door: Arc::clone(&self.door),
                tls: self.tls.clone(),
                counters: Arc::clone(&self.counters),
            };
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                proxied,
                implicit_tls,
                shared,
                shutdown.clone(),
            )));
        }
        shutdown.cancelled().await;
        for handle in accept_loops {
            let _ = handle.await;
        }
        tracker.close();
        let config = self.live.current();
        let open = tracker.len();
        if open > 0 {
            info!(
                "shutting down: waiting up to {:?} for {open} session(s)",
                config.shutdown_grace
            );
        }
        if tokio::time::timeout(config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                "shutdown grace over: closing {} session(s) without applying their deletions",
                tracker.len()
            );
            hard_stop.cancel();
            // A session in a file operation (on the blocking pool) ends
            // when the operation does; one the file system never answers
            // is left behind after as long again.
            if tokio::time::timeout(config.shutdown_grace, tracker.wait())
                .await
                .is_err()
            {
                warn!(
                    "shutting down without {} session(s) still waiting for the file system",
                    tracker.len()
                );
            }
        }
    }
}

/// Binds the addresses; an error names the address that failed.
pub fn bind_listeners(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|addr| {
            listen(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        })
        .collect()
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            // `[::]` means both families, whatever net.ipv6.bindv6only
            // says: IPv4 clients arrive as ::ffff:a.b.c.d.
            socket2::SockRef::from(&socket).set_only_v6(false)?;
        }
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

#[derive(Clone)]
struct Shared {
    live: Arc<LiveConfig>,
    backends: Backends,
    slots: Arc<Slots>,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
    timestamps: Arc<TimestampSource>,
    ids: Arc<SessionIds>,
    password_checks: Arc<PasswordChecks>,
    user_throttle: Arc<UserThrottle>,
    door: Arc<ProxyDoor>,
    /// The certificate, if one is configured.
    tls: Option<Arc<Tls>>,
    counters: Arc<Pop3Counters>,
}

/// Accepts connections on `listener`, which is behind a load balancer if
/// `proxied`, and speaks TLS from the first octet if `implicit_tls`.
async fn accept_loop(
    listener: TcpListener,
    proxied: bool,
    implicit_tls: bool,
    shared: Shared,
    shutdown: CancellationToken,
) {
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    errors.succeeded();
                    pair
                }
                Err(e) => {
                    let pause = errors.failed(&e);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let id = shared.ids.next();
        if proxied {
            let config = shared.live.current();
            if !network::contains(&config.proxy_trusted_networks, peer.ip()) {
                shared.door.refuse(peer, &Refusal::Untrusted);
                continue;
            }
            let Some(waiting) = shared.door.wait(config.max_connections) else {
                shared.door.refuse(peer, &Refusal::TooManyWaiting);
                continue;
            };
            let shared = shared.clone();
            shared.tracker.clone().spawn(async move {
                let mut stream = stream;
                let header =
                    proxy::read_header(&mut stream, config.proxy_timeout, &shared.hard_stop).await;
                drop(waiting);
                match header {
                    // No client named (v2 LOCAL, v1 UNKNOWN): a balancer's
                    // health check, or a client it cannot describe (HAProxy
                    // sends UNKNOWN for one on a UNIX socket). Served as
                    // the balancer, such a client would be granted, and
                    // judged, under the balancer's address: it gets the
                    // greeting a health check looks for, and no session.
                    Ok(Addresses::Own) => health_check(stream, implicit_tls, peer, id).await,
                    Ok(addresses) => {
                        let client = Peer::proxied(peer, addresses);
                        if shared.backends.failures.is_banned(client.ip()) {
                            shared.door.refuse(peer, &Refusal::Banned(client.ip()));
                            return;
                        }
                        match admit(&shared, client, id) {
                            Ok(slot) => {
                                serve_connection(stream, implicit_tls, client, id, slot, &shared)
                                    .await
                            }
                            Err(text) => refuse(stream, text).await,
                        }
                    }
                    Err(why) => shared.door.refuse(peer, &why),
                }
            });
            continue;
        }
        // The slot is taken here, in the order connections come.
        let client = Peer::direct(peer);
        let shared = shared.clone();
        match admit(&shared, client, id) {
            Ok(slot) => shared.tracker.clone().spawn(async move {
                serve_connection(stream, implicit_tls, client, id, slot, &shared).await;
            }),
            // A refusal in clear would be garbage to a TLS client, and a
            // handshake is what a full server cannot afford: closed.
            Err(_) if implicit_tls => continue,
            Err(text) => shared.tracker.spawn(refuse(stream, text)),
        };
    }
}

/// A connection whose PROXY header names no client: on a plain listener
/// the greeting (what a health check expects), then the connection is
/// closed; an implicit-TLS listener closes it at once (a TCP check
/// passes, a session cannot start).
async fn health_check(mut stream: TcpStream, implicit_tls: bool, proxy: SocketAddr, id: SessionId) {
    debug!("session={id} PROXY header from {proxy} names no client: health check, no session");
    if !implicit_tls {
        let mut reply = ReplyBuffer::new();
        reply.ok("smtp-gate POP3 server ready (no client address: health check only)");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
    }
}

/// A slot for `peer`'s client, or the text it is refused with.
fn admit(shared: &Shared, peer: Peer, id: SessionId) -> Result<Slot, &'static str> {
    match shared.slots.admit(peer.ip()) {
        Admission::Admitted { slot, made_room } => {
            debug!("session={id} connect addr={peer}");
            if let Some(network) = made_room {
                debug!(
                    "session={id} all slots taken: the newest connection of {network} that \
                     has not logged in is cut for {peer}"
                );
            }
            Ok(slot)
        }
        Admission::NetworkFull(network) => {
            shared.counters.refused(NoSlot::NetworkFull);
            debug!("session={id} refused {peer}: {network} holds its most connections");
            Err("too many connections from your network, try again later")
        }
        Admission::ServerFull => {
            shared.counters.refused(NoSlot::ServerFull);
            debug!("session={id} refused {peer}: all slots taken");
            Err("too many connections, try again later")
        }
    }
}

/// Tells a client that got no slot why, and closes.
async fn refuse(mut stream: TcpStream, text: &'static str) {
    let mut reply = ReplyBuffer::new();
    reply.err(Some(RespCode::SysTemp), text);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
}

/// Why a connection was cut before it logged in.
#[derive(Debug, Clone, Copy)]
enum CutBeforeLogin {
    LoginTimeout,
    /// Its slot went to a newcomer from a network holding fewer.
    MadeRoom,
    /// The shutdown grace is over.
    Shutdown,
}

impl CutBeforeLogin {
    fn reason(self) -> EndReason {
        match self {
            Self::LoginTimeout => EndReason::LoginTimeout,
            Self::MadeRoom => EndReason::Evicted,
            Self::Shutdown => EndReason::Shutdown,
        }
    }
}

/// Serves one connection in `slot`. Until the session logs in, the login
/// timeout, a newcomer that needs the slot and the end of the shutdown
/// grace can cut it, whatever it is doing (even waiting for a client that
/// does not read its replies, or for its maildrop to open: a login is
/// bounded by the login timeout, and the store stops when it is cut).
/// However it ends, its summary is logged (`Served`).
async fn serve_connection(
    stream: TcpStream,
    implicit_tls: bool,
    peer: Peer,
    id: SessionId,
    slot: Slot,
    shared: &Shared,
) {
    // The settings in force now stay this connection's to its end.
    let config = shared.live.current();
    let login_deadline = Instant::now() + config.login_timeout;
    let logged_in = CancellationToken::new();
    let ctx = SessionContext {
        id,
        auth: Arc::clone(&shared.backends.auth),
        store: Arc::clone(&shared.backends.store),
        grants: Arc::clone(&shared.backends.grants),
        failures: Arc::clone(&shared.backends.failures),
        peer: peer.ip(),
        network: slot.network(),
        password_checks: Arc::clone(&shared.password_checks),
        user_throttle: Arc::clone(&shared.user_throttle),
        max_login_failures: config.max_login_failures,
        // Whether the client is on this host is the connection's, and
        // never true through a load balancer: not the balancer's address
        // (behind one on this host every client would count as local), nor
        // the address its header names (a remote balancer saying
        // 127.0.0.1 would make a password in clear acceptable, though it
        // crossed the network to get here).
        transport: if implicit_tls {
            Transport::implicit_tls(peer.is_local())
        } else {
            Transport::cleartext(peer.is_local(), shared.tls.is_some())
        },
        apop: config.apop,
        counters: Arc::clone(&shared.counters),
    };
    let session = Session::new(ctx, shared.timestamps.next());
    let mut served = Served::new(
        session,
        peer.ip(),
        peer.via_ip(),
        Arc::clone(&shared.counters),
    );
    let mut conn = Conn::Plain(stream);
    // Biased: a session that has just logged in marks it before the cut
    // is looked at, so a login is never cut.
    let cut = tokio::select! {
        biased;
        ended = serve_streams(&mut conn, implicit_tls, &config, &slot, &logged_in, shared, &mut served) => {
            served.ended(ended);
            conn.close().await;
            return;
        }
        cut = cut_before_login(login_deadline, slot.cut(), &logged_in, &shared.hard_stop) => cut,
    };
    served.ended(cut.reason());
    debug!(
        "session={id} connection from {peer} ({}) cut before login: {cut:?}",
        slot.network()
    );
    let mut goodbye = ReplyBuffer::new();
    let cut_login = served.session.tally().login_in_progress();
    if let Some((user, method)) = cut_login {
        let why = match cut {
            CutBeforeLogin::LoginTimeout => format!(
                "its maildrop was not open within the login timeout ({})",
                format_duration(config.login_timeout)
            ),
            CutBeforeLogin::MadeRoom => "cut to make room for a newcomer".to_string(),
            CutBeforeLogin::Shutdown => "the server shut down".to_string(),
        };
        shared.counters.login(method, LoginResult::Cut);
        log::warn!(target: LOG_TARGET, "session={id} login user={} addr={} method={method} result=cut ({why})",
            LogText::of(user),
            served.peer
        );
    }
    match (cut, cut_login) {
        (CutBeforeLogin::LoginTimeout, Some(_)) => goodbye.err(
            Some(RespCode::SysTemp),
            &format!(
                "disconnected: the maildrop could not be opened within {}, try again later",
                format_duration(config.login_timeout)
            ),
        ),
        (CutBeforeLogin::LoginTimeout, None) => goodbye.err(
            None,
            &format!(
                "disconnected: no login within {}",
                format_duration(config.login_timeout)
            ),
        ),
        (CutBeforeLogin::MadeRoom, _) => goodbye.err(
            Some(RespCode::SysTemp),
            "disconnected to make room: too many connections from your network",
        ),
        (CutBeforeLogin::Shutdown, _) => {
            goodbye.err(Some(RespCode::SysTemp), "server shutting down")
        }
    }
    if conn.last_words(goodbye.as_bytes()).await {
        served.octets_sent += goodbye.len() as u64;
    }
    conn.close().await;
}

/// The connection's conversation over the streams it goes through: TLS
/// first on an implicit-TLS listener; TCP, then TLS after STLS, on the
/// others. Gives why it ended.
async fn serve_streams(
    conn: &mut Conn,
    implicit_tls: bool,
    config: &ServerConfig,
    slot: &Slot,
    logged_in: &CancellationToken,
    shared: &Shared,
    served: &mut Served,
) -> EndReason {
    if implicit_tls {
        if let Err(reason) = start_tls(conn, shared, served).await {
            return reason;
        }
    }
    let mut greet = true;
    loop {
        let conversed = match conn {
            Conn::Plain(stream) => {
                converse(stream, greet, config, slot, logged_in, shared, served).await
            }
            Conn::Tls(stream) => {
                converse(
                    &mut **stream,
                    greet,
                    config,
                    slot,
                    logged_in,
                    shared,
                    served,
                )
                .await
            }
            Conn::Gone => return EndReason::IoError,
        };
        match conversed {
            Conversed::Ended(reason) => return reason,
            Conversed::StartTls => {
                if let Err(reason) = start_tls(conn, shared, served).await {
                    return reason;
                }
                // RFC 2595 section 4: no new greeting; the session
                // forgets what it was told in clear.
                served.session.tls_started();
                greet = false;
            }
        }
    }
}

/// The TLS handshake on the connection's TCP stream, bounded in time
/// (tls.rs); the connection is TLS from then on. A handshake that fails is
/// the client's doing (or an attacker's): logged at debug, and the
/// session's end line says so.
async fn start_tls(conn: &mut Conn, shared: &Shared, served: &mut Served) -> Result<(), EndReason> {
    let id = served.session.id();
    let (Some(tls), Conn::Plain(_)) = (&shared.tls, &*conn) else {
        log::error!("session={id} TLS asked for where it cannot be: the session is closed");
        return Err(EndReason::IoError);
    };
    let Conn::Plain(stream) = std::mem::replace(conn, Conn::Gone) else {
        unreachable!("a plain stream, looked at just above")
    };
    let handshake = tokio::select! {
        _ = shared.hard_stop.cancelled() => return Err(EndReason::Shutdown),
        handshake = tls.handshake(stream) => handshake,
    };
    match handshake {
        Ok(stream) => {
            let version = tls::version_name(&stream);
            debug!(
                "session={id} TLS up: {version} {:?}",
                stream
                    .get_ref()
                    .1
                    .negotiated_cipher_suite()
                    .map(|s| s.suite())
            );
            served.tls = Some(version);
            shared.counters.handshake(Handshake::Ok);
            *conn = Conn::Tls(Box::new(stream));
            Ok(())
        }
        Err(HandshakeError::TimedOut) => {
            shared.counters.handshake(Handshake::TimedOut);
            debug!(
                "session={id} TLS handshake not done within {}",
                format_duration(tls::HANDSHAKE_TIMEOUT)
            );
            Err(EndReason::TlsHandshakeTimeout)
        }
        Err(HandshakeError::Failed(e)) => {
            shared.counters.handshake(Handshake::Failed);
            debug!("session={id} TLS handshake failed: {e}");
            Err(EndReason::TlsHandshakeFailed)
        }
    }
}

/// How a conversation over one stream ended.
enum Conversed {
    Ended(EndReason),
    /// STLS was accepted: TLS must start on the same connection.
    StartTls,
}

impl From<EndReason> for Conversed {
    fn from(reason: EndReason) -> Self {
        Conversed::Ended(reason)
    }
}

/// Resolves when the connection must be cut before it logged in; never
/// once `logged_in` is cancelled.
async fn cut_before_login(
    deadline: Instant,
    cut: &CancellationToken,
    logged_in: &CancellationToken,
    hard_stop: &CancellationToken,
) -> CutBeforeLogin {
    tokio::select! {
        biased;
        _ = logged_in.cancelled() => std::future::pending().await,
        _ = cut.cancelled() => CutBeforeLogin::MadeRoom,
        _ = hard_stop.cancelled() => CutBeforeLogin::Shutdown,
        _ = tokio::time::sleep_until(deadline.into()) => CutBeforeLogin::LoginTimeout,
    }
}

/// The conversation over one stream: the greeting if `greet`, commands
/// and replies, the idle and line timers, shutdown. Gives why it ended, or
/// that TLS must start (STLS).
async fn converse<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: &mut S,
    greet: bool,
    config: &ServerConfig,
    slot: &Slot,
    logged_in: &CancellationToken,
    shared: &Shared,
    served: &mut Served,
) -> Conversed {
    let Served {
        session,
        octets_sent,
        ..
    } = served;
    let id = session.id();
    let mut out = Replies {
        stream,
        buffer: ReplyBuffer::new(),
        send_timeout: config.send_timeout,
        stop: &shared.hard_stop,
        lost: None,
        sent: octets_sent,
    };
    if greet {
        session.greeting(&mut out.buffer);
    }
    let mut lines = LineBuffer::new();
    lines.set_max_line(session.max_line());
    let mut chunk = vec![0u8; READ_CHUNK];
    // The autologout timer of RFC 1939 counts from here: the last
    // complete command (its replies sent), or the greeting.
    let mut quiet_since = Instant::now();
    loop {
        let mut answered = false;
        // Answer every complete line that has arrived, in order
        // (RFC 2449 PIPELINING), then send the replies in one write.
        while let Some(line) = lines.next_line() {
            answered = true;
            let flow = session.handle(line, &mut out).await;
            lines.set_max_line(session.max_line());
            if !logged_in.is_cancelled() && session.is_logged_in() {
                slot.logged_in();
                logged_in.cancel();
            }
            match flow {
                Flow::Continue => {
                    if let Err(e) = out.make_room().await {
                        return lost(id, &e).into();
                    }
                }
                Flow::StartTls => {
                    if let Err(e) = out.send().await {
                        return lost(id, &e).into();
                    }
                    // RFC 2595 section 4 and the STARTTLS command
                    // injection (CVE-2011-0411): whatever the client sent
                    // after STLS, before the handshake, came in clear and
                    // could be anybody's; it is dropped unread, never
                    // answered inside TLS.
                    let dropped = lines.pending_octets();
                    if dropped > 0 {
                        debug!("session={id} STLS: {dropped} octets sent after it dropped unread");
                    }
                    return Conversed::StartTls;
                }
                Flow::Close => {
                    if let Err(e) = out.send().await {
                        return lost(id, &e).into();
                    }
                    let tally = session.tally();
                    return if tally.quit {
                        EndReason::Quit
                    } else if tally.bad_commands >= MAX_BAD_COMMANDS {
                        EndReason::BadCommands
                    } else {
                        EndReason::ReadFailed
                    }
                    .into();
                }
                flow @ (Flow::LoginFailed | Flow::LoginFailedClose) => {
                    // The delay holds only this connection's task.
                    tokio::select! {
                        _ = tokio::time::sleep(config.login_failure_delay) => {}
                        _ = shared.hard_stop.cancelled() => return EndReason::Shutdown.into(),
                    }
                    if let Err(e) = out.send().await {
                        return lost(id, &e).into();
                    }
                    if flow == Flow::LoginFailedClose {
                        return EndReason::LoginFailures.into();
                    }
                }
            }
        }
        if let Err(e) = out.send().await {
            return lost(id, &e).into();
        }
        if answered {
            quiet_since = Instant::now();
        }
        let idle_until = quiet_since + config.idle_timeout;
        let line_until = lines
            .unfinished_since()
            .map(|first_octet| first_octet + config.line_timeout);
        let (until, line_too_slow) = match line_until {
            Some(line_until) if line_until < idle_until => (line_until, true),
            _ => (idle_until, false),
        };
        let woke = tokio::select! {
            _ = shared.hard_stop.cancelled() => Woke::Stop,
            _ = tokio::time::sleep_until(until.into()) => Woke::Timer,
            read = out.stream.read(&mut chunk) => Woke::Read(read),
        };
        match woke {
            Woke::Stop => {
                out.last_words("server shutting down", Some(RespCode::SysTemp))
                    .await;
                return EndReason::Shutdown.into();
            }
            Woke::Timer => {
                let (why, reason) = if line_too_slow {
                    (
                        format!(
                            "disconnected: a command line took longer than {}",
                            format_duration(config.line_timeout)
                        ),
                        EndReason::LineTimeout,
                    )
                } else {
                    (
                        "disconnected for inactivity".to_string(),
                        EndReason::IdleTimeout,
                    )
                };
                debug!("session={id} cut: {why}");
                out.last_words(&why, None).await;
                return reason.into();
            }
            Woke::Read(Ok(0)) => return EndReason::ClientClosed.into(),
            Woke::Read(Ok(n)) => lines.extend(&chunk[..n]),
            Woke::Read(Err(e)) => return lost(id, &e).into(),
        }
    }
}

/// What a conversation waiting for the client woke up for.
enum Woke {
    /// The shutdown grace is over.
    Stop,
    /// The line or idle timeout.
    Timer,
    Read(io::Result<usize>),
}

/// Why a session whose connection failed ended.
fn lost(id: SessionId, e: &io::Error) -> EndReason {
    debug!("session={id} connection lost: {e}");
    match e.kind() {
        io::ErrorKind::TimedOut => EndReason::SendTimeout,
        // `Replies::send` when the shutdown grace is over.
        io::ErrorKind::Interrupted => EndReason::Shutdown,
        _ => EndReason::IoError,
    }
}

/// The sending side of a connection: the replies not sent yet, and how
/// long the client may take to read them.
struct Replies<'a, S> {
    stream: &'a mut S,
    buffer: ReplyBuffer,
    /// A client that reads nothing of a reply for this long is gone.
    send_timeout: Duration,
    /// Cancelled when the shutdown grace is over.
    stop: &'a CancellationToken,
    /// Why the connection was lost, once it was: nothing more is sent.
    lost: Option<(io::ErrorKind, String)>,
    /// Octets written so far, for the session's summary.
    sent: &'a mut u64,
}

impl<S: AsyncWrite + Unpin + Send> ReplySink for Replies<'_, S> {
    fn buffer(&mut self) -> &mut ReplyBuffer {
        &mut self.buffer
    }

    async fn make_room(&mut self) -> io::Result<()> {
        if self.buffer.len() >= FLUSH_AT {
            self.send().await
        } else {
            Ok(())
        }
    }
}

impl<S: AsyncWrite + Unpin + Send> Replies<'_, S> {
    /// Sends the pending replies. A client that reads nothing for the send
    /// timeout is gone (one that reads slowly is not: every write that
    /// moves starts the timeout again), and so is one still not reading
    /// when the shutdown grace is over.
    async fn send(&mut self) -> io::Result<()> {
        if let Some((kind, why)) = &self.lost {
            return Err(io::Error::new(*kind, why.clone()));
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = tokio::select! {
            // A reply that can go out does, even once the grace is over.
            biased;
            r = write_with_progress(&mut *self.stream, self.buffer.as_bytes(), self.send_timeout, self.sent) => r,
            _ = self.stop.cancelled() => {
                Err(io::Error::new(io::ErrorKind::Interrupted, "server shutting down"))
            }
        };
        self.buffer.clear();
        if let Err(e) = &result {
            self.lost = Some((e.kind(), e.to_string()));
        }
        result
    }

    /// A last `-ERR` before the connection closes, given a second to go
    /// out, whatever was pending.
    async fn last_words(&mut self, text: &str, code: Option<RespCode>) {
        self.buffer.clear();
        self.buffer.err(code, text);
        let written = tokio::time::timeout(Duration::from_secs(1), async {
            self.stream.write_all(self.buffer.as_bytes()).await?;
            self.stream.flush().await
        })
        .await;
        if let Ok(Ok(())) = written {
            *self.sent += self.buffer.len() as u64;
        }
    }
}

/// Writes all of `bytes`, failing when one write makes no progress for
/// `timeout`; adds what was written to `sent`. Then flushes (TLS holds
/// what it encrypted until the socket takes it), within `timeout` too.
async fn write_with_progress<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut bytes: &[u8],
    timeout: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match tokio::time::timeout(timeout, stream.write(bytes)).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("client read nothing for {timeout:?}"),
                ))
            }
            Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => {
                *sent += n as u64;
                bytes = &bytes[n..];
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    match tokio::time::timeout(timeout, stream.flush()).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client read nothing for {timeout:?}"),
        )),
        Ok(flushed) => flushed,
    }
}
