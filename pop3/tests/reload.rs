//! A running service takes new settings and a new users file (what the
//! daemon does on SIGHUP): new connections get them at once, open sessions
//! go on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use pop3::{
    auth::{live_users::LiveUsers, users_file::UsersFile},
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    NoFailureSink, NoGrant,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};
use tokio_util::sync::CancellationToken;

struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Every read and write of these tests: a hang fails, it does not wait.
const STEP: Duration = Duration::from_secs(10);

impl Client {
    async fn connect(addr: SocketAddr) -> (Self, String) {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (reader, writer) = stream.into_split();
        let mut client = Self {
            reader: BufReader::new(reader),
            writer,
        };
        let greeting = client.line().await;
        (client, greeting)
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(STEP, self.reader.read_line(&mut line))
            .await
            .expect("a line in time")
            .expect("read");
        line
    }

    /// Sends `command` and returns the first line of the reply.
    async fn ask(&mut self, command: &str) -> String {
        self.writer
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .expect("write");
        self.line().await
    }

    async fn login(&mut self, user: &str, password: &str) -> String {
        self.ask(&format!("USER {user}")).await;
        self.ask(&format!("PASS {password}")).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_limits_and_users_apply_to_new_connections_and_open_sessions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("mail");
    for user in ["alice", "bob", "carol"] {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(mail.join(user).join(sub)).unwrap();
        }
    }
    let users = Arc::new(LiveUsers::new(
        UsersFile::parse("alice:{PLAIN}pw-a\nbob:{PLAIN}pw-b\n").unwrap(),
    ));
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        hostname: "test".into(),
        login_failure_delay: Duration::from_millis(10),
        max_connections: 1,
        ..ServerConfig::default()
    };
    let backends = Backends {
        auth: Arc::clone(&users) as _,
        store: Arc::new(MaildirStore::new(mail)),
        grants: Arc::new(NoGrant),
        failures: Arc::new(NoFailureSink),
    };
    let server = Server::bind(config.clone(), backends).await.unwrap();
    let addr = server.local_addrs()[0];
    let live = server.live_config();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.run(shutdown.clone()));

    let (mut alice, _) = Client::connect(addr).await;
    assert!(alice.login("alice", "pw-a").await.starts_with("+OK"));
    let (_, refused) = Client::connect(addr).await;
    assert!(refused.starts_with("-ERR [SYS/TEMP]"), "{refused}");

    live.update(ServerConfig {
        max_connections: 2,
        ..config
    });
    users.replace(UsersFile::parse("bob:{PLAIN}pw-b\ncarol:{PLAIN}pw-c\n").unwrap());

    let (mut carol, greeting) = Client::connect(addr).await;
    assert!(
        greeting.starts_with("+OK"),
        "the limit is 2 now: {greeting}"
    );
    assert!(
        carol
            .login("alice", "pw-a")
            .await
            .starts_with("-ERR [AUTH]"),
        "alice is no longer a user"
    );
    assert!(carol.login("carol", "pw-c").await.starts_with("+OK"));
    // alice's session, opened before, goes on.
    assert!(alice.ask("STAT").await.starts_with("+OK 0 0"));
    assert!(alice.ask("QUIT").await.starts_with("+OK"));
    assert!(carol.ask("QUIT").await.starts_with("+OK"));
    shutdown.cancel();
    tokio::time::timeout(STEP, serving)
        .await
        .expect("the server stops")
        .unwrap();
}
