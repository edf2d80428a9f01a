//! Network-namespace labs: a mail server and its clients in throwaway
//! network namespaces, joined by veth pairs, with a private bpffs for the
//! gate's pins.
//!
//! ```text
//!   client ns  (10.231.1.2, fd00:231:1::2)  ──veth──┐
//!                                                   ├── server ns  (gate on each server-side veth,
//!   exempt ns  (10.231.2.2, fd00:231:2::2)  ──veth──┘               SMTP listener on [::]:25)
//! ```
//!
//! Every client has its own veth pair and its own /24 (and /64): link `k`
//! (1 for the client, 2 for the optional exempt client) uses
//! `10.231.k.0/24` and `fd00:231:k::/64`, the server being `.1`/`::1` and
//! the client `.2`/`::2`. No namespace has a default route, so nothing in
//! a lab can reach anything outside it.
//!
//! The gate is the real `smtp-gate` binary, run through `ip netns exec` in
//! the server namespace for `attach`, and from the root namespace for the
//! map commands (`grant`, `list`, `stats`, …); all of them get the lab's
//! `--pin-dir`, a directory on a bpffs that the lab mounts privately under
//! `/run/smtp-gate-tests/` (the `/sys/fs/bpf` an `ip netns exec` command
//! sees is a throwaway).
//!
//! Names carry the process id and a per-process counter, so labs of tests
//! running in parallel, and of other processes, never collide. Dropping a
//! [`Lab`] detaches the gate, unmounts the bpffs and deletes the
//! namespaces, also when a test panics. Leftovers of killed processes are
//! swept by the next lab that starts.
//!
//! Only root can build a lab; [`require_prerequisites`] panics with a clear
//! message when something is missing, it never skips.

use std::{
    ffi::CString,
    fmt, fs,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
        mpsc, Arc, Mutex, Once,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use gate_common::program_names;

/// The greeting line of the lab's SMTP listener (sent with CRLF;
/// [`ConnectResult::Connected`] carries it without).
pub const BANNER: &str = "220 lab ESMTP";
/// The port the lab's SMTP listener serves by default.
pub const SMTP_PORT: u16 = 25;
/// A connect timeout that is long enough for any lab connection that is let
/// through, and short enough to call a dropped SYN "timed out": the first
/// SYN retransmission comes after 1 s, so the listener would have answered
/// long before.
pub const DENY_TIMEOUT: Duration = Duration::from_secs(1);
/// Timeout used for connections that are expected to succeed.
pub const PASS_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the labs mount their bpffs instances (one directory per lab).
pub const RUN_ROOT: &str = "/run/smtp-gate-tests";
/// Prefix of lab namespace names: `sg-<pid>-<n>-<role>`.
const NS_PREFIX: &str = "sg-";
/// How long a served connection may stay open at most.
const MAX_SESSION: Duration = Duration::from_secs(600);
/// Read timeout of the client side of a [`Session`].
const SESSION_READ_TIMEOUT: Duration = Duration::from_secs(3);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
/// `ip netns add/del` mount and unmount under /run/netns; one at a time in
/// this process avoids racing iproute2's first-time setup of that mount.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

// ---------------------------------------------------------------------------
// Prerequisites and the binary
// ---------------------------------------------------------------------------

/// Panics with a clear message unless the process is root, iproute2's `ip`
/// runs, the kernel has bpffs and the `smtp-gate` binary has been built.
pub fn require_prerequisites() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the smtp-gate lab needs root (network namespaces, bpffs, XDP): \
             run as root, e.g. `sudo -E cargo test -p gate-tests`"
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`ip -V` failed: {}", describe(&out)),
        Err(e) => panic!("iproute2's `ip` is needed for the lab but cannot be run: {e}"),
    }
    let filesystems = fs::read_to_string("/proc/filesystems")
        .unwrap_or_else(|e| panic!("cannot read /proc/filesystems: {e}"));
    if !filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("bpf"))
    {
        panic!("the kernel has no bpf filesystem (bpffs): the lab cannot pin the gate");
    }
    smtp_gate_bin();
}

/// Path of the `smtp-gate` binary: `$SMTP_GATE_BIN` if set, else
/// `target/<profile>/smtp-gate` next to the running executable (tests run
/// from `target/<profile>/deps/`, binaries from `target/<profile>/`).
/// Panics if it is not there.
pub fn smtp_gate_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SMTP_GATE_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!("SMTP_GATE_BIN={} is not a file", path.display());
        }
        return path;
    }
    let exe = std::env::current_exe().expect("cannot find the running executable");
    let mut dir = exe
        .parent()
        .expect("the running executable has no directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("smtp-gate");
    if !bin.is_file() {
        panic!(
            "the smtp-gate binary is missing at {}: build it first: cargo build \
             (or cargo build --release for release tests)",
            bin.display()
        );
    }
    bin
}

