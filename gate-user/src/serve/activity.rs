//! What the daemon's status line says (`systemctl status`: systemd's
//! `STATUS=`): its POP3 logins and the grants it made, counted as they
//! happen, so that the line costs a few loads and never a walk over the
//! gate's map. The counts are since the daemon started.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pop3::{FailureSink, GrantFuture, GrantSink};

#[derive(Debug, Default)]
pub struct Activity {
    /// POP3 logins that passed authentication (each then asks for a grant).
    logins: AtomicU64,
    /// POP3 logins refused.
    failed_logins: AtomicU64,
    /// Grants made: POP3 logins, Dovecot's reports and open sessions.
    grants: AtomicU64,
    /// Grants that could not be made (the login was refused for it).
    failed_grants: AtomicU64,
}

impl Activity {
    /// `POP3 logins 3 (1 failed), grants 5 (0 failed)`; without the POP3
    /// part for a daemon that serves no POP3.
    pub fn status_line(&self, serves_pop3: bool) -> String {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let grants = format!(
            "grants {} ({} failed)",
            get(&self.grants),
            get(&self.failed_grants)
        );
        if serves_pop3 {
            format!(
                "POP3 logins {} ({} failed), {grants}",
                get(&self.logins),
                get(&self.failed_logins)
            )
        } else {
            grants
        }
    }
}

fn add(n: &AtomicU64) {
    n.fetch_add(1, Ordering::Relaxed);
}

/// A grant sink that counts what the one it wraps does.
pub struct CountedGrants {
    pub grants: Arc<dyn GrantSink>,
    pub activity: Arc<Activity>,
}

impl GrantSink for CountedGrants {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        Box::pin(async move {
            let granted = self.grants.grant(addr).await;
            add(match granted {
                Ok(_) => &self.activity.grants,
                Err(_) => &self.activity.failed_grants,
            });
            granted
        })
    }
}

/// The POP3 service's grant sink: every grant it asks for is a login
/// that passed authentication.
pub struct CountedLogins(pub CountedGrants);

impl GrantSink for CountedLogins {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        add(&self.0.activity.logins);
        self.0.grant(addr)
    }
}

/// The POP3 service's failure sink, counting failed logins.
pub struct CountedFailures {
    pub failures: Arc<dyn FailureSink>,
    pub activity: Arc<Activity>,
}

impl FailureSink for CountedFailures {
    fn login_failed(&self, addr: IpAddr, user: &str) {
        add(&self.activity.failed_logins);
        self.failures.login_failed(addr, user);
    }

    fn is_banned(&self, addr: IpAddr) -> bool {
        self.failures.is_banned(addr)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use pop3::{GrantError, Granted};

    use super::*;

    /// Grants `192.0.2.1` and refuses every other address; remembers the
    /// failures it was told of.
    #[derive(Default)]
    struct Fake {
        failed: Mutex<Vec<IpAddr>>,
    }

    impl GrantSink for Fake {
        fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
            Box::pin(async move {
                if addr == IpAddr::from([192, 0, 2, 1]) {
                    Ok(Granted::default())
                } else {
                    Err(GrantError::new("map full"))
                }
            })
        }
    }

    impl FailureSink for Fake {
        fn login_failed(&self, addr: IpAddr, _user: &str) {
            self.failed.lock().unwrap().push(addr);
        }

        fn is_banned(&self, addr: IpAddr) -> bool {
            addr == IpAddr::from([192, 0, 2, 66])
        }
    }

    #[tokio::test]
    async fn logins_failures_and_grants_are_counted_and_passed_on() {
        let fake = Arc::new(Fake::default());
        let activity = Arc::new(Activity::default());
        let counted = || CountedGrants {
            grants: Arc::clone(&fake) as _,
            activity: Arc::clone(&activity),
        };
        let pop3 = CountedLogins(counted());
        let hooks = counted();
        let failures = CountedFailures {
            failures: Arc::clone(&fake) as _,
            activity: Arc::clone(&activity),
        };
        assert_eq!(
            activity.status_line(true),
            "POP3 logins 0 (0 failed), grants 0 (0 failed)"
        );
        let good = IpAddr::from([192, 0, 2, 1]);
        let bad = IpAddr::from([192, 0, 2, 2]);
        assert!(pop3.grant(good).await.is_ok());
        assert!(pop3.grant(bad).await.is_err());
        assert!(hooks.grant(good).await.is_ok());
        failures.login_failed(bad, "mallory");
        assert!(failures.is_banned(IpAddr::from([192, 0, 2, 66])));
        assert!(!failures.is_banned(bad));
        assert_eq!(*fake.failed.lock().unwrap(), [bad]);
        assert_eq!(
            activity.status_line(true),
            "POP3 logins 2 (1 failed), grants 2 (1 failed)"
        );
        assert_eq!(activity.status_line(false), "grants 2 (1 failed)");
    }
}
