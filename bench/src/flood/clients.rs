//! The real SMTP clients of the flood suite, each on a thread of its own in
//! the client namespace: the legitimate client (connect, banner, QUIT, one
//! after another, latency of connect + banner) and the rejected sender (a
//! full attempt from an address the MTA does not list: EHLO, MAIL FROM,
//! RCPT TO rejected, QUIT).

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::sys;
use crate::report;

/// A connection from `src` (bound first) to `dst` within `timeout`.
pub fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours; the stream closes it on every path below.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sockaddr(SocketAddrV4::new(src, 0));
    // SAFETY: a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(dst);
    // SAFETY: as above.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    // A multi-line reply ends with "NNN " (space after the code).
    let mut last = String::new();
    for _ in 0..64 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed",
            ));
        }
        let done = line.as_bytes().get(3) != Some(&b'-');
        last = line.trim_end().to_string();
        if done {
            return Ok(last);
        }
    }
    Ok(last)
}

fn failure_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "refused".into(),
        io::ErrorKind::ConnectionReset => "reset".into(),
        io::ErrorKind::UnexpectedEof => "closed".into(),
        _ => format!("{e}"),
    }
}

pub struct LegitConfig {
    pub ns: String,
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub duration: Duration,
    pub max_attempts: usize,
    /// Time from one attempt's start to the next's.
    pub interval: Duration,
    /// Connect + banner must complete within this.
    pub timeout: Duration,
    pub cpu: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LegitResult {
    pub attempts: usize,
    pub ok: usize,
    /// Connect + banner of the successful attempts, in ms.
    pub latencies_ms: Vec<f64>,
    pub failures: BTreeMap<String, usize>,
}

impl LegitResult {
    pub fn success_pct(&self) -> f64 {
        if self.attempts == 0 {
            return f64::NAN;
        }
        100.0 * self.ok as f64 / self.attempts as f64
    }

    /// The `percent` percentile of the latencies, in ms (see
    /// [`report::percentile`]).
    pub fn percentile(&self, percent: f64) -> f64 {
        report::percentile(&self.latencies_ms, percent)
    }
}

fn client_thread_setup(ns: &str, cpu: usize) -> io::Result<()> {
    testkit::netns::enter_netns(ns)?;
    sys::set_affinity(0, cpu)?;
    // The client is another machine in real life: the generator's busy
    // loop on the same CPU must not delay it. Best effort.
    let _ = sys::set_fifo(0, 10);
    Ok(())
}

/// One attempt: connect, banner (timed), QUIT.
fn legit_attempt(cfg: &LegitConfig) -> Result<f64, String> {
    let started = Instant::now();
    let stream = connect_from(cfg.src, cfg.dst, cfg.timeout).map_err(|e| failure_kind(&e))?;
    let left = cfg
        .timeout
        .checked_sub(started.elapsed())
        .unwrap_or(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| failure_kind(&e))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| failure_kind(&e))?);
    let banner = read_reply(&mut reader).map_err(|e| format!("banner: {}", failure_kind(&e)))?;
    let latency = started.elapsed().as_secs_f64() * 1e3;
    if !banner.starts_with("220") {
        return Err(format!("banner {banner:?}"));
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut writer = stream;
    let _ = writer.write_all(b"QUIT\r\n");
    let _ = read_reply(&mut reader);
    Ok(latency)
}

/// Runs the legitimate client on the calling thread (moved into the
/// client namespace). Bounded by `max_attempts`, the duration and `stop`.
pub fn run_legit(cfg: &LegitConfig, stop: &AtomicBool) -> io::Result<LegitResult> {
    client_thread_setup(&cfg.ns, cfg.cpu)?;
    let mut result = LegitResult::default();
    let started = Instant::now();
    let mut next = started;
    while result.attempts < cfg.max_attempts
        && started.elapsed() < cfg.duration
        && !stop.load(Ordering::Relaxed)
    {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next = Instant::now() + cfg.interval;
        result.attempts += 1;
        match legit_attempt(cfg) {
            Ok(ms) => {
                result.ok += 1;
                result.latencies_ms.push(ms);
            }
            Err(kind) => *result.failures.entry(kind).or_insert(0) += 1,
        }
    }
    Ok(result)
}

pub struct RejectConfig {
    pub ns: String,
    pub src: Ipv4Addr,
    pub dst: SocketAddrV4,
    pub attempts: usize,
    pub max_duration: Duration,
    pub cpu: usize,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RejectResult {
    pub attempts: usize,
    /// Attempts whose RCPT TO got Postfix's "Client host rejected".
    pub rejected: usize,
    pub seconds: f64,
    /// What the other attempts got.
    pub other: BTreeMap<String, usize>,
}

fn reject_attempt(cfg: &RejectConfig) -> Result<String, String> {
    let stream =
        connect_from(cfg.src, cfg.dst, Duration::from_secs(3)).map_err(|e| failure_kind(&e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| failure_kind(&e))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| failure_kind(&e))?);
    let mut writer = stream;
    let mut exchange = |line: &str| -> Result<String, String> {
        if !line.is_empty() {
            writer
                .write_all(format!("{line}\r\n").as_bytes())
                .map_err(|e| failure_kind(&e))?;
        }
        read_reply(&mut reader).map_err(|e| failure_kind(&e))
    };
    exchange("")?;
    exchange("EHLO client.flood.invalid")?;
    exchange("MAIL FROM:<sender@client.flood.invalid>")?;
    let rcpt = exchange("RCPT TO:<someone@example.invalid>")?;
    let _ = exchange("QUIT");
    Ok(rcpt)
}

/// Runs the rejected sender on the calling thread (moved into the client
/// namespace): `attempts` full attempts, one after another.
pub fn run_rejected(cfg: &RejectConfig, stop: &AtomicBool) -> io::Result<RejectResult> {
    client_thread_setup(&cfg.ns, cfg.cpu)?;
    let mut result = RejectResult::default();
    let started = Instant::now();
    while result.attempts < cfg.attempts
        && started.elapsed() < cfg.max_duration
        && !stop.load(Ordering::Relaxed)
    {
        result.attempts += 1;
        match reject_attempt(cfg) {
            Ok(reply) if reply.starts_with("554") && reply.contains("Client host rejected") => {
                result.rejected += 1
            }
            Ok(reply) => *result.other.entry(reply).or_insert(0) += 1,
            Err(kind) => *result.other.entry(kind).or_insert(0) += 1,
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// One rejected-sender attempt from `src`, run in namespace `ns`: the
/// reply to RCPT TO (to check which restrictions the MTA applies).
pub fn probe_rcpt(ns: &str, src: Ipv4Addr, dst: SocketAddrV4) -> Result<String, String> {
    let cfg = RejectConfig {
        ns: ns.to_string(),
        src,
        dst,
        attempts: 1,
        max_duration: Duration::from_secs(10),
        cpu: 0,
    };
    testkit::netns::in_netns(ns, || reject_attempt(&cfg))
}
