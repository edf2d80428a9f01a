//! The mail servers' hooks' part of the page (policy/): requests by hook
//! and result, from the counters their statistics lines print.

use crate::policy::{dovecot::CountsNow, postfix::CountersSnapshot};

use super::exposition::{Exposition, Kind};

pub fn render(out: &mut Exposition, dovecot: Option<CountsNow>, postfix: Option<CountersSnapshot>) {
    if dovecot.is_none() && postfix.is_none() {
        return;
    }
    let mut requests = out.family(
        "smtp_gate_policy_requests_total",
        Kind::Counter,
        "Requests of the mail servers' hooks by hook and result. dovecot: allowed and \
         refused (allow requests and banned logins), granted and grant-failed (logins), \
         failure-counted and failure-not-counted (failed logins), ignored, bad-request, \
         unauthorized. postfix: granted, exempt, refused, lookup-failed, malformed.",
    );
    if let Some(d) = &dovecot {
        for (result, count) in [
            ("allowed", d.allowed),
            ("refused", d.refused),
            ("granted", d.grants),
            ("grant-failed", d.grant_errors),
            ("failure-counted", d.failures),
            ("failure-not-counted", d.failures_not_counted),
            ("ignored", d.ignored),
            ("bad-request", d.bad_requests),
            ("unauthorized", d.unauthorized),
        ] {
            requests.sample(&[("hook", "dovecot"), ("result", result)], count);
        }
    }
    if let Some(p) = &postfix {
        for (result, count) in [
            ("granted", p.granted),
            ("exempt", p.exempt),
            ("refused", p.refused),
            ("lookup-failed", p.lookup_errors),
            ("malformed", p.malformed),
        ] {
            requests.sample(&[("hook", "postfix"), ("result", result)], count);
        }
    }
    let hooks = |out: &mut Exposition, name: &str, help: &str, of: fn(Counts) -> u64| {
        let mut family = out.family(name, Kind::Counter, help);
        if let Some(d) = &dovecot {
            family.sample(&[("hook", "dovecot")], of(Counts::Dovecot(d)));
        }
        if let Some(p) = &postfix {
            family.sample(&[("hook", "postfix")], of(Counts::Postfix(p)));
        }
    };
    hooks(
        out,
        "smtp_gate_policy_connections_closed_for_room_total",
        "Idle connections of a hook closed for a new one: as many as it takes were open.",
        |c| match c {
            Counts::Dovecot(d) => d.connections_closed_for_room,
            Counts::Postfix(p) => p.connections_closed_for_room,
        },
    );
    hooks(
        out,
        "smtp_gate_policy_socket_replaced_total",
        "Times a hook's Unix socket file was found replaced by a file smtp-gate did not make.",
        |c| match c {
            Counts::Dovecot(d) => d.socket_replaced,
            Counts::Postfix(p) => p.socket_replaced,
        },
    );
    if let Some(d) = &dovecot {
        out.family(
            "smtp_gate_dovecot_sessions_not_renewed_total",
            Kind::Counter,
            "Addresses of Dovecot's open sessions not renewed for a ban, one a round each.",
        )
        .sample(&[], d.sessions_banned);
    }
}

/// One hook's counts, for the families both hooks have.
enum Counts<'a> {
    Dovecot(&'a CountsNow),
    Postfix(&'a CountersSnapshot),
}
