//! The service's settings while it runs. A reload (SIGHUP in the daemon)
//! replaces them: each connection takes the settings in force when it is
//! accepted and keeps them to its end, and the connection limit follows at
//! once. The listeners and the greeting's host name are made at start and
//! stay as they are.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Semaphore;

use crate::config::ServerConfig;

pub struct LiveConfig {
    current: RwLock<Arc<ServerConfig>>,
    /// One permit per connection that may be served at once.
    connections: Arc<Semaphore>,
    /// The limit the permits add up to (`max_connections` in force).
    limit: Mutex<usize>,
}

impl LiveConfig {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            limit: Mutex::new(config.max_connections),
            current: RwLock::new(Arc::new(config)),
        }
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The permits of the connection limit.
    pub(crate) fn connections(&self) -> Arc<Semaphore> {
        Arc::clone(&self.connections)
    }

    /// Makes `config` the settings of the connections accepted from now on,
    /// but for `listen` and `hostname`, which stay as they are (see the
    /// module comment). A lower connection limit takes the free places at
    /// once and the others as their connections end: no connection is cut.
    /// Needs a tokio runtime when the limit is lowered below the places in
    /// use.
    pub fn update(&self, mut config: ServerConfig) {
        let old = self.current();
        config.listen.clone_from(&old.listen);
        config.hostname.clone_from(&old.hostname);
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        let new = config.max_connections;
        if new > *limit {
            self.connections.add_permits(new - *limit);
        } else if new < *limit {
            let mut owed = (*limit - new) - self.connections.forget_permits(*limit - new);
            // The places in use come back one by one; the semaphore hands
            // out released permits to waiters first (it is fair), so they
            // go to this one and newcomers find the lower limit.
            while owed > 0 {
                let take = owed.min(u32::MAX as usize);
                owed -= take;
                let permits = Arc::clone(&self.connections);
                tokio::spawn(async move {
                    if let Ok(taken) = permits.acquire_many_owned(take as u32).await {
                        taken.forget();
                    }
                });
            }
        }
        *limit = new;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn with_limit(max_connections: usize) -> ServerConfig {
        ServerConfig {
            max_connections,
            ..ServerConfig::default()
        }
    }

    #[tokio::test]
    async fn a_higher_limit_lets_more_in_at_once() {
        let live = LiveConfig::new(with_limit(1));
        let permits = live.connections();
        let _first = permits.clone().try_acquire_owned().unwrap();
        assert!(permits.clone().try_acquire_owned().is_err());
        live.update(with_limit(2));
        assert_eq!(live.current().max_connections, 2);
        let _second = permits.clone().try_acquire_owned().unwrap();
        assert!(permits.try_acquire_owned().is_err());
    }

    /// Lowered below the places in use, the limit cuts no connection but
    /// lets nobody in until enough of them have ended.
    #[tokio::test]
    async fn a_lower_limit_waits_for_connections_to_end() {
        let live = LiveConfig::new(with_limit(3));
        let permits = live.connections();
        let first = permits.clone().try_acquire_owned().unwrap();
        let second = permits.clone().try_acquire_owned().unwrap();
        live.update(with_limit(1));
        // The waiter for the places in use queues up when it first runs.
        tokio::task::yield_now().await;
        assert!(
            permits.clone().try_acquire_owned().is_err(),
            "2 in use, limit 1"
        );
        drop(first);
        tokio::task::yield_now().await;
        assert!(
            permits.clone().try_acquire_owned().is_err(),
            "1 in use, limit 1"
        );
        drop(second);
        let third = tokio::time::timeout(Duration::from_secs(10), permits.clone().acquire_owned())
            .await
            .expect("a place once the connections ended")
            .unwrap();
        assert!(permits.clone().try_acquire_owned().is_err(), "limit 1");
        drop(third);
        // Raised again, the limit is the new one, not the old one plus.
        live.update(with_limit(2));
        let _a = permits.clone().try_acquire_owned().unwrap();
        let _b = permits.clone().try_acquire_owned().unwrap();
        assert!(permits.try_acquire_owned().is_err(), "limit 2");
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
            idle_timeout: Duration::from_secs(1200),
            ..ServerConfig::default()
        });
        let now = live.current();
        assert_eq!(now.hostname, "first");
        assert_eq!(now.listen, ServerConfig::default().listen);
        assert_eq!(now.idle_timeout, Duration::from_secs(1200));
    }
}
