//! The agent's grant lines: each grant (and revoke) it applies is logged
//! in the format of every grant line (pop3/src/grant_log.rs), `source=bus`:
//!
//! ```text
//! grant source=bus addr=192.0.2.7 origin=pop1.example.net expires=2025-12-01T10:15:00.250Z
//! grant source=bus addr=192.0.2.8 from=keys expires=2026-12-01T10:12:31.007Z
//! revoke source=bus addr=192.0.2.7 origin=pop1.example.net
//! ```
//!
//! `origin` is the publishing host as its entry names it (escaped, as
//! every value); a grant loaded from the keys has none (`from=keys`).
//! `expires` is when the grant ends on this edge (UTC, after the clamp to
//! the window). An edge sees every login of every POP3 host, which logs
//! each one itself: at most [`LINES`] lines per [`INTERVAL`] are written;
//! past that they are counted, and once the interval is over one line
//! says how many were held back
//! (`grant-lines-held-back source=bus count=N per=10s`). The status file
//! counts every grant.

use std::{
    net::IpAddr,
    time::{Duration, Instant, UNIX_EPOCH},
};

use pop3::{
    grant_log::{grant_line, GrantFields, GrantSource},
    log_text::LogText,
};

/// Lines per interval.
pub const LINES: u32 = 100;
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Where an applied change came from.
#[derive(Clone, Copy, Debug)]
pub enum From<'a> {
    /// A stream entry, published by `origin`.
    Entry { origin: &'a str },
    /// The keys (a full load).
    Keys,
}

/// The budget of grant lines.
#[derive(Debug)]
pub struct GrantLines {
    lines: u32,
    interval: Duration,
    since: Option<Instant>,
    written: u32,
    held_back: u64,
}

impl Default for GrantLines {
    fn default() -> Self {
        Self::new(LINES, INTERVAL)
    }
}

impl GrantLines {
    pub fn new(lines: u32, interval: Duration) -> Self {
        Self {
            lines,
            interval,
            since: None,
            written: 0,
            held_back: 0,
        }
    }

    /// The lines to write now for a grant of `addr` applied for
    /// `lifetime` at `now` (`now_ms` on the wall clock): the held-back
    /// count of the interval that ended, if any, then the grant's line if
    /// the budget allows.
    pub fn grant(
        &mut self,
        now: Instant,
        now_ms: u64,
        addr: IpAddr,
        from: From<'_>,
        lifetime: Duration,
    ) -> Vec<String> {
        let mut out = self.flush(now).into_iter().collect::<Vec<_>>();
        if self.allows(now) {
            let expires = humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(now_ms) + lifetime,
            )
            .to_string();
            let fields: Vec<(&str, &str)> = match from {
                From::Entry { origin } => vec![("origin", origin), ("expires", &expires)],
                From::Keys => vec![("from", "keys"), ("expires", &expires)],
            };
            out.push(grant_line(
                GrantSource::Bus,
                addr,
                &GrantFields {
                    user: None,
                    extra: &fields,
                },
            ));
        }
        out
    }

    /// The lines to write now for a revoke of `addr`.
    pub fn revoke(&mut self, now: Instant, addr: IpAddr, from: From<'_>) -> Vec<String> {
        let mut out = self.flush(now).into_iter().collect::<Vec<_>>();
        if self.allows(now) {
            out.push(match from {
                From::Entry { origin } => format!(
                    "revoke source=bus addr={addr} origin={}",
                    LogText::of(origin)
                ),
                From::Keys => format!("revoke source=bus addr={addr} from=keys"),
            });
        }
        out
    }

    /// The held-back count of an interval that is over (once), if lines
    /// were held back in it.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let over = self
            .since
            .is_some_and(|since| now.duration_since(since) >= self.interval);
        if !over {
            return None;
        }
        let held_back = std::mem::take(&mut self.held_back);
        self.since = None;
        self.written = 0;
        (held_back > 0).then(|| {
            format!(
                "grant-lines-held-back source=bus count={held_back} per={}s",
                self.interval.as_secs()
            )
        })
    }

    fn allows(&mut self, now: Instant) -> bool {
        if self.since.is_none() {
            self.since = Some(now);
            self.written = 0;
        }
        if self.written < self.lines {
            self.written += 1;
            true
        } else {
            self.held_back += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "192.0.2.7";

    #[test]
    fn the_lines_are_grant_lines_of_source_bus() {
        let mut lines = GrantLines::default();
        let now = Instant::now();
        // 2025-12-01T10:15:00Z
        let now_ms = 1_764_584_100_000;
        let addr: IpAddr = ADDR.parse().unwrap();
        assert_eq!(
            lines.grant(
                now,
                now_ms,
                addr,
                From::Entry { origin: "pop1 x\n" },
                Duration::from_millis(250)
            ),
            ["grant source=bus addr=192.0.2.7 origin=pop1\\x20x\\n \
              expires=2025-12-01T10:15:00.250Z"]
        );
        assert_eq!(
            lines.grant(now, now_ms, addr, From::Keys, Duration::from_secs(60)),
            ["grant source=bus addr=192.0.2.7 from=keys expires=2025-12-01T10:16:00.000Z"]
        );
        assert_eq!(
            lines.revoke(now, addr, From::Entry { origin: "pop1" }),
            ["revoke source=bus addr=192.0.2.7 origin=pop1"]
        );
    }

    #[test]
    fn past_the_budget_lines_are_counted_and_the_count_said_once() {
        let mut lines = GrantLines::new(3, Duration::from_secs(10));
        let start = Instant::now();
        let addr: IpAddr = ADDR.parse().unwrap();
        let written: usize = (0..10)
            .map(|_| {
                lines
                    .grant(start, 0, addr, From::Keys, Duration::from_secs(1))
                    .len()
            })
            .sum();
        assert_eq!(written, 3);
        assert_eq!(lines.flush(start + Duration::from_secs(9)), None);
        let later = start + Duration::from_secs(10);
        assert_eq!(
            lines.flush(later).as_deref(),
            Some("grant-lines-held-back source=bus count=7 per=10s")
        );
        assert_eq!(lines.flush(later + Duration::from_secs(20)), None);
        // A new interval, a new budget; the count comes before the line.
        for _ in 0..4 {
            lines.revoke(later, addr, From::Keys);
        }
        let next = lines.grant(
            later + Duration::from_secs(10),
            0,
            addr,
            From::Keys,
            Duration::from_secs(1),
        );
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(next[0], "grant-lines-held-back source=bus count=1 per=10s");
    }
}
