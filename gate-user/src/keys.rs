//! Settings as keys: a config file's table, or the flags given on a command
//! line (each under its key, the flag's name with `_` for `-`), read into
//! the structures that hold them by serde, with errors that name the key.

use anyhow::{anyhow, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use toml::{Table, Value};

/// A value that cannot be taken, and the key it came under (none when the
/// whole is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: Option<String>,
    pub problem: String,
}

impl KeyError {
    pub fn of(key: &str, problem: impl Into<String>) -> Self {
        Self {
            key: Some(key.to_string()),
            problem: problem.into(),
        }
    }

    pub fn whole(problem: impl Into<String>) -> Self {
        Self {
            key: None,
            problem: problem.into(),
        }
    }

    /// As a flag's error: `--key-name: problem`.
    pub fn as_flag(&self) -> anyhow::Error {
        anyhow::Error::new(self.clone())
    }
}

/// Written as a flag's error (`--key-name: problem`), which is what every
/// command but `serve` takes its settings from; `serve` names the key or
/// the flag, as the value was given (serve/config.rs).
impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}", flag_name(key), self.problem),
            None => f.write_str(&self.problem),
        }
    }
}

impl std::error::Error for KeyError {}

/// `--the-flag` of `the_key`.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The text of a config file as a table of keys.
/// TOML's error quotes the line: its URLs are masked (bus/url.rs), so
/// that a bus URL's password does not show.
pub fn parse_table(text: &str) -> Result<Table, KeyError> {
    text.parse().map_err(|e: toml::de::Error| {
        KeyError::whole(format!(
            "not valid TOML: {}",
            crate::bus::url::mask_urls_in(&e.to_string())
        ))
    })
}

/// Reads `table` into `T`. Serde loses the key of a field inside a
/// flattened structure; every key can be read alone, so the one that
/// fails alone is named.
pub fn read<T: DeserializeOwned>(table: Table) -> Result<T, KeyError> {
    let whole = match Value::Table(table.clone()).try_into::<T>() {
        Ok(read) => return Ok(read),
        Err(e) => e,
    };
    for (key, value) in table {
        let alone = Table::from_iter([(key.clone(), value)]);
        if let Err(e) = Value::Table(alone).try_into::<T>() {
            return Err(KeyError::of(&key, reworded(e.message())));
        }
    }
    Err(KeyError::whole(reworded(whole.message())))
}

/// Reads `table` into `T` after refusing a key not in `known` (a command's
/// config keys), naming it and the keys there are.
pub fn read_known<T: DeserializeOwned>(table: Table, known: &[String]) -> Result<T, KeyError> {
    if let Some(unknown) = table.keys().find(|key| !known.contains(key)) {
        return Err(KeyError::whole(format!(
            "unknown key `{unknown}` (known keys: {})",
            known.join(", ")
        )));
    }
    read(table)
}

/// The flags that were given, under their keys. clap leaves a flag that
/// was not given `None` or empty, and so it is left out: no flag can be
/// given as either. A switch (a `bool` flag without a value) is `false`
/// when not given: it must skip serializing then
/// (`#[serde(skip_serializing_if = "std::ops::Not::not")]`), since a flag
/// that takes a value may be given as `false` (`--apop false`).
pub fn given_flags(flags: &impl Serialize) -> Result<Table> {
    // A flag that cannot be a key (a path that is not UTF-8, which a TOML
    // file cannot hold either) is named.
    let given =
        serde_path_to_error::serialize(flags, serde_json::value::Serializer).map_err(|e| {
            let key = e
                .path()
                .iter()
                .next()
                .map(ToString::to_string)
                .unwrap_or_default();
            anyhow!("{}: {}", flag_name(&key), e.inner())
        })?;
    let given = match given {
        serde_json::Value::Object(given) => given,
        other => return Err(anyhow!("the flags read as {other}, not as keys")),
    };
    let mut table = Table::new();
    for (key, value) in given {
        if let Some(value) = given_value(value).with_context(|| flag_name(&key))? {
            table.insert(key, value);
        }
    }
    Ok(table)
}

/// A flag's value as a key's; `None` if the flag was not given.
fn given_value(json: serde_json::Value) -> Result<Option<Value>> {
    use serde_json::Value as Json;
    Ok(Some(match json {
        Json::Null => return Ok(None),
        Json::Array(items) if items.is_empty() => return Ok(None),
        Json::Bool(b) => Value::Boolean(b),
        Json::Number(n) => {
            Value::Integer(n.as_i64().ok_or_else(|| anyhow!("{n} is out of range"))?)
        }
        Json::String(s) => Value::String(s),
        Json::Array(items) => Value::Array(
            items
                .into_iter()
                .filter_map(|item| given_value(item).transpose())
                .collect::<Result<_>>()?,
        ),
        Json::Object(_) => return Err(anyhow!("not a value a key can take")),
    }))
}

/// Serde says "invalid type: integer `5`, expected a string"; an operator
/// reads "expected a string, found integer `5`" more easily.
fn reworded(message: &str) -> String {
    message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
        .map(|(found, expected)| format!("expected {expected}, found {found}"))
        .unwrap_or_else(|| message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Flags {
        list: Vec<u16>,
        empty: Vec<u16>,
        unset: Option<u32>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        off: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        on: bool,
        given_false: Option<bool>,
        text: Option<String>,
    }

    /// What clap leaves for a flag not given (`None`, a switch's `false`,
    /// an empty list) is no key; everything else is, `--flag false` too.
    #[test]
    fn only_given_flags_become_keys() {
        let table = given_flags(&Flags {
            list: vec![25, 587],
            empty: Vec::new(),
            unset: None,
            off: false,
            on: true,
            given_false: Some(false),
            text: Some("x".into()),
        })
        .unwrap();
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        assert_eq!(keys, ["given_false", "list", "on", "text"]);
        assert_eq!(table["given_false"], Value::Boolean(false));
        assert_eq!(
            table["list"],
            Value::Array(vec![Value::Integer(25), Value::Integer(587)])
        );
    }
}
