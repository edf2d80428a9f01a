//! The daemon's watch over its gate: every few seconds (and at once after
//! a failed grant) it checks that the gate is whole and repairs what it
//! can (gate/held.rs), logs every problem as an error when it appears and
//! counts it, and keeps the host's addresses for the reset mode current.
//! `serve` and `agent` (the bus's edge) both run it.

use std::{sync::Arc, time::Duration};

use log::{error, info, warn};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{ban_sink::GateBanSink, grant_sink::GateGrantSink};
use crate::gate::{
    held::HeldGate, local_addrs, local_addrs::HostAddresses, AttachRequest, GateMaps, PinDir,
};

/// How often the gate is checked and the host's addresses read.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Whoever writes to the gate's maps through handles of its own: when
/// another smtp-gate command replaced the maps, it gets handles on the new
/// ones.
pub trait MapUser: Send + Sync {
    fn replace_maps(&self, maps: GateMaps);
}

impl MapUser for GateGrantSink {
    fn replace_maps(&self, maps: GateMaps) {
        GateGrantSink::replace_maps(self, maps);
    }
}

impl MapUser for GateBanSink {
    fn replace_maps(&self, maps: GateMaps) {
        GateBanSink::replace_maps(self, maps);
    }
}

pub struct Watch {
    held: HeldGate,
    /// What to attach with when the gate must be attached again: the
    /// daemon's settings, as the last reload left them.
    requests: watch::Receiver<AttachRequest>,
    dir: PinDir,
    /// Who writes to the maps: grants, bans, the bus's follower.
    map_users: Vec<Arc<dyn MapUser>>,
    maps: GateMaps,
    /// The problems of the last check: the same ones are not logged again
    /// every few seconds, nor counted again.
    last_problems: Vec<String>,
    incidents: u64,
    last_addrs: HostAddresses,
}

impl Watch {
    pub fn new(
        held: HeldGate,
        requests: watch::Receiver<AttachRequest>,
        dir: PinDir,
        map_users: Vec<Arc<dyn MapUser>>,
        maps: GateMaps,
    ) -> Self {
        Self {
            held,
            requests,
            dir,
            map_users,
            maps,
            last_problems: Vec::new(),
            incidents: 0,
            last_addrs: HostAddresses::default(),
        }
    }

    /// Checks until `stop`, then hands the watch back for the last word.
    pub async fn run(mut self, trouble: Arc<Notify>, stop: CancellationToken) -> Self {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = trouble.notified() => {}
                _ = stop.cancelled() => return self,
            }
            // System calls that may wait (the pin directory's lock, while
            // another command holds it): the other tasks of this worker
            // (POP3 sessions, accept loops) move to another thread
            // meanwhile.
            tokio::task::block_in_place(|| self.check_once());
        }
    }

    pub fn check_once(&mut self) {
        let req = self.requests.borrow().clone();
        let check = self.held.check(&req);
        if !check.problems.is_empty() && check.problems != self.last_problems {
            self.incidents += 1;
            for problem in &check.problems {
                error!("gate incident {}: {problem}", self.incidents);
            }
        }
        self.last_problems = check.problems;
        for repair in &check.repairs {
            warn!("gate: {repair}");
        }
        if check.maps_changed {
            self.use_new_maps();
        }
        self.refresh_addresses();
    }

    /// Every writer of the maps gets handles on the new ones, or none does
    /// (a writer left on the old maps would write where no packet looks).
    fn use_new_maps(&mut self) {
        let opened: Result<Vec<GateMaps>, _> = (0..=self.map_users.len())
            .map(|_| GateMaps::open(&self.dir))
            .collect();
        match opened {
            Ok(mut handles) => {
                self.maps = handles.pop().expect("one handle for the watch itself");
                for (user, maps) in self.map_users.iter().zip(handles) {
                    user.replace_maps(maps);
                }
                info!("gate: grants (and bans) are written to the gate's new maps");
            }
            Err(e) => error!("gate: opening the gate's new maps: {e:#}"),
        }
    }

    /// The host's unicast addresses into the maps the reset mode reads.
    fn refresh_addresses(&mut self) {
        let addrs = match local_addrs::host_addresses() {
            Ok(addrs) => addrs,
            Err(e) => {
                warn!("gate: reading the host's addresses: {e:#}");
                return;
            }
        };
        if let Err(e) = self.maps.local_replace(&addrs) {
            warn!("gate: writing the host's addresses: {e:#}");
            return;
        }
        if addrs != self.last_addrs {
            let list: Vec<String> = addrs.ips.iter().map(|a| a.addr.to_string()).collect();
            info!("gate: the reset mode answers for {}", list.join(", "));
            self.last_addrs = addrs;
        }
    }

    /// The shutdown line: one last repair, then what is true: the gate
    /// stays, or it ends with this daemon.
    pub fn farewell(mut self, iface: &str) {
        self.check_once();
        let incidents = match self.incidents {
            0 => String::new(),
            n => format!(" ({n} gate incident(s) while running, see above)"),
        };
        if self.held.outlives_daemon() {
            info!(
                "stopped; the gate stays attached to {iface} ({}) with its grants{incidents}",
                self.held.mode()
            );
        } else {
            error!(
                "stopped; the gate on {iface} ENDS with this daemon: its pins in {} are not \
                 whole and could not be made again{incidents}",
                self.dir.path().display()
            );
        }
    }
}
