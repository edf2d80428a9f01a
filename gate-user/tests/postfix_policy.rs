//! The Postfix policy service over real sockets (loopback TCP and a Unix
//! socket), with a fake gate: what Postfix is answered for each standing,
//! on connections kept open for many requests; malformed requests answered
//! and never looked up; idle connections closed. No root needed.

#[path = "../../pop3/tests/common/captured_log.rs"]
mod captured_log;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use captured_log::{capture_log, logged_line};
use smtp_gate::policy::{
    listen::{PolicyAddr, PolicyListener},
    postfix::{
        serve, CountersSnapshot, GrantedAction, PolicyCounters, PostfixPolicySettings,
        LOOKUP_FAILED_ANSWER, MALFORMED_ANSWER, MAX_ATTRIBUTES, MAX_LINE,
    },
    GrantLookup, Standing,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(20);

const DEFAULT_REFUSAL: &str =
    "554 5.7.1 Send mail after checking it: log in to POP3 (or IMAP), then send again";

/// The gate as the fake knows it; every address it is asked about is kept.
#[derive(Default)]
struct FakeGate {
    standings: HashMap<IpAddr, Standing>,
    failing: Vec<IpAddr>,
    asked: Mutex<Vec<IpAddr>>,
}

impl FakeGate {
    fn new() -> Self {
        let mut gate = Self::default();
        for (addr, standing) in [
            ("192.0.2.1", Standing::Granted),
            ("2001:db8::1", Standing::Granted),
            ("192.0.2.2", Standing::Exempt),
            ("2001:db8::2", Standing::Exempt),
        ] {
            gate.standings.insert(addr.parse().unwrap(), standing);
        }
        gate.failing.push("192.0.2.66".parse().unwrap());
        gate
    }

    fn asked(&self) -> Vec<String> {
        let asked = self.asked.lock().unwrap();
        asked.iter().map(|addr| addr.to_string()).collect()
    }
}

impl GrantLookup for FakeGate {
    fn standing(&self, addr: IpAddr) -> anyhow::Result<Standing> {
        self.asked.lock().unwrap().push(addr);
        if self.failing.contains(&addr) {
            return Err(anyhow!("the grant map is gone"));
        }
        Ok(self
            .standings
            .get(&addr)
            .copied()
            .unwrap_or(Standing::Refused))
    }
}

struct Running {
    addr: PolicyAddr,
    gate: Arc<FakeGate>,
    counters: Arc<PolicyCounters>,
    shutdown: CancellationToken,
    served: JoinHandle<()>,
}

impl Running {
    async fn start(addr: PolicyAddr, settings: PostfixPolicySettings) -> Self {
        capture_log();
        let listener = PolicyListener::bind(&addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Arc::new(FakeGate::new());
        let counters = Arc::new(PolicyCounters::default());
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(
            listener,
            settings,
            Arc::clone(&gate) as Arc<dyn GrantLookup>,
            Arc::clone(&counters),
            shutdown.clone(),
        ));
        Self {
            addr,
            gate,
            counters,
            shutdown,
            served,
        }
    }

    async fn tcp(settings: PostfixPolicySettings) -> Self {
        Self::start("127.0.0.1:0".parse().unwrap(), settings).await
    }

    async fn connect(&self) -> Client {
        Client(match &self.addr {
            PolicyAddr::Tcp(addr) => Box::new(TcpStream::connect(addr).await.unwrap()),
            PolicyAddr::Unix(path) => Box::new(UnixStream::connect(path).await.unwrap()),
        })
    }

    fn counters(&self) -> CountersSnapshot {
        self.counters.now()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(BOUND, self.served)
            .await
            .expect("serve ends once shut down")
            .unwrap();
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Client(Box<dyn Stream>);

impl Client {
    async fn send(&mut self, octets: &[u8]) {
        self.0.write_all(octets).await.unwrap();
    }

    /// One answer (everything up to its empty line), or None if the
    /// connection closes first.
    async fn answer_or_close(&mut self) -> Option<String> {
        let mut got = Vec::new();
        let read = async {
            while !got.ends_with(b"\n\n") {
                let mut octet = [0];
                // A reset instead of an end is a failure: it can take the
                // answer with it.
                let read = self.0.read(&mut octet).await.expect("no reset");
                if read == 0 {
                    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
                    return None;
                }
                got.push(octet[0]);
            }
            Some(())
        };
        tokio::time::timeout(BOUND, read).await.expect("no hang")?;
        Some(String::from_utf8(got).unwrap())
    }

    async fn answer(&mut self) -> String {
        self.answer_or_close().await.expect("an answer")
    }

    async fn ask(&mut self, request: &str) -> String {
        self.send(request.as_bytes()).await;
        self.answer().await
    }

    /// Waits for the service to close the connection (nothing else may
    /// come first).
    async fn closed(&mut self) {
        assert_eq!(self.answer_or_close().await, None);
    }
}

/// A request as Postfix's SMTP server sends it at RCPT.
fn rcpt(client_address: &str) -> String {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         helo_name=laptop\nqueue_id=\nsender=alice@example.org\nrecipient=bob@example.net\n\
         recipient_count=0\nclient_address={client_address}\nclient_name=unknown\n\
         reverse_client_name=unknown\ninstance=1b2.6a1f0c3.8d1e2.0\nsasl_method=\n\
         sasl_username=\nsasl_sender=\nsize=0\nccert_subject=\nccert_issuer=\n\
         ccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\n\
         encryption_cipher=\nencryption_keysize=0\netrn_domain=\nstress=\nclient_port=40000\n\
         policy_context=\nserver_address=192.0.2.25\nserver_port=25\n\
         compatibility_level=3.6\nmail_version=3.7.11\n\n"
    )
}

fn action(action: &str) -> String {
    format!("action={action}\n\n")
}

#[tokio::test]
async fn granted_exempt_and_refused_clients_on_one_tcp_connection() {
    let service = Running::tcp(PostfixPolicySettings::default()).await;
    let mut postfix = service.connect().await;
    assert_eq!(postfix.ask(&rcpt("192.0.2.1")).await, action("OK"));
    assert_eq!(postfix.ask(&rcpt("192.0.2.2")).await, action("DUNNO"));
    assert_eq!(
        postfix.ask(&rcpt("192.0.2.3")).await,
        action(DEFAULT_REFUSAL)
    );
    assert_eq!(postfix.ask(&rcpt("2001:db8::1")).await, action("OK"));
    assert_eq!(postfix.ask(&rcpt("2001:db8::2")).await, action("DUNNO"));
    assert_eq!(
        postfix.ask(&rcpt("::ffff:192.0.2.1")).await,
        action("OK"),
        "an IPv4-mapped client is judged as its IPv4 address"
    );
    assert_eq!(
        postfix.ask(&rcpt("2001:db8::3")).await,
        action(DEFAULT_REFUSAL)
    );
    assert_eq!(postfix.ask(&rcpt("unknown")).await, action(DEFAULT_REFUSAL));
    assert_eq!(
        service.gate.asked(),
        [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "2001:db8::1",
            "2001:db8::2",
            "192.0.2.1",
            "2001:db8::3"
        ],
        "`unknown` is refused without a lookup"
    );
    let line = logged_line("refuse source=postfix addr=192.0.2.3 ").await;
    assert!(
        line.contains(
            "addr=192.0.2.3 sender=alice@example.org recipient=bob@example.net client=unknown \
             state=RCPT sasl_username= peer=127.0.0.1:"
        ),
        "{line}"
    );
    logged_line("refuse source=postfix addr=2001:db8::3 ").await;
    logged_line("refuse source=postfix addr=unknown ").await;
    assert_eq!(
        service.counters(),
        CountersSnapshot {
            requests: 8,
            granted: 3,
            exempt: 2,
            refused: 3,
            connections: 1,
            ..Default::default()
        }
    );
    service.stop().await;
}

#[tokio::test]
async fn a_unix_socket_with_the_configured_actions() {
    let dir = std::env::temp_dir().join(format!("postfix-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy");
    let settings = PostfixPolicySettings {
        granted: GrantedAction::Dunno,
        refused: "450 4.7.1 Check your mail first".parse().unwrap(),
        ..Default::default()
    };
    let service = Running::start(PolicyAddr::Unix(path.clone()), settings).await;
    let mut postfix = service.connect().await;
    assert_eq!(postfix.ask(&rcpt("192.0.2.1")).await, action("DUNNO"));
    assert_eq!(
        postfix.ask(&rcpt("192.0.2.4")).await,
        action("450 4.7.1 Check your mail first")
    );
    // Two connections at once, as two smtpd processes hold them.
    let mut other = service.connect().await;
    assert_eq!(other.ask(&rcpt("2001:db8::1")).await, action("DUNNO"));
    assert_eq!(postfix.ask(&rcpt("192.0.2.2")).await, action("DUNNO"));
    logged_line("refuse source=postfix addr=192.0.2.4 ").await;
    service.stop().await;
    postfix.closed().await;
    other.closed().await;
    assert!(!path.exists(), "the socket is removed at shutdown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_failed_lookup_defers_and_the_connection_goes_on() {
    let service = Running::tcp(PostfixPolicySettings::default()).await;
    let mut postfix = service.connect().await;
    assert_eq!(
        postfix.ask(&rcpt("192.0.2.66")).await,
        action(LOOKUP_FAILED_ANSWER)
    );
    assert!(LOOKUP_FAILED_ANSWER.starts_with("451 4."));
    let line = logged_line("cannot look up 192.0.2.66").await;
    assert!(
        line.contains("the\\x20grant\\x20map\\x20is\\x20gone"),
        "{line}"
    );
    assert_eq!(postfix.ask(&rcpt("192.0.2.1")).await, action("OK"));
    let counters = service.counters();
    assert_eq!(
        (counters.requests, counters.lookup_errors, counters.granted),
        (2, 1, 1)
    );
    service.stop().await;
}

/// Requests that are framed but wrong: each answered, the lookup never
/// asked, and the connection still answers the next request.
#[tokio::test]
async fn malformed_requests_are_answered_and_never_looked_up() {
    let service = Running::tcp(PostfixPolicySettings::default()).await;
    let mut postfix = service.connect().await;
    let granted = rcpt("192.0.2.1");
    let too_many: String = (0..MAX_ATTRIBUTES).map(|i| format!("x{i}=\n")).collect();
    let binary: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
    let without_end = &granted[..granted.len() - 1];
    let cases: Vec<Vec<u8>> = vec![
        granted.replace("client_address=192.0.2.1\n", "").into(),
        granted
            .replace("=smtpd_access_policy", "=junk_policy")
            .into(),
        granted.replace("request=smtpd_access_policy\n", "").into(),
        format!("{too_many}{granted}").into(),
        [&binary[..], b"\nrequest=smtpd_access_policy\n\n"].concat(),
        rcpt("192.0.2.1\0").into(),
        rcpt("x192.0.2.1").into(),
        format!("{without_end}client_address=192.0.2.5\n\n").into(),
    ];
    for case in &cases {
        postfix.send(case).await;
        assert_eq!(
            postfix.answer().await,
            action(MALFORMED_ANSWER),
            "{}",
            String::from_utf8_lossy(case)
        );
    }
    assert!(
        service.gate.asked().is_empty(),
        "{:?}",
        service.gate.asked()
    );
    assert_eq!(postfix.ask(&granted).await, action("OK"));
    let counters = service.counters();
    assert_eq!(
        (counters.malformed, counters.requests, counters.granted),
        (cases.len() as u64, 1, 1)
    );
    logged_line("request=junk_policy, not smtpd_access_policy").await;
    logged_line("client_address given twice").await;
    service.stop().await;
}

/// Octets that cannot be framed into requests: answered, then closed.
#[tokio::test]
async fn unframeable_streams_are_answered_then_closed() {
    let service = Running::tcp(PostfixPolicySettings::default()).await;

    let mut long_line = service.connect().await;
    long_line
        .send(b"request=smtpd_access_policy\nsender=")
        .await;
    long_line.send(&vec![b'x'; MAX_LINE]).await;
    assert_eq!(long_line.answer().await, action(MALFORMED_ANSWER));
    long_line.closed().await;

    let mut garbage = service.connect().await;
    let noise: Vec<u8> = (0..3 * MAX_LINE)
        .map(|i| (i * 7 % 251) as u8 | 0x80)
        .collect();
    garbage.send(&noise).await;
    assert_eq!(garbage.answer().await, action(MALFORMED_ANSWER));
    garbage.closed().await;

    let mut truncated = service.connect().await;
    let request = rcpt("192.0.2.1");
    // The request's end (the empty line) never comes: EOF instead.
    truncated
        .send(&request.as_bytes()[..request.len() - 1])
        .await;
    truncated.0.shutdown().await.unwrap();
    assert_eq!(truncated.answer().await, action(MALFORMED_ANSWER));
    truncated.closed().await;

    assert!(
        service.gate.asked().is_empty(),
        "{:?}",
        service.gate.asked()
    );
    let counters = service.counters();
    assert_eq!((counters.malformed, counters.requests), (3, 0));
    logged_line("a line longer than 8192 octets").await;
    logged_line("the connection ended inside a request").await;
    service.stop().await;
}

#[tokio::test]
async fn idle_and_stalled_connections_are_closed() {
    let settings = PostfixPolicySettings {
        idle_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let service = Running::tcp(settings).await;
    let mut idle = service.connect().await;
    assert_eq!(idle.ask(&rcpt("192.0.2.1")).await, action("OK"));
    idle.closed().await;
    let mut stalled = service.connect().await;
    stalled.send(b"request=smtpd_access_policy\n").await;
    stalled.closed().await;
    let counters = service.counters();
    assert_eq!((counters.idle_closed, counters.malformed), (1, 1));
    service.stop().await;
}

#[tokio::test]
async fn idle_connections_holding_every_slot_make_room_for_postfix() {
    let settings = PostfixPolicySettings {
        max_connections: 8,
        ..Default::default()
    };
    let service = Running::tcp(settings).await;
    // A local user fills every slot with connections that never ask.
    let mut squatters = Vec::new();
    for _ in 0..8 {
        squatters.push(service.connect().await);
    }
    // Postfix still gets its answers, again and again, on new
    // connections as on its open one.
    let mut postfix = service.connect().await;
    assert_eq!(postfix.ask(&rcpt("192.0.2.1")).await, action("OK"));
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut another = service.connect().await;
        assert_eq!(another.ask(&rcpt("192.0.2.2")).await, action("DUNNO"));
        assert_eq!(postfix.ask(&rcpt("192.0.2.1")).await, action("OK"));
        others.push(another);
    }
    // The squatters were closed for them, the longest idle first.
    for squatter in squatters.iter_mut().take(4) {
        tokio::time::timeout(BOUND, squatter.closed())
            .await
            .expect("a squatter closed");
    }
    assert_eq!(service.counters().connections_closed_for_room, 4);
    logged_line("8 connections open, as many as it takes").await;
    service.stop().await;
}
