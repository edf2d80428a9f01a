//! The engine's URL (`bus`, `--bus`), and how any text that quotes one is
//! shown: never with its password.
//!
//! A password is hidden wherever a reader could take it to be, whatever a
//! URL parser makes of the text: between `://` (or the start, without
//! one) and the *last* `@`, but for a plain user name before the first
//! `:`; and from a `pass=` or `password=` in the query to the end. A
//! password holding `/`, `?`, `#` or `@` ends the URL's user info early
//! for a parser (`redis://edge:a/b@host` is host `edge`, port `a`, path
//! `/b@host`), and the parser's errors, clap's and TOML's quote the text
//! as given: masking only what a parser calls the password showed it
//! (attack review). Such a URL is refused, saying how to write it
//! ([`HOW_TO_WRITE_A_PASSWORD`]).

use std::{fmt, str::FromStr};

use pop3::log_text::LogProse;
use serde::{Deserialize, Deserializer};

/// What an error about a URL says about passwords. Without an at sign:
/// a text that quotes a URL is masked up to the last one on its line.
pub const HOW_TO_WRITE_A_PASSWORD: &str =
    "in a URL, a password (or user) holding `/`, `?`, `#`, the at sign, `%`, `&`, `+`, a \
     space or other than printable ASCII must be percent-encoded (`/` as %2F, `?` as %3F, `#` \
     as %23, the at sign as %40, `%` as %25, `&` as %26, `+` as %2B, a space as %20); or leave \
     it out of the URL and put it, as it is, in the file bus_password_file names";

/// The engine's URL. Shown (Display, Debug, Serialize) without its
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct BusUrl(String);

impl BusUrl {
    /// The URL as given, password included: for the client only.
    pub fn secret_text(&self) -> &str {
        &self.0
    }

    /// True if the URL asks the client not to check the engine's TLS
    /// certificate (`rediss://host/#insecure`): the client is built
    /// without that mode, so it would fail only at connect.
    pub fn skips_certificate_check(&self) -> bool {
        redis::parse_redis_url(&self.0).is_some_and(|url| {
            matches!(url.scheme(), "rediss" | "valkeys") && url.fragment() == Some("insecure")
        })
    }

    /// True if the URL carries a password (refused from a flag): in the
    /// user info (`redis://user:password@host`, `redis://:password@host`)
    /// or in the query, where the redis crate (0.32) reads it for unix
    /// sockets (`redis+unix:///path?user=u&pass=password`; `password=`
    /// is counted too, as a later crate may read it). Whatever is
    /// masked is a password.
    pub fn has_password(&self) -> bool {
        let mut shown = String::new();
        mask_from_scheme(&self.0, &mut shown)
    }
}

