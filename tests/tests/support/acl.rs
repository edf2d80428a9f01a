//! deploy/redis-acl.conf as the tests load it: the two users' password
//! hashes filled in (shared by deploy_agent.rs and bus_agent_e2e.rs).

use std::{path::Path, process::Command};

/// The ACL file with `publisher`'s and `edge`'s passwords.
pub fn acl_file(publisher: &str, edge: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis-acl.conf");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let placeholder = format!("#{}", "0".repeat(64));
    let mut out = String::new();
    for line in text.lines() {
        let password = if line.starts_with("user smtp-gate-pop ") {
            Some(publisher)
        } else if line.starts_with("user smtp-gate-edge ") {
            Some(edge)
        } else {
            None
        };
        match password {
            Some(password) => {
                assert!(line.contains(&placeholder), "{line}");
                out.push_str(&line.replacen(&placeholder, &format!("#{}", sha256(password)), 1));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// SHA-256 in hex, as `printf '%s' PASSWORD | sha256sum` (the file's
/// instructions) gives it.
fn sha256(text: &str) -> String {
    use std::io::Write;
    let out = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum (coreutils)");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}
