//! A certificate authority made for one test, and the server certificate
//! it issues, written as the daemon reads them (`--tls-cert`, `--tls-key`)
//! and as clients trust them (`ca.pem`, given to each client as its only
//! CA: no client is told to skip verification).

use std::{fs, net::IpAddr, os::unix::fs::PermissionsExt, path::PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The host name in the server certificate besides its addresses (for
/// clients that check a name, e.g. fetchmail's `sslcommonname`).
pub const SERVER_NAME: &str = "pop.lab.test";

/// The files of a test CA and of one server certificate it issued.
pub struct TestPki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// A CA, and a certificate for [`SERVER_NAME`] and `addresses` signed
    /// by it, written into `dir` (the key with mode 600, as the daemon
    /// wants it).
    pub fn new(dir: &std::path::Path, addresses: &[IpAddr]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "smtp-gate lab CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let mut names = vec![SERVER_NAME.to_string()];
        names.extend(addresses.iter().map(ToString::to_string));
        let mut params = CertificateParams::new(names).expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
        };
        let write = |path: &PathBuf, text: String, mode: u32| {
            fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&pki.ca, ca.pem(), 0o644);
        write(&pki.cert, cert.pem(), 0o644);
        write(&pki.key, key.serialize_pem(), 0o600);
        pki
    }
}
