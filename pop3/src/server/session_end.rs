//! The end of a session, logged once however it ends: the guard below
//! writes the summary line when it is dropped, so that no way out of a
//! session (a new timeout, an error returned early, the task dropped at
//! shutdown) can leave one without it, least of all one that deleted mail.

use std::{net::IpAddr, sync::Arc, time::Instant};

use log::info;

use crate::{
    counters::Pop3Counters,
    session::{EndReason, Session, Summary, LOG_TARGET},
};

/// A session as the server serves it: the protocol state, what was sent,
/// and why it ended once that is known.
pub(super) struct Served {
    pub(super) session: Session,
    /// The client's address, normalised.
    pub(super) peer: IpAddr,
    /// The load balancer it came through, if any.
    via: Option<IpAddr>,
    /// Octets written to the client.
    pub(super) octets_sent: u64,
    /// The TLS version, once TLS is up.
    pub(super) tls: Option<&'static str>,
    started: Instant,
    reason: EndReason,
    /// Told of the session's beginning and end.
    counters: Arc<Pop3Counters>,
}

impl Served {
    pub(super) fn new(
        session: Session,
        peer: IpAddr,
        via: Option<IpAddr>,
        counters: Arc<Pop3Counters>,
    ) -> Self {
        counters.session_begun();
        Self {
            session,
            peer,
            via,
            octets_sent: 0,
            tls: None,
            started: Instant::now(),
            // What the summary says if nothing set a reason: the task was
            // dropped from outside.
            reason: EndReason::Abandoned,
            counters,
        }
    }

    pub(super) fn ended(&mut self, reason: EndReason) {
        self.reason = reason;
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let summary = Summary {
            id: self.session.id(),
            reason: self.reason,
            peer: self.peer,
            via: self.via,
            tally: self.session.tally(),
            octets_sent: self.octets_sent,
            duration: self.started.elapsed(),
            tls: self.tls,
        };
        // Counted first: whoever reads the line finds it counted.
        self.counters.session_ended(self.reason);
        info!(target: LOG_TARGET, "{summary}");
    }
}
