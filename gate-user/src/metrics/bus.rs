//! The grant bus's part of the page: a publisher's counts (`serve` with
//! `bus`) or the edge agent's status (`agent`, as its status file shows
//! it: renewed every 2 s at least while it follows).

use crate::bus::{publisher::Publisher, state::AgentStatus};

use super::exposition::{Exposition, Kind};

fn connected(out: &mut Exposition, up: bool) {
    out.family(
        "smtp_gate_bus_connected",
        Kind::Gauge,
        "1 while the link to the grant bus's engine is up.",
    )
    .sample(&[], up);
}

pub fn publisher(out: &mut Exposition, publisher: &Publisher) {
    let counts = publisher.counts();
    out.family(
        "smtp_gate_bus_publications_total",
        Kind::Counter,
        "Grants and revokes published on the bus, by result: published (the engine took it), \
         failed, timeout (no answer within bus_timeout), busy (too many waited), down (not \
         connected: not tried).",
    )
    .sample(&[("result", "published")], counts.published)
    .sample(&[("result", "failed")], counts.failed)
    .sample(&[("result", "timeout")], counts.timed_out)
    .sample(&[("result", "busy")], counts.refused_busy)
    .sample(&[("result", "down")], counts.down);
    connected(out, publisher.link().is_up());
}

pub fn agent(out: &mut Exposition, status: &AgentStatus) {
    connected(out, status.connected);
    if let Some(lag) = status.lag_ms {
        out.family(
            "smtp_gate_bus_lag_seconds",
            Kind::Gauge,
            "How far the agent's position is behind the stream's last entry (in the entries' \
             time), as last seen; 0 when caught up.",
        )
        .sample(&[], lag as f64 / 1000.0);
    }
    if let Some(skew) = status.clock_skew_ms {
        out.family(
            "smtp_gate_bus_clock_skew_seconds",
            Kind::Gauge,
            "The engine's clock minus this host's, as last read (grants are timed by the \
             engine's).",
        )
        .sample(&[], skew as f64 / 1000.0);
    }
    out.family(
        "smtp_gate_bus_applied_total",
        Kind::Counter,
        "Grants written to the gate's map and revokes applied, from the stream and from full \
         loads of the keys.",
    )
    .sample(&[("op", "grant")], status.grants_applied)
    .sample(&[("op", "revoke")], status.revokes_applied);
    out.family(
        "smtp_gate_bus_rejected_total",
        Kind::Counter,
        "Stream entries and keys skipped as malformed.",
    )
    .sample(&[("what", "entry")], status.entries_rejected)
    .sample(&[("what", "key")], status.keys_rejected);
    for (name, help, value) in [
        (
            "smtp_gate_bus_expired_skipped_total",
            "Grants that were over when read: nothing to apply.",
            status.expired_skipped,
        ),
        (
            "smtp_gate_bus_full_loads_total",
            "Full loads of every grant from the keys (no position, or the stream no longer \
             holds it).",
            status.full_loads,
        ),
        (
            "smtp_gate_bus_dropped_without_key_total",
            "Grants of the map no key held at a full load (revoked while the agent could not \
             see it), taken away.",
            status.dropped_without_key,
        ),
        (
            "smtp_gate_bus_apply_failures_total",
            "Writes to the gate's map that failed (the entry is tried again).",
            status.apply_failures,
        ),
    ] {
        out.family(name, Kind::Counter, help).sample(&[], value);
    }
}
