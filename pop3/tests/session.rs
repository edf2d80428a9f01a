//! The session state machine against fakes: a script replayed at every
//! chunk size from 1 to 512 octets (of the commands sent and of the
//! messages read) must give the same transcript, and that transcript is
//! checked line by line against RFC 1939.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Read},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use pop3::{
    auth::{password_checks::PasswordChecks, user_throttle::UserThrottle},
    counters::{LoginMethod, LoginResult},
    framing::{Line, LineBuffer},
    maildrop::{
        CommitError, ForSession, Maildrop, MaildropStore, MessageInfo, MessageReader, OpenError,
    },
    reply::ReplyBuffer,
    server::ClientNetwork,
    session::{Flow, Session, SessionContext, Transport},
    session_id::SessionId,
    ApopSecret, Authenticator, FailureSink, GrantError, GrantFuture, GrantSink, Granted,
};

const TIMESTAMP: &str = "<1896.697170952@dbc.mtview.ca.us>";

#[derive(Default)]
struct FakeStore {
    mail: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    locked: Mutex<HashSet<String>>,
    commits: Mutex<Vec<(String, Vec<usize>)>>,
    /// Octets a message reader hands out per read at most (0: as many as
    /// asked for), so that line ends and dots fall between reads.
    piece: AtomicUsize,
    /// Octets handed out by all message readers.
    read_octets: AtomicU64,
}

/// A message being read from a [`FakeStore`]: in pieces, every other read
/// "not cached" (the session then reads on the blocking pool), counted.
struct FakeReader {
    store: Arc<FakeStore>,
    bytes: Vec<u8>,
    at: usize,
    reads: usize,
}

impl Read for FakeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = match self.store.piece.load(Ordering::Relaxed) {
            0 => buf.len(),
            piece => piece.min(buf.len()),
        };
        let n = piece.min(self.bytes.len() - self.at);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        self.store
            .read_octets
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl MessageReader for FakeReader {
    fn read_if_cached(&mut self, buf: &mut [u8]) -> Option<usize> {
        self.reads += 1;
        if self.reads.is_multiple_of(2) {
            return None;
        }
        self.read(buf).ok()
    }
}

struct FakeMaildrop {
    store: Arc<FakeStore>,
    user: String,
    bodies: Vec<Vec<u8>>,
    info: Vec<MessageInfo>,
}

impl Drop for FakeMaildrop {
    fn drop(&mut self) {
        self.store.locked.lock().unwrap().remove(&self.user);
    }
}

impl Maildrop for FakeMaildrop {
    fn messages(&self) -> &[MessageInfo] {
        &self.info
    }
    fn open(&mut self, index: usize) -> io::Result<Box<dyn MessageReader>> {
        // A store that fails as badly as it can: the session loses the
        // maildrop (and its lock) with the thread that panicked.
        assert!(
            !self.bodies[index].starts_with(PANICS),
            "a store that panics"
        );
        Ok(Box::new(FakeReader {
            store: Arc::clone(&self.store),
            bytes: self.bodies[index].clone(),
            at: 0,
            reads: 0,
        }))
    }
    fn commit(self: Box<Self>, deleted: &[usize]) -> Result<usize, CommitError> {
        self.store
            .commits
            .lock()
            .unwrap()
            .push((self.user.clone(), deleted.to_vec()));
        Ok(deleted.len())
    }
}

struct StoreHandle(Arc<FakeStore>);

impl MaildropStore for StoreHandle {
    fn open(&self, user: &str, _session: &ForSession) -> Result<Box<dyn Maildrop>, OpenError> {
        if !self.0.locked.lock().unwrap().insert(user.to_string()) {
            return Err(OpenError::InUse);
        }
        let bodies = self
            .0
            .mail
            .lock()
            .unwrap()
            .get(user)
            .cloned()
            .unwrap_or_default();
        let info = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| MessageInfo {
                size: b.len() as u64,
                uid: format!("uid-{user}-{i}"),
            })
            .collect();
        Ok(Box::new(FakeMaildrop {
            store: Arc::clone(&self.0),
            user: user.to_string(),
            bodies,
            info,
        }))
    }
}

struct FakeAuth;

impl Authenticator for FakeAuth {
    fn check_hashes(&self, _user: &str) -> bool {
        true
    }
    fn verify_password(&self, user: &str, password: &str) -> bool {
        matches!(
            (user, password),
            ("alice", "open sesame") | ("hashed", "pw")
        )
    }
    fn apop_secret(&self, user: &str) -> ApopSecret {
        match user {
            "mrose" => ApopSecret::Secret("tanstaaf".into()),
            "alice" => ApopSecret::Secret("open sesame".into()),
            "hashed" => ApopSecret::NotPlaintext,
            _ => ApopSecret::NoSuchUser,
        }
    }
}

#[derive(Default)]
struct RecordingSink(Mutex<Vec<IpAddr>>);

struct SinkHandle(Arc<RecordingSink>);

impl GrantSink for SinkHandle {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        self.0 .0.lock().unwrap().push(addr);
        Box::pin(std::future::ready(Ok(Granted::default())))
    }
}

/// The failed logins the session reported: (address, user name).
#[derive(Default)]
struct RecordingFailures(Mutex<Vec<(IpAddr, String)>>);

struct FailuresHandle(Arc<RecordingFailures>);

impl FailureSink for FailuresHandle {
    fn login_failed(&self, addr: IpAddr, user: &str) {
        self.0 .0.lock().unwrap().push((addr, user.to_string()));
    }
}

struct Fixture {
    store: Arc<FakeStore>,
    grants: Arc<RecordingSink>,
    failures: Arc<RecordingFailures>,
    ctx: SessionContext,
}