/// Runs `smtp-gate ARGS` in the root namespace. Remember `--pin-dir`: without
/// it the command works on the system's default pin directory.
pub fn smtp_gate(args: &[&str]) -> Output {
    let bin = smtp_gate_bin();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// Runs `smtp-gate ARGS` inside namespace `ns` (`ip netns exec`), as
/// `attach` needs to see the namespace's interfaces.
pub fn smtp_gate_in(ns: &str, args: &[&str]) -> Output {
    let bin = smtp_gate_bin();
    netns_command(ns, &bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip netns exec {ns} {}: {e}", bin.display()))
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec`):
/// add arguments, then spawn it (a daemon) or run it to completion.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).arg(program);
    command
}

/// Exit status, stdout and stderr of a finished command, for messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    if !out.status.success() {
        panic!("`{program} {}` failed: {}", args.join(" "), describe(&out));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a teardown command; failures are reported, never panicked on.
fn run_quiet(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "lab teardown: `{program} {}` failed: {}",
                args.join(" "),
                describe(&out)
            );
            false
        }
        Err(e) => {
            eprintln!("lab teardown: cannot run {program}: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------

/// Moves the calling thread into network namespace `ns` (a name under
/// /run/netns). Irreversible for that thread: call it only on a thread of
/// your own (see [`in_netns`]). Sockets the thread creates afterwards live
/// in `ns`, wherever they are used later.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    let path = Path::new("/run/netns").join(ns);
    let file = fs::File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: a valid namespace fd; setns only affects the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("setns into {ns}: {e}")));
    }
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its
/// result; a panic in `f` is passed on. Sockets created by `f` stay in
/// `ns` after the thread is gone.
pub fn in_netns<R, F>(ns: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter_netns(ns).unwrap_or_else(|e| panic!("cannot enter network namespace: {e}"));
            f()
        });
        match handle.join() {
            Ok(value) => value,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Writes a sysctl of namespace `ns` (`key` as in `net/ipv6/conf/all/...`).
fn netns_sysctl(ns: &str, key: &str, value: &str) {
    in_netns(ns, || {
        let path = Path::new("/proc/sys").join(key);
        fs::write(&path, value)
            .unwrap_or_else(|e| panic!("cannot set {} in {ns}: {e}", path.display()));
    });
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces and bpffs mounts of labs whose process is gone (a
/// test run that was killed cannot run its Drop). Only names this module
/// makes are touched.
fn sweep_stale() {
    let own = std::process::id();
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(NS_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != own && !pid_alive(pid) {
                eprintln!("lab: removing stale namespace {name} (process {pid} is gone)");
                let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                run_quiet("ip", &["netns", "del", &name]);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(RUN_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != own && !pid_alive(pid) {
                eprintln!("lab: removing stale pin mount {}", entry.path().display());
                unmount_all(&entry.path());
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|m| m == wanted)
}

/// Unmounts everything mounted on `path` (a lazy unmount if busy).
fn unmount_all(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..4 {
        if !is_mount_point(path) {
            return;
        }
        // SAFETY: c_path is NUL-terminated.
        if unsafe { libc::umount2(c_path.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            eprintln!(
                "lab teardown: umount {}: {e}; detaching lazily",
                path.display()
            );
            // SAFETY: as above.
            unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn mount_bpffs(at: &Path) {
    let target = CString::new(at.as_os_str().as_bytes()).expect("path with NUL");
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        panic!(
            "cannot mount a bpffs on {}: {}",
            at.display(),
            io::Error::last_os_error()
        );
    }
}

/// A bpffs whose mounts and unmounts in the root mount namespace reach the
/// copies that `ip netns exec` made of it, as systemd's shared /sys/fs/bpf
/// reaches a sandboxed service: a tmpfs made a shared mount, with the bpffs
/// mounted inside it. The lab's own bpffs does not do that (the root
/// mount is private on these machines). Unmounted and removed on drop.
pub struct SharedBpffs {
    holder: PathBuf,
}

impl SharedBpffs {
    /// Under [`RUN_ROOT`], named after `lab` (swept with it if the test
    /// process is killed).
    pub fn new(lab: &Lab) -> Self {
        let holder = Path::new(RUN_ROOT).join(format!("{}-shared", lab.id));
        fs::create_dir_all(&holder)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", holder.display()));
        let c_holder = CString::new(holder.as_os_str().as_bytes()).expect("path with NUL");
        // SAFETY: NUL-terminated strings that outlive the calls.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c_holder.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a tmpfs on {}: {}",
            holder.display(),
            io::Error::last_os_error()
        );
        // SAFETY: as above; MS_SHARED changes only the propagation type.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c_holder.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "making {} shared: {}",
            holder.display(),
            io::Error::last_os_error()
        );
        let shared = Self { holder };
        fs::create_dir(shared.mount_point()).expect("creating the bpffs mount point");
        shared.mount();
        shared
    }

    fn mount_point(&self) -> PathBuf {
        self.holder.join("bpf")
    }

    /// The pin directory to pass as `--pin-dir`.
    pub fn pin_dir(&self) -> PathBuf {
        self.mount_point().join("gate")
    }

    /// Mounts a new, empty bpffs (after [`SharedBpffs::unmount`]).
    pub fn mount(&self) {
        mount_bpffs(&self.mount_point());
    }

    /// Unmounts the bpffs here, and so in every copy of the mount.
    pub fn unmount(&self) {
        unmount_all(&self.mount_point());
    }

    /// Names in the pin directory, as this namespace sees them.
    pub fn pins(&self) -> Vec<String> {
        sorted_names(&self.pin_dir())
    }
}

impl Drop for SharedBpffs {
    fn drop(&mut self) {
        unmount_all(&self.mount_point());
        unmount_all(&self.holder);
        let _ = fs::remove_dir(&self.holder);
    }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

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

/// Connects from namespace `from_ns` to `addr:port` and reads the banner.
/// On success the connection stays open in the returned [`Session`]; on
/// failure the error says how the attempt ended.
pub fn open_session(
    from_ns: &str,
    addr: IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<Session, ConnectResult> {
    let target = SocketAddr::new(addr, port);
    in_netns(from_ns, move || {
        let stream =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| classify_error(&e))?;
        Session::start(stream)
            .map_err(|e| ConnectResult::Other(format!("connected but no banner: {e}")))
    })
}

/// Connects from namespace `from_ns` to `addr:port` within `timeout`,
/// reads the banner and closes the connection.
pub fn connect(from_ns: &str, addr: IpAddr, port: u16, timeout: Duration) -> ConnectResult {
    match open_session(from_ns, addr, port, timeout) {
        Ok(session) => ConnectResult::Connected(session.banner),
        Err(result) => result,
    }
}

// ---------------------------------------------------------------------------
// The SMTP listener
// ---------------------------------------------------------------------------

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
fn spawn_smtp_server(
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
    match ready_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => handle,
        Ok(Err(e)) => panic!("the lab's SMTP listener did not start: {e}"),
        Err(e) => panic!("the lab's SMTP listener did not report: {e}"),
    }
}

// ---------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------

/// Creates `link`'s veth pair between `server` and the client namespace,
/// with its addresses, up.
fn make_link(server: &str, link: &Link) {
    run_ok(
        "ip",
        &[
            "-n",
            server,
            "link",
            "add",
            &link.server_iface,
            "type",
            "veth",
            "peer",
            "name",
            &link.client_iface,
            "netns",
            &link.client_ns,
        ],
    );
    for (ns, iface, v4, v6) in [
        (server, &link.server_iface, link.server_v4, link.server_v6),
        (
            link.client_ns.as_str(),
            &link.client_iface,
            link.client_v4,
            link.client_v6,
        ),
    ] {
        run_ok(
            "ip",
            &["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", iface],
        );
        run_ok(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                iface,
                "nodad",
            ],
        );
        run_ok("ip", &["-n", ns, "link", "set", iface, "up"]);
    }
}

/// One client's veth pair, addresses and namespace.
#[derive(Clone, Debug)]
pub struct Link {
    /// The client's network namespace.
    pub client_ns: String,
    /// The veth end in the client namespace.
    pub client_iface: String,
    /// The veth end in the server namespace: where the gate goes.
    pub server_iface: String,
    pub client_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
    /// The link's IPv4 network, e.g. `10.231.1.0/24`.
    pub net_v4: String,
    /// The link's IPv6 network, e.g. `fd00:231:1::/64`.
    pub net_v6: String,
}

impl Link {
    fn new(id_ifaces: &str, k: u8, client_ns: String) -> Self {
        Self {
            client_ns,
            client_iface: format!("{id_ifaces}c{k}"),
            server_iface: format!("{id_ifaces}s{k}"),
            client_v4: Ipv4Addr::new(10, 231, k, 2),
            server_v4: Ipv4Addr::new(10, 231, k, 1),
            client_v6: Ipv6Addr::new(0xfd00, 0x231, k as u16, 0, 0, 0, 0, 2),
            server_v6: Ipv6Addr::new(0xfd00, 0x231, k as u16, 0, 0, 0, 0, 1),
            net_v4: format!("10.231.{k}.0/24"),
            net_v6: format!("fd00:231:{k}::/64"),
        }
    }

    /// Connects from this client to the server's IPv4 address.
    pub fn connect_v4(&self, port: u16, timeout: Duration) -> ConnectResult {
        connect(&self.client_ns, self.server_v4.into(), port, timeout)
    }

    /// Connects from this client to the server's IPv6 address.
    pub fn connect_v6(&self, port: u16, timeout: Duration) -> ConnectResult {
        connect(&self.client_ns, self.server_v6.into(), port, timeout)
    }

    /// Opens a connection to the server's IPv4 address and keeps it.
    pub fn session_v4(&self, port: u16, timeout: Duration) -> Result<Session, ConnectResult> {
        open_session(&self.client_ns, self.server_v4.into(), port, timeout)
    }

    /// Opens a connection to the server's IPv6 address and keeps it.
    pub fn session_v6(&self, port: u16, timeout: Duration) -> Result<Session, ConnectResult> {
        open_session(&self.client_ns, self.server_v6.into(), port, timeout)
    }
}

/// How to build a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Add a second client namespace (link 2, `10.231.2.0/24`) meant to be
    /// exempted by the tests.
    pub exempt_client: bool,
    /// Load the pass-everything XDP program on every client-side veth. A
    /// veth only delivers XDP_TX frames (the gate's RST in `--mode xdp
    /// --deny reset`) to a peer that runs XDP itself.
    pub xdp_pass_on_clients: bool,
    /// Ports the lab's SMTP listener serves.
    pub smtp_ports: Vec<u16>,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            exempt_client: false,
            xdp_pass_on_clients: false,
            smtp_ports: vec![SMTP_PORT],
        }
    }
}

