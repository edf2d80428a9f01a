//! TLS on loopback: implicit TLS (RFC 8314) and STLS (RFC 2595) against a
//! rustls client that trusts only a CA made for the run; what STLS must
//! forget and drop (a USER sent before it, commands pipelined after it);
//! handshakes that fail or never come; certificates replaced while the
//! service runs.

mod ca;
#[path = "../common/captured_log.rs"]
mod captured_log;

use captured_log::{capture_log, logged, logged_line};
use std::{
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use ca::{install_file, Issued, TestCa};
use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    counters::{Handshake, LoginMethod, LoginResult, Pop3Counters},
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    session::EndReason,
    NoFailureSink, NoGrant,
};
use rustls::{pki_types::ServerName, version};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_util::sync::CancellationToken;

/// How long anything the server should do may take: only a hang takes
/// longer.
const HANG: Duration = Duration::from_secs(30);

struct Running {
    plain: SocketAddr,
    tls: SocketAddr,
    ca: TestCa,
    cert: PathBuf,
    key: PathBuf,
    first: Issued,
    shutdown: CancellationToken,
    counters: Arc<Pop3Counters>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A server with a certificate for `localhost` from a fresh CA: plain
/// (STLS) and implicit-TLS listeners on loopback; alice (pw-a) has one
/// message.
async fn start() -> Running {
    start_with(|_| {}).await
}

/// `start`, with the settings changed by `adjust` first.
async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Running {
    capture_log();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(mail.join("alice").join(sub)).unwrap();
    }
    fs::write(
        mail.join("alice/cur/1700000000.M1P1.test:2,"),
        "Subject: a\n\nbody\n",
    )
    .unwrap();
    let ca = TestCa::new();
    let first = ca.issue("first");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    first.install(&cert, &key);
    let mut config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tls: Some(vec!["127.0.0.1:0".parse().unwrap()]),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
        hostname: "test".into(),
        login_failure_delay: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    adjust(&mut config);
    config.check().unwrap();
    let backends = Backends {
        auth: Arc::new(UsersFile::parse("alice:{PLAIN}pw-a\n").unwrap()),
        store: Arc::new(MaildirStore::new(mail)),
        grants: Arc::new(NoGrant),
        failures: Arc::new(NoFailureSink),
    };
    let server = Server::bind(config, backends).await.expect("bind");
    let (plain, tls) = (server.local_addrs()[0], server.tls_local_addrs()[0]);
    let counters = server.counters();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(shutdown.clone()));
    Running {
        plain,
        tls,
        ca,
        cert,
        key,
        first,
        shutdown,
        counters,
        _dir: dir,
    }
}

/// A TCP connection from the loopback address `from` (each test has its
/// own, to find its lines in the log).
async fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    tokio::time::timeout(HANG, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// One side of a POP3 conversation over any stream.
struct Client<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Self {
        Self {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// One line, or "" at the end of the stream.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(HANG, self.stream.read_line(&mut line))
            .await
            .expect("a line in time")
            .expect("read");
        line
    }

    async fn ask(&mut self, command: &str) -> String {
        self.send(&format!("{command}\r\n")).await;
        self.line().await
    }

    /// Reads until the server closes, bounded; gives what came.
    async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        tokio::time::timeout(HANG, self.stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .ok();
        rest
    }
}

/// TLS as a client that trusts `ca` and asks for `localhost`.
async fn tls_over(
    tcp: TcpStream,
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(ca.client_config(versions));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(HANG, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&version::TLS13, &version::TLS12];

/// The certificate the server presented.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .to_vec()
}

/// Implicit TLS from `from`, greeted.
async fn implicit(running: &Running, from: Ipv4Addr) -> Client<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, running.tls).await;
    let tls = tls_over(tcp, &running.ca, BOTH).await.expect("handshake");
    let mut client = Client::new(tls);
    let greeting = client.line().await;
    assert!(
        greeting.starts_with("+OK smtp-gate POP3 server ready"),
        "{greeting}"
    );
    client
}

