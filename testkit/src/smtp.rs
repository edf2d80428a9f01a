//! The SMTP side of a lab: a listener in the server namespace that sends a
//! banner and answers every line, and connections to it from a client
//! namespace that tell a dropped SYN from a refused or accepted one, and
//! say how many SYNs they sent.
//!
//! A connect that did not complete says nothing by itself about why: a
//! dropped SYN and a slow handshake look the same to the client. Whether
//! the gate denied an attempt is judged by its counters (see
//! [`crate::denial`]); the timeouts here only say how long to wait for a
//! handshake before looking.

use std::{
    fmt,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    mem::size_of,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    ops::RangeInclusive,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::netns::{enter_netns, in_netns};

/// The greeting line of the lab's SMTP listener (sent with CRLF;
/// [`ConnectResult::Connected`] carries it without).
pub const BANNER: &str = "220 lab ESMTP";
/// The port the lab's SMTP listener serves by default.
pub const SMTP_PORT: u16 = 25;
/// How long an attempt that the gate should deny waits for a handshake
/// before the gate's counters are read: shorter than the first SYN
/// retransmission ([`FIRST_SYN_RETRANSMISSION`]), so such an attempt
/// usually sends one SYN. It decides nothing: a handshake that did not
/// complete in this time counts as denied only if the gate counted the
/// SYN as denied, so a slow pass fails as a pass.
pub const DENY_TIMEOUT: Duration = Duration::from_millis(500);
/// Timeout of connections that are expected to succeed: long enough for
/// any machine that is not hung.
pub const PASS_TIMEOUT: Duration = Duration::from_secs(10);
/// Linux retransmits an unanswered SYN after its initial RTO of one second
/// (TCP_TIMEOUT_INIT), never earlier.
pub const FIRST_SYN_RETRANSMISSION: Duration = Duration::from_secs(1);

/// How long a served connection may stay open at most.
const MAX_SESSION: Duration = Duration::from_secs(600);
/// Read timeout of the client side of a [`Session`].
const SESSION_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    /// The handshake completed and the server sent this banner line (CRLF
    /// removed).
    Connected(String),
    /// The attempt was answered with a RST ("connection refused").
    Refused,
    /// No answer within the timeout (a dropped SYN).
    TimedOut,
    /// Anything else (unreachable network, connected but no banner, …).
    Other(String),
}

impl ConnectResult {
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected(_))
    }
}

impl fmt::Display for ConnectResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connected(banner) => write!(f, "connected, banner {banner:?}"),
            Self::Refused => f.write_str("connection refused"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Other(what) => write!(f, "failed: {what}"),
        }
    }
}

fn classify_error(err: &io::Error) -> ConnectResult {
    match err.kind() {
        ErrorKind::ConnectionRefused => ConnectResult::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => ConnectResult::TimedOut,
        kind => ConnectResult::Other(format!("{err} ({kind:?})")),
    }
}

/// An open connection to a lab listener, to check later that it still
/// carries data (e.g. after the grant that let it in has expired).
pub struct Session {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The banner the server sent, without CRLF.
    pub banner: String,
}

impl Session {
    fn start(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(SESSION_READ_TIMEOUT))?;
        stream.set_write_timeout(Some(SESSION_READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let banner = read_line(&mut reader)?;
        Ok(Self {
            stream,
            reader,
            banner,
        })
    }

    /// Sends `line` (CRLF appended) and returns the reply line (CRLF
    /// removed). The lab's SMTP listener answers `250 OK <line>`, and
    /// `221 bye` to `QUIT`.
    pub fn exchange(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        read_line(&mut self.reader)
    }

    /// Reads one more line from the server (CRLF removed), e.g. the rest of
    /// a multi-line reply or what the server says before it closes.
    pub fn read_line(&mut self) -> io::Result<String> {
        read_line(&mut self.reader)
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }
}

fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// How many SYNs a client sent for one connection attempt: the SYN and
/// its retransmissions as the socket counted them (TCP_INFO) just before
/// it closed. One more may have left between that reading and the close,
/// but only if the attempt lasted past the first retransmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Syns(RangeInclusive<u64>);

impl Syns {
    /// `counted` SYNs (see [`syns_sent`]), read from a socket in SYN_SENT
    /// that was closed `lasted` after its connect began.
    pub fn counted(counted: u64, lasted: Duration) -> Self {
        let more = u64::from(lasted >= FIRST_SYN_RETRANSMISSION);
        Self(counted..=counted + more)
    }

