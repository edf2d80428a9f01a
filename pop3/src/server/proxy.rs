//! Listeners behind a load balancer (`proxy_listen`): a connection is
//! taken only from `proxy_trusted_networks`, must start with a PROXY
//! header (`crate::proxy_header`) within `proxy_timeout`, and the client
//! the header names is then the client everywhere: its connection slot,
//! its grant, its failed logins, whether it is on this host, the log.
//!
//! The header is read in the connection's own task, never in the accept
//! loop, and octet by octet as the parser asks: nothing the client sent
//! after it (a pipelined command) is taken from the socket. Connections
//! still sending their header hold no slot (their client is not known
//! yet); at most `max_connections` of them wait at once, each for at most
//! `proxy_timeout`, and only trusted proxies can open them.

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use log::{debug, info};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{
    normalize_addr,
    proxy_header::{examine, Addresses, Progress},
};

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client: the connection's peer, or the one a trusted proxy's
    /// header named.
    pub addr: SocketAddr,
    /// The proxy the connection came through, if it did.
    pub via: Option<SocketAddr>,
}

impl Peer {
    /// A connection straight from its client.
    pub fn direct(addr: SocketAddr) -> Self {
        Self { addr, via: None }
    }

    /// A connection from `proxy` that sent `addresses`.
    pub fn proxied(proxy: SocketAddr, addresses: Addresses) -> Self {
        let addr = match addresses {
            Addresses::Proxied { source, .. } => source,
            // A health check: the proxy is the client.
            Addresses::Own => proxy,
        };
        Self {
            addr,
            via: Some(proxy),
        }
    }

    /// The client's address, normalised: what is granted, counted, banned
    /// and judged local. Never the proxy's, unless it is the client.
    pub fn ip(&self) -> IpAddr {
        normalize_addr(self.addr.ip())
    }

    /// Whether the client is on this host: a direct connection from a
    /// loopback address. Nothing that came through a balancer is, whatever
    /// its header says.
    pub fn is_local(&self) -> bool {
        self.via.is_none() && self.ip().is_loopback()
    }

    /// The proxy's address, normalised.
    pub fn via_ip(&self) -> Option<IpAddr> {
        self.via.map(|via| normalize_addr(via.ip()))
    }
}

/// `ADDR` or `ADDR via=PROXY`, as the log lines write `addr=`.
impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(via) = self.via {
            write!(f, " via={via}")?;
        }
        Ok(())
    }
}

/// Why a proxied connection was closed before it was served.
#[derive(Debug)]
pub enum Refusal {
    /// Its peer is not in `proxy_trusted_networks`.
    Untrusted,
    /// `max_connections` connections are already waiting for headers.
    TooManyWaiting,
    /// No whole header within `proxy_timeout`.
    TimedOut,
    /// Closed (or failed) before its header was whole.
    Lost(io::Error),
    /// Not a header that can be taken.
    BadHeader(&'static str),
    /// The shutdown grace ended while it was waited for.
    Shutdown,
    /// The client its header names is banned (the kernel cannot drop it:
    /// its SYN came from the balancer).
    Banned(IpAddr),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Untrusted => f.write_str("not from proxy_trusted_networks"),
            Self::TooManyWaiting => f.write_str("too many connections waiting for their header"),
            Self::TimedOut => f.write_str("no whole PROXY header within proxy_timeout"),
            Self::Lost(e) => write!(f, "lost before its PROXY header was whole: {e}"),
            Self::BadHeader(why) => f.write_str(why),
            Self::Shutdown => f.write_str("server shutting down"),
            Self::Banned(client) => write!(f, "its client {client} is banned"),
        }
    }
}

/// While refusals go on, how often they are reported at info.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The proxied listeners' door: how many connections wait for their
/// header, and the ones turned away (counted; each logged at debug, and at
/// info the first one and then a count at most once a minute, so that a
/// host knocking from outside the trusted networks cannot flood the log).
#[derive(Default)]
pub struct ProxyDoor {
    waiting: AtomicUsize,
    refused: AtomicU64,
    report: Mutex<Report>,
}

#[derive(Default)]
struct Report {
    last: Option<Instant>,
    /// Refusals not reported at info yet.
    unreported: u64,
}

