//! Where a policy hook listens: a TCP address (`127.0.0.1:10031`,
//! `[::1]:4001`) or a Unix socket (an absolute path). A Unix socket is
//! made anew at start (a stale socket file from a crash is replaced; any
//! other file there is an error), with mode 0660, so only its owner and
//! group can ask, and removed when the listener is dropped.

use std::{
    fmt, io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
};

use serde::{Deserialize, Deserializer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
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
    Unix {
        listener: UnixListener,
        /// Removed on drop.
        path: PathBuf,
    },
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
            PolicyAddr::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Self::Unix {
                    listener,
                    path: path.clone(),
                })
            }
        }
    }

    /// The address bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<PolicyAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(PolicyAddr::Tcp),
            Self::Unix { path, .. } => Ok(PolicyAddr::Unix(path.clone())),
        }
    }

    /// The next connection, and who made it (`unix` for a Unix socket).
    pub async fn accept(&self) -> io::Result<(PolicyStream, String)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((PolicyStream::Tcp(stream), peer.to_string()))
            }
            Self::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok((PolicyStream::Unix(stream), "unix".to_owned()))
            }
        }
    }
}

impl Drop for PolicyListener {
    fn drop(&mut self) {
        if let Self::Unix { path, .. } = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A socket file left by a daemon that died is replaced; anything else at
/// the path is the operator's and stays.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
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

    #[tokio::test]
    async fn a_unix_socket_replaces_a_stale_one_keeps_other_files_and_goes_on_drop() {
        let dir = std::env::temp_dir().join(format!("policy-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let addr = PolicyAddr::Unix(path.clone());
        let first = PolicyListener::bind(&addr).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // A daemon killed without its drop leaves the socket behind.
        std::mem::forget(first);
        let second = PolicyListener::bind(&addr).unwrap();
        drop(second);
        assert!(!path.exists(), "the socket is removed with its listener");
        std::fs::write(&path, "not a socket").unwrap();
        let err = PolicyListener::bind(&addr).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
