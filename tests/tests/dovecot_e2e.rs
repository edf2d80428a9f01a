//! Dovecot's logins grant (issue 12, item 1): a real Dovecot in a lab's
//! server namespace with the shipped 2.3 snippet included as it is (its
//! URL, 127.0.0.1:10030, is the server namespace's own loopback), and
//! `smtp-gate serve` beside it taking the policy requests there, with no
//! POP3 of its own. An IMAP login (imaplib) and a POP3 login (poplib) each
//! grant the client, and port 25 then lets its SYN through; a failed login
//! grants nothing and counts toward a ban, which then refuses even the
//! right password through Dovecot's `allow` question; with the endpoint
//! down, Dovecot's logins still work.
//!
//! Needs root, a built binary (`cargo build -p gate-user`), python3 and
//! Dovecot (`cargo xtask setup`); panics otherwise (never skips).

use std::{fs, net::IpAddr, os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use serde_json::json;
use testkit::{
    dovecot::{Dovecot, DovecotOptions, IMAP_PORT},
    imap_client::imap_login,
    lab::Lab,
    pop3_client::pop3_client,
    serve::ServeDaemon,
    smtp::{ConnectResult, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// Only a hang takes longer.
const BOUND: Duration = Duration::from_secs(30);

fn snippet_23() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/dovecot/smtp-gate-policy-2.3.conf")
}

fn start_dovecot(lab: &Lab) -> Dovecot {
    start_dovecot_with(lab, snippet_23())
}

fn start_dovecot_with(lab: &Lab, include: PathBuf) -> Dovecot {
    let link = &lab.client;
    Dovecot::start(
        &lab.server_ns,
        &link.client_ns,
        link.server_v4.into(),
        &DovecotOptions {
            users: vec![(USER.into(), PASSWORD.into())],
            include: Some(include),
        },
    )
}

fn start_daemon(lab: &Lab, dovecot: &Dovecot, extra: &str) -> ServeDaemon {
    let mut daemon = dovecot.spawn_hooks_daemon(
        lab,
        &format!(
            "dovecot_policy_listen = \"127.0.0.1:10030\"\n\
             ban_failures = 2\n\
             ban_failure_window = \"5m\"\n\
             ban_time = \"1m\"\n\
             {extra}"
        ),
    );
    let log = daemon.wait_for_log(
        "Dovecot auth policy requests taken on 127.0.0.1:10030",
        1,
        BOUND,
    );
    // A TCP endpoint anyone on the host can reach is warned of, unless a
    // secret guards it.
    let warned = log.contains("takes requests without a secret");
    assert_eq!(
        warned,
        !extra.contains("dovecot_policy_secret_file"),
        "{log}"
    );
    daemon
}

fn imap(lab: &Lab, password: &str) -> bool {
    let link = &lab.client;
    imap_login(
        &link.client_ns,
        link.server_v4.into(),
        IMAP_PORT,
        USER,
        password,
    )
}

fn port_25_drops(lab: &Lab) -> bool {
    matches!(
        lab.client.connect_v4(SMTP_PORT, DENY_TIMEOUT),
        ConnectResult::TimedOut
    )
}

fn port_25_passes(lab: &Lab) -> bool {
    matches!(
        lab.client.connect_v4(SMTP_PORT, PASS_TIMEOUT),
        ConnectResult::Connected(_)
    )
}

fn has_grant(lab: &Lab, addr: IpAddr) -> bool {
    lab.list(&[])
        .iter()
        .any(|g| g["address"] == addr.to_string())
}

#[test]
fn imap_and_pop3_logins_to_dovecot_grant_and_a_failed_one_does_not() {
    let lab = Lab::new();
    let client = IpAddr::from(lab.client.client_v4);
    let dovecot = start_dovecot(&lab);
    let mut daemon = start_daemon(&lab, &dovecot, "");
    assert!(
        port_25_drops(&lab),
        "no login yet: port 25 must drop the client's SYN"
    );

    // Dovecot reports a failure before it answers it (after its failure
    // delay); the count of grant lines below also catches a late report.
    assert!(
        !imap(&lab, "not-the-password"),
        "a wrong password is refused"
    );
    assert!(!has_grant(&lab, client), "a failed login granted");
    assert!(port_25_drops(&lab), "a failed login opened port 25");

    assert!(imap(&lab, PASSWORD), "the IMAP login");
    daemon.wait_for_log(
        &format!("grant source=dovecot-policy addr={client} user={USER} protocol=imap"),
        1,
        BOUND,
    );
    assert!(
        port_25_passes(&lab),
        "after an IMAP login port 25 must let the client in"
    );

    let results = pop3_client(
        &lab.client.client_ns,
        lab.client.server_v4.into(),
        json!([
            {"op": "connect"},
            {"op": "login", "user": USER, "password": PASSWORD},
            {"op": "quit"},
        ]),
    );
    assert!(
        results[1]["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("+OK")),
        "{results:?}"
    );
    daemon.wait_for_log(
        &format!("grant source=dovecot-policy addr={client} user={USER} protocol=pop3"),
        1,
        BOUND,
    );
    let log = daemon.log();
    assert_eq!(
        log.matches(&format!("grant source=dovecot-policy addr={client} "))
            .count(),
        2,
        "one grant for each good login, none for the failed one: {log}"
    );
    assert!(
        !log.contains("bad-request"),
        "Dovecot's requests were refused: {log}"
    );
    assert!(
        !dovecot.log().contains("Policy server"),
        "Dovecot saw an error: {}",
        dovecot.log()
    );
    daemon.terminate(BOUND);
    // The endpoint's counts are logged as the daemon stops: two grants,
    // one failure (the wrong password), nothing malformed.
    let log = daemon.log();
    let statistics = log
        .lines()
        .find(|l| l.contains("statistics hook=dovecot-policy "))
        .unwrap_or_else(|| panic!("no statistics line: {log}"));
    for field in [" grants=2 ", " failures=1 ", " bad_requests=0 "] {
        assert!(statistics.contains(field), "{field} in {statistics}");
    }
}

/// Dovecot reports a right password as `success` before it applies the
/// passdb's `nologin` and refuses the login ("[CONTACTADMIN] disabled"):
/// with the shipped snippet's `nologin` attribute such a login neither
/// grants nor counts toward a ban (attack review: it granted).
#[test]
fn a_login_dovecot_refuses_for_nologin_does_not_grant() {
    let lab = Lab::new();
    let link = &lab.client;
    let client = IpAddr::from(link.client_v4);
    // passwd-file's fields after the password: uid, gid, gecos, home,
    // shell, then the extra fields.
    let dovecot = Dovecot::start(
        &lab.server_ns,
        &link.client_ns,
        link.server_v4.into(),
        &DovecotOptions {
            users: vec![("disabled".into(), "its-password::::::nologin=y".into())],
            include: Some(snippet_23()),
        },
    );
    let mut daemon = start_daemon(&lab, &dovecot, "");
    let login = || {
        imap_login(
            &link.client_ns,
            link.server_v4.into(),
            IMAP_PORT,
            "disabled",
            "its-password",
        )
    };
    assert!(!login(), "Dovecot refuses a nologin account");
    daemon.wait_for_log(
        &format!(
            "dovecot-policy refused addr={client} user=disabled protocol=imap reason=disabled \
             (password right, login refused by Dovecot; not granted)"
        ),
        1,
        BOUND,
    );
    assert!(!has_grant(&lab, client), "a refused login granted");
    assert!(port_25_drops(&lab), "a refused login opened port 25");
    // ban_failures = 2: two more such logins ban nobody.
    assert!(!login());
    assert!(!login());
    daemon.wait_for_log("dovecot-policy refused", 3, BOUND);
    daemon.terminate(BOUND);
    let log = daemon.log();
    assert!(!log.contains("ban net="), "{log}");
    assert!(!log.contains("grant source="), "{log}");
    assert!(
        dovecot.log().contains("disabled"),
        "Dovecot did not refuse for nologin: {}",
        dovecot.log()
    );
}

#[test]
fn failed_dovecot_logins_are_counted_until_the_ban_refuses_even_the_password() {
    let lab = Lab::new();
    let client = IpAddr::from(lab.client.client_v4);
    let dovecot = start_dovecot(&lab);
    // The kernel drops a banned client's SYNs to the ports in ban_ports;
    // with none but the gated ones, the client reaches Dovecot's IMAP and
    // it is our answer to `allow` that refuses it.
    let mut daemon = start_daemon(&lab, &dovecot, "ban_ports = []\n");
    // ban_failures = 2.
    assert!(!imap(&lab, "guess-1"));
    assert!(!imap(&lab, "guess-2"));
    daemon.wait_for_log("ban net=", 1, BOUND);
    // Banned now: Dovecot asks before checking the password, and we say no.
    assert!(
        !imap(&lab, PASSWORD),
        "the ban refuses even the right password"
    );
    assert!(!has_grant(&lab, client), "a banned client was granted");
    daemon.wait_for_log(
        &format!("dovecot-policy refused addr={client} user={USER} protocol=imap reason=banned"),
        1,
        BOUND,
    );
    daemon.terminate(BOUND);
}

#[test]
fn with_the_endpoint_down_dovecot_logins_still_work() {
    let lab = Lab::new();
    let dovecot = start_dovecot(&lab);
    assert!(imap(&lab, PASSWORD), "Dovecot must fail open");
    assert!(
        dovecot.log().contains("Policy server HTTP error"),
        "the snippet's URL was not asked: {}",
        dovecot.log()
    );
}

/// The snippet's optional header line, taken as its comment says (in a
/// file of its own beside the snippet), with the secret of smtp-gate's
/// dovecot_policy_secret_file: Dovecot's reports get in and grant.
#[test]
fn a_secret_shared_with_dovecot_lets_its_reports_in() {
    let lab = Lab::new();
    let client = IpAddr::from(lab.client.client_v4);
    let dir = std::env::temp_dir().join(format!("smtp-gate-dovecot-secret-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let _removed_on_drop = RemovedDir(dir.clone());
    let token = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4";
    let header_line = fs::read_to_string(snippet_23())
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("#auth_policy_server_api_header = "))
        .expect("the snippet's optional header line")
        .replace("SECRET", token);
    let wrapper = dir.join("policy.conf");
    fs::write(
        &wrapper,
        format!(
            "!include {}\nauth_policy_server_api_header = {header_line}\n",
            snippet_23().display()
        ),
    )
    .unwrap();
    let secret = dir.join("dovecot-policy.secret");
    fs::write(&secret, format!("{token}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let dovecot = start_dovecot_with(&lab, wrapper);
    let mut daemon = start_daemon(
        &lab,
        &dovecot,
        &format!("dovecot_policy_secret_file = \"{}\"\n", secret.display()),
    );
    assert!(imap(&lab, PASSWORD), "the IMAP login");
    daemon.wait_for_log(
        &format!("grant source=dovecot-policy addr={client} user={USER} protocol=imap"),
        1,
        BOUND,
    );
    assert!(!daemon.log().contains("unauthorized"), "{}", daemon.log());
    daemon.terminate(BOUND);
}

/// Attack review (issue 12's hooks): a secret rotated in its file and
/// SIGHUP left the old one in force ("nothing changed"), so Dovecot,
/// reloaded with the new token, got 401 and granted nothing. Now the
/// reload reads the file anew: Dovecot still sending the old token is
/// refused (its logins still work: it fails open) and grants nothing;
/// reloaded with the new one, its logins grant again.
#[test]
fn a_secret_rotated_on_sighup_refuses_the_old_token_and_takes_the_new() {
    let lab = Lab::new();
    let client = IpAddr::from(lab.client.client_v4);
    let dir = std::env::temp_dir().join(format!("smtp-gate-dovecot-rotate-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let _removed_on_drop = RemovedDir(dir.clone());
    let header_line = |token: &str| {
        fs::read_to_string(snippet_23())
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("#auth_policy_server_api_header = "))
            .expect("the snippet's optional header line")
            .replace("SECRET", token)
    };
    let wrapper = dir.join("policy.conf");
    let write_wrapper = |token: &str| {
        fs::write(
            &wrapper,
            format!(
                "!include {}\nauth_policy_server_api_header = {}\n",
                snippet_23().display(),
                header_line(token)
            ),
        )
        .unwrap()
    };
    let secret = dir.join("dovecot-policy.secret");
    let write_secret = |token: &str| {
        // As an operator rotates it: a new file renamed into place.
        let new = dir.join("dovecot-policy.secret.new");
        fs::write(&new, format!("{token}\n")).unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(&new, &secret).unwrap();
    };
    let (old, new) = (
        "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA",
        "bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldw",
    );
    write_wrapper(old);
    write_secret(old);
    let dovecot = start_dovecot_with(&lab, wrapper.clone());
    let mut daemon = start_daemon(
        &lab,
        &dovecot,
        &format!("dovecot_policy_secret_file = \"{}\"\n", secret.display()),
    );
    let grant_line = format!("grant source=dovecot-policy addr={client} user={USER} protocol=imap");
    assert!(imap(&lab, PASSWORD), "the IMAP login");
    daemon.wait_for_log(&grant_line, 1, BOUND);

    write_secret(new);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log(
        "reloaded on SIGHUP: dovecot_policy_secret_file (secret read anew)",
        1,
        BOUND,
    );
    // Dovecot still sends the old token: refused, and its login goes on.
    assert!(imap(&lab, PASSWORD), "Dovecot fails open");
    daemon.wait_for_log("dovecot-policy unauthorized", 1, BOUND);
    assert_eq!(
        daemon.log().matches(&grant_line).count(),
        1,
        "the old token granted after the reload: {}",
        daemon.log()
    );

    // Dovecot reloaded with the new token: its logins grant again. Its
    // auth process is replaced after the reload; a login that still met
    // the old one is tried again.
    write_wrapper(new);
    let reloaded = testkit::netns::netns_command(&lab.server_ns, "doveadm")
        .arg("-c")
        .arg(dovecot.config())
        .arg("reload")
        .output()
        .expect("doveadm runs");
    assert!(reloaded.status.success(), "doveadm reload: {reloaded:?}");
    let deadline = std::time::Instant::now() + BOUND;
    while daemon.log().matches(&grant_line).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token did not grant: {}",
            daemon.log()
        );
        assert!(imap(&lab, PASSWORD), "the IMAP login");
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate(BOUND);
}

struct RemovedDir(PathBuf);

impl Drop for RemovedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
