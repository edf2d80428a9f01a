//! Dovecot's authentication policy server protocol, served so that a
//! login to Dovecot (IMAP, POP3) grants its client as a login to our POP3
//! does (issue 12). Ready-made Dovecot settings: deploy/dovecot/.
//!
//! # What Dovecot sends (read from its source)
//!
//! Sources: dovecot/core `src/auth/auth-policy.c`, `auth-settings.c`,
//! `auth-request.c`, `auth-request-handler.c` at tag 2.3.19.1 (the
//! version Debian 12 ships) and at 2.4.4; `src/lib-http/http-client-
//! request.c` and `http-client-settings.c` at the same tags;
//! doc.dovecot.org `2.3/configuration_manual/authentication/auth_policy`
//! and `2.4.1/core/config/auth/policy.html`; dovecot/documentation
//! pull 1082 (2.4's string lists).
//!
//! * The request: `POST <auth_policy_server_url>?command=allow` or
//!   `...?command=report`; "url is appended with ?command=allow/report
//!   unless it ends with &, at which just command=allow/report is added"
//!   (auth_policy_url()). So the URL `http://127.0.0.1:10030/` gives the
//!   target `/?command=report`; we take the path `/` only.
//! * Headers (http_client_request_send_real() in 2.3): `Host`, `Date`,
//!   `User-Agent: dovecot/auth-policy-client`, `Content-Length` (the body
//!   is a buffer of known size, so never chunked, and no `Expect`),
//!   `Connection: Keep-Alive` (not to a proxy), `Content-Type:
//!   application/json`, and the API header: "if
//!   ((ptr = strstr(api_header, ":")) != NULL) add header
//!   t_strcut(api_header, ':') with value ptr + 1, else add X-API-Key"
//!   (auth_policy_send_request()). The snippets send `Authorization:
//!   Bearer <secret>` when a secret is configured (settings.rs). A URL
//!   with `user:pass@` would send Basic auth instead; we do not use it.
//! * Connections are kept alive: Dovecot's client keeps up to 100
//!   parallel connections, each idle at most 10 s (`max_idle_time_msecs =
//!   10000` in 2.3's http_client_set; `auth_policy/http_client_max_idle_time
//!   = 10s` in 2.4's defaults), with one connect attempt and an absolute
//!   request timeout of 2 s (2.3 `auth_policy_server_timeout_msecs`; 2.4
//!   `auth_policy { http_client_request_absolute_timeout }`).
//! * The body is a JSON object built from `auth_policy_request_attributes`,
//!   each `key=value` pair written as `"key":"<expanded value>"` (always a
//!   string, JSON-escaped; a key with `/` opens a nested object), sorted
//!   by key; then, in reports only, `"success":true|false` ("!failed &&
//!   successful && !internal_failure") and `"policy_reject":true|false`
//!   (the request was refused by an `allow` answer below 0); then, always,
//!   `"tls":true|false`. 2.3's default attributes: `login=%{requested_username}
//!   pwhash=%{hashed_password} remote=%{rip} device_id=%{client_id}
//!   protocol=%s session_id=%{session}`. 2.4 keeps the key names, spells
//!   the values `%{remote_ip}` and `%{protocol}`, adds
//!   `fail_type=%{fail_type}` (`policy`, `internal`, `credentials`,
//!   `expired`, `disabled`, `account`, or empty while not finished or on
//!   success), and makes the setting a string list:
//!   `auth_policy_request_attributes { login = %{requested_username} }`,
//!   whose defaults are dropped by `auth_policy_request_attributes =`
//!   first. We read `remote`, `login`, `protocol`, `success`,
//!   `policy_reject`, `fail_type`, `nologin`; the snippets send exactly
//!   those (2.3 has no `fail_type`: its failures all count but policy
//!   refusals, a passdb outage's among them; 2.3 sends `nologin`, see
//!   request.rs `outcome`).
//! * `remote` is `%{rip}`/`%{remote_ip}`: empty when Dovecot knows no
//!   client address (e.g. `doveadm auth test` without `-x rip=`); taken
//!   as "no client", not as an error. For a login proxied from a trusted
//!   network (`login_trusted_networks`) it is the real client's.
//! * `pwhash` is "Truncated auth policy hash of username and password":
//!   hex of `auth_policy_hash_mech` (sha256) over the nonce, the user
//!   name with its NUL and the password, truncated to 12 bits by default.
//!   We never want it; the snippets leave it out and a request carrying it
//!   is warned of once. `auth_policy_hash_nonce` is still required by
//!   both 2.3 and 2.4 whenever `auth_policy_server_url` is set
//!   ("auth_policy_hash_nonce must be set when policy server is used",
//!   auth_settings_check()), so the snippets set one.
//! * The answer Dovecot reads (only for `allow`; a report's answer body is
//!   not parsed, but any status outside 200-209 is logged as "Policy
//!   server HTTP error"): a JSON object with `"status":N` and optional
//!   `"msg":"..."`; N < 0 "drop connection" (the login fails; msg becomes
//!   the failure's `reason`), N = 0 "continue", N > 0 "tarpit N
//!   second(s)". 2.4 also fails the parse when `status` is missing.
//! * Failing open: the result starts as `policy_reject_on_fail ? -1 : 0`
//!   and stays so on an HTTP error, a refused connection, a timeout or a
//!   bad answer. With `auth_policy_reject_on_fail = no` (the default and
//!   the snippets' value) Dovecot logs an error and lets the login go on
//!   when we are down.
//! * When: `allow` before the password is checked
//!   (`auth_policy_check_before_auth`, default yes) and again after a
//!   success (`auth_policy_check_after_auth`, default yes); `report` when
//!   the authentication ends, for success and failure alike
//!   (`auth_policy_report_after_auth`, default yes;
//!   auth_request_handler_reply_success_finish() and
//!   auth_request_handle_failure()). Master-user lookups send nothing.
//!   The snippets ask before (so a banned client is refused before its
//!   password is tried), not after (one round trip less), and report.
//! * Unix sockets: 2.3's auth policy client has a fixed, TCP-only
//!   configuration (`static struct http_client_settings http_client_set`
//!   in auth-policy.c) and `http_url_parse()` takes http/https URLs only.
//!   2.4 reads the `http_client_*` settings inside the `auth_policy`
//!   filter, among them `http_client_proxy_socket_path`: requests then go
//!   over that Unix socket as to a proxy, with an absolute-form target
//!   (`POST http://127.0.0.1:10030/?command=report HTTP/1.1`, no
//!   `Connection: Keep-Alive`); we take the path of such a target too.
//!   So `dovecot_policy_listen` may be a socket's path for Dovecot 2.4
//!   (its auth process must be able to open it: the socket is mode 0660).
//!
//! # What we do
//! `allow`: "go on" (status 0) unless the client is banned (status -1).
//! `report` of a protocol enabled in `dovecot_policy_protocols`: a success
//! grants the client (and is answered "go on" even if the grant fails: our
//! trouble must never refuse a good login); a failure is counted toward a
//! ban unless Dovecot says it was not the client's guess (`policy_reject`
//! or `fail_type` `policy`: we refused it already, counting it again would
//! count one failure twice; `internal`, `expired`, `disabled`). Other
//! protocols, and reports without an address, change nothing.

pub mod counters;
pub mod endpoint;
pub mod request;
pub mod settings;

pub use counters::{CountsNow, PolicyCounters};
pub use endpoint::serve;
pub use settings::{DovecotPolicySettings, LiveSecret, PolicySecret};

#[cfg(test)]
mod endpoint_tests;
