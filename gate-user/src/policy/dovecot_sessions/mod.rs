//! Dovecot's open sessions keep their grants fresh. An IMAP client that
//! stays connected (IDLE) never logs in again, so its login's grant would
//! lapse while its user plainly reads mail. Every `dovecot_sessions_interval`
//! the daemon asks Dovecot for its sessions (`doveadm -f tab who -1`, which
//! reads them from Dovecot's anvil process, so Dovecot must run on this
//! host) and grants each address anew. An address whose sessions ended is
//! renewed no more, so its grant lapses at most one window after its last
//! session ended, and no sooner than one window less one interval.
//! A banned address is renewed not at all, as a banned client's reported
//! login grants nothing (dovecot/endpoint.rs): the kernel refuses it
//! whatever its grant, and on the grant bus the grant would let it in on
//! the other hosts.

use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Duration};

use log::{debug, info, warn};
use pop3::{
    grant_log::{grant_failed_line, grant_line, GrantFields, GrantSource, GRANT_LOG_TARGET},
    log_text::LogText,
    GrantSink,
};
use tokio_util::sync::CancellationToken;

#[cfg(test)]
pub(crate) mod captured_log;
mod command;
mod failure;
mod listing;
#[cfg(test)]
mod test_processes;

pub use command::ListingLimits;
use failure::{FailureKind, ListingFailure};
pub use listing::{parse_listing, Listing, Session};

use crate::policy::dovecot::PolicyCounters;

/// Keeps the grants of Dovecot's open sessions fresh.
pub struct SessionsRenewer {
    pub command: Vec<String>,
    pub interval: Duration,
    /// Sessions of other protocols renew nothing.
    pub protocols: Vec<String>,
    pub grants: Arc<dyn GrantSink>,
    /// True if an address is banned now: its sessions renew nothing.
    pub banned: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
    /// The Dovecot hook's counters: `sessions_banned` counts the banned
    /// addresses not renewed, one a round each.
    pub counters: Arc<PolicyCounters>,
    pub limits: ListingLimits,
}

/// What a round did, for the next one's log lines.
#[derive(Debug, Default)]
struct Round {
    /// The addresses granted anew.
    renewed: HashSet<IpAddr>,
    /// The addresses not renewed: banned.
    banned: HashSet<IpAddr>,
}

