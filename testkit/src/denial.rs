//! What the gate did with a connection attempt, judged by what it counted
//! and what the lab's listener saw, never by a timeout alone. To the
//! client a dropped SYN and a slow handshake look the same; the gate's
//! counters tell them apart. An attempt is denied only if the client got
//! no connection, the gate counted every SYN the client sent as denied,
//! and the listener accepted nothing: a pass that was merely slow fails as
//! a pass, and a SYN lost elsewhere fails as uncounted.
//!
//! The counters are per-CPU sums read by `smtp-gate stats --json`; they
//! move when the program judges the SYN, which may be a little after the
//! client gave up on a loaded machine, so they are waited for (with an
//! outer bound that only a hang reaches).

use std::{
    fmt,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    counters::{Moved, PASSED},
    lab::{Lab, Link},
    smtp::{attempt, Attempt, ConnectResult, DENY_TIMEOUT, PASS_TIMEOUT},
};

/// How long the gate's counters may take to show the SYNs a client sent.
const COUNTED_WITHIN: Duration = Duration::from_secs(20);

/// How the gate is expected to deny a SYN: what the client sees, and
/// which counters move once per SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deny {
    /// `--deny drop`: dropped and counted `denied_drop`; the client times
    /// out.
    Drop,
    /// `--deny reset`: answered with a RST and counted `denied_reset`; the
    /// client is refused at once, every SYN it sent answered.
    Reset,
    /// `--deny reset` where the gate cannot answer: dropped and counted
    /// `denied_drop` and `reset_skipped`; the client times out.
    ResetSkipped,
    /// `--deny drop`, from a banned source: dropped and counted
    /// `denied_banned`; the client times out.
    Banned,
}

impl Deny {
    /// How the client's connect ends.
    fn client_sees(self) -> ConnectResult {
        match self {
            Self::Drop | Self::ResetSkipped | Self::Banned => ConnectResult::TimedOut,
            Self::Reset => ConnectResult::Refused,
        }
    }

    /// How long the client waits: for a dropped SYN, until the counters
    /// are worth reading; for a reset, as long as any connection may take,
    /// since the RST ends the attempt.
    fn timeout(self) -> Duration {
        match self {
            Self::Drop | Self::ResetSkipped | Self::Banned => DENY_TIMEOUT,
            Self::Reset => PASS_TIMEOUT,
        }
    }

    /// Counters that move once for each SYN.
    fn counted_as(self) -> &'static [&'static str] {
        match self {
            Self::Drop => &["denied_drop"],
            Self::Reset => &["denied_reset"],
            Self::ResetSkipped => &["denied_drop", "reset_skipped"],
            Self::Banned => &["denied_banned"],
        }
    }

    /// Counters that must not move.
    fn never_counted_as(self) -> Vec<&'static str> {
        let mut names = PASSED.to_vec();
        names.extend(match self {
            Self::Drop => ["denied_reset", "reset_skipped", "denied_banned"].as_slice(),
            Self::Reset => ["denied_drop", "reset_skipped", "denied_banned"].as_slice(),
            Self::ResetSkipped => ["denied_reset", "denied_banned"].as_slice(),
            Self::Banned => ["denied_drop", "denied_reset", "reset_skipped"].as_slice(),
        });
        names
    }
}

impl fmt::Display for Deny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Drop => "dropped",
            Self::Reset => "answered with a RST",
            Self::ResetSkipped => "dropped unanswered in reset mode",
            Self::Banned => "dropped as banned",
        })
    }
}

/// A connection attempt and what the gate and the listener made of it.
#[derive(Clone, Debug)]
pub struct Judged {
    pub attempt: Attempt,
    /// How the gate's counters moved while the attempt was judged.
    pub moved: Moved,
    /// Connections the lab's listeners accepted meanwhile.
    pub accepted: usize,
}

/// What the gate did with an attempt, by its counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// Every SYN the client sent was let through (the handshake may still
    /// have been slow).
    Passed,
    /// Every SYN was denied and the client got no connection.
    Denied,
    /// Anything else: SYNs the gate never counted, or a mix.
    Unclear,
}

impl Judged {
    pub fn verdict(&self) -> GateVerdict {
        let (passed, denied) = (self.moved.passed(), self.moved.denied());
        let syns = &self.attempt.syns;
        let connected = self.attempt.result.is_connected();
        if denied == 0 && (connected || syns.admits(passed)) {
            GateVerdict::Passed
        } else if passed == 0 && !connected && syns.admits(denied) && self.accepted == 0 {
            GateVerdict::Denied
        } else {
            GateVerdict::Unclear
        }
    }
}

impl fmt::Display for Judged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the client's connect: {} ({}); the gate's counters: {}; the listener accepted {}",
            self.attempt.result, self.attempt.syns, self.moved, self.accepted
        )
    }
}

/// Judges connection attempts by the gate's counters, read by `read`
/// (shaped as `smtp-gate stats --json`), and by the lab's listener.
pub struct Judge<'a> {
    lab: &'a Lab,
    read: Box<dyn Fn() -> serde_json::Value + 'a>,
}

