//! The POP3 service's part of the page, from its counters
//! (pop3::counters): logins, sessions, TLS handshakes, refusals. Every
//! combination of labels is written from the start, zeros too, so that a
//! rate over it needs no series to appear first.

use pop3::{
    counters::{Handshake, LoginMethod, LoginResult, NoSlot, Pop3Counters},
    session::EndReason,
};

use super::exposition::{Exposition, Kind};

pub fn render(out: &mut Exposition, counters: &Pop3Counters) {
    let mut logins = out.family(
        "smtp_gate_pop3_logins_total",
        Kind::Counter,
        "POP3 logins by method (user-pass, apop, sasl-plain) and result (ok; failed: wrong \
         password or user, counted toward a ban; the others: right, but the maildrop could \
         not be had), as the login lines say.",
    );
    for method in LoginMethod::ALL {
        for result in LoginResult::ALL {
            logins.sample(
                &[("method", method.label()), ("result", result.name())],
                counters.logins(method, result),
            );
        }
    }
    out.family(
        "smtp_gate_pop3_connections_open",
        Kind::Gauge,
        "POP3 connections served now (sessions begun whose end line is not written yet).",
    )
    .sample(&[], counters.sessions_open());
    let mut ended = out.family(
        "smtp_gate_pop3_sessions_ended_total",
        Kind::Counter,
        "POP3 sessions ended, by the reason their end line gives.",
    );
    for reason in EndReason::ALL {
        ended.sample(
            &[("reason", reason.name())],
            counters.sessions_ended(reason),
        );
    }
    let mut handshakes = out.family(
        "smtp_gate_pop3_tls_handshakes_total",
        Kind::Counter,
        "TLS handshakes of POP3 connections (port 995 and STLS) by result: ok, failed (not \
         TLS, nothing in common, the client gone), timeout.",
    );
    for how in Handshake::ALL {
        handshakes.sample(&[("result", how.name())], counters.handshakes(how));
    }
    let mut refused = out.family(
        "smtp_gate_pop3_connections_refused_total",
        Kind::Counter,
        "POP3 connections refused for want of a slot: every slot taken (max_connections), or \
         the client's network holds its most (max_connections_per_ip).",
    );
    for why in NoSlot::ALL {
        refused.sample(&[("reason", why.name())], counters.refusals(why));
    }
}