fn fixture() -> Fixture {
    let store = Arc::new(FakeStore::default());
    store.mail.lock().unwrap().insert(
        "alice".into(),
        vec![
            b"Subject: one\r\n\r\nfirst body\r\n.dotted line\r\n".to_vec(),
            b"Subject: two\r\nFrom: b@example.org\r\n\r\nl1\r\nl2\r\nl3\r\n".to_vec(),
            b"Subject: three\r\n\r\nthird\r\n".to_vec(),
        ],
    );
    store
        .mail
        .lock()
        .unwrap()
        .insert("mrose".into(), vec![b"Subject: x\r\n\r\ny\r\n".to_vec()]);
    let grants = Arc::new(RecordingSink::default());
    let failures = Arc::new(RecordingFailures::default());
    let ctx = SessionContext {
        id: SessionId::default(),
        auth: Arc::new(FakeAuth),
        store: Arc::new(StoreHandle(Arc::clone(&store))),
        grants: Arc::new(SinkHandle(Arc::clone(&grants))),
        failures: Arc::new(FailuresHandle(Arc::clone(&failures))),
        peer: "192.0.2.7".parse().unwrap(),
        network: ClientNetwork::of("192.0.2.7".parse().unwrap(), 32, 64),
        password_checks: PasswordChecks::new(1),
        user_throttle: Arc::new(UserThrottle::new()),
        max_login_failures: 3,
        transport: Transport::cleartext(false, false),
        apop: true,
        counters: Arc::default(),
    };
    Fixture {
        store,
        grants,
        failures,
        ctx,
    }
}

/// A message body that makes the fake store panic when it is opened.
const PANICS: &[u8] = b"PANIC";

/// A read whose store panicked loses the maildrop: the RETR gets `-ERR`,
/// and a QUIT then says whether deletions were lost. With none marked it
/// signs off; with one marked it says it was not removed (RFC 1939
/// section 6), and nothing is committed either way.
#[tokio::test]
async fn a_quit_after_the_maildrop_was_lost_says_whether_deletions_were() {
    for (script, last) in [
        (
            "USER alice\r\nPASS open sesame\r\nRETR 2\r\nQUIT\r\n",
            "+OK smtp-gate POP3 server signing off\r\n",
        ),
        (
            "USER alice\r\nPASS open sesame\r\nDELE 1\r\nRETR 2\r\nQUIT\r\n",
            "-ERR [SYS/TEMP] some deleted messages not removed\r\n",
        ),
    ] {
        let f = fixture();
        f.store.mail.lock().unwrap().get_mut("alice").unwrap()[1] = PANICS.to_vec();
        let (transcript, _) = run(f.ctx.clone(), script.as_bytes(), 4096).await;
        assert!(transcript.ends_with(last), "{script}: {transcript}");
        assert!(f.store.commits.lock().unwrap().is_empty(), "{script}");
    }
}

/// Every login is counted once, by its method and how it ended (the
/// daemon's `smtp_gate_pop3_logins_total`): right and wrong passwords, a
/// malformed SASL response, a maildrop another session holds.
#[tokio::test]
async fn logins_are_counted_by_method_and_result() {
    use LoginMethod::{Apop, SaslPlain, UserPass};
    use LoginResult::{Failed, InUse, Ok};
    let f = fixture();
    let script = "USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS open sesame\r\nQUIT\r\n";
    run(f.ctx.clone(), script.as_bytes(), 512).await;
    let apop = "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\nQUIT\r\n";
    run(f.ctx.clone(), apop.as_bytes(), 512).await;
    let plain_wrong = plain(b"\0alice\0wrong");
    let script = format!("AUTH PLAIN {plain_wrong}\r\nAUTH PLAIN !!!\r\n");
    run(f.ctx.clone(), script.as_bytes(), 512).await;
    // alice's maildrop held by another session.
    f.store.locked.lock().unwrap().insert("alice".into());
    run(f.ctx.clone(), b"USER alice\r\nPASS open sesame\r\n", 512).await;
    let mut counted = Vec::new();
    for method in LoginMethod::ALL {
        for result in LoginResult::ALL {
            let n = f.ctx.counters.logins(method, result);
            if n > 0 {
                counted.push((method, result, n));
            }
        }
    }
    assert_eq!(
        counted,
        [
            (UserPass, Ok, 1),
            (UserPass, Failed, 1),
            (UserPass, InUse, 1),
            (Apop, Ok, 1),
            (SaslPlain, Failed, 2),
        ]
    );
}

/// Feeds `input` in pieces of `chunk` octets; returns the transcript and
/// the flow of the last line.
async fn run(ctx: SessionContext, input: &[u8], chunk: usize) -> (String, Vec<Flow>) {
    let mut session = Session::new(ctx, TIMESTAMP.to_string());
    let mut out = ReplyBuffer::new();
    session.greeting(&mut out);
    let mut transcript = out.as_bytes().to_vec();
    out.clear();
    let mut lines = LineBuffer::new();
    let mut flows = Vec::new();
    'feed: for piece in input.chunks(chunk) {
        lines.extend(piece);
        while let Some(line) = lines.next_line() {
            let flow = session.handle(line, &mut out).await;
            lines.set_max_line(session.max_line());
            transcript.extend_from_slice(out.as_bytes());
            out.clear();
            flows.push(flow);
            if matches!(flow, Flow::Close | Flow::LoginFailedClose) {
                break 'feed;
            }
        }
    }
    (String::from_utf8(transcript).unwrap(), flows)
}

