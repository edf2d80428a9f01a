//! Dovecot's open sessions keep their grants fresh. An IMAP client that
//! stays connected (IDLE) never logs in again, so its login's grant would
//! lapse while its user plainly reads mail. Every `dovecot_sessions_interval`
//! the daemon asks Dovecot for its sessions (`doveadm -f tab who -1`, which
//! reads them from Dovecot's anvil process, so Dovecot must run on this
//! host) and grants each address anew. An address whose sessions ended is
//! renewed no more, so its grant lapses at most one window after its last
//! session ended, and no sooner than one window less one interval.

use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::{debug, info, warn};
use pop3::{
    grant_log::{grant_failed_line, grant_line, GrantFields, GrantSource, GRANT_LOG_TARGET},
    GrantSink,
};
use tokio_util::sync::CancellationToken;

mod command;
mod listing;
#[cfg(test)]
mod test_processes;

pub use command::ListingLimits;
pub use listing::{parse_listing, Listing, Session};

/// Keeps the grants of Dovecot's open sessions fresh.
pub struct SessionsRenewer {
    pub command: Vec<String>,
    pub interval: Duration,
    /// Sessions of other protocols renew nothing.
    pub protocols: Vec<String>,
    pub grants: Arc<dyn GrantSink>,
    pub limits: ListingLimits,
}

impl SessionsRenewer {
    pub async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed: HashSet<IpAddr> = HashSet::new();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let listing = match self.list(&stop).await {
                Ok(None) => return,
                Ok(Some(listing)) => Ok(listing),
                Err(e) => Err(e),
            };
            match listing {
                Ok(Listing { sessions, skipped }) => {
                    if skipped > 0 {
                        debug!(
                            "dovecot sessions: {skipped} lines skipped, their fields not the \
                             header's (a tab or line end inside a value) or their ip no address"
                        );
                    }
                    if failing {
                        info!("dovecot sessions: listed again; their grants are renewed");
                        failing = false;
                    }
                    renewed = self.renew(&sessions, &renewed);
                }
                Err(e) => {
                    // Once per change: a listing failing every minute
                    // would otherwise fill the log.
                    if !failing {
                        warn!(
                            "dovecot sessions: {e:#}; grants of open sessions are not renewed \
                             until the listing works again"
                        );
                        failing = true;
                    }
                }
            }
        }
    }

    /// Grants every address with a session of a granting protocol; says
    /// so for the addresses that were not renewed last round. Gives the
    /// addresses renewed.
    fn renew(&self, sessions: &[Session], before: &HashSet<IpAddr>) -> HashSet<IpAddr> {
        let mut renewed = HashSet::new();
        for session in sessions {
            let granting = self
                .protocols
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&session.protocol));
            if !granting || renewed.contains(&session.addr) {
                continue;
            }
            let fields = GrantFields {
                user: Some(session.user.as_bytes()),
                extra: &[("protocol", &session.protocol)],
            };
            let source = GrantSource::DovecotSessions;
            match self.grants.grant(session.addr) {
                Ok(()) => {
                    renewed.insert(session.addr);
                    if !before.contains(&session.addr) {
                        info!(target: GRANT_LOG_TARGET, "{}", grant_line(source, session.addr, &fields));
                    }
                }
                Err(e) => {
                    warn!(target: GRANT_LOG_TARGET, "{}", grant_failed_line(source, session.addr, &fields, &e))
                }
            }
        }
        debug!(
            "dovecot sessions: {} listed, {} addresses renewed",
            sessions.len(),
            renewed.len()
        );
        renewed
    }

    /// The sessions listed now, or None if the daemon stops.
    async fn list(&self, stop: &CancellationToken) -> Result<Option<Listing>> {
        let Some(output) = command::run_listing(&self.command, &self.limits, stop).await? else {
            return Ok(None);
        };
        parse_listing(&output)
            .with_context(|| format!("`{}`", self.command.join(" ")))
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pop3::GrantError;

    use super::{
        test_processes::{command_leaving_a_grandchild, ScratchDir, Started, BOUND},
        *,
    };

    #[derive(Default)]
    struct Recorded(Mutex<Vec<IpAddr>>);

    impl GrantSink for Recorded {
        fn grant(&self, addr: IpAddr) -> Result<(), GrantError> {
            self.0.lock().unwrap().push(addr);
            Ok(())
        }
    }

    fn renewer(command: &[&str], grants: Arc<Recorded>) -> SessionsRenewer {
        SessionsRenewer {
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(1),
            protocols: vec!["imap".into(), "POP3".into()],
            grants,
            limits: ListingLimits::default(),
        }
    }

    #[test]
    fn each_address_of_a_granting_protocol_is_granted_once_a_round() {
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
        let renewed = renewer(&["true"], Arc::clone(&grants)).renew(&sessions, &HashSet::new());
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            *grants.0.lock().unwrap(),
            [addr("192.0.2.7"), addr("2001:db8::9")]
        );
        assert_eq!(renewed.len(), 2);
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
        let err = renewer(&["/nonexistent/doveadm"], grants)
            .list(&CancellationToken::new())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot run"), "{err:#}");
    }

    fn renewer_leaving_a_grandchild(dir: &ScratchDir) -> SessionsRenewer {
        SessionsRenewer {
            command: command_leaving_a_grandchild(&dir.0),
            interval: Duration::from_secs(3600),
            protocols: vec!["imap".into()],
            grants: Arc::new(Recorded::default()),
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
}
