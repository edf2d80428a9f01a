//! One Dovecot auth policy request, read from its query and its JSON body
//! (no I/O here). What Dovecot sends and why each field is read as it is:
//! see the module above (dovecot/mod.rs).

use std::{fmt, net::IpAddr};

use serde::{de::IgnoredAny, Deserialize};

/// The largest body taken. Dovecot's requests are a few hundred bytes: a
/// handful of short attributes and three booleans.
pub const MAX_BODY: usize = 16 * 1024;

/// What Dovecot asks: `?command=allow` before (or after) it checks the
/// password, `?command=report` when the authentication has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Allow,
    Report,
}

impl Command {
    /// The command in a request target's query. The operator's URL may
    /// carry parameters of its own (Dovecot appends `command=...` after a
    /// URL ending in `&`), so the other pairs are passed over; a second
    /// `command` is refused rather than guessed at.
    pub fn from_query(query: Option<&str>) -> Result<Self, RequestError> {
        let mut found = None;
        for pair in query.unwrap_or("").split('&') {
            let Some(value) = pair.strip_prefix("command=") else {
                continue;
            };
            let command = match value {
                "allow" => Self::Allow,
                "report" => Self::Report,
                _ => return Err(RequestError::UnknownCommand),
            };
            if found.replace(command).is_some() {
                return Err(RequestError::UnknownCommand);
            }
        }
        found.ok_or(RequestError::UnknownCommand)
    }
}

/// How a reported authentication ended, as far as the gate cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `success: true`: the client proved its password, and Dovecot did
    /// not say that the account may not log in.
    Succeeded,
    /// A wrong password or an unknown account (or a Dovecot 2.3 failure,
    /// which does not say why): counted toward a ban.
    Failed,
    /// Failed, but not by the client's guess: not counted.
    FailedNotCounted(NotCounted),
    /// The password was right, but Dovecot refuses the login (`success`
    /// with the passdb's `nologin`, or with a `fail_type`): not granted,
    /// not counted.
    LoginRefused(NotCounted),
}

/// Why a failure is not the client's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotCounted {
    /// We refused it in our `allow` answer (`policy_reject`, or 2.4's
    /// `fail_type` `policy`): that refusal came from a count already.
    PolicyRefusal,
    /// Dovecot's own trouble (passdb down): `fail_type` `internal`.
    Internal,
    /// The password was right but has expired: `fail_type` `expired`.
    Expired,
    /// The account is disabled: `fail_type` `disabled`.
    Disabled,
}

impl NotCounted {
    /// A fixed word for log lines (`reason=...`).
    pub fn word(self) -> &'static str {
        match self {
            Self::PolicyRefusal => "policy",
            Self::Internal => "internal",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }
}

/// A request, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRequest {
    pub command: Command,
    /// The client's address, IPv4-mapped IPv6 made IPv4. None when Dovecot
    /// knew none (it sends `"remote":""`, e.g. for `doveadm auth test`
    /// without `-x rip=`): nothing to grant or count then.
    pub remote: Option<IpAddr>,
    /// The user name the client asked for (`%{requested_username}`).
    pub login: String,
    /// Dovecot's protocol name (`imap`, `pop3`, `submission`, ...).
    pub protocol: String,
    /// Reports only.
    pub outcome: Option<Outcome>,
    /// The body carried a `pwhash` (the operator kept Dovecot's default
    /// attributes). Its value is never kept.
    pub carried_password_hash: bool,
}

/// Why a request is refused (HTTP 400, or 413 for `TooLarge`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No `command=allow` or `command=report` in the query.
    UnknownCommand,
    /// The body is over [`MAX_BODY`].
    TooLarge,
    /// Not a JSON object of the expected fields and types; the parser's
    /// words (which may quote the client's text: escape before logging).
    BadJson(String),
    /// A field the snippets make Dovecot send is absent.
    MissingField(&'static str),
    /// `remote` is not an IP address.
    BadRemote(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownCommand => f.write_str("the query has no command=allow or command=report"),
            Self::TooLarge => write!(f, "the body is over {MAX_BODY} bytes"),
            Self::BadJson(why) => write!(f, "the body is not the JSON expected: {why}"),
            Self::MissingField(name) => write!(f, "the body has no `{name}`"),
            Self::BadRemote(text) => write!(f, "`remote` is not an IP address: {text}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl RequestError {
    /// A fixed word for log lines (`reason=...`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownCommand => "unknown-command",
            Self::TooLarge => "too-large",
            Self::BadJson(_) => "bad-json",
            Self::MissingField(_) => "missing-field",
            Self::BadRemote(_) => "bad-remote",
        }
    }
}

