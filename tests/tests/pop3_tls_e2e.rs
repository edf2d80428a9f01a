//! End to end over TLS: the real `smtp-gate serve` with a certificate from
//! a CA made for the test, in the server namespace of a lab, and real
//! clients in the client namespace, each given that CA as the only one it
//! trusts (no client is told to skip verification): openssl s_client,
//! curl, Python's poplib and fetchmail, each over implicit TLS (995) and
//! over STLS (110). Each must log in, get the message, and leave a grant
//! for the client's address in the gate's map; the daemon's end line of
//! each session says it was TLS.
//!
//! Needs root, a built binary (`cargo build -p gate-user`) and the clients
//! (`cargo xtask setup` installs them); panics otherwise, never skips.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use serde_json::json;
use testkit::{
    lab::{Lab, Link},
    mail::MailFixture,
    netns::netns_command,
    pop3_client::{pop3_client, require_tls_clients},
    process::{describe, output_within},
    serve::ServeDaemon,
    tls::{TestPki, SERVER_NAME},
};

const ALICE: &str = "alice";
const ALICE_SECRET: &str = "wonderland";
const MESSAGE: &str = "From: carol@example.org\nSubject: Over TLS\n\nHello Alice, privately.\n";
/// How long a client may take: only a hang takes longer.
const CLIENT_BOUND: Duration = Duration::from_secs(90);
/// How long the daemon may take to log a session's end.
const LOG_BOUND: Duration = Duration::from_secs(30);

/// A lab whose daemon serves alice over TLS. Fields drop in order: the
/// daemon before the files and the lab.
struct TlsLab {
    daemon: ServeDaemon,
    pki: TestPki,
    mail: MailFixture,
    lab: Lab,
}

impl TlsLab {
    fn new() -> Self {
        require_tls_clients();
        let lab = Lab::new();
        let mut mail = MailFixture::new();
        mail.add_user(ALICE, &format!("{{PLAIN}}{ALICE_SECRET}"));
        mail.deliver(ALICE, "1700000001.M1P1.lab", MESSAGE.as_bytes());
        let link = &lab.client;
        let pki = TestPki::new(mail.dir(), &[link.server_v4.into(), link.server_v6.into()]);
        let args = [
            "--iface",
            &link.server_iface,
            "--listen",
            "[::]:110",
            "--listen-tls",
            "[::]:995",
            "--tls-cert",
            &path_str(&pki.cert),
            "--tls-key",
            &path_str(&pki.key),
            "--users",
            &path_str(&mail.users_file()),
            "--mail-root",
            &path_str(&mail.mail_root()),
            "--hostname",
            "lab.test",
            "--window",
            "10m",
            "--shutdown-grace",
            "2s",
        ];
        let daemon = lab.serve(&args, &mail.dir().join("serve.log"));
        Self {
            daemon,
            pki,
            mail,
            lab,
        }
    }

    fn client(&self) -> &Link {
        &self.lab.client
    }

