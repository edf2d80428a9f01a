//! Guessing one account from many addresses: failed logins are counted
//! per user name too, and past a few, every login naming that user waits
//! before its password is checked, longer as failures go on. Never a
//! lockout: the right password still logs in, only later, and a network
//! the user logged in from before is not delayed at all, so an attacker
//! cannot use the delay against the user where the user usually is.
//!
//! The per-network bans stop one source; this slows a guesser who spreads
//! over more sources than the bans catch in time. The delay comes before
//! the check, for right and wrong passwords alike, so its length tells
//! nothing about the password. Names that do not exist are counted like
//! names that do: the delay does not tell them apart.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::server::ClientNetwork;

/// Failures of one name, within `WINDOW`, before its logins are delayed.
pub const FAILURES_BEFORE_DELAY: u32 = 5;
/// How long a failure counts.
pub const WINDOW: Duration = Duration::from_secs(600);
/// The delay grows by this for every failure past the threshold...
pub const DELAY_STEP: Duration = Duration::from_secs(1);
/// ...up to this.
pub const MAX_DELAY: Duration = Duration::from_secs(15);
/// Names whose failures are counted at once; past it, names whose window
/// is over make room, and a new name is not counted while none is over
/// (an attacker spraying names cannot push out the one under attack).
pub const MAX_NAMES: usize = 16_384;
/// Networks remembered per user as where they logged in.
const KNOWN_NETWORKS: usize = 4;
/// How long a network stays known after the user's last login from it.
const KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Default)]
pub struct UserThrottle {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    failures: HashMap<String, Failures>,
    /// Users who logged in: bounded by the users file, since only a right
    /// password adds one.
    known: HashMap<String, Vec<(ClientNetwork, Instant)>>,
}

struct Failures {
    since: Instant,
    count: u32,
}

impl UserThrottle {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a login naming `user` from `network` waits before its
    /// password is checked.
    pub fn delay(&self, user: &str, network: ClientNetwork, now: Instant) -> Duration {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let count = match state.failures.get(user) {
            Some(f) if now.saturating_duration_since(f.since) < WINDOW => f.count,
            _ => return Duration::ZERO,
        };
        if count < FAILURES_BEFORE_DELAY {
            return Duration::ZERO;
        }
        let known = state.known.get(user).is_some_and(|networks| {
            networks
                .iter()
                .any(|&(n, at)| n == network && now.saturating_duration_since(at) < KNOWN_FOR)
        });
        if known {
            return Duration::ZERO;
        }
        (DELAY_STEP * (count - FAILURES_BEFORE_DELAY + 1)).min(MAX_DELAY)
    }