/// A server namespace and one or two client namespaces joined by veth
/// pairs, an SMTP listener in the server namespace, and a private bpffs pin
/// directory for the gate. See the module documentation for the layout.
pub struct Lab {
    /// `<pid>-<n>`, unique per lab on this machine.
    pub id: String,
    /// The server's network namespace.
    pub server_ns: String,
    /// The client that needs grants.
    pub client: Link,
    /// The client meant to be exempted (with `LabOptions::exempt_client`).
    pub exempt: Option<Link>,
    mount_point: PathBuf,
    pin_dir: PathBuf,
    mounted: bool,
    /// Namespaces created so far, deleted on drop.
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    accepted: Arc<AtomicUsize>,
    /// Keeps the XDP_PASS programs on the client veths attached.
    xdp_pass: Vec<aya::Ebpf>,
}

impl Lab {
    /// A server and one client, the SMTP listener on port 25, no gate yet.
    pub fn new() -> Self {
        Self::with_options(LabOptions::default())
    }

    /// A lab as `options` say. Panics (after cleaning up) if anything
    /// cannot be set up.
    pub fn with_options(options: LabOptions) -> Self {
        require_prerequisites();
        SWEEP.call_once(sweep_stale);
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{pid}-{n}");
        // Interface names: "sg<pid>-<n>" + "s1"/"c1": at most 15 bytes.
        let id_ifaces = format!("sg{id}");
        assert!(
            id_ifaces.len() + 2 <= 15,
            "lab interface names would be longer than 15 bytes ({id_ifaces}..); \
             too many labs in one process"
        );
        let ns = |role: &str| format!("{NS_PREFIX}{id}-{role}");
        let client = Link::new(&id_ifaces, 1, ns("cli"));
        let exempt = options
            .exempt_client
            .then(|| Link::new(&id_ifaces, 2, ns("exm")));
        let mount_point = Path::new(RUN_ROOT).join(&id);
        let pin_dir = mount_point.join("gate");
        let server_ns = ns("srv");
        let mut lab = Lab {
            id,
            server_ns,
            client,
            exempt,
            mount_point,
            pin_dir,
            mounted: false,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            accepted: Arc::new(AtomicUsize::new(0)),
            xdp_pass: Vec::new(),
        };
        lab.set_up(&options);
        lab
    }

