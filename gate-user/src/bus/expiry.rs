//! From a published grant's wall-clock expiry to a lifetime on the edge's
//! gate clock. Hosts' wall clocks differ (NTP keeps them within
//! milliseconds; the design tolerates a second), and the gate's clock is
//! not the wall clock at all (jiffies, standing still in suspend), so an
//! edge applies a grant as "granted now, for what is left of it" and
//! never trusts a publisher to say how long that is:
//!
//! - what is left is `expires - now` on the edge's wall clock;
//! - it is never more than the edge's own window, so neither a skewed
//!   clock nor a forged entry makes a grant outlive the window the edge's
//!   operator set (a clock one second ahead on the publisher loses
//!   nothing: its grant is clamped to exactly the window);
//! - a grant already over, or over within a millisecond, is not applied.

use std::time::Duration;

/// The lifetime to apply a grant with, or `None` if it is over.
pub fn lifetime(expires_ms: u64, now_ms: u64, window: Duration) -> Option<Duration> {
    let left = Duration::from_millis(expires_ms.checked_sub(now_ms)?);
    (left >= Duration::from_millis(1)).then(|| left.min(window))
}

/// The expiry a publisher writes for a grant made at `now_ms` under
/// `window`.
pub fn expiry(now_ms: u64, window: Duration) -> u64 {
    now_ms.saturating_add(window.as_millis().min(u64::MAX as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(900);
    const NOW: u64 = 1_764_546_300_000;

    #[test]
    fn what_is_left_is_applied_never_more_than_the_window() {
        let made_now = expiry(NOW, WINDOW);
        assert_eq!(lifetime(made_now, NOW, WINDOW), Some(WINDOW));
        // Published 10 s ago.
        assert_eq!(
            lifetime(made_now, NOW + 10_000, WINDOW),
            Some(WINDOW - Duration::from_secs(10))
        );
        // A publisher whose clock is a second ahead, or an entry claiming
        // a day: the window.
        assert_eq!(lifetime(made_now + 1000, NOW, WINDOW), Some(WINDOW));
        assert_eq!(lifetime(NOW + 86_400_000, NOW, WINDOW), Some(WINDOW));
        assert_eq!(lifetime(u64::MAX, NOW, WINDOW), Some(WINDOW));
    }

    #[test]
    fn a_grant_that_is_over_is_not_applied() {
        assert_eq!(lifetime(NOW, NOW, WINDOW), None);
        assert_eq!(lifetime(NOW - 1, NOW, WINDOW), None);
        assert_eq!(lifetime(0, NOW, WINDOW), None);
        assert_eq!(
            lifetime(NOW + 1, NOW, WINDOW),
            Some(Duration::from_millis(1))
        );
        assert_eq!(expiry(u64::MAX - 5, WINDOW), u64::MAX);
    }
}
