//! What the accept loop does when `accept` fails: out of file descriptors
//! (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM) the next attempt
//! fails the same way at once, so it backs off (100 ms, doubling up to
//! 1 s) instead of spinning. The log gets one line when a burst of
//! failures begins and one with the count when it ends (a reminder a
//! minute while it lasts), not a line per failure: hundreds of lines a
//! minute would bury everything else.

use std::{io, time::Duration};

use log::warn;
use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// While a burst lasts, how often it is reported again.
const REMINDER_EVERY: Duration = Duration::from_secs(60);

/// The accept loop's failures since the last success.
#[derive(Default)]
pub struct AcceptErrors {
    burst: Option<Burst>,
}

struct Burst {
    failures: u64,
    began: Instant,
    last_report: Instant,
    delay: Duration,
    /// The error that began the burst.
    first: String,
}

impl AcceptErrors {
    /// Notes a failure; returns how long to wait before the next accept.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        let now = Instant::now();
        let burst = self.burst.get_or_insert_with(|| {
            warn!(
                "accept failed: {error}; backing off (up to {MAX_DELAY:?} between attempts), \
                 failures are counted until accepting works again"
            );
            Burst {
                failures: 0,
                began: now,
                last_report: now,
                delay: FIRST_DELAY / 2,
                first: error.to_string(),
            }
        });
        burst.failures += 1;
        burst.delay = (burst.delay * 2).min(MAX_DELAY);
        if now.duration_since(burst.last_report) >= REMINDER_EVERY {
            burst.last_report = now;
            warn!(
                "accept still failing: {} failures in {:.0?}, the last: {error}",
                burst.failures,
                now.duration_since(burst.began)
            );
        }
        burst.delay
    }

    /// Notes a success: ends a burst, and reports it.
    pub fn succeeded(&mut self) {
        if let Some(burst) = self.burst.take() {
            warn!(
                "accept works again after {} failures in {:.1?} (the first: {})",
                burst.failures,
                burst.began.elapsed(),
                burst.first
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_a_second_and_resets() {
        let mut errors = AcceptErrors::default();
        let emfile = io::Error::from_raw_os_error(24);
        let delays: Vec<u128> = (0..6).map(|_| errors.failed(&emfile).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        errors.succeeded();
        assert_eq!(errors.failed(&emfile), FIRST_DELAY);
    }
}
