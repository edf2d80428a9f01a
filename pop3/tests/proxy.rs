//! Listeners behind a load balancer (`proxy_listen`) on loopback: the
//! test is the proxy, writing the PROXY header itself (laid out here from
//! the specification, not by the parser's code). The client the header
//! names is granted, counted in the connection slots and reported for its
//! failures; a proxy outside the trusted networks, a bad, cut or slow
//! header gets no greeting; what the client pipelined behind the header
//! is served; a listener not behind a balancer takes no header.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, ProxyDoor, Server},
    FailureSink, GrantFuture, GrantSink,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// How long anything the server should do may take: only a hang takes
/// longer.
const HANG: Duration = Duration::from_secs(30);

/// Every address granted, in order.
#[derive(Default)]
struct Granted(Mutex<Vec<IpAddr>>);

impl GrantSink for Granted {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        self.0.lock().unwrap().push(addr);
        Box::pin(std::future::ready(Ok(pop3::Granted::default())))
    }
}

/// Every failed login's address, in order; and the addresses banned.
#[derive(Default)]
struct Failed(Mutex<Vec<IpAddr>>, Mutex<Vec<IpAddr>>);

impl FailureSink for Failed {
    fn login_failed(&self, addr: IpAddr, _user: &str) {
        self.0.lock().unwrap().push(addr);
    }

    fn is_banned(&self, addr: IpAddr) -> bool {
        self.1.lock().unwrap().contains(&addr)
    }
}

struct Running {
    /// The proxied listener, then the plain one.
    proxied: SocketAddr,
    plain: SocketAddr,
    granted: Arc<Granted>,
    failed: Arc<Failed>,
    door: Arc<ProxyDoor>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server with a proxied listener on 127.0.0.1 trusting 127.0.0.0/8 (or
/// what `tune` says) and a plain one on 127.0.0.2.
async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Running {
    let dir = tempfile::tempdir().expect("temp dir");
    let mail = dir.path().join("mail");
    for part in ["cur", "new", "tmp"] {
        fs::create_dir_all(mail.join("alice").join(part)).unwrap();
    }
    let proxied: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = ServerConfig {
        listen: vec![proxied, "127.0.0.2:0".parse().unwrap()],
        proxy_listen: vec![proxied],
        proxy_trusted_networks: vec!["127.0.0.0/8".parse().unwrap()],
        hostname: "test".into(),
        login_failure_delay: Duration::from_millis(10),
        ..ServerConfig::default()
    };
    tune(&mut config);
    let granted = Arc::new(Granted::default());
    let failed = Arc::new(Failed::default());
    let backends = Backends {
        auth: Arc::new(UsersFile::parse("alice:{PLAIN}pw-a\n").unwrap()),
        store: Arc::new(MaildirStore::new(mail)),
        grants: granted.clone(),
        failures: failed.clone(),
    };
    let server = Server::bind(config, backends).await.expect("bind");
    let addrs = server.local_addrs();
    let door = server.proxy_door();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    Running {
        proxied: addrs[0],
        plain: addrs[1],
        granted,
        failed,
        door,
        shutdown,
        _dir: dir,
    }
}

/// Section 2.2: a PROXY command over TCP from `client` to `server`.
fn v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    pop3::proxy_header::v2_header(client, server, &[])
}

/// Section 2.2: a LOCAL command (a proxy's health check).
fn v2_local() -> Vec<u8> {
    let mut wire = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a".to_vec();
    wire.extend([0x20, 0x00, 0x00, 0x00]);
    wire
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

struct Conn {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    /// A connection from `from` (a loopback address) to `to`.
    async fn open(from: Ipv4Addr, to: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::from((from, 0))).expect("bind");
        let stream: TcpStream = socket.connect(to).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        Self {
            read: BufReader::new(read),
            write,
        }
    }

    async fn send(&mut self, octets: &[u8]) {
        self.write.write_all(octets).await.expect("write");
    }

    /// One line, or "" once the server closed; a hang fails the test.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(HANG, self.read.read_line(&mut line))
            .await
            .expect("no reply: hung")
            .expect("read");
        line
    }

    /// Whether the server closed without a word (a reset counts).
    async fn closed_silently(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(HANG, self.read.read_to_end(&mut rest)).await {
            Err(_) => panic!("still open: hung"),
            Ok(_) => rest.is_empty(),
        }
    }

    async fn login(&mut self) -> String {
        self.send(b"USER alice\r\nPASS pw-a\r\n").await;
        let user = self.line().await;
        assert!(user.starts_with("+OK"), "{user}");
        self.line().await
    }