const SCRIPT: &[u8] = b"CAPA\r\nSTAT\r\nUSER alice\r\nPASS open sesame\r\nSTAT\r\nLIST\r\nUIDL\r\n\
RETR 1\r\nTOP 2 0\r\nTOP 2 1\r\nDELE 1\r\nDELE 1\r\nLIST\r\nSTAT\r\nUIDL\r\nLIST 1\r\nUIDL 1\r\n\
RETR 1\r\nRETR 0\r\nLIST 4\r\nTOP 0 1\r\nNOOP\r\nRSET\r\nSTAT\r\nDELE 3\r\nUSER bob\r\nQUIT\r\n";

const EXPECTED: &str = "+OK smtp-gate POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n\
+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN\r\nIMPLEMENTATION smtp-gate\r\n.\r\n\
-ERR STAT is not valid in this state\r\n\
+OK send PASS\r\n\
+OK alice has 3 messages (116 octets)\r\n\
+OK 3 116\r\n\
+OK 3 messages (116 octets)\r\n1 42\r\n2 49\r\n3 25\r\n.\r\n\
+OK unique-id listing follows\r\n1 uid-alice-0\r\n2 uid-alice-1\r\n3 uid-alice-2\r\n.\r\n\
+OK 42 octets\r\nSubject: one\r\n\r\nfirst body\r\n..dotted line\r\n.\r\n\
+OK top of message follows\r\nSubject: two\r\nFrom: b@example.org\r\n\r\n.\r\n\
+OK top of message follows\r\nSubject: two\r\nFrom: b@example.org\r\n\r\nl1\r\n.\r\n\
+OK message 1 deleted\r\n\
-ERR no such message\r\n\
+OK 2 messages (74 octets)\r\n2 49\r\n3 25\r\n.\r\n\
+OK 2 74\r\n\
+OK unique-id listing follows\r\n2 uid-alice-1\r\n3 uid-alice-2\r\n.\r\n\
-ERR no such message\r\n\
-ERR no such message\r\n\
-ERR no such message\r\n\
-ERR no such message\r\n\
-ERR no such message\r\n\
-ERR no such message\r\n\
+OK\r\n\
+OK maildrop has 3 messages (116 octets)\r\n\
+OK 3 116\r\n\
+OK message 3 deleted\r\n\
-ERR USER is not valid in this state\r\n\
+OK smtp-gate POP3 server signing off (1 messages deleted)\r\n";

#[tokio::test]
async fn script_gives_the_same_transcript_at_every_chunk_size() {
    for chunk in 1..=512 {
        let f = fixture();
        // The messages are read in pieces of that size too.
        f.store.piece.store(chunk, Ordering::Relaxed);
        let (transcript, flows) = run(f.ctx.clone(), SCRIPT, chunk).await;
        assert_eq!(transcript, EXPECTED, "chunk size {chunk}");
        assert_eq!(flows.last(), Some(&Flow::Close), "chunk size {chunk}");
        assert_eq!(
            *f.store.commits.lock().unwrap(),
            vec![("alice".to_string(), vec![2])],
            "only message 3 is deleted: DELE 1 was undone by RSET (chunk {chunk})"
        );
        assert_eq!(
            *f.grants.0.lock().unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()],
            "one grant per login (chunk {chunk})"
        );
    }
}

#[tokio::test]
async fn apop_rfc1939_example_logs_in_and_grants() {
    let f = fixture();
    let (transcript, _) = run(
        f.ctx.clone(),
        b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\nSTAT\r\n",
        512,
    )
    .await;
    assert!(
        transcript.contains("+OK mrose has 1 messages"),
        "{transcript}"
    );
    assert_eq!(f.grants.0.lock().unwrap().len(), 1);
}

/// RFC 1939 section 13: APOP for a user who has only a hash, for a name
/// that does not exist and with a wrong digest all get the same answer,
/// so that the reply tells a prober nothing about the user; the hash-only
/// user can still log in with USER/PASS.
#[tokio::test]
async fn apop_for_a_hash_only_user_is_answered_as_a_wrong_digest() {
    let f = fixture();
    let (transcript, flows) = run(
        f.ctx.clone(),
        b"APOP mrose 00000000000000000000000000000000\r\nAPOP hashed c4c9334bac560ecc979e58001b3e22fb\r\nUSER hashed\r\nPASS pw\r\n",
        7,
    )
    .await;
    let lines: Vec<&str> = transcript.lines().collect();
    assert_eq!(lines[1], "-ERR [AUTH] invalid user name or digest");
    assert_eq!(lines[2], lines[1], "hash-only user: {transcript}");
    assert_eq!(lines[3], "+OK send PASS");
    assert!(
        lines[4].starts_with("+OK hashed has 0 messages"),
        "{transcript}"
    );
    assert_eq!(flows[..2], [Flow::LoginFailed, Flow::LoginFailed]);
    assert_eq!(
        f.grants.0.lock().unwrap().len(),
        1,
        "only the good login grants"
    );
    let f = fixture();
    let (unknown, _) = run(
        f.ctx.clone(),
        b"APOP nobody c4c9334bac560ecc979e58001b3e22fb\r\n",
        512,
    )
    .await;
    assert_eq!(unknown.lines().nth(1), Some(lines[1]), "unknown name");
    // The digest of the stand-in secret checked for them opens nothing.
    let decoy = pop3::auth::apop::digest(TIMESTAMP, "decoy: no plaintext-equivalent secret");
    for user in ["hashed", "nobody"] {
        let f = fixture();
        let (transcript, _) = run(
            f.ctx.clone(),
            format!("APOP {user} {decoy}\r\n").as_bytes(),
            512,
        )
        .await;
        assert_eq!(transcript.lines().nth(1), Some(lines[1]), "{user}");
        assert!(f.grants.0.lock().unwrap().is_empty(), "{user}");
    }
}

