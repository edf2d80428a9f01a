//! A load balancer for the labs: a TCP relay in a namespace that puts a
//! PROXY protocol v2 header (HAProxy's proxy-protocol.txt, section 2.2,
//! laid out here independently of the daemon's parser) naming the client
//! before the client's bytes, as HAProxy's `send-proxy-v2` does.
//!
//! It accepts and relays until it is dropped, or for at most
//! [`PROXY_LIFETIME`]; every relayed connection ends at most
//! [`RELAY_IDLE`] after its last octet.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::enter_netns;

/// The longest a proxy runs, whatever the test does.
pub const PROXY_LIFETIME: Duration = Duration::from_secs(300);
/// A relayed connection with nothing to carry this long is closed.
pub const RELAY_IDLE: Duration = Duration::from_secs(60);

/// A running relay; stops accepting when dropped.
pub struct ProxyV2 {
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ProxyV2 {
    /// Listens on `listen` in namespace `ns` and relays every connection
    /// to `upstream`, from `ns`, behind a PROXY v2 header naming the
    /// client and `listen`. Returns once it listens.
    pub fn start(ns: &str, listen: SocketAddr, upstream: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicUsize::new(0));
        let (ready, listening) = mpsc::channel();
        let ns = ns.to_string();
        let thread = {
            let (stop, relayed) = (Arc::clone(&stop), Arc::clone(&relayed));
            thread::spawn(move || {
                let listener = enter_netns(&ns)
                    .and_then(|()| TcpListener::bind(listen))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l));
                let listener = match listener {
                    Ok(listener) => {
                        let _ = ready.send(Ok(()));
                        listener
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("proxy on {listen} in {ns}: {e}")));
                        return;
                    }
                };
                let deadline = Instant::now() + PROXY_LIFETIME;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((client, peer)) => {
                            if let Err(e) = relay(client, peer, listen, upstream) {
                                eprintln!("proxy: relaying {peer} to {upstream}: {e}");
                            }
                            relayed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("proxy on {listen}: accept failed: {e}"),
                    }
                }
            })
        };
        match listening.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("the proxy on {listen} did not start: {e}"),
        }
        Self {
            stop,
            relayed,
            thread: Some(thread),
        }
    }

    /// Connections relayed so far.
    pub fn relayed(&self) -> usize {
        self.relayed.load(Ordering::Relaxed)
    }
}

impl Drop for ProxyV2 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Section 2.2: a PROXY command over TCP from `client` to `server` (one
/// family), without TLVs.
pub fn proxy_v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    pop3::proxy_header::v2_header(client, server, &[])
}

/// Connects to `upstream`, sends the header for `peer`, and carries the
/// octets both ways on two threads of their own.
fn relay(
    client: TcpStream,
    peer: SocketAddr,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let mut server = TcpStream::connect_timeout(&upstream, Duration::from_secs(10))?;
    server.write_all(&proxy_v2_header(peer, listen))?;
    for stream in [&client, &server] {
        stream.set_read_timeout(Some(RELAY_IDLE))?;
        stream.set_nodelay(true)?;
    }
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    thread::spawn(move || carry(client_in, server_out));
    thread::spawn(move || carry(server, client));
    Ok(())
}

/// Copies `from` to `to` until `from` ends (or idles past its timeout),
/// then passes the end on.
fn carry(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
