//! A grant's window judged on the gate's own clock, never on the test's:
//! `smtp-gate list --all --json` shows each grant's age as the gate reads
//! it (the same jiffies the program compares with, and the age only
//! grows). An attempt the gate denies counts as an early expiry only if
//! the grant's age, read after the attempt was judged, was still under its
//! lifetime; one it lets through counts as a late expiry only if the age,
//! read before the attempt, was already past it. Anything in between
//! proves nothing either way and is tried again, so a slow machine makes
//! these checks slower, never wrong.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    denial::{GateVerdict, Judged},
    lab::{Lab, Link},
    smtp::{try_session, Attempt, Session, DENY_TIMEOUT},
};

/// How long past a grant's lifetime it may keep letting clients in before
/// the check gives up: only a hang gets there.
const EXPIRY_BOUND: Duration = Duration::from_secs(30);
/// How long a check inside the window may keep finding the machine too
/// slow to tell before it gives up.
const FRESH_BOUND: Duration = Duration::from_secs(60);
/// Pause between two attempts while polling for the expiry.
const POLL_PAUSE: Duration = Duration::from_millis(100);

/// A grant as `smtp-gate list --all --json` shows it, on the gate's clock.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrantAge {
    pub age: Duration,
    pub lifetime: Duration,
}

/// How far `list --json`'s seconds (a float) may be from the gate's
/// nanoseconds: far more than the rounding, far less than any test's
/// steps.
const ROUNDING: Duration = Duration::from_millis(1);

impl GrantAge {
    /// Still fresh, whatever the rounding of the listing.
    pub fn is_fresh(&self) -> bool {
        self.age + ROUNDING < self.lifetime
    }

    /// Expired, whatever the rounding of the listing.
    pub fn is_expired(&self) -> bool {
        self.age >= self.lifetime + ROUNDING
    }
}

impl Lab {
    /// The grant of `addr` (as `list` shows addresses), or `None`.
    pub fn grant_age(&self, addr: IpAddr) -> Option<GrantAge> {
        let secs = |grant: &serde_json::Value, key: &str| {
            Duration::from_secs_f64(
                grant[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("list --json without {key}: {grant}")),
            )
        };
        self.list(&["--all"])
            .iter()
            .find(|g| g["address"] == addr.to_string())
            .map(|g| GrantAge {
                age: secs(g, "age_secs"),
                lifetime: secs(g, "lifetime_secs"),
            })
    }

    fn grant_age_of(&self, addr: IpAddr, what: &str) -> GrantAge {
        self.grant_age(addr)
            .unwrap_or_else(|| panic!("{what}: {addr} has no grant: {:?}", self.list(&["--all"])))
    }

    /// Makes attempts under a fresh grant of `granted` until one succeeds.
    /// `grant` makes (or renews) the grant; `try_once` makes one attempt,
    /// judged by the gate's counters, and returns what it got if it
    /// succeeded. Denied while the grant's age, read afterwards, was still
    /// under its lifetime: the grant failed early, a panic. Denied after
    /// the age had passed it, or let through but too slow to connect: the
    /// machine was too slow to tell, so `grant` is called again and the
    /// attempt repeated (for up to a minute).
    #[track_caller]
    fn while_fresh<T>(
        &self,
        granted: IpAddr,
        mut grant: impl FnMut(),
        what: &str,
        mut try_once: impl FnMut() -> (Option<T>, Judged),
    ) -> T {
        let deadline = Instant::now() + FRESH_BOUND;
        let mut tries = 0;
        loop {
            tries += 1;
            grant();
            let (got, judged) = try_once();
            let after = self.grant_age_of(granted, what);
            match (got, judged.verdict()) {
                (Some(got), GateVerdict::Passed) => return got,
                (_, GateVerdict::Denied) if after.is_fresh() => panic!(
                    "{what}: the gate denied a connection while the grant of {granted} was \
                     fresh (age {:?} of {:?} afterwards); {judged}",
                    after.age, after.lifetime
                ),
                (_, GateVerdict::Unclear) => {
                    panic!("{what}: the gate's counters do not add up; {judged}")
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{what}: in {tries} tries over {FRESH_BOUND:?}, no attempt could be judged \
                 inside the window of {granted} (last: {judged}; age afterwards {:?} of {:?})",
                after.age,
                after.lifetime
            );
        }
    }

    /// Asserts that `granted`'s grant, made or renewed by `grant`, lets
    /// `from` in to `to:port` while it is fresh (see [`Lab::while_fresh`]
    /// for how a slow machine is told from an early expiry).
    #[track_caller]
    pub fn assert_passes_while_fresh(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        granted: IpAddr,
        grant: impl FnMut(),
        what: &str,
    ) {
        let to = to.into();
        self.while_fresh(granted, grant, what, || {
            let judged = self.judge(from, to, port, DENY_TIMEOUT);
            (judged.attempt.result.is_connected().then_some(()), judged)
        })
    }

    /// Opens a session from `from` to `to:port` while `granted`'s grant,
    /// made or renewed by `grant`, is fresh (as
    /// [`Lab::assert_passes_while_fresh`]) and keeps it open.
    #[track_caller]
    pub fn session_while_fresh(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        granted: IpAddr,
        grant: impl FnMut(),
        what: &str,
    ) -> Session {
        let to = to.into();
        self.while_fresh(granted, grant, what, || {
            self.judge_with(|| {
                let (session, syns) = try_session(&from.client_ns, to, port, DENY_TIMEOUT);
                let attempt = Attempt::of(&session, syns);
                (session.ok(), attempt)
            })
        })
    }

    /// Polls with fresh attempts from `from` to `to:port` until the gate
    /// denies one after `granted`'s grant has provably expired. Panics if
    /// the grant's lifetime is not `lifetime`, if an attempt is denied
    /// while the grant was provably fresh or let through after it had
    /// provably expired, or if the grant still lets clients in 30 s after
    /// its lifetime. Returns once the expiry is proven.
    #[track_caller]
    pub fn assert_grant_expires(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        granted: IpAddr,
        lifetime: Duration,
        what: &str,
    ) {
        let to = to.into();
        let first = self.grant_age_of(granted, what);
        assert_eq!(
            first.lifetime, lifetime,
            "{what}: the grant of {granted} has another lifetime"
        );
        let deadline = Instant::now() + lifetime.saturating_sub(first.age) + EXPIRY_BOUND;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.grant_age_of(granted, what);
            let judged = self.judge(from, to, port, DENY_TIMEOUT);
            let after = self.grant_age_of(granted, what);
            match judged.verdict() {
                GateVerdict::Denied if after.is_fresh() => panic!(
                    "{what}: the grant of {granted} expired early: the gate denied {to}:{port} \
                     while its age was at most {:?} of {lifetime:?}; {judged}",
                    after.age
                ),
                GateVerdict::Denied if before.is_expired() => return,
                GateVerdict::Passed if before.is_expired() => panic!(
                    "{what}: the grant of {granted} outlived its lifetime: the gate let \
                     {to}:{port} through at an age of at least {:?} of {lifetime:?}; {judged}",
                    before.age
                ),
                GateVerdict::Unclear => {
                    panic!("{what}: the gate's counters do not add up; {judged}")
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the grant of {granted} still lets {to}:{port} in after {attempts} \
                 attempts, at an age of {:?} of {lifetime:?}; last: {judged}",
                after.age
            );
            thread::sleep(POLL_PAUSE);
        }
    }
}
