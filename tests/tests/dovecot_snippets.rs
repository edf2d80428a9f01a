//! The Dovecot snippets in deploy/dovecot/, as shipped: the 2.3 one is
//! taken by the installed `doveconf` (Debian 12's Dovecot 2.3.19), the 2.4
//! one uses only the settings, blocks and variables of Dovecot 2.4 (not
//! packaged here: checked against its source, dovecot/core 2.4.4
//! src/auth/auth-settings.c, auth-request-var-expand.c, auth-policy.c and
//! src/lib-http/http-client-settings.c), and the attributes each makes
//! Dovecot send are exactly what the endpoint reads.
//!
//! Needs doveconf (Debian package dovecot-core; `cargo xtask setup`
//! installs it); panics otherwise, never skips. No root needed.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use smtp_gate::policy::dovecot::{
    request::{self, Command as PolicyCommand, Outcome, RequestError},
    PolicySecret,
};
use testkit::{
    process::{describe, output_within},
    scratch::Scratch,
};

const URL: &str = "http://127.0.0.1:10030/";

fn snippet_path(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../deploy/dovecot/smtp-gate-policy-{version}.conf"))
}

fn snippet(version: &str) -> String {
    let path = snippet_path(version);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The snippet with its optional lines (`#setting`, no space after the
/// `#`) taken, as an operator who wants them uncomments them.
fn with_optional_lines(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| {
                    c.is_ascii_alphabetic()
                        || c == '}'
                        || c == ' ' && rest.trim_start().starts_with("http_client_")
                }) =>
            {
                rest.replace("SECRET", "0123456789abcdef0123456789abcdef")
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `doveconf ARGS` on a private dovecot.conf that includes `snippet_text`.
fn doveconf(scratch: &Scratch, snippet_text: &str, args: &[&str]) -> String {
    let snippet = scratch.0.join("smtp-gate-policy.conf");
    fs::write(&snippet, snippet_text).unwrap();
    let conf = scratch.0.join("dovecot.conf");
    fs::write(
        &conf,
        format!(
            "base_dir = {}/run\n!include {}\n",
            scratch.0.display(),
            snippet.display()
        ),
    )
    .unwrap();
    let out = output_within(
        Command::new("doveconf").arg("-c").arg(&conf).args(args),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| {
        panic!(
            "doveconf cannot be run ({e}): install the Debian package dovecot-core \
             (cargo xtask setup installs dovecot-imapd and dovecot-pop3d)"
        )
    });
    assert!(
        out.status.success(),
        "doveconf {args:?} refused the snippet: {}",
        describe(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_23_snippet_is_taken_by_the_installed_doveconf() {
    let scratch = Scratch::new("dovecot-doveconf");
    for text in [snippet("2.3"), with_optional_lines(&snippet("2.3"))] {
        let shown = doveconf(&scratch, &text, &["-n"]);
        assert!(
            shown.contains(&format!("auth_policy_server_url = {URL}")),
            "{shown}"
        );
        let settings = doveconf(
            &scratch,
            &text,
            &[
                "-h",
                "auth_policy_check_before_auth",
                "auth_policy_check_after_auth",
                "auth_policy_report_after_auth",
                "auth_policy_reject_on_fail",
            ],
        );
        assert_eq!(
            settings.lines().collect::<Vec<_>>(),
            ["yes", "no", "yes", "no"]
        );
    }
    let header = doveconf(
        &scratch,
        &with_optional_lines(&snippet("2.3")),
        &["-h", "auth_policy_server_api_header"],
    );
    assert_eq!(
        header.trim(),
        "Authorization: Bearer 0123456789abcdef0123456789abcdef"
    );
}

/// Dovecot 2.4.4's auth policy settings (auth-settings.c).
const SETTINGS_24: &[&str] = &[
    "auth_policy_server_url",
    "auth_policy_server_api_header",
    "auth_policy_hash_mech",
    "auth_policy_hash_nonce",
    "auth_policy_reject_on_fail",
    "auth_policy_check_before_auth",
    "auth_policy_check_after_auth",
    "auth_policy_report_after_auth",
    "auth_policy_log_only",
    "auth_policy_request_attributes",
];
/// Settings 2.3 had and 2.4 dropped.
const GONE_IN_24: &[&str] = &["auth_policy_server_timeout_msecs"];
/// Some of 2.4's HTTP client settings (http-client-settings.c), which
/// the `auth_policy` filter takes.
const HTTP_CLIENT_24: &[&str] = &[
    "http_client_proxy_socket_path",
    "http_client_request_absolute_timeout",
    "http_client_max_idle_time",
    "http_client_max_parallel_connections",
];
/// The variables of 2.4's auth requests (auth-request-var-expand.c) and
/// of its policy requests (auth-policy.c).
const VARIABLES_24: &[&str] = &[
    "user",
    "protocol",
    "home",
    "local_ip",
    "remote_ip",
    "client_pid",
    "id",
    "mechanism",
    "secured",
    "local_port",
    "remote_port",
    "login_user",
    "session",
    "real_local_ip",
    "real_remote_ip",
    "client_id",
    "hashed_password",
    "requested_username",
    "fail_type",
];

/// A 2.4 config file's settings: `key = value` lines, `name {` blocks.
#[derive(Debug, Default)]
struct Config24 {
    settings: Vec<(String, String)>,
    /// Block name, then its `key = value` lines.
    blocks: Vec<(String, Vec<(String, String)>)>,
}

fn parse_24(text: &str) -> Config24 {
    let mut config = Config24::default();
    let mut open: Option<(String, Vec<(String, String)>)> = None;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "}" {
            config.blocks.push(
                open.take()
                    .unwrap_or_else(|| panic!("line {}: `}}` closes nothing", number + 1)),
            );
        } else if let Some(name) = line.strip_suffix('{') {
            assert!(
                open.is_none(),
                "line {}: blocks are not nested here",
                number + 1
            );
            open = Some((name.trim().to_owned(), Vec::new()));
        } else {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("line {}: not `key = value`: {line}", number + 1));
            let pair = (key.trim().to_owned(), value.trim().to_owned());
            match &mut open {
                Some((_, pairs)) => pairs.push(pair),
                None => config.settings.push(pair),
            }
        }
    }
    assert!(open.is_none(), "a block is left open");
    config
}

/// Every `%` starts a `%{name}` of a known variable (2.4 dropped `%s`,
/// `%r`, `%{rip}`, `%{service}`).
fn assert_24_variables(value: &str) {
    let mut rest = value;
    while let Some(at) = rest.find('%') {
        let name = rest[at + 1..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|(name, _)| name)
            .unwrap_or_else(|| panic!("`{value}`: 2.4 writes variables as %{{name}}"));
        assert!(
            VARIABLES_24.contains(&name),
            "`{value}`: 2.4 has no variable %{{{name}}}"
        );
        rest = &rest[at + 2 + name.len()..];
    }
}

#[test]
fn the_24_snippet_uses_only_24s_settings_blocks_and_variables() {
    for text in [snippet("2.4"), with_optional_lines(&snippet("2.4"))] {
        let config = parse_24(&text);
        for (key, value) in &config.settings {
            assert!(
                SETTINGS_24.contains(&key.as_str()),
                "2.4 has no setting {key}"
            );
            assert!(!GONE_IN_24.contains(&key.as_str()), "2.4 dropped {key}");
            assert_24_variables(value);
        }
        for (name, pairs) in &config.blocks {
            match name.as_str() {
                // A string list: each line one attribute.
                "auth_policy_request_attributes" => {
                    for (_, value) in pairs {
                        assert_24_variables(value);
                    }
                }
                // A named filter of HTTP client settings.
                "auth_policy" => {
                    for (key, _) in pairs {
                        assert!(
                            HTTP_CLIENT_24.contains(&key.as_str()),
                            "auth_policy {{ {key} }}"
                        );
                    }
                }
                other => panic!("2.4 has no block {other} for the policy client"),
            }
        }
        let value = |key: &str| {
            config
                .settings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(value("auth_policy_server_url"), Some(URL));
        // Required whenever the URL is set (auth_settings_check()).
        assert!(value("auth_policy_hash_nonce").is_some_and(|v| !v.is_empty()));
        // The defaults (pwhash among them) are cleared before the block.
        let clear = config
            .settings
            .iter()
            .position(|(k, v)| k == "auth_policy_request_attributes" && v.is_empty());
        assert!(clear.is_some(), "the default attributes are not cleared");
    }
    let optional = parse_24(&with_optional_lines(&snippet("2.4")));
    assert!(optional
        .blocks
        .iter()
        .any(|(name, pairs)| name == "auth_policy"
            && pairs.contains(&(
                "http_client_proxy_socket_path".into(),
                "/run/smtp-gate/dovecot-policy.sock".into()
            ))));
}

/// The values Dovecot would put in for the variables.
/// What Dovecot makes of `value` in a report of `success`: 2.4's
/// `fail_type` is empty on a success; 2.3's `nologin` is `-` for an
/// account the passdb gave no `nologin`.
fn expand(value: &str, success: bool) -> String {
    match value {
        "%{requested_username}" => "alice@example.org".into(),
        "%{rip}" | "%{remote_ip}" => "192.0.2.25".into(),
        "%s" | "%{protocol}" => "imap".into(),
        "%{fail_type}" if success => String::new(),
        "%{fail_type}" => "credentials".into(),
        "%{passdb:nologin:-}" => "-".into(),
        other => panic!("the snippet sends `{other}`, which the endpoint does not read"),
    }
}

/// A report as auth_policy_create_json() writes it: the attributes sorted
/// by key, each a string, then success, policy_reject and tls.
fn report_json(attributes: &[(String, String)], success: bool) -> String {
    let sorted: BTreeMap<_, _> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, success)))
        .collect();
    let mut json = serde_json::to_string(&sorted).unwrap();
    json.pop();
    format!("{json},\"success\":{success},\"policy_reject\":false,\"tls\":false}}")
}

fn attributes_23() -> Vec<(String, String)> {
    let scratch = Scratch::new("dovecot-attributes");
    let shown = doveconf(
        &scratch,
        &snippet("2.3"),
        &["-h", "auth_policy_request_attributes"],
    );
    shown
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn attributes_24() -> Vec<(String, String)> {
    let config = parse_24(&snippet("2.4"));
    config
        .blocks
        .into_iter()
        .find(|(name, _)| name == "auth_policy_request_attributes")
        .expect("an attributes block")
        .1
}

#[test]
fn each_snippet_makes_dovecot_send_exactly_what_the_endpoint_reads() {
    for (version, attributes, read) in [
        (
            "2.3",
            attributes_23(),
            &["login", "nologin", "protocol", "remote"][..],
        ),
        (
            "2.4",
            attributes_24(),
            &["fail_type", "login", "protocol", "remote"][..],
        ),
    ] {
        let mut keys: Vec<&str> = attributes.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, read, "{version}: the attributes sent");
        let report = request::parse(
            PolicyCommand::Report,
            report_json(&attributes, true).as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(
            report.remote,
            Some("192.0.2.25".parse().unwrap()),
            "{version}"
        );
        assert_eq!(
            (report.login.as_str(), report.protocol.as_str()),
            ("alice@example.org", "imap")
        );
        assert_eq!(report.outcome, Some(Outcome::Succeeded));
        assert!(
            !report.carried_password_hash,
            "{version}: a password hash is sent"
        );
        let failed = request::parse(
            PolicyCommand::Report,
            report_json(&attributes, false).as_bytes(),
        )
        .unwrap();
        assert_eq!(failed.outcome, Some(Outcome::Failed), "{version}");
        // Each attribute the endpoint needs is one the snippet sends.
        for needed in ["login", "protocol", "remote"] {
            let fewer: Vec<_> = attributes
                .iter()
                .filter(|(k, _)| k != needed)
                .cloned()
                .collect();
            assert_eq!(
                request::parse(PolicyCommand::Report, report_json(&fewer, true).as_bytes()),
                Err(RequestError::MissingField(needed)),
                "{version} without {needed}"
            );
        }
    }
}

/// Dovecot splits `auth_policy_server_api_header` at its first colon and
/// sends the rest, its leading space included, as the value
/// (auth_policy_send_request()); HTTP drops the space.
#[test]
fn the_snippets_secret_header_is_the_one_the_endpoint_checks() {
    let token = "0123456789abcdef0123456789abcdef";
    let secret = PolicySecret::from_file_text(&format!("{token}\n")).unwrap();
    for version in ["2.3", "2.4"] {
        let text = with_optional_lines(&snippet(version));
        let setting = text
            .lines()
            .find_map(|line| line.strip_prefix("auth_policy_server_api_header = "))
            .unwrap_or_else(|| panic!("{version}: no api header line"));
        let (name, value) = setting.split_once(':').unwrap();
        assert_eq!(name, "Authorization", "{version}");
        assert!(
            secret.matches(Some(value.trim_start().as_bytes())),
            "{version}: `{value}`"
        );
    }
}
