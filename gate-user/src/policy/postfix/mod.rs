//! Postfix's policy delegation (SMTPD_POLICY_README): Postfix's SMTP
//! server asks, at RCPT, whether a client may send (`check_policy_service`
//! in deploy/postfix/); the answer comes from the grants and exempt
//! networks the kernel gate reads ([`GrantLookup`](super::GrantLookup)).
//!
//! - a fresh grant: the granted action, `OK` by default (the grant permits
//!   relaying, as POP-before-SMTP always did) or `DUNNO`;
//! - an exempt network: `DUNNO` (Postfix's other restrictions decide);
//! - neither: the refusal, by default
//!   `554 5.7.1 Send mail after checking it: log in to POP3 (or IMAP), then send again`,
//!   and a `refuse source=postfix ...` log line;
//! - the maps cannot be read, or the request is malformed: a temporary
//!   451, so nothing passes and nothing bounces.
//!
//! request.rs parses a request, framing.rs cuts the stream into requests,
//! action.rs checks the configured actions, service.rs serves.

mod action;
mod framing;
mod request;
mod service;

pub use action::{GrantedAction, RefusedAction, MAX_REFUSAL};
pub use request::{
    parse_request, ClientAddress, Malformed, PolicyRequest, MAX_ATTRIBUTES, MAX_LINE, MAX_REQUEST,
};
pub use service::{
    refuse_line, serve, CountersSnapshot, PolicyCounters, PostfixPolicySettings,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT, LOOKUP_FAILED_ANSWER,
    MALFORMED_ANSWER,
};
