//! `smtp-gate-demo`: POP-before-SMTP told in seven steps, in a throwaway
//! lab of network namespaces (see `gate_tests::lab`). Needs root and a
//! built `smtp-gate` (`cargo build`); `cargo xtask demo` does both.
//!
//! Exit status 0 only if every step behaved as expected.

use std::{
    cell::Cell,
    io::Write,
    panic::{self, AssertUnwindSafe},
    process::{ExitCode, Output},
    thread,
    time::{Duration, Instant},
};

use gate_tests::lab::{ConnectResult, Lab, BANNER, DENY_TIMEOUT, PASS_TIMEOUT, SMTP_PORT};

const WINDOW: Duration = Duration::from_secs(5);
const STEPS: usize = 7;

/// Where the story is, so a failure can name its step.
struct Story<'a> {
    lab: &'a Lab,
    step: Cell<usize>,
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

    /// The client's SMTP connection attempt, printed.
    fn client_sends(&self, timeout: Duration) -> (ConnectResult, Duration) {
        let client = &self.lab.client;
        println!(
            "   client {} -> {}:{SMTP_PORT} (SMTP connect, {} s timeout)",
            client.client_v4,
            client.server_v4,
            timeout.as_secs_f32()
        );
        let started = Instant::now();
        let result = client.connect_v4(SMTP_PORT, timeout);
        let took = started.elapsed();
        println!("   => {result} after {:.2} s", took.as_secs_f64());
        (result, took)
    }

    fn expect_refused(&self, why: &str) -> StepResult {
        match self.client_sends(DENY_TIMEOUT) {
            (ConnectResult::TimedOut, _) => {
                println!("   REFUSED: {why}");
                Ok(())
            }
            (other, _) => Err(format!(
                "expected the SYN to be dropped (timed out), got: {other}"
            )),
        }
    }

    fn run(&self) -> StepResult {
        let lab = self.lab;
        let client = &lab.client;
        let iface = &client.server_iface;
        println!("smtp-gate demo: POP-before-SMTP in the kernel");
        println!(
            "   server  {:<22} {} / {}  (SMTP listener on port {SMTP_PORT})",
            lab.server_ns, client.server_v4, client.server_v6
        );
        println!(
            "   client  {:<22} {} / {}",
            client.client_ns, client.client_v4, client.client_v6
        );
        println!("   joined by a veth pair; no default routes: nothing leaves the lab");
        println!();
        println!("The gate goes on the server's veth {iface} (native XDP, drop, 5 s window):");
        println!(
            "   $ ip netns exec {} smtp-gate attach --iface {iface} --window 5s --deny drop \
             --pin-dir {}",
            lab.server_ns,
            lab.pin_dir().display()
        );
        let out = lab.gate_in_server(&[
            "attach", "--iface", iface, "--window", "5s", "--deny", "drop",
        ]);
        print!("{}", indent(&output_text(&out)));
        if !out.status.success() {
            return Err(format!("attaching the gate failed ({})", out.status));
        }

        self.step(1, "The client sends mail before logging in to POP3");
        self.expect_refused("no grant for this address, the gate dropped the SYN")?;

        self.step(
            2,
            "The client logs in to POP3; the POP3 server grants its address",
        );
        let granted_at = Instant::now();
        let out = self.gate(&["grant", &client.client_v4.to_string()])?;
        if !out.contains(&client.client_v4.to_string()) {
            return Err(format!("grant did not name the address: {out}"));
        }

        self.step(3, "The client sends mail again");
        match self.client_sends(PASS_TIMEOUT) {
            (ConnectResult::Connected(banner), _) if banner == BANNER => {
                println!("   ACCEPTED: the server greets with {banner:?}");
            }
            (other, _) => return Err(format!("expected to connect, got: {other}")),
        }

        self.step(4, "The grants the gate holds");
        let out = self.gate(&["list"])?;
        if !out.contains(&client.client_v4.to_string()) {
            return Err(format!("list does not show {}", client.client_v4));
        }

        self.step(5, "Time passes: the 5 s window runs out");
        let deadline = granted_at + WINDOW + Duration::from_millis(300);
        print!("   waiting");
        while Instant::now() < deadline {
            print!(".");
            let _ = std::io::stdout().flush();
            thread::sleep((deadline - Instant::now()).min(Duration::from_secs(1)));
        }
        println!();
        let fresh = lab.list(&[]);
        if !fresh.is_empty() {
            return Err(format!(
                "the grant is still fresh after the window: {fresh:?}"
            ));
        }
        println!(
            "   {:.1} s since the grant: it has expired",
            granted_at.elapsed().as_secs_f64()
        );

        self.step(6, "The client sends mail again, without a new POP3 login");
        self.expect_refused("the grant expired, the gate dropped the SYN")?;

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

fn main() -> ExitCode {
    let lab = match panic::catch_unwind(Lab::new) {
        Ok(lab) => lab,
        Err(_) => {
            eprintln!("demo: could not build the lab (see the message above)");
            return ExitCode::from(1);
        }
    };
    let story = Story {
        lab: &lab,
        step: Cell::new(0),
    };
    let outcome = match panic::catch_unwind(AssertUnwindSafe(|| story.run())) {
        Ok(result) => result,
        Err(_) => Err("panicked (see the message above)".to_string()),
    };
    let failed_step = story.step.get();
    println!();
    println!("Tearing the lab down (detach, unmount, delete namespaces)...");
    drop(lab);
    match outcome {
        Ok(()) => {
            println!("Demo complete: all {STEPS} steps behaved as expected.");
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