#[tokio::test]
async fn third_failure_closes_and_nothing_is_granted() {
    let f = fixture();
    let (transcript, flows) = run(
        f.ctx.clone(),
        b"USER alice\r\nPASS no\r\nUSER alice\r\nPASS no\r\nPASS no\r\nUSER alice\r\nPASS no\r\nSTAT\r\n",
        3,
    )
    .await;
    assert_eq!(
        flows,
        [
            Flow::Continue,
            Flow::LoginFailed,
            Flow::Continue,
            Flow::LoginFailed,
            Flow::Continue, // PASS without USER: not a login attempt
            Flow::Continue,
            Flow::LoginFailedClose
        ]
    );
    assert!(transcript.contains("-ERR USER first"), "{transcript}");
    assert_eq!(transcript.matches("-ERR [AUTH]").count(), 3);
    assert!(f.grants.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn second_session_gets_in_use_and_no_grant() {
    let f = fixture();
    let mut first = Session::new(f.ctx.clone(), TIMESTAMP.into());
    let mut out = ReplyBuffer::new();
    let feed = |s: &str| pop3::framing::Line::Command(s.as_bytes().to_vec());
    first.handle(feed("USER alice"), &mut out).await;
    first.handle(feed("PASS open sesame"), &mut out).await;
    out.clear();
    let (transcript, _) = run(
        f.ctx.clone(),
        b"USER alice\r\nPASS open sesame\r\nPASS open sesame\r\n",
        512,
    )
    .await;
    assert!(
        transcript.contains("-ERR [IN-USE] maildrop is locked by another session"),
        "{transcript}"
    );
    // The locked-out login starts over: a PASS needs a USER again.
    assert!(transcript.ends_with("-ERR USER first\r\n"), "{transcript}");
    assert_eq!(
        f.grants.0.lock().unwrap().len(),
        1,
        "the locked-out login does not grant"
    );
    drop(first);
    let (transcript, _) = run(f.ctx.clone(), b"USER alice\r\nPASS open sesame\r\n", 512).await;
    assert!(
        transcript.contains("+OK alice has 3"),
        "lock released: {transcript}"
    );
}

#[tokio::test]
async fn session_cut_without_quit_deletes_nothing() {
    let f = fixture();
    let (_, flows) = run(
        f.ctx.clone(),
        b"USER alice\r\nPASS open sesame\r\nDELE 1\r\nDELE 2\r\n",
        512,
    )
    .await;
    assert_eq!(flows.last(), Some(&Flow::Continue));
    assert!(f.store.commits.lock().unwrap().is_empty());
    assert!(
        f.store.locked.lock().unwrap().is_empty(),
        "lock released on drop"
    );
}

#[tokio::test]
async fn overlong_and_garbage_lines_get_err_and_the_session_goes_on() {
    let f = fixture();
    let mut input = b"USER alice\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 1000));
    input.extend_from_slice(b"\r\n\xff\xfe\r\n\r\nFOO\r\nPASS open sesame\r\nQUIT\r\n");
    let (transcript, flows) = run(f.ctx.clone(), &input, 13).await;
    let lines: Vec<&str> = transcript.lines().collect();
    assert!(lines[2].starts_with("-ERR line too long"), "{transcript}");
    assert!(lines[3].starts_with("-ERR"), "{transcript}");
    assert_eq!(lines[4], "-ERR empty command");
    assert_eq!(lines[5], "-ERR unknown command FOO");
    assert!(
        lines[6].starts_with("+OK alice has"),
        "USER survived the junk: {transcript}"
    );
    assert_eq!(flows.last(), Some(&Flow::Close));
}

#[tokio::test]
async fn quit_in_authorization_closes_without_commit() {
    let f = fixture();
    let (transcript, flows) = run(f.ctx.clone(), b"QUIT\r\nSTAT\r\n", 512).await;
    assert!(transcript.ends_with("+OK smtp-gate POP3 server signing off\r\n"));
    assert_eq!(flows, [Flow::Close]);
    assert!(f.store.commits.lock().unwrap().is_empty());
}

struct FailingSink;

impl GrantSink for FailingSink {
    fn grant(&self, _addr: IpAddr) -> GrantFuture<'_> {
        Box::pin(std::future::ready(Err(GrantError::new(
            "map grants_v4: permission denied",
        ))))
    }
}

#[tokio::test]
async fn a_grant_that_cannot_be_written_does_not_fail_the_login() {
    let mut f = fixture();
    f.ctx.grants = Arc::new(FailingSink);
    let (transcript, _) = run(f.ctx, b"USER alice\r\nPASS open sesame\r\nSTAT\r\n", 512).await;
    assert!(
        transcript.contains("+OK alice has 3 messages"),
        "{transcript}"
    );
    assert!(transcript.ends_with("+OK 3 116\r\n"), "{transcript}");
}

/// The grant is written before the `+OK` of a login can leave: when the
/// session hands back the reply to the PASS (the server writes replies
/// only after `handle` returns), the sink already has the address. A
/// grant made later, in a task of its own, would let a client that sends
/// right after `+OK` reach SMTP before its grant.
#[tokio::test]
async fn the_grant_is_made_before_the_ok_is_handed_back() {
    let f = fixture();
    let mut session = Session::new(f.ctx, TIMESTAMP.to_string());
    let mut out = ReplyBuffer::new();
    let mut lines = LineBuffer::new();
    lines.extend(b"USER alice\r\nPASS open sesame\r\n");
    let user = lines.next_line().expect("USER line");
    session.handle(user, &mut out).await;
    assert!(f.grants.0.lock().unwrap().is_empty(), "granted on USER");
    out.clear();
    let pass = lines.next_line().expect("PASS line");
    session.handle(pass, &mut out).await;
    let reply = String::from_utf8_lossy(out.as_bytes()).into_owned();
    assert!(reply.starts_with("+OK alice has 3 messages"), "{reply}");
    assert_eq!(
        *f.grants.0.lock().unwrap(),
        vec!["192.0.2.7".parse::<IpAddr>().unwrap()],
        "the +OK was handed back before the grant was made"
    );
}

/// A sink whose grant goes on until the test lets it end (as one waiting
/// for the grant bus's engine does).
struct WaitingSink {
    called: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl GrantSink for WaitingSink {
    fn grant(&self, _addr: IpAddr) -> GrantFuture<'_> {
        Box::pin(async move {
            self.called.notify_one();
            let _ended = self.release.acquire().await.expect("not closed");
            Ok(Granted::default())
        })
    }
}

/// The `+OK` waits for the whole grant, not only its start: a sink that
/// waits (for the bus's acknowledgement) holds the reply back until it
/// ends. A grant sent off without waiting would let a client that sends
/// right after `+OK` reach another host's SMTP before its grant.
#[tokio::test]
async fn the_ok_waits_until_the_grant_has_ended() {
    let mut f = fixture();
    let sink = Arc::new(WaitingSink {
        called: tokio::sync::Notify::new(),
        release: tokio::sync::Semaphore::new(0),
    });
    f.ctx.grants = Arc::clone(&sink) as Arc<dyn GrantSink>;
    let login = tokio::spawn(async move {
        let (transcript, _) = run(f.ctx, b"USER alice\r\nPASS open sesame\r\n", 512).await;
        transcript
    });
    tokio::time::timeout(std::time::Duration::from_secs(30), sink.called.notified())
        .await
        .expect("the login asked for its grant");
    // The session has nothing to wait for but the grant now.
    for _ in 0..1000 {
        tokio::task::yield_now().await;
    }
    assert!(!login.is_finished(), "the login ended before its grant did");
    sink.release.add_permits(1);
    let transcript = login.await.unwrap();
    assert!(
        transcript.ends_with("+OK alice has 3 messages (116 octets)\r\n"),
        "{transcript}"
    );
}

/// A message far larger than what a session may hold of it: a header,
/// the blank line, then lines of 1000 octets.
fn large_message() -> Vec<u8> {
    let mut message = b"Subject: large\r\n\r\n".to_vec();
    let line = [&[b'z'; 998][..], b"\r\n"].concat();
    for _ in 0..16_000 {
        message.extend_from_slice(&line);
    }
    message
}

/// A fixture whose alice has a [`large_message`] and a small one.
fn large_fixture() -> (Fixture, usize) {
    let f = fixture();
    let message = large_message();
    let len = message.len();
    let small = b"Subject: small\r\n\r\nx\r\n".to_vec();
    f.store
        .mail
        .lock()
        .unwrap()
        .insert("alice".into(), vec![message, small]);
    (f, len)
}

/// The server's side of a client that reads nothing: once a reply of
/// `FLUSH_AT` octets waits to be sent, making room never ends (the
/// server's sink then waits for the send timeout), or fails if
/// `gone` (the timeout has run out).
struct DeafClient {
    buffer: ReplyBuffer,
    stuck: Arc<tokio::sync::Notify>,
    gone: bool,
}

impl pop3::reply::ReplySink for DeafClient {
    fn buffer(&mut self) -> &mut ReplyBuffer {
        &mut self.buffer
    }

    async fn make_room(&mut self) -> io::Result<()> {
        if self.buffer.len() >= pop3::reply::FLUSH_AT {
            if self.gone {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client read nothing",
                ));
            }
            self.stuck.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

async fn logged_in(f: &Fixture, client: &mut DeafClient) -> Session {
    let mut session = Session::new(f.ctx.clone(), TIMESTAMP.to_string());
    let feed = |s: &str| pop3::framing::Line::Command(s.as_bytes().to_vec());
    session.handle(feed("USER alice"), client).await;
    session.handle(feed("PASS open sesame"), client).await;
    let reply = String::from_utf8_lossy(client.buffer.as_bytes()).into_owned();
    assert!(reply.contains("+OK alice has 2 messages"), "{reply}");
    client.buffer.clear();
    session
}

/// Defect 3 of issue 10: RETR read the whole message into memory before
/// sending any of it, so a client that stopped reading held all of it
/// (ten such sessions of a 50 MB message: about 1 GB). Now the message is
/// read a chunk at a time as the client takes it: stuck behind a client
/// that reads nothing, the session has read one chunk (and holds that and
/// the replies waiting), not 16 MB.
#[tokio::test]
async fn retr_to_a_client_that_reads_nothing_reads_no_more_than_it_can_send() {
    let (f, len) = large_fixture();
    let stuck = Arc::new(tokio::sync::Notify::new());
    let mut client = DeafClient {
        buffer: ReplyBuffer::new(),
        stuck: Arc::clone(&stuck),
        gone: false,
    };
    let mut session = logged_in(&f, &mut client).await;
    let retr = pop3::framing::Line::Command(b"RETR 1".to_vec());
    let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::select! {
            flow = session.handle(retr, &mut client) => {
                panic!("RETR ended ({flow:?}) although the client read nothing")
            }
            _ = stuck.notified() => {}
        }
    })
    .await;
    waited.expect("RETR never waited for the client");
    let read = f.store.read_octets.load(Ordering::Relaxed);
    let bound = (pop3::reply::FLUSH_AT + pop3::session::MESSAGE_CHUNK) as u64;
    assert!(
        read > 0 && read <= bound,
        "read {read} octets of a {len}-octet message for a client that reads nothing (at most {bound})"
    );
    assert!(
        client.buffer.len() <= pop3::reply::FLUSH_AT + 2 * pop3::session::MESSAGE_CHUNK,
        "{} octets wait to be sent",
        client.buffer.len()
    );
}

