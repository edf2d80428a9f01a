//! The server under test: one per test function, on loopback, serving
//! Maildirs in a temp directory to the users below; and the Maildirs as
//! they must be on disk.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    NoFailureSink, NoGrant,
};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// One message of the fixture: as stored, and as RFC 1939 sends it.
pub struct Message {
    /// The file name in `cur/`; its base name (before ':') is the UIDL.
    pub file_name: String,
    pub uid: String,
    pub stored: Vec<u8>,
    /// CRLF line ends, not dot-stuffed, without the terminating dot.
    pub wire: Vec<u8>,
}

pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    pub messages: Vec<Message>,
}

/// Lines that start with the termination octet, a line that is only a
/// dot, bare LF and CRLF line ends, a last line without newline, a message
/// without a blank line, and one larger than the server's 64 KiB flush
/// threshold.
fn users() -> Vec<User> {
    let mut big = b"Subject: three\nX-Fuzz: big\n\n".to_vec();
    for i in 0..1500 {
        let dot = if i % 5 == 0 { "." } else { "" };
        big.extend(
            format!("{dot}line {i:04} of the big message, long enough to fill pages quickly\n")
                .bytes(),
        );
    }
    let alice = [
        b"Subject: one\n\nfirst\n.\n..two dots\n.leading dot\nlast line without newline".to_vec(),
        b"Subject: two\r\nFrom: b@example.org\r\n\r\nl1\r\n\r\n.\r\nl3\r\n".to_vec(),
        big,
        b"X-Header-Only: yes\n".to_vec(),
    ];
    let bob = [b"Subject: bob\n\n.\n".to_vec()];
    vec![
        User {
            name: "alice",
            password: "pw-a",
            messages: messages(&alice, 1),
        },
        // RFC 1939 section 7: a password may hold spaces.
        User {
            name: "bob",
            password: "two words",
            messages: messages(&bob, 100),
        },
    ]
}

fn messages(stored: &[Vec<u8>], first: usize) -> Vec<Message> {
    stored
        .iter()
        .enumerate()
        .map(|(i, stored)| {
            let uid = format!("{}.M{}P1.fuzz", 1_700_000_000 + first + i, first + i);
            Message {
                file_name: format!("{uid}:2,"),
                uid,
                stored: stored.clone(),
                wire: wire_form(stored),
            }
        })
        .collect()
}

/// RFC 1939 section 3: lines end in CRLF on the wire; a stored bare LF is
/// sent as CRLF, and a last line without newline gets one so the
/// terminating dot starts a line. (The fixture has no bare CR.)
fn wire_form(stored: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for line in stored.split_inclusive(|&b| b == b'\n') {
        let text = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        wire.extend_from_slice(text);
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

/// The running server and the Maildirs it serves.
pub struct Fixture {
    pub runtime: Runtime,
    pub addr: SocketAddr,
    pub users: Vec<User>,
    mail: PathBuf,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

/// Files of a Maildir (`cur/`, `new/`, `tmp/`), by path within it.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

impl Fixture {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let mail = dir.path().join("mail");
        let users = users();
        let users_file: String = users
            .iter()
            .map(|u| format!("{}:{{PLAIN}}{}\n", u.name, u.password))
            .collect();
        let config = ServerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            hostname: "fuzz".into(),
            // Failed logins are part of every other case: their delay
            // would only slow the run down.
            login_failure_delay: Duration::ZERO,
            ..ServerConfig::default()
        };
        let backends = Backends {
            auth: Arc::new(UsersFile::parse(&users_file).expect("users file")),
            store: Arc::new(MaildirStore::new(mail.clone())),
            grants: Arc::new(NoGrant),
            failures: Arc::new(NoFailureSink),
        };
        let shutdown = CancellationToken::new();
        let addr = runtime.block_on(async {
            let server = Server::bind(config, backends).await.expect("bind");
            let addr = server.local_addrs()[0];
            tokio::spawn(server.run(shutdown.clone()));
            addr
        });
        let fixture = Self {
            runtime,
            addr,
            users,
            mail,
            shutdown,
            _dir: dir,
        };
        for user in &fixture.users {
            fixture.restore(user);
        }
        fixture
    }

    fn maildir(&self, user: &User) -> PathBuf {
        self.mail.join(user.name)
    }

    /// What `user`'s Maildir holds now.
    pub fn snapshot(&self, user: &User) -> Snapshot {
        let dir = self.maildir(user);
        let mut files = Snapshot::new();
        for sub in ["cur", "new", "tmp"] {
            for entry in fs::read_dir(dir.join(sub)).expect("read Maildir") {
                let entry = entry.expect("read Maildir");
                let name = format!("{sub}/{}", entry.file_name().to_string_lossy());
                files.insert(name, fs::read(entry.path()).expect("read message"));
            }
        }
        files
    }

    /// What `user`'s Maildir must hold once the messages with the indices
    /// in `gone` have been removed.
    pub fn expected(&self, user: &User, gone: &BTreeSet<usize>) -> Snapshot {
        user.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.contains(i))
            .map(|(_, m)| (format!("cur/{}", m.file_name), m.stored.clone()))
            .collect()
    }

    /// Puts `user`'s Maildir back as the fixture has it. Each message gets
    /// its own mtime, a second apart: the store lists in delivery (mtime)
    /// order, so message numbers are the fixture's order.
    pub fn restore(&self, user: &User) {
        let dir = self.maildir(user);
        for sub in ["cur", "new", "tmp"] {
            let sub = dir.join(sub);
            if sub.exists() {
                fs::remove_dir_all(&sub).expect("clear Maildir");
            }
            fs::create_dir_all(&sub).expect("make Maildir");
        }
        for (i, message) in user.messages.iter().enumerate() {
            let path = dir.join("cur").join(&message.file_name);
            write_with_mtime(&path, &message.stored, 1_700_000_000 + i as u64);
        }
    }
}

fn write_with_mtime(path: &Path, bytes: &[u8], mtime: u64) {
    fs::write(path, bytes).expect("write message");
    let file = fs::File::options()
        .write(true)
        .open(path)
        .expect("open message");
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .expect("set mtime");
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
