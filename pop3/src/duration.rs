//! Durations as operators type them: `900`, `900s`, `15m`, `1h 30m`,
//! `2s`, `500ms`. A bare number is seconds, as in Postfix's time units.
//! The config file and the flags of every smtp-gate command read them so.

use std::{fmt, time::Duration};

/// A duration that cannot be read, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadDuration(String);

impl fmt::Display for BadDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadDuration {}

pub fn parse_duration(text: &str) -> Result<Duration, BadDuration> {
    let bad = |why: String| Err(BadDuration(format!("bad duration `{text}`: {why}")));
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return bad("expected e.g. 900s, 15m, 1h".into());
    }
    let duration = if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        match trimmed.parse() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => return bad("number too large".into()),
        }
    } else {
        match humantime::parse_duration(trimmed) {
            Ok(duration) => duration,
            Err(e) => return bad(format!("{e} (expected e.g. 900s, 15m, 1h)")),
        }
    };
    if duration.is_zero() {
        return bad("must be longer than zero".into());
    }
    // Stamps are u64 nanoseconds; a century is plenty and far from overflow.
    if duration > Duration::from_secs(100 * 365 * 86_400) {
        return bad("longer than a century".into());
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

/// Serde's view of a duration: the text `parse_duration` reads (`#[serde(with
/// = "pop3::duration::text")]`). Written exactly, in nanoseconds, so that
/// it reads back as the same duration.
pub mod text {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}ns", duration.as_nanos()))
    }
}

/// [`text`] for an optional duration (absent: `None`).
pub mod optional_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::text::deserialize(deserializer).map(Some)
    }

    pub fn serialize<S: Serializer>(
        duration: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match duration {
            Some(duration) => super::text::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }
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

    /// Stamps are u64 nanoseconds: a century is the longest duration, to
    /// the second.
    #[test]
    fn a_century_is_the_limit() {
        let century = Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(parse_duration("3153600000").unwrap(), century);
        assert_eq!(parse_duration("36500days").unwrap(), century);
        for longer in ["3153600001", "36500days 1s", "101y"] {
            let err = parse_duration(longer).unwrap_err().to_string();
            assert!(err.contains("longer than a century"), "{longer}: {err}");
        }
    }

    #[test]
    fn serde_optional_text_reads_a_duration_or_nothing() {
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Holder {
            #[serde(default, with = "optional_text")]
            d: Option<Duration>,
        }
        assert_eq!(
            toml::from_str::<Holder>("d = \"15m\"").unwrap(),
            Holder {
                d: Some(Duration::from_secs(900))
            }
        );
        assert_eq!(toml::from_str::<Holder>("").unwrap(), Holder { d: None });
        let err = toml::from_str::<Holder>("d = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than zero"), "{err}");
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(3725)), "1h 2m 5s");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    }

    #[test]
    fn serde_text_reads_back_exactly() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Holder {
            #[serde(with = "text")]
            d: Duration,
        }
        let held = Holder {
            d: Duration::from_millis(1500),
        };
        let written = toml::to_string(&held).unwrap();
        assert_eq!(toml::from_str::<Holder>(&written).unwrap(), held);
        let err = toml::from_str::<Holder>("d = \"5x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad duration `5x`"), "{err}");
    }
}
