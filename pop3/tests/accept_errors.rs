//! The accept loop out of file descriptors: a real EMFILE, made by
//! lowering the soft RLIMIT_NOFILE of this process. That is why this test
//! has a binary of its own: no other test may run under that limit.

use std::{
    fs,
    io::Read,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use log::{Log, Metadata, Record};
use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    NoFailureSink, NoGrant,
};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use socket2::{Domain, Socket, Type};
use tokio_util::sync::CancellationToken;

/// Every log line of the server, kept for the test to read.
struct Captured(Mutex<Vec<String>>);

impl Log for Captured {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }

    fn flush(&self) {}
}

static LOG: Captured = Captured(Mutex::new(Vec::new()));

fn accept_lines() -> Vec<String> {
    LOG.0
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("accept"))
        .cloned()
        .collect()
}

/// The number the next file descriptor would get: with the soft limit
/// set to it, no file can be opened.
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = fs::File::open("/dev/null").expect("opening /dev/null");
    probe.as_raw_fd() as u64
}

/// Issue 10, defect 5: out of file descriptors, every failed accept was
/// logged ("accept failed: Too many open files" ten times a second). Now
/// a burst of failures is logged when it begins and, with its count,
/// when it ends; the connections that waited in the backlog are greeted
/// once files can be opened again. Fails on the old server: one line per
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_are_logged_once_per_burst() {
    log::set_logger(&LOG).expect("the only logger of this binary");
    log::set_max_level(log::LevelFilter::Trace);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        hostname: "test".into(),
        ..ServerConfig::default()
    };
    let backends = Backends {
        auth: Arc::new(UsersFile::parse("alice:{PLAIN}pw\n").expect("users")),
        store: Arc::new(MaildirStore::new(dir.path().to_path_buf())),
        grants: Arc::new(NoGrant),
        failures: Arc::new(NoFailureSink),
    };
    let server = Server::bind(config, backends).await.expect("bind");
    let addr: SocketAddr = server.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(server.run(shutdown.clone()));

    // The clients' sockets exist before the limit drops; connecting them
    // needs no new descriptor, the server's accept does.
    let clients: Vec<Socket> = (0..4)
        .map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket"))
        .collect();
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(lowest_free_fd()),
            maximum: limit.maximum,
        },
    )
    .expect("lowering the soft RLIMIT_NOFILE");
    for client in &clients {
        client.connect(&addr.into()).expect("connect");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while accept_lines().is_empty() {
        assert!(
            Instant::now() < deadline,
            "accept never failed under the lowered limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the burst go on: the server retries after 100, 200, 400, 800 ms
    // and then every second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    setrlimit(Resource::Nofile, limit).expect("restoring RLIMIT_NOFILE");

    for (i, client) in clients.into_iter().enumerate() {
        let mut stream = std::net::TcpStream::from(client);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut greeting = [0u8; 3];
        tokio::task::spawn_blocking(move || stream.read_exact(&mut greeting).map(|_| greeting))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i} got no greeting: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while accept_lines().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = accept_lines();
    assert_eq!(
        lines.len(),
        2,
        "one line when the burst begins, one when it ends: {lines:#?}"
    );
    assert!(
        lines[0].starts_with("WARN") && lines[0].contains("Too many open files"),
        "{lines:#?}"
    );
    let failures: u64 = lines[1]
        .split_once("after ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", lines[1]));
    assert!(failures >= 3 && lines[1].contains("failures"), "{lines:#?}");
    shutdown.cancel();
    done.await.unwrap();
}
