//! Dovecot's open sessions keep their grants fresh. An IMAP client that
//! stays connected (IDLE) never logs in again, so its login's grant would
//! lapse while its user plainly reads mail. Every `dovecot_sessions_interval`
//! the daemon asks Dovecot for its sessions (`doveadm -f tab who -1`, which
//! reads them from Dovecot's anvil process, so Dovecot must run on this
//! host) and grants each address anew. An address whose sessions ended is
//! renewed no more, so its grant lapses at most one window after its last
//! session ended, and no sooner than one window less one interval.

use std::{collections::HashSet, net::IpAddr, process::Stdio, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use log::{debug, info, warn};
use pop3::{
    grant_log::{grant_failed_line, grant_line, GrantFields, GrantSource, GRANT_LOG_TARGET},
    GrantSink,
};
use tokio::{io::AsyncReadExt, process::Command};
use tokio_util::sync::CancellationToken;

mod listing;

pub use listing::{parse_listing, Listing, Session};

/// The most output a listing may have: far above a host's sessions (a line
/// is under 100 octets), a bound on what a wedged command can make us hold.
const MOST_OUTPUT: u64 = 64 << 20;
/// The longest one listing may take.
const LONGEST_LISTING: Duration = Duration::from_secs(30);

/// Keeps the grants of Dovecot's open sessions fresh.
pub struct SessionsRenewer {
    pub command: Vec<String>,
    pub interval: Duration,
    /// Sessions of other protocols renew nothing.
    pub protocols: Vec<String>,
    pub grants: Arc<dyn GrantSink>,
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
            let listing = tokio::select! {
                _ = stop.cancelled() => return,
                listing = self.list() => listing,
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

    async fn list(&self) -> Result<Listing> {
        let (program, args) = self
            .command
            .split_first()
            .context("dovecot_sessions_command is empty")?;
        let shown = self.command.join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run `{shown}`"))?;
        let mut stdout = child.stdout.take().context("no stdout")?.take(MOST_OUTPUT);
        let mut stderr = child.stderr.take().context("no stderr")?.take(4096);
        let run = async {
            let mut out = Vec::new();
            let mut err = Vec::new();
            let (read_out, read_err) =
                tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            read_out?;
            read_err?;
            let status = child.wait().await?;
            anyhow::Ok((status, out, err))
        };
        let (status, out, err) = tokio::time::timeout(LONGEST_LISTING, run)
            .await
            .with_context(|| format!("`{shown}` took more than {LONGEST_LISTING:?}"))??;
        if !status.success() {
            bail!(
                "`{shown}` failed ({status}): {}",
                pop3::log_text::LogText::of(String::from_utf8_lossy(&err).trim())
            );
        }
        parse_listing(&out).with_context(|| format!("`{shown}`"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pop3::GrantError;

    use super::*;

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
            .list()
            .await
            .unwrap()
            .sessions;
        assert_eq!(sessions.len(), 1);
        let err = renewer(
            &["sh", "-c", "echo anvil is down >&2; exit 75"],
            grants.clone(),
        )
        .list()
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("anvil\\x20is\\x20down"),
            "{err:#}"
        );
        let err = renewer(&["/nonexistent/doveadm"], grants)
            .list()
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot run"), "{err:#}");
    }
}
