//! The service's settings while it runs. A reload (SIGHUP in the daemon)
//! replaces them: each connection takes the settings in force when it is
//! accepted and keeps them to its end, and the connection limits follow at
//! once (server/slots.rs). The listeners (and which of them are behind a
//! load balancer, and whom they trust) and the greeting's host name are
//! made at start and stay as they are.

use std::sync::{Arc, RwLock};

use crate::{
    config::ServerConfig,
    server::slots::{SlotLimits, Slots},
};

pub struct LiveConfig {
    current: RwLock<Arc<ServerConfig>>,
    /// The connection slots, under the limits in force.
    slots: Arc<Slots>,
}

impl LiveConfig {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            slots: Slots::new(SlotLimits::of(&config)),
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The connection slots.
    pub(crate) fn slots(&self) -> Arc<Slots> {
        Arc::clone(&self.slots)
    }

    /// Makes `config` the settings of the connections accepted from now on,
    /// but for `listen`, `listen_tls`, `hostname`, `proxy_listen` and
    /// `proxy_trusted_networks`, which stay as they are (see the module
    /// comment). A lower connection limit cuts no connection: nobody
    /// more is let in until enough of them have ended.
    pub fn update(&self, mut config: ServerConfig) {
        let old = self.current();
        config.listen.clone_from(&old.listen);
        config.listen_tls.clone_from(&old.listen_tls);
        config.hostname.clone_from(&old.hostname);
        config.proxy_listen.clone_from(&old.proxy_listen);
        config
            .proxy_trusted_networks
            .clone_from(&old.proxy_trusted_networks);
        self.slots.set_limits(SlotLimits::of(&config));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::server::slots::{Admission, Slot};

    fn with_limit(max_connections: usize) -> ServerConfig {
        ServerConfig {
            max_connections,
            ..ServerConfig::default()
        }
    }

    fn admitted(slots: &Arc<Slots>) -> Slot {
        match slots.admit("192.0.2.1".parse().unwrap()) {
            Admission::Admitted { slot, .. } => slot,
            _ => panic!("refused"),
        }
    }

    fn refused(slots: &Arc<Slots>) -> bool {
        !matches!(
            slots.admit("192.0.2.1".parse().unwrap()),
            Admission::Admitted { .. }
        )
    }

    #[test]
    fn a_higher_limit_lets_more_in_at_once() {
        let live = LiveConfig::new(with_limit(1));
        let slots = live.slots();
        let _first = admitted(&slots);
        assert!(refused(&slots));
        live.update(with_limit(2));
        assert_eq!(live.current().max_connections, 2);
        let _second = admitted(&slots);
        assert!(refused(&slots));
    }

    /// Lowered below the places in use, the limit cuts no connection but
    /// lets nobody in until enough of them have ended.
    #[test]
    fn a_lower_limit_waits_for_connections_to_end() {
        let live = LiveConfig::new(with_limit(3));
        let slots = live.slots();
        let first = admitted(&slots);
        let second = admitted(&slots);
        live.update(with_limit(1));
        assert!(refused(&slots), "2 in use, limit 1");
        assert!(!first.cut().is_cancelled() && !second.cut().is_cancelled());
        drop(first);
        assert!(refused(&slots), "1 in use, limit 1");
        drop(second);
        let third = admitted(&slots);
        assert!(refused(&slots), "limit 1");
        drop(third);
        // Raised again, the limit is the new one, not the old one plus.
        live.update(with_limit(2));
        let _a = admitted(&slots);
        let _b = admitted(&slots);
        assert!(refused(&slots), "limit 2");
    }

    #[tokio::test]
    async fn listeners_and_host_name_stay() {
        let live = LiveConfig::new(ServerConfig {
            hostname: "first".into(),
            ..ServerConfig::default()
        });
        live.update(ServerConfig {
            hostname: "second".into(),
            listen: vec!["127.0.0.1:1110".parse().unwrap()],
            proxy_listen: vec!["127.0.0.1:1110".parse().unwrap()],
            proxy_trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
            idle_timeout: Duration::from_secs(1200),
            ..ServerConfig::default()
        });
        let now = live.current();
        assert_eq!(now.hostname, "first");
        assert_eq!(now.listen, ServerConfig::default().listen);
        assert!(now.proxy_listen.is_empty(), "no listener became proxied");
        assert!(
            now.proxy_trusted_networks.is_empty(),
            "nobody became trusted"
        );
        assert_eq!(now.idle_timeout, Duration::from_secs(1200));
    }
}
