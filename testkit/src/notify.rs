//! A notify socket of the test's own, standing in for systemd's: a unix
//! datagram socket in a temporary directory, whose path goes into the
//! daemon's `NOTIFY_SOCKET`. Every message is kept with the moment it
//! arrived, so that a test can check their order against what it saw
//! the daemon do.

use std::{
    fs,
    io::ErrorKind,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// One datagram the daemon sent.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    pub text: String,
}

impl Notification {
    /// The assignments of the message (`KEY=VALUE` lines).
    pub fn assignments(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text.lines().filter_map(|line| line.split_once('='))
    }

    /// The value of `key`, if the message assigns it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.assignments().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Whether the message sets `key=value` (e.g. `READY`, `1`).
    pub fn says(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }
}

/// The socket, and every message received so far.
pub struct NotifySocket {
    dir: PathBuf,
    socket: UnixDatagram,
    pub received: Vec<Notification>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl NotifySocket {
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("smtp-gate-notify-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let socket = UnixDatagram::bind(dir.join("notify"))
            .unwrap_or_else(|e| panic!("cannot bind the notify socket: {e}"));
        Self {
            dir,
            socket,
            received: Vec::new(),
        }
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> String {
        self.dir.join("notify").to_string_lossy().into_owned()
    }

    /// Waits up to `timeout` for one message; `None` if none came.
    pub fn next(&mut self, timeout: Duration) -> Option<Notification> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("a read timeout");
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let got = Notification {
                        at: Instant::now(),
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    };
                    self.received.push(got.clone());
                    return Some(got);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
    }

    /// Waits up to `timeout` for a message that `wanted` accepts, keeping
    /// the others; `None` if none came.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Notification) -> bool,
    ) -> Option<Notification> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.next(left)?;
            if wanted(&got) {
                return Some(got);
            }
        }
    }

    /// Every message that comes within `span`.
    pub fn collect(&mut self, span: Duration) -> Vec<Notification> {
        let deadline = Instant::now() + span;
        let mut got = Vec::new();
        while let Some(n) = self.next(deadline.saturating_duration_since(Instant::now())) {
            got.push(n);
        }
        got
    }

    /// Every message received so far, one per line, for a failure's text.
    pub fn transcript(&self) -> String {
        self.received
            .iter()
            .map(|n| format!("{:?}\n", n.text))
            .collect()
    }
}

impl Default for NotifySocket {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
