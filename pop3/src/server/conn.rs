//! A connection's byte stream: TCP, or TLS over it once the handshake is
//! done. The session's replies and the last words of a cut connection go
//! through it, so they are encrypted when TLS is up.

use std::time::Duration;

use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::server::TlsStream;

pub(super) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Handed to a TLS handshake that did not finish (the connection was
    /// cut in the middle of it): nothing can be sent any more.
    Gone,
}

/// How long a connection's last octets (a goodbye, TLS's close_notify)
/// may take to go out.
const LAST_WORDS: Duration = Duration::from_secs(1);

impl Conn {
    /// Writes `bytes` as the connection's last words, within a second;
    /// gives whether they went out.
    pub(super) async fn last_words(&mut self, bytes: &[u8]) -> bool {
        let written = tokio::time::timeout(LAST_WORDS, async {
            match self {
                Conn::Plain(stream) => stream.write_all(bytes).await,
                Conn::Tls(stream) => {
                    stream.write_all(bytes).await?;
                    stream.flush().await
                }
                Conn::Gone => Err(std::io::ErrorKind::NotConnected.into()),
            }
        })
        .await;
        matches!(written, Ok(Ok(())))
    }

    /// Ends TLS with its close_notify alert (a client that reads to the
    /// end of the stream then knows it was not cut), within a second.
    pub(super) async fn close(&mut self) {
        if let Conn::Tls(stream) = self {
            let _ = tokio::time::timeout(LAST_WORDS, stream.shutdown()).await;
        }
    }
}