    fn set_up(&mut self, options: &LabOptions) {
        let server = self.server_ns.clone();
        let links = self.links().into_iter().cloned().collect::<Vec<_>>();
        let mut all_ns = vec![server.clone()];
        all_ns.extend(links.iter().map(|l| l.client_ns.clone()));
        for ns in &all_ns {
            {
                let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                run_ok("ip", &["netns", "add", ns]);
            }
            self.namespaces.push(ns.clone());
            // No duplicate address detection: addresses are usable at once.
            netns_sysctl(ns, "net/ipv6/conf/all/accept_dad", "0");
            netns_sysctl(ns, "net/ipv6/conf/default/accept_dad", "0");
            run_ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        for link in &links {
            make_link(&server, link);
        }
        for ns in &all_ns {
            let routes = run_ok("ip", &["-n", ns, "route", "show", "default"])
                + &run_ok("ip", &["-n", ns, "-6", "route", "show", "default"]);
            assert!(
                routes.trim().is_empty(),
                "namespace {ns} has a default route: {routes}"
            );
        }

        fs::create_dir_all(&self.mount_point)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.mount_point.display()));
        mount_bpffs(&self.mount_point);
        self.mounted = true;
        fs::create_dir(&self.pin_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.pin_dir.display()));

        for port in &options.smtp_ports {
            self.serve_smtp(*port);
        }
        if options.xdp_pass_on_clients {
            self.load_xdp_pass_on_clients();
        }
        if let Some(port) = options.smtp_ports.first() {
            self.wait_ready(*port);
        }
    }

    /// Waits until every client reaches the listener on `port` over IPv4
    /// and IPv6 (also fills the neighbour caches).
    fn wait_ready(&self, port: u16) {
        for link in self.links() {
            for addr in [IpAddr::from(link.server_v4), IpAddr::from(link.server_v6)] {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let result = connect(&link.client_ns, addr, port, DENY_TIMEOUT);
                    if result.is_connected() {
                        break;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "lab {}: {} cannot reach {addr}:{port} before any gate: {result}",
                            self.id, link.client_ns
                        );
                    }
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// The client links: the client, then the exempt client if any.
    pub fn links(&self) -> Vec<&Link> {
        let mut links = vec![&self.client];
        links.extend(self.exempt.as_ref());
        links
    }

    /// The exempt client; panics if the lab was built without one.
    pub fn exempt(&self) -> &Link {
        self.exempt
            .as_ref()
            .expect("this lab has no exempt client (LabOptions::exempt_client)")
    }

    /// The server-side veths, one per client: where the gate goes.
    pub fn server_ifaces(&self) -> Vec<String> {
        self.links()
            .iter()
            .map(|l| l.server_iface.clone())
            .collect()
    }

    /// The lab's pin directory (on its private bpffs).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where the lab's bpffs is mounted (the pin directory's parent).
    pub fn bpffs_mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// Unmounts the lab's bpffs in this (the root) mount namespace, as an
    /// operator's `umount` would; the directory stays. Processes started
    /// by `ip netns exec` before keep their own copy of the mount.
    pub fn unmount_bpffs(&self) {
        unmount_all(&self.mount_point);
        assert!(
            !is_mount_point(&self.mount_point),
            "{} is still mounted",
            self.mount_point.display()
        );
    }

    /// `ip -n NS ARGS`; panics unless it succeeds. Returns its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        run_ok("ip", &all)
    }

    /// Deletes `link`'s veth pair and makes it again, with the same names
    /// and addresses (as a VLAN or bond recreated by networkd would be):
    /// the kernel detaches whatever was attached to the old interfaces.
    /// Waits until the client reaches the listener again.
    pub fn recreate_link(&self, link: &Link) {
        run_ok(
            "ip",
            &["-n", &self.server_ns, "link", "del", &link.server_iface],
        );
        make_link(&self.server_ns, link);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !link.connect_v4(SMTP_PORT, DENY_TIMEOUT).is_connected()
            && !link.connect_v4(POP3_PORT, DENY_TIMEOUT).is_connected()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pin directory as a string, for command lines.
    pub fn pin_dir_str(&self) -> String {
        self.pin_dir.to_string_lossy().into_owned()
    }

    /// Connections the lab's SMTP listeners have accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Starts another SMTP listener on `port` in the server namespace.
    pub fn serve_smtp(&mut self, port: u16) {
        let handle = spawn_smtp_server(
            &self.server_ns,
            port,
            Arc::clone(&self.stop),
            Arc::clone(&self.accepted),
        );
        self.servers.push(handle);
    }

    /// Attaches the pass-everything XDP program to every client-side veth
    /// (kept until the lab drops).
    pub fn load_xdp_pass_on_clients(&mut self) {
        let links: Vec<Link> = self.links().into_iter().cloned().collect();
        for link in links {
            self.load_xdp_pass(&link.client_ns, &link.client_iface);
        }
    }

    /// Attaches the pass-everything XDP program (native mode where the
    /// driver has it) to `iface` in namespace `ns`, for as long as the lab
    /// lives: the benchmarks' baseline, a peer that accepts XDP_TX frames,
    /// or a "foreign" XDP program the gate must not replace.
    pub fn load_xdp_pass(&mut self, ns: &str, iface: &str) {
        let ebpf = in_netns(ns, || {
            let mut ebpf = smtp_gate::gate::object::load_unpinned(1024)
                .unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"));
            let program: &mut Xdp = ebpf
                .program_mut(program_names::XDP_PASS)
                .unwrap_or_else(|| panic!("no {} program", program_names::XDP_PASS))
                .try_into()
                .expect("XDP_PASS is not an XDP program");
            program
                .load()
                .unwrap_or_else(|e| panic!("loading {}: {e}", program_names::XDP_PASS));
            program
                .attach(iface, XdpMode::default())
                .unwrap_or_else(|e| panic!("attaching XDP_PASS to {iface} in {ns}: {e}"));
            ebpf
        });
        self.xdp_pass.push(ebpf);
    }

    fn with_pin_dir<'a>(&'a self, args: &[&'a str], pin: &'a str) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pin]);
        all
    }

    /// Runs `smtp-gate ARGS --pin-dir <lab pin dir>` in the root namespace.
    pub fn gate(&self, args: &[&str]) -> Output {
        let pin = self.pin_dir_str();
        smtp_gate(&self.with_pin_dir(args, &pin))
    }

    /// Like [`Lab::gate`], inside the server namespace (needed by `attach`).
    pub fn gate_in_server(&self, args: &[&str]) -> Output {
        let pin = self.pin_dir_str();
        smtp_gate_in(&self.server_ns, &self.with_pin_dir(args, &pin))
    }

    /// Runs [`Lab::gate`], panics unless it succeeds, returns its stdout.
    pub fn gate_ok(&self, args: &[&str]) -> String {
        let out = self.gate(args);
        if !out.status.success() {
            panic!("`smtp-gate {}` failed: {}", args.join(" "), describe(&out));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs [`Lab::gate`], panics unless it fails, returns its stderr.
    pub fn gate_err(&self, args: &[&str]) -> String {
        let out = self.gate(args);
        if out.status.success() {
            panic!(
                "`smtp-gate {}` succeeded but should have failed: {}",
                args.join(" "),
                describe(&out)
            );
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `smtp-gate attach --iface IF ARGS` on every server-side veth; panics
    /// unless each succeeds. Returns the commands' stdout.
    pub fn attach(&self, args: &[&str]) -> String {
        let mut stdout = String::new();
        for iface in self.server_ifaces() {
            let mut all = vec!["attach", "--iface", iface.as_str()];
            all.extend_from_slice(args);
            let out = self.gate_in_server(&all);
            if !out.status.success() {
                panic!("`smtp-gate {}` failed: {}", all.join(" "), describe(&out));
            }
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        stdout
    }

    /// `smtp-gate detach --iface IF` for every interface with a link in the
    /// pin directory; panics unless each succeeds. Returns the stdout.
    pub fn detach(&self) -> String {
        let mut stdout = String::new();
        for iface in self.attached_ifaces() {
            let out = self.gate_in_server(&["detach", "--iface", &iface]);
            if !out.status.success() {
                panic!(
                    "`smtp-gate detach --iface {iface}` failed: {}",
                    describe(&out)
                );
            }
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        stdout
    }

    /// Names of the files in the pin directory (empty if it is gone).
    pub fn pins(&self) -> Vec<String> {
        sorted_names(&self.pin_dir)
    }

    /// Interfaces with a pinned link (`link_<mode>_<iface>`) in the pin
    /// directory.
    pub fn attached_ifaces(&self) -> Vec<String> {
        self.pins()
            .iter()
            .filter_map(|name| name.strip_prefix("link_"))
            .filter_map(|rest| rest.split_once('_'))
            .map(|(_mode, iface)| iface.to_string())
            .collect()
    }

    /// `ip -d link show dev IFACE` in the server namespace.
    pub fn server_link_show(&self, iface: &str) -> String {
        run_ok(
            "ip",
            &["-n", &self.server_ns, "-d", "link", "show", "dev", iface],
        )
    }

    /// Ids of the XDP programs attached to a server-side interface, as
    /// `ip link` reports them (`prog/xdp id N`, `prog/xdpdrv id N`, …).
    pub fn xdp_prog_ids(&self, iface: &str) -> Vec<u32> {
        let text = self.server_link_show(iface);
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(3)
            .filter(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
            .filter_map(|w| w[2].parse().ok())
            .collect()
    }

    /// Id and name of each program on the tcx ingress of a server-side
    /// interface (where `--mode tc` attaches), in run order.
    pub fn tc_ingress_programs(&self, iface: &str) -> Vec<(u32, String)> {
        in_netns(&self.server_ns, || {
            let (_revision, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("querying the tcx ingress of {iface}: {e}"));
            programs
                .iter()
                .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
                .collect()
        })
    }

    /// `smtp-gate stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let text = self.gate_ok(&["stats", "--json"]);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {text}"))
    }

    /// One counter of `smtp-gate stats --json` (e.g. `denied_drop`).
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.stats();
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats --json has no counter {name}: {stats}"))
    }

    /// `smtp-gate list --json` (add `--all` through `extra`), parsed.
    pub fn list(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["list", "--json"];
        args.extend_from_slice(extra);
        let text = self.gate_ok(&args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("list --json is not a JSON array ({e}): {text}"))
    }

    fn tear_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.servers.drain(..) {
            let _ = handle.join();
        }
        if self.mounted && self.namespaces.contains(&self.server_ns) {
            for iface in self.attached_ifaces() {
                let pin = self.pin_dir_str();
                let out = smtp_gate_in(
                    &self.server_ns,
                    &["detach", "--iface", &iface, "--pin-dir", &pin],
                );
                if !out.status.success() {
                    eprintln!(
                        "lab {} teardown: detach from {iface} failed (unmounting drops the \
                         pins anyway): {}",
                        self.id,
                        describe(&out)
                    );
                }
            }
        }
        self.xdp_pass.clear();
        if self.mounted {
            unmount_all(&self.mount_point);
            self.mounted = false;
        }
        let _ = fs::remove_dir(&self.mount_point);
        for ns in self.namespaces.drain(..).rev() {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            run_quiet("ip", &["netns", "del", &ns]);
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.tear_down();
    }
}

// ---------------------------------------------------------------------------
// POP3: the `smtp-gate serve` daemon, mail fixtures and real clients
// ---------------------------------------------------------------------------

/// The port `smtp-gate serve` listens on in the labs (its default).
pub const POP3_PORT: u16 = 110;
/// The POP3 client the labs run inside a client namespace: Python's poplib
/// driven by a JSON plan (see the script's header and [`pop3_client`]).
pub const POP3_CLIENT_PY: &str = include_str!("pop3_client.py");
/// How long `smtp-gate serve` may take to listen, and a client to run.
const SERVE_START_TIMEOUT: Duration = Duration::from_secs(15);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the Drop of a [`ServeDaemon`] waits after SIGTERM before SIGKILL.
const SERVE_DROP_GRACE: Duration = Duration::from_secs(15);

/// Panics unless `program ARGS` runs and exits 0; `package` is the Debian
/// package to install. Never skips: a missing client is a broken setup.
pub fn require_tool(program: &str, args: &[&str], package: &str) {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{program} {}` failed (install the Debian package {package}): {}",
            args.join(" "),
            describe(&out)
        ),
        Err(e) => panic!(
            "{program} is needed by the POP3 tests but cannot be run ({e}): \
             install the Debian package {package} (cargo xtask setup does)"
        ),
    }
}

/// Panics unless python3 with poplib and curl with POP3 support are there.
pub fn require_pop3_clients() {
    require_tool("python3", &["-c", "import json, poplib, socket"], "python3");
    require_tool("curl", &["--version"], "curl");
    let version = run_ok("curl", &["--version"]);
    assert!(
        version
            .lines()
            .any(|l| l.starts_with("Protocols:") && l.split_whitespace().any(|p| p == "pop3")),
        "this curl has no POP3 support: {version}"
    );
}

/// Runs `command` to completion, but for at most `timeout`: past it the
/// command is killed and the result is an error of kind `TimedOut`. Stdin
/// is closed; stdout and stderr are collected.
pub fn output_within(command: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stdout.join();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{command:?} still running after {timeout:?}, killed; stderr: {err}"),
            ));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs the poplib client ([`POP3_CLIENT_PY`]) in namespace `ns` against
/// `host` (an IPv4 or IPv6 address) with these steps (a JSON array of step
/// objects) and returns one result object per step. Panics if the script
/// fails, times out or prints something else than its JSON.
pub fn pop3_client(ns: &str, host: IpAddr, steps: serde_json::Value) -> Vec<serde_json::Value> {
    let plan = serde_json::json!({ "host": host.to_string(), "steps": steps });
    let out = output_within(
        netns_command(ns, "python3")
            .args(["-c", POP3_CLIENT_PY])
            .arg(plan.to_string()),
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("the POP3 client in {ns} did not finish: {e}"));
    if !out.status.success() {
        panic!("the POP3 client in {ns} failed: {}", describe(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "the POP3 client printed no JSON list ({e}): {}",
            describe(&out)
        )
    })
}

/// A `smtp-gate serve` daemon started by [`Lab::spawn_serve`]. Dropping it
/// sends SIGTERM and waits (SIGKILL after 15 s); [`ServeDaemon::terminate`]
/// does the same and reports how it went.
pub struct ServeDaemon {
    child: Option<std::process::Child>,
    log: PathBuf,
    status: Option<std::process::ExitStatus>,
}

impl ServeDaemon {
    /// The daemon's process id (`ip netns exec` execs it: the same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the daemon has written so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the daemon has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.status = Some(status);
                    self.child = None;
                }
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout`: returns the exit status and
    /// how long the daemon took, or `None` (after a SIGKILL) if it did not
    /// exit in time. An already exited daemon reports its status at once.
    pub fn terminate(&mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, Duration) {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return (Some(status), Duration::ZERO);
        }
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory effects; pid is our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = self.wait_exit(timeout);
        let took = started.elapsed();
        if status.is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        (status, took)
    }
}

impl Drop for ServeDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let (status, took) = self.terminate(SERVE_DROP_GRACE);
            match status {
                Some(s) if s.success() => {}
                Some(s) => eprintln!("smtp-gate serve exited with {s} after SIGTERM ({took:?})"),
                None => eprintln!("smtp-gate serve ignored SIGTERM for {took:?}: killed"),
            }
        }
        if thread::panicking() {
            eprintln!("--- smtp-gate serve log ---\n{}---", self.log());
        }
    }
}

