//! The endpoint served in-process on loopback TCP or a Unix socket, asked
//! with raw HTTP (so malformed requests can be sent too), acting on a
//! recording LoginReports.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};
use tokio_util::sync::CancellationToken;

use super::{serve, DovecotPolicySettings, PolicyCounters, PolicySecret};
use crate::policy::{
    listen::{PolicyAddr, PolicyListener},
    LoginReports, ReportFuture,
};

/// Only a real hang fails a test.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Succeeded(IpAddr, String, String),
    Failed(IpAddr, String),
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    banned: Mutex<Vec<IpAddr>>,
    grants_fail: AtomicBool,
}

impl LoginReports for Recorder {
    fn login_succeeded<'a>(
        &'a self,
        addr: IpAddr,
        user: &'a str,
        protocol: &'a str,
    ) -> ReportFuture<'a> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Succeeded(addr, user.into(), protocol.into()));
        let granted = if self.grants_fail.load(Ordering::Relaxed) {
            Err(anyhow::anyhow!("the map is full"))
        } else {
            Ok(())
        };
        Box::pin(std::future::ready(granted))
    }

    fn login_failed(&self, addr: IpAddr, user: &str) {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Failed(addr, user.into()));
    }

    fn is_banned(&self, addr: IpAddr) -> bool {
        self.banned.lock().unwrap().contains(&addr)
    }
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

fn granted(addr: &str, user: &str, protocol: &str) -> Call {
    Call::Succeeded(addr.parse().unwrap(), user.into(), protocol.into())
}

/// An endpoint running; stopped (and waited for) on drop of the runtime.
struct Running {
    addr: PolicyAddr,
    reports: Arc<Recorder>,
    counters: Arc<PolicyCounters>,
    stop: CancellationToken,
    _socket_dir: Option<SocketDir>,
}

struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn settings() -> DovecotPolicySettings {
    DovecotPolicySettings::new(vec!["pop3".into(), "imap".into()], None)
}

fn start(settings: DovecotPolicySettings) -> Running {
    start_on(
        PolicyAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        settings,
        None,
    )
}

