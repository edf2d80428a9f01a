//! Durations as operators type them: `900`, `900s`, `15m`, `1h 30m`,
//! `2s`, `500ms`. A bare number is seconds, as in Postfix's time units.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};

pub fn parse_duration(text: &str) -> Result<Duration> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        bail!("bad duration ``: expected e.g. 900s, 15m, 1h");
    }
    let duration = if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = trimmed
            .parse()
            .map_err(|_| anyhow!("bad duration `{text}`: number too large"))?;
        Duration::from_secs(secs)
    } else {
        humantime::parse_duration(trimmed)
            .map_err(|e| anyhow!("bad duration `{text}`: {e} (expected e.g. 900s, 15m, 1h)"))?
    };
    if duration.is_zero() {
        bail!("bad duration `{text}`: must be longer than zero");
    }
    // Stamps are u64 nanoseconds; a century is plenty and far from overflow.
    if duration > Duration::from_secs(100 * 365 * 86_400) {
        bail!("bad duration `{text}`: longer than a century");
    }
    Ok(duration)
}

/// Formats a duration the way `parse_duration` reads it, to the second.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse_duration("900").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("900s").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn refuses_nonsense_naming_it() {
        for bad in [
            "",
            "0",
            "0s",
            "-5s",
            "15 minutes ago",
            "abc",
            "5x",
            "99999999999999999999",
        ] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("bad duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h 2m 5s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    }
}
