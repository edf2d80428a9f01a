//! Where a policy hook listens: a TCP address (`127.0.0.1:10031`,
//! `[::1]:4001`) or a Unix socket (an absolute path). A Unix socket is
//! made anew at start (a stale socket file from a crash is replaced; a
//! socket another process listens on, or any other file, is an error),
//! with mode 0660, so only its owner and group can ask, and removed when
//! the listener is dropped, if the file is still ours.
//!
//! Its directory must be one that no user but the daemon's and root can
//! write to (see [`check_socket_directory`]): whoever can write there can
//! put a socket of their own at the path while ours is gone (a restart, a
//! cleaned directory) and answer Postfix `OK` for anyone, or read
//! Dovecot's logins.

use std::{
    fmt, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use log::{error, warn};

use serde::{Deserialize, Deserializer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    time::Instant,
};

/// A policy hook's listening address, as the config gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for PolicyAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            format!(
                "`{text}` is neither an address with a port (127.0.0.1:10031, [::1]:10031) \
                 nor a Unix socket's absolute path"
            )
        })
    }
}

impl fmt::Display for PolicyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for PolicyAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for PolicyAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Tcp(addr) => s.collect_str(addr),
            Self::Unix(path) => s.collect_str(&path.display()),
        }
    }
}

/// A bound policy listener.
pub enum PolicyListener {
    Tcp(TcpListener),
    Unix(UnixSocketListener),
}

impl PolicyListener {
    /// Binds `addr`. Call inside a tokio runtime.
    pub fn bind(addr: &PolicyAddr) -> io::Result<Self> {
        match addr {
            PolicyAddr::Tcp(addr) => {
                let socket = std::net::TcpListener::bind(addr)?;
                socket.set_nonblocking(true)?;
                Ok(Self::Tcp(TcpListener::from_std(socket)?))
            }
            PolicyAddr::Unix(path) => UnixSocketListener::bind(path).map(Self::Unix),
        }
    }

    /// Tells a Unix listener whose hook it serves (`Postfix`, `Dovecot`, as
    /// its error line names the mail server that may now be talking to
    /// someone else) and what to count when its socket file is found
    /// replaced by another. Nothing for a TCP listener.
    pub fn on_replaced(&mut self, server: &'static str, count: impl Fn() + Send + Sync + 'static) {
        if let Self::Unix(unix) = self {
            unix.server = server;
            unix.count_replaced = Arc::new(count);
        }
    }

    /// The address bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<PolicyAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(PolicyAddr::Tcp),
            Self::Unix(unix) => Ok(PolicyAddr::Unix(unix.path.clone())),
        }
    }

    /// The next connection, and who made it: the TCP peer's address, or a
    /// Unix peer's user and process ids (`unix:uid=0:pid=1234`). Cancel
    /// safe, as tokio's accepts are.
    pub async fn accept(&mut self) -> io::Result<(PolicyStream, String)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((PolicyStream::Tcp(stream), peer.to_string()))
            }
            Self::Unix(unix) => unix.accept().await,
        }
    }
}

/// How often a Unix listener checks that its socket file is still there.
const SOCKET_FILE_CHECK: Duration = Duration::from_secs(5);

/// A listening Unix socket and the file that names it. The file is made
/// whole (mode 0660) under a temporary name and renamed into place, so no
/// one connects through a socket with the umask's mode. A file of another
/// listener is never taken over, and only our own file is removed: at
/// drop, the path is removed only if it still names the socket we made.
/// A socket file removed while we run (a careless `rm`, a cleaned /run) is
/// made anew, with a warning, within [`SOCKET_FILE_CHECK`].
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
    /// The device and inode of the file we made.
    made: (u64, u64),
    check_every: Duration,
    next_check: Instant,
    /// What the last check found wrong, so that it is logged once.
    trouble: Option<Trouble>,
    /// The mail server asking on this socket, for the log.
    server: &'static str,
    /// Counts a socket file found replaced.
    count_replaced: Arc<dyn Fn() + Send + Sync>,
}

/// What a check of the socket file found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Trouble {
    /// Another file at the path: someone else may answer there.
    Replaced,
    /// Gone and not made anew, or not to be checked.
    Other(String),
}