/// When the client is given up on in the middle of a message, the
/// session ends: no UPDATE (the DELE before is not applied), the maildrop
/// unlocked.
#[tokio::test]
async fn a_client_lost_in_the_middle_of_a_message_ends_the_session_without_update() {
    let (f, _) = large_fixture();
    let mut client = DeafClient {
        buffer: ReplyBuffer::new(),
        stuck: Arc::default(),
        gone: true,
    };
    let mut session = logged_in(&f, &mut client).await;
    assert!(!session.is_closed());
    let feed = |s: &str| pop3::framing::Line::Command(s.as_bytes().to_vec());
    session.handle(feed("DELE 2"), &mut client).await;
    client.buffer.clear();
    let flow = session.handle(feed("RETR 1"), &mut client).await;
    assert_eq!(flow, Flow::Close);
    assert!(session.is_closed());
    assert!(f.store.commits.lock().unwrap().is_empty());
    assert!(f.store.locked.lock().unwrap().is_empty(), "unlocked");
}

/// `TOP n 0` of a 16 MB message read all of it to send its header. Now it
/// stops reading once the header is through: at most one chunk is read.
#[tokio::test]
async fn top_0_of_a_large_message_reads_only_its_header() {
    let (f, len) = large_fixture();
    let (transcript, _) = run(
        f.ctx.clone(),
        b"USER alice\r\nPASS open sesame\r\nTOP 1 0\r\nTOP 1 2\r\n",
        512,
    )
    .await;
    assert!(
        transcript.ends_with(
            &"+OK top of message follows\r\nSubject: large\r\n\r\n.\r\n\
              +OK top of message follows\r\nSubject: large\r\n\r\nLINE\r\nLINE\r\n.\r\n"
                .replace("LINE", &"z".repeat(998))
        ),
        "{}",
        &transcript[..transcript.len().min(300)]
    );
    let read = f.store.read_octets.load(Ordering::Relaxed);
    assert!(
        read <= 2 * pop3::session::MESSAGE_CHUNK as u64,
        "two TOPs read {read} octets of a {len}-octet message"
    );
}

