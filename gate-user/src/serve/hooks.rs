//! The mail servers' hooks in the daemon: Dovecot's login reports grant
//! and count failures as POP3 logins do, Postfix's questions are answered
//! from the maps the kernel reads, and Dovecot's open sessions keep their
//! grants fresh (policy/). Their listeners are bound at start with the
//! POP3 listeners, before the gate changes.

use std::{net::IpAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use log::{error, info, warn};
use pop3::{
    grant_log::{grant_failed_line, grant_line, GrantFields, GrantSource, GRANT_LOG_TARGET},
    FailureSink, GrantSink,
};
use tokio_util::sync::CancellationToken;

use super::{GateBanSink, GateGrantSink, LocalGate};
use crate::policy::{
    config::PolicyHooks,
    dovecot::{self, DovecotPolicySettings, LiveSecret, PolicyCounters},
    dovecot_sessions::{ListingLimits, SessionsRenewer},
    listen::{PolicyAddr, PolicyListener},
    postfix, GrantLookup, LoginReports, ReportFuture, Standing,
};

/// Dovecot's reports, acted on in the gate (and on the grant bus): a
/// host without a gate counts no failures and bans nobody.
pub struct GateLoginReports {
    pub grants: Arc<dyn GrantSink>,
    pub bans: Option<Arc<GateBanSink>>,
}

impl LoginReports for GateLoginReports {
    fn login_succeeded<'a>(
        &'a self,
        addr: IpAddr,
        user: &'a str,
        protocol: &'a str,
    ) -> ReportFuture<'a> {
        Box::pin(async move {
            let source = GrantSource::DovecotPolicy;
            match self.grants.grant(addr).await {
                Ok(granted) => {
                    let mut extra = vec![("protocol", protocol)];
                    extra.extend(granted.as_extra());
                    let fields = GrantFields {
                        user: Some(user.as_bytes()),
                        extra: &extra,
                    };
                    info!(target: GRANT_LOG_TARGET, "{}", grant_line(source, addr, &fields));
                    Ok(())
                }
                Err(e) => {
                    let fields = GrantFields {
                        user: Some(user.as_bytes()),
                        extra: &[("protocol", protocol)],
                    };
                    error!(target: GRANT_LOG_TARGET, "{}", grant_failed_line(source, addr, &fields, &e));
                    Err(anyhow::Error::new(e))
                }
            }
        })
    }

    fn login_failed(&self, addr: IpAddr, user: &str) {
        if let Some(bans) = &self.bans {
            bans.login_failed(addr, user);
        }
    }

    fn is_banned(&self, addr: IpAddr) -> bool {
        self.bans.as_ref().is_some_and(|bans| bans.is_banned(addr))
    }
}

/// Postfix's questions, answered as the kernel judges a SYN: a banned
/// source is refused (unless exempt), then a fresh grant, then an exempt
/// network passes.
pub struct GateGrantLookup {
    pub grants: Arc<GateGrantSink>,
    pub bans: Arc<GateBanSink>,
}

impl GrantLookup for GateGrantLookup {
    fn standing(&self, addr: IpAddr) -> Result<Standing> {
        if self.bans.is_banned(addr) {
            return Ok(Standing::Refused);
        }
        self.grants.with_maps(|maps| {
            if maps.grant_of(addr)?.is_some_and(|grant| grant.is_fresh()) {
                return Ok(Standing::Granted);
            }
            Ok(if maps.is_exempt(addr)? {
                Standing::Exempt
            } else {
                Standing::Refused
            })
        })
    }
}

/// The hooks' listeners, bound, and what they need read.
pub struct BoundHooks {
    dovecot: Option<(PolicyListener, DovecotPolicySettings)>,
    postfix: Option<PolicyListener>,
}

impl BoundHooks {
    /// The Dovecot endpoint's secret, for the reload to replace.
    pub fn dovecot_secret(&self) -> Option<LiveSecret> {
        self.dovecot
            .as_ref()
            .and_then(|(_, settings)| settings.secret.clone())
    }
}

/// Binds the listeners the hooks' keys name (inside the runtime).
pub fn bind(hooks: &PolicyHooks) -> Result<BoundHooks> {
    let bind = |addr: &Option<PolicyAddr>, key: &str| {
        addr.as_ref()
            .map(|addr| {
                PolicyListener::bind(addr).with_context(|| format!("{key} = {addr}: cannot listen"))
            })
            .transpose()
    };
    // The secret is read with the listeners, before the gate changes: a
    // bad file stops the start.
    let dovecot = match bind(&hooks.dovecot_policy_listen, "dovecot_policy_listen")? {
        Some(listener) => Some((listener, DovecotPolicySettings::from_hooks(hooks)?)),
        None => None,
    };
    for warning in hooks.warnings() {
        warn!("{warning}");
    }
    Ok(BoundHooks {
        dovecot,
        postfix: bind(&hooks.postfix_policy_listen, "postfix_policy_listen")?,
    })
}

/// The counters of the hooks that run, for the metrics page.
#[derive(Default)]
pub struct HookCounters {
    pub dovecot: Option<Arc<PolicyCounters>>,
    pub postfix: Option<Arc<postfix::PolicyCounters>>,
}

