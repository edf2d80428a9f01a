//! Logins granted in the pinned grant maps.

use std::{net::IpAddr, sync::Mutex};

use pop3::{GrantError, GrantFuture, GrantSink, Granted};
use tokio::sync::Notify;

use crate::gate::GateMaps;

pub struct GateGrantSink {
    // aya's map handles need &mut to insert; one bpf() call is
    // microseconds, so a plain mutex is no bottleneck.
    maps: Mutex<GateMaps>,
    /// Woken when a grant fails: the gate may be gone, check it now.
    trouble: std::sync::Arc<Notify>,
}

impl GateGrantSink {
    pub fn new(maps: GateMaps) -> Self {
        Self {
            maps: Mutex::new(maps),
            trouble: std::sync::Arc::new(Notify::new()),
        }
    }

    /// Notified after every failed grant.
    pub fn trouble(&self) -> std::sync::Arc<Notify> {
        std::sync::Arc::clone(&self.trouble)
    }

    /// `f` on the maps grants go to (for reading them).
    pub fn with_maps<T>(&self, f: impl FnOnce(&GateMaps) -> T) -> T {
        f(&self.maps.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Grants go to these maps from now on (the gate was replaced).
    pub fn replace_maps(&self, maps: GateMaps) {
        *self.maps.lock().unwrap_or_else(|p| p.into_inner()) = maps;
    }
}

impl GrantSink for GateGrantSink {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let granted = maps
            .grant(addr, None)
            .map(|()| Granted::default())
            .map_err(|e| {
                self.trouble.notify_one();
                GrantError::new(e)
            });
        Box::pin(std::future::ready(granted))
    }
}