// AUTH PLAIN (RFC 5034, RFC 4616), STLS (RFC 2595), CAPA by state and
// connection, and the cleartext policy.

fn plain(message: &[u8]) -> String {
    use base64ct::{Base64, Encoding};
    Base64::encode_string(message)
}

fn with_transport(f: &Fixture, tls: bool, tls_available: bool, loopback: bool) -> SessionContext {
    SessionContext {
        transport: Transport {
            tls,
            tls_available,
            loopback,
        },
        ..f.ctx.clone()
    }
}

/// RFC 5034 section 4: with the initial response on the command line, or
/// after the empty challenge `+ `; both grant before the +OK.
#[tokio::test]
async fn auth_plain_logs_in_with_and_without_an_initial_response() {
    let credentials = plain(b"\0alice\0open sesame");
    for script in [
        format!("AUTH PLAIN {credentials}\r\nSTAT\r\n"),
        format!("auth plain\r\n{credentials}\r\nSTAT\r\n"),
        format!("AUTH PLAIN\r\n{credentials}\r\nSTAT\r\n"),
    ] {
        let f = fixture();
        let (transcript, _) = run(f.ctx.clone(), script.as_bytes(), 7).await;
        assert!(
            transcript.contains("+OK alice has 3 messages (116 octets)\r\n+OK 3 116\r\n"),
            "{script}: {transcript}"
        );
        if !script.contains(&format!("PLAIN {credentials}")) {
            assert!(
                transcript.contains("\r\n+ \r\n"),
                "the challenge: {transcript}"
            );
        }
        assert_eq!(f.grants.0.lock().unwrap().len(), 1, "{script}");
        assert!(f.failures.0.lock().unwrap().is_empty());
    }
}

/// A wrong password, a malformed response and another user's authzid are
/// failed logins like a wrong PASS: `-ERR [AUTH]`, the failure's delay,
/// reported to the failure sink, counted toward the close.
#[tokio::test]
async fn a_bad_plain_response_is_a_failed_login() {
    let f = fixture();
    let script = format!(
        "AUTH PLAIN {}\r\nAUTH PLAIN\r\n!!notbase64\r\nAUTH PLAIN {}\r\nSTAT\r\n",
        plain(b"\0alice\0wrong"),
        plain(b"bob\0alice\0open sesame"),
    );
    let (transcript, flows) = run(f.ctx.clone(), script.as_bytes(), 5).await;
    assert_eq!(
        flows,
        [
            Flow::LoginFailed,
            Flow::Continue,
            Flow::LoginFailed,
            Flow::LoginFailedClose
        ],
        "{transcript}"
    );
    assert_eq!(transcript.matches("-ERR [AUTH]").count(), 3, "{transcript}");
    assert!(f.grants.0.lock().unwrap().is_empty());
    let peer: IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(
        *f.failures.0.lock().unwrap(),
        [
            (peer, "alice".to_string()),
            (peer, String::new()),
            (peer, String::new())
        ]
    );
}

/// RFC 5034 section 4: `*` cancels, and the server MUST answer -ERR; it
/// is not a failed login. An unknown mechanism is refused; a bare AUTH
/// lists PLAIN; the session goes on to log in after each.
#[tokio::test]
async fn auth_cancel_unknown_mechanism_and_the_list() {
    let f = fixture();
    let script = format!(
        "AUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\nAUTH\r\nAUTH PLAIN {}\r\n",
        plain(b"\0alice\0open sesame")
    );
    let (transcript, flows) = run(f.ctx.clone(), script.as_bytes(), 3).await;
    assert!(
        flows.iter().all(|&flow| flow == Flow::Continue),
        "{flows:?}"
    );
    assert!(
        transcript.contains(
            "+ \r\n-ERR authentication cancelled\r\n\
             -ERR unsupported authentication mechanism\r\n\
             +OK mechanisms follow\r\nPLAIN\r\n.\r\n+OK alice has"
        ),
        "{transcript}"
    );
    assert!(f.failures.0.lock().unwrap().is_empty());
}

