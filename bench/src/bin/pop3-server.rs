//! smtp-gate's POP3 service alone in a process, for `cargo xtask bench
//! pop3`: the same `pop3::server::Server` as `smtp-gate serve`, with a
//! no-op grant sink (no gate to attach), so that its memory and CPU can be
//! measured apart from the load generator.
//!
//!     pop3-server USERS_FILE MAIL_ROOT LOG_FILE [TLS_CERT TLS_KEY]
//!
//! Listens on 127.0.0.1 on a free port and prints the address on stdout;
//! with a certificate, also serves implicit TLS (RFC 8314) on another free
//! port of 127.0.0.1 and prints that address on a second line. Logs like
//! the daemon (env_logger, info) into LOG_FILE, and stops when its standard
//! input closes.

use std::{io::BufRead, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use pop3::{
    auth::users_file::UsersFile,
    config::ServerConfig,
    maildrop::maildir::MaildirStore,
    server::{Backends, Server},
    NoFailureSink, NoGrant,
};
use tokio_util::sync::CancellationToken;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let usage = "usage: pop3-server USERS_FILE MAIL_ROOT LOG_FILE [TLS_CERT TLS_KEY]";
    let users_file = args.next().context(usage)?;
    let mail_root = args.next().context(usage)?;
    let log_file = args.next().context(usage)?;
    let (tls_cert, tls_key) = (args.next(), args.next());
    if tls_cert.is_some() != tls_key.is_some() {
        anyhow::bail!(usage);
    }
    let listen_tls = match tls_cert {
        Some(_) => vec!["127.0.0.1:0".parse()?],
        None => Vec::new(),
    };
    let log = std::fs::File::create(&log_file)
        .with_context(|| format!("creating {}", log_file.display()))?;
    env_logger::Builder::new()
        .parse_filters("info")
        .target(env_logger::Target::Pipe(Box::new(log)))
        .init();
    let users = UsersFile::load(&users_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = ServerConfig {
            listen: vec!["127.0.0.1:0".parse()?],
            listen_tls: Some(listen_tls),
            tls_cert,
            tls_key,
            hostname: "bench.test".into(),
            max_connections: 4096,
            // Every client of the benchmark is 127.0.0.1.
            max_connections_per_ip: 4096,
            shutdown_grace: Duration::from_secs(1),
            ..ServerConfig::default()
        };
        let backends = Backends {
            auth: Arc::new(users),
            store: Arc::new(MaildirStore::new(mail_root)),
            grants: Arc::new(NoGrant),
            failures: Arc::new(NoFailureSink),
        };
        let server = Server::bind(config, backends).await?;
        println!("{}", server.local_addrs()[0]);
        if let Some(addr) = server.tls_local_addrs().first() {
            println!("{addr}");
        }
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.run(shutdown.clone()));
        // Until the harness closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let stdin = std::io::stdin();
            let mut line = String::new();
            while stdin.lock().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await?;
        shutdown.cancel();
        serving.await?;
        anyhow::Ok(())
    })
}
