//! The load generator: a minimal POP3 client and a loop that drives many of
//! them, bounded in time and in count.

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

/// No single operation (a login, a session) may take longer than this.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A run stops with an error after this many failed operations.
const MAX_ERRORS: u64 = 50;

/// Enough of a POP3 client to drive a server hard; works with smtp-gate
/// and Dovecot alike.
pub struct Client {
    stream: BufStream<TcpStream>,
    line: String,
    timestamp: String,
    /// Octets of multi-line replies received.
    pub bytes: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
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
