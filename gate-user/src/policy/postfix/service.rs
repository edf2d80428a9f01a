//! The policy service: connections from Postfix's SMTP server processes,
//! each kept open for many requests, each request answered from the
//! gate's grants and exempt networks.
//!
//! SMTPD_POLICY_README: "Unless there was an error, the server must not
//! close the connection, so that the same connection can be used multiple
//! times." Postfix closes an unused connection itself after
//! `smtpd_policy_service_max_idle` (300s) and an active one after
//! `smtpd_policy_service_max_ttl` (1000s). Before each request it checks
//! whether the connection became readable (attr_clnt.c: "If the stream is
//! readable before we send anything, then assume the remote end
//! disconnected"); finding it closed it waits
//! `smtpd_policy_service_retry_delay` (1s) and connects again. So this
//! side closes an idle connection only after Postfix would have
//! ([`DEFAULT_IDLE_TIMEOUT`]), and never writes anything but one answer
//! per request.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use log::{debug, error, info, warn};
use pop3::log_text::LogText;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::{timeout, timeout_at, Instant},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    action::{GrantedAction, RefusedAction},
    framing::RequestFramer,
    request::{parse_request, ClientAddress, Malformed, PolicyRequest},
};
use crate::policy::{
    listen::{PolicyListener, PolicyStream},
    log_budget::LogBudget,
    slots::{ConnectionSlots, Slot},
    GrantLookup, Standing,
};

/// Longer than Postfix's `smtpd_policy_service_max_idle` (300s), so that
/// Postfix, not this side, ends an idle connection (see the module).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(330);

/// Postfix writes a request at once and waits `smtpd_policy_service_timeout`
/// (100s) for the answer; a request not whole after as long is no
/// Postfix's, and its connection is closed.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(100);

/// Each Postfix SMTP server process holds one connection to each policy
/// service it uses; `default_process_limit` is 100, and a host may run
/// smtpd on 25, 465 and 587. Past this many, each new connection closes
/// the one idle longest (policy/slots.rs).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Log lines about what peers send, at most so many per interval each
/// (policy/log_budget.rs): a refusal's line and a malformed request's.
const LOG_LINES: u32 = 100;
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The answer to a malformed request. Not DEFER_IF_PERMIT: a later
/// `reject_unauth_destination` turns that into a permanent "Relay access
/// denied" for a relaying client (smtpd_check.c applies a deferral only
/// "if status != SMTPD_CHECK_REJECT"); a trouble on this side must not
/// bounce mail. 451 4.3.0 as Postfix's own default action for a policy
/// service that fails (`451 4.3.5`).
pub const MALFORMED_ANSWER: &str = "451 4.3.0 smtp-gate: malformed policy request";

/// The answer when the gate's maps cannot be read: temporary, whatever
/// the client's standing (fail closed, and the mail is retried).
pub const LOOKUP_FAILED_ANSWER: &str =
    "451 4.3.0 smtp-gate cannot check logins now, try again later";

/// How long, and for how many octets, a connection closed for a
/// malformed request is still read (see `refuse_malformed`).
const LINGER: Duration = Duration::from_secs(2);
const MAX_LINGER_OCTETS: usize = 256 * 1024;

