//! The two configurable answers, checked when the config is read so that
//! Postfix never gets an action it would misread. Postfix reads a policy
//! reply as an access(5) table's right-hand side (smtpd_check.c,
//! check_table_result), which is less forgiving than it looks:
//!
//! - an all-digit value means OK ("some out-of-band authentication
//!   mechanism uses this as time stamp"), so a bare `554` would let every
//!   client relay;
//! - a code is taken only with a text after it (`554 text`);
//! - any word that is not an action is evaluated as a restriction list,
//!   and a value with `:` as a lookup table (a server error);
//! - the code must be 4xx or 5xx and the DSN valid, else Postfix answers
//!   `450 4.7.1 Service unavailable` and logs a configuration error;
//! - the whole SMTP reply is cut at 510 characters, and Postfix puts
//!   `<recipient>: Recipient address rejected: ` before the text.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer};

/// The longest refusal taken: room for Postfix's prefix with a long
/// recipient within the 510 characters of an SMTP reply.
pub const MAX_REFUSAL: usize = 256;

/// Postfix's action for a client with a fresh grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GrantedAction {
    /// The grant permits the recipient, relaying included, as
    /// POP-before-SMTP always did (the snippet asks before
    /// reject_unauth_destination).
    #[default]
    Ok,
    /// Later restrictions decide, as for a client we know nothing about.
    Dunno,
}

impl GrantedAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Dunno => "DUNNO",
        }
    }
}

impl FromStr for GrantedAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // Postfix compares action words without case.
        match text.to_ascii_uppercase().as_str() {
            "OK" => Ok(Self::Ok),
            "DUNNO" => Ok(Self::Dunno),
            _ => Err(format!(
                "`{}` is neither OK (a grant permits sending, relaying included) nor DUNNO \
                 (later restrictions decide)",
                text.escape_debug()
            )),
        }
    }
}

impl fmt::Display for GrantedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for GrantedAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Postfix's action for a client with neither grant nor exemption: an SMTP
/// reply (`554 5.7.1 text`, `450 text`), or one of the action words that
/// refuse or only mark the mail: REJECT, DEFER, DEFER_IF_PERMIT (each with
/// an optional text), WARN (Postfix logs and goes on: a trial run before
/// refusing anyone), HOLD (accepted into the hold queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedAction(String);

/// The action words a refusal may be, each with an optional text.
const REFUSING_WORDS: [&str; 5] = ["REJECT", "DEFER", "DEFER_IF_PERMIT", "WARN", "HOLD"];

impl RefusedAction {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RefusedAction {
    fn default() -> Self {
        Self(crate::policy::config::DEFAULT_POSTFIX_REJECT.to_owned())
    }
}

impl FromStr for RefusedAction {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        check_refusal(text).map(|()| Self(text.to_owned()))
    }
}

fn check_refusal(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("empty: an SMTP reply (554 5.7.1 text) or REJECT text is needed".into());
    }
    if let Some(bad) = text.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{:?} is not printable ASCII: the reply goes to the client as it is (line ends \
             would end the policy answer)",
            bad
        ));
    }
    if text.len() > MAX_REFUSAL {
        return Err(format!(
            "{} characters, at most {MAX_REFUSAL}: Postfix cuts the whole reply, its own \
             prefix included, at 510",
            text.len()
        ));
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err("starts or ends with a space".into());
    }
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.trim_start();
    if word.bytes().all(|b| b.is_ascii_digit()) {
        return check_code_reply(word, rest);
    }
    let upper = word.to_ascii_uppercase();
    if REFUSING_WORDS.contains(&upper.as_str()) {
        return Ok(());
    }
    Err(match upper.as_str() {
        "OK" | "RELAY" | "DUNNO" | "DISCARD" => format!(
            "`{word}` lets the client's mail through: a refusal is an SMTP reply \
             (554 5.7.1 text) or one of {}",
            REFUSING_WORDS.join(", ")
        ),
        _ => format!(
            "`{word}` is no SMTP reply code and none of {}: Postfix would read it as a \
             restriction (or a lookup table)",
            REFUSING_WORDS.join(", ")
        ),
    })
}