fn start_unix(tag: &str, settings: DovecotPolicySettings) -> Running {
    let dir = std::env::temp_dir().join(format!("dovecot-policy-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = PolicyAddr::Unix(dir.join("policy.sock"));
    start_on(addr, settings, Some(SocketDir(dir)))
}

fn start_on(addr: PolicyAddr, settings: DovecotPolicySettings, dir: Option<SocketDir>) -> Running {
    let listener = PolicyListener::bind(&addr).unwrap();
    let addr = listener.local_addr().unwrap();
    let reports = Arc::new(Recorder::default());
    let counters = Arc::new(PolicyCounters::default());
    let stop = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        settings,
        Arc::clone(&reports) as Arc<dyn LoginReports>,
        Arc::clone(&counters),
        stop.clone(),
    ));
    Running {
        addr,
        reports,
        counters,
        stop,
        _socket_dir: dir,
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Running {
    async fn connect(&self) -> Box<dyn Stream> {
        match &self.addr {
            PolicyAddr::Tcp(addr) => Box::new(TcpStream::connect(addr).await.unwrap()),
            PolicyAddr::Unix(path) => Box::new(UnixStream::connect(path).await.unwrap()),
        }
    }

    /// Sends `bytes` on a new connection and reads one answer.
    async fn ask_raw(&self, bytes: &[u8]) -> Answer {
        let mut stream = self.connect().await;
        stream.write_all(bytes).await.unwrap();
        read_answer(&mut stream).await.expect("an answer")
    }

    async fn post(&self, command: &str, body: &str) -> Answer {
        self.ask_raw(&dovecot_request(command, body, None)).await
    }

    /// Waits for `counter` to reach `value`.
    async fn wait_for(&self, what: &str, counter: impl Fn(&super::CountsNow) -> u64, value: u64) {
        let deadline = Instant::now() + PATIENCE;
        while counter(&self.counters.now()) < value {
            assert!(
                Instant::now() < deadline,
                "{what} never reached {value}: {}",
                self.counters.now()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A request as Dovecot's http-client writes it (auth-policy.c and
/// http-client-request.c, 2.3).
fn dovecot_request(command: &str, body: &str, api_header: Option<&str>) -> Vec<u8> {
    let api_header = api_header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    format!(
        "POST /?command={command} HTTP/1.1\r\nHost: 127.0.0.1:10030\r\n\
         Date: Mon, 30 Nov 2026 20:00:00 GMT\r\nUser-Agent: dovecot/auth-policy-client\r\n\
         Content-Length: {}\r\nConnection: Keep-Alive\r\nContent-Type: application/json\r\n\
         {api_header}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "{self:?}");
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// One answer (Content-Length framed, as ours are); None at end of stream.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Option<Answer> {
    tokio::time::timeout(PATIENCE, async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.ok()?;
        Some(Answer {
            status,
            headers: head,
            body: String::from_utf8(body).unwrap(),
        })
    })
    .await
    .expect("an answer or the end of the stream in time")
}

/// A report as Dovecot 2.3 builds it from the snippet's attributes.
fn report_23(
    login: &str,
    remote: &str,
    protocol: &str,
    success: bool,
    policy_reject: bool,
) -> String {
    serde_json::json!({
        "login": login, "protocol": protocol, "remote": remote,
        "success": success, "policy_reject": policy_reject, "tls": false,
    })
    .to_string()
}

/// The same from 2.4 (its snippet adds `fail_type`).
fn report_24(login: &str, remote: &str, success: bool, fail_type: &str) -> String {
    serde_json::json!({
        "fail_type": fail_type, "login": login, "protocol": "pop3", "remote": remote,
        "success": success, "policy_reject": fail_type == "policy", "tls": true,
    })
    .to_string()
}

fn assert_go_on(answer: &Answer) {
    assert_eq!(
        answer.json(),
        serde_json::json!({"status": 0, "msg": ""}),
        "{answer:?}"
    );
}

#[tokio::test]
async fn a_successful_login_of_either_dovecot_version_grants() {
    let running = start(settings());
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", true, false),
            )
            .await,
    );
    assert_go_on(
        &running
            .post("report", &report_24("bob", "198.51.100.3", true, ""))
            .await,
    );
    assert_eq!(
        running.reports.calls(),
        [
            granted("192.0.2.7", "alice", "imap"),
            granted("198.51.100.3", "bob", "pop3")
        ]
    );
    assert_eq!(running.counters.now().grants, 2);
}

#[tokio::test]
async fn a_failed_login_is_counted_once_and_our_own_refusal_not_again() {
    let running = start(settings());
    let failed = Call::Failed("192.0.2.7".parse().unwrap(), "alice".into());
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", false, false),
            )
            .await,
    );
    assert_go_on(
        &running
            .post(
                "report",
                &report_24("alice", "192.0.2.7", false, "credentials"),
            )
            .await,
    );
    assert_eq!(running.reports.calls(), [failed.clone(), failed.clone()]);
    // Refused by our `allow` answer: that ban came from counted failures.
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", false, true),
            )
            .await,
    );
    assert_go_on(
        &running
            .post("report", &report_24("alice", "192.0.2.7", false, "policy"))
            .await,
    );
    // Dovecot's own trouble is not the client's guess.
    assert_go_on(
        &running
            .post(
                "report",
                &report_24("alice", "192.0.2.7", false, "internal"),
            )
            .await,
    );
    assert_eq!(running.reports.calls(), [failed.clone(), failed]);
    let counts = running.counters.now();
    assert_eq!(
        (counts.failures, counts.failures_not_counted),
        (2, 3),
        "{counts}"
    );
}

#[tokio::test]
async fn allow_goes_on_unless_the_client_is_banned() {
    let running = start(settings());
    running
        .reports
        .banned
        .lock()
        .unwrap()
        .push("192.0.2.66".parse().unwrap());
    let allow = |remote: &str| {
        serde_json::json!({"login": "alice", "protocol": "imap", "remote": remote, "tls": false})
            .to_string()
    };
    assert_go_on(&running.post("allow", &allow("192.0.2.7")).await);
    let refused = running.post("allow", &allow("192.0.2.66")).await.json();
    assert_eq!(refused["status"], -1, "{refused}");
    assert!(
        refused["msg"].as_str().unwrap().contains("failed logins"),
        "{refused}"
    );
    // An IPv4-mapped spelling of the banned address is the same client.
    assert_eq!(
        running
            .post("allow", &allow("::ffff:192.0.2.66"))
            .await
            .json()["status"],
        -1
    );
    assert_eq!(running.reports.calls(), []);
    let counts = running.counters.now();
    assert_eq!((counts.allowed, counts.refused), (1, 2), "{counts}");
    // Banned between `allow` and the report: the login is not granted.
    let report = report_23("alice", "192.0.2.66", "imap", true, false);
    assert_go_on(&running.post("report", &report).await);
    assert_eq!(running.reports.calls(), []);
    let counts = running.counters.now();
    assert_eq!((counts.grants, counts.refused), (0, 3), "{counts}");
}

