//! What the watchdog is fed from: the daemon's loops check in, and
//! `WATCHDOG=1` goes out only while every loop registered here checked in
//! within the watchdog's interval (half of `WatchdogSec=`). A timer alone
//! would go on feeding it while the loop that does the daemon's work is
//! stuck: the agent's follower blocked in a write to a disk that does not
//! answer, the gate's watch waiting for a lock that is never let go.
//!
//! A loop checks in from its own task, between its steps and, through
//! [`Heartbeat::during`], every half interval while it waits in an
//! `.await` (a blocking read of the bus, a timer, a signal): waiting there
//! is its normal state, and each of those waits is bounded by a timeout of
//! its own. What stops the heartbeat is the loop's task not being polled:
//! a system call that does not return (a lock, a file system), or a step
//! that never yields.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

/// The loops that must check in, each as long as its [`Heartbeat`] lives.
#[derive(Debug, Default)]
pub struct Liveness {
    loops: Mutex<Vec<Weak<Beat>>>,
}

#[derive(Debug)]
struct Beat {
    /// What the log calls the loop ("the gate's watch").
    name: &'static str,
    /// When it last checked in ([`now_ms`]).
    last_ms: AtomicU64,
}

/// One loop's heartbeat. Dropped (the loop ended), it no longer counts.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    beat: Option<Arc<Beat>>,
    /// How often it beats while the loop waits.
    every: Duration,
}

/// A loop that has not checked in for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub name: &'static str,
    pub silent_for: Duration,
}

impl Liveness {
    /// Registers a loop called `name` (checked in as of now), which beats
    /// every `every` while it waits.
    pub fn register(&self, name: &'static str, every: Duration) -> Heartbeat {
        let beat = Arc::new(Beat {
            name,
            last_ms: AtomicU64::new(now_ms()),
        });
        let mut loops = self.loops();
        loops.retain(|l| l.strong_count() > 0);
        loops.push(Arc::downgrade(&beat));
        Heartbeat {
            beat: Some(beat),
            every,
        }
    }

    /// The loops still running that have not checked in within `within`.
    pub fn stale(&self, within: Duration) -> Vec<Stale> {
        let now = now_ms();
        let within = within.as_millis() as u64;
        self.loops()
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|beat| {
                let silent = now.saturating_sub(beat.last_ms.load(Ordering::Relaxed));
                (silent > within).then(|| Stale {
                    name: beat.name,
                    silent_for: Duration::from_millis(silent),
                })
            })
            .collect()
    }

    fn loops(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Beat>>> {
        self.loops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Heartbeat {
    /// A heartbeat nobody listens to (no watchdog): free.
    pub fn none() -> Self {
        Self {
            beat: None,
            every: Duration::ZERO,
        }
    }

    /// The loop checks in.
    pub fn beat(&self) {
        if let Some(beat) = &self.beat {
            beat.last_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Runs `work` (a loop's run, or one of its waits) in the caller's
    /// task, checking in now and every half interval for as long as the
    /// task is polled. A `work` that blocks its thread blocks the beats
    /// with it: that is what the watchdog is to notice.
    pub async fn during<F: Future>(&self, work: F) -> F::Output {
        if self.beat.is_none() {
            return work.await;
        }
        let work = std::pin::pin!(work);
        let mut work = work;
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                _ = ticks.tick() => self.beat(),
            }
        }
    }
}

/// Milliseconds on the monotonic clock, from the first call in the
/// process.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop that waits in an `.await` checks in meanwhile; one whose
    /// thread is blocked does not, and is named with how long it has been
    /// silent; a loop that ended no longer counts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_loops_check_in_and_blocked_ones_do_not() {
        let liveness = Arc::new(Liveness::default());
        let every = Duration::from_millis(50);
        let waiting = liveness.register("the waiting loop", every);
        let blocked = liveness.register("the blocked loop", every);
        let waits = tokio::spawn(async move {
            waiting
                .during(tokio::time::sleep(Duration::from_millis(600)))
                .await
        });
        let blocks = tokio::spawn(async move {
            blocked
                .during(async { std::thread::sleep(Duration::from_millis(600)) })
                .await;
            blocked
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let stale = liveness.stale(Duration::from_millis(200));
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].name, "the blocked loop");
        assert!(stale[0].silent_for >= Duration::from_millis(300));
        waits.await.unwrap();
        let blocked = blocks.await.unwrap();
        // The blocked loop goes on: its next step checks in.
        blocked.beat();
        assert!(liveness.stale(Duration::from_millis(200)).is_empty());
        drop(blocked);
        std::thread::sleep(Duration::from_millis(300));
        // Both ended: nothing to wait for.
        assert!(liveness.stale(Duration::from_millis(200)).is_empty());
        assert!(liveness.loops().iter().all(|l| l.strong_count() == 0));
    }

    #[test]
    fn a_heartbeat_without_watchdog_is_free() {
        let none = Heartbeat::none();
        none.beat();
        let out = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(none.during(async { 7 }));
        assert_eq!(out, 7);
    }
}
