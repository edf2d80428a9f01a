//! The metrics page of a daemon: what it has, each part rendered from
//! its own counters at the scrape (`serve`: the gate, POP3, the bus's
//! publisher, the hooks; `agent`: the gate and the agent's status).

use std::sync::Arc;

use anyhow::Result;

use pop3::counters::Pop3Counters;
use tokio::sync::watch;

use super::{
    census::CensusCache,
    exposition::{Exposition, Kind},
    gate::GateStats,
};
use crate::{
    bus::{publisher::Publisher, state::AgentStatus},
    gate::{GateMaps, PinDir},
    policy::{dovecot, postfix},
    serve::watch::MapUser,
};

/// This host's gate: its counters and the census of its maps.
pub struct GateSource {
    pub stats: Arc<GateStats>,
    pub census: Arc<CensusCache>,
}

impl GateSource {
    /// The metrics' own handles on the gate's maps in `dir`: one set for
    /// the counters, one for the census, which walks for a while.
    pub fn open(dir: &PinDir) -> Result<Self> {
        Ok(Self {
            stats: Arc::new(GateStats::new(GateMaps::open(dir)?)),
            census: Arc::new(CensusCache::new(GateMaps::open(dir)?)),
        })
    }

    /// Both, as the daemon's watch hands out the maps of a gate that was
    /// replaced.
    pub fn map_users(&self) -> [Arc<dyn MapUser>; 2] {
        [Arc::clone(&self.stats) as _, Arc::clone(&self.census) as _]
    }
}

/// What a daemon's page shows; each part only where the daemon has it.
#[derive(Default)]
pub struct Page {
    pub gate: Option<GateSource>,
    pub pop3: Option<Arc<Pop3Counters>>,
    pub publisher: Option<Arc<Publisher>>,
    /// The agent's status, as its follower last showed it.
    pub agent: Option<watch::Receiver<AgentStatus>>,
    pub dovecot: Option<Arc<dovecot::PolicyCounters>>,
    pub postfix: Option<Arc<postfix::PolicyCounters>>,
}

impl Page {
    /// The page now. The gate's counters are read now; its census is at
    /// most a few seconds old (census.rs).
    pub async fn render(&self) -> String {
        let mut out = Exposition::new();
        build_info(&mut out);
        if let Some(gate) = &self.gate {
            let counters = gate.stats.read();
            let census = gate.census.reading().await;
            super::gate::render(
                &mut out,
                counters.as_ref(),
                census.as_ref().map(|r| (r, r.taken.elapsed())),
            );
        }
        if let Some(pop3) = &self.pop3 {
            super::pop3::render(&mut out, pop3);
        }
        if let Some(publisher) = &self.publisher {
            super::bus::publisher(&mut out, publisher);
        }
        if let Some(agent) = &self.agent {
            let status = agent.borrow().clone();
            super::bus::agent(&mut out, &status);
        }
        super::policy::render(
            &mut out,
            self.dovecot.as_ref().map(|c| c.now()),
            self.postfix.as_ref().map(|c| c.now()),
        );
        out.into_text()
    }
}

/// `smtp_gate_build_info{version="..."} 1`: which smtp-gate this is.
pub fn build_info(out: &mut Exposition) {
    out.family(
        "smtp_gate_build_info",
        Kind::Gauge,
        "Always 1; the version of this smtp-gate.",
    )
    .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1u64);
}
