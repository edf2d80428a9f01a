//! The load generator: a minimal POP3 client, in clear or over implicit
//! TLS (RFC 8314), and a loop that drives many of them, bounded in time
//! and in count.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufStream},
    net::TcpStream,
    task::JoinSet,
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_util::either::Either;

use super::certs;

/// No single operation (a login, a session) may take longer than this.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A run stops with an error after this many failed operations.
const MAX_ERRORS: u64 = 50;

/// Where a client connects: a listener in clear, or one that speaks TLS
/// from the first octet (then with this connector).
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<TlsConnector>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }
}

type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Enough of a POP3 client to drive a server hard; works with smtp-gate
/// and Dovecot alike.
pub struct Client {
    stream: BufStream<Stream>,
    line: String,
    timestamp: String,
    /// Octets of multi-line replies received.
    pub bytes: u64,
}

impl Client {
    /// Connects, does the TLS handshake if the endpoint speaks TLS (the
    /// certificate verified against the test CA) and reads the greeting.
    pub async fn connect(endpoint: &Endpoint) -> Result<Self> {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.set_nodelay(true)?;
        let stream = match &endpoint.tls {
            None => Either::Left(tcp),
            Some(connector) => Either::Right(
                connector
                    .connect(certs::server_name(), tcp)
                    .await
                    .context("TLS handshake")?,
            ),
        };
        let mut client = Self {
            stream: BufStream::new(stream),
            line: String::new(),
            timestamp: String::new(),
            bytes: 0,
        };
        let greeting = client.status().await?;
        let start = greeting.find('<').context("no APOP timestamp")?;
        client.timestamp = greeting[start..].trim_end().to_string();
        Ok(client)
    }

    /// What the TLS handshake settled on, e.g. `TLSv1_3,
    /// TLS13_AES_256_GCM_SHA384, X25519`; `None` in clear.
    pub fn tls_parameters(&self) -> Option<String> {
        let Either::Right(tls) = self.stream.get_ref() else {
            return None;
        };
        let session = tls.get_ref().1;
        let name = |x: Option<String>| x.unwrap_or_else(|| "?".into());
        Some(format!(
            "{}, {}, {}",
            name(session.protocol_version().map(|v| format!("{v:?}"))),
            name(
                session
                    .negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite()))
            ),
            name(
                session
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
            ),
        ))
    }

    /// Reads one status line; fails on -ERR.
    async fn status(&mut self) -> Result<String> {
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        if !self.line.starts_with("+OK") {
            bail!("server said {:?}", self.line);
        }
        Ok(self.line.clone())
    }

    pub async fn command(&mut self, line: &str) -> Result<String> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\r\n").await?;
        self.stream.flush().await?;
        self.status().await
    }

    /// A multi-line command: the status, then lines up to the dot.
    pub async fn multi(&mut self, line: &str) -> Result<()> {
        self.command(line).await?;
        loop {
            self.line.clear();
            let n = self.stream.read_line(&mut self.line).await?;
            if n == 0 {
                bail!("connection closed inside a multi-line reply");
            }
            self.bytes += n as u64;
            if self.line == ".\r\n" {
                return Ok(());
            }
        }
    }

    /// Logs in as `user<n>` (secret `secret<n>`); returns the time from
    /// sending PASS (or APOP) to reading +OK.
    pub async fn login(&mut self, user: usize, apop: bool) -> Result<Duration> {
        let secret = format!("secret{user}");
        if apop {
            let digest = Md5::digest(format!("{}{secret}", self.timestamp).as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            let started = Instant::now();
            self.command(&format!("APOP user{user} {hex}")).await?;
            Ok(started.elapsed())
        } else {
            self.command(&format!("USER user{user}")).await?;
            let started = Instant::now();
            self.command(&format!("PASS {secret}")).await?;
            Ok(started.elapsed())
        }
    }
}