impl UnixSocketListener {
    fn bind(path: &Path) -> io::Result<Self> {
        check_socket_directory(path)?;
        remove_stale_socket(path)?;
        let (listener, made) = make_socket_file(path)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            made,
            check_every: SOCKET_FILE_CHECK,
            next_check: Instant::now() + SOCKET_FILE_CHECK,
            trouble: None,
            server: "the mail server",
            count_replaced: Arc::new(|| {}),
        })
    }

    async fn accept(&mut self) -> io::Result<(PolicyStream, String)> {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = accepted?;
                    let peer = match stream.peer_cred() {
                        Ok(cred) => match cred.pid() {
                            Some(pid) => format!("unix:uid={}:pid={pid}", cred.uid()),
                            None => format!("unix:uid={}", cred.uid()),
                        },
                        Err(_) => "unix".to_owned(),
                    };
                    return Ok((PolicyStream::Unix(stream), peer));
                }
                () = tokio::time::sleep_until(self.next_check) => {
                    self.next_check = Instant::now() + self.check_every;
                    self.keep_socket_file();
                }
            }
        }
    }

    /// Makes the socket file anew if it is gone; leaves whatever else is
    /// at the path alone, and says so once: a file put in its place is an
    /// error (counted), since whoever put it there may now answer the mail
    /// server in smtp-gate's place.
    fn keep_socket_file(&mut self) {
        let path = self.path.display();
        let trouble = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.made => None,
            Ok(_) => Some(Trouble::Replaced),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match make_socket_file(&self.path) {
                Ok((listener, made)) => {
                    warn!("policy socket {path} was removed; made anew");
                    self.listener = listener;
                    self.made = made;
                    None
                }
                Err(e) => Some(Trouble::Other(format!(
                    "policy socket {path} was removed and cannot be made anew: {e}; trying again \
                     every {}s",
                    SOCKET_FILE_CHECK.as_secs()
                ))),
            },
            Err(e) => Some(Trouble::Other(format!(
                "policy socket {path} cannot be checked: {e}"
            ))),
        };
        if trouble != self.trouble {
            match &trouble {
                Some(Trouble::Replaced) => {
                    (self.count_replaced)();
                    error!(
                        "policy socket {path} was replaced by a file smtp-gate did not make: \
                         {} may now be talking to someone else, not to smtp-gate (whoever \
                         made the file answers its requests); find who did, remove it and \
                         restart smtp-gate",
                        self.server
                    );
                }
                Some(Trouble::Other(trouble)) => warn!("{trouble}"),
                None => {}
            }
            self.trouble = trouble;
        }
    }
}

impl Drop for UnixSocketListener {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.made);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a socket under a temporary name beside `path`, gives it mode
/// 0660 and renames it to `path`; returns the listener and the file's
/// device and inode.
fn make_socket_file(path: &Path) -> io::Result<(UnixListener, (u64, u64))> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}.new", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    remove_stale_socket(&temporary)?;
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::symlink_metadata(&temporary))
        .and_then(|meta| {
            std::fs::rename(&temporary, path)?;
            Ok((meta.dev(), meta.ino()))
        });
    match placed {
        Ok(made) => Ok((listener, made)),
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            Err(e)
        }
    }
}

/// Refuses a socket whose directory users other than the daemon's and
/// root may write to: one of them could remove the socket (or wait for a
/// restart) and listen at the path in our place. Every directory on the
/// way, as the path names it and as it really is (symlinks followed),
/// must be owned by root or the daemon's user; the socket's own directory
/// must be writable by its owner alone: neither group nor others, not even
/// with the sticky bit (/tmp: the socket's name is free for anyone while
/// ours is gone). A directory above it may be world-writable if sticky
/// (the next one, ours or root's, cannot be renamed away then).
///
/// A group-writable directory is refused even when setgid and of the
/// mail server's group: every member of the group could take the path,
/// and the mail server needs no write access to the directory, only
/// search (x): the recipe (deploy/smtp-gate.service,
/// deploy/postfix/main.cf.snippet) is `install -d -o vmail -g postfix -m
/// 2750`, where the socket (mode 0660) takes the group and only the
/// daemon's user can write.
pub fn check_socket_directory(socket: &Path) -> io::Result<()> {
    let dir = socket
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path", socket.display()),
            )
        })?;
    let me = nix::unistd::geteuid().as_raw();
    check_directories(socket, dir, me)?;
    let real = std::fs::canonicalize(dir)?;
    if real != dir {
        check_directories(socket, &real, me)?;
    }
    Ok(())
}

/// [`check_socket_directory`] for `dir` and each directory above it.
fn check_directories(socket: &Path, dir: &Path, me: u32) -> io::Result<()> {
    let unsafe_dir = |at: &Path, why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is in {}, which {why}: another user could put a socket of their own at that \
                 path and answer in smtp-gate's place; put the socket in a directory that only \
                 smtp-gate's user (uid {me}) and root can write to, e.g. `install -d -o vmail -g \
                 postfix -m 2750 /var/spool/postfix/smtp-gate`",
                socket.display(),
                at.display()
            ),
        )
    };
    for at in dir.ancestors() {
        let meta = std::fs::symlink_metadata(at)?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(unsafe_dir(at, format!("is owned by uid {}", meta.uid())));
        }
        if meta.file_type().is_symlink() {
            // Its target is checked with the real path.
            continue;
        }
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let writable = |bits: u32| mode & bits != 0;
        let what = match (writable(0o020), writable(0o002)) {
            (_, true) => "others",
            (true, false) => "its group",
            (false, false) => continue,
        };
        if at == dir {
            return Err(unsafe_dir(
                at,
                format!("{what} may write to (mode {mode:04o})"),
            ));
        }
        if !sticky {
            return Err(unsafe_dir(
                at,
                format!(
                    "{what} may write to (mode {mode:04o}, not sticky: the directory below can \
                     be renamed away)"
                ),
            ));
        }
    }
    Ok(())
}