/// Starts the hooks; they end when `stop` is cancelled. Logins grant
/// through `grants` (the gate and the bus); Postfix's questions are
/// answered from this host's gate, which it needs.
pub fn start(
    bound: BoundHooks,
    hooks: &PolicyHooks,
    grants: Arc<dyn GrantSink>,
    gate: Option<&LocalGate>,
    stop: CancellationToken,
) -> Result<HookCounters> {
    let mut counters = HookCounters::default();
    // The renewer shares the endpoint's counters (a host where it runs
    // has the endpoint: PolicyHooks::check) and its view of the bans.
    let dovecot_counts = Arc::new(PolicyCounters::default());
    let bans = gate.map(|gate| Arc::clone(&gate.bans));
    if let Some((listener, settings)) = bound.dovecot {
        info!(
            "Dovecot auth policy requests taken on {}",
            listener.local_addr()?
        );
        let reports = Arc::new(GateLoginReports {
            grants: Arc::clone(&grants),
            bans: bans.clone(),
        });
        let counts = Arc::clone(&dovecot_counts);
        counters.dovecot = Some(Arc::clone(&counts));
        let shown = Arc::clone(&counts);
        tokio::spawn(log_statistics(
            "hook=dovecot-policy",
            move || shown.now().to_string(),
            stop.clone(),
        ));
        tokio::spawn(dovecot::serve(
            listener,
            settings,
            reports,
            counts,
            stop.clone(),
        ));
    }
    if let Some(listener) = bound.postfix {
        let Some(gate) = gate else {
            anyhow::bail!("postfix_policy_listen needs iface: Postfix is answered from the gate");
        };
        info!(
            "Postfix policy requests answered on {}",
            listener.local_addr()?
        );
        let lookup = Arc::new(GateGrantLookup {
            grants: Arc::clone(&gate.grants),
            bans: Arc::clone(&gate.bans),
        });
        let counts = Arc::new(postfix::PolicyCounters::default());
        counters.postfix = Some(Arc::clone(&counts));
        let shown = Arc::clone(&counts);
        tokio::spawn(log_statistics(
            "hook=postfix-policy",
            move || shown.now().to_string(),
            stop.clone(),
        ));
        tokio::spawn(postfix::serve(
            listener,
            hooks.postfix_settings()?,
            lookup,
            counts,
            stop.clone(),
        ));
    }
    if let Some(interval) = hooks.dovecot_sessions_interval {
        info!(
            "Dovecot's open sessions renew their grants every {} (`{}`)",
            pop3::duration::format_duration(interval),
            hooks.dovecot_sessions_command.join(" ")
        );
        let renewer = SessionsRenewer {
            command: hooks.dovecot_sessions_command.clone(),
            interval,
            protocols: hooks.dovecot_policy_protocols.clone(),
            grants,
            banned: Arc::new(move |addr| bans.as_ref().is_some_and(|bans| bans.is_banned(addr))),
            counters: dovecot_counts,
            limits: ListingLimits::default(),
        };
        tokio::spawn(renewer.run(stop));
    }
    Ok(counters)
}

/// How often a hook's counts are logged (when they changed), as Postfix's
/// anvil logs its statistics every 10 minutes.
const STATISTICS_EVERY: Duration = Duration::from_secs(600);

/// Logs `statistics WHAT key=value...` (`hook=NAME`, `bus=publisher`)
/// every [`STATISTICS_EVERY`] if the counts changed, and once more when
/// the daemon stops.
pub async fn log_statistics(
    what: &'static str,
    counts: impl Fn() -> String + Send + 'static,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(STATISTICS_EVERY);
    ticks.tick().await;
    let mut last = counts();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                info!("statistics {what} {}", counts());
                return;
            }
            _ = ticks.tick() => {}
        }
        let now = counts();
        if now != last {
            info!("statistics {what} {now}");
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack review (issue 12's hooks): a hook's socket in a directory
    /// others may write to (/tmp) stops the start, naming the key.
    #[tokio::test]
    async fn a_hook_socket_in_tmp_stops_the_start_naming_its_key() {
        let path = format!("/tmp/smtp-gate-hook-{}", std::process::id());
        for key in ["postfix_policy_listen", "dovecot_policy_listen"] {
            let addr: PolicyAddr = path.parse().unwrap();
            let hooks = match key {
                "postfix_policy_listen" => PolicyHooks {
                    postfix_policy_listen: Some(addr),
                    ..PolicyHooks::default()
                },
                _ => PolicyHooks {
                    dovecot_policy_listen: Some(addr),
                    ..PolicyHooks::default()
                },
            };
            let err = bind(&hooks).err().expect("a socket in /tmp is refused");
            let text = format!("{err:#}");
            assert!(
                text.starts_with(&format!("{key} = unix:{path}: cannot listen: ")),
                "{text}"
            );
            assert!(text.contains("/tmp, which others may write to"), "{text}");
            assert!(!std::path::Path::new(&path).exists());
        }
    }
}