/// The fields read; every other one (`device_id`, `session_id`, `tls`, an
/// operator's own) is passed over. A field given twice is refused by
/// serde, so no request can say two things.
#[derive(Deserialize)]
struct Body {
    remote: Option<String>,
    login: Option<String>,
    protocol: Option<String>,
    success: Option<bool>,
    policy_reject: Option<bool>,
    fail_type: Option<String>,
    /// The 2.3 snippet's `nologin=%{passdb:nologin:-}`: `-` when the passdb
    /// gave no `nologin` field, anything else (its value, often empty)
    /// when it did.
    nologin: Option<String>,
    /// Read only to know it was there; its value is dropped unread.
    pwhash: Option<IgnoredAny>,
}

/// Reads a request's body for `command`.
pub fn parse(command: Command, body: &[u8]) -> Result<PolicyRequest, RequestError> {
    if body.len() > MAX_BODY {
        return Err(RequestError::TooLarge);
    }
    let body: Body =
        serde_json::from_slice(body).map_err(|e| RequestError::BadJson(e.to_string()))?;
    let remote = body.remote.ok_or(RequestError::MissingField("remote"))?;
    let remote = parse_remote(&remote)?;
    let login = body.login.ok_or(RequestError::MissingField("login"))?;
    let protocol = body
        .protocol
        .ok_or(RequestError::MissingField("protocol"))?;
    let outcome = match command {
        Command::Allow => None,
        Command::Report => Some(outcome(
            body.success.ok_or(RequestError::MissingField("success"))?,
            body.policy_reject.unwrap_or(false),
            body.fail_type.as_deref(),
            body.nologin.as_deref(),
        )),
    };
    Ok(PolicyRequest {
        command,
        remote,
        login,
        protocol,
        outcome,
        carried_password_hash: body.pwhash.is_some(),
    })
}

fn parse_remote(text: &str) -> Result<Option<IpAddr>, RequestError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<IpAddr>()
        .map(|addr| Some(addr.to_canonical()))
        .map_err(|_| RequestError::BadRemote(text.to_owned()))
}