    /// `program ARGS` in the client namespace, bounded; its output.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        output_within(
            netns_command(&self.client().client_ns, program).args(args),
            CLIENT_BOUND,
        )
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
    }

    /// [`TlsLab::run`], which must succeed.
    fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n--- daemon log ---\n{}",
            describe(&out),
            self.daemon.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the gate's map holds a live grant for the client's IPv4.
    fn granted(&self) -> bool {
        let client = self.client().client_v4.to_string();
        self.lab
            .list(&[])
            .iter()
            .any(|g| g["address"].as_str() == Some(client.as_str()) && g["expired"] == json!(false))
    }

    /// Checks that the last login granted the client, then revokes the
    /// grant so that the next login must make it again.
    fn assert_granted_then_revoke(&self, what: &str) {
        assert!(
            self.granted(),
            "{what}: no grant for {}; log:\n{}",
            self.client().client_v4,
            self.daemon.log()
        );
        self.lab
            .gate_ok(&["revoke", &self.client().client_v4.to_string()]);
        assert!(!self.granted(), "revoked");
    }

    /// Waits until `count` sessions from the client ended logged in over
    /// `version`, and gives the log.
    fn wait_tls_sessions(&mut self, version: &str, count: usize) -> String {
        let needle = format!(
            "addr={} user={ALICE} tls={version} ",
            self.client().client_v4
        );
        self.daemon.wait_for_log(&needle, count, LOG_BOUND)
    }

    fn ca(&self) -> String {
        path_str(&self.pki.ca)
    }

    fn server(&self) -> String {
        self.client().server_v4.to_string()
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The message as POP3 sends it: CRLF line ends.
fn on_the_wire() -> String {
    MESSAGE.replace('\n', "\r\n")
}

/// A file of `text` in `dir`, mode 600.
fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// openssl s_client, verifying the server's address against the test CA
/// (`-verify_return_error`: a certificate that does not verify ends the
/// handshake), over implicit TLS and with `-starttls pop3`; and the same
/// client given another CA is refused, so verification is really done.
#[test]
fn openssl_s_client_logs_in_over_tls_and_starttls() {
    let mut fx = TlsLab::new();
    let commands = private_file(
        fx.mail.dir(),
        "s_client.in",
        &format!("USER {ALICE}\nPASS {ALICE_SECRET}\nRETR 1\nQUIT\n"),
    );
    let s_client = |ca: &str, connect: &[&str]| -> Output {
        let script = format!(
            "exec openssl s_client {} -CAfile {ca} -verify_return_error -verify_ip {} -crlf \
             -quiet < {}",
            connect.join(" "),
            fx.server(),
            commands.display()
        );
        fx.run("sh", &["-c", &script])
    };
    let implicit = format!("{}:995", fx.server());
    for (what, connect) in [
        ("implicit TLS", vec!["-connect", implicit.as_str()]),
        (
            "STLS",
            vec![
                "-connect",
                &format!("{}:110", fx.server()),
                "-starttls",
                "pop3",
            ],
        ),
    ] {
        let out = s_client(&fx.ca(), &connect.iter().map(|s| &**s).collect::<Vec<_>>());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "s_client over {what}: {}",
            describe(&out)
        );
        assert!(
            text.contains(&on_the_wire()),
            "s_client over {what} did not get the message: {text}"
        );
        fx.assert_granted_then_revoke(&format!("s_client over {what}"));
    }
    let other = tempdir_in(fx.mail.dir(), "other-ca");
    let stranger = TestPki::new(&other, &[]);
    let out = s_client(&path_str(&stranger.ca), &["-connect", &implicit]);
    assert!(
        !out.status.success(),
        "a certificate from another CA verified: {}",
        describe(&out)
    );
    assert!(!fx.granted(), "no login without verification");
    fx.wait_tls_sessions("TLSv1.3", 2);
}

/// curl: pop3s:// (implicit TLS) and pop3:// with --ssl-reqd (STLS),
/// trusting the test CA alone.
#[test]
fn curl_retrieves_over_pop3s_and_starttls() {
    let mut fx = TlsLab::new();
    let user = format!("{ALICE}:{ALICE_SECRET}");
    let ca = fx.ca();
    let base = ["-sS", "--max-time", "60", "--cacert", &ca, "-u", &user];
    let implicit = format!("pop3s://{}/1", fx.server());
    let message = fx.run_ok("curl", &[&base[..], &[&implicit]].concat());
    assert_eq!(message, on_the_wire(), "curl pop3s://");
    fx.assert_granted_then_revoke("curl pop3s://");
    let stls = format!("pop3://{}/1", fx.server());
    let message = fx.run_ok("curl", &[&base[..], &["--ssl-reqd", &stls]].concat());
    assert_eq!(message, on_the_wire(), "curl pop3:// --ssl-reqd");
    fx.assert_granted_then_revoke("curl --ssl-reqd");
    fx.wait_tls_sessions("TLSv1.3", 2);
}

