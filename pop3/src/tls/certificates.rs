//! The server's certificate chain and key: read from two PEM files,
//! checked to belong together, and handed to every new TLS handshake
//! (rustls asks through [`ResolvesServerCert`]). A new pair replaces the
//! one in force at once for the handshakes that come after; a session
//! already in TLS keeps the keys it negotiated. A pair that cannot be used
//! changes nothing: the pair in force stays.
//!
//! The key file is a secret, read as the users file is (trusted_file.rs:
//! mode 600, owned by root or the daemon's user); the certificate file is
//! public, but whoever may write it decides what the server presents, so
//! it is read as the config file is (nobody else may write it).

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::trusted_file;

/// Why a certificate and key cannot be used: the key of the file at fault
/// (`tls_cert` or `tls_key`) and what is wrong, naming the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub key: &'static str,
    pub problem: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.problem)
    }
}

impl std::error::Error for CertError {}

/// The two files, read and checked: the chain and its key.
pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let cert_error = |problem: String| CertError {
        key: "tls_cert",
        problem,
    };
    let key_error = |problem: String| CertError {
        key: "tls_key",
        problem,
    };
    let cert_text = trusted_file::read(cert_path, trusted_file::SETTINGS)
        .map_err(|e| cert_error(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(cert_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("{}: not PEM: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(cert_error(format!(
            "{} holds no certificate (a PEM block `BEGIN CERTIFICATE`)",
            cert_path.display()
        )));
    }
    let key_text = trusted_file::read(key_path, trusted_file::SECRETS)
        .map_err(|e| key_error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|e| {
        key_error(match e {
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "{} holds no private key (a PEM block `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE \
                 KEY` or `BEGIN EC PRIVATE KEY`)",
                key_path.display()
            ),
            e => format!("{}: not PEM: {e}", key_path.display()),
        })
    })?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        key_error(format!(
            "{}: the key cannot be used: {e}",
            key_path.display()
        ))
    })?;
    let pair = CertifiedKey::new(chain, signing_key);
    match pair.keys_match() {
        // A key whose public half rustls cannot give is taken on trust.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(key_error(format!(
            "{} is not the key of the certificate in {} (the first one, the server's own)",
            key_path.display(),
            cert_path.display()
        ))),
        Err(e) => Err(cert_error(format!(
            "{}: the first certificate cannot be read: {e}",
            cert_path.display()
        ))),
    }
}

/// What a file was when it was looked at: a new file put in its place
/// (an ACME client renames one over it) has another inode, a file written
/// in place another size or change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// `None` for a file that cannot be looked at (missing for a moment).
    fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The two files' stamps.
type Stamps = (Option<Stamp>, Option<Stamp>);

/// Where the pair comes from, and what the files were at each look.
#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    /// When the pair in force was read (stamped before reading: a change
    /// while it was read is seen at the next look).
    loaded: Stamps,
    /// A change seen at the last look, not read yet: the files are read
    /// once they have stayed so for a whole interval, not in the middle
    /// of a renewal that replaces one file and then the other.
    settling: Option<Stamps>,
    /// Files that were read and refused: not read again (nor the refusal
    /// logged again) until they change.
    refused: Option<Stamps>,
}

/// What a look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Looked {
    /// As they were read, or as they were refused.
    Unchanged,
    /// Changed since the last look: read at the next one if they stay.
    Settling,
    /// Read, and in force for new handshakes.
    Reloaded,
    /// Read and refused: the pair in force stays.
    Refused(CertError),
}