/// A connection's place among those waiting for their header; given back
/// when dropped.
pub struct Waiting(Arc<ProxyDoor>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProxyDoor {
    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A place to wait for a header, if fewer than `limit` wait.
    pub(super) fn wait(self: &Arc<Self>, limit: usize) -> Option<Waiting> {
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let place = Waiting(Arc::clone(self));
        (before < limit).then_some(place)
    }

    /// Counts and logs a refused connection from `proxy`.
    pub(super) fn refuse(&self, proxy: SocketAddr, why: &Refusal) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        debug!("proxied connection from {proxy} refused: {why}");
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        report.unreported += 1;
        let due = report
            .last
            .is_none_or(|last| last.elapsed() >= REPORT_EVERY);
        if due {
            info!(
                "proxied connections refused: {} since the last report, the last from {proxy}: \
                 {why}",
                report.unreported
            );
            report.last = Some(Instant::now());
            report.unreported = 0;
        }
    }
}

/// Reads the PROXY header at the start of `stream`, and nothing after it,
/// within `timeout`.
pub(super) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<Addresses, Refusal> {
    tokio::select! {
        read = tokio::time::timeout(timeout, read_exactly_the_header(stream)) => {
            read.unwrap_or(Err(Refusal::TimedOut))
        }
        _ = stop.cancelled() => Err(Refusal::Shutdown),
    }
}

async fn read_exactly_the_header(stream: &mut TcpStream) -> Result<Addresses, Refusal> {
    let mut received = Vec::new();
    loop {
        match examine(&received) {
            Progress::Incomplete(more) => {
                let start = received.len();
                received.resize(start + more, 0);
                match stream.read(&mut received[start..]).await {
                    Ok(0) => return Err(Refusal::Lost(io::ErrorKind::UnexpectedEof.into())),
                    Ok(n) => received.truncate(start + n),
                    Err(e) => return Err(Refusal::Lost(e)),
                }
            }
            Progress::Done(header) => return Ok(header.addresses),
            Progress::Invalid(why) => return Err(Refusal::BadHeader(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Transport;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A proxy on this host relays a client from elsewhere: the client is
    /// not local, and may not send a password in clear once a certificate
    /// is configured. Nothing that came through a proxy is local: not a
    /// header naming no client, not one naming a loopback address (the
    /// attack review sent `PROXY TCP4 127.0.0.1 ...` from a remote
    /// balancer and was let in in clear). Only a direct loopback
    /// connection is.
    #[test]
    fn the_client_not_the_proxy_decides_what_is_local() {
        let proxy = addr("127.0.0.1:40000");
        let remote = Peer::proxied(
            proxy,
            Addresses::Proxied {
                source: addr("192.0.2.7:5000"),
                destination: addr("198.51.100.1:110"),
            },
        );
        assert_eq!(remote.ip(), "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(remote.via_ip(), Some("127.0.0.1".parse().unwrap()));
        let transport = Transport::cleartext(remote.is_local(), true);
        assert!(!transport.loopback);
        assert!(!transport.cleartext_password_allowed());
        assert!(!Peer::proxied(proxy, Addresses::Own).is_local());
        for named in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            let claimed = Peer::proxied(
                addr("10.0.0.2:40000"),
                Addresses::Proxied {
                    source: addr(named),
                    destination: addr("198.51.100.1:110"),
                },
            );
            assert!(!claimed.is_local(), "{named}");
        }
        assert!(Peer::direct(addr("[::ffff:127.0.0.1]:9")).is_local());
        assert!(!Peer::direct(addr("192.0.2.7:9")).is_local());
        let mapped = Peer::proxied(
            addr("[::ffff:10.0.0.1]:1"),
            Addresses::Proxied {
                source: addr("[::ffff:192.0.2.9]:2"),
                destination: addr("[::1]:110"),
            },
        );
        assert_eq!(mapped.ip(), "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(mapped.via_ip(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_log_names_both() {
        let peer = Peer::proxied(
            addr("10.0.0.1:40000"),
            Addresses::Proxied {
                source: addr("192.0.2.7:5000"),
                destination: addr("198.51.100.1:110"),
            },
        );
        assert_eq!(peer.to_string(), "192.0.2.7:5000 via=10.0.0.1:40000");
        assert_eq!(
            Peer::direct(addr("192.0.2.7:5000")).to_string(),
            "192.0.2.7:5000"
        );
    }

    #[test]
    fn waiting_places_are_bounded_and_given_back() {
        let door = Arc::new(ProxyDoor::default());
        let first = door.wait(2).expect("a place");
        let second = door.wait(2).expect("a place");
        assert!(door.wait(2).is_none(), "a third waits while two do");
        drop(first);
        let _third = door.wait(2).expect("a place given back");
        drop(second);
        door.refuse(addr("203.0.113.5:1"), &Refusal::Untrusted);
        door.refuse(addr("203.0.113.5:2"), &Refusal::Untrusted);
        assert_eq!(door.refused(), 2);
    }
}