/// A plain connection from `from`, greeted, then STLS and the handshake;
/// `before` is sent (and each of its lines answered +OK) first.
async fn after_stls(
    running: &Running,
    from: Ipv4Addr,
    before: &[&str],
) -> Client<TlsStream<TcpStream>> {
    let mut plain = Client::new(tcp_from(from, running.plain).await);
    assert!(plain.line().await.starts_with("+OK"));
    for command in before {
        let reply = plain.ask(command).await;
        assert!(reply.starts_with("+OK"), "{command}: {reply}");
    }
    let reply = plain.ask("STLS").await;
    assert!(reply.starts_with("+OK"), "STLS: {reply}");
    assert!(plain.stream.buffer().is_empty(), "nothing after the +OK");
    let tls = tls_over(plain.stream.into_inner(), &running.ca, BOTH)
        .await
        .expect("handshake after STLS");
    Client::new(tls)
}

/// Logs alice in, reads her message and quits.
async fn login_and_read(client: &mut Client<TlsStream<TcpStream>>) {
    assert!(client.ask("USER alice").await.starts_with("+OK"));
    let pass = client.ask("PASS pw-a").await;
    assert!(pass.starts_with("+OK"), "{pass}");
    assert!(client.ask("STAT").await.starts_with("+OK 1 "));
    assert!(client.ask("RETR 1").await.starts_with("+OK"));
    let mut message = Vec::new();
    loop {
        let line = client.line().await;
        assert!(!line.is_empty(), "cut inside the message");
        if line == ".\r\n" {
            break;
        }
        message.push(line);
    }
    assert_eq!(message, ["Subject: a\r\n", "\r\n", "body\r\n"]);
    assert!(client.ask("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn implicit_tls_serves_a_login_and_the_end_line_says_which_version() {
    let running = start().await;
    let from = Ipv4Addr::new(127, 0, 30, 1);
    let mut client = implicit(&running, from).await;
    assert_eq!(
        presented(client.stream.get_ref()),
        running.first.der.to_vec()
    );
    login_and_read(&mut client).await;
    let end = logged_line("end reason=quit addr=127.0.30.1 ").await;
    assert!(end.contains(" user=alice tls=TLSv1.3 retr=1/"), "{end}");

    // TLS 1.2 is served too, and named.
    let tcp = tcp_from(Ipv4Addr::new(127, 0, 30, 2), running.tls).await;
    let tls = tls_over(tcp, &running.ca, &[&version::TLS12])
        .await
        .unwrap();
    let mut client = Client::new(tls);
    assert!(client.line().await.starts_with("+OK"));
    assert!(client.ask("QUIT").await.starts_with("+OK"));
    let end = logged_line("end reason=quit addr=127.0.30.2 ").await;
    assert!(end.contains(" tls=TLSv1.2 "), "{end}");
    // Counted for the daemon's metrics.
    let counters = &running.counters;
    assert_eq!(counters.handshakes(Handshake::Ok), 2);
    assert_eq!(counters.handshakes(Handshake::Failed), 0);
    assert_eq!(counters.sessions_ended(EndReason::Quit), 2);
    assert_eq!(counters.logins(LoginMethod::UserPass, LoginResult::Ok), 1);
}

/// RFC 2595: STLS, the handshake, and the session goes on over TLS with
/// no new greeting; the end line says TLS was used.
#[tokio::test]
async fn stls_starts_tls_without_a_new_greeting() {
    let running = start().await;
    let from = Ipv4Addr::new(127, 0, 30, 11);
    let mut client = after_stls(&running, from, &[]).await;
    assert_eq!(
        presented(client.stream.get_ref()),
        running.first.der.to_vec()
    );
    let user = client.ask("USER alice").await;
    assert!(
        user.starts_with("+OK") && !user.contains("server ready"),
        "the first line inside TLS answers USER, it is no greeting: {user}"
    );
    let pass = client.ask("PASS pw-a").await;
    assert!(pass.starts_with("+OK"), "{pass}");
    assert!(client.ask("QUIT").await.starts_with("+OK"));
    let end = logged_line("end reason=quit addr=127.0.30.11 ").await;
    assert!(end.contains(" user=alice tls=TLSv1.3 "), "{end}");
}

/// STLS inside TLS is refused, and the session goes on: on the implicit
/// port and after STLS.
#[tokio::test]
async fn stls_inside_tls_is_refused_and_the_session_goes_on() {
    let running = start().await;
    let mut client = after_stls(&running, Ipv4Addr::new(127, 0, 30, 21), &[]).await;
    let again = client.ask("STLS").await;
    assert!(again.starts_with("-ERR"), "{again}");
    login_and_read(&mut client).await;
    let mut client = implicit(&running, Ipv4Addr::new(127, 0, 30, 22)).await;
    let again = client.ask("STLS").await;
    assert!(again.starts_with("-ERR"), "{again}");
    login_and_read(&mut client).await;
}

/// A USER sent in clear does not count inside TLS (RFC 2595 section 4:
/// nothing from before the handshake is kept).
#[tokio::test]
async fn a_user_sent_before_stls_is_forgotten() {
    let running = start().await;
    let mut client = after_stls(&running, Ipv4Addr::new(127, 0, 30, 31), &["USER alice"]).await;
    let pass = client.ask("PASS pw-a").await;
    assert!(
        pass.starts_with("-ERR"),
        "PASS without a USER inside TLS: {pass}"
    );
    login_and_read(&mut client).await;
}

/// The STARTTLS command injection (CVE-2011-0411): commands sent in clear
/// in the same packet as STLS must not be run once TLS is up (a man in
/// the middle could have put them there). They are dropped: the first
/// reply inside TLS answers the first command sent inside TLS.
#[tokio::test]
async fn commands_pipelined_after_stls_are_dropped_not_run() {
    let running = start().await;
    let mut plain = Client::new(tcp_from(Ipv4Addr::new(127, 0, 30, 41), running.plain).await);
    assert!(plain.line().await.starts_with("+OK"));
    plain.send("STLS\r\nUSER alice\r\nPASS pw-a\r\n").await;
    let reply = plain.line().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let tls = tls_over(plain.stream.into_inner(), &running.ca, BOTH)
        .await
        .expect("handshake: the injected octets must not reach TLS either");
    let mut client = Client::new(tls);
    let stat = client.ask("STAT").await;
    assert!(
        stat.starts_with("-ERR"),
        "the first reply inside TLS must be STAT's refusal, not one to the injected USER: {stat}"
    );
    let pass = client.ask("PASS pw-a").await;
    assert!(pass.starts_with("-ERR"), "no USER is known: {pass}");
    assert!(client.ask("QUIT").await.starts_with("+OK"));
    logged_line("end reason=quit addr=127.0.30.41 ").await;
    let logins: Vec<String> = logged()
        .into_iter()
        .filter(|l| l.contains("login user=") && l.contains("addr=127.0.30.41 "))
        .collect();
    assert!(logins.is_empty(), "{logins:?}");
}

/// What is not a TLS handshake ends the connection at once and is
/// counted by the end line's reason; on the implicit port and after STLS.
#[tokio::test]
async fn handshake_garbage_is_cut_and_counted() {
    let running = start().await;
    let mut client = Client::new(tcp_from(Ipv4Addr::new(127, 0, 30, 51), running.tls).await);
    client.send("USER alice\r\nPASS pw-a\r\n").await;
    let answer = client.until_closed().await;
    assert!(!answer.starts_with(b"+OK"), "{answer:?}");
    logged_line("end reason=tls-handshake-failed addr=127.0.30.51 ").await;

    let mut plain = Client::new(tcp_from(Ipv4Addr::new(127, 0, 30, 52), running.plain).await);
    assert!(plain.line().await.starts_with("+OK"));
    assert!(plain.ask("STLS").await.starts_with("+OK"));
    // A TLS record header of an unknown content type, then junk.
    plain
        .send("\u{16}\u{3}\u{1}garbage, not a ClientHello\r\n")
        .await;
    plain.until_closed().await;
    logged_line("end reason=tls-handshake-failed addr=127.0.30.52 ").await;
    // Counted for the daemon's metrics, and neither session is open.
    let counters = &running.counters;
    assert_eq!(counters.handshakes(Handshake::Failed), 2);
    assert_eq!(counters.handshakes(Handshake::Ok), 0);
    assert_eq!(counters.sessions_ended(EndReason::TlsHandshakeFailed), 2);
    assert_eq!(counters.sessions_begun(), 2);
    assert_eq!(counters.sessions_open(), 0);
}

/// A client that opens a connection to the TLS port and sends nothing is
/// cut by the handshake's own limit, long before the login timeout (1m
/// here, more than the test waits), and so is one silent after STLS.
#[tokio::test]
async fn a_silent_handshake_is_cut_by_its_own_limit() {
    let running = start().await;
    let started = Instant::now();
    let mut silent = Client::new(tcp_from(Ipv4Addr::new(127, 0, 30, 61), running.tls).await);
    assert_eq!(silent.until_closed().await, b"");
    logged_line("end reason=tls-handshake-timeout addr=127.0.30.61 ").await;

    let mut plain = Client::new(tcp_from(Ipv4Addr::new(127, 0, 30, 62), running.plain).await);
    assert!(plain.line().await.starts_with("+OK"));
    assert!(plain.ask("STLS").await.starts_with("+OK"));
    plain.until_closed().await;
    logged_line("end reason=tls-handshake-timeout addr=127.0.30.62 ").await;
    assert_eq!(running.counters.handshakes(Handshake::TimedOut), 2);
    assert!(
        started.elapsed() < ServerConfig::default().login_timeout,
        "cut by the login timeout, not the handshake's"
    );
}

/// A renewed pair renamed over the files is read while the service runs:
/// new connections get it, a session opened before goes on. A broken pair
/// put in its place is refused (logged, naming the file) and the one in
/// force stays.
#[tokio::test]
async fn certificates_are_replaced_while_serving_and_a_broken_pair_is_refused() {
    let running = start().await;
    let mut before = implicit(&running, Ipv4Addr::new(127, 0, 30, 71)).await;
    assert!(before.ask("USER alice").await.starts_with("+OK"));
    assert!(before.ask("PASS pw-a").await.starts_with("+OK"));

    let second = running.ca.issue("second");
    second.install(&running.cert, &running.key);
    let newcomer = Ipv4Addr::new(127, 0, 30, 72);
    wait_for_certificate(&running, newcomer, &second.der, "the renewed").await;
    // The session from before the renewal is served on.
    assert!(before.ask("STAT").await.starts_with("+OK 1 "));
    // STLS gets the new one too.
    let stls = after_stls(&running, Ipv4Addr::new(127, 0, 30, 73), &[]).await;
    assert_eq!(presented(stls.stream.get_ref()), second.der.to_vec());

    // A certificate whose key is not in the key file: refused.
    let third = running.ca.issue("third");
    install_file(&running.cert, &third.cert_pem, 0o644);
    let refusal = logged_line(&format!(
        "{} is not the key of the certificate in {}",
        running.key.display(),
        running.cert.display()
    ))
    .await;
    assert!(
        refusal.contains("keep getting the certificate in force"),
        "{refusal}"
    );
    let tcp = tcp_from(newcomer, running.tls).await;
    let tls = tls_over(tcp, &running.ca, BOTH).await.unwrap();
    assert_eq!(presented(&tls), second.der.to_vec(), "the old pair stays");
    // A key others may read: refused too, naming the file.
    install_file(&running.cert, &second.cert_pem, 0o644);
    install_file(&running.key, &second.key_pem, 0o644);
    let refusal = logged_line(&format!("{} is mode 0644", running.key.display())).await;
    assert!(refusal.contains("chmod 600"), "{refusal}");
    // Made whole, the third pair is taken.
    third.install(&running.cert, &running.key);
    install_file(&running.key, &third.key_pem, 0o600);
    wait_for_certificate(&running, newcomer, &third.der, "the third").await;
    assert!(before.ask("QUIT").await.starts_with("+OK"));
}

/// Connects from `from` until the server presents `wanted`.
async fn wait_for_certificate(
    running: &Running,
    from: Ipv4Addr,
    wanted: &rustls::pki_types::CertificateDer<'static>,
    what: &str,
) {
    let deadline = Instant::now() + HANG;
    loop {
        let tcp = tcp_from(from, running.tls).await;
        let tls = tls_over(tcp, &running.ca, BOTH).await.expect("handshake");
        if presented(&tls) == wanted.to_vec() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} certificate never served:\n{}",
            logged().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A load balancer on this host (a loopback address) relaying a client
/// from elsewhere: the client is not local, so with a certificate its
/// password is refused in clear and taken after STLS; an implicit-TLS
/// listener behind the balancer reads the PROXY header before the
/// handshake. Both log the client with the balancer beside it.
#[tokio::test]
async fn behind_a_balancer_on_this_host_the_client_is_remote_on_both_listeners() {
    let running = start_with(|config| {
        let mut proxied = config.listen.clone();
        proxied.extend(config.tls_listen());
        config.proxy_listen = proxied;
        config.proxy_trusted_networks = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let balancer = Ipv4Addr::new(127, 0, 30, 91);

    let mut tcp = tcp_from(balancer, running.plain).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.91 127.0.0.1 40001 110\r\n")
        .await
        .unwrap();
    let mut plain = Client::new(tcp);
    assert!(plain.line().await.starts_with("+OK"));
    let user = plain.ask("USER alice").await;
    assert!(
        user.starts_with("-ERR [AUTH] cleartext passwords are not accepted here"),
        "the balancer's loopback address made the client local: {user}"
    );
    let reply = plain.ask("STLS").await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let tls = tls_over(plain.stream.into_inner(), &running.ca, BOTH)
        .await
        .expect("handshake after STLS");
    login_and_read(&mut Client::new(tls)).await;
    let end = logged_line("end reason=quit addr=192.0.2.91 ").await;
    assert!(end.contains("via=127.0.30.91"), "{end}");

    // A header naming a loopback address does not make its client local
    // either: the password would still have crossed a network.
    for claimed in ["TCP4 127.0.0.1 127.0.0.1", "TCP6 ::1 ::1"] {
        let mut tcp = tcp_from(balancer, running.plain).await;
        tcp.write_all(format!("PROXY {claimed} 40003 110\r\n").as_bytes())
            .await
            .unwrap();
        let mut plain = Client::new(tcp);
        assert!(plain.line().await.starts_with("+OK"));
        let user = plain.ask("USER alice").await;
        assert!(user.starts_with("-ERR [AUTH]"), "{claimed}: {user}");
    }

    let mut tcp = tcp_from(balancer, running.tls).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.92 127.0.0.1 40002 995\r\n")
        .await
        .unwrap();
    let tls = tls_over(tcp, &running.ca, BOTH)
        .await
        .expect("handshake after the PROXY header");
    let mut client = Client::new(tls);
    assert!(client.line().await.starts_with("+OK"));
    login_and_read(&mut client).await;
    let end = logged_line("end reason=quit addr=192.0.2.92 ").await;
    assert!(
        end.contains("via=127.0.30.91") && end.contains(" tls=TLSv1.3 "),
        "{end}"
    );
}