/// Dovecot 2.3 says only `success` and `policy_reject`; 2.4 adds
/// `fail_type` (auth-policy.c, auth_policy_fail_type()).
///
/// `success` is the password's verdict, not the login's: Dovecot reports
/// when the passdb lookup ends, before the login process applies the
/// passdb's `nologin` ("[CONTACTADMIN] disabled", the account refused)
/// and before the userdb lookup. So a success the passdb marked `nologin`
/// (2.3: the snippet's `nologin` attribute; 2.4: a `fail_type` on a
/// success) is a refused login: neither granted nor counted.
fn outcome(
    success: bool,
    policy_reject: bool,
    fail_type: Option<&str>,
    nologin: Option<&str>,
) -> Outcome {
    let fail_type = fail_type.unwrap_or("");
    let passdb_says_nologin = nologin.is_some_and(|value| value != "-");
    if success {
        return match fail_type {
            "" if !passdb_says_nologin => Outcome::Succeeded,
            "expired" => Outcome::LoginRefused(NotCounted::Expired),
            "internal" => Outcome::LoginRefused(NotCounted::Internal),
            "policy" => Outcome::LoginRefused(NotCounted::PolicyRefusal),
            _ => Outcome::LoginRefused(NotCounted::Disabled),
        };
    }
    if policy_reject {
        return Outcome::FailedNotCounted(NotCounted::PolicyRefusal);
    }
    match fail_type {
        "policy" => Outcome::FailedNotCounted(NotCounted::PolicyRefusal),
        "internal" => Outcome::FailedNotCounted(NotCounted::Internal),
        "expired" => Outcome::FailedNotCounted(NotCounted::Expired),
        "disabled" => Outcome::FailedNotCounted(NotCounted::Disabled),
        // "credentials", "account", "" and whatever a later Dovecot adds:
        // a failed login is the client's unless Dovecot says otherwise.
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(body: &str) -> Result<PolicyRequest, RequestError> {
        parse(Command::Report, body.as_bytes())
    }

    #[test]
    fn the_command_is_read_from_the_query_among_the_operators_own_pairs() {
        assert_eq!(
            Command::from_query(Some("command=allow")),
            Ok(Command::Allow)
        );
        assert_eq!(
            Command::from_query(Some("site=a&command=report")),
            Ok(Command::Report)
        );
        for bad in [
            None,
            Some(""),
            Some("command=deny"),
            Some("command=allow&command=report"),
        ] {
            assert_eq!(
                Command::from_query(bad),
                Err(RequestError::UnknownCommand),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_23_report_is_read() {
        let body = r#"{"device_id":"","login":"alice","protocol":"imap","remote":"192.0.2.7","session_id":"abc","success":true,"policy_reject":false,"tls":false}"#;
        assert_eq!(
            report(body),
            Ok(PolicyRequest {
                command: Command::Report,
                remote: Some("192.0.2.7".parse().unwrap()),
                login: "alice".into(),
                protocol: "imap".into(),
                outcome: Some(Outcome::Succeeded),
                carried_password_hash: false,
            })
        );
    }

    /// The outcome of a report of `success` with `extra` fields after it.
    fn outcome_of(success: bool, extra: &str) -> Outcome {
        report(&format!(
            r#"{{"login":"a","protocol":"imap","remote":"192.0.2.7","success":{success}{extra}}}"#
        ))
        .unwrap()
        .outcome
        .unwrap()
    }

    #[test]
    fn failures_are_counted_unless_dovecot_says_they_are_not_the_clients() {
        let with = |extra: &str| outcome_of(false, extra);
        assert_eq!(with(r#","policy_reject":false"#), Outcome::Failed);
        assert_eq!(
            with(r#","policy_reject":false,"fail_type":"credentials""#),
            Outcome::Failed
        );
        assert_eq!(with(r#","fail_type":"account""#), Outcome::Failed);
        assert_eq!(
            with(r#","policy_reject":true"#),
            Outcome::FailedNotCounted(NotCounted::PolicyRefusal)
        );
        assert_eq!(
            with(r#","policy_reject":false,"fail_type":"policy""#),
            Outcome::FailedNotCounted(NotCounted::PolicyRefusal)
        );
        assert_eq!(
            with(r#","fail_type":"internal""#),
            Outcome::FailedNotCounted(NotCounted::Internal)
        );
    }

    /// Attack review: a login whose password matched but whose account
    /// the passdb disabled (`nologin`) was reported `success` by Dovecot
    /// 2.3 and granted, though Dovecot refused the login.
    #[test]
    fn a_success_the_passdb_marked_nologin_is_neither_granted_nor_counted() {
        let with = |extra: &str| outcome_of(true, extra);
        assert_eq!(
            with(""),
            Outcome::Succeeded,
            "a snippet without the attribute"
        );
        assert_eq!(with(r#","nologin":"-""#), Outcome::Succeeded);
        assert_eq!(with(r#","fail_type":"""#), Outcome::Succeeded);
        let disabled = Outcome::LoginRefused(NotCounted::Disabled);
        assert_eq!(with(r#","nologin":"""#), disabled, "nologin given empty");
        assert_eq!(with(r#","nologin":"y""#), disabled);
        assert_eq!(with(r#","fail_type":"disabled""#), disabled);
        assert_eq!(with(r#","fail_type":"account""#), disabled);
        assert_eq!(
            with(r#","fail_type":"expired""#),
            Outcome::LoginRefused(NotCounted::Expired)
        );
    }

    #[test]
    fn addresses_are_normalised_and_garbage_refused() {
        let remote = |text: &str| {
            parse(
                Command::Allow,
                format!(r#"{{"login":"a","protocol":"imap","remote":"{text}"}}"#).as_bytes(),
            )
            .map(|request| request.remote)
        };
        assert_eq!(
            remote("::ffff:192.0.2.9"),
            Ok(Some("192.0.2.9".parse().unwrap()))
        );
        assert_eq!(
            remote("2001:db8::1"),
            Ok(Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(remote(""), Ok(None));
        for bad in [
            "192.0.2.300",
            "localhost",
            "192.0.2.1:25",
            "fe80::1%eth0",
            " 192.0.2.1",
        ] {
            assert!(
                matches!(remote(bad), Err(RequestError::BadRemote(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_shapes_are_typed_errors() {
        let missing_remote = r#"{"login":"a","protocol":"imap","success":true}"#;
        assert_eq!(
            report(missing_remote),
            Err(RequestError::MissingField("remote"))
        );
        let no_success = r#"{"login":"a","protocol":"imap","remote":"192.0.2.1"}"#;
        assert_eq!(
            report(no_success),
            Err(RequestError::MissingField("success"))
        );
        for bad in [
            r#"{"login":"a","protocol":"imap","remote":"192.0.2.1","success":"true"}"#,
            r#"{"login":"a","protocol":"imap","remote":7,"success":true}"#,
            r#"{"login":"a","protocol":"imap","remote":"192.0.2.1","remote":"192.0.2.2","success":true}"#,
            r#"["login"]"#,
            r#"{"login":"a","#,
            "",
        ] {
            assert!(
                matches!(report(bad), Err(RequestError::BadJson(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse(Command::Report, b"\xff\x00\x01{"),
            Err(RequestError::BadJson(_))
        ));
        let big = format!(r#"{{"login":"{}"}}"#, "a".repeat(MAX_BODY));
        assert_eq!(report(&big), Err(RequestError::TooLarge));
    }

    #[test]
    fn a_password_hash_is_noticed_and_not_kept() {
        let body = r#"{"login":"a","protocol":"imap","pwhash":"0123abcd","remote":"192.0.2.1"}"#;
        let request = parse(Command::Allow, body.as_bytes()).unwrap();
        assert!(request.carried_password_hash);
        assert!(!format!("{request:?}").contains("0123abcd"));
    }
}