/// `text` with every URL in it masked as [`BusUrl`] is shown, line by
/// line: for texts that quote what was given without knowing it is a URL
/// (clap's errors, TOML's).
pub fn mask_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        match line.find("://") {
            Some(at) => {
                out.push_str(&line[..at]);
                mask_from_scheme(&line[at..], &mut out);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Writes `text` (a URL, or what was meant as one) masked to `out`; true
/// if anything was masked. `text` starts with its scheme, or with `://`.
fn mask_from_scheme(text: &str, out: &mut String) -> bool {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    };
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let Some(at) = rest.rfind('@') else {
        return mask_query(rest, out);
    };
    let userinfo = &rest[..at];
    let ends_early = |text: &str| text.contains(['/', '?', '#']);
    let mut masked = true;
    match userinfo.split_once(':') {
        Some((user, _)) if !ends_early(user) => {
            out.push_str(user);
            out.push_str(":***");
        }
        _ if !ends_early(userinfo) => {
            out.push_str(userinfo);
            masked = false;
        }
        _ => out.push_str("***"),
    }
    out.push('@');
    let tail = &rest[at + 1..];
    // A query that began before the `@` with a password: the `@` is part
    // of the password, and so is what follows it.
    let password_before = userinfo
        .split_once('?')
        .is_some_and(|(_, query)| password_value(query).is_some());
    if password_before {
        out.push_str("***");
        return true;
    }
    mask_query(tail, out) || masked
}

/// Writes `text` with its query's password (and all that follows it)
/// masked; true if there was one.
fn mask_query(text: &str, out: &mut String) -> bool {
    let Some((before, query)) = text.split_once('?') else {
        out.push_str(text);
        return false;
    };
    out.push_str(before);
    out.push('?');
    match password_value(query) {
        // The password runs to the end: a password holding `&` or `#`
        // would show its rest as further pairs or a fragment.
        Some(value) => {
            // Masked already, and quoted: a refusal of ours, whose words
            // follow (`... pass=***` has a ...).
            let rest = &query[value..];
            let quoted = |rest: &str| rest.is_empty() || rest.starts_with(['`', '\'', '"']);
            if rest.strip_prefix("***").is_some_and(quoted) {
                out.push_str(query);
            } else {
                out.push_str(&query[..value]);
                out.push_str("***");
            }
            true
        }
        None => {
            out.push_str(query);
            false
        }
    }
}

/// Where the value of the first password pair of `query` begins.
fn password_value(query: &str) -> Option<usize> {
    let mut offset = 0;
    for pair in query.split('&') {
        if let Some((key, _)) = pair.split_once('=') {
            if is_password_key(key) {
                return Some(offset + key.len() + 1);
            }
        }
        offset += pair.len() + 1;
    }
    None
}

/// A query key the client takes as the password, once decoded as the
/// client decodes it (form encoding: `%70ass` and `pa+ss` spellings).
fn is_password_key(raw: &str) -> bool {
    let key = decode_form(raw);
    key == "pass" || key == "password"
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX`
/// an octet), as `url::Url::query_pairs` does.
fn decode_form(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl FromStr for BusUrl {
    type Err = String;

    /// Errors show the text masked (and escaped), and say how to write a
    /// password when one may be the trouble.
    fn from_str(text: &str) -> Result<Self, String> {
        let shown = || BusUrl(text.to_owned());
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
            return Err(format!(
                "`{}` is not a redis://, rediss:// or redis+unix:// URL",
                shown()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "`{}` holds a space, a control character or other than ASCII: \
                 {HOW_TO_WRITE_A_PASSWORD}",
                shown()
            ));
        }
        let (_, rest) = text.split_once("://").unwrap_or(("", text));
        if rest
            .rfind('@')
            .is_some_and(|at| rest[..at].contains(['/', '?', '#']))
        {
            return Err(format!(
                "`{}` has an at sign after a `/`, `?` or `#`, which a URL parser takes for \
                 part of the host, path or query, not for the end of a user and password: \
                 {HOW_TO_WRITE_A_PASSWORD}",
                shown()
            ));
        }
        if let Some((_, query)) = rest.split_once('?') {
            let has_password = query.split('&').any(|pair| {
                pair.split_once('=')
                    .is_some_and(|(k, _)| is_password_key(k))
            });
            if has_password && query.contains('#') {
                return Err(format!(
                    "`{}` has a `#` after its password, which a URL parser takes for the start \
                     of a fragment: {HOW_TO_WRITE_A_PASSWORD}",
                    shown()
                ));
            }
        }
        if redis::parse_redis_url(text).is_none() {
            return Err(format!(
                "`{}` is not a URL: {HOW_TO_WRITE_A_PASSWORD}",
                shown()
            ));
        }
        redis::IntoConnectionInfo::into_connection_info(text)
            .map_err(|e| format!("`{}`: {}", shown(), without_detail(&e)))?;
        Ok(Self(text.to_owned()))
    }
}

/// The redis crate's error without its detail, which may quote a part of
/// the URL (the protocol's value, say), and so of a password written
/// wrongly.
fn without_detail(error: &redis::RedisError) -> String {
    let text = error.to_string();
    match error.detail() {
        Some(detail) => text
            .strip_suffix(detail)
            .and_then(|text| text.strip_suffix(": "))
            .map_or_else(|| format!("{:?}", error.kind()), str::to_owned),
        None => text,
    }
}

impl fmt::Display for BusUrl {
    /// The URL with its password replaced by `***` (see the module);
    /// anything but printable ASCII escaped, so that a refused text
    /// cannot break the line it is quoted in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = String::with_capacity(self.0.len());
        mask_from_scheme(&self.0, &mut shown);
        write!(f, "{}", LogProse::of(&shown))
    }
}