impl Lab {
    /// Starts `ip netns exec <server ns> smtp-gate serve ARGS` (exactly these
    /// arguments: pass `--pin-dir` yourself, see [`Lab::serve`]), with its
    /// output going to the file `log`. Returns at once.
    pub fn spawn_serve(&self, args: &[&str], log: &Path) -> ServeDaemon {
        let file = fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err_file = file
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot duplicate {}: {e}", log.display()));
        let child = netns_command(&self.server_ns, smtp_gate_bin())
            .arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start smtp-gate serve: {e}"));
        ServeDaemon {
            child: Some(child),
            log: log.to_path_buf(),
            status: None,
        }
    }

    /// Waits (at most 15 s) until the client reaches `daemon`'s POP3 port
    /// on the server's IPv4 and IPv6 address and reads a greeting. Panics,
    /// showing the daemon's log, if it exits or never listens.
    pub fn wait_pop3(&self, daemon: &mut ServeDaemon) {
        let deadline = Instant::now() + SERVE_START_TIMEOUT;
        for addr in [
            IpAddr::from(self.client.server_v4),
            IpAddr::from(self.client.server_v6),
        ] {
            loop {
                if let Some(status) = daemon.exited() {
                    panic!(
                        "smtp-gate serve exited ({status}) before listening:\n{}",
                        daemon.log()
                    );
                }
                let result = connect(&self.client.client_ns, addr, POP3_PORT, DENY_TIMEOUT);
                match &result {
                    ConnectResult::Connected(greeting) if greeting.starts_with("+OK") => break,
                    _ if Instant::now() > deadline => panic!(
                        "smtp-gate serve does not answer on {addr}:{POP3_PORT} after \
                         {SERVE_START_TIMEOUT:?} (last attempt: {result}); its log:\n{}",
                        daemon.log()
                    ),
                    _ => thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// `smtp-gate serve --pin-dir <lab pin dir> ARGS`, started and answering
    /// POP3 (see [`Lab::spawn_serve`] and [`Lab::wait_pop3`]).
    pub fn serve(&self, args: &[&str], log: &Path) -> ServeDaemon {
        let pin = self.pin_dir_str();
        let mut all = args.to_vec();
        all.extend(["--pin-dir", pin.as_str()]);
        let mut daemon = self.spawn_serve(&all, log);
        self.wait_pop3(&mut daemon);
        daemon
    }
}

/// A temporary directory with a users file (Dovecot passwd-file, mode 0600)
/// and a mail root of Maildirs (`mail/<user>/{cur,new,tmp}`), removed on
/// drop.
pub struct MailFixture {
    dir: PathBuf,
    users: Vec<(String, String)>,
    delivered: u64,
}

static FIXTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl MailFixture {
    /// An empty fixture under the system's temporary directory.
    pub fn new() -> Self {
        let n = FIXTURE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("smtp-gate-mail-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("mail"))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let fixture = Self {
            dir,
            users: Vec::new(),
            delivered: 0,
        };
        fixture.write_users();
        fixture
    }

    /// The fixture's directory (for config files, logs, ...).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mail_root(&self) -> PathBuf {
        self.dir.join("mail")
    }

    pub fn users_file(&self) -> PathBuf {
        self.dir.join("users")
    }

    /// The Maildir of `user`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root().join(user)
    }

    /// Adds `user:SECRET` (e.g. `{PLAIN}secret`) to the users file and
    /// creates the user's Maildir.
    pub fn add_user(&mut self, user: &str, secret: &str) {
        self.users.push((user.to_string(), secret.to_string()));
        self.write_users();
        for sub in ["cur", "new", "tmp"] {
            let path = self.maildir(user).join(sub);
            fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        }
    }

    fn write_users(&self) {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.users_file();
        let text: String = self
            .users
            .iter()
            .map(|(user, secret)| format!("{user}:{secret}\n"))
            .collect();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    }

    /// Sets the users file's permission bits (e.g. 0o644 to see it refused).
    pub fn chmod_users(&self, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.users_file();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    }

    /// Delivers a message into `user`'s `new/` under the Maildir file name
    /// `name` (e.g. `1700000000.M1P1.lab`). Each delivery gets an mtime one
    /// second after the previous one, so the maildrop order (by mtime) is
    /// the delivery order.
    pub fn deliver(&mut self, user: &str, name: &str, content: &[u8]) -> PathBuf {
        let path = self.maildir(user).join("new").join(name);
        fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        self.delivered += 1;
        let mtime = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + self.delivered);
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .unwrap_or_else(|e| panic!("cannot set the mtime of {}: {e}", path.display()));
        path
    }

    /// File names in `user`'s Maildir subdirectory `sub` (`cur` or `new`),
    /// sorted.
    pub fn files(&self, user: &str, sub: &str) -> Vec<String> {
        sorted_names(&self.maildir(user).join(sub))
    }
}

impl Default for MailFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for MailFixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Names of the entries of `dir`, sorted; empty if it is gone.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts that a connect timed out: the gate dropped the SYN.
#[track_caller]
pub fn assert_timed_out(result: ConnectResult, what: &str) {
    assert_eq!(
        result,
        ConnectResult::TimedOut,
        "{what}: expected the SYN to be dropped (connect timed out), got: {result}"
    );
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
