//! What an edge reads from the engine, taken apart without trusting it:
//! stream entry ids, and the replies of XINFO STREAM, XREAD and SCAN as
//! the client hands them over (RESP2 arrays, or RESP3 maps when the URL
//! asks for `protocol=resp3`).
//!
//! A reply of the wrong shape is an error for the whole command (the
//! engine is not one we understand, or the events key is not a stream);
//! a well-formed entry whose fields are wrong is only that entry's
//! problem: it keeps its id, so the edge can step past it.

use std::{fmt, str::FromStr};

use redis::Value;

/// An entry's id: `<milliseconds>-<sequence>`, ordered as the stream
/// orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// `0-0`: before every entry.
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
    /// The last id a stream can have: once an entry has it, the engine
    /// refuses every further XADD (`ERR The stream has exhausted the last
    /// possible ID`).
    pub const MAX: Self = Self {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// Reads `<ms>-<seq>` strictly: canonical decimal numbers only.
    pub fn parse(text: &[u8]) -> Option<Self> {
        // Two u64 and a dash.
        if text.len() > 41 {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: canonical_u64(ms)?,
            seq: canonical_u64(seq)?,
        })
    }
}

/// A decimal number as Redis writes one: digits, no sign, no leading zero.
fn canonical_u64(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text.as_bytes())
            .ok_or_else(|| format!("`{}` is not a stream entry id", text.escape_debug()))
    }
}

/// What XINFO STREAM says of the events stream, as far as an edge needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The id of the last entry ever added (also when it was trimmed).
    pub last_generated: StreamId,
    /// The oldest entry still there; `None` when the stream is empty.
    pub first: Option<StreamId>,
    /// Entries in the stream now, and ever added to it (Redis >= 7.0;
    /// `None` before): equal, no entry was ever trimmed or deleted.
    pub length: Option<u64>,
    pub entries_added: Option<u64>,
    /// The highest id ever deleted or trimmed from the stream (Redis >=
    /// 7.0; `None` before): above a position, an entry after it was lost.
    pub max_deleted: Option<StreamId>,
}

impl StreamInfo {
    /// True if the engine says no entry was ever taken out of the stream.
    pub fn never_trimmed(&self) -> bool {
        matches!((self.length, self.entries_added), (Some(now), Some(ever)) if now == ever)
    }
}

/// A reply the edge cannot read: the engine is not talking as Redis does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadReply {}

fn bad<T>(why: impl Into<String>) -> Result<T, BadReply> {
    Err(BadReply(why.into()))
}

/// The octets of a string reply.
pub fn octets(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

/// A reply of name/value pairs: a flat array (RESP2) or a map (RESP3).
fn pairs(value: Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs),
        Value::Array(items) if items.len() % 2 == 0 => {
            let mut items = items.into_iter();
            let mut pairs = Vec::with_capacity(items.len() / 2);
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((name, value));
            }
            Some(pairs)
        }
        _ => None,
    }
}

/// Reads XINFO STREAM's reply.
pub fn parse_xinfo(reply: Value) -> Result<StreamInfo, BadReply> {
    let Some(pairs) = pairs(reply) else {
        return bad("XINFO STREAM did not answer name/value pairs");
    };
    let mut last_generated = None;
    let mut first = None;
    let (mut length, mut entries_added) = (None, None);
    let mut max_deleted = None;
    for (name, value) in pairs {
        let count = match value {
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        };
        match octets(&name) {
            Some(b"length") => length = count,
            Some(b"entries-added") => entries_added = count,
            Some(b"last-generated-id") => {
                last_generated = octets(&value).and_then(StreamId::parse);
                if last_generated.is_none() {
                    return bad("XINFO STREAM: last-generated-id is not an entry id");
                }
            }
            Some(b"max-deleted-entry-id") => {
                max_deleted = octets(&value).and_then(StreamId::parse);
                if max_deleted.is_none() {
                    return bad("XINFO STREAM: max-deleted-entry-id is not an entry id");
                }
            }
            Some(b"first-entry") => {
                first = match value {
                    Value::Nil => None,
                    Value::Array(entry) => match entry.first().and_then(octets) {
                        Some(id) => Some(StreamId::parse(id).ok_or_else(|| {
                            BadReply("XINFO STREAM: first-entry has no entry id".into())
                        })?),
                        None => return bad("XINFO STREAM: first-entry has no entry id"),
                    },
                    _ => return bad("XINFO STREAM: first-entry is not an entry"),
                }
            }
            _ => {}
        }
    }
    match last_generated {
        Some(last_generated) => Ok(StreamInfo {
            last_generated,
            first,
            length,
            entries_added,
            max_deleted,
        }),
        None => bad("XINFO STREAM: no last-generated-id"),
    }
}

/// An entry's fields: name and value, in the order the engine gave them.
pub type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry as XREAD gave it: its id, and its fields or why they
/// cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    pub id: StreamId,
    pub fields: Result<Fields, String>,
}