/// A response to the challenge may be longer than a command line
/// (255 octets of password, RFC 4616), and the next line is a command
/// again, held to RFC 2449's 255 octets.
#[tokio::test]
async fn a_long_plain_response_is_taken_and_commands_stay_bounded() {
    let f = fixture();
    let long = "p".repeat(255);
    let script = format!(
        "AUTH PLAIN\r\n{}\r\nUSER {}\r\n",
        plain(format!("{long}\0{long}\0{long}").as_bytes()),
        "u".repeat(300)
    );
    let (transcript, _) = run(f.ctx.clone(), script.as_bytes(), 64).await;
    assert!(
        transcript.ends_with(
            "-ERR [AUTH] invalid user name or password\r\n\
             -ERR line too long (RFC 2449: at most 255 octets)\r\n"
        ),
        "{transcript}"
    );
    assert_eq!(
        f.failures.0.lock().unwrap().as_slice(),
        [("192.0.2.7".parse().unwrap(), long)]
    );
}

/// With a certificate configured, a password from another host without
/// TLS is refused before it is checked (USER already, so the client never
/// sends it), with [AUTH] and a text that says to use TLS; not a failed
/// login. APOP, which sends no password, still works.
#[tokio::test]
async fn cleartext_passwords_from_other_hosts_are_refused_once_tls_is_available() {
    let f = fixture();
    let ctx = with_transport(&f, false, true, false);
    let script = format!(
        "USER alice\r\nPASS open sesame\r\nAUTH PLAIN {}\r\nAUTH\r\nAPOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
        plain(b"\0alice\0open sesame")
    );
    let (transcript, flows) = run(ctx, script.as_bytes(), 11).await;
    let use_tls =
        "-ERR [AUTH] cleartext passwords are not accepted here: use TLS (STLS, or port 995)\r\n";
    assert_eq!(
        transcript.matches(use_tls).count(),
        2,
        "USER and AUTH PLAIN: {transcript}"
    );
    assert!(transcript.contains("-ERR USER first"), "{transcript}");
    assert!(
        transcript.contains("+OK mechanisms follow\r\n.\r\n"),
        "{transcript}"
    );
    assert!(
        transcript.ends_with("+OK mrose has 1 messages (17 octets)\r\n"),
        "{transcript}"
    );
    assert!(
        flows[..4].iter().all(|&flow| flow == Flow::Continue),
        "{flows:?}"
    );
    assert!(f.failures.0.lock().unwrap().is_empty());
    assert_eq!(f.grants.0.lock().unwrap().len(), 1, "APOP's grant only");

    // Over TLS, and from this host, the same lines log in.
    for ctx in [
        with_transport(&f, true, true, false),
        with_transport(&f, false, true, true),
    ] {
        let f2 = fixture();
        let ctx = SessionContext {
            store: f2.ctx.store.clone(),
            grants: f2.ctx.grants.clone(),
            ..ctx
        };
        let (transcript, _) = run(ctx, b"USER alice\r\nPASS open sesame\r\n", 4).await;
        assert!(
            transcript.ends_with("+OK alice has 3 messages (116 octets)\r\n"),
            "{transcript}"
        );
    }
}

/// RFC 2595 section 4: STLS only where a certificate is configured, only
/// in AUTHORIZATION, not inside TLS; accepted, it hands the connection to
/// the server for the handshake (`Flow::StartTls`), and a USER given
/// before it is forgotten.
#[tokio::test]
async fn stls_is_answered_by_state_and_forgets_what_came_in_clear() {
    let f = fixture();
    let (transcript, _) = run(f.ctx.clone(), b"STLS\r\n", 8).await;
    assert!(
        transcript.ends_with("-ERR TLS is not available on this server\r\n"),
        "{transcript}"
    );

    let (transcript, _) = run(with_transport(&f, true, true, false), b"STLS\r\n", 8).await;
    assert!(
        transcript.ends_with("-ERR TLS is already active\r\n"),
        "{transcript}"
    );

    // From this host USER is taken in clear, so there is a name to forget.
    let mut session = Session::new(with_transport(&f, false, true, true), TIMESTAMP.into());
    let mut out = ReplyBuffer::new();
    let flow = session
        .handle(Line::Command(b"USER alice".to_vec()), &mut out)
        .await;
    assert_eq!(flow, Flow::Continue);
    let flow = session
        .handle(Line::Command(b"STLS".to_vec()), &mut out)
        .await;
    assert_eq!(flow, Flow::StartTls);
    session.tls_started();
    session
        .handle(Line::Command(b"PASS open sesame".to_vec()), &mut out)
        .await;
    session
        .handle(Line::Command(b"CAPA".to_vec()), &mut out)
        .await;
    let transcript = String::from_utf8(out.as_bytes().to_vec()).unwrap();
    assert!(
        transcript.starts_with("+OK send PASS\r\n+OK Begin TLS negotiation\r\n-ERR USER first\r\n"),
        "{transcript}"
    );
    let capa = transcript
        .split("+OK capability list follows\r\n")
        .nth(1)
        .unwrap();
    assert!(
        !capa.contains("STLS\r\n") && capa.contains("USER\r\n"),
        "{capa}"
    );

    let f = fixture();
    let (transcript, _) = run(
        with_transport(&f, false, true, true),
        b"USER alice\r\nPASS open sesame\r\nSTLS\r\nCAPA\r\n",
        8,
    )
    .await;
    assert!(
        transcript.contains("-ERR STLS is not valid in this state\r\n"),
        "{transcript}"
    );
    let capa = transcript
        .split("+OK capability list follows\r\n")
        .nth(1)
        .unwrap();
    for gone in ["STLS", "USER", "SASL"] {
        assert!(!capa.contains(gone), "{gone} in TRANSACTION: {capa}");
    }
}