    /// Exactly `n` SYNs (an attempt that never sent any has 0).
    pub fn exactly(n: u64) -> Self {
        Self(n..=n)
    }

    /// From `least` to `most` SYNs, as a client outside this crate
    /// counted them.
    pub fn between(least: u64, most: u64) -> Self {
        Self(least..=most)
    }

    pub fn at_least(&self) -> u64 {
        *self.0.start()
    }

    pub fn at_most(&self) -> u64 {
        *self.0.end()
    }

    /// True if `count` (of something that moves once per SYN) fits.
    pub fn admits(&self, count: u64) -> bool {
        self.0.contains(&count)
    }

    /// The SYNs of two attempts together.
    pub fn plus(&self, other: &Syns) -> Syns {
        Syns(self.at_least() + other.at_least()..=self.at_most() + other.at_most())
    }
}

impl fmt::Display for Syns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at_least() == self.at_most() {
            write!(f, "{} SYN(s)", self.at_least())
        } else {
            write!(f, "{} to {} SYNs", self.at_least(), self.at_most())
        }
    }
}

/// A connection attempt: how it ended and how many SYNs it took.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub result: ConnectResult,
    pub syns: Syns,
}

impl Attempt {
    /// The attempt that opened `session` (or failed so).
    pub fn of(session: &Result<Session, ConnectResult>, syns: Syns) -> Self {
        let result = match session {
            Ok(session) => ConnectResult::Connected(session.banner.clone()),
            Err(result) => result.clone(),
        };
        Self { result, syns }
    }

    /// Asserts that it connected and read the lab's banner; returns the
    /// SYNs it took.
    #[track_caller]
    pub fn expect_connected(self, what: &str) -> Syns {
        assert_connected(self.result, what);
        self.syns
    }
}

/// SYNs a TCP socket that connected, or tried to, has sent so far: one,
/// and its retransmissions.
pub fn syns_sent(socket: &impl AsRawFd) -> io::Result<u64> {
    // SAFETY: tcp_info is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` octets into `info` and says
    // how many it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(1 + u64::from(info.tcpi_total_retrans))
}

/// Connects within `timeout` from the current namespace; returns the
/// connected stream or how the attempt ended, and the SYNs it sent.
fn dial(target: SocketAddr, timeout: Duration) -> (Result<TcpStream, ConnectResult>, Syns) {
    let socket = match Socket::new(Domain::for_address(target), Type::STREAM, None) {
        Ok(socket) => socket,
        Err(e) => {
            let failed = ConnectResult::Other(format!("socket: {e}"));
            return (Err(failed), Syns::exactly(0));
        }
    };
    let started = Instant::now();
    let outcome = socket.connect_timeout(&SockAddr::from(target), timeout);
    let counted = match syns_sent(&socket) {
        Ok(n) => n,
        Err(e) => {
            let failed = ConnectResult::Other(format!("TCP_INFO: {e}"));
            return (Err(failed), Syns::exactly(0));
        }
    };
    match outcome {
        // Established: no SYN leaves any more.
        Ok(()) => (Ok(socket.into()), Syns::exactly(counted)),
        Err(e) => {
            // Closed before the time is taken: only an attempt that lived
            // past the first retransmission can have sent one after the
            // reading.
            drop(socket);
            (
                Err(classify_error(&e)),
                Syns::counted(counted, started.elapsed()),
            )
        }
    }
}