/// What one load run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadResult {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Runs `clients` loops of `work` (client number -> octets received) for
/// `span`. Every operation is bounded by [`OP_TIMEOUT`], every loop by the
/// deadline and a count; failures are counted, too many stop the run.
pub async fn load<F, Fut>(clients: usize, span: Duration, work: F) -> Result<LoadResult>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64>> + Send,
{
    let started = Instant::now();
    let deadline = started + span;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ops, mut bytes, mut errors) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline && ops < 10_000_000 {
                match tokio::time::timeout(OP_TIMEOUT, work(c)).await {
                    Ok(Ok(b)) => {
                        bytes += b;
                        ops += 1;
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        if errors > MAX_ERRORS {
                            return Err(e.context(format!("{errors} failed operations")));
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => bail!("an operation took longer than {OP_TIMEOUT:?}"),
                }
            }
            anyhow::Ok((ops, bytes, errors))
        }));
    }
    let mut result = LoadResult::default();
    for task in tasks {
        let (o, b, e) = task.await??;
        result.ops += o;
        result.bytes += b;
        result.errors += e;
    }
    result.elapsed = started.elapsed();
    Ok(result)
}

/// Runs `op(i)` for every `i < count`, at most `concurrency` at a time,
/// each bounded by [`OP_TIMEOUT`]; the first failure stops the rest.
/// Results come in completion order.
pub async fn for_each<T, F, Fut>(count: usize, concurrency: usize, op: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut running = JoinSet::new();
    let mut out = Vec::with_capacity(count);
    let mut next = 0;
    while next < count || !running.is_empty() {
        while next < count && running.len() < concurrency {
            let (i, work) = (next, op(next));
            running.spawn(async move {
                match tokio::time::timeout(OP_TIMEOUT, work).await {
                    Ok(result) => result.with_context(|| format!("item {i}")),
                    Err(_) => bail!("item {i} took longer than {OP_TIMEOUT:?}"),
                }
            });
            next += 1;
        }
        if let Some(done) = running.join_next().await {
            // Dropping the set on an error aborts the others.
            out.push(done??);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pop3::{
        auth::users_file::UsersFile,
        config::ServerConfig,
        maildrop::maildir::MaildirStore,
        server::{Backends, Server},
        NoFailureSink, NoGrant,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::pop3::{certs, fixture::Fixture};

    /// The load generator logs in over implicit TLS with the run's CA, and
    /// a certificate of any other CA stops it at the handshake: it
    /// verifies, as the benchmark's clients must.
    #[tokio::test]
    async fn logs_in_over_tls_and_refuses_another_ca() {
        let dir = std::env::temp_dir().join(format!("gate-bench-client-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fixture = Fixture::create(&dir).unwrap();
        let pki = certs::create(&dir.join("tls")).unwrap();
        let other = certs::create(&dir.join("other")).unwrap();
        let config = ServerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            listen_tls: Some(vec!["127.0.0.1:0".parse().unwrap()]),
            tls_cert: Some(pki.cert.clone()),
            tls_key: Some(pki.key.clone()),
            hostname: "bench.test".into(),
            ..ServerConfig::default()
        };
        let backends = Backends {
            auth: Arc::new(UsersFile::load(&fixture.users_file).unwrap()),
            store: Arc::new(MaildirStore::new(fixture.mail_root())),
            grants: Arc::new(NoGrant),
            failures: Arc::new(NoFailureSink),
        };
        let server = Server::bind(config, backends).await.unwrap();
        let addr = server.tls_local_addrs()[0];
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.run(shutdown.clone()));

        let trusting = Endpoint {
            addr,
            tls: Some(certs::connector(&pki).unwrap()),
        };
        let mut client = tokio::time::timeout(OP_TIMEOUT, Client::connect(&trusting))
            .await
            .unwrap()
            .unwrap();
        let parameters = client.tls_parameters().unwrap();
        assert!(parameters.starts_with("TLSv1_3, "), "{parameters}");
        client.login(0, false).await.unwrap();
        client.multi("RETR 1").await.unwrap();
        assert!(client.bytes > MESSAGE_SIZE_AT_LEAST);
        client.command("QUIT").await.unwrap();

        let doubting = Endpoint {
            addr,
            tls: Some(certs::connector(&other).unwrap()),
        };
        let refused = tokio::time::timeout(OP_TIMEOUT, Client::connect(&doubting))
            .await
            .unwrap();
        let error = format!("{:#}", refused.err().expect("a certificate of another CA"));
        // Both CAs have testkit's name: rustls finds the issuer by name and
        // the signature does not verify.
        assert!(error.contains("invalid peer certificate"), "{error}");

        shutdown.cancel();
        serving.await.unwrap();
        drop(fixture);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The heavy users' messages are 4096 octets.
    const MESSAGE_SIZE_AT_LEAST: u64 = 4000;
}