impl<'a> Judge<'a> {
    /// Reading the counters with `smtp-gate stats --json`.
    pub fn by_cli(lab: &'a Lab) -> Self {
        Self {
            lab,
            read: Box::new(|| lab.stats()),
        }
    }

    /// Reading the counters through the program attached to `iface`, for
    /// when the pins are gone (see [`Lab::program_stats`]).
    pub fn by_program(lab: &'a Lab, iface: &str) -> Self {
        let iface = iface.to_string();
        Self {
            lab,
            read: Box::new(move || lab.program_stats(&iface)),
        }
    }

    /// The gate's counters now.
    pub fn counters(&self) -> serde_json::Value {
        (self.read)()
    }

    /// How far the counters moved since `before`, once the gate has
    /// counted a verdict for `syns` SYNs sent since then (waiting at most
    /// 20 s, after which they are taken as they stand).
    pub fn moved_since(&self, before: &serde_json::Value, syns: u64) -> Moved {
        let deadline = Instant::now() + COUNTED_WITHIN;
        loop {
            let moved = Moved::between(before, &self.counters());
            if moved.passed() + moved.denied() >= syns || Instant::now() >= deadline {
                return moved;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects from `from` to `to:port` within `timeout` and waits until
    /// the gate has counted a verdict for every SYN the client sent (at
    /// most 20 s, after which the attempt is judged as it stands).
    pub fn judge(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> Judged {
        let to = to.into();
        self.judge_with(|| ((), attempt(&from.client_ns, to, port, timeout)))
            .1
    }

    /// Like [`Judge::judge`], with the attempt made by `try_once`, which
    /// returns what it got (e.g. an open session) beside the attempt.
    pub fn judge_with<T>(&self, try_once: impl FnOnce() -> (T, Attempt)) -> (T, Judged) {
        let before = self.counters();
        let accepted_before = self.lab.accepted();
        let (got, attempt) = try_once();
        let moved = self.moved_since(&before, attempt.syns.at_least());
        let judged = Judged {
            attempt,
            moved,
            accepted: self.lab.accepted() - accepted_before,
        };
        (got, judged)
    }

    /// Asserts that the gate denies a connection from `from` to `to:port`
    /// as `deny` says: the client gets no connection (it times out, or is
    /// refused in reset mode), every SYN it sent moved the counters of
    /// `deny` and no other verdict, and the lab's listener accepted
    /// nothing. A handshake that did not complete in time but that the
    /// gate let through fails as a pass.
    #[track_caller]
    pub fn assert_denied(
        &self,
        deny: Deny,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        what: &str,
    ) -> Judged {
        let to = to.into();
        let judged = self.judge(from, to, port, deny.timeout());
        let syns = &judged.attempt.syns;
        let fail = |why: String| -> ! {
            panic!("{what}: expected the gate to deny {to}:{port} ({deny}), but {why}; {judged}")
        };
        if judged.attempt.result.is_connected() {
            fail("the client connected".into());
        }
        if judged.moved.passed() > 0 {
            fail(format!(
                "the gate let the SYN through; the handshake did not complete within {:?}",
                deny.timeout()
            ));
        }
        for name in deny.counted_as() {
            if !syns.admits(judged.moved.of(name)) {
                fail(format!("{name} did not move once per SYN"));
            }
        }
        for name in deny.never_counted_as() {
            if judged.moved.of(name) != 0 {
                fail(format!("{name} moved"));
            }
        }
        if judged.accepted != 0 {
            fail("the listener accepted a connection".into());
        }
        if judged.attempt.result != deny.client_sees() {
            fail(format!("the client saw: {}", judged.attempt.result));
        }
        judged
    }

    /// [`Judge::assert_denied`] for `--deny drop`.
    #[track_caller]
    pub fn assert_dropped(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        what: &str,
    ) -> Judged {
        self.assert_denied(Deny::Drop, from, to, port, what)
    }
}

/// The same judgements with the counters read by the CLI.
impl Lab {
    /// See [`Judge::judge`].
    pub fn judge(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> Judged {
        Judge::by_cli(self).judge(from, to, port, timeout)
    }

    /// See [`Judge::judge_with`].
    pub fn judge_with<T>(&self, try_once: impl FnOnce() -> (T, Attempt)) -> (T, Judged) {
        Judge::by_cli(self).judge_with(try_once)
    }

    /// See [`Judge::assert_denied`].
    #[track_caller]
    pub fn assert_denied(
        &self,
        deny: Deny,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        what: &str,
    ) -> Judged {
        Judge::by_cli(self).assert_denied(deny, from, to, port, what)
    }

    /// [`Lab::assert_denied`] for `--deny drop`.
    #[track_caller]
    pub fn assert_dropped(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        what: &str,
    ) -> Judged {
        self.assert_denied(Deny::Drop, from, to, port, what)
    }

    /// [`Lab::assert_denied`] for `--deny reset`: refused, every SYN
    /// answered.
    #[track_caller]
    pub fn assert_reset(
        &self,
        from: &Link,
        to: impl Into<IpAddr>,
        port: u16,
        what: &str,
    ) -> Judged {
        self.assert_denied(Deny::Reset, from, to, port, what)
    }
}
