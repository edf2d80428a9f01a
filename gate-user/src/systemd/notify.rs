//! The notify socket of sd_notify(3): one datagram per message, to the
//! unix socket named by `$NOTIFY_SOCKET`, a path (`/run/systemd/notify`)
//! or, with a leading `@`, a name in the abstract namespace. systemd reads
//! the sender's credentials from the socket (SO_PASSCRED on its side), so
//! a plain sendto(2) of `KEY=VALUE` lines is the whole protocol.
//!
//! A send never waits on a runtime's thread: when the manager's queue is
//! full (`net.unix.max_dgram_qlen` datagrams; PID 1 stuck, or busy in a
//! long daemon-reload) [`NotifySocket::send`] fails at once with
//! `WouldBlock`, and only [`NotifySocket::send_waiting`], for a thread of
//! its own (sender.rs), waits for room.

use std::{
    io,
    os::{
        fd::AsRawFd,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use nix::sys::socket::{sendto, MsgFlags, UnixAddr};

/// How long [`NotifySocket::send_waiting`] waits for room in the
/// manager's queue. systemd reads its queue at once; one full for this
/// long means a manager that is stuck.
pub const WAIT_FOR_ROOM: Duration = Duration::from_secs(5);

/// Where the messages go, and the socket they leave from.
#[derive(Debug)]
pub struct NotifySocket {
    /// `$NOTIFY_SOCKET` as given, for messages.
    pub shown: String,
    addr: UnixAddr,
    socket: UnixDatagram,
}

impl NotifySocket {
    /// The socket `value` (`$NOTIFY_SOCKET`) names. A value that is
    /// neither a path nor an abstract name (systemd 254's `vsock:`) is
    /// refused, saying so.
    pub fn new(value: &str) -> io::Result<Self> {
        let addr = unix_addr(&parse_addr(value)?)?;
        // Close-on-exec (std's default): no child inherits it. The
        // timeout bounds only the sends that wait (MSG_DONTWAIT ignores it).
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(WAIT_FOR_ROOM))?;
        Ok(Self {
            shown: value.to_string(),
            addr,
            socket,
        })
    }

    /// Sends `message` (newline-separated `KEY=VALUE` assignments) as one
    /// datagram, without waiting: a full queue is `WouldBlock`.
    pub fn send(&self, message: &str) -> io::Result<()> {
        self.send_with(message, MsgFlags::MSG_DONTWAIT)
    }

    /// [`NotifySocket::send`], waiting up to [`WAIT_FOR_ROOM`] for room in
    /// the queue (a thread's whole time: never on a runtime's thread).
    pub fn send_waiting(&self, message: &str) -> io::Result<()> {
        self.send_with(message, MsgFlags::empty())
    }

    fn send_with(&self, message: &str, flags: MsgFlags) -> io::Result<()> {
        let sent = sendto(
            self.socket.as_raw_fd(),
            message.as_bytes(),
            &self.addr,
            flags | MsgFlags::MSG_NOSIGNAL,
        )
        .map_err(io::Error::from)?;
        if sent != message.len() {
            // A datagram is sent whole or not at all; this is the kernel
            // breaking that promise, not a case to handle.
            return Err(io::Error::other(format!(
                "sent {sent} of {} octets",
                message.len()
            )));
        }
        Ok(())
    }
}

/// The address for sendto(2).
fn unix_addr(addr: &SocketAddr) -> io::Result<UnixAddr> {
    use std::os::linux::net::SocketAddrExt;
    let addr = match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(path), _) => UnixAddr::new(path),
        (None, Some(name)) => UnixAddr::new_abstract(name),
        (None, None) => return Err(io::Error::other("an unnamed address")),
    };
    addr.map_err(io::Error::from)
}

/// The address `$NOTIFY_SOCKET` names: an absolute path, or `@name` for
/// the abstract namespace (as sd_notify(3) reads it).
pub fn parse_addr(value: &str) -> io::Result<SocketAddr> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={value:?}: {why}"),
        )
    };
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(invalid("an abstract name needs a name after '@'"));
        }
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| invalid(&e.to_string()));
    }
    if value.starts_with('/') {
        return SocketAddr::from_pathname(value).map_err(|e| invalid(&e.to_string()));
    }
    Err(invalid(
        "neither an absolute path nor an abstract name ('@name'); not notifying",
    ))
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt;

    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    /// A path and an abstract name both reach the socket bound there; the
    /// message arrives as one datagram, unchanged.
    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("smtp-gate-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notify = NotifySocket::new(path.to_str().unwrap()).unwrap();
        notify.send("READY=1\nSTATUS=up").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=up");
        std::fs::remove_dir_all(&dir).unwrap();

        let name = format!("smtp-gate-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notify = NotifySocket::new(&format!("@{name}")).unwrap();
        notify.send("WATCHDOG=1").unwrap();
        assert_eq!(receive(&listener), "WATCHDOG=1");
    }

    /// What sd_notify(3) refuses, we refuse: a relative path, an empty
    /// value, a bare '@'.
    #[test]
    fn only_absolute_paths_and_abstract_names_are_taken() {
        assert!(parse_addr("/run/systemd/notify").is_ok());
        let abstract_addr = parse_addr("@/org/freedesktop/systemd1/notify").unwrap();
        assert_eq!(
            abstract_addr.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify"[..])
        );
        for bad in ["", "@", "run/systemd/notify", "vsock:2:1234"] {
            let err = parse_addr(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    /// A manager whose queue is full: the send fails at once
    /// (`WouldBlock`), it does not wait for room; the waiting send waits
    /// for [`WAIT_FOR_ROOM`] at most, and sends once there is room.
    #[test]
    fn a_full_queue_fails_at_once_and_only_the_waiting_send_waits() {
        let dir =
            std::env::temp_dir().join(format!("smtp-gate-notify-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notify = NotifySocket::new(path.to_str().unwrap()).unwrap();
        // Fill the queue (net.unix.max_dgram_qlen, 10 by default; a
        // bound in case of a larger one).
        let mut queued = 0;
        let full = loop {
            match notify.send("WATCHDOG=1") {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 100_000, "the queue never filled");
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");
        let started = std::time::Instant::now();
        assert_eq!(
            notify.send("STATUS=x").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(started.elapsed() < Duration::from_millis(100));
        // Room made while the waiting send waits: it goes through.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut buf = [0u8; 64];
            listener.recv(&mut buf).unwrap();
            listener
        });
        notify.send_waiting("READY=1").unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        let listener = reader.join().unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut last = String::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = listener.recv(&mut buf) {
            last = String::from_utf8(buf[..n].to_vec()).unwrap();
        }
        assert_eq!(last, "READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Nothing listening: the send fails, it does not hang or panic.
    #[test]
    fn a_socket_nobody_listens_on_is_an_error() {
        let notify = NotifySocket::new(&format!(
            "/nonexistent-smtp-gate-{}/notify",
            std::process::id()
        ))
        .unwrap();
        assert!(notify.send("READY=1").is_err());
    }
}
