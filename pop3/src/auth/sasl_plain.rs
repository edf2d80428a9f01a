//! The SASL PLAIN message (RFC 4616), from its base64 form (RFC 5034).
//!
//! RFC 4616 section 2: `message = [authzid] UTF8NUL authcid UTF8NUL
//! passwd`, each part 1 to 255 octets of UTF-8 without NUL (the authzid
//! may be absent). We authenticate a user as themselves only: an authzid
//! that names someone else is refused, one equal to the authcid is the
//! same as none ("If the authorization identity is absent, the server
//! derives one from the authentication identity").

use std::fmt;

use base64ct::{Base64, Encoding};

/// The longest part (authzid, authcid, passwd) in octets.
pub const MAX_PART: usize = 255;

/// The longest base64 response line a PLAIN message can take, CRLF
/// included: three parts of 255 octets and two NULs, base64-encoded.
pub const MAX_RESPONSE_LINE: usize = (3 * MAX_PART + 2).div_ceil(3) * 4 + 2;

/// A decoded PLAIN message. Never printed with its password.
#[derive(PartialEq, Eq)]
pub struct PlainCredentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for PlainCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainCredentials({:?}, <password>)", self.user)
    }
}

/// Why a response is not a PLAIN message we take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not base64 (RFC 5034 section 4: the server "MUST reject").
    Base64,
    /// Not three NUL-separated parts of UTF-8 within the lengths.
    Malformed,
    /// An authzid naming another user: proxy authorization is not offered.
    OtherAuthzid,
}

impl fmt::Display for PlainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Base64 => "invalid base64 in the SASL response",
            Self::Malformed => "malformed PLAIN message (RFC 4616)",
            Self::OtherAuthzid => "authorization as another user is not allowed",
        })
    }
}

/// Decodes a client response (the base64 text, or `=` for an empty one:
/// RFC 5034 section 4).
pub fn decode(response: &str) -> Result<PlainCredentials, PlainError> {
    let octets = if response == "=" {
        Vec::new()
    } else {
        Base64::decode_vec(response).map_err(|_| PlainError::Base64)?
    };
    parse(&octets)
}

fn parse(message: &[u8]) -> Result<PlainCredentials, PlainError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    let in_bounds = |part: &[u8], least: usize| (least..=MAX_PART).contains(&part.len());
    if !in_bounds(authzid, 0) || !in_bounds(authcid, 1) || !in_bounds(passwd, 1) {
        return Err(PlainError::Malformed);
    }
    let text = |part: &[u8]| String::from_utf8(part.to_vec()).map_err(|_| PlainError::Malformed);
    let (authzid, user, password) = (text(authzid)?, text(authcid)?, text(passwd)?);
    // The same checks as a USER argument (command.rs): no control
    // characters in a name.
    if user.chars().any(char::is_control) {
        return Err(PlainError::Malformed);
    }
    if !authzid.is_empty() && authzid != user {
        return Err(PlainError::OtherAuthzid);
    }
    Ok(PlainCredentials { user, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(message: &[u8]) -> String {
        Base64::encode_string(message)
    }

    #[test]
    fn takes_the_three_parts_of_rfc_4616() {
        let creds = decode(&encoded(b"\0tim\0tanstaaftanstaaf")).unwrap();
        assert_eq!(creds.user, "tim");
        assert_eq!(creds.password, "tanstaaftanstaaf");
        let same = decode(&encoded(b"tim\0tim\0pass word")).unwrap();
        assert_eq!(
            (same.user.as_str(), same.password.as_str()),
            ("tim", "pass word")
        );
        let utf8 = decode(&encoded("\0jos\u{e9}\0p\u{e4}ss".as_bytes())).unwrap();
        assert_eq!(utf8.user, "jos\u{e9}");
    }

    #[test]
    fn refuses_what_rfc_4616_does_not_allow() {
        assert_eq!(decode("not base64!"), Err(PlainError::Base64));
        assert_eq!(decode("="), Err(PlainError::Malformed));
        for bad in [
            &b"tim\0pass"[..],
            b"\0\0pass",
            b"\0tim\0",
            b"\0tim\0pa\0ss",
            b"\0t\xffm\0pass",
            b"\0t\tm\0pass",
        ] {
            assert_eq!(decode(&encoded(bad)), Err(PlainError::Malformed), "{bad:?}");
        }
        assert_eq!(
            decode(&encoded(b"root\0tim\0pass")),
            Err(PlainError::OtherAuthzid)
        );
    }

    #[test]
    fn parts_are_bounded_and_the_longest_message_fits_the_response_line() {
        let long = "a".repeat(MAX_PART);
        let longest = format!("{long}\0{long}\0{long}");
        let line = encoded(longest.as_bytes());
        assert_eq!(line.len() + 2, MAX_RESPONSE_LINE);
        assert!(decode(&line).is_ok());
        let too_long = format!("\0{long}a\0pass");
        assert_eq!(
            decode(&encoded(too_long.as_bytes())),
            Err(PlainError::Malformed)
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let creds = decode(&encoded(b"\0tim\0hunter2")).unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
