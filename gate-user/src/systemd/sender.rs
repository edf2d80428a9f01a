//! Sending to the service manager without stalling the daemon. Every
//! message is first sent without waiting (notify.rs); when the manager's
//! queue is full:
//!
//! - a message the next one replaces (`WATCHDOG=1`, `STATUS=`) is dropped
//!   and counted: the next tick repairs it;
//! - a state change systemd must hear (`READY=1`, `RELOADING=1`,
//!   `STOPPING=1`) is kept, in order, and sent by a thread of its own
//!   that waits for room ([`WAIT_FOR_ROOM`] at most per message, then
//!   says in the log that it is lost). While such messages wait, the next
//!   ones join them, so that systemd hears `RELOADING=1` before its
//!   `READY=1`.
//!
//! A failure is said once, until a message gets through again; a state
//! change that is lost (the socket refuses it) is said every time.

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use log::{info, warn};

use super::notify::{NotifySocket, WAIT_FOR_ROOM};

/// What a message is to systemd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Replaced by the next one of its kind: dropped when there is no room.
    Replaceable,
    /// A change of the service's state: never dropped without a word.
    StateChange,
}

#[derive(Debug)]
pub struct Sender {
    socket: NotifySocket,
    /// Messages dropped for want of room in the manager's queue.
    dropped: AtomicU64,
    /// A failure was said in the log.
    warned: AtomicBool,
    backlog: Mutex<Backlog>,
}

/// State changes waiting for room, and whether a thread sends them.
#[derive(Debug, Default)]
struct Backlog {
    waiting: VecDeque<String>,
    sending: bool,
}

impl Sender {
    pub fn new(socket: NotifySocket) -> Self {
        Self {
            socket,
            dropped: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            backlog: Mutex::new(Backlog::default()),
        }
    }

    /// `$NOTIFY_SOCKET` as given.
    pub fn shown(&self) -> &str {
        &self.socket.shown
    }

    /// How many messages were dropped because the manager's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends `message` without waiting; see the module's comment for what
    /// happens when there is no room.
    pub fn send(self: &Arc<Self>, message: &str, kind: Kind) {
        if kind == Kind::StateChange {
            let mut backlog = self.backlog();
            if backlog.sending {
                // Behind the ones that wait, in order.
                backlog.waiting.push_back(message.to_string());
                return;
            }
        }
        match self.socket.send(message) {
            Ok(()) => self.got_through(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match kind {
                Kind::Replaceable => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    self.failed(message, &e, "dropped");
                }
                Kind::StateChange => self.keep(message),
            },
            Err(e) => match kind {
                Kind::Replaceable => self.failed(message, &e, "lost"),
                // Rare (at start, per reload, at stop), and systemd acts on
                // each: said every time.
                Kind::StateChange => {
                    self.warned.store(true, Ordering::Relaxed);
                    warn!(
                        "systemd: cannot send {} to {}: {e}; lost",
                        first_line(message),
                        self.shown()
                    );
                }
            },
        }
    }

    /// Puts a state change in the backlog, and starts its thread if none
    /// runs.
    fn keep(self: &Arc<Self>, message: &str) {
        {
            let mut backlog = self.backlog();
            backlog.waiting.push_back(message.to_string());
            if backlog.sending {
                return;
            }
            backlog.sending = true;
        }
        let sender = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("smtp-gate-notify".into())
            .spawn(move || sender.send_backlog());
        if let Err(e) = started {
            let lost = {
                let mut backlog = self.backlog();
                backlog.sending = false;
                std::mem::take(&mut backlog.waiting)
            };
            for message in lost {
                warn!(
                    "systemd: {} could not be sent to {} (its queue is full, and no thread to \
                     wait for room: {e}): lost",
                    first_line(&message),
                    self.shown()
                );
            }
        }
    }

    /// The backlog's thread: sends the waiting messages in order, each
    /// waiting for room; ends when none is left.
    fn send_backlog(&self) {
        loop {
            let message = {
                let mut backlog = self.backlog();
                match backlog.waiting.pop_front() {
                    Some(message) => message,
                    None => {
                        backlog.sending = false;
                        return;
                    }
                }
            };
            match self.socket.send_waiting(&message) {
                Ok(()) => self.got_through(),
                Err(e) => warn!(
                    "systemd: {} could not be sent to {} within {} (its queue stayed full: \
                     {e}): lost; systemd may take the service for stuck",
                    first_line(&message),
                    self.shown(),
                    pop3::duration::format_duration(WAIT_FOR_ROOM)
                ),
            }
        }
    }

    fn got_through(&self) {
        if self.warned.swap(false, Ordering::Relaxed) {
            info!(
                "systemd: {} takes messages again ({} dropped meanwhile, as every one since the \
                 start)",
                self.shown(),
                self.dropped()
            );
        }
    }

    fn failed(&self, message: &str, e: &io::Error, fate: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                "systemd: cannot send {} to {}: {e}; {fate} (said once until a message gets \
                 through)",
                first_line(message),
                self.shown()
            );
        }
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The first assignment of a message, for the log.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::net::UnixDatagram,
        time::{Duration, Instant},
    };

    use super::*;

    fn drain(listener: &UnixDatagram) -> Vec<String> {
        listener.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = listener.recv(&mut buf) {
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        got
    }

    /// A manager that does not read: no send waits; what the next tick
    /// replaces is dropped and counted; the state changes wait on their
    /// thread and reach the manager, in order, once it reads.
    #[test]
    fn a_full_queue_drops_ticks_and_keeps_state_changes_in_order() {
        let dir = std::env::temp_dir().join(format!("smtp-gate-sender-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let sender = Arc::new(Sender::new(
            NotifySocket::new(path.to_str().unwrap()).unwrap(),
        ));
        let started = Instant::now();
        // More than any queue of the default length holds.
        for _ in 0..200 {
            sender.send("WATCHDOG=1", Kind::Replaceable);
        }
        sender.send("RELOADING=1", Kind::StateChange);
        sender.send("STATUS=x", Kind::Replaceable);
        sender.send("READY=1", Kind::StateChange);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "a send waited: {:?}",
            started.elapsed()
        );
        assert!(sender.dropped() > 0);
        // The manager reads again: the state changes come, in order.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut changes = Vec::new();
        while changes.len() < 2 && Instant::now() < deadline {
            changes.extend(drain(&listener).into_iter().filter(|m| m != "WATCHDOG=1"));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(changes, ["RELOADING=1", "READY=1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
