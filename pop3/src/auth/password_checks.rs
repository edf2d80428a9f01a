//! Turns for the password checks that hash. A SHA512-CRYPT check costs
//! milliseconds of CPU, more for a longer password (about 4.5 ms at 8
//! octets, 21 ms at 248), and every failed PASS of a hashed user, or of a
//! name that does not exist (decoy.rs), costs one. Run all at once, a few
//! hosts sending long wrong passwords over many connections kept every CPU
//! busy, and a user's login took half a minute.
//!
//! So checks that hash take turns: at most as many run at once as the
//! machine has CPUs, the others wait in arrival order; and a client
//! network (as the slots count them: slots.rs) has at most one check
//! waiting or running at a time, its other checks wait behind it, outside
//! the queue. A login from another network then waits behind at most one
//! check per network that hammers, however many connections each opens.
//!
//! Nobody is refused for this, and no password is cut short: RFC 1939 sets
//! no length for a password (only the 255-octet line of RFC 2449), Dovecot
//! checks what it is given, and the failure delay and the login timeout
//! already bound how long one connection may keep trying.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::server::ClientNetwork;

/// The service's queue of password checks that hash.
pub struct PasswordChecks {
    /// One permit per check that may run at once.
    running: Arc<Semaphore>,
    /// Each network with a check waiting or running: its one place in
    /// `running`'s queue. Removed when the network has none.
    networks: Mutex<HashMap<ClientNetwork, Arc<Semaphore>>>,
}

/// A network's turn to run one check; the next check waits until it is
/// dropped.
pub struct Turn {
    checks: Arc<PasswordChecks>,
    network: ClientNetwork,
    // Dropped before the network's place is looked at (`Drop`).
    running: Option<OwnedSemaphorePermit>,
    place: Option<OwnedSemaphorePermit>,
}

impl PasswordChecks {
    /// A queue that runs `at_once` checks at once (at least one).
    pub fn new(at_once: usize) -> Arc<Self> {
        Arc::new(Self {
            running: Arc::new(Semaphore::new(at_once.max(1))),
            networks: Mutex::new(HashMap::new()),
        })
    }

    /// A queue that runs as many checks at once as the machine has CPUs.
    pub fn per_cpu() -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// Waits for `network`'s turn to run a check: first for the network's
    /// check before it, then for a CPU, each in arrival order. Dropping
    /// the future gives up the place.
    pub async fn turn(self: &Arc<Self>, network: ClientNetwork) -> Turn {
        let place = {
            let mut networks = self.networks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(
                networks
                    .entry(network)
                    .or_insert_with(|| Arc::new(Semaphore::new(1))),
            )
        };
        // Built before the waits, so that a dropped future cleans up too.
        let mut turn = Turn {
            checks: Arc::clone(self),
            network,
            running: None,
            place: None,
        };
        // Neither semaphore is ever closed.
        turn.place = place.acquire_owned().await.ok();
        turn.running = Arc::clone(&self.running).acquire_owned().await.ok();
        turn
    }

    /// Networks with a check waiting or running.
    #[cfg(test)]
    fn networks(&self) -> usize {
        self.networks.lock().unwrap().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.running.take();
        self.place.take();
        let mut networks = self
            .checks
            .networks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Every waiter holds a clone of its network's place; none left
        // but the map's: the network has no check waiting.
        if networks
            .get(&self.network)
            .is_some_and(|place| Arc::strong_count(place) == 1)
        {
            networks.remove(&self.network);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn network(ip: &str) -> ClientNetwork {
        ClientNetwork::of(ip.parse::<IpAddr>().unwrap(), 32, 64)
    }

    /// Whether `future` is still waiting after the runtime has run every
    /// other task it can.
    async fn waits<F: std::future::Future>(future: &mut std::pin::Pin<Box<F>>) -> bool {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        futures_poll_once(future).await.is_none()
    }

    async fn futures_poll_once<F: std::future::Future>(
        future: &mut std::pin::Pin<Box<F>>,
    ) -> Option<F::Output> {
        std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }

    /// One network's second check waits for its first even while a CPU is
    /// free; another network's check takes that CPU; with every CPU busy,
    /// checks wait in arrival order.
    #[tokio::test(flavor = "current_thread")]
    async fn one_check_per_network_and_one_per_cpu() {
        let checks = PasswordChecks::new(2);
        let (a, b, c) = (
            network("192.0.2.1"),
            network("198.51.100.1"),
            network("203.0.113.1"),
        );
        let first_a = checks.turn(a).await;
        let mut second_a = Box::pin(checks.turn(a));
        assert!(waits(&mut second_a).await, "a network's second check waits");
        let first_b = checks.turn(b).await;
        let mut first_c = Box::pin(checks.turn(c));
        assert!(waits(&mut first_c).await, "both CPUs are busy");
        drop(first_a);
        // The CPU went to the check that waited for it first (c's); a's
        // second now has its network's place and waits for a CPU.
        let first_c = futures_poll_once(&mut first_c).await.expect("c's turn");
        assert!(waits(&mut second_a).await);
        drop(first_b);
        let second_a = futures_poll_once(&mut second_a).await.expect("a's turn");
        assert_eq!(checks.networks(), 2);
        drop((first_c, second_a));
        assert_eq!(checks.networks(), 0, "no network is kept without checks");
    }

    /// A waiting check given up (its login cut) leaves no trace.
    #[tokio::test(flavor = "current_thread")]
    async fn a_check_given_up_while_waiting_leaves_its_place() {
        let checks = PasswordChecks::new(1);
        let a = network("192.0.2.1");
        let first = checks.turn(a).await;
        let mut given_up = Box::pin(checks.turn(network("198.51.100.1")));
        assert!(waits(&mut given_up).await);
        drop(given_up);
        assert_eq!(checks.networks(), 1);
        drop(first);
        assert_eq!(checks.networks(), 0);
        let _next = checks.turn(a).await;
    }
}