/// How the service runs. The two actions are config keys; the rest are
/// bounds with defaults derived from Postfix's own.
#[derive(Clone, Debug)]
pub struct PostfixPolicySettings {
    pub granted: GrantedAction,
    pub refused: RefusedAction,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for PostfixPolicySettings {
    fn default() -> Self {
        Self {
            granted: GrantedAction::default(),
            refused: RefusedAction::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

crate::policy_counters! {
    PolicyCounters, CountersSnapshot;
    /// Well-formed requests: each one is `granted`, `exempt`, `refused`
    /// or `lookup_errors`.
    requests,
    granted,
    exempt,
    refused,
    lookup_errors,
    /// Requests that were not well-formed, those that could not be
    /// framed included.
    malformed,
    connections,
    /// Closed, idle, for a new connection's room:
    /// [`PostfixPolicySettings::max_connections`] were open.
    connections_closed_for_room,
    /// Closed after [`PostfixPolicySettings::idle_timeout`] without a request.
    idle_closed,
    /// Times the Unix socket's file was found replaced by another's.
    socket_replaced,
}

/// Answers Postfix on `listener` until `shutdown`; returns when every
/// connection is closed.
pub async fn serve(
    listener: PolicyListener,
    settings: PostfixPolicySettings,
    lookup: Arc<dyn GrantLookup>,
    counters: Arc<PolicyCounters>,
    shutdown: CancellationToken,
) {
    let mut listener = listener;
    let replaced = Arc::clone(&counters);
    listener.on_replaced("Postfix", move || {
        PolicyCounters::add(&replaced.socket_replaced)
    });
    let connections = TaskTracker::new();
    let slots = ConnectionSlots::new("postfix policy", settings.max_connections);
    let settings = Arc::new(settings);
    let logs = Arc::new(PeerLogs {
        refusals: LogBudget::new("postfix policy refuse", LOG_LINES, LOG_INTERVAL),
        malformed: LogBudget::new("postfix policy malformed-request", LOG_LINES, LOG_INTERVAL),
    });
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather
                // than spin on an error that will repeat at once.
                warn!("postfix policy: cannot accept a connection: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let (slot, made_room) = slots.admit(&peer);
        if made_room {
            PolicyCounters::add(&counters.connections_closed_for_room);
        }
        PolicyCounters::add(&counters.connections);
        let connection = Connection {
            stream,
            peer,
            slot,
            settings: Arc::clone(&settings),
            lookup: Arc::clone(&lookup),
            counters: Arc::clone(&counters),
            logs: Arc::clone(&logs),
        };
        let shutdown = shutdown.clone();
        connections.spawn(connection.run(shutdown));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The budgets of the lines peers can make us write.
struct PeerLogs {
    refusals: LogBudget,
    malformed: LogBudget,
}

struct Connection {
    stream: PolicyStream,
    peer: String,
    slot: Slot,
    settings: Arc<PostfixPolicySettings>,
    lookup: Arc<dyn GrantLookup>,
    counters: Arc<PolicyCounters>,
    logs: Arc<PeerLogs>,
}

impl Connection {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut framer = RequestFramer::new();
        let mut chunk = vec![0; 4096];
        // When the request being read must be whole.
        let mut request_deadline: Option<Instant> = None;
        loop {
            match framer.next_request() {
                Ok(Some(block)) => {
                    request_deadline = None;
                    let answer = self.answer(&block);
                    if !self.send(&answer).await {
                        return;
                    }
                    self.slot.answered();
                    continue;
                }
                Ok(None) => {}
                Err(malformed) => return self.refuse_malformed(&malformed).await,
            }
            let read = if framer.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.slot.closed_for_room.cancelled() => {
                        debug!("postfix policy: {} idle, closed for a new connection", self.peer);
                        return;
                    }
                    read = timeout(self.settings.idle_timeout, self.stream.read(&mut chunk)) => read,
                }
            } else {
                let deadline = *request_deadline
                    .get_or_insert_with(|| Instant::now() + self.settings.request_timeout);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.slot.closed_for_room.cancelled() => return,
                    read = timeout_at(deadline, self.stream.read(&mut chunk)) => read,
                }
            };
            match read {
                Err(_elapsed) if framer.is_empty() => {
                    PolicyCounters::add(&self.counters.idle_closed);
                    debug!("postfix policy: {} idle, closed", self.peer);
                    return;
                }
                Err(_elapsed) => {
                    PolicyCounters::add(&self.counters.malformed);
                    if self.logs.malformed.allows() {
                        warn!(
                            "postfix policy: malformed request from {}: not whole after {}s, \
                             closed",
                            self.peer,
                            self.settings.request_timeout.as_secs()
                        );
                    }
                    return;
                }
                Ok(Ok(0)) if framer.is_empty() => return,
                Ok(Ok(0)) => return self.refuse_malformed(&Malformed::Truncated).await,
                Ok(Ok(read)) => framer.extend(&chunk[..read]),
                Ok(Err(e)) => {
                    debug!("postfix policy: {}: {e}", self.peer);
                    return;
                }
            }
        }
    }

    /// The action for one whole request.
    fn answer(&self, block: &[u8]) -> String {
        let request = match parse_request(block) {
            Ok(request) => request,
            Err(malformed) => {
                self.log_malformed(&malformed);
                return MALFORMED_ANSWER.to_owned();
            }
        };
        PolicyCounters::add(&self.counters.requests);
        let standing = match request.client {
            // No grant can be proven for a client Postfix has no address of.
            ClientAddress::Unknown => Ok(Standing::Refused),
            ClientAddress::Ip(addr) => self.lookup.standing(addr),
        };
        match standing {
            Ok(Standing::Granted) => {
                PolicyCounters::add(&self.counters.granted);
                self.settings.granted.as_str().to_owned()
            }
            Ok(Standing::Exempt) => {
                PolicyCounters::add(&self.counters.exempt);
                "DUNNO".to_owned()
            }
            Ok(Standing::Refused) => {
                PolicyCounters::add(&self.counters.refused);
                if self.logs.refusals.allows() {
                    info!("{}", refuse_line(&request, &self.peer));
                }
                self.settings.refused.as_str().to_owned()
            }
            Err(e) => {
                PolicyCounters::add(&self.counters.lookup_errors);
                error!(
                    "postfix policy: cannot look up {}: {}",
                    request.client,
                    LogText::of(&format!("{e:#}"))
                );
                LOOKUP_FAILED_ANSWER.to_owned()
            }
        }
    }

    fn log_malformed(&self, malformed: &Malformed) {
        PolicyCounters::add(&self.counters.malformed);
        if self.logs.malformed.allows() {
            warn!(
                "postfix policy: malformed request from {}: {malformed}",
                self.peer
            );
        }
    }

    /// Answers a request that cannot be framed, then closes: nothing after
    /// it can be read as a request.
    async fn refuse_malformed(mut self, malformed: &Malformed) {
        self.log_malformed(malformed);
        if !self.send(MALFORMED_ANSWER).await {
            return;
        }
        // Closing with unread octets would reset the connection, and the
        // reset can take the answer with it: end the sending side, then
        // read what the client still sends, for a bounded time.
        let linger = async {
            self.stream.shutdown().await?;
            let mut sink = vec![0; 4096];
            let mut left = MAX_LINGER_OCTETS;
            while left > 0 {
                let read = self.stream.read(&mut sink).await?;
                if read == 0 {
                    break;
                }
                left = left.saturating_sub(read);
            }
            std::io::Result::Ok(())
        };
        let _ = timeout(LINGER, linger).await;
    }

    /// `action=...`, then the empty line. False if the answer could not
    /// be written (the connection is then given up).
    async fn send(&mut self, action: &str) -> bool {
        let answer = format!("action={action}\n\n");
        let written = timeout(
            self.settings.request_timeout,
            self.stream.write_all(answer.as_bytes()),
        )
        .await;
        match written {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!("postfix policy: {}: {e}", self.peer);
                false
            }
            Err(_) => {
                debug!("postfix policy: {}: answer not taken, closed", self.peer);
                false
            }
        }
    }
}

/// `refuse source=postfix addr=ADDR sender=S recipient=R client=NAME
/// state=STATE sasl_username=U peer=P`: one line per refused request
/// (within the log budget), every value escaped (a sender or a HELO name
/// is the client's to choose). `peer` is who asked: Postfix on a Unix
/// socket shows as `unix:uid=N:pid=P`; on a loopback port, any local user
/// can ask in Postfix's name, so a filter acting on these lines should
/// trust only a Unix socket's peer of Postfix's uid.
pub fn refuse_line(request: &PolicyRequest, peer: &str) -> String {
    let mut line = format!("refuse source=postfix addr={}", request.client);
    for (key, value) in [
        ("sender", &request.sender),
        ("recipient", &request.recipient),
        ("client", &request.client_name),
        ("state", &request.protocol_state),
        ("sasl_username", &request.sasl_username),
    ] {
        let _ = write!(line, " {key}={}", LogText(value));
    }
    let _ = write!(line, " peer={}", LogText::of(peer));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refuse_line_is_stable_and_unforgeable() {
        let request = PolicyRequest {
            client: ClientAddress::Ip("2001:db8::7".parse().unwrap()),
            protocol_state: b"RCPT".to_vec(),
            sender: b"x@y addr=10.0.0.1\nrefuse".to_vec(),
            recipient: b"bob@example.org".to_vec(),
            client_name: b"unknown".to_vec(),
            sasl_username: Vec::new(),
        };
        let line = refuse_line(&request, "unix:uid=107:pid=9");
        assert_eq!(
            line,
            "refuse source=postfix addr=2001:db8::7 sender=x@y\\x20addr=10.0.0.1\\nrefuse \
             recipient=bob@example.org client=unknown state=RCPT sasl_username= \
             peer=unix:uid=107:pid=9"
        );
        assert_eq!(line.split(' ').count(), 9, "{line}");
    }

    #[test]
    fn own_answers_are_valid_refusals() {
        for answer in [MALFORMED_ANSWER, LOOKUP_FAILED_ANSWER] {
            let parsed = answer.parse::<RefusedAction>();
            assert!(parsed.is_ok(), "{answer}: {parsed:?}");
            assert!(answer.starts_with("451 4."), "temporary: {answer}");
        }
    }
}
