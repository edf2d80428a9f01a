//! Where a login's grant goes in the daemon: this host's gate, when it has
//! one (`iface`), and the grant bus, when one is configured (`bus`), for
//! the other hosts' gates. Every grant the daemon makes goes through here:
//! POP3 logins, Dovecot's login reports, Dovecot's open sessions.
//!
//! The local grant is written first (microseconds), then the grant is
//! published: the `+OK` (or Dovecot's answer) waits for the engine's
//! acknowledgement, at most `bus_timeout` (bus/publisher.rs bounds it, and
//! does not wait at all while the engine is down). A publication that
//! fails never fails the login: the grant line says how the bus took it
//! (`bus=published`, or `down`, `timeout`, `busy`, `failed`), and the
//! publisher logs once that publishing fails and once that it works again.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use pop3::{GrantError, GrantFuture, GrantSink, Granted};

use super::grant_sink::GateGrantSink;
use crate::bus::publisher::Publisher;

/// The grant line's field for the bus's outcome.
pub const BUS_FIELD: &str = "bus";
/// Its value when the engine took the grant.
pub const PUBLISHED: &str = "published";

pub struct LoginGrants {
    gate: Option<Arc<GateGrantSink>>,
    bus: Option<Arc<Publisher>>,
    /// The lifetime a published grant gets when the gate's own window
    /// cannot be read (a host without a gate: always): `window`, or its
    /// default, as the last reload left it. In nanoseconds.
    window_ns: AtomicU64,
}

impl LoginGrants {
    pub fn new(
        gate: Option<Arc<GateGrantSink>>,
        bus: Option<Arc<Publisher>>,
        window: Duration,
    ) -> Self {
        Self {
            gate,
            bus,
            window_ns: AtomicU64::new(nanos(window)),
        }
    }

    /// The window of the config from now on (a reload).
    pub fn set_window(&self, window: Duration) {
        self.window_ns.store(nanos(window), Ordering::Relaxed);
    }

    fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns.load(Ordering::Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl GrantSink for LoginGrants {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        // The local grant, and the window it lives for: a published grant
        // lives as long on every edge (which clamps it to its own window).
        let local = self.gate.as_ref().map(|gate| gate.grant_now(addr));
        Box::pin(async move {
            let Some(bus) = &self.bus else {
                return match local {
                    Some(Ok(_)) | None => Ok(Granted::default()),
                    Some(Err(e)) => Err(GrantError::new(e)),
                };
            };
            let lifetime = match &local {
                Some(Ok(Some(window))) => *window,
                _ => self.window(),
            };
            let word = match bus.grant(addr, lifetime).await {
                Ok(()) => PUBLISHED,
                Err(e) => e.word(),
            };
            match local {
                Some(Err(e)) => Err(GrantError::new(format!("{e:#}; {BUS_FIELD}={word}"))),
                Some(Ok(_)) | None => Ok(Granted {
                    fields: vec![(BUS_FIELD, word.to_owned())],
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::bus::{
        link::{Link, LinkSettings},
        names::{Names, DEFAULT_PREFIX},
        publisher::{PublisherSettings, MAX_IN_FLIGHT},
    };

    /// A publisher whose link never connects (nothing keeps it).
    fn unconnected() -> Arc<Publisher> {
        let link = Link::new(LinkSettings {
            url: "redis://127.0.0.1:1".parse().unwrap(),
            password: None,
            response_timeout: Duration::from_millis(250),
            role: "test",
        })
        .unwrap();
        Arc::new(Publisher::new(
            link,
            PublisherSettings {
                names: Names::new(DEFAULT_PREFIX).unwrap(),
                origin: "pop1".into(),
                stream_length: 1000,
                timeout: Duration::from_millis(250),
                max_in_flight: MAX_IN_FLIGHT,
                role: "test",
            },
        ))
    }

    /// Without a bus the grant line gains nothing (the single-host mode
    /// is unchanged); with one whose engine is down, the login is granted
    /// at once and the line says `bus=down`, counted, never an error.
    #[tokio::test]
    async fn the_bus_outcome_is_a_field_of_the_grant_never_its_failure() {
        let addr: IpAddr = "192.0.2.7".parse().unwrap();
        let alone = LoginGrants::new(None, None, Duration::from_secs(900));
        assert_eq!(alone.grant(addr).await.unwrap(), Granted::default());

        let bus = unconnected();
        let grants = LoginGrants::new(None, Some(Arc::clone(&bus)), Duration::from_secs(900));
        let started = Instant::now();
        let granted = grants
            .grant(addr)
            .await
            .expect("a login never fails on the bus");
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "waited for a bus that is down"
        );
        assert_eq!(granted.fields, [(BUS_FIELD, "down".to_owned())]);
        assert_eq!(bus.counts().down, 1);
    }
}