/// Python's poplib: POP3_SSL, and POP3 with stls(), each with a context
/// that trusts the test CA alone and checks the server's address.
#[test]
fn python_poplib_logs_in_with_pop3_ssl_and_stls() {
    let mut fx = TlsLab::new();
    let host = fx.client().server_v4.into();
    let ns = fx.client().client_ns.clone();
    let retr = |results: &[serde_json::Value], what: &str| {
        for (i, result) in results.iter().enumerate() {
            assert!(
                result.get("error").is_none() && result.get("oserror").is_none(),
                "{what}: step {i} failed: {results:?}"
            );
        }
        let lines: Vec<&str> = results[results.len() - 2]["lines"]
            .as_array()
            .expect("RETR's lines")
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(lines.join("\n") + "\n", MESSAGE, "{what}");
    };
    let login = [
        json!({"op": "login", "user": ALICE, "password": ALICE_SECRET}),
        json!({"op": "retr", "n": 1}),
        json!({"op": "quit"}),
    ];
    let mut implicit = vec![json!({"op": "connect", "tls": {"port": 995, "cafile": fx.ca()}})];
    implicit.extend(login.clone());
    let results = pop3_client(&ns, host, json!(implicit));
    assert_eq!(results[0]["version"], "TLSv1.3", "{results:?}");
    retr(&results, "POP3_SSL");
    fx.assert_granted_then_revoke("POP3_SSL");

    let mut stls = vec![
        json!({"op": "connect"}),
        json!({"op": "stls", "cafile": fx.ca()}),
    ];
    stls.extend(login);
    let results = pop3_client(&ns, host, json!(stls));
    assert!(
        results[1]["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("+OK"),
        "{results:?}"
    );
    retr(&results, "stls()");
    fx.assert_granted_then_revoke("stls()");
    fx.wait_tls_sessions("TLSv1.3", 2);
}

/// fetchmail with `ssl` (implicit TLS on 995) and with `sslproto tls1.2`
/// alone (STLS on 110, TLS 1.2), checking the certificate against the
/// test CA and the name in it (`sslcertck`), delivering to a file.
#[test]
fn fetchmail_fetches_over_ssl_and_over_stls_with_tls12() {
    let mut fx = TlsLab::new();
    let dir = fx.mail.dir().to_path_buf();
    for (what, port, tls) in [
        ("--ssl", 995, "ssl".to_string()),
        ("--sslproto tls1.2", 110, "sslproto \"tls1.2\"".to_string()),
    ] {
        let delivered = dir.join(format!("fetched-{port}"));
        let rc = private_file(
            &dir,
            &format!("fetchmailrc-{port}"),
            &format!(
                "set no syslog\n\
                 poll {server} with proto POP3 port {port} timeout 60\n\
                 \tuser \"{ALICE}\" there with password \"{ALICE_SECRET}\" is \"root\" here\n\
                 \t{tls} sslcertck sslcertfile \"{ca}\" sslcommonname \"{SERVER_NAME}\"\n\
                 \tkeep fetchall\n\
                 \tmda \"/bin/sh -c 'cat >> {delivered}'\"\n",
                server = fx.server(),
                ca = fx.ca(),
                delivered = delivered.display(),
            ),
        );
        let ids = dir.join(format!("fetchids-{port}"));
        fx.run_ok(
            "fetchmail",
            &["-f", &path_str(&rc), "-i", &path_str(&ids), "-v"],
        );
        let got = fs::read_to_string(&delivered)
            .unwrap_or_else(|e| panic!("fetchmail {what} delivered nothing: {e}"));
        assert!(
            got.contains("Hello Alice, privately."),
            "fetchmail {what} delivered: {got}"
        );
        fx.assert_granted_then_revoke(&format!("fetchmail {what}"));
    }
    fx.wait_tls_sessions("TLSv1.3", 1);
    fx.wait_tls_sessions("TLSv1.2", 1);
}

/// A directory `name` under `dir`.
fn tempdir_in(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::create_dir_all(&path).unwrap();
    path
}
