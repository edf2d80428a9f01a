//! End to end with Postfix: the real Postfix in the lab's server namespace
//! with deploy/postfix/main.cf.snippet included verbatim, asking the real
//! `smtp-gate serve` (policy service on 127.0.0.1:10031, the gate attached
//! in `deny = monitor` mode, so SYNs pass and Postfix answers). A client
//! without a grant reads our refusal at RCPT; after a POP3 login to our
//! service its mail is accepted and delivered; an exempt network's mail is
//! accepted without a login.
//!
//! Needs root, a built binary (`cargo build`), python3 and Debian's
//! postfix; panics otherwise (never skips).

use std::{
    net::IpAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use testkit::{
    lab::{Lab, LabOptions, Link},
    mail::MailFixture,
    netns::netns_command,
    pop3_client::{pop3_client, require_pop3_clients},
    postfix::PostfixServer,
    process::{describe, output_within},
};

const ALICE: &str = "alice";
const ALICE_SECRET: &str = "wonderland";
/// The default refusal's text, as the user's mail program shows it.
const REFUSAL: &str = "Send mail after checking it: log in to POP3 (or IMAP), then send again";
/// Delivery through Postfix's queue: only a hang takes longer.
const DELIVERY_BOUND: Duration = Duration::from_secs(30);
const CLIENT_BOUND: Duration = Duration::from_secs(90);

/// One SMTP transaction with Python's smtplib: EHLO, MAIL, RCPT and, if
/// the recipient is accepted and the plan says so, DATA. Prints each reply
/// as [code, text].
const SMTP_CLIENT_PY: &str = r#"
import json, smtplib, sys
plan = json.loads(sys.argv[1])
smtp = smtplib.SMTP(plan["host"], 25, timeout=30)
smtp.ehlo("client.example")
out = {}
code, text = smtp.mail(plan["from"])
out["mail"] = [code, text.decode()]
code, text = smtp.rcpt(plan["to"])
out["rcpt"] = [code, text.decode()]
if code == 250 and plan["data"]:
    code, text = smtp.data(plan["message"].encode())
    out["data"] = [code, text.decode()]
smtp.quit()
print(json.dumps(out))
"#;

/// Sends one message from `link`'s namespace to the server's address.
fn send(link: &Link, server: IpAddr, subject: &str) -> Value {
    transaction(link, server, "alice@lab.test", subject, true)
}

/// Asks to relay to another domain (RCPT only: nothing is queued).
fn relay(link: &Link, server: IpAddr) -> Value {
    transaction(link, server, "dave@elsewhere.example", "relay", false)
}

fn transaction(link: &Link, server: IpAddr, to: &str, subject: &str, data: bool) -> Value {
    let plan = json!({
        "host": server.to_string(),
        "from": "carol@example.org",
        "to": to,
        "data": data,
        "message": format!("From: carol@example.org\r\nTo: alice@lab.test\r\nSubject: {subject}\r\n\r\nHello.\r\n"),
    });
    let out = output_within(
        netns_command(&link.client_ns, "python3")
            .args(["-c", SMTP_CLIENT_PY])
            .arg(plan.to_string()),
        CLIENT_BOUND,
    )
    .unwrap_or_else(|e| panic!("the SMTP client in {} did not finish: {e}", link.client_ns));
    assert!(
        out.status.success(),
        "the SMTP client in {} failed: {}",
        link.client_ns,
        describe(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the SMTP client printed no JSON ({e}): {}", describe(&out)))
}

fn code(result: &Value, step: &str) -> u64 {
    result[step][0].as_u64().unwrap_or(0)
}

#[test]
fn postfix_refuses_without_a_login_and_delivers_after_one() {
    require_pop3_clients();
    let lab = Lab::with_options(LabOptions {
        exempt_client: true,
        // The lab's own listener moves off port 25: Postfix listens there.
        smtp_ports: vec![2525],
        ..LabOptions::default()
    });
    let mut mail = MailFixture::new();
    mail.add_user(ALICE, &format!("{{PLAIN}}{ALICE_SECRET}"));

    // The gate on both veths, letting every SYN through (counted).
    lab.attach(&["--deny", "monitor"]);
    let client = lab.client.clone();
    let exempt = lab.exempt().clone();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (users, mail_root) = (path(&mail.users_file()), path(&mail.mail_root()));
    let mut daemon = lab.serve(
        &[
            "--iface",
            &client.server_iface,
            "--deny",
            "monitor",
            "--listen",
            "[::]:110",
            "--users",
            &users,
            "--mail-root",
            &mail_root,
            "--hostname",
            "lab.test",
            "--window",
            "10m",
            "--exempt",
            &exempt.net_v4,
            "--exempt",
            &exempt.net_v6,
            "--postfix-policy-listen",
            "127.0.0.1:10031",
        ],
        &mail.dir().join("serve.log"),
    );
    daemon.wait_for_log(
        "Postfix policy requests answered on 127.0.0.1:10031",
        1,
        Duration::from_secs(30),
    );

    let snippet_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/postfix/main.cf.snippet");
    let snippet = std::fs::read_to_string(&snippet_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", snippet_path.display()));
    let postfix = PostfixServer::start(&lab.server_ns, &snippet);
    let server_v4 = IpAddr::from(client.server_v4);

    // No grant: refused at RCPT with our text; the kernel let it through.
    let refused = send(&client, server_v4, "before login");
    assert_eq!(code(&refused, "rcpt"), 554, "{refused}\n{}", postfix.log());
    let text = refused["rcpt"][1].as_str().unwrap_or_default();
    assert!(text.contains(REFUSAL), "{refused}");
    assert!(refused.get("data").is_none(), "{refused}");
    daemon.wait_for_log(
        &format!("refuse source=postfix addr={} ", client.client_v4),
        1,
        Duration::from_secs(30),
    );

    // A POP3 login to our service grants the client's address.
    let login = pop3_client(
        &client.client_ns,
        server_v4,
        json!([
            {"op": "connect"},
            {"op": "login", "user": ALICE, "password": ALICE_SECRET},
            {"op": "quit"},
        ]),
    );
    assert!(login[1].get("error").is_none(), "{login:?}");
    let accepted = send(&client, server_v4, "after login");
    assert_eq!(
        code(&accepted, "rcpt"),
        250,
        "{accepted}\n{}",
        postfix.log()
    );
    assert_eq!(
        code(&accepted, "data"),
        250,
        "{accepted}\n{}",
        postfix.log()
    );
    postfix.wait_delivered("Subject: after login", DELIVERY_BOUND);
    // The grant is the relay permission (OK before
    // reject_unauth_destination, in smtpd_relay_restrictions).
    let relayed = relay(&client, server_v4);
    assert_eq!(code(&relayed, "rcpt"), 250, "{relayed}\n{}", postfix.log());

    // An exempt network sends without a login, over IPv6 too.
    for server in [
        IpAddr::from(exempt.server_v4),
        IpAddr::from(exempt.server_v6),
    ] {
        let subject = format!("exempt to {server}");
        let sent = send(&exempt, server, &subject);
        assert_eq!(code(&sent, "rcpt"), 250, "{sent}\n{}", postfix.log());
        assert_eq!(code(&sent, "data"), 250, "{sent}\n{}", postfix.log());
        postfix.wait_delivered(&format!("Subject: {subject}"), DELIVERY_BOUND);
    }
    // DUNNO for an exempt network: reject_unauth_destination still decides.
    let relayed = relay(&exempt, IpAddr::from(exempt.server_v4));
    assert_eq!(code(&relayed, "rcpt"), 554, "{relayed}\n{}", postfix.log());
    let text = relayed["rcpt"][1].as_str().unwrap_or_default();
    assert!(text.contains("Relay access denied"), "{relayed}");
    assert!(
        !postfix
            .delivered()
            .iter()
            .any(|f| std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("before login")),
        "the refused message was delivered"
    );
    drop(postfix);
    let (status, _) = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "smtp-gate serve did not exit cleanly: {status:?}\n{}",
        daemon.log()
    );
}

/// deploy/postfix/main.cf.snippet's Unix socket recipe: a setgid directory
/// of group postfix, the socket smtp-gate makes there of that group, mode
/// 0660; Postfix (smtpd runs as postfix) asks through it, and the refuse
/// line names Postfix's uid as the peer.
#[test]
fn postfix_asks_over_the_unix_socket_of_the_recipe() {
    require_pop3_clients();
    let lab = Lab::with_options(LabOptions {
        exempt_client: true,
        smtp_ports: vec![2525],
        ..LabOptions::default()
    });
    let mut mail = MailFixture::new();
    mail.add_user(ALICE, &format!("{{PLAIN}}{ALICE_SECRET}"));
    lab.attach(&["--deny", "monitor"]);
    let client = lab.client.clone();
    let exempt = lab.exempt().clone();

    // install -d -o vmail -g postfix -m 2750 (the daemon runs as root here).
    let socket_dir = mail.dir().join("smtp-gate");
    std::fs::create_dir(&socket_dir).unwrap();
    std::fs::set_permissions(mail.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let chgrp = Command::new("chgrp")
        .arg("postfix")
        .arg(&socket_dir)
        .output()
        .expect("chgrp runs");
    assert!(chgrp.status.success(), "{}", describe(&chgrp));
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let socket = socket_dir.join("policy");
    let socket_text = socket.to_string_lossy().into_owned();

    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (users, mail_root) = (path(&mail.users_file()), path(&mail.mail_root()));
    let mut daemon = lab.serve(
        &[
            "--iface",
            &client.server_iface,
            "--deny",
            "monitor",
            "--listen",
            "[::]:110",
            "--users",
            &users,
            "--mail-root",
            &mail_root,
            "--window",
            "10m",
            "--exempt",
            &exempt.net_v4,
            "--postfix-policy-listen",
            &socket_text,
        ],
        &mail.dir().join("serve.log"),
    );
    daemon.wait_for_log(
        &format!("Postfix policy requests answered on unix:{socket_text}"),
        1,
        Duration::from_secs(30),
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let postfix_gid = group_id("postfix");
    assert_eq!(
        meta.gid(),
        postfix_gid,
        "the socket takes the directory's group"
    );

    let snippet_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/postfix/main.cf.snippet");
    let snippet = std::fs::read_to_string(&snippet_path).unwrap();
    assert!(snippet.contains("inet:127.0.0.1:10031"), "{snippet}");
    // Postfix here is not chrooted: the socket's absolute path.
    let snippet = snippet.replace("inet:127.0.0.1:10031", &format!("unix:{socket_text}"));
    let postfix = PostfixServer::start(&lab.server_ns, &snippet);

    let refused = send(&client, IpAddr::from(client.server_v4), "over the socket");
    assert_eq!(code(&refused, "rcpt"), 554, "{refused}\n{}", postfix.log());
    let line = daemon.wait_for_log(
        &format!("refuse source=postfix addr={} ", client.client_v4),
        1,
        Duration::from_secs(30),
    );
    let postfix_uid = user_id("postfix");
    assert!(
        line.contains(&format!("peer=unix:uid={postfix_uid}:pid=")),
        "{line}"
    );
    let sent = send(
        &exempt,
        IpAddr::from(exempt.server_v4),
        "exempt over the socket",
    );
    assert_eq!(code(&sent, "rcpt"), 250, "{sent}\n{}", postfix.log());
    drop(postfix);
    let (status, _) = daemon.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log());
    assert!(!socket.exists(), "the daemon removes its socket at stop");
}

fn user_id(name: &str) -> u32 {
    let out = Command::new("id")
        .args(["-u", name])
        .output()
        .expect("id runs");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn group_id(name: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .expect("getent runs");
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|gid| gid.trim().parse().ok())
        .expect("a gid")
}
