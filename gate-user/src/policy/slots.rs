//! The connections a hook keeps open, bounded in number. When every slot
//! is taken, a new connection is still taken: the open connection that
//! went longest without a request answered is closed for it. So no one
//! can shut Dovecot or Postfix out by holding connections open and idle
//! (any local user can connect to a loopback port): Dovecot and Postfix
//! connect when they have a request and send it at once, so their
//! connections are the ones most recently answered, and a connection
//! closed while idle costs them only a reconnection (Postfix notices a
//! closed connection before it writes; Dovecot's HTTP client retries).
//! The metrics endpoint, whose requests may wait seconds, spares the
//! connections with a request in progress and refuses a newcomer when all
//! are (`admit_sparing_busy`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use log::warn;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The open connections of one hook.
pub struct ConnectionSlots {
    /// The hook's name in log lines.
    hook: &'static str,
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Open>,
    /// Whether "all slots taken" was logged since the table last had room.
    warned_full: bool,
    /// Whether "all slots busy" was logged since the table last had room.
    warned_busy: bool,
}

struct Open {
    peer: String,
    last_answered: Instant,
    /// Requests in progress (see [`Slot::request`]).
    requests: u32,
    close: CancellationToken,
}

/// One connection's slot, given back when dropped.
pub struct Slot {
    id: u64,
    slots: Arc<ConnectionSlots>,
    /// Cancelled when the connection must close to make room.
    pub closed_for_room: CancellationToken,
}

impl ConnectionSlots {
    pub fn new(hook: &'static str, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            hook,
            capacity: capacity.max(1),
            table: Mutex::default(),
        })
    }

    /// A slot for a new connection from `peer`, and whether an open one was
    /// told to close to make room for it.
    pub fn admit(self: &Arc<Self>, peer: &str) -> (Slot, bool) {
        self.admit_closing(peer, false)
            .expect("a slot is always made when busy ones may close")
    }

    /// As [`Self::admit`], but never closes a connection with a request in
    /// progress (see [`Slot::request`]): `None` when every slot is taken by
    /// one, and the new connection is to be closed at once. For a server
    /// whose requests may take a while (a scrape waits up to seconds for
    /// the census): closing one midway fails it.
    pub fn admit_sparing_busy(self: &Arc<Self>, peer: &str) -> Option<(Slot, bool)> {
        self.admit_closing(peer, true)
    }

    fn admit_closing(self: &Arc<Self>, peer: &str, spare_busy: bool) -> Option<(Slot, bool)> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut made_room = false;
        if table.open.len() >= self.capacity {
            let longest_idle = table
                .open
                .iter()
                .filter(|(_, open)| !(spare_busy && open.requests > 0))
                .min_by_key(|(id, open)| (open.last_answered, **id))
                .map(|(id, _)| *id);
            let Some(id) = longest_idle else {
                if !table.warned_busy {
                    table.warned_busy = true;
                    warn!(
                        "{} has {} connections open, each with a request in progress: new ones \
                         are closed at once (first: peer={})",
                        self.hook,
                        self.capacity,
                        pop3::log_text::LogText::of(peer)
                    );
                }
                return None;
            };
            if let Some(open) = table.open.remove(&id) {
                open.close.cancel();
                made_room = true;
                if !table.warned_full {
                    table.warned_full = true;
                    warn!(
                        "{} has {} connections open, as many as it takes: each new one closes \
                         the one idle longest (first closed: peer={})",
                        self.hook,
                        self.capacity,
                        pop3::log_text::LogText::of(&open.peer)
                    );
                }
            }
        } else if table.open.len() < self.capacity / 2 {
            table.warned_full = false;
            table.warned_busy = false;
        }
        let id = table.next_id;
        table.next_id += 1;
        let close = CancellationToken::new();
        table.open.insert(
            id,
            Open {
                peer: peer.to_owned(),
                last_answered: Instant::now(),
                requests: 0,
                close: close.clone(),
            },
        );
        let slot = Slot {
            id,
            slots: Arc::clone(self),
            closed_for_room: close,
        };
        Some((slot, made_room))
    }

    /// How many connections hold a slot.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }
}

