//! smtp-gate's POP3 service in a process of its own (the `pop3-server`
//! binary of this crate), so that its memory and CPU are measured apart
//! from the load generator's.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use testkit::tls::TestPki;

use super::fixture::Fixture;

pub struct GateProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// Its implicit-TLS listener, when it was given a certificate.
    pub tls_addr: Option<SocketAddr>,
}

impl GateProcess {
    /// Starts it on the fixture's users and Maildirs, with `certs` also
    /// serving implicit TLS.
    pub fn start(fixture: &Fixture, certs: Option<&TestPki>) -> Result<Self> {
        let binary = crate::binaries::build("gate-bench", "pop3-server")?;
        let mut command = Command::new(&binary);
        command
            .arg(&fixture.users_file)
            .arg(fixture.mail_root())
            .arg(fixture.dir.join("pop3-server.log"));
        if let Some(certs) = certs {
            command.arg(&certs.cert).arg(&certs.key);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut stdout = BufReader::new(stdout);
        let mut process = Self {
            child,
            stdin,
            addr: ([127, 0, 0, 1], 0).into(),
            tls_addr: None,
        };
        // It prints its addresses or exits (closing stdout).
        process.addr = read_address(&mut stdout)?;
        if certs.is_some() {
            process.tls_addr = Some(read_address(&mut stdout)?);
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn read_address(stdout: &mut impl BufRead) -> Result<SocketAddr> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("pop3-server printed {line:?} instead of an address"))
}

impl Drop for GateProcess {
    fn drop(&mut self) {
        // Closing stdin is its signal to stop.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