#[tokio::test]
async fn a_protocol_not_enabled_changes_nothing() {
    let running = start(DovecotPolicySettings::new(vec!["IMAP".into()], None));
    for success in [true, false] {
        let body = report_23("alice", "192.0.2.7", "pop3", success, false);
        assert_go_on(&running.post("report", &body).await);
        let body = report_23("alice", "192.0.2.7", "submission", success, false);
        assert_go_on(&running.post("report", &body).await);
    }
    assert_eq!(running.reports.calls(), []);
    // Enabled as IMAP, matched as Dovecot writes it.
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", true, false),
            )
            .await,
    );
    assert_eq!(
        running.reports.calls(),
        [granted("192.0.2.7", "alice", "imap")]
    );
}

#[tokio::test]
async fn ipv6_and_ipv4_mapped_clients_are_granted_as_themselves() {
    let running = start(settings());
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("a", "2001:db8::25", "imap", true, false),
            )
            .await,
    );
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("b", "::ffff:192.0.2.9", "imap", true, false),
            )
            .await,
    );
    assert_eq!(
        running.reports.calls(),
        [
            granted("2001:db8::25", "a", "imap"),
            granted("192.0.2.9", "b", "imap")
        ]
    );
}

#[tokio::test]
async fn a_grant_that_fails_still_lets_the_login_go_on() {
    let running = start(settings());
    running.reports.grants_fail.store(true, Ordering::Relaxed);
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", true, false),
            )
            .await,
    );
    let counts = running.counters.now();
    assert_eq!((counts.grants, counts.grant_errors), (0, 1), "{counts}");
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_change_nothing() {
    let running = start(settings());
    let cases: &[(&str, &str, u16)] = &[
        ("bad JSON", r#"{"login":"a","remote":"192.0.2.7""#, 400),
        ("binary", "\u{0}\u{1}\u{7f}garbage\u{fffd}", 400),
        (
            "success as a string",
            &report_23("a", "192.0.2.7", "imap", true, false).replace("true", "\"true\""),
            400,
        ),
        (
            "remote as a number",
            r#"{"login":"a","protocol":"imap","remote":3221225991,"success":true}"#,
            400,
        ),
        (
            "no remote",
            r#"{"login":"a","protocol":"imap","success":true}"#,
            400,
        ),
        (
            "garbage remote",
            &report_23("a", "192.0.2.7; rm -rf /", "imap", true, false),
            400,
        ),
        (
            "no success in a report",
            r#"{"login":"a","protocol":"imap","remote":"192.0.2.7"}"#,
            400,
        ),
    ];
    for (what, body, code) in cases {
        let answer = running.post("report", body).await;
        assert_eq!(answer.status, *code, "{what}: {answer:?}");
    }
    let oversized = report_23(&"a".repeat(20_000), "192.0.2.7", "imap", true, false);
    assert_eq!(running.post("report", &oversized).await.status, 413);
    // Chunked, so its size is known only as it comes: cut at the limit.
    let mut chunked =
        b"POST /?command=report HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        chunked.extend(format!("1000\r\n{}\r\n", " ".repeat(0x1000)).as_bytes());
    }
    chunked.extend(b"0\r\n\r\n");
    assert_eq!(running.ask_raw(&chunked).await.status, 413);
    // Announced too large: refused before a byte of it is read.
    let announced =
        b"POST /?command=report HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{";
    assert_eq!(running.ask_raw(announced).await.status, 413);
    let unknown = running
        .post("deny", &report_23("a", "192.0.2.7", "imap", true, false))
        .await;
    assert_eq!(unknown.status, 400, "{unknown:?}");
    let wrong_path = b"POST /admin?command=report HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(running.ask_raw(wrong_path).await.status, 404);
    let wrong_method = running
        .ask_raw(b"GET /?command=report HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(wrong_method.status, 405);
    assert!(
        wrong_method
            .headers
            .to_ascii_lowercase()
            .contains("allow: post"),
        "{wrong_method:?}"
    );
    // Not HTTP at all: hyper answers 400 itself.
    assert_eq!(
        running
            .ask_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
            .await
            .status,
        400
    );
    assert_eq!(running.reports.calls(), []);
    running
        .wait_for("bad_requests", |c| c.bad_requests, 13)
        .await;
}

#[tokio::test]
async fn a_truncated_body_changes_nothing_and_is_counted() {
    let running = start(settings());
    let body = report_23("alice", "192.0.2.7", "imap", true, false);
    let mut request = dovecot_request("report", &body, None);
    request.truncate(request.len() - 10);
    let mut stream = running.connect().await;
    stream.write_all(&request).await.unwrap();
    stream.shutdown().await.unwrap();
    running
        .wait_for("bad_requests", |c| c.bad_requests, 1)
        .await;
    assert_eq!(running.reports.calls(), []);
}

#[tokio::test]
async fn a_whole_report_then_a_half_close_is_acted_on_and_answered() {
    let running = start(settings());
    for n in 1..=200 {
        let addr = format!("192.0.{}.{}", n / 100, n % 100);
        let body = report_23("alice", &addr, "imap", true, false);
        let mut stream = running.connect().await;
        stream
            .write_all(&dovecot_request("report", &body, None))
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        assert_go_on(&read_answer(&mut stream).await.expect("an answer"));
    }
    assert_eq!(running.reports.calls().len(), 200);
}

#[tokio::test]
async fn pipelined_requests_on_one_kept_alive_connection_are_all_answered() {
    let running = start(settings());
    let mut stream = running.connect().await;
    let mut requests = Vec::new();
    for n in 1..=3 {
        let body = report_23(
            &format!("user{n}"),
            &format!("192.0.2.{n}"),
            "imap",
            true,
            false,
        );
        requests.extend(dovecot_request("report", &body, None));
    }
    stream.write_all(&requests).await.unwrap();
    for _ in 1..=3 {
        assert_go_on(
            &read_answer(&mut stream)
                .await
                .expect("an answer per request"),
        );
    }
    // And the connection stays open for the next one.
    stream
        .write_all(&dovecot_request(
            "report",
            &report_23("user4", "192.0.2.4", "pop3", true, false),
            None,
        ))
        .await
        .unwrap();
    assert_go_on(&read_answer(&mut stream).await.unwrap());
    assert_eq!(running.reports.calls().len(), 4);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut() {
    let mut settings = settings();
    settings.header_timeout = Duration::from_millis(300);
    let running = start(settings);
    let mut stream = running.connect().await;
    stream
        .write_all(b"POST /?command=report HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    // The endpoint closes it (after a 408 or nothing): end of stream.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the slow connection is closed")
        .ok();
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn with_a_secret_only_requests_carrying_it_act() {
    let secret = PolicySecret::from_file_text("s3cret-s3cret-s3cret\n").unwrap();
    let running = start(DovecotPolicySettings::new(
        vec!["imap".into()],
        Some(secret),
    ));
    let body = report_23("alice", "192.0.2.7", "imap", true, false);
    for header in [
        None,
        Some("Authorization: Bearer wrong-wrong-wrong-wr"),
        Some("X-API-Key: s3cret-s3cret-s3cret"),
    ] {
        let answer = running
            .ask_raw(&dovecot_request("report", &body, header))
            .await;
        assert_eq!(answer.status, 401, "{header:?}: {answer:?}");
    }
    assert_eq!(running.reports.calls(), []);
    assert_eq!(running.counters.now().unauthorized, 3);
    // Dovecot writes `Authorization:` then the rest of the setting's value,
    // its space included.
    let right = Some("Authorization:  Bearer s3cret-s3cret-s3cret");
    assert_go_on(
        &running
            .ask_raw(&dovecot_request("report", &body, right))
            .await,
    );
    assert_eq!(
        running.reports.calls(),
        [granted("192.0.2.7", "alice", "imap")]
    );
}

/// Attack review (issue 12's hooks): a rotated secret file was not read
/// on SIGHUP. The endpoint checks each request against the secret in
/// force when it comes, so the reload's new secret refuses the old token
/// and takes the new one at once.
#[tokio::test]
async fn a_secret_put_in_force_by_a_reload_is_the_one_checked() {
    let old = PolicySecret::from_file_text("old-secret-old-secret\n").unwrap();
    let settings = DovecotPolicySettings::new(vec!["imap".into()], Some(old));
    let live = settings.secret.clone().unwrap();
    let running = start(settings);
    let body = report_23("alice", "192.0.2.7", "imap", true, false);
    let with = |token: &str| format!("Authorization: Bearer {token}");
    let old_header = with("old-secret-old-secret");
    assert_go_on(
        &running
            .ask_raw(&dovecot_request("report", &body, Some(&old_header)))
            .await,
    );
    let new = PolicySecret::from_file_text("new-secret-new-secret\n").unwrap();
    assert!(live.replace(new.clone()), "another secret");
    assert!(!live.replace(new), "the same again");
    let answer = running
        .ask_raw(&dovecot_request("report", &body, Some(&old_header)))
        .await;
    assert_eq!(
        answer.status, 401,
        "the old token after the reload: {answer:?}"
    );
    assert_eq!(running.counters.now().unauthorized, 1);
    let new_header = with("new-secret-new-secret");
    assert_go_on(
        &running
            .ask_raw(&dovecot_request("report", &body, Some(&new_header)))
            .await,
    );
    assert_eq!(
        running.reports.calls(),
        [
            granted("192.0.2.7", "alice", "imap"),
            granted("192.0.2.7", "alice", "imap")
        ]
    );
}

#[tokio::test]
async fn a_unix_socket_serves_as_tcp_does_and_takes_dovecot_24s_proxy_form() {
    let running = start_unix("unix", settings());
    assert_go_on(
        &running
            .post(
                "report",
                &report_23("alice", "192.0.2.7", "imap", true, false),
            )
            .await,
    );
    // Dovecot 2.4 with http_client_proxy_socket_path sends an absolute URL.
    let body = report_24("bob", "2001:db8::7", true, "");
    let request = format!(
        "POST http://127.0.0.1:10030/?command=report HTTP/1.1\r\nHost: 127.0.0.1:10030\r\n\
         Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    );
    assert_go_on(&running.ask_raw(request.as_bytes()).await);
    assert_eq!(
        running.reports.calls(),
        [
            granted("192.0.2.7", "alice", "imap"),
            granted("2001:db8::7", "bob", "pop3")
        ]
    );
}

#[tokio::test]
async fn idle_connections_holding_every_slot_make_room_for_dovecot() {
    let mut settings = settings();
    settings.max_connections = 4;
    let running = start(settings);
    // A local user holds every slot with connections that never ask.
    let mut squatters = Vec::new();
    for _ in 0..4 {
        squatters.push(running.connect().await);
    }
    // Dovecot's reports are still taken at once, each on a new
    // connection kept alive, and each closes the squatter idle longest.
    let mut dovecot = Vec::new();
    for user in ["alice", "bob"] {
        let body = report_23(user, "192.0.2.7", "imap", true, false);
        let mut stream = running.connect().await;
        stream
            .write_all(&dovecot_request("report", &body, None))
            .await
            .unwrap();
        assert_go_on(&read_answer(&mut stream).await.expect("an answer"));
        dovecot.push(stream);
    }
    assert_eq!(
        running.reports.calls(),
        [
            granted("192.0.2.7", "alice", "imap"),
            granted("192.0.2.7", "bob", "imap")
        ]
    );
    running
        .wait_for(
            "connections closed for room",
            |counts| counts.connections_closed_for_room,
            2,
        )
        .await;
    for squatter in squatters.iter_mut().take(2) {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, squatter.read_to_end(&mut rest))
            .await
            .expect("the squatter is closed")
            .ok();
        assert!(rest.is_empty(), "{rest:?}");
    }
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_header_timeout() {
    let mut settings = settings();
    settings.header_timeout = Duration::from_millis(300);
    let running = start(settings);
    let mut stream = running.connect().await;
    let body = report_23("alice", "192.0.2.7", "imap", true, false);
    stream
        .write_all(&dovecot_request("report", &body, None))
        .await
        .unwrap();
    assert_go_on(&read_answer(&mut stream).await.unwrap());
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .ok();
    assert!(
        rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_changes_nothing() {
    let mut settings = settings();
    settings.body_timeout = Duration::from_millis(300);
    let running = start(settings);
    let body = report_23("alice", "192.0.2.7", "imap", true, false);
    let mut request = dovecot_request("report", &body, None);
    request.truncate(request.len() - 10);
    // The connection stays open: the rest just never comes.
    let answer = running.ask_raw(&request).await;
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(running.reports.calls(), []);
}
