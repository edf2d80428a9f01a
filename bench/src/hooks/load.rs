//! The load generator of the throughput workloads: keep-alive connections
//! to a policy endpoint in the lab's server namespace, each sending one
//! request, reading and checking its answer, then the next, for a fixed
//! time; and the requests Dovecot and Postfix send.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

/// One request and its answer may take this long: only a hang does.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// The most requests one connection sends in one measurement.
const MAX_OPS_PER_CONNECTION: u64 = 5_000_000;
/// A measurement stops at the first failed request after this many.
const MAX_ERRORS: u64 = 100;

/// Addresses of the Postfix clients with a grant (granted beforehand by the
/// harness), of the exempt network (`exempt` of the daemon's config), and
/// of clients with neither.
pub const GRANTED_NET: [u8; 2] = [10, 50];
pub const EXEMPT_NET: [u8; 2] = [10, 60];
pub const REFUSED_NET: [u8; 2] = [10, 70];
/// How many granted addresses the Postfix workload cycles through.
pub const GRANTED_CLIENTS: u32 = 4096;

/// Dovecot's reports come from 10.128.0.0/9, a new address each: every
/// report of a success is a new grant, never the renewal of one.
static NEXT_REPORTED: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// `POST /?command=report`, `success: true`, each from a new address.
    DovecotReport,
    /// `POST /?command=allow` (before the password is checked).
    DovecotAllow,
    /// Postfix's request at RCPT, granted, exempt and refused clients in
    /// turn.
    PostfixMixed,
}

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Workload::DovecotReport => "Dovecot report, success from a new address",
            Workload::DovecotAllow => "Dovecot allow",
            Workload::PostfixMixed => "Postfix RCPT: granted, exempt, refused in turn",
        }
    }

    pub fn is_dovecot(self) -> bool {
        !matches!(self, Workload::PostfixMixed)
    }
}

pub fn in_net(net: [u8; 2], n: u32) -> IpAddr {
    let [a, b] = net;
    IpAddr::V4(Ipv4Addr::new(a, b, (n >> 8) as u8, n as u8))
}

fn next_reported() -> IpAddr {
    let n = NEXT_REPORTED.fetch_add(1, Ordering::Relaxed) & 0x7f_ffff;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n))
}

/// The request Dovecot 2.3 sends with the shipped snippet's attributes
/// (`login`, `remote`, `protocol`; `success` and `policy_reject` in
/// reports; `tls` always), the JSON keys sorted as Dovecot writes them.
pub fn dovecot_request(command: &str, remote: IpAddr, report_success: bool) -> Vec<u8> {
    let body = if command == "report" {
        format!(
            "{{\"login\":\"user7\",\"protocol\":\"imap\",\"remote\":\"{remote}\",\
             \"success\":{report_success},\"policy_reject\":false,\"tls\":false}}"
        )
    } else {
        format!(
            "{{\"login\":\"user7\",\"protocol\":\"imap\",\"remote\":\"{remote}\",\"tls\":false}}"
        )
    };
    format!(
        "POST /?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\nDate: Mon, 30 Nov 2026 21:00:00 GMT\r\n\
         User-Agent: dovecot/auth-policy-client\r\nContent-Length: {}\r\nConnection: Keep-Alive\r\n\
         Content-Type: application/json\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What Postfix 3.x sends at RCPT (SMTPD_POLICY_README's attributes).
pub fn postfix_request(client: IpAddr) -> Vec<u8> {
    format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n\
         helo_name=laptop.example\nqueue_id=\nsender=alice@example.org\n\
         recipient=bob@example.net\nrecipient_count=0\nclient_address={client}\n\
         client_name=unknown\nreverse_client_name=unknown\ninstance=1f2e.6568a0f1.3c5d2.0\n\
         sasl_method=\nsasl_username=\nsasl_sender=\nsize=0\nccert_subject=\nccert_issuer=\n\
         ccert_fingerprint=\nccert_pubkey_fingerprint=\nencryption_protocol=\n\
         encryption_cipher=\nencryption_keysize=0\netrn_domain=\nstress=\nclient_port=40312\n\
         policy_context=\nserver_address=192.0.2.25\nserver_port=25\n\
         compatibility_level=3.6\nmail_version=3.7.11\n\n"
    )
    .into_bytes()
}

/// Which kind of Postfix client request `n` is from, and its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Granted,
    Exempt,
    Refused,
}

pub fn postfix_client(n: u64) -> (Standing, IpAddr) {
    let i = (n / 3) as u32 % GRANTED_CLIENTS;
    match n % 3 {
        0 => (Standing::Granted, in_net(GRANTED_NET, i)),
        1 => (Standing::Exempt, in_net(EXEMPT_NET, i)),
        _ => (Standing::Refused, in_net(REFUSED_NET, i)),
    }
}

/// What answer the server gives: the daemon's, or the floor's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// smtp-gate: the action for the client's standing.
    Judged,
    /// The floor: `DUNNO` for all.
    Dunno,
}