impl SessionsRenewer {
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Round::default();
        // The kind of the last round's failure, None if it listed.
        let mut failing: Option<FailureKind> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.list(&stop).await {
                Ok(None) => return,
                Ok(Some(Listing { sessions, skipped })) => {
                    if skipped > 0 {
                        debug!(
                            "dovecot sessions: {skipped} lines skipped, their fields not the \
                             header's (a tab or line end inside a value) or their ip no address"
                        );
                    }
                    if failing.take().is_some() {
                        info!("dovecot sessions: listed again; their grants are renewed");
                    }
                    last = self.renew(&sessions, &last).await;
                }
                Err(failure) => {
                    if failing.as_ref() == Some(&failure.kind) {
                        debug!("dovecot sessions: {failure} (again)");
                    } else {
                        warn!(
                            "dovecot sessions: {failure}; grants of open sessions are not \
                             renewed until the listing works again"
                        );
                    }
                    failing = Some(failure.kind);
                }
            }
        }
    }

    /// Grants every address with a session of a granting protocol, unless
    /// it is banned; says so for the addresses that were not renewed last
    /// round (a grant line), and for those newly skipped as banned (as the
    /// report path's `dovecot-policy refused ... reason=banned` line).
    async fn renew(&self, sessions: &[Session], before: &Round) -> Round {
        let mut round = Round::default();
        for session in sessions {
            let granting = self
                .protocols
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&session.protocol));
            let seen =
                round.renewed.contains(&session.addr) || round.banned.contains(&session.addr);
            if !granting || seen {
                continue;
            }
            if (self.banned)(session.addr) {
                PolicyCounters::add(&self.counters.sessions_banned);
                round.banned.insert(session.addr);
                if !before.banned.contains(&session.addr) {
                    info!(
                        "dovecot-sessions refused addr={} user={} protocol={} reason=banned \
                         (open session, not renewed)",
                        session.addr,
                        LogText::of(&session.user),
                        LogText::of(&session.protocol)
                    );
                }
                continue;
            }
            let mut extra = vec![("protocol", session.protocol.as_str())];
            let source = GrantSource::DovecotSessions;
            // One after the other: each waits for the bus at most its
            // timeout, and a round of renewals is no login anyone waits on.
            match self.grants.grant(session.addr).await {
                Ok(granted) => {
                    round.renewed.insert(session.addr);
                    if !before.renewed.contains(&session.addr) {
                        extra.extend(granted.as_extra());
                        let fields = GrantFields {
                            user: Some(session.user.as_bytes()),
                            extra: &extra,
                        };
                        info!(target: GRANT_LOG_TARGET, "{}", grant_line(source, session.addr, &fields));
                    }
                }
                Err(e) => {
                    let fields = GrantFields {
                        user: Some(session.user.as_bytes()),
                        extra: &extra,
                    };
                    warn!(target: GRANT_LOG_TARGET, "{}", grant_failed_line(source, session.addr, &fields, &e))
                }
            }
        }
        debug!(
            "dovecot sessions: {} listed, {} addresses renewed, {} banned not renewed",
            sessions.len(),
            round.renewed.len(),
            round.banned.len()
        );
        round
    }

    /// The sessions listed now, or None if the daemon stops.
    async fn list(&self, stop: &CancellationToken) -> Result<Option<Listing>, ListingFailure> {
        let Some(output) = command::run_listing(&self.command, &self.limits, stop).await? else {
            return Ok(None);
        };
        let listing = parse_listing(&output).map_err(|e| {
            let e = e.context(format!("`{}`", self.command.join(" ")));
            ListingFailure::new(FailureKind::NotAListing, e)
        })?;
        Ok(Some(listing))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pop3::{GrantFuture, Granted};

    use log::Level;

    use super::{
        captured_log::captured,
        test_processes::{command_leaving_a_grandchild, ScratchDir, Started, BOUND},
        *,
    };

    #[derive(Default)]
    struct Recorded(Mutex<Vec<IpAddr>>);

    impl GrantSink for Recorded {
        fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
            self.0.lock().unwrap().push(addr);
            Box::pin(std::future::ready(Ok(Granted::default())))
        }
    }

    fn renewer(command: &[&str], grants: Arc<Recorded>) -> SessionsRenewer {
        SessionsRenewer {
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            protocols: vec!["imap".into(), "POP3".into()],
            grants,
            banned: Arc::new(|_| false),
            counters: Arc::new(PolicyCounters::default()),
            limits: ListingLimits::default(),
        }
    }

    #[tokio::test]
    async fn each_address_of_a_granting_protocol_is_granted_once_a_round() {
        let grants = Arc::new(Recorded::default());
        let sessions = parse_listing(
            b"username\tproto\tpid\tip\n\
             alice\timap\t1\t192.0.2.7\n\
             alice\timap\t2\t192.0.2.7\n\
             bob\tpop3\t3\t2001:db8::9\n\
             eve\tsubmission\t4\t203.0.113.5\n",
        )
        .unwrap()
        .sessions;
        let renewed = renewer(&["true"], Arc::clone(&grants))
            .renew(&sessions, &Round::default())
            .await;
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            *grants.0.lock().unwrap(),
            [addr("192.0.2.7"), addr("2001:db8::9")]
        );
        assert_eq!(renewed.renewed.len(), 2);
    }

    /// Attack review (issue 12's hooks): the renewer granted banned
    /// addresses, logging `grant source=dovecot-sessions` for them, while
    /// the report path refuses them. A banned address is not granted, not
    /// logged as granted, and counted, each round; its refusal is said
    /// once while it stays banned.
    #[test]
    fn a_banned_address_is_not_renewed() {
        let grants = Arc::new(Recorded::default());
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        let banned = addr("192.0.2.66");
        let sessions = parse_listing(
            b"username\tproto\tpid\tip\n\
             mallory\timap\t1\t192.0.2.66\n\
             mallory\timap\t2\t192.0.2.66\n\
             alice\timap\t3\t192.0.2.7\n",
        )
        .unwrap()
        .sessions;
        let counters = Arc::new(PolicyCounters::default());
        let renewer = SessionsRenewer {
            banned: Arc::new(move |a| a == banned),
            counters: Arc::clone(&counters),
            ..renewer(&["true"], Arc::clone(&grants))
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (rounds, logged) = captured(|| {
            let first = runtime.block_on(renewer.renew(&sessions, &Round::default()));
            let second = runtime.block_on(renewer.renew(&sessions, &first));
            (first, second)
        });
        assert_eq!(
            *grants.0.lock().unwrap(),
            [addr("192.0.2.7"), addr("192.0.2.7")],
            "only the address not banned is granted, each round"
        );
        assert!(!rounds.1.renewed.contains(&banned));
        assert_eq!(counters.now().sessions_banned, 2, "once a round");
        let grant_lines: Vec<_> = logged
            .iter()
            .filter(|(_, m)| m.starts_with("grant "))
            .collect();
        assert_eq!(grant_lines.len(), 1, "{logged:#?}");
        assert!(grant_lines[0].1.contains("addr=192.0.2.7 "), "{logged:#?}");
        let refused: Vec<_> = logged
            .iter()
            .filter(|(_, m)| m.starts_with("dovecot-sessions refused"))
            .map(|(l, m)| (*l, m.as_str()))
            .collect();
        assert_eq!(
            refused,
            [(
                Level::Info,
                "dovecot-sessions refused addr=192.0.2.66 user=mallory protocol=imap \
                 reason=banned (open session, not renewed)"
            )],
            "said once"
        );
    }

    #[tokio::test]
    async fn the_command_is_run_and_its_failures_are_errors() {
        let grants = Arc::new(Recorded::default());
        let listing = "username\tproto\tpid\tip\nalice\timap\t1\t192.0.2.7\n";
        let script = format!(
            "printf '{}'",
            listing.replace('\t', "\\t").replace('\n', "\\n")
        );
        let sessions = renewer(&["sh", "-c", &script], Arc::clone(&grants))
            .list(&CancellationToken::new())
            .await
            .unwrap()
            .unwrap()
            .sessions;
        assert_eq!(sessions.len(), 1);
        let err = renewer(
            &["sh", "-c", "echo anvil is down >&2; exit 75"],
            grants.clone(),
        )
        .list(&CancellationToken::new())
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("anvil\\x20is\\x20down"),
            "{err:#}"
        );
        assert!(
            matches!(&err.kind, FailureKind::Failed { status, .. } if status.code() == Some(75)),
            "{err:?}"
        );
        let err = renewer(&["/nonexistent/doveadm"], grants)
            .list(&CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot run"), "{err:#}");
        assert_eq!(
            err.kind,
            FailureKind::CannotRun(std::io::ErrorKind::NotFound)
        );
    }

    fn renewer_leaving_a_grandchild(dir: &ScratchDir) -> SessionsRenewer {
        SessionsRenewer {
            command: command_leaving_a_grandchild(&dir.0),
            interval: Duration::from_secs(3600),
            protocols: vec!["imap".into()],
            grants: Arc::new(Recorded::default()),
            banned: Arc::new(|_| false),
            counters: Arc::new(PolicyCounters::default()),
            // Only the daemon stopping ends these listings.
            limits: ListingLimits {
                longest: Duration::from_secs(3600),
                ..ListingLimits::default()
            },
        }
    }

    async fn started(dir: &ScratchDir) -> Started {
        let dir = dir.0.clone();
        tokio::task::spawn_blocking(move || Started::wait_for(&dir))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_daemon_stopping_mid_listing_kills_the_commands_group() {
        let dir = ScratchDir::new("stop");
        let stop = CancellationToken::new();
        let running = tokio::spawn(renewer_leaving_a_grandchild(&dir).run(stop.clone()));
        let started = started(&dir).await;
        stop.cancel();
        tokio::time::timeout(BOUND, running)
            .await
            .expect("the renewer ends when the daemon stops")
            .unwrap();
        assert!(started.leader_reaped(), "the command was not reaped");
        assert!(
            started.grandchild_ends(),
            "the command's child outlived the daemon's stop"
        );
    }

    /// The daemon's runtime drops the renewer mid-listing if the stop did
    /// not reach it first: the group still goes.
    #[test]
    fn a_runtime_shut_down_mid_listing_kills_the_commands_group() {
        let dir = ScratchDir::new("shutdown");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(renewer_leaving_a_grandchild(&dir).run(CancellationToken::new()));
        let started = runtime.block_on(started(&dir));
        drop(runtime);
        assert!(
            started.grandchild_ends(),
            "the command's child outlived the runtime"
        );
    }

    /// A failure is warned of when it is another than the last round's;
    /// the same again (other pids in its message) only at debug; listing
    /// again after failures is said once.
    #[test]
    fn a_new_failure_is_warned_of_a_repeated_one_is_not() {
        let dir = ScratchDir::new("failures");
        let d = dir.0.display();
        let script = format!(
            "n=$(cat {d}/rounds 2>/dev/null || echo 0)
             echo $((n + 1)) > {d}/rounds.new && mv {d}/rounds.new {d}/rounds
             case $n in
               0|1) echo 'sh: 1: doveadm: not found' >&2; exit 127 ;;
               2|3) echo \"doveadm($$): anvil is down\" >&2; exit 75 ;;
               *) printf 'username\\tproto\\tpid\\tip\\nalice\\timap\\t1\\t192.0.2.7\\n' ;;
             esac"
        );
        let renewer = SessionsRenewer {
            interval: Duration::from_millis(10),
            ..renewer(&["sh", "-c", &script], Arc::new(Recorded::default()))
        };
        let rounds = dir.0.join("rounds");
        let ((), logged) = captured(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let stop = CancellationToken::new();
                let running = tokio::spawn(renewer.run(stop.clone()));
                let deadline = tokio::time::Instant::now() + BOUND;
                // Round 6 begun: round 5, the first to list, is over.
                let begun = || {
                    std::fs::read_to_string(&rounds)
                        .ok()
                        .and_then(|n| n.trim().parse::<u32>().ok())
                        .unwrap_or(0)
                };
                while begun() < 6 {
                    assert!(tokio::time::Instant::now() < deadline, "rounds stalled");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                stop.cancel();
                running.await.unwrap();
            })
        });
        let said = |level: Level| {
            logged
                .iter()
                .filter(|(l, m)| *l == level && m.starts_with("dovecot sessions:"))
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
        };
        let warned = said(Level::Warn);
        assert_eq!(warned.len(), 2, "{logged:#?}");
        assert!(warned[0].contains("exit status: 127"), "{warned:?}");
        assert!(
            warned[0].contains("doveadm:\\x20not\\x20found"),
            "{warned:?}"
        );
        assert!(warned[1].contains("exit status: 75"), "{warned:?}");
        let again = said(Level::Debug);
        let again: Vec<_> = again.iter().filter(|m| m.ends_with("(again)")).collect();
        assert_eq!(again.len(), 2, "{logged:#?}");
        assert_eq!(
            said(Level::Info),
            ["dovecot sessions: listed again; their grants are renewed"]
        );
        let position = |wanted: &str| logged.iter().position(|(_, m)| m.contains(wanted));
        assert!(position("listed again") > position("exit status: 75"));
    }
}