/// `NNN [X.Y.Z] text`: Postfix takes a code only with a text after it (a
/// bare number means OK), 4xx or 5xx; the DSN, if given, in RFC 3463's
/// form with its class the code's first digit (Postfix would quietly
/// change it).
fn check_code_reply(code: &str, rest: &str) -> Result<(), String> {
    let fine_code = code.len() == 3 && matches!(code.as_bytes()[0], b'4' | b'5');
    if !fine_code {
        return Err(format!(
            "`{code}` is no 4xx or 5xx SMTP reply code (Postfix reads a bare number as OK)"
        ));
    }
    if rest.is_empty() {
        return Err(format!(
            "`{code}` needs a text after it: Postfix reads a bare number as OK"
        ));
    }
    let (first, text) = rest.split_once(' ').unwrap_or((rest, ""));
    if first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('.') {
        let parts: Vec<&str> = first.split('.').collect();
        let fine_dsn = parts.len() == 3
            && parts[0].len() == 1
            && parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
        if !fine_dsn {
            return Err(format!("`{first}` is no status code of the form 5.7.1"));
        }
        if parts[0].as_bytes()[0] != code.as_bytes()[0] {
            return Err(format!(
                "the status code {first} is not of the reply code's class ({}.x.x for {code})",
                &code[..1]
            ));
        }
        if text.trim().is_empty() {
            return Err(format!(
                "`{code} {first}` needs a text for the user after it"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for RefusedAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RefusedAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_is_ok_or_dunno_in_any_case() {
        assert_eq!("OK".parse(), Ok(GrantedAction::Ok));
        assert_eq!("dunno".parse(), Ok(GrantedAction::Dunno));
        assert_eq!(GrantedAction::default().as_str(), "OK");
        for bad in ["", "RELAY", "OK ", "permit", "REJECT", "123"] {
            let err = bad.parse::<GrantedAction>().unwrap_err();
            assert!(err.contains("neither OK"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_default_refusal_is_taken() {
        let default = RefusedAction::default();
        assert_eq!(
            default.as_str().parse::<RefusedAction>().as_ref(),
            Ok(&default)
        );
        assert!(default
            .as_str()
            .starts_with("554 5.7.1 Send mail after checking it"));
    }

    #[test]
    fn replies_and_refusing_words_are_taken() {
        for fine in [
            "554 5.7.1 Log in to POP3 first",
            "550 Log in first",
            "450 4.7.0 Try again after a login",
            "421 4.3.0 x",
            "REJECT",
            "reject Log in first",
            "DEFER_IF_PERMIT later",
            "WARN would refuse",
            "HOLD",
            "554 5.7.123 x",
        ] {
            assert_eq!(
                fine.parse::<RefusedAction>().map(|a| a.to_string()),
                Ok(fine.to_owned())
            );
        }
    }

    #[test]
    fn what_postfix_would_read_as_ok_is_refused() {
        for (bad, says) in [
            ("554", "Postfix reads a bare number as OK"),
            ("12345", "no 4xx or 5xx"),
            ("OK", "lets the client's mail through"),
            ("relay x", "lets the client's mail through"),
            ("DUNNO", "lets the client's mail through"),
            ("DISCARD", "lets the client's mail through"),
            ("permit_mynetworks", "read it as a restriction"),
            ("hash:/etc/postfix/x", "read it as a restriction"),
        ] {
            let err = bad.parse::<RefusedAction>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn codes_status_codes_and_text_are_checked() {
        for (bad, says) in [
            ("", "empty"),
            ("354 go ahead", "no 4xx or 5xx"),
            ("250 fine", "no 4xx or 5xx"),
            ("5540 x", "no 4xx or 5xx"),
            ("554 4.7.1 x", "not of the reply code's class"),
            ("554 5.7 x", "no status code"),
            ("554 5.7.1", "needs a text"),
            ("554 5.7.1 x\r\nREJECT", "not printable ASCII"),
            ("554 x\n", "not printable ASCII"),
            ("554 5.7.1 caf\u{e9}", "not printable ASCII"),
            (" 554 x", "space"),
            ("554 x ", "space"),
        ] {
            let err = bad.parse::<RefusedAction>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let long = format!("554 5.7.1 {}", "x".repeat(MAX_REFUSAL));
        let err = long.parse::<RefusedAction>().unwrap_err();
        assert!(err.contains("at most 256"), "{err}");
        let most = format!("554 5.7.1 {}", "x".repeat(MAX_REFUSAL - 10));
        assert!(most.parse::<RefusedAction>().is_ok());
    }
}
