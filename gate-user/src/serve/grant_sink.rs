//! Logins granted in the pinned grant maps.

use std::{net::IpAddr, sync::Mutex, time::Duration};

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

    /// Grants `addr` with `left` of the gate's window remaining (the
    /// bus's agent: what is left of a grant made on another host),
    /// following the window as a login's grant does. A failure wakes the
    /// watch.
    pub fn grant_with_left(&self, addr: IpAddr, left: Duration) -> anyhow::Result<()> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.grant_with_left(addr, left).inspect_err(|_| {
            self.trouble.notify_one();
        })
    }

    /// Takes `addr`'s grant away; false if it had none. A failure wakes
    /// the watch.
    pub fn revoke(&self, addr: IpAddr) -> anyhow::Result<bool> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.revoke(addr).inspect_err(|_| {
            self.trouble.notify_one();
        })
    }
}

impl GateGrantSink {
    /// Grants `addr` now, for the gate's window; gives that window (what
    /// the grant bus publishes the grant for), if it can be read.
    pub fn grant_now(&self, addr: IpAddr) -> anyhow::Result<Option<Duration>> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = maps.grant(addr, None) {
            self.trouble.notify_one();
            return Err(e);
        }
        Ok(maps
            .settings()
            .ok()
            .map(|settings| Duration::from_nanos(settings.window_ns)))
    }
}

impl GrantSink for GateGrantSink {
    fn grant(&self, addr: IpAddr) -> GrantFuture<'_> {
        let granted = self
            .grant_now(addr)
            .map(|_window| Granted::default())
            .map_err(GrantError::new);
        Box::pin(std::future::ready(granted))
    }
}