impl fmt::Debug for BusUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusUrl({self})")
    }
}

impl<'de> Deserialize<'de> for BusUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The URL as shown: a flag's URL, which carries no password (refused,
/// cli.rs), reads back as itself when the flags are laid over the file.
impl serde::Serialize for BusUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        let url: BusUrl = "redis://gate:s3cret@10.0.0.5:6379/2".parse().unwrap();
        assert!(url.has_password());
        assert_eq!(url.to_string(), "redis://gate:***@10.0.0.5:6379/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.secret_text(), "redis://gate:s3cret@10.0.0.5:6379/2");
        let plain: BusUrl = "rediss://gate@engine.example:6380".parse().unwrap();
        assert!(!plain.has_password());
        assert_eq!(plain.to_string(), "rediss://gate@engine.example:6380");
        assert!("redis+unix:///run/redis/redis.sock"
            .parse::<BusUrl>()
            .is_ok());
    }

    /// Every form in which the redis crate (0.32) takes a password: the
    /// user info, with or without a user, and `pass=` in a unix URL's
    /// query (any spelling the form decoding reads as `pass`; `password=`
    /// counted too). Each is seen, and never shown: nor what follows it
    /// in the query.
    #[test]
    fn every_form_of_password_is_seen_and_masked() {
        for (text, shown) in [
            (
                "redis://:S3cret@10.0.0.5:6379",
                "redis://:***@10.0.0.5:6379",
            ),
            (
                "rediss://edge:S3cret@engine.example:6380/1",
                "rediss://edge:***@engine.example:6380/1",
            ),
            (
                "rediss://edge:S3cr@et@engine.example:6380/1",
                "rediss://edge:***@engine.example:6380/1",
            ),
            (
                "redis+unix:///run/r.sock?user=edge&pass=S3cret",
                "redis+unix:///run/r.sock?user=edge&pass=***",
            ),
            (
                "unix:///run/r.sock?pass=S3cret&db=2",
                "unix:///run/r.sock?pass=***",
            ),
            (
                "redis+unix:///run/r.sock?password=S3cret",
                "redis+unix:///run/r.sock?password=***",
            ),
            (
                "redis+unix:///run/r.sock?%70ass=S3cret",
                "redis+unix:///run/r.sock?%70ass=***",
            ),
            (
                "redis+unix:///run/r.sock?pass=x&pass=S3cret",
                "redis+unix:///run/r.sock?pass=***",
            ),
        ] {
            let url: BusUrl = text.parse().unwrap();
            assert!(url.has_password(), "{text}");
            assert_eq!(url.to_string(), shown);
            assert!(!format!("{url:?}").contains("S3cret"), "{text}");
            assert!(
                !serde_json::to_string(&url).unwrap().contains("S3cret"),
                "{text}"
            );
            assert_eq!(url.secret_text(), text);
        }
        // The crate takes the unix password from `pass=`: the check
        // follows it.
        let info = redis::IntoConnectionInfo::into_connection_info(
            "redis+unix:///run/r.sock?user=edge&pass=S3cret",
        )
        .unwrap();
        assert_eq!(info.redis.password.as_deref(), Some("S3cret"));
        for plain in [
            "redis+unix:///run/r.sock?user=edge&db=2",
            "redis://edge@10.0.0.5:6379",
            "redis://10.0.0.5:6379/?protocol=3",
            "rediss://edge@engine.example:6380/2",
        ] {
            let url: BusUrl = plain.parse().unwrap();
            assert!(!url.has_password(), "{plain}");
            assert_eq!(url.to_string(), plain);
        }
    }

    /// The pieces of the password of the texts below: none may show.
    const PIECES: [&str; 4] = ["Pw1", "Pw2", "Pw3", "Pw4"];

    fn shows_no_piece(text: &str, context: &str) {
        for piece in PIECES {
            assert!(!text.contains(piece), "{context}: {piece} shows in {text}");
        }
    }

    /// A password holding what ends its part of a URL (`/`, `?`, `#`,
    /// `@`, `&`, a line end), given raw: whatever a parser makes of it,
    /// the refusal shows none of it, and says how to write it.
    #[test]
    fn a_password_a_parser_misreads_is_refused_without_showing_it() {
        for text in [
            "redis://edge:Pw1/Pw2@engine:6379",
            "redis://edge:Pw1?Pw2@engine:6379",
            "redis://edge:Pw1#Pw2@engine:6379",
            "rediss://edge:Pw1/Pw2?Pw3#Pw4@engine:6380/0",
            "redis://:Pw1/Pw2@Pw3@engine",
            "redis://edge:Pw1 Pw2@engine",
            "redis://edge:Pw1\nPw2@engine",
            "redis://edge/Pw1:Pw2@engine",
            "redis://edge:12/Pw1@engine",
            "redis://edge:12?Pw1@engine",
            "redis+unix:///run/r.sock?pass=Pw1#Pw2",
            "redis+unix:///run/r.sock?pass=Pw1@Pw2",
            "redis+unix:///run/r.sock?pass=Pw1&Pw2#Pw3",
            "redis+unix:///run/r.sock?pass=Pw1&protocol=Pw2",
            "http://edge:Pw1/Pw2@engine",
            "edge:Pw1/Pw2@engine",
            "redis:/edge:Pw1@engine",
        ] {
            let err = match text.parse::<BusUrl>() {
                Ok(url) => panic!("{text} was taken as {url}"),
                Err(err) => err,
            };
            // The protocol's value shows in the crate's detail only:
            // left out.
            shows_no_piece(&err, text);
            assert!(!err.contains('\n'), "{text}: {err}");
            if !text.starts_with("http") && !text.starts_with("edge") && text.contains("://") {
                assert!(
                    err.contains("percent-encoded") || err.contains("protocol"),
                    "{text}: {err}"
                );
            }
        }
        // Written percent-encoded, the same password is taken, and is the
        // crate's password once decoded.
        let url: BusUrl = "redis://edge:Pw1%2FPw2%3FPw3%23Pw4%40@engine:6379"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "redis://edge:***@engine:6379");
        let info = redis::IntoConnectionInfo::into_connection_info(url.secret_text()).unwrap();
        assert_eq!(info.redis.password.as_deref(), Some("Pw1/Pw2?Pw3#Pw4@"));
    }

    /// The refusals hold no at sign but the URL's: main.rs masks each line
    /// of clap's errors up to its last one.
    #[test]
    fn a_refusal_holds_no_at_sign_of_its_own() {
        for text in [
            "redis://edge:Pw1/Pw2@engine",
            "redis://edge:Pw1 @engine",
            "redis+unix:///r.sock?pass=Pw1#Pw2",
            "redis://edge:Pw1@engine/x",
        ] {
            let err = text.parse::<BusUrl>().unwrap_err();
            assert!(err.matches('@').count() <= 1, "{err}");
            assert_eq!(mask_urls_in(&err), err);
        }
    }

    /// Texts that quote a URL without knowing it is one (clap's errors,
    /// TOML's) are masked line by line.
    #[test]
    fn urls_in_other_texts_are_masked() {
        let clap = "error: invalid value 'redis://edge:Pw1/Pw2@engine' for '--bus <URL>'\n\
                    error: unexpected argument 'rediss://:Pw3#x@engine' found\n\n\
                    Usage: smtp-gate agent [OPTIONS]\n";
        let masked = mask_urls_in(clap);
        shows_no_piece(&masked, clap);
        assert_eq!(
            masked,
            "error: invalid value 'redis://edge:***@engine' for '--bus <URL>'\n\
             error: unexpected argument 'rediss://:***@engine' found\n\n\
             Usage: smtp-gate agent [OPTIONS]\n"
        );
        let toml = "TOML parse error at line 2, column 20\n  |\n\
                    2 | bus = \"redis+unix:///r.sock?pass=Pw1\\qPw2\"\n  |                    ^\n";
        let masked = mask_urls_in(toml);
        shows_no_piece(&masked, toml);
        assert!(masked.contains("2 | bus = \"redis+unix:///r.sock?pass=***\n"));
        let plain = "nothing to hide: smtp-gate@example.org, a URL redis://engine:6379/0";
        assert_eq!(mask_urls_in(plain), plain);
    }
}
