//! The TLS material of one benchmark run: testkit's CA and server
//! certificate (the e2e tests' own, made anew for the run), given to
//! smtp-gate and Dovecot alike, so that their handshakes sign with the same
//! key; and the load generator's side, which trusts that CA alone and
//! verifies the certificate and its name as a mail client does.

use std::{fs, net::Ipv4Addr, path::Path, sync::Arc};

use anyhow::{Context, Result};
use testkit::tls::{TestPki, SERVER_NAME};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
        RootCertStore,
    },
    TlsConnector,
};

/// The key type of both certificates: rcgen's `KeyPair::generate()`, which
/// testkit uses, makes ECDSA P-256 keys (the key type most servers are
/// given today; RSA 2048 would make each handshake's signature cost more).
pub const KEY_TYPE: &str = "ECDSA P-256 (SHA-256 signatures)";

/// Makes the CA and a certificate for [`SERVER_NAME`] and 127.0.0.1 in
/// `dir`.
pub fn create(dir: &Path) -> Result<TestPki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(TestPki::new(dir, &[Ipv4Addr::LOCALHOST.into()]))
}

/// A connector that trusts `pki`'s CA alone, offers what rustls offers by
/// default (TLS 1.3 and 1.2) and resumes no session: every connection pays
/// a full handshake, the worst case of a mail client polling.
pub fn connector(pki: &TestPki) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&pki.ca)
        .with_context(|| format!("reading {}", pki.ca.display()))?
    {
        roots.add(ca?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the client checks the certificate for.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}
