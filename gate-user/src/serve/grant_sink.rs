//! Logins granted in the pinned grant maps.

use std::{net::IpAddr, sync::Mutex};

use pop3::GrantSink;

use crate::gate::GateMaps;

pub struct GateGrantSink {
    // aya's map handles need &mut to insert; one bpf() call is
    // microseconds, so a plain mutex is no bottleneck.
    maps: Mutex<GateMaps>,
}

impl GateGrantSink {
    pub fn new(maps: GateMaps) -> Self {
        Self {
            maps: Mutex::new(maps),
        }
    }
}

impl GrantSink for GateGrantSink {
    fn grant(&self, addr: IpAddr) -> Result<(), String> {
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        maps.grant(addr, None).map_err(|e| format!("{e:#}"))
    }
}
