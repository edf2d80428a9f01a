//! `smtp-gate-demo`: POP-before-SMTP told in seven steps, in a throwaway
//! lab of network namespaces (see `testkit::lab`): the real `smtp-gate
//! serve` daemon in the server namespace, a real POP3 client (Python's
//! poplib) and SMTP connection attempts in the client namespace. Needs
//! root, python3 and a built `smtp-gate` (`cargo build`); `cargo xtask
//! demo` does all of that.
//!
//! Exit status 0 only if every step behaved as expected.

use std::{
    cell::Cell,
    io::Write,
    net::IpAddr,
    panic::{self, AssertUnwindSafe},
    process::{ExitCode, Output},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use testkit::{
    denial::{GateVerdict, Judged},
    lab::Lab,
    mail::MailFixture,
    pop3_client::{pop3_client, require_pop3_clients},
    serve::{ServeDaemon, POP3_PORT},
    smtp::{ConnectResult, BANNER, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT},
};

const WINDOW: Duration = Duration::from_secs(20);
const STEPS: usize = 7;
const USER: &str = "alice";
const SECRET: &str = "wonderland";
const MESSAGES: [(&str, &str); 3] = [
    (
        "1700000001.M1P1.lab",
        "From: carol@example.org\nTo: alice@lab.test\nSubject: Lunch on Friday?\n\n\
         Shall we meet at noon?\n",
    ),
    (
        "1700000002.M2P1.lab",
        "From: dave@example.org\nTo: alice@lab.test\nSubject: The report\n\n\
         Attached, as promised.\n.\nA line with a lone dot, stuffed on the wire.\n",
    ),
    (
        "1700000003.M3P1.lab",
        "From: erin@example.org\nTo: alice@lab.test\nSubject: Re: SMTP refused?\n\n\
         Log in to POP3 first, then send.\n",
    ),
];

/// Where the story is, so a failure can name its step.
struct Story<'a> {
    lab: &'a Lab,
    mail: &'a MailFixture,
    daemon: &'a mut ServeDaemon,
    step: Cell<usize>,
    /// How much of the daemon's log has been shown.
    log_shown: usize,
}

type StepResult = Result<(), String>;

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

