//! A real POP3 client in a client namespace: Python's poplib, driven by a
//! JSON plan, and the check that it and curl (with POP3) are installed.

use std::{net::IpAddr, time::Duration};

use crate::{
    netns::netns_command,
    process::{describe, output_within, require_tool, run_ok},
    serve::POP3_PORT,
};

/// The POP3 client the labs run inside a client namespace: Python's poplib
/// driven by a JSON plan (see the script's header and [`pop3_client`]).
pub const POP3_CLIENT_PY: &str = include_str!("pop3_client.py");

/// How long a client may take to run its plan: more than the waits in any
/// plan, which have bounds of their own.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Panics unless python3 with poplib and curl with POP3 support are there.
pub fn require_pop3_clients() {
    require_tool("python3", &["-c", "import json, poplib, socket"], "python3");
    require_tool("curl", &["--version"], "curl");
    let version = run_ok("curl", &["--version"]);
    assert!(
        version
            .lines()
            .any(|l| l.starts_with("Protocols:") && l.split_whitespace().any(|p| p == "pop3")),
        "this curl has no POP3 support: {version}"
    );
}

/// Panics unless the TLS clients of the end-to-end tests are there:
/// openssl's s_client, curl with POP3S, python3's ssl and fetchmail.
pub fn require_tls_clients() {
    require_pop3_clients();
    require_tool("openssl", &["version"], "openssl");
    require_tool(
        "python3",
        &["-c", "import poplib, ssl; poplib.POP3_SSL"],
        "python3",
    );
    require_tool("fetchmail", &["--version"], "fetchmail");
    let version = run_ok("curl", &["--version"]);
    assert!(
        version
            .lines()
            .any(|l| l.starts_with("Protocols:") && l.split_whitespace().any(|p| p == "pop3s")),
        "this curl has no POP3S support: {version}"
    );
}

/// Runs the poplib client ([`POP3_CLIENT_PY`]) in namespace `ns` against
/// `host` (an IPv4 or IPv6 address) with these steps (a JSON array of step
/// objects) and returns one result object per step. Panics if the script
/// fails, times out or prints something else than its JSON.
pub fn pop3_client(ns: &str, host: IpAddr, steps: serde_json::Value) -> Vec<serde_json::Value> {
    pop3_client_at(ns, host, POP3_PORT, steps)
}

/// [`pop3_client`] with POP3 on `port` (the `smtp` steps still go to
/// `host`'s port 25, or the port they name).
pub fn pop3_client_at(
    ns: &str,
    host: IpAddr,
    port: u16,
    steps: serde_json::Value,
) -> Vec<serde_json::Value> {
    let plan = serde_json::json!({ "host": host.to_string(), "port": port, "steps": steps });
    let out = output_within(
        netns_command(ns, "python3")
            .args(["-c", POP3_CLIENT_PY])
            .arg(plan.to_string()),
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("the POP3 client in {ns} did not finish: {e}"));
    if !out.status.success() {
        panic!("the POP3 client in {ns} failed: {}", describe(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "the POP3 client printed no JSON list ({e}): {}",
            describe(&out)
        )
    })
}
