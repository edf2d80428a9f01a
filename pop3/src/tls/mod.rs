//! TLS for the service (issue 11): implicit TLS on the `listen_tls`
//! listeners (RFC 8314) and STLS on the others (RFC 2595), TLS 1.2 and 1.3
//! only, with rustls over ring. `certificates` holds the pair in force,
//! `watch` reads it again when its files change.
//!
//! A handshake costs the server one signature and a few buffers (rustls
//! bounds every handshake message); it is bounded in time by
//! [`HANDSHAKE_TIMEOUT`] on top of the login timeout, so a client that
//! opens TLS and sends nothing, or sends it an octet at a time, holds its
//! slot for seconds, not a minute.

pub mod certificates;
pub mod watch;

use std::{sync::Arc, time::Duration};

use rustls::{crypto::CryptoProvider, version, ProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use crate::config::ServerConfig;
pub use certificates::{CertError, Certificates};

/// How long a TLS handshake may take once it has begun. A client on a slow
/// link needs two round trips and a signature; Dovecot and Postfix give a
/// handshake the same order of seconds.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the service needs for TLS: the certificate in force and the
/// acceptor of handshakes that asks it for one.
pub struct Tls {
    certificates: Arc<Certificates>,
    acceptor: TlsAcceptor,
}

/// Why a handshake gave no TLS session.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not done within [`HANDSHAKE_TIMEOUT`].
    TimedOut,
    /// The client sent what is not a TLS handshake we take (garbage, an
    /// older protocol version, no cipher suite in common), or left.
    Failed(std::io::Error),
}

impl Tls {
    /// The service's TLS with the certificate of `config` (`tls_cert`,
    /// `tls_key`); `None` if none is configured.
    pub fn from_config(config: &ServerConfig) -> Result<Option<Self>, CertError> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, CertError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates = Arc::new(Certificates::load(cert, key, Arc::clone(&provider))?);
        Ok(Self::with_certificates(certificates, provider))
    }

    fn with_certificates(certificates: Arc<Certificates>, provider: Arc<CryptoProvider>) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&version::TLS13, &version::TLS12])
            .expect("ring offers TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificates) as _);
        Self {
            certificates,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// The certificate in force, which a reload replaces.
    pub fn certificates(&self) -> Arc<Certificates> {
        Arc::clone(&self.certificates)
    }

    /// The server's side of a handshake on `stream`, bounded in time.
    pub async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, HandshakeError> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Err(_) => Err(HandshakeError::TimedOut),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Ok(Ok(stream)) => Ok(stream),
        }
    }
}

/// The protocol version of a TLS session, as the session's end line and
/// the clients' own tools write it (`TLSv1.3`).
pub fn version_name(stream: &TlsStream<TcpStream>) -> &'static str {
    match stream.get_ref().1.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}