/// With APOP turned off the greeting has no timestamp (RFC 1939 section
/// 7) and APOP is refused without a digest being checked or counted.
#[tokio::test]
async fn apop_turned_off_has_no_timestamp_and_is_refused() {
    let f = fixture();
    let ctx = SessionContext {
        apop: false,
        ..f.ctx.clone()
    };
    let (transcript, flows) =
        run(ctx, b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n", 64).await;
    assert_eq!(
        transcript,
        "+OK smtp-gate POP3 server ready\r\n-ERR APOP is not offered by this server\r\n"
    );
    assert_eq!(flows, [Flow::Continue]);
    assert!(f.grants.0.lock().unwrap().is_empty());
}

/// Failures naming one user from many sessions delay that user's next
/// login from a network it has not logged in from (the right password
/// still logs in: a delay, never a lockout); once it has logged in from
/// there, that network is not delayed.
#[tokio::test(start_paused = true)]
async fn failures_naming_a_user_delay_its_logins_but_never_refuse_them() {
    use pop3::auth::user_throttle::{DELAY_STEP, FAILURES_BEFORE_DELAY};
    let f = fixture();
    let attacker = |i: u32| {
        let ip: IpAddr = format!("203.0.113.{i}").parse().unwrap();
        SessionContext {
            peer: ip,
            network: ClientNetwork::of(ip, 32, 64),
            ..f.ctx.clone()
        }
    };
    for i in 0..FAILURES_BEFORE_DELAY + 2 {
        let (transcript, _) = run(attacker(i), b"USER alice\r\nPASS guess\r\n", 64).await;
        assert!(transcript.contains("-ERR [AUTH]"), "{transcript}");
    }
    let timed = |ctx: SessionContext| async move {
        let started = tokio::time::Instant::now();
        let (transcript, _) = run(ctx, b"USER alice\r\nPASS open sesame\r\nQUIT\r\n", 64).await;
        assert!(
            transcript.contains("+OK alice has 3 messages"),
            "{transcript}"
        );
        started.elapsed()
    };
    let waited = timed(f.ctx.clone()).await;
    assert!(
        waited >= DELAY_STEP * 3,
        "the user from a new network waited {waited:?}"
    );
    let again = timed(f.ctx.clone()).await;
    assert!(
        again < DELAY_STEP,
        "the network it logged in from waited {again:?}"
    );
    let other_user = {
        let started = tokio::time::Instant::now();
        run(attacker(99), b"USER mrose\r\nPASS x\r\n", 64).await;
        started.elapsed()
    };
    assert!(
        other_user < DELAY_STEP,
        "another name is not delayed: {other_user:?}"
    );
}

/// APOP is a way of guessing too: it waits like a password login once the
/// name is under attack.
#[tokio::test(start_paused = true)]
async fn apop_naming_a_user_under_attack_waits_too() {
    use pop3::auth::user_throttle::{DELAY_STEP, FAILURES_BEFORE_DELAY};
    let f = fixture();
    for _ in 0..FAILURES_BEFORE_DELAY {
        run(
            f.ctx.clone(),
            b"APOP mrose 00000000000000000000000000000000\r\n",
            64,
        )
        .await;
    }
    let elsewhere: IpAddr = "198.51.100.9".parse().unwrap();
    let ctx = SessionContext {
        peer: elsewhere,
        network: ClientNetwork::of(elsewhere, 32, 64),
        ..f.ctx.clone()
    };
    let started = tokio::time::Instant::now();
    let (transcript, _) = run(ctx, b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n", 64).await;
    assert!(transcript.contains("+OK mrose has"), "{transcript}");
    assert!(started.elapsed() >= DELAY_STEP, "{:?}", started.elapsed());
}

/// Another protocol on this port (an HTTP request, the ALPACA class of
/// cross-protocol attacks) or a scanner: before login, the tenth line that
/// is not a command closes the connection; after login, mistakes are
/// answered and the session goes on.
#[tokio::test]
async fn ten_bad_lines_before_login_close_the_connection() {
    use pop3::session::MAX_BAD_COMMANDS;
    let f = fixture();
    let mut http = String::from("POST / HTTP/1.1\r\nHost: pop.example\r\n");
    for i in 0..MAX_BAD_COMMANDS {
        http.push_str(&format!("X-Junk-{i}: y\r\n"));
    }
    http.push_str("USER alice\r\nPASS open sesame\r\n");
    let (transcript, flows) = run(f.ctx.clone(), http.as_bytes(), 64).await;
    assert_eq!(flows.len(), MAX_BAD_COMMANDS as usize, "{transcript}");
    assert_eq!(flows.last(), Some(&Flow::Close));
    assert!(
        transcript.ends_with("-ERR too many bad commands, closing\r\n"),
        "{transcript}"
    );
    assert!(f.grants.0.lock().unwrap().is_empty());

    let f = fixture();
    let mut script = String::from("USER alice\r\nPASS open sesame\r\n");
    for _ in 0..2 * MAX_BAD_COMMANDS {
        script.push_str("FROB\r\n");
    }
    script.push_str("STAT\r\n");
    let (transcript, _) = run(f.ctx.clone(), script.as_bytes(), 64).await;
    assert!(transcript.ends_with("+OK 3 116\r\n"), "{transcript}");
}
