//! Prometheus's text exposition format, version 0.0.4 (what Prometheus,
//! node-exporter's textfile collector and `promtool check metrics` read):
//! per family a `# HELP` and a `# TYPE` line, then its samples, one a
//! line, `name{label="value",...} value`.
//!
//! The names here are the program's own, never a peer's: a name or label
//! that breaks the format's rules is a bug, and panics (the tests render
//! every family). Label values and help texts are escaped as the format
//! says: `\\`, `\"` (label values only) and `\n`.

use std::{collections::HashSet, fmt::Write};

/// What the page is served as.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (from the process's start); named `..._total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// A sample's value: a count, written exactly, or a measure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Measure(f64),
}

impl From<u64> for Value {
    fn from(count: u64) -> Self {
        Self::Count(count)
    }
}

impl From<f64> for Value {
    fn from(measure: f64) -> Self {
        Self::Measure(measure)
    }
}

impl From<bool> for Value {
    fn from(yes: bool) -> Self {
        Self::Count(u64::from(yes))
    }
}

/// A page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    families: HashSet<String>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the family `name`: its HELP and TYPE lines. A family is
    /// written once per page, and a counter's name ends in `_total`.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        assert!(is_metric_name(name), "`{name}` is no metric name");
        assert!(
            (kind == Kind::Counter) == name.ends_with("_total"),
            "`{name}`: a counter's name, and only a counter's, ends in _total"
        );
        assert!(
            self.families.insert(name.to_owned()),
            "the family `{name}` is written twice"
        );
        let _ = writeln!(self.text, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.word());
        Family {
            out: self,
            name: name.to_owned(),
        }
    }

    /// The page.
    pub fn into_text(self) -> String {
        self.text
    }
}

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut Exposition,
    name: String,
}

impl Family<'_> {
    /// One sample, with `labels` (none for a family of one).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        let text = &mut self.out.text;
        text.push_str(&self.name);
        if !labels.is_empty() {
            text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                assert!(is_label_name(label), "`{label}` is no label name");
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{label}=\"{}\"", escape(value, true));
            }
            text.push('}');
        }
        text.push(' ');
        match value.into() {
            Value::Count(count) => {
                let _ = write!(text, "{count}");
            }
            Value::Measure(m) if m.is_nan() => text.push_str("NaN"),
            Value::Measure(m) if m.is_infinite() => {
                text.push_str(if m > 0.0 { "+Inf" } else { "-Inf" })
            }
            Value::Measure(m) => {
                let _ = write!(text, "{m}");
            }
        }
        text.push('\n');
        self
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not beginning with `__` (kept for
/// Prometheus's own).
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A help text (`quotes` false) or a label value (`quotes` true) as the
/// format writes it.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_are_written_as_the_format_says() {
        let mut page = Exposition::new();
        page.family("smtp_gate_things_total", Kind::Counter, "Things, counted.")
            .sample(&[("kind", "a")], 3u64)
            .sample(&[("kind", "b"), ("size", "big")], u64::MAX);
        page.family("smtp_gate_temperature_celsius", Kind::Gauge, "Warmth.")
            .sample(&[], 21.5)
            .sample(&[("where", "inside")], f64::NAN)
            .sample(&[("where", "sun")], f64::INFINITY)
            .sample(&[("where", "space")], f64::NEG_INFINITY)
            .sample(&[("where", "tiny")], 0.000_001)
            .sample(&[("where", "yes")], true);
        assert_eq!(
            page.into_text(),
            "# HELP smtp_gate_things_total Things, counted.\n\
             # TYPE smtp_gate_things_total counter\n\
             smtp_gate_things_total{kind=\"a\"} 3\n\
             smtp_gate_things_total{kind=\"b\",size=\"big\"} 18446744073709551615\n\
             # HELP smtp_gate_temperature_celsius Warmth.\n\
             # TYPE smtp_gate_temperature_celsius gauge\n\
             smtp_gate_temperature_celsius 21.5\n\
             smtp_gate_temperature_celsius{where=\"inside\"} NaN\n\
             smtp_gate_temperature_celsius{where=\"sun\"} +Inf\n\
             smtp_gate_temperature_celsius{where=\"space\"} -Inf\n\
             smtp_gate_temperature_celsius{where=\"tiny\"} 0.000001\n\
             smtp_gate_temperature_celsius{where=\"yes\"} 1\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut page = Exposition::new();
        page.family(
            "smtp_gate_build_info",
            Kind::Gauge,
            "A \\ backslash\nand a \"quote\".",
        )
        .sample(&[("version", "1\"2\\3\n4")], 1u64);
        assert_eq!(
            page.into_text(),
            "# HELP smtp_gate_build_info A \\\\ backslash\\nand a \"quote\".\n\
             # TYPE smtp_gate_build_info gauge\n\
             smtp_gate_build_info{version=\"1\\\"2\\\\3\\n4\"} 1\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(is_metric_name("smtp_gate:x_1"));
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name("smtp-gate"));
        assert!(!is_metric_name(""));
        assert!(is_label_name("outcome"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a:b"));
        assert!(!is_label_name("0a"));
    }

    #[test]
    #[should_panic(expected = "ends in _total")]
    fn a_counter_without_total_is_refused() {
        Exposition::new().family("smtp_gate_things", Kind::Counter, "x");
    }

    #[test]
    #[should_panic(expected = "ends in _total")]
    fn a_gauge_with_total_is_refused() {
        Exposition::new().family("smtp_gate_things_total", Kind::Gauge, "x");
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_is_written_once() {
        let mut page = Exposition::new();
        page.family("smtp_gate_a", Kind::Gauge, "x");
        page.family("smtp_gate_a", Kind::Gauge, "x");
    }
}