impl Slot {
    /// The connection answered a request: it is the last to be closed for
    /// room.
    pub fn answered(&self) {
        let mut table = self
            .slots
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = table.open.get_mut(&self.id) {
            open.last_answered = Instant::now();
        }
    }
}

impl Slot {
    /// A request is in progress until the guard is dropped, and the
    /// connection is answered then. Under [`ConnectionSlots::admit_sparing_busy`]
    /// it is not closed for room meanwhile.
    pub fn request(&self) -> Request<'_> {
        if let Some(open) = self.table().open.get_mut(&self.id) {
            open.requests += 1;
        }
        Request(self)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.slots
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request in progress on a connection.
pub struct Request<'a>(&'a Slot);

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if let Some(open) = self.0.table().open.get_mut(&self.0.id) {
            open.requests -= 1;
            open.last_answered = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_closes_the_connection_longest_without_an_answer() {
        let slots = ConnectionSlots::new("test", 3);
        let (idle_first, _) = slots.admit("idle-first");
        let (busy, _) = slots.admit("busy");
        let (idle_second, _) = slots.admit("idle-second");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        // `busy` answered after the others came in.
        busy.answered();
        let (newcomer, made_room) = slots.admit("newcomer");
        assert!(made_room);
        assert!(idle_first.closed_for_room.is_cancelled());
        assert!(!busy.closed_for_room.is_cancelled());
        assert!(!idle_second.closed_for_room.is_cancelled());
        assert_eq!(slots.open(), 3);
        let (_next, made_room) = slots.admit("next");
        assert!(made_room);
        assert!(idle_second.closed_for_room.is_cancelled());
        assert!(!busy.closed_for_room.is_cancelled());
        assert!(!newcomer.closed_for_room.is_cancelled());
        // The closed ones' slots are already free: their drop frees nothing
        // twice.
        drop(idle_first);
        drop(idle_second);
        assert_eq!(slots.open(), 3);
    }

    /// Sparing busy connections: only one with no request in progress is
    /// closed for room, the one idle longest; with all busy, none is, and
    /// the newcomer gets no slot.
    #[tokio::test]
    async fn sparing_busy_closes_only_an_idle_connection_or_refuses_the_newcomer() {
        let slots = ConnectionSlots::new("test", 3);
        let (oldest_busy, _) = slots.admit_sparing_busy("oldest-busy").unwrap();
        let (idle, _) = slots.admit_sparing_busy("idle").unwrap();
        let (busy, _) = slots.admit_sparing_busy("busy").unwrap();
        let oldest_request = oldest_busy.request();
        let request = busy.request();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (newcomer, made_room) = slots.admit_sparing_busy("newcomer").unwrap();
        assert!(made_room);
        assert!(
            idle.closed_for_room.is_cancelled(),
            "the idle one made room"
        );
        assert!(
            !oldest_busy.closed_for_room.is_cancelled(),
            "idle longest, but busy"
        );
        assert!(!busy.closed_for_room.is_cancelled());
        let newcomer_request = newcomer.request();
        assert!(
            slots.admit_sparing_busy("refused").is_none(),
            "all three busy: no room"
        );
        assert_eq!(slots.open(), 3);
        assert!(!oldest_busy.closed_for_room.is_cancelled());
        assert!(!busy.closed_for_room.is_cancelled());
        assert!(!newcomer.closed_for_room.is_cancelled());
        // Answered: idle again, and the one to close next.
        drop(request);
        drop(newcomer_request);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        drop(oldest_request);
        let (_next, made_room) = slots.admit_sparing_busy("next").unwrap();
        assert!(made_room);
        assert!(
            busy.closed_for_room.is_cancelled(),
            "answered first of the idle"
        );
        assert!(!oldest_busy.closed_for_room.is_cancelled());
        assert!(!newcomer.closed_for_room.is_cancelled());
    }

    #[test]
    fn a_slot_is_given_back_when_its_connection_ends() {
        let slots = ConnectionSlots::new("test", 2);
        let (first, _) = slots.admit("a");
        let (_second, _) = slots.admit("b");
        drop(first);
        assert_eq!(slots.open(), 1);
        let (_third, made_room) = slots.admit("c");
        assert!(!made_room, "a free slot is taken without closing anyone");
    }
}
