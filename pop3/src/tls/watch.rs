//! Reading the certificate again when its files change. ACME clients
//! (certbot, acme.sh, lego) write a renewed certificate and key to new
//! files and rename them over the old ones, or move a symbolic link: the
//! files are looked at every [`CHECK_INTERVAL`] (their inode, size and
//! times), and read once a change has stayed for a whole interval. A pair
//! that cannot be used is logged once, naming the file, and the pair in
//! force stays until the files change again.

use std::{sync::Arc, time::Duration};

use log::{error, info};
use tokio_util::sync::CancellationToken;

use super::certificates::{Certificates, Looked};

/// How often the certificate's files are looked at.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Looks at the files until `stop`.
pub async fn run(certificates: Arc<Certificates>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        let looking = Arc::clone(&certificates);
        // Files: on the blocking pool, never on an async worker thread.
        let Ok(looked) = tokio::task::spawn_blocking(move || looking.look()).await else {
            continue;
        };
        let (cert, key) = certificates.paths();
        match looked {
            Looked::Unchanged | Looked::Settling => {}
            Looked::Reloaded => info!(
                "TLS: {} and {} changed: new connections get the certificate read from them",
                cert.display(),
                key.display()
            ),
            Looked::Refused(e) => error!(
                "TLS: {} or {} changed, but cannot be used: {e}; new connections keep getting \
                 the certificate in force",
                cert.display(),
                key.display()
            ),
        }
    }
}