/// A kept-alive connection to a policy endpoint.
pub struct Connection {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
            line: Vec::new(),
        })
    }

    async fn read_line(&mut self) -> Result<&str> {
        self.line.clear();
        let n = (&mut self.reader)
            .take(16 * 1024)
            .read_until(b'\n', &mut self.line)
            .await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        Ok(std::str::from_utf8(&self.line)?.trim_end_matches(['\r', '\n']))
    }

    /// Sends an HTTP request, returns the answer's status code and body.
    pub async fn http(&mut self, request: &[u8]) -> Result<(u16, String)> {
        self.reader.get_mut().write_all(request).await?;
        let status_line = self.read_line().await?.to_string();
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
        let mut length = None;
        for _ in 0..64 {
            let line = self.read_line().await?;
            if line.is_empty() {
                let length = length.context("an answer without Content-Length")?;
                let mut body = vec![0u8; length];
                self.reader.read_exact(&mut body).await?;
                return Ok((code, String::from_utf8_lossy(&body).into_owned()));
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                }
            }
        }
        bail!("an answer of over 64 header lines")
    }

    /// Sends a Postfix request, returns the action.
    pub async fn postfix(&mut self, request: &[u8]) -> Result<String> {
        self.reader.get_mut().write_all(request).await?;
        let action = self
            .read_line()
            .await?
            .strip_prefix("action=")
            .context("an answer without action=")?
            .to_string();
        if !self.read_line().await?.is_empty() {
            bail!("no empty line after the action");
        }
        Ok(action)
    }
}

/// One request of `workload` (number `n` of its connection) and its
/// answer checked.
async fn one(
    connection: &mut Connection,
    workload: Workload,
    n: u64,
    expect: Expect,
) -> Result<()> {
    match workload {
        Workload::DovecotReport | Workload::DovecotAllow => {
            let request = if workload == Workload::DovecotReport {
                dovecot_request("report", next_reported(), true)
            } else {
                dovecot_request(
                    "allow",
                    in_net(REFUSED_NET, n as u32 % GRANTED_CLIENTS),
                    false,
                )
            };
            let (code, body) = connection.http(&request).await?;
            if code != 200 || !body.contains("\"status\":0") {
                bail!("answered {code} {body:?}");
            }
        }
        Workload::PostfixMixed => {
            let (standing, client) = postfix_client(n);
            let action = connection.postfix(&postfix_request(client)).await?;
            let right = match (expect, standing) {
                (Expect::Dunno, _) | (Expect::Judged, Standing::Exempt) => action == "DUNNO",
                (Expect::Judged, Standing::Granted) => action == "OK",
                (Expect::Judged, Standing::Refused) => action.starts_with("554 "),
            };
            if !right {
                bail!("{client} ({standing:?}) answered action={action}");
            }
        }
    }
    Ok(())
}

/// What a measurement did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Done {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// `connections` kept-alive connections to `addr`, each sending requests
/// of `workload` one after another for `span`. Runs on the caller's
/// runtime (its sockets in the caller's namespace).
pub async fn run(
    addr: SocketAddr,
    workload: Workload,
    expect: Expect,
    connections: usize,
    span: Duration,
) -> Result<Done> {
    let mut opened = Vec::new();
    for _ in 0..connections {
        opened.push(Connection::open(addr).await?);
    }
    let started = Instant::now();
    let deadline = started + span;
    let mut tasks = Vec::new();
    for (c, mut connection) in opened.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut requests, mut errors) = (0u64, 0u64);
            // Postfix's clients interleave across connections.
            let mut n = c as u64;
            while Instant::now() < deadline && requests < MAX_OPS_PER_CONNECTION {
                let outcome =
                    tokio::time::timeout(OP_TIMEOUT, one(&mut connection, workload, n, expect))
                        .await
                        .map_err(|_| anyhow::anyhow!("a request took longer than {OP_TIMEOUT:?}"))
                        .and_then(|r| r);
                n += connections as u64;
                match outcome {
                    Ok(()) => requests += 1,
                    Err(e) => {
                        errors += 1;
                        if errors > MAX_ERRORS {
                            return Err(e.context(format!("{errors} failed requests")));
                        }
                        // The connection may be gone: a new one.
                        connection = Connection::open(addr).await?;
                    }
                }
            }
            anyhow::Ok((requests, errors))
        }));
    }
    let mut done = Done::default();
    for task in tasks {
        let (requests, errors) = task.await??;
        done.requests += requests;
        done.errors += errors;
    }
    done.elapsed = started.elapsed();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_clients_come_in_turn() {
        let kinds: Vec<Standing> = (0..6).map(|n| postfix_client(n).0).collect();
        assert_eq!(
            kinds,
            [
                Standing::Granted,
                Standing::Exempt,
                Standing::Refused,
                Standing::Granted,
                Standing::Exempt,
                Standing::Refused
            ]
        );
        assert_eq!(postfix_client(3).1, "10.50.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn dovecot_requests_carry_their_length() {
        let request = String::from_utf8(dovecot_request("report", next_reported(), true)).unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(body.contains("\"success\":true"));
    }
}