fn serve_args(lab: &Lab, mail: &MailFixture) -> Vec<String> {
    [
        "--iface",
        lab.client.server_iface.as_str(),
        "--listen",
        "[::]:110",
        "--users",
        &mail.users_file().to_string_lossy(),
        "--mail-root",
        &mail.mail_root().to_string_lossy(),
        "--hostname",
        "lab.test",
        "--window",
        "20s",
        "--deny",
        "drop",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The error reply of a client step, if it got one.
fn step_error(step: &Value) -> Option<String> {
    step.get("error")
        .or_else(|| step.get("oserror"))
        .map(|e| e.as_str().unwrap_or_default().to_string())
}

impl Story<'_> {
    fn step(&self, n: usize, title: &str) {
        self.step.set(n);
        println!();
        println!("{n}) {title}");
    }

    /// Prints a command line as an operator would type it.
    fn show_command(&self, args: &[&str]) {
        println!(
            "   $ smtp-gate {} --pin-dir {}",
            args.join(" "),
            self.lab.pin_dir().display()
        );
    }

    /// Runs `smtp-gate ARGS` (root namespace), prints it and its output.
    fn gate(&self, args: &[&str]) -> Result<String, String> {
        self.show_command(args);
        let out = self.lab.gate(args);
        print!("{}", indent(&output_text(&out)));
        if !out.status.success() {
            return Err(format!(
                "`smtp-gate {}` failed ({})",
                args.join(" "),
                out.status
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Prints what the daemon logged since the last call.
    fn show_daemon_log(&mut self) {
        let log = self.daemon.log();
        let new = log.get(self.log_shown..).unwrap_or_default();
        if !new.trim().is_empty() {
            println!("   smtp-gate serve logged:");
            print!("{}", indent(new));
        }
        self.log_shown = log.len();
    }

    /// The client's SMTP connection attempt, printed with what the gate
    /// counted for it.
    fn client_sends(&self, timeout: Duration) -> Judged {
        let client = &self.lab.client;
        println!(
            "   client {} -> {}:{SMTP_PORT} (SMTP connect, {} s timeout)",
            client.client_v4,
            client.server_v4,
            timeout.as_secs_f32()
        );
        let started = Instant::now();
        let judged = self.lab.judge(client, client.server_v4, SMTP_PORT, timeout);
        println!(
            "   => {} after {:.2} s; the gate counted: {}",
            judged.attempt.result,
            started.elapsed().as_secs_f64(),
            judged.moved
        );
        judged
    }

    /// A timeout alone proves nothing (a slow machine times out too): the
    /// gate must have counted the SYN as dropped.
    fn expect_refused(&self, why: &str) -> StepResult {
        let judged = self.client_sends(DENY_TIMEOUT);
        match (judged.verdict(), &judged.attempt.result) {
            (GateVerdict::Denied, ConnectResult::TimedOut) => {
                println!("   REFUSED: {why}");
                Ok(())
            }
            _ => Err(format!("expected the gate to drop the SYN: {judged}")),
        }
    }

    /// Waits (at most 10 s) until the daemon has logged `text` since the
    /// last [`Story::show_daemon_log`].
    fn wait_for_daemon_log(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .daemon
            .log()
            .get(self.log_shown..)
            .is_some_and(|new| new.contains(text))
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Step 2: the POP3 session, printed as it goes.
    fn receive_mail(&mut self) -> StepResult {
        let client = &self.lab.client;
        let server: IpAddr = client.server_v4.into();
        println!(
            "   client {} -> {server}:{POP3_PORT}: Python's poplib, APOP as {USER}",
            client.client_v4
        );
        let steps = json!([
            {"op": "connect"},
            {"op": "apop", "user": USER, "secret": SECRET},
            {"op": "stat"},
            {"op": "list"},
            {"op": "uidl"},
            {"op": "retr", "n": 1},
            {"op": "retr", "n": 2},
            {"op": "retr", "n": 3},
            {"op": "quit"},
        ]);
        let results = pop3_client(&client.client_ns, server, steps);
        for step in &results {
            if let Some(error) = step_error(step) {
                return Err(format!("POP3 {} failed: {error}", step["op"]));
            }
        }
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        println!("   S: {}", text(&results[0]["welcome"]));
        println!("   C: APOP {USER} <md5 of timestamp + secret>");
        println!("   S: {}", text(&results[1]["reply"]));
        let (count, size) = (&results[2]["count"], &results[2]["size"]);
        println!("   C: STAT");
        println!("   S: +OK {count} {size}");
        for (i, command) in [(3, "LIST"), (4, "UIDL")] {
            println!("   C: {command}");
            println!("   S: {}", text(&results[i]["reply"]));
            for line in results[i]["lines"].as_array().into_iter().flatten() {
                println!("      {}", text(line));
            }
        }
        let mut subjects = Vec::new();
        for (k, step) in results[5..8].iter().enumerate() {
            let subject = step["lines"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or_else(|| "(no subject)".into());
            println!(
                "   C: RETR {}  -> {} octets, {subject}",
                k + 1,
                step["octets"]
            );
            subjects.push(subject);
        }
        println!("   C: QUIT");
        println!("   S: {}", text(&results[8]["reply"]));
        if *count != json!(MESSAGES.len()) {
            return Err(format!("STAT says {count} messages, 3 were delivered"));
        }
        for (i, (_, content)) in MESSAGES.iter().enumerate() {
            let wanted = content
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or_default();
            if subjects[i] != wanted {
                return Err(format!(
                    "message {} has {:?}, expected {wanted:?}",
                    i + 1,
                    subjects[i]
                ));
            }
        }
        self.show_daemon_log();
        Ok(())
    }

    fn run(&mut self) -> StepResult {
        let lab = self.lab;
        let client = &lab.client;
        println!("smtp-gate demo: POP-before-SMTP in the kernel");
        println!(
            "   server  {:<22} {} / {}  (SMTP listener on port {SMTP_PORT}, POP3 on {POP3_PORT})",
            lab.server_ns, client.server_v4, client.server_v6
        );
        println!(
            "   client  {:<22} {} / {}",
            client.client_ns, client.client_v4, client.client_v6
        );
        println!("   joined by a veth pair; no default routes: nothing leaves the lab");
        println!(
            "   mail    {} ({USER}: 3 new messages), users file {} (mode 0600)",
            self.mail.maildir(USER).display(),
            self.mail.users_file().display()
        );
        println!();
        println!(
            "The daemon attaches the gate to the server's veth {} (native XDP, drop, \
             {} s window) and serves POP3:",
            client.server_iface,
            WINDOW.as_secs()
        );
        println!(
            "   $ ip netns exec {} smtp-gate serve {} --pin-dir {}",
            lab.server_ns,
            serve_args(lab, self.mail).join(" "),
            lab.pin_dir().display()
        );
        self.show_daemon_log();

        self.step(1, "The client sends mail before logging in to POP3");
        self.expect_refused("no grant for this address, the gate dropped the SYN")?;

        self.step(
            2,
            "The client fetches its mail over POP3; the login grants its address",
        );
        self.receive_mail()?;

        self.step(3, "The client sends mail again");
        match self.client_sends(PASS_TIMEOUT).attempt.result {
            ConnectResult::Connected(banner) if banner == BANNER => {
                println!("   ACCEPTED: the server greets with {banner:?}");
            }
            other => return Err(format!("expected to connect, got: {other}")),
        }

        self.step(4, "The grants the gate holds");
        let out = self.gate(&["list"])?;
        if !out.contains(&client.client_v4.to_string()) {
            return Err(format!("list does not show {}", client.client_v4));
        }
        let grants = lab.list(&[]);
        let left = grants
            .iter()
            .find(|g| g["address"] == client.client_v4.to_string())
            .and_then(|g| g["left_secs"].as_f64())
            .ok_or_else(|| format!("list --json has no time left for the grant: {grants:?}"))?;

        self.step(
            5,
            &format!("Time passes: the {} s window runs out", WINDOW.as_secs()),
        );
        // Counted down from what `list` said was left (on the gate's clock,
        // before this), and checked 300 ms after: the window has provably
        // passed, however slow the machine.
        let expires = Instant::now() + Duration::from_secs_f64(left);
        let deadline = expires + Duration::from_millis(300);
        let mut next_print = Instant::now();
        while Instant::now() < deadline {
            let remaining = expires.saturating_duration_since(Instant::now());
            if Instant::now() >= next_print && remaining >= Duration::from_secs(1) {
                println!("   {:>2.0} s left", remaining.as_secs_f64());
                let _ = std::io::stdout().flush();
                next_print += Duration::from_secs(5);
            }
            let wake = next_print.min(deadline);
            thread::sleep(
                wake.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            );
        }
        let fresh = lab.list(&[]);
        if !fresh.is_empty() {
            return Err(format!(
                "the grant is still fresh after the window: {fresh:?}"
            ));
        }
        println!("   the grant has expired");

        self.step(6, "The client sends mail again, without a new POP3 login");
        self.expect_refused("the grant expired, the gate dropped the SYN")?;
        // The program's denial log reaches the daemon's log a moment later.
        self.wait_for_daemon_log(&format!("denied SYN from {}", client.client_v4));
        self.show_daemon_log();

        self.step(7, "What the gate counted");
        self.gate(&["stats"])?;
        let stats = lab.stats();
        let denied = stats["denied_drop"].as_u64().unwrap_or(0);
        let granted = stats["granted"].as_u64().unwrap_or(0);
        if denied < 2 || granted < 1 {
            return Err(format!(
                "expected at least 2 dropped and 1 granted SYN, counters: {stats}"
            ));
        }
        println!("   {denied} SYNs dropped (steps 1 and 6), {granted} let through (step 3)");
        Ok(())
    }
}

/// Builds the lab, the mail and the daemon; the lab comes back even if the
/// daemon does not start, so it is torn down.
fn set_up() -> Result<(Lab, MailFixture, ServeDaemon), String> {
    panic::catch_unwind(|| {
        require_pop3_clients();
        let lab = Lab::new();
        let mut mail = MailFixture::new();
        mail.add_user(USER, &format!("{{PLAIN}}{SECRET}"));
        for (name, content) in MESSAGES {
            mail.deliver(USER, name, content.as_bytes());
        }
        let args = serve_args(&lab, &mail);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = lab.serve(&args, &mail.dir().join("serve.log"));
        (lab, mail, daemon)
    })
    .map_err(|_| "could not build the lab or start the daemon (see the message above)".into())
}

fn main() -> ExitCode {
    let started = Instant::now();
    let (lab, mail, mut daemon) = match set_up() {
        Ok(parts) => parts,
        Err(why) => {
            eprintln!("DEMO FAILED while setting up: {why}");
            return ExitCode::from(1);
        }
    };
    let mut story = Story {
        lab: &lab,
        mail: &mail,
        daemon: &mut daemon,
        step: Cell::new(0),
        log_shown: 0,
    };
    let mut outcome = match panic::catch_unwind(AssertUnwindSafe(|| story.run())) {
        Ok(result) => result,
        Err(_) => Err("panicked (see the message above)".to_string()),
    };
    let failed_step = story.step.get();
    println!();
    println!("Stopping the daemon (SIGTERM); the gate would stay without the lab...");
    let (status, took) = daemon.terminate(Duration::from_secs(15));
    match status {
        Some(s) if s.success() => println!("   smtp-gate serve exited 0 after {took:.2?}"),
        other => {
            println!("   smtp-gate serve: {other:?} after {took:.2?}");
            if outcome.is_ok() {
                outcome = Err(format!("the daemon did not exit 0 on SIGTERM: {other:?}"));
            }
        }
    }
    if outcome.is_err() {
        println!("--- smtp-gate serve log ---\n{}---", daemon.log());
    }
    println!("Tearing the lab down (detach, unmount, delete namespaces)...");
    drop(daemon);
    drop(mail);
    drop(lab);
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            println!("Demo complete in {took:.1} s: all {STEPS} steps behaved as expected.");
            ExitCode::SUCCESS
        }
        Err(why) => {
            if failed_step == 0 {
                println!("DEMO FAILED while setting up: {why}");
            } else {
                println!("DEMO FAILED at step {failed_step}: {why}");
            }
            ExitCode::from(1)
        }
    }
}
