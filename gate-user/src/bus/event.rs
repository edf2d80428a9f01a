//! One entry of the events stream: what a publisher writes with XADD and
//! what an edge reads back. An entry is a list of field/value pairs:
//!
//! ```text
//! op grant  addr 192.0.2.7  expires 1764547200000  issued 1764546300000  origin pop1
//! op revoke addr 192.0.2.7  issued 1764546400000  origin pop1
//! ```
//!
//! Times are wall-clock milliseconds since the Unix epoch. The engine is
//! trusted to deliver, not to be well-formed: an edge reads every entry
//! strictly (known fields once each, canonical numbers and addresses, an
//! origin of plain text) and skips and counts what does not parse.

use std::{fmt, net::IpAddr};

use crate::addr::normalize;

/// What an entry does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The address may connect until `expires_ms`.
    Grant { expires_ms: u64 },
    /// The address's grant is taken away.
    Revoke,
}

/// One entry of the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub op: Op,
    pub addr: IpAddr,
    /// When the publisher wrote it.
    pub issued_ms: u64,
    /// The publisher's host name, for the log.
    pub origin: String,
}

/// Why an entry was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadEvent(pub String);

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest origin: a host name.
const LONGEST_ORIGIN: usize = 255;
/// The most fields an entry may have (it has at most five).
const MOST_FIELDS: usize = 16;

impl Event {
    /// The entry's fields for XADD.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = Vec::with_capacity(5);
        match self.op {
            Op::Grant { expires_ms } => {
                fields.push(("op", "grant".to_owned()));
                fields.push(("addr", normalize(self.addr).to_string()));
                fields.push(("expires", expires_ms.to_string()));
            }
            Op::Revoke => {
                fields.push(("op", "revoke".to_owned()));
                fields.push(("addr", normalize(self.addr).to_string()));
            }
        }
        fields.push(("issued", self.issued_ms.to_string()));
        fields.push(("origin", self.origin.clone()));
        fields
    }

    /// Reads an entry's fields, as the engine gives them back.
    pub fn parse<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Result<Self, BadEvent> {
        let bad = |why: String| Err(BadEvent(why));
        if fields.len() > MOST_FIELDS {
            return bad(format!("{} fields", fields.len()));
        }
        let mut found: [Option<&str>; 5] = [None; 5];
        const NAMES: [&str; 5] = ["op", "addr", "expires", "issued", "origin"];
        for (name, value) in fields {
            let name = name.as_ref();
            let Some(i) = NAMES.iter().position(|n| n.as_bytes() == name) else {
                return bad(format!("unknown field {}", name.escape_ascii()));
            };
            let Ok(value) = std::str::from_utf8(value.as_ref()) else {
                return bad(format!("field {} is not text", NAMES[i]));
            };
            if found[i].replace(value).is_some() {
                return bad(format!("field {} twice", NAMES[i]));
            }
        }
        let [op, addr, expires, issued, origin] = found;
        let addr = match addr.map(|a| (a, a.parse::<IpAddr>())) {
            Some((text, Ok(addr))) if normalize(addr).to_string() == text => addr,
            Some((text, _)) => {
                return bad(format!("addr {} is not an address", text.escape_debug()))
            }
            None => return bad("no addr".into()),
        };
        let issued_ms = millis("issued", issued)?;
        let op = match (op, expires) {
            (Some("grant"), Some(_)) => Op::Grant {
                expires_ms: millis("expires", expires)?,
            },
            (Some("grant"), None) => return bad("a grant without expires".into()),
            (Some("revoke"), None) => Op::Revoke,
            (Some("revoke"), Some(_)) => return bad("a revoke with expires".into()),
            (Some(other), _) => return bad(format!("op {} is unknown", other.escape_debug())),
            (None, _) => return bad("no op".into()),
        };
        let origin = origin.unwrap_or("");
        if origin.is_empty()
            || origin.len() > LONGEST_ORIGIN
            || !origin.bytes().all(|b| b.is_ascii_graphic())
        {
            return bad(format!(
                "origin {} is not a host name",
                origin.escape_debug()
            ));
        }
        Ok(Self {
            op,
            addr,
            issued_ms,
            origin: origin.to_owned(),
        })
    }
}

/// A time in canonical decimal milliseconds (no sign, no leading zero, no
/// more than u64 holds).
fn millis(name: &str, value: Option<&str>) -> Result<u64, BadEvent> {
    let text = value.ok_or_else(|| BadEvent(format!("no {name}")))?;
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse() {
        Ok(ms) if canonical => Ok(ms),
        _ => Err(BadEvent(format!(
            "{name} {} is not a time",
            text.escape_debug()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Event {
        Event {
            op: Op::Grant {
                expires_ms: 1_764_547_200_000,
            },
            addr: "2001:db8::7".parse().unwrap(),
            issued_ms: 1_764_546_300_000,
            origin: "pop1.example.net".into(),
        }
    }

    #[test]
    fn an_event_reads_back_as_written() {
        for event in [
            grant(),
            Event {
                op: Op::Revoke,
                addr: "192.0.2.7".parse().unwrap(),
                ..grant()
            },
        ] {
            let fields = event.fields();
            assert_eq!(Event::parse(&fields), Ok(event));
        }
    }

    #[test]
    fn a_malformed_entry_is_refused_with_its_reason() {
        type Fields = Vec<(String, String)>;
        type Change = Box<dyn Fn(&mut Fields)>;
        let with = |change: &dyn Fn(&mut Fields)| {
            let mut fields: Fields = grant()
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            change(&mut fields);
            Event::parse(&fields).unwrap_err().0
        };
        let set = |name: &'static str, value: &'static str| {
            move |f: &mut Fields| f.iter_mut().find(|(k, _)| k == name).unwrap().1 = value.into()
        };
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(set("op", "open")), "op"),
            (Box::new(set("addr", "300.1.1.1")), "addr"),
            (Box::new(set("addr", "::ffff:192.0.2.7")), "addr"),
            (Box::new(set("addr", "2001:DB8::7")), "addr"),
            (Box::new(set("expires", "-1")), "expires"),
            (Box::new(set("expires", "018")), "expires"),
            (Box::new(set("expires", "99999999999999999999")), "expires"),
            (Box::new(set("expires", "")), "expires"),
            (Box::new(set("issued", "1e9")), "issued"),
            (Box::new(set("origin", "")), "origin"),
            (Box::new(set("origin", "pop 1")), "origin"),
            (
                Box::new(|f| f.retain(|(k, _)| k != "expires")),
                "without expires",
            ),
            (Box::new(|f| f.retain(|(k, _)| k != "addr")), "no addr"),
            (Box::new(|f| f.push(("op".into(), "grant".into()))), "twice"),
            (
                Box::new(|f| f.push(("x".into(), "1".into()))),
                "unknown field",
            ),
        ];
        for (change, expected) in cases {
            let why = with(&*change);
            assert!(why.contains(expected), "{why} (expected {expected})");
        }
        let binary = [(b"op".to_vec(), b"\xff".to_vec())];
        assert!(Event::parse(&binary).is_err());
        let many: Vec<(String, String)> = (0..17).map(|i| (i.to_string(), String::new())).collect();
        assert!(Event::parse(&many).unwrap_err().0.contains("17 fields"));
    }
}