    /// A login naming `user` failed. True when this failure is the one
    /// that starts the delay (for a single log line).
    pub fn failed(&self, user: &str, now: Instant) -> bool {
        if user.is_empty() {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failures = &mut state.failures;
        if let Some(f) = failures.get_mut(user) {
            if now.saturating_duration_since(f.since) >= WINDOW {
                *f = Failures {
                    since: now,
                    count: 0,
                };
            }
            f.count = f.count.saturating_add(1);
            return f.count == FAILURES_BEFORE_DELAY;
        }
        if failures.len() >= MAX_NAMES {
            failures.retain(|_, f| now.saturating_duration_since(f.since) < WINDOW);
            if failures.len() >= MAX_NAMES {
                return false;
            }
        }
        failures.insert(
            user.to_string(),
            Failures {
                since: now,
                count: 1,
            },
        );
        FAILURES_BEFORE_DELAY == 1
    }

    /// `user` logged in from `network`: it is known there from now on.
    /// The failures stay: a guesser elsewhere goes on being slowed.
    pub fn succeeded(&self, user: &str, network: ClientNetwork, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let networks = state.known.entry(user.to_string()).or_default();
        networks.retain(|&(n, at)| n != network && now.saturating_duration_since(at) < KNOWN_FOR);
        if networks.len() >= KNOWN_NETWORKS {
            // The least recently used goes.
            networks.sort_by_key(|&(_, at)| std::cmp::Reverse(at));
            networks.truncate(KNOWN_NETWORKS - 1);
        }
        networks.push((network, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(ip: &str) -> ClientNetwork {
        ClientNetwork::of(ip.parse().unwrap(), 32, 64)
    }

    fn fail(throttle: &UserThrottle, user: &str, times: u32, at: Instant) {
        for _ in 0..times {
            let _ = throttle.failed(user, at);
        }
    }

    #[test]
    fn the_delay_starts_after_a_few_failures_and_grows_to_a_cap() {
        let t = UserThrottle::new();
        let now = Instant::now();
        let from = net("192.0.2.1");
        fail(&t, "alice", FAILURES_BEFORE_DELAY - 1, now);
        assert_eq!(t.delay("alice", from, now), Duration::ZERO);
        assert!(t.failed("alice", now), "the failure that starts the delay");
        assert!(!t.failed("alice", now), "only once");
        t.state
            .lock()
            .unwrap()
            .failures
            .get_mut("alice")
            .unwrap()
            .count -= 1;
        assert_eq!(t.delay("alice", from, now), DELAY_STEP);
        fail(&t, "alice", 3, now);
        assert_eq!(t.delay("alice", from, now), DELAY_STEP * 4);
        fail(&t, "alice", 100, now);
        assert_eq!(t.delay("alice", from, now), MAX_DELAY);
        assert_eq!(t.delay("bob", from, now), Duration::ZERO, "another name");
        let later = now + WINDOW;
        assert_eq!(t.delay("alice", from, later), Duration::ZERO, "window over");
        fail(&t, "alice", 1, later);
        assert_eq!(
            t.delay("alice", from, later),
            Duration::ZERO,
            "counting anew"
        );
    }

    /// Where the user logged in before, the user is not slowed; anywhere
    /// else, the right password waits like a wrong one.
    #[test]
    fn a_network_the_user_logged_in_from_is_not_delayed() {
        let t = UserThrottle::new();
        let now = Instant::now();
        let home = net("2001:db8:1::7");
        t.succeeded("alice", home, now);
        fail(&t, "alice", 20, now);
        assert_eq!(
            t.delay("alice", net("2001:db8:1::99"), now),
            Duration::ZERO,
            "same /64"
        );
        assert_ne!(t.delay("alice", net("2001:db8:2::7"), now), Duration::ZERO);
        fail(&t, "alice", 20, now + KNOWN_FOR);
        assert_ne!(
            t.delay("alice", home, now + KNOWN_FOR),
            Duration::ZERO,
            "forgotten after a month without a login there"
        );
        for i in 1..=KNOWN_NETWORKS {
            t.succeeded(
                "alice",
                net(&format!("198.51.100.{i}")),
                now + Duration::from_secs(i as u64),
            );
        }
        assert_ne!(
            t.delay("alice", home, now),
            Duration::ZERO,
            "the oldest made room"
        );
        assert_eq!(t.delay("alice", net("198.51.100.4"), now), Duration::ZERO);
    }

    /// Names sprayed past the table's size do not push out a name under
    /// attack; once their window is over they make room.
    #[test]
    fn the_table_is_bounded_and_keeps_the_name_under_attack() {
        let t = UserThrottle::new();
        let now = Instant::now();
        fail(&t, "alice", FAILURES_BEFORE_DELAY, now);
        for i in 0..MAX_NAMES + 100 {
            fail(&t, &format!("spray{i}"), 1, now);
        }
        let len = t.state.lock().unwrap().failures.len();
        assert_eq!(len, MAX_NAMES);
        assert_eq!(t.delay("alice", net("192.0.2.1"), now), DELAY_STEP);
        let later = now + WINDOW;
        fail(&t, "carol", 1, later);
        let state = t.state.lock().unwrap();
        assert_eq!(state.failures.len(), 1, "every old name went");
        assert!(state.failures.contains_key("carol"));
    }

    #[test]
    fn an_empty_name_is_not_counted() {
        let t = UserThrottle::new();
        let now = Instant::now();
        fail(&t, "", 50, now);
        assert!(t.state.lock().unwrap().failures.is_empty());
    }
}
