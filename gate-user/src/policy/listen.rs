//! Where a policy hook listens: a TCP address (`127.0.0.1:10031`,
//! `[::1]:4001`) or a Unix socket (an absolute path). A Unix socket is
//! made anew at start (a stale socket file from a crash is replaced; a
//! socket another process listens on, or any other file, is an error),
//! with mode 0660, so only its owner and group can ask, and removed when
//! the listener is dropped, if the file is still ours.

use std::{
    fmt, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
    time::Duration,
};

use log::warn;

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
    trouble: Option<String>,
}

impl UnixSocketListener {
    fn bind(path: &Path) -> io::Result<Self> {
        remove_stale_socket(path)?;
        let (listener, made) = make_socket_file(path)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            made,
            check_every: SOCKET_FILE_CHECK,
            next_check: Instant::now() + SOCKET_FILE_CHECK,
            trouble: None,
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
    /// at the path alone, and says so once.
    fn keep_socket_file(&mut self) {
        let path = self.path.display();
        let trouble = match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.made => None,
            Ok(_) => Some(format!(
                "policy socket {path} is no longer the one smtp-gate made (replaced by another \
                 file): requests through that path do not reach smtp-gate; restart it to listen \
                 there again"
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match make_socket_file(&self.path) {
                Ok((listener, made)) => {
                    warn!("policy socket {path} was removed; made anew");
                    self.listener = listener;
                    self.made = made;
                    None
                }
                Err(e) => Some(format!(
                    "policy socket {path} was removed and cannot be made anew: {e}; trying again \
                     every {}s",
                    SOCKET_FILE_CHECK.as_secs()
                )),
            },
            Err(e) => Some(format!("policy socket {path} cannot be checked: {e}")),
        };
        if trouble != self.trouble {
            if let Some(trouble) = &trouble {
                warn!("{trouble}");
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
}
