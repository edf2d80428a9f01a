//! A real IMAP client (Python's imaplib) for the Dovecot tests: one that
//! logs in and stays connected in IDLE (RFC 2177) until told to log out,
//! as a mail program waiting for new mail does, and one-shot logins.

use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use crate::netns::netns_command;

/// Logs in, selects INBOX, enters IDLE, says so on stdout; on a line on
/// stdin ends IDLE and logs out, and says so.
const IDLER_PY: &str = r#"
import imaplib, json, sys
host, port, user, password = sys.argv[1:5]
m = imaplib.IMAP4(host, int(port))
m.login(user, password)
m.select("INBOX")
tag = m._new_tag()
m.send(tag + b" IDLE\r\n")
print(json.dumps({"idle": m.readline().decode().strip()}), flush=True)
sys.stdin.readline()
m.send(b"DONE\r\n")
while not m.readline().startswith(tag):
    pass
m.logout()
print(json.dumps({"logout": "ok"}), flush=True)
"#;

/// Logs in and out once; prints the outcome as JSON.
const LOGIN_PY: &str = r#"
import imaplib, json, sys
host, port, user, password = sys.argv[1:5]
m = imaplib.IMAP4(host, int(port))
try:
    m.login(user, password)
    m.logout()
    print(json.dumps({"login": "ok"}))
except imaplib.IMAP4.error as e:
    print(json.dumps({"login": "failed", "why": str(e)}))
"#;

/// How long a client step may take: only a hang is longer.
const STEP_BOUND: Duration = Duration::from_secs(30);

/// An IMAP client logged in and idling.
pub struct ImapIdler {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ImapIdler {
    /// Logs `user` in from namespace `ns` to `server`:`port` and enters
    /// IDLE; returns once the server accepted the IDLE.
    pub fn start(ns: &str, server: IpAddr, port: u16, user: &str, password: &str) -> Self {
        let mut child = netns_command(ns, "python3")
            .args([
                "-c",
                IDLER_PY,
                &server.to_string(),
                &port.to_string(),
                user,
                password,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start python3's imaplib");
        let stdin = child.stdin.take();
        let lines = read_lines(child.stdout.take().expect("stdout"));
        let mut idler = Self {
            child,
            stdin,
            lines,
        };
        let said = idler.next_line("entering IDLE");
        assert!(
            said.contains("\"+ "),
            "the server did not accept IDLE: {said}"
        );
        idler
    }

    fn next_line(&mut self, step: &str) -> String {
        match self.lines.recv_timeout(STEP_BOUND) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                panic!("the IMAP client hung or died {step}");
            }
        }
    }

    /// Ends IDLE and logs out; returns once logged out.
    pub fn logout(mut self) {
        let mut stdin = self.stdin.take().expect("stdin");
        stdin
            .write_all(b"logout\n")
            .expect("telling the IMAP client");
        drop(stdin);
        let said = self.next_line("logging out");
        assert!(said.contains("logout"), "the IMAP client said {said}");
        let _ = self.child.wait();
    }
}

impl Drop for ImapIdler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    receive
}

/// Logs `user` in and out once from namespace `ns`; true if the login
/// was accepted.
pub fn imap_login(ns: &str, server: IpAddr, port: u16, user: &str, password: &str) -> bool {
    let out = crate::process::output_within(
        netns_command(ns, "python3").args([
            "-c",
            LOGIN_PY,
            &server.to_string(),
            &port.to_string(),
            user,
            password,
        ]),
        STEP_BOUND,
    )
    .expect("cannot run python3's imaplib");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the IMAP client failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    said.contains("\"login\": \"ok\"")
}
