//! The tokio service: listeners, the connection limit, per-connection
//! timers and delays, and graceful shutdown.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use log::{debug, info, warn};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::maildrop::MaildropStore;
use crate::{
    auth::apop::TimestampSource,
    config::ServerConfig,
    framing::LineBuffer,
    live_config::LiveConfig,
    normalize_addr,
    reply::{ReplyBuffer, RespCode},
    session::{Flow, Session, SessionContext},
    Authenticator, GrantSink,
};

/// The service's dependencies.
#[derive(Clone)]
pub struct Backends {
    pub auth: Arc<dyn Authenticator>,
    pub store: Arc<dyn MaildropStore>,
    pub grants: Arc<dyn GrantSink>,
}

pub struct Server {
    live: Arc<LiveConfig>,
    backends: Backends,
    listeners: Vec<TcpListener>,
}

const READ_CHUNK: usize = 4096;
/// Replies are sent once this much is pending, even inside a pipelined
/// batch: a client that pipelines RETRs and never reads must not make the
/// server hold all the messages at once.
const FLUSH_AT: usize = 64 * 1024;

impl Server {
    /// Binds every listen address; fails naming the one that cannot be had.
    pub async fn bind(config: ServerConfig, backends: Backends) -> io::Result<Self> {
        let listeners = bind_listeners(&config.listen)?;
        Ok(Self::with_listeners(config, backends, listeners))
    }

    /// A server on listeners bound beforehand (the daemon binds first, so
    /// that a port it cannot have stops it before it touches the gate).
    pub fn with_listeners(
        config: ServerConfig,
        backends: Backends,
        listeners: Vec<TcpListener>,
    ) -> Self {
        Self {
            live: Arc::new(LiveConfig::new(config)),
            backends,
            listeners,
        }
    }

    /// The settings while it runs, which a reload replaces.
    pub fn live_config(&self) -> Arc<LiveConfig> {
        Arc::clone(&self.live)
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets
    /// sessions finish within the grace period and cuts the rest (a cut
    /// session never enters UPDATE, so it deletes nothing; a QUIT already
    /// applying its deletions runs to its end on the blocking pool).
    pub async fn run(self, shutdown: CancellationToken) {
        let limit = self.live.connections();
        let per_ip = Arc::new(PerIpCount::default());
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let timestamps = Arc::new(TimestampSource::new(&self.live.current().hostname));
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            let shared = Shared {
                live: Arc::clone(&self.live),
                backends: self.backends.clone(),
                limit: Arc::clone(&limit),
                per_ip: Arc::clone(&per_ip),
                tracker: tracker.clone(),
                hard_stop: hard_stop.clone(),
                timestamps: Arc::clone(&timestamps),
            };
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
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
            tracker.wait().await;
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
    limit: Arc<Semaphore>,
    per_ip: Arc<PerIpCount>,
    tracker: TaskTracker,
    hard_stop: CancellationToken,
    timestamps: Arc<TimestampSource>,
}

async fn accept_loop(listener: TcpListener, shared: Shared, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ip = normalize_addr(peer.ip());
        let slot = shared
            .per_ip
            .enter(ip, shared.live.current().max_connections_per_ip);
        let permit = Arc::clone(&shared.limit).try_acquire_owned();
        match (slot, permit) {
            (Some(slot), Ok(permit)) => {
                let shared = shared.clone();
                shared.tracker.clone().spawn(async move {
                    let _held = (permit, slot);
                    if let Err(e) = serve_connection(stream, peer, &shared).await {
                        debug!("connection from {peer} ended: {e}");
                    }
                });
            }
            (slot, _) => {
                let text = if slot.is_none() {
                    "too many connections from your address, try again later"
                } else {
                    "too many connections, try again later"
                };
                drop(slot);
                shared.tracker.spawn(async move {
                    let mut stream = stream;
                    let mut reply = ReplyBuffer::new();
                    reply.err(Some(RespCode::SysTemp), text);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        stream.write_all(reply.as_bytes()),
                    )
                    .await;
                });
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
) -> io::Result<()> {
    // The settings in force now stay this connection's to its end.
    let config = &*shared.live.current();
    let stop = &shared.hard_stop;
    let ctx = SessionContext {
        auth: Arc::clone(&shared.backends.auth),
        store: Arc::clone(&shared.backends.store),
        grants: Arc::clone(&shared.backends.grants),
        peer: normalize_addr(peer.ip()),
        max_login_failures: config.max_login_failures,
    };
    let mut session = Session::new(ctx, shared.timestamps.next());
    let mut out = ReplyBuffer::new();
    session.greeting(&mut out);
    let mut lines = LineBuffer::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // Answer every complete line that has arrived, in order
        // (RFC 2449 PIPELINING), then send the replies in one write.
        while let Some(line) = lines.next_line() {
            // A command waiting on a file (in the blocking pool) is cut
            // too when the grace is over; whatever file work it started
            // ends on its own thread.
            let flow = tokio::select! {
                flow = session.handle(line, &mut out) => flow,
                _ = stop.cancelled() => return Ok(()),
            };
            match flow {
                Flow::Continue => {
                    if out.len() >= FLUSH_AT {
                        send(&mut stream, &mut out, config.idle_timeout, stop).await?;
                    }
                }
                Flow::Close => {
                    send(&mut stream, &mut out, config.idle_timeout, stop).await?;
                    return Ok(());
                }
                flow @ (Flow::LoginFailed | Flow::LoginFailedClose) => {
                    // The delay holds only this connection's task.
                    tokio::select! {
                        _ = tokio::time::sleep(config.login_failure_delay) => {}
                        _ = shared.hard_stop.cancelled() => return Ok(()),
                    }
                    send(&mut stream, &mut out, config.idle_timeout, stop).await?;
                    if flow == Flow::LoginFailedClose {
                        return Ok(());
                    }
                }
            }
        }
        if !out.is_empty() {
            send(&mut stream, &mut out, config.idle_timeout, stop).await?;
        }
        let read = tokio::select! {
            _ = shared.hard_stop.cancelled() => {
                out.err(Some(RespCode::SysTemp), "server shutting down");
                let _ = send(&mut stream, &mut out, Duration::from_secs(1), &CancellationToken::new()).await;
                return Ok(());
            }
            read = tokio::time::timeout(config.idle_timeout, stream.read(&mut chunk)) => read,
        };
        match read {
            Err(_) => {
                out.err(None, "disconnected for inactivity");
                let _ = send(
                    &mut stream,
                    &mut out,
                    Duration::from_secs(1),
                    &CancellationToken::new(),
                )
                .await;
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(n)) => lines.extend(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Writes the pending replies; a client that does not read for the idle
/// timeout is gone, and so is one still not reading when the shutdown
/// grace is over.
async fn send(
    stream: &mut TcpStream,
    out: &mut ReplyBuffer,
    timeout: Duration,
    stop: &CancellationToken,
) -> io::Result<()> {
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, stream.write_all(out.as_bytes())) => r,
        _ = stop.cancelled() => {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "server shutting down"));
        }
    };
    out.clear();
    match result {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading",
        )),
    }
}

/// Open connections per client address.
#[derive(Default)]
struct PerIpCount(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in `PerIpCount`; dropping it frees the place.
struct IpSlot {
    count: Arc<PerIpCount>,
    ip: IpAddr,
}

impl PerIpCount {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            count: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.count.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