/// Reads XRANGE's reply: the entries, oldest first.
pub fn parse_xrange(reply: Value) -> Result<Vec<RawEntry>, BadReply> {
    match reply {
        Value::Array(entries) => entries.into_iter().map(raw_entry).collect(),
        _ => bad("XRANGE did not answer a list of entries"),
    }
}

/// Reads XREAD's reply for the one stream `stream`: no entries on a
/// timeout (nil).
pub fn parse_xread(reply: Value, stream: &str) -> Result<Vec<RawEntry>, BadReply> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[name, entries], ...]
        Value::Array(streams) => {
            let mut pairs = Vec::with_capacity(streams.len());
            for item in streams {
                match item {
                    Value::Array(pair) if pair.len() == 2 => {
                        let mut pair = pair.into_iter();
                        if let (Some(name), Some(entries)) = (pair.next(), pair.next()) {
                            pairs.push((name, entries));
                        }
                    }
                    _ => return bad("XREAD: a stream is not a [name, entries] pair"),
                }
            }
            pairs
        }
        // RESP3: {name: entries, ...}
        Value::Map(pairs) => pairs,
        _ => return bad("XREAD did not answer a list of streams"),
    };
    let mut out = Vec::new();
    for (name, entries) in streams {
        if octets(&name) != Some(stream.as_bytes()) {
            return bad("XREAD answered for a stream it was not asked for");
        }
        let Value::Array(entries) = entries else {
            return bad("XREAD: the entries are not a list");
        };
        out.reserve(entries.len());
        for entry in entries {
            out.push(raw_entry(entry)?);
        }
    }
    Ok(out)
}

fn raw_entry(entry: Value) -> Result<RawEntry, BadReply> {
    let Value::Array(parts) = entry else {
        return bad("an entry is not an [id, fields] pair");
    };
    let mut parts = parts.into_iter();
    let (Some(id), fields, None) = (parts.next(), parts.next(), parts.next()) else {
        return bad("an entry is not an [id, fields] pair");
    };
    // Without a readable id the edge could not step past the entry: the
    // whole reply is refused (Redis itself never writes one).
    let Some(id) = octets(&id).and_then(StreamId::parse) else {
        return bad("an entry has no entry id");
    };
    Ok(RawEntry {
        id,
        fields: fields_of(fields),
    })
}

fn fields_of(fields: Option<Value>) -> Result<Fields, String> {
    let items = match fields {
        Some(Value::Array(items)) if items.len() % 2 == 0 => items,
        Some(Value::Array(items)) => return Err(format!("{} field names and values", items.len())),
        Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Err("no fields".into()),
    };
    let mut items = items.into_iter();
    let mut out = Vec::with_capacity(items.len() / 2);
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        match (into_octets(name), into_octets(value)) {
            (Some(name), Some(value)) => out.push((name, value)),
            _ => return Err("a field is not a string".into()),
        }
    }
    Ok(out)
}