/// The pair in force, which every handshake gets.
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    files: Mutex<Files>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    pub fn load(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, CertError> {
        let stamps = (Stamp::of(cert), Stamp::of(key));
        let pair = load_pair(cert, key, &provider)?;
        Ok(Self {
            current: RwLock::new(Arc::new(pair)),
            files: Mutex::new(Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                loaded: stamps,
                settling: None,
                refused: None,
            }),
            provider,
        })
    }

    /// The pair in force.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The files the pair is read from.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let files = self.files();
        (files.cert.clone(), files.key.clone())
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the pair from `cert` and `key` now (SIGHUP, or new paths in
    /// the config) and puts it in force; gives whether the chain differs
    /// from the one in force. Refused, nothing changes: the pair and the
    /// files in force stay.
    pub fn reload_from(&self, cert: &Path, key: &Path) -> Result<bool, CertError> {
        let mut files = self.files();
        let stamps = (Stamp::of(cert), Stamp::of(key));
        let pair = load_pair(cert, key, &self.provider)?;
        let renewed = pair.cert != self.current().cert;
        *files = Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: stamps,
            settling: None,
            refused: None,
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(renewed)
    }

    /// Looks whether the files changed, and reads them once a change has
    /// settled (see [`Files::settling`]).
    pub fn look(&self) -> Looked {
        let mut files = self.files();
        let now = (Stamp::of(&files.cert), Stamp::of(&files.key));
        if now == files.loaded || Some(now) == files.refused {
            files.settling = None;
            return Looked::Unchanged;
        }
        if files.settling != Some(now) {
            files.settling = Some(now);
            return Looked::Settling;
        }
        files.settling = None;
        match load_pair(&files.cert, &files.key, &self.provider) {
            Ok(pair) => {
                files.loaded = now;
                files.refused = None;
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                Looked::Reloaded
            }
            Err(e) => {
                files.refused = Some(now);
                Looked::Refused(e)
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    /// A self-signed certificate for `localhost` and its key, in PEM.
    fn pair() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A pair that cannot be used stops the start with the key of the
    /// file at fault and the file's name.
    #[test]
    fn a_pair_that_cannot_be_used_names_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (cert_pem, key_pem) = pair();
        let (other_cert, other_key) = pair();
        write(&cert, &cert_pem, 0o644);
        write(&key, &key_pem, 0o600);
        load_pair(&cert, &key, &provider()).unwrap();
        let refused = |key_name: &str, needle: &str| {
            let e = load_pair(&cert, &key, &provider()).unwrap_err();
            assert_eq!(e.key, key_name, "{e}");
            assert!(e.problem.contains(needle), "{e}");
        };
        write(&key, &other_key, 0o600);
        refused(
            "tls_key",
            &format!(
                "{} is not the key of the certificate in {}",
                key.display(),
                cert.display()
            ),
        );
        write(&cert, &other_cert, 0o644);
        load_pair(&cert, &key, &provider()).unwrap();
        write(&key, &other_key, 0o640);
        refused("tls_key", &format!("{} is mode 0640", key.display()));
        write(&key, &other_cert, 0o600);
        refused(
            "tls_key",
            &format!("{} holds no private key", key.display()),
        );
        write(&key, &other_key, 0o600);
        write(&cert, &other_key, 0o644);
        refused(
            "tls_cert",
            &format!("{} holds no certificate", cert.display()),
        );
        write(&cert, &other_cert, 0o664);
        refused("tls_cert", &format!("{} is mode 0664", cert.display()));
        fs::remove_file(&cert).unwrap();
        refused("tls_cert", &format!("cannot read {}", cert.display()));
    }

    /// A change is read once it has stayed for one look; a refused one is
    /// not read (nor reported) again until the files change again.
    #[test]
    fn changes_are_read_once_settled_and_refusals_said_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let (first_cert, first_key) = pair();
        write(&cert, &first_cert, 0o644);
        write(&key, &first_key, 0o600);
        let certificates = Certificates::load(&cert, &key, provider()).unwrap();
        let first = certificates.current();
        assert_eq!(certificates.look(), Looked::Unchanged);

        let (second_cert, second_key) = pair();
        let renamed = |path: &Path, text: &str, mode: u32| {
            let new = path.with_extension("new");
            write(&new, text, mode);
            fs::rename(&new, path).unwrap();
        };
        renamed(&cert, &second_cert, 0o644);
        assert_eq!(certificates.look(), Looked::Settling, "half a renewal");
        renamed(&key, &second_key, 0o600);
        assert_eq!(certificates.look(), Looked::Settling, "changed again");
        assert!(Arc::ptr_eq(&certificates.current(), &first));
        assert_eq!(certificates.look(), Looked::Reloaded);
        let second = certificates.current();
        assert!(!Arc::ptr_eq(&second, &first));
        assert_eq!(certificates.look(), Looked::Unchanged);

        renamed(&key, &first_key, 0o600);
        assert_eq!(certificates.look(), Looked::Settling);
        assert!(matches!(certificates.look(), Looked::Refused(e) if e.key == "tls_key"));
        assert_eq!(certificates.look(), Looked::Unchanged, "said once");
        assert!(Arc::ptr_eq(&certificates.current(), &second), "kept");

        // SIGHUP: read now; a refusal keeps the pair and the files.
        assert!(certificates.reload_from(&cert, &key).is_err());
        assert!(Arc::ptr_eq(&certificates.current(), &second));
        let elsewhere = dir.path().join("other.pem");
        write(&elsewhere, &first_cert, 0o644);
        assert_eq!(certificates.reload_from(&elsewhere, &key), Ok(true));
        assert_eq!(certificates.paths(), (elsewhere.clone(), key.clone()));
        assert_eq!(
            certificates.reload_from(&elsewhere, &key),
            Ok(false),
            "the same chain"
        );
    }
}
