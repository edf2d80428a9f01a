//! A bound on the log lines a hook writes for what a peer sends (a
//! malformed request, a refusal): whoever can connect must not be able to
//! fill the disk or drown the lines that matter. As the kernel's
//! printk_ratelimit: so many lines per interval, then a count of those
//! held back when the next interval begins. The counters behind the
//! `statistics` lines still count every one.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use log::warn;
use tokio::time::Instant;

pub struct LogBudget {
    /// What the lines are, in the "held back" line.
    what: &'static str,
    lines: u32,
    interval: Duration,
    spent: Mutex<Spent>,
}

struct Spent {
    since: Option<Instant>,
    lines: u32,
    held_back: u64,
}

impl LogBudget {
    /// `lines` lines of `what` per `interval`.
    pub const fn new(what: &'static str, lines: u32, interval: Duration) -> Self {
        Self {
            what,
            lines,
            interval,
            spent: Mutex::new(Spent {
                since: None,
                lines: 0,
                held_back: 0,
            }),
        }
    }

    /// True if one more line may be written now. The first line of an
    /// interval after lines were held back is preceded by their count.
    pub fn allows(&self) -> bool {
        let now = Instant::now();
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        let interval_over = spent
            .since
            .is_none_or(|since| now.duration_since(since) >= self.interval);
        if interval_over {
            if spent.held_back > 0 {
                warn!(
                    "{} {} lines held back (at most {} per {}s are written)",
                    spent.held_back,
                    self.what,
                    self.lines,
                    self.interval.as_secs()
                );
            }
            *spent = Spent {
                since: Some(now),
                lines: 0,
                held_back: 0,
            };
        }
        if spent.lines < self.lines {
            spent.lines += 1;
            true
        } else {
            spent.held_back += 1;
            false
        }
    }

    /// Lines held back in the current interval.
    #[cfg(test)]
    fn held_back(&self) -> u64 {
        self.spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_past_the_budget_are_held_back_until_the_next_interval() {
        let budget = LogBudget::new("test", 3, Duration::from_millis(200));
        let allowed = (0..10).filter(|_| budget.allows()).count();
        assert_eq!(allowed, 3);
        assert_eq!(budget.held_back(), 7);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(budget.allows(), "a new interval has a new budget");
        assert_eq!(budget.held_back(), 0, "the count was written and reset");
    }
}