/// Connects from namespace `from_ns` to `addr:port` and reads the banner.
/// On success the connection stays open in the returned [`Session`]; on
/// failure the error says how the attempt ended. Also says how many SYNs
/// it took.
pub fn try_session(
    from_ns: &str,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> (Result<Session, ConnectResult>, Syns) {
    let target = SocketAddr::new(addr, port);
    in_netns(from_ns, move || {
        let (stream, syns) = dial(target, timeout);
        let session = stream.and_then(|stream| {
            Session::start(stream)
                .map_err(|e| ConnectResult::Other(format!("connected but no banner: {e}")))
        });
        (session, syns)
    })
}

/// [`try_session`] without the count of SYNs.
pub fn open_session(
    from_ns: &str,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<Session, ConnectResult> {
    try_session(from_ns, addr, port, timeout).0
}

/// Connects from namespace `from_ns` to `addr:port` within `timeout`,
/// reads the banner and closes the connection; says how it went and how
/// many SYNs it took.
pub fn attempt(from_ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> Attempt {
    let (session, syns) = try_session(from_ns, addr, port, timeout);
    Attempt::of(&session, syns)
}

/// Connects from namespace `from_ns` to `addr:port` within `timeout`,
/// reads the banner and closes the connection.
pub fn connect(from_ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> ConnectResult {
    attempt(from_ns, addr, port, timeout).result
}

/// Serves one connection: banner, then a reply per line, until the peer
/// closes, says QUIT, the lab stops or MAX_SESSION passes.
fn serve_connection(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut stream = stream;
    if stream
        .write_all(format!("{BANNER}\r\n").as_bytes())
        .is_err()
    {
        return;
    }
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut chunk = [0u8; 1024];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_SESSION {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let raw: Vec<u8> = pending.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&raw);
                    let text = text.trim_end_matches(['\r', '\n']);
                    if text.eq_ignore_ascii_case("QUIT") {
                        let _ = stream.write_all(b"221 bye\r\n");
                        return;
                    }
                    if stream
                        .write_all(format!("250 OK {text}\r\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                }
                if pending.len() > 4096 {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Starts a dual-stack listener on `[::]:port` in `ns`, accepting until
/// `stop` is set. Returns once the socket is listening.
pub(crate) fn spawn_smtp_server(
    ns: &str,
    port: u16,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let ns_name = ns.to_string();
    let handle = thread::Builder::new()
        .name(format!("lab-smtp-{port}"))
        .spawn(move || {
            if let Err(e) = enter_netns(&ns_name) {
                let _ = ready_tx.send(Err(e.to_string()));
                return;
            }
            // Dual stack: net.ipv6.bindv6only is 0 in a new namespace.
            let listener = match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind [::]:{port} in {ns_name}: {e}")));
                    return;
                }
            };
            if let Err(e) = listener.set_nonblocking(true) {
                let _ = ready_tx.send(Err(format!("set_nonblocking: {e}")));
                return;
            }
            let _ = ready_tx.send(Ok(()));
            let mut handlers: Vec<JoinHandle<()>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _peer)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let stop = Arc::clone(&stop);
                        match thread::Builder::new()
                            .name(format!("lab-smtp-{port}-conn"))
                            .spawn(move || serve_connection(stream, &stop))
                        {
                            Ok(h) => handlers.push(h),
                            Err(e) => eprintln!("lab: cannot spawn a connection thread: {e}"),
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
                let (done, running): (Vec<_>, Vec<_>) =
                    handlers.into_iter().partition(|h| h.is_finished());
                for h in done {
                    let _ = h.join();
                }
                handlers = running;
            }
            for h in handlers {
                let _ = h.join();
            }
        })
        .expect("cannot spawn the lab's SMTP listener thread");
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => handle,
        Ok(Err(e)) => panic!("the lab's SMTP listener did not start: {e}"),
        Err(e) => panic!("the lab's SMTP listener did not report: {e}"),
    }
}

/// Asserts that a connect got through and read the lab's SMTP banner.
#[track_caller]
pub fn assert_connected(result: ConnectResult, what: &str) {
    match result {
        ConnectResult::Connected(banner) => {
            assert_eq!(banner, BANNER, "{what}: connected but got another banner")
        }
        other => panic!("{what}: expected to connect and read the banner, got: {other}"),
    }
}