    /// Logs in and out (the maildrop is free for the next).
    async fn login_and_quit(&mut self) {
        let pass = self.login().await;
        assert!(pass.starts_with("+OK"), "{pass}");
        self.send(b"QUIT\r\n").await;
        let quit = self.line().await;
        assert!(quit.starts_with("+OK"), "{quit}");
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_client_through_a_trusted_proxy_is_granted_under_its_own_address() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(&v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110")))
        .await;
    assert!(conn.line().await.starts_with("+OK"), "greeting");
    conn.login_and_quit().await;
    // Version 1, IPv6.
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(b"PROXY TCP6 2001:db8::7 2001:db8::1 40002 110\r\n")
        .await;
    assert!(conn.line().await.starts_with("+OK"), "greeting");
    assert!(conn.login().await.starts_with("+OK"));
    assert_eq!(
        *server.granted.0.lock().unwrap(),
        [ip("192.0.2.7"), ip("2001:db8::7")],
        "the clients, never the proxy (127.0.0.1)"
    );
    assert_eq!(server.door.refused(), 0);
}

#[tokio::test]
async fn failed_logins_are_reported_under_the_clients_address() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(&v2(addr("192.0.2.8:40001"), addr("198.51.100.1:110")))
        .await;
    conn.line().await;
    conn.send(b"USER alice\r\nPASS wrong\r\n").await;
    conn.line().await;
    assert!(conn.line().await.starts_with("-ERR"));
    assert_eq!(*server.failed.0.lock().unwrap(), [ip("192.0.2.8")]);
}

/// A header that names no client (v2 LOCAL, a health check; v1 UNKNOWN,
/// which HAProxy also sends for a client it cannot describe) gets the
/// greeting a health check looks for and no session: served as the
/// balancer, such a client was granted under the balancer's address (the
/// attack review's finding), which would open SMTP to everyone behind it.
#[tokio::test]
async fn a_header_naming_no_client_gets_a_greeting_and_no_session() {
    let server = start(|_| {}).await;
    for header in [v2_local(), b"PROXY UNKNOWN\r\n".to_vec()] {
        let mut conn = Conn::open(Ipv4Addr::new(127, 0, 0, 3), server.proxied).await;
        conn.send(&header).await;
        let greeting = conn.line().await;
        assert!(greeting.starts_with("+OK"), "greeting: {greeting}");
        // Closed after the greeting, whatever comes next.
        let _ = conn.write.write_all(b"USER alice\r\nPASS pw-a\r\n").await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(HANG, conn.read.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    assert!(server.granted.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_proxy_outside_the_trusted_networks_is_refused() {
    let server = start(|c| c.proxy_trusted_networks = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    let header = v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110"));
    // The server may have closed before this arrives.
    let _ = conn
        .write
        .write_all(&[header.as_slice(), b"USER alice\r\nPASS pw-a\r\n"].concat())
        .await;
    assert!(conn.closed_silently().await, "no greeting");
    assert_eq!(server.door.refused(), 1);
    assert!(server.granted.0.lock().unwrap().is_empty());
}

/// Not a header, a header cut short, a header refused: closed without a
/// greeting, and counted.
#[tokio::test]
async fn a_missing_or_bad_header_closes_the_connection() {
    let server = start(|_| {}).await;
    let cut = v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110"));
    let cut = &cut[..20];
    let unix = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a\x21\x31\x00\x00";
    for (n, first) in [
        &b"USER alice\r\nPASS pw-a\r\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.1 040001 110\r\nUSER alice\r\n",
        unix,
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
        // The server may close before all of it arrives.
        let _ = conn.write.write_all(first).await;
        assert!(conn.closed_silently().await, "{n}: no greeting");
        assert_eq!(server.door.refused(), n as u64 + 1);
    }
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(cut).await;
    conn.write.shutdown().await.unwrap();
    assert!(conn.closed_silently().await, "cut: no greeting");
    assert_eq!(server.door.refused(), 4);
    assert!(server.granted.0.lock().unwrap().is_empty());
}

/// Segments as small as one octet: the header is put together.
#[tokio::test]
async fn a_header_split_over_several_writes_is_read_whole() {
    let server = start(|_| {}).await;
    for header in [
        v2(addr("192.0.2.9:40001"), addr("198.51.100.1:110")),
        b"PROXY TCP4 192.0.2.10 198.51.100.1 40001 110\r\n".to_vec(),
    ] {
        let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
        for octet in &header {
            conn.send(&[*octet]).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(conn.line().await.starts_with("+OK"), "greeting");
        conn.login_and_quit().await;
    }
    assert_eq!(
        *server.granted.0.lock().unwrap(),
        [ip("192.0.2.9"), ip("192.0.2.10")]
    );
}

/// A proxy that sends part of its header and then nothing is cut at
/// `proxy_timeout`, not at the login timeout.
#[tokio::test]
async fn a_slow_header_is_cut_after_the_proxy_timeout() {
    let server = start(|c| {
        c.proxy_timeout = Duration::from_millis(300);
        c.login_timeout = Duration::from_secs(3600);
    })
    .await;
    let header = v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110"));
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(&header[..10]).await;
    let started = std::time::Instant::now();
    assert!(conn.closed_silently().await, "no greeting");
    // Cut by the proxy timeout (well before the login timeout's hour),
    // and not before it.
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(server.door.refused(), 1);
}

/// Whatever the client pipelined behind the header (here in the same
/// segment) is its first commands.
#[tokio::test]
async fn commands_pipelined_behind_the_header_are_served() {
    let server = start(|_| {}).await;
    for header in [
        v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110")),
        b"PROXY TCP4 192.0.2.11 198.51.100.1 40001 110\r\n".to_vec(),
    ] {
        let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
        conn.send(
            &[
                header.as_slice(),
                b"USER alice\r\nPASS pw-a\r\nNOOP\r\nQUIT\r\n",
            ]
            .concat(),
        )
        .await;
        let replies = [
            conn.line().await,
            conn.line().await,
            conn.line().await,
            conn.line().await,
            conn.line().await,
        ];
        for reply in &replies {
            assert!(reply.starts_with("+OK"), "{replies:?}");
        }
    }
    assert_eq!(
        *server.granted.0.lock().unwrap(),
        [ip("192.0.2.7"), ip("192.0.2.11")]
    );
}

/// The connection slots count the client's network, not the proxy's:
/// one client cannot take the slots of the others behind the same proxy.
#[tokio::test]
async fn slots_are_counted_by_the_clients_address() {
    let server = start(|c| c.max_connections_per_ip = 1).await;
    let mut first = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    first
        .send(&v2(addr("192.0.2.7:40001"), addr("198.51.100.1:110")))
        .await;
    assert!(first.line().await.starts_with("+OK"));
    let mut other = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    other
        .send(&v2(addr("192.0.2.8:40001"), addr("198.51.100.1:110")))
        .await;
    assert!(other.line().await.starts_with("+OK"), "another client");
    let mut again = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    again
        .send(&v2(addr("192.0.2.7:40002"), addr("198.51.100.1:110")))
        .await;
    let refused = again.line().await;
    assert!(refused.starts_with("-ERR [SYS/TEMP]"), "{refused}");
}

/// A listener not behind a balancer reads a PROXY line as the unknown
/// command it is there, and grants the connection's own address.
#[tokio::test]
async fn a_plain_listener_takes_no_header() {
    let server = start(|_| {}).await;
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.plain).await;
    assert!(conn.line().await.starts_with("+OK"), "greeting");
    conn.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 110\r\n")
        .await;
    let answer = conn.line().await;
    assert!(answer.starts_with("-ERR"), "{answer}");
    assert!(conn.login().await.starts_with("+OK"));
    assert_eq!(*server.granted.0.lock().unwrap(), [ip("127.0.0.1")]);
}

/// A banned client behind a balancer: the kernel cannot drop its SYN (it
/// comes from the balancer), so the service closes the connection once
/// the header names it, without a greeting, and counts it (the bans
/// attack review guessed on through a balancer after its ban). Another
/// client through the same balancer is served.
#[tokio::test]
async fn a_banned_client_behind_a_balancer_is_closed() {
    let server = start(|_| {}).await;
    server.failed.1.lock().unwrap().push(ip("192.0.2.66"));
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(&v2(addr("192.0.2.66:40001"), addr("198.51.100.1:110")))
        .await;
    assert!(
        conn.closed_silently().await,
        "no greeting for a banned client"
    );
    assert_eq!(server.door.refused(), 1);
    let mut conn = Conn::open(Ipv4Addr::LOCALHOST, server.proxied).await;
    conn.send(&v2(addr("192.0.2.67:40001"), addr("198.51.100.1:110")))
        .await;
    assert!(conn.line().await.starts_with("+OK"), "another client");
}