fn into_octets(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// Reads SCAN's reply: the next cursor (0 at the end) and the keys.
pub fn parse_scan(reply: Value) -> Result<(u64, Vec<Vec<u8>>), BadReply> {
    let Value::Array(parts) = reply else {
        return bad("SCAN did not answer [cursor, keys]");
    };
    let mut parts = parts.into_iter();
    let (Some(cursor), Some(Value::Array(keys)), None) = (parts.next(), parts.next(), parts.next())
    else {
        return bad("SCAN did not answer [cursor, keys]");
    };
    let Some(cursor) = octets(&cursor)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(canonical_u64)
    else {
        return bad("SCAN: the cursor is not a number");
    };
    let keys = keys
        .into_iter()
        .map(|key| into_octets(key).ok_or_else(|| BadReply("SCAN: a key is not a string".into())))
        .collect::<Result<_, _>>()?;
    Ok((cursor, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn id(text: &str) -> StreamId {
        text.parse().unwrap()
    }

    #[test]
    fn ids_are_read_strictly_and_ordered_as_the_stream() {
        assert_eq!(
            id("1764546300000-3"),
            StreamId {
                ms: 1_764_546_300_000,
                seq: 3
            }
        );
        assert_eq!(id("0-0"), StreamId::ZERO);
        assert!(id("5-10") > id("5-9"));
        assert!(id("6-0") > id("5-99"));
        assert_eq!(
            id("18446744073709551615-18446744073709551615").to_string(),
            "18446744073709551615-18446744073709551615"
        );
        for bad in [
            "",
            "5",
            "5-",
            "-5",
            "05-1",
            "5-01",
            "+5-1",
            "5-1-2",
            "5 -1",
            "18446744073709551616-0",
            "a-b",
            "5-1\n",
        ] {
            assert!(StreamId::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            s(id),
            Value::Array(fields.iter().flat_map(|(k, v)| [s(k), s(v)]).collect()),
        ])
    }

    #[test]
    fn xread_entries_keep_their_ids_even_when_their_fields_are_wrong() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("smtp-gate:events"),
            Value::Array(vec![
                entry("1-0", &[("op", "revoke"), ("addr", "192.0.2.7")]),
                Value::Array(vec![s("2-0"), Value::Array(vec![s("op")])]),
                Value::Array(vec![s("3-0"), Value::Nil]),
                Value::Array(vec![s("4-0"), Value::Array(vec![s("op"), Value::Int(5)])]),
            ]),
        ])]);
        let entries = parse_xread(reply, "smtp-gate:events").unwrap();
        let ids: Vec<String> = entries.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["1-0", "2-0", "3-0", "4-0"]);
        assert_eq!(
            entries[0].fields,
            Ok(vec![
                (b"op".to_vec(), b"revoke".to_vec()),
                (b"addr".to_vec(), b"192.0.2.7".to_vec())
            ])
        );
        assert!(entries[1..].iter().all(|e| e.fields.is_err()));
        // RESP3's map, and a timeout's nil.
        let resp3 = Value::Map(vec![(
            s("smtp-gate:events"),
            Value::Array(vec![entry("9-1", &[("op", "x")])]),
        )]);
        assert_eq!(
            parse_xread(resp3, "smtp-gate:events").unwrap()[0].id,
            id("9-1")
        );
        assert_eq!(parse_xread(Value::Nil, "smtp-gate:events"), Ok(Vec::new()));
    }

    #[test]
    fn an_xread_reply_of_the_wrong_shape_is_refused_whole() {
        let stream = |entries: Vec<Value>| {
            Value::Array(vec![Value::Array(vec![
                s("smtp-gate:events"),
                Value::Array(entries),
            ])])
        };
        for reply in [
            Value::Int(3),
            Value::Array(vec![s("smtp-gate:events")]),
            Value::Array(vec![Value::Array(vec![s("other"), Value::Array(vec![])])]),
            stream(vec![entry("x-1", &[])]),
            stream(vec![Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![]),
            ])]),
            stream(vec![s("1-0")]),
            stream(vec![Value::Array(vec![
                s("1-0"),
                Value::Array(vec![]),
                s("extra"),
            ])]),
        ] {
            assert!(
                parse_xread(reply.clone(), "smtp-gate:events").is_err(),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn xrange_gives_the_entries_or_none() {
        let reply = Value::Array(vec![entry("5-1", &[("op", "revoke")])]);
        let entries = parse_xrange(reply).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, id("5-1"));
        assert_eq!(parse_xrange(Value::Array(vec![])), Ok(Vec::new()));
        for bad in [
            Value::Nil,
            Value::Array(vec![s("5-1")]),
            Value::Array(vec![entry("x", &[])]),
        ] {
            assert!(parse_xrange(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn xinfo_gives_the_first_and_the_last_generated_id() {
        let reply = |first: Value| {
            Value::Array(vec![
                s("length"),
                Value::Int(2),
                s("last-generated-id"),
                s("7-1"),
                s("first-entry"),
                first,
                s("last-entry"),
                entry("7-1", &[]),
            ])
        };
        assert_eq!(
            parse_xinfo(reply(entry("5-0", &[("op", "grant")]))),
            Ok(StreamInfo {
                last_generated: id("7-1"),
                first: Some(id("5-0")),
                length: Some(2),
                entries_added: None,
                max_deleted: None,
            })
        );
        let empty = parse_xinfo(reply(Value::Nil)).unwrap();
        assert_eq!((empty.last_generated, empty.first), (id("7-1"), None));
        // Redis 7 counts what was ever added.
        let mut seven = reply(Value::Nil);
        if let Value::Array(items) = &mut seven {
            items.extend([
                s("entries-added"),
                Value::Int(2),
                s("max-deleted-entry-id"),
                s("4-3"),
            ]);
        }
        let seven = parse_xinfo(seven).unwrap();
        assert_eq!(seven.entries_added, Some(2));
        assert_eq!(seven.max_deleted, Some(id("4-3")));
        assert!(seven.never_trimmed());
        assert!(!empty.never_trimmed(), "unknown without entries-added");
        assert!(parse_xinfo(reply(s("5-0"))).is_err());
        assert!(parse_xinfo(Value::Array(vec![
            s("last-generated-id"),
            s("3-0"),
            s("max-deleted-entry-id"),
            s("bad")
        ]))
        .is_err());
        assert!(parse_xinfo(Value::Array(vec![s("length"), Value::Int(0)])).is_err());
        assert!(parse_xinfo(Value::Array(vec![s("last-generated-id"), s("bad")])).is_err());
        let resp3 = Value::Map(vec![(s("last-generated-id"), s("3-0"))]);
        assert_eq!(parse_xinfo(resp3).unwrap().last_generated, id("3-0"));
    }

    #[test]
    fn scan_gives_the_cursor_and_the_keys() {
        let reply = Value::Array(vec![s("17"), Value::Array(vec![s("a"), s("b")])]);
        assert_eq!(
            parse_scan(reply),
            Ok((17, vec![b"a".to_vec(), b"b".to_vec()]))
        );
        for bad in [
            Value::Array(vec![s("x"), Value::Array(vec![])]),
            Value::Array(vec![s("0"), s("a")]),
            Value::Array(vec![s("0"), Value::Array(vec![Value::Int(1)])]),
            Value::Nil,
        ] {
            assert!(parse_scan(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
