//! What the endpoint did, counted for logs and metrics.

crate::policy_counters! {
    PolicyCounters, CountsNow;
    /// Requests answered, whatever the answer.
    requests,
    /// `allow` requests answered "go on".
    allowed,
    /// `allow` requests refused, and successful logins not granted: the
    /// client is banned.
    refused,
    /// Successful logins of an enabled protocol, granted.
    grants,
    /// Successful logins whose grant could not be written.
    grant_errors,
    /// Failed logins counted toward a ban.
    failures,
    /// Failed logins not counted: our own refusal, or Dovecot's trouble.
    failures_not_counted,
    /// Reports of a protocol not enabled, or without a client address.
    ignored,
    /// Requests refused as malformed (4xx).
    bad_requests,
    /// Requests without the shared secret (401).
    unauthorized,
    /// Addresses of Dovecot's open sessions not renewed, one a round
    /// each: banned (dovecot_sessions/).
    sessions_banned,
    /// Times the Unix socket's file was found replaced by another's.
    socket_replaced,
    /// Idle connections closed for a new one's room: as many as the
    /// endpoint takes were open.
    connections_closed_for_room,
}