/// A socket file left by a daemon that died is replaced: nothing answers
/// a connection to it. A socket something listens on (another smtp-gate,
/// another daemon) and anything else at the path stay.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is a socket another process listens on (is another smtp-gate \
                         running?)",
                        path.display()
                    ),
                )),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("{} is a socket that cannot be tried: {e}", path.display()),
                )),
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A connection to a policy hook.
pub enum PolicyStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for PolicyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PolicyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_tcp_or_an_absolute_socket_path() {
        assert_eq!(
            "127.0.0.1:10031".parse(),
            Ok(PolicyAddr::Tcp("127.0.0.1:10031".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:4001".parse(),
            Ok(PolicyAddr::Tcp("[::1]:4001".parse().unwrap()))
        );
        assert_eq!(
            "/run/smtp-gate/policy".parse(),
            Ok(PolicyAddr::Unix("/run/smtp-gate/policy".into()))
        );
        for bad in ["localhost:10031", "127.0.0.1", "run/policy", "", "unix:/x"] {
            let err = bad.parse::<PolicyAddr>().unwrap_err();
            assert!(err.contains("Unix socket"), "{bad}: {err}");
        }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("policy-listen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_unix_socket_replaces_a_stale_one_keeps_other_files_and_goes_on_drop() {
        let dir = scratch_dir("stale");
        let path = dir.join("sock");
        let addr = PolicyAddr::Unix(path.clone());
        // A daemon killed leaves its socket behind, with nothing
        // listening on it any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = PolicyListener::bind(&addr).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(second);
        assert!(!path.exists(), "the socket is removed with its listener");
        std::fs::write(&path, "not a socket").unwrap();
        let err = PolicyListener::bind(&addr).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary socket is left behind"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// deploy/smtp-gate.service's recipe for Postfix: in a setgid
    /// directory of group postfix, the socket is of that group, 0660.
    #[tokio::test]
    async fn a_socket_in_a_setgid_directory_takes_its_group() {
        const GROUP: u32 = 65534;
        let dir = scratch_dir("setgid");
        std::os::unix::fs::chown(&dir, None, Some(GROUP))
            .expect("chown to another group needs root (CI runs the tests as root)");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
        let path = dir.join("policy");
        let listener = PolicyListener::bind(&PolicyAddr::Unix(path.clone())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.gid(), GROUP);
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Attack review (issue 12's hooks): a socket in /tmp (or any
    /// directory another user may write to) was taken without a word;
    /// while it was gone, another user could listen at its path and
    /// answer Postfix `OK` for anyone. Refused at start, naming the
    /// directory, its mode or owner, before anything is made there.
    #[tokio::test]
    async fn a_socket_in_a_directory_others_may_write_is_refused() {
        const OTHER: u32 = 65534;
        let top = scratch_dir("unsafe");
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir_with = |name: &str, mode: u32, owner: Option<u32>| {
            let dir = top.join(name);
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::chown(&dir, owner, Some(OTHER))
                .expect("chown to another user needs root (CI runs the tests as root)");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            dir
        };
        let refused = |path: PathBuf, wanted: &str| {
            let err = PolicyListener::bind(&PolicyAddr::Unix(path.clone()))
                .err()
                .unwrap_or_else(|| panic!("{} was taken", path.display()));
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            let text = err.to_string();
            assert!(text.contains(wanted), "{text}");
            assert!(text.contains("in smtp-gate's place"), "{text}");
            assert!(!path.exists(), "nothing is made at {}", path.display());
        };
        // /tmp itself, and a directory like it.
        refused(
            Path::new("/tmp").join(format!("smtp-gate-policy-{}", std::process::id())),
            "others may write to (mode 1777)",
        );
        let sticky = dir_with("sticky", 0o1777, None);
        refused(sticky.join("policy"), "others may write to (mode 1777)");
        // Group-writable, even setgid as the recipe's directory.
        let group = dir_with("group", 0o770, None);
        refused(group.join("policy"), "its group may write to (mode 0770)");
        let setgid = dir_with("setgid", 0o2770, None);
        refused(setgid.join("policy"), "its group may write to (mode 2770)");
        // Another user's directory, however strict.
        let theirs = dir_with("theirs", 0o755, Some(OTHER));
        refused(theirs.join("policy"), "is owned by uid 65534");
        // A directory of ours below one others may rename it out of.
        let open = dir_with("open", 0o777, None);
        std::fs::create_dir(open.join("ours")).unwrap();
        std::fs::set_permissions(open.join("ours"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        refused(open.join("ours/policy"), "not sticky");
        // Through a symlink to a directory others may write to.
        std::os::unix::fs::symlink(&sticky, top.join("link")).unwrap();
        refused(top.join("link/policy"), "others may write to (mode 1777)");

        // Below a sticky one, a directory of ours is fine: others can
        // neither rename nor remove it.
        std::fs::create_dir(sticky.join("ours")).unwrap();
        std::fs::set_permissions(sticky.join("ours"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let fine = PolicyListener::bind(&PolicyAddr::Unix(sticky.join("ours/policy"))).unwrap();
        drop(fine);
        // The recipe: setgid, group only reads and searches.
        let recipe = dir_with("recipe", 0o2750, None);
        let fine = PolicyListener::bind(&PolicyAddr::Unix(recipe.join("policy"))).unwrap();
        drop(fine);
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[tokio::test]
    async fn a_socket_another_process_listens_on_is_not_taken_over() {
        let dir = scratch_dir("live");
        let path = dir.join("sock");
        let addr = PolicyAddr::Unix(path.clone());
        let mut first = PolicyListener::bind(&addr).unwrap();
        let err = PolicyListener::bind(&addr).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("another process"), "{err}");
        // The first listener still gets its connections.
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (_stream, peer) = first.accept().await.unwrap();
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let pid = std::process::id();
        assert_eq!(peer, format!("unix:uid={uid}:pid={pid}"));
        drop(first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn only_our_own_socket_file_is_removed_at_drop() {
        let dir = scratch_dir("replaced");
        let path = dir.join("sock");
        let listener = PolicyListener::bind(&PolicyAddr::Unix(path.clone())).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "the operator's").unwrap();
        drop(listener);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the operator's");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_removed_socket_file_is_made_anew_and_a_replaced_one_left_alone() {
        let dir = scratch_dir("removed");
        let path = dir.join("sock");
        let PolicyListener::Unix(mut unix) =
            PolicyListener::bind(&PolicyAddr::Unix(path.clone())).unwrap()
        else {
            unreachable!()
        };
        unix.check_every = Duration::from_millis(20);
        std::fs::remove_file(&path).unwrap();
        let accepting = tokio::spawn(async move {
            let accepted = unix.accept().await.map(|(_, peer)| peer);
            (unix, accepted)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Ok(client) = std::os::unix::net::UnixStream::connect(&path) {
                break client;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the socket never came back"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (mut unix, accepted) = accepting.await.unwrap();
        assert!(accepted.unwrap().starts_with("unix:uid="));
        drop(client);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "made anew with the same mode");

        // Another file in its place is left as it is.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "the operator's").unwrap();
        let checks = tokio::time::timeout(Duration::from_millis(300), unix.accept()).await;
        assert!(checks.is_err(), "nothing connects meanwhile");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the operator's");
        drop(unix);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "the operator's");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Attack review (issue 12's hooks): a socket file replaced by
    /// another's was said once, as a warning, without naming what follows
    /// from it. It is an error line saying the mail server may now talk to
    /// someone else, counted, once for as long as it lasts.
    #[test]
    fn a_replaced_socket_file_is_an_error_counted_once() {
        use std::sync::atomic::{AtomicU64, Ordering};

        use crate::policy::dovecot_sessions::captured_log::captured;

        let dir = scratch_dir("replaced-error");
        let path = dir.join("sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&count);
        let ((), logged) = captured(|| {
            runtime.block_on(async {
                let mut listener = PolicyListener::bind(&PolicyAddr::Unix(path.clone())).unwrap();
                listener.on_replaced("Postfix", move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                });
                let PolicyListener::Unix(unix) = &mut listener else {
                    unreachable!()
                };
                unix.check_every = Duration::from_millis(20);
                unix.next_check = Instant::now();
                std::fs::remove_file(&path).unwrap();
                // Another user's listener in its place.
                let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
                for _ in 0..2 {
                    let checks =
                        tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
                    assert!(checks.is_err(), "nothing reaches us meanwhile");
                }
                drop(listener);
            })
        });
        assert!(path.exists(), "their socket is left alone");
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "counted once: {logged:#?}"
        );
        let errors: Vec<_> = logged
            .iter()
            .filter(|(level, _)| *level == log::Level::Error)
            .map(|(_, m)| m.as_str())
            .collect();
        assert_eq!(errors.len(), 1, "{logged:#?}");
        assert!(
            errors[0].contains("Postfix may now be talking to someone else"),
            "{errors:?}"
        );
        assert!(
            errors[0].contains(&path.display().to_string()),
            "{errors:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
